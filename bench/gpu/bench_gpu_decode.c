/* GPU benchmark: the teacher's prefill and KV-cache decoding (model/teacher/teacher_cuda) at the
 * Llama-3.2-1B shape, against the card's memory-bandwidth bound measured in the same run.
 *
 *   bench_gpu_decode [MAX_CONTEXT]     (default 65536: contexts 1K, 4K, 16K, 64K up to it)
 *
 * Shape: 16 layers, hidden 2048, 32 heads, 8 KV heads (head dim 64), MLP 8192, vocab 128256,
 * tied embeddings, llama3 RoPE, random bf16 weights (xd_teacher_cuda_init_random), batch 1.
 *  - ceiling: device-to-device copy bandwidth (read + write bytes / time, 2 GiB, median of 10);
 *  - prefill: tokens/s of one prefill of T tokens (logits of the last position only), T = 4K,
 *    16K, 64K (median of 3 after a warm run);
 *  - decode: per-token latency of greedy steps (upload the id, forward one token over the cache,
 *    argmax on the device, download it) at contexts 1K, 4K, 16K, 64K (median of 20 after 3 warm
 *    steps), the device memory in use (weights + KV cache + activations), and the bound
 *    bytes_read / copy_bandwidth with bytes_read = every weight (the tied embedding once, as the
 *    LM head) + the K and V cache of every layer up to the context; printed as the fraction
 *    bound / measured (1.0 = at the memory roofline).
 * Sections are functions printing rows of one format, so that a student section (constant-memory
 * decoding) can be added beside bench_teacher() and compared row by row. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/core.h"
#include "model/teacher/teacher_cuda.h"
#include "bench_shapes.h"
#include "bench_median.h"

static xd_err err;
#define CK(call) do { if ((call) != 0) { fprintf(stderr, "bench_gpu_decode: error: %s\n", err.msg); exit(1); } } while (0)


/* Device copy bandwidth in bytes/s (read + write). */
static double copy_bandwidth(xd_cuda_ctx *c) {
  const size_t bytes = (size_t)2 << 30;
  void *a = NULL, *b = NULL;
  CK(xd_cuda_malloc(&a, bytes, &err));
  CK(xd_cuda_malloc(&b, bytes, &err));
  CK(xd_cuda_memset(c, a, 0x3c, bytes, &err));
  double t[10];
  for (int i = 0; i < 12; i++) {
    const double t0 = xd_now();
    CK(xd_cuda_copy(c, b, a, bytes, &err));
    CK(xd_cuda_sync(c, &err));
    if (i >= 2) t[i - 2] = xd_now() - t0;
  }
  xd_cuda_free(a);
  xd_cuda_free(b);
  return 2.0 * bytes / bench_median(t, 10);
}

