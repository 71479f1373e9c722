/* The teacher on the GPU: see teacher_cuda.h. Host C driving the CUDA ops of src/ops/cuda. */
#include "model/teacher/teacher_cuda.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifndef XD_HAVE_CUDA

int xd_cuda_built(void) { return 0; }
int xd_teacher_cuda_forward_dir(const char *dir, const int32_t *ids, int B, int T, float *logits, xd_err *e) {
  (void)dir, (void)ids, (void)B, (void)T, (void)logits;
  return xd_errf(e, "--device cuda: built without CUDA (configure with -DXD_CUDA=ON)");
}
int xd_teacher_cuda_generate_dir(const char *dir, const int32_t *ids, int B, int T, int max_new, int stop_at_eos,
                                 int32_t *out, int *n_out, xd_err *e) {
  (void)dir, (void)ids, (void)B, (void)T, (void)max_new, (void)stop_at_eos, (void)out, (void)n_out;
  return xd_errf(e, "--device cuda: built without CUDA (configure with -DXD_CUDA=ON)");
}

#else

int xd_cuda_built(void) { return 1; }

#define ALIGN 256
static size_t al(size_t b) { return (b + ALIGN - 1) / ALIGN * ALIGN; }

/* Carves aligned pieces out of one allocation; with base == NULL it only counts bytes. */
typedef struct {
  char *base;
  size_t off;
} carver;
static void *carve(carver *c, size_t bytes) {
  void *p = c->base ? c->base + c->off : NULL;
  c->off += al(bytes);
  return p;
}

static int is_flash_d(int d) { return d == 64 || d == 128; }

/* ---- weights ------------------------------------------------------------------------------ */

/* Lay out every weight (pointers into base; sizes only when base is NULL). */
static size_t layout_weights(xd_teacher_cuda *t, char *base) {
  const xd_model_config *c = &t->cfg;
  const size_t D = c->hidden, F = c->intermediate, Hd = (size_t)c->n_heads * c->head_dim,
               Gd = (size_t)c->n_kv_heads * c->head_dim, V = c->vocab, W = Hd + 2 * Gd, d = c->head_dim;
  carver cv = {base, 0};
#define B16(n) (uint16_t *)carve(&cv, (size_t)(n) * 2)
#define F32(n) (float *)carve(&cv, (size_t)(n) * 4)
  t->embed = B16(V * D);
  t->lm_head = c->tie_embeddings ? t->embed : B16(V * D);
  t->final_norm = B16(D);
  for (int l = 0; l < c->n_layers; l++) {
    xd_teacher_cuda_layer *L = &t->layers[l];
    memset(L, 0, sizeof *L);
    if (!c->post_norm) { L->attn_norm = B16(D); L->mlp_norm = B16(D); }
    else { L->attn_out_norm = B16(D); L->mlp_out_norm = B16(D); }
    L->w_qkv = B16(W * D);
    if (c->qkv_bias) L->b_qkv = B16(W);
    if (c->qk_norm == XD_QKNORM_HEAD) { L->q_norm = B16(d); L->k_norm = B16(d); }
    if (c->qk_norm == XD_QKNORM_PROJ) { L->q_norm = B16(Hd); L->k_norm = B16(Gd); }
    L->w_o = B16(D * Hd);
    if (c->o_bias) L->b_o = F32(D);
    L->w_gu = B16(2 * F * D);
    if (c->mlp_bias) { L->b_gu = B16(2 * F); L->b_down = F32(D); }
    L->w_down = B16(D * F);
  }
#undef B16
#undef F32
  return cv.off;
}

size_t xd_teacher_cuda_weight_bytes(const xd_model_config *c) {
  xd_teacher_cuda t;
  memset(&t, 0, sizeof t);
  t.cfg = *c;
  t.layers = xd_calloc((size_t)c->n_layers, sizeof *t.layers);
  const size_t b = layout_weights(&t, NULL);
  free(t.layers);
  return b;
}

/* Family features the GPU teacher does not handle: none today (checked so that a new CPU feature
 * fails here with one line rather than computing something else). */
static int check_supported(const xd_model_config *c, xd_err *e) {
  if (c->head_dim > 256 || c->head_dim % 2)
    return xd_errf(e, "%s: head_dim %d is not supported on the GPU (even, at most 256)", c->model_type, c->head_dim);
  if (c->n_heads % c->n_kv_heads)
    return xd_errf(e, "%s: %d heads are not a multiple of %d KV heads", c->model_type, c->n_heads, c->n_kv_heads);
  if (c->family != XD_FAMILY_LLAMA && c->family != XD_FAMILY_QWEN2 && c->family != XD_FAMILY_QWEN3 &&
      c->family != XD_FAMILY_OLMO2 && c->family != XD_FAMILY_OLMO3)
    return xd_errf(e, "%s: model family not supported on the GPU", c->model_type);
  return 0;
}

static int alloc_weights(xd_teacher_cuda *t, xd_cuda_ctx *ctx, const xd_model_config *c, xd_err *e) {
  memset(t, 0, sizeof *t);
  if (check_supported(c, e)) return -1;
  t->cfg = *c;
  t->ctx = ctx;
  t->qkv_w = (c->n_heads + 2 * c->n_kv_heads) * c->head_dim;
  t->layers = xd_calloc((size_t)c->n_layers, sizeof *t->layers);
  t->weight_bytes = layout_weights(t, NULL);
  if (xd_cuda_malloc(&t->arena, t->weight_bytes, e)) {
    xd_err_prefix(e, "GPU teacher weights (%.1f MiB)", t->weight_bytes / 1048576.0);
    free(t->layers);
    t->layers = NULL;
    return -1;
  }
  layout_weights(t, t->arena);
  return 0;
}

