/* mLSTM ops on CPU: configuration, workspace, the float and double instantiations of
 * mlstm_impl.inc, and the plain double-precision reference. Maths: docs/mlstm.md. */
#include "ops/cpu/mlstm.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"

struct mlstm_ws {
  int T, L, P, D; /* the largest T served; the chunk length, feature and value dims */
  int Le;         /* min(L, T): rows of the per-chunk scratch and its leading dimension */
  size_t esize;  /* sizeof(float) or sizeof(double) */
  int nthreads;
  size_t stride; /* bytes of scratch per thread (a multiple of 64) */
  void *buf;
  void *hbuf;       /* backward, GQA by-head schedule: per-head dK/dV, grown on first use */
  size_t hbuf_size; /* bytes */
};

/* Below this much work (roughly multiply-adds) a call runs on one thread: forking a team costs
 * microseconds, more on a loaded machine where idle threads spin, and decode steps are tiny. */
#define MLSTM_PAR_MIN ((size_t)1 << 18)

/* log sigmoid(x) = -log(1 + exp(-x)), computed without overflow for either sign. */
static inline double mlstm_logsig(double x) {
  return x >= 0 ? -log1p(exp(-x)) : x - log1p(exp(x));
}
static inline double mlstm_sigm(double x) {
  if (x >= 0) return 1 / (1 + exp(-x));
  const double e = exp(x);
  return e / (1 + e);
}

mlstm_cfg mlstm_cfg_make(int B, int T, int H, int G, int P, int D) {
  mlstm_cfg c = {B, T, H, G, P, D, 64, MLSTM_NORM_PAPER, 1e-6};
  return c;
}

int mlstm_cfg_check(const mlstm_cfg *c, xd_err *e) {
  if (c->B < 1 || c->T < 1 || c->H < 1 || c->G < 1 || c->P < 1 || c->D < 1 || c->chunk < 1)
    return xd_errf(e, "mlstm: sizes must be positive (B=%d T=%d H=%d G=%d P=%d D=%d L=%d)", c->B,
                   c->T, c->H, c->G, c->P, c->D, c->chunk);
  if (c->H % c->G)
    return xd_errf(e, "mlstm: query heads H=%d not a multiple of KV heads G=%d", c->H, c->G);
  if (c->norm != MLSTM_NORM_PAPER && c->norm != MLSTM_NORM_MAX)
    return xd_errf(e, "mlstm: unknown normaliser %d", (int)c->norm);
  if (!(c->eps >= 0) || !isfinite(c->eps)) return xd_errf(e, "mlstm: eps must be finite and >= 0");
  /* every element count and leading dimension must fit (BLAS takes int leading dims) */
  size_t n = 0;
  if ((size_t)c->H * c->P > INT32_MAX || (size_t)c->H * c->D > INT32_MAX ||
      xd_mul_size((size_t)c->B, (size_t)c->T, &n) || xd_mul_size(n, (size_t)c->H, &n) ||
      xd_mul_size(n, (size_t)(c->P > c->D ? c->P : c->D), &n) || n > (size_t)PTRDIFF_MAX / 8)
    return xd_errf(e, "mlstm: tensor sizes overflow (B=%d T=%d H=%d P=%d D=%d)", c->B, c->T, c->H,
                   c->P, c->D);
  return 0;
}

int mlstm_num_chunks(const mlstm_cfg *c) { return c->T / c->chunk + (c->T % c->chunk != 0); }

size_t mlstm_boundary_size(const mlstm_cfg *c) {
  return (size_t)c->B * c->H * (size_t)mlstm_num_chunks(c) * ((size_t)c->P * c->D + c->P + 1);
}

/* Per-thread scratch: doubles 3L + 3T, then elements 6L + 3L^2 + 4LD + 2LP + 2PD + 2P, then T
 * branch bytes; see scr_view in mlstm_impl.inc (the two must agree). */
static size_t mlstm_scratch_bytes(int T, int L, int P, int D, size_t esize) {
  const size_t l = (size_t)L, t = (size_t)T, p = (size_t)P, d = (size_t)D;
  size_t n = (3 * l + 3 * t) * sizeof(double);
  n += (6 * l + 3 * l * l + 4 * l * d + 2 * l * p + 2 * p * d + 2 * p) * esize;
  n += t;
  return (n + 63) & ~(size_t)63;
}

