/* mLSTM gate pre-activations with optional soft cap. See gates.h. */
#include "ops/cpu/gates.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <tgmath.h>

#include "core/core.h"
#include "ops/cpu/parallel.h"

#define XD_TWIN_BODY "ops/cpu/gates_impl.inc"
#include "ops/cpu/twin.h"

void gates_init(float *w_i, float *b_i, float *w_f, float *b_f, int H, int D) {
  memset(w_i, 0, sizeof(float) * (size_t)H * D);
  memset(w_f, 0, sizeof(float) * (size_t)H * D);
  for (int h = 0; h < H; h++) {
    b_i[h] = 0;
    b_f[h] = H > 1 ? 3.0f + 3.0f * (float)h / (float)(H - 1) : 3.0f;
  }
}
