/* `serve` (src/serve/): the OpenAI request parser (every field, every refusal naming its field),
 * the response JSON (escapes, NUL bytes, parsed back by cJSON), and the engine: jobs from many
 * threads' view, more of them than slots, greedy and seeded sampling, stop strings, a cut at the
 * context, on a fixture teacher (KV cache per slot) and a student made from it. Each job's text,
 * token count and finish reason must equal xd_runner_generate's with the same options: a slot's
 * output does not depend on what else runs or when it joined. Then the queue limit, cancels,
 * bad prompts, and shutdown (queued jobs end with an error, submits refused). */
#include "test.h"
#include <cjson/cJSON.h>
#include <pthread.h>
#include "eval/runner.h"
#include "model/student/student_init.h"
#include "serve/engine.h"
#include "serve/request.h"

#define TEACHER "tests/fixtures/teachers/llama-gqa/fp32"
#define TOKENIZER "tests/fixtures/tokenizer_bytes/tokenizer.json"

/* ---- requests ------------------------------------------------------------------------------ */
static int parse(xd_serve_kind k, const char *body, xd_serve_request *rq, xd_err *e) {
  return xd_serve_request_parse(body, strlen(body), k, rq, e);
}

static void test_request_completion(void) {
  xd_serve_request rq;
  xd_err e = {0};
  CHECK(parse(XD_SERVE_COMPLETION, "{\"prompt\":\"Hi\\nthere\",\"model\":\"x\",\"user\":\"u\"}", &rq, &e) == 0);
  CHECK(rq.prompt && !strcmp(rq.prompt, "Hi\nthere"));
  CHECK(rq.max_tokens == -1 && rq.sp.temperature == 1.0 && rq.sp.top_p == 1.0 && rq.sp.top_k == 0);
  CHECK(!rq.has_seed && !rq.stream && !rq.ignore_eos && rq.n_stops == 0);
  xd_serve_request_free(&rq);
  const char *full = "{\"prompt\":[5,0,255],\"max_tokens\":7,\"temperature\":0.5,\"top_p\":0.9,\"top_k\":40,"
                     "\"seed\":123456789,\"stop\":[\"a\",\"bc\"],\"stream\":true,\"ignore_eos\":true,\"n\":1,"
                     "\"echo\":false,\"presence_penalty\":0,\"logprobs\":null,\"best_of\":1}";
  CHECKF(parse(XD_SERVE_COMPLETION, full, &rq, &e) == 0, "%s", e.msg);
  CHECK(rq.n_prompt_ids == 3 && rq.prompt_ids[0] == 5 && rq.prompt_ids[1] == 0 && rq.prompt_ids[2] == 255);
  CHECK(rq.max_tokens == 7 && rq.sp.temperature == 0.5 && rq.sp.top_p == 0.9 && rq.sp.top_k == 40);
  CHECK(rq.has_seed && rq.seed == 123456789u && rq.stream && rq.ignore_eos);
  CHECK(rq.n_stops == 2 && !strcmp(rq.stops[0], "a") && !strcmp(rq.stops[1], "bc"));
  xd_serve_request_free(&rq);
  CHECK(parse(XD_SERVE_COMPLETION, "{\"prompt\":[\"one\"],\"stop\":\"x\",\"top_k\":-1}", &rq, &e) == 0);
  CHECK(rq.prompt && !strcmp(rq.prompt, "one") && rq.n_stops == 1 && rq.sp.top_k == 0 && rq.logprobs == -1);
  xd_serve_request_free(&rq);
  /* log-probabilities: a count in completions, a flag and a count in chat; off when false or null */
  static const struct { xd_serve_kind k; const char *body; int want; } lps[] = {
    {XD_SERVE_COMPLETION, "{\"prompt\":\"x\",\"logprobs\":3}", 3},
    {XD_SERVE_COMPLETION, "{\"prompt\":\"x\",\"logprobs\":0}", 0},
    {XD_SERVE_COMPLETION, "{\"prompt\":\"x\",\"logprobs\":null}", -1},
    {XD_SERVE_COMPLETION, "{\"prompt\":\"x\",\"logprobs\":false,\"stream\":true}", -1},
    {XD_SERVE_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"logprobs\":true,\"top_logprobs\":4}", 4},
    {XD_SERVE_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"logprobs\":true}", 0},
    {XD_SERVE_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"logprobs\":false}", -1},
  };
  for (size_t i = 0; i < sizeof lps / sizeof *lps; i++) {
    CHECKF(parse(lps[i].k, lps[i].body, &rq, &e) == 0 && rq.logprobs == lps[i].want, "logprobs case %zu: %s (%d)", i, e.msg,
           rq.logprobs);
    xd_serve_request_free(&rq);
  }
}

