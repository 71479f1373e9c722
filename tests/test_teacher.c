/* The CPU teacher against transformers: every fixture family (tests/fixtures/teachers, made by
 * tools/make_teacher_fixtures.py) in fp32 and bf16 weights, greedy continuations, KV-cached
 * decoding against the full forward, batching, hooks, the transformers-4 config dialect, and the
 * one-line errors for broken checkpoints. */
#include <cjson/cJSON.h>
#include "test.h"
#include "io/npy.h"
#include "io/safetensors.h"
#include "model/teacher/teacher.h"
#include "ops/cpu/threads.h"

#define FIX "tests/fixtures/teachers"
static const char *const families[] = {"llama-gqa", "llama-mha-bias", "llama3-rope", "llama-dynamic",
                                       "qwen2",     "qwen3",          "olmo2",       "olmo3"};
#define NFAM (int)(sizeof families / sizeof families[0])

/* fp32 weights: max |logit - ref| / max |ref| against the float64 transformers run. */
#define TOL_F32 1e-4
/* bf16 weights against the float64 run of the same bf16-rounded weights (exact conversion). */
#define TOL_BF16_SAME 1e-4
/* bf16 weights against the fp32-weight reference: bf16 rounding (2^-9 relative per weight)
 * through 2 layers moved logits by 0.6-0.8% of max|logit| (measured). */
#define TOL_BF16_VS_F32 2e-2

static int load_ids(const char *fam, xd_npy *ids) {
  char p[256];
  snprintf(p, sizeof p, FIX "/%s/ids.npy", fam);
  xd_err e = {0};
  if (xd_npy_read(p, ids, &e)) { fprintf(stderr, "  %s\n", e.msg); return -1; }
  return 0;
}

static int32_t *ids32(const xd_npy *a) {
  int32_t *o = malloc(a->nelem * sizeof(int32_t));
  for (size_t i = 0; i < a->nelem; i++) o[i] = a->type == XD_NPY_I64 ? (int32_t)((int64_t *)a->data)[i] : ((int32_t *)a->data)[i];
  return o;
}

/* Run the full forward of dir on ids; returns malloc'ed logits [B,T,V] or NULL. */
static float *run_forward(const char *dir, const int32_t *ids, int B, int T, xd_teacher *t) {
  xd_err e = {0};
  if (xd_teacher_load(t, dir, &e)) { fprintf(stderr, "  %s\n", e.msg); return NULL; }
  xd_teacher_acts a;
  xd_teacher_acts_alloc(&a, &t->cfg, B * T, T);
  float *lg = malloc((size_t)B * T * t->cfg.vocab * sizeof(float));
  int rc = xd_teacher_forward(t, &a, ids, B, T, lg, NULL, NULL, &e);
  xd_teacher_acts_free(&a);
  if (rc) { fprintf(stderr, "  %s\n", e.msg); free(lg); return NULL; }
  return lg;
}

static double compare_ref(const float *lg, const char *fam, const char *file, size_t n) {
  char p[256];
  snprintf(p, sizeof p, FIX "/%s/%s", fam, file);
  xd_npy ref;
  xd_err e = {0};
  if (xd_npy_read(p, &ref, &e)) { fprintf(stderr, "  %s\n", e.msg); return 1e9; }
  double err = ref.nelem == n && ref.type == XD_NPY_F64 ? test_max_rel_err(lg, ref.data, n) : 1e9;
  /* guard against a degenerate fixture: logits must spread (not near-uniform) */
  double amax = 0;
  for (size_t i = 0; i < ref.nelem; i++) amax = fmax(amax, fabs(((double *)ref.data)[i]));
  CHECKF(amax > 1.0, "%s: reference logits too flat (max %g)", p, amax);
  xd_npy_free(&ref);
  return err;
}

