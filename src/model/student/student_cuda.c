/* The student on the GPU (student_cuda.h): weight upload, batched forward / prefill composed
 * from the CUDA ops, and the constant-memory decode step (student_decode.cu) replayed as a
 * CUDA graph. Compiled only with the CUDA backend. */
#include "model/student/student_cuda.h"
#include "core/core.h"

#ifndef XD_HAVE_CUDA
int xd_student_cuda_forward_dir(const char *dir, const int32_t *ids, int B, int T, float *logits, xd_err *e) {
  (void)dir, (void)ids, (void)B, (void)T, (void)logits;
  return xd_errf(e, "--device cuda: built without CUDA (configure with -DXD_CUDA=ON)");
}
int xd_student_cuda_generate_dir(const char *dir, const int32_t *ids, int B, int T, int max_new, int stop_at_eos,
                                 int32_t *out, int *n_out, xd_err *e) {
  (void)dir, (void)ids, (void)B, (void)T, (void)max_new, (void)stop_at_eos, (void)out, (void)n_out;
  return xd_errf(e, "--device cuda: built without CUDA (configure with -DXD_CUDA=ON)");
}
#else

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/cpu/rope.h"

typedef struct {
  uint16_t *w_qkv, *w_o, *w_gu, *w_down, *b_gu16;
  float *attn_norm, *mlp_norm, *attn_out_norm, *mlp_out_norm, *q_norm, *k_norm;
  float *b_qkv, *b_o, *b_gu, *b_down;
  float *P_q, *P_k, *w_i, *b_i, *w_f, *b_f, *w_mix, *b_mix;
  int W, S, kind;
} dev_layer;

/* Forward activations for up to `rows` tokens (fp32 unless named *b: bf16). */
typedef struct {
  int rows, logit_rows, rope_pos, rope_seq;
  uint16_t *xb, *qb, *kb, *vb, *locb, *attb, *gu, *act;
  float *xf, *qr, *kr, *vr, *q, *k, *loc, *qf, *kf, *ig, *fg, *glob, *mixo, *o, *h, *tmp, *logits;
  int32_t *ids, *pos;
  float *cos_t[2], *sin_t[2];
} fwd_acts;

struct xd_student_cuda {
  xd_cuda_ctx *c;
  xd_model_config cfg;
  xd_hybrid_config hy;
  int P;
  dev_layer *ly;
  uint16_t *embed, *lm_head;
  float *final_norm;
  void **allocs; /* weights, freed together */
  int n_allocs, cap_allocs;
  size_t weight_bytes;
  fwd_acts a;
};

struct xd_student_cuda_state {
  xd_student_cuda *m;
  int B;                      /* sequences (slots) */
  xd_cuda_sdec dec;
  xd_cuda_sdec_layer *layers;
  xd_cuda_sdec_params *prm;   /* host copy of the step inputs [B] */
  xd_cuda_sdec_params *prm_d; /* device [B] */
  int32_t *next_d;            /* device [B]: greedy next ids (xd_student_cuda_argmax) */
  void *state_block, *scratch_block;
  size_t state_bytes, state_block_bytes, scratch_bytes;
  void *graph;
  unsigned graph_gen; /* cuBLASLt workspace generation the batched step's graph was captured with */
  int use_graph, plain_steps;
  int64_t *pos; /* [B] */
};

/* ---- helpers ----------------------------------------------------------------------------- */
static void *track(xd_student_cuda *m, size_t bytes, xd_err *e) {
  void *p = NULL;
  if (xd_cuda_malloc(&p, bytes ? bytes : 16, e)) return NULL;
  if (m->n_allocs == m->cap_allocs) {
    m->cap_allocs = m->cap_allocs ? 2 * m->cap_allocs : 256;
    m->allocs = xd_realloc(m->allocs, (size_t)m->cap_allocs * sizeof(void *));
  }
  m->allocs[m->n_allocs++] = p;
  m->weight_bytes += bytes;
  return p;
}

/* fp32 host rows (concatenated from up to 3 parts) -> bf16 device. */
static uint16_t *up_bf16(xd_student_cuda *m, const float *a, size_t na, const float *b, size_t nb, const float *c3,
                         size_t nc, xd_err *e) {
  const size_t n = na + nb + nc;
  uint16_t *h = xd_malloc(n * sizeof(uint16_t) + 1);
  for (size_t i = 0; i < na; i++) h[i] = xd_f32_to_bf16(a[i]);
  for (size_t i = 0; i < nb; i++) h[na + i] = xd_f32_to_bf16(b[i]);
  for (size_t i = 0; i < nc; i++) h[na + nb + i] = xd_f32_to_bf16(c3[i]);
  uint16_t *d = track(m, n * sizeof(uint16_t), e);
  const int rc = d ? xd_cuda_upload(m->c, d, h, n * sizeof(uint16_t), e) : -1;
  free(h);
  return rc ? NULL : d;
}
static float *up_f32(xd_student_cuda *m, const float *a, size_t na, const float *b, size_t nb, const float *c3,
                     size_t nc, xd_err *e) {
  const size_t n = na + nb + nc;
  float *d = track(m, n * sizeof(float), e);
  if (!d) return NULL;
  if (xd_cuda_upload(m->c, d, a, na * sizeof(float), e)) return NULL;
  if (nb && xd_cuda_upload(m->c, d + na, b, nb * sizeof(float), e)) return NULL;
  if (nc && xd_cuda_upload(m->c, d + na + nb, c3, nc * sizeof(float), e)) return NULL;
  return d;
}
#define UPF(dst, src, n) do { if (src) { if (!((dst) = up_f32(m, (src), (n), NULL, 0, NULL, 0, e))) goto fail; } } while (0)


