#include "data/prepare.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <omp.h>
#include <zlib.h>

#include "data/shard.h"

enum { SPLIT_TRAIN = 0, SPLIT_VAL = 1 };
static const char *const split_names[2] = {"train", "val"};

/* .txt documents are encoded in pieces of about TXT_PIECE bytes when the tokenizer is cut-safe
 * (see xd_prepare_cut_safe), else whole up to TXT_PIECE_WHOLE bytes. */
#define TXT_PIECE ((size_t)1 << 20)
#define TXT_PIECE_WHOLE ((size_t)256 << 20)
#define MAX_LINE ((size_t)64 << 20) /* longest .jsonl line accepted */

int xd_data_tokenizer_hash(const char *path, char out[40], xd_err *e) {
  char *json = xd_is_dir(path) ? xd_path_join(path, "tokenizer.json") : xd_strdup(path);
  xd_mmap m;
  int rc = xd_mmap_open(&m, json, e);
  if (rc == 0) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < m.size; i++) h = (h ^ m.data[i]) * 0x100000001b3ull;
    snprintf(out, 40, "fnv1a64:%016llx", (unsigned long long)h);
    xd_mmap_close(&m);
  }
  free(json);
  return rc;
}

/* ---- one split's shard writer: buffers up to cap tokens, then writes a shard ---- */
typedef struct {
  char *file;
  uint64_t tokens, docs;
  uint32_t crc;
} shard_rec;

typedef struct {
  int split;
  const char *dir;
  uint64_t cap, vocab;
  int32_t *tok;  /* [alloc] grows to cap */
  uint8_t *mask; /* [alloc] */
  uint64_t n, alloc;
  uint64_t *offs; /* document piece ends within the buffer, offs[0] = 0 */
  size_t n_docs, offs_cap;
  shard_rec *recs;
  size_t n_recs;
  uint64_t tokens, docs;
} split_writer;

static void sw_init(split_writer *w, int split, const char *dir, uint64_t cap, uint64_t vocab) {
  memset(w, 0, sizeof *w);
  w->split = split;
  w->dir = dir;
  w->cap = cap;
  w->vocab = vocab;
  w->offs_cap = 1024;
  w->offs = xd_malloc(sizeof(uint64_t) * w->offs_cap);
  w->offs[0] = 0;
}

static void sw_push_off(split_writer *w, uint64_t off) {
  if (w->n_docs + 2 > w->offs_cap) {
    w->offs_cap *= 2;
    w->offs = xd_realloc(w->offs, sizeof(uint64_t) * w->offs_cap);
  }
  w->offs[++w->n_docs] = off;
}

static int sw_flush(split_writer *w, xd_err *e) {
  if (w->n == 0) return 0;
  if (w->offs[w->n_docs] < w->n) sw_push_off(w, w->n); /* close the piece of an open document */
  char name[64];
  snprintf(name, sizeof name, "%s-%05zu.xds", split_names[w->split], w->n_recs);
  char *path = xd_path_join(w->dir, name);
  uint32_t crc;
  int rc = xd_shard_write(path, w->tok, w->mask, w->n, w->offs, w->n_docs, w->vocab, &crc, e);
  if (rc == 0) {
    w->recs = xd_realloc(w->recs, sizeof(shard_rec) * (w->n_recs + 1));
    w->recs[w->n_recs++] = (shard_rec){xd_strdup(name), w->n, w->n_docs, crc};
  }
  free(path);
  w->n = 0;
  w->n_docs = 0;
  return rc;
}

/* Append n tokens (mask NULL = all ones) to the open document, writing shards as they fill. */
static int sw_append(split_writer *w, const int32_t *ids, const uint8_t *mask, size_t n, xd_err *e) {
  while (n > 0) {
    if (w->n == w->cap && sw_flush(w, e) != 0) return -1;
    uint64_t k = w->cap - w->n < n ? w->cap - w->n : n;
    if (w->n + k > w->alloc) {
      uint64_t a = w->alloc ? w->alloc : 4096;
      while (a < w->n + k) a *= 2;
      if (a > w->cap) a = w->cap;
      w->tok = xd_realloc(w->tok, sizeof(int32_t) * a);
      w->mask = xd_realloc(w->mask, a);
      w->alloc = a;
    }
    memcpy(w->tok + w->n, ids, sizeof(int32_t) * k);
    if (mask) memcpy(w->mask + w->n, mask, k);
    else memset(w->mask + w->n, 1, k);
    w->n += k;
    w->tokens += k;
    ids += k;
    if (mask) mask += k;
    n -= k;
  }
  return 0;
}