static void test_fp32_logits(void) {
  for (int f = 0; f < NFAM; f++) {
    xd_npy ids;
    if (load_ids(families[f], &ids)) { CHECK(0); continue; }
    const int B = (int)ids.shape[0], T = (int)ids.shape[1];
    int32_t *id = ids32(&ids);
    char dir[256];
    snprintf(dir, sizeof dir, FIX "/%s/fp32", families[f]);
    xd_teacher t;
    float *lg = run_forward(dir, id, B, T, &t);
    CHECK(lg != NULL);
    if (lg) {
      double err = compare_ref(lg, families[f], "logits_f64.npy", (size_t)B * T * t.cfg.vocab);
      fprintf(stderr, "  %-15s fp32 max rel err %.2e\n", families[f], err);
      CHECKF(err <= TOL_F32, "%s: fp32 logits rel err %.3g > %g", families[f], err, TOL_F32);
      xd_teacher_free(&t);
    }
    free(lg);
    free(id);
    xd_npy_free(&ids);
  }
}

static void test_bf16_logits(void) {
  int n = 0;
  for (int f = 0; f < NFAM; f++) {
    char dir[256];
    snprintf(dir, sizeof dir, FIX "/%s/bf16", families[f]);
    if (!xd_is_dir(dir)) continue;
    n++;
    xd_npy ids;
    if (load_ids(families[f], &ids)) { CHECK(0); continue; }
    const int B = (int)ids.shape[0], T = (int)ids.shape[1];
    int32_t *id = ids32(&ids);
    xd_teacher t;
    float *lg = run_forward(dir, id, B, T, &t);
    CHECK(lg != NULL);
    if (lg) {
      const size_t nl = (size_t)B * T * t.cfg.vocab;
      double same = compare_ref(lg, families[f], "logits_bf16_f64.npy", nl);
      double vs32 = compare_ref(lg, families[f], "logits_f64.npy", nl);
      fprintf(stderr, "  %-15s bf16 rel err %.2e (same weights), %.2e (vs fp32 weights)\n", families[f], same, vs32);
      CHECKF(same <= TOL_BF16_SAME, "%s: bf16 logits rel err %.3g > %g", families[f], same, TOL_BF16_SAME);
      CHECKF(vs32 <= TOL_BF16_VS_F32, "%s: bf16 vs fp32 rel err %.3g > %g", families[f], vs32, TOL_BF16_VS_F32);
      CHECK(vs32 > 1e-5); /* the bf16 files really hold rounded weights */
      xd_teacher_free(&t);
    }
    free(lg);
    free(id);
    xd_npy_free(&ids);
  }
  CHECK(n >= 2);
}

static void test_greedy(void) {
  for (int f = 0; f < NFAM; f++) {
    xd_npy ids, g;
    xd_err e = {0};
    char p[256], dir[256];
    snprintf(p, sizeof p, FIX "/%s/greedy.npy", families[f]);
    snprintf(dir, sizeof dir, FIX "/%s/fp32", families[f]);
    if (load_ids(families[f], &ids) || xd_npy_read(p, &g, &e)) { CHECK(0); continue; }
    const int B = (int)ids.shape[0], T = (int)ids.shape[1], total = (int)g.shape[1];
    int32_t *id = ids32(&ids), *want = ids32(&g), *out = malloc((size_t)B * total * sizeof(int32_t));
    xd_teacher t;
    CHECK(xd_teacher_load(&t, dir, &e) == 0);
    CHECK(xd_teacher_generate(&t, id, B, T, total - T, 0, out, NULL, &e) == 0);
    int same = memcmp(out, want, (size_t)B * total * sizeof(int32_t)) == 0;
    CHECKF(same, "%s: greedy continuation differs from transformers", families[f]);
    xd_teacher_free(&t);
    free(id); free(want); free(out);
    xd_npy_free(&ids); xd_npy_free(&g);
  }
}

/* Prefill P tokens then decode one at a time: logits equal the full forward's (not for dynamic
 * NTK, whose frequencies depend on the current length in transformers too). */
