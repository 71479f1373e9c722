/* Feature map of the mLSTM keys and queries (SPEC §2.3): phi(x) = softmax(x P) over the
 * feature dimension, with one P per head. Queries use one P per query head, keys one per KV
 * head: the same op with a different head count Hx.
 *
 *   x [N, Hx, d] (N = B*T tokens, token-major), P [Hx, d, dp], phi [N, Hx, d_phi]
 *   plain:    dp = d_phi,      phi = softmax(x P)
 *   hedgehog: dp = d_phi / 2,  phi = [softmax(x P), softmax(-x P)]  (each half sums to 1)
 *
 * Backward ACCUMULATES (+=) into dx and dP, from the forward's output phi (softmax
 * Jacobian needs only phi). The *_f64 twins are the same code in double, for tests. */
#ifndef XD_OPS_CPU_FEATURE_MAP_H
#define XD_OPS_CPU_FEATURE_MAP_H

typedef struct {
  int N;        /* tokens (B*T) */
  int Hx;       /* heads: H for queries, G for keys */
  int d;        /* head dim */
  int d_phi;    /* feature dim (even when hedgehog) */
  int hedgehog; /* 0: softmax(xP); 1: [softmax(xP), softmax(-xP)] */
} feature_map_shape;

/* Columns of each head's P: d_phi, or d_phi / 2 for hedgehog. */
static inline int feature_map_p_cols(const feature_map_shape *s) {
  return s->hedgehog ? s->d_phi / 2 : s->d_phi;
}

void feature_map_forward(float *phi, const float *x, const float *P, const feature_map_shape *s);
void feature_map_backward(float *dx, float *dP, const float *dphi, const float *x,
                          const float *P, const float *phi, const feature_map_shape *s);
void feature_map_forward_f64(double *phi, const double *x, const double *P,
                             const feature_map_shape *s);
void feature_map_backward_f64(double *dx, double *dP, const double *dphi, const double *x,
                              const double *P, const double *phi, const feature_map_shape *s);

/* P initialised to the identity (SPEC [decision]): P[h] = I_{d x dp} (ones on the diagonal
 * of the leading min(d, dp) square, zeros elsewhere). P [Hx, d, dp]. */
void feature_map_init_identity(float *P, const feature_map_shape *s);

#endif
