/* Sliding-window+sinks attention backward on the GPU, fp32 (the twin of swa_backward).
 * First version, written for correctness: one warp per (b, t, h) query row; the lanes split
 * the head dimension, and the visible keys (sinks then window, the CPU order) are visited in
 * sequence. With p = exp(s - lse) from the saved lse and D_t = dout_t . out_t:
 *   ds = p (dout_t . v_s - D_t);  dq_t += scale ds k_s;  dk_s += scale ds q_t;  dv_s += p dout_t
 * dk and dv receive contributions from many queries: fp32 atomicAdd (order not fixed, so the
 * last bits may differ between runs). Cost O(B T H (W+S) d), no tensor cores yet. */
#include <math.h>
#include "cuda_common.cuh"

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

#define SWA_BWD_MAXD 256

__global__ void k_swa_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                               const float *v, const float *out, const float *lse, swa_shape sh, float scale) {
  const int warps = blockDim.x >> 5;
  const size_t row = (size_t)blockIdx.x * warps + (threadIdx.x >> 5); /* (b*T + t)*H + h */
  const int lane = threadIdx.x & 31;
  if (row >= (size_t)sh.B * sh.T * sh.H) return;
  const int h = (int)(row % sh.H), t = (int)((row / sh.H) % sh.T), b = (int)(row / ((size_t)sh.H * sh.T));
  const int g = h / (sh.H / sh.G), d = sh.d;
  const float *qr = q + row * d, *dor = dout + row * d, *orow = out + row * d;
  float qv[SWA_BWD_MAXD / 32], dov[SWA_BWD_MAXD / 32], dqv[SWA_BWD_MAXD / 32];
  float Dt = 0.f;
#pragma unroll
  for (int r = 0; r < SWA_BWD_MAXD / 32; r++) {
    const int i = lane + 32 * r;
    qv[r] = i < d ? qr[i] : 0.f;
    dov[r] = i < d ? dor[i] : 0.f;
    dqv[r] = 0.f;
    if (i < d) Dt += dov[r] * orow[i];
  }
  Dt = warp_sum(Dt);
  const float L = lse[row];
  const int w0 = max(0, t - sh.W + 1);
  const int n_sink = min(sh.S, w0);
  /* keys: sinks [0, n_sink) then window [w0, t] */
  for (int kk = 0; kk < n_sink + (t - w0 + 1); kk++) {
    const int s = kk < n_sink ? kk : w0 + (kk - n_sink);
    const size_t kvrow = (((size_t)b * sh.T + s) * sh.G + g) * d;
    float sc = 0.f, dp = 0.f;
#pragma unroll
    for (int r = 0; r < SWA_BWD_MAXD / 32; r++) {
      const int i = lane + 32 * r;
      if (i < d) sc += qv[r] * k[kvrow + i], dp += dov[r] * v[kvrow + i];
    }
    sc = warp_sum(sc) * scale;
    dp = warp_sum(dp);
    const float p = expf(sc - L);
    const float ds = p * (dp - Dt);
#pragma unroll
    for (int r = 0; r < SWA_BWD_MAXD / 32; r++) {
      const int i = lane + 32 * r;
      if (i < d) {
        dqv[r] += scale * ds * k[kvrow + i];
        atomicAdd(dk + kvrow + i, scale * ds * qv[r]);
        atomicAdd(dv + kvrow + i, p * dov[r]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < SWA_BWD_MAXD / 32; r++) {
    const int i = lane + 32 * r;
    if (i < d) dq[row * d + i] += dqv[r];
  }
}

extern "C" int xd_cuda_swa_backward(xd_cuda_ctx *c, float *dq, float *dk, float *dv, const float *dout,
                                    const float *q, const float *k, const float *v, const float *out,
                                    const float *lse, const swa_shape *sh, xd_err *e) {
  XD_ARG(sh->B > 0 && sh->T > 0 && sh->H > 0 && sh->G > 0 && sh->H % sh->G == 0);
  XD_ARG(sh->d > 0 && sh->d <= SWA_BWD_MAXD && sh->W >= 1 && sh->S >= 0);
  const size_t rows = (size_t)sh->B * sh->T * sh->H;
  const int warps = 8;
  k_swa_backward<<<xd_ceil_div(rows, warps), warps * 32, 0, c->stream>>>(dq, dk, dv, dout, q, k, v, out, lse, *sh,
                                                                          (float)(1.0 / sqrt((double)sh->d)));
  XD_CU_LAUNCH("swa_backward");
  return 0;
}
