/* Stage II: sparse knowledge distillation (SPEC §4). Per micro-batch: the teacher's top-k
 * (online: a teacher forward + top-k extraction; cached: the rows of a top-k file, looked up
 * by the global row index the loader yields), the student's full forward with saved
 * activations, loss = gamma CE + beta KL over the top-k renormalised distributions (masked
 * positions skipped), and the exact backward over every student parameter. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "distill/stages.h"

void xd_distill_next_rows(xd_loader *L, int B, uint64_t *rows) {
  xd_loader_state st;
  xd_loader_get_state(L, &st);
  const uint64_t per = xd_loader_rows_per_rank(L);
  for (int b = 0; b < B; b++) {
    uint64_t pos = st.position + (uint64_t)b, ep = st.epoch + pos / per;
    rows[b] = xd_loader_row_index(L, ep, pos % per);
  }
}

int xd_distill_teacher_topk(xd_distill_ctx *c, const int32_t *ids, xd_err *e) {
  const int V = c->teacher->cfg.vocab;
  if (xd_teacher_forward(c->teacher, &c->ta, ids, c->B, c->T, c->tlogits, NULL, NULL, e) != 0) return -1;
  return topk_logprobs(c->tlogits, c->B * c->T, V, c->k, c->tk_ids, c->tk_logp, e);
}

int xd_distill_read_rows(xd_loader *L, const uint64_t *rows, int B, int T, int vocab, int32_t *tokens, uint8_t *mask_row,
                         int32_t *inputs, int32_t *targets, uint8_t *mask, xd_err *e) {
  for (int b = 0; b < B; b++) {
    xd_loader_row(L, rows[b], tokens + (size_t)b * (T + 1), mask_row + (size_t)b * (T + 1));
    for (int t = 0; t < T; t++) {
      inputs[b * T + t] = tokens[(size_t)b * (T + 1) + t];
      targets[b * T + t] = tokens[(size_t)b * (T + 1) + t + 1];
      mask[b * T + t] = mask_row[(size_t)b * (T + 1) + t + 1]; /* the target's mask */
    }
  }
  for (int i = 0; i < B * T; i++)
    if (inputs[i] >= vocab || targets[i] >= vocab)
      return xd_errf(e, "data token id outside the model's vocabulary (%d): data prepared with another tokenizer?", vocab);
  return 0;
}

int xd_distill_cache_rows(const xd_topk_reader *cache, const uint64_t *rows, int B, int T, int k, int32_t *tk_ids,
                          float *tk_logp, xd_err *e) {
  const size_t n = (size_t)T * k;
  for (int b = 0; b < B; b++) {
    const int32_t *ids;
    const float *lp;
    if (xd_topk_reader_row(cache, rows[b], &ids, &lp, e) != 0) return -1;
    memcpy(tk_ids + (size_t)b * n, ids, n * sizeof(int32_t));
    memcpy(tk_logp + (size_t)b * n, lp, n * sizeof(float));
  }
  return 0;
}

static int load_batch(xd_distill_ctx *c, const uint64_t *rows, xd_err *e) {
  if (xd_distill_read_rows(c->loader, rows, c->B, c->T, c->student->cfg.vocab, c->tokens, c->mask_row, c->inputs,
                           c->targets, c->mask, e) != 0)
    return -1;
  if (c->cache) return xd_distill_cache_rows(c->cache, rows, c->B, c->T, c->k, c->tk_ids, c->tk_logp, e);
  return xd_distill_teacher_topk(c, c->inputs, e);
}

int xd_distill_eval_rows(xd_distill_ctx *c, const uint64_t *rows, kd_result *res, xd_err *e) {
  if (load_batch(c, rows, e) != 0) return -1;
  if (xd_student_forward_train(c->student, &c->sa, c->inputs, c->logits, e) != 0) return -1;
  return kd_loss_forward(&c->kd, c->logits, c->targets, c->mask, c->tk_ids, c->tk_logp, c->lse, res, e);
}

static const char *const metric_names[2] = {"ce", "kl"};

