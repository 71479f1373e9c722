/* Data pipeline: shard format, corruption detection, packing, shuffling, rank sharding, resume,
 * and `data prepare` driven by a synthetic byte-level encoder (the real tokenizer is exercised
 * in test_prepare_llama3 and by tests/cli_data.sh). */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <stdatomic.h>
#include <zlib.h>

#include "core/core.h"
#include "data/loader.h"
#include "data/prepare.h"
#include "data/shard.h"
#include "test.h"
#include "tokenizer/tokenizer.h"

static char *tmp_path(const char *dir, const char *name) { return xd_path_join(dir, name); }

static void random_shard(xd_rng *r, uint64_t n, uint64_t vocab, int32_t *tok, uint8_t *mask, uint64_t *offs, uint64_t *n_docs) {
  for (uint64_t i = 0; i < n; i++) tok[i] = (int32_t)(xd_rng_u64(r) % vocab);
  if (mask)
    for (uint64_t i = 0; i < n; i++) mask[i] = (uint8_t)(xd_rng_u64(r) & 1);
  uint64_t d = 0;
  offs[0] = 0;
  for (uint64_t p = 0; p < n;) {
    uint64_t len = 1 + xd_rng_u64(r) % 50;
    p = p + len > n ? n : p + len;
    offs[++d] = p;
  }
  *n_docs = d;
}

static void test_shard_roundtrip(void) {
  const char *dir = test_tmpdir("data-rt");
  xd_rng r;
  xd_rng_seed(&r, 11);
  const uint64_t vocabs[3] = {300, 65536, 151669};
  for (int v = 0; v < 3; v++)
    for (int with_mask = 0; with_mask < 2; with_mask++) {
      const uint64_t n = 1000 + xd_rng_u64(&r) % 1000;
      int32_t *tok = xd_malloc(n * 4), *back = xd_malloc(n * 4);
      uint8_t *mask = xd_malloc(n), *mback = xd_malloc(n);
      uint64_t *offs = xd_malloc((n + 1) * 8), nd;
      random_shard(&r, n, vocabs[v], tok, with_mask ? mask : NULL, offs, &nd);
      tok[0] = (int32_t)vocabs[v] - 1; /* the largest id must survive the narrowing */
      char *p = tmp_path(dir, "a.xds");
      xd_err e = {{0}};
      uint32_t crc = 0;
      CHECKF(xd_shard_write(p, tok, with_mask ? mask : NULL, n, offs, nd, vocabs[v], &crc, &e) == 0, "%s", e.msg);
      xd_shard s;
      CHECKF(xd_shard_open(&s, p, 1, &e) == 0, "%s", e.msg);
      CHECK(s.checksum == crc);
      CHECK(s.n_tokens == n && s.n_docs == nd && s.vocab_size == vocabs[v]);
      CHECK(s.token_bytes == (vocabs[v] <= 65536 ? 2u : 4u));
      CHECK((s.mask != NULL) == with_mask);
      CHECK(memcmp(s.doc_offsets, offs, (nd + 1) * 8) == 0);
      xd_shard_read(&s, 0, n, back, mback);
      CHECK(memcmp(back, tok, n * 4) == 0);
      if (with_mask) CHECK(memcmp(mback, mask, n) == 0);
      else for (uint64_t i = 0; i < n; i++) CHECK(mback[i] == 1);
      /* a sub-range */
      xd_shard_read(&s, 17, 100, back, NULL);
      CHECK(memcmp(back, tok + 17, 400) == 0);
      /* the same bytes parsed from a caller's buffer */
      xd_shard s2;
      uint8_t *copy = xd_aligned_alloc(s.map.size);
      memcpy(copy, s.map.data, s.map.size);
      CHECKF(xd_shard_parse(&s2, copy, s.map.size, "copy", 1, &e) == 0, "%s", e.msg);
      CHECK(s2.n_tokens == n && s2.checksum == s.checksum);
      xd_shard_read(&s2, 0, n, back, NULL);
      CHECK(memcmp(back, tok, n * 4) == 0);
      xd_shard_close(&s2);
      copy[XD_SHARD_HEADER_BYTES + (nd + 1) * 8 + 3] ^= 0x10; /* inside the tokens */
      CHECK(xd_shard_parse(&s2, copy, s.map.size, "copy", 1, &e) != 0 && strstr(e.msg, "copy: checksum mismatch"));
      free(copy);
      xd_shard_close(&s);
      /* an all-ones mask is not stored */
      memset(mask, 1, n);
      CHECKF(xd_shard_write(p, tok, mask, n, offs, nd, vocabs[v], NULL, &e) == 0, "%s", e.msg);
      CHECKF(xd_shard_open(&s, p, 1, &e) == 0, "%s", e.msg);
      CHECK(s.mask == NULL);
      xd_shard_close(&s);
      /* ids outside the vocabulary are refused by the writer */
      tok[5] = (int32_t)vocabs[v];
      CHECK(xd_shard_write(p, tok, NULL, n, offs, nd, vocabs[v], NULL, &e) != 0 && strstr(e.msg, "outside the vocabulary"));
      free(p);
      free(tok); free(back); free(mask); free(mback); free(offs);
    }
}

static int write_bytes(const char *path, const void *d, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  size_t w = fwrite(d, 1, n, f);
  fclose(f);
  return w == n ? 0 : -1;
}

