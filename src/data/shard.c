#include "data/shard.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

uint32_t xd_shard_token_bytes(uint64_t vocab_size) { return vocab_size <= 65536u ? 2u : 4u; }

static void put_u32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put_u64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint32_t get_u32(const uint8_t *p) { uint32_t v = 0; for (int i = 3; i >= 0; i--) v = (v << 8) | p[i]; return v; }
static uint64_t get_u64(const uint8_t *p) { uint64_t v = 0; for (int i = 7; i >= 0; i--) v = (v << 8) | p[i]; return v; }

/* zlib's crc32 takes a uInt length: feed large buffers in pieces. */
static uint32_t crc_update(uint32_t crc, const void *data, size_t n) {
  const uint8_t *p = data;
  while (n) {
    size_t k = n > (1u << 30) ? (1u << 30) : n;
    crc = (uint32_t)crc32(crc, p, (uInt)k);
    p += k;
    n -= k;
  }
  return crc;
}

static int host_is_little_endian(void) {
  const uint16_t one = 1;
  uint8_t b;
  memcpy(&b, &one, 1);
  return b == 1;
}

static int write_crc(xd_atomic_file *f, uint32_t *crc, const void *data, size_t n, xd_err *e) {
  *crc = crc_update(*crc, data, n);
  return xd_atomic_write(f, data, n, e);
}

int xd_shard_write(const char *path, const int32_t *tokens, const uint8_t *mask, uint64_t n_tokens,
                   const uint64_t *doc_offsets, uint64_t n_docs, uint64_t vocab_size, uint32_t *checksum, xd_err *e) {
  XD_CHECK(host_is_little_endian());
  if (vocab_size == 0 || vocab_size > (uint64_t)INT32_MAX + 1) return xd_errf(e, "%s: bad vocabulary size %llu", path, (unsigned long long)vocab_size);
  if (doc_offsets[0] != 0 || doc_offsets[n_docs] != n_tokens) return xd_errf(e, "%s: document offsets do not span the tokens", path);
  for (uint64_t i = 0; i < n_tokens; i++)
    if (tokens[i] < 0 || (uint64_t)tokens[i] >= vocab_size)
      return xd_errf(e, "%s: token %llu has id %d outside the vocabulary of %llu", path, (unsigned long long)i, tokens[i], (unsigned long long)vocab_size);
  int has_mask = 0;
  for (uint64_t i = 0; mask && i < n_tokens; i++) {
    if (mask[i] > 1) return xd_errf(e, "%s: mask value %u at token %llu is not 0 or 1", path, mask[i], (unsigned long long)i);
    has_mask |= mask[i] == 0;
  }
  const uint32_t tb = xd_shard_token_bytes(vocab_size);

  uint8_t hdr[XD_SHARD_HEADER_BYTES];
  memset(hdr, 0, sizeof hdr);
  memcpy(hdr, XD_SHARD_MAGIC, 8);
  put_u32(hdr + 8, XD_SHARD_VERSION);
  put_u32(hdr + 12, tb);
  put_u32(hdr + 16, has_mask ? XD_SHARD_HAS_MASK : 0);
  put_u64(hdr + 24, n_tokens);
  put_u64(hdr + 32, n_docs);
  put_u64(hdr + 40, vocab_size);

  xd_atomic_file f;
  if (xd_atomic_open(&f, path, e) != 0) return -1;
  uint32_t crc = crc_update((uint32_t)crc32(0, Z_NULL, 0), hdr, 56);
  int rc = xd_atomic_write(&f, hdr, sizeof hdr, e);
  if (rc == 0) rc = write_crc(&f, &crc, doc_offsets, (size_t)(n_docs + 1) * 8, e);
  /* Narrow the tokens through a small buffer so the writer never holds a second copy. */
  enum { CHUNK = 1 << 16 };
  uint8_t *buf = xd_malloc((size_t)CHUNK * 4);
  for (uint64_t i = 0; rc == 0 && i < n_tokens; i += CHUNK) {
    size_t k = (size_t)(n_tokens - i < CHUNK ? n_tokens - i : CHUNK);
    if (tb == 2) {
      uint16_t *b16 = (uint16_t *)buf;
      for (size_t j = 0; j < k; j++) b16[j] = (uint16_t)tokens[i + j];
    } else {
      memcpy(buf, tokens + i, k * 4);
    }
    rc = write_crc(&f, &crc, buf, k * tb, e);
  }
  free(buf);
  if (rc == 0 && has_mask) rc = write_crc(&f, &crc, mask, (size_t)n_tokens, e);
  if (rc == 0) {
    uint8_t c[8];
    put_u64(c, crc);
    if (fflush(f.fp) != 0 || fseek(f.fp, 56, SEEK_SET) != 0) rc = xd_errf(e, "%s: seek failed", path);
    if (rc == 0) rc = xd_atomic_write(&f, c, 8, e);
  }
  if (rc != 0) {
    xd_atomic_abort(&f);
    return -1;
  }
  if (xd_atomic_commit(&f, e) != 0) return -1;
  if (checksum) *checksum = crc;
  return 0;
}

