/* GPU tests (not in CTest: CI has no GPU; tools/gpu_test.sh runs this on the device machine).
 * Every CUDA op against its CPU twin (src/ops/cpu) on fresh random inputs: the CPU op runs in
 * fp32 on the bf16-rounded inputs, so the gap is the GPU's own rounding. Bounds by output
 * dtype: bf16 outputs ~1e-2 (bf16 is 2^-9 relative per element), fp32 outputs 1e-5. The
 * metric is ||gpu - cpu||_2 / ||cpu||_2; every GPU output buffer is poisoned with NaN bytes
 * first, so an unwritten element fails (NaN never passes a bound).
 * Exits 77 (skip) when no CUDA device is present. */
#include <math.h>
#include <stdint.h>
#include "core/core.h"
#include "ops/cpu/causal_attention.h"
#include "ops/cpu/embedding.h"
#include "ops/cpu/matmul.h"
#include "ops/cpu/mlstm.h"
#include "ops/cpu/rmsnorm.h"
#include "ops/cpu/rope.h"
#include "ops/cpu/swa.h"
#include "ops/cpu/swiglu.h"
#include "ops/cuda/cuda_ops.h"
#include "test.h"
#include "gpu_test_util.h"

#define GPU(call) do { if ((call) != 0) { fprintf(stderr, "  FAIL %s:%d: %s\n", __FILE__, __LINE__, err.msg); xd_t.case_failed = 1; return; } } while (0)

static const double TOL_BF16 = 1e-2, TOL_F32 = 1e-5;

#define REL(name, x, ref, n, tol) do { double _r = rel_l2((x), (ref), (n)); \
    fprintf(stderr, "    %-44s rel %.3e (bound %.0e)\n", name, _r, (double)(tol)); \
    CHECKF(_r <= (tol), "%s: rel err %.3e > %.1e", name, _r, (double)(tol)); } while (0)

/* Fresh normal values times scale, rounded to bf16 in place (the CPU twin sees what the GPU sees). */
static float *rand_bf16_values(xd_rng *r, size_t n, double scale) {
  float *x = xd_malloc(n * sizeof(float) + 1);
  for (size_t i = 0; i < n; i++) x[i] = xd_bf16_to_f32(xd_f32_to_bf16((float)(scale * xd_rng_normal(r))));
  return x;
}
/* Upload fp32 host values as bf16. */
static uint16_t *up_bf16(const float *x, size_t n) {
  uint16_t *h = xd_malloc(n * 2 + 1), *d = NULL;
  for (size_t i = 0; i < n; i++) h[i] = xd_f32_to_bf16(x[i]);
  if (xd_cuda_malloc((void **)&d, n * 2, &err) || xd_cuda_upload(ctx, d, h, n * 2, &err)) {
    fprintf(stderr, "%s\n", err.msg);
    exit(1);
  }
  xd_cuda_sync(ctx, &err);
  free(h);
  return d;
}
/* A device buffer full of NaN bytes (0xFF.. is NaN in bf16 and fp32). */
static int down_bf16(float *dst, const uint16_t *d, size_t n) {
  uint16_t *h = xd_malloc(n * 2 + 1);
  int rc = xd_cuda_download(ctx, h, d, n * 2, &err);
  for (size_t i = 0; i < n; i++) dst[i] = xd_bf16_to_f32(h[i]);
  free(h);
  return rc;
}

/* ---- matmul --------------------------------------------------------------------------- */
static void matmul_case(int N, int Din, int Dout, uint64_t seed) {
  xd_rng r;
  xd_rng_seed(&r, seed);
  float *x = rand_bf16_values(&r, (size_t)N * Din, 1.0), *w = rand_bf16_values(&r, (size_t)Dout * Din, 0.05);
  float *b = rand_bf16_values(&r, Dout, 0.5), *r0 = rand_f32(&r, (size_t)N * Dout, 0, 1.0);
  float *ref = xd_malloc((size_t)N * Dout * 4), *got = xd_malloc((size_t)N * Dout * 4);
  uint16_t *dx = up_bf16(x, (size_t)N * Din), *dw = up_bf16(w, (size_t)Dout * Din), *dbb = up_bf16(b, Dout);
  float *dbf = up_raw(b, Dout * 4);
  char name[96];
  /* fp32 out, bias */
  matmul_forward(ref, x, w, b, N, Din, Dout);
  float *dof = dev_poisoned((size_t)N * Dout * 4);
  GPU(xd_cuda_matmul(ctx, dof, XD_CUDA_F32, dx, dw, dbf, N, Din, Dout, 0, &err));
  GPU(xd_cuda_download(ctx, got, dof, (size_t)N * Dout * 4, &err));
  snprintf(name, sizeof name, "matmul %dx%dx%d fp32 out +bias", N, Din, Dout);
  REL(name, got, ref, (size_t)N * Dout, TOL_F32);
  /* fp32 out, accumulate into r0 (residual add in the epilogue), no bias */
  matmul_forward(ref, x, w, NULL, N, Din, Dout);
  for (size_t i = 0; i < (size_t)N * Dout; i++) ref[i] += r0[i];
  GPU(xd_cuda_upload(ctx, dof, r0, (size_t)N * Dout * 4, &err));
  GPU(xd_cuda_matmul(ctx, dof, XD_CUDA_F32, dx, dw, NULL, N, Din, Dout, 1, &err));
  GPU(xd_cuda_download(ctx, got, dof, (size_t)N * Dout * 4, &err));
  snprintf(name, sizeof name, "matmul %dx%dx%d fp32 accumulate", N, Din, Dout);
  REL(name, got, ref, (size_t)N * Dout, TOL_F32);
  { /* the residual from a separate buffer (xd_cuda_matmul_res): the same bits as copy + accumulate */
    float *dres = up_raw(r0, (size_t)N * Dout * 4), *dout2 = dev_poisoned((size_t)N * Dout * 4);
    float *got2 = xd_malloc((size_t)N * Dout * 4);
    GPU(xd_cuda_matmul_res(ctx, dout2, dres, XD_CUDA_F32, dx, dw, NULL, N, Din, Dout, &err));
    GPU(xd_cuda_download(ctx, got2, dout2, (size_t)N * Dout * 4, &err));
    const int same = memcmp(got, got2, (size_t)N * Dout * 4) == 0;
    fprintf(stderr, "    matmul_res (residual from another buffer) vs copy + accumulate: %s\n", same ? "same bits" : "DIFFERENT");
    CHECK(same);
    xd_cuda_free(dres), xd_cuda_free(dout2);
    free(got2);
  }
  /* bf16 out, bf16 bias */
  matmul_forward(ref, x, w, b, N, Din, Dout);
  uint16_t *dob = dev_poisoned((size_t)N * Dout * 2);
  GPU(xd_cuda_matmul(ctx, dob, XD_CUDA_BF16, dx, dw, dbb, N, Din, Dout, 0, &err));
  GPU(down_bf16(got, dob, (size_t)N * Dout));
  snprintf(name, sizeof name, "matmul %dx%dx%d bf16 out +bias", N, Din, Dout);
  REL(name, got, ref, (size_t)N * Dout, TOL_BF16);
  xd_cuda_free(dx), xd_cuda_free(dw), xd_cuda_free(dbb), xd_cuda_free(dbf), xd_cuda_free(dof), xd_cuda_free(dob);
  free(x), free(w), free(b), free(r0), free(ref), free(got);
}
static void test_matmul(void) {
  matmul_case(67, 96, 80, 11);
  matmul_case(512, 2048, 640, 12);
}

