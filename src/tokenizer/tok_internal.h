/* Internal structures of the tokenizer module (not part of the contract in tokenizer.h).
 * Pipeline, as in HF `tokenizers`: added-token split -> normalizer -> pre-tokenizer -> BPE
 * -> post-processor; decode: ids -> token strings -> decoder chain. */
#ifndef XD_TOK_INTERNAL_H
#define XD_TOK_INTERNAL_H
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include "tokenizer/tokenizer.h"

/* ---- hash maps (open addressing, owned key copies) ----------------------- */
typedef struct {
  uint64_t hash;
  uint32_t off, len;    /* key bytes in arena */
  int32_t val;
} tok_strent;
typedef struct {
  char *arena;          /* key bytes */
  size_t arena_len, arena_cap;
  tok_strent *ents;
  size_t n, ecap;
  uint64_t *slots;      /* (entry index + 1) << 32 | hash tag; 0 = empty (one cache line per probe) */
  size_t mask;          /* slots - 1 (power of two) */
} tok_strmap;
void tok_strmap_init(tok_strmap *m, size_t expect);
void tok_strmap_free(tok_strmap *m);
/* Insert or overwrite. */
void tok_strmap_put(tok_strmap *m, const char *k, size_t len, int32_t v);
/* Returns 1 and sets *v when found. */
int tok_strmap_get(const tok_strmap *m, const char *k, size_t len, int32_t *v);
uint64_t tok_hash(const char *k, size_t len);

/* (a, b) -> (rank, merged id) */
typedef struct {
  uint64_t key; /* (a << 32 | b) + 1; 0 = empty */
  int32_t rank, out;
} tok_pairent;
typedef struct {
  tok_pairent *ents;
  size_t mask, n;
} tok_pairmap;
void tok_pairmap_init(tok_pairmap *m, size_t expect);
void tok_pairmap_free(tok_pairmap *m);
void tok_pairmap_put(tok_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t out);
int tok_pairmap_get(const tok_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *out);

/* ---- pipeline components ------------------------------------------------ */
typedef enum { NORM_NFC, NORM_NFKC, NORM_NFD, NORM_NFKD, NORM_PREPEND, NORM_REPLACE, NORM_LOWERCASE,
               NORM_STRIP, NORM_SEQUENCE } tok_norm_kind;
typedef struct tok_norm {
  tok_norm_kind kind;
  char *str;            /* Prepend: text; Replace: literal pattern (NULL if regex) */
  size_t str_len;
  char *content;        /* Replace: replacement */
  size_t content_len;
  pcre2_code *re;       /* Replace with Regex pattern */
  int strip_left, strip_right;
  struct tok_norm *items;
  int n_items;
} tok_norm;

typedef enum { SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT, SPLIT_CONTIGUOUS } tok_split_behavior;
typedef enum { PRE_SPLIT, PRE_BYTELEVEL, PRE_METASPACE, PRE_DIGITS, PRE_WHITESPACE_SPLIT, PRE_SEQUENCE } tok_pre_kind;
typedef enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER } tok_prepend_scheme;
typedef struct tok_pre {
  tok_pre_kind kind;
  pcre2_code *re;       /* Split (regex), ByteLevel (GPT-2 regex when use_regex) */
  char *literal;        /* Split with a String pattern */
  size_t literal_len;
  tok_split_behavior behavior;
  int invert;
  int add_prefix_space, use_regex;   /* ByteLevel */
  char repl[8]; int repl_len;        /* Metaspace replacement (UTF-8) */
  uint32_t repl_cp;
  tok_prepend_scheme prepend;
  int split;                          /* Metaspace */
  int individual_digits;              /* Digits */
  struct tok_pre *items;
  int n_items;
} tok_pre;

typedef enum { POST_NONE, POST_TEMPLATE, POST_BYTELEVEL, POST_SEQUENCE, POST_ROBERTA } tok_post_kind;
typedef struct tok_post {
  tok_post_kind kind;
  /* TemplateProcessing "single": -1 marks the sequence A, other entries are token ids */
  int32_t *single;
  int n_single;
  struct tok_post *items;
  int n_items;
} tok_post;

