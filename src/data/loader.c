#include "data/loader.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "data/shard.h"

struct xd_loader {
  xd_loader_config cfg;
  int n_shards;
  xd_shard *shards;
  uint64_t *starts; /* [n_shards + 1] stream offset of each shard's first token */
  uint64_t n_tokens, n_rows, rows_per_rank, vocab_size;
  int has_mask;
  uint64_t *perm;       /* [n_rows] row order of perm_epoch (NULL when not shuffling) */
  uint64_t perm_epoch;
  int perm_valid;
  uint64_t epoch, position;
  char tok_hash[64];
};

/* Seed of epoch e's permutation: mixes seed and epoch so nearby seeds/epochs are unrelated. */
static uint64_t epoch_seed(uint64_t seed, uint64_t epoch) {
  return seed * 0x9e3779b97f4a7c15ull ^ (epoch + 1) * 0xd1b54a32d192ed03ull;
}

static void build_perm(xd_loader *L, uint64_t epoch) {
  if (L->perm_valid && L->perm_epoch == epoch) return;
  for (uint64_t i = 0; i < L->n_rows; i++) L->perm[i] = i;
  xd_rng r;
  xd_rng_seed(&r, epoch_seed(L->cfg.seed, epoch));
  for (uint64_t i = L->n_rows; i > 1; i--) {
    /* Unbiased index in [0, i) by rejection. */
    const uint64_t lim = UINT64_MAX - UINT64_MAX % i;
    uint64_t x;
    do x = xd_rng_u64(&r); while (x >= lim);
    const uint64_t j = x % i, t = L->perm[i - 1];
    L->perm[i - 1] = L->perm[j];
    L->perm[j] = t;
  }
  L->perm_epoch = epoch;
  L->perm_valid = 1;
}

uint64_t xd_loader_row_index(xd_loader *L, uint64_t epoch, uint64_t position) {
  XD_CHECK(position < L->rows_per_rank);
  const uint64_t k = position * (uint64_t)L->cfg.world + (uint64_t)L->cfg.rank;
  if (!L->cfg.shuffle) return k;
  build_perm(L, epoch);
  return L->perm[k];
}

void xd_loader_row(const xd_loader *L, uint64_t row, int32_t *tokens, uint8_t *mask) {
  XD_CHECK(row < L->n_rows);
  uint64_t pos = row * (uint64_t)L->cfg.seq_len;
  size_t left = (size_t)L->cfg.seq_len + 1, done = 0;
  /* First shard holding pos: the last s with starts[s] <= pos (binary search). */
  int lo = 0, hi = L->n_shards - 1;
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (L->starts[mid] <= pos) lo = mid;
    else hi = mid - 1;
  }
  for (int s = lo; left > 0; s++) {
    XD_CHECK(s < L->n_shards);
    const uint64_t off = pos - L->starts[s], avail = L->shards[s].n_tokens - off;
    const size_t k = avail < left ? (size_t)avail : left;
    xd_shard_read(&L->shards[s], off, k, tokens ? tokens + done : NULL, mask ? mask + done : NULL);
    done += k;
    left -= k;
    pos += k;
  }
}

int xd_loader_next(xd_loader *L, int32_t *tokens, uint8_t *mask) {
  const size_t row_len = (size_t)L->cfg.seq_len + 1;
  for (int b = 0; b < L->cfg.batch; b++) {
    if (L->position >= L->rows_per_rank) {
      L->epoch++;
      L->position = 0;
    }
    const uint64_t row = xd_loader_row_index(L, L->epoch, L->position);
    xd_loader_row(L, row, tokens + (size_t)b * row_len, mask ? mask + (size_t)b * row_len : NULL);
    L->position++;
  }
  return 0;
}

uint64_t xd_loader_rows_total(const xd_loader *L) { return L->n_rows; }
uint64_t xd_loader_rows_per_rank(const xd_loader *L) { return L->rows_per_rank; }
uint64_t xd_loader_tokens(const xd_loader *L) { return L->n_tokens; }
uint64_t xd_loader_vocab_size(const xd_loader *L) { return L->vocab_size; }
int xd_loader_has_mask(const xd_loader *L) { return L->has_mask; }
const char *xd_loader_tokenizer_hash(const xd_loader *L) { return L->tok_hash; }

void xd_loader_get_state(const xd_loader *L, xd_loader_state *st) {
  memset(st, 0, sizeof *st);
  st->version = XD_LOADER_STATE_VERSION;
  st->seq_len = (uint32_t)L->cfg.seq_len;
  st->rank = (uint32_t)L->cfg.rank;
  st->world = (uint32_t)L->cfg.world;
  st->shuffle = (uint32_t)(L->cfg.shuffle != 0);
  st->seed = L->cfg.seed;
  st->n_rows = L->n_rows;
  st->epoch = L->epoch;
  st->position = L->position;
}

