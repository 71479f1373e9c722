/* Evaluator: runs an xd_task through an xd_lm (eval/lm.h) and scores it with
 * lm-evaluation-harness semantics; results are written as JSON (format in docs/eval.md).
 *
 * Tokenization of a (context, continuation) pair follows the harness's _encode_pair: trailing
 * whitespace of the context moves to the front of the continuation; whole = encode(context +
 * continuation), ctx = encode(context), continuation ids = whole[len(ctx):] (if the tokenizer
 * merged across the boundary so that nothing is left, encode(continuation) is used instead);
 * an empty context becomes [prefix_id]. Contexts longer than max_length are cut from the left. */
#ifndef XD_EVAL_EVAL_H
#define XD_EVAL_EVAL_H
#include "eval/lm.h"
#include "eval/tasks.h"

#define XD_EVAL_MAX_METRICS 8

typedef struct {
  char name[32];
  double value;
  int higher_is_better;
} xd_metric;

typedef struct {
  char *task;
  char *kind;         /* xd_task_kind_name */
  size_t n;           /* documents scored */
  xd_metric metrics[XD_EVAL_MAX_METRICS];
  int n_metrics;
  char primary[32];   /* metric used by `compare` */
  double *items;      /* [n] per-doc primary score (1/0 for accuracies), or NULL */
  int num_fewshot;
  double seconds;
} xd_task_result;

typedef struct {
  size_t batch_size;  /* 0: lm->batch_size */
  FILE *progress;     /* progress line target (NULL: silent) */
  int keep_items;     /* store per-doc scores */
} xd_eval_options;

/* Run one task; fills *res (free with xd_task_result_free). */
int xd_eval_run(const xd_task *task, const xd_lm *lm, const xd_eval_options *opt, xd_task_result *res, xd_err *e);
void xd_task_result_free(xd_task_result *r);
const xd_metric *xd_task_result_metric(const xd_task_result *r, const char *name); /* NULL if absent */

/* A results file: one model, several tasks. */
typedef struct {
  char *model;
  char *role;          /* "student", "teacher" or NULL */
  xd_task_result *tasks;
  size_t n_tasks;
  uint64_t seed;
  size_t limit;
} xd_results;

/* Write atomically as JSON (docs/eval.md, "xdistill-eval-results" version 1). */
int xd_results_write(const xd_results *r, const char *path, xd_err *e);
/* Read and validate a results file; free with xd_results_free. */
int xd_results_read(xd_results *r, const char *path, xd_err *e);
void xd_results_free(xd_results *r);
#endif
