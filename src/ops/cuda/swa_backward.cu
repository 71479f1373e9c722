/* Sliding-window+sinks attention backward on the GPU (the twin of swa_backward).
 *
 * xd_cuda_swa_backward_ref: the first version, fp32, kept for comparison: one warp per (b, t, h) query row; the lanes split
 * the head dimension, and the visible keys (sinks then window, the CPU order) are visited in
 * sequence. With p = exp(s - lse) from the saved lse and D_t = dout_t . out_t:
 *   ds = p (dout_t . v_s - D_t);  dq_t += scale ds k_s;  dk_s += scale ds q_t;  dv_s += p dout_t
 * dk and dv receive contributions from many queries: fp32 atomicAdd (order not fixed, so the
 * last bits may differ between runs). Cost O(B T H (W+S) d), no tensor cores.
 * xd_cuda_swa_backward_det: the same values gathered per key row in a fixed order (below), the
 * fallback of xd_cuda_swa_backward for the shapes its tensor-core kernels do not take. */
#include <math.h>
#include <stdlib.h>
#include "cuda_common.cuh"

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

#define SWA_BWD_MAXD 256

/* One warp per query row (b, t, h): dq_t over the visible keys (sinks then window, the CPU
 * order). ATOMIC_KV (the reference): dk_s, dv_s += with float atomics; otherwise (the fixed-order
 * fallback's part 1) D_t goes to Dt_out and dk / dv are left to k_swa_bwd_det_kv. */
template <bool ATOMIC_KV>
__global__ void k_swa_bwd_rows(float *dq, float *dk, float *dv, float *Dt_out, const float *dout, const float *q,
                               const float *k, const float *v, const float *out, const float *lse, swa_shape sh,
                               float scale) {
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
  if (!ATOMIC_KV && lane == 0) Dt_out[row] = Dt;
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
        if (ATOMIC_KV) {
          atomicAdd(dk + kvrow + i, scale * ds * qv[r]);
          atomicAdd(dv + kvrow + i, p * dov[r]);
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < SWA_BWD_MAXD / 32; r++) {
    const int i = lane + 32 * r;
    if (i < d) dq[row * d + i] += dqv[r];
  }
}

extern "C" int xd_cuda_swa_backward_ref(xd_cuda_ctx *c, float *dq, float *dk, float *dv, const float *dout,
                                    const float *q, const float *k, const float *v, const float *out,
                                    const float *lse, const swa_shape *sh, xd_err *e) {
  XD_ARG(sh->B > 0 && sh->T > 0 && sh->H > 0 && sh->G > 0 && sh->H % sh->G == 0);
  XD_ARG(sh->d > 0 && sh->d <= SWA_BWD_MAXD && sh->W >= 1 && sh->S >= 0);
  const size_t rows = (size_t)sh->B * sh->T * sh->H;
  const int warps = 8;
  const float scale = (float)(1.0 / sqrt((double)sh->d));
  k_swa_bwd_rows<true><<<xd_ceil_div(rows, warps), warps * 32, 0, c->stream>>>(dq, dk, dv, NULL, dout, q, k, v, out,
                                                                             lse, *sh, scale);
  XD_CU_LAUNCH("swa_backward_ref");
  return 0;
}

/* ==== xd_cuda_swa_backward_det: the reference's arithmetic in a fixed order ====================
 * What xd_cuda_swa_backward runs for the shapes its tensor-core kernels do not take (head dims
 * that are not a multiple of 16, d > 128, unaligned buffers): the reference's per-pair values
 * (the same dot products, warp sums and exponentials) without atomics, so that a small student
 * trains to the same bits on every run and on resume. Part 1, one warp per query row: dq (the
 * reference's own loop, so its dq bit for bit) and D_t into a scratch row. Part 2, one warp per
 * key row (b, s, g): the queries that see key s (all t >= s for a sink, else t in [s, s+W-1])
 * for each head of the group in order, p and ds recomputed from lse_t and D_t, dk_s and dv_s
 * summed in registers and added once. Part 1 is the reference's own kernel (k_swa_bwd_rows)
 * without its atomics. Every (t, s) pair is computed twice: fine for a fallback. */
__global__ void k_swa_bwd_det_kv(float *dk, float *dv, const float *dout, const float *q, const float *k,
                                 const float *v, const float *lse, const float *Dt, swa_shape sh, float scale) {
  const int warps = blockDim.x >> 5;
  const size_t row = (size_t)blockIdx.x * warps + (threadIdx.x >> 5); /* (b*T + s)*G + g */
  const int lane = threadIdx.x & 31;
  if (row >= (size_t)sh.B * sh.T * sh.G) return;
  const int g = (int)(row % sh.G), s = (int)((row / sh.G) % sh.T), b = (int)(row / ((size_t)sh.G * sh.T));
  const int d = sh.d, rep = sh.H / sh.G;
  float kv_[SWA_BWD_MAXD / 32], vv[SWA_BWD_MAXD / 32], ak[SWA_BWD_MAXD / 32], av[SWA_BWD_MAXD / 32];
#pragma unroll
  for (int r = 0; r < SWA_BWD_MAXD / 32; r++) {
    const int i = lane + 32 * r;
    kv_[r] = i < d ? k[row * d + i] : 0.f;
    vv[r] = i < d ? v[row * d + i] : 0.f;
    ak[r] = av[r] = 0.f;
  }
  const int t_end = s < sh.S ? sh.T - 1 : min(sh.T - 1, s + sh.W - 1);
  for (int hh = 0; hh < rep; hh++) {
    const int h = g * rep + hh;
    for (int t = s; t <= t_end; t++) {
      const size_t qrow = ((size_t)b * sh.T + t) * sh.H + h;
      const float *qr = q + qrow * d, *dor = dout + qrow * d;
      float sc = 0.f, dp = 0.f;
#pragma unroll
      for (int r = 0; r < SWA_BWD_MAXD / 32; r++) {
        const int i = lane + 32 * r;
        if (i < d) sc += qr[i] * kv_[r], dp += dor[i] * vv[r];
      }
      sc = warp_sum(sc) * scale;
      dp = warp_sum(dp);
      const float p = expf(sc - lse[qrow]);
      const float ds = p * (dp - Dt[qrow]);
#pragma unroll
      for (int r = 0; r < SWA_BWD_MAXD / 32; r++) {
        const int i = lane + 32 * r;
        if (i < d) ak[r] += scale * ds * qr[i], av[r] += p * dor[i];
      }
    }
  }
#pragma unroll
  for (int r = 0; r < SWA_BWD_MAXD / 32; r++) {
    const int i = lane + 32 * r;
    if (i < d) dk[row * d + i] += ak[r], dv[row * d + i] += av[r];
  }
}

extern "C" int xd_cuda_swa_backward_det(xd_cuda_ctx *c, float *dq, float *dk, float *dv, const float *dout,
                                        const float *q, const float *k, const float *v, const float *out,
                                        const float *lse, const swa_shape *sh, xd_err *e) {
  XD_ARG(sh->B > 0 && sh->T > 0 && sh->H > 0 && sh->G > 0 && sh->H % sh->G == 0);
  XD_ARG(sh->d > 0 && sh->d <= SWA_BWD_MAXD && sh->W >= 1 && sh->S >= 0);
  const size_t rows = (size_t)sh->B * sh->T * sh->H, krows = (size_t)sh->B * sh->T * sh->G;
  const float scale = (float)(1.0 / sqrt((double)sh->d));
  const int warps = 8;
  float *Dt = NULL;
  XD_CU(cudaMallocAsync((void **)&Dt, rows * sizeof(float), c->stream)); /* stream-ordered, pooled */
  k_swa_bwd_rows<false><<<xd_ceil_div(rows, warps), warps * 32, 0, c->stream>>>(dq, NULL, NULL, Dt, dout, q, k, v, out,
                                                                              lse, *sh, scale);
  cudaError_t st = cudaGetLastError();
  if (st == cudaSuccess) {
    k_swa_bwd_det_kv<<<xd_ceil_div(krows, warps), warps * 32, 0, c->stream>>>(dk, dv, dout, q, k, v, lse, Dt, *sh, scale);
    st = cudaGetLastError();
  }
  const cudaError_t fs = cudaFreeAsync(Dt, c->stream);
  if (st != cudaSuccess)
    return xd_errf(e, "swa_backward.cu:%d: deterministic fallback launch: %s (%s)", __LINE__, cudaGetErrorName(st),
                   cudaGetErrorString(st));
  XD_CU(fs);
  return 0;
}