int xd_loader_set_state(xd_loader *L, const xd_loader_state *st, xd_err *e) {
  if (st->version != XD_LOADER_STATE_VERSION) return xd_errf(e, "loader state: version %u, expected %u", st->version, XD_LOADER_STATE_VERSION);
  if (st->seq_len != (uint32_t)L->cfg.seq_len || st->rank != (uint32_t)L->cfg.rank || st->world != (uint32_t)L->cfg.world ||
      st->shuffle != (uint32_t)(L->cfg.shuffle != 0) || st->seed != L->cfg.seed)
    return xd_errf(e, "loader state: saved for seq_len %u rank %u/%u seed %llu shuffle %u, loader has seq_len %d rank %d/%d seed %llu shuffle %d",
                   st->seq_len, st->rank, st->world, (unsigned long long)st->seed, st->shuffle, L->cfg.seq_len, L->cfg.rank,
                   L->cfg.world, (unsigned long long)L->cfg.seed, L->cfg.shuffle != 0);
  if (st->n_rows != L->n_rows)
    return xd_errf(e, "loader state: saved for data of %llu rows, this data has %llu", (unsigned long long)st->n_rows, (unsigned long long)L->n_rows);
  if (st->position > L->rows_per_rank) return xd_errf(e, "loader state: position %llu beyond the epoch's %llu rows", (unsigned long long)st->position, (unsigned long long)L->rows_per_rank);
  L->epoch = st->epoch;
  L->position = st->position;
  return 0;
}

