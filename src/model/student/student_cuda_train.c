/* The student's training forward / backward on the GPU (student_cuda_train.h). Mirrors
 * student_train_impl.inc step by step; the comments name the CPU lines each block replaces. */
#include "core/core.h"
#ifdef XD_HAVE_CUDA
#include "model/student/student_cuda_train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/cpu/rope.h"

/* Device pointers of one layer's tensors (weights: fp32 master or bf16 mirror; g*: gradients). */
typedef struct {
  const uint16_t *w_qkv, *w_o, *w_gu, *w_down; /* bf16: q|k|v [Hd+2Gd, D], o [D, Hd], gate|up [2F, D], down [D, F] */
  const uint16_t *b_gu16;                      /* bf16 gate|up bias (the bf16 GEMM's epilogue) or NULL */
  const float *b_qkv, *b_o, *b_down;           /* fp32 or NULL */
  const float *attn_norm, *mlp_norm, *attn_out_norm, *mlp_out_norm, *q_norm, *k_norm;
  const float *P_q, *P_k, *w_i, *b_i, *w_f, *b_f, *w_mix, *b_mix;
  float *g_qkv, *g_o, *g_gu, *g_down, *gb_qkv, *gb_o, *gb_gu, *gb_down;
  float *g_attn_norm, *g_mlp_norm, *g_attn_out_norm, *g_mlp_out_norm, *g_q_norm, *g_k_norm;
  float *g_P_q, *g_P_k, *g_w_i, *g_b_i, *g_w_f, *g_b_f, *g_w_mix, *g_b_mix;
  int W, S, kind;
} tl_layer;

/* Op classes of the profile (xd_student_cuda_train_profile). */
enum { P_GEMM, P_ATTN, P_SWA_BWD, P_MLSTM_FWD, P_MLSTM_BWD, P_FMAP, P_FMAP_BWD, P_GATES, P_GATES_BWD, P_MIX, P_MIX_BWD,
       P_NORM, P_ROPE, P_MLP, P_EMB, P_MEM, P_LOSS, P_COUNT };
static const char *const prof_name[P_COUNT] = {"GEMMs (fwd+bwd, incl. bf16 casts of dout)", "attention fwd", "SWA bwd",
                                               "mLSTM fwd", "mLSTM bwd", "feature maps fwd", "feature maps bwd",
                                               "gates fwd", "gates bwd", "mix fwd (+stage I MSE)", "mix bwd", "RMSNorms",
                                               "QK-norm/RoPE", "SwiGLU", "embedding", "memset/copy/convert",
                                               "KD loss (LM head in row blocks)"};

/* Saved activations of one layer (see the header). The local branch's output is kept as the
 * attention forward makes it: bf16 locb with head dims 64 / 128 (fast_attn), else fp32 loc (the
 * other is NULL); qb, kb, vb are bf16(q), bf16(k), bf16(v_raw), the attention forward's
 * operands, which the SWA backward reads again. */
typedef struct {
  float *h0, *xf, *qr, *kr, *vr, *q, *k, *loc, *lse, *qf, *kf, *ig, *fg, *glob, *bound, *o, *h1, *o1, *o2;
  uint16_t *xb, *attb, *xmb, *gu, *act, *qb, *kb, *vb, *locb;
} tl_saves;

struct xd_student_cuda_train {
  xd_cuda_ctx *c;
  xd_params_cuda *pd; /* stage II: its GEMM weight gradients are first-written (params_cuda.h) */
  xd_model_config cfg;
  xd_hybrid_config hy;
  int B, T, N, P;
  /* rows of logits held at once: N (whole: the forward makes all logits, the backward starts
   * with the LM head's) or fewer (row blocks: xd_student_cuda_train_loss runs the LM head, the
   * loss and the LM head's backward block by block; head_grad: it ran with the gradient since the
   * last forward, which the backward needs) */
  int head_rows, head_grad;
  /* activation recomputation: every layer keeps only its input h0; the other saves are one
   * layer's set (sv[0]'s), refilled by re-running the layer's forward before its backward */
  int recompute;
  /* CUDA graphs (run_graphed): [0], [1] the backward for fresh 0 / 1, [2] the forward, [3], [4]
   * stage I's align step without / with its backward */
  int graphs, g_calls[5];
  void *graph[5];
  unsigned g_gen[5]; /* the context's scratch generation each graph was captured at */
  mlstm_cfg mc;
  tl_layer *ly;
  tl_saves *sv;
  const uint16_t *embed16, *lm_head16;
  const float *final_norm;
  float *g_embed, *g_lm_head, *g_final_norm;
  /* whole-model buffers */
  float *hL, *logits;      /* [N, D], [head_rows, V] */
  uint16_t *hnb, *dlogits; /* [N, D], [head_rows, V] */
  int32_t *ids, *pos;
  float *cos_t[2], *sin_t[2];
  /* backward scratch, one layer's worth */
  float *dh, *dh1, *dx, *dxm, *dout, *dsw, *datt, *dqr, *dkr, *dvr, *dq, *dk, *dglob, *dloc, *dqf, *dkf, *dig, *dfg;
  uint16_t *gb16; /* bf16 gradient entering a GEMM backward: SwiGLU's dgate|dup, the fused dq|dk|dv */
  uint16_t *dh16; /* bf16 copy of the residual-stream gradient entering the down / o GEMM backward */
  /* stage I (align): one layer's saves reused layer after layer; the teacher's attention output
   * [N, Hd], the core output's gradient [N, Hd] and the layer losses (device doubles [L]) */
  int align;
  float *a_ref, *dcore;
  double *d_lsum;
  /* profiling (off unless asked for): seconds per op class */
  int prof;
  double prof_s[P_COUNT], prof_t;
  void *block;    /* one allocation for all of the above */
  size_t bytes;
  int32_t *ids_host;
};

/* ---- layout of the activation block ------------------------------------------------------ */
typedef struct {
  size_t off;
  int dry; /* sizing pass: no pointers */
  char *base;
} carve;
static void *take(carve *k, size_t bytes) {
  void *p = k->dry ? NULL : k->base + k->off;
  k->off += (bytes + 255) & ~(size_t)255;
  return p;
}
#define TF(k, n) ((float *)take((k), (size_t)(n) * sizeof(float)))
#define TH(k, n) ((uint16_t *)take((k), (size_t)(n) * sizeof(uint16_t)))

/* The local branch runs the tensor-core attention (bf16 output) at these head dims, else the
 * fp32 reference. */
static int fast_attn(const xd_model_config *c) { return c->head_dim == 64 || c->head_dim == 128; }

static mlstm_cfg make_mc(const xd_model_config *c, const xd_hybrid_config *hy, int B, int T) {
  mlstm_cfg mc = mlstm_cfg_make(B, T, c->n_heads, c->n_kv_heads, hy->d_phi, c->head_dim);
  mc.chunk = hy->chunk;
  mc.norm = hy->normalizer == XD_NORM_XLSTM ? MLSTM_NORM_MAX : MLSTM_NORM_PAPER;
  mc.eps = hy->eps;
  return mc;
}