int xd_student_cuda_upload(xd_student_cuda **out, xd_cuda_ctx *c, const xd_student *s, xd_err *e) {
  *out = NULL;
  const xd_model_config *cf = &s->cfg;
  const int D = cf->hidden, F = cf->intermediate, H = cf->n_heads, G = cf->n_kv_heads, d = cf->head_dim, V = cf->vocab;
  const int P = s->hy.d_phi, Hd = H * d, Gd = G * d;
  if (P > 128 || d > 256 || s->hy.chunk > 64)
    return xd_errf(e, "student on CUDA: d_phi %d / head dim %d / chunk %d not supported (the mLSTM kernel needs d_phi <= 128, head dim <= 256, chunk <= 64)",
                   P, d, s->hy.chunk);
  if (H > 256 || d % 2) return xd_errf(e, "student on CUDA: %d heads of dim %d not supported (<= 256 heads, even dim)", H, d);
  xd_student_cuda *m = xd_calloc(1, sizeof *m);
  m->c = c;
  m->cfg = *cf;
  m->hy = s->hy;
  m->P = P;
  m->ly = xd_calloc((size_t)cf->n_layers, sizeof *m->ly);
  if (!(m->embed = up_bf16(m, s->base.embed, (size_t)V * D, NULL, 0, NULL, 0, e))) goto fail;
  if (cf->tie_embeddings) m->lm_head = m->embed;
  else if (!(m->lm_head = up_bf16(m, s->base.lm_head, (size_t)V * D, NULL, 0, NULL, 0, e))) goto fail;
  UPF(m->final_norm, s->base.final_norm, D);
  for (int l = 0; l < cf->n_layers; l++) {
    const xd_teacher_layer *L = &s->base.layers[l];
    const xd_hybrid_layer *Y = &s->hl[l];
    dev_layer *y = &m->ly[l];
    y->W = xd_hybrid_layer_window(&m->cfg, &m->hy, l);
    y->S = xd_hybrid_layer_sinks(&m->cfg, &m->hy, l);
    y->kind = cf->layer_sliding[l];
    if (!(y->w_qkv = up_bf16(m, L->wq, (size_t)Hd * D, L->wk, (size_t)Gd * D, L->wv, (size_t)Gd * D, e))) goto fail;
    if (!(y->w_o = up_bf16(m, L->wo, (size_t)D * Hd, NULL, 0, NULL, 0, e))) goto fail;
    if (!(y->w_gu = up_bf16(m, L->w_gate, (size_t)F * D, L->w_up, (size_t)F * D, NULL, 0, e))) goto fail;
    if (!(y->w_down = up_bf16(m, L->w_down, (size_t)D * F, NULL, 0, NULL, 0, e))) goto fail;
    if (L->bq && !(y->b_qkv = up_f32(m, L->bq, Hd, L->bk, Gd, L->bv, Gd, e))) goto fail;
    if (L->b_gate) {
      if (!(y->b_gu = up_f32(m, L->b_gate, F, L->b_up, F, NULL, 0, e))) goto fail;
      if (!(y->b_gu16 = up_bf16(m, L->b_gate, F, L->b_up, F, NULL, 0, e))) goto fail;
    }
    UPF(y->b_o, L->bo, D);
    UPF(y->b_down, L->b_down, D);
    UPF(y->attn_norm, L->attn_norm, D);
    UPF(y->mlp_norm, L->mlp_norm, D);
    UPF(y->attn_out_norm, L->attn_out_norm, D);
    UPF(y->mlp_out_norm, L->mlp_out_norm, D);
    const int qn = cf->qk_norm == XD_QKNORM_PROJ ? Hd : d, kn = cf->qk_norm == XD_QKNORM_PROJ ? Gd : d;
    UPF(y->q_norm, L->q_norm, qn);
    UPF(y->k_norm, L->k_norm, kn);
    const int pw = xd_hybrid_p_width(&s->hy);
    UPF(y->P_q, Y->P_q, (size_t)Hd * pw);
    UPF(y->P_k, Y->P_k, (size_t)Gd * pw);
    UPF(y->w_i, Y->w_i, (size_t)H * D);
    UPF(y->b_i, Y->b_i, H);
    UPF(y->w_f, Y->w_f, (size_t)H * D);
    UPF(y->b_f, Y->b_f, H);
    UPF(y->w_mix, Y->w_o, (size_t)H * 3 * d);
    UPF(y->b_mix, Y->b_o, H);
  }
  if (xd_cuda_sync(c, e)) goto fail;
  *out = m;
  return 0;
fail:
  xd_student_cuda_free(m);
  return -1;
}

/* ---- random weights on the device (benchmarks) ---- */
static uint16_t *rnd_bf16(xd_student_cuda *m, size_t n, uint64_t *seed, float scale, xd_err *e) {
  uint16_t *d = track(m, n * 2, e);
  if (!d || xd_cuda_fill_uniform_bf16(m->c, d, n, (*seed)++, scale, e)) return NULL;
  return d;
}
/* fp32 values offset + uniform(+-scale), via a bf16 fill and a conversion */
static float *rnd_f32(xd_student_cuda *m, size_t n, uint64_t *seed, float offset, float scale, xd_err *e) {
  float *d = track(m, n * 4, e);
  uint16_t *t = NULL;
  if (!d || xd_cuda_malloc((void **)&t, n * 2, e)) return NULL;
  int rc = xd_cuda_fill_uniform_bf16(m->c, t, n, (*seed)++, scale, e);
  if (rc == 0) rc = xd_cuda_bf16_to_f32(m->c, d, t, n, e);
  if (rc == 0) rc = xd_cuda_sync(m->c, e);
  if (rc == 0 && offset != 0) { /* add the offset on the host side: small vectors only */
    float *h = xd_malloc(n * 4);
    rc = xd_cuda_download(m->c, h, d, n * 4, e);
    for (size_t i = 0; rc == 0 && i < n; i++) h[i] += offset;
    if (rc == 0) rc = xd_cuda_upload(m->c, d, h, n * 4, e);
    if (rc == 0) rc = xd_cuda_sync(m->c, e);
    free(h);
  }
  xd_cuda_free(t);
  return rc ? NULL : d;
}