static void test_prefill_decode(void) {
  for (int f = 0; f < NFAM; f++) {
    if (!strcmp(families[f], "llama-dynamic")) continue;
    xd_npy ids;
    xd_err e = {0};
    char dir[256];
    snprintf(dir, sizeof dir, FIX "/%s/fp32", families[f]);
    if (load_ids(families[f], &ids)) { CHECK(0); continue; }
    const int B = (int)ids.shape[0], T = (int)ids.shape[1], P = 5;
    int32_t *id = ids32(&ids);
    xd_teacher t;
    float *full = run_forward(dir, id, B, T, &t);
    CHECK(full != NULL);
    if (!full) { free(id); xd_npy_free(&ids); continue; }
    const int V = t.cfg.vocab;
    xd_kv_cache kv;
    xd_teacher_acts a;
    xd_kv_cache_alloc(&kv, &t.cfg, B, T);
    xd_teacher_acts_alloc(&a, &t.cfg, B * P, T);
    float *lg = malloc((size_t)B * P * V * sizeof(float));
    int32_t *chunk = malloc((size_t)B * P * sizeof(int32_t));
    float *inc = malloc((size_t)B * T * V * sizeof(float));
    for (int b = 0; b < B; b++) memcpy(chunk + b * P, id + b * T, P * sizeof(int32_t));
    CHECK(xd_teacher_forward_cached(&t, &a, &kv, chunk, P, lg, 0, &e) == 0);
    for (int b = 0; b < B; b++) memcpy(inc + (size_t)b * T * V, lg + (size_t)b * P * V, (size_t)P * V * sizeof(float));
    for (int s = P; s < T; s++) {
      int32_t step[8];
      for (int b = 0; b < B; b++) step[b] = id[b * T + s];
      CHECK(xd_teacher_forward_cached(&t, &a, &kv, step, 1, lg, 1, &e) == 0);
      for (int b = 0; b < B; b++) memcpy(inc + ((size_t)b * T + s) * V, lg + (size_t)b * V, V * sizeof(float));
    }
    CHECK(kv.len == T);
    int32_t one = id[0];
    CHECK(xd_teacher_forward_cached(&t, &a, &kv, &one, 1, lg, 1, &e) == -1 && strstr(e.msg, "KV cache full"));
    double md = 0, amax = 0;
    for (size_t i = 0; i < (size_t)B * T * V; i++) { md = fmax(md, fabs(inc[i] - full[i])); amax = fmax(amax, fabs(full[i])); }
    CHECKF(md / amax < 1e-5, "%s: prefill+decode vs full forward rel diff %.3g", families[f], md / amax);
    free(lg); free(chunk); free(inc); free(full); free(id);
    xd_kv_cache_free(&kv);
    xd_teacher_acts_free(&a);
    xd_teacher_free(&t);
    xd_npy_free(&ids);
  }
}

typedef struct { int calls, N, D, Hd; double x0_err; const float *emb_rows; const float *norm_w; double eps; } hook_ud;

static void hook_fn(int layer, const float *x, const float *a, int N, void *user) {
  hook_ud *u = user;
  CHECK(layer == u->calls);
  u->calls++;
  u->N = N;
  if (layer == 0) { /* x^0 = rmsnorm(embedding) in double */
    for (int n = 0; n < N; n++) {
      const float *r = u->emb_rows + (size_t)n * u->D;
      double ss = 0;
      for (int c = 0; c < u->D; c++) ss += (double)r[c] * r[c];
      const double rs = 1.0 / sqrt(ss / u->D + u->eps);
      for (int c = 0; c < u->D; c++)
        u->x0_err = fmax(u->x0_err, fabs(x[(size_t)n * u->D + c] - u->norm_w[c] * r[c] * rs) / (1 + fabs(x[(size_t)n * u->D + c])));
    }
  }
  double s = 0;
  for (size_t i = 0; i < (size_t)N * u->Hd; i++) s += fabs(a[i]);
  CHECK(s > 0 && isfinite(s));
}

/* Hooks see every layer with N = B*T rows; x^0 is the normed embedding; batched rows equal
 * single-row runs. */
