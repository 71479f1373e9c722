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
#endif