int xd_student_cuda_random(xd_student_cuda **out, xd_cuda_ctx *c, const xd_model_config *cf,
                           const xd_hybrid_config *hy, uint64_t seed, xd_err *e) {
  *out = NULL;
  const int D = cf->hidden, F = cf->intermediate, H = cf->n_heads, G = cf->n_kv_heads, d = cf->head_dim, V = cf->vocab;
  const int P = hy->d_phi, pw = xd_hybrid_p_width(hy), Hd = H * d, Gd = G * d;
  if (P > 128 || d > 256 || hy->chunk > 64 || cf->qkv_bias || cf->o_bias || cf->mlp_bias || cf->qk_norm != XD_QKNORM_NONE ||
      cf->post_norm)
    return xd_errf(e, "student on CUDA: random models are llama-shaped only (no biases, no QK-norm, pre-norm)");
  xd_student_cuda *m = xd_calloc(1, sizeof *m);
  m->c = c;
  m->cfg = *cf;
  m->hy = *hy;
  m->P = P;
  m->ly = xd_calloc((size_t)cf->n_layers, sizeof *m->ly);
#define R16(dst, n, fan) do { if (!((dst) = rnd_bf16(m, (n), &seed, sqrtf(3.0f / (float)(fan)), e))) goto fail; } while (0)
#define R32(dst, n, off, sc) do { if (!((dst) = rnd_f32(m, (n), &seed, (off), (sc), e))) goto fail; } while (0)
  R16(m->embed, (size_t)V * D, 3);
  if (cf->tie_embeddings) m->lm_head = m->embed;
  else R16(m->lm_head, (size_t)V * D, D);
  R32(m->final_norm, D, 1.0f, 0.0f);
  for (int l = 0; l < cf->n_layers; l++) {
    dev_layer *y = &m->ly[l];
    y->W = xd_hybrid_layer_window(&m->cfg, &m->hy, l);
    y->S = xd_hybrid_layer_sinks(&m->cfg, &m->hy, l);
    y->kind = cf->layer_sliding[l];
    R16(y->w_qkv, (size_t)(Hd + 2 * Gd) * D, D);
    R16(y->w_o, (size_t)D * Hd, Hd);
    R16(y->w_gu, (size_t)2 * F * D, D);
    R16(y->w_down, (size_t)D * F, F);
    R32(y->attn_norm, D, 1.0f, 0.0f);
    R32(y->mlp_norm, D, 1.0f, 0.0f);
    R32(y->P_q, (size_t)Hd * pw, 0.0f, sqrtf(3.0f / d));
    R32(y->P_k, (size_t)Gd * pw, 0.0f, sqrtf(3.0f / d));
    R32(y->w_i, (size_t)H * D, 0.0f, 0.01f);
    R32(y->b_i, H, 0.0f, 1.0f);
    R32(y->w_f, (size_t)H * D, 0.0f, 0.01f);
    R32(y->b_f, H, 4.5f, 1.5f);
    R32(y->w_mix, (size_t)H * 3 * d, 0.0f, 0.01f);
    R32(y->b_mix, H, 0.0f, 1.0f);
  }
#undef R16
#undef R32
  if (xd_cuda_sync(c, e)) goto fail;
  *out = m;
  return 0;
fail:
  xd_student_cuda_free(m);
  return -1;
}

static void acts_free(fwd_acts *a) {
  void *p[] = {a->xb, a->qb, a->kb, a->vb, a->locb, a->attb, a->gu, a->act, a->xf, a->qr, a->kr, a->vr, a->q,
               a->k, a->loc, a->qf, a->kf, a->ig, a->fg, a->glob, a->mixo, a->o, a->h, a->tmp, a->ids, a->pos};
  for (size_t i = 0; i < sizeof p / sizeof *p; i++) xd_cuda_free(p[i]);
  xd_cuda_free(a->logits);
  for (int k = 0; k < 2; k++) { xd_cuda_free(a->cos_t[k]); xd_cuda_free(a->sin_t[k]); }
  memset(a, 0, sizeof *a);
}

void xd_student_cuda_free(xd_student_cuda *m) {
  if (!m) return;
  acts_free(&m->a);
  for (int i = 0; i < m->n_allocs; i++) xd_cuda_free(m->allocs[i]);
  free(m->allocs);
  free(m->ly);
  free(m);
}

size_t xd_student_cuda_weight_bytes(const xd_student_cuda *m) { return m->weight_bytes; }

/* ---- forward ------------------------------------------------------------------------------ */
static int acts_ensure(xd_student_cuda *m, int N, int logit_rows, xd_err *e) {
  fwd_acts *a = &m->a;
  const xd_model_config *c = &m->cfg;
  if (N > a->rows) {
    const int keep_lr = a->logit_rows;
    float *keep_lg = a->logits;
    a->logits = NULL;
    for (int k = 0; k < 2; k++) { xd_cuda_free(a->cos_t[k]); xd_cuda_free(a->sin_t[k]); a->cos_t[k] = a->sin_t[k] = NULL; }
    acts_free(a);
    a->logits = keep_lg;
    a->logit_rows = keep_lr;
    const size_t n = (size_t)N, D = c->hidden, Hd = (size_t)c->n_heads * c->head_dim, Gd = (size_t)c->n_kv_heads * c->head_dim;
    const size_t H = c->n_heads, G = c->n_kv_heads, P = m->P, F = c->intermediate;
#define AL(p, bytes) do { if (xd_cuda_malloc((void **)&(p), (bytes), e)) return -1; } while (0)
    AL(a->xb, n * D * 2); AL(a->qb, n * Hd * 2); AL(a->kb, n * Gd * 2); AL(a->vb, n * Gd * 2);
    AL(a->locb, n * Hd * 2); AL(a->attb, n * Hd * 2); AL(a->gu, n * 2 * F * 2); AL(a->act, n * F * 2);
    AL(a->xf, n * D * 4); AL(a->qr, n * Hd * 4); AL(a->kr, n * Gd * 4); AL(a->vr, n * Gd * 4);
    AL(a->q, n * Hd * 4); AL(a->k, n * Gd * 4); AL(a->loc, n * Hd * 4); AL(a->qf, n * H * P * 4);
    AL(a->kf, n * G * P * 4); AL(a->ig, n * H * 4); AL(a->fg, n * H * 4); AL(a->glob, n * Hd * 4);
    AL(a->mixo, n * Hd * 4); AL(a->o, n * H * 4); AL(a->h, n * D * 4); AL(a->tmp, n * D * 4);
    AL(a->ids, n * 4); AL(a->pos, n * 4);
    a->rows = N;
    a->rope_pos = 0;
  }
  if (logit_rows > a->logit_rows) {
    xd_cuda_free(a->logits);
    a->logits = NULL;
    a->logit_rows = 0;
    AL(a->logits, (size_t)logit_rows * c->vocab * 4);
    a->logit_rows = logit_rows;
  }
#undef AL
  return 0;
}

/* RoPE tables [T, d/2] for both layer kinds, rebuilt only when too short (or, for dynamic NTK,
 * when the sequence length changes), as xd_rope_tables_update. */
