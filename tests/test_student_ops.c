/* The student's new small ops: feature map (plain and hedgehog), gates (with and without the
 * soft cap) and the mixing gate. Each forward against a direct double reference, each
 * backward against finite differences of its double twin (rel <= 1e-6), the fp32 backward
 * against the double backward, and accumulation (+=) of every gradient. */
#include "grad_check.h"
#include "ops/cpu/feature_map.h"
#include "ops/cpu/gates.h"
#include "ops/cpu/mix.h"

#define FD_TOL 1e-6
#define F32_TOL 5e-6

/* ---- feature map --------------------------------------------------------- */
typedef struct {
  feature_map_shape s;
  double *x, *P, *R; /* R: weights of the scalar loss sum(phi R) */
  size_t nx, nP, ny;
} fm_ctx;

static double fm_loss(void *p) {
  fm_ctx *c = p;
  double *y = xd_malloc(c->ny * 8);
  feature_map_forward_f64(y, c->x, c->P, &c->s);
  double L = 0;
  for (size_t i = 0; i < c->ny; i++) L += y[i] * c->R[i];
  free(y);
  return L;
}

/* phi written out the long way: z = x P per head, softmax over each half. */
static void fm_reference(double *y, const float *x, const float *P, const feature_map_shape *s) {
  const int dp = feature_map_p_cols(s), halves = s->hedgehog ? 2 : 1;
  for (int n = 0; n < s->N; n++)
    for (int h = 0; h < s->Hx; h++)
      for (int half = 0; half < halves; half++) {
        double z[64], mx = -INFINITY, sum = 0;
        for (int j = 0; j < dp; j++) {
          z[j] = 0;
          for (int i = 0; i < s->d; i++)
            z[j] += (double)x[((size_t)n * s->Hx + h) * s->d + i] * P[((size_t)h * s->d + i) * dp + j];
          if (half) z[j] = -z[j];
          mx = fmax(mx, z[j]);
        }
        for (int j = 0; j < dp; j++) sum += exp(z[j] - mx);
        for (int j = 0; j < dp; j++)
          y[((size_t)n * s->Hx + h) * s->d_phi + half * dp + j] = exp(z[j] - mx) / sum;
      }
}

/* fd = 0: shapes big enough to take the OpenMP paths, checked against the reference and the
 * double backward only (finite differences there would be slow). */
static void check_feature_map(feature_map_shape s, uint64_t seed, int fd) {
  xd_rng r;
  xd_rng_seed(&r, seed);
  const int dp = feature_map_p_cols(&s);
  fm_ctx c = {.s = s};
  c.nx = (size_t)s.N * s.Hx * s.d;
  c.nP = (size_t)s.Hx * s.d * dp;
  c.ny = (size_t)s.N * s.Hx * s.d_phi;
  float *x = gc_randf(&r, c.nx, 1.0), *P = gc_randf(&r, c.nP, 0.8), *Rf = gc_randf(&r, c.ny, 1.0);
  c.x = gc_f64(x, c.nx);
  c.P = gc_f64(P, c.nP);
  c.R = gc_f64(Rf, c.ny);
  /* forward vs reference */
  float *y = xd_malloc(c.ny * 4);
  double *yref = xd_malloc(c.ny * 8), *y64 = xd_malloc(c.ny * 8);
  feature_map_forward(y, x, P, &s);
  feature_map_forward_f64(y64, c.x, c.P, &s);
  fm_reference(yref, x, P, &s);
  const double ef = test_max_rel_err(y, yref, c.ny);
  CHECKF(ef <= 1e-5, "fp32 forward rel err %.3g", ef);
  double e64 = 0;
  for (size_t i = 0; i < c.ny; i++) e64 = fmax(e64, fabs(y64[i] - yref[i]));
  CHECKF(e64 <= 1e-12, "f64 forward abs err %.3g", e64);
  /* double backward vs FD, accumulation */
  double *dx = xd_calloc(c.nx, 8), *dP = xd_calloc(c.nP, 8);
  double *dx2 = xd_calloc(c.nx, 8), *dP2 = xd_calloc(c.nP, 8);
  feature_map_backward_f64(dx, dP, c.R, c.x, c.P, y64, &s);
  feature_map_backward_f64(dx2, dP2, c.R, c.x, c.P, y64, &s);
  feature_map_backward_f64(dx2, dP2, c.R, c.x, c.P, y64, &s);
  CHECK(gc_accum_err(dx, dx2, c.nx) <= 1e-12 && gc_accum_err(dP, dP2, c.nP) <= 1e-12);
  const double ex = fd ? gc_fd_err(fm_loss, &c, c.x, c.nx, dx, 1e-5) : 0;
  const double eP = fd ? gc_fd_err(fm_loss, &c, c.P, c.nP, dP, 1e-5) : 0;
  fprintf(stderr, "  feature map (N=%d hedgehog=%d): fwd %.2g, %s dx %.2g dP %.2g", s.N, s.hedgehog, ef, fd ? "FD" : "no FD", ex, eP);
  CHECKF(ex <= FD_TOL && eP <= FD_TOL, "FD rel err dx %.3g dP %.3g", ex, eP);
  /* fp32 backward vs double */
  float *dxf = xd_calloc(c.nx, 4), *dPf = xd_calloc(c.nP, 4);
  feature_map_backward(dxf, dPf, Rf, x, P, y, &s);
  const double fx = test_max_rel_err(dxf, dx, c.nx), fP = test_max_rel_err(dPf, dP, c.nP);
  fprintf(stderr, ", fp32 dx %.2g dP %.2g\n", fx, fP);
  CHECKF(fx <= F32_TOL && fP <= F32_TOL, "fp32 vs f64 backward dx %.3g dP %.3g", fx, fP);
  free(x); free(P); free(Rf); free(c.x); free(c.P); free(c.R); free(y); free(yref); free(y64);
  free(dx); free(dP); free(dx2); free(dP2); free(dxf); free(dPf);
}

