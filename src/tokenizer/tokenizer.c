/* tokenizer.json loader, encoder and decoder (HF `tokenizers` semantics, BPE models).
 * Encode: lossy UTF-8 -> split on added tokens (non-normalized ones on the raw text) ->
 * normalizer per segment -> split on normalized added tokens -> pre-tokenizer -> BPE ->
 * post-processor. With a ByteLevel pre-tokenizer the BPE works on raw bytes (the vocab is
 * mapped back from the GPT-2 byte alphabet at load), which skips the per-byte remapping. */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>
#include "tokenizer/tok_internal.h"

#define TOK_MAX_FILE ((size_t)1 << 30)

static const char *GPT2_REGEX =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* ---- small helpers -------------------------------------------------------- */
typedef struct { char **bufs; size_t n, cap; } tok_arena;
static char *arena_alloc(tok_arena *a, size_t n) {
  if (a->n == a->cap) { a->cap = a->cap ? a->cap * 2 : 16; a->bufs = xd_realloc(a->bufs, a->cap * sizeof *a->bufs); }
  return a->bufs[a->n++] = xd_malloc(n + 1);
}
static void arena_free(tok_arena *a) {
  for (size_t i = 0; i < a->n; i++) free(a->bufs[i]);
  free(a->bufs);
  a->bufs = NULL; a->n = a->cap = 0;
}

/* Rust char::is_whitespace (Unicode White_Space). */
static int cp_is_space(uint32_t c) {
  return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
         c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}
/* Rust char::is_alphanumeric || '_' (word character for single_word added tokens). */
static int cp_is_word(uint32_t c) {
  if (c == '_') return 1;
  utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
  return (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO) ||
         (k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO);
}
/* code point ending at byte position `end` (exclusive) */
static uint32_t cp_before(const char *s, size_t end) {
  size_t i = end;
  while (i > 0 && ((uint8_t)s[i - 1] & 0xC0) == 0x80) i--;
  if (i > 0) i--;
  uint32_t cp;
  tok_utf8_next(s + i, end - i, &cp);
  return cp;
}

static int cp_from_str(const char *s, uint32_t *cp) {
  size_t n = strlen(s);
  if (!n || !tok_utf8_valid(s, n)) return -1;
  int k = tok_utf8_next(s, n, cp);
  return (size_t)k == n ? 0 : -1;
}

/* HF compiles these patterns with Oniguruma, whose \s is Unicode White_Space; PCRE2 (UCP)
 * also counts U+180E as a space. Rewrite \s / \S (outside classes) and \s inside classes
 * to the exact White_Space set so both engines split identically. Heap string. */
#define WS_MEMBERS "\\t-\\r \\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}"
static char *regex_translate(const char *pat) {
  size_t n = strlen(pat), cap = n * 8 + 64, o = 0;
  char *out = xd_malloc(cap);
  int in_class = 0;
  for (size_t i = 0; i < n; i++) {
    if (o + 128 > cap) { cap *= 2; out = xd_realloc(out, cap); }
    char ch = pat[i];
    if (ch == '\\' && i + 1 < n) {
      char nx = pat[i + 1];
      if (nx == 's') { o += (size_t)sprintf(out + o, in_class ? "%s" : "[%s]", WS_MEMBERS); i++; continue; }
      if (nx == 'S' && !in_class) { o += (size_t)sprintf(out + o, "[^%s]", WS_MEMBERS); i++; continue; }
      out[o++] = ch; out[o++] = nx; i++;
      continue;
    }
    if (ch == '[' && !in_class) {
      in_class = 1;
      out[o++] = ch;
      if (i + 1 < n && pat[i + 1] == '^') out[o++] = pat[++i];
      if (i + 1 < n && pat[i + 1] == ']') out[o++] = pat[++i]; /* literal ] first in class */
      continue;
    }
    if (ch == ']' && in_class) in_class = 0;
    out[o++] = ch;
  }
  out[o] = 0;
  return out;
}

static pcre2_code *regex_compile(const char *pat0, const char *path, const char *what, xd_err *e) {
  int code;
  PCRE2_SIZE off;
  char *pat = regex_translate(pat0);
  pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &code, &off, NULL);
  free(pat);
  if (!re) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(code, buf, sizeof buf);
    xd_errf(e, "%s: %s: bad regex at offset %zu: %s", path, what, (size_t)off, (const char *)buf);
    return NULL;
  }
  pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* falls back to the interpreter if JIT is unavailable */
  return re;
}

/* ---- JSON helpers ------------------------------------------------------------ */
static int json_bool(const cJSON *o, const char *k, int def) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  if (cJSON_IsBool(v)) return cJSON_IsTrue(v);
  return def;
}
static const char *json_str(const cJSON *o, const char *k) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}
static int json_int(const cJSON *v, int64_t lo, int64_t hi, int64_t *out) {
  if (!cJSON_IsNumber(v)) return -1;
  double d = v->valuedouble;
  /* range first: converting a double beyond int64 is undefined */
  if (!(d >= (double)lo && d <= (double)hi) || d != (double)(int64_t)d) return -1;
  *out = (int64_t)d;
  return 0;
}
/* A {"String": s} or {"Regex": r} pattern. */
static int json_pattern(const cJSON *p, const char *path, const char *what, char **lit, size_t *lit_len,
                        pcre2_code **re, xd_err *e) {
  const char *s = json_str(p, "String"), *r = json_str(p, "Regex");
  if (s) { *lit = xd_strdup(s); *lit_len = strlen(s); return 0; }
  if (r) { *re = regex_compile(r, path, what, e); return *re ? 0 : -1; }
  return xd_errf(e, "%s: %s: pattern must be {\"String\": ...} or {\"Regex\": ...}", path, what);
}
static const char *json_type(const cJSON *o) {
  const char *t = json_str(o, "type");
  return t ? t : "(missing type)";
}

/* ---- component parsing --------------------------------------------------------- */
static void norm_free(tok_norm *n) {
  if (!n) return;
  free(n->str); free(n->content);
  if (n->re) pcre2_code_free(n->re);
  for (int i = 0; i < n->n_items; i++) norm_free(&n->items[i]);
  free(n->items);
}
static int norm_parse(tok_norm *n, const cJSON *j, const char *path, xd_err *e) {
  memset(n, 0, sizeof *n);
  if (!cJSON_IsObject(j)) return xd_errf(e, "%s: normalizer: expected an object", path);
  const char *ty = json_type(j);
  if (!strcmp(ty, "NFC")) n->kind = NORM_NFC;
  else if (!strcmp(ty, "NFKC")) n->kind = NORM_NFKC;
  else if (!strcmp(ty, "NFD")) n->kind = NORM_NFD;
  else if (!strcmp(ty, "NFKD")) n->kind = NORM_NFKD;
  else if (!strcmp(ty, "Lowercase")) n->kind = NORM_LOWERCASE;
  else if (!strcmp(ty, "Strip")) {
    n->kind = NORM_STRIP;
    n->strip_left = json_bool(j, "strip_left", json_bool(j, "left", 1));
    n->strip_right = json_bool(j, "strip_right", json_bool(j, "right", 1));
  } else if (!strcmp(ty, "Prepend")) {
    n->kind = NORM_PREPEND;
    const char *p = json_str(j, "prepend");
    if (!p) return xd_errf(e, "%s: normalizer Prepend: missing string \"prepend\"", path);
    n->str = xd_strdup(p); n->str_len = strlen(p);
  } else if (!strcmp(ty, "Replace")) {
    n->kind = NORM_REPLACE;
    const char *c = json_str(j, "content");
    if (!c) return xd_errf(e, "%s: normalizer Replace: missing string \"content\"", path);
    n->content = xd_strdup(c); n->content_len = strlen(c);
    if (json_pattern(cJSON_GetObjectItemCaseSensitive(j, "pattern"), path, "normalizer Replace", &n->str,
                     &n->str_len, &n->re, e)) return -1;
  } else if (!strcmp(ty, "Sequence")) {
    n->kind = NORM_SEQUENCE;
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "normalizers");
    if (!cJSON_IsArray(a)) return xd_errf(e, "%s: normalizer Sequence: \"normalizers\" must be an array", path);
    n->n_items = cJSON_GetArraySize(a);
    n->items = xd_calloc((size_t)n->n_items + 1, sizeof *n->items);
    for (int i = 0; i < n->n_items; i++)
      if (norm_parse(&n->items[i], cJSON_GetArrayItem(a, i), path, e)) return -1;
  } else {
    return xd_errf(e, "%s: normalizer '%s' is not supported (supported: NFC, NFKC, NFD, NFKD, Lowercase, Strip, "
                   "Prepend, Replace, Sequence)", path, ty);
  }
  return 0;
}

