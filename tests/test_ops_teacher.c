/* The teacher's CPU ops (src/ops/cpu: matmul, rmsnorm, rope, swiglu, embedding,
 * causal_attention): each fp32 forward against a float64 reference written here, and each
 * backward against central finite differences of that float64 reference, L = sum(g * f(x)) with
 * a random upstream gradient g. Backward outputs documented as accumulating (+=) start from
 * random values, so the accumulation is tested too. */
#include "test.h"
#include "core/core.h"
#include "ops/cpu/causal_attention.h"
#include "ops/cpu/embedding.h"
#include "ops/cpu/matmul.h"
#include "ops/cpu/rmsnorm.h"
#include "ops/cpu/rope.h"
#include "ops/cpu/swiglu.h"
#include "ops/cpu/threads.h"

#define TOL_FWD 2e-6 /* fp32 vs double, relative to max |ref| */
#define TOL_BWD 1e-4 /* fp32 analytic vs double finite differences */
#define FD_H 1e-5

static xd_rng rng;

static float *randf(size_t n, double scale) {
  float *p = malloc(n * sizeof(float));
  for (size_t i = 0; i < n; i++) p[i] = (float)(scale * xd_rng_normal(&rng));
  return p;
}
static double *to_d(const float *x, size_t n) {
  double *p = malloc(n * sizeof(double));
  for (size_t i = 0; i < n; i++) p[i] = x[i];
  return p;
}

/* A float64 loss L(ctx) over parameters stored in double arrays inside ctx. */
typedef double (*loss_fn)(void *ctx);

/* Central differences of L w.r.t. every entry of p[n] (p lives in ctx); returns grad[n]. */
static double *fd_grad(loss_fn L, void *ctx, double *p, size_t n) {
  double *g = malloc(n * sizeof(double));
  for (size_t i = 0; i < n; i++) {
    const double s = p[i];
    p[i] = s + FD_H;
    const double lp = L(ctx);
    p[i] = s - FD_H;
    const double lm = L(ctx);
    p[i] = s;
    g[i] = (lp - lm) / (2 * FD_H);
  }
  return g;
}

/* Check analytic grad (after subtracting the random start `init`) against fd. */
static void check_grad(const char *what, const float *got, const float *init, const double *fd, size_t n) {
  float *d = calloc(n, sizeof(float));
  for (size_t i = 0; i < n; i++) d[i] = got[i] - (init ? init[i] : 0.0f);
  const double err = test_max_rel_err(d, fd, n);
  double amax = 0;
  for (size_t i = 0; i < n; i++) amax = fmax(amax, fabs(fd[i]));
  CHECKF(err <= TOL_BWD && amax > 1e-3, "%s: grad rel err %.3g (max |grad| %.3g)", what, err, amax);
  free(d);
}

static float *copyf(const float *x, size_t n) {
  float *p = malloc(n * sizeof(float));
  memcpy(p, x, n * sizeof(float));
  return p;
}

