/* CPU teacher forward throughput against the machine's own sgemm bound, measured in the same run.
 *
 * Model: a ~100M-parameter random Llama (D 768, 12 layers, 12 heads / 4 KV heads, F 2048,
 * vocab 32000, tied embeddings), weights generated in memory. Batch B x T = 2 x 256 tokens.
 * Bound: time sgemm alone on exactly the forward's matrix products (q,k,v,o, gate, up,
 * down per layer, and the LM head) at the same shapes; the bound in tokens/s is N tokens over
 * that time. The report gives the achieved fraction ("ratio to the bound") and also the
 * usual 2 x params FLOPs-per-token figure against the measured sgemm GFLOP/s.
 * Usage: bench_forward [threads] [B] [T]   (env XD_BENCH_CLOCK=cpu: CPU clock for any thread count) */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "model/teacher/teacher.h"
#include "ops/cpu/matmul.h"
#include "ops/cpu/threads.h"


/* Wall clock, or with one thread the process CPU clock: on a shared machine (the 2-core CI
 * box runs 8 builds) CPU time of a single-threaded run is what the code costs, independent
 * of how often the scheduler lets it run. */
static double bench_now(int cpu) {
  if (!cpu) return xd_now();
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Time of all the forward's matrix products (q,k,v,o, gate, up, down per layer, LM head) at
 * batch N: best of 3 per shape. split: through matmul_forward (OpenMP column blocks). */
static double forward_sgemm_time(const xd_teacher *t, int N, const float *x, float *out, int split, int cpu) {
  const xd_model_config *c = &t->cfg;
  const int D = c->hidden, F = c->intermediate, Hd = c->n_heads * c->head_dim, Gd = c->n_kv_heads * c->head_dim;
  const xd_teacher_layer *L = &t->layers[0];
  const struct { int in, out, times; const float *w; } mm[] = {
    {D, Hd, 1, L->wq}, {D, Gd, 2, L->wk}, {Hd, D, 1, L->wo}, {D, F, 2, L->w_gate}, {F, D, 1, L->w_down}};
  double per_layer = 0;
  for (size_t i = 0; i < sizeof mm / sizeof mm[0]; i++) {
    double best = 1e30;
    for (int r = 0; r < 3; r++) {
      const double t0 = bench_now(cpu);
      if (split) matmul_forward(out, x, mm[i].w, NULL, N, mm[i].in, mm[i].out);
      else cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, mm[i].out, mm[i].in, 1.0f, x, mm[i].in, mm[i].w, mm[i].in, 0.0f, out, mm[i].out);
      const double dt = bench_now(cpu) - t0;
      best = dt < best ? dt : best;
    }
    per_layer += best * mm[i].times;
  }
  double head = 1e30;
  for (int r = 0; r < 2; r++) {
    const double t0 = bench_now(cpu);
    if (split) matmul_forward(out, x, t->lm_head, NULL, N, D, c->vocab);
    else cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, c->vocab, D, 1.0f, x, D, t->lm_head, D, 0.0f, out, c->vocab);
    const double dt = bench_now(cpu) - t0;
    head = dt < head ? dt : head;
  }
  return per_layer * c->n_layers + head;
}

