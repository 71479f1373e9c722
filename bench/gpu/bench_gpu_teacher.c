/* GPU benchmark: teacher forward at the Llama-3.2-1B shape through the CUDA backend, with the
 * card's measured ceilings (device copy bandwidth, cuBLASLt bf16 GEMM rate) and per-op times.
 *
 *   bench_gpu_teacher [T]      (default T = 4096, batch 1)
 *
 * Shape: 16 layers, hidden 2048, 32 heads, 8 KV heads (head dim 64), MLP 8192, vocab 128256,
 * tied embeddings, random bf16 weights (uniform, variance 1/fan-in), llama3 RoPE. One forward =
 * embedding, per layer rmsnorm -> fused q|k|v GEMM -> RoPE -> flash attention -> o GEMM with
 * the residual add in its epilogue -> rmsnorm -> fused gate|up GEMM -> SwiGLU -> down GEMM
 * (+residual), final rmsnorm, logits for every position (bf16 [T, vocab], as HF's forward).
 * Also times the student's per-layer extras at the same shape: sliding-window+sinks attention
 * (W 512, S 4) and the mLSTM chunkwise forward (fp32, P = D = 64, chunk 64).
 * Times are medians of host-clock readings around synchronised runs (each >= 1 ms). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/core.h"
#include "ops/cpu/rope.h"
#include "ops/cuda/cuda_ops.h"
#include "bench_median.h"

#define CK(call) do { if ((call) != 0) { fprintf(stderr, "bench_gpu_teacher: error: %s\n", err.msg); exit(1); } } while (0)

typedef struct {
  int L, Dm, H, G, hd, F, V, T;
} shape_t;

typedef struct {
  uint16_t *w_qkv, *w_o, *w_gu, *w_down, *ln1, *ln2;
} layer_t;


static void *dalloc(size_t bytes, xd_err *e) {
  void *p = NULL;
  if (xd_cuda_malloc(&p, bytes, e)) {
    fprintf(stderr, "bench_gpu_teacher: error: %s\n", e->msg);
    exit(1);
  }
  return p;
}

typedef struct {
  xd_cuda_ctx *c;
  shape_t s;
  layer_t *ly;
  uint16_t *emb, *lnf;
  uint16_t *x, *xn, *qkv, *att, *gu, *act, *logits;
  int32_t *ids, *pos;
  float *cos_t, *sin_t;
} model_t;

/* What to run: the whole forward, or one kind of op (for the per-op breakdown). */
enum { RUN_ALL = 0, RUN_GEMM = 1, RUN_ATTN = 2, RUN_OTHER = 3 };

