/* `serve`'s JSON requests and responses (see request.h). */
#include "serve/request.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void xd_serve_request_free(xd_serve_request *rq) {
  free(rq->prompt);
  free(rq->prompt_ids);
  for (int i = 0; i < rq->n_msgs; i++) free((char *)rq->msgs[i].role), free((char *)rq->msgs[i].content);
  free(rq->msgs);
  for (size_t i = 0; i < rq->n_stops; i++) free(rq->stops[i]);
  memset(rq, 0, sizeof *rq);
}

/* A JSON number that is an integer in [lo, hi]. */
static int get_int(const cJSON *o, const char *key, long long lo, long long hi, long long *out, xd_err *e) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!v || cJSON_IsNull(v)) return 1; /* absent */
  const double d = v->valuedouble;
  if (!cJSON_IsNumber(v) || !isfinite(d) || d != floor(d)) return xd_errf(e, "'%s' must be an integer", key);
  if (d < (double)lo || d > (double)hi) return xd_errf(e, "'%s' must be in [%lld, %lld], got %.0f", key, lo, hi, d);
  *out = (long long)d;
  return 0;
}

static int get_num(const cJSON *o, const char *key, double lo, double hi, double *out, xd_err *e) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!v || cJSON_IsNull(v)) return 1;
  if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) return xd_errf(e, "'%s' must be a number", key);
  if (v->valuedouble < lo || v->valuedouble > hi) return xd_errf(e, "'%s' must be in [%g, %g], got %g", key, lo, hi, v->valuedouble);
  *out = v->valuedouble;
  return 0;
}

static int get_bool(const cJSON *o, const char *key, int *out, xd_err *e) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!v || cJSON_IsNull(v)) return 1;
  if (!cJSON_IsBool(v)) return xd_errf(e, "'%s' must be true or false", key);
  *out = cJSON_IsTrue(v);
  return 0;
}

/* Fields of the OpenAI API that would change the result and are not implemented: refused when
 * set to anything but their neutral value. */
static int refuse_unsupported(const cJSON *o, xd_err *e) {
  static const char *const off_when_false[] = {"echo", "parallel_tool_calls"};
  static const char *const off_when_zero[] = {"presence_penalty", "frequency_penalty"};
  static const char *const off_when_absent[] = {"suffix", "logit_bias", "tools", "tool_choice", "functions",
                                                "function_call", "response_format", "best_of"};
  for (size_t i = 0; i < sizeof off_when_false / sizeof *off_when_false; i++) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, off_when_false[i]);
    if (v && !cJSON_IsNull(v) && !cJSON_IsFalse(v) && !(cJSON_IsNumber(v) && v->valuedouble == 0))
      return xd_errf(e, "'%s' is not supported", off_when_false[i]);
  }
  for (size_t i = 0; i < sizeof off_when_zero / sizeof *off_when_zero; i++) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, off_when_zero[i]);
    if (v && !cJSON_IsNull(v) && !(cJSON_IsNumber(v) && v->valuedouble == 0))
      return xd_errf(e, "'%s' is not supported (only 0)", off_when_zero[i]);
  }
  for (size_t i = 0; i < sizeof off_when_absent / sizeof *off_when_absent; i++) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, off_when_absent[i]);
    if (!v || cJSON_IsNull(v)) continue;
    if (!strcmp(off_when_absent[i], "best_of") && cJSON_IsNumber(v) && v->valuedouble == 1) continue;
    if (!strcmp(off_when_absent[i], "response_format") && cJSON_IsObject(v)) {
      const cJSON *t = cJSON_GetObjectItemCaseSensitive(v, "type");
      if (cJSON_IsString(t) && !strcmp(t->valuestring, "text")) continue;
    }
    return xd_errf(e, "'%s' is not supported", off_when_absent[i]);
  }
  long long n = 1;
  if (get_int(o, "n", 1, 1, &n, e) < 0) return xd_errf(e, "'n' must be 1 (one choice per request)");
  return 0;
}

