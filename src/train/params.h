/* Parameter table and arenas (llm.c style).
 *
 * A training run sees its model as a table of named fp32 tensors (name, shape, group id,
 * trainable flag). All tensors live in ONE contiguous fp32 arena per role:
 *   data  — fp32 master weights, every tensor            [total floats]
 *   grad  — gradients, trainable tensors only             [n_train floats]
 *   m, v  — AdamW first / second moments, trainable only  [n_train floats]
 * Trainable tensors are laid out first (in the order they were added), frozen ones after,
 * so grad/m/v cover exactly the prefix [0, n_train) of the data arena and a frozen tensor
 * costs no optimiser memory (stage I: the copied teacher weights are frozen, only the new
 * mLSTM/gate parameters train; stage II: everything is trainable — same code).
 *
 * Parameter groups carry a learning-rate multiplier and a weight-decay multiplier (times the
 * run's weight_decay): e.g. a "no_decay" group with wd_mult 0 for norms, biases and gates.
 * Group 0 is created by xd_params_init as "default" (lr_mult 1, wd_mult 1).
 *
 * Usage:
 *   xd_params p; xd_params_init(&p);
 *   int nd = xd_params_add_group(&p, "no_decay", 1.0f, 0.0f);
 *   xd_params_add(&p, "layers.0.P_q", 2, (int64_t[]){64, 64}, 0, 1, &e);
 *   xd_params_add(&p, "layers.0.b_f", 1, (int64_t[]){8}, nd, 1, &e);
 *   xd_params_alloc(&p);                      // arenas, zero-filled; table is now fixed
 *   float *w = xd_params_data(&p, xd_params_find(&p, "layers.0.P_q"));
 *   ...
 *   xd_params_free(&p);
 *
 * Reductions (grad norm) are split into fixed blocks of XD_PARAMS_BLOCK floats summed in
 * double, then the block sums are added in order: the result does not depend on the number
 * of OpenMP threads, which bit-exact resume needs. */
#ifndef XD_TRAIN_PARAMS_H
#define XD_TRAIN_PARAMS_H
#include "core/core.h"

#define XD_PARAMS_MAX_DIMS 8
#define XD_PARAMS_BLOCK 65536 /* floats per reduction block (fixed: part of determinism) */
/* Every tensor starts at a multiple of XD_PARAMS_ALIGN floats (32 bytes; 16 bytes in a bf16
 * mirror of the arena, what cuBLASLt needs of a matrix pointer). The padding is zero in every
 * arena and never trained. */
#define XD_PARAMS_ALIGN 8

typedef struct {
  char *name;
  int ndim;
  int64_t shape[XD_PARAMS_MAX_DIMS];
  size_t numel;
  size_t offset;  /* in floats, into data (and grad/m/v when trainable); set by alloc */
  int group;
  int trainable;
} xd_param_info;

typedef struct {
  char *name;
  float lr_mult; /* learning rate = schedule lr * lr_mult */
  float wd_mult; /* weight decay = run weight_decay * wd_mult (0: no decay) */
} xd_param_group;

typedef struct {
  int n, cap;
  xd_param_info *t;
  int ngroups;
  xd_param_group *groups;
  size_t total;   /* floats in data (padding included) */
  size_t n_train; /* floats in grad/m/v (trainable prefix of data, padding included) */
  float *data, *grad, *m, *v; /* NULL until xd_params_alloc (grad/m/v NULL if n_train == 0) */
  size_t nblocks; /* reduction blocks over [0, n_train) */
  double *block_scratch; /* nblocks doubles, for deterministic reductions */
} xd_params;

void xd_params_init(xd_params *p);
void xd_params_free(xd_params *p);
/* Returns the new group id (>= 1). */
int xd_params_add_group(xd_params *p, const char *name, float lr_mult, float wd_mult);
/* Returns the tensor index, or -1 (duplicate name, bad shape, unknown group, after alloc). */
int xd_params_add(xd_params *p, const char *name, int ndim, const int64_t *shape, int group,
                  int trainable, xd_err *e);
/* Lay out and allocate the arenas (zero-filled). Call once, after every add. */
void xd_params_alloc(xd_params *p);
int xd_params_find(const xd_params *p, const char *name); /* index or -1 */
float *xd_params_data(const xd_params *p, int idx);
float *xd_params_grad(const xd_params *p, int idx); /* NULL for a frozen tensor */
void xd_params_zero_grad(xd_params *p);
/* Multiply every gradient by s (accumulation averaging, clipping). */
void xd_params_scale_grad(xd_params *p, float s);
/* sqrt(sum g^2) over trainable tensors, in double, deterministic (see above). NaN or Inf when
 * any gradient is NaN/Inf, so one pass also serves as the finiteness check. */
double xd_params_grad_norm(xd_params *p);
/* 1 when every value in data is finite. */
int xd_params_data_finite(const xd_params *p);
#endif
