#include "merge/merge.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"

/* config.json keys that record how a file was written, not what the model is. */
static const char *const volatile_keys[] = {"_name_or_path", "transformers_version", "torch_dtype", "dtype"};
/* Files copied from the first expert next to the merged weights. */
static const char *const side_files[] = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                         "generation_config.json"};

static cJSON *load_config(const char *dir, xd_err *e) {
  char *path = xd_path_join(dir, "config.json"), *text = NULL;
  cJSON *j = NULL;
  if (xd_read_file(path, 16u << 20, &text, NULL, e) == 0) {
    j = cJSON_Parse(text);
    if (!j || !cJSON_IsObject(j)) {
      cJSON_Delete(j);
      j = NULL;
      xd_errf(e, "%s: not a valid JSON object", path);
    }
  }
  free(text);
  free(path);
  if (j)
    for (size_t i = 0; i < sizeof volatile_keys / sizeof *volatile_keys; i++)
      cJSON_DeleteItemFromObjectCaseSensitive(j, volatile_keys[i]);
  return j;
}

static int same_file_bytes(const char *a, const char *b, xd_err *e, int *same) {
  xd_mmap ma, mb;
  if (xd_mmap_open(&ma, a, e) != 0) return -1;
  if (xd_mmap_open(&mb, b, e) != 0) { xd_mmap_close(&ma); return -1; }
  *same = ma.size == mb.size && (ma.size == 0 || memcmp(ma.data, mb.data, ma.size) == 0);
  xd_mmap_close(&ma);
  xd_mmap_close(&mb);
  return 0;
}

static int check_pair(const char *d0, const cJSON *c0, const xd_safetensors *s0, const char *di, xd_err *e) {
  cJSON *ci = load_config(di, e);
  if (!ci) return -1;
  int same = cJSON_Compare(c0, ci, 1);
  cJSON_Delete(ci);
  if (!same) return xd_errf(e, "%s/config.json: architecture differs from %s/config.json", di, d0);
  /* Tokenizer: present in both and byte-identical, or absent in both. */
  char *t0 = xd_path_join(d0, "tokenizer.json"), *ti = xd_path_join(di, "tokenizer.json");
  int rc = 0;
  if (xd_file_exists(t0) != xd_file_exists(ti)) rc = xd_errf(e, "%s: tokenizer.json present in only one of %s and %s", ti, d0, di);
  else if (xd_file_exists(t0)) {
    int eq = 0;
    rc = same_file_bytes(t0, ti, e, &eq);
    if (rc == 0 && !eq) rc = xd_errf(e, "%s: tokenizer differs from %s", ti, t0);
  }
  free(t0);
  free(ti);
  if (rc) return rc;
  xd_safetensors si;
  if (xd_st_open(&si, di, e) != 0) return -1;
  if (si.ntensors != s0->ntensors) rc = xd_errf(e, "%s: %d tensors, but %s has %d", di, si.ntensors, d0, s0->ntensors);
  for (int k = 0; rc == 0 && k < s0->ntensors; k++) {
    const xd_st_tensor *a = &s0->tensors[k], *b = xd_st_find(&si, a->name);
    if (!b) { rc = xd_errf(e, "%s: tensor '%s' of %s is missing", di, a->name, d0); break; }
    int ok = a->ndim == b->ndim;
    for (int d = 0; ok && d < a->ndim; d++) ok = a->shape[d] == b->shape[d];
    if (!ok) rc = xd_errf(e, "%s: tensor '%s' has a different shape than in %s", di, a->name, d0);
    else if (a->dtype != XD_DT_F32 && a->dtype != XD_DT_F16 && a->dtype != XD_DT_BF16)
      rc = xd_errf(e, "%s: tensor '%s' has dtype %s; only float tensors can be merged", d0, a->name, xd_dtype_name(a->dtype));
  }
  xd_st_close(&si);
  return rc;
}

int xd_merge_check(const xd_merge_expert *experts, int n, xd_err *e) {
  if (n < 1) return xd_errf(e, "merge: no experts given");
  cJSON *c0 = load_config(experts[0].dir, e);
  if (!c0) return -1;
  xd_safetensors s0;
  if (xd_st_open(&s0, experts[0].dir, e) != 0) { cJSON_Delete(c0); return -1; }
  int rc = 0;
  for (int i = 1; rc == 0 && i < n; i++) rc = check_pair(experts[0].dir, c0, &s0, experts[i].dir, e);
  xd_st_close(&s0);
  cJSON_Delete(c0);
  return rc;
}

typedef struct {
  int n;
  xd_safetensors *st;  /* one per expert */
  const double *lambda;
  const char *const *names; /* output order */
  xd_dtype *dtype;     /* output dtype per tensor */
  double *acc;
  size_t acc_cap;
} merge_ctx;