static void pre_free(tok_pre *p) {
  if (!p) return;
  if (p->re) pcre2_code_free(p->re);
  free(p->literal);
  for (int i = 0; i < p->n_items; i++) pre_free(&p->items[i]);
  free(p->items);
}
static int parse_behavior(const char *b, tok_split_behavior *out) {
  if (!b) return -1;
  if (!strcmp(b, "Removed")) *out = SPLIT_REMOVED;
  else if (!strcmp(b, "Isolated")) *out = SPLIT_ISOLATED;
  else if (!strcmp(b, "MergedWithPrevious")) *out = SPLIT_MERGED_PREV;
  else if (!strcmp(b, "MergedWithNext")) *out = SPLIT_MERGED_NEXT;
  else if (!strcmp(b, "Contiguous")) *out = SPLIT_CONTIGUOUS;
  else return -1;
  return 0;
}
static int parse_prepend(const cJSON *j, tok_prepend_scheme *out) {
  const char *s = json_str(j, "prepend_scheme");
  if (s) {
    if (!strcmp(s, "always")) *out = PREPEND_ALWAYS;
    else if (!strcmp(s, "first")) *out = PREPEND_FIRST;
    else if (!strcmp(s, "never")) *out = PREPEND_NEVER;
    else return -1;
  } else {
    *out = json_bool(j, "add_prefix_space", 1) ? PREPEND_ALWAYS : PREPEND_NEVER;
  }
  return 0;
}
static int pre_parse(tok_pre *p, const cJSON *j, const char *path, xd_err *e) {
  memset(p, 0, sizeof *p);
  if (!cJSON_IsObject(j)) return xd_errf(e, "%s: pre_tokenizer: expected an object", path);
  const char *ty = json_type(j);
  if (!strcmp(ty, "Split")) {
    p->kind = PRE_SPLIT;
    if (parse_behavior(json_str(j, "behavior"), &p->behavior))
      return xd_errf(e, "%s: pre_tokenizer Split: bad or missing \"behavior\"", path);
    p->invert = json_bool(j, "invert", 0);
    return json_pattern(cJSON_GetObjectItemCaseSensitive(j, "pattern"), path, "pre_tokenizer Split", &p->literal,
                        &p->literal_len, &p->re, e);
  }
  if (!strcmp(ty, "ByteLevel")) {
    p->kind = PRE_BYTELEVEL;
    p->add_prefix_space = json_bool(j, "add_prefix_space", 1);
    p->use_regex = json_bool(j, "use_regex", 1);
    if (p->use_regex && !(p->re = regex_compile(GPT2_REGEX, path, "ByteLevel regex", e))) return -1;
    return 0;
  }
  if (!strcmp(ty, "Metaspace")) {
    p->kind = PRE_METASPACE;
    const char *r = json_str(j, "replacement");
    if (!r) r = "\xE2\x96\x81";
    if (cp_from_str(r, &p->repl_cp)) return xd_errf(e, "%s: pre_tokenizer Metaspace: replacement must be one character", path);
    p->repl_len = tok_utf8_put(p->repl_cp, p->repl);
    if (parse_prepend(j, &p->prepend)) return xd_errf(e, "%s: pre_tokenizer Metaspace: bad prepend_scheme", path);
    p->split = json_bool(j, "split", 1);
    return 0;
  }
  if (!strcmp(ty, "Digits")) {
    p->kind = PRE_DIGITS;
    p->individual_digits = json_bool(j, "individual_digits", 0);
    return 0;
  }
  if (!strcmp(ty, "WhitespaceSplit")) { p->kind = PRE_WHITESPACE_SPLIT; return 0; }
  if (!strcmp(ty, "Sequence")) {
    p->kind = PRE_SEQUENCE;
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "pretokenizers");
    if (!cJSON_IsArray(a)) return xd_errf(e, "%s: pre_tokenizer Sequence: \"pretokenizers\" must be an array", path);
    p->n_items = cJSON_GetArraySize(a);
    p->items = xd_calloc((size_t)p->n_items + 1, sizeof *p->items);
    for (int i = 0; i < p->n_items; i++)
      if (pre_parse(&p->items[i], cJSON_GetArrayItem(a, i), path, e)) return -1;
    return 0;
  }
  return xd_errf(e, "%s: pre_tokenizer '%s' is not supported (supported: Split, ByteLevel, Metaspace, Digits, "
                 "WhitespaceSplit, Sequence)", path, ty);
}

static void post_free(tok_post *p) {
  if (!p) return;
  free(p->single);
  for (int i = 0; i < p->n_items; i++) post_free(&p->items[i]);
  free(p->items);
}
static int post_parse(tok_post *p, const cJSON *j, const char *path, xd_err *e) {
  memset(p, 0, sizeof *p);
  if (!cJSON_IsObject(j)) return xd_errf(e, "%s: post_processor: expected an object", path);
  const char *ty = json_type(j);
  if (!strcmp(ty, "ByteLevel")) { p->kind = POST_BYTELEVEL; return 0; }
  if (!strcmp(ty, "TemplateProcessing")) {
    p->kind = POST_TEMPLATE;
    const cJSON *single = cJSON_GetObjectItemCaseSensitive(j, "single");
    const cJSON *specials = cJSON_GetObjectItemCaseSensitive(j, "special_tokens");
    if (!cJSON_IsArray(single)) return xd_errf(e, "%s: post_processor TemplateProcessing: \"single\" must be an array", path);
    size_t cap = 8;
    p->single = xd_malloc(cap * sizeof *p->single);
    const cJSON *it;
    cJSON_ArrayForEach(it, single) {
      const cJSON *seq = cJSON_GetObjectItemCaseSensitive(it, "Sequence");
      const cJSON *sp = cJSON_GetObjectItemCaseSensitive(it, "SpecialToken");
      if (seq) {
        if ((size_t)p->n_single == cap) { cap *= 2; p->single = xd_realloc(p->single, cap * sizeof *p->single); }
        p->single[p->n_single++] = -1;
      } else if (sp) {
        const char *id = json_str(sp, "id");
        const cJSON *st = id ? cJSON_GetObjectItemCaseSensitive(specials, id) : NULL;
        const cJSON *ids = st ? cJSON_GetObjectItemCaseSensitive(st, "ids") : NULL;
        if (!cJSON_IsArray(ids))
          return xd_errf(e, "%s: post_processor TemplateProcessing: special token '%s' missing from special_tokens", path,
                         id ? id : "?");
        const cJSON *x;
        cJSON_ArrayForEach(x, ids) {
          int64_t v;
          if (json_int(x, 0, INT32_MAX - 1, &v)) return xd_errf(e, "%s: post_processor TemplateProcessing: bad id", path);
          if ((size_t)p->n_single == cap) { cap *= 2; p->single = xd_realloc(p->single, cap * sizeof *p->single); }
          p->single[p->n_single++] = (int32_t)v;
        }
      } else {
        return xd_errf(e, "%s: post_processor TemplateProcessing: bad template item", path);
      }
    }
    return 0;
  }
  if (!strcmp(ty, "BertProcessing") || !strcmp(ty, "RobertaProcessing")) {
    p->kind = POST_TEMPLATE;
    const cJSON *cls = cJSON_GetObjectItemCaseSensitive(j, "cls"), *sep = cJSON_GetObjectItemCaseSensitive(j, "sep");
    int64_t c, s;
    if (!cJSON_IsArray(cls) || !cJSON_IsArray(sep) || json_int(cJSON_GetArrayItem(cls, 1), 0, INT32_MAX - 1, &c) ||
        json_int(cJSON_GetArrayItem(sep, 1), 0, INT32_MAX - 1, &s))
      return xd_errf(e, "%s: post_processor %s: bad cls/sep", path, ty);
    p->single = xd_malloc(3 * sizeof *p->single);
    p->single[0] = (int32_t)c; p->single[1] = -1; p->single[2] = (int32_t)s;
    p->n_single = 3;
    return 0;
  }
  if (!strcmp(ty, "Sequence")) {
    p->kind = POST_SEQUENCE;
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "processors");
    if (!cJSON_IsArray(a)) return xd_errf(e, "%s: post_processor Sequence: \"processors\" must be an array", path);
    p->n_items = cJSON_GetArraySize(a);
    p->items = xd_calloc((size_t)p->n_items + 1, sizeof *p->items);
    for (int i = 0; i < p->n_items; i++)
      if (post_parse(&p->items[i], cJSON_GetArrayItem(a, i), path, e)) return -1;
    return 0;
  }
  return xd_errf(e, "%s: post_processor '%s' is not supported (supported: TemplateProcessing, ByteLevel, "
                 "BertProcessing, RobertaProcessing, Sequence)", path, ty);
}

