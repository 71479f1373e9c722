/* Stage I: teacher-forced layer-wise alignment. One teacher forward per micro-batch; at each
 * layer the hook runs the student's hybrid core on the teacher's own x^l, q, k, v, compares
 * its output with the teacher's attention output a^l (MSE over tokens and channels), and
 * back-propagates into that layer's new parameters at once, so only one layer's activations
 * exist at any time. Loss = sum over layers. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/prepare.h"
#include "distill/stages.h"

int xd_check_pair(const xd_teacher *t, const xd_student *s, const char *tdir, const char *sdir, xd_err *e) {
  const xd_model_config *a = &t->cfg, *b = &s->cfg;
  if (a->hidden != b->hidden || a->n_layers != b->n_layers || a->n_heads != b->n_heads || a->n_kv_heads != b->n_kv_heads ||
      a->head_dim != b->head_dim || a->vocab != b->vocab || a->intermediate != b->intermediate || a->family != b->family)
    return xd_errf(e, "%s: student does not fit teacher %s (family, layers, hidden, heads, head_dim, vocab or MLP size differ)",
                   sdir, tdir);
  return 0;
}

uint64_t xd_tokenizer_hash_value(const char *hash) {
  unsigned long long v = 0;
  char tail;
  if (!hash || sscanf(hash, "fnv1a64:%16llx%c", &v, &tail) != 1) return 0;
  return (uint64_t)v;
}

int xd_check_data(const xd_loader *L, const char *data, const char *model_dir, int vocab, xd_err *e) {
  if (xd_loader_vocab_size(L) > (uint64_t)vocab)
    return xd_errf(e, "%s: data vocabulary (%llu) is larger than the model's (%d): prepared with another tokenizer?", data,
                   (unsigned long long)xd_loader_vocab_size(L), vocab);
  const char *have = xd_loader_tokenizer_hash(L);
  char *tok = xd_path_join(model_dir, "tokenizer.json");
  const int has_tok = xd_file_exists(tok);
  free(tok);
  if (!have || !*have || !has_tok) return 0; /* nothing to compare (shards without a manifest, no tokenizer) */
  char want[40];
  if (xd_data_tokenizer_hash(model_dir, want, e) != 0) return -1;
  if (strcmp(have, want) != 0)
    return xd_errf(e, "%s: data was prepared with tokenizer %s, but %s has %s", data, have, model_dir, want);
  return 0;
}

typedef struct {
  xd_align_ctx *c;
  int backward;
} hook_ctx;

static void align_hook(int layer, const float *x, const float *a, int N, void *user) {
  hook_ctx *h = user;
  xd_align_ctx *c = h->c;
  const xd_student *s = c->student;
  const size_t n = (size_t)N * s->cfg.n_heads * s->cfg.head_dim;
  const xd_teacher_acts *ta = &c->ta;
  xd_core_forward(s, layer, &c->ca, x, ta->q_raw, ta->k_raw, ta->v_raw, ta->q, ta->k, c->out);
  double sum = 0;
  for (size_t i = 0; i < n; i++) {
    const double d = (double)c->out[i] - a[i];
    sum += d * d;
    c->dout[i] = (float)(2.0 * d / (double)n);
  }
  c->layer_loss[layer] = sum / (double)n;
  if (h->backward)
    xd_core_backward(s, layer, &c->ca, x, ta->q_raw, ta->k_raw, ta->v_raw, ta->q, ta->k, c->dout, NULL, NULL, NULL, NULL,
                     NULL, NULL);
}

double xd_align_run_batch(xd_align_ctx *c, const int32_t *inputs, int backward) {
  hook_ctx h = {c, backward};
  xd_err e;
  if (xd_teacher_forward(c->teacher, &c->ta, inputs, c->B, c->T, NULL, align_hook, &h, &e) != 0) return NAN;
  double loss = 0;
  for (int l = 0; l < c->student->cfg.n_layers; l++) loss += c->layer_loss[l];
  return loss;
}

double xd_align_eval_loss(xd_align_ctx *c, const int32_t *inputs) { return xd_align_run_batch(c, inputs, 0); }

static const char *const layer_metric[8] = {"loss_l0", "loss_l1", "loss_l2", "loss_l3",
                                            "loss_l4", "loss_l5", "loss_l6", "loss_l7"};

static int align_step(void *vctx, xd_params *p, uint64_t step, int micro, int n_micro, xd_rng *rng, xd_step_result *out,
                      xd_err *e) {
  xd_align_ctx *c = vctx;
  (void)p; (void)step; (void)micro; (void)n_micro; (void)rng;
  xd_loader_next(c->loader, c->tokens, NULL);
  for (int b = 0; b < c->B; b++) memcpy(c->inputs + (size_t)b * c->T, c->tokens + (size_t)b * (c->T + 1), (size_t)c->T * sizeof(int32_t));
  for (int i = 0; i < c->B * c->T; i++)
    if (c->inputs[i] >= c->teacher->cfg.vocab)
      return xd_errf(e, "data token id %d is outside the teacher's vocabulary (%d): data prepared with another tokenizer?",
                     c->inputs[i], c->teacher->cfg.vocab);
  const double loss = xd_align_run_batch(c, c->inputs, 1); /* NaN when the teacher forward failed */
  xd_align_result(out, c->layer_loss, c->student->cfg.n_layers, (uint64_t)c->B * c->T);
  out->loss = loss;
  return 0;
}

void xd_align_result(xd_step_result *out, const double *layer_loss, int L, uint64_t tokens) {
  double loss = 0;
  for (int l = 0; l < L; l++) loss += layer_loss[l];
  out->loss = loss;
  out->tokens = tokens;
  out->nmetrics = L < 8 ? L : 8;
  for (int l = 0; l < out->nmetrics; l++) {
    out->metric_names[l] = layer_metric[l];
    out->metric_values[l] = layer_loss[l];
  }
}

void xd_align_init(xd_align_ctx *c, const xd_teacher *t, xd_student *s, xd_loader *L, int B, int T,
                   xd_trainer_hooks *hooks) {
  memset(c, 0, sizeof *c);
  c->teacher = t;
  c->student = s;
  c->loader = L;
  c->B = B;
  c->T = T;
  xd_teacher_acts_alloc(&c->ta, &t->cfg, B * T, T);
  xd_core_acts_alloc(&c->ca, s, B, T);
  c->tokens = xd_malloc((size_t)B * (T + 1) * sizeof(int32_t));
  c->inputs = xd_malloc((size_t)B * T * sizeof(int32_t));
  const size_t n = (size_t)B * T * s->cfg.n_heads * s->cfg.head_dim;
  c->out = xd_malloc(n * sizeof(float));
  c->dout = xd_malloc(n * sizeof(float));
  c->layer_loss = xd_calloc((size_t)s->cfg.n_layers, sizeof(double));
  memset(hooks, 0, sizeof *hooks);
  hooks->step = align_step;
  hooks->ctx = c;
  if (L) xd_stage_hooks_loader(hooks, L);
}

void xd_align_free(xd_align_ctx *c) {
  xd_teacher_acts_free(&c->ta);
  xd_core_acts_free(&c->ca);
  free(c->tokens);
  free(c->inputs);
  free(c->out);
  free(c->dout);
  free(c->layer_loss);
  memset(c, 0, sizeof *c);
}
