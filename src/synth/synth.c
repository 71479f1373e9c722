/* Synthetic task domains (see synth.h and docs/synth.md). Every example is a pure function of
 * the RNG state, every split a pure function of (seed, options), so the output is
 * byte-identical across runs and machines (integer draws only; no floating point in text). */
#include "synth/synth.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static const char *const domain_names[XD_SYNTH_NDOMAINS] = {"arith", "recall", "reverse", "facts"};

const char *xd_synth_domain_name(int domain) {
  return domain >= 0 && domain < XD_SYNTH_NDOMAINS ? domain_names[domain] : NULL;
}

int xd_synth_domain_id(const char *name) {
  for (int d = 0; d < XD_SYNTH_NDOMAINS; d++)
    if (!strcmp(name, domain_names[d])) return d;
  return -1;
}

void xd_synth_opts_default(xd_synth_opts *o) {
  o->seed = 1234;
  o->n_train = 4000;
  o->n_eval = 200;
  o->recall_gap = 96;
  o->domain_mask = (1u << XD_SYNTH_NDOMAINS) - 1;
}

int xd_synth_parse_domains(const char *list, unsigned *mask, xd_err *e) {
  *mask = 0;
  if (!strcmp(list, "all")) { *mask = (1u << XD_SYNTH_NDOMAINS) - 1; return 0; }
  const char *p = list;
  for (;;) {
    const char *c = strchr(p, ',');
    size_t n = c ? (size_t)(c - p) : strlen(p);
    char name[32];
    if (n == 0 || n >= sizeof name)
      return xd_errf(e, "--domains '%s': empty or overlong domain name (known: arith, recall, reverse, facts)", list);
    memcpy(name, p, n);
    name[n] = 0;
    int d = xd_synth_domain_id(name);
    if (d < 0) return xd_errf(e, "--domains '%s': unknown domain '%s' (known: arith, recall, reverse, facts)", list, name);
    *mask |= 1u << d;
    if (!c) break;
    p = c + 1;
  }
  return 0;
}

void xd_synth_example_free(xd_synth_example *x) {
  free(x->prompt);
  free(x->answer);
  x->prompt = x->answer = NULL;
}

/* ---- a small growable string -------------------------------------------- */
typedef struct {
  char *s;
  size_t len, cap;
} sbuf;

