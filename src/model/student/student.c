#include "model/student/student.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"
#include "ops/cpu/embedding.h"
#include "ops/cpu/feature_map.h"
#include "ops/cpu/gates.h"
#include "ops/cpu/matmul.h"
#include "ops/cpu/mix.h"
#include "ops/cpu/rmsnorm.h"

/* ---- the tensor table ---------------------------------------------------------------------
 * One entry per checkpoint tensor: its name, shape, and where its weight and gradient pointers
 * go in the model structs. Built once from the config; load, save and the arena use it. */
typedef struct {
  char name[160];
  int ndim;
  int64_t shape[3];
  float **w, **g; /* slots in s->base / s->hl and s->gbase / s->ghl */
  int is_new;     /* hybrid parameter (trains in stage I) */
} tensor_slot;

typedef struct {
  int n, cap;
  tensor_slot *t;
} slot_table;

static void add_slot(slot_table *tb, const char *name, int ndim, int64_t d0, int64_t d1, int64_t d2, float **w,
                     float **g, int is_new) {
  if (tb->n == tb->cap) {
    tb->cap = tb->cap ? 2 * tb->cap : 64;
    tb->t = xd_realloc(tb->t, (size_t)tb->cap * sizeof *tb->t);
  }
  tensor_slot *s = &tb->t[tb->n++];
  snprintf(s->name, sizeof s->name, "%s", name);
  s->ndim = ndim;
  s->shape[0] = d0;
  s->shape[1] = d1;
  s->shape[2] = d2;
  s->w = w;
  s->g = g;
  s->is_new = is_new;
}

static void build_table(xd_student *s, slot_table *tb) {
  const xd_model_config *c = &s->cfg;
  const int D = c->hidden, F = c->intermediate, H = c->n_heads, G = c->n_kv_heads, d = c->head_dim, V = c->vocab;
  const int Hd = H * d, Gd = G * d, p = xd_hybrid_p_width(&s->hy);
  char nm[160];
  add_slot(tb, "model.embed_tokens.weight", 2, V, D, 0, &s->base.embed, &s->gbase.embed, 0);
  add_slot(tb, "model.norm.weight", 1, D, 0, 0, &s->base.final_norm, &s->gbase.final_norm, 0);
  if (!c->tie_embeddings) add_slot(tb, "lm_head.weight", 2, V, D, 0, &s->base.lm_head, &s->gbase.lm_head, 0);
  for (int l = 0; l < c->n_layers; l++) {
    xd_teacher_layer *L = &s->base.layers[l], *GL = &s->gbase.layers[l];
    xd_hybrid_layer *Y = &s->hl[l], *GY = &s->ghl[l];
#define T1(field, suffix, a) (snprintf(nm, sizeof nm, "model.layers.%d.%s", l, suffix), add_slot(tb, nm, 1, a, 0, 0, &L->field, &GL->field, 0))
#define T2(field, suffix, a, b) (snprintf(nm, sizeof nm, "model.layers.%d.%s", l, suffix), add_slot(tb, nm, 2, a, b, 0, &L->field, &GL->field, 0))
    if (!c->post_norm) T1(attn_norm, "input_layernorm.weight", D);
    T2(wq, "self_attn.q_proj.weight", Hd, D);
    T2(wk, "self_attn.k_proj.weight", Gd, D);
    T2(wv, "self_attn.v_proj.weight", Gd, D);
    if (c->qkv_bias) { T1(bq, "self_attn.q_proj.bias", Hd); T1(bk, "self_attn.k_proj.bias", Gd); T1(bv, "self_attn.v_proj.bias", Gd); }
    if (c->qk_norm == XD_QKNORM_HEAD) { T1(q_norm, "self_attn.q_norm.weight", d); T1(k_norm, "self_attn.k_norm.weight", d); }
    if (c->qk_norm == XD_QKNORM_PROJ) { T1(q_norm, "self_attn.q_norm.weight", Hd); T1(k_norm, "self_attn.k_norm.weight", Gd); }
    T2(wo, "self_attn.o_proj.weight", D, Hd);
    if (c->o_bias) T1(bo, "self_attn.o_proj.bias", D);
    if (c->post_norm) {
      T1(attn_out_norm, "post_attention_layernorm.weight", D);
      T1(mlp_out_norm, "post_feedforward_layernorm.weight", D);
    } else {
      T1(mlp_norm, "post_attention_layernorm.weight", D);
    }
    T2(w_gate, "mlp.gate_proj.weight", F, D);
    T2(w_up, "mlp.up_proj.weight", F, D);
    T2(w_down, "mlp.down_proj.weight", D, F);
    if (c->mlp_bias) { T1(b_gate, "mlp.gate_proj.bias", F); T1(b_up, "mlp.up_proj.bias", F); T1(b_down, "mlp.down_proj.bias", D); }
#undef T1
#undef T2
    float **wslot[XD_NEW_COUNT] = {&Y->P_q, &Y->P_k, &Y->w_i, &Y->b_i, &Y->w_f, &Y->b_f, &Y->w_o, &Y->b_o};
    float **gslot[XD_NEW_COUNT] = {&GY->P_q, &GY->P_k, &GY->w_i, &GY->b_i, &GY->w_f, &GY->b_f, &GY->w_o, &GY->b_o};
    for (int k = 0; k < XD_NEW_COUNT; k++) {
      int64_t sh[3] = {0, 0, 0};
      int nd = xd_hybrid_tensor_shape(&s->hy, k, D, H, G, d, sh);
      xd_hybrid_tensor_name(nm, sizeof nm, l, k);
      add_slot(tb, nm, nd, sh[0], sh[1], sh[2], wslot[k], gslot[k], 1);
    }
    (void)p;
  }
}

