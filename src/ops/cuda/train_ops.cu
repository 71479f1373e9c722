/* Backward twins of the teacher-shared ops for stage II training (branch cudatrain): rmsnorm
 * (dense and over strided segments = QK-norm), rope, swiglu, embedding. fp32 gradients, bf16 or
 * fp32 activations as the forward keeps them, fp32 math; every gradient ACCUMULATES (+=) like
 * the CPU op. Reductions over tokens are deterministic (fixed partials, fixed-order sums, no
 * float atomics); the embedding's duplicate ids are summed in token order after a stable sort. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <cub/device/device_radix_sort.cuh>
#include "cuda_common.cuh"

namespace {

/* XD_TRAIN_OPS_LEGACY=1 (read at every call): the rmsnorm backward's original two-kernel path
 * (rows, then dw partials over 256-row splits), kept for comparisons (tests/gpu/test_gpu_train_ops). */
bool rms_bw_legacy() {
  const char *v = getenv("XD_TRAIN_OPS_LEGACY");
  return v && *v && strcmp(v, "0") != 0;
}

__device__ __forceinline__ float ldv(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float ldv(const uint16_t *p, size_t i) { return xd_bf2f(p[i]); }

/* ---- rmsnorm backward ---------------------------------------------------------------------- */
#define RMS_ROWS 256 /* rows per dw partial: a function of the shape only */

/* One warp per row (8 rows per 256-thread block): rstd, dot = sum g w x, then
 * dx = res + g w r - x (dot r^3 / C) (the CPU's formula; res == dx: +=, res NULL: written);
 * dx16 (NULL = not wanted) gets bf16(dx) too, same row stride; rstd_out (NULL = not wanted)
 * keeps r. */
template <typename TX, typename TW>
__global__ void __launch_bounds__(256) k_rms_bw_rows(float *dx, const float *res, uint16_t *dx16, float *rstd_out,
                                                     const float *g, const TX *x, const TW *w, int rows, int n_seg,
                                                     int C, size_t ld_dx, size_t ld_g, size_t ld_x, float eps) {
  const int lane = threadIdx.x & 31;
  const int r = blockIdx.x * 8 + (threadIdx.x >> 5);
  if (r >= rows) return; /* uniform per warp; no block-level sync below */
  const size_t n = (size_t)(r / n_seg), s = (size_t)(r % n_seg);
  const TX *xr = x + n * ld_x + s * C;
  const float *gr = g + n * ld_g + s * C;
  float ss = 0.f, dot = 0.f;
  for (int i = lane; i < C; i += 32) {
    const float xv = ldv(xr, i);
    ss += xv * xv;
    dot += gr[i] * ldv(w, i) * xv;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    ss += __shfl_xor_sync(0xffffffffu, ss, o);
    dot += __shfl_xor_sync(0xffffffffu, dot, o);
  }
  const float rs = 1.0f / sqrtf(ss / (float)C + eps);
  if (dx) {
    const float k = dot * rs * rs * rs / (float)C;
    const size_t o = n * ld_dx + s * C;
    float *dr = dx + o;
    const float *rr = res ? res + o : NULL;
    uint16_t *hr = dx16 ? dx16 + o : NULL;
    for (int i = lane; i < C; i += 32) {
      float v = gr[i] * ldv(w, i) * rs - ldv(xr, i) * k;
      if (rr) v = rr[i] + v;
      dr[i] = v;
      if (hr) hr[i] = xd_f2bf(v);
    }
  }
  if (rstd_out && lane == 0) rstd_out[r] = rs;
}

/* dw partials: grid (ceil(C/32), ceil(rows/RMS_ROWS)), 256 threads: lane = column, warp = row
 * phase; part[split * C + c] = sum over the split's rows of g x rstd (fixed order). */
template <typename TX>
__global__ void __launch_bounds__(256) k_rms_bw_dw_part(float *part, const float *g, const TX *x, const float *rstd,
                                                        int rows, int n_seg, int C, size_t ld_g, size_t ld_x) {
  __shared__ float red[8][33];
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
  const int col = blockIdx.x * 32 + tx;
  const int r0 = blockIdx.y * RMS_ROWS, r1 = min(rows, r0 + RMS_ROWS);
  float acc = 0.f;
  if (col < C)
    for (int r = r0 + ty; r < r1; r += 8) {
      const size_t n = (size_t)(r / n_seg), s = (size_t)(r % n_seg);
      acc += g[n * ld_g + s * C + col] * ldv(x, n * ld_x + s * C + col) * rstd[r];
    }
  red[ty][tx] = acc;
  __syncthreads();
  if (ty == 0 && col < C) {
    float t = red[0][tx];
#pragma unroll
    for (int i = 1; i < 8; i++) t += red[i][tx];
    part[(size_t)blockIdx.y * C + col] = t;
  }
}

__global__ void k_sum_parts_add(float *out, const float *part, int nsplit, int cols) {
  const int col = blockIdx.x * blockDim.x + threadIdx.x;
  if (col >= cols) return;
  float t = 0.f;
  for (int s = 0; s < nsplit; s++) t += part[(size_t)s * cols + col];
  out[col] += t;
}

/* ---- fused dense rmsnorm backward (branch ewise) ------------------------------------------
 * One pass over the rows for dx AND the dw partials (the two-kernel path above reads dout and x
 * twice and writes / reads rstd). A 256-thread block owns RMSF_ROWS consecutive rows; thread t
 * owns the column quads 4 (t + 256 j), j < NV (C <= 1024 NV), as float4 (bf16 x: 8-byte
 * loads); w stays in registers; the next row's loads are issued before the current row's block
 * reduction (one __syncthreads per row: the reduction buffer alternates). Per element the
 * arithmetic is the two-kernel path's (dx = res + g w r - x k, dw partial += g x r); only the
 * summation order of ss / dot (per thread, then warps in order) and of the dw partials (rows
 * of a block in order, then blocks in order) differs: deterministic, a function of the shape. */
#define RMSF_ROWS 8
__device__ __forceinline__ float4 ld4(const float *p, size_t i) { return *reinterpret_cast<const float4 *>(p + i); }
__device__ __forceinline__ float4 ld4(const uint16_t *p, size_t i) {
  const uint2 u = *reinterpret_cast<const uint2 *>(p + i);
  return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
                     __uint_as_float(u.y & 0xffff0000u));
}
template <typename TX, typename TW, int NV>
__global__ void __launch_bounds__(256) k_rms_bw_fused(float *dx, const float *res, uint16_t *dx16, float *part,
                                                      const float *g, const TX *x, const TW *w, int rows, int C,
                                                      float eps) {
  __shared__ float red[2][2][8];
  const int t = threadIdx.x, lane = t & 31, wid = t >> 5;
  const int r0 = blockIdx.x * RMSF_ROWS, r1 = min(rows, r0 + RMSF_ROWS);
  bool on[NV];
  float4 wv[NV], acc[NV], gv[NV], xv[NV], rv[NV], gn[NV], xn[NV], rn[NV];
#pragma unroll
  for (int j = 0; j < NV; j++) {
    const int col = 4 * (t + 256 * j);
    on[j] = col < C;
    wv[j] = on[j] ? ld4(w, col) : make_float4(0.f, 0.f, 0.f, 0.f);
    acc[j] = make_float4(0.f, 0.f, 0.f, 0.f);
    gv[j] = xv[j] = rv[j] = gn[j] = xn[j] = rn[j] = make_float4(0.f, 0.f, 0.f, 0.f);
    if (on[j] && r0 < r1) {
      const size_t o = (size_t)r0 * C + col;
      gv[j] = ld4(g, o), xv[j] = ld4(x, o);
      if (res && dx) rv[j] = ld4(res, o);
    }
  }
  const float inv_c = 1.0f / (float)C;
  for (int r = r0, par = 0; r < r1; r++, par ^= 1) {
    float ss = 0.f, dot = 0.f;
#pragma unroll
    for (int j = 0; j < NV; j++) {
      ss += xv[j].x * xv[j].x + xv[j].y * xv[j].y + xv[j].z * xv[j].z + xv[j].w * xv[j].w;
      dot += gv[j].x * wv[j].x * xv[j].x + gv[j].y * wv[j].y * xv[j].y + gv[j].z * wv[j].z * xv[j].z +
             gv[j].w * wv[j].w * xv[j].w;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      ss += __shfl_xor_sync(0xffffffffu, ss, o);
      dot += __shfl_xor_sync(0xffffffffu, dot, o);
    }
    if (lane == 0) red[par][0][wid] = ss, red[par][1][wid] = dot;
    if (r + 1 < r1) { /* the next row's loads in flight during the reduction */
#pragma unroll
      for (int j = 0; j < NV; j++)
        if (on[j]) {
          const size_t o = (size_t)(r + 1) * C + 4 * (t + 256 * j);
          gn[j] = ld4(g, o), xn[j] = ld4(x, o);
          if (res && dx) rn[j] = ld4(res, o);
        }
    }
    __syncthreads();
    ss = red[par][0][0], dot = red[par][1][0];
#pragma unroll
    for (int i = 1; i < 8; i++) ss += red[par][0][i], dot += red[par][1][i];
    const float rs = 1.0f / sqrtf(ss / (float)C + eps);
    const float k = dot * rs * rs * rs * inv_c;
#pragma unroll
    for (int j = 0; j < NV; j++) {
      if (!on[j]) continue;
      const size_t o = (size_t)r * C + 4 * (t + 256 * j);
      if (dx) {
        float4 v;
        v.x = gv[j].x * wv[j].x * rs - xv[j].x * k;
        v.y = gv[j].y * wv[j].y * rs - xv[j].y * k;
        v.z = gv[j].z * wv[j].z * rs - xv[j].z * k;
        v.w = gv[j].w * wv[j].w * rs - xv[j].w * k;
        if (res) v.x = rv[j].x + v.x, v.y = rv[j].y + v.y, v.z = rv[j].z + v.z, v.w = rv[j].w + v.w;
        *reinterpret_cast<float4 *>(dx + o) = v;
        if (dx16) {
          uint2 h;
          h.x = (uint32_t)xd_f2bf(v.x) | (uint32_t)xd_f2bf(v.y) << 16;
          h.y = (uint32_t)xd_f2bf(v.z) | (uint32_t)xd_f2bf(v.w) << 16;
          *reinterpret_cast<uint2 *>(dx16 + o) = h;
        }
      }
      acc[j].x += gv[j].x * xv[j].x * rs;
      acc[j].y += gv[j].y * xv[j].y * rs;
      acc[j].z += gv[j].z * xv[j].z * rs;
      acc[j].w += gv[j].w * xv[j].w * rs;
      gv[j] = gn[j], xv[j] = xn[j], rv[j] = rn[j];
    }
  }
  if (part)
#pragma unroll
    for (int j = 0; j < NV; j++)
      if (on[j]) *reinterpret_cast<float4 *>(part + (size_t)blockIdx.x * C + 4 * (t + 256 * j)) = acc[j];
}

