/* Stage II KD loss on the GPU: teacher top-k extraction and the fused student loss forward +
 * backward, twins of ops/cpu/kd_loss.c (topk_logprobs, kd_loss_forward + kd_loss_backward).
 * See cuda_ops.h (KD loss section) for the contracts and docs/cuda.md for the design notes. */
#include <stdint.h>
#include "cuda_common.cuh"

namespace {

constexpr unsigned FULL = 0xffffffffu;
constexpr int KMAX = XD_CUDA_TOPK_MAX; /* teacher entries per row */

/* ---- element access: bf16 (uint16_t bits) or fp32 storage, fp32 values ------------------ */
__device__ __forceinline__ float ld1(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float ld1(const uint16_t *p, size_t i) { return xd_bf2f(p[i]); }
__device__ __forceinline__ void st1(float *p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void st1(uint16_t *p, size_t i, float v) { p[i] = xd_f2bf(v); }

__device__ __forceinline__ void unpack8(uint4 u, float *x) {
  const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int j = 0; j < 4; j++) {
    x[2 * j] = __uint_as_float(w[j] << 16); /* little-endian: element 2j in the low half */
    x[2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
  }
}
/* Eight elements at p (16-byte aligned). CS = streaming (last use / evict first) variants. */
template <bool CS> __device__ __forceinline__ void ld8(const uint16_t *p, float *x) {
  const uint4 *q = reinterpret_cast<const uint4 *>(p);
  unpack8(CS ? __ldcs(q) : *q, x);
}
template <bool CS> __device__ __forceinline__ void ld8(const float *p, float *x) {
  const float4 *q = reinterpret_cast<const float4 *>(p);
  const float4 a = CS ? __ldcs(q) : q[0], b = CS ? __ldcs(q + 1) : q[1];
  x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w, x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
}
__device__ __forceinline__ void st8cs(uint16_t *p, const float *x) {
  unsigned w[4];
#pragma unroll
  for (int j = 0; j < 4; j++) w[j] = (unsigned)xd_f2bf(x[2 * j]) | ((unsigned)xd_f2bf(x[2 * j + 1]) << 16);
  __stcs(reinterpret_cast<uint4 *>(p), make_uint4(w[0], w[1], w[2], w[3]));
}
__device__ __forceinline__ void st8cs(float *p, const float *x) {
  float4 *q = reinterpret_cast<float4 *>(p);
  __stcs(q, make_float4(x[0], x[1], x[2], x[3]));
  __stcs(q + 1, make_float4(x[4], x[5], x[6], x[7]));
}

/* Calls f.vec(x[8], first index) / f.one(x, index) for every element of a row, each element
 * once, 8-wide loads (64 bytes in flight per thread) when vec (V % 8 == 0, aligned base).
 * Front to back: pass 2 of the fused kernel then walks back to front (L2 reuse). */
template <int TH, typename T, typename F>
__device__ __forceinline__ void stream_row(const T *z, int V, bool vec, F &f) {
  constexpr int U = 8 / sizeof(T);
  if (vec) {
    const int nvec = V >> 3;
    int c = threadIdx.x;
    for (; c + (U - 1) * TH < nvec; c += U * TH) {
      float x[U][8];
#pragma unroll
      for (int u = 0; u < U; u++) ld8<false>(z + 8 * (size_t)(c + u * TH), x[u]);
#pragma unroll
      for (int u = 0; u < U; u++) f.vec(x[u], 8 * (c + u * TH));
    }
    for (; c < nvec; c += TH) {
      float x[8];
      ld8<false>(z + 8 * (size_t)c, x);
      f.vec(x, 8 * c);
    }
  } else {
    for (int v = threadIdx.x; v < V; v += TH) f.one(ld1(z, (size_t)v), v);
  }
}

/* The 8-wide vectors of a row, back to front with streaming (evict-first) loads, U of them in
 * flight per thread, f.vec(x[8], first index) on each: a row's second pass, which meets first
 * the vectors the first pass read last (the likeliest still in L2). Each vector once. */
template <int TH, int U, typename T, typename F>
__device__ __forceinline__ void stream_vec_rev(const T *z, int V, F &f) {
  const int nvec = V >> 3;
  int c = nvec - 1 - (int)threadIdx.x;
  for (; c >= (U - 1) * TH; c -= U * TH) {
    float x[U][8];
#pragma unroll
    for (int u = 0; u < U; u++) ld8<true>(z + 8 * (size_t)(c - u * TH), x[u]);
#pragma unroll
    for (int u = 0; u < U; u++) f.vec(x[u], 8 * (c - u * TH));
  }
  for (; c >= 0; c -= TH) {
    float x[8];
    ld8<true>(z + 8 * (size_t)c, x);
    f.vec(x, 8 * c);
  }
}
/* stream_row's calls back to front (for order-free passes): 64 bytes in flight per thread. */
template <int TH, typename T, typename F>
__device__ __forceinline__ void stream_row_rev(const T *z, int V, bool vec, F &f) {
  if (vec) stream_vec_rev<TH, 8 / sizeof(T)>(z, V, f);
  else
    for (int v = V - 1 - (int)threadIdx.x; v >= 0; v -= TH) f.one(ld1(z, (size_t)v), v);
}

/* ---- online max / sum-exp (fp32), NaN-propagating --------------------------------------- */
struct OnlineLse {
  float m = -INFINITY, s = 0.f;
  template <int W> __device__ __forceinline__ void add(const float *x) {
    float vm = x[0];
#pragma unroll
    for (int j = 1; j < W; j++) vm = fmaxf(vm, x[j]);
    if (vm > m) {
      s *= __expf(m - vm); /* m = -inf: s is 0, exp gives 0 */
      m = vm;
    }
    if (m != -INFINITY) {
#pragma unroll
      for (int j = 0; j < W; j++) s += __expf(x[j] - m);
    } else {
      /* every value so far is -inf or NaN: -inf adds exp(-inf - max) = 0, NaN must stay NaN */
#pragma unroll
      for (int j = 0; j < W; j++) s += x[j] == -INFINITY ? 0.f : x[j];
    }
  }
  __device__ __forceinline__ void merge(float m2, float s2) {
    if (m2 > m) {
      s = s * __expf(m - m2) + s2;
      m = m2;
    } else if (s2 != 0.f) { /* also NaN */
      s += s2 * __expf(m2 - m);
    }
  }
};

/* Block-wide reductions; the result is in every thread, the order of operations fixed by TH
 * (deterministic). sm: >= 32 * NV doubles, reusable right after the call returns. */
struct OpSum {
  __device__ double operator()(double a, double b) const { return a + b; }
};
struct OpMax {
  __device__ double operator()(double a, double b) const { return fmax(a, b); }
};
template <int TH, int NV, typename Op> __device__ void block_reduce(double (&v)[NV], Op op, double *sm) {
#pragma unroll
  for (int i = 0; i < NV; i++)
    for (int o = 16; o > 0; o >>= 1) v[i] = op(v[i], __shfl_xor_sync(FULL, v[i], o));
  const int w = threadIdx.x >> 5;
  __syncthreads(); /* sm may still be read by an earlier call */
  if ((threadIdx.x & 31) == 0)
    for (int i = 0; i < NV; i++) sm[w * NV + i] = v[i];
  __syncthreads();
#pragma unroll
  for (int i = 0; i < NV; i++) {
    double r = sm[i];
    for (int q = 1; q < TH / 32; q++) r = op(r, sm[q * NV + i]);
    v[i] = r;
  }
}
template <int TH> __device__ void block_lse(OnlineLse &L, float *sm /* >= 64 */) {
  for (int o = 16; o > 0; o >>= 1) {
    const float m2 = __shfl_xor_sync(FULL, L.m, o), s2 = __shfl_xor_sync(FULL, L.s, o);
    L.merge(m2, s2);
  }
  const int w = threadIdx.x >> 5;
  __syncthreads();
  if ((threadIdx.x & 31) == 0) sm[2 * w] = L.m, sm[2 * w + 1] = L.s;
  __syncthreads();
  OnlineLse r;
  r.m = sm[0], r.s = sm[1];
  for (int q = 1; q < TH / 32; q++) r.merge(sm[2 * q], sm[2 * q + 1]);
  L = r;
}

__device__ __forceinline__ bool finite_f(float x) { return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u; }

/* ======================================================================================
 * Teacher top-k
 * Order-preserving 32-bit keys (larger value -> larger key; -0 counted as +0 since the CPU op
 * compares floats), composite 64-bit sort keys (key << 32 | ~id): descending composite order
 * = value descending, ties by lower id, the CPU op's total order.
 * ====================================================================================== */
__device__ __forceinline__ unsigned fkey(float x) {
  unsigned b = __float_as_uint(x);
  if (b == 0x80000000u) b = 0;
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float unkey(unsigned u) {
  return __uint_as_float((u & 0x80000000u) ? (u & 0x7fffffffu) : ~u);
}
__device__ __forceinline__ unsigned long long comp(unsigned key, int id) {
  return ((unsigned long long)key << 32) | (unsigned)(0xffffffffu - (unsigned)id);
}

constexpr int TK_TH = 512;
constexpr int TK_CAP = 4096; /* shared sort buffer (composite keys) */
constexpr int TK_BINS = 2048;

/* Warp 0: the bin b (of nbins, digit values) holding the kneed-th largest element counted in
 * hist, and how many are counted in bins above it. Needs sum(hist) >= kneed >= 1. */
__device__ void find_bin(const unsigned *hist, int nbins, unsigned kneed, int *bin, unsigned *above) {
  if (threadIdx.x >= 32) return;
  const int lane = threadIdx.x, per = nbins / 32, lo = lane * per;
  unsigned mine = 0;
  for (int b = 0; b < per; b++) mine += hist[lo + b];
  unsigned suf = mine; /* sum over lanes >= lane */
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned t = __shfl_down_sync(FULL, suf, o);
    if (lane + o < 32) suf += t;
  }
  const unsigned ab = suf - mine;
  if (ab < kneed && kneed <= suf) {
    unsigned acc = ab;
    for (int b = lo + per - 1; b >= lo; b--) {
      if (acc + hist[b] >= kneed) {
        *bin = b;
        *above = acc;
        break;
      }
      acc += hist[b];
    }
  }
}

/* Descending bitonic sort of buf[0, P), P a power of two. */
template <int TH> __device__ void bitonic_desc(unsigned long long *buf, int P) {
  for (int size = 2; size <= P; size <<= 1)
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int t = threadIdx.x; t < P / 2; t += TH) {
        const int i = 2 * t - (t & (stride - 1)), j = i + stride;
        const unsigned long long a = buf[i], b = buf[j];
        const bool desc = (i & size) == 0;
        if (desc ? (a < b) : (a > b)) buf[i] = b, buf[j] = a;
      }
      __syncthreads();
    }
}

struct TkPass1 {
  OnlineLse L;
  unsigned *hist;
  bool finite = true;
  template <int W> __device__ __forceinline__ void each(const float *x) {
#pragma unroll
    for (int j = 0; j < W; j++) {
      finite &= finite_f(x[j]);
      atomicAdd(&hist[fkey(x[j]) >> 21], 1u);
    }
    L.add<W>(x);
  }
  __device__ __forceinline__ void vec(const float *x, int) { each<8>(x); }
  __device__ __forceinline__ void one(float x, int) { each<1>(&x); }
};
/* Keys whose top 11 bits are >= bin go to the shared buffer (order by arrival; sorted later). */
struct TkCollect {
  unsigned bin;
  unsigned *n;
  unsigned long long *buf;
  __device__ __forceinline__ void one(float x, int v) {
    const unsigned key = fkey(x);
    if ((key >> 21) >= bin) buf[atomicAdd(n, 1u)] = comp(key, v);
  }
  __device__ __forceinline__ void vec(const float *x, int v0) {
#pragma unroll
    for (int j = 0; j < 8; j++) one(x[j], v0 + j);
  }
};
/* Exact radix select, level 2 / 3: histogram of (key >> shift) & (nbins-1) among keys with
 * (key & pmask) == prefix. */
struct TkRefine {
  unsigned pmask, prefix;
  int shift;
  unsigned dmask;
  unsigned *hist;
  __device__ __forceinline__ void one(float x, int) {
    const unsigned key = fkey(x);
    if ((key & pmask) == prefix) atomicAdd(&hist[(key >> shift) & dmask], 1u);
  }
  __device__ __forceinline__ void vec(const float *x, int v0) {
#pragma unroll
    for (int j = 0; j < 8; j++) one(x[j], v0 + j);
  }
};

template <typename T>
__global__ void __launch_bounds__(TK_TH, 2)
    k_topk(const T *logits, int V, int k, int32_t *ids, float *logp, int32_t *bad_row, bool vec) {
  __shared__ unsigned hist[TK_BINS];
  __shared__ unsigned long long buf[TK_CAP];
  __shared__ float red[64];
  __shared__ int s_bin;
  __shared__ unsigned s_above, s_n, s_eq;
  __shared__ unsigned s_wcnt[TK_TH / 32];
  const size_t row = blockIdx.x;
  const T *z = logits + row * (size_t)V;
  const int tid = threadIdx.x;

  for (int b = tid; b < TK_BINS; b += TK_TH) hist[b] = 0;
  if (tid == 0) s_n = 0, s_eq = 0;
  __syncthreads();
  /* pass 1: lse, finiteness, histogram of the top 11 key bits */
  TkPass1 p1;
  p1.hist = hist;
  stream_row<TK_TH>(z, V, vec, p1);
  const bool all_finite = __syncthreads_and(p1.finite);
  block_lse<TK_TH>(p1.L, red);
  const double lse = (double)p1.L.m + log((double)p1.L.s);
  if (!all_finite && tid == 0 && bad_row) atomicMin(bad_row, (int32_t)row);
  find_bin(hist, TK_BINS, (unsigned)k, &s_bin, &s_above);
  __syncthreads();
  const unsigned bin = (unsigned)s_bin, above = s_above, inbin = hist[bin];
  int nsel;
  if (above + inbin <= (unsigned)TK_CAP) {
    /* pass 2: everything from the threshold bin up (< k above it, so the top k are in there);
     * arrival order does not matter (sorted below by value, then id), so back to front: the
     * 4096 x 128K fp32 rows' top-k 0.981 -> 0.950 ms on an H200 */
    TkCollect col{bin, &s_n, buf};
    stream_row_rev<TK_TH>(z, V, vec, col);
    nsel = (int)(above + inbin);
  } else {
    /* massive ties around the threshold: exact 32-bit threshold T by two more radix levels,
     * then everything above T and the lowest ids equal to T, in index order */
    unsigned kneed = (unsigned)k - above, prefix = bin << 21, pmask = 0xffe00000u;
    const int shifts[2] = {10, 0};
    const unsigned dmasks[2] = {2047u, 1023u};
    for (int lvl = 0; lvl < 2; lvl++) {
      __syncthreads();
      for (int b = tid; b < TK_BINS; b += TK_TH) hist[b] = 0;
      __syncthreads();
      TkRefine rf{pmask, prefix, shifts[lvl], dmasks[lvl], hist};
      stream_row<TK_TH>(z, V, vec, rf);
      __syncthreads();
      find_bin(hist, (int)dmasks[lvl] + 1, kneed, &s_bin, &s_above);
      __syncthreads();
      kneed -= s_above;
      prefix |= (unsigned)s_bin << shifts[lvl];
      pmask = lvl == 0 ? 0xfffffc00u : 0xffffffffu;
    }
    const unsigned thr = prefix;
    const int lane = tid & 31, w = tid >> 5;
    for (int base = 0; base < V; base += TK_TH) {
      const int v = base + tid;
      const unsigned key = v < V ? fkey(ld1(z, (size_t)v)) : 0u;
      const bool gt = v < V && key > thr, eq = v < V && key == thr;
      if (gt) buf[atomicAdd(&s_n, 1u)] = comp(key, v);
      const unsigned bal = __ballot_sync(FULL, eq);
      if (lane == 0) s_wcnt[w] = __popc(bal);
      __syncthreads();
      unsigned rank = s_eq + __popc(bal & ((1u << lane) - 1u)), tot = 0;
      for (int q = 0; q < TK_TH / 32; q++) {
        if (q < w) rank += s_wcnt[q];
        tot += s_wcnt[q];
      }
      if (eq && rank < kneed) buf[atomicAdd(&s_n, 1u)] = comp(key, v);
      __syncthreads();
      if (tid == 0) s_eq += tot;
    }
    nsel = k;
  }
  __syncthreads();
  int P = 2;
  while (P < nsel) P <<= 1;
  for (int i = nsel + tid; i < P; i += TK_TH) buf[i] = 0ull; /* below every real element */
  __syncthreads();
  bitonic_desc<TK_TH>(buf, P);
  for (int i = tid; i < k; i += TK_TH) {
    const unsigned long long cv = buf[i];
    ids[row * k + i] = (int32_t)(0xffffffffu - (unsigned)(cv & 0xffffffffull));
    logp[row * k + i] = (float)((double)unkey((unsigned)(cv >> 32)) - lse);
  }
}

__global__ void k_set_i32(int32_t *p, int32_t v) { *p = v; }
__global__ void k_bad_row_final(int32_t *p) {
  if (*p == INT32_MAX) *p = -1;
}

/* ======================================================================================
 * Fused student loss + gradient
 * ====================================================================================== */
struct FusedPass1 {
  OnlineLse L;
  __device__ __forceinline__ void vec(const float *x, int) { L.add<8>(x); }
  __device__ __forceinline__ void one(float x, int) { L.add<1>(&x); }
};

/* Row count of the mask and result initialisation (one block). */
__global__ void k_kd_count(const uint8_t *mask, int N, xd_cuda_kd_result *res) {
  __shared__ double sm[32];
  double cnt[1] = {0};
  long long c = 0;
  for (int n = threadIdx.x; n < N; n += 1024) c += (!mask || mask[n]) ? 1 : 0;
  cnt[0] = (double)c; /* exact: N < 2^31 */
  block_reduce<1024>(cnt, OpSum(), sm);
  if (threadIdx.x == 0) {
    res->r.loss = res->r.ce = res->r.kl = 0;
    res->r.count = (int64_t)cnt[0];
    res->bad_pos = INT64_MAX;
  }
}

/* Means in row order (fixed tree over 1024 threads), fp64. */
__global__ void k_kd_reduce(const uint8_t *mask, const float *row_ce, const float *row_kl, int N, float gamma,
                            float beta, xd_cuda_kd_result *res) {
  __shared__ double sm[64];
  double v[2] = {0, 0};
  for (int n = threadIdx.x; n < N; n += 1024)
    if (!mask || mask[n]) v[0] += (double)row_ce[n], v[1] += (double)row_kl[n];
  block_reduce<1024>(v, OpSum(), sm);
  if (threadIdx.x == 0) {
    const int64_t cnt = res->r.count;
    double ce = v[0], kl = v[1];
    if (cnt) ce /= (double)cnt, kl /= (double)cnt;
    res->r.ce = ce;
    res->r.kl = kl;
    res->r.loss = gamma * ce + beta * kl;
    if (res->bad_pos == INT64_MAX) res->bad_pos = -1;
  }
}

template <typename Tout> __device__ void zero_row(Tout *d, int V, bool vec, int TH) {
  if (vec) {
    const float zero8[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int c = threadIdx.x; c < (V >> 3); c += TH) st8cs(d + 8 * (size_t)c, zero8);
  } else {
    for (int v = threadIdx.x; v < V; v += TH) st1(d, (size_t)v, 0.f);
  }
}

/* Pass 2 of the fused kernel on one 8-wide vector x of z at v0: d = sce * exp(z - lf) (+ d when
 * ACC). z and d may be the same buffer (the vector is read before it is written). */
template <bool ACC, typename Tout> struct Pass2Vec {
  Tout *d;
  float sce, lf;
  __device__ __forceinline__ void vec(float *x, int v0) {
    float o[8];
    if (ACC) ld8<true>(d + v0, o);
#pragma unroll
    for (int q = 0; q < 8; q++) {
      const float g = sce * __expf(x[q] - lf);
      x[q] = ACC ? o[q] + g : g;
    }
    st8cs(d + v0, x);
  }
};

struct FusedParams {
  int V, k;
  float tau, gamma, beta, dloss;
  const int32_t *targets;
  const uint8_t *mask;
  const int32_t *tk_ids;
  const float *tk_logp;
  float *lse, *row_ce, *row_kl;
  xd_cuda_kd_result *res;
  size_t row0; /* the first row of this launch among all N (logits / dlogits hold this launch's rows only) */
  bool accumulate, vec;
};

/* One block per row. Phases: validate + gather the k teacher entries, the target and (when
 * accumulating) their old gradient values; pass 1 (row, front to back): online max/sum-exp;
 * the k-entry softmaxes / KL / gradient terms in fp64; the final gradient values of the
 * distinct positions among ids and the target (fp32, the CPU op's order of operations: softmax
 * term, minus sce at the target, plus the K terms in entry order); pass 2 (row, back to front):
 * g = sce softmax (+ old); then those <= k+1 positions are overwritten with their full value. */
template <typename Tin, typename Tout, int TH>
__global__ void __launch_bounds__(TH, 1024 / TH) k_kd_fused(const Tin *logits, Tout *dlogits, FusedParams p) {
  __shared__ int s_ids[KMAX];
  __shared__ float s_zk[KMAX], s_lp[KMAX], s_old[KMAX], s_t[KMAX], s_fix[KMAX];
  __shared__ bool s_own[KMAX];
  __shared__ double sm[64];
  __shared__ float smf[64];
  __shared__ float s_zy, s_oldy;
  __shared__ int s_yin;
  const int tid = threadIdx.x, V = p.V, k = p.k;
  const size_t row = p.row0 + blockIdx.x;
  const Tin *z = logits + blockIdx.x * (size_t)V;
  Tout *d = dlogits + blockIdx.x * (size_t)V;

  if (p.mask && !p.mask[row]) {
    if (!p.accumulate) zero_row(d, V, p.vec, TH);
    if (tid == 0) {
      if (p.lse) p.lse[row] = 0.f;
      p.row_ce[row] = p.row_kl[row] = 0.f;
    }
    return;
  }
  /* validate (untrusted cache), stage the teacher entries */
  const int y = p.targets[row];
  bool bad = false;
  if (tid == 0) {
    bad = y < 0 || y >= V;
    s_yin = 0;
  }
  for (int i = tid; i < k; i += TH) {
    const int id = p.tk_ids[row * k + i];
    const float lp = p.tk_logp[row * k + i];
    bad |= id < 0 || id >= V || !finite_f(lp);
    s_ids[i] = id;
    s_lp[i] = lp;
  }
  if (__syncthreads_or(bad)) {
    if (!p.accumulate) zero_row(d, V, p.vec, TH);
    if (tid == 0) {
      atomicMin(reinterpret_cast<unsigned long long *>(&p.res->bad_pos), (unsigned long long)row);
      if (p.lse) p.lse[row] = NAN;
      p.row_ce[row] = p.row_kl[row] = NAN;
    }
    return;
  }
  /* gathers (in flight during pass 1) */
  for (int i = tid; i < k; i += TH) {
    s_zk[i] = ld1(z, (size_t)s_ids[i]);
    if (p.accumulate) s_old[i] = ld1(d, (size_t)s_ids[i]);
  }
  if (tid == 0) {
    s_zy = ld1(z, (size_t)y);
    s_oldy = p.accumulate ? ld1(d, (size_t)y) : 0.f;
  }
  /* pass 1 */
  FusedPass1 p1;
  stream_row<TH>(z, V, p.vec, p1);
  block_lse<TH>(p1.L, smf); /* its barriers also publish the gathers */
  const double lse_d = (double)p1.L.m + log((double)p1.L.s);
  const float lf = (float)lse_d; /* the CPU op's stored lse[n], used by its backward */

  /* scales, as kd_loss_backward: s = dloss / count */
  const double s = (double)p.dloss / (double)p.res->r.count;
  const float sce = (float)(p.gamma * s);
  const double skl = p.beta * s / p.tau;

  /* k-entry softmaxes (fp64, as kd_topk_row); recomputed from shared memory rather than
   * held in registers (the row loops need them) */
  const double itau = 1.0 / p.tau;
  double mx[2] = {-INFINITY, -INFINITY};
  for (int i = tid; i < k; i += TH) {
    mx[0] = fmax(mx[0], (double)s_zk[i] * itau);
    mx[1] = fmax(mx[1], (double)s_lp[i] * itau);
  }
  block_reduce<TH>(mx, OpMax(), sm);
  double se[2] = {0, 0};
  for (int i = tid; i < k; i += TH) {
    se[0] += exp((double)s_zk[i] * itau - mx[0]);
    se[1] += exp((double)s_lp[i] * itau - mx[1]);
  }
  block_reduce<TH>(se, OpSum(), sm);
  const double lses = mx[0] + log(se[0]), lset = mx[1] + log(se[1]);
  double kl[1] = {0};
  for (int i = tid; i < k; i += TH) {
    const double ls = (double)s_zk[i] * itau - lses, lt = (double)s_lp[i] * itau - lset;
    const double pS = exp(ls), pT = exp(lt);
    kl[0] += pT * (lt - ls);
    s_t[i] = (float)(skl * (pS - pT));
  }
  block_reduce<TH>(kl, OpSum(), sm); /* barriers publish s_t */

  /* full values at the distinct teacher positions (owner = first entry with that id; the
   * others get s_own 0) */
  for (int i = tid; i < k; i += TH) {
    const int id = s_ids[i];
    bool first = true;
    for (int q = 0; q < i; q++) first &= s_ids[q] != id;
    s_own[i] = first;
    if (first) {
      float g = sce * __expf(s_zk[i] - lf);
      if (p.accumulate) g = s_old[i] + g;
      if (id == y) {
        g -= sce;
        s_yin = 1;
      }
      for (int q = i; q < k; q++)
        if (s_ids[q] == id) g += s_t[q];
      s_fix[i] = g;
    }
  }
  __syncthreads(); /* s_yin */
  float gy = 0.f;
  if (tid == 0 && !s_yin) {
    gy = sce * __expf(s_zy - lf);
    if (p.accumulate) gy = s_oldy + gy;
    gy -= sce;
  }

  /* pass 2, back to front: g = sce * exp(z - lse) (+ old) */
  if (p.vec) {
    constexpr int U = 8 / sizeof(Tin); /* 64 bytes of logits in flight per thread */
    if (p.accumulate) {
      Pass2Vec<true, Tout> f{d, sce, lf};
      stream_vec_rev<TH, U / 2>(z, V, f);
    } else {
      Pass2Vec<false, Tout> f{d, sce, lf};
      stream_vec_rev<TH, U>(z, V, f);
    }
  } else {
    for (int v = V - 1 - tid; v >= 0; v -= TH) {
      const float g = sce * __expf(ld1(z, (size_t)v) - lf);
      st1(d, (size_t)v, p.accumulate ? ld1(d, (size_t)v) + g : g);
    }
  }
  __syncthreads(); /* the row is written: now the special positions */
  for (int i = tid; i < k; i += TH)
    if (s_own[i]) st1(d, (size_t)s_ids[i], s_fix[i]);
  if (tid == 0) {
    if (!s_yin) st1(d, (size_t)y, gy);
    if (p.lse) p.lse[row] = lf;
    p.row_ce[row] = (float)(lse_d - (double)s_zy);
    p.row_kl[row] = (float)kl[0];
  }
}

template <typename Tin, typename Tout>
int launch_fused(xd_cuda_ctx *c, const xd_cuda_kd_args *a, const FusedParams &p, unsigned N, int threads, xd_err *e) {
  const Tin *z = static_cast<const Tin *>(a->logits);
  Tout *d = static_cast<Tout *>(a->dlogits);
  if (threads == 256)
    k_kd_fused<Tin, Tout, 256><<<N, 256, 0, c->stream>>>(z, d, p);
  else if (threads == 512)
    k_kd_fused<Tin, Tout, 512><<<N, 512, 0, c->stream>>>(z, d, p);
  else
    k_kd_fused<Tin, Tout, 1024><<<N, 1024, 0, c->stream>>>(z, d, p);
  XD_CU_LAUNCH("kd_fused");
  return 0;
}

} // namespace

