/* GPU test + timing of the optimiser on the device (train/params_cuda.h, src/ops/cuda/optim.cu)
 * against the host functions (train/optim.c, params.c). Not in CTest (CI has no GPU).
 *
 *  - AdamW: a random table with 3 groups (lr_mult / wd_mult), frozen tensors in between, odd
 *    sizes (1, 3, 17, 65537, a few million), random m, v, fresh random gradients every step
 *    (with zeros and subnormals), 5 steps at different lr: GPU data, m, v vs xd_adamw_step,
 *    expected bit-identical (max abs / rel difference reported);
 *  - the bf16 mirror vs xd_f32_to_bf16 of the CPU data, every tensor (frozen ones too);
 *  - grad norm vs xd_params_grad_norm (bit-identical expected), scale vs xd_params_scale_grad
 *    (bit-identical), zero, a NaN / an Inf gradient -> NaN / Inf norm;
 *  - download / upload round trip;
 *  - xd_trainer_run with the device hooks on a least-squares problem (grads computed on the
 *    CPU from the device weights and added to the device gradients; 2 micro-batches, clipping)
 *    vs the same run on the host path (losses within 1e-5, weights reported), and a resume
 *    through a checkpoint (6 steps with a checkpoint at 3, then a fresh process state resumed
 *    from it to 6: the same final weights, m, v as the uninterrupted device run, bit for bit);
 *  - timing (skipped with "quick"): the Llama-3.2-1B table (1.24e9 parameters, norms in a
 *    no-decay group): AdamW step ms and GB/s (30 bytes per parameter) vs a device copy, grad
 *    norm ms.
 * Exit 0 = pass, 1 = a failure, 77 = no CUDA device. */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "core/core.h"
#include "ops/cuda/cuda_ops.h"
#include "train/optim.h"
#include "train/params.h"
#include "train/params_cuda.h"
#include "train/trainer.h"
#include "test.h"
#include "gpu_test_util.h"

#define GPUX(call) do { if ((call) != 0) { fprintf(stderr, "fatal %s:%d: %s\n", __FILE__, __LINE__, err.msg); exit(1); } } while (0)

static int quick;

/* The XD_PARAMS_ALIGN padding after each trainable tensor is zero in real arenas (the device
 * AdamW updates it as part of its tensor's segment, the host skips it: zero stays zero). */
static void zero_padding(const xd_params *p, float *a) {
  for (int i = 0; i < p->n; i++) {
    const xd_param_info *t = &p->t[i];
    if (!t->trainable) continue;
    const size_t end = t->offset + t->numel, pad = (end + XD_PARAMS_ALIGN - 1) / XD_PARAMS_ALIGN * XD_PARAMS_ALIGN;
    for (size_t k = end; k < pad && k < p->n_train; k++) a[k] = 0.0f;
  }
}

/* A random table: groups 0 (1, 1), 1 "no_decay" (1, 0), 2 "slow" (0.5, 2); frozen tensors in
 * between. Weights N(0, 0.5), m N(0, 1e-2), v |N(0, 1e-4)|. */
static void build_table(xd_params *p, uint64_t seed) {
  xd_params_init(p);
  const int nd = xd_params_add_group(p, "no_decay", 1.0f, 0.0f);
  const int sl = xd_params_add_group(p, "slow", 0.5f, 2.0f);
  const size_t big = quick ? 300007 : 3000017;
  const struct { size_t n; int group, train; } t[] = {
      {1, 0, 1}, {3, nd, 1}, {65537, 0, 1}, {5, 0, 0}, {17, sl, 1}, {big, 0, 1}, {70001, nd, 0},
      {4096, nd, 1}, {1, sl, 1}, {8191, sl, 1}, {3, nd, 1}, {big / 3, sl, 1}, {100, 0, 1}, {33, 0, 0}, {7, nd, 1}};
  xd_err e;
  for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
    char name[32];
    snprintf(name, sizeof name, "t%zu", i);
    const int64_t shape[1] = {(int64_t)t[i].n};
    XD_CHECK(xd_params_add(p, name, 1, shape, t[i].group, t[i].train, &e) >= 0);
  }
  xd_params_alloc(p);
  xd_rng r;
  xd_rng_seed(&r, seed);
  for (size_t i = 0; i < p->total; i++) p->data[i] = (float)(0.5 * xd_rng_normal(&r));
  for (size_t i = 0; i < p->n_train; i++) p->m[i] = (float)(1e-2 * xd_rng_normal(&r));
  for (size_t i = 0; i < p->n_train; i++) p->v[i] = (float)fabs(1e-4 * xd_rng_normal(&r));
  zero_padding(p, p->data), zero_padding(p, p->m), zero_padding(p, p->v);
}

