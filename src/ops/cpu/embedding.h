/* Token embedding: out[N,D] = table[ids[n], :]. ids must be in [0, V) (checked by the caller).
 * The *_f64 twins (same source, embedding_impl.inc) serve the float64 student path. */
#ifndef XD_OPS_EMBEDDING_H
#define XD_OPS_EMBEDDING_H
#include <stdint.h>
void embedding_forward(float *out, const int32_t *ids, const float *table, int N, int D);
/* Accumulates (+=) dout rows into dtable [V,D] (serial over tokens: repeated ids must not race). */
void embedding_backward(float *dtable, const float *dout, const int32_t *ids, int N, int D);
void embedding_forward_f64(double *out, const int32_t *ids, const double *table, int N, int D);
void embedding_backward_f64(double *dtable, const double *dout, const int32_t *ids, int N, int D);
#endif
