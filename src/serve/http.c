/* `serve`'s HTTP front over libmicrohttpd (http.h). */
#include "serve/http.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "serve/request.h"

struct xd_http {
  struct MHD_Daemon *d;
  xd_engine *eng;
  xd_runner *r;
  xd_http_options o;
  char *model_name;
  char *api_key;
  uint64_t seed_counter; /* default seeds: atomic */
  int listening;         /* atomic: libmicrohttpd's messages are shown once it listens */
};

/* libmicrohttpd's own messages: "serve: ..." lines once listening; before that (a failed bind)
 * the one-line error of xd_http_start says it. */
static void on_log(void *cls, const char *fmt, va_list ap) {
  xd_http *h = cls;
  if (!__atomic_load_n(&h->listening, __ATOMIC_ACQUIRE)) return;
  char msg[512];
  vsnprintf(msg, sizeof msg, fmt, ap);
  const size_t n = strlen(msg);
  fprintf(stderr, "serve: %.*s\n", (int)(n && msg[n - 1] == '\n' ? n - 1 : n), msg);
}

/* A request's body, gathered over the handler's calls. */
typedef struct {
  char *body;
  size_t len, cap;
  int too_big;
} conn_body;

/* ---- answers ------------------------------------------------------------------------------- */
static enum MHD_Result answer(struct MHD_Connection *c, unsigned status, const char *type, char *text) {
  struct MHD_Response *rs = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
  MHD_add_response_header(rs, MHD_HTTP_HEADER_CONTENT_TYPE, type);
  const enum MHD_Result ok = MHD_queue_response(c, status, rs);
  MHD_destroy_response(rs);
  return ok;
}

static enum MHD_Result answer_json(struct MHD_Connection *c, unsigned status, char *json) {
  /* one line each: clients that read line by line (curl in scripts) get it whole */
  const size_t n = strlen(json);
  json = xd_realloc(json, n + 2);
  json[n] = '\n', json[n + 1] = 0;
  return answer(c, status, "application/json", json);
}

/* OpenAI's error type for an HTTP status. */
static const char *error_type(unsigned status) {
  return status == 401 ? "authentication_error" : status == 404 ? "not_found_error"
       : status == 503 ? "server_busy" : status >= 500 ? "server_error" : "invalid_request_error";
}

static enum MHD_Result answer_error(struct MHD_Connection *c, unsigned status, const char *msg) {
  return answer_json(c, status, xd_serve_error_json(msg, error_type(status), (int)status));
}

/* ---- streaming ----------------------------------------------------------------------------- */
typedef struct {
  xd_serve_job *job;
  xd_serve_meta meta;
  char id[48];
  size_t off;          /* text of the job handed out so far */
  char *out;           /* SSE bytes not yet written: out[pos, len) */
  size_t len, pos, cap;
  int role_sent, done;
} stream_ctx;

static void sse_add(stream_ctx *s, char *json) {
  const size_t n = strlen(json), need = s->len + n + 8;
  if (need > s->cap) s->cap = need * 2, s->out = xd_realloc(s->out, s->cap);
  s->len += (size_t)sprintf(s->out + s->len, "data: %s\n\n", json);
  free(json);
}

/* Called by libmicrohttpd's connection thread whenever it can send: blocks until the job has
 * news (one thread per connection, so blocking here holds up nobody else). */
static ssize_t stream_read(void *cls, uint64_t at, char *buf, size_t max) {
  (void)at;
  stream_ctx *s = cls;
  while (s->pos == s->len) {
    if (s->done) return MHD_CONTENT_READER_END_OF_STREAM;
    s->pos = s->len = 0;
    if (s->meta.kind == XD_SERVE_CHAT && !s->role_sent) {
      s->role_sent = 1;
      sse_add(s, xd_serve_chunk_json(&s->meta, "", 0, NULL, 1, -1, 0));
      continue;
    }
    char *text;
    size_t n;
    if (xd_job_wait(s->job, &s->off, &text, &n)) {
      sse_add(s, xd_serve_chunk_json(&s->meta, text, n, NULL, 0, -1, 0));
      free(text);
      continue;
    }
    const char *finish, *error;
    size_t np, nc;
    int status;
    xd_job_result(s->job, &finish, &error, &status, &np, &nc);
    if (finish) sse_add(s, xd_serve_chunk_json(&s->meta, "", 0, finish, 0, (long long)np, (long long)nc));
    else sse_add(s, xd_serve_error_json(error ? error : "generation failed", error_type((unsigned)status), status));
    const char *end = "data: [DONE]\n\n";
    if (s->len + strlen(end) + 1 > s->cap) s->cap = s->len + strlen(end) + 1, s->out = xd_realloc(s->out, s->cap);
    memcpy(s->out + s->len, end, strlen(end));
    s->len += strlen(end);
    s->done = 1;
  }
  const size_t n = s->len - s->pos < max ? s->len - s->pos : max;
  memcpy(buf, s->out + s->pos, n);
  s->pos += n;
  return (ssize_t)n;
}

