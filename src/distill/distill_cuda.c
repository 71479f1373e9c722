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
#include "distill/teacher_topk_cuda.h"
#include "model/student/student_cuda_train.h"
#include "model/teacher/teacher_cuda.h"
#include "train/params_cuda.h"

/* The online teacher runs on a stream of its own (teacher_topk_cuda.h): after the loss of batch
 * i, the teacher's forward + top-k of batch i+1 (the loader's next rows, known in advance) are
 * submitted into the other of two slots and run beside the student's backward and optimiser
 * step; the next step uses that slot when its rows are the ones submitted, and otherwise (the
 * first step, after a resume or an evaluation, or with XD_TEACHER_PREFETCH=0) submits its own
 * batch first. Either way the student's forward runs before the wait for the top-k (only the KD
 * loss needs them). Same kernels, same inputs: the numbers do not depend on the schedule. On an
 * H100 at the 1B shape this gains only ~1-2% (bench_gpu_train, docs/perf.md): the step is
 * compute-bound nearly throughout, and two compute-bound streams mostly take turns. */
struct xd_distill_cuda {
  xd_cuda_ctx *cx; /* the student's stream (high priority) */
  xd_params_cuda *pd;
  xd_student_cuda_train *m;
  xd_teacher_topk_cuda *tp; /* online teacher, or NULL with a cache */
  const xd_topk_reader *cache;
  xd_student *s;
  xd_loader *L;
  int B, T, k;
  kd_config kd;
  xd_trainer_device dev;
  int prefetch;        /* submit the next batch's teacher during this step's backward */
  int pf_slot;         /* slot holding the submitted next batch, -1: none */
  uint64_t *pf_rows;   /* its rows [B] */
  /* host batch, per slot */
  int32_t *tokens, *inputs[2], *targets[2], *tk_ids;
  uint8_t *mask_row, *mask[2];
  float *tk_logp;
  uint64_t *rows;
  /* device batch and loss outputs (top-k buffers: the cache's; the online teacher has its slots) */
  int32_t *d_targets, *d_tk_ids;
  uint8_t *d_mask;
  float *d_tk_logp, *d_row_ce, *d_row_kl;
  xd_cuda_kd_result *d_res;
};

void xd_distill_cuda_free(xd_distill_cuda *c) {
  if (!c) return;
  xd_teacher_topk_cuda_free(c->tp);
  xd_student_cuda_train_free(c->m);
  xd_params_cuda_free(c->pd);
  void *d[] = {c->d_targets, c->d_tk_ids, c->d_mask, c->d_tk_logp, c->d_row_ce, c->d_row_kl, c->d_res};
  for (size_t i = 0; i < sizeof d / sizeof *d; i++) xd_cuda_free(d[i]);
  void *h[] = {c->tokens, c->inputs[0], c->inputs[1], c->targets[0], c->targets[1], c->tk_ids, c->mask_row,
               c->mask[0], c->mask[1], c->tk_logp, c->rows, c->pf_rows};
  for (size_t i = 0; i < sizeof h / sizeof *h; i++) free(h[i]);
  if (c->cx) xd_cuda_ctx_free(c->cx);
  free(c);
}

/* The batch of `rows` into the host buffers of `slot`, and for the online teacher its forward
 * + top-k submitted into that slot (the teacher's stream; returns without waiting). */
static int prepare_batch(xd_distill_cuda *c, xd_loader *L, const uint64_t *rows, int slot, xd_err *e) {
  if (xd_distill_read_rows(L, rows, c->B, c->T, c->s->cfg.vocab, c->tokens, c->mask_row, c->inputs[slot],
                           c->targets[slot], c->mask[slot], e) != 0)
    return -1;
  return c->tp ? xd_teacher_topk_cuda_submit(c->tp, slot, c->inputs[slot], e) : 0;
}

/* The prepared batch of `slot` on the student's stream: targets, mask, and the cache's top-k rows
 * (the online teacher's slot is waited for in forward_loss, after the student's forward). */
