/* Teacher forward ops with bf16 storage and fp32 math: rmsnorm, rope, swiglu, embedding. */
#include "cuda_common.cuh"

/* One block per row; 256 threads stride the row (fp32 sum of squares, tree reduction). */
__global__ void k_rmsnorm(uint16_t *out, const uint16_t *x, const uint16_t *w, int C, float eps) {
  const size_t row = blockIdx.x;
  const uint16_t *xr = x + row * C;
  uint16_t *orow = out + row * C;
  float ss = 0.f;
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    float v = xd_bf2f(xr[i]);
    ss += v * v;
  }
  __shared__ float red[32];
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    float t = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.f;
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
    if (threadIdx.x == 0) red[0] = t;
  }
  __syncthreads();
  const float rstd = rsqrtf(red[0] / (float)C + eps);
  for (int i = threadIdx.x; i < C; i += blockDim.x) orow[i] = xd_f2bf(xd_bf2f(w[i]) * (xd_bf2f(xr[i]) * rstd));
}

extern "C" int xd_cuda_rmsnorm_forward(xd_cuda_ctx *c, uint16_t *out, const uint16_t *x, const uint16_t *w, int N,
                                       int C, float eps, xd_err *e) {
  XD_ARG(N > 0 && C > 0);
  k_rmsnorm<<<N, 256, 0, c->stream>>>(out, x, w, C, eps);
  XD_CU_LAUNCH("rmsnorm");
  return 0;
}

/* One thread per (token, head, pair i < d/2): the pair (i, i + d/2) rotates by angle_i. */
__global__ void k_rope(uint16_t *x, int ld, const float *cos_t, const float *sin_t, const int32_t *pos, int N,
                       int n_heads, int half) {
  const size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  const size_t total = (size_t)N * n_heads * half;
  if (idx >= total) return;
  const int i = (int)(idx % half);
  const int hh = (int)((idx / half) % n_heads);
  const size_t n = idx / ((size_t)half * n_heads);
  uint16_t *row = x + n * (size_t)ld + (size_t)hh * 2 * half;
  const size_t t = (size_t)pos[n] * half + i;
  const float cs = cos_t[t], sn = sin_t[t];
  const float a = xd_bf2f(row[i]), b = xd_bf2f(row[i + half]);
  row[i] = xd_f2bf(a * cs - b * sn);
  row[i + half] = xd_f2bf(b * cs + a * sn);
}

/* Two consecutive pairs per thread (branch ewise): bf16x2 loads / stores and float2 table reads
 * (half even, ld even, x 4-byte aligned); the same per-element arithmetic. */
__global__ void k_rope2(uint32_t *x, int ld2, const float *cos_t, const float *sin_t, const int32_t *pos, int N,
                        int n_heads, int half) {
  const int hp = half / 2;
  const size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  const size_t total = (size_t)N * n_heads * hp;
  if (idx >= total) return;
  const int i = 2 * (int)(idx % hp);
  const int hh = (int)((idx / hp) % n_heads);
  const size_t n = idx / ((size_t)hp * n_heads);
  uint32_t *row = x + n * (size_t)ld2 + (size_t)hh * half;
  const size_t t = (size_t)pos[n] * half + i;
  const float2 cs = *reinterpret_cast<const float2 *>(cos_t + t), sn = *reinterpret_cast<const float2 *>(sin_t + t);
  const uint32_t ua = row[i / 2], ub = row[(i + half) / 2];
  const float a0 = xd_bf2f((uint16_t)(ua & 0xffffu)), a1 = xd_bf2f((uint16_t)(ua >> 16));
  const float b0 = xd_bf2f((uint16_t)(ub & 0xffffu)), b1 = xd_bf2f((uint16_t)(ub >> 16));
  row[i / 2] = (uint32_t)xd_f2bf(a0 * cs.x - b0 * sn.x) | (uint32_t)xd_f2bf(a1 * cs.y - b1 * sn.y) << 16;
  row[(i + half) / 2] = (uint32_t)xd_f2bf(b0 * cs.x + a0 * sn.x) | (uint32_t)xd_f2bf(b1 * cs.y + a1 * sn.y) << 16;
}

