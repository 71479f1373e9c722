/* mLSTM chunkwise forward on the tensor cores (issue #8): the same function as
 * xd_cuda_mlstm_chunkwise_forward (docs/mlstm.md section 2), in two phases so that the work is
 * parallel over (b, h, chunk) instead of sequential over the chunks of each head.
 *
 *   1. k_tc_local   one block per (chunk c, head bh): the chunk's own contribution to the state
 *                   with a chunk-local stabiliser, Cl = K^T diag(w~) V, nl = K^T w~, where
 *                   w~_k = exp(b_L - b_k + i_k - ml) and ml = max_k (b_L - b_k + i_k); also b_L
 *                   (the chunk's sum of log sigmoid f) and ml, in double. Cl goes straight
 *                   into the boundary buffer slot of chunk c (C [BH, NC, P, D], n [BH, NC, P]).
 *   2. k_tc_mscan   one warp per head, sequential over chunks (scalars only):
 *                   m_end = max(b_L + m_prev, ml), rounded to float at each boundary as the
 *                   CPU does; it leaves the exponents of gC = exp(b_L + m_prev - m_end) and
 *                   sC = exp(ml - m_end) in place of b_L and ml.
 *   3. k_tc_cscan   per (head, 4 state elements), sequential over chunks, in place:
 *                   slot c <- C_start(c); C_start(c+1) = gC C_start(c) + sC Cl(c). Same for n.
 *                   This is exactly the CPU's C_end = g_last C + K^T diag(w) V, because
 *                   w_k = w~_k exp(ml - m_end).
 *   4. k_tc_out     one block per (chunk, head): the outputs of the chunk from its start state,
 *                   S~ = (s Q K^T) o D (mma), num = g s Q C + S~ V (mma), den = g s q.n + S~ 1.
 *
 * Precision: q, k, v are rounded to bf16 for the MMAs (fp32 accumulation); S~ is rounded to
 * bf16 as the A operand of S~ V (as in flash attention); w~ V is rounded to bf16 in phase 1;
 * the state C enters Q C as a bf16 hi + lo pair (two MMAs, ~16 bits of mantissa), so the
 * carried state costs no precision beyond fp32 accumulation. Gates, stabiliser, normaliser,
 * n, m and all states in memory are fp32 (the gate scalars double, as the fp32 kernel).
 * Fragment layouts of m16n8k16 as in attention.cu (g = lane/4, t = lane%4):
 *   A 16x16: a0 (g, 2t..2t+1) a1 (g+8, 2t..) a2 (g, 2t+8..) a3 (g+8, 2t+8..)
 *   B 16x8 : b0 (k 2t..2t+1, n g) b1 (k 2t+8.., n g)
 *   C 16x8 : c0,c1 (g, 2t..2t+1) c2,c3 (g+8, 2t..2t+1)
 * Shapes: P = D = 64, chunk 64 (the student's); anything else is refused. */
#include <math.h>
#include "cuda_mma.cuh"

#define TC_L 64   /* chunk */
#define TC_P 64   /* feature dim = value dim */
#define TC_LD 72  /* bf16 row stride of the shared tiles (+8: conflict-free fragment loads) */
#define TC_THREADS 128

__device__ __forceinline__ double tc_logsig(double f) { return f >= 0 ? -log1p(exp(-f)) : f - log1p(exp(f)); }

struct tc_args {
  int B, T, H, G, NC, norm;
  float eps, s;
  const float *qf, *kf, *v, *ig, *fg;
  const float *C0, *n0, *m0;
  float *C1, *n1, *m1;
  float *h;
  float *bC, *bn, *bm;   /* boundary buffer parts: C [BH,NC,P,D], n [BH,NC,P], m [BH,NC] */
  double *bL, *ml;       /* [BH, NC] */
};

