/* GPU tests (not in CTest: CI has no GPU; tools/gpu_test.sh runs this on the device machine).
 * The GPU teacher (model/teacher/teacher_cuda) against the fp32 CPU teacher (the oracle):
 *  1. every fixture under tests/fixtures/teachers (fp32 and bf16 weights): GPU logits vs CPU
 *     logits, relative L2 <= 2e-2. Why 2e-2: the GPU rounds the weights to bf16 (the CPU test
 *     measured 6-8e-3 max-relative for bf16 vs fp32 weights over these 2-layer models, bound 2e-2)
 *     and rounds the activations feeding each GEMM / attention (x, q|k|v, attention output,
 *     silu(g)*u) to bf16 (2^-9 relative each); the residual stream and logits stay fp32. For the
 *     bf16 checkpoints only the activation rounding remains;
 *  2. prefill of the first half + one-token decode steps vs the full forward, both on the GPU
 *     (each model also with one sequence, B 1);
 *     (relative L2 <= 1e-2: the same bf16 roundings, different kernels / GEMM shapes);
 *  3. greedy generation vs the CPU's (and transformers' greedy.npy): equal, or a flip at a
 *     near-tie of the CPU logits (top-2 gap <= 2e-2 of max |logit|), reported;
 *  4. the same on random teachers with head dims 64 / 128 (flash prefill, split-K decode over
 *     more than 1024 keys, a sliding window, QK-norm), where the fixtures (head dim 12 / 16) only
 *     reach the generic kernel;
 *  5. one-line errors: bad token id, KV cache overflow;
 *  6. stage II's teacher on its own stream (distill/teacher_topk_cuda.h): two batches submitted
 *     into both slots at once give, bit for bit, the top-k of the same forward + top-k run on
 *     one stream; a teacher with non-finite logits is reported by row.
 * Exits 77 (skip) when no CUDA device is present. */
#include <math.h>
#include <stdint.h>
#include "core/core.h"
#include "io/npy.h"
#include "distill/teacher_topk_cuda.h"
#include "model/teacher/teacher.h"
#include "model/teacher/teacher_cuda.h"
#include "ops/cpu/threads.h"
#include "test.h"
#include "gpu_test_util.h"

#define FIX "tests/fixtures/teachers"
static const char *const families[] = {"llama-gqa", "llama-mha-bias", "llama3-rope", "llama-dynamic",
                                       "qwen2",     "qwen3",          "olmo2",       "olmo3"};
#define NFAM (int)(sizeof families / sizeof families[0])
static const double TOL_LOGITS = 2e-2, TOL_DECODE = 1e-2, TOL_TIE = 2e-2;

#define GPU(call) do { if ((call) != 0) { fprintf(stderr, "  FAIL %s:%d: %s\n", __FILE__, __LINE__, err.msg); xd_t.case_failed = 1; goto done; } } while (0)

static double max_rel(const float *x, const float *ref, size_t n) {
  double amax = 0, dmax = 0;
  for (size_t i = 0; i < n; i++) {
    amax = fmax(amax, fabs(ref[i]));
    dmax = fmax(dmax, fabs((double)x[i] - ref[i]));
  }
  return isnan(dmax) ? INFINITY : amax > 0 ? dmax / amax : dmax;
}

static int32_t *npy_ids(const char *path, int *B, int *T) {
  xd_npy a;
  xd_err e = {{0}};
  if (xd_npy_read(path, &a, &e)) { fprintf(stderr, "  %s\n", e.msg); return NULL; }
  int32_t *o = xd_malloc(a.nelem * sizeof(int32_t));
  for (size_t i = 0; i < a.nelem; i++) o[i] = a.type == XD_NPY_I64 ? (int32_t)((int64_t *)a.data)[i] : ((int32_t *)a.data)[i];
  *B = (int)a.shape[0], *T = (int)a.shape[1];
  xd_npy_free(&a);
  return o;
}