static int forward(model_t *m, int what, xd_err *e) {
  const shape_t *s = &m->s;
  xd_cuda_ctx *c = m->c;
  const int T = s->T, Dm = s->Dm, qkv_w = (s->H + 2 * s->G) * s->hd;
  const int all = what == RUN_ALL, gemm = all || what == RUN_GEMM, attn = all || what == RUN_ATTN,
            other = all || what == RUN_OTHER;
  if (other && xd_cuda_embedding_forward(c, m->x, m->ids, m->emb, T, Dm, s->V, e)) return -1;
  for (int l = 0; l < s->L; l++) {
    const layer_t *w = &m->ly[l];
    if (other && xd_cuda_rmsnorm_forward(c, m->xn, m->x, w->ln1, T, Dm, 1e-5f, e)) return -1;
    if (gemm && xd_cuda_matmul(c, m->qkv, XD_CUDA_BF16, m->xn, w->w_qkv, NULL, T, Dm, qkv_w, 0, e)) return -1;
    if (other && xd_cuda_rope_forward(c, m->qkv, qkv_w, m->cos_t, m->sin_t, m->pos, T, s->H, s->hd, e)) return -1;
    if (other && xd_cuda_rope_forward(c, m->qkv + s->H * s->hd, qkv_w, m->cos_t, m->sin_t, m->pos, T, s->G, s->hd, e))
      return -1;
    xd_cuda_attn_dims a = {1, T, s->H, s->G, s->hd, 0, 0, qkv_w, qkv_w, qkv_w, s->H * s->hd};
    if (attn && xd_cuda_attention_forward(c, m->att, NULL, m->qkv, m->qkv + s->H * s->hd,
                                          m->qkv + (s->H + s->G) * s->hd, &a, e))
      return -1;
    if (gemm && xd_cuda_matmul(c, m->x, XD_CUDA_BF16, m->att, w->w_o, NULL, T, s->H * s->hd, Dm, 1, e)) return -1;
    if (other && xd_cuda_rmsnorm_forward(c, m->xn, m->x, w->ln2, T, Dm, 1e-5f, e)) return -1;
    if (gemm && xd_cuda_matmul(c, m->gu, XD_CUDA_BF16, m->xn, w->w_gu, NULL, T, Dm, 2 * s->F, 0, e)) return -1;
    if (other && xd_cuda_swiglu_forward(c, m->act, m->gu, m->gu + s->F, T, s->F, 2 * s->F, e)) return -1;
    if (gemm && xd_cuda_matmul(c, m->x, XD_CUDA_BF16, m->act, w->w_down, NULL, T, s->F, Dm, 1, e)) return -1;
  }
  if (other && xd_cuda_rmsnorm_forward(c, m->xn, m->x, m->lnf, T, Dm, 1e-5f, e)) return -1;
  if (gemm && xd_cuda_matmul(c, m->logits, XD_CUDA_BF16, m->xn, m->emb, NULL, T, Dm, s->V, 0, e)) return -1;
  return 0;
}

/* Median seconds of fn over reps synchronised runs after warm runs. */
static double time_forward(model_t *m, int what, int warm, int reps, xd_err *e) {
  double t[32];
  for (int i = 0; i < warm; i++) {
    if (forward(m, what, e) || xd_cuda_sync(m->c, e)) return -1;
  }
  for (int i = 0; i < reps; i++) {
    const double t0 = xd_now();
    if (forward(m, what, e) || xd_cuda_sync(m->c, e)) return -1;
    t[i] = xd_now() - t0;
  }
  return bench_median(t, reps);
}

