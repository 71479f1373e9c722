/* Stage II's online teacher on the GPU, on a stream of its own (issue #8): the teacher's
 * forward and top-k of a batch are submitted ahead of use, so that the teacher of batch i+1
 * runs while the student's backward and optimiser step of batch i run on the student's stream.
 * The teacher reads only its own weights and the batch's ids, so nothing orders it behind the
 * student; the student's KD loss waits on an event recorded behind the top-k (no host wait).
 * Two slots hold the top-k (ids [N,k] int32, log-probs [N,k] fp32) and a bad-row flag each:
 * one being consumed, one being filled. The numbers are those of the same kernels run serially
 * (same inputs, same kernels, same order within the stream): the pipelining changes only when
 * they run.
 *
 * The teacher's stream has the device's lowest priority; the caller gives the student's context
 * the highest (xd_cuda_ctx_create_prio), so that the student's blocks go first and the teacher's
 * fill what it leaves idle. */
#ifndef XD_TEACHER_TOPK_CUDA_H
#define XD_TEACHER_TOPK_CUDA_H
#include <stdint.h>
#include "core/core.h"
#include "model/teacher/teacher.h"

typedef struct xd_teacher_topk_cuda xd_teacher_topk_cuda;
typedef struct xd_cuda_ctx xd_cuda_ctx;

/* Rows of logits stage II holds at once, for the student's LM head and the teacher's top-k
 * alike (distill, teacher-cache, bench_gpu_train): env XD_HEAD_ROWS when set (0: all rows), else
 * 4096. The row blocks change the order of the LM head gradient's fp32 sums, so a resumed run
 * keeps it for the same bits. */
#define XD_HEAD_ROWS_DEFAULT 4096
int xd_stage2_head_rows(void);
/* Create, free, submit and fetch link in builds without CUDA too (create then fails). */
/* Uploads t (bf16) into a new context on GPU 0 and allocates its activations for B x T and two
 * top-k slots of k. The fp32 logits are made head_rows rows at a time (0 or >= B*T: all at
 * once), each block's top-k taken before the next block's logits overwrite them: 4 V bytes a
 * row held (2.0 GiB for 4096 rows at V 128256), the same ids and log-probs. */
int xd_teacher_topk_cuda_create(xd_teacher_topk_cuda **out, const xd_teacher *t, int B, int T, int k, int head_rows,
                                xd_err *e);
/* Waits for the teacher's stream, then frees everything. NULL is fine. */
void xd_teacher_topk_cuda_free(xd_teacher_topk_cuda *p);
/* Queues forward + top-k of inputs [B,T] (host; staged before the call returns) into `slot`
 * (0 or 1) and returns without waiting for the GPU. */
int xd_teacher_topk_cuda_submit(xd_teacher_topk_cuda *p, int slot, const int32_t *inputs, xd_err *e);
/* Makes work queued next on `consumer` wait for the slot's top-k (no host wait). */
int xd_teacher_topk_cuda_wait(xd_teacher_topk_cuda *p, int slot, xd_cuda_ctx *consumer, xd_err *e);
/* Host check, after the consumer has synchronised past its wait: fails naming the first row
 * whose teacher logits were not finite. Waits for the teacher's stream. */
int xd_teacher_topk_cuda_check(xd_teacher_topk_cuda *p, int slot, xd_err *e);
/* The slot's top-k on the host (ids [B*T, k], logp [B*T, k]), for the teacher-cache command:
 * waits for that slot only (through a copy stream of its own, so a batch submitted after it
 * keeps computing), then fails like _check or downloads. */
int xd_teacher_topk_cuda_fetch(xd_teacher_topk_cuda *p, int slot, int32_t *ids, float *logp, xd_err *e);
/* The slot's device buffers. */
const int32_t *xd_teacher_topk_cuda_ids(const xd_teacher_topk_cuda *p, int slot);
const float *xd_teacher_topk_cuda_logp(const xd_teacher_topk_cuda *p, int slot);
/* Device bytes: weights + activations + both slots. */
size_t xd_teacher_topk_cuda_bytes(const xd_teacher_topk_cuda *p);
#endif
