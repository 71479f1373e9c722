/* Streaming detokenizer (see detok.h). */
#include "eval/detok.h"

#include <stdlib.h>
#include <string.h>

void xd_detok_init(xd_detok *d, const xd_tokenizer *tok, const char *const *stops, size_t n_stops) {
  memset(d, 0, sizeof *d);
  d->tok = tok;
  d->stops = stops;
  d->n_stops = n_stops;
  d->cap = 64;
  d->ids = xd_malloc(d->cap * sizeof *d->ids);
  d->cap_text = 256;
  d->text = xd_malloc(d->cap_text);
  d->text[0] = 0;
}

void xd_detok_free(xd_detok *d) {
  free(d->ids);
  free(d->text);
  memset(d, 0, sizeof *d);
}

static int ends_with_fffd(const char *s, size_t n) {
  return n >= 3 && (unsigned char)s[n - 3] == 0xEF && (unsigned char)s[n - 2] == 0xBF && (unsigned char)s[n - 1] == 0xBD;
}

size_t xd_stream_safe_len(const char *text, size_t len, const char *const *stops, size_t n_stops) {
  const unsigned char *u = (const unsigned char *)text;
  size_t end = len;
  while (ends_with_fffd(text, end)) end -= 3;
  /* incomplete trailing sequence: a lead byte announcing more bytes than are present */
  for (size_t back = 1; back <= 3 && back <= end; back++) {
    const unsigned char c = u[end - back];
    if ((c & 0xC0) == 0x80) continue; /* continuation byte */
    const size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    if (need > back) end -= back;
    break;
  }
  size_t hold = 0;
  for (size_t s = 0; s < n_stops; s++) {
    const size_t L = strlen(stops[s]);
    for (size_t k = L ? L - 1 : 0; k > hold; k--)
      if (k <= end && !memcmp(text + end - k, stops[s], k)) { hold = k; break; }
  }
  return end - hold;
}

int xd_detok_push(xd_detok *d, int32_t id, const char **piece, size_t *n_piece, xd_err *e) {
  *piece = d->text + d->emitted;
  *n_piece = 0;
  if (d->stopped) return xd_errf(e, "detokenizer: token pushed after a stop string");
  if (d->n == d->cap) {
    d->cap *= 2;
    d->ids = xd_realloc(d->ids, d->cap * sizeof *d->ids);
  }
  d->ids[d->n++] = id;
  /* window decode: context [prefix_off, read_off) alone, then with the new tokens */
  char *ctx = NULL, *full = NULL;
  size_t lc = 0, lf = 0;
  if (d->read_off > d->prefix_off &&
      xd_tokenizer_decode(d->tok, d->ids + d->prefix_off, d->read_off - d->prefix_off, 1, &ctx, &lc, e))
    return -1;
  if (xd_tokenizer_decode(d->tok, d->ids + d->prefix_off, d->n - d->prefix_off, 1, &full, &lf, e)) { free(ctx); return -1; }
  /* the new tokens' text: what follows the context's own text (the longest common prefix if a
   * decoder rewrote the context, which byte-level and SentencePiece decoders do not) */
  size_t common = 0;
  while (common < lc && common < lf && ctx[common] == full[common]) common++;
  const char *nt = full + common;
  const size_t ln = lf - common;
  if (d->committed + ln + 1 > d->cap_text) {
    while (d->committed + ln + 1 > d->cap_text) d->cap_text *= 2;
    d->text = xd_realloc(d->text, d->cap_text);
  }
  memcpy(d->text + d->committed, nt, ln);
  d->len = d->committed + ln;
  d->text[d->len] = 0;
  free(ctx);
  free(full);
  if (ln > 0 && !ends_with_fffd(d->text, d->len)) {
    d->committed = d->len;
    d->prefix_off = d->read_off;
    d->read_off = d->n;
  }
  if (d->emitted > d->len) d->emitted = d->len; /* cannot happen with prefix-stable decoders */
  /* a stop string can only start in text not yet emitted (partial stops are held back) */
  const char *best = NULL;
  for (size_t s = 0; s < d->n_stops; s++) {
    if (!d->stops[s][0]) continue;
    const char *hit = strstr(d->text + d->emitted, d->stops[s]);
    if (hit && (!best || hit < best)) best = hit;
  }
  if (best) {
    d->len = (size_t)(best - d->text);
    d->text[d->len] = 0;
    d->stopped = 1;
    *piece = d->text + d->emitted;
    *n_piece = d->len - d->emitted;
    d->emitted = d->len;
    return 1;
  }
  const size_t safe = xd_stream_safe_len(d->text, d->len, d->stops, d->n_stops);
  if (safe > d->emitted) {
    *piece = d->text + d->emitted;
    *n_piece = safe - d->emitted;
    d->emitted = safe;
  }
  return 0;
}

void xd_detok_finish(xd_detok *d, const char **piece, size_t *n_piece) {
  *piece = d->text + d->emitted;
  *n_piece = d->len > d->emitted ? d->len - d->emitted : 0;
  d->emitted = d->len;
}
