#include "io/safetensors.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define XD_ST_MAX_HEADER (100u * 1024u * 1024u)

static const struct { const char *name; size_t size; } dtype_table[XD_DT_COUNT] = {
  [XD_DT_F32] = {"F32", 4}, [XD_DT_F16] = {"F16", 2}, [XD_DT_BF16] = {"BF16", 2},
  [XD_DT_F64] = {"F64", 8}, [XD_DT_I64] = {"I64", 8}, [XD_DT_I32] = {"I32", 4},
  [XD_DT_I16] = {"I16", 2}, [XD_DT_I8] = {"I8", 1}, [XD_DT_U8] = {"U8", 1},
  [XD_DT_BOOL] = {"BOOL", 1}, [XD_DT_F8_E4M3] = {"F8_E4M3", 1}, [XD_DT_F8_E5M2] = {"F8_E5M2", 1},
  [XD_DT_U16] = {"U16", 2}, [XD_DT_U32] = {"U32", 4}, [XD_DT_U64] = {"U64", 8},
};

const char *xd_dtype_name(xd_dtype t) { return (unsigned)t < XD_DT_COUNT ? dtype_table[t].name : "?"; }
size_t xd_dtype_size(xd_dtype t) { return (unsigned)t < XD_DT_COUNT ? dtype_table[t].size : 0; }
int xd_dtype_parse(const char *s, xd_dtype *out) {
  for (int i = 0; i < XD_DT_COUNT; i++)
    if (strcmp(s, dtype_table[i].name) == 0) { *out = (xd_dtype)i; return 0; }
  return -1;
}

static int cmp_tensor_name(const void *a, const void *b) {
  return strcmp(((const xd_st_tensor *)a)->name, ((const xd_st_tensor *)b)->name);
}
typedef struct { size_t begin, end; int idx; } span;
static int cmp_span(const void *a, const void *b) {
  const span *x = a, *y = b;
  return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : 0;
}

/* A JSON number that is a non-negative integer representable exactly (< 2^53). */
static int json_uint(const cJSON *j, uint64_t *out) {
  if (!cJSON_IsNumber(j)) return -1;
  double d = j->valuedouble;
  if (!(d >= 0) || d > 9007199254740992.0 || floor(d) != d) return -1;
  *out = (uint64_t)d;
  return 0;
}

static void free_tensors(xd_st_tensor *t, int n) {
  for (int i = 0; i < n; i++) free(t[i].name);
  free(t);
}

