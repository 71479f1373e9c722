/* mLSTM ops: the parallel, chunkwise and recurrent forms against the plain float64 recurrence
 * (mlstm_reference_forward_f64); chunk-boundary and hand-off states against the recurrent
 * states; and the chunkwise backward against central finite differences of the float64
 * reference, in double, on gate ranges that move the stabiliser (i~ in [-10, 10], f~ in
 * [-8, 12]), both normalisers, GQA (H != G) and P != D. Fresh random inputs, never zeros. */
#include <omp.h>

#include "test.h"
#include "core/core.h"
#include "io/npy.h"
#include "ops/cpu/mlstm.h"

typedef struct {
  mlstm_cfg c;
  size_t nq, nk, nv, ng, nh, ns_C, ns_n, ns_m;
  double *qf, *kf, *v, *ig, *fg; /* double master copy of the inputs */
} prob;

/* Feature-mapped inputs as the student makes them: softmax rows (positive, sum 1). With
 * signed = 1 the features are normal draws instead, so q.n can change sign (abs branch). */
static void fill_features(xd_rng *r, double *x, size_t rows, int P, int signed_) {
  for (size_t i = 0; i < rows; i++) {
    double *row = x + i * (size_t)P, sum = 0;
    for (int p = 0; p < P; p++) {
      row[p] = signed_ ? 0.3 + xd_rng_normal(r) : exp(1.5 * xd_rng_normal(r));
      sum += row[p];
    }
    if (!signed_)
      for (int p = 0; p < P; p++) row[p] /= sum;
  }
}

static void prob_make(prob *pb, mlstm_cfg c, uint64_t seed, int signed_) {
  xd_rng r;
  xd_rng_seed(&r, seed);
  pb->c = c;
  const size_t BT = (size_t)c.B * c.T;
  pb->nq = BT * c.H * c.P; pb->nk = BT * c.G * c.P; pb->nv = BT * c.G * c.D;
  pb->ng = BT * c.H; pb->nh = BT * c.H * c.D;
  pb->ns_C = (size_t)c.B * c.H * c.P * c.D; pb->ns_n = (size_t)c.B * c.H * c.P;
  pb->ns_m = (size_t)c.B * c.H;
  pb->qf = xd_malloc(pb->nq * sizeof(double));
  pb->kf = xd_malloc(pb->nk * sizeof(double));
  pb->v = xd_malloc(pb->nv * sizeof(double));
  pb->ig = xd_malloc(pb->ng * sizeof(double));
  pb->fg = xd_malloc(pb->ng * sizeof(double));
  fill_features(&r, pb->qf, BT * c.H, c.P, signed_);
  fill_features(&r, pb->kf, BT * c.G, c.P, signed_);
  for (size_t i = 0; i < pb->nv; i++) pb->v[i] = xd_rng_normal(&r);
  for (size_t i = 0; i < pb->ng; i++) pb->ig[i] = -10 + 20 * xd_rng_uniform(&r);
  for (size_t i = 0; i < pb->ng; i++) pb->fg[i] = -8 + 20 * xd_rng_uniform(&r);
}

static void prob_free(prob *pb) {
  free(pb->qf); free(pb->kf); free(pb->v); free(pb->ig); free(pb->fg);
}

static float *to_f32(const double *x, size_t n) {
  float *y = xd_malloc(n * sizeof(float));
  for (size_t i = 0; i < n; i++) y[i] = (float)x[i];
  return y;
}
static double *to_f64(const float *x, size_t n) {
  double *y = xd_malloc(n * sizeof(double));
  for (size_t i = 0; i < n; i++) y[i] = x[i];
  return y;
}
static double max_rel_d(const double *x, const double *ref, size_t n) {
  double amax = 0, dmax = 0;
  for (size_t i = 0; i < n; i++) {
    if (fabs(ref[i]) > amax) amax = fabs(ref[i]);
    if (fabs(x[i] - ref[i]) > dmax) dmax = fabs(x[i] - ref[i]);
  }
  return amax > 0 ? dmax / amax : dmax;
}

/* max |x - y| / max |y| over n floats */
static double max_rel_f(const float *x, const float *y, size_t n) {
  double amax = 0, dmax = 0;
  for (size_t i = 0; i < n; i++) {
    amax = fmax(amax, fabs((double)y[i]));
    dmax = fmax(dmax, fabs((double)x[i] - (double)y[i]));
  }
  return amax > 0 ? dmax / amax : dmax;
}

/* Run T recurrent steps (float), gathering the per-token slices; h [B,T,H,D]. With bound
 * (a chunkwise boundary buffer for c->chunk), before every token t = ci * L compare the state
 * with the saved start state of chunk ci; the worst relative error goes to *worst. */