static void test_feature_map(void) {
  check_feature_map((feature_map_shape){.N = 9, .Hx = 3, .d = 5, .d_phi = 6, .hedgehog = 0}, 1, 1);
  check_feature_map((feature_map_shape){.N = 7, .Hx = 2, .d = 6, .d_phi = 8, .hedgehog = 1}, 2, 1);
  check_feature_map((feature_map_shape){.N = 33, .Hx = 4, .d = 16, .d_phi = 16, .hedgehog = 0}, 3, 1);
  check_feature_map((feature_map_shape){.N = 1100, .Hx = 4, .d = 16, .d_phi = 16, .hedgehog = 0}, 4, 0);
  check_feature_map((feature_map_shape){.N = 1100, .Hx = 2, .d = 16, .d_phi = 32, .hedgehog = 1}, 5, 0);
}

/* P = identity, d_phi = d: phi(x) = softmax(x) per head. */
static void test_feature_map_identity_init(void) {
  const feature_map_shape s = {.N = 5, .Hx = 2, .d = 8, .d_phi = 8, .hedgehog = 0};
  xd_rng r;
  xd_rng_seed(&r, 4);
  float *x = gc_randf(&r, 5 * 2 * 8, 2.0), P[2 * 8 * 8], y[5 * 2 * 8];
  feature_map_init_identity(P, &s);
  feature_map_forward(y, x, P, &s);
  for (int row = 0; row < 10; row++) {
    double mx = -INFINITY, sum = 0;
    for (int j = 0; j < 8; j++) mx = fmax(mx, x[row * 8 + j]);
    for (int j = 0; j < 8; j++) sum += exp(x[row * 8 + j] - mx);
    for (int j = 0; j < 8; j++) CHECK_REL(y[row * 8 + j], exp(x[row * 8 + j] - mx) / sum, 1e-6, 1e-30);
  }
  free(x);
}

/* ---- gates ------------------------------------------------------------- */
typedef struct {
  gates_shape s;
  double *x, *wi, *bi, *wf, *bf, *Ri, *Rf;
} gate_ctx;

static double gate_loss(void *p) {
  gate_ctx *c = p;
  const size_t ny = (size_t)c->s.N * c->s.H;
  double *ig = xd_malloc(ny * 8), *fg = xd_malloc(ny * 8);
  gates_forward_f64(ig, fg, c->x, c->wi, c->bi, c->wf, c->bf, &c->s);
  double L = 0;
  for (size_t i = 0; i < ny; i++) L += ig[i] * c->Ri[i] + fg[i] * c->Rf[i];
  free(ig); free(fg);
  return L;
}

