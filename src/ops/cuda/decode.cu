/* Kernels for the GPU teacher model (model/teacher/teacher_cuda.c): fp32-residual norms, QK-norm
 * on slices of the fused q|k|v rows, KV-cache append, attention of a few queries over a KV cache
 * (split over the keys, then merged), greedy argmax, temperature sampling. */
#include <limits.h>
#include <math.h>
#include "cuda_common.cuh"

extern "C" int xd_cuda_mem_info(xd_cuda_ctx *c, size_t *free_bytes, size_t *total_bytes, xd_err *e) {
  (void)c;
  XD_CU(cudaMemGetInfo(free_bytes, total_bytes));
  return 0;
}

/* Sum over the block (blockDim a multiple of 32, <= 1024); every thread gets the total. */
__device__ __forceinline__ float block_sum(float v, float *red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads(); /* red may still be read from a previous call */
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  float t = 0.f;
  for (int i = 0; i < (int)(blockDim.x >> 5); i++) t += red[i];
  return t;
}

/* ---- norms ----------------------------------------------------------------------------- */
__global__ void k_rmsnorm_f32in(uint16_t *out, const float *x, size_t ldx, const uint16_t *w, int C, float eps) {
  __shared__ float red[32];
  const float *xr = x + blockIdx.x * ldx;
  uint16_t *o = out + (size_t)blockIdx.x * C;
  float ss = 0.f;
  for (int i = threadIdx.x; i < C; i += blockDim.x) ss += xr[i] * xr[i];
  const float rstd = rsqrtf(block_sum(ss, red) / (float)C + eps);
  for (int i = threadIdx.x; i < C; i += blockDim.x) o[i] = xd_f2bf(xd_bf2f(w[i]) * (xr[i] * rstd));
}

/* The same with 16-byte loads (branch ewise): 256 threads, thread t owns the column quads
 * 4 (t + 256 j), j < NV (C and ldx multiples of 4, x 16-byte and w, out 8-byte aligned); the row
 * is read once into registers. Same per-element arithmetic; the sum in another order. */
template <int NV>
__global__ void __launch_bounds__(256) k_rmsnorm_f32in_v(uint16_t *out, const float *x, size_t ldx, const uint16_t *w,
                                                         int C, float eps) {
  __shared__ float red[32];
  const float *xr = x + blockIdx.x * ldx;
  uint16_t *o = out + (size_t)blockIdx.x * C;
  float4 xv[NV];
  float ss = 0.f;
#pragma unroll
  for (int j = 0; j < NV; j++) {
    const int col = 4 * (threadIdx.x + 256 * j);
    xv[j] = col < C ? *reinterpret_cast<const float4 *>(xr + col) : make_float4(0.f, 0.f, 0.f, 0.f);
    ss += xv[j].x * xv[j].x + xv[j].y * xv[j].y + xv[j].z * xv[j].z + xv[j].w * xv[j].w;
  }
  const float rstd = rsqrtf(block_sum(ss, red) / (float)C + eps);
#pragma unroll
  for (int j = 0; j < NV; j++) {
    const int col = 4 * (threadIdx.x + 256 * j);
    if (col >= C) continue;
    const uint2 wu = *reinterpret_cast<const uint2 *>(w + col);
    uint2 h;
    h.x = (uint32_t)xd_f2bf(xd_bf2f((uint16_t)(wu.x & 0xffffu)) * (xv[j].x * rstd)) |
          (uint32_t)xd_f2bf(xd_bf2f((uint16_t)(wu.x >> 16)) * (xv[j].y * rstd)) << 16;
    h.y = (uint32_t)xd_f2bf(xd_bf2f((uint16_t)(wu.y & 0xffffu)) * (xv[j].z * rstd)) |
          (uint32_t)xd_f2bf(xd_bf2f((uint16_t)(wu.y >> 16)) * (xv[j].w * rstd)) << 16;
    *reinterpret_cast<uint2 *>(o + col) = h;
  }
}

static int norm_threads(int C) {
  int t = 32;
  while (t < C && t < 256) t *= 2;
  return t;
}

