/* The student's small ops on the GPU, fp32 storage and math: feature maps (plain / hedgehog),
 * input/forget gate pre-activations with the soft cap, and the mixing gate, forward and
 * backward (the twins of src/ops/cpu/feature_map*, gates*, mix*; docs/student-ops.md).
 *
 * The products go through gm_run: C(m,n) (+)= alpha sum_k A(m,k) B(k,n) with element strides
 * (one of each operand's two strides 1), batched with one stride per operand, so the per-head
 * slices of token-major tensors and the transposes need no copies. gm_run maps that onto one
 * cuBLASLt fp32 matmul (CUBLAS_COMPUTE_32F: exact fp32, no TF32; C == D in place, beta 1 for
 * the accumulating gradients), with the algorithm chosen once per full geometry (sizes,
 * strides, transposes, beta, pointer alignment) and kept in the context; a fixed algorithm
 * with the context's fixed workspace gives the same bits every run (its split-K partials are
 * added in a fixed order). Where cuBLASLt offers nothing (or XD_STUDENT_OPS_SIMT=1, kept for
 * comparison) the original batched SIMT kernel k_gm runs instead: 64x64 tiles, reductions
 * over tokens split along K into partials a second kernel adds in a fixed order.
 * fp32 throughout: the CPU twins are fp32 and the tests bound the gap at 1e-5..1e-4.
 * Scratch (dz of the backwards, the stacked gate weights) lives in the context (st_ws). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include "cuda_common.cuh"
#include "cuda_mma.cuh"

/* ---- batched strided GEMM ------------------------------------------------------------------ */
typedef struct {
  const float *A;
  long long am, ak, ab; /* A(m,k) of batch z at A + (z / adiv) ab + m am + k ak */
  int adiv;
  const float *B;
  long long bk, bn, bb;
  int bdiv;
  float *C;
  long long cm, cn, cb; /* C(m,n) of batch z at C + z cb + m cm + n cn */
  int M, N, K, batch;
  float alpha;
  int accumulate; /* C += ... (else C = ...) */
} gm_desc;

#define GM_T 64
#define GM_KC 16
/* blockIdx.x: tile, blockIdx.y: batch, blockIdx.z: K split. part NULL: write C directly;
 * else part[(split * batch + z) * M * N + m * N + n] = the split's sum. */
__global__ void __launch_bounds__(256) k_gm(gm_desc g, int ksplit_len, float *part) {
  __shared__ float As[GM_KC][GM_T + 1], Bs[GM_KC][GM_T + 1];
  const int ntn = (g.N + GM_T - 1) / GM_T;
  const int m0 = (blockIdx.x / ntn) * GM_T, n0 = (blockIdx.x % ntn) * GM_T, z = blockIdx.y;
  const int k_lo = blockIdx.z * ksplit_len, k_hi = min(g.K, k_lo + ksplit_len);
  const float *A = g.A + (long long)(z / g.adiv) * g.ab, *B = g.B + (long long)(z / g.bdiv) * g.bb;
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  float acc[4][4] = {};
  for (int k0 = k_lo; k0 < k_hi; k0 += GM_KC) {
    /* element (kk, r) of each tile; consecutive threads walk the operand's unit-stride index
     * (k when its k stride is 1, else m / n) so that global loads coalesce */
    for (int i = tid; i < GM_KC * GM_T; i += 256) {
      int kk = i / GM_T, r = i % GM_T;
      if (g.ak == 1) kk = i % GM_KC, r = i / GM_KC;
      const int k = k0 + kk, m = m0 + r;
      As[kk][r] = (k < k_hi && m < g.M) ? A[m * g.am + k * g.ak] : 0.f;
    }
    for (int i = tid; i < GM_KC * GM_T; i += 256) {
      int kk = i / GM_T, r = i % GM_T;
      if (g.bk == 1) kk = i % GM_KC, r = i / GM_KC;
      const int k = k0 + kk, n = n0 + r;
      Bs[kk][r] = (k < k_hi && n < g.N) ? B[k * g.bk + n * g.bn] : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < GM_KC; kk++) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; i++) a[i] = As[kk][ty + 16 * i], b[i] = Bs[kk][tx + 16 * i];
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
      if (m >= g.M || n >= g.N) continue;
      if (part) {
        part[((size_t)blockIdx.z * g.batch + z) * g.M * g.N + (size_t)m * g.N + n] = acc[i][j];
      } else {
        float *c = g.C + (long long)z * g.cb + m * g.cm + n * g.cn;
        *c = g.accumulate ? *c + g.alpha * acc[i][j] : g.alpha * acc[i][j];
      }
    }
}

/* C (+)= alpha * sum over splits in order. */
__global__ void k_gm_reduce(gm_desc g, int nsplit, const float *part) {
  const size_t MN = (size_t)g.M * g.N, i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= MN * g.batch) return;
  const int z = (int)(i / MN), m = (int)((i % MN) / g.N), n = (int)(i % g.N);
  float acc = 0.f;
  for (int s = 0; s < nsplit; s++) acc += part[(size_t)s * g.batch * MN + i];
  float *c = g.C + (long long)z * g.cb + m * g.cm + n * g.cn;
  *c = g.accumulate ? *c + g.alpha * acc : g.alpha * acc;
}

static int gm_run_simt(xd_cuda_ctx *c, const gm_desc *g, xd_err *e) {
  const int tiles = ((g->M + GM_T - 1) / GM_T) * ((g->N + GM_T - 1) / GM_T);
  /* Split K when the output alone gives too few blocks (reductions over tokens). */
  int nsplit = 1;
  const int want = 2 * c->sm_count;
  if (tiles * g->batch < want && g->K >= 512) {
    nsplit = (want + tiles * g->batch - 1) / (tiles * g->batch);
    const int max_split = g->K / 256;
    if (nsplit > max_split) nsplit = max_split;
    if (nsplit < 1) nsplit = 1;
  }
  int klen = (g->K + nsplit - 1) / nsplit;
  klen = (klen + GM_KC - 1) / GM_KC * GM_KC;
  nsplit = (g->K + klen - 1) / klen;
  float *part = NULL;
  if (nsplit > 1)
    XD_CU(cudaMallocAsync((void **)&part, (size_t)nsplit * g->batch * g->M * g->N * sizeof(float), c->stream));
  k_gm<<<dim3((unsigned)tiles, (unsigned)g->batch, (unsigned)nsplit), 256, 0, c->stream>>>(*g, klen, part);
  XD_CU_LAUNCH("gemm");
  if (part) {
    const size_t n = (size_t)g->batch * g->M * g->N;
    k_gm_reduce<<<xd_ceil_div(n, 256), 256, 0, c->stream>>>(*g, nsplit, part);
    XD_CU_LAUNCH("gemm reduce");
    XD_CU(cudaFreeAsync(part, c->stream));
  }
  return 0;
}


/* Environment switches, read at every call (for comparisons in tests/gpu/test_gpu_student_ops):
 * XD_STUDENT_OPS_SIMT=1      the original SIMT GEMM and mix dw kernels;
 * XD_STUDENT_OPS_SIMT_RED=1  the SIMT split-K GEMM for the reductions over tokens only (K >= 512
 *                            with fewer 64x64 output tiles than SMs), cuBLASLt for the rest;
 * XD_STUDENT_OPS_DEBUG=1     print each new cuBLASLt geometry and the algorithm chosen. */
static int env_on(const char *name) {
  const char *v = getenv(name);
  return v && *v && strcmp(v, "0") != 0;
}
static int st_legacy(void) { return env_on("XD_STUDENT_OPS_SIMT"); }

/* Largest power of two (4..256 bytes) dividing the address of every batch's matrix. */
static unsigned align_of(const void *p, long long batch_stride_elems, int batch) {
  uintptr_t a = (uintptr_t)p;
  if (batch > 1) a |= (uintptr_t)(batch_stride_elems * 4);
  unsigned b = 4;
  while (b < 256 && !(a & b)) b <<= 1;
  return b;
}

/* Column-major view for cuBLASLt (row-major C [M,N] with unit column stride is C^T [N x M],
 * ld cm): C^T = B^T A^T, i.e. cuBLAS A' = B^T (m' = N rows, k), B' = A^T (k, n' = M). Returns
 * 0 when the strides fit (each operand has a unit stride and ld >= its stored rows). */
typedef struct {
  cublasOperation_t ta, tb;
  uint64_t a_rows, a_cols, b_rows, b_cols;
  int64_t lda, ldb, ldc;
} lt_view;
static int lt_map(const gm_desc *g, lt_view *v) {
  if (g->cn != 1 || g->adiv != 1 || g->bdiv != 1) return -1;
  if (g->bn == 1) v->ta = CUBLAS_OP_N, v->a_rows = g->N, v->a_cols = g->K, v->lda = g->bk;
  else if (g->bk == 1) v->ta = CUBLAS_OP_T, v->a_rows = g->K, v->a_cols = g->N, v->lda = g->bn;
  else return -1;
  if (g->ak == 1) v->tb = CUBLAS_OP_N, v->b_rows = g->K, v->b_cols = g->M, v->ldb = g->am;
  else if (g->am == 1) v->tb = CUBLAS_OP_T, v->b_rows = g->M, v->b_cols = g->K, v->ldb = g->ak;
  else return -1;
  v->ldc = g->cm;
  /* a degenerate dimension of 1 may carry any stride; cuBLASLt wants ld >= rows regardless */
  if (v->a_cols == 1 && v->lda < (int64_t)v->a_rows) v->lda = v->a_rows;
  if (v->b_cols == 1 && v->ldb < (int64_t)v->b_rows) v->ldb = v->b_rows;
  if (g->M == 1 && v->ldc < g->N) v->ldc = g->N;
  if (v->lda < (int64_t)v->a_rows || v->ldb < (int64_t)v->b_rows || v->ldc < g->N) return -1;
  return 0;
}

static int lt_layout(cublasLtMatrixLayout_t *l, uint64_t rows, uint64_t cols, int64_t ld, int batch, long long stride,
                     xd_err *e) {
  XD_CUBLAS(cublasLtMatrixLayoutCreate(l, CUDA_R_32F, rows, cols, ld));
  if (batch > 1) {
    const int32_t bc = batch;
    const int64_t st = stride;
    XD_CUBLAS(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc));
    XD_CUBLAS(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &st, sizeof st));
  }
  return 0;
}

/* 1: ran; 0: no cuBLASLt algorithm, or the SIMT kernel preferred (nothing ran, the caller falls
 * back); -1: error. */
