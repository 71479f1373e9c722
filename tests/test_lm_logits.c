/* xd_lm adaptor over a logits forward pass: with the byte-bigram model of
 * tools/gen_eval_fixtures.py as the "network", the evaluator must reproduce the Python metrics
 * (tests/fixtures/eval/expected.json); greedy generation is checked by hand (the model's
 * successor bonus makes ". abcdef..." the greedy string). */
#include "test.h"
#include <cjson/cJSON.h>
#include "eval/eval.h"
#include "eval/lm_logits.h"

#define V 257
typedef struct {
  size_t forwards, max_n;
} bigram;

static float score(int a, int b) {
  int succ = a == 32 ? 97 : a == 46 ? 32 : a + 1;
  return (float)((double)((a * 131 + b * 71 + (a * b) % 13) % 101) / 25.0 + (b == succ ? 5.0 : 0.0));
}

static int bg_forward(void *ctx, const int32_t *ids, size_t n, float *logits, xd_err *e) {
  bigram *b = ctx;
  (void)e;
  b->forwards++;
  if (n > b->max_n) b->max_n = n;
  for (size_t i = 0; i < n; i++)
    for (int v = 0; v < V; v++) logits[i * V + (size_t)v] = score(ids[i], v);
  return 0;
}
static int bg_encode(void *ctx, const char *text, size_t len, int32_t **ids, size_t *n, xd_err *e) {
  (void)ctx;
  (void)e;
  *ids = malloc((len ? len : 1) * sizeof **ids);
  for (size_t i = 0; i < len; i++) (*ids)[i] = (unsigned char)text[i];
  *n = len;
  return 0;
}
static int bg_decode(void *ctx, const int32_t *ids, size_t n, char **text, xd_err *e) {
  (void)ctx;
  (void)e;
  *text = malloc(n + 1);
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (ids[i] < 256) (*text)[k++] = (char)ids[i];
  (*text)[k] = 0;
  return 0;
}