static int rope_ensure(xd_student_cuda *m, int T, xd_err *e) {
  fwd_acts *a = &m->a;
  const xd_model_config *c = &m->cfg;
  const int dynamic = c->rope[0].kind == XD_ROPE_DYNAMIC || c->rope[1].kind == XD_ROPE_DYNAMIC;
  if (T <= a->rope_pos && (!dynamic || a->rope_seq == T)) return 0;
  const int npos = T > a->rope_pos ? T : a->rope_pos;
  const size_t bytes = (size_t)npos * (c->head_dim / 2) * sizeof(float);
  xd_rope_tables r;
  xd_rope_tables_alloc(&r, c, npos);
  xd_rope_tables_update(&r, c, T);
  int rc = 0;
  for (int k = 0; k < 2 && rc == 0; k++) {
    if (npos > a->rope_pos) {
      xd_cuda_free(a->cos_t[k]);
      xd_cuda_free(a->sin_t[k]);
      a->cos_t[k] = a->sin_t[k] = NULL;
      rc = xd_cuda_malloc((void **)&a->cos_t[k], bytes, e);
      if (rc == 0) rc = xd_cuda_malloc((void **)&a->sin_t[k], bytes, e);
    }
    if (rc == 0) rc = xd_cuda_upload(m->c, a->cos_t[k], r.cos[k], bytes, e);
    if (rc == 0) rc = xd_cuda_upload(m->c, a->sin_t[k], r.sin[k], bytes, e);
  }
  if (rc == 0) rc = xd_cuda_sync(m->c, e); /* r is freed below */
  xd_rope_tables_free(&r);
  if (rc) { a->rope_pos = 0; return -1; }
  a->rope_pos = npos;
  a->rope_seq = T;
  return 0;
}

#define CK(x) do { if ((x) != 0) return -1; } while (0)

/* The forward over B sequences of T; with st (B == 1) the prefill hand-off: final mLSTM
 * states and the sink + ring K/V go into slot `slot` of the decode state. */