/* Carves every buffer out of k (sizing only when k->dry). */
static void layout(xd_student_cuda_train *m, carve *k) {
  const xd_model_config *c = &m->cfg;
  const size_t N = (size_t)m->N, D = c->hidden, F = c->intermediate, H = c->n_heads, G = c->n_kv_heads;
  const size_t d = c->head_dim, Hd = H * d, Gd = G * d, P = (size_t)m->P, V = c->vocab;
  const size_t nb = mlstm_boundary_size(&m->mc);
  for (int l = 0; l < (m->align ? 1 : c->n_layers); l++) {
    tl_saves *s = &m->sv[l];
    if (m->recompute && l > 0) { /* layer 0's set, own input */
      *s = m->sv[0];
      s->h0 = TF(k, N * D);
      continue;
    }
    s->h0 = TF(k, N * D); s->xf = TF(k, N * D); s->xb = TH(k, N * D);
    s->qr = TF(k, N * Hd); s->kr = TF(k, N * Gd); s->vr = TF(k, N * Gd); s->q = TF(k, N * Hd); s->k = TF(k, N * Gd);
    s->loc = fast_attn(c) ? NULL : TF(k, N * Hd); s->locb = fast_attn(c) ? TH(k, N * Hd) : NULL;
    s->qb = TH(k, N * Hd); s->kb = TH(k, N * Gd); s->vb = TH(k, N * Gd);
    s->lse = TF(k, N * H); s->qf = TF(k, N * H * P); s->kf = TF(k, N * G * P);
    s->ig = TF(k, N * H); s->fg = TF(k, N * H); s->glob = TF(k, N * Hd); s->bound = TF(k, nb); s->o = TF(k, N * H);
    s->attb = TH(k, N * Hd); s->h1 = TF(k, N * D); s->xmb = TH(k, N * D); s->gu = TH(k, N * 2 * F); s->act = TH(k, N * F);
    s->o1 = c->post_norm ? TF(k, N * D) : NULL;
    s->o2 = c->post_norm ? TF(k, N * D) : NULL;
  }
  if (m->align) {
    for (int l = 1; l < c->n_layers; l++) m->sv[l] = m->sv[0];
    m->a_ref = TF(k, N * Hd); m->dcore = TF(k, N * Hd); m->d_lsum = (double *)take(k, (size_t)c->n_layers * sizeof(double));
  } else {
    const size_t HR = (size_t)m->head_rows;
    m->hL = TF(k, N * D); m->logits = TF(k, HR * V); m->dlogits = TH(k, HR * V);
  }
  m->hnb = TH(k, N * D);
  m->ids = (int32_t *)take(k, N * 4); m->pos = (int32_t *)take(k, N * 4);
  for (int t = 0; t < 2; t++) { m->cos_t[t] = TF(k, (size_t)m->T * (d / 2)); m->sin_t[t] = TF(k, (size_t)m->T * (d / 2)); }
  const size_t big = N * (2 * F > Hd + 2 * Gd ? 2 * F : Hd + 2 * Gd);
  m->dh = TF(k, N * D); m->dh1 = TF(k, N * D); m->dx = TF(k, N * D); m->dxm = TF(k, N * D); m->dout = TF(k, N * D);
  m->dsw = TF(k, N * F); m->datt = TF(k, N * Hd);
  m->dqr = TF(k, N * Hd); m->dkr = TF(k, N * Gd); m->dvr = TF(k, N * Gd); m->dq = TF(k, N * Hd); m->dk = TF(k, N * Gd);
  m->dglob = TF(k, N * Hd); m->dloc = TF(k, N * Hd);
  /* dqf, dkf, dig, dfg adjacent: core_backward clears them with one memset */
  m->dqf = TF(k, N * H * P); m->dkf = TF(k, N * G * P); m->dig = TF(k, N * H); m->dfg = TF(k, N * H);
  m->gb16 = TH(k, big > N * D ? big : N * D);
  m->dh16 = TH(k, N * D);
}

/* head_rows as create keeps it: 1..N, else N (0: all rows) */
static int clamp_head_rows(int head_rows, int N) { return head_rows > 0 && head_rows < N ? head_rows : N; }

static size_t train_bytes(const xd_model_config *c, const xd_hybrid_config *hy, int B, int T, int align, int recompute,
                          int head_rows) {
  xd_student_cuda_train m;
  memset(&m, 0, sizeof m);
  m.align = align;
  m.recompute = recompute;
  m.cfg = *c;
  m.hy = *hy;
  m.B = B;
  m.T = T;
  m.N = B * T;
  m.head_rows = clamp_head_rows(head_rows, m.N);
  m.P = hy->d_phi;
  m.mc = make_mc(c, hy, B, T);
  m.sv = xd_calloc((size_t)c->n_layers, sizeof *m.sv);
  carve k = {0, 1, NULL};
  layout(&m, &k);
  free(m.sv);
  return k.off;
}
size_t xd_student_cuda_train_bytes(const xd_model_config *c, const xd_hybrid_config *hy, int B, int T, int recompute,
                                   int head_rows) {
  return train_bytes(c, hy, B, T, 0, recompute != 0, head_rows);
}
size_t xd_student_cuda_align_bytes(const xd_model_config *c, const xd_hybrid_config *hy, int B, int T) {
  return train_bytes(c, hy, B, T, 1, 0, 0);
}
size_t xd_student_cuda_train_scratch_bytes(const xd_model_config *c, const xd_hybrid_config *hy, int B, int T) {
  size_t swa = 0;
  for (int l = 0; l < c->n_layers; l++) { /* the context's scratch grows to the largest layer's */
    const swa_shape sw = {B, T, c->n_heads, c->n_kv_heads, c->head_dim, xd_hybrid_layer_window(c, hy, l),
                          xd_hybrid_layer_sinks(c, hy, l)};
    const size_t b = xd_cuda_swa_backward_scratch_bytes(&sw, fast_attn(c)); /* core_backward's entry */
    swa = b > swa ? b : swa;
  }
  const mlstm_cfg mc = make_mc(c, hy, B, T);
  return swa + xd_cuda_mlstm_backward_scratch_bytes(&mc);
}

/* ---- weights: tensor pointers from the mirror ---------------------------------------------- */
typedef struct {
  const xd_params *p;
  xd_params_cuda *pd;
  xd_err *e;
  int fail;
} wfind;

static int tensor_idx(wfind *w, const char *name, int required) {
  const int i = xd_params_find(w->p, name);
  if (i < 0 && required && !w->fail) {
    w->fail = 1;
    xd_errf(w->e, "student on CUDA (training): tensor %s missing from the parameter table", name);
  }
  return i;
}
static const float *wf(wfind *w, const char *name, int required, float **grad) {
  const int i = tensor_idx(w, name, required);
  if (grad) *grad = i < 0 ? NULL : xd_params_cuda_grad(w->pd, i);
  return i < 0 ? NULL : xd_params_cuda_data(w->pd, i);
}
static const uint16_t *wh(wfind *w, const char *name, float **grad) {
  const int i = tensor_idx(w, name, 1);
  if (grad) *grad = i < 0 ? NULL : xd_params_cuda_grad(w->pd, i);
  return i < 0 ? NULL : xd_params_cuda_bf16(w->pd, i);
}
/* Tensors b, c must follow a directly in the arena (fused q|k|v, gate|up and their biases). */
static void want_adjacent(wfind *w, const char *a, const char *b, const char *c3) {
  const char *names[3] = {a, b, c3};
  size_t end = 0;
  for (int k = 0; k < 3 && names[k] && !w->fail; k++) {
    const int i = xd_params_find(w->p, names[k]);
    if (i < 0) return;
    if (k > 0 && w->p->t[i].offset != end) {
      w->fail = 1;
      xd_errf(w->e, "student on CUDA (training): %s does not follow %s in the parameter table (fused projection)", names[k],
              names[k - 1]);
      return;
    }
    end = w->p->t[i].offset + w->p->t[i].numel;
  }
}


