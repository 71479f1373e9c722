/* The teacher on one NVIDIA GPU (CUDA backend, src/ops/cuda): bf16 weights, fp32 residual
 * stream, fp32 logits. Same families and features as the CPU teacher (teacher.h), loaded through
 * the CPU loader and config (llama, qwen2, qwen3 QK-norm, olmo2/olmo3 post-norms and sliding
 * layers, GQA, tied embeddings, every RoPE scaling the CPU computes, dynamic NTK included).
 *
 * Layer on the device (N = B*T rows; fused q|k|v and gate|up projections):
 *   x = bf16(rmsnorm(h)) [olmo: bf16(h)];  qkv = x Wqkv^T (+b);  QK-norm on the q / k slices;
 *   RoPE on q, k in place;  a = attention;  h += a Wo^T (+bo) (fp32 epilogue) [olmo: h += norm(.)];
 *   x = bf16(rmsnorm(h)) [olmo: bf16(h)];  gu = x Wgu^T;  act = silu(g) * u;  h += act Wdown^T
 *   [olmo: h += norm(.)];  logits = bf16(rmsnorm(h)) lm_head^T in fp32.
 * Attention: flash kernel (head dim 64 / 128) for a full forward or a prefill from position 0;
 * otherwise (decode, other head dims) the split-K kernel over the KV cache (bf16 [B, cap, G*d]).
 *
 * Everything is compiled only with XD_HAVE_CUDA; xd_cuda_built() and the two *_dir helpers exist
 * in every build (without CUDA they fail with "built without CUDA"). */
#ifndef XD_TEACHER_CUDA_H
#define XD_TEACHER_CUDA_H
#include <stdio.h>
#include "model/teacher/teacher.h"

/* 1 when compiled with the CUDA backend. */
int xd_cuda_built(void);

/* Device memory a teacher needs, bytes: weights, KV cache, activations (incl. logits and the
 * attention workspace). */
typedef struct {
  size_t weights, kv, acts;
} xd_teacher_cuda_plan;

/* CLI helpers (`forward` / `generate --device cuda`): load dir's teacher on GPU 0, print the memory
 * plan (one line to stderr), run, free everything. Same contracts as xd_teacher_forward (logits
 * [B,T,V] on the host) and xd_teacher_generate. */
int xd_teacher_cuda_forward_dir(const char *dir, const int32_t *ids, int B, int T, float *logits, xd_err *e);
int xd_teacher_cuda_generate_dir(const char *dir, const int32_t *ids, int B, int T, int max_new, int stop_at_eos,
                                 int32_t *out, int *n_out, xd_err *e);

#ifdef XD_HAVE_CUDA
#include "ops/cuda/cuda_ops.h"

typedef struct {
  uint16_t *attn_norm;            /* [D]; NULL for olmo */
  uint16_t *w_qkv, *b_qkv;        /* [(H+2G)d, D], [(H+2G)d] or NULL */
  uint16_t *q_norm, *k_norm;      /* qwen3 [d]; olmo [H*d], [G*d]; else NULL */
  uint16_t *w_o;                  /* [D, H*d] */
  float *b_o;                     /* [D] fp32 (added in the fp32 epilogue) or NULL */
  uint16_t *attn_out_norm, *mlp_norm, *mlp_out_norm; /* [D] or NULL, as the CPU layer */
  uint16_t *w_gu, *b_gu;          /* [2F, D] (gate rows, then up rows), [2F] or NULL */
  uint16_t *w_down;               /* [D, F] */
  float *b_down;                  /* [D] or NULL */
} xd_teacher_cuda_layer;

typedef struct {
  xd_model_config cfg;
  xd_cuda_ctx *ctx; /* not owned */
  int qkv_w;        /* (H + 2G) d */
  uint16_t *embed, *lm_head, *final_norm; /* lm_head == embed when tied */
  xd_teacher_cuda_layer *layers;
  void *arena;      /* one device allocation holding every weight */
  size_t weight_bytes;
} xd_teacher_cuda;

/* Weights of a CPU teacher (fp32 on the host) -> bf16 on the device (biases of o/down fp32). */
int xd_teacher_cuda_upload(xd_teacher_cuda *t, xd_cuda_ctx *ctx, const xd_teacher *src, xd_err *e);
/* Random weights on the device for benchmarks (uniform, variance 1/fan-in; norm weights and
 * biases uniform in [-1, 1) / zero); no host copy. */
int xd_teacher_cuda_init_random(xd_teacher_cuda *t, xd_cuda_ctx *ctx, const xd_model_config *c, uint64_t seed,
                                xd_err *e);
void xd_teacher_cuda_free(xd_teacher_cuda *t);
size_t xd_teacher_cuda_weight_bytes(const xd_model_config *c);

/* Activations + KV cache for B sequences: up to max_tn new tokens per call, positions < cap,
 * logits for up to logit_rows rows (B*max_tn for a full forward, B for last_only). with_kv = 0
 * allocates no cache (full forward only). */
