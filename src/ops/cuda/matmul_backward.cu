/* Matmul backward through cuBLASLt, the twin of matmul_backward (src/ops/cpu/matmul_impl.inc):
 * for out[N,Dout] = x[N,Din] W^T + b with W [Dout,Din] (HF layout),
 *   dx[N,Din] (+)= dout W,   dW[Dout,Din] (+)= dout^T x,   db[Dout] (+)= sum_n dout[n,:].
 *
 * Column-major views (what cuBLAS sees; a row-major [R,C] buffer is column-major [C x R]):
 *   dx:  D = dx^T [Din x N] (ld Din) = W^T [Din x Dout] * dout^T [Dout x N]
 *        A = W stored [Din x Dout] ld Din, op N;  B = dout stored [Dout x N] ld Dout, op N
 *        (m = Din, n = N, k = Dout)
 *   dW:  D = dW^T [Din x Dout] (ld Din) = x^T [Din x N] * dout [N x Dout]
 *        A = x stored [Din x N] ld Din, op N;  B = dout stored [Dout x N] ld Dout, op T
 *        (m = Din, n = Dout, k = N)
 * The bias gradient is the sum of B (= dout) over the GEMM's k (= N) for every column of D
 * (= every output feature): exactly CUBLASLT_EPILOGUE_BGRADB of the dW GEMM. The epilogue
 * WRITES its vector (beta applies to D only), so an accumulating call sends it to a scratch
 * vector and a small kernel adds it. Where cuBLASLt offers no algorithm with that epilogue (or
 * the caller asks for it), a deterministic column-sum kernel does the bias gradient instead:
 * partial sums over fixed blocks of 256 rows, then the partials added in order (no atomics).
 * Accumulation into dx / dW is the GEMM's beta = 1 (C == D in place).
 *
 * Algorithms come from the heuristic once per (shape, kind, dtypes, pointer alignment, epilogue,
 * beta) and are kept in the context's cuBLASLt cache with keys that cannot collide with the
 * forward's (dtype field >= 0x40000000); "no algorithm with the epilogue" is cached too. */
#include <stdint.h>
#include "cuda_common.cuh"

