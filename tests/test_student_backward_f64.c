/* Whole-student backward in float64 (issue #4): the float64 instantiation of the student's
 * training forward/backward (the same source as the fp32 product path: student_train_impl.inc,
 * student_core_impl.inc, the ops' *_impl.inc) against float64 central finite differences, for
 * EVERY parameter tensor of tiny students of several families, both mLSTM normalisers, on gate
 * pre-activations that reach the stabiliser's two branches (|i~|, |f~| up to ~10 and near 0).
 *
 * Loss: L = sum_{n,v} logits[n,v] R[n,v] for a fixed random R [N,V], so dL/dlogits = R.
 * Per tensor, two measures (both must be <= 1e-6):
 *   dir:  random unit directions u: |FD_u - <g,u>| / |g|   (every element contributes)
 *   elem: sampled elements (the largest |g| among them, embedding rows the ids use):
 *         max_i |FD_i - g_i| / max_i |g_i|                   (max-norm relative error)
 * FD: Richardson-extrapolated central differences (4 D(h/2) - D(h)) / 3, h = 1e-4 |w|-scaled:
 * truncation O(h^4) and rounding ~1e-16 |L| / h, both far below 1e-6 (measured <= 1e-8). The
 * step is kept small because the function has kinks (the max of the stabiliser and of the max
 * normaliser): at h = 1e-3 a step crossed one for olmo2 and the FD, not the gradient, was off.
 * It also checks the fp32 product backward against the float64 one at the same weights (1e-4). */
#include "test.h"
#include "student_fixture.h"
#include "model/student/student_init.h"
#include "model/student/student_train.h"

#define B_ 2
#define T_ 9      /* chunk 4: chunks of 4, 4, 1 (boundaries crossed); window 3 < T; 1 sink */
#define N_DIRS 2  /* random directions per tensor */
#define N_ELEMS 6 /* sampled elements per tensor (plus the largest-gradient one) */
#define TOL 1e-6

typedef struct {
  const xd_student_f64 *s;
  xd_student_train_acts_f64 *a;
  const int32_t *ids;
  const double *R;
  double *logits;
  size_t n;
} loss_ctx;

static double loss_of(void *p) {
  loss_ctx *c = p;
  xd_err e;
  CHECK(xd_student_forward_train_f64(c->s, c->a, c->ids, c->logits, &e) == 0);
  double L = 0;
  for (size_t i = 0; i < c->n; i++) L += c->logits[i] * c->R[i];
  return L;
}

/* Directional derivative along u by Richardson-extrapolated central differences; w restored. */
static double fd_dir(loss_ctx *c, double *w, const double *u, size_t m, double h) {
  double *w0 = xd_malloc(m * sizeof(double));
  memcpy(w0, w, m * sizeof(double));
  double d[2];
  for (int k = 0; k < 2; k++) {
    const double hk = h / (double)(1 << k);
    for (size_t i = 0; i < m; i++) w[i] = w0[i] + hk * u[i];
    const double lp = loss_of(c);
    for (size_t i = 0; i < m; i++) w[i] = w0[i] - hk * u[i];
    const double lm = loss_of(c);
    d[k] = (lp - lm) / (2 * hk);
  }
  memcpy(w, w0, m * sizeof(double));
  free(w0);
  return (4 * d[1] - d[0]) / 3;
}

/* The inputs reach the stabiliser: both branches of m_t = max(logsigmoid(f_t) + m_{t-1}, i_t)
 * are taken, and with the max normaliser both branches of max(|den_t|, exp(-m_t)); the gate
 * pre-activations span large and small magnitudes. Recomputed here from the forward's saved
 * gates and features with the plain recurrence of n (docs/mlstm.md section 1). */
