/* The hybrid xLSTM student (SPEC §2): the teacher's layers with the attention core replaced by
 * mLSTM (global) + sliding-window attention with sinks (local), mixed per head.
 *
 * Weights live in one xd_params table (fp32 master weights; grads/moments for the trainable
 * ones), named as in the checkpoint (docs/checkpoint-format.md). `base` is an xd_teacher whose
 * pointers point into that arena, so the teacher's layer code (xd_teacher_layer_in/_out) runs
 * the shared parts; `gbase` holds the matching gradient pointers (NULL where frozen).
 *
 * Shapes: N = B*T token-major rows, D hidden, H/G query/KV heads, d head dim, P = d_phi. */
#ifndef XD_STUDENT_H
#define XD_STUDENT_H
#include "model/student/hybrid_config.h"
#include "model/teacher/teacher.h"
#include "ops/cpu/mlstm.h"
#include "ops/cpu/swa.h"
#include "train/params.h"

/* A layer's hybrid tensors, as an X-macro over (R, field) like XD_TEACHER_LAYER_TENSORS. */
#define XD_HYBRID_LAYER_TENSORS(X, R)        \
  X(R, P_q) X(R, P_k) /* [H,d,p], [G,d,p] */ \
  X(R, w_i) X(R, b_i) /* [H,D], [H] */       \
  X(R, w_f) X(R, b_f) /* [H,D], [H] */       \
  X(R, w_o) X(R, b_o) /* [H,3d], [H] */
typedef struct { XD_HYBRID_LAYER_TENSORS(XD_TENSOR_FIELD, float) } xd_hybrid_layer;
typedef struct { XD_HYBRID_LAYER_TENSORS(XD_TENSOR_FIELD, double) } xd_hybrid_layer_f64;

typedef enum {
  XD_STUDENT_FROZEN = 0, /* inference: no gradients */
  XD_STUDENT_TRAIN_NEW,  /* stage I: only the new hybrid parameters train */
  XD_STUDENT_TRAIN_ALL   /* stage II: every parameter trains */
} xd_student_mode;

typedef struct {
  xd_model_config cfg;
  xd_hybrid_config hy;
  xd_student_mode mode;
  xd_params params;
  xd_teacher base, gbase;        /* weight / gradient views (layers arrays owned) */
  xd_hybrid_layer *hl, *ghl;     /* [L] weight / gradient views */
  char *dir;                     /* directory loaded from (side files are copied on save) */
} xd_student;

/* Load a student checkpoint directory (config.json with the "xdistill" section). */
int xd_student_load(xd_student *s, const char *dir, xd_student_mode mode, xd_err *e);
void xd_student_free(xd_student *s);
/* A student of configuration c / hy with every weight zero (the caller fills them: tests and
 * benchmarks at shapes without a checkpoint); same table and arenas as a loaded one. */
int xd_student_create(xd_student *s, const xd_model_config *c, const xd_hybrid_config *hy, xd_student_mode mode,
                      xd_err *e);
/* Write dir/model.safetensors (F32), dir/config.json, and the tokenizer side files of the
 * source directory. Atomic per file; config.json last. */
int xd_student_save(const xd_student *s, const char *dir, xd_err *e);
/* 1 if the config.json in dir has an "xdistill" section. */
int xd_is_student_dir(const char *dir);

/* ---- one hybrid attention core (the part that replaces softmax attention) --------------- */
/* Saved activations of one layer's core for rows N = B*T (allocated once per shape). */
#define XD_CORE_ACTS_OF(R)                          \
  struct {                                          \
    int B, T;                                       \
    R *local, *lse; /* [N,H*d], [N,H] */            \
    R *qf, *kf;     /* [N,H,P], [N,G,P] */          \
    R *ig, *fg;     /* [N,H] */                     \
    R *glob;        /* [N,H*d] mLSTM output */      \
    R *bound;       /* mlstm boundary states */     \
    R *o;           /* [N,H] mixing gate */         \
    mlstm_ws *ws;   /* of the matching precision */ \
    mlstm_cfg mc;                                   \
  }
typedef XD_CORE_ACTS_OF(float) xd_core_acts;
void xd_core_acts_alloc(xd_core_acts *a, const xd_student *s, int B, int T);
void xd_core_acts_free(xd_core_acts *a);

