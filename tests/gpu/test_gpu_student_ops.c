/* GPU tests of the student ops, part 2 (not in CTest: CI has no GPU; tools/gpu_test.sh runs
 * every tests/gpu/test_gpu_*.c on the device machine): the mLSTM chunkwise forward with its
 * boundary buffer and the exact chunkwise backward, feature maps, gates and the mixing gate,
 * each CUDA op against its fp32 CPU twin (src/ops/cpu) on fresh random inputs.
 *
 * Metric: ||gpu - cpu||_2 / ||cpu||_2. Pure outputs are poisoned with NaN bytes first (an
 * unwritten element fails); gradients, which the ops ACCUMULATE, start from random nonzero
 * values on both sides (an unwritten element is off by its whole gradient).
 * Bounds (fp32 both sides, only the summation order and the fast-math exp/divide differ):
 *   1e-5  forward outputs and short sums (<= a few hundred terms): ~1e-7 per rounding,
 *         growing like sqrt(terms);
 *   1e-4  reductions over all tokens (dP, dw, db: thousands of terms of both signs, where
 *         cancellation amplifies the relative error) and the mLSTM gradients. For the mLSTM
 *         the CPU's own fp32 backward is only within 2e-4 (max norm) of its float64 twin
 *         (docs/mlstm.md section 5), so two fp32 orders legitimately differ by 1e-5..1e-4; the
 *         program also prints both fp32 results against the float64 twin, and accepts a
 *         gradient above 1e-4 from the CPU fp32 only if the GPU is at least as close to the
 *         float64 result as the CPU fp32 is (within a factor 2).
 * mLSTM inputs: softmax features, gate pre-activations wide (|i~| up to ~20, f~ from strongly
 * negative to strongly positive) so the stabiliser switches branches, T not a multiple of
 * the chunk, GQA, MQA and H == G, both normalisers, random initial state.
 * Determinism: every feature map / gate / mix case runs forward + backward twice from the same
 * inputs and initial gradients and requires bitwise-identical results.
 * Without an argument the program also times the mLSTM forward + backward at the
 * Llama-3.2-1B student shape (B 1, H 32, G 8, T 4096, P 64 / 128, D 64, chunk 64) and checks
 * that shape against the CPU, and times the feature maps (q and k), gates and mix forward and
 * backward at the 1B shape (N 4096, D 2048, H 32, G 8, d 64, d_phi 64) in four modes: the
 * default (cuBLASLt, with the SIMT split-K kept where cuBLASLt would not split a reduction over
 * tokens, and the fused head-dim-64 kernels: branch ewise, the feature maps since on the tensor
 * cores), all SIMT (XD_STUDENT_OPS_SIMT=1: the
 * original kernels), every reduction over tokens on the SIMT split-K (XD_STUDENT_OPS_SIMT_RED=1)
 * and unfused (XD_STUDENT_OPS_UNFUSED=1: the default before branch ewise), for the feature maps also
 * the fused fp32 SIMT kernels (XD_STUDENT_OPS_FM_SIMT=1: the default before the 3xTF32 tensor-core
 * ones), checking bitwise run-to-run equality and each mode against the SIMT one (same bounds)
 * there, then reruns the small cases in the other modes; "quick" skips all that (used under compute-sanitizer); "ops" runs the small cases and
 * the 1B-shape feature map / gate / mix timings only.
 * Exits 77 (skip) when no CUDA device is present. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "core/core.h"
#include "ops/cpu/feature_map.h"
#include "ops/cpu/gates.h"
#include "ops/cpu/mix.h"
#include "ops/cpu/mlstm.h"
#include "ops/cuda/cuda_ops.h"
#include "test.h"
#include "gpu_test_util.h"

#define GPU(call) do { if ((call) != 0) { fprintf(stderr, "  FAIL %s:%d: %s\n", __FILE__, __LINE__, err.msg); xd_t.case_failed = 1; return; } } while (0)

static const double TOL_F32 = 1e-5, TOL_RED = 1e-4;

static double rel_l2_d(const float *x, const double *ref, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; i++) {
    const double d = (double)x[i] - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  if (isnan(num)) return INFINITY;
  return den > 0 ? sqrt(num / den) : sqrt(num);
}
static double worst; /* largest rel error / bound seen, for the summary line */
#define REL(name, x, ref, n, tol) do { double _r = rel_l2((x), (ref), (n)); \
    fprintf(stderr, "    %-48s rel %.3e (bound %.0e)\n", name, _r, (double)(tol)); \
    if (_r / (tol) > worst) worst = _r / (tol); \
    CHECKF(_r <= (tol), "%s: rel err %.3e > %.1e", name, _r, (double)(tol)); } while (0)

#define SAME(name, a, b, n) do { const int _same = memcmp((a), (b), (n) * sizeof(float)) == 0; \
    fprintf(stderr, "    %-48s %s\n", name, _same ? "bitwise identical on a rerun" : "DIFFERS on a rerun"); \
    CHECKF(_same, "%s: not deterministic", name); } while (0)
#define RERUN(dev, host, n) GPU(xd_cuda_upload(ctx, (dev), (host), (n) * sizeof(float), &err))
#define POISON(dev, n) GPU(xd_cuda_memset(ctx, (dev), 0xff, (n) * sizeof(float), &err))

static double *to_f64(const float *x, size_t n) {
  double *y = xd_malloc(n * sizeof(double) + 1);
  for (size_t i = 0; i < n; i++) y[i] = x[i];
  return y;
}
static void softmax_rows(float *x, size_t rows, int n) {
  for (size_t r = 0; r < rows; r++) {
    float *p = x + r * n, mx = -INFINITY, s = 0;
    for (int i = 0; i < n; i++) mx = fmaxf(mx, p[i]);
    for (int i = 0; i < n; i++) s += (p[i] = expf(p[i] - mx));
    for (int i = 0; i < n; i++) p[i] /= s;
  }
}

/* ---- mLSTM forward (with boundary buffer) + backward ------------------------------------------ */
typedef struct {
  float *qf, *kf, *v, *ig, *fg, *C0, *n0, *m0, *dh;
} mlstm_inputs;
static mlstm_inputs mlstm_make_inputs(const mlstm_cfg *c, xd_rng *r) {
  const size_t nq = (size_t)c->B * c->T * c->H * c->P, nk = (size_t)c->B * c->T * c->G * c->P;
  const size_t nv = (size_t)c->B * c->T * c->G * c->D, ng = (size_t)c->B * c->T * c->H, BH = (size_t)c->B * c->H;
  mlstm_inputs in;
  in.qf = rand_f32(r, nq, 0, 2.0), in.kf = rand_f32(r, nk, 0, 2.0), in.v = rand_f32(r, nv, 0, 1.0);
  softmax_rows(in.qf, nq / c->P, c->P), softmax_rows(in.kf, nk / c->P, c->P);
  /* wide gates: |i~| up to ~20 and f~ from about -12 to +16, so m switches branches often */
  in.ig = rand_f32(r, ng, -1.0, 6.0), in.fg = rand_f32(r, ng, 2.0, 5.0);
  in.C0 = rand_f32(r, BH * c->P * c->D, 0, 0.3), in.n0 = rand_f32(r, BH * c->P, 1.0, 0.2), in.m0 = rand_f32(r, BH, 0, 1.0);
  for (size_t i = 0; i < BH * c->P; i++) in.n0[i] = fabsf(in.n0[i]);
  in.dh = rand_f32(r, (size_t)c->B * c->T * c->H * c->D, 0, 1.0);
  return in;
}
static void mlstm_free_inputs(mlstm_inputs *in) {
  free(in->qf), free(in->kf), free(in->v), free(in->ig), free(in->fg), free(in->C0), free(in->n0), free(in->m0), free(in->dh);
}

/* Gradient check with the float64 escape hatch described at the top. */
static void grad_check(const char *name, const float *gpu, const float *cpu, const double *ref64, size_t n) {
  const double r32 = rel_l2(gpu, cpu, n);
  const double g64 = ref64 ? rel_l2_d(gpu, ref64, n) : NAN, c64 = ref64 ? rel_l2_d(cpu, ref64, n) : NAN;
  int ok = r32 <= TOL_RED;
  if (!ok && ref64) ok = g64 <= fmax(TOL_RED, 2 * c64);
  fprintf(stderr, "    %-48s rel %.3e (bound %.0e)   vs f64: gpu %.2e, cpu fp32 %.2e\n", name, r32, TOL_RED, g64, c64);
  if (r32 / TOL_RED > worst && ok && r32 <= TOL_RED) worst = r32 / TOL_RED;
  CHECKF(ok, "%s: rel err %.3e > %.1e (vs f64: gpu %.2e, cpu %.2e)", name, r32, TOL_RED, g64, c64);
}

