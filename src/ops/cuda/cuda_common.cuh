/* Shared by the .cu files: the context struct and check macros that name file and line. */
#ifndef XD_OPS_CUDA_COMMON_CUH
#define XD_OPS_CUDA_COMMON_CUH
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cublasLt.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "cuda_ops.h"

/* The backend writes its own messages (no link-time dependency back on xdistill_core, which
 * links this library). Returns -1, like xd_errf. */
static inline int __attribute__((format(printf, 2, 3))) xd_cuda_errf(xd_err *e, const char *fmt, ...) {
  if (e) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
  }
  return -1;
}
#define xd_errf xd_cuda_errf

/* cuBLASLt heuristic results per GEMM shape: the query costs tens of microseconds, more than
 * a small GEMM, so it runs once per shape. */
typedef struct {
  int valid, N, Din, Dout, dtype, bias, acc;
  cublasLtMatmulAlgo_t algo;
} xd_lt_algo_entry;
#define XD_LT_CACHE 32
/* The student ops' fp32 cuBLASLt GEMMs (student_ops.cu): algorithm per full geometry (sizes,
 * strides, transposes, batch, beta, pointer alignment). */
#define XD_SG_KEY 20
#define XD_SG_CACHE 32
typedef struct {
  int valid;
  long long key[XD_SG_KEY];
  cublasLtMatmulAlgo_t algo;
} xd_sg_algo_entry;

struct xd_cuda_ctx {
  xd_lt_algo_entry lt_cache[XD_LT_CACHE];
  int lt_cache_next;
  int device;
  cudaStream_t stream;
  cublasLtHandle_t lt;
  void *lt_ws; /* cuBLASLt workspace */
  size_t lt_ws_bytes;
  int sm_count;
  size_t smem_optin; /* max dynamic shared memory per block after opt-in */
  void *swa_ws;      /* scratch of xd_cuda_swa_backward (D rows, sink partials), grown on demand */
  size_t swa_ws_bytes;
  xd_sg_algo_entry sg_cache[XD_SG_CACHE];
  int sg_cache_next;
  void *st_ws; /* scratch of the student ops (dz of the feature map / gate backward, ...), grown on demand */
  size_t st_ws_bytes;
  unsigned ws_gen; /* +1 whenever swa_ws or st_ws moves: a captured graph holding them is stale */
};

static inline const char *xd_file_base(const char *f) {
  const char *s = strrchr(f, '/');
  return s ? s + 1 : f;
}

/* Return -1 from the enclosing function with "file:line: call: error" in e. */
#define XD_CU(call)                                                                                        \
  do {                                                                                                     \
    cudaError_t _st = (call);                                                                              \
    if (_st != cudaSuccess)                                                                                \
      return xd_errf(e, "%s:%d: %s: %s (%s)", xd_file_base(__FILE__), __LINE__, #call,                    \
                     cudaGetErrorName(_st), cudaGetErrorString(_st));                                     \
  } while (0)
#define XD_CUBLAS(call)                                                                                    \
  do {                                                                                                     \
    cublasStatus_t _st = (call);                                                                           \
    if (_st != CUBLAS_STATUS_SUCCESS)                                                                      \
      return xd_errf(e, "%s:%d: %s: %s", xd_file_base(__FILE__), __LINE__, #call, cublasLtGetStatusName(_st)); \
  } while (0)
/* After every launch: configuration errors show at once, faults at the next sync. */
#define XD_CU_LAUNCH(what) XD_CU(cudaGetLastError())
#define XD_ARG(cond)                                                                                       \
  do {                                                                                                     \
    if (!(cond)) return xd_errf(e, "%s:%d: invalid argument: %s", xd_file_base(__FILE__), __LINE__, #cond); \
  } while (0)

static inline unsigned xd_ceil_div(size_t a, size_t b) { return (unsigned)((a + b - 1) / b); }

__device__ __forceinline__ float xd_bf2f(uint16_t h) { return __uint_as_float(((unsigned)h) << 16); }
__device__ __forceinline__ uint16_t xd_f2bf(float f) {
  __nv_bfloat16 b = __float2bfloat16_rn(f);
  return *reinterpret_cast<uint16_t *>(&b);
}
#endif
