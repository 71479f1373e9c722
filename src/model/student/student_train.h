/* Whole-student forward with saved activations, and its exact backward over every parameter
 * (stage II trains them all). The fp32 CPU path; activations sized once per (B, T).
 * Per layer it keeps what the backward reads: the residual input, the attention input x, the
 * projections before and after QK-norm/RoPE, the hybrid core's activations, the attention
 * output, the MLP input and its gate/up pre-activations, and (OLMo) the pre-norm outputs. */
#ifndef XD_STUDENT_TRAIN_H
#define XD_STUDENT_TRAIN_H
#include "model/student/student.h"

typedef struct {
  float *h0, *x, *q_raw, *k_raw, *v_raw, *q, *k, *att;  /* [N,D] [N,D] [N,Hd] [N,Gd] [N,Gd] [N,Hd] [N,Gd] [N,Hd] */
  float *o1, *h1, *xm, *g, *u, *sw, *o2;                 /* [N,D] [N,D] [N,D] [N,F] [N,F] [N,F] [N,D] */
  xd_core_acts core;
} xd_layer_saves;

typedef struct {
  int B, T, n_layers;
  xd_layer_saves *layer; /* [L] */
  float *hL, *hn;        /* [N,D] final residual, final-norm output */
  xd_rope_tables rope;
  int *pos;              /* [N] */
  /* backward scratch, one layer's worth */
  float *dh, *dh1, *dx, *dxm, *do_, *dg, *du, *dsw, *datt, *dq_raw, *dk_raw, *dv_raw, *dq, *dk, *tmpD, *rstd;
} xd_student_train_acts;

void xd_student_train_acts_alloc(xd_student_train_acts *a, const xd_student *s, int B, int T);
void xd_student_train_acts_free(xd_student_train_acts *a);
/* ids [B,T] -> logits [B*T, V], saving activations. */
int xd_student_forward_train(const xd_student *s, xd_student_train_acts *a, const int32_t *ids, float *logits, xd_err *e);
/* dlogits [B*T, V] -> gradients of every trainable parameter (accumulated into s->params.grad). */
void xd_student_backward(const xd_student *s, xd_student_train_acts *a, const int32_t *ids, const float *dlogits);
#endif
