/* Kernel lab for the bf16 GEMMs of one stage II step at the Llama-3.2-1B shape (issue #8): for
 * each GEMM shape of the step (forward "TN", input gradient "NN", weight gradient "NT" into fp32)
 * the algorithms cuBLASLt's heuristic offers are timed (xd_cuda_gemm_lab) and the first (what
 * the library runs) is compared with the fastest. Weighted by how often the step runs each shape
 * (16 layers; the teacher's forward has the student's shapes), the sum says what choosing the
 * algorithm by timing could gain at most. Timing only: nothing here changes the library.
 * Usage: bench_gpu_gemm [T] [algorithms] (defaults 4096, 8). Lines starting "RESULT " are
 * machine-readable. */
#include <stdio.h>
#include <stdlib.h>
#include "core/core.h"
#include "ops/cuda/cuda_ops.h"

int main(int argc, char **argv) {
  const int N = argc > 1 ? atoi(argv[1]) : 4096, nalg = argc > 2 ? atoi(argv[2]) : 8;
  xd_err err;
  xd_cuda_ctx *c = NULL;
  if (xd_cuda_ctx_create(&c, 0, &err)) {
    printf("skip: no usable CUDA device (%s)\n", err.msg);
    return 77;
  }
  char dev[256] = "?";
  int sms = 0;
  xd_cuda_device_info(c, dev, sizeof dev, &sms, &err);
  printf("device: %s, %d SMs; N = %d tokens; up to %d algorithms per shape\n", dev, sms, N, nalg);
  const int D = 2048, QKV = 3072, F2 = 16384, F = 8192, V = 128256, L = 16;
  /* label, transa, transb, m, n, k, fp32 out, beta, calls per step */
  const struct { const char *label; int ta, tb, m, n, k, f32; float beta; int calls; } g[] = {
    {"fwd qkv (bf16)", 1, 0, QKV, N, D, 0, 0, 2 * L},
    {"fwd o (+= fp32)", 1, 0, D, N, D, 1, 1, 2 * L},
    {"fwd gate|up (bf16)", 1, 0, F2, N, D, 0, 0, 2 * L},
    {"fwd down (+= fp32)", 1, 0, D, N, F, 1, 1, 2 * L},
    {"fwd LM head (fp32)", 1, 0, V, N, D, 1, 0, 2},
    {"dX qkv", 0, 0, D, N, QKV, 0, 0, L},
    {"dX o", 0, 0, D, N, D, 0, 0, L},
    {"dX gate|up", 0, 0, D, N, F2, 0, 0, L},
    {"dX down", 0, 0, F, N, D, 0, 0, L},
    {"dX LM head", 0, 0, D, N, V, 0, 0, 1},
    {"dW qkv (fp32)", 0, 1, D, QKV, N, 1, 0, L},
    {"dW o (fp32)", 0, 1, D, D, N, 1, 0, L},
    {"dW gate|up (fp32)", 0, 1, D, F2, N, 1, 0, L},
    {"dW down (fp32)", 0, 1, F, D, N, 1, 0, L},
    {"dW LM head (fp32)", 0, 1, D, V, N, 1, 0, 1},
  };
  double tot_first = 0, tot_best = 0;
  for (size_t i = 0; i < sizeof g / sizeof *g; i++) {
    double first = 0, best = 0;
    const int reps = (double)g[i].m * g[i].n * g[i].k > 1e12 ? 5 : 20;
    if (xd_cuda_gemm_lab(c, g[i].ta, g[i].tb, g[i].m, g[i].n, g[i].k, g[i].f32 ? XD_CUDA_F32 : XD_CUDA_BF16, g[i].beta, nalg,
                         reps, g[i].label, stdout, &first, &best, &err) != 0) {
      fprintf(stderr, "bench_gpu_gemm: %s: %s\n", g[i].label, err.msg);
      return 1;
    }
    printf("RESULT gemm shape=\"%s\" first_ms=%.4f best_ms=%.4f calls=%d\n", g[i].label, first, best, g[i].calls);
    tot_first += first * g[i].calls;
    tot_best += best * g[i].calls;
  }
  printf("RESULT gemm_step first_ms=%.2f best_ms=%.2f saving_ms=%.2f (per stage II step, these shapes)\n", tot_first, tot_best,
         tot_first - tot_best);
  xd_cuda_ctx_free(c);
  return 0;
}
