/* mLSTM input and forget gate pre-activations, scalar per query head (SPEC §2.3):
 *   i~[n,h] = x[n,:] . w_i[h,:] + b_i[h],   f~[n,h] = x[n,:] . w_f[h,:] + b_f[h]
 * optionally soft-capped: y = cap * tanh(y / cap) (cap = 15 in the paper; cap <= 0: off).
 * The mLSTM turns them into exp(i~) and sigmoid(f~); this op stops at the pre-activations.
 *
 *   x [N, D] (the layer's normed input, N = B*T), w_i, w_f [H, D], b_i, b_f [H],
 *   i~, f~ [N, H].
 * Backward ACCUMULATES (+=) into dx, dw_*, db_*; it uses the forward's (capped) outputs,
 * since d(cap tanh(z/cap))/dz = 1 - (y/cap)^2. The *_f64 twins are for tests. */
#ifndef XD_OPS_CPU_GATES_H
#define XD_OPS_CPU_GATES_H

#define GATES_SOFT_CAP 15.0f /* the paper's c */

typedef struct {
  int N, D, H;
  float cap; /* soft cap c; <= 0 disables it */
} gates_shape;

void gates_forward(float *ig, float *fg, const float *x, const float *w_i, const float *b_i,
                   const float *w_f, const float *b_f, const gates_shape *s);
void gates_backward(float *dx, float *dw_i, float *db_i, float *dw_f, float *db_f,
                    const float *dig, const float *dfg, const float *x, const float *w_i,
                    const float *w_f, const float *ig, const float *fg, const gates_shape *s);
void gates_forward_f64(double *ig, double *fg, const double *x, const double *w_i,
                       const double *b_i, const double *w_f, const double *b_f,
                       const gates_shape *s);
void gates_backward_f64(double *dx, double *dw_i, double *db_i, double *dw_f, double *db_f,
                        const double *dig, const double *dfg, const double *x,
                        const double *w_i, const double *w_f, const double *ig,
                        const double *fg, const gates_shape *s);

/* SPEC [decision] init: w_i = w_f = 0, b_i = 0, b_f = linspace(3, 6) over the H heads. */
void gates_init(float *w_i, float *b_i, float *w_f, float *b_f, int H, int D);

#endif
