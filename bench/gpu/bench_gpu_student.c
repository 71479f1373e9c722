/* GPU benchmark of the student's inference at the Llama-3.2-1B shape (random weights):
 *   bench_gpu_student [quick | decode]
 * Shape: 16 layers, hidden 2048, 32 heads / 8 KV heads, head dim 64, MLP 8192, vocab 128256,
 * tied embeddings, llama3 RoPE; student W = 512, S = 4, d_phi = 64 (softmax features),
 * chunk 64. Batch 1 throughout.
 *   1. ceiling: device-to-device copy bandwidth (read + write, 2 GiB, median of 10);
 *   2. prefill tokens/s at 4K, 16K, 64K for the student (xd_student_cuda_step at position 0:
 *      chunkwise mLSTM + local attention, hand-off into the decode state, last logits) and for
 *      the teacher composed from the same ops as bench_gpu_teacher (causal flash attention,
 *      last position's logits only, like a prefill);
 *   3. decode per-token latency at 1K, 4K, 16K, 64K context (after a prefill of that length):
 *      mean over 200 steps of one sequence with one sync at the end, CUDA graph on; plain
 *      launches too at 1K and 64K; the state's device bytes;
 *   4. the bandwidth bound of decode: bytes read per token (all weights, a tied LM head once,
 *      + the mLSTM state read and written + the sink/ring K/V read) / copy bandwidth, and the
 *      achieved fraction bound / measured.
 *   5. per-kernel breakdown of one decode step at 4K (cudaEvents after every launch, captured with
 *      the step into a graph and replayed 20 times, all layers summed per kernel class) against
 *      each class's own bytes at the copy rate.
 *   "variants": issue #8's experiments: graph latency after a 1K prefill, graph breakdown and
 *      logits (vs the first in the list) of each variant in XD_VARIANTS (-1: legacy; bits:
 *      cuda_ops.h XD_SDEC_*, skip masks from bit 16: 1 << (16 + XD_SDEC_K_*)), XD_ROUNDS rounds
 *      (default 2).
 * Decode (3-5) runs twice: the legacy kernels (xd_student_cuda_state_use_legacy 1, issue #8's
 * "before") and the default kernels, in the same process on the same device.
 * "quick" runs 1K/4K only (for memcheck); "decode" skips the prefill comparison (2).
 * Medians of host-clock timings after warm-up. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/core.h"
#include "model/student/student_cuda.h"
#include "ops/cpu/rope.h"
#include "ops/cuda/cuda_ops.h"
#include "bench_shapes.h"
#include "bench_median.h"

static xd_err err;
#define CK(call) do { if ((call) != 0) { fprintf(stderr, "bench_gpu_student: error: %s\n", err.msg); exit(1); } } while (0)

static void *dalloc(size_t bytes) {
  void *p = NULL;
  CK(xd_cuda_malloc(&p, bytes, &err));
  return p;
}

/* ---- the teacher, as bench_gpu_teacher composes it (last logits only) ---- */
enum { L_ = 16, DM = 2048, NH = 32, NG = 8, HD = 64, FF = 8192, VOC = 128256 };
typedef struct { uint16_t *w_qkv, *w_o, *w_gu, *w_down, *ln1, *ln2; } tlayer;
typedef struct {
  xd_cuda_ctx *c;
  tlayer ly[L_];
  uint16_t *emb, *lnf, *x, *xn, *qkv, *att, *gu, *act, *logits;
  int32_t *ids, *pos;
  float *cos_t, *sin_t;
  int Tmax;
} teacher_t;

static void teacher_init(teacher_t *m, xd_cuda_ctx *c, int Tmax, const xd_rope_config *rc) {
  memset(m, 0, sizeof *m);
  m->c = c;
  m->Tmax = Tmax;
  const int qkv_w = (NH + 2 * NG) * HD;
  uint64_t seed = 500;
#define W_(ptr, rows, cols, scale) do { const size_t _n = (size_t)(rows) * (cols); ptr = dalloc(_n * 2); \
    CK(xd_cuda_fill_uniform_bf16(c, ptr, _n, seed++, (float)(scale), &err)); } while (0)
  for (int l = 0; l < L_; l++) {
    tlayer *w = &m->ly[l];
    W_(w->w_qkv, qkv_w, DM, sqrt(3.0 / DM));
    W_(w->w_o, DM, NH * HD, sqrt(3.0 / (NH * HD)));
    W_(w->w_gu, 2 * FF, DM, sqrt(3.0 / DM));
    W_(w->w_down, DM, FF, sqrt(3.0 / FF));
    W_(w->ln1, 1, DM, 1.0);
    W_(w->ln2, 1, DM, 1.0);
  }
  W_(m->emb, VOC, DM, 1.0);
  W_(m->lnf, 1, DM, 1.0);