static void run_recurrent_f32_check(const mlstm_cfg *c, const float *qf, const float *kf,
                                    const float *v, const float *ig, const float *fg,
                                    mlstm_state *st, float *h, const float *bound, double *worst) {
  const int B = c->B, T = c->T, H = c->H, G = c->G, P = c->P, D = c->D;
  const size_t BH = (size_t)B * H, PD = (size_t)P * D, NC = bound ? (size_t)mlstm_num_chunks(c) : 0;
  float *q = xd_malloc((size_t)B * H * P * sizeof(float)), *k = xd_malloc((size_t)B * G * P * sizeof(float));
  float *vv = xd_malloc((size_t)B * G * D * sizeof(float)), *i1 = xd_malloc((size_t)B * H * sizeof(float));
  float *f1 = xd_malloc((size_t)B * H * sizeof(float)), *h1 = xd_malloc((size_t)B * H * D * sizeof(float));
  for (int t = 0; t < T; t++) {
    if (bound && t % c->chunk == 0) {
      const size_t ci = (size_t)(t / c->chunk);
      for (size_t bh = 0; bh < BH; bh++) {
        const double ec = max_rel_f(bound + (bh * NC + ci) * PD, st->C + bh * PD, PD);
        const double en = max_rel_f(bound + BH * NC * PD + (bh * NC + ci) * P, st->n + bh * P, (size_t)P);
        const float bm = bound[BH * NC * (PD + P) + bh * NC + ci];
        const double em = fabs((double)bm - st->m[bh]) / fmax(1.0, fabs((double)st->m[bh]));
        *worst = fmax(*worst, fmax(ec, fmax(en, em)));
      }
    }
    for (int b = 0; b < B; b++) {
      const size_t tok = (size_t)b * T + t;
      memcpy(q + (size_t)b * H * P, qf + tok * H * P, (size_t)H * P * sizeof(float));
      memcpy(k + (size_t)b * G * P, kf + tok * G * P, (size_t)G * P * sizeof(float));
      memcpy(vv + (size_t)b * G * D, v + tok * G * D, (size_t)G * D * sizeof(float));
      memcpy(i1 + (size_t)b * H, ig + tok * H, (size_t)H * sizeof(float));
      memcpy(f1 + (size_t)b * H, fg + tok * H, (size_t)H * sizeof(float));
    }
    mlstm_recurrent_step(c, q, k, vv, i1, f1, st, h1);
    for (int b = 0; b < B; b++)
      memcpy(h + ((size_t)b * T + t) * H * D, h1 + (size_t)b * H * D, (size_t)H * D * sizeof(float));
  }
  free(q); free(k); free(vv); free(i1); free(f1); free(h1);
}

static void run_recurrent_f32(const mlstm_cfg *c, const float *qf, const float *kf, const float *v,
                              const float *ig, const float *fg, mlstm_state *st, float *h) {
  run_recurrent_f32_check(c, qf, kf, v, ig, fg, st, h, NULL, NULL);
}

/* parallel vs chunkwise (every L) vs recurrent vs the float64 reference, fp32 within 1e-5. */
static void test_forward_forms_agree(void) {
  const int Ts[] = {1, 7, 33, 100}, Ls[] = {1, 3, 4, 16, 64};
  double worst_par = 0, worst_chunk = 0, worst_rec = 0, worst_f64 = 0;
  for (int norm = 0; norm < 2; norm++) {
    for (int ti = 0; ti < 4; ti++) {
      mlstm_cfg c = mlstm_cfg_make(2, Ts[ti], 4, 2, 8, 6);
      c.norm = (mlstm_norm)norm;
      xd_err e;
      CHECK(mlstm_cfg_check(&c, &e) == 0);
      prob pb;
      prob_make(&pb, c, 100 + 10 * (uint64_t)ti + (uint64_t)norm, 0);
      double *ref = xd_malloc(pb.nh * sizeof(double));
      mlstm_reference_forward_f64(&c, pb.qf, pb.kf, pb.v, pb.ig, pb.fg, NULL, NULL, ref);
      float *qf = to_f32(pb.qf, pb.nq), *kf = to_f32(pb.kf, pb.nk), *v = to_f32(pb.v, pb.nv);
      float *ig = to_f32(pb.ig, pb.ng), *fg = to_f32(pb.fg, pb.ng);
      /* the fp32 inputs are the rounded doubles: compare against the reference of those */
      double *qd = to_f64(qf, pb.nq), *kd = to_f64(kf, pb.nk), *vd = to_f64(v, pb.nv);
      double *igd = to_f64(ig, pb.ng), *fgd = to_f64(fg, pb.ng);
      double *ref32 = xd_malloc(pb.nh * sizeof(double));
      mlstm_reference_forward_f64(&c, qd, kd, vd, igd, fgd, NULL, NULL, ref32);
      float *h = xd_malloc(pb.nh * sizeof(float));
      double *hd = xd_malloc(pb.nh * sizeof(double));

      mlstm_parallel_forward(&c, qf, kf, v, ig, fg, h);
      double err = test_max_rel_err(h, ref32, pb.nh);
      CHECKF(err <= 1e-5, "parallel fp32 norm=%d T=%d: rel err %.3g", norm, c.T, err);
      if (err > worst_par) worst_par = err;
      mlstm_parallel_forward_f64(&c, pb.qf, pb.kf, pb.v, pb.ig, pb.fg, hd);
      err = max_rel_d(hd, ref, pb.nh);
      CHECKF(err <= 1e-12, "parallel f64 norm=%d T=%d: rel err %.3g", norm, c.T, err);
      if (err > worst_f64) worst_f64 = err;

      for (int li = 0; li < 5; li++) {
        c.chunk = Ls[li];
        mlstm_ws *w = mlstm_ws_create(&c), *wd = mlstm_ws_create_f64(&c);
        mlstm_chunkwise_forward(&c, w, qf, kf, v, ig, fg, NULL, NULL, NULL, h);
        err = test_max_rel_err(h, ref32, pb.nh);
        CHECKF(err <= 1e-5, "chunkwise fp32 norm=%d T=%d L=%d: rel err %.3g", norm, c.T, c.chunk, err);
        if (err > worst_chunk) worst_chunk = err;
        mlstm_chunkwise_forward_f64(&c, wd, pb.qf, pb.kf, pb.v, pb.ig, pb.fg, NULL, NULL, NULL, hd);
        err = max_rel_d(hd, ref, pb.nh);
        CHECKF(err <= 1e-12, "chunkwise f64 norm=%d T=%d L=%d: rel err %.3g", norm, c.T, c.chunk, err);
        if (err > worst_f64) worst_f64 = err;
        mlstm_ws_free(w);
        mlstm_ws_free(wd);
      }

      float *sC = xd_calloc(pb.ns_C, sizeof(float)), *sn = xd_calloc(pb.ns_n, sizeof(float));
      float *sm = xd_calloc(pb.ns_m, sizeof(float));
      mlstm_state st = {sC, sn, sm};
      run_recurrent_f32(&c, qf, kf, v, ig, fg, &st, h);
      err = test_max_rel_err(h, ref32, pb.nh);
      CHECKF(err <= 1e-5, "recurrent fp32 norm=%d T=%d: rel err %.3g", norm, c.T, err);
      if (err > worst_rec) worst_rec = err;

      free(sC); free(sn); free(sm);
      free(qf); free(kf); free(v); free(ig); free(fg);
      free(qd); free(kd); free(vd); free(igd); free(fgd);
      free(h); free(hd); free(ref); free(ref32);
      prob_free(&pb);
    }
  }
  fprintf(stderr, "  max rel err vs f64 reference: parallel %.2g, chunkwise %.2g, recurrent %.2g "
          "(fp32); f64 forms %.2g\n", worst_par, worst_chunk, worst_rec, worst_f64);
}