static void mlstm_case(int B, int T, int H, int G, int P, int D, int L, mlstm_norm norm, int with_init, uint64_t seed,
                       int with_f64) {
  xd_rng r;
  xd_rng_seed(&r, seed);
  mlstm_cfg cfg = mlstm_cfg_make(B, T, H, G, P, D);
  cfg.chunk = L, cfg.norm = norm;
  const size_t nq = (size_t)B * T * H * P, nk = (size_t)B * T * G * P, nv = (size_t)B * T * G * D;
  const size_t ng = (size_t)B * T * H, nh = (size_t)B * T * H * D, BH = (size_t)B * H, nb = mlstm_boundary_size(&cfg);
  mlstm_inputs in = mlstm_make_inputs(&cfg, &r);
  /* accumulating gradients start from random values (the += contract) */
  float *gq0 = rand_f32(&r, nq, 0, 0.1), *gk0 = rand_f32(&r, nk, 0, 0.1), *gv0 = rand_f32(&r, nv, 0, 0.1);
  float *gi0 = rand_f32(&r, ng, 0, 0.1), *gf0 = rand_f32(&r, ng, 0, 0.1);
  mlstm_state init = {in.C0, in.n0, in.m0};
  /* CPU fp32 */
  float *href = xd_malloc(nh * 4), *bref = xd_malloc(nb * 4);
  float *cq = dup_f32(gq0, nq), *ck = dup_f32(gk0, nk), *cv = dup_f32(gv0, nv), *ci = dup_f32(gi0, ng), *cf = dup_f32(gf0, ng);
  mlstm_ws *ws = mlstm_ws_create(&cfg);
  const double tc0 = xd_now();
  mlstm_chunkwise_forward(&cfg, ws, in.qf, in.kf, in.v, in.ig, in.fg, with_init ? &init : NULL, NULL, bref, href);
  mlstm_chunkwise_backward(&cfg, ws, in.qf, in.kf, in.v, in.ig, in.fg, with_init ? &init : NULL, bref, in.dh, cq, ck, cv, ci, cf);
  const double tcpu = xd_now() - tc0;
  mlstm_ws_free(ws);
  /* CPU float64 twin (same inputs, same initial gradients) */
  double *d64[5] = {NULL, NULL, NULL, NULL, NULL};
  if (with_f64) {
    double *q = to_f64(in.qf, nq), *k = to_f64(in.kf, nk), *vv = to_f64(in.v, nv), *i = to_f64(in.ig, ng), *f = to_f64(in.fg, ng);
    double *C0 = to_f64(in.C0, BH * P * D), *n0 = to_f64(in.n0, BH * P), *m0 = to_f64(in.m0, BH), *dh = to_f64(in.dh, nh);
    double *h64 = xd_malloc(nh * 8), *b64 = xd_malloc(nb * 8);
    d64[0] = to_f64(gq0, nq), d64[1] = to_f64(gk0, nk), d64[2] = to_f64(gv0, nv), d64[3] = to_f64(gi0, ng), d64[4] = to_f64(gf0, ng);
    mlstm_state_f64 i64 = {C0, n0, m0};
    mlstm_ws *w64 = mlstm_ws_create_f64(&cfg);
    mlstm_chunkwise_forward_f64(&cfg, w64, q, k, vv, i, f, with_init ? &i64 : NULL, NULL, b64, h64);
    mlstm_chunkwise_backward_f64(&cfg, w64, q, k, vv, i, f, with_init ? &i64 : NULL, b64, dh, d64[0], d64[1], d64[2], d64[3], d64[4]);
    mlstm_ws_free(w64);
    free(q), free(k), free(vv), free(i), free(f), free(C0), free(n0), free(m0), free(dh), free(h64), free(b64);
  }
  /* GPU: forward with the boundary buffer, backward from the GPU's own boundary states */
  float *dq = up_raw(in.qf, nq * 4), *dk = up_raw(in.kf, nk * 4), *dv = up_raw(in.v, nv * 4);
  float *dig = up_raw(in.ig, ng * 4), *dfg = up_raw(in.fg, ng * 4), *ddh = up_raw(in.dh, nh * 4);
  float *dC0 = up_raw(in.C0, BH * P * D * 4), *dn0 = up_raw(in.n0, BH * P * 4), *dm0 = up_raw(in.m0, BH * 4);
  float *dh_out = dev_poisoned(nh * 4), *dbound = dev_poisoned(nb * 4);
  float *gq = up_raw(gq0, nq * 4), *gk = up_raw(gk0, nk * 4), *gv = up_raw(gv0, nv * 4), *gi = up_raw(gi0, ng * 4), *gf = up_raw(gf0, ng * 4);
  mlstm_state dinit = {dC0, dn0, dm0};
  GPU(xd_cuda_mlstm_chunkwise_forward_bound(ctx, &cfg, dq, dk, dv, dig, dfg, with_init ? &dinit : NULL, NULL, dbound, dh_out, &err));
  GPU(xd_cuda_mlstm_chunkwise_backward(ctx, &cfg, dq, dk, dv, dig, dfg, dbound, ddh, gq, gk, gv, gi, gf, &err));
  GPU(xd_cuda_sync(ctx, &err));
  float *hh = down(dh_out, nh), *hb = down(dbound, nb);
  float *hq = down(gq, nq), *hk = down(gk, nk), *hv = down(gv, nv), *hi = down(gi, ng), *hf = down(gf, ng);
  char name[160];
  snprintf(name, sizeof name, "mlstm B%d T%d H%d G%d P%d D%d L%d %s%s: h", B, T, H, G, P, D, L,
           norm == MLSTM_NORM_MAX ? "max" : "paper", with_init ? " init" : "");
  fprintf(stderr, "    (CPU fp32 forward + backward %.3f s)\n", tcpu);
  REL(name, hh, href, nh, TOL_F32);
  REL("  boundary states (C, n, m at chunk starts)", hb, bref, nb, TOL_F32);
  grad_check("  dqf", hq, cq, d64[0], nq);
  grad_check("  dkf", hk, ck, d64[1], nk);
  grad_check("  dv", hv, cv, d64[2], nv);
  grad_check("  dig", hi, ci, d64[3], ng);
  grad_check("  dfg", hf, cf, d64[4], ng);
  xd_cuda_free(dq), xd_cuda_free(dk), xd_cuda_free(dv), xd_cuda_free(dig), xd_cuda_free(dfg), xd_cuda_free(ddh);
  xd_cuda_free(dC0), xd_cuda_free(dn0), xd_cuda_free(dm0), xd_cuda_free(dh_out), xd_cuda_free(dbound);
  xd_cuda_free(gq), xd_cuda_free(gk), xd_cuda_free(gv), xd_cuda_free(gi), xd_cuda_free(gf);
  for (int i = 0; i < 5; i++) free(d64[i]);
  mlstm_free_inputs(&in);
  free(gq0), free(gk0), free(gv0), free(gi0), free(gf0), free(href), free(bref), free(cq), free(ck), free(cv), free(ci), free(cf);
  free(hh), free(hb), free(hq), free(hk), free(hv), free(hi), free(hf);
}
static void test_mlstm_backward(void) {
  mlstm_case(2, 200, 4, 2, 64, 64, 64, MLSTM_NORM_PAPER, 1, 101, 1);  /* GQA, T % L = 8 */
  mlstm_case(1, 150, 4, 1, 32, 96, 16, MLSTM_NORM_MAX, 0, 102, 1);    /* MQA, max normaliser, D > P */
  mlstm_case(1, 97, 2, 2, 128, 64, 64, MLSTM_NORM_PAPER, 1, 103, 1);  /* H == G (direct dK/dV), P = 128 */
  mlstm_case(1, 37, 2, 1, 16, 8, 1, MLSTM_NORM_MAX, 1, 104, 1);       /* chunk 1, D < 32 */
  mlstm_case(1, 45, 2, 2, 24, 40, 64, MLSTM_NORM_PAPER, 0, 105, 1);   /* one partial chunk (L > T) */
  mlstm_case(1, 300, 4, 2, 64, 64, 32, MLSTM_NORM_MAX, 1, 106, 1);    /* many chunks, max */
}

