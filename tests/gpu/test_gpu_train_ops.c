/* GPU tests of the training ops (branch cudatrain; not in CTest: CI has no GPU, tools/gpu_test.sh
 * runs every tests/gpu/test_gpu_*.c on the device machine): the backward twins of the
 * teacher-shared ops (matmul through cuBLASLt, rmsnorm incl. the QK-norm segment layouts, rope,
 * swiglu, embedding), each against its fp32 CPU twin (src/ops/cpu) on fresh random inputs.
 *
 * Metric: ||gpu - cpu||_2 / ||cpu||_2. Outputs a call WRITES are poisoned with NaN bytes first
 * (an unwritten element fails); gradients a call ACCUMULATES into start from random nonzero
 * values on both sides (an unwritten element is off by its whole gradient). bf16 inputs are
 * rounded to bf16 on the host first, so the CPU twin sees exactly what the GPU sees.
 * Bounds:
 *   1e-5  fp32 in, fp32 out, short sums (rmsnorm dx over a row, rope, swiglu, fp32 dx over
 *         <= a few hundred terms): ~6e-8 per rounding, growing like sqrt(terms), plus the
 *         fast-math exp / sqrt / divide (a few ulp);
 *   1e-4  fp32 reductions over tokens (dW, db, rmsnorm dw: up to ~1000 terms of both signs,
 *         where cancellation amplifies the relative error);
 *   1e-3  fp32 outputs of the bf16 GEMMs: products of bf16 values are exact in fp32, but the
 *         tensor cores' fp32 accumulation does not round like IEEE sequential adds (the
 *         order and the internal alignment of the MMA adder are not documented); measured
 *         values are printed;
 *   1e-2  bf16 outputs (2^-9 relative rounding per element; ~1e-3 in rel L2 is typical);
 *   0     the embedding backward: the same fp32 additions in the same order as the CPU loop
 *         (checked bit for bit).
 * Determinism: the calls that reduce over tokens (dW, db, rmsnorm dw, dtable) are run twice and
 * must give the same bits.
 * Without an argument the program also times the matmul backward of each projection at the
 * Llama-3.2-1B shape (N 4096, hidden 2048, q|k|v 3072, o 2048, gate|up 16384, down 8192 -> 2048,
 * lm_head vocab 128256) and prints TFLOP/s (no assertion on speed); "quick" skips that (used
 * under compute-sanitizer). Exits 77 (skip) when no CUDA device is present. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "core/core.h"
#include "ops/cpu/embedding.h"
#include "ops/cpu/matmul.h"
#include "ops/cpu/rmsnorm.h"
#include "ops/cpu/rope.h"
#include "ops/cpu/swiglu.h"
#include "ops/cuda/cuda_ops.h"
#include "test.h"
#include "gpu_test_util.h"

#define GPU(call) do { if ((call) != 0) { fprintf(stderr, "  FAIL %s:%d: %s\n", __FILE__, __LINE__, err.msg); xd_t.case_failed = 1; return; } } while (0)

static const double TOL_F32 = 1e-5, TOL_RED = 1e-4, TOL_BF16_GEMM = 1e-3, TOL_BF16 = 1e-2;

static double worst; /* largest rel error / bound among the checks, for the summary line */
#define REL(name, x, ref, n, tol) do { double _r = rel_l2((x), (ref), (n)); \
    fprintf(stderr, "    %-56s rel %.3e (bound %.0e)\n", name, _r, (double)(tol)); \
    if (_r / (tol) > worst) worst = _r / (tol); \
    CHECKF(_r <= (tol), "%s: rel err %.3e > %.1e", name, _r, (double)(tol)); } while (0)

/* Fresh normal values, rounded to bf16 in place (the CPU twin sees what the GPU sees). */
static float *rand_bf16_values(xd_rng *r, size_t n, double mean, double scale) {
  float *x = rand_f32(r, n, mean, scale);
  for (size_t i = 0; i < n; i++) x[i] = xd_bf16_to_f32(xd_f32_to_bf16(x[i]));
  return x;
}
static void die(void) {
  fprintf(stderr, "%s\n", err.msg);
  exit(1);
}
static uint16_t *up_bf16(const float *x, size_t n) {
  uint16_t *h = xd_malloc(n * 2 + 1);
  for (size_t i = 0; i < n; i++) h[i] = xd_f32_to_bf16(x[i]);
  uint16_t *d = up_raw(h, n * 2);
  free(h);
  return d;
}
static float *down_bf16(const uint16_t *d, size_t n) {
  uint16_t *h = xd_malloc(n * 2 + 1);
  float *f = xd_malloc(n * sizeof(float) + 1);
  if (xd_cuda_download(ctx, h, d, n * 2, &err)) die();
  for (size_t i = 0; i < n; i++) f[i] = xd_bf16_to_f32(h[i]);
  free(h);
  return f;
}
static void upload_to(void *d, const void *h, size_t bytes) {
  if (xd_cuda_upload(ctx, d, h, bytes, &err)) die();
}
static void poison(void *d, size_t bytes) {
  if (xd_cuda_memset(ctx, d, 0xFF, bytes, &err)) die();
}
/* Bitwise equality of two device results of the same call (determinism). */
static void same_bits(const char *name, const float *a, const float *b, size_t n) {
  const int same = memcmp(a, b, n * sizeof(float)) == 0;
  fprintf(stderr, "    %-56s %s\n", name, same ? "same bits" : "DIFFERENT BITS");
  CHECKF(same, "%s: two runs differ", name);
}

/* ---- matmul backward --------------------------------------------------------------------------- */
static const char *path_name(int p) { return p == 1 ? "BGRADB epilogue" : p == 0 ? "column-sum kernel (no epilogue algo)" : "unknown"; }