static void rand_grads(const xd_params *p, float *g, size_t n, xd_rng *r) {
  for (size_t i = 0; i < n; i++) {
    const double u = xd_rng_uniform(r);
    g[i] = u < 0.01 ? 0.0f : u < 0.02 ? (float)(1e-40 * xd_rng_normal(r)) : (float)(0.1 * xd_rng_normal(r));
  }
  zero_padding(p, g);
}

/* number of elements whose bits differ; max abs and rel difference */
static size_t cmp_f32(const char *what, const float *x, const float *ref, size_t n) {
  size_t bad = 0;
  double mabs = 0, mrel = 0;
  for (size_t i = 0; i < n; i++) {
    if (memcmp(&x[i], &ref[i], 4) == 0) continue;
    bad++;
    const double d = fabs((double)x[i] - ref[i]);
    if (d > mabs) mabs = d;
    const double rl = d / fmax(fabs(ref[i]), 1e-30);
    if (rl > mrel) mrel = rl;
  }
  fprintf(stderr, "    %-28s %zu floats, %zu differ in any bit, max abs %.3e, max rel %.3e\n", what, n, bad, mabs, mrel);
  return bad;
}

static size_t bf16_mismatch(const uint16_t *b, const float *ref, size_t n) {
  size_t bad = 0;
  for (size_t i = 0; i < n; i++) bad += b[i] != xd_f32_to_bf16(ref[i]);
  return bad;
}

static const xd_adamw_cfg ACFG = {0.9, 0.95, 1e-8, 0.1};

static void test_adamw(void) {
  xd_params p;
  build_table(&p, 11);
  xd_params_cuda *d;
  GPUX(xd_params_cuda_create(&d, ctx, &p, &err));
  fprintf(stderr, "    table: %d tensors, %zu floats, %zu trainable, %.1f MiB on the device\n", p.n, p.total, p.n_train,
          (double)xd_params_cuda_bytes(d) / (1 << 20));
  xd_rng r;
  xd_rng_seed(&r, 5);
  for (uint64_t t = 1; t <= 5; t++) {
    const double lr = 1e-3 * (double)(6 - t) + 2e-4;
    rand_grads(&p, p.grad, p.n_train, &r);
    GPUX(xd_cuda_upload(ctx, xd_params_cuda_grad_all(d), p.grad, p.n_train * 4, &err));
    xd_adamw_step(&p, &ACFG, lr, t);
    GPUX(xd_params_cuda_adamw_step(d, &ACFG, lr, t, &err));
  }
  float *w = down(xd_params_cuda_data_all(d), p.total), *m = down(xd_params_cuda_m_all(d), p.n_train),
        *v = down(xd_params_cuda_v_all(d), p.n_train);
  CHECK(cmp_f32("AdamW x5 weights", w, p.data, p.total) == 0);
  CHECK(cmp_f32("AdamW x5 m", m, p.m, p.n_train) == 0);
  CHECK(cmp_f32("AdamW x5 v", v, p.v, p.n_train) == 0);
  uint16_t *b = xd_malloc(p.total * 2 + 1);
  GPUX(xd_cuda_download(ctx, b, xd_params_cuda_bf16_all(d), p.total * 2, &err));
  const size_t bb = bf16_mismatch(b, p.data, p.total);
  fprintf(stderr, "    bf16 mirror vs xd_f32_to_bf16(CPU data): %zu of %zu differ\n", bb, p.total);
  CHECK(bb == 0);
  /* per-tensor pointers */
  for (int i = 0; i < p.n; i++) {
    CHECK(xd_params_cuda_data(d, i) == xd_params_cuda_data_all(d) + p.t[i].offset);
    CHECK(xd_params_cuda_bf16(d, i) == xd_params_cuda_bf16_all(d) + p.t[i].offset);
    CHECK(p.t[i].trainable ? xd_params_cuda_grad(d, i) == xd_params_cuda_grad_all(d) + p.t[i].offset
                           : xd_params_cuda_grad(d, i) == NULL);
  }
  free(w), free(m), free(v), free(b);
  xd_params_cuda_free(d);
  xd_params_free(&p);
}

