/* xdistill merge --expert DIR:WEIGHT ... --out DIR — stage III (SPEC §5). */
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "merge/merge.h"

static const char *usage =
  "usage: xdistill merge --expert DIR:WEIGHT [--expert DIR:WEIGHT ...] --out DIR\n"
  "\n"
  "Merge domain experts trained from the same stage-I student: every tensor becomes\n"
  "sum_i lambda_i theta_i with lambda_i = WEIGHT_i / sum(WEIGHT). Weights must be >= 0 and not\n"
  "all zero. Experts must have identical config.json (architecture), tensor names, shapes and\n"
  "tokenizer.json; otherwise nothing is written. Tensors are streamed one at a time.\n"
  "Paper weights: Llama math .35 code .35 STEM .20 chat .10; Qwen .20 .40 .15 .25.\n"
  "\n"
  "  --expert DIR:WEIGHT  a student checkpoint directory and its weight (repeatable)\n"
  "  --out DIR            output checkpoint directory (created)\n";

int cmd_merge(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) { fputs(usage, stdout); return 0; }
  xd_merge_expert *ex = xd_calloc((size_t)argc, sizeof *ex);
  char **dirs = xd_calloc((size_t)argc, sizeof *dirs);
  int n = 0, rc = 0;
  const char *out = NULL;
  for (int i = 1; i < argc && rc == 0; i++) {
    if (!strcmp(argv[i], "--expert") && i + 1 < argc) {
      const char *spec = argv[++i], *colon = strrchr(spec, ':');
      char *end = NULL;
      double w = colon ? strtod(colon + 1, &end) : 0;
      if (!colon || colon == spec || !end || *end || end == colon + 1) {
        rc = cli_failf("--expert '%s': expected DIR:WEIGHT", spec);
        break;
      }
      dirs[n] = strndup(spec, (size_t)(colon - spec));
      ex[n].dir = dirs[n];
      ex[n].weight = w;
      n++;
    } else if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
    else rc = cli_failf("merge: unknown or incomplete option '%s' (see --help)", argv[i]);
  }
  if (rc == 0 && n == 0) rc = cli_failf("merge: give at least one --expert DIR:WEIGHT");
  if (rc == 0 && !out) rc = cli_failf("merge: --out DIR is required");
  xd_err e;
  if (rc == 0 && xd_merge_run(ex, n, out, &e) != 0) rc = cli_fail(&e);
  if (rc == 0) {
    double sum = 0;
    for (int i = 0; i < n; i++) sum += ex[i].weight;
    fprintf(stderr, "merge: wrote %s from %d experts (", out, n);
    for (int i = 0; i < n; i++) fprintf(stderr, "%s%s %.4f", i ? ", " : "", ex[i].dir, ex[i].weight / sum);
    fprintf(stderr, ")\n");
  }
  for (int i = 0; i < n; i++) free(dirs[i]);
  free(dirs);
  free(ex);
  return rc;
}
