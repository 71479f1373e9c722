/* Whole-student backward (stage II trains every parameter): for every tensor of tiny students
 * of several families, the analytic directional derivative <grad, u> against a central finite
 * difference along a random u. fp32 model, so the tolerance is loose (the ops are checked in
 * double one by one in their own tests; this checks the wiring: every path, every tensor). */
#include "test.h"
#include "model/student/student_init.h"
#include "model/student/student_train.h"

static int make_student(const char *family, char *out, size_t outn) {
  char tdir[512];
  snprintf(tdir, sizeof tdir, "tests/fixtures/teachers/%s/fp32", family);
  if (!xd_is_dir(tdir)) return -1;
  xd_err e;
  xd_model_config c;
  if (xd_config_load(&c, tdir, &e) != 0) return -1;
  xd_hybrid_config h;
  xd_hybrid_defaults(&h, c.head_dim);
  h.window = 3;
  h.sinks = 1;
  h.chunk = 4;
  snprintf(out, outn, "%s/%s", test_tmpdir("stbwd"), family);
  const xd_student_dims dm = {c.n_layers, c.hidden, c.n_heads, c.n_kv_heads, c.head_dim};
  return xd_student_init(tdir, &dm, &h, out, &e);
}

static double loss_of(const xd_student *s, xd_student_train_acts *a, const int32_t *ids, const float *R, float *logits, size_t n) {
  xd_err e;
  xd_student_forward_train(s, a, ids, logits, &e);
  double L = 0;
  for (size_t i = 0; i < n; i++) L += (double)logits[i] * R[i];
  return L;
}

static void check_family(const char *family) {
  char sdir[600];
  if (make_student(family, sdir, sizeof sdir) != 0) { CHECKF(0, "%s: no student", family); return; }
  xd_err e;
  xd_student s;
  CHECKF(xd_student_load(&s, sdir, XD_STUDENT_TRAIN_ALL, &e) == 0, "%s", e.msg);
  xd_rng r;
  xd_rng_seed(&r, 42);
  /* Non-trivial hybrid parameters (the init zeros would hide paths). */
  for (int l = 0; l < s.cfg.n_layers; l++) {
    const int H = s.cfg.n_heads, D = s.cfg.hidden, d = s.cfg.head_dim;
    for (int i = 0; i < H * D; i++) { s.hl[l].w_i[i] = 0.1f * (float)xd_rng_normal(&r); s.hl[l].w_f[i] = 0.1f * (float)xd_rng_normal(&r); }
    for (int i = 0; i < H * 3 * d; i++) s.hl[l].w_o[i] = 0.2f * (float)xd_rng_normal(&r);
    for (int i = 0; i < H; i++) s.hl[l].b_o[i] = 0;
  }
  const int B = 2, T = 7, N = B * T, V = s.cfg.vocab;
  int32_t ids[14];
  for (int i = 0; i < N; i++) ids[i] = (int32_t)(xd_rng_u64(&r) % (uint64_t)V);
  xd_student_train_acts a;
  xd_student_train_acts_alloc(&a, &s, B, T);
  const size_t n = (size_t)N * V;
  float *R = malloc(n * sizeof(float)), *logits = malloc(n * sizeof(float));
  for (size_t i = 0; i < n; i++) R[i] = (float)xd_rng_normal(&r) / (float)N;
  loss_of(&s, &a, ids, R, logits, n);
  xd_params_zero_grad(&s.params);
  xd_student_backward(&s, &a, ids, R);
  int bad = 0;
  for (int t = 0; t < s.params.n; t++) {
    float *w = xd_params_data(&s.params, t), *g = xd_params_grad(&s.params, t);
    const size_t m = s.params.t[t].numel;
    float *u = malloc(m * sizeof(float)), *w0 = malloc(m * sizeof(float));
    memcpy(w0, w, m * sizeof(float));
    double gu = 0, wn = 0;
    for (size_t i = 0; i < m; i++) { u[i] = (float)xd_rng_normal(&r); gu += (double)g[i] * u[i]; wn += (double)w0[i] * w0[i]; }
    const double scale = fmax(sqrt(wn / (double)m), 1.0);
    /* Central differences at h and h/2 combined by Richardson extrapolation: the O(h^2) error
     * cancels, so h can stay large enough to be clear of fp32 rounding noise. */
    double fdh[2];
    for (int k = 0; k < 2; k++) {
      const float h = (float)(2e-2 * scale) / (float)(1 << k);
      for (size_t i = 0; i < m; i++) w[i] = w0[i] + h * u[i];
      const double lp = loss_of(&s, &a, ids, R, logits, n);
      for (size_t i = 0; i < m; i++) w[i] = w0[i] - h * u[i];
      const double lm = loss_of(&s, &a, ids, R, logits, n);
      fdh[k] = (lp - lm) / (2.0 * h);
    }
    memcpy(w, w0, m * sizeof(float));
    const double fd = (4.0 * fdh[1] - fdh[0]) / 3.0;
    /* Relative 2%, plus an absolute floor: b_i's gradient is ~0 by design (the paper normaliser
     * is invariant to scaling all input gates of a head), so its FD is pure rounding noise. */
    if (!(fabs(fd - gu) <= 2e-2 * fmax(fabs(fd), fabs(gu)) + 2e-3)) {
      CHECKF(0, "%s: %s: fd %.6g vs analytic %.6g", family, s.params.t[t].name, fd, gu);
      bad++;
    }
    free(u);
    free(w0);
  }
  fprintf(stderr, "  %s: %d tensors checked, %d off\n", family, s.params.n, bad);
  free(R);
  free(logits);
  xd_student_train_acts_free(&a);
  xd_student_free(&s);
}

static void test_llama(void) { check_family("llama-gqa"); }
static void test_llama_bias_untied(void) { check_family("llama-mha-bias"); }
static void test_qwen2(void) { check_family("qwen2"); }
static void test_qwen3(void) { check_family("qwen3"); }
static void test_olmo2(void) { check_family("olmo2"); }

int main(void) {
  RUN(test_llama);
  RUN(test_llama_bias_untied);
  RUN(test_qwen2);
  RUN(test_qwen3);
  RUN(test_olmo2);
  return test_finish();
}