/* ---- matmul ---------------------------------------------------------------- */
typedef struct { int N, I, O; double *x, *w, *b, *g; } mm_ctx;
static void mm_ref(const mm_ctx *c, double *out) {
  for (int n = 0; n < c->N; n++)
    for (int o = 0; o < c->O; o++) {
      double s = c->b[o];
      for (int i = 0; i < c->I; i++) s += c->x[n * c->I + i] * c->w[o * c->I + i];
      out[n * c->O + o] = s;
    }
}
static double mm_loss(void *p) {
  mm_ctx *c = p;
  double *o = malloc((size_t)c->N * c->O * sizeof(double)), L = 0;
  mm_ref(c, o);
  for (int i = 0; i < c->N * c->O; i++) L += c->g[i] * o[i];
  free(o);
  return L;
}
static void test_matmul(void) {
  const int N = 5, I = 7, O = 6;
  float *x = randf(N * I, 1), *w = randf(O * I, 1), *b = randf(O, 1), *g = randf(N * O, 1), *out = randf(N * O, 1);
  mm_ctx c = {N, I, O, to_d(x, N * I), to_d(w, O * I), to_d(b, O), to_d(g, N * O)};
  double *ref = malloc(N * O * sizeof(double));
  mm_ref(&c, ref);
  matmul_forward(out, x, w, b, N, I, O);
  CHECK(test_max_rel_err(out, ref, N * O) <= TOL_FWD);
  matmul_forward(out, x, w, NULL, N, I, O); /* no bias */
  for (int n = 0; n < N; n++)
    for (int o = 0; o < O; o++) ref[n * O + o] -= b[o];
  CHECK(test_max_rel_err(out, ref, N * O) <= TOL_FWD);
  float *dx0 = randf(N * I, 1), *dw0 = randf(O * I, 1), *db0 = randf(O, 1);
  float *dx = copyf(dx0, N * I), *dw = copyf(dw0, O * I), *db = copyf(db0, O);
  matmul_backward(dx, dw, db, g, x, w, N, I, O);
  double *fx = fd_grad(mm_loss, &c, c.x, N * I), *fw = fd_grad(mm_loss, &c, c.w, O * I), *fb = fd_grad(mm_loss, &c, c.b, O);
  check_grad("matmul dx", dx, dx0, fx, N * I);
  check_grad("matmul dw", dw, dw0, fw, O * I);
  check_grad("matmul db", db, db0, fb, O);
  free(x); free(w); free(b); free(g); free(out); free(ref); free(dx0); free(dw0); free(db0); free(dx); free(dw); free(db);
  free(fx); free(fw); free(fb); free(c.x); free(c.w); free(c.b); free(c.g);
}

/* ---- rmsnorm ----------------------------------------------------------------- */
typedef struct { int N, C; double eps; double *x, *w, *g; } rn_ctx;
static void rn_ref(const rn_ctx *c, double *out) {
  for (int n = 0; n < c->N; n++) {
    double ss = 0;
    for (int i = 0; i < c->C; i++) ss += c->x[n * c->C + i] * c->x[n * c->C + i];
    const double r = 1 / sqrt(ss / c->C + c->eps);
    for (int i = 0; i < c->C; i++) out[n * c->C + i] = c->w[i] * c->x[n * c->C + i] * r;
  }
}
static double rn_loss(void *p) {
  rn_ctx *c = p;
  double *o = malloc((size_t)c->N * c->C * sizeof(double)), L = 0;
  rn_ref(c, o);
  for (int i = 0; i < c->N * c->C; i++) L += c->g[i] * o[i];
  free(o);
  return L;
}
static void test_rmsnorm(void) {
  const int N = 4, C = 16;
  const float eps = 1e-5f;
  float *x = randf(N * C, 2), *w = randf(C, 1), *g = randf(N * C, 1), *out = randf(N * C, 1), rstd[4];
  rn_ctx c = {N, C, eps, to_d(x, N * C), to_d(w, C), to_d(g, N * C)};
  double *ref = malloc(N * C * sizeof(double));
  rn_ref(&c, ref);
  rmsnorm_forward(out, rstd, x, w, N, C, eps);
  CHECK(test_max_rel_err(out, ref, N * C) <= TOL_FWD);
  float *in_place = copyf(x, N * C);
  rmsnorm_forward(in_place, NULL, in_place, w, N, C, eps);
  CHECK(memcmp(in_place, out, N * C * sizeof(float)) == 0);
  float *dx0 = randf(N * C, 1), *dw0 = randf(C, 1), *dx = copyf(dx0, N * C), *dw = copyf(dw0, C);
  rmsnorm_backward(dx, dw, g, x, w, rstd, N, C);
  double *fx = fd_grad(rn_loss, &c, c.x, N * C), *fw = fd_grad(rn_loss, &c, c.w, C);
  check_grad("rmsnorm dx", dx, dx0, fx, N * C);
  check_grad("rmsnorm dw", dw, dw0, fw, C);
  free(x); free(w); free(g); free(out); free(ref); free(in_place); free(dx0); free(dw0); free(dx); free(dw); free(fx); free(fw);
  free(c.x); free(c.w); free(c.g);
}