extern "C" int xd_cuda_topk_logprobs(xd_cuda_ctx *c, const void *logits, xd_cuda_dtype dtype, int N, int V, int k,
                                     int32_t *ids, float *logp, int32_t *bad_row, xd_err *e) {
  XD_ARG(N >= 0 && V > 0 && k >= 1 && k <= V && k <= XD_CUDA_TOPK_MAX);
  XD_ARG(dtype == XD_CUDA_BF16 || dtype == XD_CUDA_F32);
  XD_ARG(logits && ids && logp);
  if (bad_row) {
    k_set_i32<<<1, 1, 0, c->stream>>>(bad_row, INT32_MAX);
    XD_CU_LAUNCH("set");
  }
  if (N > 0) {
    const bool vec = V % 8 == 0 && ((uintptr_t)logits & 15) == 0;
    if (dtype == XD_CUDA_BF16)
      k_topk<uint16_t><<<N, TK_TH, 0, c->stream>>>(static_cast<const uint16_t *>(logits), V, k, ids, logp, bad_row,
                                                   vec);
    else
      k_topk<float><<<N, TK_TH, 0, c->stream>>>(static_cast<const float *>(logits), V, k, ids, logp, bad_row, vec);
    XD_CU_LAUNCH("topk");
  }
  if (bad_row) {
    k_bad_row_final<<<1, 1, 0, c->stream>>>(bad_row);
    XD_CU_LAUNCH("bad_row");
  }
  return 0;
}

