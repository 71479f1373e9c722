/* Evaluation: task readers, lm-eval scoring semantics through a mock model, answer extraction,
 * few-shot sampling, task definitions and the results JSON.
 *
 * The mock is a byte-level bigram model (tokens = bytes, prefix token 256) whose metrics on the
 * fixture tasks were computed independently in Python by tools/gen_eval_fixtures.py
 * (tests/fixtures/eval/expected.json). A second mock (uniform) gives hand-computed acc/acc_norm,
 * and a lookup-table generator gives hand-computed exact-match scores. */
#include "test.h"
#include <cjson/cJSON.h>
#include "eval/eval.h"

#define FIX "tests/fixtures/eval"
#define V 257

/* ---- the mock models ------------------------------------------------------------ */
typedef struct {
  double logp[V][V];
  int greedy[V];
  size_t calls, max_batch, max_len_seen, max_length;
  int uniform;
  int bad_request; /* a request broke the interface contract */
  /* generation lookup: question -> raw model output */
  const char *const *gen_q;
  const char *const *gen_out;
  int n_gen;
  int saw_stop_question;
  size_t gen_batches, gen_batch_max; /* mock_gen_batch's calls and their largest size */
  int gen_requests, gen_fail_at;
} mock;

static void mock_init(mock *m, int uniform) {
  memset(m, 0, sizeof *m);
  m->uniform = uniform;
  for (int a = 0; a < V; a++) {
    double s[V], mx = -1e300, z = 0;
    int succ = a == 32 ? 97 : a == 46 ? 32 : a + 1;
    for (int b = 0; b < V; b++) {
      s[b] = uniform ? 0.0 : (double)((a * 131 + b * 71 + (a * b) % 13) % 101) / 25.0 + (b == succ ? 5.0 : 0.0);
      if (s[b] > mx) { mx = s[b]; m->greedy[a] = b; }
    }
    for (int b = 0; b < V; b++) z += exp(s[b] - mx);
    for (int b = 0; b < V; b++) m->logp[a][b] = s[b] - mx - log(z);
  }
}

static int mock_encode(void *ctx, const char *text, size_t len, int32_t **ids, size_t *n, xd_err *e) {
  (void)ctx;
  (void)e;
  *ids = malloc((len ? len : 1) * sizeof **ids);
  for (size_t i = 0; i < len; i++) (*ids)[i] = (unsigned char)text[i];
  *n = len;
  return 0;
}

static int mock_ll(void *ctx, const xd_ll_request *reqs, size_t n, xd_ll_result *out, xd_err *e) {
  mock *m = ctx;
  m->calls++;
  if (n > m->max_batch) m->max_batch = n;
  for (size_t r = 0; r < n; r++) {
    const xd_ll_request *q = &reqs[r];
    size_t tot = q->n_context + q->n_continuation;
    if (tot > m->max_len_seen) m->max_len_seen = tot;
    if (q->n_context < 1 || q->n_continuation < 1 || tot > m->max_length + 1) m->bad_request = 1;
    int prev = q->context[q->n_context - 1];
    double s = 0;
    int g = 1;
    for (size_t i = 0; i < q->n_continuation; i++) {
      int t = q->continuation[i];
      if (t < 0 || t >= V || prev < 0 || prev >= V) return xd_errf(e, "mock: token out of range");
      s += m->logp[prev][t];
      g &= m->greedy[prev] == t;
      prev = t;
    }
    out[r].logprob = s;
    out[r].is_greedy = g;
  }
  return 0;
}

static int mock_gen(void *ctx, const int32_t *prompt, size_t n, const char *const *stops, size_t n_stops, int max_new, char **out, xd_err *e) {
  mock *m = ctx;
  char *text = malloc(n + 1);
  for (size_t i = 0; i < n; i++) text[i] = (char)prompt[i];
  text[n] = 0;
  for (size_t s = 0; s < n_stops; s++)
    if (!strcmp(stops[s], "Question:")) m->saw_stop_question = 1;
  /* the last question in the prompt */
  const char *q = NULL;
  for (const char *p = strstr(text, "Question: "); p; p = strstr(p + 1, "Question: ")) q = p + 10;
  *out = NULL;
  for (int i = 0; q && i < m->n_gen; i++)
    if (!strncmp(q, m->gen_q[i], strlen(m->gen_q[i]))) *out = strdup(m->gen_out[i]);
  free(text);
  if (!*out) return xd_errf(e, "mock: unknown question");
  (void)max_new;
  return 0;
}

/* generate_until_batch through mock_gen, recording the calls' sizes; fails on request
 * m->gen_fail_at (1-based, 0 = never) with every output left NULL, as the contract asks */
static int mock_gen_batch(void *ctx, const int32_t *const *prompts, const size_t *n_prompts, size_t n,
                          const char *const *stops, size_t n_stops, int max_new, char **outs, xd_err *e) {
  mock *m = ctx;
  m->gen_batches++;
  if (n > m->gen_batch_max) m->gen_batch_max = n;
  for (size_t k = 0; k < n; k++) outs[k] = NULL;
  for (size_t k = 0; k < n; k++) {
    if (++m->gen_requests == m->gen_fail_at || mock_gen(ctx, prompts[k], n_prompts[k], stops, n_stops, max_new, &outs[k], e)) {
      if (m->gen_requests == m->gen_fail_at) xd_errf(e, "mock: request %d fails", m->gen_fail_at);
      for (size_t j = 0; j < n; j++) { free(outs[j]); outs[j] = NULL; }
      return -1;
    }
  }
  return 0;
}

static xd_lm mock_lm(mock *m, size_t max_length, size_t batch) {
  m->max_length = max_length;
  xd_lm lm = {m, mock_ll, mock_gen, mock_encode, 256, max_length, batch, "mock-bigram", NULL};
  return lm;
}

/* ---- helpers ---------------------------------------------------------------------- */
static cJSON *expected_json(void) {
  FILE *fp = fopen(FIX "/expected.json", "rb");
  if (!fp) return NULL;
  char buf[8192];
  size_t n = fread(buf, 1, sizeof buf - 1, fp);
  fclose(fp);
  buf[n] = 0;
  return cJSON_Parse(buf);
}

