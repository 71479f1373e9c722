/* Temperature / top-k / top-p sampling (see sample.h). */
#include "eval/sample.h"

#include <math.h>
#include <stdlib.h>

int xd_sample_params_check(const xd_sample_params *p, xd_err *e) {
  if (!(p->temperature >= 0) || !isfinite(p->temperature))
    return xd_errf(e, "sampling: temperature must be a finite number >= 0, got %g", p->temperature);
  if (p->top_k < 0) return xd_errf(e, "sampling: top-k must be >= 0, got %d", p->top_k);
  if (!(p->top_p > 0 && p->top_p <= 1)) return xd_errf(e, "sampling: top-p must be in (0, 1], got %g", p->top_p);
  return 0;
}

void xd_sampler_init(xd_sampler *s, int vocab, const xd_sample_params *p, uint64_t seed) {
  s->vocab = vocab;
  s->p = *p;
  xd_rng_seed(&s->rng, seed);
  s->probs = xd_malloc((size_t)vocab * sizeof *s->probs);
  s->order = xd_malloc((size_t)vocab * sizeof *s->order);
  s->n_kept = 0;
}

void xd_sampler_free(xd_sampler *s) {
  free(s->probs);
  free(s->order);
  s->probs = NULL;
  s->order = NULL;
}

int32_t xd_argmax(const float *logits, int vocab) {
  int am = 0;
  for (int v = 1; v < vocab; v++)
    if (logits[v] > logits[am]) am = v;
  return am;
}

/* Rank order of the sampler: higher logit first, ties by lower id. */
static int ranks_above(const float *l, int a, int b) { return l[a] > l[b] || (l[a] == l[b] && a < b); }

static void sift_down(const float *l, int *h, int n, int i) { /* h: a heap whose root ranks lowest */
  for (;;) {
    int c = 2 * i + 1;
    if (c >= n) return;
    if (c + 1 < n && ranks_above(l, h[c], h[c + 1])) c++;
    if (!ranks_above(l, h[i], h[c])) return;
    const int t = h[i];
    h[i] = h[c], h[c] = t;
    i = c;
  }
}

/* out[0..m) = the m top-ranked ids of logits[V], best first: a heap of m (O(V log m)) instead of
 * sorting the vocabulary (a 150k sort is ~10 ms a token). */
void xd_logits_top(const float *l, int V, int m, int *out) {
  for (int v = 0; v < m; v++) out[v] = v;
  for (int i = m / 2 - 1; i >= 0; i--) sift_down(l, out, m, i);
  for (int v = m; v < V; v++)
    if (ranks_above(l, v, out[0])) {
      out[0] = v;
      sift_down(l, out, m, 0);
    }
  for (int n = m - 1; n > 0; n--) { /* pop the lowest to the back: best first */
    const int t = out[0];
    out[0] = out[n], out[n] = t;
    sift_down(l, out, n, 0);
  }
}

/* Keep the smallest prefix of order[0..n) whose mass (probs, normalised) reaches top_p;
 * renormalise it. Returns its length. */
static int nucleus(xd_sampler *s, int n) {
  double c = 0;
  int keep = 0;
  while (keep < n) {
    c += s->probs[s->order[keep++]];
    if (c >= s->p.top_p) break;
  }
  for (int j = keep; j < n; j++) s->probs[s->order[j]] = 0;
  for (int j = 0; j < keep; j++) s->probs[s->order[j]] /= c;
  return keep;
}