static void mm_case(int N, int Din, int Dout, uint64_t seed) {
  xd_rng r;
  xd_rng_seed(&r, seed);
  const size_t nx = (size_t)N * Din, nw = (size_t)Dout * Din, no = (size_t)N * Dout;
  char name[160];
  fprintf(stderr, "    -- matmul backward N%d Din%d Dout%d\n", N, Din, Dout);
  /* ---- bf16 inputs ---- */
  float *g = rand_bf16_values(&r, no, 0, 1.0), *x = rand_bf16_values(&r, nx, 0, 1.0), *w = rand_bf16_values(&r, nw, 0, 0.05);
  float *dx0 = rand_f32(&r, nx, 0, 0.1), *dw0 = rand_f32(&r, nw, 0, 0.1), *db0 = rand_f32(&r, Dout, 0, 0.1);
  float *cdx = dup_f32(dx0, nx), *cdw = dup_f32(dw0, nw), *cdb = dup_f32(db0, Dout); /* accumulated */
  float *zdx = xd_calloc(nx, 4), *zdw = xd_calloc(nw, 4), *zdb = xd_calloc(Dout, 4);  /* from zero */
  matmul_backward(cdx, cdw, cdb, g, x, w, N, Din, Dout);
  matmul_backward(zdx, zdw, zdb, g, x, w, N, Din, Dout);
  uint16_t *gg = up_bf16(g, no), *gx = up_bf16(x, nx), *gw = up_bf16(w, nw);
  float *gdx = up_raw(dx0, nx * 4), *gdw = up_raw(dw0, nw * 4), *gdb = up_raw(db0, Dout * 4);
  /* accumulate, fp32 dx, db by the epilogue where available */
  GPU(xd_cuda_matmul_backward(ctx, gdx, XD_CUDA_F32, gdw, gdb, gg, gx, gw, N, Din, Dout, XD_CUDA_BW_ACCUMULATE, &err));
  float *h1 = down(gdx, nx), *h2 = down(gdw, nw), *h3 = down(gdb, Dout);
  fprintf(stderr, "    db path: %s\n", path_name(xd_cuda_matmul_backward_bgrad_path(ctx, XD_CUDA_BF16, N, Din, Dout)));
  REL("  bf16 += : dx (fp32)", h1, cdx, nx, TOL_BF16_GEMM);
  REL("  bf16 += : dW (fp32, sum over tokens)", h2, cdw, nw, TOL_BF16_GEMM);
  REL("  bf16 += : db (fp32, sum over tokens)", h3, cdb, Dout, TOL_BF16_GEMM);
  free(h1), free(h2), free(h3);
  /* write (no accumulate) into NaN-poisoned buffers, bf16 dx, epilogue; twice: same bits */
  uint16_t *gdxb = dev_poisoned(nx * 2);
  poison(gdw, nw * 4), poison(gdb, Dout * 4);
  GPU(xd_cuda_matmul_backward(ctx, gdxb, XD_CUDA_BF16, gdw, gdb, gg, gx, gw, N, Din, Dout, 0, &err));
  h1 = down_bf16(gdxb, nx), h2 = down(gdw, nw), h3 = down(gdb, Dout);
  REL("  bf16 = : dx (bf16 out)", h1, zdx, nx, TOL_BF16);
  REL("  bf16 = : dW", h2, zdw, nw, TOL_BF16_GEMM);
  REL("  bf16 = : db", h3, zdb, Dout, TOL_BF16_GEMM);
  poison(gdw, nw * 4), poison(gdb, Dout * 4);
  GPU(xd_cuda_matmul_backward(ctx, gdxb, XD_CUDA_BF16, gdw, gdb, gg, gx, gw, N, Din, Dout, 0, &err));
  float *h2b = down(gdw, nw), *h3b = down(gdb, Dout);
  same_bits("  bf16 = : dW run twice", h2, h2b, nw);
  same_bits("  bf16 = : db run twice", h3, h3b, Dout);
  free(h1), free(h2), free(h3), free(h2b), free(h3b);
  /* the column-sum kernel for db, written and accumulated; dx and dW alone */
  poison(gdw, nw * 4), poison(gdb, Dout * 4);
  GPU(xd_cuda_matmul_backward(ctx, NULL, XD_CUDA_F32, gdw, gdb, gg, gx, gw, N, Din, Dout, XD_CUDA_BW_OWN_BGRAD, &err));
  h2 = down(gdw, nw), h3 = down(gdb, Dout);
  REL("  bf16 = , own bgrad: dW", h2, zdw, nw, TOL_BF16_GEMM);
  REL("  bf16 = , own bgrad: db (column-sum kernel)", h3, zdb, Dout, TOL_RED);
  free(h2), free(h3);
  upload_to(gdb, db0, Dout * 4);
  GPU(xd_cuda_matmul_backward(ctx, NULL, XD_CUDA_F32, NULL, gdb, gg, gx, gw, N, Din, Dout, XD_CUDA_BW_ACCUMULATE, &err));
  h3 = down(gdb, Dout);
  REL("  bf16 += , db only (column-sum kernel)", h3, cdb, Dout, TOL_RED);
  free(h3);
  upload_to(gdx, dx0, nx * 4);
  GPU(xd_cuda_matmul_backward(ctx, gdx, XD_CUDA_F32, NULL, NULL, gg, gx, gw, N, Din, Dout, XD_CUDA_BW_ACCUMULATE, &err));
  h1 = down(gdx, nx);
  REL("  bf16 += , dx only", h1, cdx, nx, TOL_BF16_GEMM);
  free(h1);
  /* XD_CUDA_BW_DX_WRITE: dx written into a NaN-poisoned buffer while dW, db accumulate */
  poison(gdx, nx * 4), upload_to(gdw, dw0, nw * 4), upload_to(gdb, db0, Dout * 4);
  GPU(xd_cuda_matmul_backward(ctx, gdx, XD_CUDA_F32, gdw, gdb, gg, gx, gw, N, Din, Dout,
                              XD_CUDA_BW_ACCUMULATE | XD_CUDA_BW_DX_WRITE, &err));
  h1 = down(gdx, nx), h2 = down(gdw, nw), h3 = down(gdb, Dout);
  REL("  bf16 dx = , dW db += (DX_WRITE): dx", h1, zdx, nx, TOL_BF16_GEMM);
  REL("  bf16 dx = , dW db += (DX_WRITE): dW", h2, cdw, nw, TOL_BF16_GEMM);
  REL("  bf16 dx = , dW db += (DX_WRITE): db", h3, cdb, Dout, TOL_BF16_GEMM);
  free(h1), free(h2), free(h3);
  /* XD_CUDA_BW_DW_WRITE: dW, db written into NaN-poisoned buffers while dx accumulates */
  upload_to(gdx, dx0, nx * 4), poison(gdw, nw * 4), poison(gdb, Dout * 4);
  GPU(xd_cuda_matmul_backward(ctx, gdx, XD_CUDA_F32, gdw, gdb, gg, gx, gw, N, Din, Dout,
                              XD_CUDA_BW_ACCUMULATE | XD_CUDA_BW_DW_WRITE, &err));
  h1 = down(gdx, nx), h2 = down(gdw, nw), h3 = down(gdb, Dout);
  REL("  bf16 dx += , dW db = (DW_WRITE): dx", h1, cdx, nx, TOL_BF16_GEMM);
  REL("  bf16 dx += , dW db = (DW_WRITE): dW", h2, zdw, nw, TOL_BF16_GEMM);
  REL("  bf16 dx += , dW db = (DW_WRITE): db", h3, zdb, Dout, TOL_BF16_GEMM);
  free(h1), free(h2), free(h3);
  upload_to(gdw, dw0, nw * 4);
  GPU(xd_cuda_matmul_backward(ctx, NULL, XD_CUDA_F32, gdw, NULL, gg, gx, gw, N, Din, Dout, XD_CUDA_BW_ACCUMULATE, &err));
  h2 = down(gdw, nw);
  REL("  bf16 += , dW only", h2, cdw, nw, TOL_BF16_GEMM);
  free(h2);
  xd_cuda_free(gg), xd_cuda_free(gx), xd_cuda_free(gw), xd_cuda_free(gdxb);
  free(g), free(x), free(w), free(cdx), free(cdw), free(cdb), free(zdx), free(zdw), free(zdb);
  /* ---- all fp32 (fresh fp32 values, not bf16-representable) ---- */
  g = rand_f32(&r, no, 0, 1.0), x = rand_f32(&r, nx, 0, 1.0), w = rand_f32(&r, nw, 0, 0.05);
  cdx = dup_f32(dx0, nx), cdw = dup_f32(dw0, nw), cdb = dup_f32(db0, Dout);
  zdx = xd_calloc(nx, 4), zdw = xd_calloc(nw, 4), zdb = xd_calloc(Dout, 4);
  matmul_backward(cdx, cdw, cdb, g, x, w, N, Din, Dout);
  matmul_backward(zdx, zdw, zdb, g, x, w, N, Din, Dout);
  float *fg = up_raw(g, no * 4), *fx = up_raw(x, nx * 4), *fw = up_raw(w, nw * 4);
  upload_to(gdx, dx0, nx * 4), upload_to(gdw, dw0, nw * 4), upload_to(gdb, db0, Dout * 4);
  GPU(xd_cuda_matmul_backward_f32(ctx, gdx, gdw, gdb, fg, fx, fw, N, Din, Dout, XD_CUDA_BW_ACCUMULATE, &err));
  h1 = down(gdx, nx), h2 = down(gdw, nw), h3 = down(gdb, Dout);
  fprintf(stderr, "    db path (fp32): %s\n", path_name(xd_cuda_matmul_backward_bgrad_path(ctx, XD_CUDA_F32, N, Din, Dout)));
  snprintf(name, sizeof name, "  fp32 += : dx (%d terms)", Dout);
  REL(name, h1, cdx, nx, Dout <= 1024 ? TOL_F32 : TOL_RED);
  REL("  fp32 += : dW (sum over tokens)", h2, cdw, nw, TOL_RED);
  REL("  fp32 += : db (sum over tokens)", h3, cdb, Dout, TOL_RED);
  free(h1), free(h2), free(h3);
  poison(gdx, nx * 4), poison(gdw, nw * 4), poison(gdb, Dout * 4);
  GPU(xd_cuda_matmul_backward_f32(ctx, gdx, gdw, gdb, fg, fx, fw, N, Din, Dout, XD_CUDA_BW_OWN_BGRAD, &err));
  h1 = down(gdx, nx), h2 = down(gdw, nw), h3 = down(gdb, Dout);
  REL("  fp32 = , own bgrad: dx", h1, zdx, nx, Dout <= 1024 ? TOL_F32 : TOL_RED);
  REL("  fp32 = , own bgrad: dW", h2, zdw, nw, TOL_RED);
  REL("  fp32 = , own bgrad: db", h3, zdb, Dout, TOL_RED);
  free(h1), free(h2), free(h3);
  xd_cuda_free(fg), xd_cuda_free(fx), xd_cuda_free(fw), xd_cuda_free(gdx), xd_cuda_free(gdw), xd_cuda_free(gdb);
  free(g), free(x), free(w), free(cdx), free(cdw), free(cdb), free(zdx), free(zdw), free(zdb);
  free(dx0), free(dw0), free(db0);
}
static void test_matmul_backward(void) {
  mm_case(77, 136, 200, 11);   /* not multiples of the GEMM tiles */
  mm_case(33, 100, 65, 12);    /* odd Dout, leading dims not multiples of 8 */
  mm_case(1000, 64, 96, 13);   /* several 256-row partials in the column sums */
  mm_case(256, 512, 1536, 14); /* dx over 1536 terms */
}

