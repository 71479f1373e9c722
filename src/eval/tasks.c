/* Task readers: benchmark files -> xd_task documents (text), lm-evaluation-harness prompts. */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "eval/tasks.h"
#include "eval/strbuf.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <pcre2.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define TASK_MAX_FILE ((size_t)1 << 31) /* 2 GiB: guards against reading a wrong huge file */

static char *str_cat(const char *a, const char *b) {
  xd_sbuf s = {0};
  xd_sbuf_puts(&s, a);
  xd_sbuf_puts(&s, b);
  return xd_sbuf_take(&s);
}

const char *xd_task_kind_name(xd_task_kind k) {
  switch (k) {
    case XD_TASK_MULTIPLE_CHOICE: return "multiple_choice";
    case XD_TASK_LOGLIKELIHOOD: return "loglikelihood";
    case XD_TASK_GENERATE: return "generate";
    case XD_TASK_PERPLEXITY: return "perplexity";
  }
  return "?";
}

void xd_task_options_default(xd_task_options *o) {
  o->num_fewshot = -1;
  o->seed = 1234;
  o->limit = 0;
}

/* ---- task / doc lifetime ------------------------------------------------- */
static void doc_free(xd_task_doc *d) {
  free(d->context);
  for (int i = 0; i < d->n_choices; i++) {
    if (d->choice_contexts) free(d->choice_contexts[i]);
    free(d->continuations[i]);
  }
  free(d->choice_contexts);
  free(d->continuations);
  free(d->prompt);
  free(d->answer);
}

void xd_task_free(xd_task *t) {
  if (!t) return;
  for (size_t i = 0; i < t->n_docs; i++) doc_free(&t->docs[i]);
  free(t->docs);
  for (size_t i = 0; i < t->n_until; i++) free(t->until[i]);
  free(t->until);
  free(t->name);
  free(t->source);
  free(t);
}

static xd_task_doc *task_push_doc(xd_task *t, size_t *cap) {
  if (t->n_docs == *cap) {
    *cap = *cap ? *cap * 2 : 64;
    t->docs = xd_realloc(t->docs, *cap * sizeof *t->docs);
  }
  xd_task_doc *d = &t->docs[t->n_docs++];
  memset(d, 0, sizeof *d);
  return d;
}

static void task_set_until(xd_task *t, const char *const *stops, size_t n) {
  t->until = xd_calloc(n ? n : 1, sizeof *t->until);
  for (size_t i = 0; i < n; i++) t->until[i] = xd_strdup(stops[i]);
  t->n_until = n;
}

/* ---- files ---------------------------------------------------------------- */
/* Read a whole file, gunzipping transparently (zlib reads plain files as they are). */
static int read_text(const char *path, char **out, size_t *len, xd_err *e) {
  *out = NULL;
  gzFile gz = gzopen(path, "rb");
  if (!gz) return xd_errf(e, "%s: cannot open: %s", path, strerror(errno ? errno : ENOENT));
  xd_sbuf b = {0};
  char chunk[65536];
  for (;;) {
    int r = gzread(gz, chunk, sizeof chunk);
    if (r < 0) {
      int zerr;
      const char *msg = gzerror(gz, &zerr);
      xd_errf(e, "%s: read error: %s", path, msg);
      gzclose(gz);
      free(b.s);
      return -1;
    }
    if (r == 0) break;
    if (b.n + (size_t)r > TASK_MAX_FILE) {
      gzclose(gz);
      free(b.s);
      return xd_errf(e, "%s: more than %zu bytes (decompressed)", path, TASK_MAX_FILE);
    }
    xd_sbuf_putn(&b, chunk, (size_t)r);
  }
  gzclose(gz);
  *len = b.n;
  *out = xd_sbuf_take(&b);
  return 0;
}

/* Iterate over the non-blank lines of a JSONL buffer; returns parsed objects in an array. */
typedef struct {
  cJSON **rows;
  size_t *lineno;
  size_t n;
} jsonl;

static void jsonl_free(jsonl *j) {
  for (size_t i = 0; i < j->n; i++) cJSON_Delete(j->rows[i]);
  free(j->rows);
  free(j->lineno);
  memset(j, 0, sizeof *j);
}

static int jsonl_read(jsonl *j, const char *path, xd_err *e) {
  memset(j, 0, sizeof *j);
  char *buf;
  size_t len;
  if (read_text(path, &buf, &len, e)) return -1;
  size_t cap = 0, line = 0;
  const char *p = buf, *end = buf + len;
  while (p < end) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    const char *le = nl ? nl : end;
    line++;
    const char *q = p;
    while (q < le && isspace((unsigned char)*q)) q++;
    if (q < le) {
      cJSON *o = cJSON_ParseWithLength(p, (size_t)(le - p));
      if (!o || !cJSON_IsObject(o)) {
        cJSON_Delete(o);
        free(buf);
        jsonl_free(j);
        return xd_errf(e, "%s:%zu: not a JSON object", path, line);
      }
      if (j->n == cap) {
        cap = cap ? cap * 2 : 256;
        j->rows = xd_realloc(j->rows, cap * sizeof *j->rows);
        j->lineno = xd_realloc(j->lineno, cap * sizeof *j->lineno);
      }
      j->rows[j->n] = o;
      j->lineno[j->n++] = line;
    }
    p = le + 1;
  }
  free(buf);
  if (j->n == 0) return xd_errf(e, "%s: no JSON lines", path);
  return 0;
}

static const char *jstr(const cJSON *o, const char *key) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int jint(const cJSON *o, const char *key, int *out) {
  const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
  /* range first: converting an out-of-range double to int is undefined */
  if (!cJSON_IsNumber(v) || !(v->valuedouble >= -2147483648.0 && v->valuedouble <= 2147483647.0) ||
      v->valuedouble != (double)(int)v->valuedouble)
    return -1;
  *out = (int)v->valuedouble;
  return 0;
}

/* A JSON array of strings -> heap array of heap strings (count in *n). */
static int jstr_array(const cJSON *o, const char *key, char ***out, int *n) {
  const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, key);
  if (!cJSON_IsArray(a)) return -1;
  int m = cJSON_GetArraySize(a);
  if (m < 1 || m > 1000) return -1;
  const cJSON *it;
  cJSON_ArrayForEach(it, a) if (!cJSON_IsString(it)) return -1;
  char **s = xd_calloc((size_t)m, sizeof *s);
  int i = 0;
  cJSON_ArrayForEach(it, a) s[i++] = xd_strdup(it->valuestring);
  *out = s;
  *n = m;
  return 0;
}
static void str_array_free(char **s, int n) {
  if (!s) return;
  for (int i = 0; i < n; i++) free(s[i]);
  free(s);
}

