/* Feature map phi(x) = softmax(x P) (plain or hedgehog). See feature_map.h. */
#include "ops/cpu/feature_map.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <tgmath.h>

#include "core/core.h"
#include "ops/cpu/parallel.h"

#define XD_TWIN_BODY "ops/cpu/feature_map_impl.inc"
#include "ops/cpu/twin.h"

void feature_map_init_identity(float *P, const feature_map_shape *s) {
  const int dp = feature_map_p_cols(s);
  memset(P, 0, sizeof(float) * (size_t)s->Hx * s->d * dp);
  for (int h = 0; h < s->Hx; h++)
    for (int i = 0; i < s->d && i < dp; i++) P[((size_t)h * s->d + i) * dp + i] = 1;
}
