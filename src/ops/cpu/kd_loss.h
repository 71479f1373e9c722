/* Stage II loss (SPEC §4): sparse top-k knowledge distillation plus next-token CE.
 *
 * Per position n with the teacher's top-k set K_n (ids + log-probs) and data target y_n:
 *   CE_n = -log softmax(z_n)[y_n]                     (student full softmax, temperature 1)
 *   p_T  = softmax over K of (lp_T / tau)             (teacher, renormalised over K)
 *   p_S  = softmax over K of (z_n[K] / tau)           (student, renormalised over K)
 *   KL_n = sum_K p_T (log p_T - log p_S)
 *   loss = mean over unmasked n of (gamma CE_n + beta KL_n)
 * Defaults gamma = 0.9, beta = 0.1, tau = 1, k = 256. No tau^2 factor on the KL (the paper
 * trains at tau = 1, where the two conventions agree).
 *
 * The teacher's top-k log-probs are FULL-VOCABULARY log-softmax values at temperature 1,
 * lp_T(i) = zT_i - logsumexp(zT), exactly what topk_logprobs writes, whether the teacher runs
 * online or its top-k was cached beforehand, so both give identical losses. Renormalising
 * them over K with temperature is exact: lp_T / tau differs from zT / tau by a constant,
 * which the softmax over K removes.
 *
 * Layouts: logits [N, V] row-major, targets [N], mask [N] (nonzero = counted; NULL = all),
 * tk_ids / tk_logp [N, k]. */
#ifndef XD_OPS_CPU_KD_LOSS_H
#define XD_OPS_CPU_KD_LOSS_H
#include <stdint.h>

#include "xdistill.h"

#define KD_DEFAULT_TOPK 256
#define KD_DEFAULT_GAMMA 0.9f
#define KD_DEFAULT_BETA 0.1f
#define KD_DEFAULT_TAU 1.0f

typedef struct {
  int N, V, k;             /* positions, vocabulary, teacher top-k per position (k <= V) */
  float tau, gamma, beta;  /* temperature (> 0), CE weight, KL weight */
} kd_config;

typedef struct {
  double loss; /* mean over counted positions of gamma CE + beta KL */
  double ce;   /* mean CE (for logging) */
  double kl;   /* mean KL (for logging) */
  int64_t count; /* counted (unmasked) positions; the backward needs it */
} kd_result;

/* Fills defaults for gamma, beta, tau, k. */
kd_config kd_config_default(int N, int V);

/* Forward. lse [N] receives each row's full-vocab logsumexp (kept for the backward; masked
 * rows get 0). Validates targets and top-k ids against V and that the teacher log-probs are
 * finite; returns -1 with a one-line message naming the position otherwise. With no counted
 * position the loss is 0. */
int kd_loss_forward(const kd_config *c, const float *logits, const int32_t *targets,
                    const uint8_t *mask, const int32_t *tk_ids, const float *tk_logp, float *lse,
                    kd_result *res, xd_err *e);
/* Backward in one pass over each vocabulary row: dlogits += dloss * d(loss)/d(logits), for
 * inputs the forward accepted, with its lse and res->count. Masked rows receive nothing.
 * dlogits may BE logits (in place, llm.c style): then each row is overwritten with its
 * gradient (masked rows zeroed) instead of accumulated, and no [N, V] gradient buffer is
 * needed. */
void kd_loss_backward(const kd_config *c, float *dlogits, const float *logits,
                      const int32_t *targets, const uint8_t *mask, const int32_t *tk_ids,
                      const float *tk_logp, const float *lse, int64_t count, float dloss);

int kd_loss_forward_f64(const kd_config *c, const double *logits, const int32_t *targets,
                        const uint8_t *mask, const int32_t *tk_ids, const double *tk_logp,
                        double *lse, kd_result *res, xd_err *e);
void kd_loss_backward_f64(const kd_config *c, double *dlogits, const double *logits,
                          const int32_t *targets, const uint8_t *mask, const int32_t *tk_ids,
                          const double *tk_logp, const double *lse, int64_t count,
                          double dloss);

/* Teacher top-k extraction from logits rows [N, V]: ids [N, k] and their full-vocab
 * log-softmax values logp [N, k] (temperature 1), sorted by value descending, ties by lower
 * id (deterministic). O(V log k) per row. Returns -1 if k is out of [1, V] or a row holds a
 * non-finite logit (message names the row). */
int topk_logprobs(const float *logits, int N, int V, int k, int32_t *ids, float *logp,
                  xd_err *e);

#endif