static void test_request_chat(void) {
  xd_serve_request rq;
  xd_err e = {0};
  const char *body = "{\"messages\":[{\"role\":\"developer\",\"content\":\"Be brief\"},"
                     "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]},"
                     "{\"role\":\"assistant\",\"content\":\"c\"}],\"max_completion_tokens\":9}";
  CHECKF(parse(XD_SERVE_CHAT, body, &rq, &e) == 0, "%s", e.msg);
  CHECK(rq.n_msgs == 3 && rq.max_tokens == 9);
  if (rq.n_msgs == 3) {
    CHECK(!strcmp(rq.msgs[0].role, "system") && !strcmp(rq.msgs[0].content, "Be brief"));
    CHECK(!strcmp(rq.msgs[1].role, "user") && !strcmp(rq.msgs[1].content, "ab"));
    CHECK(!strcmp(rq.msgs[2].role, "assistant") && !strcmp(rq.msgs[2].content, "c"));
  }
  xd_serve_request_free(&rq);
}

static void test_request_errors(void) {
  static const struct { xd_serve_kind k; const char *body, *want; } cases[] = {
    {XD_SERVE_COMPLETION, "", "not a JSON object"},
    {XD_SERVE_COMPLETION, "[1,2]", "not a JSON object"},
    {XD_SERVE_COMPLETION, "{\"prompt\":\"x\"", "not a JSON object"},
    {XD_SERVE_COMPLETION, "{}", "'prompt' is required"},
    {XD_SERVE_COMPLETION, "{\"prompt\":3}", "'prompt' must be"},
    {XD_SERVE_COMPLETION, "{\"prompt\":[]}", "empty array"},
    {XD_SERVE_COMPLETION, "{\"prompt\":[1,-2]}", "'prompt' must be"},
    {XD_SERVE_COMPLETION, "{\"prompt\":[1,2.5]}", "'prompt' must be"},
    {XD_SERVE_COMPLETION, "{\"prompt\":[\"a\",\"b\"]}", "'prompt' must be"},
    {XD_SERVE_COMPLETION, "{\"prompt\":\"x\",\"max_tokens\":0}", "'max_tokens' must be in"},
    {XD_SERVE_COMPLETION, "{\"prompt\":\"x\",\"max_tokens\":1.5}", "'max_tokens' must be an integer"},
    {XD_SERVE_COMPLETION, "{\"prompt\":\"x\",\"max_tokens\":\"5\"}", "'max_tokens' must be an integer"},
    {XD_SERVE_COMPLETION, "{\"prompt\":\"x\",\"temperature\":-1}", "'temperature' must be in"},
    {XD_SERVE_COMPLETION, "{\"prompt\":\"x\",\"temperature\":\"hot\"}", "'temperature' must be a number"},
    {XD_SERVE_COMPLETION, "{\"prompt\":\"x\",\"top_p\":0}", "'top_p' must be in (0, 1]"},
    {XD_SERVE_COMPLETION, "{\"prompt\":\"x\",\"top_p\":1.5}", "'top_p' must be in"},
    {XD_SERVE_COMPLETION, "{\"prompt\":\"x\",\"top_k\":-2}", "'top_k' must be in"},
    {XD_SERVE_COMPLETION, "{\"prompt\":\"x\",\"seed\":0.5}", "'seed' must be an integer"},
    {XD_SERVE_COMPLETION, "{\"prompt\":\"x\",\"stream\":1}", "'stream' must be true or false"},
    {XD_SERVE_COMPLETION, "{\"prompt\":\"x\",\"stop\":\"\"}", "'stop' strings must not be empty"},
    {XD_SERVE_COMPLETION, "{\"prompt\":\"x\",\"stop\":[\"a\",3]}", "'stop' must hold"},
    {XD_SERVE_COMPLETION, "{\"prompt\":\"x\",\"stop\":[\"1\",\"2\",\"3\",\"4\",\"5\",\"6\",\"7\",\"8\",\"9\",\"10\",\"11\",\"12\",\"13\",\"14\",\"15\",\"16\",\"17\"]}", "more than 16"},
    {XD_SERVE_COMPLETION, "{\"prompt\":\"x\",\"n\":2}", "'n' must be 1"},
    {XD_SERVE_COMPLETION, "{\"prompt\":\"x\",\"echo\":true}", "'echo' is not supported"},
    {XD_SERVE_COMPLETION, "{\"prompt\":\"x\",\"logprobs\":21}", "'logprobs' must be in [0, 20]"},
    {XD_SERVE_COMPLETION, "{\"prompt\":\"x\",\"logprobs\":2,\"stream\":true}", "'logprobs' with 'stream' is not supported"},
    {XD_SERVE_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"top_logprobs\":2}", "'top_logprobs' needs 'logprobs': true"},
    {XD_SERVE_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"logprobs\":3}", "'logprobs' must be true or false"},
    {XD_SERVE_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"logprobs\":true,\"top_logprobs\":21}", "'top_logprobs' must be in"},
    {XD_SERVE_COMPLETION, "{\"prompt\":\"x\",\"presence_penalty\":0.5}", "'presence_penalty' is not supported"},
    {XD_SERVE_COMPLETION, "{\"prompt\":\"x\",\"best_of\":2}", "'best_of' is not supported"},
    {XD_SERVE_COMPLETION, "{\"prompt\":\"x\",\"suffix\":\"y\"}", "'suffix' is not supported"},
    {XD_SERVE_CHAT, "{\"prompt\":\"x\"}", "'messages' is required"},
    {XD_SERVE_CHAT, "{\"messages\":{}}", "'messages' must be an array"},
    {XD_SERVE_CHAT, "{\"messages\":[]}", "1 to 1024 messages"},
    {XD_SERVE_CHAT, "{\"messages\":[3]}", "messages[0] must be an object"},
    {XD_SERVE_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"tool\",\"content\":\"b\"}]}", "messages[1].role must be"},
    {XD_SERVE_CHAT, "{\"messages\":[{\"role\":\"user\"}]}", "messages[0].content is required"},
    {XD_SERVE_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}", "only parts"},
    {XD_SERVE_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"tools\":[]}", "'tools' is not supported"},
    {XD_SERVE_CHAT, "{\"messages\":[{\"role\":\"user\",\"content\":\"a\"}],\"response_format\":{\"type\":\"json_object\"}}", "'response_format' is not supported"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    xd_serve_request rq;
    xd_err e = {0};
    const int rc = parse(cases[i].k, cases[i].body, &rq, &e);
    CHECKF(rc == -1 && strstr(e.msg, cases[i].want) && !strchr(e.msg, '\n'), "case %zu (%s): rc %d, '%s'", i, cases[i].body,
           rc, e.msg);
    if (rc == 0) xd_serve_request_free(&rq);
  }
}

static void test_response_json(void) {
  /* every byte value once (NUL included) survives a JSON round trip but NUL, which is \u0000 */
  char raw[256];
  for (int i = 0; i < 256; i++) raw[i] = (char)(255 - i);
  xd_sbuf b = {0};
  xd_serve_json_string(&b, raw, 255); /* bytes 255 .. 1 */
  char *s = xd_sbuf_take(&b);
  cJSON *o = cJSON_Parse(s);
  CHECKF(o && cJSON_IsString(o) && strlen(o->valuestring) == 255 && !memcmp(o->valuestring, raw, 255), "%s", s);
  cJSON_Delete(o);
  free(s);
  xd_serve_json_string(&b, "a\0b\"\\", 5);
  s = xd_sbuf_take(&b);
  CHECKF(!strcmp(s, "\"a\\u0000b\\\"\\\\\""), "%s", s);
  free(s);

  const xd_serve_meta mc = {XD_SERVE_COMPLETION, "cmpl-7", "m\"odel", 1700000000};
  s = xd_serve_response_json(&mc, "he\nllo", 6, "length", 3, 4, NULL);
  o = cJSON_Parse(s);
  CHECKF(o != NULL, "%s", s);
  if (o) {
    const cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0), *u = cJSON_GetObjectItem(o, "usage");
    CHECK(!strcmp(cJSON_GetObjectItem(o, "object")->valuestring, "text_completion"));
    CHECK(!strcmp(cJSON_GetObjectItem(o, "model")->valuestring, "m\"odel"));
    CHECK(!strcmp(cJSON_GetObjectItem(c0, "text")->valuestring, "he\nllo"));
    CHECK(!strcmp(cJSON_GetObjectItem(c0, "finish_reason")->valuestring, "length"));
    CHECK(cJSON_GetObjectItem(u, "total_tokens")->valuedouble == 7);
  }
  cJSON_Delete(o);
  free(s);
  const xd_serve_meta mh = {XD_SERVE_CHAT, "chatcmpl-1", "m", 1};
  s = xd_serve_chunk_json(&mh, "", 0, NULL, 1, -1, 0);
  o = cJSON_Parse(s);
  CHECKF(o != NULL, "%s", s);
  if (o) {
    const cJSON *c0 = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "choices"), 0), *d = cJSON_GetObjectItem(c0, "delta");
    CHECK(!strcmp(cJSON_GetObjectItem(o, "object")->valuestring, "chat.completion.chunk"));
    CHECK(!strcmp(cJSON_GetObjectItem(d, "role")->valuestring, "assistant"));
    CHECK(cJSON_IsNull(cJSON_GetObjectItem(c0, "finish_reason")) && !cJSON_GetObjectItem(o, "usage"));
  }
  cJSON_Delete(o);
  free(s);
  s = xd_serve_error_json("bad \"x\"", "invalid_request_error", 400);
  o = cJSON_Parse(s);
  CHECK(o && !strcmp(cJSON_GetObjectItem(cJSON_GetObjectItem(o, "error"), "message")->valuestring, "bad \"x\""));
  cJSON_Delete(o);
  free(s);
}