static void test_norm_scale_zero(void) {
  xd_params p;
  build_table(&p, 12);
  xd_params_cuda *d;
  GPUX(xd_params_cuda_create(&d, ctx, &p, &err));
  double n0 = -1;
  GPUX(xd_params_cuda_grad_norm(d, &n0, &err));
  CHECK(n0 == 0); /* created with zero gradients */
  xd_rng r;
  xd_rng_seed(&r, 6);
  rand_grads(&p, p.grad, p.n_train, &r);
  float *dg = xd_params_cuda_grad_all(d);
  GPUX(xd_cuda_upload(ctx, dg, p.grad, p.n_train * 4, &err));
  double ng, nc = xd_params_grad_norm(&p);
  GPUX(xd_params_cuda_grad_norm(d, &ng, &err));
  fprintf(stderr, "    grad norm: GPU %.17g CPU %.17g (rel %.2e, %d blocks)\n", ng, nc, fabs(ng - nc) / nc, (int)p.nblocks);
  CHECK(memcmp(&ng, &nc, sizeof ng) == 0);
  xd_params_scale_grad(&p, 0.37f);
  GPUX(xd_params_cuda_scale_grad(d, 0.37f, &err));
  float *g = down(dg, p.n_train);
  CHECK(cmp_f32("scale_grad 0.37", g, p.grad, p.n_train) == 0);
  free(g);
  nc = xd_params_grad_norm(&p);
  GPUX(xd_params_cuda_grad_norm(d, &ng, &err));
  CHECKF(memcmp(&ng, &nc, sizeof ng) == 0, "scaled norm %.17g vs %.17g", ng, nc);
  /* NaN in a middle block, then Inf */
  const size_t at = p.n_train / 2 + 3;
  float bad = NAN;
  GPUX(xd_cuda_upload(ctx, dg + at, &bad, 4, &err));
  GPUX(xd_params_cuda_grad_norm(d, &ng, &err));
  CHECKF(isnan(ng), "norm with a NaN gradient: %g", ng);
  bad = INFINITY;
  GPUX(xd_cuda_upload(ctx, dg + at, &bad, 4, &err));
  GPUX(xd_params_cuda_grad_norm(d, &ng, &err));
  CHECKF(isinf(ng), "norm with an Inf gradient: %g", ng);
  GPUX(xd_params_cuda_zero_grad(d, &err));
  g = down(dg, p.n_train);
  size_t nz = 0;
  for (size_t i = 0; i < p.n_train; i++) nz += g[i] != 0 || signbit(g[i]);
  CHECK(nz == 0);
  GPUX(xd_params_cuda_grad_norm(d, &ng, &err));
  CHECK(ng == 0);
  free(g);
  xd_params_cuda_free(d);
  xd_params_free(&p);
}

/* Deferred scales (the trainer's 1/N and clip factors folded into grad_norm and AdamW): the
 * norm and the AdamW result must be those of the host's two xd_params_scale_grad passes, bit for
 * bit; one and three factors too (the third applies the first two to the buffer). */