/* ---- few-shot sampling ------------------------------------------------------ */
/* Draw k distinct indices of [0, pool) excluding `self` (-1: none) with a partial Fisher-Yates
 * shuffle; the rng is shared across docs (seeded once per task), so results depend only on the
 * seed and the doc order. Returns the number drawn (< k when the pool is too small). */
static size_t fewshot_sample(xd_rng *rng, size_t pool, long self, size_t k, size_t *scratch, size_t *out) {
  for (size_t i = 0; i < pool; i++) scratch[i] = i;
  size_t got = 0;
  for (size_t i = 0; i < pool && got < k; i++) {
    size_t j = i + (size_t)(xd_rng_uniform(rng) * (double)(pool - i));
    if (j >= pool) j = pool - 1;
    size_t tmp = scratch[i];
    scratch[i] = scratch[j];
    scratch[j] = tmp;
    if ((long)scratch[i] == self) continue;
    out[got++] = scratch[i];
  }
  return got;
}

/* ---- templates for user-defined tasks --------------------------------------- */
/* Render "{field}" placeholders from a JSON object; "{{" and "}}" are literal braces. */
static int render(const char *tmpl, const cJSON *doc, char **out, const char *where, xd_err *e) {
  xd_sbuf b = {0};
  for (const char *p = tmpl; *p;) {
    if (p[0] == '{' && p[1] == '{') { xd_sbuf_putn(&b, "{", 1); p += 2; continue; }
    if (p[0] == '}' && p[1] == '}') { xd_sbuf_putn(&b, "}", 1); p += 2; continue; }
    if (*p != '{') { xd_sbuf_putn(&b, p, 1); p++; continue; }
    const char *close = strchr(p, '}');
    if (!close || close - p > 200) {
      free(b.s);
      return xd_errf(e, "%s: unterminated '{' in template", where);
    }
    char key[256];
    memcpy(key, p + 1, (size_t)(close - p - 1));
    key[close - p - 1] = 0;
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(doc, key);
    if (cJSON_IsString(v)) xd_sbuf_puts(&b, v->valuestring);
    else if (cJSON_IsNumber(v)) {
      char num[64];
      if (v->valuedouble == (double)(long long)v->valuedouble) snprintf(num, sizeof num, "%lld", (long long)v->valuedouble);
      else snprintf(num, sizeof num, "%.17g", v->valuedouble);
      xd_sbuf_puts(&b, num);
    } else {
      free(b.s);
      return xd_errf(e, "%s: template field '%s' missing or not a string/number", where, key);
    }
    p = close + 1;
  }
  *out = xd_sbuf_take(&b);
  return 0;
}

/* ---- answer extraction (lm-eval GSM8K filters) ------------------------------- */
static char *regex_match(const char *pattern, const char *text, int last, xd_err *unused) {
  int errcode;
  PCRE2_SIZE erroff;
  pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, PCRE2_UTF, &errcode, &erroff, NULL);
  if (!re) re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, 0, &errcode, &erroff, NULL);
  XD_CHECK(re);
  pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
  size_t len = strlen(text), off = 0;
  char *found = NULL;
  while (off <= len) {
    int rc = pcre2_match(re, (PCRE2_SPTR)text, len, off, PCRE2_NO_UTF_CHECK, md, NULL);
    if (rc < 0) break;
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    /* the first non-empty capture group, as lm-eval picks from findall's tuple */
    size_t s = ov[0], en = ov[1];
    for (int g = 1; g < rc; g++)
      if (ov[2 * g] != PCRE2_UNSET && ov[2 * g + 1] > ov[2 * g]) { s = ov[2 * g]; en = ov[2 * g + 1]; break; }
    free(found);
    found = xd_malloc(en - s + 1);
    memcpy(found, text + s, en - s);
    found[en - s] = 0;
    if (!last) break;
    off = ov[1] > ov[0] ? ov[1] : ov[1] + 1;
  }
  pcre2_match_data_free(md);
  pcre2_code_free(re);
  (void)unused;
  return found;
}

/* lm-eval's exact_match normalisation for GSM8K: regexes_to_ignore [",", "\\$", "(?s).*#### ",
 * "\\.$"], then strip whitespace. */
static char *normalise_number(const char *s) {
  const char *hash = NULL;
  for (const char *p = strstr(s, "#### "); p; p = strstr(p + 1, "#### ")) hash = p;
  if (hash) s = hash + 5;
  xd_sbuf b = {0};
  for (const char *p = s; *p; p++)
    if (*p != ',' && *p != '$') xd_sbuf_putn(&b, p, 1);
  char *r = xd_sbuf_take(&b);
  size_t n = strlen(r);
  if (n && r[n - 1] == '.') r[--n] = 0;
  size_t a = 0;
  while (r[a] && isspace((unsigned char)r[a])) a++;
  while (n > a && isspace((unsigned char)r[n - 1])) r[--n] = 0;
  memmove(r, r + a, n - a + 1);
  return r;
}

char *xd_extract_answer(const char *text, xd_extract_kind mode, int *strict) {
  if (strict) *strict = 0;
  if (mode == XD_EXTRACT_NONE) {
    size_t a = 0, n = strlen(text);
    while (text[a] && isspace((unsigned char)text[a])) a++;
    while (n > a && isspace((unsigned char)text[n - 1])) n--;
    char *r = xd_malloc(n - a + 1);
    memcpy(r, text + a, n - a);
    r[n - a] = 0;
    return r;
  }
  char *m = NULL;
  if (mode == XD_EXTRACT_GSM8K) {
    m = regex_match("#### (\\-?[0-9\\.\\,]+)", text, 0, NULL);
    if (m && strict) *strict = 1;
  }
  if (!m) m = regex_match("(-?[$0-9.,]{2,})|(-?[0-9]+)", text, 1, NULL);
  if (!m) return xd_strdup("");
  char *r = normalise_number(m);
  free(m);
  return r;
}

/* ---- readers ------------------------------------------------------------------ */
typedef struct {
  const char *path, *fewshot_path;
  const xd_task_options *opt;
  xd_rng rng;
  /* prompt pieces of the built-in readers (a task definition may change them) */
  const char *tdelim;       /* target delimiter before each continuation, default " " */
  const char *fdelim;       /* between few-shot examples, default "\n\n" */
  const char *query_suffix; /* appended to each query (mc), e.g. "\nAnswer:", default "" */
} load_ctx;