void xd_teacher_cuda_free(xd_teacher_cuda *t) {
  xd_cuda_free(t->arena);
  free(t->layers);
  memset(t, 0, sizeof *t);
}

/* Upload n fp32 values (from up to three host pieces, concatenated) as bf16. */
static int put_bf16(xd_cuda_ctx *ctx, uint16_t *dst, uint16_t *tmp, const float *a, size_t na, const float *b,
                    size_t nb, const float *c3, size_t nc, xd_err *e) {
  size_t o = 0;
  for (size_t i = 0; i < na; i++) tmp[o++] = xd_f32_to_bf16(a[i]);
  for (size_t i = 0; b && i < nb; i++) tmp[o++] = xd_f32_to_bf16(b[i]);
  for (size_t i = 0; c3 && i < nc; i++) tmp[o++] = xd_f32_to_bf16(c3[i]);
  /* the copy from pageable memory is staged before the call returns: tmp can be reused */
  return xd_cuda_upload(ctx, dst, tmp, o * 2, e);
}

int xd_teacher_cuda_upload(xd_teacher_cuda *t, xd_cuda_ctx *ctx, const xd_teacher *src, xd_err *e) {
  const xd_model_config *c = &src->cfg;
  if (alloc_weights(t, ctx, c, e)) return -1;
  const size_t D = c->hidden, F = c->intermediate, Hd = (size_t)c->n_heads * c->head_dim,
               Gd = (size_t)c->n_kv_heads * c->head_dim, V = c->vocab, d = c->head_dim;
  size_t big = V * D;
  if (2 * F * D > big) big = 2 * F * D;
  if ((Hd + 2 * Gd) * D > big) big = (Hd + 2 * Gd) * D;
  uint16_t *tmp = xd_malloc(big * 2);
  int rc = put_bf16(ctx, t->embed, tmp, src->embed, V * D, NULL, 0, NULL, 0, e);
  if (!rc && !c->tie_embeddings) rc = put_bf16(ctx, t->lm_head, tmp, src->lm_head, V * D, NULL, 0, NULL, 0, e);
  if (!rc) rc = put_bf16(ctx, t->final_norm, tmp, src->final_norm, D, NULL, 0, NULL, 0, e);
  for (int l = 0; !rc && l < c->n_layers; l++) {
    const xd_teacher_layer *S = &src->layers[l];
    xd_teacher_cuda_layer *L = &t->layers[l];
    if (L->attn_norm) rc = rc || put_bf16(ctx, L->attn_norm, tmp, S->attn_norm, D, NULL, 0, NULL, 0, e);
    if (L->mlp_norm) rc = rc || put_bf16(ctx, L->mlp_norm, tmp, S->mlp_norm, D, NULL, 0, NULL, 0, e);
    if (L->attn_out_norm) rc = rc || put_bf16(ctx, L->attn_out_norm, tmp, S->attn_out_norm, D, NULL, 0, NULL, 0, e);
    if (L->mlp_out_norm) rc = rc || put_bf16(ctx, L->mlp_out_norm, tmp, S->mlp_out_norm, D, NULL, 0, NULL, 0, e);
    rc = rc || put_bf16(ctx, L->w_qkv, tmp, S->wq, Hd * D, S->wk, Gd * D, S->wv, Gd * D, e);
    if (L->b_qkv) rc = rc || put_bf16(ctx, L->b_qkv, tmp, S->bq, Hd, S->bk, Gd, S->bv, Gd, e);
    if (c->qk_norm == XD_QKNORM_HEAD)
      rc = rc || put_bf16(ctx, L->q_norm, tmp, S->q_norm, d, NULL, 0, NULL, 0, e) ||
           put_bf16(ctx, L->k_norm, tmp, S->k_norm, d, NULL, 0, NULL, 0, e);
    if (c->qk_norm == XD_QKNORM_PROJ)
      rc = rc || put_bf16(ctx, L->q_norm, tmp, S->q_norm, Hd, NULL, 0, NULL, 0, e) ||
           put_bf16(ctx, L->k_norm, tmp, S->k_norm, Gd, NULL, 0, NULL, 0, e);
    rc = rc || put_bf16(ctx, L->w_o, tmp, S->wo, D * Hd, NULL, 0, NULL, 0, e);
    if (L->b_o) rc = rc || xd_cuda_upload(ctx, L->b_o, S->bo, D * 4, e);
    rc = rc || put_bf16(ctx, L->w_gu, tmp, S->w_gate, F * D, S->w_up, F * D, NULL, 0, e);
    if (L->b_gu) rc = rc || put_bf16(ctx, L->b_gu, tmp, S->b_gate, F, S->b_up, F, NULL, 0, e);
    if (L->b_down) rc = rc || xd_cuda_upload(ctx, L->b_down, S->b_down, D * 4, e);
    rc = rc || put_bf16(ctx, L->w_down, tmp, S->w_down, D * F, NULL, 0, NULL, 0, e);
  }
  if (!rc) rc = xd_cuda_sync(ctx, e);
  free(tmp);
  if (rc) xd_teacher_cuda_free(t);
  return rc;
}

