/* GPU test of the tensor-core mLSTM chunkwise forward (xd_cuda_mlstm_chunkwise_forward_tc,
 * src/ops/cuda/mlstm_tc.cu; issue #8) against the CPU op mlstm_chunkwise_forward, on fresh
 * random inputs: softmax feature maps, gate pre-activations wide (|i~| up to ~20, f~ from
 * strongly negative to strongly positive: the stabiliser switches branches) and small (around
 * the SPEC init), T not a multiple of the chunk and shorter than one chunk, GQA and H == G,
 * both normalisers, random initial state, final aliasing init, the boundary buffer.
 *
 * Metric: ||gpu - cpu||_2 / ||cpu||_2, two references:
 *   - the CPU op on the original fp32 inputs, bound 2e-2: the kernel rounds q, k, v to bf16
 *     (relative error up to 2^-9 = 2e-3 per element, rms ~1.1e-3) and the scores S~ and w~ V
 *     to bf16 again; sums of 64..T such terms keep a relative error of the same order
 *     (~1e-3..3e-3), and 2e-2 leaves room for outputs whose sums cancel (mixed-sign v);
 *   - the CPU op on the SAME bf16-rounded q, k, v ("tight"), bound 5e-3 for h and C: what
 *     is left is the second rounding of S~ and w~ V (~1e-3 rms); n and m involve no MMA
 *     (fp32 sums of bf16-exact k with fp32 weights; m in double), bound 1e-4 / 1e-5.
 * Output buffers are poisoned with NaN bytes first (an unwritten element fails).
 *
 * Backward (xd_cuda_mlstm_chunkwise_backward_tc, issue #8): the GPU tensor-core forward fills the
 * boundary buffer, then the tensor-core backward (twice: the two results must be bitwise equal)
 * and the fp32 SIMT backward run on it; the CPU forward + backward run on the fp32 inputs and on
 * the bf16-rounded q, k, v. Random dh; cases: GQA 2:1 and 4:1, MQA, H == G, B = 2, T shorter
 * than a chunk, one past a chunk boundary, a multiple of the chunk, both normalisers, with and
 * without an initial state (the op has no initial-state gradient: the CPU op's neither), wide
 * gates (both branches of the stabiliser max) and small. Relative L2 per gradient dq, dk, dv,
 * di, df:
 *   - vs the CPU op on fp32 inputs: dq, dk, dv 2e-2, as the forward: the bf16 rounding of q, k,
 *     v (rms 1.1e-3 per element) plus the single-bf16 operands of the products (dS for dQ / dK,
 *     S~^T and dnum for dV: 2^-9 per element) in sums of 64..T terms; di, df 1e-2: double sums
 *     of products of fp32 factors, inheriting the relative error of those factors;
 *   - vs the CPU op on the same bf16-rounded inputs: dq, dk, dv 5e-3 (what is left is the
 *     single-bf16 operands above and the bf16 forward's boundary states); di, df 2e-3 (their
 *     factors carry no single-bf16 rounding: C, dC, S~ in num, dnum in dS~, g o dnum in U_c
 *     enter as hi + lo pairs, mlstm_backward.cu says why);
 *   - vs the SIMT GPU backward on the same boundary buffer: the fp32 bounds.
 * Measured on an H100 (docs/perf.md, 2026-11-28): vs fp32 <= 5.0e-3 (dq) / 2.5e-3 (df); vs the
 * rounded inputs <= 2.3e-3 (dv) / 4.2e-4 (di); with single bf16 dnum and S~ (the first version)
 * dq and dk were 8.8e-3 off the rounded-input reference in the wide-gate cases.
 * Every case also runs the kernels from before branch mlbw (xd_cuda_mlstm_chunkwise_backward_tc_ex
 * with old = 1: k_bw_scan, k_bwtc_state + k_bw_gqa_sum, k_bw_gates) and requires the same bits
 * from the current ones (k_bw_scan2, the fused k_bwtc_state_g, k_bw_gates2); at the 1B shape it
 * prints a RESULT mlstm_bw_small line with per-launch times (events) of both sets.
 * Unsupported shapes (P = 32, chunk 16) must give bitwise the plain entry point's result.
 * Without an argument the program also checks the Llama-3.2-1B student shape (B 1, H 32, G 8,
 * P = D = 64, chunk 64) at T = 4096 against the CPU, and times the new and the old
 * (xd_cuda_mlstm_chunkwise_forward, fp32 SIMT) kernels at T = 4096 and 65536, comparing
 * the two GPU results at 65536, and the backward at T = 4096 against the CPU and the SIMT GPU
 * backward, timing both GPU backwards in this process; "quick" skips that (used under
 * compute-sanitizer).
 * Exits 77 (skip) when no CUDA device is present. */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "core/core.h"
#include "ops/cpu/mlstm.h"
#include "ops/cuda/cuda_ops.h"
#include "test.h"
#include "gpu_test_util.h"

#define GPU(call) do { if ((call) != 0) { fprintf(stderr, "  FAIL %s:%d: %s\n", __FILE__, __LINE__, err.msg); xd_t.case_failed = 1; return; } } while (0)

static const double TOL_LOOSE = 2e-2, TOL_TIGHT = 5e-3, TOL_N = 1e-4, TOL_M = 1e-5;
/* backward: dq, dk, dv and the gate gradients di, df (see the header) */
static const double TOLB_LOOSE = 2e-2, TOLB_TIGHT = 5e-3, TOLG_LOOSE = 1e-2, TOLG_TIGHT = 2e-3;