static int parse_stops(const cJSON *o, xd_serve_request *rq, xd_err *e) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "stop");
  if (!v || cJSON_IsNull(v)) return 0;
  if (cJSON_IsString(v)) {
    if (!v->valuestring[0]) return xd_errf(e, "'stop' strings must not be empty");
    rq->stops[rq->n_stops++] = xd_strdup(v->valuestring);
    return 0;
  }
  if (!cJSON_IsArray(v)) return xd_errf(e, "'stop' must be a string or an array of strings");
  if (cJSON_GetArraySize(v) > XD_SERVE_MAX_STOPS) return xd_errf(e, "'stop' has more than %d strings", XD_SERVE_MAX_STOPS);
  const cJSON *s;
  cJSON_ArrayForEach(s, v) {
    if (!cJSON_IsString(s) || !s->valuestring[0]) return xd_errf(e, "'stop' must hold non-empty strings");
    rq->stops[rq->n_stops++] = xd_strdup(s->valuestring);
  }
  return 0;
}

static int parse_prompt(const cJSON *o, xd_serve_request *rq, xd_err *e) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "prompt");
  if (!v || cJSON_IsNull(v)) return xd_errf(e, "'prompt' is required");
  if (cJSON_IsArray(v) && cJSON_GetArraySize(v) == 1 && cJSON_IsString(cJSON_GetArrayItem(v, 0)))
    v = cJSON_GetArrayItem(v, 0); /* ["text"]: one prompt */
  if (cJSON_IsString(v)) {
    rq->prompt = xd_strdup(v->valuestring);
    return 0;
  }
  if (!cJSON_IsArray(v)) return xd_errf(e, "'prompt' must be a string or an array of token ids");
  const int n = cJSON_GetArraySize(v);
  if (n == 0) return xd_errf(e, "'prompt' is an empty array");
  rq->prompt_ids = xd_malloc((size_t)n * sizeof *rq->prompt_ids);
  const cJSON *t;
  cJSON_ArrayForEach(t, v) {
    const double d = t->valuedouble;
    if (!cJSON_IsNumber(t) || !isfinite(d) || d != floor(d) || d < 0 || d > 2147483647.0)
      return xd_errf(e, "'prompt' must be one string or one array of token ids (non-negative integers)");
    rq->prompt_ids[rq->n_prompt_ids++] = (int32_t)d;
  }
  return 0;
}

/* content: a string, or an array of {"type": "text", "text": ...} parts (joined). */
static int message_content(const cJSON *c, int i, char **out, xd_err *e) {
  if (cJSON_IsString(c)) {
    *out = xd_strdup(c->valuestring);
    return 0;
  }
  if (!cJSON_IsArray(c)) return xd_errf(e, "messages[%d].content must be a string or an array of text parts", i);
  size_t len = 0;
  const cJSON *p;
  cJSON_ArrayForEach(p, c) {
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(p, "type"), *text = cJSON_GetObjectItemCaseSensitive(p, "text");
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") || !cJSON_IsString(text))
      return xd_errf(e, "messages[%d].content: only parts {\"type\": \"text\", \"text\": ...} are supported", i);
    len += strlen(text->valuestring);
  }
  char *s = xd_malloc(len + 1);
  size_t k = 0;
  cJSON_ArrayForEach(p, c) {
    const char *t = cJSON_GetObjectItemCaseSensitive(p, "text")->valuestring;
    const size_t n = strlen(t);
    memcpy(s + k, t, n);
    k += n;
  }
  s[k] = 0;
  *out = s;
  return 0;
}

static int parse_messages(const cJSON *o, xd_serve_request *rq, xd_err *e) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "messages");
  if (!v || cJSON_IsNull(v)) return xd_errf(e, "'messages' is required");
  if (!cJSON_IsArray(v)) return xd_errf(e, "'messages' must be an array");
  const int n = cJSON_GetArraySize(v);
  if (n < 1 || n > XD_SERVE_MAX_MESSAGES) return xd_errf(e, "'messages' must hold 1 to %d messages, got %d", XD_SERVE_MAX_MESSAGES, n);
  rq->msgs = xd_calloc((size_t)n, sizeof *rq->msgs);
  const cJSON *m;
  int i = 0;
  cJSON_ArrayForEach(m, v) {
    if (!cJSON_IsObject(m)) return xd_errf(e, "messages[%d] must be an object", i);
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role"), *content = cJSON_GetObjectItemCaseSensitive(m, "content");
    if (!cJSON_IsString(role)) return xd_errf(e, "messages[%d].role must be a string", i);
    const char *r = role->valuestring;
    if (!strcmp(r, "developer")) r = "system"; /* OpenAI's newer name for the system message */
    if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant")) {
      char shown[41]; /* the client's text in a one-line error: control characters as '?' */
      size_t k = 0;
      for (; r[k] && k < 40; k++) shown[k] = (unsigned char)r[k] < 0x20 || r[k] == 0x7f ? '?' : r[k];
      shown[k] = 0;
      return xd_errf(e, "messages[%d].role must be system, user or assistant, got '%s'", i, shown);
    }
    if (!content) return xd_errf(e, "messages[%d].content is required", i);
    char *text = NULL;
    if (message_content(content, i, &text, e)) return -1;
    rq->msgs[i].role = xd_strdup(r);
    rq->msgs[i].content = text;
    rq->n_msgs = ++i;
  }
  return 0;
}

