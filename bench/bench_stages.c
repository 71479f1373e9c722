/* CPU step throughput of stage I (align) and stage II (distill, online teacher) next to the
 * teacher's forward throughput measured in the same run: the ratios stage/forward are the
 * portable numbers (they carry over between machines far better than tokens/s).
 *
 * Model: a random Llama (D 256, 4 layers, 8 heads / 2 KV heads, head_dim 32, F 768, vocab 4096,
 * untied), written to a temporary directory as a HF checkpoint, then `xdistill init` logic
 * (xd_student_init) with W = 64, 4 sinks, chunk 64. One micro-batch of B x T tokens (default
 * 1 x 256); a "step" is the stage's step function (forward + backward of one micro-batch, the
 * teacher forward included in both stages) without the AdamW update, which is O(params) and
 * small next to it. Stage II's time is split into its teacher part (forward + top-k, what a
 * `teacher-cache` run saves) and the rest. Best of R repetitions for each measurement, interleaved so load changes hit
 * all three alike.
 * Usage: bench_stages [threads] [B] [T] [W] [R]   (threads 1: process CPU clock, else wall) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "data/shard.h"
#include "distill/stages.h"
#include "io/safetensors.h"
#include "model/student/student_init.h"
#include "ops/cpu/threads.h"

static double bench_now(int cpu) {
  if (!cpu) return xd_now();
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* One F32 tensor entry: [rows] when cols == 0, else [rows, cols]; the name is copied. */
static void add_entry(xd_st_entry *en, char (*names)[96], int *k, const char *name, const float *w, int rows, int cols) {
  snprintf(names[*k], sizeof names[*k], "%s", name);
  en[*k] = (xd_st_entry){names[*k], XD_DT_F32, cols ? 2 : 1, {rows, cols}, w};
  (*k)++;
}

/* The in-memory random teacher as a HF Llama checkpoint directory (config.json + safetensors). */
static void write_teacher(const xd_teacher *t, const char *dir) {
  const xd_model_config *c = &t->cfg;
  xd_err e = {{0}};
  XD_CHECK(xd_mkdir_p(dir, &e) == 0);
  char json[1024];
  const int n = snprintf(json, sizeof json,
                         "{\"model_type\": \"llama\", \"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": %d, "
                         "\"intermediate_size\": %d, \"num_hidden_layers\": %d, \"num_attention_heads\": %d, "
                         "\"num_key_value_heads\": %d, \"head_dim\": %d, \"vocab_size\": %d, \"max_position_embeddings\": %d, "
                         "\"rms_norm_eps\": 1e-5, \"rope_theta\": 10000.0, \"tie_word_embeddings\": false}\n",
                         c->hidden, c->intermediate, c->n_layers, c->n_heads, c->n_kv_heads, c->head_dim, c->vocab, c->max_pos);
  char *path = xd_path_join(dir, "config.json");
  XD_CHECK(xd_write_file_atomic(path, json, (size_t)n, &e) == 0);
  free(path);
  const int L = c->n_layers, D = c->hidden, F = c->intermediate, Hd = c->n_heads * c->head_dim, Gd = c->n_kv_heads * c->head_dim;
  const int ne = 3 + 9 * L;
  xd_st_entry *en = xd_calloc((size_t)ne, sizeof *en);
  char (*names)[96] = xd_calloc((size_t)ne, sizeof *names);
  int k = 0;
  add_entry(en, names, &k, "model.embed_tokens.weight", t->embed, c->vocab, D);
  add_entry(en, names, &k, "lm_head.weight", t->lm_head, c->vocab, D);
  add_entry(en, names, &k, "model.norm.weight", t->final_norm, D, 0);
  for (int l = 0; l < L; l++) {
    const xd_teacher_layer *y = &t->layers[l];
    const struct { const char *suffix; const float *w; int rows, cols; } ls[9] = {
      {"input_layernorm.weight", y->attn_norm, D, 0}, {"post_attention_layernorm.weight", y->mlp_norm, D, 0},
      {"self_attn.q_proj.weight", y->wq, Hd, D},      {"self_attn.k_proj.weight", y->wk, Gd, D},
      {"self_attn.v_proj.weight", y->wv, Gd, D},      {"self_attn.o_proj.weight", y->wo, D, Hd},
      {"mlp.gate_proj.weight", y->w_gate, F, D},      {"mlp.up_proj.weight", y->w_up, F, D},
      {"mlp.down_proj.weight", y->w_down, D, F}};
    for (int i = 0; i < 9; i++) {
      char nm[96];
      snprintf(nm, sizeof nm, "model.layers.%d.%s", l, ls[i].suffix);
      add_entry(en, names, &k, nm, ls[i].w, ls[i].rows, ls[i].cols);
    }
  }
  path = xd_path_join(dir, "model.safetensors");
  XD_CHECK(xd_st_write(path, en, k, NULL, NULL, 0, &e) == 0);
  free(path);
  free(en);
  free(names);
}