static int gm_lt_body(xd_cuda_ctx *c, const gm_desc *g, const lt_view *v, cublasLtMatmulDesc_t *op,
                      cublasLtMatrixLayout_t *la, cublasLtMatrixLayout_t *lb, cublasLtMatrixLayout_t *lc, xd_err *e) {
  const unsigned alA = align_of(g->B, g->bb, g->batch), alB = align_of(g->A, g->ab, g->batch),
                 alC = align_of(g->C, g->cb, g->batch);
  const long long key[XD_SG_KEY] = {g->M,  g->N,  g->K,  g->batch, g->am, g->ak, g->ab, g->bk, g->bn, g->bb,
                                    g->cm, g->cn, g->cb, g->accumulate, alA, alB, alC, 0x5347, 0, 0};
  xd_sg_algo_entry *hit = NULL;
  for (int i = 0; i < XD_SG_CACHE; i++)
    if (c->sg_cache[i].valid && !memcmp(c->sg_cache[i].key, key, sizeof key)) {
      hit = &c->sg_cache[i];
      break;
    }
  if (hit && hit->valid >= 2) return 0; /* known: no algorithm, or the SIMT split-K is preferred */
  XD_CUBLAS(cublasLtMatmulDescCreate(op, CUBLAS_COMPUTE_32F, CUDA_R_32F)); /* no TF32 */
  XD_CUBLAS(cublasLtMatmulDescSetAttribute(*op, CUBLASLT_MATMUL_DESC_TRANSA, &v->ta, sizeof v->ta));
  XD_CUBLAS(cublasLtMatmulDescSetAttribute(*op, CUBLASLT_MATMUL_DESC_TRANSB, &v->tb, sizeof v->tb));
  if (lt_layout(la, v->a_rows, v->a_cols, v->lda, g->batch, g->bb, e)) return -1;
  if (lt_layout(lb, v->b_rows, v->b_cols, v->ldb, g->batch, g->ab, e)) return -1;
  if (lt_layout(lc, (uint64_t)g->N, (uint64_t)g->M, v->ldc, g->batch, g->cb, e)) return -1;
  if (!hit) {
    cublasLtMatmulPreference_t pref;
    XD_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
    cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                             &c->lt_ws_bytes, sizeof c->lt_ws_bytes);
    const uint32_t al[4] = {alA, alB, alC, alC};
    if (st == CUBLAS_STATUS_SUCCESS)
      st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al[0], 4);
    if (st == CUBLAS_STATUS_SUCCESS)
      st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al[1], 4);
    if (st == CUBLAS_STATUS_SUCCESS)
      st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al[2], 4);
    if (st == CUBLAS_STATUS_SUCCESS)
      st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al[3], 4);
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    if (st == CUBLAS_STATUS_SUCCESS)
      st = cublasLtMatmulAlgoGetHeuristic(c->lt, *op, *la, *lb, *lc, *lc, pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED) XD_CUBLAS(st);
    hit = &c->sg_cache[c->sg_cache_next];
    c->sg_cache_next = (c->sg_cache_next + 1) % XD_SG_CACHE;
    memcpy(hit->key, key, sizeof key);
    if (st != CUBLAS_STATUS_SUCCESS || found < 1) {
      hit->valid = 2;
      return 0;
    }
    hit->valid = 1, hit->algo = res.algo;
    /* A reduction over tokens with a small output (fewer 64x64 tiles than SMs, K >= 512) that
     * cuBLASLt would run without split-K (seen for the batched per-head dP = x_h^T dz_h: 32
     * CTAs looping over 4096 tokens): the SIMT kernel's split-K is faster there (1B shape, H100:
     * feature map backward 0.385 vs 0.446 ms a layer), so that geometry stays on it. */
    int splitk_num = 0;
    size_t w;
    const long long tiles = (long long)((g->M + GM_T - 1) / GM_T) * ((g->N + GM_T - 1) / GM_T) * g->batch;
    if (g->K >= 512 && tiles < c->sm_count &&
        cublasLtMatmulAlgoConfigGetAttribute(&res.algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk_num, sizeof splitk_num,
                                             &w) == CUBLAS_STATUS_SUCCESS &&
        splitk_num == 1)
      hit->valid = 3;
    if (env_on("XD_STUDENT_OPS_DEBUG")) {
      int id = -1, tile = -1, splitk = -1, red = -1, stages = -1;
      cublasLtMatmulAlgoConfigGetAttribute(&res.algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof id, &w);
      cublasLtMatmulAlgoConfigGetAttribute(&res.algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, &w);
      cublasLtMatmulAlgoConfigGetAttribute(&res.algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof splitk, &w);
      cublasLtMatmulAlgoConfigGetAttribute(&res.algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &red, sizeof red, &w);
      cublasLtMatmulAlgoConfigGetAttribute(&res.algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages, &w);
      fprintf(stderr, "[student gemm] M %d N %d K %d batch %d beta %d: cuBLASLt algo %d tile %d splitK %d "
                      "reduction %d stages %d, workspace %zu B%s\n",
              g->M, g->N, g->K, g->batch, g->accumulate, id, tile, splitk, red, stages, res.workspaceSize,
              hit->valid == 3 ? " -> SIMT split-K instead" : "");
    }
    if (hit->valid == 3) return 0;
  }
  const float alpha = g->alpha, beta = g->accumulate ? 1.f : 0.f;
  const cublasStatus_t st = cublasLtMatmul(c->lt, *op, &alpha, g->B, *la, g->A, *lb, &beta, g->C, *lc, g->C, *lc,
                                           &hit->algo, c->lt_ws, c->lt_ws_bytes, c->stream);
  if (st == CUBLAS_STATUS_NOT_SUPPORTED) { /* refused before launching: remember, fall back */
    hit->valid = 2;
    return 0;
  }
  XD_CUBLAS(st);
  return 1;
}

static int gm_run(xd_cuda_ctx *c, const gm_desc *g, xd_err *e) {
  lt_view v;
  const int red_simt = env_on("XD_STUDENT_OPS_SIMT_RED") && g->K >= 512 &&
                       (long long)((g->M + GM_T - 1) / GM_T) * ((g->N + GM_T - 1) / GM_T) * g->batch < c->sm_count;
  if (!st_legacy() && !red_simt && lt_map(g, &v) == 0) {
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, lc = NULL;
    const int rc = gm_lt_body(c, g, &v, &op, &la, &lb, &lc, e);
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (op) cublasLtMatmulDescDestroy(op);
    if (rc) return rc < 0 ? -1 : 0;
  }
  return gm_run_simt(c, g, e);
}

/* The context's scratch of the student ops, at least `bytes` (256-byte aligned). Growing frees
 * the old buffer (cudaFree waits for the work queued on it). */
static int st_scratch(xd_cuda_ctx *c, size_t bytes, float **out, xd_err *e) {
  if (bytes > c->st_ws_bytes) {
    c->ws_gen++;
    if (c->st_ws) XD_CU(cudaFree(c->st_ws));
    c->st_ws = NULL, c->st_ws_bytes = 0;
    XD_CU(cudaMalloc(&c->st_ws, bytes));
    c->st_ws_bytes = bytes;
  }
  *out = (float *)c->st_ws;
  return 0;
}
static size_t round64(size_t n) { return (n + 63) / 64 * 64; }

static gm_desc gm_make(int M, int N, int K, int batch) {
  gm_desc g;
  memset(&g, 0, sizeof g);
  g.M = M, g.N = N, g.K = K, g.batch = batch, g.adiv = 1, g.bdiv = 1, g.alpha = 1.f;
  return g;
}

/* ---- feature maps ---------------------------------------------------------------------------- */
static __device__ __forceinline__ float warp_max(float x) {
  for (int o = 16; o; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
static __device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
/* In-place softmax of each row's halves (one warp per row of d_phi): phi holds x P in the
 * first dp columns; hedgehog writes -xP into the second half first. */
__global__ void k_fm_softmax(float *phi, long long rows, int dphi, int dp, int hedgehog) {
  const long long r = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  float *y = phi + r * dphi;
  if (hedgehog) {
    for (int j = lane; j < dp; j += 32) y[dp + j] = -y[j];
    __syncwarp();
  }
  for (int half = 0; half <= hedgehog; half++) {
    float *z = y + half * dp, mx = -INFINITY, s = 0.f;
    for (int j = lane; j < dp; j += 32) mx = fmaxf(mx, z[j]);
    mx = warp_max(mx);
    for (int j = lane; j < dp; j += 32) {
      const float ex = expf(z[j] - mx);
      z[j] = ex;
      s += ex;
    }
    const float inv = 1.f / warp_sum(s);
    for (int j = lane; j < dp; j += 32) z[j] *= inv;
  }
}
/* dz = phi (dphi - sum(dphi phi)) per half; the hedgehog's second half enters with a minus. */
__global__ void k_fm_dz(float *dz, const float *phi, const float *dphi, long long rows, int dph, int dp, int hedgehog) {
  const long long r = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  const float *y = phi + r * dph, *g = dphi + r * dph;
  float *z = dz + r * dp;
  float a = 0.f, b = 0.f;
  for (int j = lane; j < dp; j += 32) a += g[j] * y[j];
  a = warp_sum(a);
  if (hedgehog) {
    for (int j = lane; j < dp; j += 32) b += g[dp + j] * y[dp + j];
    b = warp_sum(b);
  }
  for (int j = lane; j < dp; j += 32) {
    float v = y[j] * (g[j] - a);
    if (hedgehog) v -= y[dp + j] * (g[dp + j] - b);
    z[j] = v;
  }
}

/* ---- fused softmax feature-map backward, d = d_phi = 64 (branch ewise) -------------------------
 * One kernel instead of dz pass + dx GEMM + dP split-K GEMM (+ its reduce): a 256-thread block
 * owns one head and FMB_SPAN consecutive tokens, in tiles of 64 tokens: dz = phi (dphi -
 * sum(dphi phi)) into shared memory (the dz kernel's arithmetic and order: bit-identical dz),
 * the x tile beside it, then dx_tile = dz P_h^T (P_h^T staged once per block) written (or
 * added), and dP_h's partial += x_tile^T dz in registers; the partial goes to scratch, and
 * k_fm_dp_reduce adds the spans in order (deterministic, a function of the shape). phi, dphi
 * and x are read once, dx written once. Thread (ty, tx) = (tid / 16, tid % 16) owns rows
 * ty + 16 r (r < 4) and the column quad 4 tx of both products. */
#define FMB_SPAN 256
#define FMB_LD 68 /* padded row of the 64-wide shared tiles (16-byte aligned rows) */
__global__ void __launch_bounds__(256, 4) k_fm_bw_fused(float *dx, float *part, const float *dphi, const float *x,
                                                     const float *P, const float *phi, int N, int Hx, int write) {
  extern __shared__ float4 fmb_sh4[];
  float *PT = reinterpret_cast<float *>(fmb_sh4), *dz = PT + 64 * FMB_LD, *xs = dz + 64 * FMB_LD;
  const int h = blockIdx.y, span = blockIdx.x, tid = threadIdx.x, lane = tid & 31, wid = tid >> 5;
  const int ty = tid >> 4, tx = tid & 15;
  const int n0 = span * FMB_SPAN, n1 = min(N, n0 + FMB_SPAN);
  const float *Ph = P + (size_t)h * 64 * 64;
  for (int e = tid; e < 64 * 64; e += 256) PT[(e % 64) * FMB_LD + e / 64] = Ph[e]; /* PT[j][i] = P[i][j] */
  float pacc[4][4] = {};
  for (int t0 = n0; t0 < n1; t0 += 64) {
    const int nt = min(64, n1 - t0);
    /* dz rows: warp w, rows 8w..8w+7; lane owns columns lane and lane + 32 (k_fm_dz's order) */
    for (int rr = 0; rr < 8; rr++) {
      const int t = wid * 8 + rr;
      float z0 = 0.f, z1 = 0.f;
      if (t < nt) {
        const size_t ro = ((size_t)(t0 + t) * Hx + h) * 64;
        const float y0 = phi[ro + lane], y1 = phi[ro + lane + 32], g0 = dphi[ro + lane], g1 = dphi[ro + lane + 32];
        float a = 0.f;
        a += g0 * y0;
        a += g1 * y1;
        a = warp_sum(a);
        z0 = y0 * (g0 - a), z1 = y1 * (g1 - a);
      }
      dz[t * FMB_LD + lane] = z0, dz[t * FMB_LD + lane + 32] = z1;
    }
#pragma unroll
    for (int q = 0; q < 4; q++) {
      const int idx = tid + 256 * q, t = idx >> 4, c4 = idx & 15;
      float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
      if (t < nt) v = *reinterpret_cast<const float4 *>(x + ((size_t)(t0 + t) * Hx + h) * 64 + 4 * c4);
      *reinterpret_cast<float4 *>(xs + t * FMB_LD + 4 * c4) = v;
    }
    __syncthreads();
    { /* dx rows t = ty + 16 r, columns 4 tx..4 tx + 3: sum over j in order */
      float acc[4][4] = {};
#pragma unroll 4
      for (int j = 0; j < 64; j += 4) {
        float4 a[4], b[4];
#pragma unroll
        for (int r = 0; r < 4; r++) a[r] = *reinterpret_cast<const float4 *>(dz + (ty + 16 * r) * FMB_LD + j);
#pragma unroll
        for (int jj = 0; jj < 4; jj++) b[jj] = *reinterpret_cast<const float4 *>(PT + (j + jj) * FMB_LD + 4 * tx);
#pragma unroll
        for (int r = 0; r < 4; r++) {
          const float av[4] = {a[r].x, a[r].y, a[r].z, a[r].w};
#pragma unroll
          for (int jj = 0; jj < 4; jj++) {
            acc[r][0] = fmaf(av[jj], b[jj].x, acc[r][0]);
            acc[r][1] = fmaf(av[jj], b[jj].y, acc[r][1]);
            acc[r][2] = fmaf(av[jj], b[jj].z, acc[r][2]);
            acc[r][3] = fmaf(av[jj], b[jj].w, acc[r][3]);
          }
        }
      }
#pragma unroll
      for (int r = 0; r < 4; r++) {
        const int t = ty + 16 * r;
        if (t >= nt) continue;
        float4 *o = reinterpret_cast<float4 *>(dx + ((size_t)(t0 + t) * Hx + h) * 64 + 4 * tx);
        float4 v = make_float4(acc[r][0], acc[r][1], acc[r][2], acc[r][3]);
        if (!write) {
          const float4 old = *o;
          v.x = old.x + v.x, v.y = old.y + v.y, v.z = old.z + v.z, v.w = old.w + v.w;
        }
        *o = v;
      }
    }
    /* dP partial rows i = ty + 16 r, columns 4 tx..: sum over the tile's tokens in order (the
     * zero rows past nt add nothing) */
#pragma unroll 4
    for (int t = 0; t < 64; t++) {
      const float4 b = *reinterpret_cast<const float4 *>(dz + t * FMB_LD + 4 * tx);
#pragma unroll
      for (int r = 0; r < 4; r++) {
        const float a = xs[t * FMB_LD + ty + 16 * r];
        pacc[r][0] = fmaf(a, b.x, pacc[r][0]);
        pacc[r][1] = fmaf(a, b.y, pacc[r][1]);
        pacc[r][2] = fmaf(a, b.z, pacc[r][2]);
        pacc[r][3] = fmaf(a, b.w, pacc[r][3]);
      }
    }
    __syncthreads();
  }
  float *pp = part + ((size_t)h * gridDim.x + span) * 64 * 64;
#pragma unroll
  for (int r = 0; r < 4; r++)
    *reinterpret_cast<float4 *>(pp + (ty + 16 * r) * 64 + 4 * tx) =
        make_float4(pacc[r][0], pacc[r][1], pacc[r][2], pacc[r][3]);
}
/* dP[h][e] += sum over the spans in order. */
__global__ void k_fm_dp_reduce(float *dP, const float *part, int nspan, int Hx) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= Hx * 4096) return;
  const int h = i >> 12, e = i & 4095;
  const float *p = part + (size_t)h * nspan * 4096 + e;
  float acc = 0.f;
  for (int s = 0; s < nspan; s++) acc += p[(size_t)s * 4096];
  dP[i] += acc;
}
#define FMB_SMEM (3 * 64 * FMB_LD * (int)sizeof(float))