static double worst;
#define REL(name, x, ref, n, tol) do { double _r = rel_l2((x), (ref), (n)); \
    fprintf(stderr, "    %-56s rel %.3e (bound %.0e)\n", name, _r, (double)(tol)); \
    if (_r / (tol) > worst) worst = _r / (tol); \
    CHECKF(_r <= (tol), "%s: rel err %.3e > %.1e", name, _r, (double)(tol)); } while (0)

static float *bf16_round(const float *x, size_t n) {
  float *y = xd_malloc(n * sizeof(float) + 1);
  for (size_t i = 0; i < n; i++) {
    uint32_t u;
    memcpy(&u, &x[i], 4);
    u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u; /* round to nearest even (finite inputs) */
    memcpy(&y[i], &u, 4);
  }
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

typedef struct {
  float *qf, *kf, *v, *ig, *fg, *C0, *n0, *m0;
} tc_inputs;
static tc_inputs make_inputs(const mlstm_cfg *c, xd_rng *r, int wide) {
  const size_t nq = (size_t)c->B * c->T * c->H * c->P, nk = (size_t)c->B * c->T * c->G * c->P;
  const size_t nv = (size_t)c->B * c->T * c->G * c->D, ng = (size_t)c->B * c->T * c->H, BH = (size_t)c->B * c->H;
  tc_inputs in;
  in.qf = rand_f32(r, nq, 0, 2.0), in.kf = rand_f32(r, nk, 0, 2.0), in.v = rand_f32(r, nv, 0, 1.0);
  softmax_rows(in.qf, nq / c->P, c->P), softmax_rows(in.kf, nk / c->P, c->P);
  if (wide) /* |i~| up to ~20, f~ from about -12 to +16: m switches branches often */
    in.ig = rand_f32(r, ng, -1.0, 6.0), in.fg = rand_f32(r, ng, 2.0, 5.0);
  else /* around the SPEC init (b_f in [3, 6]) */
    in.ig = rand_f32(r, ng, -1.0, 2.0), in.fg = rand_f32(r, ng, 3.0, 2.0);
  in.C0 = rand_f32(r, BH * c->P * c->D, 0, 0.3), in.n0 = rand_f32(r, BH * c->P, 1.0, 0.2), in.m0 = rand_f32(r, BH, 0, 1.0);
  for (size_t i = 0; i < BH * c->P; i++) in.n0[i] = fabsf(in.n0[i]);
  return in;
}
static void free_inputs(tc_inputs *in) {
  free(in->qf), free(in->kf), free(in->v), free(in->ig), free(in->fg), free(in->C0), free(in->n0), free(in->m0);
}

/* One accuracy case. alias: final state written over the initial one (prefill -> decode).
 * with_bound: also the boundary buffer (the _tc_bound entry point). */
static void tc_case(int B, int T, int H, int G, mlstm_norm norm, int with_init, int alias, int with_bound, int wide,
                    uint64_t seed) {
  const int P = 64, D = 64;
  xd_rng r;
  xd_rng_seed(&r, seed);
  mlstm_cfg cfg = mlstm_cfg_make(B, T, H, G, P, D);
  cfg.chunk = 64, cfg.norm = norm;
  const size_t nq = (size_t)B * T * H * P, nk = (size_t)B * T * G * P, nv = (size_t)B * T * G * D;
  const size_t ng = (size_t)B * T * H, nh = (size_t)B * T * H * D, BH = (size_t)B * H, PD = (size_t)P * D;
  const size_t nb = mlstm_boundary_size(&cfg);
  tc_inputs in = make_inputs(&cfg, &r, wide);
  float *qb = bf16_round(in.qf, nq), *kb = bf16_round(in.kf, nk), *vb = bf16_round(in.v, nv);
  mlstm_state init = {in.C0, in.n0, in.m0};
  /* CPU references: fp32 inputs, and the bf16-rounded inputs (with the boundary buffer). */
  float *href = xd_malloc(nh * 4), *hrb = xd_malloc(nh * 4), *bref = xd_malloc(nb * 4);
  float *C1 = xd_malloc(BH * PD * 4), *n1 = xd_malloc(BH * P * 4), *m1 = xd_malloc(BH * 4);
  float *C1b = xd_malloc(BH * PD * 4), *n1b = xd_malloc(BH * P * 4), *m1b = xd_malloc(BH * 4);
  mlstm_state fin = {C1, n1, m1}, finb = {C1b, n1b, m1b};
  mlstm_ws *ws = mlstm_ws_create(&cfg);
  mlstm_chunkwise_forward(&cfg, ws, in.qf, in.kf, in.v, in.ig, in.fg, with_init ? &init : NULL, &fin, NULL, href);
  mlstm_chunkwise_forward(&cfg, ws, qb, kb, vb, in.ig, in.fg, with_init ? &init : NULL, &finb, bref, hrb);
  mlstm_ws_free(ws);

  float *dq = up_raw(in.qf, nq * 4), *dk = up_raw(in.kf, nk * 4), *dv = up_raw(in.v, nv * 4);
  float *dig = up_raw(in.ig, ng * 4), *dfg = up_raw(in.fg, ng * 4), *dh = dev_poisoned(nh * 4);
  float *dC0 = up_raw(in.C0, BH * PD * 4), *dn0 = up_raw(in.n0, BH * P * 4), *dm0 = up_raw(in.m0, BH * 4);
  float *dC1 = dev_poisoned(BH * PD * 4), *dn1 = dev_poisoned(BH * P * 4), *dm1 = dev_poisoned(BH * 4);
  float *dbound = with_bound ? dev_poisoned(nb * 4) : NULL;
  mlstm_state dinit = {dC0, dn0, dm0}, dfin = {dC1, dn1, dm1};
  if (alias) dfin = dinit;
  GPU(xd_cuda_mlstm_chunkwise_forward_tc_bound(ctx, &cfg, dq, dk, dv, dig, dfg, with_init ? &dinit : NULL, &dfin,
                                               dbound, dh, &err));
  GPU(xd_cuda_sync(ctx, &err));
  float *hg = down(dh, nh), *Cg = down(dfin.C, BH * PD), *ngot = down(dfin.n, BH * P), *mg = down(dfin.m, BH);
  char name[160];
  snprintf(name, sizeof name, "tc h B%d T%d H%d G%d %s %s%s%s%s vs cpu fp32", B, T, H, G,
           norm == MLSTM_NORM_MAX ? "max" : "paper", wide ? "wide" : "small", with_init ? " init" : "",
           alias ? " alias" : "", with_bound ? " bound" : "");
  REL(name, hg, href, nh, TOL_LOOSE);
  REL("  h vs cpu on bf16-rounded q,k,v", hg, hrb, nh, TOL_TIGHT);
  REL("  final C vs cpu fp32", Cg, C1, BH * PD, TOL_LOOSE);
  REL("  final C vs cpu on bf16-rounded q,k,v", Cg, C1b, BH * PD, TOL_TIGHT);
  REL("  final n vs cpu on bf16-rounded q,k,v", ngot, n1b, BH * P, TOL_N);
  REL("  final m vs cpu", mg, m1b, BH, TOL_M);
  if (with_bound) {
    float *bg = down(dbound, nb);
    const size_t NCBH = BH * (size_t)mlstm_num_chunks(&cfg);
    REL("  bound C vs cpu on bf16-rounded q,k,v", bg, bref, NCBH * PD, TOL_TIGHT);
    REL("  bound n vs cpu on bf16-rounded q,k,v", bg + NCBH * PD, bref + NCBH * PD, NCBH * P, TOL_N);
    REL("  bound m vs cpu", bg + NCBH * (PD + P), bref + NCBH * (PD + P), NCBH, TOL_M);
    free(bg);
    xd_cuda_free(dbound);
  }
  xd_cuda_free(dq), xd_cuda_free(dk), xd_cuda_free(dv), xd_cuda_free(dig), xd_cuda_free(dfg), xd_cuda_free(dh);
  xd_cuda_free(dC0), xd_cuda_free(dn0), xd_cuda_free(dm0), xd_cuda_free(dC1), xd_cuda_free(dn1), xd_cuda_free(dm1);
  free(hg), free(Cg), free(ngot), free(mg), free(href), free(hrb), free(bref);
  free(C1), free(n1), free(m1), free(C1b), free(n1b), free(m1b), free(qb), free(kb), free(vb);
  free_inputs(&in);
}

static void test_mlstm_tc_accuracy(void) {
  tc_case(1, 200, 4, 2, MLSTM_NORM_PAPER, 1, 0, 1, 1, 901);  /* GQA, wide gates, init, bound */
  tc_case(2, 300, 8, 2, MLSTM_NORM_PAPER, 0, 0, 0, 0, 902);  /* GQA 4:1, small gates, zero state */
  tc_case(1, 97, 2, 2, MLSTM_NORM_MAX, 1, 1, 0, 1, 903);     /* H == G, max normaliser, final aliases init */
  tc_case(1, 40, 4, 1, MLSTM_NORM_PAPER, 1, 0, 1, 0, 904);   /* shorter than one chunk, MQA */
  tc_case(1, 513, 4, 4, MLSTM_NORM_MAX, 0, 0, 1, 1, 905);    /* one token past a chunk boundary */
}

static void test_mlstm_tc_refuses(void) {
  mlstm_cfg cfg = mlstm_cfg_make(1, 64, 2, 2, 32, 64);
  float *d = dev_poisoned(1 << 16);
  const int rc = xd_cuda_mlstm_chunkwise_forward_tc(ctx, &cfg, d, d, d, d, d, NULL, NULL, d, &err);
  fprintf(stderr, "    P=32: rc %d: %s\n", rc, rc ? err.msg : "(accepted)");
  CHECK(rc != 0);
  cfg = mlstm_cfg_make(1, 64, 2, 2, 64, 64);
  cfg.chunk = 32;
  const int rc2 = xd_cuda_mlstm_chunkwise_forward_tc(ctx, &cfg, d, d, d, d, d, NULL, NULL, d, &err);
  fprintf(stderr, "    chunk 32: rc %d: %s\n", rc2, rc2 ? err.msg : "(accepted)");
  CHECK(rc2 != 0);
  xd_cuda_free(d);
}

/* ---- backward (xd_cuda_mlstm_chunkwise_backward_tc) ------------------------------------------ */
static const char *const GRAD_NAMES[5] = {"dq", "dk", "dv", "di", "df"};

typedef struct {
  float *g[5];
  size_t n[5];
} grads;
static grads grads_host(const mlstm_cfg *c) {
  grads g;
  g.n[0] = (size_t)c->B * c->T * c->H * c->P, g.n[1] = (size_t)c->B * c->T * c->G * c->P;
  g.n[2] = (size_t)c->B * c->T * c->G * c->D, g.n[3] = g.n[4] = (size_t)c->B * c->T * c->H;
  for (int i = 0; i < 5; i++) g.g[i] = xd_calloc(g.n[i] + 1, sizeof(float));
  return g;
}
static grads grads_dev(const grads *h) { /* zeroed device copies */
  grads d = *h;
  for (int i = 0; i < 5; i++) {
    float *z = xd_calloc(h->n[i] + 1, sizeof(float));
    d.g[i] = up_raw(z, h->n[i] * 4);
    free(z);
  }
  return d;
}
static grads grads_down(const grads *d) {
  grads h = *d;
  for (int i = 0; i < 5; i++) h.g[i] = down(d->g[i], d->n[i]);
  return h;
}
static void grads_free(grads *g, int dev) {
  for (int i = 0; i < 5; i++) dev ? xd_cuda_free(g->g[i]) : free(g->g[i]);
}
static int bwd_gpu(int tc, const mlstm_cfg *c, const float *dq, const float *dk, const float *dv, const float *dig,
                   const float *dfg, const float *dbound, const float *ddh, grads *o) {
  return (tc ? xd_cuda_mlstm_chunkwise_backward_tc : xd_cuda_mlstm_chunkwise_backward)(
      ctx, c, dq, dk, dv, dig, dfg, dbound, ddh, o->g[0], o->g[1], o->g[2], o->g[3], o->g[4], &err);
}

/* The tensor-core backward with the kernels before branch mlbw (old = 1) or the current ones;
 * kms (or NULL): per-launch times (xd_cuda_mlstm_chunkwise_backward_tc_ex). */
static int bwd_tc_ex(int old, const mlstm_cfg *c, const float *dq, const float *dk, const float *dv, const float *dig,
                     const float *dfg, const float *dbound, const float *ddh, grads *o, float *kms) {
  return xd_cuda_mlstm_chunkwise_backward_tc_ex(ctx, c, dq, dk, dv, dig, dfg, dbound, ddh, o->g[0], o->g[1], o->g[2],
                                                o->g[3], o->g[4], old, kms, &err);
}
/* Bitwise comparison of two host gradient sets; prints the first differing element. */
static int grads_same(const grads *x, const grads *y, const char *what) {
  int same = 1;
  for (int i = 0; i < 5; i++)
    for (size_t k = 0; k < x->n[i]; k++)
      if (memcmp(&x->g[i][k], &y->g[i][k], 4) != 0) {
        fprintf(stderr, "    %s: %s[%zu] differs: %.9g vs %.9g\n", what, GRAD_NAMES[i], k, x->g[i][k], y->g[i][k]);
        same = 0;
        break;
      }
  return same;
}

/* One backward accuracy case: the GPU tensor-core forward fills the boundary buffer, the
 * tensor-core backward runs twice (bitwise compared) and the SIMT backward once on it; the CPU
 * forward + backward run on the fp32 inputs and on the bf16-rounded q, k, v. */
static void bw_case(int B, int T, int H, int G, mlstm_norm norm, int with_init, int wide, uint64_t seed) {
  const int P = 64, D = 64;
  xd_rng r;
  xd_rng_seed(&r, seed);
  mlstm_cfg cfg = mlstm_cfg_make(B, T, H, G, P, D);
  cfg.chunk = 64, cfg.norm = norm;
  const size_t nq = (size_t)B * T * H * P, nk = (size_t)B * T * G * P, nv = (size_t)B * T * G * D;
  const size_t ng = (size_t)B * T * H, nh = (size_t)B * T * H * D, BH = (size_t)B * H, PD = (size_t)P * D;
  const size_t nb = mlstm_boundary_size(&cfg);
  tc_inputs in = make_inputs(&cfg, &r, wide);
  float *dhh = rand_f32(&r, nh, 0, 1.0);
  float *qb = bf16_round(in.qf, nq), *kb = bf16_round(in.kf, nk), *vb = bf16_round(in.v, nv);
  mlstm_state init = {in.C0, in.n0, in.m0};
  const mlstm_state *ip = with_init ? &init : NULL;
  float *hc = xd_malloc(nh * 4), *bnd = xd_malloc(nb * 4);
  grads ref = grads_host(&cfg), refb = grads_host(&cfg);
  mlstm_ws *ws = mlstm_ws_create(&cfg);
  mlstm_chunkwise_forward(&cfg, ws, in.qf, in.kf, in.v, in.ig, in.fg, ip, NULL, bnd, hc);
  mlstm_chunkwise_backward(&cfg, ws, in.qf, in.kf, in.v, in.ig, in.fg, ip, bnd, dhh, ref.g[0], ref.g[1], ref.g[2],
                           ref.g[3], ref.g[4]);
  mlstm_chunkwise_forward(&cfg, ws, qb, kb, vb, in.ig, in.fg, ip, NULL, bnd, hc);
  mlstm_chunkwise_backward(&cfg, ws, qb, kb, vb, in.ig, in.fg, ip, bnd, dhh, refb.g[0], refb.g[1], refb.g[2],
                           refb.g[3], refb.g[4]);
  mlstm_ws_free(ws);

  float *dq = up_raw(in.qf, nq * 4), *dk = up_raw(in.kf, nk * 4), *dv = up_raw(in.v, nv * 4);
  float *dig = up_raw(in.ig, ng * 4), *dfg = up_raw(in.fg, ng * 4), *dhout = dev_poisoned(nh * 4);
  float *dC0 = up_raw(in.C0, BH * PD * 4), *dn0 = up_raw(in.n0, BH * P * 4), *dm0 = up_raw(in.m0, BH * 4);
  float *dbound = dev_poisoned(nb * 4), *ddh = up_raw(dhh, nh * 4);
  mlstm_state dinit = {dC0, dn0, dm0};
  grads t1 = grads_dev(&ref), t2 = grads_dev(&ref), so = grads_dev(&ref), tv1 = grads_dev(&ref);
  GPU(xd_cuda_mlstm_chunkwise_forward_tc_bound(ctx, &cfg, dq, dk, dv, dig, dfg, with_init ? &dinit : NULL, NULL,
                                               dbound, dhout, &err));
  GPU(bwd_gpu(1, &cfg, dq, dk, dv, dig, dfg, dbound, ddh, &t1));
  GPU(bwd_gpu(1, &cfg, dq, dk, dv, dig, dfg, dbound, ddh, &t2));
  GPU(bwd_gpu(0, &cfg, dq, dk, dv, dig, dfg, dbound, ddh, &so));
  GPU(bwd_tc_ex(1, &cfg, dq, dk, dv, dig, dfg, dbound, ddh, &tv1, NULL));
  GPU(xd_cuda_sync(ctx, &err));
  grads h1 = grads_down(&t1), h2 = grads_down(&t2), hs = grads_down(&so), hv1 = grads_down(&tv1);
  fprintf(stderr, "    tc backward B%d T%d H%d G%d %s %s%s:\n", B, T, H, G, norm == MLSTM_NORM_MAX ? "max" : "paper",
          wide ? "wide" : "small", with_init ? " init" : "");
  int same = 1;
  for (int i = 0; i < 5; i++) {
    char name[96];
    const int gate = i >= 3;
    snprintf(name, sizeof name, "  %s vs cpu fp32", GRAD_NAMES[i]);
    REL(name, h1.g[i], ref.g[i], ref.n[i], gate ? TOLG_LOOSE : TOLB_LOOSE);
    snprintf(name, sizeof name, "  %s vs cpu on bf16-rounded q,k,v", GRAD_NAMES[i]);
    REL(name, h1.g[i], refb.g[i], ref.n[i], gate ? TOLG_TIGHT : TOLB_TIGHT);
    snprintf(name, sizeof name, "  %s vs gpu fp32 SIMT backward", GRAD_NAMES[i]);
    REL(name, h1.g[i], hs.g[i], ref.n[i], gate ? TOLG_LOOSE : TOLB_LOOSE);
    if (memcmp(h1.g[i], h2.g[i], ref.n[i] * 4) != 0) same = 0;
  }
  fprintf(stderr, "    two tc runs bitwise identical: %s\n", same ? "yes" : "NO");
  CHECK(same);
  const int same_v1 = grads_same(&h1, &hv1, "new vs old kernels");
  fprintf(stderr, "    new scan / state+GQA / gate kernels bitwise equal to the old ones: %s\n", same_v1 ? "yes" : "NO");
  CHECK(same_v1);
  grads_free(&t1, 1), grads_free(&t2, 1), grads_free(&so, 1), grads_free(&tv1, 1);
  grads_free(&h1, 0), grads_free(&h2, 0), grads_free(&hs, 0), grads_free(&hv1, 0), grads_free(&ref, 0),
      grads_free(&refb, 0);
  xd_cuda_free(dq), xd_cuda_free(dk), xd_cuda_free(dv), xd_cuda_free(dig), xd_cuda_free(dfg), xd_cuda_free(dhout);
  xd_cuda_free(dC0), xd_cuda_free(dn0), xd_cuda_free(dm0), xd_cuda_free(dbound), xd_cuda_free(ddh);
  free(hc), free(bnd), free(dhh), free(qb), free(kb), free(vb);
  free_inputs(&in);
}

static void test_mlstm_tc_backward(void) {
  bw_case(1, 200, 4, 2, MLSTM_NORM_PAPER, 1, 1, 911); /* GQA 2:1, wide gates, initial state */
  bw_case(2, 300, 8, 2, MLSTM_NORM_PAPER, 0, 0, 912); /* GQA 4:1, B = 2, small gates, zero state */
  bw_case(1, 97, 2, 2, MLSTM_NORM_MAX, 1, 1, 913);    /* H == G, max normaliser */
  bw_case(1, 40, 4, 1, MLSTM_NORM_PAPER, 1, 0, 914);  /* MQA, shorter than one chunk */
  bw_case(1, 513, 4, 4, MLSTM_NORM_MAX, 0, 1, 915);   /* one token past a chunk boundary */
  bw_case(1, 256, 4, 1, MLSTM_NORM_MAX, 1, 0, 916);   /* MQA, max normaliser, T a multiple of the chunk */
  bw_case(1, 4200, 4, 2, MLSTM_NORM_PAPER, 0, 1, 917); /* 5 gate tiles (2 groups of k_bw_gates2), 66 chunks */
}

/* Unsupported shapes (P = 32; chunk 16) run the SIMT kernels: bitwise equal to the plain entry. */
static void test_mlstm_tc_backward_fallback(void) {
  for (int k = 0; k < 2; k++) {
    xd_rng r;
    xd_rng_seed(&r, 920 + k);
    mlstm_cfg cfg = mlstm_cfg_make(1, 100, 4, 2, k ? 64 : 32, 64);
    cfg.chunk = k ? 16 : 64;
    const size_t nq = (size_t)cfg.T * cfg.H * cfg.P, nk = (size_t)cfg.T * cfg.G * cfg.P, nv = (size_t)cfg.T * cfg.G * cfg.D;
    const size_t ng = (size_t)cfg.T * cfg.H, nh = (size_t)cfg.T * cfg.H * cfg.D, nb = mlstm_boundary_size(&cfg);
    tc_inputs in = make_inputs(&cfg, &r, 1);
    float *dhh = rand_f32(&r, nh, 0, 1.0), *hc = xd_malloc(nh * 4), *bnd = xd_malloc(nb * 4);
    mlstm_ws *ws = mlstm_ws_create(&cfg);
    mlstm_chunkwise_forward(&cfg, ws, in.qf, in.kf, in.v, in.ig, in.fg, NULL, NULL, bnd, hc);
    mlstm_ws_free(ws);
    grads hz = grads_host(&cfg);
    float *dq = up_raw(in.qf, nq * 4), *dk = up_raw(in.kf, nk * 4), *dv = up_raw(in.v, nv * 4);
    float *dig = up_raw(in.ig, ng * 4), *dfg = up_raw(in.fg, ng * 4), *dbound = up_raw(bnd, nb * 4), *ddh = up_raw(dhh, nh * 4);
    grads a = grads_dev(&hz), b = grads_dev(&hz);
    GPU(bwd_gpu(1, &cfg, dq, dk, dv, dig, dfg, dbound, ddh, &a));
    GPU(bwd_gpu(0, &cfg, dq, dk, dv, dig, dfg, dbound, ddh, &b));
    grads ha = grads_down(&a), hb = grads_down(&b);
    int same = 1;
    for (int i = 0; i < 5; i++) same &= memcmp(ha.g[i], hb.g[i], hz.n[i] * 4) == 0;
    fprintf(stderr, "    P=%d chunk %d: _tc falls back to SIMT, bitwise equal: %s\n", cfg.P, cfg.chunk, same ? "yes" : "NO");
    CHECK(same);
    grads_free(&a, 1), grads_free(&b, 1), grads_free(&ha, 0), grads_free(&hb, 0), grads_free(&hz, 0);
    xd_cuda_free(dq), xd_cuda_free(dk), xd_cuda_free(dv), xd_cuda_free(dig), xd_cuda_free(dfg), xd_cuda_free(dbound);
    xd_cuda_free(ddh);
    free(dhh), free(hc), free(bnd);
    free_inputs(&in);
  }
}

/* The 1B student shape: accuracy at T = 4096 against the CPU, then timing of both GPU kernels
 * at T = 4096 and 65536 (inputs of 65536 tokens tiled from the 4096-token ones). */
static double time_fwd(int tc, const mlstm_cfg *cfg, const float *dq, const float *dk, const float *dv,
                       const float *dig, const float *dfg, mlstm_state *fin, float *dh, int iters) {
  int rc = tc ? xd_cuda_mlstm_chunkwise_forward_tc(ctx, cfg, dq, dk, dv, dig, dfg, NULL, fin, dh, &err)
              : xd_cuda_mlstm_chunkwise_forward(ctx, cfg, dq, dk, dv, dig, dfg, NULL, fin, dh, &err);
  if (rc || xd_cuda_sync(ctx, &err)) return -1;
  const double t0 = xd_now();
  for (int i = 0; i < iters; i++) {
    rc = tc ? xd_cuda_mlstm_chunkwise_forward_tc(ctx, cfg, dq, dk, dv, dig, dfg, NULL, fin, dh, &err)
            : xd_cuda_mlstm_chunkwise_forward(ctx, cfg, dq, dk, dv, dig, dfg, NULL, fin, dh, &err);
    if (rc) return -1;
  }
  if (xd_cuda_sync(ctx, &err)) return -1;
  return (xd_now() - t0) / iters * 1e3;
}

static void test_mlstm_tc_1b(void) {
  const int B = 1, H = 32, G = 8, P = 64, D = 64, T4 = 4096, TB = 65536;
  xd_rng r;
  xd_rng_seed(&r, 907);
  mlstm_cfg c4 = mlstm_cfg_make(B, T4, H, G, P, D);
  tc_inputs in = make_inputs(&c4, &r, 0);
  const size_t nq = (size_t)T4 * H * P, nk = (size_t)T4 * G * P, ng = (size_t)T4 * H, nh = (size_t)T4 * H * D;
  float *href = xd_malloc(nh * 4);
  mlstm_ws *ws = mlstm_ws_create(&c4);
  mlstm_chunkwise_forward(&c4, ws, in.qf, in.kf, in.v, in.ig, in.fg, NULL, NULL, NULL, href);
  mlstm_ws_free(ws);
  /* Tile to 65536 tokens (B = 1: token-major rows, so a tile is a contiguous copy). */
  const int rep = TB / T4;
  float *q64 = xd_malloc(nq * rep * 4), *k64 = xd_malloc(nk * rep * 4), *v64 = xd_malloc(nk * rep * 4);
  float *i64 = xd_malloc(ng * rep * 4), *f64 = xd_malloc(ng * rep * 4);
  for (int t = 0; t < rep; t++) {
    memcpy(q64 + t * nq, in.qf, nq * 4), memcpy(k64 + t * nk, in.kf, nk * 4), memcpy(v64 + t * nk, in.v, nk * 4);
    memcpy(i64 + t * ng, in.ig, ng * 4), memcpy(f64 + t * ng, in.fg, ng * 4);
  }
  float *dq = up_raw(q64, nq * rep * 4), *dk = up_raw(k64, nk * rep * 4), *dv = up_raw(v64, nk * rep * 4);
  float *dig = up_raw(i64, ng * rep * 4), *dfg = up_raw(f64, ng * rep * 4);
  float *dh = dev_poisoned(nh * rep * 4), *dh_old = dev_poisoned(nh * rep * 4);
  float *dC = dev_poisoned((size_t)H * P * D * 4), *dn = dev_poisoned((size_t)H * P * 4), *dm = dev_poisoned(H * 4);
  mlstm_state fin = {dC, dn, dm};
  /* accuracy at 4096 */
  GPU(xd_cuda_mlstm_chunkwise_forward_tc(ctx, &c4, dq, dk, dv, dig, dfg, NULL, &fin, dh, &err));
  GPU(xd_cuda_sync(ctx, &err));
  float *hg = down(dh, nh);
  REL("tc h 1B shape T4096 vs cpu fp32", hg, href, nh, TOL_LOOSE);
  free(hg);
  /* timing */
  for (int k = 0; k < 2; k++) {
    mlstm_cfg c = mlstm_cfg_make(B, k ? TB : T4, H, G, P, D);
    const double t_old = time_fwd(0, &c, dq, dk, dv, dig, dfg, &fin, dh_old, k ? 3 : 10);
    const double t_new = time_fwd(1, &c, dq, dk, dv, dig, dfg, &fin, dh, k ? 10 : 20);
    CHECKF(t_old > 0 && t_new > 0, "timing failed: %s", err.msg);
    const double flop = 2.0 * H * (double)c.T * 64 * (64 + 64 + 64 + 64) ; /* per token: Q K^T, S~ V (counted dense), Q C, K^T V */
    printf("TIMING mlstm chunkwise fwd 1B shape (B1 H32 G8 P64 D64 L64) T=%d: old fp32 SIMT %.3f ms, tensor-core %.3f ms, "
           "speed-up %.1fx (tc %.1f TFLOP/s dense-equivalent)\n",
           c.T, t_old, t_new, t_old / t_new, flop / (t_new * 1e-3) / 1e12);
    fflush(stdout);
    if (k) {
      float *a = down(dh, nh * rep), *b = down(dh_old, nh * rep);
      REL("tc h vs old fp32 GPU kernel, T65536", a, b, nh * rep, TOL_LOOSE);
      free(a), free(b);
    }
  }
  xd_cuda_free(dq), xd_cuda_free(dk), xd_cuda_free(dv), xd_cuda_free(dig), xd_cuda_free(dfg), xd_cuda_free(dh);
  xd_cuda_free(dh_old), xd_cuda_free(dC), xd_cuda_free(dn), xd_cuda_free(dm);
  free(q64), free(k64), free(v64), free(i64), free(f64), free(href);
  free_inputs(&in);
}

/* The backward at the 1B student shape, T = 4096: tensor-core vs CPU fp32 and vs the SIMT GPU
 * backward (both on the boundary buffer of the GPU tensor-core forward), then the timing of both
 * GPU backwards in this process (one layer's mLSTM backward). */
static double time_bwd(int tc, const mlstm_cfg *c, const float *dq, const float *dk, const float *dv, const float *dig,
                       const float *dfg, const float *dbound, const float *ddh, grads *o, int iters) {
  if (bwd_gpu(tc, c, dq, dk, dv, dig, dfg, dbound, ddh, o) || xd_cuda_sync(ctx, &err)) return -1;
  const double t0 = xd_now();
  for (int i = 0; i < iters; i++)
    if (bwd_gpu(tc, c, dq, dk, dv, dig, dfg, dbound, ddh, o)) return -1;
  if (xd_cuda_sync(ctx, &err)) return -1;
  return (xd_now() - t0) / iters * 1e3;
}

static void test_mlstm_tc_1b_backward(void) {
  const int B = 1, H = 32, G = 8, P = 64, D = 64, T = 4096;
  xd_rng r;
  xd_rng_seed(&r, 908);
  mlstm_cfg cfg = mlstm_cfg_make(B, T, H, G, P, D);
  tc_inputs in = make_inputs(&cfg, &r, 0);
  const size_t nq = (size_t)T * H * P, nk = (size_t)T * G * P, ng = (size_t)T * H, nh = (size_t)T * H * D;
  const size_t nb = mlstm_boundary_size(&cfg);
  float *dhh = rand_f32(&r, nh, 0, 1.0), *hc = xd_malloc(nh * 4), *bnd = xd_malloc(nb * 4);
  grads ref = grads_host(&cfg);
  mlstm_ws *ws = mlstm_ws_create(&cfg);
  mlstm_chunkwise_forward(&cfg, ws, in.qf, in.kf, in.v, in.ig, in.fg, NULL, NULL, bnd, hc);
  mlstm_chunkwise_backward(&cfg, ws, in.qf, in.kf, in.v, in.ig, in.fg, NULL, bnd, dhh, ref.g[0], ref.g[1], ref.g[2],
                           ref.g[3], ref.g[4]);
  mlstm_ws_free(ws);
  float *dq = up_raw(in.qf, nq * 4), *dk = up_raw(in.kf, nk * 4), *dv = up_raw(in.v, nk * 4);
  float *dig = up_raw(in.ig, ng * 4), *dfg = up_raw(in.fg, ng * 4), *dhout = dev_poisoned(nh * 4);
  float *dbound = dev_poisoned(nb * 4), *ddh = up_raw(dhh, nh * 4);
  grads t = grads_dev(&ref), so = grads_dev(&ref);
  GPU(xd_cuda_mlstm_chunkwise_forward_tc_bound(ctx, &cfg, dq, dk, dv, dig, dfg, NULL, NULL, dbound, dhout, &err));
  GPU(bwd_gpu(1, &cfg, dq, dk, dv, dig, dfg, dbound, ddh, &t));
  GPU(bwd_gpu(0, &cfg, dq, dk, dv, dig, dfg, dbound, ddh, &so));
  GPU(xd_cuda_sync(ctx, &err));
  grads ht = grads_down(&t), hs = grads_down(&so);
  for (int i = 0; i < 5; i++) {
    char name[96];
    snprintf(name, sizeof name, "tc backward 1B shape T4096 %s vs cpu fp32", GRAD_NAMES[i]);
    REL(name, ht.g[i], ref.g[i], ref.n[i], i >= 3 ? TOLG_LOOSE : TOLB_LOOSE);
    snprintf(name, sizeof name, "  %s vs gpu fp32 SIMT backward", GRAD_NAMES[i]);
    REL(name, ht.g[i], hs.g[i], ref.n[i], i >= 3 ? TOLG_LOOSE : TOLB_LOOSE);
  }
  /* the kernels before branch mlbw on the same inputs: the same bits */
  grads tv1 = grads_dev(&ref);
  GPU(bwd_tc_ex(1, &cfg, dq, dk, dv, dig, dfg, dbound, ddh, &tv1, NULL));
  GPU(xd_cuda_sync(ctx, &err));
  grads hv1 = grads_down(&tv1);
  const int same_v1 = grads_same(&ht, &hv1, "1B shape new vs old kernels");
  fprintf(stderr, "    1B shape: new scan / state+GQA / gate kernels bitwise equal to the old ones: %s\n",
          same_v1 ? "yes" : "NO");
  CHECK(same_v1);
  const double t_old = time_bwd(0, &cfg, dq, dk, dv, dig, dfg, dbound, ddh, &so, 5);
  const double t_new = time_bwd(1, &cfg, dq, dk, dv, dig, dfg, dbound, ddh, &t, 20);
  CHECKF(t_old > 0 && t_new > 0, "timing failed: %s", err.msg);
  printf("TIMING mlstm chunkwise bwd 1B shape (B1 H32 G8 P64 D64 L64) T=%d, one layer: old fp32 SIMT %.3f ms, "
         "tensor-core %.3f ms, speed-up %.2fx\n", T, t_old, t_new, t_old / t_new);
  /* Per-kernel times, new vs old (branch mlbw), alternating, median of 15 each; then whole calls. */
  enum { NR = 15 };
  float km[2][NR][5];
  for (int ri = 0; ri < NR; ri++)
    for (int old = 0; old < 2; old++)
      if (bwd_tc_ex(old, &cfg, dq, dk, dv, dig, dfg, dbound, ddh, old ? &tv1 : &t, km[old][ri])) {
        CHECKF(0, "per-kernel timing failed: %s", err.msg);
        return;
      }
  double med[2][5];
  for (int old = 0; old < 2; old++)
    for (int k = 0; k < 5; k++) {
      float v[NR];
      for (int ri = 0; ri < NR; ri++) v[ri] = km[old][ri][k];
      for (int i = 1; i < NR; i++) /* insertion sort */
        for (int j = i; j > 0 && v[j] < v[j - 1]; j--) { const float x = v[j]; v[j] = v[j - 1], v[j - 1] = x; }
      med[old][k] = v[NR / 2];
    }
  double tcall[2];
  for (int old = 0; old < 2; old++) {
    if (bwd_tc_ex(old, &cfg, dq, dk, dv, dig, dfg, dbound, ddh, &t, NULL) || xd_cuda_sync(ctx, &err)) {
      CHECKF(0, "timing failed: %s", err.msg);
      return;
    }
    const double t0 = xd_now();
    for (int i = 0; i < 20; i++)
      if (bwd_tc_ex(old, &cfg, dq, dk, dv, dig, dfg, dbound, ddh, &t, NULL)) {
        CHECKF(0, "timing failed: %s", err.msg);
        return;
      }
    if (xd_cuda_sync(ctx, &err)) return;
    tcall[old] = (xd_now() - t0) / 20 * 1e3;
  }
  const double small_new = med[0][1] + med[0][2] + med[0][3] + med[0][4];
  const double small_old = med[1][1] + med[1][2] + med[1][3] + med[1][4];
  printf("RESULT mlstm_bw_small T=%d (us, median of %d, events per launch) new: local %.1f scan %.1f state+gqa %.1f "
         "gqa %.1f gates %.1f | old: local %.1f scan %.1f state %.1f gqa %.1f gates %.1f | scan+gqa+gates new %.1f "
         "old %.1f, with state new %.1f old %.1f | whole call new %.3f ms old %.3f ms\n",
         T, NR, 1e3 * med[0][0], 1e3 * med[0][1], 1e3 * med[0][2], 1e3 * med[0][3], 1e3 * med[0][4], 1e3 * med[1][0],
         1e3 * med[1][1], 1e3 * med[1][2], 1e3 * med[1][3], 1e3 * med[1][4],
         1e3 * (med[0][1] + med[0][3] + med[0][4]), 1e3 * (med[1][1] + med[1][3] + med[1][4]), 1e3 * small_new,
         1e3 * small_old, tcall[0], tcall[1]);
  fflush(stdout);
  grads_free(&tv1, 1), grads_free(&hv1, 0);
  grads_free(&t, 1), grads_free(&so, 1), grads_free(&ht, 0), grads_free(&hs, 0), grads_free(&ref, 0);
  xd_cuda_free(dq), xd_cuda_free(dk), xd_cuda_free(dv), xd_cuda_free(dig), xd_cuda_free(dfg), xd_cuda_free(dhout);
  xd_cuda_free(dbound), xd_cuda_free(ddh);
  free(dhh), free(hc), free(bnd);
  free_inputs(&in);
}

int main(int argc, char **argv) {
  const int quick = gpu_test_begin(argc, argv);
  RUN(test_mlstm_tc_accuracy);
  RUN(test_mlstm_tc_refuses);
  RUN(test_mlstm_tc_backward);
  RUN(test_mlstm_tc_backward_fallback);
  if (!quick) RUN(test_mlstm_tc_1b);
  if (!quick) RUN(test_mlstm_tc_1b_backward);
  fprintf(stderr, "worst error / bound: %.3f\n", worst);
  return gpu_test_end();
}