static float *cpu_forward(const xd_teacher *t, const int32_t *ids, int B, int T) {
  xd_teacher_acts a;
  xd_teacher_acts_alloc(&a, &t->cfg, B * T, T);
  float *lg = xd_malloc((size_t)B * T * t->cfg.vocab * sizeof(float));
  xd_err e = {{0}};
  if (xd_teacher_forward(t, &a, ids, B, T, lg, NULL, NULL, &e)) { fprintf(stderr, "  %s\n", e.msg); free(lg); lg = NULL; }
  xd_teacher_acts_free(&a);
  return lg;
}

/* The CPU's KV-cached run: prefill P tokens, then one at a time -> logits [B,T,V]. */
static float *cpu_incremental(const xd_teacher *t, const int32_t *ids, int B, int T, int P) {
  const int V = t->cfg.vocab;
  xd_kv_cache kv;
  xd_teacher_acts a;
  xd_kv_cache_alloc(&kv, &t->cfg, B, T);
  xd_teacher_acts_alloc(&a, &t->cfg, B * P, T);
  float *out = xd_malloc((size_t)B * T * V * 4), *pl = xd_malloc((size_t)B * P * V * 4);
  int32_t *pre = xd_malloc((size_t)B * P * 4), step[64];
  xd_err e = {{0}};
  for (int b = 0; b < B; b++) memcpy(pre + (size_t)b * P, ids + (size_t)b * T, (size_t)P * 4);
  int rc = xd_teacher_forward_cached(t, &a, &kv, pre, P, pl, 0, &e);
  for (int b = 0; !rc && b < B; b++) memcpy(out + (size_t)b * T * V, pl + (size_t)b * P * V, (size_t)P * V * 4);
  for (int i = P; !rc && i < T; i++) {
    for (int b = 0; b < B; b++) step[b] = ids[(size_t)b * T + i];
    rc = xd_teacher_forward_cached(t, &a, &kv, step, 1, pl, 1, &e);
    for (int b = 0; !rc && b < B; b++) memcpy(out + ((size_t)b * T + i) * V, pl + (size_t)b * V, (size_t)V * 4);
  }
  if (rc) { fprintf(stderr, "  %s\n", e.msg); free(out); out = NULL; }
  free(pl), free(pre);
  xd_teacher_acts_free(&a);
  xd_kv_cache_free(&kv);
  return out;
}

/* GPU logits vs CPU, prefill (first P tokens) + decode vs the GPU's full forward and vs the CPU's
 * cached run, greedy vs CPU. */
