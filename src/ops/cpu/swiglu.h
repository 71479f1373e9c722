/* SwiGLU gate: out = silu(gate) * up, elementwise over n values (gate, up, out [N,F]).
 * The *_f64 twins (same source, swiglu_impl.inc) serve the float64 student path. */
#ifndef XD_OPS_SWIGLU_H
#define XD_OPS_SWIGLU_H
#include <stddef.h>
void swiglu_forward(float *out, const float *gate, const float *up, size_t n);
/* Accumulates (+=) into dgate and dup. */
void swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n);
void swiglu_forward_f64(double *out, const double *gate, const double *up, size_t n);
void swiglu_backward_f64(double *dgate, double *dup, const double *dout, const double *gate, const double *up,
                         size_t n);
#endif