/* The parameter table of s->cfg / s->hy, its arenas, and the weight / gradient views; with dir,
 * the weights are read from dir's model.safetensors, else they stay zero. */
static int build_params(xd_student *s, xd_student_mode mode, const char *dir, xd_err *e) {
  int rc = 0;
  const xd_model_config *c = &s->cfg;
  const int L = c->n_layers;
  s->mode = mode;
  s->base.cfg = *c;
  s->gbase.cfg = *c;
  s->base.layers = xd_calloc((size_t)L, sizeof(xd_teacher_layer));
  s->gbase.layers = xd_calloc((size_t)L, sizeof(xd_teacher_layer));
  s->hl = xd_calloc((size_t)L, sizeof(xd_hybrid_layer));
  s->ghl = xd_calloc((size_t)L, sizeof(xd_hybrid_layer));
  slot_table tb = {0};
  build_table(s, &tb);
  /* Trainable tensors first (the arena's grad/m/v cover the trainable prefix). 1-D tensors
   * (norms, biases, gate biases) take no weight decay. */
  xd_params_init(&s->params);
  const int no_decay = xd_params_add_group(&s->params, "no_decay", 1.0f, 0.0f);
  int *idx = xd_malloc((size_t)tb.n * sizeof *idx);
  for (int pass = 0; pass < 2 && rc == 0; pass++)
    for (int i = 0; i < tb.n && rc == 0; i++) {
      const tensor_slot *t = &tb.t[i];
      const int trainable = mode == XD_STUDENT_TRAIN_ALL || (mode == XD_STUDENT_TRAIN_NEW && t->is_new);
      if (trainable != (pass == 0)) continue;
      idx[i] = xd_params_add(&s->params, t->name, t->ndim, t->shape, t->ndim == 1 ? no_decay : 0, trainable, e);
      if (idx[i] < 0) rc = -1;
    }
  if (rc == 0) {
    xd_params_alloc(&s->params);
    xd_safetensors st;
    if (dir) rc = xd_st_open(&st, dir, e);
    const int opened = dir && rc == 0;
    for (int i = 0; rc == 0 && i < tb.n; i++) {
      const tensor_slot *t = &tb.t[i];
      *t->w = xd_params_data(&s->params, idx[i]);
      *t->g = xd_params_grad(&s->params, idx[i]);
      if (dir) rc = xd_st_load_f32(&st, t->name, t->ndim, t->shape, *t->w, e);
    }
    if (opened) xd_st_close(&st);
    if (c->tie_embeddings) { s->base.lm_head = s->base.embed; s->gbase.lm_head = s->gbase.embed; }
  }
  free(idx);
  free(tb.t);
  return rc;
}