/* logprobs JSON: a token that is not whole UTF-8 (an overlong or cut character) reads
 * "bytes:\xNN" in completions and carries its bytes in chat; both parse back. */
static char *piece_of(void *user, int32_t id) {
  (void)user;
  return xd_strdup(id == 0 ? "ok" : id == 1 ? "\xe2\x82" : "\xc0\xaf");
}
static void test_logprobs_json(void) {
  const int32_t ids[3] = {0, 1, 2}, top[3] = {1, 0, 2};
  const float lp[3] = {-0.25f, -1.5f, -INFINITY};
  char *c = xd_serve_logprobs_json(XD_SERVE_COMPLETION, 3, ids, lp, 1, top, lp, piece_of, NULL);
  cJSON *o = cJSON_Parse(c);
  CHECKF(o != NULL, "%s", c);
  if (o) {
    const cJSON *t = cJSON_GetObjectItem(o, "tokens");
    CHECK(!strcmp(cJSON_GetArrayItem(t, 0)->valuestring, "ok"));
    CHECK(!strcmp(cJSON_GetArrayItem(t, 1)->valuestring, "bytes:\\xe2\\x82"));
    CHECK(!strcmp(cJSON_GetArrayItem(t, 2)->valuestring, "bytes:\\xc0\\xaf"));
    CHECK(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "token_logprobs"), 0)->valuedouble == -0.25);
    CHECK(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "text_offset"), 2)->valuedouble == 4);
  }
  cJSON_Delete(o);
  free(c);
  c = xd_serve_logprobs_json(XD_SERVE_CHAT, 2, ids, lp, 1, top, lp, piece_of, NULL);
  o = cJSON_Parse(c);
  CHECKF(o != NULL, "%s", c);
  if (o) {
    const cJSON *e1 = cJSON_GetArrayItem(cJSON_GetObjectItem(o, "content"), 1), *b = cJSON_GetObjectItem(e1, "bytes");
    CHECK(cJSON_GetArraySize(b) == 2 && cJSON_GetArrayItem(b, 0)->valuedouble == 226 && cJSON_GetArrayItem(b, 1)->valuedouble == 130);
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(e1, "top_logprobs")) == 1);
  }
  cJSON_Delete(o);
  free(c);
}