/* ---- the 1B shape: timings (and a check against the CPU for P = 128) --------------------------- */
static double median(double *x, int n) {
  for (int i = 1; i < n; i++)
    for (int j = i; j > 0 && x[j] < x[j - 1]; j--) {
      const double t = x[j];
      x[j] = x[j - 1], x[j - 1] = t;
    }
  return x[n / 2];
}
static void bench_shape(int P) {
  const int B = 1, T = 4096, H = 32, G = 8, D = 64;
  xd_rng r;
  xd_rng_seed(&r, 900 + P);
  mlstm_cfg cfg = mlstm_cfg_make(B, T, H, G, P, D);
  const size_t nq = (size_t)B * T * H * P, nk = (size_t)B * T * G * P, nv = (size_t)B * T * G * D;
  const size_t ng = (size_t)B * T * H, nh = (size_t)B * T * H * D, nb = mlstm_boundary_size(&cfg);
  mlstm_inputs in = mlstm_make_inputs(&cfg, &r);
  float *dq = up_raw(in.qf, nq * 4), *dk = up_raw(in.kf, nk * 4), *dv = up_raw(in.v, nv * 4);
  float *dig = up_raw(in.ig, ng * 4), *dfg = up_raw(in.fg, ng * 4), *ddh = up_raw(in.dh, nh * 4);
  float *dh_out = dev_poisoned(nh * 4), *dbound = dev_poisoned(nb * 4);
  float *gq = dev_poisoned(nq * 4), *gk = dev_poisoned(nk * 4), *gv = dev_poisoned(nv * 4), *gi = dev_poisoned(ng * 4),
        *gf = dev_poisoned(ng * 4);
  double tf[7], tb[7];
  for (int it = 0; it < 8; it++) { /* first iteration: warm-up */
    GPU(xd_cuda_memset(ctx, gq, 0, nq * 4, &err));
    GPU(xd_cuda_memset(ctx, gk, 0, nk * 4, &err));
    GPU(xd_cuda_memset(ctx, gv, 0, nv * 4, &err));
    GPU(xd_cuda_memset(ctx, gi, 0, ng * 4, &err));
    GPU(xd_cuda_memset(ctx, gf, 0, ng * 4, &err));
    GPU(xd_cuda_sync(ctx, &err));
    const double t0 = xd_now();
    GPU(xd_cuda_mlstm_chunkwise_forward_bound(ctx, &cfg, dq, dk, dv, dig, dfg, NULL, NULL, dbound, dh_out, &err));
    GPU(xd_cuda_sync(ctx, &err));
    const double t1 = xd_now();
    GPU(xd_cuda_mlstm_chunkwise_backward(ctx, &cfg, dq, dk, dv, dig, dfg, dbound, ddh, gq, gk, gv, gi, gf, &err));
    GPU(xd_cuda_sync(ctx, &err));
    const double t2 = xd_now();
    if (it) tf[it - 1] = t1 - t0, tb[it - 1] = t2 - t1;
  }
  const double mf = median(tf, 7) * 1e3, mb = median(tb, 7) * 1e3;
  /* flops of the chunkwise form per head (multiply-adds x2): forward ~ T (L (P + D) + 2 P D),
   * backward ~ T (L (3 P + 4 D) + 6 P D) (see mlstm_backward.cu) */
  const double L = 64, fw = 2.0 * B * H * T * (L * (P + D) + 2.0 * P * D), bw = 2.0 * B * H * T * (L * (3.0 * P + 4.0 * D) + 6.0 * P * D);
  fprintf(stderr, "    TIMING mlstm B%d H%d G%d T%d P%d D%d L64 fp32: forward+bound %.3f ms (%.1f TFLOP/s), backward %.3f ms (%.1f TFLOP/s), total %.3f ms (median of 7)\n",
          B, H, G, T, P, D, mf, fw / (mf * 1e-3) / 1e12, mb, bw / (mb * 1e-3) / 1e12, mf + mb);
  if (P == 128) { /* the last iteration's results (zero initial gradients) vs the CPU */
    float *href = xd_malloc(nh * 4), *bref = xd_malloc(nb * 4);
    float *cq = xd_calloc(nq, 4), *ck = xd_calloc(nk, 4), *cv = xd_calloc(nv, 4), *ci = xd_calloc(ng, 4), *cf = xd_calloc(ng, 4);
    mlstm_ws *ws = mlstm_ws_create(&cfg);
    const double t0 = xd_now();
    mlstm_chunkwise_forward(&cfg, ws, in.qf, in.kf, in.v, in.ig, in.fg, NULL, NULL, bref, href);
    mlstm_chunkwise_backward(&cfg, ws, in.qf, in.kf, in.v, in.ig, in.fg, NULL, bref, in.dh, cq, ck, cv, ci, cf);
    fprintf(stderr, "    (CPU fp32 forward + backward at this shape: %.2f s)\n", xd_now() - t0);
    mlstm_ws_free(ws);
    float *hh = down(dh_out, nh), *hb = down(dbound, nb);
    float *hq = down(gq, nq), *hk = down(gk, nk), *hv = down(gv, nv), *hi = down(gi, ng), *hf = down(gf, ng);
    REL("mlstm 1B shape P128: h", hh, href, nh, TOL_F32);
    REL("  boundary states", hb, bref, nb, TOL_F32);
    grad_check("  dqf", hq, cq, NULL, nq);
    grad_check("  dkf", hk, ck, NULL, nk);
    grad_check("  dv", hv, cv, NULL, nv);
    grad_check("  dig", hi, ci, NULL, ng);
    grad_check("  dfg", hf, cf, NULL, ng);
    free(href), free(bref), free(cq), free(ck), free(cv), free(ci), free(cf);
    free(hh), free(hb), free(hq), free(hk), free(hv), free(hi), free(hf);
  }
  xd_cuda_free(dq), xd_cuda_free(dk), xd_cuda_free(dv), xd_cuda_free(dig), xd_cuda_free(dfg), xd_cuda_free(ddh);
  xd_cuda_free(dh_out), xd_cuda_free(dbound);
  xd_cuda_free(gq), xd_cuda_free(gk), xd_cuda_free(gv), xd_cuda_free(gi), xd_cuda_free(gf);
  mlstm_free_inputs(&in);
}
static void test_mlstm_1b_shape(void) {
  bench_shape(64);
  bench_shape(128);
}

/* ---- feature maps ----------------------------------------------------------------------------- */
static float *dev_rand_f32(xd_rng *r, size_t n, double mean, double scale) {
  float *h = rand_f32(r, n, mean, scale), *d = up_raw(h, n * 4);
  free(h);
  return d;
}
static void fm_case(int N, int Hx, int d, int dphi, int hedgehog, uint64_t seed) {
  xd_rng r;
  xd_rng_seed(&r, seed);
  feature_map_shape s = {N, Hx, d, dphi, hedgehog};
  const int dp = feature_map_p_cols(&s);
  const size_t nx = (size_t)N * Hx * d, nP = (size_t)Hx * d * dp, nphi = (size_t)N * Hx * dphi;
  float *x = rand_f32(&r, nx, 0, 1.0), *P = rand_f32(&r, nP, 0, 0.4), *dphi_ = rand_f32(&r, nphi, 0, 1.0);
  float *dx0 = rand_f32(&r, nx, 0, 0.1), *dP0 = rand_f32(&r, nP, 0, 0.1);
  float *phi = xd_malloc(nphi * 4), *cdx = dup_f32(dx0, nx), *cdP = dup_f32(dP0, nP);
  feature_map_forward(phi, x, P, &s);
  feature_map_backward(cdx, cdP, dphi_, x, P, phi, &s);
  float *gx = up_raw(x, nx * 4), *gP = up_raw(P, nP * 4), *gdphi = up_raw(dphi_, nphi * 4), *gphi = dev_poisoned(nphi * 4);
  float *gdx = up_raw(dx0, nx * 4), *gdP = up_raw(dP0, nP * 4);
  GPU(xd_cuda_feature_map_forward(ctx, gphi, gx, gP, &s, &err));
  GPU(xd_cuda_feature_map_backward(ctx, gdx, gdP, gdphi, gx, gP, gphi, &s, &err));
  float *hphi = down(gphi, nphi), *hdx = down(gdx, nx), *hdP = down(gdP, nP);
  char name[128];
  snprintf(name, sizeof name, "feature map %s N%d Hx%d d%d dphi%d: phi", hedgehog ? "hedgehog" : "softmax", N, Hx, d, dphi);
  REL(name, hphi, phi, nphi, TOL_F32);
  REL("  dx", hdx, cdx, nx, TOL_F32);
  REL("  dP (sum over tokens)", hdP, cdP, nP, TOL_RED);
  POISON(gphi, nphi); RERUN(gdx, dx0, nx); RERUN(gdP, dP0, nP);
  GPU(xd_cuda_feature_map_forward(ctx, gphi, gx, gP, &s, &err));
  GPU(xd_cuda_feature_map_backward(ctx, gdx, gdP, gdphi, gx, gP, gphi, &s, &err));
  {
    float *rphi = down(gphi, nphi), *rdx = down(gdx, nx), *rdP = down(gdP, nP);
    SAME("  phi", rphi, hphi, nphi);
    SAME("  dx", rdx, hdx, nx);
    SAME("  dP", rdP, hdP, nP);
    free(rphi), free(rdx), free(rdP);
  }
  { /* XD_CUDA_GRAD_WRITE: dx written into a poisoned buffer, dP still += */
    float *zdx = xd_calloc(nx, 4), *zdP = dup_f32(dP0, nP);
    feature_map_backward(zdx, zdP, dphi_, x, P, phi, &s);
    POISON(gdx, nx); RERUN(gdP, dP0, nP);
    GPU(xd_cuda_feature_map_backward_ex(ctx, XD_CUDA_GRAD_WRITE, gdx, gdP, gdphi, gx, gP, gphi, &s, &err));
    float *wdx = down(gdx, nx), *wdP = down(gdP, nP);
    REL("  write: dx (= into poison)", wdx, zdx, nx, TOL_F32);
    REL("  write: dP (+=)", wdP, zdP, nP, TOL_RED);
    free(zdx), free(zdP), free(wdx), free(wdP);
  }
  xd_cuda_free(gx), xd_cuda_free(gP), xd_cuda_free(gdphi), xd_cuda_free(gphi), xd_cuda_free(gdx), xd_cuda_free(gdP);
  free(x), free(P), free(dphi_), free(dx0), free(dP0), free(phi), free(cdx), free(cdP), free(hphi), free(hdx), free(hdP);
}
/* q and k maps through xd_cuda_feature_map_{forward,backward}_pair vs one call each: bit for bit
 * (the paired launch runs each head's block exactly as the map's own launch does). */
