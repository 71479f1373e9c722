#include "train/toy.h"

#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

static void sample_x(const xd_toy *t, uint64_t idx, double *x) {
  xd_rng r;
  xd_rng_seed(&r, t->data_seed * 0x9e3779b97f4a7c15ull + idx + 1);
  for (int i = 0; i < t->in; i++) x[i] = xd_rng_normal(&r);
}

/* Forward one sample; h [hidden] = tanh(W1 x + b1), y [out]. */
static void forward(const xd_toy *t, const xd_params *p, const double *x, double *h, double *y) {
  const float *w1 = xd_params_data(p, t->w1), *b1 = xd_params_data(p, t->b1);
  const float *w2 = xd_params_data(p, t->w2), *b2 = xd_params_data(p, t->b2), *c = xd_params_data(p, t->c);
  for (int j = 0; j < t->hidden; j++) {
    double s = b1[j];
    for (int i = 0; i < t->in; i++) s += (double)w1[(size_t)j * t->in + i] * x[i];
    h[j] = tanh(s);
  }
  for (int o = 0; o < t->out; o++) {
    double s = (double)b2[o] + c[o];
    for (int j = 0; j < t->hidden; j++) s += (double)w2[(size_t)o * t->hidden + j] * h[j];
    y[o] = s;
  }
}

static void target(const xd_toy *t, const double *x, double *tg) {
  for (int o = 0; o < t->out; o++) {
    double s = 0;
    for (int i = 0; i < t->in; i++) s += (double)t->tmat[(size_t)o * t->in + i] * x[i];
    tg[o] = tanh(s);
  }
}

static int toy_step(void *ctx, xd_params *p, uint64_t step, int micro, int n_micro, xd_rng *rng,
                    xd_step_result *out, xd_err *e) {
  xd_toy *t = ctx;
  double *x = t->scratch, *h = x + t->in, *y = h + t->hidden, *tg = y + t->out, *dh = tg + t->out;
  float *g1 = xd_params_grad(p, t->w1), *gb1 = xd_params_grad(p, t->b1);
  float *g2 = xd_params_grad(p, t->w2), *gb2 = xd_params_grad(p, t->b2);
  const float *w2 = xd_params_data(p, t->w2);
  const int n = t->samples_per_micro;
  const double scale = 2.0 / ((double)n * t->out); /* d mean((y-t)^2) / dy */
  double loss = 0;
  for (int s = 0; s < n; s++) {
    sample_x(t, t->cursor++, x);
    target(t, x, tg);
    for (int o = 0; o < t->out; o++) tg[o] += t->noise * xd_rng_normal(rng);
    forward(t, p, x, h, y);
    for (int j = 0; j < t->hidden; j++) dh[j] = 0;
    for (int o = 0; o < t->out; o++) {
      double d = y[o] - tg[o];
      loss += d * d;
      double dy = scale * d;
      gb2[o] += (float)dy;
      for (int j = 0; j < t->hidden; j++) {
        g2[(size_t)o * t->hidden + j] += (float)(dy * h[j]);
        dh[j] += dy * w2[(size_t)o * t->hidden + j];
      }
    }
    for (int j = 0; j < t->hidden; j++) {
      double dpre = dh[j] * (1.0 - h[j] * h[j]);
      gb1[j] += (float)dpre;
      for (int i = 0; i < t->in; i++) g1[(size_t)j * t->in + i] += (float)(dpre * x[i]);
    }
  }
  out->loss = loss / ((double)n * t->out);
  out->tokens = (uint64_t)n;
  out->nmetrics = 1;
  out->metric_names[0] = "rmse";
  out->metric_values[0] = sqrt(out->loss);
  if (t->nan_from && step + 1 >= t->nan_from && step + 1 <= t->nan_to) out->loss = NAN;
  if (t->inf_grad_at_step == step + 1 && micro == n_micro - 1) g1[0] = INFINITY;
  if (t->raise_at_step > 0 && (uint64_t)t->raise_at_step == step + 1 && micro == 0) raise(SIGINT);
  return 0;
}

