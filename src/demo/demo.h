/* `xdistill demo`: the whole pipeline on the embedded demo teacher, on this machine, offline:
 * synthetic domains -> token shards -> init -> stage I -> one stage II expert per domain ->
 * merge -> exact-match evaluation of teacher, experts and merged student -> a table (per-domain
 * scores, recovery, C_alpha, alpha*) and the HTML report. */
#ifndef XD_DEMO_H
#define XD_DEMO_H
#include <stdio.h>
#include "core/core.h"

typedef struct {
  const char *teacher;  /* teacher directory */
  const char *out;      /* output directory (a previous demo's output there is replaced) */
  uint64_t seed;
  int window, sinks, chunk;
  int seq_len, batch;
  int align_steps, distill_steps;
  double align_lr, distill_lr;
  int n_train, n_eval;  /* synthetic examples per domain */
  int threads;
} xd_demo_opts;

void xd_demo_defaults(xd_demo_opts *o);
/* Runs everything, printing progress to `log` and the final table to `out`. */
int xd_demo_run(const xd_demo_opts *o, FILE *log, FILE *out, xd_err *e);
#endif
