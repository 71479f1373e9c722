/* xdistill init --teacher DIR --out DIR [hybrid options] — build a student from a teacher. */
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "model/config.h"
#include "model/student/student_init.h"

static const char *usage =
  "usage: xdistill init --teacher DIR --out DIR [options]\n"
  "\n"
  "Build a hybrid xLSTM student from a Hugging Face teacher checkpoint: every teacher tensor is\n"
  "copied, the new mLSTM / gate / mixing parameters are added with their SPEC initial values,\n"
  "config.json gets an \"xdistill\" section, and the tokenizer files are copied.\n"
  "docs/checkpoint-format.md specifies the result.\n"
  "\n"
  "  --teacher DIR       teacher checkpoint directory (config.json + safetensors)\n"
  "  --out DIR           student checkpoint directory to write (created)\n"
  "  --window W          sliding-window length in tokens (default 512)\n"
  "  --sinks S           number of sink tokens (default 4)\n"
  "  --feature-map F     softmax (default) or hedgehog\n"
  "  --d-phi P           feature dimension (default: the teacher's head dimension)\n"
  "  --normalizer N      paper (default, |q.n| + eps) or xlstm (max(|q.n|, exp(-m)) + eps)\n"
  "  --chunk L           chunk length of the chunkwise mLSTM (default 64)\n"
  "  --gate-softcap C    soft cap of the gate pre-activations, 0 = off (default 15)\n";

int cmd_init(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) { fputs(usage, stdout); return 0; }
  const char *teacher = NULL, *out = NULL, *fmap = NULL, *norm = NULL;
  int window = -1, sinks = -1, dphi = -1, chunk = -1;
  double softcap = -1;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v) return cli_failf("init: option '%s' needs a value (see --help)", a);
    i++;
    if (!strcmp(a, "--teacher")) teacher = v;
    else if (!strcmp(a, "--out")) out = v;
    else if (!strcmp(a, "--window")) { if (cli_parse_int("init", a, v, 0, 1 << 30, &window)) return 1; }
    else if (!strcmp(a, "--sinks")) { if (cli_parse_int("init", a, v, 0, 1 << 30, &sinks)) return 1; }
    else if (!strcmp(a, "--d-phi")) { if (cli_parse_int("init", a, v, 1, 1 << 30, &dphi)) return 1; }
    else if (!strcmp(a, "--chunk")) { if (cli_parse_int("init", a, v, 1, 1 << 30, &chunk)) return 1; }
    else if (!strcmp(a, "--feature-map")) fmap = v;
    else if (!strcmp(a, "--normalizer")) norm = v;
    else if (!strcmp(a, "--gate-softcap")) {
      if (cli_parse_double("init", a, v, &softcap)) return 1;
      if (!(softcap >= 0 && softcap <= 1e30)) return cli_failf("init: --gate-softcap must be in [0, 1e30] (0 = off), got '%s'", v);
    } else return cli_failf("init: unknown option '%s' (see --help)", a);
  }
  if (!teacher || !out) return cli_failf("init: --teacher DIR and --out DIR are required (see --help)");
  xd_err e;
  xd_model_config c;
  if (xd_config_load(&c, teacher, &e) != 0) return cli_fail(&e);
  xd_hybrid_config h;
  xd_hybrid_defaults(&h, c.head_dim);
  if (window != -1) h.window = window;
  if (sinks != -1) h.sinks = sinks;
  if (dphi != -1) h.d_phi = dphi;
  if (chunk != -1) h.chunk = chunk;
  if (softcap != -1) h.gate_softcap = (float)softcap;
  if (fmap) {
    if (!strcmp(fmap, "softmax")) h.feature_map = XD_FMAP_SOFTMAX;
    else if (!strcmp(fmap, "hedgehog")) h.feature_map = XD_FMAP_HEDGEHOG;
    else return cli_failf("--feature-map: '%s' is not softmax or hedgehog", fmap);
  }
  if (norm) {
    if (!strcmp(norm, "paper")) h.normalizer = XD_NORM_PAPER;
    else if (!strcmp(norm, "xlstm")) h.normalizer = XD_NORM_XLSTM;
    else return cli_failf("--normalizer: '%s' is not paper or xlstm", norm);
  }
  if (xd_hybrid_validate(&h, c.head_dim, "init options", &e) != 0) return cli_fail(&e);
  if (xd_student_init(teacher, &h, out, &e) != 0) return cli_fail(&e);
  fprintf(stderr, "init: wrote student %s (W=%d, S=%d, %s feature map, d_phi=%d, %s normaliser) from %s\n", out, h.window,
          h.sinks, xd_feature_map_name(h.feature_map), h.d_phi, xd_normalizer_name(h.normalizer), teacher);
  return 0;
}
