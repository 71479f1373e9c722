/* Student inference on the GPU (branch cudastudent): the prefill's glue kernels (fp32 rmsnorm,
 * QK-norm + RoPE prep, a generic-d sliding-window+sinks attention, ring fill) and the
 * constant-memory decode step (split-K GEMVs with fused rmsnorm / SwiGLU / residual add; one
 * clustered per-head kernel: prep, local attention over sinks + ring, mLSTM recurrent step and
 * the mixing gate; the original one-block-per-head / one-warp-per-row kernels as the legacy
 * reference), plus CUDA-graph capture of a launch sequence. Declarations: the "student
 * inference" section of cuda_ops.h. */
#include <math.h>
#include <cooperative_groups.h>
#include "cuda_common.cuh"

#define SD_THREADS 128

__device__ __forceinline__ float sd_warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float sd_warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
/* Block-wide sum / max (blockDim a multiple of 32, <= 1024); every thread gets the result. */
__device__ float sd_block_sum(float v) {
  __shared__ float red[32];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = sd_warp_sum(v);
  __syncthreads();
  if (lane == 0) red[w] = v;
  __syncthreads();
  float r = lane < nw ? red[lane] : 0.f;
  return sd_warp_sum(r);
}
__device__ float sd_block_max(float v) {
  __shared__ float red[32];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = sd_warp_max(v);
  __syncthreads();
  if (lane == 0) red[w] = v;
  __syncthreads();
  float r = lane < nw ? red[lane] : -INFINITY;
  return sd_warp_max(r);
}

/* Programmatic dependent launch (issue #8; sm_90): trigger lets the next kernel of the stream
 * (launched with the PDL attribute) start its blocks early; wait blocks until every kernel
 * this one depends on has completed and its writes are visible. Both are no-ops in a kernel
 * launched without the attribute, so the kernels below call them unconditionally: nothing a
 * previous kernel writes is read, and nothing is written, before sd_pdl_wait. */
__device__ __forceinline__ void sd_pdl_trigger() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }
__device__ __forceinline__ void sd_pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }

/* cudaLaunchKernelEx with the PDL attribute when pdl (else a plain launch). */
template <typename... KArgs, typename... Args>
static cudaError_t sd_launch(bool pdl, void (*k)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                             Args... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid, cfg.blockDim = block, cfg.dynamicSmemBytes = smem, cfg.stream = s;
  cudaLaunchAttribute at[1];
  at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  at[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = at, cfg.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, k, static_cast<KArgs>(args)...);
}

/* ---- prefill glue ------------------------------------------------------------------------ */
__global__ void k_rmsnorm_f32(uint16_t *ob, float *of, const float *x, const float *w, int C, float eps) {
  const size_t row = blockIdx.x;
  const float *xr = x + row * C;
  float r = 1.f;
  if (w) {
    float ss = 0.f;
    for (int j = threadIdx.x; j < C; j += blockDim.x) ss += xr[j] * xr[j];
    ss = sd_block_sum(ss);
    r = 1.0f / sqrtf(ss / (float)C + eps);
  }
  for (int j = threadIdx.x; j < C; j += blockDim.x) {
    const float y = w ? w[j] * (xr[j] * r) : xr[j];
    if (ob) ob[row * C + j] = xd_f2bf(y);
    if (of) of[row * C + j] = y;
  }
}

/* The same with 16-byte accesses (branch ewise): thread t owns the column quads 4 (t + 256 j),
 * j < NV (C a multiple of 4, <= 1024 NV; x, w, of 16-byte and ob 8-byte aligned); the row is
 * read once into registers. Same per-element arithmetic; the sum of squares in another order. */
template <int NV>
__global__ void __launch_bounds__(256) k_rmsnorm_f32v(uint16_t *ob, float *of, const float *x, const float *w, int C,
                                                      float eps) {
  const size_t row = blockIdx.x;
  float4 xv[NV];
  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < NV; j++) {
    const int col = 4 * (threadIdx.x + 256 * j);
    xv[j] = col < C ? *reinterpret_cast<const float4 *>(x + row * C + col) : make_float4(0.f, 0.f, 0.f, 0.f);
    ss += xv[j].x * xv[j].x + xv[j].y * xv[j].y + xv[j].z * xv[j].z + xv[j].w * xv[j].w;
  }
  float r = 1.f;
  if (w) {
    ss = sd_block_sum(ss);
    r = 1.0f / sqrtf(ss / (float)C + eps);
  }
#pragma unroll
  for (int j = 0; j < NV; j++) {
    const int col = 4 * (threadIdx.x + 256 * j);
    if (col >= C) continue;
    float4 y = xv[j];
    if (w) {
      const float4 wv = *reinterpret_cast<const float4 *>(w + col);
      y.x = wv.x * (y.x * r), y.y = wv.y * (y.y * r), y.z = wv.z * (y.z * r), y.w = wv.w * (y.w * r);
    }
    if (ob) {
      uint2 h;
      h.x = (uint32_t)xd_f2bf(y.x) | (uint32_t)xd_f2bf(y.y) << 16;
      h.y = (uint32_t)xd_f2bf(y.z) | (uint32_t)xd_f2bf(y.w) << 16;
      *reinterpret_cast<uint2 *>(ob + row * C + col) = h;
    }
    if (of) *reinterpret_cast<float4 *>(of + row * C + col) = y;
  }
}

extern "C" int xd_cuda_rmsnorm_f32(xd_cuda_ctx *c, uint16_t *out_bf16, float *out_f32, const float *x, const float *w,
                                   int N, int C, float eps, xd_err *e) {
  XD_ARG(N >= 1 && C >= 1 && (out_bf16 || out_f32));
  if (C % 4 == 0 && C <= 4096 && !(((uintptr_t)x | (uintptr_t)w | (uintptr_t)out_f32) & 15) && !((uintptr_t)out_bf16 & 7)) {
    const int nv = (C + 1023) / 1024;
    if (nv == 1) k_rmsnorm_f32v<1><<<N, 256, 0, c->stream>>>(out_bf16, out_f32, x, w, C, eps);
    else if (nv == 2) k_rmsnorm_f32v<2><<<N, 256, 0, c->stream>>>(out_bf16, out_f32, x, w, C, eps);
    else k_rmsnorm_f32v<4><<<N, 256, 0, c->stream>>>(out_bf16, out_f32, x, w, C, eps);
    XD_CU_LAUNCH("k_rmsnorm_f32v");
    return 0;
  }
  k_rmsnorm_f32<<<N, 256, 0, c->stream>>>(out_bf16, out_f32, x, w, C, eps);
  XD_CU_LAUNCH("k_rmsnorm_f32");
  return 0;
}

__global__ void k_add_rmsnorm(float *h, const float *t, const float *w, int C, float eps) {
  const size_t row = blockIdx.x;
  const float *tr = t + row * C;
  float ss = 0.f;
  for (int j = threadIdx.x; j < C; j += blockDim.x) ss += tr[j] * tr[j];
  ss = sd_block_sum(ss);
  const float r = 1.0f / sqrtf(ss / (float)C + eps);
  for (int j = threadIdx.x; j < C; j += blockDim.x) h[row * C + j] += w[j] * (tr[j] * r);
}

extern "C" int xd_cuda_add_rmsnorm_f32(xd_cuda_ctx *c, float *h, const float *t, const float *w, int N, int C,
                                       float eps, xd_err *e) {
  XD_ARG(N >= 1 && C >= 1 && w);
  k_add_rmsnorm<<<N, 256, 0, c->stream>>>(h, t, w, C, eps);
  XD_CU_LAUNCH("k_add_rmsnorm");
  return 0;
}

/* QK-norm (none / per head / whole projection) then RoPE of one row of nh heads of d, in
 * shared memory y[nh*d]; writes fp32 (of) and bf16 (ob) rows. Block of SD_THREADS. */
__device__ void sd_norm_rope_row(float *y, const float *raw, int nh, int d, int qk_norm, const float *nw, float eps,
                                 const float *cos_r, const float *sin_r, float *of, uint16_t *ob) {
  const int n = nh * d, half = d / 2;
  __shared__ float rs[256];
  for (int j = threadIdx.x; j < n; j += blockDim.x) y[j] = raw[j];
  __syncthreads();
  if (qk_norm == 2) { /* whole projection */
    float ss = 0.f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) ss += y[j] * y[j];
    ss = sd_block_sum(ss);
    const float r = 1.0f / sqrtf(ss / (float)n + eps);
    for (int j = threadIdx.x; j < n; j += blockDim.x) y[j] = nw[j] * (y[j] * r);
  } else if (qk_norm == 1) { /* per head, weight [d] */
    const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nwp = blockDim.x >> 5;
    for (int hh = w; hh < nh; hh += nwp) {
      float ss = 0.f;
      for (int i = lane; i < d; i += 32) ss += y[hh * d + i] * y[hh * d + i];
      ss = sd_warp_sum(ss);
      if (lane == 0) rs[hh] = 1.0f / sqrtf(ss / (float)d + eps);
    }
    __syncthreads();
    for (int j = threadIdx.x; j < n; j += blockDim.x) y[j] = nw[j % d] * (y[j] * rs[j / d]);
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < nh * half; idx += blockDim.x) {
    const int hh = idx / half, i = idx % half;
    const float a = y[hh * d + i], b = y[hh * d + i + half], cs = cos_r[i], sn = sin_r[i];
    const float o1 = a * cs - b * sn, o2 = b * cs + a * sn;
    if (of) { of[hh * d + i] = o1; of[hh * d + i + half] = o2; }
    if (ob) { ob[hh * d + i] = xd_f2bf(o1); ob[hh * d + i + half] = xd_f2bf(o2); }
  }
}

__global__ void k_qk_prep(float *qo, float *ko, uint16_t *qb, uint16_t *kb, uint16_t *vb, const float *qr,
                          const float *kr, const float *vr, const float *qn, const float *kn, int qk_norm,
                          const float *cos_t, const float *sin_t, const int32_t *pos, int H, int G, int d, float eps) {
  extern __shared__ float y[];
  const size_t n = blockIdx.x;
  const int which = blockIdx.y, half = d / 2;
  if (which == 2) {
    for (int j = threadIdx.x; j < G * d; j += blockDim.x) vb[n * G * d + j] = xd_f2bf(vr[n * G * d + j]);
    return;
  }
  const int nh = which == 0 ? H : G;
  const size_t p = (size_t)pos[n];
  sd_norm_rope_row(y, (which == 0 ? qr : kr) + n * nh * d, nh, d, qk_norm, which == 0 ? qn : kn, eps,
                   cos_t + p * half, sin_t + p * half, (which == 0 ? qo : ko) + n * nh * d,
                   (which == 0 ? qb : kb) + n * nh * d);
}

extern "C" int xd_cuda_student_qk_prep(xd_cuda_ctx *c, float *q, float *k, uint16_t *qb, uint16_t *kb, uint16_t *vb,
                                       const float *q_raw, const float *k_raw, const float *v_raw, const float *q_norm,
                                       const float *k_norm, int qk_norm, const float *cos_t, const float *sin_t,
                                       const int32_t *pos, int N, int H, int G, int d, float eps, xd_err *e) {
  XD_ARG(N >= 1 && H >= 1 && G >= 1 && d >= 2 && d % 2 == 0 && H <= 256 && qk_norm >= 0 && qk_norm <= 2);
  XD_ARG(qk_norm == 0 || (q_norm && k_norm));
  const size_t smem = (size_t)H * d * sizeof(float);
  XD_ARG(smem <= 48 * 1024);
  k_qk_prep<<<dim3(N, 3), SD_THREADS, smem, c->stream>>>(q, k, qb, kb, vb, q_raw, k_raw, v_raw, q_norm, k_norm,
                                                          qk_norm, cos_t, sin_t, pos, H, G, d, eps);
  XD_CU_LAUNCH("k_qk_prep");
  return 0;
}

/* Sliding-window + sinks attention for any d <= 256 (the flash kernel takes d 64/128 only):
 * one block per (query token, head), scores of its <= S+W keys in shared memory. fp32 in/out,
 * same key set as swa_forward. q [B,T,H,d], k, v [B,T,G,d], out [B,T,H,d]. */
__global__ void k_swa_naive(float *out, float *lse, const float *q, const float *k, const float *v, int T, int H,
                            int G, int d, int W, int S) {
  extern __shared__ float sm[];
  float *qs = sm, *sc = sm + d;
  const int bt = blockIdx.x, h = blockIdx.y, b = bt / T, t = bt % T, g = h / (H / G);
  const int ws = t - W + 1 > 0 ? t - W + 1 : 0, ns = ws < S ? ws : S, n = ns + t - ws + 1;
  const float scale = 1.0f / sqrtf((float)d);
  for (int i = threadIdx.x; i < d; i += blockDim.x) qs[i] = q[((size_t)bt * H + h) * d + i];
  __syncthreads();
  float mx = -INFINITY;
  for (int kk = threadIdx.x; kk < n; kk += blockDim.x) {
    const int s = kk < ns ? kk : ws + (kk - ns);
    const float *kr = k + (((size_t)b * T + s) * G + g) * d;
    float a = 0.f;
    for (int i = 0; i < d; i++) a += qs[i] * kr[i];
    a *= scale;
    sc[kk] = a;
    mx = fmaxf(mx, a);
  }
  mx = sd_block_max(mx);
  float sum = 0.f;
  for (int kk = threadIdx.x; kk < n; kk += blockDim.x) {
    const float p = __expf(sc[kk] - mx);
    sc[kk] = p;
    sum += p;
  }
  sum = sd_block_sum(sum); /* (its internal barriers also publish sc) */
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float a = 0.f;
    for (int kk = 0; kk < n; kk++) {
      const int s = kk < ns ? kk : ws + (kk - ns);
      a += sc[kk] * v[(((size_t)b * T + s) * G + g) * d + i];
    }
    out[((size_t)bt * H + h) * d + i] = a / sum;
  }
  if (lse && threadIdx.x == 0) lse[(size_t)bt * H + h] = mx + logf(sum);
}

extern "C" int xd_cuda_swa_naive_forward_lse(xd_cuda_ctx *c, float *out, float *lse, const float *q, const float *k,
                                             const float *v, int B, int T, int H, int G, int d, int W, int S, xd_err *e) {
  XD_ARG(B >= 1 && T >= 1 && G >= 1 && H % G == 0 && d >= 1 && d <= 256 && W >= 1 && S >= 0);
  const size_t smem = ((size_t)d + (size_t)(W + S)) * sizeof(float);
  XD_ARG(smem <= 48 * 1024);
  k_swa_naive<<<dim3(B * T, H), SD_THREADS, smem, c->stream>>>(out, lse, q, k, v, T, H, G, d, W, S);
  XD_CU_LAUNCH("k_swa_naive");
  return 0;
}

