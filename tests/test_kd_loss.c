/* Stage II loss: forward vs a double reference built from full softmaxes (teacher logits
 * given, top-k taken by topk_logprobs, so the online and cache paths meet), k = V giving the
 * full KL, masks, the backward vs finite differences (double) with large logits and tau != 1,
 * fp32 vs double backward, in-place backward, topk_logprobs vs a full sort, and errors. */
#include "grad_check.h"
#include "ops/cpu/kd_loss.h"

/* Reference with everything written out: full softmaxes, then restrict to K and renormalise. */
static void kd_reference(const kd_config *c, const float *zs, const float *zt,
                         const int32_t *targets, const uint8_t *mask, const int32_t *ids,
                         double *loss, double *ce, double *kl) {
  const int N = c->N, V = c->V, k = c->k;
  double *ps = xd_malloc(sizeof(double) * V), *pt = xd_malloc(sizeof(double) * V);
  double sce = 0, skl = 0;
  int cnt = 0;
  for (int n = 0; n < N; n++) {
    if (mask && !mask[n]) continue;
    cnt++;
    const float *a = zs + (size_t)n * V, *b = zt + (size_t)n * V;
    /* CE at temperature 1 */
    double m = -INFINITY, s = 0;
    for (int v = 0; v < V; v++) m = fmax(m, a[v]);
    for (int v = 0; v < V; v++) s += exp(a[v] - m);
    sce += -(a[targets[n]] - m - log(s));
    /* full softmaxes at temperature tau */
    double ms = -INFINITY, mt = -INFINITY, ss = 0, st = 0;
    for (int v = 0; v < V; v++) { ms = fmax(ms, a[v] / c->tau); mt = fmax(mt, b[v] / c->tau); }
    for (int v = 0; v < V; v++) {
      ps[v] = exp(a[v] / c->tau - ms); ss += ps[v];
      pt[v] = exp(b[v] / c->tau - mt); st += pt[v];
    }
    double ks = 0, kt = 0;
    for (int i = 0; i < k; i++) { ks += ps[ids[(size_t)n * k + i]] / ss; kt += pt[ids[(size_t)n * k + i]] / st; }
    for (int i = 0; i < k; i++) {
      const int id = ids[(size_t)n * k + i];
      const double qs = ps[id] / ss / ks, qt = pt[id] / st / kt;
      skl += qt * log(qt / qs);
    }
  }
  *ce = cnt ? sce / cnt : 0;
  *kl = cnt ? skl / cnt : 0;
  *loss = c->gamma * *ce + c->beta * *kl;
  free(ps); free(pt);
}

typedef struct {
  kd_config c;
  float *zs, *zt, *lp;
  int32_t *targets, *ids;
  uint8_t *mask;
} kd_case;

/* Student and teacher logits ~ N(0, scale^2) (scale 30: large logits, peaked softmaxes),
 * teacher correlated with the student so that K overlaps the student's mass. */
static void kd_case_init(kd_case *t, kd_config c, double scale, uint64_t seed, int masked) {
  xd_rng r;
  xd_rng_seed(&r, seed);
  xd_err e = {{0}};
  t->c = c;
  const size_t nz = (size_t)c.N * c.V, nk = (size_t)c.N * c.k;
  t->zs = gc_randf(&r, nz, scale);
  t->zt = xd_malloc(nz * 4);
  for (size_t i = 0; i < nz; i++) t->zt[i] = (float)(0.7 * t->zs[i] + 0.5 * scale * xd_rng_normal(&r));
  t->targets = xd_malloc(sizeof(int32_t) * c.N);
  t->mask = xd_malloc(c.N);
  for (int n = 0; n < c.N; n++) {
    t->targets[n] = (int32_t)(xd_rng_u64(&r) % (uint64_t)c.V);
    t->mask[n] = masked ? (n % 3 != 1) : 1;
  }
  t->ids = xd_malloc(sizeof(int32_t) * nk);
  t->lp = xd_malloc(sizeof(float) * nk);
  XD_CHECK(topk_logprobs(t->zt, c.N, c.V, c.k, t->ids, t->lp, &e) == 0);
}
static void kd_case_free(kd_case *t) {
  free(t->zs); free(t->zt); free(t->lp); free(t->targets); free(t->ids); free(t->mask);
}