static double load_elem(const xd_st_tensor *t, size_t i) {
  const uint8_t *p = t->data;
  switch (t->dtype) {
    case XD_DT_F32: { float f; memcpy(&f, p + 4 * i, 4); return f; }
    case XD_DT_BF16: return xd_bf16_to_f32((uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)));
    default: return xd_f16_to_f32((uint16_t)(p[2 * i] | (p[2 * i + 1] << 8)));
  }
}

static int fill_merged(void *vctx, int index, void *buf, size_t nbytes, xd_err *e) {
  merge_ctx *c = vctx;
  const xd_st_tensor *t0 = xd_st_find(&c->st[0], c->names[index]);
  size_t n = t0->nelem;
  if (n > c->acc_cap) { free(c->acc); c->acc = xd_malloc(n * sizeof(double)); c->acc_cap = n; }
  memset(c->acc, 0, n * sizeof(double));
  for (int k = 0; k < c->n; k++) {
    if (c->lambda[k] == 0) continue;
    const xd_st_tensor *t = xd_st_find(&c->st[k], c->names[index]);
    for (size_t i = 0; i < n; i++) c->acc[i] += c->lambda[k] * load_elem(t, i);
  }
  uint8_t *o = buf;
  for (size_t i = 0; i < n; i++) {
    float f = (float)c->acc[i];
    if (c->dtype[index] == XD_DT_F32) memcpy(o + 4 * i, &f, 4);
    else {
      uint16_t h = c->dtype[index] == XD_DT_BF16 ? xd_f32_to_bf16(f) : xd_f32_to_f16(f);
      o[2 * i] = (uint8_t)h;
      o[2 * i + 1] = (uint8_t)(h >> 8);
    }
  }
  (void)nbytes;
  (void)e;
  return 0;
}

int xd_merge_run(const xd_merge_expert *experts, int n, const char *out_dir, xd_err *e) {
  double sum = 0;
  for (int i = 0; i < n; i++) {
    if (!(experts[i].weight >= 0) || isinf(experts[i].weight))
      return xd_errf(e, "%s: merge weight %g must be a non-negative number", experts[i].dir, experts[i].weight);
    sum += experts[i].weight;
  }
  if (n < 1) return xd_errf(e, "merge: no experts given");
  if (!(sum > 0)) return xd_errf(e, "merge: the expert weights sum to zero");
  if (xd_merge_check(experts, n, e) != 0) return -1;
  if (xd_mkdir_p(out_dir, e) != 0) return -1;
  double *lambda = xd_malloc((size_t)n * sizeof *lambda);
  for (int i = 0; i < n; i++) lambda[i] = experts[i].weight / sum;
  merge_ctx c = {.n = n, .lambda = lambda};
  c.st = xd_calloc((size_t)n, sizeof *c.st);
  int rc = 0, opened = 0;
  for (; rc == 0 && opened < n; opened++)
    if (xd_st_open(&c.st[opened], experts[opened].dir, e) != 0) { rc = -1; break; }
  int nt = rc == 0 ? c.st[0].ntensors : 0;
  xd_st_entry *ents = xd_calloc((size_t)nt + 1, sizeof *ents);
  const char **names = xd_calloc((size_t)nt + 1, sizeof *names);
  c.dtype = xd_calloc((size_t)nt + 1, sizeof *c.dtype);
  for (int k = 0; k < nt; k++) {
    const xd_st_tensor *t = &c.st[0].tensors[k];
    names[k] = t->name;
    xd_dtype dt = t->dtype;
    for (int i = 1; i < n; i++)
      if (xd_st_find(&c.st[i], t->name)->dtype != dt) dt = XD_DT_F32; /* mixed dtypes: widen */
    c.dtype[k] = dt;
    ents[k].name = t->name;
    ents[k].dtype = dt;
    ents[k].ndim = t->ndim;
    memcpy(ents[k].shape, t->shape, sizeof t->shape);
  }
  c.names = names;
  if (rc == 0) {
    char *out = xd_path_join(out_dir, "model.safetensors");
    const char *mk[] = {"format", "xdistill"}, *mv[] = {"pt", "merge"};
    rc = xd_st_write_stream(out, ents, nt, mk, mv, 2, fill_merged, &c, e);
    free(out);
  }
  if (rc == 0) {
    /* config.json from the first expert, verbatim; side files likewise. */
    char *src = xd_path_join(experts[0].dir, "config.json"), *dst = xd_path_join(out_dir, "config.json");
    rc = xd_copy_file(src, dst, e);
    free(src);
    free(dst);
    for (size_t i = 0; rc == 0 && i < sizeof side_files / sizeof *side_files; i++) {
      char *s = xd_path_join(experts[0].dir, side_files[i]), *d = xd_path_join(out_dir, side_files[i]);
      if (xd_file_exists(s)) rc = xd_copy_file(s, d, e);
      free(s);
      free(d);
    }
  }
  for (int i = 0; i < opened && i < n; i++) xd_st_close(&c.st[i]);
  free(c.st);
  free(c.acc);
  free(c.dtype);
  free(ents);
  free(names);
  free(lambda);
  return rc;
}
