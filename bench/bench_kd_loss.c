/* Stage II loss throughput on one thread-count setting: topk_logprobs (teacher side), the
 * forward and the backward (accumulating and in place), per position of a V-wide row.
 *   bench_kd_loss [N=256] [V=128256] [k=256] */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "core/core.h"
#include "ops/cpu/kd_loss.h"

/* Process CPU seconds: steadier than wall time on a shared, loaded machine (run 1 thread). */
static double cpu_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

int main(int argc, char **argv) {
  const int N = argc > 1 ? atoi(argv[1]) : 256, V = argc > 2 ? atoi(argv[2]) : 128256;
  kd_config c = kd_config_default(N, V);
  if (argc > 3) c.k = atoi(argv[3]);
  const size_t nz = (size_t)N * V, nk = (size_t)N * c.k;
  xd_rng r;
  xd_rng_seed(&r, 7);
  float *zs = xd_malloc(nz * 4), *zt = xd_malloc(nz * 4), *d = xd_calloc(nz, 4);
  for (size_t i = 0; i < nz; i++) { zs[i] = (float)(3 * xd_rng_normal(&r)); zt[i] = (float)(3 * xd_rng_normal(&r)); }
  int32_t *ids = xd_malloc(nk * 4), *tg = xd_malloc((size_t)N * 4);
  float *lp = xd_malloc(nk * 4), *lse = xd_malloc((size_t)N * 4);
  for (int n = 0; n < N; n++) tg[n] = (int32_t)(xd_rng_u64(&r) % (uint64_t)V);
  xd_err e = {{0}};
  kd_result res;
  double t0 = xd_now(), c0 = cpu_now();
  if (topk_logprobs(zt, N, V, c.k, ids, lp, &e)) { fprintf(stderr, "%s\n", e.msg); return 1; }
  double t1 = xd_now(), c1 = cpu_now();
  if (kd_loss_forward(&c, zs, tg, NULL, ids, lp, lse, &res, &e)) { fprintf(stderr, "%s\n", e.msg); return 1; }
  double t2 = xd_now(), c2 = cpu_now();
  kd_loss_backward(&c, d, zs, tg, NULL, ids, lp, lse, res.count, 1.0f);
  double t3 = xd_now(), c3 = cpu_now();
  kd_loss_backward(&c, zs, zs, tg, NULL, ids, lp, lse, res.count, 1.0f);
  double t4 = xd_now(), c4 = cpu_now();
  printf("N=%d V=%d k=%d, us per position, wall (CPU):\n", N, V, c.k);
  printf("  topk_logprobs %.0f (%.0f)\n  kd_loss_forward %.0f (%.0f)\n", 1e6 * (t1 - t0) / N,
         1e6 * (c1 - c0) / N, 1e6 * (t2 - t1) / N, 1e6 * (c2 - c1) / N);
  printf("  kd_loss_backward accumulate %.0f (%.0f), first touch of the gradient buffer included\n",
         1e6 * (t3 - t2) / N, 1e6 * (c3 - c2) / N);
  printf("  kd_loss_backward in place %.0f (%.0f)\n", 1e6 * (t4 - t3) / N, 1e6 * (c4 - c3) / N);
  free(zs); free(zt); free(d); free(ids); free(tg); free(lp); free(lse);
  return 0;
}