static void check_forward(kd_config c, double scale, uint64_t seed, int masked) {
  kd_case t;
  kd_case_init(&t, c, scale, seed, masked);
  float *lse = xd_malloc(sizeof(float) * c.N);
  kd_result res;
  xd_err e = {{0}};
  CHECK(kd_loss_forward(&c, t.zs, t.targets, t.mask, t.ids, t.lp, lse, &res, &e) == 0);
  double loss, ce, kl;
  kd_reference(&c, t.zs, t.zt, t.targets, t.mask, t.ids, &loss, &ce, &kl);
  fprintf(stderr, "  N=%d V=%d k=%d tau=%g scale=%g: loss %.6g (ref %.6g) ce %.6g kl %.6g\n", c.N, c.V,
          c.k, c.tau, scale, res.loss, loss, ce, kl);
  CHECK(kl > 1e-3); /* the test means something only if the distributions differ */
  CHECK_REL(res.loss, loss, 1e-5, 1e-30);
  CHECK_REL(res.ce, ce, 1e-5, 1e-30);
  CHECK_REL(res.kl, kl, 1e-5, 1e-30);
  int cnt = 0;
  for (int n = 0; n < c.N; n++) cnt += t.mask[n] != 0;
  CHECK(res.count == cnt);
  /* double twin */
  double *zs64 = gc_f64(t.zs, (size_t)c.N * c.V), *lp64 = gc_f64(t.lp, (size_t)c.N * c.k);
  double *lse64 = xd_malloc(sizeof(double) * c.N);
  kd_result r64;
  CHECK(kd_loss_forward_f64(&c, zs64, t.targets, t.mask, t.ids, lp64, lse64, &r64, &e) == 0);
  CHECK_REL(r64.loss, loss, 1e-6, 1e-30); /* lp rounded to float limits the agreement */
  free(zs64); free(lp64); free(lse64); free(lse);
  kd_case_free(&t);
}

static void test_forward(void) {
  check_forward((kd_config){.N = 9, .V = 300, .k = 16, .tau = 1, .gamma = 0.9f, .beta = 0.1f}, 3.0, 1, 1);
  check_forward((kd_config){.N = 9, .V = 300, .k = 16, .tau = 1, .gamma = 0.9f, .beta = 0.1f}, 30.0, 2, 0);
  check_forward((kd_config){.N = 6, .V = 517, .k = 64, .tau = 2.5f, .gamma = 0.3f, .beta = 0.7f}, 10.0, 3, 1);
  check_forward((kd_config){.N = 4, .V = 1000, .k = 256, .tau = 0.5f, .gamma = 0.9f, .beta = 0.1f}, 4.0, 4, 0);
  check_forward((kd_config){.N = 90, .V = 1000, .k = 256, .tau = 1, .gamma = 0.9f, .beta = 0.1f}, 20.0, 14, 1);
}

/* k = V: renormalising over K changes nothing, so the KL is the full KL. Also: teacher ==
 * student gives KL = 0. */