/* out [N,H*d] from the layer's x [N,D], raw projections and (normed, roped) q, k. */
void xd_core_forward(const xd_student *s, int layer, xd_core_acts *a, const float *x, const float *q_raw,
                     const float *k_raw, const float *v_raw, const float *q, const float *k, float *out);
/* Backward of the core: dout [N,H*d] -> gradients of the layer's hybrid parameters (into
 * s->ghl[layer], accumulated) and, when non-NULL, of its inputs (accumulated). Scratch is
 * allocated inside (one layer's worth). */
void xd_core_backward(const xd_student *s, int layer, const xd_core_acts *a, const float *x, const float *q_raw,
                      const float *k_raw, const float *v_raw, const float *q, const float *k, const float *dout,
                      float *dx, float *dq_raw, float *dk_raw, float *dv_raw, float *dq, float *dk);

/* ---- float64 twin (finite-difference tests) --------------------------------------------
 * A double copy of a student's weights with a gradient for EVERY tensor (whatever the source's
 * mode), over which the float64 instantiations of the core (below) and of the training
 * forward/backward (student_train.h) run: the same source as the fp32 product path
 * (student_core_impl.inc, student_train_impl.inc, compiled once per type by ops/cpu/twin.h).
 * Tensor i is the fp32 student's params tensor i (same name, shape, order); a tied lm_head
 * shares the embedding's slot, as in fp32. */
typedef struct {
  xd_model_config cfg;
  xd_hybrid_config hy;
  xd_teacher_f64 base, gbase;    /* weight / gradient views into the arena (layers owned) */
  xd_hybrid_layer_f64 *hl, *ghl; /* [L] */
  int n;                         /* tensors */
  size_t *numel;                 /* [n] */
  double **data, **grad;         /* [n] each tensor's weights / gradient */
  double *arena;                 /* all weights, then all gradients */
} xd_student_f64;
/* Copy s's weights (converted exactly) into d. Free with xd_student_f64_free. */
void xd_student_f64_from(xd_student_f64 *d, const xd_student *s);
void xd_student_f64_free(xd_student_f64 *d);
void xd_student_f64_zero_grad(xd_student_f64 *d);

typedef XD_CORE_ACTS_OF(double) xd_core_acts_f64;
void xd_core_acts_alloc_f64(xd_core_acts_f64 *a, const xd_student_f64 *s, int B, int T);
void xd_core_acts_free_f64(xd_core_acts_f64 *a);
void xd_core_forward_f64(const xd_student_f64 *s, int layer, xd_core_acts_f64 *a, const double *x,
                         const double *q_raw, const double *k_raw, const double *v_raw, const double *q,
                         const double *k, double *out);
void xd_core_backward_f64(const xd_student_f64 *s, int layer, const xd_core_acts_f64 *a, const double *x,
                          const double *q_raw, const double *k_raw, const double *v_raw, const double *q,
                          const double *k, const double *dout, double *dx, double *dq_raw, double *dk_raw,
                          double *dv_raw, double *dq, double *dk);

/* ---- whole model ------------------------------------------------------------------------ */
/* Full forward ids [B,T] -> logits [B,T,V]. ta: teacher activations sized for (B*T, T). */
int xd_student_forward(const xd_student *s, xd_teacher_acts *ta, xd_core_acts *ca, const int32_t *ids, int B, int T,
                       float *logits, xd_err *e);

/* ---- constant-memory decoding ----------------------------------------------------------- */
/* Per sequence: per layer the mLSTM state (C, n, m per query head) and the sink + ring K/V. */
typedef struct {
  int n_layers, H, G, d, P;
  int64_t pos;
  mlstm_state *mstate;  /* [L], each for 1 x H heads */
  swa_cache *cache;     /* [L] */
  /* Scratch for one decode step, allocated once: one-row teacher activations (RoPE table of
   * one row, rebuilt for the current position) and the core's per-token buffers. */
  xd_teacher_acts ta1;
  float *qf, *kf, *ig, *fg, *glob, *local, *o;
} xd_student_state;
void xd_student_state_alloc(xd_student_state *st, const xd_student *s);
void xd_student_state_free(xd_student_state *st);
size_t xd_student_state_bytes(const xd_student_state *st);
/* Feed tokens ids[n] of one sequence (prefill when n > 1, decode when n == 1) and return the
 * logits of the last one [V]. Prefill runs the chunkwise form and hands its final state over. */
int xd_student_step(const xd_student *s, xd_student_state *st, const int32_t *ids, int n, float *logits, xd_err *e);
#endif