static void test_deferred_scale(void) {
  const float fac[3] = {0.5f, 0.37f, 1.7f};
  for (int nf = 1; nf <= 3; nf++) {
    xd_params p;
    build_table(&p, 20 + (uint64_t)nf);
    xd_params_cuda *d;
    GPUX(xd_params_cuda_create(&d, ctx, &p, &err));
    xd_rng r;
    xd_rng_seed(&r, 30 + (uint64_t)nf);
    for (uint64_t t = 1; t <= 2; t++) {
      rand_grads(&p, p.grad, p.n_train, &r);
      GPUX(xd_cuda_upload(ctx, xd_params_cuda_grad_all(d), p.grad, p.n_train * 4, &err));
      for (int i = 0; i < nf; i++) {
        xd_params_scale_grad(&p, fac[i]);
        GPUX(xd_params_cuda_scale_grad_deferred(d, fac[i], &err));
      }
      double ng, nc = xd_params_grad_norm(&p);
      GPUX(xd_params_cuda_grad_norm(d, &ng, &err));
      CHECKF(memcmp(&ng, &nc, sizeof ng) == 0, "%d deferred factors: norm %.17g vs %.17g", nf, ng, nc);
      xd_adamw_step(&p, &ACFG, 1e-3, t);
      GPUX(xd_params_cuda_adamw_step(d, &ACFG, 1e-3, t, &err));
    }
    float *w = down(xd_params_cuda_data_all(d), p.total), *m = down(xd_params_cuda_m_all(d), p.n_train),
          *v = down(xd_params_cuda_v_all(d), p.n_train);
    char what[64];
    snprintf(what, sizeof what, "%d deferred: weights", nf);
    CHECK(cmp_f32(what, w, p.data, p.total) == 0);
    snprintf(what, sizeof what, "%d deferred: m", nf);
    CHECK(cmp_f32(what, m, p.m, p.n_train) == 0);
    snprintf(what, sizeof what, "%d deferred: v", nf);
    CHECK(cmp_f32(what, v, p.v, p.n_train) == 0);
    /* zero_grad drops a pending factor: the next norm is of the new gradients as they are */
    GPUX(xd_params_cuda_scale_grad_deferred(d, 0.25f, &err));
    GPUX(xd_params_cuda_zero_grad(d, &err));
    rand_grads(&p, p.grad, p.n_train, &r);
    GPUX(xd_cuda_upload(ctx, xd_params_cuda_grad_all(d), p.grad, p.n_train * 4, &err));
    double ng, nc = xd_params_grad_norm(&p);
    GPUX(xd_params_cuda_grad_norm(d, &ng, &err));
    CHECKF(memcmp(&ng, &nc, sizeof ng) == 0, "after zero_grad: norm %.17g vs %.17g", ng, nc);
    free(w), free(m), free(v);
    xd_params_cuda_free(d);
    xd_params_free(&p);
  }
}

/* First-written gradients: zero_grad skips them; a reader before the writer sees zeros; after
 * the writer (here an upload) + grad_written the norm is that of the written values. */
static void test_first_write(void) {
  xd_params p;
  build_table(&p, 40);
  xd_params_cuda *d;
  GPUX(xd_params_cuda_create(&d, ctx, &p, &err));
  int fw[3] = {2, 5, 11}; /* trainable tensors of build_table */
  for (int k = 0; k < 3; k++) GPUX(xd_params_cuda_set_first_write(d, fw[k], &err));
  xd_rng r;
  xd_rng_seed(&r, 41);
  rand_grads(&p, p.grad, p.n_train, &r);
  float *dg = xd_params_cuda_grad_all(d);
  GPUX(xd_cuda_upload(ctx, dg, p.grad, p.n_train * 4, &err)); /* stale values everywhere */
  GPUX(xd_params_cuda_zero_grad(d, &err));
  CHECK(xd_params_cuda_grad_fresh(d) == 1);
  float *g = down(dg, p.n_train);
  size_t other = 0, kept = 0;
  for (int i = 0; i < p.n; i++) {
    const xd_param_info *t = &p.t[i];
    if (!t->trainable) continue;
    const int f = i == fw[0] || i == fw[1] || i == fw[2];
    for (size_t j = 0; j < t->numel; j++) {
      if (f) kept += memcmp(&g[t->offset + j], &p.grad[t->offset + j], 4) == 0;
      else other += g[t->offset + j] != 0;
    }
  }
  size_t nf = 0;
  for (int k = 0; k < 3; k++) nf += p.t[fw[k]].numel;
  fprintf(stderr, "    zero_grad with 3 first-written tensors: %zu other gradients nonzero, %zu of %zu first-written left as they were\n",
          other, kept, nf);
  CHECK(other == 0 && kept == nf);
  free(g);
  /* a reader while fresh: the first-written ones read as zero */
  double ng;
  GPUX(xd_params_cuda_grad_norm(d, &ng, &err));
  CHECKF(ng == 0, "norm after zero_grad with stale first-written gradients: %g", ng);
  CHECK(xd_params_cuda_grad_fresh(d) == 0);
  /* the writer: new values into the first-written tensors, then the others added */
  GPUX(xd_params_cuda_zero_grad(d, &err));
  rand_grads(&p, p.grad, p.n_train, &r);
  GPUX(xd_cuda_upload(ctx, dg, p.grad, p.n_train * 4, &err));
  xd_params_cuda_grad_written(d);
  double nc = xd_params_grad_norm(&p);
  GPUX(xd_params_cuda_grad_norm(d, &ng, &err));
  CHECKF(memcmp(&ng, &nc, sizeof ng) == 0, "norm after the writer %.17g vs %.17g", ng, nc);
  xd_params_cuda_free(d);
  xd_params_free(&p);
}