static void test_full_k_and_self(void) {
  const kd_config c = {.N = 5, .V = 64, .k = 64, .tau = 1.5f, .gamma = 0.9f, .beta = 0.1f};
  kd_case t;
  kd_case_init(&t, c, 5.0, 5, 0);
  float lse[5];
  kd_result res;
  xd_err e = {{0}};
  CHECK(kd_loss_forward(&c, t.zs, t.targets, NULL, t.ids, t.lp, lse, &res, &e) == 0);
  double full = 0;
  for (int n = 0; n < c.N; n++) {
    const float *a = t.zs + n * c.V, *b = t.zt + n * c.V;
    double ms = -INFINITY, mt = -INFINITY, ss = 0, st = 0;
    for (int v = 0; v < c.V; v++) { ms = fmax(ms, a[v] / c.tau); mt = fmax(mt, b[v] / c.tau); }
    for (int v = 0; v < c.V; v++) { ss += exp(a[v] / c.tau - ms); st += exp(b[v] / c.tau - mt); }
    for (int v = 0; v < c.V; v++) {
      const double ls = a[v] / c.tau - ms - log(ss), lt = b[v] / c.tau - mt - log(st);
      full += exp(lt) * (lt - ls);
    }
  }
  CHECK_REL(res.kl, full / c.N, 1e-5, 1e-30);
  /* self-distillation: the teacher's top-k from the student's own logits */
  CHECK(topk_logprobs(t.zs, c.N, c.V, 16, t.ids, t.lp, &e) == 0);
  kd_config c16 = c;
  c16.k = 16;
  CHECK(kd_loss_forward(&c16, t.zs, t.targets, NULL, t.ids, t.lp, lse, &res, &e) == 0);
  CHECKF(fabs(res.kl) < 1e-6, "self KL %.3g", res.kl);
  kd_case_free(&t);
}

/* Masked positions neither count nor receive gradient; all masked gives 0, not NaN. */
static void test_mask(void) {
  const kd_config c = {.N = 6, .V = 50, .k = 8, .tau = 1, .gamma = 0.9f, .beta = 0.1f};
  kd_case t;
  kd_case_init(&t, c, 5.0, 6, 1);
  float lse[6];
  kd_result a, b;
  xd_err e = {{0}};
  CHECK(kd_loss_forward(&c, t.zs, t.targets, t.mask, t.ids, t.lp, lse, &a, &e) == 0);
  for (int n = 0; n < c.N; n++)
    if (!t.mask[n]) {
      for (int v = 0; v < c.V; v++) t.zs[n * c.V + v] += 7.0f * (float)((v * 37 + n) % 11);
      t.targets[n] = -5; /* ignored where masked */
    }
  CHECK(kd_loss_forward(&c, t.zs, t.targets, t.mask, t.ids, t.lp, lse, &b, &e) == 0);
  CHECK(a.loss == b.loss && a.count == 4);
  float *d = xd_calloc((size_t)c.N * c.V, 4);
  kd_loss_backward(&c, d, t.zs, t.targets, t.mask, t.ids, t.lp, lse, b.count, 1.0f);
  double masked_sum = 0, other = 0;
  for (int n = 0; n < c.N; n++)
    for (int v = 0; v < c.V; v++) *(t.mask[n] ? &other : &masked_sum) += fabs(d[n * c.V + v]);
  CHECK(masked_sum == 0 && other > 0);
  memset(t.mask, 0, c.N);
  CHECK(kd_loss_forward(&c, t.zs, t.targets, t.mask, t.ids, t.lp, lse, &b, &e) == 0);
  CHECK(b.loss == 0 && b.count == 0);
  free(d);
  kd_case_free(&t);
}

typedef struct {
  kd_config c;
  double *z, *lp;
  const int32_t *targets, *ids;
  const uint8_t *mask;
} kd_ctx;

static double kd_loss_fn(void *p) {
  kd_ctx *x = p;
  double *lse = xd_malloc(sizeof(double) * x->c.N);
  kd_result r;
  xd_err e = {{0}};
  XD_CHECK(kd_loss_forward_f64(&x->c, x->z, x->targets, x->mask, x->ids, x->lp, lse, &r, &e) == 0);
  free(lse);
  return r.loss;
}