static void test_hooks_and_batch(void) {
  xd_npy ids;
  xd_err e = {0};
  if (load_ids("llama-gqa", &ids)) { CHECK(0); return; }
  const int B = (int)ids.shape[0], T = (int)ids.shape[1];
  int32_t *id = ids32(&ids);
  xd_teacher t;
  CHECK(xd_teacher_load(&t, FIX "/llama-gqa/fp32", &e) == 0);
  const int D = t.cfg.hidden, V = t.cfg.vocab;
  float *emb = malloc((size_t)B * T * D * sizeof(float));
  for (int n = 0; n < B * T; n++) memcpy(emb + (size_t)n * D, t.embed + (size_t)id[n] * D, D * sizeof(float));
  hook_ud u = {.D = D, .Hd = t.cfg.n_heads * t.cfg.head_dim, .emb_rows = emb, .norm_w = t.layers[0].attn_norm, .eps = t.cfg.rms_eps};
  xd_teacher_acts a;
  xd_teacher_acts_alloc(&a, &t.cfg, B * T, T);
  float *lg = malloc((size_t)B * T * V * sizeof(float)), *l1 = malloc((size_t)T * V * sizeof(float));
  CHECK(xd_teacher_forward(&t, &a, id, B, T, lg, hook_fn, &u, &e) == 0);
  CHECK(u.calls == t.cfg.n_layers && u.N == B * T);
  CHECKF(u.x0_err < 1e-5, "x^0 differs from rmsnorm(embedding): %g", u.x0_err);
  /* hooks only (no logits) */
  u.calls = 0;
  CHECK(xd_teacher_forward(&t, &a, id, B, T, NULL, hook_fn, &u, &e) == 0 && u.calls == t.cfg.n_layers);
  /* row 1 alone */
  CHECK(xd_teacher_forward(&t, &a, id + T, 1, T, l1, NULL, NULL, &e) == 0);
  double md = 0;
  for (size_t i = 0; i < (size_t)T * V; i++) md = fmax(md, fabs(l1[i] - lg[(size_t)T * V + i]));
  CHECKF(md < 1e-5, "batch row differs from a single-row run by %g", md);
  /* bad ids */
  int32_t bad[2] = {3, V};
  CHECK(xd_teacher_forward(&t, &a, bad, 1, 2, lg, NULL, NULL, &e) == -1 && strstr(e.msg, "outside the vocabulary"));
  xd_teacher_acts_free(&a);
  xd_teacher_free(&t);
  free(emb); free(lg); free(l1); free(id);
  xd_npy_free(&ids);
}

/* Stage I's tensors against transformers' own: x^l = input of self_attn, a^l = input of o_proj. */
typedef struct { int L; double err_x[4], err_a[4]; const char *fam; } hook_ref_ud;
static void hook_ref_fn(int layer, const float *x, const float *a, int N, void *user) {
  hook_ref_ud *u = user;
  for (int which = 0; which < 2; which++) {
    char p[256];
    snprintf(p, sizeof p, FIX "/%s/hook_%c%d.npy", u->fam, which ? 'a' : 'x', layer);
    xd_npy ref;
    xd_err e = {0};
    if (xd_npy_read(p, &ref, &e)) { CHECKF(0, "%s", e.msg); continue; }
    CHECK(ref.ndim == 2 && ref.shape[0] == N && ref.type == XD_NPY_F64);
    if (ref.ndim == 2 && ref.shape[0] == N && ref.type == XD_NPY_F64) {
      const double err = test_max_rel_err(which ? a : x, ref.data, ref.nelem);
      (which ? u->err_a : u->err_x)[layer] = err;
    }
    xd_npy_free(&ref);
  }
  u->L++;
}

static void test_hooks_vs_transformers(void) {
  const char *fams[] = {"llama-gqa", "qwen3", "olmo3"};
  for (int f = 0; f < 3; f++) {
    xd_npy ids;
    xd_err e = {0};
    char dir[256];
    snprintf(dir, sizeof dir, FIX "/%s/fp32", fams[f]);
    if (load_ids(fams[f], &ids)) { CHECK(0); continue; }
    const int B = (int)ids.shape[0], T = (int)ids.shape[1];
    int32_t *id = ids32(&ids);
    xd_teacher t;
    CHECK(xd_teacher_load(&t, dir, &e) == 0);
    xd_teacher_acts a;
    xd_teacher_acts_alloc(&a, &t.cfg, B * T, T);
    hook_ref_ud u = {.fam = fams[f]};
    CHECK(xd_teacher_forward(&t, &a, id, B, T, NULL, hook_ref_fn, &u, &e) == 0);
    CHECK(u.L == t.cfg.n_layers);
    for (int l = 0; l < u.L && l < 4; l++) {
      CHECKF(u.err_x[l] <= 1e-5 && u.err_a[l] <= 1e-5, "%s layer %d: x rel err %.3g, a rel err %.3g", fams[f], l,
             u.err_x[l], u.err_a[l]);
      fprintf(stderr, "  %-10s layer %d: x^l rel err %.2e, a^l rel err %.2e\n", fams[f], l, u.err_x[l], u.err_a[l]);
    }
    xd_teacher_acts_free(&a);
    xd_teacher_free(&t);
    free(id);
    xd_npy_free(&ids);
  }
}

