/* libFuzzer target: the .npy parser and id conversion on arbitrary bytes. */
#include <stdint.h>
#include <stdlib.h>
#include "io/npy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  xd_npy a;
  xd_err e;
  if (xd_npy_parse(data, size, "fuzz.npy", &a, &e) != 0) return 0;
  int32_t *ids = NULL;
  if (xd_npy_to_ids(&a, "fuzz.npy", 1000, &ids, &e) == 0) free(ids);
  xd_npy_free(&a);
  return 0;
}