static void toy_loader_save(void *ctx, void *buf) {
  const xd_toy *t = ctx;
  memcpy(buf, &t->cursor, sizeof t->cursor);
}
static int toy_loader_restore(void *ctx, const void *buf, xd_err *e) {
  xd_toy *t = ctx;
  memcpy(&t->cursor, buf, sizeof t->cursor);
  return 0;
}

void xd_toy_init(xd_toy *t, xd_params *p, int in, int hidden, int out, int samples_per_micro,
                 uint64_t seed, xd_trainer_hooks *hooks) {
  memset(t, 0, sizeof *t);
  t->in = in;
  t->hidden = hidden;
  t->out = out;
  t->samples_per_micro = samples_per_micro;
  t->data_seed = seed;
  t->noise = 0.01;
  xd_err e;
  int nd = xd_params_add_group(p, "no_decay", 1.0f, 0.0f);
  XD_CHECK((t->w1 = xd_params_add(p, "mlp.w1", 2, (int64_t[]){hidden, in}, 0, 1, &e)) >= 0);
  XD_CHECK((t->b1 = xd_params_add(p, "mlp.b1", 1, (int64_t[]){hidden}, nd, 1, &e)) >= 0);
  XD_CHECK((t->c = xd_params_add(p, "frozen.c", 1, (int64_t[]){out}, 0, 0, &e)) >= 0);
  XD_CHECK((t->w2 = xd_params_add(p, "mlp.w2", 2, (int64_t[]){out, hidden}, 0, 1, &e)) >= 0);
  XD_CHECK((t->b2 = xd_params_add(p, "mlp.b2", 1, (int64_t[]){out}, nd, 1, &e)) >= 0);
  xd_params_alloc(p);
  xd_rng r;
  xd_rng_seed(&r, seed ^ 0x5eedull);
  float *w1 = xd_params_data(p, t->w1), *w2 = xd_params_data(p, t->w2), *c = xd_params_data(p, t->c);
  float *b1 = xd_params_data(p, t->b1), *b2 = xd_params_data(p, t->b2);
  for (int i = 0; i < hidden * in; i++) w1[i] = (float)(xd_rng_normal(&r) / sqrt((double)in));
  for (int i = 0; i < out * hidden; i++) w2[i] = (float)(xd_rng_normal(&r) / sqrt((double)hidden));
  for (int i = 0; i < hidden; i++) b1[i] = (float)(0.1 * xd_rng_normal(&r));
  for (int i = 0; i < out; i++) b2[i] = (float)(0.1 * xd_rng_normal(&r));
  for (int i = 0; i < out; i++) c[i] = (float)(0.1 * xd_rng_normal(&r));
  t->tmat = xd_malloc((size_t)out * in * sizeof(float));
  for (int i = 0; i < out * in; i++) t->tmat[i] = (float)(xd_rng_normal(&r) / sqrt((double)in));
  t->scratch = xd_malloc((size_t)(in + 2 * hidden + 2 * out) * sizeof(double));
  memset(hooks, 0, sizeof *hooks);
  hooks->step = toy_step;
  hooks->loader_state_size = sizeof t->cursor;
  hooks->loader_save = toy_loader_save;
  hooks->loader_restore = toy_loader_restore;
  hooks->ctx = t;
}

void xd_toy_free(xd_toy *t) {
  free(t->tmat);
  free(t->scratch);
  memset(t, 0, sizeof *t);
}

double xd_toy_eval(const xd_toy *t, const xd_params *p, uint64_t base, int n) {
  double *x = t->scratch, *h = x + t->in, *y = h + t->hidden, *tg = y + t->out, loss = 0;
  for (int s = 0; s < n; s++) {
    sample_x(t, base + (uint64_t)s, x);
    target(t, x, tg);
    forward(t, p, x, h, y);
    for (int o = 0; o < t->out; o++) loss += (y[o] - tg[o]) * (y[o] - tg[o]);
  }
  return loss / ((double)n * t->out);
}
