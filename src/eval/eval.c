/* Evaluator over the xd_lm interface, and the results JSON. */
#include "eval/eval.h"

#include <cjson/cJSON.h>
#include "eval/strbuf.h"
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- metrics ------------------------------------------------------------------- */
static void add_metric(xd_task_result *r, const char *name, double v, int higher_is_better) {
  XD_CHECK(r->n_metrics < XD_EVAL_MAX_METRICS);
  xd_metric *m = &r->metrics[r->n_metrics++];
  snprintf(m->name, sizeof m->name, "%s", name);
  m->value = v;
  m->higher_is_better = higher_is_better;
}

const xd_metric *xd_task_result_metric(const xd_task_result *r, const char *name) {
  for (int i = 0; i < r->n_metrics; i++)
    if (!strcmp(r->metrics[i].name, name)) return &r->metrics[i];
  return NULL;
}

void xd_task_result_free(xd_task_result *r) {
  free(r->task);
  free(r->kind);
  free(r->items);
  memset(r, 0, sizeof *r);
}

/* ---- progress ------------------------------------------------------------------ */
typedef struct {
  FILE *fp;
  const char *task;
  size_t total;
  double t0, last;
} progress;

static void progress_tick(progress *p, size_t done, int final) {
  if (!p->fp) return;
  double now = xd_now();
  if (!final && now - p->last < 0.5) return;
  p->last = now;
  double el = now - p->t0;
  fprintf(p->fp, "\r%s: %zu/%zu docs  %.1f docs/s  %.0fs", p->task, done, p->total, el > 0 ? (double)done / el : 0.0, el);
  if (final) fputc('\n', p->fp);
  fflush(p->fp);
}

/* ---- tokenization (lm-eval _encode_pair) ----------------------------------------- */
typedef struct {
  int32_t *ctx, *cont;
  size_t n_ctx, n_cont;
} enc_pair;

static int encode_pair(const xd_lm *lm, const char *context, const char *continuation, enc_pair *p, xd_err *e) {
  memset(p, 0, sizeof *p);
  size_t nc = strlen(context), ns = 0;
  while (ns < nc && isspace((unsigned char)context[nc - 1 - ns])) ns++;
  size_t clen = nc - ns, tlen = strlen(continuation);
  /* whole text = context (without trailing spaces) + moved spaces + continuation = the same bytes */
  char *whole = xd_malloc(nc + tlen + 1);
  memcpy(whole, context, nc);
  memcpy(whole + nc, continuation, tlen + 1);
  int32_t *w = NULL, *cx = NULL;
  size_t nw = 0, ncx = 0;
  int rc = 0;
  if (clen == 0) {
    cx = xd_malloc(sizeof *cx);
    cx[0] = lm->prefix_id;
    ncx = 1;
    rc = lm->encode(lm->ctx, whole, nc + tlen, &w, &nw, e);
    if (!rc) { p->cont = w; p->n_cont = nw; w = NULL; }
  } else {
    rc = lm->encode(lm->ctx, whole, nc + tlen, &w, &nw, e);
    if (!rc) rc = lm->encode(lm->ctx, context, clen, &cx, &ncx, e);
    if (!rc) {
      if (nw > ncx) {
        p->n_cont = nw - ncx;
        p->cont = xd_malloc(p->n_cont * sizeof *p->cont);
        memcpy(p->cont, w + ncx, p->n_cont * sizeof *p->cont);
      } else { /* the tokenizer merged across the boundary: score the continuation alone */
        rc = lm->encode(lm->ctx, whole + clen, nc + tlen - clen, &p->cont, &p->n_cont, e);
      }
    }
  }
  free(w);
  free(whole);
  if (!rc && p->n_cont == 0) rc = xd_errf(e, "continuation encodes to no tokens");
  if (!rc && ncx == 0) { /* context of only spaces that encode to nothing */
    free(cx);
    cx = xd_malloc(sizeof *cx);
    cx[0] = lm->prefix_id;
    ncx = 1;
  }
  p->ctx = cx;
  p->n_ctx = ncx;
  if (rc) { free(p->ctx); free(p->cont); memset(p, 0, sizeof *p); }
  return rc;
}

