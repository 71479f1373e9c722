/* xdistill compare STUDENT.json TEACHER.json [--grid 0.001] [--json OUT] */
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "eval/compare.h"

static void usage(FILE *fp) {
  fprintf(fp,
          "usage: xdistill compare STUDENT.json TEACHER.json [--grid 0.001] [--json OUT.json]\n\n"
          "Compares two results files (docs/eval.md) task by task on the teacher's primary metric:\n"
          "recovery = student / teacher, the Win-and-Tie indicator 1_alpha = [S >= (1 - alpha) T]\n"
          "(ties win), C_alpha = mean over tasks, and alpha* = the smallest grid alpha with\n"
          "C_alpha >= 0.5 (SPEC section 6). Lower-is-better metrics (perplexity) are listed, not counted.\n\n"
          "  --grid G     alpha grid step, 1/N for an integer N (default 0.001)\n"
          "  --json OUT   also write the comparison (curve included) as JSON, atomically\n");
}

int cmd_compare(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) { usage(stdout); return 0; }
  const char *files[2] = {NULL, NULL}, *json = NULL;
  int nf = 0;
  double grid = 0.001;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--grid") && i + 1 < argc) {
      if (cli_parse_double("compare", "--grid", argv[++i], &grid)) return 1;
    } else if (!strcmp(argv[i], "--json") && i + 1 < argc) json = argv[++i];
    else if (argv[i][0] == '-' && argv[i][1]) return cli_failf("compare: unknown option '%s' (see --help)", argv[i]);
    else if (nf < 2) files[nf++] = argv[i];
    else return cli_failf("compare: too many arguments (see --help)");
  }
  if (nf != 2) { usage(stderr); return 2; }
  xd_err e = {{0}};
  xd_results s, t;
  if (xd_results_read(&s, files[0], &e)) return cli_fail(&e);
  if (xd_results_read(&t, files[1], &e)) { xd_results_free(&s); return cli_fail(&e); }
  xd_compare c;
  int rc = xd_compare_build(&s, &t, grid, &c, &e);
  xd_results_free(&s);
  xd_results_free(&t);
  if (rc) return cli_fail(&e);
  xd_compare_print(&c, stdout);
  if (json && xd_compare_write_json(&c, json, &e)) rc = -1;
  xd_compare_free(&c);
  return rc ? cli_fail(&e) : 0;
}