/* Gates far outside the soft-capped range (|i~|, |f~| up to 40: forget gates of exactly 1 in
 * fp32, input gates of e^40): every form still agrees with the reference. */
static void test_extreme_gates(void) {
  for (int norm = 0; norm < 2; norm++) {
    mlstm_cfg c = mlstm_cfg_make(1, 70, 2, 1, 4, 3);
    c.chunk = 16;
    c.norm = (mlstm_norm)norm;
    prob pb;
    prob_make(&pb, c, 808 + (uint64_t)norm, 0);
    xd_rng r;
    xd_rng_seed(&r, 909);
    for (size_t i = 0; i < pb.ng; i++) pb.ig[i] = -40 + 80 * xd_rng_uniform(&r);
    for (size_t i = 0; i < pb.ng; i++) pb.fg[i] = -40 + 80 * xd_rng_uniform(&r);
    float *qf = to_f32(pb.qf, pb.nq), *kf = to_f32(pb.kf, pb.nk), *v = to_f32(pb.v, pb.nv);
    float *ig = to_f32(pb.ig, pb.ng), *fg = to_f32(pb.fg, pb.ng);
    double *ref = xd_malloc(pb.nh * sizeof(double));
    double *qd = to_f64(qf, pb.nq), *kd = to_f64(kf, pb.nk), *vd = to_f64(v, pb.nv);
    double *igd = to_f64(ig, pb.ng), *fgd = to_f64(fg, pb.ng);
    mlstm_reference_forward_f64(&c, qd, kd, vd, igd, fgd, NULL, NULL, ref);
    float *h = xd_malloc(pb.nh * sizeof(float));
    mlstm_ws *w = mlstm_ws_create(&c);
    mlstm_chunkwise_forward(&c, w, qf, kf, v, ig, fg, NULL, NULL, NULL, h);
    double e1 = test_max_rel_err(h, ref, pb.nh);
    mlstm_parallel_forward(&c, qf, kf, v, ig, fg, h);
    double e2 = test_max_rel_err(h, ref, pb.nh);
    mlstm_state st = {xd_calloc(pb.ns_C, sizeof(float)), xd_calloc(pb.ns_n, sizeof(float)),
                      xd_calloc(pb.ns_m, sizeof(float))};
    run_recurrent_f32(&c, qf, kf, v, ig, fg, &st, h);
    double e3 = test_max_rel_err(h, ref, pb.nh);
    int finite = 1;
    for (size_t i = 0; i < pb.nh; i++) finite &= isfinite(h[i]) != 0;
    CHECK(finite);
    CHECKF(e1 <= 1e-5 && e2 <= 1e-5 && e3 <= 1e-5, "norm=%d: chunkwise %.3g parallel %.3g recurrent %.3g",
           norm, e1, e2, e3);
    free(st.C); free(st.n); free(st.m);
    mlstm_ws_free(w);
    free(h); free(ref); free(qd); free(kd); free(vd); free(igd); free(fgd);
    free(qf); free(kf); free(v); free(ig); free(fg);
    prob_free(&pb);
  }
}

/* The boundary states the chunkwise forward saves, and its final state, equal the states of
 * the float64 reference recurrence after the same number of tokens. */
