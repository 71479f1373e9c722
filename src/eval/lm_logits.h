/* Adaptor: an xd_lm (eval/lm.h) from any model that returns next-token logits for a sequence.
 * The runner then only supplies a forward pass and a tokenizer; log-softmax, the
 * continuation sum, the greedy check, and greedy generation with stop strings live here.
 * Generation re-runs the forward on the whole sequence each step (no cache): correct for any
 * model; a runner with a recurrent/KV state should implement generate_until itself. */
#ifndef XD_EVAL_LM_LOGITS_H
#define XD_EVAL_LM_LOGITS_H
#include "eval/lm.h"

/* One log-likelihood request prepared for scoring: the model's input ids [len] (context cut from
 * the left to fit, then the continuation but its last token), and the n_tok continuation
 * tokens toks scored at positions pos0 .. pos0 + n_tok - 1 (the logits row of position p
 * predicts token p + 1). Every id is in [0, vocab). */
typedef struct {
  const int32_t *ids;
  size_t len, pos0, n_tok;
  const int32_t *toks;
} xd_ll_seq;

typedef struct {
  void *ctx;
  /* logits[i * vocab + v] = score of token v following ids[0..i], for i in [0, n); n <= max_length */
  int (*forward)(void *ctx, const int32_t *ids, size_t n, float *logits, xd_err *e);
  int (*encode)(void *ctx, const char *text, size_t len, int32_t **ids, size_t *n, xd_err *e);
  /* ids -> text (heap, NUL-terminated), special tokens skipped */
  int (*decode)(void *ctx, const int32_t *ids, size_t n, char **text, xd_err *e);
  int vocab;
  int32_t prefix_id; /* BOS (or EOS) for empty contexts */
  int32_t eos_id;    /* generation stops on it; -1 for none */
  size_t max_length;
  size_t batch_size;
  const char *name;
  /* Optional: score n prepared requests at once (out[i].logprob = sum over its tokens of log
   * p(token), out[i].is_greedy = every token was the first argmax), e.g. batched on a device
   * without bringing whole logits rows to the host. NULL: forward + log-softmax on the host,
   * one request at a time. */
  int (*score)(void *ctx, const xd_ll_seq *seqs, size_t n, xd_ll_result *out, xd_err *e);
} xd_logits_model;

/* The log-softmax's normaliser of a logits row [vocab]: log sum_v exp(row[v] - max) in double,
 * with *max the row's maximum (fp32) and *argmax its first index (either may be NULL); then
 * log p(v) = row[v] - max - the result. The host twin of xd_cuda_token_logprobs; eval's scoring
 * and serve's logprobs use it. */
double xd_logits_log_z(const float *row, int vocab, float *max, int *argmax);
/* Fill *lm with callbacks over m (m must outlive lm). */
void xd_lm_from_logits(xd_lm *lm, xd_logits_model *m);
#endif