static void check_gates(gates_shape s, double wscale, uint64_t seed, int fd) {
  xd_rng r;
  xd_rng_seed(&r, seed);
  const int N = s.N, D = s.D, H = s.H;
  const size_t nx = (size_t)N * D, nw = (size_t)H * D, ny = (size_t)N * H;
  float *x = gc_randf(&r, nx, 1.0), *wi = gc_randf(&r, nw, wscale), *wf = gc_randf(&r, nw, wscale);
  float *bi = gc_randf(&r, H, 2.0), *bf = gc_randf(&r, H, 2.0);
  float *Ri = gc_randf(&r, ny, 1.0), *Rf = gc_randf(&r, ny, 1.0);
  gate_ctx c = {.s = s, .x = gc_f64(x, nx), .wi = gc_f64(wi, nw), .bi = gc_f64(bi, H),
                .wf = gc_f64(wf, nw), .bf = gc_f64(bf, H), .Ri = gc_f64(Ri, ny), .Rf = gc_f64(Rf, ny)};
  float *ig = xd_malloc(ny * 4), *fg = xd_malloc(ny * 4);
  double *ig64 = xd_malloc(ny * 8), *fg64 = xd_malloc(ny * 8);
  gates_forward(ig, fg, x, wi, bi, wf, bf, &s);
  gates_forward_f64(ig64, fg64, c.x, c.wi, c.bi, c.wf, c.bf, &s);
  /* direct reference */
  double *iref = xd_malloc(ny * 8), *fref = xd_malloc(ny * 8);
  int capped = 0;
  for (int n = 0; n < N; n++)
    for (int h = 0; h < H; h++) {
      double zi = bi[h], zf = bf[h];
      for (int j = 0; j < D; j++) {
        zi += (double)x[n * D + j] * wi[h * D + j];
        zf += (double)x[n * D + j] * wf[h * D + j];
      }
      if (s.cap > 0) {
        capped += fabs(zi) > s.cap;
        zi = s.cap * tanh(zi / s.cap);
        zf = s.cap * tanh(zf / s.cap);
      }
      iref[n * H + h] = zi;
      fref[n * H + h] = zf;
    }
  if (s.cap > 0) CHECKF(capped > 0, "test inputs never reach the cap");
  const double ef = fmax(test_max_rel_err(ig, iref, ny), test_max_rel_err(fg, fref, ny));
  CHECKF(ef <= 1e-5, "fp32 forward rel err %.3g", ef);
  double e64 = 0;
  for (size_t i = 0; i < ny; i++) e64 = fmax(e64, fmax(fabs(ig64[i] - iref[i]), fabs(fg64[i] - fref[i])));
  CHECKF(e64 <= 1e-10, "f64 forward abs err %.3g", e64);
  /* double backward: once, and twice into other buffers for the accumulation check */
  double *g1[5], *g2[5];
  const size_t len[5] = {nx, nw, H, nw, H};
  for (int i = 0; i < 5; i++) { g1[i] = xd_calloc(len[i], 8); g2[i] = xd_calloc(len[i], 8); }
  gates_backward_f64(g1[0], g1[1], g1[2], g1[3], g1[4], c.Ri, c.Rf, c.x, c.wi, c.wf, ig64, fg64, &s);
  for (int k = 0; k < 2; k++)
    gates_backward_f64(g2[0], g2[1], g2[2], g2[3], g2[4], c.Ri, c.Rf, c.x, c.wi, c.wf, ig64, fg64, &s);
  for (int i = 0; i < 5; i++) CHECK(gc_accum_err(g1[i], g2[i], len[i]) <= 1e-12);
  double *in[5] = {c.x, c.wi, c.bi, c.wf, c.bf};
  const char *names[5] = {"dx", "dw_i", "db_i", "dw_f", "db_f"};
  fprintf(stderr, "  gates (N=%d cap=%g): fwd %.2g, %s", s.N, s.cap, ef, fd ? "FD" : "no FD");
  for (int i = 0; i < 5; i++) {
    const double e = fd ? gc_fd_err(gate_loss, &c, in[i], len[i], g1[i], 1e-5) : 0;
    fprintf(stderr, " %s %.2g", names[i], e);
    CHECKF(e <= FD_TOL, "FD rel err %s %.3g", names[i], e);
  }
  /* fp32 backward vs double */
  float *f[5];
  for (int i = 0; i < 5; i++) f[i] = xd_calloc(len[i], 4);
  gates_backward(f[0], f[1], f[2], f[3], f[4], Ri, Rf, x, wi, wf, ig, fg, &s);
  fprintf(stderr, ", fp32");
  for (int i = 0; i < 5; i++) {
    const double e = test_max_rel_err(f[i], g1[i], len[i]);
    fprintf(stderr, " %s %.2g", names[i], e);
    CHECKF(e <= F32_TOL, "fp32 vs f64 %s %.3g", names[i], e);
  }
  fputc('\n', stderr);
  for (int i = 0; i < 5; i++) { free(g1[i]); free(g2[i]); free(f[i]); free(in[i]); }
  free(x); free(wi); free(wf); free(bi); free(bf); free(Ri); free(Rf); free(c.Ri); free(c.Rf);
  free(ig); free(fg); free(ig64); free(fg64); free(iref); free(fref);
}