/* ---- rmsnorm, rope, swiglu, embedding ---------------------------------------------------- */
static void test_rmsnorm(void) {
  const int N = 33, C = 2048;
  xd_rng r;
  xd_rng_seed(&r, 21);
  float *x = rand_bf16_values(&r, (size_t)N * C, 2.0), *w = rand_f32(&r, C, 1.0, 0.2);
  for (int i = 0; i < C; i++) w[i] = xd_bf16_to_f32(xd_f32_to_bf16(w[i]));
  float *ref = xd_malloc((size_t)N * C * 4), *got = xd_malloc((size_t)N * C * 4);
  rmsnorm_forward(ref, NULL, x, w, N, C, 1e-5f);
  uint16_t *dx = up_bf16(x, (size_t)N * C), *dw = up_bf16(w, C), *dout = dev_poisoned((size_t)N * C * 2);
  GPU(xd_cuda_rmsnorm_forward(ctx, dout, dx, dw, N, C, 1e-5f, &err));
  GPU(down_bf16(got, dout, (size_t)N * C));
  REL("rmsnorm 33x2048", got, ref, (size_t)N * C, TOL_BF16);
  xd_cuda_free(dx), xd_cuda_free(dw), xd_cuda_free(dout);
  free(x), free(w), free(ref), free(got);
}

/* The fp32-input norms (the GPU teacher's xd_cuda_rmsnorm_f32_forward: bf16 weight and output,
 * row stride ldx; the student's xd_cuda_rmsnorm_f32: fp32 weight, bf16 and fp32 outputs, or a
 * plain copy without weight) at widths on and off their vectorised paths. */
static void rms_f32_case(int N, int C, int ldx, uint64_t seed) {
  xd_rng r;
  xd_rng_seed(&r, seed);
  const size_t n = (size_t)N * C;
  float *x = rand_f32(&r, (size_t)N * ldx, 0, 2.0), *w = rand_f32(&r, C, 1.0, 0.2), *xd = xd_malloc(n * 4);
  for (int i = 0; i < N; i++) memcpy(xd + (size_t)i * C, x + (size_t)i * ldx, (size_t)C * 4);
  float *wb = xd_malloc((size_t)C * 4);
  for (int i = 0; i < C; i++) wb[i] = xd_bf16_to_f32(xd_f32_to_bf16(w[i]));
  float *ref = xd_malloc(n * 4), *refb = xd_malloc(n * 4), *got = xd_malloc(n * 4);
  rmsnorm_forward(ref, NULL, xd, w, N, C, 1e-5f);
  rmsnorm_forward(refb, NULL, xd, wb, N, C, 1e-5f);
  float *gx = up_raw(x, (size_t)N * ldx * 4), *gxd = up_raw(xd, n * 4), *gw = up_raw(w, (size_t)C * 4);
  uint16_t *gwb = up_bf16(wb, C), *gout = dev_poisoned(n * 2);
  float *gof = dev_poisoned(n * 4);
  char name[128];
  GPU(xd_cuda_rmsnorm_f32_forward(ctx, gout, gx, (size_t)ldx, gwb, N, C, 1e-5f, &err));
  GPU(down_bf16(got, gout, n));
  snprintf(name, sizeof name, "rmsnorm fp32 in %dx%d (ld %d), bf16 w / out", N, C, ldx);
  REL(name, got, refb, n, TOL_BF16);
  GPU(xd_cuda_rmsnorm_f32(ctx, gout, gof, gxd, gw, N, C, 1e-5f, &err));
  GPU(xd_cuda_download(ctx, got, gof, n * 4, &err));
  snprintf(name, sizeof name, "rmsnorm fp32 in / w %dx%d: fp32 out", N, C);
  REL(name, got, ref, n, TOL_F32);
  GPU(down_bf16(got, gout, n));
  REL("  bf16 out", got, ref, n, TOL_BF16);
  GPU(xd_cuda_rmsnorm_f32(ctx, gout, gof, gxd, NULL, N, C, 1e-5f, &err));
  GPU(xd_cuda_download(ctx, got, gof, n * 4, &err));
  CHECKF(memcmp(got, xd, n * 4) == 0, "rmsnorm_f32 without weight is not a copy");
  xd_cuda_free(gx), xd_cuda_free(gxd), xd_cuda_free(gw), xd_cuda_free(gwb), xd_cuda_free(gout), xd_cuda_free(gof);
  free(x), free(w), free(xd), free(wb), free(ref), free(refb), free(got);
}
static void test_rmsnorm_f32(void) {
  rms_f32_case(33, 2048, 2048, 25);  /* the 1B width: vectorised, two quads a thread */
  rms_f32_case(7, 3000, 3004, 26);   /* four quads a thread, some idle; strided rows */
  rms_f32_case(9, 100, 100, 27);     /* narrow: student vectorised, teacher scalar */
  rms_f32_case(5, 66, 70, 28);       /* not a multiple of 4: scalar kernels */
}

static void test_rope(void) {
  /* q of a fused q|k|v row: rope on the first nh*d values of rows of width ld; the rest of
   * each row must be left as it was. */
  const int N = 50, nh = 6, d = 64, half = d / 2, ld = nh * d + 2 * d, n_pos = 300;
  xd_rng r;
  xd_rng_seed(&r, 31);
  xd_rope_config rc = {0};
  rc.kind = XD_ROPE_LLAMA3, rc.theta = 500000.0, rc.factor = 32.0, rc.low_freq_factor = 1.0;
  rc.high_freq_factor = 4.0, rc.original_max_pos = 8192;
  float inv[64], scl = 1.f;
  rope_inv_freq(&rc, d, 131072, n_pos, inv, &scl);
  float *ct = xd_malloc((size_t)n_pos * half * 4), *st = xd_malloc((size_t)n_pos * half * 4);
  rope_table(ct, st, inv, scl, n_pos, half);
  int32_t pos[50];
  for (int i = 0; i < N; i++) pos[i] = (int32_t)(xd_rng_u64(&r) % n_pos);
  float *x = rand_bf16_values(&r, (size_t)N * ld, 1.0);
  float *dense = xd_malloc((size_t)N * nh * d * 4), *ref = xd_malloc((size_t)N * ld * 4), *got = xd_malloc((size_t)N * ld * 4);
  for (int n = 0; n < N; n++) memcpy(dense + (size_t)n * nh * d, x + (size_t)n * ld, (size_t)nh * d * 4);
  rope_forward(dense, dense, ct, st, pos, N, nh, d);
  memcpy(ref, x, (size_t)N * ld * 4);
  for (int n = 0; n < N; n++) memcpy(ref + (size_t)n * ld, dense + (size_t)n * nh * d, (size_t)nh * d * 4);
  uint16_t *dx = up_bf16(x, (size_t)N * ld);
  float *dct = up_raw(ct, (size_t)n_pos * half * 4), *dst = up_raw(st, (size_t)n_pos * half * 4);
  int32_t *dpos = up_raw(pos, sizeof pos);
  GPU(xd_cuda_rope_forward(ctx, dx, ld, dct, dst, dpos, N, nh, d, &err));
  GPU(down_bf16(got, dx, (size_t)N * ld));
  REL("rope llama3 (strided rows)", got, ref, (size_t)N * ld, TOL_BF16);
  int untouched = 1;
  for (int n = 0; n < N; n++)
    for (int i = nh * d; i < ld; i++) untouched &= got[(size_t)n * ld + i] == x[(size_t)n * ld + i];
  CHECKF(untouched, "rope wrote outside its heads");
  xd_cuda_free(dx), xd_cuda_free(dct), xd_cuda_free(dst), xd_cuda_free(dpos);
  free(ct), free(st), free(x), free(dense), free(ref), free(got);
}