/* ---- rope ---------------------------------------------------------------------- */
typedef struct { int N, nh, d; const int *pos; const float *inv; double *x, *g; } rp_ctx;
static void rp_ref(const rp_ctx *c, double *out) {
  const int half = c->d / 2;
  for (int n = 0; n < c->N; n++)
    for (int h = 0; h < c->nh; h++)
      for (int i = 0; i < half; i++) {
        const double a = (double)(float)((float)c->pos[n] * c->inv[i]);
        const double *x = c->x + (n * c->nh + h) * c->d;
        double *o = out + (n * c->nh + h) * c->d;
        o[i] = x[i] * cos(a) - x[i + half] * sin(a);
        o[i + half] = x[i + half] * cos(a) + x[i] * sin(a);
      }
}
static double rp_loss(void *p) {
  rp_ctx *c = p;
  const size_t n = (size_t)c->N * c->nh * c->d;
  double *o = malloc(n * sizeof(double)), L = 0;
  rp_ref(c, o);
  for (size_t i = 0; i < n; i++) L += c->g[i] * o[i];
  free(o);
  return L;
}
static void test_rope(void) {
  const int N = 5, nh = 3, d = 8, half = 4, P = 40;
  const int pos[5] = {0, 3, 17, 39, 8};
  xd_rope_config rc = {.kind = XD_ROPE_DEFAULT, .theta = 10000.0, .factor = 1};
  float inv[4], sc, *ct = malloc(P * half * sizeof(float)), *st = malloc(P * half * sizeof(float));
  rope_inv_freq(&rc, d, 2048, 0, inv, &sc);
  CHECK(sc == 1.0f);
  for (int i = 0; i < half; i++) CHECK_REL(inv[i], 1.0 / pow(10000.0, 2.0 * i / d), 1e-6, 0);
  rope_table(ct, st, inv, sc, P, half);
  const size_t n = (size_t)N * nh * d;
  float *x = randf(n, 1), *g = randf(n, 1), *out = malloc(n * sizeof(float));
  rp_ctx c = {N, nh, d, pos, inv, to_d(x, n), to_d(g, n)};
  double *ref = malloc(n * sizeof(double));
  rp_ref(&c, ref);
  rope_forward(out, x, ct, st, pos, N, nh, d);
  CHECK(test_max_rel_err(out, ref, n) <= TOL_FWD);
  float *dx = malloc(n * sizeof(float));
  rope_backward(dx, g, ct, st, pos, N, nh, d);
  double *fx = fd_grad(rp_loss, &c, c.x, n);
  check_grad("rope dx", dx, NULL, fx, n);
  rope_forward(x, x, ct, st, pos, N, nh, d); /* in place */
  CHECK(memcmp(x, out, n * sizeof(float)) == 0);
  free(ct); free(st); free(x); free(g); free(out); free(ref); free(dx); free(fx); free(c.x); free(c.g);
}

/* ---- swiglu -------------------------------------------------------------------- */
typedef struct { int n; double *a, *b, *g; } sw_ctx;
static double sw_loss(void *p) {
  sw_ctx *c = p;
  double L = 0;
  for (int i = 0; i < c->n; i++) L += c->g[i] * c->a[i] / (1 + exp(-c->a[i])) * c->b[i];
  return L;
}
static void test_swiglu(void) {
  const int n = 64;
  float *a = randf(n, 3), *b = randf(n, 1), *g = randf(n, 1), *out = malloc(n * sizeof(float));
  sw_ctx c = {n, to_d(a, n), to_d(b, n), to_d(g, n)};
  double *ref = malloc(n * sizeof(double));
  for (int i = 0; i < n; i++) ref[i] = c.a[i] / (1 + exp(-c.a[i])) * c.b[i];
  swiglu_forward(out, a, b, n);
  CHECK(test_max_rel_err(out, ref, n) <= TOL_FWD);
  float *da0 = randf(n, 1), *db0 = randf(n, 1), *da = copyf(da0, n), *db = copyf(db0, n);
  swiglu_backward(da, db, g, a, b, n);
  double *fa = fd_grad(sw_loss, &c, c.a, n), *fb = fd_grad(sw_loss, &c, c.b, n);
  check_grad("swiglu dgate", da, da0, fa, n);
  check_grad("swiglu dup", db, db0, fb, n);
  free(a); free(b); free(g); free(out); free(ref); free(da0); free(db0); free(da); free(db); free(fa); free(fb);
  free(c.a); free(c.b); free(c.g);
}

