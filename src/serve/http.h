/* `serve`'s HTTP front: an OpenAI-compatible API over the engine (libmicrohttpd, one thread per
 * connection; the engine's thread owns the model).
 *   POST /v1/completions, POST /v1/chat/completions   (stream: server-sent events)
 *   GET  /v1/models, GET /health, GET /metrics (Prometheus text)
 * A request thread parses and tokenizes its body, submits a job and waits for its text; errors
 * answer {"error": {...}} with 400 (bad request), 401 (API key), 404, 405, 413 (body too large),
 * 503 (queue full, shutting down) or 500 (the model failed). */
#ifndef XD_SERVE_HTTP_H
#define XD_SERVE_HTTP_H
#include "serve/engine.h"

typedef struct {
  const char *host;         /* IPv4 address to bind (default 127.0.0.1: this machine only) */
  int port;                 /* 0: any free port (xd_http_port tells which) */
  int max_connections;
  size_t max_body;          /* bytes of a request body, at most */
  const char *model_name;   /* the id /v1/models reports and responses carry */
  const char *api_key;      /* NULL: none; else requests need "Authorization: Bearer KEY" */
  int ctx;                  /* the engine's context (reported by /v1/models; chat's default max_tokens) */
} xd_http_options;

typedef struct xd_http xd_http;
int xd_http_start(xd_http **out, xd_engine *eng, xd_runner *r, const xd_http_options *o, xd_err *e);
int xd_http_port(const xd_http *h);
/* Stop accepting, close connections, join their threads (after the engine ended its jobs). */
void xd_http_stop(xd_http *h);
#endif
