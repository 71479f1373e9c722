/* Teacher top-k cache: round trip, and corrupt files refused with a message naming the file. */
#include "test.h"
#include "distill/teacher_topk_cuda.h"
#include "distill/topk_cache.h"

static void write_cache(const char *path, int rows, int32_t *ids, float *lp) {
  xd_topk_writer w;
  xd_err e;
  CHECK(xd_topk_writer_open(&w, path, 4, 50, 3, 0xabcdefull, &e) == 0);
  for (int r = 0; r < rows; r++) CHECK(xd_topk_writer_add(&w, ids + r * 12, lp + r * 12, &e) == 0);
  CHECK(xd_topk_writer_close(&w, &e) == 0);
}

static void test_round_trip(void) {
  const char *dir = test_tmpdir("topk");
  char path[600];
  snprintf(path, sizeof path, "%s/c.topk", dir);
  xd_rng r;
  xd_rng_seed(&r, 5);
  int32_t ids[36];
  float lp[36];
  for (int i = 0; i < 36; i++) { ids[i] = (int32_t)(xd_rng_u64(&r) % 50); lp[i] = (float)-xd_rng_uniform(&r) * 5; }
  write_cache(path, 3, ids, lp);
  xd_topk_reader rd;
  xd_err e;
  CHECKF(xd_topk_reader_open(&rd, path, &e) == 0, "%s", e.msg);
  CHECK(rd.info.n_rows == 3 && rd.info.k == 4 && rd.info.vocab == 50 && rd.info.seq_len == 3 && rd.info.tokenizer_hash == 0xabcdefull);
  for (int row = 0; row < 3; row++) {
    const int32_t *pi;
    const float *pl;
    CHECK(xd_topk_reader_row(&rd, (uint64_t)row, &pi, &pl, &e) == 0);
    CHECK(memcmp(pi, ids + row * 12, 48) == 0 && memcmp(pl, lp + row * 12, 48) == 0);
  }
  const int32_t *pi;
  const float *pl;
  CHECK(xd_topk_reader_row(&rd, 3, &pi, &pl, &e) != 0);
  xd_topk_reader_close(&rd);

  /* Corruptions: one flipped payload byte, truncation, bad magic. */
  xd_mmap m;
  CHECK(xd_mmap_open(&m, path, &e) == 0);
  uint8_t *copy = malloc(m.size);
  memcpy(copy, m.data, m.size);
  size_t size = m.size;
  xd_mmap_close(&m);
  char bad[600];
  snprintf(bad, sizeof bad, "%s/bad.topk", dir);
  copy[100] ^= 1;
  CHECK(xd_write_file_atomic(bad, copy, size, &e) == 0);
  CHECK(xd_topk_reader_open(&rd, bad, &e) != 0 && strstr(e.msg, "checksum") && strstr(e.msg, bad));
  copy[100] ^= 1;
  CHECK(xd_write_file_atomic(bad, copy, size - 8, &e) == 0);
  CHECK(xd_topk_reader_open(&rd, bad, &e) != 0 && strstr(e.msg, "truncated"));
  copy[0] = 'Y';
  CHECK(xd_write_file_atomic(bad, copy, size, &e) == 0);
  CHECK(xd_topk_reader_open(&rd, bad, &e) != 0 && strstr(e.msg, "bad magic"));
  free(copy);
  /* Out-of-range ids are refused by the writer. */
  xd_topk_writer w;
  CHECK(xd_topk_writer_open(&w, bad, 4, 50, 3, 0, &e) == 0);
  ids[5] = 77;
  CHECK(xd_topk_writer_add(&w, ids, lp, &e) != 0 && strstr(e.msg, "out of range"));
  xd_topk_writer_abort(&w);
}

/* XD_HEAD_ROWS (the row blocks of stage II's LM heads, distill / teacher-cache --device cuda):
 * a count is taken as it is (0: all rows); anything else falls back to the default. */
static void test_head_rows_env(void) {
  const struct { const char *v; int want; } c[] = {{"", XD_HEAD_ROWS_DEFAULT}, {"0", 0}, {"37", 37},
                                                   {"2k", XD_HEAD_ROWS_DEFAULT}, {"-5", XD_HEAD_ROWS_DEFAULT},
                                                   {"99999999999", XD_HEAD_ROWS_DEFAULT}};
  for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
    setenv("XD_HEAD_ROWS", c[i].v, 1);
    CHECKF(xd_stage2_head_rows() == c[i].want, "XD_HEAD_ROWS='%s': %d, want %d", c[i].v, xd_stage2_head_rows(), c[i].want);
  }
  unsetenv("XD_HEAD_ROWS");
  CHECK(xd_stage2_head_rows() == XD_HEAD_ROWS_DEFAULT);
}

int main(void) {
  RUN(test_round_trip);
  RUN(test_head_rows_env);
  return test_finish();
}
