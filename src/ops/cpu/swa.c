/* Sliding-window attention with sinks: forward, backward, decode cache. See swa.h. */
#include "ops/cpu/swa.h"

#include <stdlib.h>
#include <string.h>
#include <tgmath.h>

#include "core/core.h"
#include "ops/cpu/parallel.h"

/* Key positions of query t, in visiting order: sinks not already in the window, then the
 * window ascending. pos: [swa_max_keys]. Returns the count (>= 1: t itself). */
static int swa_keys(int64_t t, int W, int S, int64_t *pos) {
  const int64_t ws = t - W + 1 > 0 ? t - W + 1 : 0; /* first window position */
  const int64_t ns = ws < S ? ws : S;               /* sinks outside the window */
  int n = 0;
  for (int64_t s = 0; s < ns; s++) pos[n++] = s;
  for (int64_t s = ws; s <= t; s++) pos[n++] = s;
  return n;
}

/* Most keys any query sees: min(W + S, T), without overflow for a huge W ("no window"). */
static int swa_max_keys(const swa_shape *sh) {
  const int64_t n = (int64_t)sh->W + sh->S;
  return n < sh->T ? (int)n : sh->T;
}

#define XD_TWIN_BODY "ops/cpu/swa_impl.inc"
#include "ops/cpu/twin.h"

void swa_cache_init(swa_cache *c, int G, int d, int W, int S) {
  XD_CHECK(G > 0 && d > 0 && W >= 1 && S >= 0);
  memset(c, 0, sizeof *c);
  c->G = G;
  c->d = d;
  c->W = W;
  c->S = S;
  const size_t row = (size_t)G * d;
  c->k_sink = xd_calloc((size_t)S * row + 1, sizeof(float));
  c->v_sink = xd_calloc((size_t)S * row + 1, sizeof(float));
  c->k_ring = xd_calloc((size_t)W * row, sizeof(float));
  c->v_ring = xd_calloc((size_t)W * row, sizeof(float));
  c->scores = xd_malloc(sizeof(float) * (size_t)(S + W));
  c->kp = xd_malloc(sizeof(float *) * (size_t)(S + W));
  c->vp = xd_malloc(sizeof(float *) * (size_t)(S + W));
}

void swa_cache_free(swa_cache *c) {
  free(c->k_sink);
  free(c->v_sink);
  free(c->k_ring);
  free(c->v_ring);
  free(c->scores);
  free(c->kp);
  free(c->vp);
  memset(c, 0, sizeof *c);
}

void swa_cache_reset(swa_cache *c) { c->pos = 0; }

void swa_cache_append(swa_cache *c, const float *k, const float *v) {
  const size_t row = (size_t)c->G * c->d;
  if (c->pos < c->S) {
    memcpy(c->k_sink + (size_t)c->pos * row, k, row * sizeof(float));
    memcpy(c->v_sink + (size_t)c->pos * row, v, row * sizeof(float));
  }
  const size_t slot = (size_t)(c->pos % c->W);
  memcpy(c->k_ring + slot * row, k, row * sizeof(float));
  memcpy(c->v_ring + slot * row, v, row * sizeof(float));
  c->pos++;
}

void swa_decode_step(swa_cache *c, float *out, float *lse, const float *q, const float *k,
                     const float *v, int H) {
  XD_CHECK(H > 0 && H % c->G == 0);
  swa_cache_append(c, k, v);
  const int64_t t = c->pos - 1;
  const int64_t ws = t - c->W + 1 > 0 ? t - c->W + 1 : 0;
  const int64_t ns = ws < c->S ? ws : c->S;
  const int rep = H / c->G, d = c->d;
  const size_t row = (size_t)c->G * d;
  const float scale = 1 / sqrtf((float)d);
  for (int h = 0; h < H; h++) {
    const size_t g = (size_t)(h / rep);
    /* same visiting order as swa_keys: sinks outside the window, then the window */
    int n = 0;
    for (int64_t s = 0; s < ns; s++, n++) {
      c->kp[n] = c->k_sink + (size_t)s * row + g * d;
      c->vp[n] = c->v_sink + (size_t)s * row + g * d;
    }
    for (int64_t s = ws; s <= t; s++, n++) {
      const size_t slot = (size_t)(s % c->W);
      c->kp[n] = c->k_ring + slot * row + g * d;
      c->vp[n] = c->v_ring + slot * row + g * d;
    }
    const float l = swa_row(out + (size_t)h * d, q + (size_t)h * d, c->kp, c->vp, n, d, scale,
                            c->scores);
    if (lse) lse[h] = l;
  }
}
