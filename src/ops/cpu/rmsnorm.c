#include "ops/cpu/rmsnorm.h"
#include <math.h>
#include <stddef.h>

void rmsnorm_forward(float *out, float *rstd, const float *x, const float *w, int N, int C, float eps) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) {
    const float *xr = x + (size_t)n * C;
    float *o = out + (size_t)n * C;
    float ss = 0;
    for (int c = 0; c < C; c++) ss += xr[c] * xr[c];
    const float r = 1.0f / sqrtf(ss / (float)C + eps);
    if (rstd) rstd[n] = r;
    for (int c = 0; c < C; c++) o[c] = w[c] * (xr[c] * r);
  }
}

void rmsnorm_backward(float *dx, float *dw, const float *dout, const float *x, const float *w, const float *rstd,
                      int N, int C) {
  if (dx) {
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
      const float *xr = x + (size_t)n * C, *g = dout + (size_t)n * C;
      const float r = rstd[n];
      /* y_c = w_c x_c r;  dx_c = r (g_c w_c) - x_c r^3 / C * sum_j g_j w_j x_j */
      float dot = 0;
      for (int c = 0; c < C; c++) dot += g[c] * w[c] * xr[c];
      const float k = dot * r * r * r / (float)C;
      float *d = dx + (size_t)n * C;
      for (int c = 0; c < C; c++) d[c] += g[c] * w[c] * r - xr[c] * k;
    }
  }
  if (dw) {
#pragma omp parallel for schedule(static)
    for (int c = 0; c < C; c++) {
      float s = 0;
      for (int n = 0; n < N; n++) s += dout[(size_t)n * C + c] * x[(size_t)n * C + c] * rstd[n];
      dw[c] += s;
    }
  }
}