/* Validate size bytes at d as a shard and point s's fields into them. */
static int shard_parse(xd_shard *s, const uint8_t *d, size_t size, const char *path, int verify, xd_err *e) {
  int rc = 0;
  if (size < XD_SHARD_HEADER_BYTES) { rc = xd_errf(e, "%s: truncated shard (%zu bytes, header needs %u)", path, size, XD_SHARD_HEADER_BYTES); goto done; }
  if (memcmp(d, XD_SHARD_MAGIC, 8) != 0) { rc = xd_errf(e, "%s: not a token shard (bad magic)", path); goto done; }
  s->version = get_u32(d + 8);
  s->token_bytes = get_u32(d + 12);
  s->flags = get_u32(d + 16);
  s->n_tokens = get_u64(d + 24);
  s->n_docs = get_u64(d + 32);
  s->vocab_size = get_u64(d + 40);
  const uint64_t stored_crc = get_u64(d + 56);
  if (s->version != XD_SHARD_VERSION) { rc = xd_errf(e, "%s: unsupported shard version %u (this build reads %u)", path, s->version, XD_SHARD_VERSION); goto done; }
  if (s->flags & ~XD_SHARD_HAS_MASK) { rc = xd_errf(e, "%s: unknown shard flags 0x%x", path, s->flags); goto done; }
  if (get_u32(d + 20) != 0 || get_u64(d + 48) != 0) { rc = xd_errf(e, "%s: reserved header fields are not zero", path); goto done; }
  if (s->vocab_size == 0 || s->vocab_size > (uint64_t)INT32_MAX + 1) { rc = xd_errf(e, "%s: bad vocabulary size %llu", path, (unsigned long long)s->vocab_size); goto done; }
  if (s->token_bytes != xd_shard_token_bytes(s->vocab_size)) { rc = xd_errf(e, "%s: token width %u does not match vocabulary size %llu", path, s->token_bytes, (unsigned long long)s->vocab_size); goto done; }
  if (stored_crc > UINT32_MAX) { rc = xd_errf(e, "%s: bad checksum field", path); goto done; }
  /* Expected size, with every product and sum overflow-checked (the header is untrusted). */
  size_t off_bytes, tok_bytes, expect = XD_SHARD_HEADER_BYTES, mask_bytes = 0;
  if (s->n_docs >= SIZE_MAX / 8 || s->n_tokens > SIZE_MAX || xd_mul_size((size_t)s->n_docs + 1, 8, &off_bytes) ||
      xd_mul_size((size_t)s->n_tokens, s->token_bytes, &tok_bytes) || xd_add_size(expect, off_bytes, &expect) ||
      xd_add_size(expect, tok_bytes, &expect) ||
      ((s->flags & XD_SHARD_HAS_MASK) && (mask_bytes = (size_t)s->n_tokens, xd_add_size(expect, mask_bytes, &expect)))) {
    rc = xd_errf(e, "%s: header sizes overflow (corrupt shard)", path);
    goto done;
  }
  if (size != expect) { rc = xd_errf(e, "%s: file is %zu bytes but its header describes %zu (truncated or corrupt shard)", path, size, expect); goto done; }
  s->doc_offsets = (const uint64_t *)(const void *)(d + XD_SHARD_HEADER_BYTES);
  s->tokens = d + XD_SHARD_HEADER_BYTES + off_bytes;
  s->mask = (s->flags & XD_SHARD_HAS_MASK) ? d + XD_SHARD_HEADER_BYTES + off_bytes + tok_bytes : NULL;
  if (s->doc_offsets[0] != 0 || s->doc_offsets[s->n_docs] != s->n_tokens) { rc = xd_errf(e, "%s: document offsets do not span the %llu tokens", path, (unsigned long long)s->n_tokens); goto done; }
  for (uint64_t i = 0; i < s->n_docs; i++)
    if (s->doc_offsets[i + 1] < s->doc_offsets[i]) { rc = xd_errf(e, "%s: document offsets decrease at document %llu", path, (unsigned long long)i); goto done; }
  s->checksum = (uint32_t)stored_crc;
  if (verify) {
    uint32_t crc = crc_update(crc_update((uint32_t)crc32(0, Z_NULL, 0), d, 56), d + XD_SHARD_HEADER_BYTES, size - XD_SHARD_HEADER_BYTES);
    if (crc != s->checksum) { rc = xd_errf(e, "%s: checksum mismatch (stored %08x, computed %08x): corrupt shard", path, s->checksum, crc); goto done; }
    if (s->token_bytes == 4) {
      const uint32_t *t = s->tokens;
      for (uint64_t i = 0; i < s->n_tokens; i++)
        if (t[i] >= s->vocab_size) { rc = xd_errf(e, "%s: token %llu has id %u outside the vocabulary", path, (unsigned long long)i, t[i]); goto done; }
    } else {
      const uint16_t *t = s->tokens;
      for (uint64_t i = 0; i < s->n_tokens; i++)
        if (t[i] >= s->vocab_size) { rc = xd_errf(e, "%s: token %llu has id %u outside the vocabulary", path, (unsigned long long)i, t[i]); goto done; }
    }
    for (uint64_t i = 0; s->mask && i < s->n_tokens; i++)
      if (s->mask[i] > 1) { rc = xd_errf(e, "%s: mask value %u at token %llu is not 0 or 1", path, s->mask[i], (unsigned long long)i); goto done; }
  }
done:
  return rc;
}