#undef W_
  const size_t T = (size_t)Tmax;
  m->x = dalloc(T * DM * 2), m->xn = dalloc(T * DM * 2), m->qkv = dalloc(T * qkv_w * 2);
  m->att = dalloc(T * NH * HD * 2), m->gu = dalloc(T * 2 * FF * 2), m->act = dalloc(T * FF * 2);
  m->logits = dalloc((size_t)VOC * 2);
  int32_t *ids = xd_malloc(T * 4), *pos = xd_malloc(T * 4);
  xd_rng r;
  xd_rng_seed(&r, 7);
  for (size_t t = 0; t < T; t++) ids[t] = (int32_t)(xd_rng_u64(&r) % VOC), pos[t] = (int32_t)t;
  m->ids = dalloc(T * 4), m->pos = dalloc(T * 4);
  CK(xd_cuda_upload(c, m->ids, ids, T * 4, &err));
  CK(xd_cuda_upload(c, m->pos, pos, T * 4, &err));
  float inv[64], scl = 1.f;
  const int half = HD / 2;
  rope_inv_freq(rc, HD, 131072, (int)T, inv, &scl);
  float *ct = xd_malloc(T * half * 4), *st = xd_malloc(T * half * 4);
  rope_table(ct, st, inv, scl, (int)T, half);
  m->cos_t = dalloc(T * half * 4), m->sin_t = dalloc(T * half * 4);
  CK(xd_cuda_upload(c, m->cos_t, ct, T * half * 4, &err));
  CK(xd_cuda_upload(c, m->sin_t, st, T * half * 4, &err));
  CK(xd_cuda_sync(c, &err));
  free(ids), free(pos), free(ct), free(st);
}

static void teacher_free(teacher_t *m) {
  for (int l = 0; l < L_; l++) {
    tlayer *w = &m->ly[l];
    xd_cuda_free(w->w_qkv), xd_cuda_free(w->w_o), xd_cuda_free(w->w_gu), xd_cuda_free(w->w_down);
    xd_cuda_free(w->ln1), xd_cuda_free(w->ln2);
  }
  void *p[] = {m->emb, m->lnf, m->x, m->xn, m->qkv, m->att, m->gu, m->act, m->logits, m->ids, m->pos, m->cos_t, m->sin_t};
  for (size_t i = 0; i < sizeof p / sizeof *p; i++) xd_cuda_free(p[i]);
}

static void teacher_prefill(teacher_t *m, int T) {
  xd_cuda_ctx *c = m->c;
  const int qkv_w = (NH + 2 * NG) * HD;
  CK(xd_cuda_embedding_forward(c, m->x, m->ids, m->emb, T, DM, VOC, &err));
  for (int l = 0; l < L_; l++) {
    const tlayer *w = &m->ly[l];
    CK(xd_cuda_rmsnorm_forward(c, m->xn, m->x, w->ln1, T, DM, 1e-5f, &err));
    CK(xd_cuda_matmul(c, m->qkv, XD_CUDA_BF16, m->xn, w->w_qkv, NULL, T, DM, qkv_w, 0, &err));
    CK(xd_cuda_rope_forward(c, m->qkv, qkv_w, m->cos_t, m->sin_t, m->pos, T, NH, HD, &err));
    CK(xd_cuda_rope_forward(c, m->qkv + NH * HD, qkv_w, m->cos_t, m->sin_t, m->pos, T, NG, HD, &err));
    xd_cuda_attn_dims a = {1, T, NH, NG, HD, 0, 0, qkv_w, qkv_w, qkv_w, NH * HD};
    CK(xd_cuda_attention_forward(c, m->att, NULL, m->qkv, m->qkv + NH * HD, m->qkv + (NH + NG) * HD, &a, &err));
    CK(xd_cuda_matmul(c, m->x, XD_CUDA_BF16, m->att, w->w_o, NULL, T, NH * HD, DM, 1, &err));
    CK(xd_cuda_rmsnorm_forward(c, m->xn, m->x, w->ln2, T, DM, 1e-5f, &err));
    CK(xd_cuda_matmul(c, m->gu, XD_CUDA_BF16, m->xn, w->w_gu, NULL, T, DM, 2 * FF, 0, &err));
    CK(xd_cuda_swiglu_forward(c, m->act, m->gu, m->gu + FF, T, FF, 2 * FF, &err));
    CK(xd_cuda_matmul(c, m->x, XD_CUDA_BF16, m->act, w->w_down, NULL, T, FF, DM, 1, &err));
  }
  CK(xd_cuda_rmsnorm_forward(c, m->xn, m->x + (size_t)(T - 1) * DM, m->lnf, 1, DM, 1e-5f, &err));
  CK(xd_cuda_matmul(c, m->logits, XD_CUDA_BF16, m->xn, m->emb, NULL, 1, DM, VOC, 0, &err));
}

