/* Matrix products give bit-identical results for any thread count (fixed-width column blocks),
 * which a resume on a machine with another core count relies on. */
#include "test.h"
#include "core/core.h"
#include "ops/cpu/matmul.h"
#include "ops/cpu/threads.h"

enum { N = 37, DIN = 300, DOUT = 700 };

static void run(int threads, float *out, float *dx, float *dw, float *db, const float *x, const float *w, const float *b,
                const float *dout) {
  xd_set_threads(threads);
  matmul_forward(out, x, w, b, N, DIN, DOUT);
  memset(dx, 0, sizeof(float) * N * DIN);
  memset(dw, 0, sizeof(float) * DOUT * DIN);
  memset(db, 0, sizeof(float) * DOUT);
  matmul_backward(dx, dw, db, dout, x, w, N, DIN, DOUT);
}

static void test_thread_count_invariance(void) {
  xd_rng r;
  xd_rng_seed(&r, 77);
  float *x = malloc(sizeof(float) * N * DIN), *w = malloc(sizeof(float) * DOUT * DIN), *b = malloc(sizeof(float) * DOUT);
  float *dout = malloc(sizeof(float) * N * DOUT);
  for (int i = 0; i < N * DIN; i++) x[i] = (float)xd_rng_normal(&r);
  for (int i = 0; i < DOUT * DIN; i++) w[i] = (float)xd_rng_normal(&r);
  for (int i = 0; i < DOUT; i++) b[i] = (float)xd_rng_normal(&r);
  for (int i = 0; i < N * DOUT; i++) dout[i] = (float)xd_rng_normal(&r);
  float *o[2], *dx[2], *dw[2], *db[2];
  const int threads[2] = {1, 3};
  for (int k = 0; k < 2; k++) {
    o[k] = malloc(sizeof(float) * N * DOUT);
    dx[k] = malloc(sizeof(float) * N * DIN);
    dw[k] = malloc(sizeof(float) * DOUT * DIN);
    db[k] = malloc(sizeof(float) * DOUT);
    run(threads[k], o[k], dx[k], dw[k], db[k], x, w, b, dout);
  }
  CHECK(memcmp(o[0], o[1], sizeof(float) * N * DOUT) == 0);
  CHECK(memcmp(dx[0], dx[1], sizeof(float) * N * DIN) == 0);
  CHECK(memcmp(dw[0], dw[1], sizeof(float) * DOUT * DIN) == 0);
  CHECK(memcmp(db[0], db[1], sizeof(float) * DOUT) == 0);
  /* and the product is right (a spot check against a double dot product) */
  double ref = b[5];
  for (int i = 0; i < DIN; i++) ref += (double)x[3 * DIN + i] * w[5 * DIN + i];
  CHECK_REL(o[0][3 * DOUT + 5], ref, 1e-5, 1.0);
  for (int k = 0; k < 2; k++) { free(o[k]); free(dx[k]); free(dw[k]); free(db[k]); }
  free(x); free(w); free(b); free(dout);
  xd_set_threads(1);
}

int main(void) {
  RUN(test_thread_count_invariance);
  return test_finish();
}
