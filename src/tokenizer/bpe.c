/* BPE core: hash maps, UTF-8 helpers, the merge loop (priority queue on (rank, position),
 * the same order as HF `tokenizers`: lowest rank first, leftmost on ties) and a per-call
 * word cache (no global state; the tokenizer itself stays read-only and thread-safe). */
#include <stdlib.h>
#include <string.h>
#include "tokenizer/tok_internal.h"

/* ---- hashing ------------------------------------------------------------- */
static inline uint64_t rd64(const char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint64_t mix64(uint64_t x) {
  x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
  return x;
}
uint64_t tok_hash(const char *k, size_t len) {
  uint64_t h = 0x9E3779B97F4A7C15ULL ^ (len * 0x100000001B3ULL);
  size_t i = 0;
  for (; i + 8 <= len; i += 8) h = (h ^ mix64(rd64(k + i))) * 0x100000001B3ULL;
  uint64_t tail = 0;
  for (size_t j = 0; i < len; i++, j++) tail |= (uint64_t)(uint8_t)k[i] << (8 * j);
  return mix64(h ^ tail);
}

static size_t pow2_at_least(size_t n) {
  size_t c = 16;
  while (c < n) c <<= 1;
  return c;
}

void tok_strmap_init(tok_strmap *m, size_t expect) {
  memset(m, 0, sizeof *m);
  size_t slots = pow2_at_least(expect * 2 + 16);
  m->slots = xd_calloc(slots, sizeof *m->slots);
  m->mask = slots - 1;
  m->ecap = expect + 16;
  m->ents = xd_malloc(m->ecap * sizeof *m->ents);
  m->arena_cap = expect * 8 + 64;
  m->arena = xd_malloc(m->arena_cap);
}
void tok_strmap_free(tok_strmap *m) {
  free(m->arena); free(m->ents); free(m->slots);
  memset(m, 0, sizeof *m);
}
static inline uint64_t slot_of(size_t e, uint64_t h) { return ((uint64_t)(e + 1) << 32) | (h >> 32); }
static void strmap_rehash(tok_strmap *m) {
  size_t slots = (m->mask + 1) * 2;
  free(m->slots);
  m->slots = xd_calloc(slots, sizeof *m->slots);
  m->mask = slots - 1;
  for (size_t e = 0; e < m->n; e++) {
    size_t i = m->ents[e].hash & m->mask;
    while (m->slots[i]) i = (i + 1) & m->mask;
    m->slots[i] = slot_of(e, m->ents[e].hash);
  }
}
static size_t strmap_find(const tok_strmap *m, const char *k, size_t len, uint64_t h) {
  size_t i = h & m->mask;
  uint32_t tag = (uint32_t)(h >> 32);
  for (;;) {
    uint64_t s = m->slots[i];
    if (!s) return i;
    if ((uint32_t)s == tag) {
      const tok_strent *en = &m->ents[(s >> 32) - 1];
      if (en->hash == h && en->len == len && !memcmp(m->arena + en->off, k, len)) return i;
    }
    i = (i + 1) & m->mask;
  }
}
void tok_strmap_put(tok_strmap *m, const char *k, size_t len, int32_t v) {
  uint64_t h = tok_hash(k, len);
  size_t i = strmap_find(m, k, len, h);
  if (m->slots[i]) { m->ents[(m->slots[i] >> 32) - 1].val = v; return; }
  if (m->n == m->ecap) {
    m->ecap *= 2;
    m->ents = xd_realloc(m->ents, m->ecap * sizeof *m->ents);
  }
  while (m->arena_len + len + 1 > m->arena_cap) {
    m->arena_cap *= 2;
    m->arena = xd_realloc(m->arena, m->arena_cap);
  }
  XD_CHECK(m->arena_len + len < UINT32_MAX);
  memcpy(m->arena + m->arena_len, k, len);
  size_t e = m->n++;
  m->ents[e] = (tok_strent){h, (uint32_t)m->arena_len, (uint32_t)len, v};
  m->arena_len += len;
  m->slots[i] = slot_of(e, h);
  if (m->n * 2 > m->mask + 1) strmap_rehash(m);
}
int tok_strmap_get(const tok_strmap *m, const char *k, size_t len, int32_t *v) {
  if (!m->slots) return 0;
  size_t i = strmap_find(m, k, len, tok_hash(k, len));
  if (!m->slots[i]) return 0;
  *v = m->ents[(m->slots[i] >> 32) - 1].val;
  return 1;
}

void tok_pairmap_init(tok_pairmap *m, size_t expect) {
  size_t slots = pow2_at_least(expect * 2 + 16);
  m->ents = xd_calloc(slots, sizeof *m->ents);
  m->mask = slots - 1;
  m->n = 0;
}
void tok_pairmap_free(tok_pairmap *m) {
  free(m->ents);
  memset(m, 0, sizeof *m);
}
static inline uint64_t pair_key(int32_t a, int32_t b) { return (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1; }
void tok_pairmap_put(tok_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t out) {
  if ((m->n + 1) * 2 > m->mask + 1) { /* grow */
    tok_pairmap old = *m;
    tok_pairmap_init(m, (old.mask + 1));
    for (size_t i = 0; i <= old.mask; i++)
      if (old.ents[i].key) {
        uint64_t k = old.ents[i].key - 1;
        tok_pairmap_put(m, (int32_t)(k >> 32), (int32_t)(uint32_t)k, old.ents[i].rank, old.ents[i].out);
      }
    tok_pairmap_free(&old);
  }
  uint64_t k = pair_key(a, b);
  size_t i = mix64(k) & m->mask;
  while (m->ents[i].key && m->ents[i].key != k) i = (i + 1) & m->mask;
  if (!m->ents[i].key) { m->ents[i].key = k; m->n++; }
  m->ents[i].rank = rank;
  m->ents[i].out = out;
}
int tok_pairmap_get(const tok_pairmap *m, int32_t a, int32_t b, int32_t *rank, int32_t *out) {
  if (!m->ents) return 0;
  uint64_t k = pair_key(a, b);
  size_t i = mix64(k) & m->mask;
  for (;;) {
    const tok_pairent *en = &m->ents[i];
    if (en->key == k) { *rank = en->rank; *out = en->out; return 1; }
    if (!en->key) return 0;
    i = (i + 1) & m->mask;
  }
}

/* ---- UTF-8 ---------------------------------------------------------------- */
/* Length of the valid sequence at s, or 0 when invalid; *bad = length of the maximal
 * invalid subpart to replace by one U+FFFD (W3C / Rust from_utf8_lossy / Python policy). */
static size_t utf8_seq(const uint8_t *s, size_t len, size_t *bad) {
  uint8_t c = s[0];
  *bad = 1;
  if (c < 0x80) return 1;
  size_t need;
  uint8_t lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) need = 1;
  else if (c == 0xE0) { need = 2; lo = 0xA0; }
  else if (c >= 0xE1 && c <= 0xEC) need = 2;
  else if (c == 0xED) { need = 2; hi = 0x9F; }
  else if (c >= 0xEE && c <= 0xEF) need = 2;
  else if (c == 0xF0) { need = 3; lo = 0x90; }
  else if (c >= 0xF1 && c <= 0xF3) need = 3;
  else if (c == 0xF4) { need = 3; hi = 0x8F; }
  else return 0;
  for (size_t i = 1; i <= need; i++) {
    if (i >= len) { *bad = i; return 0; }
    uint8_t d = s[i];
    if (i == 1 ? (d < lo || d > hi) : (d < 0x80 || d > 0xBF)) { *bad = i; return 0; }
  }
  return need + 1;
}
int tok_utf8_valid(const char *s, size_t len) {
  const uint8_t *p = (const uint8_t *)s;
  size_t i = 0, bad;
  while (i < len) {
    if (p[i] < 0x80) { i++; continue; }
    size_t k = utf8_seq(p + i, len - i, &bad);
    if (!k) return 0;
    i += k;
  }
  return 1;
}
char *tok_utf8_lossy(const char *s, size_t len, size_t *out_len) {
  const uint8_t *p = (const uint8_t *)s;
  char *o = xd_malloc(len * 3 + 1);
  size_t i = 0, n = 0, bad;
  while (i < len) {
    size_t k = utf8_seq(p + i, len - i, &bad);
    if (k) { memcpy(o + n, p + i, k); n += k; i += k; }
    else { memcpy(o + n, "\xEF\xBF\xBD", 3); n += 3; i += bad; }
  }
  o[n] = 0;
  *out_len = n;
  return o;
}
int tok_utf8_next(const char *s, size_t len, uint32_t *cp) {
  const uint8_t *p = (const uint8_t *)s;
  uint8_t c = p[0];
  if (c < 0x80 || len < 2) { *cp = c; return 1; }
  if (c < 0xE0) { *cp = ((uint32_t)(c & 0x1F) << 6) | (p[1] & 0x3F); return 2; }
  if (c < 0xF0 || len < 4) {
    if (len < 3) { *cp = c; return 1; }
    *cp = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
    return 3;
  }
  *cp = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(p[1] & 0x3F) << 12) | ((uint32_t)(p[2] & 0x3F) << 6) | (p[3] & 0x3F);
  return 4;
}
int tok_utf8_put(uint32_t cp, char *o) {
  if (cp < 0x80) { o[0] = (char)cp; return 1; }
  if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
  if (cp < 0x10000) {
    o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* GPT-2 bytes_to_unicode: printable bytes map to themselves, the other 68 to 256 + k. */
static int byte_printable(int b) { return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255); }
/* The 68 other bytes, in order: 0..32 (33), 127..160 (34), 173 (1) -> 256 + k. */
uint32_t tok_byte_to_cp(uint8_t b) {
  if (byte_printable(b)) return b;
  if (b <= 32) return 256u + b;
  if (b >= 127 && b <= 160) return 256u + 33u + (uint32_t)(b - 127);
  return 256u + 67u; /* 173 */
}
int tok_cp_to_byte(uint32_t cp) {
  if (cp < 256) return byte_printable((int)cp) ? (int)cp : -1;
  if (cp >= 256 + 68) return -1;
  uint32_t k = cp - 256;
  if (k < 33) return (int)k;
  if (k < 67) return (int)(127 + k - 33);
  return 173;
}

/* ---- BPE ------------------------------------------------------------------- */
typedef struct { int32_t rank, pos, out, a, b; } heap_ent; /* pair (a, b) at pos merges to out */

struct tok_work {
  int32_t *id, *prev, *next;
  size_t cap;
  heap_ent *heap;
  size_t hn, hcap;
  tok_strmap cache;         /* word -> index into cache_off/cache_cnt */
  uint32_t *cache_off, *cache_cnt;
  size_t cache_n, cache_cap;
  int32_t *cache_ids;
  size_t cache_ids_n, cache_ids_cap;
  char *tmp;                /* prefixed/suffixed symbol strings */
  size_t tmp_cap;
};

tok_work *tok_work_new(void) {
  tok_work *w = xd_calloc(1, sizeof *w);
  tok_strmap_init(&w->cache, 64);
  return w;
}
void tok_work_free(tok_work *w) {
  if (!w) return;
  free(w->id); free(w->prev); free(w->next); free(w->heap);
  tok_strmap_free(&w->cache);
  free(w->cache_off); free(w->cache_cnt); free(w->cache_ids); free(w->tmp);
  free(w);
}
void tok_push_id(int32_t **out, size_t *n, size_t *cap, int32_t id) {
  if (*n == *cap) {
    *cap = *cap ? *cap * 2 : 256;
    *out = xd_realloc(*out, *cap * sizeof **out);
  }
  (*out)[(*n)++] = id;
}

static inline int heap_less(heap_ent a, heap_ent b) { return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos); }
static void heap_push(tok_work *w, heap_ent x) {
  if (w->hn == w->hcap) {
    w->hcap = w->hcap ? w->hcap * 2 : 64;
    w->heap = xd_realloc(w->heap, w->hcap * sizeof *w->heap);
  }
  size_t i = w->hn++;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!heap_less(x, w->heap[p])) break;
    w->heap[i] = w->heap[p];
    i = p;
  }
  w->heap[i] = x;
}
static heap_ent heap_pop(tok_work *w) {
  heap_ent top = w->heap[0], x = w->heap[--w->hn];
  size_t i = 0;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= w->hn) break;
    if (c + 1 < w->hn && heap_less(w->heap[c + 1], w->heap[c])) c++;
    if (!heap_less(w->heap[c], x)) break;
    w->heap[i] = w->heap[c];
    i = c;
  }
  if (w->hn) w->heap[i] = x;
  return top;
}