static void enc_pair_free(enc_pair *p) {
  free(p->ctx);
  free(p->cont);
}

/* The request the model sees: contexts cut from the left so context + continuation fits in
 * max_length + 1 tokens (the last token is only predicted, never input). */
static int make_request(const xd_lm *lm, const enc_pair *p, xd_ll_request *r, xd_err *e) {
  if (p->n_cont > lm->max_length) return xd_errf(e, "continuation of %zu tokens exceeds the model's %zu", p->n_cont, lm->max_length);
  size_t keep = lm->max_length + 1 - p->n_cont;
  if (keep > p->n_ctx) keep = p->n_ctx;
  r->context = p->ctx + (p->n_ctx - keep);
  r->n_context = keep;
  r->continuation = p->cont;
  r->n_continuation = p->n_cont;
  return 0;
}

static int lm_check(const xd_lm *lm, int need_gen, xd_err *e) {
  if (!lm->encode || !lm->loglikelihood) return xd_errf(e, "model '%s' lacks encode/loglikelihood callbacks", lm->name ? lm->name : "?");
  if (need_gen && !lm->generate_until) return xd_errf(e, "model '%s' cannot generate (no generate_until)", lm->name ? lm->name : "?");
  if (lm->max_length < 2 || lm->prefix_id < 0) return xd_errf(e, "model '%s': max_length must be >= 2 and prefix_id >= 0", lm->name ? lm->name : "?");
  return 0;
}

/* ---- multiple choice and loglikelihood tasks ------------------------------------ */
/* Docs are processed in groups whose requests fill a batch: encode, score, free. */
static int run_loglik(const xd_task *t, const xd_lm *lm, size_t bs, progress *pg, xd_task_result *res, int keep, xd_err *e) {
  const int mc = t->kind == XD_TASK_MULTIPLE_CHOICE;
  double acc = 0, acc_norm = 0, ll_sum = 0, greedy = 0;
  size_t cap_req = bs + 1024;
  xd_ll_request *reqs = xd_malloc(cap_req * sizeof *reqs);
  xd_ll_result *outs = xd_malloc(cap_req * sizeof *outs);
  enc_pair *pairs = xd_malloc(cap_req * sizeof *pairs);
  int rc = 0;
  size_t d0 = 0;
  while (d0 < t->n_docs && !rc) {
    size_t d1 = d0, nr = 0;
    while (d1 < t->n_docs && (nr == 0 || nr + (size_t)t->docs[d1].n_choices <= bs)) {
      size_t need = nr + (size_t)t->docs[d1].n_choices;
      if (need > cap_req) {
        cap_req = need * 2;
        reqs = xd_realloc(reqs, cap_req * sizeof *reqs);
        outs = xd_realloc(outs, cap_req * sizeof *outs);
        pairs = xd_realloc(pairs, cap_req * sizeof *pairs);
      }
      const xd_task_doc *d = &t->docs[d1];
      for (int j = 0; j < d->n_choices && !rc; j++) {
        const char *cx = d->choice_contexts ? d->choice_contexts[j] : d->context;
        rc = encode_pair(lm, cx, d->continuations[j], &pairs[nr], e);
        if (!rc) {
          rc = make_request(lm, &pairs[nr], &reqs[nr], e);
          nr++;
        }
      }
      if (rc) { xd_err_prefix(e, "%s doc %zu", t->name, d1); break; }
      d1++;
    }
    if (!rc) {
      memset(outs, 0, nr * sizeof *outs);
      rc = lm->loglikelihood(lm->ctx, reqs, nr, outs, e);
      if (rc) xd_err_prefix(e, "%s docs %zu-%zu", t->name, d0, d1 ? d1 - 1 : 0);
    }
    for (size_t i = 0, k = 0; !rc && i < d1 - d0; i++) {
      const xd_task_doc *d = &t->docs[d0 + i];
      double score = 0;
      if (mc) {
        /* argmax, first index on ties (numpy argmax) */
        int best = 0, best_n = 0;
        double bv = -INFINITY, bn = -INFINITY;
        for (int j = 0; j < d->n_choices; j++) {
          double ll = outs[k + (size_t)j].logprob;
          size_t len = strlen(d->continuations[j]);
          size_t dl = t->target_delim_len < len ? t->target_delim_len : 0;
          double nl = ll / (double)(len - dl > 0 ? len - dl : 1);
          if (ll > bv) { bv = ll; best = j; }
          if (nl > bn) { bn = nl; best_n = j; }
        }
        acc += best == d->gold;
        acc_norm += best_n == d->gold;
        if (keep) score = !strcmp(t->primary, "acc_norm") ? (best_n == d->gold) : (best == d->gold);
      } else {
        ll_sum += outs[k].logprob;
        greedy += outs[k].is_greedy != 0;
        score = outs[k].is_greedy != 0;
      }
      if (keep) res->items[d0 + i] = score;
      k += (size_t)d->n_choices;
    }
    for (size_t i = 0; i < nr; i++) enc_pair_free(&pairs[i]);
    d0 = d1;
    progress_tick(pg, d0, 0);
  }
  free(reqs);
  free(outs);
  free(pairs);
  if (rc) return -1;
  double n = (double)t->n_docs;
  if (mc) {
    add_metric(res, "acc", acc / n, 1);
    add_metric(res, "acc_norm", acc_norm / n, 1);
  } else {
    add_metric(res, "acc", greedy / n, 1);
    add_metric(res, "perplexity", exp(-ll_sum / n), 0);
  }
  return 0;
}

