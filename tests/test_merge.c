/* Stage III merge: exactness (one expert, identical experts), weighted average, refusals. */
#include "test.h"
#include "io/safetensors.h"
#include "merge/merge.h"

static void make_expert(const char *dir, uint64_t seed, int rows, const char *config, const char *tok) {
  xd_err e;
  xd_mkdir_p(dir, &e);
  xd_rng r;
  xd_rng_seed(&r, seed);
  float a[24];
  uint16_t b[8];
  for (int i = 0; i < 24; i++) a[i] = (float)xd_rng_normal(&r);
  for (int i = 0; i < 8; i++) b[i] = xd_f32_to_bf16((float)xd_rng_normal(&r));
  xd_st_entry ents[2] = {{"layer.a", XD_DT_F32, 2, {rows, 24 / rows}, a}, {"layer.b", XD_DT_BF16, 1, {8}, b}};
  char *p = xd_path_join(dir, "model.safetensors");
  xd_st_write(p, ents, 2, NULL, NULL, 0, &e);
  free(p);
  p = xd_path_join(dir, "config.json");
  xd_write_file_atomic(p, config, strlen(config), &e);
  free(p);
  p = xd_path_join(dir, "tokenizer.json");
  xd_write_file_atomic(p, tok, strlen(tok), &e);
  free(p);
}

static int same_weights(const char *d1, const char *d2) {
  xd_safetensors a, b;
  xd_err e;
  if (xd_st_open(&a, d1, &e) || xd_st_open(&b, d2, &e)) return 0;
  int same = a.ntensors == b.ntensors;
  for (int i = 0; same && i < a.ntensors; i++) {
    const xd_st_tensor *x = &a.tensors[i], *y = xd_st_find(&b, x->name);
    same = y && x->dtype == y->dtype && x->nbytes == y->nbytes && memcmp(x->data, y->data, x->nbytes) == 0;
  }
  xd_st_close(&a);
  xd_st_close(&b);
  return same;
}

static const char *CFG = "{\"model_type\":\"llama\",\"hidden_size\":8,\"transformers_version\":\"5.0\"}";
static const char *TOK = "{\"model\":{\"type\":\"BPE\"}}";

static void test_exact(void) {
  const char *root = test_tmpdir("merge");
  char a[600], b[600], out[600];
  snprintf(a, sizeof a, "%s/a", root);
  snprintf(b, sizeof b, "%s/b", root);
  make_expert(a, 1, 4, CFG, TOK);
  make_expert(b, 1, 4, "{\"model_type\":\"llama\",\"hidden_size\":8,\"transformers_version\":\"4.9\"}", TOK);
  xd_err e;
  snprintf(out, sizeof out, "%s/one", root);
  xd_merge_expert one[1] = {{a, 1.0}};
  CHECKF(xd_merge_run(one, 1, out, &e) == 0, "%s", e.msg);
  CHECK(same_weights(a, out));
  snprintf(out, sizeof out, "%s/two", root);
  xd_merge_expert two[2] = {{a, 0.3}, {b, 0.7}};
  CHECKF(xd_merge_run(two, 2, out, &e) == 0, "%s", e.msg);
  CHECK(same_weights(a, out));
  char *cfg = xd_path_join(out, "config.json"), *tok = xd_path_join(out, "tokenizer.json");
  CHECK(xd_file_exists(cfg) && xd_file_exists(tok));
  free(cfg);
  free(tok);
}

static void test_weighted(void) {
  const char *root = test_tmpdir("mergew");
  char a[600], b[600], out[600];
  snprintf(a, sizeof a, "%s/a", root);
  snprintf(b, sizeof b, "%s/b", root);
  snprintf(out, sizeof out, "%s/out", root);
  make_expert(a, 11, 4, CFG, TOK);
  make_expert(b, 22, 4, CFG, TOK);
  xd_err e;
  xd_merge_expert ex[2] = {{a, 1.0}, {b, 3.0}}; /* normalised to .25/.75 */
  CHECKF(xd_merge_run(ex, 2, out, &e) == 0, "%s", e.msg);
  xd_safetensors sa, sb, so;
  CHECK(xd_st_open(&sa, a, &e) == 0 && xd_st_open(&sb, b, &e) == 0 && xd_st_open(&so, out, &e) == 0);
  float fa[24], fb[24], fo[24];
  xd_st_load_f32(&sa, "layer.a", 2, (int64_t[]){4, 6}, fa, &e);
  xd_st_load_f32(&sb, "layer.a", 2, (int64_t[]){4, 6}, fb, &e);
  xd_st_load_f32(&so, "layer.a", 2, (int64_t[]){4, 6}, fo, &e);
  for (int i = 0; i < 24; i++) CHECK_REL(fo[i], 0.25 * fa[i] + 0.75 * fb[i], 1e-7, 1e-6);
  xd_st_load_f32(&sa, "layer.b", 1, (int64_t[]){8}, fa, &e);
  xd_st_load_f32(&sb, "layer.b", 1, (int64_t[]){8}, fb, &e);
  xd_st_load_f32(&so, "layer.b", 1, (int64_t[]){8}, fo, &e);
  CHECK(xd_st_find(&so, "layer.b")->dtype == XD_DT_BF16);
  for (int i = 0; i < 8; i++) CHECK_REL(fo[i], 0.25 * fa[i] + 0.75 * fb[i], 8e-3, 1e-3); /* bf16 rounding */
  xd_st_close(&sa);
  xd_st_close(&sb);
  xd_st_close(&so);
}

static void test_refusals(void) {
  const char *root = test_tmpdir("mergebad");
  char a[600], b[600], c[600], d[600], out[600];
  snprintf(a, sizeof a, "%s/a", root);
  snprintf(b, sizeof b, "%s/shape", root);
  snprintf(c, sizeof c, "%s/cfg", root);
  snprintf(d, sizeof d, "%s/tok", root);
  snprintf(out, sizeof out, "%s/out", root);
  make_expert(a, 1, 4, CFG, TOK);
  make_expert(b, 1, 3, CFG, TOK);
  make_expert(c, 1, 4, "{\"model_type\":\"llama\",\"hidden_size\":16}", TOK);
  make_expert(d, 1, 4, CFG, "{\"model\":{\"type\":\"WordPiece\"}}");
  xd_err e;
  xd_merge_expert s1[2] = {{a, 1}, {b, 1}}, s2[2] = {{a, 1}, {c, 1}}, s3[2] = {{a, 1}, {d, 1}};
  CHECK(xd_merge_run(s1, 2, out, &e) != 0 && strstr(e.msg, "different shape"));
  CHECK(xd_merge_run(s2, 2, out, &e) != 0 && strstr(e.msg, "architecture differs"));
  CHECK(xd_merge_run(s3, 2, out, &e) != 0 && strstr(e.msg, "tokenizer differs"));
  xd_merge_expert neg[2] = {{a, 1}, {a, -0.5}}, zero[2] = {{a, 0}, {a, 0}};
  CHECK(xd_merge_run(neg, 2, out, &e) != 0 && strstr(e.msg, "non-negative"));
  CHECK(xd_merge_run(zero, 2, out, &e) != 0 && strstr(e.msg, "sum to zero"));
  CHECK(!xd_is_dir(out)); /* nothing written on refusal */
}

int main(void) {
  RUN(test_exact);
  RUN(test_weighted);
  RUN(test_refusals);
  return test_finish();
}
