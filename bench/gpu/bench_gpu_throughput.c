/* GPU benchmark: generation throughput (tokens/s summed over a batch of sequences) of the
 * teacher (KV cache) and of its student (constant-memory state) at the Llama-3.2-1B shape,
 * within one device-memory budget: SPEC section 7's "generation: up to ~4x teacher throughput
 * at long context" (issue #8).
 *
 *   bench_gpu_throughput [MAX_CONTEXT]   (default 65536: contexts 1K, 4K, 16K, 64K up to it)
 *
 * Budget: XD_BENCH_MEM_GIB (default 80, an H100's memory; capped by what the device has free),
 * for weights + decode state + activations of one model at a time. Batches 1, 4, 16, 32, 64,
 * 256, 1024; a batch whose memory plan exceeds the budget is reported and skipped.
 *  - teacher at context C: a state of B sequences whose KV cache holds C positions (zeroed, not
 *    prefilled: a step's cost depends on the cache length, not its contents), then greedy steps
 *    (argmax on the device, B ids downloaded, one token per sequence appended);
 *  - student: B slots each prefilled with 600 tokens (past W + S = 516, so every step attends
 *    over the full window and sinks; its cost is then the same at every position: bench_gpu_student
 *    measures 64K / 1K = 1.00 for one sequence), then greedy batched steps
 *    (xd_student_cuda_argmax + xd_student_cuda_step_batch): the default, then each per-head
 *    kernel of the batched step forced (XD_SDEC_BCLUS, XD_SDEC_BGROUP). Its rows hold for every
 *    context.
 * Per row: median step time of 20 steps after 3 warm ones (host clock, a sync per step, as
 * generation runs), tokens/s = B / step, memory plan. Last: per context, the best tokens/s of
 * each model within the budget and their ratio. Profiling: XD_BENCH_BATCH=B runs batch B only,
 * XD_BENCH_TEACHER=0 skips the teacher, XD_BENCH_PROFILE=1 prints the student step's device time
 * per kernel class (xd_student_cuda_state_profile). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/core.h"
#include "model/student/student_cuda.h"
#include "model/teacher/teacher_cuda.h"
#include "bench_shapes.h"
#include "bench_median.h"

static xd_err err;
#define CK(call) do { if ((call) != 0) { fprintf(stderr, "bench_gpu_throughput: error: %s\n", err.msg); exit(1); } } while (0)

enum { NB = 7, NC = 4, STEPS = 20, WARM = 3, SPRE = 600 };
static const int batches[NB] = {1, 4, 16, 32, 64, 256, 1024};
static const int contexts[NC] = {1024, 4096, 16384, 65536};


/* teacher tokens/s at B sequences over a cache of C positions; 0 when it does not fit */
static double teacher_row(xd_cuda_ctx *ctx, const xd_teacher_cuda *t, int B, int C, double budget) {
  const int V = t->cfg.vocab, cap = C + WARM + STEPS + 1;
  xd_teacher_cuda_plan p;
  xd_teacher_cuda_plan_of(t, B, 1, cap, B, 1, &p);
  const double mem = (double)(p.weights + p.kv + p.acts);
  if (mem > budget) {
    printf("teacher B=%-5d ctx=%-6d needs %.1f GiB (KV cache %.1f): over the budget\n", B, C, mem / 1073741824.0,
           p.kv / 1073741824.0);
    return 0;
  }
  xd_teacher_cuda_state s;
  CK(xd_teacher_cuda_state_alloc(&s, t, B, 1, cap, B, 1, &err));
  CK(xd_cuda_memset(ctx, s.kv_arena, 0, s.kv_bytes, &err));
  s.len = C; /* the cache as a prompt of C tokens would leave it (contents aside) */
  int32_t *ids = xd_malloc((size_t)B * 4);
  for (int b = 0; b < B; b++) ids[b] = (int32_t)((b * 7919u + 13u) % (unsigned)V);
  CK(xd_teacher_cuda_step(t, &s, ids, 1, 1, NULL, &err));
  double tv[STEPS];
  for (int i = 0; i < WARM + STEPS; i++) {
    const double t0 = xd_now();
    CK(xd_cuda_argmax_f32(ctx, s.next, s.logits, B, V, &err));
    CK(xd_cuda_download(ctx, ids, s.next, (size_t)B * 4, &err));
    CK(xd_teacher_cuda_step(t, &s, ids, 1, 1, NULL, &err));
    CK(xd_cuda_sync(ctx, &err));
    if (i >= WARM) tv[i - WARM] = xd_now() - t0;
  }
  const double tm = bench_median(tv, STEPS);
  printf("teacher B=%-5d ctx=%-6d %8.3f ms/step %9.0f tokens/s  memory %.1f GiB (KV cache %.1f)\n", B, C, tm * 1e3,
         B / tm, mem / 1073741824.0, p.kv / 1073741824.0);
  printf("RESULT teacher_gen_tokens_per_s=%.0f B=%d ctx=%d mem_gib=%.2f\n", B / tm, B, C, mem / 1073741824.0);
  fflush(stdout);
  free(ids);
  xd_teacher_cuda_state_free(&s);
  return B / tm;
}