/* ---- generation tasks -------------------------------------------------------------- */
static void ascii_lower(char *s) {
  for (; *s; s++) *s = (char)tolower((unsigned char)*s);
}

/* Score doc i's generation (out, freed here): exact match of the extracted answer. */
static void score_generation(const xd_task *t, size_t i, char *out, int keep, xd_task_result *res, double *em,
                             double *em_strict) {
  /* cut at the first stop string, whether or not the model already did */
  for (size_t s = 0; s < t->n_until; s++) {
    char *hit = t->until[s][0] ? strstr(out, t->until[s]) : NULL;
    if (hit) *hit = 0;
  }
  int strict = 0;
  char *got = xd_extract_answer(out, t->extract, &strict);
  char *want = xd_strdup(t->docs[i].answer);
  if (t->ignore_case) { ascii_lower(got); ascii_lower(want); }
  const int hit = !strcmp(got, want);
  *em += hit;
  *em_strict += hit && strict;
  if (keep) res->items[i] = hit;
  free(got);
  free(want);
  free(out);
}

/* Docs [i0, i0 + n): encoded and cut from the left to leave max_new tokens of context, generated
 * (one generate_until_batch call, or generate_until per doc), scored in order. */
static int generate_group(const xd_task *t, const xd_lm *lm, size_t i0, size_t n, size_t max_new, progress *pg,
                          xd_task_result *res, int keep, double *em, double *em_strict, xd_err *e) {
  int32_t **ids = xd_calloc(n, sizeof *ids);
  const int32_t **pr = xd_calloc(n, sizeof *pr);
  size_t *np = xd_calloc(n, sizeof *np);
  char **outs = xd_calloc(n, sizeof *outs);
  int rc = 0;
  for (size_t k = 0; k < n && !rc; k++) {
    const xd_task_doc *d = &t->docs[i0 + k];
    size_t len;
    if (lm->encode(lm->ctx, d->prompt, strlen(d->prompt), &ids[k], &len, e)) {
      xd_err_prefix(e, "%s doc %zu", t->name, i0 + k);
      rc = -1;
      break;
    }
    const size_t room = lm->max_length - max_new, off = len > room ? len - room : 0;
    pr[k] = ids[k] + off, np[k] = len - off;
  }
  const char *const *until = (const char *const *)t->until;
  if (!rc && lm->generate_until_batch) {
    if (lm->generate_until_batch(lm->ctx, pr, np, n, until, t->n_until, (int)max_new, outs, e)) {
      xd_err_prefix(e, "%s docs %zu-%zu", t->name, i0, i0 + n - 1);
      rc = -1;
    }
  } else {
    for (size_t k = 0; k < n && !rc; k++)
      if (lm->generate_until(lm->ctx, pr[k], np[k], until, t->n_until, (int)max_new, &outs[k], e)) {
        xd_err_prefix(e, "%s doc %zu", t->name, i0 + k);
        rc = -1;
      }
  }
  for (size_t k = 0; k < n; k++) {
    if (!rc) {
      score_generation(t, i0 + k, outs[k], keep, res, em, em_strict);
      progress_tick(pg, i0 + k + 1, 0);
    } else {
      free(outs[k]);
    }
    free(ids[k]);
  }
  free(ids), free(pr), free(np), free(outs);
  return rc;
}

