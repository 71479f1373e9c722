/* Stage II on the GPU (distill_cuda.h). */
#include "distill/distill_cuda.h"

#include <stdlib.h>
#include <string.h>

#ifndef XD_HAVE_CUDA
int xd_distill_cuda_init(xd_distill_cuda **out, const xd_teacher *t, const xd_topk_reader *cache, xd_student *s,
                         xd_loader *L, int B, int T, const kd_config *kd, int recompute, xd_trainer_hooks *hooks, FILE *log,
                         xd_err *e) {
  (void)t, (void)cache, (void)s, (void)L, (void)B, (void)T, (void)kd, (void)recompute, (void)hooks, (void)log;
  *out = NULL;
  return xd_errf(e, "built without CUDA (configure with -DXD_CUDA=ON)");
}
void xd_distill_cuda_free(xd_distill_cuda *c) { (void)c; }
int xd_distill_cuda_eval_rows(xd_distill_cuda *c, xd_loader *L, const uint64_t *rows, kd_result *res, xd_err *e) {
  (void)c, (void)L, (void)rows, (void)res;
  return xd_errf(e, "--device cuda: built without CUDA");
}
int xd_distill_cuda_download(xd_distill_cuda *c, xd_err *e) {
  (void)c;
  return xd_errf(e, "--device cuda: built without CUDA");
}
int xd_align_cuda_init(xd_align_cuda **out, const xd_teacher *t, xd_student *s, xd_loader *L, int B, int T,
                       xd_trainer_hooks *hooks, FILE *log, xd_err *e) {
  (void)t, (void)s, (void)L, (void)B, (void)T, (void)hooks, (void)log;
  *out = NULL;
  return xd_errf(e, "built without CUDA (configure with -DXD_CUDA=ON)");
}
void xd_align_cuda_free(xd_align_cuda *c) { (void)c; }
double xd_align_cuda_eval_loss(xd_align_cuda *c, const int32_t *inputs) {
  (void)c, (void)inputs;
  return 0.0 / 0.0;
}
int xd_align_cuda_download(xd_align_cuda *c, xd_err *e) {
  (void)c;
  return xd_errf(e, "--device cuda: built without CUDA");
}
#else
#include "model/student/student_cuda_train.h"
#include "model/teacher/teacher_cuda.h"
#include "train/params_cuda.h"

struct xd_distill_cuda {
  xd_cuda_ctx *cx;
  xd_params_cuda *pd;
  xd_student_cuda_train *m;
  xd_teacher_cuda t;
  xd_teacher_cuda_state ts;
  int have_t;
  const xd_topk_reader *cache;
  xd_student *s;
  xd_loader *L;
  int B, T, k;
  kd_config kd;
  xd_trainer_device dev;
  /* host batch */
  int32_t *tokens, *inputs, *targets, *tk_ids;
  uint8_t *mask_row, *mask;
  float *tk_logp;
  uint64_t *rows;
  /* device batch and loss outputs */
  int32_t *d_targets, *d_tk_ids, *d_bad_row;
  uint8_t *d_mask;
  float *d_tk_logp, *d_row_ce, *d_row_kl;
  xd_cuda_kd_result *d_res;
};

void xd_distill_cuda_free(xd_distill_cuda *c) {
  if (!c) return;
  xd_student_cuda_train_free(c->m);
  if (c->have_t) {
    xd_teacher_cuda_state_free(&c->ts);
    xd_teacher_cuda_free(&c->t);
  }
  xd_params_cuda_free(c->pd);
  void *d[] = {c->d_targets, c->d_tk_ids, c->d_bad_row, c->d_mask, c->d_tk_logp, c->d_row_ce, c->d_row_kl, c->d_res};
  for (size_t i = 0; i < sizeof d / sizeof *d; i++) xd_cuda_free(d[i]);
  void *h[] = {c->tokens, c->inputs, c->targets, c->tk_ids, c->mask_row, c->mask, c->tk_logp, c->rows};
  for (size_t i = 0; i < sizeof h / sizeof *h; i++) free(h[i]);
  if (c->cx) xd_cuda_ctx_free(c->cx);
  free(c);
}

