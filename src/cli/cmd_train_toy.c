/* `xdistill train-toy`: the training loop on a toy MLP regression (train/toy.h). It exists
 * to exercise the loop end to end — checkpoints, SIGINT/SIGTERM, resume after SIGKILL,
 * metrics — with the same configuration keys as the real stages; the tests drive it. */
#include <stdio.h>
#include "cli/cli.h"
#include "train/toy.h"

int cmd_train_toy(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) {
    printf("usage: xdistill train-toy [--config FILE] [--key value ...]\n\n"
           "Trains a toy MLP (32 -> 256 -> 8, tanh) on a synthetic regression task with the\n"
           "training loop of the real stages: AdamW, schedule, clipping, accumulation over\n"
           "batch/micro_batch micro-batches of micro_batch samples, checkpoints in out_dir,\n"
           "SIGINT/SIGTERM save and exit (130/143), --resume continues bit-exactly.\n\n");
    xd_train_config_print_help(stdout, XD_STAGE_ALIGN);
    return 0;
  }
  xd_train_config cfg;
  xd_err e = {{0}};
  if (xd_train_config_from_args(&cfg, XD_STAGE_ALIGN, argc, argv, NULL, 0, NULL, &e) != 0) return cli_fail(&e);
  xd_params p;
  xd_params_init(&p);
  xd_toy toy;
  xd_trainer_hooks hooks;
  xd_toy_init(&toy, &p, 32, 256, 8, (int)cfg.micro_batch, (uint64_t)cfg.seed, &hooks);
  xd_train_install_signal_handlers();
  xd_train_result res;
  int rc = xd_trainer_run(&cfg, &p, &hooks, stderr, &res, &e);
  if (rc == 0) printf("done: %llu steps, %llu skipped, final loss %.6g, eval loss %.6g\n", (unsigned long long)res.steps_done,
                      (unsigned long long)res.skipped_total, res.last_loss, xd_toy_eval(&toy, &p, 1ull << 40, 256));
  xd_toy_free(&toy);
  xd_params_free(&p);
  if (rc < 0) return cli_fail(&e);
  return rc; /* 0, or 130 / 143 after a signal */
}