namespace {

/* ---- deterministic column sums: out[col] (+)= sum_r a[r * cols + col] ----------------------- */
#define CS_ROWS 256 /* rows per partial: depends on the shape only (same bits on every device) */
__device__ __forceinline__ float cs_load(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float cs_load(const uint16_t *p, size_t i) { return xd_bf2f(p[i]); }

/* grid (ceil(cols/32), ceil(rows/CS_ROWS)), 256 threads: lane = column, warp = row phase. */
template <typename T>
__global__ void __launch_bounds__(256) k_colsum_part(float *part, const T *a, int rows, int cols) {
  __shared__ float red[8][33];
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
  const int col = blockIdx.x * 32 + tx;
  const int r0 = blockIdx.y * CS_ROWS, r1 = min(rows, r0 + CS_ROWS);
  float s = 0.f;
  if (col < cols)
    for (int r = r0 + ty; r < r1; r += 8) s += cs_load(a, (size_t)r * cols + col);
  red[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && col < cols) {
    float t = red[0][tx];
#pragma unroll
    for (int i = 1; i < 8; i++) t += red[i][tx];
    part[(size_t)blockIdx.y * cols + col] = t;
  }
}

/* out[col] (+)= sum over the partials in split order. */
__global__ void k_colsum_final(float *out, const float *part, int nsplit, int cols, int accumulate) {
  const int col = blockIdx.x * blockDim.x + threadIdx.x;
  if (col >= cols) return;
  float t = 0.f;
  for (int s = 0; s < nsplit; s++) t += part[(size_t)s * cols + col];
  out[col] = accumulate ? out[col] + t : t;
}

/* y (+)= x */
__global__ void k_put_vec(float *y, const float *x, int n, int accumulate) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = accumulate ? y[i] + x[i] : x[i];
}

template <typename T>
int colsum(xd_cuda_ctx *c, float *out, const T *a, int rows, int cols, int accumulate, xd_err *e) {
  const unsigned nsplit = xd_ceil_div((size_t)rows, CS_ROWS);
  XD_ARG(nsplit <= 65535u);
  float *part = NULL;
  XD_CU(cudaMallocAsync((void **)&part, (size_t)nsplit * cols * sizeof(float), c->stream));
  k_colsum_part<T><<<dim3(xd_ceil_div((size_t)cols, 32), nsplit), 256, 0, c->stream>>>(part, a, rows, cols);
  cudaError_t st = cudaGetLastError();
  if (st == cudaSuccess) {
    k_colsum_final<<<xd_ceil_div((size_t)cols, 256), 256, 0, c->stream>>>(out, part, (int)nsplit, cols, accumulate);
    st = cudaGetLastError();
  }
  const cudaError_t fs = cudaFreeAsync(part, c->stream);
  if (st != cudaSuccess)
    return xd_errf(e, "matmul_backward.cu:%d: column-sum launch: %s (%s)", __LINE__, cudaGetErrorName(st),
                   cudaGetErrorString(st));
  XD_CU(fs);
  return 0;
}

/* ---- one cuBLASLt GEMM of the backward ------------------------------------------------------ */
enum { KIND_DX = 0, KIND_DW = 1 };
enum { BIAS_NONE = 0, BIAS_BGRADB = 1, BIAS_UNSUPPORTED = 2 };

struct gemm_args {
  int kind;
  cudaDataType_t ab, dt; /* A/B element type, C/D element type */
  int m, n, k;
  const void *A;
  int lda;
  cublasOperation_t ta;
  const void *B;
  int ldb;
  cublasOperation_t tb;
  void *D;
  int ldd;
  float beta;
  float *bgrad; /* NULL, or the BGRADB output vector [n] (fp32 = D's type) */
};

/* log2 of a pointer's alignment, capped at 8 (256 bytes, what cuBLASLt assumes by default). */
int align_log2(const void *p) {
  const uintptr_t a = (uintptr_t)p;
  int l = 0;
  while (l < 8 && !(a & ((uintptr_t)1 << l))) l++;
  return l;
}

int gemm_key(const gemm_args *g) {
  return 0x40000000 | (g->kind << 24) | ((g->ab == CUDA_R_32F) << 21) | ((g->dt == CUDA_R_32F) << 20) |
         (align_log2(g->A) << 8) | (align_log2(g->B) << 4) | align_log2(g->D);
}

const xd_lt_algo_entry *cache_find(const xd_cuda_ctx *c, const gemm_args *g, int key, int bias) {
  const int acc = g->beta != 0.f;
  for (int i = 0; i < XD_LT_CACHE; i++) {
    const xd_lt_algo_entry *q = &c->lt_cache[i];
    if (q->valid && q->N == g->m && q->Din == g->n && q->Dout == g->k && q->dtype == key && q->bias == bias &&
        q->acc == acc)
      return q;
  }
  return NULL;
}

void cache_put(xd_cuda_ctx *c, const gemm_args *g, int key, int bias, const cublasLtMatmulAlgo_t *algo) {
  xd_lt_algo_entry *q = &c->lt_cache[c->lt_cache_next];
  c->lt_cache_next = (c->lt_cache_next + 1) % XD_LT_CACHE;
  memset(q, 0, sizeof *q);
  q->valid = 1, q->N = g->m, q->Din = g->n, q->Dout = g->k, q->dtype = key, q->bias = bias;
  q->acc = g->beta != 0.f;
  if (algo) q->algo = *algo;
}

/* Returns 0 (done), 1 (the BGRADB epilogue is not available here: nothing ran; retry without)
 * or -1 (error). Descriptors are the caller's so that every exit path frees them. */
int gemm_body(xd_cuda_ctx *c, const gemm_args *g, cublasLtMatmulDesc_t *op, cublasLtMatrixLayout_t *la,
              cublasLtMatrixLayout_t *lb, cublasLtMatrixLayout_t *ld, xd_err *e) {
  XD_CUBLAS(cublasLtMatmulDescCreate(op, CUBLAS_COMPUTE_32F, CUDA_R_32F)); /* no TF32: fp32 is exact fp32 */
  XD_CUBLAS(cublasLtMatmulDescSetAttribute(*op, CUBLASLT_MATMUL_DESC_TRANSA, &g->ta, sizeof g->ta));
  XD_CUBLAS(cublasLtMatmulDescSetAttribute(*op, CUBLASLT_MATMUL_DESC_TRANSB, &g->tb, sizeof g->tb));
  if (g->bgrad) {
    /* the bias-gradient vector has D's type (fp32) by default: no BIAS_DATA_TYPE needed */
    const cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BGRADB;
    XD_CUBLAS(cublasLtMatmulDescSetAttribute(*op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep));
    XD_CUBLAS(cublasLtMatmulDescSetAttribute(*op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g->bgrad, sizeof g->bgrad));
  }
  const int a_rows = g->ta == CUBLAS_OP_N ? g->m : g->k, a_cols = g->ta == CUBLAS_OP_N ? g->k : g->m;
  const int b_rows = g->tb == CUBLAS_OP_N ? g->k : g->n, b_cols = g->tb == CUBLAS_OP_N ? g->n : g->k;
  XD_CUBLAS(cublasLtMatrixLayoutCreate(la, g->ab, a_rows, a_cols, g->lda));
  XD_CUBLAS(cublasLtMatrixLayoutCreate(lb, g->ab, b_rows, b_cols, g->ldb));
  XD_CUBLAS(cublasLtMatrixLayoutCreate(ld, g->dt, g->m, g->n, g->ldd));
  const int key = gemm_key(g), bias = g->bgrad ? BIAS_BGRADB : BIAS_NONE;
  if (g->bgrad && cache_find(c, g, key, BIAS_UNSUPPORTED)) return 1;
  cublasLtMatmulAlgo_t algo;
  const xd_lt_algo_entry *hit = cache_find(c, g, key, bias);
  if (hit) {
    algo = hit->algo;
  } else {
    cublasLtMatmulPreference_t pref;
    XD_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
    const uint32_t al_a = 1u << align_log2(g->A), al_b = 1u << align_log2(g->B), al_d = 1u << align_log2(g->D);
    cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                             &c->lt_ws_bytes, sizeof c->lt_ws_bytes);
    if (st == CUBLAS_STATUS_SUCCESS)
      st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a);
    if (st == CUBLAS_STATUS_SUCCESS)
      st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b);
    if (st == CUBLAS_STATUS_SUCCESS)
      st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d, sizeof al_d);
    if (st == CUBLAS_STATUS_SUCCESS)
      st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof al_d);
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    if (st == CUBLAS_STATUS_SUCCESS)
      st = cublasLtMatmulAlgoGetHeuristic(c->lt, *op, *la, *lb, *ld, *ld, pref, 1, &res, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    if (g->bgrad && (st != CUBLAS_STATUS_SUCCESS || found < 1)) { /* real errors show on the retry */
      cache_put(c, g, key, BIAS_UNSUPPORTED, NULL);
      return 1;
    }
    XD_CUBLAS(st);
    if (found < 1)
      return xd_errf(e, "matmul_backward.cu: cuBLASLt has no algorithm for the %s GEMM m=%d n=%d k=%d",
                     g->kind == KIND_DX ? "dx" : "dW", g->m, g->n, g->k);
    cache_put(c, g, key, bias, &res.algo);
    algo = res.algo;
  }
  const float alpha = 1.0f;
  const cublasStatus_t st = cublasLtMatmul(c->lt, *op, &alpha, g->A, *la, g->B, *lb, &g->beta, g->D, *ld, g->D, *ld,
                                           &algo, c->lt_ws, c->lt_ws_bytes, c->stream);
  if (st != CUBLAS_STATUS_SUCCESS && g->bgrad) { /* as above: the retry without it reports real errors */
    cache_put(c, g, key, BIAS_UNSUPPORTED, NULL);
    return 1;
  }
  XD_CUBLAS(st);
  return 0;
}

