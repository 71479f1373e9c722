/* xd_lm over a logits forward pass: log-softmax in double, greedy = first argmax. */
#include "eval/lm_logits.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

double xd_logits_log_z(const float *row, int vocab, float *max, int *argmax) {
  float mx = row[0];
  int am = 0;
  for (int v = 1; v < vocab; v++)
    if (row[v] > mx) { mx = row[v]; am = v; }
  double z = 0;
  for (int v = 0; v < vocab; v++) z += exp((double)row[v] - (double)mx);
  if (max) *max = mx;
  if (argmax) *argmax = am;
  return log(z);
}

/* log p(tok) under logits row [vocab] (double accumulation); *argmax = first max index. */
static double row_logprob(const float *row, int vocab, int32_t tok, int *argmax) {
  float mx;
  const double lz = xd_logits_log_z(row, vocab, &mx, argmax);
  return (double)row[tok] - (double)mx - lz;
}

/* Request q as the model's input (context cut from the left to fit max_length) into seq (room
 * for min(n_context + n_continuation, max_length + 1) ids) and *out (pointing into seq and q);
 * every id checked against the vocabulary. */
static int ll_prepare(const xd_logits_model *m, const xd_ll_request *q, int32_t *seq, xd_ll_seq *out, xd_err *e) {
  size_t nc = q->n_context, m_ = q->n_continuation;
  if (m_ == 0 || m_ > m->max_length) return xd_errf(e, "%s: continuation of %zu tokens does not fit %zu", m->name, m_, m->max_length);
  if (nc + m_ - 1 > m->max_length) nc = m->max_length + 1 - m_;
  if (nc == 0) return xd_errf(e, "%s: empty context", m->name);
  const int32_t *cx = q->context + (q->n_context - nc);
  const size_t len = nc + m_ - 1;
  memcpy(seq, cx, nc * sizeof *seq);
  memcpy(seq + nc, q->continuation, (m_ - 1) * sizeof *seq);
  for (size_t i = 0; i < len; i++)
    if (seq[i] < 0 || seq[i] >= m->vocab) return xd_errf(e, "%s: token id %d out of range [0, %d)", m->name, seq[i], m->vocab);
  for (size_t j = 0; j < m_; j++)
    if (q->continuation[j] < 0 || q->continuation[j] >= m->vocab)
      return xd_errf(e, "%s: token id %d out of range [0, %d)", m->name, q->continuation[j], m->vocab);
  out->ids = seq, out->len = len, out->pos0 = nc - 1, out->n_tok = m_, out->toks = q->continuation;
  return 0;
}

static int logits_ll(void *ctx, const xd_ll_request *reqs, size_t n, xd_ll_result *out, xd_err *e) {
  xd_logits_model *m = ctx;
  if (m->score) { /* all requests prepared, then scored together */
    size_t total = 1;
    for (size_t r = 0; r < n; r++) total += reqs[r].n_context + reqs[r].n_continuation; /* >= each input */
    int32_t *seq = xd_malloc(total * sizeof *seq);
    xd_ll_seq *sq = xd_malloc((n ? n : 1) * sizeof *sq);
    int rc = 0;
    for (size_t r = 0, off = 0; r < n && !rc; off += reqs[r].n_context + reqs[r].n_continuation, r++)
      rc = ll_prepare(m, &reqs[r], seq + off, &sq[r], e);
    if (!rc) rc = m->score(m->ctx, sq, n, out, e);
    free(sq);
    free(seq);
    return rc;
  }
  int32_t *seq = xd_malloc((m->max_length + 1) * sizeof *seq);
  float *logits = NULL;
  size_t cap = 0;
  int rc = 0;
  for (size_t r = 0; r < n && !rc; r++) {
    xd_ll_seq q;
    if ((rc = ll_prepare(m, &reqs[r], seq, &q, e)) != 0) break;
    if (q.len * (size_t)m->vocab > cap) {
      cap = q.len * (size_t)m->vocab;
      free(logits);
      logits = xd_malloc(cap * sizeof *logits);
    }
    if (m->forward(m->ctx, seq, q.len, logits, e)) { rc = -1; break; }
    double s = 0;
    int greedy = 1;
    for (size_t j = 0; j < q.n_tok; j++) {
      int am;
      s += row_logprob(logits + (q.pos0 + j) * (size_t)m->vocab, m->vocab, q.toks[j], &am);
      greedy &= am == q.toks[j];
    }
    out[r].logprob = s;
    out[r].is_greedy = greedy;
  }
  free(seq);
  free(logits);
  return rc;
}

/* Greedy decoding until a stop string appears in the decoded continuation, EOS, max_new
 * tokens, or the context is full. */
static int logits_generate(void *ctx, const int32_t *prompt, size_t n_prompt, const char *const *stops, size_t n_stops,
                           int max_new, char **out_text, xd_err *e) {
  xd_logits_model *m = ctx;
  *out_text = NULL;
  if (n_prompt == 0) { prompt = &m->prefix_id; n_prompt = 1; }
  if (n_prompt > m->max_length) { prompt += n_prompt - m->max_length; n_prompt = m->max_length; }
  size_t cap_seq = n_prompt + (size_t)(max_new > 0 ? max_new : 0) + 1;
  int32_t *seq = xd_malloc(cap_seq * sizeof *seq);
  memcpy(seq, prompt, n_prompt * sizeof *seq);
  size_t len = n_prompt;
  float *logits = xd_malloc(m->max_length * (size_t)m->vocab * sizeof *logits);
  char *text = NULL;
  int rc = 0;
  for (int step = 0; step < max_new && len < m->max_length; step++) {
    if (m->forward(m->ctx, seq, len, logits, e)) { rc = -1; break; }
    int am;
    row_logprob(logits + (len - 1) * (size_t)m->vocab, m->vocab, 0, &am);
    if (am == m->eos_id) break;
    seq[len++] = am;
    free(text);
    text = NULL;
    if (m->decode(m->ctx, seq + n_prompt, len - n_prompt, &text, e)) { rc = -1; break; }
    int stop = 0;
    for (size_t s = 0; s < n_stops && !stop; s++) {
      char *hit = stops[s][0] ? strstr(text, stops[s]) : NULL;
      if (hit) { *hit = 0; stop = 1; }
    }
    if (stop) break;
  }
  if (!rc && !text) text = xd_strdup("");
  free(seq);
  free(logits);
  if (rc) { free(text); return -1; }
  *out_text = text;
  return 0;
}

static int logits_encode(void *ctx, const char *text, size_t len, int32_t **ids, size_t *n, xd_err *e) {
  xd_logits_model *m = ctx;
  return m->encode(m->ctx, text, len, ids, n, e);
}

void xd_lm_from_logits(xd_lm *lm, xd_logits_model *m) {
  memset(lm, 0, sizeof *lm); /* optional callbacks (generate_until_batch) absent unless the caller sets them */
  lm->ctx = m;
  lm->loglikelihood = logits_ll;
  lm->generate_until = m->decode ? logits_generate : NULL;
  lm->encode = logits_encode;
  lm->prefix_id = m->prefix_id;
  lm->max_length = m->max_length;
  lm->batch_size = m->batch_size ? m->batch_size : 1;
  lm->name = m->name;
}