int xd_shard_parse(xd_shard *s, const void *data, size_t size, const char *name, int verify, xd_err *e) {
  XD_CHECK(host_is_little_endian());
  memset(s, 0, sizeof *s);
  /* The mmap'ed views below cast to uint64_t/uint32_t: the buffer must be 8-byte aligned. */
  XD_CHECK(((uintptr_t)data & 7) == 0);
  if (shard_parse(s, data, size, name, verify, e) != 0) {
    memset(s, 0, sizeof *s);
    return -1;
  }
  s->path = xd_strdup(name);
  return 0;
}

int xd_shard_open(xd_shard *s, const char *path, int verify, xd_err *e) {
  XD_CHECK(host_is_little_endian());
  memset(s, 0, sizeof *s);
  xd_mmap map;
  if (xd_mmap_open(&map, path, e) != 0) return -1;
  if (shard_parse(s, map.data, map.size, path, verify, e) != 0) {
    xd_mmap_close(&map);
    memset(s, 0, sizeof *s);
    return -1;
  }
  s->map = map;
  s->path = xd_strdup(path);
  return 0;
}

void xd_shard_close(xd_shard *s) {
  xd_mmap_close(&s->map);
  free(s->path);
  memset(s, 0, sizeof *s);
}

void xd_shard_read(const xd_shard *s, uint64_t start, size_t n, int32_t *out, uint8_t *mask_out) {
  XD_CHECK(start <= s->n_tokens && n <= s->n_tokens - start);
  if (out) {
    if (s->token_bytes == 2) {
      const uint16_t *t = (const uint16_t *)s->tokens + start;
      for (size_t i = 0; i < n; i++) out[i] = t[i];
    } else {
      const uint32_t *t = (const uint32_t *)s->tokens + start;
      for (size_t i = 0; i < n; i++) out[i] = (int32_t)t[i];
    }
  }
  if (mask_out) {
    if (s->mask) memcpy(mask_out, s->mask + start, n);
    else memset(mask_out, 1, n);
  }
}
