/* xdistill report --results DIR_OR_FILES... [--logs METRICS.jsonl...] [--gates GATES.json]
 *                 [--title T] [--grid 0.001] --out report.html */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "eval/report.h"

static void usage(FILE *fp) {
  fprintf(fp,
          "usage: xdistill report [--results DIR_OR_FILE...] [--logs METRICS.jsonl...] [--gates GATES.json]\n"
          "                       [--title TEXT] [--grid 0.001] --out report.html\n\n"
          "Writes one self-contained HTML file (inline SVG + CSS, no scripts, no network): the\n"
          "Win-and-Tie curve C_alpha with alpha*, per-task teacher/student bars with recovery,\n"
          "training curves from JSONL metrics logs, and a heat map of the mixing gate o.\n\n"
          "  --results   results files (docs/eval.md) or directories holding them (*.json that are\n"
          "              results files). The student and teacher are told apart by their \"role\"\n"
          "              field; without one, the first file is the student, the second the teacher.\n"
          "  --logs      JSONL metrics logs: one object per line with \"step\" and numeric metrics\n"
          "  --gates     {\"layers\": L, \"heads\": H, \"gate\": [[...]]} (values in [0, 1])\n");
}

typedef struct {
  xd_results *r;
  size_t n, cap;
} results_list;

static int add_results(results_list *l, const char *path, int quiet_if_other, xd_err *e) {
  if (l->n == l->cap) {
    l->cap = l->cap ? l->cap * 2 : 4;
    l->r = xd_realloc(l->r, l->cap * sizeof *l->r);
  }
  if (xd_results_read(&l->r[l->n], path, e)) {
    /* in a directory, other JSON files (compare output, configs) are not an error */
    if (quiet_if_other && strstr(e->msg, "not an xdistill results file")) return 0;
    return -1;
  }
  l->n++;
  return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int add_dir(results_list *l, const char *dir, xd_err *e) {
  DIR *d = opendir(dir);
  if (!d) return xd_errf(e, "%s: cannot open directory", dir);
  char **names = NULL;
  size_t n = 0;
  struct dirent *de;
  while ((de = readdir(d))) {
    size_t len = strlen(de->d_name);
    if (len > 5 && !strcmp(de->d_name + len - 5, ".json")) {
      names = xd_realloc(names, (n + 1) * sizeof *names);
      names[n++] = xd_path_join(dir, de->d_name);
    }
  }
  closedir(d);
  if (n) qsort(names, n, sizeof *names, cmp_str);
  int rc = 0;
  for (size_t i = 0; i < n && !rc; i++) rc = add_results(l, names[i], 1, e);
  for (size_t i = 0; i < n; i++) free(names[i]);
  free(names);
  return rc;
}

int cmd_report(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) { usage(stdout); return 0; }
  const char **res_args = xd_calloc((size_t)argc, sizeof *res_args), **log_args = xd_calloc((size_t)argc, sizeof *log_args);
  size_t n_res = 0, n_log = 0;
  const char *gates_path = NULL, *out = NULL, *title = NULL;
  double grid = 0.001;
  int mode = 0, rc = 0; /* 1: collecting --results values, 2: --logs values */
  for (int i = 1; i < argc && !rc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--results")) mode = 1;
    else if (!strcmp(a, "--logs")) mode = 2;
    else if (!strcmp(a, "--gates") && i + 1 < argc) { gates_path = argv[++i]; mode = 0; }
    else if (!strcmp(a, "--out") && i + 1 < argc) { out = argv[++i]; mode = 0; }
    else if (!strcmp(a, "--title") && i + 1 < argc) { title = argv[++i]; mode = 0; }
    else if (!strcmp(a, "--grid") && i + 1 < argc) {
      rc = cli_parse_double("report", "--grid", argv[++i], &grid);
      mode = 0;
    } else if (a[0] == '-' && a[1] == '-') rc = cli_failf("report: unknown or incomplete option '%s' (see --help)", a);
    else if (mode == 1) res_args[n_res++] = a;
    else if (mode == 2) log_args[n_log++] = a;
    else rc = cli_failf("report: unexpected argument '%s' (see --help)", a);
  }
  if (!rc && !out) rc = cli_failf("report: --out is required (see --help)");
  if (!rc && !n_res && !n_log && !gates_path) rc = cli_failf("report: nothing to report: give --results, --logs or --gates");
  xd_err e = {{0}};
  results_list rl = {0};
  xd_metrics_log *logs = xd_calloc(n_log ? n_log : 1, sizeof *logs);
  size_t logs_ok = 0;
  xd_gates gates = {0};
  int have_gates = 0;
  xd_compare cmp;
  int have_cmp = 0;
  for (size_t i = 0; i < n_res && !rc; i++)
    if ((xd_is_dir(res_args[i]) ? add_dir(&rl, res_args[i], &e) : add_results(&rl, res_args[i], 0, &e))) rc = cli_fail(&e);
  if (!rc && n_res && rl.n == 0) rc = cli_failf("report: no results files found in --results");
  for (size_t i = 0; i < n_log && !rc; i++) {
    if (xd_metrics_log_read(&logs[i], log_args[i], &e)) rc = cli_fail(&e);
    else logs_ok++;
  }
  if (!rc && gates_path) {
    if (xd_gates_read(&gates, gates_path, &e)) rc = cli_fail(&e);
    else have_gates = 1;
  }
  /* roles: explicit "role" fields first, then file order (student, teacher) */
  const xd_results *student = NULL, *teacher = NULL;
  for (size_t i = 0; i < rl.n && !rc; i++) {
    const char *role = rl.r[i].role;
    if (role && !strcmp(role, "student") && !student) student = &rl.r[i];
    else if (role && !strcmp(role, "teacher") && !teacher) teacher = &rl.r[i];
    else if (role && (!strcmp(role, "student") || !strcmp(role, "teacher")))
      fprintf(stderr, "xdistill: warning: a second results file with role \"%s\" (model %s) is ignored\n", role, rl.r[i].model);
  }
  for (size_t i = 0; i < rl.n && !rc; i++) {
    const xd_results *r = &rl.r[i];
    if (r == student || r == teacher || (r->role && (!strcmp(r->role, "student") || !strcmp(r->role, "teacher")))) continue;
    if (!student) student = r;
    else if (!teacher) teacher = r;
  }
  if (!rc && rl.n > 2) fprintf(stderr, "xdistill: warning: %zu results files; using %s (student) and %s (teacher)\n", rl.n, student ? student->model : "-", teacher ? teacher->model : "-");
  if (!rc && student && teacher) {
    if (xd_compare_build(student, teacher, grid, &cmp, &e)) rc = cli_fail(&e);
    else have_cmp = 1;
  }
  if (!rc) {
    xd_report_input in = {title, student, teacher, have_cmp ? &cmp : NULL, logs, logs_ok, have_gates ? &gates : NULL};
    if (xd_report_write(&in, out, &e)) rc = cli_fail(&e);
    else fprintf(stderr, "wrote %s\n", out);
  }
  if (have_cmp) xd_compare_free(&cmp);
  xd_gates_free(&gates);
  for (size_t i = 0; i < logs_ok; i++) xd_metrics_log_free(&logs[i]);
  free(logs);
  for (size_t i = 0; i < rl.n; i++) xd_results_free(&rl.r[i]);
  free(rl.r);
  free(res_args);
  free(log_args);
  return rc;
}