/* ---- phase 1: chunk-local state contributions -------------------------------------------------- */
__global__ void __launch_bounds__(TC_THREADS) k_tc_local(tc_args a) {
  __shared__ __align__(16) uint16_t KT[TC_P * TC_LD]; /* [p][j] */
  __shared__ __align__(16) uint16_t VT[TC_P * TC_LD]; /* [d][j], w~_j v_j */
  __shared__ double ld[TC_L], id[TC_L];
  __shared__ float w[TC_L];
  __shared__ double mls;
  const int c = blockIdx.x, bh = blockIdx.y, b = bh / a.H, hh = bh % a.H, g = hh / (a.H / a.G);
  const int t0 = c * TC_L, len = min(TC_L, a.T - t0), tid = threadIdx.x;
  const size_t ci = (size_t)bh * a.NC + c;
  for (int j = tid; j < TC_L; j += TC_THREADS) {
    if (j < len) {
      const size_t o = ((size_t)b * a.T + t0 + j) * a.H + hh;
      ld[j] = tc_logsig((double)a.fg[o]);
      id[j] = (double)a.ig[o];
    }
  }
  __syncthreads();
  if (tid == 0) {
    /* b_j in place of l_j; ml = b_L + max_k (i_k - b_k) */
    double cum = 0, mx = -INFINITY;
    for (int j = 0; j < len; j++) {
      cum += ld[j];
      ld[j] = cum;
      mx = fmax(mx, id[j] - cum);
    }
    a.bL[ci] = cum;
    a.ml[ci] = cum + mx;
    mls = cum + mx;
  }
  __syncthreads();
  {
    const double bl = ld[len - 1], m_loc = mls;
    for (int j = tid; j < TC_L; j += TC_THREADS) w[j] = j < len ? expf((float)(bl - ld[j] + id[j] - m_loc)) : 0.f;
  }
  __syncthreads();
  /* Transposed bf16 tiles; rows past len are zero. */
  const float *kb = a.kf + ((size_t)b * a.T + t0) * a.G * TC_P + (size_t)g * TC_P;
  const float *vb = a.v + ((size_t)b * a.T + t0) * a.G * TC_P + (size_t)g * TC_P;
  for (int i = tid; i < TC_L * TC_P / 4; i += TC_THREADS) {
    const int j = i / (TC_P / 4), p = (i % (TC_P / 4)) * 4;
    float4 kv = make_float4(0.f, 0.f, 0.f, 0.f), vv = kv;
    if (j < len) {
      kv = *reinterpret_cast<const float4 *>(kb + (size_t)j * a.G * TC_P + p);
      vv = *reinterpret_cast<const float4 *>(vb + (size_t)j * a.G * TC_P + p);
    }
    const float wj = w[j];
    KT[(p + 0) * TC_LD + j] = xd_f2bf(kv.x), KT[(p + 1) * TC_LD + j] = xd_f2bf(kv.y);
    KT[(p + 2) * TC_LD + j] = xd_f2bf(kv.z), KT[(p + 3) * TC_LD + j] = xd_f2bf(kv.w);
    VT[(p + 0) * TC_LD + j] = xd_f2bf(wj * vv.x), VT[(p + 1) * TC_LD + j] = xd_f2bf(wj * vv.y);
    VT[(p + 2) * TC_LD + j] = xd_f2bf(wj * vv.z), VT[(p + 3) * TC_LD + j] = xd_f2bf(wj * vv.w);
  }
  __syncthreads();
  if (tid < TC_P) {
    float acc = 0.f;
    for (int j = 0; j < len; j++) acc += w[j] * xd_bf2f(KT[tid * TC_LD + j]);
    a.bn[ci * TC_P + tid] = acc;
  }
  const int warp = tid >> 5, lane = tid & 31, gq = lane >> 2, tq = lane & 3;
  float acc[TC_P / 8][4];
#pragma unroll
  for (int nb = 0; nb < TC_P / 8; nb++) acc[nb][0] = acc[nb][1] = acc[nb][2] = acc[nb][3] = 0.f;
  const int pr = warp * 16 + gq;
#pragma unroll
  for (int kk = 0; kk < TC_L / 16; kk++) {
    uint32_t fa[4];
    fa[0] = xd_ld32s(KT + pr * TC_LD + kk * 16 + 2 * tq);
    fa[1] = xd_ld32s(KT + (pr + 8) * TC_LD + kk * 16 + 2 * tq);
    fa[2] = xd_ld32s(KT + pr * TC_LD + kk * 16 + 8 + 2 * tq);
    fa[3] = xd_ld32s(KT + (pr + 8) * TC_LD + kk * 16 + 8 + 2 * tq);
#pragma unroll
    for (int nb = 0; nb < TC_P / 8; nb++) {
      const uint32_t b0 = xd_ld32s(VT + (nb * 8 + gq) * TC_LD + kk * 16 + 2 * tq);
      const uint32_t b1 = xd_ld32s(VT + (nb * 8 + gq) * TC_LD + kk * 16 + 8 + 2 * tq);
      xd_mma16816(acc[nb], fa, b0, b1);
    }
  }
  float *Cl = a.bC + ci * TC_P * TC_P;
#pragma unroll
  for (int nb = 0; nb < TC_P / 8; nb++) {
    const int d = nb * 8 + 2 * tq;
    *reinterpret_cast<float2 *>(Cl + pr * TC_P + d) = make_float2(acc[nb][0], acc[nb][1]);
    *reinterpret_cast<float2 *>(Cl + (pr + 8) * TC_P + d) = make_float2(acc[nb][2], acc[nb][3]);
  }
}