static void test_boundary_states(void) {
  mlstm_cfg c = mlstm_cfg_make(2, 23, 4, 2, 5, 3);
  c.chunk = 4;
  prob pb;
  prob_make(&pb, c, 7, 0);
  const int NC = mlstm_num_chunks(&c);
  CHECK(NC == 6);
  float *qf = to_f32(pb.qf, pb.nq), *kf = to_f32(pb.kf, pb.nk), *v = to_f32(pb.v, pb.nv);
  float *ig = to_f32(pb.ig, pb.ng), *fg = to_f32(pb.fg, pb.ng);
  double *qd = to_f64(qf, pb.nq), *kd = to_f64(kf, pb.nk), *vd = to_f64(v, pb.nv);
  double *igd = to_f64(ig, pb.ng), *fgd = to_f64(fg, pb.ng);
  float *bound = xd_malloc(mlstm_boundary_size(&c) * sizeof(float));
  float *h = xd_malloc(pb.nh * sizeof(float));
  float *fC = xd_malloc(pb.ns_C * sizeof(float)), *fn = xd_malloc(pb.ns_n * sizeof(float));
  float *fm = xd_malloc(pb.ns_m * sizeof(float));
  mlstm_state fin = {fC, fn, fm};
  mlstm_ws *w = mlstm_ws_create(&c);
  mlstm_chunkwise_forward(&c, w, qf, kf, v, ig, fg, NULL, &fin, bound, h);

  const size_t BH = pb.ns_m, PD = (size_t)c.P * c.D;
  double *rC = xd_malloc(pb.ns_C * sizeof(double)), *rn = xd_malloc(pb.ns_n * sizeof(double));
  double *rm = xd_malloc(pb.ns_m * sizeof(double));
  mlstm_state_f64 rs = {rC, rn, rm};
  double worst = 0;
  /* The reference over the prefix of t0 tokens: re-layout the prefix as its own [B, t0] batch. */
  for (int ci = 0; ci <= NC; ci++) {
    const int t0 = ci < NC ? ci * c.chunk : c.T;
    if (t0 == 0) {
      /* chunk 0 starts from the zero state */
      for (size_t bh = 0; bh < BH; bh++) {
        for (size_t i = 0; i < PD; i++) CHECK(bound[bh * NC * PD + i] == 0);
        CHECK(bound[BH * NC * (PD + c.P) + bh * NC] == 0);
      }
      continue;
    }
    mlstm_cfg cp = c;
    cp.T = t0;
    double *pq = xd_malloc((size_t)c.B * t0 * c.H * c.P * sizeof(double));
    double *pk = xd_malloc((size_t)c.B * t0 * c.G * c.P * sizeof(double));
    double *pv = xd_malloc((size_t)c.B * t0 * c.G * c.D * sizeof(double));
    double *pi = xd_malloc((size_t)c.B * t0 * c.H * sizeof(double));
    double *pf = xd_malloc((size_t)c.B * t0 * c.H * sizeof(double));
    double *ph = xd_malloc((size_t)c.B * t0 * c.H * c.D * sizeof(double));
    for (int b = 0; b < c.B; b++) {
      const size_t so = (size_t)b * c.T, po = (size_t)b * t0;
      memcpy(pq + po * c.H * c.P, qd + so * c.H * c.P, (size_t)t0 * c.H * c.P * sizeof(double));
      memcpy(pk + po * c.G * c.P, kd + so * c.G * c.P, (size_t)t0 * c.G * c.P * sizeof(double));
      memcpy(pv + po * c.G * c.D, vd + so * c.G * c.D, (size_t)t0 * c.G * c.D * sizeof(double));
      memcpy(pi + po * c.H, igd + so * c.H, (size_t)t0 * c.H * sizeof(double));
      memcpy(pf + po * c.H, fgd + so * c.H, (size_t)t0 * c.H * sizeof(double));
    }
    mlstm_reference_forward_f64(&cp, pq, pk, pv, pi, pf, NULL, &rs, ph);
    for (size_t bh = 0; bh < BH; bh++) {
      const float *bC, *bn, *bm;
      if (ci < NC) {
        bC = bound + (bh * NC + ci) * PD;
        bn = bound + BH * NC * PD + (bh * NC + ci) * c.P;
        bm = bound + BH * NC * (PD + c.P) + bh * NC + ci;
      } else {
        bC = fC + bh * PD; bn = fn + bh * c.P; bm = fm + bh;
      }
      double cm = 0;
      for (size_t i = 0; i < PD; i++) cm = fmax(cm, fabs(rC[bh * PD + i]));
      for (size_t i = 0; i < PD; i++) {
        const double d = fabs(bC[i] - rC[bh * PD + i]) / cm;
        if (d > worst) worst = d;
      }
      double nm = 0;
      for (int p = 0; p < c.P; p++) nm = fmax(nm, fabs(rn[bh * c.P + p]));
      for (int p = 0; p < c.P; p++) {
        const double d = fabs(bn[p] - rn[bh * c.P + p]) / nm;
        if (d > worst) worst = d;
      }
      CHECK_REL(*bm, rm[bh], 1e-5, 1.0);
    }
    free(pq); free(pk); free(pv); free(pi); free(pf); free(ph);
  }
  CHECKF(worst <= 1e-5, "boundary state rel err %.3g", worst);
  fprintf(stderr, "  boundary/final states vs f64 recurrence: max rel err %.2g\n", worst);

  /* and against the fp32 recurrent step (mlstm_recurrent_step), token by token */
  mlstm_state st = {xd_calloc(pb.ns_C, sizeof(float)), xd_calloc(pb.ns_n, sizeof(float)),
                    xd_calloc(pb.ns_m, sizeof(float))};
  double worst_rec = 0;
  run_recurrent_f32_check(&c, qf, kf, v, ig, fg, &st, h, bound, &worst_rec);
  worst_rec = fmax(worst_rec, max_rel_f(fC, st.C, pb.ns_C));
  worst_rec = fmax(worst_rec, max_rel_f(fn, st.n, pb.ns_n));
  for (size_t bh = 0; bh < BH; bh++) worst_rec = fmax(worst_rec, fabs(fm[bh] - st.m[bh]) / fmax(1.0, fabs(st.m[bh])));
  CHECKF(worst_rec <= 1e-5, "boundary/final states vs recurrent steps: rel err %.3g", worst_rec);
  fprintf(stderr, "  boundary/final states vs fp32 recurrent steps: max rel err %.2g\n", worst_rec);
  free(st.C); free(st.n); free(st.m);
  mlstm_ws_free(w);
  free(rC); free(rn); free(rm); free(fC); free(fn); free(fm);
  free(bound); free(h);
  free(qf); free(kf); free(v); free(ig); free(fg);
  free(qd); free(kd); free(vd); free(igd); free(fgd);
  prob_free(&pb);
}