extern "C" int xd_cuda_swa_naive_forward(xd_cuda_ctx *c, float *out, const float *q, const float *k, const float *v,
                                         int B, int T, int H, int G, int d, int W, int S, xd_err *e) {
  return xd_cuda_swa_naive_forward_lse(c, out, NULL, q, k, v, B, T, H, G, d, W, S, e);
}

/* Prefill -> decode hand-off of the local branch: token t of kb/vb [n, Gd] goes to sink slot t
 * (t < S) and to ring slot t % W when t >= n - W (the ring's final content). */
__global__ void k_ring_fill(uint16_t *ks, uint16_t *vs, uint16_t *kr, uint16_t *vr, const uint16_t *kb,
                            const uint16_t *vb, int n, int Gd, int W, int S) {
  const int t = blockIdx.x;
  const size_t src = (size_t)t * Gd;
  for (int j = threadIdx.x; j < Gd; j += blockDim.x) {
    if (t < S) { ks[(size_t)t * Gd + j] = kb[src + j]; vs[(size_t)t * Gd + j] = vb[src + j]; }
    if (t >= n - W) { kr[(size_t)(t % W) * Gd + j] = kb[src + j]; vr[(size_t)(t % W) * Gd + j] = vb[src + j]; }
  }
}

extern "C" int xd_cuda_student_ring_fill(xd_cuda_ctx *c, uint16_t *k_sink, uint16_t *v_sink, uint16_t *k_ring,
                                         uint16_t *v_ring, const uint16_t *kb, const uint16_t *vb, int n, int Gd, int W,
                                         int S, xd_err *e) {
  XD_ARG(n >= 1 && Gd >= 1 && W >= 1 && S >= 0);
  k_ring_fill<<<n, 128, 0, c->stream>>>(k_sink, v_sink, k_ring, v_ring, kb, vb, n, Gd, W, S);
  XD_CU_LAUNCH("k_ring_fill");
  return 0;
}

/* ---- decode step ------------------------------------------------------------------------- */
enum { GEMV_STORE = 0, GEMV_ACCUM = 1, GEMV_SWIGLU = 2 };

/* out[r] (+)= W[r,:] . xn + b[r], xn = rmsnorm(x, nw) (nw NULL: x). SWIGLU: W holds gate rows
 * [0,F) then up rows [F,2F); out[f] = silu(g_f) * u_f for f < rows. Block 0 also writes xn to
 * xout when given. One warp per row, 16-byte weight loads when Din % 8 == 0. */
template <int MODE>
__global__ void __launch_bounds__(256) k_gemv(float *out, const float *x, const float *nw, float eps,
                                              const uint16_t *W, const float *bias, int Din, int rows, int rpb,
                                              float *xout) {
  extern __shared__ float xs[];
  float r = 1.f;
  if (nw) {
    float ss = 0.f;
    for (int j = threadIdx.x; j < Din; j += blockDim.x) ss += x[j] * x[j];
    ss = sd_block_sum(ss);
    r = 1.0f / sqrtf(ss / (float)Din + eps);
  }
  for (int j = threadIdx.x; j < Din; j += blockDim.x) {
    const float v = nw ? nw[j] * (x[j] * r) : x[j];
    xs[j] = v;
    if (xout && blockIdx.x == 0) xout[j] = v;
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  const int r0 = blockIdx.x * rpb, r1 = min(r0 + rpb, rows);
  const bool vec = (Din & 7) == 0;
  for (int row = r0 + warp; row < r1; row += nwarps) {
    float acc[2] = {0.f, 0.f};
#pragma unroll
    for (int part = 0; part < (MODE == GEMV_SWIGLU ? 2 : 1); part++) {
      const uint16_t *wr = W + (size_t)(row + part * rows) * Din;
      float a = 0.f;
      if (vec) {
#pragma unroll 4
        for (int j = lane * 8; j < Din; j += 256) {
          const uint4 u = __ldg(reinterpret_cast<const uint4 *>(wr + j));
          const float4 x0 = *reinterpret_cast<const float4 *>(xs + j), x1 = *reinterpret_cast<const float4 *>(xs + j + 4);
          a += __uint_as_float(u.x << 16) * x0.x + __uint_as_float(u.x & 0xffff0000u) * x0.y;
          a += __uint_as_float(u.y << 16) * x0.z + __uint_as_float(u.y & 0xffff0000u) * x0.w;
          a += __uint_as_float(u.z << 16) * x1.x + __uint_as_float(u.z & 0xffff0000u) * x1.y;
          a += __uint_as_float(u.w << 16) * x1.z + __uint_as_float(u.w & 0xffff0000u) * x1.w;
        }
      } else {
        for (int j = lane; j < Din; j += 32) a += xd_bf2f(wr[j]) * xs[j];
      }
      acc[part] = sd_warp_sum(a);
    }
    if (lane == 0) {
      if (MODE == GEMV_SWIGLU) {
        const float g = acc[0] + (bias ? bias[row] : 0.f), u = acc[1] + (bias ? bias[row + rows] : 0.f);
        out[row] = g / (1.f + expf(-g)) * u;
      } else {
        const float y = acc[0] + (bias ? bias[row] : 0.f);
        if (MODE == GEMV_ACCUM) out[row] += y; else out[row] = y;
      }
    }
  }
}


/* k_gemv3 (issue #8; the split step's GEMV): a block of 8 warps covers RB = 8 / KS rows, KS
 * warps per row each over Din / KS columns (partials summed in warp order through shared
 * memory, deterministic), rpw row groups per block, sized by the host to one wave of resident
 * blocks. The warp's work is streamed: a sequence of steps (row group, chunk of 256 * GV3_U
 * columns), the 16-byte loads of step s + 1 issued before the FMAs of step s (two register
 * buffers of GV3_U loads per part, x2 for SwiGLU's gate and up rows), so a warp keeps requests
 * in flight across its whole row range; the first step's loads go out before the PDL wait and
 * the prologue (rmsnorm / staging of x in shared memory, only when normed or copied to xout;
 * otherwise x is read directly through L1). Vector path only (Din % (8 * KS) == 0); the host
 * falls back to k_gemv for other Din. Same output modes as k_gemv. */
#define GV3_U 4
#define GV3_LOAD(B, ST)                                                                                             \
  do {                                                                                                              \
    const int it_ = (ST) / nch, c0_ = ((ST) % nch) * 256 * GV3_U;                                                   \
    const int row_ = (blockIdx.x * rpw + it_) * RB + warp / KS;                                                     \
    _Pragma("unroll") for (int part = 0; part < NP; part++) {                                                       \
      const uint16_t *wr_ = W + (size_t)(row_ + part * rows) * Din + kbeg + c0_;                                    \
      _Pragma("unroll") for (int u = 0; u < GV3_U; u++) {                                                           \
        const int j_ = lane * 8 + u * 256;                                                                          \
        B[part][u] = row_ < rows && c0_ + j_ < klen ? __ldg(reinterpret_cast<const uint4 *>(wr_ + j_)) : make_uint4(0, 0, 0, 0); \
      }                                                                                                             \
    }                                                                                                               \
  } while (0)
#define GV3_STEP(B, ST)                                                                                             \
  do {                                                                                                              \
    const int it_ = (ST) / nch, ci_ = (ST) % nch, c0_ = ci_ * 256 * GV3_U;                                          \
    const int row_ = (blockIdx.x * rpw + it_) * RB + warp / KS;                                                     \
    _Pragma("unroll") for (int u = 0; u < GV3_U; u++) {                                                             \
      const int j_ = c0_ + lane * 8 + u * 256;                                                                      \
      if (row_ < rows && j_ < klen) {                                                                               \
        const float4 x0 = *reinterpret_cast<const float4 *>(xv + kbeg + j_);                                        \
        const float4 x1 = *reinterpret_cast<const float4 *>(xv + kbeg + j_ + 4);                                    \
        _Pragma("unroll") for (int part = 0; part < NP; part++) {                                                   \
          const uint4 w = B[part][u];                                                                               \
          float a = acc[part];                                                                                      \
          a += __uint_as_float(w.x << 16) * x0.x + __uint_as_float(w.x & 0xffff0000u) * x0.y;                       \
          a += __uint_as_float(w.y << 16) * x0.z + __uint_as_float(w.y & 0xffff0000u) * x0.w;                       \
          a += __uint_as_float(w.z << 16) * x1.x + __uint_as_float(w.z & 0xffff0000u) * x1.y;                       \
          a += __uint_as_float(w.w << 16) * x1.z + __uint_as_float(w.w & 0xffff0000u) * x1.w;                       \
          acc[part] = a;                                                                                            \
        }                                                                                                           \
      }                                                                                                             \
    }                                                                                                               \
    if (ci_ == nch - 1) { /* end of the row group: reduce and write (block-uniform branch) */                       \
      _Pragma("unroll") for (int part = 0; part < NP; part++) acc[part] = sd_warp_sum(acc[part]);                   \
      if (KS > 1) {                                                                                                 \
        if (lane == 0) {                                                                                            \
          _Pragma("unroll") for (int part = 0; part < NP; part++) red[warp][part] = acc[part];                      \
        }                                                                                                           \
        __syncthreads();                                                                                            \
        if (kp == 0) {                                                                                              \
          _Pragma("unroll") for (int part = 0; part < NP; part++) {                                                 \
            float a = 0.f;                                                                                          \
            for (int q = 0; q < KS; q++) a += red[warp + q][part];                                                  \
            acc[part] = a;                                                                                          \
          }                                                                                                         \
        }                                                                                                           \
        __syncthreads();                                                                                            \
      }                                                                                                             \
      if (lane == 0 && kp == 0 && row_ < rows) {                                                                    \
        if (MODE == GEMV_SWIGLU) {                                                                                  \
          const float g = acc[0] + (bias ? bias[row_] : 0.f), uu = acc[NP - 1] + (bias ? bias[row_ + rows] : 0.f);  \
          out[row_] = g / (1.f + expf(-g)) * uu;                                                                    \
        } else {                                                                                                    \
          const float y = acc[0] + (bias ? bias[row_] : 0.f);                                                       \
          if (MODE == GEMV_ACCUM) out[row_] += y; else out[row_] = y;                                               \
        }                                                                                                           \
      }                                                                                                             \
      _Pragma("unroll") for (int part = 0; part < NP; part++) acc[part] = 0.f;                                      \
    }                                                                                                               \
  } while (0)

template <int MODE, int KS, int PRE2>
__global__ void __launch_bounds__(256) k_gemv3(float *out, const float *x, const float *nw, float eps,
                                               const uint16_t *W, const float *bias, int Din, int rows, int rpw,
                                               float *xout) {
  extern __shared__ float xs[];
  __shared__ float red[8][2];
  constexpr int RB = 8 / KS, NP = MODE == GEMV_SWIGLU ? 2 : 1;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, kp = warp % KS;
  const int klen = Din / KS, kbeg = kp * klen;
  const int nch = (klen + 256 * GV3_U - 1) / (256 * GV3_U), nst = rpw * nch;
  uint4 b0[NP][GV3_U], b1[NP][GV3_U];
  sd_pdl_trigger();
  GV3_LOAD(b0, 0);
  if (PRE2 && nst > 1) GV3_LOAD(b1, 1); /* XD_SDEC_PRE2: the second step's loads before the wait too */
  sd_pdl_wait(); /* x (and out for ACCUM) come from the previous kernels */
  const bool staged = nw || xout;
  if (staged) { /* x staged raw with 16-byte loads when aligned, sum of squares on the way; then the norm */
    float r = 1.f, ss = 0.f;
    const bool v4 = (Din & 3) == 0 && (((uintptr_t)x | (uintptr_t)nw | (uintptr_t)xout) & 15) == 0;
    if (v4) {
#pragma unroll 4
      for (int j = threadIdx.x * 4; j < Din; j += blockDim.x * 4) {
        const float4 v = __ldg(reinterpret_cast<const float4 *>(x + j));
        *reinterpret_cast<float4 *>(xs + j) = v;
        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
      }
    } else {
      for (int j = threadIdx.x; j < Din; j += blockDim.x) {
        const float v = x[j];
        xs[j] = v;
        ss += v * v;
      }
    }
    if (nw) {
      ss = sd_block_sum(ss);
      r = 1.0f / sqrtf(ss / (float)Din + eps);
    } else {
      __syncthreads();
    }
    if (nw && v4) {
#pragma unroll 4
      for (int j = threadIdx.x * 4; j < Din; j += blockDim.x * 4) {
        const float4 w4 = __ldg(reinterpret_cast<const float4 *>(nw + j));
        float4 v = *reinterpret_cast<const float4 *>(xs + j);
        v.x = w4.x * (v.x * r), v.y = w4.y * (v.y * r), v.z = w4.z * (v.z * r), v.w = w4.w * (v.w * r);
        *reinterpret_cast<float4 *>(xs + j) = v;
        if (xout && blockIdx.x == 0) *reinterpret_cast<float4 *>(xout + j) = v;
      }
    } else {
      for (int j = threadIdx.x; j < Din; j += blockDim.x) {
        const float v = nw ? nw[j] * (xs[j] * r) : xs[j];
        xs[j] = v;
        if (xout && blockIdx.x == 0) xout[j] = v;
      }
    }
    __syncthreads();
  }
  const float *xv = staged ? xs : x;
  float acc[NP];
#pragma unroll
  for (int part = 0; part < NP; part++) acc[part] = 0.f;
  for (int st = 0; st < nst; st += 2) {
    if (st + 1 < nst && !(PRE2 && st == 0)) GV3_LOAD(b1, st + 1);
    GV3_STEP(b0, st);
    if (st + 1 < nst) {
      if (st + 2 < nst) GV3_LOAD(b0, st + 2);
      GV3_STEP(b1, st + 1);
    }
  }
}
#undef GV3_LOAD
#undef GV3_STEP

typedef void (*gemv3_fn)(float *, const float *, const float *, float, const uint16_t *, const float *, int, int, int, float *);
template <int MODE, int PRE2>
static gemv3_fn gemv3_pick_ks(int KS) {
  return KS == 1 ? k_gemv3<MODE, 1, PRE2> : KS == 2 ? k_gemv3<MODE, 2, PRE2> : KS == 4 ? k_gemv3<MODE, 4, PRE2> : k_gemv3<MODE, 8, PRE2>;
}
/* k_gemv3<mode, KS, pre2> */
static gemv3_fn gemv3_pick(int mode, int KS, int pre2) {
  if (mode == GEMV_STORE) return pre2 ? gemv3_pick_ks<GEMV_STORE, 1>(KS) : gemv3_pick_ks<GEMV_STORE, 0>(KS);
  if (mode == GEMV_ACCUM) return pre2 ? gemv3_pick_ks<GEMV_ACCUM, 1>(KS) : gemv3_pick_ks<GEMV_ACCUM, 0>(KS);
  return pre2 ? gemv3_pick_ks<GEMV_SWIGLU, 1>(KS) : gemv3_pick_ks<GEMV_SWIGLU, 0>(KS);
}
/* resident blocks per SM of k_gemv3<mode, KS, pre2> (cached; 0 on error) */
static int gemv3_occ(int mode, int KS, int pre2, size_t smem) {
  static int cache[3][4][2][2];
  const int ki = KS == 1 ? 0 : KS == 2 ? 1 : KS == 4 ? 2 : 3, si = smem > 0;
  if (cache[mode][ki][pre2][si]) return cache[mode][ki][pre2][si];
  int n = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, gemv3_pick(mode, KS, pre2), 256, smem) != cudaSuccess) n = 0;
  cache[mode][ki][pre2][si] = n;
  return n;
}

