/* libFuzzer target for the tokenizer. The first input byte picks the mode:
 *   even: the rest is text; encode it (with and without specials) and decode the ids with a
 *         small built-in tokenizer that exercises every component (Split regex, Metaspace,
 *         Digits, ByteLevel, normalizers, byte fallback, unk, added tokens with lstrip/rstrip/
 *         single_word/normalized) and, when present, ../shared/tokenizers/llama3 and llama2;
 *         decode(encode(x)) must give x back for the byte-level tokenizer on valid UTF-8.
 *   odd:  the rest is a tokenizer.json; load it, and if it loads, encode and decode a fixed text.
 * Build: CC=clang cmake -S . -B build-fuzz -DXD_FUZZ=ON -DXD_CUDA=OFF && cmake --build build-fuzz
 *        --target fuzz_tokenizer; run from the repo root: build-fuzz/fuzz_tokenizer -max_len=4096 */
#include <stdlib.h>
#include <string.h>
#include "tokenizer/tokenizer.h"

static const char *TINY =
    "{\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"NFKC\"}, {\"type\": \"Lowercase\"},"
    " {\"type\": \"Replace\", \"pattern\": {\"Regex\": \"\\\\s+\"}, \"content\": \" \"}]},"
    " \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Digits\", \"individual_digits\": true},"
    " {\"type\": \"Split\", \"pattern\": {\"String\": \"-\"}, \"behavior\": \"MergedWithPrevious\", \"invert\": false},"
    " {\"type\": \"Split\", \"pattern\": {\"Regex\": \"[,;]\"}, \"behavior\": \"Contiguous\", \"invert\": true},"
    " {\"type\": \"Metaspace\", \"replacement\": \"\\u2581\", \"prepend_scheme\": \"first\", \"split\": true}]},"
    " \"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<s>\", \"type_id\": 0}},"
    " {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], \"special_tokens\": {\"<s>\": {\"id\": \"<s>\", \"ids\": [1], \"tokens\": [\"<s>\"]}}},"
    " \"decoder\": {\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\", \"pattern\": {\"String\": \"\\u2581\"}, \"content\": \" \"},"
    " {\"type\": \"ByteFallback\"}, {\"type\": \"Fuse\"}, {\"type\": \"Strip\", \"content\": \" \", \"start\": 1, \"stop\": 0}]},"
    " \"added_tokens\": [{\"id\": 1, \"content\": \"<s>\", \"special\": true, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, \"single_word\": false},"
    " {\"id\": 264, \"content\": \"<x>\", \"special\": true, \"lstrip\": true, \"rstrip\": true, \"normalized\": false, \"single_word\": false},"
    " {\"id\": 265, \"content\": \"word\", \"special\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": true, \"single_word\": true}],"
    " \"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"fuse_unk\": true, \"byte_fallback\": true, \"vocab\": {%VOCAB%},"
    " \"merges\": [\"a b\", \"ab c\", \"\\u2581 a\"]}}";

typedef struct { xd_tokenizer *tiny, *llama3, *llama2; } fuzz_toks;

static fuzz_toks *toks(void) {
  static fuzz_toks f;
  static int init;
  if (init) return &f;
  init = 1;
  /* vocab: <unk>, <s>, the 256 byte tokens, a, b, c, ab, abc, ▁, ▁a */
  size_t cap = 16384, n = 0;
  char *v = malloc(cap);
  n += (size_t)snprintf(v + n, cap - n, "\"<unk>\": 0, \"<s>\": 1");
  for (int b = 0; b < 256; b++) n += (size_t)snprintf(v + n, cap - n, ", \"<0x%02X>\": %d", b, b + 2);
  n += (size_t)snprintf(v + n, cap - n, ", \"a\": 258, \"b\": 259, \"c\": 260, \"ab\": 261, \"abc\": 262, \"\\u2581\": 263,"
                                        " \"\\u2581a\": 266");
  const char *mark = strstr(TINY, "%VOCAB%");
  size_t total = strlen(TINY) + n + 1;
  char *json = malloc(total);
  size_t pre = (size_t)(mark - TINY);
  memcpy(json, TINY, pre);
  memcpy(json + pre, v, n);
  strcpy(json + pre + n, mark + 7);
  xd_err e;
  if (xd_tokenizer_load_json(&f.tiny, json, strlen(json), "fuzz-tiny", &e)) { fprintf(stderr, "%s\n", e.msg); abort(); }
  free(json);
  free(v);
  if (xd_tokenizer_load(&f.llama3, "../shared/tokenizers/llama3", &e)) f.llama3 = NULL;
  if (xd_tokenizer_load(&f.llama2, "../shared/tokenizers/llama2", &e)) f.llama2 = NULL;
  return &f;
}

static int valid_utf8(const uint8_t *s, size_t n) {
  /* round trip holds only for valid UTF-8; a cheap conservative check via decode-compare below */
  for (size_t i = 0; i < n; i++) if (s[i] >= 0x80 || s[i] == 0) return 0;
  return 1;
}

static void exercise(const xd_tokenizer *t, const uint8_t *data, size_t size, int roundtrip) {
  xd_err e;
  int32_t *ids;
  size_t n;
  for (int sp = 0; sp < 2; sp++) {
    if (xd_tokenizer_encode(t, (const char *)data, size, sp, &ids, &n, &e)) continue;
    for (size_t i = 0; i < n; i++) if (ids[i] < 0 || ids[i] >= xd_tokenizer_vocab_size(t)) abort();
    char *text;
    size_t len;
    if (!xd_tokenizer_decode(t, ids, n, sp, &text, &len, &e)) {
      if (roundtrip && !sp && (len != size || memcmp(text, data, size))) abort();
      free(text);
    }
    free(ids);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  fuzz_toks *f = toks();
  const uint8_t *p = data + 1;
  size_t n = size - 1;
  if (!(data[0] & 1)) {
    exercise(f->tiny, p, n, 0);
    /* printable ASCII without special-token look-alikes round-trips exactly on Llama 3 */
    if (f->llama3) exercise(f->llama3, p, n, valid_utf8(p, n) && !memchr(p, '<', n));
    if (f->llama2) exercise(f->llama2, p, n, 0);
    /* decode arbitrary ids */
    if (f->llama3 && n >= 4) {
      char *text;
      size_t len;
      xd_err e;
      int32_t *ids = malloc(n / 4 * sizeof *ids);
      memcpy(ids, p, n / 4 * sizeof *ids);
      if (!xd_tokenizer_decode(f->llama3, ids, n / 4, data[0] & 2, &text, &len, &e)) free(text);
      free(ids);
    }
    return 0;
  }
  xd_tokenizer *t;
  xd_err e;
  if (xd_tokenizer_load_json(&t, (const char *)p, n, "fuzz-input", &e)) {
    if (!memchr(e.msg, '\n', strlen(e.msg)) && e.msg[0]) return 0;
    abort(); /* error messages are one non-empty line */
  }
  exercise(t, (const uint8_t *)"Hello world 123 <s> abc\xff\xfe", 26, 0);
  xd_tokenizer_free(t);
  return 0;
}