static void sym_push(tok_work *w, size_t *n, int32_t id) {
  if (*n == w->cap) {
    w->cap = w->cap ? w->cap * 2 : 256;
    w->id = xd_realloc(w->id, w->cap * sizeof *w->id);
    w->prev = xd_realloc(w->prev, w->cap * sizeof *w->prev);
    w->next = xd_realloc(w->next, w->cap * sizeof *w->next);
  }
  w->id[(*n)++] = id;
}

/* Look up a symbol string with the optional continuing-subword prefix / end-of-word suffix. */
static int lookup_affixed(const xd_tokenizer *t, tok_work *w, const char *s, size_t len, int first, int last,
                          int32_t *id) {
  size_t pl = first ? 0 : t->cont_prefix_len, sl = last ? t->eow_suffix_len : 0;
  if (!pl && !sl) return tok_strmap_get(&t->vocab, s, len, id);
  size_t need = pl + len + sl;
  if (need > w->tmp_cap) { w->tmp_cap = need * 2; w->tmp = xd_realloc(w->tmp, w->tmp_cap); }
  if (pl) memcpy(w->tmp, t->cont_prefix, pl);
  memcpy(w->tmp + pl, s, len);
  if (sl) memcpy(w->tmp + pl + len, t->eow_suffix, sl);
  return tok_strmap_get(&t->vocab, w->tmp, need, id);
}

