#include "io/npy.h"

#include <stdlib.h>
#include <string.h>

static size_t type_size(xd_npy_type t) { return t == XD_NPY_F64 || t == XD_NPY_I64 ? 8 : 4; }
static const char *type_descr(xd_npy_type t) {
  switch (t) {
    case XD_NPY_F32: return "<f4";
    case XD_NPY_F64: return "<f8";
    case XD_NPY_I32: return "<i4";
    default: return "<i8";
  }
}

/* Find 'key': value in the header dict (a Python literal); returns pointer after the colon. */
static const char *dict_value(const char *h, size_t n, const char *key) {
  size_t k = strlen(key);
  for (size_t i = 0; i + k + 2 < n; i++) {
    if ((h[i] == '\'' || h[i] == '"') && memcmp(h + i + 1, key, k) == 0 && h[i + 1 + k] == h[i]) {
      const char *p = h + i + k + 2;
      while (p < h + n && (*p == ' ' || *p == ':')) p++;
      return p;
    }
  }
  return NULL;
}

int xd_npy_parse(const uint8_t *buf, size_t size, const char *name, xd_npy *out, xd_err *e) {
  memset(out, 0, sizeof *out);
  if (size < 10 || memcmp(buf, "\x93NUMPY", 6) != 0) return xd_errf(e, "%s: not a .npy file (bad magic)", name);
  int major = buf[6];
  size_t hlen, hoff;
  if (major == 1) { hlen = (size_t)buf[8] | ((size_t)buf[9] << 8); hoff = 10; }
  else if (major == 2 || major == 3) {
    if (size < 12) return xd_errf(e, "%s: truncated .npy header", name);
    hlen = (size_t)buf[8] | ((size_t)buf[9] << 8) | ((size_t)buf[10] << 16) | ((size_t)buf[11] << 24);
    hoff = 12;
  } else return xd_errf(e, "%s: unsupported .npy version %d", name, major);
  if (hlen > size - hoff) return xd_errf(e, "%s: .npy header runs past the end of the file", name);
  const char *h = (const char *)buf + hoff;
  const char *d = dict_value(h, hlen, "descr");
  const char *f = dict_value(h, hlen, "fortran_order");
  const char *s = dict_value(h, hlen, "shape");
  if (!d || !f || !s) return xd_errf(e, "%s: .npy header lacks descr, fortran_order or shape", name);
  const char *hend = h + hlen;
  if (hend - d >= 5 && (memcmp(d + 1, "<f4", 3) == 0 || memcmp(d + 1, "=f4", 3) == 0)) out->type = XD_NPY_F32;
  else if (hend - d >= 5 && (memcmp(d + 1, "<f8", 3) == 0 || memcmp(d + 1, "=f8", 3) == 0)) out->type = XD_NPY_F64;
  else if (hend - d >= 5 && (memcmp(d + 1, "<i4", 3) == 0 || memcmp(d + 1, "=i4", 3) == 0)) out->type = XD_NPY_I32;
  else if (hend - d >= 5 && (memcmp(d + 1, "<i8", 3) == 0 || memcmp(d + 1, "=i8", 3) == 0)) out->type = XD_NPY_I64;
  else return xd_errf(e, "%s: unsupported .npy dtype (need little-endian int32, int64, float32 or float64)", name);
  if (hend - f >= 4 && memcmp(f, "True", 4) == 0) return xd_errf(e, "%s: Fortran-order arrays are not supported", name);
  if (s >= hend || *s != '(') return xd_errf(e, "%s: malformed .npy shape", name);
  s++;
  out->nelem = 1;
  while (s < hend && *s != ')') {
    while (s < hend && (*s == ' ' || *s == ',')) s++;
    if (s < hend && *s == ')') break;
    if (s >= hend || *s < '0' || *s > '9') return xd_errf(e, "%s: malformed .npy shape", name);
    int64_t v = 0;
    while (s < hend && *s >= '0' && *s <= '9') {
      if (v > (INT64_MAX - 9) / 10) return xd_errf(e, "%s: .npy shape too large", name);
      v = v * 10 + (*s++ - '0');
    }
    if (s < hend && *s == 'L') s++;
    if (out->ndim >= XD_NPY_MAX_DIMS) return xd_errf(e, "%s: too many dimensions", name);
    out->shape[out->ndim++] = v;
    if (xd_mul_size(out->nelem, (size_t)v, &out->nelem) != 0) return xd_errf(e, "%s: .npy shape overflows", name);
  }
  if (s >= hend) return xd_errf(e, "%s: malformed .npy shape", name);
  size_t nbytes;
  if (xd_mul_size(out->nelem, type_size(out->type), &nbytes) != 0) return xd_errf(e, "%s: .npy size overflows", name);
  size_t doff = hoff + hlen;
  if (size - doff != nbytes)
    return xd_errf(e, "%s: .npy data is %zu bytes, shape and dtype need %zu", name, size - doff, nbytes);
  out->data = xd_malloc(nbytes);
  if (nbytes) memcpy(out->data, buf + doff, nbytes);
  return 0;
}