/* ---- engine -------------------------------------------------------------------------------- */
typedef struct {
  xd_engine *eng;
  int stop; /* set by the test thread (atomics) */
  int rc;
  xd_err e;
} run_arg;

static int should_stop(void *user) { return __atomic_load_n(&((run_arg *)user)->stop, __ATOMIC_ACQUIRE); }
static void *run_thread(void *p) {
  run_arg *a = p;
  a->rc = xd_engine_run(a->eng, should_stop, a, &a->e);
  return NULL;
}

/* The whole text of a job (waits for its end). */
static char *job_text(xd_serve_job *j, size_t *len) {
  char *all = NULL, *piece;
  size_t off = 0, n;
  *len = 0;
  while (xd_job_wait(j, &off, &piece, &n)) {
    all = realloc(all, *len + n + 1);
    memcpy(all + *len, piece, n);
    *len += n;
    all[*len] = 0;
    free(piece);
  }
  return all;
}

/* xd_runner_generate's streamed text, with its length (a random model may emit byte 0) */
typedef struct {
  char *s;
  size_t n;
} text_buf;
static void on_text(const char *s, size_t n, void *user) {
  text_buf *b = user;
  b->s = realloc(b->s, b->n + n + 1);
  memcpy(b->s + b->n, s, n);
  b->n += n;
}