/* Initial symbols of a word: bytes (byte-level) or characters, with byte fallback / unk. */
static size_t word_symbols(const xd_tokenizer *t, tok_work *w, const char *s, size_t len) {
  size_t n = 0;
  if (t->byte_level) {
    for (size_t i = 0; i < len; i++) {
      int32_t id = t->byte_id[(uint8_t)s[i]];
      if (id >= 0) sym_push(w, &n, id);
    }
    return n;
  }
  int last_unk = 0;
  for (size_t i = 0; i < len;) {
    uint32_t cp;
    size_t k = (size_t)tok_utf8_next(s + i, len - i, &cp);
    int32_t id;
    if (lookup_affixed(t, w, s + i, k, i == 0, i + k == len, &id)) {
      sym_push(w, &n, id);
      last_unk = 0;
    } else {
      int done = 0;
      if (t->byte_fallback) {
        int ok = 1;
        for (size_t j = 0; j < k; j++) ok &= t->byte_fb_id[(uint8_t)s[i + j]] >= 0;
        if (ok) {
          for (size_t j = 0; j < k; j++) sym_push(w, &n, t->byte_fb_id[(uint8_t)s[i + j]]);
          done = 1;
          last_unk = 0;
        }
      }
      if (!done && t->unk_id >= 0) {
        if (!(t->fuse_unk && last_unk)) sym_push(w, &n, t->unk_id);
        last_unk = 1;
      }
    }
    i += k;
  }
  return n;
}

