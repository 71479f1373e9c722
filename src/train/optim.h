/* AdamW (decoupled weight decay, bias correction) with per-group LR / weight-decay
 * multipliers, and global-norm gradient clipping, over an xd_params table.
 *
 * Update for every trainable element (PyTorch torch.optim.AdamW semantics), t = 1, 2, ...:
 *   lr_g = lr * group.lr_mult,  wd_g = weight_decay * group.wd_mult
 *   w  -= lr_g * wd_g * w                      (decoupled decay, before the Adam step)
 *   m   = beta1 m + (1 - beta1) g
 *   v   = beta2 v + (1 - beta2) g^2
 *   w  -= lr_g * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
 * Element-wise only, so OpenMP threads cannot change the result. Frozen tensors are not
 * touched. */
#ifndef XD_TRAIN_OPTIM_H
#define XD_TRAIN_OPTIM_H
#include "train/params.h"

typedef struct {
  double beta1, beta2, eps, weight_decay;
} xd_adamw_cfg;

/* One AdamW step; t is the 1-based count of applied updates (bias correction). */
void xd_adamw_step(xd_params *p, const xd_adamw_cfg *c, double lr, uint64_t t);

/* Scale factor that global-norm clipping applies for a gradient norm (1 when norm <= max_norm
 * or max_norm <= 0, which disables clipping). */
double xd_clip_factor(double norm, double max_norm);
/* Clip the gradients of p in place to global norm max_norm, given their norm. Returns the
 * factor applied. */
double xd_clip_grad(xd_params *p, double norm, double max_norm);
#endif