/* Parse one file's header and append its tensors. On error nothing is appended. */
static int parse_one(xd_safetensors *st, int file_index, const uint8_t *data, size_t size, const char *path,
                     int keep_meta, xd_err *e) {
  if (size < 8) return xd_errf(e, "%s: truncated: %zu bytes, too short for the 8-byte header length", path, size);
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | data[i];
  if (hlen > size - 8)
    return xd_errf(e, "%s: header length %llu runs past the end of the file (%zu bytes)", path, (unsigned long long)hlen, size);
  if (hlen > XD_ST_MAX_HEADER)
    return xd_errf(e, "%s: header length %llu exceeds the %u-byte limit", path, (unsigned long long)hlen, XD_ST_MAX_HEADER);
  if (hlen < 2) return xd_errf(e, "%s: header of %llu bytes cannot hold a JSON object", path, (unsigned long long)hlen);
  const char *hdr = (const char *)data + 8;
  const char *end_ptr = NULL;
  cJSON *root = cJSON_ParseWithLengthOpts(hdr, (size_t)hlen, &end_ptr, 0);
  if (!root) {
    size_t off = end_ptr ? (size_t)(end_ptr - hdr) : 0;
    return xd_errf(e, "%s: header is not valid JSON (near byte %zu of the header)", path, off);
  }
  /* Only trailing spaces (writers pad for alignment) may follow the JSON object. */
  for (const char *p = end_ptr; p && p < hdr + hlen; p++)
    if (*p != ' ' && *p != '\n' && *p != '\t' && *p != '\r' && *p != 0) {
      cJSON_Delete(root);
      return xd_errf(e, "%s: unexpected bytes after the JSON header", path);
    }
  if (!cJSON_IsObject(root)) {
    cJSON_Delete(root);
    return xd_errf(e, "%s: header is not a JSON object", path);
  }
  const uint8_t *base = data + 8 + hlen;
  size_t data_size = size - 8 - (size_t)hlen;
  int count = 0;
  for (cJSON *it = root->child; it; it = it->next) count++;
  xd_st_tensor *ts = xd_calloc((size_t)count + 1, sizeof *ts);
  span *spans = xd_calloc((size_t)count + 1, sizeof *spans);
  int n = 0, rc = 0, meta_seen = 0;
  for (cJSON *it = root->child; it && rc == 0; it = it->next) {
    const char *key = it->string;
    if (!key) { rc = xd_errf(e, "%s: header entry without a name", path); break; }
    if (strcmp(key, "__metadata__") == 0) {
      if (meta_seen++) { rc = xd_errf(e, "%s: __metadata__ appears twice", path); break; }
      if (!cJSON_IsObject(it)) { rc = xd_errf(e, "%s: __metadata__ is not an object", path); break; }
      for (cJSON *m = it->child; m; m = m->next)
        if (!cJSON_IsString(m)) { rc = xd_errf(e, "%s: __metadata__ value '%s' is not a string", path, m->string ? m->string : "?"); break; }
      if (rc == 0 && keep_meta && !st->meta_keys) {
        int nm = 0;
        for (cJSON *m = it->child; m; m = m->next) nm++;
        st->meta_keys = xd_calloc((size_t)nm + 1, sizeof(char *));
        st->meta_values = xd_calloc((size_t)nm + 1, sizeof(char *));
        for (cJSON *m = it->child; m; m = m->next) {
          st->meta_keys[st->nmeta] = xd_strdup(m->string);
          st->meta_values[st->nmeta] = xd_strdup(m->valuestring);
          st->nmeta++;
        }
      }
      continue;
    }
    if (!cJSON_IsObject(it)) { rc = xd_errf(e, "%s: tensor '%s': entry is not an object", path, key); break; }
    const cJSON *jd = cJSON_GetObjectItemCaseSensitive(it, "dtype");
    const cJSON *js = cJSON_GetObjectItemCaseSensitive(it, "shape");
    const cJSON *jo = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
    if (!cJSON_IsString(jd)) { rc = xd_errf(e, "%s: tensor '%s': missing or non-string dtype", path, key); break; }
    xd_st_tensor *t = &ts[n];
    if (xd_dtype_parse(jd->valuestring, &t->dtype) != 0) {
      rc = xd_errf(e, "%s: tensor '%s': unknown dtype '%s'", path, key, jd->valuestring);
      break;
    }
    if (!cJSON_IsArray(js)) { rc = xd_errf(e, "%s: tensor '%s': missing or non-array shape", path, key); break; }
    int nd = cJSON_GetArraySize(js);
    if (nd > XD_ST_MAX_DIMS) { rc = xd_errf(e, "%s: tensor '%s': %d dimensions, at most %d supported", path, key, nd, XD_ST_MAX_DIMS); break; }
    size_t nelem = 1;
    int d = 0;
    for (const cJSON *x = js->child; x; x = x->next, d++) {
      uint64_t v;
      if (json_uint(x, &v) != 0 || v > (uint64_t)INT64_MAX) { rc = xd_errf(e, "%s: tensor '%s': shape entry %d is not a non-negative integer", path, key, d); break; }
      t->shape[d] = (int64_t)v;
      if (xd_mul_size(nelem, (size_t)v, &nelem) != 0) { rc = xd_errf(e, "%s: tensor '%s': shape overflows", path, key); break; }
    }
    if (rc) break;
    t->ndim = nd;
    t->nelem = nelem;
    if (xd_mul_size(nelem, xd_dtype_size(t->dtype), &t->nbytes) != 0) { rc = xd_errf(e, "%s: tensor '%s': byte size overflows", path, key); break; }
    uint64_t b = 0, en = 0;
    if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2 || json_uint(cJSON_GetArrayItem(jo, 0), &b) != 0 ||
        json_uint(cJSON_GetArrayItem(jo, 1), &en) != 0) {
      rc = xd_errf(e, "%s: tensor '%s': data_offsets must be two non-negative integers", path, key);
      break;
    }
    if (b > en) { rc = xd_errf(e, "%s: tensor '%s': data_offsets [%llu, %llu] end before they begin", path, key, (unsigned long long)b, (unsigned long long)en); break; }
    if (en > data_size) {
      rc = xd_errf(e, "%s: tensor '%s': data_offsets [%llu, %llu] out of range (data area is %zu bytes)", path, key,
                   (unsigned long long)b, (unsigned long long)en, data_size);
      break;
    }
    if (en - b != t->nbytes) {
      rc = xd_errf(e, "%s: tensor '%s': data_offsets span %llu bytes but shape and dtype %s need %zu", path, key,
                   (unsigned long long)(en - b), xd_dtype_name(t->dtype), t->nbytes);
      break;
    }
    t->name = xd_strdup(key);
    t->data = base + b;
    t->file_index = file_index;
    spans[n].begin = (size_t)b;
    spans[n].end = (size_t)en;
    spans[n].idx = n;
    n++;
  }
  cJSON_Delete(root);
  if (rc == 0) {
    /* Duplicate names (cJSON keeps both). */
    xd_st_tensor *sorted = xd_malloc(((size_t)n + 1) * sizeof *sorted);
    memcpy(sorted, ts, (size_t)n * sizeof *sorted);
    qsort(sorted, (size_t)n, sizeof *sorted, cmp_tensor_name);
    for (int i = 1; i < n && rc == 0; i++)
      if (strcmp(sorted[i - 1].name, sorted[i].name) == 0) rc = xd_errf(e, "%s: tensor '%s' appears twice", path, sorted[i].name);
    free(sorted);
  }
  if (rc == 0) {
    /* Offsets must tile the data area: no overlap, no hole, nothing left over. */
    qsort(spans, (size_t)n, sizeof *spans, cmp_span);
    size_t pos = 0;
    for (int i = 0; i < n && rc == 0; i++) {
      if (spans[i].begin < pos)
        rc = xd_errf(e, "%s: tensor '%s' overlaps the previous tensor (offset %zu < %zu)", path, ts[spans[i].idx].name, spans[i].begin, pos);
      else if (spans[i].begin > pos)
        rc = xd_errf(e, "%s: gap in the data area before tensor '%s' (offset %zu, expected %zu)", path, ts[spans[i].idx].name, spans[i].begin, pos);
      pos = spans[i].end > pos ? spans[i].end : pos;
    }
    if (rc == 0 && pos != data_size)
      rc = xd_errf(e, "%s: data area is %zu bytes but tensors cover %zu", path, data_size, pos);
  }
  free(spans);
  if (rc != 0) {
    free_tensors(ts, n);
    return -1;
  }
  st->tensors = xd_realloc(st->tensors, ((size_t)st->ntensors + (size_t)n + 1) * sizeof *st->tensors);
  memcpy(st->tensors + st->ntensors, ts, (size_t)n * sizeof *ts);
  st->ntensors += n;
  free(ts);
  return 0;
}