static void check_model(const char *name, const xd_teacher *cpu, const int32_t *ids, int B, int T, int P,
                        int n_new, const int32_t *want_greedy) {
  const int V = cpu->cfg.vocab, total = T + n_new;
  xd_teacher_cuda g;
  xd_teacher_cuda_state s;
  memset(&g, 0, sizeof g);
  memset(&s, 0, sizeof s);
  float *ref = cpu_forward(cpu, ids, B, T);
  float *got = xd_malloc((size_t)B * T * V * 4), *inc = xd_malloc((size_t)B * T * V * 4), *row = xd_malloc((size_t)B * V * 4);
  int32_t *gout = xd_malloc((size_t)B * total * 4), *cout = xd_malloc((size_t)B * total * 4), *step = xd_malloc((size_t)B * 4);
  float *cl = NULL;
  CHECK(ref != NULL);
  if (!ref) goto done;
  GPU(xd_teacher_cuda_upload(&g, ctx, cpu, &err));
  GPU(xd_teacher_cuda_state_alloc(&s, &g, B, T, total, B * T, 1, &err));
  /* poison the logits: an unwritten element is NaN and fails every bound */
  GPU(xd_cuda_memset(ctx, s.logits, 0xFF, (size_t)B * T * V * 4, &err));
  GPU(xd_teacher_cuda_forward(&g, &s, ids, B, T, got, &err));
  {
    const double r = rel_l2(got, ref, (size_t)B * T * V), m = max_rel(got, ref, (size_t)B * T * V);
    fprintf(stderr, "  %-22s GPU vs CPU logits: rel L2 %.3e, max rel %.3e (bound %.0e)\n", name, r, m, TOL_LOGITS);
    CHECKF(r <= TOL_LOGITS, "%s: GPU logits rel L2 %.3e > %.0e", name, r, TOL_LOGITS);
  }
  /* prefill P tokens, then one at a time: logits of every position vs the full GPU forward */
  {
    int32_t *pre = xd_malloc((size_t)B * P * 4);
    for (int b = 0; b < B; b++) memcpy(pre + (size_t)b * P, ids + (size_t)b * T, (size_t)P * 4);
    xd_teacher_cuda_reset(&s);
    float *pl = xd_malloc((size_t)B * P * V * 4);
    const int rc = xd_teacher_cuda_step(&g, &s, pre, P, 0, pl, &err);
    free(pre);
    if (rc) { free(pl); GPU(rc); }
    for (int b = 0; b < B; b++) memcpy(inc + (size_t)b * T * V, pl + (size_t)b * P * V, (size_t)P * V * 4);
    free(pl);
    for (int t = P; t < T; t++) {
      for (int b = 0; b < B; b++) step[b] = ids[(size_t)b * T + t];
      GPU(xd_teacher_cuda_step(&g, &s, step, 1, 1, row, &err));
      for (int b = 0; b < B; b++) memcpy(inc + ((size_t)b * T + t) * V, row + (size_t)b * V, (size_t)V * 4);
    }
    /* dynamic NTK: cached keys keep the rotation of their step (as transformers), so the cached
     * run differs from the full forward by design; it is compared with the CPU's cached run */
    const int dynamic = cpu->cfg.rope[0].kind == XD_ROPE_DYNAMIC || cpu->cfg.rope[1].kind == XD_ROPE_DYNAMIC;
    if (!dynamic) {
      const double r = rel_l2(inc, got, (size_t)B * T * V);
      fprintf(stderr, "  %-22s prefill %d + decode %d vs full forward (GPU): rel L2 %.3e (bound %.0e)\n", name, P,
              T - P, r, TOL_DECODE);
      CHECKF(r <= TOL_DECODE, "%s: prefill+decode rel L2 %.3e > %.0e", name, r, TOL_DECODE);
    }
    float *cinc = cpu_incremental(cpu, ids, B, T, P);
    CHECK(cinc != NULL);
    if (cinc) {
      const double r = rel_l2(inc, cinc, (size_t)B * T * V);
      fprintf(stderr, "  %-22s prefill + decode, GPU vs CPU cached run: rel L2 %.3e (bound %.0e)\n", name, r, TOL_LOGITS);
      CHECKF(r <= TOL_LOGITS, "%s: GPU vs CPU cached run rel L2 %.3e > %.0e", name, r, TOL_LOGITS);
    }
    free(cinc);
  }
  /* The one-token steps read their position on the device and, from the second on, replay a CUDA
   * graph (without dynamic NTK): the same run with XD_CUDA_GRAPHS=0 (every kernel launched) must
   * give the same logits bit for bit, and the graph must have been made. */
  {
    const int dynamic = cpu->cfg.rope[0].kind == XD_ROPE_DYNAMIC || cpu->cfg.rope[1].kind == XD_ROPE_DYNAMIC;
    if (!dynamic && T - P >= 2) CHECKF(s.graph != NULL, "%s: %d one-token steps made no CUDA graph", name, T - P);
    setenv("XD_CUDA_GRAPHS", "0", 1);
    int32_t *pre = xd_malloc((size_t)B * P * 4);
    for (int b = 0; b < B; b++) memcpy(pre + (size_t)b * P, ids + (size_t)b * T, (size_t)P * 4);
    xd_teacher_cuda_reset(&s);
    int rc = xd_teacher_cuda_step(&g, &s, pre, P, 1, NULL, &err);
    free(pre);
    size_t diff = 0;
    for (int t = P; !rc && t < T; t++) {
      for (int b = 0; b < B; b++) step[b] = ids[(size_t)b * T + t];
      rc = xd_teacher_cuda_step(&g, &s, step, 1, 1, row, &err);
      for (int b = 0; !rc && b < B; b++)
        diff += memcmp(inc + ((size_t)b * T + t) * V, row + (size_t)b * V, (size_t)V * 4) != 0;
    }
    unsetenv("XD_CUDA_GRAPHS");
    GPU(rc);
    fprintf(stderr, "  %-22s %d one-token steps launched vs graph-replayed: %zu of %d logit rows differ\n", name, T - P,
            diff, B * (T - P));
    CHECKF(diff == 0, "%s: launched and graph-replayed steps differ in %zu rows", name, diff);
  }
  /* rows at different lengths (xd_teacher_cuda_prefill_row / _step_rows, batched generation):
   * row b prefilled with its first P - 2b tokens (at least 1), then one token a step for every
   * row, each at its own position, fed its own sequence: every logit row vs the common-length
   * run above (inc) at the same position; a common step is refused until a reset */
  if (!(cpu->cfg.rope[0].kind == XD_ROPE_DYNAMIC || cpu->cfg.rope[1].kind == XD_ROPE_DYNAMIC)) {
    int *pb = xd_malloc((size_t)B * sizeof *pb), steps = T;
    for (int b = 0; b < B; b++) {
      pb[b] = P - 2 * b > 1 ? P - 2 * b : 1;
      steps = T - pb[b] < steps ? T - pb[b] : steps;
    }
    xd_teacher_cuda_reset(&s);
    double w = 0;
    int rc = 0;
    for (int b = B - 1; b >= 0 && !rc; b--) { /* any order: each row's logits stay in its row */
      rc = xd_teacher_cuda_prefill_row(&g, &s, b, ids + (size_t)b * T, pb[b], NULL, &err);
    }
    for (int j = 0; j <= steps && !rc; j++) {
      if (j > 0) {
        for (int b = 0; b < B; b++) step[b] = ids[(size_t)b * T + pb[b] + j - 1];
        rc = xd_teacher_cuda_step_rows(&g, &s, step, NULL, &err);
      }
      if (!rc) rc = xd_cuda_download(ctx, row, s.logits, (size_t)B * V * 4, &err);
      for (int b = 0; b < B && !rc; b++) w = fmax(w, rel_l2(row + (size_t)b * V, inc + ((size_t)b * T + pb[b] - 1 + j) * V, V));
    }
    GPU(rc);
    fprintf(stderr, "  %-22s rows at different lengths (prefill %d..%d, %d steps) vs the common-length run: rel L2 %.3e (bound %.0e)\n",
            name, pb[B - 1], pb[0], steps, w, TOL_DECODE);
    CHECKF(w <= TOL_DECODE, "%s: rows at different lengths rel L2 %.3e > %.0e", name, w, TOL_DECODE);
    CHECKF(xd_teacher_cuda_step(&g, &s, step, 1, 1, NULL, &err) == -1 && strstr(err.msg, "different lengths"),
           "%s: a common step on rows at different lengths was not refused", name);
    xd_teacher_cuda_reset(&s);
    free(pb);
  }
  /* greedy: GPU vs CPU (vs transformers where given) */
  {
    xd_err e = {{0}};
    GPU(xd_teacher_cuda_generate(&g, &s, ids, T, n_new, 0, gout, NULL, &err));
    CHECK(xd_teacher_generate(cpu, ids, B, T, n_new, 0, cout, NULL, &e) == 0);
    if (want_greedy) CHECKF(!memcmp(cout, want_greedy, (size_t)B * total * 4), "%s: CPU greedy differs from transformers", name);
    int same = 0, n = 0, flips = 0;
    cl = cpu_forward(cpu, cout, B, total); /* CPU logits along the CPU's continuation */
    for (int b = 0; b < B && cl; b++) {
      for (int t = T; t < total; t++) {
        n++;
        if (gout[(size_t)b * total + t] == cout[(size_t)b * total + t]) { same++; continue; }
        /* first divergence in this row: was the CPU's choice a near-tie? */
        const float *lr = cl + ((size_t)b * total + t - 1) * V;
        double amax = 0;
        for (int v = 0; v < V; v++) amax = fmax(amax, fabs(lr[v]));
        const double gap = lr[cout[(size_t)b * total + t]] - lr[gout[(size_t)b * total + t]];
        fprintf(stderr, "  %-22s greedy row %d diverges at step %d: CPU %d, GPU %d, CPU logit gap %.3e of max |logit| %.3g\n",
                name, b, t - T, cout[(size_t)b * total + t], gout[(size_t)b * total + t], gap / amax, amax);
        CHECKF(gap <= TOL_TIE * amax, "%s: greedy flip at a logit gap %.3e > %.0e of max |logit|", name, gap / amax, TOL_TIE);
        flips++;
        break; /* later tokens follow a different prefix */
      }
    }
    fprintf(stderr, "  %-22s greedy: %d/%d generated tokens equal to the CPU's%s\n", name, same, n,
            flips ? " (near-tie flip)" : "");
  }
done:
  free(cl);
  free(ref), free(got), free(inc), free(row), free(gout), free(cout), free(step);
  xd_teacher_cuda_state_free(&s);
  xd_teacher_cuda_free(&g);
}