/* ---- feature maps on the tensor cores, d = d_phi = 64 (3xTF32: fp32 accuracy) -----------------
 * The fused SIMT kernels above (XD_STUDENT_OPS_FM_SIMT=1) spend their time on fp32 FMAs and
 * load latency; in 3xTF32 (cuda_mma.cuh) the products cost less than the loads. Each warp owns
 * 16-token strips of one head; the contraction index is permuted to suit the loads (a sum is a
 * sum: only the order of the fp32 additions changes). P_h's B fragments, split into tf32 hi /
 * lo, are laid out once per call by k_fm_frags in fragment order (scratch, 32 KB a head) and
 * copied into shared memory by each block with 16-byte cp.async (one 8-byte shared load per
 * fragment, no bank conflicts). */
#define FMT_THREADS 128
#define FMT_SPAN FMB_SPAN     /* tokens per block (16 strips of 16, 4 per warp) */
static_assert(FMB_SPAN == 256, "k_fm_fwd_tc: 16 strips of 16 tokens a block");
#define FMT_FRAG (8 * 8 * 32) /* uint2 fragments of one 64x64 matrix: [k-step][n-tile][lane] */
#define FMT_FRAG_BYTES (2 * FMT_FRAG * sizeof(uint2)) /* hi then lo, one head */
/* fr[h][0 / 1][e]: P_h's hi / lo B fragments. transpose 0 (forward): B[k][n] = P[k][n], the
 * k-slots of k-step ks = 2p + s being rows 16p + 4t + 2s (slot t) and + 1 (slot t + 4);
 * transpose 1 (backward): B[k = j][n = i] = P[i][j], the k-slots of k-step ks being
 * j = 8 ks + 2t and + 1 (the columns a C fragment holds, so dz's accumulator registers are
 * the A fragment as they are). One block a head. */
/* Block b lays out head b of the maps' heads in order: P0's H0 heads, then P1's. */
__global__ void __launch_bounds__(256) k_fm_frags(uint2 *fr, const float *P0, int H0, const float *P1, int transpose) {
  __shared__ float Ps[64 * 65];
  const int b = blockIdx.x;
  const float *Ph = b < H0 ? P0 + (size_t)b * 4096 : P1 + (size_t)(b - H0) * 4096;
  for (int e = threadIdx.x; e < 4096; e += 256) Ps[(e >> 6) * 65 + (e & 63)] = Ph[e];
  __syncthreads();
  uint2 *hi = fr + (size_t)blockIdx.x * 2 * FMT_FRAG, *lo = hi + FMT_FRAG;
  for (int e = threadIdx.x; e < FMT_FRAG; e += 256) {
    const int lane = e & 31, nt = (e >> 5) & 7, ks = e >> 8, g = lane >> 2, t = lane & 3;
    float v0, v1;
    if (!transpose) {
      const int k0 = 16 * (ks >> 1) + 4 * t + 2 * (ks & 1);
      v0 = Ps[k0 * 65 + 8 * nt + g], v1 = Ps[(k0 + 1) * 65 + 8 * nt + g];
    } else {
      const int i = 8 * nt + g, j0 = 8 * ks + 2 * t;
      v0 = Ps[i * 65 + j0], v1 = Ps[i * 65 + j0 + 1];
    }
    uint32_t h0, l0, h1, l1;
    xd_tf32_split(v0, h0, l0);
    xd_tf32_split(v1, h1, l1);
    hi[e] = make_uint2(h0, h1), lo[e] = make_uint2(l0, l1);
  }
}
/* head h's fragments (32 KB) into shared memory: 16 cp.async of 16 bytes a thread, in flight
 * together; the caller waits (xd_cp_async_wait) and synchronises */
static __device__ __forceinline__ void fmt_stage(uint2 *sh, const uint2 *fr, int h) {
  const uint4 *src = reinterpret_cast<const uint4 *>(fr + (size_t)h * 2 * FMT_FRAG);
  uint4 *dst = reinterpret_cast<uint4 *>(sh);
#pragma unroll
  for (int q = 0; q < (int)(FMT_FRAG_BYTES / 16 / FMT_THREADS); q++)
    xd_cp_async16(dst + threadIdx.x + q * FMT_THREADS, src + threadIdx.x + q * FMT_THREADS, true);
  xd_cp_async_commit();
}

/* acc[nt] += A B over one k-step: a = the A fragment (rows g, g + 8; slots t, t + 4), B = k-step
 * ks's staged hi / lo fragments, all 8 n-tiles */
static __device__ __forceinline__ void fmt_kstep(float (&acc)[8][4], const float (&a)[4], const uint2 *Bh,
                                                 const uint2 *Bl, int ks, int lane) {
  uint32_t ah[4], al[4];
#pragma unroll
  for (int r = 0; r < 4; r++) xd_tf32_split(a[r], ah[r], al[r]);
#pragma unroll
  for (int nt = 0; nt < 8; nt++) {
    const uint2 bh = Bh[(ks * 8 + nt) * 32 + lane], bl = Bl[(ks * 8 + nt) * 32 + lane];
    xd_mma3xtf32(acc[nt], ah, al, bh.x, bh.y, bl.x, bl.y);
  }
}

/* phi = softmax(x P_h) per token row. Thread (g, t) of a strip loads float4 columns 16p + 4t of
 * rows g and g + 8, which are the A fragments of k-steps 2p (.x, .y) and 2p + 1 (.z, .w) (the
 * next strip's loads issued before this one's products); the accumulator holds columns
 * 8 nt + 2t, + 1 of both rows, so a row's softmax is over the 4 lanes of its group. */
/* The feature maps one tensor-core launch covers: map 0's H0 heads, then map 1's H1 (0: one
 * map). Block row y takes map sel = y >= H0 and its head y - sel H0; the fragments of all heads
 * lie in that order (k_fm_frags). out is phi (forward) or dx (backward); part [H][nspan][4096]
 * the dP partials of each map. */
struct fmt_maps {
  float *out0, *out1, *part0, *part1;
  const float *x0, *x1, *phi0, *phi1, *dphi0, *dphi1;
  int H0, H1;
};