static void test_roundtrip(void) {
  xd_params p, q;
  build_table(&p, 13);
  build_table(&q, 14); /* same table, other values */
  xd_params_cuda *d;
  GPUX(xd_params_cuda_create(&d, ctx, &q, &err));
  GPUX(xd_params_cuda_upload(d, &p, &err));
  GPUX(xd_params_cuda_download(d, &q, &err));
  CHECK(memcmp(p.data, q.data, p.total * 4) == 0);
  CHECK(memcmp(p.m, q.m, p.n_train * 4) == 0 && memcmp(p.v, q.v, p.n_train * 4) == 0);
  uint16_t *b = xd_malloc(p.total * 2 + 1);
  GPUX(xd_cuda_download(ctx, b, xd_params_cuda_bf16_all(d), p.total * 2, &err));
  CHECK(bf16_mismatch(b, p.data, p.total) == 0);
  /* NaN payloads as xd_f32_to_bf16 keeps them */
  float sp[4];
  uint32_t bits[4] = {0x7fc00001u, 0xffa00000u, 0x7f800001u, 0x00000001u};
  memcpy(sp, bits, sizeof sp);
  GPUX(xd_cuda_upload(ctx, xd_params_cuda_data_all(d), sp, sizeof sp, &err));
  GPUX(xd_cuda_bf16_mirror(ctx, xd_params_cuda_bf16_all(d), xd_params_cuda_data_all(d), 4, &err));
  GPUX(xd_cuda_download(ctx, b, xd_params_cuda_bf16_all(d), 8, &err));
  CHECK(bf16_mismatch(b, sp, 4) == 0);
  free(b);
  xd_params_cuda_free(d);
  xd_params_free(&p);
  xd_params_free(&q);
}

/* ---- trainer: least squares y = W x + b, grads on the CPU ---------------------------------- */
#define LS_IN 16
#define LS_OUT 8
#define LS_ROWS 5 /* rows per micro-batch */
typedef struct {
  xd_params p;
  xd_params_cuda *d; /* NULL: host path */
  int iw, ib;
  double loss[16];
  float truth_w[LS_OUT * LS_IN], truth_b[LS_OUT];
} ls_run;

static int ls_step(void *vctx, xd_params *p, uint64_t step, int micro, int n_micro, xd_rng *rng, xd_step_result *out,
                   xd_err *e) {
  ls_run *r = vctx;
  float W[LS_OUT * LS_IN], B[LS_OUT], gW[LS_OUT * LS_IN] = {0}, gB[LS_OUT] = {0};
  if (r->d) { /* the device's weights */
    if (xd_cuda_download(ctx, W, xd_params_cuda_data(r->d, r->iw), sizeof W, e) ||
        xd_cuda_download(ctx, B, xd_params_cuda_data(r->d, r->ib), sizeof B, e))
      return -1;
  } else {
    memcpy(W, xd_params_data(p, r->iw), sizeof W);
    memcpy(B, xd_params_data(p, r->ib), sizeof B);
  }
  double loss = 0;
  for (int n = 0; n < LS_ROWS; n++) {
    float x[LS_IN], y[LS_OUT];
    for (int i = 0; i < LS_IN; i++) x[i] = (float)xd_rng_normal(rng);
    for (int o = 0; o < LS_OUT; o++) {
      float t = r->truth_b[o];
      for (int i = 0; i < LS_IN; i++) t += r->truth_w[o * LS_IN + i] * x[i];
      y[o] = t + 0.01f * (float)xd_rng_normal(rng);
    }
    for (int o = 0; o < LS_OUT; o++) {
      float z = B[o];
      for (int i = 0; i < LS_IN; i++) z += W[o * LS_IN + i] * x[i];
      const float res = z - y[o];
      loss += 0.5 * (double)res * res / LS_ROWS;
      const float gz = res / LS_ROWS;
      gB[o] += gz;
      for (int i = 0; i < LS_IN; i++) gW[o * LS_IN + i] += gz * x[i];
    }
  }
  if (r->d) { /* ADD into the device gradients */
    float *dW = xd_params_cuda_grad(r->d, r->iw), *dB = xd_params_cuda_grad(r->d, r->ib), hW[LS_OUT * LS_IN], hB[LS_OUT];
    if (xd_cuda_download(ctx, hW, dW, sizeof hW, e) || xd_cuda_download(ctx, hB, dB, sizeof hB, e)) return -1;
    for (int i = 0; i < LS_OUT * LS_IN; i++) hW[i] += gW[i];
    for (int o = 0; o < LS_OUT; o++) hB[o] += gB[o];
    if (xd_cuda_upload(ctx, dW, hW, sizeof hW, e) || xd_cuda_upload(ctx, dB, hB, sizeof hB, e)) return -1;
  } else {
    float *pW = xd_params_grad(p, r->iw), *pB = xd_params_grad(p, r->ib);
    for (int i = 0; i < LS_OUT * LS_IN; i++) pW[i] += gW[i];
    for (int o = 0; o < LS_OUT; o++) pB[o] += gB[o];
  }
  if (micro == 0 && step < 16) r->loss[step] = 0;
  if (step < 16) r->loss[step] += loss / n_micro;
  out->loss = loss;
  out->tokens = LS_ROWS;
  return 0;
}