/* ---- embedding ------------------------------------------------------------------ */
typedef struct { int N, D; const int32_t *ids; double *tab, *g; } em_ctx;
static double em_loss(void *p) {
  em_ctx *c = p;
  double L = 0;
  for (int n = 0; n < c->N; n++)
    for (int i = 0; i < c->D; i++) L += c->g[n * c->D + i] * c->tab[c->ids[n] * c->D + i];
  return L;
}
static void test_embedding(void) {
  const int V = 10, D = 5, N = 7;
  const int32_t ids[7] = {3, 9, 3, 0, 7, 3, 1}; /* repeats accumulate */
  float *tab = randf(V * D, 1), *g = randf(N * D, 1), *out = malloc(N * D * sizeof(float));
  embedding_forward(out, ids, tab, N, D);
  int ok = 1;
  for (int n = 0; n < N; n++) ok &= memcmp(out + n * D, tab + ids[n] * D, D * sizeof(float)) == 0;
  CHECK(ok);
  em_ctx c = {N, D, ids, to_d(tab, V * D), to_d(g, N * D)};
  float *dt0 = randf(V * D, 1), *dt = copyf(dt0, V * D);
  embedding_backward(dt, g, ids, N, D);
  double *ft = fd_grad(em_loss, &c, c.tab, V * D);
  check_grad("embedding dtable", dt, dt0, ft, V * D);
  free(tab); free(g); free(out); free(dt0); free(dt); free(ft); free(c.tab); free(c.g);
}

/* ---- causal attention -------------------------------------------------------------- */
typedef struct { causal_attention_dims a; double *q, *k, *v, *g; } at_ctx;
/* Straight from the definition, k/v contiguous [B,Tk,G,d]. */
static void at_ref(const at_ctx *c, double *out) {
  const causal_attention_dims *a = &c->a;
  const int H = a->H, G = a->G, d = a->d, rep = H / G;
  double *s = malloc((size_t)a->Tk * sizeof(double));
  for (int b = 0; b < a->B; b++)
    for (int i = 0; i < a->Tq; i++)
      for (int h = 0; h < H; h++) {
        const int t = a->q_offset + i, g = h / rep;
        const double *q = c->q + ((size_t)(b * a->Tq + i) * H + h) * d;
        double mx = -1e300, sum = 0;
        for (int j = 0; j < a->Tk; j++) {
          const int vis = j <= t && (a->window <= 0 || t - j < a->window);
          if (!vis) { s[j] = -1e300; continue; }
          const double *k = c->k + ((size_t)(b * a->Tk + j) * G + g) * d;
          double dot = 0;
          for (int e = 0; e < d; e++) dot += q[e] * k[e];
          s[j] = dot / sqrt((double)d);
          mx = fmax(mx, s[j]);
        }
        for (int j = 0; j < a->Tk; j++) { s[j] = s[j] > -1e299 ? exp(s[j] - mx) : 0; sum += s[j]; }
        double *o = out + ((size_t)(b * a->Tq + i) * H + h) * d;
        for (int e = 0; e < d; e++) {
          double acc = 0;
          for (int j = 0; j < a->Tk; j++) acc += s[j] * c->v[((size_t)(b * a->Tk + j) * G + g) * d + e];
          o[e] = acc / sum;
        }
      }
  free(s);
}
static double at_loss(void *p) {
  at_ctx *c = p;
  const size_t n = (size_t)c->a.B * c->a.Tq * c->a.H * c->a.d;
  double *o = malloc(n * sizeof(double)), L = 0;
  at_ref(c, o);
  for (size_t i = 0; i < n; i++) L += c->g[i] * o[i];
  free(o);
  return L;
}
static void attention_case(int Tq, int Tk, int window, int fd) {
  const int B = 2, H = 4, G = 2, d = 8;
  causal_attention_dims a = {.B = B, .Tq = Tq, .Tk = Tk, .H = H, .G = G, .d = d, .q_offset = Tk - Tq, .window = window,
                             .kv_bstride = (size_t)Tk * G * d};
  const size_t nq = (size_t)B * Tq * H * d, nk = (size_t)B * Tk * G * d;
  float *q = randf(nq, 1.5), *k = randf(nk, 1.5), *v = randf(nk, 1), *g = randf(nq, 1), *out = malloc(nq * sizeof(float));
  const size_t ns = causal_attention_scratch(&a) > causal_attention_backward_scratch(&a) ? causal_attention_scratch(&a) : causal_attention_backward_scratch(&a);
  float *scr = malloc(ns * sizeof(float));
  at_ctx c = {a, to_d(q, nq), to_d(k, nk), to_d(v, nk), to_d(g, nq)};
  double *ref = malloc(nq * sizeof(double));
  at_ref(&c, ref);
  causal_attention_forward(out, q, k, v, &a, scr, ns);
  const double fe = test_max_rel_err(out, ref, nq);
  CHECKF(fe <= TOL_FWD, "attention Tq=%d Tk=%d window=%d: forward rel err %.3g", Tq, Tk, window, fe);
  if (!fd) { /* forward only (large cases: finite differences would be slow) */
    free(q); free(k); free(v); free(g); free(out); free(scr); free(ref); free(c.q); free(c.k); free(c.v); free(c.g);
    return;
  }
  float *dq = randf(nq, 1), *dk0 = randf(nk, 1), *dv0 = randf(nk, 1), *dk = copyf(dk0, nk), *dv = copyf(dv0, nk);
  causal_attention_backward(dq, dk, dv, g, q, k, v, &a, scr);
  double *fq = fd_grad(at_loss, &c, c.q, nq), *fk = fd_grad(at_loss, &c, c.k, nk), *fv = fd_grad(at_loss, &c, c.v, nk);
  check_grad("attention dq", dq, NULL, fq, nq);
  check_grad("attention dk", dk, dk0, fk, nk);
  check_grad("attention dv", dv, dv0, fv, nk);
  free(q); free(k); free(v); free(g); free(out); free(scr); free(ref); free(dq); free(dk0); free(dv0); free(dk); free(dv);
  free(fq); free(fk); free(fv); free(c.q); free(c.k); free(c.v); free(c.g);
}
static void test_attention(void) {
  attention_case(6, 6, 0, 1);    /* full causal */
  attention_case(7, 7, 3, 1);    /* sliding window */
  attention_case(2, 7, 0, 1);    /* decoding: 2 new queries against 7 cached keys */
  attention_case(1, 9, 4, 1);    /* one new query with a window */
  attention_case(150, 150, 0, 0); /* three query blocks (64 + 64 + 22) */
  attention_case(70, 75, 9, 0);   /* blocks with an offset and a window */
}

