#include "core/core.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

const char *xd_version(void) { return XD_VERSION; }

/* ---- errors ------------------------------------------------------------- */
int xd_errf(xd_err *e, const char *fmt, ...) {
  if (!e) return -1;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->msg, sizeof e->msg, fmt, ap);
  va_end(ap);
  return -1;
}

int xd_err_prefix(xd_err *e, const char *fmt, ...) {
  if (!e) return -1;
  char prefix[XD_ERR_MAX], old[XD_ERR_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  memcpy(old, e->msg, sizeof old);
  old[sizeof old - 1] = 0;
  snprintf(e->msg, sizeof e->msg, "%s: %s", prefix, old);
  return -1;
}

void xd_fatal(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "xdistill: internal error at %s:%d: ", file, line);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  abort();
}

/* ---- allocation ----------------------------------------------------------- */
void *xd_malloc_at(size_t n, const char *file, int line) {
  void *p = malloc(n ? n : 1);
  if (!p) xd_fatal(file, line, "out of memory allocating %zu bytes", n);
  return p;
}
void *xd_calloc_at(size_t n, size_t s, const char *file, int line) {
  void *p = calloc(n ? n : 1, s ? s : 1);
  if (!p) xd_fatal(file, line, "out of memory allocating %zu x %zu bytes", n, s);
  return p;
}
void *xd_realloc_at(void *p, size_t n, const char *file, int line) {
  void *q = realloc(p, n ? n : 1);
  if (!q) xd_fatal(file, line, "out of memory reallocating %zu bytes", n);
  return q;
}
char *xd_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *d = xd_malloc(n);
  memcpy(d, s, n);
  return d;
}
void *xd_aligned_alloc(size_t n) {
  void *p = NULL;
  if (posix_memalign(&p, 64, n ? n : 64) != 0) xd_fatal(__FILE__, __LINE__, "out of memory allocating %zu bytes", n);
  return p;
}
int xd_mul_size(size_t a, size_t b, size_t *out) {
  if (a != 0 && b > SIZE_MAX / a) return -1;
  *out = a * b;
  return 0;
}
int xd_add_size(size_t a, size_t b, size_t *out) {
  if (b > SIZE_MAX - a) return -1;
  *out = a + b;
  return 0;
}