static int sort_and_check_global(xd_safetensors *st, xd_err *e) {
  qsort(st->tensors, (size_t)st->ntensors, sizeof *st->tensors, cmp_tensor_name);
  for (int i = 1; i < st->ntensors; i++)
    if (strcmp(st->tensors[i - 1].name, st->tensors[i].name) == 0)
      return xd_errf(e, "%s: tensor '%s' also appears in %s", st->paths[st->tensors[i].file_index], st->tensors[i].name,
                     st->paths[st->tensors[i - 1].file_index]);
  return 0;
}

int xd_st_parse_buffer(xd_safetensors *st, const uint8_t *data, size_t size, const char *name, xd_err *e) {
  memset(st, 0, sizeof *st);
  st->nfiles = 1;
  st->paths = xd_calloc(1, sizeof(char *));
  st->paths[0] = xd_strdup(name);
  st->maps = xd_calloc(1, sizeof(xd_mmap)); /* not owned: left empty */
  if (parse_one(st, 0, data, size, name, 1, e) != 0 || sort_and_check_global(st, e) != 0) {
    xd_st_close(st);
    return -1;
  }
  return 0;
}

static int add_file(xd_safetensors *st, const char *path, xd_err *e) {
  int i = st->nfiles;
  st->paths = xd_realloc(st->paths, ((size_t)i + 1) * sizeof(char *));
  st->maps = xd_realloc(st->maps, ((size_t)i + 1) * sizeof(xd_mmap));
  st->paths[i] = xd_strdup(path);
  memset(&st->maps[i], 0, sizeof(xd_mmap));
  st->nfiles++;
  if (xd_mmap_open(&st->maps[i], path, e) != 0) return -1;
  return parse_one(st, i, st->maps[i].data, st->maps[i].size, path, i == 0, e);
}

static int str_ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && strcmp(s + a - b, suffix) == 0;
}