static void test_gates(void) {
  check_gates((gates_shape){.N = 11, .D = 9, .H = 3, .cap = 0}, 0.5, 5, 1);
  check_gates((gates_shape){.N = 11, .D = 9, .H = 3, .cap = GATES_SOFT_CAP}, 6.0, 6, 1);
  check_gates((gates_shape){.N = 40, .D = 64, .H = 8, .cap = GATES_SOFT_CAP}, 1.5, 7, 1);
  check_gates((gates_shape){.N = 700, .D = 64, .H = 8, .cap = GATES_SOFT_CAP}, 2.0, 8, 0);
}

static void test_gates_init(void) {
  float wi[4 * 3], bi[4], wf[4 * 3], bf[4];
  gates_init(wi, bi, wf, bf, 4, 3);
  CHECK(wi[5] == 0 && wf[11] == 0 && bi[2] == 0);
  CHECK(bf[0] == 3.0f && bf[3] == 6.0f && fabsf(bf[1] - 4.0f) < 1e-6f);
}

/* ---- mix ------------------------------------------------------------------ */
typedef struct {
  mix_shape s;
  double *q, *k, *v, *w, *b, *hg, *hl, *R;
} mix_ctx;

static double mix_loss(void *p) {
  mix_ctx *c = p;
  const size_t ny = (size_t)c->s.N * c->s.H * c->s.d;
  double *y = xd_malloc(ny * 8), *o = xd_malloc((size_t)c->s.N * c->s.H * 8);
  mix_forward_f64(y, o, c->q, c->k, c->v, c->w, c->b, c->hg, c->hl, &c->s);
  double L = 0;
  for (size_t i = 0; i < ny; i++) L += y[i] * c->R[i];
  free(y); free(o);
  return L;
}