static int bind_weights(xd_student_cuda_train *m, const xd_params *p, xd_params_cuda *pd, xd_err *e) {
  const xd_model_config *c = &m->cfg;
  wfind w = {p, pd, e, 0};
  char n[8][160];
  m->embed16 = wh(&w, "model.embed_tokens.weight", &m->g_embed);
  m->final_norm = wf(&w, "model.norm.weight", 1, &m->g_final_norm);
  if (c->tie_embeddings) {
    m->lm_head16 = m->embed16;
    m->g_lm_head = m->g_embed;
  } else {
    m->lm_head16 = wh(&w, "lm_head.weight", &m->g_lm_head);
  }
  for (int l = 0; l < c->n_layers && !w.fail; l++) {
    tl_layer *y = &m->ly[l];
#define NM(i, suffix) (snprintf(n[i], sizeof n[i], "model.layers.%d.%s", l, suffix), n[i])
    y->w_qkv = wh(&w, NM(0, "self_attn.q_proj.weight"), &y->g_qkv);
    want_adjacent(&w, n[0], NM(1, "self_attn.k_proj.weight"), NM(2, "self_attn.v_proj.weight"));
    y->b_qkv = wf(&w, NM(0, "self_attn.q_proj.bias"), c->qkv_bias, &y->gb_qkv);
    if (c->qkv_bias) want_adjacent(&w, n[0], NM(1, "self_attn.k_proj.bias"), NM(2, "self_attn.v_proj.bias"));
    y->w_o = wh(&w, NM(0, "self_attn.o_proj.weight"), &y->g_o);
    y->b_o = wf(&w, NM(0, "self_attn.o_proj.bias"), c->o_bias, &y->gb_o);
    y->w_gu = wh(&w, NM(0, "mlp.gate_proj.weight"), &y->g_gu);
    want_adjacent(&w, n[0], NM(1, "mlp.up_proj.weight"), NULL);
    y->w_down = wh(&w, NM(0, "mlp.down_proj.weight"), &y->g_down);
    {
      const int i = xd_params_find(p, NM(0, "mlp.gate_proj.bias"));
      if (c->mlp_bias) {
        want_adjacent(&w, n[0], NM(1, "mlp.up_proj.bias"), NULL);
        y->b_gu16 = i < 0 ? NULL : xd_params_cuda_bf16(pd, i);
        y->gb_gu = i < 0 ? NULL : xd_params_cuda_grad(pd, i);
        if (i < 0 && !w.fail) { w.fail = 1; xd_errf(e, "student on CUDA (training): tensor %s missing", n[0]); }
      }
    }
    y->b_down = wf(&w, NM(0, "mlp.down_proj.bias"), c->mlp_bias, &y->gb_down);
    if (c->post_norm) {
      y->attn_out_norm = wf(&w, NM(0, "post_attention_layernorm.weight"), 1, &y->g_attn_out_norm);
      y->mlp_out_norm = wf(&w, NM(0, "post_feedforward_layernorm.weight"), 1, &y->g_mlp_out_norm);
    } else {
      y->attn_norm = wf(&w, NM(0, "input_layernorm.weight"), 1, &y->g_attn_norm);
      y->mlp_norm = wf(&w, NM(0, "post_attention_layernorm.weight"), 1, &y->g_mlp_norm);
    }
    if (c->qk_norm != XD_QKNORM_NONE) {
      y->q_norm = wf(&w, NM(0, "self_attn.q_norm.weight"), 1, &y->g_q_norm);
      y->k_norm = wf(&w, NM(0, "self_attn.k_norm.weight"), 1, &y->g_k_norm);
    }
    const float **hw[XD_NEW_COUNT] = {&y->P_q, &y->P_k, &y->w_i, &y->b_i, &y->w_f, &y->b_f, &y->w_mix, &y->b_mix};
    float **hg[XD_NEW_COUNT] = {&y->g_P_q, &y->g_P_k, &y->g_w_i, &y->g_b_i, &y->g_w_f, &y->g_b_f, &y->g_w_mix, &y->g_b_mix};
    for (int t = 0; t < XD_NEW_COUNT; t++) {
      xd_hybrid_tensor_name(n[3], sizeof n[3], l, t);
      *hw[t] = wf(&w, n[3], 1, hg[t]);
    }
#undef NM
    y->W = xd_hybrid_layer_window(c, &m->hy, l);
    y->S = xd_hybrid_layer_sinks(c, &m->hy, l);
    y->kind = c->layer_sliding[l];
  }
  if (w.fail) return -1;
  /* stage II trains every tensor; stage I the new ones (their gradient slots must exist) */
  for (int l = 0; l < c->n_layers; l++)
    if (!m->ly[l].g_P_q || !m->ly[l].g_b_mix) return xd_errf(e, "student on CUDA (training): the hybrid parameters of layer %d are frozen", l);
  for (int i = 0; i < p->n && !m->align; i++)
    if (!p->t[i].trainable) return xd_errf(e, "student on CUDA (training): %s is frozen; the GPU step trains every tensor (stage II)", p->t[i].name);
  return 0;
}

/* Stage II: the GEMM weight (and bias) gradients have one producer per backward, the dW GEMM
 * (the tied embedding: the LM head's, before the embedding backward adds to it), so they are
 * written with beta 0 after a zero_grad instead of cleared and accumulated into. */
static int first_writes(xd_student_cuda_train *m, const xd_params *p, xd_params_cuda *pd, xd_err *e) {
  const xd_model_config *c = &m->cfg;
  char n[160];
  const int head = xd_params_find(p, c->tie_embeddings ? "model.embed_tokens.weight" : "lm_head.weight");
  if (head >= 0 && xd_params_cuda_set_first_write(pd, head, e) != 0) return -1;
  for (int l = 0; l < c->n_layers; l++) {
    const tl_layer *y = &m->ly[l];
    const struct { const char *sfx; int on; } t[] = {
        {"self_attn.q_proj.weight", 1}, {"self_attn.k_proj.weight", 1}, {"self_attn.v_proj.weight", 1},
        {"self_attn.q_proj.bias", y->gb_qkv != NULL}, {"self_attn.k_proj.bias", y->gb_qkv != NULL},
        {"self_attn.v_proj.bias", y->gb_qkv != NULL}, {"self_attn.o_proj.weight", 1},
        {"self_attn.o_proj.bias", y->gb_o != NULL}, {"mlp.gate_proj.weight", 1}, {"mlp.up_proj.weight", 1},
        {"mlp.gate_proj.bias", y->gb_gu != NULL}, {"mlp.up_proj.bias", y->gb_gu != NULL},
        {"mlp.down_proj.weight", 1}, {"mlp.down_proj.bias", y->gb_down != NULL}};
    for (size_t k = 0; k < sizeof t / sizeof t[0]; k++) {
      if (!t[k].on) continue;
      snprintf(n, sizeof n, "model.layers.%d.%s", l, t[k].sfx);
      const int i = xd_params_find(p, n);
      if (i >= 0 && xd_params_cuda_set_first_write(pd, i, e) != 0) return -1;
    }
  }
  return 0;
}

static int create(xd_student_cuda_train **out, xd_cuda_ctx *c, const xd_student *s, xd_params_cuda *pd, int B, int T,
                  int align, int recompute, int head_rows, xd_err *e) {
  *out = NULL;
  const xd_model_config *cf = &s->cfg;
  const int d = cf->head_dim, P = s->hy.d_phi;
  if (B < 1 || T < 1 || (int64_t)B * T > (1 << 26)) return xd_errf(e, "student on CUDA (training): bad batch %d x %d", B, T);
  if (P > 128 || d > 128 || d % 2 || s->hy.chunk > 64 || cf->n_heads > 256)
    return xd_errf(e, "student on CUDA (training): d_phi %d / head dim %d / chunk %d / %d heads not supported (the mLSTM "
                   "backward needs d_phi <= 128, head dim <= 128 and even, chunk <= 64; <= 256 heads)",
                   P, d, s->hy.chunk, cf->n_heads);
  xd_student_cuda_train *m = xd_calloc(1, sizeof *m);
  m->c = c;
  m->align = align;
  m->recompute = recompute != 0 && !align;
  xd_student_cuda_train_graphs(m, -1);
  m->cfg = *cf;
  m->hy = s->hy;
  m->B = B;
  m->T = T;
  m->N = B * T;
  m->head_rows = clamp_head_rows(head_rows, m->N);
  m->P = P;
  m->mc = make_mc(cf, &s->hy, B, T);
  m->ly = xd_calloc((size_t)cf->n_layers, sizeof *m->ly);
  m->sv = xd_calloc((size_t)cf->n_layers, sizeof *m->sv);
  m->ids_host = xd_malloc((size_t)m->N * sizeof(int32_t));
  m->pd = pd;
  if (bind_weights(m, &s->params, pd, e) != 0) goto fail;
  if (!align && first_writes(m, &s->params, pd, e) != 0) goto fail;
  carve k = {0, 1, NULL};
  layout(m, &k);
  m->bytes = k.off;
  size_t fr = 0, tot = 0;
  if (xd_cuda_mem_info(c, &fr, &tot, e) != 0) goto fail;
  /* the ops' scratch (SWA / mLSTM backward) grows in the stream-ordered pool during the first
   * step: counted here, so that a micro-batch too large fails now with advice, not mid-step */
  const size_t scratch = align ? xd_cuda_mlstm_backward_scratch_bytes(&m->mc) /* no SWA backward in stage I */
                               : xd_student_cuda_train_scratch_bytes(cf, &s->hy, B, T);
  if (m->bytes + scratch > fr) {
    xd_errf(e, "student on CUDA (training): activations for %d x %d need %.1f GiB and the ops' scratch %.1f GiB, the device "
            "has %.1f GiB free (lower --micro_batch or --seq_len%s)", B, T, m->bytes / 1073741824.0,
            scratch / 1073741824.0, fr / 1073741824.0, align || m->recompute ? "" : ", or add --recompute");
    goto fail;
  }
  if (xd_cuda_malloc(&m->block, m->bytes, e) != 0) goto fail;
  carve k2 = {0, 0, m->block};
  layout(m, &k2);
  /* positions and RoPE tables for T (fixed per run; dynamic NTK rebuilt for this T as the CPU) */
  {
    int32_t *pos = xd_malloc((size_t)m->N * sizeof(int32_t));
    for (int i = 0; i < m->N; i++) pos[i] = i % T;
    xd_rope_tables r;
    xd_rope_tables_alloc(&r, cf, T);
    xd_rope_tables_update(&r, cf, T);
    const size_t tb = (size_t)T * (d / 2) * sizeof(float);
    int rc = xd_cuda_upload(c, m->pos, pos, (size_t)m->N * 4, e);
    for (int t = 0; t < 2 && rc == 0; t++) {
      rc = xd_cuda_upload(c, m->cos_t[t], r.cos[t], tb, e);
      if (rc == 0) rc = xd_cuda_upload(c, m->sin_t[t], r.sin[t], tb, e);
    }
    if (rc == 0) rc = xd_cuda_sync(c, e);
    xd_rope_tables_free(&r);
    free(pos);
    if (rc != 0) goto fail;
  }
  *out = m;
  return 0;
fail:
  xd_student_cuda_train_free(m);
  return -1;
}