static int open_index(xd_safetensors *st, const char *index_path, xd_err *e) {
  char *text = NULL;
  if (xd_read_file(index_path, 64u << 20, &text, NULL, e) != 0) return -1;
  cJSON *root = cJSON_Parse(text);
  free(text);
  if (!root) return xd_errf(e, "%s: not valid JSON", index_path);
  const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
  if (!cJSON_IsObject(wm) || !wm->child) {
    cJSON_Delete(root);
    return xd_errf(e, "%s: missing or empty \"weight_map\" object", index_path);
  }
  char *dir = xd_strdup(index_path);
  char *slash = strrchr(dir, '/');
  if (slash) slash[1] = 0; else dir[0] = 0;
  int rc = 0;
  for (const cJSON *it = wm->child; it && rc == 0; it = it->next) {
    if (!cJSON_IsString(it) || strchr(it->valuestring, '/') || strcmp(it->valuestring, "..") == 0) {
      rc = xd_errf(e, "%s: weight_map entry '%s' must name a file in the same directory", index_path, it->string);
      break;
    }
    char *p = xd_path_join(dir[0] ? dir : ".", it->valuestring);
    int seen = 0;
    for (int i = 0; i < st->nfiles; i++) if (strcmp(st->paths[i], p) == 0) seen = 1;
    if (!seen) rc = add_file(st, p, e);
    free(p);
  }
  if (rc == 0) rc = sort_and_check_global(st, e);
  /* Every tensor the index names must be in the file it names. */
  for (const cJSON *it = wm->child; it && rc == 0; it = it->next) {
    const xd_st_tensor *t = xd_st_find(st, it->string);
    if (!t) { rc = xd_errf(e, "%s: tensor '%s' listed in the index is missing from %s", index_path, it->string, it->valuestring); break; }
    if (!str_ends_with(st->paths[t->file_index], it->valuestring))
      rc = xd_errf(e, "%s: tensor '%s' listed in %s was found in %s", index_path, it->string, it->valuestring, st->paths[t->file_index]);
  }
  free(dir);
  cJSON_Delete(root);
  return rc;
}

int xd_st_open(xd_safetensors *st, const char *path, xd_err *e) {
  memset(st, 0, sizeof *st);
  int rc;
  if (xd_is_dir(path)) {
    char *single = xd_path_join(path, "model.safetensors");
    char *index = xd_path_join(path, "model.safetensors.index.json");
    if (xd_file_exists(single)) rc = add_file(st, single, e) == 0 ? sort_and_check_global(st, e) : -1;
    else if (xd_file_exists(index)) rc = open_index(st, index, e);
    else rc = xd_errf(e, "%s: no model.safetensors or model.safetensors.index.json in this directory", path);
    free(single);
    free(index);
  } else if (str_ends_with(path, ".json")) {
    rc = open_index(st, path, e);
  } else {
    rc = add_file(st, path, e) == 0 ? sort_and_check_global(st, e) : -1;
  }
  if (rc != 0) xd_st_close(st);
  return rc;
}

void xd_st_close(xd_safetensors *st) {
  for (int i = 0; i < st->nfiles; i++) {
    if (st->maps) xd_mmap_close(&st->maps[i]);
    if (st->paths) free(st->paths[i]);
  }
  free(st->paths);
  free(st->maps);
  free_tensors(st->tensors, st->ntensors);
  for (int i = 0; i < st->nmeta; i++) { free(st->meta_keys[i]); free(st->meta_values[i]); }
  free(st->meta_keys);
  free(st->meta_values);
  memset(st, 0, sizeof *st);
}

const xd_st_tensor *xd_st_find(const xd_safetensors *st, const char *name) {
  int lo = 0, hi = st->ntensors - 1;
  while (lo <= hi) {
    int mid = (lo + hi) / 2, c = strcmp(st->tensors[mid].name, name);
    if (c == 0) return &st->tensors[mid];
    if (c < 0) lo = mid + 1; else hi = mid - 1;
  }
  return NULL;
}

int xd_st_to_f32(const xd_st_tensor *t, float *out, size_t n, const char *file, xd_err *e) {
  if (n != t->nelem) return xd_errf(e, "%s: tensor '%s' has %zu elements, expected %zu", file, t->name, t->nelem, n);
  const uint8_t *p = t->data;
  switch (t->dtype) {
    case XD_DT_F32: memcpy(out, p, n * 4); break;
    case XD_DT_BF16:
      for (size_t i = 0; i < n; i++) out[i] = xd_bf16_to_f32((uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)));
      break;
    case XD_DT_F16:
      for (size_t i = 0; i < n; i++) out[i] = xd_f16_to_f32((uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)));
      break;
    default:
      return xd_errf(e, "%s: tensor '%s' has dtype %s; only F32, F16 and BF16 are supported", file, t->name, xd_dtype_name(t->dtype));
  }
  return 0;
}

