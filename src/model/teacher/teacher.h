/* The exact fp32 CPU teacher: a Hugging Face Llama / Qwen2 / Qwen3 / OLMo2 / OLMo3 causal LM.
 *
 * Layer (token-major, N = B*T rows, D hidden, H/G query/KV heads, d head dim, F intermediate):
 *   pre-norm families (llama, qwen2, qwen3):
 *     x = rmsnorm(h, attn_norm);  q,k,v = x W^T (+b);  [qwen3: per-head rmsnorm of q,k]; rope(q,k)
 *     a = attention(q,k,v)  [N, H*d];   h += a Wo^T (+bo)
 *     h += down(silu(gate(rmsnorm(h, mlp_norm))) * up(.))
 *   post-norm families (olmo2, olmo3):  x = h (no pre-norm); q,k = rmsnorm over the whole
 *     projection [H*d] / [G*d]; h += rmsnorm(a Wo^T, attn_out_norm); h += rmsnorm(mlp(h), mlp_out_norm)
 * Stage I needs, per layer l, x^l (the attention block's input after the input norm, or the raw
 * residual for olmo) and a^l (attention output before Wo): see xd_layer_hook.
 *
 * The student reuses a teacher layer around its own attention core:
 *   xd_teacher_layer_in   h -> x, q_raw, k_raw, v_raw (with bias), q, k (QK-norm + RoPE)
 *   xd_teacher_layer_out  a -> h (Wo, residual / post-norm, MLP)
 * Buffers come from the caller (xd_teacher_acts holds a set sized once per (B, T)). */
#ifndef XD_TEACHER_H
#define XD_TEACHER_H
#include "model/config.h"

/* One layer's tensors as an X-macro over (R, field): the element type is a parameter so the
 * float64 twin (xd_teacher_layer_f64, the path the finite-difference tests differentiate) has
 * exactly these fields, and code can visit every tensor slot. */
#define XD_TEACHER_LAYER_TENSORS(X, R)                                                        \
  X(R, attn_norm)                    /* [D] input_layernorm; NULL for olmo (no pre-norm) */   \
  X(R, wq) X(R, wk) X(R, wv)         /* [H*d, D], [G*d, D], [G*d, D] */                       \
  X(R, bq) X(R, bk) X(R, bv)         /* [H*d], [G*d], [G*d] or NULL */                        \
  X(R, q_norm) X(R, k_norm)          /* qwen3: [d] each; olmo: [H*d], [G*d]; else NULL */     \
  X(R, wo) X(R, bo)                  /* [D, H*d], [D] or NULL */                              \
  X(R, attn_out_norm)                /* olmo: post_attention_layernorm [D]; else NULL */      \
  X(R, mlp_norm)                     /* llama/qwen: post_attention_layernorm (pre-MLP) [D] */ \
  X(R, w_gate) X(R, w_up) X(R, w_down) /* [F, D], [F, D], [D, F] */                           \
  X(R, b_gate) X(R, b_up) X(R, b_down) /* llama mlp_bias, else NULL */                        \
  X(R, mlp_out_norm)                 /* olmo: post_feedforward_layernorm [D]; else NULL */
#define XD_TENSOR_FIELD(R, f) R *f;
typedef struct { XD_TEACHER_LAYER_TENSORS(XD_TENSOR_FIELD, float) } xd_teacher_layer;
typedef struct { XD_TEACHER_LAYER_TENSORS(XD_TENSOR_FIELD, double) } xd_teacher_layer_f64;

#define XD_TEACHER_OF(R, LAYER)                     \
  struct {                                          \
    xd_model_config cfg;                            \
    R *embed;      /* [V, D] */                     \
    R *lm_head;    /* [V, D]; == embed when tied */ \
    R *final_norm; /* [D] */                        \
    LAYER *layers; /* [L] */                        \
  }
typedef XD_TEACHER_OF(float, xd_teacher_layer) xd_teacher;
typedef XD_TEACHER_OF(double, xd_teacher_layer_f64) xd_teacher_f64; /* float64 twin (tests) */

/* dir: a HF checkpoint directory (config.json + model.safetensors or sharded + index). F32, F16
 * and BF16 weights are converted to fp32. Every missing or mis-shaped tensor is a one-line error
 * naming the file and tensor. */
int xd_teacher_load(xd_teacher *t, const char *dir, xd_err *e);
/* Build from a config with weights drawn from N(0, std^2) (norm weights 1 + N(0, std^2));
 * benchmarks and tests. */
void xd_teacher_init_random(xd_teacher *t, const xd_model_config *c, uint64_t seed, float std);
void xd_teacher_free(xd_teacher *t);

/* RoPE tables for the two layer kinds (full / sliding attention), positions [0, n_pos). */
typedef struct {
  int n_pos, half;
  int seq_len;       /* sequence length the tables were built for (dynamic NTK) */
  float *inv_freq;   /* [half] scratch */
  float *cos[2], *sin[2]; /* [n_pos, half] each */
} xd_rope_tables;
void xd_rope_tables_alloc(xd_rope_tables *r, const xd_model_config *c, int n_pos);
/* (Re)build for sequence length seq_len (<= n_pos); a no-op unless the tables are stale (only
 * dynamic NTK depends on seq_len, and then only positions < seq_len are valid afterwards). */
