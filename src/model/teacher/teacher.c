#include "model/teacher/teacher.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "io/safetensors.h"
#include "ops/cpu/causal_attention.h"
#include "ops/cpu/embedding.h"
#include "ops/cpu/matmul.h"
#include "ops/cpu/rmsnorm.h"
#include "ops/cpu/rope.h"
#include "ops/cpu/swiglu.h"

/* ---- weights ------------------------------------------------------------- */

static void layer_free(xd_teacher_layer *L) {
  float *p[] = {L->attn_norm, L->wq, L->wk, L->wv, L->bq, L->bk, L->bv, L->q_norm, L->k_norm, L->wo, L->bo,
                L->attn_out_norm, L->mlp_norm, L->w_gate, L->w_up, L->w_down, L->b_gate, L->b_up, L->b_down,
                L->mlp_out_norm};
  for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) free(p[i]);
}

void xd_teacher_free(xd_teacher *t) {
  if (t->layers)
    for (int l = 0; l < t->cfg.n_layers; l++) layer_free(&t->layers[l]);
  free(t->layers);
  if (t->lm_head != t->embed) free(t->lm_head);
  free(t->embed);
  free(t->final_norm);
  memset(t, 0, sizeof *t);
}

/* Shape-checked load of one tensor into a fresh fp32 buffer; NULL (error set) on failure. */
static float *load1(const xd_safetensors *st, const char *name, int64_t d0, int64_t d1, xd_err *e) {
  const int ndim = d1 > 0 ? 2 : 1;
  const int64_t shape[2] = {d0, d1};
  float *buf = xd_malloc((size_t)d0 * (size_t)(d1 > 0 ? d1 : 1) * sizeof(float));
  if (xd_st_load_f32(st, name, ndim, shape, buf, e)) { free(buf); return NULL; }
  return buf;
}

/* Loads into *dst, returns -1 on error. */
static int ld(float **dst, const xd_safetensors *st, const char *prefix, const char *name, int64_t d0, int64_t d1,
              xd_err *e) {
  char full[256];
  snprintf(full, sizeof full, "%s%s", prefix, name);
  *dst = load1(st, full, d0, d1, e);
  return *dst ? 0 : -1;
}

static int load_layer(xd_teacher_layer *L, const xd_model_config *c, const xd_safetensors *st, int l, xd_err *e) {
  const int64_t D = c->hidden, F = c->intermediate, Hd = (int64_t)c->n_heads * c->head_dim,
                Gd = (int64_t)c->n_kv_heads * c->head_dim;
  char p[96];
  snprintf(p, sizeof p, "model.layers.%d.", l);
  if (!c->post_norm && ld(&L->attn_norm, st, p, "input_layernorm.weight", D, 0, e)) return -1;
  if (ld(&L->wq, st, p, "self_attn.q_proj.weight", Hd, D, e) || ld(&L->wk, st, p, "self_attn.k_proj.weight", Gd, D, e) ||
      ld(&L->wv, st, p, "self_attn.v_proj.weight", Gd, D, e) || ld(&L->wo, st, p, "self_attn.o_proj.weight", D, Hd, e))
    return -1;
  if (c->qkv_bias && (ld(&L->bq, st, p, "self_attn.q_proj.bias", Hd, 0, e) ||
                      ld(&L->bk, st, p, "self_attn.k_proj.bias", Gd, 0, e) ||
                      ld(&L->bv, st, p, "self_attn.v_proj.bias", Gd, 0, e)))
    return -1;
  if (c->o_bias && ld(&L->bo, st, p, "self_attn.o_proj.bias", D, 0, e)) return -1;
  if (c->qk_norm == XD_QKNORM_HEAD && (ld(&L->q_norm, st, p, "self_attn.q_norm.weight", c->head_dim, 0, e) ||
                                       ld(&L->k_norm, st, p, "self_attn.k_norm.weight", c->head_dim, 0, e)))
    return -1;
  if (c->qk_norm == XD_QKNORM_PROJ && (ld(&L->q_norm, st, p, "self_attn.q_norm.weight", Hd, 0, e) ||
                                       ld(&L->k_norm, st, p, "self_attn.k_norm.weight", Gd, 0, e)))
    return -1;
  if (c->post_norm) {
    if (ld(&L->attn_out_norm, st, p, "post_attention_layernorm.weight", D, 0, e) ||
        ld(&L->mlp_out_norm, st, p, "post_feedforward_layernorm.weight", D, 0, e))
      return -1;
  } else if (ld(&L->mlp_norm, st, p, "post_attention_layernorm.weight", D, 0, e)) {
    return -1;
  }
  if (ld(&L->w_gate, st, p, "mlp.gate_proj.weight", F, D, e) || ld(&L->w_up, st, p, "mlp.up_proj.weight", F, D, e) ||
      ld(&L->w_down, st, p, "mlp.down_proj.weight", D, F, e))
    return -1;
  if (c->mlp_bias && (ld(&L->b_gate, st, p, "mlp.gate_proj.bias", F, 0, e) ||
                      ld(&L->b_up, st, p, "mlp.up_proj.bias", F, 0, e) || ld(&L->b_down, st, p, "mlp.down_proj.bias", D, 0, e)))
    return -1;
  return 0;
}

