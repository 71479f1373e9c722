/* Chat templates rendered in C (no Jinja): Llama 3, ChatML, Qwen2.5, Qwen3 (with its think
 * blocks), OLMo 2. Each format reproduces what transformers' apply_chat_template renders for
 * the published template (tests/fixtures/tokenizer/chat.jsonl, tools/make_chat_vectors.py).
 * The rendered string is encoded in one piece (ids identical to HF); the loss mask marks the
 * tokens that start inside an assistant reply (content + end-of-turn token). */
#include <stdlib.h>
#include <string.h>
#include "tokenizer/tok_internal.h"

static const struct { const char *name; tok_chat_format fmt; } FORMATS[] = {
    {"llama3", CHAT_LLAMA3}, {"llama3.1", CHAT_LLAMA31}, {"chatml", CHAT_CHATML}, {"qwen2.5", CHAT_QWEN25},
    {"qwen3", CHAT_QWEN3}, {"qwen3-nothink", CHAT_QWEN3_NOTHINK}, {"olmo2", CHAT_OLMO2},
};
#define N_FORMATS (sizeof FORMATS / sizeof FORMATS[0])
#define FORMAT_NAMES "llama3, llama3.1, chatml, qwen2.5, qwen3, qwen3-nothink, olmo2"

int tok_detect_chat(const char *tmpl, tok_chat_format *fmt, int *gen_always) {
  *fmt = CHAT_NONE;
  *gen_always = 0;
  if (strstr(tmpl, "<|start_header_id|>")) {
    /* Llama 3.1 adds a dated system preamble (fixed default date); 3.2+ date it with today's
     * date (strftime_now), which is not reproducible: left unrecognised */
    if (strstr(tmpl, "strftime_now")) return -1;
    *fmt = strstr(tmpl, "Cutting Knowledge Date") ? CHAT_LLAMA31 : CHAT_LLAMA3;
    *gen_always = strstr(tmpl, "add_generation_prompt") == NULL;
  } else if (strstr(tmpl, "<|im_start|>")) {
    if (strstr(tmpl, "</think>") || strstr(tmpl, "enable_thinking")) *fmt = CHAT_QWEN3;
    else if (strstr(tmpl, "You are Qwen, created by Alibaba Cloud")) *fmt = CHAT_QWEN25;
    else *fmt = CHAT_CHATML;
  } else if (strstr(tmpl, "<|user|>") && strstr(tmpl, "<|assistant|>")) {
    *fmt = CHAT_OLMO2;
  } else {
    return -1;
  }
  return 0;
}

int xd_tokenizer_set_chat_format(xd_tokenizer *t, const char *name, xd_err *e) {
  for (size_t i = 0; i < N_FORMATS; i++)
    if (!strcmp(name, FORMATS[i].name)) {
      t->chat = FORMATS[i].fmt;
      t->chat_gen_always = 0;
      return 0;
    }
  return xd_errf(e, "unknown chat format '%s' (known: " FORMAT_NAMES ")", name);
}
const char *xd_tokenizer_chat_format(const xd_tokenizer *t) {
  for (size_t i = 0; i < N_FORMATS; i++) if (FORMATS[i].fmt == t->chat) return FORMATS[i].name;
  return NULL;
}

/* ---- rendering buffer with masked byte ranges ------------------------------------- */
typedef struct {
  char *s;
  size_t n, cap;
  size_t *ms, *me; /* masked [ms, me) */
  size_t nm, capm;
} chat_buf;
static void cb_add(chat_buf *b, const char *s, size_t n, int masked) {
  if (b->n + n + 1 > b->cap) {
    b->cap = (b->n + n + 1) * 2;
    b->s = xd_realloc(b->s, b->cap);
  }
  memcpy(b->s + b->n, s, n);
  if (masked && n) {
    if (b->nm && b->me[b->nm - 1] == b->n) {
      b->me[b->nm - 1] += n;
    } else {
      if (b->nm == b->capm) {
        b->capm = b->capm ? b->capm * 2 : 16;
        b->ms = xd_realloc(b->ms, b->capm * sizeof *b->ms);
        b->me = xd_realloc(b->me, b->capm * sizeof *b->me);
      }
      b->ms[b->nm] = b->n;
      b->me[b->nm++] = b->n + n;
    }
  }
  b->n += n;
  b->s[b->n] = 0;
}
static void cb_str(chat_buf *b, const char *s, int masked) { cb_add(b, s, strlen(s), masked); }

