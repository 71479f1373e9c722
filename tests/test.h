/* Minimal test harness: each tests/test_*.c is one executable (one CTest test).
 * TEST_CASE functions run in order; CHECK records a failure with file:line and carries on;
 * the run ends with "N passed, N failed" and a non-zero exit on any failure.
 * Tests find the shared reference data at ../shared (from the repo root) and skip cleanly
 * when it is absent. */
#ifndef XD_TEST_H
#define XD_TEST_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
  int passed, failed, skipped;
  int case_failed;
  const char *case_name;
} xd_test_state;

static xd_test_state xd_t; /* one per test executable; tests are single-threaded */

#define CHECK(cond) \
  do { if (!(cond)) { fprintf(stderr, "  FAIL %s:%d [%s]: %s\n", __FILE__, __LINE__, xd_t.case_name, #cond); xd_t.case_failed = 1; } } while (0)
#define CHECKF(cond, ...) \
  do { if (!(cond)) { fprintf(stderr, "  FAIL %s:%d [%s]: ", __FILE__, __LINE__, xd_t.case_name); fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); xd_t.case_failed = 1; } } while (0)
/* Relative error check: |a-b| / max(|b|, floor) <= tol. */
#define CHECK_REL(a, b, tol, floor_) \
  do { double _a = (a), _b = (b); double _d = fabs(_a - _b) / fmax(fabs(_b), (floor_)); \
       if (!(_d <= (tol))) { fprintf(stderr, "  FAIL %s:%d [%s]: %s=%.9g vs %s=%.9g rel %.3g > %.3g\n", __FILE__, __LINE__, xd_t.case_name, #a, _a, #b, _b, _d, (double)(tol)); xd_t.case_failed = 1; } } while (0)

#define RUN(fn) \
  do { xd_t.case_name = #fn; xd_t.case_failed = 0; fn(); \
       if (xd_t.case_failed) { xd_t.failed++; fprintf(stderr, "[FAIL] %s\n", #fn); } \
       else { xd_t.passed++; fprintf(stderr, "[ ok ] %s\n", #fn); } } while (0)
#define SKIP(why) \
  do { fprintf(stderr, "[skip] %s: %s\n", xd_t.case_name, why); xd_t.skipped++; xd_t.passed--; return; } while (0)

static inline int test_finish(void) {
  printf("%d passed, %d failed, %d skipped\n", xd_t.passed, xd_t.failed, xd_t.skipped);
  return xd_t.failed ? 1 : 0;
}

static inline int test_have_shared(void) {
  struct stat st;
  return stat("../shared", &st) == 0 && S_ISDIR(st.st_mode);
}

/* max relative error between two float arrays, relative to max|ref| (a scale-aware norm). */
static inline double test_max_rel_err(const float *x, const double *ref, size_t n) {
  double amax = 0, dmax = 0;
  for (size_t i = 0; i < n; i++) {
    if (fabs(ref[i]) > amax) amax = fabs(ref[i]);
    double d = fabs((double)x[i] - ref[i]);
    if (d > dmax) dmax = d;
  }
  return amax > 0 ? dmax / amax : dmax;
}

/* Scratch directory unique to this test binary, under build/ (created, not cleaned). */
static inline const char *test_tmpdir(const char *name) {
  static char buf[512];
  snprintf(buf, sizeof buf, "/tmp/xdistill-test-%s-%d", name, (int)getpid());
  mkdir(buf, 0755);
  return buf;
}
#endif
