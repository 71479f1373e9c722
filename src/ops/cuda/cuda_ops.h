/* CUDA backend (first slice): device memory helpers and CUDA twins of the CPU ops.
 *
 * Plain C interface; the kernels live in the .cu files of src/ops/cuda behind extern "C" entry points.
 * Every function returns 0 on success and -1 on failure with ONE line in the xd_err naming
 * the source file, line and the CUDA / cuBLAS error (e.g. "matmul.cu:88: cublasLtMatmul:
 * CUBLAS_STATUS_NOT_SUPPORTED"). Launch errors are checked right after each launch; kernel
 * faults surface at the next synchronising call (xd_cuda_sync, a download).
 *
 * Storage: "bf16" buffers are uint16_t on the device (bf16 bits), math is fp32 inside every
 * kernel. Layouts are the CPU twins' (token-major, row-major); where a buffer is a slice of a
 * wider fused tensor (q|k|v out of one projection), a row stride "ld" in elements is given.
 * All pointers below are DEVICE pointers unless named host_*.
 * Everything runs on the context's stream, in order; nothing here is thread-safe per ctx. */
#ifndef XD_OPS_CUDA_OPS_H
#define XD_OPS_CUDA_OPS_H
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include "xdistill.h"

#ifdef __cplusplus
extern "C" {
#endif
#include "ops/cpu/mlstm.h" /* mlstm_cfg, mlstm_state (C headers without extern "C") */
#include "ops/cpu/swa.h"   /* swa_shape */

/* ---- context: stream + cuBLASLt handle + its workspace ---------------------------------- */
typedef struct xd_cuda_ctx xd_cuda_ctx;
/* Selects device `device` (usually 0), creates a non-blocking stream and a cuBLASLt handle. */
int xd_cuda_ctx_create(xd_cuda_ctx **out, int device, xd_err *e);
/* The same with the stream at the device's highest priority (high_priority != 0) or its lowest
 * (the default): where two contexts share the GPU (stage II's student and its online teacher),
 * the block scheduler serves the high-priority stream's blocks first. */
int xd_cuda_ctx_create_prio(xd_cuda_ctx **out, int device, int high_priority, xd_err *e);
void xd_cuda_ctx_free(xd_cuda_ctx *c);
/* Bytes of the scratch the context holds now (the SWA backward's and the student ops', grown on
 * demand): what memory plans must count besides the callers' own buffers. */
size_t xd_cuda_ctx_scratch_bytes(const xd_cuda_ctx *c);
/* Ordering between contexts' streams: record an event on one, make another wait for it
 * (cudaEventRecord / cudaStreamWaitEvent; the host does not block). */
typedef struct xd_cuda_event xd_cuda_event;
int xd_cuda_event_create(xd_cuda_event **out, xd_err *e);
void xd_cuda_event_free(xd_cuda_event *ev); /* NULL is fine */
int xd_cuda_event_record(xd_cuda_ctx *c, xd_cuda_event *ev, xd_err *e);
int xd_cuda_wait_event(xd_cuda_ctx *c, xd_cuda_event *ev, xd_err *e);
/* Waits for all work on the context's stream; reports any asynchronous kernel fault. */
int xd_cuda_sync(xd_cuda_ctx *c, xd_err *e);
/* The device name and SM count, for reports. */
int xd_cuda_device_info(xd_cuda_ctx *c, char *name, size_t name_len, int *sm_count, xd_err *e);
/* Opens (on != 0, after a synchronisation) or closes (after one) a profiler capture range
 * (cudaProfilerStart / Stop): `ncu --profile-from-start off` then sees only the kernels inside. */
int xd_cuda_profiler_range(xd_cuda_ctx *c, int on, xd_err *e);

/* ---- memory ---------------------------------------------------------------------------- */
int xd_cuda_malloc(void **p, size_t bytes, xd_err *e);
void xd_cuda_free(void *p); /* NULL is fine */
int xd_cuda_memset(xd_cuda_ctx *c, void *p, int byte, size_t bytes, xd_err *e);
int xd_cuda_upload(xd_cuda_ctx *c, void *dst, const void *host_src, size_t bytes, xd_err *e);
/* Synchronous: returns when host_dst holds the data. */
int xd_cuda_download(xd_cuda_ctx *c, void *host_dst, const void *src, size_t bytes, xd_err *e);
int xd_cuda_copy(xd_cuda_ctx *c, void *dst, const void *src, size_t bytes, xd_err *e);
/* dtype conversion on the device, n elements (round to nearest even). */
int xd_cuda_f32_to_bf16(xd_cuda_ctx *c, uint16_t *dst, const float *src, size_t n, xd_err *e);
int xd_cuda_bf16_to_f32(xd_cuda_ctx *c, float *dst, const uint16_t *src, size_t n, xd_err *e);
/* The same over rows x cols of strided rows: dst[r*ldd + j] = bf16(src[r*lds + j]) (gathers
 * slices into a fused bf16 buffer, e.g. dq|dk|dv for one q|k|v GEMM backward). */
int xd_cuda_f32_to_bf16_2d(xd_cuda_ctx *c, uint16_t *dst, size_t ldd, const float *src, size_t lds, size_t rows,
                           size_t cols, xd_err *e);
/* Deterministic pseudo-random fill, uniform in [-scale, scale) (a counter hash of (seed, i)):
 * random weights for benchmarks without a host round trip. */
int xd_cuda_fill_uniform_bf16(xd_cuda_ctx *c, uint16_t *dst, size_t n, uint64_t seed, float scale, xd_err *e);

/* ---- matmul (cuBLASLt): out[N,Dout] (+)= x[N,Din] W^T + b ------------------------------- */
typedef enum { XD_CUDA_BF16 = 0, XD_CUDA_F32 = 1 } xd_cuda_dtype;
/* x, w bf16 (W in the HF layout [Dout,Din]), fp32 accumulation. out is bf16 or fp32
 * (out_dtype); bias (NULL or [Dout]) has the dtype of out and is added in the GEMM epilogue.
 * accumulate != 0 adds the product to what out holds (residual add in the epilogue; out is
 * then read as well as written). */
int xd_cuda_matmul(xd_cuda_ctx *c, void *out, xd_cuda_dtype out_dtype, const uint16_t *x, const uint16_t *w,
                   const void *bias, int N, int Din, int Dout, int accumulate, xd_err *e);
/* out = res + x W^T (+ b): the accumulate form with the residual read from res (same shape and
 * dtype as out; may equal out), so that a residual stream kept for the backward needs no copy
 * first (branch trainfuse). */
/* Kernel lab (gemm_lab.cu; bench/gpu/bench_gpu_gemm.c): column-major D[m,n] = op(A) op(B) (+ beta
 * D), A and B bf16 with tight leading dimensions, D bf16 or fp32: times each of the first
 * max_algos (<= 16) algorithms cuBLASLt's heuristic offers, reps runs each after two warm-ups,
 * prints one line per algorithm to f (NULL: quiet) and returns the first's and the fastest's ms. */
int xd_cuda_gemm_lab(xd_cuda_ctx *c, int trans_a, int trans_b, int m, int n, int k, xd_cuda_dtype out_dtype, float beta,
                     int max_algos, int reps, const char *label, FILE *f, double *ms_first, double *ms_best, xd_err *e);
int xd_cuda_matmul_res(xd_cuda_ctx *c, void *out, const void *res, xd_cuda_dtype out_dtype, const uint16_t *x,
                       const uint16_t *w, const void *bias, int N, int Din, int Dout, xd_err *e);

/* ---- teacher ops, bf16 storage, fp32 math ---------------------------------------------- */
/* RMSNorm (HF order, as rmsnorm_forward): out = w * (x * rsqrt(mean(x^2) + eps)); x, out [N,C], w [C]. */
int xd_cuda_rmsnorm_forward(xd_cuda_ctx *c, uint16_t *out, const uint16_t *x, const uint16_t *w, int N, int C,
                            float eps, xd_err *e);
/* RoPE in place (rotate-half, as rope_forward): x holds N tokens of n_heads * d values, token
 * n starting at x + n*ld; cos_t, sin_t fp32 [n_pos, d/2]; pos int32 [N] in [0, n_pos). */
int xd_cuda_rope_forward(xd_cuda_ctx *c, uint16_t *x, int ld, const float *cos_t, const float *sin_t,
                         const int32_t *pos, int N, int n_heads, int d, xd_err *e);
/* SwiGLU: out[n,f] = silu(gate[n*ld+f]) * up[n*ld+f], out [N,F] dense. With a fused gate|up
 * projection [N, 2F]: gate = buf, up = buf + F, ld = 2F. */
int xd_cuda_swiglu_forward(xd_cuda_ctx *c, uint16_t *out, const uint16_t *gate, const uint16_t *up, int N, int F,
                           int ld, xd_err *e);
/* Embedding: out[n,:] = table[ids[n],:], table [V,D]. Ids outside [0,V) give a row of zeros
 * (the caller validates ids on the host, as for the CPU op; the kernel never reads out of range). */
int xd_cuda_embedding_forward(xd_cuda_ctx *c, uint16_t *out, const int32_t *ids, const uint16_t *table, int N,
                              int D, int V, xd_err *e);

/* ---- attention: flash-style forward, bf16 tensor cores (mma.sync m16n8k16), fp32 softmax --
 * q [B,T,H,d] (token row stride ldq elements), k, v [B,T,G,d] (ldk, ldv), out [B,T,H,d] (ldo);
 * batch b starts at b*T*ld. Query head h reads KV head h / (H/G). Query t sees key s when
 * s <= t and (window == 0 or t - s < window or s < sinks):
 *   - teacher causal attention: window = 0 (or the HF sliding window), sinks = 0;
 *   - the student's local branch (swa_forward): window = W >= 1, sinks = S.
 * Scale 1/sqrt(d). lse (NULL or fp32 [B,T,H]) receives the natural-log logsumexp of the
 * scaled scores, as swa_forward's. d must be 64 or 128. */
typedef struct {
  int B, T, H, G, d;
  int window, sinks;
  int ldq, ldk, ldv, ldo;
} xd_cuda_attn_dims;
int xd_cuda_attention_forward(xd_cuda_ctx *c, uint16_t *out, float *lse, const uint16_t *q, const uint16_t *k,
                              const uint16_t *v, const xd_cuda_attn_dims *a, xd_err *e);
/* The first version (64-row blocks, branch before attnfwd), kept for comparison; the same
 * function up to rounding. XD_ATTN_FWD_V1=1 in the environment makes xd_cuda_attention_forward
 * run it (read at every call: the stage II step timed with either in one process). */
int xd_cuda_attention_forward_v1(xd_cuda_ctx *c, uint16_t *out, float *lse, const uint16_t *q, const uint16_t *k,
                                 const uint16_t *v, const xd_cuda_attn_dims *a, xd_err *e);
/* Tests and timings: cfg 0 = the default, -1 = v1, 1..4 (d 64) / 1..5 (d 128) = fixed block
 * configurations of the second version (attention.cu names them); XD_ATTN_FWD_CFG=n (d 64) /
 * XD_ATTN_FWD_CFG128=n (d 128) make xd_cuda_attention_forward run one. */
int xd_cuda_attention_forward_cfg(xd_cuda_ctx *c, uint16_t *out, float *lse, const uint16_t *q, const uint16_t *k,
                                  const uint16_t *v, const xd_cuda_attn_dims *a, int cfg, xd_err *e);

/* ---- sliding-window+sinks attention backward (the twin of swa_backward) -------------------
 * q, out, dout, dq [B,T,H,d]; k, v, dk, dv [B,T,G,d] fp32; lse [B,T,H] from the forward
 * (natural log). ACCUMULATES (+=) into dq, dk, dv, as the CPU op (the caller zeroes them).
 * xd_cuda_swa_backward: FlashAttention-2-style on the tensor cores (bf16 operands, fp32
 * accumulation, ~3e-3 relative L2 vs the fp32 CPU op), no atomics: bitwise identical from run
 * to run. d a multiple of 16 up to 128 with 16-byte aligned buffers; otherwise (d <= 256) it
 * runs xd_cuda_swa_backward_det (fp32, deterministic too). Uses a scratch buffer of the context
 * (grown on first use; not to be called while a graph is being captured the first time at a new
 * size).
 * It first converts q, dout, k and v (as a bf16 hi + lo pair) to bf16 copies in that scratch
 * and then streams tiles by cp.async, two stages deep; for d <= 64 (v3) the dK / dV kernel
 * also stores each tile's bf16 dS (the value its dK product uses) in dQ-fragment order, and the
 * dQ kernel multiplies those by K instead of recomputing S, P and dP (scratch: 8 KB per 64x64
 * tile of the window and sinks, B H ceil(T/64) ((W+62)/64 + 1 + sink blocks) of them); where
 * it fills the GPU in fewer waves, each dK / dV block is split by halves of the query heads
 * (scratch 4 B T G d floats; dk, dv then differ from v2 by fp32 rounding, ~1e-7;
 * XD_SWA_BWD_SPLIT=0/1 forces it off / on).
 * xd_cuda_swa_backward_v2: the pipelined version without the stored dS (the default for
 * d > 64); unsplit v3's dk and dv are bitwise v2's, its dq the same products summed in another
 * order.
 * xd_cuda_swa_backward_v1: the first tensor-core version, kept for comparison: v2's blocks
 * and arithmetic (bitwise the same results), fp32 tiles converted as they are staged, one at
 * a time.
 * xd_cuda_swa_backward_ref: the first version, fp32, one warp per query row, dk and dv summed
 * with atomics (the last bits may vary from run to run); d <= 256. */
/* Bytes of the context scratch xd_cuda_swa_backward (pre 0) or xd_cuda_swa_backward_pre (pre 1,
 * which makes no bf16 copies of q, k, v) takes for sh (the default version; 0 where the fp32
 * entry runs the fixed-order fallback, whose B T H floats are pooled): for memory plans. */
size_t xd_cuda_swa_backward_scratch_bytes(const swa_shape *sh, int pre);
int xd_cuda_swa_backward(xd_cuda_ctx *c, float *dq, float *dk, float *dv, const float *dout, const float *q,
                         const float *k, const float *v, const float *out, const float *lse, const swa_shape *sh,
                         xd_err *e);
int xd_cuda_swa_backward_v2(xd_cuda_ctx *c, float *dq, float *dk, float *dv, const float *dout, const float *q,
                            const float *k, const float *v, const float *out, const float *lse, const swa_shape *sh,
                            xd_err *e);
int xd_cuda_swa_backward_v1(xd_cuda_ctx *c, float *dq, float *dk, float *dv, const float *dout, const float *q,
                            const float *k, const float *v, const float *out, const float *lse, const swa_shape *sh,
                            xd_err *e);
/* xd_cuda_swa_backward (its default version) given the bf16 copies the forward already made:
 * q, k, v rounded to nearest even ([B,T,H,d], [B,T,G,d], [B,T,G,d]) and out, which must be
 * exactly bf16 (the attention forward's bf16 output). Instead of rounding q, k, v and reading
 * the fp32 out, the prologue only makes dout's copy and D_t. It differs from
 * xd_cuda_swa_backward on the same values in one operand: dP = dO V^T takes v as that single
 * bf16 value (the one the forward multiplied), not as the hi + lo pair, so that dP - D cancels
 * between values of one bf16 forward (D_t = bf16(dout) . out with the bf16 out; swa_backward.cu
 * says why). Same scratch. Needs the tensor-core path (d a multiple of 16 up to 128, 16-byte
 * aligned buffers); fails otherwise. */
typedef struct {
  const uint16_t *q, *k, *v, *out;
} xd_cuda_swa_bf16;
int xd_cuda_swa_backward_pre(xd_cuda_ctx *c, float *dq, float *dk, float *dv, const float *dout,
                             const xd_cuda_swa_bf16 *pre, const float *lse, const swa_shape *sh, xd_err *e);
/* The reference's fp32 arithmetic (the same per-pair values; its dq bit for bit) with dk and dv
 * gathered per key row in a fixed order instead of atomics: bitwise identical from run to run,
 * any d <= 256 (xd_cuda_swa_backward's fallback; ~2x the reference's work). */
int xd_cuda_swa_backward_det(xd_cuda_ctx *c, float *dq, float *dk, float *dv, const float *dout, const float *q,
                             const float *k, const float *v, const float *out, const float *lse, const swa_shape *sh,
                             xd_err *e);
int xd_cuda_swa_backward_ref(xd_cuda_ctx *c, float *dq, float *dk, float *dv, const float *dout, const float *q,
                             const float *k, const float *v, const float *out, const float *lse, const swa_shape *sh,
                             xd_err *e);

/* ---- mLSTM chunkwise forward, fp32 (the twin of mlstm_chunkwise_forward) ------------------
 * Same cfg and layouts as ops/cpu/mlstm.h: qf [B,T,H,P], kf [B,T,G,P], v [B,T,G,D],
 * ig, fg [B,T,H], h [B,T,H,D]; states C [B*H,P,D], n [B*H,P], m [B*H] in fp32 device memory.
 * init NULL = zero state; final (may alias init) receives the state after token T-1.
 * One thread block per (b, h, slice of D columns), sequential over chunks of cfg->chunk tokens;
 * needs P <= 128, D <= 256, chunk <= 64. */
int xd_cuda_mlstm_chunkwise_forward(xd_cuda_ctx *c, const mlstm_cfg *cfg, const float *qf, const float *kf,
                                    const float *v, const float *ig, const float *fg, const mlstm_state *init,
                                    mlstm_state *final, float *h, xd_err *e);


/* ==== student ops, part 2 (branch cudaops): mLSTM backward, feature maps, gates, mix =
 * fp32 storage and math throughout (the twins of the fp32 CPU ops in src/ops/cpu); every
 * backward ACCUMULATES (+=) into its gradients like the CPU op (the caller zeroes them).
 * Reductions over tokens (dP, dw, db) are split into fixed partial sums added in a fixed
 * order: results are deterministic (no atomics). The feature map / gate / mix products are fp32
 * cuBLASLt matmuls (CUBLAS_COMPUTE_32F, no TF32; one algorithm per geometry, cached in the
 * context: bitwise identical run to run) or the SIMT split-K GEMM (student_ops.cu says when);
 * their scratch is the context's (grown on demand), the mLSTM backward's comes from
 * cudaMallocAsync on the context's stream (pooled by the driver after the first call). */
#include "ops/cpu/feature_map.h" /* feature_map_shape */
#include "ops/cpu/gates.h"       /* gates_shape */
#include "ops/cpu/mix.h"         /* mix_shape */

/* The chunkwise forward that also fills the boundary-state buffer the backward needs: bound
 * (NULL = not wanted) holds mlstm_boundary_size(cfg) floats, the state at the START of every
 * chunk in the CPU layout (C [B*H, NC, P, D], then n [B*H, NC, P], then m [B*H, NC]).
 * Otherwise exactly xd_cuda_mlstm_chunkwise_forward (which is this with bound = NULL). */
int xd_cuda_mlstm_chunkwise_forward_bound(xd_cuda_ctx *c, const mlstm_cfg *cfg, const float *qf, const float *kf,
                                          const float *v, const float *ig, const float *fg, const mlstm_state *init,
                                          mlstm_state *final, float *bound, float *h, xd_err *e);

/* Exact chunkwise backward (the twin of mlstm_chunkwise_backward, docs/mlstm.md section 3):
 * inputs and bound as given to / filled by the forward with the same cfg (chunk included);
 * dh [B,T,H,D]; accumulates into dqf [B,T,H,P], dkf [B,T,G,P], dv [B,T,G,D], dig, dfg [B,T,H].
 * Like the CPU op, the initial state is a constant (its content is already in bound) and the
 * final state carries no gradient. Needs P <= 128, D <= 128, chunk <= 64 (and the shared
 * memory that takes: P = 128, D = 64, L = 64 uses ~172 KB per block).
 * Schedule (all deterministic): (1) one block per (b, h, chunk) recomputes the chunk from its
 * boundary state and does everything that needs only that state (normaliser, intra-chunk
 * scores, the read of the carried state: dQ, the intra parts of dK/dV, dC/dn contributions);
 * (2) a scan over chunks per (b, h, state slice) builds dL/d(state at each chunk end);
 * (3) one block per (b, h, chunk) adds the chunk-end state terms to dK/dV; (4) with GQA the
 * per-head dK/dV are summed over the group in head order; (5) the stabiliser and forget-gate
 * cumsums backwards through time (one block per head, double precision as on the CPU).
 * Scratch: B*H*NC*(P*D + P) floats, B*H*T*(3 doubles + 1 byte), and with H > G the per-head
 * dK/dV B*H*T*(P + D) floats (~170 MB at B*H = 32, T = 4096, P = 128, D = 64). */
/* Bytes of the stream-ordered scratch one backward call takes (either version), for memory plans. */
size_t xd_cuda_mlstm_backward_scratch_bytes(const mlstm_cfg *cfg);
int xd_cuda_mlstm_chunkwise_backward(xd_cuda_ctx *c, const mlstm_cfg *cfg, const float *qf, const float *kf,
                                     const float *v, const float *ig, const float *fg, const float *bound,
                                     const float *dh, float *dqf, float *dkf, float *dv, float *dig, float *dfg,
                                     xd_err *e);
/* The same backward with the chunk-level products on the tensor cores (bf16 mma.sync, fp32
 * accumulation; issue #8, src/ops/cuda/mlstm_backward.cu, docs/cuda.md): for P = D = chunk = 64
 * with 16-byte aligned q, k, v, dh, bound and gradient buffers; any other call runs the fp32
 * SIMT kernels of xd_cuda_mlstm_chunkwise_backward (same signature, same outputs, same scratch).
 * Deterministic (no atomics, fixed reduction orders). Relative L2 error against the fp32 CPU
 * op <= 5e-3 per gradient (tests/gpu/test_gpu_mlstm_tc.c; docs/cuda.md). */
int xd_cuda_mlstm_chunkwise_backward_tc(xd_cuda_ctx *c, const mlstm_cfg *cfg, const float *qf, const float *kf,
                                        const float *v, const float *ig, const float *fg, const float *bound,
                                        const float *dh, float *dqf, float *dkf, float *dv, float *dig, float *dfg,
                                        xd_err *e);
/* xd_cuda_mlstm_chunkwise_backward_tc for tests and benchmarks (branch mlbw): old = 1 runs the
 * scan, state + GQA sum and gate kernels from before that branch (bitwise the same results;
 * XD_MLSTM_BW_OLD=1 makes both entry points above do the same); kernel_ms (NULL: none) gets the
 * time of each launch in ms from events, synchronising: [local, scan, state (with the GQA sum
 * when fused), GQA sum, gates], 0 for a launch that did not run. */
int xd_cuda_mlstm_chunkwise_backward_tc_ex(xd_cuda_ctx *c, const mlstm_cfg *cfg, const float *qf, const float *kf,
                                           const float *v, const float *ig, const float *fg, const float *bound,
                                           const float *dh, float *dqf, float *dkf, float *dv, float *dig,
                                           float *dfg, int old, float *kernel_ms, xd_err *e);

/* Feature map (feature_map_forward / _backward; plain softmax(xP) or hedgehog). fp32. */
int xd_cuda_feature_map_forward(xd_cuda_ctx *c, float *phi, const float *x, const float *P,
                                const feature_map_shape *s, xd_err *e);
int xd_cuda_feature_map_backward(xd_cuda_ctx *c, float *dx, float *dP, const float *dphi, const float *x,
                                 const float *P, const float *phi, const feature_map_shape *s, xd_err *e);
/* Two feature maps in one go (the student's q and k maps: same N): the same results as a call
 * of the function above for each, in fewer launches where both take the tensor-core kernels
 * (one fragment layout and one product launch over both maps' heads, which also fills the
 * GPU better than k's few heads alone); otherwise the two calls. */
typedef struct {
  float *phi;
  const float *x, *P;
  feature_map_shape s;
} xd_cuda_fm_fwd;
typedef struct {
  float *dx, *dP;
  const float *dphi, *x, *P, *phi;
  feature_map_shape s;
} xd_cuda_fm_bwd;
int xd_cuda_feature_map_forward_pair(xd_cuda_ctx *c, const xd_cuda_fm_fwd *a, const xd_cuda_fm_fwd *b, xd_err *e);
/* flags as xd_cuda_feature_map_backward_ex (below). */
int xd_cuda_feature_map_backward_pair(xd_cuda_ctx *c, int flags, const xd_cuda_fm_bwd *a, const xd_cuda_fm_bwd *b,
                                      xd_err *e);
/* Gate pre-activations with the optional soft cap (gates_forward / _backward). fp32. */
int xd_cuda_gates_forward(xd_cuda_ctx *c, float *ig, float *fg, const float *x, const float *w_i, const float *b_i,
                          const float *w_f, const float *b_f, const gates_shape *s, xd_err *e);
int xd_cuda_gates_backward(xd_cuda_ctx *c, float *dx, float *dw_i, float *db_i, float *dw_f, float *db_f,
                           const float *dig, const float *dfg, const float *x, const float *w_i, const float *w_f,
                           const float *ig, const float *fg, const gates_shape *s, xd_err *e);
/* Mixing gate (mix_forward / _backward). fp32. */
int xd_cuda_mix_forward(xd_cuda_ctx *c, float *out, float *o, const float *q_raw, const float *k_raw,
                        const float *v_raw, const float *w_o, const float *b_o, const float *h_global,
                        const float *h_local, const mix_shape *s, xd_err *e);
int xd_cuda_mix_backward(xd_cuda_ctx *c, float *dq_raw, float *dk_raw, float *dv_raw, float *dw_o, float *db_o,
                         float *dh_global, float *dh_local, const float *dout, const float *o, const float *q_raw,
                         const float *k_raw, const float *v_raw, const float *w_o, const float *h_global,
                         const float *h_local, const mix_shape *s, xd_err *e);
/* mix_forward with out in bf16 (round to nearest even: xd_cuda_f32_to_bf16 of the fp32 out, bit
 * for bit), for the o-projection's input in training (branch trainfuse). */
int xd_cuda_mix_forward_bf16(xd_cuda_ctx *c, uint16_t *out, float *o, const float *q_raw, const float *k_raw,
                             const float *v_raw, const float *w_o, const float *b_o, const float *h_global,
                             const float *h_local, const mix_shape *s, xd_err *e);
/* The three backwards above with flags (branch trainfuse): XD_CUDA_GRAD_WRITE writes the
 * activation gradients instead of adding to them (feature map and gates: dx; mix: dq_raw,
 * dk_raw, dv_raw, dh_global, dh_local), so a buffer with that one producer needs no zeroing;
 * the parameter gradients (dP, dw_*, db_*) still accumulate. 0: the functions above. */
#define XD_CUDA_GRAD_WRITE 1
int xd_cuda_feature_map_backward_ex(xd_cuda_ctx *c, int flags, float *dx, float *dP, const float *dphi,
                                    const float *x, const float *P, const float *phi, const feature_map_shape *s,
                                    xd_err *e);
int xd_cuda_gates_backward_ex(xd_cuda_ctx *c, int flags, float *dx, float *dw_i, float *db_i, float *dw_f,
                              float *db_f, const float *dig, const float *dfg, const float *x, const float *w_i,
                              const float *w_f, const float *ig, const float *fg, const gates_shape *s, xd_err *e);
int xd_cuda_mix_backward_ex(xd_cuda_ctx *c, int flags, float *dq_raw, float *dk_raw, float *dv_raw, float *dw_o,
                            float *db_o, float *dh_global, float *dh_local, const float *dout, const float *o,
                            const float *q_raw, const float *k_raw, const float *v_raw, const float *w_o,
                            const float *h_global, const float *h_local, const mix_shape *s, xd_err *e);
/* xd_cuda_mix_forward, _forward_bf16 and _backward_ex with h_local in bf16 (the attention
 * forward's bf16 output as it is, no fp32 copy): the same bits as those functions on its fp32
 * conversion. */
int xd_cuda_mix_forward_hl16(xd_cuda_ctx *c, float *out, float *o, const float *q_raw, const float *k_raw,
                             const float *v_raw, const float *w_o, const float *b_o, const float *h_global,
                             const uint16_t *h_local, const mix_shape *s, xd_err *e);
int xd_cuda_mix_forward_bf16_hl16(xd_cuda_ctx *c, uint16_t *out, float *o, const float *q_raw, const float *k_raw,
                                  const float *v_raw, const float *w_o, const float *b_o, const float *h_global,
                                  const uint16_t *h_local, const mix_shape *s, xd_err *e);
int xd_cuda_mix_backward_hl16(xd_cuda_ctx *c, int flags, float *dq_raw, float *dk_raw, float *dv_raw, float *dw_o,
                              float *db_o, float *dh_global, float *dh_local, const float *dout, const float *o,
                              const float *q_raw, const float *k_raw, const float *v_raw, const float *w_o,
                              const float *h_global, const uint16_t *h_local, const mix_shape *s, xd_err *e);
/* out[col] (+)= sum_r a[r * cols + col] (fp32 [rows, cols]; accumulate 0 writes): partials
 * over fixed 256-row splits, then added in split order; deterministic, a function of the shape
 * (the bias gradients' sums of matmul_backward.cu). */
int xd_cuda_colsum_f32(xd_cuda_ctx *c, float *out, const float *a, int rows, int cols, int accumulate, xd_err *e);
/* ==== end of student ops, part 2 ============================================================ */

/* Evaluation (logprob.cu): for i < n, with x = logits + rows[i] * V (fp32, device):
 * lp[i] = log softmax(x)[toks[i]] and greedy[i] = (toks[i] is x's FIRST argmax), as
 * eval/lm_logits.c computes them on the host (max in fp32, log-sum-exp in double; the sum's order
 * differs: ~1e-16 relative). rows, toks [n] int32, lp [n] double, greedy [n] int32, all on the
 * device; the caller keeps rows inside logits and toks in [0, V). */
int xd_cuda_token_logprobs(xd_cuda_ctx *c, double *lp, int32_t *greedy, const float *logits, int V,
                           const int32_t *rows, const int32_t *toks, int n, xd_err *e);

/* ==== GPU teacher model support (src/ops/cuda/decode.cu; used by model/teacher/teacher_cuda) ====
 * fp32 residual stream helpers, QK-norm on slices of the fused q|k|v buffer, KV-cache append,
 * attention of a few queries over a KV cache (decode; split over the keys), greedy argmax. */
/* Free and total device memory in bytes (cudaMemGetInfo). */
int xd_cuda_mem_info(xd_cuda_ctx *c, size_t *free_bytes, size_t *total_bytes, xd_err *e);
/* out[n,:] = bf16(w * rmsnorm(x[n*ldx .. +C])): fp32 rows (row stride ldx elements) -> bf16 [N,C]. */
int xd_cuda_rmsnorm_f32_forward(xd_cuda_ctx *c, uint16_t *out, const float *x, size_t ldx, const uint16_t *w, int N,
                                int C, float eps, xd_err *e);
/* In place over bf16 segments: for token n < N and segment s < n_seg, x[n*ld + s*C .. +C] =
 * w * rmsnorm(that segment), w [C]. QK-norm inside the fused q|k|v rows: qwen3 (per head:
 * n_seg = H, C = d) and olmo (whole projection: n_seg = 1, C = H*d). */
int xd_cuda_rmsnorm_segments(xd_cuda_ctx *c, uint16_t *x, int ld, int N, int n_seg, int C, const uint16_t *w,
                             float eps, xd_err *e);
/* h[n,:] += w * rmsnorm(t[n,:]), fp32 h, t [N,C] (post-norm residual add, olmo). */
int xd_cuda_rmsnorm_add_f32(xd_cuda_ctx *c, float *h, const float *t, const uint16_t *w, int N, int C, float eps,
                            xd_err *e);
/* Append Tn tokens per row to a KV cache: src_k/src_v rows [B*Tn] with row stride ld (slices of
 * the fused q|k|v buffer) -> cache_k/cache_v [B, cap, kvdim] at positions off .. off+Tn-1. */
int xd_cuda_kv_append(xd_cuda_ctx *c, uint16_t *cache_k, uint16_t *cache_v, const uint16_t *src_k,
                      const uint16_t *src_v, int ld, int B, int Tn, int kvdim, int cap, int off, xd_err *e);
/* The same at the offset *off_dev (a device int read when the kernel runs; the caller keeps
 * *off_dev + Tn <= cap), and pos[b * Tn + i] = *off_dev + i (RoPE's positions): the pieces of a
 * decode step that a CUDA graph can replay at every position. per_seq: off_dev holds B offsets,
 * sequence b's at off_dev[b] (rows at different lengths). */
int xd_cuda_kv_append_at(xd_cuda_ctx *c, uint16_t *cache_k, uint16_t *cache_v, const uint16_t *src_k,
                         const uint16_t *src_v, int ld, int B, int Tn, int kvdim, int cap, const int32_t *off_dev,
                         int per_seq, xd_err *e);
int xd_cuda_positions_at(xd_cuda_ctx *c, int32_t *pos, const int32_t *off_dev, int per_seq, int B, int Tn,
                         xd_err *e);

/* Attention of Tq queries per sequence over keys in memory (a KV cache, or the fused buffer):
 * query i of sequence b (row b*Tq + i of q, stride ldq) sits at position q_offset + i and sees
 * keys s <= q_offset + i (and s > q_offset + i - window when window > 0, the HF sliding window).
 * k, v: sequence b's key s of KV head g at k + b*kv_bstride + s*ldkv + g*d. out [B*Tq, H*d]
 * rows (stride ldo), bf16. fp32 math, scale 1/sqrt(d); GQA: head h reads KV head h / (H/G).
 * Any d <= 256 (16-byte loads when d, strides and pointers allow). The keys are split into
 * chunks of at most 1024 spread over the SMs (flash-decoding); with more than one chunk the
 * fp32 partial results go to ws (see xd_cuda_attention_decode_ws) and a second kernel merges
 * them. Error (nothing written) when ws_bytes is too small. */
typedef struct {
  int B, Tq, H, G, d;
  int q_offset, window;
  int ldq, ldo, ldkv;
  size_t kv_bstride;
  /* Optional (zero: unused): off_dev, a device int read when the kernels run, replaces q_offset
   * (every sequence at the same offset), so a CUDA graph of a decode step stays valid as the cache
   * grows; the grid and workspace are then sized for max_keys >= offset + Tq keys, and the
   * splits follow the run-time offset exactly as q_offset would give them (same bits). With
   * off_per_seq, off_dev holds B offsets, sequence b's at off_dev[b] (its splits from its own). */
  const int32_t *off_dev;
  int max_keys;
  int off_per_seq;
} xd_cuda_decode_dims;
/* Workspace bytes for these dims (the count of keys is q_offset + Tq, or max_keys with off_dev;
 * it grows with it). */
size_t xd_cuda_attention_decode_ws(xd_cuda_ctx *c, const xd_cuda_decode_dims *a);
int xd_cuda_attention_decode(xd_cuda_ctx *c, uint16_t *out, const uint16_t *q, const uint16_t *k, const uint16_t *v,
                             const xd_cuda_decode_dims *a, void *ws, size_t ws_bytes, xd_err *e);
/* out[b] = argmax_v logits[b*V + v] (first index among equal maxima, as the CPU's greedy loop). */
int xd_cuda_argmax_f32(xd_cuda_ctx *c, int32_t *out, const float *logits, int B, int V, xd_err *e);
/* Temperature sampling of rows of logits [*, V] (fp32), one request per row (serve, batched
 * generation): request r reads row req[r].row with 1/T = req[r].inv_t and a uniform u = req[r].u
 * in [0, 1), and gives z[r] = sum_v exp((l_v - max) / T) (fp32 terms, fp64 sum) and tok[r] = the
 * first id, in id order, whose cumulative sum of those terms exceeds u z[r] (the last id of
 * nonzero weight when rounding leaves none): xd_sampler_next's draw when nothing is masked (its
 * CPU twin, eval/sample.c, reads the same terms in double). req, z, tok in device memory. */
typedef struct {
  int32_t row;
  float inv_t;
  double u;
} xd_cuda_sample_req;
int xd_cuda_sample_rows(xd_cuda_ctx *c, const float *logits, int V, const xd_cuda_sample_req *req, int n, double *z,
                        int32_t *tok, xd_err *e);
/* ==== end of GPU teacher model support ==== */

/* ==== stage II KD loss (kd_loss.cu; branch cudakd) =======================================
 * CUDA twins of ops/cpu/kd_loss.h: the teacher's top-k extraction (topk_logprobs) and the
 * student's loss forward + backward fused into one kernel (kd_loss_forward followed by
 * kd_loss_backward). Same semantics, same kd_config, same layouts; logits are bf16 or fp32
 * storage, all math fp32 on the vocabulary rows and fp64 on the k teacher entries. */
#include "ops/cpu/kd_loss.h" /* kd_config, kd_result */

/* Teacher top-k: for each row of logits [N,V] (bf16 or fp32), ids [N,k] and their full-vocab
 * log-softmax values logp [N,k] (temperature 1), sorted by value descending, ties by lower id:
 * exactly topk_logprobs's ids, the log-probs within fp32 rounding. One block per row; 1 <= k
 * <= XD_CUDA_TOPK_MAX; V < 2^31. Two reads of each row when the threshold bin of the first
 * radix pass holds few enough values (always, for logits with a realistic spread); up to four
 * more (exact radix select, ties taken in id order) for rows of massive ties.
 * bad_row (NULL or one device int32) receives the lowest row holding a non-finite logit, or
 * -1 when every row is finite; the CPU op refuses such input, here the caller checks it (its
 * row gets some k ids and non-finite log-probs). */
#define XD_CUDA_TOPK_MAX 1024
int xd_cuda_topk_logprobs(xd_cuda_ctx *c, const void *logits, xd_cuda_dtype dtype, int N, int V, int k,
                          int32_t *ids, float *logp, int32_t *bad_row, xd_err *e);

/* Result of the fused loss, in device memory (download it to log): the kd_result of
 * kd_loss_forward, plus bad_pos = the lowest counted position whose target or teacher id is
 * outside [0,V) or whose teacher log-prob is not finite (-1 when none; the CPU op refuses such
 * input with an error, here that row's loss terms are NaN and its gradient row zero). */
typedef struct {
  kd_result r; /* loss, ce, kl (means over counted positions), count */
  int64_t bad_pos;
} xd_cuda_kd_result;

/* Arguments of the fused loss. logits [N,V] (logits_dtype); dlogits [N,V] (grad_dtype) may BE
 * logits (same dtype): in place, each row is overwritten by its gradient (masked rows zeroed),
 * as kd_loss_backward(dlogits == logits). Otherwise accumulate = 0 overwrites (masked rows
 * zeroed) and accumulate = 1 adds (+=, masked rows untouched, as the CPU op's non-in-place
 * mode). targets [N] int32, mask [N] (NULL = all counted), tk_ids [N,k] int32, tk_logp [N,k]
 * fp32 (full-vocab log-probs at temperature 1, as topk_logprobs / the top-k cache write them).
 * dlogits = dloss * d(loss)/d(logits), loss = mean over counted rows of gamma CE + beta KL. */
typedef struct {
  kd_config cfg;              /* N, V, k (<= XD_CUDA_TOPK_MAX), tau, gamma, beta */
  const void *logits;         /* [N,V] */
  xd_cuda_dtype logits_dtype;
  void *dlogits;              /* [N,V]; may equal logits */
  xd_cuda_dtype grad_dtype;   /* must equal logits_dtype when dlogits == logits */
  int accumulate;             /* separate buffer only: 1 = +=, 0 = overwrite */
  float dloss;                /* upstream gradient of the loss (1 in training) */
  const int32_t *targets;
  const uint8_t *mask;
  const int32_t *tk_ids;
  const float *tk_logp;
  float *lse;                 /* [N] full-vocab logsumexp per row (0 for masked rows), or NULL */
  float *row_ce, *row_kl;     /* [N] per-row CE and KL (0 for masked rows); required */
  xd_cuda_kd_result *res;     /* device; required */
  int threads;                /* block size for the row kernel: 0 = default, else 256/512/1024 */
} xd_cuda_kd_args;

/* Three launches, no host synchronisation: the mask count (integer, exact), the fused row
 * kernel (one block per row: pass 1 streams the row for max / sum-exp while the k teacher
 * entries and the target are gathered; the k-entry softmaxes, KL and gradient terms in fp64;
 * pass 2 streams the row backwards (what pass 1 left in L2 first) writing sce * softmax;
 * then the <= k+1 positions of the target and the teacher ids get their full value, computed
 * in fp32 from the gathered logits in the CPU op's order), and a one-block reduction of the
 * per-row values in row order in fp64 (deterministic, no float atomics). */
int xd_cuda_kd_loss_fused(xd_cuda_ctx *c, const xd_cuda_kd_args *a, xd_err *e);
/* The same three launches one by one, for callers that hold the logits of some rows at a time
 * (the student's LM head in row blocks): _begin (the mask count over all cfg.N rows, the result
 * cleared), _rows for rows [r0, r0+n) with a->logits and a->dlogits holding THOSE rows (their row
 * 0 is row r0; targets, mask, top-k, lse, row_ce, row_kl index all N rows; bad_pos is the row
 * among all N), called for every row once in any order, then _end (the reduction). Per row the
 * same arithmetic, so begin + rows over any split + end = xd_cuda_kd_loss_fused, bit for bit. */
int xd_cuda_kd_loss_begin(xd_cuda_ctx *c, const xd_cuda_kd_args *a, xd_err *e);
int xd_cuda_kd_loss_rows(xd_cuda_ctx *c, const xd_cuda_kd_args *a, int r0, int n, xd_err *e);
int xd_cuda_kd_loss_end(xd_cuda_ctx *c, const xd_cuda_kd_args *a, xd_err *e);
/* ==== end of the KD loss section =========================================================== */

/* ==== student inference (branch cudastudent): prefill glue and the decode step ==============
 * Kernels in student_decode.cu; the model wiring (upload, forward, prefill -> decode) is
 * src/model/student/student_cuda.{h,c}. fp32 activations, bf16 teacher matrices. */

/* out = w * (x * rsqrt(mean(x^2) + eps)) per row of C (w NULL: out = x), from fp32 x [N,C]
 * into bf16 out_bf16 and/or fp32 out_f32 (either may be NULL). w fp32 [C]. */
int xd_cuda_rmsnorm_f32(xd_cuda_ctx *c, uint16_t *out_bf16, float *out_f32, const float *x, const float *w, int N,
                        int C, float eps, xd_err *e);
/* h[N,C] += rmsnorm(t, w) (the post-norm families' residual add). fp32. */
int xd_cuda_add_rmsnorm_f32(xd_cuda_ctx *c, float *h, const float *t, const float *w, int N, int C, float eps,
                            xd_err *e);
/* The student's q/k preparation for N tokens (xd_teacher_layer_in after the projections):
 * q_raw [N,H*d], k_raw, v_raw [N,G*d] fp32 -> QK-norm (qk_norm 0 none, 1 per head with weights
 * [d], 2 whole projection with weights [H*d]/[G*d]; eps) -> RoPE at pos[N] from fp32 tables
 * [n_pos, d/2] -> q [N,H*d], k [N,G*d] fp32 and qb, kb, vb (v_raw converted) bf16. H <= 256. */
int xd_cuda_student_qk_prep(xd_cuda_ctx *c, float *q, float *k, uint16_t *qb, uint16_t *kb, uint16_t *vb,
                            const float *q_raw, const float *k_raw, const float *v_raw, const float *q_norm,
                            const float *k_norm, int qk_norm, const float *cos_t, const float *sin_t,
                            const int32_t *pos, int N, int H, int G, int d, float eps, xd_err *e);
/* Sliding-window + sinks attention (swa_forward's key set) for any head dim d <= 256, fp32 in
 * and out, one block per (token, head): the fallback where xd_cuda_attention_forward (d 64 or
 * 128) does not apply. q, out [B,T,H,d]; k, v [B,T,G,d]. (W + S + d) * 4 bytes <= 48 KiB. */
int xd_cuda_swa_naive_forward(xd_cuda_ctx *c, float *out, const float *q, const float *k, const float *v, int B,
                              int T, int H, int G, int d, int W, int S, xd_err *e);
/* The same, also writing lse [B,T,H] (NULL = not wanted): the natural-log logsumexp of the
 * scaled scores, as swa_forward's (the training path's SWA backward reads it). */
int xd_cuda_swa_naive_forward_lse(xd_cuda_ctx *c, float *out, float *lse, const float *q, const float *k,
                                  const float *v, int B, int T, int H, int G, int d, int W, int S, xd_err *e);
/* Prefill -> decode hand-off of one layer's local branch: kb, vb [n, Gd] bf16 (one sequence);
 * token t < S goes to sink slot t, token t >= n - W to ring slot t % W (swa_cache's layout). */
int xd_cuda_student_ring_fill(xd_cuda_ctx *c, uint16_t *k_sink, uint16_t *v_sink, uint16_t *k_ring,
                              uint16_t *v_ring, const uint16_t *kb, const uint16_t *vb, int n, int Gd, int W, int S,
                              xd_err *e);

/* One decode step of one sequence (the twin of student.c's decode_one), or of B sequences each
 * at its own position (B > 1: the batched step, below). All pointers are device pointers except
 * `layers` (a host array of L). Per-step inputs live in device memory (`params`: token id,
 * position, the RoPE rows of that position; [B] of them) so that the launch sequence can be
 * captured once in a CUDA graph and replayed. */
#define XD_SDEC_MAX_HALF 128
typedef struct {
  int64_t pos;    /* position of the token being fed */
  int32_t id, pad;
  float cos[2][XD_SDEC_MAX_HALF], sin[2][XD_SDEC_MAX_HALF]; /* [layer kind: full, sliding][d/2] */
} xd_cuda_sdec_params;
typedef struct {
  const float *attn_norm, *mlp_norm, *attn_out_norm, *mlp_out_norm; /* fp32 [D] or NULL */
  const float *q_norm, *k_norm;                                     /* fp32 or NULL */
  const uint16_t *w_qkv, *w_o, *w_gu, *w_down; /* bf16 [(H+2G)d, D], [D, Hd], [2F, D] (gate|up), [D, F] */
  const float *b_qkv, *b_o, *b_gu, *b_down;    /* fp32 or NULL */
  const float *P_q, *P_k, *w_i, *b_i, *w_f, *b_f, *w_mix, *b_mix; /* fp32 hybrid parameters */
  int rope_kind, W, S;                         /* RoPE table (0 full, 1 sliding), window, sinks */
  const uint16_t *b_gu16;                      /* bf16 copy of b_gu (batched step) or NULL */
  float *C, *n, *m;                            /* mLSTM state [B,H,P,d], [B,H,P], [B,H] fp32 */
  uint16_t *k_sink, *v_sink, *k_ring, *v_ring; /* [B,S,G,d], [B,W,G,d] bf16 */
} xd_cuda_sdec_layer;
typedef struct {
  int L, D, F, H, G, d, P, V;
  int qk_norm, post_norm, hedgehog, norm_max;
  float rms_eps, mlstm_eps, softcap;
  const uint16_t *embed, *lm_head;
  const float *final_norm;
  const xd_cuda_sdec_layer *layers; /* host array [L] */
  const xd_cuda_sdec_params *params; /* [B] */
  /* B sequences (0 or 1: one). B > 1, the batched step: the projections are cuBLASLt GEMMs
   * over the B rows (inputs rounded to bf16, as in prefill), the per-head kernel one cluster
   * per (head, sequence); no PDL, no legacy kernels, every other field as for one sequence
   * with [B, ...] scratch rows. */
  int B;
  /* each token's scratch, fp32 [B, ...]: h [D], xn [D], qkv [(H+2G)d], q [Hd], k [Gd], qf [H,P],
   * kf [G,P], ig, fg [H], att [Hd], tmp [D], act [F], logits [V] (q, k, qf, kf, ig, fg: legacy
   * kernels only) */
  float *h, *xn, *qkv, *q, *k, *qf, *kf, *ig, *fg, *att, *tmp, *act, *logits;
  /* batched step only, bf16 [B, ...]: GEMM inputs xb [D], attb [Hd], act [F]; gate|up [2F] */
  uint16_t *xb, *attb, *actb, *gub;
  /* 1: the original kernels (one block per head for prep/core, one warp per GEMV row) kept as
   * the reference of issue #8; 0 (default): one clustered per-head kernel, split-K GEMVs */
  int legacy;
  /* split path only (ignored with legacy), bits XD_SDEC_*: XD_SDEC_PDL launches every kernel
   * after the embedding with programmatic dependent launch (the next kernel's blocks start
   * while the previous one drains; weight / state loads issued before griddepcontrol.wait);
   * XD_SDEC_T256: the per-head kernel with 256 threads per block instead of 128 (taken anyway
   * when the softmax's d_phi > 128); XD_SDEC_PRE2: the split-K GEMVs issue their first two
   * load steps (not one) before the PDL wait (same arithmetic, bit-identical logits);
   * batched step (B > 1) only: the per-head work of a sequence runs in k_dec_group (one block
   * per KV group) once B * G >= half the SMs, else in the one-sequence step's clustered kernel
   * (8 blocks per head; also where k_dec_group's shared memory or H / G > 16 do not fit);
   * XD_SDEC_BGROUP: k_dec_group at any B, XD_SDEC_BCLUS: the clustered kernel at any B. Bits 16
   * and up (benchmarks only): skip the launches of kernel class k (1 << (16 + k)); wrong
   * results. */
  int variant;
} xd_cuda_sdec;
enum { XD_SDEC_PDL = 1, XD_SDEC_T256 = 2, XD_SDEC_BCLUS = 8, XD_SDEC_PRE2 = 16, XD_SDEC_BGROUP = 32,
       XD_SDEC_DEFAULT_VARIANT = XD_SDEC_PDL | XD_SDEC_PRE2 };
/* Per-kernel breakdown of one step: runs it `reps` times (the state advances as in real steps
 * at the same position) with a cudaEvent after every launch; us[k] = mean device time per step
 * of kernel class k (all layers), bytes[k] = bytes that class must read + write per step
 * (weights, state, K/V; not the tiny activations). Classes: XD_SDEC_K_*; in the batched step
 * (B > 1) "norm" also holds the rmsnorms and the bf16 conversion, "qkv" / "o" / "gate|up" /
 * "down" / "LM head" the GEMMs (gate|up with the SwiGLU), "per-head" the per-head kernel(s). */
enum { XD_SDEC_K_EMBED, XD_SDEC_K_QKV, XD_SDEC_K_PREP, XD_SDEC_K_CORE, XD_SDEC_K_O, XD_SDEC_K_NORM, XD_SDEC_K_GU,
       XD_SDEC_K_DOWN, XD_SDEC_K_LMHEAD, XD_SDEC_NK };
const char *xd_cuda_sdec_kname(int k);
int xd_cuda_sdec_profile(xd_cuda_ctx *c, const xd_cuda_sdec *m, int reps, double *us, double *bytes, xd_err *e);
/* graph 1: the same with the step (events included) captured once as a CUDA graph and replayed
 * `reps` times, so the times are those of graph replay (the events order the kernels, so both
 * modes run without XD_SDEC_PDL). */
int xd_cuda_sdec_profile_ex(xd_cuda_ctx *c, const xd_cuda_sdec *m, int reps, int graph, double *us, double *bytes,
                            xd_err *e);
/* Validates the shapes the step supports (d even and <= 128, d_phi <= 256, GEMV inputs and
 * W + S within shared memory; B > 1 without legacy kernels) and sets the kernels'
 * shared-memory limits; once, before use. */
int xd_cuda_sdec_check(xd_cuda_ctx *c, const xd_cuda_sdec *m, xd_err *e);
/* Queues one step: embedding of params[b].id, every layer, logits [B, V]; updates the state in
 * place. */
int xd_cuda_sdec_step(xd_cuda_ctx *c, const xd_cuda_sdec *m, xd_err *e);
/* Captures xd_cuda_sdec_step into an executable CUDA graph (replay with xd_cuda_graph_launch). */
int xd_cuda_sdec_graph_capture(xd_cuda_ctx *c, const xd_cuda_sdec *m, void **graph_exec, xd_err *e);
int xd_cuda_graph_launch(xd_cuda_ctx *c, void *graph_exec, xd_err *e);
/* Any sequence of this context's stream work as a graph: _capture_begin, the calls (queued, not
 * run), then _capture_end with the calls' status: on success *graph_exec is the executable graph
 * (run it with xd_cuda_graph_launch, free with xd_cuda_graph_free); on a failed call or a capture
 * the driver refused (an op that synchronises, a first allocation) it returns -1 with the
 * reason, *graph_exec NULL, and nothing of the sequence has run. Host-side effects of the calls
 * (caches, grown scratch) did happen. */
int xd_cuda_graph_capture_begin(xd_cuda_ctx *c, xd_err *e);
/* Changes whenever the context's grown-on-demand scratch buffers move (a graph that captured
 * kernels using them must be captured again). */
unsigned xd_cuda_ws_generation(const xd_cuda_ctx *c);
int xd_cuda_graph_capture_end(xd_cuda_ctx *c, int body_rc, const xd_err *body_err, void **graph_exec, xd_err *e);
void xd_cuda_graph_free(void *graph_exec);
/* Device memory in use (total - free, cudaMemGetInfo), for reports. */
size_t xd_cuda_mem_used(void);
/* ==== end of student inference ================================================================ */

/* ==== training ops (branch cudatrain): backward twins of the teacher-shared ops ==============
 * Stage II trains the teacher-shared parts too; these are the GPU twins of matmul_backward,
 * rmsnorm_backward, rope_backward, swiglu_backward and embedding_backward (src/ops/cpu/<op>_impl.inc).
 * Storage: activations the forward keeps in bf16 are read as bf16 (matmul inputs, the swiglu
 * gate|up, the QK-norm input); every gradient is fp32 (dW, db, dw of the norms, dtable; dx fp32
 * or bf16 for the matmul). Like the CPU ops they ACCUMULATE (+=) into their gradients (the
 * matmul: with XD_CUDA_BW_ACCUMULATE; without it, it writes). Reductions over tokens are
 * deterministic: fixed partial sums added in a fixed order, no float atomics. */

/* flags of xd_cuda_matmul_backward / _f32 */
#define XD_CUDA_BW_ACCUMULATE 1 /* dx, dW, db += (the CPU's semantics); else they are written */
#define XD_CUDA_BW_OWN_BGRAD 2  /* db by the column-sum kernel even where the epilogue is available */
#define XD_CUDA_BW_DX_WRITE 4   /* dx written even with XD_CUDA_BW_ACCUMULATE (dW, db still +=): a dx
                                 * with one producer needs no zeroing (branch trainfuse) */
#define XD_CUDA_BW_DW_WRITE 8   /* dW and db written even with XD_CUDA_BW_ACCUMULATE (dx still +=) */

/* Matmul backward (cuBLASLt) for out[N,Dout] = x[N,Din] W^T + b, W [Dout,Din] (HF layout):
 *   dx [N,Din] (+)= dout W;  dw [Dout,Din] (+)= dout^T x;  db [Dout] (+)= column sums of dout.
 * Any of dx, dw, db may be NULL (not wanted). bf16 dout, x, w; fp32 accumulation; dx bf16 or
 * fp32 (dx_dtype); dw and db fp32 (for the fp32 master weights). db comes from the dW GEMM's
 * CUBLASLT_EPILOGUE_BGRADB when cuBLASLt offers it for the shape (accumulating through a
 * scratch vector, as the epilogue writes), else (or with dw NULL, or XD_CUDA_BW_OWN_BGRAD)
 * from a deterministic column-sum kernel (partials over fixed 256-row blocks, added in order).
 * dx must not overlap dout or w; dw must not overlap dout or x. N <= 65535 * 256. */
int xd_cuda_matmul_backward(xd_cuda_ctx *c, void *dx, xd_cuda_dtype dx_dtype, float *dw, float *db,
                            const uint16_t *dout, const uint16_t *x, const uint16_t *w, int N, int Din, int Dout,
                            int flags, xd_err *e);
/* The same, all fp32 (CUBLAS_COMPUTE_32F, no TF32): oracle comparisons and small tensors. */
int xd_cuda_matmul_backward_f32(xd_cuda_ctx *c, float *dx, float *dw, float *db, const float *dout, const float *x,
                                const float *w, int N, int Din, int Dout, int flags, xd_err *e);
/* Which path produced db in the last matmul backward with these dims and input dtype
 * (XD_CUDA_BF16: xd_cuda_matmul_backward, XD_CUDA_F32: _f32) that computed dw and db:
 * 1 = the BGRADB epilogue, 0 = the column-sum kernel because cuBLASLt had no algorithm with the
 * epilogue, -1 = no record (never run, evicted from the algorithm cache, or XD_CUDA_BW_OWN_BGRAD). */
int xd_cuda_matmul_backward_bgrad_path(const xd_cuda_ctx *c, xd_cuda_dtype in_dtype, int N, int Din, int Dout);

/* RMSNorm backward (rmsnorm_backward; forward y = w * (x * rsqrt(mean(x^2) + eps)), HF order):
 * dx [N,C] += J^T dout, dw [C] += sum over rows of dout * x * rstd (either may be NULL).
 * rstd is recomputed from x (the GPU forward keeps none). x bf16 or fp32 (x_dtype), w bf16 or
 * fp32 (w_dtype), dout / dx / dw fp32. dw: per-block partials over fixed 256-row blocks, then
 * a fixed-order sum (deterministic; rows <= 65535 * 256 when dw is wanted). dx must not
 * overlap dout or x. */
int xd_cuda_rmsnorm_backward(xd_cuda_ctx *c, float *dx, float *dw, const float *dout, const void *x,
                             xd_cuda_dtype x_dtype, const void *w, xd_cuda_dtype w_dtype, int N, int C, float eps,
                             xd_err *e);
/* The same over segments of strided rows (the backward of xd_cuda_rmsnorm_segments, QK-norm
 * in the fused q|k|v rows): row (n, s), n < N, s < n_seg, is x[n*ld_x + s*C .. +C] (likewise
 * dout with ld_dout, dx with ld_dx); w [C] is shared by all N*n_seg rows and dw sums over all
 * of them. qwen3 (per head): n_seg = H, C = d; olmo (whole projection): n_seg = 1, C = H*d.
 * The dense op is n_seg = 1 and every ld = C. */
int xd_cuda_rmsnorm_backward_segments(xd_cuda_ctx *c, float *dx, int ld_dx, float *dw, const float *dout,
                                      int ld_dout, const void *x, xd_cuda_dtype x_dtype, int ld_x, const void *w,
                                      xd_cuda_dtype w_dtype, int N, int n_seg, int C, float eps, xd_err *e);
/* The dense form with the residual stream's gradient folded in (branch trainfuse):
 * dx = dres + J^T dout WRITTEN (dres NULL: dx = J^T dout; dres may equal dx: the += above),
 * dx16 (NULL = not wanted) = bf16(dx) (round to nearest even) for the GEMM backward that reads
 * it next; dw += as above. Saves the copy of the residual gradient, the zeroing of dx and the
 * separate bf16 cast. */
int xd_cuda_rmsnorm_backward_res(xd_cuda_ctx *c, float *dx, uint16_t *dx16, const float *dres, float *dw,
                                 const float *dout, const void *x, xd_cuda_dtype x_dtype, const void *w,
                                 xd_cuda_dtype w_dtype, int N, int C, float eps, xd_err *e);
/* RoPE backward in place (rope_backward, the transpose rotation R^T), fp32 gradients: dx holds
 * N tokens of n_heads * d values, token n at dx + n*ld (dq or dk inside a fused dq|dk|dv
 * buffer); tables and pos as xd_cuda_rope_forward. */
int xd_cuda_rope_backward(xd_cuda_ctx *c, float *dx, int ld, const float *cos_t, const float *sin_t,
                          const int32_t *pos, int N, int n_heads, int d, xd_err *e);
/* The student's q|k|v gradient without QK-norm in one pass (branch ewise): row n of out (bf16,
 * row stride ldo >= (H + 2G) d) = [bf16(dqr + R^T dq) | bf16(dkr + R^T dk) | bf16(dvr)], i.e.
 * xd_cuda_rope_backward on dq [N, H d] and dk [N, G d] (dense), the adds into dqr / dkr and the
 * bf16 gather into the fused q|k|v GEMM backward's input, with the same per-element arithmetic;
 * dq, dk, dqr, dkr, dvr are only read. d a multiple of 4, ldo even, 8-byte aligned buffers. */
int xd_cuda_rope_backward_qkv_bf16(xd_cuda_ctx *c, uint16_t *out, int ldo, const float *dq, const float *dqr,
                                   const float *dk, const float *dkr, const float *dvr, const float *cos_t,
                                   const float *sin_t, const int32_t *pos, int N, int H, int G, int d, xd_err *e);
/* SwiGLU backward (swiglu_backward): for n < N, f < F with g = gate[n*ld+f], u = up[n*ld+f]
 * (bf16, as the forward reads them; fused gate|up: gate = buf, up = buf + F, ld = 2F):
 * dgate[n*ld_d+f] += dout[n*F+f] u s (1 + g (1 - s)), dup[n*ld_d+f] += dout[n*F+f] g s,
 * s = sigmoid(g). dout fp32 dense [N,F]; dgate / dup fp32 with row stride ld_d (a fused
 * dgate|dup buffer: dgate = dbuf, dup = dbuf + F, ld_d = 2F). */
int xd_cuda_swiglu_backward(xd_cuda_ctx *c, float *dgate, float *dup, int ld_d, const float *dout,
                            const uint16_t *gate, const uint16_t *up, int ld, int N, int F, xd_err *e);
/* The same values WRITTEN in bf16 (round to nearest even; what the fp32 op adds to zeroed
 * buffers, rounded): dgate / dup bf16 with row stride ld_d. The gate|up GEMM backward reads
 * them directly (branch trainfuse). */
int xd_cuda_swiglu_backward_bf16(xd_cuda_ctx *c, uint16_t *dgate, uint16_t *dup, int ld_d, const float *dout,
                                 const uint16_t *gate, const uint16_t *up, int ld, int N, int F, xd_err *e);
/* Embedding backward (embedding_backward): dtable[ids[n], :] += dout[n, :], fp32, table [V,D].
 * Deterministic and bit-identical to the CPU's serial loop: the ids are sorted with their token
 * index (CUB radix sort, stable), and one block per distinct id adds that id's dout rows to
 * its table row in token order. Ids outside [0,V) are skipped (never an out-of-range write;
 * the caller validates ids on the host as for the CPU op). Scratch: 3 N int32 + CUB's. */
int xd_cuda_embedding_backward(xd_cuda_ctx *c, float *dtable, const float *dout, const int32_t *ids, int N, int D,
                               int V, xd_err *e);
/* Stage I's layer loss: *sum (device double) = sum over n of (out - ref)^2, in double, and
 * dout = scale * (out - ref) (dout NULL: loss only). Deterministic (fixed partial sums). */
int xd_cuda_mse_grad(xd_cuda_ctx *c, float *dout, const float *out, const float *ref, size_t n, float scale,
                     double *sum, xd_err *e);
/* y[n] += x[n], fp32 (gradient sums of the training step). */
int xd_cuda_add_f32(xd_cuda_ctx *c, float *y, const float *x, size_t n, xd_err *e);
/* ==== end of training ops (branch cudatrain) ================================================== */

/* ==== tensor-core mLSTM chunkwise forward (branch tcmlstm, issue #8) ============================
 * The same function, cfg, layouts and state semantics as xd_cuda_mlstm_chunkwise_forward
 * (init NULL = zero state; final optional, may alias init), on the tensor cores: qf, kf, v
 * are rounded to bf16 for mma.sync m16n8k16 (fp32 accumulation), the within-chunk scores S~ to
 * bf16 for S~ V, w~ V to bf16 in the state update; the carried state C enters Q C as a bf16
 * hi + lo pair. Gates, stabiliser m, normaliser and the states C, n, m are fp32 (gate scalars
 * double). Two phases: chunk-local states in parallel over (b, h, chunk), a scan over chunks,
 * then the outputs in parallel over (b, h, chunk). Expect ~1e-3 relative L2 against the fp32
 * op (bf16 rounding of the inputs). Supports P = D = 64 and chunk 64 only (one-line error
 * otherwise); pointers 16-byte aligned; B*H <= 65535. Scratch: cudaMallocAsync on the stream,
 * B*H*ceil(T/64)*(P*D + P + 1) floats for the chunk-start states plus 24 bytes per chunk
 * (the caller's bound buffer is used instead when given). */
int xd_cuda_mlstm_chunkwise_forward_tc(xd_cuda_ctx *c, const mlstm_cfg *cfg, const float *qf, const float *kf,
                                       const float *v, const float *ig, const float *fg, const mlstm_state *init,
                                       mlstm_state *final, float *h, xd_err *e);
/* The same, also filling bound (mlstm_boundary_size(cfg) floats, the CPU layout; NULL = not
 * wanted), which it then uses as its state scratch. */
int xd_cuda_mlstm_chunkwise_forward_tc_bound(xd_cuda_ctx *c, const mlstm_cfg *cfg, const float *qf, const float *kf,
                                             const float *v, const float *ig, const float *fg,
                                             const mlstm_state *init, mlstm_state *final, float *bound, float *h,
                                             xd_err *e);
/* ==== end of tensor-core mLSTM (branch tcmlstm) =============================================== */


/* ==== optimiser (branch gpuopt, issue #8) =====================================================
 * The device side of train/params_cuda.h (fp32 master weights, gradients and AdamW moments in
 * device memory, a bf16 mirror of the weights for the GEMMs). Every float operation is IEEE
 * round-to-nearest without FMA contraction or flush-to-zero (inline PTX .rn), so results are
 * bit-identical to the CPU build of train/optim.c and params.c. Kernels in optim.cu. */

/* dst[i] = xd_f32_to_bf16(src[i]) bit for bit (round to nearest even, NaN -> quiet NaN keeping
 * its upper payload; xd_cuda_f32_to_bf16 may canonicalise NaNs). dst 8-byte, src 16-byte aligned. */
int xd_cuda_bf16_mirror(xd_cuda_ctx *c, uint16_t *dst, const float *src, size_t n, xd_err *e);
/* x[i] *= s (fp32, rounded once, as xd_params_scale_grad). x 16-byte aligned. */
int xd_cuda_scale_f32(xd_cuda_ctx *c, float *x, size_t n, float s, xd_err *e);
/* block_sums[b] = sum over i in [b*block, min((b+1)*block, n)) of (double)x[i]^2, added in index
 * order in double (xd_params_grad_norm's per-block sums, bit for bit). ceil(n/block) doubles;
 * block a multiple of 32, x 16-byte aligned. The caller adds the block sums in order. */
int xd_cuda_sumsq_blocks(xd_cuda_ctx *c, double *block_sums, const float *x, size_t n, size_t block, xd_err *e);
/* The same over x[i] * scale[0] * ... * scale[nscale-1] (each product rounded to float in that
 * order, as nscale xd_params_scale_grad passes would leave x), without writing x; nscale <= 2
 * (branch trainfuse: the trainer's 1/N and clip factors folded into the readers). */
int xd_cuda_sumsq_blocks_scaled(xd_cuda_ctx *c, double *block_sums, const float *x, size_t n, size_t block,
                                const float *scale, int nscale, xd_err *e);

#define XD_CUDA_ADAMW_CHUNK 4096     /* elements per thread block of the AdamW kernel */
#define XD_CUDA_ADAMW_MAX_GROUPS 64  /* parameter groups the per-launch table holds */
/* One AdamW launch over w, g, m, v [n] (the trainable prefix of an arena), with per-element
 * hyper-parameters chosen by group: the elements are cut into segments (runs of one group),
 * segment s = [seg_start[s], seg_start[s+1]) has group seg_group[s] (seg_start has nseg + 1
 * entries, the last = n); chunk c = [c*CHUNK, (c+1)*CHUNK) covers segments chunk_seg[2c] ..
 * chunk_seg[2c+1] (those of its first and last element); nchunks = ceil(n / CHUNK). step[g] and
 * decay[g] are xd_adamw_step's per-tensor floats for group g; b1, b2, eps, sbc2 and omb1 = 1 - b1,
 * omb2 = 1 - b2 its floats (computed in float on the host, as there). wb (NULL: none) receives
 * bf16 bits of the new weights (xd_cuda_bf16_mirror's rounding). Device pointers; w, g, m, v
 * 16-byte aligned, wb 8-byte aligned. Reads 16 and writes 12 (+2) bytes per element. */
typedef struct {
  float *w;
  const float *g;
  float *m, *v;
  uint16_t *wb;
  size_t n, nchunks;
  const uint64_t *seg_start;
  const int *seg_group;
  const int *chunk_seg;
  float b1, omb1, b2, omb2, eps, sbc2;
  float step[XD_CUDA_ADAMW_MAX_GROUPS], decay[XD_CUDA_ADAMW_MAX_GROUPS];
  /* deferred gradient scales (branch trainfuse): the kernel uses g * gscale[0] * ... (nscale <= 2
   * factors, each product rounded to float in order: the bits nscale xd_params_scale_grad passes
   * would have left in g); g itself is not written. nscale 0: g as it is. */
  int nscale;
  float gscale[2];
} xd_cuda_adamw_args;
int xd_cuda_adamw(xd_cuda_ctx *c, const xd_cuda_adamw_args *a, xd_err *e);
/* ==== end of optimiser (branch gpuopt) ======================================================== */

#ifdef __cplusplus
}
#endif
#endif