static void swiglu_case(int N, int F, uint64_t seed) {
  xd_rng r;
  xd_rng_seed(&r, seed);
  float *gu = rand_bf16_values(&r, (size_t)N * 2 * F, 2.0); /* fused [N, gate F | up F] */
  float *g = xd_malloc((size_t)N * F * 4), *u = xd_malloc((size_t)N * F * 4);
  for (int n = 0; n < N; n++) {
    memcpy(g + (size_t)n * F, gu + (size_t)n * 2 * F, (size_t)F * 4);
    memcpy(u + (size_t)n * F, gu + (size_t)n * 2 * F + F, (size_t)F * 4);
  }
  float *ref = xd_malloc((size_t)N * F * 4), *got = xd_malloc((size_t)N * F * 4);
  swiglu_forward(ref, g, u, (size_t)N * F);
  uint16_t *dgu = up_bf16(gu, (size_t)N * 2 * F), *dout = dev_poisoned((size_t)N * F * 2);
  GPU(xd_cuda_swiglu_forward(ctx, dout, dgu, dgu + F, N, F, 2 * F, &err));
  GPU(down_bf16(got, dout, (size_t)N * F));
  char name[96];
  snprintf(name, sizeof name, "swiglu fused gate|up N%d F%d", N, F);
  REL(name, got, ref, (size_t)N * F, TOL_BF16);
  xd_cuda_free(dgu), xd_cuda_free(dout);
  free(gu), free(g), free(u), free(ref), free(got);
}
static void test_swiglu(void) {
  swiglu_case(37, 300, 41); /* scalar path */
  swiglu_case(29, 512, 42); /* 16-byte path */
}

static void test_embedding(void) {
  const int V = 1000, D = 256, N = 77;
  xd_rng r;
  xd_rng_seed(&r, 51);
  float *tab = rand_bf16_values(&r, (size_t)V * D, 1.0);
  int32_t ids[77];
  for (int i = 0; i < N; i++) ids[i] = (int32_t)(xd_rng_u64(&r) % V);
  ids[5] = V - 1, ids[6] = 0;
  float *ref = xd_malloc((size_t)N * D * 4), *got = xd_malloc((size_t)N * D * 4);
  embedding_forward(ref, ids, tab, N, D);
  uint16_t *dt = up_bf16(tab, (size_t)V * D), *dout = dev_poisoned((size_t)N * D * 2);
  int32_t *dids = up_raw(ids, sizeof ids);
  GPU(xd_cuda_embedding_forward(ctx, dout, dids, dt, N, D, V, &err));
  GPU(down_bf16(got, dout, (size_t)N * D));
  CHECKF(memcmp(got, ref, (size_t)N * D * 4) == 0, "embedding rows differ from the table");
  fprintf(stderr, "    embedding %d ids: exact %s\n", N, memcmp(got, ref, (size_t)N * D * 4) == 0 ? "yes" : "NO");
  /* an out-of-range id gives zeros, never a wild read */
  ids[0] = V, ids[1] = -3;
  GPU(xd_cuda_upload(ctx, dids, ids, sizeof ids, &err));
  GPU(xd_cuda_embedding_forward(ctx, dout, dids, dt, N, D, V, &err));
  GPU(down_bf16(got, dout, (size_t)N * D));
  int zeros = 1;
  for (int i = 0; i < 2 * D; i++) zeros &= got[i] == 0.f;
  CHECKF(zeros, "bad ids must give zero rows");
  xd_cuda_free(dt), xd_cuda_free(dout), xd_cuda_free(dids);
  free(tab), free(ref), free(got);
}

/* ---- attention ------------------------------------------------------------------------ */
/* Configurations of xd_cuda_attention_forward_cfg per head dim (attention.cu): -1 = v1, 0 = the
 * default, 1..n fixed block shapes of the second version. */
static int att_ncfg(int d) { return d == 64 ? 4 : 5; }

/* Runs v1, the default and every fixed configuration on the same device inputs, output (and
 * lse) poisoned before each: each against the CPU (out: bf16 bound; lse 1e-4: fp32 scores of
 * exact bf16 inputs), and the default against v1 (the same function up to rounding: out within
 * a few bf16 ulps, bound 5e-3; lse 1e-5). */
static void attn_check_all(const char *tag, const float *ref, const float *lref, size_t nq, size_t nl,
                           const uint16_t *dq, const uint16_t *dk, const uint16_t *dv, const xd_cuda_attn_dims *ga) {
  float *got = xd_malloc(nq * 4), *o1 = xd_malloc(nq * 4), *lgot = xd_malloc(nl * 4 + 4), *l1 = xd_malloc(nl * 4 + 4);
  uint16_t *dout = dev_poisoned(nq * 2);
  float *dl = lref ? dev_poisoned(nl * 4) : NULL;
  double r_v1 = 0, r_new = 0, r_worst = 0, rl_v1 = 0, rl_new = 0, rl_worst = 0, r_nv = 0, rl_nv = 0;
  for (int cfg = -1; cfg <= att_ncfg(ga->d); cfg++) {
    GPU(xd_cuda_memset(ctx, dout, 0xFF, nq * 2, &err));
    if (dl) GPU(xd_cuda_memset(ctx, dl, 0xFF, nl * 4, &err));
    GPU(xd_cuda_attention_forward_cfg(ctx, dout, dl, dq, dk, dv, ga, cfg, &err));
    GPU(down_bf16(got, dout, nq));
    const double r = rel_l2(got, ref, nq);
    CHECKF(r <= TOL_BF16, "%s cfg %d: out rel err %.3e > %.1e", tag, cfg, r, TOL_BF16);
    double rl = 0;
    if (dl) {
      GPU(xd_cuda_download(ctx, lgot, dl, nl * 4, &err));
      rl = rel_l2(lgot, lref, nl);
      CHECKF(rl <= 1e-4, "%s cfg %d: lse rel err %.3e > 1e-4", tag, cfg, rl);
    }
    if (cfg == -1) {
      r_v1 = r, rl_v1 = rl;
      memcpy(o1, got, nq * 4);
      if (dl) memcpy(l1, lgot, nl * 4);
    } else {
      if (cfg == 0) {
        r_new = r, rl_new = rl;
        r_nv = rel_l2(got, o1, nq);
        CHECKF(r_nv <= 5e-3, "%s: new vs v1 out rel %.3e > 5e-3", tag, r_nv);
        if (dl) {
          rl_nv = rel_l2(lgot, l1, nl);
          CHECKF(rl_nv <= 1e-5, "%s: new vs v1 lse rel %.3e > 1e-5", tag, rl_nv);
        }
      }
      r_worst = fmax(r_worst, r), rl_worst = fmax(rl_worst, rl);
    }
  }
  fprintf(stderr, "    %-40s out rel v1 %.2e new %.2e (worst cfg %.2e), new vs v1 %.2e", tag, r_v1, r_new, r_worst, r_nv);
  if (dl) fprintf(stderr, "; lse v1 %.2e new %.2e (worst %.2e), new vs v1 %.2e", rl_v1, rl_new, rl_worst, rl_nv);
  fprintf(stderr, "\n");
  xd_cuda_free(dout), xd_cuda_free(dl);
  free(got), free(o1), free(lgot), free(l1);
}

/* q uploaded with row stride ldq = H d + qpad (pad elements NaN: never read). */
static uint16_t *up_q_strided(const float *q, int BT, int H, int d, int qpad) {
  const int ldq = H * d + qpad;
  float *qp = xd_malloc((size_t)BT * ldq * 4 + 4);
  for (int t = 0; t < BT; t++) {
    for (int i = 0; i < H * d; i++) qp[(size_t)t * ldq + i] = q[(size_t)t * H * d + i];
    for (int i = H * d; i < ldq; i++) qp[(size_t)t * ldq + i] = NAN;
  }
  uint16_t *dq = up_bf16(qp, (size_t)BT * ldq);
  free(qp);
  return dq;
}