int xd_student_cuda_train_create(xd_student_cuda_train **out, xd_cuda_ctx *c, const xd_student *s,
                                 xd_params_cuda *pd, int B, int T, int recompute, int head_rows, xd_err *e) {
  return create(out, c, s, pd, B, T, 0, recompute, head_rows, e);
}
int xd_student_cuda_align_create(xd_student_cuda_train **out, xd_cuda_ctx *c, const xd_student *s, xd_params_cuda *pd,
                                 int B, int T, xd_err *e) {
  return create(out, c, s, pd, B, T, 1, 0, 0, e);
}

void xd_student_cuda_train_free(xd_student_cuda_train *m) {
  if (!m) return;
  for (int i = 0; i < 5; i++) xd_cuda_graph_free(m->graph[i]);
  xd_cuda_free(m->block);
  free(m->ly);
  free(m->sv);
  free(m->ids_host);
  free(m);
}

float *xd_student_cuda_train_logits(const xd_student_cuda_train *m) { return m->head_rows == m->N ? m->logits : NULL; }
int xd_student_cuda_train_head_rows(const xd_student_cuda_train *m) { return m->head_rows; }

void xd_student_cuda_train_graphs(xd_student_cuda_train *m, int on) {
  if (on < 0) {
    const char *g = getenv("XD_CUDA_GRAPHS");
    on = !(g && g[0] == '0');
  }
  for (int i = 0; i < 5; i++) {
    xd_cuda_graph_free(m->graph[i]);
    m->graph[i] = NULL, m->g_calls[i] = 0;
  }
  m->graphs = on;
}

void xd_student_cuda_train_profile(xd_student_cuda_train *m, int on) {
  m->prof = on;
  memset(m->prof_s, 0, sizeof m->prof_s);
}

void xd_student_cuda_train_profile_print(const xd_student_cuda_train *m, FILE *f, int steps) {
  double tot = 0;
  for (int i = 0; i < P_COUNT; i++) tot += m->prof_s[i];
  fprintf(f, "profile (ms per step over %d steps, synchronised after each op; total %.1f):\n", steps, 1e3 * tot / steps);
  for (int i = 0; i < P_COUNT; i++)
    if (m->prof_s[i] > 0) fprintf(f, "  %-44s %8.2f\n", prof_name[i], 1e3 * m->prof_s[i] / steps);
}
uint16_t *xd_student_cuda_train_dlogits(const xd_student_cuda_train *m) { return m->head_rows == m->N ? m->dlogits : NULL; }
void xd_student_cuda_train_kd_args(const xd_student_cuda_train *m, const kd_config *kd, xd_cuda_kd_args *a) {
  memset(a, 0, sizeof *a);
  a->cfg = *kd;
  a->logits = m->logits;
  a->logits_dtype = XD_CUDA_F32;
  a->dlogits = m->dlogits;
  a->grad_dtype = XD_CUDA_BF16;
  a->dloss = 1.0f;
}

#define CK(x) do { if ((x) != 0) return -1; } while (0)
/* CK, and with profiling on (xd_student_cuda_train_profile) a synchronisation after the op, its
 * time added to class `cat` (the host clock: coarse, for the breakdown of a step only). */
#define OP(cat, x)                                                     \
  do {                                                                 \
    if ((x) != 0) return -1;                                           \
    if (m->prof) {                                                     \
      if (xd_cuda_sync(m->c, e) != 0) return -1;                       \
      const double t_ = xd_now();                                      \
      m->prof_s[cat] += t_ - m->prof_t;                                \
      m->prof_t = t_;                                                  \
    }                                                                  \
  } while (0)

/* The teacher's layer after its attention (xd_teacher_layer_out, unrolled to keep what the
 * backward needs): h1 = h0 + [norm](att Wo^T + bo); MLP; hout = h1 + [norm](act Wdown^T + b).
 * Reads s->h0, s->attb; writes s->h1, s->xmb, s->gu, s->act, (post-norm) s->o1, s->o2, hout
 * (which may be s->h0: it is read before hout is written). hout NULL (recomputation before the
 * backward): only the saves, so the pre-norm down projection is skipped. */
static int layer_tail(xd_student_cuda_train *m, const tl_layer *y, tl_saves *s, float *hout, xd_err *e) {
  const xd_model_config *c = &m->cfg;
  xd_cuda_ctx *cx = m->c;
  const int N = m->N, D = c->hidden, F = c->intermediate, Hd = c->n_heads * c->head_dim;
  const size_t ND = (size_t)N * D;
  const float eps = (float)c->rms_eps;
  /* h1 = h0 + [norm](att Wo^T + bo) (pre-norm: the GEMM reads the residual h0 and writes h1) */
  if (c->post_norm) {
    OP(P_MEM, xd_cuda_copy(cx, s->h1, s->h0, ND * sizeof(float), e));
    OP(P_GEMM, xd_cuda_matmul(cx, s->o1, XD_CUDA_F32, s->attb, y->w_o, y->b_o, N, Hd, D, 0, e));
    OP(P_NORM, xd_cuda_add_rmsnorm_f32(cx, s->h1, s->o1, y->attn_out_norm, N, D, eps, e));
    OP(P_NORM, xd_cuda_rmsnorm_f32(cx, s->xmb, NULL, s->h1, NULL, N, D, eps, e));
  } else {
    OP(P_GEMM, xd_cuda_matmul_res(cx, s->h1, s->h0, XD_CUDA_F32, s->attb, y->w_o, y->b_o, N, Hd, D, e));
    OP(P_NORM, xd_cuda_rmsnorm_f32(cx, s->xmb, NULL, s->h1, y->mlp_norm, N, D, eps, e));
  }
  /* MLP: gu = xm Wgu^T (+b), act = silu(g) u, h2 = h1 + [norm](act Wdown^T + b) */
  OP(P_GEMM, xd_cuda_matmul(cx, s->gu, XD_CUDA_BF16, s->xmb, y->w_gu, y->b_gu16, N, D, 2 * F, 0, e));
  OP(P_MLP, xd_cuda_swiglu_forward(cx, s->act, s->gu, s->gu + F, N, F, 2 * F, e));
  if (c->post_norm) OP(P_GEMM, xd_cuda_matmul(cx, s->o2, XD_CUDA_F32, s->act, y->w_down, y->b_down, N, F, D, 0, e));
  if (!hout) return 0;
  if (c->post_norm) {
    OP(P_MEM, xd_cuda_copy(cx, hout, s->h1, ND * sizeof(float), e));
    OP(P_NORM, xd_cuda_add_rmsnorm_f32(cx, hout, s->o2, y->mlp_out_norm, N, D, eps, e));
  } else {
    OP(P_GEMM, xd_cuda_matmul_res(cx, hout, s->h1, XD_CUDA_F32, s->act, y->w_down, y->b_down, N, F, D, e));
  }
  return 0;
}

