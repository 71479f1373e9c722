/* Sliding-window attention with sinks: forward vs a float64 masked full-attention reference,
 * W + S >= T equals plain causal attention, decode steps equal the forward, backward vs
 * finite differences (double) and fp32 backward vs the double backward. */
#include "grad_check.h"
#include "ops/cpu/swa.h"

/* Direct reference: a full T x T score matrix per (b,h), masked by the rule written the plain
 * way; window = 0 means plain causal attention (no window, no sinks). */
static void ref_attention(double *out, double *lse, const float *q, const float *k,
                          const float *v, const swa_shape *sh, int window) {
  const int B = sh->B, T = sh->T, H = sh->H, G = sh->G, d = sh->d;
  double *sc = xd_malloc(sizeof(double) * T);
  for (int b = 0; b < B; b++)
    for (int h = 0; h < H; h++) {
      const int g = h / (H / G);
      for (int t = 0; t < T; t++) {
        const float *qr = q + (((size_t)b * T + t) * H + h) * d;
        double mx = -INFINITY;
        for (int s = 0; s < T; s++) {
          int on = s <= t;
          if (window) on = on && (t - s < sh->W || s < sh->S);
          if (!on) { sc[s] = -INFINITY; continue; }
          const float *kr = k + (((size_t)b * T + s) * G + g) * d;
          double acc = 0;
          for (int i = 0; i < d; i++) acc += (double)qr[i] * kr[i];
          sc[s] = acc / sqrt((double)d);
          if (sc[s] > mx) mx = sc[s];
        }
        double sum = 0;
        for (int s = 0; s < T; s++) sum += exp(sc[s] - mx);
        double *o = out + (((size_t)b * T + t) * H + h) * d;
        for (int i = 0; i < d; i++) o[i] = 0;
        for (int s = 0; s < T; s++) {
          const double p = exp(sc[s] - mx) / sum;
          const float *vr = v + (((size_t)b * T + s) * G + g) * d;
          for (int i = 0; i < d; i++) o[i] += p * vr[i];
        }
        lse[((size_t)b * T + t) * H + h] = mx + log(sum);
      }
    }
  free(sc);
}

typedef struct {
  swa_shape sh;
  size_t nq, nk, nl;
  float *q, *k, *v, *out, *lse;
} case_t;

static void case_init(case_t *c, swa_shape sh, uint64_t seed, double qscale) {
  xd_rng r;
  xd_rng_seed(&r, seed);
  c->sh = sh;
  c->nq = (size_t)sh.B * sh.T * sh.H * sh.d;
  c->nk = (size_t)sh.B * sh.T * sh.G * sh.d;
  c->nl = (size_t)sh.B * sh.T * sh.H;
  c->q = gc_randf(&r, c->nq, qscale);
  c->k = gc_randf(&r, c->nk, 1.0);
  c->v = gc_randf(&r, c->nk, 1.0);
  c->out = xd_malloc(c->nq * 4);
  c->lse = xd_malloc(c->nl * 4);
}
static void case_free(case_t *c) {
  free(c->q); free(c->k); free(c->v); free(c->out); free(c->lse);
}

static void check_vs_ref(swa_shape sh, uint64_t seed, int window) {
  case_t c;
  case_init(&c, sh, seed, 2.0); /* scaled queries: peaked softmax, not near-uniform */
  swa_forward(c.out, c.lse, c.q, c.k, c.v, &sh);
  double *ro = xd_malloc(c.nq * 8), *rl = xd_malloc(c.nl * 8);
  ref_attention(ro, rl, c.q, c.k, c.v, &sh, window);
  const double eo = test_max_rel_err(c.out, ro, c.nq), el = test_max_rel_err(c.lse, rl, c.nl);
  fprintf(stderr, "  T=%d W=%d S=%d: out rel err %.2g lse %.2g\n", sh.T, sh.W, sh.S, eo, el);
  CHECKF(eo <= 1e-5, "out rel err %.3g (T=%d W=%d S=%d)", eo, sh.T, sh.W, sh.S);
  CHECKF(el <= 1e-5, "lse rel err %.3g (T=%d W=%d S=%d)", el, sh.T, sh.W, sh.S);
  free(ro); free(rl);
  case_free(&c);
}

static void test_forward_vs_reference(void) {
  check_vs_ref((swa_shape){.B = 2, .T = 53, .H = 4, .G = 2, .d = 16, .W = 8, .S = 3}, 1, 1);
  check_vs_ref((swa_shape){.B = 1, .T = 40, .H = 6, .G = 3, .d = 8, .W = 5, .S = 0}, 2, 1);
  check_vs_ref((swa_shape){.B = 1, .T = 30, .H = 2, .G = 1, .d = 12, .W = 1, .S = 4}, 3, 1);
  check_vs_ref((swa_shape){.B = 1, .T = 64, .H = 4, .G = 4, .d = 32, .W = 16, .S = 20}, 4, 1);
}