typedef struct {
  const char *prompt;
  int max_new;
  int stop_at_eos;
  xd_sample_params sp;
  uint64_t seed;
  const char *stop;
  int logprobs; /* -1: none */
} job_case;

/* A job's recorded log-probabilities against log-softmax (double) of a full forward over prompt
 * + generated tokens: each token's own (1e-4: the decoder's and the forward's float sums) and its
 * top k (descending, each at its forward value, the forward's best and k-th best). */
static void check_logprobs(xd_runner *r, xd_serve_job *j, const int32_t *prompt, size_t np, const char *name, int i) {
  size_t n;
  const int32_t *ids, *top_ids;
  const float *lp, *top_lp;
  int k;
  xd_job_logprobs(j, &n, &ids, &lp, &k, &top_ids, &top_lp);
  const int V = r->cfg.vocab, T = (int)(np + n);
  if (n == 0) { CHECKF(0, "%s job %d: no log-probabilities recorded", name, i); return; }
  int32_t *seq = malloc((size_t)T * sizeof *seq);
  memcpy(seq, prompt, np * sizeof *seq);
  memcpy(seq + np, ids, n * sizeof *seq);
  float *lg = malloc((size_t)T * V * sizeof *lg);
  xd_err e = {0};
  CHECKF(xd_runner_forward(r, seq, 1, T, lg, &e) == 0, "%s", e.msg);
  double *ref = malloc((size_t)V * sizeof *ref), worst = 0;
  int bad_order = 0;
  for (size_t t = 0; t < n; t++) {
    const float *row = lg + (np - 1 + t) * (size_t)V;
    double mx = row[0], z = 0;
    for (int v = 1; v < V; v++) mx = fmax(mx, row[v]);
    for (int v = 0; v < V; v++) z += exp(row[v] - mx);
    for (int v = 0; v < V; v++) ref[v] = row[v] - mx - log(z);
    worst = fmax(worst, fabs(lp[t] - ref[ids[t]]));
    double best = -INFINITY;
    for (int v = 0; v < V; v++) best = fmax(best, ref[v]);
    for (int q = 0; q < k; q++) {
      worst = fmax(worst, fabs(top_lp[t * k + q] - ref[top_ids[t * k + q]]));
      bad_order += q > 0 && top_lp[t * k + q] > top_lp[t * k + q - 1];
      int above = 0; /* tokens the forward ranks clearly above this one: fewer than q + 1 */
      for (int v = 0; v < V; v++) above += ref[v] > ref[top_ids[t * k + q]] + 1e-4;
      bad_order += above > q;
    }
    if (k > 0) worst = fmax(worst, fabs(top_lp[t * k] - best));
  }
  CHECKF(worst < 1e-4 && bad_order == 0, "%s job %d: log-probabilities off by %.3g, %d out of rank", name, i, worst, bad_order);
  free(seq), free(lg), free(ref);
}