static int sd_gemv(xd_cuda_ctx *c, int legacy, int variant, int mode, float *out, const float *x, const float *nw, float eps,
                   const uint16_t *W, const float *bias, int Din, int rows, float *xout, xd_err *e) {
  const int sms = c->sm_count > 0 ? c->sm_count : 132;
  if (!legacy && Din % 8 == 0) {
    /* KS: the largest K split (each part >= 256 columns) whose grid of 8 / KS-row blocks is
     * one wave at 4 resident blocks per SM; then one wave of k_gemv3 at its occupancy:
     * rpw = ceil(groups / resident blocks), grid = ceil(groups / rpw) */
    int KS = 1;
    while (KS < 8 && (size_t)rows * 2 * KS / 8 <= (size_t)4 * sms && Din % (16 * KS) == 0 && Din / (2 * KS) >= 256) KS *= 2;
    const bool pdl = (variant & XD_SDEC_PDL) != 0;
    const int pre2 = (variant & XD_SDEC_PRE2) != 0;
    const size_t groups = xd_ceil_div((size_t)rows, (size_t)(8 / KS));
    const size_t smem3 = (nw || xout) ? (size_t)Din * sizeof(float) : 0;
    const int occ = gemv3_occ(mode, KS, pre2, smem3);
    if (occ > 0) {
      const size_t rpw3 = xd_ceil_div(groups, (size_t)occ * sms);
      const unsigned grid3 = (unsigned)xd_ceil_div(groups, rpw3);
      XD_CU(sd_launch(pdl, gemv3_pick(mode, KS, pre2), dim3(grid3), dim3(256), smem3, c->stream, out, x, nw, eps, W, bias,
                      Din, rows, (int)rpw3, xout));
      XD_CU_LAUNCH("k_gemv3");
      return 0;
    }
  }
  /* legacy, Din % 8 != 0 or no occupancy: k_gemv */
  /* rows per block: 8 warps x k rows, k chosen for >= ~2 blocks per SM */
  int rpw = rows / (8 * 2 * sms);
  rpw = rpw < 1 ? 1 : rpw > 8 ? 8 : rpw;
  const int rpb = 8 * rpw;
  const size_t smem = (size_t)Din * sizeof(float);
  const unsigned grid = xd_ceil_div((size_t)rows, (size_t)rpb);
  if (mode == GEMV_STORE)
    k_gemv<GEMV_STORE><<<grid, 256, smem, c->stream>>>(out, x, nw, eps, W, bias, Din, rows, rpb, xout);
  else if (mode == GEMV_ACCUM)
    k_gemv<GEMV_ACCUM><<<grid, 256, smem, c->stream>>>(out, x, nw, eps, W, bias, Din, rows, rpb, xout);
  else
    k_gemv<GEMV_SWIGLU><<<grid, 256, smem, c->stream>>>(out, x, nw, eps, W, bias, Din, rows, rpb, xout);
  XD_CU_LAUNCH("k_gemv");
  return 0;
}

/* h[b] = embedding row of params[b].id, b = blockIdx.y (one sequence: grid y 1) */
__global__ void k_dec_embed(float *h, const uint16_t *table, const xd_cuda_sdec_params *prm, int D) {
  sd_pdl_trigger();
  const size_t id = (size_t)prm[blockIdx.y].id;
  h += (size_t)blockIdx.y * D;
  for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < D; j += gridDim.x * blockDim.x) h[j] = xd_bf2f(table[id * D + j]);
}

__device__ __forceinline__ double sd_logsig(double x) { return x >= 0 ? -log1p(exp(-x)) : x - log1p(exp(x)); }

/* Gates of query head `head` from the layer's (normed) input xn (legacy k_dec_prep). */
__device__ void sd_gates(const xd_cuda_sdec &m, const xd_cuda_sdec_layer &Ly, int head) {
  float ai = 0.f, af = 0.f;
  const float *wi = Ly.w_i + (size_t)head * m.D, *wf = Ly.w_f + (size_t)head * m.D;
  for (int j = threadIdx.x; j < m.D; j += blockDim.x) { ai += m.xn[j] * wi[j]; af += m.xn[j] * wf[j]; }
  ai = sd_block_sum(ai);
  af = sd_block_sum(af);
  if (threadIdx.x == 0) {
    float zi = ai + Ly.b_i[head], zf = af + Ly.b_f[head];
    if (m.softcap > 0) { zi = m.softcap * tanhf(zi / m.softcap); zf = m.softcap * tanhf(zf / m.softcap); }
    m.ig[head] = zi;
    m.fg[head] = zf;
  }
}

/* Legacy (the reference of issue #8), per head: blocks [0,H) query heads, [H,H+G) KV heads.
 * QK-norm + RoPE (the step's rows), feature map; query heads also the gates, KV heads append k
 * (roped) and v to ring / sinks. */
__global__ void k_dec_prep(const xd_cuda_sdec m, const xd_cuda_sdec_layer Ly) {
  extern __shared__ float sm[];
  const int H = m.H, G = m.G, d = m.d, P = m.P, dp = m.hedgehog ? P / 2 : P;
  const int blk = blockIdx.x, isq = blk < H, head = isq ? blk : blk - H, nh = isq ? H : G;
  float *y = sm, *yr = sm + d, *z = sm + 2 * d; /* [d], [d], [P] */
  const xd_cuda_sdec_params *prm = m.params;
  const int64_t pos = prm->pos;
  const float *rawall = m.qkv + (isq ? 0 : (size_t)H * d), *raw = rawall + (size_t)head * d;
  const float *nw = isq ? Ly.q_norm : Ly.k_norm;
  float r = 1.f;
  if (m.qk_norm == 2) {
    float ss = 0.f;
    for (int j = threadIdx.x; j < nh * d; j += blockDim.x) ss += rawall[j] * rawall[j];
    ss = sd_block_sum(ss);
    r = 1.0f / sqrtf(ss / (float)(nh * d) + m.rms_eps);
  } else if (m.qk_norm == 1) {
    float ss = 0.f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) ss += raw[j] * raw[j];
    ss = sd_block_sum(ss);
    r = 1.0f / sqrtf(ss / (float)d + m.rms_eps);
  }
  for (int i = threadIdx.x; i < d; i += blockDim.x)
    y[i] = m.qk_norm == 2 ? nw[head * d + i] * (raw[i] * r) : m.qk_norm == 1 ? nw[i] * (raw[i] * r) : raw[i];
  __syncthreads();
  const int half = d / 2;
  const float *cs = prm->cos[Ly.rope_kind], *sn = prm->sin[Ly.rope_kind];
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const float a = y[i], b = y[i + half];
    yr[i] = a * cs[i] - b * sn[i];
    yr[i + half] = b * cs[i] + a * sn[i];
  }
  __syncthreads();
  float *qo = isq ? m.q + (size_t)head * d : m.k + (size_t)head * d;
  for (int i = threadIdx.x; i < d; i += blockDim.x) qo[i] = yr[i];
  if (!isq) {
    const size_t Gd = (size_t)G * d, slot = (size_t)(pos % Ly.W);
    const float *vraw = m.qkv + (size_t)(H + G) * d + (size_t)head * d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
      const uint16_t kb = xd_f2bf(yr[i]), vb = xd_f2bf(vraw[i]);
      Ly.k_ring[slot * Gd + head * d + i] = kb;
      Ly.v_ring[slot * Gd + head * d + i] = vb;
      if (pos < Ly.S) { Ly.k_sink[pos * Gd + head * d + i] = kb; Ly.v_sink[pos * Gd + head * d + i] = vb; }
    }
  }
  /* feature map: z = yr P_head, softmax (hedgehog: [softmax(z), softmax(-z)]) */
  const float *Pm = (isq ? Ly.P_q : Ly.P_k) + (size_t)head * d * dp;
  float mx = -INFINITY, mn = INFINITY;
  for (int j = threadIdx.x; j < dp; j += blockDim.x) {
    float a = 0.f;
#pragma unroll 8
    for (int i = 0; i < d; i++) a += yr[i] * Pm[(size_t)i * dp + j];
    z[j] = a;
    mx = fmaxf(mx, a);
    mn = fminf(mn, a);
  }
  mx = sd_block_max(mx);
  mn = -sd_block_max(-mn);
  float s1 = 0.f, s2 = 0.f;
  for (int j = threadIdx.x; j < dp; j += blockDim.x) {
    s1 += expf(z[j] - mx);
    if (m.hedgehog) s2 += expf(mn - z[j]);
  }
  s1 = sd_block_sum(s1);
  s2 = m.hedgehog ? sd_block_sum(s2) : 1.f;
  float *phi = (isq ? m.qf : m.kf) + (size_t)head * P;
  for (int j = threadIdx.x; j < dp; j += blockDim.x) {
    phi[j] = expf(z[j] - mx) / s1;
    if (m.hedgehog) phi[dp + j] = expf(mn - z[j]) / s2;
  }
  if (isq) sd_gates(m, Ly, head);
}

/* Per query head: local attention over sinks + ring, mLSTM recurrent step, mixing gate;
 * writes att[h*d..] (fp32, the o projection's input). */
__global__ void k_dec_core(const xd_cuda_sdec m, const xd_cuda_sdec_layer Ly) {
  extern __shared__ float sm[];
  const int H = m.H, G = m.G, d = m.d, P = m.P, h = blockIdx.x, g = h / (H / G);
  float *qs = sm, *loc = sm + d, *num = sm + 2 * d, *sc = num + 2 * SD_THREADS; /* num: [nsplit, d] partials, nsplit*d <= blockDim */
  __shared__ float gate[4];
  const int64_t t = m.params->pos;
  const int W = Ly.W, S = Ly.S;
  const int64_t ws = t - W + 1 > 0 ? t - W + 1 : 0, ns = ws < S ? ws : S;
  const int n = (int)(ns + t - ws + 1);
  const size_t Gd = (size_t)G * d;
  const float scale = 1.0f / sqrtf((float)d);
  for (int i = threadIdx.x; i < d; i += blockDim.x) qs[i] = m.q[(size_t)h * d + i];
  __syncthreads();
  float mx = -INFINITY;
  for (int kk = threadIdx.x; kk < n; kk += blockDim.x) {
    const uint16_t *kr = kk < ns ? Ly.k_sink + (size_t)kk * Gd : Ly.k_ring + (size_t)((ws + (kk - ns)) % W) * Gd;
    kr += (size_t)g * d;
    float a = 0.f;
    if ((d & 7) == 0) { /* 16-byte loads, all issued before the sums */
#pragma unroll 4
      for (int i = 0; i < d; i += 8) {
        const uint4 u = *reinterpret_cast<const uint4 *>(kr + i);
        a += qs[i] * __uint_as_float(u.x << 16) + qs[i + 1] * __uint_as_float(u.x & 0xffff0000u);
        a += qs[i + 2] * __uint_as_float(u.y << 16) + qs[i + 3] * __uint_as_float(u.y & 0xffff0000u);
        a += qs[i + 4] * __uint_as_float(u.z << 16) + qs[i + 5] * __uint_as_float(u.z & 0xffff0000u);
        a += qs[i + 6] * __uint_as_float(u.w << 16) + qs[i + 7] * __uint_as_float(u.w & 0xffff0000u);
      }
    } else {
      for (int i = 0; i < d; i++) a += qs[i] * xd_bf2f(kr[i]);
    }
    a *= scale;
    sc[kk] = a;
    mx = fmaxf(mx, a);
  }
  mx = sd_block_max(mx);
  float sum = 0.f;
  for (int kk = threadIdx.x; kk < n; kk += blockDim.x) {
    const float p = __expf(sc[kk] - mx);
    sc[kk] = p;
    sum += p;
  }
  sum = sd_block_sum(sum);
  /* P V: nsplit groups of d threads over interleaved keys, partials summed in order */
  const int nsplit = blockDim.x / d;
  {
    const int i = threadIdx.x % d, sp = threadIdx.x / d;
    if (sp < nsplit) {
      float a = 0.f;
#pragma unroll 8
      for (int kk = sp; kk < n; kk += nsplit) {
        const uint16_t *vr = kk < ns ? Ly.v_sink + (size_t)kk * Gd : Ly.v_ring + (size_t)((ws + (kk - ns)) % W) * Gd;
        a += sc[kk] * xd_bf2f(vr[(size_t)g * d + i]);
      }
      num[sp * d + i] = a;
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float a = 0.f;
    for (int sp = 0; sp < nsplit; sp++) a += num[sp * d + i];
    loc[i] = a / sum;
  }
  __syncthreads();
  /* mLSTM step (mlstm_recurrent_step): C = f' C + i' k v^T, n = f' n + i' k, h = C^T(s q) / den */
  if (threadIdx.x == 0) {
    const double l = sd_logsig((double)m.fg[h]), i = (double)m.ig[h], mp = (double)Ly.m[h], a = l + mp;
    const double mt = a >= i ? a : i;
    gate[0] = (float)exp(a - mt);
    gate[1] = (float)exp(i - mt);
    gate[2] = (float)mt;
    Ly.m[h] = (float)mt;
  }
  __syncthreads();
  const float fp = gate[0], ip = gate[1];
  const float sq = (float)(1.0 / sqrt((double)P));
  const float *qf = m.qf + (size_t)h * P, *kf = m.kf + (size_t)g * P;
  const float *v = m.qkv + (size_t)(H + G) * d + (size_t)g * d;
  float *C = Ly.C + (size_t)h * P * d, *nn = Ly.n + (size_t)h * P;
  {
    const int j = threadIdx.x % d, sp = threadIdx.x / d;
    if (sp < nsplit) {
      const float vj = v[j];
      float a = 0.f;
#pragma unroll 4
      for (int p = sp; p < P; p += nsplit) {
        const float cn = fp * C[(size_t)p * d + j] + (ip * kf[p]) * vj;
        C[(size_t)p * d + j] = cn;
        a += cn * qf[p];
      }
      num[sp * d + j] = a;
    }
  }
  float dn = 0.f;
  for (int p = threadIdx.x; p < P; p += blockDim.x) {
    const float nv = fp * nn[p] + ip * kf[p];
    nn[p] = nv;
    dn += qf[p] * nv;
  }
  dn = sd_block_sum(dn) * sq; /* barriers inside also publish num */
  float ad = fabsf(dn);
  if (m.norm_max) {
    const float lo = expf(-gate[2]);
    if (!(ad >= lo)) ad = lo;
  }
  const float inv = 1.f / (ad + m.mlstm_eps);
  /* mixing gate from the raw projections */
  const float *qraw = m.qkv + (size_t)h * d, *kraw = m.qkv + (size_t)H * d + (size_t)g * d, *wo = Ly.w_mix + (size_t)h * 3 * d;
  float z = 0.f;
  for (int i = threadIdx.x; i < d; i += blockDim.x) z += qraw[i] * wo[i] + kraw[i] * wo[d + i] + v[i] * wo[2 * d + i];
  z = sd_block_sum(z) + Ly.b_mix[h];
  const float o = 1.f / (1.f + expf(-z));
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    float a = 0.f;
    for (int sp = 0; sp < nsplit; sp++) a += num[sp * d + j];
    const float glob = sq * a * inv;
    m.att[(size_t)h * d + j] = o * glob + (1.f - o) * loc[j];
  }
}