/* ---- phase 2a: stabiliser scan over chunks (one warp per head) ------------------------------ */
/* Only the m chain is sequential; the exponentials of gC and sC are taken in parallel by
 * k_tc_cscan, which gets their (double) exponents in place of b_L and ml. The warp stages a tile
 * of the head's b_L and ml in shared memory with parallel loads, lane 0 runs the chain over it
 * (shared-memory latency per chunk instead of a dependent global load), the warp writes the
 * results back: the same operations in the same order as one thread over global memory. */
#define TC_MSCAN_TILE 256
#define TC_MSCAN_WARPS 4
__global__ void __launch_bounds__(32 * TC_MSCAN_WARPS) k_tc_mscan(tc_args a, int BH) {
  __shared__ double sbl[TC_MSCAN_WARPS][TC_MSCAN_TILE], sml[TC_MSCAN_WARPS][TC_MSCAN_TILE];
  __shared__ float sbm[TC_MSCAN_WARPS][TC_MSCAN_TILE];
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31, bh = blockIdx.x * TC_MSCAN_WARPS + w;
  if (bh >= BH) return; /* whole warps; only __syncwarp below */
  double m = a.m0 ? (double)a.m0[bh] : 0.0;
  const size_t o = (size_t)bh * a.NC;
  for (int c0 = 0; c0 < a.NC; c0 += TC_MSCAN_TILE) {
    const int n = min(TC_MSCAN_TILE, a.NC - c0);
    for (int i = lane; i < n; i += 32) sbl[w][i] = a.bL[o + c0 + i], sml[w][i] = a.ml[o + c0 + i];
    __syncwarp();
    if (lane == 0)
      for (int i = 0; i < n; i++) {
        sbm[w][i] = (float)m;
        const double bl = sbl[w][i], ml = sml[w][i], f = bl + m;
        const double mn = f >= ml ? f : ml; /* tie -> forget branch, as the CPU */
        sbl[w][i] = f - mn;                 /* log gC = b_L + m_prev - m_end */
        sml[w][i] = ml - mn;                /* log sC = ml - m_end */
        m = (double)(float)mn;              /* the boundary m in state precision, as the CPU */
      }
    __syncwarp();
    for (int i = lane; i < n; i += 32)
      a.bm[o + c0 + i] = sbm[w][i], a.bL[o + c0 + i] = sbl[w][i], a.ml[o + c0 + i] = sml[w][i];
    __syncwarp();
  }
  if (lane == 0 && a.m1) a.m1[bh] = (float)m;
}