static int run_forward(xd_student_cuda *m, const int32_t *ids, int B, int T, xd_student_cuda_state *st, int slot,
                       float *logits, int last_only, xd_err *e) {
  const xd_model_config *c = &m->cfg;
  xd_cuda_ctx *cx = m->c;
  const int D = c->hidden, H = c->n_heads, G = c->n_kv_heads, d = c->head_dim, F = c->intermediate, V = c->vocab;
  const int Hd = H * d, Gd = G * d, P = m->P, N = B * T;
  const float eps = (float)c->rms_eps;
  if (B < 1 || T < 1) return xd_errf(e, "student on CUDA: empty input (B %d, T %d)", B, T);
  if ((int64_t)B * T > (1 << 30)) return xd_errf(e, "student on CUDA: B*T = %lld too large", (long long)B * T);
  CK(xd_check_token_ids(ids, (size_t)N, V, e));
  CK(acts_ensure(m, N, last_only ? B : N, e));
  CK(rope_ensure(m, T, e));
  fwd_acts *a = &m->a;
  int32_t *pos = xd_malloc((size_t)N * sizeof(int32_t));
  for (int i = 0; i < N; i++) pos[i] = i % T;
  int rc = xd_cuda_upload(cx, a->pos, pos, (size_t)N * 4, e);
  if (rc == 0) rc = xd_cuda_upload(cx, a->ids, ids, (size_t)N * 4, e);
  if (rc == 0) rc = xd_cuda_sync(cx, e);
  free(pos);
  CK(rc);
  CK(xd_cuda_embedding_forward(cx, a->xb, a->ids, m->embed, N, D, V, e));
  CK(xd_cuda_bf16_to_f32(cx, a->h, a->xb, (size_t)N * D, e));
  const int fast_attn = d == 64 || d == 128;
  const int hh = m->hy.feature_map == XD_FMAP_HEDGEHOG;
  for (int l = 0; l < c->n_layers; l++) {
    const dev_layer *y = &m->ly[l];
    const float *xf = a->h;
    if (c->post_norm) {
      CK(xd_cuda_rmsnorm_f32(cx, a->xb, NULL, a->h, NULL, N, D, eps, e));
    } else {
      CK(xd_cuda_rmsnorm_f32(cx, a->xb, a->xf, a->h, y->attn_norm, N, D, eps, e));
      xf = a->xf;
    }
    CK(xd_cuda_matmul(cx, a->qr, XD_CUDA_F32, a->xb, y->w_qkv, y->b_qkv, N, D, Hd, 0, e));
    CK(xd_cuda_matmul(cx, a->kr, XD_CUDA_F32, a->xb, y->w_qkv + (size_t)Hd * D, y->b_qkv ? y->b_qkv + Hd : NULL, N, D,
                      Gd, 0, e));
    CK(xd_cuda_matmul(cx, a->vr, XD_CUDA_F32, a->xb, y->w_qkv + (size_t)(Hd + Gd) * D,
                      y->b_qkv ? y->b_qkv + Hd + Gd : NULL, N, D, Gd, 0, e));
    CK(xd_cuda_student_qk_prep(cx, a->q, a->k, a->qb, a->kb, a->vb, a->qr, a->kr, a->vr, y->q_norm, y->k_norm,
                               (int)c->qk_norm, a->cos_t[y->kind], a->sin_t[y->kind], a->pos, N, H, G, d, eps, e));
    if (fast_attn) {
      const xd_cuda_attn_dims ad = {B, T, H, G, d, y->W, y->S, Hd, Gd, Gd, Hd};
      CK(xd_cuda_attention_forward(cx, a->locb, NULL, a->qb, a->kb, a->vb, &ad, e));
      CK(xd_cuda_bf16_to_f32(cx, a->loc, a->locb, (size_t)N * Hd, e));
    } else {
      CK(xd_cuda_swa_naive_forward(cx, a->loc, a->q, a->k, a->vr, B, T, H, G, d, y->W, y->S, e));
    }
    mlstm_state fin = {0};
    if (st) { /* slot `slot` of each [B, ...] state array */
      const xd_cuda_sdec_layer *sl = &st->layers[l];
      const size_t so = (size_t)slot * y->S * Gd, ro = (size_t)slot * y->W * Gd;
      CK(xd_cuda_student_ring_fill(cx, sl->k_sink + so, sl->v_sink + so, sl->k_ring + ro, sl->v_ring + ro, a->kb, a->vb,
                                   T, Gd, y->W, y->S, e));
      fin.C = sl->C + (size_t)slot * H * P * d;
      fin.n = sl->n + (size_t)slot * H * P;
      fin.m = sl->m + (size_t)slot * H;
    }
    const feature_map_shape fq = {N, H, d, P, hh}, fk = {N, G, d, P, hh};
    CK(xd_cuda_feature_map_forward(cx, a->qf, a->q, y->P_q, &fq, e));
    CK(xd_cuda_feature_map_forward(cx, a->kf, a->k, y->P_k, &fk, e));
    const gates_shape gs = {N, D, H, m->hy.gate_softcap};
    CK(xd_cuda_gates_forward(cx, a->ig, a->fg, xf, y->w_i, y->b_i, y->w_f, y->b_f, &gs, e));
    mlstm_cfg mc = mlstm_cfg_make(B, T, H, G, P, d);
    mc.chunk = m->hy.chunk;
    mc.norm = m->hy.normalizer == XD_NORM_XLSTM ? MLSTM_NORM_MAX : MLSTM_NORM_PAPER;
    mc.eps = m->hy.eps;
    /* The tensor-core forward (mlstm_tc.cu, bf16 MMA inputs) where it has the shape, else the fp32 one. */
    CK((P == 64 && d == 64 && mc.chunk == 64 ? xd_cuda_mlstm_chunkwise_forward_tc : xd_cuda_mlstm_chunkwise_forward)(
        cx, &mc, a->qf, a->kf, a->vr, a->ig, a->fg, NULL, st ? &fin : NULL, a->glob, e));
    const mix_shape ms = {N, H, G, d};
    CK(xd_cuda_mix_forward(cx, a->mixo, a->o, a->qr, a->kr, a->vr, y->w_mix, y->b_mix, a->glob, a->loc, &ms, e));
    CK(xd_cuda_f32_to_bf16(cx, a->attb, a->mixo, (size_t)N * Hd, e));
    if (c->post_norm) {
      CK(xd_cuda_matmul(cx, a->tmp, XD_CUDA_F32, a->attb, y->w_o, y->b_o, N, Hd, D, 0, e));
      CK(xd_cuda_add_rmsnorm_f32(cx, a->h, a->tmp, y->attn_out_norm, N, D, eps, e));
      CK(xd_cuda_rmsnorm_f32(cx, a->xb, NULL, a->h, NULL, N, D, eps, e));
    } else {
      CK(xd_cuda_matmul(cx, a->h, XD_CUDA_F32, a->attb, y->w_o, y->b_o, N, Hd, D, 1, e));
      CK(xd_cuda_rmsnorm_f32(cx, a->xb, NULL, a->h, y->mlp_norm, N, D, eps, e));
    }
    CK(xd_cuda_matmul(cx, a->gu, XD_CUDA_BF16, a->xb, y->w_gu, y->b_gu16, N, D, 2 * F, 0, e));
    CK(xd_cuda_swiglu_forward(cx, a->act, a->gu, a->gu + F, N, F, 2 * F, e));
    if (c->post_norm) {
      CK(xd_cuda_matmul(cx, a->tmp, XD_CUDA_F32, a->act, y->w_down, y->b_down, N, F, D, 0, e));
      CK(xd_cuda_add_rmsnorm_f32(cx, a->h, a->tmp, y->mlp_out_norm, N, D, eps, e));
    } else {
      CK(xd_cuda_matmul(cx, a->h, XD_CUDA_F32, a->act, y->w_down, y->b_down, N, F, D, 1, e));
    }
  }
  const int rows = last_only ? B : N;
  if (last_only) {
    for (int b = 0; b < B; b++)
      CK(xd_cuda_rmsnorm_f32(cx, a->xb + (size_t)b * D, NULL, a->h + ((size_t)b * T + T - 1) * D, m->final_norm, 1, D,
                             eps, e));
  } else {
    CK(xd_cuda_rmsnorm_f32(cx, a->xb, NULL, a->h, m->final_norm, N, D, eps, e));
  }
  CK(xd_cuda_matmul(cx, a->logits, XD_CUDA_F32, a->xb, m->lm_head, NULL, rows, D, V, 0, e));
  if (logits) CK(xd_cuda_download(cx, logits, a->logits, (size_t)rows * V * sizeof(float), e));
  return 0;
}

int xd_student_cuda_forward(xd_student_cuda *m, const int32_t *ids, int B, int T, float *logits, int last_only,
                            xd_err *e) {
  return run_forward(m, ids, B, T, NULL, 0, logits, last_only, e);
}

const float *xd_student_cuda_logits(const xd_student_cuda *m) { return m->a.logits; }

/* ---- decoding ----------------------------------------------------------------------------- */
static size_t al256(size_t x) { return (x + 255) & ~(size_t)255; }

int xd_student_cuda_state_alloc(xd_student_cuda_state **out, xd_student_cuda *m, xd_err *e) {
  return xd_student_cuda_state_alloc_batch(out, m, 1, e);
}

