#include "eval/strbuf.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

void xd_sbuf_putn(xd_sbuf *b, const char *s, size_t n) {
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + n + 1) cap *= 2;
    b->s = xd_realloc(b->s, cap);
    b->cap = cap;
  }
  memcpy(b->s + b->n, s, n);
  b->n += n;
  b->s[b->n] = 0;
}

void xd_sbuf_puts(xd_sbuf *b, const char *s) { xd_sbuf_putn(b, s, strlen(s)); }

void xd_sbuf_printf(xd_sbuf *b, const char *fmt, ...) {
  char tmp[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  if ((size_t)n < sizeof tmp) {
    xd_sbuf_putn(b, tmp, (size_t)n);
    return;
  }
  char *big = xd_malloc((size_t)n + 1);
  va_start(ap, fmt);
  vsnprintf(big, (size_t)n + 1, fmt, ap);
  va_end(ap);
  xd_sbuf_putn(b, big, (size_t)n);
  free(big);
}

char *xd_sbuf_take(xd_sbuf *b) {
  char *s = b->s ? b->s : xd_strdup("");
  b->s = NULL;
  b->n = b->cap = 0;
  return s;
}

int xd_json_write_file(struct cJSON *root, const char *path, xd_err *e) {
  char *s = cJSON_Print(root);
  cJSON_Delete(root);
  XD_CHECK(s);
  xd_sbuf b = {0};
  xd_sbuf_puts(&b, s);
  xd_sbuf_puts(&b, "\n");
  free(s);
  int rc = xd_write_file_atomic(path, b.s, b.n, e);
  free(b.s);
  return rc;
}