int xd_is_student_dir(const char *dir) {
  char *path = xd_path_join(dir, "config.json"), *text = NULL;
  xd_err e;
  int yes = 0;
  if (xd_read_file(path, 16u << 20, &text, NULL, &e) == 0) {
    cJSON *j = cJSON_Parse(text);
    yes = j && cJSON_GetObjectItemCaseSensitive(j, "xdistill") != NULL;
    cJSON_Delete(j);
  }
  free(text);
  free(path);
  return yes;
}

int xd_student_load(xd_student *s, const char *dir, xd_student_mode mode, xd_err *e) {
  memset(s, 0, sizeof *s);
  char *cfg_path = xd_path_join(dir, "config.json"), *text = NULL;
  size_t len = 0;
  int present = 0, rc = xd_config_load(&s->cfg, dir, e);
  if (rc == 0) rc = xd_read_file(cfg_path, 16u << 20, &text, &len, e);
  if (rc == 0) rc = xd_hybrid_parse(&s->hy, &present, text, len, s->cfg.head_dim, cfg_path, e);
  if (rc == 0 && !present)
    rc = xd_errf(e, "%s: not a student checkpoint (no \"xdistill\" section; make one with `xdistill init`)", cfg_path);
  free(text);
  free(cfg_path);
  if (rc != 0) return -1;
  s->dir = xd_strdup(dir);
  rc = build_params(s, mode, dir, e);
  if (rc != 0) xd_student_free(s);
  return rc;
}

int xd_student_create(xd_student *s, const xd_model_config *c, const xd_hybrid_config *hy, xd_student_mode mode,
                      xd_err *e) {
  memset(s, 0, sizeof *s);
  s->cfg = *c;
  s->hy = *hy;
  const int rc = build_params(s, mode, NULL, e);
  if (rc != 0) xd_student_free(s);
  return rc;
}

void xd_student_free(xd_student *s) {
  xd_params_free(&s->params);
  free(s->base.layers);
  free(s->gbase.layers);
  free(s->hl);
  free(s->ghl);
  free(s->dir);
  memset(s, 0, sizeof *s);
}

int xd_student_save(const xd_student *s, const char *dir, xd_err *e) {
  if (xd_mkdir_p(dir, e) != 0) return -1;
  const xd_params *p = &s->params;
  xd_st_entry *ents = xd_calloc((size_t)p->n + 1, sizeof *ents);
  for (int i = 0; i < p->n; i++) {
    ents[i].name = p->t[i].name;
    ents[i].dtype = XD_DT_F32;
    ents[i].ndim = p->t[i].ndim;
    for (int k = 0; k < p->t[i].ndim; k++) ents[i].shape[k] = p->t[i].shape[k];
    ents[i].data = xd_params_data(p, i);
  }
  char *path = xd_path_join(dir, "model.safetensors");
  const char *mk[] = {"format", "xdistill"}, *mv[] = {"pt", "student"};
  int rc = xd_st_write(path, ents, p->n, mk, mv, 2, e);
  free(path);
  free(ents);
  static const char *const side[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                     "generation_config.json"};
  const int same_dir = s->dir && strcmp(s->dir, dir) == 0;
  for (size_t i = 0; rc == 0 && !same_dir && i < sizeof side / sizeof *side; i++) {
    char *a = xd_path_join(s->dir, side[i]), *b = xd_path_join(dir, side[i]);
    if (xd_file_exists(a)) rc = xd_copy_file(a, b, e);
    free(a);
    free(b);
  }
  if (rc == 0 && !same_dir) {
    char *a = xd_path_join(s->dir, "config.json"), *b = xd_path_join(dir, "config.json");
    rc = xd_copy_file(a, b, e);
    free(a);
    free(b);
  }
  return rc;
}

