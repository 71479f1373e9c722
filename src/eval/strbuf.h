/* Growable NUL-terminated string buffer and JSON file output, shared by the eval module's
 * prompt builders, report renderer and JSON writers. Zero-initialise (xd_sbuf b = {0}). */
#ifndef XD_EVAL_STRBUF_H
#define XD_EVAL_STRBUF_H
#include "core/core.h"

typedef struct {
  char *s; /* NUL-terminated once anything was written; NULL before */
  size_t n, cap;
} xd_sbuf;

void xd_sbuf_putn(xd_sbuf *b, const char *s, size_t n);
void xd_sbuf_puts(xd_sbuf *b, const char *s);
void xd_sbuf_printf(xd_sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Hand over the heap string ("" if empty) and reset the buffer. */
char *xd_sbuf_take(xd_sbuf *b);

struct cJSON;
/* Print a cJSON tree (pretty, trailing newline), write it atomically, delete the tree. */
int xd_json_write_file(struct cJSON *root, const char *path, xd_err *e);
#endif