static void test_shard_corruption(void) {
  const char *dir = test_tmpdir("data-bad");
  xd_rng r;
  xd_rng_seed(&r, 12);
  const uint64_t n = 3000;
  int32_t *tok = xd_malloc(n * 4);
  uint8_t *mask = xd_malloc(n);
  uint64_t *offs = xd_malloc((n + 1) * 8), nd;
  random_shard(&r, n, 70000, tok, mask, offs, &nd);
  char *good = tmp_path(dir, "good.xds"), *bad = tmp_path(dir, "bad.xds");
  xd_err e = {{0}};
  CHECKF(xd_shard_write(good, tok, mask, n, offs, nd, 70000, NULL, &e) == 0, "%s", e.msg);
  char *data;
  size_t size;
  CHECK(xd_read_file(good, 1 << 30, &data, &size, &e) == 0);
  xd_shard s;
  /* every flipped byte is caught by a verifying open, wherever it is */
  for (int trial = 0; trial < 200; trial++) {
    size_t pos = trial < 64 ? (size_t)trial : (size_t)(xd_rng_u64(&r) % size);
    const char flip = (char)(1 + xd_rng_u64(&r) % 255);
    data[pos] ^= flip;
    CHECK(write_bytes(bad, data, size) == 0);
    int rc = xd_shard_open(&s, bad, 1, &e);
    CHECKF(rc != 0, "flip at %zu not detected", pos);
    if (rc == 0) xd_shard_close(&s);
    else CHECKF(strstr(e.msg, bad) && !strchr(e.msg, '\n'), "error must name the file on one line: %s", e.msg);
    data[pos] ^= flip;
  }
  /* truncation is caught even without the checksum pass */
  const size_t cuts[4] = {0, 10, 64, size - 1};
  for (int i = 0; i < 4; i++) {
    CHECK(write_bytes(bad, data, cuts[i]) == 0);
    CHECK(xd_shard_open(&s, bad, 0, &e) != 0 && strstr(e.msg, bad) && strstr(e.msg, "truncated"));
  }
  /* appended garbage */
  char *longer = xd_malloc(size + 3);
  memcpy(longer, data, size);
  memset(longer + size, 7, 3);
  CHECK(write_bytes(bad, longer, size + 3) == 0);
  CHECK(xd_shard_open(&s, bad, 0, &e) != 0 && strstr(e.msg, "bytes but its header"));
  free(longer);
  /* bad magic and bad version are named as such (structural checks, no checksum needed) */
  data[0] = 'Y';
  CHECK(write_bytes(bad, data, size) == 0);
  CHECK(xd_shard_open(&s, bad, 0, &e) != 0 && strstr(e.msg, "bad magic"));
  data[0] = 'X';
  data[8] = 2;
  CHECK(write_bytes(bad, data, size) == 0);
  CHECK(xd_shard_open(&s, bad, 0, &e) != 0 && strstr(e.msg, "version 2"));
  data[8] = 1;
  /* a huge token count must not overflow the size computation */
  memset(data + 24, 0xff, 8);
  CHECK(write_bytes(bad, data, size) == 0);
  CHECK(xd_shard_open(&s, bad, 0, &e) != 0 && strstr(e.msg, bad));
  /* content errors behind a valid checksum: an id outside the vocabulary, a mask value of 2 */
  {
    const size_t tok_at = XD_SHARD_HEADER_BYTES + (nd + 1) * 8, mask_at = tok_at + n * 4; /* vocab 70000: uint32 */
    char *orig, *fixed = xd_malloc(size);
    CHECK(xd_read_file(good, 1 << 30, &orig, NULL, &e) == 0);
    for (int k = 0; k < 2; k++) {
      memcpy(fixed, orig, size);
      if (k == 0) { uint32_t big = 70000; memcpy(fixed + tok_at + 8, &big, 4); }
      else fixed[mask_at + 5] = 2;
      uint32_t crc = (uint32_t)crc32(crc32(0, Z_NULL, 0), (const Bytef *)fixed, 56);
      crc = (uint32_t)crc32(crc, (const Bytef *)fixed + 64, (uInt)(size - 64));
      uint64_t c64 = crc;
      memcpy(fixed + 56, &c64, 8);
      CHECK(write_bytes(bad, fixed, size) == 0);
      CHECK(xd_shard_open(&s, bad, 1, &e) != 0 && strstr(e.msg, k == 0 ? "token 2 has id 70000 outside" : "mask value 2 at token 5"));
    }
    free(fixed);
    free(orig);
    mask[3] = 2;
    CHECK(xd_shard_write(bad, tok, mask, n, offs, nd, 70000, NULL, &e) != 0 && strstr(e.msg, "mask value 2"));
    mask[3] = 1;
  }
  /* missing file */
  CHECK(xd_shard_open(&s, "/nonexistent/x.xds", 0, &e) != 0 && strstr(e.msg, "/nonexistent/x.xds"));
  free(data);
  free(good); free(bad); free(tok); free(mask); free(offs);
}

/* Three shards whose tokens are their stream positions (vocab 2^20), so rows are recognisable. */
static char **position_shards(const char *dir, const uint64_t *sizes, int n, int with_mask) {
  char **paths = xd_malloc(sizeof(char *) * (size_t)n);
  uint64_t base = 0;
  for (int s = 0; s < n; s++) {
    char name[32];
    snprintf(name, sizeof name, "p%d.xds", s);
    paths[s] = tmp_path(dir, name);
    int32_t *tok = xd_malloc(sizes[s] * 4);
    uint8_t *mask = xd_malloc(sizes[s]);
    for (uint64_t i = 0; i < sizes[s]; i++) {
      tok[i] = (int32_t)(base + i);
      mask[i] = (uint8_t)((base + i) % 3 != 0);
    }
    uint64_t offs[2] = {0, sizes[s]};
    xd_err e = {{0}};
    CHECKF(xd_shard_write(paths[s], tok, with_mask ? mask : NULL, sizes[s], offs, 1, 1u << 20, NULL, &e) == 0, "%s", e.msg);
    free(tok);
    free(mask);
    base += sizes[s];
  }
  return paths;
}
static void free_paths(char **p, int n) {
  for (int i = 0; i < n; i++) free(p[i]);
  free(p);
}

static void test_packing_covers_every_token(void) {
  const char *dir = test_tmpdir("data-pack");
  const uint64_t sizes[3] = {101, 7, 250}; /* a middle shard shorter than a row */
  char **paths = position_shards(dir, sizes, 3, 1);
  const uint64_t N = 358;
  for (int shuffle = 0; shuffle < 2; shuffle++) {
    xd_loader_config c = {.seq_len = 9, .batch = 4, .seed = 5, .shuffle = shuffle, .rank = 0, .world = 1};
    xd_loader *L;
    xd_err e = {{0}};
    CHECKF(xd_loader_open_shards(&L, (const char *const *)paths, 3, &c, &e) == 0, "%s", e.msg);
    const uint64_t rows = xd_loader_rows_total(L);
    CHECK(rows == (N - 1) / 9 && xd_loader_rows_per_rank(L) == rows && xd_loader_tokens(L) == N && xd_loader_has_mask(L));
    /* one epoch = rows rows: 9 whole batches of 4 then one more row */
    int *as_target = xd_calloc(N, sizeof(int)), *seen_row = xd_calloc(rows, sizeof(int));
    int32_t tok[4 * 10];
    uint8_t mask[4 * 10];
    uint64_t got = 0;
    while (got < rows) {
      xd_loader_next(L, tok, mask);
      for (int b = 0; b < 4 && got < rows; b++, got++) {
        const int32_t *row = tok + b * 10;
        CHECK(row[0] % 9 == 0);
        for (int j = 0; j < 10; j++) {
          CHECK(row[j] == row[0] + j); /* contiguous across shard boundaries */
          CHECK(mask[b * 10 + j] == (row[j] % 3 != 0));
        }
        for (int j = 1; j < 10; j++) as_target[row[j]]++;
        seen_row[row[0] / 9]++;
      }
    }
    for (uint64_t i = 0; i < rows; i++) CHECKF(seen_row[i] == 1, "row %llu seen %d times", (unsigned long long)i, seen_row[i]);
    for (uint64_t i = 1; i <= rows * 9; i++) CHECKF(as_target[i] == 1, "token %llu is a target %d times", (unsigned long long)i, as_target[i]);
    CHECK(N - 1 - rows * 9 < 9); /* only a tail shorter than a row is left out */
    if (!shuffle) {
      xd_loader_row(L, 3, tok, NULL);
      CHECK(tok[0] == 27 && tok[9] == 36);
    }
    free(as_target);
    free(seen_row);
    xd_loader_free(L);
  }
  /* no mask stored -> all ones */
  char **p2 = position_shards(dir, sizes, 3, 0);
  xd_loader_config c = {.seq_len = 4, .batch = 2, .seed = 1, .shuffle = 1, .rank = 0, .world = 1};
  xd_loader *L;
  xd_err e = {{0}};
  CHECKF(xd_loader_open_shards(&L, (const char *const *)p2, 3, &c, &e) == 0, "%s", e.msg);
  int32_t tok[10];
  uint8_t mask[10];
  xd_loader_next(L, tok, mask);
  for (int i = 0; i < 10; i++) CHECK(mask[i] == 1);
  CHECK(!xd_loader_has_mask(L));
  xd_loader_free(L);
  /* too little data for the ranks, bad configs */
  c.seq_len = 400;
  CHECK(xd_loader_open_shards(&L, (const char *const *)p2, 3, &c, &e) != 0 && strstr(e.msg, "rows"));
  c.seq_len = 4;
  c.rank = 2;
  c.world = 2;
  CHECK(xd_loader_open_shards(&L, (const char *const *)p2, 3, &c, &e) != 0 && strstr(e.msg, "rank"));
  free_paths(paths, 3);
  free_paths(p2, 3);
}