int main(int argc, char **argv) {
  const int threads = argc > 1 ? atoi(argv[1]) : 0, B = argc > 2 ? atoi(argv[2]) : 2, T = argc > 3 ? atoi(argv[3]) : 256;
  xd_set_threads(threads);
  xd_model_config c;
  memset(&c, 0, sizeof c);
  snprintf(c.model_type, sizeof c.model_type, "llama");
  c.family = XD_FAMILY_LLAMA;
  c.hidden = 768; c.intermediate = 2048; c.n_layers = 12; c.n_heads = 12; c.n_kv_heads = 4; c.head_dim = 64;
  c.vocab = 32000; c.max_pos = 4096; c.rms_eps = 1e-5; c.tie_embeddings = 1;
  c.rope[0].kind = c.rope[1].kind = XD_ROPE_DEFAULT;
  c.rope[0].theta = c.rope[1].theta = 10000.0;
  c.rope[0].factor = c.rope[1].factor = 1.0;
  const int N = B * T, D = c.hidden, F = c.intermediate, Hd = c.n_heads * c.head_dim, Gd = c.n_kv_heads * c.head_dim;
  const size_t params = xd_config_param_count(&c);
  /* parameters that take part in matrix products per token: all layer matrices + LM head */
  const size_t mm_params = (size_t)c.n_layers * ((size_t)D * Hd * 2 + (size_t)D * Gd * 2 + 3 * (size_t)D * F) + (size_t)c.vocab * D;
  printf("model: llama D=%d L=%d H=%d G=%d F=%d V=%d, %.1fM parameters (%.1fM in matrix products)\n", D, c.n_layers,
         c.n_heads, c.n_kv_heads, F, c.vocab, params / 1e6, mm_params / 1e6);
  xd_teacher t;
  double t0 = xd_now();
  xd_teacher_init_random(&t, &c, 1234, 0.02f);
  printf("random init %.1f s\n", xd_now() - t0);

  /* ---- sgemm bound at the forward's shapes: OpenBLAS threading its own calls, and the ops'
   * policy (OpenMP threads x 1-thread BLAS blocks via matmul_forward); the faster is the bound */
  float *x = xd_aligned_alloc((size_t)N * F * sizeof(float)), *out = xd_aligned_alloc((size_t)N * c.vocab * sizeof(float));
  for (size_t i = 0; i < (size_t)N * F; i++) x[i] = 0.01f * (float)(i % 97);
  const int nthr = xd_blas_split_threads();
  /* XD_BENCH_CLOCK=cpu: process CPU time with several threads too (run with
   * OMP_WAIT_POLICY=passive so idle threads sleep instead of spinning) */
  const char *clk = getenv("XD_BENCH_CLOCK");
  const int cpu = nthr == 1 || (clk && !strcmp(clk, "cpu"));
  xd_teacher_acts a;
  xd_teacher_acts_alloc(&a, &c, N, T);
  int32_t *ids = xd_malloc((size_t)N * sizeof(int32_t));
  xd_rng r;
  xd_rng_seed(&r, 5);
  for (int i = 0; i < N; i++) ids[i] = (int32_t)(xd_rng_u64(&r) % (uint64_t)c.vocab);
  xd_err e = {0};
  XD_CHECK(xd_teacher_forward(&t, &a, ids, B, T, out, NULL, NULL, &e) == 0); /* warm-up */
  /* rounds interleave the bound and the forward so that load changes hit both; best of each */
  double t_bound_blas = 1e30, t_bound_split = 1e30, best = 1e30;
  for (int round = 0; round < 3; round++) {
    openblas_set_num_threads(nthr);
    double tb = forward_sgemm_time(&t, N, x, out, 0, cpu);
    openblas_set_num_threads(1);
    double ts = forward_sgemm_time(&t, N, x, out, 1, cpu);
    t0 = bench_now(cpu);
    XD_CHECK(xd_teacher_forward(&t, &a, ids, B, T, out, NULL, NULL, &e) == 0);
    const double dt = bench_now(cpu) - t0;
    printf("  round %d: sgemm OpenBLAS-threaded %.0f ms, split %.0f ms, forward %.0f ms\n", round, tb * 1e3, ts * 1e3, dt * 1e3);
    t_bound_blas = tb < t_bound_blas ? tb : t_bound_blas;
    t_bound_split = ts < t_bound_split ? ts : t_bound_split;
    best = dt < best ? dt : best;
  }
  const double t_bound = t_bound_blas < t_bound_split ? t_bound_blas : t_bound_split;
  printf("clock: %s; %d thread(s)\n", cpu ? "process CPU time" : "wall", nthr);
  printf("sgemm at the forward's shapes (N=%d): OpenBLAS-threaded %.0f ms (%.1f GFLOP/s), split %.0f ms (%.1f GFLOP/s)\n",
         N, t_bound_blas * 1e3, 2.0 * mm_params * N / t_bound_blas / 1e9, t_bound_split * 1e3,
         2.0 * mm_params * N / t_bound_split / 1e9);
  const double gflops_bound = 2.0 * mm_params * N / t_bound / 1e9;
  const double tok_s = N / best, bound_tok_s = N / t_bound;
  printf("teacher forward B=%d T=%d: %.0f ms, %.1f tokens/s; bound %.1f tokens/s (%.1f GFLOP/s / (2 x %.1fM FLOPs per token))\n",
         B, T, best * 1e3, tok_s, bound_tok_s, gflops_bound, mm_params / 1e6);
  printf("achieved %.1f GFLOP/s; ratio to the bound: %.3f (target >= 0.5)\n", tok_s * 2.0 * mm_params / 1e9,
         tok_s / bound_tok_s);
  free(ids);
  free(x);
  free(out);
  xd_teacher_acts_free(&a);
  xd_teacher_free(&t);
  return 0;
}