static void sw_end_doc(split_writer *w) {
  if (w->offs[w->n_docs] < w->n) sw_push_off(w, w->n);
  w->docs++;
}

static void sw_remove_files(split_writer *w) {
  for (size_t i = 0; i < w->n_recs; i++) {
    char *p = xd_path_join(w->dir, w->recs[i].file);
    unlink(p);
    free(p);
  }
}

static void sw_free(split_writer *w) {
  for (size_t i = 0; i < w->n_recs; i++) free(w->recs[i].file);
  free(w->recs);
  free(w->tok);
  free(w->mask);
  free(w->offs);
}

/* ---- buffered reading of a (possibly gzip) file ---- */
typedef struct {
  gzFile gz;
  const char *path;
  char *buf;
  size_t cap, len, pos;
  int eof;
} reader;

static int rd_open(reader *r, const char *path, xd_err *e) {
  memset(r, 0, sizeof *r);
  r->path = path;
  r->gz = gzopen(path, "rb"); /* reads plain files transparently */
  if (!r->gz) return xd_errf(e, "%s: cannot open: %s", path, strerror(errno ? errno : ENOMEM));
  gzbuffer(r->gz, 1u << 18);
  r->cap = (size_t)1 << 20;
  r->buf = xd_malloc(r->cap + 1);
  return 0;
}

static void rd_close(reader *r) {
  if (r->gz) gzclose(r->gz);
  free(r->buf);
  memset(r, 0, sizeof *r);
}

/* Keep unread bytes, then read until the buffer holds at least `want` unread bytes or EOF. */
static int rd_fill(reader *r, size_t want, xd_err *e) {
  if (r->pos > 0) {
    memmove(r->buf, r->buf + r->pos, r->len - r->pos);
    r->len -= r->pos;
    r->pos = 0;
  }
  while (!r->eof && r->len < want) {
    if (r->len == r->cap) { /* grow only as far as the data needs */
      r->cap = r->cap * 2 < want ? r->cap * 2 : want;
      r->buf = xd_realloc(r->buf, r->cap + 1);
    }
    size_t room = r->cap - r->len;
    int got = gzread(r->gz, r->buf + r->len, room > (1u << 30) ? (1u << 30) : (unsigned)room);
    if (got < 0) {
      int zerr;
      const char *msg = gzerror(r->gz, &zerr);
      return xd_errf(e, "%s: read error: %s", r->path, zerr == Z_ERRNO ? strerror(errno) : msg);
    }
    if (got == 0) {
      int zerr;
      const char *msg = gzerror(r->gz, &zerr);
      if (zerr != Z_OK && zerr != Z_BUF_ERROR) return xd_errf(e, "%s: read error: %s", r->path, msg);
      if (zerr == Z_BUF_ERROR) return xd_errf(e, "%s: truncated gzip stream", r->path);
      r->eof = 1;
    }
    r->len += (size_t)got;
  }
  r->buf[r->len] = 0;
  return 0;
}

/* Next line without its '\n' (NUL-terminated in place). Returns 1 with a line, 0 at EOF, -1. */
static int rd_line(reader *r, char **line, size_t *n, uint64_t line_no, xd_err *e) {
  for (;;) {
    char *start = r->buf + r->pos, *nl = memchr(start, '\n', r->len - r->pos);
    if (nl || (r->eof && r->len > r->pos)) {
      size_t k = nl ? (size_t)(nl - start) : r->len - r->pos;
      start[k] = 0;
      *line = start;
      *n = k;
      r->pos += k + (nl ? 1 : 0);
      return 1;
    }
    if (r->eof) return 0;
    size_t have = r->len - r->pos;
    if (have >= MAX_LINE) return xd_errf(e, "%s:%llu: line longer than %zu bytes", r->path, (unsigned long long)line_no, MAX_LINE);
    size_t want = have < r->cap / 2 ? r->cap : (have * 2 < MAX_LINE + 1 ? have * 2 : MAX_LINE + 1);
    if (rd_fill(r, want, e) != 0) return -1;
  }
}

/* Where to end a .txt piece of at most `max` bytes starting at p: after a newline that precedes
 * a printable ASCII character (pre-tokenizers never merge across that point), else after the
 * last complete UTF-8 character. */