/* dw[col] += sum over the partials in order: 32 columns x 8 row phases per block (the phases
 * take every 8th partial, then are added in phase order: fixed). */
__global__ void __launch_bounds__(256) k_rms_dw_reduce(float *dw, const float *part, int nsplit, int C) {
  __shared__ float red[8][33];
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5, col = blockIdx.x * 32 + tx;
  float a = 0.f;
  if (col < C)
    for (int s = ty; s < nsplit; s += 8) a += part[(size_t)s * C + col];
  red[ty][tx] = a;
  __syncthreads();
  if (ty == 0 && col < C) {
    float t = red[0][tx];
#pragma unroll
    for (int i = 1; i < 8; i++) t += red[i][tx];
    dw[col] += t;
  }
}

/* The fused path, or 1 when the call does not fit it (nothing queued). */
template <typename TX, typename TW>
int rms_bw_fused(xd_cuda_ctx *c, float *dx, const float *res, uint16_t *dx16, float *dw, const float *g, const TX *x,
                 const TW *w, int rows, int n_seg, int C, size_t ld_dx, size_t ld_g, size_t ld_x, float eps, xd_err *e) {
  if (n_seg != 1 || C % 4 || C > 4096 || ld_dx != (size_t)C || ld_g != (size_t)C || ld_x != (size_t)C) return 1;
  const size_t ax = sizeof(TX) * 4, aw = sizeof(TW) * 4;
  if (((uintptr_t)dx | (uintptr_t)res | (uintptr_t)g) & 15 || (uintptr_t)x % ax || (uintptr_t)w % aw ||
      (uintptr_t)dx16 & 7)
    return 1;
  const unsigned nb = xd_ceil_div((size_t)rows, RMSF_ROWS);
  float *part = NULL;
  if (dw) XD_CU(cudaMallocAsync((void **)&part, (size_t)nb * C * sizeof(float), c->stream));
  const int nv = (C + 1023) / 1024;
  if (nv == 1)
    k_rms_bw_fused<TX, TW, 1><<<nb, 256, 0, c->stream>>>(dx, res, dx16, part, g, x, w, rows, C, eps);
  else if (nv == 2)
    k_rms_bw_fused<TX, TW, 2><<<nb, 256, 0, c->stream>>>(dx, res, dx16, part, g, x, w, rows, C, eps);
  else
    k_rms_bw_fused<TX, TW, 4><<<nb, 256, 0, c->stream>>>(dx, res, dx16, part, g, x, w, rows, C, eps);
  cudaError_t st = cudaGetLastError();
  if (dw && st == cudaSuccess) {
    k_rms_dw_reduce<<<xd_ceil_div((size_t)C, 32), 256, 0, c->stream>>>(dw, part, (int)nb, C);
    st = cudaGetLastError();
  }
  const cudaError_t fs = part ? cudaFreeAsync(part, c->stream) : cudaSuccess;
  if (st != cudaSuccess)
    return xd_errf(e, "train_ops.cu:%d: rmsnorm backward (fused) launch: %s (%s)", __LINE__, cudaGetErrorName(st),
                   cudaGetErrorString(st));
  XD_CU(fs);
  return 0;
}

