#include "model/student/student_train.h"

#include <stdlib.h>
#include <string.h>

#include "ops/cpu/embedding.h"
#include "ops/cpu/matmul.h"
#include "ops/cpu/rmsnorm.h"
#include "ops/cpu/rope.h"
#include "ops/cpu/swiglu.h"

#define F(n) ((float *)xd_malloc((size_t)(n) * sizeof(float)))

void xd_student_train_acts_alloc(xd_student_train_acts *a, const xd_student *s, int B, int T) {
  const xd_model_config *c = &s->cfg;
  const size_t N = (size_t)B * T, D = (size_t)c->hidden, F_ = (size_t)c->intermediate;
  const size_t Hd = (size_t)c->n_heads * c->head_dim, Gd = (size_t)c->n_kv_heads * c->head_dim;
  memset(a, 0, sizeof *a);
  a->B = B;
  a->T = T;
  a->n_layers = c->n_layers;
  a->layer = xd_calloc((size_t)c->n_layers, sizeof *a->layer);
  for (int l = 0; l < c->n_layers; l++) {
    xd_layer_saves *L = &a->layer[l];
    L->h0 = F(N * D); L->x = F(N * D); L->q_raw = F(N * Hd); L->k_raw = F(N * Gd); L->v_raw = F(N * Gd);
    L->q = F(N * Hd); L->k = F(N * Gd); L->att = F(N * Hd); L->o1 = F(N * D); L->h1 = F(N * D); L->xm = F(N * D);
    L->g = F(N * F_); L->u = F(N * F_); L->sw = F(N * F_); L->o2 = F(N * D);
    xd_core_acts_alloc(&L->core, s, B, T);
  }
  a->hL = F(N * D); a->hn = F(N * D);
  a->pos = xd_malloc(N * sizeof(int));
  for (int b = 0; b < B; b++) for (int t = 0; t < T; t++) a->pos[b * T + t] = t;
  xd_rope_tables_alloc(&a->rope, c, T);
  a->dh = F(N * D); a->dh1 = F(N * D); a->dx = F(N * D); a->dxm = F(N * D); a->do_ = F(N * D);
  a->dg = F(N * F_); a->du = F(N * F_); a->dsw = F(N * F_); a->datt = F(N * Hd);
  a->dq_raw = F(N * Hd); a->dk_raw = F(N * Gd); a->dv_raw = F(N * Gd); a->dq = F(N * Hd); a->dk = F(N * Gd);
  a->tmpD = F(N * (Hd > D ? Hd : D)); a->rstd = F(N * (size_t)c->n_heads);
}

void xd_student_train_acts_free(xd_student_train_acts *a) {
  for (int l = 0; l < a->n_layers; l++) {
    xd_layer_saves *L = &a->layer[l];
    float *p[] = {L->h0, L->x, L->q_raw, L->k_raw, L->v_raw, L->q, L->k, L->att, L->o1, L->h1, L->xm, L->g, L->u, L->sw, L->o2};
    for (size_t i = 0; i < sizeof p / sizeof *p; i++) free(p[i]);
    xd_core_acts_free(&L->core);
  }
  free(a->layer);
  float *p[] = {a->hL, a->hn, a->dh, a->dh1, a->dx, a->dxm, a->do_, a->dg, a->du, a->dsw, a->datt,
                a->dq_raw, a->dk_raw, a->dv_raw, a->dq, a->dk, a->tmpD, a->rstd};
  for (size_t i = 0; i < sizeof p / sizeof *p; i++) free(p[i]);
  free(a->pos);
  xd_rope_tables_free(&a->rope);
  memset(a, 0, sizeof *a);
}

static void add_to(float *y, const float *x, size_t n) {
  for (size_t i = 0; i < n; i++) y[i] += x[i];
}