/* Teacher causal attention (window 0 or an HF sliding window) vs causal_attention_forward. */
static void causal_case(int B, int T, int H, int G, int d, int window, int qpad, uint64_t seed) {
  xd_rng r;
  xd_rng_seed(&r, seed);
  const size_t nq = (size_t)B * T * H * d, nk = (size_t)B * T * G * d;
  float *q = rand_bf16_values(&r, nq, 1.0), *k = rand_bf16_values(&r, nk, 1.0), *v = rand_bf16_values(&r, nk, 1.0);
  float *ref = xd_malloc(nq * 4);
  causal_attention_dims a = {B, T, T, H, G, d, 0, window, (size_t)T * G * d};
  const size_t ns = causal_attention_scratch(&a);
  float *scr = xd_malloc(ns * 4);
  causal_attention_forward(ref, q, k, v, &a, scr, ns);
  uint16_t *dq = up_q_strided(q, B * T, H, d, qpad), *dk = up_bf16(k, nk), *dv = up_bf16(v, nk);
  xd_cuda_attn_dims ga = {B, T, H, G, d, window, 0, H * d + qpad, G * d, G * d, H * d};
  char name[96];
  snprintf(name, sizeof name, "causal B%d T%d H%d G%d d%d win%d ldq+%d", B, T, H, G, d, window, qpad);
  attn_check_all(name, ref, NULL, nq, 0, dq, dk, dv, &ga);
  xd_cuda_free(dq), xd_cuda_free(dk), xd_cuda_free(dv);
  free(q), free(k), free(v), free(ref), free(scr);
}
static void test_causal_attention(void) {
  causal_case(2, 200, 8, 2, 64, 0, 0, 61);
  causal_case(1, 130, 4, 4, 128, 0, 0, 62);
  causal_case(2, 257, 8, 1, 64, 50, 0, 63);  /* HF sliding window, MQA */
  causal_case(1, 333, 6, 2, 128, 0, 2, 64);  /* d 128, 3 heads a group, q rows 4-byte aligned only */
  causal_case(1, 520, 4, 2, 64, 0, 8, 65);   /* several 128-row blocks, strided q (fused q|k|v-like) */
  causal_case(1, 384, 4, 1, 128, 130, 0, 66); /* HF window over two tiles, T a multiple of 128 */
}

/* Student local branch vs swa_forward, out and lse. */
static void swa_case(int B, int T, int H, int G, int d, int W, int S, uint64_t seed) {
  xd_rng r;
  xd_rng_seed(&r, seed);
  const size_t nq = (size_t)B * T * H * d, nk = (size_t)B * T * G * d, nl = (size_t)B * T * H;
  float *q = rand_bf16_values(&r, nq, 1.0), *k = rand_bf16_values(&r, nk, 1.0), *v = rand_bf16_values(&r, nk, 1.0);
  float *ref = xd_malloc(nq * 4), *lref = xd_malloc(nl * 4);
  swa_shape sh = {B, T, H, G, d, W, S};
  swa_forward(ref, lref, q, k, v, &sh);
  uint16_t *dq = up_bf16(q, nq), *dk = up_bf16(k, nk), *dv = up_bf16(v, nk);
  xd_cuda_attn_dims ga = {B, T, H, G, d, W, S, H * d, G * d, G * d, H * d};
  char name[96];
  snprintf(name, sizeof name, "swa B%d T%d H%d G%d d%d W%d S%d", B, T, H, G, d, W, S);
  attn_check_all(name, ref, lref, nq, nl, dq, dk, dv, &ga);
  xd_cuda_free(dq), xd_cuda_free(dk), xd_cuda_free(dv);
  free(q), free(k), free(v), free(ref), free(lref);
}
static void test_swa(void) {
  swa_case(2, 300, 4, 2, 64, 40, 4, 71);
  swa_case(1, 256, 4, 2, 64, 64, 70, 72); /* sinks reach over a key-tile boundary */
  swa_case(1, 200, 2, 1, 128, 1, 0, 73);  /* W = 1: each token sees only itself */
  swa_case(1, 333, 8, 2, 64, 100, 1, 74);
  swa_case(1, 300, 4, 2, 64, 128, 64, 75);  /* W and S on tile boundaries */
  swa_case(1, 500, 4, 1, 128, 100, 65, 76); /* d 128, sinks one past a tile */
  swa_case(2, 700, 4, 2, 64, 512, 4, 77);   /* the 1B window and sinks, T past W */
  swa_case(1, 260, 2, 2, 64, 300, 3, 78);   /* W > T */
}

static int quick; /* "quick" argument (memcheck): no timing at the 1B shape */

/* One layer's attention forward at the Llama-3.2-1B shape (B 1, T 4096, 32 heads, 8 KV heads):
 * every configuration, two interleaved rounds of 20 calls, the faster round of each; the
 * default's output checked against v1's. */
static void attn_time_case(const char *tag, int T, int H, int G, int d, int W, int S) {
  const size_t nq = (size_t)T * H * d, nk = (size_t)T * G * d, nl = (size_t)T * H;
  uint16_t *dq = NULL, *dk = NULL, *dv = NULL;
  GPU(xd_cuda_malloc((void **)&dq, nq * 2, &err));
  GPU(xd_cuda_malloc((void **)&dk, nk * 2, &err));
  GPU(xd_cuda_malloc((void **)&dv, nk * 2, &err));
  GPU(xd_cuda_fill_uniform_bf16(ctx, dq, nq, 101 + d, 1.7f, &err));
  GPU(xd_cuda_fill_uniform_bf16(ctx, dk, nk, 202 + d, 1.7f, &err));
  GPU(xd_cuda_fill_uniform_bf16(ctx, dv, nk, 303 + d, 1.7f, &err));
  uint16_t *dout = dev_poisoned(nq * 2), *dout1 = dev_poisoned(nq * 2);
  float *dl = W > 0 ? dev_poisoned(nl * 4) : NULL, *dl1 = W > 0 ? dev_poisoned(nl * 4) : NULL;
  xd_cuda_attn_dims ga = {1, T, H, G, d, W, S, H * d, G * d, G * d, H * d};
  double pairs = 0; /* visible (query, key) pairs */
  for (int t = 0; t < T; t++) pairs += W > 0 ? (t + 1 < W ? t + 1 : W) + (t + 1 - W > 0 ? (t + 1 - W < S ? t + 1 - W : S) : 0) : t + 1;
  const double flop = 4.0 * d * H * pairs;
  const int nc = att_ncfg(d);
  double ms[16];
  for (int i = 0; i < 16; i++) ms[i] = 1e30;
  for (int round = 0; round < 2; round++)
    for (int cfg = -1; cfg <= nc; cfg++) {
      for (int i = 0; i < 2; i++) GPU(xd_cuda_attention_forward_cfg(ctx, dout, dl, dq, dk, dv, &ga, cfg, &err));
      GPU(xd_cuda_sync(ctx, &err));
      const double t0 = xd_now();
      for (int i = 0; i < 20; i++) GPU(xd_cuda_attention_forward_cfg(ctx, dout, dl, dq, dk, dv, &ga, cfg, &err));
      GPU(xd_cuda_sync(ctx, &err));
      ms[cfg + 1] = fmin(ms[cfg + 1], (xd_now() - t0) * 1e3 / 20);
    }
  for (int cfg = -1; cfg <= nc; cfg++)
    printf("RESULT attn_fwd_cfg %s cfg %d ms %.4f tflops %.1f\n", tag, cfg, ms[cfg + 1], flop / ms[cfg + 1] * 1e-9);
  printf("RESULT attn_fwd %s new_ms %.4f new_tflops %.1f v1_ms %.4f v1_tflops %.1f speedup %.2f\n", tag, ms[1],
         flop / ms[1] * 1e-9, ms[0], flop / ms[0] * 1e-9, ms[0] / ms[1]);
  /* the default against v1 on these inputs */
  GPU(xd_cuda_attention_forward_cfg(ctx, dout, dl, dq, dk, dv, &ga, 0, &err));
  GPU(xd_cuda_attention_forward_cfg(ctx, dout1, dl1, dq, dk, dv, &ga, -1, &err));
  float *o = xd_malloc(nq * 4), *o1 = xd_malloc(nq * 4);
  GPU(down_bf16(o, dout, nq));
  GPU(down_bf16(o1, dout1, nq));
  const double r = rel_l2(o, o1, nq);
  fprintf(stderr, "    attn fwd 1B %s: new %.3f ms (%.0f TFLOP/s), v1 %.3f ms (%.0f TFLOP/s), new vs v1 out rel %.2e\n",
          tag, ms[1], flop / ms[1] * 1e-9, ms[0], flop / ms[0] * 1e-9, r);
  CHECKF(r <= 5e-3, "%s: new vs v1 out rel %.3e", tag, r);
  if (dl) {
    float *l = down(dl, nl), *l1 = down(dl1, nl);
    const double rl = rel_l2(l, l1, nl);
    fprintf(stderr, "    attn fwd 1B %s: new vs v1 lse rel %.2e\n", tag, rl);
    CHECKF(rl <= 1e-5, "%s: new vs v1 lse rel %.3e", tag, rl);
    free(l), free(l1);
  }
  free(o), free(o1);
  xd_cuda_free(dq), xd_cuda_free(dk), xd_cuda_free(dv), xd_cuda_free(dout), xd_cuda_free(dout1);
  xd_cuda_free(dl), xd_cuda_free(dl1);
}
static void test_attn_timing(void) {
  if (quick) return;
  attn_time_case("causal_d64", 4096, 32, 8, 64, 0, 0);
  attn_time_case("window_sinks_d64", 4096, 32, 8, 64, 512, 4);
  attn_time_case("causal_d128", 4096, 32, 8, 128, 0, 0);
}

