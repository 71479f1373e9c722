/* mLSTM CPU throughput: chunkwise forward and forward+backward against the parallel
 * (quadratic) forward measured in the same run, at B*H = 8 heads, P = D = 64, T = 512..4096;
 * plus the recurrent step (decode). Prints tokens/s (tokens = B*T) and ratios.
 * Usage: bench_mlstm [chunk=64] [reps=3]   (OMP_NUM_THREADS picks the threads)
 * Columns: tokens/s by wall time, and in brackets by CPU time (process CPU seconds), which is
 * the steadier figure on a loaded machine (with 1 thread; with more, idle OpenMP threads spin). */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/core.h"
#include "ops/cpu/mlstm.h"

static float *randn(xd_rng *r, size_t n, double scale) {
  float *x = xd_malloc(n * sizeof(float));
  for (size_t i = 0; i < n; i++) x[i] = (float)(scale * xd_rng_normal(r));
  return x;
}

/* process CPU seconds: on a shared machine (other jobs on the cores) CPU time / thread count is
 * a steadier measure of the work than wall time */
static double cpu_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* softmax rows: the feature-mapped inputs the student produces */
static void softmax_rows(float *x, size_t rows, int P) {
  for (size_t i = 0; i < rows; i++) {
    float *row = x + i * (size_t)P, mx = row[0], s = 0;
    for (int p = 1; p < P; p++) mx = row[p] > mx ? row[p] : mx;
    for (int p = 0; p < P; p++) { row[p] = expf(row[p] - mx); s += row[p]; }
    for (int p = 0; p < P; p++) row[p] /= s;
  }
}

int main(int argc, char **argv) {
  const int L = argc > 1 ? atoi(argv[1]) : 64, reps = argc > 2 ? atoi(argv[2]) : 3;
  const int B = 1, H = 8, G = 8, P = 64, D = 64;
  printf("mlstm bench: B=%d H=%d G=%d P=%d D=%d chunk=%d threads=%d (best of %d)\n", B, H, G, P, D,
         L, omp_get_max_threads(), reps);
  printf("%6s %22s %22s %22s %12s %9s\n", "T", "par fwd tok/s [cpu]", "chunk fwd [cpu]",
         "chunk fwd+bwd [cpu]", "fwd speedup", "bwd/fwd");
  xd_rng r;
  xd_rng_seed(&r, 42);
  for (int T = 512; T <= 4096; T *= 2) {
    mlstm_cfg c = mlstm_cfg_make(B, T, H, G, P, D);
    c.chunk = L;
    xd_err e;
    if (mlstm_cfg_check(&c, &e)) { fprintf(stderr, "%s\n", e.msg); return 1; }
    const size_t BT = (size_t)B * T;
    float *qf = randn(&r, BT * H * P, 1), *kf = randn(&r, BT * G * P, 1), *v = randn(&r, BT * G * D, 1);
    softmax_rows(qf, BT * H, P);
    softmax_rows(kf, BT * G, P);
    float *ig = randn(&r, BT * H, 2), *fg = randn(&r, BT * H, 2), *dh = randn(&r, BT * H * D, 1);
    for (size_t i = 0; i < BT * H; i++) fg[i] += 4; /* forget gates near the init bias */
    float *h = xd_malloc(BT * H * D * sizeof(float));
    float *bound = xd_malloc(mlstm_boundary_size(&c) * sizeof(float));
    float *dq = xd_calloc(BT * H * P, sizeof(float)), *dk = xd_calloc(BT * G * P, sizeof(float));
    float *dv = xd_calloc(BT * G * D, sizeof(float)), *di = xd_calloc(BT * H, sizeof(float));
    float *df = xd_calloc(BT * H, sizeof(float));
    mlstm_ws *w = mlstm_ws_create(&c);
    double tp = 1e30, tf = 1e30, tfb = 1e30, cp = 1e30, cf = 1e30, cfb = 1e30;
    for (int k = 0; k < reps; k++) {
      double t0 = xd_now(), c0 = cpu_now();
      mlstm_parallel_forward(&c, qf, kf, v, ig, fg, h);
      double t1 = xd_now(), c1 = cpu_now();
      mlstm_chunkwise_forward(&c, w, qf, kf, v, ig, fg, NULL, NULL, NULL, h);
      double t2 = xd_now(), c2 = cpu_now();
      mlstm_chunkwise_forward(&c, w, qf, kf, v, ig, fg, NULL, NULL, bound, h);
      mlstm_chunkwise_backward(&c, w, qf, kf, v, ig, fg, NULL, bound, dh, dq, dk, dv, di, df);
      double t3 = xd_now(), c3 = cpu_now();
      if (t1 - t0 < tp) tp = t1 - t0;
      if (t2 - t1 < tf) tf = t2 - t1;
      if (t3 - t2 < tfb) tfb = t3 - t2;
      if (c1 - c0 < cp) cp = c1 - c0;
      if (c2 - c1 < cf) cf = c2 - c1;
      if (c3 - c2 < cfb) cfb = c3 - c2;
    }
    printf("%6d %10.0f [%9.0f] %10.0f [%9.0f] %10.0f [%9.0f] %11.2fx %8.2fx\n", T, BT / tp, BT / cp,
           BT / tf, BT / cf, BT / tfb, BT / cfb, cp / cf, (cfb - cf) / cf);
    mlstm_ws_free(w);
    free(qf); free(kf); free(v); free(ig); free(fg); free(dh); free(h); free(bound);
    free(dq); free(dk); free(dv); free(di); free(df);
  }
  /* decode: one recurrent step for the 8 heads */
  {
    mlstm_cfg c = mlstm_cfg_make(B, 1, H, G, P, D);
    float *q = randn(&r, (size_t)B * H * P, 1), *k = randn(&r, (size_t)B * G * P, 1);
    float *v = randn(&r, (size_t)B * G * D, 1), *ig = randn(&r, (size_t)B * H, 1);
    float *fg = randn(&r, (size_t)B * H, 1), *h = xd_malloc((size_t)B * H * D * sizeof(float));
    softmax_rows(q, (size_t)B * H, P);
    softmax_rows(k, (size_t)B * G, P);
    mlstm_state s = {xd_calloc((size_t)B * H * P * D, sizeof(float)),
                     xd_calloc((size_t)B * H * P, sizeof(float)), xd_calloc((size_t)B * H, sizeof(float))};
    const int n = 20000;
    double t0 = xd_now();
    for (int i = 0; i < n; i++) mlstm_recurrent_step(&c, q, k, v, ig, fg, &s, h);
    double t1 = xd_now();
    printf("recurrent step (decode, %d heads): %.2f us/token, %.0f tokens/s\n", B * H,
           1e6 * (t1 - t0) / n, n / (t1 - t0));
    free(s.C); free(s.n); free(s.m);
    free(q); free(k); free(v); free(ig); free(fg); free(h);
  }
  return 0;
}