/* student tokens/s at B slots; 0 when it does not fit */
/* pair: the batched step's per-head kernel, 0 the default (by batch size), 1 clustered, 2 group */
static double student_row(xd_cuda_ctx *ctx, xd_student_cuda *m, int B, int pair, double budget, size_t used0) {
  const int V = 128256;
  xd_student_cuda_state *st = NULL;
  if (xd_student_cuda_state_alloc_batch(&st, m, B, &err)) {
    printf("student B=%-5d does not fit: %s\n", B, err.msg);
    return 0;
  }
  const int var = xd_student_cuda_state_variant(st) & ~(XD_SDEC_BCLUS | XD_SDEC_BGROUP);
  xd_student_cuda_state_set_variant(st, var | (pair == 1 ? XD_SDEC_BCLUS : pair == 2 ? XD_SDEC_BGROUP : 0));
  const char *kn = B == 1 ? "" : pair == 1 ? " clustered" : pair == 2 ? " group" : " default";
  int32_t *pre = xd_malloc((size_t)SPRE * 4), *ids = xd_malloc((size_t)B * 4);
  for (int b = 0; b < B; b++) {
    for (int i = 0; i < SPRE; i++) pre[i] = (int32_t)(((unsigned)b * 104729u + (unsigned)i * 7919u + 3u) % (unsigned)V);
    CK(xd_student_cuda_prefill(m, st, b, pre, SPRE, NULL, &err));
  }
  /* device memory now held beyond what it was before the model: weights, state, scratch, prefill activations */
  const double mem = (double)(xd_cuda_mem_used() - used0);
  if (mem > budget) {
    printf("student B=%-5d needs %.1f GiB: over the budget\n", B, mem / 1073741824.0);
    free(pre), free(ids);
    xd_student_cuda_state_free(st);
    return 0;
  }
  double tv[STEPS];
  for (int i = 0; i < WARM + STEPS; i++) {
    const double t0 = xd_now();
    CK(xd_student_cuda_argmax(m, st, ids, &err));
    CK(xd_student_cuda_step_batch(m, st, ids, NULL, &err)); /* B 1: the one-sequence step */
    CK(xd_cuda_sync(ctx, &err));
    if (i >= WARM) tv[i - WARM] = xd_now() - t0;
  }
  const double tm = bench_median(tv, STEPS);
  if (getenv("XD_BENCH_PROFILE")) { /* per-class device time of one step (events between launches, no graph) */
    double us[XD_SDEC_NK], by[XD_SDEC_NK];
    CK(xd_student_cuda_state_profile(m, st, 5, us, by, &err));
    printf("  per class (us/step):");
    for (int k = 0; k < XD_SDEC_NK; k++)
      if (us[k] > 0) printf(" %s %.0f", xd_cuda_sdec_kname(k), us[k]);
    printf("\n");
  }
  printf("student%s B=%-5d any ctx  %8.3f ms/step %9.0f tokens/s  memory %.1f GiB (state %.2f GiB, %.1f MiB a sequence)\n",
         kn, B, tm * 1e3, B / tm, mem / 1073741824.0, xd_student_cuda_state_bytes(st) / 1073741824.0,
         xd_student_cuda_state_bytes(st) / 1048576.0 / B);
  printf("RESULT student_gen_tokens_per_s=%.0f B=%d per_head=%s mem_gib=%.2f\n", B / tm, B,
         B == 1 ? "single" : pair == 1 ? "clustered" : pair == 2 ? "group" : "default", mem / 1073741824.0);
  fflush(stdout);
  free(pre);
  free(ids);
  xd_student_cuda_state_free(st);
  return B / tm;
}

