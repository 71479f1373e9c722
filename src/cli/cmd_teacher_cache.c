/* xdistill teacher-cache — the teacher's top-k log-probs for every training row, so stage II
 * can run without the teacher resident. */
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "distill/stages.h"
#include "ops/cpu/kd_loss.h"

static const char *usage =
  "usage: xdistill teacher-cache --teacher DIR --data DIR --out FILE [--seq-len T] [--k K] [--batch B]\n"
  "\n"
  "Runs the teacher over every row of the train split (rows of T+1 tokens in stream order, as\n"
  "the loader cuts them) and writes, per position, its top-K token ids and their full-vocabulary\n"
  "log-probabilities (docs/topk-cache.md). `xdistill distill --teacher-cache FILE` then needs no\n"
  "teacher. T and K must match the distill run's seq_len and kd_topk (defaults 4096, 256).\n";

int cmd_teacher_cache(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) { fputs(usage, stdout); return 0; }
  const char *tdir = NULL, *data = NULL, *out = NULL, *ts = "4096", *ks = "256", *bs = "1";
  if (cli_take_flag(&argc, argv, "--teacher", &tdir) || cli_take_flag(&argc, argv, "--data", &data) ||
      cli_take_flag(&argc, argv, "--out", &out) || cli_take_flag(&argc, argv, "--seq-len", &ts) ||
      cli_take_flag(&argc, argv, "--k", &ks) || cli_take_flag(&argc, argv, "--batch", &bs))
    return 1;
  if (argc > 1) return cli_failf("teacher-cache: unknown option '%s' (see --help)", argv[1]);
  if (!tdir || !data || !out) return cli_failf("teacher-cache: --teacher, --data and --out are required (see --help)");
  int T, K, B;
  if (cli_parse_int("teacher-cache", "--seq-len", ts, 1, 1 << 24, &T) || cli_parse_int("teacher-cache", "--k", ks, 1, 1 << 24, &K) ||
      cli_parse_int("teacher-cache", "--batch", bs, 1, 1 << 16, &B))
    return 1;
  xd_err e;
  xd_teacher t;
  if (xd_teacher_load(&t, tdir, &e) != 0) return cli_fail(&e);
  if (K > t.cfg.vocab) { xd_teacher_free(&t); return cli_failf("teacher-cache: --k %d exceeds the vocabulary (%d)", K, t.cfg.vocab); }
  xd_loader *L;
  xd_loader_config lc = {T, 1, 0, 0, 0, 1};
  if (xd_loader_open(&L, data, "train", &lc, &e) != 0) { xd_teacher_free(&t); return cli_fail(&e); }
  if (xd_check_data(L, data, tdir, t.cfg.vocab, &e) != 0) { xd_loader_free(L); xd_teacher_free(&t); return cli_fail(&e); }
  const uint64_t rows = xd_loader_rows_total(L);
  xd_topk_writer w;
  int rc = xd_topk_writer_open(&w, out, (uint32_t)K, (uint32_t)t.cfg.vocab, (uint32_t)T,
                               xd_tokenizer_hash_value(xd_loader_tokenizer_hash(L)), &e);
  xd_teacher_acts ta;
  xd_teacher_acts_alloc(&ta, &t.cfg, B * T, T);
  const size_t N = (size_t)B * T;
  int32_t *row = xd_malloc((size_t)(T + 1) * sizeof(int32_t)), *ids = xd_malloc(N * sizeof(int32_t));
  float *logits = xd_malloc(N * (size_t)t.cfg.vocab * sizeof(float)), *lp = xd_malloc(N * (size_t)K * sizeof(float));
  int32_t *tk = xd_malloc(N * (size_t)K * sizeof(int32_t));
  const double t0 = xd_now();
  double last_report = 0;
  for (uint64_t r0 = 0; rc == 0 && r0 < rows; r0 += (uint64_t)B) {
    const int nb = (int)(rows - r0 < (uint64_t)B ? rows - r0 : (uint64_t)B);
    for (int b = 0; b < nb; b++) {
      xd_loader_row(L, r0 + (uint64_t)b, row, NULL);
      memcpy(ids + (size_t)b * T, row, (size_t)T * sizeof(int32_t));
    }
    rc = xd_teacher_forward(&t, &ta, ids, nb, T, logits, NULL, NULL, &e);
    if (rc == 0) rc = topk_logprobs(logits, nb * T, t.cfg.vocab, K, tk, lp, &e);
    for (int b = 0; rc == 0 && b < nb; b++) rc = xd_topk_writer_add(&w, tk + (size_t)b * T * K, lp + (size_t)b * T * K, &e);
    const double dt = xd_now() - t0, done = (double)(r0 + (uint64_t)nb);
    if (dt < last_report + 1.0 && r0 + (uint64_t)nb < rows) continue; /* at most one progress line a second */
    last_report = dt;
    fprintf(stderr, "\rteacher-cache: %llu/%llu rows, %.0f tokens/s, ETA %.0f s   ", (unsigned long long)(r0 + (uint64_t)nb),
            (unsigned long long)rows, done * T / dt, dt / done * (double)(rows - (r0 + (uint64_t)nb)));
  }
  fputc('\n', stderr);
  if (rc == 0) rc = xd_topk_writer_close(&w, &e);
  else xd_topk_writer_abort(&w);
  free(row); free(ids); free(logits); free(lp); free(tk);
  xd_teacher_acts_free(&ta);
  xd_loader_free(L);
  xd_teacher_free(&t);
  if (rc != 0) return cli_fail(&e);
  fprintf(stderr, "teacher-cache: wrote %s (%llu rows of %d positions, top-%d)\n", out, (unsigned long long)rows, T, K);
  return 0;
}
