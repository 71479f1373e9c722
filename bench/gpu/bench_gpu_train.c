/* Stage II training step on one GPU at the Llama-3.2-1B shape (issue #8): tokens/s, MFU,
 * per-phase times and device memory, with random weights (the teacher is the student's own
 * teacher-shared weights, as after `xdistill init`) and Zipf-distributed random tokens.
 *
 * One step = the distill --device cuda step: teacher forward (bf16) + top-k 256, the student's
 * training forward, the fused KD loss (0.9 CE + 0.1 KL) and its gradient, the backward over all
 * 1.24B parameters, the gradient norm, clipping to 1.0 and AdamW (fp32 master weights and
 * moments on the device). The timed loop synchronises once per step (the loss download, as the
 * trainer does); a second pass with a synchronisation after each phase gives the breakdown.
 * The teacher runs on its own stream (distill/teacher_topk_cuda.h); two schedules are timed in
 * the same run: "serial" (each step submits its own batch's teacher and waits for it before the
 * student's forward; distill with XD_TEACHER_PREFETCH=0) and "ahead" (distill's default: the next
 * batch's teacher submitted after the loss, before the backward; the wait just before the KD
 * loss), which the "XD stage2_step" line reports.
 *
 * MFU = model FLOPs / (step time x 989.4 TFLOP/s, the H100 SXM's dense bf16 peak): student
 * 6 x (non-embedding matrices + LM head) per token for forward + backward, teacher 2 x the same
 * per token, plus the attention (local window W + S keys, both models' causal attention for
 * the teacher) and the mLSTM's chunkwise matmuls; norms, gates and elementwise work are not
 * counted (the usual convention).
 *
 * Usage: bench_gpu_train [T] [timed steps] [recompute]   (defaults 4096, 8; "quick": T 512, 2 steps,
 * 2 layers; "recompute": the stage II step with activation recomputation, stage I skipped)
 * XD_BENCH_B=B: B sequences per micro-batch (default 1).
 * XD_BENCH_ACCUM=A: also optimiser steps over A micro-batches (gradient accumulation), timed per
 * micro-batch (what a run with batch A follows: the optimiser amortised), with the teacher one
 * micro-batch ahead (distill's default) and serial, alternating in one process; the SM clock and
 * board power sampled meanwhile (bench_power.h, NVML) and the MFU at that clock.
 * XD_BENCH_AB=NAME=VALUE: the "ahead" schedule timed again with that environment variable set
 * (a kernel switch read at each call, e.g. XD_SWA_BWD=2 or XD_MLSTM_BW_OLD=1), printed beside
 * the default: an A/B of one op inside the whole step, same process and inputs.
 * XD_BENCH_CUPROF=1: a profiler capture range (xd_cuda_profiler_range) around the first timed
 * stage II step, then exit (for `ncu --profile-from-start off`: per-kernel times of one step
 * without the breakdown's synchronisations).
 * Lines starting "XD " are machine-readable (tools/gpu_test.sh greps them). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/core.h"
#include "distill/teacher_topk_cuda.h"
#include "model/student/student.h"
#include "model/student/student_cuda_train.h"
#include "model/teacher/teacher_cuda.h"
#include "ops/cuda/cuda_ops.h"
#include "train/optim.h"
#include "train/params_cuda.h"
#include "bench_power.h"
#include "bench_shapes.h"
#include "bench_median.h"

#define CK(x) do { if ((x) != 0) { fprintf(stderr, "bench_gpu_train: %s\n", err.msg); return 1; } } while (0)

static xd_err err;


/* fast deterministic fill (splitmix64 per element): 1.2e9 values in about a second */
static void fill(float *w, size_t n, uint64_t seed, double mean, double scale) {
#pragma omp parallel for schedule(static)
  for (long long i = 0; i < (long long)n; i++) {
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + (uint64_t)i;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const double u = (double)(z >> 11) / 9007199254740992.0; /* [0,1) */
    w[i] = (float)(mean + scale * (2.0 * u - 1.0) * 1.7320508);
  }
}

