/* Training infrastructure: parameter arenas, AdamW against a double reference and a hand
 * computation, schedules at key points, clipping, deterministic grad norm, gradient
 * accumulation (N micro-batches == one batch N times larger), the toy model's backward by
 * finite differences, checkpoint round trip / corruption / rotation / fallback, in-process
 * SIGINT + resume bit-exactness, NaN/Inf skipping and divergence, and the configuration
 * system (defaults, YAML + JSON files, flag precedence, unknown keys, saved JSON). */
#include <omp.h>
#include <stdarg.h>
#include <time.h>
#include <signal.h>
#include <zlib.h>
#include "test.h"
#include "train/checkpoint.h"
#include "train/config_train.h"
#include "train/optim.h"
#include "train/schedule.h"
#include "train/toy.h"

static char *read_all(const char *path, size_t *n) {
  char *buf = NULL;
  xd_err e;
  if (xd_read_file(path, 1 << 28, &buf, n, &e) != 0) return NULL;
  return buf;
}

static void write_text(const char *path, const char *text) {
  FILE *fp = fopen(path, "wb");
  fputs(text, fp);
  fclose(fp);
}

static void fill_normal(float *x, size_t n, xd_rng *r, double scale) {
  for (size_t i = 0; i < n; i++) x[i] = (float)(scale * xd_rng_normal(r));
}

/* ---- parameter table ------------------------------------------------------------------ */
static void test_params_layout(void) {
  xd_params p;
  xd_params_init(&p);
  xd_err e = {{0}};
  int nd = xd_params_add_group(&p, "no_decay", 1.0f, 0.0f);
  CHECK(nd == 1);
  int a = xd_params_add(&p, "frozen.emb", 2, (int64_t[]){5, 3}, 0, 0, &e);
  int b = xd_params_add(&p, "l0.P_q", 2, (int64_t[]){4, 4}, 0, 1, &e);
  int c = xd_params_add(&p, "l0.b_f", 1, (int64_t[]){4}, nd, 1, &e);
  CHECK(a == 0 && b == 1 && c == 2);
  CHECK(xd_params_add(&p, "l0.P_q", 1, (int64_t[]){2}, 0, 1, &e) == -1 && strstr(e.msg, "'l0.P_q' added twice"));
  CHECK(xd_params_add(&p, "x", 1, (int64_t[]){2}, 7, 1, &e) == -1 && strstr(e.msg, "unknown group 7"));
  CHECK(xd_params_add(&p, "y", 1, (int64_t[]){0}, 0, 1, &e) == -1 && strstr(e.msg, "bad dimension"));
  xd_params_alloc(&p);
  /* trainable first; every tensor at a multiple of XD_PARAMS_ALIGN (8) floats, zero padding */
  CHECK(p.n_train == 24 && p.total == 24 + 16);
  CHECK(p.t[b].offset == 0 && p.t[c].offset == 16 && p.t[a].offset == 24);
  CHECK(xd_params_grad(&p, a) == NULL && xd_params_grad(&p, c) == p.grad + 16);
  for (int i = 20; i < 24; i++) CHECK(p.data[i] == 0 && p.grad[i] == 0 && p.m[i] == 0 && p.v[i] == 0);
  CHECK(xd_params_find(&p, "l0.b_f") == c && xd_params_find(&p, "nope") == -1);
  CHECK(xd_params_add(&p, "late", 1, (int64_t[]){1}, 0, 1, &e) == -1);
  CHECK(xd_params_data_finite(&p));
  xd_params_data(&p, a)[3] = NAN;
  CHECK(!xd_params_data_finite(&p));
  xd_params_free(&p);
}

/* Grad norm: equals a double reference, is NaN/Inf when a gradient is, and is bit-identical
 * for 1, 2 and 3 threads (several reduction blocks). */
static void test_grad_norm(void) {
  xd_params p;
  xd_params_init(&p);
  xd_err e;
  xd_params_add(&p, "a", 2, (int64_t[]){600, 700}, 0, 1, &e);
  xd_params_add(&p, "f", 1, (int64_t[]){1000}, 0, 0, &e);
  xd_params_add(&p, "b", 1, (int64_t[]){12345}, 0, 1, &e);
  xd_params_alloc(&p);
  xd_rng r;
  xd_rng_seed(&r, (uint64_t)time(NULL));
  fill_normal(p.grad, p.n_train, &r, 1.0);
  CHECK(p.nblocks > 4); /* enough blocks for the threaded path */
  double ref = 0;
  for (size_t i = 0; i < p.n_train; i++) ref += (double)p.grad[i] * p.grad[i];
  ref = sqrt(ref);
  double n[3];
  for (int th = 1; th <= 3; th++) {
    omp_set_num_threads(th);
    n[th - 1] = xd_params_grad_norm(&p);
  }
  omp_set_num_threads(2);
  CHECK_REL(n[0], ref, 1e-12, 1e-300);
  CHECK(memcmp(&n[0], &n[1], sizeof(double)) == 0 && memcmp(&n[0], &n[2], sizeof(double)) == 0);
  p.grad[p.n_train - 7] = INFINITY;
  CHECK(isinf(xd_params_grad_norm(&p)));
  p.grad[5] = NAN;
  CHECK(isnan(xd_params_grad_norm(&p)));
  xd_params_free(&p);
}