/* The batch of `rows` into the device: ids (through the student's forward), targets, mask, and
 * the teacher's top-k (cache rows uploaded, or the online teacher's forward + top-k). */
static int load_batch(xd_distill_cuda *c, xd_loader *L, const uint64_t *rows, xd_err *e) {
  const size_t N = (size_t)c->B * c->T, nk = N * (size_t)c->k;
  if (xd_distill_read_rows(L, rows, c->B, c->T, c->s->cfg.vocab, c->tokens, c->mask_row, c->inputs, c->targets, c->mask,
                           e) != 0)
    return -1;
  if (xd_cuda_upload(c->cx, c->d_targets, c->targets, N * 4, e) || xd_cuda_upload(c->cx, c->d_mask, c->mask, N, e))
    return -1;
  if (c->cache) {
    if (xd_distill_cache_rows(c->cache, rows, c->B, c->T, c->k, c->tk_ids, c->tk_logp, e) != 0) return -1;
    if (xd_cuda_upload(c->cx, c->d_tk_ids, c->tk_ids, nk * 4, e) || xd_cuda_upload(c->cx, c->d_tk_logp, c->tk_logp, nk * 4, e))
      return -1;
  } else {
    if (xd_teacher_cuda_forward(&c->t, &c->ts, c->inputs, c->B, c->T, NULL, e) != 0) return -1;
    if (xd_cuda_topk_logprobs(c->cx, c->ts.logits, XD_CUDA_F32, (int)N, c->s->cfg.vocab, c->k, c->d_tk_ids, c->d_tk_logp,
                              c->d_bad_row, e) != 0)
      return -1;
    int32_t bad = -1;
    if (xd_cuda_download(c->cx, &bad, c->d_bad_row, sizeof bad, e) != 0) return -1;
    if (bad >= 0) return xd_errf(e, "teacher logits of row %d are not finite (GPU teacher forward)", bad);
  }
  return 0;
}

/* Forward + fused loss (+ its gradient into the dlogits buffer); res on the host. */
static int forward_loss(xd_distill_cuda *c, kd_result *res, xd_err *e) {
  if (xd_student_cuda_train_forward(c->m, c->inputs, e) != 0) return -1;
  xd_cuda_kd_args a;
  xd_student_cuda_train_kd_args(c->m, &c->kd, &a);
  a.targets = c->d_targets;
  a.mask = c->d_mask;
  a.tk_ids = c->d_tk_ids;
  a.tk_logp = c->d_tk_logp;
  a.row_ce = c->d_row_ce;
  a.row_kl = c->d_row_kl;
  a.res = c->d_res;
  if (xd_cuda_kd_loss_fused(c->cx, &a, e) != 0) return -1;
  xd_cuda_kd_result r;
  if (xd_cuda_download(c->cx, &r, c->d_res, sizeof r, e) != 0) return -1;
  if (r.bad_pos >= 0)
    return xd_errf(e, "position %lld: target or teacher top-k id outside the vocabulary, or a non-finite teacher log-prob",
                   (long long)r.bad_pos);
  *res = r.r;
  return 0;
}

int xd_distill_cuda_eval_rows(xd_distill_cuda *c, xd_loader *L, const uint64_t *rows, kd_result *res, xd_err *e) {
  if (load_batch(c, L, rows, e) != 0) return -1;
  return forward_loss(c, res, e);
}

int xd_distill_cuda_download(xd_distill_cuda *c, xd_err *e) { return xd_params_cuda_download(c->pd, &c->s->params, e); }