/* Copy tokens [t0, t0+n) of a [B, T, X] tensor into a [B, n, X] one. */
static float *slice_f32(const float *x, int B, int T, size_t X, int t0, int n) {
  float *y = xd_malloc((size_t)B * n * X * sizeof(float));
  for (int b = 0; b < B; b++)
    memcpy(y + (size_t)b * n * X, x + ((size_t)b * T + t0) * X, (size_t)n * X * sizeof(float));
  return y;
}

/* Prefill hand-off: two chunkwise calls (the second starting from the first's final state,
 * split off a chunk boundary) equal one call; then recurrent steps from that state equal the
 * chunkwise outputs of the longer sequence. */
static void test_split_and_decode(void) {
  for (int norm = 0; norm < 2; norm++) {
    mlstm_cfg c = mlstm_cfg_make(2, 41, 6, 3, 4, 7);
    c.chunk = 8;
    c.norm = (mlstm_norm)norm;
    prob pb;
    prob_make(&pb, c, 55 + (uint64_t)norm, 0);
    float *qf = to_f32(pb.qf, pb.nq), *kf = to_f32(pb.kf, pb.nk), *v = to_f32(pb.v, pb.nv);
    float *ig = to_f32(pb.ig, pb.ng), *fg = to_f32(pb.fg, pb.ng);
    float *h = xd_malloc(pb.nh * sizeof(float));
    mlstm_ws *w = mlstm_ws_create(&c);
    float *fC = xd_malloc(pb.ns_C * sizeof(float)), *fn = xd_malloc(pb.ns_n * sizeof(float));
    float *fm = xd_malloc(pb.ns_m * sizeof(float));
    mlstm_state fin = {fC, fn, fm};
    mlstm_chunkwise_forward(&c, w, qf, kf, v, ig, fg, NULL, &fin, NULL, h);

    const int T1 = 13, T2 = 20, T3 = c.T - T1 - T2; /* 13 is not a multiple of 8 */
    float *sC = xd_malloc(pb.ns_C * sizeof(float)), *sn = xd_malloc(pb.ns_n * sizeof(float));
    float *sm = xd_malloc(pb.ns_m * sizeof(float));
    mlstm_state st = {sC, sn, sm};
    double worst = 0;
    int t0 = 0;
    for (int part = 0; part < 3; part++) {
      const int n = part == 0 ? T1 : part == 1 ? T2 : T3;
      mlstm_cfg cp = c;
      cp.T = n;
      float *q1 = slice_f32(qf, c.B, c.T, (size_t)c.H * c.P, t0, n);
      float *k1 = slice_f32(kf, c.B, c.T, (size_t)c.G * c.P, t0, n);
      float *v1 = slice_f32(v, c.B, c.T, (size_t)c.G * c.D, t0, n);
      float *i1 = slice_f32(ig, c.B, c.T, (size_t)c.H, t0, n);
      float *f1 = slice_f32(fg, c.B, c.T, (size_t)c.H, t0, n);
      float *h1 = xd_malloc((size_t)c.B * n * c.H * c.D * sizeof(float));
      float *href = slice_f32(h, c.B, c.T, (size_t)c.H * c.D, t0, n);
      if (part < 2) {
        /* the same workspace serves the shorter calls; init aliases final (in-place hand-off) */
        mlstm_chunkwise_forward(&cp, w, q1, k1, v1, i1, f1, part ? &st : NULL, &st, NULL, h1);
      } else {
        run_recurrent_f32(&cp, q1, k1, v1, i1, f1, &st, h1);
      }
      double *hr = to_f64(href, (size_t)c.B * n * c.H * c.D);
      const double err = test_max_rel_err(h1, hr, (size_t)c.B * n * c.H * c.D);
      CHECKF(err <= 1e-5, "norm=%d part %d: rel err %.3g", norm, part, err);
      if (err > worst) worst = err;
      free(q1); free(k1); free(v1); free(i1); free(f1); free(h1); free(href); free(hr);
      t0 += n;
    }
    double *fCd = to_f64(fC, pb.ns_C), *fnd = to_f64(fn, pb.ns_n), *fmd = to_f64(fm, pb.ns_m);
    const double ec = test_max_rel_err(sC, fCd, pb.ns_C), en = test_max_rel_err(sn, fnd, pb.ns_n);
    const double em = test_max_rel_err(sm, fmd, pb.ns_m);
    CHECKF(ec <= 1e-5 && en <= 1e-5 && em <= 1e-5, "final state after hand-off: C %.3g n %.3g m %.3g", ec, en, em);
    fprintf(stderr, "  norm=%d: split/decode vs one call: h %.2g, state C %.2g n %.2g m %.2g\n", norm,
            worst, ec, en, em);
    free(fCd); free(fnd); free(fmd);
    free(sC); free(sn); free(sm); free(fC); free(fn); free(fm);
    mlstm_ws_free(w);
    free(qf); free(kf); free(v); free(ig); free(fg); free(h);
    prob_free(&pb);
  }
}