/* ---- rmsnorm backward (dense, and the QK-norm segments inside fused q|k|v rows) ---------------- */
/* CPU reference on a dense [rows, C] copy: forward for rstd (the GPU recomputes it), then backward. */
static void rms_cpu(float *dx, float *dw, const float *g, const float *x, const float *w, int rows, int C, float eps) {
  float *scr = xd_malloc((size_t)rows * C * 4 + 1), *rstd = xd_malloc((size_t)rows * 4 + 1);
  rmsnorm_forward(scr, rstd, x, w, rows, C, eps);
  rmsnorm_backward(dx, dw, g, x, w, rstd, rows, C);
  free(scr), free(rstd);
}

static void rms_dense_case(int N, int C, xd_cuda_dtype xt, xd_cuda_dtype wt, uint64_t seed) {
  xd_rng r;
  xd_rng_seed(&r, seed);
  const size_t n = (size_t)N * C;
  const float eps = 1e-5f;
  float *x = xt == XD_CUDA_BF16 ? rand_bf16_values(&r, n, 0.3, 2.0) : rand_f32(&r, n, 0.3, 2.0);
  float *w = wt == XD_CUDA_BF16 ? rand_bf16_values(&r, C, 1.0, 0.3) : rand_f32(&r, C, 1.0, 0.3);
  float *g = rand_f32(&r, n, 0, 1.0), *dx0 = rand_f32(&r, n, 0, 0.1), *dw0 = rand_f32(&r, C, 0, 0.1);
  float *cdx = dup_f32(dx0, n), *cdw = dup_f32(dw0, C);
  rms_cpu(cdx, cdw, g, x, w, N, C, eps);
  void *gx = xt == XD_CUDA_BF16 ? (void *)up_bf16(x, n) : up_raw(x, n * 4);
  void *gw = wt == XD_CUDA_BF16 ? (void *)up_bf16(w, C) : up_raw(w, C * 4);
  float *gg = up_raw(g, n * 4), *gdx = up_raw(dx0, n * 4), *gdw = up_raw(dw0, C * 4);
  GPU(xd_cuda_rmsnorm_backward(ctx, gdx, gdw, gg, gx, xt, gw, wt, N, C, eps, &err));
  float *hdx = down(gdx, n), *hdw = down(gdw, C);
  char name[160];
  snprintf(name, sizeof name, "rmsnorm N%d C%d x %s w %s: dx", N, C, xt == XD_CUDA_BF16 ? "bf16" : "fp32",
           wt == XD_CUDA_BF16 ? "bf16" : "fp32");
  REL(name, hdx, cdx, n, TOL_F32);
  REL("  dw (sum over tokens)", hdw, cdw, C, TOL_RED);
  /* determinism of dw, and dw alone (dx NULL) */
  upload_to(gdw, dw0, C * 4);
  GPU(xd_cuda_rmsnorm_backward(ctx, NULL, gdw, gg, gx, xt, gw, wt, N, C, eps, &err));
  float *hdw2 = down(gdw, C);
  same_bits("  dw run twice (second with dx NULL)", hdw, hdw2, C);
  xd_cuda_free(gx), xd_cuda_free(gw), xd_cuda_free(gg), xd_cuda_free(gdx), xd_cuda_free(gdw);
  free(x), free(w), free(g), free(dx0), free(dw0), free(cdx), free(cdw), free(hdx), free(hdw), free(hdw2);
}

/* xd_cuda_rmsnorm_backward_res: dx = dres + J^T g written into a poisoned buffer (dres a
 * separate buffer, NULL, or dx itself), dx16 = bf16 of that dx bit for bit, dw +=. */
