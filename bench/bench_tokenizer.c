/* Tokenizer throughput: encode a fixed document set (tinyshakespeare split at blank lines plus
 * the C4 samples, all from ../shared/corpora) with a tokenizer.json, single-threaded, and
 * report MB/s (best of --reps runs). tools/bench_tokenizer_hf.py measures HF `tokenizers` on
 * the very same documents; both print the total token count so the runs can be matched.
 * usage: bench_tokenizer [TOKENIZER_DIR (default ../shared/tokenizers/llama3)] [reps] */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include "tokenizer/tokenizer.h"

typedef struct { char **s; size_t *len; size_t n, cap; size_t bytes; } docs;
static void docs_add(docs *d, const char *s, size_t len) {
  if (d->n == d->cap) {
    d->cap = d->cap ? d->cap * 2 : 1024;
    d->s = xd_realloc(d->s, d->cap * sizeof *d->s);
    d->len = xd_realloc(d->len, d->cap * sizeof *d->len);
  }
  d->s[d->n] = xd_malloc(len + 1);
  memcpy(d->s[d->n], s, len);
  d->s[d->n][len] = 0;
  d->len[d->n++] = len;
  d->bytes += len;
}
static void add_gz_jsonl(docs *d, const char *path) {
  gzFile f = gzopen(path, "rb");
  if (!f) { fprintf(stderr, "cannot open %s\n", path); exit(1); }
  size_t cap = 1 << 20, n = 0;
  char *buf = xd_malloc(cap);
  int r;
  while ((r = gzread(f, buf + n, (unsigned)(cap - n - 1))) > 0) {
    n += (size_t)r;
    if (n + 1 >= cap) { cap *= 2; buf = xd_realloc(buf, cap); }
  }
  gzclose(f);
  buf[n] = 0;
  for (char *p = buf; *p;) {
    char *nl = strchr(p, '\n');
    size_t l = nl ? (size_t)(nl - p) : strlen(p);
    cJSON *j = cJSON_ParseWithLength(p, l);
    const cJSON *t = cJSON_GetObjectItem(j, "text");
    if (cJSON_IsString(t)) docs_add(d, t->valuestring, strlen(t->valuestring));
    cJSON_Delete(j);
    p += l + (nl ? 1 : 0);
  }
  free(buf);
}

int main(int argc, char **argv) {
  const char *dir = argc > 1 ? argv[1] : "../shared/tokenizers/llama3";
  int reps = argc > 2 ? atoi(argv[2]) : 3;
  xd_err e;
  char *text;
  size_t size;
  if (xd_read_file("../shared/corpora/tinyshakespeare/input.txt", 1 << 26, &text, &size, &e)) {
    fprintf(stderr, "bench_tokenizer: %s (run from the repo root with ../shared present)\n", e.msg);
    return 1;
  }
  docs d = {0};
  /* tinyshakespeare split at blank lines ("\n\n"), the separator kept at the end of each piece */
  for (char *p = text; *p;) {
    char *q = strstr(p, "\n\n");
    size_t l = q ? (size_t)(q - p) + 2 : strlen(p);
    docs_add(&d, p, l);
    p += l;
  }
  free(text);
  const char *gz[] = {"c4-sample.01.json.gz", "c4-sample.02.json.gz", "c4-sample.03.json.gz",
                      "c4_100_domains_5_www.theguardian.com_00000000.jsonl.gz"};
  for (int i = 0; i < 4; i++) {
    char path[256];
    snprintf(path, sizeof path, "../shared/corpora/c4-samples/%s", gz[i]);
    add_gz_jsonl(&d, path);
  }
  double t0 = xd_now();
  xd_tokenizer *t;
  if (xd_tokenizer_load(&t, dir, &e)) { fprintf(stderr, "bench_tokenizer: %s\n", e.msg); return 1; }
  double t_load = xd_now() - t0, best = 1e30;
  size_t tokens = 0;
  for (int r = 0; r < reps; r++) {
    tokens = 0;
    double s = xd_now();
    for (size_t i = 0; i < d.n; i++) {
      int32_t *ids;
      size_t n;
      if (xd_tokenizer_encode(t, d.s[i], d.len[i], 0, &ids, &n, &e)) { fprintf(stderr, "%s\n", e.msg); return 1; }
      tokens += n;
      free(ids);
    }
    double el = xd_now() - s;
    if (el < best) best = el;
  }
  printf("xdistill tokenizer (%s): %zu docs, %.2f MB, %zu tokens, load %.2f s, encode best of %d %.3f s = %.2f MB/s\n", dir, d.n,
         d.bytes / 1e6, tokens, t_load, reps, best, d.bytes / 1e6 / best);
  xd_tokenizer_free(t);
  for (size_t i = 0; i < d.n; i++) free(d.s[i]);
  free(d.s);
  free(d.len);
  return 0;
}