/* ---- the per-head step: one clustered kernel (issue #8) ---------------------------------
 * k_dec_head (replaces the legacy k_dec_prep + k_dec_core): grid (HD_R, H), one thread-block
 * cluster of HD_R blocks (HD_T = 128 threads each; 256 when the softmax's d_phi > 128 or with
 * XD_SDEC_T256) per query head h. Block r of the cluster:
 *   before the PDL wait (nothing an earlier kernel of the step writes): its keys / values of
 *   the sinks + ring (warp w holds keys r*NW + w + u*NW*HD_R, 32-bit bf16 pairs per lane; the
 *   newest key, whose ring slot this step overwrites, is not read), its rows of the feature
 *   maps' P_q / P_k, its columns of the gate rows w_i / w_f, its rows of the mLSTM state C / n,
 *   m[h], the RoPE row and (rank 0) the mixing gate's weights;
 *   after the wait: QK-norm + RoPE of the head's q and its KV head's k (every block, d values),
 *   partial feature-map products and gate dots over its share; cluster barrier; every block
 *   sums the HD_R partials (distributed shared memory, rank order), softmax, gates (fp32); its
 *   keys' attention partial (max, sum, numerator) and its mLSTM rows (update in place, partial
 *   readout and denominator, the mixing gate's dot in the same block reduction), both pushed
 *   into rank 0's shared memory; cluster barrier; rank 0 merges, applies the normaliser and the
 *   mixing gate, writes att and m[h]. The first query head of each KV group (rank 0) appends
 *   k, v to the ring / sinks; every block uses the bf16-rounded k, v of the step from registers
 *   for the newest key, as the legacy kernel reads them back from the ring. Two cluster
 *   barriers instead of kernel boundaries. The kernel is a latency chain (~2 warps per
 *   scheduler, ncu: ~10 cycles per issued instruction), so its cost is its instruction count
 *   (branch `decode6`): the attention has no per-key branches (all HD_KU scores computed, keys
 *   past n masked, the HD_KU warp sums interleaved), ring slots need no integer division, and
 *   the gate math is fp32, not fp64. */
#define HD_R 8   /* blocks per head (cluster size) */
#define HD_FU 4  /* feature-map rows per thread prefetched (more: loaded after the wait) */
#define HD_GU 2  /* gate columns per thread prefetched */
#define HD_CU 4  /* mLSTM C elements per thread prefetched */
#define HD_KEYS 576 /* keys per head prefetched into registers (W + S beyond: loaded after the wait) */

/* two block-wide reductions in one pass (blockDim a multiple of 32, every thread gets both) */
__device__ float2 sd_block_sum2(float a, float b) {
  __shared__ float2 red2[32];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  a = sd_warp_sum(a), b = sd_warp_sum(b);
  __syncthreads();
  if (lane == 0) red2[w] = make_float2(a, b);
  __syncthreads();
  const float2 v = lane < nw ? red2[lane] : make_float2(0.f, 0.f);
  return make_float2(sd_warp_sum(v.x), sd_warp_sum(v.y));
}
__device__ float2 sd_block_max2(float a, float b) {
  __shared__ float2 red2m[32];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  a = sd_warp_max(a), b = sd_warp_max(b);
  __syncthreads();
  if (lane == 0) red2m[w] = make_float2(a, b);
  __syncthreads();
  const float2 v = lane < nw ? red2m[lane] : make_float2(-INFINITY, -INFINITY);
  return make_float2(sd_warp_max(v.x), sd_warp_max(v.y));
}

/* qk_norm 2 (OLMo's projection-wide QK-norm): 1 / rms of one token's whole q projection [H*d]
 * (.x) and k projection [G*d] (.y), summed by a block of NT threads in a fixed order */
template <int NT>
__device__ __forceinline__ float2 sd_proj_rscale(const float *qkv, int H, int G, int d, float eps) {
  float a = 0.f, b = 0.f;
  for (int j = threadIdx.x; j < H * d; j += NT) a += qkv[j] * qkv[j];
  for (int j = threadIdx.x; j < G * d; j += NT) b += qkv[(size_t)H * d + j] * qkv[(size_t)H * d + j];
  const float2 ss = sd_block_sum2(a, b);
  return make_float2(1.0f / sqrtf(ss.x / (float)(H * d) + eps), 1.0f / sqrtf(ss.y / (float)(G * d) + eps));
}

/* DW: 32-bit bf16 pairs per lane of a K / V row, 1 (d <= 64) or 2 (d <= 128); HD_T threads
 * per block (256 or 128; HD_T >= d_phi of the softmax) */
