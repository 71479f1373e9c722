/* Sliding-window+sinks attention backward on the GPU (the twin of swa_backward).
 *
 * xd_cuda_swa_backward_ref: the first version, fp32, kept for comparison: one warp per (b, t, h) query row; the lanes split
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

__global__ void k_swa_backward_ref(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
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

extern "C" int xd_cuda_swa_backward_ref(xd_cuda_ctx *c, float *dq, float *dk, float *dv, const float *dout,
                                    const float *q, const float *k, const float *v, const float *out,
                                    const float *lse, const swa_shape *sh, xd_err *e) {
  XD_ARG(sh->B > 0 && sh->T > 0 && sh->H > 0 && sh->G > 0 && sh->H % sh->G == 0);
  XD_ARG(sh->d > 0 && sh->d <= SWA_BWD_MAXD && sh->W >= 1 && sh->S >= 0);
  const size_t rows = (size_t)sh->B * sh->T * sh->H;
  const int warps = 8;
  k_swa_backward_ref<<<xd_ceil_div(rows, warps), warps * 32, 0, c->stream>>>(dq, dk, dv, dout, q, k, v, out, lse, *sh,
                                                                          (float)(1.0 / sqrt((double)sh->d)));
  XD_CU_LAUNCH("swa_backward_ref");
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
 * Fast path: d a multiple of 16 up to 128, 16-byte aligned buffers; else the reference. */
#include "cuda_mma.cuh"

#define SB_BK 64          /* keys per dK/dV block, queries per dQ block (4 warps x 16) */
#define SB_THREADS 128
#define SB_SINK_CHUNK 8   /* query tiles per sink-mode block */