static void fm_pair_case(int N, int Hq, int Hk, int d, int dphi, uint64_t seed) {
  xd_rng r;
  xd_rng_seed(&r, seed);
  const feature_map_shape sq = {N, Hq, d, dphi, 0}, sk = {N, Hk, d, dphi, 0};
  const int dp = feature_map_p_cols(&sq);
  const size_t nx[2] = {(size_t)N * Hq * d, (size_t)N * Hk * d}, nP[2] = {(size_t)Hq * d * dp, (size_t)Hk * d * dp};
  const size_t nf[2] = {(size_t)N * Hq * dphi, (size_t)N * Hk * dphi};
  float *gx[2], *gP[2], *gdf[2], *gdP0[2], *res[2][6];
  for (int m = 0; m < 2; m++) {
    gx[m] = dev_rand_f32(&r, nx[m], 0, 1.0), gP[m] = dev_rand_f32(&r, nP[m], 0, 0.4);
    gdf[m] = dev_rand_f32(&r, nf[m], 0, 1.0), gdP0[m] = dev_rand_f32(&r, nP[m], 0, 0.1);
  }
  for (int paired = 0; paired < 2; paired++) {
    float *phi[2], *dx[2], *dP[2];
    for (int m = 0; m < 2; m++) {
      phi[m] = dev_poisoned(nf[m] * 4), dx[m] = dev_poisoned(nx[m] * 4), dP[m] = dev_poisoned(nP[m] * 4);
      GPU(xd_cuda_copy(ctx, dP[m], gdP0[m], nP[m] * 4, &err));
    }
    const xd_cuda_fm_fwd fa = {phi[0], gx[0], gP[0], sq}, fb = {phi[1], gx[1], gP[1], sk};
    const xd_cuda_fm_bwd ba = {dx[0], dP[0], gdf[0], gx[0], gP[0], phi[0], sq},
                         bb = {dx[1], dP[1], gdf[1], gx[1], gP[1], phi[1], sk};
    if (paired) {
      GPU(xd_cuda_feature_map_forward_pair(ctx, &fa, &fb, &err));
      GPU(xd_cuda_feature_map_backward_pair(ctx, XD_CUDA_GRAD_WRITE, &ba, &bb, &err));
    } else {
      GPU(xd_cuda_feature_map_forward(ctx, fa.phi, fa.x, fa.P, &sq, &err));
      GPU(xd_cuda_feature_map_forward(ctx, fb.phi, fb.x, fb.P, &sk, &err));
      GPU(xd_cuda_feature_map_backward_ex(ctx, XD_CUDA_GRAD_WRITE, ba.dx, ba.dP, ba.dphi, ba.x, ba.P, ba.phi, &sq, &err));
      GPU(xd_cuda_feature_map_backward_ex(ctx, XD_CUDA_GRAD_WRITE, bb.dx, bb.dP, bb.dphi, bb.x, bb.P, bb.phi, &sk, &err));
    }
    for (int m = 0; m < 2; m++) {
      res[paired][3 * m] = down(phi[m], nf[m]), res[paired][3 * m + 1] = down(dx[m], nx[m]);
      res[paired][3 * m + 2] = down(dP[m], nP[m]);
      xd_cuda_free(phi[m]), xd_cuda_free(dx[m]), xd_cuda_free(dP[m]);
    }
  }
  static const char *const what[6] = {"phi_q", "dx_q", "dP_q", "phi_k", "dx_k", "dP_k"};
  const size_t cnt[6] = {nf[0], nx[0], nP[0], nf[1], nx[1], nP[1]};
  for (int j = 0; j < 6; j++) {
    const int same = memcmp(res[1][j], res[0][j], cnt[j] * 4) == 0;
    fprintf(stderr, "    pair N%d Hq%d Hk%d d%d: %-24s %s\n", N, Hq, Hk, d, what[j],
            same ? "bitwise the two calls'" : "DIFFERS from the two calls");
    CHECKF(same, "feature map pair: %s differs from one call per map", what[j]);
    free(res[0][j]), free(res[1][j]);
  }
  for (int m = 0; m < 2; m++) xd_cuda_free(gx[m]), xd_cuda_free(gP[m]), xd_cuda_free(gdf[m]), xd_cuda_free(gdP0[m]);
}
static void test_feature_map(void) {
  fm_pair_case(700, 4, 2, 64, 64, 207); /* the tensor-core kernels: one launch over 6 heads */
  fm_pair_case(300, 3, 1, 64, 128, 208); /* d_phi 128: the two calls */
  fm_case(77, 4, 64, 128, 0, 201);
  fm_case(93, 2, 48, 64, 1, 202);
  fm_case(1500, 4, 64, 64, 0, 203); /* split-K path for dP */
  fm_case(1100, 2, 64, 128, 1, 204);
  fm_case(63, 3, 64, 64, 0, 205);   /* fused backward: one partial tile */
  fm_case(4100, 2, 64, 64, 0, 206); /* fused backward: 17 spans, the last of 4 tokens */
}