/* The bf16 copies xd_cuda_swa_backward_pre reads (the forward's, here rounded from fp32 q, k,
 * v [nq / nk / nk] and out [nq] on the device); 0 or -1 with err set. */
static int swa_bf16_make(xd_cuda_swa_bf16 *pre, const float *q, const float *k, const float *v, const float *out,
                         size_t nq, size_t nk) {
  uint16_t *b[4] = {NULL, NULL, NULL, NULL};
  const float *src[4] = {q, k, v, out};
  const size_t n[4] = {nq, nk, nk, nq};
  memset(pre, 0, sizeof *pre);
  for (int i = 0; i < 4; i++)
    if (xd_cuda_malloc((void **)&b[i], n[i] * 2, &err) || xd_cuda_f32_to_bf16(ctx, b[i], src[i], n[i], &err)) {
      for (int j = 0; j <= i; j++) xd_cuda_free(b[j]);
      return -1;
    }
  pre->q = b[0], pre->k = b[1], pre->v = b[2], pre->out = b[3];
  return 0;
}
static void swa_bf16_free(const xd_cuda_swa_bf16 *pre) {
  xd_cuda_free((void *)pre->q), xd_cuda_free((void *)pre->k), xd_cuda_free((void *)pre->v);
  xd_cuda_free((void *)pre->out);
}

/* Backward vs swa_backward, both from the CPU forward's out and lse; accumulation into nonzero
 * gradients checks the += contract. Each case runs the reference kernel (fp32, atomics: fp32
 * bound) and xd_cuda_swa_backward twice from the same start: the two results must be bitwise
 * identical (no atomics, fixed summation order); v2 must be bitwise v1 (the same operands and
 * MMA order, staged without the pipeline), and the default (v3 at d <= 64: dq from the dS the
 * dK / dV kernel stored) must give v2's dk, dv bit for bit and its dq to fp32 summation-order
 * noise (1e-4 bound; a bf16 flip of one dS element between the two kernels' S = QK^T orders
 * would show as ~1e-5). Its bound: fp32 where d falls back to the
 * reference (d not a multiple of 16), else TOL_BF16 = 1e-2: q, k, dout, P and dS enter the
 * MMAs as bf16 (2^-9 relative rounding each, random in sign; v as a bf16 hi + lo pair), so
 * each gradient, a sum of such products over hundreds of keys or queries, sits a few 1e-3
 * from the fp32 one. The W = 1 case guards the cancellation in dS = P (dP - D): there dS is
 * exactly 0, and a dP with v rounded to bf16 alone gave 2.4e-2 on dq and dk. */
