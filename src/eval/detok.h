/* Streaming detokenizer: token ids in one at a time, text out as soon as it is final.
 *
 * Decoding one token alone is wrong for most tokenizers (a byte-level token may hold part of a
 * UTF-8 character; SentencePiece-style decoders strip a leading space at the start of a
 * sequence), and decoding the whole generation after every token costs O(n^2). So, as
 * incremental detokenizers do (e.g. vLLM's), each step decodes only a short window: the tokens
 * committed at the previous step as context, then the uncommitted ones; the text beyond the
 * context's own decoding is the new text. It is committed when it does not end in U+FFFD (an
 * incomplete character whose other bytes may follow). The generation is decoded on its own
 * (no prompt), as lm-eval and HF's streamers decode continuations.
 *
 * Stop strings: the text is cut before the earliest occurrence; a tail that may be the start of
 * a stop string is held back (xd_stream_safe_len). */
#ifndef XD_EVAL_DETOK_H
#define XD_EVAL_DETOK_H
#include "tokenizer/tokenizer.h"

typedef struct {
  const xd_tokenizer *tok;
  const char *const *stops;
  size_t n_stops;
  int32_t *ids;
  size_t n, cap;
  size_t prefix_off, read_off; /* window: context tokens [prefix_off, read_off), new from read_off */
  char *text;                  /* committed text + the current uncommitted tail, NUL-terminated */
  size_t len, cap_text;
  size_t committed;            /* bytes of text that are final (tokens < read_off) */
  size_t emitted;              /* bytes handed out so far */
  int stopped;
} xd_detok;

void xd_detok_init(xd_detok *d, const xd_tokenizer *tok, const char *const *stops, size_t n_stops);
void xd_detok_free(xd_detok *d);
/* Add one id. *piece / *n_piece: text that became safe to show (points into d->text, valid until
 * the next call; n_piece may be 0). Returns 1 when a stop string appeared (the text now ends
 * before it and the piece finishes the output), 0 otherwise, -1 with e filled on a decode
 * error. After a stop, further pushes are errors. */
int xd_detok_push(xd_detok *d, int32_t id, const char **piece, size_t *n_piece, xd_err *e);
/* End of generation: whatever was held back. */
void xd_detok_finish(xd_detok *d, const char **piece, size_t *n_piece);

/* How many leading bytes of text[len] can be shown now: held back are trailing U+FFFD, an
 * incomplete UTF-8 tail, and the longest tail that is a proper prefix of a stop string. */
size_t xd_stream_safe_len(const char *text, size_t len, const char *const *stops, size_t n_stops);
#endif