/* ---- gates ------------------------------------------------------------------------------------ */
static void gates_case(int N, int D, int H, float cap, uint64_t seed) {
  xd_rng r;
  xd_rng_seed(&r, seed);
  gates_shape s = {N, D, H, cap};
  const size_t nx = (size_t)N * D, nw = (size_t)H * D, ng = (size_t)N * H;
  /* x . w ~ N(0, D * 0.25^2 ...): pre-activations up to ~+-20, beyond the cap of 15 */
  float *x = rand_f32(&r, nx, 0, 1.0), *wi = rand_f32(&r, nw, 0, 6.0 / sqrt(D)), *wf = rand_f32(&r, nw, 0, 6.0 / sqrt(D));
  float *bi = rand_f32(&r, H, 0, 2.0), *bf = rand_f32(&r, H, 4.0, 1.0);
  float *dig = rand_f32(&r, ng, 0, 1.0), *dfg = rand_f32(&r, ng, 0, 1.0);
  float *dx0 = rand_f32(&r, nx, 0, 0.1), *dwi0 = rand_f32(&r, nw, 0, 0.1), *dwf0 = rand_f32(&r, nw, 0, 0.1);
  float *dbi0 = rand_f32(&r, H, 0, 0.1), *dbf0 = rand_f32(&r, H, 0, 0.1);
  float *ig = xd_malloc(ng * 4), *fg = xd_malloc(ng * 4);
  float *cdx = dup_f32(dx0, nx), *cdwi = dup_f32(dwi0, nw), *cdwf = dup_f32(dwf0, nw), *cdbi = dup_f32(dbi0, H), *cdbf = dup_f32(dbf0, H);
  gates_forward(ig, fg, x, wi, bi, wf, bf, &s);
  gates_backward(cdx, cdwi, cdbi, cdwf, cdbf, dig, dfg, x, wi, wf, ig, fg, &s);
  float *gx = up_raw(x, nx * 4), *gwi = up_raw(wi, nw * 4), *gwf = up_raw(wf, nw * 4), *gbi = up_raw(bi, H * 4), *gbf = up_raw(bf, H * 4);
  float *gig = dev_poisoned(ng * 4), *gfg = dev_poisoned(ng * 4), *gdig = up_raw(dig, ng * 4), *gdfg = up_raw(dfg, ng * 4);
  float *gdx = up_raw(dx0, nx * 4), *gdwi = up_raw(dwi0, nw * 4), *gdwf = up_raw(dwf0, nw * 4);
  float *gdbi = up_raw(dbi0, H * 4), *gdbf = up_raw(dbf0, H * 4);
  GPU(xd_cuda_gates_forward(ctx, gig, gfg, gx, gwi, gbi, gwf, gbf, &s, &err));
  GPU(xd_cuda_gates_backward(ctx, gdx, gdwi, gdbi, gdwf, gdbf, gdig, gdfg, gx, gwi, gwf, gig, gfg, &s, &err));
  float *hig = down(gig, ng), *hfg = down(gfg, ng), *hdx = down(gdx, nx), *hdwi = down(gdwi, nw), *hdwf = down(gdwf, nw);
  float *hdbi = down(gdbi, H), *hdbf = down(gdbf, H);
  int capped = 0;
  for (size_t i = 0; i < ng; i++) capped += fabsf(ig[i]) > 10.f || fabsf(fg[i]) > 10.f;
  char name[128];
  snprintf(name, sizeof name, "gates N%d D%d H%d cap %g (%d tokens*heads > 10): i~", N, D, H, (double)cap, capped);
  REL(name, hig, ig, ng, TOL_F32);
  REL("  f~", hfg, fg, ng, TOL_F32);
  REL("  dx", hdx, cdx, nx, TOL_F32);
  REL("  dw_i (sum over tokens)", hdwi, cdwi, nw, TOL_RED);
  REL("  db_i (sum over tokens)", hdbi, cdbi, H, TOL_RED);
  REL("  dw_f (sum over tokens)", hdwf, cdwf, nw, TOL_RED);
  REL("  db_f (sum over tokens)", hdbf, cdbf, H, TOL_RED);
  POISON(gig, ng); POISON(gfg, ng); RERUN(gdx, dx0, nx); RERUN(gdwi, dwi0, nw); RERUN(gdwf, dwf0, nw);
  RERUN(gdbi, dbi0, H); RERUN(gdbf, dbf0, H);
  GPU(xd_cuda_gates_forward(ctx, gig, gfg, gx, gwi, gbi, gwf, gbf, &s, &err));
  GPU(xd_cuda_gates_backward(ctx, gdx, gdwi, gdbi, gdwf, gdbf, gdig, gdfg, gx, gwi, gwf, gig, gfg, &s, &err));
  {
    float *a = down(gig, ng), *b = down(gfg, ng), *cx = down(gdx, nx), *dwi = down(gdwi, nw), *dwf = down(gdwf, nw);
    float *dbi = down(gdbi, H), *dbf = down(gdbf, H);
    SAME("  i~", a, hig, ng);
    SAME("  f~", b, hfg, ng);
    SAME("  dx", cx, hdx, nx);
    SAME("  dw_i", dwi, hdwi, nw);
    SAME("  dw_f", dwf, hdwf, nw);
    SAME("  db_i", dbi, hdbi, H);
    SAME("  db_f", dbf, hdbf, H);
    free(a), free(b), free(cx), free(dwi), free(dwf), free(dbi), free(dbf);
  }
  { /* XD_CUDA_GRAD_WRITE: dx written into a poisoned buffer, the parameter gradients still += */
    float *zdx = xd_calloc(nx, 4), *zwi = dup_f32(dwi0, nw), *zwf = dup_f32(dwf0, nw), *zbi = dup_f32(dbi0, H),
          *zbf = dup_f32(dbf0, H);
    gates_backward(zdx, zwi, zbi, zwf, zbf, dig, dfg, x, wi, wf, ig, fg, &s);
    POISON(gdx, nx); RERUN(gdwi, dwi0, nw); RERUN(gdwf, dwf0, nw); RERUN(gdbi, dbi0, H); RERUN(gdbf, dbf0, H);
    GPU(xd_cuda_gates_backward_ex(ctx, XD_CUDA_GRAD_WRITE, gdx, gdwi, gdbi, gdwf, gdbf, gdig, gdfg, gx, gwi, gwf, gig, gfg,
                                  &s, &err));
    float *wdx = down(gdx, nx), *wwi = down(gdwi, nw), *wbf = down(gdbf, H);
    REL("  write: dx (= into poison)", wdx, zdx, nx, TOL_F32);
    REL("  write: dw_i (+=)", wwi, zwi, nw, TOL_RED);
    REL("  write: db_f (+=)", wbf, zbf, H, TOL_RED);
    free(zdx), free(zwi), free(zwf), free(zbi), free(zbf), free(wdx), free(wwi), free(wbf);
  }
  xd_cuda_free(gx), xd_cuda_free(gwi), xd_cuda_free(gwf), xd_cuda_free(gbi), xd_cuda_free(gbf), xd_cuda_free(gig), xd_cuda_free(gfg);
  xd_cuda_free(gdig), xd_cuda_free(gdfg), xd_cuda_free(gdx), xd_cuda_free(gdwi), xd_cuda_free(gdwf), xd_cuda_free(gdbi), xd_cuda_free(gdbf);
  free(x), free(wi), free(wf), free(bi), free(bf), free(dig), free(dfg), free(dx0), free(dwi0), free(dwf0), free(dbi0), free(dbf0);
  free(ig), free(fg), free(cdx), free(cdwi), free(cdwf), free(cdbi), free(cdbf);
  free(hig), free(hfg), free(hdx), free(hdwi), free(hdwf), free(hdbi), free(hdbf);
}
static void test_gates(void) {
  gates_case(300, 200, 6, GATES_SOFT_CAP, 301);
  gates_case(77, 130, 5, 0.f, 302);              /* no cap */
  gates_case(1100, 256, 32, GATES_SOFT_CAP, 303); /* split-K path for dw */
}

