/* Mixing gate of the hybrid layer (SPEC §2.4): per token n and query head h with KV head
 * g = h / (H/G),
 *   o[n,h]   = sigmoid([q_raw[n,h,:], k_raw[n,g,:], v_raw[n,g,:]] . w_o[h,:] + b_o[h])
 *   out[n,h] = o[n,h] * h_global[n,h,:] + (1 - o[n,h]) * h_local[n,h,:]
 * from the RAW projections (before QK-norm and RoPE).
 *
 *   q_raw, h_global, h_local, out [N, H, d]; k_raw, v_raw [N, G, d];
 *   w_o [H, 3d] (q part, then k part, then v part); b_o [H]; o [N, H] saved for the backward.
 * Backward ACCUMULATES (+=) into every gradient. The *_f64 twins are for tests. */
#ifndef XD_OPS_CPU_MIX_H
#define XD_OPS_CPU_MIX_H

typedef struct {
  int N, H, G, d;
} mix_shape;

void mix_forward(float *out, float *o, const float *q_raw, const float *k_raw,
                 const float *v_raw, const float *w_o, const float *b_o, const float *h_global,
                 const float *h_local, const mix_shape *s);
void mix_backward(float *dq_raw, float *dk_raw, float *dv_raw, float *dw_o, float *db_o,
                  float *dh_global, float *dh_local, const float *dout, const float *o,
                  const float *q_raw, const float *k_raw, const float *v_raw, const float *w_o,
                  const float *h_global, const float *h_local, const mix_shape *s);
void mix_forward_f64(double *out, double *o, const double *q_raw, const double *k_raw,
                     const double *v_raw, const double *w_o, const double *b_o,
                     const double *h_global, const double *h_local, const mix_shape *s);
void mix_backward_f64(double *dq_raw, double *dk_raw, double *dv_raw, double *dw_o,
                      double *db_o, double *dh_global, double *dh_local, const double *dout,
                      const double *o, const double *q_raw, const double *k_raw,
                      const double *v_raw, const double *w_o, const double *h_global,
                      const double *h_local, const mix_shape *s);

/* SPEC [decision] init: w_o = 0, b_o = -2 (o ~ 0.12). w_o [H, 3d], b_o [H]. */
void mix_init(float *w_o, float *b_o, int H, int d);

#endif