static double loss_ref(const prob *pb, const mlstm_state_f64 *init, const double *dh, double *hbuf) {
  mlstm_reference_forward_f64(&pb->c, pb->qf, pb->kf, pb->v, pb->ig, pb->fg, init, NULL, hbuf);
  double s = 0;
  for (size_t i = 0; i < pb->nh; i++) s += dh[i] * hbuf[i];
  return s;
}

/* The chunkwise backward (double instantiation) equals central finite differences of the
 * reference loss sum(dh * h) for every element of every input; and the fp32 backward matches
 * the double one. with_init: start from a random (constant) state instead of zeros.
 * Returns the worst FD relative error. */
static double check_backward(mlstm_cfg c, uint64_t seed, int signed_, int with_init) {
  prob pb;
  prob_make(&pb, c, seed, signed_);
  xd_rng r;
  xd_rng_seed(&r, seed ^ 0xabcdef);
  mlstm_state_f64 init0 = {xd_malloc(pb.ns_C * sizeof(double)), xd_malloc(pb.ns_n * sizeof(double)),
                           xd_malloc(pb.ns_m * sizeof(double))};
  for (size_t i = 0; i < pb.ns_C; i++) init0.C[i] = xd_rng_normal(&r);
  for (size_t i = 0; i < pb.ns_n; i++) init0.n[i] = 0.5 + xd_rng_uniform(&r);
  for (size_t i = 0; i < pb.ns_m; i++) init0.m[i] = -3 + 6 * xd_rng_uniform(&r);
  const mlstm_state_f64 *init = with_init ? &init0 : NULL;
  float *fi[3] = {to_f32(init0.C, pb.ns_C), to_f32(init0.n, pb.ns_n), to_f32(init0.m, pb.ns_m)};
  mlstm_state initf = {fi[0], fi[1], fi[2]};
  double *dh = xd_malloc(pb.nh * sizeof(double)), *hbuf = xd_malloc(pb.nh * sizeof(double));
  for (size_t i = 0; i < pb.nh; i++) dh[i] = xd_rng_normal(&r);
  mlstm_ws *wd = mlstm_ws_create_f64(&c);
  double *bound = xd_malloc(mlstm_boundary_size(&c) * sizeof(double));
  mlstm_chunkwise_forward_f64(&c, wd, pb.qf, pb.kf, pb.v, pb.ig, pb.fg, init, NULL, bound, hbuf);
  double *g[5], *x[5] = {pb.qf, pb.kf, pb.v, pb.ig, pb.fg};
  const size_t n[5] = {pb.nq, pb.nk, pb.nv, pb.ng, pb.ng};
  const char *name[5] = {"dqf", "dkf", "dv", "dig", "dfg"};
  for (int a = 0; a < 5; a++) {
    g[a] = xd_malloc(n[a] * sizeof(double));
    for (size_t i = 0; i < n[a]; i++) g[a][i] = 0.25; /* accumulation: result adds to this */
  }
  mlstm_chunkwise_backward_f64(&c, wd, pb.qf, pb.kf, pb.v, pb.ig, pb.fg, init, bound, dh, g[0],
                               g[1], g[2], g[3], g[4]);
  double worst = 0;
  for (int a = 0; a < 5; a++) {
    double *fd = xd_malloc(n[a] * sizeof(double)), *an = xd_malloc(n[a] * sizeof(double));
    for (size_t i = 0; i < n[a]; i++) {
      const double x0 = x[a][i], st = 1e-6;
      x[a][i] = x0 + st;
      const double lp = loss_ref(&pb, init, dh, hbuf);
      x[a][i] = x0 - st;
      const double lm = loss_ref(&pb, init, dh, hbuf);
      x[a][i] = x0;
      fd[i] = (lp - lm) / (2 * st);
      an[i] = g[a][i] - 0.25;
    }
    const double err = max_rel_d(an, fd, n[a]);
    CHECKF(err <= 1e-6, "%s: FD rel err %.3g (B=%d T=%d H=%d G=%d P=%d D=%d L=%d norm=%d)", name[a],
           err, c.B, c.T, c.H, c.G, c.P, c.D, c.chunk, (int)c.norm);
    double amax = 0;
    for (size_t i = 0; i < n[a]; i++) amax = fmax(amax, fabs(fd[i]));
    CHECKF(amax > 1e-3, "%s: gradient is ~0 (%.3g): the check would prove nothing", name[a], amax);
    if (err > worst) worst = err;
    free(fd);
    free(an);
  }

  /* fp32 backward vs the double one (same inputs rounded to float) */
  float *f32in[5], *gf[5];
  for (int a = 0; a < 5; a++) {
    f32in[a] = to_f32(x[a], n[a]);
    gf[a] = xd_calloc(n[a], sizeof(float));
  }
  float *dhf = to_f32(dh, pb.nh), *hf = xd_malloc(pb.nh * sizeof(float));
  float *boundf = xd_malloc(mlstm_boundary_size(&c) * sizeof(float));
  mlstm_ws *w = mlstm_ws_create(&c);
  mlstm_chunkwise_forward(&c, w, f32in[0], f32in[1], f32in[2], f32in[3], f32in[4], with_init ? &initf : NULL, NULL, boundf, hf);
  mlstm_chunkwise_backward(&c, w, f32in[0], f32in[1], f32in[2], f32in[3], f32in[4], with_init ? &initf : NULL, boundf, dhf,
                           gf[0], gf[1], gf[2], gf[3], gf[4]);
  for (int a = 0; a < 5; a++) {
    for (size_t i = 0; i < n[a]; i++) g[a][i] -= 0.25;
    const double err = test_max_rel_err(gf[a], g[a], n[a]);
    CHECKF(err <= 2e-4, "%s: fp32 vs f64 backward rel err %.3g", name[a], err);
  }
  mlstm_ws_free(w);
  free(dhf); free(hf); free(boundf);
  for (int a = 0; a < 5; a++) { free(f32in[a]); free(gf[a]); free(g[a]); }
  mlstm_ws_free(wd);
  free(init0.C); free(init0.n); free(init0.m); free(fi[0]); free(fi[1]); free(fi[2]);
  free(bound); free(dh); free(hbuf);
  prob_free(&pb);
  return worst;
}

