/* Next-token sampling for text generation: temperature, top-k and top-p (nucleus), applied in
 * that order as Hugging Face's warpers do, with a seeded xd_rng. temperature 0 = greedy (the
 * first argmax, as the evaluator's greedy check). */
#ifndef XD_EVAL_SAMPLE_H
#define XD_EVAL_SAMPLE_H
#include "core/core.h"

typedef struct {
  double temperature; /* 0: greedy; else logits / temperature */
  int top_k;          /* keep the k most likely tokens; 0: all */
  double top_p;       /* keep the smallest most-likely set of mass >= top_p; 1: all */
} xd_sample_params;

/* Scratch for one vocabulary size, allocated once. */
typedef struct {
  int vocab;
  xd_sample_params p;
  xd_rng rng;
  double *probs; /* [vocab] the distribution sampled from (0 outside the kept set) */
  int *order;    /* [vocab] order[0..n_kept): the kept ids, by decreasing logit (ties: lower id
                  * first) when top-k or top-p masked them, in id order when nothing was masked */
  int n_kept;    /* tokens with probs > 0 after the masks */
} xd_sampler;

/* -1 with e filled for temperature < 0 or non-finite, top_k < 0, top_p outside (0, 1]. */
int xd_sample_params_check(const xd_sample_params *p, xd_err *e);
void xd_sampler_init(xd_sampler *s, int vocab, const xd_sample_params *p, uint64_t seed);
void xd_sampler_free(xd_sampler *s);
/* logits [vocab] -> s->probs (masked, renormalised; greedy puts 1 on the argmax). */
void xd_sampler_probs(xd_sampler *s, const float *logits);
/* Draw the next token (calls xd_sampler_probs): u uniform in [0, 1) from the rng (none when one
 * token is kept), the first token of order[0..n_kept) whose cumulative probability exceeds u.
 * The masks rank only what they need (a heap, not a sort of the vocabulary). */
int32_t xd_sampler_next(xd_sampler *s, const float *logits);
/* The same draw from the m top-ranked tokens instead of the whole row (a GPU hands those out):
 * ids[m] by decreasing logit (ties: lower id first), d[m] their logit minus the row's maximum
 * (d[0] = 0), z = the sum over the whole row of exp(d / temperature) (read only without top-k).
 * The token, or -1 when the m tokens cannot decide: top_k > m; no top-k and their mass < top_p;
 * nothing masked. Then sample the whole row (the rng is untouched). Greedy: ids[0]. */
int32_t xd_sampler_next_candidates(xd_sampler *s, const int32_t *ids, const double *d, int m, double z);
/* out[0..m) = the m top-ranked ids of logits[V] (higher logit first, ties by lower id), best
 * first; a heap of m, O(V log m). 1 <= m <= V. */
void xd_logits_top(const float *logits, int V, int m, int *out);
/* First index of the maximum of logits[vocab]. */
int32_t xd_argmax(const float *logits, int vocab);
#endif
