/* xdistill demo — the whole pipeline on the embedded demo teacher (README's first command). */
#define _XOPEN_SOURCE 700
#include <ftw.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "cli/cli.h"
#include "demo/demo.h"

#ifndef XD_DEFAULT_DEMO_TEACHER
#define XD_DEFAULT_DEMO_TEACHER "assets/demo-teacher"
#endif

static const char *usage =
  "usage: xdistill demo [--out DIR] [--teacher DIR] [--quick] [--align-steps N] [--distill-steps N]\n"
  "\n"
  "Runs the whole pipeline on the embedded demo teacher (a small Llama with GQA trained on four\n"
  "synthetic domains, assets/demo-teacher): synthetic data -> token shards -> init (W=64, S=4)\n"
  "-> stage I alignment -> one stage II expert per domain -> merge -> exact-match evaluation of\n"
  "teacher, experts and merged student -> a table with per-domain scores, C_alpha and alpha*,\n"
  "and an HTML report (DIR/report.html). Offline; a few minutes on two cores.\n"
  "\n"
  "  --out DIR            output directory (default xdistill-demo; a previous demo there is replaced)\n"
  "  --teacher DIR        another teacher (default: the embedded one)\n"
  "  --quick              far fewer steps and examples (a smoke test; scores are not meaningful)\n"
  "  --align-steps N      stage I steps (default 150)\n"
  "  --distill-steps N    stage II steps per expert (default 20)\n"
  "  --seed S             seed of data and training (default 1234)\n"
  "  --align-lr X         stage I peak learning rate (default 1e-2)\n"
  "  --distill-lr X       stage II learning rate (default 1e-5)\n"
  "  --eval N             held-out examples per domain (default 40)\n"
  "  --window W           sliding window of the student (default 64)\n"
  "  --seq-len T          training sequence length (default 256)\n"
  "  --batch B            training rows per step (default 4)\n"
  "  --kd-gamma G         stage II CE weight; the KL weight is 1 - G (default 0.9, the paper's)\n";

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb; (void)flag; (void)ftw;
  return remove(p);
}

int cmd_demo(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) { fputs(usage, stdout); return 0; }
  xd_demo_opts o;
  xd_demo_defaults(&o);
  o.teacher = XD_DEFAULT_DEMO_TEACHER;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--quick")) {
      o.align_steps = 10;
      o.distill_steps = 3;
      o.n_train = 200;
      o.n_eval = 8;
      continue;
    }
    if (!v) return cli_failf("demo: option '%s' needs a value (see --help)", a);
    i++;
    if (!strcmp(a, "--out")) o.out = v;
    else if (!strcmp(a, "--teacher")) o.teacher = v;
    else if (!strcmp(a, "--align-steps")) { if (cli_parse_int("demo", a, v, 1, 100000000, &o.align_steps)) return 1; }
    else if (!strcmp(a, "--distill-steps")) { if (cli_parse_int("demo", a, v, 1, 100000000, &o.distill_steps)) return 1; }
    else if (!strcmp(a, "--seed")) { if (cli_parse_u64("demo", a, v, &o.seed)) return 1; }
    else if (!strcmp(a, "--distill-lr")) { if (cli_parse_double("demo", a, v, &o.distill_lr)) return 1; }
    else if (!strcmp(a, "--align-lr")) { if (cli_parse_double("demo", a, v, &o.align_lr)) return 1; }
    else if (!strcmp(a, "--eval")) { if (cli_parse_int("demo", a, v, 1, 1000000, &o.n_eval)) return 1; }
    else if (!strcmp(a, "--kd-gamma")) { if (cli_parse_double("demo", a, v, &o.kd_gamma)) return 1; }
    else if (!strcmp(a, "--window")) { if (cli_parse_int("demo", a, v, 1, 1 << 20, &o.window)) return 1; }
    else if (!strcmp(a, "--seq-len")) { if (cli_parse_int("demo", a, v, 2, 1 << 20, &o.seq_len)) return 1; }
    else if (!strcmp(a, "--batch")) { if (cli_parse_int("demo", a, v, 1, 1 << 16, &o.batch)) return 1; }
    else return cli_failf("demo: unknown option '%s' (see --help)", a);
  }
  if (o.align_steps < 1 || o.distill_steps < 1 || o.n_eval < 1 || o.window < 1 || o.seq_len < 2 || o.batch < 1 || !(o.align_lr > 0) || !(o.distill_lr > 0))
    return cli_failf("demo: step counts, --eval and learning rates must be positive");
  /* Replace a previous demo's output, never anything else. */
  char *marker = xd_path_join(o.out, ".xdistill-demo");
  if (xd_is_dir(o.out)) {
    if (!xd_file_exists(marker)) {
      free(marker);
      return cli_failf("%s: exists and is not a previous demo's output; choose another --out", o.out);
    }
    nftw(o.out, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
  }
  xd_err e;
  if (xd_mkdir_p(o.out, &e) != 0 || xd_write_file_atomic(marker, "xdistill demo output\n", 21, &e) != 0) {
    free(marker);
    return cli_fail(&e);
  }
  free(marker);
  if (xd_demo_run(&o, stderr, stdout, &e) != 0) return cli_fail(&e);
  return 0;
}