static void epoch_rows(xd_loader *L, uint64_t epoch, uint64_t *out) {
  for (uint64_t i = 0; i < xd_loader_rows_per_rank(L); i++) out[i] = xd_loader_row_index(L, epoch, i);
}

static void test_shuffle_deterministic(void) {
  const char *dir = test_tmpdir("data-shuf");
  const uint64_t sizes[1] = {5000};
  char **paths = position_shards(dir, sizes, 1, 0);
  xd_loader *A, *B, *C;
  xd_err e = {{0}};
  xd_loader_config c = {.seq_len = 8, .batch = 1, .seed = 42, .shuffle = 1, .rank = 0, .world = 1};
  CHECK(xd_loader_open_shards(&A, (const char *const *)paths, 1, &c, &e) == 0);
  CHECK(xd_loader_open_shards(&B, (const char *const *)paths, 1, &c, &e) == 0);
  c.seed = 43;
  CHECK(xd_loader_open_shards(&C, (const char *const *)paths, 1, &c, &e) == 0);
  const uint64_t n = xd_loader_rows_per_rank(A);
  uint64_t *a0 = xd_malloc(n * 8), *a1 = xd_malloc(n * 8), *b0 = xd_malloc(n * 8), *c0 = xd_malloc(n * 8);
  epoch_rows(A, 0, a0);
  epoch_rows(A, 1, a1);
  epoch_rows(B, 0, b0);
  epoch_rows(C, 0, c0);
  uint64_t same_b = 0, same_c = 0, same_e = 0, in_order = 0;
  for (uint64_t i = 0; i < n; i++) {
    same_b += a0[i] == b0[i];
    same_c += a0[i] == c0[i];
    same_e += a0[i] == a1[i];
    in_order += a0[i] == i;
  }
  CHECK(same_b == n);           /* same seed, same order */
  CHECKF(same_c < n / 10, "seeds 42 and 43 agree on %llu of %llu rows", (unsigned long long)same_c, (unsigned long long)n);
  CHECKF(same_e < n / 10, "epochs 0 and 1 agree on %llu rows", (unsigned long long)same_e);
  CHECK(in_order < n / 10);
  /* and it is a permutation */
  int *cnt = xd_calloc(n, sizeof(int));
  for (uint64_t i = 0; i < n; i++) cnt[a1[i]]++;
  for (uint64_t i = 0; i < n; i++) CHECK(cnt[i] == 1);
  free(cnt);
  free(a0); free(a1); free(b0); free(c0);
  xd_loader_free(A); xd_loader_free(B); xd_loader_free(C);
  free_paths(paths, 1);
}

static void test_rank_sharding(void) {
  const char *dir = test_tmpdir("data-rank");
  const uint64_t sizes[2] = {1200, 877};
  char **paths = position_shards(dir, sizes, 2, 0);
  for (int shuffle = 0; shuffle < 2; shuffle++) {
    const int world = 3;
    xd_loader *L[3];
    xd_err e = {{0}};
    for (int r = 0; r < world; r++) {
      xd_loader_config c = {.seq_len = 10, .batch = 2, .seed = 9, .shuffle = shuffle, .rank = r, .world = world};
      CHECKF(xd_loader_open_shards(&L[r], (const char *const *)paths, 2, &c, &e) == 0, "%s", e.msg);
    }
    const uint64_t rows = xd_loader_rows_total(L[0]), per = xd_loader_rows_per_rank(L[0]);
    CHECK(per == rows / world);
    for (uint64_t epoch = 0; epoch < 2; epoch++) {
      int *cnt = xd_calloc(rows, sizeof(int));
      for (int r = 0; r < world; r++) {
        CHECK(xd_loader_rows_per_rank(L[r]) == per); /* every rank the same count */
        for (uint64_t i = 0; i < per; i++) cnt[xd_loader_row_index(L[r], epoch, i)]++;
      }
      uint64_t covered = 0;
      for (uint64_t i = 0; i < rows; i++) {
        CHECK(cnt[i] <= 1); /* disjoint */
        covered += (uint64_t)cnt[i];
      }
      CHECK(covered == per * world && rows - covered < (uint64_t)world); /* complete up to rows % world */
      free(cnt);
    }
    /* the rows a rank's batches hold are the ones row_index names */
    int32_t tok[2 * 11];
    xd_loader_next(L[1], tok, NULL);
    CHECK(tok[0] == (int32_t)(xd_loader_row_index(L[1], 0, 0) * 10) && tok[11] == (int32_t)(xd_loader_row_index(L[1], 0, 1) * 10));
    for (int r = 0; r < world; r++) xd_loader_free(L[r]);
  }
  free_paths(paths, 2);
}