static size_t txt_cut(const char *p, size_t max) {
  for (size_t i = max; i > 1; i--)
    if (p[i - 1] == '\n' && (unsigned char)p[i] > 0x20 && (unsigned char)p[i] < 0x7f) return i;
  size_t i = max;
  while (i > 1 && ((unsigned char)p[i] & 0xc0) == 0x80) i--;
  return i;
}

/* ---- the run ---- */
typedef struct {
  const xd_prepare_opts *o;
  const xd_prepare_encoder *enc;
  xd_prepare_stats *st;
  split_writer w[2];
  uint64_t doc_index;
  uint64_t bytes_done; /* compressed bytes of finished inputs */
  double t0, last_report;
  struct job *jobs;    /* the batch being queued */
  size_t n_jobs, cap_jobs, batch_bytes;
  int txt_started;     /* the current .txt document has tokens */
  size_t txt_piece;    /* TXT_PIECE or TXT_PIECE_WHOLE */
} prep;

/* Is encoding a text in pieces cut after a newline before a printable ASCII character the same
 * as encoding it whole? True for byte-level BPE with a regex pre-tokenizer (Llama 3, Qwen, OLMo,
 * GPT-2): no pre-token spans such a point. False for SentencePiece-style tokenizers (Llama 2,
 * Mistral) whose normaliser prepends a space marker to every encoded string. Probed, not assumed. */
int xd_prepare_cut_safe(const xd_prepare_encoder *enc) {
  static const char *const probes[][2] = {
      {"Hello world.\n", "The end, 12 times.\n"}, {"  indented line\n\n", "x = (a + b) * 3;\n"}, {"caf\xc3\xa9\n", "'s it?"}};
  int safe = 1;
  for (size_t p = 0; p < sizeof probes / sizeof probes[0] && safe; p++) {
    char whole[128];
    snprintf(whole, sizeof whole, "%s%s", probes[p][0], probes[p][1]);
    int32_t *a = NULL, *b = NULL, *w = NULL;
    size_t na = 0, nb = 0, nw = 0;
    xd_err e;
    safe = enc->encode(enc->ctx, probes[p][0], strlen(probes[p][0]), &a, &na, &e) == 0 &&
           enc->encode(enc->ctx, probes[p][1], strlen(probes[p][1]), &b, &nb, &e) == 0 &&
           enc->encode(enc->ctx, whole, strlen(whole), &w, &nw, &e) == 0 && na + nb == nw && memcmp(a, w, na * 4) == 0 &&
           memcmp(b, w + na, nb * 4) == 0;
    free(a);
    free(b);
    free(w);
  }
  return safe;
}

static int doc_split(const prep *P) {
  if (P->o->val_fraction <= 0) return SPLIT_TRAIN;
  uint64_t x = P->o->seed ^ (P->doc_index * 0x9e3779b97f4a7c15ull);
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  x ^= x >> 31;
  return (double)(x >> 11) * 0x1.0p-53 < P->o->val_fraction ? SPLIT_VAL : SPLIT_TRAIN;
}

static void report(prep *P, gzFile gz, int final) {
  if (!P->o->progress) return;
  /* A terminal gets one line rewritten twice a second; a log gets a line every 10 s. */
  const int tty = isatty(fileno(P->o->progress));
  double now = xd_now();
  if (!final && now - P->last_report < (tty ? 0.5 : 10.0)) return;
  P->last_report = now;
  uint64_t done = P->bytes_done + (gz ? (uint64_t)gzoffset(gz) : 0);
  double el = now - P->t0, mb = (double)done / 1e6, rate = el > 0 ? mb / el : 0;
  uint64_t tok = P->w[0].tokens + P->w[1].tokens;
  fprintf(P->o->progress, "%sdata prepare: %.1f / %.1f MB read, %.2f MB/s, %llu tokens", tty ? "\r" : "", mb, (double)P->st->bytes_total / 1e6, rate,
          (unsigned long long)tok);
  if (!final && rate > 0) fprintf(P->o->progress, ", ETA %.0f s", ((double)P->st->bytes_total / 1e6 - mb) / rate);
  if (final) fprintf(P->o->progress, " (done in %.1f s)\n", el);
  else fprintf(P->o->progress, tty ? "\033[K" : "\n");
  fflush(P->o->progress);
}