/* ==== xd_cuda_swa_backward: FlashAttention-2-style backward on the tensor cores ===============
 * No atomics, every sum in a fixed order: bitwise identical from run to run. Four launches:
 *   1. k_sb_rowdot   D_t = bf16(dout_t) . out_t per (b, t, h), fp32, into the context's scratch.
 *   2. k_sb_dkv      one block (4 warps x 16 keys) per (64-key block, KV head g, b) in "window
 *                    mode": over the H/G query heads of the group and the query tiles of BQ rows
 *                    that see those keys through the window (queries s..s+W-1 of key s), it
 *                    keeps dK, dV of its keys in registers:
 *                      S^T = K Q^T, P^T = exp(S^T scale - lse), dP^T = V dO^T,
 *                      dS^T = P^T o (dP^T - D),  dV += P^T dO,  dK += dS^T Q   (mma)
 *                    and adds scale dK, dV to dk, dv once at the end. The sink keys' far
 *                    queries (s < S, t - s >= W) are split out: extra blocks of the same
 *                    kernel ("sink mode", launched first) take one 64-key block of sinks and
 *                    a chunk of SB_SINK_CHUNK query tiles each, and store their partial dK,
 *                    dV to scratch [chunk][b][g][s][d] (plain stores).
 *   3. k_sb_sink_sum dk, dv of the sink keys += the partials summed over the chunks in order.
 *   4. k_sb_dq       one block (4 warps x 16 queries) per (64-query block, h, b): over the
 *                    visible key tiles (sinks, then the window; attention.cu's order),
 *                    S = Q K^T, P = exp(S scale - lse), dP = dO V^T, dS = P o (dP - D),
 *                    dQ += dS K (mma); dq += scale dQ at the end.
 * Precision: q, k, dout are rounded to bf16 when their tiles are staged in shared memory,
 * P and dS to bf16 as MMA A operands (as in FlashAttention-2); accumulation, softmax and lse
 * are fp32. dS = P (dP - D) cancels where attention is peaked (dP ~ D; with W = 1 it is
 * exactly 0), so dP must not carry bf16 rounding of v that D lacks: v enters dP as a bf16
 * hi + lo pair (two MMAs, ~16 bits), and D = bf16(dout) . out uses the same rounded dout as
 * dP. Then dP - D = bf16(dout) . (v_s - out) to ~2^-16. Relative L2 error vs the fp32 CPU twin
 * ~4e-3 (tests/gpu/test_gpu_ops.c).
 * Fast path: d a multiple of 16 up to 128, 16-byte aligned buffers; else the reference.
 * Pipelined version (xd_cuda_swa_backward; the above is xd_cuda_swa_backward_v1): a prologue
 * (k_sb_prep_q: D_t as k_sb_rowdot plus bf16 copies of dout and q; k_sb_prep_kv: bf16 k and
 * the v hi + lo pair) writes the operands once in the rounding the staging used, then
 * k_sb_dkv_p / k_sb_dq_p run the same blocks, tile order and MMA sequence (shared
 * sb_dkv_tile / sb_dq_tile) with the next tile fetched by cp.async into a second shared-memory
 * stage while the current one is computed. Same operands, same order: the results are
 * bitwise those of v1 (tests/gpu/test_gpu_ops.c checks it). */
#include "cuda_mma.cuh"

#define SB_BK 64          /* keys per dK/dV block, queries per dQ block (4 warps x 16) */
#define SB_THREADS 128
#define SB_SINK_CHUNK 8   /* query tiles per sink-mode block */

struct sb_args {
  const float *q, *k, *v, *out, *dout, *lse;
  float *dq, *dk, *dv;
  float *Dt;   /* [B,T,H] */
  /* bf16 copies made once per call by the pipelined kernels' prologue (scratch): q, dout
   * [B,T,H,d]; k, v as hi (= bf16(v)) and lo (= bf16(v - hi)) [B,T,G,d] */
  uint16_t *q16, *o16, *k16, *vh16, *vl16;
  float *part; /* sink partials: dK [nc][B][G][Sp][d], then dV the same */
  int B, T, H, G, W, S;
  int nkb;        /* window-mode key blocks */
  int nsb, nc;    /* sink-mode key blocks and query chunks (nsb * nc blocks, first in the grid) */
  int sq_lo, nqt; /* first query tile of the sink range, query tiles in all */
  int Sp;         /* sink rows kept: min(S, T) */
  float scale, scale_log2;
  /* v3 (dS stored): dS tiles [B][H][nqt][nslot][512 uint4] bf16 in dQ-fragment order (see
   * sb_ds_store); slots 0..nwin-1 the window's key tiles j - jwin(qt), then the sink blocks */
  uint4 *ds;
  int nslot, nwin;
  /* hsplit 2: each window-mode key block is two blocks, one per half of the group's query heads,
   * storing scale dK, dV partials to hpart [half][dk, dv][B][T][G][d] (k_sb_half_sum adds them) */
  int hsplit;
  float *hpart;
};

__global__ void k_sb_rowdot(float *Dt, const float *dout, const float *out, size_t rows, int d) {
  const size_t row = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  float acc = 0.f;
  for (int i = lane; i < d; i += 32) acc += __bfloat162float(__float2bfloat16_rn(dout[row * d + i])) * out[row * d + i];
  acc = warp_sum(acc);
  if (lane == 0) Dt[row] = acc;
}

/* ROWS rows of D fp32 values (row r at base + r*ld) -> bf16 shared tile [ROWS][D+8]; rows at or
 * past T (counted from r0) are zero. */
template <int D, int ROWS>
__device__ __forceinline__ void sb_stage(uint16_t *s, const float *base, size_t ld, int r0, int T) {
  constexpr int LDS = D + 8;
  for (int i = threadIdx.x; i < ROWS * (D / 4); i += SB_THREADS) {
    const int r = i / (D / 4), c = (i % (D / 4)) * 4;
    float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
    if (r0 + r < T) x = __ldg(reinterpret_cast<const float4 *>(base + (size_t)(r0 + r) * ld + c));
    uint2 pk;
    pk.x = xd_pack_bf16x2(x.x, x.y);
    pk.y = xd_pack_bf16x2(x.z, x.w);
    *reinterpret_cast<uint2 *>(s + r * LDS + c) = pk;
  }
}

/* The same for V as a bf16 pair: hi = bf16(x), lo = bf16(x - hi) (~16 bits of mantissa). */
template <int D, int ROWS>
__device__ __forceinline__ void sb_stage_hilo(uint16_t *hi, uint16_t *lo, const float *base, size_t ld, int r0, int T) {
  constexpr int LDS = D + 8;
  for (int i = threadIdx.x; i < ROWS * (D / 4); i += SB_THREADS) {
    const int r = i / (D / 4), c = (i % (D / 4)) * 4;
    float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
    if (r0 + r < T) x = __ldg(reinterpret_cast<const float4 *>(base + (size_t)(r0 + r) * ld + c));
    const __nv_bfloat162 h01 = __floats2bfloat162_rn(x.x, x.y), h23 = __floats2bfloat162_rn(x.z, x.w);
    const float2 f01 = __bfloat1622float2(h01), f23 = __bfloat1622float2(h23);
    uint2 ph, pl;
    ph.x = *reinterpret_cast<const uint32_t *>(&h01);
    ph.y = *reinterpret_cast<const uint32_t *>(&h23);
    pl.x = xd_pack_bf16x2(x.x - f01.x, x.y - f01.y);
    pl.y = xd_pack_bf16x2(x.z - f23.x, x.w - f23.y);
    *reinterpret_cast<uint2 *>(hi + r * LDS + c) = ph;
    *reinterpret_cast<uint2 *>(lo + r * LDS + c) = pl;
  }
}

/* v3: hand this warp's dS^T (16 keys x 64 queries, bf16 A fragments sa[kk] with rows = keys)
 * to the dQ kernel as A fragments with rows = queries. The tile (64 queries x 64 keys, 8 KB) is
 * stored as [w'][kk'][lane] uint4: dQ warp w' (queries 16w'..16w'+15) reads its fragment of key
 * block kk' (keys 16kk'..) with one coalesced 16-byte load a lane; this warp holds kk' = warp.
 * Each 8x8 block is transposed in registers (movmatrix): a0' = T(keys 0-7, queries 16w'..+7),
 * a1' = T(keys 0-7, queries 16w'+8..), a2' / a3' the same for keys 8-15. sb_ds_zero stores
 * zeros in the same places (a warp with no visible pair in this tile). */
template <int BQ>
__device__ __forceinline__ void sb_ds_store(uint4 *dsw, const uint32_t (&sa)[BQ / 16][4]) {
  static_assert(BQ == 4 * 16, "dS store: the dQ block's 4 warps x 16 queries");
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
  for (int w = 0; w < 4; w++) {
    const uint4 f = make_uint4(xd_movmatrix_trans(sa[w][0]), xd_movmatrix_trans(sa[w][2]),
                               xd_movmatrix_trans(sa[w][1]), xd_movmatrix_trans(sa[w][3]));
    __stcg(dsw + (w * 4 + warp) * 32 + lane, f);
  }
}
__device__ __forceinline__ void sb_ds_zero(uint4 *dsw) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
  for (int w = 0; w < 4; w++) __stcg(dsw + (w * 4 + warp) * 32 + lane, make_uint4(0, 0, 0, 0));
}
/* The stored tile of (b, h, query tile qt, slot). */
__device__ __forceinline__ uint4 *sb_ds_tile(const sb_args &a, int b, int h, int qt, int slot) {
  return a.ds + ((((size_t)b * a.H + h) * a.nqt + qt) * a.nslot + slot) * 512;
}
/* First window key tile of query tile qt (64 rows): keys below it are outside every row's window. */
__device__ __forceinline__ int sb_jwin(const sb_args &a, int qt) { return max(0, qt * SB_BK - a.W + 1) / SB_BK; }