int main(int argc, char **argv) {
  xd_err err = {{0}};
  shape_t s = {16, 2048, 32, 8, 64, 8192, 128256, 4096};
  if (argc > 1) s.T = atoi(argv[1]);
  if (s.T < 64 || s.T > 65536) {
    fprintf(stderr, "bench_gpu_teacher: error: T must be in [64, 65536]\n");
    return 1;
  }
  model_t m = {0};
  m.s = s;
  CK(xd_cuda_ctx_create(&m.c, 0, &err));
  char dev[256];
  int sms = 0;
  CK(xd_cuda_device_info(m.c, dev, sizeof dev, &sms, &err));
  printf("device: %s (%d SMs)\n", dev, sms);

  /* ---- ceilings ---- */
  {
    const size_t bytes = (size_t)2 << 30;
    void *a = dalloc(bytes, &err), *b = dalloc(bytes, &err);
    CK(xd_cuda_memset(m.c, a, 0x3c, bytes, &err));
    double t[10];
    for (int i = 0; i < 12; i++) {
      const double t0 = xd_now();
      CK(xd_cuda_copy(m.c, b, a, bytes, &err));
      CK(xd_cuda_sync(m.c, &err));
      if (i >= 2) t[i - 2] = xd_now() - t0;
    }
    const double tc = bench_median(t, 10);
    printf("ceiling: device copy %.0f GB/s (read + write, 2 GiB, median of 10)\n", 2.0 * bytes / tc / 1e9);
    xd_cuda_free(a), xd_cuda_free(b);
    const int n = 8192;
    uint16_t *x = dalloc((size_t)n * n * 2, &err), *w = dalloc((size_t)n * n * 2, &err), *o = dalloc((size_t)n * n * 2, &err);
    CK(xd_cuda_fill_uniform_bf16(m.c, x, (size_t)n * n, 1, 1.0f, &err));
    CK(xd_cuda_fill_uniform_bf16(m.c, w, (size_t)n * n, 2, 1.0f, &err));
    for (int i = 0; i < 13; i++) {
      const double t0 = xd_now();
      CK(xd_cuda_matmul(m.c, o, XD_CUDA_BF16, x, w, NULL, n, n, n, 0, &err));
      CK(xd_cuda_sync(m.c, &err));
      if (i >= 3) t[i - 3] = xd_now() - t0;
    }
    const double tg = bench_median(t, 10);
    printf("ceiling: cuBLASLt bf16 GEMM 8192^3 %.0f TFLOP/s (random data, median of 10)\n", 2.0 * n * n * (double)n / tg / 1e12);
    xd_cuda_free(x), xd_cuda_free(w), xd_cuda_free(o);
  }

  /* ---- model ---- */
  const int T = s.T, Dm = s.Dm, qkv_w = (s.H + 2 * s.G) * s.hd;
  m.ly = xd_calloc(s.L, sizeof *m.ly);
  uint64_t seed = 100;
  size_t n_params = 0;
#define WEIGHT(ptr, rows, cols, scale)                                                                 \
  do {                                                                                                 \
    const size_t _n = (size_t)(rows) * (cols);                                                         \
    ptr = dalloc(_n * 2, &err);                                                                        \
    CK(xd_cuda_fill_uniform_bf16(m.c, ptr, _n, seed++, (float)(scale), &err));                         \
    n_params += _n;                                                                                    \
  } while (0)
  for (int l = 0; l < s.L; l++) {
    layer_t *w = &m.ly[l];
    WEIGHT(w->w_qkv, qkv_w, Dm, sqrt(3.0 / Dm));
    WEIGHT(w->w_o, Dm, s.H * s.hd, sqrt(3.0 / (s.H * s.hd)));
    WEIGHT(w->w_gu, 2 * s.F, Dm, sqrt(3.0 / Dm));
    WEIGHT(w->w_down, Dm, s.F, sqrt(3.0 / s.F));
    WEIGHT(w->ln1, 1, Dm, 1.0);
    WEIGHT(w->ln2, 1, Dm, 1.0);
  }
  WEIGHT(m.emb, s.V, Dm, 1.0);
  WEIGHT(m.lnf, 1, Dm, 1.0);
  m.x = dalloc((size_t)T * Dm * 2, &err);
  m.xn = dalloc((size_t)T * Dm * 2, &err);
  m.qkv = dalloc((size_t)T * qkv_w * 2, &err);
  m.att = dalloc((size_t)T * s.H * s.hd * 2, &err);
  m.gu = dalloc((size_t)T * 2 * s.F * 2, &err);
  m.act = dalloc((size_t)T * s.F * 2, &err);
  m.logits = dalloc((size_t)T * s.V * 2, &err);
  int32_t *ids = xd_malloc((size_t)T * 4), *pos = xd_malloc((size_t)T * 4);
  xd_rng r;
  xd_rng_seed(&r, 7);
  for (int t = 0; t < T; t++) ids[t] = (int32_t)(xd_rng_u64(&r) % s.V), pos[t] = t;
  m.ids = dalloc((size_t)T * 4, &err);
  m.pos = dalloc((size_t)T * 4, &err);
  CK(xd_cuda_upload(m.c, m.ids, ids, (size_t)T * 4, &err));
  CK(xd_cuda_upload(m.c, m.pos, pos, (size_t)T * 4, &err));
  xd_rope_config rc = {0};
  rc.kind = XD_ROPE_LLAMA3, rc.theta = 500000.0, rc.factor = 32.0, rc.low_freq_factor = 1.0;
  rc.high_freq_factor = 4.0, rc.original_max_pos = 8192;
  float inv[64], scl = 1.f;
  const int half = s.hd / 2;
  rope_inv_freq(&rc, s.hd, 131072, T, inv, &scl);
  float *ct = xd_malloc((size_t)T * half * 4), *st = xd_malloc((size_t)T * half * 4);
  rope_table(ct, st, inv, scl, T, half);
  m.cos_t = dalloc((size_t)T * half * 4, &err);
  m.sin_t = dalloc((size_t)T * half * 4, &err);
  CK(xd_cuda_upload(m.c, m.cos_t, ct, (size_t)T * half * 4, &err));
  CK(xd_cuda_upload(m.c, m.sin_t, st, (size_t)T * half * 4, &err));
  CK(xd_cuda_sync(m.c, &err));
  printf("model: %d layers, hidden %d, heads %d/%d, MLP %d, vocab %d, %.3f B params (bf16), T = %d\n", s.L, Dm, s.H,
         s.G, s.F, s.V, n_params / 1e9, T);

  /* ---- forward ---- */
  const double t_all = time_forward(&m, RUN_ALL, 2, 7, &err);
  if (t_all < 0) CK(-1);
  /* sanity: the logits of the last position are finite */
  uint16_t *lg = xd_malloc((size_t)s.V * 2);
  CK(xd_cuda_download(m.c, lg, m.logits + (size_t)(T - 1) * s.V, (size_t)s.V * 2, &err));
  int finite = 1;
  double sum = 0;
  for (int i = 0; i < s.V; i++) {
    const float f = xd_bf16_to_f32(lg[i]);
    finite &= isfinite(f);
    sum += fabs(f);
  }
  printf("logits[T-1]: %s, mean |logit| %.4g\n", finite ? "finite" : "NOT FINITE", sum / s.V);
  const double t_gemm = time_forward(&m, RUN_GEMM, 1, 5, &err);
  const double t_attn = time_forward(&m, RUN_ATTN, 1, 5, &err);
  const double t_other = time_forward(&m, RUN_OTHER, 1, 5, &err);
  if (t_gemm < 0 || t_attn < 0 || t_other < 0) CK(-1);
  const double gemm_flops = 2.0 * T * ((double)s.L * ((double)Dm * qkv_w + (double)s.H * s.hd * Dm + 3.0 * Dm * s.F) + (double)Dm * s.V);
  /* causal: T(T+1)/2 visible pairs, two products of 2*hd flops each, per head and layer */
  const double attn_flops = 4.0 * s.hd * (T * (T + 1.0) / 2) * s.H * s.L;
  printf("teacher forward T=%d: %.2f ms = %.0f tokens/s (%.0f TFLOP/s overall)\n", T, t_all * 1e3, T / t_all,
         (gemm_flops + attn_flops) / t_all / 1e12);
  printf("  GEMMs (7 per layer + LM head): %.2f ms, %.0f TFLOP/s\n", t_gemm * 1e3, gemm_flops / t_gemm / 1e12);
  printf("  causal attention (16 layers):  %.2f ms, %.0f TFLOP/s\n", t_attn * 1e3, attn_flops / t_attn / 1e12);
  printf("  norms+rope+swiglu+embedding:   %.2f ms\n", t_other * 1e3);

  /* ---- student extras, one layer at the same shape ---- */
  {
    xd_cuda_attn_dims a = {1, T, s.H, s.G, s.hd, 512, 4, qkv_w, qkv_w, qkv_w, s.H * s.hd};
    float *lse = dalloc((size_t)T * s.H * 4, &err);
    double t[10];
    for (int i = 0; i < 12; i++) {
      const double t0 = xd_now();
      CK(xd_cuda_attention_forward(m.c, m.att, lse, m.qkv, m.qkv + s.H * s.hd, m.qkv + (s.H + s.G) * s.hd, &a, &err));
      CK(xd_cuda_sync(m.c, &err));
      if (i >= 2) t[i - 2] = xd_now() - t0;
    }
    printf("student SWA W=512 S=4, one layer: %.3f ms\n", bench_median(t, 10) * 1e3);
    xd_cuda_free(lse);
    mlstm_cfg cfg = mlstm_cfg_make(1, T, s.H, s.G, s.hd, s.hd);
    const size_t nq = (size_t)T * s.H * s.hd, nk = (size_t)T * s.G * s.hd;
    float *q = dalloc(nq * 4, &err), *k = dalloc(nk * 4, &err), *v = dalloc(nk * 4, &err), *h = dalloc(nq * 4, &err);
    float *ig = dalloc((size_t)T * s.H * 4, &err), *fg = dalloc((size_t)T * s.H * 4, &err);
    /* inputs: bf16 -> fp32 of random fills (values only matter for finiteness here) */
    uint16_t *tmp = dalloc(nq * 2, &err);
    CK(xd_cuda_fill_uniform_bf16(m.c, tmp, nq, 900, 0.03f, &err));
    CK(xd_cuda_bf16_to_f32(m.c, q, tmp, nq, &err));
    CK(xd_cuda_bf16_to_f32(m.c, h, tmp, nq, &err));
    CK(xd_cuda_fill_uniform_bf16(m.c, tmp, nk, 901, 0.03f, &err));
    CK(xd_cuda_bf16_to_f32(m.c, k, tmp, nk, &err));
    CK(xd_cuda_fill_uniform_bf16(m.c, tmp, nk, 902, 1.0f, &err));
    CK(xd_cuda_bf16_to_f32(m.c, v, tmp, nk, &err));
    CK(xd_cuda_fill_uniform_bf16(m.c, tmp, (size_t)T * s.H, 903, 1.0f, &err));
    CK(xd_cuda_bf16_to_f32(m.c, ig, tmp, (size_t)T * s.H, &err));
    CK(xd_cuda_fill_uniform_bf16(m.c, tmp, (size_t)T * s.H, 904, 3.0f, &err));
    CK(xd_cuda_bf16_to_f32(m.c, fg, tmp, (size_t)T * s.H, &err));
    for (int i = 0; i < 7; i++) {
      const double t0 = xd_now();
      CK(xd_cuda_mlstm_chunkwise_forward(m.c, &cfg, q, k, v, ig, fg, NULL, NULL, h, &err));
      CK(xd_cuda_sync(m.c, &err));
      if (i >= 2) t[i - 2] = xd_now() - t0;
    }
    printf("student mLSTM chunkwise fwd (fp32, H=32 G=8 P=D=64 L=64), one layer: %.3f ms\n", bench_median(t, 5) * 1e3);
    xd_cuda_free(q), xd_cuda_free(k), xd_cuda_free(v), xd_cuda_free(h), xd_cuda_free(ig), xd_cuda_free(fg);
    xd_cuda_free(tmp);
  }
  printf("RESULT teacher_fwd_tokens_per_s=%.0f T=%d\n", T / t_all, T);

  for (int l = 0; l < s.L; l++) {
    layer_t *w = &m.ly[l];
    xd_cuda_free(w->w_qkv), xd_cuda_free(w->w_o), xd_cuda_free(w->w_gu), xd_cuda_free(w->w_down);
    xd_cuda_free(w->ln1), xd_cuda_free(w->ln2);
  }
  free(m.ly);
  xd_cuda_free(m.emb), xd_cuda_free(m.lnf), xd_cuda_free(m.x), xd_cuda_free(m.xn), xd_cuda_free(m.qkv);
  xd_cuda_free(m.att), xd_cuda_free(m.gu), xd_cuda_free(m.act), xd_cuda_free(m.logits);
  xd_cuda_free(m.ids), xd_cuda_free(m.pos), xd_cuda_free(m.cos_t), xd_cuda_free(m.sin_t);
  free(ids), free(pos), free(ct), free(st), free(lg);
  xd_cuda_ctx_free(m.c);
  return 0;
}