int gemm_run(xd_cuda_ctx *c, const gemm_args *g, xd_err *e) {
  cublasLtMatmulDesc_t op = NULL;
  cublasLtMatrixLayout_t la = NULL, lb = NULL, ld = NULL;
  const int rc = gemm_body(c, g, &op, &la, &lb, &ld, e);
  if (ld) cublasLtMatrixLayoutDestroy(ld);
  if (lb) cublasLtMatrixLayoutDestroy(lb);
  if (la) cublasLtMatrixLayoutDestroy(la);
  if (op) cublasLtMatmulDescDestroy(op);
  return rc;
}

/* The dW GEMM with the bias gradient in its epilogue when possible; *db_done tells. */
int dw_gemm(xd_cuda_ctx *c, gemm_args *g, float *db, int accumulate, int own_bgrad, int Dout, int *db_done,
            xd_err *e) {
  *db_done = 0;
  if (!db || own_bgrad) return gemm_run(c, g, e) < 0 ? -1 : 0;
  /* The epilogue writes the vector: accumulate through a scratch; the scratch also gives the
   * 256-byte alignment cuBLASLt may want when db sits inside a parameter arena. */
  float *tmp = NULL;
  const int direct = !accumulate && align_log2(db) == 8;
  if (!direct) XD_CU(cudaMallocAsync((void **)&tmp, (size_t)Dout * sizeof(float), c->stream));
  g->bgrad = direct ? db : tmp;
  int rc = gemm_run(c, g, e);
  if (rc == 1) { /* no epilogue here: the plain GEMM, the bias gradient by the column-sum kernel */
    g->bgrad = NULL;
    rc = gemm_run(c, g, e);
  } else if (rc == 0) {
    *db_done = 1;
    if (tmp) {
      k_put_vec<<<xd_ceil_div((size_t)Dout, 256), 256, 0, c->stream>>>(db, tmp, Dout, accumulate);
      const cudaError_t st = cudaGetLastError();
      if (st != cudaSuccess)
        rc = xd_errf(e, "matmul_backward.cu:%d: bias-gradient add: %s (%s)", __LINE__, cudaGetErrorName(st),
                     cudaGetErrorString(st));
    }
  }
  if (tmp) {
    const cudaError_t fs = cudaFreeAsync(tmp, c->stream);
    if (rc == 0 && fs != cudaSuccess)
      rc = xd_errf(e, "matmul_backward.cu:%d: cudaFreeAsync: %s", __LINE__, cudaGetErrorString(fs));
  }
  return rc < 0 ? -1 : 0;
}

