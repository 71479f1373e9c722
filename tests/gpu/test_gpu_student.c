/* GPU test of the student's inference (src/model/student/student_cuda.c): tiny students made by
 * `init` from every fixture teacher family (llama GQA / MHA+bias / llama3 RoPE / dynamic NTK,
 * qwen2 (qkv bias), qwen3 (per-head QK-norm), olmo2 / olmo3 (post-norm, projection QK-norm,
 * olmo3's sliding layers)), hybrid parameters perturbed as tests/test_student.c does (so the
 * mixing gate, gates, feature maps and both branches all matter), W = 5 < T = 23, S = 2 sinks,
 * chunk 4 (23 is not a multiple of it), batch 2.
 *
 * Checks, per family:
 *   1. GPU forward logits vs the CPU xd_student_forward (fp32) -- relative L2 over [B,T,V];
 *   2. GPU prefill (6 tokens) + 17 decode steps: each step's logits vs the GPU full forward at
 *      that position and vs the CPU xd_student_step;
 *   3. the decode state's byte size: equal to its formula, and unchanged by prefill and steps.
 * Bound 2e-2 (relative L2 of logits): the GPU rounds every teacher matrix to bf16 (relative
 * 2^-9 = 2.0e-3 per weight) and the inputs of the prefill's GEMMs / attention to bf16; in a dot
 * product of n terms independent roundings add up like sqrt(n) while the result grows like
 * sqrt(n) too, so each projection's relative error stays ~2e-3, and two layers of ~6 chained
 * products plus the LM head compound to ~5e-3..1e-2 (the flash/SWA attention tests of
 * test_gpu_ops see 2e-3 per op). A real error (wrong key, wrong state, wrong norm) is O(1).
 * Also: decode with and without the CUDA graph must agree bit for bit (same kernels); the
 * legacy decode kernels (xd_student_cuda_state_use_legacy, one block per head, one warp per
 * GEMV row) and the default ones (one clustered per-head kernel, split-K GEMVs) agree to 1e-4
 * at every step (fp32 summation order; the default kernel's gate math is fp32), and so do the default step without PDL and with
 * the per-head kernel's other block size (XD_SDEC_* bits; the default comes from
 * XD_SDEC_VARIANT if set).
 *   4. batched decoding (xd_student_cuda_state_alloc_batch): three slots prefilled with prompts
 *      of 6, 1 and 13 tokens (the one-token prefill included), then 10 batched steps, each slot
 *      at its own position: every slot's logits vs the CPU decode of its sequence (bound 2e-2)
 *      and slot 0 vs the one-sequence GPU decode of the same sequence (bound 2e-2: the batched
 *      step's GEMMs round their inputs to bf16, the GEMVs do not); graph replay and plain
 *      launches bit for bit; each per-head kernel of the batched step (k_dec_group
 *      XD_SDEC_BGROUP, the clustered XD_SDEC_BCLUS) within 1e-2 of the default's (bf16
 *      rounding of their output: TOL_KERNELS); xd_student_cuda_argmax equal to the host's
 *      first argmax.
 * Exits 77 when no CUDA device is present; "quick" (memcheck) runs three families. */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "core/core.h"
#include "model/student/student.h"
#include "model/student/student_cuda.h"
#include "ops/cuda/cuda_ops.h"
#include "student_fixture.h"
#include "test.h"
#include "gpu_test_util.h"

static const double TOL = 2e-2;
static double worst_fwd, worst_dec_fwd, worst_dec_cpu, worst_legacy, worst_batch_cpu, worst_batch_one, worst_batch_kern;
static const double TOL_LEGACY = 1e-4;
/* The batched step's per-head kernels against each other: their fp32 outputs differ in the last
 * bits (summation order), and the o projection's GEMM reads them rounded to bf16, so the logits
 * are mostly bit-identical, but an element that lands on the other side of a bf16 rounding
 * boundary moves by 2^-8 relative and the logits by up to ~5e-3 (measured 5.1e-3). A wrong key,
 * state slot or head is O(1e-1) and more. */
static const double TOL_KERNELS = 1e-2;
static const char *cur_family;


/* Check 4: slots k = 0, 1, 2 hold row rows[k] of ids [2, T] from its start, prefilled with
 * pre[k] tokens; gone: the one-sequence GPU decode of row 0 after a prefill of 6 (gone[t * V],
 * positions 5 .. T-1). */