static __device__ __forceinline__ void fmt_load_strip(float4 (&xa)[4], float4 (&xb)[4], const float *x, int r0, int N,
                                                      int Hx, int h, int g, int t) {
  const int ta = r0 + g, tb = r0 + g + 8;
#pragma unroll
  for (int p = 0; p < 4; p++) {
    xa[p] = ta < N ? *reinterpret_cast<const float4 *>(x + ((size_t)ta * Hx + h) * 64 + 16 * p + 4 * t)
                   : make_float4(0.f, 0.f, 0.f, 0.f);
    xb[p] = tb < N ? *reinterpret_cast<const float4 *>(x + ((size_t)tb * Hx + h) * 64 + 16 * p + 4 * t)
                   : make_float4(0.f, 0.f, 0.f, 0.f);
  }
}
__global__ void __launch_bounds__(FMT_THREADS) k_fm_fwd_tc(fmt_maps m, const uint2 *fr, int N) {
  __shared__ __align__(16) uint2 Bh[2 * FMT_FRAG];
  const uint2 *Bl = Bh + FMT_FRAG;
  const int y = blockIdx.y, sel = y >= m.H0, h = sel ? y - m.H0 : y, Hx = sel ? m.H1 : m.H0;
  float *phi = sel ? m.out1 : m.out0;
  const float *x = sel ? m.x1 : m.x0;
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  fmt_stage(Bh, fr, y);
  const int base = blockIdx.x * FMT_SPAN;
  float4 xa[4], xb[4];
  fmt_load_strip(xa, xb, x, base + 16 * wid, N, Hx, h, g, t);
  xd_cp_async_wait<0>();
  __syncthreads();
  for (int st = wid; st < FMT_SPAN / 16; st += FMT_THREADS / 32) {
    const int r0 = base + 16 * st;
    if (r0 >= N) break;
    float4 ca[4], cb[4];
#pragma unroll
    for (int p = 0; p < 4; p++) ca[p] = xa[p], cb[p] = xb[p];
    if (st + FMT_THREADS / 32 < FMT_SPAN / 16) fmt_load_strip(xa, xb, x, r0 + 16 * (FMT_THREADS / 32), N, Hx, h, g, t);
    float acc[8][4] = {};
#pragma unroll
    for (int ks = 0; ks < 8; ks++) {
      const float4 va = ca[ks >> 1], vb = cb[ks >> 1];
      const float a[4] = {(ks & 1) ? va.z : va.x, (ks & 1) ? vb.z : vb.x, (ks & 1) ? va.w : va.y,
                          (ks & 1) ? vb.w : vb.y};
      fmt_kstep(acc, a, Bh, Bl, ks, lane);
    }
#pragma unroll
    for (int half = 0; half < 2; half++) { /* row g (c0, c1), then row g + 8 (c2, c3) */
      float mx = acc[0][2 * half];
#pragma unroll
      for (int nt = 0; nt < 8; nt++) mx = fmaxf(mx, fmaxf(acc[nt][2 * half], acc[nt][2 * half + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      float ex[16], sm = 0.f;
#pragma unroll
      for (int nt = 0; nt < 8; nt++) {
        ex[2 * nt] = expf(acc[nt][2 * half] - mx), ex[2 * nt + 1] = expf(acc[nt][2 * half + 1] - mx);
        sm += ex[2 * nt] + ex[2 * nt + 1];
      }
      sm += __shfl_xor_sync(0xffffffffu, sm, 1);
      sm += __shfl_xor_sync(0xffffffffu, sm, 2);
      const float inv = 1.f / sm;
      const int tok = r0 + g + 8 * half;
      if (tok < N) {
        float *o = phi + ((size_t)tok * Hx + h) * 64 + 2 * t;
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
          *reinterpret_cast<float2 *>(o + 8 * nt) = make_float2(ex[2 * nt] * inv, ex[2 * nt + 1] * inv);
      }
    }
  }
}

/* Backward: dz = phi (dphi - sum(dphi phi)) in accumulator layout (rows g, g + 8 of the warp's
 * strip, columns 8 nt + 2t, + 1), dx_strip (+)= dz P_h^T with dz's registers as the A fragments;
 * dz and x (copied by cp.async, issued first) go to shared memory for dP_h's partial +=
 * x_tile^T dz_tile (warp w: rows i = 16 w .. 16 w + 15, all 64 columns, over the tile's 64
 * tokens), which k_fm_dp_reduce adds over the spans in order, as for k_fm_bw_fused
 * (FMT_SPAN == FMB_SPAN: the same partials buffer). */
#define FMT_LD 72 /* padded row: the fragment loads of 8 x 4 lanes hit 32 different banks */
#define FMT_BW_SMEM ((int)FMT_FRAG_BYTES + 2 * 64 * FMT_LD * (int)sizeof(float))
__global__ void __launch_bounds__(FMT_THREADS) k_fm_bw_tc(fmt_maps m, const uint2 *fr, int N, int write) {
  extern __shared__ uint4 fmt_sh[];
  const uint2 *Bh = reinterpret_cast<const uint2 *>(fmt_sh), *Bl = Bh + FMT_FRAG;
  float *xs = reinterpret_cast<float *>(fmt_sh + FMT_FRAG_BYTES / 16), *dzs = xs + 64 * FMT_LD;
  const int y = blockIdx.y, sel = y >= m.H0, h = sel ? y - m.H0 : y, Hx = sel ? m.H1 : m.H0;
  float *dx = sel ? m.out1 : m.out0, *part = sel ? m.part1 : m.part0;
  const float *x = sel ? m.x1 : m.x0, *phi = sel ? m.phi1 : m.phi0, *dphi = sel ? m.dphi1 : m.dphi0;
  const int span = blockIdx.x, lane = threadIdx.x & 31, wid = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  const int n0 = span * FMT_SPAN, n1 = min(N, n0 + FMT_SPAN);
  fmt_stage(reinterpret_cast<uint2 *>(fmt_sh), fr, y);
  float pacc[8][4] = {};
  for (int t0 = n0; t0 < n1; t0 += 64) {
    const int ra = 16 * wid + g, rb = ra + 8; /* the thread's two rows of the tile */
    const int ta = t0 + ra, tb = t0 + rb;
#pragma unroll
    for (int q = 0; q < 8; q++) { /* the warp's 16 rows of x: 16 x 16 bytes a row, 2 rows a pass */
      const int r = 16 * wid + 2 * q + (lane >> 4), c4 = lane & 15, tok = t0 + r;
      xd_cp_async16(xs + r * FMT_LD + 4 * c4, x + ((size_t)(tok < n1 ? tok : n0) * Hx + h) * 64 + 4 * c4, tok < n1);
    }
    xd_cp_async_commit();
    float dz[8][4];
    {
      float2 y[2][8], gr[2][8];
#pragma unroll
      for (int half = 0; half < 2; half++) {
        const int tok = half ? tb : ta;
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
          if (tok < n1) {
            const size_t o = ((size_t)tok * Hx + h) * 64 + 8 * nt + 2 * t;
            y[half][nt] = *reinterpret_cast<const float2 *>(phi + o);
            gr[half][nt] = *reinterpret_cast<const float2 *>(dphi + o);
          } else {
            y[half][nt] = gr[half][nt] = make_float2(0.f, 0.f);
          }
        }
      }
#pragma unroll
      for (int half = 0; half < 2; half++) {
        float a = 0.f;
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
          a = fmaf(gr[half][nt].x, y[half][nt].x, a);
          a = fmaf(gr[half][nt].y, y[half][nt].y, a);
        }
        a += __shfl_xor_sync(0xffffffffu, a, 1);
        a += __shfl_xor_sync(0xffffffffu, a, 2);
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
          dz[nt][2 * half] = y[half][nt].x * (gr[half][nt].x - a);
          dz[nt][2 * half + 1] = y[half][nt].y * (gr[half][nt].y - a);
          *reinterpret_cast<float2 *>(dzs + (half ? rb : ra) * FMT_LD + 8 * nt + 2 * t) =
              make_float2(dz[nt][2 * half], dz[nt][2 * half + 1]);
        }
      }
    }
    xd_cp_async_wait<0>();
    __syncthreads(); /* the fragments (first tile), xs and dzs complete */
    { /* dx rows (ra, rb), columns i = 8 nt + 2t, + 1: sum over j */
      float acc[8][4] = {};
#pragma unroll
      for (int ks = 0; ks < 8; ks++) {
        const float a[4] = {dz[ks][0], dz[ks][2], dz[ks][1], dz[ks][3]};
        fmt_kstep(acc, a, Bh, Bl, ks, lane);
      }
#pragma unroll
      for (int half = 0; half < 2; half++) {
        const int tok = half ? tb : ta;
        if (tok >= n1) continue;
        float *o = dx + ((size_t)tok * Hx + h) * 64 + 2 * t;
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
          float2 v = make_float2(acc[nt][2 * half], acc[nt][2 * half + 1]);
          if (!write) {
            const float2 old = *reinterpret_cast<const float2 *>(o + 8 * nt);
            v.x = old.x + v.x, v.y = old.y + v.y;
          }
          *reinterpret_cast<float2 *>(o + 8 * nt) = v;
        }
      }
    }
    /* dP partial rows i = 16 wid + g (+ 8), columns j = 8 nt + 2t, + 1: A = x^T (i, token),
     * B = dz (token, j), k-steps of 8 tokens (the zero rows past n1 add nothing) */
#pragma unroll 2
    for (int ks = 0; ks < 8; ks++) {
      const float *xr = xs + (8 * ks + t) * FMT_LD + 16 * wid + g;
      const float a[4] = {xr[0], xr[8], xr[4 * FMT_LD], xr[4 * FMT_LD + 8]};
      uint32_t ah[4], al[4];
#pragma unroll
      for (int r = 0; r < 4; r++) xd_tf32_split(a[r], ah[r], al[r]);
      const float *zr = dzs + (8 * ks + t) * FMT_LD + g;
#pragma unroll
      for (int nt = 0; nt < 8; nt++) {
        uint32_t bh0, bl0, bh1, bl1;
        xd_tf32_split(zr[8 * nt], bh0, bl0);
        xd_tf32_split(zr[4 * FMT_LD + 8 * nt], bh1, bl1);
        xd_mma3xtf32(pacc[nt], ah, al, bh0, bh1, bl0, bl1);
      }
    }
    __syncthreads();
  }
  float *pp = part + ((size_t)h * gridDim.x + span) * 4096;
#pragma unroll
  for (int nt = 0; nt < 8; nt++) {
    const int i = 16 * wid + g, j = 8 * nt + 2 * t;
    *reinterpret_cast<float2 *>(pp + i * 64 + j) = make_float2(pacc[nt][0], pacc[nt][1]);
    *reinterpret_cast<float2 *>(pp + (i + 8) * 64 + j) = make_float2(pacc[nt][2], pacc[nt][3]);
  }
}

/* The tensor-core kernels take map s (d = d_phi = 64 softmax, 16-byte aligned rows) unless a
 * switch asks for the kernels before them: XD_STUDENT_OPS_UNFUSED=1 (the backward's three-pass
 * path, the forward's product + softmax) or XD_STUDENT_OPS_FM_SIMT=1 (the fused fp32 SIMT
 * kernels); both read at every call, kept for comparisons. */
static bool fmt_ok(const feature_map_shape *s, const void *const *pp, int np) {
  if (s->hedgehog || s->d != 64 || s->d_phi != 64 || s->Hx > 65535 || st_legacy() || env_on("XD_STUDENT_OPS_UNFUSED") ||
      env_on("XD_STUDENT_OPS_FM_SIMT"))
    return false;
  for (int i = 0; i < np; i++)
    if ((uintptr_t)pp[i] & 15) return false;
  return true;
}
static bool fmt_fwd_ok(const xd_cuda_fm_fwd *a) {
  const void *pp[] = {a->phi, a->x, a->P};
  return fmt_ok(&a->s, pp, 3);
}
static bool fmt_bwd_ok(const xd_cuda_fm_bwd *a) {
  const void *pp[] = {a->dx, a->x, a->phi, a->dphi};
  return fmt_ok(&a->s, pp, 4);
}

/* One tensor-core launch (and one fragment launch) for map a and, b non-NULL, map b (same N):
 * every block does what it does in a's or b's own launch, so the results are those of two. */
static int fmt_forward(xd_cuda_ctx *c, const xd_cuda_fm_fwd *a, const xd_cuda_fm_fwd *b, xd_err *e) {
  const int N = a->s.N, H0 = a->s.Hx, H1 = b ? b->s.Hx : 0;
  XD_ARG(H0 + H1 <= 65535 && (!b || b->s.N == N));
  uint2 *fr = NULL;
  if (st_scratch(c, (size_t)(H0 + H1) * FMT_FRAG_BYTES, reinterpret_cast<float **>(&fr), e)) return -1;
  k_fm_frags<<<(unsigned)(H0 + H1), 256, 0, c->stream>>>(fr, a->P, H0, b ? b->P : NULL, 0);
  XD_CU_LAUNCH("feature map fragments");
  fmt_maps m;
  memset(&m, 0, sizeof m);
  m.out0 = a->phi, m.x0 = a->x, m.H0 = H0;
  if (b) m.out1 = b->phi, m.x1 = b->x, m.H1 = H1;
  k_fm_fwd_tc<<<dim3(xd_ceil_div((size_t)N, FMT_SPAN), (unsigned)(H0 + H1)), FMT_THREADS, 0, c->stream>>>(m, fr, N);
  XD_CU_LAUNCH("feature map forward (tensor cores)");
  return 0;
}
static int fmt_backward(xd_cuda_ctx *c, int flags, const xd_cuda_fm_bwd *a, const xd_cuda_fm_bwd *b, xd_err *e) {
  const int N = a->s.N, H0 = a->s.Hx, H1 = b ? b->s.Hx : 0, nspan = (N + FMB_SPAN - 1) / FMB_SPAN;
  XD_ARG(H0 + H1 <= 65535 && (!b || b->s.N == N));
  float *part = NULL;
  const size_t per_head = (size_t)nspan * 4096, part_bytes = (size_t)(H0 + H1) * per_head * sizeof(float);
  if (st_scratch(c, part_bytes + (size_t)(H0 + H1) * FMT_FRAG_BYTES, &part, e)) return -1;
  uint2 *fr = reinterpret_cast<uint2 *>(reinterpret_cast<unsigned char *>(part) + part_bytes);
  k_fm_frags<<<(unsigned)(H0 + H1), 256, 0, c->stream>>>(fr, a->P, H0, b ? b->P : NULL, 1);
  XD_CU_LAUNCH("feature map fragments");
  fmt_maps m;
  memset(&m, 0, sizeof m);
  m.out0 = a->dx, m.part0 = part, m.x0 = a->x, m.phi0 = a->phi, m.dphi0 = a->dphi, m.H0 = H0;
  if (b) m.out1 = b->dx, m.part1 = part + (size_t)H0 * per_head, m.x1 = b->x, m.phi1 = b->phi, m.dphi1 = b->dphi, m.H1 = H1;
  XD_CU(cudaFuncSetAttribute(k_fm_bw_tc, cudaFuncAttributeMaxDynamicSharedMemorySize, FMT_BW_SMEM));
  k_fm_bw_tc<<<dim3((unsigned)nspan, (unsigned)(H0 + H1)), FMT_THREADS, FMT_BW_SMEM, c->stream>>>(
      m, fr, N, (flags & XD_CUDA_GRAD_WRITE) != 0);
  XD_CU_LAUNCH("feature map backward (tensor cores)");
  k_fm_dp_reduce<<<xd_ceil_div((size_t)H0 * 4096, 256), 256, 0, c->stream>>>(a->dP, m.part0, nspan, H0);
  XD_CU_LAUNCH("feature map dP reduce");
  if (b) {
    k_fm_dp_reduce<<<xd_ceil_div((size_t)H1 * 4096, 256), 256, 0, c->stream>>>(b->dP, m.part1, nspan, H1);
    XD_CU_LAUNCH("feature map dP reduce");
  }
  return 0;
}

