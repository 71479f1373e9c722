/* Optimiser kernels (branch gpuopt, issue #8): AdamW over the trainable prefix of a parameter
 * arena in one launch, gradient scaling, deterministic per-block sums of squares (grad norm),
 * and an fp32 -> bf16 mirror with xd_f32_to_bf16's exact bits.
 *
 * Bit-exactness with the CPU (train/optim.c, params.c, built -std=c11, i.e. -ffp-contract=off:
 * no FMA although -mfma is on): every float operation below is an inline-PTX .rn instruction
 * without .ftz, so neither nvcc's contraction into FMA nor --use_fast_math (which turns on
 * -ftz and approximate sqrt/div for plain operators) can change a bit. */
#include "cuda_common.cuh"

/* IEEE round-to-nearest, denormals kept (no .ftz), never contracted. */
__device__ __forceinline__ float f_mul(float a, float b) {
  float r;
  asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ float f_add(float a, float b) {
  float r;
  asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ float f_sub(float a, float b) {
  float r;
  asm("sub.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ float f_div(float a, float b) {
  float r;
  asm("div.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}
__device__ __forceinline__ float f_sqrt(float a) {
  float r;
  asm("sqrt.rn.f32 %0, %1;" : "=f"(r) : "f"(a));
  return r;
}
/* (double)x * (double)x is exact (24 + 24 bits < 53), so s + x*x rounds once whether or not it
 * becomes a DFMA: the same bits as the CPU's mul + add. Spelled out anyway. */
__device__ __forceinline__ double d_addsq(double s, float x) {
  double r, xd = (double)x, p;
  asm("mul.rn.f64 %0, %1, %2;" : "=d"(p) : "d"(xd), "d"(xd));
  asm("add.rn.f64 %0, %1, %2;" : "=d"(r) : "d"(s), "d"(p));
  return r;
}
/* core.c's xd_f32_to_bf16: round to nearest even, NaN -> quiet NaN with its upper payload. */
__device__ __forceinline__ uint16_t bf16_bits(float f) {
  uint32_t u = __float_as_uint(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

/* ---- bf16 mirror ------------------------------------------------------------------------- */
__global__ void k_bf16_mirror(uint16_t *dst, const float *src, size_t n) {
  const size_t n4 = n / 4, stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4; i += stride) {
    const float4 x = reinterpret_cast<const float4 *>(src)[i];
    ushort4 o;
    o.x = bf16_bits(x.x), o.y = bf16_bits(x.y), o.z = bf16_bits(x.z), o.w = bf16_bits(x.w);
    reinterpret_cast<ushort4 *>(dst)[i] = o;
  }
  for (size_t i = 4 * n4 + blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += stride) dst[i] = bf16_bits(src[i]);
}
static unsigned grid_cap(const xd_cuda_ctx *c, size_t items) {
  unsigned g = xd_ceil_div(items, 256);
  const unsigned cap = (unsigned)c->sm_count * 32;
  if (g > cap) g = cap;
  return g ? g : 1;
}
extern "C" int xd_cuda_bf16_mirror(xd_cuda_ctx *c, uint16_t *dst, const float *src, size_t n, xd_err *e) {
  if (!n) return 0;
  XD_ARG(((uintptr_t)dst & 7) == 0 && ((uintptr_t)src & 15) == 0);
  k_bf16_mirror<<<grid_cap(c, n / 4 + 1), 256, 0, c->stream>>>(dst, src, n);
  XD_CU_LAUNCH("bf16_mirror");
  return 0;
}

/* ---- x *= s ------------------------------------------------------------------------------ */
__global__ void k_scale(float *x, size_t n, float s) {
  const size_t n4 = n / 4, stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n4; i += stride) {
    float4 v = reinterpret_cast<float4 *>(x)[i];
    v.x = f_mul(v.x, s), v.y = f_mul(v.y, s), v.z = f_mul(v.z, s), v.w = f_mul(v.w, s);
    reinterpret_cast<float4 *>(x)[i] = v;
  }
  for (size_t i = 4 * n4 + blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += stride) x[i] = f_mul(x[i], s);
}
extern "C" int xd_cuda_scale_f32(xd_cuda_ctx *c, float *x, size_t n, float s, xd_err *e) {
  if (!n) return 0;
  XD_ARG(((uintptr_t)x & 15) == 0);
  k_scale<<<grid_cap(c, n / 4 + 1), 256, 0, c->stream>>>(x, n, s);
  XD_CU_LAUNCH("scale_f32");
  return 0;
}

/* ---- per-block sums of squares ------------------------------------------------------------
 * One thread per block of `block` floats, summing in index order in double (the CPU's order).
 * Each step a thread loads a whole 128-byte line (8 float4) of its block, then adds its 32
 * values in order: lanes hit 32 different lines per load, but every line is used in full
 * while it sits in L1, and 128 bytes in flight per thread keep enough requests outstanding
 * with only n / block threads. */
template <int NS>
__device__ __forceinline__ float sq_in(float x, float s0, float s1) {
  if (NS >= 1) x = f_mul(x, s0);
  if (NS >= 2) x = f_mul(x, s1);
  return x;
}
template <int NS>
__global__ void __launch_bounds__(64) k_sumsq_blocks(double *out, const float *x, size_t n, size_t block, size_t nb,
                                                     float s0, float s1) {
  const size_t b = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
  if (b >= nb) return;
  const size_t lo = b * block, hi = lo + block < n ? lo + block : n;
  const size_t full = lo + (hi - lo) / 32 * 32;
  double s = 0;
  float4 q[8], nq[8]; /* the next line is in flight while this one is summed */
  if (lo < full) {
#pragma unroll
    for (int k = 0; k < 8; k++) q[k] = __ldg(reinterpret_cast<const float4 *>(x + lo) + k);
  }
  for (size_t i = lo; i < full; i += 32) {
    if (i + 32 < full) {
#pragma unroll
      for (int k = 0; k < 8; k++) nq[k] = __ldg(reinterpret_cast<const float4 *>(x + i + 32) + k);
    }
#pragma unroll
    for (int k = 0; k < 8; k++) {
      s = d_addsq(s, sq_in<NS>(q[k].x, s0, s1));
      s = d_addsq(s, sq_in<NS>(q[k].y, s0, s1));
      s = d_addsq(s, sq_in<NS>(q[k].z, s0, s1));
      s = d_addsq(s, sq_in<NS>(q[k].w, s0, s1));
    }
#pragma unroll
    for (int k = 0; k < 8; k++) q[k] = nq[k];
  }
  for (size_t i = full; i < hi; i++) s = d_addsq(s, sq_in<NS>(x[i], s0, s1));
  out[b] = s;
}
extern "C" int xd_cuda_sumsq_blocks_scaled(xd_cuda_ctx *c, double *block_sums, const float *x, size_t n,
                                           size_t block, const float *scale, int nscale, xd_err *e) {
  if (!n) return 0;
  XD_ARG(block > 0 && block % 32 == 0 && ((uintptr_t)x & 15) == 0 && nscale >= 0 && nscale <= 2);
  XD_ARG(nscale == 0 || scale != NULL);
  const size_t nb = (n + block - 1) / block;
  const float s0 = nscale >= 1 ? scale[0] : 1.f, s1 = nscale >= 2 ? scale[1] : 1.f;
  const unsigned grid = xd_ceil_div(nb, 64);
  if (nscale == 0) k_sumsq_blocks<0><<<grid, 64, 0, c->stream>>>(block_sums, x, n, block, nb, s0, s1);
  else if (nscale == 1) k_sumsq_blocks<1><<<grid, 64, 0, c->stream>>>(block_sums, x, n, block, nb, s0, s1);
  else k_sumsq_blocks<2><<<grid, 64, 0, c->stream>>>(block_sums, x, n, block, nb, s0, s1);
  XD_CU_LAUNCH("sumsq_blocks");
  return 0;
}
extern "C" int xd_cuda_sumsq_blocks(xd_cuda_ctx *c, double *block_sums, const float *x, size_t n, size_t block,
                                    xd_err *e) {
  return xd_cuda_sumsq_blocks_scaled(c, block_sums, x, n, block, NULL, 0, e);
}

/* ---- AdamW ------------------------------------------------------------------------------- */
__device__ __forceinline__ void adamw_one(float &w, float g, float &m, float &v, const xd_cuda_adamw_args &a,
                                          float step, float decay) {
  /* optim.c: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g g; w = w decay - step m / (sqrt(v)/sbc2 + eps) */
  m = f_add(f_mul(a.b1, m), f_mul(a.omb1, g));
  v = f_add(f_mul(a.b2, v), f_mul(f_mul(a.omb2, g), g));
  w = f_sub(f_mul(w, decay), f_div(f_mul(step, m), f_add(f_div(f_sqrt(v), a.sbc2), a.eps)));
}

/* g * gscale[0] * ... in order, each product rounded (the deferred xd_params_scale_grad passes) */
__device__ __forceinline__ float adamw_g(float g, const xd_cuda_adamw_args &a) {
  if (a.nscale >= 1) g = f_mul(g, a.gscale[0]);
  if (a.nscale >= 2) g = f_mul(g, a.gscale[1]);
  return g;
}

#define ADAMW_THREADS 256
#define ADAMW_UNROLL (XD_CUDA_ADAMW_CHUNK / (4 * ADAMW_THREADS))
static_assert(XD_CUDA_ADAMW_CHUNK % (4 * ADAMW_THREADS) == 0, "chunk = threads x float4 x unroll");

__global__ void __launch_bounds__(ADAMW_THREADS) k_adamw(const xd_cuda_adamw_args a) {
  const size_t chunk = blockIdx.x, lo = chunk * (size_t)XD_CUDA_ADAMW_CHUNK;
  const size_t hi = lo + XD_CUDA_ADAMW_CHUNK < a.n ? lo + XD_CUDA_ADAMW_CHUNK : a.n;
  const int s0 = a.chunk_seg[2 * chunk], s1 = a.chunk_seg[2 * chunk + 1];
  if (s0 == s1 && hi - lo == XD_CUDA_ADAMW_CHUNK) { /* one group, full chunk: float4, all loads first */
    const int gid = a.seg_group[s0];
    const float step = a.step[gid], decay = a.decay[gid];
    float4 w[ADAMW_UNROLL], g[ADAMW_UNROLL], m[ADAMW_UNROLL], v[ADAMW_UNROLL];
    const size_t q0 = lo / 4 + threadIdx.x;
#pragma unroll
    for (int k = 0; k < ADAMW_UNROLL; k++) {
      const size_t q = q0 + (size_t)k * ADAMW_THREADS;
      w[k] = __ldcs(reinterpret_cast<const float4 *>(a.w) + q);
      g[k] = __ldcs(reinterpret_cast<const float4 *>(a.g) + q);
      m[k] = __ldcs(reinterpret_cast<const float4 *>(a.m) + q);
      v[k] = __ldcs(reinterpret_cast<const float4 *>(a.v) + q);
    }
#pragma unroll
    for (int k = 0; k < ADAMW_UNROLL; k++) {
      const size_t q = q0 + (size_t)k * ADAMW_THREADS;
      adamw_one(w[k].x, adamw_g(g[k].x, a), m[k].x, v[k].x, a, step, decay);
      adamw_one(w[k].y, adamw_g(g[k].y, a), m[k].y, v[k].y, a, step, decay);
      adamw_one(w[k].z, adamw_g(g[k].z, a), m[k].z, v[k].z, a, step, decay);
      adamw_one(w[k].w, adamw_g(g[k].w, a), m[k].w, v[k].w, a, step, decay);
      __stcs(reinterpret_cast<float4 *>(a.w) + q, w[k]);
      __stcs(reinterpret_cast<float4 *>(a.m) + q, m[k]);
      __stcs(reinterpret_cast<float4 *>(a.v) + q, v[k]);
      if (a.wb) {
        ushort4 o;
        o.x = bf16_bits(w[k].x), o.y = bf16_bits(w[k].y), o.z = bf16_bits(w[k].z), o.w = bf16_bits(w[k].w);
        __stcs(reinterpret_cast<ushort4 *>(a.wb) + q, o);
      }
    }
    return;
  }
  /* chunk with several groups (small tensors) or the arena's tail: one element per thread,
   * its segment by binary search among the chunk's segments s0..s1 */
  for (size_t i = lo + threadIdx.x; i < hi; i += ADAMW_THREADS) {
    int l = s0, r = s1; /* last segment with start <= i */
    while (l < r) {
      const int mid = (l + r + 1) / 2;
      if (a.seg_start[mid] <= i) l = mid;
      else r = mid - 1;
    }
    const int gid = a.seg_group[l];
    float w = a.w[i], m = a.m[i], v = a.v[i];
    adamw_one(w, adamw_g(a.g[i], a), m, v, a, a.step[gid], a.decay[gid]);
    a.w[i] = w, a.m[i] = m, a.v[i] = v;
    if (a.wb) a.wb[i] = bf16_bits(w);
  }
}
extern "C" int xd_cuda_adamw(xd_cuda_ctx *c, const xd_cuda_adamw_args *a, xd_err *e) {
  if (!a->n) return 0;
  XD_ARG(a->nchunks == (a->n + XD_CUDA_ADAMW_CHUNK - 1) / XD_CUDA_ADAMW_CHUNK && a->nchunks <= 0x7fffffffu);
  XD_ARG(a->nscale >= 0 && a->nscale <= 2);
  XD_ARG(((uintptr_t)a->w & 15) == 0 && ((uintptr_t)a->g & 15) == 0 && ((uintptr_t)a->m & 15) == 0 &&
         ((uintptr_t)a->v & 15) == 0 && ((uintptr_t)a->wb & 7) == 0);
  k_adamw<<<(unsigned)a->nchunks, ADAMW_THREADS, 0, c->stream>>>(*a);
  XD_CU_LAUNCH("adamw");
  return 0;
}