extern "C" int xd_cuda_rmsnorm_f32_forward(xd_cuda_ctx *c, uint16_t *out, const float *x, size_t ldx,
                                           const uint16_t *w, int N, int C, float eps, xd_err *e) {
  XD_ARG(N > 0 && C > 0 && ldx >= (size_t)C);
  if (C % 4 == 0 && ldx % 4 == 0 && C >= 1024 && C <= 4096 && !((uintptr_t)x & 15) && !(((uintptr_t)w | (uintptr_t)out) & 7)) {
    const int nv = (C + 1023) / 1024;
    if (nv == 1) k_rmsnorm_f32in_v<1><<<N, 256, 0, c->stream>>>(out, x, ldx, w, C, eps);
    else if (nv == 2) k_rmsnorm_f32in_v<2><<<N, 256, 0, c->stream>>>(out, x, ldx, w, C, eps);
    else k_rmsnorm_f32in_v<4><<<N, 256, 0, c->stream>>>(out, x, ldx, w, C, eps);
    XD_CU_LAUNCH("rmsnorm_f32 (vectorised)");
    return 0;
  }
  k_rmsnorm_f32in<<<N, norm_threads(C), 0, c->stream>>>(out, x, ldx, w, C, eps);
  XD_CU_LAUNCH("rmsnorm_f32");
  return 0;
}

/* One block per (token, segment); in place (every element is read before it is written by the
 * same thread, and the sum is complete before any write). */
__global__ void k_rmsnorm_seg(uint16_t *x, int ld, int n_seg, int C, const uint16_t *w, float eps) {
  __shared__ float red[32];
  const size_t n = blockIdx.x / n_seg, s = blockIdx.x % n_seg;
  uint16_t *r = x + n * ld + s * C;
  float ss = 0.f;
  for (int i = threadIdx.x; i < C; i += blockDim.x) {
    const float v = xd_bf2f(r[i]);
    ss += v * v;
  }
  const float rstd = rsqrtf(block_sum(ss, red) / (float)C + eps);
  for (int i = threadIdx.x; i < C; i += blockDim.x) r[i] = xd_f2bf(xd_bf2f(w[i]) * (xd_bf2f(r[i]) * rstd));
}

extern "C" int xd_cuda_rmsnorm_segments(xd_cuda_ctx *c, uint16_t *x, int ld, int N, int n_seg, int C,
                                        const uint16_t *w, float eps, xd_err *e) {
  XD_ARG(N > 0 && n_seg > 0 && C > 0 && ld >= n_seg * C);
  XD_ARG((size_t)N * n_seg < (1u << 31));
  k_rmsnorm_seg<<<(unsigned)(N * n_seg), norm_threads(C), 0, c->stream>>>(x, ld, n_seg, C, w, eps);
  XD_CU_LAUNCH("rmsnorm_segments");
  return 0;
}

__global__ void k_rmsnorm_add(float *h, const float *t, const uint16_t *w, int C, float eps) {
  __shared__ float red[32];
  const float *tr = t + (size_t)blockIdx.x * C;
  float *hr = h + (size_t)blockIdx.x * C;
  float ss = 0.f;
  for (int i = threadIdx.x; i < C; i += blockDim.x) ss += tr[i] * tr[i];
  const float rstd = rsqrtf(block_sum(ss, red) / (float)C + eps);
  for (int i = threadIdx.x; i < C; i += blockDim.x) hr[i] += xd_bf2f(w[i]) * (tr[i] * rstd);
}

extern "C" int xd_cuda_rmsnorm_add_f32(xd_cuda_ctx *c, float *h, const float *t, const uint16_t *w, int N, int C,
                                       float eps, xd_err *e) {
  XD_ARG(N > 0 && C > 0);
  k_rmsnorm_add<<<N, norm_threads(C), 0, c->stream>>>(h, t, w, C, eps);
  XD_CU_LAUNCH("rmsnorm_add");
  return 0;
}

/* ---- KV cache append --------------------------------------------------------------------- */
__global__ void k_kv_append(uint16_t *ck, uint16_t *cv, const uint16_t *sk, const uint16_t *sv, int ld, int Tn,
                            int kvdim, int cap, int off, const int32_t *off_dev, int per_seq, size_t total) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
    const size_t row = i / kvdim, col = i % kvdim; /* row = b*Tn + t */
    const size_t b = row / Tn, t = row % Tn;
    const int o = off_dev ? off_dev[per_seq ? b : 0] : off;
    const size_t dst = (b * cap + o + t) * kvdim + col;
    ck[dst] = sk[row * ld + col];
    cv[dst] = sv[row * ld + col];
  }
}