/* x = [rmsnorm](h0) (olmo: x = h0); q_raw, k_raw, v_raw = x W^T + b (three GEMMs on the fused
 * weight's slices); QK-norm + RoPE -> q, k (fp32) and q, k, v in bf16 (s->qb, kb, vb). */
static int layer_head(xd_student_cuda_train *m, const tl_layer *y, tl_saves *s, xd_err *e) {
  const xd_model_config *c = &m->cfg;
  xd_cuda_ctx *cx = m->c;
  const int N = m->N, D = c->hidden, H = c->n_heads, G = c->n_kv_heads, d = c->head_dim, Hd = H * d, Gd = G * d;
  const float eps = (float)c->rms_eps;
  /* x = [rmsnorm](h0) (olmo: x = h0) */
  OP(P_NORM, xd_cuda_rmsnorm_f32(cx, s->xb, s->xf, s->h0, c->post_norm ? NULL : y->attn_norm, N, D, eps, e));
  /* q_raw, k_raw, v_raw = x W^T + b (three GEMMs on the fused weight's slices) */
  OP(P_GEMM, xd_cuda_matmul(cx, s->qr, XD_CUDA_F32, s->xb, y->w_qkv, y->b_qkv, N, D, Hd, 0, e));
  OP(P_GEMM, xd_cuda_matmul(cx, s->kr, XD_CUDA_F32, s->xb, y->w_qkv + (size_t)Hd * D, y->b_qkv ? y->b_qkv + Hd : NULL, N, D, Gd, 0, e));
  OP(P_GEMM, xd_cuda_matmul(cx, s->vr, XD_CUDA_F32, s->xb, y->w_qkv + (size_t)(Hd + Gd) * D, y->b_qkv ? y->b_qkv + Hd + Gd : NULL,
                    N, D, Gd, 0, e));
  OP(P_ROPE, xd_cuda_student_qk_prep(cx, s->q, s->k, s->qb, s->kb, s->vb, s->qr, s->kr, s->vr, y->q_norm, y->k_norm,
                             (int)c->qk_norm, m->cos_t[y->kind], m->sin_t[y->kind], m->pos, N, H, G, d, eps, e));
  return 0;
}

/* The hybrid core (xd_core_forward) on the layer's saved inputs -> out [N, Hd] fp32, or with out
 * NULL out16 [N, Hd] bf16 (the o-projection's input). */
static int core_forward(xd_student_cuda_train *m, const tl_layer *y, tl_saves *s, float *out, uint16_t *out16,
                        xd_err *e) {
  const xd_model_config *c = &m->cfg;
  xd_cuda_ctx *cx = m->c;
  const int B = m->B, T = m->T, N = m->N, D = c->hidden, H = c->n_heads, G = c->n_kv_heads, d = c->head_dim;
  const int Hd = H * d, Gd = G * d, P = m->P;
  const int hh = m->hy.feature_map == XD_FMAP_HEDGEHOG;
  const int tc = P == 64 && d == 64 && m->mc.chunk == 64;
  /* the hybrid core (xd_core_forward) */
  if (s->locb) { /* fast_attn */
    const xd_cuda_attn_dims ad = {B, T, H, G, d, y->W, y->S, Hd, Gd, Gd, Hd};
    OP(P_ATTN, xd_cuda_attention_forward(cx, s->locb, s->lse, s->qb, s->kb, s->vb, &ad, e));
  } else {
    OP(P_ATTN, xd_cuda_swa_naive_forward_lse(cx, s->loc, s->lse, s->q, s->k, s->vr, B, T, H, G, d, y->W, y->S, e));
  }
  const xd_cuda_fm_fwd fq = {s->qf, s->q, y->P_q, {N, H, d, P, hh}}, fk = {s->kf, s->k, y->P_k, {N, G, d, P, hh}};
  OP(P_FMAP, xd_cuda_feature_map_forward_pair(cx, &fq, &fk, e));
  const gates_shape gs = {N, D, H, m->hy.gate_softcap};
  OP(P_GATES, xd_cuda_gates_forward(cx, s->ig, s->fg, s->xf, y->w_i, y->b_i, y->w_f, y->b_f, &gs, e));
  OP(P_MLSTM_FWD, (tc ? xd_cuda_mlstm_chunkwise_forward_tc_bound : xd_cuda_mlstm_chunkwise_forward_bound)(
      cx, &m->mc, s->qf, s->kf, s->vr, s->ig, s->fg, NULL, NULL, s->bound, s->glob, e));
  const mix_shape ms = {N, H, G, d};
  if (out && s->locb)
    OP(P_MIX, xd_cuda_mix_forward_hl16(cx, out, s->o, s->qr, s->kr, s->vr, y->w_mix, y->b_mix, s->glob, s->locb, &ms, e));
  else if (out)
    OP(P_MIX, xd_cuda_mix_forward(cx, out, s->o, s->qr, s->kr, s->vr, y->w_mix, y->b_mix, s->glob, s->loc, &ms, e));
  else if (s->locb)
    OP(P_MIX, xd_cuda_mix_forward_bf16_hl16(cx, out16, s->o, s->qr, s->kr, s->vr, y->w_mix, y->b_mix, s->glob, s->locb,
                                            &ms, e));
  else
    OP(P_MIX, xd_cuda_mix_forward_bf16(cx, out16, s->o, s->qr, s->kr, s->vr, y->w_mix, y->b_mix, s->glob, s->loc, &ms, e));
  return 0;
}

/* One layer of the training forward: h0 -> hout (NULL: saves only, see layer_tail). */
static int layer_forward(xd_student_cuda_train *m, const tl_layer *y, tl_saves *s, float *hout, xd_err *e) {
  CK(layer_head(m, y, s, e));
  CK(core_forward(m, y, s, NULL, s->attb, e)); /* the core's output straight in bf16 */
  return layer_tail(m, y, s, hout, e);
}

/* ---- forward (xd_student_forward_train) --------------------------------------------------- */
/* body(m, arg, e) queues a fixed sequence of kernels on the student's stream. With graphs on and
 * profiling off: the first call for this slot runs them as launched, the second captures them as
 * a CUDA graph and launches it, later calls replay it (the same kernels with the same arguments
 * in the same order: the same bits, fewer launch gaps). With profiling on, every call runs them
 * as launched after a synchronisation that starts the profile's clock. A graph is captured again when a context
 * scratch buffer it uses has moved since; a capture the driver refuses turns graphs off for this
 * model and runs the kernels as launched. */
static int run_graphed(xd_student_cuda_train *m, int slot, int (*body)(xd_student_cuda_train *, int, xd_err *),
                       int arg, xd_err *e) {
  if (m->prof) { /* the profile's clock starts with the body's first op: launched, no graph */
    CK(xd_cuda_sync(m->c, e));
    m->prof_t = xd_now();
    return body(m, arg, e);
  }
  if (m->graphs) {
    if (m->graph[slot] && m->g_gen[slot] != xd_cuda_ws_generation(m->c)) {
      xd_cuda_graph_free(m->graph[slot]);
      m->graph[slot] = NULL;
    }
    if (m->graph[slot]) return xd_cuda_graph_launch(m->c, m->graph[slot], e);
    if (m->g_calls[slot]++ >= 1) {
      xd_err inner = {{0}}, cap = {{0}};
      CK(xd_cuda_graph_capture_begin(m->c, e));
      const int rc = body(m, arg, &inner);
      m->g_gen[slot] = xd_cuda_ws_generation(m->c);
      if (xd_cuda_graph_capture_end(m->c, rc, &inner, &m->graph[slot], &cap) == 0)
        return xd_cuda_graph_launch(m->c, m->graph[slot], e);
      if (rc) return xd_errf(e, "%s", inner.msg); /* the body itself failed: report it */
      fprintf(stderr, "student on CUDA: graph capture refused (%s); running without graphs\n", cap.msg);
      m->graphs = 0;
    }
  }
  return body(m, arg, e);
}
static int train_forward_body(xd_student_cuda_train *m, int unused, xd_err *e);

