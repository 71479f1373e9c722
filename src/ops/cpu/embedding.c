#include "ops/cpu/embedding.h"
#include <stddef.h>
#include <string.h>

void embedding_forward(float *out, const int32_t *ids, const float *table, int N, int D) {
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; n++) memcpy(out + (size_t)n * D, table + (size_t)ids[n] * D, (size_t)D * sizeof(float));
}

void embedding_backward(float *dtable, const float *dout, const int32_t *ids, int N, int D) {
  for (int n = 0; n < N; n++) {
    float *t = dtable + (size_t)ids[n] * D;
    const float *g = dout + (size_t)n * D;
    for (int c = 0; c < D; c++) t[c] += g[c];
  }
}
