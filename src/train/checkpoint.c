#include "train/checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

/* Layout (little-endian, no padding; see docs/checkpoint-format.md):
 *   header [128 bytes] | loader state [loader_size] | tensor table [table_bytes] |
 *   tensor data: per tensor data, m, v [3 * numel f32] | trailer: crc32 u64, "XDCKEND\0" */
#define CK_MAGIC "XDTRCKPT"
#define CK_END "XDCKEND"
#define CK_HEADER 128
#define CK_TRAILER 16
#define CK_MAX_NAME 1000

static void put_u32(uint8_t *b, uint32_t x) { for (int i = 0; i < 4; i++) b[i] = (uint8_t)(x >> (8 * i)); }
static void put_u64(uint8_t *b, uint64_t x) { for (int i = 0; i < 8; i++) b[i] = (uint8_t)(x >> (8 * i)); }
static uint32_t get_u32(const uint8_t *b) { uint32_t x = 0; for (int i = 3; i >= 0; i--) x = (x << 8) | b[i]; return x; }
static uint64_t get_u64(const uint8_t *b) { uint64_t x = 0; for (int i = 7; i >= 0; i--) x = (x << 8) | b[i]; return x; }

static int host_is_le(void) {
  const uint16_t one = 1;
  uint8_t b;
  memcpy(&b, &one, 1);
  return b == 1;
}

typedef struct {
  xd_atomic_file f;
  uLong crc;
} ck_writer;

static int ck_write(ck_writer *w, const void *data, size_t n, xd_err *e) {
  const uint8_t *p = data;
  for (size_t done = 0; done < n;) { /* zlib's crc32 takes a uInt length */
    size_t k = n - done > (1u << 30) ? (1u << 30) : n - done;
    w->crc = crc32(w->crc, p + done, (uInt)k);
    done += k;
  }
  return xd_atomic_write(&w->f, data, n, e);
}

int xd_ckpt_save(const char *path, const xd_params *p, const xd_ckpt_state *s, xd_err *e) {
  XD_CHECK(host_is_le()); /* floats are written in host order */
  /* tensor table */
  size_t tbytes = 0;
  uint64_t nt = 0;
  for (int i = 0; i < p->n; i++)
    if (p->t[i].trainable) {
      tbytes += 8 + strlen(p->t[i].name) + 8 * (size_t)p->t[i].ndim;
      nt++;
    }
  uint8_t *table = xd_malloc(tbytes), *q = table;
  for (int i = 0; i < p->n; i++) {
    const xd_param_info *t = &p->t[i];
    if (!t->trainable) continue;
    size_t nl = strlen(t->name);
    put_u32(q, (uint32_t)nl);
    put_u32(q + 4, (uint32_t)t->ndim);
    memcpy(q + 8, t->name, nl);
    q += 8 + nl;
    for (int d = 0; d < t->ndim; d++, q += 8) put_u64(q, (uint64_t)t->shape[d]);
  }
  uint8_t h[CK_HEADER] = {0};
  memcpy(h, CK_MAGIC, 8);
  put_u32(h + 8, XD_CKPT_VERSION);
  put_u32(h + 12, CK_HEADER);
  put_u64(h + 16, s->step);
  put_u64(h + 24, s->adam_t);
  put_u64(h + 32, s->tokens_seen);
  put_u64(h + 40, s->skipped_total);
  put_u64(h + 48, s->consecutive_skips);
  for (int i = 0; i < 4; i++) put_u64(h + 56 + 8 * i, s->rng.s[i]);
  put_u64(h + 88, s->config_hash);
  put_u64(h + 96, (uint64_t)s->loader_size);
  put_u64(h + 104, nt);
  put_u64(h + 112, (uint64_t)tbytes);

  ck_writer w = {.crc = crc32(0L, Z_NULL, 0)};
  if (xd_atomic_open(&w.f, path, e) != 0) {
    free(table);
    return -1;
  }
  int rc = ck_write(&w, h, sizeof h, e);
  if (rc == 0 && s->loader_size) rc = ck_write(&w, s->loader_state, s->loader_size, e);
  if (rc == 0) rc = ck_write(&w, table, tbytes, e);
  for (int i = 0; i < p->n && rc == 0; i++) {
    const xd_param_info *t = &p->t[i];
    if (!t->trainable) continue;
    size_t nb = t->numel * sizeof(float);
    rc = ck_write(&w, p->data + t->offset, nb, e);
    if (rc == 0) rc = ck_write(&w, p->m + t->offset, nb, e);
    if (rc == 0) rc = ck_write(&w, p->v + t->offset, nb, e);
  }
  free(table);
  uint8_t tr[CK_TRAILER] = {0};
  put_u64(tr, (uint64_t)w.crc);
  memcpy(tr + 8, CK_END, sizeof CK_END);
  if (rc == 0) rc = xd_atomic_write(&w.f, tr, sizeof tr, e);
  if (rc != 0) {
    xd_atomic_abort(&w.f);
    return xd_err_prefix(e, "%s: writing checkpoint", path);
  }
  return xd_atomic_commit(&w.f, e);
}