static void bpe_merge(const xd_tokenizer *t, tok_work *w, size_t n) {
  for (size_t i = 0; i < n; i++) { w->prev[i] = (int32_t)i - 1; w->next[i] = i + 1 < n ? (int32_t)i + 1 : -1; }
  if (n < 2) return;
  w->hn = 0;
  int32_t rank, out;
  for (size_t i = 0; i + 1 < n; i++)
    if (tok_pairmap_get(&t->merges, w->id[i], w->id[i + 1], &rank, &out))
      heap_push(w, (heap_ent){rank, (int32_t)i, out, w->id[i], w->id[i + 1]});
  while (w->hn) {
    heap_ent top = heap_pop(w);
    int32_t p = top.pos;
    if (w->id[p] < 0) continue; /* merged away */
    int32_t r = w->next[p];
    if (r < 0) continue;
    /* HF's validity test: the pair now at p merges to the same token. The ids are usually
     * unchanged (no lookup needed); otherwise look the new pair up, as HF does. */
    if (!(w->id[p] == top.a && w->id[r] == top.b) &&
        (!tok_pairmap_get(&t->merges, w->id[p], w->id[r], &rank, &out) || out != top.out)) continue;
    w->id[p] = top.out;
    w->id[r] = -1;
    w->next[p] = w->next[r];
    if (w->next[r] >= 0) w->prev[w->next[r]] = p;
    if (w->prev[p] >= 0 && tok_pairmap_get(&t->merges, w->id[w->prev[p]], w->id[p], &rank, &out))
      heap_push(w, (heap_ent){rank, w->prev[p], out, w->id[w->prev[p]], w->id[p]});
    if (w->next[p] >= 0 && tok_pairmap_get(&t->merges, w->id[p], w->id[w->next[p]], &rank, &out))
      heap_push(w, (heap_ent){rank, p, out, w->id[p], w->id[w->next[p]]});
  }
}

