#include "ops/cpu/matmul.h"
#include <cblas.h>
#include <stddef.h>
#include "ops/cpu/threads.h"

/* Columns [c0, c1) of block t when a dimension of size n is split into nb blocks (multiples of
 * 16 where possible). Blocks are handed out dynamically, 4 per thread: on a shared machine a
 * descheduled thread then delays a product by one small block, not by half of it. */
static void block_range(int n, int nb, int t, int *c0, int *c1) {
  int per = (n + nb - 1) / nb;
  per = (per + 15) / 16 * 16;
  *c0 = t * per < n ? t * per : n;
  *c1 = (t + 1) * per < n ? (t + 1) * per : n;
}

void matmul_forward(float *out, const float *x, const float *w, const float *b, int N, int Din, int Dout) {
  if (b) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
      for (int o = 0; o < Dout; o++) out[(size_t)n * Dout + o] = b[o];
  }
  const float beta = b ? 1.0f : 0.0f;
  const int nt = xd_blas_split_threads();
  if (nt == 1) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, Dout, Din, 1.0f, x, Din, w, Din, beta, out, Dout);
    return;
  }
  /* each thread: out[:, o0:o1] = x W[o0:o1]^T (it reads only its rows of W) */
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int t = 0; t < 4 * nt; t++) {
    int o0, o1;
    block_range(Dout, 4 * nt, t, &o0, &o1);
    if (o1 > o0)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, o1 - o0, Din, 1.0f, x, Din, w + (size_t)o0 * Din, Din, beta,
                  out + o0, Dout);
  }
}

void matmul_backward(float *dx, float *dw, float *db, const float *dout, const float *x, const float *w, int N, int Din,
                     int Dout) {
  const int nt = xd_blas_split_threads();
  if (dx) { /* dx[:, i0:i1] += dout W[:, i0:i1] */
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (int t = 0; t < 4 * nt; t++) {
      int i0, i1;
      block_range(Din, 4 * nt, t, &i0, &i1);
      if (i1 > i0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, i1 - i0, Dout, 1.0f, dout, Dout, w + i0, Din, 1.0f,
                    dx + i0, Din);
    }
  }
  if (dw) { /* dw[o0:o1, :] += dout[:, o0:o1]^T x */
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (int t = 0; t < 4 * nt; t++) {
      int o0, o1;
      block_range(Dout, 4 * nt, t, &o0, &o1);
      if (o1 > o0)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, o1 - o0, Din, N, 1.0f, dout + o0, Dout, x, Din, 1.0f,
                    dw + (size_t)o0 * Din, Din);
    }
  }
  if (db) {
#pragma omp parallel for schedule(static)
    for (int o = 0; o < Dout; o++) {
      float s = 0;
      for (int n = 0; n < N; n++) s += dout[(size_t)n * Dout + o];
      db[o] += s;
    }
  }
}