static void test_clip(void) {
  xd_params p;
  xd_params_init(&p);
  xd_err e;
  xd_params_add(&p, "a", 1, (int64_t[]){1000}, 0, 1, &e);
  xd_params_alloc(&p);
  xd_rng r;
  xd_rng_seed(&r, 77);
  fill_normal(p.grad, 1000, &r, 1.0);
  double n0 = xd_params_grad_norm(&p);
  CHECK(n0 > 10);
  double f = xd_clip_grad(&p, n0, 1.0);
  CHECK_REL(f, 1.0 / n0, 1e-5, 1e-30);
  CHECK_REL(xd_params_grad_norm(&p), 1.0, 1e-5, 1e-30);
  float before[1000];
  memcpy(before, p.grad, sizeof before);
  double n1 = xd_params_grad_norm(&p);
  CHECK(xd_clip_grad(&p, n1, 2.0) == 1.0 && memcmp(before, p.grad, sizeof before) == 0); /* below max: untouched */
  CHECK(xd_clip_grad(&p, 5.0, 0.0) == 1.0 && memcmp(before, p.grad, sizeof before) == 0); /* 0: off */
  xd_params_free(&p);
}

/* AdamW: (1) the first update against the hand-computed closed form
 * w1 = w0 (1 - lr wd) - lr g / (|g| + eps); (2) five steps with two groups and a frozen
 * tensor against a double-precision reference implementation. */
static void test_adamw(void) {
  xd_params p;
  xd_params_init(&p);
  xd_err e;
  int nd = xd_params_add_group(&p, "no_decay_half_lr", 0.5f, 0.0f);
  int a = xd_params_add(&p, "w", 2, (int64_t[]){7, 9}, 0, 1, &e);
  int fz = xd_params_add(&p, "frozen", 1, (int64_t[]){11}, 0, 0, &e);
  int b = xd_params_add(&p, "bias", 1, (int64_t[]){13}, nd, 1, &e);
  xd_params_alloc(&p);
  xd_rng r;
  xd_rng_seed(&r, (uint64_t)time(NULL) ^ 0xadull);
  fill_normal(p.data, p.total, &r, 1.0);
  const size_t n = p.n_train;
  double *w = malloc(n * sizeof *w), *m = calloc(n, sizeof *m), *v = calloc(n, sizeof *v);
  for (size_t i = 0; i < n; i++) w[i] = p.data[i];
  float frozen0[11];
  memcpy(frozen0, xd_params_data(&p, fz), sizeof frozen0);
  const xd_adamw_cfg c = {0.9, 0.95, 1e-8, 0.1};
  double lrs[5] = {1e-2, 8e-3, 5e-3, 2e-3, 1e-3};
  for (int t = 1; t <= 5; t++) {
    fill_normal(p.grad, n, &r, 0.3);
    float w0 = xd_params_data(&p, a)[4], g0 = xd_params_grad(&p, a)[4];
    xd_adamw_step(&p, &c, lrs[t - 1], (uint64_t)t);
    if (t == 1) {
      double hand = (double)w0 * (1 - 1e-2 * 0.1) - 1e-2 * g0 / (fabs(g0) + 1e-8);
      CHECK_REL(xd_params_data(&p, a)[4], hand, 1e-6, 1e-3);
    }
    for (int k = 0; k < p.n; k++) {
      if (!p.t[k].trainable) continue;
      double lr = lrs[t - 1] * (k == b ? 0.5 : 1.0), wd = k == b ? 0.0 : 0.1;
      for (size_t i = p.t[k].offset; i < p.t[k].offset + p.t[k].numel; i++) {
        double g = p.grad[i];
        w[i] *= 1 - lr * wd;
        m[i] = 0.9 * m[i] + 0.1 * g;
        v[i] = 0.95 * v[i] + 0.05 * g * g;
        double mh = m[i] / (1 - pow(0.9, t)), vh = v[i] / (1 - pow(0.95, t));
        w[i] -= lr * mh / (sqrt(vh) + 1e-8);
      }
    }
  }
  double err = test_max_rel_err(p.data, w, n);
  fprintf(stderr, "  AdamW vs double reference, 5 steps: max rel err %.2g\n", err);
  CHECKF(err < 1e-6, "AdamW vs double reference: max rel err %.3g", err);
  CHECK(memcmp(frozen0, xd_params_data(&p, fz), sizeof frozen0) == 0);
  free(w);
  free(m);
  free(v);
  xd_params_free(&p);
}

static void test_schedule(void) {
  xd_schedule s = {XD_SCHED_COSINE, 1e-2, 1e-5, 10, 111};
  CHECK_REL(xd_schedule_lr(&s, 0), 1e-3, 1e-12, 1e-30);
  CHECK_REL(xd_schedule_lr(&s, 4), 5e-3, 1e-12, 1e-30);
  CHECK_REL(xd_schedule_lr(&s, 9), 1e-2, 1e-12, 1e-30);
  CHECK_REL(xd_schedule_lr(&s, 10), 1e-2, 1e-12, 1e-30);
  CHECK_REL(xd_schedule_lr(&s, 60), (1e-2 + 1e-5) / 2, 1e-12, 1e-30); /* half way (50 of 100) */
  CHECK_REL(xd_schedule_lr(&s, 35), 1e-5 + (1e-2 - 1e-5) * 0.5 * (1 + cos(M_PI / 4)), 1e-12, 1e-30);
  CHECK_REL(xd_schedule_lr(&s, 110), 1e-5, 1e-12, 1e-30);
  CHECK_REL(xd_schedule_lr(&s, 500), 1e-5, 1e-12, 1e-30);
  int mono = 1;
  for (uint64_t t = 11; t < 111; t++) mono &= xd_schedule_lr(&s, t) < xd_schedule_lr(&s, t - 1);
  CHECK(mono);
  xd_schedule k = {XD_SCHED_CONSTANT, 1e-5, 0, 4, 100};
  CHECK_REL(xd_schedule_lr(&k, 0), 2.5e-6, 1e-12, 1e-30);
  CHECK_REL(xd_schedule_lr(&k, 3), 1e-5, 1e-12, 1e-30);
  CHECK_REL(xd_schedule_lr(&k, 99999), 1e-5, 1e-12, 1e-30);
  xd_schedule z = {XD_SCHED_COSINE, 1.0, 0.0, 0, 3};
  CHECK(xd_schedule_lr(&z, 0) == 1.0 && fabs(xd_schedule_lr(&z, 2)) < 1e-15);
  xd_sched_kind kk;
  xd_err e;
  CHECK(xd_schedule_parse("linear", &kk, &e) == -1 && strstr(e.msg, "'linear'"));
}