extern "C" int xd_cuda_rope_forward(xd_cuda_ctx *c, uint16_t *x, int ld, const float *cos_t, const float *sin_t,
                                    const int32_t *pos, int N, int n_heads, int d, xd_err *e) {
  XD_ARG(N > 0 && n_heads > 0 && d > 0 && d % 2 == 0 && ld >= n_heads * d);
  if (d % 4 == 0 && ld % 2 == 0 && !((uintptr_t)x & 3) && !(((uintptr_t)cos_t | (uintptr_t)sin_t) & 7)) {
    const size_t total2 = (size_t)N * n_heads * (d / 4);
    k_rope2<<<xd_ceil_div(total2, 256), 256, 0, c->stream>>>((uint32_t *)x, ld / 2, cos_t, sin_t, pos, N, n_heads, d / 2);
    XD_CU_LAUNCH("rope2");
    return 0;
  }
  const size_t total = (size_t)N * n_heads * (d / 2);
  k_rope<<<xd_ceil_div(total, 256), 256, 0, c->stream>>>(x, ld, cos_t, sin_t, pos, N, n_heads, d / 2);
  XD_CU_LAUNCH("rope");
  return 0;
}

__global__ void k_swiglu(uint16_t *out, const uint16_t *gate, const uint16_t *up, int N, int F, int ld) {
  const size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (idx >= (size_t)N * F) return;
  const size_t n = idx / F, f = idx % F;
  const float g = xd_bf2f(gate[n * ld + f]), u = xd_bf2f(up[n * ld + f]);
  out[idx] = xd_f2bf(g / (1.f + __expf(-g)) * u);
}

/* Eight values per thread with 16-byte accesses (F, ld multiples of 8, aligned buffers). */
__global__ void k_swiglu8(uint16_t *out, const uint16_t *gate, const uint16_t *up, int N, int F8, int ld) {
  const unsigned idx = blockIdx.x * blockDim.x + threadIdx.x;
  if (idx >= (unsigned)N * (unsigned)F8) return;
  const unsigned n = idx / F8, f = (idx % F8) * 8;
  const uint4 g4 = *reinterpret_cast<const uint4 *>(gate + (size_t)n * ld + f);
  const uint4 u4 = *reinterpret_cast<const uint4 *>(up + (size_t)n * ld + f);
  const uint16_t *g = reinterpret_cast<const uint16_t *>(&g4), *u = reinterpret_cast<const uint16_t *>(&u4);
  uint4 o4;
  uint16_t *o = reinterpret_cast<uint16_t *>(&o4);
#pragma unroll
  for (int i = 0; i < 8; i++) {
    const float gv = xd_bf2f(g[i]);
    o[i] = xd_f2bf(gv / (1.f + __expf(-gv)) * xd_bf2f(u[i]));
  }
  *reinterpret_cast<uint4 *>(out + (size_t)n * F8 * 8 + f) = o4;
}

extern "C" int xd_cuda_swiglu_forward(xd_cuda_ctx *c, uint16_t *out, const uint16_t *gate, const uint16_t *up, int N,
                                      int F, int ld, xd_err *e) {
  XD_ARG(N > 0 && F > 0 && ld >= F);
  const size_t total = (size_t)N * F;
  const bool vec = F % 8 == 0 && ld % 8 == 0 && total / 8 < (1u << 31) && (((uintptr_t)out | (uintptr_t)gate | (uintptr_t)up) & 15) == 0;
  if (vec)
    k_swiglu8<<<xd_ceil_div(total / 8, 256), 256, 0, c->stream>>>(out, gate, up, N, F / 8, ld);
  else
    k_swiglu<<<xd_ceil_div(total, 256), 256, 0, c->stream>>>(out, gate, up, N, F, ld);
  XD_CU_LAUNCH("swiglu");
  return 0;
}

/* One block per token; a bad id yields zeros rather than an out-of-range read. */
__global__ void k_embedding(uint16_t *out, const int32_t *ids, const uint16_t *table, int D, int V) {
  const size_t n = blockIdx.x;
  const int id = ids[n];
  uint16_t *o = out + n * D;
  if (id < 0 || id >= V) {
    for (int i = threadIdx.x; i < D; i += blockDim.x) o[i] = 0;
    return;
  }
  const uint16_t *src = table + (size_t)id * D;
  for (int i = threadIdx.x; i < D; i += blockDim.x) o[i] = src[i];
}

extern "C" int xd_cuda_embedding_forward(xd_cuda_ctx *c, uint16_t *out, const int32_t *ids, const uint16_t *table,
                                         int N, int D, int V, xd_err *e) {
  XD_ARG(N > 0 && D > 0 && V > 0);
  k_embedding<<<N, 256, 0, c->stream>>>(out, ids, table, D, V);
  XD_CU_LAUNCH("embedding");
  return 0;
}