static void dec_free(tok_dec *d) {
  if (!d) return;
  free(d->pat); free(d->content);
  if (d->re) pcre2_code_free(d->re);
  for (int i = 0; i < d->n_items; i++) dec_free(&d->items[i]);
  free(d->items);
}
static int dec_parse(tok_dec *d, const cJSON *j, const char *path, xd_err *e) {
  memset(d, 0, sizeof *d);
  if (!cJSON_IsObject(j)) return xd_errf(e, "%s: decoder: expected an object", path);
  const char *ty = json_type(j);
  if (!strcmp(ty, "ByteLevel")) { d->kind = DEC_BYTELEVEL; return 0; }
  if (!strcmp(ty, "ByteFallback")) { d->kind = DEC_BYTEFALLBACK; return 0; }
  if (!strcmp(ty, "Fuse")) { d->kind = DEC_FUSE; return 0; }
  if (!strcmp(ty, "Metaspace")) {
    d->kind = DEC_METASPACE;
    const char *r = json_str(j, "replacement");
    if (!r) r = "\xE2\x96\x81";
    if (cp_from_str(r, &d->cp)) return xd_errf(e, "%s: decoder Metaspace: replacement must be one character", path);
    if (parse_prepend(j, &d->prepend)) return xd_errf(e, "%s: decoder Metaspace: bad prepend_scheme", path);
    return 0;
  }
  if (!strcmp(ty, "Strip")) {
    d->kind = DEC_STRIP;
    const char *c = json_str(j, "content");
    int64_t a, b;
    if (!c || cp_from_str(c, &d->cp) || json_int(cJSON_GetObjectItemCaseSensitive(j, "start"), 0, 1 << 20, &a) ||
        json_int(cJSON_GetObjectItemCaseSensitive(j, "stop"), 0, 1 << 20, &b))
      return xd_errf(e, "%s: decoder Strip: needs content (one character), start, stop", path);
    d->start = (int)a; d->stop = (int)b;
    return 0;
  }
  if (!strcmp(ty, "Replace")) {
    d->kind = DEC_REPLACE;
    const char *c = json_str(j, "content");
    if (!c) return xd_errf(e, "%s: decoder Replace: missing string \"content\"", path);
    d->content = xd_strdup(c); d->content_len = strlen(c);
    return json_pattern(cJSON_GetObjectItemCaseSensitive(j, "pattern"), path, "decoder Replace", &d->pat, &d->pat_len,
                        &d->re, e);
  }
  if (!strcmp(ty, "Sequence")) {
    d->kind = DEC_SEQUENCE;
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "decoders");
    if (!cJSON_IsArray(a)) return xd_errf(e, "%s: decoder Sequence: \"decoders\" must be an array", path);
    d->n_items = cJSON_GetArraySize(a);
    d->items = xd_calloc((size_t)d->n_items + 1, sizeof *d->items);
    for (int i = 0; i < d->n_items; i++)
      if (dec_parse(&d->items[i], cJSON_GetArrayItem(a, i), path, e)) return -1;
    return 0;
  }
  return xd_errf(e, "%s: decoder '%s' is not supported (supported: ByteLevel, Metaspace, ByteFallback, Fuse, Strip, "
                 "Replace, Sequence)", path, ty);
}

/* Is there a ByteLevel pre-tokenizer, and is it last (so BPE can run on raw bytes)? */
static int pre_has_bytelevel(const tok_pre *p, int *last_ok) {
  if (!p) return 0;
  if (p->kind == PRE_BYTELEVEL) { *last_ok = 1; return 1; }
  if (p->kind != PRE_SEQUENCE) return 0;
  int found = 0;
  for (int i = 0; i < p->n_items; i++) {
    int lo = 0;
    if (pre_has_bytelevel(&p->items[i], &lo)) { found = 1; *last_ok = (i == p->n_items - 1) && lo; }
  }
  return found;
}

/* ---- loading -------------------------------------------------------------------- */
void xd_tokenizer_free(xd_tokenizer *t) {
  if (!t) return;
  if (t->tok_str) for (int32_t i = 0; i < t->n_ids; i++) free(t->tok_str[i]);
  free(t->tok_str); free(t->tok_len);
  tok_strmap_free(&t->vocab);
  tok_strmap_free(&t->raw_vocab);
  tok_pairmap_free(&t->merges);
  for (int i = 0; i < t->n_added; i++) { free(t->added[i].content); free(t->added[i].match); }
  free(t->added); free(t->added_by_id); free(t->added_order);
  free(t->cont_prefix); free(t->eow_suffix);
  norm_free(t->norm); free(t->norm);
  pre_free(t->pre); free(t->pre);
  post_free(t->post); free(t->post);
  dec_free(t->dec); free(t->dec);
  free(t->eos_str); free(t->bos_str); free(t->cfg_path);
  free(t->path);
  free(t);
}

/* Convert a byte-level token string to raw bytes; returns 0 if some char is outside the alphabet. */
static int bytelevel_to_raw(const char *s, size_t len, char *out, size_t *out_len) {
  size_t n = 0;
  for (size_t i = 0; i < len;) {
    uint32_t cp;
    i += (size_t)tok_utf8_next(s + i, len - i, &cp);
    int b = tok_cp_to_byte(cp);
    if (b < 0) return 0;
    out[n++] = (char)b;
  }
  *out_len = n;
  return 1;
}

static int load_model(xd_tokenizer *t, const cJSON *model, const cJSON *added, xd_err *e) {
  const char *path = t->path;
  if (!cJSON_IsObject(model)) return xd_errf(e, "%s: missing or invalid \"model\"", path);
  const char *ty = json_str(model, "type");
  const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
  const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
  if (ty && strcmp(ty, "BPE")) return xd_errf(e, "%s: model type '%s' is not supported (only BPE)", path, ty);
  if (!cJSON_IsObject(vocab)) return xd_errf(e, "%s: model.vocab: expected an object of token -> id", path);
  if (!cJSON_IsArray(merges)) return xd_errf(e, "%s: model.merges: expected an array", path);
  const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
  if (dropout && !cJSON_IsNull(dropout) && !(cJSON_IsNumber(dropout) && dropout->valuedouble == 0))
    return xd_errf(e, "%s: model.dropout is not supported (encoding would not be deterministic)", path);
  /* ids */
  int64_t max_id = -1;
  int n_vocab = cJSON_GetArraySize(vocab);
  const cJSON *it;
  cJSON_ArrayForEach(it, vocab) {
    int64_t v;
    if (json_int(it, 0, 1 << 30, &v)) return xd_errf(e, "%s: model.vocab: token id of '%.40s' is not an integer in [0, 2^30]", path, it->string);
    if (v > max_id) max_id = v;
  }
  if (added && !cJSON_IsArray(added)) return xd_errf(e, "%s: added_tokens: expected an array", path);
  cJSON_ArrayForEach(it, added) {
    int64_t v;
    if (!cJSON_IsObject(it) || !json_str(it, "content") || !*json_str(it, "content") ||
        json_int(cJSON_GetObjectItemCaseSensitive(it, "id"), 0, 1 << 30, &v))
      return xd_errf(e, "%s: added_tokens: each entry needs a non-empty \"content\" and an integer \"id\"", path);
    if (v > max_id) max_id = v;
  }
  /* ids index dense tables: refuse sparse ids that would make them huge (real files are dense) */
  int64_t n_entries = (int64_t)n_vocab + (added ? cJSON_GetArraySize(added) : 0);
  if (max_id >= (1 << 24) || max_id > 16 * n_entries + 4096)
    return xd_errf(e, "%s: token ids up to %lld for %lld tokens: ids must be dense and below 2^24", path,
                   (long long)max_id, (long long)n_entries);
  t->n_ids = (int32_t)(max_id + 1);
  t->tok_str = xd_calloc((size_t)t->n_ids + 1, sizeof *t->tok_str);
  t->tok_len = xd_calloc((size_t)t->n_ids + 1, sizeof *t->tok_len);
  tok_strmap_init(&t->vocab, (size_t)n_vocab);
  cJSON_ArrayForEach(it, vocab) {
    int32_t id = (int32_t)it->valuedouble;
    size_t len = strlen(it->string);
    tok_strmap_put(&t->vocab, it->string, len, id);
    if (!t->tok_str[id]) { t->tok_str[id] = xd_strdup(it->string); t->tok_len[id] = (uint32_t)len; }
  }
  /* options */
  t->ignore_merges = json_bool(model, "ignore_merges", 0);
  t->byte_fallback = json_bool(model, "byte_fallback", 0);
  t->fuse_unk = json_bool(model, "fuse_unk", 0);
  const char *cp = json_str(model, "continuing_subword_prefix"), *sf = json_str(model, "end_of_word_suffix");
  if (cp && *cp) { t->cont_prefix = xd_strdup(cp); t->cont_prefix_len = strlen(cp); }
  if (sf && *sf) { t->eow_suffix = xd_strdup(sf); t->eow_suffix_len = strlen(sf); }
  const char *unk = json_str(model, "unk_token");
  t->unk_id = -1;
  if (unk && !tok_strmap_get(&t->vocab, unk, strlen(unk), &t->unk_id))
    return xd_errf(e, "%s: model.unk_token '%s' is not in the vocab", path, unk);
  for (int b = 0; b < 256; b++) {
    char name[8];
    snprintf(name, sizeof name, "<0x%02X>", b);
    if (!tok_strmap_get(&t->vocab, name, 6, &t->byte_fb_id[b])) t->byte_fb_id[b] = -1;
  }
  /* merges: rank = index; merged string = a + b without the continuing prefix */
  int n_merges = cJSON_GetArraySize(merges);
  tok_pairmap_init(&t->merges, (size_t)n_merges);
  size_t bufcap = 256;
  char *buf = xd_malloc(bufcap);
  int rank = 0;
  cJSON_ArrayForEach(it, merges) {
    const char *a, *b;
    size_t la, lb;
    const char *sp = NULL;
    if (cJSON_IsString(it)) {
      a = it->valuestring;
      sp = strchr(a, ' ');
      if (!sp || strchr(sp + 1, ' ')) { free(buf); return xd_errf(e, "%s: model.merges[%d]: '%.60s' is not two tokens separated by one space", path, rank, a); }
      la = (size_t)(sp - a); b = sp + 1; lb = strlen(b);
    } else if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 2 && cJSON_IsString(cJSON_GetArrayItem(it, 0)) &&
               cJSON_IsString(cJSON_GetArrayItem(it, 1))) {
      a = cJSON_GetArrayItem(it, 0)->valuestring; la = strlen(a);
      b = cJSON_GetArrayItem(it, 1)->valuestring; lb = strlen(b);
    } else {
      free(buf);
      return xd_errf(e, "%s: model.merges[%d]: expected \"a b\" or [\"a\", \"b\"]", path, rank);
    }
    int32_t ia, ib, io;
    if (!tok_strmap_get(&t->vocab, a, la, &ia) || !tok_strmap_get(&t->vocab, b, lb, &ib)) {
      free(buf);
      return xd_errf(e, "%s: model.merges[%d]: token of '%.*s' + '%.*s' not in the vocab", path, rank, (int)la, a, (int)lb, b);
    }
    size_t skip = (t->cont_prefix_len && lb >= t->cont_prefix_len && !memcmp(b, t->cont_prefix, t->cont_prefix_len)) ? t->cont_prefix_len : 0;
    size_t need = la + lb - skip;
    if (need > bufcap) { bufcap = need * 2; buf = xd_realloc(buf, bufcap); }
    memcpy(buf, a, la);
    memcpy(buf + la, b + skip, lb - skip);
    if (!tok_strmap_get(&t->vocab, buf, need, &io)) {
      xd_errf(e, "%s: model.merges[%d]: merged token '%.*s' not in the vocab", path, rank, (int)need, buf);
      free(buf);
      return -1;
    }
    tok_pairmap_put(&t->merges, ia, ib, rank, io);
    rank++;
  }
  free(buf);
  /* added tokens */
  t->n_added = added ? cJSON_GetArraySize(added) : 0;
  t->added = xd_calloc((size_t)t->n_added + 1, sizeof *t->added);
  t->added_by_id = xd_malloc(((size_t)t->n_ids + 1) * sizeof *t->added_by_id);
  for (int32_t i = 0; i < t->n_ids; i++) t->added_by_id[i] = -1;
  int k = 0;
  cJSON_ArrayForEach(it, added) {
    tok_added *a = &t->added[k];
    const char *c = json_str(it, "content");
    a->content = xd_strdup(c);
    a->len = strlen(c);
    if (!tok_utf8_valid(c, a->len)) return xd_errf(e, "%s: added_tokens: content is not valid UTF-8", path);
    a->id = (int32_t)cJSON_GetObjectItemCaseSensitive(it, "id")->valuedouble;
    a->special = json_bool(it, "special", 0);
    a->lstrip = json_bool(it, "lstrip", 0);
    a->rstrip = json_bool(it, "rstrip", 0);
    a->normalized = json_bool(it, "normalized", !a->special);
    a->single_word = json_bool(it, "single_word", 0);
    t->any_normalized_added |= a->normalized;
    t->added_by_id[a->id] = k;
    k++;
  }
  return 0;
}