/* ---- encoding in parallel batches ----
 * Documents (and .txt pieces) are queued as jobs; a full batch is encoded by OpenMP threads and
 * then appended in input order, so the output does not depend on the thread count. */
enum { JOB_TEXT, JOB_PIECE, JOB_CHAT };
#define BATCH_BYTES ((size_t)16 << 20)
#define BATCH_JOBS 8192

typedef struct job {
  int kind, split;
  int first, last;       /* JOB_PIECE: starts / ends its document */
  char *text;            /* owned copy (JOB_TEXT, JOB_PIECE) */
  size_t len;
  cJSON *obj;            /* JOB_CHAT: owns the strings msgs point to */
  xd_chat_message *msgs;
  int n_msgs;
  const char *path;
  uint64_t line_no;      /* 0 for .txt */
  int32_t *ids;          /* results */
  uint8_t *mask;
  size_t n;
  int rc;
  xd_err err;
} job;

static void job_free(job *j) {
  free(j->text);
  cJSON_Delete(j->obj);
  free(j->msgs);
  free(j->ids);
  free(j->mask);
}

static job *job_push(prep *P) {
  if (P->n_jobs == P->cap_jobs) {
    P->cap_jobs = P->cap_jobs ? P->cap_jobs * 2 : 256;
    P->jobs = xd_realloc(P->jobs, sizeof(job) * P->cap_jobs);
  }
  job *j = &P->jobs[P->n_jobs++];
  memset(j, 0, sizeof *j);
  return j;
}

static int append_ids(prep *P, split_writer *w, const int32_t *ids, const uint8_t *mask, size_t n, int *started, xd_err *e) {
  if (n > 0 && !*started) {
    *started = 1;
    if (P->o->add_bos && P->enc->bos_id >= 0 && sw_append(w, &P->enc->bos_id, NULL, 1, e) != 0) return -1;
  }
  return sw_append(w, ids, mask, n, e);
}
static int end_doc(prep *P, split_writer *w, int started, uint8_t eos_mask, xd_err *e) {
  if (!started) {
    P->st->skipped_empty++;
    return 0;
  }
  if (sw_append(w, &P->enc->eos_id, &eos_mask, 1, e) != 0) return -1;
  sw_end_doc(w);
  return 0;
}

/* Encode every queued job, then append them in order; the first failure (in order) is reported. */
static int run_batch(prep *P, xd_err *e) {
  const xd_prepare_encoder *enc = P->enc;
  const long n_jobs = (long)P->n_jobs;
#pragma omp parallel for schedule(dynamic, 1) num_threads(P->o->threads > 0 ? P->o->threads : omp_get_max_threads())
  for (long i = 0; i < n_jobs; i++) {
    job *j = &P->jobs[i];
    j->err.msg[0] = 0;
    if (j->kind == JOB_CHAT) j->rc = enc->chat(enc->ctx, j->msgs, j->n_msgs, &j->ids, &j->mask, &j->n, &j->err);
    else j->rc = enc->encode(enc->ctx, j->text, j->len, &j->ids, &j->n, &j->err);
  }
  int rc = 0;
  for (size_t i = 0; i < P->n_jobs && rc == 0; i++) {
    job *j = &P->jobs[i];
    split_writer *w = &P->w[j->split];
    if (j->rc != 0) {
      *e = j->err;
      if (j->line_no) rc = xd_err_prefix(e, "%s:%llu", j->path, (unsigned long long)j->line_no);
      else rc = xd_err_prefix(e, "%s", j->path);
    } else if (j->kind == JOB_TEXT) {
      int started = 0;
      rc = append_ids(P, w, j->ids, NULL, j->n, &started, e);
      if (rc == 0) rc = end_doc(P, w, started, 1, e);
    } else if (j->kind == JOB_PIECE) {
      if (j->first) P->txt_started = 0;
      rc = append_ids(P, w, j->ids, NULL, j->n, &P->txt_started, e);
      if (rc == 0 && j->last) rc = end_doc(P, w, P->txt_started, 1, e);
    } else {
      /* The chat template carries its own BOS; the joining EOS is not a loss target. */
      int started = 1;
      rc = sw_append(w, j->ids, j->mask, j->n, e);
      if (rc == 0) rc = end_doc(P, w, started, 0, e);
    }
  }
  for (size_t i = 0; i < P->n_jobs; i++) job_free(&P->jobs[i]);
  P->n_jobs = 0;
  P->batch_bytes = 0;
  return rc;
}

