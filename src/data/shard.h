/* Token shards: one versioned, checksummed binary file per slice of a tokenised corpus.
 * Layout (little-endian; docs/data-format.md is the reference):
 *   [0,64)  header: magic "XDSHARD\0", u32 version, u32 token bytes (2|4), u32 flags,
 *           u32 reserved (0), u64 n_tokens, u64 n_docs, u64 vocab_size, u64 reserved (0),
 *           u64 checksum
 *   u64 doc_offsets[n_docs + 1]     doc_offsets[0] = 0, non-decreasing, last = n_tokens
 *   tokens[n_tokens]                uint16 when vocab_size <= 65536, else uint32
 *   u8 mask[n_tokens]               only when flags & XD_SHARD_HAS_MASK (1 = loss target)
 * checksum = CRC-32 (zlib) of header bytes [0,56) followed by everything after the header,
 * so a flipped byte anywhere is caught. The file size must match the header exactly. */
#ifndef XD_SHARD_H
#define XD_SHARD_H
#include "core/core.h"

#define XD_SHARD_MAGIC "XDSHARD"
#define XD_SHARD_VERSION 1u
#define XD_SHARD_HEADER_BYTES 64u
#define XD_SHARD_HAS_MASK 1u

typedef struct {
  xd_mmap map;
  char *path;
  uint32_t version, token_bytes, flags;
  uint64_t n_tokens, n_docs, vocab_size;
  uint32_t checksum;
  const uint64_t *doc_offsets; /* [n_docs + 1], points into the mapping */
  const void *tokens;          /* uint16_t or uint32_t [n_tokens] */
  const uint8_t *mask;         /* [n_tokens] or NULL */
} xd_shard;

/* Token width for a vocabulary: 2 bytes when every id fits in uint16, else 4. */
uint32_t xd_shard_token_bytes(uint64_t vocab_size);

/* Write a shard atomically. tokens [n_tokens] must all be < vocab_size; mask [n_tokens] or
 * NULL (a mask of all ones is not stored); doc_offsets [n_docs + 1]. *checksum (if not NULL)
 * receives the CRC-32 written in the header. */
int xd_shard_write(const char *path, const int32_t *tokens, const uint8_t *mask, uint64_t n_tokens,
                   const uint64_t *doc_offsets, uint64_t n_docs, uint64_t vocab_size, uint32_t *checksum, xd_err *e);

/* Map and validate a shard: magic, version, sizes against the file length, doc offsets.
 * verify != 0 also checks the checksum and that every token id is < vocab_size (one pass over
 * the file). Errors name the file. */
int xd_shard_open(xd_shard *s, const char *path, int verify, xd_err *e);
/* The same checks on a caller-owned, 8-byte-aligned buffer (name is used in messages); s points
 * into data, which must outlive it. xd_shard_close frees only s's own allocations. */
int xd_shard_parse(xd_shard *s, const void *data, size_t size, const char *name, int verify, xd_err *e);
void xd_shard_close(xd_shard *s);

/* Copy tokens [start, start + n) as int32 (and their mask, 1 where no mask is stored) into
 * out / mask_out (either may be NULL). The range must lie inside the shard (checked). */
void xd_shard_read(const xd_shard *s, uint64_t start, size_t n, int32_t *out, uint8_t *mask_out);
#endif