static void test_fixtures(void) {
  struct stat st;
  if (stat(FIX, &st) != 0) SKIP("fixtures absent");
  for (int f = 0; f < NFAM; f++) {
    char p[256], dir[256], name[64];
    int B, T, Bg, Tg;
    snprintf(p, sizeof p, FIX "/%s/ids.npy", families[f]);
    int32_t *ids = npy_ids(p, &B, &T);
    snprintf(p, sizeof p, FIX "/%s/greedy.npy", families[f]);
    int32_t *greedy = npy_ids(p, &Bg, &Tg);
    CHECK(ids && greedy && Bg == B);
    for (int w = 0; ids && greedy && w < 2; w++) {
      snprintf(dir, sizeof dir, FIX "/%s/%s", families[f], w ? "bf16" : "fp32");
      if (!xd_is_dir(dir)) continue;
      snprintf(name, sizeof name, "%s/%s", families[f], w ? "bf16" : "fp32");
      xd_teacher t;
      xd_err e = {{0}};
      if (xd_teacher_load(&t, dir, &e)) { fprintf(stderr, "  %s\n", e.msg); CHECK(0); continue; }
      check_model(name, &t, ids, B, T, T / 2, Tg - T, w ? NULL : greedy);
      /* one sequence (generate, eval): B 1 decode as well as the batch */
      snprintf(name, sizeof name, "%s/%s B1", families[f], w ? "bf16" : "fp32");
      check_model(name, &t, ids, 1, T, T / 2, Tg - T, NULL);
      xd_teacher_free(&t);
    }
    free(ids);
    free(greedy);
  }
}