/* off_dev non-NULL: the offset is read there when the kernel runs (off unused): off_dev[b] with
 * per_seq, else off_dev[0] */
static int kv_append_launch(xd_cuda_ctx *c, uint16_t *cache_k, uint16_t *cache_v, const uint16_t *src_k,
                            const uint16_t *src_v, int ld, int B, int Tn, int kvdim, int cap, int off,
                            const int32_t *off_dev, int per_seq, xd_err *e) {
  const size_t total = (size_t)B * Tn * kvdim;
  unsigned g = xd_ceil_div(total, 256);
  if (g > (unsigned)c->sm_count * 16) g = (unsigned)c->sm_count * 16;
  k_kv_append<<<g, 256, 0, c->stream>>>(cache_k, cache_v, src_k, src_v, ld, Tn, kvdim, cap, off, off_dev, per_seq, total);
  XD_CU_LAUNCH("kv_append");
  return 0;
}
extern "C" int xd_cuda_kv_append(xd_cuda_ctx *c, uint16_t *cache_k, uint16_t *cache_v, const uint16_t *src_k,
                                 const uint16_t *src_v, int ld, int B, int Tn, int kvdim, int cap, int off,
                                 xd_err *e) {
  XD_ARG(B > 0 && Tn > 0 && kvdim > 0 && ld >= kvdim && off >= 0 && off + Tn <= cap);
  return kv_append_launch(c, cache_k, cache_v, src_k, src_v, ld, B, Tn, kvdim, cap, off, NULL, 0, e);
}
extern "C" int xd_cuda_kv_append_at(xd_cuda_ctx *c, uint16_t *cache_k, uint16_t *cache_v, const uint16_t *src_k,
                                    const uint16_t *src_v, int ld, int B, int Tn, int kvdim, int cap,
                                    const int32_t *off_dev, int per_seq, xd_err *e) {
  XD_ARG(B > 0 && Tn > 0 && kvdim > 0 && ld >= kvdim && Tn <= cap && off_dev);
  return kv_append_launch(c, cache_k, cache_v, src_k, src_v, ld, B, Tn, kvdim, cap, 0, off_dev, per_seq, e);
}

/* pos[b * Tn + i] = off_dev[per_seq ? b : 0] + i */
__global__ void k_positions(int32_t *pos, const int32_t *off_dev, int per_seq, int Tn, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) pos[i] = off_dev[per_seq ? i / Tn : 0] + i % Tn;
}
extern "C" int xd_cuda_positions_at(xd_cuda_ctx *c, int32_t *pos, const int32_t *off_dev, int per_seq, int B, int Tn,
                                    xd_err *e) {
  XD_ARG(B > 0 && Tn > 0 && (size_t)B * Tn < (1u << 30) && off_dev);
  k_positions<<<xd_ceil_div((size_t)B * Tn, 256), 256, 0, c->stream>>>(pos, off_dev, per_seq, Tn, B * Tn);
  XD_CU_LAUNCH("positions");
  return 0;
}

/* ---- attention over a KV cache (decode) -------------------------------------------------
 * Grid (query row x split, KV head g x head subgroup). One block of 256 threads takes the keys
 * [s0, s1) of one split for up to DEC_MAXR query heads that share KV head g: each key row is
 * read once for all of them. Threads form groups of tpr lanes per key row (each lane owns up to
 * 8 elements of the row); 256 / tpr rows are in flight at a time.
 *   1. scores for the chunk into shared memory (fp32, scale folded into q);
 *   2. one warp per head: max, exp, sum over the chunk;
 *   3. P V accumulated per lane, reduced over the rows of a warp with shuffles and over the
 *      warps in warp order (deterministic);
 *   4. one chunk: out = o / l (bf16); several: o, m, l to the workspace, merged by k_attn_merge. */
#define DEC_THREADS 256
#define DEC_MAXR 8
#define DEC_CHUNK 1024
#define DEC_MAXD 256

struct dec_args {
  int B, Tq, H, G, d, R, nsub, off, window, ldq, ldo, ldkv, n_split, chunk, tpr;
  size_t kv_bstride;
  float scale;
  const int32_t *off_dev; /* non-NULL: the offset, read at run time; n_split / chunk follow from it */
  int off_per_seq;        /* off_dev[b] per sequence, else off_dev[0] */
  int target;             /* dec_split's block target (the host's plan of the splits) */
  int n_grid;             /* splits in the grid and the workspace's stride (>= every n_split) */
};