static void check_engine(const char *model, const char *name) {
  xd_err e = {0};
  xd_runner r;
  if (xd_runner_load(&r, model, TOKENIZER, XD_TOK_REQUIRED, &e)) { CHECKF(0, "%s", e.msg); return; }
  const int ctx = 48;
  const job_case cases[] = {
    {"Once upon a time", 20, 0, {0, 0, 1}, 1, NULL, 5},
    {"The quick brown fox", 24, 1, {1.3, 50, 0.9}, 7, NULL, -1},
    {"ab", 30, 0, {0.8, 0, 1}, 8, NULL, 0},
    {"In the beginning", 200, 0, {0, 0, 1}, 1, NULL, -1}, /* cut at the context */
    {"Hello", 25, 1, {1.0, 0, 1}, 9, "e", 20},
    {"x", 12, 0, {0, 0, 1}, 1, NULL, -1},
    {"Zebras and lions", 18, 0, {1.5, 100, 0.95}, 10, NULL, 3},
    {"Once upon a time", 20, 0, {0, 0, 1}, 1, NULL, -1}, /* the first again, in another slot */
  };
  const int n = (int)(sizeof cases / sizeof *cases);
  const xd_engine_options o = {3, ctx, 64, NULL, NULL};
  xd_engine *eng;
  if (xd_engine_create(&eng, &r, &o, &e)) { CHECKF(0, "%s", e.msg); xd_runner_free(&r); return; }
  run_arg a = {eng, 0, 0, {{0}}};
  pthread_t th;
  pthread_create(&th, NULL, run_thread, &a);
  xd_serve_job *jobs[8];
  for (int i = 0; i < n; i++) {
    int32_t *ids;
    size_t np;
    CHECK(xd_tokenizer_encode(r.tok, cases[i].prompt, strlen(cases[i].prompt), 1, &ids, &np, &e) == 0);
    const char *stops[1] = {cases[i].stop};
    const xd_job_params p = {cases[i].max_new, cases[i].stop_at_eos, stops, cases[i].stop ? 1 : 0, cases[i].sp, cases[i].seed, i & 1,
                             cases[i].logprobs};
    int status;
    jobs[i] = xd_engine_submit(eng, ids, np, &p, &status, &e);
    CHECKF(jobs[i] != NULL, "%s: submit %d: %s", name, i, e.msg);
    free(ids);
    if (i == 4) { /* let the first ones run a while: later jobs join a running batch */
      size_t l;
      free(job_text(jobs[0], &l));
    }
  }
  for (int i = 0; i < n; i++) {
    if (!jobs[i]) continue;
    size_t len;
    char *text = job_text(jobs[i], &len);
    const char *finish, *err;
    size_t np, nc;
    int status;
    xd_job_result(jobs[i], &finish, &err, &status, &np, &nc);
    CHECK(status == 200);
    /* the same request alone through xd_runner_generate */
    int32_t *ids;
    size_t n_ids;
    CHECK(xd_tokenizer_encode(r.tok, cases[i].prompt, strlen(cases[i].prompt), 1, &ids, &n_ids, &e) == 0);
    xd_gen_options go;
    xd_gen_options_default(&go);
    const char *stops[1] = {cases[i].stop};
    go.max_new = cases[i].max_new;
    go.max_total = (size_t)ctx;
    go.stop_at_eos = cases[i].stop_at_eos;
    go.stops = stops;
    go.n_stops = cases[i].stop ? 1 : 0;
    go.sp = cases[i].sp;
    go.seed = cases[i].seed;
    text_buf want = {NULL, 0};
    go.on_text = on_text;
    go.user = &want;
    size_t want_n = 0;
    const char *why = NULL;
    CHECK(xd_runner_generate(&r, ids, n_ids, &go, NULL, &want_n, NULL, &why, &e) == 0);
    const char *want_finish = !strcmp(why, "length") ? "length" : "stop";
    CHECKF(finish && !strcmp(finish, want_finish), "%s job %d: finish %s vs %s (%s)", name, i, finish ? finish : "NULL", why,
           err ? err : "");
    CHECKF(np == n_ids && nc == want_n, "%s job %d: %zu + %zu tokens vs %zu + %zu", name, i, np, nc, n_ids, want_n);
    CHECKF(len == want.n && (len == 0 || !memcmp(text, want.s, len)), "%s job %d: text differs (%zu vs %zu bytes)", name, i,
           len, want.n);
    if (i == 3) CHECKF(np + nc == (size_t)ctx, "%s: the long job ends at the context (%zu + %zu)", name, np, nc);
    free(text), free(want.s), free(ids);
    if (cases[i].logprobs < 0) xd_job_release(jobs[i]), jobs[i] = NULL; /* the others: checked below */
  }
  xd_engine_stats st;
  xd_engine_get_stats(eng, &st);
  CHECK(st.jobs_done == (uint64_t)n && st.running == 0 && st.queued == 0 && st.steps > 0);
  __atomic_store_n(&a.stop, 1, __ATOMIC_RELEASE);
  pthread_join(th, NULL);
  CHECKF(a.rc == 0, "%s", a.e.msg);
  /* the log-probabilities, once the engine no longer runs the model (a full forward here) */
  for (int i = 0; i < n; i++) {
    if (!jobs[i]) continue;
    int32_t *ids;
    size_t n_ids;
    CHECK(xd_tokenizer_encode(r.tok, cases[i].prompt, strlen(cases[i].prompt), 1, &ids, &n_ids, &e) == 0);
    check_logprobs(&r, jobs[i], ids, n_ids, name, i);
    free(ids);
    xd_job_release(jobs[i]);
  }
  xd_engine_free(eng);
  xd_runner_free(&r);
}