static void stream_free(void *cls) {
  stream_ctx *s = cls;
  if (!s->done) xd_job_cancel(s->job); /* the client went away */
  xd_job_release(s->job);
  free(s->out);
  free(s);
}

/* ---- generation ---------------------------------------------------------------------------- */
/* The request's prompt as ids (heap): text as `generate` takes it (xd_runner_encode_prompt), ids
 * as given, messages through the chat template with the assistant header. */
static int prompt_ids(const xd_http *h, const xd_serve_request *rq, int32_t **ids, size_t *n, xd_err *e) {
  const xd_runner *r = h->r;
  if (rq->kind == XD_SERVE_CHAT) {
    if (!xd_tokenizer_chat_format(r->tok))
      return xd_errf(e, "the model's tokenizer has no chat template this server knows (start it with --chat-format NAME)");
    uint8_t *mask = NULL;
    const int rc = xd_chat_encode(r->tok, rq->msgs, rq->n_msgs, 1, ids, &mask, n, e);
    free(mask);
    return rc;
  }
  if (rq->prompt_ids) {
    *ids = xd_malloc(rq->n_prompt_ids * sizeof **ids);
    memcpy(*ids, rq->prompt_ids, rq->n_prompt_ids * sizeof **ids);
    *n = rq->n_prompt_ids;
    return 0;
  }
  return xd_runner_encode_prompt(r, rq->prompt, ids, n, e);
}

/* One token's text for the log-probabilities (special tokens shown; "" if it cannot decode). */
static char *token_text(void *user, int32_t id) {
  char *t = NULL;
  size_t n;
  xd_err e;
  if (xd_tokenizer_decode((const xd_tokenizer *)user, &id, 1, 0, &t, &n, &e)) return xd_strdup("");
  return t;
}