static double expect(cJSON *ex, const char *task, const char *metric) {
  const cJSON *v = cJSON_GetObjectItem(cJSON_GetObjectItem(ex, task), metric);
  return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static void test_fixture_metrics(void) {
  FILE *fp = fopen("tests/fixtures/eval/expected.json", "rb");
  CHECK(fp != NULL);
  if (!fp) return;
  char buf[8192];
  size_t n = fread(buf, 1, sizeof buf - 1, fp);
  fclose(fp);
  buf[n] = 0;
  cJSON *ex = cJSON_Parse(buf);
  bigram b = {0, 0};
  xd_logits_model m = {&b, bg_forward, bg_encode, bg_decode, V, 256, -1, 64, 4, "bigram-logits", NULL};
  xd_lm lm;
  memset(&lm, 0xA5, sizeof lm); /* a stack variable's garbage: the adaptor must clear the optional callbacks */
  xd_lm_from_logits(&lm, &m);
  CHECK(lm.generate_until_batch == NULL);
  struct { const char *fmt, *file, *key, *metrics[4]; size_t maxlen; } cases[] = {
    {"mc", "mc.jsonl", "mc", {"acc", "acc_norm"}, 2048},
    {"winogrande", "winogrande.jsonl", "winogrande", {"acc"}, 2048},
    {"lambada", "lambada.jsonl", "lambada", {"acc", "perplexity"}, 2048},
    {"perplexity", "ppl.txt", "ppl", {"bits_per_byte", "word_perplexity"}, 16},
    {"mc", "mc.jsonl", "mc", {"acc", "acc_norm"}, 32}, /* contexts cut from the left: same scores for a bigram */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char path[256];
    snprintf(path, sizeof path, "tests/fixtures/eval/%s", cases[i].file);
    m.max_length = lm.max_length = cases[i].maxlen;
    b.max_n = 0;
    xd_task *t = NULL;
    xd_err e = {{0}};
    CHECKF(xd_task_load(&t, cases[i].fmt, path, NULL, NULL, NULL, &e) == 0, "%s", e.msg);
    if (!t) continue;
    xd_task_result r;
    CHECKF(xd_eval_run(t, &lm, NULL, &r, &e) == 0, "%s", e.msg);
    for (int k = 0; k < 4 && cases[i].metrics[k]; k++) {
      const xd_metric *mt = xd_task_result_metric(&r, cases[i].metrics[k]);
      CHECKF(mt != NULL, "%s missing", cases[i].metrics[k]);
      if (mt) CHECK_REL(mt->value, expect(ex, cases[i].key, cases[i].metrics[k]), 2e-5, 1e-9);
    }
    CHECKF(b.max_n <= cases[i].maxlen, "forward saw %zu > %zu tokens", b.max_n, cases[i].maxlen);
    xd_task_result_free(&r);
    xd_task_free(t);
  }
  cJSON_Delete(ex);
}

static void test_greedy_generation(void) {
  bigram b = {0, 0};
  xd_logits_model m = {&b, bg_forward, bg_encode, bg_decode, V, 256, -1, 64, 1, "bigram-logits", NULL};
  xd_lm lm;
  xd_lm_from_logits(&lm, &m);
  const int32_t prompt[] = {'G', 'o', '.'};
  const char *stops[] = {"zz", "e"};
  char *out = NULL;
  xd_err e = {{0}};
  CHECK(lm.generate_until(lm.ctx, prompt, 3, stops, 2, 20, &out, &e) == 0 && out && !strcmp(out, " abcd"));
  free(out);
  CHECK(lm.generate_until(lm.ctx, prompt, 3, stops, 0, 3, &out, &e) == 0 && out && !strcmp(out, " ab"));
  free(out);
  m.eos_id = 'c';
  CHECK(lm.generate_until(lm.ctx, prompt, 3, stops, 0, 10, &out, &e) == 0 && out && !strcmp(out, " ab"));
  free(out);
  m.eos_id = -1;
  m.max_length = 6; /* the context fills up after 3 new tokens */
  CHECK(lm.generate_until(lm.ctx, prompt, 3, stops, 0, 10, &out, &e) == 0 && out && !strcmp(out, " ab"));
  free(out);
  /* out-of-range ids are an error, not a read past the logits */
  const int32_t bad[] = {5, 999};
  xd_ll_request rq = {bad, 1, bad + 1, 1};
  xd_ll_result res;
  CHECK(lm.loglikelihood(lm.ctx, &rq, 1, &res, &e) == -1 && strstr(e.msg, "999"));
  /* without decode there is no generation */
  m.decode = NULL;
  xd_lm_from_logits(&lm, &m);
  CHECK(lm.generate_until == NULL);
}

/* A scorer (xd_logits_model.score) written from the bigram's definition, without its forward:
 * the row that predicts token pos0 + j + 1 is that of the id at pos0 + j. */
typedef struct {
  size_t calls, seqs, max_len;
} scorer;
static int bg_score(void *ctx, const xd_ll_seq *q, size_t n, xd_ll_result *out, xd_err *e) {
  scorer *sc = ctx;
  (void)e;
  sc->calls++;
  sc->seqs += n;
  for (size_t i = 0; i < n; i++) {
    if (q[i].len > sc->max_len) sc->max_len = q[i].len;
    double s = 0;
    int greedy = 1;
    for (size_t j = 0; j < q[i].n_tok; j++) {
      const int a = q[i].ids[q[i].pos0 + j];
      int am = 0;
      for (int v = 1; v < V; v++)
        if (score(a, v) > score(a, am)) am = v;
      double z = 0;
      for (int v = 0; v < V; v++) z += exp((double)score(a, v) - (double)score(a, am));
      s += (double)score(a, q[i].toks[j]) - (double)score(a, am) - log(z);
      greedy &= am == q[i].toks[j];
    }
    out[i].logprob = s, out[i].is_greedy = greedy;
  }
  return 0;
}

/* The same requests scored by the host path and by a score callback agree: same inputs, same
 * positions, the context cut from the left as max_length demands, the same errors. */
static void test_score_callback(void) {
  bigram b = {0, 0};
  scorer sc = {0, 0, 0};
  xd_logits_model m = {&b, bg_forward, bg_encode, bg_decode, V, 256, -1, 8, 1, "bigram-logits", NULL};
  xd_logits_model ms = m;
  ms.ctx = &sc, ms.score = bg_score;
  xd_lm lm, lms;
  xd_lm_from_logits(&lm, &m);
  xd_lm_from_logits(&lms, &ms);
  const int32_t cx[] = {'T', 'h', 'e', ' ', 'c', 'a', 't', ' ', 's', 'a'}, c1[] = {'t'}, c2[] = {' ', 'a', 'b'},
                c3[] = {'x', 'y', 'z', 'w'}, go[] = {'G', 'o', '.'};
  const xd_ll_request rq[] = {{cx, 10, c1, 1}, {cx, 10, c2, 3}, {cx, 3, c3, 4}, {go, 3, c2, 3}, {cx, 4, c2 + 1, 2}};
  const size_t n = sizeof rq / sizeof *rq;
  xd_ll_result a[8], s[8];
  xd_err e = {{0}};
  CHECK(lm.loglikelihood(lm.ctx, rq, n, a, &e) == 0);
  CHECK(lms.loglikelihood(lms.ctx, rq, n, s, &e) == 0);
  CHECK(sc.calls == 1 && sc.seqs == n && sc.max_len == 8); /* one call; inputs cut to max_length */
  for (size_t i = 0; i < n; i++) {
    CHECK_REL(s[i].logprob, a[i].logprob, 1e-12, 1e-12);
    CHECK(s[i].is_greedy == a[i].is_greedy);
  }
  CHECK(a[3].is_greedy && !a[2].is_greedy); /* "Go." then " ab": the successor chain */
  /* errors come before any scoring */
  const int32_t bad[] = {5, 999};
  const xd_ll_request rb[] = {{cx, 10, c1, 1}, {bad, 1, bad + 1, 1}};
  CHECK(lms.loglikelihood(lms.ctx, rb, 2, s, &e) == -1 && strstr(e.msg, "999") && sc.calls == 1);
  const xd_ll_request rl = {cx, 10, cx, 9}; /* continuation longer than max_length */
  CHECK(lms.loglikelihood(lms.ctx, &rl, 1, s, &e) == -1 && strstr(e.msg, "does not fit") && sc.calls == 1);
}

int main(void) {
  RUN(test_fixture_metrics);
  RUN(test_greedy_generation);
  RUN(test_score_callback);
  return test_finish();
}