static void rms_res_case(int N, int C, xd_cuda_dtype xt, uint64_t seed) {
  xd_rng r;
  xd_rng_seed(&r, seed);
  const size_t n = (size_t)N * C;
  const float eps = 1e-5f;
  float *x = xt == XD_CUDA_BF16 ? rand_bf16_values(&r, n, 0.3, 2.0) : rand_f32(&r, n, 0.3, 2.0);
  float *w = rand_f32(&r, C, 1.0, 0.3), *g = rand_f32(&r, n, 0, 1.0), *res = rand_f32(&r, n, 0, 0.5);
  float *dw0 = rand_f32(&r, C, 0, 0.1);
  void *gx = xt == XD_CUDA_BF16 ? (void *)up_bf16(x, n) : up_raw(x, n * 4);
  float *gw = up_raw(w, C * 4), *gg = up_raw(g, n * 4), *gres = up_raw(res, n * 4), *gdw = up_raw(dw0, C * 4);
  float *gdx = dev_poisoned(n * 4);
  uint16_t *gdx16 = dev_poisoned(n * 2);
  for (int mode = 0; mode < 3; mode++) { /* 0: dres separate, 1: dres NULL, 2: dres == dx (in place) */
    float *cdx = mode == 1 ? xd_calloc(n, 4) : dup_f32(res, n), *cdw = dup_f32(dw0, C);
    rms_cpu(cdx, cdw, g, x, w, N, C, eps);
    if (mode == 2) upload_to(gdx, res, n * 4);
    else poison(gdx, n * 4);
    upload_to(gdw, dw0, C * 4);
    poison(gdx16, n * 2);
    GPU(xd_cuda_rmsnorm_backward_res(ctx, gdx, gdx16, mode == 0 ? gres : mode == 1 ? NULL : gdx, gdw, gg, gx, xt, gw,
                                     XD_CUDA_F32, N, C, eps, &err));
    float *hdx = down(gdx, n), *hdw = down(gdw, C), *hdx16 = down_bf16(gdx16, n);
    char name[160];
    snprintf(name, sizeof name, "rmsnorm res N%d C%d x %s, dres %s: dx", N, C, xt == XD_CUDA_BF16 ? "bf16" : "fp32",
             mode == 0 ? "separate" : mode == 1 ? "NULL" : "in place");
    REL(name, hdx, cdx, n, TOL_F32);
    REL("  dw (sum over tokens)", hdw, cdw, C, TOL_RED);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += xd_f32_to_bf16(hdx[i]) != xd_f32_to_bf16(hdx16[i]);
    fprintf(stderr, "    %-56s %zu of %zu differ\n", "  dx16 vs bf16(dx)", bad, n);
    CHECK(bad == 0);
    free(cdx), free(cdw), free(hdx), free(hdw), free(hdx16);
  }
  xd_cuda_free(gx), xd_cuda_free(gw), xd_cuda_free(gg), xd_cuda_free(gres), xd_cuda_free(gdw), xd_cuda_free(gdx),
      xd_cuda_free(gdx16);
  free(x), free(w), free(g), free(res), free(dw0);
}

/* QK-norm inside fused rows [N, (H + 2G) d]: x bf16 (the q|k|v projection), dout and dx fp32
 * fused gradient buffers; qwen3 per head (n_seg = heads, C = d) or olmo whole projection
 * (n_seg = 1, C = heads * d), on the q or the k slice. Everything outside the slice of dx must
 * keep its value. */
static void qknorm_case(int N, int H, int G, int d, int per_head, int on_k, uint64_t seed) {
  xd_rng r;
  xd_rng_seed(&r, seed);
  const int ld = (H + 2 * G) * d, heads = on_k ? G : H, off = on_k ? H * d : 0;
  const int n_seg = per_head ? heads : 1, C = per_head ? d : heads * d, rows = N * n_seg;
  const size_t nf = (size_t)N * ld, nd = (size_t)N * heads * d;
  const float eps = 1e-6f;
  float *x = rand_bf16_values(&r, nf, 0.2, 1.5), *w = rand_f32(&r, C, 1.0, 0.3);
  float *g = rand_f32(&r, nf, 0, 1.0), *dx0 = rand_f32(&r, nf, 0, 0.1), *dw0 = rand_f32(&r, C, 0, 0.1);
  /* dense copies of the slice: [N, heads*d] = [rows, C] */
  float *xs = xd_malloc(nd * 4), *gs = xd_malloc(nd * 4), *dxs = xd_malloc(nd * 4), *cdw = dup_f32(dw0, C);
  for (int n = 0; n < N; n++) {
    memcpy(xs + (size_t)n * heads * d, x + (size_t)n * ld + off, (size_t)heads * d * 4);
    memcpy(gs + (size_t)n * heads * d, g + (size_t)n * ld + off, (size_t)heads * d * 4);
    memcpy(dxs + (size_t)n * heads * d, dx0 + (size_t)n * ld + off, (size_t)heads * d * 4);
  }
  rms_cpu(dxs, cdw, gs, xs, w, rows, C, eps);
  float *cdx = dup_f32(dx0, nf);
  for (int n = 0; n < N; n++) memcpy(cdx + (size_t)n * ld + off, dxs + (size_t)n * heads * d, (size_t)heads * d * 4);
  uint16_t *gx = up_bf16(x, nf);
  float *gw = up_raw(w, C * 4), *gg = up_raw(g, nf * 4), *gdx = up_raw(dx0, nf * 4), *gdw = up_raw(dw0, C * 4);
  GPU(xd_cuda_rmsnorm_backward_segments(ctx, gdx + off, ld, gdw, gg + off, ld, gx + off, XD_CUDA_BF16, ld, gw,
                                        XD_CUDA_F32, N, n_seg, C, eps, &err));
  float *hdx = down(gdx, nf), *hdw = down(gdw, C);
  char name[160];
  snprintf(name, sizeof name, "QK-norm %s on %s N%d H%d G%d d%d (fused rows): dx", per_head ? "qwen3 per head" : "olmo whole proj",
           on_k ? "k" : "q", N, H, G, d);
  REL(name, hdx, cdx, nf, TOL_F32);
  REL("  dw (sum over tokens and heads)", hdw, cdw, C, TOL_RED);
  int untouched = 1;
  for (int n = 0; n < N; n++)
    for (int i = 0; i < ld; i++)
      if (i < off || i >= off + heads * d) untouched &= memcmp(&hdx[(size_t)n * ld + i], &dx0[(size_t)n * ld + i], 4) == 0;
  CHECKF(untouched, "QK-norm backward wrote outside its slice");
  xd_cuda_free(gx), xd_cuda_free(gw), xd_cuda_free(gg), xd_cuda_free(gdx), xd_cuda_free(gdw);
  free(x), free(w), free(g), free(dx0), free(dw0), free(xs), free(gs), free(dxs), free(cdw), free(cdx), free(hdx), free(hdw);
}
static void test_rmsnorm_backward(void) {
  rms_dense_case(37, 2048, XD_CUDA_F32, XD_CUDA_F32, 21);  /* fp32 residual stream input */
  rms_dense_case(300, 1000, XD_CUDA_BF16, XD_CUDA_BF16, 22);
  rms_dense_case(1100, 96, XD_CUDA_F32, XD_CUDA_BF16, 23); /* 5 dw partials, C < 256 */
  rms_dense_case(5, 33, XD_CUDA_BF16, XD_CUDA_F32, 24);    /* C not a multiple of 32 */
  qknorm_case(77, 8, 2, 64, 1, 0, 25);   /* qwen3 q: 616 rows of 64 */
  qknorm_case(300, 8, 2, 128, 1, 1, 26); /* qwen3 k */
  qknorm_case(45, 6, 3, 64, 0, 0, 27);   /* olmo q: rows of 384 */
  qknorm_case(45, 6, 3, 64, 0, 1, 28);   /* olmo k */
  rms_res_case(37, 2048, XD_CUDA_F32, 29);
  rms_res_case(1100, 96, XD_CUDA_BF16, 30);
  rms_res_case(5, 33, XD_CUDA_F32, 31);
  rms_res_case(203, 3000, XD_CUDA_BF16, 32); /* fused path, 4 column quads a thread, some idle */
  rms_res_case(4096, 2048, XD_CUDA_F32, 33); /* the stage II call at the 1B shape */
}