static int load_config(xd_tokenizer *t, const char *cfg_path, xd_err *e);

/* SentencePiece-style vocabularies (Llama 2, Mistral) have no pre-tokenizer, so a whole text is one
 * BPE word. When no vocab token holds "\u2581" right after another character, no merge can join
 * across such a spot, so cutting the word there gives the same tokens — and short, cacheable
 * words. Only without ignore_merges / prefixes / suffixes (they look at whole words). */
static void set_meta_split(xd_tokenizer *t) {
  static const char MS[] = "\xE2\x96\x81";
  int32_t id;
  if (t->byte_level || t->ignore_merges || t->cont_prefix || t->eow_suffix || !tok_strmap_get(&t->vocab, MS, 3, &id)) return;
  for (int32_t i = 0; i < t->n_ids; i++) {
    const char *v = t->tok_str[i];
    if (!v) continue;
    for (const char *q = strstr(v, MS); q; q = strstr(q + 3, MS))
      if (q > v && !(q - v >= 3 && !memcmp(q - 3, MS, 3))) return;
  }
  t->meta_split = 1;
}
static int added_match_strings(xd_tokenizer *t, xd_err *e);
static int load_common(xd_tokenizer **out, char *json_path, char *cfg_path, const char *text, size_t size, xd_err *e);

int xd_tokenizer_load(xd_tokenizer **out, const char *path, xd_err *e) {
  *out = NULL;
  if (!xd_file_exists(path) && !xd_is_dir(path))
    return xd_errf(e, "%s: not found (expected a directory holding tokenizer.json, or a tokenizer.json file)", path);
  char *json_path, *cfg_path;
  if (xd_is_dir(path)) {
    json_path = xd_path_join(path, "tokenizer.json");
    cfg_path = xd_path_join(path, "tokenizer_config.json");
  } else {
    json_path = xd_strdup(path);
    char *dir = xd_strdup(path);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0; else strcpy(dir, ".");
    cfg_path = xd_path_join(dir, "tokenizer_config.json");
    free(dir);
  }
  char *text = NULL;
  size_t size;
  if (xd_read_file(json_path, TOK_MAX_FILE, &text, &size, e)) { free(json_path); free(cfg_path); return -1; }
  int rc = load_common(out, json_path, cfg_path, text, size, e);
  free(text);
  return rc;
}

int xd_tokenizer_load_json(xd_tokenizer **out, const char *json, size_t len, const char *name, xd_err *e) {
  *out = NULL;
  return load_common(out, xd_strdup(name ? name : "<memory>"), NULL, json, len, e);
}

/* json_path (owned) names the source in messages; cfg_path (owned, may be NULL) is the
 * optional tokenizer_config.json. */
static int load_common(xd_tokenizer **out, char *json_path, char *cfg_path, const char *text, size_t size, xd_err *e) {
  xd_tokenizer *t = xd_calloc(1, sizeof *t);
  t->path = json_path;
  t->bos_id = t->eos_id = -1;
  int rc = -1;
  const char *ep = NULL; /* parse end from the call itself: cJSON_GetErrorPtr is global state */
  cJSON *root = cJSON_ParseWithLengthOpts(text, size, &ep, 0);
  if (!root) {
    size_t off = (ep && ep >= text && ep <= text + size) ? (size_t)(ep - text) : 0;
    xd_errf(e, "%s: invalid JSON near byte %zu", json_path, off);
    goto done;
  }
  if (!cJSON_IsObject(root)) { xd_errf(e, "%s: expected a JSON object", json_path); goto done; }
  if (load_model(t, cJSON_GetObjectItemCaseSensitive(root, "model"), cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), e)) goto done;
  const cJSON *j;
  if ((j = cJSON_GetObjectItemCaseSensitive(root, "normalizer")) && !cJSON_IsNull(j)) {
    t->norm = xd_calloc(1, sizeof *t->norm);
    if (norm_parse(t->norm, j, json_path, e)) goto done;
  }
  if ((j = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer")) && !cJSON_IsNull(j)) {
    t->pre = xd_calloc(1, sizeof *t->pre);
    if (pre_parse(t->pre, j, json_path, e)) goto done;
  }
  if ((j = cJSON_GetObjectItemCaseSensitive(root, "post_processor")) && !cJSON_IsNull(j)) {
    t->post = xd_calloc(1, sizeof *t->post);
    if (post_parse(t->post, j, json_path, e)) goto done;
  }
  if ((j = cJSON_GetObjectItemCaseSensitive(root, "decoder")) && !cJSON_IsNull(j)) {
    t->dec = xd_calloc(1, sizeof *t->dec);
    if (dec_parse(t->dec, j, json_path, e)) goto done;
  }
  if (added_match_strings(t, e)) goto done;
  int last_ok = 0;
  if (pre_has_bytelevel(t->pre, &last_ok)) {
    if (!last_ok) { xd_errf(e, "%s: pre_tokenizer: ByteLevel must be the last pre-tokenizer", json_path); goto done; }
    t->byte_level = 1;
    tok_strmap_init(&t->raw_vocab, t->vocab.n);
    char *raw = xd_malloc(1024);
    size_t rcap = 1024;
    for (int32_t id = 0; id < t->n_ids; id++) {
      if (!t->tok_str[id]) continue;
      size_t rl;
      if (t->tok_len[id] > rcap) { rcap = t->tok_len[id] * 2; raw = xd_realloc(raw, rcap); }
      int32_t chk;
      /* only the id the vocab maps this string to (duplicates keep the map's choice) */
      if (!tok_strmap_get(&t->vocab, t->tok_str[id], t->tok_len[id], &chk) || chk != id) continue;
      if (bytelevel_to_raw(t->tok_str[id], t->tok_len[id], raw, &rl)) tok_strmap_put(&t->raw_vocab, raw, rl, id);
    }
    free(raw);
    for (int b = 0; b < 256; b++) {
      char s[4];
      int l = tok_utf8_put(tok_byte_to_cp((uint8_t)b), s);
      if (!tok_strmap_get(&t->vocab, s, (size_t)l, &t->byte_id[b])) t->byte_id[b] = -1;
    }
  }
  set_meta_split(t);
  if (load_config(t, cfg_path, e)) goto done;
  rc = 0;
done:
  cJSON_Delete(root);
  free(cfg_path);
  if (rc) { xd_tokenizer_free(t); return -1; }
  *out = t;
  return 0;
}

