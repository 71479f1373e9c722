/* Rotary position embedding, HF "rotate-half" convention: for a head vector x[d] and pair i < d/2
 *   out[i]       = x[i] cos_i - x[i+d/2] sin_i
 *   out[i+d/2]   = x[i+d/2] cos_i + x[i] sin_i,   angle_i = pos * inv_freq[i]
 * cos/sin tables are [n_pos, d/2] and already carry the attention scaling (yarn). The inverse
 * frequencies follow transformers' ROPE_INIT_FUNCTIONS for every scaling kind. */
#ifndef XD_OPS_ROPE_H
#define XD_OPS_ROPE_H

typedef enum { XD_ROPE_DEFAULT = 0, XD_ROPE_LINEAR, XD_ROPE_DYNAMIC, XD_ROPE_LLAMA3, XD_ROPE_YARN } xd_rope_kind;

typedef struct {
  xd_rope_kind kind;
  double theta;               /* base */
  double factor;              /* linear / dynamic / llama3 / yarn */
  double low_freq_factor;     /* llama3 */
  double high_freq_factor;    /* llama3 */
  int original_max_pos;       /* llama3 / yarn: original_max_position_embeddings */
  double attention_factor;    /* yarn; <= 0 = derive from factor (and mscale) */
  double beta_fast, beta_slow;/* yarn, defaults 32 / 1 */
  double mscale, mscale_all_dim; /* yarn, 0 = absent */
  int truncate;               /* yarn, default 1 */
} xd_rope_config;

const char *rope_kind_name(xd_rope_kind k);

/* inv_freq[head_dim/2] (fp32, as transformers computes them) and the cos/sin scaling.
 * max_pos = config max_position_embeddings; seq_len = current sequence length (only dynamic
 * NTK uses it: base grows once seq_len > max_pos). */
void rope_inv_freq(const xd_rope_config *rc, int head_dim, int max_pos, int seq_len, float *inv_freq,
                   float *attention_scaling);

/* cos/sin [n_pos, half] for positions 0..n_pos-1: angle = (float)p * inv_freq (fp32 product, as
 * HF), cos/sin in double then rounded, times the scaling. */
void rope_table(float *cos_t, float *sin_t, const float *inv_freq, float scaling, int n_pos, int half);

/* x [N, n_heads, d] in place (out may equal in); pos[N] indexes the tables. */
void rope_forward(float *out, const float *in, const float *cos_t, const float *sin_t, const int *pos, int N,
                  int n_heads, int d);
/* The transpose rotation: din = R^T dout (din may equal dout). Overwrites din. */
void rope_backward(float *din, const float *dout, const float *cos_t, const float *sin_t, const int *pos, int N,
                   int n_heads, int d);
/* Float64 twins (same source, rope_impl.inc) over the same fp32 tables, for the float64
 * student path of the finite-difference tests. */
void rope_forward_f64(double *out, const double *in, const float *cos_t, const float *sin_t, const int *pos, int N,
                      int n_heads, int d);
void rope_backward_f64(double *din, const double *dout, const float *cos_t, const float *sin_t, const int *pos, int N,
                       int n_heads, int d);
#endif