/* The stage II call at the 1B shape (N 4096, C 2048, x / w fp32, dres separate, dx16, dw): the
 * fused kernel (default) vs the two-kernel path (XD_TRAIN_OPS_LEGACY=1) in one process; both
 * against the CPU, bitwise run to run, and timed (median of 20) with the bytes they must move. */
static double median(double *x, int n);
static void test_rmsnorm_backward_1b(void) {
  enum { N = 4096, C = 2048, IT = 20 };
  const size_t n = (size_t)N * C;
  const float eps = 1e-5f;
  xd_rng r;
  xd_rng_seed(&r, 34);
  float *x = rand_f32(&r, n, 0.3, 2.0), *w = rand_f32(&r, C, 1.0, 0.3), *g = rand_f32(&r, n, 0, 1.0);
  float *res = rand_f32(&r, n, 0, 0.5), *dw0 = rand_f32(&r, C, 0, 0.1);
  float *cdx = dup_f32(res, n), *cdw = dup_f32(dw0, C);
  rms_cpu(cdx, cdw, g, x, w, N, C, eps);
  float *gx = up_raw(x, n * 4), *gw = up_raw(w, C * 4), *gg = up_raw(g, n * 4), *gres = up_raw(res, n * 4);
  float *gdw = up_raw(dw0, C * 4), *gdx = dev_poisoned(n * 4);
  uint16_t *gdx16 = dev_poisoned(n * 2);
  const double bytes = 4.0 * n * 4 + 2.0 * n; /* g, x, dres read; dx written (fp32) and dx16 (bf16) */
  double ms[2] = {0, 0};
  for (int mode = 0; mode < 2; mode++) { /* 0: fused (default), 1: XD_TRAIN_OPS_LEGACY=1 */
    if (mode) setenv("XD_TRAIN_OPS_LEGACY", "1", 1);
    float *first = NULL;
    for (int rep = 0; rep < 2; rep++) {
      upload_to(gdw, dw0, C * 4);
      poison(gdx, n * 4);
      GPU(xd_cuda_rmsnorm_backward_res(ctx, gdx, gdx16, gres, gdw, gg, gx, XD_CUDA_F32, gw, XD_CUDA_F32, N, C, eps, &err));
      float *hdx = down(gdx, n), *hdw = down(gdw, C);
      if (rep == 0) {
        REL(mode ? "rmsnorm res 1B shape, two-kernel path: dx" : "rmsnorm res 1B shape, fused: dx", hdx, cdx, n, TOL_F32);
        REL("  dw (sum over 4096 tokens)", hdw, cdw, C, TOL_RED);
        first = hdw;
      } else {
        same_bits("  dw run twice", hdw, first, C);
        free(hdw), free(first);
      }
      free(hdx);
    }
    double t[IT];
    for (int it = 0; it < IT + 1; it++) {
      if (xd_cuda_sync(ctx, &err)) die();
      const double t0 = xd_now();
      GPU(xd_cuda_rmsnorm_backward_res(ctx, gdx, gdx16, gres, gdw, gg, gx, XD_CUDA_F32, gw, XD_CUDA_F32, N, C, eps, &err));
      if (xd_cuda_sync(ctx, &err)) die();
      if (it) t[it - 1] = xd_now() - t0;
    }
    ms[mode] = median(t, IT) * 1e3;
    unsetenv("XD_TRAIN_OPS_LEGACY");
  }
  fprintf(stderr, "    TIMING rmsnorm backward (res, dx16, dw) N %d C %d: fused %.3f ms (%.0f GB/s), two-kernel %.3f ms "
                  "(%.0f GB/s), %.2fx\n", N, C, ms[0], bytes / ms[0] / 1e6, ms[1], bytes / ms[1] / 1e6, ms[1] / ms[0]);
  xd_cuda_free(gx), xd_cuda_free(gw), xd_cuda_free(gg), xd_cuda_free(gres), xd_cuda_free(gdw), xd_cuda_free(gdx),
      xd_cuda_free(gdx16);
  free(x), free(w), free(g), free(res), free(dw0), free(cdx), free(cdw);
}

/* ---- rope backward: in place on the dq (or dk) slice of a fused fp32 gradient buffer ---------- */
static void rope_bw_case(int N, int nh, int d, int off_heads, int ld_heads, uint64_t seed) {
  const int half = d / 2, ld = ld_heads * d, off = off_heads * d, n_pos = 400;
  xd_rng r;
  xd_rng_seed(&r, seed);
  xd_rope_config rc = {0};
  rc.kind = XD_ROPE_LLAMA3, rc.theta = 500000.0, rc.factor = 32.0, rc.low_freq_factor = 1.0;
  rc.high_freq_factor = 4.0, rc.original_max_pos = 8192;
  float *inv = xd_malloc((size_t)half * 4), scl = 1.f;
  rope_inv_freq(&rc, d, 131072, n_pos, inv, &scl);
  float *ct = xd_malloc((size_t)n_pos * half * 4), *st = xd_malloc((size_t)n_pos * half * 4);
  rope_table(ct, st, inv, scl, n_pos, half);
  int32_t *pos = xd_malloc((size_t)N * 4);
  for (int i = 0; i < N; i++) pos[i] = (int32_t)(xd_rng_u64(&r) % n_pos);
  const size_t nf = (size_t)N * ld, nd = (size_t)N * nh * d;
  float *g = rand_f32(&r, nf, 0, 1.0), *dense = xd_malloc(nd * 4), *ref = dup_f32(g, nf);
  for (int n = 0; n < N; n++) memcpy(dense + (size_t)n * nh * d, g + (size_t)n * ld + off, (size_t)nh * d * 4);
  rope_backward(dense, dense, ct, st, pos, N, nh, d);
  for (int n = 0; n < N; n++) memcpy(ref + (size_t)n * ld + off, dense + (size_t)n * nh * d, (size_t)nh * d * 4);
  float *gg = up_raw(g, nf * 4), *gct = up_raw(ct, (size_t)n_pos * half * 4), *gst = up_raw(st, (size_t)n_pos * half * 4);
  int32_t *gpos = up_raw(pos, (size_t)N * 4);
  GPU(xd_cuda_rope_backward(ctx, gg + off, ld, gct, gst, gpos, N, nh, d, &err));
  float *h = down(gg, nf);
  char name[160];
  snprintf(name, sizeof name, "rope backward llama3 N%d heads%d d%d (slice of rows of %d)", N, nh, d, ld);
  REL(name, h, ref, nf, TOL_F32);
  int untouched = 1;
  for (int n = 0; n < N; n++)
    for (int i = 0; i < ld; i++)
      if (i < off || i >= off + nh * d) untouched &= memcmp(&h[(size_t)n * ld + i], &g[(size_t)n * ld + i], 4) == 0;
  CHECKF(untouched, "rope backward wrote outside its heads");
  xd_cuda_free(gg), xd_cuda_free(gct), xd_cuda_free(gst), xd_cuda_free(gpos);
  free(inv), free(ct), free(st), free(pos), free(g), free(dense), free(ref), free(h);
}
/* xd_cuda_rope_backward_qkv_bf16 (the student's q|k|v gradient without QK-norm): against the CPU
 * (rope_backward, the adds, bf16 rounding) and bit for bit against the three-step GPU path it
 * replaces (rope backward in place, add, bf16 gather); the padding past (H + 2G) d is untouched. */
