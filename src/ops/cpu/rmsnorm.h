/* RMSNorm over the last dim, HF order: y = w * (x * rsqrt(mean(x^2) + eps)), all fp32.
 * x, out [N,C]; w [C]; rstd [N] saved for the backward (may be NULL in forward). */
#ifndef XD_OPS_RMSNORM_H
#define XD_OPS_RMSNORM_H
void rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int N, int C, float eps);
/* Accumulates (+=) into dx [N,C] and dw [C] (either may be NULL). rstd from the forward. */
void rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w, const float *rstd,
                      int N, int C);
#endif
