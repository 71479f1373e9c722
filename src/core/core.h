/* Core utilities shared by every module: error reporting, checked allocation, files
 * (atomic writes, mmap), half-precision conversion, a seeded RNG and a clock.
 *
 * Error convention: functions that can fail on user input return int (0 = ok, -1 = error)
 * and write a one-line message into a caller-owned xd_err, naming the file and the problem.
 * Internal invariants that only a bug can break use XD_CHECK, which aborts with file:line. */
#ifndef XD_CORE_H
#define XD_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include "xdistill.h"

/* ---- errors ------------------------------------------------------------- */
/* xd_err is declared in xdistill.h (public). */
int xd_errf(xd_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefix an existing message: "context: old message". Returns -1. */
int xd_err_prefix(xd_err *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define XD_CHECK(cond) \
  do { if (!(cond)) xd_fatal(__FILE__, __LINE__, "check failed: %s", #cond); } while (0)
#define XD_CHECKF(cond, ...) \
  do { if (!(cond)) xd_fatal(__FILE__, __LINE__, __VA_ARGS__); } while (0)
_Noreturn void xd_fatal(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Checked allocation: aborts with file:line on out-of-memory (nothing sensible to recover). */
#define xd_malloc(n) xd_malloc_at((n), __FILE__, __LINE__)
#define xd_calloc(n, s) xd_calloc_at((n), (s), __FILE__, __LINE__)
#define xd_realloc(p, n) xd_realloc_at((p), (n), __FILE__, __LINE__)
void *xd_malloc_at(size_t n, const char *file, int line);
void *xd_calloc_at(size_t n, size_t s, const char *file, int line);
void *xd_realloc_at(void *p, size_t n, const char *file, int line);
char *xd_strdup(const char *s);
/* 64-byte aligned allocation for SIMD/BLAS buffers; free with free(). */
void *xd_aligned_alloc(size_t n);

/* Overflow-checked size arithmetic: return 0 on success, -1 on overflow. */
int xd_mul_size(size_t a, size_t b, size_t *out);
int xd_add_size(size_t a, size_t b, size_t *out);

/* ---- files -------------------------------------------------------------- */
typedef struct {
  const uint8_t *data; /* read-only mapping (NULL for an empty file) */
  size_t size;
} xd_mmap;
int xd_mmap_open(xd_mmap *m, const char *path, xd_err *e);
void xd_mmap_close(xd_mmap *m);

/* Read a whole file into a NUL-terminated heap buffer (caller frees). max_size guards
 * against reading a huge file by mistake. */
int xd_read_file(const char *path, size_t max_size, char **out, size_t *out_size, xd_err *e);

/* Atomic write: data goes to "<path>.tmp.<pid>", is fsync'ed, renamed over path, and the
 * directory is fsync'ed; a crash leaves either the old file or the new one, never a mix. */
typedef struct {
  FILE *fp;
  char *path;
  char *tmp_path;
  int failed;
} xd_atomic_file;
int xd_atomic_open(xd_atomic_file *f, const char *path, xd_err *e);
int xd_atomic_write(xd_atomic_file *f, const void *data, size_t n, xd_err *e);
int xd_atomic_commit(xd_atomic_file *f, xd_err *e); /* fsync + rename; frees */
void xd_atomic_abort(xd_atomic_file *f);            /* removes the temp file; frees */
int xd_write_file_atomic(const char *path, const void *data, size_t n, xd_err *e);

int xd_file_exists(const char *path);
int xd_is_dir(const char *path);
int xd_mkdir_p(const char *path, xd_err *e);
/* Join a directory and a file name into a heap string (caller frees). */
char *xd_path_join(const char *dir, const char *name);
int xd_copy_file(const char *src, const char *dst, xd_err *e);

/* ---- numbers ------------------------------------------------------------ */
float xd_bf16_to_f32(uint16_t h);
uint16_t xd_f32_to_bf16(float f); /* round to nearest even, NaN kept */
float xd_f16_to_f32(uint16_t h);
uint16_t xd_f32_to_f16(float f);

/* ---- random numbers: xoshiro256** seeded by splitmix64; state is explicit -- */
typedef struct { uint64_t s[4]; } xd_rng;
void xd_rng_seed(xd_rng *r, uint64_t seed);
uint64_t xd_rng_u64(xd_rng *r);
double xd_rng_uniform(xd_rng *r);  /* [0, 1) */
double xd_rng_normal(xd_rng *r);   /* standard normal (Box-Muller) */

/* ---- time --------------------------------------------------------------- */
double xd_now(void); /* monotonic seconds */

#endif
