/* Linear layer in the HF layout: out[N,Dout] = x[N,Din] W^T + b, W [Dout,Din], b [Dout] or NULL.
 * The *_f64 twins (same source, matmul_impl.inc, cblas_dgemm) serve the float64 student path
 * that the finite-difference tests differentiate. */
#ifndef XD_OPS_MATMUL_H
#define XD_OPS_MATMUL_H
void matmul_forward(float *out, const float *x, const float *w, const float *b, int N, int Din, int Dout);
/* Accumulates (+=) into dx [N,Din], dw [Dout,Din], db [Dout]; any of them may be NULL (not wanted). */
void matmul_backward(float *dx, float *dw, float *db, const float *dout, const float *x, const float *w, int N, int Din,
                     int Dout);
void matmul_forward_f64(double *out, const double *x, const double *w, const double *b, int N, int Din, int Dout);
void matmul_backward_f64(double *dx, double *dw, double *db, const double *dout, const double *x, const double *w,
                         int N, int Din, int Dout);
#endif
