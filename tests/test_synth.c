/* synth: determinism, train/eval disjointness, answers recomputed from the prompts by an
 * independent parser, recall bindings beyond the stated distance, and one-line errors. */
#include <cjson/cJSON.h>
#include <ctype.h>
#include "test.h"
#include "synth/synth.h"

/* ---- helpers ------------------------------------------------------------------ */
static char *slurp(const char *path, size_t *n) {
  char *s = NULL;
  size_t len = 0;
  xd_err e;
  if (xd_read_file(path, (size_t)1 << 30, &s, &len, &e)) return NULL;
  if (n) *n = len;
  return s;
}

typedef struct {
  char **prompt, **answer, **text, **domain;
  int n;
} jsonl_set;

static void set_free(jsonl_set *s) {
  for (int i = 0; i < s->n; i++) { free(s->prompt[i]); free(s->answer[i]); free(s->text[i]); free(s->domain[i]); }
  free(s->prompt); free(s->answer); free(s->text); free(s->domain);
  memset(s, 0, sizeof *s);
}

/* Parse a jsonl file into its four string fields; -1 if a line is not the expected object. */
static int load_jsonl(const char *path, jsonl_set *s) {
  memset(s, 0, sizeof *s);
  char *buf = slurp(path, NULL);
  if (!buf) return -1;
  int cap = 0, rc = 0;
  for (char *line = buf, *nl; *line; line = nl + 1) {
    nl = strchr(line, '\n');
    if (!nl) { rc = -1; break; } /* every line ends with a newline */
    *nl = 0;
    cJSON *o = cJSON_Parse(line);
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(o, "domain"), *p = cJSON_GetObjectItemCaseSensitive(o, "prompt"),
                *a = cJSON_GetObjectItemCaseSensitive(o, "answer"), *t = cJSON_GetObjectItemCaseSensitive(o, "text");
    if (!cJSON_IsString(d) || !cJSON_IsString(p) || !cJSON_IsString(a) || !cJSON_IsString(t) || cJSON_GetArraySize(o) != 4) {
      cJSON_Delete(o);
      rc = -1;
      break;
    }
    if (s->n == cap) {
      cap = cap ? 2 * cap : 64;
      s->prompt = xd_realloc(s->prompt, (size_t)cap * sizeof(char *));
      s->answer = xd_realloc(s->answer, (size_t)cap * sizeof(char *));
      s->text = xd_realloc(s->text, (size_t)cap * sizeof(char *));
      s->domain = xd_realloc(s->domain, (size_t)cap * sizeof(char *));
    }
    s->domain[s->n] = xd_strdup(d->valuestring);
    s->prompt[s->n] = xd_strdup(p->valuestring);
    s->answer[s->n] = xd_strdup(a->valuestring);
    s->text[s->n] = xd_strdup(t->valuestring);
    s->n++;
    cJSON_Delete(o);
  }
  free(buf);
  return rc;
}

static int files_equal(const char *a, const char *b) {
  size_t na, nb;
  char *x = slurp(a, &na), *y = slurp(b, &nb);
  int eq = x && y && na == nb && !memcmp(x, y, na);
  free(x);
  free(y);
  return eq;
}

static void split_path(char *buf, size_t n, const char *dir, const char *domain, const char *split) {
  snprintf(buf, n, "%s/%s/%s.jsonl", dir, domain, split);
}

/* ---- an independent checker: recompute each answer from its prompt ---------------- */
/* Number of whitespace-separated words in [b, e). */
static int count_words(const char *b, const char *e) {
  int n = 0, in = 0;
  for (; b < e; b++) {
    if (isspace((unsigned char)*b)) in = 0;
    else if (!in) { in = 1; n++; }
  }
  return n;
}

static int check_arith(const char *p, const char *a) {
  long x, y, got;
  char op, tail;
  int n = 0;
  if (sscanf(p, "Compute: %ld %c %ld %c%n", &x, &op, &y, &tail, &n) != 4 || tail != '=' || p[n]) return 0;
  if (x < 10 || x > 9999 || y < 10 || y > 9999) return 0;
  if (op == '-' && x < y) return 0;
  if (op != '+' && op != '-') return 0;
  if (sscanf(a, " %ld%n", &got, &n) != 1 || a[n]) return 0;
  return got == (op == '+' ? x + y : x - y);
}

