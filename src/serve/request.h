/* `serve`'s requests and responses: the JSON bodies of the OpenAI-compatible endpoints
 * (POST /v1/completions, POST /v1/chat/completions) parsed into a request, and the responses
 * (whole, or server-sent-event chunks when streaming) built from a finished or running one.
 *
 * The parser takes untrusted bytes: every field is type- and range-checked and an error is one
 * line naming the field (the HTTP layer answers 400 with it). Fields of the OpenAI API that
 * change the result and are not implemented (n > 1, echo, best_of, suffix, penalties,
 * logit_bias, tools, logprobs with stream) are refused, not ignored; fields that do not change it (user, model,
 * stream_options, ...) are ignored. vLLM's extensions top_k and ignore_eos are accepted. */
#ifndef XD_SERVE_REQUEST_H
#define XD_SERVE_REQUEST_H
#include "core/core.h"
#include "eval/sample.h"
#include "eval/strbuf.h"
#include "tokenizer/tokenizer.h"

typedef enum { XD_SERVE_COMPLETION = 0, XD_SERVE_CHAT = 1 } xd_serve_kind;

enum { XD_SERVE_MAX_STOPS = 16, XD_SERVE_MAX_MESSAGES = 1024 };

typedef struct {
  xd_serve_kind kind;
  /* completion: the prompt as text (prompt != NULL) or as token ids (prompt_ids, n_prompt_ids) */
  char *prompt;
  int32_t *prompt_ids;
  size_t n_prompt_ids;
  /* chat: the messages (role and content strings owned by the request) */
  xd_chat_message *msgs;
  int n_msgs;
  int max_tokens;          /* -1: not given (completion: 16, as OpenAI; chat: up to the context) */
  xd_sample_params sp;     /* temperature (default 1, as OpenAI), top_p, top_k */
  int has_seed;
  uint64_t seed;
  char *stops[XD_SERVE_MAX_STOPS];
  size_t n_stops;
  int stream;
  int ignore_eos;
  /* log-probabilities of the generated tokens: -1 none, else how many most likely alternatives
   * per token (0-20). Completions: "logprobs": N; chat: "logprobs": true, "top_logprobs": N. */
  int logprobs;
} xd_serve_request;

enum { XD_SERVE_MAX_TOP_LOGPROBS = 20 };

/* Parse body[len] (a JSON object) as a request of `kind`. 0, or -1 with e filled and *rq left
 * empty (nothing to free). */
int xd_serve_request_parse(const char *body, size_t len, xd_serve_kind kind, xd_serve_request *rq, xd_err *e);
void xd_serve_request_free(xd_serve_request *rq);

/* Responses (heap JSON text, one line). id: "cmpl-..." / "chatcmpl-..."; finish: "stop" or
 * "length"; logprobs_json: the choice's "logprobs" value (NULL: null). */
typedef struct {
  xd_serve_kind kind;
  const char *id;
  const char *model;
  long long created;   /* Unix seconds */
} xd_serve_meta;
char *xd_serve_response_json(const xd_serve_meta *m, const char *text, size_t n_text, const char *finish,
                             size_t prompt_tokens, size_t completion_tokens, const char *logprobs_json);
/* One streamed chunk: delta text (n_text may be 0), finish NULL until the last chunk; role_first:
 * a chat stream's first chunk, which carries the assistant role. usage_tokens >= 0: add a
 * usage object (prompt_tokens, completion_tokens) to this chunk. */
char *xd_serve_chunk_json(const xd_serve_meta *m, const char *text, size_t n_text, const char *finish,
                          int role_first, long long prompt_tokens, long long completion_tokens);
/* {"error": {"message": msg, "type": type, "code": status}} */
char *xd_serve_error_json(const char *msg, const char *type, int status);
/* s[n] as a JSON string (quotes, escapes; \u0000 for NUL; UTF-8 bytes as they are). */
void xd_serve_json_string(xd_sbuf *b, const char *s, size_t n);

/* The "logprobs" value of a choice for n generated tokens: ids[n], their log-probabilities lp[n]
 * (natural log, the model's distribution at temperature 1), and per token its k most likely
 * tokens top_ids[n * k] / top_lp[n * k]; piece(ids) gives a token's text (heap; may be part of a
 * UTF-8 character, then shown as "bytes:\xNN..." in completions' strings, and always as a
 * "bytes" array in chat's). Completions: {tokens, token_logprobs, top_logprobs, text_offset};
 * chat: {content: [{token, logprob, bytes, top_logprobs: [...]}]}. */
typedef char *(*xd_serve_piece_fn)(void *user, int32_t id);
char *xd_serve_logprobs_json(xd_serve_kind kind, size_t n, const int32_t *ids, const float *lp, int k,
                             const int32_t *top_ids, const float *top_lp, xd_serve_piece_fn piece, void *user);
#endif
