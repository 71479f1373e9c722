/* Whole-student forward with saved activations, and its exact backward over every parameter
 * (stage II trains them all). The fp32 CPU path; activations sized once per (B, T).
 * Per layer it keeps what the backward reads: the residual input, the attention input x, the
 * projections before and after QK-norm/RoPE, the hybrid core's activations, the attention
 * output, the MLP input and its gate/up pre-activations, and (OLMo) the pre-norm outputs.
 *
 * Every function has a float64 twin (suffix _f64, over an xd_student_f64) compiled from the
 * same source (student_train_impl.inc, twice by ops/cpu/twin.h): the path the finite-difference
 * test differentiates (tests/test_student_backward_f64.c). */
#ifndef XD_STUDENT_TRAIN_H
#define XD_STUDENT_TRAIN_H
#include "model/student/student.h"

#define XD_LAYER_SAVES_OF(R, CORE)                                                                               \
  struct {                                                                                                       \
    R *h0, *x, *q_raw, *k_raw, *v_raw, *q, *k, *att; /* [N,D] [N,D] [N,Hd] [N,Gd] [N,Gd] [N,Hd] [N,Gd] [N,Hd] */ \
    R *o1, *h1, *xm, *g, *u, *sw, *o2;               /* [N,D] [N,D] [N,D] [N,F] [N,F] [N,F] [N,D] */             \
    CORE core;                                                                                                   \
  }
typedef XD_LAYER_SAVES_OF(float, xd_core_acts) xd_layer_saves;
typedef XD_LAYER_SAVES_OF(double, xd_core_acts_f64) xd_layer_saves_f64;

#define XD_STUDENT_TRAIN_ACTS_OF(R, SAVES)                                                                  \
  struct {                                                                                                  \
    int B, T, n_layers;                                                                                     \
    SAVES *layer; /* [L] */                                                                                 \
    R *hL, *hn;   /* [N,D] final residual, final-norm output */                                             \
    xd_rope_tables rope;                                                                                    \
    int *pos;     /* [N] */                                                                                 \
    /* backward scratch, one layer's worth */                                                               \
    R *dh, *dh1, *dx, *dxm, *do_, *dg, *du, *dsw, *datt, *dq_raw, *dk_raw, *dv_raw, *dq, *dk, *tmpD, *rstd; \
  }
typedef XD_STUDENT_TRAIN_ACTS_OF(float, xd_layer_saves) xd_student_train_acts;
typedef XD_STUDENT_TRAIN_ACTS_OF(double, xd_layer_saves_f64) xd_student_train_acts_f64;

void xd_student_train_acts_alloc(xd_student_train_acts *a, const xd_student *s, int B, int T);
void xd_student_train_acts_free(xd_student_train_acts *a);
/* ids [B,T] -> logits [B*T, V], saving activations. */
int xd_student_forward_train(const xd_student *s, xd_student_train_acts *a, const int32_t *ids, float *logits, xd_err *e);
/* dlogits [B*T, V] -> gradients of every trainable parameter (accumulated into s->params.grad). */
void xd_student_backward(const xd_student *s, xd_student_train_acts *a, const int32_t *ids, const float *dlogits);

/* Float64 twins: gradients of every tensor, accumulated into s->grad. */
void xd_student_train_acts_alloc_f64(xd_student_train_acts_f64 *a, const xd_student_f64 *s, int B, int T);
void xd_student_train_acts_free_f64(xd_student_train_acts_f64 *a);
int xd_student_forward_train_f64(const xd_student_f64 *s, xd_student_train_acts_f64 *a, const int32_t *ids,
                                 double *logits, xd_err *e);
void xd_student_backward_f64(const xd_student_f64 *s, xd_student_train_acts_f64 *a, const int32_t *ids,
                             const double *dlogits);
#endif