/* fd = 0: a shape big enough for the OpenMP paths, fp32 vs double backward only. */
static void check_backward(kd_config c, double scale, uint64_t seed, int fd) {
  kd_case t;
  kd_case_init(&t, c, scale, seed, 1);
  const size_t nz = (size_t)c.N * c.V;
  kd_ctx x = {.c = c, .z = gc_f64(t.zs, nz), .lp = gc_f64(t.lp, (size_t)c.N * c.k),
              .targets = t.targets, .ids = t.ids, .mask = t.mask};
  double *lse = xd_malloc(sizeof(double) * c.N), *g = xd_calloc(nz, 8), *g2 = xd_calloc(nz, 8);
  kd_result r;
  xd_err e = {{0}};
  CHECK(kd_loss_forward_f64(&c, x.z, t.targets, t.mask, t.ids, x.lp, lse, &r, &e) == 0);
  const double dloss = 1.7;
  kd_loss_backward_f64(&c, g, x.z, t.targets, t.mask, t.ids, x.lp, lse, r.count, dloss);
  for (int k = 0; k < 2; k++)
    kd_loss_backward_f64(&c, g2, x.z, t.targets, t.mask, t.ids, x.lp, lse, r.count, dloss);
  CHECK(gc_accum_err(g, g2, nz) <= 1e-12);
  for (size_t i = 0; i < nz; i++) g[i] /= dloss;
  const double efd = fd ? gc_fd_err(kd_loss_fn, &x, x.z, nz, g, 1e-5) : 0;
  /* fp32, accumulate and in place */
  float *lsef = xd_malloc(sizeof(float) * c.N), *gf = xd_calloc(nz, 4);
  CHECK(kd_loss_forward(&c, t.zs, t.targets, t.mask, t.ids, t.lp, lsef, &r, &e) == 0);
  kd_loss_backward(&c, gf, t.zs, t.targets, t.mask, t.ids, t.lp, lsef, r.count, 1.0f);
  const double e32 = test_max_rel_err(gf, g, nz);
  float *zin = xd_malloc(nz * 4);
  memcpy(zin, t.zs, nz * 4);
  kd_loss_backward(&c, zin, zin, t.targets, t.mask, t.ids, t.lp, lsef, r.count, 1.0f);
  CHECK(memcmp(zin, gf, nz * 4) == 0);
  fprintf(stderr, "  N=%d V=%d k=%d tau=%g scale=%g: %s rel err %.2g, fp32 vs f64 %.2g\n", c.N, c.V, c.k,
          c.tau, scale, fd ? "FD" : "no FD", efd, e32);
  CHECKF(efd <= 1e-6, "FD rel err %.3g", efd);
  /* fp32 limit: lse is stored in float, so with logits ~60 exp(z - lse) carries ulp(60)/2 ~ 2e-6 */
  CHECKF(e32 <= 1e-5, "fp32 vs f64 backward %.3g", e32);
  free(x.z); free(x.lp); free(lse); free(g); free(g2); free(lsef); free(gf); free(zin);
  kd_case_free(&t);
}

static void test_backward(void) {
  check_backward((kd_config){.N = 5, .V = 60, .k = 8, .tau = 1, .gamma = 0.9f, .beta = 0.1f}, 3.0, 7, 1);
  check_backward((kd_config){.N = 5, .V = 60, .k = 8, .tau = 1, .gamma = 0.9f, .beta = 0.1f}, 30.0, 8, 1);
  check_backward((kd_config){.N = 4, .V = 80, .k = 20, .tau = 2.0f, .gamma = 0.5f, .beta = 0.5f}, 8.0, 9, 1);
  check_backward((kd_config){.N = 3, .V = 40, .k = 40, .tau = 0.7f, .gamma = 0.0f, .beta = 1.0f}, 2.0, 10, 1);
  check_backward((kd_config){.N = 90, .V = 1000, .k = 256, .tau = 1.5f, .gamma = 0.9f, .beta = 0.1f}, 20.0, 13, 0);
}