/* The transformers-4.x dialect of each config parses to the same model as the v5 one. */
static void test_config_dialects(void) {
  const char *v4[] = {"llama-gqa", "llama3-rope", "llama-dynamic", "qwen2"};
  for (int i = 0; i < 4; i++) {
    char p5[256], p4[256];
    snprintf(p5, sizeof p5, FIX "/%s/fp32/config.json", v4[i]);
    snprintf(p4, sizeof p4, FIX "/%s/config_v4.json", v4[i]);
    xd_model_config c5, c4;
    xd_err e = {0};
    CHECK(xd_config_load(&c5, p5, &e) == 0);
    CHECK(xd_config_load(&c4, p4, &e) == 0);
    CHECKF(memcmp(&c5, &c4, sizeof c5) == 0, "%s: v4 and v5 configs parse differently", v4[i]);
  }
  /* the v4 file really is the other dialect */
  char *txt = NULL;
  size_t n;
  xd_err e = {0};
  CHECK(xd_read_file(FIX "/llama3-rope/config_v4.json", 1 << 20, &txt, &n, &e) == 0);
  CHECK(txt && strstr(txt, "\"rope_scaling\"") && strstr(txt, "\"torch_dtype\"") && !strstr(txt, "rope_parameters"));
  free(txt);
}

/* ---- broken checkpoints ---------------------------------------------------- */

static void copy_config(const char *src_dir, const char *dst_dir) {
  char s[512], d[512];
  xd_err e = {0};
  snprintf(s, sizeof s, "%s/config.json", src_dir);
  snprintf(d, sizeof d, "%s/config.json", dst_dir);
  CHECK(xd_copy_file(s, d, &e) == 0);
}

/* Rewrite model.safetensors of src into dst, dropping `drop` or reshaping `reshape` to [1, n]. */
static void rewrite_st(const char *src_dir, const char *dst_dir, const char *drop, const char *reshape) {
  xd_safetensors st;
  xd_err e = {0};
  CHECK(xd_st_open(&st, src_dir, &e) == 0);
  xd_st_entry *ents = calloc((size_t)st.ntensors, sizeof *ents);
  int n = 0;
  for (int i = 0; i < st.ntensors; i++) {
    const xd_st_tensor *t = &st.tensors[i];
    if (drop && !strcmp(t->name, drop)) continue;
    xd_st_entry *en = &ents[n++];
    en->name = t->name; en->dtype = t->dtype; en->ndim = t->ndim; en->data = t->data;
    memcpy(en->shape, t->shape, sizeof en->shape);
    if (reshape && !strcmp(t->name, reshape)) { en->ndim = 2; en->shape[0] = 1; en->shape[1] = (int64_t)t->nelem; }
  }
  char p[512];
  snprintf(p, sizeof p, "%s/model.safetensors", dst_dir);
  CHECK(xd_st_write(p, ents, n, NULL, NULL, 0, &e) == 0);
  free(ents);
  xd_st_close(&st);
}

static void expect_load_error(const char *dir, const char *want1, const char *want2) {
  xd_teacher t;
  xd_err e = {0};
  CHECK(xd_teacher_load(&t, dir, &e) == -1);
  CHECKF(strstr(e.msg, want1) && (!want2 || strstr(e.msg, want2)) && !strchr(e.msg, '\n'), "got: %s", e.msg);
}