static void put_le(uint8_t *p, uint64_t v, int n) { for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static uint64_t get_le(const uint8_t *p, int n) { uint64_t v = 0; for (int i = n - 1; i >= 0; i--) v = (v << 8) | p[i]; return v; }

void xd_loader_save(const xd_loader *L, void *buf) {
  xd_loader_state st;
  xd_loader_get_state(L, &st);
  uint8_t *p = buf;
  memset(p, 0, XD_LOADER_STATE_BYTES);
  memcpy(p, "XDLS", 4);
  put_le(p + 4, st.version, 4);
  put_le(p + 8, st.seq_len, 4);
  put_le(p + 12, st.rank, 4);
  put_le(p + 16, st.world, 4);
  put_le(p + 20, st.shuffle, 4);
  put_le(p + 24, st.seed, 8);
  put_le(p + 32, st.n_rows, 8);
  put_le(p + 40, st.epoch, 8);
  put_le(p + 48, st.position, 8);
}

int xd_loader_restore(xd_loader *L, const void *buf, xd_err *e) {
  const uint8_t *p = buf;
  if (memcmp(p, "XDLS", 4) != 0) return xd_errf(e, "loader state: bad magic (not a data-loader state)");
  xd_loader_state st = {0};
  st.version = (uint32_t)get_le(p + 4, 4);
  st.seq_len = (uint32_t)get_le(p + 8, 4);
  st.rank = (uint32_t)get_le(p + 12, 4);
  st.world = (uint32_t)get_le(p + 16, 4);
  st.shuffle = (uint32_t)get_le(p + 20, 4);
  st.seed = get_le(p + 24, 8);
  st.n_rows = get_le(p + 32, 8);
  st.epoch = get_le(p + 40, 8);
  st.position = get_le(p + 48, 8);
  return xd_loader_set_state(L, &st, e);
}

void xd_loader_free(xd_loader *L) {
  if (!L) return;
  for (int i = 0; i < L->n_shards; i++) xd_shard_close(&L->shards[i]);
  free(L->shards);
  free(L->starts);
  free(L->perm);
  free(L);
}

/* Shards are opened (and verified) first; the config is checked against the data here. */
static int loader_finish(xd_loader *L, const char *what, xd_err *e) {
  const xd_loader_config *c = &L->cfg;
  L->starts = xd_malloc(sizeof(uint64_t) * ((size_t)L->n_shards + 1));
  L->starts[0] = 0;
  for (int i = 0; i < L->n_shards; i++) {
    const xd_shard *s = &L->shards[i];
    if (i > 0 && s->vocab_size != L->vocab_size)
      return xd_errf(e, "%s: vocabulary size %llu differs from the first shard's %llu", s->path, (unsigned long long)s->vocab_size, (unsigned long long)L->vocab_size);
    L->vocab_size = s->vocab_size;
    L->has_mask |= s->mask != NULL;
    L->starts[i + 1] = L->starts[i] + s->n_tokens;
  }
  L->n_tokens = L->starts[L->n_shards];
  L->n_rows = L->n_tokens > 0 ? (L->n_tokens - 1) / (uint64_t)c->seq_len : 0;
  L->rows_per_rank = L->n_rows / (uint64_t)c->world;
  if (L->rows_per_rank == 0)
    return xd_errf(e, "%s: %llu tokens make %llu rows of %d+1 tokens, fewer than the %d ranks", what, (unsigned long long)L->n_tokens,
                   (unsigned long long)L->n_rows, c->seq_len, c->world);
  if (c->shuffle) L->perm = xd_malloc(sizeof(uint64_t) * (size_t)L->n_rows);
  return 0;
}

static int check_config(const xd_loader_config *c, xd_err *e) {
  if (c->seq_len < 1) return xd_errf(e, "loader: seq_len %d must be >= 1", c->seq_len);
  if (c->batch < 1) return xd_errf(e, "loader: batch %d must be >= 1", c->batch);
  if (c->world < 1 || c->rank < 0 || c->rank >= c->world) return xd_errf(e, "loader: rank %d is not in [0, world %d)", c->rank, c->world);
  return 0;
}

int xd_loader_open_shards(xd_loader **out, const char *const *paths, int n_paths, const xd_loader_config *cfg, xd_err *e) {
  *out = NULL;
  if (check_config(cfg, e) != 0) return -1;
  if (n_paths < 1) return xd_errf(e, "loader: no shards given");
  xd_loader *L = xd_calloc(1, sizeof *L);
  L->cfg = *cfg;
  L->shards = xd_calloc((size_t)n_paths, sizeof(xd_shard));
  for (int i = 0; i < n_paths; i++) {
    if (xd_shard_open(&L->shards[i], paths[i], 1, e) != 0) {
      xd_loader_free(L);
      return -1;
    }
    L->n_shards++;
  }
  if (loader_finish(L, paths[0], e) != 0) {
    xd_loader_free(L);
    return -1;
  }
  *out = L;
  return 0;
}

int xd_loader_open(xd_loader **out, const char *dir, const char *split, const xd_loader_config *cfg, xd_err *e) {
  *out = NULL;
  if (check_config(cfg, e) != 0) return -1;
  char *mpath = xd_path_join(dir, "manifest.json"), *text = NULL;
  if (!xd_file_exists(mpath)) {
    int rc = xd_errf(e, "%s: no manifest.json (not a `data prepare` output, or an unfinished one)", dir);
    free(mpath);
    return rc;
  }
  if (xd_read_file(mpath, 256u << 20, &text, NULL, e) != 0) {
    free(mpath);
    return -1;
  }
  cJSON *root = cJSON_Parse(text);
  free(text);
  int rc = 0;
  xd_loader *L = NULL;
  const cJSON *shards = NULL;
  if (!root) {
    rc = xd_errf(e, "%s: not valid JSON", mpath);
    goto done;
  }
  const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
  const cJSON *spl = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "splits"), split);
  shards = cJSON_GetObjectItemCaseSensitive(spl, "shards");
  if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "xdistill-tokens") != 0) {
    rc = xd_errf(e, "%s: not an xdistill token manifest", mpath);
    goto done;
  }
  if (!cJSON_IsArray(shards) || cJSON_GetArraySize(shards) < 1) {
    rc = xd_errf(e, "%s: split '%s' has no shards", mpath, split);
    goto done;
  }
  L = xd_calloc(1, sizeof *L);
  L->cfg = *cfg;
  const cJSON *th = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "tokenizer"), "hash");
  if (cJSON_IsString(th)) snprintf(L->tok_hash, sizeof L->tok_hash, "%s", th->valuestring);
  const int n = cJSON_GetArraySize(shards);
  L->shards = xd_calloc((size_t)n, sizeof(xd_shard));
  const cJSON *it;
  cJSON_ArrayForEach(it, shards) {
    const cJSON *file = cJSON_GetObjectItemCaseSensitive(it, "file");
    const cJSON *tok = cJSON_GetObjectItemCaseSensitive(it, "tokens");
    const cJSON *crc = cJSON_GetObjectItemCaseSensitive(it, "checksum");
    if (!cJSON_IsString(file) || strchr(file->valuestring, '/') || !cJSON_IsNumber(tok) || !cJSON_IsString(crc)) {
      rc = xd_errf(e, "%s: malformed shard entry in split '%s'", mpath, split);
      goto done;
    }
    char *p = xd_path_join(dir, file->valuestring);
    rc = xd_shard_open(&L->shards[L->n_shards], p, 1, e);
    free(p);
    if (rc != 0) goto done;
    const xd_shard *s = &L->shards[L->n_shards++];
    char hex[16];
    snprintf(hex, sizeof hex, "%08x", s->checksum);
    if ((double)s->n_tokens != tok->valuedouble || strcmp(hex, crc->valuestring) != 0) {
      rc = xd_errf(e, "%s: does not match manifest.json (tokens or checksum differ: stale or replaced shard)", s->path);
      goto done;
    }
  }
  rc = loader_finish(L, mpath, e);
done:
  cJSON_Delete(root);
  free(mpath);
  if (rc != 0) xd_loader_free(L);
  else *out = L;
  return rc;
}