/* Returns 1 if the answer is the value bound to the queried key and every binding lies at
 * least min_gap words before the question. */
static int check_recall(const char *p, const char *a, int min_gap) {
  const char *keys = strstr(p, ". Keys:");
  const char *q = strstr(p, ". Question: what is ");
  if (!keys || !q || q < keys) return 0;
  const char *end = strchr(keys + 7, '.'); /* the period closing the bindings */
  if (!end || end > q) return 0;
  char qkey[32];
  if (sscanf(q, ". Question: what is %31[a-z]? Answer:", qkey) != 1) return 0;
  if (strcmp(q + strlen(". Question: what is ") + strlen(qkey), "? Answer:")) return 0;
  /* bindings " k is v," ... " k is v." */
  char want[32] = "";
  int nb = 0;
  for (const char *s = keys + 7; s < end;) {
    char k[32], v[32];
    int n = 0;
    if (sscanf(s, " %31[a-z] is %31[a-z]%n", k, v, &n) != 2) return 0;
    s += n;
    if (*s == ',') s++;
    nb++;
    if (!strcmp(k, qkey)) {
      if (want[0]) return 0; /* a key bound twice would make the answer ambiguous */
      snprintf(want, sizeof want, " %s", v);
    }
  }
  if (nb < 2 || !want[0]) return 0;
  /* the filler between the bindings and the question must not mention the key */
  for (const char *s = end; s < q; s++)
    if (!strncmp(s, qkey, strlen(qkey)) && s[-1] == ' ') return 0;
  if (count_words(end + 1, q) < min_gap) return 0;
  return !strcmp(a, want);
}

static int check_reverse(const char *p, const char *a) {
  char letters[16];
  int n = 0;
  const char *s = p + strlen("Reverse:");
  if (strncmp(p, "Reverse:", 8)) return 0;
  while (s[0] == ' ' && islower((unsigned char)s[1])) {
    if (n == 16) return 0;
    letters[n++] = s[1];
    s += 2;
  }
  if (strcmp(s, ". Answer:") || n < 3 || n > 6) return 0;
  char want[40];
  int w = 0;
  for (int i = n - 1; i >= 0; i--) { want[w++] = ' '; want[w++] = letters[i]; }
  want[w] = 0;
  return !strcmp(a, want);
}

static int check_facts(const char *p, const char *a) {
  char name[4][32], city[4][32], job[4][32];
  int k = 0, n = 0;
  const char *s = p;
  while (k < 4 && sscanf(s, "%31[A-Za-z] lives in %31[A-Za-z] and works as a %31[a-z].%n", name[k], city[k], job[k], &n) == 3 && n > 0) {
    k++;
    s += n;
    if (*s == ' ') s++;
    n = 0;
  }
  if (k < 2 || k > 3) return 0;
  char x[32], tail[16];
  const char *want = NULL;
  for (int i = 0; i < k; i++) {
    if (sscanf(s, "Question: where does %31[A-Za-z] live? %15s", x, tail) == 2 && !strcmp(x, name[i])) want = city[i];
    else if (sscanf(s, "Question: what is %31[A-Za-z]'s job? %15s", x, tail) == 2 && !strcmp(x, name[i])) want = job[i];
    else if (sscanf(s, "Question: who lives in %31[A-Za-z]? %15s", x, tail) == 2 && !strcmp(x, city[i])) want = name[i];
    else if (sscanf(s, "Question: who works as a %31[a-z]? %15s", x, tail) == 2 && !strcmp(x, job[i])) want = name[i];
    else continue;
    if (strcmp(tail, "Answer:")) return 0;
    break;
  }
  if (!want) return 0;
  for (int i = 0; i < k; i++) /* entities within one prompt are distinct */
    for (int j = 0; j < i; j++)
      if (!strcmp(name[i], name[j]) || !strcmp(city[i], city[j]) || !strcmp(job[i], job[j])) return 0;
  return a[0] == ' ' && !strcmp(a + 1, want);
}

