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
  int *order;    /* [vocab] token ids by decreasing logit (ties: lower id first) */
  int n_kept;    /* tokens with probs > 0 after the masks */
} xd_sampler;

/* -1 with e filled for temperature < 0 or non-finite, top_k < 0, top_p outside (0, 1]. */
int xd_sample_params_check(const xd_sample_params *p, xd_err *e);
void xd_sampler_init(xd_sampler *s, int vocab, const xd_sample_params *p, uint64_t seed);
void xd_sampler_free(xd_sampler *s);
/* logits [vocab] -> s->probs (masked, renormalised; greedy puts 1 on the argmax). */
void xd_sampler_probs(xd_sampler *s, const float *logits);
/* Draw the next token (calls xd_sampler_probs). */
int32_t xd_sampler_next(xd_sampler *s, const float *logits);
/* First index of the maximum of logits[vocab]. */
int32_t xd_argmax(const float *logits, int vocab);
#endif