/* A parsed, fully validated file (pointers into the mapping). */
typedef struct {
  const uint8_t *loader, *table, *tdata;
  uint64_t loader_size, ntensors;
} ck_view;

static int ck_parse(const xd_mmap *m, const char *path, ck_view *v, xd_err *e) {
  const uint8_t *b = m->data;
  size_t size = m->size;
  if (size < CK_HEADER + CK_TRAILER) return xd_errf(e, "%s: truncated checkpoint (%zu bytes)", path, size);
  if (memcmp(b, CK_MAGIC, 8) != 0) return xd_errf(e, "%s: not an xdistill training checkpoint (bad magic)", path);
  uint32_t ver = get_u32(b + 8);
  if (ver != XD_CKPT_VERSION) return xd_errf(e, "%s: checkpoint version %u, this build reads version %d", path, ver, XD_CKPT_VERSION);
  if (get_u32(b + 12) != CK_HEADER) return xd_errf(e, "%s: bad header size %u", path, get_u32(b + 12));
  if (memcmp(b + size - 8, CK_END, sizeof CK_END) != 0) return xd_errf(e, "%s: truncated checkpoint (no end marker)", path);
  uLong crc = crc32(0L, Z_NULL, 0);
  for (size_t done = 0, n = size - CK_TRAILER; done < n;) {
    size_t k = n - done > (1u << 30) ? (1u << 30) : n - done;
    crc = crc32(crc, b + done, (uInt)k);
    done += k;
  }
  if ((uint64_t)crc != get_u64(b + size - CK_TRAILER)) return xd_errf(e, "%s: checksum mismatch (corrupt checkpoint)", path);
  /* the checksum only proves the bytes are what the writer wrote: sizes are still checked */
  size_t avail = size - CK_HEADER - CK_TRAILER;
  v->loader_size = get_u64(b + 96);
  v->ntensors = get_u64(b + 104);
  uint64_t tbytes = get_u64(b + 112);
  if (v->loader_size > avail) return xd_errf(e, "%s: loader state size %" PRIu64 " past end of file", path, v->loader_size);
  avail -= v->loader_size;
  if (tbytes > avail) return xd_errf(e, "%s: tensor table size %" PRIu64 " past end of file", path, tbytes);
  avail -= tbytes;
  v->loader = b + CK_HEADER;
  v->table = v->loader + v->loader_size;
  v->tdata = v->table + tbytes;
  if (v->ntensors > tbytes / 8) return xd_errf(e, "%s: %" PRIu64 " tensors cannot fit a %" PRIu64 "-byte table", path, v->ntensors, tbytes);
  const uint8_t *q = v->table, *end = v->table + tbytes;
  uint64_t data_bytes = 0;
  for (uint64_t i = 0; i < v->ntensors; i++) {
    if ((size_t)(end - q) < 8) return xd_errf(e, "%s: tensor table entry %" PRIu64 " truncated", path, i);
    uint32_t nl = get_u32(q), nd = get_u32(q + 4);
    if (nl == 0 || nl > CK_MAX_NAME || nd > XD_PARAMS_MAX_DIMS) return xd_errf(e, "%s: tensor table entry %" PRIu64 ": bad name length %u or rank %u", path, i, nl, nd);
    if ((size_t)(end - q) < 8 + (size_t)nl + 8 * (size_t)nd) return xd_errf(e, "%s: tensor table entry %" PRIu64 " truncated", path, i);
    uint64_t numel = 1;
    for (uint32_t d = 0; d < nd; d++) {
      uint64_t dim = get_u64(q + 8 + nl + 8 * d);
      if (dim == 0 || dim > (uint64_t)INT64_MAX || numel > UINT64_MAX / dim) return xd_errf(e, "%s: tensor %" PRIu64 ": bad dimension", path, i);
      numel *= dim;
    }
    if (numel > avail / 12 || data_bytes > avail - 12 * numel) return xd_errf(e, "%s: tensor %" PRIu64 " data past end of file", path, i);
    data_bytes += 12 * numel;
    q += 8 + nl + 8 * (size_t)nd;
  }
  if (q != end) return xd_errf(e, "%s: %zu stray bytes after the tensor table", path, (size_t)(end - q));
  if (data_bytes != avail) return xd_errf(e, "%s: tensor data is %" PRIu64 " bytes, file holds %zu", path, data_bytes, avail);
  return 0;
}