/* ---- the hybrid core ------------------------------------------------------------------ */
/* The helpers read only the config, so the fp32 student and its float64 twin share them. */
static mlstm_cfg core_mlstm_cfg(const xd_model_config *c, const xd_hybrid_config *hy, int B, int T) {
  mlstm_cfg mc = mlstm_cfg_make(B, T, c->n_heads, c->n_kv_heads, hy->d_phi, c->head_dim);
  mc.chunk = hy->chunk;
  mc.norm = hy->normalizer == XD_NORM_XLSTM ? MLSTM_NORM_MAX : MLSTM_NORM_PAPER;
  mc.eps = hy->eps;
  return mc;
}


#define XD_TWIN_BODY "model/student/student_core_impl.inc"
#include "ops/cpu/twin.h"

/* ---- whole model ---------------------------------------------------------------------- */
int xd_student_forward(const xd_student *s, xd_teacher_acts *ta, xd_core_acts *ca, const int32_t *ids, int B, int T,
                       float *logits, xd_err *e) {
  const xd_model_config *c = &s->cfg;
  const int D = c->hidden, N = B * T;
  XD_CHECK(N <= ta->rows && T <= ta->max_keys && ca->B == B && ca->T == T);
  if (xd_check_token_ids(ids, (size_t)N, c->vocab, e)) return -1;
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++) ta->pos[b * T + t] = t;
  xd_rope_tables_update(&ta->rope, c, T);
  embedding_forward(ta->h, ids, s->base.embed, N, D);
  for (int l = 0; l < c->n_layers; l++) {
    const xd_teacher_layer *L = &s->base.layers[l];
    xd_teacher_layer_in(c, L, l, &ta->rope, ta->pos, N, ta->h, ta->x, ta->q_raw, ta->k_raw, ta->v_raw, ta->q, ta->k);
    xd_core_forward(s, l, ca, ta->x, ta->q_raw, ta->k_raw, ta->v_raw, ta->q, ta->k, ta->att);
    xd_teacher_layer_out(c, L, N, ta->att, ta->h, ta->tmp, ta->gate, ta->up);
  }
  if (logits) {
    rmsnorm_forward(ta->tmp, NULL, ta->h, s->base.final_norm, N, D, (float)c->rms_eps);
    matmul_forward(logits, ta->tmp, s->base.lm_head, NULL, N, D, c->vocab);
  }
  return 0;
}

/* ---- constant-memory decoding --------------------------------------------------------- */
void xd_student_state_alloc(xd_student_state *st, const xd_student *s) {
  const xd_model_config *c = &s->cfg;
  memset(st, 0, sizeof *st);
  st->n_layers = c->n_layers;
  st->H = c->n_heads;
  st->G = c->n_kv_heads;
  st->d = c->head_dim;
  st->P = s->hy.d_phi;
  st->mstate = xd_calloc((size_t)c->n_layers, sizeof *st->mstate);
  st->cache = xd_calloc((size_t)c->n_layers, sizeof *st->cache);
  for (int l = 0; l < c->n_layers; l++) {
    st->mstate[l].C = xd_calloc((size_t)st->H * st->P * st->d, sizeof(float));
    st->mstate[l].n = xd_calloc((size_t)st->H * st->P, sizeof(float));
    st->mstate[l].m = xd_calloc((size_t)st->H, sizeof(float));
    swa_cache_init(&st->cache[l], st->G, st->d, xd_hybrid_layer_window(&s->cfg, &s->hy, l), xd_hybrid_layer_sinks(&s->cfg, &s->hy, l));
  }
  xd_teacher_acts_alloc(&st->ta1, c, 1, 1);
  st->qf = xd_malloc((size_t)st->H * st->P * sizeof(float));
  st->kf = xd_malloc((size_t)st->G * st->P * sizeof(float));
  st->ig = xd_malloc((size_t)st->H * sizeof(float));
  st->fg = xd_malloc((size_t)st->H * sizeof(float));
  st->glob = xd_malloc((size_t)st->H * st->d * sizeof(float));
  st->local = xd_malloc((size_t)st->H * st->d * sizeof(float));
  st->o = xd_malloc((size_t)st->H * sizeof(float));
}