static void test_resume(void) {
  const char *dir = test_tmpdir("data-resume");
  const uint64_t sizes[2] = {333, 400};
  char **paths = position_shards(dir, sizes, 2, 1);
  xd_loader_config c = {.seq_len = 6, .batch = 5, .seed = 77, .shuffle = 1, .rank = 1, .world = 2};
  xd_loader *A, *B;
  xd_err e = {{0}};
  CHECK(xd_loader_open_shards(&A, (const char *const *)paths, 2, &c, &e) == 0);
  CHECK(xd_loader_open_shards(&B, (const char *const *)paths, 2, &c, &e) == 0);
  const size_t nb = 5 * 7;
  int32_t ta[5 * 7], tb[5 * 7];
  uint8_t ma[5 * 7], mb[5 * 7];
  /* 60 rows per rank per epoch, 5 per batch: stop mid-epoch-2 with a batch straddling epochs */
  for (int i = 0; i < 25; i++) xd_loader_next(A, ta, ma);
  xd_loader_state st;
  xd_loader_get_state(A, &st);
  CHECK(st.epoch == 2 || st.epoch == 1);
  /* the state goes through its 64-byte serialised form (the trainer's checkpoint blob) */
  uint8_t blob[XD_LOADER_STATE_BYTES];
  xd_loader_save(A, blob);
  blob[0] ^= 1;
  CHECK(xd_loader_restore(B, blob, &e) != 0 && strstr(e.msg, "magic"));
  blob[0] ^= 1;
  CHECKF(xd_loader_restore(B, blob, &e) == 0, "%s", e.msg);
  xd_loader_state st2;
  xd_loader_get_state(B, &st2);
  CHECK(memcmp(&st, &st2, sizeof st) == 0);
  int equal = 1;
  for (int i = 0; i < 40; i++) {
    xd_loader_next(A, ta, ma);
    xd_loader_next(B, tb, mb);
    equal &= memcmp(ta, tb, sizeof ta) == 0 && memcmp(ma, mb, nb) == 0;
  }
  CHECK(equal);
  /* restoring refuses a state from another configuration or other data */
  xd_loader_state bad = st;
  bad.rank = 0;
  CHECK(xd_loader_set_state(B, &bad, &e) != 0 && strstr(e.msg, "rank"));
  bad = st;
  bad.n_rows++;
  CHECK(xd_loader_set_state(B, &bad, &e) != 0 && strstr(e.msg, "rows"));
  bad = st;
  bad.seed++;
  CHECK(xd_loader_set_state(B, &bad, &e) != 0);
  xd_loader_free(A);
  xd_loader_free(B);
  free_paths(paths, 2);
}

/* ---- data prepare with a synthetic encoder: id = byte value, EOS 256, BOS 257 ---- */
typedef struct {
  _Atomic int pieces, bad_cuts; /* the encoder runs on several threads */
  int fail_on_x; /* simulate a tokenizer failure on text containing "\x01" */
} byte_enc;

static int byte_encode(void *ctx, const char *text, size_t len, int32_t **ids, size_t *n, xd_err *e) {
  byte_enc *b = ctx;
  if (b->fail_on_x && memchr(text, 1, len)) return xd_errf(e, "synthetic encoder failure");
  b->pieces++;
  if (len > 100000 && text[len - 1] != '\n') b->bad_cuts++; /* big .txt pieces end after a newline, but the last */
  *ids = xd_malloc(len * 4 + 4);
  for (size_t i = 0; i < len; i++) (*ids)[i] = (unsigned char)text[i];
  *n = len;
  return 0;
}
/* Chat: "<role>:" (mask 0) then content (mask 1 for assistant), then "\n" (mask 0). */
static int byte_chat(void *ctx, const xd_chat_message *m, int n, int32_t **ids, uint8_t **mask, size_t *len, xd_err *e) {
  size_t cap = 16;
  for (int i = 0; i < n; i++) cap += strlen(m[i].role) + strlen(m[i].content) + 2;
  *ids = xd_malloc(cap * 4);
  *mask = xd_malloc(cap);
  size_t k = 0;
  for (int i = 0; i < n; i++) {
    int asst = !strcmp(m[i].role, "assistant");
    for (const char *p = m[i].role; *p; p++) { (*ids)[k] = (unsigned char)*p; (*mask)[k++] = 0; }
    (*ids)[k] = ':'; (*mask)[k++] = 0;
    for (const char *p = m[i].content; *p; p++) { (*ids)[k] = (unsigned char)*p; (*mask)[k++] = (uint8_t)asst; }
    (*ids)[k] = '\n'; (*mask)[k++] = 0;
  }
  *len = k;
  return 0;
}

static int test_tok_encode(void *ctx, const char *text, size_t len, int32_t **ids, size_t *n, xd_err *e) {
  return xd_tokenizer_encode(ctx, text, len, 0, ids, n, e);
}

static xd_prepare_encoder byte_encoder(byte_enc *b) {
  xd_prepare_encoder enc = {.ctx = b, .encode = byte_encode, .chat = byte_chat, .vocab_size = 258, .eos_id = 256, .bos_id = 257,
                            .name = "bytes", .hash = "none"};
  return enc;
}

static int count_files(const char *dir, const char *suffix) {
  DIR *d = opendir(dir);
  int n = 0;
  if (!d) return -1;
  struct dirent *de;
  while ((de = readdir(d))) {
    size_t a = strlen(de->d_name), b = strlen(suffix);
    if (a >= b && !strcmp(de->d_name + a - b, suffix)) n++;
  }
  closedir(d);
  return n;
}

static void rm_dir_files(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *de;
  while ((de = readdir(d))) {
    if (de->d_name[0] == '.') continue;
    char *p = xd_path_join(dir, de->d_name);
    unlink(p);
    free(p);
  }
  closedir(d);
  rmdir(dir);
}

/* All tokens of a split, in stream order, read back through the shards of its manifest. */
static int32_t *split_tokens(const char *dir, const char *split, uint64_t *n, uint8_t **mask) {
  xd_loader *L;
  xd_err e = {{0}};
  xd_loader_config c = {.seq_len = 1, .batch = 1, .seed = 0, .shuffle = 0, .rank = 0, .world = 1};
  if (xd_loader_open(&L, dir, split, &c, &e) != 0) {
    fprintf(stderr, "  %s\n", e.msg);
    return NULL;
  }
  *n = xd_loader_tokens(L);
  int32_t *t = xd_malloc(*n * 4 + 8);
  *mask = xd_malloc(*n + 2);
  int32_t pair[2];
  uint8_t mp[2];
  for (uint64_t i = 0; i + 1 < *n; i++) { /* rows of 2 tokens with stride 1 */
    xd_loader_row(L, i, pair, mp);
    t[i] = pair[0];
    t[i + 1] = pair[1];
    (*mask)[i] = mp[0];
    (*mask)[i + 1] = mp[1];
  }
  xd_loader_free(L);
  return t;
}

