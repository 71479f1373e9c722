/* The training loop driver, generic over a parameter table and a user step function.
 *
 * Per optimiser step (cfg->batch / cfg->micro_batch = N micro-batches):
 *   zero grads; for i in 0..N-1: hooks->step(ctx, i, ...) adds d(loss_i)/dw into p->grad,
 *   where loss_i is the MEAN loss of micro-batch i; grads *= 1/N (so N micro-batches give
 *   the gradient of one batch N times larger); grad norm (deterministic); if the loss or any
 *   gradient is NaN/Inf the step is skipped (logged, never applied; after cfg->max_skips
 *   consecutive skips the run fails with a "diverging" error); clip to cfg->grad_clip; AdamW
 *   at the schedule's lr; metrics line; progress line; checkpoint every cfg->ckpt_every steps
 *   and at the end; stop cleanly after the step in which SIGINT/SIGTERM arrived.
 *
 * Determinism: given the same config, initial weights and a step function that is itself
 * deterministic given (its data-loader state, the run RNG), a run interrupted at any moment
 * (even SIGKILL) and resumed with cfg->resume ends bit-identical to an uninterrupted run.
 * The run RNG and the loader state (hooks->loader_save/restore, an opaque blob of
 * hooks->loader_state_size bytes) live in the checkpoint.
 *
 * Files in cfg->out_dir: config.json (effective configuration), metrics.jsonl (one JSON
 * object per step: step, loss, extra metrics, lr, grad_norm, tokens, tokens_per_s, time_s;
 * or step, skipped, reason for a skipped step), step-NNNNNN.ckpt + latest. metrics.jsonl is
 * an append-only log (not written atomically); on resume its lines past the checkpoint's step
 * are dropped so the log matches the resumed run. */
#ifndef XD_TRAIN_TRAINER_H
#define XD_TRAIN_TRAINER_H
#include "train/checkpoint.h"
#include "train/config_train.h"
#include "train/optim.h"
#include "train/params.h"

#define XD_STEP_MAX_METRICS 64 /* e.g. one loss per layer in stage I */

/* What one micro-batch reports. */
typedef struct {
  double loss;      /* mean loss over the micro-batch */
  uint64_t tokens;  /* tokens it processed */
  int nmetrics;     /* extra named metrics (averaged over micro-batches in the log) */
  /* static strings, the same on every call; plain identifiers (written into JSON as is) */
  const char *metric_names[XD_STEP_MAX_METRICS];
  double metric_values[XD_STEP_MAX_METRICS];
} xd_step_result;

typedef struct {
  /* Forward + backward of micro-batch `micro` (0..n_micro-1) of optimiser step `step`:
   * ADD gradients of its mean loss to p->grad (xd_params_grad), fill *out. The run RNG may
   * be used (it is checkpointed). Return 0, or -1 with e filled to stop the run. */
  int (*step)(void *ctx, xd_params *p, uint64_t step, int micro, int n_micro, xd_rng *rng,
              xd_step_result *out, xd_err *e);
  /* Data-loader state for checkpoints (may be NULL when loader_state_size == 0). They get
   * loader_ctx when it is set, else ctx (an xd_loader: xd_stage_hooks_loader, distill/stages.h). */
  size_t loader_state_size;
  void (*loader_save)(void *ctx, void *buf);
  int (*loader_restore)(void *ctx, const void *buf, xd_err *e);
  void *loader_ctx;
  /* Optional: called after every applied optimiser update and after a checkpoint was loaded,
   * i.e. whenever p->data changed behind the model's back (upload to the GPU, refresh weights
   * derived from the parameters). NULL: nothing to do. */
  int (*weights_changed)(void *ctx, xd_params *p, xd_err *e);
  void *ctx;
  /* Optional: the optimiser state lives on a device (GPU stage II; params_cuda.h's
   * xd_params_cuda_trainer_device fills one). NULL: today's host path, unchanged. */
  const struct xd_trainer_device *device;
} xd_trainer_hooks;

/* Optimiser state on a device. With hooks->device set, the master weights, gradients and AdamW
 * moments that count are the device's: the step function ADDS its gradients to the device
 * gradients (and reads the device weights); the loop calls zero_grad, scale_grad (1/N for N
 * micro-batches, then the clip factor xd_clip_factor(norm, grad_clip) when it is not 1),
 * grad_norm (same determinism and NaN/Inf semantics as xd_params_grad_norm) and adamw_step
 * (xd_adamw_step's semantics) instead of the host functions, and never touches p->grad.
 * The host p's data, m, v are a copy, current only after sync_to_host: it is called right before
 * every checkpoint is written (so after a run that returned 0 or 128+signal, p holds the final
 * state, the last act being a checkpoint); sync_from_host right after a checkpoint was loaded
 * into p on resume (before weights_changed). The caller creates the device state from p's
 * initial weights before xd_trainer_run. Each function returns 0, or -1 with e filled (the run
 * stops with that error). */
typedef struct xd_trainer_device {
  void *ctx;
  int (*zero_grad)(void *ctx, xd_err *e);
  int (*scale_grad)(void *ctx, float s, xd_err *e);
  int (*grad_norm)(void *ctx, double *norm, xd_err *e);
  int (*adamw_step)(void *ctx, const xd_adamw_cfg *cfg, double lr, uint64_t t, xd_err *e);
  int (*sync_to_host)(void *ctx, xd_params *p, xd_err *e);         /* device data, m, v -> p */
  int (*sync_from_host)(void *ctx, const xd_params *p, xd_err *e); /* p's data, m, v -> device */
} xd_trainer_device;

typedef struct {
  uint64_t steps_done;    /* step counter at exit */
  uint64_t skipped_total;
  double last_loss;       /* loss of the last applied step (NaN if none) */
  int resumed;            /* 1 if the run continued from a checkpoint */
} xd_train_result;

/* Run (or resume, when cfg->resume) training to cfg->steps. p must be allocated and
 * initialised (the initial weights; on resume the checkpoint replaces the trainable ones).
 * Returns 0 when done, 128+signal (130 SIGINT, 143 SIGTERM) after saving a checkpoint when
 * interrupted, -1 on error (e filled; "diverging" for too many NaN/Inf steps). After an
 * error p holds whatever the run had reached (it may have been loaded from a checkpoint).
 * `progress` receives the progress line (stderr in the CLI; NULL for none). */
int xd_trainer_run(const xd_train_config *cfg, xd_params *p, const xd_trainer_hooks *hooks,
                   FILE *progress, xd_train_result *res, xd_err *e);

/* SIGINT/SIGTERM handlers that only record the signal (the one piece of global state, a
 * volatile sig_atomic_t in trainer.c); the loop polls it after each step. SA_RESETHAND: a
 * second Ctrl-C kills at once, which is safe because checkpoints are atomic. */
void xd_train_install_signal_handlers(void);
/* The signal received since install (0 if none); clear resets it (tests). */
int xd_train_stop_signal(void);
void xd_train_clear_stop_signal(void);
#endif