static void rope_qkv_case(int N, int H, int G, int d, int pad, uint64_t seed) {
  const int half = d / 2, n_pos = 300, Hd = H * d, Gd = G * d, ldo = Hd + 2 * Gd + pad;
  xd_rng r;
  xd_rng_seed(&r, seed);
  xd_rope_config rc = {0};
  rc.kind = XD_ROPE_LLAMA3, rc.theta = 500000.0, rc.factor = 32.0, rc.low_freq_factor = 1.0;
  rc.high_freq_factor = 4.0, rc.original_max_pos = 8192;
  float *inv = xd_malloc((size_t)half * 4), scl = 1.f;
  rope_inv_freq(&rc, d, 131072, n_pos, inv, &scl);
  float *ct = xd_malloc((size_t)n_pos * half * 4), *st = xd_malloc((size_t)n_pos * half * 4);
  rope_table(ct, st, inv, scl, n_pos, half);
  int32_t *pos = xd_malloc((size_t)N * 4);
  for (int i = 0; i < N; i++) pos[i] = (int32_t)(xd_rng_u64(&r) % n_pos);
  const size_t nq = (size_t)N * Hd, nk = (size_t)N * Gd, no = (size_t)N * ldo;
  float *dq = rand_f32(&r, nq, 0, 1.0), *dqr = rand_f32(&r, nq, 0, 1.0), *dk = rand_f32(&r, nk, 0, 1.0);
  float *dkr = rand_f32(&r, nk, 0, 1.0), *dvr = rand_f32(&r, nk, 0, 1.0);
  /* CPU: rope_backward in place, the adds, then the fused row */
  float *cq = dup_f32(dq, nq), *ck = dup_f32(dk, nk), *ref = xd_calloc(no, 4);
  rope_backward(cq, cq, ct, st, pos, N, H, d);
  rope_backward(ck, ck, ct, st, pos, N, G, d);
  for (int n = 0; n < N; n++) {
    for (int j = 0; j < Hd; j++) ref[(size_t)n * ldo + j] = dqr[(size_t)n * Hd + j] + cq[(size_t)n * Hd + j];
    for (int j = 0; j < Gd; j++) {
      ref[(size_t)n * ldo + Hd + j] = dkr[(size_t)n * Gd + j] + ck[(size_t)n * Gd + j];
      ref[(size_t)n * ldo + Hd + Gd + j] = dvr[(size_t)n * Gd + j];
    }
  }
  float *gct = up_raw(ct, (size_t)n_pos * half * 4), *gst = up_raw(st, (size_t)n_pos * half * 4);
  int32_t *gpos = up_raw(pos, (size_t)N * 4);
  float *gq = up_raw(dq, nq * 4), *gqr = up_raw(dqr, nq * 4), *gk = up_raw(dk, nk * 4), *gkr = up_raw(dkr, nk * 4);
  float *gvr = up_raw(dvr, nk * 4);
  uint16_t *go = dev_poisoned(no * 2), *go3 = dev_poisoned(no * 2);
  GPU(xd_cuda_rope_backward_qkv_bf16(ctx, go, ldo, gq, gqr, gk, gkr, gvr, gct, gst, gpos, N, H, G, d, &err));
  /* the three-step path (it modifies dq, dk, dqr, dkr in place: after the fused call) */
  GPU(xd_cuda_rope_backward(ctx, gq, Hd, gct, gst, gpos, N, H, d, &err));
  GPU(xd_cuda_rope_backward(ctx, gk, Gd, gct, gst, gpos, N, G, d, &err));
  GPU(xd_cuda_add_f32(ctx, gqr, gq, nq, &err));
  GPU(xd_cuda_add_f32(ctx, gkr, gk, nk, &err));
  GPU(xd_cuda_f32_to_bf16_2d(ctx, go3, (size_t)ldo, gqr, (size_t)Hd, (size_t)N, (size_t)Hd, &err));
  GPU(xd_cuda_f32_to_bf16_2d(ctx, go3 + Hd, (size_t)ldo, gkr, (size_t)Gd, (size_t)N, (size_t)Gd, &err));
  GPU(xd_cuda_f32_to_bf16_2d(ctx, go3 + Hd + Gd, (size_t)ldo, gvr, (size_t)Gd, (size_t)N, (size_t)Gd, &err));
  uint16_t *h = xd_malloc(no * 2), *h3 = xd_malloc(no * 2);
  if (xd_cuda_download(ctx, h, go, no * 2, &err) || xd_cuda_download(ctx, h3, go3, no * 2, &err)) die();
  float *hf = xd_malloc(no * 4), *rf = xd_malloc(no * 4);
  size_t diff = 0, outside = 0, k = 0;
  for (int n = 0; n < N; n++)
    for (int j = 0; j < ldo; j++) {
      const size_t i = (size_t)n * ldo + j;
      if (j >= Hd + 2 * Gd) { outside += h[i] != 0xFFFF; continue; }
      diff += h[i] != h3[i];
      hf[k] = xd_bf16_to_f32(h[i]), rf[k] = ref[i], k++;
    }
  char name[160];
  snprintf(name, sizeof name, "rope backward + add + bf16 q|k|v N%d H%d G%d d%d", N, H, G, d);
  REL(name, hf, rf, k, TOL_BF16);
  fprintf(stderr, "    %-56s %zu differ, %zu written outside\n", "  vs rope_backward + add + f32_to_bf16_2d", diff, outside);
  CHECK(diff == 0 && outside == 0);
  xd_cuda_free(gct), xd_cuda_free(gst), xd_cuda_free(gpos), xd_cuda_free(gq), xd_cuda_free(gqr), xd_cuda_free(gk);
  xd_cuda_free(gkr), xd_cuda_free(gvr), xd_cuda_free(go), xd_cuda_free(go3);
  free(inv), free(ct), free(st), free(pos), free(dq), free(dqr), free(dk), free(dkr), free(dvr), free(cq), free(ck);
  free(ref), free(h), free(h3), free(hf), free(rf);
}
static void test_rope_backward(void) {
  rope_bw_case(50, 6, 64, 0, 10, 31);   /* dq: heads 0..5 of rows of 10 heads */
  rope_bw_case(77, 2, 128, 8, 12, 32);  /* dk: heads 8..9 of rows of 12 heads, d 128 */
  rope_bw_case(13, 3, 6, 0, 3, 33);     /* dense, tiny odd half */
  rope_qkv_case(97, 8, 2, 64, 0, 34);   /* the 1B head layout, GQA 4:1 */
  rope_qkv_case(33, 3, 3, 12, 6, 35);   /* d 12 (half 6), G = H, padded rows */
  rope_qkv_case(2048, 32, 8, 64, 0, 36);
}

