/* Training through a teacher layer (the student's stage II fine-tunes every teacher weight):
 * forward variants that keep what the backward needs, and the two backwards matching
 * xd_teacher_layer_in / xd_teacher_layer_out. The student's own attention core sits between
 * them: layer_in_save -> (q, k, v_raw) -> student attention -> a -> layer_out_save -> h.
 * Gradients of weights go into an xd_teacher_layer used as a gradient container (same
 * pointers, same shapes; NULL = not wanted) and are accumulated (+=). */
#ifndef XD_TEACHER_TRAIN_H
#define XD_TEACHER_TRAIN_H
#include "model/teacher/teacher.h"

/* Activations of one layer for N rows, written by the *_save forwards. */
typedef struct {
  int rows;
  float *h_in;           /* [N,D] layer input (residual stream) */
  float *x;              /* [N,D] attention input (normed; = h_in for post-norm families) */
  float *rstd_in;        /* [N] */
  float *q_raw, *k_raw, *v_raw; /* [N,H*d], [N,G*d], [N,G*d] projections with bias */
  float *q_nrm, *k_nrm;  /* after QK-norm, before RoPE (= raw without QK-norm) */
  float *rstd_q, *rstd_k;/* [N*H] / [N*G] (per head) or [N] (whole projection) */
  float *a;              /* [N,H*d] attention output (Wo input) */
  float *o;              /* [N,D] a Wo^T + bo */
  float *rstd_o;         /* [N] post-norm of o */
  float *h_mid;          /* [N,D] residual after the attention block */
  float *x2;             /* [N,D] MLP input */
  float *rstd_mlp;       /* [N] */
  float *gate, *up, *act;/* [N,F] pre-activations and silu(gate) * up */
  float *m;              /* [N,D] down projection (before post-norm) */
  float *rstd_m;         /* [N] */
} xd_layer_saved;
void xd_layer_saved_alloc(xd_layer_saved *s, const xd_model_config *c, int rows);
void xd_layer_saved_free(xd_layer_saved *s);

/* Backward scratch for N rows (allocated once). */
typedef struct {
  int rows;
  float *d_nd0, *d_nd1;  /* [N,D] */
  float *d_f0, *d_f1, *d_f2; /* [N,F] */
  float *d_q, *d_k, *d_q2, *d_k2; /* [N,H*d], [N,G*d] */
} xd_layer_grad_scratch;
void xd_layer_grad_scratch_alloc(xd_layer_grad_scratch *g, const xd_model_config *c, int rows);
void xd_layer_grad_scratch_free(xd_layer_grad_scratch *g);

/* As xd_teacher_layer_in, keeping activations in s; q [N,H*d], k [N,G*d] after RoPE go to the
 * caller's buffers, v is s->v_raw. */
void xd_teacher_layer_in_save(const xd_model_config *c, const xd_teacher_layer *L, int layer, const xd_rope_tables *rope,
                              const int *pos, int N, const float *h, xd_layer_saved *s, float *q, float *k);
/* As xd_teacher_layer_out: h_out [N,D] = layer output (h_out may not alias s buffers). */
void xd_teacher_layer_out_save(const xd_model_config *c, const xd_teacher_layer *L, int N, const float *a,
                               xd_layer_saved *s, float *h_out);

/* dh [N,D]: in, gradient w.r.t. the layer output; out, gradient w.r.t. h_mid's residual path
 * into the layer input (pass it on to xd_teacher_layer_in_backward). da [N,H*d] overwritten. */
void xd_teacher_layer_out_backward(const xd_model_config *c, const xd_teacher_layer *L, int N, const xd_layer_saved *s,
                                   float *dh, float *da, xd_teacher_layer *grad, xd_layer_grad_scratch *g);
/* dq [N,H*d], dk [N,G*d]: gradients w.r.t. q, k after RoPE (read only); dv [N,G*d] w.r.t. v_raw;
 * dq_raw, dk_raw, dx: extra gradients w.r.t. q_raw, k_raw, x from the student's own uses (its
 * output gate reads the raw projections, its input/forget gates read x), each may be NULL.
 * dh [N,D] is accumulated (+=) with the gradient w.r.t. the layer input h. */
void xd_teacher_layer_in_backward(const xd_model_config *c, const xd_teacher_layer *L, int layer,
                                  const xd_rope_tables *rope, const int *pos, int N, const xd_layer_saved *s,
                                  const float *dq, const float *dk, const float *dv, const float *dq_raw,
                                  const float *dk_raw, const float *dx, float *dh, xd_teacher_layer *grad,
                                  xd_layer_grad_scratch *g);
#endif