int xd_ckpt_verify_buffer(const uint8_t *data, size_t size, const char *name, xd_err *e) {
  const xd_mmap m = {data, size};
  ck_view v;
  return ck_parse(&m, name, &v, e);
}

int xd_ckpt_verify(const char *path, xd_err *e) {
  xd_mmap m;
  if (xd_mmap_open(&m, path, e) != 0) return -1;
  ck_view v;
  int rc = ck_parse(&m, path, &v, e);
  xd_mmap_close(&m);
  return rc;
}

int xd_ckpt_load(const char *path, xd_params *p, xd_ckpt_state *s, xd_err *e) {
  XD_CHECK(host_is_le());
  xd_mmap m;
  if (xd_mmap_open(&m, path, e) != 0) return -1;
  ck_view v = {0};
  int rc = ck_parse(&m, path, &v, e);
  if (rc == 0 && v.loader_size != s->loader_size)
    rc = xd_errf(e, "%s: data loader state is %" PRIu64 " bytes, this run's loader expects %zu", path, v.loader_size, s->loader_size);
  /* match the table to p before touching anything */
  int ntrain = 0;
  for (int i = 0; i < p->n; i++) ntrain += p->t[i].trainable;
  if (rc == 0 && v.ntensors != (uint64_t)ntrain)
    rc = xd_errf(e, "%s: holds %" PRIu64 " tensors, the model has %d trainable", path, v.ntensors, ntrain);
  /* v.ntensors is bounded by the file size once parsed; not trusted before */
  const size_t nt = rc == 0 ? (size_t)v.ntensors : 0;
  int *idx = xd_calloc(nt + 1, sizeof(int));
  const uint8_t **src = xd_calloc(nt + 1, sizeof *src);
  char name[CK_MAX_NAME + 1];
  const uint8_t *q = v.table, *d = v.tdata;
  for (uint64_t i = 0; rc == 0 && i < v.ntensors; i++) {
    uint32_t nl = get_u32(q), nd = get_u32(q + 4);
    memcpy(name, q + 8, nl);
    name[nl] = 0;
    int k = xd_params_find(p, name);
    if (k < 0 || !p->t[k].trainable) {
      rc = xd_errf(e, "%s: tensor '%s' is not a trainable parameter of this model", path, name);
      break;
    }
    for (uint64_t j = 0; j < i; j++)
      if (idx[j] == k) rc = xd_errf(e, "%s: tensor '%s' stored twice", path, name);
    int same = (int)nd == p->t[k].ndim;
    for (uint32_t dd = 0; same && dd < nd; dd++) same = get_u64(q + 8 + nl + 8 * dd) == (uint64_t)p->t[k].shape[dd];
    if (rc == 0 && !same) rc = xd_errf(e, "%s: tensor '%s' has a different shape from the model's", path, name);
    idx[i] = k;
    src[i] = d;
    d += 12 * p->t[k].numel;
    q += 8 + nl + 8 * (size_t)nd;
  }
  if (rc == 0) {
    for (uint64_t i = 0; i < v.ntensors; i++) {
      const xd_param_info *t = &p->t[idx[i]];
      size_t nb = t->numel * sizeof(float);
      memcpy(p->data + t->offset, src[i], nb);
      memcpy(p->m + t->offset, src[i] + nb, nb);
      memcpy(p->v + t->offset, src[i] + 2 * nb, nb);
    }
    const uint8_t *b = m.data;
    s->step = get_u64(b + 16);
    s->adam_t = get_u64(b + 24);
    s->tokens_seen = get_u64(b + 32);
    s->skipped_total = get_u64(b + 40);
    s->consecutive_skips = get_u64(b + 48);
    for (int i = 0; i < 4; i++) s->rng.s[i] = get_u64(b + 56 + 8 * i);
    s->config_hash = get_u64(b + 88);
    if (s->loader_size) memcpy(s->loader_state, v.loader, s->loader_size);
  }
  free(idx);
  free(src);
  xd_mmap_close(&m);
  return rc;
}