/* Effective number of few-shot examples, recorded in the task for the results file. */
static size_t opt_fewshot(xd_task *t, const load_ctx *c, int dflt) {
  t->num_fewshot = c->opt->num_fewshot >= 0 ? c->opt->num_fewshot : dflt;
  return (size_t)t->num_fewshot;
}

/* Few-shot pool: rows from fewshot_path when given, else the evaluation rows themselves
 * (then the doc itself is excluded). */
typedef struct {
  jsonl own;
  const jsonl *pool;
  int same;
  size_t *scratch, *pick;
} shot_pool;

static int pool_open(shot_pool *p, const load_ctx *c, const jsonl *eval_rows, size_t k, xd_err *e) {
  memset(p, 0, sizeof *p);
  if (k == 0) return 0;
  if (c->fewshot_path) {
    if (jsonl_read(&p->own, c->fewshot_path, e)) return -1;
    p->pool = &p->own;
  } else {
    p->pool = eval_rows;
    p->same = 1;
  }
  p->scratch = xd_malloc(p->pool->n * sizeof *p->scratch);
  p->pick = xd_malloc((k + 1) * sizeof *p->pick);
  return 0;
}
static void pool_close(shot_pool *p) {
  jsonl_free(&p->own);
  free(p->scratch);
  free(p->pick);
}
static size_t pool_draw(shot_pool *p, load_ctx *c, size_t k, size_t self) {
  if (k == 0) return 0;
  return fewshot_sample(&c->rng, p->pool->n, p->same ? (long)self : -1, k, p->scratch, p->pick);
}

static int check_limit(const load_ctx *c, size_t i) { return c->opt->limit && i >= c->opt->limit; }

/* ARC / PIQA / HellaSwag (llm-foundry): {query, choices, gold}; continuation " " + choice. */
static int read_mc(xd_task *t, load_ctx *c, xd_err *e) {
  jsonl rows;
  if (jsonl_read(&rows, c->path, e)) return -1;
  size_t k = opt_fewshot(t, c, 0), cap = 0;
  shot_pool pool;
  if (pool_open(&pool, c, &rows, k, e)) { jsonl_free(&rows); return -1; }
  int rc = 0;
  for (size_t i = 0; i < rows.n && !check_limit(c, i); i++) {
    const cJSON *o = rows.rows[i];
    const char *q = jstr(o, "query");
    char **ch = NULL;
    int nch = 0, gold;
    if (!q || jstr_array(o, "choices", &ch, &nch) || jint(o, "gold", &gold) || gold < 0 || gold >= nch) {
      str_array_free(ch, nch);
      rc = xd_errf(e, "%s:%zu: expected {query: string, choices: [string...], gold: index into choices}", c->path, rows.lineno[i]);
      break;
    }
    xd_sbuf ctx = {0};
    size_t got = pool_draw(&pool, c, k, i);
    for (size_t s = 0; s < got; s++) {
      const cJSON *so = pool.pool->rows[pool.pick[s]];
      const char *sq = jstr(so, "query");
      const cJSON *sch = cJSON_GetObjectItemCaseSensitive(so, "choices");
      int sg;
      const cJSON *sgold = NULL;
      if (sq && !jint(so, "gold", &sg) && cJSON_IsArray(sch)) sgold = cJSON_GetArrayItem(sch, sg);
      if (!cJSON_IsString(sgold)) continue; /* a malformed shot is skipped, the pool is untrusted too */
      xd_sbuf_puts(&ctx, sq);
      xd_sbuf_puts(&ctx, c->query_suffix);
      xd_sbuf_puts(&ctx, c->tdelim);
      xd_sbuf_puts(&ctx, sgold->valuestring);
      xd_sbuf_puts(&ctx, c->fdelim);
    }
    xd_sbuf_puts(&ctx, q);
    xd_sbuf_puts(&ctx, c->query_suffix);
    xd_task_doc *d = task_push_doc(t, &cap);
    d->context = xd_sbuf_take(&ctx);
    d->n_choices = nch;
    d->gold = gold;
    d->continuations = xd_calloc((size_t)nch, sizeof(char *));
    for (int j = 0; j < nch; j++) d->continuations[j] = str_cat(c->tdelim, ch[j]);
    str_array_free(ch, nch);
  }
  pool_close(&pool);
  jsonl_free(&rows);
  return rc;
}

/* WinoGrande: the option fills the sentence (per-choice context); the shared continuation is
 * scored (lm-eval "partial evaluation"). */
static int read_winogrande(xd_task *t, load_ctx *c, xd_err *e) {
  jsonl rows;
  if (jsonl_read(&rows, c->path, e)) return -1;
  size_t k = opt_fewshot(t, c, 0), cap = 0;
  shot_pool pool;
  if (pool_open(&pool, c, &rows, k, e)) { jsonl_free(&rows); return -1; }
  int rc = 0;
  for (size_t i = 0; i < rows.n && !check_limit(c, i); i++) {
    const cJSON *o = rows.rows[i];
    const char *cont = jstr(o, "continuation");
    char **opts = NULL;
    int nopt = 0, gold;
    if (!cont || jstr_array(o, "context_options", &opts, &nopt) || jint(o, "gold", &gold) || gold < 0 || gold >= nopt) {
      str_array_free(opts, nopt);
      rc = xd_errf(e, "%s:%zu: expected {context_options: [string...], continuation: string, gold: index}", c->path, rows.lineno[i]);
      break;
    }
    xd_sbuf pre = {0};
    size_t got = pool_draw(&pool, c, k, i);
    for (size_t s = 0; s < got; s++) {
      const cJSON *so = pool.pool->rows[pool.pick[s]];
      const cJSON *sopts = cJSON_GetObjectItemCaseSensitive(so, "context_options");
      const char *scont = jstr(so, "continuation");
      int sg;
      const cJSON *sopt = NULL;
      if (scont && !jint(so, "gold", &sg) && cJSON_IsArray(sopts)) sopt = cJSON_GetArrayItem(sopts, sg);
      if (!cJSON_IsString(sopt)) continue;
      xd_sbuf_puts(&pre, sopt->valuestring);
      xd_sbuf_puts(&pre, c->tdelim);
      xd_sbuf_puts(&pre, scont);
      xd_sbuf_puts(&pre, c->fdelim);
    }
    xd_task_doc *d = task_push_doc(t, &cap);
    d->n_choices = nopt;
    d->gold = gold;
    d->choice_contexts = xd_calloc((size_t)nopt, sizeof(char *));
    d->continuations = xd_calloc((size_t)nopt, sizeof(char *));
    for (int j = 0; j < nopt; j++) {
      d->choice_contexts[j] = str_cat(pre.s ? pre.s : "", opts[j]);
      d->continuations[j] = str_cat(c->tdelim, cont);
    }
    free(pre.s);
    str_array_free(opts, nopt);
  }
  pool_close(&pool);
  jsonl_free(&rows);
  return rc;
}