/* The conventions of synth.h: printable ASCII, no trailing space on prompts, answers " x...". */
static int check_conventions(const char *p, const char *a) {
  for (const char *s = p; *s; s++) if (*s < 0x20 || *s > 0x7e) return 0;
  for (const char *s = a; *s; s++) if (*s < 0x20 || *s > 0x7e) return 0;
  size_t lp = strlen(p);
  if (lp == 0 || isspace((unsigned char)p[lp - 1])) return 0;
  return a[0] == ' ' && a[1] && !isspace((unsigned char)a[1]) && !isspace((unsigned char)a[strlen(a) - 1]);
}

static int check_example(int domain, const char *p, const char *a, int gap) {
  if (!check_conventions(p, a)) return 0;
  switch (domain) {
  case XD_SYNTH_ARITH: return check_arith(p, a);
  case XD_SYNTH_RECALL: return check_recall(p, a, gap);
  case XD_SYNTH_REVERSE: return check_reverse(p, a);
  case XD_SYNTH_FACTS: return check_facts(p, a);
  default: return 0;
  }
}

/* ---- tests ------------------------------------------------------------------ */
static xd_synth_opts small_opts(uint64_t seed) {
  xd_synth_opts o;
  xd_synth_opts_default(&o);
  o.seed = seed;
  o.n_train = 400;
  o.n_eval = 60;
  return o;
}

static void test_names(void) {
  for (int d = 0; d < XD_SYNTH_NDOMAINS; d++) CHECK(xd_synth_domain_id(xd_synth_domain_name(d)) == d);
  CHECK(xd_synth_domain_name(XD_SYNTH_NDOMAINS) == NULL && xd_synth_domain_name(-1) == NULL);
  CHECK(xd_synth_domain_id("Arith") == -1);
  unsigned m;
  xd_err e = {{0}};
  CHECK(xd_synth_parse_domains("recall,arith", &m, &e) == 0 && m == ((1u << XD_SYNTH_RECALL) | (1u << XD_SYNTH_ARITH)));
  CHECK(xd_synth_parse_domains("all", &m, &e) == 0 && m == 15u);
  CHECK(xd_synth_parse_domains("arith,bogus", &m, &e) == -1 && strstr(e.msg, "bogus") && !strchr(e.msg, '\n'));
  CHECK(xd_synth_parse_domains("arith,", &m, &e) == -1 && strstr(e.msg, "--domains"));
  CHECK(xd_synth_parse_domains("", &m, &e) == -1);
}

static void test_generate_deterministic(void) {
  for (int d = 0; d < XD_SYNTH_NDOMAINS; d++) {
    xd_rng r1, r2, r3;
    xd_rng_seed(&r1, 99);
    xd_rng_seed(&r2, 99);
    xd_rng_seed(&r3, 100);
    int differ = 0;
    for (int i = 0; i < 20; i++) {
      xd_synth_example a, b, c;
      xd_synth_generate(d, &r1, 64, &a);
      xd_synth_generate(d, &r2, 64, &b);
      xd_synth_generate(d, &r3, 64, &c);
      CHECK(a.domain == d && !strcmp(a.prompt, b.prompt) && !strcmp(a.answer, b.answer));
      differ += strcmp(a.prompt, c.prompt) != 0;
      xd_synth_example_free(&a);
      xd_synth_example_free(&b);
      xd_synth_example_free(&c);
    }
    CHECKF(differ >= 15, "domain %d: seeds 99 and 100 gave %d/20 different prompts", d, differ);
  }
}

/* Every generated answer is right, by the independent checker; and the checker rejects
 * corrupted answers (so this test can fail). */