static void ls_init(ls_run *r, int device, xd_trainer_hooks *h, xd_trainer_device *dev) {
  memset(r, 0, sizeof *r);
  xd_params_init(&r->p);
  const int nd = xd_params_add_group(&r->p, "no_decay", 1.0f, 0.0f);
  xd_err e;
  XD_CHECK(xd_params_add(&r->p, "frozen", 1, (int64_t[]){5}, 0, 0, &e) >= 0);
  r->iw = xd_params_add(&r->p, "W", 2, (int64_t[]){LS_OUT, LS_IN}, 0, 1, &e);
  r->ib = xd_params_add(&r->p, "b", 1, (int64_t[]){LS_OUT}, nd, 1, &e);
  xd_params_alloc(&r->p);
  xd_rng g;
  xd_rng_seed(&g, 77);
  for (size_t i = 0; i < r->p.total; i++) r->p.data[i] = (float)(0.3 * xd_rng_normal(&g));
  for (int i = 0; i < LS_OUT * LS_IN; i++) r->truth_w[i] = (float)xd_rng_normal(&g);
  for (int o = 0; o < LS_OUT; o++) r->truth_b[o] = (float)xd_rng_normal(&g);
  memset(h, 0, sizeof *h);
  h->step = ls_step;
  h->ctx = r;
  if (device) {
    GPUX(xd_params_cuda_create(&r->d, ctx, &r->p, &err));
    xd_params_cuda_trainer_device(r->d, dev);
    h->device = dev;
  }
}
static void ls_free(ls_run *r) {
  xd_params_cuda_free(r->d);
  xd_params_free(&r->p);
}

static void ls_cfg(xd_train_config *c, const char *dir, int steps) {
  xd_train_config_defaults(c, XD_STAGE_DISTILL);
  snprintf(c->out_dir, sizeof c->out_dir, "%s", dir);
  c->steps = steps;
  c->batch = 2;
  c->micro_batch = 1; /* 2 micro-batches: the 1/N scale */
  c->warmup_steps = 2;
  c->lr = 0.05;
  strcpy(c->schedule, "constant");
  c->weight_decay = 0.1;
  c->grad_clip = 1.0; /* the random start has larger gradients: clipping runs */
  c->ckpt_every = 3;
  c->log_every = 1000;
}

