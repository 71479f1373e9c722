/* Stage I (layer-wise alignment, SPEC §3) and stage II (sparse knowledge distillation, SPEC §4)
 * as step functions for the generic trainer (train/trainer.h). */
#ifndef XD_STAGES_H
#define XD_STAGES_H
#include "data/loader.h"
#include "model/student/student.h"
#include "model/teacher/teacher.h"
#include "train/trainer.h"

/* Refuse a teacher/student pair that cannot belong together (shapes of the shared parts). */
int xd_check_pair(const xd_teacher *t, const xd_student *s, const char *tdir, const char *sdir, xd_err *e);
/* Refuse data the model cannot read: a vocabulary larger than the model's `vocab`, or (when
 * model_dir holds a tokenizer.json and the data's manifest names one) another tokenizer.
 * `data` names the data directory in the message. */
int xd_check_data(const xd_loader *L, const char *data, const char *model_dir, int vocab, xd_err *e);
/* The 64-bit value of a "fnv1a64:<16 hex>" tokenizer identity; 0 when absent or malformed. */
uint64_t xd_tokenizer_hash_value(const char *hash);

/* The trainer's checkpointed loader state for a stage reading from L: the data loader's own
 * portable serialisation (xd_loader_save / xd_loader_restore, XD_LOADER_STATE_BYTES). */
void xd_stage_hooks_loader(xd_trainer_hooks *h, xd_loader *L);

/* ---- stage I ---- */
typedef struct {
  const xd_teacher *teacher;
  xd_student *student;     /* mode XD_STUDENT_TRAIN_NEW */
  xd_loader *loader;
  int B, T;                /* micro-batch rows, sequence length */
  xd_teacher_acts ta;      /* teacher activations for B*T rows */
  xd_core_acts ca;         /* ONE layer's core activations, reused layer after layer */
  int32_t *tokens, *inputs;/* [B, T+1], [B, T] */
  float *out, *dout;       /* [B*T, H*d] */
  double *layer_loss;      /* [L] of the current micro-batch */
  double layer_loss_sum[8];/* the first 8 layers, for the metrics line */
} xd_align_ctx;

void xd_align_init(xd_align_ctx *c, const xd_teacher *t, xd_student *s, xd_loader *L, int B, int T,
                   xd_trainer_hooks *hooks);
void xd_align_free(xd_align_ctx *c);
/* Stage I loss on one batch (no gradients): mean over layers' MSE sum, for evaluation. */
double xd_align_eval_loss(xd_align_ctx *c, const int32_t *inputs);
/* The same with backward = 1: also adds the hybrid parameters' gradients (c->layer_loss holds
 * the per-layer losses afterwards). The step function is this on the loader's next batch. */
double xd_align_run_batch(xd_align_ctx *c, const int32_t *inputs, int backward);
/* A stage I step's report from its per-layer losses [L] (the first 8 as metrics loss_l0...):
 * loss = their sum. */
void xd_align_result(xd_step_result *out, const double *layer_loss, int L, uint64_t tokens);
/* ---- stage II ---- */
#include "distill/topk_cache.h"
#include "model/student/student_train.h"
#include "ops/cpu/kd_loss.h"

typedef struct {
  const xd_teacher *teacher;     /* online teacher, or NULL with a cache */
  const xd_topk_reader *cache;   /* top-k cache (rows in stream order), or NULL */
  xd_student *student;           /* mode XD_STUDENT_TRAIN_ALL */
  xd_loader *loader;
  int B, T, k;
  kd_config kd;
  xd_teacher_acts ta;            /* online teacher activations */
  xd_student_train_acts sa;
  int32_t *tokens, *inputs, *targets; /* [B,T+1], [B*T], [B*T] */
  uint8_t *mask_row, *mask;      /* [B,T+1], [B*T] */
  float *logits, *tlogits, *lse; /* [B*T,V] x2, [B*T] */
  int32_t *tk_ids;               /* [B*T,k] */
  float *tk_logp;                /* [B*T,k] */
  uint64_t *rows;                /* [B] global row index of each batch row */
} xd_distill_ctx;

void xd_distill_init(xd_distill_ctx *c, const xd_teacher *t, const xd_topk_reader *cache, xd_student *s, xd_loader *L,
                     int B, int T, const kd_config *kd, xd_trainer_hooks *hooks);
void xd_distill_free(xd_distill_ctx *c);
/* Loss of a batch whose rows are given by global index (no gradients): fills res. */
int xd_distill_eval_rows(xd_distill_ctx *c, const uint64_t *rows, kd_result *res, xd_err *e);
/* Batch plumbing shared with the GPU step (distill_cuda.c): the global row indices of the
 * next B rows the loader will yield (from its state, without advancing it); rows -> tokens
 * [B,T+1], mask_row [B,T+1], inputs / targets [B*T] and the targets' mask [B*T] (refusing ids
 * outside the vocabulary); a top-k cache's rows -> tk_ids / tk_logp [B*T, k]. */
void xd_distill_next_rows(xd_loader *L, int B, uint64_t *rows);
int xd_distill_read_rows(xd_loader *L, const uint64_t *rows, int B, int T, int vocab, int32_t *tokens, uint8_t *mask_row,
                         int32_t *inputs, int32_t *targets, uint8_t *mask, xd_err *e);
int xd_distill_cache_rows(const xd_topk_reader *cache, const uint64_t *rows, int B, int T, int k, int32_t *tk_ids,
                          float *tk_logp, xd_err *e);
/* A stage II step's report from its loss (metrics ce, kl; tokens = counted positions). */
void xd_distill_result(xd_step_result *out, const kd_result *r);
/* Teacher top-k of ids [B*T] into c->tk_ids / c->tk_logp (online teacher). */
int xd_distill_teacher_topk(xd_distill_ctx *c, const int32_t *ids, xd_err *e);
#endif
