/* Flash-style attention forward (causal, optional sliding window and sink tokens, GQA):
 * bf16 operands on the tensor cores (mma.sync m16n8k16, fp32 accumulation), online softmax
 * in fp32 registers (base-2 exponentials), one pass over the visible keys. Two versions: v1
 * (k_attention_fwd, described here; xd_cuda_attention_forward_v1) and v2 (k_attn_fwd2, below;
 * xd_cuda_attention_forward), the same function up to rounding.
 *
 * v1: block = 4 warps = 64 query rows of one (batch, head); each warp owns 16 rows. Keys go
 * through shared memory in tiles of 64, K and V row-major [64][D+8] (the padding keeps the
 * fragment loads free of bank conflicts), two stages deep: cp.async fills the next tile while
 * the tensor cores work on this one; V fragments come through ldmatrix.trans. Per tile and warp:
 *   S[16,64] = Q K^T (mma), mask, running max m / sum l per row, O = O*alpha + P V (mma),
 * with P repacked from the S accumulators to A fragments in registers (no shared memory).
 * Fragment layouts of m16n8k16 (g = lane/4, t = lane%4):
 *   A 16x16: a0 (g, 2t..2t+1) a1 (g+8, 2t..) a2 (g, 2t+8..) a3 (g+8, 2t+8..)
 *   B 16x8 : b0 (k 2t..2t+1, n g) b1 (k 2t+8.., n g)
 *   C 16x8 : c0,c1 (g, 2t..2t+1) c2,c3 (g+8, 2t..2t+1) */
#include <math.h>
#include <stdlib.h>
#include "cuda_mma.cuh"

#define ATT_BR 64
#define ATT_BC 64

/* Next key tile this query block visits after tile j (sinks, then the window), or -1. */
__device__ __forceinline__ int att_next_tile(int j, int j_max, int j_win, int sinks) {
  j++;
  if (j < j_win && j * ATT_BC >= sinks) j = j_win;
  return j <= j_max ? j : -1;
}