struct sb_args {
  const float *q, *k, *v, *out, *dout, *lse;
  float *dq, *dk, *dv;
  float *Dt;   /* [B,T,H] */
  float *part; /* sink partials: dK [nc][B][G][Sp][d], then dV the same */
  int B, T, H, G, W, S;
  int nkb;        /* window-mode key blocks */
  int nsb, nc;    /* sink-mode key blocks and query chunks (nsb * nc blocks, first in the grid) */
  int sq_lo, nqt; /* first query tile of the sink range, query tiles in all */
  int Sp;         /* sink rows kept: min(S, T) */
  float scale, scale_log2;
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

template <int D, int BQ>
__global__ void __launch_bounds__(SB_THREADS) k_sb_dkv(sb_args a) {
  constexpr int LDS = D + 8;
  extern __shared__ __align__(16) uint16_t sb_smem[];
  uint16_t *Ks = sb_smem, *Vs = Ks + SB_BK * LDS, *Vl = Vs + SB_BK * LDS, *Qs = Vl + SB_BK * LDS, *Os = Qs + BQ * LDS;
  float *Ls = reinterpret_cast<float *>(Os + BQ * LDS), *Ds = Ls + BQ;
  const int T = a.T, H = a.H, G = a.G, Hg = H / G;
  const int g = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
  const int nsink_blocks = a.nsb * a.nc;
  const bool sink = (int)blockIdx.x < nsink_blocks;
  int k0, qt_lo, qt_hi, chunk = 0;
  if (sink) {
    const int kb = blockIdx.x % a.nsb;
    chunk = blockIdx.x / a.nsb;
    k0 = kb * SB_BK;
    qt_lo = a.sq_lo + chunk * SB_SINK_CHUNK;
    qt_hi = min(qt_lo + SB_SINK_CHUNK, a.nqt) - 1;
  } else {
    const int kb = blockIdx.x - nsink_blocks;
    k0 = kb * SB_BK;
    const int k1 = min(T - 1, k0 + SB_BK - 1);
    qt_lo = k0 / BQ;
    qt_hi = min(T - 1, k1 + a.W - 1) / BQ;
  }
  const int kw0 = k0 + warp * 16;          /* this warp's first key */
  const int s0 = kw0 + gq, s1 = s0 + 8;    /* this lane's two key rows */
  /* warp-uniform: does this warp hold any key with work in this mode? */
  const bool warp_live = sink ? kw0 < a.Sp : kw0 < T;

  const size_t ldkv = (size_t)G * D, ldq = (size_t)H * D;
  sb_stage<D, SB_BK>(Ks, a.k + (size_t)b * T * ldkv + (size_t)g * D, ldkv, k0, T);
  sb_stage_hilo<D, SB_BK>(Vs, Vl, a.v + (size_t)b * T * ldkv + (size_t)g * D, ldkv, k0, T);

  float dka[D / 8][4], dva[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; i++)
#pragma unroll
    for (int e2 = 0; e2 < 4; e2++) dka[i][e2] = dva[i][e2] = 0.f;
  const float LOG2E = 1.4426950408889634f;
  const int lrow = (lane & 7) + ((lane >> 3) & 1) * 8, lcol = (lane >> 4) * 8;

  for (int hg = 0; hg < Hg; hg++) {
    const int h = g * Hg + hg;
    for (int qt = qt_lo; qt <= qt_hi; qt++) {
      const int q0 = qt * BQ;
      __syncthreads(); /* the previous tile's readers are done */
      sb_stage<D, BQ>(Qs, a.q + (size_t)b * T * ldq + (size_t)h * D, ldq, q0, T);
      sb_stage<D, BQ>(Os, a.dout + (size_t)b * T * ldq + (size_t)h * D, ldq, q0, T);
      for (int r = threadIdx.x; r < BQ; r += SB_THREADS) {
        const bool ok = q0 + r < T;
        const size_t ri = ((size_t)b * T + (ok ? q0 + r : 0)) * H + h;
        Ls[r] = ok ? a.lse[ri] * LOG2E : 0.f;
        Ds[r] = ok ? a.Dt[ri] : 0.f;
      }
      __syncthreads();
      if (!warp_live) continue;
      /* warp-uniform skip of tiles that none of the warp's keys see */
      if (!sink && (q0 + BQ - 1 < kw0 || q0 - (kw0 + 15) >= a.W)) continue;
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
        xd_frag_a(vl, Vl, LDS, warp * 16, kk * 16, gq, tq);
#pragma unroll
        for (int nb = 0; nb < BQ / 8; nb++) {
          const uint16_t *qr = Qs + (nb * 8 + gq) * LDS + kk * 16 + 2 * tq;
          const uint16_t *orr = Os + (nb * 8 + gq) * LDS + kk * 16 + 2 * tq;
          xd_mma16816(st[nb], ka, xd_ld32s(qr), xd_ld32s(qr + 8));
          const uint32_t o0 = xd_ld32s(orr), o1 = xd_ld32s(orr + 8);
          xd_mma16816(dp[nb], va, o0, o1);
          xd_mma16816(dp[nb], vl, o0, o1);
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
  }
  if (!warp_live) return;
  if (sink) {
    const size_t plane = (size_t)a.nc * a.B * G * a.Sp * D;
    float *pk = a.part + (((size_t)chunk * a.B + b) * G + g) * a.Sp * D, *pv = pk + plane;
#pragma unroll
    for (int nd = 0; nd < D / 8; nd++) {
      const int c = nd * 8 + 2 * tq;
      if (s0 < a.Sp) {
        *reinterpret_cast<float2 *>(pk + (size_t)s0 * D + c) = make_float2(a.scale * dka[nd][0], a.scale * dka[nd][1]);
        *reinterpret_cast<float2 *>(pv + (size_t)s0 * D + c) = make_float2(dva[nd][0], dva[nd][1]);
      }
      if (s1 < a.Sp) {
        *reinterpret_cast<float2 *>(pk + (size_t)s1 * D + c) = make_float2(a.scale * dka[nd][2], a.scale * dka[nd][3]);
        *reinterpret_cast<float2 *>(pv + (size_t)s1 * D + c) = make_float2(dva[nd][2], dva[nd][3]);
      }
    }
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

template <int D>
__global__ void __launch_bounds__(SB_THREADS) k_sb_dq(sb_args a) {
  constexpr int LDS = D + 8;
  extern __shared__ __align__(16) uint16_t sb_smem[];
  uint16_t *Qs = sb_smem, *Os = Qs + SB_BK * LDS, *Ks = Os + SB_BK * LDS, *Vs = Ks + SB_BK * LDS, *Vl = Vs + SB_BK * LDS;
  const int T = a.T, H = a.H, G = a.G;
  const int qb = gridDim.x - 1 - blockIdx.x; /* longest (latest) query blocks first */
  const int h = blockIdx.y, b = blockIdx.z, g = h / (H / G);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, gq = lane >> 2, tq = lane & 3;
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
  const int lrow = (lane & 7) + ((lane >> 3) & 1) * 8, lcol = (lane >> 4) * 8;
  const float *kbase = a.k + (size_t)b * T * ldkv + (size_t)g * D, *vbase = a.v + (size_t)b * T * ldkv + (size_t)g * D;

  const int j_max = q_hi / SB_BK;
  const int j_win = max(0, q_lo - a.W + 1) / SB_BK;
  int j = (0 < j_win && a.S <= 0) ? j_win : 0;
  while (j >= 0) {
    const int k0 = j * SB_BK;
    __syncthreads();
    sb_stage<D, SB_BK>(Ks, kbase, ldkv, k0, T);
    sb_stage_hilo<D, SB_BK>(Vs, Vl, vbase, ldkv, k0, T);
    __syncthreads();
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
        xd_mma16816(dp[nb], oa, xd_ld32s(vlr), xd_ld32s(vlr + 8));
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
    /* next key tile: sinks, then the window (attention.cu's att_next_tile) */
    j++;
    if (j < j_win && j * SB_BK >= a.S) j = j_win;
    if (j > j_max) j = -1;
  }
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
static int sb_launch(xd_cuda_ctx *c, const sb_args &a, xd_err *e) {
  constexpr int BQ = D <= 64 ? 64 : 32;
  const size_t smem_kv = (size_t)(3 * SB_BK + 2 * BQ) * (D + 8) * sizeof(uint16_t) + 2 * BQ * sizeof(float);
  const size_t smem_q = (size_t)5 * SB_BK * (D + 8) * sizeof(uint16_t);
  if (smem_kv > c->smem_optin || smem_q > c->smem_optin) return xd_errf(e, "swa_backward: d %d needs too much shared memory", D);
  XD_CU(cudaFuncSetAttribute(k_sb_dkv<D, BQ>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_kv));
  XD_CU(cudaFuncSetAttribute(k_sb_dq<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem_q));
  sb_args x = a;
  x.nkb = xd_ceil_div(a.T, SB_BK);
  x.nqt = xd_ceil_div(a.T, BQ);
  x.sq_lo = a.W / BQ;
  const bool far = a.Sp > 0 && a.W < a.T; /* some query lies W or more past a sink */
  x.nsb = far ? xd_ceil_div(a.Sp, SB_BK) : 0;
  x.nc = far ? xd_ceil_div(x.nqt - x.sq_lo, SB_SINK_CHUNK) : 0;
  if (x.nsb == 0 || x.nc == 0) x.nsb = x.nc = 0;
  const dim3 gkv(x.nkb + x.nsb * x.nc, a.G, a.B);
  k_sb_dkv<D, BQ><<<gkv, SB_THREADS, smem_kv, c->stream>>>(x);
  XD_CU_LAUNCH("swa_backward dkv");
  if (x.nc > 0) {
    const size_t n = (size_t)a.B * a.Sp * a.G * D;
    k_sb_sink_sum<<<xd_ceil_div(n, 256), 256, 0, c->stream>>>(x, D);
    XD_CU_LAUNCH("swa_backward sink sum");
  }
  const dim3 gq(xd_ceil_div(a.T, SB_BK), a.H, a.B);
  k_sb_dq<D><<<gq, SB_THREADS, smem_q, c->stream>>>(x);
  XD_CU_LAUNCH("swa_backward dq");
  return 0;
}

extern "C" int xd_cuda_swa_backward(xd_cuda_ctx *c, float *dq, float *dk, float *dv, const float *dout,
                                    const float *q, const float *k, const float *v, const float *out,
                                    const float *lse, const swa_shape *sh, xd_err *e) {
  XD_ARG(sh->B > 0 && sh->T > 0 && sh->H > 0 && sh->G > 0 && sh->H % sh->G == 0);
  XD_ARG(sh->d > 0 && sh->d <= SWA_BWD_MAXD && sh->W >= 1 && sh->S >= 0);
  const int d = sh->d;
  bool aligned = true;
  const void *ptrs[] = {dq, dk, dv, dout, q, k, v, out};
  for (const void *p : ptrs) aligned = aligned && ((uintptr_t)p & 15) == 0;
  if (d % 16 != 0 || d > 128 || !aligned || sh->T > (1 << 30) / SB_BK)
    return xd_cuda_swa_backward_ref(c, dq, dk, dv, dout, q, k, v, out, lse, sh, e);
  sb_args a;
  memset(&a, 0, sizeof a);
  a.q = q, a.k = k, a.v = v, a.out = out, a.dout = dout, a.lse = lse;
  a.dq = dq, a.dk = dk, a.dv = dv;
  a.B = sh->B, a.T = sh->T, a.H = sh->H, a.G = sh->G, a.W = sh->W, a.S = sh->S;
  a.Sp = sh->S < sh->T ? sh->S : sh->T;
  a.scale = (float)(1.0 / sqrt((double)d));
  a.scale_log2 = (float)(1.0 / sqrt((double)d) * 1.4426950408889634);
  /* scratch: D rows, then the sink partials (upper bound over BQ: the smaller query tile, 32) */
  const size_t rows = (size_t)sh->B * sh->T * sh->H;
  const size_t nc_max = a.Sp > 0 ? xd_ceil_div(xd_ceil_div(sh->T, 32), SB_SINK_CHUNK) : 0;
  const size_t need = (rows + 2 * nc_max * sh->B * sh->G * a.Sp * d) * sizeof(float);
  if (need > c->swa_ws_bytes) {
    if (c->swa_ws) XD_CU(cudaFree(c->swa_ws));
    c->swa_ws = NULL, c->swa_ws_bytes = 0;
    XD_CU(cudaMalloc(&c->swa_ws, need));
    c->swa_ws_bytes = need;
  }
  a.Dt = (float *)c->swa_ws;
  a.part = a.Dt + rows;
  k_sb_rowdot<<<xd_ceil_div(rows, 8), 256, 0, c->stream>>>(a.Dt, dout, out, rows, d);
  XD_CU_LAUNCH("swa_backward rowdot");
  switch (d) {
    case 16: return sb_launch<16>(c, a, e);
    case 32: return sb_launch<32>(c, a, e);
    case 48: return sb_launch<48>(c, a, e);
    case 64: return sb_launch<64>(c, a, e);
    case 80: return sb_launch<80>(c, a, e);
    case 96: return sb_launch<96>(c, a, e);
    case 112: return sb_launch<112>(c, a, e);
    default: return sb_launch<128>(c, a, e);
  }
}