static char g_student[600];

static void test_engine_teacher(void) { check_engine(TEACHER, "teacher"); }
static void test_engine_student(void) {
  if (!g_student[0]) SKIP("no student");
  check_engine(g_student, "student");
}

/* The queue limit, a cancel before the start, bad prompts, and shutdown. */
static void test_engine_limits(void) {
  xd_err e = {0};
  xd_runner r;
  if (xd_runner_load(&r, TEACHER, TOKENIZER, XD_TOK_REQUIRED, &e)) { CHECKF(0, "%s", e.msg); return; }
  const xd_engine_options o = {2, 32, 2, NULL, NULL};
  xd_engine *eng;
  if (xd_engine_create(&eng, &r, &o, &e)) { CHECKF(0, "%s", e.msg); xd_runner_free(&r); return; }
  const int32_t prompt[3] = {72, 105, 33};
  const xd_job_params p = {10, 0, NULL, 0, {0, 0, 1}, 1, 0, -1};
  int status = 0;
  /* bad requests: 400 */
  CHECK(!xd_engine_submit(eng, prompt, 0, &p, &status, &e) && status == 400 && strstr(e.msg, "empty"));
  int32_t longp[32] = {0};
  CHECK(!xd_engine_submit(eng, longp, 32, &p, &status, &e) && status == 400 && strstr(e.msg, "context is 32"));
  const int32_t badid[2] = {1, 100000};
  CHECK(!xd_engine_submit(eng, badid, 2, &p, &status, &e) && status == 400 && strstr(e.msg, "100000"));
  xd_job_params bad_t = p;
  bad_t.sp.temperature = -1;
  CHECK(!xd_engine_submit(eng, prompt, 3, &bad_t, &status, &e) && status == 400);
  /* queue of 2 with the engine not running: the third is refused with 503 */
  xd_serve_job *a = xd_engine_submit(eng, prompt, 3, &p, &status, &e);
  xd_serve_job *b = xd_engine_submit(eng, prompt, 3, &p, &status, &e);
  CHECK(a && b);
  CHECK(!xd_engine_submit(eng, prompt, 3, &p, &status, &e) && status == 503 && strstr(e.msg, "busy"));
  if (a) xd_job_cancel(a);
  run_arg ra = {eng, 0, 0, {{0}}};
  pthread_t th;
  pthread_create(&th, NULL, run_thread, &ra);
  size_t len, np, nc;
  const char *finish, *err;
  if (b) {
    free(job_text(b, &len));
    xd_job_result(b, &finish, &err, &status, &np, &nc);
    CHECK(finish && !strcmp(finish, "length") && nc == 10);
    xd_job_release(b);
  }
  if (a) {
    free(job_text(a, &len));
    xd_job_result(a, &finish, &err, &status, &np, &nc);
    CHECKF(finish && !strcmp(finish, "cancelled") && nc == 0, "cancelled job: %s, %zu tokens", finish ? finish : err, nc);
    xd_job_release(a);
  }
  __atomic_store_n(&ra.stop, 1, __ATOMIC_RELEASE);
  pthread_join(th, NULL);
  CHECK(ra.rc == 0);
  CHECK(!xd_engine_submit(eng, prompt, 3, &p, &status, &e) && status == 503 && strstr(e.msg, "shutting down"));
  xd_engine_free(eng);

  /* jobs queued when the engine stops end with an error */
  CHECK(xd_engine_create(&eng, &r, &o, &e) == 0);
  xd_serve_job *q = xd_engine_submit(eng, prompt, 3, &p, &status, &e);
  run_arg rb = {eng, 1, 0, {{0}}};
  CHECK(xd_engine_run(eng, should_stop, &rb, &e) == 0);
  if (q) {
    free(job_text(q, &len));
    xd_job_result(q, &finish, &err, &status, &np, &nc);
    CHECK(!finish && err && strstr(err, "shutting down") && status == 503);
    xd_job_release(q);
  }
  xd_engine_free(eng);
  xd_runner_free(&r);
}

int main(void) {
  xd_err e;
  xd_model_config c;
  if (xd_config_load(&c, TEACHER, &e) == 0) {
    xd_hybrid_config h;
    xd_hybrid_defaults(&h, c.head_dim);
    h.window = 4, h.sinks = 2, h.chunk = 5;
    snprintf(g_student, sizeof g_student, "%s/student", test_tmpdir("serve"));
    if (xd_student_init(TEACHER, &h, g_student, &e) != 0) fprintf(stderr, "%s\n", e.msg), g_student[0] = 0;
  }
  RUN(test_request_completion);
  RUN(test_request_chat);
  RUN(test_request_errors);
  RUN(test_response_json);
  RUN(test_logprobs_json);
  RUN(test_engine_teacher);
  RUN(test_engine_student);
  RUN(test_engine_limits);
  return test_finish();
}