template <typename TX, typename TW>
int rms_bw_launch(xd_cuda_ctx *c, float *dx, const float *res, uint16_t *dx16, float *dw, const float *g, const TX *x,
                  const TW *w, int rows, int n_seg, int C, size_t ld_dx, size_t ld_g, size_t ld_x, float eps,
                  xd_err *e) {
  if (!rms_bw_legacy()) {
    const int rc = rms_bw_fused(c, dx, res, dx16, dw, g, x, w, rows, n_seg, C, ld_dx, ld_g, ld_x, eps, e);
    if (rc <= 0) return rc;
  }
  const unsigned nsplit = xd_ceil_div((size_t)rows, RMS_ROWS);
  float *ws = NULL; /* rstd [rows], then the partials [nsplit, C] */
  if (dw) {
    XD_ARG(nsplit <= 65535u);
    XD_CU(cudaMallocAsync((void **)&ws, ((size_t)rows + (size_t)nsplit * C) * sizeof(float), c->stream));
  }
  k_rms_bw_rows<TX, TW><<<xd_ceil_div((size_t)rows, 8), 256, 0, c->stream>>>(dx, res, dx16, ws, g, x, w, rows, n_seg,
                                                                                C, ld_dx, ld_g, ld_x, eps);
  cudaError_t st = cudaGetLastError();
  if (dw && st == cudaSuccess) {
    float *part = ws + rows;
    k_rms_bw_dw_part<TX><<<dim3(xd_ceil_div((size_t)C, 32), nsplit), 256, 0, c->stream>>>(part, g, x, ws, rows, n_seg,
                                                                                           C, ld_g, ld_x);
    st = cudaGetLastError();
    if (st == cudaSuccess) {
      k_sum_parts_add<<<xd_ceil_div((size_t)C, 256), 256, 0, c->stream>>>(dw, part, (int)nsplit, C);
      st = cudaGetLastError();
    }
  }
  const cudaError_t fs = ws ? cudaFreeAsync(ws, c->stream) : cudaSuccess;
  if (st != cudaSuccess)
    return xd_errf(e, "train_ops.cu:%d: rmsnorm backward launch: %s (%s)", __LINE__, cudaGetErrorName(st),
                   cudaGetErrorString(st));
  XD_CU(fs);
  return 0;
}