/* ---- tokenizer_config.json: bos/eos, chat template ----------------------------- */
static char *config_token(const cJSON *cfg, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
  if (cJSON_IsString(v)) return xd_strdup(v->valuestring);
  if (cJSON_IsObject(v) && json_str(v, "content")) return xd_strdup(json_str(v, "content"));
  return NULL;
}
int tok_detect_chat(const char *tmpl, tok_chat_format *fmt, int *gen_always);

static int load_config(xd_tokenizer *t, const char *cfg_path, xd_err *e) {
  t->cfg_path = xd_strdup(cfg_path ? cfg_path : "tokenizer_config.json");
  if (cfg_path && xd_file_exists(cfg_path)) {
    char *text;
    size_t size;
    if (xd_read_file(cfg_path, 64u << 20, &text, &size, e)) return -1;
    cJSON *cfg = cJSON_ParseWithLength(text, size);
    free(text);
    if (!cJSON_IsObject(cfg)) { cJSON_Delete(cfg); return xd_errf(e, "%s: invalid JSON (expected an object)", cfg_path); }
    t->bos_str = config_token(cfg, "bos_token");
    t->eos_str = config_token(cfg, "eos_token");
    const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
    const char *tmpl = NULL;
    if (cJSON_IsString(ct)) tmpl = ct->valuestring;
    else if (cJSON_IsArray(ct)) { /* [{name, template}], use "default" */
      const cJSON *x;
      cJSON_ArrayForEach(x, ct) if (json_str(x, "name") && !strcmp(json_str(x, "name"), "default")) tmpl = json_str(x, "template");
    }
    if (tmpl) { t->chat_template_seen = 1; tok_detect_chat(tmpl, &t->chat, &t->chat_gen_always); }
    cJSON_Delete(cfg);
  }
  if (t->bos_str) t->bos_id = xd_tokenizer_token_to_id(t, t->bos_str);
  if (t->eos_str) t->eos_id = xd_tokenizer_token_to_id(t, t->eos_str);
  if (!t->bos_str && t->post && t->post->kind == POST_TEMPLATE && t->post->n_single > 0 && t->post->single[0] >= 0)
    t->bos_id = t->post->single[0];
  if (!t->eos_str) { /* no config: the usual end-of-text tokens */
    static const char *const cands[] = {"<|end_of_text|>", "<|endoftext|>", "</s>", "<|im_end|>"};
    for (size_t i = 0; i < sizeof cands / sizeof cands[0] && t->eos_id < 0; i++) {
      t->eos_id = xd_tokenizer_token_to_id(t, cands[i]);
      if (t->eos_id >= 0) t->eos_str = xd_strdup(cands[i]);
    }
  }
  if (!t->bos_str && t->bos_id >= 0) {
    const char *s = t->added_by_id[t->bos_id] >= 0 ? t->added[t->added_by_id[t->bos_id]].content : t->tok_str[t->bos_id];
    if (s) t->bos_str = xd_strdup(s);
  }
  return 0;
}

int xd_utf8_valid(const char *s, size_t len) { return tok_utf8_valid(s, len); }

int xd_tokenizer_vocab_size(const xd_tokenizer *t) { return t->n_ids; }
int32_t xd_tokenizer_token_to_id(const xd_tokenizer *t, const char *token) {
  size_t len = strlen(token);
  for (int i = 0; i < t->n_added; i++)
    if (t->added[i].len == len && !memcmp(t->added[i].content, token, len)) return t->added[i].id;
  int32_t id;
  return tok_strmap_get(&t->vocab, token, len, &id) ? id : -1;
}
int32_t xd_tokenizer_bos_id(const xd_tokenizer *t) { return t->bos_id; }
int32_t xd_tokenizer_eos_id(const xd_tokenizer *t) { return t->eos_id; }
const char *xd_tokenizer_id_to_token(const xd_tokenizer *t, int32_t id) {
  if (id < 0 || id >= t->n_ids) return NULL;
  if (t->added_by_id[id] >= 0) return t->added[t->added_by_id[id]].content;
  return t->tok_str[id];
}
int xd_tokenizer_is_special(const xd_tokenizer *t, int32_t id) {
  return id >= 0 && id < t->n_ids && t->added_by_id[id] >= 0 && t->added[t->added_by_id[id]].special;
}

/* ---- encoding --------------------------------------------------------------------- */
typedef struct { const char *s; size_t len; int origin0; } tok_piece;
typedef struct { tok_piece *p; size_t n, cap; } tok_pieces;
static void pieces_push(tok_pieces *l, const char *s, size_t len, int origin0) {
  if (!len) return;
  if (l->n == l->cap) { l->cap = l->cap ? l->cap * 2 : 64; l->p = xd_realloc(l->p, l->cap * sizeof *l->p); }
  l->p[l->n++] = (tok_piece){s, len, origin0};
}

typedef struct { size_t s, e; int m; } tok_span;
typedef struct { tok_span *v; size_t n, cap; } tok_spans;
static void spans_push(tok_spans *l, size_t s, size_t e, int m) {
  if (l->n == l->cap) { l->cap = l->cap ? l->cap * 2 : 64; l->v = xd_realloc(l->v, l->cap * sizeof *l->v); }
  l->v[l->n++] = (tok_span){s, e, m};
}

typedef struct {
  const xd_tokenizer *t;
  tok_work *w;
  pcre2_match_data *md;
  pcre2_match_context *mctx;
  pcre2_jit_stack *jit;
  tok_arena arena;
  tok_spans spans, spans2;
  int32_t *ids;
  size_t n, cap;
  xd_err *e;
} tok_ctx;

/* All regex matches of re in s as (gap, 0) / (match, 1) spans covering s. */
static int regex_spans(tok_ctx *c, const pcre2_code *re, const char *s, size_t len, tok_spans *out) {
  out->n = 0;
  size_t prev = 0, off = 0;
  while (off <= len) {
    int rc = pcre2_match(re, (PCRE2_SPTR)s, len, off, PCRE2_NO_UTF_CHECK, c->md, c->mctx);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT && !c->jit) { /* long input: give JIT a bigger stack, retry */
      c->jit = pcre2_jit_stack_create(32 * 1024, 64 * 1024 * 1024, NULL);
      if (c->jit) { pcre2_jit_stack_assign(c->mctx, NULL, c->jit); continue; }
    }
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR buf[128];
      pcre2_get_error_message(rc, buf, sizeof buf);
      return xd_errf(c->e, "%s: regex match failed: %s", c->t->path, (const char *)buf);
    }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
    size_t ms = ov[0], me = ov[1];
    if (ms != prev) spans_push(out, prev, ms, 0);
    spans_push(out, ms, me, 1);
    prev = me;
    if (me == ms) { /* empty match: step one character */
      if (me >= len) break;
      uint32_t cp;
      off = me + (size_t)tok_utf8_next(s + me, len - me, &cp);
    } else {
      off = me;
    }
  }
  if (prev != len) spans_push(out, prev, len, 0);
  return 0;
}
static void literal_spans(const char *pat, size_t pl, const char *s, size_t len, tok_spans *out) {
  out->n = 0;
  size_t prev = 0;
  if (pl) {
    for (size_t i = 0; i + pl <= len;) {
      if (!memcmp(s + i, pat, pl)) {
        if (i != prev) spans_push(out, prev, i, 0);
        spans_push(out, i, i + pl, 1);
        i += pl;
        prev = i;
      } else {
        i++;
      }
    }
  }
  if (prev != len) spans_push(out, prev, len, 0);
}
/* Each character satisfying pred is its own match. */
static void char_spans(int (*pred)(uint32_t, const void *), const void *arg, const char *s, size_t len, tok_spans *out) {
  out->n = 0;
  size_t prev = 0;
  for (size_t i = 0; i < len;) {
    uint32_t cp;
    size_t k = (size_t)tok_utf8_next(s + i, len - i, &cp);
    if (pred(cp, arg)) {
      if (i != prev) spans_push(out, prev, i, 0);
      spans_push(out, i, i + k, 1);
      prev = i + k;
    }
    i += k;
  }
  if (prev != len) spans_push(out, prev, len, 0);
}

