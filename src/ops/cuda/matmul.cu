/* cuBLASLt matmul in the HF linear layout: out[N,Dout] (+)= x[N,Din] W^T (+ b).
 *
 * Row-major out[N,Dout] is column-major out^T [Dout,N] = W x^T, so (column-major, as cuBLAS
 * sees it): A = W stored [Din x Dout] (ld Din) used transposed, B = x^T stored [Din x N]
 * (ld Din), D [Dout x N] (ld Dout). This "TN" form is cuBLASLt's preferred bf16 layout, and
 * its bias epilogue adds a vector of length m = Dout to every column = every token. */
#include "cuda_common.cuh"

static int lt_find_algo(xd_cuda_ctx *c, cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t la, cublasLtMatrixLayout_t lb,
                        cublasLtMatrixLayout_t lcd, int N, int Din, int Dout, int dtype, int bias, int acc,
                        cublasLtMatmulAlgo_t *algo, xd_err *e) {
  for (int i = 0; i < XD_LT_CACHE; i++) {
    const xd_lt_algo_entry *q = &c->lt_cache[i];
    if (q->valid && q->N == N && q->Din == Din && q->Dout == Dout && q->dtype == dtype && q->bias == bias &&
        q->acc == acc) {
      *algo = q->algo;
      return 0;
    }
  }
  cublasLtMatmulPreference_t pref;
  XD_CUBLAS(cublasLtMatmulPreferenceCreate(&pref));
  cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                           &c->lt_ws_bytes, sizeof c->lt_ws_bytes);
  cublasLtMatmulHeuristicResult_t res;
  int found = 0;
  if (st == CUBLAS_STATUS_SUCCESS) st = cublasLtMatmulAlgoGetHeuristic(c->lt, op, la, lb, lcd, lcd, pref, 1, &res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  XD_CUBLAS(st);
  if (found < 1)
    return xd_errf(e, "matmul.cu: cuBLASLt has no algorithm for N=%d Din=%d Dout=%d", N, Din, Dout);
  xd_lt_algo_entry *q = &c->lt_cache[c->lt_cache_next];
  c->lt_cache_next = (c->lt_cache_next + 1) % XD_LT_CACHE;
  q->valid = 1, q->N = N, q->Din = Din, q->Dout = Dout, q->dtype = dtype, q->bias = bias, q->acc = acc;
  q->algo = res.algo;
  *algo = res.algo;
  return 0;
}

/* The body, with descriptors owned by the caller so that every exit path frees them. */
static int matmul_run(xd_cuda_ctx *c, cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t *la, cublasLtMatrixLayout_t *lb,
                      cublasLtMatrixLayout_t *lcd, void *out, const void *res, xd_cuda_dtype out_dtype,
                      const uint16_t *x, const uint16_t *w, const void *bias, int N, int Din, int Dout, int accumulate,
                      xd_err *e) {
  cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  XD_CUBLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
  XD_CUBLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
  if (bias) {
    cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BIAS;
    XD_CUBLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep));
    XD_CUBLAS(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
  }
  cudaDataType_t dt = out_dtype == XD_CUDA_F32 ? CUDA_R_32F : CUDA_R_16BF;
  XD_CUBLAS(cublasLtMatrixLayoutCreate(la, CUDA_R_16BF, Din, Dout, Din));
  XD_CUBLAS(cublasLtMatrixLayoutCreate(lb, CUDA_R_16BF, Din, N, Din));
  XD_CUBLAS(cublasLtMatrixLayoutCreate(lcd, dt, Dout, N, Dout));
  cublasLtMatmulAlgo_t algo;
  if (lt_find_algo(c, op, *la, *lb, *lcd, N, Din, Dout, (int)out_dtype, bias != NULL, accumulate, &algo, e)) return -1;
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  /* C == D in place (or C = res, a separate buffer of the same layout): allowed by cuBLASLt. */
  XD_CUBLAS(cublasLtMatmul(c->lt, op, &alpha, w, *la, x, *lb, &beta, res ? res : out, *lcd, out, *lcd, &algo, c->lt_ws,
                           c->lt_ws_bytes, c->stream));
  return 0;
}

extern "C" int xd_cuda_matmul(xd_cuda_ctx *c, void *out, xd_cuda_dtype out_dtype, const uint16_t *x,
                              const uint16_t *w, const void *bias, int N, int Din, int Dout, int accumulate,
                              xd_err *e) {
  XD_ARG(N > 0 && Din > 0 && Dout > 0);
  XD_ARG(out_dtype == XD_CUDA_BF16 || out_dtype == XD_CUDA_F32);
  cublasLtMatmulDesc_t op = NULL;
  cublasLtMatrixLayout_t la = NULL, lb = NULL, lcd = NULL;
  XD_CUBLAS(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  int rc = matmul_run(c, op, &la, &lb, &lcd, out, NULL, out_dtype, x, w, bias, N, Din, Dout, accumulate, e);
  if (lcd) cublasLtMatrixLayoutDestroy(lcd);
  if (lb) cublasLtMatrixLayoutDestroy(lb);
  if (la) cublasLtMatrixLayoutDestroy(la);
  cublasLtMatmulDescDestroy(op);
  return rc;
}

extern "C" int xd_cuda_matmul_res(xd_cuda_ctx *c, void *out, const void *res, xd_cuda_dtype out_dtype,
                                  const uint16_t *x, const uint16_t *w, const void *bias, int N, int Din, int Dout,
                                  xd_err *e) {
  XD_ARG(N > 0 && Din > 0 && Dout > 0 && res != NULL);
  XD_ARG(out_dtype == XD_CUDA_BF16 || out_dtype == XD_CUDA_F32);
  cublasLtMatmulDesc_t op = NULL;
  cublasLtMatrixLayout_t la = NULL, lb = NULL, lcd = NULL;
  XD_CUBLAS(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  int rc = matmul_run(c, op, &la, &lb, &lcd, out, res, out_dtype, x, w, bias, N, Din, Dout, 1, e);
  if (lcd) cublasLtMatrixLayoutDestroy(lcd);
  if (lb) cublasLtMatrixLayoutDestroy(lb);
  if (la) cublasLtMatrixLayoutDestroy(la);
  cublasLtMatmulDescDestroy(op);
  return rc;
}
