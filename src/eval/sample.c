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

typedef struct { float v; int i; } scored;
static int cmp_desc(const void *a, const void *b) {
  const scored *x = a, *y = b;
  if (x->v != y->v) return x->v > y->v ? -1 : 1;
  return (x->i > y->i) - (x->i < y->i);
}

void xd_sampler_probs(xd_sampler *s, const float *logits) {
  const int V = s->vocab;
  for (int v = 0; v < V; v++) s->probs[v] = 0;
  if (s->p.temperature == 0) {
    const int am = xd_argmax(logits, V);
    s->probs[am] = 1;
    s->order[0] = am;
    s->n_kept = 1;
    return;
  }
  /* sort by logit (temperature keeps the order); the full sort is a few ms at 150k vocab */
  scored *sc = xd_malloc((size_t)V * sizeof *sc);
  for (int v = 0; v < V; v++) { sc[v].v = logits[v]; sc[v].i = v; }
  qsort(sc, (size_t)V, sizeof *sc, cmp_desc);
  for (int v = 0; v < V; v++) s->order[v] = sc[v].i;
  free(sc);
  int n = (s->p.top_k > 0 && s->p.top_k < V) ? s->p.top_k : V;
  /* softmax(logits / T) over the top-k, in double, from the max for stability */
  const double mx = logits[s->order[0]], invT = 1.0 / s->p.temperature;
  double z = 0;
  for (int j = 0; j < n; j++) {
    const int t = s->order[j];
    s->probs[t] = exp(((double)logits[t] - mx) * invT);
    z += s->probs[t];
  }
  for (int j = 0; j < n; j++) s->probs[s->order[j]] /= z;
  if (s->p.top_p < 1) {
    /* the smallest prefix (by decreasing probability) whose mass reaches top_p */
    double c = 0;
    int keep = 0;
    while (keep < n) {
      c += s->probs[s->order[keep++]];
      if (c >= s->p.top_p) break;
    }
    for (int j = keep; j < n; j++) s->probs[s->order[j]] = 0;
    for (int j = 0; j < keep; j++) s->probs[s->order[j]] /= c;
    n = keep;
  }
  s->n_kept = n;
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
