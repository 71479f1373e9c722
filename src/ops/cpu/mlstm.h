/* mLSTM ops on CPU (SPEC §2.3): the stabilised matrix-memory recurrence of the student's
 * global branch, in three forms that compute the same function:
 *   - parallel  (quadratic in T, the "attention-like" form; forward only, for checks/bench)
 *   - chunkwise (chunk length L: quadratic inside a chunk, recurrent across chunks) with an
 *     exact backward that recomputes each chunk from the saved boundary states
 *   - recurrent (one token for all B*H heads, in-place state update; decoding)
 * plus a plain double-precision recurrent loop used as the reference by tests.
 * The maths of the chunkwise form and its backward is written out in docs/mlstm.md.
 *
 * Layouts (token-major, as the projections produce them; row-major, contiguous):
 *   qf [B, T, H, P]  feature-mapped queries (P = d_phi); the op applies s = P^-1/2 itself
 *   kf [B, T, G, P]  feature-mapped keys
 *   v  [B, T, G, D]  values
 *   ig, fg [B, T, H] input / forget gate pre-activations (i~, f~, after any soft cap)
 *   h  [B, T, H, D]  output
 * GQA: query head h uses KV head g = h / (H / G).
 * State per (b, h), struct of arrays over B*H (index bh = b*H + h):
 *   C [B*H, P, D], n [B*H, P], m [B*H]   (the stabilised C~, n~ and the stabiliser m)
 * An initial state of NULL means m_0 = 0, C_0 = 0, n_0 = 0.
 *
 * Gradients are ACCUMULATED (+=) into the caller's buffers, llm.c style: zero them first.
 * The backward treats the initial state as a constant and the final state as unused by the
 * loss (its gradient is zero): the loss is a function of h only.
 *
 * Every function exists in float (the product) and in double (suffix _f64, used by the
 * finite-difference tests); both are instantiated from one implementation (mlstm_impl.inc).
 * Shapes are the caller's contract: a mismatch between cfg and workspace is a bug (XD_CHECK);
 * validate user-supplied shapes with mlstm_cfg_check first. */
#ifndef XD_OPS_CPU_MLSTM_H
#define XD_OPS_CPU_MLSTM_H

#include <stddef.h>
#include "xdistill.h"

typedef enum {
  MLSTM_NORM_PAPER = 0, /* h = q^T C / (|q^T n| + eps)                (the paper, default) */
  MLSTM_NORM_MAX = 1    /* h = q^T C / (max(|q^T n|, exp(-m)) + eps)  (stock xLSTM) */
} mlstm_norm;

typedef struct {
  int B, T, H, G, P, D; /* batch, tokens, query heads, KV heads, feature dim d_phi, value dim */
  int chunk;            /* chunkwise chunk length L >= 1 (T need not be a multiple of it) */
  mlstm_norm norm;
  double eps;           /* normaliser epsilon, 1e-6 per SPEC */
} mlstm_cfg;

/* Fills the SPEC defaults: chunk 64, paper normaliser, eps 1e-6. */
mlstm_cfg mlstm_cfg_make(int B, int T, int H, int G, int P, int D);
/* 0 if the shapes are usable (all positive, H % G == 0, sizes do not overflow), else -1 with a
 * one-line message. */
int mlstm_cfg_check(const mlstm_cfg *c, xd_err *e);

typedef struct { float *C, *n, *m; } mlstm_state;      /* C [B*H,P,D], n [B*H,P], m [B*H] */
typedef struct { double *C, *n, *m; } mlstm_state_f64;

/* Number of chunks ceil(T / L) and the size (in elements) of the boundary-state buffer the
 * chunkwise forward fills for the backward: for every (bh, chunk c) the state at the START of
 * chunk c, laid out as C [B*H, NC, P, D] then n [B*H, NC, P] then m [B*H, NC]. */
int mlstm_num_chunks(const mlstm_cfg *c);
size_t mlstm_boundary_size(const mlstm_cfg *c);

