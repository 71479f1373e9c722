/* CPU teacher forward throughput against the machine's own sgemm bound, measured in the same run.
 *
 * Model: a ~100M-parameter random Llama (D 768, 12 layers, 12 heads / 4 KV heads, F 2048,
 * vocab 32000, tied embeddings), weights generated in memory. Batch B x T = 2 x 256 tokens.
 * Bound: time cblas_sgemm alone on exactly the forward's matrix products (q,k,v,o, gate, up,
 * down per layer, and the LM head) at the same shapes; the bound in tokens/s is N tokens over
 * that time. The report gives the achieved fraction ("ratio to the bound") and also the
 * usual 2 x params FLOPs-per-token figure against the measured sgemm GFLOP/s.
 * Usage: bench_forward [threads] [B] [T] */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "model/teacher/teacher.h"
#include "ops/cpu/threads.h"

static double time_sgemm(int N, int In, int Out, const float *x, const float *w, float *out, int reps) {
  double best = 1e30;
  for (int r = 0; r < reps; r++) {
    const double t0 = xd_now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, Out, In, 1.0f, x, In, w, In, 0.0f, out, Out);
    const double t = xd_now() - t0;
    if (t < best) best = t;
  }
  return best;
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

  /* ---- sgemm bound at the forward's shapes ---- */
  const int reps = 3;
  float *x = xd_aligned_alloc((size_t)N * F * sizeof(float)), *out = xd_aligned_alloc((size_t)N * c.vocab * sizeof(float));
  for (size_t i = 0; i < (size_t)N * F; i++) x[i] = 0.01f * (float)(i % 97);
  const xd_teacher_layer *L = &t.layers[0];
  double per_layer = time_sgemm(N, D, Hd, x, L->wq, out, reps) + 2 * time_sgemm(N, D, Gd, x, L->wk, out, reps) +
                     time_sgemm(N, Hd, D, x, L->wo, out, reps) + 2 * time_sgemm(N, D, F, x, L->w_gate, out, reps) +
                     time_sgemm(N, F, D, x, L->w_down, out, reps);
  double head = time_sgemm(N, D, c.vocab, x, t.lm_head, out, reps);
  const double t_bound = per_layer * c.n_layers + head;
  const double gflops_sgemm = 2.0 * mm_params * N / t_bound / 1e9;
  printf("sgemm at the forward's shapes (N=%d): %.2f ms per forward, %.1f GFLOP/s\n", N, t_bound * 1e3, gflops_sgemm);

  /* ---- teacher forward ---- */
  xd_teacher_acts a;
  xd_teacher_acts_alloc(&a, &c, N, T);
  int32_t *ids = xd_malloc((size_t)N * sizeof(int32_t));
  xd_rng r;
  xd_rng_seed(&r, 5);
  for (int i = 0; i < N; i++) ids[i] = (int32_t)(xd_rng_u64(&r) % (uint64_t)c.vocab);
  xd_err e = {0};
  XD_CHECK(xd_teacher_forward(&t, &a, ids, B, T, out, NULL, NULL, &e) == 0); /* warm-up */
  double best = 1e30;
  for (int i = 0; i < 3; i++) {
    t0 = xd_now();
    XD_CHECK(xd_teacher_forward(&t, &a, ids, B, T, out, NULL, NULL, &e) == 0);
    const double dt = xd_now() - t0;
    if (dt < best) best = dt;
  }
  const double tok_s = N / best, bound_tok_s = N / t_bound;
  printf("teacher forward B=%d T=%d: %.1f ms, %.0f tokens/s (bound %.0f tokens/s)\n", B, T, best * 1e3, tok_s, bound_tok_s);
  printf("achieved %.1f GFLOP/s at 2 x %.1fM FLOPs per token\n", tok_s * 2.0 * mm_params / 1e9, mm_params / 1e6);
  printf("ratio to the sgemm bound: %.3f (target >= 0.5)\n", tok_s / bound_tok_s);
  free(ids);
  free(x);
  free(out);
  xd_teacher_acts_free(&a);
  xd_teacher_free(&t);
  return 0;
}