/* The fused fp32 SIMT backward (XD_STUDENT_OPS_FM_SIMT=1), or 1 when it does not apply. */
static int fm_bw_simt(xd_cuda_ctx *c, int flags, float *dx, float *dP, const float *dphi, const float *x,
                      const float *P, const float *phi, const feature_map_shape *s, xd_err *e) {
  if (s->hedgehog || s->d != 64 || s->d_phi != 64 || st_legacy() || env_on("XD_STUDENT_OPS_UNFUSED") ||
      !env_on("XD_STUDENT_OPS_FM_SIMT") || (((uintptr_t)dx | (uintptr_t)x | (uintptr_t)phi | (uintptr_t)dphi) & 15))
    return 1;
  const int N = s->N, Hx = s->Hx, nspan = (N + FMB_SPAN - 1) / FMB_SPAN;
  XD_ARG(Hx <= 65535);
  float *part = NULL;
  if (st_scratch(c, (size_t)Hx * nspan * 4096 * sizeof(float), &part, e)) return -1;
  XD_CU(cudaFuncSetAttribute(k_fm_bw_fused, cudaFuncAttributeMaxDynamicSharedMemorySize, FMB_SMEM));
  k_fm_bw_fused<<<dim3((unsigned)nspan, (unsigned)Hx), 256, FMB_SMEM, c->stream>>>(
      dx, part, dphi, x, P, phi, N, Hx, (flags & XD_CUDA_GRAD_WRITE) != 0);
  XD_CU_LAUNCH("feature map backward (fused)");
  k_fm_dp_reduce<<<xd_ceil_div((size_t)Hx * 4096, 256), 256, 0, c->stream>>>(dP, part, nspan, Hx);
  XD_CU_LAUNCH("feature map dP reduce");
  return 0;
}

#define FM_ARGS(s)                                                                                              \
  XD_ARG((s)->N > 0 && (s)->Hx > 0 && (s)->d > 0 && (s)->d_phi > 0 && (!(s)->hedgehog || (s)->d_phi % 2 == 0))

/* Fused softmax feature-map forward, d = d_phi = 64 (branch ewise): a 256-thread block owns one
 * head and 64 tokens: x tile and P_h in shared memory, z = x P_h (thread (ty, tx) rows ty + 16 r,
 * column quad 4 tx, the sum over i in order), then each row's softmax over its 16 threads
 * (half-warp shuffles) and one float4 store per row quad: x read once, phi written once (was a
 * product into phi, then a softmax pass reading and writing it again). */
__global__ void __launch_bounds__(256) k_fm_fwd_fused(float *phi, const float *x, const float *P, int N, int Hx) {
  __shared__ __align__(16) float Ps[64 * FMB_LD], xs[64 * FMB_LD];
  const int h = blockIdx.y, t0 = blockIdx.x * 64, tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
  const int nt = min(64, N - t0);
  const float *Ph = P + (size_t)h * 64 * 64;
#pragma unroll
  for (int q = 0; q < 4; q++) {
    const int idx = tid + 256 * q, r = idx >> 4, c4 = idx & 15;
    *reinterpret_cast<float4 *>(Ps + r * FMB_LD + 4 * c4) = *reinterpret_cast<const float4 *>(Ph + r * 64 + 4 * c4);
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (r < nt) v = *reinterpret_cast<const float4 *>(x + ((size_t)(t0 + r) * Hx + h) * 64 + 4 * c4);
    *reinterpret_cast<float4 *>(xs + r * FMB_LD + 4 * c4) = v;
  }
  __syncthreads();
  float acc[4][4] = {};
#pragma unroll 4
  for (int i = 0; i < 64; i += 4) {
    float4 a[4], b[4];
#pragma unroll
    for (int r = 0; r < 4; r++) a[r] = *reinterpret_cast<const float4 *>(xs + (ty + 16 * r) * FMB_LD + i);
#pragma unroll
    for (int ii = 0; ii < 4; ii++) b[ii] = *reinterpret_cast<const float4 *>(Ps + (i + ii) * FMB_LD + 4 * tx);
#pragma unroll
    for (int r = 0; r < 4; r++) {
      const float av[4] = {a[r].x, a[r].y, a[r].z, a[r].w};
#pragma unroll
      for (int ii = 0; ii < 4; ii++) {
        acc[r][0] = fmaf(av[ii], b[ii].x, acc[r][0]);
        acc[r][1] = fmaf(av[ii], b[ii].y, acc[r][1]);
        acc[r][2] = fmaf(av[ii], b[ii].z, acc[r][2]);
        acc[r][3] = fmaf(av[ii], b[ii].w, acc[r][3]);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < 4; r++) {
    float mx = fmaxf(fmaxf(acc[r][0], acc[r][1]), fmaxf(acc[r][2], acc[r][3]));
#pragma unroll
    for (int o = 8; o; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float ex[4], sm = 0.f;
#pragma unroll
    for (int c = 0; c < 4; c++) ex[c] = expf(acc[r][c] - mx), sm += ex[c];
#pragma unroll
    for (int o = 8; o; o >>= 1) sm += __shfl_xor_sync(0xffffffffu, sm, o);
    const float inv = 1.f / sm;
    const int t = ty + 16 * r;
    if (t < nt)
      *reinterpret_cast<float4 *>(phi + ((size_t)(t0 + t) * Hx + h) * 64 + 4 * tx) =
          make_float4(ex[0] * inv, ex[1] * inv, ex[2] * inv, ex[3] * inv);
  }
}

extern "C" int xd_cuda_feature_map_forward(xd_cuda_ctx *c, float *phi, const float *x, const float *P,
                                           const feature_map_shape *s, xd_err *e) {
  FM_ARGS(s);
  const int N = s->N, Hx = s->Hx, d = s->d, dphi = s->d_phi, dp = feature_map_p_cols(s);
  if (!s->hedgehog && d == 64 && dphi == 64 && !st_legacy() && !env_on("XD_STUDENT_OPS_UNFUSED") &&
      !(((uintptr_t)phi | (uintptr_t)x | (uintptr_t)P) & 15) && Hx <= 65535) {
    if (env_on("XD_STUDENT_OPS_FM_SIMT")) {
      k_fm_fwd_fused<<<dim3(xd_ceil_div((size_t)N, 64), (unsigned)Hx), 256, 0, c->stream>>>(phi, x, P, N, Hx);
      XD_CU_LAUNCH("feature map forward (fused)");
      return 0;
    }
    const xd_cuda_fm_fwd a = {phi, x, P, *s};
    return fmt_forward(c, &a, NULL, e);
  }
  /* z_h [N, dp] = x_h [N, d] P_h [d, dp] straight into phi's first dp columns of each head */
  gm_desc g = gm_make(N, dp, d, Hx);
  g.A = x, g.am = (long long)Hx * d, g.ak = 1, g.ab = d;
  g.B = P, g.bk = dp, g.bn = 1, g.bb = (long long)d * dp;
  g.C = phi, g.cm = (long long)Hx * dphi, g.cn = 1, g.cb = dphi;
  if (gm_run(c, &g, e)) return -1;
  const long long rows = (long long)N * Hx;
  k_fm_softmax<<<xd_ceil_div((size_t)rows * 32, 256), 256, 0, c->stream>>>(phi, rows, dphi, dp, s->hedgehog);
  XD_CU_LAUNCH("feature map softmax");
  return 0;
}

extern "C" int xd_cuda_feature_map_backward_ex(xd_cuda_ctx *c, int flags, float *dx, float *dP, const float *dphi,
                                               const float *x, const float *P, const float *phi, const
                                               feature_map_shape *s, xd_err *e) {
  FM_ARGS(s);
  XD_ARG((flags & ~XD_CUDA_GRAD_WRITE) == 0);
  const int N = s->N, Hx = s->Hx, d = s->d, dph = s->d_phi, dp = feature_map_p_cols(s);
  const long long rows = (long long)N * Hx;
  {
    const xd_cuda_fm_bwd a = {dx, dP, dphi, x, P, phi, *s};
    if (fmt_bwd_ok(&a)) return fmt_backward(c, flags, &a, NULL, e);
    const int rc = fm_bw_simt(c, flags, dx, dP, dphi, x, P, phi, s, e);
    if (rc <= 0) return rc;
  }
  float *dz = NULL;
  if (st_scratch(c, (size_t)rows * dp * sizeof(float), &dz, e)) return -1;
  k_fm_dz<<<xd_ceil_div((size_t)rows * 32, 256), 256, 0, c->stream>>>(dz, phi, dphi, rows, dph, dp, s->hedgehog);
  XD_CU_LAUNCH("feature map dz");
  { /* dx_h (+)= dz_h P_h^T */
    gm_desc g = gm_make(N, d, dp, Hx);
    g.A = dz, g.am = (long long)Hx * dp, g.ak = 1, g.ab = dp;
    g.B = P, g.bk = 1, g.bn = dp, g.bb = (long long)d * dp;
    g.C = dx, g.cm = (long long)Hx * d, g.cn = 1, g.cb = d, g.accumulate = !(flags & XD_CUDA_GRAD_WRITE);
    if (gm_run(c, &g, e)) return -1;
  }
  { /* dP_h += x_h^T dz_h (a reduction over the N tokens) */
    gm_desc g = gm_make(d, dp, N, Hx);
    g.A = x, g.am = 1, g.ak = (long long)Hx * d, g.ab = d;
    g.B = dz, g.bk = (long long)Hx * dp, g.bn = 1, g.bb = dp;
    g.C = dP, g.cm = dp, g.cn = 1, g.cb = (long long)d * dp, g.accumulate = 1;
    if (gm_run(c, &g, e)) return -1;
  }
  return 0;
}

extern "C" int xd_cuda_feature_map_forward_pair(xd_cuda_ctx *c, const xd_cuda_fm_fwd *a, const xd_cuda_fm_fwd *b,
                                                xd_err *e) {
  XD_ARG(a && b);
  FM_ARGS(&a->s);
  FM_ARGS(&b->s);
  if (fmt_fwd_ok(a) && fmt_fwd_ok(b) && a->s.N == b->s.N && a->s.Hx + b->s.Hx <= 65535) return fmt_forward(c, a, b, e);
  if (xd_cuda_feature_map_forward(c, a->phi, a->x, a->P, &a->s, e)) return -1;
  return xd_cuda_feature_map_forward(c, b->phi, b->x, b->P, &b->s, e);
}

extern "C" int xd_cuda_feature_map_backward_pair(xd_cuda_ctx *c, int flags, const xd_cuda_fm_bwd *a,
                                                 const xd_cuda_fm_bwd *b, xd_err *e) {
  XD_ARG(a && b);
  FM_ARGS(&a->s);
  FM_ARGS(&b->s);
  XD_ARG((flags & ~XD_CUDA_GRAD_WRITE) == 0);
  if (fmt_bwd_ok(a) && fmt_bwd_ok(b) && a->s.N == b->s.N && a->s.Hx + b->s.Hx <= 65535)
    return fmt_backward(c, flags, a, b, e);
  if (xd_cuda_feature_map_backward_ex(c, flags, a->dx, a->dP, a->dphi, a->x, a->P, a->phi, &a->s, e)) return -1;
  return xd_cuda_feature_map_backward_ex(c, flags, b->dx, b->dP, b->dphi, b->x, b->P, b->phi, &b->s, e);
}

extern "C" int xd_cuda_feature_map_backward(xd_cuda_ctx *c, float *dx, float *dP, const float *dphi, const float *x,
                                            const float *P, const float *phi, const feature_map_shape *s, xd_err *e) {
  return xd_cuda_feature_map_backward_ex(c, 0, dx, dP, dphi, x, P, phi, s, e);
}

/* ---- gates ------------------------------------------------------------------------------------ */
/* Both gates in one product: the weights stacked as W2 = [w_i; w_f] [2H, D] (a copy into the
 * context scratch, 2 H D floats), y2 [N, 2H] = x W2^T reads x once; the cap kernel splits y2
 * into ig / fg. The backward likewise: dz2 [N, 2H], dx += dz2 W2 (one pass over dx),
 * dW2 = dz2^T x (one pass over x) into scratch, then dw_i / dw_f += its halves. */
__global__ void k_gate_cap2(float *ig, float *fg, const float *y2, const float *b_i, const float *b_f, long long n,
                            int H, float cap) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; /* over N * 2H */
  if (i >= n) return;
  const long long t = i / (2 * H);
  const int j = (int)(i % (2 * H)), h = j % H, f = j >= H;
  float z = y2[i] + (f ? b_f : b_i)[h];
  if (cap > 0.f) z = cap * tanhf(z / cap);
  (f ? fg : ig)[t * H + h] = z;
}
/* dz2[n, j] = dy (1 - (y/c)^2), j < H from (dig, ig), else from (dfg, fg). */
__global__ void k_gate_dz2(float *dz2, const float *dig, const float *ig, const float *dfg, const float *fg,
                           long long n, int H, float cap) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const long long t = i / (2 * H);
  const int j = (int)(i % (2 * H)), h = j % H, f = j >= H;
  const long long src = t * H + h;
  const float y = (f ? fg : ig)[src], dy = (f ? dfg : dig)[src];
  const float q = cap > 0.f ? y / cap : 0.f;
  dz2[i] = dy * (1.f - q * q);
}
/* dw_i += dW2[:H], dw_f += dW2[H:]; then db_i += db2[:H], db_f += db2[H:] */
__global__ void k_gate_dw_add(float *dw_i, float *dw_f, float *db_i, float *db_f, const float *dw2, const float *db2,
                              long long hd, int H) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < hd) dw_i[i] += dw2[i];
  else if (i < 2 * hd) dw_f[i - hd] += dw2[i];
  else if (i < 2 * hd + H) db_i[i - 2 * hd] += db2[i - 2 * hd];
  else if (i < 2 * hd + 2 * H) db_f[i - 2 * hd - H] += db2[i - 2 * hd];
}

