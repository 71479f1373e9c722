#include <stdarg.h>
#include <string.h>
#include "cli/cli.h"
#include "model/teacher/teacher_cuda.h"

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