/* The window mask matches transformers': key s visible from t iff t - W < s <= t. */
static void test_attention_window_mask(void) {
  const int T = 6, W = 2, d = 2;
  causal_attention_dims a = {.B = 1, .Tq = T, .Tk = T, .H = 1, .G = 1, .d = d, .window = W, .kv_bstride = (size_t)T * d};
  float q[12] = {0}, k[12] = {0}, v[12], out[12], scr[36];
  for (int t = 0; t < T; t++) { v[t * d] = (float)t; v[t * d + 1] = 1; }
  causal_attention_forward(out, q, k, v, &a, scr, 36); /* equal scores: mean of visible v (one thread's block) */
  for (int t = 0; t < T; t++) {
    const int lo = t - W + 1 > 0 ? t - W + 1 : 0;
    CHECK_REL(out[t * d], (lo + t) / 2.0, 1e-6, 1e-6);
    CHECK_REL(out[t * d + 1], 1.0, 1e-6, 1e-6);
  }
}

int main(void) {
  xd_rng_seed(&rng, 20261127);
  RUN(test_matmul);
  RUN(test_rmsnorm);
  RUN(test_rope);
  RUN(test_swiglu);
  RUN(test_embedding);
  RUN(test_attention);
  RUN(test_attention_window_mask);
  /* again with the threading policy of the CLI: OpenMP threads each calling 1-thread BLAS on a
   * block (matmul column blocks, attention (batch, head, query-block) items) */
  xd_set_threads(2);
  fprintf(stderr, "-- split-BLAS threading (%d threads)\n", xd_blas_split_threads());
  CHECK(xd_blas_split_threads() == 2);
  RUN(test_matmul);
  RUN(test_attention);
  RUN(test_attention_window_mask);
  return test_finish();
}
