/* SwiGLU gate: out = silu(gate) * up, elementwise over n values (gate, up, out [N,F]). */
#ifndef XD_OPS_SWIGLU_H
#define XD_OPS_SWIGLU_H
#include <stddef.h>
void swiglu_forward(float *out, const float *gate, const float *up, size_t n);
/* Accumulates (+=) into dgate and dup. */
void swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up, size_t n);
#endif
