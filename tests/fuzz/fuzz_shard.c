/* libFuzzer target: arbitrary bytes as a token shard must parse or fail with one line, never
 * crash or read out of bounds. Build: cmake -DXD_FUZZ=ON -DCMAKE_C_COMPILER=clang; run
 * ./fuzz_shard -max_total_time=60. */
#include <stdlib.h>
#include <string.h>
#include "data/shard.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  uint8_t *buf = xd_aligned_alloc(size ? size : 1); /* the reader wants 8-byte alignment, as mmap gives */
  memcpy(buf, data, size);
  xd_shard s;
  xd_err e;
  if (xd_shard_parse(&s, buf, size, "fuzz.xds", 1, &e) == 0) {
    if (s.n_tokens > 0) {
      int32_t t[16];
      uint8_t m[16];
      size_t n = s.n_tokens < 16 ? (size_t)s.n_tokens : 16;
      xd_shard_read(&s, s.n_tokens - n, n, t, m);
    }
    xd_shard_close(&s);
  } else if (strchr(e.msg, '\n') || !strstr(e.msg, "fuzz.xds")) {
    abort(); /* errors are one line naming the file */
  }
  free(buf);
  return 0;
}