template <int DW, int HD_T>
__global__ void __launch_bounds__(HD_T, 512 / HD_T) k_dec_head(const xd_cuda_sdec m, const xd_cuda_sdec_layer Ly) {
  namespace cg = cooperative_groups;
  constexpr int HD_NW = HD_T / 32, HD_KU = (HD_KEYS + HD_NW * HD_R - 1) / (HD_NW * HD_R);
  __shared__ float s_q[128], s_k[128], s_v[128], s_kb[128], s_vb[128];
  __shared__ float s_zp[2][HD_T], s_z[2][256], s_g[2], s_qf[256], s_kf[256];
  __shared__ float s_wm[HD_NW], s_wl[HD_NW], s_wo[HD_NW][128], s_num[HD_T];
  __shared__ float s_gm[HD_R], s_gl[HD_R], s_gden[HD_R], s_go[HD_R][128], s_gn[HD_R][128];
  cg::cluster_group cl = cg::this_cluster();
  const int r = (int)cl.block_rank(), h = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int H = m.H, G = m.G, d = m.d, P = m.P, D = m.D, dp = m.hedgehog ? P / 2 : P, g = h / (H / G), half = d / 2;
  sd_pdl_trigger();
  /* ---- before the wait ---- */
  /* sequence bz of a batched step (blockIdx.z; 0 in the one-sequence step): its inputs, its
   * scratch rows and its slot of the layer's state, [B, ...] each */
  const int bz = blockIdx.z;
  const xd_cuda_sdec_params *prm = m.params + bz;
  const int64_t t = prm->pos;
  const int W = Ly.W, S = Ly.S;
  const int64_t ws = t - W + 1 > 0 ? t - W + 1 : 0, ns64 = ws < S ? ws : S;
  const int n = (int)(ns64 + t - ws + 1), ns = (int)ns64; /* key kk >= ns: slot (rb + kk) % W */
  const int rb = ws - ns64 < 0x7fffffff ? (int)((uint32_t)(ws - ns64) % (uint32_t)W) : (int)((ws - ns64) % W);
  const int Gd = G * d, gw = r * HD_NW + warp, KSTEP = HD_NW * HD_R;
  uint16_t *const k_sink = Ly.k_sink + (size_t)bz * S * Gd, *const v_sink = Ly.v_sink + (size_t)bz * S * Gd;
  uint16_t *const k_ring = Ly.k_ring + (size_t)bz * W * Gd, *const v_ring = Ly.v_ring + (size_t)bz * W * Gd;
  const uint16_t *ksb = k_sink + g * d, *krb = k_ring + g * d, *vsb = v_sink + g * d, *vrb = v_ring + g * d;
  uint32_t kreg[HD_KU][DW], vreg[HD_KU][DW];
#pragma unroll
  for (int u = 0; u < HD_KU; u++) {
    const int kk = gw + u * KSTEP;
#pragma unroll
    for (int w2 = 0; w2 < DW; w2++) kreg[u][w2] = vreg[u][w2] = 0u;
    if (kk < n - 1) {
      int sl = rb + kk; /* < 2W + S: the ring slot, a division only when S >= W */
      if (sl >= W) sl -= W;
      if (sl >= W) sl %= W;
      const size_t off = kk < ns ? (size_t)kk * Gd : (size_t)sl * Gd;
      const uint16_t *kp = (kk < ns ? ksb : krb) + off, *vp = (kk < ns ? vsb : vrb) + off;
#pragma unroll
      for (int w2 = 0; w2 < DW; w2++) {
        const int jp = lane + 32 * w2;
        if (jp < half) {
          kreg[u][w2] = *reinterpret_cast<const uint32_t *>(kp + 2 * jp);
          vreg[u][w2] = *reinterpret_cast<const uint32_t *>(vp + 2 * jp);
        }
      }
    }
  }
  /* feature maps: block r covers rows [r*ci, (r+1)*ci) of P; thread: column jf, rows [fi0, fi1) */
  const int ci = (d + HD_R - 1) / HD_R, np = HD_T / dp, part = tid / dp, jf = tid % dp, cj = (ci + np - 1) / np;
  const int fi0 = r * ci + part * cj, fi1 = part < np ? min(min(d, (r + 1) * ci), fi0 + cj) : fi0;
  const float *Pq = Ly.P_q + (size_t)h * d * dp, *Pk = Ly.P_k + (size_t)g * d * dp;
  float pq[HD_FU], pk[HD_FU];
#pragma unroll
  for (int u = 0; u < HD_FU; u++) {
    const bool ok = fi0 + u < fi1;
    pq[u] = ok ? __ldg(Pq + (size_t)(fi0 + u) * dp + jf) : 0.f;
    pk[u] = ok ? __ldg(Pk + (size_t)(fi0 + u) * dp + jf) : 0.f;
  }
  /* gates: columns [g0, g1) of w_i / w_f */
  const int cgw = (D + HD_R - 1) / HD_R, g0 = r * cgw, g1 = min(D, g0 + cgw);
  const float *wi = Ly.w_i + (size_t)h * D, *wf = Ly.w_f + (size_t)h * D;
  float gwi[HD_GU], gwf[HD_GU];
#pragma unroll
  for (int u = 0; u < HD_GU; u++) {
    const int c = g0 + tid + u * HD_T;
    gwi[u] = c < g1 ? __ldg(wi + c) : 0.f;
    gwf[u] = c < g1 ? __ldg(wf + c) : 0.f;
  }
  const float bi = Ly.b_i[h], bf = Ly.b_f[h];
  float wm0 = 0.f, wm1 = 0.f, wm2 = 0.f, bmix = 0.f;
  if (r == 0 && tid < d) {
    const float *wo = Ly.w_mix + (size_t)h * 3 * d;
    wm0 = __ldg(wo + tid), wm1 = __ldg(wo + d + tid), wm2 = __ldg(wo + 2 * d + tid);
  }
  if (r == 0) bmix = Ly.b_mix[h];
  const float sqP = (float)(1.0 / sqrt((double)P)); /* the mLSTM readout's 1/sqrt(P), before the wait */
  /* mLSTM rows [p0, p1) of C (thread: column cj2, rows p0 + cgp + u * ngrp) and n */
  const int cp = (P + HD_R - 1) / HD_R, p0 = min(P, r * cp), p1 = min(P, p0 + cp);
  const int ngrp = HD_T / d, cgp = tid / d, cj2 = tid % d;
  float *C = Ly.C + ((size_t)bz * H + h) * P * d, *nn = Ly.n + ((size_t)bz * H + h) * P, *mst = Ly.m + (size_t)bz * H;
  float creg[HD_CU];
#pragma unroll
  for (int u = 0; u < HD_CU; u++) {
    const int p = p0 + cgp + u * ngrp;
    creg[u] = cgp < ngrp && p < p1 ? C[(size_t)p * d + cj2] : 0.f;
  }
  const float nold = tid < p1 - p0 ? nn[p0 + tid] : 0.f, mold = mst[h];
  float rc = 0.f, rsn = 0.f;
  if (tid < half) rc = prm->cos[Ly.rope_kind][tid], rsn = prm->sin[Ly.rope_kind][tid];
  sd_pdl_wait();
  /* ---- the step's q, k, v (raw fp32 from the q|k|v GEMV) and xn ---- */
  const float *qkv = m.qkv + (size_t)bz * (H + 2 * G) * d, *xn = m.xn + (size_t)bz * D;
  const float qraw = tid < d ? qkv[(size_t)h * d + tid] : 0.f;
  const float kraw = tid < d ? qkv[(size_t)H * d + (size_t)g * d + tid] : 0.f;
  const float vraw = tid < d ? qkv[(size_t)(H + G) * d + (size_t)g * d + tid] : 0.f;
  float xg[HD_GU];
#pragma unroll
  for (int u = 0; u < HD_GU; u++) {
    const int c = g0 + tid + u * HD_T;
    xg[u] = c < g1 ? xn[c] : 0.f;
  }
  float rq = 1.f, rk = 1.f;
  if (m.qk_norm == 2) {
    const float2 rs = sd_proj_rscale<HD_T>(qkv, H, G, d, m.rms_eps);
    rq = rs.x, rk = rs.y;
  } else if (m.qk_norm == 1) {
    const float2 ss = sd_block_sum2(qraw * qraw, kraw * kraw);
    rq = 1.0f / sqrtf(ss.x / (float)d + m.rms_eps), rk = 1.0f / sqrtf(ss.y / (float)d + m.rms_eps);
  }
  if (tid < d) {
    s_q[tid] = m.qk_norm == 2 ? Ly.q_norm[h * d + tid] * (qraw * rq) : m.qk_norm == 1 ? Ly.q_norm[tid] * (qraw * rq) : qraw;
    s_k[tid] = m.qk_norm == 2 ? Ly.k_norm[g * d + tid] * (kraw * rk) : m.qk_norm == 1 ? Ly.k_norm[tid] * (kraw * rk) : kraw;
    s_v[tid] = vraw;
  }
  __syncthreads();
  if (tid < half) { /* RoPE in place: thread tid owns elements tid and tid + half of both rows */
    const float a = s_q[tid], b = s_q[tid + half], c = s_k[tid], e2 = s_k[tid + half];
    s_q[tid] = a * rc - b * rsn, s_q[tid + half] = b * rc + a * rsn;
    s_k[tid] = c * rc - e2 * rsn, s_k[tid + half] = e2 * rc + c * rsn;
  }
  __syncthreads();
  if (tid < d) { /* the newest key / value as the ring holds them (bf16); the group's first head appends them */
    const uint16_t kb = xd_f2bf(s_k[tid]), vb = xd_f2bf(vraw);
    s_kb[tid] = xd_bf2f(kb), s_vb[tid] = xd_bf2f(vb);
    if (r == 0 && h % (H / G) == 0) {
      const size_t slot = (size_t)(t % W);
      k_ring[slot * Gd + g * d + tid] = kb;
      v_ring[slot * Gd + g * d + tid] = vb;
      if (t < S) { k_sink[(size_t)t * Gd + g * d + tid] = kb; v_sink[(size_t)t * Gd + g * d + tid] = vb; }
    }
  }
  /* partial feature-map products and gate dots over this block's share */
  {
    float aq = 0.f, ak = 0.f;
#pragma unroll
    for (int u = 0; u < HD_FU; u++)
      if (fi0 + u < fi1) aq += s_q[fi0 + u] * pq[u], ak += s_k[fi0 + u] * pk[u];
    for (int i = fi0 + HD_FU; i < fi1; i++) aq += s_q[i] * __ldg(Pq + (size_t)i * dp + jf), ak += s_k[i] * __ldg(Pk + (size_t)i * dp + jf);
    s_zp[0][tid] = aq, s_zp[1][tid] = ak;
  }
  float ai = 0.f, af = 0.f;
#pragma unroll
  for (int u = 0; u < HD_GU; u++) ai += xg[u] * gwi[u], af += xg[u] * gwf[u];
  for (int c = g0 + tid + HD_GU * HD_T; c < g1; c += HD_T) ai += xn[c] * __ldg(wi + c), af += xn[c] * __ldg(wf + c);
  const float2 gs = sd_block_sum2(ai, af); /* its barriers also publish s_zp */
  if (tid < dp) {
    float zq = 0.f, zk = 0.f;
    for (int q = 0; q < np; q++) zq += s_zp[0][q * dp + tid], zk += s_zp[1][q * dp + tid];
    s_z[0][tid] = zq, s_z[1][tid] = zk;
  }
  if (tid == 0) s_g[0] = gs.x, s_g[1] = gs.y;
  /* the mixing gate's dot (rank 0): summed with the mLSTM denominator's reduction below */
  const float zmix_t = r == 0 && tid < d ? qraw * wm0 + kraw * wm1 + vraw * wm2 : 0.f;
  cl.sync(); /* #1: every block's s_z, s_g visible to the cluster */
  /* ---- full feature maps and gates (rank order), softmax ---- */
  float zq = 0.f, zk = 0.f, gi = 0.f, gf = 0.f;
#pragma unroll
  for (int rr = 0; rr < HD_R; rr++) {
    const float *zr = cl.map_shared_rank(&s_z[0][0], rr);
    if (tid < dp) zq += zr[tid], zk += zr[256 + tid];
    const float *gr = cl.map_shared_rank(s_g, rr);
    gi += gr[0], gf += gr[1];
  }
  {
    const float2 mx = sd_block_max2(tid < dp ? zq : -INFINITY, tid < dp ? zk : -INFINITY);
    float2 mn = make_float2(0.f, 0.f);
    if (m.hedgehog) {
      const float2 t2 = sd_block_max2(tid < dp ? -zq : -INFINITY, tid < dp ? -zk : -INFINITY);
      mn = make_float2(-t2.x, -t2.y);
    }
    const float e1q = tid < dp ? expf(zq - mx.x) : 0.f, e1k = tid < dp ? expf(zk - mx.y) : 0.f;
    const float2 s1 = sd_block_sum2(e1q, e1k);
    float2 s2 = make_float2(1.f, 1.f);
    float e2q = 0.f, e2k = 0.f;
    if (m.hedgehog) {
      e2q = tid < dp ? expf(mn.x - zq) : 0.f, e2k = tid < dp ? expf(mn.y - zk) : 0.f;
      s2 = sd_block_sum2(e2q, e2k);
    }
    if (tid < dp) {
      s_qf[tid] = e1q / s1.x, s_kf[tid] = e1k / s1.y;
      if (m.hedgehog) s_qf[dp + tid] = e2q / s2.x, s_kf[dp + tid] = e2k / s2.y;
    }
    __syncthreads(); /* s_qf, s_kf for the mLSTM rows */
  }
  float zi = gi + bi, zf = gf + bf;
  if (m.softcap > 0) { zi = m.softcap * tanhf(zi / m.softcap); zf = m.softcap * tanhf(zf / m.softcap); }
  float fp, ip, mt;
  { /* fp32 (the legacy kernel and the CPU use fp64: ~1e-6 relative in the logits) */
    const float l = zf >= 0.f ? -log1pf(expf(-zf)) : zf - log1pf(expf(zf)), a = l + mold;
    mt = a >= zi ? a : zi;
    fp = expf(a - mt), ip = expf(zi - mt);
  }
  /* ---- attention over this block's keys: per warp max / sum / numerator, then the block's ---- */
  {
    const float scale = 1.0f / sqrtf((float)d);
    float sc[HD_KU], mw = -INFINITY;
    float lw = 0.f, ow[DW][2];
#pragma unroll
    for (int w2 = 0; w2 < DW; w2++) ow[w2][0] = ow[w2][1] = 0.f;
    /* no per-key branches: every prefetched key's score (zeros beyond n, masked), the newest
     * key / value and q from registers, the HD_KU warp sums interleaved */
    float qv[DW][2], kn[DW][2], vn[DW][2];
#pragma unroll
    for (int w2 = 0; w2 < DW; w2++) {
      const int jp = lane + 32 * w2;
      const bool ok = jp < half;
      qv[w2][0] = ok ? s_q[2 * jp] : 0.f, qv[w2][1] = ok ? s_q[2 * jp + 1] : 0.f;
      kn[w2][0] = ok ? s_kb[2 * jp] : 0.f, kn[w2][1] = ok ? s_kb[2 * jp + 1] : 0.f;
      vn[w2][0] = ok ? s_vb[2 * jp] : 0.f, vn[w2][1] = ok ? s_vb[2 * jp + 1] : 0.f;
    }
#pragma unroll
    for (int u = 0; u < HD_KU; u++) {
      const bool isn = gw + u * KSTEP == n - 1;
      float a = 0.f;
#pragma unroll
      for (int w2 = 0; w2 < DW; w2++) {
        const float k0 = isn ? kn[w2][0] : __uint_as_float(kreg[u][w2] << 16);
        const float k1 = isn ? kn[w2][1] : __uint_as_float(kreg[u][w2] & 0xffff0000u);
        a += qv[w2][0] * k0 + qv[w2][1] * k1;
      }
      sc[u] = a;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
#pragma unroll
      for (int u = 0; u < HD_KU; u++) sc[u] += __shfl_xor_sync(0xffffffffu, sc[u], o);
    }
#pragma unroll
    for (int u = 0; u < HD_KU; u++) {
      sc[u] = gw + u * KSTEP < n ? sc[u] * scale : -INFINITY;
      mw = fmaxf(mw, sc[u]);
    }
#pragma unroll
    for (int u = 0; u < HD_KU; u++) {
      const int kk = gw + u * KSTEP;
      const bool isn = kk == n - 1;
      const float p = kk < n ? __expf(sc[u] - mw) : 0.f;
      lw += p;
#pragma unroll
      for (int w2 = 0; w2 < DW; w2++) {
        const float v0 = isn ? vn[w2][0] : __uint_as_float(vreg[u][w2] << 16);
        const float v1 = isn ? vn[w2][1] : __uint_as_float(vreg[u][w2] & 0xffff0000u);
        ow[w2][0] += p * v0, ow[w2][1] += p * v1;
      }
    }
    /* keys beyond the prefetched ones (W + S > HD_KU * KSTEP): online softmax */
    for (int kk = gw + HD_KU * KSTEP; kk < n; kk += KSTEP) {
      const bool nw_ = kk == n - 1;
      const size_t off = kk < ns ? (size_t)kk * Gd : (size_t)((rb + kk) % W) * Gd;
      const uint16_t *kp = (kk < ns ? ksb : krb) + off, *vp = (kk < ns ? vsb : vrb) + off;
      float a = 0.f, vv[DW][2];
#pragma unroll
      for (int w2 = 0; w2 < DW; w2++) {
        const int jp = lane + 32 * w2;
        vv[w2][0] = vv[w2][1] = 0.f;
        if (jp < half) {
          const uint32_t ku = nw_ ? 0u : *reinterpret_cast<const uint32_t *>(kp + 2 * jp);
          const uint32_t vu = nw_ ? 0u : *reinterpret_cast<const uint32_t *>(vp + 2 * jp);
          const float k0 = nw_ ? s_kb[2 * jp] : __uint_as_float(ku << 16), k1 = nw_ ? s_kb[2 * jp + 1] : __uint_as_float(ku & 0xffff0000u);
          vv[w2][0] = nw_ ? s_vb[2 * jp] : __uint_as_float(vu << 16), vv[w2][1] = nw_ ? s_vb[2 * jp + 1] : __uint_as_float(vu & 0xffff0000u);
          a += s_q[2 * jp] * k0 + s_q[2 * jp + 1] * k1;
        }
      }
      const float s = sd_warp_sum(a) * scale;
      if (s > mw) {
        const float f = mw == -INFINITY ? 0.f : __expf(mw - s);
        lw *= f;
#pragma unroll
        for (int w2 = 0; w2 < DW; w2++) ow[w2][0] *= f, ow[w2][1] *= f;
        mw = s;
      }
      const float p = __expf(s - mw);
      lw += p;
#pragma unroll
      for (int w2 = 0; w2 < DW; w2++) ow[w2][0] += p * vv[w2][0], ow[w2][1] += p * vv[w2][1];
    }
    if (lane == 0) s_wm[warp] = mw, s_wl[warp] = lw;
#pragma unroll
    for (int w2 = 0; w2 < DW; w2++) {
      const int jp = lane + 32 * w2;
      if (jp < half) s_wo[warp][2 * jp] = ow[w2][0], s_wo[warp][2 * jp + 1] = ow[w2][1];
    }
  }
  /* ---- mLSTM rows: C = f' C + i' k v^T, n = f' n + i' k; partial C^T q and q.n ---- */
  float num = 0.f;
  if (cgp < ngrp) {
    const float vj = s_v[cj2];
#pragma unroll
    for (int u = 0; u < HD_CU; u++) {
      const int p = p0 + cgp + u * ngrp;
      if (p < p1) {
        const float cn = fp * creg[u] + (ip * s_kf[p]) * vj;
        C[(size_t)p * d + cj2] = cn;
        num += cn * s_qf[p];
      }
    }
    for (int p = p0 + cgp + HD_CU * ngrp; p < p1; p += ngrp) {
      const float cn = fp * C[(size_t)p * d + cj2] + (ip * s_kf[p]) * vj;
      C[(size_t)p * d + cj2] = cn;
      num += cn * s_qf[p];
    }
  }
  s_num[tid] = num;
  float den = 0.f;
  if (tid < p1 - p0) {
    const float nv = fp * nold + ip * s_kf[p0 + tid];
    nn[p0 + tid] = nv;
    den = s_qf[p0 + tid] * nv;
  }
  float zmix; /* with the mixing gate's dot (rank 0); the barriers also publish s_num, s_wm, s_wl, s_wo */
  {
    const float2 dz = sd_block_sum2(den, zmix_t);
    den = dz.x, zmix = dz.y + bmix;
  }
  /* ---- this block's partials into rank 0 ---- */
  {
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < HD_NW; w++) M = fmaxf(M, s_wm[w]);
    float *gm = cl.map_shared_rank(s_gm, 0), *gl = cl.map_shared_rank(s_gl, 0), *gden = cl.map_shared_rank(s_gden, 0);
    float *go = cl.map_shared_rank(&s_go[0][0], 0), *gn = cl.map_shared_rank(&s_gn[0][0], 0);
    if (tid < d) {
      float o = 0.f, a = 0.f;
#pragma unroll
      for (int w = 0; w < HD_NW; w++) o += s_wm[w] == -INFINITY ? 0.f : s_wo[w][tid] * __expf(s_wm[w] - M);
      for (int q = 0; q < ngrp; q++) a += s_num[q * d + tid];
      go[r * 128 + tid] = o, gn[r * 128 + tid] = a;
    }
    if (tid == 0) {
      float L = 0.f;
#pragma unroll
      for (int w = 0; w < HD_NW; w++) L += s_wm[w] == -INFINITY ? 0.f : s_wl[w] * __expf(s_wm[w] - M);
      gm[r] = M, gl[r] = L, gden[r] = den;
    }
  }
  cl.sync(); /* #2: the partials are in rank 0 */
  if (r != 0) return;
  if (tid < d) {
    float M = -INFINITY;
#pragma unroll
    for (int rr = 0; rr < HD_R; rr++) M = fmaxf(M, s_gm[rr]);
    float L = 0.f, o = 0.f, a = 0.f, dn = 0.f;
#pragma unroll
    for (int rr = 0; rr < HD_R; rr++) {
      const float w = s_gm[rr] == -INFINITY ? 0.f : expf(s_gm[rr] - M);
      L += s_gl[rr] * w, o += s_go[rr][tid] * w, a += s_gn[rr][tid], dn += s_gden[rr];
    }
    const float sq = sqP;
    float ad = fabsf(dn * sq);
    if (m.norm_max) {
      const float lo = expf(-mt);
      if (!(ad >= lo)) ad = lo;
    }
    const float inv = 1.f / (ad + m.mlstm_eps), om = 1.f / (1.f + expf(-zmix));
    m.att[((size_t)bz * H + h) * d + tid] = om * (sq * a * inv) + (1.f - om) * (o / L);
  }
  if (tid == 0) mst[h] = mt;
}