int xd_teacher_cuda_init_random(xd_teacher_cuda *t, xd_cuda_ctx *ctx, const xd_model_config *c, uint64_t seed,
                                xd_err *e) {
  if (alloc_weights(t, ctx, c, e)) return -1;
  const size_t D = c->hidden, F = c->intermediate, Hd = (size_t)c->n_heads * c->head_dim,
               Gd = (size_t)c->n_kv_heads * c->head_dim, V = c->vocab, W = Hd + 2 * Gd;
  int rc = 0;
#define FILL(p, n, fan_in) \
  if (!rc && (p)) rc = xd_cuda_fill_uniform_bf16(ctx, (uint16_t *)(p), (n), seed++, (float)sqrt(3.0 / (double)(fan_in)), e)
  FILL(t->embed, V * D, 1);
  if (!c->tie_embeddings) FILL(t->lm_head, V * D, D);
  FILL(t->final_norm, D, 1);
  for (int l = 0; l < c->n_layers; l++) {
    xd_teacher_cuda_layer *L = &t->layers[l];
    FILL(L->attn_norm, D, 3);
    FILL(L->mlp_norm, D, 3);
    FILL(L->attn_out_norm, D, 3);
    FILL(L->mlp_out_norm, D, 3);
    FILL(L->w_qkv, W * D, D);
    FILL(L->b_qkv, W, 3 * (double)D);
    FILL(L->q_norm, c->qk_norm == XD_QKNORM_HEAD ? (size_t)c->head_dim : Hd, 3);
    FILL(L->k_norm, c->qk_norm == XD_QKNORM_HEAD ? (size_t)c->head_dim : Gd, 3);
    FILL(L->w_o, D * Hd, Hd);
    FILL(L->w_gu, 2 * F * D, D);
    FILL(L->b_gu, 2 * F, 3 * (double)D);
    FILL(L->w_down, D * F, F);
    if (!rc && L->b_o) rc = xd_cuda_memset(ctx, L->b_o, 0, D * 4, e);
    if (!rc && L->b_down) rc = xd_cuda_memset(ctx, L->b_down, 0, D * 4, e);
  }
#undef FILL
  if (!rc) rc = xd_cuda_sync(ctx, e);
  if (rc) xd_teacher_cuda_free(t);
  return rc;
}

/* ---- state: activations, KV cache, RoPE tables --------------------------------------------- */

static xd_cuda_decode_dims decode_dims(const xd_model_config *c, int B, int Tq, int off) {
  xd_cuda_decode_dims a;
  memset(&a, 0, sizeof a);
  a.B = B, a.Tq = Tq, a.H = c->n_heads, a.G = c->n_kv_heads, a.d = c->head_dim, a.q_offset = off;
  a.ldq = a.ldo = a.ldkv = c->n_heads * c->head_dim; /* strides do not change the workspace */
  return a;
}

static size_t ws_need(const xd_teacher_cuda *t, int B, int max_tn, int cap, int with_kv) {
  const xd_model_config *c = &t->cfg;
  size_t ws = 0;
  if (with_kv) { /* one-token decode at the last position */
    xd_cuda_decode_dims a = decode_dims(c, B, 1, cap - 1);
    ws = xd_cuda_attention_decode_ws(t->ctx, &a);
  }
  if (!is_flash_d(c->head_dim)) { /* full forward / prefill from 0 through the split kernel */
    xd_cuda_decode_dims a = decode_dims(c, B, max_tn, 0);
    size_t w2 = xd_cuda_attention_decode_ws(t->ctx, &a);
    if (w2 > ws) ws = w2;
    if (with_kv && B > 1) { /* one row's prefill of up to B * max_tn tokens (xd_teacher_cuda_prefill_row) */
      const int64_t n1 = (int64_t)B * max_tn < cap ? (int64_t)B * max_tn : cap;
      a = decode_dims(c, 1, (int)n1, 0);
      w2 = xd_cuda_attention_decode_ws(t->ctx, &a);
      if (w2 > ws) ws = w2;
    }
  }
  return ws;
}

/* Lays out the activations (sizes only when base is NULL). */
static size_t layout_acts(xd_teacher_cuda_state *s, const xd_teacher_cuda *t, char *base) {
  const xd_model_config *c = &t->cfg;
  const size_t N = (size_t)s->B * s->max_tn, D = c->hidden, F = c->intermediate,
               Hd = (size_t)c->n_heads * c->head_dim, half = c->head_dim / 2;
  carver cv = {base, 0};
  s->h = carve(&cv, N * D * 4);
  s->tmp = carve(&cv, N * D * 4);
  s->logits = carve(&cv, (size_t)s->logit_rows * c->vocab * 4);
  s->x = carve(&cv, N * D * 2);
  s->qkv = carve(&cv, N * t->qkv_w * 2);
  s->att = carve(&cv, N * Hd * 2);
  s->gu = carve(&cv, N * 2 * F * 2);
  s->act = carve(&cv, N * F * 2);
  s->ids = carve(&cv, N * 4);
  s->pos = carve(&cv, N * 4);
  s->next = carve(&cv, (size_t)s->B * 4);
  s->dstep = carve(&cv, (size_t)2 * s->B * 4);
  for (int i = 0; i < 2; i++) {
    s->cos[i] = carve(&cv, (size_t)s->cap * half * 4);
    s->sin[i] = carve(&cv, (size_t)s->cap * half * 4);
  }
  s->ws = carve(&cv, s->ws_bytes);
  return cv.off;
}

void xd_teacher_cuda_plan_of(const xd_teacher_cuda *t, int B, int max_tn, int cap, int logit_rows, int with_kv,
                             xd_teacher_cuda_plan *p) {
  const xd_model_config *c = &t->cfg;
  xd_teacher_cuda_state s;
  memset(&s, 0, sizeof s);
  s.B = B, s.max_tn = max_tn, s.cap = cap, s.logit_rows = logit_rows;
  s.ws_bytes = ws_need(t, B, max_tn, cap, with_kv);
  p->weights = t->weight_bytes;
  p->acts = layout_acts(&s, t, NULL);
  p->kv = with_kv ? (size_t)2 * c->n_layers * al((size_t)B * cap * c->n_kv_heads * c->head_dim * 2) : 0;
}