/* ---- toy model ------------------------------------------------------------------------- */
static void toy_cfg(xd_train_config *c, const char *dir, int steps, int batch, int micro) {
  xd_train_config_defaults(c, XD_STAGE_ALIGN);
  snprintf(c->out_dir, sizeof c->out_dir, "%s", dir);
  c->steps = steps;
  c->batch = batch;
  c->micro_batch = micro;
  c->warmup_steps = 3;
  c->lr = 3e-3;
  c->ckpt_every = 5;
  c->log_every = 1000;
}

/* The toy's backward against central finite differences of its loss (double forward). */
static void test_toy_backward_fd(void) {
  xd_params p;
  xd_params_init(&p);
  xd_toy toy;
  xd_trainer_hooks h;
  xd_toy_init(&toy, &p, 5, 7, 3, 4, (uint64_t)time(NULL), &h);
  toy.noise = 0;
  xd_rng r;
  xd_rng_seed(&r, 1);
  xd_step_result sr;
  xd_err e;
  xd_params_zero_grad(&p);
  h.step(h.ctx, &p, 0, 0, 1, &r, &sr, &e);
  float *g = malloc(p.n_train * sizeof *g);
  memcpy(g, p.grad, p.n_train * sizeof *g);
  double maxg = 0, maxd = 0;
  for (size_t i = 0; i < p.n_train; i++) {
    float w0 = p.data[i];
    double hstep = 1e-3 * fmax(1.0, fabs(w0)), lp, lm;
    p.data[i] = (float)(w0 + hstep);
    double dp = (double)p.data[i] - w0;
    toy.cursor = 0;
    h.step(h.ctx, &p, 0, 0, 1, &r, &sr, &e);
    lp = sr.loss;
    p.data[i] = (float)(w0 - hstep);
    double dm = w0 - (double)p.data[i];
    toy.cursor = 0;
    h.step(h.ctx, &p, 0, 0, 1, &r, &sr, &e);
    lm = sr.loss;
    p.data[i] = w0;
    double fd = (lp - lm) / (dp + dm);
    maxg = fmax(maxg, fabs(fd));
    maxd = fmax(maxd, fabs(fd - g[i]));
  }
  fprintf(stderr, "  toy backward vs finite differences: max rel err %.2g\n", maxd / maxg);
  CHECKF(maxd / maxg < 1e-5, "toy backward vs finite differences: rel err %.3g", maxd / maxg);
  CHECK(maxg > 1e-3);
  free(g);
  xd_toy_free(&toy);
  xd_params_free(&p);
}

typedef struct {
  xd_params p;
  xd_toy toy;
  xd_trainer_hooks h;
} toy_run;

static void toy_run_init(toy_run *t, int micro, uint64_t seed) {
  xd_params_init(&t->p);
  xd_toy_init(&t->toy, &t->p, 6, 16, 3, micro, seed, &t->h);
}
static void toy_run_free(toy_run *t) {
  xd_toy_free(&t->toy);
  xd_params_free(&t->p);
}

/* N micro-batches of B/N samples == one batch of B samples (gradient and weights). */
static void test_accumulation(void) {
  const char *dir = test_tmpdir("train-accum");
  double gref_norm = 0;
  float *g1 = NULL, *w1 = NULL;
  size_t n = 0;
  /* batch 12: N = 3 and 12 are not powers of two, so the 1/N scaling is not exact */
  int micros[4] = {12, 4, 3, 1};
  for (int k = 0; k < 4; k++) {
    char sub[600];
    snprintf(sub, sizeof sub, "%s/m%d", dir, micros[k]);
    xd_train_config c;
    toy_cfg(&c, sub, 4, 12, micros[k]);
    c.grad_clip = 0; /* compare raw gradients */
    toy_run t;
    toy_run_init(&t, micros[k], 42);
    xd_train_result res;
    xd_err e = {{0}};
    CHECKF(xd_trainer_run(&c, &t.p, &t.h, NULL, &res, &e) == 0, "%s", e.msg);
    /* p.grad still holds the last step's averaged gradient */
    if (k == 0) {
      n = t.p.n_train;
      g1 = malloc(n * sizeof *g1);
      w1 = malloc(n * sizeof *w1);
      memcpy(g1, t.p.grad, n * sizeof *g1);
      memcpy(w1, t.p.data, n * sizeof *w1);
      for (size_t i = 0; i < n; i++) gref_norm = fmax(gref_norm, fabs(g1[i]));
      CHECK(gref_norm > 1e-3);
    } else {
      double *gr = malloc(n * sizeof *gr), *wr = malloc(n * sizeof *wr);
      for (size_t i = 0; i < n; i++) { gr[i] = g1[i]; wr[i] = w1[i]; }
      double eg = test_max_rel_err(t.p.grad, gr, n), ew = test_max_rel_err(t.p.data, wr, n);
      fprintf(stderr, "  accumulation x%d: grad rel err %.2g, weight rel err %.2g\n", 12 / micros[k], eg, ew);
      CHECKF(eg <= 1e-6, "accumulation over %d micro-batches: grad rel err %.3g", 12 / micros[k], eg);
      CHECKF(ew <= 1e-6, "accumulation over %d micro-batches: weight rel err %.3g", 12 / micros[k], ew);
      free(gr);
      free(wr);
    }
    toy_run_free(&t);
  }
  free(g1);
  free(w1);
}