static int step_fn(void *vctx, xd_params *p, uint64_t step, int micro, int n_micro, xd_rng *rng, xd_step_result *out,
                   xd_err *e) {
  xd_distill_cuda *c = vctx;
  (void)p, (void)step, (void)micro, (void)n_micro, (void)rng;
  xd_distill_next_rows(c->L, c->B, c->rows);
  xd_loader_next(c->L, c->tokens, c->mask_row); /* advances the loader; rows re-read by index */
  kd_result r;
  if (load_batch(c, c->L, c->rows, e) != 0 || forward_loss(c, &r, e) != 0) return -1;
  if (r.count > 0 && xd_student_cuda_train_backward(c->m, e) != 0) return -1;
  xd_distill_result(out, &r);
  return 0;
}

#define AL(p, bytes) do { if (xd_cuda_malloc((void **)&(p), (bytes), e)) goto fail; } while (0)

int xd_distill_cuda_init(xd_distill_cuda **out, const xd_teacher *t, const xd_topk_reader *cache, xd_student *s,
                         xd_loader *L, int B, int T, const kd_config *kd, int recompute, xd_trainer_hooks *hooks, FILE *log,
                         xd_err *e) {
  *out = NULL;
  if (kd->k > XD_CUDA_TOPK_MAX) return xd_errf(e, "distill --device cuda: kd_topk %d above the GPU limit %d", kd->k, XD_CUDA_TOPK_MAX);
  xd_distill_cuda *c = xd_calloc(1, sizeof *c);
  c->cache = cache;
  c->s = s;
  c->L = L;
  c->B = B;
  c->T = T;
  c->k = kd->k;
  c->kd = *kd;
  c->kd.N = B * T;
  c->kd.V = s->cfg.vocab;
  const size_t N = (size_t)B * T, nk = N * (size_t)kd->k;
  if (xd_cuda_ctx_create(&c->cx, 0, e) != 0) goto fail;
  if (xd_params_cuda_create(&c->pd, c->cx, &s->params, e) != 0) goto fail;
  if (t) {
    if (xd_teacher_cuda_upload(&c->t, c->cx, t, e) != 0) goto fail;
    c->have_t = 1;
    if (xd_teacher_cuda_state_alloc(&c->ts, &c->t, B, T, T, (int)N, 0, e) != 0) {
      xd_teacher_cuda_free(&c->t);
      c->have_t = 0;
      goto fail;
    }
  }
  if (xd_student_cuda_train_create(&c->m, c->cx, s, c->pd, B, T, recompute, e) != 0) goto fail;
  AL(c->d_targets, N * 4); AL(c->d_mask, N); AL(c->d_tk_ids, nk * 4); AL(c->d_tk_logp, nk * 4);
  AL(c->d_row_ce, N * 4); AL(c->d_row_kl, N * 4); AL(c->d_res, sizeof(xd_cuda_kd_result)); AL(c->d_bad_row, 4);
  c->tokens = xd_malloc((size_t)B * (T + 1) * sizeof(int32_t));
  c->mask_row = xd_malloc((size_t)B * (T + 1));
  c->inputs = xd_malloc(N * sizeof(int32_t));
  c->targets = xd_malloc(N * sizeof(int32_t));
  c->mask = xd_malloc(N);
  c->tk_ids = xd_malloc(nk * sizeof(int32_t) + 1);
  c->tk_logp = xd_malloc(nk * sizeof(float) + 1);
  c->rows = xd_malloc((size_t)B * sizeof(uint64_t));
  if (log) {
    char name[256] = "?";
    int sms = 0;
    size_t fr = 0, tot = 0;
    xd_cuda_device_info(c->cx, name, sizeof name, &sms, e);
    xd_cuda_mem_info(c->cx, &fr, &tot, e);
    fprintf(log, "distill --device cuda: %s | parameters+grads+AdamW %.0f MiB | activations %.0f MiB%s | teacher %.0f MiB | "
            "free %.0f of %.0f MiB\n", name, xd_params_cuda_bytes(c->pd) / 1048576.0,
            xd_student_cuda_train_bytes(&s->cfg, &s->hy, B, T, recompute) / 1048576.0, recompute ? " (recomputed)" : "",
            c->have_t ? (c->t.weight_bytes + c->ts.act_bytes) / 1048576.0 : 0.0, fr / 1048576.0, tot / 1048576.0);
  }
  xd_params_cuda_trainer_device(c->pd, &c->dev);
  memset(hooks, 0, sizeof *hooks);
  hooks->step = step_fn;
  hooks->ctx = c;
  xd_stage_hooks_loader(hooks, L);
  hooks->device = &c->dev;
  *out = c;
  return 0;
fail:
  xd_distill_cuda_free(c);
  return -1;
}