static void test_bad_checkpoints(void) {
  const char *src = FIX "/qwen3/fp32";
  const char *base = test_tmpdir("teacher");
  char d[512], p[600];
  xd_err e = {0};
  snprintf(d, sizeof d, "%s/missing", base);
  CHECK(xd_mkdir_p(d, &e) == 0);
  copy_config(src, d);
  rewrite_st(src, d, "model.layers.1.self_attn.k_norm.weight", NULL);
  expect_load_error(d, "missing tensor 'model.layers.1.self_attn.k_norm.weight'", "model.safetensors");

  snprintf(d, sizeof d, "%s/shape", base);
  CHECK(xd_mkdir_p(d, &e) == 0);
  copy_config(src, d);
  rewrite_st(src, d, NULL, "model.layers.0.mlp.up_proj.weight");
  expect_load_error(d, "tensor 'model.layers.0.mlp.up_proj.weight' has shape [1,3072], expected [64,48]", "model.safetensors");

  snprintf(d, sizeof d, "%s/json", base);
  CHECK(xd_mkdir_p(d, &e) == 0);
  snprintf(p, sizeof p, "%s/config.json", d);
  CHECK(xd_write_file_atomic(p, "{\"model_type\": \"llama\", \"hidden_size\": 64,", 41, &e) == 0);
  expect_load_error(d, "config.json: not valid JSON", NULL);

  CHECK(xd_write_file_atomic(p, "{\"model_type\": \"gpt2\", \"hidden_size\": 64}", 41, &e) == 0);
  expect_load_error(d, "config.json: unsupported model_type 'gpt2' (supported: llama, qwen2, qwen3, olmo2, olmo3)", NULL);

  snprintf(d, sizeof d, "%s/noweights", base);
  CHECK(xd_mkdir_p(d, &e) == 0);
  copy_config(src, d);
  expect_load_error(d, "no model.safetensors", NULL);
}

/* The same weights stored as F16 and split over two shards with model.safetensors.index.json
 * (written here from the fp32 fixture) give the fp32 logits: exactly for the sharded F32 copy,
 * within f16 rounding (2^-11 relative per weight) for the F16 copy. */