/* ---- checkpoints ----------------------------------------------------------------------- */
static void fill_state(xd_ckpt_state *s, uint64_t step, uint8_t *blob, size_t nblob) {
  memset(s, 0, sizeof *s);
  s->step = step;
  s->adam_t = step - 1;
  s->tokens_seen = step * 4096;
  s->skipped_total = 1;
  s->consecutive_skips = 0;
  s->config_hash = 0x1234abcdull;
  xd_rng_seed(&s->rng, step);
  for (size_t i = 0; i < nblob; i++) blob[i] = (uint8_t)(i * 7 + step);
  s->loader_state = blob;
  s->loader_size = nblob;
}

static void make_params(xd_params *p, int64_t d1) {
  xd_params_init(p);
  xd_err e;
  int g = xd_params_add_group(p, "nd", 1, 0);
  xd_params_add(p, "a", 2, (int64_t[]){3, d1}, 0, 1, &e);
  xd_params_add(p, "frozen", 1, (int64_t[]){5}, 0, 0, &e);
  xd_params_add(p, "b", 1, (int64_t[]){4}, g, 1, &e);
  xd_params_alloc(p);
}

static void test_checkpoint_roundtrip(void) {
  const char *dir = test_tmpdir("train-ckpt");
  char path[600];
  snprintf(path, sizeof path, "%s/one.ckpt", dir);
  xd_params p, q;
  make_params(&p, 5);
  make_params(&q, 5);
  xd_rng r;
  xd_rng_seed(&r, (uint64_t)time(NULL));
  fill_normal(p.data, p.total, &r, 1);
  fill_normal(p.m, p.n_train, &r, 1);
  fill_normal(p.v, p.n_train, &r, 1);
  fill_normal(q.data, q.total, &r, 1);
  uint8_t blob[37], blob2[37];
  xd_ckpt_state s, t;
  fill_state(&s, 100, blob, sizeof blob);
  xd_err e = {{0}};
  CHECKF(xd_ckpt_save(path, &p, &s, &e) == 0, "%s", e.msg);
  CHECK(xd_ckpt_verify(path, &e) == 0);
  memset(&t, 0, sizeof t);
  t.loader_state = blob2;
  t.loader_size = sizeof blob2;
  float qfrozen[5];
  memcpy(qfrozen, xd_params_data(&q, 1), sizeof qfrozen);
  CHECKF(xd_ckpt_load(path, &q, &t, &e) == 0, "%s", e.msg);
  for (int i = 0; i < p.n; i++) /* every trainable tensor (the padding between them is not stored) */
    if (p.t[i].trainable) {
      const size_t o = p.t[i].offset, nb = p.t[i].numel * 4;
      CHECK(memcmp(p.data + o, q.data + o, nb) == 0 && memcmp(p.m + o, q.m + o, nb) == 0 && memcmp(p.v + o, q.v + o, nb) == 0);
    }
  CHECK(memcmp(qfrozen, xd_params_data(&q, 1), sizeof qfrozen) == 0); /* frozen: not stored */
  CHECK(t.step == 100 && t.adam_t == 99 && t.tokens_seen == 409600 && t.skipped_total == 1 && t.config_hash == 0x1234abcdull);
  CHECK(memcmp(&t.rng, &s.rng, sizeof t.rng) == 0 && memcmp(blob, blob2, sizeof blob) == 0);
  /* a model whose table differs is refused, and left untouched */
  xd_params o;
  make_params(&o, 6);
  float before[18];
  memcpy(before, o.data, sizeof before);
  CHECK(xd_ckpt_load(path, &o, &t, &e) == -1 && strstr(e.msg, "'a' has a different shape") && strstr(e.msg, path));
  CHECK(memcmp(before, o.data, sizeof before) == 0);
  xd_params_free(&o);
  t.loader_size = 8;
  CHECK(xd_ckpt_load(path, &q, &t, &e) == -1 && strstr(e.msg, "loader state is 37 bytes"));
  xd_params_free(&p);
  xd_params_free(&q);
}

/* Truncations, flipped bytes and forged sizes (with a valid checksum) give an error naming
 * the file, never a crash. */
static void test_checkpoint_corrupt(void) {
  const char *dir = test_tmpdir("train-corrupt");
  char path[600], bad[600];
  snprintf(path, sizeof path, "%s/c.ckpt", dir);
  snprintf(bad, sizeof bad, "%s/bad.ckpt", dir);
  xd_params p;
  make_params(&p, 5);
  uint8_t blob[9];
  xd_ckpt_state s;
  fill_state(&s, 7, blob, sizeof blob);
  xd_err e = {{0}};
  CHECK(xd_ckpt_save(path, &p, &s, &e) == 0);
  xd_params q;
  make_params(&q, 5);
  float q0[24];
  for (int i = 0; i < 24; i++) q.data[i] = q0[i] = (float)i;
  size_t n;
  uint8_t *buf = (uint8_t *)read_all(path, &n);
  xd_rng r;
  xd_rng_seed(&r, (uint64_t)time(NULL));
  int all_fail = 1, named = 1;
  for (int trial = 0; trial < 60; trial++) {
    uint8_t *c = malloc(n);
    memcpy(c, buf, n);
    size_t len = n;
    if (trial < 20) len = (size_t)(xd_rng_uniform(&r) * (double)n); /* truncated */
    else c[(size_t)(xd_rng_uniform(&r) * (double)n)] ^= (uint8_t)(1 + xd_rng_u64(&r) % 255); /* flipped */
    FILE *fp = fopen(bad, "wb");
    fwrite(c, 1, len, fp);
    fclose(fp);
    if (xd_ckpt_verify(bad, &e) == 0) all_fail = 0;
    if (!strstr(e.msg, bad)) named = 0;
    /* load refuses it too, and leaves the model as it was */
    uint8_t blob2[9];
    xd_ckpt_state s2 = {.loader_state = blob2, .loader_size = sizeof blob2};
    if (xd_ckpt_load(bad, &q, &s2, &e) == 0 || memcmp(q.data, q0, sizeof q0) != 0) all_fail = 0;
    free(c);
  }
  CHECK(all_fail && named);
  /* forged sizes with a recomputed checksum: the parser's own bounds checks must catch them */
  uint64_t forged[3][2] = {{96, 1ull << 40}, {104, 1ull << 33}, {112, 3}};
  for (int k = 0; k < 3; k++) {
    uint8_t *c = malloc(n);
    memcpy(c, buf, n);
    memcpy(c + forged[k][0], &forged[k][1], 8);
    uint64_t crc = crc32(crc32(0L, Z_NULL, 0), c, (uInt)(n - 16));
    memcpy(c + n - 16, &crc, 8);
    FILE *fp = fopen(bad, "wb");
    fwrite(c, 1, n, fp);
    fclose(fp);
    CHECKF(xd_ckpt_verify(bad, &e) == -1 && strstr(e.msg, bad) && !strstr(e.msg, "checksum"), "forged field %d: %s", k, e.msg);
    free(c);
  }
  free(buf);
  xd_params_free(&p);
  xd_params_free(&q);
}