void xd_student_state_free(xd_student_state *st) {
  for (int l = 0; l < st->n_layers; l++) {
    free(st->mstate[l].C);
    free(st->mstate[l].n);
    free(st->mstate[l].m);
    swa_cache_free(&st->cache[l]);
  }
  free(st->mstate);
  free(st->cache);
  xd_teacher_acts_free(&st->ta1);
  float *p[] = {st->qf, st->kf, st->ig, st->fg, st->glob, st->local, st->o};
  for (size_t i = 0; i < sizeof p / sizeof *p; i++) free(p[i]);
  memset(st, 0, sizeof *st);
}

size_t xd_student_state_bytes(const xd_student_state *st) {
  size_t per_layer = ((size_t)st->H * st->P * st->d + (size_t)st->H * st->P + (size_t)st->H) * sizeof(float);
  if (st->n_layers > 0) {
    const swa_cache *c = &st->cache[0];
    per_layer += ((size_t)(c->S + c->W) * c->G * c->d * 2 + (size_t)(c->S + c->W)) * sizeof(float) +
                 (size_t)(c->S + c->W) * 2 * sizeof(void *);
  }
  return per_layer * (size_t)st->n_layers;
}

/* The RoPE row of one absolute position, computed as rope_table does (fp32 angle, cos/sin in
 * double, times the scaling), into row 0 of the one-row tables; the row is then read at index 0. */
static void rope_row(xd_rope_tables *r, const xd_model_config *c, int pos) {
  for (int i = 0; i < 2; i++) {
    float scaling;
    rope_inv_freq(&c->rope[i], c->head_dim, c->max_pos, pos + 1, r->inv_freq, &scaling);
    for (int j = 0; j < r->half; j++) {
      const float ang = (float)pos * r->inv_freq[j];
      r->cos[i][j] = (float)cos((double)ang) * scaling;
      r->sin[i][j] = (float)sin((double)ang) * scaling;
    }
  }
}

/* One token through every layer, recurrent form; nothing allocated, nothing grows. */
static void decode_one(const xd_student *s, xd_student_state *st, int32_t id, float *logits) {
  const xd_model_config *c = &s->cfg;
  const int D = c->hidden, H = c->n_heads, G = c->n_kv_heads, d = c->head_dim, P = s->hy.d_phi;
  xd_teacher_acts *ta = &st->ta1;
  rope_row(&ta->rope, c, (int)st->pos);
  ta->pos[0] = 0; /* row 0 of the one-row table holds the current position */
  embedding_forward(ta->h, &id, s->base.embed, 1, D);
  const mlstm_cfg mc = core_mlstm_cfg(&s->cfg, &s->hy, 1, 1);
  for (int l = 0; l < c->n_layers; l++) {
    const xd_teacher_layer *L = &s->base.layers[l];
    const xd_hybrid_layer *Y = &s->hl[l];
    xd_teacher_layer_in(c, L, l, &ta->rope, ta->pos, 1, ta->h, ta->x, ta->q_raw, ta->k_raw, ta->v_raw, ta->q, ta->k);
    swa_decode_step(&st->cache[l], st->local, NULL, ta->q, ta->k, ta->v_raw, H);
    const feature_map_shape fq = {1, H, d, P, s->hy.feature_map == XD_FMAP_HEDGEHOG};
    const feature_map_shape fk = {1, G, d, P, s->hy.feature_map == XD_FMAP_HEDGEHOG};
    feature_map_forward(st->qf, ta->q, Y->P_q, &fq);
    feature_map_forward(st->kf, ta->k, Y->P_k, &fk);
    const gates_shape gs = {1, D, H, s->hy.gate_softcap};
    gates_forward(st->ig, st->fg, ta->x, Y->w_i, Y->b_i, Y->w_f, Y->b_f, &gs);
    mlstm_recurrent_step(&mc, st->qf, st->kf, ta->v_raw, st->ig, st->fg, &st->mstate[l], st->glob);
    const mix_shape ms = {1, H, G, d};
    mix_forward(ta->att, st->o, ta->q_raw, ta->k_raw, ta->v_raw, Y->w_o, Y->b_o, st->glob, st->local, &ms);
    xd_teacher_layer_out(c, L, 1, ta->att, ta->h, ta->tmp, ta->gate, ta->up);
  }
  st->pos++;
  if (logits) {
    rmsnorm_forward(ta->tmp, NULL, ta->h, s->base.final_norm, 1, D, (float)c->rms_eps);
    matmul_forward(logits, ta->tmp, s->base.lm_head, NULL, 1, D, c->vocab);
  }
}