static int run_generate(const xd_task *t, const xd_lm *lm, size_t bs, progress *pg, xd_task_result *res, int keep,
                        xd_err *e) {
  double em = 0, em_strict = 0;
  /* a small model (demo context lengths) keeps at least half its context for the prompt */
  size_t max_new = (size_t)t->max_new_tokens;
  if (max_new > lm->max_length / 2) max_new = lm->max_length / 2;
  /* up to batch_size docs decoded together where the model can, else one at a time */
  const size_t group = lm->generate_until_batch && bs > 1 ? bs : 1;
  for (size_t i = 0; i < t->n_docs; i += group) {
    const size_t n = t->n_docs - i < group ? t->n_docs - i : group;
    if (generate_group(t, lm, i, n, max_new, pg, res, keep, &em, &em_strict, e)) return -1;
  }
  add_metric(res, "exact_match", em / (double)t->n_docs, 1);
  if (t->extract == XD_EXTRACT_GSM8K) add_metric(res, "exact_match_strict", em_strict / (double)t->n_docs, 1);
  return 0;
}

/* ---- perplexity -------------------------------------------------------------------- */
/* Rolling windows as lm-eval's get_rolling_token_windows(context_len=1): the first window is
 * [prefix] -> tokens[0:L]; each next window predicts the next up-to-L tokens, its context the
 * max_length + 1 - pred tokens before them, so every token is scored exactly once. */
static size_t count_words(const char *s) {
  size_t w = 1; /* len(re.split(r"\s+", s)) */
  for (const char *p = s; *p;) {
    if (isspace((unsigned char)*p)) {
      w++;
      while (*p && isspace((unsigned char)*p)) p++;
    } else p++;
  }
  return w;
}

static int run_perplexity(const xd_task *t, const xd_lm *lm, progress *pg, xd_task_result *res, int keep, xd_err *e) {
  double ll = 0;
  size_t words = 0, bytes = 0, tokens = 0;
  const size_t L = lm->max_length;
  for (size_t i = 0; i < t->n_docs; i++) {
    const char *text = t->docs[i].prompt;
    int32_t *ids;
    size_t n;
    if (lm->encode(lm->ctx, text, strlen(text), &ids, &n, e)) return xd_err_prefix(e, "%s doc %zu", t->name, i);
    double dll = 0;
    for (size_t start = 0; start < n;) {
      size_t end = start + L < n ? start + L : n;
      xd_ll_request r;
      xd_ll_result o = {0, 0};
      int32_t prefix = lm->prefix_id;
      if (start == 0) {
        r.context = &prefix;
        r.n_context = 1;
      } else {
        size_t cs = end > L + 1 ? end - L - 1 : 0;
        r.context = ids + cs;
        r.n_context = start - cs;
      }
      r.continuation = ids + start;
      r.n_continuation = end - start;
      if (lm->loglikelihood(lm->ctx, &r, 1, &o, e)) { free(ids); return xd_err_prefix(e, "%s doc %zu", t->name, i); }
      dll += o.logprob;
      start = end;
    }
    free(ids);
    ll += dll;
    tokens += n;
    words += count_words(text);
    size_t nb = strlen(text);
    bytes += nb;
    if (keep) res->items[i] = nb ? -dll / ((double)nb * log(2.0)) : 0;
    progress_tick(pg, i + 1, 0);
  }
  add_metric(res, "bits_per_byte", -ll / ((double)bytes * log(2.0)), 0);
  add_metric(res, "byte_perplexity", exp(-ll / (double)bytes), 0);
  add_metric(res, "word_perplexity", exp(-ll / (double)words), 0);
  add_metric(res, "token_perplexity", tokens ? exp(-ll / (double)tokens) : 0, 0);
  return 0;
}

