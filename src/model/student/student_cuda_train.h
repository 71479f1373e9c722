/* The student's training forward and exact backward on one GPU (issue #8: stage II on CUDA).
 * The GPU twin of student_train.h (xd_student_forward_train / xd_student_backward), composed
 * from the CUDA ops of src/ops/cuda, function by function in the same order as the CPU's
 * student_train_impl.inc, which is its test oracle (tests/gpu/test_gpu_student_train.c).
 *
 * Weights are an xd_params_cuda mirror of the student's xd_params (train/params_cuda.h): fp32
 * master weights, a bf16 copy of every tensor (same offsets), fp32 gradients. The teacher-shared
 * matrices enter the GEMMs as bf16 (q|k|v and gate|up fused: their tensors are adjacent in the
 * table, so the fused matrix is one slice of the arena); norm weights, biases and the hybrid
 * parameters are read in fp32. Activations and every activation gradient are fp32 except GEMM
 * inputs (bf16 copies); dW, db and all other parameter gradients are fp32 and ACCUMULATE into the
 * mirror's grad arena (zero it per optimiser step), as the CPU backward does.
 *
 * Saved per layer (N = B*T rows): h0, x (fp32 + bf16), q_raw, k_raw, v_raw, q, k, the local
 * branch's output and lse, phi(q), phi(k), the gate pre-activations, the mLSTM output and its
 * chunk-boundary states, the mixing gate, the core output (bf16), h1, the MLP input (bf16), the
 * fused gate|up pre-activations (bf16), the SwiGLU output (bf16) and, for post-norm families,
 * the attention and MLP outputs before their norms. Everything is allocated once at create; a
 * step allocates nothing (the ops' own scratch comes from the stream-ordered pool).
 *
 * Activation recomputation (recompute = 1 at create): every layer keeps only its input h0
 * [N, D]; one layer's set of the other saves is shared, and the backward re-runs each layer's
 * forward (all but the last, whose saves the forward leaves in place) right before that layer's
 * backward. Same kernels on the same inputs, so the gradients are bit-identical to the default
 * wherever the step is deterministic (not the atomic SWA backward fallback: last bits);
 * memory falls from L full sets to L inputs + one set (at the 1B shape, T 4096: 9.4 -> 1.6 GiB, or
 * 12.45 -> 4.68 GiB with the logits and their gradient) for about one more student forward per
 * step (+14% on an H100).
 *
 * Only available with XD_HAVE_CUDA. */
#ifndef XD_STUDENT_CUDA_TRAIN_H
#define XD_STUDENT_CUDA_TRAIN_H
#ifdef XD_HAVE_CUDA
#include <stdint.h>
#include <stdio.h>
#include "model/student/student.h"
#include "ops/cuda/cuda_ops.h"
#include "train/trainer.h"
#include "train/params_cuda.h"

typedef struct xd_student_cuda_train xd_student_cuda_train;

/* Device memory the training activations take for (B, T), bytes (without the weights). */
size_t xd_student_cuda_train_bytes(const xd_model_config *c, const xd_hybrid_config *hy, int B, int T, int recompute,
                                   int head_rows);


/* s gives the configuration and the tensor table (s->params, the same table pd mirrors); its
 * host weights are not read. Every tensor must be trainable (mode XD_STUDENT_TRAIN_ALL).
 * Fails with one line for shapes the kernels lack (d_phi > 128, head dim > 128 or odd, chunk >
 * 64) or when device memory is short.
 * head_rows: rows of logits [., V] held at once (distill: xd_stage2_head_rows(), 4096; the fp32
 * logits and their bf16 gradient take 6 V bytes a row, 2.9 GiB at V 128256). 0 or >= B*T: all ("whole": the forward makes
 * the logits, xd_student_cuda_train_logits reads them, the backward starts with the LM head's).
 * Fewer ("row blocks"): the forward stops at the final norm, and xd_student_cuda_train_loss runs
 * the LM head, the KD loss and, with the gradient, the LM head's backward block by block, so
 * the logits and their gradient take head_rows / (B*T) of their whole size; the gradients are
 * the whole mode's up to the order of dW_head's fp32 sums over rows. */
int xd_student_cuda_train_create(xd_student_cuda_train **out, xd_cuda_ctx *c, const xd_student *s,
                                 xd_params_cuda *pd, int B, int T, int recompute, int head_rows, xd_err *e);
void xd_student_cuda_train_free(xd_student_cuda_train *m);