/* ---- rope backward: one thread per (token, head, pair), the transpose rotation -------------- */
__global__ void k_rope_bw(float *x, int ld, const float *cos_t, const float *sin_t, const int32_t *pos, int N,
                          int n_heads, int half) {
  const size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  const size_t total = (size_t)N * n_heads * half;
  if (idx >= total) return;
  const int i = (int)(idx % half);
  const int hh = (int)((idx / half) % n_heads);
  const size_t n = idx / ((size_t)half * n_heads);
  float *row = x + n * (size_t)ld + (size_t)hh * 2 * half;
  const size_t t = (size_t)pos[n] * half + i;
  const float cs = cos_t[t], sn = sin_t[t];
  const float g1 = row[i], g2 = row[i + half];
  row[i] = g1 * cs + g2 * sn;
  row[i + half] = g2 * cs - g1 * sn;
}

/* ---- rope backward + residual add + bf16 gather (no QK-norm), two pair elements a thread ---- */
__device__ __forceinline__ uint32_t bf2pack(float a, float b) { return (uint32_t)xd_f2bf(a) | (uint32_t)xd_f2bf(b) << 16; }
__global__ void k_rope_bw_qkv16(uint32_t *out, size_t ldo2, const float *dq, const float *dqr, const float *dk,
                                const float *dkr, const float *dvr, const float *cos_t, const float *sin_t,
                                const int32_t *pos, int N, int H, int G, int half) {
  const int d = 2 * half, hp = half / 2;
  const size_t nrot = (size_t)(H + G) * hp, U = nrot + (size_t)G * half;
  const size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (idx >= (size_t)N * U) return;
  const size_t n = idx / U, u = idx % U;
  uint32_t *orow = out + n * ldo2;
  if (u < nrot) {
    const int head = (int)(u / hp), i = 2 * (int)(u % hp);
    const bool isq = head < H;
    const int hh = isq ? head : head - H, nh = isq ? H : G;
    const size_t ro = (n * nh + hh) * (size_t)d;
    const float *g = (isq ? dq : dk) + ro, *r = (isq ? dqr : dkr) + ro;
    const size_t t = (size_t)pos[n] * half + i;
    const float2 cs = *reinterpret_cast<const float2 *>(cos_t + t), sn = *reinterpret_cast<const float2 *>(sin_t + t);
    const float2 g1 = *reinterpret_cast<const float2 *>(g + i), g2 = *reinterpret_cast<const float2 *>(g + i + half);
    const float2 r1 = *reinterpret_cast<const float2 *>(r + i), r2 = *reinterpret_cast<const float2 *>(r + i + half);
    /* k_rope_bw's expressions, then k_add_f32's add */
    const float a0 = g1.x * cs.x + g2.x * sn.x, a1 = g1.y * cs.y + g2.y * sn.y;
    const float b0 = g2.x * cs.x - g1.x * sn.x, b1 = g2.y * cs.y - g1.y * sn.y;
    const size_t col = (isq ? 0 : (size_t)H * d) + (size_t)hh * d + i;
    orow[col / 2] = bf2pack(r1.x + a0, r1.y + a1);
    orow[(col + half) / 2] = bf2pack(r2.x + b0, r2.y + b1);
  } else {
    const size_t p = u - nrot; /* element pair of the v row */
    const float2 v = *reinterpret_cast<const float2 *>(dvr + n * (size_t)G * d + 2 * p);
    orow[(size_t)(H + G) * d / 2 + p] = bf2pack(v.x, v.y);
  }
}