static void test_checkpoint_rotation(void) {
  const char *dir = test_tmpdir("train-rot");
  xd_params p;
  make_params(&p, 5);
  uint8_t blob[4];
  xd_ckpt_state s;
  xd_err e = {{0}};
  for (uint64_t st = 10; st <= 50; st += 10) {
    fill_state(&s, st, blob, sizeof blob);
    CHECKF(xd_ckpt_save_rotating(dir, 3, &p, &s, &e) == 0, "%s", e.msg);
  }
  char path[700];
  for (int st = 10; st <= 50; st += 10) {
    snprintf(path, sizeof path, "%s/step-%06d.ckpt", dir, st);
    CHECKF(xd_file_exists(path) == (st >= 30), "step %d kept=%d", st, xd_file_exists(path));
  }
  snprintf(path, sizeof path, "%s/latest", dir);
  size_t n;
  char *latest = read_all(path, &n);
  CHECK(latest && !strcmp(latest, "step-000050.ckpt\n"));
  free(latest);
  /* corrupt newest -> previous; truncate that too -> the one before */
  FILE *warn = tmpfile();
  char *found = NULL;
  snprintf(path, sizeof path, "%s/step-000050.ckpt", dir);
  FILE *fp = fopen(path, "r+b");
  fseek(fp, 200, SEEK_SET);
  fputc(0x5a ^ 0xff, fp);
  fclose(fp);
  CHECK(xd_ckpt_find_latest(dir, warn, &found, &e) == 1 && found && strstr(found, "step-000040.ckpt"));
  free(found);
  snprintf(path, sizeof path, "%s/step-000040.ckpt", dir);
  CHECK(truncate(path, 150) == 0);
  CHECK(xd_ckpt_find_latest(dir, warn, &found, &e) == 1 && found && strstr(found, "step-000030.ckpt"));
  free(found);
  char msg[4096] = {0};
  rewind(warn);
  size_t got = fread(msg, 1, sizeof msg - 1, warn);
  fclose(warn);
  CHECK(got > 0 && strstr(msg, "step-000050.ckpt: checksum mismatch") && strstr(msg, "step-000040.ckpt: truncated"));
  /* temp files of a killed writer are removed, nothing else */
  char tmpf[700], other[700];
  snprintf(tmpf, sizeof tmpf, "%s/step-000060.ckpt.tmp.999", dir);
  snprintf(other, sizeof other, "%s/notes.tmp.1", dir);
  write_text(tmpf, "partial");
  write_text(other, "keep");
  xd_ckpt_clean_tmp(dir);
  CHECK(!xd_file_exists(tmpf) && xd_file_exists(other));
  /* an empty directory has no checkpoint */
  const char *empty = test_tmpdir("train-rot-empty");
  CHECK(xd_ckpt_find_latest(empty, NULL, &found, &e) == 0 && !found);
  xd_params_free(&p);
}

/* ---- the loop ------------------------------------------------------------------------- */
/* SIGINT during step 17 (raised by the step function): the loop finishes the step, saves,
 * returns 130; --resume ends bit-identical to an uninterrupted run, and metrics.jsonl has
 * each step exactly once with the same losses. */
