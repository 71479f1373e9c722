#include "ops/cpu/matmul.h"
#include <cblas.h>
#include <stddef.h>
#include "ops/cpu/threads.h"

/* Products are split into column blocks of a FIXED width, whatever the thread count: the BLAS
 * kernels round differently for different block widths, so a width that followed the thread
 * count made a run's weights depend on it (and a resume on another machine inexact). Blocks are
 * handed out dynamically: a descheduled thread delays a product by one block, not by half. */
#define MATMUL_BLOCK 256
static int n_blocks(int n) { return (n + MATMUL_BLOCK - 1) / MATMUL_BLOCK; }
static void block_range(int n, int t, int *c0, int *c1) {
  *c0 = t * MATMUL_BLOCK;
  *c1 = (t + 1) * MATMUL_BLOCK < n ? (t + 1) * MATMUL_BLOCK : n;
}

void matmul_forward(float *out, const float *x, const float *w, const float *b, int N, int Din, int Dout) {
  if (b) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
      for (int o = 0; o < Dout; o++) out[(size_t)n * Dout + o] = b[o];
  }
  const float beta = b ? 1.0f : 0.0f;
  const int nt = xd_blas_split_threads();
  /* each block: out[:, o0:o1] = x W[o0:o1]^T (it reads only its rows of W) */
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int t = 0; t < n_blocks(Dout); t++) {
    int o0, o1;
    block_range(Dout, t, &o0, &o1);
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
    for (int t = 0; t < n_blocks(Din); t++) {
      int i0, i1;
      block_range(Din, t, &i0, &i1);
      if (i1 > i0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, i1 - i0, Dout, 1.0f, dout, Dout, w + i0, Din, 1.0f,
                    dx + i0, Din);
    }
  }
  if (dw) { /* dw[o0:o1, :] += dout[:, o0:o1]^T x */
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (int t = 0; t < n_blocks(Dout); t++) {
      int o0, o1;
      block_range(Dout, t, &o0, &o1);
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