/* Random teachers with flash-kernel head dims, built from a fixture config. */
static void random_case(const char *fam, const char *name, int D, int H, int G, int d, int window, int T, int P) {
  char dir[256];
  snprintf(dir, sizeof dir, FIX "/%s/fp32", fam);
  xd_model_config c;
  xd_err e = {{0}};
  if (xd_config_load(&c, dir, &e)) { fprintf(stderr, "  %s\n", e.msg); CHECK(0); return; }
  c.hidden = D, c.n_heads = H, c.n_kv_heads = G, c.head_dim = d, c.intermediate = 2 * D, c.vocab = 512;
  c.max_pos = 1 << 16;
  if (window) c.sliding_window = window;
  for (int i = 0; i < c.n_eos; i++) c.eos_token_ids[i] %= c.vocab;
  xd_teacher t;
  xd_teacher_init_random(&t, &c, 42, 0.06f);
  const int B = 2;
  int32_t *ids = xd_malloc((size_t)B * T * 4);
  xd_rng r;
  xd_rng_seed(&r, 9);
  for (int i = 0; i < B * T; i++) ids[i] = (int32_t)(xd_rng_u64(&r) % c.vocab);
  check_model(name, &t, ids, B, T, P, 8, NULL);
  char n1[96];
  snprintf(n1, sizeof n1, "%s B1", name);
  check_model(n1, &t, ids, 1, T, P, 8, NULL); /* one sequence, as generate and eval decode */
  free(ids);
  xd_teacher_free(&t);
}

static void test_random_flash_dims(void) {
  random_case("llama-gqa", "random llama d64", 256, 4, 2, 64, 0, 1100, 1060);
  random_case("qwen3", "random qwen3 d128 G=1", 256, 2, 1, 128, 0, 600, 500);
  random_case("olmo3", "random olmo3 d64 W=200", 256, 4, 2, 64, 200, 700, 600);
  random_case("llama-gqa", "random llama d64 R=16", 512, 16, 1, 64, 0, 300, 250);
}