static void test_f16_and_shards(void) {
  const char *fam = "llama-mha-bias";
  char src[256];
  snprintf(src, sizeof src, FIX "/%s/fp32", fam);
  xd_safetensors st;
  xd_err e = {0};
  CHECK(xd_st_open(&st, src, &e) == 0);
  const char *base = test_tmpdir("teacher-f16");
  char d16[512], dsh[512], p[600];
  snprintf(d16, sizeof d16, "%s/f16", base);
  snprintf(dsh, sizeof dsh, "%s/sharded", base);
  CHECK(xd_mkdir_p(d16, &e) == 0 && xd_mkdir_p(dsh, &e) == 0);
  copy_config(src, d16);
  copy_config(src, dsh);
  xd_st_entry *ents = calloc((size_t)st.ntensors, sizeof *ents);
  uint16_t **halves = calloc((size_t)st.ntensors, sizeof *halves);
  for (int i = 0; i < st.ntensors; i++) {
    const xd_st_tensor *t = &st.tensors[i];
    CHECK(t->dtype == XD_DT_F32);
    halves[i] = malloc(t->nelem * sizeof(uint16_t));
    const float *f = (const float *)t->data;
    for (size_t j = 0; j < t->nelem; j++) halves[i][j] = xd_f32_to_f16(f[j]);
    ents[i] = (xd_st_entry){.name = t->name, .dtype = XD_DT_F16, .ndim = t->ndim, .data = halves[i]};
    memcpy(ents[i].shape, t->shape, sizeof ents[i].shape);
  }
  snprintf(p, sizeof p, "%s/model.safetensors", d16);
  CHECK(xd_st_write(p, ents, st.ntensors, NULL, NULL, 0, &e) == 0);
  /* two F32 shards + index */
  const int half = st.ntensors / 2;
  cJSON *idx = cJSON_CreateObject(), *wm = cJSON_AddObjectToObject(idx, "weight_map");
  for (int i = 0; i < st.ntensors; i++) {
    ents[i].dtype = XD_DT_F32;
    ents[i].data = st.tensors[i].data;
    cJSON_AddStringToObject(wm, ents[i].name, i < half ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors");
  }
  snprintf(p, sizeof p, "%s/model-00001-of-00002.safetensors", dsh);
  CHECK(xd_st_write(p, ents, half, NULL, NULL, 0, &e) == 0);
  snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", dsh);
  CHECK(xd_st_write(p, ents + half, st.ntensors - half, NULL, NULL, 0, &e) == 0);
  char *js = cJSON_Print(idx);
  snprintf(p, sizeof p, "%s/model.safetensors.index.json", dsh);
  CHECK(xd_write_file_atomic(p, js, strlen(js), &e) == 0);
  free(js);
  cJSON_Delete(idx);
  for (int i = 0; i < st.ntensors; i++) free(halves[i]);
  free(halves);
  free(ents);
  xd_st_close(&st);

  xd_npy ids;
  if (load_ids(fam, &ids)) { CHECK(0); return; }
  const int B = (int)ids.shape[0], T = (int)ids.shape[1];
  int32_t *id = ids32(&ids);
  xd_teacher t;
  float *lg = run_forward(d16, id, B, T, &t);
  CHECK(lg != NULL);
  if (lg) {
    const double err = compare_ref(lg, fam, "logits_f64.npy", (size_t)B * T * t.cfg.vocab);
    fprintf(stderr, "  f16 weights: rel err %.2e vs the fp32-weight reference\n", err);
    CHECKF(err <= 2e-3 && err > 1e-6, "f16 weights: rel err %.3g", err);
    xd_teacher_free(&t);
    free(lg);
  }
  lg = run_forward(dsh, id, B, T, &t);
  CHECK(lg != NULL);
  if (lg) {
    const double err = compare_ref(lg, fam, "logits_f64.npy", (size_t)B * T * t.cfg.vocab);
    CHECKF(err <= TOL_F32, "sharded: rel err %.3g", err);
    xd_teacher_free(&t);
    free(lg);
  }
  free(id);
  xd_npy_free(&ids);
}

/* `xdistill generate` prints the same continuation as transformers (via the real binary). */
static void test_cli_generate(void) {
  const char *bin = getenv("XD_BIN");
  if (!bin) SKIP("XD_BIN not set");
  xd_npy g;
  xd_err e = {0};
  CHECK(xd_npy_read(FIX "/olmo3/greedy.npy", &g, &e) == 0);
  const int B = (int)g.shape[0], total = (int)g.shape[1], T = 12;
  int32_t *want = ids32(&g);
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "%s generate --model " FIX "/olmo3/fp32 --ids " FIX "/olmo3/ids.npy --max-new %d --ignore-eos", bin, total - T);
  FILE *fp = popen(cmd, "r");
  CHECK(fp != NULL);
  int bad = 0, n = 0;
  for (int b = 0; fp && b < B; b++)
    for (int s = T; s < total; s++, n++) {
      int v = -1;
      if (fscanf(fp, "%d", &v) != 1 || v != want[b * total + s]) bad++;
    }
  CHECK(fp && pclose(fp) == 0);
  CHECKF(bad == 0 && n == B * (total - T), "%d of %d generated ids differ", bad, n);
  free(want);
  xd_npy_free(&g);
}

int main(void) {
  struct stat s;
  if (stat(FIX, &s) != 0) { fprintf(stderr, "[skip] fixtures %s absent\n", FIX); return 0; }
  RUN(test_fp32_logits); /* default threading: OpenBLAS threads its own calls */
  xd_set_threads(2);     /* then the CLI's policy: OpenMP threads, 1-thread BLAS per block */
  RUN(test_fp32_logits);
  RUN(test_bf16_logits);
  RUN(test_greedy);
  RUN(test_prefill_decode);
  RUN(test_hooks_and_batch);
  RUN(test_hooks_vs_transformers);
  RUN(test_config_dialects);
  RUN(test_bad_checkpoints);
  RUN(test_f16_and_shards);
  RUN(test_cli_generate);
  return test_finish();
}
