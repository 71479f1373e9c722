/* Stage II on one GPU (`xdistill distill --device cuda`, issue #8): the same step as
 * distill.c (teacher top-k online or from a cache, the student's forward, loss = gamma CE +
 * beta KL over the top-k, the exact backward over every parameter) with everything on the
 * device: the online teacher (teacher_cuda, bf16) and its top-k (xd_cuda_topk_logprobs), the
 * student's training forward/backward (student_cuda_train), the fused KD loss, and the
 * optimiser on the parameter mirror (params_cuda; the trainer's device hooks). The host keeps
 * the data loader, the batch's ids/targets/mask and, at checkpoints, a copy of the weights and
 * AdamW moments (so checkpoints are the CPU's format and either device resumes them).
 * Present in every build: without CUDA, init fails with "built without CUDA". */
#ifndef XD_DISTILL_CUDA_H
#define XD_DISTILL_CUDA_H
#include <stdio.h>
#include "distill/stages.h"

typedef struct xd_distill_cuda xd_distill_cuda;

/* t (online teacher, host weights) or cache; s in mode XD_STUDENT_TRAIN_ALL (its host params
 * are uploaded; the trainer keeps them current at checkpoints). recompute: keep only each
 * layer's input and recompute its activations in the backward (student_cuda_train.h; same
 * bits where the step is deterministic; 12.5 -> 4.7 GiB at the 1B shape, T 4096). Prints the device memory plan to `log` (NULL: quiet).
 * Fills hooks (step, loader state, device optimiser). */
int xd_distill_cuda_init(xd_distill_cuda **out, const xd_teacher *t, const xd_topk_reader *cache, xd_student *s,
                         xd_loader *L, int B, int T, const kd_config *kd, int recompute, xd_trainer_hooks *hooks, FILE *log,
                         xd_err *e);
void xd_distill_cuda_free(xd_distill_cuda *c);
/* Loss of the batch of rows (global indices) on loader L, no update (held-out numbers). */
int xd_distill_cuda_eval_rows(xd_distill_cuda *c, xd_loader *L, const uint64_t *rows, kd_result *res, xd_err *e);
/* Device weights (and AdamW moments) -> s->params on the host (before saving the student). */
int xd_distill_cuda_download(xd_distill_cuda *c, xd_err *e);

/* ---- stage I on the GPU (`xdistill align --device cuda`) ----
 * align.c's step on the device (student_cuda_train.h: xd_student_cuda_align_step): the teacher
 * is run through the student's copy of its weights, so the student must come from this teacher
 * (`xdistill init`) with its shared tensors untouched: init compares them with t's and refuses
 * a student whose copies differ. s in mode XD_STUDENT_TRAIN_NEW. */
typedef struct xd_align_cuda xd_align_cuda;
int xd_align_cuda_init(xd_align_cuda **out, const xd_teacher *t, xd_student *s, xd_loader *L, int B, int T,
                       xd_trainer_hooks *hooks, FILE *log, xd_err *e);
void xd_align_cuda_free(xd_align_cuda *c);
/* Stage I loss (sum over layers) of inputs [B,T] (host), no update; NaN on a device error. */
double xd_align_cuda_eval_loss(xd_align_cuda *c, const int32_t *inputs);
int xd_align_cuda_download(xd_align_cuda *c, xd_err *e);
#endif