static int use_batch(xd_distill_cuda *c, const uint64_t *rows, int slot, xd_err *e) {
  const size_t N = (size_t)c->B * c->T, nk = N * (size_t)c->k;
  if (xd_cuda_upload(c->cx, c->d_targets, c->targets[slot], N * 4, e) || xd_cuda_upload(c->cx, c->d_mask, c->mask[slot], N, e))
    return -1;
  if (c->tp) return 0;
  if (xd_distill_cache_rows(c->cache, rows, c->B, c->T, c->k, c->tk_ids, c->tk_logp, e) != 0) return -1;
  return xd_cuda_upload(c->cx, c->d_tk_ids, c->tk_ids, nk * 4, e) || xd_cuda_upload(c->cx, c->d_tk_logp, c->tk_logp, nk * 4, e);
}

/* Forward + fused loss of the batch in `slot` (with backward: its gradient, and in row blocks
 * the LM head's backward); res on the host. */
static int forward_loss(xd_distill_cuda *c, int slot, int backward, kd_result *res, xd_err *e) {
  if (xd_student_cuda_train_forward(c->m, c->inputs[slot], e) != 0) return -1;
  if (c->tp && xd_teacher_topk_cuda_wait(c->tp, slot, c->cx, e) != 0) return -1; /* the KD loss needs it, the forward not */
  xd_cuda_kd_args a;
  xd_student_cuda_train_kd_args(c->m, &c->kd, &a);
  a.targets = c->d_targets;
  a.mask = c->d_mask;
  a.tk_ids = c->tp ? xd_teacher_topk_cuda_ids(c->tp, slot) : c->d_tk_ids;
  a.tk_logp = c->tp ? xd_teacher_topk_cuda_logp(c->tp, slot) : c->d_tk_logp;
  a.row_ce = c->d_row_ce;
  a.row_kl = c->d_row_kl;
  a.res = c->d_res;
  if (xd_student_cuda_train_loss(c->m, &a, backward, e) != 0) return -1;
  xd_cuda_kd_result r;
  if (xd_cuda_download(c->cx, &r, c->d_res, sizeof r, e) != 0) return -1;
  if (c->tp && xd_teacher_topk_cuda_check(c->tp, slot, e) != 0) return -1; /* the more precise message first */
  if (r.bad_pos >= 0)
    return xd_errf(e, "position %lld: target or teacher top-k id outside the vocabulary, or a non-finite teacher log-prob",
                   (long long)r.bad_pos);
  *res = r.r;
  return 0;
}

int xd_distill_cuda_eval_rows(xd_distill_cuda *c, xd_loader *L, const uint64_t *rows, kd_result *res, xd_err *e) {
  const int slot = c->pf_slot >= 0 ? c->pf_slot ^ 1 : 0; /* a submitted next batch stays valid */
  if (prepare_batch(c, L, rows, slot, e) != 0 || use_batch(c, rows, slot, e) != 0) return -1;
  return forward_loss(c, slot, 0, res, e);
}

int xd_distill_cuda_download(xd_distill_cuda *c, xd_err *e) { return xd_params_cuda_download(c->pd, &c->s->params, e); }

