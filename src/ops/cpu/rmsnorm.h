/* RMSNorm over the last dim, HF order: y = w * (x * rsqrt(mean(x^2) + eps)), all fp32.
 * x, out [N,C]; w [C]; rstd [N] saved for the backward (may be NULL in forward).
 * The *_f64 twins (same source, rmsnorm_impl.inc) serve the float64 student path. */
#ifndef XD_OPS_RMSNORM_H
#define XD_OPS_RMSNORM_H
void rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int N, int C, float eps);
/* Accumulates (+=) into dx [N,C] and dw [C] (either may be NULL). rstd from the forward. */
void rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w, const float *rstd,
                      int N, int C);
void rmsnorm_forward_f64(double *out, double *rstd, const double *x, const double *w, int N, int C, double eps);
void rmsnorm_backward_f64(double *dx, double *dw, const double *dout, const double *x, const double *w,
                          const double *rstd, int N, int C);
#endif