int xd_student_cuda_train_forward(xd_student_cuda_train *m, const int32_t *ids, xd_err *e) {
  const int N = m->N, V = m->cfg.vocab;
  if (m->align) return xd_errf(e, "student on CUDA: stage II forward on a stage I model");
  CK(xd_check_token_ids(ids, (size_t)N, V, e));
  memcpy(m->ids_host, ids, (size_t)N * sizeof(int32_t));
  CK(xd_cuda_upload(m->c, m->ids, ids, (size_t)N * 4, e));
  m->head_grad = 0;
  return run_graphed(m, 2, train_forward_body, 0, e);
}

/* The forward's kernels after the ids' upload (graph slot 2; the same rules as the backward's). */
static int train_forward_body(xd_student_cuda_train *m, int unused, xd_err *e) {
  (void)unused;
  const xd_model_config *c = &m->cfg;
  xd_cuda_ctx *cx = m->c;
  const int N = m->N, D = c->hidden, V = c->vocab;
  const size_t ND = (size_t)N * D;
  const float eps = (float)c->rms_eps;
  /* h = embedding(ids): the bf16 table's rows, widened (the residual stream is fp32) */
  OP(P_EMB, xd_cuda_embedding_forward(cx, m->hnb, m->ids, m->embed16, N, D, V, e));
  OP(P_MEM, xd_cuda_bf16_to_f32(cx, m->sv[0].h0, m->hnb, ND, e));
  for (int l = 0; l < c->n_layers; l++) {
    const tl_layer *y = &m->ly[l];
    tl_saves *s = &m->sv[l];
    float *hout = l + 1 < c->n_layers ? m->sv[l + 1].h0 : m->hL;
    CK(layer_forward(m, y, s, hout, e));
  }
  OP(P_NORM, xd_cuda_rmsnorm_f32(cx, m->hnb, NULL, m->hL, m->final_norm, N, D, eps, e));
  if (m->head_rows == N) OP(P_GEMM, xd_cuda_matmul(cx, m->logits, XD_CUDA_F32, m->hnb, m->lm_head16, NULL, N, D, V, 0, e));
  return 0;
}

int xd_student_cuda_train_loss(xd_student_cuda_train *m, const xd_cuda_kd_args *a, int backward, xd_err *e) {
  if (m->align) return xd_errf(e, "student on CUDA: stage II loss on a stage I model");
  xd_cuda_ctx *cx = m->c;
  const int N = m->N, D = m->cfg.hidden, V = m->cfg.vocab, R = m->head_rows;
  if (a->cfg.N != N || a->cfg.V != V)
    return xd_errf(e, "student on CUDA: KD loss of %d x %d logits for a model of %d x %d", a->cfg.N, a->cfg.V, N, V);
  if (R == N) return xd_cuda_kd_loss_fused(cx, a, e);
  /* row blocks of R: logits = hnb[r0:r0+n] lm_head^T, the loss rows writing their bf16 gradient,
   * and with the gradient dx[r0:r0+n] (its one producer: written) and dW_head (+=; written by the
   * first block after zero_grad, as the whole backward's GEMM: first_writes) */
  xd_cuda_kd_args p = *a;
  p.logits = m->logits, p.logits_dtype = XD_CUDA_F32, p.dlogits = m->dlogits, p.grad_dtype = XD_CUDA_BF16;
  p.accumulate = 0;
  const int fresh = backward && xd_params_cuda_grad_fresh(m->pd);
  if (m->prof) {
    CK(xd_cuda_sync(cx, e));
    m->prof_t = xd_now();
  }
  m->head_grad = 0;
  OP(P_LOSS, xd_cuda_kd_loss_begin(cx, &p, e));
  for (int r0 = 0; r0 < N; r0 += R) {
    const int n = N - r0 < R ? N - r0 : R;
    const uint16_t *x = m->hnb + (size_t)r0 * D;
    OP(P_GEMM, xd_cuda_matmul(cx, m->logits, XD_CUDA_F32, x, m->lm_head16, NULL, n, D, V, 0, e));
    OP(P_LOSS, xd_cuda_kd_loss_rows(cx, &p, r0, n, e));
    if (backward)
      OP(P_GEMM, xd_cuda_matmul_backward(cx, m->dx + (size_t)r0 * D, XD_CUDA_F32, m->g_lm_head, NULL, m->dlogits, x,
                                         m->lm_head16, n, D, V,
                                         XD_CUDA_BW_ACCUMULATE | XD_CUDA_BW_DX_WRITE | (fresh && r0 == 0 ? XD_CUDA_BW_DW_WRITE : 0),
                                         e));
  }
  OP(P_LOSS, xd_cuda_kd_loss_end(cx, &p, e));
  m->head_grad = backward != 0;
  return 0;
}

/* ---- backward (xd_student_backward) ------------------------------------------------------- */
/* dW, db (+)= and dx (fp32, may be NULL) (+)= of out = x W^T + b given g16, the bf16 gradient of
 * out (row stride Dout); flags: XD_CUDA_BW_DX_WRITE (dx's one producer: written, no zeroing),
 * XD_CUDA_BW_DW_WRITE (first backward after zero_grad: dW, db written, see first_writes). */
static int lin_back16(xd_student_cuda_train *m, float *dx, int flags, float *dw, float *db, const uint16_t *g16,
                      const uint16_t *x, const uint16_t *w, int Din, int Dout, xd_err *e) {
  return xd_cuda_matmul_backward(m->c, dx, XD_CUDA_F32, dw, db, g16, x, w, m->N, Din, Dout,
                                 XD_CUDA_BW_ACCUMULATE | flags, e);
}

/* Backward of the core (xd_core_backward) from dout [N, Hd]: the layer's hybrid parameter
 * gradients (+=) and, with want_inputs, the gradients of its inputs into m->dx (gates' x),
 * m->dqr, m->dkr, m->dvr (raw projections) and m->dq, m->dk (after QK-norm / RoPE), each
 * WRITTEN by its first producer (mix: dqr, dkr, dvr, dglob, dloc; gates: dx; feature maps: dq,
 * dk; XD_CUDA_GRAD_WRITE) and added to by the later ones; only the mLSTM's outputs are zeroed.
 * Without want_inputs (stage I: the inputs are teacher-forced constants) those buffers are only
 * sinks and the local branch's backward is skipped (it has no parameters). */