/* One query tile of the dK / dV blocks: S^T = K Q^T, P^T, dP^T = V dO^T (v as hi + lo; with VLO
 * false hi alone, the _pre entry point's), dS^T = P^T o (dP^T - D), then dV += P^T dO,
 * dK += dS^T Q into this warp's register tiles. Ks/Vs/Vl [SB_BK][D+8], Qs/Os [BQ][D+8] bf16;
 * Ls = lse * log2(e), Ds = D_t of the tile's rows. */
template <int D, int BQ, bool STORE = false, bool VLO = true>
__device__ __forceinline__ void sb_dkv_tile(float (&dka)[D / 8][4], float (&dva)[D / 8][4], const uint16_t *Ks,
                                            const uint16_t *Vs, const uint16_t *Vl, const uint16_t *Qs,
                                            const uint16_t *Os, const float *Ls, const float *Ds, const sb_args &a,
                                            bool sink, int q0, int s0, int s1, uint4 *dsw = nullptr) {
  constexpr int LDS = D + 8;
  const int T = a.T;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
  const int lrow = (lane & 7) + ((lane >> 3) & 1) * 8, lcol = (lane >> 4) * 8;
  float st[BQ / 8][4], dp[BQ / 8][4];
#pragma unroll
  for (int nb = 0; nb < BQ / 8; nb++)
#pragma unroll
    for (int e2 = 0; e2 < 4; e2++) st[nb][e2] = dp[nb][e2] = 0.f;
#pragma unroll
  for (int kk = 0; kk < D / 16; kk++) {
    uint32_t ka[4], va[4], vl[4];
    xd_frag_a(ka, Ks, LDS, warp * 16, kk * 16, gq, tq);
    xd_frag_a(va, Vs, LDS, warp * 16, kk * 16, gq, tq);
    if constexpr (VLO) xd_frag_a(vl, Vl, LDS, warp * 16, kk * 16, gq, tq);
#pragma unroll
    for (int nb = 0; nb < BQ / 8; nb++) {
      const uint16_t *qr = Qs + (nb * 8 + gq) * LDS + kk * 16 + 2 * tq;
      const uint16_t *orr = Os + (nb * 8 + gq) * LDS + kk * 16 + 2 * tq;
      xd_mma16816(st[nb], ka, xd_ld32s(qr), xd_ld32s(qr + 8));
      const uint32_t o0 = xd_ld32s(orr), o1 = xd_ld32s(orr + 8);
      xd_mma16816(dp[nb], va, o0, o1);
      if constexpr (VLO) xd_mma16816(dp[nb], vl, o0, o1);
    }
  }
  /* mask, P^T and dS^T, packed as A fragments (rows = keys, columns = queries) */
  uint32_t pa[BQ / 16][4], sa[BQ / 16][4];
#pragma unroll
  for (int nb = 0; nb < BQ / 8; nb++) {
    float p[4], ds[4];
#pragma unroll
    for (int e2 = 0; e2 < 4; e2++) {
      const int c = nb * 8 + 2 * tq + (e2 & 1), t = q0 + c, s = e2 < 2 ? s0 : s1;
      const bool ok = sink ? (s < a.Sp && t < T && t - s >= a.W) : (s < T && t < T && s <= t && t - s < a.W);
      p[e2] = ok ? exp2f(st[nb][e2] * a.scale_log2 - Ls[c]) : 0.f;
      ds[e2] = p[e2] * (dp[nb][e2] - Ds[c]);
    }
    pa[nb >> 1][(nb & 1) * 2 + 0] = xd_pack_bf16x2(p[0], p[1]);
    pa[nb >> 1][(nb & 1) * 2 + 1] = xd_pack_bf16x2(p[2], p[3]);
    sa[nb >> 1][(nb & 1) * 2 + 0] = xd_pack_bf16x2(ds[0], ds[1]);
    sa[nb >> 1][(nb & 1) * 2 + 1] = xd_pack_bf16x2(ds[2], ds[3]);
  }
  if constexpr (STORE) sb_ds_store<BQ>(dsw, sa);
  /* dV += P^T dO, dK += dS^T Q (k = queries, n = dims: ldmatrix.trans of the row-major tiles) */
#pragma unroll
  for (int kk = 0; kk < BQ / 16; kk++) {
#pragma unroll
    for (int nd = 0; nd < D / 8; nd += 2) {
      uint32_t b0, b1, b2, b3;
      xd_ldsm_x4_trans(b0, b1, b2, b3, Os + (kk * 16 + lrow) * LDS + nd * 8 + lcol);
      xd_mma16816(dva[nd], pa[kk], b0, b1);
      xd_mma16816(dva[nd + 1], pa[kk], b2, b3);
      xd_ldsm_x4_trans(b0, b1, b2, b3, Qs + (kk * 16 + lrow) * LDS + nd * 8 + lcol);
      xd_mma16816(dka[nd], sa[kk], b0, b1);
      xd_mma16816(dka[nd + 1], sa[kk], b2, b3);
    }
  }
}

/* A dK / dV block's keys and query-tile range: window mode (keys k0..k0+63, the queries that
 * see them through the window) or sink mode (a 64-key block of sinks, a chunk of far queries). */
struct sb_kv_range {
  bool sink;
  int k0, qt_lo, qt_hi, chunk, half; /* half: which half of the heads (hsplit 2), else 0 */
};
__device__ __forceinline__ sb_kv_range sb_kv_range_of(const sb_args &a, int BQ) {
  sb_kv_range r;
  const int nsink_blocks = a.nsb * a.nc;
  r.sink = (int)blockIdx.x < nsink_blocks;
  r.chunk = 0, r.half = 0;
  if (r.sink) {
    const int kb = blockIdx.x % a.nsb;
    r.chunk = blockIdx.x / a.nsb;
    r.k0 = kb * SB_BK;
    r.qt_lo = a.sq_lo + r.chunk * SB_SINK_CHUNK;
    r.qt_hi = min(r.qt_lo + SB_SINK_CHUNK, a.nqt) - 1;
  } else {
    const int wi = (int)blockIdx.x - nsink_blocks;
    r.k0 = (wi % a.nkb) * SB_BK;
    r.half = wi / a.nkb;
    const int k1 = min(a.T - 1, r.k0 + SB_BK - 1);
    r.qt_lo = r.k0 / BQ;
    r.qt_hi = min(a.T - 1, k1 + a.W - 1) / BQ;
  }
  return r;
}

/* The end of a dK / dV block: sink mode stores its partials (scale dK, dV) to scratch; window
 * mode adds them to dk, dv. */
/* Plain stores of a dK / dV block's partials (scale dK, dV) for this lane's key rows s0, s1 below
 * lim: row s at pk + s * ld (the sink partials and the head-split halves). */
template <int D>
__device__ __forceinline__ void sb_store_partials(float *pk, float *pv, size_t ld, int lim, float scale,
                                                  const float (&dka)[D / 8][4], const float (&dva)[D / 8][4], int s0,
                                                  int s1) {
  const int tq = (threadIdx.x & 31) & 3;
#pragma unroll
  for (int nd = 0; nd < D / 8; nd++) {
    const int c = nd * 8 + 2 * tq;
    if (s0 < lim) {
      *reinterpret_cast<float2 *>(pk + (size_t)s0 * ld + c) = make_float2(scale * dka[nd][0], scale * dka[nd][1]);
      *reinterpret_cast<float2 *>(pv + (size_t)s0 * ld + c) = make_float2(dva[nd][0], dva[nd][1]);
    }
    if (s1 < lim) {
      *reinterpret_cast<float2 *>(pk + (size_t)s1 * ld + c) = make_float2(scale * dka[nd][2], scale * dka[nd][3]);
      *reinterpret_cast<float2 *>(pv + (size_t)s1 * ld + c) = make_float2(dva[nd][2], dva[nd][3]);
    }
  }
}

template <int D>
__device__ __forceinline__ void sb_dkv_store(const sb_args &a, const sb_kv_range &r, const float (&dka)[D / 8][4],
                                             const float (&dva)[D / 8][4], int g, int b, int s0, int s1) {
  const int T = a.T, G = a.G, tq = (threadIdx.x & 31) & 3;
  const size_t ldkv = (size_t)G * D;
  if (r.sink) {
    const size_t plane = (size_t)a.nc * a.B * G * a.Sp * D;
    float *pk = a.part + (((size_t)r.chunk * a.B + b) * G + g) * a.Sp * D;
    sb_store_partials<D>(pk, pk + plane, D, a.Sp, a.scale, dka, dva, s0, s1);
  } else if (a.hsplit > 1) {
    const size_t plane = (size_t)a.B * T * ldkv;
    float *pk = a.hpart + (size_t)r.half * 2 * plane + (size_t)b * T * ldkv + (size_t)g * D;
    sb_store_partials<D>(pk, pk + plane, ldkv, T, a.scale, dka, dva, s0, s1);
  } else {
    float *dkb = a.dk + (size_t)b * T * ldkv + (size_t)g * D, *dvb = a.dv + (size_t)b * T * ldkv + (size_t)g * D;
#pragma unroll
    for (int nd = 0; nd < D / 8; nd++) {
      const int c = nd * 8 + 2 * tq;
      if (s0 < T) {
        float2 *pk = reinterpret_cast<float2 *>(dkb + (size_t)s0 * ldkv + c);
        float2 *pv = reinterpret_cast<float2 *>(dvb + (size_t)s0 * ldkv + c);
        float2 x = *pk, y = *pv;
        x.x += a.scale * dka[nd][0], x.y += a.scale * dka[nd][1];
        y.x += dva[nd][0], y.y += dva[nd][1];
        *pk = x, *pv = y;
      }
      if (s1 < T) {
        float2 *pk = reinterpret_cast<float2 *>(dkb + (size_t)s1 * ldkv + c);
        float2 *pv = reinterpret_cast<float2 *>(dvb + (size_t)s1 * ldkv + c);
        float2 x = *pk, y = *pv;
        x.x += a.scale * dka[nd][2], x.y += a.scale * dka[nd][3];
        y.x += dva[nd][2], y.y += dva[nd][3];
        *pk = x, *pv = y;
      }
    }
  }
}