static void check_batch(const char *family, const xd_student *s, xd_student_cuda *m, const int32_t *ids, int T,
                        const float *gone) {
  enum { NS = 3, STEPS = 10 };
  const int rows[NS] = {0, 1, 1}, pre[NS] = {6, 1, 13}, V = s->cfg.vocab;
  xd_err e = {{0}};
  /* CPU references: logits of every position of each slot's sequence */
  float *cpu = xd_malloc((size_t)NS * T * V * sizeof(float));
  for (int k = 0; k < NS; k++) {
    xd_student_state cst;
    xd_student_state_alloc(&cst, s);
    const int32_t *q = ids + (size_t)rows[k] * T;
    float *ck = cpu + (size_t)k * T * V;
    CHECKF(xd_student_step(s, &cst, q, pre[k], ck + (size_t)(pre[k] - 1) * V, &e) == 0, "%s", e.msg);
    for (int t = pre[k]; t < pre[k] + STEPS; t++) CHECK(xd_student_step(s, &cst, q + t, 1, ck + (size_t)t * V, &e) == 0);
    xd_student_state_free(&cst);
  }
  const size_t nlog = (size_t)NS * (STEPS + 1) * V;
  float *got[4];
  for (int q = 0; q < 4; q++) got[q] = xd_malloc(nlog * sizeof(float));
  float *row = xd_malloc((size_t)NS * V * sizeof(float));
  double wc = 0, wo = 0;
  int amx_ok = 1;
  xd_student_cuda_state *st = NULL;
  if (xd_student_cuda_state_alloc_batch(&st, m, NS, &e)) { CHECKF(0, "%s: batch state: %s", family, e.msg); goto out; }
  CHECKF(xd_student_cuda_state_batch(st) == NS, "%s: batch %d", family, xd_student_cuda_state_batch(st));
  const int var0 = xd_student_cuda_state_variant(st);
  /* 0: CUDA graph, 1: plain launches (the default per-head kernel: the clustered one at these
   * few blocks), then each per-head kernel explicitly: 2 clustered, 3 group */
  const int pvar[4] = {var0, var0, var0 | XD_SDEC_BCLUS, var0 | XD_SDEC_BGROUP};
  for (int pass = 0; pass < 4; pass++) {
    xd_student_cuda_state_use_graph(st, pass != 1);
    xd_student_cuda_state_set_variant(st, pvar[pass]);
    if (xd_student_cuda_state_reset(st, &e)) { CHECKF(0, "%s", e.msg); break; }
    for (int k = 0; k < NS; k++) /* the prefill's logits: step 0 */
      if (xd_student_cuda_prefill(m, st, k, ids + (size_t)rows[k] * T, pre[k], got[pass] + (size_t)k * V, &e)) {
        CHECKF(0, "%s: prefill slot %d: %s", family, k, e.msg);
        goto out;
      }
    for (int j = 1; j <= STEPS; j++) {
      int32_t next[NS], tok[NS];
      if (xd_student_cuda_argmax(m, st, next, &e)) { CHECKF(0, "%s: argmax: %s", family, e.msg); goto out; }
      const float *prev = got[pass] + (size_t)(j - 1) * NS * V;
      for (int k = 0; k < NS; k++) {
        int32_t a = 0;
        for (int v = 1; v < V; v++)
          if (prev[(size_t)k * V + v] > prev[(size_t)k * V + a]) a = v;
        amx_ok &= a == next[k];
        tok[k] = ids[(size_t)rows[k] * T + pre[k] + j - 1]; /* teacher forcing: the sequence's own tokens */
      }
      if (xd_student_cuda_step_batch(m, st, tok, row, &e)) { CHECKF(0, "%s: batched step %d: %s", family, j, e.msg); goto out; }
      memcpy(got[pass] + (size_t)j * NS * V, row, (size_t)NS * V * sizeof(float));
      for (int k = 0; k < NS; k++)
        CHECKF(xd_student_cuda_state_pos_of(st, k) == pre[k] + j, "%s: slot %d at %lld", family, k,
               (long long)xd_student_cuda_state_pos_of(st, k));
    }
  }
  for (int j = 0; j <= STEPS; j++)
    for (int k = 0; k < NS; k++) {
      const int t = pre[k] - 1 + j; /* the position whose logits step j gives */
      const float *g = got[0] + ((size_t)j * NS + k) * V;
      wc = fmax(wc, rel_l2(g, cpu + ((size_t)k * T + t) * V, V));
      if (k == 0) wo = fmax(wo, rel_l2(g, gone + (size_t)t * V, V));
    }
  worst_batch_cpu = fmax(worst_batch_cpu, wc);
  worst_batch_one = fmax(worst_batch_one, wo);
  CHECKF(wc <= TOL, "%s: batched decode vs CPU decode rel L2 %.3e", family, wc);
  CHECKF(wo <= TOL, "%s: batched decode slot 0 vs one-sequence GPU decode rel L2 %.3e", family, wo);
  CHECKF(memcmp(got[0], got[1], nlog * sizeof(float)) == 0, "%s: batched graph and plain decode differ", family);
  /* the per-head kernels against the default: fp32 summation order */
  double wv[2] = {0, 0};
  const char *kname[2] = {"clustered", "group"};
  for (int q = 0; q < 2; q++) {
    int wi = 0;
    for (size_t i = 0; i < (size_t)NS * (STEPS + 1); i++) {
      const double x = rel_l2(got[2 + q] + i * V, got[0] + i * V, V);
      if (x > wv[q]) wv[q] = x, wi = (int)i;
    }
    if (wv[q] > 0) {
      const int j = wi / NS, k = wi % NS;
      const float *cref = cpu + ((size_t)k * T + pre[k] - 1 + j) * V;
      fprintf(stderr, "    %s: %s kernel vs the default worst at step %d slot %d: default vs CPU %.3e, %s vs CPU %.3e\n",
              family, kname[q], j, k, rel_l2(got[0] + (size_t)wi * V, cref, V), kname[q],
              rel_l2(got[2 + q] + (size_t)wi * V, cref, V));
    }
  }
  const double wp = fmax(wv[0], wv[1]);
  worst_batch_kern = fmax(worst_batch_kern, wp);
  for (int q = 0; q < 2; q++)
    CHECKF(wv[q] <= TOL_KERNELS, "%s: batched decode, %s kernel vs the default rel L2 %.3e", family, kname[q], wv[q]);
  CHECKF(amx_ok, "%s: xd_student_cuda_argmax differs from the host's first argmax", family);
  fprintf(stderr, "    %-16s batched decode (3 slots) vs CPU %.3e, slot 0 vs one-sequence decode %.3e, per-head kernels %.1e\n",
          family, wc, wo, wp);
out:
  xd_student_cuda_state_free(st);
  free(cpu), free(row);
  for (int q = 0; q < 4; q++) free(got[q]);
}