/* ---- the batched step's per-head kernel: one block per (KV group, sequence) ----------------
 * k_dec_group (B > 1, issue #8): the clustered kernel above is built for one sequence's latency
 * (8 blocks of short dependent chains per head); with many sequences its ~10 us blocks, 4
 * resident per SM, make it latency-bound (~90 us a sequence per step at the 1B shape against
 * ~6 us of state bytes). Here one block of GR_T threads does a whole KV group g of sequence bz:
 * its HQ = H / G query heads share the K / V rows, which are read once (not once per head),
 * and every loop streams independent loads (a key row per thread for the scores, bf16 pairs of
 * V and float2 pairs of C per thread, several rows in flight). Same maths as k_dec_head (fp32
 * gates), in this order: q / k / v of the group (QK-norm, RoPE; k, v appended to the ring /
 * sinks by this block, their only writer), feature maps and their softmax, gates, scores and
 * softmax over the n keys, P V, the mLSTM rows of every head (C, n in place), the mixing gate,
 * att. Shared memory (dynamic, floats): y [HQ+1][d] (q heads, then k: normed, roped), raw
 * [HQ+2][d] (q heads, k, v as projected), kvb [2][d] (k, v rounded to bf16, as the ring holds
 * them: the newest key / value of the attention; the feature map and the mLSTM take them
 * unrounded), zf [HQ+1][P] (feature maps), sc [HQ][n], red [RP][HQ][d] (P V and C^T q
 * partials, RP = GR_T / (d/2) row parts), loc [HQ][d], st [HQ][8] (per-head scalars). */
#define GR_T 256
#define GR_U 8 /* rows whose loads a thread issues before using them (P V, mLSTM) */
static size_t group_smem(const xd_cuda_sdec *m, int W, int S) {
  const size_t HQ = (size_t)(m->H / m->G), d = (size_t)m->d, rp = GR_T / (d / 2);
  return ((HQ + 1) * d + (HQ + 2) * d + 2 * d + (HQ + 1) * (size_t)m->P + HQ * (size_t)(W + S) + rp * HQ * d + HQ * d + HQ * 8) *
         sizeof(float);
}

template <int HQM>
__global__ void __launch_bounds__(GR_T, 4) k_dec_group(const xd_cuda_sdec m, const xd_cuda_sdec_layer Ly) {
  extern __shared__ float gsm[];
  const int H = m.H, G = m.G, d = m.d, P = m.P, D = m.D, HQ = H / G, half = d / 2, dp = m.hedgehog ? P / 2 : P;
  const int g = blockIdx.x, bz = blockIdx.y, h0 = g * HQ, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int NW = GR_T / 32, RP = GR_T / half; /* row parts of the pair-wise loops (thread: pair jp of part rp) */
  const xd_cuda_sdec_params *prm = m.params + bz;
  const int64_t t = prm->pos;
  const int W = Ly.W, S = Ly.S;
  const int64_t ws = t - W + 1 > 0 ? t - W + 1 : 0, ns64 = ws < S ? ws : S;
  const int n = (int)(ns64 + t - ws + 1), ns = (int)ns64;
  const int rb = (int)((ws - ns64) % W);
  const size_t Gd = (size_t)G * d;
  uint16_t *const k_sink = Ly.k_sink + (size_t)bz * S * Gd, *const v_sink = Ly.v_sink + (size_t)bz * S * Gd;
  uint16_t *const k_ring = Ly.k_ring + (size_t)bz * W * Gd, *const v_ring = Ly.v_ring + (size_t)bz * W * Gd;
  const float *qkv = m.qkv + (size_t)bz * (H + 2 * G) * d, *xn = m.xn + (size_t)bz * D;
  float *y = gsm, *raw = y + (HQ + 1) * d, *kvb = raw + (HQ + 2) * d, *zf = kvb + 2 * d, *sc = zf + (HQ + 1) * P;
  float *red = sc + HQ * n, *loc = red + RP * HQ * d, *st = loc + HQ * d;
  /* ---- q heads h0 .. h0+HQ-1, k, v of the group: raw, sums of squares, norm, RoPE ---- */
  for (int i = tid; i < (HQ + 2) * d; i += GR_T) {
    const int r = i / d, j = i % d;
    raw[i] = r < HQ ? qkv[(size_t)(h0 + r) * d + j] : qkv[(size_t)(H + (r - HQ) * G + g) * d + j];
  }
  float rq = 1.f, rk = 1.f; /* qk_norm 2: one scale for all q heads, one for the k heads (whole projections) */
  if (m.qk_norm == 2) {
    const float2 rs = sd_proj_rscale<GR_T>(qkv, H, G, d, m.rms_eps);
    rq = rs.x, rk = rs.y;
  }
  __syncthreads();
  if (m.qk_norm == 1) { /* per head over d: warp w, rows w, w + NW, ... (HQ q rows, then k) */
    for (int r = warp; r <= HQ; r += NW) {
      float a = 0.f;
      for (int j = lane; j < d; j += 32) a += raw[r * d + j] * raw[r * d + j];
      a = sd_warp_sum(a);
      if (lane == 0) st[(r < HQ ? r : 0) * 8 + (r < HQ ? 0 : 1)] = 1.0f / sqrtf(a / (float)d + m.rms_eps);
    }
    __syncthreads();
  }
  const float *cs = prm->cos[Ly.rope_kind], *sn = prm->sin[Ly.rope_kind];
  for (int i = tid; i < (HQ + 1) * half; i += GR_T) {
    const int r = i / half, j = i % half, isq = r < HQ;
    const float sc_ = m.qk_norm == 2 ? (isq ? rq : rk) : m.qk_norm == 1 ? st[(isq ? r : 0) * 8 + (isq ? 0 : 1)] : 1.f;
    const float *nw = isq ? Ly.q_norm : Ly.k_norm;
    const size_t wo = m.qk_norm == 2 ? (size_t)(isq ? h0 + r : g) * d : 0;
    float a = raw[r * d + j] * sc_, b = raw[r * d + j + half] * sc_;
    if (m.qk_norm) a *= nw[wo + j], b *= nw[wo + j + half];
    y[r * d + j] = a * cs[j] - b * sn[j], y[r * d + j + half] = b * cs[j] + a * sn[j];
  }
  __syncthreads();
  /* the step's k, v rounded to bf16 into the ring (and a sink while t < S) and kvb */
  for (int j = tid; j < d; j += GR_T) {
    const uint16_t kb = xd_f2bf(y[HQ * d + j]), vb = xd_f2bf(raw[(HQ + 1) * d + j]);
    kvb[j] = xd_bf2f(kb), kvb[d + j] = xd_bf2f(vb);
    const size_t slot = (size_t)(t % W);
    k_ring[slot * Gd + (size_t)g * d + j] = kb, v_ring[slot * Gd + (size_t)g * d + j] = vb;
    if (t < S) k_sink[(size_t)t * Gd + (size_t)g * d + j] = kb, v_sink[(size_t)t * Gd + (size_t)g * d + j] = vb;
  }
  /* ---- feature-map products z [HQ+1][dp] (into zf's first dp columns) ---- */
  for (int o = tid; o < (HQ + 1) * dp; o += GR_T) {
    const int r = o / dp, j = o % dp;
    const float *Pm = r < HQ ? Ly.P_q + (size_t)(h0 + r) * d * dp : Ly.P_k + (size_t)g * d * dp;
    float a = 0.f;
#pragma unroll 8
    for (int i = 0; i < d; i++) a += y[r * d + i] * __ldg(Pm + (size_t)i * dp + j);
    zf[r * P + j] = a;
  }
  __syncthreads();
  /* softmax of each row (hedgehog: [softmax(z), softmax(-z)]), warp per row */
  for (int r = warp; r <= HQ; r += NW) {
    float *z = zf + r * P;
    float mx = -INFINITY, mn = INFINITY;
    for (int j = lane; j < dp; j += 32) mx = fmaxf(mx, z[j]), mn = fminf(mn, z[j]);
    mx = sd_warp_max(mx);
    mn = -sd_warp_max(-mn);
    float s1 = 0.f, s2 = 0.f;
    for (int j = lane; j < dp; j += 32) {
      s1 += expf(z[j] - mx);
      if (m.hedgehog) s2 += expf(mn - z[j]);
    }
    s1 = sd_warp_sum(s1), s2 = sd_warp_sum(s2);
    for (int j = lane; j < dp; j += 32) {
      const float v = z[j];
      z[j] = expf(v - mx) / s1;
      if (m.hedgehog) z[dp + j] = expf(mn - v) / s2;
    }
  }
  /* ---- gates: warp per (head, input / forget) dot of xn with the gate row ---- */
  for (int pr = warp; pr < 2 * HQ; pr += NW) {
    const int r = pr >> 1;
    const float *wr = ((pr & 1) ? Ly.w_f : Ly.w_i) + (size_t)(h0 + r) * D;
    float a = 0.f;
    if ((D & 3) == 0 && (((uintptr_t)wr | (uintptr_t)xn) & 15) == 0) {
#pragma unroll 4
      for (int j = lane * 4; j < D; j += 128) {
        const float4 w4 = __ldg(reinterpret_cast<const float4 *>(wr + j)), x4 = *reinterpret_cast<const float4 *>(xn + j);
        a += w4.x * x4.x + w4.y * x4.y + w4.z * x4.z + w4.w * x4.w;
      }
    } else {
      for (int j = lane; j < D; j += 32) a += wr[j] * xn[j];
    }
    a = sd_warp_sum(a);
    if (lane == 0) st[r * 8 + 2 + (pr & 1)] = a + ((pr & 1) ? Ly.b_f : Ly.b_i)[h0 + r];
  }
  __syncthreads();
  if (tid < HQ) { /* stabilised gates (fp32, as k_dec_head): st[r] = {.., .., zi, zf, fp, ip, mt, ..} */
    float zi = st[tid * 8 + 2], zfg = st[tid * 8 + 3];
    if (m.softcap > 0) { zi = m.softcap * tanhf(zi / m.softcap); zfg = m.softcap * tanhf(zfg / m.softcap); }
    float *mst = Ly.m + (size_t)bz * H + h0 + tid;
    const float l = zfg >= 0.f ? -log1pf(expf(-zfg)) : zfg - log1pf(expf(zfg)), a = l + *mst;
    const float mt = a >= zi ? a : zi;
    st[tid * 8 + 4] = expf(a - mt), st[tid * 8 + 5] = expf(zi - mt), st[tid * 8 + 6] = mt;
    *mst = mt;
  }
  /* ---- scores: a key row per thread, all HQ heads at once ---- */
  const float scale = 1.0f / sqrtf((float)d);
  for (int kk = tid; kk < n; kk += GR_T) {
    float acc[HQM];
#pragma unroll
    for (int r = 0; r < HQM; r++) acc[r] = 0.f;
    if (kk == n - 1) { /* the newest key, as rounded above */
      for (int i = 0; i < d; i++) {
        const float kv = kvb[i];
#pragma unroll
        for (int r = 0; r < HQM; r++)
          if (r < HQ) acc[r] += y[r * d + i] * kv;
      }
    } else {
      int sl = rb + kk;
      if (sl >= W) sl -= W;
      if (sl >= W) sl %= W;
      const uint16_t *kr = (kk < ns ? k_sink + (size_t)kk * Gd : k_ring + (size_t)sl * Gd) + (size_t)g * d;
      if ((d & 7) == 0) {
        for (int i = 0; i < d; i += 8) {
          const uint4 u = *reinterpret_cast<const uint4 *>(kr + i);
          const float k8[8] = {__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u), __uint_as_float(u.y << 16),
                               __uint_as_float(u.y & 0xffff0000u), __uint_as_float(u.z << 16), __uint_as_float(u.z & 0xffff0000u),
                               __uint_as_float(u.w << 16), __uint_as_float(u.w & 0xffff0000u)};
#pragma unroll
          for (int r = 0; r < HQM; r++)
            if (r < HQ) {
#pragma unroll
              for (int q = 0; q < 8; q++) acc[r] += y[r * d + i + q] * k8[q];
            }
        }
      } else {
        for (int i = 0; i < d; i++) {
          const float kv = xd_bf2f(kr[i]);
#pragma unroll
          for (int r = 0; r < HQM; r++)
            if (r < HQ) acc[r] += y[r * d + i] * kv;
        }
      }
    }
#pragma unroll
    for (int r = 0; r < HQM; r++)
      if (r < HQ) sc[r * n + kk] = acc[r] * scale;
  }
  __syncthreads();
  for (int r = warp; r < HQ; r += NW) { /* softmax numerators in place; st[r*8+0] = their sum */
    float mx = -INFINITY;
    for (int kk = lane; kk < n; kk += 32) mx = fmaxf(mx, sc[r * n + kk]);
    mx = sd_warp_max(mx);
    float s = 0.f;
    for (int kk = lane; kk < n; kk += 32) {
      const float p = __expf(sc[r * n + kk] - mx);
      sc[r * n + kk] = p;
      s += p;
    }
    s = sd_warp_sum(s);
    if (lane == 0) st[r * 8] = s;
  }
  __syncthreads();
  /* ---- P V: thread = bf16 pair jp of V rows kk = rp, rp + RP, ...; GR_U rows' loads in
   * flight before their products ---- */
  const int jp = tid % half, rp = tid / half;
  if (rp < RP) {
    float acc[HQM][2];
#pragma unroll
    for (int r = 0; r < HQM; r++) acc[r][0] = acc[r][1] = 0.f;
    for (int k0 = rp; k0 < n; k0 += GR_U * RP) {
      uint32_t u[GR_U];
#pragma unroll
      for (int q = 0; q < GR_U; q++) {
        const int kk = k0 + q * RP;
        u[q] = 0u;
        if (kk < n - 1) {
          int sl = rb + kk;
          if (sl >= W) sl -= W;
          if (sl >= W) sl %= W;
          const uint16_t *vr = (kk < ns ? v_sink + (size_t)kk * Gd : v_ring + (size_t)sl * Gd) + (size_t)g * d;
          u[q] = *reinterpret_cast<const uint32_t *>(vr + 2 * jp);
        }
      }
#pragma unroll
      for (int q = 0; q < GR_U; q++) {
        const int kk = k0 + q * RP;
        if (kk < n) {
          const bool nw_ = kk == n - 1;
          const float v0 = nw_ ? kvb[d + 2 * jp] : __uint_as_float(u[q] << 16);
          const float v1 = nw_ ? kvb[d + 2 * jp + 1] : __uint_as_float(u[q] & 0xffff0000u);
#pragma unroll
          for (int r = 0; r < HQM; r++)
            if (r < HQ) {
              const float p = sc[r * n + kk];
              acc[r][0] += p * v0, acc[r][1] += p * v1;
            }
        }
      }
    }
#pragma unroll
    for (int r = 0; r < HQM; r++)
      if (r < HQ) red[(rp * HQ + r) * d + 2 * jp] = acc[r][0], red[(rp * HQ + r) * d + 2 * jp + 1] = acc[r][1];
  }
  __syncthreads();
  for (int i = tid; i < HQ * d; i += GR_T) { /* parts summed in order */
    const int r = i / d, j = i % d;
    float a = 0.f;
    for (int q = 0; q < RP; q++) a += red[(q * HQ + r) * d + j];
    loc[i] = a / st[r * 8];
  }
  __syncthreads();
  /* ---- mLSTM rows: C = f' C + i' kf v^T (float2 pairs of row p), C^T qf partials ---- */
  const float *kfe = zf + HQ * P;
  if (rp < RP) {
    const float v0 = raw[(HQ + 1) * d + 2 * jp], v1 = raw[(HQ + 1) * d + 2 * jp + 1];
    for (int r = 0; r < HQ; r++) { /* GR_U rows' loads in flight, then their updates */
      const float fp = st[r * 8 + 4], ip = st[r * 8 + 5];
      const float *qfr = zf + r * P;
      float *C = Ly.C + ((size_t)bz * H + h0 + r) * P * d;
      float a0 = 0.f, a1 = 0.f;
      for (int p0 = rp; p0 < P; p0 += GR_U * RP) {
        float2 c[GR_U];
#pragma unroll
        for (int q = 0; q < GR_U; q++) {
          const int p = p0 + q * RP;
          c[q] = p < P ? *reinterpret_cast<const float2 *>(C + (size_t)p * d + 2 * jp) : make_float2(0.f, 0.f);
        }
#pragma unroll
        for (int q = 0; q < GR_U; q++) {
          const int p = p0 + q * RP;
          if (p < P) {
            const float ik = ip * kfe[p];
            c[q].x = fp * c[q].x + ik * v0, c[q].y = fp * c[q].y + ik * v1;
            *reinterpret_cast<float2 *>(C + (size_t)p * d + 2 * jp) = c[q];
            a0 += c[q].x * qfr[p], a1 += c[q].y * qfr[p];
          }
        }
      }
      red[(rp * HQ + r) * d + 2 * jp] = a0, red[(rp * HQ + r) * d + 2 * jp + 1] = a1;
    }
  }
  /* n = f' n + i' kf and q.n per head (warp per head); the mixing gate's dot */
  for (int r = warp; r < HQ; r += NW) {
    const float fp = st[r * 8 + 4], ip = st[r * 8 + 5];
    float *nn = Ly.n + ((size_t)bz * H + h0 + r) * P;
    float den = 0.f, z = 0.f;
    for (int p = lane; p < P; p += 32) {
      const float nv = fp * nn[p] + ip * kfe[p];
      nn[p] = nv;
      den += zf[r * P + p] * nv;
    }
    const float *wo = Ly.w_mix + (size_t)(h0 + r) * 3 * d;
    for (int i = lane; i < d; i += 32) z += raw[r * d + i] * wo[i] + raw[HQ * d + i] * wo[d + i] + raw[(HQ + 1) * d + i] * wo[2 * d + i];
    den = sd_warp_sum(den), z = sd_warp_sum(z);
    if (lane == 0) st[r * 8 + 1] = den, st[r * 8 + 7] = z + Ly.b_mix[h0 + r];
  }
  __syncthreads();
  const float sqP = (float)(1.0 / sqrt((double)P));
  for (int i = tid; i < HQ * d; i += GR_T) {
    const int r = i / d, j = i % d;
    float a = 0.f;
    for (int q = 0; q < RP; q++) a += red[(q * HQ + r) * d + j];
    float ad = fabsf(st[r * 8 + 1] * sqP);
    if (m.norm_max) {
      const float lo = expf(-st[r * 8 + 6]);
      if (!(ad >= lo)) ad = lo;
    }
    const float inv = 1.f / (ad + m.mlstm_eps), om = 1.f / (1.f + expf(-st[r * 8 + 7]));
    m.att[((size_t)bz * H + h0 + r) * d + j] = om * (sqP * a * inv) + (1.f - om) * loc[i];
  }
}