void xd_teacher_cuda_plan_print(const xd_teacher_cuda *t, const xd_teacher_cuda_plan *p, FILE *f) {
  char name[128] = "?";
  size_t fr = 0, tot = 0;
  xd_err e = {{0}};
  xd_cuda_device_info(t->ctx, name, sizeof name, NULL, &e);
  xd_cuda_mem_info(t->ctx, &fr, &tot, &e);
  const double M = 1048576.0;
  fprintf(f, "cuda: %s: memory plan: weights %.1f MiB (bf16), KV cache %.1f MiB, activations %.1f MiB, total %.1f MiB "
          "(device: %.0f MiB free of %.0f)\n", name, p->weights / M, p->kv / M, p->acts / M,
          (p->weights + p->kv + p->acts) / M, fr / M, tot / M);
}

static int upload_rope_rows(xd_teacher_cuda_state *s, int r0, int r1, xd_err *e) {
  const int half = s->rope.half;
  for (int i = 0; i < 2; i++) {
    const size_t o = (size_t)r0 * half, n = (size_t)(r1 - r0) * half * 4;
    if (xd_cuda_upload(s->ctx, s->cos[i] + o, s->rope.cos[i] + o, n, e) ||
        xd_cuda_upload(s->ctx, s->sin[i] + o, s->rope.sin[i] + o, n, e))
      return -1;
  }
  return 0;
}

int xd_teacher_cuda_state_alloc(xd_teacher_cuda_state *s, const xd_teacher_cuda *t, int B, int max_tn, int cap,
                                int logit_rows, int with_kv, xd_err *e) {
  const xd_model_config *c = &t->cfg;
  memset(s, 0, sizeof *s);
  if (B <= 0 || max_tn <= 0 || cap < max_tn || logit_rows <= 0)
    return xd_errf(e, "GPU teacher: bad state sizes B %d, tokens %d, capacity %d, logit rows %d", B, max_tn, cap, logit_rows);
  s->B = B, s->max_tn = max_tn, s->cap = cap, s->logit_rows = logit_rows, s->with_kv = with_kv;
  s->ctx = t->ctx;
  s->ws_bytes = ws_need(t, B, max_tn, cap, with_kv);
  s->act_bytes = layout_acts(s, t, NULL);
  if (xd_cuda_malloc(&s->act_arena, s->act_bytes, e)) {
    xd_err_prefix(e, "GPU teacher activations (%.1f MiB)", s->act_bytes / 1048576.0);
    return -1;
  }
  layout_acts(s, t, s->act_arena);
  const size_t per = al((size_t)B * cap * c->n_kv_heads * c->head_dim * 2);
  s->k = xd_calloc((size_t)c->n_layers, sizeof *s->k);
  s->v = xd_calloc((size_t)c->n_layers, sizeof *s->v);
  if (with_kv) {
    s->kv_bytes = 2 * per * c->n_layers;
    if (xd_cuda_malloc(&s->kv_arena, s->kv_bytes, e)) {
      xd_err_prefix(e, "GPU teacher KV cache (%.1f MiB)", s->kv_bytes / 1048576.0);
      xd_teacher_cuda_state_free(s);
      return -1;
    }
    for (int l = 0; l < c->n_layers; l++) {
      s->k[l] = (uint16_t *)((char *)s->kv_arena + (2 * (size_t)l) * per);
      s->v[l] = (uint16_t *)((char *)s->kv_arena + (2 * (size_t)l + 1) * per);
    }
  }
  s->host_pos = xd_malloc((size_t)B * max_tn * sizeof(int32_t));
  s->host_step = xd_malloc((size_t)2 * B * sizeof(int32_t));
  s->lens = xd_calloc((size_t)B, sizeof *s->lens);
  xd_rope_tables_alloc(&s->rope, c, cap);
  if (upload_rope_rows(s, 0, cap, e) || xd_cuda_sync(t->ctx, e)) {
    xd_teacher_cuda_state_free(s);
    return -1;
  }
  return 0;
}

void xd_teacher_cuda_state_free(xd_teacher_cuda_state *s) {
  xd_cuda_free(s->act_arena);
  xd_cuda_free(s->kv_arena);
  free(s->k);
  free(s->v);
  free(s->host_pos);
  free(s->host_step);
  free(s->lens);
  xd_cuda_graph_free(s->graph);
  if (s->rope.inv_freq) xd_rope_tables_free(&s->rope);
  memset(s, 0, sizeof *s);
}

void xd_teacher_cuda_reset(xd_teacher_cuda_state *s) { s->len = 0, s->ragged = 0; }

/* ---- forward ----------------------------------------------------------------------------- */

static int is_dynamic(const xd_model_config *c) {
  return c->rope[0].kind == XD_ROPE_DYNAMIC || c->rope[1].kind == XD_ROPE_DYNAMIC;
}

/* last_only: 0 logits of every row, 1 of each sequence's last, HEAD_NONE none (the final norm's
 * output in s->x only: xd_teacher_cuda_head_rows makes the logits). */
enum { HEAD_NONE = 2 };

/* The host side of a step: checks, then the uploads: ids and positions (host offsets), or with
 * at (a one-token step that reads its positions on the device) {lens[B], ids[B]} into s->dstep
 * (every row at len, or with ragged at its own lens[b]). */
