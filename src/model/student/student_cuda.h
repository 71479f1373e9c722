/* The student on the GPU: inference only (issue #8). Needs the CUDA backend (XD_HAVE_CUDA);
 * without it every function below is absent (guard callers with #ifdef XD_HAVE_CUDA).
 *
 * Storage on the device: the teacher-shared matrices (embedding, LM head, q|k|v fused, o,
 * gate|up fused, down) in bf16; every vector (norm weights, biases) and the new hybrid
 * parameters (P_q, P_k, w_i, b_i, w_f, b_f, w_o, b_o; ~2% of a 1B model's bytes) in fp32.
 * Activations are fp32 (residual stream included); GEMM inputs are rounded to bf16 in prefill.
 *
 * API for the CLI (`forward` / `generate --device cuda`, not wired yet):
 *   xd_cuda_ctx_create(&ctx, 0, e);  xd_student_load(&s, dir, XD_STUDENT_FROZEN, e);
 *   xd_student_cuda_upload(&m, ctx, &s, e);          // the host student may be freed after
 *   xd_student_cuda_forward(m, ids, B, T, logits, 0, e);   // logits [B,T,V] fp32 on the host
 *   xd_student_cuda_state_alloc(&st, m, e);
 *   xd_student_cuda_step(m, st, prompt, n, logits, e);     // prefill, logits of the last token
 *   loop: xd_student_cuda_step(m, st, &next, 1, logits, e); // decode, constant memory
 * Many sequences at once (`generate --ids [B,T]`, batched generation):
 *   xd_student_cuda_state_alloc_batch(&st, m, B, e);
 *   xd_student_cuda_prefill(m, st, b, prompt_b, n_b, NULL, e);   // each slot, any length
 *   loop: xd_student_cuda_argmax(m, st, next, e);                // greedy ids [B] on the host
 *         xd_student_cuda_step_batch(m, st, next, NULL, e);      // every slot at its own position
 * Semantics are those of xd_student_forward / xd_student_step (student.h), up to bf16
 * rounding: prefill runs the chunkwise mLSTM and hands its final state and the sink + ring K/V
 * over to the recurrent decode step. One xd_cuda_ctx (one stream) per model; not thread-safe. */
#ifndef XD_STUDENT_CUDA_H
#define XD_STUDENT_CUDA_H
#include <stdint.h>
#include "xdistill.h"

/* CLI helpers (`forward` / `generate --device cuda` on a student checkpoint), present in every
 * build (without CUDA they fail with one line): load dir's student on GPU 0, print its memory
 * (weights, decode state) to stderr, run, free everything. forward: logits [B,T,V] on the host,
 * as xd_student_forward. generate: greedy, the B rows together in one batched state (each row
 * prefilled alone by the chunkwise forward, then batched recurrent steps); out [B, T+max_new]
 * holds prompt + continuation, n_out[b] its length (stops after an EOS token when stop_at_eos),
 * as xd_teacher_generate. */
int xd_student_cuda_forward_dir(const char *dir, const int32_t *ids, int B, int T, float *logits, xd_err *e);
int xd_student_cuda_generate_dir(const char *dir, const int32_t *ids, int B, int T, int max_new, int stop_at_eos,
                                 int32_t *out, int *n_out, xd_err *e);

#ifdef XD_HAVE_CUDA
#include "model/student/student.h"
#include "ops/cuda/cuda_ops.h"

typedef struct xd_student_cuda xd_student_cuda;
typedef struct xd_student_cuda_state xd_student_cuda_state;

/* Copies s's weights to the device (conversions on the host). Fails with one line for a shape
 * the kernels do not support (e.g. mLSTM d_phi > 128 or head dim > 256 in prefill, head dim
 * > 128 in decode). */
int xd_student_cuda_upload(xd_student_cuda **out, xd_cuda_ctx *c, const xd_student *s, xd_err *e);
void xd_student_cuda_free(xd_student_cuda *m);
/* Benchmarks: a student of config c / hybrid config hy with random weights drawn on the device
 * (matrices uniform with variance 1/fan-in, norm weights 1, hybrid parameters small uniform),
 * no host copy of the model. */
int xd_student_cuda_random(xd_student_cuda **out, xd_cuda_ctx *c, const xd_model_config *cfg,
                           const xd_hybrid_config *hy, uint64_t seed, xd_err *e);
/* Device bytes of the weights (a tied LM head counted once). */
size_t xd_student_cuda_weight_bytes(const xd_student_cuda *m);

/* Full forward ids [B,T] (host) -> logits (host, fp32): [B,T,V], or [B,V] (each sequence's last
 * position) when last_only. logits NULL: compute, do not download (benchmarks). Activation
 * buffers grow to the largest B*T seen and are kept. */
int xd_student_cuda_forward(xd_student_cuda *m, const int32_t *ids, int B, int T, float *logits, int last_only,
                            xd_err *e);
/* The last forward's logits on the device ([B*T, V] or [B, V] fp32), valid until the next call. */
const float *xd_student_cuda_logits(const xd_student_cuda *m);