/* Completions: "logprobs": N (0-20; null / false: none). Chat: "logprobs": true / false and
 * "top_logprobs": N (which needs logprobs true). Not with stream. */
static int parse_logprobs(const cJSON *o, xd_serve_request *rq, xd_err *e) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, "logprobs");
  long long k = 0;
  int on = 0, got;
  if (rq->kind == XD_SERVE_CHAT) {
    if (get_bool(o, "logprobs", &on, e) < 0) return -1;
    if ((got = get_int(o, "top_logprobs", 0, XD_SERVE_MAX_TOP_LOGPROBS, &k, e)) < 0) return -1;
    if (got == 0 && !on) return xd_errf(e, "'top_logprobs' needs 'logprobs': true");
  } else if (v && !cJSON_IsNull(v) && !cJSON_IsFalse(v)) {
    if (get_int(o, "logprobs", 0, XD_SERVE_MAX_TOP_LOGPROBS, &k, e)) return -1;
    on = 1;
  }
  if (!on) return 0;
  if (rq->stream) return xd_errf(e, "'logprobs' with 'stream' is not supported");
  rq->logprobs = (int)k;
  return 0;
}

int xd_serve_request_parse(const char *body, size_t len, xd_serve_kind kind, xd_serve_request *rq, xd_err *e) {
  memset(rq, 0, sizeof *rq);
  rq->kind = kind;
  rq->max_tokens = -1;
  rq->sp.temperature = 1.0;
  rq->sp.top_p = 1.0;
  rq->logprobs = -1;
  cJSON *o = cJSON_ParseWithLength(body, len);
  if (!o || !cJSON_IsObject(o)) {
    cJSON_Delete(o);
    return xd_errf(e, "the body is not a JSON object");
  }
  long long v = 0;
  double d;
  int rc = refuse_unsupported(o, e);
  if (!rc) rc = kind == XD_SERVE_CHAT ? parse_messages(o, rq, e) : parse_prompt(o, rq, e);
  /* max_tokens; chat also takes its newer name max_completion_tokens */
  int got;
  if (!rc && (got = get_int(o, "max_tokens", 1, 1 << 24, &v, e)) <= 0) rc = got, rq->max_tokens = (int)v;
  if (!rc && kind == XD_SERVE_CHAT && (got = get_int(o, "max_completion_tokens", 1, 1 << 24, &v, e)) <= 0)
    rc = got, rq->max_tokens = (int)v;
  if (!rc && (got = get_num(o, "temperature", 0, 100, &d, e)) <= 0) rc = got, rq->sp.temperature = d;
  if (!rc && (got = get_num(o, "top_p", 0, 1, &d, e)) <= 0) {
    rc = got, rq->sp.top_p = d;
    if (!rc && d <= 0) rc = xd_errf(e, "'top_p' must be in (0, 1], got 0");
  }
  if (!rc && (got = get_int(o, "top_k", -1, 1 << 30, &v, e)) <= 0) rc = got, rq->sp.top_k = v < 0 ? 0 : (int)v;
  /* any 64-bit seed; JSON numbers beyond 2^53 lose digits, which only changes the draw */
  if (!rc && (got = get_num(o, "seed", -9.2e18, 1.8e19, &d, e)) <= 0) {
    rc = got;
    if (!rc && d != floor(d)) rc = xd_errf(e, "'seed' must be an integer");
    rq->has_seed = 1;
    rq->seed = d < 0 ? (uint64_t)(int64_t)d : (uint64_t)d;
  }
  if (!rc && get_bool(o, "stream", &rq->stream, e) < 0) rc = -1;
  if (!rc && get_bool(o, "ignore_eos", &rq->ignore_eos, e) < 0) rc = -1;
  if (!rc) rc = parse_stops(o, rq, e);
  if (!rc) rc = parse_logprobs(o, rq, e);
  cJSON_Delete(o);
  if (rc) xd_serve_request_free(rq);
  return rc ? -1 : 0;
}

