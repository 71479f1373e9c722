/* Tokenizer: Hugging Face tokenizer.json (BPE models) + tokenizer_config.json.
 * CONTRACT for other modules (data pipeline, eval, generate). Implementation: src/tokenizer/. */
#ifndef XD_TOKENIZER_H
#define XD_TOKENIZER_H
#include "core/core.h"

typedef struct xd_tokenizer xd_tokenizer;

/* path: a directory holding tokenizer.json (and optionally tokenizer_config.json), or a
 * tokenizer.json file. */
int xd_tokenizer_load(xd_tokenizer **out, const char *path, xd_err *e);
void xd_tokenizer_free(xd_tokenizer *t);
/* Added: load from tokenizer.json text in memory (no tokenizer_config.json: no chat template,
 * bos/eos guessed from the post-processor and the usual end-of-text tokens). name is used in
 * error messages. */
int xd_tokenizer_load_json(xd_tokenizer **out, const char *json, size_t len, const char *name, xd_err *e);

/* Encode UTF-8 (or arbitrary bytes) text. add_special: apply the post-processor (e.g. BOS),
 * as HF `encode(text, add_special_tokens=True)`. *ids is heap-allocated (caller frees). */
int xd_tokenizer_encode(const xd_tokenizer *t, const char *text, size_t len, int add_special,
                        int32_t **ids, size_t *n, xd_err *e);
/* Decode as HF `decode(ids, skip_special_tokens=skip_special)`; *text is NUL-terminated, heap. */
int xd_tokenizer_decode(const xd_tokenizer *t, const int32_t *ids, size_t n, int skip_special,
                        char **text, size_t *len, xd_err *e);

int xd_tokenizer_vocab_size(const xd_tokenizer *t); /* including added tokens */
/* 1 if s[len] is well-formed UTF-8 (no overlong forms, surrogates or truncated characters). */
int xd_utf8_valid(const char *s, size_t len);
int32_t xd_tokenizer_token_to_id(const xd_tokenizer *t, const char *token); /* -1 if absent */
int32_t xd_tokenizer_bos_id(const xd_tokenizer *t); /* -1 if none */
int32_t xd_tokenizer_eos_id(const xd_tokenizer *t); /* -1 if none */
/* Added (not in the original contract): the token string of an id as in tokenizer.json (an
 * added token's content, or the model's vocab string, byte-level encoded for byte-level
 * models); NULL if the id is unknown. Owned by t. */
const char *xd_tokenizer_id_to_token(const xd_tokenizer *t, int32_t id);
/* 1 if id is an added token marked "special" (what decode's skip_special drops). */
int xd_tokenizer_is_special(const xd_tokenizer *t, int32_t id);

/* Chat templates (Llama 3, ChatML for Qwen2.5/Qwen3, OLMo 2), recognised from
 * tokenizer_config.json's chat_template or named explicitly. */
typedef struct {
  const char *role;    /* "system", "user", "assistant" */
  const char *content;
} xd_chat_message;
/* Render messages to ids; mask[i] = 1 for tokens of assistant replies (the loss mask), 0
 * otherwise. add_generation_prompt appends the assistant header. Both arrays heap-allocated. */
/* Added: name the chat format explicitly when tokenizer_config.json has no template or one that
 * is not recognised: "llama3", "llama3.1", "chatml", "qwen2.5", "qwen3", "qwen3-nothink" or "olmo2"
 * (CLI convention: a `--chat-format NAME` flag passed here). Returns -1 with a message listing
 * the names. See docs/tokenizer.md for what each renders and what the loss mask covers. */
int xd_tokenizer_set_chat_format(xd_tokenizer *t, const char *name, xd_err *e);
/* The chat format in use ("llama3", ...), or NULL if none was recognised or set. */
const char *xd_tokenizer_chat_format(const xd_tokenizer *t);
int xd_chat_encode(const xd_tokenizer *t, const xd_chat_message *msgs, int n, int add_generation_prompt,
                   int32_t **ids, uint8_t **mask, size_t *len, xd_err *e);
#endif