static void test_answers_correct(void) {
  xd_rng r;
  xd_rng_seed(&r, 4242);
  for (int d = 0; d < XD_SYNTH_NDOMAINS; d++) {
    int bad = 0, caught = 0;
    for (int i = 0; i < 500; i++) {
      xd_synth_example x;
      xd_synth_generate(d, &r, 96, &x);
      if (!check_example(d, x.prompt, x.answer, 96)) {
        if (bad++ < 3) fprintf(stderr, "  bad %s example: %s ->%s\n", xd_synth_domain_name(d), x.prompt, x.answer);
      }
      /* corrupt the answer: change its last character */
      char *wrong = xd_strdup(x.answer);
      char *last = wrong + strlen(wrong) - 1;
      *last = isdigit((unsigned char)*last) ? (char)('0' + (*last - '0' + 1) % 10) : (*last == 'z' ? 'a' : (char)(*last + 1));
      caught += !check_example(d, x.prompt, wrong, 96);
      free(wrong);
      xd_synth_example_free(&x);
    }
    CHECKF(bad == 0, "domain %s: %d/500 examples fail the checker", xd_synth_domain_name(d), bad);
    CHECKF(caught == 500, "domain %s: checker accepted %d corrupted answers", xd_synth_domain_name(d), 500 - caught);
  }
}

/* Coverage of each domain's variants: both operators and 2-4 digit operands; 2 and 3 people
 * and all four question kinds; reversal lengths 3-6. */
static void test_coverage(void) {
  xd_rng r;
  xd_rng_seed(&r, 7);
  int plus = 0, minus = 0, digits[5] = {0}, people[4] = {0}, qkind[4] = {0}, rlen[7] = {0};
  for (int i = 0; i < 400; i++) {
    xd_synth_example x;
    xd_synth_generate(XD_SYNTH_ARITH, &r, 96, &x);
    long a, b;
    char op;
    if (sscanf(x.prompt, "Compute: %ld %c %ld", &a, &op, &b) == 3) {
      plus += op == '+';
      minus += op == '-';
      digits[a >= 1000 ? 4 : a >= 100 ? 3 : 2]++;
      digits[b >= 1000 ? 4 : b >= 100 ? 3 : 2]++;
    }
    xd_synth_example_free(&x);
    xd_synth_generate(XD_SYNTH_FACTS, &r, 96, &x);
    int k = 0;
    for (const char *s = x.prompt; (s = strstr(s, " lives in ")); s++) k++;
    if (strstr(x.prompt, "Question: who lives in")) k--; /* the question's own phrase */
    if (k >= 0 && k < 4) people[k]++;
    qkind[strstr(x.prompt, "where does") ? 0 : strstr(x.prompt, "'s job") ? 1 : strstr(x.prompt, "who lives") ? 2 : 3]++;
    xd_synth_example_free(&x);
    xd_synth_generate(XD_SYNTH_REVERSE, &r, 96, &x);
    int n = (int)strlen(x.answer) / 2;
    if (n >= 0 && n < 7) rlen[n]++;
    xd_synth_example_free(&x);
  }
  CHECK(plus > 100 && minus > 100);
  CHECK(digits[2] > 100 && digits[3] > 100 && digits[4] > 100);
  CHECK(people[2] > 100 && people[3] > 100);
  CHECK(qkind[0] > 50 && qkind[1] > 50 && qkind[2] > 50 && qkind[3] > 50);
  CHECK(rlen[3] > 40 && rlen[4] > 40 && rlen[5] > 40 && rlen[6] > 40);
}

/* Bindings sit beyond the stated distance, for several gaps, and no further than the gap
 * plus the documented jitter (so examples stay short). */