int xd_student_step(const xd_student *s, xd_student_state *st, const int32_t *ids, int n, float *logits, xd_err *e) {
  const xd_model_config *c = &s->cfg;
  if (n < 1) return xd_errf(e, "student step: no tokens");
  if (xd_check_token_ids(ids, (size_t)n, c->vocab, e)) return -1;
  const int D = c->hidden, H = c->n_heads, G = c->n_kv_heads, d = c->head_dim;
  if (st->pos == 0 && n > 1) {
    /* Prefill: the chunkwise form over the prompt, handing the final mLSTM state and the
     * prompt's K/V (sinks + last W) over to the decode state. */
    xd_teacher_acts ta;
    xd_teacher_acts_alloc(&ta, c, n, n);
    xd_core_acts ca;
    xd_core_acts_alloc(&ca, s, 1, n);
    for (int t = 0; t < n; t++) ta.pos[t] = t;
    xd_rope_tables_update(&ta.rope, c, n);
    embedding_forward(ta.h, ids, s->base.embed, n, D);
    for (int l = 0; l < c->n_layers; l++) {
      const xd_teacher_layer *L = &s->base.layers[l];
      const xd_hybrid_layer *Y = &s->hl[l];
      xd_teacher_layer_in(c, L, l, &ta.rope, ta.pos, n, ta.h, ta.x, ta.q_raw, ta.k_raw, ta.v_raw, ta.q, ta.k);
      const swa_shape sw = {1, n, H, G, d, xd_hybrid_layer_window(&s->cfg, &s->hy, l), xd_hybrid_layer_sinks(&s->cfg, &s->hy, l)};
      swa_forward(ca.local, ca.lse, ta.q, ta.k, ta.v_raw, &sw);
      for (int t = 0; t < n; t++)
        swa_cache_append(&st->cache[l], ta.k + (size_t)t * G * d, ta.v_raw + (size_t)t * G * d);
      const feature_map_shape fq = {n, H, d, s->hy.d_phi, s->hy.feature_map == XD_FMAP_HEDGEHOG};
      const feature_map_shape fk = {n, G, d, s->hy.d_phi, s->hy.feature_map == XD_FMAP_HEDGEHOG};
      feature_map_forward(ca.qf, ta.q, Y->P_q, &fq);
      feature_map_forward(ca.kf, ta.k, Y->P_k, &fk);
      const gates_shape gs = {n, D, H, s->hy.gate_softcap};
      gates_forward(ca.ig, ca.fg, ta.x, Y->w_i, Y->b_i, Y->w_f, Y->b_f, &gs);
      mlstm_chunkwise_forward(&ca.mc, ca.ws, ca.qf, ca.kf, ta.v_raw, ca.ig, ca.fg, NULL, &st->mstate[l], NULL, ca.glob);
      const mix_shape ms = {n, H, G, d};
      mix_forward(ta.att, ca.o, ta.q_raw, ta.k_raw, ta.v_raw, Y->w_o, Y->b_o, ca.glob, ca.local, &ms);
      xd_teacher_layer_out(c, L, n, ta.att, ta.h, ta.tmp, ta.gate, ta.up);
    }
    st->pos = n;
    if (logits) {
      rmsnorm_forward(ta.tmp, NULL, ta.h + (size_t)(n - 1) * D, s->base.final_norm, 1, D, (float)c->rms_eps);
      matmul_forward(logits, ta.tmp, s->base.lm_head, NULL, 1, D, c->vocab);
    }
    xd_core_acts_free(&ca);
    xd_teacher_acts_free(&ta);
    return 0;
  }
  /* Decode: one token at a time through the recurrent form. */
  for (int i = 0; i < n; i++) decode_one(s, st, ids[i], i == n - 1 ? logits : NULL);
  return 0;
}