static void check_gates_exercise_stabiliser(const char *tag, const xd_student_f64 *s,
                                            const xd_student_train_acts_f64 *a) {
  const int H = s->cfg.n_heads, G = s->cfg.n_kv_heads, P = s->hy.d_phi;
  int n_i = 0, n_f = 0, n_den = 0, n_exp = 0, big_i = 0, small_i = 0, big_f = 0, small_f = 0;
  double *nv = xd_malloc((size_t)P * sizeof(double));
  for (int l = 0; l < s->cfg.n_layers; l++) {
    const xd_core_acts_f64 *ca = &a->layer[l].core;
    for (int b = 0; b < B_; b++)
      for (int h = 0; h < H; h++) {
        const int g = h / (H / G);
        double m = 0;
        memset(nv, 0, (size_t)P * sizeof(double));
        for (int t = 0; t < T_; t++) {
          const size_t row = (size_t)b * T_ + t, k = row * H + h;
          const double ig = ca->ig[k], fg = ca->fg[k];
          const double lf = fg >= 0 ? -log1p(exp(-fg)) : fg - log1p(exp(fg));
          const double m_new = lf + m >= ig ? lf + m : ig;
          n_f += lf + m >= ig, n_i += lf + m < ig;
          const double fp = exp(lf + m - m_new), ip = exp(ig - m_new);
          double den = 0;
          for (int p = 0; p < P; p++) {
            nv[p] = fp * nv[p] + ip * ca->kf[(row * G + g) * P + p];
            den += ca->qf[(row * H + h) * P + p] * nv[p];
          }
          den /= sqrt((double)P);
          m = m_new;
          n_den += fabs(den) >= exp(-m), n_exp += fabs(den) < exp(-m);
          big_i += fabs(ig) >= 5, small_i += fabs(ig) < 1, big_f += fabs(fg) >= 5, small_f += fabs(fg) < 1;
        }
      }
  }
  free(nv);
  CHECKF(n_i > 0 && n_f > 0, "%s: stabiliser branches: input %d, forget %d", tag, n_i, n_f);
  if (s->hy.normalizer == XD_NORM_XLSTM)
    CHECKF(n_den > 0 && n_exp > 0, "%s: max normaliser branches: |den| %d, exp(-m) %d", tag, n_den, n_exp);
  CHECKF(big_i && small_i && big_f && small_f, "%s: gate pre-activations |i~|>=5: %d, <1: %d; |f~|>=5: %d, <1: %d", tag,
         big_i, small_i, big_f, small_f);
  fprintf(stderr, "  %s: m branches input/forget %d/%d, normaliser |den|/exp(-m) %d/%d, |i~|>=5 %d <1 %d, |f~|>=5 %d <1 %d\n",
          tag, n_i, n_f, n_den, n_exp, big_i, small_i, big_f, small_f);
}

/* Worst errors per tensor kind (the name without "model.layers.<l>."), over layers. */
typedef struct {
  char kind[96];
  double dir, elem;
} kind_err;

static void note(kind_err *k, int *nk, const char *name, double dir, double elem) {
  const char *p = name;
  if (strncmp(p, "model.layers.", 13) == 0) {
    p += 13;
    while (*p && *p != '.') p++;
    if (*p) p++;
  }
  int i = 0;
  while (i < *nk && strcmp(k[i].kind, p) != 0) i++;
  if (i == *nk) {
    snprintf(k[i].kind, sizeof k[i].kind, "%s", p);
    k[i].dir = k[i].elem = 0;
    (*nk)++;
  }
  k[i].dir = fmax(k[i].dir, dir);
  k[i].elem = fmax(k[i].elem, elem);
}