static void test_errors(void) {
  xd_teacher t;
  xd_teacher_cuda g;
  xd_teacher_cuda_state s;
  memset(&g, 0, sizeof g);
  memset(&s, 0, sizeof s);
  xd_err e = {{0}};
  if (xd_teacher_load(&t, FIX "/llama-gqa/fp32", &e)) SKIP("fixture absent");
  int32_t ids[4] = {1, 2, 300, 4};
  GPU(xd_teacher_cuda_upload(&g, ctx, &t, &err));
  GPU(xd_teacher_cuda_state_alloc(&s, &g, 1, 4, 5, 4, 1, &err));
  CHECK(xd_teacher_cuda_forward(&g, &s, ids, 1, 4, NULL, &err) == -1 && strstr(err.msg, "outside the vocabulary") &&
        !strchr(err.msg, '\n'));
  ids[2] = 3;
  CHECK(xd_teacher_cuda_step(&g, &s, ids, 4, 1, NULL, &err) == 0);
  CHECK(xd_teacher_cuda_step(&g, &s, ids, 1, 1, NULL, &err) == 0);
  CHECK(xd_teacher_cuda_step(&g, &s, ids, 1, 1, NULL, &err) == -1 && strstr(err.msg, "capacity"));
  CHECK(xd_cuda_sync(ctx, &err) == 0);
done:
  xd_teacher_cuda_state_free(&s);
  xd_teacher_cuda_free(&g);
  xd_teacher_free(&t);
}

/* Forward + top-k on the test's own stream: the reference for the pipelined slots. */
static int direct_topk(const xd_teacher *t, const int32_t *ids, int B, int T, int k, int32_t *h_ids, float *h_logp) {
  xd_teacher_cuda g;
  xd_teacher_cuda_state s;
  const size_t nk = (size_t)B * T * k;
  int32_t *d_ids = NULL;
  float *d_logp = NULL;
  if (xd_teacher_cuda_upload(&g, ctx, t, &err)) return -1;
  int rc = xd_teacher_cuda_state_alloc(&s, &g, B, T, T, B * T, 0, &err);
  if (rc == 0) {
    rc = xd_cuda_malloc((void **)&d_ids, nk * 4, &err) || xd_cuda_malloc((void **)&d_logp, nk * 4, &err) ||
         xd_teacher_cuda_forward(&g, &s, ids, B, T, NULL, &err) ||
         xd_cuda_topk_logprobs(ctx, s.logits, XD_CUDA_F32, B * T, t->cfg.vocab, k, d_ids, d_logp, NULL, &err) ||
         xd_cuda_download(ctx, h_ids, d_ids, nk * 4, &err) || xd_cuda_download(ctx, h_logp, d_logp, nk * 4, &err);
    xd_teacher_cuda_state_free(&s);
  }
  xd_cuda_free(d_ids);
  xd_cuda_free(d_logp);
  xd_teacher_cuda_free(&g);
  return rc;
}