static int body_prep(const xd_teacher_cuda *t, xd_teacher_cuda_state *s, const int32_t *ids, int B, int Tn,
                     int use_kv, int last_only, int at, xd_err *e) {
  const xd_model_config *c = &t->cfg;
  xd_cuda_ctx *ctx = t->ctx;
  const int N = B * Tn, off = use_kv ? s->len : 0;
  int Tk = off + Tn;
  if (at && s->ragged)
    for (int b = 0; b < B; b++) Tk = s->lens[b] + Tn > Tk ? s->lens[b] + Tn : Tk;
  if ((size_t)N > (size_t)s->B * s->max_tn)
    return xd_errf(e, "GPU teacher: %d x %d tokens exceed the %d x %d the activations hold", B, Tn, s->B, s->max_tn);
  if (Tk > s->cap)
    return xd_errf(e, "GPU teacher: %d tokens cached + %d new exceed the capacity %d", Tk - Tn, Tn, s->cap);
  if (last_only != HEAD_NONE && (last_only ? B : N) > s->logit_rows)
    return xd_errf(e, "GPU teacher: %d logit rows exceed the %d allocated", last_only ? B : N, s->logit_rows);
  if (xd_check_token_ids(ids, (size_t)N, c->vocab, e)) return -1;
  if (at) {
    for (int b = 0; b < B; b++) s->host_step[b] = s->ragged ? s->lens[b] : off;
    memcpy(s->host_step + B, ids, (size_t)B * sizeof(int32_t));
    return xd_cuda_upload(ctx, s->dstep, s->host_step, (size_t)2 * B * sizeof(int32_t), e);
  }
  for (int b = 0; b < B; b++)
    for (int i = 0; i < Tn; i++) s->host_pos[b * Tn + i] = off + i;
  if (xd_cuda_upload(ctx, s->ids, ids, (size_t)N * 4, e) || xd_cuda_upload(ctx, s->pos, s->host_pos, (size_t)N * 4, e))
    return -1;
  if (is_dynamic(c)) { /* tables depend on the length: rebuilt for Tk, rows of the new positions sent */
    xd_rope_tables_update(&s->rope, c, Tk);
    if (upload_rope_rows(s, off, Tk, e)) return -1;
  }
  return 0;
}

/* The kernels of a step (after body_prep): with at, every position is read from s->dstep on
 * the device and nothing depends on the host's offset, so the sequence can be captured as a
 * CUDA graph and replayed at any position (the attention's grid and workspace sized for cap). */
static int body_kernels(const xd_teacher_cuda *t, xd_teacher_cuda_state *s, int B, int Tn, int use_kv,
                        int last_only, int at, xd_err *e) {
  const xd_model_config *c = &t->cfg;
  xd_cuda_ctx *ctx = t->ctx;
  const int D = c->hidden, H = c->n_heads, G = c->n_kv_heads, d = c->head_dim, F = c->intermediate, V = c->vocab;
  const int N = B * Tn, W = t->qkv_w, off = use_kv ? s->len : 0;
  const float eps = (float)c->rms_eps;
  const int32_t *ids_d = at ? s->dstep + B : s->ids;
  if (at && xd_cuda_positions_at(ctx, s->pos, s->dstep, 1, B, Tn, e)) return -1;
  /* embedding (bf16 rows) -> fp32 residual */
  if (xd_cuda_embedding_forward(ctx, s->x, ids_d, t->embed, N, D, V, e) ||
      xd_cuda_bf16_to_f32(ctx, s->h, s->x, (size_t)N * D, e))
    return -1;
  for (int l = 0; l < c->n_layers; l++) {
    const xd_teacher_cuda_layer *L = &t->layers[l];
    const int kind = c->layer_sliding[l], window = xd_config_layer_window(c, l);
    uint16_t *q = s->qkv, *k = s->qkv + (size_t)H * d, *v = s->qkv + (size_t)(H + G) * d;
    if (c->post_norm ? xd_cuda_f32_to_bf16(ctx, s->x, s->h, (size_t)N * D, e)
                     : xd_cuda_rmsnorm_f32_forward(ctx, s->x, s->h, D, L->attn_norm, N, D, eps, e))
      return -1;
    if (xd_cuda_matmul(ctx, s->qkv, XD_CUDA_BF16, s->x, L->w_qkv, L->b_qkv, N, D, W, 0, e)) return -1;
    if (c->qk_norm == XD_QKNORM_HEAD &&
        (xd_cuda_rmsnorm_segments(ctx, q, W, N, H, d, L->q_norm, eps, e) ||
         xd_cuda_rmsnorm_segments(ctx, k, W, N, G, d, L->k_norm, eps, e)))
      return -1;
    if (c->qk_norm == XD_QKNORM_PROJ &&
        (xd_cuda_rmsnorm_segments(ctx, q, W, N, 1, H * d, L->q_norm, eps, e) ||
         xd_cuda_rmsnorm_segments(ctx, k, W, N, 1, G * d, L->k_norm, eps, e)))
      return -1;
    if (xd_cuda_rope_forward(ctx, q, W, s->cos[kind], s->sin[kind], s->pos, N, H, d, e) ||
        xd_cuda_rope_forward(ctx, k, W, s->cos[kind], s->sin[kind], s->pos, N, G, d, e))
      return -1;
    if (at) {
      if (xd_cuda_kv_append_at(ctx, s->k[l], s->v[l], k, v, W, B, Tn, G * d, s->cap, s->dstep, 1, e)) return -1;
    } else if (use_kv && xd_cuda_kv_append(ctx, s->k[l], s->v[l], k, v, W, B, Tn, G * d, s->cap, off, e)) {
      return -1;
    }
    if (!at && off == 0 && is_flash_d(d)) {
      xd_cuda_attn_dims a = {B, Tn, H, G, d, window, 0, W, W, W, H * d};
      if (xd_cuda_attention_forward(ctx, s->att, NULL, q, k, v, &a, e)) return -1;
    } else {
      xd_cuda_decode_dims a = decode_dims(c, B, Tn, off);
      a.window = window, a.ldq = W, a.ldo = H * d;
      const uint16_t *kk = k, *vv = v;
      if (use_kv) a.ldkv = G * d, a.kv_bstride = (size_t)s->cap * G * d, kk = s->k[l], vv = s->v[l];
      else a.ldkv = W, a.kv_bstride = (size_t)Tn * W;
      if (at) a.off_dev = s->dstep, a.max_keys = s->cap, a.off_per_seq = 1;
      if (xd_cuda_attention_decode(ctx, s->att, q, kk, vv, &a, s->ws, s->ws_bytes, e)) return -1;
    }
    if (!c->post_norm) {
      if (xd_cuda_matmul(ctx, s->h, XD_CUDA_F32, s->att, L->w_o, L->b_o, N, H * d, D, 1, e)) return -1;
      if (xd_cuda_rmsnorm_f32_forward(ctx, s->x, s->h, D, L->mlp_norm, N, D, eps, e)) return -1;
    } else {
      if (xd_cuda_matmul(ctx, s->tmp, XD_CUDA_F32, s->att, L->w_o, L->b_o, N, H * d, D, 0, e) ||
          xd_cuda_rmsnorm_add_f32(ctx, s->h, s->tmp, L->attn_out_norm, N, D, eps, e) ||
          xd_cuda_f32_to_bf16(ctx, s->x, s->h, (size_t)N * D, e))
        return -1;
    }
    if (xd_cuda_matmul(ctx, s->gu, XD_CUDA_BF16, s->x, L->w_gu, L->b_gu, N, D, 2 * F, 0, e) ||
        xd_cuda_swiglu_forward(ctx, s->act, s->gu, s->gu + F, N, F, 2 * F, e))
      return -1;
    if (!c->post_norm) {
      if (xd_cuda_matmul(ctx, s->h, XD_CUDA_F32, s->act, L->w_down, L->b_down, N, F, D, 1, e)) return -1;
    } else if (xd_cuda_matmul(ctx, s->tmp, XD_CUDA_F32, s->act, L->w_down, L->b_down, N, F, D, 0, e) ||
               xd_cuda_rmsnorm_add_f32(ctx, s->h, s->tmp, L->mlp_out_norm, N, D, eps, e)) {
      return -1;
    }
  }
  const int last = last_only == 1, rows = last ? B : N;
  const float *hin = last ? s->h + (size_t)(Tn - 1) * D : s->h;
  const size_t ld = last ? (size_t)Tn * D : (size_t)D;
  if (xd_cuda_rmsnorm_f32_forward(ctx, s->x, hin, ld, t->final_norm, rows, D, eps, e)) return -1;
  if (last_only != HEAD_NONE && xd_cuda_matmul(ctx, s->logits, XD_CUDA_F32, s->x, t->lm_head, NULL, rows, D, V, 0, e))
    return -1;
  return 0;
}