static void bench_teacher(xd_cuda_ctx *ctx, double bw, int max_ctx) {
  const xd_model_config c = bench_llama32_1b();
  xd_teacher_cuda t;
  CK(xd_teacher_cuda_init_random(&t, ctx, &c, 100, &err));
  printf("teacher: Llama-3.2-1B shape, %d layers, hidden %d, heads %d/%d (d %d), MLP %d, vocab %d, weights %.1f MiB bf16\n",
         c.n_layers, c.hidden, c.n_heads, c.n_kv_heads, c.head_dim, c.intermediate, c.vocab, t.weight_bytes / 1048576.0);
  const int contexts[] = {1024, 4096, 16384, 65536};
  xd_rng r;
  xd_rng_seed(&r, 7);
  for (size_t ci = 0; ci < sizeof contexts / sizeof contexts[0]; ci++) {
    const int T = contexts[ci];
    if (T > max_ctx) break;
    const int steps = 20, warm = 3, cap = T + warm + steps + 1;
    int32_t *ids = xd_malloc((size_t)T * 4);
    for (int i = 0; i < T; i++) ids[i] = (int32_t)(xd_rng_u64(&r) % c.vocab);
    xd_teacher_cuda_plan p;
    xd_teacher_cuda_plan_of(&t, 1, T, cap, 1, 1, &p);
    xd_teacher_cuda_plan_print(&t, &p, stdout);
    xd_teacher_cuda_state s;
    CK(xd_teacher_cuda_state_alloc(&s, &t, 1, T, cap, 1, 1, &err));
    /* prefill (timed at 4K and beyond); the last run leaves the cache filled for decoding */
    const int reps = T >= 4096 ? 3 : 0;
    double tp[3];
    for (int i = -1; i < reps; i++) {
      xd_teacher_cuda_reset(&s);
      const double t0 = xd_now();
      CK(xd_teacher_cuda_step(&t, &s, ids, T, 1, NULL, &err));
      CK(xd_cuda_sync(ctx, &err));
      if (i >= 0) tp[i] = xd_now() - t0;
    }
    if (reps) {
      const double tm = bench_median(tp, reps);
      printf("teacher prefill T=%d: %.1f ms = %.0f tokens/s\n", T, tm * 1e3, T / tm);
      printf("RESULT teacher_prefill_tokens_per_s=%.0f T=%d\n", T / tm, T);
    }
    /* greedy decode steps over the cache */
    double td[20];
    int32_t tok;
    for (int i = 0; i < warm + steps; i++) {
      const double t0 = xd_now();
      CK(xd_cuda_argmax_f32(ctx, s.next, s.logits, 1, c.vocab, &err));
      CK(xd_cuda_download(ctx, &tok, s.next, 4, &err));
      CK(xd_teacher_cuda_step(&t, &s, &tok, 1, 1, NULL, &err));
      CK(xd_cuda_sync(ctx, &err));
      if (i >= warm) td[i - warm] = xd_now() - t0;
    }
    const double tm = bench_median(td, steps);
    const int Tk = T + warm + steps / 2; /* mid-run context */
    const double kv_read = 2.0 * c.n_layers * (double)Tk * c.n_kv_heads * c.head_dim * 2;
    const double bytes = (double)t.weight_bytes + kv_read, bound = bytes / bw;
    size_t fr = 0, tot = 0;
    CK(xd_cuda_mem_info(ctx, &fr, &tot, &err));
    printf("teacher decode ctx=%d: %.3f ms/token (%.0f tokens/s), reads %.1f MiB/token (weights %.1f + KV %.1f), "
           "bound %.3f ms, fraction of bound %.2f, memory %.1f MiB (weights %.1f + KV %.1f + acts %.1f), device in use %.0f MiB\n",
           T, tm * 1e3, 1 / tm, bytes / 1048576.0, t.weight_bytes / 1048576.0, kv_read / 1048576.0, bound * 1e3,
           bound / tm, (p.weights + p.kv + p.acts) / 1048576.0, p.weights / 1048576.0, p.kv / 1048576.0,
           p.acts / 1048576.0, (tot - fr) / 1048576.0);
    printf("RESULT teacher_decode_ms_per_token=%.4f ctx=%d fraction_of_bw_bound=%.3f mem_mib=%.0f\n", tm * 1e3, T,
           bound / tm, (p.weights + p.kv + p.acts) / 1048576.0);
    fflush(stdout);
    xd_teacher_cuda_state_free(&s);
    free(ids);
  }
  xd_teacher_cuda_free(&t);
}

int main(int argc, char **argv) {
  int max_ctx = argc > 1 ? atoi(argv[1]) : 65536;
  if (max_ctx < 1024 || max_ctx > (1 << 20)) {
    fprintf(stderr, "bench_gpu_decode: error: MAX_CONTEXT must be in [1024, 1048576]\n");
    return 1;
  }
  xd_cuda_ctx *ctx;
  CK(xd_cuda_ctx_create(&ctx, 0, &err));
  char dev[256];
  int sms = 0;
  CK(xd_cuda_device_info(ctx, dev, sizeof dev, &sms, &err));
  printf("device: %s (%d SMs)\n", dev, sms);
  const double bw = copy_bandwidth(ctx);
  printf("ceiling: device copy %.0f GB/s (read + write, 2 GiB, median of 10)\n", bw / 1e9);
  bench_teacher(ctx, bw, max_ctx);
  /* bench_student(ctx, bw, max_ctx): the student's constant-memory decode, same rows (to come) */
  xd_cuda_ctx_free(ctx);
  return 0;
}
