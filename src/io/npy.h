/* NumPy .npy files (format 1.0/2.0/3.0, C order, little-endian): read int32/int64/float32/
 * float64 arrays, write float32/int32 arrays atomically. The `forward` command's interface. */
#ifndef XD_NPY_H
#define XD_NPY_H
#include "core/core.h"

typedef enum { XD_NPY_F32, XD_NPY_F64, XD_NPY_I32, XD_NPY_I64 } xd_npy_type;
#define XD_NPY_MAX_DIMS 8
typedef struct {
  xd_npy_type type;
  int ndim;
  int64_t shape[XD_NPY_MAX_DIMS];
  size_t nelem;
  void *data; /* owned; nelem elements of type */
} xd_npy;

int xd_npy_read(const char *path, xd_npy *out, xd_err *e);
/* Parse an in-memory .npy image (fuzzing and tests). */
int xd_npy_parse(const uint8_t *buf, size_t size, const char *name, xd_npy *out, xd_err *e);
void xd_npy_free(xd_npy *a);
/* Convert any integer array to int32 token ids (checking range [0, vocab)); caller frees. */
int xd_npy_to_ids(const xd_npy *a, const char *path, int vocab, int32_t **ids, xd_err *e);
int xd_npy_write(const char *path, xd_npy_type type, int ndim, const int64_t *shape, const void *data, xd_err *e);
#endif