/* ---- responses ----------------------------------------------------------------------------- */
/* Built by hand rather than through cJSON: generated text may hold NUL bytes (a byte-level
 * tokenizer can emit byte 0), which cJSON's C strings would cut; JSON writes them \u0000. */
void xd_serve_json_string(xd_sbuf *b, const char *s, size_t n) {
  xd_sbuf_putn(b, "\"", 1);
  size_t run = 0; /* bytes copied as they are, pending */
  for (size_t i = 0; i < n; i++) {
    const unsigned char c = (unsigned char)s[i];
    if (c >= 0x20 && c != '"' && c != '\\') { run++; continue; }
    xd_sbuf_putn(b, s + i - run, run);
    run = 0;
    if (c == '"') xd_sbuf_puts(b, "\\\"");
    else if (c == '\\') xd_sbuf_puts(b, "\\\\");
    else if (c == '\n') xd_sbuf_puts(b, "\\n");
    else if (c == '\r') xd_sbuf_puts(b, "\\r");
    else if (c == '\t') xd_sbuf_puts(b, "\\t");
    else xd_sbuf_printf(b, "\\u%04x", c);
  }
  xd_sbuf_putn(b, s + n - run, run);
  xd_sbuf_putn(b, "\"", 1);
}

static void put_head(xd_sbuf *b, const xd_serve_meta *m, int chunk) {
  xd_sbuf_puts(b, "{\"id\":");
  xd_serve_json_string(b, m->id, strlen(m->id));
  xd_sbuf_printf(b, ",\"object\":\"%s\",\"created\":%lld,\"model\":",
                 m->kind == XD_SERVE_CHAT ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion",
                 m->created);
  xd_serve_json_string(b, m->model, strlen(m->model));
  xd_sbuf_puts(b, ",\"choices\":[{\"index\":0,");
}

static void put_tail(xd_sbuf *b, const char *finish, long long prompt, long long completion) {
  if (finish) xd_sbuf_printf(b, ",\"finish_reason\":\"%s\"}]", finish);
  else xd_sbuf_puts(b, ",\"finish_reason\":null}]");
  if (prompt >= 0)
    xd_sbuf_printf(b, ",\"usage\":{\"prompt_tokens\":%lld,\"completion_tokens\":%lld,\"total_tokens\":%lld}", prompt,
                   completion, prompt + completion);
  xd_sbuf_puts(b, "}");
}

char *xd_serve_response_json(const xd_serve_meta *m, const char *text, size_t n_text, const char *finish,
                             size_t prompt_tokens, size_t completion_tokens, const char *logprobs_json) {
  xd_sbuf b = {0};
  put_head(&b, m, 0);
  if (m->kind == XD_SERVE_CHAT) {
    xd_sbuf_puts(&b, "\"message\":{\"role\":\"assistant\",\"content\":");
    xd_serve_json_string(&b, text, n_text);
    xd_sbuf_puts(&b, "}");
  } else {
    xd_sbuf_puts(&b, "\"text\":");
    xd_serve_json_string(&b, text, n_text);
  }
  xd_sbuf_printf(&b, ",\"logprobs\":%s", logprobs_json ? logprobs_json : "null");
  put_tail(&b, finish, (long long)prompt_tokens, (long long)completion_tokens);
  return xd_sbuf_take(&b);
}

char *xd_serve_chunk_json(const xd_serve_meta *m, const char *text, size_t n_text, const char *finish,
                          int role_first, long long prompt_tokens, long long completion_tokens) {
  xd_sbuf b = {0};
  put_head(&b, m, 1);
  if (m->kind == XD_SERVE_CHAT) {
    xd_sbuf_puts(&b, "\"delta\":{");
    if (role_first) xd_sbuf_puts(&b, "\"role\":\"assistant\",\"content\":\"\"");
    else if (n_text) xd_sbuf_puts(&b, "\"content\":"), xd_serve_json_string(&b, text, n_text);
    xd_sbuf_puts(&b, "}");
  } else {
    xd_sbuf_puts(&b, "\"text\":");
    xd_serve_json_string(&b, text, n_text);
    xd_sbuf_puts(&b, ",\"logprobs\":null");
  }
  put_tail(&b, finish, prompt_tokens, completion_tokens);
  return xd_sbuf_take(&b);
}

char *xd_serve_error_json(const char *msg, const char *type, int status) {
  xd_sbuf b = {0};
  xd_sbuf_puts(&b, "{\"error\":{\"message\":");
  xd_serve_json_string(&b, msg, strlen(msg));
  xd_sbuf_printf(&b, ",\"type\":\"%s\",\"code\":%d}}", type, status);
  return xd_sbuf_take(&b);
}