/* Tn new tokens for each of B sequences at positions off .. off+Tn-1 (launched, no graph).
 * use_kv: append k, v to the cache and attend over it; else attend within the fused buffer
 * (off = 0). */
static int body(const xd_teacher_cuda *t, xd_teacher_cuda_state *s, const int32_t *ids, int B, int Tn, int use_kv,
                int last_only, int at, xd_err *e) {
  if (body_prep(t, s, ids, B, Tn, use_kv, last_only, at, e) || body_kernels(t, s, B, Tn, use_kv, last_only, at, e))
    return -1;
  if (use_kv) s->len += Tn;
  return 0;
}

int xd_teacher_cuda_forward_async(const xd_teacher_cuda *t, xd_teacher_cuda_state *s, const int32_t *ids, int B, int T,
                                  xd_err *e) {
  if (B <= 0 || T <= 0) return xd_errf(e, "GPU teacher: empty batch (%d x %d)", B, T);
  return body(t, s, ids, B, T, 0, 0, 0, e);
}

int xd_teacher_cuda_forward_hidden_async(const xd_teacher_cuda *t, xd_teacher_cuda_state *s, const int32_t *ids, int B,
                                         int T, xd_err *e) {
  if (B <= 0 || T <= 0) return xd_errf(e, "GPU teacher: empty batch (%d x %d)", B, T);
  return body(t, s, ids, B, T, 0, HEAD_NONE, 0, e);
}

int xd_teacher_cuda_head_rows(const xd_teacher_cuda *t, xd_teacher_cuda_state *s, int r0, int n, xd_err *e) {
  if (r0 < 0 || n < 1 || n > s->logit_rows || (size_t)r0 + n > (size_t)s->B * s->max_tn)
    return xd_errf(e, "GPU teacher: logit rows [%d, %d) outside the %d x %d activations or above the %d allocated", r0,
                   r0 + n, s->B, s->max_tn, s->logit_rows);
  const int D = t->cfg.hidden;
  return xd_cuda_matmul(t->ctx, s->logits, XD_CUDA_F32, s->x + (size_t)r0 * D, t->lm_head, NULL, n, D, t->cfg.vocab, 0, e);
}

int xd_teacher_cuda_forward(const xd_teacher_cuda *t, xd_teacher_cuda_state *s, const int32_t *ids, int B, int T,
                            float *host_logits, xd_err *e) {
  if (xd_teacher_cuda_forward_async(t, s, ids, B, T, e)) return -1;
  if (host_logits) return xd_cuda_download(t->ctx, host_logits, s->logits, (size_t)B * T * t->cfg.vocab * 4, e);
  return xd_cuda_sync(t->ctx, e);
}