typedef struct {
  xd_cuda_ctx *ctx;           /* the teacher's (not owned) */
  int B, max_tn, cap, logit_rows, with_kv, len;
  /* ragged (after xd_teacher_cuda_prefill_row): each row at its own length lens[b] (host [B]);
   * else every row at len */
  int32_t *lens;
  int ragged;
  uint16_t **k, **v;          /* per layer [B, cap, G*d] (host array of device pointers) */
  void *kv_arena, *act_arena;
  float *h, *tmp, *logits;    /* [N,D], [N,D], [logit_rows, V] */
  uint16_t *x, *qkv, *att, *gu, *act; /* [N,D], [N,qkv_w], [N,H*d], [N,2F], [N,F] */
  int32_t *ids, *pos, *next;  /* [N], [N], [B] */
  float *cos[2], *sin[2];     /* [cap, d/2] per layer kind */
  void *ws;                   /* attention workspace */
  size_t ws_bytes;
  xd_rope_tables rope;        /* host tables (dynamic NTK rebuilds them per length) */
  int32_t *host_pos;
  size_t kv_bytes, act_bytes;
  /* One-token steps (decode_at): dstep = {lens[B], ids[B]} on the device, uploaded from host_step
   * before each step; the kernels read the position from it, so the step is captured once as a
   * CUDA graph (graph, for teacher g_t and last_only g_last, at scratch generation g_gen) and
   * replayed at every position. g_calls: steps run so far (the second one captures); g_off:
   * graphs refused by the driver for this state. */
  int32_t *dstep, *host_step;
  void *graph;
  const void *g_t;
  int g_calls, g_last, g_off;
  unsigned g_gen;
} xd_teacher_cuda_state;

void xd_teacher_cuda_plan_of(const xd_teacher_cuda *t, int B, int max_tn, int cap, int logit_rows, int with_kv,
                             xd_teacher_cuda_plan *p);
/* One line: device, weights / KV cache / activations / total MiB, free device memory. */
void xd_teacher_cuda_plan_print(const xd_teacher_cuda *t, const xd_teacher_cuda_plan *p, FILE *f);
int xd_teacher_cuda_state_alloc(xd_teacher_cuda_state *s, const xd_teacher_cuda *t, int B, int max_tn, int cap,
                                int logit_rows, int with_kv, xd_err *e);
void xd_teacher_cuda_state_free(xd_teacher_cuda_state *s);
/* Forget the cached tokens (len = 0). */
void xd_teacher_cuda_reset(xd_teacher_cuda_state *s);

/* Full forward (no cache): ids [B,T] (host) -> s->logits [B*T, V] on the device, and into
 * host_logits when not NULL. Needs B*T <= s->B * s->max_tn, T <= s->cap, B*T <= s->logit_rows. */
int xd_teacher_cuda_forward(const xd_teacher_cuda *t, xd_teacher_cuda_state *s, const int32_t *ids, int B, int T,
                            float *host_logits, xd_err *e);
/* The same without host_logits and without waiting: the work is queued on t's stream and the
 * host returns at once (ids are staged before it returns). s->logits is ready for work queued
 * after it on that stream, or for another stream after an event recorded behind it. */
int xd_teacher_cuda_forward_async(const xd_teacher_cuda *t, xd_teacher_cuda_state *s, const int32_t *ids, int B, int T,
                                  xd_err *e);
/* The same up to the final norm: its bf16 output [B*T, D] in s->x, no logits (needs no logit
 * rows). xd_teacher_cuda_head_rows then makes the logits of rows [r0, r0+n) in s->logits [n, V]
 * (n <= s->logit_rows), queued on t's stream: the same GEMM per row block. */
int xd_teacher_cuda_forward_hidden_async(const xd_teacher_cuda *t, xd_teacher_cuda_state *s, const int32_t *ids, int B,
                                         int T, xd_err *e);
int xd_teacher_cuda_head_rows(const xd_teacher_cuda *t, xd_teacher_cuda_state *s, int r0, int n, xd_err *e);
/* Append Tn tokens per sequence (ids [s->B, Tn], host) to the KV cache: prefill (Tn = prompt
 * length) or one decode step (Tn = 1). Logits [B*Tn, V], or [B, V] for the last position when
 * last_only, in s->logits (device) and host_logits when not NULL. A one-token step (without
 * dynamic NTK) reads its position on the device and, from the second such step of a state on,
 * replays a CUDA graph of its ~12 launches per layer (XD_CUDA_GRAPHS=0: launched every time;
 * the same kernels, the same bits). */
int xd_teacher_cuda_step(const xd_teacher_cuda *t, xd_teacher_cuda_state *s, const int32_t *ids, int Tn,
                         int last_only, float *host_logits, xd_err *e);
/* Rows at different lengths (batched generation of prompts of any lengths; not for dynamic NTK
 * RoPE): xd_teacher_cuda_prefill_row starts row b with its own prompt ids[n] (the one-sequence
 * prefill on that row's cache; n <= cap and n <= B * max_tn; its last logits in s->logits row b,
 * and host_logits [V] when not NULL); xd_teacher_cuda_step_rows appends one token to every row
 * (ids [B], host), each at its own position, logits [B, V] in s->logits (host_logits when not
 * NULL); every row's length + 1 must stay <= cap. From the first of these on, xd_teacher_cuda_step
 * refuses the state until xd_teacher_cuda_reset. */
int xd_teacher_cuda_prefill_row(const xd_teacher_cuda *t, xd_teacher_cuda_state *s, int b, const int32_t *ids,
                                int n, float *host_logits, xd_err *e);
int xd_teacher_cuda_step_rows(const xd_teacher_cuda *t, xd_teacher_cuda_state *s, const int32_t *ids,
                              float *host_logits, xd_err *e);
/* Greedy decoding, the contract of xd_teacher_generate; s must have B rows, max_tn >= T,
 * cap >= T + max_new, logit_rows >= B, a KV cache (its content is replaced). */
int xd_teacher_cuda_generate(const xd_teacher_cuda *t, xd_teacher_cuda_state *s, const int32_t *ids, int T,
                             int max_new, int stop_at_eos, int32_t *out, int *n_out, xd_err *e);
#endif
#endif