/* HellaSwag, OLMES request format: one line per (doc, choice), requests already rendered
 * (few-shot included); consecutive lines with the same doc_id form one doc, ordered by idx.
 * The rc file also holds unconditional requests (doc_id + 1000000, context "Answer:") for
 * OLMES's acc_uncond normalisation; they are skipped: acc and acc_norm need only the others. */
static int read_olmes(xd_task *t, load_ctx *c, xd_err *e) {
  jsonl rows;
  if (jsonl_read(&rows, c->path, e)) return -1;
  size_t cap = 0;
  int rc = 0;
  for (size_t i = 0; i < rows.n;) {
    int doc_id, label;
    const cJSON *o = rows.rows[i];
    if (jint(o, "doc_id", &doc_id) || jint(o, "label", &label)) {
      rc = xd_errf(e, "%s:%zu: expected OLMES request {doc_id, label, idx, request: {context, continuation}}", c->path, rows.lineno[i]);
      break;
    }
    size_t j = i;
    int id2;
    while (j < rows.n && !jint(rows.rows[j], "doc_id", &id2) && id2 == doc_id) j++;
    int n = (int)(j - i);
    if (doc_id >= 1000000) { /* OLMES unconditional requests (context "Answer:", for acc_uncond): not used */
      i = j;
      continue;
    }
    if (check_limit(c, t->n_docs)) break;
    if (n > 1000 || label < 0 || label >= n) {
      rc = xd_errf(e, "%s:%zu: doc %d has %d requests and label %d", c->path, rows.lineno[i], doc_id, n, label);
      break;
    }
    xd_task_doc *d = task_push_doc(t, &cap);
    d->n_choices = n;
    d->gold = label;
    d->choice_contexts = xd_calloc((size_t)n, sizeof(char *));
    d->continuations = xd_calloc((size_t)n, sizeof(char *));
    for (int r = 0; r < n; r++) {
      const cJSON *ro = rows.rows[i + (size_t)r];
      const cJSON *req = cJSON_GetObjectItemCaseSensitive(ro, "request");
      const char *cx = jstr(req, "context"), *cn = jstr(req, "continuation");
      int idx;
      if (!cx || !cn || jint(ro, "idx", &idx) || idx < 0 || idx >= n || d->continuations[idx]) {
        rc = xd_errf(e, "%s:%zu: bad request (need request.context, request.continuation, distinct idx in [0,%d))", c->path, rows.lineno[i + (size_t)r], n);
        break;
      }
      d->choice_contexts[idx] = xd_strdup(cx);
      d->continuations[idx] = xd_strdup(cn);
    }
    if (rc) break;
    i = j;
  }
  jsonl_free(&rows);
  return rc;
}

/* LAMBADA: {context, continuation}; the target is " " + continuation. */
static int read_lambada(xd_task *t, load_ctx *c, xd_err *e) {
  jsonl rows;
  if (jsonl_read(&rows, c->path, e)) return -1;
  size_t cap = 0;
  int rc = 0;
  for (size_t i = 0; i < rows.n && !check_limit(c, i); i++) {
    const char *cx = jstr(rows.rows[i], "context"), *cn = jstr(rows.rows[i], "continuation");
    if (!cx || !cn || !*cn) {
      rc = xd_errf(e, "%s:%zu: expected {context: string, continuation: non-empty string}", c->path, rows.lineno[i]);
      break;
    }
    xd_task_doc *d = task_push_doc(t, &cap);
    d->n_choices = 1;
    d->context = xd_strdup(cx);
    d->continuations = xd_calloc(1, sizeof(char *));
    d->continuations[0] = str_cat(c->tdelim, cn);
  }
  jsonl_free(&rows);
  return rc;
}

/* GSM8K: original {question, answer "...#### N"} or llm-foundry {context, chain_of_thought,
 * answer}. Prompt "Question: q\nAnswer:", few-shot "Question: q\nAnswer: full answer" joined by
 * "\n\n"; stop at "Question:", "</s>", "<|im_end|>"; exact match on the extracted number. */
static int gsm8k_fields(const cJSON *o, const char **q, char **full) {
  *q = jstr(o, "question");
  const char *a = jstr(o, "answer");
  if (*q && a) { *full = xd_strdup(a); return 0; }
  *q = jstr(o, "context");
  const char *cot = jstr(o, "chain_of_thought");
  if (*q && a && cot) {
    xd_sbuf b = {0};
    xd_sbuf_puts(&b, cot);
    xd_sbuf_puts(&b, "\n#### ");
    xd_sbuf_puts(&b, a);
    *full = xd_sbuf_take(&b);
    return 0;
  }
  return -1;
}

static int read_gsm8k(xd_task *t, load_ctx *c, xd_err *e) {
  jsonl rows;
  if (jsonl_read(&rows, c->path, e)) return -1;
  size_t k = opt_fewshot(t, c, c->fewshot_path ? 5 : 0), cap = 0;
  shot_pool pool;
  if (pool_open(&pool, c, &rows, k, e)) { jsonl_free(&rows); return -1; }
  static const char *const stops[] = {"Question:", "</s>", "<|im_end|>"};
  task_set_until(t, stops, 3);
  t->max_new_tokens = 256;
  t->extract = XD_EXTRACT_GSM8K;
  int rc = 0;
  for (size_t i = 0; i < rows.n && !check_limit(c, i); i++) {
    const char *q;
    char *full;
    if (gsm8k_fields(rows.rows[i], &q, &full)) {
      rc = xd_errf(e, "%s:%zu: expected {question, answer} or {context, chain_of_thought, answer}", c->path, rows.lineno[i]);
      break;
    }
    xd_sbuf p = {0};
    size_t got = pool_draw(&pool, c, k, i);
    for (size_t s = 0; s < got; s++) {
      const char *sq;
      char *sfull;
      if (gsm8k_fields(pool.pool->rows[pool.pick[s]], &sq, &sfull)) continue;
      xd_sbuf_puts(&p, "Question: ");
      xd_sbuf_puts(&p, sq);
      xd_sbuf_puts(&p, "\nAnswer: ");
      xd_sbuf_puts(&p, sfull);
      xd_sbuf_puts(&p, "\n\n");
      free(sfull);
    }
    xd_sbuf_puts(&p, "Question: ");
    xd_sbuf_puts(&p, q);
    xd_sbuf_puts(&p, "\nAnswer:");
    xd_task_doc *d = task_push_doc(t, &cap);
    d->prompt = xd_sbuf_take(&p);
    d->answer = xd_extract_answer(full, XD_EXTRACT_GSM8K, NULL);
    free(full);
  }
  pool_close(&pool);
  jsonl_free(&rows);
  return rc;
}