/* v1 (xd_cuda_swa_backward_v1): fp32 tiles converted to bf16 as they are staged, one tile at a
 * time (load, barrier, compute, barrier). */
template <int D, int BQ>
__global__ void __launch_bounds__(SB_THREADS) k_sb_dkv(sb_args a) {
  constexpr int LDS = D + 8;
  extern __shared__ __align__(16) uint16_t sb_smem[];
  uint16_t *Ks = sb_smem, *Vs = Ks + SB_BK * LDS, *Vl = Vs + SB_BK * LDS, *Qs = Vl + SB_BK * LDS, *Os = Qs + BQ * LDS;
  float *Ls = reinterpret_cast<float *>(Os + BQ * LDS), *Ds = Ls + BQ;
  const int T = a.T, H = a.H, G = a.G, Hg = H / G;
  const int g = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2;
  const sb_kv_range r = sb_kv_range_of(a, BQ);
  const int kw0 = r.k0 + warp * 16;        /* this warp's first key */
  const int s0 = kw0 + gq, s1 = s0 + 8;    /* this lane's two key rows */
  /* warp-uniform: does this warp hold any key with work in this mode? */
  const bool warp_live = r.sink ? kw0 < a.Sp : kw0 < T;

  const size_t ldkv = (size_t)G * D, ldq = (size_t)H * D;
  sb_stage<D, SB_BK>(Ks, a.k + (size_t)b * T * ldkv + (size_t)g * D, ldkv, r.k0, T);
  sb_stage_hilo<D, SB_BK>(Vs, Vl, a.v + (size_t)b * T * ldkv + (size_t)g * D, ldkv, r.k0, T);

  float dka[D / 8][4], dva[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; i++)
#pragma unroll
    for (int e2 = 0; e2 < 4; e2++) dka[i][e2] = dva[i][e2] = 0.f;
  const float LOG2E = 1.4426950408889634f;

  for (int hg = 0; hg < Hg; hg++) {
    const int h = g * Hg + hg;
    for (int qt = r.qt_lo; qt <= r.qt_hi; qt++) {
      const int q0 = qt * BQ;
      __syncthreads(); /* the previous tile's readers are done */
      sb_stage<D, BQ>(Qs, a.q + (size_t)b * T * ldq + (size_t)h * D, ldq, q0, T);
      sb_stage<D, BQ>(Os, a.dout + (size_t)b * T * ldq + (size_t)h * D, ldq, q0, T);
      for (int rr = threadIdx.x; rr < BQ; rr += SB_THREADS) {
        const bool ok = q0 + rr < T;
        const size_t ri = ((size_t)b * T + (ok ? q0 + rr : 0)) * H + h;
        Ls[rr] = ok ? a.lse[ri] * LOG2E : 0.f;
        Ds[rr] = ok ? a.Dt[ri] : 0.f;
      }
      __syncthreads();
      if (!warp_live) continue;
      /* warp-uniform skip of tiles that none of the warp's keys see */
      if (!r.sink && (q0 + BQ - 1 < kw0 || q0 - (kw0 + 15) >= a.W)) continue;
      sb_dkv_tile<D, BQ>(dka, dva, Ks, Vs, Vl, Qs, Os, Ls, Ds, a, r.sink, q0, s0, s1);
    }
  }
  if (!warp_live) return;
  sb_dkv_store<D>(a, r, dka, dva, g, b, s0, s1);
}

/* ROWS rows of D bf16 values (row r at base + r*ld) -> shared tile [ROWS][D+8] by cp.async;
 * rows at or past T (counted from r0) are zero-filled. */
template <int D, int ROWS>
__device__ __forceinline__ void sb_fetch(uint16_t *s, const uint16_t *base, size_t ld, int r0, int T) {
  constexpr int LDS = D + 8, CH = D / 8; /* 16-byte chunks per row */
  for (int i = threadIdx.x; i < ROWS * CH; i += SB_THREADS) {
    const int r = i / CH, c = (i % CH) * 8;
    const bool ok = r0 + r < T;
    xd_cp_async16(s + r * LDS + c, base + (size_t)(ok ? r0 + r : 0) * ld + c, ok);
  }
}

/* Pipelined (xd_cuda_swa_backward): the same block and tile order and the same arithmetic as
 * k_sb_dkv, from the prologue's bf16 copies, with the next query tile's Q / dO fetched by
 * cp.async (and its lse, D loaded into registers) while the current one is computed: two
 * stages of Q, dO, Ls, Ds in shared memory. */
template <int D, int BQ, bool STORE, bool VLO>
__global__ void __launch_bounds__(SB_THREADS, D <= 96 ? 3 : 2) k_sb_dkv_p(sb_args a) {
  constexpr int LDS = D + 8;
  extern __shared__ __align__(16) uint16_t sb_smem[];
  uint16_t *Ks = sb_smem, *Vs = Ks + SB_BK * LDS, *Vl = Vs + SB_BK * LDS;
  uint16_t *Qs0 = Vl + SB_BK * LDS, *Os0 = Qs0 + 2 * BQ * LDS;           /* [2][BQ][LDS] each */
  float *Ls0 = reinterpret_cast<float *>(Os0 + 2 * BQ * LDS), *Ds0 = Ls0 + 2 * BQ; /* [2][BQ] each */
  const int T = a.T, H = a.H, G = a.G, Hg = H / G;
  const int g = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2;
  const sb_kv_range r = sb_kv_range_of(a, BQ);
  const int kw0 = r.k0 + warp * 16;
  const int s0 = kw0 + gq, s1 = s0 + 8;
  const bool warp_live = r.sink ? kw0 < a.Sp : kw0 < T;
  const size_t ldkv = (size_t)G * D, ldq = (size_t)H * D;
  const float LOG2E = 1.4426950408889634f;
  const int Hb = r.sink ? Hg : Hg / a.hsplit, h0 = g * Hg + r.half * Hb; /* this block's query heads */
  const int nqt = r.qt_hi - r.qt_lo + 1, n_it = Hb * nqt;

  sb_fetch<D, SB_BK>(Ks, a.k16 + (size_t)b * T * ldkv + (size_t)g * D, ldkv, r.k0, T);
  sb_fetch<D, SB_BK>(Vs, a.vh16 + (size_t)b * T * ldkv + (size_t)g * D, ldkv, r.k0, T);
  if constexpr (VLO) sb_fetch<D, SB_BK>(Vl, a.vl16 + (size_t)b * T * ldkv + (size_t)g * D, ldkv, r.k0, T);
  /* iteration it: query head h0 + it / nqt, query tile qt_lo + it % nqt (k_sb_dkv's order) */
  float nl = 0.f, nd = 0.f; /* the next tile's lse, D of row threadIdx.x (< BQ) */
  auto fetch_tile = [&](int it, int buf) {
    const int h = h0 + it / nqt, q0 = (r.qt_lo + it % nqt) * BQ;
    sb_fetch<D, BQ>(Qs0 + buf * BQ * LDS, a.q16 + (size_t)b * T * ldq + (size_t)h * D, ldq, q0, T);
    sb_fetch<D, BQ>(Os0 + buf * BQ * LDS, a.o16 + (size_t)b * T * ldq + (size_t)h * D, ldq, q0, T);
    if ((int)threadIdx.x < BQ) {
      const int rr = threadIdx.x;
      const bool ok = q0 + rr < T;
      const size_t ri = ((size_t)b * T + (ok ? q0 + rr : 0)) * H + h;
      nl = ok ? a.lse[ri] * LOG2E : 0.f;
      nd = ok ? a.Dt[ri] : 0.f;
    }
  };
  auto put_rows = [&](int buf) {
    if ((int)threadIdx.x < BQ) Ls0[buf * BQ + threadIdx.x] = nl, Ds0[buf * BQ + threadIdx.x] = nd;
  };
  fetch_tile(0, 0);
  xd_cp_async_commit();
  put_rows(0);

  float dka[D / 8][4], dva[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; i++)
#pragma unroll
    for (int e2 = 0; e2 < 4; e2++) dka[i][e2] = dva[i][e2] = 0.f;

  for (int it = 0; it < n_it; it++) {
    const int buf = it & 1;
    const bool more = it + 1 < n_it;
    if (more) { /* buffer buf ^ 1 was last read in iteration it - 1, before its closing barrier */
      fetch_tile(it + 1, buf ^ 1);
      xd_cp_async_commit();
      xd_cp_async_wait<1>();
    } else {
      xd_cp_async_wait<0>();
    }
    __syncthreads();
    const int qt = r.qt_lo + it % nqt, q0 = qt * BQ;
    uint4 *dsw = nullptr;
    if constexpr (STORE)
      dsw = sb_ds_tile(a, b, h0 + it / nqt, qt,
                       r.sink ? a.nwin + r.k0 / SB_BK : r.k0 / SB_BK - sb_jwin(a, qt));
    if (warp_live && (r.sink || !(q0 + BQ - 1 < kw0 || q0 - (kw0 + 15) >= a.W)))
      sb_dkv_tile<D, BQ, STORE, VLO>(dka, dva, Ks, Vs, Vl, Qs0 + buf * BQ * LDS, Os0 + buf * BQ * LDS, Ls0 + buf * BQ,
                                Ds0 + buf * BQ, a, r.sink, q0, s0, s1, dsw);
    else if constexpr (STORE)
      sb_ds_zero(dsw);
    if (more) put_rows(buf ^ 1);
    __syncthreads();
  }
  if (!warp_live) return;
  sb_dkv_store<D>(a, r, dka, dva, g, b, s0, s1);
}