static void test_prepare_synthetic(void) {
  const char *dir = test_tmpdir("data-prep");
  char *txt = tmp_path(dir, "big.txt"), *jl = tmp_path(dir, "docs.jsonl"), *gz = tmp_path(dir, "more.jsonl.gz");
  char *out = tmp_path(dir, "out"), *out2 = tmp_path(dir, "out2");
  /* a .txt of ~2.5 MB with varied lines, so it is read in several pieces */
  xd_rng r;
  xd_rng_seed(&r, 3);
  size_t tn = 2500000;
  char *t = xd_malloc(tn);
  for (size_t i = 0; i < tn; i++) {
    uint64_t x = xd_rng_u64(&r) % 40;
    t[i] = x == 0 ? '\n' : x == 1 ? ' ' : (char)('a' + x % 26);
  }
  CHECK(write_bytes(txt, t, tn) == 0);
  /* jsonl: text docs, a chat, a blank line, an empty text (skipped) */
  const char *jtext =
      "\xef\xbb\xbf{\"text\": \"hello world\"}\n" /* a byte-order mark is skipped */
      "\n"
      "{\"text\": \"second \\u00e9 doc\"}\n"
      "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"yo\"}]}\n"
      "{\"text\": \"\"}\n";
  CHECK(write_bytes(jl, jtext, strlen(jtext)) == 0);
  gzFile g = gzopen(gz, "wb");
  int n_gz = 300;
  for (int i = 0; i < n_gz; i++) gzprintf(g, "{\"text\": \"gz document %d with some words\"}\n", i);
  gzclose(g);
  const char *inputs[3] = {txt, jl, gz};
  byte_enc b = {0};
  xd_prepare_encoder enc = byte_encoder(&b);
  xd_prepare_opts o = {.out_dir = out, .inputs = inputs, .n_inputs = 3, .val_fraction = 0.25, .seed = 1, .shard_tokens = 100000, .add_bos = 0, .threads = 1};
  xd_prepare_stats st;
  xd_err e = {{0}};
  CHECKF(xd_prepare_run(&o, &enc, &st, &e) == 0, "%s", e.msg);
  const uint64_t n_docs = 1 + 3 + n_gz; /* the empty text is skipped */
  CHECK(st.docs[0] + st.docs[1] == n_docs && st.skipped_empty == 1);
  CHECK(st.docs[1] > 30 && st.docs[1] < 130); /* ~25% of 304 */
  CHECK(st.shards[0] >= 26);                    /* 2.5M tokens / 100k per shard */
  CHECK(b.pieces >= 3 + 3 + n_gz);
  CHECKF(b.bad_cuts <= 1, "%d .txt pieces cut elsewhere than after a newline", b.bad_cuts);
  /* tokens: every document's bytes + EOS; the chat is rendered with its mask */
  uint64_t expect = tn + 1 + strlen("hello world") + 1 + strlen("second \xc3\xa9 doc") + 1 + strlen("user:hi\nassistant:yo\n") + 1;
  for (int i = 0; i < n_gz; i++) {
    char buf[64];
    expect += (uint64_t)snprintf(buf, sizeof buf, "gz document %d with some words", i) + 1;
  }
  CHECKF(st.tokens[0] + st.tokens[1] == expect, "%llu tokens, expected %llu", (unsigned long long)(st.tokens[0] + st.tokens[1]), (unsigned long long)expect);
  /* read back: the stream of both splits, interleaved by the document split, is the input */
  uint64_t n0 = 0, n1 = 0;
  uint8_t *m0 = NULL, *m1 = NULL;
  int32_t *s0 = split_tokens(out, "train", &n0, &m0), *s1 = split_tokens(out, "val", &n1, &m1);
  CHECK(s0 && s1 && n0 == st.tokens[0] && n1 == st.tokens[1]);
  if (s0 && s1) {
    /* Find the big .txt document in whichever split it landed: its bytes, then EOS. */
    int32_t *s = n0 > tn ? s0 : s1;
    int ok = 1;
    for (size_t i = 0; i < tn && ok; i++) ok = s[i] == (unsigned char)t[i];
    CHECK(ok && s[tn] == 256);
    /* chat mask: "user:hi\n" 0, "assistant:" 0, "yo" 1, "\n" 0, EOS 0 */
    const char *chat = "user:hi\nassistant:yo\n";
    int found = 0;
    for (int sp = 0; sp < 2 && !found; sp++) {
      int32_t *q = sp ? s1 : s0;
      uint8_t *mq = sp ? m1 : m0;
      uint64_t nq = sp ? n1 : n0;
      for (uint64_t i = 0; i + 22 <= nq && !found; i++) {
        size_t k = 0;
        while (k < 21 && q[i + k] == (unsigned char)chat[k]) k++;
        if (k < 21) continue;
        found = 1;
        for (k = 0; k < 22; k++) CHECK(mq[i + k] == (k == 18 || k == 19));
        CHECK(q[i + 21] == 256);
      }
    }
    CHECK(found);
  }
  free(s0); free(s1); free(m0); free(m1);
  /* deterministic: a second run, other shard size, gives the same document split and tokens */
  /* and the same for any thread count */
  o.out_dir = out2;
  o.shard_tokens = 1 << 22;
  o.threads = 3;
  xd_prepare_stats st2;
  CHECKF(xd_prepare_run(&o, &enc, &st2, &e) == 0, "%s", e.msg);
  CHECK(st2.docs[0] == st.docs[0] && st2.tokens[1] == st.tokens[1] && st2.shards[0] == 1);
  uint64_t a = 0, bb = 0;
  uint8_t *ma = NULL, *mb = NULL;
  int32_t *va = split_tokens(out, "val", &a, &ma), *vb = split_tokens(out2, "val", &bb, &mb);
  CHECK(va && vb && a == bb && memcmp(va, vb, a * 4) == 0);
  free(va); free(vb); free(ma); free(mb);
  va = split_tokens(out, "train", &a, &ma);
  vb = split_tokens(out2, "train", &bb, &mb);
  CHECK(va && vb && a == bb && memcmp(va, vb, a * 4) == 0 && memcmp(ma, mb, a) == 0);
  free(va); free(vb); free(ma); free(mb);
  /* another seed: another split */
  o.seed = 2;
  o.force = 1;
  CHECKF(xd_prepare_run(&o, &enc, &st2, &e) == 0, "%s", e.msg);
  CHECK(st2.docs[1] != st.docs[1] || st2.tokens[1] != st.tokens[1]);
  /* an existing dataset is not overwritten without force */
  o.force = 0;
  CHECK(xd_prepare_run(&o, &enc, &st2, &e) != 0 && strstr(e.msg, "--force"));
  /* BOS when asked */
  o.force = 1;
  o.add_bos = 1;
  o.val_fraction = 0;
  o.inputs = (const char *const[]){jl};
  o.n_inputs = 1;
  CHECKF(xd_prepare_run(&o, &enc, &st2, &e) == 0, "%s", e.msg);
  int32_t *bt = split_tokens(out2, "train", &a, &ma);
  CHECK(bt && bt[0] == 257 && bt[1] == 'h' && st2.docs[1] == 0);
  free(bt); free(ma);
  free(t);
  rm_dir_files(out);
  rm_dir_files(out2);
  free(txt); free(jl); free(gz); free(out); free(out2);
}