/* The arguments every entry point of the fused loss checks. */
static int kd_args_check(const xd_cuda_kd_args *a, xd_err *e) {
  const kd_config *cf = &a->cfg;
  XD_ARG(cf->N >= 0 && cf->V > 0 && cf->k >= 1 && cf->k <= cf->V && cf->k <= XD_CUDA_TOPK_MAX);
  XD_ARG(cf->tau > 0);
  XD_ARG(a->logits_dtype == XD_CUDA_BF16 || a->logits_dtype == XD_CUDA_F32);
  XD_ARG(a->grad_dtype == XD_CUDA_BF16 || a->grad_dtype == XD_CUDA_F32);
  XD_ARG(a->logits && a->dlogits && a->targets && a->tk_ids && a->tk_logp && a->row_ce && a->row_kl && a->res);
  XD_ARG(a->dlogits != a->logits || a->grad_dtype == a->logits_dtype);
  XD_ARG(a->threads == 0 || a->threads == 256 || a->threads == 512 || a->threads == 1024);
  return 0;
}

extern "C" int xd_cuda_kd_loss_begin(xd_cuda_ctx *c, const xd_cuda_kd_args *a, xd_err *e) {
  if (kd_args_check(a, e)) return -1;
  k_kd_count<<<1, 1024, 0, c->stream>>>(a->mask, a->cfg.N, a->res);
  XD_CU_LAUNCH("kd_count");
  return 0;
}

