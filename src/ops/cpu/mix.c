/* Mixing gate of the global (mLSTM) and local (SWA) branches. See mix.h. */
#include "ops/cpu/mix.h"

#include <stdlib.h>
#include <string.h>
#include <tgmath.h>

#include "core/core.h"
#include "ops/cpu/parallel.h"

#define XD_TWIN_BODY "ops/cpu/mix_impl.inc"
#include "ops/cpu/twin.h"

void mix_init(float *w_o, float *b_o, int H, int d) {
  memset(w_o, 0, sizeof(float) * (size_t)H * 3 * d);
  for (int h = 0; h < H; h++) b_o[h] = -2.0f;
}