template <int D>
__global__ void __launch_bounds__(128) k_attention_fwd(uint16_t *__restrict__ out, float *__restrict__ lse,
                                                       const uint16_t *__restrict__ q, const uint16_t *__restrict__ k,
                                                       const uint16_t *__restrict__ v, xd_cuda_attn_dims a,
                                                       float scale_log2) {
  /* Two stages of K and V tiles, both row-major [64][D+8] (the padding spreads the 8 rows that
   * one ldmatrix / fragment load touches over all banks). Stage s: K at smem + s*2*TILE, V after. */
  constexpr int LDS = D + 8, TILE = ATT_BC * LDS;
  extern __shared__ __align__(16) uint16_t att_smem[];
  const int T = a.T, H = a.H;
  const int qb = gridDim.x - 1 - blockIdx.x; /* longest (latest) query blocks first */
  const int h = blockIdx.y, b = blockIdx.z;
  const int g_kv = h / (H / a.G);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int gq = lane >> 2, tq = lane & 3;
  const int q_lo = qb * ATT_BR;
  const int q_hi = min(T, q_lo + ATT_BR) - 1;
  const int r0 = q_lo + warp * 16 + gq, r1 = r0 + 8; /* this lane's two query rows */

  const uint16_t *qbase = q + (size_t)b * T * a.ldq + (size_t)h * D;
  const uint16_t *kbase = k + (size_t)b * T * a.ldk + (size_t)g_kv * D;
  const uint16_t *vbase = v + (size_t)b * T * a.ldv + (size_t)g_kv * D;

  /* Issue the asynchronous loads of key tile j into stage st; rows past T are zero-filled (a
   * masked score still multiplies V, and garbage there could be NaN). */
  auto load_tile = [&](int j, int st) {
    uint16_t *Ks = att_smem + st * 2 * TILE, *Vs = Ks + TILE;
    const int k0 = j * ATT_BC;
    for (int ch = threadIdx.x; ch < ATT_BC * D / 8; ch += blockDim.x) {
      const int key = ch / (D / 8), col = (ch % (D / 8)) * 8;
      const bool ok = k0 + key < T;
      const size_t row = ok ? (size_t)(k0 + key) : 0;
      xd_cp_async16(Ks + key * LDS + col, kbase + row * a.ldk + col, ok);
      xd_cp_async16(Vs + key * LDS + col, vbase + row * a.ldv + col, ok);
    }
    xd_cp_async_commit();
  };

  const int j_max = q_hi / ATT_BC;
  /* First tile that the window reaches for the block's first query; tiles before it are
   * visited only when they hold sinks. */
  const int j_win = a.window > 0 ? max(0, q_lo - a.window + 1) / ATT_BC : 0;
  int j = (0 < j_win && a.sinks <= 0) ? j_win : 0;
  load_tile(j, 0);

  /* Q fragments for the warp's 16 rows, all of D, kept in registers. */
  uint32_t qa[D / 16][4];
#pragma unroll
  for (int kk = 0; kk < D / 16; kk++) {
    const int c0 = kk * 16 + 2 * tq;
    qa[kk][0] = r0 < T ? *reinterpret_cast<const uint32_t *>(qbase + (size_t)r0 * a.ldq + c0) : 0u;
    qa[kk][1] = r1 < T ? *reinterpret_cast<const uint32_t *>(qbase + (size_t)r1 * a.ldq + c0) : 0u;
    qa[kk][2] = r0 < T ? *reinterpret_cast<const uint32_t *>(qbase + (size_t)r0 * a.ldq + c0 + 8) : 0u;
    qa[kk][3] = r1 < T ? *reinterpret_cast<const uint32_t *>(qbase + (size_t)r1 * a.ldq + c0 + 8) : 0u;
  }

  float oacc[D / 8][4];
#pragma unroll
  for (int i = 0; i < D / 8; i++) oacc[i][0] = oacc[i][1] = oacc[i][2] = oacc[i][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;

  for (int st = 0; j >= 0; st ^= 1) {
    const int jn = att_next_tile(j, j_max, j_win, a.sinks);
    if (jn >= 0) {
      load_tile(jn, st ^ 1); /* overlaps with this tile's maths */
      xd_cp_async_wait<1>();
    } else {
      xd_cp_async_wait<0>();
    }
    __syncthreads();
    const uint16_t *Ks = att_smem + st * 2 * TILE, *Vs = Ks + TILE;
    const int k0 = j * ATT_BC;

    float s[ATT_BC / 8][4];
#pragma unroll
    for (int nb = 0; nb < ATT_BC / 8; nb++) {
      s[nb][0] = s[nb][1] = s[nb][2] = s[nb][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++) {
        const uint32_t b0 = *reinterpret_cast<const uint32_t *>(Ks + (nb * 8 + gq) * LDS + kk * 16 + 2 * tq);
        const uint32_t b1 = *reinterpret_cast<const uint32_t *>(Ks + (nb * 8 + gq) * LDS + kk * 16 + 8 + 2 * tq);
        xd_mma16816(s[nb], qa[kk], b0, b1);
      }
    }
    /* The mask matters only on tiles that reach past the diagonal or T, or hold keys that
     * fall out of the window of some row of the block (block-uniform test). */
    const int ks0 = max(k0, a.sinks);
    const bool need_mask = k0 + ATT_BC - 1 > q_lo || k0 + ATT_BC > T ||
                           (a.window > 0 && ks0 <= k0 + ATT_BC - 1 && q_hi - ks0 >= a.window);
    float mx0 = -INFINITY, mx1 = -INFINITY;
    if (need_mask) {
#pragma unroll
      for (int nb = 0; nb < ATT_BC / 8; nb++) {
#pragma unroll
        for (int e2 = 0; e2 < 4; e2++) {
          const int key = k0 + nb * 8 + 2 * tq + (e2 & 1);
          const int row = e2 < 2 ? r0 : r1;
          const bool ok = key < T && key <= row && (a.window == 0 || row - key < a.window || key < a.sinks);
          s[nb][e2] = ok ? s[nb][e2] * scale_log2 : -INFINITY;
        }
      }
    } else {
#pragma unroll
      for (int nb = 0; nb < ATT_BC / 8; nb++)
#pragma unroll
        for (int e2 = 0; e2 < 4; e2++) s[nb][e2] *= scale_log2;
    }
#pragma unroll
    for (int nb = 0; nb < ATT_BC / 8; nb++) {
      mx0 = fmaxf(mx0, fmaxf(s[nb][0], s[nb][1]));
      mx1 = fmaxf(mx1, fmaxf(s[nb][2], s[nb][3]));
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    const float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
    /* A row with no visible key so far keeps m = -inf; use 0 as its reference so that
     * exp2(-inf - ref) = 0 instead of NaN. */
    const float ref0 = mn0 == -INFINITY ? 0.f : mn0, ref1 = mn1 == -INFINITY ? 0.f : mn1;
    const float al0 = exp2f(m0 - ref0), al1 = exp2f(m1 - ref1);
    m0 = mn0, m1 = mn1;
    l0 *= al0, l1 *= al1;
#pragma unroll
    for (int nd = 0; nd < D / 8; nd++) {
      oacc[nd][0] *= al0, oacc[nd][1] *= al0;
      oacc[nd][2] *= al1, oacc[nd][3] *= al1;
    }
    uint32_t pa[ATT_BC / 16][4];
#pragma unroll
    for (int nb = 0; nb < ATT_BC / 8; nb++) {
      const float p0 = exp2f(s[nb][0] - ref0), p1 = exp2f(s[nb][1] - ref0);
      const float p2 = exp2f(s[nb][2] - ref1), p3 = exp2f(s[nb][3] - ref1);
      l0 += p0 + p1, l1 += p2 + p3;
      pa[nb >> 1][(nb & 1) * 2 + 0] = xd_pack_bf16x2(p0, p1);
      pa[nb >> 1][(nb & 1) * 2 + 1] = xd_pack_bf16x2(p2, p3);
    }
    /* O += P V: lanes 0-7 / 8-15 / 16-23 / 24-31 address the rows of the four 8x8 matrices
     * (keys +0..7 / +8..15 of dim block nd, then the same of block nd+1). */
    const int lrow = (lane & 7) + ((lane >> 3) & 1) * 8, lcol = (lane >> 4) * 8;
#pragma unroll
    for (int kk = 0; kk < ATT_BC / 16; kk++) {
#pragma unroll
      for (int nd = 0; nd < D / 8; nd += 2) {
        uint32_t b0, b1, b2, b3;
        xd_ldsm_x4_trans(b0, b1, b2, b3, Vs + (kk * 16 + lrow) * LDS + nd * 8 + lcol);
        xd_mma16816(oacc[nd], pa[kk], b0, b1);
        xd_mma16816(oacc[nd + 1], pa[kk], b2, b3);
      }
    }
    __syncthreads(); /* this stage is refilled two tiles from now */
    j = jn;
  }
  /* Each lane summed its own columns; complete the row sums over the 4 lanes of a row. */
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
  uint16_t *obase = out + (size_t)b * T * a.ldo + (size_t)h * D;
#pragma unroll
  for (int nd = 0; nd < D / 8; nd++) {
    const int c0 = nd * 8 + 2 * tq;
    if (r0 < T) *reinterpret_cast<uint32_t *>(obase + (size_t)r0 * a.ldo + c0) = xd_pack_bf16x2(oacc[nd][0] * inv0, oacc[nd][1] * inv0);
    if (r1 < T) *reinterpret_cast<uint32_t *>(obase + (size_t)r1 * a.ldo + c0) = xd_pack_bf16x2(oacc[nd][2] * inv1, oacc[nd][3] * inv1);
  }
  if (lse && tq == 0) {
    const float ln2 = 0.69314718055994531f;
    const float ref0 = m0 == -INFINITY ? 0.f : m0, ref1 = m1 == -INFINITY ? 0.f : m1;
    if (r0 < T) lse[((size_t)b * T + r0) * H + h] = (ref0 + log2f(l0)) * ln2;
    if (r1 < T) lse[((size_t)b * T + r1) * H + h] = (ref1 + log2f(l1)) * ln2;
  }
}

static int attention_forward_v1(xd_cuda_ctx *c, uint16_t *out, float *lse, const uint16_t *q,
                                         const uint16_t *k, const uint16_t *v, const xd_cuda_attn_dims *a,
                                         xd_err *e) {
  XD_ARG(a->B > 0 && a->T > 0 && a->H > 0 && a->G > 0 && a->H % a->G == 0);
  XD_ARG(a->d == 64 || a->d == 128);
  XD_ARG(a->window >= 0 && a->sinks >= 0);
  XD_ARG(a->ldq >= a->H * a->d && a->ldo >= a->H * a->d && a->ldk >= a->G * a->d && a->ldv >= a->G * a->d);
  /* 16-byte K/V tile loads, 4-byte Q/out accesses. */
  XD_ARG(a->ldk % 8 == 0 && a->ldv % 8 == 0 && ((uintptr_t)k & 15) == 0 && ((uintptr_t)v & 15) == 0);
  XD_ARG(a->ldq % 2 == 0 && a->ldo % 2 == 0 && ((uintptr_t)q & 3) == 0 && ((uintptr_t)out & 3) == 0);
  XD_ARG(a->T <= (1 << 30) / ATT_BR);
  const dim3 grid(xd_ceil_div(a->T, ATT_BR), a->H, a->B);
  const float scale_log2 = (float)(1.0 / sqrt((double)a->d) * 1.4426950408889634);
  /* two stages x (K + V) x [64][d+8] bf16: 36 KiB at d = 64, 68 KiB at d = 128 (opt-in) */
  const size_t smem = (size_t)2 * 2 * ATT_BC * (a->d + 8) * sizeof(uint16_t);
  if (a->d == 64) {
    XD_CU(cudaFuncSetAttribute(k_attention_fwd<64>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    k_attention_fwd<64><<<grid, 128, smem, c->stream>>>(out, lse, q, k, v, *a, scale_log2);
  } else {
    XD_CU(cudaFuncSetAttribute(k_attention_fwd<128>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    k_attention_fwd<128><<<grid, 128, smem, c->stream>>>(out, lse, q, k, v, *a, scale_log2);
  }
  XD_CU_LAUNCH("attention");
  return 0;
}

/* ---- version 2 (issue #8) ------------------------------------------------------------------
 * Same function, faster schedule. Block = NW warps x MT m-tiles of 16 query rows: BR = 16 NW MT
 * rows. The d 64 defaults are MT 2 x 4 warps (BR 128): each K/V tile that the block stages feeds
 * twice the MMAs of v1, and each K / V fragment a warp loads from shared memory feeds two MMAs
 * (one per m-tile), which halves the shared-memory traffic per MMA (at MT 1, ldmatrix traffic
 * and not the tensor cores set the pace). d 128 keeps 64-row blocks (MT 1 x 4 warps): its O
 * accumulators leave no registers for a second m-tile. Key tiles of BC = 64.
 *  - Q: one cp.async of the block's rows into shared memory, then ldmatrix to registers once
 *    (QS = false) or per key tile (QS = true, fewer registers).
 *  - K fragments through ldmatrix.x4 (two k-steps a load), V through ldmatrix.x4.trans.
 *  - One __syncthreads per key tile: the next tile is issued into the stage that every warp
 *    finished at the previous barrier, and waited for after this tile's maths.
 *  - Scores stay unscaled; p = exp2(s * scale_log2 - m * scale_log2) is one FFMA + EX2.
 *  - The mask is a template branch, taken per warp only on tiles that cross the warp's diagonal,
 *    the window edge or T; a tile that no row of the warp can see is skipped by that warp.
 *  - grid (B*H, query blocks): the block scheduler starts the latest (longest causal) query
 *    blocks of every head first, so the short ones fill the tail. */
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

/* One key tile for one warp: S = Q K^T, (mask), online softmax, O += P V. */
template <int D, int MT, int BC, bool QS, bool MASK>
__device__ __forceinline__ void att2_tile(float (&oacc)[MT][D / 8][4], float (&m)[MT][2], float (&l)[MT][2],
                                          const uint32_t (&qa)[MT][D / 16][4], const uint16_t *Qs,
                                          const uint16_t *Ks, const uint16_t *Vs, int k0, int wrow0,
                                          const xd_cuda_attn_dims &a, float sl2, int lane) {
  constexpr int LDS = D + 8;
  const int gq = lane >> 2, tq = lane & 3;
  float s[MT][BC / 8][4];
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int nb = 0; nb < BC / 8; nb++) s[mt][nb][0] = s[mt][nb][1] = s[mt][nb][2] = s[mt][nb][3] = 0.f;
  /* ldmatrix addressing: lane supplies row (lane & 7) of matrix lane >> 3. */
  const int lr = lane & 7, lm = lane >> 3;
#pragma unroll
  for (int k2 = 0; k2 < D / 32; k2++) {
    uint32_t qf[MT][2][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
      for (int h2 = 0; h2 < 2; h2++) {
        if constexpr (QS) {
          /* A 16x16: matrices (rows 0-7, cols 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15) */
          xd_ldsm_x4(qf[mt][h2][0], qf[mt][h2][1], qf[mt][h2][2], qf[mt][h2][3],
                      Qs + (mt * 16 + lr + (lm & 1) * 8) * LDS + (2 * k2 + h2) * 16 + (lm >> 1) * 8);
        } else {
#pragma unroll
          for (int i = 0; i < 4; i++) qf[mt][h2][i] = qa[mt][2 * k2 + h2][i];
        }
      }
#pragma unroll
    for (int nb = 0; nb < BC / 8; nb++) {
      /* keys nb*8.., dims k2*32 + {0, 8, 16, 24}: b0, b1 of k-step 2 k2, then of 2 k2 + 1 */
      uint32_t b0, b1, b2, b3;
      xd_ldsm_x4(b0, b1, b2, b3, Ks + (nb * 8 + lr) * LDS + k2 * 32 + lm * 8);
#pragma unroll
      for (int mt = 0; mt < MT; mt++) {
        xd_mma16816(s[mt][nb], qf[mt][0], b0, b1);
        xd_mma16816(s[mt][nb], qf[mt][1], b2, b3);
      }
    }
  }
  if constexpr (MASK) {
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
      for (int nb = 0; nb < BC / 8; nb++)
#pragma unroll
        for (int e2 = 0; e2 < 4; e2++) {
          const int key = k0 + nb * 8 + 2 * tq + (e2 & 1);
          const int row = wrow0 + mt * 16 + gq + (e2 >> 1) * 8;
          const bool ok = key < a.T && key <= row && (a.window == 0 || row - key < a.window || key < a.sinks);
          if (!ok) s[mt][nb][e2] = -INFINITY;
        }
  }
  uint32_t pa[MT][BC / 16][4];
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int nb = 0; nb < BC / 8; nb++) {
      mx0 = fmaxf(mx0, fmaxf(s[mt][nb][0], s[mt][nb][1]));
      mx1 = fmaxf(mx1, fmaxf(s[mt][nb][2], s[mt][nb][3]));
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    const float mn0 = fmaxf(m[mt][0], mx0), mn1 = fmaxf(m[mt][1], mx1);
    /* A row with no visible key so far keeps m = -inf: reference 0, so exp2(-inf) = 0, never NaN. */
    const float ref0 = mn0 == -INFINITY ? 0.f : mn0 * sl2, ref1 = mn1 == -INFINITY ? 0.f : mn1 * sl2;
    const float al0 = fast_exp2(fmaf(m[mt][0], sl2, -ref0)), al1 = fast_exp2(fmaf(m[mt][1], sl2, -ref1));
    m[mt][0] = mn0, m[mt][1] = mn1;
    l[mt][0] *= al0, l[mt][1] *= al1;
#pragma unroll
    for (int nd = 0; nd < D / 8; nd++) {
      oacc[mt][nd][0] *= al0, oacc[mt][nd][1] *= al0;
      oacc[mt][nd][2] *= al1, oacc[mt][nd][3] *= al1;
    }
#pragma unroll
    for (int nb = 0; nb < BC / 8; nb++) {
      const float p0 = fast_exp2(fmaf(s[mt][nb][0], sl2, -ref0)), p1 = fast_exp2(fmaf(s[mt][nb][1], sl2, -ref0));
      const float p2 = fast_exp2(fmaf(s[mt][nb][2], sl2, -ref1)), p3 = fast_exp2(fmaf(s[mt][nb][3], sl2, -ref1));
      l[mt][0] += p0 + p1, l[mt][1] += p2 + p3;
      pa[mt][nb >> 1][(nb & 1) * 2 + 0] = xd_pack_bf16x2(p0, p1);
      pa[mt][nb >> 1][(nb & 1) * 2 + 1] = xd_pack_bf16x2(p2, p3);
    }
  }
  /* O += P V: matrices (keys +0..7, dims nd*8..), (keys +8..15, nd*8..), then the same of nd+1. */
  const int vrow = lr + (lm & 1) * 8, vcol = (lm >> 1) * 8;
#pragma unroll
  for (int kk = 0; kk < BC / 16; kk++) {
#pragma unroll
    for (int nd = 0; nd < D / 8; nd += 2) {
      uint32_t b0, b1, b2, b3;
      xd_ldsm_x4_trans(b0, b1, b2, b3, Vs + (kk * 16 + vrow) * LDS + nd * 8 + vcol);
#pragma unroll
      for (int mt = 0; mt < MT; mt++) {
        xd_mma16816(oacc[mt][nd], pa[mt][kk], b0, b1);
        xd_mma16816(oacc[mt][nd + 1], pa[mt][kk], b2, b3);
      }
    }
  }
}

template <int D, int MT, int NW, int BC, bool QS, int MINB>
__global__ void __launch_bounds__(NW * 32, MINB) k_attn_fwd2(uint16_t *__restrict__ out, float *__restrict__ lse,
                                                       const uint16_t *__restrict__ q, const uint16_t *__restrict__ k,
                                                       const uint16_t *__restrict__ v, xd_cuda_attn_dims a, float sl2) {
  constexpr int LDS = D + 8, BR = NW * MT * 16, TILE = BC * LDS, NT = NW * 32;
  extern __shared__ __align__(16) uint16_t att_smem[];
  uint16_t *Qs = att_smem; /* [BR][LDS], then two stages of K [64][LDS], V [64][LDS] */
  uint16_t *KV = att_smem + BR * LDS;
  const int T = a.T, H = a.H;
  const int h = blockIdx.x % H, b = blockIdx.x / H;
  const int qb = gridDim.y - 1 - blockIdx.y; /* latest (longest) query blocks first */
  const int g_kv = h / (H / a.G);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int gq = lane >> 2, tq = lane & 3;
  const int q_lo = qb * BR;
  const int q_hi = min(T, q_lo + BR) - 1;
  const int wlo = q_lo + warp * MT * 16, whi = wlo + MT * 16 - 1; /* the warp's rows (may pass T) */

  const uint16_t *qbase = q + (size_t)b * T * a.ldq + (size_t)h * D;
  const uint16_t *kbase = k + (size_t)b * T * a.ldk + (size_t)g_kv * D;
  const uint16_t *vbase = v + (size_t)b * T * a.ldv + (size_t)g_kv * D;

  auto load_tile = [&](int j, int st) {
    uint16_t *Ks = KV + st * 2 * TILE, *Vs = Ks + TILE;
    const int k0 = j * BC;
    static_assert(BC * D / 8 % NT == 0, "tile chunks");
#pragma unroll
    for (int i = 0; i < BC * D / 8 / NT; i++) {
      const int ch = threadIdx.x + i * NT;
      const int key = ch / (D / 8), col = (ch % (D / 8)) * 8;
      const bool ok = k0 + key < T; /* rows past T: zeros (a masked score still multiplies V) */
      const size_t row = ok ? (size_t)(k0 + key) : 0;
      xd_cp_async16(Ks + key * LDS + col, kbase + row * a.ldk + col, ok);
      xd_cp_async16(Vs + key * LDS + col, vbase + row * a.ldv + col, ok);
    }
    xd_cp_async_commit();
  };

  /* Q rows of the block (rows past T: zeros); only 4-byte alignment is promised for q, so
   * 16-byte copies only where the row start allows them. */
  const bool q16 = (a.ldq % 8) == 0 && (((uintptr_t)q) & 15) == 0;
  static_assert(BR * D / 8 % NT == 0, "Q chunks");
#pragma unroll
  for (int i = 0; i < BR * D / 8 / NT; i++) {
    const int ch = threadIdx.x + i * NT;
    const int r = ch / (D / 8), col = (ch % (D / 8)) * 8;
    const bool ok = q_lo + r < T;
    const uint16_t *src = qbase + (size_t)(ok ? q_lo + r : 0) * a.ldq + col;
    if (q16) {
      xd_cp_async16(Qs + r * LDS + col, src, ok);
    } else {
#pragma unroll
      for (int i = 0; i < 8; i += 2)
        *reinterpret_cast<uint32_t *>(Qs + r * LDS + col + i) = ok ? *reinterpret_cast<const uint32_t *>(src + i) : 0u;
    }
  }
  const int j_max = q_hi / BC;
  const int j_win = a.window > 0 ? max(0, q_lo - a.window + 1) / BC : 0;
  int j = (0 < j_win && a.sinks <= 0) ? j_win : 0;
  load_tile(j, 0); /* commits the Q copies too */
  xd_cp_async_wait<0>();
  __syncthreads();

  const int lr = lane & 7, lm = lane >> 3;
  uint32_t qa[MT][D / 16][4];
  if constexpr (!QS) {
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
      for (int kk = 0; kk < D / 16; kk++)
        xd_ldsm_x4(qa[mt][kk][0], qa[mt][kk][1], qa[mt][kk][2], qa[mt][kk][3],
                    Qs + (warp * MT * 16 + mt * 16 + lr + (lm & 1) * 8) * LDS + kk * 16 + (lm >> 1) * 8);
  }
  const uint16_t *Qw = Qs + warp * MT * 16 * LDS;

  float oacc[MT][D / 8][4];
  float m[MT][2], l[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
#pragma unroll
    for (int i = 0; i < D / 8; i++) oacc[mt][i][0] = oacc[mt][i][1] = oacc[mt][i][2] = oacc[mt][i][3] = 0.f;
    m[mt][0] = m[mt][1] = -INFINITY, l[mt][0] = l[mt][1] = 0.f;
  }

  for (int st = 0; j >= 0; st ^= 1) {
    int jn = j + 1; /* next tile: sinks, then the window */
    if (jn < j_win && jn * BC >= a.sinks) jn = j_win;
    if (jn > j_max) jn = -1;
    if (jn >= 0) load_tile(jn, st ^ 1); /* every warp left that stage before the last barrier */
    const uint16_t *Ks = KV + st * 2 * TILE, *Vs = Ks + TILE;
    const int k0 = j * BC, k1 = k0 + BC - 1;
    /* Warp-uniform: can no row of the warp see the tile? does any key need the mask? */
    const bool skip = k0 > whi || (a.window > 0 && k0 >= a.sinks && wlo - k1 >= a.window);
    if (!skip) {
      const int ks0 = max(k0, a.sinks);
      const bool need_mask = k1 > wlo || k1 >= T || (a.window > 0 && ks0 <= k1 && whi - ks0 >= a.window);
      if (need_mask)
        att2_tile<D, MT, BC, QS, true>(oacc, m, l, qa, Qw, Ks, Vs, k0, wlo, a, sl2, lane);
      else
        att2_tile<D, MT, BC, QS, false>(oacc, m, l, qa, Qw, Ks, Vs, k0, wlo, a, sl2, lane);
    }
    if (jn >= 0) {
      xd_cp_async_wait<0>();
      __syncthreads();
    }
    j = jn;
  }

  uint16_t *obase = out + (size_t)b * T * a.ldo + (size_t)h * D;
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
    float l0 = l[mt][0], l1 = l[mt][1];
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = l0 > 0.f ? 1.f / l0 : 0.f, inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
    const int r0 = wlo + mt * 16 + gq, r1 = r0 + 8;
#pragma unroll
    for (int nd = 0; nd < D / 8; nd++) {
      const int c0 = nd * 8 + 2 * tq;
      if (r0 < T)
        *reinterpret_cast<uint32_t *>(obase + (size_t)r0 * a.ldo + c0) =
            xd_pack_bf16x2(oacc[mt][nd][0] * inv0, oacc[mt][nd][1] * inv0);
      if (r1 < T)
        *reinterpret_cast<uint32_t *>(obase + (size_t)r1 * a.ldo + c0) =
            xd_pack_bf16x2(oacc[mt][nd][2] * inv1, oacc[mt][nd][3] * inv1);
    }
    if (lse && tq == 0) {
      const float ln2 = 0.69314718055994531f;
      const float ref0 = m[mt][0] == -INFINITY ? 0.f : m[mt][0] * sl2;
      const float ref1 = m[mt][1] == -INFINITY ? 0.f : m[mt][1] * sl2;
      if (r0 < T) lse[((size_t)b * T + r0) * H + h] = (ref0 + log2f(l0)) * ln2;
      if (r1 < T) lse[((size_t)b * T + r1) * H + h] = (ref1 + log2f(l1)) * ln2;
    }
  }
}

template <int D, int MT, int NW, bool QS, int MINB = 1, int BC = 64>
static int att2_launch(xd_cuda_ctx *c, uint16_t *out, float *lse, const uint16_t *q, const uint16_t *k,
                       const uint16_t *v, const xd_cuda_attn_dims *a, xd_err *e) {
  constexpr int BR = NW * MT * 16;
  XD_ARG(a->T <= (1 << 30) / BR && (long long)a->B * a->H < (1LL << 31));
  const dim3 grid((unsigned)(a->B * a->H), (unsigned)xd_ceil_div(a->T, BR));
  XD_ARG(grid.y <= 65535);
  const float sl2 = (float)(1.0 / sqrt((double)D) * 1.4426950408889634);
  /* Q [BR][D+8] + two stages x (K + V) x [64][D+8] bf16: 54 KiB at d 64, 102 KiB at d 128 */
  const size_t smem = (size_t)(BR + 2 * 2 * BC) * (D + 8) * sizeof(uint16_t);
  XD_CU(cudaFuncSetAttribute(k_attn_fwd2<D, MT, NW, BC, QS, MINB>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  k_attn_fwd2<D, MT, NW, BC, QS, MINB><<<grid, NW * 32, smem, c->stream>>>(out, lse, q, k, v, *a, sl2);
  XD_CU_LAUNCH("attention v2");
  return 0;
}

static int attention_check(const xd_cuda_attn_dims *a, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                           const uint16_t *out, xd_err *e) {
  XD_ARG(a->B > 0 && a->T > 0 && a->H > 0 && a->G > 0 && a->H % a->G == 0);
  XD_ARG(a->d == 64 || a->d == 128);
  XD_ARG(a->window >= 0 && a->sinks >= 0);
  XD_ARG(a->ldq >= a->H * a->d && a->ldo >= a->H * a->d && a->ldk >= a->G * a->d && a->ldv >= a->G * a->d);
  XD_ARG(a->ldk % 8 == 0 && a->ldv % 8 == 0 && ((uintptr_t)k & 15) == 0 && ((uintptr_t)v & 15) == 0);
  XD_ARG(a->ldq % 2 == 0 && a->ldo % 2 == 0 && ((uintptr_t)q & 3) == 0 && ((uintptr_t)out & 3) == 0);
  return 0;
}

/* cfg: 0 = the default; -1 = v1; 1.. = a fixed configuration (tests and timings): MT m-tiles of
 * 16 query rows x NW warps, Q fragments kept in registers or read from shared memory per key tile
 * (QS), MINB blocks an SM at least (a register cap):
 *   d 64:  1 = MT 2 x 4 warps,  2 = MT 2 x 4 QS,  3 = MT 1 x 8,  4 = MT 1 x 8 MINB 2
 *   d 128: 1 = MT 1 x 8,  2 = MT 2 x 4 QS,  3 = MT 1 x 8 QS,  4 = MT 1 x 8 QS MINB 2,  5 = MT 1 x 4
 * Defaults, the fastest at the Llama-3.2-1B shape on an H100 (two calls, docs/perf.md): d 64
 * causal (window 0) 2, d 64 with a window 1, d 128 5. */
extern "C" int xd_cuda_attention_forward_cfg(xd_cuda_ctx *c, uint16_t *out, float *lse, const uint16_t *q,
                                             const uint16_t *k, const uint16_t *v, const xd_cuda_attn_dims *a,
                                             int cfg, xd_err *e) {
  if (attention_check(a, q, k, v, out, e)) return -1;
  if (cfg < 0) return attention_forward_v1(c, out, lse, q, k, v, a, e);
  if (cfg == 0) cfg = a->d == 64 ? (a->window == 0 ? 2 : 1) : 5;
  if (a->d == 64) {
    switch (cfg) {
      case 2: return att2_launch<64, 2, 4, true>(c, out, lse, q, k, v, a, e);
      case 3: return att2_launch<64, 1, 8, false>(c, out, lse, q, k, v, a, e);
      case 4: return att2_launch<64, 1, 8, false, 2>(c, out, lse, q, k, v, a, e);
      default: return att2_launch<64, 2, 4, false>(c, out, lse, q, k, v, a, e);
    }
  }
  switch (cfg) {
    case 2: return att2_launch<128, 2, 4, true>(c, out, lse, q, k, v, a, e);
    case 3: return att2_launch<128, 1, 8, true>(c, out, lse, q, k, v, a, e);
    case 4: return att2_launch<128, 1, 8, true, 2>(c, out, lse, q, k, v, a, e);
    case 5: return att2_launch<128, 1, 4, false>(c, out, lse, q, k, v, a, e);
    default: return att2_launch<128, 1, 8, false>(c, out, lse, q, k, v, a, e);
  }
}

/* XD_ATTN_FWD_V1=1 (read at every call) runs v1: to time the stage II step with either.
 * XD_ATTN_FWD_CFG=n (d 64) / XD_ATTN_FWD_CFG128=n (d 128) select a fixed configuration. */
extern "C" int xd_cuda_attention_forward(xd_cuda_ctx *c, uint16_t *out, float *lse, const uint16_t *q,
                                         const uint16_t *k, const uint16_t *v, const xd_cuda_attn_dims *a,
                                         xd_err *e) {
  const char *v1 = getenv("XD_ATTN_FWD_V1");
  const char *fixed = getenv(a->d == 128 ? "XD_ATTN_FWD_CFG128" : "XD_ATTN_FWD_CFG");
  const int cfg = v1 && v1[0] == '1' ? -1 : fixed && fixed[0] ? atoi(fixed) : 0;
  return xd_cuda_attention_forward_cfg(c, out, lse, q, k, v, a, cfg, e);
}

extern "C" int xd_cuda_attention_forward_v1(xd_cuda_ctx *c, uint16_t *out, float *lse, const uint16_t *q,
                                            const uint16_t *k, const uint16_t *v, const xd_cuda_attn_dims *a,
                                            xd_err *e) {
  return xd_cuda_attention_forward_cfg(c, out, lse, q, k, v, a, -1, e);
}