static void test_trainer(void) {
  char base[600], dA[700], dB[700], dC[700];
  snprintf(base, sizeof base, "%s", test_tmpdir("gpu_optim"));
  snprintf(dA, sizeof dA, "%s/host", base);
  snprintf(dB, sizeof dB, "%s/dev", base);
  snprintf(dC, sizeof dC, "%s/dev-resume", base);
  xd_train_config c;
  xd_train_result res;
  xd_trainer_hooks hA, hB, hC;
  xd_trainer_device vB, vC;
  ls_run A, B, C;
  /* host path */
  ls_init(&A, 0, &hA, NULL);
  ls_cfg(&c, dA, 6);
  CHECKF(xd_trainer_run(&c, &A.p, &hA, NULL, &res, &err) == 0, "%s", err.msg);
  /* device path, uninterrupted */
  ls_init(&B, 1, &hB, &vB);
  ls_cfg(&c, dB, 6);
  CHECKF(xd_trainer_run(&c, &B.p, &hB, NULL, &res, &err) == 0, "%s", err.msg);
  CHECK(res.steps_done == 6);
  double worst = 0;
  for (int s = 0; s < 6; s++) {
    const double rl = fabs(B.loss[s] - A.loss[s]) / fmax(fabs(A.loss[s]), 1e-12);
    fprintf(stderr, "    step %d loss host %.9g device %.9g (rel %.2e)\n", s + 1, A.loss[s], B.loss[s], rl);
    if (rl > worst) worst = rl;
  }
  CHECKF(worst <= 1e-5, "losses differ by %.3e", worst);
  /* the host p of the device run holds the final state (synced for the last checkpoint) */
  float *wB = down(xd_params_cuda_data_all(B.d), B.p.total);
  CHECK(memcmp(wB, B.p.data, B.p.total * 4) == 0);
  const size_t dw = cmp_f32("final weights device vs host", B.p.data, A.p.data, A.p.total);
  const size_t dm = cmp_f32("final m device vs host", B.p.m, A.p.m, A.p.n_train);
  fprintf(stderr, "    device run vs host run: %s\n", dw == 0 && dm == 0 && worst == 0 ? "bit-identical" : "differ");
  CHECK(dw == 0 && dm == 0 && worst == 0); /* 2 micro-batches and clipping: the deferred 1/N and clip factors */
  /* device path: 3 steps (checkpoint), then a fresh state resumed from it to 6 */
  ls_init(&C, 1, &hC, &vC);
  ls_cfg(&c, dC, 3);
  CHECKF(xd_trainer_run(&c, &C.p, &hC, NULL, &res, &err) == 0, "%s", err.msg);
  ls_free(&C);
  ls_init(&C, 1, &hC, &vC); /* initial weights again, as a new process would have */
  ls_cfg(&c, dC, 6);
  c.resume = 1;
  CHECKF(xd_trainer_run(&c, &C.p, &hC, NULL, &res, &err) == 0, "%s", err.msg);
  CHECK(res.resumed && res.steps_done == 6);
  float *wC = down(xd_params_cuda_data_all(C.d), C.p.total), *mC = down(xd_params_cuda_m_all(C.d), C.p.n_train),
        *vCd = down(xd_params_cuda_v_all(C.d), C.p.n_train);
  CHECK(cmp_f32("resumed weights (device)", wC, wB, B.p.total) == 0);
  CHECK(cmp_f32("resumed m (device)", mC, B.p.m, B.p.n_train) == 0);
  CHECK(cmp_f32("resumed v (device)", vCd, B.p.v, B.p.n_train) == 0);
  CHECK(memcmp(C.p.data, B.p.data, B.p.total * 4) == 0);
  for (int s = 3; s < 6; s++) CHECKF(C.loss[s] == B.loss[s], "step %d loss %.9g vs %.9g", s + 1, C.loss[s], B.loss[s]);
  free(wB), free(wC), free(mC), free(vCd);
  ls_free(&A), ls_free(&B), ls_free(&C);
}