/* W + S >= T: every key s <= t is visible, so this is the teacher's causal attention. */
static void test_full_window_is_causal(void) {
  check_vs_ref((swa_shape){.B = 2, .T = 24, .H = 4, .G = 2, .d = 16, .W = 24, .S = 0}, 5, 0);
  check_vs_ref((swa_shape){.B = 1, .T = 24, .H = 4, .G = 2, .d = 16, .W = 20, .S = 4}, 6, 0);
  check_vs_ref((swa_shape){.B = 1, .T = 24, .H = 4, .G = 1, .d = 8, .W = 100, .S = 7}, 7, 0);
  check_vs_ref((swa_shape){.B = 1, .T = 24, .H = 2, .G = 1, .d = 8, .W = 2147483647, .S = 3}, 17, 0);
}

static void check_decode(swa_shape sh, uint64_t seed) {
  case_t c;
  case_init(&c, sh, seed, 2.0);
  swa_forward(c.out, c.lse, c.q, c.k, c.v, &sh);
  /* prefill without lse must give the same output */
  float *out2 = xd_malloc(c.nq * 4);
  swa_forward(out2, NULL, c.q, c.k, c.v, &sh);
  CHECK(memcmp(out2, c.out, c.nq * 4) == 0);
  free(out2);
  swa_cache cache;
  swa_cache_init(&cache, sh.G, sh.d, sh.W, sh.S);
  const size_t hd = (size_t)sh.H * sh.d, gd = (size_t)sh.G * sh.d;
  float *o = xd_malloc(hd * 4), *l = xd_malloc(sh.H * 4);
  for (int pass = 0; pass < 2; pass++) { /* second pass: reset must give a fresh sequence */
    swa_cache_reset(&cache);
    double worst = 0, worst_l = 0;
    for (int t = 0; t < sh.T; t++) {
      swa_decode_step(&cache, o, l, c.q + t * hd, c.k + t * gd, c.v + t * gd, sh.H);
      for (size_t i = 0; i < hd; i++) worst = fmax(worst, fabs(o[i] - c.out[t * hd + i]));
      for (int h = 0; h < sh.H; h++) worst_l = fmax(worst_l, fabs(l[h] - c.lse[(size_t)t * sh.H + h]));
    }
    /* same row kernel and key order as the forward: expected to agree bit for bit */
    CHECKF(worst <= 1e-6 && worst_l <= 1e-6, "decode vs forward (W=%d S=%d) max abs diff out %.3g lse %.3g",
           sh.W, sh.S, worst, worst_l);
    if (pass == 0) fprintf(stderr, "  W=%d S=%d T=%d: decode vs forward max abs diff %.3g\n", sh.W, sh.S, sh.T, worst);
  }
  CHECK(cache.pos == sh.T);
  swa_cache_free(&cache);
  free(o); free(l);
  case_free(&c);
}

static void test_decode_matches_forward(void) {
  check_decode((swa_shape){.B = 1, .T = 71, .H = 4, .G = 2, .d = 16, .W = 9, .S = 3}, 8);
  check_decode((swa_shape){.B = 1, .T = 50, .H = 2, .G = 1, .d = 8, .W = 6, .S = 10}, 9);
  check_decode((swa_shape){.B = 1, .T = 20, .H = 3, .G = 3, .d = 8, .W = 1, .S = 0}, 10);
  check_decode((swa_shape){.B = 1, .T = 33, .H = 4, .G = 1, .d = 8, .W = 64, .S = 4}, 16);
}

/* Scalar loss L = sum(out . R) of the double forward (lse is a saved intermediate, not an
 * output, so the backward takes dout only). */
typedef struct {
  swa_shape sh;
  size_t nq, nl;
  double *q, *k, *v, *R;
} swa_ctx;

static double swa_loss(void *p) {
  swa_ctx *c = p;
  double *o = xd_malloc(c->nq * 8), *l = xd_malloc(c->nl * 8);
  swa_forward_f64(o, l, c->q, c->k, c->v, &c->sh);
  double L = 0;
  for (size_t i = 0; i < c->nq; i++) L += o[i] * c->R[i];
  free(o);
  free(l);
  return L;
}