/* ---- stage I ---------------------------------------------------------------------------- */
struct xd_align_cuda {
  xd_cuda_ctx *cx;
  xd_params_cuda *pd;
  xd_student_cuda_train *m;
  xd_student *s;
  xd_loader *L;
  int B, T;
  int32_t *tokens, *inputs;
  double *layer_loss;
  xd_trainer_device dev;
};

void xd_align_cuda_free(xd_align_cuda *c) {
  if (!c) return;
  xd_student_cuda_train_free(c->m);
  xd_params_cuda_free(c->pd);
  if (c->cx) xd_cuda_ctx_free(c->cx);
  free(c->tokens);
  free(c->inputs);
  free(c->layer_loss);
  free(c);
}

/* 0 when the student's copy of tensor `what` equals the teacher's (both NULL counts as equal). */
static int same_tensor(const float *a, const float *b, size_t n, const char *what, int layer, xd_err *e) {
  if (!a && !b) return 0;
  if (!a || !b || memcmp(a, b, n * sizeof(float)) != 0)
    return xd_errf(e, "align --device cuda: the student's %s%s%.0d differs from the teacher's: the GPU stage I runs the "
                   "teacher through the student's copy of its weights, so the student must be `xdistill init` of this "
                   "teacher with its shared tensors untouched", what, layer >= 0 ? " of layer " : "", layer >= 0 ? layer : 0);
  return 0;
}

static int check_copies(const xd_teacher *t, const xd_student *s, xd_err *e) {
  const xd_model_config *c = &t->cfg;
  const size_t D = c->hidden, F = c->intermediate, Hd = (size_t)c->n_heads * c->head_dim, Gd = (size_t)c->n_kv_heads * c->head_dim;
  const size_t d = (size_t)c->head_dim, qn = c->qk_norm == XD_QKNORM_PROJ ? Hd : d, kn = c->qk_norm == XD_QKNORM_PROJ ? Gd : d;
  if (same_tensor(t->embed, s->base.embed, (size_t)c->vocab * D, "embedding", -1, e) ||
      same_tensor(t->final_norm, s->base.final_norm, D, "final norm", -1, e) ||
      same_tensor(t->lm_head, s->base.lm_head, (size_t)c->vocab * D, "LM head", -1, e))
    return -1;
  for (int l = 0; l < c->n_layers; l++) {
    const xd_teacher_layer *a = &t->layers[l], *b = &s->base.layers[l];
    const struct { const float *x, *y; size_t n; const char *what; } cmp[] = {
      {a->attn_norm, b->attn_norm, D, "input norm"}, {a->wq, b->wq, Hd * D, "q projection"},
      {a->wk, b->wk, Gd * D, "k projection"}, {a->wv, b->wv, Gd * D, "v projection"}, {a->bq, b->bq, Hd, "q bias"},
      {a->bk, b->bk, Gd, "k bias"}, {a->bv, b->bv, Gd, "v bias"}, {a->q_norm, b->q_norm, qn, "q norm"},
      {a->k_norm, b->k_norm, kn, "k norm"}, {a->wo, b->wo, D * Hd, "o projection"}, {a->bo, b->bo, D, "o bias"},
      {a->attn_out_norm, b->attn_out_norm, D, "attention output norm"}, {a->mlp_norm, b->mlp_norm, D, "MLP norm"},
      {a->w_gate, b->w_gate, F * D, "gate projection"}, {a->w_up, b->w_up, F * D, "up projection"},
      {a->w_down, b->w_down, D * F, "down projection"}, {a->b_gate, b->b_gate, F, "gate bias"},
      {a->b_up, b->b_up, F, "up bias"}, {a->b_down, b->b_down, D, "down bias"},
      {a->mlp_out_norm, b->mlp_out_norm, D, "MLP output norm"}};
    for (size_t i = 0; i < sizeof cmp / sizeof *cmp; i++)
      if (same_tensor(cmp[i].x, cmp[i].y, cmp[i].n, cmp[i].what, l, e)) return -1;
  }
  return 0;
}