static void test_sigint_resume_in_process(void) {
  const char *dir = test_tmpdir("train-sigint");
  char da[600], db[600], pa[700], pb[700];
  snprintf(da, sizeof da, "%s/a", dir);
  snprintf(db, sizeof db, "%s/b", dir);
  xd_err e = {{0}};
  xd_train_result res;
  xd_train_config c;
  {
    toy_cfg(&c, da, 30, 8, 4);
    toy_run t;
    toy_run_init(&t, 4, 9);
    CHECKF(xd_trainer_run(&c, &t.p, &t.h, NULL, &res, &e) == 0, "%s", e.msg);
    CHECK(res.steps_done == 30 && !res.resumed);
    toy_run_free(&t);
  }
  {
    toy_cfg(&c, db, 30, 8, 4);
    toy_run t;
    toy_run_init(&t, 4, 9);
    t.toy.raise_at_step = 17;
    xd_train_install_signal_handlers();
    int rc = xd_trainer_run(&c, &t.p, &t.h, NULL, &res, &e);
    CHECKF(rc == 130 && res.steps_done == 17, "rc %d steps %llu", rc, (unsigned long long)res.steps_done);
    CHECK(xd_train_stop_signal() == SIGINT);
    xd_train_clear_stop_signal();
    signal(SIGINT, SIG_DFL);
    snprintf(pb, sizeof pb, "%s/step-000017.ckpt", db);
    CHECK(xd_file_exists(pb));
    toy_run_free(&t);
  }
  {
    /* a fresh (non-resume) start refuses a directory with checkpoints */
    toy_run t;
    toy_run_init(&t, 4, 9);
    CHECK(xd_trainer_run(&c, &t.p, &t.h, NULL, &res, &e) == -1 && strstr(e.msg, "already holds checkpoints"));
    /* resuming with a different optimisation setting is refused */
    c.resume = 1;
    c.lr *= 2;
    CHECK(xd_trainer_run(&c, &t.p, &t.h, NULL, &res, &e) == -1 && strstr(e.msg, "different configuration"));
    c.lr /= 2;
    c.ckpt_every = 7; /* cadence may change */
    CHECKF(xd_trainer_run(&c, &t.p, &t.h, NULL, &res, &e) == 0, "%s", e.msg);
    CHECK(res.resumed && res.steps_done == 30);
    toy_run_free(&t);
  }
  snprintf(pa, sizeof pa, "%s/step-000030.ckpt", da);
  snprintf(pb, sizeof pb, "%s/step-000030.ckpt", db);
  size_t na, nb;
  char *a = read_all(pa, &na), *b = read_all(pb, &nb);
  CHECK(a && b && na == nb && memcmp(a, b, na) == 0);
  free(a);
  free(b);
  /* metrics: same steps, same losses */
  snprintf(pa, sizeof pa, "%s/metrics.jsonl", da);
  snprintf(pb, sizeof pb, "%s/metrics.jsonl", db);
  FILE *fa = fopen(pa, "r"), *fb = fopen(pb, "r");
  char la[1024], lb[1024];
  int lines = 0, same = 1;
  while (fa && fb && fgets(la, sizeof la, fa)) {
    if (!fgets(lb, sizeof lb, fb)) { same = 0; break; }
    unsigned long long sa, sb;
    double xa, xb;
    if (sscanf(la, "{\"step\":%llu,\"loss\":%lf", &sa, &xa) != 2 || sscanf(lb, "{\"step\":%llu,\"loss\":%lf", &sb, &xb) != 2 ||
        sa != sb || xa != xb || sa != (unsigned long long)lines + 1) same = 0;
    lines++;
  }
  CHECK(fb && !fgets(lb, sizeof lb, fb));
  CHECK(same && lines == 30);
  if (fa) fclose(fa);
  if (fb) fclose(fb);
}

static int weights_changed_calls;
static int count_weights_changed(void *ctx, xd_params *p, xd_err *e) {
  weights_changed_calls++;
  return 0;
}

/* A NaN loss at step 3 and an Inf gradient at step 5 are skipped (weights unchanged, logged);
 * after max_skips consecutive bad steps the run stops with "diverging". */
static void test_nan_skip(void) {
  const char *dir = test_tmpdir("train-nan");
  char d2[600], d3[600], path[700];
  snprintf(d2, sizeof d2, "%s/two", dir);
  snprintf(d3, sizeof d3, "%s/nan", dir);
  xd_err e = {{0}};
  xd_train_result res;
  xd_train_config c;
  toy_run t2, t3;
  toy_cfg(&c, d2, 2, 8, 8);
  strcpy(c.schedule, "constant"); /* lr of steps 1-2 must not depend on the run length */
  toy_run_init(&t2, 8, 5);
  CHECK(xd_trainer_run(&c, &t2.p, &t2.h, NULL, &res, &e) == 0);
  snprintf(c.out_dir, sizeof c.out_dir, "%s", d3);
  c.steps = 6;
  toy_run_init(&t3, 8, 5);
  t3.toy.nan_from = t3.toy.nan_to = 3;
  t3.toy.inf_grad_at_step = 5;
  t3.h.weights_changed = count_weights_changed;
  /* weights after step 3 (skipped) == weights after step 2 */
  c.steps = 3;
  CHECKF(xd_trainer_run(&c, &t3.p, &t3.h, NULL, &res, &e) == 0, "%s", e.msg);
  CHECK(res.skipped_total == 1);
  CHECK(memcmp(t2.p.data, t3.p.data, t2.p.total * 4) == 0 && memcmp(t2.p.m, t3.p.m, t2.p.n_train * 4) == 0);
  c.steps = 6;
  c.resume = 1;
  CHECKF(xd_trainer_run(&c, &t3.p, &t3.h, NULL, &res, &e) == 0, "%s", e.msg);
  CHECK(res.skipped_total == 2 && res.steps_done == 6 && isfinite(res.last_loss));
  /* applied updates 1, 2, 4, 6 and the checkpoint load on resume */
  CHECKF(weights_changed_calls == 5, "weights_changed called %d times", weights_changed_calls);
  CHECK(xd_params_data_finite(&t3.p));
  snprintf(path, sizeof path, "%s/metrics.jsonl", d3);
  size_t n;
  char *log = read_all(path, &n);
  CHECK(log && strstr(log, "{\"step\":3,\"skipped\":true,\"reason\":\"non-finite loss\",\"loss\":\"nan\""));
  CHECK(log && strstr(log, "{\"step\":5,\"skipped\":true,\"reason\":\"non-finite gradient\""));
  CHECK(log && strstr(log, "{\"step\":6,\"loss\":"));
  free(log);
  toy_run_free(&t2);
  toy_run_free(&t3);
  /* divergence */
  snprintf(c.out_dir, sizeof c.out_dir, "%s/div", dir);
  c.resume = 0;
  c.steps = 50;
  c.max_skips = 4;
  toy_run_init(&t3, 8, 5);
  t3.toy.nan_from = 10;
  t3.toy.nan_to = 1000;
  FILE *prog = tmpfile();
  CHECK(xd_trainer_run(&c, &t3.p, &t3.h, prog, &res, &e) == -1);
  CHECKF(strstr(e.msg, "diverging: 4 consecutive steps") && strstr(e.msg, "step 13"), "%s", e.msg);
  CHECK(res.steps_done == 13 && xd_params_data_finite(&t3.p));
  char msg[8192] = {0};
  rewind(prog);
  CHECK(fread(msg, 1, sizeof msg - 1, prog) > 0 && strstr(msg, "step 10: loss is NaN/Inf, update skipped"));
  fclose(prog);
  /* after divergence: resuming with a lower lr needs resume_force, then runs to the end */
  t3.toy.nan_from = 0;
  c.resume = 1;
  c.lr /= 10;
  CHECK(xd_trainer_run(&c, &t3.p, &t3.h, NULL, &res, &e) == -1 && strstr(e.msg, "--resume_force"));
  c.resume_force = 1;
  CHECKF(xd_trainer_run(&c, &t3.p, &t3.h, NULL, &res, &e) == 0, "%s", e.msg);
  CHECK(res.resumed && res.steps_done == 50 && res.skipped_total == 1 && isfinite(res.last_loss)); /* step 10 (skipped) was in the step-10 checkpoint */
  toy_run_free(&t3);
}