static void test_prepare_bad_input(void) {
  const char *dir = test_tmpdir("data-prepbad");
  char *jl = tmp_path(dir, "bad.jsonl"), *ok = tmp_path(dir, "ok.jsonl"), *empty = tmp_path(dir, "empty.txt");
  char *out = tmp_path(dir, "out"), *gz = tmp_path(dir, "trunc.jsonl.gz"), *x = tmp_path(dir, "x.jsonl");
  /* many good documents first so shards are written before the error */
  FILE *f = fopen(ok, "w");
  for (int i = 0; i < 2000; i++) fprintf(f, "{\"text\": \"document number %d\"}\n", i);
  fclose(f);
  const char *bad = "{\"text\": \"fine\"}\n\n{\"text\": broken}\n";
  CHECK(write_bytes(jl, bad, strlen(bad)) == 0);
  CHECK(write_bytes(empty, "", 0) == 0);
  byte_enc b = {0};
  xd_prepare_encoder enc = byte_encoder(&b);
  xd_prepare_stats st;
  xd_err e = {{0}};
  xd_prepare_opts o = {.out_dir = out, .val_fraction = 0.1, .seed = 1, .shard_tokens = 5000};
  /* bad JSON: the line number, no shards and no manifest left behind */
  o.inputs = (const char *const[]){ok, jl};
  o.n_inputs = 2;
  CHECK(xd_prepare_run(&o, &enc, &st, &e) != 0 && strstr(e.msg, "bad.jsonl:3:") && !strchr(e.msg, '\n'));
  CHECK(count_files(out, ".xds") == 0 && count_files(out, "manifest.json") == 0 && count_files(out, "") == 2);
  /* missing input: refused before anything is written */
  o.inputs = (const char *const[]){ok, "/nonexistent/in.jsonl"};
  CHECK(xd_prepare_run(&o, &enc, &st, &e) != 0 && strstr(e.msg, "/nonexistent/in.jsonl"));
  /* unsupported extension */
  o.inputs = (const char *const[]){"tests/test.h"};
  o.n_inputs = 1;
  CHECK(xd_prepare_run(&o, &enc, &st, &e) != 0 && strstr(e.msg, "unsupported"));
  /* empty dataset */
  o.inputs = (const char *const[]){empty};
  CHECK(xd_prepare_run(&o, &enc, &st, &e) != 0 && strstr(e.msg, "no documents"));
  CHECK(count_files(out, ".xds") == 0 && count_files(out, "manifest.json") == 0);
  /* a JSON line without text/messages */
  const char *wrong = "{\"content\": \"x\"}\n";
  CHECK(write_bytes(x, wrong, strlen(wrong)) == 0);
  o.inputs = (const char *const[]){x};
  CHECK(xd_prepare_run(&o, &enc, &st, &e) != 0 && strstr(e.msg, "x.jsonl:1:") && strstr(e.msg, "\"text\""));
  /* truncated gzip */
  gzFile g = gzopen(gz, "wb");
  for (int i = 0; i < 3000; i++) gzprintf(g, "{\"text\": \"compressed %d\"}\n", i * 7919);
  gzclose(g);
  char *data;
  size_t size;
  CHECK(xd_read_file(gz, 1 << 20, &data, &size, &e) == 0);
  CHECK(write_bytes(gz, data, size / 2) == 0);
  free(data);
  o.inputs = (const char *const[]){gz};
  CHECK(xd_prepare_run(&o, &enc, &st, &e) != 0 && strstr(e.msg, "trunc.jsonl.gz"));
  CHECK(count_files(out, ".xds") == 0 && count_files(out, "manifest.json") == 0);
  /* an encoder failure names the line */
  b.fail_on_x = 1;
  const char *ctl = "{\"text\": \"a\"}\n{\"text\": \"b\\u0001\"}\n";
  CHECK(write_bytes(x, ctl, strlen(ctl)) == 0);
  o.inputs = (const char *const[]){x};
  CHECK(xd_prepare_run(&o, &enc, &st, &e) != 0 && strstr(e.msg, "x.jsonl:2:") && strstr(e.msg, "synthetic encoder failure"));
  /* a loader on an unfinished directory refuses it */
  xd_loader *L;
  xd_loader_config c = {.seq_len = 4, .batch = 1, .world = 1};
  CHECK(xd_loader_open(&L, out, "train", &c, &e) != 0 && strstr(e.msg, "manifest.json"));
  rm_dir_files(out);
  unlink(jl); unlink(ok); unlink(empty); unlink(gz); unlink(x);
  free(jl); free(ok); free(empty); free(out); free(gz); free(x);
}

/* The loader checks shards against the manifest: a replaced shard is refused. */
static void test_manifest_mismatch(void) {
  const char *dir = test_tmpdir("data-mani");
  char *jl = tmp_path(dir, "a.jsonl"), *out = tmp_path(dir, "out");
  FILE *f = fopen(jl, "w");
  for (int i = 0; i < 500; i++) fprintf(f, "{\"text\": \"doc %d\"}\n", i);
  fclose(f);
  byte_enc b = {0};
  xd_prepare_encoder enc = byte_encoder(&b);
  xd_prepare_stats st;
  xd_err e = {{0}};
  xd_prepare_opts o = {.out_dir = out, .inputs = (const char *const[]){jl}, .n_inputs = 1, .val_fraction = 0.2, .seed = 4, .shard_tokens = 1000};
  CHECKF(xd_prepare_run(&o, &enc, &st, &e) == 0, "%s", e.msg);
  xd_loader *L;
  xd_loader_config c = {.seq_len = 16, .batch = 2, .seed = 1, .shuffle = 1, .world = 1};
  CHECKF(xd_loader_open(&L, out, "val", &c, &e) == 0, "%s", e.msg);
  CHECK(!strcmp(xd_loader_tokenizer_hash(L), "none"));
  /* the tokenizer hash is FNV-1a 64 (published test vector: "foobar" -> 85944171f73967e8) */
  char *tj = tmp_path(dir, "tokenizer.json"), h[40];
  CHECK(write_bytes(tj, "foobar", 6) == 0);
  CHECK(xd_data_tokenizer_hash(dir, h, &e) == 0 && !strcmp(h, "fnv1a64:85944171f73967e8"));
  CHECK(xd_data_tokenizer_hash("/nonexistent", h, &e) != 0 && strstr(e.msg, "/nonexistent: cannot open"));
  unlink(tj);
  free(tj);
  xd_loader_free(L);
  /* swap two train shards: each is valid alone, but not what the manifest lists */
  char *p0 = tmp_path(out, "train-00000.xds"), *p1 = tmp_path(out, "train-00001.xds"), *pt = tmp_path(out, "t");
  CHECK(rename(p0, pt) == 0 && rename(p1, p0) == 0 && rename(pt, p1) == 0);
  CHECK(xd_loader_open(&L, out, "train", &c, &e) != 0 && strstr(e.msg, "train-00000.xds") && strstr(e.msg, "manifest"));
  rm_dir_files(out);
  unlink(jl);
  free(p0); free(p1); free(pt); free(jl); free(out);
}