int xd_st_load_f32(const xd_safetensors *st, const char *name, int ndim, const int64_t *shape, float *out, xd_err *e) {
  const xd_st_tensor *t = xd_st_find(st, name);
  const char *file = st->nfiles ? st->paths[0] : "?";
  if (!t) return xd_errf(e, "%s: missing tensor '%s'", file, name);
  file = st->paths[t->file_index];
  int ok = t->ndim == ndim;
  for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] == shape[i];
  if (!ok) {
    char want[128] = "", got[128] = "";
    for (int i = 0; i < ndim; i++) snprintf(want + strlen(want), sizeof want - strlen(want), "%s%lld", i ? "," : "", (long long)shape[i]);
    for (int i = 0; i < t->ndim; i++) snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", i ? "," : "", (long long)t->shape[i]);
    return xd_errf(e, "%s: tensor '%s' has shape [%s], expected [%s]", file, name, got, want);
  }
  return xd_st_to_f32(t, out, t->nelem, file, e);
}

static size_t entry_nbytes(const xd_st_entry *t) {
  size_t nelem = 1;
  for (int d = 0; d < t->ndim; d++) nelem *= (size_t)t->shape[d];
  return nelem * xd_dtype_size(t->dtype);
}

/* Header JSON padded with spaces so the data area starts 8-byte aligned. */
static char *build_header(const xd_st_entry *entries, int n, const char *const *meta_keys, const char *const *meta_values,
                          int nmeta, size_t *padded_len) {
  cJSON *root = cJSON_CreateObject();
  if (nmeta > 0) {
    cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
    for (int i = 0; i < nmeta; i++) cJSON_AddStringToObject(m, meta_keys[i], meta_values[i]);
  }
  size_t off = 0;
  for (int i = 0; i < n; i++) {
    const xd_st_entry *t = &entries[i];
    size_t nbytes = entry_nbytes(t);
    cJSON *o = cJSON_AddObjectToObject(root, t->name);
    cJSON_AddStringToObject(o, "dtype", xd_dtype_name(t->dtype));
    cJSON *sh = cJSON_AddArrayToObject(o, "shape");
    for (int d = 0; d < t->ndim; d++) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)t->shape[d]));
    cJSON *of = cJSON_AddArrayToObject(o, "data_offsets");
    cJSON_AddItemToArray(of, cJSON_CreateNumber((double)off));
    cJSON_AddItemToArray(of, cJSON_CreateNumber((double)(off + nbytes)));
    off += nbytes;
  }
  char *json = cJSON_PrintUnformatted(root);
  cJSON_Delete(root);
  size_t hlen = strlen(json), padded = (hlen + 7) & ~(size_t)7;
  json = xd_realloc(json, padded + 1);
  memset(json + hlen, ' ', padded - hlen);
  json[padded] = 0;
  *padded_len = padded;
  return json;
}

int xd_st_write_stream(const char *path, const xd_st_entry *entries, int n, const char *const *meta_keys,
                       const char *const *meta_values, int nmeta, xd_st_fill_fn fill, void *ctx, xd_err *e) {
  size_t hlen;
  char *json = build_header(entries, n, meta_keys, meta_values, nmeta, &hlen);
  uint8_t len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (uint8_t)(hlen >> (8 * i));
  xd_atomic_file f;
  if (xd_atomic_open(&f, path, e) != 0) { free(json); return -1; }
  int rc = xd_atomic_write(&f, len8, 8, e);
  if (rc == 0) rc = xd_atomic_write(&f, json, hlen, e);
  free(json);
  size_t cap = 0;
  void *buf = NULL;
  for (int i = 0; rc == 0 && i < n; i++) {
    size_t nb = entry_nbytes(&entries[i]);
    if (fill) {
      if (nb > cap) { free(buf); buf = xd_malloc(nb); cap = nb; }
      rc = fill(ctx, i, buf, nb, e);
      if (rc == 0) rc = xd_atomic_write(&f, buf, nb, e);
    } else {
      rc = xd_atomic_write(&f, entries[i].data, nb, e);
    }
  }
  free(buf);
  if (rc != 0) { xd_atomic_abort(&f); return -1; }
  return xd_atomic_commit(&f, e);
}

int xd_st_write(const char *path, const xd_st_entry *entries, int n, const char *const *meta_keys,
                const char *const *meta_values, int nmeta, xd_err *e) {
  return xd_st_write_stream(path, entries, n, meta_keys, meta_values, nmeta, NULL, NULL, e);
}