int xd_student_cuda_state_alloc_batch(xd_student_cuda_state **out, xd_student_cuda *m, int B, xd_err *e) {
  *out = NULL;
  const xd_model_config *c = &m->cfg;
  const int L = c->n_layers, D = c->hidden, H = c->n_heads, G = c->n_kv_heads, d = c->head_dim, P = m->P;
  const size_t Gd = (size_t)G * d;
  if (d / 2 > XD_SDEC_MAX_HALF) return xd_errf(e, "student on CUDA: head dim %d above the decode step's %d", d, 2 * XD_SDEC_MAX_HALF);
  if (B < 1 || B > 65535) return xd_errf(e, "student on CUDA: %d sequences in one decode state (1 .. 65535)", B);
  xd_student_cuda_state *st = xd_calloc(1, sizeof *st);
  st->m = m;
  st->B = B;
  st->use_graph = 1;
  st->layers = xd_calloc((size_t)L, sizeof *st->layers);
  st->prm = xd_calloc((size_t)B, sizeof *st->prm);
  st->pos = xd_calloc((size_t)B, sizeof *st->pos);
  /* one block for the state proper: per layer C, n, m (fp32), sinks, ring (bf16), each [B, ...] */
  size_t off = 0, exact = 0;
  size_t *lo = xd_malloc((size_t)L * 7 * sizeof(size_t));
  for (int l = 0; l < L; l++) {
    const size_t sz[7] = {(size_t)H * P * d * 4, (size_t)H * P * 4, (size_t)H * 4, (size_t)m->ly[l].S * Gd * 2,
                          (size_t)m->ly[l].S * Gd * 2, (size_t)m->ly[l].W * Gd * 2, (size_t)m->ly[l].W * Gd * 2};
    for (int k = 0; k < 7; k++) { lo[l * 7 + k] = off; off += al256(sz[k] * B); exact += sz[k] * B; }
  }
  st->state_bytes = exact;
  st->state_block_bytes = off;
  if (xd_cuda_malloc(&st->state_block, off, e)) goto fail;
  char *b = st->state_block;
  for (int l = 0; l < L; l++) {
    xd_cuda_sdec_layer *sl = &st->layers[l];
    const dev_layer *y = &m->ly[l];
    sl->C = (float *)(b + lo[l * 7 + 0]);
    sl->n = (float *)(b + lo[l * 7 + 1]);
    sl->m = (float *)(b + lo[l * 7 + 2]);
    sl->k_sink = (uint16_t *)(b + lo[l * 7 + 3]);
    sl->v_sink = (uint16_t *)(b + lo[l * 7 + 4]);
    sl->k_ring = (uint16_t *)(b + lo[l * 7 + 5]);
    sl->v_ring = (uint16_t *)(b + lo[l * 7 + 6]);
    sl->attn_norm = y->attn_norm, sl->mlp_norm = y->mlp_norm, sl->attn_out_norm = y->attn_out_norm;
    sl->mlp_out_norm = y->mlp_out_norm, sl->q_norm = y->q_norm, sl->k_norm = y->k_norm;
    sl->w_qkv = y->w_qkv, sl->w_o = y->w_o, sl->w_gu = y->w_gu, sl->w_down = y->w_down;
    sl->b_qkv = y->b_qkv, sl->b_o = y->b_o, sl->b_gu = y->b_gu, sl->b_down = y->b_down, sl->b_gu16 = y->b_gu16;
    sl->P_q = y->P_q, sl->P_k = y->P_k, sl->w_i = y->w_i, sl->b_i = y->b_i, sl->w_f = y->w_f, sl->b_f = y->b_f;
    sl->w_mix = y->w_mix, sl->b_mix = y->b_mix;
    sl->rope_kind = y->kind, sl->W = y->W, sl->S = y->S;
  }
  free(lo);
  lo = NULL;
  xd_cuda_sdec *dc = &st->dec;
  dc->L = L, dc->D = D, dc->F = c->intermediate, dc->H = H, dc->G = G, dc->d = d, dc->P = P, dc->V = c->vocab;
  dc->B = B;
  dc->qk_norm = (int)c->qk_norm, dc->post_norm = c->post_norm, dc->hedgehog = m->hy.feature_map == XD_FMAP_HEDGEHOG;
  dc->norm_max = m->hy.normalizer == XD_NORM_XLSTM;
  dc->rms_eps = (float)c->rms_eps, dc->mlstm_eps = (float)m->hy.eps, dc->softcap = m->hy.gate_softcap;
  dc->embed = m->embed, dc->lm_head = m->lm_head, dc->final_norm = m->final_norm;
  dc->layers = st->layers;
  /* scratch: params [B], next ids [B], then fp32 rows [B, ...] (the batched step uses h, xn, qkv,
   * att, tmp, logits only: no legacy kernels, bf16 GEMM activations), then its bf16 GEMM inputs */
  const size_t Hd = (size_t)H * d, qkv = Hd + 2 * Gd, F = (size_t)c->intermediate;
  const int bat = B > 1;
  const size_t sz[13] = {D, D, qkv, bat ? 0 : Hd, bat ? 0 : Gd, bat ? 0 : (size_t)H * P, bat ? 0 : (size_t)G * P,
                         bat ? 0 : H, bat ? 0 : H, Hd, D, bat ? 0 : F, c->vocab};
  float **dst[13] = {&dc->h, &dc->xn, &dc->qkv, &dc->q, &dc->k, &dc->qf, &dc->kf, &dc->ig, &dc->fg, &dc->att, &dc->tmp, &dc->act, &dc->logits};
  const size_t sz16[4] = {bat ? D : 0, bat ? Hd : 0, bat ? F : 0, bat ? 2 * F : 0};
  uint16_t **dst16[4] = {&dc->xb, &dc->attb, &dc->actb, &dc->gub};
  off = al256(sizeof(xd_cuda_sdec_params) * B) + al256((size_t)B * 4);
  for (int k = 0; k < 13; k++) off += al256(sz[k] * B * 4);
  for (int k = 0; k < 4; k++) off += al256(sz16[k] * B * 2);
  st->scratch_bytes = off;
  if (xd_cuda_malloc(&st->scratch_block, off, e)) goto fail;
  b = st->scratch_block;
  st->prm_d = (xd_cuda_sdec_params *)b;
  off = al256(sizeof(xd_cuda_sdec_params) * B);
  st->next_d = (int32_t *)(b + off);
  off += al256((size_t)B * 4);
  for (int k = 0; k < 13; k++) { *dst[k] = sz[k] ? (float *)(b + off) : NULL; off += al256(sz[k] * B * 4); }
  for (int k = 0; k < 4; k++) { *dst16[k] = sz16[k] ? (uint16_t *)(b + off) : NULL; off += al256(sz16[k] * B * 2); }
  dc->params = st->prm_d;
  {
    const char *ev = getenv("XD_SDEC_VARIANT"); /* issue #8 experiments (XD_SDEC_* bits) */
    dc->variant = ev && *ev ? atoi(ev) : XD_SDEC_DEFAULT_VARIANT;
  }
  if (xd_cuda_sdec_check(m->c, dc, e)) goto fail;
  if (xd_student_cuda_state_reset(st, e)) goto fail;
  *out = st;
  return 0;
fail:
  free(lo);
  xd_student_cuda_state_free(st);
  return -1;
}