static int distill_step(void *vctx, xd_params *p, uint64_t step, int micro, int n_micro, xd_rng *rng, xd_step_result *out,
                        xd_err *e) {
  xd_distill_ctx *c = vctx;
  (void)p; (void)step; (void)micro; (void)n_micro; (void)rng;
  xd_distill_next_rows(c->loader, c->B, c->rows);
  xd_loader_next(c->loader, c->tokens, c->mask_row); /* advances the loader; rows re-read by index */
  kd_result r;
  if (xd_distill_eval_rows(c, c->rows, &r, e) != 0) return -1;
  kd_loss_backward(&c->kd, c->logits, c->logits, c->targets, c->mask, c->tk_ids, c->tk_logp, c->lse, r.count, 1.0f);
  xd_student_backward(c->student, &c->sa, c->inputs, c->logits);
  xd_distill_result(out, &r);
  return 0;
}

void xd_distill_result(xd_step_result *out, const kd_result *r) {
  out->loss = r->loss;
  out->tokens = (uint64_t)r->count;
  out->nmetrics = 2;
  out->metric_names[0] = metric_names[0];
  out->metric_values[0] = r->ce;
  out->metric_names[1] = metric_names[1];
  out->metric_values[1] = r->kl;
}

static void loader_save(void *L, void *buf) { xd_loader_save(L, buf); }
static int loader_restore(void *L, const void *buf, xd_err *e) { return xd_loader_restore(L, buf, e); }

void xd_stage_hooks_loader(xd_trainer_hooks *h, xd_loader *L) {
  h->loader_ctx = L;
  h->loader_state_size = XD_LOADER_STATE_BYTES;
  h->loader_save = loader_save;
  h->loader_restore = loader_restore;
}

void xd_distill_init(xd_distill_ctx *c, const xd_teacher *t, const xd_topk_reader *cache, xd_student *s, xd_loader *L,
                     int B, int T, const kd_config *kd, xd_trainer_hooks *hooks) {
  memset(c, 0, sizeof *c);
  c->teacher = t;
  c->cache = cache;
  c->student = s;
  c->loader = L;
  c->B = B;
  c->T = T;
  c->k = kd->k;
  c->kd = *kd;
  c->kd.N = B * T;
  c->kd.V = s->cfg.vocab;
  const size_t N = (size_t)B * T, V = (size_t)s->cfg.vocab;
  if (t) {
    xd_teacher_acts_alloc(&c->ta, &t->cfg, B * T, T);
    c->tlogits = xd_malloc(N * V * sizeof(float));
  }
  xd_student_train_acts_alloc(&c->sa, s, B, T);
  c->tokens = xd_malloc((size_t)B * (T + 1) * sizeof(int32_t));
  c->mask_row = xd_malloc((size_t)B * (T + 1));
  c->inputs = xd_malloc(N * sizeof(int32_t));
  c->targets = xd_malloc(N * sizeof(int32_t));
  c->mask = xd_malloc(N);
  c->logits = xd_malloc(N * V * sizeof(float));
  c->lse = xd_malloc(N * sizeof(float));
  c->tk_ids = xd_malloc(N * (size_t)c->k * sizeof(int32_t));
  c->tk_logp = xd_malloc(N * (size_t)c->k * sizeof(float));
  c->rows = xd_malloc((size_t)B * sizeof(uint64_t));
  memset(hooks, 0, sizeof *hooks);
  hooks->step = distill_step;
  hooks->ctx = c;
  xd_stage_hooks_loader(hooks, L);
}

void xd_distill_free(xd_distill_ctx *c) {
  if (c->teacher) xd_teacher_acts_free(&c->ta);
  xd_student_train_acts_free(&c->sa);
  void *p[] = {c->tokens, c->mask_row, c->inputs, c->targets, c->mask, c->logits, c->tlogits, c->lse, c->tk_ids, c->tk_logp, c->rows};
  for (size_t i = 0; i < sizeof p / sizeof *p; i++) free(p[i]);
  memset(c, 0, sizeof *c);
}