/* A one-token step (at): the first runs as launched, the second is captured as a CUDA graph
 * and launched, later ones replay it (after the {len, ids} upload). A graph is captured again
 * for another teacher, another last_only or moved context scratch; a capture the driver refuses
 * turns graphs off for this state (the step runs as launched). XD_CUDA_GRAPHS=0: no graph. */
static int step_graphed(const xd_teacher_cuda *t, xd_teacher_cuda_state *s, const int32_t *ids, int last_only,
                        xd_err *e) {
  xd_cuda_ctx *ctx = t->ctx;
  const char *genv = getenv("XD_CUDA_GRAPHS");
  const int graphs = !(genv && genv[0] == '0') && !s->g_off;
  if (body_prep(t, s, ids, s->B, 1, 1, last_only, 1, e)) return -1;
  if (s->graph && (s->g_t != (const void *)t || s->g_last != last_only || s->g_gen != xd_cuda_ws_generation(ctx))) {
    xd_cuda_graph_free(s->graph);
    s->graph = NULL, s->g_calls = 0;
  }
  int rc;
  if (graphs && s->graph) {
    rc = xd_cuda_graph_launch(ctx, s->graph, e);
  } else if (!graphs || s->g_calls++ == 0) {
    rc = body_kernels(t, s, s->B, 1, 1, last_only, 1, e);
  } else {
    xd_err inner = {{0}}, cap = {{0}};
    if (xd_cuda_graph_capture_begin(ctx, e)) return -1;
    const int brc = body_kernels(t, s, s->B, 1, 1, last_only, 1, &inner);
    if (xd_cuda_graph_capture_end(ctx, brc, &inner, &s->graph, &cap) == 0) {
      s->g_t = t, s->g_last = last_only, s->g_gen = xd_cuda_ws_generation(ctx);
      rc = xd_cuda_graph_launch(ctx, s->graph, e);
    } else { /* nothing of the capture ran: launch the kernels */
      fprintf(stderr, "teacher on CUDA: decode graph capture refused (%s); running without graphs\n", cap.msg);
      s->g_off = 1;
      rc = body_kernels(t, s, s->B, 1, 1, last_only, 1, e);
    }
  }
  if (rc) return -1;
  if (s->ragged)
    for (int b = 0; b < s->B; b++) s->lens[b]++;
  else
    s->len += 1;
  return 0;
}

int xd_teacher_cuda_step(const xd_teacher_cuda *t, xd_teacher_cuda_state *s, const int32_t *ids, int Tn,
                         int last_only, float *host_logits, xd_err *e) {
  if (!s->with_kv) return xd_errf(e, "GPU teacher: this state has no KV cache");
  if (s->ragged) return xd_errf(e, "GPU teacher: the rows are at different lengths (xd_teacher_cuda_step_rows)");
  last_only = last_only != 0; /* 0 / 1 (HEAD_NONE is internal) */
  if (Tn <= 0) return xd_errf(e, "GPU teacher: no tokens to append");
  const int at = Tn == 1 && !is_dynamic(&t->cfg);
  if (!at) {
    if (body(t, s, ids, s->B, Tn, 1, last_only, 0, e)) return -1;
  } else if (step_graphed(t, s, ids, last_only, e)) {
    return -1;
  }
  const size_t rows = last_only ? (size_t)s->B : (size_t)s->B * Tn;
  if (host_logits) return xd_cuda_download(t->ctx, host_logits, s->logits, rows * t->cfg.vocab * 4, e);
  return 0;
}

/* From here on every row has its own length (starting from the common one). */
static void make_ragged(xd_teacher_cuda_state *s) {
  if (s->ragged) return;
  for (int r = 0; r < s->B; r++) s->lens[r] = s->len;
  s->ragged = 1;
}

int xd_teacher_cuda_prefill_row(const xd_teacher_cuda *t, xd_teacher_cuda_state *s, int b, const int32_t *ids,
                                int n, float *host_logits, xd_err *e) {
  const xd_model_config *c = &t->cfg;
  if (!s->with_kv) return xd_errf(e, "GPU teacher: this state has no KV cache");
  if (b < 0 || b >= s->B) return xd_errf(e, "GPU teacher: row %d outside the state's %d", b, s->B);
  if (n < 1 || n > s->cap) return xd_errf(e, "GPU teacher: a prompt of %d tokens for a cache of %d", n, s->cap);
  if (is_dynamic(c)) return xd_errf(e, "GPU teacher: rows at different lengths need a fixed RoPE (not dynamic NTK)");
  make_ragged(s);
  /* the one-sequence prefill (B 1, offset 0) on row b's cache and logits row: the state's
   * pointers moved there for the call, then back */
  const size_t Gd = (size_t)c->n_kv_heads * c->head_dim;
  float *const logits0 = s->logits;
  const int len0 = s->len;
  for (int l = 0; l < c->n_layers; l++) s->k[l] += (size_t)b * s->cap * Gd, s->v[l] += (size_t)b * s->cap * Gd;
  s->logits += (size_t)b * c->vocab;
  s->len = 0;
  s->lens[b] = -1; /* unusable unless the prefill completes */
  const int rc = body(t, s, ids, 1, n, 1, 1, 0, e);
  for (int l = 0; l < c->n_layers; l++) s->k[l] -= (size_t)b * s->cap * Gd, s->v[l] -= (size_t)b * s->cap * Gd;
  s->logits = logits0;
  s->len = len0;
  if (rc) return -1;
  s->lens[b] = n;
  if (host_logits) return xd_cuda_download(t->ctx, host_logits, s->logits + (size_t)b * c->vocab, (size_t)c->vocab * 4, e);
  return 0;
}