static void test_recall_distance(void) {
  const int gaps[] = {8, 40, 96, 200};
  xd_rng r;
  xd_rng_seed(&r, 11);
  for (size_t g = 0; g < sizeof gaps / sizeof gaps[0]; g++) {
    int min_w = 1 << 30, max_w = 0, bad = 0;
    for (int i = 0; i < 300; i++) {
      xd_synth_example x;
      xd_synth_generate(XD_SYNTH_RECALL, &r, gaps[g], &x);
      bad += !check_recall(x.prompt, x.answer, gaps[g]);
      const char *keys = strstr(x.prompt, ". Keys:"), *q = strstr(x.prompt, ". Question:");
      const char *end = keys ? strchr(keys + 7, '.') : NULL;
      if (end && q) {
        int w = count_words(end + 1, q);
        if (w < min_w) min_w = w;
        if (w > max_w) max_w = w;
      }
      /* the lead filler keeps bindings out of the first tokens (sinks): >= 4 words before them */
      if (keys) CHECK(count_words(x.prompt, keys) >= 5);
      xd_synth_example_free(&x);
    }
    CHECKF(bad == 0, "gap %d: %d examples fail", gaps[g], bad);
    CHECKF(min_w >= gaps[g] && max_w < gaps[g] + 32, "gap %d: filler words in [%d, %d]", gaps[g], min_w, max_w);
  }
  /* the default gap keeps the whole example near 150 words (~tokens) */
  xd_synth_opts o;
  xd_synth_opts_default(&o);
  CHECK(o.recall_gap == 96);
}

static void test_write_deterministic_and_disjoint(void) {
  const char *tmp = test_tmpdir("synth");
  char d1[600], d2[600], d3[600], d4[600];
  snprintf(d1, sizeof d1, "%s/a", tmp);
  snprintf(d2, sizeof d2, "%s/b", tmp);
  snprintf(d3, sizeof d3, "%s/c", tmp);
  snprintf(d4, sizeof d4, "%s/d", tmp);
  xd_err e = {{0}};
  xd_synth_opts o = small_opts(5), o2 = small_opts(6), o4 = small_opts(5);
  o4.domain_mask = 1u << XD_SYNTH_REVERSE;
  CHECK(xd_synth_write(d1, &o, &e) == 0);
  CHECK(xd_synth_write(d2, &o, &e) == 0);
  CHECK(xd_synth_write(d3, &o2, &e) == 0);
  CHECK(xd_synth_write(d4, &o4, &e) == 0);
  char a[700], b[700];
  snprintf(a, sizeof a, "%s/manifest.json", d1);
  snprintf(b, sizeof b, "%s/manifest.json", d2);
  CHECK(files_equal(a, b));
  for (int d = 0; d < XD_SYNTH_NDOMAINS; d++) {
    const char *name = xd_synth_domain_name(d);
    for (int s = 0; s < 2; s++) {
      const char *split = s ? "eval" : "train";
      split_path(a, sizeof a, d1, name, split);
      split_path(b, sizeof b, d2, name, split);
      CHECKF(files_equal(a, b), "%s: same seed gave different bytes", a);
      split_path(b, sizeof b, d3, name, split);
      CHECKF(!files_equal(a, b), "%s: seeds 5 and 6 gave identical bytes", a);
    }
    /* a domain's data does not depend on which other domains are selected */
    split_path(a, sizeof a, d1, name, "train");
    split_path(b, sizeof b, d4, name, "train");
    CHECK(files_equal(a, b) == (d == XD_SYNTH_REVERSE));

    jsonl_set tr, ev;
    split_path(a, sizeof a, d1, name, "train");
    CHECK(load_jsonl(a, &tr) == 0 && tr.n == o.n_train);
    split_path(a, sizeof a, d1, name, "eval");
    CHECK(load_jsonl(a, &ev) == 0 && ev.n == o.n_eval);
    int overlap = 0, dup = 0, wrong = 0;
    for (int i = 0; i < ev.n; i++) {
      for (int j = 0; j < tr.n; j++) overlap += !strcmp(ev.prompt[i], tr.prompt[j]);
      for (int j = 0; j < i; j++) dup += !strcmp(ev.prompt[i], ev.prompt[j]);
    }
    jsonl_set *sets[2] = {&tr, &ev};
    for (int s = 0; s < 2; s++)
      for (int i = 0; i < sets[s]->n; i++) {
        const jsonl_set *x = sets[s];
        size_t lp = strlen(x->prompt[i]);
        wrong += strcmp(x->domain[i], name) || strncmp(x->text[i], x->prompt[i], lp) || strcmp(x->text[i] + lp, x->answer[i]) ||
                 !check_example(d, x->prompt[i], x->answer[i], o.recall_gap);
      }
    CHECKF(overlap == 0, "%s: %d eval prompts appear in train", name, overlap);
    CHECKF(dup == 0, "%s: %d duplicate eval prompts", name, dup);
    CHECKF(wrong == 0, "%s: %d lines with a wrong field", name, wrong);
    set_free(&tr);
    set_free(&ev);
  }
  /* only the selected domain was written */
  snprintf(a, sizeof a, "%s/arith", d4);
  CHECK(!xd_file_exists(a));
}