/* ---- MMLU CSV ------------------------------------------------------------------- */
/* RFC 4180 CSV: quoted fields with "" escapes, CRLF or LF. Returns rows of fields. */
typedef struct {
  char **f;
  int nf;
  size_t line;
} csv_row;

static void csv_free(csv_row *rows, size_t n) {
  for (size_t i = 0; i < n; i++) str_array_free(rows[i].f, rows[i].nf);
  free(rows);
}

static int csv_parse(const char *path, const char *buf, size_t len, csv_row **out, size_t *nout, xd_err *e) {
  csv_row *rows = NULL;
  size_t n = 0, cap = 0, line = 1;
  size_t i = 0;
  while (i < len) {
    csv_row r = {NULL, 0, line};
    int fcap = 0;
    for (;;) { /* one field */
      xd_sbuf f = {0};
      if (i < len && buf[i] == '"') {
        size_t start_line = line;
        i++;
        for (;;) {
          if (i >= len) {
            free(f.s);
            str_array_free(r.f, r.nf);
            csv_free(rows, n);
            return xd_errf(e, "%s:%zu: unterminated quoted field", path, start_line);
          }
          if (buf[i] == '"') {
            if (i + 1 < len && buf[i + 1] == '"') { xd_sbuf_putn(&f, "\"", 1); i += 2; continue; }
            i++;
            break;
          }
          if (buf[i] == '\n') line++;
          xd_sbuf_putn(&f, buf + i, 1);
          i++;
        }
      } else {
        while (i < len && buf[i] != ',' && buf[i] != '\n' && buf[i] != '\r') xd_sbuf_putn(&f, buf + i++, 1);
      }
      if (r.nf == fcap) {
        fcap = fcap ? fcap * 2 : 8;
        r.f = xd_realloc(r.f, (size_t)fcap * sizeof *r.f);
      }
      r.f[r.nf++] = xd_sbuf_take(&f);
      if (r.nf > 64) {
        str_array_free(r.f, r.nf);
        csv_free(rows, n);
        return xd_errf(e, "%s:%zu: more than 64 fields", path, line);
      }
      if (i < len && buf[i] == ',') { i++; continue; }
      break;
    }
    if (i < len && buf[i] == '\r') i++;
    if (i < len && buf[i] == '\n') { i++; line++; }
    else if (i < len) {
      str_array_free(r.f, r.nf);
      csv_free(rows, n);
      return xd_errf(e, "%s:%zu: junk after a quoted field", path, line);
    }
    if (n == cap) {
      cap = cap ? cap * 2 : 64;
      rows = xd_realloc(rows, cap * sizeof *rows);
    }
    rows[n++] = r;
  }
  *out = rows;
  *nout = n;
  return 0;
}

static int mmlu_answer(const char *s) {
  if (s[0] >= 'A' && s[0] <= 'D' && !s[1]) return s[0] - 'A';
  if (s[0] >= '0' && s[0] <= '3' && !s[1]) return s[0] - '0';
  return -1;
}

/* Rows of an MMLU CSV, header "question,choice0..3,answer" optional; validated. */
static int mmlu_read(const char *path, csv_row **rows, size_t *n, size_t *first, xd_err *e) {
  char *buf;
  size_t len;
  if (read_text(path, &buf, &len, e)) return -1;
  int rc = csv_parse(path, buf, len, rows, n, e);
  free(buf);
  if (rc) return -1;
  *first = (*n > 0 && (*rows)[0].nf >= 1 && !strcmp((*rows)[0].f[0], "question")) ? 1 : 0;
  for (size_t i = *first; i < *n; i++) {
    const csv_row *r = &(*rows)[i];
    if (r->nf != 6 || mmlu_answer(r->f[5]) < 0) {
      size_t line = r->line;
      csv_free(*rows, *n);
      return xd_errf(e, "%s:%zu: expected 6 fields question,choice0,choice1,choice2,choice3,answer (0-3 or A-D)", path, line);
    }
  }
  return 0;
}

static void mmlu_render(xd_sbuf *b, const csv_row *r, int with_answer) {
  static const char letters[] = "ABCD";
  const char *q = r->f[0];
  size_t qa = 0, qn = strlen(q);
  while (q[qa] && isspace((unsigned char)q[qa])) qa++;
  while (qn > qa && isspace((unsigned char)q[qn - 1])) qn--;
  xd_sbuf_putn(b, q + qa, qn - qa);
  for (int j = 0; j < 4; j++) {
    char l[4] = {'\n', letters[j], '.', ' '};
    xd_sbuf_putn(b, l, 4);
    xd_sbuf_puts(b, r->f[1 + j]);
  }
  xd_sbuf_puts(b, "\nAnswer:");
  if (with_answer) {
    char a[3] = {' ', letters[mmlu_answer(r->f[5])], 0};
    xd_sbuf_puts(b, a);
  }
}

/* subject from ".../abstract_algebra_test.csv" -> "abstract algebra" */
static char *mmlu_subject(const char *path) {
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  char *s = xd_strdup(base);
  char *cut = strstr(s, "_test.csv");
  if (!cut) cut = strstr(s, "_dev.csv");
  if (!cut) cut = strstr(s, ".csv");
  if (cut) *cut = 0;
  for (char *p = s; *p; p++)
    if (*p == '_') *p = ' ';
  return s;
}