static void check_family(const char *family, int variant) {
  cur_family = family;
  char sdir[600];
  const int W = 5, S = 2, chunk = 4, B = 2, T = 23, prefill = 6;
  if (test_make_student(family, W, S, chunk, sdir, sizeof sdir) != 0) { CHECKF(0, "%s: fixture missing", family); return; }
  xd_err e = {{0}};
  xd_student s;
  CHECKF(xd_student_load(&s, sdir, XD_STUDENT_FROZEN, &e) == 0, "%s", e.msg);
  if (xd_t.case_failed) return;
  test_perturb_hybrid(&s, 11, 0.5f);
  if (variant) { /* the other normaliser and the gate soft cap (both read from s.hy by CPU and GPU) */
    s.hy.normalizer = XD_NORM_XLSTM;
    s.hy.gate_softcap = 15.0f;
  }
  const int V = s.cfg.vocab, N = B * T;
  xd_rng r;
  xd_rng_seed(&r, 5);
  int32_t ids[2 * 23];
  for (int i = 0; i < N; i++) ids[i] = (int32_t)(xd_rng_u64(&r) % (uint64_t)V);
  /* CPU references */
  xd_teacher_acts ta;
  xd_teacher_acts_alloc(&ta, &s.cfg, N, T);
  xd_core_acts ca;
  xd_core_acts_alloc(&ca, &s, B, T);
  float *cpu = xd_malloc((size_t)N * V * sizeof(float)), *gpu = xd_malloc((size_t)N * V * sizeof(float));
  float *cstep = xd_malloc((size_t)T * V * sizeof(float)), *gstep = xd_malloc((size_t)V * sizeof(float));
  float *gstep2 = xd_malloc((size_t)V * sizeof(float)), *gall = xd_malloc((size_t)T * V * sizeof(float));
  CHECKF(xd_student_forward(&s, &ta, &ca, ids, B, T, cpu, &e) == 0, "%s", e.msg);
  xd_student_state cst;
  xd_student_state_alloc(&cst, &s);
  CHECK(xd_student_step(&s, &cst, ids, prefill, cstep + (size_t)(prefill - 1) * V, &e) == 0);
  for (int t = prefill; t < T; t++) CHECK(xd_student_step(&s, &cst, ids + t, 1, cstep + (size_t)t * V, &e) == 0);
  /* GPU */
  xd_student_cuda *m = NULL;
  xd_student_cuda_state *st = NULL;
  if (xd_student_cuda_upload(&m, ctx, &s, &e)) { CHECKF(0, "%s: upload: %s", family, e.msg); goto out; }
  for (size_t i = 0; i < (size_t)N * V; i++) gpu[i] = NAN;
  if (xd_student_cuda_forward(m, ids, B, T, gpu, 0, &e)) { CHECKF(0, "%s: forward: %s", family, e.msg); goto out; }
  const double ef = rel_l2(gpu, cpu, (size_t)N * V);
  worst_fwd = fmax(worst_fwd, ef);
  CHECKF(ef <= TOL, "%s: GPU forward vs CPU rel L2 %.3e", family, ef);
  /* last-only logits equal the full forward's last rows */
  float *last = xd_malloc((size_t)B * V * sizeof(float));
  if (xd_student_cuda_forward(m, ids, B, T, last, 1, &e) == 0) {
    double el = 0;
    for (int b = 0; b < B; b++) el = fmax(el, rel_l2(last + (size_t)b * V, gpu + ((size_t)b * T + T - 1) * V, V));
    CHECKF(el <= 1e-6, "%s: last_only logits differ from the full forward's last rows: %.3e", family, el);
  } else {
    CHECKF(0, "%s: %s", family, e.msg);
  }
  free(last);
  if (xd_student_cuda_state_alloc(&st, m, &e)) { CHECKF(0, "%s: state: %s", family, e.msg); goto out; }
  const size_t bytes0 = xd_student_cuda_state_bytes(st);
  {
    const xd_model_config *c = &s.cfg;
    size_t expect = 0;
    for (int l = 0; l < c->n_layers; l++) {
      const int sl = xd_config_layer_window(c, l) > 0;
      const int Wl = sl && c->sliding_window < W ? c->sliding_window : W, Sl = sl ? 0 : S;
      expect += ((size_t)c->n_heads * s.hy.d_phi * c->head_dim + (size_t)c->n_heads * s.hy.d_phi + c->n_heads) * 4 +
                (size_t)(Wl + Sl) * c->n_kv_heads * c->head_dim * 2 * 2;
    }
    CHECKF(bytes0 == expect, "%s: state bytes %zu, expected %zu", family, bytes0, expect);
  }
  double wd_f = 0, wd_c = 0;
  double wl = 0;
  const int var0 = xd_student_cuda_state_variant(st);
  /* pass 0: CUDA graph, 1: plain launches, 2: legacy kernels (graph); 3: no variant bits (no
   * PDL), 4: the per-head kernel's other block size (XD_SDEC_T256 flipped); 3 and 4 in a graph,
   * each against pass 0 like legacy */
  for (int pass = 0; pass < 5; pass++) {
    xd_student_cuda_state_use_graph(st, pass != 1);
    xd_student_cuda_state_use_legacy(st, pass == 2);
    xd_student_cuda_state_set_variant(st, pass == 3 ? 0 : pass == 4 ? var0 ^ XD_SDEC_T256 : var0);
    if (pass && xd_student_cuda_state_reset(st, &e)) { CHECKF(0, "%s", e.msg); break; }
    for (int t = prefill - 1; t < T; t++) {
      const int rc = t == prefill - 1 ? xd_student_cuda_step(m, st, ids, prefill, gstep, &e)
                                      : xd_student_cuda_step(m, st, ids + t, 1, gstep, &e);
      if (rc) { CHECKF(0, "%s: step %d: %s", family, t, e.msg); break; }
      if (pass == 0) {
        const double a = rel_l2(gstep, gpu + (size_t)t * V, V), b = rel_l2(gstep, cstep + (size_t)t * V, V);
        wd_f = fmax(wd_f, a);
        wd_c = fmax(wd_c, b);
        /* keep the graph run's logits of the last step for the bitwise comparison */
        if (t == T - 1) memcpy(gstep2, gstep, (size_t)V * sizeof(float));
        memcpy(gall + (size_t)t * V, gstep, (size_t)V * sizeof(float));
      } else if (pass >= 2) {
        wl = fmax(wl, rel_l2(gstep, gall + (size_t)t * V, V));
      } else if (t == T - 1) {
        CHECKF(memcmp(gstep, gstep2, (size_t)V * sizeof(float)) == 0, "%s: graph and plain decode differ", family);
      }
    }
    CHECKF(xd_student_cuda_state_pos(st) == T, "%s: pos %lld", family, (long long)xd_student_cuda_state_pos(st));
    CHECKF(xd_student_cuda_state_bytes(st) == bytes0, "%s: state size changed", family);
  }
  xd_student_cuda_state_use_legacy(st, 0);
  xd_student_cuda_state_set_variant(st, var0);
  worst_legacy = fmax(worst_legacy, wl);
  CHECKF(wl <= TOL_LEGACY, "%s: split decode kernels vs legacy rel L2 %.3e", family, wl);
  const int dynamic = s.cfg.rope[0].kind == XD_ROPE_DYNAMIC || s.cfg.rope[1].kind == XD_ROPE_DYNAMIC;
  if (!dynamic) worst_dec_fwd = fmax(worst_dec_fwd, wd_f);
  worst_dec_cpu = fmax(worst_dec_cpu, wd_c);
  /* Dynamic NTK: the forward scales RoPE for the whole length T, the decode step for pos + 1
   * (HF semantics; the CPU's decode differs from its forward the same way), so decode is
   * compared with the CPU decode only. */
  CHECKF(dynamic || wd_f <= TOL, "%s: GPU decode vs GPU forward rel L2 %.3e", family, wd_f);
  CHECKF(wd_c <= TOL, "%s: GPU decode vs CPU decode rel L2 %.3e", family, wd_c);
  /* decoding from an empty state, token by token (no prefill), against the forward */
  if (xd_student_cuda_state_reset(st, &e) == 0) {
    double w0 = 0;
    for (int t = 0; t < T; t++) {
      if (xd_student_cuda_step(m, st, ids + t, 1, gstep, &e)) { CHECKF(0, "%s: %s", family, e.msg); break; }
      w0 = fmax(w0, rel_l2(gstep, gpu + (size_t)t * V, V));
    }
    CHECKF(dynamic || w0 <= TOL, "%s: token-by-token decode vs forward rel L2 %.3e", family, w0);
    wd_f = fmax(wd_f, w0);
  }
  check_batch(family, &s, m, ids, T, gall);
  fprintf(stderr, "    %-16s%s forward vs CPU %.3e | decode vs GPU forward %.3e, vs CPU decode %.3e | split vs legacy %.1e | state %zu B\n",
          family, variant ? " (max-norm, softcap)" : "", ef, wd_f, wd_c, wl, bytes0);
  if (xd_cuda_sync(ctx, &e)) CHECKF(0, "%s: async: %s", family, e.msg);
out:
  xd_student_cuda_state_free(st);
  xd_student_cuda_free(m);
  xd_student_state_free(&cst);
  xd_core_acts_free(&ca);
  xd_teacher_acts_free(&ta);
  free(cpu), free(gpu), free(cstep), free(gstep), free(gstep2), free(gall);
  xd_student_free(&s);
}

