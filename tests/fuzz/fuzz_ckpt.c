/* libFuzzer target: the training-checkpoint parser on arbitrary bytes (build with
 * -DXD_FUZZ=ON and clang). Most inputs fail the checksum; the interesting ones are seeded
 * from real checkpoints with the CRC fixed up, which the fuzzer will not find by itself, so
 * the CRC is recomputed here when the input asks for it (first byte odd). */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include "train/checkpoint.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  const int fix = data[0] & 1;
  data++;
  size--;
  uint8_t *buf = malloc(size ? size : 1);
  memcpy(buf, data, size);
  if (fix && size >= 16) {
    uint64_t crc = crc32(crc32(0L, Z_NULL, 0), buf, (uInt)(size - 16));
    memcpy(buf + size - 16, &crc, 8);
  }
  xd_err e;
  xd_ckpt_verify_buffer(buf, size, "fuzz", &e);
  free(buf);
  return 0;
}