/* ---- swiglu backward: fused gate|up (bf16) in, fused dgate|dup (fp32) accumulated -------------- */
static void swiglu_bw_case(int N, int F, uint64_t seed) {
  xd_rng r;
  xd_rng_seed(&r, seed);
  const size_t nf = (size_t)N * 2 * F, n = (size_t)N * F;
  float *gu = rand_bf16_values(&r, nf, 0, 2.0), *dout = rand_f32(&r, n, 0, 1.0), *d0 = rand_f32(&r, nf, 0, 0.1);
  float *g = xd_malloc(n * 4), *u = xd_malloc(n * 4), *dg = xd_malloc(n * 4), *du = xd_malloc(n * 4);
  for (int i = 0; i < N; i++) {
    memcpy(g + (size_t)i * F, gu + (size_t)i * 2 * F, (size_t)F * 4);
    memcpy(u + (size_t)i * F, gu + (size_t)i * 2 * F + F, (size_t)F * 4);
    memcpy(dg + (size_t)i * F, d0 + (size_t)i * 2 * F, (size_t)F * 4);
    memcpy(du + (size_t)i * F, d0 + (size_t)i * 2 * F + F, (size_t)F * 4);
  }
  swiglu_backward(dg, du, dout, g, u, n);
  float *ref = xd_malloc(nf * 4);
  for (int i = 0; i < N; i++) {
    memcpy(ref + (size_t)i * 2 * F, dg + (size_t)i * F, (size_t)F * 4);
    memcpy(ref + (size_t)i * 2 * F + F, du + (size_t)i * F, (size_t)F * 4);
  }
  uint16_t *ggu = up_bf16(gu, nf);
  float *gdout = up_raw(dout, n * 4), *gd = up_raw(d0, nf * 4);
  GPU(xd_cuda_swiglu_backward(ctx, gd, gd + F, 2 * F, gdout, ggu, ggu + F, 2 * F, N, F, &err));
  float *h = down(gd, nf);
  char name[160];
  snprintf(name, sizeof name, "swiglu backward fused N%d F%d: dgate|dup", N, F);
  REL(name, h, ref, nf, TOL_F32);
  /* the bf16 variant: written (poisoned buffer), vs the CPU op from zero gradients */
  memset(dg, 0, n * 4), memset(du, 0, n * 4);
  swiglu_backward(dg, du, dout, g, u, n);
  for (int i = 0; i < N; i++) {
    memcpy(ref + (size_t)i * 2 * F, dg + (size_t)i * F, (size_t)F * 4);
    memcpy(ref + (size_t)i * 2 * F + F, du + (size_t)i * F, (size_t)F * 4);
  }
  uint16_t *gd16 = dev_poisoned(nf * 2);
  GPU(xd_cuda_swiglu_backward_bf16(ctx, gd16, gd16 + F, 2 * F, gdout, ggu, ggu + F, 2 * F, N, F, &err));
  float *h16 = down_bf16(gd16, nf);
  snprintf(name, sizeof name, "swiglu backward bf16 out N%d F%d: dgate|dup", N, F);
  REL(name, h16, ref, nf, TOL_BF16);
  { /* output one element off 4-byte alignment: the one-feature-per-thread kernel; same bits */
    uint16_t *gd16b = dev_poisoned(nf * 2 + 2);
    GPU(xd_cuda_swiglu_backward_bf16(ctx, gd16b + 1, gd16b + 1 + F, 2 * F, gdout, ggu, ggu + F, 2 * F, N, F, &err));
    float *h16b = down_bf16(gd16b + 1, nf);
    same_bits("  bf16 out, scalar kernel vs paired", h16b, h16, nf);
    xd_cuda_free(gd16b);
    free(h16b);
  }
  xd_cuda_free(ggu), xd_cuda_free(gdout), xd_cuda_free(gd), xd_cuda_free(gd16);
  free(gu), free(dout), free(d0), free(g), free(u), free(dg), free(du), free(ref), free(h), free(h16);
}
static void test_swiglu_backward(void) {
  swiglu_bw_case(37, 300, 41);
  swiglu_bw_case(64, 512, 42);
  swiglu_bw_case(3, 7, 43);
}

/* ---- embedding backward: duplicate ids summed deterministically, bit-identical to the CPU ------ */
static void emb_bw_case(int N, int D, int V, int distinct, uint64_t seed) {
  xd_rng r;
  xd_rng_seed(&r, seed);
  int32_t *ids = xd_malloc((size_t)N * 4);
  /* ids from a few distinct values spread over the vocabulary (many duplicates), one id that
   * fills a quarter of the tokens, and the first and last rows of the table */
  for (int i = 0; i < N; i++) ids[i] = (int32_t)((xd_rng_u64(&r) % distinct) * (V / distinct));
  for (int i = 0; i < N; i += 4) ids[i] = V / 3;
  ids[N - 1] = V - 1, ids[N / 2] = 0;
  const size_t nt = (size_t)V * D, no = (size_t)N * D;
  float *dout = rand_f32(&r, no, 0, 1.0), *t0 = rand_f32(&r, nt, 0, 0.1), *ref = dup_f32(t0, nt);
  embedding_backward(ref, dout, ids, N, D);
  int32_t *gids = up_raw(ids, (size_t)N * 4);
  float *gdout = up_raw(dout, no * 4), *gt = up_raw(t0, nt * 4);
  GPU(xd_cuda_embedding_backward(ctx, gt, gdout, gids, N, D, V, &err));
  float *h = down(gt, nt);
  size_t diff = 0;
  for (size_t i = 0; i < nt; i++) diff += memcmp(&h[i], &ref[i], 4) != 0;
  char name[160];
  snprintf(name, sizeof name, "embedding backward N%d D%d V%d (%d distinct + hot id): dtable", N, D, V, distinct);
  REL(name, h, ref, nt, 1e-7);
  fprintf(stderr, "    %-56s %zu elements differ bitwise\n", "  vs the CPU's serial loop:", diff);
  CHECKF(diff == 0, "embedding backward: %zu elements differ from the CPU bitwise", diff);
  xd_cuda_free(gids), xd_cuda_free(gdout), xd_cuda_free(gt);
  free(ids), free(dout), free(t0), free(ref), free(h);
}
static void test_embedding_backward(void) {
  emb_bw_case(500, 200, 1000, 37, 51);
  emb_bw_case(3000, 2048, 5000, 300, 52);
  emb_bw_case(1, 70, 10, 1, 53);
}