/* ---- phase 2b: C and n scan over chunks, in place in the boundary buffer ------------------------- */
#define TC_SCAN_U 8
__global__ void __launch_bounds__(128) k_tc_cscan(tc_args a) {
  const int bh = blockIdx.y, e4 = blockIdx.x * blockDim.x + threadIdx.x;
  const int PD4 = TC_P * TC_P / 4, N4 = PD4 + TC_P / 4;
  if (e4 >= N4) return;
  const size_t NC = (size_t)a.NC;
  float *base;
  size_t stride;
  const float *src0;
  float *dst1;
  if (e4 < PD4) {
    stride = (size_t)TC_P * TC_P;
    base = a.bC + (size_t)bh * NC * stride + 4 * (size_t)e4;
    src0 = a.C0 ? a.C0 + (size_t)bh * stride + 4 * (size_t)e4 : NULL;
    dst1 = a.C1 ? a.C1 + (size_t)bh * stride + 4 * (size_t)e4 : NULL;
  } else {
    const int q = e4 - PD4;
    stride = TC_P;
    base = a.bn + (size_t)bh * NC * stride + 4 * (size_t)q;
    src0 = a.n0 ? a.n0 + (size_t)bh * TC_P + 4 * q : NULL;
    dst1 = a.n1 ? a.n1 + (size_t)bh * TC_P + 4 * q : NULL;
  }
  float4 cur = src0 ? *reinterpret_cast<const float4 *>(src0) : make_float4(0.f, 0.f, 0.f, 0.f);
  const double *lgC = a.bL + (size_t)bh * NC, *lsC = a.ml + (size_t)bh * NC;
  for (size_t c0 = 0; c0 < NC; c0 += TC_SCAN_U) {
    float4 loc[TC_SCAN_U];
    float gg[TC_SCAN_U], ss[TC_SCAN_U];
#pragma unroll
    for (int u = 0; u < TC_SCAN_U; u++) {
      if (c0 + u < NC) {
        loc[u] = *reinterpret_cast<const float4 *>(base + (c0 + u) * stride);
        gg[u] = expf((float)lgC[c0 + u]), ss[u] = expf((float)lsC[c0 + u]);
      }
    }
#pragma unroll
    for (int u = 0; u < TC_SCAN_U; u++) {
      if (c0 + u < NC) {
        *reinterpret_cast<float4 *>(base + (c0 + u) * stride) = cur;
        cur.x = gg[u] * cur.x + ss[u] * loc[u].x;
        cur.y = gg[u] * cur.y + ss[u] * loc[u].y;
        cur.z = gg[u] * cur.z + ss[u] * loc[u].z;
        cur.w = gg[u] * cur.w + ss[u] * loc[u].w;
      }
    }
  }
  if (dst1) *reinterpret_cast<float4 *>(dst1) = cur;
}

/* ---- phase 3: outputs of every chunk from its start state ---------------------------------------- */
struct tc_out_smem {
  uint16_t Q[TC_L * TC_LD], K[TC_L * TC_LD], V[TC_L * TC_LD], Ch[TC_P * TC_LD], Cl[TC_P * TC_LD];
  double ld[TC_L], id[TC_L], rb[TC_L], cb[TC_L];
  float n[TC_P], gs[TC_L], qn[TC_L], mf[TC_L];
};

