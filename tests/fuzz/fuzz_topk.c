/* libFuzzer target: the teacher top-k cache reader (distill --teacher-cache) on arbitrary bytes:
 * it must open or fail with one line naming the file, and every row it hands out must hold ids
 * inside the vocabulary, never reading past the mapping. Most inputs fail the payload checksum,
 * which the fuzzer will not solve, so it is recomputed here when the input asks for it (first
 * byte odd). The reader maps a file, so each input is written to a per-process temp file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "distill/topk_cache.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  const int fix = data[0] & 1;
  data++;
  size--;
  uint8_t *buf = malloc(size ? size : 1);
  memcpy(buf, data, size);
  if (fix && size >= 64) {
    const uint64_t h = xd_topk_fnv(XD_TOPK_FNV_INIT, buf + 64, size - 64);
    for (int i = 0; i < 8; i++) buf[40 + i] = (uint8_t)(h >> (8 * i));
  }
  char path[64];
  snprintf(path, sizeof path, "/tmp/xd-fuzz-topk-%d.bin", (int)getpid());
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(buf, 1, size, f) != size || fclose(f) != 0) abort();
  xd_topk_reader r;
  xd_err e;
  if (xd_topk_reader_open(&r, path, &e) == 0) {
    const size_t n = (size_t)r.info.seq_len * r.info.k;
    for (uint64_t row = 0; row < r.info.n_rows && row < 4; row++) {
      const int32_t *ids;
      const float *lp;
      if (xd_topk_reader_row(&r, row, &ids, &lp, &e) == 0) {
        volatile float s = 0;
        for (size_t i = 0; i < n; i++) {
          if (ids[i] < 0 || (uint32_t)ids[i] >= r.info.vocab) abort(); /* a row handed out must be valid */
          s += lp[i];
        }
        (void)s;
      } else if (strchr(e.msg, '\n') || !strstr(e.msg, path)) {
        abort();
      }
    }
    if (xd_topk_reader_row(&r, r.info.n_rows, NULL, NULL, &e) == 0) abort(); /* past the end: refused */
    xd_topk_reader_close(&r);
  } else if (strchr(e.msg, '\n') || !strstr(e.msg, path)) {
    abort(); /* errors are one line naming the file */
  }
  free(buf);
  return 0;
}