/* ---- timings at the Llama-3.2-1B shape ------------------------------------------------------- */
static double median(double *x, int n) {
  for (int i = 1; i < n; i++)
    for (int j = i; j > 0 && x[j] < x[j - 1]; j--) {
      const double t = x[j];
      x[j] = x[j - 1], x[j - 1] = t;
    }
  return x[n / 2];
}
#define BENCH_IT 5
static void test_matmul_backward_1b(void) {
  const int N = 4096;
  const struct { const char *name; int Din, Dout; } P[] = {
      {"q|k|v", 2048, 3072}, {"o", 2048, 2048}, {"gate|up", 2048, 16384}, {"down", 8192, 2048}, {"lm_head", 2048, 128256}};
  const int np = (int)(sizeof P / sizeof *P);
  size_t mx = 0, mw = 0, mo = 0, md = 0;
  for (int i = 0; i < np; i++) {
    const size_t a = (size_t)N * P[i].Din, b = (size_t)P[i].Dout * P[i].Din, c = (size_t)N * P[i].Dout;
    mx = a > mx ? a : mx, mw = b > mw ? b : mw, mo = c > mo ? c : mo, md = (size_t)P[i].Dout > md ? (size_t)P[i].Dout : md;
  }
  uint16_t *g = NULL, *x = NULL, *w = NULL;
  float *dx = NULL, *dw = NULL, *db = NULL;
  GPU(xd_cuda_malloc((void **)&g, mo * 2, &err));
  GPU(xd_cuda_malloc((void **)&x, mx * 2, &err));
  GPU(xd_cuda_malloc((void **)&w, mw * 2, &err));
  GPU(xd_cuda_malloc((void **)&dx, mx * 4, &err));
  GPU(xd_cuda_malloc((void **)&dw, mw * 4, &err));
  GPU(xd_cuda_malloc((void **)&db, md * 4, &err));
  GPU(xd_cuda_fill_uniform_bf16(ctx, g, mo, 1, 1.0f, &err));
  GPU(xd_cuda_fill_uniform_bf16(ctx, x, mx, 2, 1.0f, &err));
  GPU(xd_cuda_fill_uniform_bf16(ctx, w, mw, 3, 0.02f, &err));
  GPU(xd_cuda_memset(ctx, dx, 0, mx * 4, &err));
  GPU(xd_cuda_memset(ctx, dw, 0, mw * 4, &err));
  GPU(xd_cuda_memset(ctx, db, 0, md * 4, &err));
  fprintf(stderr, "    TIMING matmul backward, N %d tokens, bf16 in, fp32 dx/dW/db, accumulate (median of %d):\n", N, BENCH_IT);
  for (int i = 0; i < np; i++) {
    const int Din = P[i].Din, Dout = P[i].Dout;
    const double fl = 2.0 * N * (double)Din * Dout; /* one GEMM */
    double t[4][BENCH_IT];
    /* 0: dx only; 1: dW + db (epilogue where available); 2: dx + dW + db; 3: dW + db by the column-sum kernel */
    for (int v = 0; v < 4; v++)
      for (int it = 0; it <= BENCH_IT; it++) { /* it 0: warm-up (heuristic, scratch pools) */
        GPU(xd_cuda_sync(ctx, &err));
        const double t0 = xd_now();
        if (v == 0) GPU(xd_cuda_matmul_backward(ctx, dx, XD_CUDA_F32, NULL, NULL, g, x, w, N, Din, Dout, XD_CUDA_BW_ACCUMULATE, &err));
        if (v == 1) GPU(xd_cuda_matmul_backward(ctx, NULL, XD_CUDA_F32, dw, db, g, x, w, N, Din, Dout, XD_CUDA_BW_ACCUMULATE, &err));
        if (v == 2) GPU(xd_cuda_matmul_backward(ctx, dx, XD_CUDA_F32, dw, db, g, x, w, N, Din, Dout, XD_CUDA_BW_ACCUMULATE, &err));
        if (v == 3)
          GPU(xd_cuda_matmul_backward(ctx, NULL, XD_CUDA_F32, dw, db, g, x, w, N, Din, Dout,
                                      XD_CUDA_BW_ACCUMULATE | XD_CUDA_BW_OWN_BGRAD, &err));
        GPU(xd_cuda_sync(ctx, &err));
        if (it) t[v][it - 1] = xd_now() - t0;
      }
    const double m0 = median(t[0], BENCH_IT), m1 = median(t[1], BENCH_IT), m2 = median(t[2], BENCH_IT), m3 = median(t[3], BENCH_IT);
    const int path = xd_cuda_matmul_backward_bgrad_path(ctx, XD_CUDA_BF16, N, Din, Dout);
    fprintf(stderr, "    TIMING %-8s Din %5d Dout %6d: dx %7.3f ms (%5.1f TFLOP/s), dW+db %7.3f ms (%5.1f TFLOP/s, db by %s), "
                    "all %7.3f ms (%5.1f TFLOP/s); dW+db with the column-sum kernel %7.3f ms\n",
            P[i].name, Din, Dout, m0 * 1e3, fl / m0 / 1e12, m1 * 1e3, fl / m1 / 1e12, path == 1 ? "epilogue" : path == 0 ? "kernel" : "?",
            m2 * 1e3, 2 * fl / m2 / 1e12, m3 * 1e3);
  }
  xd_cuda_free(g), xd_cuda_free(x), xd_cuda_free(w), xd_cuda_free(dx), xd_cuda_free(dw), xd_cuda_free(db);
}

/* ---- f32 -> bf16 over strided rows (the fused dq|dk|dv gather) -------------------------------- */
static void test_f32_to_bf16_2d(void) {
  xd_rng r;
  xd_rng_seed(&r, 51);
  const int rows = 300, cols = 70, lds = 75, ldd = 200, off = 40;
  float *src = rand_f32(&r, (size_t)rows * lds, 0, 3.0);
  float *gs = up_raw(src, (size_t)rows * lds * 4);
  uint16_t *gd = dev_poisoned((size_t)rows * ldd * 2);
  GPU(xd_cuda_f32_to_bf16_2d(ctx, gd + off, ldd, gs, lds, rows, cols, &err));
  uint16_t *h = xd_malloc((size_t)rows * ldd * 2);
  if (xd_cuda_download(ctx, h, gd, (size_t)rows * ldd * 2, &err)) die();
  size_t bad = 0, touched = 0;
  for (int i = 0; i < rows; i++)
    for (int j = 0; j < ldd; j++) {
      const uint16_t v = h[(size_t)i * ldd + j];
      if (j >= off && j < off + cols) bad += v != xd_f32_to_bf16(src[(size_t)i * lds + j - off]);
      else touched += v != 0xFFFF;
    }
  fprintf(stderr, "    f32_to_bf16_2d %dx%d: %zu differ from xd_f32_to_bf16, %zu written outside\n", rows, cols, bad, touched);
  CHECK(bad == 0 && touched == 0);
  xd_cuda_free(gs), xd_cuda_free(gd);
  free(src), free(h);
}

int main(int argc, char **argv) {
  const int quick = gpu_test_begin(argc, argv);
  RUN(test_matmul_backward);
  RUN(test_rmsnorm_backward);
  RUN(test_rope_backward);
  RUN(test_swiglu_backward);
  RUN(test_embedding_backward);
  RUN(test_f32_to_bf16_2d);
  if (!quick) RUN(test_rmsnorm_backward_1b);
  if (!quick) RUN(test_matmul_backward_1b);
  fprintf(stderr, "largest error / bound among the checks: %.3f\n", worst);
  return gpu_test_end();
}