int mm_backward(xd_cuda_ctx *c, void *dx, cudaDataType_t dx_type, float *dw, float *db, const void *dout,
                const void *x, const void *w, cudaDataType_t ab, int N, int Din, int Dout, int flags, xd_err *e) {
  XD_ARG(N > 0 && Din > 0 && Dout > 0);
  XD_ARG((flags & ~(XD_CUDA_BW_ACCUMULATE | XD_CUDA_BW_OWN_BGRAD | XD_CUDA_BW_DX_WRITE | XD_CUDA_BW_DW_WRITE)) == 0);
  const int accumulate = (flags & XD_CUDA_BW_ACCUMULATE) != 0;
  const float beta = accumulate ? 1.0f : 0.0f;
  if (dx) {
    XD_ARG(w != NULL && dout != NULL);
    const float beta_dx = (flags & XD_CUDA_BW_DX_WRITE) ? 0.0f : beta;
    gemm_args g = {KIND_DX, ab, dx_type, Din, N, Dout, w, Din, CUBLAS_OP_N, dout, Dout, CUBLAS_OP_N, dx, Din, beta_dx, NULL};
    if (gemm_run(c, &g, e) != 0) return -1; /* no epilogue: 1 cannot come back */
  }
  int db_done = 0;
  const int acc_w = accumulate && !(flags & XD_CUDA_BW_DW_WRITE); /* dW and db */
  if (dw) {
    XD_ARG(x != NULL && dout != NULL);
    gemm_args g = {KIND_DW, ab, CUDA_R_32F, Din, Dout, N, x, Din, CUBLAS_OP_N, dout, Dout, CUBLAS_OP_T, dw, Din,
                   acc_w ? 1.0f : 0.0f, NULL};
    if (dw_gemm(c, &g, db, acc_w, (flags & XD_CUDA_BW_OWN_BGRAD) != 0, Dout, &db_done, e)) return -1;
  }
  if (db && !db_done) {
    XD_ARG(dout != NULL);
    if (ab == CUDA_R_32F) return colsum(c, db, (const float *)dout, N, Dout, acc_w, e);
    return colsum(c, db, (const uint16_t *)dout, N, Dout, acc_w, e);
  }
  return 0;
}

} /* namespace */

extern "C" int xd_cuda_matmul_backward(xd_cuda_ctx *c, void *dx, xd_cuda_dtype dx_dtype, float *dw, float *db,
                                       const uint16_t *dout, const uint16_t *x, const uint16_t *w, int N, int Din,
                                       int Dout, int flags, xd_err *e) {
  XD_ARG(dx_dtype == XD_CUDA_BF16 || dx_dtype == XD_CUDA_F32);
  return mm_backward(c, dx, dx_dtype == XD_CUDA_F32 ? CUDA_R_32F : CUDA_R_16BF, dw, db, dout, x, w, CUDA_R_16BF, N,
                     Din, Dout, flags, e);
}

extern "C" int xd_cuda_matmul_backward_f32(xd_cuda_ctx *c, float *dx, float *dw, float *db, const float *dout,
                                           const float *x, const float *w, int N, int Din, int Dout, int flags,
                                           xd_err *e) {
  return mm_backward(c, dx, CUDA_R_32F, dw, db, dout, x, w, CUDA_R_32F, N, Din, Dout, flags, e);
}

extern "C" int xd_cuda_matmul_backward_bgrad_path(const xd_cuda_ctx *c, xd_cuda_dtype in_dtype, int N, int Din,
                                                  int Dout) {
  const int want = 0x40000000 | (KIND_DW << 24) | ((in_dtype == XD_CUDA_F32) << 21);
  int seen = -1;
  for (int i = 0; i < XD_LT_CACHE; i++) {
    const xd_lt_algo_entry *q = &c->lt_cache[i];
    if (!q->valid || q->N != Din || q->Din != Dout || q->Dout != N || (q->dtype & 0x7f200000) != want)
      continue;
    if (q->bias == BIAS_UNSUPPORTED) return 0;
    if (q->bias == BIAS_BGRADB) seen = 1;
  }
  return seen;
}

extern "C" int xd_cuda_colsum_f32(xd_cuda_ctx *c, float *out, const float *a, int rows, int cols, int accumulate,
                                  xd_err *e) {
  XD_ARG(rows > 0 && cols > 0 && out && a);
  return colsum(c, out, a, rows, cols, accumulate, e);
}