static double expect(cJSON *ex, const char *task, const char *metric) {
  const cJSON *t = cJSON_GetObjectItem(ex, task);
  const cJSON *v = cJSON_GetObjectItem(t, metric);
  return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static double metric(const xd_task_result *r, const char *name) {
  const xd_metric *m = xd_task_result_metric(r, name);
  return m ? m->value : NAN;
}

static void write_text(const char *path, const char *s) {
  FILE *fp = fopen(path, "wb");
  fputs(s, fp);
  fclose(fp);
}

/* ---- tests --------------------------------------------------------------------------- */
static void test_mock_matches_python(void) {
  cJSON *ex = expected_json();
  CHECK(ex != NULL);
  if (!ex) return;
  mock *m = malloc(sizeof *m);
  mock_init(m, 0);
  CHECK_REL(m->logp[65][66], expect(ex, "model_check", "logp_65_66"), 1e-12, 1e-300);
  CHECK(m->greedy[97] == (int)expect(ex, "model_check", "greedy_after_97"));
  free(m);
  cJSON_Delete(ex);
}

/* Run fixture task `file` in `format` and compare each metric with the Python computation. */
static void check_fixture(const char *format, const char *file, const char *key, const char *const *metrics, int nm,
                          size_t max_length, size_t batch) {
  cJSON *ex = expected_json();
  mock *m = malloc(sizeof *m);
  mock_init(m, 0);
  xd_lm lm = mock_lm(m, max_length, batch);
  xd_task *t = NULL;
  xd_err e = {0};
  char path[256];
  snprintf(path, sizeof path, FIX "/%s", file);
  CHECKF(xd_task_load(&t, format, path, NULL, NULL, NULL, &e) == 0, "%s", e.msg);
  xd_task_result r;
  xd_eval_options o = {0, NULL, 1};
  if (t) {
    CHECKF(xd_eval_run(t, &lm, &o, &r, &e) == 0, "%s", e.msg);
    for (int i = 0; i < nm; i++) CHECK_REL(metric(&r, metrics[i]), expect(ex, key, metrics[i]), 1e-9, 1e-12);
    CHECK(r.n == t->n_docs);
    CHECK(!m->bad_request);
    CHECK(m->max_batch <= (batch > 4 ? batch : 4)); /* one doc's choices may exceed a tiny batch */
    xd_task_result_free(&r);
  }
  xd_task_free(t);
  free(m);
  cJSON_Delete(ex);
}

static void test_mc_acc_acc_norm(void) {
  static const char *const ms[] = {"acc", "acc_norm"};
  check_fixture("mc", "mc.jsonl", "mc", ms, 2, 2048, 7);
  check_fixture("mc", "mc.jsonl", "mc", ms, 2, 2048, 1);
}

static void test_winogrande_partial(void) {
  static const char *const ms[] = {"acc"};
  check_fixture("winogrande", "winogrande.jsonl", "winogrande", ms, 1, 2048, 3);
}

static void test_lambada_greedy_and_ppl(void) {
  static const char *const ms[] = {"acc", "perplexity"};
  check_fixture("lambada", "lambada.jsonl", "lambada", ms, 2, 2048, 4);
}

static void test_rolling_perplexity(void) {
  static const char *const ms[] = {"bits_per_byte", "byte_perplexity", "word_perplexity", "token_perplexity"};
  /* a window far shorter than the text (many windows) and one longer (a single window) */
  check_fixture("perplexity", "ppl.txt", "ppl", ms, 4, 16, 1);
  check_fixture("perplexity", "ppl.txt", "ppl", ms, 4, 7, 1);
  check_fixture("perplexity", "ppl.txt", "ppl", ms, 4, 4096, 1);
}

/* Uniform model: every token costs log 257, so acc picks the shortest choice (first on ties)
 * and acc_norm, ll/len with the " " delimiter scored but not counted, the longest. */
static void test_uniform_hand_computed(void) {
  const char *dir = test_tmpdir("eval");
  char path[600];
  snprintf(path, sizeof path, "%s/u.jsonl", dir);
  write_text(path,
             "{\"query\": \"Q1\", \"choices\": [\"aaaa\", \"bb\", \"cccccc\"], \"gold\": 1}\n"   /* acc 1, norm 0 */
             "{\"query\": \"Q2\", \"choices\": [\"aaaa\", \"bb\", \"cccccc\"], \"gold\": 2}\n"   /* acc 0, norm 1 */
             "\n"
             "{\"query\": \"Q3\", \"choices\": [\"xy\", \"zw\"], \"gold\": 0}\n"                /* tie: first; 1, 1 */
             "{\"query\": \"Q4\", \"choices\": [\"xyz\", \"zw\", \"q\"], \"gold\": 0}\n");       /* 0, 1 */
  mock *m = malloc(sizeof *m);
  mock_init(m, 1);
  xd_lm lm = mock_lm(m, 64, 2);
  xd_task *t = NULL;
  xd_err e = {0};
  CHECKF(xd_task_load(&t, "mc", path, NULL, "uni", NULL, &e) == 0, "%s", e.msg);
  if (!t) { free(m); return; }
  CHECK(t->n_docs == 4 && !strcmp(t->name, "uni"));
  CHECK(!strcmp(t->docs[0].context, "Q1") && !strcmp(t->docs[0].continuations[1], " bb"));
  xd_task_result r;
  FILE *prog = tmpfile();
  xd_eval_options o = {0, prog, 1};
  CHECKF(xd_eval_run(t, &lm, &o, &r, &e) == 0, "%s", e.msg);
  if (prog) { /* the progress line ends with the final count and a newline */
    char line[256] = {0};
    rewind(prog);
    size_t got = fread(line, 1, sizeof line - 1, prog);
    line[got] = 0;
    CHECKF(strstr(line, "uni: 4/4 docs") && line[got - 1] == '\n', "progress: '%s'", line);
    fclose(prog);
  }
  /* batch size 2 and docs of 3, 3, 2, 3 choices: a doc's choices are never split, so each doc
   * is one call of 3, 3, 2, 3 requests */
  CHECKF(m->max_batch == 3 && m->calls == 4, "max_batch %zu calls %zu", m->max_batch, m->calls);
  CHECK_REL(metric(&r, "acc"), 2.0 / 4, 1e-12, 1e-12);
  CHECK_REL(metric(&r, "acc_norm"), 3.0 / 4, 1e-12, 1e-12);
  CHECK(!strcmp(r.primary, "acc_norm") && r.items && r.items[0] == 0 && r.items[1] == 1 && r.items[3] == 1);
  xd_task_result_free(&r);
  /* --limit 2: only the first two docs */
  xd_task_free(t);
  xd_task_options to;
  xd_task_options_default(&to);
  to.limit = 2;
  CHECK(xd_task_load(&t, "mc", path, NULL, NULL, &to, &e) == 0 && t->n_docs == 2 && !strcmp(t->name, "u"));
  xd_task_free(t);
  free(m);
}

static void test_extract_answer(void) {
  struct { const char *in; int mode; const char *want; int strict; } cases[] = {
    {"She has 3 + 4 = 7 apples.\n#### 7", XD_EXTRACT_GSM8K, "7", 1},
    {"#### 1,234", XD_EXTRACT_GSM8K, "1234", 1},
    {"#### -5.", XD_EXTRACT_GSM8K, "-5", 1},
    {"#### 12 and later #### 13", XD_EXTRACT_GSM8K, "12", 1}, /* strict: first match */
    {"It costs $1,000 then 25 more, so 1,025.", XD_EXTRACT_GSM8K, "1025", 0}, /* fallback: last */
    {"no digits here", XD_EXTRACT_GSM8K, "", 0},
    {"x is 5 and y 42", XD_EXTRACT_NUMBER, "42", 0},
    {"#### 9 then 10", XD_EXTRACT_NUMBER, "10", 0},
    {"  Paris \n", XD_EXTRACT_NONE, "Paris", 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int strict = -1;
    char *got = xd_extract_answer(cases[i].in, (xd_extract_kind)cases[i].mode, &strict);
    CHECKF(!strcmp(got, cases[i].want) && strict == cases[i].strict, "case %zu: got '%s' strict %d", i, got, strict);
    free(got);
  }
}

/* The same extraction computed with Python's re following lm-eval (tools/gen_eval_fixtures.py). */
static void test_extract_matches_lm_eval(void) {
  FILE *fp = fopen(FIX "/extract.json", "rb");
  CHECK(fp != NULL);
  if (!fp) return;
  static char buf[1 << 16];
  size_t n = fread(buf, 1, sizeof buf - 1, fp);
  fclose(fp);
  buf[n] = 0;
  cJSON *rows = cJSON_Parse(buf);
  CHECK(cJSON_GetArraySize(rows) >= 30);
  const cJSON *r;
  cJSON_ArrayForEach(r, rows) {
    const char *text = cJSON_GetObjectItem(r, "text")->valuestring, *want = cJSON_GetObjectItem(r, "answer")->valuestring;
    int want_strict = cJSON_IsTrue(cJSON_GetObjectItem(r, "strict")), strict = -1;
    char *got = xd_extract_answer(text, XD_EXTRACT_GSM8K, &strict);
    CHECKF(!strcmp(got, want) && strict == want_strict, "'%s': got '%s' (strict %d), lm-eval '%s' (strict %d)", text, got, strict, want, want_strict);
    free(got);
  }
  cJSON_Delete(rows);
}

static const char *const GSM =
    "{\"question\": \"Tom has 3 apples and buys 4. How many?\", \"answer\": \"3+4=7\\n#### 7\"}\n"
    "{\"question\": \"A box holds 1,200 pens. How many pens?\", \"answer\": \"It holds 1200.\\n#### 1,200\"}\n"
    "{\"question\": \"What is 10 - 3?\", \"answer\": \"10-3=7\\n#### 7\"}\n"
    "{\"question\": \"Half of 18?\", \"answer\": \"18/2=9\\n#### 9\"}\n";

static void test_generation_exact_match(void) {
  const char *dir = test_tmpdir("eval");
  char path[600];
  snprintf(path, sizeof path, "%s/gsm.jsonl", dir);
  write_text(path, GSM);
  static const char *const qs[] = {"Tom has", "A box", "What is", "Half of"};
  static const char *const outs[] = {
      " 3+4 = 7.\n#### 7\n\nQuestion: junk #### 99", /* strict hit; the stop string cuts the junk */
      " It holds $1,200.",                           /* no ####: fallback to the last number -> hit */
      " 10-3=7 so #### 8",                           /* strict but wrong */
      " 18/2 = 9 ... or 10",                         /* fallback picks the last number (10): miss */
  };
  mock *m = malloc(sizeof *m);
  mock_init(m, 1);
  m->gen_q = qs;
  m->gen_out = outs;
  m->n_gen = 4;
  xd_lm lm = mock_lm(m, 512, 1);
  xd_task *t = NULL;
  xd_err e = {0};
  CHECKF(xd_task_load(&t, "gsm8k", path, NULL, NULL, NULL, &e) == 0, "%s", e.msg);
  if (!t) { free(m); return; }
  CHECK(t->n_docs == 4 && !strcmp(t->docs[1].answer, "1200"));
  CHECK(!strcmp(t->docs[2].prompt, "Question: What is 10 - 3?\nAnswer:")); /* 0-shot without a train file */
  xd_task_result r;
  xd_eval_options o = {0, NULL, 1};
  CHECKF(xd_eval_run(t, &lm, &o, &r, &e) == 0, "%s", e.msg);
  CHECK_REL(metric(&r, "exact_match"), 2.0 / 4, 1e-12, 1e-12);
  CHECK_REL(metric(&r, "exact_match_strict"), 1.0 / 4, 1e-12, 1e-12);
  CHECK(m->saw_stop_question);
  xd_task_result_free(&r);
  /* the same through generate_until_batch: batches of batch_size (3: one of 3, one of 1), the
   * same scores and per-doc items */
  {
    xd_lm lb = mock_lm(m, 512, 3);
    lb.generate_until_batch = mock_gen_batch;
    xd_eval_options ob = {0, NULL, 1};
    xd_task_result rb, r1;
    CHECKF(xd_eval_run(t, &lb, &ob, &rb, &e) == 0, "%s", e.msg);
    CHECK(m->gen_batches == 2 && m->gen_batch_max == 3 && m->gen_requests == 4);
    CHECK_REL(metric(&rb, "exact_match"), 2.0 / 4, 1e-12, 1e-12);
    CHECK_REL(metric(&rb, "exact_match_strict"), 1.0 / 4, 1e-12, 1e-12);
    lb.generate_until_batch = NULL; /* batch_size 3 without the callback: one at a time */
    CHECKF(xd_eval_run(t, &lb, &ob, &r1, &e) == 0, "%s", e.msg);
    CHECK(m->gen_batches == 2);
    CHECK(rb.n == 4 && r1.n == 4 && rb.items && r1.items && memcmp(rb.items, r1.items, 4 * sizeof *rb.items) == 0);
    xd_task_result_free(&rb);
    xd_task_result_free(&r1);
    /* a failing batch: one error line naming the task and the docs, nothing leaked (ASan) */
    lb.generate_until_batch = mock_gen_batch;
    m->gen_requests = 0, m->gen_fail_at = 2;
    CHECK(xd_eval_run(t, &lb, &ob, &rb, &e) == -1 && strstr(e.msg, "docs 0-2") && strstr(e.msg, "request 2 fails"));
    m->gen_fail_at = 0;
  }
  /* a model without generate_until is refused with a clear error */
  lm.generate_until = NULL;
  CHECK(xd_eval_run(t, &lm, &o, &r, &e) == -1 && strstr(e.msg, "cannot generate"));
  xd_task_free(t);
  free(m);
}

static int count_sub(const char *s, const char *sub) {
  int n = 0;
  for (const char *p = strstr(s, sub); p; p = strstr(p + 1, sub)) n++;
  return n;
}

static void test_fewshot_seeded(void) {
  const char *dir = test_tmpdir("eval");
  char path[600], train[600];
  snprintf(path, sizeof path, "%s/gsm.jsonl", dir);
  snprintf(train, sizeof train, "%s/train.jsonl", dir);
  write_text(path, GSM);
  FILE *fp = fopen(train, "wb");
  for (int i = 0; i < 20; i++) fprintf(fp, "{\"question\": \"train q%d?\", \"answer\": \"a%d\\n#### %d\"}\n", i, i, i);
  fclose(fp);
  xd_task_options o;
  xd_task_options_default(&o);
  xd_task *a = NULL, *b = NULL, *c = NULL, *s = NULL;
  xd_err e = {0};
  CHECKF(xd_task_load(&a, "gsm8k", path, train, NULL, &o, &e) == 0, "%s", e.msg); /* default 5-shot */
  CHECK(xd_task_load(&b, "gsm8k", path, train, NULL, &o, &e) == 0);
  o.seed = 99;
  CHECK(xd_task_load(&c, "gsm8k", path, train, NULL, &o, &e) == 0);
  o.num_fewshot = 3;
  CHECK(xd_task_load(&s, "gsm8k", path, NULL, NULL, &o, &e) == 0); /* shots from the eval file itself */
  if (a && b && c && s) {
    int differ = 0;
    for (size_t i = 0; i < a->n_docs; i++) {
      CHECK(count_sub(a->docs[i].prompt, "Question: ") == 6 && count_sub(a->docs[i].prompt, "####") == 5);
      CHECK(!strcmp(a->docs[i].prompt, b->docs[i].prompt)); /* same seed, same prompts */
      differ += strcmp(a->docs[i].prompt, c->docs[i].prompt) != 0;
      const char *last = strstr(a->docs[i].prompt, "\n\nQuestion: Tom has") ? "Tom" : NULL;
      (void)last;
      /* format: "Question: q\nAnswer: a\n#### n\n\n" ... ending in the doc's question */
      CHECK(!strncmp(a->docs[i].prompt, "Question: train q", 17));
      size_t L = strlen(a->docs[i].prompt);
      CHECK(L > 8 && !strcmp(a->docs[i].prompt + L - 8, "\nAnswer:"));
      /* same-pool shots never include the doc itself */
      char own[64];
      snprintf(own, sizeof own, "#### %s\n", s->docs[i].answer);
      CHECK(count_sub(s->docs[i].prompt, "Question: ") == 4);
    }
    CHECK(differ > 0); /* another seed draws other shots */
    CHECK(a->num_fewshot == 5 && s->num_fewshot == 3);
    /* doc 0's question appears once in its own same-pool prompt (its own line only) */
    CHECK(count_sub(s->docs[0].prompt, "Tom has 3 apples") == 1);
  }
  xd_task_free(a);
  xd_task_free(b);
  xd_task_free(c);
  xd_task_free(s);
}

static void test_task_definition(void) {
  const char *dir = test_tmpdir("eval");
  char data[600], def[600], def2[600];
  snprintf(data, sizeof data, "%s/arith.jsonl", dir);
  snprintf(def, sizeof def, "%s/arith.json", dir);
  snprintf(def2, sizeof def2, "%s/arith_mc.json", dir);
  write_text(data,
             "{\"prompt\": \"2+2\", \"answer\": 4, \"choices\": [\"4\", \"5\"], \"gold\": 0}\n"
             "{\"prompt\": \"3+5\", \"answer\": \"8\", \"choices\": [\"7\", \"8\"], \"gold\": 1}\n");
  write_text(def,
             "{\"name\": \"arith\", \"format\": \"jsonl\", \"data\": \"arith.jsonl\", \"kind\": \"generate\","
             " \"prompt_template\": \"Compute {prompt} =\", \"until\": [\"\\n\"], \"max_new_tokens\": 8,"
             " \"extract\": \"number\"}\n");
  write_text(def2,
             "{\"name\": \"arith_mc\", \"format\": \"jsonl\", \"data\": \"arith.jsonl\", \"kind\": \"multiple_choice\","
             " \"prompt_template\": \"{{x}} {prompt} =\", \"num_fewshot\": 1}\n");
  xd_task *t = NULL;
  xd_err e = {0};
  CHECKF(xd_task_load(&t, "def", def, NULL, NULL, NULL, &e) == 0, "%s", e.msg);
  if (t) {
    CHECK(!strcmp(t->name, "arith") && t->kind == XD_TASK_GENERATE && t->n_docs == 2);
    CHECK(!strcmp(t->docs[0].prompt, "Compute 2+2 =") && !strcmp(t->docs[0].answer, "4"));
    CHECK(t->n_until == 1 && !strcmp(t->until[0], "\n") && t->max_new_tokens == 8);
    CHECK(!strcmp(t->primary, "exact_match"));
  }
  xd_task_free(t);
  t = NULL;
  CHECKF(xd_task_load(&t, "def", def2, NULL, NULL, NULL, &e) == 0, "%s", e.msg);
  if (t) {
    CHECK(t->kind == XD_TASK_MULTIPLE_CHOICE && t->n_docs == 2 && t->docs[1].gold == 1);
    /* 1-shot from the same file: the other doc, rendered with its gold choice */
    CHECK(!strcmp(t->docs[0].context, "{x} 3+5 = 8\n\n{x} 2+2 ="));
    CHECK(!strcmp(t->docs[0].continuations[1], " 5"));
  }
  xd_task_free(t);
  /* a template naming a missing field fails with the file and line */
  write_text(def, "{\"name\": \"bad\", \"format\": \"jsonl\", \"data\": \"arith.jsonl\", \"prompt_template\": \"{nope}\"}");
  CHECK(xd_task_load(&t, "def", def, NULL, NULL, NULL, &e) == -1 && strstr(e.msg, "arith.jsonl:1") && strstr(e.msg, "nope"));
  write_text(def, "{\"name\": \"bad\", \"format\": \"jsonl\"}");
  CHECK(xd_task_load(&t, "def", def, NULL, NULL, NULL, &e) == -1 && strstr(e.msg, "arith.json"));
  /* numbers beyond their ranges are errors, never converted (an out-of-range double's conversion
   * to an integer type is undefined) */
  static const char *const out_of_range[] = {
      "\"kind\": \"generate\", \"prompt_template\": \"{prompt}\", \"max_new_tokens\": 1e300",
      "\"kind\": \"multiple_choice\", \"prompt_template\": \"{prompt}\", \"num_fewshot\": 1e30",
      "\"kind\": \"multiple_choice\", \"prompt_template\": \"{prompt}\", \"limit\": 1e300",
      "\"kind\": \"multiple_choice\", \"prompt_template\": \"{prompt}\", \"seed\": -1"};
  for (size_t i = 0; i < sizeof out_of_range / sizeof out_of_range[0]; i++) {
    char text[512];
    snprintf(text, sizeof text, "{\"name\": \"r\", \"format\": \"jsonl\", \"data\": \"arith.jsonl\", %s}", out_of_range[i]);
    write_text(def, text);
    t = NULL;
    const int rc = xd_task_load(&t, "def", def, NULL, NULL, NULL, &e);
    CHECKF(rc == -1 && t == NULL && strstr(e.msg, "arith.json"), "out-of-range case %zu: rc %d msg '%s'", i, rc, e.msg);
    xd_task_free(t);
  }
}

static void test_task_spec(void) {
  xd_task *t = NULL;
  xd_err e = {{0}};
  CHECKF(xd_task_load_spec(&t, "mytask=mc:" FIX "/mc.jsonl", NULL, &e) == 0, "%s", e.msg);
  CHECK(t && !strcmp(t->name, "mytask") && t->n_docs == 12 && t->kind == XD_TASK_MULTIPLE_CHOICE);
  xd_task_free(t);
  CHECKF(xd_task_load_spec(&t, "lambada:" FIX "/lambada.jsonl", NULL, &e) == 0, "%s", e.msg);
  CHECK(t && !strcmp(t->name, "lambada") && t->kind == XD_TASK_LOGLIKELIHOOD);
  xd_task_free(t);
  xd_task_options o;
  xd_task_options_default(&o);
  o.num_fewshot = 2;
  CHECKF(xd_task_load_spec(&t, "mc:" FIX "/mc.jsonl," FIX "/mc.jsonl", &o, &e) == 0, "%s", e.msg);
  CHECK(t && count_sub(t->docs[0].context, "Question:") == 3);
  xd_task_free(t);
  t = NULL;
  CHECK(xd_task_load_spec(&t, "mc", NULL, &e) == -1 && strstr(e.msg, "FORMAT:PATH"));
  CHECK(xd_task_load_spec(&t, "a b=mc:x", NULL, &e) == -1 && strstr(e.msg, "name"));
  CHECK(xd_task_load_spec(&t, "zz:x", NULL, &e) == -1 && strstr(e.msg, "unknown task format"));
  CHECK(t == NULL);
}

static void test_malformed_inputs(void) {
  const char *dir = test_tmpdir("eval");
  char path[600];
  snprintf(path, sizeof path, "%s/bad.jsonl", dir);
  struct { const char *fmt, *text, *want; } cases[] = {
    {"mc", "{\"query\": \"q\", \"choices\": [\"a\"], \"gold\": 0}\n{\"query\": \"q\", \"choices\": [\"a\"], \"gold\": 3}\n", "bad.jsonl:2"},
    {"mc", "{\"query\": \"q\", \"choices\": [\"a\", 5], \"gold\": 0}\n", "bad.jsonl:1"},
    {"mc", "not json\n", "bad.jsonl:1"},
    {"mc", "{\"query\": \"q\", \"choices\": [\"a\"], \"gold\": 1e300}\n", "bad.jsonl:1"},
    {"mc", "", "no JSON lines"},
    {"winogrande", "{\"context_options\": [\"a\"], \"gold\": 0}\n", "bad.jsonl:1"},
    {"lambada", "{\"context\": \"a\", \"continuation\": \"\"}\n", "bad.jsonl:1"},
    {"gsm8k", "{\"question\": \"a\"}\n", "bad.jsonl:1"},
    {"hellaswag_olmes", "{\"doc_id\": 0, \"label\": 1, \"idx\": 0, \"request\": {\"context\": \"c\", \"continuation\": \" x\"}}\n", "label 1"},
    {"mmlu", "question,choice0,choice1,choice2,choice3,answer\nq,a,b,c,d,7\n", "bad.jsonl:2"},
    {"mmlu", "q,\"a,b,c,d,1\n", "unterminated"},
    {"nosuch", "{}", "unknown task format"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    write_text(path, cases[i].text);
    xd_task *t = NULL;
    xd_err e = {0};
    int rc = xd_task_load(&t, cases[i].fmt, path, NULL, NULL, NULL, &e);
    CHECKF(rc == -1 && t == NULL && strstr(e.msg, cases[i].want) && !strchr(e.msg, '\n'), "case %zu: rc %d msg '%s'", i, rc, e.msg);
  }
  xd_task *t = NULL;
  xd_err e = {0};
  CHECK(xd_task_load(&t, "mc", "/nonexistent/x.jsonl", NULL, NULL, NULL, &e) == -1 && strstr(e.msg, "/nonexistent/x.jsonl"));
}

static void test_mmlu_csv_prompt(void) {
  const char *dir = test_tmpdir("eval");
  char test_dir[600], dev_dir[600], p[700];
  snprintf(test_dir, sizeof test_dir, "%s/mmlu_test", dir);
  snprintf(dev_dir, sizeof dev_dir, "%s/mmlu_dev", dir);
  mkdir(test_dir, 0755);
  mkdir(dev_dir, 0755);
  snprintf(p, sizeof p, "%s/high_school_math_test.csv", test_dir);
  write_text(p, "question,choice0,choice1,choice2,choice3,answer\n\"What is 1+1, \"\"roughly\"\"?\",1,2,3,4,1\r\nPick B,a,b,c,d,B\n");
  snprintf(p, sizeof p, "%s/high_school_math_dev.csv", dev_dir);
  write_text(p, "question,choice0,choice1,choice2,choice3,answer\n2*3?,5,6,7,8,1\n\"multi\nline\",w,x,y,z,3\n");
  xd_task_options o;
  xd_task_options_default(&o);
  o.num_fewshot = 1;
  xd_task *t = NULL;
  xd_err e = {0};
  CHECKF(xd_task_load(&t, "mmlu", test_dir, dev_dir, "mmlu", &o, &e) == 0, "%s", e.msg);
  if (!t) return;
  CHECK(t->n_docs == 2 && t->docs[0].gold == 1 && t->docs[1].gold == 1 && t->docs[0].n_choices == 4);
  const char *want =
      "The following are multiple choice questions (with answers) about high school math.\n\n"
      "2*3?\nA. 5\nB. 6\nC. 7\nD. 8\nAnswer: B\n\n"
      "What is 1+1, \"roughly\"?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:";
  CHECKF(!strcmp(t->docs[0].context, want), "got:\n%s", t->docs[0].context);
  CHECK(!strcmp(t->docs[0].continuations[2], " C"));
  xd_task_free(t);
  /* one subject's test file with the dev directory: the subject's dev file is found */
  snprintf(p, sizeof p, "%s/high_school_math_test.csv", test_dir);
  t = NULL;
  CHECKF(xd_task_load(&t, "mmlu", p, dev_dir, NULL, &o, &e) == 0, "%s", e.msg);
  if (t) CHECK(t->n_docs == 2 && !strcmp(t->docs[0].context, want) && t->num_fewshot == 1);
  xd_task_free(t);
}

static void test_results_round_trip(void) {
  const char *dir = test_tmpdir("eval");
  char path[600];
  snprintf(path, sizeof path, "%s/res.json", dir);
  xd_results r = {0};
  r.model = "models/student";
  r.role = "student";
  r.seed = 1234;
  xd_task_result tr[2];
  memset(tr, 0, sizeof tr);
  tr[0].task = "arc_easy";
  tr[0].kind = "multiple_choice";
  tr[0].n = 3;
  snprintf(tr[0].primary, sizeof tr[0].primary, "acc_norm");
  tr[0].metrics[0] = (xd_metric){"acc", 0.123456789012345, 1};
  tr[0].metrics[1] = (xd_metric){"acc_norm", 2.0 / 3, 1};
  tr[0].n_metrics = 2;
  double items[3] = {1, 0, 1};
  tr[0].items = items;
  tr[1].task = "wiki";
  tr[1].kind = "perplexity";
  tr[1].n = 1;
  snprintf(tr[1].primary, sizeof tr[1].primary, "bits_per_byte");
  tr[1].metrics[0] = (xd_metric){"bits_per_byte", 0.9, 0};
  tr[1].n_metrics = 1;
  r.tasks = tr;
  r.n_tasks = 2;
  xd_err e = {0};
  CHECKF(xd_results_write(&r, path, &e) == 0, "%s", e.msg);
  xd_results q;
  CHECKF(xd_results_read(&q, path, &e) == 0, "%s", e.msg);
  if (q.n_tasks == 2) {
    CHECK(!strcmp(q.model, "models/student") && !strcmp(q.role, "student"));
    CHECK(!strcmp(q.tasks[0].task, "arc_easy") && !strcmp(q.tasks[0].primary, "acc_norm") && q.tasks[0].n == 3);
    CHECK(metric(&q.tasks[0], "acc") == 0.123456789012345 && metric(&q.tasks[0], "acc_norm") == 2.0 / 3);
    CHECK(xd_task_result_metric(&q.tasks[1], "bits_per_byte")->higher_is_better == 0);
    xd_results_free(&q);
  }
  const char *bad[] = {
    "{\"format\": \"other\", \"tasks\": []}",
    "{\"format\": \"xdistill-eval-results\", \"tasks\": [{\"task\": \"a\", \"primary\": \"acc\", \"metrics\": {\"x\": 1}}]}",
    "{\"format\": \"xdistill-eval-results\", \"tasks\": [{\"task\": \"a\", \"primary\": \"acc\", \"metrics\": {\"acc\": \"high\"}}]}",
    "{\"format\": \"xdistill-eval-results\", \"tasks\": [{\"task\": \"a\", \"primary\": \"acc\", \"metrics\": {\"acc\": 1}},"
    " {\"task\": \"a\", \"primary\": \"acc\", \"metrics\": {\"acc\": 1}}]}",
    "[1,2",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    write_text(path, bad[i]);
    CHECKF(xd_results_read(&q, path, &e) == -1 && strstr(e.msg, "res.json"), "case %zu: %s", i, e.msg);
  }
}

/* Real benchmark files (../shared/eval): counts and request shapes. */
static void test_shared_benchmarks(void) {
  if (!test_have_shared()) SKIP("../shared not found");
  struct { const char *fmt, *path, *fs; size_t n; int nch; } cases[] = {
    {"mc", "../shared/eval/arc/arc_easy_test.llm-foundry.jsonl", NULL, 2376, 4},
    {"mc", "../shared/eval/arc/arc_challenge_test.llm-foundry.jsonl", NULL, 1172, 0},
    {"mc", "../shared/eval/piqa/piqa_val.llm-foundry.jsonl", NULL, 0, 2},
    {"mc", "../shared/eval/hellaswag/hellaswag_small.llm-foundry.jsonl", NULL, 0, 4},
    {"winogrande", "../shared/eval/winogrande/winogrande_dev.llm-foundry.jsonl", NULL, 1267, 2},
    {"lambada", "../shared/eval/lambada/lambada_openai_test.llm-foundry.jsonl", NULL, 5153, 1},
    {"hellaswag_olmes", "../shared/eval/hellaswag/hellaswag_rc_5shot_1000.olmes.requests.jsonl.gz", NULL, 1000, 4},
    {"hellaswag_olmes", "../shared/eval/hellaswag/hellaswag_mc_5shot_1000.olmes.requests.jsonl.gz", NULL, 1000, 4},
    {"mmlu", "../shared/eval/mmlu/test", "../shared/eval/mmlu/dev", 14042, 4},
    {"gsm8k", "../shared/eval/gsm8k/test.jsonl", "../shared/eval/gsm8k/train.jsonl", 1319, 0},
    {"gsm8k", "../shared/eval/gsm8k/gsm8k_test.llm-foundry.jsonl", NULL, 1319, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    xd_task *t = NULL;
    xd_err e = {0};
    double t0 = xd_now();
    int rc = xd_task_load(&t, cases[i].fmt, cases[i].path, cases[i].fs, NULL, NULL, &e);
    CHECKF(rc == 0, "%s: %s", cases[i].path, e.msg);
    if (!t) continue;
    if (cases[i].n) CHECKF(t->n_docs == cases[i].n, "%s: %zu docs", cases[i].path, t->n_docs);
    if (cases[i].nch) CHECKF(t->docs[0].n_choices == cases[i].nch, "%s: %d choices", cases[i].path, t->docs[0].n_choices);
    fprintf(stderr, "  %-16s %-60s %6zu docs  %.2fs\n", cases[i].fmt, cases[i].path + 15, t->n_docs, xd_now() - t0);
    if (!strcmp(cases[i].fmt, "gsm8k")) {
      CHECK(!strcmp(t->docs[0].answer, "18"));
      CHECK(cases[i].fs == NULL || count_sub(t->docs[0].prompt, "Question: ") == 6);
    }
    if (!strcmp(cases[i].fmt, "hellaswag_olmes")) {
      CHECK(t->docs[0].gold == 3 && t->docs[0].continuations[0][0] == ' ');
      CHECK(!strcmp(t->primary, "acc_norm") && t->target_delim_len == 0);
    }
    if (!strcmp(cases[i].fmt, "mmlu")) {
      CHECK(!strncmp(t->docs[0].context, "The following are multiple choice questions (with answers) about abstract algebra.\n\n", 84));
      CHECK(count_sub(t->docs[0].context, "\nAnswer:") == 6);
    }
    xd_task_free(t);
  }
}


/* ---- a word-level tokenizer (GPT-2 style: spaces attach to the following word) ---------- */
typedef struct {
  char vocab[64][32];
  int n_vocab;
  char seen_ctx[16][128], seen_cont[16][128]; /* decoded requests, in call order */
  size_t n_seen;
} wordtok;

static int32_t wt_id(wordtok *w, const char *s, size_t n) {
  for (int i = 0; i < w->n_vocab; i++)
    if (strlen(w->vocab[i]) == n && !strncmp(w->vocab[i], s, n)) return i;
  if (w->n_vocab == 64 || n >= 32) return 63;
  memcpy(w->vocab[w->n_vocab], s, n);
  w->vocab[w->n_vocab][n] = 0;
  return w->n_vocab++;
}

static int wt_encode(void *ctx, const char *text, size_t len, int32_t **ids, size_t *n, xd_err *e) {
  (void)e;
  wordtok *w = ctx;
  *ids = malloc((len + 1) * sizeof **ids);
  *n = 0;
  size_t i = 0;
  while (i < len) {
    size_t j = i;
    while (j < len && text[j] == ' ') j++;
    while (j < len && text[j] != ' ') j++;
    (*ids)[(*n)++] = wt_id(w, text + i, j - i);
    i = j;
  }
  return 0;
}

static void wt_decode(const wordtok *w, const int32_t *ids, size_t n, char *out, size_t cap) {
  out[0] = 0;
  for (size_t i = 0; i < n; i++) {
    const char *t = ids[i] == 1000 ? "<s>" : w->vocab[ids[i]];
    strncat(out, "|", cap - strlen(out) - 1);
    strncat(out, t, cap - strlen(out) - 1);
  }
}

static int wt_ll(void *ctx, const xd_ll_request *reqs, size_t n, xd_ll_result *out, xd_err *e) {
  (void)e;
  wordtok *w = ctx;
  for (size_t r = 0; r < n; r++) {
    if (w->n_seen < 16) {
      wt_decode(w, reqs[r].context, reqs[r].n_context, w->seen_ctx[w->n_seen], 128);
      wt_decode(w, reqs[r].continuation, reqs[r].n_continuation, w->seen_cont[w->n_seen], 128);
      w->n_seen++;
    }
    out[r].logprob = -(double)reqs[r].n_continuation;
    out[r].is_greedy = 0;
  }
  return 0;
}

/* lm-eval's _encode_pair: trailing space moves to the continuation; an empty context becomes
 * the prefix token; a boundary merge falls back to encoding the continuation alone; long
 * contexts are cut from the left. */
static void test_encode_pair_semantics(void) {
  wordtok *w = calloc(1, sizeof *w);
  xd_lm lm = {w, wt_ll, NULL, wt_encode, 1000, 2048, 8, "wordtok", NULL};
  char *ctxs[3] = {"The cat ", "", "ab"};
  char *conts[3][1] = {{"sat"}, {"Hello world"}, {"cd"}};
  xd_task_doc docs[3];
  memset(docs, 0, sizeof docs);
  for (int i = 0; i < 3; i++) {
    docs[i].context = ctxs[i];
    docs[i].continuations = conts[i];
    docs[i].n_choices = 1;
  }
  xd_task t = {0};
  t.name = "pairs";
  t.kind = XD_TASK_MULTIPLE_CHOICE;
  t.docs = docs;
  t.n_docs = 3;
  snprintf(t.primary, sizeof t.primary, "acc");
  xd_task_result r;
  xd_err e = {{0}};
  CHECKF(xd_eval_run(&t, &lm, NULL, &r, &e) == 0, "%s", e.msg);
  xd_task_result_free(&r);
  CHECK(w->n_seen == 3);
  CHECKF(!strcmp(w->seen_ctx[0], "|The| cat") && !strcmp(w->seen_cont[0], "| sat"), "%s / %s", w->seen_ctx[0], w->seen_cont[0]);
  CHECKF(!strcmp(w->seen_ctx[1], "|<s>") && !strcmp(w->seen_cont[1], "|Hello| world"), "%s / %s", w->seen_ctx[1], w->seen_cont[1]);
  CHECKF(!strcmp(w->seen_ctx[2], "|ab") && !strcmp(w->seen_cont[2], "|cd"), "%s / %s", w->seen_ctx[2], w->seen_cont[2]);
  /* max_length 4: "a b c d e f" + " g h" keeps the last 5 - 2 = 3 context tokens */
  w->n_seen = 0;
  lm.max_length = 4;
  char *ctx2 = "a b c d e f", *cont2[1] = {" g h"};
  docs[0].context = ctx2;
  docs[0].continuations = cont2;
  t.n_docs = 1;
  CHECKF(xd_eval_run(&t, &lm, NULL, &r, &e) == 0, "%s", e.msg);
  xd_task_result_free(&r);
  CHECKF(!strcmp(w->seen_ctx[0], "| d| e| f") && !strcmp(w->seen_cont[0], "| g| h"), "%s / %s", w->seen_ctx[0], w->seen_cont[0]);
  /* a continuation longer than the model is an error naming the task and doc */
  lm.max_length = 2;
  char *cont3[1] = {" g h i"};
  docs[0].continuations = cont3;
  CHECK(xd_eval_run(&t, &lm, NULL, &r, &e) == -1 && strstr(e.msg, "pairs doc 0"));
  free(w);
}

/* tasks/NAME.json: the standard suite as task definitions over ../shared/eval. */
static void test_suite_definitions(void) {
  if (!test_have_shared()) SKIP("../shared not found");
  static const char *const names[] = {"arc_easy", "arc_challenge", "piqa", "hellaswag", "winogrande", "lambada_openai", "mmlu", "gsm8k"};
  xd_task_options o;
  xd_task_options_default(&o);
  o.limit = 50;
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    char path[128];
    snprintf(path, sizeof path, "tasks/%s.json", names[i]);
    xd_task *t = NULL;
    xd_err e = {{0}};
    CHECKF(xd_task_load_spec(&t, path, &o, &e) == 0, "%s", e.msg);
    if (!t) continue;
    CHECK(!strcmp(t->name, names[i]) && t->n_docs == 50);
    if (!strncmp(names[i], "arc", 3) || !strcmp(names[i], "piqa")) {
      const char *c = t->docs[0].context;
      size_t n = strlen(c);
      CHECKF(!strncmp(c, "Question: ", 10) && n > 8 && !strcmp(c + n - 8, "\nAnswer:"), "%s: %s", names[i], c);
      CHECK(t->docs[0].continuations[0][0] == ' ' && t->docs[0].continuations[0][1] != ' ');
    }
    xd_task_free(t);
  }
}

/* The evaluator over the real benchmark files with the bigram mock: it runs end to end and the
 * mock's scores sit near chance; prints the evaluator's own throughput. */
static void test_shared_smoke(void) {
  if (!test_have_shared()) SKIP("../shared not found");
  mock *m = malloc(sizeof *m);
  mock_init(m, 0);
  xd_lm lm = mock_lm(m, 1024, 64);
  struct { const char *fmt, *path; double lo, hi; } cases[] = {
    {"mc", "../shared/eval/arc/arc_easy_test.llm-foundry.jsonl", 0.15, 0.40},
    {"winogrande", "../shared/eval/winogrande/winogrande_dev.llm-foundry.jsonl", 0.40, 0.60},
    {"hellaswag_olmes", "../shared/eval/hellaswag/hellaswag_rc_5shot_1000.olmes.requests.jsonl.gz", 0.15, 0.40},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    xd_task *t = NULL;
    xd_err e = {{0}};
    if (xd_task_load(&t, cases[i].fmt, cases[i].path, NULL, NULL, NULL, &e)) { CHECKF(0, "%s", e.msg); continue; }
    xd_task_result r;
    double t0 = xd_now();
    CHECKF(xd_eval_run(t, &lm, NULL, &r, &e) == 0, "%s", e.msg);
    double dt = xd_now() - t0;
    double acc = metric(&r, "acc");
    CHECKF(acc >= cases[i].lo && acc <= cases[i].hi, "%s acc %g", cases[i].path, acc);
    CHECK(!m->bad_request);
    fprintf(stderr, "  %-16s %5zu docs  acc %.3f  acc_norm %.3f  %.2fs (%.0f docs/s, mock model)\n", cases[i].fmt, t->n_docs, acc,
            metric(&r, "acc_norm"), dt, (double)t->n_docs / dt);
    xd_task_result_free(&r);
    xd_task_free(t);
  }
  free(m);
}

int main(void) {
  RUN(test_mock_matches_python);
  RUN(test_mc_acc_acc_norm);
  RUN(test_winogrande_partial);
  RUN(test_lambada_greedy_and_ppl);
  RUN(test_rolling_perplexity);
  RUN(test_uniform_hand_computed);
  RUN(test_extract_answer);
  RUN(test_extract_matches_lm_eval);
  RUN(test_generation_exact_match);
  RUN(test_fewshot_seeded);
  RUN(test_task_definition);
  RUN(test_task_spec);
  RUN(test_malformed_inputs);
  RUN(test_mmlu_csv_prompt);
  RUN(test_results_round_trip);
  RUN(test_encode_pair_semantics);
  RUN(test_shared_benchmarks);
  RUN(test_suite_definitions);
  RUN(test_shared_smoke);
  return test_finish();
}