static int mmlu_file(xd_task *t, size_t *cap, const char *path, const char *dev_path, size_t k, const load_ctx *c, xd_err *e) {
  csv_row *rows, *dev = NULL;
  size_t n, first, ndev = 0, dfirst = 0;
  if (mmlu_read(path, &rows, &n, &first, e)) return -1;
  if (k && dev_path && mmlu_read(dev_path, &dev, &ndev, &dfirst, e)) { csv_free(rows, n); return -1; }
  char *subject = mmlu_subject(path);
  xd_sbuf pre = {0};
  xd_sbuf_puts(&pre, "The following are multiple choice questions (with answers) about ");
  xd_sbuf_puts(&pre, subject);
  xd_sbuf_puts(&pre, ".\n\n");
  for (size_t s = dfirst; dev && s < ndev && s - dfirst < k; s++) { /* lm-eval: first k of dev */
    mmlu_render(&pre, &dev[s], 1);
    xd_sbuf_puts(&pre, "\n\n");
  }
  for (size_t i = first; i < n && !check_limit(c, t->n_docs); i++) {
    xd_task_doc *d = task_push_doc(t, cap);
    xd_sbuf ctx = {0};
    xd_sbuf_puts(&ctx, pre.s);
    mmlu_render(&ctx, &rows[i], 0);
    d->context = xd_sbuf_take(&ctx);
    d->n_choices = 4;
    d->gold = mmlu_answer(rows[i].f[5]);
    d->continuations = xd_calloc(4, sizeof(char *));
    for (int j = 0; j < 4; j++) {
      char l[3] = {' ', (char)('A' + j), 0};
      d->continuations[j] = xd_strdup(l);
    }
  }
  free(pre.s);
  free(subject);
  csv_free(rows, n);
  if (dev) csv_free(dev, ndev);
  return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* Sorted list of files in dir ending in suffix (heap). */
static int list_dir(const char *dir, const char *suffix, char ***out, size_t *n, xd_err *e) {
  DIR *d = opendir(dir);
  if (!d) return xd_errf(e, "%s: cannot open directory: %s", dir, strerror(errno));
  char **v = NULL;
  size_t m = 0, cap = 0, sl = strlen(suffix);
  struct dirent *de;
  while ((de = readdir(d))) {
    size_t l = strlen(de->d_name);
    if (l <= sl || strcmp(de->d_name + l - sl, suffix)) continue;
    if (m == cap) {
      cap = cap ? cap * 2 : 64;
      v = xd_realloc(v, cap * sizeof *v);
    }
    v[m++] = xd_path_join(dir, de->d_name);
  }
  closedir(d);
  if (m) qsort(v, m, sizeof *v, cmp_str);
  *out = v;
  *n = m;
  return 0;
}

static int read_mmlu(xd_task *t, load_ctx *c, xd_err *e) {
  size_t k = opt_fewshot(t, c, c->fewshot_path ? 5 : 0), cap = 0;
  if (!xd_is_dir(c->path)) {
    char *dev = NULL;
    if (c->fewshot_path && xd_is_dir(c->fewshot_path)) { /* <dir>/<subject>_dev.csv */
      const char *base = strrchr(c->path, '/');
      char *f = xd_strdup(base ? base + 1 : c->path), *cut = strstr(f, "_test.csv");
      if (cut) strcpy(cut, "_dev.csv");
      dev = xd_path_join(c->fewshot_path, f);
      free(f);
    } else if (c->fewshot_path) dev = xd_strdup(c->fewshot_path);
    int rc = mmlu_file(t, &cap, c->path, dev, k, c, e);
    free(dev);
    return rc;
  }
  char **files = NULL;
  size_t nf = 0;
  if (list_dir(c->path, "_test.csv", &files, &nf, e)) return -1;
  int rc = nf ? 0 : xd_errf(e, "%s: no *_test.csv files", c->path);
  for (size_t i = 0; i < nf && !rc; i++) {
    char *dev = NULL;
    if (k && c->fewshot_path) {
      char *subj_file = xd_strdup(strrchr(files[i], '/') + 1);
      strcpy(strstr(subj_file, "_test.csv"), "_dev.csv");
      dev = xd_path_join(c->fewshot_path, subj_file);
      free(subj_file);
      if (!xd_file_exists(dev)) rc = xd_errf(e, "%s: few-shot file missing for %s", dev, files[i]);
    }
    if (!rc) rc = mmlu_file(t, &cap, files[i], dev, k, c, e);
    free(dev);
  }
  for (size_t i = 0; i < nf; i++) free(files[i]);
  free(files);
  return rc;
}

/* Perplexity: a text file is one document; a .jsonl/.jsonl.gz file has {"text"} per line. */
static int read_perplexity(xd_task *t, load_ctx *c, xd_err *e) {
  size_t cap = 0;
  if (strstr(c->path, ".jsonl")) {
    jsonl rows;
    if (jsonl_read(&rows, c->path, e)) return -1;
    int rc = 0;
    for (size_t i = 0; i < rows.n && !check_limit(c, i); i++) {
      const char *s = jstr(rows.rows[i], "text");
      if (!s) { rc = xd_errf(e, "%s:%zu: expected {text: string}", c->path, rows.lineno[i]); break; }
      if (!*s) continue;
      task_push_doc(t, &cap)->prompt = xd_strdup(s);
    }
    jsonl_free(&rows);
    return rc;
  }
  char *buf;
  size_t len;
  if (read_text(c->path, &buf, &len, e)) return -1;
  if (memchr(buf, 0, len)) { free(buf); return xd_errf(e, "%s: binary file (NUL byte)", c->path); }
  if (len == 0) { free(buf); return xd_errf(e, "%s: empty text", c->path); }
  task_push_doc(t, &cap)->prompt = buf;
  return 0;
}

/* ---- user task definitions (docs/eval.md) ------------------------------------------- */
static const char *def_str(const cJSON *o, const char *key, const char *dflt) {
  const char *s = jstr(o, key);
  return s ? s : dflt;
}

/* Custom jsonl task: kind "generate" (prompt template -> answer, exact match) or
 * "multiple_choice" (template -> choices/gold). */
static int read_custom(xd_task *t, load_ctx *c, const cJSON *def, const char *defpath, xd_err *e) {
  const char *kind = def_str(def, "kind", "generate");
  const char *tmpl = def_str(def, "prompt_template", "{prompt}");
  const char *answer_field = def_str(def, "answer_field", "answer");
  const char *choices_field = def_str(def, "choices_field", "choices");
  const char *gold_field = def_str(def, "gold_field", "gold");
  const char *tdelim = def_str(def, "target_delimiter", " ");
  const char *fdelim = def_str(def, "fewshot_delimiter", "\n\n");
  int mc = !strcmp(kind, "multiple_choice");
  if (!mc && strcmp(kind, "generate")) return xd_errf(e, "%s: kind must be \"generate\" or \"multiple_choice\"", defpath);
  t->kind = mc ? XD_TASK_MULTIPLE_CHOICE : XD_TASK_GENERATE;
  if (!mc) {
    const char *ex = def_str(def, "extract", "none");
    if (!strcmp(ex, "none")) t->extract = XD_EXTRACT_NONE;
    else if (!strcmp(ex, "number")) t->extract = XD_EXTRACT_NUMBER;
    else if (!strcmp(ex, "gsm8k")) t->extract = XD_EXTRACT_GSM8K;
    else return xd_errf(e, "%s: extract must be none, number or gsm8k", defpath);
    const cJSON *mn = cJSON_GetObjectItemCaseSensitive(def, "max_new_tokens");
    const double mnv = cJSON_IsNumber(mn) ? mn->valuedouble : 256;
    if (!(mnv >= 1 && mnv <= 1 << 20)) return xd_errf(e, "%s: max_new_tokens out of range", defpath);
    t->max_new_tokens = (int)mnv;
    t->ignore_case = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(def, "ignore_case"));
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(def, "until");
    if (u) {
      char **s;
      int n;
      if (jstr_array(def, "until", &s, &n)) return xd_errf(e, "%s: until must be a non-empty array of strings", defpath);
      t->until = s;
      t->n_until = (size_t)n;
    } else {
      static const char *const dflt[] = {"\n\n"};
      task_set_until(t, dflt, 1);
    }
  }
  jsonl rows;
  if (jsonl_read(&rows, c->path, e)) return -1;
  size_t k = opt_fewshot(t, c, 0), cap = 0;
  shot_pool pool;
  if (pool_open(&pool, c, &rows, k, e)) { jsonl_free(&rows); return -1; }
  int rc = 0;
  char where[600];
  /* Target text of a row: answer field (generate) or the gold choice (mc). */
  for (size_t i = 0; i < rows.n && !check_limit(c, i) && !rc; i++) {
    const cJSON *o = rows.rows[i];
    snprintf(where, sizeof where, "%s:%zu", c->path, rows.lineno[i]);
    xd_sbuf p = {0};
    size_t got = pool_draw(&pool, c, k, i);
    for (size_t s = 0; s < got && !rc; s++) {
      const cJSON *so = pool.pool->rows[pool.pick[s]];
      char *r, tgt_buf[64];
      const char *tgt = NULL;
      if (mc) {
        const cJSON *ch = cJSON_GetObjectItemCaseSensitive(so, choices_field);
        int g;
        const cJSON *gi = NULL;
        if (!jint(so, gold_field, &g) && cJSON_IsArray(ch)) gi = cJSON_GetArrayItem(ch, g);
        if (cJSON_IsString(gi)) tgt = gi->valuestring;
      } else {
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(so, answer_field);
        if (cJSON_IsString(a)) tgt = a->valuestring;
        else if (cJSON_IsNumber(a)) { snprintf(tgt_buf, sizeof tgt_buf, "%.17g", a->valuedouble); tgt = tgt_buf; }
      }
      if (!tgt) continue;
      if (render(tmpl, so, &r, where, e)) { rc = -1; break; }
      xd_sbuf_puts(&p, r);
      xd_sbuf_puts(&p, tdelim);
      xd_sbuf_puts(&p, tgt);
      xd_sbuf_puts(&p, fdelim);
      free(r);
    }
    char *r = NULL;
    if (rc || render(tmpl, o, &r, where, e)) { free(p.s); rc = -1; break; }
    xd_sbuf_puts(&p, r);
    free(r);
    if (mc) {
      char **ch = NULL;
      int nch = 0, g;
      if (jstr_array(o, choices_field, &ch, &nch) || jint(o, gold_field, &g) || g < 0 || g >= nch) {
        str_array_free(ch, nch);
        free(p.s);
        rc = xd_errf(e, "%s: expected '%s' (array of strings) and '%s' (index)", where, choices_field, gold_field);
        break;
      }
      xd_task_doc *d = task_push_doc(t, &cap);
      d->context = xd_sbuf_take(&p);
      d->n_choices = nch;
      d->gold = g;
      d->continuations = xd_calloc((size_t)nch, sizeof(char *));
      for (int j = 0; j < nch; j++) d->continuations[j] = str_cat(tdelim, ch[j]);
      str_array_free(ch, nch);
    } else {
      const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, answer_field);
      char num[64];
      const char *ans = NULL;
      if (cJSON_IsString(a)) ans = a->valuestring;
      else if (cJSON_IsNumber(a)) {
        if (a->valuedouble == (double)(long long)a->valuedouble) snprintf(num, sizeof num, "%lld", (long long)a->valuedouble);
        else snprintf(num, sizeof num, "%.17g", a->valuedouble);
        ans = num;
      }
      if (!ans) {
        free(p.s);
        rc = xd_errf(e, "%s: answer field '%s' missing", where, answer_field);
        break;
      }
      xd_task_doc *d = task_push_doc(t, &cap);
      d->prompt = xd_sbuf_take(&p);
      /* the reference goes through the same extraction/normalisation as the generation */
      d->answer = t->extract == XD_EXTRACT_NONE ? xd_extract_answer(ans, XD_EXTRACT_NONE, NULL) : normalise_number(ans);
    }
  }
  pool_close(&pool);
  jsonl_free(&rows);
  return rc;
}

