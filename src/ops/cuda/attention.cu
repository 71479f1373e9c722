/* Flash-style attention forward (causal, optional sliding window and sink tokens, GQA):
 * bf16 operands on the tensor cores (mma.sync m16n8k16, fp32 accumulation), online softmax
 * in fp32 registers (base-2 exponentials), one pass over the visible keys.
 *
 * Block = 4 warps = 64 query rows of one (batch, head); each warp owns 16 rows. Keys go
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
#include "cuda_common.cuh"

#define ATT_BR 64
#define ATT_BC 64

__device__ __forceinline__ void mma_bf16_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); /* .x (low half) = lo */
  return *reinterpret_cast<uint32_t *>(&v);
}

__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool valid) {
  const unsigned sa = (unsigned)__cvta_generic_to_shared(smem);
  const int n = valid ? 16 : 0; /* src-size 0: the 16 bytes are zero-filled */
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sa), "l"(gmem), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

/* Four 8x8 b16 matrices, transposed on the way: with V row-major [key][dim] in shared memory
 * this yields the m16n8k16 B fragments (k = key, n = dim) of two adjacent 8-wide dim blocks. */
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3,
                                                  const void *smem_row) {
  const unsigned sa = (unsigned)__cvta_generic_to_shared(smem_row);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(sa));
}

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
      cp_async16(Ks + key * LDS + col, kbase + row * a.ldk + col, ok);
      cp_async16(Vs + key * LDS + col, vbase + row * a.ldv + col, ok);
    }
    cp_async_commit();
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
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
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
        mma_bf16_16816(s[nb], qa[kk], b0, b1);
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
      pa[nb >> 1][(nb & 1) * 2 + 0] = pack_bf16x2(p0, p1);
      pa[nb >> 1][(nb & 1) * 2 + 1] = pack_bf16x2(p2, p3);
    }
    /* O += P V: lanes 0-7 / 8-15 / 16-23 / 24-31 address the rows of the four 8x8 matrices
     * (keys +0..7 / +8..15 of dim block nd, then the same of block nd+1). */
    const int lrow = (lane & 7) + ((lane >> 3) & 1) * 8, lcol = (lane >> 4) * 8;
#pragma unroll
    for (int kk = 0; kk < ATT_BC / 16; kk++) {
#pragma unroll
      for (int nd = 0; nd < D / 8; nd += 2) {
        uint32_t b0, b1, b2, b3;
        ldmatrix_x4_trans(b0, b1, b2, b3, Vs + (kk * 16 + lrow) * LDS + nd * 8 + lcol);
        mma_bf16_16816(oacc[nd], pa[kk], b0, b1);
        mma_bf16_16816(oacc[nd + 1], pa[kk], b2, b3);
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
    if (r0 < T) *reinterpret_cast<uint32_t *>(obase + (size_t)r0 * a.ldo + c0) = pack_bf16x2(oacc[nd][0] * inv0, oacc[nd][1] * inv0);
    if (r1 < T) *reinterpret_cast<uint32_t *>(obase + (size_t)r1 * a.ldo + c0) = pack_bf16x2(oacc[nd][2] * inv1, oacc[nd][3] * inv1);
  }
  if (lse && tq == 0) {
    const float ln2 = 0.69314718055994531f;
    const float ref0 = m0 == -INFINITY ? 0.f : m0, ref1 = m1 == -INFINITY ? 0.f : m1;
    if (r0 < T) lse[((size_t)b * T + r0) * H + h] = (ref0 + log2f(l0)) * ln2;
    if (r1 < T) lse[((size_t)b * T + r1) * H + h] = (ref1 + log2f(l1)) * ln2;
  }
}

extern "C" int xd_cuda_attention_forward(xd_cuda_ctx *c, uint16_t *out, float *lse, const uint16_t *q,
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