/* dk, dv of the sink keys += the sink-mode partials, summed over the chunks in order. */
__global__ void k_sb_sink_sum(sb_args a, int d) {
  const size_t n = (size_t)a.B * a.Sp * a.G * d;
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int c = (int)(i % d);
  const int g = (int)((i / d) % a.G);
  const int s = (int)((i / ((size_t)d * a.G)) % a.Sp);
  const int b = (int)(i / ((size_t)d * a.G * a.Sp));
  const size_t plane = (size_t)a.nc * a.B * a.G * a.Sp * d;
  float sk = 0.f, sv = 0.f;
  for (int ch = 0; ch < a.nc; ch++) {
    const size_t o = ((((size_t)ch * a.B + b) * a.G + g) * a.Sp + s) * d + c;
    sk += a.part[o];
    sv += a.part[plane + o];
  }
  const size_t o = (((size_t)b * a.T + s) * a.G + g) * d + c;
  a.dk[o] += sk;
  a.dv[o] += sv;
}

/* hsplit 2: dk, dv += the two halves' partials (half 0 + half 1), before the sink sums. */
__global__ void k_sb_half_sum(sb_args a, int d) {
  const size_t n = (size_t)a.B * a.T * a.G * d;
  const size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
  if (i >= n) return;
  const float4 *p = reinterpret_cast<const float4 *>(a.hpart);
  const size_t q = i / 4, plane = n / 4;
  const float4 k0 = p[q], v0 = p[plane + q], k1 = p[2 * plane + q], v1 = p[3 * plane + q];
  float4 &dk = reinterpret_cast<float4 *>(a.dk)[q], &dv = reinterpret_cast<float4 *>(a.dv)[q];
  float4 x = dk, y = dv;
  x.x += k0.x + k1.x, x.y += k0.y + k1.y, x.z += k0.z + k1.z, x.w += k0.w + k1.w;
  y.x += v0.x + v1.x, y.y += v0.y + v1.y, y.z += v0.z + v1.z, y.w += v0.w + v1.w;
  dk = x, dv = y;
}

/* One key tile of the dQ blocks: S = Q K^T, P = exp(S scale - lse), dP = dO V^T (v as hi + lo;
 * with VLO false hi alone), dS = P o (dP - D), dQ += dS K into this warp's register tile.
 * Qs/Os/Ks/Vs/Vl [SB_BK][D+8] bf16; rows r0, r1 of this lane with L = lse * log2(e) and D_t. */
template <int D, bool VLO = true>
__device__ __forceinline__ void sb_dq_tile(float (&dqa)[D / 8][4], const uint16_t *Qs, const uint16_t *Os,
                                           const uint16_t *Ks, const uint16_t *Vs, const uint16_t *Vl,
                                           const sb_args &a, int k0, int r0, int r1, float L0, float L1, float D0,
                                           float D1) {
  constexpr int LDS = D + 8;
  const int T = a.T;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
  const int lrow = (lane & 7) + ((lane >> 3) & 1) * 8, lcol = (lane >> 4) * 8;
  float st[SB_BK / 8][4], dp[SB_BK / 8][4];
#pragma unroll
  for (int nb = 0; nb < SB_BK / 8; nb++)
#pragma unroll
    for (int e2 = 0; e2 < 4; e2++) st[nb][e2] = dp[nb][e2] = 0.f;
#pragma unroll
  for (int kk = 0; kk < D / 16; kk++) {
    uint32_t qa[4], oa[4];
    xd_frag_a(qa, Qs, LDS, warp * 16, kk * 16, gq, tq);
    xd_frag_a(oa, Os, LDS, warp * 16, kk * 16, gq, tq);
#pragma unroll
    for (int nb = 0; nb < SB_BK / 8; nb++) {
      const uint16_t *kr = Ks + (nb * 8 + gq) * LDS + kk * 16 + 2 * tq;
      const uint16_t *vr = Vs + (nb * 8 + gq) * LDS + kk * 16 + 2 * tq;
      const uint16_t *vlr = Vl + (nb * 8 + gq) * LDS + kk * 16 + 2 * tq;
      xd_mma16816(st[nb], qa, xd_ld32s(kr), xd_ld32s(kr + 8));
      xd_mma16816(dp[nb], oa, xd_ld32s(vr), xd_ld32s(vr + 8));
      if constexpr (VLO) xd_mma16816(dp[nb], oa, xd_ld32s(vlr), xd_ld32s(vlr + 8));
    }
  }
  uint32_t sa[SB_BK / 16][4];
#pragma unroll
  for (int nb = 0; nb < SB_BK / 8; nb++) {
    float ds[4];
#pragma unroll
    for (int e2 = 0; e2 < 4; e2++) {
      const int key = k0 + nb * 8 + 2 * tq + (e2 & 1), row = e2 < 2 ? r0 : r1;
      const bool ok = row < T && key <= row && (row - key < a.W || key < a.S);
      const float p = ok ? exp2f(st[nb][e2] * a.scale_log2 - (e2 < 2 ? L0 : L1)) : 0.f;
      ds[e2] = p * (dp[nb][e2] - (e2 < 2 ? D0 : D1));
    }
    sa[nb >> 1][(nb & 1) * 2 + 0] = xd_pack_bf16x2(ds[0], ds[1]);
    sa[nb >> 1][(nb & 1) * 2 + 1] = xd_pack_bf16x2(ds[2], ds[3]);
  }
#pragma unroll
  for (int kk = 0; kk < SB_BK / 16; kk++) {
#pragma unroll
    for (int nd = 0; nd < D / 8; nd += 2) {
      uint32_t b0, b1, b2, b3;
      xd_ldsm_x4_trans(b0, b1, b2, b3, Ks + (kk * 16 + lrow) * LDS + nd * 8 + lcol);
      xd_mma16816(dqa[nd], sa[kk], b0, b1);
      xd_mma16816(dqa[nd + 1], sa[kk], b2, b3);
    }
  }
}

/* The key tiles a dQ block visits, in attention.cu's order: the sinks' tiles, then the window's
 * (first: sb_dq_first; then sb_dq_next until -1). */
struct sb_dq_tiles {
  int j_win, j_max, S;
};
__device__ __forceinline__ int sb_dq_first(const sb_dq_tiles &t) { return (0 < t.j_win && t.S <= 0) ? t.j_win : 0; }
__device__ __forceinline__ int sb_dq_next(const sb_dq_tiles &t, int j) {
  j++;
  if (j < t.j_win && j * SB_BK >= t.S) j = t.j_win;
  return j > t.j_max ? -1 : j;
}

/* dq += scale dQ of this lane's rows r0, r1 */
template <int D>
__device__ __forceinline__ void sb_dq_store(const sb_args &a, const float (&dqa)[D / 8][4], int h, int b, int r0,
                                            int r1) {
  const int T = a.T, tq = (threadIdx.x & 31) & 3;
  const size_t ldq = (size_t)a.H * D;
  float *dqb = a.dq + (size_t)b * T * ldq + (size_t)h * D;
#pragma unroll
  for (int nd = 0; nd < D / 8; nd++) {
    const int c = nd * 8 + 2 * tq;
    if (r0 < T) {
      float2 *p = reinterpret_cast<float2 *>(dqb + (size_t)r0 * ldq + c);
      float2 x = *p;
      x.x += a.scale * dqa[nd][0], x.y += a.scale * dqa[nd][1];
      *p = x;
    }
    if (r1 < T) {
      float2 *p = reinterpret_cast<float2 *>(dqb + (size_t)r1 * ldq + c);
      float2 x = *p;
      x.x += a.scale * dqa[nd][2], x.y += a.scale * dqa[nd][3];
      *p = x;
    }
  }
}