int xd_student_forward_train(const xd_student *s, xd_student_train_acts *a, const int32_t *ids, float *logits, xd_err *e) {
  const xd_model_config *c = &s->cfg;
  const int N = a->B * a->T, D = c->hidden, F_ = c->intermediate, Hd = c->n_heads * c->head_dim;
  const float eps = (float)c->rms_eps;
  for (int i = 0; i < N; i++)
    if (ids[i] < 0 || ids[i] >= c->vocab) return xd_errf(e, "token id %d at position %d is outside the vocabulary [0, %d)", ids[i], i, c->vocab);
  xd_rope_tables_update(&a->rope, c, a->T);
  float *h = a->hL; /* running residual stream */
  embedding_forward(h, ids, s->base.embed, N, D);
  for (int l = 0; l < c->n_layers; l++) {
    xd_layer_saves *L = &a->layer[l];
    const xd_teacher_layer *W = &s->base.layers[l];
    memcpy(L->h0, h, (size_t)N * D * sizeof(float));
    xd_teacher_layer_in(c, W, l, &a->rope, a->pos, N, L->h0, L->x, L->q_raw, L->k_raw, L->v_raw, L->q, L->k);
    xd_core_forward(s, l, &L->core, L->x, L->q_raw, L->k_raw, L->v_raw, L->q, L->k, L->att);
    /* The teacher's layer_out, unrolled to keep what the backward needs. */
    matmul_forward(L->o1, L->att, W->wo, W->bo, N, Hd, D);
    memcpy(L->h1, L->h0, (size_t)N * D * sizeof(float));
    if (c->post_norm) {
      rmsnorm_forward(a->tmpD, NULL, L->o1, W->attn_out_norm, N, D, eps);
      add_to(L->h1, a->tmpD, (size_t)N * D);
      memcpy(L->xm, L->h1, (size_t)N * D * sizeof(float));
    } else {
      add_to(L->h1, L->o1, (size_t)N * D);
      rmsnorm_forward(L->xm, NULL, L->h1, W->mlp_norm, N, D, eps);
    }
    matmul_forward(L->g, L->xm, W->w_gate, W->b_gate, N, D, F_);
    matmul_forward(L->u, L->xm, W->w_up, W->b_up, N, D, F_);
    swiglu_forward(L->sw, L->g, L->u, (size_t)N * F_);
    matmul_forward(L->o2, L->sw, W->w_down, W->b_down, N, F_, D);
    memcpy(h, L->h1, (size_t)N * D * sizeof(float));
    if (c->post_norm) {
      rmsnorm_forward(a->tmpD, NULL, L->o2, W->mlp_out_norm, N, D, eps);
      add_to(h, a->tmpD, (size_t)N * D);
    } else {
      add_to(h, L->o2, (size_t)N * D);
    }
  }
  rmsnorm_forward(a->hn, NULL, h, s->base.final_norm, N, D, eps);
  matmul_forward(logits, a->hn, s->base.lm_head, NULL, N, D, c->vocab);
  return 0;
}

/* dx += d rmsnorm(x) given dy; rstd recomputed (the forward keeps none). dw may be NULL. */
static void rms_back(float *dx, float *dw, const float *dy, const float *x, const float *w, int rows, int C, float eps,
                     float *rstd, float *scratch) {
  rmsnorm_forward(scratch, rstd, x, w, rows, C, eps);
  rmsnorm_backward(dx, dw, dy, x, w, rstd, rows, C);
}

