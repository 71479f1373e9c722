/* xdistill align — stage I, layer-wise alignment (SPEC §3). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "distill/distill_cuda.h"
#include "distill/stages.h"

static const char *usage =
  "usage: xdistill align --teacher DIR --student DIR --data DIR --out DIR [--device cpu|cuda]\n"
  "                      [--config FILE] [--key value ...]\n"
  "\n"
  "Stage I: one teacher forward per micro-batch gives every layer's input x^l and attention\n"
  "output a^l; each student layer, fed the teacher's x^l (teacher forcing), learns to reproduce\n"
  "a^l (mean squared error; loss = sum over layers). Only the new hybrid parameters train, and\n"
  "only one layer's activations exist at a time. The aligned student is written to --out;\n"
  "checkpoints, metrics.jsonl and the effective configuration go to --out/train/.\n"
  "Ctrl-C saves a checkpoint; --resume continues the same run exactly.\n"
  "\n"
  "  --teacher DIR   teacher checkpoint        --student DIR  student from `xdistill init`\n"
  "  --data DIR      `xdistill data prepare` output (train split; val split for held-out loss)\n"
  "  --out DIR       output student directory\n"
  "  --device cuda   run on GPU 0 (bf16 GEMMs and attention, fp32 core and AdamW); the student must be\n"
  "                  `xdistill init` of this teacher (checked). Checkpoints are the CPU's format.\n"
  "\n";

/* Mean held-out stage I loss over up to 8 validation batches, on either device. */
static double held_out_loss(xd_align_ctx *c, xd_align_cuda *g, int B, int T, const char *data, const xd_train_config *cfg) {
  xd_loader_config lc = {(int)cfg->seq_len, (int)cfg->micro_batch, 0, 0, 0, 1};
  xd_loader *v = NULL;
  xd_err e;
  if (xd_loader_open(&v, data, "val", &lc, &e) != 0) return NAN;
  int32_t *tokens = xd_malloc((size_t)B * (T + 1) * sizeof(int32_t)), *inputs = xd_malloc((size_t)B * T * sizeof(int32_t));
  double sum = 0;
  int n = 0;
  const uint64_t batches = xd_loader_rows_per_rank(v) / (uint64_t)lc.batch;
  for (uint64_t i = 0; i < batches && i < 8; i++, n++) {
    xd_loader_next(v, tokens, NULL);
    for (int b = 0; b < B; b++) memcpy(inputs + (size_t)b * T, tokens + (size_t)b * (T + 1), (size_t)T * sizeof(int32_t));
    sum += g ? xd_align_cuda_eval_loss(g, inputs) : xd_align_eval_loss(c, inputs);
  }
  xd_loader_free(v);
  free(tokens);
  free(inputs);
  return n ? sum / n : NAN;
}

int cmd_align(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) {
    fputs(usage, stdout);
    xd_train_config_print_help(stdout, XD_STAGE_ALIGN);
    return 0;
  }
  const char *tdir = NULL, *sdir = NULL, *data = NULL, *out = NULL, *device = "cpu";
  if (cli_take_flag(&argc, argv, "--device", &device) || cli_take_flag(&argc, argv, "--teacher", &tdir) || cli_take_flag(&argc, argv, "--student", &sdir) || cli_take_flag(&argc, argv, "--data", &data) ||
      cli_take_flag(&argc, argv, "--out", &out))
    return 1;
  if (!tdir || !sdir || !data || !out) return cli_failf("align: --teacher, --student, --data and --out are required (see --help)");
  const int gpu = strcmp(device, "cuda") == 0;
  if (!gpu && strcmp(device, "cpu") != 0) return cli_failf("align: --device must be cpu or cuda, not '%s'", device);
  xd_train_config cfg;
  xd_err e = {{0}};
  if (xd_train_config_from_args(&cfg, XD_STAGE_ALIGN, argc, argv, NULL, 0, NULL, &e) != 0) return cli_fail(&e);
  char *train_dir = xd_path_join(out, "train");
  snprintf(cfg.out_dir, sizeof cfg.out_dir, "%s", train_dir);
  free(train_dir);
  xd_teacher t;
  if (xd_teacher_load(&t, tdir, &e) != 0) return cli_fail(&e);
  xd_student s;
  if (xd_student_load(&s, sdir, XD_STUDENT_TRAIN_NEW, &e) != 0) { xd_teacher_free(&t); return cli_fail(&e); }
  int rc = xd_check_pair(&t, &s, tdir, sdir, &e);
  xd_loader *L = NULL;
  xd_loader_config lc = {(int)cfg.seq_len, (int)cfg.micro_batch, (uint64_t)cfg.seed, 1, 0, 1};
  if (rc == 0) rc = xd_loader_open(&L, data, "train", &lc, &e);
  if (rc == 0) rc = xd_check_data(L, data, tdir, t.cfg.vocab, &e);
  if (rc != 0) {
    if (L) xd_loader_free(L);
    xd_student_free(&s);
    xd_teacher_free(&t);
    return cli_fail(&e);
  }
  xd_align_ctx c;
  xd_align_cuda *g = NULL;
  xd_trainer_hooks hooks;
  const int B = (int)cfg.micro_batch, T = (int)cfg.seq_len;
  if (gpu && (rc = xd_align_cuda_init(&g, &t, &s, L, B, T, &hooks, stderr, &e)) != 0) xd_err_prefix(&e, "--device cuda");
  if (!gpu) xd_align_init(&c, &t, &s, L, B, T, &hooks);
  const double before = rc == 0 ? held_out_loss(&c, g, B, T, data, &cfg) : NAN;
  xd_train_install_signal_handlers();
  xd_train_result res;
  if (rc == 0) rc = xd_trainer_run(&cfg, &s.params, &hooks, stderr, &res, &e);
  if (rc == 0) {
    const double after = held_out_loss(&c, g, B, T, data, &cfg);
    if (isnan(before)) /* no validation split */
      fprintf(stderr, "align: %llu steps (no validation split: no held-out loss)\n", (unsigned long long)res.steps_done);
    else
      fprintf(stderr, "align: %llu steps; held-out stage I loss %.6g -> %.6g (%.1fx lower)\n", (unsigned long long)res.steps_done,
              before, after, before / after);
    if (g && xd_align_cuda_download(g, &e) != 0) rc = -1;
    else if (xd_student_save(&s, out, &e) != 0) rc = -1;
    else fprintf(stderr, "align: wrote %s\n", out);
  }
  if (gpu) xd_align_cuda_free(g);
  else xd_align_free(&c);
  xd_loader_free(L);
  xd_student_free(&s);
  xd_teacher_free(&t);
  if (rc < 0) return cli_fail(&e);
  return rc;
}
