/* Tests' helper: a student made by `init` from a fixture teacher (tests/fixtures/teachers/
 * FAMILY/fp32) with the given window, sinks and chunk, in a scratch directory. 0 or -1. */
#ifndef XD_TEST_STUDENT_FIXTURE_H
#define XD_TEST_STUDENT_FIXTURE_H
#include "test.h"
#include "model/config.h"
#include "model/student/student_init.h"

static inline int test_make_student(const char *family, int window, int sinks, int chunk, char *out, size_t outn) {
  char tdir[512];
  snprintf(tdir, sizeof tdir, "tests/fixtures/teachers/%s/fp32", family);
  if (!xd_is_dir(tdir)) return -1;
  xd_err e;
  xd_model_config c;
  if (xd_config_load(&c, tdir, &e) != 0) { fprintf(stderr, "%s\n", e.msg); return -1; }
  xd_hybrid_config h;
  xd_hybrid_defaults(&h, c.head_dim);
  h.window = window;
  h.sinks = sinks;
  h.chunk = chunk;
  /* Own directory (not test_tmpdir, whose static buffer the caller may be holding). */
  char base[256];
  snprintf(base, sizeof base, "/tmp/xdistill-test-students-%d", (int)getpid());
  mkdir(base, 0755);
  snprintf(out, outn, "%s/%s-w%d-s%d-c%d", base, family, window, sinks, chunk);
  if (xd_student_init(tdir, &h, out, &e) != 0) { fprintf(stderr, "%s\n", e.msg); return -1; }
  return 0;
}
#endif