/* ---- mixing gate ------------------------------------------------------------------------------ */
static void mix_case(int N, int H, int G, int d, uint64_t seed) {
  xd_rng r;
  xd_rng_seed(&r, seed);
  mix_shape s = {N, H, G, d};
  const size_t nq = (size_t)N * H * d, nk = (size_t)N * G * d, nw = (size_t)H * 3 * d, no = (size_t)N * H;
  float *q = rand_f32(&r, nq, 0, 1.0), *k = rand_f32(&r, nk, 0, 1.0), *v = rand_f32(&r, nk, 0, 1.0);
  float *w = rand_f32(&r, nw, 0, 0.3), *b = rand_f32(&r, H, -1.0, 1.0), *hg = rand_f32(&r, nq, 0, 1.0), *hl = rand_f32(&r, nq, 0, 1.0);
  float *dout = rand_f32(&r, nq, 0, 1.0);
  float *dq0 = rand_f32(&r, nq, 0, 0.1), *dk0 = rand_f32(&r, nk, 0, 0.1), *dv0 = rand_f32(&r, nk, 0, 0.1);
  float *dw0 = rand_f32(&r, nw, 0, 0.1), *db0 = rand_f32(&r, H, 0, 0.1), *dhg0 = rand_f32(&r, nq, 0, 0.1), *dhl0 = rand_f32(&r, nq, 0, 0.1);
  float *out = xd_malloc(nq * 4), *o = xd_malloc(no * 4);
  float *cdq = dup_f32(dq0, nq), *cdk = dup_f32(dk0, nk), *cdv = dup_f32(dv0, nk), *cdw = dup_f32(dw0, nw), *cdb = dup_f32(db0, H);
  float *cdhg = dup_f32(dhg0, nq), *cdhl = dup_f32(dhl0, nq);
  mix_forward(out, o, q, k, v, w, b, hg, hl, &s);
  mix_backward(cdq, cdk, cdv, cdw, cdb, cdhg, cdhl, dout, o, q, k, v, w, hg, hl, &s);
  float *gq = up_raw(q, nq * 4), *gk = up_raw(k, nk * 4), *gv = up_raw(v, nk * 4), *gw = up_raw(w, nw * 4), *gb = up_raw(b, H * 4);
  float *ghg = up_raw(hg, nq * 4), *ghl = up_raw(hl, nq * 4), *gdout = up_raw(dout, nq * 4);
  float *gout = dev_poisoned(nq * 4), *go = dev_poisoned(no * 4);
  float *gdq = up_raw(dq0, nq * 4), *gdk = up_raw(dk0, nk * 4), *gdv = up_raw(dv0, nk * 4), *gdw = up_raw(dw0, nw * 4);
  float *gdb = up_raw(db0, H * 4), *gdhg = up_raw(dhg0, nq * 4), *gdhl = up_raw(dhl0, nq * 4);
  GPU(xd_cuda_mix_forward(ctx, gout, go, gq, gk, gv, gw, gb, ghg, ghl, &s, &err));
  GPU(xd_cuda_mix_backward(ctx, gdq, gdk, gdv, gdw, gdb, gdhg, gdhl, gdout, go, gq, gk, gv, gw, ghg, ghl, &s, &err));
  float *hout = down(gout, nq), *ho = down(go, no), *hdq = down(gdq, nq), *hdk = down(gdk, nk), *hdv = down(gdv, nk);
  float *hdw = down(gdw, nw), *hdb = down(gdb, H), *hdhg = down(gdhg, nq), *hdhl = down(gdhl, nq);
  char name[128];
  snprintf(name, sizeof name, "mix N%d H%d G%d d%d: out", N, H, G, d);
  REL(name, hout, out, nq, TOL_F32);
  REL("  o", ho, o, no, TOL_F32);
  REL("  dq_raw", hdq, cdq, nq, TOL_F32);
  REL("  dk_raw", hdk, cdk, nk, TOL_F32);
  REL("  dv_raw", hdv, cdv, nk, TOL_F32);
  REL("  dh_global", hdhg, cdhg, nq, TOL_F32);
  REL("  dh_local", hdhl, cdhl, nq, TOL_F32);
  REL("  dw_o (sum over tokens)", hdw, cdw, nw, TOL_RED);
  REL("  db_o (sum over tokens)", hdb, cdb, H, TOL_RED);
  { /* the bf16-output forward (the training step's): bf16 of the fp32 forward's out, bit for bit */
    uint16_t *g16 = dev_poisoned(nq * 2), *h16 = xd_malloc(nq * 2);
    float *go2 = dev_poisoned(no * 4);
    GPU(xd_cuda_mix_forward_bf16(ctx, g16, go2, gq, gk, gv, gw, gb, ghg, ghl, &s, &err));
    GPU(xd_cuda_download(ctx, h16, g16, nq * 2, &err));
    size_t bad = 0;
    for (size_t i = 0; i < nq; i++) bad += h16[i] != xd_f32_to_bf16(hout[i]);
    fprintf(stderr, "    %-56s %zu of %zu differ\n", "  forward_bf16 vs bf16(out)", bad, nq);
    CHECK(bad == 0);
    xd_cuda_free(g16), xd_cuda_free(go2), free(h16);
  }
  POISON(gout, nq); POISON(go, no); RERUN(gdq, dq0, nq); RERUN(gdk, dk0, nk); RERUN(gdv, dv0, nk);
  RERUN(gdw, dw0, nw); RERUN(gdb, db0, H); RERUN(gdhg, dhg0, nq); RERUN(gdhl, dhl0, nq);
  GPU(xd_cuda_mix_forward(ctx, gout, go, gq, gk, gv, gw, gb, ghg, ghl, &s, &err));
  GPU(xd_cuda_mix_backward(ctx, gdq, gdk, gdv, gdw, gdb, gdhg, gdhl, gdout, go, gq, gk, gv, gw, ghg, ghl, &s, &err));
  {
    float *a = down(gout, nq), *b2 = down(go, no), *x1 = down(gdq, nq), *x2 = down(gdk, nk), *x3 = down(gdv, nk);
    float *x4 = down(gdw, nw), *x5 = down(gdb, H), *x6 = down(gdhg, nq), *x7 = down(gdhl, nq);
    SAME("  out", a, hout, nq);
    SAME("  o", b2, ho, no);
    SAME("  dq_raw", x1, hdq, nq);
    SAME("  dk_raw", x2, hdk, nk);
    SAME("  dv_raw", x3, hdv, nk);
    SAME("  dw_o", x4, hdw, nw);
    SAME("  db_o", x5, hdb, H);
    SAME("  dh_global", x6, hdhg, nq);
    SAME("  dh_local", x7, hdhl, nq);
    free(a), free(b2), free(x1), free(x2), free(x3), free(x4), free(x5), free(x6), free(x7);
  }
  { /* XD_CUDA_GRAD_WRITE: dq, dk, dv, dh_global, dh_local written into poisoned buffers (dk, dv by
     * the group's first head, then +=), dw_o and db_o still += */
    float *zq = xd_calloc(nq, 4), *zk = xd_calloc(nk, 4), *zv = xd_calloc(nk, 4), *zhg = xd_calloc(nq, 4),
          *zhl = xd_calloc(nq, 4), *zw = dup_f32(dw0, nw), *zb = dup_f32(db0, H);
    mix_backward(zq, zk, zv, zw, zb, zhg, zhl, dout, o, q, k, v, w, hg, hl, &s);
    POISON(gdq, nq); POISON(gdk, nk); POISON(gdv, nk); POISON(gdhg, nq); POISON(gdhl, nq);
    RERUN(gdw, dw0, nw); RERUN(gdb, db0, H);
    GPU(xd_cuda_mix_backward_ex(ctx, XD_CUDA_GRAD_WRITE, gdq, gdk, gdv, gdw, gdb, gdhg, gdhl, gdout, go, gq, gk, gv, gw,
                                ghg, ghl, &s, &err));
    float *x1 = down(gdq, nq), *x2 = down(gdk, nk), *x3 = down(gdv, nk), *x4 = down(gdw, nw), *x5 = down(gdb, H);
    float *x6 = down(gdhg, nq), *x7 = down(gdhl, nq);
    REL("  write: dq_raw", x1, zq, nq, TOL_F32);
    REL("  write: dk_raw", x2, zk, nk, TOL_F32);
    REL("  write: dv_raw", x3, zv, nk, TOL_F32);
    REL("  write: dh_global", x6, zhg, nq, TOL_F32);
    REL("  write: dh_local", x7, zhl, nq, TOL_F32);
    REL("  write: dw_o (+=)", x4, zw, nw, TOL_RED);
    REL("  write: db_o (+=)", x5, zb, H, TOL_RED);
    free(zq), free(zk), free(zv), free(zhg), free(zhl), free(zw), free(zb);
    free(x1), free(x2), free(x3), free(x4), free(x5), free(x6), free(x7);
  }
  { /* h_local in bf16 (the training step's attention output as it is) vs the fp32 entry points on
     * its fp32 conversion: bit for bit, forward (out, o) and backward (written) */
    uint16_t *hl16 = xd_malloc(nq * 2), *o16[2];
    float *hlr = xd_malloc(nq * 4);
    for (size_t i = 0; i < nq; i++) hl16[i] = xd_f32_to_bf16(hl[i]), hlr[i] = xd_bf16_to_f32(hl16[i]);
    uint16_t *ghl16 = (uint16_t *)up_raw(hl16, nq * 2);
    float *ghlr = up_raw(hlr, nq * 4), *res[2][9];
    for (int m = 0; m < 2; m++) {
      o16[m] = dev_poisoned(nq * 2);
      POISON(go, no); POISON(gdq, nq); POISON(gdk, nk); POISON(gdv, nk); POISON(gdhg, nq); POISON(gdhl, nq);
      RERUN(gdw, dw0, nw); RERUN(gdb, db0, H);
      if (m == 0) {
        GPU(xd_cuda_mix_forward_bf16(ctx, o16[m], go, gq, gk, gv, gw, gb, ghg, ghlr, &s, &err));
        GPU(xd_cuda_mix_backward_ex(ctx, XD_CUDA_GRAD_WRITE, gdq, gdk, gdv, gdw, gdb, gdhg, gdhl, gdout, go, gq, gk, gv,
                                    gw, ghg, ghlr, &s, &err));
      } else {
        GPU(xd_cuda_mix_forward_bf16_hl16(ctx, o16[m], go, gq, gk, gv, gw, gb, ghg, ghl16, &s, &err));
        GPU(xd_cuda_mix_backward_hl16(ctx, XD_CUDA_GRAD_WRITE, gdq, gdk, gdv, gdw, gdb, gdhg, gdhl, gdout, go, gq, gk,
                                      gv, gw, ghg, ghl16, &s, &err));
      }
      res[m][0] = down(go, no), res[m][1] = down(gdq, nq), res[m][2] = down(gdk, nk), res[m][3] = down(gdv, nk);
      res[m][4] = down(gdw, nw), res[m][5] = down(gdb, H), res[m][6] = down(gdhg, nq), res[m][7] = down(gdhl, nq);
      res[m][8] = xd_malloc(nq * 2);
      GPU(xd_cuda_download(ctx, res[m][8], o16[m], nq * 2, &err));
    }
    static const char *const what[9] = {"  hl16: o", "  hl16: dq_raw", "  hl16: dk_raw", "  hl16: dv_raw",
                                        "  hl16: dw_o", "  hl16: db_o", "  hl16: dh_global", "  hl16: dh_local",
                                        "  hl16: out (bf16 pairs as floats)"};
    const size_t cnt[9] = {no, nq, nk, nk, nw, H, nq, nq, nq / 2};
    for (int j = 0; j < 9; j++) {
      const int same = memcmp(res[1][j], res[0][j], cnt[j] * sizeof(float)) == 0;
      fprintf(stderr, "    %-48s %s\n", what[j], same ? "bitwise the fp32 path's" : "DIFFERS from the fp32 path");
      CHECKF(same, "%s: differs from the fp32 h_local path", what[j]);
    }
    for (int m = 0; m < 2; m++) {
      xd_cuda_free(o16[m]);
      for (int j = 0; j < 9; j++) free(res[m][j]);
    }
    xd_cuda_free(ghl16), xd_cuda_free(ghlr), free(hl16), free(hlr);
  }
  xd_cuda_free(gq), xd_cuda_free(gk), xd_cuda_free(gv), xd_cuda_free(gw), xd_cuda_free(gb), xd_cuda_free(ghg), xd_cuda_free(ghl);
  xd_cuda_free(gdout), xd_cuda_free(gout), xd_cuda_free(go), xd_cuda_free(gdq), xd_cuda_free(gdk), xd_cuda_free(gdv);
  xd_cuda_free(gdw), xd_cuda_free(gdb), xd_cuda_free(gdhg), xd_cuda_free(gdhl);
  free(q), free(k), free(v), free(w), free(b), free(hg), free(hl), free(dout), free(dq0), free(dk0), free(dv0), free(dw0), free(db0);
  free(dhg0), free(dhl0), free(out), free(o), free(cdq), free(cdk), free(cdv), free(cdw), free(cdb), free(cdhg), free(cdhl);
  free(hout), free(ho), free(hdq), free(hdk), free(hdv), free(hdw), free(hdb), free(hdhg), free(hdhl);
}
static void test_mix(void) {
  mix_case(150, 8, 2, 64, 401);
  mix_case(700, 4, 4, 32, 402);
  mix_case(33, 6, 1, 40, 403);
  mix_case(70, 3, 3, 64, 404);   /* head dim 64 kernels, one head per group */
  mix_case(129, 4, 2, 64, 405);  /* two heads per group, 3 token slices (the last of 1) */
  mix_case(40, 16, 2, 64, 406);  /* 8 heads per group: the general kernels */
}