static void check_family(const char *family, xd_mlstm_normalizer norm) {
  char sdir[600], tag[96];
  snprintf(tag, sizeof tag, "%s/%s", family, xd_normalizer_name(norm));
  if (test_make_student(family, 3, 1, 4, sdir, sizeof sdir) != 0) { CHECKF(0, "%s: no student", family); return; }
  xd_err e;
  xd_student s;
  if (xd_student_load(&s, sdir, XD_STUDENT_TRAIN_ALL, &e) != 0) { CHECKF(0, "%s", e.msg); return; }
  s.hy.normalizer = norm;
  const int L = s.cfg.n_layers, H = s.cfg.n_heads, D = s.cfg.hidden, d = s.cfg.head_dim, V = s.cfg.vocab;
  const int N = B_ * T_;
  xd_rng r;
  xd_rng_seed(&r, 7);
  int32_t ids[B_ * T_];
  for (int i = 0; i < N; i++) ids[i] = (int32_t)(xd_rng_u64(&r) % (uint64_t)V);

  /* Hybrid parameters away from init (its zeros hide paths). The gate weights are scaled to
   * the layer's input x (whose size depends on the family: normed, or OLMo's raw residual) so
   * x.w has std ~1.5; the biases put each head's i~ / f~ around -7 .. 8: large and small. */
  xd_student_train_acts a32;
  xd_student_train_acts_alloc(&a32, &s, B_, T_);
  float *logits32 = xd_malloc((size_t)N * V * sizeof(float));
  CHECK(xd_student_forward_train(&s, &a32, ids, logits32, &e) == 0);
  static const float bi[4] = {-7.0f, -0.5f, 2.0f, 8.0f}, bf[4] = {-4.0f, 0.25f, 3.0f, 8.0f};
  for (int l = 0; l < L; l++) {
    double ss = 0;
    for (size_t i = 0; i < (size_t)N * D; i++) ss += (double)a32.layer[l].x[i] * a32.layer[l].x[i];
    const double xs = 1.5 / (sqrt(ss / ((double)N * D)) * sqrt((double)D));
    xd_hybrid_layer *Y = &s.hl[l];
    for (int i = 0; i < H * D; i++) {
      Y->w_i[i] = (float)(xs * xd_rng_normal(&r));
      Y->w_f[i] = (float)(xs * xd_rng_normal(&r));
    }
    for (int h = 0; h < H; h++) {
      Y->b_i[h] = bi[(h + l) % 4];
      Y->b_f[h] = bf[(h + 2 * l) % 4];
      Y->b_o[h] = 0.3f * (float)xd_rng_normal(&r);
    }
    for (int i = 0; i < H * 3 * d; i++) Y->w_o[i] = 0.2f * (float)xd_rng_normal(&r);
    const int pw = xd_hybrid_p_width(&s.hy);
    for (int i = 0; i < H * d * pw; i++) Y->P_q[i] += 0.3f * (float)xd_rng_normal(&r);
    for (int i = 0; i < s.cfg.n_kv_heads * d * pw; i++) Y->P_k[i] += 0.3f * (float)xd_rng_normal(&r);
  }

  xd_student_f64 s64;
  xd_student_f64_from(&s64, &s);
  xd_student_train_acts_f64 a;
  xd_student_train_acts_alloc_f64(&a, &s64, B_, T_);
  const size_t n = (size_t)N * V;
  double *R = xd_malloc(n * sizeof(double)), *logits = xd_malloc(n * sizeof(double));
  float *R32 = xd_malloc(n * sizeof(float));
  for (size_t i = 0; i < n; i++) {
    R32[i] = (float)(xd_rng_normal(&r) / N);
    R[i] = R32[i];
  }
  loss_ctx c = {&s64, &a, ids, R, logits, n};
  loss_of(&c);
  check_gates_exercise_stabiliser(tag, &s64, &a);
  xd_student_f64_zero_grad(&s64);
  xd_student_backward_f64(&s64, &a, ids, R);

  /* The fp32 product path at the same weights: its gradient against the float64 one. */
  CHECK(xd_student_forward_train(&s, &a32, ids, logits32, &e) == 0);
  xd_params_zero_grad(&s.params);
  xd_student_backward(&s, &a32, ids, R32);
  double worst32 = 0;

  kind_err kinds[64];
  int nk = 0, bad = 0;
  double worst = 0;
  for (int t = 0; t < s64.n; t++) {
    const char *name = s.params.t[t].name;
    double *w = s64.data[t];
    const double *g = s64.grad[t];
    const size_t m = s64.numel[t];
    double wn = 0, gn = 0, gmax = 0;
    size_t imax = 0;
    for (size_t i = 0; i < m; i++) {
      wn += w[i] * w[i];
      gn += g[i] * g[i];
      if (fabs(g[i]) > gmax) gmax = fabs(g[i]), imax = i;
    }
    const double h = 1e-4 * fmax(sqrt(wn / (double)m), 1.0);
    /* directions */
    double dir_err = 0;
    double *u = xd_malloc(m * sizeof(double));
    for (int k = 0; k < N_DIRS; k++) {
      double gu = 0, un = 0;
      for (size_t i = 0; i < m; i++) {
        u[i] = xd_rng_normal(&r);
        un += u[i] * u[i];
      }
      for (size_t i = 0; i < m; i++) {
        u[i] /= sqrt(un); /* |u| = 1: no element moves further than in the element checks */
        gu += g[i] * u[i];
      }
      const double fd = fd_dir(&c, w, u, m, h);
      dir_err = fmax(dir_err, fabs(fd - gu) / fmax(fmax(sqrt(gn), fabs(fd)), 1e-300));
    }
    /* elements: the largest |g|, then random ones (embedding: rows of the ids) */
    double emax = 0, dmax = 0;
    memset(u, 0, m * sizeof(double));
    for (int k = 0; k <= N_ELEMS; k++) {
      size_t i = imax;
      if (k > 0) {
        i = (size_t)(xd_rng_u64(&r) % m);
        if (s.params.t[t].ndim == 2 && (size_t)s.params.t[t].shape[0] == (size_t)V && m == (size_t)V * D)
          i = (size_t)ids[xd_rng_u64(&r) % (uint64_t)N] * D + (size_t)(xd_rng_u64(&r) % (uint64_t)D);
      }
      u[i] = 1;
      const double fd = fd_dir(&c, w, u, m, h);
      u[i] = 0;
      emax = fmax(emax, fabs(fd));
      dmax = fmax(dmax, fabs(fd - g[i]));
    }
    const double elem_err = dmax / fmax(fmax(emax, gmax), 1e-300);
    free(u);
    if (!(dir_err <= TOL && elem_err <= TOL)) {
      CHECKF(0, "%s: %s: dir %.3g elem %.3g (|g| %.3g)", tag, name, dir_err, elem_err, sqrt(gn));
      bad++;
    }
    CHECKF(gmax > 0, "%s: %s: gradient identically zero (a path not exercised)", tag, name);
    worst = fmax(worst, fmax(dir_err, elem_err));
    note(kinds, &nk, name, dir_err, elem_err);
    /* fp32 vs float64 backward: max-norm relative error of the whole tensor's gradient */
    const float *g32 = xd_params_grad(&s.params, t);
    worst32 = fmax(worst32, test_max_rel_err(g32, g, m));
  }
  fprintf(stderr, "  %s: %d tensors, %d off, worst %.2g; fp32 backward vs f64: %.2g\n", tag, s64.n, bad, worst,
          worst32);
  for (int i = 0; i < nk; i++) fprintf(stderr, "    %-48s dir %.1e  elem %.1e\n", kinds[i].kind, kinds[i].dir, kinds[i].elem);
  CHECKF(worst32 <= 1e-4, "%s: fp32 backward vs the float64 one: %.3g", tag, worst32);
  free(R);
  free(R32);
  free(logits);
  free(logits32);
  xd_student_train_acts_free_f64(&a);
  xd_student_train_acts_free(&a32);
  xd_student_f64_free(&s64);
  xd_student_free(&s);
}

static void test_llama_gqa(void) { check_family("llama-gqa", XD_NORM_PAPER); check_family("llama-gqa", XD_NORM_XLSTM); }
static void test_llama_bias_untied(void) { check_family("llama-mha-bias", XD_NORM_PAPER); }
static void test_qwen2(void) { check_family("qwen2", XD_NORM_XLSTM); }
static void test_qwen3(void) { check_family("qwen3", XD_NORM_PAPER); check_family("qwen3", XD_NORM_XLSTM); }
static void test_olmo2(void) { check_family("olmo2", XD_NORM_PAPER); check_family("olmo2", XD_NORM_XLSTM); }
static void test_olmo3(void) { check_family("olmo3", XD_NORM_PAPER); }

int main(void) {
  RUN(test_llama_gqa);
  RUN(test_llama_bias_untied);
  RUN(test_qwen2);
  RUN(test_qwen3);
  RUN(test_olmo2);
  RUN(test_olmo3);
  return test_finish();
}