int xd_teacher_cuda_step_rows(const xd_teacher_cuda *t, xd_teacher_cuda_state *s, const int32_t *ids,
                              float *host_logits, xd_err *e) {
  if (!s->with_kv) return xd_errf(e, "GPU teacher: this state has no KV cache");
  if (is_dynamic(&t->cfg)) return xd_errf(e, "GPU teacher: rows at different lengths need a fixed RoPE (not dynamic NTK)");
  make_ragged(s);
  for (int r = 0; r < s->B; r++)
    if (s->lens[r] < 0) return xd_errf(e, "GPU teacher: row %d has no prompt (its prefill failed)", r);
  if (step_graphed(t, s, ids, 1, e)) return -1;
  if (host_logits) return xd_cuda_download(t->ctx, host_logits, s->logits, (size_t)s->B * t->cfg.vocab * 4, e);
  return 0;
}

static int is_eos(const xd_model_config *c, int id) {
  for (int i = 0; i < c->n_eos; i++)
    if (c->eos_token_ids[i] == id) return 1;
  return 0;
}

int xd_teacher_cuda_generate(const xd_teacher_cuda *t, xd_teacher_cuda_state *s, const int32_t *ids, int T,
                             int max_new, int stop_at_eos, int32_t *out, int *n_out, xd_err *e) {
  const xd_model_config *c = &t->cfg;
  const int B = s->B, total = T + max_new;
  if (max_new <= 0) return xd_errf(e, "GPU teacher: max_new must be positive");
  if (T > s->max_tn || total > s->cap || s->logit_rows < B || !s->with_kv)
    return xd_errf(e, "GPU teacher: state too small for %d prompt + %d new tokens", T, max_new);
  xd_teacher_cuda_reset(s);
  int32_t *step = xd_malloc((size_t)B * sizeof(int32_t));
  int *done = xd_calloc((size_t)B, sizeof(int));
  for (int b = 0; b < B; b++) {
    memcpy(out + (size_t)b * total, ids + (size_t)b * T, (size_t)T * sizeof(int32_t));
    if (n_out) n_out[b] = total;
  }
  int rc = xd_teacher_cuda_step(t, s, ids, T, 1, NULL, e);
  for (int i = 0; !rc && i < max_new; i++) {
    rc = xd_cuda_argmax_f32(t->ctx, s->next, s->logits, B, c->vocab, e) ||
         xd_cuda_download(t->ctx, step, s->next, (size_t)B * sizeof(int32_t), e);
    if (rc) break;
    for (int b = 0; b < B; b++) {
      if (done[b]) step[b] = out[(size_t)b * total + T + i - 1];
      out[(size_t)b * total + T + i] = step[b];
      if (stop_at_eos && !done[b] && is_eos(c, step[b])) { done[b] = 1; if (n_out) n_out[b] = T + i + 1; }
    }
    if (i + 1 < max_new) rc = xd_teacher_cuda_step(t, s, step, 1, 1, NULL, e);
  }
  free(done);
  free(step);
  return rc;
}

/* ---- CLI helpers --------------------------------------------------------------------------- */

static int open_dir(const char *dir, xd_cuda_ctx **ctx, xd_teacher_cuda *t, xd_err *e) {
  if (xd_cuda_ctx_create(ctx, 0, e)) { /* no device: fail before reading the checkpoint */
    xd_err_prefix(e, "--device cuda");
    return -1;
  }
  xd_teacher cpu;
  int rc = xd_teacher_load(&cpu, dir, e);
  if (!rc) {
    rc = xd_teacher_cuda_upload(t, *ctx, &cpu, e);
    xd_teacher_free(&cpu);
  }
  if (rc) { xd_cuda_ctx_free(*ctx); *ctx = NULL; }
  return rc;
}

int xd_teacher_cuda_forward_dir(const char *dir, const int32_t *ids, int B, int T, float *logits, xd_err *e) {
  xd_cuda_ctx *ctx;
  xd_teacher_cuda t;
  if (open_dir(dir, &ctx, &t, e)) return -1;
  xd_teacher_cuda_plan p;
  xd_teacher_cuda_plan_of(&t, B, T, T, B * T, 0, &p);
  xd_teacher_cuda_plan_print(&t, &p, stderr);
  xd_teacher_cuda_state s;
  int rc = xd_teacher_cuda_state_alloc(&s, &t, B, T, T, B * T, 0, e);
  if (!rc) {
    rc = xd_teacher_cuda_forward(&t, &s, ids, B, T, logits, e);
    xd_teacher_cuda_state_free(&s);
  }
  xd_teacher_cuda_free(&t);
  xd_cuda_ctx_free(ctx);
  return rc;
}

int xd_teacher_cuda_generate_dir(const char *dir, const int32_t *ids, int B, int T, int max_new, int stop_at_eos,
                                 int32_t *out, int *n_out, xd_err *e) {
  xd_cuda_ctx *ctx;
  xd_teacher_cuda t;
  if (open_dir(dir, &ctx, &t, e)) return -1;
  xd_teacher_cuda_plan p;
  xd_teacher_cuda_plan_of(&t, B, T, T + max_new, B, 1, &p);
  xd_teacher_cuda_plan_print(&t, &p, stderr);
  xd_teacher_cuda_state s;
  int rc = xd_teacher_cuda_state_alloc(&s, &t, B, T, T + max_new, B, 1, e);
  if (!rc) {
    rc = xd_teacher_cuda_generate(&t, &s, ids, T, max_new, stop_at_eos, out, n_out, e);
    xd_teacher_cuda_state_free(&s);
  }
  xd_teacher_cuda_free(&t);
  xd_cuda_ctx_free(ctx);
  return rc;
}
#endif