char *xd_ckpt_step_path(const char *dir, uint64_t step) {
  char name[64];
  snprintf(name, sizeof name, "step-%06" PRIu64 ".ckpt", step);
  return xd_path_join(dir, name);
}

/* Step number of a file name "step-<digits>.ckpt", or -1. */
static int64_t parse_step_name(const char *name) {
  if (strncmp(name, "step-", 5) != 0) return -1;
  const char *p = name + 5;
  int64_t step = 0;
  int nd = 0;
  for (; *p >= '0' && *p <= '9' && nd < 18; p++, nd++) step = step * 10 + (*p - '0');
  if (nd == 0 || strcmp(p, ".ckpt") != 0) return -1;
  return step;
}

static int cmp_desc(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? 1 : x > y ? -1 : 0;
}

/* Steps of the step-*.ckpt files in dir, newest first. */
static int list_steps(const char *dir, int64_t **out, int *n, xd_err *e) {
  *out = NULL;
  *n = 0;
  DIR *d = opendir(dir);
  if (!d) return xd_errf(e, "%s: cannot open checkpoint directory: %s", dir, strerror(errno));
  int cap = 0;
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    int64_t s = parse_step_name(de->d_name);
    if (s < 0) continue;
    if (*n == cap) {
      cap = cap ? 2 * cap : 16;
      *out = xd_realloc(*out, (size_t)cap * sizeof **out);
    }
    (*out)[(*n)++] = s;
  }
  closedir(d);
  if (*n) qsort(*out, (size_t)*n, sizeof **out, cmp_desc);
  return 0;
}

int xd_ckpt_save_rotating(const char *dir, int keep, const xd_params *p, const xd_ckpt_state *s, xd_err *e) {
  XD_CHECK(keep >= 1);
  char *path = xd_ckpt_step_path(dir, s->step);
  if (xd_ckpt_save(path, p, s, e) != 0) {
    free(path);
    return -1;
  }
  char *latest = xd_path_join(dir, "latest");
  const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
  char line[80];
  int len = snprintf(line, sizeof line, "%s\n", base);
  int rc = xd_write_file_atomic(latest, line, (size_t)len, e);
  free(latest);
  free(path);
  if (rc != 0) return -1;
  /* prune only now that the new checkpoint and its pointer are durable */
  int64_t *steps;
  int n;
  if (list_steps(dir, &steps, &n, e) != 0) return -1;
  int kept = 0;
  for (int i = 0; i < n; i++) {
    if ((uint64_t)steps[i] > s->step) continue; /* newer files (from a run we resumed before) stay */
    if (kept++ < keep) continue;
    char *old = xd_ckpt_step_path(dir, (uint64_t)steps[i]);
    unlink(old);
    free(old);
  }
  free(steps);
  return 0;
}

int xd_ckpt_find_latest(const char *dir, FILE *warn, char **out_path, xd_err *e) {
  *out_path = NULL;
  if (!xd_is_dir(dir)) return 0;
  int64_t *steps;
  int n;
  if (list_steps(dir, &steps, &n, e) != 0) return -1;
  int found = 0;
  for (int i = 0; i < n && !found; i++) {
    char *path = xd_ckpt_step_path(dir, (uint64_t)steps[i]);
    xd_err ve = {{0}};
    if (xd_ckpt_verify(path, &ve) == 0) {
      *out_path = path;
      found = 1;
    } else {
      if (warn) fprintf(warn, "xdistill: warning: skipping checkpoint: %s\n", ve.msg);
      free(path);
    }
  }
  free(steps);
  return found;
}

int xd_ckpt_dir_has_checkpoints(const char *dir) {
  int64_t *steps;
  int n;
  xd_err e;
  if (list_steps(dir, &steps, &n, &e) != 0) return 0;
  free(steps);
  return n > 0;
}

void xd_ckpt_clean_tmp(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *de;
  while ((de = readdir(d)) != NULL) {
    const char *t = strstr(de->d_name, ".tmp.");
    if (!t) continue;
    int ours = (!strncmp(de->d_name, "step-", 5) && t > de->d_name + 5 && !strncmp(t - 5, ".ckpt", 5)) ||
               (t == de->d_name + 6 && !strncmp(de->d_name, "latest", 6));
    if (!ours) continue;
    char *path = xd_path_join(dir, de->d_name);
    unlink(path);
    free(path);
  }
  closedir(d);
}