/* fd = 0: a shape big enough for the OpenMP paths, fp32 vs double backward only. */
static void check_backward(swa_shape sh, uint64_t seed, int fd) {
  case_t c;
  case_init(&c, sh, seed, 2.0);
  xd_rng r;
  xd_rng_seed(&r, seed + 100);
  double *q = gc_f64(c.q, c.nq), *k = gc_f64(c.k, c.nk), *v = gc_f64(c.v, c.nk);
  float *Rf = gc_randf(&r, c.nq, 1.0);
  double *R = gc_f64(Rf, c.nq);
  swa_ctx ctx = {.sh = sh, .nq = c.nq, .nl = c.nl, .q = q, .k = k, .v = v, .R = R};
  double *o = xd_malloc(c.nq * 8), *l = xd_malloc(c.nl * 8);
  double *dq = xd_malloc(c.nq * 8), *dk = xd_malloc(c.nk * 8), *dv = xd_malloc(c.nk * 8);
  swa_forward_f64(o, l, q, k, v, &sh);
  /* accumulation: start from a random value and subtract it afterwards */
  double *base = xd_malloc(c.nq * 8);
  for (size_t i = 0; i < c.nq; i++) dq[i] = base[i] = xd_rng_normal(&r);
  memset(dk, 0, c.nk * 8);
  memset(dv, 0, c.nk * 8);
  swa_backward_f64(dq, dk, dv, R, q, k, v, o, l, &sh);
  for (size_t i = 0; i < c.nq; i++) dq[i] -= base[i];
  const double eq = fd ? gc_fd_err(swa_loss, &ctx, q, c.nq, dq, 1e-5) : 0;
  const double ek = fd ? gc_fd_err(swa_loss, &ctx, k, c.nk, dk, 1e-5) : 0;
  const double ev = fd ? gc_fd_err(swa_loss, &ctx, v, c.nk, dv, 1e-5) : 0;
  fprintf(stderr, "  T=%d W=%d S=%d: FD rel err dq %.2g dk %.2g dv %.2g\n", sh.T, sh.W, sh.S, eq, ek, ev);
  CHECKF(eq <= 1e-6 && ek <= 1e-6 && ev <= 1e-6, "FD rel err dq %.3g dk %.3g dv %.3g (W=%d S=%d)",
         eq, ek, ev, sh.W, sh.S);
  /* fp32 backward vs the double backward */
  float *dqf = xd_calloc(c.nq, 4), *dkf = xd_calloc(c.nk, 4), *dvf = xd_calloc(c.nk, 4);
  swa_forward(c.out, c.lse, c.q, c.k, c.v, &sh);
  swa_backward(dqf, dkf, dvf, Rf, c.q, c.k, c.v, c.out, c.lse, &sh);
  const double fq = test_max_rel_err(dqf, dq, c.nq), fk = test_max_rel_err(dkf, dk, c.nk),
               fv = test_max_rel_err(dvf, dv, c.nk);
  fprintf(stderr, "  fp32 vs f64 backward: dq %.2g dk %.2g dv %.2g\n", fq, fk, fv);
  CHECKF(fq <= 5e-6 && fk <= 5e-6 && fv <= 5e-6, "fp32 vs f64 backward dq %.3g dk %.3g dv %.3g",
         fq, fk, fv);
  free(q); free(k); free(v); free(R); free(Rf); free(o); free(l); free(dq); free(dk); free(dv);
  free(base); free(dqf); free(dkf); free(dvf);
  case_free(&c);
}

static void test_backward(void) {
  check_backward((swa_shape){.B = 2, .T = 19, .H = 4, .G = 2, .d = 6, .W = 4, .S = 2}, 11, 1);
  check_backward((swa_shape){.B = 1, .T = 16, .H = 3, .G = 1, .d = 5, .W = 3, .S = 0}, 12, 1);
  check_backward((swa_shape){.B = 1, .T = 12, .H = 2, .G = 2, .d = 4, .W = 12, .S = 0}, 13, 1);
  check_backward((swa_shape){.B = 1, .T = 14, .H = 2, .G = 1, .d = 4, .W = 1, .S = 5}, 14, 1);
  check_backward((swa_shape){.B = 1, .T = 10, .H = 2, .G = 1, .d = 4, .W = 2147483647, .S = 2}, 18, 1);
  check_backward((swa_shape){.B = 2, .T = 300, .H = 4, .G = 2, .d = 16, .W = 20, .S = 3}, 15, 0);
}

int main(void) {
  RUN(test_forward_vs_reference);
  RUN(test_full_window_is_causal);
  RUN(test_decode_matches_forward);
  RUN(test_backward);
  return test_finish();
}