int xd_teacher_load(xd_teacher *t, const char *dir, xd_err *e) {
  memset(t, 0, sizeof *t);
  if (xd_config_load(&t->cfg, dir, e)) return -1;
  const xd_model_config *c = &t->cfg;
  xd_safetensors st;
  if (xd_st_open(&st, dir, e)) return -1;
  t->layers = xd_calloc((size_t)c->n_layers, sizeof *t->layers);
  int rc = ld(&t->embed, &st, "", "model.embed_tokens.weight", c->vocab, c->hidden, e);
  if (!rc) rc = ld(&t->final_norm, &st, "", "model.norm.weight", c->hidden, 0, e);
  for (int l = 0; !rc && l < c->n_layers; l++) rc = load_layer(&t->layers[l], c, &st, l, e);
  if (!rc) {
    if (c->tie_embeddings) t->lm_head = t->embed;
    else rc = ld(&t->lm_head, &st, "", "lm_head.weight", c->vocab, c->hidden, e);
  }
  xd_st_close(&st);
  if (rc) xd_teacher_free(t);
  return rc;
}

static float *rand_buf(xd_rng *r, size_t n, float mean, float std) {
  float *p = xd_malloc(n * sizeof(float));
  for (size_t i = 0; i < n; i++) p[i] = mean + std * (float)xd_rng_normal(r);
  return p;
}

void xd_teacher_init_random(xd_teacher *t, const xd_model_config *c, uint64_t seed, float std) {
  memset(t, 0, sizeof *t);
  t->cfg = *c;
  xd_rng r;
  xd_rng_seed(&r, seed);
  const size_t D = c->hidden, F = c->intermediate, Hd = (size_t)c->n_heads * c->head_dim,
               Gd = (size_t)c->n_kv_heads * c->head_dim, V = c->vocab;
  t->embed = rand_buf(&r, V * D, 0, 1);
  t->final_norm = rand_buf(&r, D, 1, std);
  t->lm_head = c->tie_embeddings ? t->embed : rand_buf(&r, V * D, 0, std);
  t->layers = xd_calloc((size_t)c->n_layers, sizeof *t->layers);
  for (int l = 0; l < c->n_layers; l++) {
    xd_teacher_layer *L = &t->layers[l];
    if (!c->post_norm) { L->attn_norm = rand_buf(&r, D, 1, std); L->mlp_norm = rand_buf(&r, D, 1, std); }
    else { L->attn_out_norm = rand_buf(&r, D, 1, std); L->mlp_out_norm = rand_buf(&r, D, 1, std); }
    L->wq = rand_buf(&r, Hd * D, 0, std); L->wk = rand_buf(&r, Gd * D, 0, std);
    L->wv = rand_buf(&r, Gd * D, 0, std); L->wo = rand_buf(&r, D * Hd, 0, std);
    if (c->qkv_bias) { L->bq = rand_buf(&r, Hd, 0, std); L->bk = rand_buf(&r, Gd, 0, std); L->bv = rand_buf(&r, Gd, 0, std); }
    if (c->o_bias) L->bo = rand_buf(&r, D, 0, std);
    if (c->qk_norm == XD_QKNORM_HEAD) { L->q_norm = rand_buf(&r, c->head_dim, 1, std); L->k_norm = rand_buf(&r, c->head_dim, 1, std); }
    if (c->qk_norm == XD_QKNORM_PROJ) { L->q_norm = rand_buf(&r, Hd, 1, std); L->k_norm = rand_buf(&r, Gd, 1, std); }
    L->w_gate = rand_buf(&r, F * D, 0, std); L->w_up = rand_buf(&r, F * D, 0, std); L->w_down = rand_buf(&r, D * F, 0, std);
    if (c->mlp_bias) { L->b_gate = rand_buf(&r, F, 0, std); L->b_up = rand_buf(&r, F, 0, std); L->b_down = rand_buf(&r, D, 0, std); }
  }
}