static void test_llama_gqa(void) { check_family("llama-gqa", 0); }
static void test_llama_mha_bias(void) { check_family("llama-mha-bias", 0); }
static void test_llama3_rope(void) { check_family("llama3-rope", 0); }
static void test_llama_dynamic(void) { check_family("llama-dynamic", 0); }
static void test_qwen2(void) { check_family("qwen2", 0); }
static void test_qwen3(void) { check_family("qwen3", 0); }
static void test_qwen3_maxnorm_softcap(void) { check_family("qwen3", 1); }
static void test_olmo2(void) { check_family("olmo2", 0); }
static void test_olmo3(void) { check_family("olmo3", 0); }

int main(int argc, char **argv) {
  const int quick = gpu_test_begin(argc, argv);
  RUN(test_llama_gqa);
  RUN(test_qwen3_maxnorm_softcap);
  RUN(test_olmo3);
  if (!quick) {
    RUN(test_llama_mha_bias);
    RUN(test_llama3_rope);
    RUN(test_llama_dynamic);
    RUN(test_qwen2);
    RUN(test_qwen3);
    RUN(test_olmo2);
  }
  fprintf(stderr, "worst rel L2 (bound %.0e): forward vs CPU %.3e, decode vs GPU forward %.3e, decode vs CPU %.3e; split vs legacy decode %.3e (bound %.0e)\n", TOL,
          worst_fwd, worst_dec_fwd, worst_dec_cpu, worst_legacy, TOL_LEGACY);
  fprintf(stderr, "worst rel L2 of batched decoding (bound %.0e): vs CPU %.3e, vs one-sequence decode %.3e; "
          "per-head kernels (group, clustered) %.3e apart (bound %.0e)\n", TOL, worst_batch_cpu, worst_batch_one,
          worst_batch_kern, TOL_KERNELS);
  return gpu_test_end();
}