static mlstm_ws *mlstm_ws_new(const mlstm_cfg *c, size_t esize) {
  XD_CHECK(c->T >= 1 && c->chunk >= 1 && c->P >= 1 && c->D >= 1);
  mlstm_ws *w = xd_calloc(1, sizeof *w);
  w->T = c->T;
  w->L = c->chunk;
  w->Le = c->chunk < c->T ? c->chunk : c->T; /* a chunk never has more than T rows */
  w->P = c->P;
  w->D = c->D;
  w->esize = esize;
  w->nthreads = omp_get_max_threads();
  w->stride = mlstm_scratch_bytes(w->T, w->Le, w->P, w->D, esize);
  w->buf = xd_aligned_alloc(w->stride * (size_t)w->nthreads);
  return w;
}

mlstm_ws *mlstm_ws_create(const mlstm_cfg *c) { return mlstm_ws_new(c, sizeof(float)); }
mlstm_ws *mlstm_ws_create_f64(const mlstm_cfg *c) { return mlstm_ws_new(c, sizeof(double)); }

void mlstm_ws_free(mlstm_ws *w) {
  if (!w) return;
  free(w->buf);
  free(w->hbuf);
  free(w);
}

/* ---- the two instantiations ---------------------------------------------- */
#define R float
#define SFX(x) x
#define STATE mlstm_state
#define GEMM cblas_sgemm
#define EXPR expf
#define EXP_MIN -87.0f
#define BLAS(x) cblas_s##x
#include "ops/cpu/mlstm_impl.inc"
#undef R
#undef SFX
#undef STATE
#undef GEMM
#undef EXPR
#undef EXP_MIN
#undef BLAS

#define R double
#define SFX(x) x##_f64
#define STATE mlstm_state_f64
#define GEMM cblas_dgemm
#define EXPR exp
#define EXP_MIN -700.0
#define BLAS(x) cblas_d##x
#include "ops/cpu/mlstm_impl.inc"
#undef R
#undef SFX
#undef STATE
#undef GEMM
#undef EXPR
#undef EXP_MIN
#undef BLAS

/* ---- reference ----------------------------------------------------------- */
void mlstm_reference_forward_f64(const mlstm_cfg *c, const double *qf, const double *kf,
                                 const double *v, const double *ig, const double *fg,
                                 const mlstm_state_f64 *init, mlstm_state_f64 *final, double *h) {
  const int B = c->B, T = c->T, H = c->H, G = c->G, P = c->P, D = c->D;
  const double s = 1 / sqrt((double)P);
  double *C = xd_malloc((size_t)P * D * sizeof(double)), *n = xd_malloc((size_t)P * sizeof(double));
  for (int b = 0; b < B; b++) {
    for (int hh = 0; hh < H; hh++) {
      const int g = hh / (H / G);
      const size_t bh = (size_t)b * H + hh;
      double m = init ? init->m[bh] : 0;
      for (int i = 0; i < P * D; i++) C[i] = init ? init->C[bh * P * D + i] : 0;
      for (int p = 0; p < P; p++) n[p] = init ? init->n[bh * P + p] : 0;
      for (int t = 0; t < T; t++) {
        const size_t tok = (size_t)b * T + t;
        const double it = ig[tok * H + hh], ft = fg[tok * H + hh];
        const double l = -log1p(exp(-ft)); /* fine in double for |f| <~ 700 */
        const double mt = fmax(l + m, it);
        const double fp = exp(l + m - mt), ip = exp(it - mt);
        const double *k = kf + (tok * G + g) * P, *vv = v + (tok * G + g) * D;
        const double *q = qf + (tok * H + hh) * P;
        for (int p = 0; p < P; p++) {
          for (int d = 0; d < D; d++) C[p * D + d] = fp * C[p * D + d] + ip * k[p] * vv[d];
          n[p] = fp * n[p] + ip * k[p];
        }
        m = mt;
        double den = 0;
        for (int p = 0; p < P; p++) den += s * q[p] * n[p];
        double a = fabs(den);
        if (c->norm == MLSTM_NORM_MAX) a = fmax(a, exp(-m));
        a += c->eps;
        double *ht = h + (tok * H + hh) * D;
        for (int d = 0; d < D; d++) {
          double num = 0;
          for (int p = 0; p < P; p++) num += s * q[p] * C[p * D + d];
          ht[d] = num / a;
        }
      }
      if (final) {
        memcpy(final->C + bh * P * D, C, (size_t)P * D * sizeof(double));
        memcpy(final->n + bh * P, n, (size_t)P * sizeof(double));
        final->m[bh] = m;
      }
    }
  }
  free(C);
  free(n);
}