static int maybe_run_batch(prep *P, size_t added, xd_err *e) {
  P->batch_bytes += added;
  if (P->batch_bytes < BATCH_BYTES && P->n_jobs < BATCH_JOBS) return 0;
  return run_batch(P, e);
}

static int run_txt(prep *P, reader *r, xd_err *e) {
  const int split = doc_split(P);
  P->doc_index++;
  int first = 1;
  const size_t piece = P->txt_piece;
  for (;;) {
    if (rd_fill(r, piece + 1, e) != 0) return -1;
    const size_t have = r->len - r->pos;
    const size_t k = have == 0 ? 0 : (r->eof && have <= piece) ? have : txt_cut(r->buf + r->pos, have < piece ? have : piece);
    if (!(r->eof && k == have) && piece == TXT_PIECE_WHOLE && P->o->progress)
      fprintf(P->o->progress, "data prepare: warning: %s is over %zu MB; cut into pieces, which this tokenizer may encode slightly differently\n",
              r->path, TXT_PIECE_WHOLE >> 20);
    job *j = job_push(P);
    j->kind = JOB_PIECE;
    j->split = split;
    j->first = first;
    j->last = r->eof && k == have;
    j->path = r->path;
    j->text = xd_malloc(k + 1);
    memcpy(j->text, r->buf + r->pos, k);
    j->text[k] = 0;
    j->len = k;
    r->pos += k;
    first = 0;
    const int last = j->last;
    if (maybe_run_batch(P, k, e) != 0) return -1;
    report(P, r->gz, 0);
    if (last) return 0;
  }
}

/* Queue one JSON line as a document (or fail with the line number). */
static int queue_json(prep *P, reader *r, char *line, size_t n, uint64_t line_no, xd_err *e) {
  cJSON *obj = cJSON_ParseWithLength(line, n);
  if (!obj || !cJSON_IsObject(obj)) {
    cJSON_Delete(obj);
    return xd_errf(e, "%s:%llu: not a JSON object", r->path, (unsigned long long)line_no);
  }
  const cJSON *text = cJSON_GetObjectItemCaseSensitive(obj, "text"), *msgs = cJSON_GetObjectItemCaseSensitive(obj, "messages");
  if (!cJSON_IsString(text) && !cJSON_IsArray(msgs)) {
    cJSON_Delete(obj);
    return xd_errf(e, "%s:%llu: expected a string \"text\" or an array \"messages\"", r->path, (unsigned long long)line_no);
  }
  const int split = doc_split(P);
  P->doc_index++;
  if (cJSON_IsArray(msgs) && !cJSON_IsString(text) && cJSON_GetArraySize(msgs) == 0) {
    cJSON_Delete(obj);
    P->st->skipped_empty++;
    return 0;
  }
  if (!cJSON_IsString(text) && !P->enc->chat) {
    cJSON_Delete(obj);
    return xd_errf(e, "%s:%llu: \"messages\" given but the tokenizer has no chat template support", r->path, (unsigned long long)line_no);
  }
  job *j = job_push(P);
  j->split = split;
  j->path = r->path;
  j->line_no = line_no;
  if (cJSON_IsString(text)) {
    j->kind = JOB_TEXT;
    j->len = strlen(text->valuestring);
    j->text = xd_strdup(text->valuestring);
    cJSON_Delete(obj);
    return maybe_run_batch(P, j->len, e);
  }
  j->kind = JOB_CHAT;
  j->obj = obj;
  j->n_msgs = cJSON_GetArraySize(msgs);
  j->msgs = xd_calloc((size_t)j->n_msgs, sizeof(xd_chat_message));
  int i = 0;
  const cJSON *it;
  cJSON_ArrayForEach(it, msgs) {
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(it, "role"), *content = cJSON_GetObjectItemCaseSensitive(it, "content");
    if (!cJSON_IsString(role) || !cJSON_IsString(content))
      return xd_errf(e, "%s:%llu: message %d needs string \"role\" and \"content\"", r->path, (unsigned long long)line_no, i);
    j->msgs[i++] = (xd_chat_message){role->valuestring, content->valuestring};
  }
  return maybe_run_batch(P, n, e);
}