int xd_eval_run(const xd_task *task, const xd_lm *lm, const xd_eval_options *opt, xd_task_result *res, xd_err *e) {
  memset(res, 0, sizeof *res);
  xd_eval_options dflt = {0, NULL, 0};
  if (!opt) opt = &dflt;
  if (lm_check(lm, task->kind == XD_TASK_GENERATE, e)) return -1;
  size_t bs = opt->batch_size ? opt->batch_size : (lm->batch_size ? lm->batch_size : 1);
  res->task = xd_strdup(task->name);
  res->kind = xd_strdup(xd_task_kind_name(task->kind));
  res->n = task->n_docs;
  res->num_fewshot = task->num_fewshot;
  snprintf(res->primary, sizeof res->primary, "%s", task->primary);
  if (opt->keep_items) res->items = xd_calloc(task->n_docs, sizeof *res->items);
  progress pg = {opt->progress, task->name, task->n_docs, xd_now(), 0};
  int rc;
  switch (task->kind) {
    case XD_TASK_MULTIPLE_CHOICE:
    case XD_TASK_LOGLIKELIHOOD: rc = run_loglik(task, lm, bs, &pg, res, opt->keep_items, e); break;
    case XD_TASK_GENERATE: rc = run_generate(task, lm, bs, &pg, res, opt->keep_items, e); break;
    default: rc = run_perplexity(task, lm, &pg, res, opt->keep_items, e); break;
  }
  if (rc) { xd_task_result_free(res); return -1; }
  progress_tick(&pg, task->n_docs, 1);
  res->seconds = xd_now() - pg.t0;
  if (!xd_task_result_metric(res, res->primary)) {
    xd_errf(e, "%s: primary metric '%s' is not one this task computes", task->name, res->primary);
    xd_task_result_free(res);
    return -1;
  }
  return 0;
}

/* ---- results JSON ------------------------------------------------------------------ */
int xd_results_write(const xd_results *r, const char *path, xd_err *e) {
  cJSON *root = cJSON_CreateObject();
  cJSON_AddStringToObject(root, "format", "xdistill-eval-results");
  cJSON_AddNumberToObject(root, "version", 1);
  cJSON_AddStringToObject(root, "model", r->model ? r->model : "");
  if (r->role) cJSON_AddStringToObject(root, "role", r->role);
  cJSON_AddNumberToObject(root, "seed", (double)r->seed);
  cJSON_AddNumberToObject(root, "limit", (double)r->limit);
  cJSON *tasks = cJSON_AddArrayToObject(root, "tasks");
  for (size_t i = 0; i < r->n_tasks; i++) {
    const xd_task_result *t = &r->tasks[i];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "task", t->task);
    cJSON_AddStringToObject(o, "kind", t->kind ? t->kind : "");
    cJSON_AddNumberToObject(o, "n", (double)t->n);
    cJSON_AddNumberToObject(o, "num_fewshot", t->num_fewshot);
    cJSON_AddStringToObject(o, "primary", t->primary);
    cJSON *m = cJSON_AddObjectToObject(o, "metrics"), *h = cJSON_AddObjectToObject(o, "higher_is_better");
    for (int j = 0; j < t->n_metrics; j++) {
      cJSON_AddNumberToObject(m, t->metrics[j].name, t->metrics[j].value);
      cJSON_AddBoolToObject(h, t->metrics[j].name, t->metrics[j].higher_is_better);
    }
    cJSON_AddNumberToObject(o, "seconds", t->seconds);
    if (t->items) {
      cJSON *it = cJSON_AddArrayToObject(o, "items");
      for (size_t j = 0; j < t->n; j++) cJSON_AddItemToArray(it, cJSON_CreateNumber(t->items[j]));
    }
    cJSON_AddItemToArray(tasks, o);
  }
  return xd_json_write_file(root, path, e);
}

void xd_results_free(xd_results *r) {
  for (size_t i = 0; i < r->n_tasks; i++) xd_task_result_free(&r->tasks[i]);
  free(r->tasks);
  free(r->model);
  free(r->role);
  memset(r, 0, sizeof *r);
}

