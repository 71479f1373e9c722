/* safetensors reader (mmap, single file or sharded via model.safetensors.index.json) and
 * atomic writer. Every size and offset in a file is validated before use:
 *   header length vs file size and a 100 MiB cap; JSON syntax; dtype known; shape entries
 *   non-negative integers; data_offsets inside the data area, contiguous and non-overlapping
 *   (as the reference implementation requires); byte size = prod(shape) * dtype size;
 *   duplicate names; __metadata__ a map of strings. */
#ifndef XD_SAFETENSORS_H
#define XD_SAFETENSORS_H
#include "core/core.h"

typedef enum {
  XD_DT_F32 = 0, XD_DT_F16, XD_DT_BF16, XD_DT_F64,
  XD_DT_I64, XD_DT_I32, XD_DT_I16, XD_DT_I8, XD_DT_U8, XD_DT_BOOL,
  XD_DT_F8_E4M3, XD_DT_F8_E5M2, XD_DT_U16, XD_DT_U32, XD_DT_U64,
  XD_DT_COUNT
} xd_dtype;

const char *xd_dtype_name(xd_dtype t);
size_t xd_dtype_size(xd_dtype t);
int xd_dtype_parse(const char *s, xd_dtype *out);

#define XD_ST_MAX_DIMS 8
typedef struct {
  char *name;
  xd_dtype dtype;
  int ndim;
  int64_t shape[XD_ST_MAX_DIMS];
  size_t nelem;
  size_t nbytes;
  const uint8_t *data; /* inside the mapping of its file */
  int file_index;      /* into xd_safetensors.paths */
} xd_st_tensor;

typedef struct {
  int nfiles;
  char **paths;
  xd_mmap *maps;
  int ntensors;
  xd_st_tensor *tensors; /* sorted by name */
  int nmeta;
  char **meta_keys, **meta_values; /* __metadata__ of the first file */
} xd_safetensors;

/* path: a .safetensors file, a model.safetensors.index.json, or a directory holding either. */
int xd_st_open(xd_safetensors *st, const char *path, xd_err *e);
/* Parse one file already in memory (used by the fuzz target); data must outlive st. */
int xd_st_parse_buffer(xd_safetensors *st, const uint8_t *data, size_t size, const char *name, xd_err *e);
void xd_st_close(xd_safetensors *st);
const xd_st_tensor *xd_st_find(const xd_safetensors *st, const char *name);
/* Convert a float tensor (F32/F16/BF16) to fp32. n must equal t->nelem. */
int xd_st_to_f32(const xd_st_tensor *t, float *out, size_t n, const char *file, xd_err *e);
/* Find a tensor, check its shape, convert it to fp32 into out (nelem floats). */
int xd_st_load_f32(const xd_safetensors *st, const char *name, int ndim, const int64_t *shape, float *out, xd_err *e);

typedef struct {
  const char *name;
  xd_dtype dtype;
  int ndim;
  int64_t shape[XD_ST_MAX_DIMS];
  const void *data; /* nelem * dtype size bytes */
} xd_st_entry;
/* Write a safetensors file atomically. meta_keys/values may be NULL when nmeta == 0. */
int xd_st_write(const char *path, const xd_st_entry *entries, int n, const char *const *meta_keys,
                const char *const *meta_values, int nmeta, xd_err *e);
/* Streaming write: the header is written from the entries (their data pointers are ignored),
 * then fill(ctx, i, buf) is called for each tensor in order to produce its bytes into buf
 * (nbytes of tensor i), so only one tensor is in memory at a time. Atomic like xd_st_write. */
typedef int (*xd_st_fill_fn)(void *ctx, int index, void *buf, size_t nbytes, xd_err *e);
int xd_st_write_stream(const char *path, const xd_st_entry *entries, int n, const char *const *meta_keys,
                       const char *const *meta_values, int nmeta, xd_st_fill_fn fill, void *ctx, xd_err *e);
#endif