static void test_backward_finite_differences(void) {
  struct { int B, T, H, G, P, D, L; } sh[] = {
    {2, 10, 4, 2, 3, 5, 4},  /* GQA, P < D, T not a multiple of L */
    {1, 9, 3, 1, 6, 2, 3},   /* one KV head for three query heads, P > D */
    {2, 5, 2, 2, 4, 3, 8},   /* L > T: one chunk (the parallel form in disguise) */
    {1, 6, 2, 1, 3, 4, 1},   /* L = 1: pure recurrence through the boundary states */
  };
  double worst = 0;
  for (int norm = 0; norm < 2; norm++) {
    for (int k = 0; k < 4; k++) {
      mlstm_cfg c = mlstm_cfg_make(sh[k].B, sh[k].T, sh[k].H, sh[k].G, sh[k].P, sh[k].D);
      c.chunk = sh[k].L;
      c.norm = (mlstm_norm)norm;
      const double e1 = check_backward(c, 1000 + 17 * (uint64_t)k + (uint64_t)norm, 0, 0);
      const double e2 = check_backward(c, 2000 + 17 * (uint64_t)k + (uint64_t)norm, 1, 0);
      const double e3 = check_backward(c, 3000 + 17 * (uint64_t)k + (uint64_t)norm, 0, 1);
      worst = fmax(worst, fmax(e1, fmax(e2, e3)));
    }
  }
  fprintf(stderr, "  backward vs finite differences (double): max rel err %.2g\n", worst);
}

/* The stabiliser's gradient only matters through eps (and the max normaliser): with a large
 * eps it is large, and the backward must still equal the finite difference. */
static void test_backward_large_eps(void) {
  mlstm_cfg c = mlstm_cfg_make(1, 12, 2, 1, 3, 3);
  c.chunk = 5;
  c.eps = 0.5;
  const double e = check_backward(c, 31337, 0, 0);
  fprintf(stderr, "  eps=0.5: FD max rel err %.2g\n", e);
}

/* The backward's two GQA schedules (by KV group when there are at least as many groups as
 * threads, else by head with private dK/dV slices summed afterwards) agree, and both match
 * finite differences. The schedule follows the workspace's thread count, set here. */
static void test_backward_schedules(void) {
  const int saved = omp_get_max_threads();
  mlstm_cfg c = mlstm_cfg_make(1, 37, 6, 2, 5, 4);
  c.chunk = 8;
  prob pb;
  prob_make(&pb, c, 4242, 0);
  xd_rng r;
  xd_rng_seed(&r, 99);
  double *dh = xd_malloc(pb.nh * sizeof(double)), *h = xd_malloc(pb.nh * sizeof(double));
  for (size_t i = 0; i < pb.nh; i++) dh[i] = xd_rng_normal(&r);
  double *bound = xd_malloc(mlstm_boundary_size(&c) * sizeof(double));
  const size_t n[5] = {pb.nq, pb.nk, pb.nv, pb.ng, pb.ng};
  double *gr[2][5];
  const int threads[2] = {1, 4}; /* B*G = 2: by group with 1 thread, by head with 4 */
  for (int k = 0; k < 2; k++) {
    omp_set_num_threads(threads[k]);
    mlstm_ws *w = mlstm_ws_create_f64(&c);
    for (int a = 0; a < 5; a++) gr[k][a] = xd_calloc(n[a], sizeof(double));
    for (int rep = 0; rep < 2; rep++) { /* twice: the by-head buffer is reused, sums double */
      mlstm_chunkwise_forward_f64(&c, w, pb.qf, pb.kf, pb.v, pb.ig, pb.fg, NULL, NULL, bound, h);
      mlstm_chunkwise_backward_f64(&c, w, pb.qf, pb.kf, pb.v, pb.ig, pb.fg, NULL, bound, dh,
                                   gr[k][0], gr[k][1], gr[k][2], gr[k][3], gr[k][4]);
    }
    mlstm_ws_free(w);
  }
  omp_set_num_threads(saved);
  for (int a = 0; a < 5; a++) {
    const double err = max_rel_d(gr[1][a], gr[0][a], n[a]);
    CHECKF(err <= 1e-13, "input %d: by-head vs by-group schedule rel diff %.3g", a, err);
    free(gr[0][a]);
    free(gr[1][a]);
  }
  free(dh); free(h); free(bound);
  prob_free(&pb);
  /* and the by-head schedule against finite differences */
  omp_set_num_threads(4);
  c.B = 1;
  const double e = check_backward(c, 777, 0, 1);
  omp_set_num_threads(saved);
  fprintf(stderr, "  by-head schedule: FD max rel err %.2g\n", e);
}

/* Load tests/fixtures/mlstm/<name>.npy (float64) and check its element count. */
static double *fixture_load(const char *name, size_t nelem) {
  char path[256];
  snprintf(path, sizeof path, "tests/fixtures/mlstm/%s.npy", name);
  xd_npy a;
  xd_err e;
  if (xd_npy_read(path, &a, &e)) {
    CHECKF(0, "%s", e.msg);
    return NULL;
  }
  if (a.type != XD_NPY_F64 || a.nelem != nelem) {
    CHECKF(0, "%s: expected %zu float64 values, got %zu (type %d)", path, nelem, a.nelem, (int)a.type);
    xd_npy_free(&a);
    return NULL;
  }
  return (double *)a.data; /* owned by the caller now */
}