static int core_backward(xd_student_cuda_train *m, const tl_layer *y, const tl_saves *s, const float *dout,
                         int want_inputs, xd_err *e) {
  const xd_model_config *c = &m->cfg;
  xd_cuda_ctx *cx = m->c;
  const int B = m->B, T = m->T, N = m->N, D = c->hidden, H = c->n_heads, G = c->n_kv_heads, d = c->head_dim;
  const int P = m->P;
  const int hh = m->hy.feature_map == XD_FMAP_HEDGEHOG;
  const int tc = P == 64 && d == 64 && m->mc.chunk == 64; /* as core_forward (the _tc backward falls back anyway) */
  /* dqf, dkf, dig, dfg are adjacent in the block (layout()): one memset for the four */
  OP(P_MEM, xd_cuda_memset(cx, m->dqf, 0, (size_t)((char *)(m->dfg + (size_t)N * H) - (char *)m->dqf), e));
  const mix_shape ms = {N, H, G, d};
  if (s->locb)
    OP(P_MIX_BWD, xd_cuda_mix_backward_hl16(cx, XD_CUDA_GRAD_WRITE, m->dqr, m->dkr, m->dvr, y->g_w_mix, y->g_b_mix, m->dglob,
                                            m->dloc, dout, s->o, s->qr, s->kr, s->vr, y->w_mix, s->glob, s->locb, &ms, e));
  else
    OP(P_MIX_BWD, xd_cuda_mix_backward_ex(cx, XD_CUDA_GRAD_WRITE, m->dqr, m->dkr, m->dvr, y->g_w_mix, y->g_b_mix, m->dglob,
                                          m->dloc, dout, s->o, s->qr, s->kr, s->vr, y->w_mix, s->glob, s->loc, &ms, e));
  OP(P_MLSTM_BWD, (tc ? xd_cuda_mlstm_chunkwise_backward_tc : xd_cuda_mlstm_chunkwise_backward)(cx, &m->mc, s->qf, s->kf, s->vr, s->ig, s->fg, s->bound, m->dglob, m->dqf, m->dkf,
                                      m->dvr, m->dig, m->dfg, e));
  const gates_shape gs = {N, D, H, m->hy.gate_softcap};
  OP(P_GATES_BWD, xd_cuda_gates_backward_ex(cx, XD_CUDA_GRAD_WRITE, m->dx, y->g_w_i, y->g_b_i, y->g_w_f, y->g_b_f, m->dig,
                                            m->dfg, s->xf, y->w_i, y->w_f, s->ig, s->fg, &gs, e));
  const xd_cuda_fm_bwd fq = {m->dq, y->g_P_q, m->dqf, s->q, y->P_q, s->qf, {N, H, d, P, hh}};
  const xd_cuda_fm_bwd fk = {m->dk, y->g_P_k, m->dkf, s->k, y->P_k, s->kf, {N, G, d, P, hh}};
  OP(P_FMAP_BWD, xd_cuda_feature_map_backward_pair(cx, XD_CUDA_GRAD_WRITE, &fq, &fk, e));
  if (!want_inputs) return 0;
  const swa_shape sw = {B, T, H, G, d, y->W, y->S};
  if (s->locb) { /* the forward's bf16 operands and output, as they are */
    const xd_cuda_swa_bf16 pre = {s->qb, s->kb, s->vb, s->locb};
    OP(P_SWA_BWD, xd_cuda_swa_backward_pre(cx, m->dq, m->dk, m->dvr, m->dloc, &pre, s->lse, &sw, e));
  } else {
    OP(P_SWA_BWD, xd_cuda_swa_backward(cx, m->dq, m->dk, m->dvr, m->dloc, s->q, s->k, s->vr, s->loc, s->lse, &sw, e));
  }
  return 0;
}

/* The backward's kernels, queued on the student's stream; fresh: the GEMM weight gradients are
 * written, not added (first_writes, after zero_grad). Nothing here reads back from the device or
 * depends on host state that changes between steps of one run, so the sequence can be captured
 * as a CUDA graph (xd_student_cuda_train_backward) and replayed. */
static int train_backward_body(xd_student_cuda_train *m, int fresh, xd_err *e) {
  const xd_model_config *c = &m->cfg;
  xd_cuda_ctx *cx = m->c;
  const int N = m->N, D = c->hidden, H = c->n_heads, G = c->n_kv_heads, d = c->head_dim;
  const int F = c->intermediate, V = c->vocab, Hd = H * d, Gd = G * d;
  const size_t ND = (size_t)N * D;
  const float eps = (float)c->rms_eps;
  const int WD = fresh ? XD_CUDA_BW_DW_WRITE : 0, XW = XD_CUDA_BW_DX_WRITE;
  /* head: logits = rmsnorm(hL) lm_head^T. dx written by the GEMM (its one producer; in row
   * blocks the loss wrote it); dh = J^T dx written, with its bf16 copy for the last layer's down
   * projection */
  if (m->head_rows == N)
    OP(P_GEMM, xd_cuda_matmul_backward(cx, m->dx, XD_CUDA_F32, m->g_lm_head, NULL, m->dlogits, m->hnb, m->lm_head16, N, D,
                                       V, XD_CUDA_BW_ACCUMULATE | XW | WD, e));
  OP(P_NORM, xd_cuda_rmsnorm_backward_res(cx, m->dh, m->dh16, NULL, m->g_final_norm, m->dx, m->hL, XD_CUDA_F32,
                                          m->final_norm, XD_CUDA_F32, N, D, eps, e));
  for (int l = c->n_layers - 1; l >= 0; l--) {
    const tl_layer *y = &m->ly[l];
    const tl_saves *s = &m->sv[l];
    /* recomputation: the shared saves hold the last layer's from the forward; refill them for
     * the others from their kept input (same kernels, same inputs: the same bits; it touches none
     * of the backward's live buffers dh, dh16) */
    if (m->recompute && l + 1 < c->n_layers) CK(layer_forward(m, y, &m->sv[l], NULL, e));
    /* h2 = h1 + [norm](o2): dh1 = dh2, do2 = [norm'](dh2); m->dh16 = bf16(do2) (pre-norm: made by
     * the producer of dh, the next layer's input-norm backward or the head) */
    if (c->post_norm) {
      OP(P_MEM, xd_cuda_copy(cx, m->dh1, m->dh, ND * sizeof(float), e));
      OP(P_NORM, xd_cuda_rmsnorm_backward_res(cx, m->dout, m->dh16, NULL, y->g_mlp_out_norm, m->dh, s->o2, XD_CUDA_F32,
                                              y->mlp_out_norm, XD_CUDA_F32, N, D, eps, e));
    }
    /* act Wdown^T: dsw written; SwiGLU's backward writes dgate|dup in bf16 straight into the
     * gate|up GEMM backward's input; dxm written */
    OP(P_GEMM, lin_back16(m, m->dsw, XW | WD, y->g_down, y->gb_down, m->dh16, s->act, y->w_down, F, D, e));
    OP(P_MLP, xd_cuda_swiglu_backward_bf16(cx, m->gb16, m->gb16 + F, 2 * F, m->dsw, s->gu, s->gu + F, 2 * F, N, F, e));
    OP(P_GEMM, lin_back16(m, m->dxm, XW | WD, y->g_gu, y->gb_gu, m->gb16, s->xmb, y->w_gu, D, 2 * F, e));
    /* h1 = h0 + [norm](o1): pre-norm dh1 = dh2 + [norm'](dxm) in one pass (+ bf16 copy), post-norm
     * dh1 += dxm, do1 = [norm'](dh1) */
    if (c->post_norm) {
      OP(P_MEM, xd_cuda_add_f32(cx, m->dh1, m->dxm, ND, e));
      OP(P_NORM, xd_cuda_rmsnorm_backward_res(cx, m->dout, m->dh16, NULL, y->g_attn_out_norm, m->dh1, s->o1, XD_CUDA_F32,
                                              y->attn_out_norm, XD_CUDA_F32, N, D, eps, e));
    } else {
      OP(P_NORM, xd_cuda_rmsnorm_backward_res(cx, m->dh1, m->dh16, m->dh, y->g_mlp_norm, m->dxm, s->h1, XD_CUDA_F32,
                                              y->mlp_norm, XD_CUDA_F32, N, D, eps, e));
    }
    OP(P_GEMM, lin_back16(m, m->datt, XW | WD, y->g_o, y->gb_o, m->dh16, s->attb, y->w_o, Hd, D, e));
    CK(core_backward(m, y, s, m->datt, 1, e));
    const int Q = Hd + 2 * Gd;
    if (c->qk_norm == XD_QKNORM_NONE && d % 4 == 0) {
      /* q = rope(q_raw): dq_raw = dqr + R^T dq, k likewise, straight into the fused bf16
       * dq|dk|dv of the GEMM backward below (one pass instead of RoPE's transpose in place, the
       * two adds and the three gathers; the same arithmetic per element) */
      OP(P_ROPE, xd_cuda_rope_backward_qkv_bf16(cx, m->gb16, Q, m->dq, m->dqr, m->dk, m->dkr, m->dvr, m->cos_t[y->kind],
                                                m->sin_t[y->kind], m->pos, N, H, G, d, e));
    } else {
      /* q = rope(qknorm(q_raw)): RoPE's transpose, then the QK-norm */
      OP(P_ROPE, xd_cuda_rope_backward(cx, m->dq, Hd, m->cos_t[y->kind], m->sin_t[y->kind], m->pos, N, H, d, e));
      OP(P_ROPE, xd_cuda_rope_backward(cx, m->dk, Gd, m->cos_t[y->kind], m->sin_t[y->kind], m->pos, N, G, d, e));
      if (c->qk_norm == XD_QKNORM_HEAD) {
        OP(P_ROPE, xd_cuda_rmsnorm_backward_segments(cx, m->dqr, Hd, y->g_q_norm, m->dq, Hd, s->qr, XD_CUDA_F32, Hd,
                                                     y->q_norm, XD_CUDA_F32, N, H, d, eps, e));
        OP(P_ROPE, xd_cuda_rmsnorm_backward_segments(cx, m->dkr, Gd, y->g_k_norm, m->dk, Gd, s->kr, XD_CUDA_F32, Gd,
                                                     y->k_norm, XD_CUDA_F32, N, G, d, eps, e));
      } else if (c->qk_norm == XD_QKNORM_PROJ) {
        OP(P_NORM, xd_cuda_rmsnorm_backward(cx, m->dqr, y->g_q_norm, m->dq, s->qr, XD_CUDA_F32, y->q_norm, XD_CUDA_F32, N,
                                            Hd, eps, e));
        OP(P_NORM, xd_cuda_rmsnorm_backward(cx, m->dkr, y->g_k_norm, m->dk, s->kr, XD_CUDA_F32, y->k_norm, XD_CUDA_F32, N,
                                            Gd, eps, e));
      } else {
        OP(P_MEM, xd_cuda_add_f32(cx, m->dqr, m->dq, (size_t)N * Hd, e));
        OP(P_MEM, xd_cuda_add_f32(cx, m->dkr, m->dk, (size_t)N * Gd, e));
      }
      /* dq|dk|dv gathered into one bf16 [N, Hd + 2Gd] buffer */
      OP(P_GEMM, xd_cuda_f32_to_bf16_2d(cx, m->gb16, (size_t)Q, m->dqr, (size_t)Hd, (size_t)N, (size_t)Hd, e));
      OP(P_GEMM, xd_cuda_f32_to_bf16_2d(cx, m->gb16 + Hd, (size_t)Q, m->dkr, (size_t)Gd, (size_t)N, (size_t)Gd, e));
      OP(P_GEMM, xd_cuda_f32_to_bf16_2d(cx, m->gb16 + Hd + Gd, (size_t)Q, m->dvr, (size_t)Gd, (size_t)N, (size_t)Gd, e));
    }
    /* x W^T for the fused q|k|v weight (its gradient and bias gradient are adjacent slices, as
     * the weight's): one GEMM backward */
    OP(P_GEMM, lin_back16(m, m->dx, WD, y->g_qkv, y->gb_qkv, m->gb16, s->xb, y->w_qkv, D, Q, e));
    /* x = [rmsnorm](h0): dh0 = dh1 + [norm'](dx) (pre-norm: one pass, with the bf16 copy the next
     * layer's down projection reads) */
    if (c->post_norm) {
      OP(P_MEM, xd_cuda_copy(cx, m->dh, m->dh1, ND * sizeof(float), e));
      OP(P_MEM, xd_cuda_add_f32(cx, m->dh, m->dx, ND, e));
    } else {
      OP(P_NORM, xd_cuda_rmsnorm_backward_res(cx, m->dh, l > 0 ? m->dh16 : NULL, m->dh1, y->g_attn_norm, m->dx, s->h0,
                                              XD_CUDA_F32, y->attn_norm, XD_CUDA_F32, N, D, eps, e));
    }
  }
  OP(P_EMB, xd_cuda_embedding_backward(cx, m->g_embed, m->dh, m->ids, N, D, V, e));
  return 0;
}

