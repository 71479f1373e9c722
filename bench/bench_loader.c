/* Loader throughput: tokens/s that xd_loader_next delivers (shuffled rows, uint16 and uint32
 * shards), as a ratio to a plain sequential copy of the same number of int32 tokens measured in
 * the same run. Writes its shards under /tmp and removes them.
 * usage: bench_loader [n_tokens (default 50M)] */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "data/loader.h"
#include "data/shard.h"

int main(int argc, char **argv) {
  const uint64_t n = argc > 1 ? strtoull(argv[1], NULL, 10) : 50000000ull;
  const int T = 4096, B = 16;
  int32_t *tok = xd_malloc(n * 4);
  xd_rng r;
  xd_rng_seed(&r, 1);
  uint64_t offs[2] = {0, n};
  char path[64];
  snprintf(path, sizeof path, "/tmp/xd-bench-loader-%d.xds", (int)getpid());
  int32_t *batch = xd_malloc(sizeof(int32_t) * B * (T + 1)), *dst = xd_malloc(n * 4);
  uint8_t *mask = xd_malloc((size_t)B * (T + 1));
  /* baseline: sequential copy of n int32 (pages touched first, so no page faults are timed) */
  memset(dst, 1, n * 4);
  memset(tok, 2, n * 4);
  double t0 = xd_now();
  memcpy(dst, tok, n * 4);
  double base = xd_now() - t0;
  printf("baseline memcpy: %.1f M tokens/s\n", n / base / 1e6);
  const uint64_t vocabs[2] = {32000, 128256};
  for (int v = 0; v < 2; v++) {
    for (uint64_t i = 0; i < n; i++) tok[i] = (int32_t)(xd_rng_u64(&r) % vocabs[v]);
    xd_err e;
    if (xd_shard_write(path, tok, NULL, n, offs, 1, vocabs[v], NULL, &e) != 0) { fprintf(stderr, "%s\n", e.msg); return 1; }
    xd_loader *L;
    xd_loader_config c = {.seq_len = T, .batch = B, .seed = 3, .shuffle = 1, .rank = 0, .world = 1};
    t0 = xd_now();
    const char *p = path;
    if (xd_loader_open_shards(&L, &p, 1, &c, &e) != 0) { fprintf(stderr, "%s\n", e.msg); return 1; }
    double t_open = xd_now() - t0;
    const uint64_t batches = xd_loader_rows_per_rank(L) / B;
    t0 = xd_now();
    uint64_t sum = 0;
    for (uint64_t b = 0; b < batches; b++) {
      xd_loader_next(L, batch, mask);
      sum += (uint64_t)batch[b % (B * (T + 1))];
    }
    double t = xd_now() - t0, toks = (double)batches * B * (T + 1);
    printf("uint%d shard: open+verify %.0f ms (%.0f M tokens/s), next %.1f M tokens/s = %.2fx memcpy (checksum %llu)\n",
           v ? 32 : 16, t_open * 1e3, n / t_open / 1e6, toks / t / 1e6, (toks / t) / (n / base), (unsigned long long)sum);
    xd_loader_free(L);
    unlink(path);
  }
  free(tok); free(batch); free(dst); free(mask);
  return 0;
}
