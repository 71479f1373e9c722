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

/* Numbers on the command line: the whole of s, within [lo, hi] (finite for a double); else one
 * line "<cmd>: <opt> must be a positive integer (at most hi), got 's'" (lo 1), "... an integer in
 * [lo, hi] ...", "... a number ..." or "... an unsigned integer ..." and 1. */
int cli_parse_long(const char *cmd, const char *opt, const char *s, long lo, long hi, long *out);
int cli_parse_int(const char *cmd, const char *opt, const char *s, int lo, int hi, int *out);
int cli_parse_double(const char *cmd, const char *opt, const char *s, double *out);
int cli_parse_u64(const char *cmd, const char *opt, const char *s, uint64_t *out);

/* The tokenizer filters (`encode`, `decode`): argv is `--tokenizer DIR` and at most the one
 * switch `flag` (flag_on below: 1 when given); anything else, or no DIR, prints usage to stderr
 * and fails. Then the tokenizer is loaded and each non-empty line of stdin (CR / LF trimmed) is
 * parsed as JSON and handed to fn(t, obj, lineno, flag_on), which writes its output line (0) or
 * fails (non-zero, after cli_fail*); obj is NULL for a line that is not JSON (fn says what it
 * expected). Returns the first failure, else 0 after flushing stdout. */
struct cJSON;
struct xd_tokenizer;
int cli_tokenizer_filter(int argc, char **argv, const char *cmd, const char *usage, const char *flag,
                         int (*fn)(struct xd_tokenizer *t, const struct cJSON *obj, long lineno, int flag_on));
#endif