/* The splits of Tk keys: enough blocks for about two waves (target splits per query row and
 * head group), chunks of 64 .. DEC_CHUNK keys. *n_ws (>= *n_split) grows monotonically with Tk,
 * so a workspace or grid sized for the longest context serves every shorter one. The host's plan
 * and the device's (off_dev) are this one function: the same splits, the same bits. */
__host__ __device__ static inline void dec_split(int Tk, int target, int *n_split, int *chunk, int *n_ws) {
  const int n_min = (Tk + DEC_CHUNK - 1) / DEC_CHUNK, useful = (Tk + 63) / 64;
  int n = target < useful ? target : useful;
  if (n < n_min) n = n_min;
  if (n < 1) n = 1;
  const int ch = (Tk + n - 1) / n;
  *n_ws = n;
  *chunk = ch;
  *n_split = (Tk + ch - 1) / ch;
}

template <int VEC>
__device__ __forceinline__ void load_row(float *f, const uint16_t *row, int lr, int tpr, int d, bool valid) {
  if (VEC == 8) {
    if (valid && lr * 8 < d) {
      const uint4 u = *reinterpret_cast<const uint4 *>(row + lr * 8);
      const uint16_t *h = reinterpret_cast<const uint16_t *>(&u);
#pragma unroll
      for (int k = 0; k < 8; k++) f[k] = xd_bf2f(h[k]);
    } else {
#pragma unroll
      for (int k = 0; k < 8; k++) f[k] = 0.f;
    }
  } else {
#pragma unroll
    for (int k = 0; k < 8; k++) {
      const int el = lr + k * tpr;
      f[k] = valid && el < d ? xd_bf2f(row[el]) : 0.f;
    }
  }
}

template <int VEC>
__device__ __forceinline__ int elem_of(int lr, int k, int tpr) {
  return VEC == 8 ? lr * 8 + k : lr + k * tpr;
}

