/* The optimiser on the GPU (issue #8, stage II): a device mirror of an allocated xd_params.
 *
 * Device memory (one allocation per role, same offsets as the host arenas):
 *   data fp32 [total]     master weights, every tensor (tensor i at p->t[i].offset)
 *   bf16      [total]     bf16 bits of data (round to nearest even, as xd_f32_to_bf16), for the GEMMs
 *   grad, m, v fp32 [n_train]   trainable prefix only (frozen tensors cost no optimiser memory)
 * plus a small table for the one-launch AdamW kernel (segments of one parameter group and the
 * segments of each 4096-element chunk) and the grad norm's block sums.
 *
 * Results are bit-identical to the host functions on the same inputs: xd_params_cuda_adamw_step
 * to xd_adamw_step (same float formulas, IEEE .rn operations, no FMA), xd_params_cuda_scale_grad
 * to xd_params_scale_grad, xd_params_cuda_grad_norm to xd_params_grad_norm (the same
 * XD_PARAMS_BLOCK blocks, each summed in index order in double, block sums added in order on the
 * host). The bf16 mirror of the trainable tensors is refreshed by every AdamW step; frozen
 * tensors' bf16 by create/upload.
 *
 * Everything is queued on the context's stream; grad_norm and download synchronise.
 * Compiled only with the CUDA backend (XD_HAVE_CUDA). The parameter table of p must not change
 * between create and the other calls (upload/download check the sizes).
 *
 * Trainer: xd_params_cuda_trainer_device fills an xd_trainer_device (train/trainer.h) whose
 * hooks run the loop's zero / scale / norm / AdamW on these buffers and move data, m, v between
 * host and device around checkpoints. */
#ifndef XD_TRAIN_PARAMS_CUDA_H
#define XD_TRAIN_PARAMS_CUDA_H
#include "ops/cuda/cuda_ops.h"
#include "train/optim.h"
#include "train/params.h"
#include "train/trainer.h"

typedef struct xd_params_cuda xd_params_cuda; /* opaque */

/* Mirror of an allocated xd_params on the device: data fp32 [p->total], bf16 [p->total] (same
 * offsets: tensor i at p->t[i].offset in both), grad/m/v fp32 [p->n_train]. Uploads data, m, v
 * from the host arrays and fills the bf16 mirror (round to nearest even, as xd_f32_to_bf16).
 * Gradients start at zero. Fails (one line) on a device allocation failure or more than
 * XD_CUDA_ADAMW_MAX_GROUPS parameter groups. */
int xd_params_cuda_create(xd_params_cuda **out, xd_cuda_ctx *c, const xd_params *p, xd_err *e);
void xd_params_cuda_free(xd_params_cuda *d); /* NULL is fine */
float *xd_params_cuda_data(const xd_params_cuda *d, int idx);     /* device pointer of tensor idx */
uint16_t *xd_params_cuda_bf16(const xd_params_cuda *d, int idx);
float *xd_params_cuda_grad(const xd_params_cuda *d, int idx);     /* NULL for a frozen tensor */
size_t xd_params_cuda_bytes(const xd_params_cuda *d);              /* device bytes held */
/* host data, m, v -> device, refresh bf16 */
int xd_params_cuda_upload(xd_params_cuda *d, const xd_params *p, xd_err *e);
/* device data, m, v -> host (checkpoints); synchronises */
int xd_params_cuda_download(xd_params_cuda *d, xd_params *p, xd_err *e);
int xd_params_cuda_zero_grad(xd_params_cuda *d, xd_err *e);
int xd_params_cuda_scale_grad(xd_params_cuda *d, float s, xd_err *e);
/* g *= s deferred (branch trainfuse): nothing runs now; the next grad_norm reads g times the
 * pending factors and the next adamw_step uses g times them (each product rounded to float in
 * order: the bits xd_params_cuda_scale_grad would have left), saving a pass over the gradients.
 * The gradient buffer keeps the unscaled sums (also after adamw_step, which consumes the
 * factors); zero_grad drops them, scale_grad applies them first. Gradients must not be added
 * while a factor is pending (the trainer scales only after the last micro-batch). */
int xd_params_cuda_scale_grad_deferred(xd_params_cuda *d, float s, xd_err *e);
/* sqrt(sum g^2) over [0, n_train) in double, deterministic: the same fixed XD_PARAMS_BLOCK
 * blocks as xd_params_grad_norm, each summed in double, block sums added in order. NaN/Inf when
 * any gradient is. Pending deferred scales are applied to each value read. Synchronises
 * (returns a host double). */
int xd_params_cuda_grad_norm(xd_params_cuda *d, double *norm, xd_err *e);
/* One AdamW step with xd_adamw_step's exact semantics and float formulas (per-group lr/wd
 * multipliers from the host table), then refresh the bf16 mirror of the trainable tensors. */
int xd_params_cuda_adamw_step(xd_params_cuda *d, const xd_adamw_cfg *cfg, double lr, uint64_t t, xd_err *e);

/* First-written gradients (branch trainfuse): a backward that produces tensor idx's whole
 * gradient in one write (a GEMM's dW with beta 0) registers it once; zero_grad then clears only
 * the other gradients and marks the step fresh. The backward asks xd_params_cuda_grad_fresh:
 * 1 -> write those gradients (they hold stale values), 0 -> add to them (a later micro-batch);
 * after writing them it calls xd_params_cuda_grad_written. If a reader (grad_norm, scale_grad,
 * adamw_step) comes while still fresh, the registered gradients are zeroed first, so they
 * always read as a full zero_grad + sums would. Only direct reads of the gradient buffer between
 * zero_grad and the backward see stale values there. */
int xd_params_cuda_set_first_write(xd_params_cuda *d, int idx, xd_err *e);
int xd_params_cuda_grad_fresh(const xd_params_cuda *d);
void xd_params_cuda_grad_written(xd_params_cuda *d);

/* Additions (branch gpuopt): */
xd_cuda_ctx *xd_params_cuda_ctx(const xd_params_cuda *d);
/* Whole device arenas (NULL when n_train == 0 for grad/m/v), for kernels over all parameters. */
float *xd_params_cuda_data_all(const xd_params_cuda *d);
float *xd_params_cuda_grad_all(const xd_params_cuda *d);
float *xd_params_cuda_m_all(const xd_params_cuda *d);
float *xd_params_cuda_v_all(const xd_params_cuda *d);
uint16_t *xd_params_cuda_bf16_all(const xd_params_cuda *d);
/* Hooks for xd_trainer_run (ctx = d): zero_grad, scale_grad (deferred: folded into grad_norm and
 * adamw_step), grad_norm, adamw_step on the device,
 * sync_to_host = xd_params_cuda_download, sync_from_host = xd_params_cuda_upload. */
void xd_params_cuda_trainer_device(xd_params_cuda *d, xd_trainer_device *out);
#endif