/* Apply an HF SplitDelimiterBehavior to spans of piece p, appending pieces to out. */
static void apply_behavior(const tok_piece *p, tok_spans *sp, tok_split_behavior b, int invert, tok_pieces *out) {
  if (invert) for (size_t i = 0; i < sp->n; i++) sp->v[i].m = !sp->v[i].m;
  size_t n = 0; /* compact in place into (s, e) pieces; m = keep */
  tok_span *v = sp->v;
  switch (b) {
  case SPLIT_ISOLATED: n = sp->n; break;
  case SPLIT_REMOVED:
    for (size_t i = 0; i < sp->n; i++) if (!v[i].m) v[n++] = v[i];
    break;
  case SPLIT_MERGED_PREV: {
    int prev_m = 0;
    for (size_t i = 0; i < sp->n; i++) {
      int m = v[i].m;
      if (m && !prev_m && n > 0) v[n - 1].e = v[i].e;
      else v[n++] = v[i];
      prev_m = m;
    }
    break;
  }
  case SPLIT_MERGED_NEXT: { /* walk backwards */
    int prev_m = 0;
    size_t w = sp->n;
    for (size_t i = sp->n; i-- > 0;) {
      int m = v[i].m;
      if (m && !prev_m && w < sp->n) v[w].s = v[i].s;
      else v[--w] = v[i];
      prev_m = m;
    }
    n = sp->n - w;
    memmove(v, v + w, n * sizeof *v);
    break;
  }
  case SPLIT_CONTIGUOUS: {
    int prev_m = 0;
    for (size_t i = 0; i < sp->n; i++) {
      int m = v[i].m;
      if (m == prev_m && n > 0) v[n - 1].e = v[i].e;
      else v[n++] = v[i];
      prev_m = m;
    }
    break;
  }
  }
  for (size_t i = 0; i < n; i++) pieces_push(out, p->s + v[i].s, v[i].e - v[i].s, p->origin0 && v[i].s == 0);
}

static int pred_eq(uint32_t cp, const void *arg) { return cp == *(const uint32_t *)arg; }
/* Rust char::is_numeric (categories Nd, Nl, No), what HF's Digits pre-tokenizer splits on */
static int pred_digit(uint32_t cp, const void *arg) {
  (void)arg;
  if (cp < 0x80) return cp >= '0' && cp <= '9';
  utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)cp);
  return k == UTF8PROC_CATEGORY_ND || k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_NO;
}
static int pred_space(uint32_t cp, const void *arg) { (void)arg; return cp_is_space(cp); }

static int pre_apply(tok_ctx *c, const tok_pre *pre, tok_pieces *in, tok_pieces *out) {
  out->n = 0;
  if (pre->kind == PRE_SEQUENCE) {
    tok_pieces a = {0}, b = {0};
    for (size_t i = 0; i < in->n; i++) pieces_push(&a, in->p[i].s, in->p[i].len, in->p[i].origin0);
    for (int k = 0; k < pre->n_items; k++) {
      if (pre_apply(c, &pre->items[k], &a, &b)) { free(a.p); free(b.p); return -1; }
      tok_pieces tmp = a; a = b; b = tmp;
    }
    for (size_t i = 0; i < a.n; i++) pieces_push(out, a.p[i].s, a.p[i].len, a.p[i].origin0);
    free(a.p); free(b.p);
    return 0;
  }
  for (size_t i = 0; i < in->n; i++) {
    tok_piece p = in->p[i];
    switch (pre->kind) {
    case PRE_SPLIT:
      if (pre->re) { if (regex_spans(c, pre->re, p.s, p.len, &c->spans)) return -1; }
      else literal_spans(pre->literal, pre->literal_len, p.s, p.len, &c->spans);
      apply_behavior(&p, &c->spans, pre->behavior, pre->invert, out);
      break;
    case PRE_BYTELEVEL:
      /* raw-byte BPE: the byte -> char mapping is implicit; only the prefix space and the regex act */
      if (pre->add_prefix_space && p.s[0] != ' ') {
        char *b = arena_alloc(&c->arena, p.len + 1);
        b[0] = ' ';
        memcpy(b + 1, p.s, p.len);
        p.s = b; p.len++;
      }
      if (pre->use_regex) {
        if (regex_spans(c, pre->re, p.s, p.len, &c->spans)) return -1;
        apply_behavior(&p, &c->spans, SPLIT_ISOLATED, 0, out);
      } else {
        pieces_push(out, p.s, p.len, p.origin0);
      }
      break;
    case PRE_METASPACE: {
      size_t cnt = 0;
      for (size_t k = 0; k < p.len; k++) cnt += p.s[k] == ' ';
      char *b = arena_alloc(&c->arena, p.len + cnt * (size_t)pre->repl_len + (size_t)pre->repl_len);
      size_t n = 0;
      int starts = p.len >= (size_t)pre->repl_len && !memcmp(p.s, pre->repl, (size_t)pre->repl_len);
      if (p.s[0] == ' ') starts = 1;
      if (!starts && (pre->prepend == PREPEND_ALWAYS || (pre->prepend == PREPEND_FIRST && p.origin0))) {
        memcpy(b, pre->repl, (size_t)pre->repl_len);
        n += (size_t)pre->repl_len;
      }
      for (size_t k = 0; k < p.len; k++) {
        if (p.s[k] == ' ') { memcpy(b + n, pre->repl, (size_t)pre->repl_len); n += (size_t)pre->repl_len; }
        else b[n++] = p.s[k];
      }
      tok_piece q = {b, n, p.origin0};
      if (pre->split) {
        char_spans(pred_eq, &pre->repl_cp, q.s, q.len, &c->spans);
        apply_behavior(&q, &c->spans, SPLIT_MERGED_NEXT, 0, out);
      } else {
        pieces_push(out, q.s, q.len, q.origin0);
      }
      break;
    }
    case PRE_DIGITS:
      char_spans(pred_digit, NULL, p.s, p.len, &c->spans);
      apply_behavior(&p, &c->spans, pre->individual_digits ? SPLIT_ISOLATED : SPLIT_CONTIGUOUS, 0, out);
      break;
    case PRE_WHITESPACE_SPLIT:
      char_spans(pred_space, NULL, p.s, p.len, &c->spans);
      apply_behavior(&p, &c->spans, SPLIT_REMOVED, 0, out);
      break;
    case PRE_SEQUENCE: break;
    }
  }
  return 0;
}

/* Normalize s into a new arena buffer (or return s unchanged). */
static int norm_apply(tok_ctx *c, const tok_norm *nm, const char **s, size_t *len) {
  switch (nm->kind) {
  case NORM_SEQUENCE:
    for (int i = 0; i < nm->n_items; i++) if (norm_apply(c, &nm->items[i], s, len)) return -1;
    return 0;
  case NORM_NFC: case NORM_NFKC: case NORM_NFD: case NORM_NFKD: {
    if (!*len) return 0;
    int ascii = 1;
    for (size_t i = 0; i < *len && ascii; i++) ascii = (uint8_t)(*s)[i] < 0x80;
    if (ascii) return 0; /* ASCII is invariant under every normal form */
    int opt = UTF8PROC_STABLE;
    if (nm->kind == NORM_NFC || nm->kind == NORM_NFKC) opt |= UTF8PROC_COMPOSE; else opt |= UTF8PROC_DECOMPOSE;
    if (nm->kind == NORM_NFKC || nm->kind == NORM_NFKD) opt |= UTF8PROC_COMPAT;
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)*s, (utf8proc_ssize_t)*len, &dst, (utf8proc_option_t)opt);
    if (r < 0) { free(dst); return xd_errf(c->e, "%s: normalizer failed: %s", c->t->path, utf8proc_errmsg(r)); }
    char *b = arena_alloc(&c->arena, (size_t)r);
    memcpy(b, dst, (size_t)r);
    free(dst);
    *s = b; *len = (size_t)r;
    return 0;
  }
  case NORM_LOWERCASE: {
    char *b = arena_alloc(&c->arena, *len * 3 + 4);
    size_t n = 0;
    for (size_t i = 0; i < *len;) {
      uint32_t cp;
      i += (size_t)tok_utf8_next(*s + i, *len - i, &cp);
      /* Rust char::to_lowercase: U+0130 is the one unconditional multi-char mapping */
      if (cp == 0x130) { n += (size_t)tok_utf8_put('i', b + n); n += (size_t)tok_utf8_put(0x307, b + n); }
      else n += (size_t)tok_utf8_put((uint32_t)utf8proc_tolower((utf8proc_int32_t)cp), b + n);
    }
    *s = b; *len = n;
    return 0;
  }
  case NORM_STRIP: {
    size_t a = 0, z = *len;
    if (nm->strip_left) while (a < z) { uint32_t cp; int k = tok_utf8_next(*s + a, z - a, &cp); if (!cp_is_space(cp)) break; a += (size_t)k; }
    if (nm->strip_right) while (z > a) { uint32_t cp = cp_before(*s, z); if (!cp_is_space(cp)) break; char tmp[4]; z -= (size_t)tok_utf8_put(cp, tmp); }
    *s += a; *len = z - a;
    return 0;
  }
  case NORM_PREPEND: {
    if (!*len) return 0;
    char *b = arena_alloc(&c->arena, *len + nm->str_len);
    memcpy(b, nm->str, nm->str_len);
    memcpy(b + nm->str_len, *s, *len);
    *s = b; *len += nm->str_len;
    return 0;
  }
  case NORM_REPLACE: {
    if (nm->re) { if (regex_spans(c, nm->re, *s, *len, &c->spans2)) return -1; }
    else literal_spans(nm->str, nm->str_len, *s, *len, &c->spans2);
    size_t total = 0;
    for (size_t i = 0; i < c->spans2.n; i++) total += c->spans2.v[i].m ? nm->content_len : c->spans2.v[i].e - c->spans2.v[i].s;
    char *b = arena_alloc(&c->arena, total);
    size_t n = 0;
    for (size_t i = 0; i < c->spans2.n; i++) {
      tok_span sp = c->spans2.v[i];
      if (sp.m) { memcpy(b + n, nm->content, nm->content_len); n += nm->content_len; }
      else { memcpy(b + n, *s + sp.s, sp.e - sp.s); n += sp.e - sp.s; }
    }
    *s = b; *len = n;
    return 0;
  }
  }
  return 0;
}

