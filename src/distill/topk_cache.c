#include "distill/topk_cache.h"

#include <stdlib.h>
#include <string.h>

#define HEADER_SIZE 64

uint64_t xd_topk_fnv(uint64_t h, const void *data, size_t n) {
  const uint8_t *p = data;
  for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 0x100000001b3ull; }
  return h;
}

static void put_u32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put_u64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint32_t get_u32(const uint8_t *p) { uint32_t v = 0; for (int i = 3; i >= 0; i--) v = (v << 8) | p[i]; return v; }
static uint64_t get_u64(const uint8_t *p) { uint64_t v = 0; for (int i = 7; i >= 0; i--) v = (v << 8) | p[i]; return v; }

static void encode_header(uint8_t *h, const xd_topk_info *info, uint64_t checksum) {
  memset(h, 0, HEADER_SIZE);
  memcpy(h, XD_TOPK_MAGIC, 8);
  put_u32(h + 8, XD_TOPK_VERSION);
  put_u32(h + 12, info->k);
  put_u32(h + 16, info->vocab);
  put_u32(h + 20, info->seq_len);
  put_u64(h + 24, info->n_rows);
  put_u64(h + 32, info->tokenizer_hash);
  put_u64(h + 40, checksum);
}

int xd_topk_writer_open(xd_topk_writer *w, const char *path, uint32_t k, uint32_t vocab, uint32_t seq_len,
                        uint64_t tokenizer_hash, xd_err *e) {
  memset(w, 0, sizeof *w);
  if (k == 0 || vocab == 0 || seq_len == 0 || k > vocab) return xd_errf(e, "%s: bad top-k cache shape (k %u, vocab %u, seq_len %u)", path, k, vocab, seq_len);
  w->info = (xd_topk_info){k, vocab, seq_len, 0, tokenizer_hash};
  w->checksum = XD_TOPK_FNV_INIT;
  if (xd_atomic_open(&w->f, path, e) != 0) return -1;
  uint8_t h[HEADER_SIZE];
  encode_header(h, &w->info, 0); /* placeholder, rewritten on close */
  if (xd_atomic_write(&w->f, h, HEADER_SIZE, e) != 0) { xd_atomic_abort(&w->f); return -1; }
  return 0;
}

int xd_topk_writer_add(xd_topk_writer *w, const int32_t *ids, const float *logp, xd_err *e) {
  size_t n = (size_t)w->info.seq_len * w->info.k;
  for (size_t i = 0; i < n; i++)
    if (ids[i] < 0 || (uint32_t)ids[i] >= w->info.vocab) return xd_errf(e, "%s: top-k id %d out of range", w->f.path, ids[i]);
  if (xd_atomic_write(&w->f, ids, n * 4, e) != 0 || xd_atomic_write(&w->f, logp, n * 4, e) != 0) return -1;
  w->checksum = xd_topk_fnv(w->checksum, ids, n * 4);
  w->checksum = xd_topk_fnv(w->checksum, logp, n * 4);
  w->rows_written++;
  return 0;
}

int xd_topk_writer_close(xd_topk_writer *w, xd_err *e) {
  w->info.n_rows = w->rows_written;
  uint8_t h[HEADER_SIZE];
  encode_header(h, &w->info, w->checksum);
  if (fflush(w->f.fp) != 0 || fseek(w->f.fp, 0, SEEK_SET) != 0 || fwrite(h, 1, HEADER_SIZE, w->f.fp) != HEADER_SIZE) {
    int rc = xd_errf(e, "%s: cannot finalise the top-k cache header", w->f.path);
    xd_atomic_abort(&w->f);
    return rc;
  }
  return xd_atomic_commit(&w->f, e);
}

void xd_topk_writer_abort(xd_topk_writer *w) { xd_atomic_abort(&w->f); }

int xd_topk_reader_open(xd_topk_reader *r, const char *path, xd_err *e) {
  memset(r, 0, sizeof *r);
  if (xd_mmap_open(&r->map, path, e) != 0) return -1;
  const uint8_t *p = r->map.data;
  int rc = 0;
  if (r->map.size < HEADER_SIZE || memcmp(p, XD_TOPK_MAGIC, 8) != 0) rc = xd_errf(e, "%s: not a top-k cache (bad magic)", path);
  else if (get_u32(p + 8) != XD_TOPK_VERSION) rc = xd_errf(e, "%s: top-k cache version %u, this build reads %u", path, get_u32(p + 8), XD_TOPK_VERSION);
  if (rc == 0) {
    r->info.k = get_u32(p + 12);
    r->info.vocab = get_u32(p + 16);
    r->info.seq_len = get_u32(p + 20);
    r->info.n_rows = get_u64(p + 24);
    r->info.tokenizer_hash = get_u64(p + 32);
    uint64_t sum = get_u64(p + 40);
    size_t row_bytes, payload;
    if (r->info.k == 0 || r->info.vocab == 0 || r->info.seq_len == 0 || r->info.k > r->info.vocab ||
        xd_mul_size((size_t)r->info.seq_len * r->info.k, 8, &row_bytes) != 0 ||
        r->info.n_rows > SIZE_MAX || xd_mul_size(row_bytes, (size_t)r->info.n_rows, &payload) != 0 ||
        payload != r->map.size - HEADER_SIZE)
      rc = xd_errf(e, "%s: top-k cache is truncated or its header is corrupt (%zu bytes for %llu rows)", path, r->map.size,
                   (unsigned long long)r->info.n_rows);
    else if (xd_topk_fnv(XD_TOPK_FNV_INIT, p + HEADER_SIZE, payload) != sum)
      rc = xd_errf(e, "%s: top-k cache checksum mismatch (corrupt file)", path);
  }
  if (rc != 0) { xd_mmap_close(&r->map); return -1; }
  r->payload = p + HEADER_SIZE;
  r->path = xd_strdup(path);
  return 0;
}

int xd_topk_reader_row(const xd_topk_reader *r, uint64_t row, const int32_t **ids, const float **logp, xd_err *e) {
  if (row >= r->info.n_rows) return xd_errf(e, "%s: row %llu past the %llu rows of the top-k cache", r->path, (unsigned long long)row, (unsigned long long)r->info.n_rows);
  size_t n = (size_t)r->info.seq_len * r->info.k;
  const uint8_t *base = r->payload + (size_t)row * n * 8;
  const int32_t *id = (const int32_t *)base;
  for (size_t i = 0; i < n; i++) /* the loss indexes logits with these: never trust them */
    if (id[i] < 0 || (uint32_t)id[i] >= r->info.vocab)
      return xd_errf(e, "%s: row %llu holds token id %d outside the vocabulary", r->path, (unsigned long long)row, id[i]);
  *ids = id;
  *logp = (const float *)(base + n * 4);
  return 0;
}

void xd_topk_reader_close(xd_topk_reader *r) {
  xd_mmap_close(&r->map);
  free(r->path);
  memset(r, 0, sizeof *r);
}