void xd_rope_tables_update(xd_rope_tables *r, const xd_model_config *c, int seq_len);
void xd_rope_tables_free(xd_rope_tables *r);

/* Activations for up to `rows` = B*Tq tokens attending to up to `max_keys` keys. Allocated
 * once (after xd_set_threads: the attention scratch has one block per thread); nothing is
 * allocated inside the layer loop. */
typedef struct {
  int rows, max_keys;
  float *h;                    /* [N, D] residual stream */
  float *x;                    /* [N, D] attention input (normed) */
  float *q_raw, *k_raw, *v_raw;/* [N, H*d], [N, G*d], [N, G*d] */
  float *q, *k;                /* [N, H*d], [N, G*d] after QK-norm + RoPE */
  float *att;                  /* [N, H*d] attention output before Wo */
  float *tmp;                  /* [N, D] */
  float *gate, *up;            /* [N, F] */
  float *scores;               /* attention scratch (causal_attention_scratch floats) */
  size_t scores_floats;
  int *pos;                    /* [N] absolute positions */
  xd_rope_tables rope;         /* positions [0, max_keys) */
} xd_teacher_acts;
void xd_teacher_acts_alloc(xd_teacher_acts *a, const xd_model_config *c, int rows, int max_keys);
void xd_teacher_acts_free(xd_teacher_acts *a);

/* (a) h [N,D] -> x [N,D], q_raw [N,H*d], k_raw, v_raw [N,G*d] (projections with bias), q [N,H*d]
 * and k [N,G*d] after QK-norm and RoPE at positions pos[N]. rope: tables covering pos.
 * x may equal h only for post-norm families (where x is h). */
void xd_teacher_layer_in(const xd_model_config *c, const xd_teacher_layer *L, int layer, const xd_rope_tables *rope,
                         const int *pos, int N, const float *h, float *x, float *q_raw, float *k_raw, float *v_raw,
                         float *q, float *k);
/* Float64 twin (same source, teacher_layer_impl.inc), for the float64 student path. */
void xd_teacher_layer_in_f64(const xd_model_config *c, const xd_teacher_layer_f64 *L, int layer,
                             const xd_rope_tables *rope, const int *pos, int N, const double *h, double *x,
                             double *q_raw, double *k_raw, double *v_raw, double *q, double *k);
/* (b) a [N,H*d] -> h [N,D] updated in place: h += [norm](a Wo^T + bo); h += [norm](MLP(h)).
 * Scratch: tmp [N,D], gate, up [N,F]. */
void xd_teacher_layer_out(const xd_model_config *c, const xd_teacher_layer *L, int N, const float *a, float *h,
                          float *tmp, float *gate, float *up);

/* Stage I hook: layer l, x [N,D] (attention input), a [N,H*d] (attention output before Wo),
 * N = B*T token-major rows. Valid only during the call. */
typedef void (*xd_layer_hook)(int layer, const float *x, const float *a, int N, void *user);

/* Full forward: ids [B,T] -> logits [B,T,V] (logits may be NULL: hooks only). acts must hold
 * rows >= B*T and max_keys >= T. Returns -1 (error names the ids) on an id outside [0, V). */
int xd_teacher_forward(const xd_teacher *t, xd_teacher_acts *a, const int32_t *ids, int B, int T, float *logits,
                       xd_layer_hook hook, void *user, xd_err *e);

/* KV cache for incremental decoding: per layer k, v [B, cap, G*d]; len tokens filled. */
typedef struct {
  int n_layers, B, cap, len, kvdim;
  float **k, **v;
} xd_kv_cache;
void xd_kv_cache_alloc(xd_kv_cache *kv, const xd_model_config *c, int B, int cap);
void xd_kv_cache_free(xd_kv_cache *kv);

/* Append Tn tokens ids [B,Tn] to the cache (prefill: Tn = prompt length; decode: Tn = 1) and
 * compute logits: [B,Tn,V], or [B,V] for the last position only when last_only. acts must hold
 * rows >= B*Tn and max_keys >= kv->cap. Error when the cache would overflow or an id is bad. */
int xd_teacher_forward_cached(const xd_teacher *t, xd_teacher_acts *a, xd_kv_cache *kv, const int32_t *ids, int Tn,
                              float *logits, int last_only, xd_err *e);

/* Greedy decoding: prompts ids [B,T] -> out [B, T+max_new] (prompt copied). When stop_at_eos,
 * a row that emits an EOS id keeps emitting it (callers trim); n_out[b] = tokens up to and
 * including the first EOS (or T+max_new). n_out may be NULL. */
int xd_teacher_generate(const xd_teacher *t, const int32_t *ids, int B, int T, int max_new, int stop_at_eos,
                        int32_t *out, int *n_out, xd_err *e);
#endif
