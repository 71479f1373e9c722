#include "model/teacher/teacher_train.h"
#include <stdlib.h>
#include <string.h>
#include "ops/cpu/matmul.h"
#include "ops/cpu/rmsnorm.h"
#include "ops/cpu/rope.h"
#include "ops/cpu/swiglu.h"

static float *nf(size_t n) { return xd_aligned_alloc((n ? n : 1) * sizeof(float)); }

void xd_layer_saved_alloc(xd_layer_saved *s, const xd_model_config *c, int rows) {
  const size_t N = rows, D = c->hidden, F = c->intermediate, Hd = (size_t)c->n_heads * c->head_dim,
               Gd = (size_t)c->n_kv_heads * c->head_dim;
  s->rows = rows;
  s->h_in = nf(N * D); s->x = nf(N * D); s->rstd_in = nf(N);
  s->q_raw = nf(N * Hd); s->k_raw = nf(N * Gd); s->v_raw = nf(N * Gd);
  s->q_nrm = nf(N * Hd); s->k_nrm = nf(N * Gd);
  s->rstd_q = nf(N * c->n_heads); s->rstd_k = nf(N * c->n_kv_heads);
  s->a = nf(N * Hd); s->o = nf(N * D); s->rstd_o = nf(N); s->h_mid = nf(N * D); s->x2 = nf(N * D); s->rstd_mlp = nf(N);
  s->gate = nf(N * F); s->up = nf(N * F); s->act = nf(N * F); s->m = nf(N * D); s->rstd_m = nf(N);
}

void xd_layer_saved_free(xd_layer_saved *s) {
  float *p[] = {s->h_in, s->x, s->rstd_in, s->q_raw, s->k_raw, s->v_raw, s->q_nrm, s->k_nrm, s->rstd_q, s->rstd_k,
                s->a, s->o, s->rstd_o, s->h_mid, s->x2, s->rstd_mlp, s->gate, s->up, s->act, s->m, s->rstd_m};
  for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) free(p[i]);
  memset(s, 0, sizeof *s);
}

void xd_layer_grad_scratch_alloc(xd_layer_grad_scratch *g, const xd_model_config *c, int rows) {
  const size_t N = rows, D = c->hidden, F = c->intermediate;
  g->rows = rows;
  g->d_nd0 = nf(N * D); g->d_nd1 = nf(N * D);
  g->d_f0 = nf(N * F); g->d_f1 = nf(N * F); g->d_f2 = nf(N * F);
  g->d_q = nf(N * c->n_heads * c->head_dim); g->d_k = nf(N * c->n_kv_heads * c->head_dim);
  g->d_q2 = nf(N * c->n_heads * c->head_dim); g->d_k2 = nf(N * c->n_kv_heads * c->head_dim);
}

void xd_layer_grad_scratch_free(xd_layer_grad_scratch *g) {
  float *p[] = {g->d_nd0, g->d_nd1, g->d_f0, g->d_f1, g->d_f2, g->d_q, g->d_k, g->d_q2, g->d_k2};
  for (size_t i = 0; i < sizeof p / sizeof p[0]; i++) free(p[i]);
  memset(g, 0, sizeof *g);
}

void xd_teacher_layer_in_save(const xd_model_config *c, const xd_teacher_layer *L, int layer, const xd_rope_tables *rope,
                              const int *pos, int N, const float *h, xd_layer_saved *s, float *q, float *k) {
  XD_CHECK(N <= s->rows);
  const int D = c->hidden, H = c->n_heads, G = c->n_kv_heads, d = c->head_dim;
  const float eps = (float)c->rms_eps;
  memcpy(s->h_in, h, (size_t)N * D * sizeof(float));
  if (c->post_norm) memcpy(s->x, h, (size_t)N * D * sizeof(float));
  else rmsnorm_forward(s->x, s->rstd_in, h, L->attn_norm, N, D, eps);
  matmul_forward(s->q_raw, s->x, L->wq, L->bq, N, D, H * d);
  matmul_forward(s->k_raw, s->x, L->wk, L->bk, N, D, G * d);
  matmul_forward(s->v_raw, s->x, L->wv, L->bv, N, D, G * d);
  if (c->qk_norm == XD_QKNORM_HEAD) {
    rmsnorm_forward(s->q_nrm, s->rstd_q, s->q_raw, L->q_norm, N * H, d, eps);
    rmsnorm_forward(s->k_nrm, s->rstd_k, s->k_raw, L->k_norm, N * G, d, eps);
  } else if (c->qk_norm == XD_QKNORM_PROJ) {
    rmsnorm_forward(s->q_nrm, s->rstd_q, s->q_raw, L->q_norm, N, H * d, eps);
    rmsnorm_forward(s->k_nrm, s->rstd_k, s->k_raw, L->k_norm, N, G * d, eps);
  } else {
    memcpy(s->q_nrm, s->q_raw, (size_t)N * H * d * sizeof(float));
    memcpy(s->k_nrm, s->k_raw, (size_t)N * G * d * sizeof(float));
  }
  const int kind = c->layer_sliding[layer];
  rope_forward(q, s->q_nrm, rope->cos[kind], rope->sin[kind], pos, N, H, d);
  rope_forward(k, s->k_nrm, rope->cos[kind], rope->sin[kind], pos, N, G, d);
}

