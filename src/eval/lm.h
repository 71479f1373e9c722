/* Model interface for evaluation: the evaluator (eval/eval.h) only talks to a language model
 * through these callbacks, so tasks, scoring and reports stay model-agnostic. The runner glue
 * (teacher or student on CPU/GPU) implements them; tests implement a mock.
 *
 * Semantics follow lm-evaluation-harness:
 *  - loglikelihood: for each request, sum over the continuation tokens of log p(token | all
 *    previous tokens), in natural log, and is_greedy = 1 when every continuation token is the
 *    argmax of the model's distribution at its position. The model sees context ++ continuation
 *    (minus the last token); the caller guarantees n_context >= 1 (it inserts a prefix token,
 *    BOS, when the context is empty). Callers keep n_context + n_continuation <= max_length + 1
 *    (the implementation may truncate the context from the left if it must).
 *  - generate_until: greedy decoding from the prompt until one of the stop strings appears in
 *    the decoded text or max_new tokens were produced; out_text (heap, NUL-terminated, caller
 *    frees) is the generated text with the first stop string and everything after it removed.
 *  - generate_until_batch (optional): generate_until for n prompts at once (the evaluator sends
 *    up to batch_size); out_texts[i] as generate_until's out_text for prompts[i]. A model that
 *    decodes many sequences together (the GPU runner) sets it; results equal generate_until's
 *    up to the model's batched numerics.
 *  - encode: text -> ids without special tokens (no BOS), as HF encode(add_special_tokens=False). */
#ifndef XD_EVAL_LM_H
#define XD_EVAL_LM_H
#include "core/core.h"

typedef struct {
  const int32_t *context;      /* [n_context] */
  size_t n_context;
  const int32_t *continuation; /* [n_continuation], n_continuation >= 1 */
  size_t n_continuation;
} xd_ll_request;

typedef struct {
  double logprob; /* sum of natural-log probabilities of the continuation tokens */
  int is_greedy;  /* 1 if greedy decoding would have produced the continuation exactly */
} xd_ll_result;

typedef struct xd_lm {
  void *ctx; /* the implementation's state, passed back to every callback */
  /* Score n requests (a batch; order of out matches reqs). 0 / -1 with e filled. */
  int (*loglikelihood)(void *ctx, const xd_ll_request *reqs, size_t n, xd_ll_result *out, xd_err *e);
  /* Greedy generation; stops are n_stops NUL-terminated strings. May be NULL for a model that
   * only scores (generation tasks then fail with a clear error). */
  int (*generate_until)(void *ctx, const int32_t *prompt, size_t n_prompt, const char *const *stops,
                        size_t n_stops, int max_new, char **out_text, xd_err *e);
  /* Tokenizer: text -> ids (heap, caller frees), no special tokens added. */
  int (*encode)(void *ctx, const char *text, size_t len, int32_t **ids, size_t *n, xd_err *e);
  int32_t prefix_id;   /* token scored as context when the context is empty (BOS / EOS), >= 0 */
  size_t max_length;   /* model context length in tokens (>= 2) */
  size_t batch_size;   /* requests per loglikelihood call (>= 1) */
  const char *name;    /* model path or name, recorded in results */
  /* Optional (NULL: generate_until per request): generation of n requests at once. */
  int (*generate_until_batch)(void *ctx, const int32_t *const *prompts, const size_t *n_prompts, size_t n,
                              const char *const *stops, size_t n_stops, int max_new, char **out_texts, xd_err *e);
} xd_lm;

#endif