/* ids [B,T] on the host (checked against the vocabulary) -> with whole logits, logits [B*T, V]
 * fp32 on the device (xd_student_cuda_train_logits), saving the activations; in row blocks the
 * final norm's output only (the loss makes the logits). */
int xd_student_cuda_train_forward(xd_student_cuda_train *m, const int32_t *ids, xd_err *e);
/* The logits [B*T, V] and the bf16 buffer [B*T, V] for d(loss)/d(logits) (the fused KD loss
 * writes it, grad dtype bf16) with whole logits; NULL in row blocks. */
float *xd_student_cuda_train_logits(const xd_student_cuda_train *m);
uint16_t *xd_student_cuda_train_dlogits(const xd_student_cuda_train *m);
int xd_student_cuda_train_head_rows(const xd_student_cuda_train *m); /* as kept: 1 .. B*T */
/* The fused KD loss's arguments for this model (kd's configuration, its fp32 logits in, the bf16
 * dlogits buffer out, dloss 1, everything else zero): the caller sets the batch's buffers
 * (targets, mask, top-k ids and log-probs, per-row CE / KL, result). */
void xd_student_cuda_train_kd_args(const xd_student_cuda_train *m, const kd_config *kd, xd_cuda_kd_args *a);
/* The KD loss of the last forward (a: from xd_student_cuda_train_kd_args, the batch's buffers
 * set; its cfg must be B*T x V), queued on the model's stream, result in a->res. Whole logits:
 * xd_cuda_kd_loss_fused(a). Row blocks: per block the LM head GEMM, the loss's rows and, with
 * backward != 0, the LM head's backward (dW_head += or first-written, the final norm's dx), the
 * same numbers per row as the whole call. */
int xd_student_cuda_train_loss(xd_student_cuda_train *m, const xd_cuda_kd_args *a, int backward, xd_err *e);
/* Backward of the last forward from the loss's gradient: adds every parameter's gradient into
 * the mirror's grad arena. From its second call on (per zero_grad state) it replays a CUDA graph
 * of its kernels (the same bits, fewer launch gaps) unless graphs are off. In row blocks it needs
 * xd_student_cuda_train_loss(.., backward 1) since the forward, once per backward (it refuses
 * otherwise). */
int xd_student_cuda_train_backward(xd_student_cuda_train *m, xd_err *e);
/* Graphs of the backward on (1) or off (0), or -1: on unless XD_CUDA_GRAPHS=0 (the default at
 * create). Drops the graphs captured so far: call it after changing a kernel switch read from
 * the environment (XD_SWA_BWD, ...), which a captured graph would not see. */
void xd_student_cuda_train_graphs(xd_student_cuda_train *m, int on);
/* Profiling: on = 1 synchronises after every op of the forward / backward / align step and adds
 * its time to an op class (resets the sums); print writes ms per step over `steps` steps. */
void xd_student_cuda_train_profile(xd_student_cuda_train *m, int on);
void xd_student_cuda_train_profile_print(const xd_student_cuda_train *m, FILE *f, int steps);

/* Stage I (align.c's step on the GPU; SPEC §3): the student must hold trainable hybrid
 * parameters (mode XD_STUDENT_TRAIN_NEW or _ALL) and the teacher's weights in its shared tensors
 * (made by `init` from that teacher and not trained since: the caller checks). One layer's
 * activations only, reused layer after layer. */
size_t xd_student_cuda_align_bytes(const xd_model_config *c, const xd_hybrid_config *hy, int B, int T);
/* The largest op scratch of either step besides the activations, bytes: the SWA backward's
 * context scratch (bf16 copies, stored dS tiles, head-split halves) plus one mLSTM backward
 * call's (stream-ordered, kept by the pool): ~0.35 GB at the 1B shape and T 4096, ~16x that at
 * 64K. */
size_t xd_student_cuda_train_scratch_bytes(const xd_model_config *c, const xd_hybrid_config *hy, int B, int T);
int xd_student_cuda_align_create(xd_student_cuda_train **out, xd_cuda_ctx *c, const xd_student *s, xd_params_cuda *pd,
                                 int B, int T, xd_err *e);
/* One teacher-forced pass over ids [B,T] (host): per layer the teacher's x, q, k, v and its
 * attention output a^l (bf16 GEMMs, flash attention), the student's core on them, layer_loss[l]
 * = mean over tokens and channels of (a^l - out^l)^2 (host doubles [L]) and, with backward, the
 * core's backward into that layer's hybrid parameter gradients (+=). */
int xd_student_cuda_align_step(xd_student_cuda_train *m, const int32_t *ids, int backward, double *layer_loss, xd_err *e);
#endif
#endif