void xd_student_cuda_state_free(xd_student_cuda_state *st) {
  if (!st) return;
  xd_cuda_graph_free(st->graph);
  xd_cuda_free(st->state_block);
  xd_cuda_free(st->scratch_block);
  free(st->layers);
  free(st->prm);
  free(st->pos);
  free(st);
}

int xd_student_cuda_state_reset(xd_student_cuda_state *st, xd_err *e) {
  for (int b = 0; b < st->B; b++) st->pos[b] = 0;
  if (xd_cuda_memset(st->m->c, st->state_block, 0, st->state_block_bytes, e)) return -1;
  return xd_cuda_sync(st->m->c, e);
}

int xd_student_cuda_state_batch(const xd_student_cuda_state *st) { return st->B; }
size_t xd_student_cuda_state_bytes(const xd_student_cuda_state *st) { return st->state_bytes; }
size_t xd_student_cuda_scratch_bytes(const xd_student_cuda_state *st) { return st->scratch_bytes; }
int64_t xd_student_cuda_state_pos(const xd_student_cuda_state *st) { return st->pos[0]; }
int64_t xd_student_cuda_state_pos_of(const xd_student_cuda_state *st, int slot) {
  return slot >= 0 && slot < st->B ? st->pos[slot] : -1;
}
void xd_student_cuda_state_use_graph(xd_student_cuda_state *st, int on) { st->use_graph = on; }
static void fill_params(const xd_model_config *c, xd_cuda_sdec_params *p, int32_t id, int64_t pos);
void xd_student_cuda_state_use_legacy(xd_student_cuda_state *st, int on) {
  if (st->dec.legacy == (on != 0) || st->B > 1) return; /* one sequence only */
  st->dec.legacy = on != 0;
  xd_cuda_graph_free(st->graph); /* captured with the other kernels */
  st->graph = NULL;
}
void xd_student_cuda_state_set_variant(xd_student_cuda_state *st, int variant) {
  if (st->dec.variant == variant) return;
  st->dec.variant = variant;
  xd_cuda_graph_free(st->graph);
  st->graph = NULL;
}
int xd_student_cuda_state_variant(const xd_student_cuda_state *st) { return st->dec.variant; }
/* token 0 for every slot, each at its position */
static int profile_params(xd_student_cuda *m, xd_student_cuda_state *st, xd_err *e) {
  for (int b = 0; b < st->B; b++) fill_params(&m->cfg, &st->prm[b], 0, st->pos[b]);
  return xd_cuda_upload(m->c, st->prm_d, st->prm, (size_t)st->B * sizeof *st->prm, e);
}
int xd_student_cuda_state_profile(xd_student_cuda *m, xd_student_cuda_state *st, int reps, double *us, double *bytes,
                                  xd_err *e) {
  CK(profile_params(m, st, e));
  return xd_cuda_sdec_profile(m->c, &st->dec, reps, us, bytes, e);
}
int xd_student_cuda_state_profile_graph(xd_student_cuda *m, xd_student_cuda_state *st, int reps, double *us,
                                        double *bytes, xd_err *e) {
  CK(profile_params(m, st, e));
  return xd_cuda_sdec_profile_ex(m->c, &st->dec, reps, 1, us, bytes, e);
}

/* The step's inputs: id, position and the RoPE rows of that position, computed as student.c's
 * rope_row (dynamic NTK sees seq_len = pos + 1). */
static void fill_params(const xd_model_config *c, xd_cuda_sdec_params *p, int32_t id, int64_t pos) {
  memset(p, 0, sizeof *p);
  p->id = id;
  p->pos = pos;
  float inv[XD_SDEC_MAX_HALF];
  for (int k = 0; k < 2; k++) {
    float scaling;
    rope_inv_freq(&c->rope[k], c->head_dim, c->max_pos, (int)(pos + 1), inv, &scaling);
    for (int j = 0; j < c->head_dim / 2; j++) {
      const float ang = (float)pos * inv[j];
      p->cos[k][j] = (float)cos((double)ang) * scaling;
      p->sin[k][j] = (float)sin((double)ang) * scaling;
    }
  }
}

/* One step of the state's sequences (params uploaded): the captured graph from the second step
 * of a state on (a batched step's GEMMs may grow the context's cuBLASLt workspace on their first
 * call, which a capture cannot do; a workspace moved since the capture means a new capture). */
static int step_launch(xd_student_cuda *m, xd_student_cuda_state *st, xd_err *e) {
  if (!st->use_graph) return xd_cuda_sdec_step(m->c, &st->dec, e);
  if (st->graph && st->B > 1 && st->graph_gen != xd_cuda_ws_generation(m->c)) {
    xd_cuda_graph_free(st->graph);
    st->graph = NULL;
  }
  if (!st->graph && st->B > 1 && st->plain_steps++ == 0) return xd_cuda_sdec_step(m->c, &st->dec, e);
  if (!st->graph) {
    CK(xd_cuda_sdec_graph_capture(m->c, &st->dec, &st->graph, e));
    st->graph_gen = xd_cuda_ws_generation(m->c);
  }
  return xd_cuda_graph_launch(m->c, st->graph, e);
}

int xd_student_cuda_step(xd_student_cuda *m, xd_student_cuda_state *st, const int32_t *ids, int n, float *logits,
                         xd_err *e) {
  if (st->B != 1) return xd_errf(e, "student step: the state holds %d sequences (xd_student_cuda_step_batch)", st->B);
  if (n < 1) return xd_errf(e, "student step: no tokens");
  if (st->pos[0] < 0) return xd_errf(e, "student step: the state has no prompt (its prefill failed; reset it)");
  CK(xd_check_token_ids(ids, (size_t)n, m->cfg.vocab, e));
  if (st->pos[0] == 0 && n > 1) return xd_student_cuda_prefill(m, st, 0, ids, n, logits, e);
  for (int i = 0; i < n; i++) {
    fill_params(&m->cfg, &st->prm[0], ids[i], st->pos[0]);
    CK(xd_cuda_upload(m->c, st->prm_d, &st->prm[0], sizeof *st->prm, e));
    CK(step_launch(m, st, e));
    st->pos[0]++;
  }
  if (logits) CK(xd_cuda_download(m->c, logits, st->dec.logits, (size_t)m->cfg.vocab * sizeof(float), e));
  return 0;
}