static void swa_bwd_case(int B, int T, int H, int G, int d, int W, int S, uint64_t seed) {
  xd_rng r;
  xd_rng_seed(&r, seed);
  const size_t nq = (size_t)B * T * H * d, nk = (size_t)B * T * G * d, nl = (size_t)B * T * H;
  float *q = rand_f32(&r, nq, 0, 1.0), *k = rand_f32(&r, nk, 0, 1.0), *v = rand_f32(&r, nk, 0, 1.0);
  float *dout = rand_f32(&r, nq, 0, 1.0), *out = xd_malloc(nq * 4), *lse = xd_malloc(nl * 4);
  float *dq = rand_f32(&r, nq, 0, 0.1), *dk = rand_f32(&r, nk, 0, 0.1), *dv = rand_f32(&r, nk, 0, 0.1);
  swa_shape sh = {B, T, H, G, d, W, S};
  swa_forward(out, lse, q, k, v, &sh);
  float *gdq = up_raw(dq, nq * 4), *gdk = up_raw(dk, nk * 4), *gdv = up_raw(dv, nk * 4);
  float *fdq[6], *fdk[6], *fdv[6]; /* new twice, v1, v2, new with the head split off, then forced on */
  for (int i = 0; i < 6; i++) fdq[i] = up_raw(dq, nq * 4), fdk[i] = up_raw(dk, nk * 4), fdv[i] = up_raw(dv, nk * 4);
  float *pq[2], *pk[2], *pv[2]; /* _pre's, below */
  for (int i = 0; i < 2; i++) pq[i] = up_raw(dq, nq * 4), pk[i] = up_raw(dk, nk * 4), pv[i] = up_raw(dv, nk * 4);
  swa_backward(dq, dk, dv, dout, q, k, v, out, lse, &sh);
  float *gq = up_raw(q, nq * 4), *gk = up_raw(k, nk * 4), *gv = up_raw(v, nk * 4), *gdo = up_raw(dout, nq * 4);
  float *go = up_raw(out, nq * 4), *gl = up_raw(lse, nl * 4);
  GPU(xd_cuda_swa_backward_ref(ctx, gdq, gdk, gdv, gdo, gq, gk, gv, go, gl, &sh, &err));
  for (int i = 0; i < 2; i++) GPU(xd_cuda_swa_backward(ctx, fdq[i], fdk[i], fdv[i], gdo, gq, gk, gv, go, gl, &sh, &err));
  GPU(xd_cuda_swa_backward_v1(ctx, fdq[2], fdk[2], fdv[2], gdo, gq, gk, gv, go, gl, &sh, &err));
  GPU(xd_cuda_swa_backward_v2(ctx, fdq[3], fdk[3], fdv[3], gdo, gq, gk, gv, go, gl, &sh, &err));
  for (int i = 4; i < 6; i++) {
    setenv("XD_SWA_BWD_SPLIT", i == 4 ? "0" : "1", 1);
    GPU(xd_cuda_swa_backward(ctx, fdq[i], fdk[i], fdv[i], gdo, gq, gk, gv, go, gl, &sh, &err));
  }
  unsetenv("XD_SWA_BWD_SPLIT");
  float *hq = down(gdq, nq), *hk = down(gdk, nk), *hv = down(gdv, nk);
  float *fq[6], *fk[6], *fv[6];
  for (int i = 0; i < 6; i++) fq[i] = down(fdq[i], nq), fk[i] = down(fdk[i], nk), fv[i] = down(fdv[i], nk);
  char name[96];
  snprintf(name, sizeof name, "swa bwd ref dq B%d T%d H%d G%d d%d W%d S%d", B, T, H, G, d, W, S);
  REL(name, hq, dq, nq, TOL_F32);
  REL("  ref dk", hk, dk, nk, TOL_F32);
  REL("  ref dv", hv, dv, nk, TOL_F32);
  const double tol = d % 16 == 0 && d <= 128 ? TOL_BF16 : TOL_F32;
  REL("  new dq", fq[0], dq, nq, tol);
  REL("  new dk", fk[0], dk, nk, tol);
  REL("  new dv", fv[0], dv, nk, tol);
  const int same = !memcmp(fq[0], fq[1], nq * 4) && !memcmp(fk[0], fk[1], nk * 4) && !memcmp(fv[0], fv[1], nk * 4);
  fprintf(stderr, "    %-44s %s\n", "  new: two runs bitwise identical", same ? "yes" : "NO");
  CHECKF(same, "swa_backward: two runs differ (B%d T%d d%d)", B, T, d);
  if (tol != TOL_BF16) { /* the fallback: the reference's values in a fixed order, its dq exactly */
    const int same_dq = !memcmp(fq[0], hq, nq * 4);
    fprintf(stderr, "    %-44s %s\n", "  fallback dq vs the reference's bitwise", same_dq ? "yes" : "NO");
    CHECKF(same_dq, "swa_backward: the fallback's dq differs from the reference's (B%d T%d d%d)", B, T, d);
    REL("  fallback dk vs the reference's", fk[0], hk, nk, 1e-5);
    REL("  fallback dv vs the reference's", fv[0], hv, nk, 1e-5);
  }
  if (tol == TOL_BF16) {
    /* the pipelined kernels stage the same bf16 operands and run v1's MMA sequence */
    const int same_v1 = !memcmp(fq[3], fq[2], nq * 4) && !memcmp(fk[3], fk[2], nk * 4) && !memcmp(fv[3], fv[2], nk * 4);
    fprintf(stderr, "    %-44s %s\n", "  v2 vs v1 bitwise identical", same_v1 ? "yes" : "NO");
    if (!same_v1) {
      REL("  v2 vs v1 dq", fq[3], fq[2], nq, TOL_F32);
      REL("  v2 vs v1 dk", fk[3], fk[2], nk, TOL_F32);
      REL("  v2 vs v1 dv", fv[3], fv[2], nk, TOL_F32);
    }
    CHECKF(same_v1, "swa_backward: pipelined and v1 differ (B%d T%d d%d)", B, T, d);
    /* unsplit: v2's dk, dv (the same kernel body plus the dS store) */
    const int same_kv = !memcmp(fk[4], fk[3], nk * 4) && !memcmp(fv[4], fv[3], nk * 4);
    fprintf(stderr, "    %-44s %s\n", "  new unsplit vs v2 dk, dv bitwise identical", same_kv ? "yes" : "NO");
    CHECKF(same_kv, "swa_backward: new (unsplit) and v2 dk / dv differ (B%d T%d d%d)", B, T, d);
    if (memcmp(fq[4], fq[3], nq * 4)) REL("  new vs v2 dq", fq[4], fq[3], nq, 1e-4);
    else fprintf(stderr, "    %-44s %s\n", "  new vs v2 dq bitwise identical", "yes");
    /* head split (forced; where H/G is odd it is a no-op): the same dq, dk and dv summed per
     * half and then added (fp32 order) */
    const int same_q = !memcmp(fq[5], fq[4], nq * 4);
    fprintf(stderr, "    %-44s %s\n", "  split vs unsplit dq bitwise identical", same_q ? "yes" : "NO");
    CHECKF(same_q, "swa_backward: split changed dq (B%d T%d d%d)", B, T, d);
    REL("  split vs unsplit dk", fk[5], fk[4], nk, 1e-5); /* rounding: ~1e-7, 6.2e-7 seen at T 1100 */
    REL("  split vs unsplit dv", fv[5], fv[4], nk, 1e-5);
    REL("  split dk vs CPU", fk[5], dk, nk, tol);
    /* _pre (the forward's bf16 copies of q, k, v and a bf16 out; dP with v as that bf16 value
     * alone) against the CPU at the bf16 bound, two runs bitwise identical; at W = 1 its dP - D
     * cancels between the same bf16 values (out = bf16(v)), so it must stay as close as the
     * default there */
    xd_cuda_swa_bf16 pre;
    GPU(swa_bf16_make(&pre, gq, gk, gv, go, nq, nk));
    for (int i = 0; i < 2; i++) GPU(xd_cuda_swa_backward_pre(ctx, pq[i], pk[i], pv[i], gdo, &pre, gl, &sh, &err));
    float *hpq[2], *hpk[2], *hpv[2];
    for (int i = 0; i < 2; i++) hpq[i] = down(pq[i], nq), hpk[i] = down(pk[i], nk), hpv[i] = down(pv[i], nk);
    REL("  _pre (bf16 inputs) dq", hpq[0], dq, nq, tol);
    REL("  _pre dk", hpk[0], dk, nk, tol);
    REL("  _pre dv", hpv[0], dv, nk, tol);
    const int same_pre = !memcmp(hpq[1], hpq[0], nq * 4) && !memcmp(hpk[1], hpk[0], nk * 4) &&
                         !memcmp(hpv[1], hpv[0], nk * 4);
    fprintf(stderr, "    %-44s %s\n", "  _pre: two runs bitwise identical", same_pre ? "yes" : "NO");
    CHECKF(same_pre, "swa_backward_pre: two runs differ (B%d T%d d%d)", B, T, d);
    if (W == 1) { /* no worse than the default's dq, dk (hi + lo v, fp32 out) at the cancellation */
      const double e_def = rel_l2(fq[0], dq, nq) + rel_l2(fk[0], dk, nk);
      const double e_pre = rel_l2(hpq[0], dq, nq) + rel_l2(hpk[0], dk, nk);
      fprintf(stderr, "    %-44s %.2e vs %.2e\n", "  W 1: _pre vs default dq + dk error", e_pre, e_def);
      CHECK(e_pre <= 2 * e_def + 1e-6);
    }
    for (int i = 0; i < 2; i++) free(hpq[i]), free(hpk[i]), free(hpv[i]);
    swa_bf16_free(&pre);
  }
  xd_cuda_free(gdq), xd_cuda_free(gdk), xd_cuda_free(gdv), xd_cuda_free(gq), xd_cuda_free(gk), xd_cuda_free(gv);
  xd_cuda_free(gdo), xd_cuda_free(go), xd_cuda_free(gl);
  for (int i = 0; i < 6; i++) {
    xd_cuda_free(fdq[i]), xd_cuda_free(fdk[i]), xd_cuda_free(fdv[i]);
    free(fq[i]), free(fk[i]), free(fv[i]);
  }
  for (int i = 0; i < 2; i++) xd_cuda_free(pq[i]), xd_cuda_free(pk[i]), xd_cuda_free(pv[i]);
  free(q), free(k), free(v), free(dout), free(out), free(lse), free(dq), free(dk), free(dv), free(hq), free(hk), free(hv);
}

/* Time at the Llama-3.2-1B student shape: one layer's SWA backward, new (pipelined) vs v1 (two
 * interleaved rounds) vs the reference. */
