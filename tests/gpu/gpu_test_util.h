/* Shared helpers of the GPU test programs (tests/gpu/test_gpu_*.c): the program's CUDA context
 * and error, relative L2 error, random host buffers, and device buffers that are uploaded,
 * poisoned (0xFF bytes: NaN for fp32 and bf16) or downloaded. A failing CUDA call prints the
 * error line and exits 1: these programs test kernels, not error paths. Host buffers get one
 * spare byte so a 0-element allocation is never NULL. */
#ifndef XD_TESTS_GPU_TEST_UTIL_H
#define XD_TESTS_GPU_TEST_UTIL_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/core.h"
#include "ops/cuda/cuda_ops.h"
#include "test.h"

#define GPU_TEST_UNUSED __attribute__((unused))

static xd_cuda_ctx *ctx GPU_TEST_UNUSED; /* test-binary state, like the harness's own */
static xd_err err GPU_TEST_UNUSED;

static GPU_TEST_UNUSED void gpu_fail(void) {
  fprintf(stderr, "%s\n", err.msg);
  exit(1);
}

/* Program start: the CUDA context (no usable device: "skip" and exit 77) and the device line.
 * Returns quick mode: the argument "quick" (what tools/gpu_test.sh gives under compute-sanitizer)
 * or XD_GPU_QUICK=1. */
static GPU_TEST_UNUSED int gpu_test_begin(int argc, char **argv) {
  const char *q = getenv("XD_GPU_QUICK");
  const int quick = (argc > 1 && strcmp(argv[1], "quick") == 0) || (q && atoi(q));
  if (xd_cuda_ctx_create(&ctx, 0, &err)) {
    printf("skip: no usable CUDA device (%s)\n", err.msg);
    exit(77);
  }
  char name[256];
  int sms = 0;
  if (xd_cuda_device_info(ctx, name, sizeof name, &sms, &err) == 0)
    fprintf(stderr, "device: %s, %d SMs%s\n", name, sms, quick ? " (quick mode)" : "");
  return quick;
}

/* Program end: a pending asynchronous CUDA error fails the run; frees the context; the exit
 * status (test_finish). */
static GPU_TEST_UNUSED int gpu_test_end(void) {
  if (xd_cuda_sync(ctx, &err)) {
    fprintf(stderr, "  FAIL: asynchronous error: %s\n", err.msg);
    xd_t.failed++;
  }
  xd_cuda_ctx_free(ctx);
  return test_finish();
}

/* ||x - ref|| / ||ref|| in double (||x - ref|| when ref is all zeros); NaN anywhere -> inf. */
static GPU_TEST_UNUSED double rel_l2(const float *x, const float *ref, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    const double d = (double)x[i] - ref[i];
    num += d * d;
    den += (double)ref[i] * ref[i];
  }
  if (isnan(num)) return INFINITY;
  return den > 0 ? sqrt(num / den) : sqrt(num);
}

static GPU_TEST_UNUSED float *rand_f32(xd_rng *r, size_t n, double mean, double scale) {
  float *x = xd_malloc(n * sizeof(float) + 1);
  for (size_t i = 0; i < n; i++) x[i] = (float)(mean + scale * xd_rng_normal(r));
  return x;
}

static GPU_TEST_UNUSED float *dup_f32(const float *x, size_t n) {
  float *y = xd_malloc(n * sizeof(float) + 1);
  memcpy(y, x, n * sizeof(float));
  return y;
}

static GPU_TEST_UNUSED void *up_raw(const void *x, size_t bytes) {
  void *d = NULL;
  if (xd_cuda_malloc(&d, bytes, &err) || xd_cuda_upload(ctx, d, x, bytes, &err) || xd_cuda_sync(ctx, &err)) gpu_fail();
  return d;
}

static GPU_TEST_UNUSED void *dev_poisoned(size_t bytes) {
  void *d = NULL;
  if (xd_cuda_malloc(&d, bytes, &err) || xd_cuda_memset(ctx, d, 0xFF, bytes, &err)) gpu_fail();
  return d;
}

static GPU_TEST_UNUSED float *down(const float *d, size_t n) {
  float *h = xd_malloc(n * sizeof(float) + 1);
  if (xd_cuda_download(ctx, h, d, n * sizeof(float), &err)) gpu_fail();
  return h;
}
#endif