int main(int argc, char **argv) {
  const int quick = argc > 1 && strcmp(argv[1], "quick") == 0;
  const int T = quick ? 512 : argc > 1 ? atoi(argv[1]) : 4096;
  const int reps = quick ? 2 : argc > 2 ? atoi(argv[2]) : 8;
  const char *b_env = getenv("XD_BENCH_B"); /* sequences per micro-batch (default 1) */
  const int B = b_env && atoi(b_env) > 0 ? atoi(b_env) : 1, N = B * T, K = 256;
  const int recompute = argc > 3 && strcmp(argv[3], "recompute") == 0;
  /* XD_BENCH_AB=NAME=VALUE, split into ab_name / ab_value */
  char ab_name[64] = "", ab_value[64] = "";
  const char *ab_env = getenv("XD_BENCH_AB"), *ab_eq = ab_env ? strchr(ab_env, '=') : NULL;
  if (ab_eq && ab_eq > ab_env && (size_t)(ab_eq - ab_env) < sizeof ab_name && strlen(ab_eq + 1) < sizeof ab_value) {
    memcpy(ab_name, ab_env, (size_t)(ab_eq - ab_env));
    strcpy(ab_value, ab_eq + 1);
  } else if (ab_env && *ab_env) {
    fprintf(stderr, "bench_gpu_train: XD_BENCH_AB must be NAME=VALUE (got '%s')\n", ab_env);
    return 2;
  }
  const int ab_on = ab_name[0] != 0;
  xd_cuda_ctx *c = NULL;
  if (xd_cuda_ctx_create_prio(&c, 0, 1, &err)) { /* the student's stream first, as distill's */
    printf("skip: no usable CUDA device (%s)\n", err.msg);
    return 77;
  }
  char dev[256] = "?";
  int sms = 0;
  xd_cuda_device_info(c, dev, sizeof dev, &sms, &err);
  printf("device: %s, %d SMs\n", dev, sms);

  xd_model_config cfg = bench_llama32_1b();
  if (quick) cfg.n_layers = 2;
  const xd_hybrid_config hy = bench_student_1b();

  /* ---- the student on the host (table + fp32 arenas), random weights ---- */
  double t0 = xd_now();
  xd_student s;
  CK(xd_student_create(&s, &cfg, &hy, XD_STUDENT_TRAIN_ALL, &err));
  for (int i = 0; i < s.params.n; i++) {
    const xd_param_info *t = &s.params.t[i];
    float *w = xd_params_data(&s.params, i);
    const int is_norm = t->ndim == 1 && strstr(t->name, "norm");
    const double sc = t->ndim >= 2 ? 1.0 / sqrt((double)t->shape[t->ndim - 1]) : 0.02;
    fill(w, t->numel, 1000 + (uint64_t)i, is_norm ? 1.0 : 0.0, is_norm ? 0.0 : sc);
  }
  for (int l = 0; l < cfg.n_layers; l++)
    for (int h = 0; h < cfg.n_heads; h++) {
      s.hl[l].b_f[h] = 3.0f + 3.0f * h / (cfg.n_heads - 1);
      s.hl[l].b_o[h] = -2.0f;
    }
  size_t n_params = s.params.total - (size_t)cfg.vocab * cfg.hidden; /* tied: embedding counted once below */
  const double n_mat = (double)xd_config_param_count(&cfg); /* teacher-shape parameters (tied counted once) */
  printf("student: %d layers, hidden 2048, heads 32/8, head dim 64, MLP 8192, vocab 128256, tied; W %d, S %d, d_phi %d, "
         "chunk %d; %.3fB parameters (%.1f s to build on the host)\n", cfg.n_layers, hy.window, hy.sinks, hy.d_phi,
         hy.chunk, (n_params + (size_t)cfg.vocab * cfg.hidden) / 1e9, xd_now() - t0);

  /* ---- device: parameter mirror, training activations, teacher ---- */
  size_t fr0 = 0, tot = 0;
  CK(xd_cuda_mem_info(c, &fr0, &tot, &err));
  xd_params_cuda *pd = NULL;
  CK(xd_params_cuda_create(&pd, c, &s.params, &err));
  xd_student_cuda_train *m = NULL;
  const int head_rows = xd_stage2_head_rows(); /* distill's rule: rows of logits held at once */
  CK(xd_student_cuda_train_create(&m, c, &s, pd, B, T, recompute, head_rows, &err));
  xd_teacher_topk_cuda *tp = NULL;
  CK(xd_teacher_topk_cuda_create(&tp, &s.base, B, T, K, head_rows, &err));
  int32_t *d_targets;
  uint8_t *d_mask;
  float *d_ce, *d_kl;
  xd_cuda_kd_result *d_res;
  CK(xd_cuda_malloc((void **)&d_targets, (size_t)N * 4, &err));
  CK(xd_cuda_malloc((void **)&d_mask, (size_t)N, &err));
  CK(xd_cuda_malloc((void **)&d_ce, (size_t)N * 4, &err));
  CK(xd_cuda_malloc((void **)&d_kl, (size_t)N * 4, &err));
  CK(xd_cuda_malloc((void **)&d_res, sizeof *d_res, &err));
  size_t fr1 = 0;
  CK(xd_cuda_mem_info(c, &fr1, &tot, &err));
  printf("memory: parameters + gradients + AdamW moments + bf16 mirror %.2f GiB, student activations %.2f GiB%s "
         "(LM head in blocks of %d rows), op scratch %.2f GiB (after the first step), teacher weights + activations %.2f GiB; "
         "%.2f GiB in use of %.2f\n",
         xd_params_cuda_bytes(pd) / 1073741824.0,
         xd_student_cuda_train_bytes(&cfg, &hy, B, T, recompute, head_rows) / 1073741824.0, recompute ? " (recomputed)" : "",
         xd_student_cuda_train_head_rows(m), xd_student_cuda_train_scratch_bytes(&cfg, &hy, B, T) / 1073741824.0,
         xd_teacher_topk_cuda_bytes(tp) / 1073741824.0, (tot - fr1) / 1073741824.0, tot / 1073741824.0);

  /* ---- data: Zipf-like tokens (rank r drawn with weight 1/(r+1)); a fixed batch ---- */
  int32_t *tok = xd_malloc(((size_t)N + 1) * 4), *targets = xd_malloc((size_t)N * 4);
  uint8_t *mask = xd_malloc((size_t)N);
  xd_rng r;
  xd_rng_seed(&r, 7);
  const double hV = log((double)cfg.vocab);
  for (int i = 0; i <= N; i++) {
    const double u = xd_rng_uniform(&r);
    int v = (int)(exp(u * hV)) - 1;
    tok[i] = v < 0 ? 0 : v >= cfg.vocab ? cfg.vocab - 1 : v;
  }
  for (int i = 0; i < N; i++) { targets[i] = tok[i + 1]; mask[i] = 1; }
  CK(xd_cuda_upload(c, d_targets, targets, (size_t)N * 4, &err));
  CK(xd_cuda_upload(c, d_mask, mask, (size_t)N, &err));

  kd_config kd = kd_config_default(N, cfg.vocab);
  kd.k = K;
  xd_cuda_kd_args a;
  xd_student_cuda_train_kd_args(m, &kd, &a);
  a.targets = d_targets, a.mask = d_mask, a.row_ce = d_ce, a.row_kl = d_kl, a.res = d_res;
  const xd_adamw_cfg acfg = {0.9, 0.95, 1e-8, 0.1};
  uint64_t adam_t = 0;
  const double lr = 1e-4;

  /* phases: 0 teacher fwd + top-k, 1 zero_grad + student fwd, 2 loss (row blocks: with the LM head), 3 backward,
   * 4 norm + clip, 5 AdamW */
  static const char *const phase[6] = {"teacher forward + top-k", "zero_grad + student forward",
                                       "KD loss (+ LM head fwd / bwd in row blocks)", "student backward",
                                       "grad norm + clip", "AdamW + bf16 refresh"};
  /* teacher schedules: 0 "serial" (submit, wait, then the student: XD_TEACHER_PREFETCH=0) and
   * 1 "ahead" (distill's: the next batch's teacher submitted after the loss, before the backward,
   * and the wait just before the KD loss, so it may run beside the backward, AdamW and the next
   * forward). Session 6 also measured a start after the backward and a submission beside the
   * forward, and each stream first by priority: none was better (docs/perf.md). */
  static const char *const mode_name[2] = {"serial", "ahead"};
  double ph[6][16];
  static double steps_v[3][64]; /* [2]: "ahead" again with XD_BENCH_AB's variable set */
  double losses[64];
  const int warm = 2, n = reps < 64 ? reps : 64;
  const char *cuprof_env = getenv("XD_BENCH_CUPROF");
  const int cuprof = cuprof_env && *cuprof_env && strcmp(cuprof_env, "0") != 0;
  /* passes 0-1: the schedules, timed; 2: serial with a sync after each phase (breakdown);
   * 3 (XD_BENCH_AB=NAME=VALUE): "ahead" again with that variable set; XD_BENCH_CUPROF: "ahead" only,
   * its first timed step captured */
  static const int pass_order[4] = {0, 1, 3, 2}; /* the profile pass last: its per-op sums are printed below */
  for (int oi = 0; oi < 4; oi++) {
    const int pass = pass_order[oi];
    if (pass == 3 && (!ab_on || cuprof)) continue;
    if (cuprof && pass != 1) continue;
    if (pass == 3) setenv(ab_name, ab_value, 1);
    xd_student_cuda_train_graphs(m, -1); /* graphs re-captured with this pass's switches */
    const int profile = pass == 2, ahead = pass == 1 || pass == 3, iters = profile ? (n < 16 ? n : 16) : warm + n;
    int slot = 0, pending = 0; /* pending: this step's teacher already submitted into slot */
    xd_student_cuda_train_profile(m, profile);
    for (int it = 0; it < iters; it++) {
      if (cuprof && it == warm) CK(xd_cuda_profiler_range(c, 1, &err));
      double tp0 = xd_now(), ts0 = tp0;
#define PH(i, call) do { CK(call); if (profile) { CK(xd_cuda_sync(c, &err)); const double now = xd_now(); ph[i][it] = now - tp0; tp0 = now; } } while (0)
      if (!pending) CK(xd_teacher_topk_cuda_submit(tp, slot, tok, &err));
      if (!ahead) PH(0, xd_teacher_topk_cuda_wait(tp, slot, c, &err) || (profile && xd_teacher_topk_cuda_check(tp, slot, &err)));
      a.tk_ids = xd_teacher_topk_cuda_ids(tp, slot), a.tk_logp = xd_teacher_topk_cuda_logp(tp, slot);
      /* zero_grad before the loss: in row blocks the loss already writes the LM head's gradient */
      PH(1, xd_params_cuda_zero_grad(pd, &err) || xd_student_cuda_train_forward(m, tok, &err));
      if (ahead) CK(xd_teacher_topk_cuda_wait(tp, slot, c, &err));
      PH(2, xd_student_cuda_train_loss(m, &a, 1, &err));
      xd_cuda_kd_result res;
      CK(xd_cuda_download(c, &res, d_res, sizeof res, &err)); /* the trainer's one sync per micro-batch */
      CK(xd_teacher_topk_cuda_check(tp, slot, &err));
      if (profile) tp0 = xd_now();
      pending = ahead; /* the last step too: its time must include the overlap */
      slot ^= 1;
      if (pending) CK(xd_teacher_topk_cuda_submit(tp, slot, tok, &err)); /* the next step's teacher */
      PH(3, xd_student_cuda_train_backward(m, &err));
      double gn = 0;
      /* the clip factor as the trainer's hook applies it: deferred into the AdamW kernel */
      PH(4, xd_params_cuda_grad_norm(pd, &gn, &err) ||
                (xd_clip_factor(gn, 1.0) != 1.0 &&
                 xd_params_cuda_scale_grad_deferred(pd, (float)xd_clip_factor(gn, 1.0), &err)));
      PH(5, xd_params_cuda_adamw_step(pd, &acfg, lr, ++adam_t, &err));
      CK(xd_cuda_sync(c, &err));
      if (cuprof && it == warm) CK(xd_cuda_profiler_range(c, 0, &err));
#undef PH
      if (!profile && it >= warm) {
        steps_v[pass == 3 ? 2 : pass][it - warm] = xd_now() - ts0;
        losses[it - warm] = res.r.loss;
      }
      if (!profile) printf("%s%s%s%s step %d: loss %.5f (CE %.4f, KL %.4f), grad norm %.3f, %.1f ms\n", mode_name[ahead],
                           pass == 3 ? " with " : "", pass == 3 ? ab_name : "", pass == 3 ? "=..." : "", it + 1, res.r.loss, res.r.ce, res.r.kl, gn, (xd_now() - ts0) * 1e3);
    }
    CK(xd_cuda_sync(c, &err));
    if (pass == 3) {
      unsetenv(ab_name);
      xd_student_cuda_train_graphs(m, -1);
    }
  }
  if (cuprof) {
    printf("XD_BENCH_CUPROF: one pipelined stage II step captured (step %d), exiting\n", warm + 1);
    goto done;
  }
  { /* what the device holds now: the above plus the ops' pooled scratch (the peak a run needs) */
    size_t fr2 = 0;
    CK(xd_cuda_mem_info(c, &fr2, &tot, &err));
    printf("memory in use after the steps (pooled op scratch included): %.2f GiB of %.2f\n", (tot - fr2) / 1073741824.0,
           tot / 1073741824.0);
  }
  const double step = bench_median(steps_v[1], n), step_serial = bench_median(steps_v[0], n);
  const double tps = N / step;
  /* model FLOPs per token */
  const double D = cfg.hidden, d = cfg.head_dim, H = cfg.n_heads, L = cfg.n_layers, P = hy.d_phi, C = hy.chunk;
  const double mat = n_mat; /* per token forward multiply-adds of the matrices ~ parameters (LM head = tied embedding) */
  const double attn_local = 4.0 * (hy.window + hy.sinks) * d * H * L;            /* QK^T + PV, fwd, per token */
  const double mlstm = (4.0 * C * P + 4.0 * P * d) * H * L;                        /* chunk scores + state read/update */
  const double attn_teacher = 4.0 * (T / 2.0) * d * H * L;                          /* causal, average T/2 keys */
  (void)D;
  const double f_student = 3.0 * (2.0 * mat + attn_local + mlstm);                  /* fwd + bwd (2x fwd) */
  const double f_teacher = 2.0 * mat + attn_teacher;
  const double peak = 989.4e12;
  const double mfu = (f_student + f_teacher) * tps / peak, mfu_s = f_student * tps / peak;
  printf("stage II step, T %d, batch %d: %.1f ms median of %d -> %.0f tokens/s; model FLOPs %.2f GFLOP/token "
         "(student fwd+bwd %.2f, teacher fwd %.2f): %.1f TFLOP/s = MFU %.1f%% (student part alone %.1f%%)\n",
         T, B, step * 1e3, n, tps, (f_student + f_teacher) / 1e9, f_student / 1e9, f_teacher / 1e9,
         (f_student + f_teacher) * tps / 1e12, 100 * mfu, 100 * mfu_s);
  printf("  teacher ahead (reported) vs serial (XD_TEACHER_PREFETCH=0): %.1f vs %.1f ms, %.3fx\n", step * 1e3,
         step_serial * 1e3, step_serial / step);
  if (ab_on)
    printf("  A/B (ahead schedule, same process): default %.1f ms, %s=%s %.1f ms (%.3fx)\n", bench_median(steps_v[1], n) * 1e3,
           ab_name, ab_value, bench_median(steps_v[2], n) * 1e3, bench_median(steps_v[2], n) / bench_median(steps_v[1], n));
  printf("losses over the timed steps (the same batch, lr %.0e): %.4f -> %.4f\n", lr, losses[0], losses[n - 1]);
  printf("breakdown (synchronised after each phase, median ms):");
  const int np = n < 16 ? n : 16;
  double tot_ph = 0;
  for (int i = 0; i < 6; i++) {
    const double v = bench_median(ph[i], np);
    tot_ph += v;
    printf(" %s %.2f;", phase[i], v * 1e3);
  }
  printf(" sum %.1f\n", tot_ph * 1e3);
  xd_student_cuda_train_profile_print(m, stdout, np);
  xd_student_cuda_train_profile(m, 0);
  printf("XD stage2_step tokens_per_s=%.0f step_ms=%.2f mfu=%.4f mfu_student=%.4f T=%d recompute=%d device=\"%s\"\n", tps,
         step * 1e3, mfu, mfu_s, T, recompute, dev);

  /* Gradient accumulation (XD_BENCH_ACCUM=A): optimiser steps over A micro-batches, as a run with
   * batch A x micro_batch 1 does (the paper's batches are 64 sequences): zero_grad, A x (teacher
   * ahead, forward, loss, backward), scale 1/A, grad norm, clip, AdamW. One step of warm-up, two
   * timed; the time per micro-batch is what such a run's tokens/s follow (the optimiser amortised). */
  const char *acc_env = getenv("XD_BENCH_ACCUM");
  const int A = acc_env ? atoi(acc_env) : 0;
  if (A > 1 && !cuprof) {
    /* two schedules, alternating (ahead, serial, ahead, serial), each round one warm-up step
     * and one timed: "ahead" submits the next micro-batch's teacher after this one's loss
     * (distill's default), "serial" submits each teacher just before its own student forward
     * and makes the student's stream wait for it first (XD_TEACHER_PREFETCH=0): no overlap. The
     * warm-up step also absorbs the ahead round's first micro-batch, whose teacher has nothing
     * to run beside (a run pays that once, not every optimiser step). */
    double acc_t[2][4];
    int n_t[2] = {0, 0};
    bench_power pw;
    bench_power_start(&pw); /* clock and power through both schedules (no NVML: nothing) */
    for (int round = 0; round < 4; round++) {
      const int serial = round & 1;
      int slot = 0, pending = 0;
      for (int s2 = 0; s2 < 2; s2++) {
        const double ta = xd_now();
        CK(xd_params_cuda_zero_grad(pd, &err));
        for (int mb = 0; mb < A; mb++) {
          if (!pending) CK(xd_teacher_topk_cuda_submit(tp, slot, tok, &err));
          if (serial) CK(xd_teacher_topk_cuda_wait(tp, slot, c, &err));
          a.tk_ids = xd_teacher_topk_cuda_ids(tp, slot), a.tk_logp = xd_teacher_topk_cuda_logp(tp, slot);
          CK(xd_student_cuda_train_forward(m, tok, &err));
          if (!serial) CK(xd_teacher_topk_cuda_wait(tp, slot, c, &err));
          CK(xd_student_cuda_train_loss(m, &a, 1, &err));
          xd_cuda_kd_result res;
          CK(xd_cuda_download(c, &res, d_res, sizeof res, &err));
          CK(xd_teacher_topk_cuda_check(tp, slot, &err));
          slot ^= 1;
          if (!serial) CK(xd_teacher_topk_cuda_submit(tp, slot, tok, &err));
          pending = !serial;
          CK(xd_student_cuda_train_backward(m, &err));
        }
        double gn = 0;
        CK(xd_params_cuda_scale_grad_deferred(pd, 1.0f / (float)A, &err));
        CK(xd_params_cuda_grad_norm(pd, &gn, &err));
        if (xd_clip_factor(gn, 1.0) != 1.0) CK(xd_params_cuda_scale_grad_deferred(pd, (float)xd_clip_factor(gn, 1.0), &err));
        CK(xd_params_cuda_adamw_step(pd, &acfg, lr, ++adam_t, &err));
        CK(xd_cuda_sync(c, &err));
        if (s2 > 0) acc_t[serial][n_t[serial]++] = (xd_now() - ta) / A;
      }
      if (pending) CK(xd_teacher_topk_cuda_wait(tp, slot, c, &err) || xd_cuda_sync(c, &err)); /* drain */
    }
    const bench_power_stats ps = bench_power_stop(&pw);
    double tm = 0, tsr = 0;
    for (int i = 0; i < n_t[0]; i++) tm += acc_t[0][i] / n_t[0];
    for (int i = 0; i < n_t[1]; i++) tsr += acc_t[1][i] / n_t[1];
    printf("stage II with gradient accumulation over %d micro-batches (teacher ahead): %.1f ms per micro-batch of %d "
           "tokens (%d optimiser steps:", A, tm * 1e3, N, n_t[0]);
    for (int i = 0; i < n_t[0]; i++) printf(" %.1f", acc_t[0][i] * 1e3);
    printf(") -> %.0f tokens/s, MFU %.1f%%\n", N / tm, 100 * (f_student + f_teacher) * (N / tm) / peak);
    printf("  the same with the teacher serial (not beside the backward): %.1f ms (", tsr * 1e3);
    for (int i = 0; i < n_t[1]; i++) printf(" %.1f", acc_t[1][i] * 1e3);
    printf(") -> %.0f tokens/s, MFU %.1f%%; ahead / serial %.3f\n", N / tsr,
           100 * (f_student + f_teacher) * (N / tsr) / peak, tm / tsr);
    bench_power_print(stdout, "during the accumulation", &ps);
    /* the nominal peak (989.4 TFLOP/s) is 4096 dense bf16 FLOPs a clock a SM x 132 SMs x 1830 MHz:
     * the same at the clock the run actually had */
    if (ps.n > 0)
      printf("  MFU against the peak at that mean clock (%.0f MHz of the nominal 1830): %.1f%%\n", ps.clock_mhz,
             100 * (f_student + f_teacher) * (N / tm) / (peak * ps.clock_mhz / 1830.0));
    printf("XD stage2_accum A=%d ms_per_micro=%.2f tokens_per_s=%.0f serial_ms_per_micro=%.2f sm_clock_mhz=%.0f "
           "board_w=%.0f\n", A, tm * 1e3, N / tm, tsr * 1e3, ps.clock_mhz, ps.power_w);
  }

  /* ---- stage I: align step (teacher forward through the shared weights + per layer the hybrid
   * core forward, MSE and core backward) ---- */
  if (!recompute) {
    /* stage I alone on the device: the stage II model and its teacher go first, so that
     * nvidia-smi's peak over the run is stage II's, not the two models' together */
    xd_teacher_topk_cuda_free(tp);
    tp = NULL;
    xd_student_cuda_train_free(m);
    m = NULL;
    xd_student_cuda_train *ma = NULL;
    CK(xd_student_cuda_align_create(&ma, c, &s, pd, B, T, &err));
    double *ll = xd_calloc((size_t)cfg.n_layers, sizeof(double)), st1[64];
    xd_student_cuda_train_profile(ma, 1);
    CK(xd_student_cuda_align_step(ma, tok, 1, ll, &err));
    xd_student_cuda_train_profile_print(ma, stdout, 1);
    xd_student_cuda_train_profile(ma, 0);
    for (int it = 0; it < warm + n; it++) {
      const double tq = xd_now();
      CK(xd_student_cuda_align_step(ma, tok, 1, ll, &err));
      if (it >= warm) st1[it - warm] = xd_now() - tq;
    }
    const double step1 = bench_median(st1, n), tps1 = N / step1;
    const double f1 = 2.0 * (mat - (double)cfg.vocab * cfg.hidden) + attn_teacher + attn_local + 3.0 * mlstm;
    printf("stage I step, T %d, batch %d: %.1f ms median of %d -> %.0f tokens/s; model FLOPs %.2f GFLOP/token: MFU %.1f%%\n",
           T, B, step1 * 1e3, n, tps1, f1 / 1e9, 100 * f1 * tps1 / peak);
    printf("XD stage1_step tokens_per_s=%.0f step_ms=%.2f mfu=%.4f T=%d\n", tps1, step1 * 1e3, f1 * tps1 / peak, T);
    free(ll);
    xd_student_cuda_train_free(ma);
  }
done:
  xd_teacher_topk_cuda_free(tp);
  xd_student_cuda_train_free(m);
  xd_params_cuda_free(pd);
  void *dv[] = {d_targets, d_mask, d_ce, d_kl, d_res};
  for (size_t i = 0; i < sizeof dv / sizeof *dv; i++) xd_cuda_free(dv[i]);
  free(tok), free(targets), free(mask);
  xd_student_free(&s);
  xd_cuda_ctx_free(c);
  return 0;
}
