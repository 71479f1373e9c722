/* Win-and-Tie rate and student/teacher comparison (SPEC §6). */
#include "eval/compare.h"

#include <cjson/cJSON.h>
#include "eval/strbuf.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

int xd_wintie_win(double student, double teacher, int k, int n) {
  const double alpha = (double)k / (double)n;
  const double thr = (1.0 - alpha) * teacher;
  return student >= thr - (XD_WINTIE_EPS_REL * fabs(teacher) + XD_WINTIE_EPS_ABS);
}

int xd_wintie_min_k(double student, double teacher, int n) {
  for (int k = 0; k <= n; k++)
    if (xd_wintie_win(student, teacher, k, n)) return k;
  return -1;
}

int xd_wintie_curve(const double *student, const double *teacher, size_t m, int n, double *curve) {
  int k_star = -1;
  for (int k = 0; k <= n; k++) {
    size_t wins = 0;
    for (size_t b = 0; b < m; b++) wins += (size_t)xd_wintie_win(student[b], teacher[b], k, n);
    curve[k] = (double)wins / (double)m;
    /* C >= 0.5 decided on the integer count: 2 * wins >= m, no rounding involved */
    if (k_star < 0 && 2 * wins >= m) k_star = k;
  }
  return k_star;
}

int xd_wintie_grid_steps(double grid, int *n, xd_err *e) {
  if (!(grid > 0) || grid > 1) return xd_errf(e, "grid %g must be in (0, 1]", grid);
  double inv = 1.0 / grid, r = floor(inv + 0.5);
  if (fabs(inv - r) > 1e-6 * r || r > 1e6) return xd_errf(e, "grid %g must be 1/N for an integer N <= 1000000 (e.g. 0.001)", grid);
  *n = (int)r;
  return 0;
}

void xd_compare_free(xd_compare *c) {
  for (size_t i = 0; i < c->n_rows; i++) {
    free(c->rows[i].task);
    free(c->rows[i].metric);
  }
  free(c->rows);
  free(c->curve);
  for (size_t i = 0; i < c->n_skipped; i++) free(c->skipped[i]);
  free(c->skipped);
  free(c->student_model);
  free(c->teacher_model);
  memset(c, 0, sizeof *c);
}

static void add_skip(xd_compare *c, const char *task, const char *why) {
  c->skipped = xd_realloc(c->skipped, (c->n_skipped + 1) * sizeof *c->skipped);
  size_t n = strlen(task) + strlen(why) + 3;
  char *s = xd_malloc(n);
  snprintf(s, n, "%s: %s", task, why);
  c->skipped[c->n_skipped++] = s;
}

int xd_compare_build(const xd_results *student, const xd_results *teacher, double grid, xd_compare *c, xd_err *e) {
  memset(c, 0, sizeof *c);
  if (xd_wintie_grid_steps(grid, &c->n, e)) return -1;
  c->student_model = xd_strdup(student->model ? student->model : "");
  c->teacher_model = xd_strdup(teacher->model ? teacher->model : "");
  c->rows = xd_calloc(teacher->n_tasks ? teacher->n_tasks : 1, sizeof *c->rows);
  for (size_t i = 0; i < teacher->n_tasks; i++) {
    const xd_task_result *tt = &teacher->tasks[i], *st = NULL;
    for (size_t j = 0; j < student->n_tasks; j++)
      if (!strcmp(student->tasks[j].task, tt->task)) st = &student->tasks[j];
    if (!st) { add_skip(c, tt->task, "not in the student's results"); continue; }
    const xd_metric *tm = xd_task_result_metric(tt, tt->primary), *sm = xd_task_result_metric(st, tt->primary);
    if (!sm) { add_skip(c, tt->task, "the student's results lack the teacher's primary metric"); continue; }
    if (!tm->higher_is_better) { add_skip(c, tt->task, "lower-is-better metric, reported but not counted"); continue; }
    xd_compare_row *r = &c->rows[c->n_rows++];
    r->task = xd_strdup(tt->task);
    r->metric = xd_strdup(tt->primary);
    r->teacher = tm->value;
    r->student = sm->value;
    r->recovery = tm->value != 0 ? sm->value / tm->value : NAN;
    r->min_k = xd_wintie_min_k(r->student, r->teacher, c->n);
  }
  for (size_t j = 0; j < student->n_tasks; j++) {
    int found = 0;
    for (size_t i = 0; i < teacher->n_tasks; i++) found |= !strcmp(student->tasks[j].task, teacher->tasks[i].task);
    if (!found) add_skip(c, student->tasks[j].task, "not in the teacher's results");
  }
  if (c->n_rows == 0) {
    xd_compare_free(c);
    return xd_errf(e, "no task with a higher-is-better metric is in both results files");
  }
  double *s = xd_malloc(c->n_rows * sizeof *s), *t = xd_malloc(c->n_rows * sizeof *t);
  for (size_t i = 0; i < c->n_rows; i++) {
    s[i] = c->rows[i].student;
    t[i] = c->rows[i].teacher;
  }
  c->curve = xd_malloc(((size_t)c->n + 1) * sizeof *c->curve);
  c->k_star = xd_wintie_curve(s, t, c->n_rows, c->n, c->curve);
  free(s);
  free(t);
  return 0;
}