static void sb_putn(sbuf *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (b->len + n + 1 > cap) cap *= 2;
    b->s = xd_realloc(b->s, cap);
    b->cap = cap;
  }
  memcpy(b->s + b->len, s, n);
  b->len += n;
  b->s[b->len] = 0;
}
static void sb_puts(sbuf *b, const char *s) { sb_putn(b, s, strlen(s)); }
static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf *b, const char *fmt, ...) {
  char tmp[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  XD_CHECK(n >= 0 && (size_t)n < sizeof tmp);
  sb_putn(b, tmp, (size_t)n);
}
static char *sb_take(sbuf *b) {
  if (!b->s) sb_putn(b, "", 0);
  char *s = b->s;
  b->s = NULL;
  b->len = b->cap = 0;
  return s;
}

/* Uniform integer in [0, n) without modulo bias (rejection on the top of the range). */
static uint64_t rng_below(xd_rng *r, uint64_t n) {
  XD_CHECK(n > 0);
  uint64_t lim = UINT64_MAX - UINT64_MAX % n;
  uint64_t x;
  do x = xd_rng_u64(r); while (x >= lim);
  return x % n;
}
static int rng_range(xd_rng *r, int lo, int hi) { /* inclusive */
  return lo + (int)rng_below(r, (uint64_t)(hi - lo + 1));
}
/* k distinct indices from [0, n) in random order (partial Fisher-Yates on an index table). */
static void rng_distinct(xd_rng *r, int n, int k, int *out) {
  int idx[64];
  XD_CHECK(n <= 64 && k <= n);
  for (int i = 0; i < n; i++) idx[i] = i;
  for (int i = 0; i < k; i++) {
    int j = i + (int)rng_below(r, (uint64_t)(n - i));
    int t = idx[i]; idx[i] = idx[j]; idx[j] = t;
    out[i] = idx[i];
  }
}

#define NELEM(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* ---- closed vocabularies ------------------------------------------------------ */
/* Filler syllables for the recall domain: short, frequent, so each is one BPE token, and
 * disjoint from keys and values so the filler never looks like a binding. */
static const char *const filler_words[] = {"la", "mi", "do", "re", "so", "fa", "ti", "ko",
                                           "nu", "pe", "zo", "ba", "ge", "wu", "xi", "yo"};
static const char *const recall_keys[] = {"ruby", "jade", "onyx", "opal", "pearl", "amber", "coral", "topaz",
                                          "agate", "beryl", "flint", "slate", "quartz", "mica", "jet", "zircon",
                                          "iron", "gold", "tin", "zinc", "lead", "copper", "silver", "cobalt"};
static const char *const recall_values[] = {"owl", "fox", "elk", "bee", "cat", "dog", "yak", "ant",
                                            "bat", "cow", "hen", "pig", "rat", "ram", "eel", "emu",
                                            "ape", "doe", "gnu", "koi", "jay", "asp", "boa", "cod"};
static const char *const fact_names[] = {"Nora", "Sam", "Ivan", "Lena", "Omar", "Rita", "Paul", "Mia",
                                         "Hugo", "Ella", "Karl", "Zoe", "Finn", "Ada", "Leo", "Ines"};
static const char *const fact_cities[] = {"Paris", "Lima", "Oslo", "Rome", "Cairo", "Delhi", "Tokyo", "Quito",
                                          "Dakar", "Hanoi", "Perth", "Porto", "Riga", "Bern", "Seoul", "Accra"};
/* All start with a consonant, so the template's article is always "a". */
static const char *const fact_jobs[] = {"baker", "pilot", "nurse", "judge", "miner", "tailor", "farmer", "singer",
                                        "dancer", "driver", "doctor", "painter", "plumber", "teacher", "writer", "lawyer"};

#define RECALL_PAIRS 4
#define RECALL_GAP_JITTER 32 /* gap filler = recall_gap + [0, 32) words */

/* ---- domains ------------------------------------------------------------- */
static void gen_arith(xd_rng *r, sbuf *p, sbuf *a) {
  static const int pow10[] = {1, 10, 100, 1000, 10000};
  const int da = rng_range(r, 2, 4), db = rng_range(r, 2, 4);
  int x = rng_range(r, pow10[da - 1], pow10[da] - 1);
  int y = rng_range(r, pow10[db - 1], pow10[db] - 1);
  const int sub = (int)rng_below(r, 2);
  if (sub && x < y) { int t = x; x = y; y = t; } /* non-negative results only */
  sb_printf(p, "Compute: %d %c %d =", x, sub ? '-' : '+', y);
  sb_printf(a, " %d", sub ? x - y : x + y);
}

static void put_filler(xd_rng *r, sbuf *p, int n) {
  for (int i = 0; i < n; i++) {
    sb_puts(p, " ");
    sb_puts(p, filler_words[rng_below(r, (uint64_t)NELEM(filler_words))]);
  }
}

/* "Log: <4-8 filler>. Keys: k1 is v1, k2 is v2, k3 is v3, k4 is v4. <gap filler>. Question:
 * what is kq? Answer:" -> " vq". The lead filler keeps the bindings out of the first sink
 * tokens; the gap filler (>= recall_gap words, each >= 1 token) puts every binding beyond a
 * sliding window of recall_gap tokens from the question. */
static void gen_recall(xd_rng *r, int gap, sbuf *p, sbuf *a) {
  int ki[RECALL_PAIRS], vi[RECALL_PAIRS];
  rng_distinct(r, NELEM(recall_keys), RECALL_PAIRS, ki);
  rng_distinct(r, NELEM(recall_values), RECALL_PAIRS, vi);
  const int q = (int)rng_below(r, RECALL_PAIRS);
  sb_puts(p, "Log:");
  put_filler(r, p, rng_range(r, 4, 8));
  sb_puts(p, ". Keys:");
  for (int i = 0; i < RECALL_PAIRS; i++)
    sb_printf(p, " %s is %s%s", recall_keys[ki[i]], recall_values[vi[i]], i + 1 < RECALL_PAIRS ? "," : ".");
  put_filler(r, p, gap + (int)rng_below(r, RECALL_GAP_JITTER));
  sb_printf(p, ". Question: what is %s? Answer:", recall_keys[ki[q]]);
  sb_printf(a, " %s", recall_values[vi[q]]);
}

static void gen_reverse(xd_rng *r, sbuf *p, sbuf *a) {
  char s[8];
  const int n = rng_range(r, 3, 6);
  for (int i = 0; i < n; i++) s[i] = (char)('a' + rng_below(r, 26));
  sb_puts(p, "Reverse:");
  for (int i = 0; i < n; i++) sb_printf(p, " %c", s[i]);
  sb_puts(p, ". Answer:");
  for (int i = n - 1; i >= 0; i--) sb_printf(a, " %c", s[i]);
}

static void gen_facts(xd_rng *r, sbuf *p, sbuf *a) {
  int ni[3], ci[3], ji[3];
  const int k = rng_range(r, 2, 3);
  rng_distinct(r, NELEM(fact_names), k, ni);
  rng_distinct(r, NELEM(fact_cities), k, ci);
  rng_distinct(r, NELEM(fact_jobs), k, ji);
  for (int i = 0; i < k; i++)
    sb_printf(p, "%s%s lives in %s and works as a %s.", i ? " " : "", fact_names[ni[i]], fact_cities[ci[i]], fact_jobs[ji[i]]);
  const int who = (int)rng_below(r, (uint64_t)k);
  switch (rng_below(r, 4)) {
  case 0:
    sb_printf(p, " Question: where does %s live? Answer:", fact_names[ni[who]]);
    sb_printf(a, " %s", fact_cities[ci[who]]);
    break;
  case 1:
    sb_printf(p, " Question: what is %s's job? Answer:", fact_names[ni[who]]);
    sb_printf(a, " %s", fact_jobs[ji[who]]);
    break;
  case 2:
    sb_printf(p, " Question: who lives in %s? Answer:", fact_cities[ci[who]]);
    sb_printf(a, " %s", fact_names[ni[who]]);
    break;
  default:
    sb_printf(p, " Question: who works as a %s? Answer:", fact_jobs[ji[who]]);
    sb_printf(a, " %s", fact_names[ni[who]]);
    break;
  }
}

void xd_synth_generate(int domain, xd_rng *r, int recall_gap, xd_synth_example *out) {
  sbuf p = {0}, a = {0};
  switch (domain) {
  case XD_SYNTH_ARITH: gen_arith(r, &p, &a); break;
  case XD_SYNTH_RECALL: gen_recall(r, recall_gap, &p, &a); break;
  case XD_SYNTH_REVERSE: gen_reverse(r, &p, &a); break;
  case XD_SYNTH_FACTS: gen_facts(r, &p, &a); break;
  default: XD_CHECKF(0, "unknown synth domain %d", domain);
  }
  out->domain = domain;
  out->prompt = sb_take(&p);
  out->answer = sb_take(&a);
}

/* ---- scoring --------------------------------------------------------------- */
static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f'; }

/* [*b, *e) = s cut at its first newline and trimmed. */
static void trim_span(const char *s, const char **b, const char **e) {
  const char *nl = strchr(s, '\n');
  const char *end = nl ? nl : s + strlen(s);
  while (s < end && is_space(*s)) s++;
  while (end > s && is_space(end[-1])) end--;
  *b = s;
  *e = end;
}

int xd_synth_exact_match(const char *generated, const char *answer) {
  const char *gb, *ge, *ab, *ae;
  trim_span(generated, &gb, &ge);
  trim_span(answer, &ab, &ae);
  return ge - gb == ae - ab && !memcmp(gb, ab, (size_t)(ge - gb));
}

/* ---- a set of prompts (open addressing, FNV-1a), for uniqueness and disjointness ---- */
typedef struct {
  const char **slot; /* borrowed strings */
  size_t cap;        /* power of two */
} strset;

static uint64_t fnv1a(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
  return h;
}
static void strset_init(strset *t, size_t n) {
  t->cap = 16;
  while (t->cap < 2 * n + 16) t->cap *= 2;
  t->slot = xd_calloc(t->cap, sizeof *t->slot);
}
static void strset_free(strset *t) { free(t->slot); }
static int strset_has(const strset *t, const char *s) {
  for (size_t i = fnv1a(s) & (t->cap - 1);; i = (i + 1) & (t->cap - 1)) {
    if (!t->slot[i]) return 0;
    if (!strcmp(t->slot[i], s)) return 1;
  }
}
static void strset_add(strset *t, const char *s) { /* caller ensures not present and load < 1/2 */
  size_t i = fnv1a(s) & (t->cap - 1);
  while (t->slot[i]) i = (i + 1) & (t->cap - 1);
  t->slot[i] = s;
}

/* ---- writing ------------------------------------------------------------------ */
static void put_jsonl(sbuf *out, const xd_synth_example *x) {
  cJSON *o = cJSON_CreateObject();
  XD_CHECK(o);
  sbuf text = {0};
  sb_puts(&text, x->prompt);
  sb_puts(&text, x->answer);
  XD_CHECK(cJSON_AddStringToObject(o, "domain", xd_synth_domain_name(x->domain)));
  XD_CHECK(cJSON_AddStringToObject(o, "prompt", x->prompt));
  XD_CHECK(cJSON_AddStringToObject(o, "answer", x->answer));
  XD_CHECK(cJSON_AddStringToObject(o, "text", text.s));
  char *s = cJSON_PrintUnformatted(o);
  XD_CHECK(s);
  sb_puts(out, s);
  sb_puts(out, "\n");
  cJSON_free(s);
  cJSON_Delete(o);
  free(text.s);
}

static int write_split(const char *dir, const char *domain, const char *split, const xd_synth_example *xs, int n, xd_err *e) {
  sbuf out = {0};
  for (int i = 0; i < n; i++) put_jsonl(&out, &xs[i]);
  char name[64];
  snprintf(name, sizeof name, "%s.jsonl", split);
  char *sub = xd_path_join(dir, domain);
  char *path = xd_path_join(sub, name);
  int rc = xd_mkdir_p(sub, e);
  if (rc == 0) rc = xd_write_file_atomic(path, out.s ? out.s : "", out.len, e);
  free(sub);
  free(path);
  free(out.s);
  return rc;
}

static void free_examples(xd_synth_example *xs, int n) {
  if (!xs) return;
  for (int i = 0; i < n; i++) xd_synth_example_free(&xs[i]);
  free(xs);
}

/* Draw the eval split (unique prompts) and then the train split (prompts not in eval). */
static int synth_domain(const char *dir, int d, uint64_t dseed, const xd_synth_opts *o, xd_err *e) {
  xd_rng r;
  xd_rng_seed(&r, dseed);
  const char *name = xd_synth_domain_name(d);
  xd_synth_example *ev = xd_calloc((size_t)o->n_eval + 1, sizeof *ev);
  xd_synth_example *tr = xd_calloc((size_t)o->n_train + 1, sizeof *tr);
  strset seen;
  strset_init(&seen, (size_t)o->n_eval);
  int rc = -1, n_ev = 0, n_tr = 0;
  /* A bounded number of redraws: a domain whose prompt space is too small for the requested
   * eval size fails with a message instead of looping. */
  long budget = 1000 + 50L * o->n_eval;
  while (n_ev < o->n_eval) {
    if (budget-- <= 0) {
      xd_errf(e, "%s: domain %s: could not draw %d distinct eval prompts (got %d); ask for fewer with --eval", dir, name, o->n_eval, n_ev);
      goto done;
    }
    xd_synth_generate(d, &r, o->recall_gap, &ev[n_ev]);
    if (strset_has(&seen, ev[n_ev].prompt)) { xd_synth_example_free(&ev[n_ev]); continue; }
    strset_add(&seen, ev[n_ev].prompt);
    n_ev++;
  }
  budget = 1000 + 50L * o->n_train;
  while (n_tr < o->n_train) {
    if (budget-- <= 0) {
      xd_errf(e, "%s: domain %s: could not draw %d train prompts outside the eval split", dir, name, o->n_train);
      goto done;
    }
    xd_synth_generate(d, &r, o->recall_gap, &tr[n_tr]);
    if (strset_has(&seen, tr[n_tr].prompt)) { xd_synth_example_free(&tr[n_tr]); continue; }
    n_tr++;
  }
  if (write_split(dir, name, "train", tr, n_tr, e) || write_split(dir, name, "eval", ev, n_ev, e)) goto done;
  rc = 0;
done:
  strset_free(&seen);
  free_examples(ev, n_ev);
  free_examples(tr, n_tr);
  return rc;
}

int xd_synth_write(const char *dir, const xd_synth_opts *o, xd_err *e) {
  enum { MAX_N = 10000000, MAX_GAP = 1000 };
  if (o->n_train < 0 || o->n_train > MAX_N) return xd_errf(e, "--train %d: must be in [0, %d]", o->n_train, MAX_N);
  if (o->n_eval < 0 || o->n_eval > MAX_N) return xd_errf(e, "--eval %d: must be in [0, %d]", o->n_eval, MAX_N);
  if (o->recall_gap < 1 || o->recall_gap > MAX_GAP) return xd_errf(e, "--recall-gap %d: must be in [1, %d]", o->recall_gap, MAX_GAP);
  const unsigned all = (1u << XD_SYNTH_NDOMAINS) - 1;
  if (o->domain_mask == 0 || (o->domain_mask & ~all)) return xd_errf(e, "no valid domain selected");
  if (xd_mkdir_p(dir, e)) return -1;
  /* Per-domain seeds are drawn from the run seed in a fixed order, so a domain's data does
   * not depend on which other domains are selected. */
  xd_rng master;
  xd_rng_seed(&master, o->seed);
  uint64_t dseed[XD_SYNTH_NDOMAINS];
  for (int d = 0; d < XD_SYNTH_NDOMAINS; d++) dseed[d] = xd_rng_u64(&master);
  sbuf man = {0};
  sb_printf(&man, "{\"generator\": \"xdistill synth\", \"format\": 1, \"seed\": %llu, \"train\": %d, \"eval\": %d, \"recall_gap\": %d, \"domains\": [",
            (unsigned long long)o->seed, o->n_train, o->n_eval, o->recall_gap);
  int first = 1;
  for (int d = 0; d < XD_SYNTH_NDOMAINS; d++) {
    if (!(o->domain_mask & (1u << d))) continue;
    if (synth_domain(dir, d, dseed[d], o, e)) { free(man.s); return -1; }
    sb_printf(&man, "%s\"%s\"", first ? "" : ", ", xd_synth_domain_name(d));
    first = 0;
  }
  sb_puts(&man, "]}\n");
  char *path = xd_path_join(dir, "manifest.json");
  int rc = xd_write_file_atomic(path, man.s, man.len, e);
  free(path);
  free(man.s);
  return rc;
}
