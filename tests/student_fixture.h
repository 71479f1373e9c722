/* Tests' helpers: a student made by `init` from a fixture teacher (tests/fixtures/teachers/
 * FAMILY/fp32) with the given window, sinks and chunk, in a scratch directory (0 or -1); and its
 * hybrid parameters perturbed so the mixing gate, the gates, the feature maps and both branches
 * all matter (SPEC's initial values leave several of them inert). */
#ifndef XD_TEST_STUDENT_FIXTURE_H
#define XD_TEST_STUDENT_FIXTURE_H
#include "test.h"
#include "model/config.h"
#include "model/student/student.h"
#include "model/student/student_init.h"

/* P_q, P_k += scale N(0,1); w_i, w_f, w_o = 0.3 scale N(0,1); b_i += scale N(0,1); b_o += 2. */
static inline void test_perturb_hybrid(xd_student *s, uint64_t seed, float scale) {
  xd_rng r;
  xd_rng_seed(&r, seed);
  const xd_model_config *c = &s->cfg;
  const int H = c->n_heads, G = c->n_kv_heads, d = c->head_dim, D = c->hidden, P = xd_hybrid_p_width(&s->hy);
  for (int l = 0; l < c->n_layers; l++) {
    xd_hybrid_layer *Y = &s->hl[l];
    for (int i = 0; i < H * d * P; i++) Y->P_q[i] += scale * (float)xd_rng_normal(&r);
    for (int i = 0; i < G * d * P; i++) Y->P_k[i] += scale * (float)xd_rng_normal(&r);
    for (int i = 0; i < H * D; i++) { Y->w_i[i] = 0.3f * scale * (float)xd_rng_normal(&r); Y->w_f[i] = 0.3f * scale * (float)xd_rng_normal(&r); }
    for (int i = 0; i < H; i++) { Y->b_i[i] += scale * (float)xd_rng_normal(&r); Y->b_o[i] += 2.0f; }
    for (int i = 0; i < H * 3 * d; i++) Y->w_o[i] = 0.3f * scale * (float)xd_rng_normal(&r);
  }
}

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