/* topk_logprobs against a full sort; duplicates resolved by lower id. */
static int cmp_desc(const void *a, const void *b) {
  const double *x = a, *y = b; /* {value, id} */
  if (x[0] != y[0]) return x[0] > y[0] ? -1 : 1;
  return x[1] < y[1] ? -1 : 1;
}
static void test_topk(void) {
  xd_rng r;
  xd_rng_seed(&r, 11);
  const int N = 7, V = 3001, k = 256;
  float *z = gc_randf(&r, (size_t)N * V, 6.0);
  for (int v = 0; v < V; v += 5) z[v] = z[v + 1 < V ? v + 1 : v]; /* ties in row 0 and beyond */
  z[2 * V + 17] = z[2 * V + 900] = 100.0f;
  int32_t *ids = xd_malloc(sizeof(int32_t) * N * k);
  float *lp = xd_malloc(sizeof(float) * N * k);
  xd_err e = {{0}};
  CHECK(topk_logprobs(z, N, V, k, ids, lp, &e) == 0);
  double *all = xd_malloc(sizeof(double) * 2 * V);
  int bad = 0;
  for (int n = 0; n < N; n++) {
    double m = -INFINITY, s = 0;
    for (int v = 0; v < V; v++) { all[2 * v] = z[n * V + v]; all[2 * v + 1] = v; m = fmax(m, z[n * V + v]); }
    for (int v = 0; v < V; v++) s += exp(z[n * V + v] - m);
    qsort(all, V, 2 * sizeof(double), cmp_desc);
    for (int i = 0; i < k; i++) {
      bad += ids[n * k + i] != (int32_t)all[2 * i + 1];
      bad += fabs(lp[n * k + i] - (all[2 * i] - m - log(s))) > 1e-5 * fmax(1, fabs(lp[n * k + i]));
    }
  }
  CHECKF(bad == 0, "%d top-k mismatches", bad);
  CHECK(ids[2 * k] == 17 && ids[2 * k + 1] == 900 && fabsf(lp[2 * k] - lp[2 * k + 1]) == 0);
  CHECK(topk_logprobs(z, N, V, V + 1, ids, lp, &e) == -1 && strstr(e.msg, "k=3002"));
  z[3 * V + 4] = NAN;
  CHECK(topk_logprobs(z, N, V, k, ids, lp, &e) == -1 && strstr(e.msg, "row 3"));
  free(z); free(ids); free(lp); free(all);
}

static void test_errors(void) {
  const kd_config c = {.N = 4, .V = 30, .k = 5, .tau = 1, .gamma = 0.9f, .beta = 0.1f};
  kd_case t;
  kd_case_init(&t, c, 2.0, 12, 0);
  float lse[4];
  kd_result res;
  xd_err e = {{0}};
  t.targets[2] = 30;
  CHECK(kd_loss_forward(&c, t.zs, t.targets, NULL, t.ids, t.lp, lse, &res, &e) == -1);
  CHECK(strstr(e.msg, "position 2") && strstr(e.msg, "target id 30"));
  t.targets[2] = 1;
  t.ids[3 * 5 + 4] = -1;
  CHECK(kd_loss_forward(&c, t.zs, t.targets, NULL, t.ids, t.lp, lse, &res, &e) == -1);
  CHECK(strstr(e.msg, "position 3") && strstr(e.msg, "top-k id -1"));
  t.ids[3 * 5 + 4] = 0;
  t.lp[7] = INFINITY;
  CHECK(kd_loss_forward(&c, t.zs, t.targets, NULL, t.ids, t.lp, lse, &res, &e) == -1);
  CHECK(strstr(e.msg, "position 1") && strstr(e.msg, "not finite"));
  kd_config bad = c;
  bad.k = 31;
  CHECK(kd_loss_forward(&bad, t.zs, t.targets, NULL, t.ids, t.lp, lse, &res, &e) == -1);
  kd_case_free(&t);
}

static void test_defaults(void) {
  const kd_config c = kd_config_default(10, 128256);
  CHECK(c.k == 256 && c.gamma == 0.9f && c.beta == 0.1f && c.tau == 1.0f);
  CHECK(kd_config_default(1, 100).k == 100);
}

int main(void) {
  RUN(test_forward);
  RUN(test_full_k_and_self);
  RUN(test_mask);
  RUN(test_backward);
  RUN(test_topk);
  RUN(test_errors);
  RUN(test_defaults);
  return test_finish();
}