static int align_step_fn(void *vctx, xd_params *p, uint64_t step, int micro, int n_micro, xd_rng *rng,
                         xd_step_result *out, xd_err *e) {
  xd_align_cuda *c = vctx;
  (void)p, (void)step, (void)micro, (void)n_micro, (void)rng;
  xd_loader_next(c->L, c->tokens, NULL);
  for (int b = 0; b < c->B; b++)
    memcpy(c->inputs + (size_t)b * c->T, c->tokens + (size_t)b * (c->T + 1), (size_t)c->T * sizeof(int32_t));
  if (xd_student_cuda_align_step(c->m, c->inputs, 1, c->layer_loss, e) != 0) return -1;
  xd_align_result(out, c->layer_loss, c->s->cfg.n_layers, (uint64_t)c->B * c->T);
  return 0;
}

double xd_align_cuda_eval_loss(xd_align_cuda *c, const int32_t *inputs) {
  xd_err e;
  if (xd_student_cuda_align_step(c->m, inputs, 0, c->layer_loss, &e) != 0) return 0.0 / 0.0;
  double loss = 0;
  for (int l = 0; l < c->s->cfg.n_layers; l++) loss += c->layer_loss[l];
  return loss;
}

int xd_align_cuda_download(xd_align_cuda *c, xd_err *e) { return xd_params_cuda_download(c->pd, &c->s->params, e); }

int xd_align_cuda_init(xd_align_cuda **out, const xd_teacher *t, xd_student *s, xd_loader *L, int B, int T,
                       xd_trainer_hooks *hooks, FILE *log, xd_err *e) {
  *out = NULL;
  if (check_copies(t, s, e) != 0) return -1;
  xd_align_cuda *c = xd_calloc(1, sizeof *c);
  c->s = s;
  c->L = L;
  c->B = B;
  c->T = T;
  if (xd_cuda_ctx_create(&c->cx, 0, e) || xd_params_cuda_create(&c->pd, c->cx, &s->params, e) ||
      xd_student_cuda_align_create(&c->m, c->cx, s, c->pd, B, T, e)) {
    xd_align_cuda_free(c);
    return -1;
  }
  c->tokens = xd_malloc((size_t)B * (T + 1) * sizeof(int32_t));
  c->inputs = xd_malloc((size_t)B * T * sizeof(int32_t));
  c->layer_loss = xd_calloc((size_t)s->cfg.n_layers, sizeof(double));
  if (log) {
    char name[256] = "?";
    int sms = 0;
    size_t fr = 0, tot = 0;
    xd_cuda_device_info(c->cx, name, sizeof name, &sms, e);
    xd_cuda_mem_info(c->cx, &fr, &tot, e);
    fprintf(log, "align --device cuda: %s | parameters+grads+AdamW %.0f MiB | activations (one layer) %.0f MiB | "
            "free %.0f of %.0f MiB\n", name, xd_params_cuda_bytes(c->pd) / 1048576.0,
            xd_student_cuda_align_bytes(&s->cfg, &s->hy, B, T) / 1048576.0, fr / 1048576.0, tot / 1048576.0);
  }
  xd_params_cuda_trainer_device(c->pd, &c->dev);
  memset(hooks, 0, sizeof *hooks);
  hooks->step = align_step_fn;
  hooks->ctx = c;
  xd_stage_hooks_loader(hooks, L);
  hooks->device = &c->dev;
  *out = c;
  return 0;
}
#endif
