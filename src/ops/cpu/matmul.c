#include "ops/cpu/matmul.h"
#include <cblas.h>
#include <stddef.h>

void matmul_forward(float *out, const float *x, const float *w, const float *b, int N, int Din, int Dout) {
  if (b) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++)
      for (int o = 0; o < Dout; o++) out[(size_t)n * Dout + o] = b[o];
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, Dout, Din, 1.0f, x, Din, w, Din, b ? 1.0f : 0.0f, out, Dout);
}

void matmul_backward(float *dx, float *dw, float *db, const float *dout, const float *x, const float *w, int N, int Din,
                     int Dout) {
  if (dx) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, Din, Dout, 1.0f, dout, Dout, w, Din, 1.0f, dx, Din);
  if (dw) cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Dout, Din, N, 1.0f, dout, Dout, x, Din, 1.0f, dw, Din);
  if (db) {
#pragma omp parallel for schedule(static)
    for (int o = 0; o < Dout; o++) {
      float s = 0;
      for (int n = 0; n < N; n++) s += dout[(size_t)n * Dout + o];
      db[o] += s;
    }
  }
}