template <int D>
__global__ void __launch_bounds__(SB_THREADS) k_sb_dq(sb_args a) {
  constexpr int LDS = D + 8;
  extern __shared__ __align__(16) uint16_t sb_smem[];
  uint16_t *Qs = sb_smem, *Os = Qs + SB_BK * LDS, *Ks = Os + SB_BK * LDS, *Vs = Ks + SB_BK * LDS, *Vl = Vs + SB_BK * LDS;
  const int T = a.T, H = a.H, G = a.G;
  const int qb = gridDim.x - 1 - blockIdx.x; /* longest (latest) query blocks first */
  const int h = blockIdx.y, b = blockIdx.z, g = h / (H / G);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2;
  const int q_lo = qb * SB_BK, q_hi = min(T, q_lo + SB_BK) - 1;
  const int r0 = q_lo + warp * 16 + gq, r1 = r0 + 8;
  const size_t ldkv = (size_t)G * D, ldq = (size_t)H * D;
  sb_stage<D, SB_BK>(Qs, a.q + (size_t)b * T * ldq + (size_t)h * D, ldq, q_lo, T);
  sb_stage<D, SB_BK>(Os, a.dout + (size_t)b * T * ldq + (size_t)h * D, ldq, q_lo, T);
  const float LOG2E = 1.4426950408889634f;
  const size_t i0 = ((size_t)b * T + min(r0, T - 1)) * H + h, i1 = ((size_t)b * T + min(r1, T - 1)) * H + h;
  const float L0 = a.lse[i0] * LOG2E, L1 = a.lse[i1] * LOG2E, D0 = a.Dt[i0], D1 = a.Dt[i1];
  float dqa[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; i++) dqa[i][0] = dqa[i][1] = dqa[i][2] = dqa[i][3] = 0.f;
  const float *kbase = a.k + (size_t)b * T * ldkv + (size_t)g * D, *vbase = a.v + (size_t)b * T * ldkv + (size_t)g * D;
  const sb_dq_tiles tl = {max(0, q_lo - a.W + 1) / SB_BK, q_hi / SB_BK, a.S};
  for (int j = sb_dq_first(tl); j >= 0; j = sb_dq_next(tl, j)) {
    const int k0 = j * SB_BK;
    __syncthreads();
    sb_stage<D, SB_BK>(Ks, kbase, ldkv, k0, T);
    sb_stage_hilo<D, SB_BK>(Vs, Vl, vbase, ldkv, k0, T);
    __syncthreads();
    sb_dq_tile<D>(dqa, Qs, Os, Ks, Vs, Vl, a, k0, r0, r1, L0, L1, D0, D1);
  }
  sb_dq_store<D>(a, dqa, h, b, r0, r1);
}

/* Pipelined dQ: k_sb_dq's blocks, order and arithmetic from the bf16 copies, with the next key
 * tile (K, V hi, V lo) fetched by cp.async while the current one is computed (two stages). */
template <int D, bool VLO>
__global__ void __launch_bounds__(SB_THREADS) k_sb_dq_p(sb_args a) {
  constexpr int LDS = D + 8, TILE = SB_BK * LDS;
  extern __shared__ __align__(16) uint16_t sb_smem[];
  uint16_t *Qs = sb_smem, *Os = Qs + TILE, *KV0 = Os + TILE; /* KV0: [2 stages][K, V hi, V lo][TILE] */
  const int T = a.T, H = a.H, G = a.G;
  const int qb = gridDim.x - 1 - blockIdx.x;
  const int h = blockIdx.y, b = blockIdx.z, g = h / (H / G);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2;
  const int q_lo = qb * SB_BK, q_hi = min(T, q_lo + SB_BK) - 1;
  const int r0 = q_lo + warp * 16 + gq, r1 = r0 + 8;
  const size_t ldkv = (size_t)G * D, ldq = (size_t)H * D;
  const size_t kvoff = (size_t)b * T * ldkv + (size_t)g * D;
  const sb_dq_tiles tl = {max(0, q_lo - a.W + 1) / SB_BK, q_hi / SB_BK, a.S};
  auto fetch_kv = [&](int j, int buf) {
    uint16_t *st = KV0 + buf * 3 * TILE;
    sb_fetch<D, SB_BK>(st, a.k16 + kvoff, ldkv, j * SB_BK, T);
    sb_fetch<D, SB_BK>(st + TILE, a.vh16 + kvoff, ldkv, j * SB_BK, T);
    if constexpr (VLO) sb_fetch<D, SB_BK>(st + 2 * TILE, a.vl16 + kvoff, ldkv, j * SB_BK, T);
  };
  sb_fetch<D, SB_BK>(Qs, a.q16 + (size_t)b * T * ldq + (size_t)h * D, ldq, q_lo, T);
  sb_fetch<D, SB_BK>(Os, a.o16 + (size_t)b * T * ldq + (size_t)h * D, ldq, q_lo, T);
  int j = sb_dq_first(tl);
  fetch_kv(j, 0);
  xd_cp_async_commit();
  const float LOG2E = 1.4426950408889634f;
  const size_t i0 = ((size_t)b * T + min(r0, T - 1)) * H + h, i1 = ((size_t)b * T + min(r1, T - 1)) * H + h;
  const float L0 = a.lse[i0] * LOG2E, L1 = a.lse[i1] * LOG2E, D0 = a.Dt[i0], D1 = a.Dt[i1];
  float dqa[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; i++) dqa[i][0] = dqa[i][1] = dqa[i][2] = dqa[i][3] = 0.f;
  for (int buf = 0; j >= 0; buf ^= 1) {
    const int jn = sb_dq_next(tl, j);
    if (jn >= 0) { /* stage buf ^ 1 was last read before the previous iteration's closing barrier */
      fetch_kv(jn, buf ^ 1);
      xd_cp_async_commit();
      xd_cp_async_wait<1>();
    } else {
      xd_cp_async_wait<0>();
    }
    __syncthreads();
    const uint16_t *st = KV0 + buf * 3 * TILE;
    sb_dq_tile<D, VLO>(dqa, Qs, Os, st, st + TILE, st + 2 * TILE, a, j * SB_BK, r0, r1, L0, L1, D0, D1);
    __syncthreads();
    j = jn;
  }
  sb_dq_store<D>(a, dqa, h, b, r0, r1);
}

/* v3 dQ: dQ = dS K from the tiles k_sb_dkv_p<.., true> stored, no recomputation of S, P, dP.
 * One block (4 warps x 16 queries) per (64-query tile, h, b) over its slots in a fixed order
 * (the sink blocks' far-query tiles, then the window's key tiles j = jwin..qt); K tiles by
 * cp.async two stages deep, the dS fragments straight from global memory (one 16-byte load a
 * lane per 16 keys), the next slot's loaded while the current one is multiplied. */
template <int D>
__global__ void __launch_bounds__(SB_THREADS) k_sb_dq_s(sb_args a) {
  constexpr int LDS = D + 8, TILE = SB_BK * LDS;
  extern __shared__ __align__(16) uint16_t sb_smem[]; /* K: [2 stages][TILE] */
  const int T = a.T, H = a.H, G = a.G;
  const int qt = gridDim.x - 1 - blockIdx.x; /* longest (latest) query tiles first */
  const int h = blockIdx.y, b = blockIdx.z, g = h / (H / G);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2;
  const int lrow = (lane & 7) + ((lane >> 3) & 1) * 8, lcol = (lane >> 4) * 8;
  const int q_lo = qt * SB_BK, q_hi = min(T, q_lo + SB_BK) - 1;
  const int r0 = q_lo + warp * 16 + gq, r1 = r0 + 8;
  const size_t ldkv = (size_t)G * D;
  const uint16_t *kbase = a.k16 + (size_t)b * T * ldkv + (size_t)g * D;
  const int jwin = sb_jwin(a, qt), nsink = (a.nsb > 0 && qt >= a.sq_lo) ? a.nsb : 0;
  const int n = nsink + q_hi / SB_BK - jwin + 1;
  const uint4 *dsq = sb_ds_tile(a, b, h, qt, 0) + warp * 4 * 32 + lane;
  /* item i: (key tile, slot) */
  auto key_tile = [&](int i) { return i < nsink ? i : jwin + i - nsink; };
  auto slot = [&](int i) { return i < nsink ? a.nwin + i : i - nsink; };
  auto load_frags = [&](uint4 (&f)[4], int i) {
    const uint4 *p = dsq + (size_t)slot(i) * 512;
#pragma unroll
    for (int kk = 0; kk < 4; kk++) f[kk] = __ldcg(p + kk * 32);
  };
  sb_fetch<D, SB_BK>(sb_smem, kbase, ldkv, key_tile(0) * SB_BK, T);
  xd_cp_async_commit();
  uint4 f[4], nf[4];
  load_frags(f, 0);
  float dqa[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; i++) dqa[i][0] = dqa[i][1] = dqa[i][2] = dqa[i][3] = 0.f;
  for (int i = 0; i < n; i++) {
    const int buf = i & 1;
    if (i + 1 < n) { /* stage buf ^ 1 was last read before the previous iteration's closing barrier */
      sb_fetch<D, SB_BK>(sb_smem + (buf ^ 1) * TILE, kbase, ldkv, key_tile(i + 1) * SB_BK, T);
      xd_cp_async_commit();
      load_frags(nf, i + 1);
      xd_cp_async_wait<1>();
    } else {
      xd_cp_async_wait<0>();
    }
    __syncthreads();
    const uint16_t *Ks = sb_smem + buf * TILE;
#pragma unroll
    for (int kk = 0; kk < SB_BK / 16; kk++) {
      const uint32_t fa[4] = {f[kk].x, f[kk].y, f[kk].z, f[kk].w};
#pragma unroll
      for (int nd = 0; nd < D / 8; nd += 2) {
        uint32_t b0, b1, b2, b3;
        xd_ldsm_x4_trans(b0, b1, b2, b3, Ks + (kk * 16 + lrow) * LDS + nd * 8 + lcol);
        xd_mma16816(dqa[nd], fa, b0, b1);
        xd_mma16816(dqa[nd + 1], fa, b2, b3);
      }
    }
    __syncthreads();
    if (i + 1 < n)
#pragma unroll
      for (int kk = 0; kk < 4; kk++) f[kk] = nf[kk];
  }
  sb_dq_store<D>(a, dqa, h, b, r0, r1);
}