static void add3(float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void xd_teacher_layer_out_save(const xd_model_config *c, const xd_teacher_layer *L, int N, const float *a,
                               xd_layer_saved *s, float *h_out) {
  XD_CHECK(N <= s->rows);
  const int D = c->hidden, F = c->intermediate, Hd = c->n_heads * c->head_dim;
  const float eps = (float)c->rms_eps;
  const size_t ND = (size_t)N * D;
  if (a != s->a) memcpy(s->a, a, (size_t)N * Hd * sizeof(float));
  matmul_forward(s->o, s->a, L->wo, L->bo, N, Hd, D);
  if (c->post_norm) {
    rmsnorm_forward(h_out, s->rstd_o, s->o, L->attn_out_norm, N, D, eps); /* h_out as scratch */
    add3(s->h_mid, s->h_in, h_out, ND);
    memcpy(s->x2, s->h_mid, ND * sizeof(float));
  } else {
    add3(s->h_mid, s->h_in, s->o, ND);
    rmsnorm_forward(s->x2, s->rstd_mlp, s->h_mid, L->mlp_norm, N, D, eps);
  }
  matmul_forward(s->gate, s->x2, L->w_gate, L->b_gate, N, D, F);
  matmul_forward(s->up, s->x2, L->w_up, L->b_up, N, D, F);
  swiglu_forward(s->act, s->gate, s->up, (size_t)N * F);
  matmul_forward(s->m, s->act, L->w_down, L->b_down, N, F, D);
  if (c->post_norm) {
    rmsnorm_forward(h_out, s->rstd_m, s->m, L->mlp_out_norm, N, D, eps);
    add3(h_out, s->h_mid, h_out, ND);
  } else {
    add3(h_out, s->h_mid, s->m, ND);
  }
}

#define G_(field) (grad ? grad->field : NULL)

void xd_teacher_layer_out_backward(const xd_model_config *c, const xd_teacher_layer *L, int N, const xd_layer_saved *s,
                                   float *dh, float *da, xd_teacher_layer *grad, xd_layer_grad_scratch *g) {
  const int D = c->hidden, F = c->intermediate, Hd = c->n_heads * c->head_dim;
  const size_t ND = (size_t)N * D, NF = (size_t)N * F;
  /* MLP branch: h_out = h_mid + [norm](m),  m = act Wd^T,  act = swiglu(gate, up) */
  const float *dm = dh;
  if (c->post_norm) {
    memset(g->d_nd0, 0, ND * sizeof(float));
    rmsnorm_backward(g->d_nd0, G_(mlp_out_norm), dh, s->m, L->mlp_out_norm, s->rstd_m, N, D);
    dm = g->d_nd0;
  }
  memset(g->d_f0, 0, NF * sizeof(float));
  matmul_backward(g->d_f0, G_(w_down), G_(b_down), dm, s->act, L->w_down, N, F, D);
  memset(g->d_f1, 0, NF * sizeof(float));
  memset(g->d_f2, 0, NF * sizeof(float));
  swiglu_backward(g->d_f1, g->d_f2, g->d_f0, s->gate, s->up, NF);
  float *dx2 = g->d_nd1;
  memset(dx2, 0, ND * sizeof(float));
  matmul_backward(dx2, G_(w_gate), G_(b_gate), g->d_f1, s->x2, L->w_gate, N, D, F);
  matmul_backward(dx2, G_(w_up), G_(b_up), g->d_f2, s->x2, L->w_up, N, D, F);
  /* dh_mid = dh (residual) + d(x2)/d(h_mid) */
  if (c->post_norm) {
    for (size_t i = 0; i < ND; i++) dh[i] += dx2[i];
  } else {
    rmsnorm_backward(dh, G_(mlp_norm), dx2, s->h_mid, L->mlp_norm, s->rstd_mlp, N, D);
  }
  /* attention output: h_mid = h_in + [norm](o),  o = a Wo^T + bo */
  const float *d_o = dh;
  if (c->post_norm) {
    memset(g->d_nd0, 0, ND * sizeof(float));
    rmsnorm_backward(g->d_nd0, G_(attn_out_norm), dh, s->o, L->attn_out_norm, s->rstd_o, N, D);
    d_o = g->d_nd0;
  }
  memset(da, 0, (size_t)N * Hd * sizeof(float));
  matmul_backward(da, G_(wo), G_(bo), d_o, s->a, L->wo, N, Hd, D);
}

void xd_teacher_layer_in_backward(const xd_model_config *c, const xd_teacher_layer *L, int layer,
                                  const xd_rope_tables *rope, const int *pos, int N, const xd_layer_saved *s,
                                  const float *dq, const float *dk, const float *dv, const float *dq_raw,
                                  const float *dk_raw, const float *dx, float *dh, xd_teacher_layer *grad,
                                  xd_layer_grad_scratch *g) {
  const int D = c->hidden, H = c->n_heads, G = c->n_kv_heads, d = c->head_dim;
  const size_t ND = (size_t)N * D, NQ = (size_t)N * H * d, NK = (size_t)N * G * d;
  const int kind = c->layer_sliding[layer];
  /* RoPE^T, then QK-norm backward into d(q_raw), d(k_raw) (g->d_q, g->d_k) */
  rope_backward(g->d_q, dq, rope->cos[kind], rope->sin[kind], pos, N, H, d);
  rope_backward(g->d_k, dk, rope->cos[kind], rope->sin[kind], pos, N, G, d);
  if (c->qk_norm != XD_QKNORM_NONE) {
    /* rmsnorm_backward accumulates: d(raw) = 0 + J^T d(nrm); needs separate in/out buffers */
    float *tq = g->d_q2, *tk = g->d_k2;
    memset(tq, 0, NQ * sizeof(float));
    memset(tk, 0, NK * sizeof(float));
    if (c->qk_norm == XD_QKNORM_HEAD) {
      rmsnorm_backward(tq, G_(q_norm), g->d_q, s->q_raw, L->q_norm, s->rstd_q, N * H, d);
      rmsnorm_backward(tk, G_(k_norm), g->d_k, s->k_raw, L->k_norm, s->rstd_k, N * G, d);
    } else {
      rmsnorm_backward(tq, G_(q_norm), g->d_q, s->q_raw, L->q_norm, s->rstd_q, N, H * d);
      rmsnorm_backward(tk, G_(k_norm), g->d_k, s->k_raw, L->k_norm, s->rstd_k, N, G * d);
    }
    memcpy(g->d_q, tq, NQ * sizeof(float));
    memcpy(g->d_k, tk, NK * sizeof(float));
  }
  if (dq_raw) for (size_t i = 0; i < NQ; i++) g->d_q[i] += dq_raw[i];
  if (dk_raw) for (size_t i = 0; i < NK; i++) g->d_k[i] += dk_raw[i];
  /* projections from x */
  float *dxx = g->d_nd0;
  if (dx) memcpy(dxx, dx, ND * sizeof(float));
  else memset(dxx, 0, ND * sizeof(float));
  matmul_backward(dxx, G_(wq), G_(bq), g->d_q, s->x, L->wq, N, D, H * d);
  matmul_backward(dxx, G_(wk), G_(bk), g->d_k, s->x, L->wk, N, D, G * d);
  matmul_backward(dxx, G_(wv), G_(bv), dv, s->x, L->wv, N, D, G * d);
  if (c->post_norm) {
    for (size_t i = 0; i < ND; i++) dh[i] += dxx[i];
  } else {
    rmsnorm_backward(dh, G_(attn_norm), dxx, s->h_in, L->attn_norm, s->rstd_in, N, D);
  }
}