int xd_npy_read(const char *path, xd_npy *out, xd_err *e) {
  xd_mmap m;
  memset(out, 0, sizeof *out);
  if (xd_mmap_open(&m, path, e) != 0) return -1;
  int rc = xd_npy_parse(m.data ? m.data : (const uint8_t *)"", m.size, path, out, e);
  xd_mmap_close(&m);
  return rc;
}

void xd_npy_free(xd_npy *a) {
  free(a->data);
  memset(a, 0, sizeof *a);
}

int xd_npy_to_ids(const xd_npy *a, const char *path, int vocab, int32_t **ids, xd_err *e) {
  if (a->type != XD_NPY_I32 && a->type != XD_NPY_I64) return xd_errf(e, "%s: token ids must be int32 or int64", path);
  int32_t *o = xd_malloc(a->nelem * sizeof *o);
  for (size_t i = 0; i < a->nelem; i++) {
    int64_t v = a->type == XD_NPY_I32 ? ((const int32_t *)a->data)[i] : ((const int64_t *)a->data)[i];
    if (v < 0 || v >= vocab) {
      free(o);
      return xd_errf(e, "%s: token id %lld at position %zu is outside the vocabulary [0, %d)", path, (long long)v, i, vocab);
    }
    o[i] = (int32_t)v;
  }
  *ids = o;
  return 0;
}

int xd_npy_write(const char *path, xd_npy_type type, int ndim, const int64_t *shape, const void *data, xd_err *e) {
  char header[256], shp[160] = "";
  size_t nelem = 1;
  for (int i = 0; i < ndim; i++) {
    snprintf(shp + strlen(shp), sizeof shp - strlen(shp), "%lld,%s", (long long)shape[i], i + 1 < ndim ? " " : "");
    nelem *= (size_t)shape[i];
  }
  if (ndim > 1) shp[strlen(shp) - 1] = 0; /* (2, 3) not (2, 3,) ; 1-d keeps (n,) */
  int n = snprintf(header, sizeof header, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }", type_descr(type), shp);
  size_t total = 10 + (size_t)n + 1;
  size_t pad = (64 - total % 64) % 64;
  size_t hlen = (size_t)n + pad + 1;
  uint8_t pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (uint8_t)(hlen & 0xff), (uint8_t)(hlen >> 8)};
  xd_atomic_file f;
  if (xd_atomic_open(&f, path, e) != 0) return -1;
  int rc = xd_atomic_write(&f, pre, 10, e);
  if (rc == 0) rc = xd_atomic_write(&f, header, (size_t)n, e);
  for (size_t i = 0; rc == 0 && i < pad; i++) rc = xd_atomic_write(&f, " ", 1, e);
  if (rc == 0) rc = xd_atomic_write(&f, "\n", 1, e);
  if (rc == 0) rc = xd_atomic_write(&f, data, nelem * type_size(type), e);
  if (rc != 0) { xd_atomic_abort(&f); return -1; }
  return xd_atomic_commit(&f, e);
}