int main(int argc, char **argv) {
  const int quick = argc > 1 && strcmp(argv[1], "quick") == 0;
  const int dec_only = argc > 1 && strcmp(argv[1], "decode") == 0;
  xd_cuda_ctx *c = NULL;
  if (xd_cuda_ctx_create(&c, 0, &err)) {
    printf("skip: no usable CUDA device (%s)\n", err.msg);
    return 77;
  }
  char dev[256];
  int sms = 0;
  CK(xd_cuda_device_info(c, dev, sizeof dev, &sms, &err));
  printf("device: %s (%d SMs)\n", dev, sms);
  double bw;
  {
    const size_t bytes = (size_t)(quick ? 64 : 2048) << 20;
    void *a = dalloc(bytes), *b = dalloc(bytes);
    CK(xd_cuda_memset(c, a, 0x3c, bytes, &err));
    double t[10];
    for (int i = 0; i < 12; i++) {
      const double t0 = xd_now();
      CK(xd_cuda_copy(c, b, a, bytes, &err));
      CK(xd_cuda_sync(c, &err));
      if (i >= 2) t[i - 2] = xd_now() - t0;
    }
    bw = 2.0 * bytes / bench_median(t, 10);
    printf("ceiling: device copy %.0f GB/s (read + write, %zu MiB, median of 10)\n", bw / 1e9, bytes >> 20);
    xd_cuda_free(a), xd_cuda_free(b);
  }

  const xd_model_config cfg = bench_llama32_1b(); /* the enum above holds the same numbers */
  const xd_hybrid_config hy = bench_student_1b();
  const size_t mem0 = xd_cuda_mem_used();
  xd_student_cuda *m = NULL;
  CK(xd_student_cuda_random(&m, c, &cfg, &hy, 42, &err));
  const size_t wbytes = xd_student_cuda_weight_bytes(m);
  printf("student: 16 layers, hidden 2048, heads 32/8, head dim 64, MLP 8192, vocab 128256, tied; W %d, S %d, d_phi %d, chunk %d; "
         "weights %.3f GB on the device (matrices bf16, hybrid params fp32)\n", hy.window, hy.sinks, hy.d_phi, hy.chunk, wbytes / 1e9);
  xd_student_cuda_state *st = NULL;
  CK(xd_student_cuda_state_alloc(&st, m, &err));
  const int nctx_pre = quick || dec_only ? 1 : 3, nctx_dec = quick ? 2 : 4;
  const int ctx_pre[3] = {4096, 16384, 65536};
  const int ctx_dec_all[4] = {1024, 4096, 16384, 65536};
  const int Tmax = quick ? 4096 : 65536;
  int32_t *ids = xd_malloc((size_t)Tmax * 4);
  xd_rng r;
  xd_rng_seed(&r, 3);
  for (int t = 0; t < Tmax; t++) ids[t] = (int32_t)(xd_rng_u64(&r) % VOC);

  if (argc > 1 && strcmp(argv[1], "variants") == 0) {
    /* issue #8: graph latency at 1K, breakdown and logits of each split-step variant (and the
     * legacy kernels) in one process; list from XD_VARIANTS (default 0..7) */
    const double kvr = 16.0 * (double)(hy.window + hy.sinks) * NG * HD * 2 * 2;
    const double srw = 16.0 * ((double)NH * hy.d_phi * HD * 4 * 2 + (double)NH * hy.d_phi * 4 * 2);
    const double bnd = ((double)wbytes + DM * 2 + srw + kvr) / bw;
    printf("variants: bound %.1f us at %.0f GB/s\n", bnd * 1e6, bw / 1e9);
    const char *vl = getenv("XD_VARIANTS");
    int vs[32], nv = 0;
    const char *rs = getenv("XD_ROUNDS");
    const int rounds = rs && atoi(rs) > 0 ? atoi(rs) : 2;
    if (!vl || !*vl) vl = "-1 0 1 2 3";
    for (const char *q = vl; *q && nv < 32;) {
      char *end;
      const long v = strtol(q, &end, 10);
      if (end == q) break;
      vs[nv++] = (int)v, q = end;
    }
    float *ref = xd_malloc((size_t)VOC * 4), *lg = xd_malloc((size_t)VOC * 4);
    int have_ref = 0;
    for (int rr = 0; rr < rounds; rr++) /* XD_ROUNDS rounds (default two): drift / clock effects show as round-to-round spread */
    for (int vi = 0; vi < nv; vi++) {
      const int v = vs[vi];
      xd_student_cuda_state_use_legacy(st, v < 0);
      if (v >= 0) xd_student_cuda_state_set_variant(st, v);
      xd_student_cuda_state_use_graph(st, 1);
      CK(xd_student_cuda_state_reset(st, &err));
      CK(xd_student_cuda_step(m, st, ids, 1024, NULL, &err));
      CK(xd_student_cuda_step(m, st, ids + 1024, 8, lg, &err));
      double dl = 0;
      if (!have_ref) { memcpy(ref, lg, (size_t)VOC * 4); have_ref = 1; }
      else {
        double num = 0, den = 0;
        for (int k = 0; k < VOC; k++) { const double dd = (double)lg[k] - ref[k]; num += dd * dd, den += (double)ref[k] * ref[k]; }
        dl = sqrt(num / (den > 0 ? den : 1));
      }
      for (int k = 0; k < 10; k++) CK(xd_student_cuda_step(m, st, ids + k, 1, NULL, &err));
      CK(xd_cuda_sync(c, &err));
      double best = 1e30;
      for (int rep = 0; rep < 5; rep++) {
        const double t0 = xd_now();
        for (int k = 0; k < 200; k++) CK(xd_student_cuda_step(m, st, ids + (k % 64), 1, NULL, &err));
        CK(xd_cuda_sync(c, &err));
        const double dt = (xd_now() - t0) / 200;
        best = dt < best ? dt : best;
      }
      double pu[XD_SDEC_NK], pb[XD_SDEC_NK];
      const int pgr = xd_student_cuda_state_profile_graph(m, st, 10, pu, pb, &err) == 0; /* else plain launches */
      if (!pgr) CK(xd_student_cuda_state_profile(m, st, 10, pu, pb, &err));
      printf("VARIANT %d (skip mask %d) round %d: %7.1f us/token (graph, 1K+), fraction %.3f; logits vs first rel L2 %.2e | %s events:",
             v < 0 ? v : v & 0xffff, v < 0 ? 0 : v >> 16, rr,
             best * 1e6, bnd / best, dl, pgr ? "graph" : "plain-launch");
      for (int k = 0; k < XD_SDEC_NK; k++)
        if (pu[k] > 0) printf(" %s %.0f", xd_cuda_sdec_kname(k), pu[k]);
      printf("\n");
      fflush(stdout);
    }
    free(ref), free(lg);
    return 0;
  }
  if (dec_only) goto decode;
  /* ---- prefill: student then teacher, largest context first (buffers allocated once) ---- */
  double sp[3] = {0}, tp[3] = {0};
  for (int i = nctx_pre - 1; i >= 0; i--) {
    const int T = ctx_pre[i], reps = T >= 65536 ? 3 : 5;
    double t[8];
    for (int k = 0; k <= reps; k++) {
      CK(xd_student_cuda_state_reset(st, &err));
      const double t0 = xd_now();
      CK(xd_student_cuda_step(m, st, ids, T, NULL, &err));
      CK(xd_cuda_sync(c, &err));
      if (k) t[k - 1] = xd_now() - t0;
    }
    sp[i] = bench_median(t, reps);
  }
  const size_t mem_student = xd_cuda_mem_used();
  {
    teacher_t tm;
    teacher_init(&tm, c, ctx_pre[nctx_pre - 1], &cfg.rope[0]);
    for (int i = nctx_pre - 1; i >= 0; i--) {
      const int T = ctx_pre[i], reps = T >= 65536 ? 3 : 5;
      double t[8];
      for (int k = 0; k <= reps; k++) {
        const double t0 = xd_now();
        teacher_prefill(&tm, T);
        CK(xd_cuda_sync(c, &err));
        if (k) t[k - 1] = xd_now() - t0;
      }
      tp[i] = bench_median(t, reps);
    }
    teacher_free(&tm);
  }
  printf("\nprefill, batch 1, last position's logits (median):\n");
  printf("  %-8s %-24s %-24s %s\n", "context", "student", "teacher", "student/teacher");
  for (int i = 0; i < nctx_pre; i++)
    printf("  %-8d %8.2f ms %9.0f tok/s %8.2f ms %9.0f tok/s %.2fx\n", ctx_pre[i], sp[i] * 1e3, ctx_pre[i] / sp[i],
           tp[i] * 1e3, ctx_pre[i] / tp[i], tp[i] / sp[i]);
  printf("  device memory in use after the student prefills: %.2f GB (weights %.2f GB; activations sized for %d tokens)\n",
         (mem_student - mem0) / 1e9, wbytes / 1e9, ctx_pre[nctx_pre - 1]);

  /* ---- decode ---- */
decode:;
  const int steps = 200;
  const size_t sbytes = xd_student_cuda_state_bytes(st);
  printf("\ndecode, batch 1: state %.2f MiB on the device (mLSTM C,n,m fp32 + sink/ring K/V bf16, 16 layers) + %.2f MiB "
         "per-token scratch; a teacher KV cache at 64K would be %.0f MiB\n",
         sbytes / 1048576.0, xd_student_cuda_scratch_bytes(st) / 1048576.0, 16.0 * 65536 * NG * HD * 2 * 2 / 1048576.0);
  double lat_all[2][4] = {{0}}, lat_plain_all[2][4] = {{0}}, prof_us[2][XD_SDEC_NK], prof_b[2][XD_SDEC_NK];
  float *chk_logits[2] = {xd_malloc((size_t)VOC * 4), xd_malloc((size_t)VOC * 4)};
  for (int impl = 0; impl < 2; impl++) {
  double *lat = lat_all[impl], *lat_plain = lat_plain_all[impl];
  xd_student_cuda_state_use_legacy(st, impl == 0);
  for (int i = 0; i < nctx_dec; i++) {
    const int T = ctx_dec_all[i];
    for (int g = 1; g >= 0; g--) {
      if (!g && !(i == 0 || i == nctx_dec - 1)) continue;
      xd_student_cuda_state_use_graph(st, g);
      CK(xd_student_cuda_state_reset(st, &err));
      CK(xd_student_cuda_step(m, st, ids, T, NULL, &err));
      for (int k = 0; k < 10; k++) CK(xd_student_cuda_step(m, st, ids + k, 1, NULL, &err));
      CK(xd_cuda_sync(c, &err));
      double best = 1e30;
      for (int rep = 0; rep < 3; rep++) {
        const double t0 = xd_now();
        for (int k = 0; k < steps; k++) CK(xd_student_cuda_step(m, st, ids + (k % 64), 1, NULL, &err));
        CK(xd_cuda_sync(c, &err));
        const double dt = (xd_now() - t0) / steps;
        best = dt < best ? dt : best;
      }
      if (g) lat[i] = best; else lat_plain[i] = best;
    }
    CK(xd_student_cuda_state_bytes(st) == sbytes ? 0 : (snprintf(err.msg, sizeof err.msg, "state size changed"), -1));
  }
  /* correctness at this shape (the tests' tiny models never split K): logits after a 1K
   * prefill and 8 steps, compared between the two implementations below */
  CK(xd_student_cuda_state_reset(st, &err));
  CK(xd_student_cuda_step(m, st, ids, 1024, NULL, &err));
  CK(xd_student_cuda_step(m, st, ids + 1024, 8, chk_logits[impl], &err));
  /* breakdown at 4K */
  CK(xd_student_cuda_state_reset(st, &err));
  CK(xd_student_cuda_step(m, st, ids, 4096, NULL, &err));
  if (xd_student_cuda_state_profile_graph(m, st, 2, prof_us[impl], prof_b[impl], &err) ||
      xd_student_cuda_state_profile_graph(m, st, 20, prof_us[impl], prof_b[impl], &err)) {
    printf("  (graph-replay breakdown failed: %s; plain launches instead)\n", err.msg);
    CK(xd_student_cuda_state_profile(m, st, 20, prof_us[impl], prof_b[impl], &err));
  }
  }
  /* bytes per token: weights (tied LM head once, the embedding row extra), mLSTM state read +
   * written, sinks + full ring read (W + S rows of K and V per layer), appends */
  const double state_rw = 16.0 * ((double)NH * hy.d_phi * HD * 4 * 2 + (double)NH * hy.d_phi * 4 * 2);
  const double kv_read = 16.0 * (double)(hy.window + hy.sinks) * NG * HD * 2 * 2;
  const double bytes = (double)wbytes + DM * 2 + state_rw + kv_read;
  const double bound = bytes / bw;
  printf("  bytes per token: %.1f MB (weights %.1f MB, mLSTM state r+w %.1f MB, sink/ring K/V %.1f MB); bound at %.0f GB/s: %.1f us\n",
         bytes / 1e6, wbytes / 1e6, state_rw / 1e6, kv_read / 1e6, bw / 1e9, bound * 1e6);
  for (int impl = 0; impl < 2; impl++) {
    const double *lat = lat_all[impl], *lat_plain = lat_plain_all[impl];
    printf("  %s kernels:\n", impl ? "default" : "legacy");
    printf("  %-8s %-22s %-22s %s\n", "context", "latency (graph)", "plain launches", "bandwidth fraction (graph)");
    for (int i = 0; i < nctx_dec; i++) {
      char pl[64] = "-";
      if (lat_plain[i] > 0) snprintf(pl, sizeof pl, "%.1f us", lat_plain[i] * 1e6);
      printf("  %-8d %8.1f us %6.0f tok/s %-22s %.2f\n", ctx_dec_all[i], lat[i] * 1e6, 1 / lat[i], pl, bound / lat[i]);
    }
  }
  {
    double num = 0, den = 0;
    for (int v = 0; v < VOC; v++) {
      const double dd = (double)chk_logits[1][v] - chk_logits[0][v];
      num += dd * dd, den += (double)chk_logits[0][v] * chk_logits[0][v];
    }
    printf("  default vs legacy logits after a 1K prefill + 8 steps: rel L2 %.3e (fp32 summation order, fp32 gate math)\n",
           den > 0 ? sqrt(num / den) : sqrt(num));
    free(chk_logits[0]), free(chk_logits[1]);
  }
  printf("\nper-kernel breakdown of one step at 4K (cudaEvent after each launch, captured with the step as one CUDA graph; mean of 20 replays, all layers; the events disable PDL overlap):\n");
  printf("  %-30s %10s %10s %10s | %10s %10s %10s\n", "kernel class", "MB", "legacy us", "frac", "default us", "frac", "bound us");
  double tot[2] = {0, 0};
  for (int k = 0; k < XD_SDEC_NK; k++) {
    const double b = prof_b[1][k], bu = b / bw * 1e6;
    if (prof_us[0][k] == 0 && prof_us[1][k] == 0) continue;
    tot[0] += prof_us[0][k], tot[1] += prof_us[1][k];
    printf("  %-30s %10.2f %10.1f %10.2f | %10.1f %10.2f %10.1f\n", xd_cuda_sdec_kname(k), b / 1e6, prof_us[0][k],
           prof_us[0][k] > 0 ? bu / prof_us[0][k] : 0, prof_us[1][k], prof_us[1][k] > 0 ? bu / prof_us[1][k] : 0, bu);
  }
  printf("  %-30s %10s %10.1f %10s | %10.1f\n", "sum (events; incl. launch gaps)", "", tot[0], "", tot[1]);
  const double *lat = lat_all[1];
  const int last = nctx_dec - 1;
  if (!dec_only)
    printf("\nRESULT student_prefill_over_teacher_at_%d=%.2f (target >= 2)\n", ctx_pre[nctx_pre - 1],
           tp[nctx_pre - 1] / sp[nctx_pre - 1]);
  printf("RESULT decode_bandwidth_fraction_legacy=%.2f (at %d)\n", bound / lat_all[0][nctx_dec - 1], ctx_dec_all[nctx_dec - 1]);
  printf("RESULT decode_latency_%d_over_1024=%.3f (target <= 1.10)\n", ctx_dec_all[last], lat[last] / lat[0]);
  printf("RESULT decode_bandwidth_fraction=%.2f (at %d; target >= 0.70)\n", bound / lat[last], ctx_dec_all[last]);
  printf("RESULT decode_state_bytes=%zu\n", sbytes);
  xd_student_cuda_state_free(st);
  xd_student_cuda_free(m);
  free(ids);
  xd_cuda_ctx_free(c);
  return 0;
}