static int run_jsonl(prep *P, reader *r, xd_err *e) {
  uint64_t line_no = 0;
  char *line = NULL;
  size_t n = 0;
  int got;
  while ((got = rd_line(r, &line, &n, line_no + 1, e)) == 1) {
    line_no++;
    size_t k = 0;
    while (k < n && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r')) k++;
    if (k == n) continue; /* blank line */
    if (line_no == 1 && n >= 3 && !memcmp(line, "\xef\xbb\xbf", 3)) { /* UTF-8 byte-order mark */
      line += 3;
      n -= 3;
    }
    if (queue_json(P, r, line, n, line_no, e) != 0) return -1;
    report(P, r->gz, 0);
  }
  return got < 0 ? -1 : 0;
}

static int has_suffix(const char *s, const char *suf) {
  size_t a = strlen(s), b = strlen(suf);
  return a >= b && strcmp(s + a - b, suf) == 0;
}

/* 1 = text, 2 = jsonl, 0 = unsupported. */
static int input_kind(const char *path) {
  size_t n = strlen(path);
  char *p = xd_strdup(path);
  if (has_suffix(p, ".gz")) p[n - 3] = 0;
  int kind = has_suffix(p, ".txt") ? 1 : (has_suffix(p, ".jsonl") || has_suffix(p, ".json")) ? 2 : 0;
  free(p);
  return kind;
}

static cJSON *split_json(const split_writer *w) {
  cJSON *s = cJSON_CreateObject();
  cJSON_AddNumberToObject(s, "documents", (double)w->docs);
  cJSON_AddNumberToObject(s, "tokens", (double)w->tokens);
  cJSON *arr = cJSON_AddArrayToObject(s, "shards");
  for (size_t i = 0; i < w->n_recs; i++) {
    cJSON *r = cJSON_CreateObject();
    char hex[16];
    snprintf(hex, sizeof hex, "%08x", w->recs[i].crc);
    cJSON_AddStringToObject(r, "file", w->recs[i].file);
    cJSON_AddNumberToObject(r, "tokens", (double)w->recs[i].tokens);
    cJSON_AddNumberToObject(r, "documents", (double)w->recs[i].docs);
    cJSON_AddStringToObject(r, "checksum", hex);
    cJSON_AddItemToArray(arr, r);
  }
  return s;
}

static int write_manifest(prep *P, xd_err *e) {
  const xd_prepare_opts *o = P->o;
  cJSON *m = cJSON_CreateObject();
  cJSON_AddStringToObject(m, "format", "xdistill-tokens");
  cJSON_AddNumberToObject(m, "version", 1);
  cJSON *t = cJSON_AddObjectToObject(m, "tokenizer");
  cJSON_AddStringToObject(t, "path", P->enc->name ? P->enc->name : "");
  cJSON_AddStringToObject(t, "hash", P->enc->hash ? P->enc->hash : "");
  cJSON_AddNumberToObject(t, "vocab_size", (double)P->enc->vocab_size);
  cJSON_AddNumberToObject(t, "eos_id", P->enc->eos_id);
  cJSON_AddNumberToObject(t, "bos_id", P->enc->bos_id);
  cJSON_AddNumberToObject(m, "token_bytes", xd_shard_token_bytes(P->enc->vocab_size));
  cJSON_AddNumberToObject(m, "seed", (double)o->seed);
  cJSON_AddNumberToObject(m, "val_fraction", o->val_fraction);
  cJSON_AddNumberToObject(m, "shard_tokens", (double)o->shard_tokens);
  cJSON_AddBoolToObject(m, "add_bos", o->add_bos != 0);
  cJSON *splits = cJSON_AddObjectToObject(m, "splits");
  for (int s = 0; s < 2; s++) cJSON_AddItemToObject(splits, split_names[s], split_json(&P->w[s]));
  cJSON *in = cJSON_AddArrayToObject(m, "inputs");
  for (int i = 0; i < o->n_inputs; i++) cJSON_AddItemToArray(in, cJSON_CreateString(o->inputs[i]));
  cJSON_AddNumberToObject(m, "input_bytes", (double)P->st->bytes_total);
  cJSON_AddNumberToObject(m, "skipped_empty_documents", (double)P->st->skipped_empty);
  char *text = cJSON_Print(m);
  cJSON_Delete(m);
  char *path = xd_path_join(o->out_dir, "manifest.json");
  size_t n = strlen(text);
  int rc = xd_write_file_atomic(path, text, n, e);
  free(path);
  cJSON_free(text);
  return rc;
}

int xd_prepare_run(const xd_prepare_opts *o, const xd_prepare_encoder *enc, xd_prepare_stats *st, xd_err *e) {
  memset(st, 0, sizeof *st);
  if (o->n_inputs < 1) return xd_errf(e, "data prepare: no input files given");
  if (!(o->val_fraction >= 0 && o->val_fraction < 1)) return xd_errf(e, "data prepare: --val-fraction %g is not in [0, 1)", o->val_fraction);
  if (o->shard_tokens < 2) return xd_errf(e, "data prepare: --shard-tokens %llu is too small", (unsigned long long)o->shard_tokens);
  if (enc->eos_id < 0 || (uint64_t)enc->eos_id >= enc->vocab_size) return xd_errf(e, "%s: the tokenizer has no EOS token to join documents", enc->name ? enc->name : "tokenizer");
  /* Check every input before writing anything. */
  for (int i = 0; i < o->n_inputs; i++) {
    struct stat sb;
    if (stat(o->inputs[i], &sb) != 0) return xd_errf(e, "%s: cannot open: %s", o->inputs[i], strerror(errno));
    if (!S_ISREG(sb.st_mode)) return xd_errf(e, "%s: not a regular file", o->inputs[i]);
    if (!input_kind(o->inputs[i])) return xd_errf(e, "%s: unsupported input (expected .txt, .jsonl or .json, optionally .gz)", o->inputs[i]);
    st->bytes_total += (uint64_t)sb.st_size;
  }
  if (xd_mkdir_p(o->out_dir, e) != 0) return -1;
  char *mpath = xd_path_join(o->out_dir, "manifest.json");
  int rc = 0;
  if (xd_file_exists(mpath)) {
    if (!o->force) rc = xd_errf(e, "%s: already holds a prepared dataset (pass --force to replace it)", o->out_dir);
    else if (unlink(mpath) != 0) rc = xd_errf(e, "%s: cannot remove: %s", mpath, strerror(errno)); /* from here the dir is not complete */
  }
  free(mpath);
  if (rc != 0) return -1;

  prep P;
  memset(&P, 0, sizeof P);
  P.o = o;
  P.enc = enc;
  P.st = st;
  P.t0 = P.last_report = xd_now();
  P.txt_piece = xd_prepare_cut_safe(enc) ? TXT_PIECE : TXT_PIECE_WHOLE;
  for (int s = 0; s < 2; s++) sw_init(&P.w[s], s, o->out_dir, o->shard_tokens, enc->vocab_size);
  for (int i = 0; i < o->n_inputs && rc == 0; i++) {
    reader r;
    if (rd_open(&r, o->inputs[i], e) != 0) {
      rc = -1;
      break;
    }
    rc = input_kind(o->inputs[i]) == 1 ? run_txt(&P, &r, e) : run_jsonl(&P, &r, e);
    struct stat sb;
    if (stat(o->inputs[i], &sb) == 0) P.bytes_done += (uint64_t)sb.st_size;
    rd_close(&r);
  }
  if (P.n_jobs > 0) {
    /* Encode what is queued: on success to finish, on a parse error to report an earlier
     * document's encoding failure first (errors are reported in input order). */
    xd_err e2;
    if (run_batch(&P, &e2) != 0) {
      *e = e2;
      rc = -1;
    }
  }
  for (size_t i = 0; i < P.n_jobs; i++) job_free(&P.jobs[i]);
  free(P.jobs);
  for (int s = 0; s < 2 && rc == 0; s++) rc = sw_flush(&P.w[s], e);
  if (rc == 0 && P.w[SPLIT_TRAIN].tokens == 0)
    rc = xd_errf(e, "data prepare: the inputs hold no documents%s", P.w[SPLIT_VAL].tokens ? " for the train split" : "");
  if (rc == 0) rc = write_manifest(&P, e);
  st->seconds = xd_now() - P.t0;
  st->bytes_in = P.bytes_done;
  for (int s = 0; s < 2; s++) {
    st->docs[s] = P.w[s].docs;
    st->tokens[s] = P.w[s].tokens;
    st->shards[s] = P.w[s].n_recs;
    if (rc != 0) sw_remove_files(&P.w[s]); /* leave no shards without a manifest */
    sw_free(&P.w[s]);
  }
  if (rc == 0) report(&P, NULL, 1);
  return rc;
}