/* The real pipeline on ../shared: C4 samples (.json.gz, one JSON object per line) and
 * tinyshakespeare (.txt, one document, read in 1 MB pieces) with the Llama 3 tokenizer. The
 * shards must hold exactly each document encoded whole by the tokenizer, then EOS; and the counts
 * must equal Hugging Face `tokenizers` 0.23 (Tokenizer.from_file(...).encode(text,
 * add_special_tokens=False)): 301,768 tokens for tinyshakespeare, 18,023 for the 40 C4 texts. */
static int32_t *append_ids(int32_t *s, uint64_t *n, const int32_t *ids, size_t k) {
  s = xd_realloc(s, (*n + k) * 4);
  memcpy(s + *n, ids, k * 4);
  *n += k;
  return s;
}

static void test_prepare_llama3(void) {
  if (!test_have_shared()) SKIP("../shared not found");
  const char *tokdir = "../shared/tokenizers/llama3";
  const char *c4[4] = {"../shared/corpora/c4-samples/c4-sample.01.json.gz", "../shared/corpora/c4-samples/c4-sample.02.json.gz",
                       "../shared/corpora/c4-samples/c4-sample.03.json.gz",
                       "../shared/corpora/c4-samples/c4_100_domains_5_www.theguardian.com_00000000.jsonl.gz"};
  const char *shakes = "../shared/corpora/tinyshakespeare/input.txt";
  xd_tokenizer *t;
  xd_err e = {{0}};
  if (xd_tokenizer_load(&t, tokdir, &e) != 0) {
    CHECKF(0, "%s", e.msg);
    return;
  }
  const int32_t eos = xd_tokenizer_eos_id(t);
  CHECK(eos == 128001 && xd_tokenizer_vocab_size(t) == 128256);
  /* expected stream, by the tokenizer directly */
  int32_t *want = NULL;
  uint64_t nw = 0, c4_tokens = 0, sh_tokens = 0;
  for (int f = 0; f < 4; f++) {
    gzFile g = gzopen(c4[f], "rb");
    CHECK(g != NULL);
    static char line[1 << 20];
    while (g && gzgets(g, line, sizeof line)) {
      cJSON *o = cJSON_Parse(line);
      const cJSON *tx = cJSON_GetObjectItemCaseSensitive(o, "text");
      CHECK(cJSON_IsString(tx));
      int32_t *ids;
      size_t n;
      CHECKF(xd_tokenizer_encode(t, tx->valuestring, strlen(tx->valuestring), 0, &ids, &n, &e) == 0, "%s", e.msg);
      want = append_ids(want, &nw, ids, n);
      want = append_ids(want, &nw, &eos, 1);
      c4_tokens += n;
      free(ids);
      cJSON_Delete(o);
    }
    if (g) gzclose(g);
  }
  char *text;
  size_t tn;
  CHECK(xd_read_file(shakes, 1 << 24, &text, &tn, &e) == 0);
  int32_t *ids;
  size_t n;
  CHECKF(xd_tokenizer_encode(t, text, tn, 0, &ids, &n, &e) == 0, "%s", e.msg);
  want = append_ids(want, &nw, ids, n);
  want = append_ids(want, &nw, &eos, 1);
  sh_tokens = n;
  free(ids);
  free(text);
  CHECKF(sh_tokens == 301768 && c4_tokens == 18023, "tokenizer gives %llu / %llu tokens, HF 301768 / 18023", (unsigned long long)sh_tokens, (unsigned long long)c4_tokens);

  const char *dir = test_tmpdir("data-llama3");
  char *out = tmp_path(dir, "out");
  const char *inputs[5] = {c4[0], c4[1], c4[2], c4[3], shakes};
  xd_prepare_encoder enc = {.ctx = t, .vocab_size = (uint64_t)xd_tokenizer_vocab_size(t), .eos_id = eos, .bos_id = xd_tokenizer_bos_id(t), .name = tokdir, .hash = "test"};
  enc.encode = test_tok_encode;
  xd_prepare_opts o = {.out_dir = out, .inputs = inputs, .n_inputs = 5, .val_fraction = 0, .seed = 1, .shard_tokens = 100000};
  xd_prepare_stats st;
  CHECKF(xd_prepare_run(&o, &enc, &st, &e) == 0, "%s", e.msg);
  CHECK(st.docs[0] == 41 && st.tokens[0] == nw && st.shards[0] == 4);
  uint64_t ng = 0;
  uint8_t *mask = NULL;
  int32_t *got = split_tokens(out, "train", &ng, &mask);
  CHECK(got && ng == nw);
  if (got && ng == nw) {
    uint64_t first_bad = nw;
    for (uint64_t i = 0; i < nw && first_bad == nw; i++)
      if (got[i] != want[i]) first_bad = i;
    CHECKF(first_bad == nw, "token %llu differs: %d vs %d", (unsigned long long)first_bad, got[first_bad], want[first_bad]);
  }
  /* with a validation split, the splits partition the documents */
  o.val_fraction = 0.2;
  o.force = 1;
  CHECKF(xd_prepare_run(&o, &enc, &st, &e) == 0, "%s", e.msg);
  CHECK(st.docs[0] + st.docs[1] == 41 && st.docs[1] > 0 && st.tokens[0] + st.tokens[1] == nw);
  free(got);
  free(mask);
  free(want);
  rm_dir_files(out);
  free(out);
  xd_tokenizer_free(t);
}

/* Chat documents through the real Llama 3 template: the shard holds exactly xd_chat_encode's ids
 * and loss mask, then EOS with mask 0. */
static int test_tok_chat(void *ctx, const xd_chat_message *m, int n, int32_t **ids, uint8_t **mask, size_t *len, xd_err *e) {
  return xd_chat_encode(ctx, m, n, 0, ids, mask, len, e);
}