int main(int argc, char **argv) {
  const int threads = argc > 1 ? atoi(argv[1]) : 1, B = argc > 2 ? atoi(argv[2]) : 1, T = argc > 3 ? atoi(argv[3]) : 256,
            W = argc > 4 ? atoi(argv[4]) : 64, R = argc > 5 ? atoi(argv[5]) : 3;
  xd_set_threads(threads);
  const int cpu = xd_blas_split_threads() == 1;
  xd_model_config c;
  memset(&c, 0, sizeof c);
  snprintf(c.model_type, sizeof c.model_type, "llama");
  c.family = XD_FAMILY_LLAMA;
  c.hidden = 256; c.intermediate = 768; c.n_layers = 4; c.n_heads = 8; c.n_kv_heads = 2; c.head_dim = 32;
  c.vocab = 4096; c.max_pos = 4096; c.rms_eps = 1e-5; c.tie_embeddings = 0;
  c.rope[0].kind = c.rope[1].kind = XD_ROPE_DEFAULT;
  c.rope[0].theta = c.rope[1].theta = 10000.0;
  c.rope[0].factor = c.rope[1].factor = 1.0;
  xd_teacher t;
  xd_teacher_init_random(&t, &c, 1234, 0.05f);

  char dir[] = "/tmp/xdistill-bench-stages.XXXXXX";
  XD_CHECK(mkdtemp(dir) != NULL);
  char tdir[600], sdir[600], shard[600];
  snprintf(tdir, sizeof tdir, "%s/teacher", dir);
  snprintf(sdir, sizeof sdir, "%s/student", dir);
  snprintf(shard, sizeof shard, "%s/data.shard", dir);
  write_teacher(&t, tdir);
  xd_err e = {{0}};
  xd_hybrid_config h;
  xd_hybrid_defaults(&h, c.head_dim);
  h.window = W;
  h.sinks = 4;
  h.chunk = 64;
  XD_CHECK(xd_student_init(tdir, &h, sdir, &e) == 0);

  /* random tokens: 64 rows of T+1 */
  const uint64_t ntok = (uint64_t)64 * (T + 1);
  int32_t *toks = xd_malloc(ntok * sizeof(int32_t));
  xd_rng r;
  xd_rng_seed(&r, 5);
  for (uint64_t i = 0; i < ntok; i++) toks[i] = (int32_t)(xd_rng_u64(&r) % (uint64_t)c.vocab);
  const uint64_t offs[2] = {0, ntok};
  XD_CHECK(xd_shard_write(shard, toks, NULL, ntok, offs, 1, (uint64_t)c.vocab, NULL, &e) == 0);
  free(toks);
  const char *shards[] = {shard};
  xd_loader_config lc = {T, B, 7, 1, 0, 1};
  xd_loader *L1, *L2;
  XD_CHECK(xd_loader_open_shards(&L1, shards, 1, &lc, &e) == 0);
  XD_CHECK(xd_loader_open_shards(&L2, shards, 1, &lc, &e) == 0);

  xd_student s1, s2;
  XD_CHECK(xd_student_load(&s1, sdir, XD_STUDENT_TRAIN_NEW, &e) == 0);
  XD_CHECK(xd_student_load(&s2, sdir, XD_STUDENT_TRAIN_ALL, &e) == 0);
  xd_align_ctx ac;
  xd_trainer_hooks h1, h2;
  xd_align_init(&ac, &t, &s1, L1, B, T, &h1);
  kd_config kd = kd_config_default(B * T, c.vocab);
  xd_distill_ctx dc;
  xd_distill_init(&dc, &t, NULL, &s2, L2, B, T, &kd, &h2);

  const int N = B * T;
  xd_teacher_acts ta;
  xd_teacher_acts_alloc(&ta, &c, N, T);
  float *logits = xd_malloc((size_t)N * c.vocab * sizeof(float));
  int32_t *ids = xd_malloc((size_t)N * sizeof(int32_t));
  for (int i = 0; i < N; i++) ids[i] = (int32_t)(xd_rng_u64(&r) % (uint64_t)c.vocab);

  printf("model: llama D=%d L=%d H=%d G=%d d=%d F=%d V=%d; student W=%d S=%d chunk=%d; micro-batch %d x %d tokens\n", c.hidden,
         c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.intermediate, c.vocab, W, h.sinks, h.chunk, B, T);
  printf("clock: %s; %d thread(s); best of %d\n", cpu ? "process CPU time" : "wall", xd_blas_split_threads(), R);
  double best_k = 1e30, best_f = 1e30, best_1 = 1e30, best_2 = 1e30;
  xd_step_result out;
  uint64_t step = 1;
  for (int rep = 0; rep <= R; rep++) { /* rep 0 warms up */
    double t0 = bench_now(cpu);
    XD_CHECK(xd_teacher_forward(&t, &ta, ids, B, T, logits, NULL, NULL, &e) == 0);
    const double tf = bench_now(cpu) - t0;
    t0 = bench_now(cpu);
    XD_CHECK(xd_distill_teacher_topk(&dc, ids, &e) == 0);
    const double tk = bench_now(cpu) - t0;
    xd_params_zero_grad(&s1.params);
    t0 = bench_now(cpu);
    XD_CHECK(h1.step(h1.ctx, &s1.params, step, 0, 1, &r, &out, &e) == 0);
    const double t1 = bench_now(cpu) - t0;
    xd_params_zero_grad(&s2.params);
    t0 = bench_now(cpu);
    XD_CHECK(h2.step(h2.ctx, &s2.params, step, 0, 1, &r, &out, &e) == 0);
    const double t2 = bench_now(cpu) - t0;
    step++;
    if (rep == 0) continue;
    printf("  rep %d: teacher forward %.1f ms (+ top-%d %.1f ms), stage I step %.1f ms, stage II step %.1f ms\n", rep, tf * 1e3, kd.k,
           (tk - tf) * 1e3, t1 * 1e3, t2 * 1e3);
    best_k = tk < best_k ? tk : best_k;
    best_f = tf < best_f ? tf : best_f;
    best_1 = t1 < best_1 ? t1 : best_1;
    best_2 = t2 < best_2 ? t2 : best_2;
  }
  printf("teacher forward (logits): %8.0f tokens/s\n", N / best_f);
  printf("stage I step  (align):    %8.0f tokens/s  = %.3f x the teacher forward\n", N / best_1, best_f / best_1);
  printf("stage II step (distill):  %8.0f tokens/s  = %.3f x the teacher forward (of its time: teacher forward + top-k %.0f%%)\n",
         N / best_2, best_f / best_2, 100.0 * best_k / best_2);

  free(logits);
  free(ids);
  xd_teacher_acts_free(&ta);
  xd_align_free(&ac);
  xd_distill_free(&dc);
  xd_student_free(&s1);
  xd_student_free(&s2);
  xd_loader_free(L1);
  xd_loader_free(L2);
  xd_teacher_free(&t);
  char cmd[700];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "bench_stages: could not remove %s\n", dir);
  return 0;
}