template <int VEC>
__global__ void __launch_bounds__(DEC_THREADS) k_attn_decode(uint16_t *__restrict__ out, float *__restrict__ part_o,
                                                             float *__restrict__ part_ml, const uint16_t *__restrict__ q,
                                                             const uint16_t *__restrict__ k,
                                                             const uint16_t *__restrict__ v, const dec_args a) {
  __shared__ float sc[DEC_MAXR][DEC_CHUNK];
  __shared__ float ob[DEC_MAXR][DEC_MAXD];
  __shared__ float sm[DEC_MAXR], sl[DEC_MAXR];
  const int row = blockIdx.x / a.n_grid; /* b*Tq + i */
  const int b = row / a.Tq, i = row % a.Tq;
  int off = a.off, n_split = a.n_split, chunk = a.chunk;
  if (a.off_dev) {
    int n_ws;
    off = a.off_dev[a.off_per_seq ? b : 0];
    dec_split(off + a.Tq, a.target, &n_split, &chunk, &n_ws);
  }
  const int split = blockIdx.x % a.n_grid;
  if (split >= n_split) return; /* a grid sized for a longer context */
  const int g = blockIdx.y / a.nsub, sub = blockIdx.y % a.nsub;
  const int p = off + i;
  const int h0 = g * a.R + sub * DEC_MAXR;
  const int nr = min(DEC_MAXR, a.R - sub * DEC_MAXR);
  const int lo = a.window > 0 ? max(0, p - a.window + 1) : 0;
  const int s0 = max(split * chunk, lo), s1 = min(split * chunk + chunk, p + 1);
  const int tid = threadIdx.x, tpr = a.tpr, lr = tid % tpr, ks = tid / tpr, rpb = DEC_THREADS / tpr;
  const int d = a.d;
  if (s0 >= s1) { /* nothing visible in this split (only possible with several splits) */
    for (int t = tid; t < nr * d; t += DEC_THREADS) {
      const int r = t / d, el = t % d;
      part_o[(((size_t)row * a.H + h0 + r) * a.n_grid + split) * d + el] = 0.f;
    }
    if (tid < nr) {
      float *ml = part_ml + (((size_t)row * a.H + h0 + tid) * a.n_grid + split) * 2;
      ml[0] = -INFINITY, ml[1] = 0.f;
    }
    return;
  }
  for (int t = tid; t < DEC_MAXR * DEC_MAXD; t += DEC_THREADS) (&ob[0][0])[t] = 0.f;
  /* this lane's q elements, scaled */
  float qr[DEC_MAXR][8];
  const uint16_t *qrow = q + (size_t)row * a.ldq;
#pragma unroll
  for (int r = 0; r < DEC_MAXR; r++) {
#pragma unroll
    for (int kk = 0; kk < 8; kk++) {
      const int el = elem_of<VEC>(lr, kk, tpr);
      qr[r][kk] = r < nr && el < d ? xd_bf2f(qrow[(size_t)(h0 + r) * d + el]) * a.scale : 0.f;
    }
  }
  const uint16_t *kb = k + (size_t)b * a.kv_bstride + (size_t)g * d;
  const uint16_t *vb = v + (size_t)b * a.kv_bstride + (size_t)g * d;
  /* 1. scores (every thread runs the same number of iterations: shuffles need whole warps) */
  /* unrolled so that several rows' loads are in flight per thread (decode is bandwidth-bound) */
#pragma unroll 4
  for (int jb = s0; jb < s1; jb += rpb) {
    const int j = jb + ks;
    const bool valid = j < s1;
    float kf[8];
    load_row<VEC>(kf, kb + (size_t)(valid ? j : s0) * a.ldkv, lr, tpr, d, valid);
#pragma unroll
    for (int r = 0; r < DEC_MAXR; r++) {
      if (r < nr) {
        float s = 0.f;
#pragma unroll
        for (int kk = 0; kk < 8; kk++) s += qr[r][kk] * kf[kk];
        for (int o = tpr / 2; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (valid && lr == 0) sc[r][j - s0] = s;
      }
    }
  }
  __syncthreads();
  /* 2. softmax statistics of the chunk, one warp per head */
  const int n = s1 - s0, warp = tid >> 5, lane = tid & 31;
  if (warp < nr) {
    float m = -INFINITY;
    for (int j = lane; j < n; j += 32) m = fmaxf(m, sc[warp][j]);
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    float l = 0.f;
    for (int j = lane; j < n; j += 32) {
      const float pj = __expf(sc[warp][j] - m);
      sc[warp][j] = pj;
      l += pj;
    }
    for (int o = 16; o > 0; o >>= 1) l += __shfl_xor_sync(0xffffffffu, l, o);
    if (lane == 0) sm[warp] = m, sl[warp] = l;
  }
  __syncthreads();
  /* 3. o = P V */
  float acc[DEC_MAXR][8];
#pragma unroll
  for (int r = 0; r < DEC_MAXR; r++)
#pragma unroll
    for (int kk = 0; kk < 8; kk++) acc[r][kk] = 0.f;
  /* unrolled so that several rows' loads are in flight per thread (decode is bandwidth-bound) */
#pragma unroll 4
  for (int jb = s0; jb < s1; jb += rpb) {
    const int j = jb + ks;
    const bool valid = j < s1;
    float vf[8];
    load_row<VEC>(vf, vb + (size_t)(valid ? j : s0) * a.ldkv, lr, tpr, d, valid);
#pragma unroll
    for (int r = 0; r < DEC_MAXR; r++) {
      if (r < nr) {
        const float pj = valid ? sc[r][j - s0] : 0.f;
#pragma unroll
        for (int kk = 0; kk < 8; kk++) acc[r][kk] += pj * vf[kk];
      }
    }
  }
#pragma unroll
  for (int r = 0; r < DEC_MAXR; r++) {
    if (r < nr) {
#pragma unroll
      for (int kk = 0; kk < 8; kk++)
        for (int o = 16; o >= tpr; o >>= 1) acc[r][kk] += __shfl_xor_sync(0xffffffffu, acc[r][kk], o);
    }
  }
  /* the warps' sums added in warp order (not shared-memory atomics): the same bits every run */
  for (int w = 0; w < DEC_THREADS / 32; w++) {
    if (warp == w && lane < tpr) {
#pragma unroll
      for (int r = 0; r < DEC_MAXR; r++) {
        if (r < nr) {
#pragma unroll
          for (int kk = 0; kk < 8; kk++) {
            const int el = elem_of<VEC>(lr, kk, tpr);
            if (el < d) ob[r][el] += acc[r][kk];
          }
        }
      }
    }
    __syncthreads();
  }
  /* 4. output */
  for (int t = tid; t < nr * d; t += DEC_THREADS) {
    const int r = t / d, el = t % d;
    if (n_split == 1)
      out[(size_t)row * a.ldo + (size_t)(h0 + r) * d + el] = xd_f2bf(ob[r][el] / sl[r]);
    else
      part_o[(((size_t)row * a.H + h0 + r) * a.n_grid + split) * d + el] = ob[r][el];
  }
  if (n_split > 1 && tid < nr) {
    float *ml = part_ml + (((size_t)row * a.H + h0 + tid) * a.n_grid + split) * 2;
    ml[0] = sm[tid], ml[1] = sl[tid];
  }
}

/* One block per (query row, head): merge the splits' (o, m, l); the workspace's stride is n_grid.
 * off_dev non-NULL: n_split from the run-time offset (nothing to do when it is 1: the attention
 * kernel wrote out). */
__global__ void k_attn_merge(uint16_t *out, const float *part_o, const float *part_ml, int H, int d, int n_split,
                             int ldo, int n_grid, const int32_t *off_dev, int per_seq, int Tq, int target) {
  const size_t rh = blockIdx.x; /* row*H + h */
  if (off_dev) {
    int chunk, n_ws;
    dec_split(off_dev[per_seq ? rh / H / Tq : 0] + Tq, target, &n_split, &chunk, &n_ws);
    if (n_split == 1) return;
  }
  const float *ml = part_ml + rh * n_grid * 2;
  float M = -INFINITY;
  for (int s = 0; s < n_split; s++) M = fmaxf(M, ml[2 * s]);
  float L = 0.f;
  for (int s = 0; s < n_split; s++) L += ml[2 * s] == -INFINITY ? 0.f : ml[2 * s + 1] * __expf(ml[2 * s] - M);
  const size_t row = rh / H, h = rh % H;
  for (int el = threadIdx.x; el < d; el += blockDim.x) {
    float o = 0.f;
    for (int s = 0; s < n_split; s++)
      if (ml[2 * s] != -INFINITY) o += part_o[(rh * n_grid + s) * d + el] * __expf(ml[2 * s] - M);
    out[row * ldo + h * d + el] = xd_f2bf(o / L);
  }
}

/* The block target of dec_split for these dims (independent of the key count). */
static int dec_target(const xd_cuda_ctx *c, const xd_cuda_decode_dims *a) {
  const int R = a->H / a->G, nsub = (R + DEC_MAXR - 1) / DEC_MAXR;
  const double base = (double)a->B * a->Tq * a->G * nsub;
  const double t = ceil(2.0 * (c->sm_count > 0 ? c->sm_count : 132) / base);
  return t > 1e6 ? 1000000 : (int)t;
}
/* The plan for the dims' key count: q_offset + Tq, or max_keys with off_dev (the grid and
 * workspace for the longest context the run-time offset may give). */
static void dec_plan(const xd_cuda_ctx *c, const xd_cuda_decode_dims *a, int *n_split, int *chunk, int *n_ws) {
  dec_split(a->off_dev ? a->max_keys : a->q_offset + a->Tq, dec_target(c, a), n_split, chunk, n_ws);
}

extern "C" size_t xd_cuda_attention_decode_ws(xd_cuda_ctx *c, const xd_cuda_decode_dims *a) {
  int n_split, ch, n;
  dec_plan(c, a, &n_split, &ch, &n);
  if ((a->off_dev ? n : n_split) <= 1) return 0; /* off_dev: the grid's n splits (xd_cuda_attention_decode) */
  return (size_t)a->B * a->Tq * a->H * n * (a->d + 2) * sizeof(float);
}

extern "C" int xd_cuda_attention_decode(xd_cuda_ctx *c, uint16_t *out, const uint16_t *q, const uint16_t *k,
                                        const uint16_t *v, const xd_cuda_decode_dims *a, void *ws, size_t ws_bytes,
                                        xd_err *e) {
  XD_ARG(a->B > 0 && a->Tq > 0 && a->H > 0 && a->G > 0 && a->H % a->G == 0);
  XD_ARG(a->d > 0 && a->d <= DEC_MAXD && a->q_offset >= 0 && a->window >= 0);
  XD_ARG(a->ldq >= a->H * a->d && a->ldo >= a->H * a->d && a->ldkv >= a->G * a->d);
  XD_ARG((size_t)a->q_offset + a->Tq < (1u << 30));
  XD_ARG(!a->off_dev || (a->max_keys >= a->Tq && a->max_keys < (1 << 30)));
  int n_split, chunk, n_ws;
  dec_plan(c, a, &n_split, &chunk, &n_ws);
  /* off_dev: a grid of n_ws splits, the most any offset up to max_keys - Tq gives (dec_split) */
  const int n_grid = a->off_dev ? n_ws : n_split;
  XD_ARG((size_t)n_grid * a->B * a->Tq < (1u << 31) && (size_t)a->B * a->Tq * a->H < (1u << 31));
  const size_t need = xd_cuda_attention_decode_ws(c, a);
  if (need > ws_bytes)
    return xd_errf(e, "decode.cu: attention over %d keys for %d x %d queries needs %zu bytes of workspace, %zu given",
                   a->off_dev ? a->max_keys : a->q_offset + a->Tq, a->B, a->Tq, need, ws_bytes);
  dec_args g;
  g.B = a->B, g.Tq = a->Tq, g.H = a->H, g.G = a->G, g.d = a->d, g.R = a->H / a->G;
  g.nsub = (g.R + DEC_MAXR - 1) / DEC_MAXR;
  g.off = a->q_offset, g.window = a->window, g.ldq = a->ldq, g.ldo = a->ldo, g.ldkv = a->ldkv;
  g.n_split = n_split, g.chunk = chunk, g.kv_bstride = a->kv_bstride;
  g.scale = (float)(1.0 / sqrt((double)a->d));
  g.off_dev = a->off_dev, g.off_per_seq = a->off_per_seq, g.target = dec_target(c, a), g.n_grid = n_grid;
  const bool vec = a->d % 8 == 0 && a->ldkv % 8 == 0 && a->kv_bstride % 8 == 0 &&
                   (((uintptr_t)k | (uintptr_t)v) & 15) == 0;
  const int per = vec ? a->d / 8 : a->d; /* 16-byte pieces (or elements) per row */
  int tpr = 1;
  while (tpr < per && tpr < 32) tpr *= 2;
  if (!vec) { /* each lane holds at most 8 elements: tpr * 8 >= d */
    while (tpr * 8 < a->d) tpr *= 2;
  }
  g.tpr = tpr;
  const bool merge = n_grid > 1; /* off_dev: the run-time n_split may still be 1 (k_attn_merge returns) */
  float *part_o = merge ? (float *)ws : NULL;
  float *part_ml = merge ? part_o + (size_t)a->B * a->Tq * a->H * n_grid * a->d : NULL;
  const dim3 grid((unsigned)((size_t)n_grid * a->B * a->Tq), (unsigned)(a->G * g.nsub));
  if (vec)
    k_attn_decode<8><<<grid, DEC_THREADS, 0, c->stream>>>(out, part_o, part_ml, q, k, v, g);
  else
    k_attn_decode<1><<<grid, DEC_THREADS, 0, c->stream>>>(out, part_o, part_ml, q, k, v, g);
  XD_CU_LAUNCH("attention_decode");
  if (merge) {
    k_attn_merge<<<(unsigned)((size_t)a->B * a->Tq * a->H), 64, 0, c->stream>>>(
        out, part_o, part_ml, a->H, a->d, n_split, a->ldo, n_grid, a->off_dev, a->off_per_seq, a->Tq, g.target);
    XD_CU_LAUNCH("attention_merge");
  }
  return 0;
}

/* ---- argmax ----------------------------------------------------------------------------- */
__global__ void k_argmax(int32_t *out, const float *logits, int V) {
  const float *r = logits + (size_t)blockIdx.x * V;
  float best = -INFINITY;
  int bi = 0x7fffffff;
  for (int i = threadIdx.x; i < V; i += blockDim.x) {
    const float x = r[i];
    if (x > best || (x == best && i < bi)) best = x, bi = i;
  }
  __shared__ float sv[32];
  __shared__ int si[32];
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ov > best || (ov == best && oi < bi)) best = ov, bi = oi;
  }
  if ((threadIdx.x & 31) == 0) sv[threadIdx.x >> 5] = best, si[threadIdx.x >> 5] = bi;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < (int)(blockDim.x >> 5); w++)
      if (sv[w] > best || (sv[w] == best && si[w] < bi)) best = sv[w], bi = si[w];
    /* all NaN (or -inf): index 0, as the CPU loop that starts from index 0 */
    out[blockIdx.x] = bi == 0x7fffffff ? 0 : bi;
  }
}

