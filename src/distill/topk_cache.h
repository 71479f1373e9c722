/* Teacher top-k cache (stage II without a resident teacher, SPEC §4).
 *
 * File layout (little-endian), docs/topk-cache.md:
 *   header (64 bytes): magic "XDTOPK\0\0", u32 version = 1, u32 k, u32 vocab, u32 seq_len,
 *                      u64 n_rows, u64 tokenizer_hash, u64 payload_checksum (FNV-1a 64 of the
 *                      payload), 16 reserved bytes (zero)
 *   payload: n_rows records, one per training row of seq_len positions; each record holds
 *            ids  int32 [seq_len, k]  (teacher's top-k token ids per position, by falling log-prob)
 *            logp float  [seq_len, k] (teacher's full-vocabulary log-softmax of those ids, temperature 1)
 * Row r of the cache belongs to row r of the data loader's stream in the order it was written;
 * `distill --teacher-cache` checks seq_len, k, vocab and the tokenizer hash against its run. */
#ifndef XD_TOPK_CACHE_H
#define XD_TOPK_CACHE_H
#include "core/core.h"

#define XD_TOPK_MAGIC "XDTOPK\0\0"
#define XD_TOPK_VERSION 1u

typedef struct {
  uint32_t k, vocab, seq_len;
  uint64_t n_rows, tokenizer_hash;
} xd_topk_info;

typedef struct {
  xd_atomic_file f;
  xd_topk_info info;
  uint64_t rows_written, checksum;
} xd_topk_writer;

int xd_topk_writer_open(xd_topk_writer *w, const char *path, uint32_t k, uint32_t vocab, uint32_t seq_len,
                        uint64_t tokenizer_hash, xd_err *e);
/* Append one row: ids [seq_len*k], logp [seq_len*k]. */
int xd_topk_writer_add(xd_topk_writer *w, const int32_t *ids, const float *logp, xd_err *e);
/* Rewrites the header with the final count and checksum, then fsync + rename. */
int xd_topk_writer_close(xd_topk_writer *w, xd_err *e);
void xd_topk_writer_abort(xd_topk_writer *w);

typedef struct {
  xd_mmap map;
  xd_topk_info info;
  const uint8_t *payload;
  char *path;
} xd_topk_reader;

/* Opens and validates: magic, version, sizes vs file length, ids in [0, vocab), checksum. */
int xd_topk_reader_open(xd_topk_reader *r, const char *path, xd_err *e);
/* Row r: pointers into the mapping (aligned copies are not needed: 4-byte aligned by layout). */
int xd_topk_reader_row(const xd_topk_reader *r, uint64_t row, const int32_t **ids, const float **logp, xd_err *e);
void xd_topk_reader_close(xd_topk_reader *r);

uint64_t xd_topk_fnv(uint64_t h, const void *data, size_t n);
#define XD_TOPK_FNV_INIT 0xcbf29ce484222325ull
#endif