static void test_prepare_llama3_chat(void) {
  if (!test_have_shared()) SKIP("../shared not found");
  xd_tokenizer *t;
  xd_err e = {{0}};
  if (xd_tokenizer_load(&t, "../shared/tokenizers/llama3", &e) != 0) {
    CHECKF(0, "%s", e.msg);
    return;
  }
  const char *dir = test_tmpdir("data-chat");
  char *jl = tmp_path(dir, "chat.jsonl"), *out = tmp_path(dir, "out");
  const char *lines =
      "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": \"What is 2+2?\"}, {\"role\": \"assistant\", \"content\": \"4\"}]}\n"
      "{\"text\": \"Plain text between chats.\"}\n"
      "{\"messages\": [{\"role\": \"user\", \"content\": \"Hi \\u00e9\"}, {\"role\": \"assistant\", \"content\": \"Hello!\"}, {\"role\": \"user\", \"content\": \"Bye\"}, {\"role\": \"assistant\", \"content\": \"Goodbye.\"}]}\n";
  CHECK(write_bytes(jl, lines, strlen(lines)) == 0);
  const int32_t eos = xd_tokenizer_eos_id(t);
  /* expected */
  int32_t *want = NULL;
  uint8_t *wmask = NULL;
  uint64_t nw = 0;
  const xd_chat_message c1[3] = {{"system", "Be brief."}, {"user", "What is 2+2?"}, {"assistant", "4"}};
  const xd_chat_message c2[4] = {{"user", "Hi \xc3\xa9"}, {"assistant", "Hello!"}, {"user", "Bye"}, {"assistant", "Goodbye."}};
  for (int d = 0; d < 3; d++) {
    int32_t *ids;
    uint8_t *mask = NULL;
    size_t n;
    if (d == 1) {
      const char *txt = "Plain text between chats.";
      CHECK(xd_tokenizer_encode(t, txt, strlen(txt), 0, &ids, &n, &e) == 0);
    } else {
      CHECKF(xd_chat_encode(t, d == 0 ? c1 : c2, d == 0 ? 3 : 4, 0, &ids, &mask, &n, &e) == 0, "%s", e.msg);
    }
    want = xd_realloc(want, (nw + n + 1) * 4);
    wmask = xd_realloc(wmask, nw + n + 1);
    memcpy(want + nw, ids, n * 4);
    if (mask) memcpy(wmask + nw, mask, n);
    else memset(wmask + nw, 1, n);
    want[nw + n] = eos;
    wmask[nw + n] = d == 1; /* EOS after a chat is not a target */
    nw += n + 1;
    free(ids);
    free(mask);
  }
  xd_prepare_encoder enc = {.ctx = t, .encode = test_tok_encode, .chat = test_tok_chat, .vocab_size = (uint64_t)xd_tokenizer_vocab_size(t),
                            .eos_id = eos, .bos_id = xd_tokenizer_bos_id(t), .name = "llama3", .hash = "test"};
  xd_prepare_opts o = {.out_dir = out, .inputs = (const char *const[]){jl}, .n_inputs = 1, .val_fraction = 0, .seed = 1, .shard_tokens = 1000};
  xd_prepare_stats st;
  CHECKF(xd_prepare_run(&o, &enc, &st, &e) == 0, "%s", e.msg);
  uint64_t ng = 0;
  uint8_t *gmask = NULL;
  int32_t *got = split_tokens(out, "train", &ng, &gmask);
  CHECK(got && ng == nw && st.docs[0] == 3);
  if (got && ng == nw) {
    CHECK(memcmp(got, want, nw * 4) == 0);
    CHECK(memcmp(gmask, wmask, nw) == 0);
    uint64_t ones = 0, zeros = 0;
    for (uint64_t i = 0; i < nw; i++) { if (wmask[i]) ones++; else zeros++; }
    CHECK(ones > 5 && zeros > 20); /* the mask is not trivial */
  }
  free(got); free(gmask); free(want); free(wmask);
  rm_dir_files(out);
  unlink(jl);
  free(jl); free(out);
  xd_tokenizer_free(t);
}

/* Which tokenizers may encode .txt documents in pieces, and that a SentencePiece-style one
 * (Llama 2: a "▁" is prepended to every encoded string) still gets exactly the whole-document
 * ids for tinyshakespeare. */
static void test_prepare_cut_safety(void) {
  if (!test_have_shared()) SKIP("../shared not found");
  const char *names[5] = {"llama3", "qwen3", "olmo2", "llama2", "mistral7b"};
  const int want_safe[5] = {1, 1, 1, 0, 0};
  for (int i = 0; i < 5; i++) {
    char path[128];
    snprintf(path, sizeof path, "../shared/tokenizers/%s", names[i]);
    xd_tokenizer *t;
    xd_err e = {{0}};
    if (xd_tokenizer_load(&t, path, &e) != 0) {
      CHECKF(0, "%s", e.msg);
      continue;
    }
    xd_prepare_encoder enc = {.ctx = t, .encode = test_tok_encode, .vocab_size = (uint64_t)xd_tokenizer_vocab_size(t),
                              .eos_id = xd_tokenizer_eos_id(t), .bos_id = xd_tokenizer_bos_id(t), .name = names[i], .hash = "test"};
    CHECKF(xd_prepare_cut_safe(&enc) == want_safe[i], "%s: cut_safe %d", names[i], xd_prepare_cut_safe(&enc));
    if (!strcmp(names[i], "llama2")) {
      const char *shakes = "../shared/corpora/tinyshakespeare/input.txt";
      char *text;
      size_t tn, n;
      int32_t *ids;
      CHECK(xd_read_file(shakes, 1 << 24, &text, &tn, &e) == 0);
      CHECK(xd_tokenizer_encode(t, text, tn, 0, &ids, &n, &e) == 0);
      const char *dir = test_tmpdir("data-cut");
      char *out = tmp_path(dir, "out");
      xd_prepare_opts o = {.out_dir = out, .inputs = (const char *const[]){shakes}, .n_inputs = 1, .shard_tokens = 1 << 20};
      xd_prepare_stats st;
      CHECKF(xd_prepare_run(&o, &enc, &st, &e) == 0, "%s", e.msg);
      uint64_t ng = 0;
      uint8_t *mask = NULL;
      int32_t *got = split_tokens(out, "train", &ng, &mask);
      CHECKF(got && ng == n + 1 && memcmp(got, ids, n * 4) == 0 && got[n] == enc.eos_id, "llama2: %llu tokens vs %zu + EOS",
             (unsigned long long)ng, n);
      free(got); free(mask); free(ids); free(text);
      rm_dir_files(out);
      free(out);
    }
    xd_tokenizer_free(t);
  }
}

int main(void) {
  RUN(test_shard_roundtrip);
  RUN(test_shard_corruption);
  RUN(test_packing_covers_every_token);
  RUN(test_shuffle_deterministic);
  RUN(test_rank_sharding);
  RUN(test_resume);
  RUN(test_prepare_synthetic);
  RUN(test_prepare_bad_input);
  RUN(test_manifest_mismatch);
  RUN(test_prepare_llama3);
  RUN(test_prepare_llama3_chat);
  RUN(test_prepare_cut_safety);
  return test_finish();
}
