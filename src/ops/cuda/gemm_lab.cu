/* Kernel lab for the bf16 GEMMs (bench/gpu/bench_gpu_gemm.c): how far is the algorithm
 * cuBLASLt's heuristic ranks first from the fastest of the ones it offers, at the training
 * step's shapes? Timing only: the library always runs the heuristic's first choice (matmul.cu,
 * matmul_backward.cu), because a choice made by timing could differ between processes, and a
 * different algorithm sums in a different order (a resumed run must repeat the same bits). */
#include <stdio.h>
#include "cuda_common.cuh"

extern "C" int xd_cuda_gemm_lab(xd_cuda_ctx *c, int trans_a, int trans_b, int m, int n, int k, xd_cuda_dtype out_dtype,
                                float beta, int max_algos, int reps, const char *label, FILE *f, double *ms_first,
                                double *ms_best, xd_err *e) {
  enum { MAXA = 16 };
  if (max_algos > MAXA) max_algos = MAXA;
  const cublasOperation_t ta = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, tb = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  const int a_rows = ta == CUBLAS_OP_N ? m : k, a_cols = ta == CUBLAS_OP_N ? k : m;
  const int b_rows = tb == CUBLAS_OP_N ? k : n, b_cols = tb == CUBLAS_OP_N ? n : k;
  const cudaDataType_t dt = out_dtype == XD_CUDA_F32 ? CUDA_R_32F : CUDA_R_16BF;
  const size_t out_bytes = (size_t)m * n * (out_dtype == XD_CUDA_F32 ? 4 : 2);
  uint16_t *A = NULL, *B = NULL;
  void *D = NULL;
  cublasLtMatmulDesc_t op = NULL;
  cublasLtMatrixLayout_t la = NULL, lb = NULL, ld = NULL;
  cublasLtMatmulPreference_t pref = NULL;
  cudaEvent_t ev0 = NULL, ev1 = NULL;
  cublasLtMatmulHeuristicResult_t res[MAXA];
  int found = 0, rc = -1;
  if (xd_cuda_malloc((void **)&A, (size_t)m * k * 2, e) || xd_cuda_malloc((void **)&B, (size_t)k * n * 2, e) ||
      xd_cuda_malloc(&D, out_bytes, e) || xd_cuda_fill_uniform_bf16(c, A, (size_t)m * k, 1, 0.05f, e) ||
      xd_cuda_fill_uniform_bf16(c, B, (size_t)k * n, 2, 1.0f, e))
    goto done;
#define LAB(call) do { const cublasStatus_t s_ = (call); if (s_ != CUBLAS_STATUS_SUCCESS) { xd_errf(e, "gemm_lab.cu:%d: %s", __LINE__, cublasLtGetStatusName(s_)); goto done; } } while (0)
#define LABC(call) do { const cudaError_t s_ = (call); if (s_ != cudaSuccess) { xd_errf(e, "gemm_lab.cu:%d: %s", __LINE__, cudaGetErrorName(s_)); goto done; } } while (0)
  LAB(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  LAB(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
  LAB(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
  LAB(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, a_rows, a_cols, a_rows));
  LAB(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, b_rows, b_cols, b_rows));
  LAB(cublasLtMatrixLayoutCreate(&ld, dt, m, n, m));
  LAB(cublasLtMatmulPreferenceCreate(&pref));
  LAB(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &c->lt_ws_bytes,
                                           sizeof c->lt_ws_bytes));
  LAB(cublasLtMatmulAlgoGetHeuristic(c->lt, op, la, lb, ld, ld, pref, max_algos, res, &found));
  LABC(cudaEventCreate(&ev0));
  LABC(cudaEventCreate(&ev1));
  {
    const double flop = 2.0 * m * n * k;
    double first = -1, best = 1e30;
    const float alpha = 1.0f;
    for (int i = 0; i < found; i++) {
      int ok = 1;
      for (int w = 0; w < 2 && ok; w++)
        ok = cublasLtMatmul(c->lt, op, &alpha, A, la, B, lb, &beta, D, ld, D, ld, &res[i].algo, c->lt_ws, c->lt_ws_bytes,
                            c->stream) == CUBLAS_STATUS_SUCCESS;
      if (!ok) {
        if (f) fprintf(f, "  %-28s algo #%d: not runnable\n", label, i);
        continue;
      }
      LABC(cudaEventRecord(ev0, c->stream));
      for (int r = 0; r < reps; r++)
        LAB(cublasLtMatmul(c->lt, op, &alpha, A, la, B, lb, &beta, D, ld, D, ld, &res[i].algo, c->lt_ws, c->lt_ws_bytes,
                           c->stream));
      LABC(cudaEventRecord(ev1, c->stream));
      LABC(cudaEventSynchronize(ev1));
      float ms = 0;
      LABC(cudaEventElapsedTime(&ms, ev0, ev1));
      const double t = ms / reps;
      if (first < 0) first = t;
      if (t < best) best = t;
      int id = -1, tile = -1, stages = -1, splitk = -1;
      uint16_t cluster = 0;
      size_t sz = 0;
      cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_ID, &id, sizeof id, &sz);
      cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, &sz);
      cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_STAGES_ID, &stages, sizeof stages, &sz);
      cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &splitk, sizeof splitk, &sz);
      cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID, &cluster, sizeof cluster, &sz);
      if (f)
        fprintf(f, "  %-28s algo #%d: %8.3f ms %6.1f TFLOP/s  x%.3f of #0  (id %d tile %d stages %d splitK %d cluster %d, waves %.2f)\n",
                label, i, t, flop / t / 1e9, t / first, id, tile, stages, splitk, (int)cluster, res[i].wavesCount);
    }
    if (ms_first) *ms_first = first;
    if (ms_best) *ms_best = best;
  }
  rc = 0;
done:
#undef LAB
#undef LABC
  if (ev0) cudaEventDestroy(ev0);
  if (ev1) cudaEventDestroy(ev1);
  if (pref) cublasLtMatmulPreferenceDestroy(pref);
  if (la) cublasLtMatrixLayoutDestroy(la);
  if (lb) cublasLtMatrixLayoutDestroy(lb);
  if (ld) cublasLtMatrixLayoutDestroy(ld);
  if (op) cublasLtMatmulDescDestroy(op);
  xd_cuda_free(A);
  xd_cuda_free(B);
  xd_cuda_free(D);
  return rc;
}