__global__ void __launch_bounds__(TC_THREADS) k_tc_out(tc_args a) {
  extern __shared__ __align__(16) unsigned char tc_smem_raw[];
  tc_out_smem &sm = *reinterpret_cast<tc_out_smem *>(tc_smem_raw);
  const int c = blockIdx.x, bh = blockIdx.y, b = bh / a.H, hh = bh % a.H, g = hh / (a.H / a.G);
  const int t0 = c * TC_L, len = min(TC_L, a.T - t0), tid = threadIdx.x;
  const size_t ci = (size_t)bh * a.NC + c;
  const double m_prev = (double)a.bm[ci];
  for (int j = tid; j < TC_L; j += TC_THREADS) {
    if (j < len) {
      const size_t o = ((size_t)b * a.T + t0 + j) * a.H + hh;
      sm.ld[j] = tc_logsig((double)a.fg[o]);
      sm.id[j] = (double)a.ig[o];
    }
  }
  /* Tiles: Q (this head), K, V (its KV head), bf16 row-major [token][dim]; C_start as hi + lo. */
  const size_t tok = (size_t)b * a.T + t0;
  const float *qb = a.qf + (tok * a.H + hh) * TC_P;
  const float *kb = a.kf + (tok * a.G + g) * TC_P, *vb = a.v + (tok * a.G + g) * TC_P;
  const float *Cs = a.bC + ci * TC_P * TC_P;
  for (int i = tid; i < TC_L * TC_P / 4; i += TC_THREADS) {
    const int j = i / (TC_P / 4), p = (i % (TC_P / 4)) * 4;
    float4 qv = make_float4(0.f, 0.f, 0.f, 0.f), kv = qv, vv = qv;
    if (j < len) {
      qv = *reinterpret_cast<const float4 *>(qb + (size_t)j * a.H * TC_P + p);
      kv = *reinterpret_cast<const float4 *>(kb + (size_t)j * a.G * TC_P + p);
      vv = *reinterpret_cast<const float4 *>(vb + (size_t)j * a.G * TC_P + p);
    }
    const float4 cv = *reinterpret_cast<const float4 *>(Cs + (size_t)j * TC_P + p);
    uint2 u;
    u.x = xd_pack_bf16x2(qv.x, qv.y), u.y = xd_pack_bf16x2(qv.z, qv.w);
    *reinterpret_cast<uint2 *>(sm.Q + j * TC_LD + p) = u;
    u.x = xd_pack_bf16x2(kv.x, kv.y), u.y = xd_pack_bf16x2(kv.z, kv.w);
    *reinterpret_cast<uint2 *>(sm.K + j * TC_LD + p) = u;
    u.x = xd_pack_bf16x2(vv.x, vv.y), u.y = xd_pack_bf16x2(vv.z, vv.w);
    *reinterpret_cast<uint2 *>(sm.V + j * TC_LD + p) = u;
    /* hi = bf16(C), lo = bf16(C - hi) */
    const __nv_bfloat162 h01 = __floats2bfloat162_rn(cv.x, cv.y), h23 = __floats2bfloat162_rn(cv.z, cv.w);
    const float2 f01 = __bfloat1622float2(h01), f23 = __bfloat1622float2(h23);
    u.x = *reinterpret_cast<const uint32_t *>(&h01), u.y = *reinterpret_cast<const uint32_t *>(&h23);
    *reinterpret_cast<uint2 *>(sm.Ch + j * TC_LD + p) = u;
    u.x = xd_pack_bf16x2(cv.x - f01.x, cv.y - f01.y), u.y = xd_pack_bf16x2(cv.z - f23.x, cv.w - f23.y);
    *reinterpret_cast<uint2 *>(sm.Cl + j * TC_LD + p) = u;
  }
  for (int p = tid; p < TC_P; p += TC_THREADS) sm.n[p] = a.bn[ci * TC_P + p];
  __syncthreads();
  if (tid == 0) {
    /* sequential gate scan in double (docs/mlstm.md: tie -> forget branch); ld <- b, id kept */
    double cum = 0, m = m_prev;
    for (int j = 0; j < len; j++) {
      const double l = sm.ld[j], ig = sm.id[j];
      cum += l;
      const double mf = l + m;
      m = mf >= ig ? mf : ig;
      sm.ld[j] = cum;
      sm.rb[j] = cum - m; /* b_j - m_j */
    }
  }
  __syncthreads();
  for (int j = tid; j < TC_L; j += TC_THREADS) {
    if (j < len) {
      const double mj = sm.ld[j] - sm.rb[j];
      sm.cb[j] = sm.id[j] - sm.ld[j]; /* i_k - b_k */
      sm.gs[j] = (float)exp(sm.ld[j] + m_prev - mj) * a.s;
      sm.mf[j] = (float)mj;
      float acc = 0.f;
      for (int p = 0; p < TC_P; p++) acc += xd_bf2f(sm.Q[j * TC_LD + p]) * sm.n[p];
      sm.qn[j] = sm.gs[j] * acc;
    } else {
      sm.cb[j] = 0, sm.rb[j] = 0, sm.gs[j] = 0.f, sm.mf[j] = 0.f, sm.qn[j] = 0.f;
    }
  }
  __syncthreads();

  const int warp = tid >> 5, lane = tid & 31, gq = lane >> 2, tq = lane & 3;
  const int r0 = warp * 16 + gq, r1 = r0 + 8; /* chunk-local rows of this lane */
  uint32_t qa[TC_P / 16][4];
#pragma unroll
  for (int kk = 0; kk < TC_P / 16; kk++) {
    qa[kk][0] = xd_ld32s(sm.Q + r0 * TC_LD + kk * 16 + 2 * tq);
    qa[kk][1] = xd_ld32s(sm.Q + r1 * TC_LD + kk * 16 + 2 * tq);
    qa[kk][2] = xd_ld32s(sm.Q + r0 * TC_LD + kk * 16 + 8 + 2 * tq);
    qa[kk][3] = xd_ld32s(sm.Q + r1 * TC_LD + kk * 16 + 8 + 2 * tq);
  }
  /* S = Q K^T over the key blocks at or left of the diagonal (nb <= 2 warp + 1). */
  float s[TC_L / 8][4];
#pragma unroll
  for (int nb = 0; nb < TC_L / 8; nb++) {
    s[nb][0] = s[nb][1] = s[nb][2] = s[nb][3] = 0.f;
    if (nb <= 2 * warp + 1) {
#pragma unroll
      for (int kk = 0; kk < TC_P / 16; kk++) {
        const uint32_t b0 = xd_ld32s(sm.K + (nb * 8 + gq) * TC_LD + kk * 16 + 2 * tq);
        const uint32_t b1 = xd_ld32s(sm.K + (nb * 8 + gq) * TC_LD + kk * 16 + 8 + 2 * tq);
        xd_mma16816(s[nb], qa[kk], b0, b1);
      }
    }
  }
  /* S~ = s S o exp(b_j - b_k + i_k - m_j), k <= j < len; row sums for den. */
  const double rb0 = sm.rb[r0], rb1 = sm.rb[r1];
  float rs0 = 0.f, rs1 = 0.f;
  uint32_t pa[TC_L / 16][4];
#pragma unroll
  for (int nb = 0; nb < TC_L / 8; nb++) {
    const int k0 = nb * 8 + 2 * tq;
    const double cb0 = sm.cb[k0], cb1 = sm.cb[k0 + 1];
    float v[4];
#pragma unroll
    for (int e2 = 0; e2 < 4; e2++) {
      const int row = e2 < 2 ? r0 : r1, col = k0 + (e2 & 1);
      const double x = (e2 < 2 ? rb0 : rb1) + ((e2 & 1) ? cb1 : cb0);
      v[e2] = (col <= row && row < len && x > -87.0) ? a.s * s[nb][e2] * __expf((float)x) : 0.f;
    }
    rs0 += v[0] + v[1], rs1 += v[2] + v[3];
    pa[nb >> 1][(nb & 1) * 2 + 0] = xd_pack_bf16x2(v[0], v[1]);
    pa[nb >> 1][(nb & 1) * 2 + 1] = xd_pack_bf16x2(v[2], v[3]);
  }
  rs0 += __shfl_xor_sync(0xffffffffu, rs0, 1);
  rs0 += __shfl_xor_sync(0xffffffffu, rs0, 2);
  rs1 += __shfl_xor_sync(0xffffffffu, rs1, 1);
  rs1 += __shfl_xor_sync(0xffffffffu, rs1, 2);

  /* num = (g s) o (Q C) + S~ V; C's B fragments (k = p, n = d) through ldmatrix.trans. */
  float o[TC_P / 8][4];
#pragma unroll
  for (int nd = 0; nd < TC_P / 8; nd++) o[nd][0] = o[nd][1] = o[nd][2] = o[nd][3] = 0.f;
  const int lrow = (lane & 7) + ((lane >> 3) & 1) * 8, lcol = (lane >> 4) * 8;
#pragma unroll
  for (int kk = 0; kk < TC_P / 16; kk++) {
#pragma unroll
    for (int nd = 0; nd < TC_P / 8; nd += 2) {
      uint32_t b0, b1, b2, b3;
      xd_ldsm_x4_trans(b0, b1, b2, b3, sm.Ch + (kk * 16 + lrow) * TC_LD + nd * 8 + lcol);
      xd_mma16816(o[nd], qa[kk], b0, b1);
      xd_mma16816(o[nd + 1], qa[kk], b2, b3);
      xd_ldsm_x4_trans(b0, b1, b2, b3, sm.Cl + (kk * 16 + lrow) * TC_LD + nd * 8 + lcol);
      xd_mma16816(o[nd], qa[kk], b0, b1);
      xd_mma16816(o[nd + 1], qa[kk], b2, b3);
    }
  }
  const float gs0 = sm.gs[r0], gs1 = sm.gs[r1];
#pragma unroll
  for (int nd = 0; nd < TC_P / 8; nd++) o[nd][0] *= gs0, o[nd][1] *= gs0, o[nd][2] *= gs1, o[nd][3] *= gs1;
#pragma unroll
  for (int kk = 0; kk < TC_L / 16; kk++) {
    if (kk <= warp) {
#pragma unroll
      for (int nd = 0; nd < TC_P / 8; nd += 2) {
        uint32_t b0, b1, b2, b3;
        xd_ldsm_x4_trans(b0, b1, b2, b3, sm.V + (kk * 16 + lrow) * TC_LD + nd * 8 + lcol);
        xd_mma16816(o[nd], pa[kk], b0, b1);
        xd_mma16816(o[nd + 1], pa[kk], b2, b3);
      }
    }
  }
  /* h = num / (normaliser(den) + eps) */
  float ad0 = fabsf(rs0 + sm.qn[r0]), ad1 = fabsf(rs1 + sm.qn[r1]);
  if (a.norm == MLSTM_NORM_MAX) ad0 = fmaxf(ad0, expf(-sm.mf[r0])), ad1 = fmaxf(ad1, expf(-sm.mf[r1]));
  const float inv0 = 1.f / (ad0 + a.eps), inv1 = 1.f / (ad1 + a.eps);
  float *hb = a.h + (tok * a.H + hh) * TC_P;
#pragma unroll
  for (int nd = 0; nd < TC_P / 8; nd++) {
    const int d = nd * 8 + 2 * tq;
    if (r0 < len) *reinterpret_cast<float2 *>(hb + (size_t)r0 * a.H * TC_P + d) = make_float2(o[nd][0] * inv0, o[nd][1] * inv0);
    if (r1 < len) *reinterpret_cast<float2 *>(hb + (size_t)r1 * a.H * TC_P + d) = make_float2(o[nd][2] * inv1, o[nd][3] * inv1);
  }
}

