/* Student vs teacher comparison: per-task recovery and the Win-and-Tie rate (SPEC §6).
 *
 * For benchmarks b with scores A_S(b), A_T(b) (higher is better):
 *   1_alpha(b) = [A_S(b) >= (1 - alpha) A_T(b)]   (ties win)
 *   C_alpha    = mean over b of 1_alpha(b)
 *   alpha*     = smallest grid alpha with C_alpha >= 0.5;  "lossless" means C_0 >= 0.5.
 * The grid is alpha_k = k / N, k = 0..N, N = 1 / grid (grid must divide 1, e.g. 0.001 -> N =
 * 1000); alpha is formed as k / N, never by summing steps. Floating point: the scores are
 * decimals (0.56, 0.126) that binary doubles only approximate, so (1 - k/N) * A_T can land a few
 * ulps above a student score that equals it in decimal; the comparison therefore gives the
 * student a tolerance of 1e-9 * |A_T| + 1e-12 (far below any real score difference). */
#ifndef XD_EVAL_COMPARE_H
#define XD_EVAL_COMPARE_H
#include "eval/eval.h"

#define XD_WINTIE_EPS_REL 1e-9
#define XD_WINTIE_EPS_ABS 1e-12

/* 1 if the student wins or ties against the teacher at alpha = k / n. */
int xd_wintie_win(double student, double teacher, int k, int n);
/* Smallest k in [0, n] with a win at k / n, or -1 if none. */
int xd_wintie_min_k(double student, double teacher, int n);
/* curve[k] = C_{k/n} for k = 0..n (curve has n + 1 entries); returns k* (smallest k with
 * curve[k] >= 0.5) or -1. m >= 1 tasks. */
int xd_wintie_curve(const double *student, const double *teacher, size_t m, int n, double *curve);
/* grid -> n = 1 / grid; -1 with e filled if grid is not 1/n for an integer n in [1, 1e6]. */
int xd_wintie_grid_steps(double grid, int *n, xd_err *e);

typedef struct {
  char *task, *metric;
  double student, teacher;
  double recovery; /* student / teacher (NAN when the teacher scores 0) */
  int min_k;       /* smallest grid k at which this task wins, -1 if none */
} xd_compare_row;

typedef struct {
  char *student_model, *teacher_model;
  xd_compare_row *rows;
  size_t n_rows;
  int n;          /* grid steps: alpha_k = k / n */
  double *curve;  /* [n + 1] */
  int k_star;     /* -1: C_alpha < 0.5 for all alpha in [0, 1] */
  char **skipped; /* "task: reason" for tasks left out */
  size_t n_skipped;
} xd_compare;

/* Compare two results files' tasks present in both, on the teacher's primary metric (which the
 * student file must also report); tasks whose metric is lower-is-better (perplexity) are
 * skipped and listed. Fails if no task is left. */
int xd_compare_build(const xd_results *student, const xd_results *teacher, double grid, xd_compare *c, xd_err *e);
void xd_compare_free(xd_compare *c);
/* JSON (docs/eval.md, "xdistill-compare" version 1), written atomically. */
int xd_compare_write_json(const xd_compare *c, const char *path, xd_err *e);
/* Human-readable table + alpha* + a few curve points. */
void xd_compare_print(const xd_compare *c, FILE *fp);
#endif
