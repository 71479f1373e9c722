/* Context, device memory helpers, dtype conversion and random fills. */
#include <stdlib.h>
#include <cuda_profiler_api.h>
#include "cuda_common.cuh"

extern "C" int xd_cuda_ctx_create(xd_cuda_ctx **out, int device, xd_err *e) {
  return xd_cuda_ctx_create_prio(out, device, 0, e);
}

extern "C" int xd_cuda_ctx_create_prio(xd_cuda_ctx **out, int device, int high_priority, xd_err *e) {
  *out = NULL;
  int n = 0;
  XD_CU(cudaGetDeviceCount(&n));
  if (device < 0 || device >= n) return xd_errf(e, "memory.cu: device %d requested, %d present", device, n);
  XD_CU(cudaSetDevice(device));
  xd_cuda_ctx *c = (xd_cuda_ctx *)calloc(1, sizeof *c);
  if (!c) return xd_errf(e, "memory.cu: out of host memory");
  c->device = device;
  int smem = 0;
  cudaError_t st = cudaDeviceGetAttribute(&c->sm_count, cudaDevAttrMultiProcessorCount, device);
  if (st == cudaSuccess) st = cudaDeviceGetAttribute(&smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  int prio_low = 0, prio_high = 0;
  if (st == cudaSuccess) st = cudaDeviceGetStreamPriorityRange(&prio_low, &prio_high);
  if (st == cudaSuccess)
    st = cudaStreamCreateWithPriority(&c->stream, cudaStreamNonBlocking, high_priority ? prio_high : prio_low);
  c->smem_optin = (size_t)smem;
  /* 32 MiB: what cuBLASLt asks for its larger Hopper kernels. */
  c->lt_ws_bytes = (size_t)32 << 20;
  if (st == cudaSuccess) st = cudaMalloc(&c->lt_ws, c->lt_ws_bytes);
  /* Keep what the ops' stream-ordered scratch (cudaMallocAsync) returns to the pool: with the
   * default threshold 0 the pool unmaps it at every synchronisation (once per training step),
   * and the next step maps it again. */
  cudaMemPool_t pool;
  if (st == cudaSuccess && cudaDeviceGetDefaultMemPool(&pool, device) == cudaSuccess) {
    uint64_t keep = UINT64_MAX;
    st = cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep);
  }
  if (st != cudaSuccess) {
    xd_errf(e, "memory.cu:%d: context setup: %s (%s)", __LINE__, cudaGetErrorName(st), cudaGetErrorString(st));
    xd_cuda_ctx_free(c);
    return -1;
  }
  cublasStatus_t bs = cublasLtCreate(&c->lt);
  if (bs != CUBLAS_STATUS_SUCCESS) {
    xd_errf(e, "memory.cu:%d: cublasLtCreate: %s", __LINE__, cublasLtGetStatusName(bs));
    c->lt = NULL;
    xd_cuda_ctx_free(c);
    return -1;
  }
  *out = c;
  return 0;
}

extern "C" size_t xd_cuda_ctx_scratch_bytes(const xd_cuda_ctx *c) { return c->swa_ws_bytes + c->st_ws_bytes; }

extern "C" void xd_cuda_ctx_free(xd_cuda_ctx *c) {
  if (!c) return;
  if (c->lt) cublasLtDestroy(c->lt);
  if (c->lt_ws) cudaFree(c->lt_ws);
  if (c->swa_ws) cudaFree(c->swa_ws);
  if (c->st_ws) cudaFree(c->st_ws);
  if (c->stream) cudaStreamDestroy(c->stream);
  free(c);
}

extern "C" int xd_cuda_sync(xd_cuda_ctx *c, xd_err *e) {
  XD_CU(cudaStreamSynchronize(c->stream));
  XD_CU(cudaGetLastError());
  return 0;
}