static int gates_stack_w(xd_cuda_ctx *c, float *w2, const float *w_i, const float *w_f, size_t hd, xd_err *e) {
  XD_CU(cudaMemcpyAsync(w2, w_i, hd * sizeof(float), cudaMemcpyDeviceToDevice, c->stream));
  XD_CU(cudaMemcpyAsync(w2 + hd, w_f, hd * sizeof(float), cudaMemcpyDeviceToDevice, c->stream));
  return 0;
}

extern "C" int xd_cuda_gates_forward(xd_cuda_ctx *c, float *ig, float *fg, const float *x, const float *w_i,
                                     const float *b_i, const float *w_f, const float *b_f, const gates_shape *s,
                                     xd_err *e) {
  XD_ARG(s->N > 0 && s->D > 0 && s->H > 0);
  const int N = s->N, D = s->D, H = s->H;
  const size_t hd = (size_t)H * D, n2 = (size_t)N * 2 * H;
  float *w2 = NULL;
  if (st_scratch(c, (round64(2 * hd) + n2) * sizeof(float), &w2, e)) return -1;
  float *y2 = w2 + round64(2 * hd);
  if (gates_stack_w(c, w2, w_i, w_f, hd, e)) return -1;
  gm_desc g = gm_make(N, 2 * H, D, 1); /* y2 = x W2^T */
  g.A = x, g.am = D, g.ak = 1;
  g.B = w2, g.bk = 1, g.bn = D;
  g.C = y2, g.cm = 2 * H, g.cn = 1;
  if (gm_run(c, &g, e)) return -1;
  k_gate_cap2<<<xd_ceil_div(n2, 256), 256, 0, c->stream>>>(ig, fg, y2, b_i, b_f, (long long)n2, H, s->cap);
  XD_CU_LAUNCH("gate cap");
  return 0;
}

extern "C" int xd_cuda_gates_backward_ex(xd_cuda_ctx *c, int flags, float *dx, float *dw_i, float *db_i, float *dw_f,
                                         float *db_f, const float *dig, const float *dfg, const float *x, const float
                                         *w_i, const float *w_f, const float *ig, const float *fg, const gates_shape
                                         *s, xd_err *e) {
  XD_ARG(s->N > 0 && s->D > 0 && s->H > 0);
  XD_ARG((flags & ~XD_CUDA_GRAD_WRITE) == 0);
  const int N = s->N, D = s->D, H = s->H;
  const size_t hd = (size_t)H * D, n2 = (size_t)N * 2 * H;
  float *w2 = NULL;
  if (st_scratch(c, (2 * round64(2 * hd) + round64(2 * (size_t)H) + n2) * sizeof(float), &w2, e)) return -1;
  float *dw2 = w2 + round64(2 * hd), *db2 = dw2 + round64(2 * hd), *dz2 = db2 + round64(2 * (size_t)H);
  if (gates_stack_w(c, w2, w_i, w_f, hd, e)) return -1;
  k_gate_dz2<<<xd_ceil_div(n2, 256), 256, 0, c->stream>>>(dz2, dig, ig, dfg, fg, (long long)n2, H, s->cap);
  XD_CU_LAUNCH("gate dz");
  gm_desc g = gm_make(N, D, 2 * H, 1); /* dx (+)= dz2 W2 */
  g.A = dz2, g.am = 2 * H, g.ak = 1;
  g.B = w2, g.bk = D, g.bn = 1;
  g.C = dx, g.cm = D, g.cn = 1, g.accumulate = !(flags & XD_CUDA_GRAD_WRITE);
  if (gm_run(c, &g, e)) return -1;
  gm_desc g2 = gm_make(2 * H, D, N, 1); /* dW2 = dz2^T x */
  g2.A = dz2, g2.am = 1, g2.ak = 2 * H;
  g2.B = x, g2.bk = D, g2.bn = 1;
  g2.C = dw2, g2.cm = D, g2.cn = 1;
  if (gm_run(c, &g2, e)) return -1;
  if (xd_cuda_colsum_f32(c, db2, dz2, N, 2 * H, 0, e)) return -1; /* db2 = sum_n dz2 (coalesced row splits) */
  k_gate_dw_add<<<xd_ceil_div(2 * hd + 2 * H, 256), 256, 0, c->stream>>>(dw_i, dw_f, db_i, db_f, dw2, db2,
                                                                          (long long)hd, H);
  XD_CU_LAUNCH("gate dw, db add");
  return 0;
}

extern "C" int xd_cuda_gates_backward(xd_cuda_ctx *c, float *dx, float *dw_i, float *db_i, float *dw_f, float *db_f,
                                      const float *dig, const float *dfg, const float *x, const float *w_i,
                                      const float *w_f, const float *ig, const float *fg, const gates_shape *s,
                                      xd_err *e) {
  return xd_cuda_gates_backward_ex(c, 0, dx, dw_i, db_i, dw_f, db_f, dig, dfg, x, w_i, w_f, ig, fg, s, e);
}