static char *resolve_rel(const char *defpath, const char *p) {
  if (p[0] == '/') return xd_strdup(p);
  const char *slash = strrchr(defpath, '/');
  if (!slash) return xd_strdup(p);
  char *dir = xd_malloc((size_t)(slash - defpath) + 1);
  memcpy(dir, defpath, (size_t)(slash - defpath));
  dir[slash - defpath] = 0;
  char *r = xd_path_join(dir, p);
  free(dir);
  return r;
}

static int load_format(xd_task *t, const char *format, load_ctx *c, const cJSON *def, const char *defpath, xd_err *e);

static int read_def(xd_task *t, load_ctx *c, xd_err *e) {
  char *buf;
  size_t len;
  if (xd_read_file(c->path, 1 << 20, &buf, &len, e)) return -1;
  cJSON *def = cJSON_ParseWithLength(buf, len);
  free(buf);
  if (!cJSON_IsObject(def)) { cJSON_Delete(def); return xd_errf(e, "%s: not a JSON object", c->path); }
  const char *format = jstr(def, "format"), *data = jstr(def, "data"), *fs = jstr(def, "fewshot_data");
  const char *name = jstr(def, "name");
  int rc = 0;
  if (!format || !data || !name) rc = xd_errf(e, "%s: a task definition needs \"name\", \"format\" and \"data\" strings", c->path);
  else if (!strcmp(format, "def")) rc = xd_errf(e, "%s: format \"def\" cannot nest", c->path);
  xd_task_options opt = *c->opt;
  const cJSON *v;
  if (!rc && opt.num_fewshot < 0 && cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(def, "num_fewshot"))) {
    if (!(v->valuedouble >= 0 && v->valuedouble <= 1000)) rc = xd_errf(e, "%s: num_fewshot out of range", c->path);
    else opt.num_fewshot = (int)v->valuedouble;
  }
  if (!rc && opt.limit == 0 && cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(def, "limit")) && v->valuedouble > 0) {
    if (!(v->valuedouble <= 1e15)) rc = xd_errf(e, "%s: limit out of range", c->path);
    else opt.limit = (size_t)v->valuedouble;
  }
  if (!rc && cJSON_IsNumber(v = cJSON_GetObjectItemCaseSensitive(def, "seed")) && opt.seed == 1234) {
    if (!(v->valuedouble >= 0 && v->valuedouble <= 9007199254740992.0)) rc = xd_errf(e, "%s: seed must be in [0, 2^53]", c->path);
    else opt.seed = (uint64_t)v->valuedouble;
  }
  if (!rc) {
    char *dpath = resolve_rel(c->path, data), *fpath = fs ? resolve_rel(c->path, fs) : NULL;
    load_ctx c2 = {dpath, fpath, &opt, {{0}}, def_str(def, "target_delimiter", " "), def_str(def, "fewshot_delimiter", "\n\n"),
                   def_str(def, "query_suffix", "")};
    xd_rng_seed(&c2.rng, opt.seed);
    free(t->name);
    t->name = xd_strdup(name);
    free(t->source);
    t->source = xd_strdup(dpath);
    rc = load_format(t, format, &c2, def, c->path, e);
    free(dpath);
    free(fpath);
  }
  cJSON_Delete(def);
  return rc;
}