/* A token's text as a JSON string: itself, or "bytes:\xNN..." when it is not whole UTF-8. */
static void put_token(xd_sbuf *b, const char *t) {
  const size_t n = strlen(t);
  if (xd_utf8_valid(t, n)) {
    xd_serve_json_string(b, t, n);
    return;
  }
  xd_sbuf_puts(b, "\"bytes:");
  for (size_t i = 0; i < n; i++) xd_sbuf_printf(b, "\\\\x%02x", (unsigned char)t[i]);
  xd_sbuf_puts(b, "\"");
}

static void put_bytes(xd_sbuf *b, const char *t) {
  xd_sbuf_puts(b, "[");
  for (size_t i = 0; t[i]; i++) xd_sbuf_printf(b, "%s%u", i ? "," : "", (unsigned char)t[i]);
  xd_sbuf_puts(b, "]");
}

/* A log-probability as JSON (-inf, for a token of zero probability, has no JSON number). */
static void put_lp(xd_sbuf *b, float lp) {
  if (isfinite(lp)) xd_sbuf_printf(b, "%.6g", (double)lp);
  else xd_sbuf_puts(b, "-9999.0");
}

char *xd_serve_logprobs_json(xd_serve_kind kind, size_t n, const int32_t *ids, const float *lp, int k,
                             const int32_t *top_ids, const float *top_lp, xd_serve_piece_fn piece, void *user) {
  xd_sbuf b = {0};
  char **txt = xd_calloc(n ? n : 1, sizeof *txt);
  for (size_t i = 0; i < n; i++) txt[i] = piece(user, ids[i]);
  if (kind == XD_SERVE_CHAT) {
    xd_sbuf_puts(&b, "{\"content\":[");
    for (size_t i = 0; i < n; i++) {
      xd_sbuf_puts(&b, i ? ",{\"token\":" : "{\"token\":");
      put_token(&b, txt[i]);
      xd_sbuf_puts(&b, ",\"logprob\":");
      put_lp(&b, lp[i]);
      xd_sbuf_puts(&b, ",\"bytes\":");
      put_bytes(&b, txt[i]);
      xd_sbuf_puts(&b, ",\"top_logprobs\":[");
      for (int j = 0; j < k; j++) {
        char *t = piece(user, top_ids[i * (size_t)k + j]);
        xd_sbuf_puts(&b, j ? ",{\"token\":" : "{\"token\":");
        put_token(&b, t);
        xd_sbuf_puts(&b, ",\"logprob\":");
        put_lp(&b, top_lp[i * (size_t)k + j]);
        xd_sbuf_puts(&b, ",\"bytes\":");
        put_bytes(&b, t);
        xd_sbuf_puts(&b, "}");
        free(t);
      }
      xd_sbuf_puts(&b, "]}");
    }
    xd_sbuf_puts(&b, "]}");
  } else {
    xd_sbuf_puts(&b, "{\"tokens\":[");
    for (size_t i = 0; i < n; i++) {
      if (i) xd_sbuf_puts(&b, ",");
      put_token(&b, txt[i]);
    }
    xd_sbuf_puts(&b, "],\"token_logprobs\":[");
    for (size_t i = 0; i < n; i++) {
      if (i) xd_sbuf_puts(&b, ",");
      put_lp(&b, lp[i]);
    }
    xd_sbuf_puts(&b, "],\"top_logprobs\":[");
    for (size_t i = 0; i < n; i++) {
      xd_sbuf_puts(&b, i ? ",{" : "{");
      for (int j = 0; j < k; j++) {
        char *t = piece(user, top_ids[i * (size_t)k + j]);
        if (j) xd_sbuf_puts(&b, ",");
        put_token(&b, t);
        xd_sbuf_puts(&b, ":");
        put_lp(&b, top_lp[i * (size_t)k + j]);
        free(t);
      }
      xd_sbuf_puts(&b, "}");
    }
    /* text_offset: where each token's text starts in the generated text (bytes) */
    xd_sbuf_puts(&b, "],\"text_offset\":[");
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
      xd_sbuf_printf(&b, "%s%zu", i ? "," : "", off);
      off += strlen(txt[i]);
    }
    xd_sbuf_puts(&b, "]}");
  }
  for (size_t i = 0; i < n; i++) free(txt[i]);
  free(txt);
  return xd_sbuf_take(&b);
}