static enum MHD_Result generate(xd_http *h, struct MHD_Connection *c, const conn_body *b, xd_serve_kind kind) {
  if (b->too_big) {
    char msg[96];
    snprintf(msg, sizeof msg, "the request body is larger than %zu bytes", h->o.max_body);
    return answer_error(c, 413, msg);
  }
  xd_err e = {0};
  xd_serve_request rq;
  if (xd_serve_request_parse(b->body ? b->body : "", b->len, kind, &rq, &e)) return answer_error(c, 400, e.msg);
  int32_t *ids = NULL;
  size_t n = 0;
  if (prompt_ids(h, &rq, &ids, &n, &e)) {
    xd_serve_request_free(&rq);
    return answer_error(c, 400, e.msg);
  }
  xd_job_params p = {0};
  p.max_new = rq.max_tokens > 0 ? rq.max_tokens : kind == XD_SERVE_COMPLETION ? 16 : h->o.ctx;
  p.stop_at_eos = !rq.ignore_eos;
  p.stops = (const char *const *)rq.stops;
  p.n_stops = rq.n_stops;
  p.sp = rq.sp;
  /* no seed given: a different draw per request, as OpenAI's API */
  p.seed = rq.has_seed ? rq.seed
                       : (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull ^ __atomic_add_fetch(&h->seed_counter, 1, __ATOMIC_RELAXED);
  p.stream = rq.stream;
  p.logprobs = rq.logprobs;
  const int want_lp = rq.logprobs >= 0;
  int status = 400;
  xd_serve_job *j = xd_engine_submit(h->eng, ids, n, &p, &status, &e);
  free(ids);
  const int stream = rq.stream;
  xd_serve_request_free(&rq);
  if (!j) return answer_error(c, (unsigned)status, e.msg);

  xd_serve_meta meta = {kind, NULL, h->model_name, (long long)time(NULL)};
  char id[48];
  snprintf(id, sizeof id, "%s-%llu", kind == XD_SERVE_CHAT ? "chatcmpl" : "cmpl", (unsigned long long)xd_job_id(j));
  if (stream) {
    stream_ctx *s = xd_calloc(1, sizeof *s);
    s->job = j;
    s->meta = meta;
    memcpy(s->id, id, sizeof id);
    s->meta.id = s->id;
    struct MHD_Response *rs = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, s, stream_free);
    MHD_add_response_header(rs, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(rs, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    const enum MHD_Result ok = MHD_queue_response(c, MHD_HTTP_OK, rs);
    MHD_destroy_response(rs);
    return ok;
  }
  /* whole: wait for the end (this connection's thread) */
  char *text = NULL, *piece;
  size_t len = 0, off = 0, n_piece;
  while (xd_job_wait(j, &off, &piece, &n_piece)) {
    text = xd_realloc(text, len + n_piece + 1);
    memcpy(text + len, piece, n_piece);
    len += n_piece;
    text[len] = 0;
    free(piece);
  }
  const char *finish, *error;
  size_t np, nc;
  int status_end;
  xd_job_result(j, &finish, &error, &status_end, &np, &nc);
  enum MHD_Result ok;
  meta.id = id;
  char *lp_json = NULL;
  if (finish && want_lp) {
    size_t n_lp;
    const int32_t *lp_ids, *top_ids;
    const float *lp, *top_lp;
    int k;
    xd_job_logprobs(j, &n_lp, &lp_ids, &lp, &k, &top_ids, &top_lp);
    lp_json = xd_serve_logprobs_json(kind, n_lp, lp_ids, lp, k, top_ids, top_lp, token_text, (void *)h->r->tok);
  }
  if (finish) ok = answer_json(c, MHD_HTTP_OK, xd_serve_response_json(&meta, text ? text : "", len, finish, np, nc, lp_json));
  else ok = answer_error(c, (unsigned)status_end, error ? error : "generation failed");
  free(text), free(lp_json);
  xd_job_release(j);
  return ok;
}

/* ---- the other endpoints ------------------------------------------------------------------- */
static enum MHD_Result models(xd_http *h, struct MHD_Connection *c) {
  xd_sbuf b = {0};
  xd_sbuf_puts(&b, "{\"object\":\"list\",\"data\":[{\"id\":");
  xd_serve_json_string(&b, h->model_name, strlen(h->model_name));
  xd_sbuf_printf(&b, ",\"object\":\"model\",\"owned_by\":\"xdistill\",\"max_model_len\":%d}]}", h->o.ctx);
  return answer_json(c, MHD_HTTP_OK, xd_sbuf_take(&b));
}

static enum MHD_Result metrics(xd_http *h, struct MHD_Connection *c) {
  xd_engine_stats s;
  xd_engine_get_stats(h->eng, &s);
  char *buf = xd_malloc(1024);
  snprintf(buf, 1024,
           "# TYPE xdistill_slots gauge\nxdistill_slots %d\n"
           "# TYPE xdistill_requests_running gauge\nxdistill_requests_running %d\n"
           "# TYPE xdistill_requests_waiting gauge\nxdistill_requests_waiting %d\n"
           "# TYPE xdistill_requests_finished_total counter\nxdistill_requests_finished_total %llu\n"
           "# TYPE xdistill_prompt_tokens_total counter\nxdistill_prompt_tokens_total %llu\n"
           "# TYPE xdistill_generation_tokens_total counter\nxdistill_generation_tokens_total %llu\n"
           "# TYPE xdistill_decode_steps_total counter\nxdistill_decode_steps_total %llu\n"
           "# TYPE xdistill_busy_seconds_total counter\nxdistill_busy_seconds_total %.3f\n",
           s.slots, s.running, s.queued, (unsigned long long)s.jobs_done, (unsigned long long)s.prompt_tokens,
           (unsigned long long)s.generated_tokens, (unsigned long long)s.steps, s.busy_s);
  return answer(c, MHD_HTTP_OK, "text/plain; version=0.0.4", buf);
}

static int authorized(const xd_http *h, struct MHD_Connection *c) {
  if (!h->api_key) return 1;
  const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
  return a && !strncmp(a, "Bearer ", 7) && !strcmp(a + 7, h->api_key);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
  (void)version;
  xd_http *h = cls;
  conn_body *b = *con_cls;
  if (!b) { /* headers only so far */
    *con_cls = xd_calloc(1, sizeof *b);
    return MHD_YES;
  }
  if (*upload_size) { /* a piece of the body */
    if (!b->too_big && b->len + *upload_size > h->o.max_body) {
      b->too_big = 1;
      free(b->body);
      b->body = NULL;
      b->len = b->cap = 0;
    }
    if (!b->too_big) {
      if (b->len + *upload_size + 1 > b->cap) {
        b->cap = (b->len + *upload_size + 1) * 2;
        b->body = xd_realloc(b->body, b->cap);
      }
      memcpy(b->body + b->len, upload, *upload_size);
      b->len += *upload_size;
      b->body[b->len] = 0;
    }
    *upload_size = 0;
    return MHD_YES;
  }
  const int get = !strcmp(method, "GET"), post = !strcmp(method, "POST");
  const int is_gen = !strcmp(url, "/v1/completions") || !strcmp(url, "/v1/chat/completions");
  const int is_get = !strcmp(url, "/v1/models") || !strcmp(url, "/health") || !strcmp(url, "/metrics");
  if (!is_gen && !is_get) {
    char msg[160];
    snprintf(msg, sizeof msg, "no endpoint %.100s", url);
    return answer_error(c, 404, msg);
  }
  if ((is_gen && !post) || (is_get && !get)) {
    char msg[160];
    snprintf(msg, sizeof msg, "%.100s takes %s", url, is_gen ? "POST" : "GET");
    return answer_error(c, 405, msg);
  }
  if (!strcmp(url, "/health")) return answer_json(c, MHD_HTTP_OK, xd_strdup("{\"status\":\"ok\"}"));
  if (!authorized(h, c)) return answer_error(c, 401, "missing or wrong API key (Authorization: Bearer KEY)");
  if (!strcmp(url, "/v1/models")) return models(h, c);
  if (!strcmp(url, "/metrics")) return metrics(h, c);
  return generate(h, c, b, !strcmp(url, "/v1/chat/completions") ? XD_SERVE_CHAT : XD_SERVE_COMPLETION);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode tc) {
  (void)cls, (void)c, (void)tc;
  conn_body *b = *con_cls;
  if (b) free(b->body), free(b);
  *con_cls = NULL;
}

int xd_http_start(xd_http **out, xd_engine *eng, xd_runner *r, const xd_http_options *o, xd_err *e) {
  *out = NULL;
  struct sockaddr_in addr;
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)o->port);
  const char *host = o->host ? o->host : "127.0.0.1";
  if (o->port < 0 || o->port > 65535) return xd_errf(e, "serve: port %d out of range [0, 65535]", o->port);
  if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) return xd_errf(e, "serve: '%s' is not an IPv4 address", host);
  xd_http *h = xd_calloc(1, sizeof *h);
  h->eng = eng, h->r = r, h->o = *o;
  h->model_name = xd_strdup(o->model_name ? o->model_name : r->name);
  h->o.model_name = h->model_name;
  if (o->api_key) h->api_key = xd_strdup(o->api_key);
  h->o.api_key = h->api_key;
  h->d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL,
                          NULL, on_request, h, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                          MHD_OPTION_CONNECTION_LIMIT, (unsigned)(o->max_connections > 0 ? o->max_connections : 256),
                          MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600, MHD_OPTION_NOTIFY_COMPLETED, on_completed,
                          NULL, MHD_OPTION_EXTERNAL_LOGGER, on_log, h, MHD_OPTION_END);
  if (!h->d) {
    xd_errf(e, "serve: cannot listen on %s:%d (in use, or not an address of this machine)", host, o->port);
    free(h->model_name), free(h->api_key), free(h);
    return -1;
  }
  __atomic_store_n(&h->listening, 1, __ATOMIC_RELEASE);
  *out = h;
  return 0;
}

int xd_http_port(const xd_http *h) {
  const union MHD_DaemonInfo *i = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
  return i ? (int)i->port : -1;
}

void xd_http_stop(xd_http *h) {
  if (!h) return;
  MHD_stop_daemon(h->d);
  free(h->model_name), free(h->api_key), free(h);
}