/* ---- swiglu backward: one thread per (token, feature) --------------------------------------- */
__global__ void k_swiglu_bw(float *dgate, float *dup, size_t ld_d, const float *dout, const uint16_t *gate,
                            const uint16_t *up, size_t ld, int N, int F) {
  const size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (idx >= (size_t)N * F) return;
  const size_t n = idx / F, f = idx % F;
  const float g = xd_bf2f(gate[n * ld + f]), u = xd_bf2f(up[n * ld + f]), d = dout[idx];
  const float s = 1.0f / (1.0f + expf(-g));
  dgate[n * ld_d + f] += d * u * s * (1.0f + g * (1.0f - s));
  dup[n * ld_d + f] += d * g * s;
}

/* The same, written in bf16 (the input of the gate|up GEMM backward): no fp32 buffer to zero,
 * accumulate and convert; the values are those the fp32 kernel adds to zeroed buffers, rounded. */
__global__ void k_swiglu_bw_bf16(uint16_t *dgate, uint16_t *dup, size_t ld_d, const float *dout,
                                 const uint16_t *gate, const uint16_t *up, size_t ld, int N, int F) {
  const size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (idx >= (size_t)N * F) return;
  const size_t n = idx / F, f = idx % F;
  const float g = xd_bf2f(gate[n * ld + f]), u = xd_bf2f(up[n * ld + f]), d = dout[idx];
  const float s = 1.0f / (1.0f + expf(-g));
  dgate[n * ld_d + f] = xd_f2bf(d * u * s * (1.0f + g * (1.0f - s)));
  dup[n * ld_d + f] = xd_f2bf(d * g * s);
}
/* The same, two features per thread (F, ld, ld_d even, 4-byte aligned bf16 and 8-byte aligned
 * dout): bf16x2 loads and stores, float2 dout. The same per-element expression: same bits. */
__global__ void k_swiglu_bw_bf16x2(uint32_t *dgate, uint32_t *dup, size_t ld_d2, const float2 *dout,
                                   const uint32_t *gate, const uint32_t *up, size_t ld2, int N, int F2) {
  const size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (idx >= (size_t)N * F2) return;
  const size_t n = idx / F2, f = idx % F2;
  const uint32_t gg = gate[n * ld2 + f], uu = up[n * ld2 + f];
  const float2 dd = dout[idx];
  float g[2] = {xd_bf2f((uint16_t)(gg & 0xffffu)), xd_bf2f((uint16_t)(gg >> 16))};
  float u[2] = {xd_bf2f((uint16_t)(uu & 0xffffu)), xd_bf2f((uint16_t)(uu >> 16))};
  float d[2] = {dd.x, dd.y};
  uint32_t og = 0, ou = 0;
#pragma unroll
  for (int j = 0; j < 2; j++) {
    const float s = 1.0f / (1.0f + expf(-g[j]));
    og |= (uint32_t)xd_f2bf(d[j] * u[j] * s * (1.0f + g[j] * (1.0f - s))) << (16 * j);
    ou |= (uint32_t)xd_f2bf(d[j] * g[j] * s) << (16 * j);
  }
  dgate[n * ld_d2 + f] = og;
  dup[n * ld_d2 + f] = ou;
}

/* ---- embedding backward --------------------------------------------------------------------- */
__global__ void k_iota(int32_t *v, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) v[i] = i;
}

/* Block i of the sorted ids: only the head of a run of equal ids works; it adds the run's dout
 * rows (token order, the stable sort kept it) to the table row, starting from the row's value:
 * the same fp32 additions in the same order as the CPU's serial loop. */
__global__ void k_emb_bw(float *dtable, const float *dout, const int32_t *keys, const int32_t *tok, int N, int D,
                         int V) {
  const int i = blockIdx.x;
  const int id = keys[i];
  if ((i > 0 && keys[i - 1] == id) || id < 0 || id >= V) return;
  int j1 = i + 1;
  while (j1 < N && keys[j1] == id) j1++;
  float *t = dtable + (size_t)id * D;
  for (int col = threadIdx.x; col < D; col += blockDim.x) {
    float acc = t[col];
    for (int j = i; j < j1; j++) acc += dout[(size_t)tok[j] * D + col];
    t[col] = acc;
  }
}

/* The same with four columns per thread (D a multiple of 4, 16-byte aligned rows; branch ewise):
 * grid (sorted position, 1024-column slice), float4 loads; the run's rows are loaded eight
 * ahead of the adds (independent of them), which are the same fp32 additions in the same token
 * order per column as k_emb_bw's: the same bits. The head of a long run (Zipf ids: the most
 * frequent of 4096 tokens appears hundreds of times) no longer walks D / 256 columns in turn. */
