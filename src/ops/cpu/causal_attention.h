/* Causal softmax attention with grouped-query heads, token-major layouts:
 *   q [B,Tq,H,d], k/v [B,*,G,d] (batch row b starts at b*kv_bstride floats), out [B,Tq,H,d].
 * Query head h reads KV head g = h / (H/G). Query i sits at absolute position t = q_offset + i
 * and sees keys s in [0, Tk) with s <= t and, when window > 0, t - s < window (HF's
 * sliding_window: the window holds the current token and window-1 before it).
 * Scores are scaled by 1/sqrt(d). Full forward: Tq = Tk, q_offset = 0, kv_bstride = Tk*G*d;
 * KV-cached decoding: Tk = cache length, q_offset = Tk - Tq, kv_bstride = cache capacity*G*d. */
#ifndef XD_OPS_CAUSAL_ATTENTION_H
#define XD_OPS_CAUSAL_ATTENTION_H
#include <stddef.h>

typedef struct {
  int B, Tq, Tk, H, G, d;
  int q_offset;
  int window;        /* 0 = no window */
  size_t kv_bstride; /* floats */
} causal_attention_dims;

/* Forward scratch in floats: one [64 x Tk] score block per thread that will run it (the
 * forward works on blocks of 64 query rows, in parallel over (batch, head, block)). */
size_t causal_attention_scratch(const causal_attention_dims *a);
/* Backward scratch in floats: 2 * Tq * Tk (whole score matrices, one head at a time). */
size_t causal_attention_backward_scratch(const causal_attention_dims *a);

/* scratch_floats: the size of scratch; fewer threads run if it holds fewer blocks. */
void causal_attention_forward(float *out, const float *q, const float *k, const float *v,
                              const causal_attention_dims *a, float *scratch, size_t scratch_floats);
/* Recomputes the probabilities; dq is overwritten, dk and dv ([B,*,G,d], same strides as k/v)
 * are accumulated (+=). */
void causal_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                               const float *v, const causal_attention_dims *a, float *scratch);
#endif