/* The stage II backward: run_graphed, one graph per value of `fresh` (~700 launches as one). */
int xd_student_cuda_train_backward(xd_student_cuda_train *m, xd_err *e) {
  if (m->align) return xd_errf(e, "student on CUDA: stage II backward on a stage I model");
  if (m->head_rows < m->N && !m->head_grad)
    return xd_errf(e, "student on CUDA: backward without xd_student_cuda_train_loss(.., backward 1) since the forward "
                   "(the LM head in row blocks runs its backward in the loss)");
  const int fresh = xd_params_cuda_grad_fresh(m->pd) ? 1 : 0;
  CK(run_graphed(m, fresh, train_backward_body, fresh, e));
  if (fresh) xd_params_cuda_grad_written(m->pd);
  m->head_grad = 0; /* the head's gradient is in: a second backward would add the rest again */
  return 0;
}
/* ---- stage I (align.c's run_batch + align_hook) -------------------------------------------- */
/* The align step's kernels after the ids' upload, up to the per-layer loss sums (graph slots 3 / 4:
 * run_graphed's rules). */
static int align_step_body(xd_student_cuda_train *m, int backward, xd_err *e) {
  const xd_model_config *c = &m->cfg;
  xd_cuda_ctx *cx = m->c;
  const int B = m->B, T = m->T, N = m->N, D = c->hidden, H = c->n_heads, G = c->n_kv_heads, d = c->head_dim, V = c->vocab;
  const int Hd = H * d, Gd = G * d;
  const size_t nout = (size_t)N * Hd;
  tl_saves *s = &m->sv[0]; /* one layer's activations, reused */
  OP(P_EMB, xd_cuda_embedding_forward(cx, m->hnb, m->ids, m->embed16, N, D, V, e));
  OP(P_MEM, xd_cuda_bf16_to_f32(cx, s->h0, m->hnb, (size_t)N * D, e));
  for (int l = 0; l < c->n_layers; l++) {
    const tl_layer *y = &m->ly[l];
    CK(layer_head(m, y, s, e));
    /* the teacher's own attention a^l (its causal window, no sinks): the loss target, and the
     * input of its o-projection (teacher forcing: the next layer sees the teacher's stream) */
    const int tw = xd_config_layer_window(c, l);
    if (d == 64 || d == 128) {
      const xd_cuda_attn_dims ad = {B, T, H, G, d, tw, 0, Hd, Gd, Gd, Hd};
      OP(P_ATTN, xd_cuda_attention_forward(cx, s->attb, NULL, s->qb, s->kb, s->vb, &ad, e));
      OP(P_MEM, xd_cuda_bf16_to_f32(cx, m->a_ref, s->attb, nout, e));
    } else {
      OP(P_ATTN, xd_cuda_swa_naive_forward_lse(cx, m->a_ref, NULL, s->q, s->k, s->vr, B, T, H, G, d, tw > 0 ? tw : T, 0, e));
      OP(P_MEM, xd_cuda_f32_to_bf16(cx, s->attb, m->a_ref, nout, e));
    }
    CK(core_forward(m, y, s, m->datt, NULL, e));
    OP(P_MIX, xd_cuda_mse_grad(cx, backward ? m->dcore : NULL, m->datt, m->a_ref, nout, (float)(2.0 / (double)nout), m->d_lsum + l, e));
    if (backward) CK(core_backward(m, y, s, m->dcore, 0, e));
    CK(layer_tail(m, y, s, s->h0, e));
  }
  return 0;
}

int xd_student_cuda_align_step(xd_student_cuda_train *m, const int32_t *ids, int backward, double *layer_loss, xd_err *e) {
  const xd_model_config *c = &m->cfg;
  const int N = m->N;
  const size_t nout = (size_t)N * c->n_heads * c->head_dim;
  if (!m->align) return xd_errf(e, "student on CUDA: align step on a stage II model");
  CK(xd_check_token_ids(ids, (size_t)N, c->vocab, e));
  CK(xd_cuda_upload(m->c, m->ids, ids, (size_t)N * 4, e));
  CK(run_graphed(m, backward ? 4 : 3, align_step_body, backward != 0, e));
  CK(xd_cuda_download(m->c, layer_loss, m->d_lsum, (size_t)c->n_layers * sizeof(double), e));
  for (int l = 0; l < c->n_layers; l++) layer_loss[l] /= (double)nout;
  return 0;
}
#endif