__global__ void __launch_bounds__(256) k_emb_bw4(float *dtable, const float *dout, const int32_t *keys,
                                                 const int32_t *tok, int N, int D, int V) {
  const int i = blockIdx.x;
  const int id = keys[i];
  if ((i > 0 && keys[i - 1] == id) || id < 0 || id >= V) return;
  const int col = 4 * (threadIdx.x + 256 * blockIdx.y);
  if (col >= D) return;
  int j1 = i + 1;
  while (j1 < N && keys[j1] == id) j1++;
  float4 *t = reinterpret_cast<float4 *>(dtable + (size_t)id * D + col);
  float4 acc = *t;
  int j = i;
  for (; j + 8 <= j1; j += 8) {
    float4 v[8];
#pragma unroll
    for (int u = 0; u < 8; u++) v[u] = *reinterpret_cast<const float4 *>(dout + (size_t)tok[j + u] * D + col);
#pragma unroll
    for (int u = 0; u < 8; u++) acc.x += v[u].x, acc.y += v[u].y, acc.z += v[u].z, acc.w += v[u].w;
  }
  for (; j < j1; j++) {
    const float4 v = *reinterpret_cast<const float4 *>(dout + (size_t)tok[j] * D + col);
    acc.x += v.x, acc.y += v.y, acc.z += v.z, acc.w += v.w;
  }
  *t = acc;
}

} /* namespace */

extern "C" int xd_cuda_rmsnorm_backward_segments(xd_cuda_ctx *c, float *dx, int ld_dx, float *dw, const float *dout,
                                                 int ld_dout, const void *x, xd_cuda_dtype x_dtype, int ld_x,
                                                 const void *w, xd_cuda_dtype w_dtype, int N, int n_seg, int C,
                                                 float eps, xd_err *e) {
  XD_ARG(N > 0 && n_seg > 0 && C > 0 && (size_t)N * n_seg <= (size_t)INT_MAX);
  XD_ARG(dout != NULL && x != NULL && w != NULL);
  XD_ARG((size_t)ld_dout >= (size_t)n_seg * C && (size_t)ld_x >= (size_t)n_seg * C);
  XD_ARG(!dx || (size_t)ld_dx >= (size_t)n_seg * C);
  XD_ARG(x_dtype == XD_CUDA_BF16 || x_dtype == XD_CUDA_F32);
  XD_ARG(w_dtype == XD_CUDA_BF16 || w_dtype == XD_CUDA_F32);
  if (!dx && !dw) return 0;
  const int rows = N * n_seg;
  const bool xb = x_dtype == XD_CUDA_BF16, wb = w_dtype == XD_CUDA_BF16;
  if (xb && wb)
    return rms_bw_launch(c, dx, dx, (uint16_t *)NULL, dw, dout, (const uint16_t *)x, (const uint16_t *)w, rows, n_seg, C, ld_dx, ld_dout, ld_x,
                         eps, e);
  if (xb)
    return rms_bw_launch(c, dx, dx, (uint16_t *)NULL, dw, dout, (const uint16_t *)x, (const float *)w, rows, n_seg, C, ld_dx, ld_dout, ld_x,
                         eps, e);
  if (wb)
    return rms_bw_launch(c, dx, dx, (uint16_t *)NULL, dw, dout, (const float *)x, (const uint16_t *)w, rows, n_seg, C, ld_dx, ld_dout, ld_x,
                         eps, e);
  return rms_bw_launch(c, dx, dx, (uint16_t *)NULL, dw, dout, (const float *)x, (const float *)w, rows, n_seg, C, ld_dx, ld_dout, ld_x, eps,
                       e);
}

extern "C" int xd_cuda_rmsnorm_backward_res(xd_cuda_ctx *c, float *dx, uint16_t *dx16, const float *dres, float *dw,
                                            const float *dout, const void *x, xd_cuda_dtype x_dtype, const void *w,
                                            xd_cuda_dtype w_dtype, int N, int C, float eps, xd_err *e) {
  XD_ARG(N > 0 && C > 0 && dx != NULL && dout != NULL && x != NULL && w != NULL);
  XD_ARG(x_dtype == XD_CUDA_BF16 || x_dtype == XD_CUDA_F32);
  XD_ARG(w_dtype == XD_CUDA_BF16 || w_dtype == XD_CUDA_F32);
  const size_t ld = (size_t)C;
  if (x_dtype == XD_CUDA_BF16 && w_dtype == XD_CUDA_BF16)
    return rms_bw_launch(c, dx, dres, dx16, dw, dout, (const uint16_t *)x, (const uint16_t *)w, N, 1, C, ld, ld, ld, eps, e);
  if (x_dtype == XD_CUDA_BF16)
    return rms_bw_launch(c, dx, dres, dx16, dw, dout, (const uint16_t *)x, (const float *)w, N, 1, C, ld, ld, ld, eps, e);
  if (w_dtype == XD_CUDA_BF16)
    return rms_bw_launch(c, dx, dres, dx16, dw, dout, (const float *)x, (const uint16_t *)w, N, 1, C, ld, ld, ld, eps, e);
  return rms_bw_launch(c, dx, dres, dx16, dw, dout, (const float *)x, (const float *)w, N, 1, C, ld, ld, ld, eps, e);
}