/* A large eval set over a small prompt space (3-letter reversals: 17,576 prompts) forces
 * train redraws; train still avoids every eval prompt. */
static void test_disjoint_under_pressure(void) {
  const char *tmp = test_tmpdir("synth");
  char dir[600], a[700];
  snprintf(dir, sizeof dir, "%s/pressure", tmp);
  xd_synth_opts o = small_opts(77);
  o.domain_mask = 1u << XD_SYNTH_REVERSE;
  o.n_eval = 3000;
  o.n_train = 3000;
  xd_err e = {{0}};
  CHECK(xd_synth_write(dir, &o, &e) == 0);
  jsonl_set tr, ev;
  split_path(a, sizeof a, dir, "reverse", "train");
  CHECK(load_jsonl(a, &tr) == 0);
  split_path(a, sizeof a, dir, "reverse", "eval");
  CHECK(load_jsonl(a, &ev) == 0);
  int overlap = 0;
  for (int i = 0; i < tr.n; i++)
    for (int j = 0; j < ev.n; j++) overlap += !strcmp(tr.prompt[i], ev.prompt[j]);
  CHECK(tr.n == 3000 && ev.n == 3000);
  CHECKF(overlap == 0, "%d train prompts in eval", overlap);
  set_free(&tr);
  set_free(&ev);
}

static void test_exact_match(void) {
  CHECK(xd_synth_exact_match(" 5758", " 5758"));
  CHECK(xd_synth_exact_match("5758\nCompute: 1 + 1 =", " 5758"));
  CHECK(xd_synth_exact_match("  owl  ", " owl"));
  CHECK(!xd_synth_exact_match(" 575", " 5758"));
  CHECK(!xd_synth_exact_match(" 57580", " 5758"));
  CHECK(!xd_synth_exact_match("", " owl"));
  CHECK(!xd_synth_exact_match("\nowl", " owl"));
  CHECK(xd_synth_exact_match(" m z q", " m z q"));
  CHECK(!xd_synth_exact_match(" m  z q", " m z q"));
}

static void test_errors(void) {
  xd_err e = {{0}};
  xd_synth_opts o = small_opts(1);
  o.n_train = -1;
  CHECK(xd_synth_write("/tmp/never-written", &o, &e) == -1 && strstr(e.msg, "--train") && !strchr(e.msg, '\n'));
  o = small_opts(1);
  o.recall_gap = 0;
  CHECK(xd_synth_write("/tmp/never-written", &o, &e) == -1 && strstr(e.msg, "--recall-gap"));
  o = small_opts(1);
  o.domain_mask = 0;
  CHECK(xd_synth_write("/tmp/never-written", &o, &e) == -1);
  CHECK(!xd_file_exists("/tmp/never-written"));
  /* an output path below a regular file cannot be created: the message names it */
  const char *tmp = test_tmpdir("synth");
  char file[600], bad[700];
  snprintf(file, sizeof file, "%s/plainfile", tmp);
  FILE *fp = fopen(file, "w");
  CHECK(fp != NULL);
  if (fp) fclose(fp);
  snprintf(bad, sizeof bad, "%s/sub", file);
  o = small_opts(1);
  CHECK(xd_synth_write(bad, &o, &e) == -1 && strstr(e.msg, "plainfile") && !strchr(e.msg, '\n'));
}

int main(void) {
  RUN(test_names);
  RUN(test_generate_deterministic);
  RUN(test_answers_correct);
  RUN(test_coverage);
  RUN(test_recall_distance);
  RUN(test_write_deterministic_and_disjoint);
  RUN(test_disjoint_under_pressure);
  RUN(test_exact_match);
  RUN(test_errors);
  return test_finish();
}