typedef enum { DEC_BYTELEVEL, DEC_METASPACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_REPLACE,
               DEC_SEQUENCE } tok_dec_kind;
typedef struct tok_dec {
  tok_dec_kind kind;
  uint32_t cp;                 /* Metaspace replacement, Strip content */
  tok_prepend_scheme prepend;  /* Metaspace */
  int start, stop;             /* Strip */
  char *pat; size_t pat_len;   /* Replace (literal) */
  pcre2_code *re;              /* Replace (regex) */
  char *content; size_t content_len;
  struct tok_dec *items;
  int n_items;
} tok_dec;

typedef struct {
  char *content;
  size_t len;
  char *match;          /* what is matched: content, or normalized content when normalized */
  size_t match_len;
  int32_t id;
  int special, lstrip, rstrip, normalized, single_word;
} tok_added;

typedef enum { CHAT_NONE = 0, CHAT_LLAMA3, CHAT_LLAMA31, CHAT_CHATML, CHAT_QWEN25, CHAT_QWEN3, CHAT_QWEN3_NOTHINK, CHAT_OLMO2 } tok_chat_format;

struct xd_tokenizer {
  char *path;                  /* tokenizer.json path, for messages */
  /* model vocab: id -> token string as in the file */
  char **tok_str;
  uint32_t *tok_len;
  int32_t n_ids;               /* max id + 1 over vocab and added tokens */
  tok_strmap vocab;            /* file string -> id (model vocab only) */
  tok_pairmap merges;
  int byte_level;              /* a ByteLevel pre-tokenizer: BPE runs on raw bytes */
  tok_strmap raw_vocab;        /* byte_level: raw bytes -> id */
  int32_t byte_id[256];        /* byte_level: id of each single byte, -1 if absent */
  int ignore_merges, byte_fallback, fuse_unk;
  int meta_split;              /* words may be cut before each "\u2581" that follows another char (see load) */
  int32_t unk_id;              /* -1 if none */
  int32_t byte_fb_id[256];     /* byte_fallback: id of "<0xXX>", -1 if absent */
  char *cont_prefix, *eow_suffix;
  size_t cont_prefix_len, eow_suffix_len;
  /* added tokens */
  tok_added *added;
  int n_added;
  int32_t *added_by_id;        /* id -> index in added, -1 (size n_ids) */
  int any_normalized_added;
  /* added tokens grouped by the first byte of their match string: indices
   * added_order[added_start[b] .. added_start[b + 1]) start with byte b */
  int *added_order;
  int added_start[257];
  /* pipeline */
  tok_norm *norm;              /* NULL = none */
  tok_pre *pre;
  tok_post *post;
  tok_dec *dec;
  /* tokenizer_config.json */
  int32_t bos_id, eos_id;
  char *eos_str, *bos_str;
  tok_chat_format chat;
  int chat_gen_always;         /* template appends the generation prompt unconditionally */
  int chat_template_seen;      /* tokenizer_config.json had a chat_template */
  char *cfg_path;              /* tokenizer_config.json path, for messages */
};

/* BPE over one pre-token (bytes). Appends ids to *out. work: per-call scratch. */
typedef struct tok_work tok_work;
tok_work *tok_work_new(void);
void tok_work_free(tok_work *w);
void tok_bpe_word(const xd_tokenizer *t, tok_work *w, const char *s, size_t len, int32_t **out,
                  size_t *n, size_t *cap);
void tok_push_id(int32_t **out, size_t *n, size_t *cap, int32_t id);

/* UTF-8 helpers */
int tok_utf8_valid(const char *s, size_t len);
/* Lossy conversion (invalid sequences -> U+FFFD, maximal subparts as Rust/Python). heap. */
char *tok_utf8_lossy(const char *s, size_t len, size_t *out_len);
/* Decode one code point at s (valid UTF-8 assumed); returns its byte length. */
int tok_utf8_next(const char *s, size_t len, uint32_t *cp);
int tok_utf8_put(uint32_t cp, char *out);
/* byte <-> GPT-2 byte-level code point */
uint32_t tok_byte_to_cp(uint8_t b);
int tok_cp_to_byte(uint32_t cp); /* -1 if not in the byte-level alphabet */
#endif