void xd_sampler_probs(xd_sampler *s, const float *logits) {
  const int V = s->vocab;
  if (s->p.temperature == 0 || (s->p.top_k > 0 && s->p.top_k < V)) /* the others write every entry */
    for (int v = 0; v < V; v++) s->probs[v] = 0;
  if (s->p.temperature == 0) {
    const int am = xd_argmax(logits, V);
    s->probs[am] = 1;
    s->order[0] = am;
    s->n_kept = 1;
    return;
  }
  /* softmax(logits / T) in double, from the max for stability (temperature keeps the order) */
  const double mx = logits[xd_argmax(logits, V)], invT = 1.0 / s->p.temperature;
  if (s->p.top_k > 0 && s->p.top_k < V) { /* over the top k only */
    const int k = s->p.top_k;
    xd_logits_top(logits, V, k, s->order);
    double z = 0;
    for (int j = 0; j < k; j++) z += s->probs[s->order[j]] = exp(((double)logits[s->order[j]] - mx) * invT);
    for (int j = 0; j < k; j++) s->probs[s->order[j]] /= z;
    s->n_kept = s->p.top_p < 1 ? nucleus(s, k) : k;
    return;
  }
  double z = 0;
  for (int v = 0; v < V; v++) z += s->probs[v] = exp(((double)logits[v] - mx) * invT);
  if (s->p.top_p < 1) {
    /* the nucleus lies within the m top-ranked tokens once their mass reaches top_p: rank 64,
     * then 8x more until it does, not the whole vocabulary */
    int m = V < 64 ? V : 64;
    for (;;) {
      xd_logits_top(logits, V, m, s->order);
      double mass = 0;
      for (int j = 0; j < m; j++) mass += s->probs[s->order[j]] / z;
      if (mass >= s->p.top_p || m == V) break;
      m = m > V / 8 ? V : m * 8;
    }
    /* only the m ranked tokens can be kept: the others to 0, the nucleus of those */
    for (int v = 0; v < V; v++) s->probs[v] = 0;
    for (int j = 0; j < m; j++) s->probs[s->order[j]] = exp(((double)logits[s->order[j]] - mx) * invT) / z;
    s->n_kept = nucleus(s, m);
    return;
  }
  /* nothing masked: every token, in id order (the draw needs no ranking) */
  for (int v = 0; v < V; v++) s->probs[v] /= z, s->order[v] = v;
  s->n_kept = V;
}

int32_t xd_sampler_next(xd_sampler *s, const float *logits) {
  xd_sampler_probs(s, logits);
  if (s->n_kept == 1) return s->order[0];
  const double u = xd_rng_uniform(&s->rng);
  double c = 0;
  for (int j = 0; j < s->n_kept; j++) {
    c += s->probs[s->order[j]];
    if (u < c) return s->order[j];
  }
  return s->order[s->n_kept - 1]; /* u within rounding of 1 */
}

int32_t xd_sampler_next_candidates(xd_sampler *s, const int32_t *ids, const double *d, int m, double z) {
  if (m < 1) return -1;
  if (s->p.temperature == 0) return ids[0];
  const int V = s->vocab;
  const double invT = 1.0 / s->p.temperature;
  double *q = s->probs; /* scratch here: q[j] for candidate j */
  int n;
  if (s->p.top_k > 0 && s->p.top_k < V) {
    if (s->p.top_k > m) return -1;
    n = s->p.top_k;
    double zk = 0;
    for (int j = 0; j < n; j++) zk += q[j] = exp(d[j] * invT);
    for (int j = 0; j < n; j++) q[j] /= zk;
  } else {
    if (s->p.top_p >= 1) return -1; /* nothing masked: the draw needs the whole row */
    double mass = 0;
    for (int j = 0; j < m; j++) mass += q[j] = exp(d[j] * invT) / z;
    if (mass < s->p.top_p && m < V) return -1;
    n = m;
  }
  if (s->p.top_p < 1) { /* nucleus(), over candidate positions */
    double c = 0;
    int keep = 0;
    while (keep < n) {
      c += q[keep++];
      if (c >= s->p.top_p) break;
    }
    for (int j = 0; j < keep; j++) q[j] /= c;
    n = keep;
  }
  s->n_kept = n;
  if (n == 1) return ids[0];
  const double u = xd_rng_uniform(&s->rng);
  double c = 0;
  for (int j = 0; j < n; j++) {
    c += q[j];
    if (u < c) return ids[j];
  }
  return ids[n - 1];
}