/* ---- rope tables ---------------------------------------------------------- */

void xd_rope_tables_alloc(xd_rope_tables *r, const xd_model_config *c, int n_pos) {
  memset(r, 0, sizeof *r);
  r->n_pos = n_pos;
  r->half = c->head_dim / 2;
  r->inv_freq = xd_malloc((size_t)r->half * sizeof(float));
  for (int i = 0; i < 2; i++) {
    r->cos[i] = xd_malloc((size_t)n_pos * r->half * sizeof(float));
    r->sin[i] = xd_malloc((size_t)n_pos * r->half * sizeof(float));
  }
  r->seq_len = -1;
  xd_rope_tables_update(r, c, n_pos);
}

void xd_rope_tables_update(xd_rope_tables *r, const xd_model_config *c, int seq_len) {
  XD_CHECK(seq_len <= r->n_pos);
  const int dynamic = c->rope[0].kind == XD_ROPE_DYNAMIC || c->rope[1].kind == XD_ROPE_DYNAMIC;
  if (r->seq_len >= 0 && (!dynamic || r->seq_len == seq_len)) return;
  /* dynamic: only positions < seq_len are read until the next update (decoding rebuilds the
   * table every step, so keep that O(seq_len)) */
  const int n = dynamic ? seq_len : r->n_pos;
  for (int i = 0; i < 2; i++) {
    float scaling;
    rope_inv_freq(&c->rope[i], c->head_dim, c->max_pos, seq_len, r->inv_freq, &scaling);
    rope_table(r->cos[i], r->sin[i], r->inv_freq, scaling, n, r->half);
  }
  r->seq_len = seq_len;
}

void xd_rope_tables_free(xd_rope_tables *r) {
  free(r->inv_freq);
  for (int i = 0; i < 2; i++) { free(r->cos[i]); free(r->sin[i]); }
  memset(r, 0, sizeof *r);
}

/* ---- activations ------------------------------------------------------------ */

void xd_teacher_acts_alloc(xd_teacher_acts *a, const xd_model_config *c, int rows, int max_keys) {
  memset(a, 0, sizeof *a);
  a->rows = rows;
  a->max_keys = max_keys;
  const size_t N = rows, D = c->hidden, F = c->intermediate, Hd = (size_t)c->n_heads * c->head_dim,
               Gd = (size_t)c->n_kv_heads * c->head_dim;
  a->h = xd_aligned_alloc(N * D * sizeof(float));
  a->x = xd_aligned_alloc(N * D * sizeof(float));
  a->q_raw = xd_aligned_alloc(N * Hd * sizeof(float));
  a->k_raw = xd_aligned_alloc(N * Gd * sizeof(float));
  a->v_raw = xd_aligned_alloc(N * Gd * sizeof(float));
  a->q = xd_aligned_alloc(N * Hd * sizeof(float));
  a->k = xd_aligned_alloc(N * Gd * sizeof(float));
  a->att = xd_aligned_alloc(N * Hd * sizeof(float));
  a->tmp = xd_aligned_alloc(N * D * sizeof(float));
  a->gate = xd_aligned_alloc(N * F * sizeof(float));
  a->up = xd_aligned_alloc(N * F * sizeof(float));
  /* attention score blocks for up to `rows` queries against max_keys keys, one per thread */
  const causal_attention_dims ad = {.B = 1, .Tq = rows, .Tk = max_keys, .H = c->n_heads, .G = c->n_kv_heads, .d = c->head_dim};
  a->scores_floats = causal_attention_scratch(&ad);
  a->scores = xd_aligned_alloc(a->scores_floats * sizeof(float));
  a->pos = xd_malloc(N * sizeof(int));
  xd_rope_tables_alloc(&a->rope, c, max_keys);
}

void xd_teacher_acts_free(xd_teacher_acts *a) {
  float *p[] = {a->h, a->x, a->q_raw, a->k_raw, a->v_raw, a->q, a->k, a->att, a->tmp, a->gate, a->up, a->scores};
  for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) free(p[i]);
  free(a->pos);
  xd_rope_tables_free(&a->rope);
  memset(a, 0, sizeof *a);
}

/* ---- one layer ------------------------------------------------------------ */

#define XD_TWIN_BODY "model/teacher/teacher_layer_impl.inc"
#include "ops/cpu/twin.h"

static void add_inplace(float *h, const float *t, size_t n) {
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++) h[i] += t[i];
}