static void swa_bwd_timing(void) {
  const int B = 1, T = 4096, H = 32, G = 8, d = 64, W = 512, S = 4;
  const size_t nq = (size_t)B * T * H * d, nk = (size_t)B * T * G * d, nl = (size_t)B * T * H;
  xd_rng r;
  xd_rng_seed(&r, 1234);
  float *q = rand_f32(&r, nq, 0, 1.0), *k = rand_f32(&r, nk, 0, 1.0), *v = rand_f32(&r, nk, 0, 1.0);
  float *dout = rand_f32(&r, nq, 0, 1.0);
  float *gq = up_raw(q, nq * 4), *gk = up_raw(k, nk * 4), *gv = up_raw(v, nk * 4), *gdo = up_raw(dout, nq * 4);
  float *go = dev_poisoned(nq * 4), *gl = dev_poisoned(nl * 4);
  float *gdq = dev_poisoned(nq * 4), *gdk = dev_poisoned(nk * 4), *gdv = dev_poisoned(nk * 4);
  GPU(xd_cuda_swa_naive_forward_lse(ctx, go, gl, gq, gk, gv, B, T, H, G, d, W, S, &err));
  GPU(xd_cuda_memset(ctx, gdq, 0, nq * 4, &err));
  GPU(xd_cuda_memset(ctx, gdk, 0, nk * 4, &err));
  GPU(xd_cuda_memset(ctx, gdv, 0, nk * 4, &err));
  swa_shape sh = {B, T, H, G, d, W, S};
  typedef int (*swa_bwd_fn)(xd_cuda_ctx *, float *, float *, float *, const float *, const float *, const float *,
                            const float *, const float *, const float *, const swa_shape *, xd_err *);
  const swa_bwd_fn fns[4] = {xd_cuda_swa_backward, xd_cuda_swa_backward_v1, xd_cuda_swa_backward_v2,
                             xd_cuda_swa_backward_ref};
  /* the default with the head split forced off / on; three interleaved rounds, the fastest of each */
  double ms_split[2] = {1e30, 1e30};
  for (int round = 0; round < 3; round++)
    for (int sp = 0; sp < 2; sp++) {
      setenv("XD_SWA_BWD_SPLIT", sp ? "1" : "0", 1);
      for (int i = 0; i < 2; i++) GPU(xd_cuda_swa_backward(ctx, gdq, gdk, gdv, gdo, gq, gk, gv, go, gl, &sh, &err));
      GPU(xd_cuda_sync(ctx, &err));
      const double t0 = xd_now();
      for (int i = 0; i < 20; i++) GPU(xd_cuda_swa_backward(ctx, gdq, gdk, gdv, gdo, gq, gk, gv, go, gl, &sh, &err));
      GPU(xd_cuda_sync(ctx, &err));
      const double t = (xd_now() - t0) * 1e3 / 20;
      if (t < ms_split[sp]) ms_split[sp] = t;
    }
  unsetenv("XD_SWA_BWD_SPLIT");
  /* the default vs _pre (the stage II step's entry: the forward's bf16 q, k, v, out; dP with v
   * alone), three interleaved rounds, the fastest of each */
  xd_cuda_swa_bf16 pre;
  GPU(swa_bf16_make(&pre, gq, gk, gv, go, nq, nk));
  double ms_pre[2] = {1e30, 1e30};
  for (int round = 0; round < 3; round++)
    for (int wp = 0; wp < 2; wp++) {
      double t0 = 0;
      for (int i = 0; i < 22; i++) { /* 2 warm-up calls, then 20 timed */
        if (i == 2) {
          GPU(xd_cuda_sync(ctx, &err));
          t0 = xd_now();
        }
        if (wp) GPU(xd_cuda_swa_backward_pre(ctx, gdq, gdk, gdv, gdo, &pre, gl, &sh, &err));
        else GPU(xd_cuda_swa_backward(ctx, gdq, gdk, gdv, gdo, gq, gk, gv, go, gl, &sh, &err));
      }
      GPU(xd_cuda_sync(ctx, &err));
      const double t = (xd_now() - t0) * 1e3 / 20;
      if (t < ms_pre[wp]) ms_pre[wp] = t;
    }
  swa_bf16_free(&pre);
  double ms[4][2]; /* [version][round]: new, v1, v2 interleaved rounds, then ref once */
  for (int round = 0; round < 2; round++)
    for (int which = 0; which < 4; which++) {
      if (which == 3 && round == 1) { ms[3][1] = ms[3][0]; continue; }
      const int reps = which == 3 ? 3 : 20;
      for (int i = 0; i < 2; i++) /* warm-up */
        GPU(fns[which](ctx, gdq, gdk, gdv, gdo, gq, gk, gv, go, gl, &sh, &err));
      GPU(xd_cuda_sync(ctx, &err));
      const double t0 = xd_now();
      for (int i = 0; i < reps; i++) GPU(fns[which](ctx, gdq, gdk, gdv, gdo, gq, gk, gv, go, gl, &sh, &err));
      GPU(xd_cuda_sync(ctx, &err));
      ms[which][round] = (xd_now() - t0) * 1e3 / reps;
    }
  fprintf(stderr,
          "    swa bwd 1B shape (B%d T%d H%d G%d d%d W%d S%d): new %.3f / %.3f ms, v1 %.3f / %.3f ms, v2 %.3f / %.3f ms, "
          "ref %.3f ms\n",
          B, T, H, G, d, W, S, ms[0][0], ms[0][1], ms[1][0], ms[1][1], ms[2][0], ms[2][1], ms[3][0]);
  printf("RESULT swa_backward_1b new_ms %.3f v1_ms %.3f v2_ms %.3f ref_ms %.3f split_off_ms %.3f split_on_ms %.3f "
         "default_ms %.3f pre_ms %.3f\n",
         ms[0][1], ms[1][1], ms[2][1], ms[3][0], ms_split[0], ms_split[1], ms_pre[0], ms_pre[1]);
  xd_cuda_free(gq), xd_cuda_free(gk), xd_cuda_free(gv), xd_cuda_free(gdo), xd_cuda_free(go), xd_cuda_free(gl);
  xd_cuda_free(gdq), xd_cuda_free(gdk), xd_cuda_free(gdv);
  free(q), free(k), free(v), free(dout);
}

/* The memory plan's SWA figure (xd_cuda_swa_backward_scratch_bytes) is what a fresh context's
 * scratch grows to on the first call, for the fp32 entry and (tensor-core head dims) for _pre,
 * which needs less (no bf16 copies of q, k, v). */
static void swa_scratch_case(int B, int T, int H, int G, int d, int W, int S) {
  xd_rng r;
  xd_rng_seed(&r, (uint64_t)(T * 131 + d));
  const size_t nq = (size_t)B * T * H * d, nk = (size_t)B * T * G * d, nl = (size_t)B * T * H;
  float *h = rand_f32(&r, nq, 0, 0.5);
  xd_cuda_ctx *c2 = NULL;
  if (xd_cuda_ctx_create(&c2, 0, &err)) gpu_fail();
  float *q = up_raw(h, nq * 4), *o = up_raw(h, nq * 4), *dout = up_raw(h, nq * 4), *dq = up_raw(h, nq * 4);
  float *k = up_raw(h, nk * 4), *v = up_raw(h, nk * 4), *dk = up_raw(h, nk * 4), *dv = up_raw(h, nk * 4), *lse = up_raw(h, nl * 4);
  const swa_shape sh = {B, T, H, G, d, W, S};
  if (xd_cuda_swa_backward(c2, dq, dk, dv, dout, q, k, v, o, lse, &sh, &err) || xd_cuda_sync(c2, &err)) gpu_fail();
  const size_t want = xd_cuda_swa_backward_scratch_bytes(&sh, 0), got = xd_cuda_ctx_scratch_bytes(c2);
  CHECKF(got == want, "B %d T %d H %d G %d d %d W %d S %d: scratch %zu, plan says %zu", B, T, H, G, d, W, S, got, want);
  if (d % 16 == 0 && d <= 128) {
    xd_cuda_ctx *c3 = NULL;
    xd_cuda_swa_bf16 pre;
    if (xd_cuda_ctx_create(&c3, 0, &err) || swa_bf16_make(&pre, q, k, v, o, nq, nk) || xd_cuda_sync(ctx, &err) ||
        xd_cuda_swa_backward_pre(c3, dq, dk, dv, dout, &pre, lse, &sh, &err) || xd_cuda_sync(c3, &err))
      gpu_fail();
    const size_t want3 = xd_cuda_swa_backward_scratch_bytes(&sh, 1), got3 = xd_cuda_ctx_scratch_bytes(c3);
    CHECKF(got3 == want3 && want3 < want, "B %d T %d d %d: _pre scratch %zu, plan says %zu (fp32 entry %zu)", B, T, d, got3,
           want3, want);
    fprintf(stderr, "    SWA backward scratch B %d T %d H %d G %d d %d: fp32 entry %zu, _pre %zu bytes (= the plans)\n", B, T,
            H, G, d, want, want3);
    swa_bf16_free(&pre);
    xd_cuda_ctx_free(c3);
  }
  xd_cuda_free(q), xd_cuda_free(o), xd_cuda_free(dout), xd_cuda_free(dq), xd_cuda_free(k), xd_cuda_free(v);
  xd_cuda_free(dk), xd_cuda_free(dv), xd_cuda_free(lse);
  xd_cuda_ctx_free(c2);
  free(h);
}

