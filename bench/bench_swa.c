/* Sliding-window attention throughput, forward + backward, against dense causal attention
 * measured in the same run (the same kernel with W = T, which is exactly causal attention).
 *   bench_swa [T=4096] [W=512] [S=4] [H=8] [G=2] [d=64] [reps=1]
 * Prints tokens/s (B = 1) for SWA and dense, wall and per CPU-second, best of reps, and the
 * speed-up with the ideal ratio of attended (query, key) pairs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/core.h"
#include "ops/cpu/swa.h"

/* Process CPU seconds (all threads): steadier than wall time on a shared, loaded machine. */
static double cpu_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static double run(const swa_shape *sh, int reps, const float *q, const float *k, const float *v,
                  const float *dout, double *fwd_s, double *cpu_s) {
  const size_t nq = (size_t)sh->B * sh->T * sh->H * sh->d, nk = (size_t)sh->B * sh->T * sh->G * sh->d;
  float *out = xd_malloc(nq * 4), *lse = xd_malloc((size_t)sh->B * sh->T * sh->H * 4);
  float *dq = xd_calloc(nq, 4), *dk = xd_calloc(nk, 4), *dv = xd_calloc(nk, 4);
  double best = 1e30, best_f = 1e30, best_c = 1e30;
  for (int r = 0; r < reps; r++) {
    const double c0 = cpu_now(), t0 = xd_now();
    swa_forward(out, lse, q, k, v, sh);
    const double t1 = xd_now();
    swa_backward(dq, dk, dv, dout, q, k, v, out, lse, sh);
    const double t2 = xd_now(), c2 = cpu_now();
    if (c2 - c0 < best_c) best_c = c2 - c0;
    if (t2 - t0 < best) best = t2 - t0;
    if (t1 - t0 < best_f) best_f = t1 - t0;
  }
  free(out); free(lse); free(dq); free(dk); free(dv);
  *fwd_s = best_f;
  *cpu_s = best_c;
  return best;
}

int main(int argc, char **argv) {
  const int a[7] = {4096, 512, 4, 8, 2, 64, 1};
  int p[7];
  for (int i = 0; i < 7; i++) p[i] = argc > i + 1 ? atoi(argv[i + 1]) : a[i];
  swa_shape sh = {.B = 1, .T = p[0], .W = p[1], .S = p[2], .H = p[3], .G = p[4], .d = p[5]};
  const int reps = p[6] > 0 ? p[6] : 1;
  const size_t nq = (size_t)sh.T * sh.H * sh.d, nk = (size_t)sh.T * sh.G * sh.d;
  xd_rng r;
  xd_rng_seed(&r, 42);
  float *q = xd_malloc(nq * 4), *k = xd_malloc(nk * 4), *v = xd_malloc(nk * 4), *dout = xd_malloc(nq * 4);
  for (size_t i = 0; i < nq; i++) { q[i] = (float)xd_rng_normal(&r); dout[i] = (float)xd_rng_normal(&r); }
  for (size_t i = 0; i < nk; i++) { k[i] = (float)xd_rng_normal(&r); v[i] = (float)xd_rng_normal(&r); }
  double fs, fd, cs, cd;
  const double ts = run(&sh, reps, q, k, v, dout, &fs, &cs);
  swa_shape dense = sh;
  dense.W = sh.T;
  dense.S = 0;
  const double td = run(&dense, reps, q, k, v, dout, &fd, &cd);
  printf("T=%d H=%d G=%d d=%d B=1\n", sh.T, sh.H, sh.G, sh.d);
  printf("swa   W=%d S=%d: fwd %.3f s, fwd+bwd %.3f s wall (%.3f s CPU), %.0f tokens/s wall, %.0f per CPU-s\n",
         sh.W, sh.S, fs, ts, cs, sh.T / ts, sh.T / cs);
  printf("dense causal    : fwd %.3f s, fwd+bwd %.3f s wall (%.3f s CPU), %.0f tokens/s wall, %.0f per CPU-s\n",
         fd, td, cd, sh.T / td, sh.T / cd);
  printf("speed-up %.2fx (ideal work ratio %.2f)\n", td / ts,
         (double)sh.T * (sh.T + 1) / 2 / ((double)sh.T * (sh.W + sh.S) - (double)sh.W * (sh.W - 1) / 2));
  free(q); free(k); free(v); free(dout);
  return 0;
}