/* Workspace: per-thread scratch for the chunkwise forward/backward, allocated once per
 * (T, L, P, D) shape and reused; nothing is allocated inside the hot loops. It serves any cfg
 * with the same chunk, P, D and a T no larger than it was made for (B, H, G may vary). The
 * thread count is fixed at creation (omp_get_max_threads()). The backward with GQA and fewer
 * KV groups (B*G) than threads grows a per-head dK/dV buffer (B*H*T*(P+D) elements) on first
 * use and keeps it. A workspace is for one precision: _f64 functions need one made by
 * mlstm_ws_create_f64. Not shareable between concurrent calls. */
typedef struct mlstm_ws mlstm_ws;
mlstm_ws *mlstm_ws_create(const mlstm_cfg *c);
mlstm_ws *mlstm_ws_create_f64(const mlstm_cfg *c);
void mlstm_ws_free(mlstm_ws *w);

/* Chunkwise forward. init: optional initial state (NULL = zeros); final: optional, receives
 * the state after token T-1 (may alias init: prefill -> decode hand-off); bound: optional
 * boundary-state buffer of mlstm_boundary_size elements (needed by the backward). h is
 * overwritten. OpenMP over B*H. */
void mlstm_chunkwise_forward(const mlstm_cfg *c, mlstm_ws *w, const float *qf, const float *kf,
                             const float *v, const float *ig, const float *fg,
                             const mlstm_state *init, mlstm_state *final, float *bound, float *h);
void mlstm_chunkwise_forward_f64(const mlstm_cfg *c, mlstm_ws *w, const double *qf,
                                 const double *kf, const double *v, const double *ig,
                                 const double *fg, const mlstm_state_f64 *init,
                                 mlstm_state_f64 *final, double *bound, double *h);

/* Exact chunkwise backward. Inputs and init must be those of the forward that filled bound
 * (same cfg.chunk). Accumulates into dqf [B,T,H,P], dkf [B,T,G,P], dv [B,T,G,D],
 * dig [B,T,H], dfg [B,T,H]. Includes the gradient through the normaliser's abs / max (sign;
 * at a tie the branch the forward took) and through the stabiliser m (which matters only via
 * eps and the max normaliser). OpenMP over B*G KV groups (the heads of a group share dkf/dv
 * rows and run in sequence), or, when B*G < threads and H > G, over B*H heads with private
 * dK/dV slices summed afterwards; both deterministic. */
void mlstm_chunkwise_backward(const mlstm_cfg *c, mlstm_ws *w, const float *qf, const float *kf,
                              const float *v, const float *ig, const float *fg,
                              const mlstm_state *init, const float *bound, const float *dh,
                              float *dqf, float *dkf, float *dv, float *dig, float *dfg);
void mlstm_chunkwise_backward_f64(const mlstm_cfg *c, mlstm_ws *w, const double *qf,
                                  const double *kf, const double *v, const double *ig,
                                  const double *fg, const mlstm_state_f64 *init,
                                  const double *bound, const double *dh, double *dqf,
                                  double *dkf, double *dv, double *dig, double *dfg);

/* Parallel (quadratic) forward from the zero state: a [T, T] decay-weighted score matrix per
 * head. Allocates O(T^2) scratch per thread once per call. h is overwritten. */
void mlstm_parallel_forward(const mlstm_cfg *c, const float *qf, const float *kf, const float *v,
                            const float *ig, const float *fg, float *h);
void mlstm_parallel_forward_f64(const mlstm_cfg *c, const double *qf, const double *kf,
                                const double *v, const double *ig, const double *fg, double *h);

/* One recurrent step for all B*H heads (cfg.T is ignored): q [B,H,P], k [B,G,P], v [B,G,D],
 * ig, fg [B,H]; state updated in place; h [B,H,D] overwritten. */
void mlstm_recurrent_step(const mlstm_cfg *c, const float *q, const float *k, const float *v,
                          const float *ig, const float *fg, mlstm_state *s, float *h);
void mlstm_recurrent_step_f64(const mlstm_cfg *c, const double *q, const double *k,
                              const double *v, const double *ig, const double *fg,
                              mlstm_state_f64 *s, double *h);

/* Reference: the SPEC recurrence written as plainly as possible in double (token by token,
 * no BLAS, no threads), same layouts, optional init/final. The oracle for the tests. */
void mlstm_reference_forward_f64(const mlstm_cfg *c, const double *qf, const double *kf,
                                 const double *v, const double *ig, const double *fg,
                                 const mlstm_state_f64 *init, mlstm_state_f64 *final, double *h);

#endif