/* Python str.isspace (what Jinja's trim strips). */
static int py_space(uint32_t c) {
  return (c >= 9 && c <= 13) || (c >= 0x1c && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}
/* trim: [*a, *z) of s without leading/trailing Python whitespace */
static void py_trim(const char *s, size_t len, size_t *a, size_t *z) {
  size_t i = 0, j = len;
  while (i < j) {
    uint32_t cp;
    int k = tok_utf8_next(s + i, j - i, &cp);
    if (!py_space(cp)) break;
    i += (size_t)k;
  }
  while (j > i) {
    size_t p = j - 1;
    while (p > i && ((uint8_t)s[p] & 0xC0) == 0x80) p--;
    uint32_t cp;
    tok_utf8_next(s + p, j - p, &cp);
    if (!py_space(cp)) break;
    j = p;
  }
  *a = i;
  *z = j;
}
static int starts_with(const char *s, const char *p) { return !strncmp(s, p, strlen(p)); }
static int ends_with(const char *s, const char *p) {
  size_t a = strlen(s), b = strlen(p);
  return a >= b && !memcmp(s + a - b, p, b);
}
/* last occurrence of needle in [s, s+len) */
static const char *mem_rfind(const char *s, size_t len, const char *needle) {
  size_t nl = strlen(needle);
  if (nl > len) return NULL;
  for (size_t i = len - nl + 1; i-- > 0;) if (!memcmp(s + i, needle, nl)) return s + i;
  return NULL;
}

/* Qwen3 assistant turn: split "<think>reasoning</think>content" as the template does. */
static void qwen3_assistant(chat_buf *b, const char *c, int think_allowed, int is_last) {
  size_t len = strlen(c);
  const char *content = c, *reason = "";
  size_t clen = len, rlen = 0;
  const char *first_end = strstr(c, "</think>");
  if (first_end) {
    const char *last_end = mem_rfind(c, len, "</think>");
    content = last_end + 8;
    clen = (size_t)(c + len - content);
    while (clen && *content == '\n') content++, clen--;        /* .lstrip('\n') */
    size_t pl = (size_t)(first_end - c);                         /* split('</think>')[0] */
    while (pl && c[pl - 1] == '\n') pl--;                        /* .rstrip('\n') */
    const char *open = mem_rfind(c, pl, "<think>");              /* .split('<think>')[-1] */
    reason = open ? open + 7 : c;
    rlen = (size_t)(c + pl - reason);
    while (rlen && *reason == '\n') reason++, rlen--;            /* .lstrip('\n') */
  }
  if (think_allowed && (is_last || rlen)) {
    cb_str(b, "<think>\n", 1);
    const char *r = reason;
    size_t rl = rlen;
    while (rl && *r == '\n') r++, rl--;                          /* .strip('\n') */
    while (rl && r[rl - 1] == '\n') rl--;
    cb_add(b, r, rl, 1);
    cb_str(b, "\n</think>\n\n", 1);
    while (clen && *content == '\n') content++, clen--;
  }
  cb_add(b, content, clen, 1);
}

static int render(const xd_tokenizer *t, const xd_chat_message *m, int n, int gen, chat_buf *b, xd_err *e) {
  for (int i = 0; i < n; i++) {
    if (!m[i].role || !m[i].content) return xd_errf(e, "chat message %d: role and content must be set", i);
    if (strcmp(m[i].role, "system") && strcmp(m[i].role, "user") && strcmp(m[i].role, "assistant"))
      return xd_errf(e, "chat message %d: role '%s' is not supported (system, user, assistant)", i, m[i].role);
  }
  switch (t->chat) {
  case CHAT_LLAMA3:
  case CHAT_LLAMA31: {
    int first = 0;
    if (t->chat == CHAT_LLAMA31) {
      /* system header always, with the template's default date and the trimmed system message */
      if (t->bos_str) cb_str(b, t->bos_str, 0);
      cb_str(b, "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
                "Today Date: 26 Jul 2024\n\n", 0);
      if (n > 0 && !strcmp(m[0].role, "system")) {
        size_t a, z;
        py_trim(m[0].content, strlen(m[0].content), &a, &z);
        cb_add(b, m[0].content + a, z - a, 0);
        first = 1;
      }
      cb_str(b, "<|eot_id|>", 0);
    }
    for (int i = first; i < n; i++) {
      int as = !strcmp(m[i].role, "assistant");
      if (i == 0 && t->chat == CHAT_LLAMA3 && t->bos_str) cb_str(b, t->bos_str, 0);
      cb_str(b, "<|start_header_id|>", 0);
      cb_str(b, m[i].role, 0);
      cb_str(b, "<|end_header_id|>\n\n", 0);
      size_t a, z;
      py_trim(m[i].content, strlen(m[i].content), &a, &z);
      cb_add(b, m[i].content + a, z - a, as);
      cb_str(b, "<|eot_id|>", as);
    }
    if (gen || t->chat_gen_always) cb_str(b, "<|start_header_id|>assistant<|end_header_id|>\n\n", 0);
    return 0;
  }
  case CHAT_CHATML:
  case CHAT_QWEN25:
    if (t->chat == CHAT_QWEN25 && (n == 0 || strcmp(m[0].role, "system")))
      cb_str(b, "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n", 0);
    for (int i = 0; i < n; i++) {
      int as = !strcmp(m[i].role, "assistant");
      cb_str(b, "<|im_start|>", 0);
      cb_str(b, m[i].role, 0);
      cb_str(b, "\n", 0);
      cb_str(b, m[i].content, as);
      cb_str(b, "<|im_end|>", as);
      cb_str(b, "\n", 0);
    }
    if (gen) cb_str(b, "<|im_start|>assistant\n", 0);
    return 0;
  case CHAT_QWEN3:
  case CHAT_QWEN3_NOTHINK: {
    int last_query = n - 1;
    for (int i = n - 1; i >= 0; i--)
      if (!strcmp(m[i].role, "user") && !(starts_with(m[i].content, "<tool_response>") && ends_with(m[i].content, "</tool_response>"))) {
        last_query = i;
        break;
      }
    for (int i = 0; i < n; i++) {
      if (!strcmp(m[i].role, "assistant")) {
        cb_str(b, "<|im_start|>assistant\n", 0);
        /* the think block is kept only after the last user query (and, unless it is the last
         * message, only when there is reasoning) */
        qwen3_assistant(b, m[i].content, i > last_query, i == n - 1);
        cb_str(b, "<|im_end|>", 1);
        cb_str(b, "\n", 0);
      } else {
        cb_str(b, "<|im_start|>", 0);
        cb_str(b, m[i].role, 0);
        cb_str(b, "\n", 0);
        cb_str(b, m[i].content, 0);
        cb_str(b, "<|im_end|>\n", 0);
      }
    }
    if (gen) {
      cb_str(b, "<|im_start|>assistant\n", 0);
      if (t->chat == CHAT_QWEN3_NOTHINK) cb_str(b, "<think>\n\n</think>\n\n", 0);
    }
    return 0;
  }
  case CHAT_OLMO2: {
    /* OLMo 2 uses <|endoftext|> as both bos_token and eos_token */
    const char *eos = t->eos_str ? t->eos_str : "<|endoftext|>";
    cb_str(b, t->bos_str ? t->bos_str : eos, 0);
    for (int i = 0; i < n; i++) {
      if (!strcmp(m[i].role, "assistant")) {
        cb_str(b, "<|assistant|>\n", 0);
        cb_str(b, m[i].content, 1);
        cb_str(b, eos, 1);
        if (i != n - 1) cb_str(b, "\n", 0);
      } else {
        cb_str(b, !strcmp(m[i].role, "system") ? "<|system|>\n" : "<|user|>\n", 0);
        cb_str(b, m[i].content, 0);
        cb_str(b, "\n", 0);
      }
    }
    if (gen && n > 0) cb_str(b, "<|assistant|>\n", 0);
    return 0;
  }
  case CHAT_NONE: break;
  }
  if (t->chat_template_seen)
    return xd_errf(e, "%s: chat_template not recognised; name the format with --chat-format "
                   "(xd_tokenizer_set_chat_format): " FORMAT_NAMES, t->cfg_path);
  return xd_errf(e, "%s: no chat_template; name the format with --chat-format (xd_tokenizer_set_chat_format): " FORMAT_NAMES,
                 t->cfg_path);
}

/* Bytes of the input text covered by token id (byte-level models: one byte per character). */
static size_t token_span(const xd_tokenizer *t, int32_t id) {
  if (t->added_by_id[id] >= 0) return t->added[t->added_by_id[id]].match_len;
  const char *s = t->tok_str[id];
  size_t len = t->tok_len[id], n = 0;
  for (size_t i = 0; i < len;) {
    uint32_t cp;
    i += (size_t)tok_utf8_next(s + i, len - i, &cp);
    n += tok_cp_to_byte(cp) >= 0 ? 1 : (size_t)tok_utf8_put(cp, (char[4]){0});
  }
  return n;
}

int xd_chat_encode(const xd_tokenizer *t, const xd_chat_message *msgs, int n, int add_generation_prompt, int32_t **ids,
                   uint8_t **mask, size_t *len, xd_err *e) {
  *ids = NULL; *mask = NULL; *len = 0;
  chat_buf b = {0};
  cb_add(&b, "", 0, 0);
  int rc = render(t, msgs, n, add_generation_prompt, &b, e);
  if (!rc && t->byte_level) {
    /* one encode of the whole text (exact ids), then mask by byte offsets */
    rc = xd_tokenizer_encode(t, b.s, b.n, 0, ids, len, e);
    if (!rc) {
      *mask = xd_calloc(*len + 1, 1);
      size_t off = 0, k = 0;
      for (size_t i = 0; i < *len; i++) {
        while (k < b.nm && b.me[k] <= off) k++;
        (*mask)[i] = k < b.nm && b.ms[k] <= off;
        off += token_span(t, (*ids)[i]);
      }
    }
  } else if (!rc) {
    /* other models: encode masked and unmasked runs separately */
    size_t cap = 0, pos = 0, k = 0;
    while (!rc && pos < b.n) {
      int masked = k < b.nm && b.ms[k] == pos;
      size_t end = masked ? b.me[k++] : (k < b.nm ? b.ms[k] : b.n);
      int32_t *part;
      size_t np;
      rc = xd_tokenizer_encode(t, b.s + pos, end - pos, 0, &part, &np, e);
      if (rc) break;
      if (*len + np + 1 > cap) {
        cap = (*len + np + 1) * 2;
        *ids = xd_realloc(*ids, cap * sizeof **ids);
        *mask = xd_realloc(*mask, cap);
      }
      memcpy(*ids + *len, part, np * sizeof *part);
      memset(*mask + *len, masked, np);
      *len += np;
      free(part);
      pos = end;
    }
    if (!rc && !*ids) { *ids = xd_malloc(sizeof **ids); *mask = xd_malloc(1); }
  }
  free(b.s); free(b.ms); free(b.me);
  if (rc) { free(*ids); free(*mask); *ids = NULL; *mask = NULL; *len = 0; return -1; }
  return 0;
}
