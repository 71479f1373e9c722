/* Helpers shared by the op tests: random fills, float<->double copies, and the finite
 * difference check of a double-precision scalar loss. Header-only, test code only. */
#ifndef XD_TEST_GRAD_CHECK_H
#define XD_TEST_GRAD_CHECK_H
#include "test.h"
#include "core/core.h"

/* Fresh random floats (never zeros): normal * sc. */
static inline float *gc_randf(xd_rng *r, size_t n, double sc) {
  float *x = xd_malloc(n * sizeof(float) + 1);
  for (size_t i = 0; i < n; i++) x[i] = (float)(sc * xd_rng_normal(r));
  return x;
}
static inline double *gc_f64(const float *x, size_t n) {
  double *y = xd_malloc(n * sizeof(double) + 1);
  for (size_t i = 0; i < n; i++) y[i] = x[i];
  return y;
}
static inline double gc_dot(const double *a, const float *b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += a[i] * b[i];
  return s;
}

/* Max-norm relative error of grad against central differences of loss(ctx) w.r.t. x[0..n),
 * step eps (x is perturbed in place and restored). */
typedef double (*gc_loss_fn)(void *ctx);
static inline double gc_fd_err(gc_loss_fn loss, void *ctx, double *x, size_t n,
                               const double *grad, double eps) {
  double amax = 0, dmax = 0;
  for (size_t i = 0; i < n; i++) {
    const double x0 = x[i];
    x[i] = x0 + eps;
    const double lp = loss(ctx);
    x[i] = x0 - eps;
    const double lm = loss(ctx);
    x[i] = x0;
    const double fd = (lp - lm) / (2 * eps);
    if (fabs(fd) > amax) amax = fabs(fd);
    if (fabs(fd - grad[i]) > dmax) dmax = fabs(fd - grad[i]);
  }
  return amax > 0 ? dmax / amax : dmax;
}

/* An op's backward must ACCUMULATE: running it twice into the same buffer doubles it.
 * Returns the max-norm relative error of twice against 2 * once. */
static inline double gc_accum_err(const double *once, const double *twice, size_t n) {
  double amax = 0, dmax = 0;
  for (size_t i = 0; i < n; i++) {
    if (fabs(once[i]) > amax) amax = fabs(once[i]);
    if (fabs(twice[i] - 2 * once[i]) > dmax) dmax = fabs(twice[i] - 2 * once[i]);
  }
  return amax > 0 ? dmax / amax : 1;
}
#endif
