/* Log-probabilities of chosen tokens under rows of fp32 logits (xd_cuda_token_logprobs,
 * cuda_ops.h): the evaluator's log-likelihood requests scored where the logits are, so that
 * only one double and one flag per scored token cross to the host instead of whole rows of the
 * vocabulary. The twin of eval/lm_logits.c's row_logprob: max and FIRST argmax in fp32, then
 * log-sum-exp of (double)x - (double)max in double. */
#include <climits>
#include "cuda_common.cuh"

#define LP_T 256

/* one block per scored token: row rows[i] of logits [*, V] */
__global__ void __launch_bounds__(LP_T) k_token_logprob(double *lp, int32_t *greedy, const float *logits, long long V,
                                                         const int32_t *rows, const int32_t *toks, int n) {
  __shared__ float s_mx[LP_T / 32];
  __shared__ int s_am[LP_T / 32];
  __shared__ double s_z[LP_T / 32];
  const int i = blockIdx.x, tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
  if (i >= n) return;
  const float *x = logits + (long long)rows[i] * V;
  /* max and the first index holding it (NaN never compares greater: skipped, as on the host) */
  float mx = -INFINITY;
  int am = INT_MAX;
  for (long long v = tid; v < V; v += LP_T) {
    const float a = x[v];
    if (a > mx) mx = a, am = (int)v;
  }
#pragma unroll
  for (int o = 16; o; o >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, mx, o);
    const int a2 = __shfl_xor_sync(0xffffffffu, am, o);
    if (m2 > mx || (m2 == mx && a2 < am)) mx = m2, am = a2;
  }
  if (lane == 0) s_mx[w] = mx, s_am[w] = am;
  __syncthreads();
  mx = s_mx[0], am = s_am[0];
  for (int k = 1; k < LP_T / 32; k++)
    if (s_mx[k] > mx || (s_mx[k] == mx && s_am[k] < am)) mx = s_mx[k], am = s_am[k];
  /* z = sum exp(x - max) in double, in a fixed order (per thread, then the warps in order) */
  const double dm = (double)mx;
  double z = 0;
  for (long long v = tid; v < V; v += LP_T) z += exp((double)x[v] - dm);
#pragma unroll
  for (int o = 16; o; o >>= 1) z += __shfl_xor_sync(0xffffffffu, z, o);
  if (lane == 0) s_z[w] = z;
  __syncthreads();
  if (tid == 0) {
    double zt = 0;
    for (int k = 0; k < LP_T / 32; k++) zt += s_z[k];
    const int tok = toks[i];
    lp[i] = (double)x[tok] - dm - log(zt);
    greedy[i] = am == tok;
  }
}

extern "C" int xd_cuda_token_logprobs(xd_cuda_ctx *c, double *lp, int32_t *greedy, const float *logits, int V,
                                      const int32_t *rows, const int32_t *toks, int n, xd_err *e) {
  XD_ARG(V > 0 && n >= 0);
  if (n == 0) return 0;
  k_token_logprob<<<n, LP_T, 0, c->stream>>>(lp, greedy, logits, V, rows, toks, n);
  XD_CU_LAUNCH("token log-probabilities");
  return 0;
}