/* alpha = k / n, rounded to the grid's decimals so JSON shows 0.018, not 0.018000000000000002 */
static double grid_alpha(int k, int n) {
  double a = (double)k / (double)n;
  int digits = (int)ceil(log10((double)n));
  double scale = pow(10.0, digits);
  return (n == (int)scale) ? round(a * scale) / scale : a;
}

int xd_compare_write_json(const xd_compare *c, const char *path, xd_err *e) {
  cJSON *root = cJSON_CreateObject();
  cJSON_AddStringToObject(root, "format", "xdistill-compare");
  cJSON_AddNumberToObject(root, "version", 1);
  cJSON_AddStringToObject(root, "student", c->student_model);
  cJSON_AddStringToObject(root, "teacher", c->teacher_model);
  cJSON_AddNumberToObject(root, "grid", 1.0 / c->n);
  cJSON *tasks = cJSON_AddArrayToObject(root, "tasks");
  for (size_t i = 0; i < c->n_rows; i++) {
    const xd_compare_row *r = &c->rows[i];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "task", r->task);
    cJSON_AddStringToObject(o, "metric", r->metric);
    cJSON_AddNumberToObject(o, "student", r->student);
    cJSON_AddNumberToObject(o, "teacher", r->teacher);
    if (isfinite(r->recovery)) cJSON_AddNumberToObject(o, "recovery", r->recovery);
    else cJSON_AddNullToObject(o, "recovery");
    cJSON_AddBoolToObject(o, "win_at_0", r->min_k == 0);
    if (r->min_k >= 0) cJSON_AddNumberToObject(o, "alpha_min", grid_alpha(r->min_k, c->n));
    else cJSON_AddNullToObject(o, "alpha_min");
    cJSON_AddItemToArray(tasks, o);
  }
  cJSON_AddNumberToObject(root, "C_0", c->curve[0]);
  cJSON_AddBoolToObject(root, "lossless", c->curve[0] >= 0.5);
  if (c->k_star >= 0) cJSON_AddNumberToObject(root, "alpha_star", grid_alpha(c->k_star, c->n));
  else cJSON_AddNullToObject(root, "alpha_star");
  cJSON *alphas = cJSON_AddArrayToObject(root, "curve_alpha"), *cs = cJSON_AddArrayToObject(root, "curve_C");
  for (int k = 0; k <= c->n; k++) {
    cJSON_AddItemToArray(alphas, cJSON_CreateNumber(grid_alpha(k, c->n)));
    cJSON_AddItemToArray(cs, cJSON_CreateNumber(c->curve[k]));
  }
  cJSON *sk = cJSON_AddArrayToObject(root, "skipped");
  for (size_t i = 0; i < c->n_skipped; i++) cJSON_AddItemToArray(sk, cJSON_CreateString(c->skipped[i]));
  return xd_json_write_file(root, path, e);
}

void xd_compare_print(const xd_compare *c, FILE *fp) {
  fprintf(fp, "student: %s\nteacher: %s\n\n", c->student_model, c->teacher_model);
  fprintf(fp, "%-28s %-14s %9s %9s %9s %9s\n", "task", "metric", "student", "teacher", "recovery", "alpha_min");
  for (size_t i = 0; i < c->n_rows; i++) {
    const xd_compare_row *r = &c->rows[i];
    char rec[32], am[32];
    if (isfinite(r->recovery)) snprintf(rec, sizeof rec, "%.2f%%", 100 * r->recovery);
    else snprintf(rec, sizeof rec, "-");
    if (r->min_k >= 0) snprintf(am, sizeof am, "%.4g", grid_alpha(r->min_k, c->n));
    else snprintf(am, sizeof am, "-");
    fprintf(fp, "%-28.28s %-14.14s %9.4f %9.4f %9s %9s\n", r->task, r->metric, r->student, r->teacher, rec, am);
  }
  for (size_t i = 0; i < c->n_skipped; i++) fprintf(fp, "skipped %s\n", c->skipped[i]);
  fprintf(fp, "\nC_0 = %.4f over %zu tasks (%s)\n", c->curve[0], c->n_rows, c->curve[0] >= 0.5 ? "lossless" : "not lossless");
  if (c->k_star >= 0) fprintf(fp, "alpha* = %.4g (grid %g)\n", grid_alpha(c->k_star, c->n), 1.0 / c->n);
  else fprintf(fp, "alpha* = none (C_alpha < 0.5 for every alpha in [0, 1])\n");
  fprintf(fp, "C_alpha:");
  static const double pts[] = {0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0};
  for (size_t i = 0; i < sizeof pts / sizeof pts[0]; i++) {
    int k = (int)floor(pts[i] * c->n + 0.5);
    if (k <= c->n) fprintf(fp, "  %.2f:%.3f", pts[i], c->curve[k]);
  }
  fputc('\n', fp);
}
