#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "model/teacher/teacher_cuda.h"
#include "tokenizer/tokenizer.h"

int cli_fail(const xd_err *e) {
  fprintf(stderr, "xdistill: error: %s\n", e->msg);
  return 1;
}
int cli_failf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "xdistill: error: ");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  return 1;
}
int cli_wants_help(int argc, char **argv) {
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return 1;
  return 0;
}

int cli_take_flag(int *argc, char **argv, const char *flag, const char **out) {
  for (int i = 1; i < *argc; i++)
    if (!strcmp(argv[i], flag)) {
      if (i + 1 >= *argc) return cli_failf("%s needs a value", flag);
      *out = argv[i + 1];
      memmove(argv + i, argv + i + 2, (size_t)(*argc - i - 2) * sizeof *argv);
      *argc -= 2;
      return 0;
    }
  return 0;
}

int cli_parse_device(const char *cmd, const char *value, int *cuda) {
  if (!strcmp(value, "cpu")) { *cuda = 0; return 0; }
  if (!strcmp(value, "cuda")) {
    if (!xd_cuda_built()) return cli_failf("%s: --device cuda: built without CUDA (configure with -DXD_CUDA=ON)", cmd);
    *cuda = 1;
    return 0;
  }
  return cli_failf("%s: --device must be cpu or cuda, got '%s'", cmd, value);
}

int cli_tokenizer_filter(int argc, char **argv, const char *cmd, const char *usage, const char *flag,
                         int (*fn)(xd_tokenizer *t, const cJSON *obj, long lineno, int flag_on)) {
  const char *dir = NULL;
  int flag_on = 0;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) dir = argv[++i];
    else if (!strcmp(argv[i], flag)) flag_on = 1;
    else { fputs(usage, stderr); return cli_failf("%s: unknown argument '%s'", cmd, argv[i]); }
  }
  if (!dir) { fputs(usage, stderr); return cli_failf("%s: --tokenizer DIR is required", cmd); }
  xd_err e;
  xd_tokenizer *t;
  if (xd_tokenizer_load(&t, dir, &e)) return cli_fail(&e);
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  long lineno = 0;
  int rc = 0;
  while (!rc && (len = getline(&line, &cap, stdin)) >= 0) {
    lineno++;
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
    if (len == 0) continue;
    cJSON *j = cJSON_ParseWithLength(line, (size_t)len);
    rc = fn(t, j, lineno, flag_on);
    cJSON_Delete(j);
  }
  free(line);
  xd_tokenizer_free(t);
  if (!rc && fflush(stdout)) rc = cli_failf("<stdout>: write failed");
  return rc;
}

int cli_parse_long(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  const long v = strtol(s, &end, 10);
  if (!*s || *end || errno || v < lo || v > hi) {
    if (lo == 1) return cli_failf("%s: %s must be a positive integer (at most %ld), got '%s'", cmd, opt, hi, s);
    return cli_failf("%s: %s must be an integer in [%ld, %ld], got '%s'", cmd, opt, lo, hi, s);
  }
  *out = v;
  return 0;
}
int cli_parse_int(const char *cmd, const char *opt, const char *s, int lo, int hi, int *out) {
  long v;
  if (cli_parse_long(cmd, opt, s, lo, hi, &v)) return 1;
  *out = (int)v;
  return 0;
}
int cli_parse_double(const char *cmd, const char *opt, const char *s, double *out) {
  char *end;
  const double v = strtod(s, &end);
  if (!*s || *end || !isfinite(v)) return cli_failf("%s: %s must be a number, got '%s'", cmd, opt, s);
  *out = v;
  return 0;
}
int cli_parse_u64(const char *cmd, const char *opt, const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  /* strtoull accepts a sign after leading blanks and negates: only digits (after blanks) pass */
  const int signed_ = strpbrk(s, "+-") != NULL;
  const unsigned long long v = *s && !signed_ ? strtoull(s, &end, 10) : 0;
  if (!*s || signed_ || *end || errno) return cli_failf("%s: %s must be an unsigned integer, got '%s'", cmd, opt, s);
  *out = v;
  return 0;
}