static void test_topk_pipeline(void) {
  xd_model_config c;
  xd_err e = {{0}};
  if (xd_config_load(&c, FIX "/llama-gqa/fp32", &e)) SKIP("fixture absent");
  c.hidden = 256, c.n_heads = 4, c.n_kv_heads = 2, c.head_dim = 64, c.intermediate = 512, c.vocab = 1000;
  for (int i = 0; i < c.n_eos; i++) c.eos_token_ids[i] %= c.vocab;
  xd_teacher t;
  xd_teacher_init_random(&t, &c, 17, 0.06f);
  const int B = 2, T = 300, k = 40;
  const size_t N = (size_t)B * T, nk = N * k;
  int32_t *ids = xd_malloc(2 * N * 4), *ref_ids = xd_malloc(2 * nk * 4), *got_ids = xd_malloc(2 * nk * 4);
  float *ref_lp = xd_malloc(2 * nk * 4), *got_lp = xd_malloc(2 * nk * 4);
  xd_rng r;
  xd_rng_seed(&r, 23);
  for (size_t i = 0; i < 2 * N; i++) ids[i] = (int32_t)(xd_rng_u64(&r) % c.vocab);
  xd_teacher_topk_cuda *tp = NULL;
  GPU(direct_topk(&t, ids, B, T, k, ref_ids, ref_lp));
  GPU(direct_topk(&t, ids + N, B, T, k, ref_ids + nk, ref_lp + nk));
  /* the logits all at once (head_rows 0), then in row blocks of 257 (257, 257, 86 rows) */
  for (int hr = 0; hr <= 257; hr += 257) {
    GPU(xd_teacher_topk_cuda_create(&tp, &t, B, T, k, hr, &err));
    GPU(xd_teacher_topk_cuda_submit(tp, 0, ids, &err));
    GPU(xd_teacher_topk_cuda_submit(tp, 1, ids + N, &err)); /* both in flight */
    for (int sl = 0; sl < 2; sl++) {
      GPU(xd_teacher_topk_cuda_wait(tp, sl, ctx, &err));
      GPU(xd_cuda_download(ctx, got_ids + sl * nk, xd_teacher_topk_cuda_ids(tp, sl), nk * 4, &err));
      GPU(xd_cuda_download(ctx, got_lp + sl * nk, xd_teacher_topk_cuda_logp(tp, sl), nk * 4, &err));
      GPU(xd_teacher_topk_cuda_check(tp, sl, &err));
    }
    size_t diff = 0;
    for (size_t i = 0; i < 2 * nk; i++) diff += got_ids[i] != ref_ids[i] || memcmp(&got_lp[i], &ref_lp[i], 4) != 0;
    printf("      teacher top-k on its own stream (logits in blocks of %d rows), 2 slots in flight vs one stream: %zu of "
           "%zu entries differ\n", hr ? hr : (int)N, diff, 2 * nk);
    CHECKF(diff == 0, "pipelined teacher top-k (head rows %d) differs from the direct run in %zu entries", hr, diff);
    xd_teacher_topk_cuda_free(tp);
    tp = NULL;
  }
  { /* a NaN embedding row at position 128 of sequence 1: its rows 128..299 non-finite (causal;
     * 128 starts an attention tile, so no masked-out product 0 * NaN reaches an earlier query),
     * batch rows 428..599, in the second block of 257: reported as row 428 of the batch */
    const int32_t x = c.vocab - 1;
    for (size_t i = 0; i < N; i++)
      if (ids[i] == x) ids[i] = 0;
    ids[T + 128] = x;
    const float keep = t.embed[(size_t)x * c.hidden];
    t.embed[(size_t)x * c.hidden] = NAN;
    GPU(xd_teacher_topk_cuda_create(&tp, &t, B, T, k, 257, &err));
    GPU(xd_teacher_topk_cuda_submit(tp, 0, ids, &err));
    CHECKF(xd_teacher_topk_cuda_check(tp, 0, &err) == -1 && strstr(err.msg, "row 428 are not finite"), "%s", err.msg);
    t.embed[(size_t)x * c.hidden] = keep;
    xd_teacher_topk_cuda_free(tp);
    tp = NULL;
  }
  /* a NaN final norm: every logit non-finite, reported from row 0 */
  t.final_norm[0] = NAN;
  GPU(xd_teacher_topk_cuda_create(&tp, &t, B, T, k, 0, &err));
  GPU(xd_teacher_topk_cuda_submit(tp, 1, ids, &err));
  CHECK(xd_teacher_topk_cuda_check(tp, 1, &err) == -1 && strstr(err.msg, "row 0 are not finite"));
done:
  xd_teacher_topk_cuda_free(tp);
  free(ids), free(ref_ids), free(got_ids), free(ref_lp), free(got_lp);
  xd_teacher_free(&t);
}

int main(int argc, char **argv) {
  (void)gpu_test_begin(argc, argv);
  xd_set_threads(0);
  RUN(test_fixtures);
  RUN(test_random_flash_dims);
  RUN(test_errors);
  RUN(test_topk_pipeline);
  return gpu_test_end();
}
