/* Sliding-window attention with sink tokens (the student's local branch, SPEC §2.2).
 *
 * Query t attends to keys s with s <= t and (t - s < W or s < S): the last W tokens
 * (itself included) plus the first S tokens of the sequence ("sinks"); softmax with scale
 * 1/sqrt(d). Keys are visited in the order sinks [0, min(S, t-W+1)) then window
 * [max(0, t-W+1), t], in the forward, the backward and the decode step alike, so the decode
 * step reproduces the forward bit for bit.
 *
 * Layouts are token-major: q, out [B,T,H,d]; k, v [B,T,G,d]; lse [B,T,H]. Query head h uses
 * KV head h / (H/G). Cost O(B*T*H*(W+S)*d), never O(T^2) when W + S << T.
 * Backward ACCUMULATES (+=) into dq, dk, dv (llm.c convention: the caller zeroes them).
 *
 * The *_f64 twins run the same code in double; tests check the backward against finite
 * differences of the double forward, and the fp32 backward against the double backward. */
#ifndef XD_OPS_CPU_SWA_H
#define XD_OPS_CPU_SWA_H
#include <stdint.h>

typedef struct {
  int B, T, H, G, d; /* batch, time, query heads, KV heads (H % G == 0), head dim */
  int W, S;          /* window (>= 1, counts the token itself) and number of sinks (>= 0) */
} swa_shape;

/* out [B,T,H,d]; lse [B,T,H] is the logsumexp of the scaled scores, kept for the backward
 * (NULL when no backward follows, e.g. prefill). */
void swa_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                 const swa_shape *sh);
/* Exact backward from the saved out and lse (scores recomputed). dout [B,T,H,d]. */
void swa_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                  const float *k, const float *v, const float *out, const float *lse,
                  const swa_shape *sh);

void swa_forward_f64(double *out, double *lse, const double *q, const double *k,
                     const double *v, const swa_shape *sh);
void swa_backward_f64(double *dq, double *dk, double *dv, const double *dout, const double *q,
                      const double *k, const double *v, const double *out, const double *lse,
                      const swa_shape *sh);

/* Decode cache for ONE sequence of one layer: the K/V of the first S tokens and a ring buffer
 * of the last W tokens (token p in slot p % W). Its size, (S + W) * G * d * 2 floats plus
 * O(S + W) scratch, does not depend on the sequence length. */
typedef struct {
  int G, d, W, S;
  int64_t pos;            /* tokens appended so far */
  float *k_sink, *v_sink; /* [S, G, d] */
  float *k_ring, *v_ring; /* [W, G, d] */
  float *scores;          /* scratch [S + W] */
  const float **kp, **vp; /* scratch [S + W]: key / value rows of the current query */
} swa_cache;

void swa_cache_init(swa_cache *c, int G, int d, int W, int S);
void swa_cache_free(swa_cache *c);
void swa_cache_reset(swa_cache *c); /* forget every token (new sequence), keep the buffers */
/* Append the K/V of the next token, k, v [G,d]. */
void swa_cache_append(swa_cache *c, const float *k, const float *v);
/* One decode step: append k, v [G,d] of token `pos`, then attend with its queries q [H,d];
 * out [H,d] equals swa_forward's output at that position. lse [H] may be NULL. */
void swa_decode_step(swa_cache *c, float *out, float *lse, const float *q, const float *k,
                     const float *v, int H);

#endif