int xd_student_cuda_prefill(xd_student_cuda *m, xd_student_cuda_state *st, int slot, const int32_t *ids, int n,
                            float *logits, xd_err *e) {
  if (slot < 0 || slot >= st->B) return xd_errf(e, "student prefill: slot %d outside the state's %d", slot, st->B);
  if (n < 1) return xd_errf(e, "student prefill: no tokens");
  CK(xd_check_token_ids(ids, (size_t)n, m->cfg.vocab, e));
  st->pos[slot] = -1; /* unusable until the prefill has run */
  CK(run_forward(m, ids, 1, n, st, slot, logits, 1, e));
  /* the last token's logits also into the slot's row, where xd_student_cuda_argmax reads */
  CK(xd_cuda_copy(m->c, st->dec.logits + (size_t)slot * m->cfg.vocab, m->a.logits, (size_t)m->cfg.vocab * sizeof(float), e));
  st->pos[slot] = n;
  return 0;
}

int xd_student_cuda_step_batch(xd_student_cuda *m, xd_student_cuda_state *st, const int32_t *ids, float *logits,
                               xd_err *e) {
  const int B = st->B;
  CK(xd_check_token_ids(ids, (size_t)B, m->cfg.vocab, e));
  for (int b = 0; b < B; b++) {
    if (st->pos[b] < 0) return xd_errf(e, "student step: slot %d has no state (its prefill failed)", b);
    fill_params(&m->cfg, &st->prm[b], ids[b], st->pos[b]);
  }
  CK(xd_cuda_upload(m->c, st->prm_d, st->prm, (size_t)B * sizeof *st->prm, e));
  CK(step_launch(m, st, e));
  for (int b = 0; b < B; b++) st->pos[b]++;
  if (logits) CK(xd_cuda_download(m->c, logits, st->dec.logits, (size_t)B * m->cfg.vocab * sizeof(float), e));
  return 0;
}

int xd_student_cuda_argmax(xd_student_cuda *m, xd_student_cuda_state *st, int32_t *next, xd_err *e) {
  CK(xd_cuda_argmax_f32(m->c, st->next_d, st->dec.logits, st->B, m->cfg.vocab, e));
  return xd_cuda_download(m->c, next, st->next_d, (size_t)st->B * sizeof *next, e);
}

const float *xd_student_cuda_state_logits(const xd_student_cuda_state *st) { return st->dec.logits; }

/* ---- CLI helpers ---------------------------------------------------------------------------- */
static int open_dir(const char *dir, xd_cuda_ctx **ctx, xd_student_cuda **m, xd_model_config *cfg, xd_err *e) {
  if (xd_cuda_ctx_create(ctx, 0, e)) { /* no device: fail before reading the checkpoint */
    xd_err_prefix(e, "--device cuda");
    return -1;
  }
  xd_student s;
  int rc = xd_student_load(&s, dir, XD_STUDENT_FROZEN, e);
  if (!rc) {
    *cfg = s.cfg;
    rc = xd_student_cuda_upload(m, *ctx, &s, e);
    if (rc) xd_err_prefix(e, "%s", dir);
    xd_student_free(&s); /* the device copy is complete */
  }
  if (rc) { xd_cuda_ctx_free(*ctx); *ctx = NULL; }
  return rc;
}

int xd_student_cuda_forward_dir(const char *dir, const int32_t *ids, int B, int T, float *logits, xd_err *e) {
  xd_cuda_ctx *ctx;
  xd_student_cuda *m;
  xd_model_config cfg;
  if (open_dir(dir, &ctx, &m, &cfg, e)) return -1;
  fprintf(stderr, "cuda: student weights %.1f MiB\n", (double)xd_student_cuda_weight_bytes(m) / (1 << 20));
  const int rc = xd_student_cuda_forward(m, ids, B, T, logits, 0, e);
  xd_student_cuda_free(m);
  xd_cuda_ctx_free(ctx);
  return rc;
}

static int is_eos(const xd_model_config *c, int32_t tok) {
  for (int i = 0; i < c->n_eos; i++)
    if (c->eos_token_ids[i] == tok) return 1;
  return 0;
}

int xd_student_cuda_generate_dir(const char *dir, const int32_t *ids, int B, int T, int max_new, int stop_at_eos,
                                 int32_t *out, int *n_out, xd_err *e) {
  xd_cuda_ctx *ctx;
  xd_student_cuda *m;
  xd_model_config cfg;
  if (open_dir(dir, &ctx, &m, &cfg, e)) return -1;
  /* all rows at once: one state of B slots, each prefilled alone, then batched steps (a row
   * that has stopped keeps stepping on its last token, its output unchanged) */
  xd_student_cuda_state *st = NULL;
  int rc = xd_student_cuda_state_alloc_batch(&st, m, B, e);
  const int total = T + max_new;
  int32_t *next = xd_malloc((size_t)B * sizeof *next);
  int *done = xd_calloc((size_t)B, sizeof *done), live = B;
  if (!rc)
    fprintf(stderr, "cuda: student weights %.1f MiB, decode state %.2f MiB for %d sequence%s (independent of the length)\n",
            (double)xd_student_cuda_weight_bytes(m) / (1 << 20), (double)xd_student_cuda_state_bytes(st) / (1 << 20), B,
            B > 1 ? "s" : "");
  for (int b = 0; b < B && !rc; b++) {
    memcpy(out + (size_t)b * total, ids + (size_t)b * T, (size_t)T * sizeof *out);
    n_out[b] = T;
    rc = xd_student_cuda_prefill(m, st, b, ids + (size_t)b * T, T, NULL, e);
  }
  for (int n = T; !rc && n < total && live > 0; n++) {
    rc = xd_student_cuda_argmax(m, st, next, e); /* greedy: the first of equal maxima, as xd_argmax */
    for (int b = 0; b < B && !rc; b++) {
      if (done[b]) {
        next[b] = out[(size_t)b * total + n_out[b] - 1];
        continue;
      }
      out[(size_t)b * total + n_out[b]++] = next[b];
      if (stop_at_eos && is_eos(&cfg, next[b])) done[b] = 1, live--;
    }
    if (!rc && n + 1 < total && live > 0) rc = xd_student_cuda_step_batch(m, st, next, NULL, e);
  }
  free(next);
  free(done);
  xd_student_cuda_state_free(st);
  xd_student_cuda_free(m);
  xd_cuda_ctx_free(ctx);
  return rc;
}
#endif