void xd_teacher_layer_out(const xd_model_config *c, const xd_teacher_layer *L, int N, const float *a, float *h,
                          float *tmp, float *gate, float *up) {
  const int D = c->hidden, F = c->intermediate, Hd = c->n_heads * c->head_dim;
  const float eps = (float)c->rms_eps;
  const size_t ND = (size_t)N * D;
  matmul_forward(tmp, a, L->wo, L->bo, N, Hd, D);
  if (c->post_norm) rmsnorm_forward(tmp, NULL, tmp, L->attn_out_norm, N, D, eps);
  add_inplace(h, tmp, ND);
  const float *xin = h;
  if (!c->post_norm) { rmsnorm_forward(tmp, NULL, h, L->mlp_norm, N, D, eps); xin = tmp; }
  matmul_forward(gate, xin, L->w_gate, L->b_gate, N, D, F);
  matmul_forward(up, xin, L->w_up, L->b_up, N, D, F);
  swiglu_forward(gate, gate, up, (size_t)N * F);
  matmul_forward(tmp, gate, L->w_down, L->b_down, N, F, D);
  if (c->post_norm) rmsnorm_forward(tmp, NULL, tmp, L->mlp_out_norm, N, D, eps);
  add_inplace(h, tmp, ND);
}

/* ---- model ------------------------------------------------------------------ */

/* Shared body: Tn new tokens per row at positions off..off+Tn-1. With a cache, k/v go into it and
 * attention reads it; without, attention reads the activation buffers directly. */
static void forward_body(const xd_teacher *t, xd_teacher_acts *a, xd_kv_cache *kv, const int32_t *ids, int B, int Tn,
                         float *logits, int last_only, xd_layer_hook hook, void *user) {
  const xd_model_config *c = &t->cfg;
  const int D = c->hidden, H = c->n_heads, G = c->n_kv_heads, d = c->head_dim, V = c->vocab, N = B * Tn;
  const int off = kv ? kv->len : 0, Tk = off + Tn;
  for (int b = 0; b < B; b++)
    for (int i = 0; i < Tn; i++) a->pos[b * Tn + i] = off + i;
  xd_rope_tables_update(&a->rope, c, Tk);
  embedding_forward(a->h, ids, t->embed, N, D);
  for (int l = 0; l < c->n_layers; l++) {
    const xd_teacher_layer *L = &t->layers[l];
    xd_teacher_layer_in(c, L, l, &a->rope, a->pos, N, a->h, a->x, a->q_raw, a->k_raw, a->v_raw, a->q, a->k);
    causal_attention_dims ad = {.B = B, .Tq = Tn, .Tk = Tk, .H = H, .G = G, .d = d, .q_offset = off,
                                .window = xd_config_layer_window(c, l)};
    const float *K = a->k, *Vv = a->v_raw;
    if (kv) {
      const size_t row = (size_t)G * d;
      for (int b = 0; b < B; b++) {
        memcpy(kv->k[l] + ((size_t)b * kv->cap + off) * row, a->k + (size_t)b * Tn * row, (size_t)Tn * row * sizeof(float));
        memcpy(kv->v[l] + ((size_t)b * kv->cap + off) * row, a->v_raw + (size_t)b * Tn * row, (size_t)Tn * row * sizeof(float));
      }
      K = kv->k[l];
      Vv = kv->v[l];
      ad.kv_bstride = (size_t)kv->cap * row;
    } else {
      ad.kv_bstride = (size_t)Tn * G * d;
    }
    causal_attention_forward(a->att, a->q, K, Vv, &ad, a->scores, a->scores_floats);
    if (hook) hook(l, a->x, a->att, N, user);
    xd_teacher_layer_out(c, L, N, a->att, a->h, a->tmp, a->gate, a->up);
  }
  if (kv) kv->len += Tn;
  if (!logits) return;
  if (last_only) { /* gather the last row of each sequence into tmp */
    for (int b = 0; b < B; b++) memcpy(a->x + (size_t)b * D, a->h + ((size_t)b * Tn + Tn - 1) * D, (size_t)D * sizeof(float));
    rmsnorm_forward(a->tmp, NULL, a->x, t->final_norm, B, D, (float)c->rms_eps);
    matmul_forward(logits, a->tmp, t->lm_head, NULL, B, D, V);
  } else {
    rmsnorm_forward(a->tmp, NULL, a->h, t->final_norm, N, D, (float)c->rms_eps);
    matmul_forward(logits, a->tmp, t->lm_head, NULL, N, D, V);
  }
}