/* ---- configuration --------------------------------------------------------------------- */
static void test_config_defaults(void) {
  xd_train_config a, b;
  xd_train_config_defaults(&a, XD_STAGE_ALIGN);
  xd_train_config_defaults(&b, XD_STAGE_DISTILL);
  xd_err e;
  CHECK(xd_train_config_validate(&a, &e) == 0 && xd_train_config_validate(&b, &e) == 0);
  CHECK(a.lr == 1e-2 && a.lr_min == 1e-5 && !strcmp(a.schedule, "cosine") && a.weight_decay == 0.1 && a.grad_clip == 1.0);
  CHECK(a.seq_len == 4096 && a.batch == 64);
  CHECK(b.lr == 1e-5 && !strcmp(b.schedule, "constant") && b.weight_decay == 0.1 && b.grad_clip == 1.0);
  CHECK(b.kd_gamma == 0.9 && b.kd_beta == 0.1 && b.kd_topk == 256 && b.kd_temperature == 1.0 && b.seq_len == 4096);
  /* help documents every key of the saved JSON */
  char *json = xd_train_config_to_json(&a);
  FILE *fp = tmpfile();
  xd_train_config_print_help(fp, XD_STAGE_ALIGN);
  char help[16384] = {0};
  rewind(fp);
  CHECK(fread(help, 1, sizeof help - 1, fp) > 0);
  fclose(fp);
  int keys = 0, documented = 1;
  for (char *q = json; (q = strchr(q, '"')) != NULL;) {
    char *end = strchr(q + 1, '"');
    if (end[1] == ':') {
      char flag[80];
      snprintf(flag, sizeof flag, "--%.*s ", (int)(end - q - 1), q + 1);
      if (!strstr(help, flag)) documented = 0;
      keys++;
    }
    q = end + 1;
  }
  CHECK(keys >= 20 && documented);
  free(json);
}

static int args_config(xd_train_config *c, xd_train_stage st, xd_err *e, int n, ...) {
  char *argv[32];
  argv[0] = "cmd";
  va_list ap;
  va_start(ap, n);
  for (int i = 0; i < n; i++) argv[i + 1] = va_arg(ap, char *);
  va_end(ap);
  return xd_train_config_from_args(c, st, n + 1, argv, NULL, 0, NULL, e);
}