/* Against an independent float64 PyTorch implementation with autograd gradients
 * (tools/gen_mlstm_fixture.py; B=2 T=13 H=4 G=2 P=3 D=5, both normalisers). */
static void test_pytorch_fixture(void) {
  if (!xd_file_exists("tests/fixtures/mlstm/qf.npy")) SKIP("tests/fixtures/mlstm absent (run from the repo root)");
  mlstm_cfg c = mlstm_cfg_make(2, 13, 4, 2, 3, 5);
  const size_t BT = 26, n[5] = {BT * 4 * 3, BT * 2 * 3, BT * 2 * 5, BT * 4, BT * 4}, nh = BT * 4 * 5;
  const char *in_names[5] = {"qf", "kf", "v", "ig", "fg"}, *g_names[5] = {"dqf", "dkf", "dv", "dig", "dfg"};
  double *x[5], *dh = fixture_load("dh", nh);
  int ok = dh != NULL;
  for (int a = 0; a < 5; a++) ok &= (x[a] = fixture_load(in_names[a], n[a])) != NULL;
  double worst_h = 0, worst_g = 0;
  for (int norm = 0; ok && norm < 2; norm++) {
    const char *nn = norm ? "max" : "paper";
    char name[64];
    snprintf(name, sizeof name, "h_%s", nn);
    double *href = fixture_load(name, nh);
    double *gref[5];
    int gok = href != NULL;
    for (int a = 0; a < 5; a++) {
      snprintf(name, sizeof name, "%s_%s", g_names[a], nn);
      gok &= (gref[a] = fixture_load(name, n[a])) != NULL;
    }
    c.norm = (mlstm_norm)norm;
    for (int L = 1; gok && L <= 16; L *= 4) { /* L = 1, 4, 16 (one chunk longer than T) */
      c.chunk = L;
      mlstm_ws *w = mlstm_ws_create_f64(&c);
      double *h = xd_malloc(nh * sizeof(double)), *bound = xd_malloc(mlstm_boundary_size(&c) * sizeof(double));
      mlstm_chunkwise_forward_f64(&c, w, x[0], x[1], x[2], x[3], x[4], NULL, NULL, bound, h);
      double err = max_rel_d(h, href, nh);
      CHECKF(err <= 1e-12, "norm=%s L=%d: h vs PyTorch rel err %.3g", nn, L, err);
      worst_h = fmax(worst_h, err);
      double *g[5];
      for (int a = 0; a < 5; a++) g[a] = xd_calloc(n[a], sizeof(double));
      mlstm_chunkwise_backward_f64(&c, w, x[0], x[1], x[2], x[3], x[4], NULL, bound, dh, g[0], g[1], g[2], g[3], g[4]);
      for (int a = 0; a < 5; a++) {
        err = max_rel_d(g[a], gref[a], n[a]);
        CHECKF(err <= 1e-10, "norm=%s L=%d: %s vs PyTorch autograd rel err %.3g", nn, L, g_names[a], err);
        worst_g = fmax(worst_g, err);
        free(g[a]);
      }
      free(h);
      free(bound);
      mlstm_ws_free(w);
    }
    if (gok) {
      double *h = xd_malloc(nh * sizeof(double));
      mlstm_parallel_forward_f64(&c, x[0], x[1], x[2], x[3], x[4], h);
      const double err = max_rel_d(h, href, nh);
      CHECKF(err <= 1e-12, "norm=%s: parallel h vs PyTorch rel err %.3g", nn, err);
      free(h);
    }
    free(href);
    for (int a = 0; a < 5; a++) free(gref[a]);
  }
  fprintf(stderr, "  vs PyTorch float64 + autograd: h %.2g, gradients %.2g\n", worst_h, worst_g);
  free(dh);
  for (int a = 0; a < 5; a++) free(x[a]);
}

static void test_cfg_check(void) {
  xd_err e;
  mlstm_cfg c = mlstm_cfg_make(1, 8, 6, 4, 8, 8);
  CHECK(mlstm_cfg_check(&c, &e) == -1 && strstr(e.msg, "multiple"));
  c = mlstm_cfg_make(1, 0, 4, 4, 8, 8);
  CHECK(mlstm_cfg_check(&c, &e) == -1 && strstr(e.msg, "positive"));
  c = mlstm_cfg_make(1, 8, 4, 4, 8, 8);
  c.chunk = 0;
  CHECK(mlstm_cfg_check(&c, &e) == -1);
  c.chunk = 16;
  CHECK(mlstm_cfg_check(&c, &e) == 0);
  CHECK(mlstm_num_chunks(&c) == 1);
  c.T = 33;
  CHECK(mlstm_num_chunks(&c) == 3);
  CHECK(mlstm_boundary_size(&c) == (size_t)4 * 3 * (64 + 8 + 1));
}

int main(void) {
  RUN(test_cfg_check);
  RUN(test_forward_forms_agree);
  RUN(test_extreme_gates);
  RUN(test_boundary_states);
  RUN(test_split_and_decode);
  RUN(test_backward_finite_differences);
  RUN(test_backward_large_eps);
  RUN(test_backward_schedules);
  RUN(test_pytorch_fixture);
  return test_finish();
}