static cudaError_t head_launch(cudaStream_t s, bool pdl, bool t128, const xd_cuda_sdec &m, const xd_cuda_sdec_layer &Ly) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(HD_R, m.H, m.B > 1 ? m.B : 1), cfg.blockDim = dim3(t128 ? 128 : 256), cfg.dynamicSmemBytes = 0, cfg.stream = s;
  cudaLaunchAttribute at[2];
  at[0].id = cudaLaunchAttributeClusterDimension;
  at[0].val.clusterDim.x = HD_R, at[0].val.clusterDim.y = 1, at[0].val.clusterDim.z = 1;
  at[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  at[1].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = at, cfg.numAttrs = pdl ? 2 : 1;
  void (*k)(const xd_cuda_sdec, const xd_cuda_sdec_layer) =
      t128 ? (m.d <= 64 ? k_dec_head<1, 128> : k_dec_head<2, 128>) : (m.d <= 64 ? k_dec_head<1, 256> : k_dec_head<2, 256>);
  return cudaLaunchKernelEx(&cfg, k, m, Ly);
}

static size_t core_smem(const xd_cuda_sdec *m, int W, int S) { return ((size_t)2 * m->d + 2 * SD_THREADS + (size_t)(W + S)) * sizeof(float); }

extern "C" int xd_cuda_sdec_check(xd_cuda_ctx *c, const xd_cuda_sdec *m, xd_err *e) {
  if (m->B > 1 && m->legacy) return xd_errf(e, "student_decode.cu: the legacy decode kernels take one sequence (B %d)", m->B);
  if (m->B > 65535) return xd_errf(e, "student_decode.cu: %d sequences in one decode step (at most 65535)", m->B);
  if (m->d > SD_THREADS || m->d % 2) return xd_errf(e, "student_decode.cu: head dim %d not supported by the decode step (even, <= %d)", m->d, SD_THREADS);
  if (m->d / 2 > XD_SDEC_MAX_HALF) return xd_errf(e, "student_decode.cu: head dim %d above the decode step's %d", m->d, 2 * XD_SDEC_MAX_HALF);
  if (m->P > 256) return xd_errf(e, "student_decode.cu: d_phi %d above the decode step's 256", m->P);
  const int dmax = m->D > m->F ? m->D : m->F;
  const size_t gsm = (size_t)(dmax > m->H * m->d ? dmax : m->H * m->d) * sizeof(float);
  if (gsm > c->smem_optin) return xd_errf(e, "student_decode.cu: GEMV input of %zu bytes exceeds shared memory", gsm);
  XD_CU(cudaFuncSetAttribute(k_gemv<GEMV_STORE>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)gsm));
  XD_CU(cudaFuncSetAttribute(k_gemv<GEMV_ACCUM>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)gsm));
  XD_CU(cudaFuncSetAttribute(k_gemv<GEMV_SWIGLU>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)gsm));
  /* k_gemv3's shared-memory limit; fill its occupancy cache here, outside any stream capture */
  for (int mode = 0; mode < 3; mode++)
    for (int ks = 1; ks <= 8; ks *= 2)
      for (int pre2 = 0; pre2 < 2; pre2++) {
        XD_CU(cudaFuncSetAttribute(gemv3_pick(mode, ks, pre2), cudaFuncAttributeMaxDynamicSharedMemorySize, (int)gsm));
        gemv3_occ(mode, ks, pre2, 0);
        gemv3_occ(mode, ks, pre2, (size_t)m->D * sizeof(float)); /* the staged GEMVs read x [D] */
      }
  size_t cmax = 0;
  for (int l = 0; l < m->L; l++) {
    const size_t s = core_smem(m, m->layers[l].W, m->layers[l].S);
    cmax = s > cmax ? s : cmax;
  }
  if (m->legacy && cmax > c->smem_optin) return xd_errf(e, "student_decode.cu: window + sinks too large for the decode step's shared memory");
  if (cmax <= c->smem_optin) XD_CU(cudaFuncSetAttribute(k_dec_core, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)cmax));
  size_t gmax = 0; /* the batched step's k_dec_group (the clustered kernel where it does not fit) */
  for (int l = 0; l < m->L; l++) {
    const size_t s = group_smem(m, m->layers[l].W, m->layers[l].S);
    gmax = s > gmax ? s : gmax;
  }
  if (m->B > 1 && gmax <= c->smem_optin) {
    XD_CU(cudaFuncSetAttribute(k_dec_group<4>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)gmax));
    XD_CU(cudaFuncSetAttribute(k_dec_group<8>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)gmax));
    XD_CU(cudaFuncSetAttribute(k_dec_group<16>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)gmax));
  }
  return 0;
}

/* Per-kernel timing of a step (xd_cuda_sdec_profile): an event after every launch. */
#define SD_MAXEV 1024
typedef struct {
  cudaEvent_t ev[SD_MAXEV];
  int cat[SD_MAXEV], n, graph;
} sd_prof;
static int sd_mark(xd_cuda_ctx *c, sd_prof *pf, int cat, xd_err *e) {
  if (!pf || pf->n >= SD_MAXEV) return 0;
  /* under stream capture a plain cudaEventRecord only orders the capture (it records nothing
   * at replay); cudaEventRecordExternal makes it an event-record node of the graph */
  if (pf->graph) XD_CU(cudaEventRecordWithFlags(pf->ev[pf->n], c->stream, cudaEventRecordExternal));
  else XD_CU(cudaEventRecord(pf->ev[pf->n], c->stream));
  pf->cat[pf->n++] = cat;
  return 0;
}
#define SD_MARK(cat) do { if (sd_mark(c, pf, (cat), e)) return -1; } while (0)

static int sdec_step(xd_cuda_ctx *c, const xd_cuda_sdec *m, sd_prof *pf, xd_err *e) {
  const int D = m->D, H = m->H, G = m->G, d = m->d, F = m->F, qkv = (H + 2 * G) * d, lg = m->legacy;
  const bool pdl = !lg && (m->variant & XD_SDEC_PDL);
  /* the per-head kernel's block: 128 threads (measured faster at the 1B shape: 4 blocks per SM,
   * the 256-thread one fits 2) unless XD_SDEC_T256 or the softmax's d_phi needs more */
  const bool t128 = !(m->variant & XD_SDEC_T256) && (m->hedgehog ? m->P / 2 : m->P) <= 128;
  const int skip = lg ? 0 : m->variant >> 16; /* benchmark ablation only */
#define SK(k) ((skip >> (k)) & 1)
  SD_MARK(-1);
  k_dec_embed<<<xd_ceil_div(D, 256), 256, 0, c->stream>>>(m->h, m->embed, m->params, D);
  XD_CU_LAUNCH("k_dec_embed");
  SD_MARK(XD_SDEC_K_EMBED);
  for (int l = 0; l < m->L; l++) {
    const xd_cuda_sdec_layer *Ly = &m->layers[l];
    /* x = rmsnorm(h) (pre-norm) or h; q|k|v = x Wqkv^T + b; xn keeps x for the gates */
    if (!SK(XD_SDEC_K_QKV) && sd_gemv(c, lg, m->variant, GEMV_STORE, m->qkv, m->h, m->post_norm ? NULL : Ly->attn_norm, m->rms_eps, Ly->w_qkv, Ly->b_qkv,
                D, qkv, m->xn, e))
      return -1;
    SD_MARK(XD_SDEC_K_QKV);
    if (lg) { /* the reference kernels: prep (norm, RoPE, feature maps, gates, ring append), then core */
      k_dec_prep<<<H + G, SD_THREADS, (size_t)(2 * d + m->P) * sizeof(float), c->stream>>>(*m, *Ly);
      XD_CU_LAUNCH("k_dec_prep");
      SD_MARK(XD_SDEC_K_PREP);
      k_dec_core<<<H, 2 * SD_THREADS, core_smem(m, Ly->W, Ly->S), c->stream>>>(*m, *Ly);
      XD_CU_LAUNCH("k_dec_core");
    } else if (!SK(XD_SDEC_K_CORE)) { /* prep + attention / mLSTM + merge: one clustered kernel */
      XD_CU(head_launch(c->stream, pdl, t128, *m, *Ly));
      XD_CU_LAUNCH("k_dec_head");
    }
    SD_MARK(XD_SDEC_K_CORE);
    if (m->post_norm) {
      if (!SK(XD_SDEC_K_O) && sd_gemv(c, lg, m->variant, GEMV_STORE, m->tmp, m->att, NULL, 0.f, Ly->w_o, Ly->b_o, H * d, D, NULL, e)) return -1;
      SD_MARK(XD_SDEC_K_O);
      k_add_rmsnorm<<<1, 256, 0, c->stream>>>(m->h, m->tmp, Ly->attn_out_norm, D, m->rms_eps);
      XD_CU_LAUNCH("k_add_rmsnorm");
      SD_MARK(XD_SDEC_K_NORM);
      if (!SK(XD_SDEC_K_GU) && sd_gemv(c, lg, m->variant, GEMV_SWIGLU, m->act, m->h, NULL, 0.f, Ly->w_gu, Ly->b_gu, D, F, NULL, e)) return -1;
      SD_MARK(XD_SDEC_K_GU);
      if (!SK(XD_SDEC_K_DOWN) && sd_gemv(c, lg, m->variant, GEMV_STORE, m->tmp, m->act, NULL, 0.f, Ly->w_down, Ly->b_down, F, D, NULL, e)) return -1;
      SD_MARK(XD_SDEC_K_DOWN);
      k_add_rmsnorm<<<1, 256, 0, c->stream>>>(m->h, m->tmp, Ly->mlp_out_norm, D, m->rms_eps);
      XD_CU_LAUNCH("k_add_rmsnorm");
      SD_MARK(XD_SDEC_K_NORM);
    } else {
      if (!SK(XD_SDEC_K_O) && sd_gemv(c, lg, m->variant, GEMV_ACCUM, m->h, m->att, NULL, 0.f, Ly->w_o, Ly->b_o, H * d, D, NULL, e)) return -1;
      SD_MARK(XD_SDEC_K_O);
      if (!SK(XD_SDEC_K_GU) && sd_gemv(c, lg, m->variant, GEMV_SWIGLU, m->act, m->h, Ly->mlp_norm, m->rms_eps, Ly->w_gu, Ly->b_gu, D, F, NULL, e)) return -1;
      SD_MARK(XD_SDEC_K_GU);
      if (!SK(XD_SDEC_K_DOWN) && sd_gemv(c, lg, m->variant, GEMV_ACCUM, m->h, m->act, NULL, 0.f, Ly->w_down, Ly->b_down, F, D, NULL, e)) return -1;
      SD_MARK(XD_SDEC_K_DOWN);
    }
  }
  if (!SK(XD_SDEC_K_LMHEAD) && sd_gemv(c, lg, m->variant, GEMV_STORE, m->logits, m->h, m->final_norm, m->rms_eps, m->lm_head, NULL, D, m->V, NULL, e)) return -1;
  SD_MARK(XD_SDEC_K_LMHEAD);
  return 0;
#undef SK
}