/* Prologue of the pipelined kernels, part 1: one warp per (b, t, h) row: D_t = bf16(dout_t) .
 * out_t (k_sb_rowdot's arithmetic, so both versions see the same D) and the bf16 copies of
 * dout and (q16 non-NULL) q. out is fp32, or bf16 when the forward's copy is given
 * (xd_cuda_swa_backward_pre: out is then exactly a bf16 value, so the products are the same). */
__device__ __forceinline__ float sb_ld(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float sb_ld(const uint16_t *p, size_t i) { return __uint_as_float((uint32_t)p[i] << 16); }
template <typename TO>
__global__ void k_sb_prep_q(float *Dt, uint16_t *o16, uint16_t *q16, const float *dout, const TO *out,
                            const float *q, size_t rows, int d) {
  const size_t row = (size_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= rows) return;
  float acc = 0.f;
  for (int i = lane; i < d; i += 32) {
    const __nv_bfloat16 ob = __float2bfloat16_rn(dout[row * d + i]);
    acc += __bfloat162float(ob) * sb_ld(out, row * d + i);
    o16[row * d + i] = __bfloat16_as_ushort(ob);
    if (q16) q16[row * d + i] = __bfloat16_as_ushort(__float2bfloat16_rn(q[row * d + i]));
  }
  acc = warp_sum(acc);
  if (lane == 0) Dt[row] = acc;
}

/* Part 2: k to bf16, v to the bf16 pair hi = bf16(v), lo = bf16(v - hi) (sb_stage_hilo's). */
__global__ void k_sb_prep_kv(uint16_t *k16, uint16_t *vh, uint16_t *vl, const float *k, const float *v, size_t n) {
  const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  k16[i] = __bfloat16_as_ushort(__float2bfloat16_rn(k[i]));
  const float x = v[i];
  const __nv_bfloat16 hb = __float2bfloat16_rn(x);
  vh[i] = __bfloat16_as_ushort(hb);
  vl[i] = __bfloat16_as_ushort(__float2bfloat16_rn(x - __bfloat162float(hb)));
}

/* The launch geometry sb_args carries: key / query tile counts, the sink-mode blocks, and
 * (v3, BQ = 64) the stored dS slots a query tile has: nwin window key tiles at most
 * (qt - jwin(qt) + 1 <= (W + 62) / 64 + 1), then one per sink block. */
static void sb_geometry(sb_args *x, int BQ) {
  x->nkb = xd_ceil_div(x->T, SB_BK);
  x->nqt = xd_ceil_div(x->T, BQ);
  x->sq_lo = x->W / BQ;
  const bool far = x->Sp > 0 && x->W < x->T; /* some query lies W or more past a sink */
  x->nsb = far ? xd_ceil_div(x->Sp, SB_BK) : 0;
  x->nc = far ? xd_ceil_div(x->nqt - x->sq_lo, SB_SINK_CHUNK) : 0;
  if (x->nsb == 0 || x->nc == 0) x->nsb = x->nc = 0;
  const int nwin = (int)(((long long)x->W + 62) / SB_BK + 1);
  x->nwin = nwin < x->nqt ? nwin : x->nqt;
  x->nslot = x->nwin + x->nsb;
}

/* ver: 1 = v1, 2 = pipelined, 3 = pipelined dK / dV storing dS + k_sb_dq_s (d <= 64 only;
 * sb_run passes 2 otherwise). */
template <int D>
static int sb_launch(xd_cuda_ctx *c, const sb_args &a, int ver, bool vlo, xd_err *e) {
  constexpr int BQ = D <= 64 ? 64 : 32;
  const bool pipelined = ver >= 2;
  constexpr size_t ROW = (D + 8) * sizeof(uint16_t);
  const size_t smem_kv = pipelined ? (3 * SB_BK + 4 * BQ) * ROW + 4 * BQ * sizeof(float)
                                   : (3 * SB_BK + 2 * BQ) * ROW + 2 * BQ * sizeof(float);
  const size_t smem_q = ver == 3 ? 2 * SB_BK * ROW : (size_t)(pipelined ? 8 : 5) * SB_BK * ROW;
  if (smem_kv > c->smem_optin || smem_q > c->smem_optin) return xd_errf(e, "swa_backward: d %d needs too much shared memory", D);
  void (*kdkv)(sb_args) = ver == 1 ? k_sb_dkv<D, BQ> : vlo ? k_sb_dkv_p<D, BQ, false, true> : k_sb_dkv_p<D, BQ, false, false>;
  void (*kdq)(sb_args) = ver == 1 ? k_sb_dq<D> : vlo ? k_sb_dq_p<D, true> : k_sb_dq_p<D, false>;
  if constexpr (BQ == 64)
    if (ver == 3) kdkv = vlo ? k_sb_dkv_p<D, BQ, true, true> : k_sb_dkv_p<D, BQ, true, false>, kdq = k_sb_dq_s<D>;
  XD_CU(cudaFuncSetAttribute(kdkv, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_kv));
  XD_CU(cudaFuncSetAttribute(kdq, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_q));
  sb_args x = a;
  sb_geometry(&x, BQ);
  x.hsplit = 1;
  if (ver == 3 && x.hpart) {
    /* Split the window-mode blocks by halves of the heads when that packs the grid into fewer
     * (half-length) waves: at the 1B shape 512 heavy blocks on 132 SMs x 3 take two full waves
     * (1.29 waves of work), 1024 half blocks three half waves. XD_SWA_BWD_SPLIT=0 / 1 forces. */
    int per_sm = 0;
    XD_CU(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kdkv, SB_THREADS, smem_kv));
    const long long slots = (long long)(per_sm > 0 ? per_sm : 1) * c->sm_count;
    const long long nw = (long long)x.nkb * a.G * a.B, ns = (long long)x.nsb * x.nc * a.G * a.B;
    const long long w1 = (nw + ns + slots - 1) / slots, w2 = (2 * nw + ns + slots - 1) / slots;
    const char *env = getenv("XD_SWA_BWD_SPLIT");
    const bool split = env && (env[0] == '0' || env[0] == '1') ? env[0] == '1' : w2 < 1.8 * w1; /* w2 half waves vs w1 */
    if (split) x.hsplit = 2;
  }
  const dim3 gkv(x.nkb * x.hsplit + x.nsb * x.nc, a.G, a.B);
  kdkv<<<gkv, SB_THREADS, smem_kv, c->stream>>>(x);
  XD_CU_LAUNCH("swa_backward dkv");
  if (x.hsplit > 1) {
    const size_t n4 = (size_t)a.B * a.T * a.G * D / 4;
    k_sb_half_sum<<<xd_ceil_div(n4, 256), 256, 0, c->stream>>>(x, D);
    XD_CU_LAUNCH("swa_backward half sum");
  }
  if (x.nc > 0) {
    const size_t n = (size_t)a.B * a.Sp * a.G * D;
    k_sb_sink_sum<<<xd_ceil_div(n, 256), 256, 0, c->stream>>>(x, D);
    XD_CU_LAUNCH("swa_backward sink sum");
  }
  const dim3 gq(xd_ceil_div(a.T, SB_BK), a.H, a.B);
  kdq<<<gq, SB_THREADS, smem_q, c->stream>>>(x);
  XD_CU_LAUNCH("swa_backward dq");
  return 0;
}

static size_t sb_align256(size_t n) { return (n + 255) & ~(size_t)255; }

/* The scratch of sb_run for version ver (after its d > 64 fallback to v2): D rows, the sink
 * partials (upper bound over BQ: the smaller query tile, 32), then (pipelined) the bf16 copies
 * of dout [rows][d] and, without pre (the forward's copies), of q [rows][d] and k, v hi, v lo
 * [B T G][d], then (v3) the dS tiles, then (v3 with an even group) the head-split halves, each
 * 256-byte aligned for cp.async. a: sb_geometry's. */
typedef struct {
  size_t f32, q16, kv16, ds, hpart, total;
} sb_scratch;
static sb_scratch sb_scratch_of(const swa_shape *sh, const sb_args *a, int ver, bool pre) {
  sb_scratch z;
  const int d = sh->d;
  const size_t rows = (size_t)sh->B * sh->T * sh->H, kv = (size_t)sh->B * sh->T * sh->G * d;
  const size_t nc_max = a->Sp > 0 ? xd_ceil_div(xd_ceil_div(sh->T, 32), SB_SINK_CHUNK) : 0;
  z.f32 = sb_align256((rows + 2 * nc_max * sh->B * sh->G * a->Sp * d) * sizeof(float));
  z.hpart = ver == 3 && (sh->H / sh->G) % 2 == 0 ? sb_align256(4 * kv * sizeof(float)) : 0;
  z.q16 = sb_align256(rows * d * sizeof(uint16_t)), z.kv16 = sb_align256(kv * sizeof(uint16_t));
  z.ds = ver == 3 ? (size_t)sh->B * sh->H * a->nqt * a->nslot * 512 * sizeof(uint4) : 0;
  z.total = z.f32 + (ver >= 2 ? (pre ? z.q16 : 2 * z.q16 + 3 * z.kv16) : 0) + z.ds + z.hpart;
  return z;
}