static void test_swa_backward(void) {
  swa_scratch_case(1, 1100, 32, 8, 64, 512, 4); /* v3, head split: the 1B layer */
  swa_scratch_case(2, 300, 6, 3, 64, 100, 2);   /* v3, odd group: no split */
  swa_scratch_case(1, 333, 8, 2, 128, 100, 3);  /* d 128: v2 */
  swa_scratch_case(1, 97, 4, 2, 40, 20, 2);     /* d 40: the fallback, no context scratch */
  swa_bwd_case(2, 150, 4, 2, 64, 32, 4, 91);    /* T % 64 != 0, W < block, GQA */
  swa_bwd_case(1, 120, 2, 1, 128, 50, 60, 92);  /* d 128, many sinks */
  swa_bwd_case(1, 200, 4, 4, 64, 300, 0, 93);   /* W > T, no sinks, G = H */
  swa_bwd_case(1, 333, 8, 2, 128, 100, 3, 94);  /* d 128 (32-query tiles), far sink queries */
  swa_bwd_case(1, 256, 4, 2, 64, 64, 70, 95);   /* sinks over a key-block boundary */
  swa_bwd_case(1, 700, 4, 1, 32, 16, 1, 96);    /* d 32, several sink chunks, MQA */
  swa_bwd_case(2, 300, 2, 2, 64, 1, 0, 97);     /* W = 1 */
  swa_bwd_case(1, 97, 4, 2, 40, 20, 2, 98);     /* d 40: the fixed-order fallback */
  swa_bwd_case(2, 150, 6, 2, 12, 16, 3, 102);   /* d 12 (the test students'): fallback, sinks, GQA */
  swa_bwd_case(1, 1100, 4, 2, 64, 512, 4, 99);  /* the 1B window and sinks, T past W */
  swa_bwd_case(1, 260, 2, 1, 16, 70, 5, 100);   /* d 16 */
  swa_bwd_case(2, 390, 6, 3, 48, 130, 66, 101); /* d 48, two sink blocks, W across tiles */
  if (!quick) swa_bwd_timing();
}

/* ---- mLSTM ---------------------------------------------------------------------------- */
static void softmax_rows(float *x, size_t rows, int n) {
  for (size_t r = 0; r < rows; r++) {
    float *p = x + r * n, mx = -INFINITY, s = 0;
    for (int i = 0; i < n; i++) mx = fmaxf(mx, p[i]);
    for (int i = 0; i < n; i++) s += (p[i] = expf(p[i] - mx));
    for (int i = 0; i < n; i++) p[i] /= s;
  }
}
static void mlstm_case(int B, int T, int H, int G, int P, int D, int L, mlstm_norm norm, int with_init, int alias,
                       uint64_t seed) {
  xd_rng r;
  xd_rng_seed(&r, seed);
  mlstm_cfg cfg = mlstm_cfg_make(B, T, H, G, P, D);
  cfg.chunk = L, cfg.norm = norm;
  const size_t nq = (size_t)B * T * H * P, nk = (size_t)B * T * G * P, nv = (size_t)B * T * G * D;
  const size_t ng = (size_t)B * T * H, nh = (size_t)B * T * H * D, BH = (size_t)B * H;
  /* Real inputs: softmax feature maps, gates around the SPEC init (b_f in [3, 6]). */
  float *qf = rand_f32(&r, nq, 0, 2.0), *kf = rand_f32(&r, nk, 0, 2.0), *v = rand_f32(&r, nv, 0, 1.0);
  softmax_rows(qf, nq / P, P), softmax_rows(kf, nk / P, P);
  float *ig = rand_f32(&r, ng, -1.0, 2.0), *fg = rand_f32(&r, ng, 3.0, 2.0);
  float *C0 = rand_f32(&r, BH * P * D, 0, 0.3), *n0 = rand_f32(&r, BH * P, 1.0, 0.2), *m0 = rand_f32(&r, BH, 0, 1.0);
  for (size_t i = 0; i < BH * P; i++) n0[i] = fabsf(n0[i]);
  float *href = xd_malloc(nh * 4), *hgot = xd_malloc(nh * 4);
  float *C1 = xd_malloc(BH * P * D * 4), *n1 = xd_malloc(BH * P * 4), *m1 = xd_malloc(BH * 4);
  float *C1g = xd_malloc(BH * P * D * 4), *n1g = xd_malloc(BH * P * 4), *m1g = xd_malloc(BH * 4);
  mlstm_state init = {C0, n0, m0}, fin = {C1, n1, m1};
  mlstm_ws *ws = mlstm_ws_create(&cfg);
  mlstm_chunkwise_forward(&cfg, ws, qf, kf, v, ig, fg, with_init ? &init : NULL, &fin, NULL, href);
  mlstm_ws_free(ws);
  float *dq = up_raw(qf, nq * 4), *dk = up_raw(kf, nk * 4), *dv = up_raw(v, nv * 4), *dig = up_raw(ig, ng * 4);
  float *dfg = up_raw(fg, ng * 4), *dh = dev_poisoned(nh * 4);
  float *dC0 = up_raw(C0, BH * P * D * 4), *dn0 = up_raw(n0, BH * P * 4), *dm0 = up_raw(m0, BH * 4);
  float *dC1 = dev_poisoned(BH * P * D * 4), *dn1 = dev_poisoned(BH * P * 4), *dm1 = dev_poisoned(BH * 4);
  mlstm_state dinit = {dC0, dn0, dm0}, dfin = {dC1, dn1, dm1};
  if (alias) dfin = dinit; /* prefill -> decode hand-off in place */
  GPU(xd_cuda_mlstm_chunkwise_forward(ctx, &cfg, dq, dk, dv, dig, dfg, with_init ? &dinit : NULL, &dfin, dh, &err));
  GPU(xd_cuda_download(ctx, hgot, dh, nh * 4, &err));
  GPU(xd_cuda_download(ctx, C1g, dfin.C, BH * P * D * 4, &err));
  GPU(xd_cuda_download(ctx, n1g, dfin.n, BH * P * 4, &err));
  GPU(xd_cuda_download(ctx, m1g, dfin.m, BH * 4, &err));
  char name[128];
  snprintf(name, sizeof name, "mlstm h B%d T%d H%d G%d P%d D%d L%d %s%s%s", B, T, H, G, P, D, L,
           norm == MLSTM_NORM_MAX ? "max" : "paper", with_init ? " init" : "", alias ? " alias" : "");
  REL(name, hgot, href, nh, TOL_F32);
  REL("  final C", C1g, C1, BH * P * D, TOL_F32);
  REL("  final n", n1g, n1, BH * P, TOL_F32);
  REL("  final m", m1g, m1, BH, TOL_F32);
  xd_cuda_free(dq), xd_cuda_free(dk), xd_cuda_free(dv), xd_cuda_free(dig), xd_cuda_free(dfg), xd_cuda_free(dh);
  xd_cuda_free(dC0), xd_cuda_free(dn0), xd_cuda_free(dm0), xd_cuda_free(dC1), xd_cuda_free(dn1), xd_cuda_free(dm1);
  free(qf), free(kf), free(v), free(ig), free(fg), free(C0), free(n0), free(m0), free(href), free(hgot);
  free(C1), free(n1), free(m1), free(C1g), free(n1g), free(m1g);
}
static void test_mlstm(void) {
  mlstm_case(2, 200, 4, 2, 64, 64, 64, MLSTM_NORM_PAPER, 0, 0, 81);
  mlstm_case(1, 150, 4, 1, 32, 96, 16, MLSTM_NORM_MAX, 1, 0, 82);  /* partial D slice, MQA */
  mlstm_case(1, 97, 2, 2, 64, 64, 64, MLSTM_NORM_PAPER, 1, 1, 83); /* final aliases init */
}

int main(int argc, char **argv) {
  quick = gpu_test_begin(argc, argv);
  if (argc > 1 && strcmp(argv[1], "swa_timing") == 0) { /* only the 1B-shape SWA backward timing (for ncu) */
    swa_bwd_timing();
    return gpu_test_end();
  }
  RUN(test_matmul);
  RUN(test_rmsnorm);
  RUN(test_rmsnorm_f32);
  RUN(test_rope);
  RUN(test_swiglu);
  RUN(test_embedding);
  RUN(test_causal_attention);
  RUN(test_swa);
  RUN(test_attn_timing);
  RUN(test_swa_backward);
  RUN(test_mlstm);
  return gpu_test_end();
}