extern "C" int xd_cuda_argmax_f32(xd_cuda_ctx *c, int32_t *out, const float *logits, int B, int V, xd_err *e) {
  XD_ARG(B > 0 && V > 0);
  k_argmax<<<B, 1024, 0, c->stream>>>(out, logits, V);
  XD_CU_LAUNCH("argmax");
  return 0;
}

/* ---- temperature sampling --------------------------------------------------------------- */
/* One 1024-thread block per request. Thread t owns the ids [t C, (t+1) C), C = ceil(V / 1024), so
 * that an exclusive scan of the threads' sums orders the weights by id; the thread whose span
 * holds u z walks its ids again (the same fp32 terms, the same fp64 order) to the token. */
__global__ void __launch_bounds__(1024) k_sample_rows(const float *logits, int V, const xd_cuda_sample_req *req,
                                                      double *z_out, int32_t *tok_out) {
  const xd_cuda_sample_req q = req[blockIdx.x];
  const float *r = logits + (size_t)q.row * V;
  const int t = threadIdx.x, nt = blockDim.x, lane = t & 31, w = t >> 5;
  __shared__ float smx[32];
  __shared__ double ssum[32];
  __shared__ int sfound, slast[32];
  float mx = -INFINITY;
  for (int i = t; i < V; i += nt) mx = fmaxf(mx, r[i]);
  for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if (lane == 0) smx[w] = mx;
  if (t == 0) sfound = INT_MAX;
  __syncthreads();
  mx = smx[0];
  for (int i = 1; i < (nt >> 5); i++) mx = fmaxf(mx, smx[i]);
  const int C = (V + nt - 1) / nt, lo = min(V, t * C), hi = min(V, lo + C);
  double s = 0;
  int last = -1;
  for (int i = lo; i < hi; i++) {
    const float x = expf((r[i] - mx) * q.inv_t);
    s += x;
    if (x > 0.f) last = i;
  }
  /* exclusive scan over the block: within each warp, then over the warps' totals */
  double incl = s;
  for (int o = 1; o < 32; o <<= 1) {
    const double y = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += y;
  }
  int wl = last; /* the warp's last id of nonzero weight */
  for (int o = 16; o > 0; o >>= 1) wl = max(wl, __shfl_xor_sync(0xffffffffu, wl, o));
  if (lane == 31) ssum[w] = incl;
  if (lane == 0) slast[w] = wl;
  __syncthreads();
  double before = 0, z = 0;
  int lastall = -1;
  for (int i = 0; i < (nt >> 5); i++) {
    if (i < w) before += ssum[i];
    z += ssum[i];
    lastall = max(lastall, slast[i]);
  }
  const double pre = before + incl - s, target = q.u * z;
  if (s > 0 && target >= pre && target < pre + s) {
    double acc = pre;
    int tok = last;
    for (int i = lo; i < hi; i++) {
      acc += expf((r[i] - mx) * q.inv_t);
      if (acc > target) { tok = i; break; }
    }
    atomicMin(&sfound, tok);
  }
  __syncthreads();
  if (sfound == INT_MAX && s > 0 && pre > target) { /* rounding left a gap: the next span's first token */
    int first = lo;
    while (first < hi && expf((r[first] - mx) * q.inv_t) == 0.f) first++;
    atomicMin(&sfound, first);
  }
  __syncthreads();
  if (t == 0) {
    z_out[blockIdx.x] = z;
    tok_out[blockIdx.x] = sfound != INT_MAX ? sfound : (lastall >= 0 ? lastall : 0);
  }
}

extern "C" int xd_cuda_sample_rows(xd_cuda_ctx *c, const float *logits, int V, const xd_cuda_sample_req *req, int n,
                                   double *z, int32_t *tok, xd_err *e) {
  XD_ARG(n >= 0 && V > 0);
  if (n == 0) return 0;
  k_sample_rows<<<n, 1024, 0, c->stream>>>(logits, V, req, z, tok);
  XD_CU_LAUNCH("sample_rows");
  return 0;
}