/* ---- the 1B shape: feature maps, gates, mix (timings, SIMT vs cuBLASLt, determinism) ---------- */
typedef struct {
  size_t n;
  float *dev, *first, *ref;
  double tol;
} det_buf; /* an output checked for bitwise equality between two runs, and against the SIMT mode's */
static const char *const sb_mode[6] = {"SIMT", "cuBLASLt + fused (default)", "cuBLASLt + SIMT reductions",
                                       "unfused (XD_STUDENT_OPS_UNFUSED)", "fused fp32 SIMT (XD_STUDENT_OPS_FM_SIMT)",
                                       "default, q and k in one launch"};
static int fm_paired; /* mode 5 (feature maps only): the _pair entry points, as the trainer calls them */
static void sb_env(int mode) {
  unsetenv("XD_STUDENT_OPS_SIMT"), unsetenv("XD_STUDENT_OPS_SIMT_RED"), unsetenv("XD_STUDENT_OPS_UNFUSED");
  unsetenv("XD_STUDENT_OPS_FM_SIMT");
  if (mode == 4) setenv("XD_STUDENT_OPS_FM_SIMT", "1", 1);
  if (mode == 0) setenv("XD_STUDENT_OPS_SIMT", "1", 1);
  if (mode == 2) setenv("XD_STUDENT_OPS_SIMT_RED", "1", 1);
  if (mode == 3) setenv("XD_STUDENT_OPS_UNFUSED", "1", 1);
  /* mode 5: the default switches (the caller pairs the calls) */
}
/* mode 0: XD_STUDENT_OPS_SIMT=1, 1: default (cuBLASLt, fused kernels), 2: XD_STUDENT_OPS_SIMT_RED=1,
 * 3: XD_STUDENT_OPS_UNFUSED=1 (the default before the fused kernels of branch ewise),
 * 4 (feature maps only): XD_STUDENT_OPS_FM_SIMT=1 (the fused fp32 SIMT kernels, the default
 * before the tensor-core ones) */
static void sb_time(const char *what, int mode, double *fwd_ms, double *bwd_ms, int (*fwd)(void *), int (*bwd)(void *),
                    int (*reset)(void *), void *arg, det_buf *det, int ndet) {
  sb_env(mode);
  double tf[7], tb[7];
  for (int it = 0; it < 10; it++) { /* 0: warm-up; 1..7 timed; 8, 9: determinism from a reset */
    if (it >= 8 && reset(arg)) goto fail;
    if (xd_cuda_sync(ctx, &err)) goto fail;
    const double t0 = xd_now();
    if (fwd(arg) || xd_cuda_sync(ctx, &err)) goto fail;
    const double t1 = xd_now();
    if (bwd(arg) || xd_cuda_sync(ctx, &err)) goto fail;
    const double t2 = xd_now();
    if (it >= 1 && it <= 7) tf[it - 1] = t1 - t0, tb[it - 1] = t2 - t1;
    for (int i = 0; it >= 8 && i < ndet; i++) {
      float *h = down(det[i].dev, det[i].n);
      if (it == 8) det[i].first = h;
      else {
        char name[96];
        snprintf(name, sizeof name, "  %s output %d (1B shape, %s)", what, i, sb_mode[mode]);
        SAME(name, h, det[i].first, det[i].n);
        free(det[i].first), det[i].first = NULL;
        if (mode == 0) free(det[i].ref), det[i].ref = h;
        else {
          snprintf(name, sizeof name, "  %s output %d (1B shape): %s vs SIMT", what, i, sb_mode[mode]);
          REL(name, h, det[i].ref, det[i].n, det[i].tol);
          free(h);
        }
      }
    }
  }
  *fwd_ms = median(tf, 7) * 1e3, *bwd_ms = median(tb, 7) * 1e3;
  sb_env(1);
  return;
fail:
  sb_env(1);
  fprintf(stderr, "  FAIL %s: %s\n", what, err.msg);
  xd_t.case_failed = 1;
}