extern "C" int xd_cuda_event_create(xd_cuda_event **out, xd_err *e) {
  cudaEvent_t ev = NULL;
  *out = NULL;
  XD_CU(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  *out = (xd_cuda_event *)ev;
  return 0;
}

extern "C" void xd_cuda_event_free(xd_cuda_event *ev) {
  if (ev) cudaEventDestroy((cudaEvent_t)ev);
}

extern "C" int xd_cuda_event_record(xd_cuda_ctx *c, xd_cuda_event *ev, xd_err *e) {
  XD_CU(cudaEventRecord((cudaEvent_t)ev, c->stream));
  return 0;
}

extern "C" int xd_cuda_wait_event(xd_cuda_ctx *c, xd_cuda_event *ev, xd_err *e) {
  XD_CU(cudaStreamWaitEvent(c->stream, (cudaEvent_t)ev, 0));
  return 0;
}

extern "C" int xd_cuda_profiler_range(xd_cuda_ctx *c, int on, xd_err *e) {
  XD_CU(cudaStreamSynchronize(c->stream));
  XD_CU(on ? cudaProfilerStart() : cudaProfilerStop());
  return 0;
}

extern "C" int xd_cuda_device_info(xd_cuda_ctx *c, char *name, size_t name_len, int *sm_count, xd_err *e) {
  cudaDeviceProp p;
  XD_CU(cudaGetDeviceProperties(&p, c->device));
  if (name && name_len) {
    strncpy(name, p.name, name_len - 1);
    name[name_len - 1] = 0;
  }
  if (sm_count) *sm_count = p.multiProcessorCount;
  return 0;
}

extern "C" int xd_cuda_malloc(void **p, size_t bytes, xd_err *e) {
  *p = NULL;
  cudaError_t st = cudaMalloc(p, bytes ? bytes : 1);
  if (st != cudaSuccess) {
    *p = NULL;
    return xd_errf(e, "memory.cu:%d: cudaMalloc of %zu bytes: %s", __LINE__, bytes, cudaGetErrorString(st));
  }
  return 0;
}

extern "C" void xd_cuda_free(void *p) {
  if (p) cudaFree(p);
}

extern "C" int xd_cuda_memset(xd_cuda_ctx *c, void *p, int byte, size_t bytes, xd_err *e) {
  XD_CU(cudaMemsetAsync(p, byte, bytes, c->stream));
  return 0;
}

extern "C" int xd_cuda_upload(xd_cuda_ctx *c, void *dst, const void *host_src, size_t bytes, xd_err *e) {
  /* Pageable host memory: the copy is staged, so host_src may be freed once this returns. */
  XD_CU(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, c->stream));
  return 0;
}

extern "C" int xd_cuda_download(xd_cuda_ctx *c, void *host_dst, const void *src, size_t bytes, xd_err *e) {
  XD_CU(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, c->stream));
  XD_CU(cudaStreamSynchronize(c->stream));
  return 0;
}

extern "C" int xd_cuda_copy(xd_cuda_ctx *c, void *dst, const void *src, size_t bytes, xd_err *e) {
  XD_CU(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream));
  return 0;
}

__global__ void k_f32_to_bf16(uint16_t *dst, const float *src, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    dst[i] = xd_f2bf(src[i]);
}
__global__ void k_f32_to_bf16_2d(uint16_t *dst, size_t ldd, const float *src, size_t lds, size_t rows, size_t cols) {
  const size_t n = rows * cols;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    const size_t r = i / cols, j = i % cols;
    dst[r * ldd + j] = xd_f2bf(src[r * lds + j]);
  }
}
__global__ void k_bf16_to_f32(float *dst, const uint16_t *src, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
    dst[i] = xd_bf2f(src[i]);
}

/* splitmix64 of (seed, i): independent, reproducible values with no state. */
__device__ __forceinline__ uint64_t xd_mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
__global__ void k_fill_uniform_bf16(uint16_t *dst, size_t n, uint64_t seed, float scale) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    uint64_t r = xd_mix64(seed * 0x632be59bd9b4e019ull + i);
    float u = (float)(r >> 40) * (1.0f / 16777216.0f); /* [0,1) */
    dst[i] = xd_f2bf((2.0f * u - 1.0f) * scale);
  }
}

static unsigned grid_for(const xd_cuda_ctx *c, size_t n) {
  unsigned g = xd_ceil_div(n, 256);
  unsigned cap = (unsigned)c->sm_count * 16;
  if (g > cap) g = cap;
  return g ? g : 1;
}

extern "C" int xd_cuda_f32_to_bf16(xd_cuda_ctx *c, uint16_t *dst, const float *src, size_t n, xd_err *e) {
  if (!n) return 0;
  k_f32_to_bf16<<<grid_for(c, n), 256, 0, c->stream>>>(dst, src, n);
  XD_CU_LAUNCH("f32_to_bf16");
  return 0;
}
extern "C" int xd_cuda_f32_to_bf16_2d(xd_cuda_ctx *c, uint16_t *dst, size_t ldd, const float *src, size_t lds,
                                      size_t rows, size_t cols, xd_err *e) {
  if (!rows || !cols) return 0;
  XD_ARG(ldd >= cols && lds >= cols);
  k_f32_to_bf16_2d<<<grid_for(c, rows * cols), 256, 0, c->stream>>>(dst, ldd, src, lds, rows, cols);
  XD_CU_LAUNCH("f32_to_bf16_2d");
  return 0;
}
extern "C" int xd_cuda_bf16_to_f32(xd_cuda_ctx *c, float *dst, const uint16_t *src, size_t n, xd_err *e) {
  if (!n) return 0;
  k_bf16_to_f32<<<grid_for(c, n), 256, 0, c->stream>>>(dst, src, n);
  XD_CU_LAUNCH("bf16_to_f32");
  return 0;
}
extern "C" int xd_cuda_fill_uniform_bf16(xd_cuda_ctx *c, uint16_t *dst, size_t n, uint64_t seed, float scale,
                                         xd_err *e) {
  if (!n) return 0;
  k_fill_uniform_bf16<<<grid_for(c, n), 256, 0, c->stream>>>(dst, n, seed, scale);
  XD_CU_LAUNCH("fill_uniform_bf16");
  return 0;
}