static void test_config_files_and_flags(void) {
  const char *dir = test_tmpdir("train-config");
  char y[600], j[600], bad[600], saved[600];
  snprintf(y, sizeof y, "%s/c.yaml", dir);
  snprintf(j, sizeof j, "%s/c.json", dir);
  snprintf(bad, sizeof bad, "%s/bad.yml", dir);
  snprintf(saved, sizeof saved, "%s/saved.json", dir);
  write_text(y, "# stage I run\nlr: 0.5\nbatch: 32\nschedule: 'constant'\nresume: yes\nout_dir: runs/x\n");
  write_text(j, "{\"lr\": 0.25, \"micro_batch\": 8, \"grad_clip\": 0, \"resume\": true, \"kd_temperature\": \"2\"}");
  xd_train_config c;
  xd_err e = {{0}};
  /* YAML, then flags win whatever their position relative to --config */
  CHECKF(args_config(&c, XD_STAGE_ALIGN, &e, 5, "--lr", "0.125", "--config", y, "--micro-batch=4") == 0, "%s", e.msg);
  CHECK(c.lr == 0.125 && c.batch == 32 && c.micro_batch == 4 && !strcmp(c.schedule, "constant") && c.resume == 1);
  CHECK(!strcmp(c.out_dir, "runs/x") && c.weight_decay == 0.1);
  /* JSON */
  CHECKF(args_config(&c, XD_STAGE_DISTILL, &e, 4, "--config", j, "--resume", "false") == 0, "%s", e.msg);
  CHECK(c.lr == 0.25 && c.micro_batch == 8 && c.grad_clip == 0 && c.kd_temperature == 2 && c.resume == 0 && c.batch == 64);
  CHECK(args_config(&c, XD_STAGE_DISTILL, &e, 3, "--config", j, "--resume") == 0 && c.resume == 1);
  /* unknown keys: named with their file / the command line */
  write_text(bad, "lr: 0.1\nlearning_rate: 0.2\n");
  CHECK(args_config(&c, XD_STAGE_ALIGN, &e, 2, "--config", bad) == -1 && strstr(e.msg, bad) && strstr(e.msg, "unknown key 'learning_rate'"));
  snprintf(bad, sizeof bad, "%s/bad.json", dir);
  write_text(bad, "{\"lr\": 0.1, \"wd\": 0.2}");
  CHECK(args_config(&c, XD_STAGE_ALIGN, &e, 2, "--config", bad) == -1 && strstr(e.msg, bad) && strstr(e.msg, "unknown key 'wd'"));
  CHECK(args_config(&c, XD_STAGE_ALIGN, &e, 2, "--learning-rate", "3") == -1 && strstr(e.msg, "unknown option '--learning-rate'"));
  /* bad values, duplicates, structure */
  CHECK(args_config(&c, XD_STAGE_ALIGN, &e, 2, "--batch", "6x") == -1 && strstr(e.msg, "key 'batch': expected an integer, got '6x'"));
  CHECK(args_config(&c, XD_STAGE_ALIGN, &e, 1, "--lr") == -1 && strstr(e.msg, "--lr needs a value"));
  CHECK(args_config(&c, XD_STAGE_ALIGN, &e, 4, "--batch", "64", "--micro_batch", "5") == -1 && strstr(e.msg, "multiple of micro_batch"));
  CHECK(args_config(&c, XD_STAGE_ALIGN, &e, 2, "--schedule", "linear") == -1 && strstr(e.msg, "'linear'"));
  /* values whose float conversions downstream (AdamW, the KD loss) would overflow are refused */
  CHECK(args_config(&c, XD_STAGE_ALIGN, &e, 2, "--lr", "1e300") == -1 && strstr(e.msg, "lr must be in (0, 1e6]"));
  CHECK(args_config(&c, XD_STAGE_ALIGN, &e, 2, "--adam_eps", "1e300") == -1 && strstr(e.msg, "adam_eps must be in (0, 1]"));
  CHECK(args_config(&c, XD_STAGE_ALIGN, &e, 2, "--kd_temperature", "1e300") == -1 && strstr(e.msg, "kd_temperature"));
  CHECK(args_config(&c, XD_STAGE_ALIGN, &e, 1, "stray") == -1 && strstr(e.msg, "unexpected argument 'stray'"));
  snprintf(bad, sizeof bad, "%s/dup.yaml", dir);
  write_text(bad, "lr: 0.1\nlr: 0.2\n");
  CHECK(args_config(&c, XD_STAGE_ALIGN, &e, 2, "--config", bad) == -1 && strstr(e.msg, "key 'lr' given twice"));
  write_text(bad, "lr:\n  a: 1\n");
  CHECK(args_config(&c, XD_STAGE_ALIGN, &e, 2, "--config", bad) == -1 && strstr(e.msg, "key 'lr': expected a scalar"));
  write_text(bad, "lr: [1, 2]\n");
  CHECK(args_config(&c, XD_STAGE_ALIGN, &e, 2, "--config", bad) == -1 && strstr(e.msg, "expected a scalar value, got a list"));
  write_text(bad, "lr: 0.1\n- a\n");
  CHECK(args_config(&c, XD_STAGE_ALIGN, &e, 2, "--config", bad) == -1 && strstr(e.msg, "YAML error at line"));
  write_text(bad, "");
  CHECK(args_config(&c, XD_STAGE_ALIGN, &e, 2, "--config", bad) == 0 && c.lr == 1e-2); /* empty file: defaults */
  snprintf(bad, sizeof bad, "%s/c.toml", dir);
  write_text(bad, "lr = 1");
  CHECK(args_config(&c, XD_STAGE_ALIGN, &e, 2, "--config", bad) == -1 && strstr(e.msg, "must end in .yaml, .yml or .json"));
  /* positional arguments when the caller accepts them */
  char *argv[] = {"cmd", "teacher/", "--lr", "0.5", "student/"};
  int pos[2], npos;
  CHECK(xd_train_config_from_args(&c, XD_STAGE_ALIGN, 5, argv, pos, 2, &npos, &e) == 0 && npos == 2 && pos[0] == 1 && pos[1] == 4 && c.lr == 0.5);
  /* saved JSON loads back to the same configuration; the hash ignores run-control keys */
  CHECK(args_config(&c, XD_STAGE_DISTILL, &e, 4, "--config", y, "--kd_topk", "64") == 0);
  CHECK(xd_train_config_save(&c, saved, &e) == 0);
  xd_train_config d;
  CHECKF(args_config(&d, XD_STAGE_DISTILL, &e, 2, "--config", saved) == 0, "%s", e.msg);
  char *jc = xd_train_config_to_json(&c), *jd = xd_train_config_to_json(&d);
  CHECK(!strcmp(jc, jd) && xd_train_config_hash(&c) == xd_train_config_hash(&d));
  free(jc);
  free(jd);
  uint64_t h0 = xd_train_config_hash(&d);
  d.ckpt_every = 3;
  d.resume = 0;
  snprintf(d.out_dir, sizeof d.out_dir, "elsewhere");
  d.steps = 99999; /* constant schedule: the run may be extended */
  CHECK(xd_train_config_hash(&d) == h0);
  d.kd_beta = 0.2;
  CHECK(xd_train_config_hash(&d) != h0);
  d.kd_beta = c.kd_beta;
  strcpy(d.schedule, "cosine");
  uint64_t h1 = xd_train_config_hash(&d);
  d.steps = 5;
  CHECK(xd_train_config_hash(&d) != h1); /* cosine: the length shapes the schedule */
}

int main(void) {
  RUN(test_params_layout);
  RUN(test_grad_norm);
  RUN(test_clip);
  RUN(test_adamw);
  RUN(test_schedule);
  RUN(test_toy_backward_fd);
  RUN(test_accumulation);
  RUN(test_checkpoint_roundtrip);
  RUN(test_checkpoint_corrupt);
  RUN(test_checkpoint_rotation);
  RUN(test_sigint_resume_in_process);
  RUN(test_nan_skip);
  RUN(test_config_defaults);
  RUN(test_config_files_and_flags);
  return test_finish();
}