static void set_primary(xd_task *t, const char *m) { snprintf(t->primary, sizeof t->primary, "%s", m); }

static int load_format(xd_task *t, const char *format, load_ctx *c, const cJSON *def, const char *defpath, xd_err *e) {
  t->target_delim_len = strlen(c->tdelim);
  if (!strcmp(format, "mc")) { t->kind = XD_TASK_MULTIPLE_CHOICE; set_primary(t, "acc_norm"); return read_mc(t, c, e); }
  if (!strcmp(format, "winogrande")) { t->kind = XD_TASK_MULTIPLE_CHOICE; set_primary(t, "acc"); return read_winogrande(t, c, e); }
  if (!strcmp(format, "hellaswag_olmes")) {
    t->kind = XD_TASK_MULTIPLE_CHOICE;
    t->target_delim_len = 0; /* OLMES continuations are scored and normalised as given */
    set_primary(t, "acc_norm");
    return read_olmes(t, c, e);
  }
  if (!strcmp(format, "lambada")) { t->kind = XD_TASK_LOGLIKELIHOOD; set_primary(t, "acc"); return read_lambada(t, c, e); }
  if (!strcmp(format, "mmlu")) { t->kind = XD_TASK_MULTIPLE_CHOICE; set_primary(t, "acc"); return read_mmlu(t, c, e); }
  if (!strcmp(format, "gsm8k")) { t->kind = XD_TASK_GENERATE; set_primary(t, "exact_match"); return read_gsm8k(t, c, e); }
  if (!strcmp(format, "perplexity")) { t->kind = XD_TASK_PERPLEXITY; set_primary(t, "bits_per_byte"); return read_perplexity(t, c, e); }
  if (!strcmp(format, "jsonl")) {
    if (!def) return xd_errf(e, "%s: format \"jsonl\" needs a task definition file (format \"def\")", c->path);
    int rc = read_custom(t, c, def, defpath, e);
    set_primary(t, t->kind == XD_TASK_GENERATE ? "exact_match" : "acc");
    const char *pm = jstr(def, "primary");
    if (!rc && pm) set_primary(t, pm);
    return rc;
  }
  if (!strcmp(format, "def") && !def) return read_def(t, c, e);
  return xd_errf(e, "unknown task format '%s' (mc, winogrande, hellaswag_olmes, lambada, mmlu, gsm8k, perplexity, jsonl, def)", format);
}

int xd_task_load(xd_task **out, const char *format, const char *path, const char *fewshot_path,
                 const char *name, const xd_task_options *opt, xd_err *e) {
  *out = NULL;
  xd_task_options dflt;
  xd_task_options_default(&dflt);
  if (!opt) opt = &dflt;
  xd_task *t = xd_calloc(1, sizeof *t);
  load_ctx c = {path, fewshot_path, opt, {{0}}, " ", "\n\n", ""};
  xd_rng_seed(&c.rng, opt->seed);
  t->source = xd_strdup(path);
  if (load_format(t, format, &c, NULL, NULL, e)) {
    xd_task_free(t);
    return -1;
  }
  if (name) {
    free(t->name);
    t->name = xd_strdup(name);
  } else if (!t->name) {
    /* file name without directory and extensions */
    const char *base = strrchr(path, '/');
    base = base && base[1] ? base + 1 : path;
    t->name = xd_strdup(base);
    char *dot = strchr(t->name, '.');
    if (dot && dot != t->name) *dot = 0;
  }
  if (t->n_docs == 0) {
    xd_errf(e, "%s: no documents", path);
    xd_task_free(t);
    return -1;
  }
  *out = t;
  return 0;
}

int xd_task_load_spec(xd_task **out, const char *spec, const xd_task_options *opt, xd_err *e) {
  *out = NULL;
  size_t n = strlen(spec);
  if (n > 5 && !strcmp(spec + n - 5, ".json") && !strchr(spec, ':')) return xd_task_load(out, "def", spec, NULL, NULL, opt, e);
  char *s = xd_strdup(spec), *name = NULL, *rest = s;
  char *eq = strchr(s, '='), *colon = strchr(s, ':');
  if (eq && colon && eq < colon) {
    *eq = 0;
    name = s;
    rest = eq + 1;
    int ok = *name != 0;
    for (const char *p = name; *p; p++) ok &= isalnum((unsigned char)*p) || *p == '_' || *p == '.' || *p == '-';
    if (!ok) {
      free(s);
      return xd_errf(e, "task spec '%s': name must be letters, digits, '_', '.', '-'", spec);
    }
  }
  colon = strchr(rest, ':');
  if (!colon || colon == rest || !colon[1]) {
    free(s);
    return xd_errf(e, "task spec '%s': expected [NAME=]FORMAT:PATH[,FEWSHOT_PATH] or FILE.json", spec);
  }
  *colon = 0;
  char *path = colon + 1, *fs = strchr(path, ',');
  if (fs) *fs++ = 0;
  int rc = xd_task_load(out, rest, path, fs && *fs ? fs : NULL, name, opt, e);
  free(s);
  return rc;
}