void xd_student_backward(const xd_student *s, xd_student_train_acts *a, const int32_t *ids, const float *dlogits) {
  const xd_model_config *c = &s->cfg;
  const xd_teacher *G = &s->gbase;
  const int N = a->B * a->T, D = c->hidden, F_ = c->intermediate, H = c->n_heads, Gk = c->n_kv_heads, d = c->head_dim;
  const int Hd = H * d, Gd = Gk * d;
  const size_t ND = (size_t)N * D;
  const float eps = (float)c->rms_eps;
  /* rstd scratch: rows up to N*H (per-head QK-norm); the norm output goes to a scratch of the
   * same size as its input. */
  float *scr = xd_malloc((size_t)N * (Hd > D ? Hd : D) * sizeof(float));
  /* Head: logits = rmsnorm(hL) lm_head^T. */
  memset(a->dx, 0, ND * sizeof(float));
  matmul_backward(a->dx, G->lm_head, NULL, dlogits, a->hn, s->base.lm_head, N, D, c->vocab);
  memset(a->dh, 0, ND * sizeof(float));
  rms_back(a->dh, G->final_norm, a->dx, a->hL, s->base.final_norm, N, D, eps, a->rstd, scr);
  for (int l = c->n_layers - 1; l >= 0; l--) {
    xd_layer_saves *L = &a->layer[l];
    const xd_teacher_layer *W = &s->base.layers[l];
    const xd_teacher_layer *GW = &G->layers[l];
    /* h2 = h1 + [norm](o2): dh1 = dh2, do2 = [norm'](dh2). */
    memcpy(a->dh1, a->dh, ND * sizeof(float));
    memset(a->do_, 0, ND * sizeof(float));
    if (c->post_norm) rms_back(a->do_, GW->mlp_out_norm, a->dh, L->o2, W->mlp_out_norm, N, D, eps, a->rstd, scr);
    else memcpy(a->do_, a->dh, ND * sizeof(float));
    memset(a->dsw, 0, (size_t)N * F_ * sizeof(float));
    matmul_backward(a->dsw, GW->w_down, GW->b_down, a->do_, L->sw, W->w_down, N, F_, D);
    memset(a->dg, 0, (size_t)N * F_ * sizeof(float));
    memset(a->du, 0, (size_t)N * F_ * sizeof(float));
    swiglu_backward(a->dg, a->du, a->dsw, L->g, L->u, (size_t)N * F_);
    memset(a->dxm, 0, ND * sizeof(float));
    matmul_backward(a->dxm, GW->w_gate, GW->b_gate, a->dg, L->xm, W->w_gate, N, D, F_);
    matmul_backward(a->dxm, GW->w_up, GW->b_up, a->du, L->xm, W->w_up, N, D, F_);
    if (c->post_norm) add_to(a->dh1, a->dxm, ND);
    else rms_back(a->dh1, GW->mlp_norm, a->dxm, L->h1, W->mlp_norm, N, D, eps, a->rstd, scr);
    /* h1 = h0 + [norm](o1). */
    memset(a->do_, 0, ND * sizeof(float));
    if (c->post_norm) rms_back(a->do_, GW->attn_out_norm, a->dh1, L->o1, W->attn_out_norm, N, D, eps, a->rstd, scr);
    else memcpy(a->do_, a->dh1, ND * sizeof(float));
    memset(a->datt, 0, (size_t)N * Hd * sizeof(float));
    matmul_backward(a->datt, GW->wo, GW->bo, a->do_, L->att, W->wo, N, Hd, D);
    /* The hybrid core. */
    memset(a->dx, 0, ND * sizeof(float));
    memset(a->dq_raw, 0, (size_t)N * Hd * sizeof(float));
    memset(a->dk_raw, 0, (size_t)N * Gd * sizeof(float));
    memset(a->dv_raw, 0, (size_t)N * Gd * sizeof(float));
    memset(a->dq, 0, (size_t)N * Hd * sizeof(float));
    memset(a->dk, 0, (size_t)N * Gd * sizeof(float));
    xd_core_backward(s, l, &L->core, L->x, L->q_raw, L->k_raw, L->v_raw, L->q, L->k, a->datt, a->dx, a->dq_raw, a->dk_raw,
                     a->dv_raw, a->dq, a->dk);
    /* q = rope(qknorm(q_raw)): back through RoPE (transpose rotation), then the QK-norm. */
    const int kind = c->layer_sliding[l];
    rope_backward(a->dq, a->dq, a->rope.cos[kind], a->rope.sin[kind], a->pos, N, H, d);
    rope_backward(a->dk, a->dk, a->rope.cos[kind], a->rope.sin[kind], a->pos, N, Gk, d);
    if (c->qk_norm == XD_QKNORM_HEAD) {
      rms_back(a->dq_raw, GW->q_norm, a->dq, L->q_raw, W->q_norm, N * H, d, eps, a->rstd, scr);
      rms_back(a->dk_raw, GW->k_norm, a->dk, L->k_raw, W->k_norm, N * Gk, d, eps, a->rstd, scr);
    } else if (c->qk_norm == XD_QKNORM_PROJ) {
      rms_back(a->dq_raw, GW->q_norm, a->dq, L->q_raw, W->q_norm, N, Hd, eps, a->rstd, scr);
      rms_back(a->dk_raw, GW->k_norm, a->dk, L->k_raw, W->k_norm, N, Gd, eps, a->rstd, scr);
    } else {
      add_to(a->dq_raw, a->dq, (size_t)N * Hd);
      add_to(a->dk_raw, a->dk, (size_t)N * Gd);
    }
    matmul_backward(a->dx, GW->wq, GW->bq, a->dq_raw, L->x, W->wq, N, D, Hd);
    matmul_backward(a->dx, GW->wk, GW->bk, a->dk_raw, L->x, W->wk, N, D, Gd);
    matmul_backward(a->dx, GW->wv, GW->bv, a->dv_raw, L->x, W->wv, N, D, Gd);
    /* x = [rmsnorm](h0); dh0 = dh1 + dx path. */
    memcpy(a->dh, a->dh1, ND * sizeof(float));
    if (c->post_norm) add_to(a->dh, a->dx, ND);
    else rms_back(a->dh, GW->attn_norm, a->dx, L->h0, W->attn_norm, N, D, eps, a->rstd, scr);
  }
  embedding_backward(G->embed, a->dh, ids, N, D);
  free(scr);
}
