/* Self-contained HTML report (inline CSS + SVG, no JavaScript, no network):
 *  - the Win-and-Tie curve C_alpha against alpha with alpha* marked (eval/compare.h),
 *  - per-task bars, teacher vs student, with recovery,
 *  - training curves from JSONL metrics logs (one chart per numeric metric against "step"),
 *  - a heat map of the student's mixing gate o per layer (rows) and head (columns).
 * Every piece is optional; all text from inputs is HTML-escaped. */
#ifndef XD_EVAL_REPORT_H
#define XD_EVAL_REPORT_H
#include "eval/compare.h"

/* A JSONL metrics log: one object per line with a numeric "step" and other numeric fields.
 * A malformed last line (a run killed mid-write) is ignored; a malformed earlier line is an
 * error naming the file and line. Non-numeric fields are ignored. */
typedef struct {
  char *name;      /* metric key, e.g. "loss" */
  double *step, *value;
  size_t n;
} xd_series;

typedef struct {
  char *path;
  xd_series *series;
  size_t n_series;
} xd_metrics_log;

int xd_metrics_log_read(xd_metrics_log *log, const char *path, xd_err *e);
void xd_metrics_log_free(xd_metrics_log *log);

/* Gate file: {"layers": L, "heads": H, "gate": [[o_{l,h}] * H] * L}, values in [0, 1]. */
typedef struct {
  int layers, heads;
  double *gate; /* [layers * heads], row-major by layer */
} xd_gates;

int xd_gates_read(xd_gates *g, const char *path, xd_err *e);
void xd_gates_free(xd_gates *g);

typedef struct {
  const char *title;              /* NULL: "xdistill evaluation report" */
  const xd_results *student;      /* may be NULL */
  const xd_results *teacher;      /* may be NULL */
  const xd_compare *cmp;          /* needs both; NULL: no curve */
  const xd_metrics_log *logs;
  size_t n_logs;
  const xd_gates *gates;          /* may be NULL */
} xd_report_input;

/* Render the report and write it atomically to path. */
int xd_report_write(const xd_report_input *in, const char *path, xd_err *e);
/* Same, into a heap string (caller frees); for tests. */
char *xd_report_render(const xd_report_input *in);
#endif