static int read_task(const cJSON *o, xd_task_result *t, const char *path, size_t idx, xd_err *e) {
  const cJSON *name = cJSON_GetObjectItemCaseSensitive(o, "task"), *n = cJSON_GetObjectItemCaseSensitive(o, "n");
  const cJSON *prim = cJSON_GetObjectItemCaseSensitive(o, "primary"), *m = cJSON_GetObjectItemCaseSensitive(o, "metrics");
  const cJSON *h = cJSON_GetObjectItemCaseSensitive(o, "higher_is_better"), *kind = cJSON_GetObjectItemCaseSensitive(o, "kind");
  if (!cJSON_IsString(name) || !*name->valuestring || !cJSON_IsString(prim) || !cJSON_IsObject(m))
    return xd_errf(e, "%s: tasks[%zu] needs \"task\", \"primary\" strings and a \"metrics\" object", path, idx);
  if (strlen(prim->valuestring) >= sizeof t->primary) return xd_errf(e, "%s: tasks[%zu]: primary name too long", path, idx);
  t->task = xd_strdup(name->valuestring);
  t->kind = xd_strdup(cJSON_IsString(kind) ? kind->valuestring : "");
  snprintf(t->primary, sizeof t->primary, "%s", prim->valuestring);
  if (cJSON_IsNumber(n) && n->valuedouble >= 0 && n->valuedouble < 1e15) t->n = (size_t)n->valuedouble;
  const cJSON *it;
  cJSON_ArrayForEach(it, m) {
    if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) || strlen(it->string) >= sizeof t->metrics[0].name)
      return xd_errf(e, "%s: task '%s': metric '%s' must be a finite number with a short name", path, t->task, it->string);
    if (t->n_metrics == XD_EVAL_MAX_METRICS) return xd_errf(e, "%s: task '%s': more than %d metrics", path, t->task, XD_EVAL_MAX_METRICS);
    const cJSON *hb = cJSON_GetObjectItemCaseSensitive(h, it->string);
    add_metric(t, it->string, it->valuedouble, hb ? cJSON_IsTrue(hb) : 1);
  }
  if (!xd_task_result_metric(t, t->primary)) return xd_errf(e, "%s: task '%s': primary metric '%s' not in metrics", path, t->task, t->primary);
  return 0;
}

int xd_results_read(xd_results *r, const char *path, xd_err *e) {
  memset(r, 0, sizeof *r);
  char *buf;
  size_t len;
  if (xd_read_file(path, (size_t)1 << 30, &buf, &len, e)) return -1;
  cJSON *root = cJSON_ParseWithLength(buf, len);
  free(buf);
  const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
  const cJSON *tasks = cJSON_GetObjectItemCaseSensitive(root, "tasks");
  if (!cJSON_IsObject(root) || !cJSON_IsString(fmt) || strcmp(fmt->valuestring, "xdistill-eval-results") || !cJSON_IsArray(tasks)) {
    cJSON_Delete(root);
    return xd_errf(e, "%s: not an xdistill results file (need \"format\": \"xdistill-eval-results\" and a \"tasks\" array)", path);
  }
  const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model"), *role = cJSON_GetObjectItemCaseSensitive(root, "role");
  r->model = xd_strdup(cJSON_IsString(model) ? model->valuestring : "");
  r->role = cJSON_IsString(role) ? xd_strdup(role->valuestring) : NULL;
  size_t n = (size_t)cJSON_GetArraySize(tasks);
  r->tasks = xd_calloc(n ? n : 1, sizeof *r->tasks);
  const cJSON *o;
  int rc = 0;
  cJSON_ArrayForEach(o, tasks) {
    if (!cJSON_IsObject(o)) { rc = xd_errf(e, "%s: tasks[%zu] is not an object", path, r->n_tasks); break; }
    rc = read_task(o, &r->tasks[r->n_tasks], path, r->n_tasks, e);
    r->n_tasks++;
    if (rc) break;
    for (size_t j = 0; j + 1 < r->n_tasks; j++)
      if (!strcmp(r->tasks[j].task, r->tasks[r->n_tasks - 1].task)) { rc = xd_errf(e, "%s: task '%s' appears twice", path, r->tasks[j].task); break; }
    if (rc) break;
  }
  cJSON_Delete(root);
  if (rc) xd_results_free(r);
  return rc;
}