static void check_mix(mix_shape s, uint64_t seed, int fd) {
  xd_rng r;
  xd_rng_seed(&r, seed);
  const int N = s.N, H = s.H, G = s.G, d = s.d, rep = H / G;
  const size_t nq = (size_t)N * H * d, nk = (size_t)N * G * d, nw = (size_t)H * 3 * d, no = (size_t)N * H;
  float *q = gc_randf(&r, nq, 1.0), *k = gc_randf(&r, nk, 1.0), *v = gc_randf(&r, nk, 1.0);
  float *w = gc_randf(&r, nw, 0.5), *b = gc_randf(&r, H, 1.0), *hg = gc_randf(&r, nq, 1.0);
  float *hl = gc_randf(&r, nq, 1.0), *Rf = gc_randf(&r, nq, 1.0);
  mix_ctx c = {.s = s, .q = gc_f64(q, nq), .k = gc_f64(k, nk), .v = gc_f64(v, nk), .w = gc_f64(w, nw),
               .b = gc_f64(b, H), .hg = gc_f64(hg, nq), .hl = gc_f64(hl, nq), .R = gc_f64(Rf, nq)};
  float *y = xd_malloc(nq * 4), *o = xd_malloc(no * 4);
  double *y64 = xd_malloc(nq * 8), *o64 = xd_malloc(no * 8), *yref = xd_malloc(nq * 8);
  mix_forward(y, o, q, k, v, w, b, hg, hl, &s);
  mix_forward_f64(y64, o64, c.q, c.k, c.v, c.w, c.b, c.hg, c.hl, &s);
  for (int n = 0; n < N; n++)
    for (int h = 0; h < H; h++) {
      double z = b[h];
      const int g = h / rep;
      for (int i = 0; i < d; i++) /* concatenation [q, k, v] . w_o written as one loop */
        for (int part = 0; part < 3; part++) {
          const float *src = part == 0 ? q + ((size_t)n * H + h) * d : (part == 1 ? k : v) + ((size_t)n * G + g) * d;
          z += (double)src[i] * w[(size_t)h * 3 * d + part * d + i];
        }
      const double og = 1 / (1 + exp(-z));
      for (int i = 0; i < d; i++) {
        const size_t j = ((size_t)n * H + h) * d + i;
        yref[j] = og * hg[j] + (1 - og) * hl[j];
      }
    }
  const double ef = test_max_rel_err(y, yref, nq);
  CHECKF(ef <= 1e-5, "fp32 forward rel err %.3g", ef);
  double e64 = 0;
  for (size_t i = 0; i < nq; i++) e64 = fmax(e64, fabs(y64[i] - yref[i]));
  CHECKF(e64 <= 1e-12, "f64 forward abs err %.3g", e64);
  enum { NG = 7 };
  const size_t len[NG] = {nq, nk, nk, nw, H, nq, nq};
  double *in[NG] = {c.q, c.k, c.v, c.w, c.b, c.hg, c.hl};
  const char *names[NG] = {"dq", "dk", "dv", "dw_o", "db_o", "dh_global", "dh_local"};
  double *g1[NG], *g2[NG];
  float *f[NG];
  for (int i = 0; i < NG; i++) { g1[i] = xd_calloc(len[i], 8); g2[i] = xd_calloc(len[i], 8); f[i] = xd_calloc(len[i], 4); }
  mix_backward_f64(g1[0], g1[1], g1[2], g1[3], g1[4], g1[5], g1[6], c.R, o64, c.q, c.k, c.v, c.w, c.hg, c.hl, &s);
  for (int t = 0; t < 2; t++)
    mix_backward_f64(g2[0], g2[1], g2[2], g2[3], g2[4], g2[5], g2[6], c.R, o64, c.q, c.k, c.v, c.w, c.hg, c.hl, &s);
  for (int i = 0; i < NG; i++) CHECKF(gc_accum_err(g1[i], g2[i], len[i]) <= 1e-12, "%s does not accumulate", names[i]);
  fprintf(stderr, "  mix (N=%d): fwd %.2g, %s", s.N, ef, fd ? "FD" : "no FD");
  for (int i = 0; i < NG; i++) {
    const double e = fd ? gc_fd_err(mix_loss, &c, in[i], len[i], g1[i], 1e-5) : 0;
    fprintf(stderr, " %s %.2g", names[i], e);
    CHECKF(e <= FD_TOL, "FD rel err %s %.3g", names[i], e);
  }
  mix_backward(f[0], f[1], f[2], f[3], f[4], f[5], f[6], Rf, o, q, k, v, w, hg, hl, &s);
  fprintf(stderr, ", fp32");
  for (int i = 0; i < NG; i++) {
    const double e = test_max_rel_err(f[i], g1[i], len[i]);
    fprintf(stderr, " %s %.2g", names[i], e);
    CHECKF(e <= F32_TOL, "fp32 vs f64 %s %.3g", names[i], e);
  }
  fputc('\n', stderr);
  for (int i = 0; i < NG; i++) { free(g1[i]); free(g2[i]); free(f[i]); free(in[i]); }
  free(q); free(k); free(v); free(w); free(b); free(hg); free(hl); free(Rf); free(c.R);
  free(y); free(o); free(y64); free(o64); free(yref);
}

static void test_mix(void) {
  check_mix((mix_shape){.N = 6, .H = 4, .G = 2, .d = 5}, 8, 1);
  check_mix((mix_shape){.N = 5, .H = 3, .G = 3, .d = 4}, 9, 1);
  check_mix((mix_shape){.N = 4, .H = 6, .G = 1, .d = 3}, 10, 1);
  check_mix((mix_shape){.N = 900, .H = 8, .G = 2, .d = 16}, 11, 0);
}

static void test_mix_init(void) {
  float w[2 * 3 * 4], b[2];
  mix_init(w, b, 2, 4);
  CHECK(w[0] == 0 && w[23] == 0 && b[0] == -2.0f && b[1] == -2.0f);
}

int main(void) {
  RUN(test_feature_map);
  RUN(test_feature_map_identity_init);
  RUN(test_gates);
  RUN(test_gates_init);
  RUN(test_mix);
  RUN(test_mix_init);
  return test_finish();
}