int xd_teacher_forward(const xd_teacher *t, xd_teacher_acts *a, const int32_t *ids, int B, int T, float *logits,
                       xd_layer_hook hook, void *user, xd_err *e) {
  XD_CHECK(B > 0 && T > 0 && (size_t)B * T <= (size_t)a->rows && T <= a->max_keys);
  if (xd_check_token_ids(ids, (size_t)B * T, t->cfg.vocab, e)) return -1;
  forward_body(t, a, NULL, ids, B, T, logits, 0, hook, user);
  return 0;
}

void xd_kv_cache_alloc(xd_kv_cache *kv, const xd_model_config *c, int B, int cap) {
  memset(kv, 0, sizeof *kv);
  kv->n_layers = c->n_layers;
  kv->B = B;
  kv->cap = cap;
  kv->kvdim = c->n_kv_heads * c->head_dim;
  kv->k = xd_calloc((size_t)c->n_layers, sizeof(float *));
  kv->v = xd_calloc((size_t)c->n_layers, sizeof(float *));
  for (int l = 0; l < c->n_layers; l++) {
    kv->k[l] = xd_aligned_alloc((size_t)B * cap * kv->kvdim * sizeof(float));
    kv->v[l] = xd_aligned_alloc((size_t)B * cap * kv->kvdim * sizeof(float));
    /* keys past len are never read (masked) but keep them defined for sgemm */
    memset(kv->k[l], 0, (size_t)B * cap * kv->kvdim * sizeof(float));
    memset(kv->v[l], 0, (size_t)B * cap * kv->kvdim * sizeof(float));
  }
}

void xd_kv_cache_free(xd_kv_cache *kv) {
  for (int l = 0; l < kv->n_layers; l++) { free(kv->k[l]); free(kv->v[l]); }
  free(kv->k);
  free(kv->v);
  memset(kv, 0, sizeof *kv);
}

int xd_teacher_forward_cached(const xd_teacher *t, xd_teacher_acts *a, xd_kv_cache *kv, const int32_t *ids, int Tn,
                              float *logits, int last_only, xd_err *e) {
  XD_CHECK(Tn > 0 && (size_t)kv->B * Tn <= (size_t)a->rows && kv->cap <= a->max_keys);
  if (kv->len + Tn > kv->cap)
    return xd_errf(e, "KV cache full: %d tokens cached + %d new exceed its capacity %d", kv->len, Tn, kv->cap);
  if (xd_check_token_ids(ids, (size_t)kv->B * Tn, t->cfg.vocab, e)) return -1;
  forward_body(t, a, kv, ids, kv->B, Tn, logits, last_only, NULL, NULL);
  return 0;
}

static int is_eos(const xd_model_config *c, int id) {
  for (int i = 0; i < c->n_eos; i++)
    if (c->eos_token_ids[i] == id) return 1;
  return 0;
}

int xd_teacher_generate(const xd_teacher *t, const int32_t *ids, int B, int T, int max_new, int stop_at_eos,
                        int32_t *out, int *n_out, xd_err *e) {
  const xd_model_config *c = &t->cfg;
  const int V = c->vocab, total = T + max_new;
  if (xd_check_token_ids(ids, (size_t)B * T, V, e)) return -1;
  xd_kv_cache kv;
  xd_teacher_acts a;
  xd_kv_cache_alloc(&kv, c, B, total);
  xd_teacher_acts_alloc(&a, c, B * T, total);
  float *logits = xd_malloc((size_t)B * V * sizeof(float));
  int32_t *step = xd_malloc((size_t)B * sizeof(int32_t));
  int *done = xd_calloc((size_t)B, sizeof(int));
  for (int b = 0; b < B; b++) {
    memcpy(out + (size_t)b * total, ids + (size_t)b * T, (size_t)T * sizeof(int32_t));
    if (n_out) n_out[b] = total;
  }
  int rc = xd_teacher_forward_cached(t, &a, &kv, ids, T, logits, 1, e);
  for (int s = 0; !rc && s < max_new; s++) {
    for (int b = 0; b < B; b++) {
      const float *lr = logits + (size_t)b * V;
      int best = 0;
      for (int v = 1; v < V; v++)
        if (lr[v] > lr[best]) best = v;
      if (done[b]) best = out[(size_t)b * total + T + s - 1];
      step[b] = best;
      out[(size_t)b * total + T + s] = best;
      if (stop_at_eos && !done[b] && is_eos(c, best)) { done[b] = 1; if (n_out) n_out[b] = T + s + 1; }
    }
    if (s + 1 < max_new) rc = xd_teacher_forward_cached(t, &a, &kv, step, 1, logits, 1, e);
  }
  free(done);
  free(step);
  free(logits);
  xd_teacher_acts_free(&a);
  xd_kv_cache_free(&kv);
  return rc;
}