/* Split s on added tokens of the given class (normalized or not), leftmost-longest, with
 * single_word / lstrip / rstrip as HF's AddedVocabulary. Spans: m = added index + 1, 0 = text. */
static void added_spans(const xd_tokenizer *t, int normalized, const char *s, size_t len, tok_spans *out) {
  out->n = 0;
  size_t prev = 0, i = 0;
  while (i < len) {
    uint8_t b0 = (uint8_t)s[i];
    if (t->added_start[b0] == t->added_start[b0 + 1]) { i++; continue; }
    int best = -1;
    for (int q = t->added_start[b0]; q < t->added_start[b0 + 1]; q++) {
      int k = t->added_order[q];
      const tok_added *a = &t->added[k];
      if (a->normalized != normalized || !a->match_len || a->match_len > len - i ||
          (best >= 0 && a->match_len <= t->added[best].match_len)) continue;
      if (!memcmp(s + i, a->match, a->match_len)) best = k;
    }
    if (best < 0) { i++; continue; }
    const tok_added *a = &t->added[best];
    size_t ms = i, me = i + a->match_len;
    if (a->single_word) {
      int ok_l = ms == 0 || !cp_is_word(cp_before(s, ms));
      uint32_t cp = 0;
      int ok_r = me == len || (tok_utf8_next(s + me, len - me, &cp), !cp_is_word(cp));
      if (!ok_l || !ok_r) { i = me; continue; }
    }
    if (a->lstrip) while (ms > prev) { uint32_t cp = cp_before(s, ms); if (!cp_is_space(cp)) break; char tmp[4]; ms -= (size_t)tok_utf8_put(cp, tmp); }
    if (a->rstrip) while (me < len) { uint32_t cp; int k = tok_utf8_next(s + me, len - me, &cp); if (!cp_is_space(cp)) break; me += (size_t)k; }
    if (ms > prev) spans_push(out, prev, ms, 0);
    spans_push(out, ms, me, best + 1);
    prev = i = me;
  }
  if (prev < len) spans_push(out, prev, len, 0);
}

static int encode_text(tok_ctx *c, const char *s, size_t len, int origin0) {
  const xd_tokenizer *t = c->t;
  if (t->norm && norm_apply(c, t->norm, &s, &len)) return -1;
  tok_spans nsp = {0};
  if (t->any_normalized_added) added_spans(t, 1, s, len, &nsp);
  else spans_push(&nsp, 0, len, 0);
  int rc = 0;
  tok_pieces in = {0}, out = {0};
  for (size_t k = 0; k < nsp.n && !rc; k++) {
    tok_span sp = nsp.v[k];
    if (sp.m) { tok_push_id(&c->ids, &c->n, &c->cap, t->added[sp.m - 1].id); continue; }
    in.n = 0;
    pieces_push(&in, s + sp.s, sp.e - sp.s, origin0 && sp.s == 0);
    tok_pieces *fin = &in;
    if (t->pre) { rc = pre_apply(c, t->pre, &in, &out); fin = &out; }
    for (size_t i = 0; !rc && i < fin->n; i++) {
      const char *w = fin->p[i].s;
      size_t wl = fin->p[i].len, a = 0;
      if (t->meta_split) /* cut before each "\u2581" that follows another character */
        for (size_t q = 1; q + 3 <= wl; q++)
          if (!memcmp(w + q, "\xE2\x96\x81", 3) && !(q >= 3 && !memcmp(w + q - 3, "\xE2\x96\x81", 3))) {
            tok_bpe_word(t, c->w, w + a, q - a, &c->ids, &c->n, &c->cap);
            a = q;
          }
      tok_bpe_word(t, c->w, w + a, wl - a, &c->ids, &c->n, &c->cap);
    }
  }
  free(in.p); free(out.p); free(nsp.v);
  return rc;
}

static void post_apply(const tok_post *p, int32_t **ids, size_t *n, size_t *cap) {
  if (p->kind == POST_SEQUENCE) { for (int i = 0; i < p->n_items; i++) post_apply(&p->items[i], ids, n, cap); return; }
  if (p->kind != POST_TEMPLATE) return;
  int32_t *old = *ids;
  size_t on = *n;
  *ids = NULL; *n = 0; *cap = 0;
  for (int i = 0; i < p->n_single; i++) {
    if (p->single[i] >= 0) tok_push_id(ids, n, cap, p->single[i]);
    else for (size_t k = 0; k < on; k++) tok_push_id(ids, n, cap, old[k]);
  }
  free(old);
}

/* HF matches normalized added tokens by their content passed through the normalizer. */
static int added_match_strings(xd_tokenizer *t, xd_err *e) {
  tok_ctx c = {0};
  c.t = t; c.e = e;
  c.md = pcre2_match_data_create(4, NULL);
  int rc = 0;
  for (int i = 0; i < t->n_added && !rc; i++) {
    tok_added *a = &t->added[i];
    const char *s = a->content;
    size_t len = a->len;
    if (a->normalized && t->norm) rc = norm_apply(&c, t->norm, &s, &len);
    if (rc) break;
    a->match = xd_malloc(len + 1);
    memcpy(a->match, s, len);
    a->match[len] = 0;
    a->match_len = len;
  }
  /* group by first byte (counting sort; empty match strings never match) */
  t->added_order = xd_malloc(((size_t)t->n_added + 1) * sizeof *t->added_order);
  int cnt[257] = {0};
  for (int i = 0; i < t->n_added; i++) if (t->added[i].match_len) cnt[(uint8_t)t->added[i].match[0] + 1]++;
  for (int b = 0; b < 256; b++) cnt[b + 1] += cnt[b];
  memcpy(t->added_start, cnt, sizeof cnt);
  for (int i = 0; i < t->n_added; i++) if (t->added[i].match_len) t->added_order[cnt[(uint8_t)t->added[i].match[0]]++] = i;
  free(c.spans.v); free(c.spans2.v);
  arena_free(&c.arena);
  pcre2_match_data_free(c.md);
  return rc;
}

int xd_tokenizer_encode(const xd_tokenizer *t, const char *text, size_t len, int add_special, int32_t **ids,
                        size_t *n, xd_err *e) {
  *ids = NULL; *n = 0;
  tok_ctx c = {0};
  c.t = t; c.e = e;
  c.w = tok_work_new();
  c.md = pcre2_match_data_create(4, NULL);
  c.mctx = pcre2_match_context_create(NULL);
  char *fixed = NULL;
  if (!tok_utf8_valid(text, len)) { fixed = tok_utf8_lossy(text, len, &len); text = fixed; }
  tok_spans asp = {0};
  added_spans(t, 0, text, len, &asp);
  int rc = 0;
  for (size_t k = 0; k < asp.n && !rc; k++) {
    tok_span sp = asp.v[k];
    if (sp.m) tok_push_id(&c.ids, &c.n, &c.cap, t->added[sp.m - 1].id);
    else rc = encode_text(&c, text + sp.s, sp.e - sp.s, sp.s == 0);
  }
  if (!rc && add_special && t->post) post_apply(t->post, &c.ids, &c.n, &c.cap);
  free(asp.v);
  free(fixed);
  free(c.spans.v); free(c.spans2.v);
  arena_free(&c.arena);
  if (c.jit) pcre2_jit_stack_free(c.jit);
  pcre2_match_context_free(c.mctx);
  pcre2_match_data_free(c.md);
  tok_work_free(c.w);
  if (rc) { free(c.ids); return -1; }
  if (!c.ids) c.ids = xd_malloc(sizeof *c.ids);
  *ids = c.ids;
  *n = c.n;
  return 0;
}