extern "C" int xd_cuda_kd_loss_rows(xd_cuda_ctx *c, const xd_cuda_kd_args *a, int r0, int n, xd_err *e) {
  if (kd_args_check(a, e)) return -1;
  const kd_config *cf = &a->cfg;
  XD_ARG(r0 >= 0 && n >= 0 && r0 <= cf->N - n);
  if (n == 0) return 0;
  const int threads = a->threads ? a->threads : (cf->V >= 32768 ? 512 : 256);
  FusedParams p; /* the per-row arrays whole: the kernel indexes them by the row among all N */
  p.V = cf->V, p.k = cf->k;
  p.tau = cf->tau, p.gamma = cf->gamma, p.beta = cf->beta, p.dloss = a->dloss;
  p.targets = a->targets, p.mask = a->mask, p.tk_ids = a->tk_ids, p.tk_logp = a->tk_logp;
  p.lse = a->lse, p.row_ce = a->row_ce, p.row_kl = a->row_kl, p.res = a->res;
  p.row0 = (size_t)r0;
  p.accumulate = a->dlogits != a->logits && a->accumulate;
  p.vec = cf->V % 8 == 0 && ((uintptr_t)a->logits & 15) == 0 && ((uintptr_t)a->dlogits & 15) == 0;
  const bool ib = a->logits_dtype == XD_CUDA_BF16, ob = a->grad_dtype == XD_CUDA_BF16;
  const unsigned N = (unsigned)n;
  if (ib && ob) return launch_fused<uint16_t, uint16_t>(c, a, p, N, threads, e);
  if (ib) return launch_fused<uint16_t, float>(c, a, p, N, threads, e);
  if (ob) return launch_fused<float, uint16_t>(c, a, p, N, threads, e);
  return launch_fused<float, float>(c, a, p, N, threads, e);
}

extern "C" int xd_cuda_kd_loss_end(xd_cuda_ctx *c, const xd_cuda_kd_args *a, xd_err *e) {
  if (kd_args_check(a, e)) return -1;
  const kd_config *cf = &a->cfg;
  k_kd_reduce<<<1, 1024, 0, c->stream>>>(a->mask, a->row_ce, a->row_kl, cf->N, cf->gamma, cf->beta, a->res);
  XD_CU_LAUNCH("kd_reduce");
  return 0;
}

extern "C" int xd_cuda_kd_loss_fused(xd_cuda_ctx *c, const xd_cuda_kd_args *a, xd_err *e) {
  if (xd_cuda_kd_loss_begin(c, a, e) || xd_cuda_kd_loss_rows(c, a, 0, a->cfg.N, e)) return -1;
  return xd_cuda_kd_loss_end(c, a, e);
}