/* Decode state of one sequence: per layer the mLSTM (C, n, m) per query head in fp32 and the
 * K/V of the S sinks plus a ring buffer of the last W tokens in bf16; plus one token's scratch
 * and the CUDA graph of the step. Nothing in it depends on the position. */
int xd_student_cuda_state_alloc(xd_student_cuda_state **out, xd_student_cuda *m, xd_err *e);
/* The same for B sequences (slots, 1 <= B <= 65535): B times the state, [B, ...] scratch. With
 * B > 1 a step is xd_student_cuda_step_batch (every slot, each at its own position): the layer's
 * projections are GEMMs over the B rows with bf16 inputs (prefill's numerics; the one-sequence
 * step's GEMVs read fp32 inputs, so a slot's logits differ from a one-sequence state's by bf16
 * rounding, ~1e-3 relative), the weights read once per step for all B. */
int xd_student_cuda_state_alloc_batch(xd_student_cuda_state **out, xd_student_cuda *m, int B, xd_err *e);
int xd_student_cuda_state_batch(const xd_student_cuda_state *st);
void xd_student_cuda_state_free(xd_student_cuda_state *st);
/* Forget the sequences (zero state, position 0); keeps the buffers and the graph. */
int xd_student_cuda_state_reset(xd_student_cuda_state *st, xd_err *e);
/* Bytes of the recurrent state proper (mLSTM + sinks + ring, all slots) and of the per-token
 * scratch; the position of slot 0 / of slot `slot` (-1: no such slot, or its prefill failed). */
size_t xd_student_cuda_state_bytes(const xd_student_cuda_state *st);
size_t xd_student_cuda_scratch_bytes(const xd_student_cuda_state *st);
int64_t xd_student_cuda_state_pos(const xd_student_cuda_state *st);
int64_t xd_student_cuda_state_pos_of(const xd_student_cuda_state *st, int slot);
/* 1 (default): replay the step as a CUDA graph; 0: launch the 5 kernels per layer one by one. */
void xd_student_cuda_state_use_graph(xd_student_cuda_state *st, int on);
/* 1: the original one-block-per-head kernels and one-warp-per-row GEMVs (issue #8's "before",
 * kept as the tests' reference); 0 (default): one clustered per-head kernel (prep, attention,
 * mLSTM, merge), split-K GEMVs. Results agree up to fp32 summation order. Drops the captured
 * graph. One-sequence states only (ignored for B > 1). */
void xd_student_cuda_state_use_legacy(xd_student_cuda_state *st, int on);
/* Issue #8 variants of the default step (XD_SDEC_* bits of cuda_ops.h;
 * initial value from the environment variable XD_SDEC_VARIANT, else XD_SDEC_DEFAULT_VARIANT);
 * any variant gives the same results up to fp32 summation order. */
void xd_student_cuda_state_set_variant(xd_student_cuda_state *st, int variant);
int xd_student_cuda_state_variant(const xd_student_cuda_state *st);
/* Per-kernel breakdown (xd_cuda_sdec_profile) of `reps` steps at the state's position (token 0;
 * the state advances but pos does not): us / bytes [XD_SDEC_NK]. */
int xd_student_cuda_state_profile(xd_student_cuda *m, xd_student_cuda_state *st, int reps, double *us, double *bytes,
                                  xd_err *e);
/* The same breakdown timed on graph replay (xd_cuda_sdec_profile_ex with graph 1). */
int xd_student_cuda_state_profile_graph(xd_student_cuda *m, xd_student_cuda_state *st, int reps, double *us,
                                        double *bytes, xd_err *e);

/* Feed ids[n] of the sequence (a one-sequence state): at position 0 with n > 1 a prefill
 * (chunkwise), else n recurrent steps. logits (host [V], NULL = not downloaded) receives the
 * last token's. */
int xd_student_cuda_step(xd_student_cuda *m, xd_student_cuda_state *st, const int32_t *ids, int n, float *logits,
                         xd_err *e);
/* Start slot `slot` anew with ids[n] (n >= 1; chunkwise forward, its final state and sink + ring
 * K/V into the slot; the other slots untouched). logits (host [V] or NULL): the last token's. */
int xd_student_cuda_prefill(xd_student_cuda *m, xd_student_cuda_state *st, int slot, const int32_t *ids, int n,
                            float *logits, xd_err *e);
/* One token for every slot (ids [B], host), each at its own position; logits (host [B, V] or
 * NULL). Replays a CUDA graph from the state's second step on (XD_CUDA_GRAPHS is not read here:
 * xd_student_cuda_state_use_graph). */
int xd_student_cuda_step_batch(xd_student_cuda *m, xd_student_cuda_state *st, const int32_t *ids, float *logits,
                               xd_err *e);
/* next[B] (host) = the first argmax of each slot's latest logits (of its prefill or last step). */
int xd_student_cuda_argmax(xd_student_cuda *m, xd_student_cuda_state *st, int32_t *next, xd_err *e);
/* The slots' latest logits on the device, [B, V] fp32 (of each prefill or step; sampling). */
const float *xd_student_cuda_state_logits(const xd_student_cuda_state *st);
#endif
#endif