#define CACHE_MAX_WORD 128
void tok_bpe_word(const xd_tokenizer *t, tok_work *w, const char *s, size_t len, int32_t **out, size_t *n,
                  size_t *cap) {
  if (!len) return;
  int32_t id;
  if (t->ignore_merges) {
    if (t->byte_level ? tok_strmap_get(&t->raw_vocab, s, len, &id) : tok_strmap_get(&t->vocab, s, len, &id)) {
      tok_push_id(out, n, cap, id);
      return;
    }
  }
  int cacheable = len <= CACHE_MAX_WORD;
  if (cacheable && tok_strmap_get(&w->cache, s, len, &id)) {
    for (uint32_t i = 0; i < w->cache_cnt[id]; i++) tok_push_id(out, n, cap, w->cache_ids[w->cache_off[id] + i]);
    return;
  }
  size_t ns = word_symbols(t, w, s, len);
  bpe_merge(t, w, ns);
  size_t start = *n;
  for (size_t i = 0; i < ns; i++)
    if (w->id[i] >= 0) tok_push_id(out, n, cap, w->id[i]);
  if (!cacheable) return;
  size_t cnt = *n - start;
  if (w->cache_n == w->cache_cap) {
    w->cache_cap = w->cache_cap ? w->cache_cap * 2 : 1024;
    w->cache_off = xd_realloc(w->cache_off, w->cache_cap * sizeof *w->cache_off);
    w->cache_cnt = xd_realloc(w->cache_cnt, w->cache_cap * sizeof *w->cache_cnt);
  }
  while (w->cache_ids_n + cnt > w->cache_ids_cap) {
    w->cache_ids_cap = w->cache_ids_cap ? w->cache_ids_cap * 2 : 4096;
    w->cache_ids = xd_realloc(w->cache_ids, w->cache_ids_cap * sizeof *w->cache_ids);
  }
  if (cnt) memcpy(w->cache_ids + w->cache_ids_n, *out + start, cnt * sizeof **out);
  w->cache_off[w->cache_n] = (uint32_t)w->cache_ids_n;
  w->cache_cnt[w->cache_n] = (uint32_t)cnt;
  tok_strmap_put(&w->cache, s, len, (int32_t)w->cache_n);
  w->cache_n++;
  w->cache_ids_n += cnt;
}
