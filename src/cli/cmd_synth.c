/* xdistill synth: write the synthetic task domains (train/eval jsonl per domain). */
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "synth/synth.h"

static const char usage_text[] =
  "usage: xdistill synth --out DIR [--seed S] [--train N] [--eval N] [--domains LIST] [--recall-gap G]\n"
  "\n"
  "Write seeded, deterministic synthetic tasks with exact-match answers:\n"
  "  DIR/<domain>/train.jsonl, DIR/<domain>/eval.jsonl, DIR/manifest.json\n"
  "one JSON object a line: {\"domain\", \"prompt\", \"answer\", \"text\"} (text = prompt + answer).\n"
  "Eval prompts are distinct and never appear in train.\n"
  "\n"
  "  --out DIR        output directory (created)\n"
  "  --seed S         unsigned 64-bit seed (default 1234)\n"
  "  --train N        train examples per domain (default 4000)\n"
  "  --eval N         eval examples per domain (default 200)\n"
  "  --domains LIST   comma-separated subset of arith,recall,reverse,facts (default all)\n"
  "  --recall-gap G   min filler words (>= tokens) between the recall bindings and the\n"
  "                   question; keep it above the student's window W (default 96)\n"
  "\n"
  "Domains are described in docs/synth.md.\n";

int cmd_synth(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) { fputs(usage_text, stdout); return 0; }
  xd_synth_opts o;
  xd_synth_opts_default(&o);
  const char *out = NULL;
  xd_err e = {{0}};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strncmp(a, "--", 2) || !strcmp(a, "--"))
      return cli_failf("synth: unexpected argument '%s' (see `xdistill synth --help`)", a);
    if (i + 1 >= argc) return cli_failf("synth: %s needs a value", a);
    const char *v = argv[++i];
    if (!strcmp(a, "--out")) out = v;
    else if (!strcmp(a, "--seed")) { if (cli_parse_u64("synth", a, v, &o.seed)) return 1; }
    else if (!strcmp(a, "--train")) { if (cli_parse_int("synth", a, v, 0, 10000000, &o.n_train)) return 1; }
    else if (!strcmp(a, "--eval")) { if (cli_parse_int("synth", a, v, 0, 10000000, &o.n_eval)) return 1; }
    else if (!strcmp(a, "--recall-gap")) { if (cli_parse_int("synth", a, v, 1, 1000, &o.recall_gap)) return 1; }
    else if (!strcmp(a, "--domains")) { if (xd_synth_parse_domains(v, &o.domain_mask, &e)) return cli_fail(&e); }
    else return cli_failf("synth: unknown option '%s' (see `xdistill synth --help`)", a);
  }
  if (!out || !*out) return cli_failf("synth: --out DIR is required (see `xdistill synth --help`)");
  if (xd_synth_write(out, &o, &e)) return cli_fail(&e);
  printf("synth: wrote %d train + %d eval examples per domain to %s\n", o.n_train, o.n_eval, out);
  return 0;
}
