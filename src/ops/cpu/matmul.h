/* Linear layer in the HF layout: out[N,Dout] = x[N,Din] W^T + b, W [Dout,Din], b [Dout] or NULL. */
#ifndef XD_OPS_MATMUL_H
#define XD_OPS_MATMUL_H
void matmul_forward(float *out, const float *x, const float *w, const float *b, int N, int Din, int Dout);
/* Accumulates (+=) into dx [N,Din], dw [Dout,Din], db [Dout]; any of them may be NULL (not wanted). */
void matmul_backward(float *dx, float *dw, float *db, const float *dout, const float *x, const float *w, int N, int Din,
                     int Dout);
#endif
