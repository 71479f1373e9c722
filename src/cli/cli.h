/* Shared helpers for the CLI commands. Each command is `int cmd_<name>(int argc, char **argv)`
 * (argv[0] is the command name), registered in cli/commands.def. */
#ifndef XD_CLI_H
#define XD_CLI_H
#include "core/core.h"

typedef struct {
  const char *name;
  int (*fn)(int argc, char **argv);
  const char *help;
} xd_command;

#define XD_CMD(name, fn, help) int fn(int argc, char **argv);
#include "cli/commands.def"
#undef XD_CMD

/* Print "xdistill: error: <msg>" and return 1 (the exit code for bad input). */
int cli_fail(const xd_err *e);
int cli_failf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* True if argv holds --help or -h. */
int cli_wants_help(int argc, char **argv);
/* Remove "FLAG VALUE" from argv (shifting the rest) and return VALUE in *out (left unchanged
 * when FLAG is absent). Returns 1 after printing an error when FLAG has no value. */
int cli_take_flag(int *argc, char **argv, const char *flag, const char **out);
/* --device VALUE: "cpu" (*cuda = 0) or "cuda" (*cuda = 1); returns 1 after printing an error
 * for anything else, or for "cuda" in a build without the CUDA backend. cmd names the command. */
int cli_parse_device(const char *cmd, const char *value, int *cuda);
#endif