static bool tc_al16(const void *p) { return ((uintptr_t)p & 15) == 0; }

extern "C" int xd_cuda_mlstm_chunkwise_forward_tc_bound(xd_cuda_ctx *c, const mlstm_cfg *cfg, const float *qf,
                                                        const float *kf, const float *v, const float *ig,
                                                        const float *fg, const mlstm_state *init, mlstm_state *final,
                                                        float *bound, float *h, xd_err *e) {
  XD_ARG(cfg->B > 0 && cfg->T > 0 && cfg->H > 0 && cfg->G > 0 && cfg->H % cfg->G == 0);
  if (cfg->P != TC_P || cfg->D != TC_P || cfg->chunk != TC_L)
    return xd_errf(e, "mlstm_tc.cu: tensor-core mLSTM forward supports P = D = %d and chunk %d only (got P=%d D=%d chunk %d)",
                   TC_P, TC_L, cfg->P, cfg->D, cfg->chunk);
  XD_ARG(!init || (init->C && init->n && init->m));
  XD_ARG(!final || (final->C && final->n && final->m));
  XD_ARG(tc_al16(qf) && tc_al16(kf) && tc_al16(v) && tc_al16(h) && tc_al16(bound));
  XD_ARG(!init || (tc_al16(init->C) && tc_al16(init->n)));
  XD_ARG(!final || (tc_al16(final->C) && tc_al16(final->n)));
  const int NC = (cfg->T + TC_L - 1) / TC_L;
  const size_t BH = (size_t)cfg->B * cfg->H, BHNC = BH * (size_t)NC;
  XD_ARG(BH <= 65535);
  tc_args a;
  a.B = cfg->B, a.T = cfg->T, a.H = cfg->H, a.G = cfg->G, a.NC = NC, a.norm = (int)cfg->norm;
  a.eps = (float)cfg->eps;
  a.s = (float)(1.0 / sqrt((double)TC_P));
  a.qf = qf, a.kf = kf, a.v = v, a.ig = ig, a.fg = fg, a.h = h;
  a.C0 = init ? init->C : NULL, a.n0 = init ? init->n : NULL, a.m0 = init ? init->m : NULL;
  a.C1 = final ? final->C : NULL, a.n1 = final ? final->n : NULL, a.m1 = final ? final->m : NULL;
  /* Scratch: the gate scalars, and the boundary buffer when the caller wants none. */
  const size_t nbound = BHNC * ((size_t)TC_P * TC_P + TC_P + 1);
  const size_t scratch = BHNC * 2 * sizeof(double) + (bound ? 0 : nbound * sizeof(float));
  unsigned char *ws = NULL;
  XD_CU(cudaMallocAsync((void **)&ws, scratch, c->stream));
  a.bL = reinterpret_cast<double *>(ws), a.ml = a.bL + BHNC;
  float *bnd = bound ? bound : reinterpret_cast<float *>(a.ml + BHNC); /* 16-byte aligned: 16 BHNC bytes in */
  a.bC = bnd, a.bn = bnd + BHNC * TC_P * TC_P, a.bm = a.bn + BHNC * TC_P;
  int rc = 0;
  const size_t smem = sizeof(tc_out_smem);
  cudaError_t st = cudaFuncSetAttribute(k_tc_out, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
  if (st == cudaSuccess) {
    const dim3 grid((unsigned)NC, (unsigned)BH);
    k_tc_local<<<grid, TC_THREADS, 0, c->stream>>>(a);
    k_tc_mscan<<<xd_ceil_div(BH, TC_MSCAN_WARPS), 32 * TC_MSCAN_WARPS, 0, c->stream>>>(a, (int)BH);
    k_tc_cscan<<<dim3(xd_ceil_div(TC_P * TC_P / 4 + TC_P / 4, 128), (unsigned)BH), 128, 0, c->stream>>>(a);
    k_tc_out<<<grid, TC_THREADS, smem, c->stream>>>(a);
    st = cudaGetLastError();
  }
  if (st != cudaSuccess) rc = xd_errf(e, "mlstm_tc.cu:%d: tensor-core mlstm forward launch: %s", __LINE__, cudaGetErrorString(st));
  XD_CU(cudaFreeAsync(ws, c->stream));
  return rc;
}

extern "C" int xd_cuda_mlstm_chunkwise_forward_tc(xd_cuda_ctx *c, const mlstm_cfg *cfg, const float *qf, const float *kf,
                                                  const float *v, const float *ig, const float *fg,
                                                  const mlstm_state *init, mlstm_state *final, float *h, xd_err *e) {
  return xd_cuda_mlstm_chunkwise_forward_tc_bound(c, cfg, qf, kf, v, ig, fg, init, final, NULL, h, e);
}