/* ---- mixing gate ------------------------------------------------------------------------------ */
/* One warp per (n, h): o = sigmoid([q, k, v] . w_o^h + b_o^h), out = o hg + (1 - o) hl. */
__device__ __forceinline__ void mix_put(float *p, float v) { *p = v; }
__device__ __forceinline__ void mix_put(uint16_t *p, float v) { *p = xd_f2bf(v); }
__device__ __forceinline__ void mix_put2(float *p, float a, float b) { *reinterpret_cast<float2 *>(p) = make_float2(a, b); }
__device__ __forceinline__ void mix_put2(uint16_t *p, float a, float b) {
  *reinterpret_cast<uint32_t *>(p) = (uint32_t)xd_f2bf(a) | (uint32_t)xd_f2bf(b) << 16;
}
/* h_local in fp32 or bf16 (the attention forward's output as it is: its values, no copy) */
__device__ __forceinline__ float mix_ld(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float mix_ld(const uint16_t *p, size_t i) { return __uint_as_float((uint32_t)p[i] << 16); }
__device__ __forceinline__ float2 mix_ld2(const float *p, size_t i) { return *reinterpret_cast<const float2 *>(p + i); }
__device__ __forceinline__ float2 mix_ld2(const uint16_t *p, size_t i) {
  const uint32_t u = *reinterpret_cast<const uint32_t *>(p + i);
  return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
}
template <typename TO, typename TL>
__global__ void k_mix_fwd(TO *out, float *o, const float *q, const float *k, const float *v, const float *w_o,
                          const float *b_o, const float *hg, const TL *hl, int N, int H, int G, int d) {
  const long long r = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (r >= (long long)N * H) return;
  const int n = (int)(r / H), h = (int)(r % H), rep = H / G;
  const size_t qi = ((size_t)n * H + h) * d, ki = ((size_t)n * G + h / rep) * d;
  const float *w = w_o + (size_t)h * 3 * d;
  float z = 0.f;
  for (int i = lane; i < d; i += 32) z += q[qi + i] * w[i] + k[ki + i] * w[d + i] + v[ki + i] * w[2 * d + i];
  z = warp_sum(z) + b_o[h];
  const float g = 1.f / (1.f + expf(-z));
  if (lane == 0) o[r] = g;
  for (int i = lane; i < d; i += 32) mix_put(out + qi + i, g * hg[qi + i] + (1.f - g) * mix_ld(hl, qi + i));
}
/* One warp per (n, KV head g), its rep query heads in order (they share the k/v rows):
 * dz = (dout . (hg - hl)) o (1 - o); dhg += o dout; dhl += (1 - o) dout; d{q,k,v} += dz w.
 * write: dhg, dhl, dq written, dk / dv written by the group's first head (then +=). */
template <typename TL>
__global__ void k_mix_bwd(float *dq, float *dk, float *dv, float *dhg, float *dhl, float *dz_out, const float *dout,
                          const float *o, const float *w_o, const float *hg, const TL *hl, int N, int H, int G,
                          int d, int write) {
  const long long r = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (r >= (long long)N * G) return;
  const int n = (int)(r / G), gg = (int)(r % G), rep = H / G;
  const size_t ki = ((size_t)n * G + gg) * d;
  for (int h = gg * rep; h < (gg + 1) * rep; h++) {
    const size_t qi = ((size_t)n * H + h) * d;
    const float g = o[(size_t)n * H + h];
    const float *w = w_o + (size_t)h * 3 * d;
    float dg = 0.f;
    for (int i = lane; i < d; i += 32) {
      const float dd = dout[qi + i];
      dg += dd * (hg[qi + i] - mix_ld(hl, qi + i));
      if (write) {
        dhg[qi + i] = g * dd;
        dhl[qi + i] = (1.f - g) * dd;
      } else {
        dhg[qi + i] += g * dd;
        dhl[qi + i] += (1.f - g) * dd;
      }
    }
    const float z = warp_sum(dg) * g * (1.f - g);
    if (lane == 0) dz_out[(size_t)n * H + h] = z;
    const bool first = write && h == gg * rep;
    for (int i = lane; i < d; i += 32) {
      if (write) dq[qi + i] = z * w[i];
      else dq[qi + i] += z * w[i];
      if (first) {
        dk[ki + i] = z * w[d + i];
        dv[ki + i] = z * w[2 * d + i];
      } else {
        dk[ki + i] += z * w[d + i];
        dv[ki + i] += z * w[2 * d + i];
      }
    }
  }
}
/* Partial sums over a slice of tokens: part[split][h][i] = sum_n dz[n,h] row_i(n, h), with
 * row = [q_raw[n,h,:], k_raw[n,g,:], v_raw[n,g,:], 1] (the 1 gives db_o). */
__global__ void k_mix_dw(float *part, const float *dz, const float *q, const float *k, const float *v, int N, int H,
                         int G, int d, int per) {
  const int h = blockIdx.x, split = blockIdx.y, rep = H / G, W = 3 * d + 1;
  const int n_lo = split * per, n_hi = min(N, n_lo + per);
  for (int i = threadIdx.x; i < W; i += blockDim.x) {
    float acc = 0.f;
    for (int n = n_lo; n < n_hi; n++) {
      const float z = dz[(size_t)n * H + h];
      float x;
      if (i < d) x = q[((size_t)n * H + h) * d + i];
      else if (i < 2 * d) x = k[((size_t)n * G + h / rep) * d + i - d];
      else if (i < 3 * d) x = v[((size_t)n * G + h / rep) * d + i - 2 * d];
      else x = 1.f;
      acc += z * x;
    }
    part[((size_t)split * H + h) * W + i] = acc;
  }
}
/* The same partials, one block per (KV group g, token slice): thread (hl, i) owns output i of
 * query head h = g rep + hl for the q, k and v parts at once, so every token's q rows of the
 * group (rep d contiguous floats) and its k / v rows are read once, coalesced; thread i == 0
 * of each head also sums dz for db_o. Tokens in order within the slice. */
__global__ void __launch_bounds__(256) k_mix_dw2(float *part, const float *dz, const float *q, const float *k,
                                                 const float *v, int N, int H, int G, int d, int per) {
  const int gg = blockIdx.x, split = blockIdx.y, rep = H / G, W = 3 * d + 1;
  const int n_lo = split * per, n_hi = min(N, n_lo + per);
  for (int o = threadIdx.x; o < rep * d; o += blockDim.x) {
    const int hl = o / d, i = o % d, h = gg * rep + hl;
    float aq = 0.f, ak = 0.f, av = 0.f, ab = 0.f;
    const float *qp = q + (size_t)h * d + i, *kp = k + (size_t)gg * d + i, *vp = v + (size_t)gg * d + i;
    const float *zp = dz + h;
#pragma unroll 4
    for (int n = n_lo; n < n_hi; n++) {
      const float z = zp[(size_t)n * H];
      aq = fmaf(z, qp[(size_t)n * H * d], aq);
      ak = fmaf(z, kp[(size_t)n * G * d], ak);
      av = fmaf(z, vp[(size_t)n * G * d], av);
      ab += z;
    }
    float *pp = part + ((size_t)split * H + h) * W;
    pp[i] = aq, pp[d + i] = ak, pp[2 * d + i] = av;
    if (i == 0) pp[3 * d] = ab;
  }
}
__global__ void k_mix_dw_reduce(float *dw_o, float *db_o, const float *part, int nsplit, int H, int d) {
  const int W = 3 * d + 1, i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= H * W) return;
  float acc = 0.f;
  for (int s = 0; s < nsplit; s++) acc += part[(size_t)s * H * W + i];
  const int h = i / W, j = i % W;
  if (j < 3 * d) dw_o[(size_t)h * 3 * d + j] += acc;
  else db_o[h] += acc;
}

/* ---- head dim 64: one warp per (token, KV group), lane = element pair (branch ewise) ----------
 * The group's REP query heads share the k / v rows: they are loaded once, every load of the
 * token is issued before the REP dot products (independent warp sums), float2 accesses.
 * Forward: the same per-element formulas as k_mix_fwd (the dot in another order). */
template <typename TO, typename TL, int REP>
__global__ void __launch_bounds__(256) k_mix_fwd64(TO *out, float *o, const float *q, const float *k, const float *v,
                                                   const float *w_o, const float *b_o, const float *hg,
                                                   const TL *hl, int N, int G) {
  const long long r = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31, i = 2 * lane, H = G * REP;
  if (r >= (long long)N * G) return;
  const int n = (int)(r / G), g = (int)(r % G);
  const size_t ki = ((size_t)n * G + g) * 64 + i;
  const float2 kv = *reinterpret_cast<const float2 *>(k + ki), vv = *reinterpret_cast<const float2 *>(v + ki);
  float2 qv[REP], gv[REP], lv[REP];
  float z[REP];
#pragma unroll
  for (int j = 0; j < REP; j++) {
    const size_t qi = ((size_t)n * H + g * REP + j) * 64 + i;
    qv[j] = *reinterpret_cast<const float2 *>(q + qi);
    gv[j] = *reinterpret_cast<const float2 *>(hg + qi);
    lv[j] = mix_ld2(hl, qi);
  }
#pragma unroll
  for (int j = 0; j < REP; j++) {
    const float *w = w_o + (size_t)(g * REP + j) * 192 + i;
    const float2 wq = *reinterpret_cast<const float2 *>(w), wk = *reinterpret_cast<const float2 *>(w + 64),
                 wv = *reinterpret_cast<const float2 *>(w + 128);
    z[j] = qv[j].x * wq.x + kv.x * wk.x + vv.x * wv.x;
    z[j] += qv[j].y * wq.y + kv.y * wk.y + vv.y * wv.y;
  }
#pragma unroll
  for (int j = 0; j < REP; j++) z[j] = warp_sum(z[j]);
#pragma unroll
  for (int j = 0; j < REP; j++) {
    const int h = g * REP + j;
    const float gg = 1.f / (1.f + expf(-(z[j] + b_o[h])));
    if (lane == 0) o[(size_t)n * H + h] = gg;
    const size_t qi = ((size_t)n * H + h) * 64 + i;
    mix_put2(out + qi, gg * gv[j].x + (1.f - gg) * lv[j].x, gg * gv[j].y + (1.f - gg) * lv[j].y);
  }
}

/* Backward with the dw_o / db_o reduction fused in: a block of 8 warps owns (KV group g, slice
 * of MIXB_SPAN tokens); warp w takes tokens w, w + 8, ... of the slice; per token the k_mix_bwd
 * outputs (dz = (dout . (hg - hl)) o (1 - o); dhg, dhl, dq written or added; dk / dv from the
 * group's heads in head order, the first head writing in write mode) and, in registers, the
 * partial sums z [q_h, k_g, v_g, 1] of dw_o / db_o; the 8 warps' partials are added in warp order
 * into part[slice][h][3d + 1] (k_mix_dw_reduce adds the slices in order): no dz buffer and no
 * second pass over q / k / v. Deterministic, a function of the shape. */
#define MIXB_SPAN 64
template <typename TL, int REP>
__global__ void __launch_bounds__(256) k_mix_bwd64(float *dq, float *dk, float *dv, float *dhg, float *dhl, float *part,
                                                   const float *dout, const float *o, const float *q, const float *k,
                                                   const float *v, const float *w_o, const float *hg, const TL *hl,
                                                   int N, int G, int write) {
  __shared__ float red[8][REP][193];
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, i = 2 * lane, H = G * REP;
  const int g = blockIdx.x, slice = blockIdx.y;
  float2 wq[REP], wk[REP], wv[REP];
#pragma unroll
  for (int j = 0; j < REP; j++) {
    const float *w = w_o + (size_t)(g * REP + j) * 192 + i;
    wq[j] = *reinterpret_cast<const float2 *>(w);
    wk[j] = *reinterpret_cast<const float2 *>(w + 64);
    wv[j] = *reinterpret_cast<const float2 *>(w + 128);
  }
  float2 aq[REP], ak[REP], av[REP];
  float ab[REP];
#pragma unroll
  for (int j = 0; j < REP; j++) aq[j] = ak[j] = av[j] = make_float2(0.f, 0.f), ab[j] = 0.f;
  const int t1 = min(N, (slice + 1) * MIXB_SPAN);
  for (int n = slice * MIXB_SPAN + wid; n < t1; n += 8) {
    const size_t ki = ((size_t)n * G + g) * 64 + i;
    const float2 kv = *reinterpret_cast<const float2 *>(k + ki), vv = *reinterpret_cast<const float2 *>(v + ki);
    float2 dkv = make_float2(0.f, 0.f), dvv = make_float2(0.f, 0.f);
    if (!write) dkv = *reinterpret_cast<const float2 *>(dk + ki), dvv = *reinterpret_cast<const float2 *>(dv + ki);
    float2 dd[REP], gv[REP], lv[REP], qv[REP];
    float og[REP], dg[REP];
#pragma unroll
    for (int j = 0; j < REP; j++) {
      const size_t qi = ((size_t)n * H + g * REP + j) * 64 + i;
      dd[j] = *reinterpret_cast<const float2 *>(dout + qi);
      gv[j] = *reinterpret_cast<const float2 *>(hg + qi);
      lv[j] = mix_ld2(hl, qi);
      qv[j] = *reinterpret_cast<const float2 *>(q + qi);
      og[j] = o[(size_t)n * H + g * REP + j];
    }
#pragma unroll
    for (int j = 0; j < REP; j++) {
      dg[j] = dd[j].x * (gv[j].x - lv[j].x);
      dg[j] += dd[j].y * (gv[j].y - lv[j].y);
    }
#pragma unroll
    for (int j = 0; j < REP; j++) dg[j] = warp_sum(dg[j]);
#pragma unroll
    for (int j = 0; j < REP; j++) {
      const float gg = og[j], z = dg[j] * gg * (1.f - gg);
      const size_t qi = ((size_t)n * H + g * REP + j) * 64 + i;
      float2 a = make_float2(gg * dd[j].x, gg * dd[j].y), b = make_float2((1.f - gg) * dd[j].x, (1.f - gg) * dd[j].y);
      float2 c = make_float2(z * wq[j].x, z * wq[j].y);
      if (!write) {
        const float2 a0 = *reinterpret_cast<const float2 *>(dhg + qi), b0 = *reinterpret_cast<const float2 *>(dhl + qi),
                     c0 = *reinterpret_cast<const float2 *>(dq + qi);
        a.x = a0.x + a.x, a.y = a0.y + a.y, b.x = b0.x + b.x, b.y = b0.y + b.y, c.x = c0.x + c.x, c.y = c0.y + c.y;
      }
      *reinterpret_cast<float2 *>(dhg + qi) = a;
      *reinterpret_cast<float2 *>(dhl + qi) = b;
      *reinterpret_cast<float2 *>(dq + qi) = c;
      dkv.x += z * wk[j].x, dkv.y += z * wk[j].y;
      dvv.x += z * wv[j].x, dvv.y += z * wv[j].y;
      aq[j].x += z * qv[j].x, aq[j].y += z * qv[j].y;
      ak[j].x += z * kv.x, ak[j].y += z * kv.y;
      av[j].x += z * vv.x, av[j].y += z * vv.y;
      ab[j] += z;
    }
    *reinterpret_cast<float2 *>(dk + ki) = dkv;
    *reinterpret_cast<float2 *>(dv + ki) = dvv;
  }
#pragma unroll
  for (int j = 0; j < REP; j++) {
    red[wid][j][i] = aq[j].x, red[wid][j][i + 1] = aq[j].y;
    red[wid][j][64 + i] = ak[j].x, red[wid][j][64 + i + 1] = ak[j].y;
    red[wid][j][128 + i] = av[j].x, red[wid][j][128 + i + 1] = av[j].y;
    if (lane == 0) red[wid][j][192] = ab[j];
  }
  __syncthreads();
  for (int e = threadIdx.x; e < REP * 193; e += 256) {
    const int j = e / 193, c = e % 193;
    float t = red[0][j][c];
#pragma unroll
    for (int w = 1; w < 8; w++) t += red[w][j][c];
    part[((size_t)slice * H + g * REP + j) * 193 + c] = t;
  }
}