int main(int argc, char **argv) {
  const int max_ctx = argc > 1 ? atoi(argv[1]) : 65536;
  if (max_ctx < 1024 || max_ctx > (1 << 20)) {
    fprintf(stderr, "bench_gpu_throughput: error: MAX_CONTEXT must be in [1024, 1048576]\n");
    return 1;
  }
  const char *bg = getenv("XD_BENCH_MEM_GIB");
  double budget = (bg && *bg ? atof(bg) : 80.0) * 1073741824.0;
  xd_cuda_ctx *ctx;
  CK(xd_cuda_ctx_create(&ctx, 0, &err));
  char dev[256];
  int sms = 0;
  CK(xd_cuda_device_info(ctx, dev, sizeof dev, &sms, &err));
  size_t fr = 0, tot = 0;
  CK(xd_cuda_mem_info(ctx, &fr, &tot, &err));
  if (budget > (double)fr) budget = (double)fr;
  printf("device: %s (%d SMs), %.1f GiB free; budget %.1f GiB per model\n", dev, sms, fr / 1073741824.0,
         budget / 1073741824.0);
  const xd_model_config c = bench_llama32_1b();
  const xd_hybrid_config hy = bench_student_1b();
  const char *eb = getenv("XD_BENCH_BATCH"), *et = getenv("XD_BENCH_TEACHER");
  const int only_b = eb && *eb ? atoi(eb) : 0, with_teacher = !(et && et[0] == '0'); /* profiling runs */
  double best_s = 0, best_t[NC] = {0};
  int best_sb = 0, best_tb[NC] = {0};
  { /* the student first (its rows hold for every context), then the teacher */
    const size_t used0 = xd_cuda_mem_used();
    xd_student_cuda *m = NULL;
    CK(xd_student_cuda_random(&m, ctx, &c, &hy, 42, &err));
    printf("student: Llama-3.2-1B shape, W %d, S %d, d_phi %d; weights %.2f GiB\n", hy.window, hy.sinks, hy.d_phi,
           xd_student_cuda_weight_bytes(m) / 1073741824.0);
    for (int i = 0; i < NB; i++) /* B > 1: both per-head kernels of the batched step */
      for (int pair = 0; pair < (batches[i] > 1 ? 3 : 1) && (!only_b || only_b == batches[i]); pair++) {
        const double r = student_row(ctx, m, batches[i], pair, budget, used0);
        if (r > best_s) best_s = r, best_sb = batches[i];
      }
    xd_student_cuda_free(m);
  }
  if (with_teacher) {
    xd_teacher_cuda t;
    CK(xd_teacher_cuda_init_random(&t, ctx, &c, 100, &err));
    printf("teacher: Llama-3.2-1B shape, weights %.2f GiB\n", t.weight_bytes / 1073741824.0);
    for (int ci = 0; ci < NC && contexts[ci] <= max_ctx; ci++)
      for (int i = 0; i < NB; i++) {
        const double r = teacher_row(ctx, &t, batches[i], contexts[ci], budget);
        if (r > best_t[ci]) best_t[ci] = r, best_tb[ci] = batches[i];
        if (r == 0) break;
      }
    xd_teacher_cuda_free(&t);
  }
  printf("\nbest generation throughput within %.0f GiB (student the same at every context):\n", budget / 1073741824.0);
  for (int ci = 0; ci < NC && contexts[ci] <= max_ctx; ci++) {
    printf("ctx=%-6d teacher %9.0f tokens/s (B %d) | student %9.0f tokens/s (B %d) | student / teacher %.2fx\n",
           contexts[ci], best_t[ci], best_tb[ci], best_s, best_sb, best_t[ci] > 0 ? best_s / best_t[ci] : 0);
    printf("RESULT gen_throughput_ratio=%.3f ctx=%d teacher_tps=%.0f student_tps=%.0f\n",
           best_t[ci] > 0 ? best_s / best_t[ci] : 0, contexts[ci], best_t[ci], best_s);
  }
  xd_cuda_ctx_free(ctx);
  return 0;
}