static int step_fn(void *vctx, xd_params *p, uint64_t step, int micro, int n_micro, xd_rng *rng, xd_step_result *out,
                   xd_err *e) {
  xd_distill_cuda *c = vctx;
  (void)p, (void)step, (void)micro, (void)n_micro, (void)rng;
  xd_distill_next_rows(c->L, c->B, c->rows);
  xd_loader_next(c->L, c->tokens, c->mask_row); /* advances the loader; rows re-read by index */
  int slot = 0;
  if (c->pf_slot >= 0 && memcmp(c->pf_rows, c->rows, (size_t)c->B * sizeof *c->rows) == 0) {
    slot = c->pf_slot; /* submitted during the previous step */
  } else {
    slot = c->pf_slot >= 0 ? c->pf_slot ^ 1 : 0;
    if (prepare_batch(c, c->L, c->rows, slot, e) != 0) return -1;
  }
  c->pf_slot = -1;
  kd_result r;
  if (use_batch(c, c->rows, slot, e) != 0 || forward_loss(c, slot, 1, &r, e) != 0) return -1;
  if (c->prefetch) { /* the next batch's teacher beside this step's backward and optimiser step */
    xd_distill_next_rows(c->L, c->B, c->pf_rows);
    if (prepare_batch(c, c->L, c->pf_rows, slot ^ 1, e) != 0) return -1;
    c->pf_slot = slot ^ 1;
  }
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
  c->pf_slot = -1;
  const char *pf = getenv("XD_TEACHER_PREFETCH");
  c->prefetch = t && !(pf && strcmp(pf, "0") == 0);
  if (xd_cuda_ctx_create_prio(&c->cx, 0, 1, e) != 0) goto fail; /* the student's blocks first */
  if (xd_params_cuda_create(&c->pd, c->cx, &s->params, e) != 0) goto fail;
  const int head_rows = xd_stage2_head_rows(); /* rows of logits held at once */
  if (t && xd_teacher_topk_cuda_create(&c->tp, t, B, T, kd->k, head_rows, e) != 0) goto fail;
  if (xd_student_cuda_train_create(&c->m, c->cx, s, c->pd, B, T, recompute, head_rows, e) != 0) goto fail;
  AL(c->d_targets, N * 4); AL(c->d_mask, N);
  if (!t) { AL(c->d_tk_ids, nk * 4); AL(c->d_tk_logp, nk * 4); }
  AL(c->d_row_ce, N * 4); AL(c->d_row_kl, N * 4); AL(c->d_res, sizeof(xd_cuda_kd_result));
  c->tokens = xd_malloc((size_t)B * (T + 1) * sizeof(int32_t));
  c->mask_row = xd_malloc((size_t)B * (T + 1));
  for (int i = 0; i < 2; i++) {
    c->inputs[i] = xd_malloc(N * sizeof(int32_t));
    c->targets[i] = xd_malloc(N * sizeof(int32_t));
    c->mask[i] = xd_malloc(N);
  }
  c->tk_ids = xd_malloc(nk * sizeof(int32_t) + 1);
  c->tk_logp = xd_malloc(nk * sizeof(float) + 1);
  c->rows = xd_malloc((size_t)B * sizeof(uint64_t));
  c->pf_rows = xd_malloc((size_t)B * sizeof(uint64_t));
  if (log) {
    char name[256] = "?";
    int sms = 0;
    size_t fr = 0, tot = 0;
    xd_cuda_device_info(c->cx, name, sizeof name, &sms, e);
    xd_cuda_mem_info(c->cx, &fr, &tot, e);
    const int hrows = xd_student_cuda_train_head_rows(c->m);
    fprintf(log, "distill --device cuda: %s | parameters+grads+AdamW %.0f MiB | activations %.0f MiB%s, LM head in blocks of "
            "%d rows | op scratch %.0f MiB | teacher %.0f MiB%s | free %.0f of %.0f MiB\n", name,
            xd_params_cuda_bytes(c->pd) / 1048576.0, xd_student_cuda_train_bytes(&s->cfg, &s->hy, B, T, recompute, hrows) / 1048576.0,
            recompute ? " (recomputed)" : "", hrows,
            xd_student_cuda_train_scratch_bytes(&s->cfg, &s->hy, B, T) / 1048576.0,
            c->tp ? xd_teacher_topk_cuda_bytes(c->tp) / 1048576.0 : 0.0,
            c->prefetch ? " (own stream, one batch ahead)" : "", fr / 1048576.0, tot / 1048576.0);
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
            "op scratch %.0f MiB | free %.0f of %.0f MiB\n", name, xd_params_cuda_bytes(c->pd) / 1048576.0,
            xd_student_cuda_align_bytes(&s->cfg, &s->hy, B, T) / 1048576.0,
            xd_student_cuda_train_scratch_bytes(&s->cfg, &s->hy, B, T) / 1048576.0, fr / 1048576.0, tot / 1048576.0);
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