/* ---- timing at the Llama-3.2-1B table ------------------------------------------------------ */
static void test_bench(void) {
  xd_params p;
  xd_params_init(&p);
  const int nd = xd_params_add_group(&p, "no_decay", 1.0f, 0.0f);
  xd_err e;
  char name[64];
  const int64_t D = 2048, F = 8192, KV = 512, V = 128256;
  XD_CHECK(xd_params_add(&p, "embed", 2, (int64_t[]){V, D}, 0, 1, &e) >= 0);
  for (int l = 0; l < 16; l++) {
    const struct { const char *n; int64_t a, b; int g; } t[] = {
        {"attn_norm", D, 0, nd}, {"q", D, D, 0}, {"k", KV, D, 0}, {"v", KV, D, 0}, {"o", D, D, 0},
        {"mlp_norm", D, 0, nd}, {"gate", F, D, 0}, {"up", F, D, 0}, {"down", D, F, 0}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
      snprintf(name, sizeof name, "layers.%d.%s", l, t[i].n);
      const int64_t sh[2] = {t[i].a, t[i].b};
      XD_CHECK(xd_params_add(&p, name, t[i].b ? 2 : 1, sh, t[i].g, 1, &e) >= 0);
    }
  }
  XD_CHECK(xd_params_add(&p, "norm", 1, (int64_t[]){D}, nd, 1, &e) >= 0);
  double t0 = xd_now();
  xd_params_alloc(&p);
  xd_params_cuda *d;
  GPUX(xd_params_cuda_create(&d, ctx, &p, &err));
  const double n = (double)p.n_train;
  fprintf(stderr, "    %d tensors, %.4g parameters, %.2f GiB on the device (host alloc + create %.1f s)\n", p.n, n,
          (double)xd_params_cuda_bytes(d) / (1u << 30), xd_now() - t0);
  float *g = xd_params_cuda_grad_all(d);
  GPUX(xd_cuda_memset(ctx, g, 0x3c, p.n_train * 4, &err)); /* 0.0115 everywhere */
  const int it = 10;
  GPUX(xd_params_cuda_adamw_step(d, &ACFG, 1e-4, 1, &err));
  GPUX(xd_cuda_sync(ctx, &err));
  t0 = xd_now();
  for (int i = 0; i < it; i++) GPUX(xd_params_cuda_adamw_step(d, &ACFG, 1e-4, (uint64_t)i + 2, &err));
  GPUX(xd_cuda_sync(ctx, &err));
  const double t_adam = (xd_now() - t0) / it;
  /* baseline: a device copy of one fp32 arena (reads + writes 8 bytes per parameter) */
  GPUX(xd_cuda_copy(ctx, xd_params_cuda_m_all(d), g, p.n_train * 4, &err));
  GPUX(xd_cuda_sync(ctx, &err));
  t0 = xd_now();
  for (int i = 0; i < it; i++) GPUX(xd_cuda_copy(ctx, xd_params_cuda_m_all(d), g, p.n_train * 4, &err));
  GPUX(xd_cuda_sync(ctx, &err));
  const double t_copy = (xd_now() - t0) / it;
  double nrm = 0;
  GPUX(xd_params_cuda_grad_norm(d, &nrm, &err));
  t0 = xd_now();
  for (int i = 0; i < it; i++) GPUX(xd_params_cuda_grad_norm(d, &nrm, &err));
  const double t_norm = (xd_now() - t0) / it;
  float gv;
  memset(&gv, 0x3c, 4);
  const double expect = sqrt(n) * gv;
  t0 = xd_now();
  for (int i = 0; i < it; i++) GPUX(xd_params_cuda_scale_grad(d, 1.0f, &err));
  GPUX(xd_cuda_sync(ctx, &err));
  const double t_scale = (xd_now() - t0) / it;
  t0 = xd_now();
  for (int i = 0; i < it; i++) GPUX(xd_params_cuda_zero_grad(d, &err));
  GPUX(xd_cuda_sync(ctx, &err));
  const double t_zero = (xd_now() - t0) / it;
  CHECKF(fabs(nrm - expect) <= 1e-9 * expect, "norm %.17g, expected %.17g", nrm, expect);
  fprintf(stderr, "    AdamW step       %8.3f ms  %7.1f GB/s (30 B/param: r w,g,m,v  w w,m,v,bf16)\n", t_adam * 1e3,
          30 * n / t_adam / 1e9);
  fprintf(stderr, "    device copy      %8.3f ms  %7.1f GB/s (read + write of one fp32 arena)\n", t_copy * 1e3,
          8 * n / t_copy / 1e9);
  fprintf(stderr, "    grad norm        %8.3f ms  %7.1f GB/s (incl. block-sum download + sync)\n", t_norm * 1e3,
          4 * n / t_norm / 1e9);
  fprintf(stderr, "    scale grad       %8.3f ms  %7.1f GB/s\n", t_scale * 1e3, 8 * n / t_scale / 1e9);
  fprintf(stderr, "    zero grad        %8.3f ms  %7.1f GB/s\n", t_zero * 1e3, 4 * n / t_zero / 1e9);
  printf("RESULT optim n=%.4g adamw_ms=%.3f adamw_GBs=%.1f copy_GBs=%.1f adamw_vs_copy=%.2f norm_ms=%.3f scale_ms=%.3f zero_ms=%.3f\n",
         n, t_adam * 1e3, 30 * n / t_adam / 1e9, 8 * n / t_copy / 1e9, (30 * n / t_adam) / (8 * n / t_copy), t_norm * 1e3,
         t_scale * 1e3, t_zero * 1e3);
  xd_params_cuda_free(d);
  xd_params_free(&p);
}

int main(int argc, char **argv) {
  quick = gpu_test_begin(argc, argv);
  RUN(test_adamw);
  RUN(test_norm_scale_zero);
  RUN(test_roundtrip);
  RUN(test_deferred_scale);
  RUN(test_first_write);
  RUN(test_trainer);
  if (!quick) RUN(test_bench);
  return gpu_test_end();
}