enum { SB_N = 4096, SB_D = 2048, SB_H = 32, SB_G = 8, SB_d = 64, SB_P = 64 };
typedef struct {
  float *xq, *xk, *Pq, *Pk, *phq, *phk, *dphq, *dphk, *dxq, *dxk, *dPq, *dPk;
} fm_bufs;
static int fm_f(void *a) {
  fm_bufs *b = a;
  const feature_map_shape fq = {SB_N, SB_H, SB_d, SB_P, 0}, fk = {SB_N, SB_G, SB_d, SB_P, 0};
  if (fm_paired) {
    const xd_cuda_fm_fwd mq = {b->phq, b->xq, b->Pq, fq}, mk = {b->phk, b->xk, b->Pk, fk};
    return xd_cuda_feature_map_forward_pair(ctx, &mq, &mk, &err);
  }
  return xd_cuda_feature_map_forward(ctx, b->phq, b->xq, b->Pq, &fq, &err) ||
         xd_cuda_feature_map_forward(ctx, b->phk, b->xk, b->Pk, &fk, &err);
}
static int fm_b(void *a) {
  fm_bufs *b = a;
  const feature_map_shape fq = {SB_N, SB_H, SB_d, SB_P, 0}, fk = {SB_N, SB_G, SB_d, SB_P, 0};
  if (fm_paired) {
    const xd_cuda_fm_bwd mq = {b->dxq, b->dPq, b->dphq, b->xq, b->Pq, b->phq, fq},
                         mk = {b->dxk, b->dPk, b->dphk, b->xk, b->Pk, b->phk, fk};
    return xd_cuda_feature_map_backward_pair(ctx, 0, &mq, &mk, &err);
  }
  return xd_cuda_feature_map_backward(ctx, b->dxq, b->dPq, b->dphq, b->xq, b->Pq, b->phq, &fq, &err) ||
         xd_cuda_feature_map_backward(ctx, b->dxk, b->dPk, b->dphk, b->xk, b->Pk, b->phk, &fk, &err);
}
static int fm_r(void *a) {
  fm_bufs *b = a;
  return xd_cuda_memset(ctx, b->dxq, 0, (size_t)SB_N * SB_H * SB_d * 4, &err) ||
         xd_cuda_memset(ctx, b->dxk, 0, (size_t)SB_N * SB_G * SB_d * 4, &err) ||
         xd_cuda_memset(ctx, b->dPq, 0, (size_t)SB_H * SB_d * SB_P * 4, &err) ||
         xd_cuda_memset(ctx, b->dPk, 0, (size_t)SB_G * SB_d * SB_P * 4, &err);
}
typedef struct {
  float *x, *wi, *wf, *bi, *bf, *ig, *fg, *dig, *dfg, *dx, *dwi, *dwf, *dbi, *dbf;
} gate_bufs;
static const gates_shape sb_gs = {SB_N, SB_D, SB_H, GATES_SOFT_CAP};
static int ga_f(void *a) {
  gate_bufs *b = a;
  return xd_cuda_gates_forward(ctx, b->ig, b->fg, b->x, b->wi, b->bi, b->wf, b->bf, &sb_gs, &err);
}
static int ga_b(void *a) {
  gate_bufs *b = a;
  return xd_cuda_gates_backward(ctx, b->dx, b->dwi, b->dbi, b->dwf, b->dbf, b->dig, b->dfg, b->x, b->wi, b->wf, b->ig,
                                b->fg, &sb_gs, &err);
}
static int ga_r(void *a) {
  gate_bufs *b = a;
  return xd_cuda_memset(ctx, b->dx, 0, (size_t)SB_N * SB_D * 4, &err) ||
         xd_cuda_memset(ctx, b->dwi, 0, (size_t)SB_H * SB_D * 4, &err) ||
         xd_cuda_memset(ctx, b->dwf, 0, (size_t)SB_H * SB_D * 4, &err) ||
         xd_cuda_memset(ctx, b->dbi, 0, SB_H * 4, &err) || xd_cuda_memset(ctx, b->dbf, 0, SB_H * 4, &err);
}
typedef struct {
  float *q, *k, *v, *w, *b, *hg, *hl, *out, *o, *dout, *dq, *dk, *dv, *dw, *db, *dhg, *dhl;
} mix_bufs;
static const mix_shape sb_ms = {SB_N, SB_H, SB_G, SB_d};
static int mx_f(void *a) {
  mix_bufs *b = a;
  return xd_cuda_mix_forward(ctx, b->out, b->o, b->q, b->k, b->v, b->w, b->b, b->hg, b->hl, &sb_ms, &err);
}
static int mx_b(void *a) {
  mix_bufs *b = a;
  return xd_cuda_mix_backward(ctx, b->dq, b->dk, b->dv, b->dw, b->db, b->dhg, b->dhl, b->dout, b->o, b->q, b->k, b->v,
                              b->w, b->hg, b->hl, &sb_ms, &err);
}
static int mx_r(void *a) {
  mix_bufs *b = a;
  const size_t nq = (size_t)SB_N * SB_H * SB_d * 4, nk = (size_t)SB_N * SB_G * SB_d * 4;
  return xd_cuda_memset(ctx, b->dq, 0, nq, &err) || xd_cuda_memset(ctx, b->dk, 0, nk, &err) ||
         xd_cuda_memset(ctx, b->dv, 0, nk, &err) || xd_cuda_memset(ctx, b->dw, 0, (size_t)SB_H * 3 * SB_d * 4, &err) ||
         xd_cuda_memset(ctx, b->db, 0, SB_H * 4, &err) || xd_cuda_memset(ctx, b->dhg, 0, nq, &err) ||
         xd_cuda_memset(ctx, b->dhl, 0, nq, &err);
}
static void sb_report(const char *what, const double *f, const double *b, int nmodes) {
  fprintf(stderr, "    TIMING %s, ms a layer (x16 layers = a step), median of 7:\n", what);
  for (int m = 0; m < nmodes; m++)
    fprintf(stderr, "      %-34s fwd %.3f bwd %.3f (x16: %.1f + %.1f ms)%s\n", sb_mode[m], f[m], b[m], 16 * f[m], 16 * b[m],
            "");
  fprintf(stderr, "      default vs SIMT: %.1fx, vs unfused: %.2fx (fwd + bwd)\n", (f[0] + b[0]) / (f[1] + b[1]),
          (f[3] + b[3]) / (f[1] + b[1]));
  if (nmodes > 4)
    fprintf(stderr, "      default vs %s: fwd %.2fx, bwd %.2fx\n", sb_mode[4], f[4] / f[1], b[4] / b[1]);
}
static void test_student_ops_1b_shape(void) {
  xd_rng r;
  xd_rng_seed(&r, 77);
  const size_t nq = (size_t)SB_N * SB_H * SB_d, nk = (size_t)SB_N * SB_G * SB_d, nPq = (size_t)SB_H * SB_d * SB_P,
               nPk = (size_t)SB_G * SB_d * SB_P, nx = (size_t)SB_N * SB_D, nw = (size_t)SB_H * SB_D, ng = (size_t)SB_N * SB_H;
  double f[6], b3[6];
  { /* feature maps: q (32 heads) and k (8 heads), as a layer calls them */
    fm_bufs b = {dev_rand_f32(&r, nq, 0, 1), dev_rand_f32(&r, nk, 0, 1), dev_rand_f32(&r, nPq, 0, 0.4), dev_rand_f32(&r, nPk, 0, 0.4),
                 dev_poisoned(nq * 4), dev_poisoned(nk * 4), dev_rand_f32(&r, nq, 0, 1), dev_rand_f32(&r, nk, 0, 1),
                 dev_rand_f32(&r, nq, 0, 0.1), dev_rand_f32(&r, nk, 0, 0.1), dev_rand_f32(&r, nPq, 0, 0.1), dev_rand_f32(&r, nPk, 0, 0.1)};
    det_buf det[6] = {{nq, b.phq, NULL, NULL, TOL_F32}, {nk, b.phk, NULL, NULL, TOL_F32}, {nq, b.dxq, NULL, NULL, TOL_F32},
                      {nk, b.dxk, NULL, NULL, TOL_F32}, {nPq, b.dPq, NULL, NULL, TOL_RED}, {nPk, b.dPk, NULL, NULL, TOL_RED}};
    for (int mode = 0; mode < 6; mode++) {
      fm_paired = mode == 5;
      sb_time("feature maps", mode, &f[mode], &b3[mode], fm_f, fm_b, fm_r, &b, det, 6);
    }
    fm_paired = 0;
    sb_report("feature maps q (H 32) + k (G 8)", f, b3, 5);
    fprintf(stderr, "      %-34s fwd %.3f bwd %.3f: vs the two calls fwd %.2fx, bwd %.2fx\n", sb_mode[5], f[5], b3[5],
            f[1] / f[5], b3[1] / b3[5]);
    for (size_t i = 0; i < sizeof det / sizeof det[0]; i++) free(det[i].ref), free(det[i].first);
    float **p = (float **)&b;
    for (size_t i = 0; i < sizeof b / sizeof(float *); i++) xd_cuda_free(p[i]);
  }
  { /* gates */
    gate_bufs b = {dev_rand_f32(&r, nx, 0, 1), dev_rand_f32(&r, nw, 0, 6.0 / sqrt(SB_D)), dev_rand_f32(&r, nw, 0, 6.0 / sqrt(SB_D)),
                   dev_rand_f32(&r, SB_H, 0, 2), dev_rand_f32(&r, SB_H, 4, 1), dev_poisoned(ng * 4), dev_poisoned(ng * 4),
                   dev_rand_f32(&r, ng, 0, 1), dev_rand_f32(&r, ng, 0, 1), dev_rand_f32(&r, nx, 0, 0.1), dev_rand_f32(&r, nw, 0, 0.1),
                   dev_rand_f32(&r, nw, 0, 0.1), dev_rand_f32(&r, SB_H, 0, 0.1), dev_rand_f32(&r, SB_H, 0, 0.1)};
    det_buf det[7] = {{ng, b.ig, NULL, NULL, TOL_F32},  {ng, b.fg, NULL, NULL, TOL_F32},    {nx, b.dx, NULL, NULL, TOL_F32},
                      {nw, b.dwi, NULL, NULL, TOL_RED}, {nw, b.dwf, NULL, NULL, TOL_RED},   {SB_H, b.dbi, NULL, NULL, TOL_RED},
                      {SB_H, b.dbf, NULL, NULL, TOL_RED}};
    for (int mode = 0; mode < 4; mode++) sb_time("gates", mode, &f[mode], &b3[mode], ga_f, ga_b, ga_r, &b, det, 7);
    sb_report("gates (N 4096, D 2048, H 32)", f, b3, 4);
    for (size_t i = 0; i < sizeof det / sizeof det[0]; i++) free(det[i].ref), free(det[i].first);
    float **p = (float **)&b;
    for (size_t i = 0; i < sizeof b / sizeof(float *); i++) xd_cuda_free(p[i]);
  }
  { /* mix */
    const size_t nw3 = (size_t)SB_H * 3 * SB_d;
    mix_bufs b = {dev_rand_f32(&r, nq, 0, 1), dev_rand_f32(&r, nk, 0, 1), dev_rand_f32(&r, nk, 0, 1), dev_rand_f32(&r, nw3, 0, 0.3),
                  dev_rand_f32(&r, SB_H, -1, 1), dev_rand_f32(&r, nq, 0, 1), dev_rand_f32(&r, nq, 0, 1), dev_poisoned(nq * 4),
                  dev_poisoned(ng * 4), dev_rand_f32(&r, nq, 0, 1), dev_rand_f32(&r, nq, 0, 0.1), dev_rand_f32(&r, nk, 0, 0.1),
                  dev_rand_f32(&r, nk, 0, 0.1), dev_rand_f32(&r, nw3, 0, 0.1), dev_rand_f32(&r, SB_H, 0, 0.1), dev_rand_f32(&r, nq, 0, 0.1),
                  dev_rand_f32(&r, nq, 0, 0.1)};
    det_buf det[9] = {{nq, b.out, NULL, NULL, TOL_F32},  {ng, b.o, NULL, NULL, TOL_F32},   {nq, b.dq, NULL, NULL, TOL_F32},
                      {nk, b.dk, NULL, NULL, TOL_F32},   {nk, b.dv, NULL, NULL, TOL_F32},  {nw3, b.dw, NULL, NULL, TOL_RED},
                      {SB_H, b.db, NULL, NULL, TOL_RED}, {nq, b.dhg, NULL, NULL, TOL_F32}, {nq, b.dhl, NULL, NULL, TOL_F32}};
    for (int mode = 0; mode < 4; mode++) sb_time("mix", mode, &f[mode], &b3[mode], mx_f, mx_b, mx_r, &b, det, 9);
    sb_report("mix (N 4096, H 32, G 8, d 64)", f, b3, 4);
    for (size_t i = 0; i < sizeof det / sizeof det[0]; i++) free(det[i].ref), free(det[i].first);
    float **p = (float **)&b;
    for (size_t i = 0; i < sizeof b / sizeof(float *); i++) xd_cuda_free(p[i]);
  }
}

int main(int argc, char **argv) {
  const int quick = gpu_test_begin(argc, argv);
  RUN(test_mlstm_backward);
  RUN(test_feature_map);
  RUN(test_gates);
  RUN(test_mix);
  /* "ops": the small cases and the 1B-shape timings of the feature maps, gates and mix only */
  const int ops_only = argc > 1 && strcmp(argv[1], "ops") == 0;
  if (!quick) RUN(test_student_ops_1b_shape);
  if (!quick && !ops_only) RUN(test_mlstm_1b_shape);
  if (!quick && !ops_only) { /* the small cases through the other GEMM paths as well */
    for (int mode = 0; mode <= 2; mode += 2) {
      sb_env(mode);
      fprintf(stderr, "== %s mode (XD_STUDENT_OPS_%s=1)\n", sb_mode[mode], mode ? "SIMT_RED" : "SIMT");
      RUN(test_feature_map);
      RUN(test_gates);
      RUN(test_mix);
    }
    sb_env(4);
    fprintf(stderr, "== %s mode\n", sb_mode[4]);
    RUN(test_feature_map);
    sb_env(1);
  }
  fprintf(stderr, "largest error / bound among passing checks: %.3f\n", worst);
  return gpu_test_end();
}