/* ---- files -------------------------------------------------------------- */
int xd_mmap_open(xd_mmap *m, const char *path, xd_err *e) {
  m->data = NULL;
  m->size = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return xd_errf(e, "%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    close(fd);
    return xd_errf(e, "%s: cannot stat: %s", path, strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return xd_errf(e, "%s: not a regular file", path);
  }
  m->size = (size_t)st.st_size;
  if (m->size > 0) {
    void *p = mmap(NULL, m->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      close(fd);
      return xd_errf(e, "%s: cannot mmap: %s", path, strerror(errno));
    }
    m->data = p;
  }
  close(fd);
  return 0;
}

void xd_mmap_close(xd_mmap *m) {
  if (m->data) munmap((void *)m->data, m->size);
  m->data = NULL;
  m->size = 0;
}

int xd_read_file(const char *path, size_t max_size, char **out, size_t *out_size, xd_err *e) {
  *out = NULL;
  FILE *fp = fopen(path, "rb");
  if (!fp) return xd_errf(e, "%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) {
    fclose(fp);
    return xd_errf(e, "%s: not a regular file", path);
  }
  if ((uint64_t)st.st_size > max_size) {
    fclose(fp);
    return xd_errf(e, "%s: file is %lld bytes, more than the %zu allowed", path, (long long)st.st_size, max_size);
  }
  size_t n = (size_t)st.st_size;
  char *buf = xd_malloc(n + 1);
  if (n && fread(buf, 1, n, fp) != n) {
    free(buf);
    fclose(fp);
    return xd_errf(e, "%s: read error", path);
  }
  fclose(fp);
  buf[n] = 0;
  *out = buf;
  if (out_size) *out_size = n;
  return 0;
}

int xd_atomic_open(xd_atomic_file *f, const char *path, xd_err *e) {
  memset(f, 0, sizeof *f);
  f->path = xd_strdup(path);
  size_t n = strlen(path) + 32;
  f->tmp_path = xd_malloc(n);
  snprintf(f->tmp_path, n, "%s.tmp.%ld", path, (long)getpid());
  f->fp = fopen(f->tmp_path, "wb");
  if (!f->fp) {
    int rc = xd_errf(e, "%s: cannot create temporary file: %s", path, strerror(errno));
    free(f->path);
    free(f->tmp_path);
    memset(f, 0, sizeof *f);
    return rc;
  }
  return 0;
}

int xd_atomic_write(xd_atomic_file *f, const void *data, size_t n, xd_err *e) {
  if (f->failed) return -1;
  if (n && fwrite(data, 1, n, f->fp) != n) {
    f->failed = 1;
    return xd_errf(e, "%s: write failed: %s", f->path, strerror(errno));
  }
  return 0;
}

static void fsync_parent_dir(const char *path) {
  char *copy = xd_strdup(path);
  int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
  if (dfd >= 0) {
    fsync(dfd);
    close(dfd);
  }
  free(copy);
}

void xd_atomic_abort(xd_atomic_file *f) {
  if (f->fp) fclose(f->fp);
  if (f->tmp_path) unlink(f->tmp_path);
  free(f->path);
  free(f->tmp_path);
  memset(f, 0, sizeof *f);
}

int xd_atomic_commit(xd_atomic_file *f, xd_err *e) {
  int rc = 0;
  if (f->failed) rc = -1;
  if (rc == 0 && fflush(f->fp) != 0) rc = xd_errf(e, "%s: write failed: %s", f->path, strerror(errno));
  if (rc == 0 && fsync(fileno(f->fp)) != 0) rc = xd_errf(e, "%s: fsync failed: %s", f->path, strerror(errno));
  if (fclose(f->fp) != 0 && rc == 0) rc = xd_errf(e, "%s: close failed: %s", f->path, strerror(errno));
  f->fp = NULL;
  if (rc == 0 && rename(f->tmp_path, f->path) != 0) rc = xd_errf(e, "%s: rename failed: %s", f->path, strerror(errno));
  if (rc == 0) fsync_parent_dir(f->path);
  else unlink(f->tmp_path);
  free(f->path);
  free(f->tmp_path);
  memset(f, 0, sizeof *f);
  return rc;
}

int xd_write_file_atomic(const char *path, const void *data, size_t n, xd_err *e) {
  xd_atomic_file f;
  if (xd_atomic_open(&f, path, e) != 0) return -1;
  if (xd_atomic_write(&f, data, n, e) != 0) {
    xd_atomic_abort(&f);
    return -1;
  }
  return xd_atomic_commit(&f, e);
}

int xd_file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}
int xd_is_dir(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int xd_mkdir_p(const char *path, xd_err *e) {
  char *p = xd_strdup(path);
  for (char *s = p + 1; *s; s++) {
    if (*s == '/') {
      *s = 0;
      if (mkdir(p, 0755) != 0 && errno != EEXIST) {
        int rc = xd_errf(e, "%s: cannot create directory: %s", p, strerror(errno));
        free(p);
        return rc;
      }
      *s = '/';
    }
  }
  int rc = 0;
  if (mkdir(p, 0755) != 0 && errno != EEXIST) rc = xd_errf(e, "%s: cannot create directory: %s", p, strerror(errno));
  else if (!xd_is_dir(p)) rc = xd_errf(e, "%s: exists and is not a directory", p);
  free(p);
  return rc;
}

char *xd_path_join(const char *dir, const char *name) {
  size_t a = strlen(dir), b = strlen(name);
  char *s = xd_malloc(a + b + 2);
  memcpy(s, dir, a);
  size_t k = a;
  if (a && dir[a - 1] != '/') s[k++] = '/';
  memcpy(s + k, name, b + 1);
  return s;
}

int xd_copy_file(const char *src, const char *dst, xd_err *e) {
  xd_mmap m;
  if (xd_mmap_open(&m, src, e) != 0) return -1;
  int rc = xd_write_file_atomic(dst, m.data, m.size, e);
  xd_mmap_close(&m);
  return rc;
}

/* ---- half precision --------------------------------------------------------- */
float xd_bf16_to_f32(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
uint16_t xd_f32_to_bf16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}
float xd_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
  if (exp == 0) {
    if (man == 0) u = sign;
    else { /* subnormal: normalise */
      int e = -1;
      do { e++; man <<= 1; } while (!(man & 0x400u));
      u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 31) u = sign | 0x7f800000u | (man << 13);
  else u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  float f;
  memcpy(&f, &u, 4);
  return f;
}
uint16_t xd_f32_to_f16(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  uint32_t sign = (u >> 16) & 0x8000u;
  int32_t exp = (int32_t)((u >> 23) & 0xff);
  uint32_t man = u & 0x7fffffu;
  if (exp == 255) return (uint16_t)(sign | 0x7c00u | (man ? 0x200u : 0));
  int32_t e = exp - 127 + 15;
  if (e >= 31) return (uint16_t)(sign | 0x7c00u);
  if (e <= 0) {
    if (e < -10) return (uint16_t)sign;
    man |= 0x800000u;
    uint32_t shift = (uint32_t)(14 - e);
    uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1))) half++;
    return (uint16_t)(sign | half);
  }
  uint32_t half = sign | ((uint32_t)e << 10) | (man >> 13);
  uint32_t rem = man & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1))) half++;
  return (uint16_t)half;
}

/* ---- rng -------------------------------------------------------------------- */
static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
void xd_rng_seed(xd_rng *r, uint64_t seed) {
  for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}
static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
uint64_t xd_rng_u64(xd_rng *r) {
  uint64_t *s = r->s;
  uint64_t res = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
  s[2] ^= t; s[3] = rotl(s[3], 45);
  return res;
}
double xd_rng_uniform(xd_rng *r) { return (double)(xd_rng_u64(r) >> 11) * 0x1.0p-53; }
double xd_rng_normal(xd_rng *r) {
  double u1 = xd_rng_uniform(r), u2 = xd_rng_uniform(r);
  if (u1 < 1e-300) u1 = 1e-300;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

double xd_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