#define MIX_ARGS(s) XD_ARG((s)->N > 0 && (s)->G > 0 && (s)->H % (s)->G == 0 && (s)->d > 0)

/* The head-dim-64 kernels apply (and XD_STUDENT_OPS_SIMT / _UNFUSED are off): REP = H / G in
 * {1, 2, 4} (the backward's shared partials of REP = 8 would not fit 48 KB), 8-byte aligned rows. */
static int mix64_ok(const mix_shape *s, const void *const *ptrs, int np) {
  const int rep = s->H / s->G;
  if (s->d != 64 || (rep != 1 && rep != 2 && rep != 4) || st_legacy() || env_on("XD_STUDENT_OPS_UNFUSED"))
    return 0;
  for (int j = 0; j < np; j++)
    if ((uintptr_t)ptrs[j] & 7) return 0;
  return 1;
}
template <typename TO, typename TL>
static int mix_fwd64_launch(xd_cuda_ctx *c, TO *out, float *o, const float *q, const float *k, const float *v,
                            const float *w_o, const float *b_o, const float *hg, const TL *hl, const mix_shape *s,
                            xd_err *e) {
  const unsigned blocks = xd_ceil_div((size_t)s->N * s->G * 32, 256);
  switch (s->H / s->G) {
  case 1: k_mix_fwd64<TO, TL, 1><<<blocks, 256, 0, c->stream>>>(out, o, q, k, v, w_o, b_o, hg, hl, s->N, s->G); break;
  case 2: k_mix_fwd64<TO, TL, 2><<<blocks, 256, 0, c->stream>>>(out, o, q, k, v, w_o, b_o, hg, hl, s->N, s->G); break;
  default: k_mix_fwd64<TO, TL, 4><<<blocks, 256, 0, c->stream>>>(out, o, q, k, v, w_o, b_o, hg, hl, s->N, s->G); break;
  }
  XD_CU_LAUNCH("mix forward (d 64)");
  return 0;
}

/* out fp32 or bf16, h_local fp32 or bf16: the d-64 kernel where it applies (out in pairs: 8-byte
 * aligned fp32, 4-byte aligned bf16), else one warp per (n, h). */
template <typename TO, typename TL>
static int mix_forward_run(xd_cuda_ctx *c, TO *out, float *o, const float *q_raw, const float *k_raw,
                           const float *v_raw, const float *w_o, const float *b_o, const float *h_global,
                           const TL *h_local, const mix_shape *s, xd_err *e) {
  MIX_ARGS(s);
  {
    const void *pp[] = {q_raw, k_raw, v_raw, w_o, h_global, h_local};
    if (mix64_ok(s, pp, 6) && !((uintptr_t)out & (2 * sizeof(TO) - 1)))
      return mix_fwd64_launch(c, out, o, q_raw, k_raw, v_raw, w_o, b_o, h_global, h_local, s, e);
  }
  const size_t rows = (size_t)s->N * s->H;
  k_mix_fwd<TO, TL><<<xd_ceil_div(rows * 32, 256), 256, 0, c->stream>>>(out, o, q_raw, k_raw, v_raw, w_o, b_o,
                                                                         h_global, h_local, s->N, s->H, s->G, s->d);
  XD_CU_LAUNCH("mix forward");
  return 0;
}

extern "C" int xd_cuda_mix_forward(xd_cuda_ctx *c, float *out, float *o, const float *q_raw, const float *k_raw,
                                   const float *v_raw, const float *w_o, const float *b_o, const float *h_global,
                                   const float *h_local, const mix_shape *s, xd_err *e) {
  return mix_forward_run(c, out, o, q_raw, k_raw, v_raw, w_o, b_o, h_global, h_local, s, e);
}

extern "C" int xd_cuda_mix_forward_bf16(xd_cuda_ctx *c, uint16_t *out, float *o, const float *q_raw, const float *k_raw,
                                        const float *v_raw, const float *w_o, const float *b_o, const float *h_global,
                                        const float *h_local, const mix_shape *s, xd_err *e) {
  return mix_forward_run(c, out, o, q_raw, k_raw, v_raw, w_o, b_o, h_global, h_local, s, e);
}

extern "C" int xd_cuda_mix_forward_hl16(xd_cuda_ctx *c, float *out, float *o, const float *q_raw, const float *k_raw,
                                        const float *v_raw, const float *w_o, const float *b_o, const float *h_global,
                                        const uint16_t *h_local, const mix_shape *s, xd_err *e) {
  return mix_forward_run(c, out, o, q_raw, k_raw, v_raw, w_o, b_o, h_global, h_local, s, e);
}

extern "C" int xd_cuda_mix_forward_bf16_hl16(xd_cuda_ctx *c, uint16_t *out, float *o, const float *q_raw,
                                             const float *k_raw, const float *v_raw, const float *w_o,
                                             const float *b_o, const float *h_global, const uint16_t *h_local,
                                             const mix_shape *s, xd_err *e) {
  return mix_forward_run(c, out, o, q_raw, k_raw, v_raw, w_o, b_o, h_global, h_local, s, e);
}

template <typename TL>
static int mix_backward_run(xd_cuda_ctx *c, int flags, float *dq_raw, float *dk_raw, float *dv_raw, float *dw_o,
                            float *db_o, float *dh_global, float *dh_local, const float *dout, const float *o,
                            const float *q_raw, const float *k_raw, const float *v_raw, const float *w_o,
                            const float *h_global, const TL *h_local, const mix_shape *s, xd_err *e) {
  MIX_ARGS(s);
  XD_ARG((flags & ~XD_CUDA_GRAD_WRITE) == 0);
  {
    const void *pp[] = {dq_raw, dk_raw, dv_raw, dh_global, dh_local, dout, q_raw, k_raw, v_raw, w_o, h_global, h_local};
    if (mix64_ok(s, pp, 12)) {
      const int N = s->N, H = s->H, G = s->G, nslice = (N + MIXB_SPAN - 1) / MIXB_SPAN;
      XD_ARG(nslice <= 65535);
      float *part = NULL;
      if (st_scratch(c, (size_t)nslice * H * 193 * sizeof(float), &part, e)) return -1;
      const dim3 grid((unsigned)G, (unsigned)nslice);
      const int wr = (flags & XD_CUDA_GRAD_WRITE) != 0;
#define MIXB(R) k_mix_bwd64<TL, R><<<grid, 256, 0, c->stream>>>(dq_raw, dk_raw, dv_raw, dh_global, dh_local, part, dout, \
                                                                  o, q_raw, k_raw, v_raw, w_o, h_global, h_local, N, G, wr)
      switch (H / G) {
      case 1: MIXB(1); break;
      case 2: MIXB(2); break;
      default: MIXB(4); break;
      }
#undef MIXB
      XD_CU_LAUNCH("mix backward (d 64, fused dw)");
      k_mix_dw_reduce<<<xd_ceil_div((size_t)H * 193, 256), 256, 0, c->stream>>>(dw_o, db_o, part, nslice, H, 64);
      XD_CU_LAUNCH("mix dw reduce");
      return 0;
    }
  }
  const int N = s->N, H = s->H, G = s->G, d = s->d, legacy = st_legacy();
  /* slices of tokens: the legacy kernel's blocks are (head, slice), the new one's (group, slice) */
  const int units = legacy ? H : G, blocks = legacy ? 2 * c->sm_count : 4 * c->sm_count, min_per = legacy ? 64 : 32;
  int nsplit = (blocks + units - 1) / units;
  if (nsplit > (N + min_per - 1) / min_per) nsplit = (N + min_per - 1) / min_per;
  if (nsplit < 1) nsplit = 1;
  const int per = (N + nsplit - 1) / nsplit;
  nsplit = (N + per - 1) / per;
  const size_t W = 3 * (size_t)d + 1;
  float *ws = NULL; /* dz [N, H], then part [nsplit, H, W] */
  if (st_scratch(c, (round64((size_t)N * H) + (size_t)nsplit * H * W) * sizeof(float), &ws, e)) return -1;
  float *dz = ws, *part = ws + round64((size_t)N * H);
  k_mix_bwd<TL><<<xd_ceil_div((size_t)N * G * 32, 256), 256, 0, c->stream>>>(dq_raw, dk_raw, dv_raw, dh_global, dh_local,
                                                                             dz, dout, o, w_o, h_global, h_local, N, H, G,
                                                                             d, (flags & XD_CUDA_GRAD_WRITE) != 0);
  XD_CU_LAUNCH("mix backward");
  if (legacy)
    k_mix_dw<<<dim3((unsigned)H, (unsigned)nsplit), 128, 0, c->stream>>>(part, dz, q_raw, k_raw, v_raw, N, H, G, d, per);
  else
    k_mix_dw2<<<dim3((unsigned)G, (unsigned)nsplit), 256, 0, c->stream>>>(part, dz, q_raw, k_raw, v_raw, N, H, G, d, per);
  XD_CU_LAUNCH("mix dw");
  k_mix_dw_reduce<<<xd_ceil_div((size_t)H * W, 256), 256, 0, c->stream>>>(dw_o, db_o, part, nsplit, H, d);
  XD_CU_LAUNCH("mix dw reduce");
  return 0;
}

extern "C" int xd_cuda_mix_backward_ex(xd_cuda_ctx *c, int flags, float *dq_raw, float *dk_raw, float *dv_raw, float
                                       *dw_o, float *db_o, float *dh_global, float *dh_local, const float *dout, const
                                       float *o, const float *q_raw, const float *k_raw, const float *v_raw, const
                                       float *w_o, const float *h_global, const float *h_local, const mix_shape *s,
                                       xd_err *e) {
  return mix_backward_run(c, flags, dq_raw, dk_raw, dv_raw, dw_o, db_o, dh_global, dh_local, dout, o, q_raw, k_raw,
                          v_raw, w_o, h_global, h_local, s, e);
}

extern "C" int xd_cuda_mix_backward_hl16(xd_cuda_ctx *c, int flags, float *dq_raw, float *dk_raw, float *dv_raw,
                                         float *dw_o, float *db_o, float *dh_global, float *dh_local,
                                         const float *dout, const float *o, const float *q_raw, const float *k_raw,
                                         const float *v_raw, const float *w_o, const float *h_global,
                                         const uint16_t *h_local, const mix_shape *s, xd_err *e) {
  return mix_backward_run(c, flags, dq_raw, dk_raw, dv_raw, dw_o, db_o, dh_global, dh_local, dout, o, q_raw, k_raw,
                          v_raw, w_o, h_global, h_local, s, e);
}

extern "C" int xd_cuda_mix_backward(xd_cuda_ctx *c, float *dq_raw, float *dk_raw, float *dv_raw, float *dw_o,
                                    float *db_o, float *dh_global, float *dh_local, const float *dout, const float *o,
                                    const float *q_raw, const float *k_raw, const float *v_raw, const float *w_o,
                                    const float *h_global, const float *h_local, const mix_shape *s, xd_err *e) {
  return xd_cuda_mix_backward_ex(c, 0, dq_raw, dk_raw, dv_raw, dw_o, db_o, dh_global, dh_local, dout, o, q_raw, k_raw,
                                 v_raw, w_o, h_global, h_local, s, e);
}
