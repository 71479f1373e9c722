/* Tensor-core fragment helpers (mma.sync m16n8k16 bf16 -> fp32, ldmatrix, bf16 packing),
 * static so that each .cu file gets its own copy (no device linking); used by attention.cu,
 * mlstm_tc.cu, mlstm_backward.cu, swa_backward.cu and student_ops.cu.
 * Fragment layouts of m16n8k16 (g = lane/4, t = lane%4):
 *   A 16x16: a0 (g, 2t..2t+1) a1 (g+8, 2t..) a2 (g, 2t+8..) a3 (g+8, 2t+8..)
 *   B 16x8 : b0 (k 2t..2t+1, n g) b1 (k 2t+8.., n g)
 *   C 16x8 : c0,c1 (g, 2t..2t+1) c2,c3 (g+8, 2t..2t+1) */
#ifndef XD_OPS_CUDA_MMA_CUH
#define XD_OPS_CUDA_MMA_CUH
#include "cuda_common.cuh"

static __device__ __forceinline__ void xd_mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
static __device__ __forceinline__ uint32_t xd_pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); /* .x (low half) = lo */
  return *reinterpret_cast<uint32_t *>(&v);
}
static __device__ __forceinline__ uint32_t xd_ld32s(const uint16_t *p) { return *reinterpret_cast<const uint32_t *>(p); }
/* Four 8x8 b16 matrices, transposed on the way: with X row-major [k][n] in shared memory,
 * lanes addressing row (lane&7) + ((lane>>3)&1)*8, column (lane>>4)*8 of a 16x16 block give
 * the B fragments (k, n) of two adjacent 8-wide n blocks: (r0, r1) and (r2, r3). */
static __device__ __forceinline__ void xd_ldsm_x4_trans(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3,
                                                        const void *smem_row) {
  const unsigned sa = (unsigned)__cvta_generic_to_shared(smem_row);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(sa));
}
/* Four 8x8 b16 matrices as stored (no transpose): with X row-major [n][k] in shared memory the
 * same lane addressing gives B fragments of two adjacent 8-wide n blocks, or an A fragment. */
static __device__ __forceinline__ void xd_ldsm_x4(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3,
                                                  const void *smem_row) {
  const unsigned sa = (unsigned)__cvta_generic_to_shared(smem_row);
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(sa));
}
/* The 8x8 b16 matrix whose fragment this lane holds (row g, columns 2t..2t+1), transposed:
 * the result is this lane's fragment of X^T (row g, columns 2t..2t+1 of X^T = X[2t..2t+1][g]).
 * sm_75+; lets a kernel hand a tile produced as (rows k, columns m) to a consumer that wants
 * it as an A fragment (rows m). */
static __device__ __forceinline__ uint32_t xd_movmatrix_trans(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}
/* A fragment (16 rows x 16 columns starting at column c0) of a row-major bf16 tile in shared
 * memory with row stride lds; row0 = first of the 16 rows. */
static __device__ __forceinline__ void xd_frag_a(uint32_t (&a)[4], const uint16_t *s, int lds, int row0, int c0,
                                                 int gq, int tq) {
  a[0] = xd_ld32s(s + (row0 + gq) * lds + c0 + 2 * tq);
  a[1] = xd_ld32s(s + (row0 + gq + 8) * lds + c0 + 2 * tq);
  a[2] = xd_ld32s(s + (row0 + gq) * lds + c0 + 8 + 2 * tq);
  a[3] = xd_ld32s(s + (row0 + gq + 8) * lds + c0 + 8 + 2 * tq);
}
/* 16-byte global -> shared copy without a register round trip (sm_80+); valid 0 zero-fills the
 * 16 bytes (src-size 0, nothing is read; gmem must still be a valid address). */
static __device__ __forceinline__ void xd_cp_async16(void *smem, const void *gmem, bool valid) {
  const unsigned sa = (unsigned)__cvta_generic_to_shared(smem);
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sa), "l"(gmem), "r"(n));
}
static __device__ __forceinline__ void xd_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
/* wait until at most N committed groups are still in flight */
template <int N>
static __device__ __forceinline__ void xd_cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
/* fp32 products on the tensor cores at fp32 accuracy ("3xTF32"): x = hi + lo with hi = tf32(x)
 * (10 explicit mantissa bits) and lo = tf32(x - hi) (x - hi is exact), and
 * a b ~= a_lo b_hi + a_hi b_lo + a_hi b_hi: the dropped a_lo b_lo is ~2^-22 of the product,
 * so each product is within a few fp32 roundings of the fp32 one, at tensor-core speed.
 * m16n8k8 tf32 fragments (g = lane/4, t = lane%4):
 *   A 16x8: a0 (g, t) a1 (g+8, t) a2 (g, t+4) a3 (g+8, t+4)
 *   B 8x8 : b0 (k t, n g) b1 (k t+4, n g)
 *   C 16x8: as m16n8k16's. */
static __device__ __forceinline__ void xd_tf32_split(float x, uint32_t &hi, uint32_t &lo) {
  uint32_t h, l;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(h) : "f"(x));
  const float r = x - __uint_as_float(h);
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(l) : "f"(r));
  hi = h, lo = l;
}
static __device__ __forceinline__ void xd_mma1688_tf32(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
/* c += a b in 3xTF32 (the small terms first) */
static __device__ __forceinline__ void xd_mma3xtf32(float (&c)[4], const uint32_t (&ahi)[4], const uint32_t (&alo)[4],
                                                    uint32_t bh0, uint32_t bh1, uint32_t bl0, uint32_t bl1) {
  xd_mma1688_tf32(c, alo, bh0, bh1);
  xd_mma1688_tf32(c, ahi, bl0, bl1);
  xd_mma1688_tf32(c, ahi, bh0, bh1);
}
#endif
