/* Training configuration: ONE table of keys (name, type, per-stage default, one-line doc) in
 * config_train.c. A configuration is built in three layers, later ones winning:
 *   1. the table's defaults for the stage (the paper's values, SPEC §3 / §4),
 *   2. an optional file given by --config FILE: YAML (.yaml/.yml, libyaml) or JSON (.json),
 *      a flat mapping of key -> scalar,
 *   3. command-line flags `--key value` or `--key=value` (a bool flag alone means true;
 *      dashes in a flag name are read as underscores).
 * Unknown keys are errors naming the key and where it came from. The effective
 * configuration is saved as JSON (loadable again with --config) beside every output.
 *
 * Adding a key: one line in the table plus one field in xd_train_config. */
#ifndef XD_TRAIN_CONFIG_H
#define XD_TRAIN_CONFIG_H
#include <stdio.h>
#include "core/core.h"

typedef enum { XD_STAGE_ALIGN = 0, XD_STAGE_DISTILL = 1 } xd_train_stage; /* stage I / II */

typedef struct {
  xd_train_stage stage;
  /* run */
  int64_t seed, steps;
  char out_dir[1024];
  int resume, resume_force;
  /* batch */
  int64_t batch, micro_batch, seq_len;
  /* optimiser */
  double lr, lr_min, weight_decay, beta1, beta2, adam_eps, grad_clip;
  char schedule[16];
  int64_t warmup_steps;
  /* robustness, checkpoints, logging */
  int64_t max_skips, ckpt_every, ckpt_keep, log_every;
  /* stage II loss */
  double kd_gamma, kd_beta, kd_temperature;
  int64_t kd_topk;
  /* memory */
  int recompute;
} xd_train_config;

/* Defaults of the given stage. */
void xd_train_config_defaults(xd_train_config *c, xd_train_stage stage);
/* Apply one file (YAML or JSON by extension). */
int xd_train_config_load_file(xd_train_config *c, const char *path, xd_err *e);
/* Set one key from its text form; `source` names where it came from for errors. */
int xd_train_config_set(xd_train_config *c, const char *key, const char *value, const char *source, xd_err *e);
/* Defaults, then --config FILE (wherever it appears), then every other --key value in order.
 * Arguments not starting with "--" are positional: their indices go to positional[] (up to
 * max_positional; more is an error) and their count to *npositional (either may be NULL when
 * no positional arguments are accepted). argv[0] is the command name and is skipped.
 * --help is ignored here (the caller handles it). Ends with xd_train_config_validate. */
int xd_train_config_from_args(xd_train_config *c, xd_train_stage stage, int argc, char **argv,
                              int *positional, int max_positional, int *npositional, xd_err *e);
/* Cross-key checks (batch divisible by micro_batch, ranges, schedule name). */
int xd_train_config_validate(const xd_train_config *c, xd_err *e);
/* Gradient-accumulation steps: batch / micro_batch. */
int64_t xd_train_config_accum(const xd_train_config *c);
/* Hash of every key that changes the optimisation trajectory (not out_dir, resume, steps,
 * logging or checkpoint cadence): a resumed run must have the same hash. FNV-1a 64. */
uint64_t xd_train_config_hash(const xd_train_config *c);
/* Effective configuration as a JSON object string (caller frees). */
char *xd_train_config_to_json(const xd_train_config *c);
/* Write it atomically to path. */
int xd_train_config_save(const xd_train_config *c, const char *path, xd_err *e);
/* Help text generated from the table: every key, its type, the stage's default, its doc. */
void xd_train_config_print_help(FILE *fp, xd_train_stage stage);
#endif