extern "C" int xd_cuda_rmsnorm_backward(xd_cuda_ctx *c, float *dx, float *dw, const float *dout, const void *x,
                                        xd_cuda_dtype x_dtype, const void *w, xd_cuda_dtype w_dtype, int N, int C,
                                        float eps, xd_err *e) {
  return xd_cuda_rmsnorm_backward_segments(c, dx, C, dw, dout, C, x, x_dtype, C, w, w_dtype, N, 1, C, eps, e);
}

extern "C" int xd_cuda_rope_backward(xd_cuda_ctx *c, float *dx, int ld, const float *cos_t, const float *sin_t,
                                     const int32_t *pos, int N, int n_heads, int d, xd_err *e) {
  XD_ARG(N > 0 && n_heads > 0 && d > 0 && d % 2 == 0 && (size_t)ld >= (size_t)n_heads * d);
  const size_t total = (size_t)N * n_heads * (d / 2);
  k_rope_bw<<<xd_ceil_div(total, 256), 256, 0, c->stream>>>(dx, ld, cos_t, sin_t, pos, N, n_heads, d / 2);
  XD_CU_LAUNCH("rope_bw");
  return 0;
}

extern "C" int xd_cuda_rope_backward_qkv_bf16(xd_cuda_ctx *c, uint16_t *out, int ldo, const float *dq,
                                              const float *dqr, const float *dk, const float *dkr, const float *dvr,
                                              const float *cos_t, const float *sin_t, const int32_t *pos, int N,
                                              int H, int G, int d, xd_err *e) {
  XD_ARG(N > 0 && H > 0 && G > 0 && d > 0 && d % 4 == 0 && ldo % 2 == 0 && (size_t)ldo >= (size_t)(H + 2 * G) * d);
  XD_ARG(out && dq && dqr && dk && dkr && dvr && cos_t && sin_t && pos);
  XD_ARG((((uintptr_t)out & 3) | (((uintptr_t)dq | (uintptr_t)dqr | (uintptr_t)dk | (uintptr_t)dkr | (uintptr_t)dvr |
                                   (uintptr_t)cos_t | (uintptr_t)sin_t) & 7)) == 0);
  const size_t total = (size_t)N * ((size_t)(H + G) * (d / 4) + (size_t)G * (d / 2));
  k_rope_bw_qkv16<<<xd_ceil_div(total, 256), 256, 0, c->stream>>>((uint32_t *)out, (size_t)ldo / 2, dq, dqr, dk, dkr,
                                                                  dvr, cos_t, sin_t, pos, N, H, G, d / 2);
  XD_CU_LAUNCH("rope_bw_qkv16");
  return 0;
}

extern "C" int xd_cuda_swiglu_backward(xd_cuda_ctx *c, float *dgate, float *dup, int ld_d, const float *dout,
                                       const uint16_t *gate, const uint16_t *up, int ld, int N, int F, xd_err *e) {
  XD_ARG(N > 0 && F > 0 && ld >= F && ld_d >= F);
  XD_ARG(dgate && dup && dout && gate && up);
  const size_t total = (size_t)N * F;
  k_swiglu_bw<<<xd_ceil_div(total, 256), 256, 0, c->stream>>>(dgate, dup, (size_t)ld_d, dout, gate, up, (size_t)ld, N,
                                                              F);
  XD_CU_LAUNCH("swiglu_bw");
  return 0;
}

extern "C" int xd_cuda_swiglu_backward_bf16(xd_cuda_ctx *c, uint16_t *dgate, uint16_t *dup, int ld_d, const float *dout,
                                            const uint16_t *gate, const uint16_t *up, int ld, int N, int F, xd_err *e) {
  XD_ARG(N > 0 && F > 0 && ld >= F && ld_d >= F);
  XD_ARG(dgate && dup && dout && gate && up);
  const size_t total = (size_t)N * F;
  const bool pairs = F % 2 == 0 && ld % 2 == 0 && ld_d % 2 == 0 && (((uintptr_t)dgate | (uintptr_t)dup |
                     (uintptr_t)gate | (uintptr_t)up) & 3) == 0 && ((uintptr_t)dout & 7) == 0;
  if (pairs)
    k_swiglu_bw_bf16x2<<<xd_ceil_div(total / 2, 256), 256, 0, c->stream>>>(
        (uint32_t *)dgate, (uint32_t *)dup, (size_t)ld_d / 2, (const float2 *)dout, (const uint32_t *)gate,
        (const uint32_t *)up, (size_t)ld / 2, N, F / 2);
  else
    k_swiglu_bw_bf16<<<xd_ceil_div(total, 256), 256, 0, c->stream>>>(dgate, dup, (size_t)ld_d, dout, gate, up,
                                                                     (size_t)ld, N, F);
  XD_CU_LAUNCH("swiglu_bw_bf16");
  return 0;
}