/* B > 1 sequences, each at its own position: the layer's projections as GEMMs over the B rows
 * (bf16 inputs, fp32 accumulation and output: prefill's ops and numerics, so B weights are read
 * once per step, not B times), the per-head kernel one cluster per (head, sequence). */
static int sdec_step_batch(xd_cuda_ctx *c, const xd_cuda_sdec *m, sd_prof *pf, xd_err *e) {
  const int B = m->B, D = m->D, H = m->H, G = m->G, d = m->d, F = m->F, Hd = H * d, qkv = (H + 2 * G) * d;
  const float eps = m->rms_eps;
  const bool t128 = !(m->variant & XD_SDEC_T256) && (m->hedgehog ? m->P / 2 : m->P) <= 128;
  SD_MARK(-1);
  k_dec_embed<<<dim3(xd_ceil_div(D, 256), B), 256, 0, c->stream>>>(m->h, m->embed, m->params, D);
  XD_CU_LAUNCH("k_dec_embed");
  SD_MARK(XD_SDEC_K_EMBED);
#define SB(call) do { if (call) return -1; } while (0)
  for (int l = 0; l < m->L; l++) {
    const xd_cuda_sdec_layer *Ly = &m->layers[l];
    /* xn: the layer's input as the gates read it (normed, or h itself in post-norm) */
    SB(xd_cuda_rmsnorm_f32(c, m->xb, m->xn, m->h, m->post_norm ? NULL : Ly->attn_norm, B, D, eps, e));
    SD_MARK(XD_SDEC_K_NORM);
    SB(xd_cuda_matmul(c, m->qkv, XD_CUDA_F32, m->xb, Ly->w_qkv, Ly->b_qkv, B, D, qkv, 0, e));
    SD_MARK(XD_SDEC_K_QKV);
    const int HQ = H / G;
    const size_t gsm = group_smem(m, Ly->W, Ly->S);
    if (!(m->variant & XD_SDEC_BCLUS) && HQ <= 16 && gsm <= c->smem_optin &&
               ((m->variant & XD_SDEC_BGROUP) || B * G >= (c->sm_count > 0 ? c->sm_count : 132) / 2)) {
      /* one block per (KV group, sequence), once there are enough of them to fill the card
       * (measured at the 1B shape, H200: 4 sequences 1.90 ms a step vs the clustered kernel's
       * 1.59, 16 sequences 1.99 vs 2.64) */
      if (HQ <= 4) k_dec_group<4><<<dim3(G, B), GR_T, gsm, c->stream>>>(*m, *Ly);
      else if (HQ <= 8) k_dec_group<8><<<dim3(G, B), GR_T, gsm, c->stream>>>(*m, *Ly);
      else k_dec_group<16><<<dim3(G, B), GR_T, gsm, c->stream>>>(*m, *Ly);
      XD_CU_LAUNCH("k_dec_group");
    } else {
      XD_CU(head_launch(c->stream, false, t128, *m, *Ly));
      XD_CU_LAUNCH("k_dec_head");
    }
    SD_MARK(XD_SDEC_K_CORE);
    SB(xd_cuda_f32_to_bf16(c, m->attb, m->att, (size_t)B * Hd, e));
    SD_MARK(XD_SDEC_K_NORM);
    if (m->post_norm) {
      SB(xd_cuda_matmul(c, m->tmp, XD_CUDA_F32, m->attb, Ly->w_o, Ly->b_o, B, Hd, D, 0, e));
      SD_MARK(XD_SDEC_K_O);
      SB(xd_cuda_add_rmsnorm_f32(c, m->h, m->tmp, Ly->attn_out_norm, B, D, eps, e));
      SB(xd_cuda_rmsnorm_f32(c, m->xb, NULL, m->h, NULL, B, D, eps, e));
    } else {
      SB(xd_cuda_matmul(c, m->h, XD_CUDA_F32, m->attb, Ly->w_o, Ly->b_o, B, Hd, D, 1, e));
      SD_MARK(XD_SDEC_K_O);
      SB(xd_cuda_rmsnorm_f32(c, m->xb, NULL, m->h, Ly->mlp_norm, B, D, eps, e));
    }
    SD_MARK(XD_SDEC_K_NORM);
    SB(xd_cuda_matmul(c, m->gub, XD_CUDA_BF16, m->xb, Ly->w_gu, Ly->b_gu16, B, D, 2 * F, 0, e));
    SB(xd_cuda_swiglu_forward(c, m->actb, m->gub, m->gub + F, B, F, 2 * F, e));
    SD_MARK(XD_SDEC_K_GU);
    if (m->post_norm) {
      SB(xd_cuda_matmul(c, m->tmp, XD_CUDA_F32, m->actb, Ly->w_down, Ly->b_down, B, F, D, 0, e));
      SD_MARK(XD_SDEC_K_DOWN);
      SB(xd_cuda_add_rmsnorm_f32(c, m->h, m->tmp, Ly->mlp_out_norm, B, D, eps, e));
      SD_MARK(XD_SDEC_K_NORM);
    } else {
      SB(xd_cuda_matmul(c, m->h, XD_CUDA_F32, m->actb, Ly->w_down, Ly->b_down, B, F, D, 1, e));
      SD_MARK(XD_SDEC_K_DOWN);
    }
  }
  SB(xd_cuda_rmsnorm_f32(c, m->xb, NULL, m->h, m->final_norm, B, D, eps, e));
  SB(xd_cuda_matmul(c, m->logits, XD_CUDA_F32, m->xb, m->lm_head, NULL, B, D, m->V, 0, e));
  SD_MARK(XD_SDEC_K_LMHEAD);
#undef SB
  return 0;
}

extern "C" int xd_cuda_sdec_step(xd_cuda_ctx *c, const xd_cuda_sdec *m, xd_err *e) {
  return m->B > 1 ? sdec_step_batch(c, m, NULL, e) : sdec_step(c, m, NULL, e);
}

extern "C" const char *xd_cuda_sdec_kname(int k) {
  static const char *nm[XD_SDEC_NK] = {"embed", "qkv GEMV", "prep (legacy)", "per-head (attn+mLSTM)",
                                       "o GEMV", "add+rmsnorm", "gate|up GEMV", "down GEMV", "LM head GEMV"};
  return k >= 0 && k < XD_SDEC_NK ? nm[k] : "?";
}

extern "C" int xd_cuda_sdec_profile(xd_cuda_ctx *c, const xd_cuda_sdec *m, int reps, double *us, double *bytes, xd_err *e) {
  return xd_cuda_sdec_profile_ex(c, m, reps, 0, us, bytes, e);
}

extern "C" int xd_cuda_sdec_profile_ex(xd_cuda_ctx *c, const xd_cuda_sdec *m0, int reps, int graph, double *us,
                                       double *bytes, xd_err *e) {
  /* the events order every kernel after the previous one anyway: profile without PDL */
  xd_cuda_sdec mc = *m0;
  mc.variant &= ~XD_SDEC_PDL;
  const xd_cuda_sdec *m = &mc;
  for (int k = 0; k < XD_SDEC_NK; k++) us[k] = bytes[k] = 0;
  sd_prof *pf = (sd_prof *)calloc(1, sizeof(sd_prof));
  if (!pf) return xd_errf(e, "student_decode.cu: out of memory");
  int rc = 0, nev = 0;
  for (int i = 0; i < SD_MAXEV && rc == 0; i++) {
    if (cudaEventCreate(&pf->ev[i]) != cudaSuccess) rc = xd_errf(e, "student_decode.cu: cudaEventCreate failed");
    else nev++;
  }
  cudaGraphExec_t gx = NULL;
  if (graph && rc == 0) { /* the events become event-record nodes of one captured step */
    cudaGraph_t g = NULL;
    pf->n = 0;
    pf->graph = 1;
    if (cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) rc = xd_errf(e, "student_decode.cu: profile capture failed");
    if (rc == 0) {
      xd_err inner = {{0}};
      const int r1 = m->B > 1 ? sdec_step_batch(c, m, pf, &inner) : sdec_step(c, m, pf, &inner);
      const cudaError_t st = cudaStreamEndCapture(c->stream, &g);
      if (r1) rc = xd_errf(e, "%s", inner.msg);
      else if (st != cudaSuccess) rc = xd_errf(e, "student_decode.cu: profile capture: %s", cudaGetErrorString(st));
      else if (cudaGraphInstantiate(&gx, g, 0) != cudaSuccess) rc = xd_errf(e, "student_decode.cu: profile graph instantiate failed");
      if (g) cudaGraphDestroy(g);
    }
  }
  for (int r = 0; r < reps && rc == 0; r++) {
    if (gx) {
      if (cudaGraphLaunch(gx, c->stream) != cudaSuccess) rc = xd_errf(e, "student_decode.cu: profile graph launch failed");
    } else {
      pf->n = 0;
      rc = m->B > 1 ? sdec_step_batch(c, m, pf, e) : sdec_step(c, m, pf, e);
    }
    if (rc == 0 && cudaStreamSynchronize(c->stream) != cudaSuccess) rc = xd_errf(e, "student_decode.cu: profile sync failed");
    for (int i = 1; i < pf->n && rc == 0; i++) {
      float ms = 0.f;
      if (cudaEventElapsedTime(&ms, pf->ev[i - 1], pf->ev[i]) != cudaSuccess) rc = xd_errf(e, "student_decode.cu: event time failed");
      if (pf->cat[i] >= 0) us[pf->cat[i]] += 1e3 * ms / reps;
    }
  }
  if (gx) cudaGraphExecDestroy(gx);
  for (int i = 0; i < nev; i++) cudaEventDestroy(pf->ev[i]);
  free(pf);
  /* bytes each class must move per step */
  const double D = m->D, H = m->H, G = m->G, d = m->d, F = m->F, P = m->P, L = m->L, qkv = (H + 2 * G) * d;
  double kv = 0;
  for (int l = 0; l < m->L; l++) kv += (double)(m->layers[l].W + m->layers[l].S) * G * d * 2 * 2;
  const int dp = m->hedgehog ? m->P / 2 : m->P;
  const double nb = m->B > 1 ? m->B : 1; /* per-sequence classes: state, K/V, embedding rows */
  bytes[XD_SDEC_K_EMBED] = nb * D * 2;
  bytes[XD_SDEC_K_QKV] = L * qkv * D * 2;
  bytes[XD_SDEC_K_PREP] = L * ((H + G) * d * dp * 4 + 2 * H * D * 4 + 2 * G * d * 2);
  bytes[XD_SDEC_K_CORE] = nb * (L * (H * P * d * 4 * 2 + H * P * 4 * 2) + kv);
  bytes[XD_SDEC_K_O] = L * D * H * d * 2;
  bytes[XD_SDEC_K_GU] = L * 2 * F * D * 2;
  bytes[XD_SDEC_K_DOWN] = L * D * F * 2;
  bytes[XD_SDEC_K_LMHEAD] = (double)m->V * D * 2;
  return rc;
}

/* ---- CUDA graphs ------------------------------------------------------------------------- */
extern "C" unsigned xd_cuda_ws_generation(const xd_cuda_ctx *c) { return c->ws_gen; }

extern "C" int xd_cuda_graph_capture_begin(xd_cuda_ctx *c, xd_err *e) {
  XD_CU(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
  return 0;
}

extern "C" int xd_cuda_graph_capture_end(xd_cuda_ctx *c, int body_rc, const xd_err *body_err, void **graph_exec,
                                         xd_err *e) {
  *graph_exec = NULL;
  cudaGraph_t g = NULL;
  const cudaError_t st = cudaStreamEndCapture(c->stream, &g);
  if (body_rc) {
    if (g) cudaGraphDestroy(g);
    cudaGetLastError(); /* a refused call inside the capture leaves its error pending */
    return xd_errf(e, "%s", body_err ? body_err->msg : "graph capture: a call failed");
  }
  if (st != cudaSuccess) {
    if (g) cudaGraphDestroy(g);
    cudaGetLastError();
    return xd_errf(e, "graph capture: cudaStreamEndCapture: %s", cudaGetErrorString(st));
  }
  cudaGraphExec_t ex = NULL;
  const cudaError_t si = cudaGraphInstantiate(&ex, g, 0);
  cudaGraphDestroy(g);
  if (si != cudaSuccess) return xd_errf(e, "graph capture: cudaGraphInstantiate: %s", cudaGetErrorString(si));
  *graph_exec = (void *)ex;
  return 0;
}

extern "C" int xd_cuda_sdec_graph_capture(xd_cuda_ctx *c, const xd_cuda_sdec *m, void **graph_exec, xd_err *e) {
  *graph_exec = NULL;
  if (xd_cuda_graph_capture_begin(c, e)) return -1;
  xd_err inner = {{0}};
  const int rc = xd_cuda_sdec_step(c, m, &inner);
  return xd_cuda_graph_capture_end(c, rc, &inner, graph_exec, e);
}

extern "C" int xd_cuda_graph_launch(xd_cuda_ctx *c, void *graph_exec, xd_err *e) {
  XD_CU(cudaGraphLaunch((cudaGraphExec_t)graph_exec, c->stream));
  return 0;
}

extern "C" void xd_cuda_graph_free(void *graph_exec) {
  if (graph_exec) cudaGraphExecDestroy((cudaGraphExec_t)graph_exec);
}

extern "C" size_t xd_cuda_mem_used(void) {
  size_t fr = 0, tot = 0;
  if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) return 0;
  return tot - fr;
}