/* pre (NULL: none): the forward's bf16 copies of q, k, v and out, read in place of q, k, v, out
 * (which may then be NULL) and of the prologue's copies; the pipelined kernels only. With pre,
 * dP = dO V^T takes v as the single bf16 value the forward multiplied (no lo part): D_t is
 * then bf16(dout) . out with out the forward's bf16 output, so dP - D cancels between values
 * of the same bf16 forward (exactly where attention is one key, W = 1), and the lo part would
 * only add v - bf16(v) against a D that never saw it. */
static int sb_run(xd_cuda_ctx *c, float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                  const float *v, const float *out, const float *lse, const swa_shape *sh, int ver,
                  const xd_cuda_swa_bf16 *pre, xd_err *e) {
  XD_ARG(sh->B > 0 && sh->T > 0 && sh->H > 0 && sh->G > 0 && sh->H % sh->G == 0);
  XD_ARG(sh->d > 0 && sh->d <= SWA_BWD_MAXD && sh->W >= 1 && sh->S >= 0);
  XD_ARG(!pre || (ver >= 2 && pre->q && pre->k && pre->v && pre->out));
  const int d = sh->d;
  bool aligned = true;
  const void *ptrs[] = {dq, dk, dv, dout, q, k, v, out, pre ? pre->q : NULL, pre ? pre->k : NULL,
                        pre ? pre->v : NULL, pre ? pre->out : NULL};
  for (const void *p : ptrs) aligned = aligned && ((uintptr_t)p & 15) == 0;
  if (d % 16 != 0 || d > 128 || !aligned || sh->T > (1 << 30) / SB_BK) {
    if (pre) return xd_errf(e, "swa_backward: bf16 inputs need d a multiple of 16 up to 128 and 16-byte aligned buffers");
    return xd_cuda_swa_backward_det(c, dq, dk, dv, dout, q, k, v, out, lse, sh, e);
  }
  sb_args a;
  memset(&a, 0, sizeof a);
  a.q = q, a.k = k, a.v = v, a.out = out, a.dout = dout, a.lse = lse;
  a.dq = dq, a.dk = dk, a.dv = dv;
  a.B = sh->B, a.T = sh->T, a.H = sh->H, a.G = sh->G, a.W = sh->W, a.S = sh->S;
  a.Sp = sh->S < sh->T ? sh->S : sh->T;
  a.scale = (float)(1.0 / sqrt((double)d));
  a.scale_log2 = (float)(1.0 / sqrt((double)d) * 1.4426950408889634);
  if (ver == 3 && d > 64) ver = 2; /* dS fragments need the 64-query tiles of d <= 64 */
  const bool pipelined = ver >= 2;
  sb_geometry(&a, d <= 64 ? 64 : 32);
  const size_t rows = (size_t)sh->B * sh->T * sh->H, kv = (size_t)sh->B * sh->T * sh->G * d;
  const sb_scratch z = sb_scratch_of(sh, &a, ver, pre != NULL);
  const bool can_split = z.hpart > 0;
  const size_t f32_bytes = z.f32, q16_bytes = z.q16, kv16_bytes = z.kv16, ds_bytes = z.ds, need = z.total;
  if (need > c->swa_ws_bytes) {
    c->ws_gen++;
    if (c->swa_ws) XD_CU(cudaFree(c->swa_ws));
    c->swa_ws = NULL, c->swa_ws_bytes = 0;
    XD_CU(cudaMalloc(&c->swa_ws, need));
    c->swa_ws_bytes = need;
  }
  a.Dt = (float *)c->swa_ws;
  a.part = a.Dt + rows;
  if (pipelined) {
    char *p16 = (char *)c->swa_ws + f32_bytes; /* sb_scratch_of's order */
    a.o16 = (uint16_t *)p16;
    p16 += q16_bytes;
    if (!pre) {
      a.q16 = (uint16_t *)p16, a.k16 = (uint16_t *)(p16 + q16_bytes);
      a.vh16 = (uint16_t *)(p16 + q16_bytes + kv16_bytes), a.vl16 = (uint16_t *)(p16 + q16_bytes + 2 * kv16_bytes);
      p16 += q16_bytes + 3 * kv16_bytes;
    }
    if (ver == 3) a.ds = (uint4 *)p16;
    if (can_split) a.hpart = (float *)(p16 + ds_bytes);
    if (pre) { /* the kernels only read q16, k16, vh16: the forward's */
      a.q16 = const_cast<uint16_t *>(pre->q), a.k16 = const_cast<uint16_t *>(pre->k);
      a.vh16 = const_cast<uint16_t *>(pre->v);
      k_sb_prep_q<uint16_t><<<xd_ceil_div(rows, 8), 256, 0, c->stream>>>(a.Dt, a.o16, NULL, dout, pre->out, NULL, rows,
                                                                          d);
      XD_CU_LAUNCH("swa_backward prep dout");
    } else {
      k_sb_prep_q<float><<<xd_ceil_div(rows, 8), 256, 0, c->stream>>>(a.Dt, a.o16, a.q16, dout, out, q, rows, d);
      XD_CU_LAUNCH("swa_backward prep q");
      k_sb_prep_kv<<<xd_ceil_div(kv, 256), 256, 0, c->stream>>>(a.k16, a.vh16, a.vl16, k, v, kv);
      XD_CU_LAUNCH("swa_backward prep kv");
    }
  } else {
    k_sb_rowdot<<<xd_ceil_div(rows, 8), 256, 0, c->stream>>>(a.Dt, dout, out, rows, d);
    XD_CU_LAUNCH("swa_backward rowdot");
  }
  switch (d) {
    case 16: return sb_launch<16>(c, a, ver, !pre, e);
    case 32: return sb_launch<32>(c, a, ver, !pre, e);
    case 48: return sb_launch<48>(c, a, ver, !pre, e);
    case 64: return sb_launch<64>(c, a, ver, !pre, e);
    case 80: return sb_launch<80>(c, a, ver, !pre, e);
    case 96: return sb_launch<96>(c, a, ver, !pre, e);
    case 112: return sb_launch<112>(c, a, ver, !pre, e);
    default: return sb_launch<128>(c, a, ver, !pre, e);
  }
}

extern "C" size_t xd_cuda_swa_backward_scratch_bytes(const swa_shape *sh, int pre) {
  if (sh->B < 1 || sh->T < 1 || sh->H < 1 || sh->G < 1 || sh->d % 16 != 0 || sh->d > 128 || sh->T > (1 << 30) / SB_BK)
    return 0; /* the fixed-order fallback: no context scratch (its B T H floats of D_t are pooled) */
  sb_args a;
  memset(&a, 0, sizeof a);
  a.B = sh->B, a.T = sh->T, a.H = sh->H, a.G = sh->G, a.W = sh->W, a.S = sh->S;
  a.Sp = sh->S < sh->T ? sh->S : sh->T;
  const int ver = sh->d > 64 ? 2 : 3;
  sb_geometry(&a, sh->d <= 64 ? 64 : 32);
  return sb_scratch_of(sh, &a, ver, pre != 0).total;
}

/* XD_SWA_BWD=1 or 2 (read at every call) runs v1 / v2 instead: to time the stage II step with
 * each version in one process (bench_gpu_train). v1 and v2 give the same bits; v3 the same dk,
 * dv and a dq summed in another grouping. */
extern "C" int xd_cuda_swa_backward(xd_cuda_ctx *c, float *dq, float *dk, float *dv, const float *dout,
                                    const float *q, const float *k, const float *v, const float *out,
                                    const float *lse, const swa_shape *sh, xd_err *e) {
  const char *ver = getenv("XD_SWA_BWD");
  const int which = ver && (ver[0] == '1' || ver[0] == '2') && ver[1] == 0 ? ver[0] - '0' : 3;
  return sb_run(c, dq, dk, dv, dout, q, k, v, out, lse, sh, which, NULL, e);
}

extern "C" int xd_cuda_swa_backward_v2(xd_cuda_ctx *c, float *dq, float *dk, float *dv, const float *dout,
                                       const float *q, const float *k, const float *v, const float *out,
                                       const float *lse, const swa_shape *sh, xd_err *e) {
  return sb_run(c, dq, dk, dv, dout, q, k, v, out, lse, sh, 2, NULL, e);
}

extern "C" int xd_cuda_swa_backward_v1(xd_cuda_ctx *c, float *dq, float *dk, float *dv, const float *dout,
                                       const float *q, const float *k, const float *v, const float *out,
                                       const float *lse, const swa_shape *sh, xd_err *e) {
  return sb_run(c, dq, dk, dv, dout, q, k, v, out, lse, sh, 1, NULL, e);
}

/* The default version reading the forward's bf16 copies (cuda_ops.h). */
extern "C" int xd_cuda_swa_backward_pre(xd_cuda_ctx *c, float *dq, float *dk, float *dv, const float *dout,
                                        const xd_cuda_swa_bf16 *pre, const float *lse, const swa_shape *sh,
                                        xd_err *e) {
  XD_ARG(pre != NULL);
  return sb_run(c, dq, dk, dv, dout, NULL, NULL, NULL, NULL, lse, sh, 3, pre, e);
}