extern "C" int xd_cuda_embedding_backward(xd_cuda_ctx *c, float *dtable, const float *dout, const int32_t *ids, int N,
                                          int D, int V, xd_err *e) {
  XD_ARG(N > 0 && D > 0 && V > 0);
  size_t sort_bytes = 0;
  XD_CU(cub::DeviceRadixSort::SortPairs(NULL, sort_bytes, (const int32_t *)NULL, (int32_t *)NULL,
                                        (const int32_t *)NULL, (int32_t *)NULL, N, 0, 32, c->stream));
  /* keys_out [N], tok_in [N], tok_out [N], then CUB's temporary storage (256-byte aligned) */
  const size_t ints = ((size_t)3 * N + 63) / 64 * 64;
  char *ws = NULL;
  XD_CU(cudaMallocAsync((void **)&ws, ints * sizeof(int32_t) + sort_bytes, c->stream));
  int32_t *keys = (int32_t *)ws, *tok_in = keys + N, *tok = tok_in + N;
  void *tmp = ws + ints * sizeof(int32_t);
  k_iota<<<xd_ceil_div((size_t)N, 256), 256, 0, c->stream>>>(tok_in, N);
  cudaError_t st = cudaGetLastError();
  if (st == cudaSuccess)
    st = cub::DeviceRadixSort::SortPairs(tmp, sort_bytes, ids, keys, tok_in, tok, N, 0, 32, c->stream);
  if (st == cudaSuccess) {
    if (D % 4 == 0 && !(((uintptr_t)dtable | (uintptr_t)dout) & 15))
      k_emb_bw4<<<dim3((unsigned)N, xd_ceil_div((size_t)D, 1024)), 256, 0, c->stream>>>(dtable, dout, keys, tok, N, D, V);
    else
      k_emb_bw<<<N, 256, 0, c->stream>>>(dtable, dout, keys, tok, N, D, V);
    st = cudaGetLastError();
  }
  const cudaError_t fs = cudaFreeAsync(ws, c->stream);
  if (st != cudaSuccess)
    return xd_errf(e, "train_ops.cu:%d: embedding backward: %s (%s)", __LINE__, cudaGetErrorName(st),
                   cudaGetErrorString(st));
  XD_CU(fs);
  return 0;
}

__global__ void k_add_f32(float *y, const float *x, size_t n) {
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) y[i] += x[i];
}

extern "C" int xd_cuda_add_f32(xd_cuda_ctx *c, float *y, const float *x, size_t n, xd_err *e) {
  if (n == 0) return 0;
  const size_t blocks = xd_ceil_div(n, 256);
  k_add_f32<<<(unsigned)(blocks < 65535 * 8 ? blocks : 65535 * 8), 256, 0, c->stream>>>(y, x, n);
  XD_CU_LAUNCH("k_add_f32");
  return 0;
}

/* Stage I's per-layer loss: fixed grid, each thread's elements in a fixed order, block sums in
 * double by a fixed tree, then the block sums in order: deterministic. */
#define XD_MSE_BLOCKS 256
__global__ void k_mse_part(float *dout, const float *out, const float *ref, size_t n, float scale, double *part) {
  __shared__ double sh[256];
  double acc = 0;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    const float d = out[i] - ref[i];
    acc += (double)d * d;
    if (dout) dout[i] = scale * d;
  }
  sh[threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if ((int)threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) part[blockIdx.x] = sh[0];
}
__global__ void k_mse_sum(const double *part, int np, double *dst) {
  double s = 0;
  for (int i = 0; i < np; i++) s += part[i];
  *dst = s;
}

extern "C" int xd_cuda_mse_grad(xd_cuda_ctx *c, float *dout, const float *out, const float *ref, size_t n, float scale,
                                double *sum, xd_err *e) {
  XD_ARG(n > 0 && sum);
  double *part = NULL;
  XD_CU(cudaMallocAsync((void **)&part, XD_MSE_BLOCKS * sizeof(double), c->stream));
  k_mse_part<<<XD_MSE_BLOCKS, 256, 0, c->stream>>>(dout, out, ref, n, scale, part);
  cudaError_t st = cudaGetLastError();
  if (st == cudaSuccess) {
    k_mse_sum<<<1, 1, 0, c->stream>>>(part, XD_MSE_BLOCKS, sum);
    st = cudaGetLastError();
  }
  const cudaError_t fs = cudaFreeAsync(part, c->stream);
  if (st != cudaSuccess)
    return xd_errf(e, "train_ops.cu:%d: mse: %s (%s)", __LINE__, cudaGetErrorName(st), cudaGetErrorString(st));
  XD_CU(fs);
  return 0;
}
