/* libFuzzer target: the safetensors header parser and tensor conversion on arbitrary bytes. */
#include <stdint.h>
#include <stdlib.h>
#include "io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  xd_safetensors st;
  xd_err e;
  if (xd_st_parse_buffer(&st, data, size, "fuzz.safetensors", &e) != 0) return 0;
  for (int i = 0; i < st.ntensors; i++) {
    const xd_st_tensor *t = &st.tensors[i];
    if (t->nelem > (1u << 20)) continue;
    float *buf = malloc((t->nelem ? t->nelem : 1) * sizeof(float));
    xd_st_to_f32(t, buf, t->nelem, "fuzz.safetensors", &e);
    free(buf);
    if (xd_st_find(&st, t->name) == NULL) abort(); /* every parsed tensor must be findable */
  }
  xd_st_close(&st);
  return 0;
}