/* ---- decoding ----------------------------------------------------------------------- */
typedef struct { char *s; size_t len; } tok_str;
typedef struct { tok_str *v; size_t n, cap; } tok_strs;
static void strs_push(tok_strs *l, char *s, size_t len) {
  if (l->n == l->cap) { l->cap = l->cap ? l->cap * 2 : 64; l->v = xd_realloc(l->v, l->cap * sizeof *l->v); }
  l->v[l->n++] = (tok_str){s, len};
}
static char *memdup0(const char *s, size_t len) {
  char *b = xd_malloc(len + 1);
  memcpy(b, s, len);
  b[len] = 0;
  return b;
}
static void strs_clear(tok_strs *l) {
  for (size_t i = 0; i < l->n; i++) free(l->v[i].s);
  l->n = 0;
}
/* Lossy UTF-8 of a byte buffer, taking ownership. */
static tok_str lossy_own(char *b, size_t n) {
  if (tok_utf8_valid(b, n)) return (tok_str){b, n};
  size_t m;
  char *f = tok_utf8_lossy(b, n, &m);
  free(b);
  return (tok_str){f, m};
}

static int dec_apply(const xd_tokenizer *t, const tok_dec *d, tok_strs *in, tok_strs *out, xd_err *e) {
  out->n = 0;
  switch (d->kind) {
  case DEC_SEQUENCE: {
    tok_strs a = *in, b = {0};
    *in = (tok_strs){0};
    for (int i = 0; i < d->n_items; i++) {
      if (dec_apply(t, &d->items[i], &a, &b, e)) { strs_clear(&a); free(a.v); strs_clear(&b); free(b.v); return -1; }
      strs_clear(&a);
      tok_strs tmp = a; a = b; b = tmp;
    }
    for (size_t i = 0; i < a.n; i++) strs_push(out, a.v[i].s, a.v[i].len);
    free(a.v); free(b.v);
    return 0;
  }
  case DEC_BYTELEVEL: {
    size_t total = 0;
    for (size_t i = 0; i < in->n; i++) total += in->v[i].len;
    char *b = xd_malloc(total + 1);
    size_t n = 0;
    for (size_t i = 0; i < in->n; i++) {
      const tok_str *s = &in->v[i];
      size_t start = n;
      int ok = 1;
      for (size_t k = 0; k < s->len && ok;) {
        uint32_t cp;
        k += (size_t)tok_utf8_next(s->s + k, s->len - k, &cp);
        int by = tok_cp_to_byte(cp);
        if (by < 0) ok = 0; else b[n++] = (char)by;
      }
      if (!ok) { n = start; memcpy(b + n, s->s, s->len); n += s->len; }
    }
    tok_str r = lossy_own(b, n);
    strs_push(out, r.s, r.len);
    return 0;
  }
  case DEC_METASPACE:
    for (size_t i = 0; i < in->n; i++) {
      const tok_str *s = &in->v[i];
      char *b = xd_malloc(s->len + 1);
      size_t n = 0;
      for (size_t k = 0; k < s->len;) {
        uint32_t cp;
        int l = tok_utf8_next(s->s + k, s->len - k, &cp);
        if (cp == d->cp) { if (!(i == 0 && d->prepend != PREPEND_NEVER)) b[n++] = ' '; }
        else { memcpy(b + n, s->s + k, (size_t)l); n += (size_t)l; }
        k += (size_t)l;
      }
      strs_push(out, b, n);
    }
    return 0;
  case DEC_BYTEFALLBACK: {
    char *bytes = NULL;
    size_t nb = 0, cb = 0;
    for (size_t i = 0; i <= in->n; i++) {
      const tok_str *s = i < in->n ? &in->v[i] : NULL;
      int is_byte = 0;
      unsigned v = 0;
      if (s && s->len == 6 && !memcmp(s->s, "<0x", 3) && s->s[5] == '>') {
        is_byte = 1;
        for (int k = 3; k < 5; k++) {
          char ch = s->s[k];
          int dgt = (ch >= '0' && ch <= '9') ? ch - '0' : (ch >= 'A' && ch <= 'F') ? ch - 'A' + 10 : (ch >= 'a' && ch <= 'f') ? ch - 'a' + 10 : -1;
          if (dgt < 0) is_byte = 0; else v = v * 16 + (unsigned)dgt;
        }
      }
      if (is_byte) {
        if (nb == cb) { cb = cb ? cb * 2 : 16; bytes = xd_realloc(bytes, cb); }
        bytes[nb++] = (char)v;
        continue;
      }
      if (nb) {
        if (tok_utf8_valid(bytes, nb)) strs_push(out, memdup0(bytes, nb), nb);
        else for (size_t k = 0; k < nb; k++) strs_push(out, memdup0("\xEF\xBF\xBD", 3), 3);
        nb = 0;
      }
      if (s) strs_push(out, memdup0(s->s, s->len), s->len);
    }
    free(bytes);
    return 0;
  }
  case DEC_FUSE: {
    size_t total = 0;
    for (size_t i = 0; i < in->n; i++) total += in->v[i].len;
    char *b = xd_malloc(total + 1);
    size_t n = 0;
    for (size_t i = 0; i < in->n; i++) { memcpy(b + n, in->v[i].s, in->v[i].len); n += in->v[i].len; }
    b[n] = 0;
    strs_push(out, b, n);
    return 0;
  }
  case DEC_STRIP:
    for (size_t i = 0; i < in->n; i++) {
      const tok_str *s = &in->v[i];
      size_t a = 0, z = s->len;
      for (int k = 0; k < d->start && a < z; k++) {
        uint32_t cp;
        int l = tok_utf8_next(s->s + a, z - a, &cp);
        if (cp != d->cp) break;
        a += (size_t)l;
      }
      for (int k = 0; k < d->stop && z > a; k++) {
        uint32_t cp = cp_before(s->s, z);
        if (cp != d->cp) break;
        char tmp[4];
        z -= (size_t)tok_utf8_put(cp, tmp);
      }
      strs_push(out, memdup0(s->s + a, z - a), z - a);
    }
    return 0;
  case DEC_REPLACE:
    for (size_t i = 0; i < in->n; i++) {
      const tok_str *s = &in->v[i];
      tok_spans sp = {0};
      if (d->re) {
        tok_ctx c = {0};
        c.t = t; c.e = e;
        c.md = pcre2_match_data_create(4, NULL);
        c.mctx = pcre2_match_context_create(NULL);
        int rc = regex_spans(&c, d->re, s->s, s->len, &sp);
        if (c.jit) pcre2_jit_stack_free(c.jit);
        pcre2_match_context_free(c.mctx);
        pcre2_match_data_free(c.md);
        if (rc) { free(sp.v); return -1; }
      } else {
        literal_spans(d->pat, d->pat_len, s->s, s->len, &sp);
      }
      size_t total = 0;
      for (size_t k = 0; k < sp.n; k++) total += sp.v[k].m ? d->content_len : sp.v[k].e - sp.v[k].s;
      char *b = xd_malloc(total + 1);
      size_t n = 0;
      for (size_t k = 0; k < sp.n; k++) {
        if (sp.v[k].m) { memcpy(b + n, d->content, d->content_len); n += d->content_len; }
        else { memcpy(b + n, s->s + sp.v[k].s, sp.v[k].e - sp.v[k].s); n += sp.v[k].e - sp.v[k].s; }
      }
      free(sp.v);
      strs_push(out, b, n);
    }
    return 0;
  }
  return 0;
}

int xd_tokenizer_decode(const xd_tokenizer *t, const int32_t *ids, size_t n, int skip_special, char **text,
                        size_t *len, xd_err *e) {
  *text = NULL; *len = 0;
  tok_strs toks = {0}, out = {0};
  for (size_t i = 0; i < n; i++) {
    int32_t id = ids[i];
    if (id < 0 || id >= t->n_ids) continue; /* HF drops unknown ids */
    const char *s;
    size_t l;
    if (t->added_by_id[id] >= 0) {
      const tok_added *a = &t->added[t->added_by_id[id]];
      if (skip_special && a->special) continue;
      s = a->match; l = a->match_len; /* HF: normalized added tokens decode to their normalized form */
    } else if (t->tok_str[id]) {
      s = t->tok_str[id]; l = t->tok_len[id];
    } else {
      continue;
    }
    strs_push(&toks, memdup0(s, l), l);
  }
  tok_strs *fin = &toks;
  if (t->dec) {
    if (dec_apply(t, t->dec, &toks, &out, e)) { strs_clear(&toks); free(toks.v); strs_clear(&out); free(out.v); return -1; }
    fin = &out;
  }
  size_t total = 0;
  for (size_t i = 0; i < fin->n; i++) total += fin->v[i].len + 1;
  char *b = xd_malloc(total + 1);
  size_t m = 0;
  for (size_t i = 0; i < fin->n; i++) {
    if (!t->dec && i) b[m++] = ' '; /* no decoder: HF joins with spaces */
    memcpy(b + m, fin->v[i].s, fin->v[i].len);
    m += fin->v[i].len;
  }
  b[m] = 0;
  strs_clear(&toks); free(toks.v);
  strs_clear(&out); free(out.v);
  *text = b;
  *len = m;
  return 0;
}
