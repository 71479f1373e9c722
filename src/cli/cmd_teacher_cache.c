/* xdistill teacher-cache — the teacher's top-k log-probs for every training row, so stage II
 * can run without the teacher resident. */
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "distill/stages.h"
#include "distill/teacher_topk_cuda.h"
#include "ops/cpu/kd_loss.h"
#include "ops/cuda/cuda_ops.h" /* XD_CUDA_TOPK_MAX */

static const char *usage =
  "usage: xdistill teacher-cache --teacher DIR --data DIR --out FILE [--seq-len T] [--k K] [--batch B]\n"
  "                              [--device cpu|cuda]\n"
  "\n"
  "Runs the teacher over every row of the train split (rows of T+1 tokens in stream order, as\n"
  "the loader cuts them) and writes, per position, its top-K token ids and their full-vocabulary\n"
  "log-probabilities (docs/training.md). `xdistill distill --teacher-cache FILE` then needs no\n"
  "teacher. T and K must match the distill run's seq_len and kd_topk (defaults 4096, 256).\n"
  "--device cuda runs the teacher in bf16 on GPU 0 (K <= 1024), the next batch computing while\n"
  "one is written: with --batch equal to distill's micro_batch, the same top-k as\n"
  "`distill --device cuda` computes online (the CPU's are fp32: close, not equal).\n";

/* Where a batch's top-k comes from: the CPU teacher (computed at submit) or the GPU one
 * (queued at submit, fetched one batch later). Two slots, so batch i+1 is submitted before
 * batch i is collected and written. */
typedef struct {
  const xd_teacher *t;
  int B, T, K;
  xd_teacher_topk_cuda *gpu; /* NULL: the CPU */
  xd_teacher_acts ta;        /* CPU */
  float *logits;             /* CPU [B*T, V] */
  int32_t *tk[2];            /* host [B*T, K]: the CPU's per slot; the GPU's downloads in [0] */
  float *lp[2];
} cache_source;

static int source_submit(cache_source *c, int slot, const int32_t *ids, int nb, xd_err *e) {
  if (c->gpu) return xd_teacher_topk_cuda_submit(c->gpu, slot, ids, e); /* B rows: the caller pads */
  if (xd_teacher_forward(c->t, &c->ta, ids, nb, c->T, c->logits, NULL, NULL, e) != 0) return -1;
  return topk_logprobs(c->logits, nb * c->T, c->t->cfg.vocab, c->K, c->tk[slot], c->lp[slot], e);
}

/* The slot's top-k on the host (the GPU's downloaded into buffer 0, the CPU's where it was made). */
static int source_collect(cache_source *c, int slot, int32_t **tk, float **lp, xd_err *e) {
  const int h = c->gpu ? 0 : slot;
  *tk = c->tk[h], *lp = c->lp[h];
  return c->gpu ? xd_teacher_topk_cuda_fetch(c->gpu, slot, *tk, *lp, e) : 0;
}

/* ids [B, T] of rows r0 .. r0+nb-1; the rows past nb (the last, short batch on the GPU, whose
 * batch size is fixed) repeat the last one and are not written. */
static void gather_rows(xd_loader *L, uint64_t r0, int nb, int B, int T, int32_t *row, int32_t *ids) {
  for (int b = 0; b < B; b++) {
    if (b < nb) xd_loader_row(L, r0 + (uint64_t)b, row, NULL);
    memcpy(ids + (size_t)b * T, row, (size_t)T * sizeof(int32_t));
  }
}

int cmd_teacher_cache(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) { fputs(usage, stdout); return 0; }
  const char *tdir = NULL, *data = NULL, *out = NULL, *ts = "4096", *ks = "256", *bs = "1", *device = "cpu";
  if (cli_take_flag(&argc, argv, "--teacher", &tdir) || cli_take_flag(&argc, argv, "--data", &data) ||
      cli_take_flag(&argc, argv, "--out", &out) || cli_take_flag(&argc, argv, "--seq-len", &ts) ||
      cli_take_flag(&argc, argv, "--k", &ks) || cli_take_flag(&argc, argv, "--batch", &bs) ||
      cli_take_flag(&argc, argv, "--device", &device))
    return 1;
  if (argc > 1) return cli_failf("teacher-cache: unknown option '%s' (see --help)", argv[1]);
  if (!tdir || !data || !out) return cli_failf("teacher-cache: --teacher, --data and --out are required (see --help)");
  int T, K, B, gpu;
  if (cli_parse_int("teacher-cache", "--seq-len", ts, 1, 1 << 24, &T) || cli_parse_int("teacher-cache", "--k", ks, 1, 1 << 24, &K) ||
      cli_parse_int("teacher-cache", "--batch", bs, 1, 1 << 16, &B) || cli_parse_device("teacher-cache", device, &gpu))
    return 1;
  if (gpu && K > XD_CUDA_TOPK_MAX) return cli_failf("teacher-cache: --k %d above the GPU limit %d", K, XD_CUDA_TOPK_MAX);
  xd_err e;
  xd_teacher t;
  if (xd_teacher_load(&t, tdir, &e) != 0) return cli_fail(&e);
  if (K > t.cfg.vocab) { xd_teacher_free(&t); return cli_failf("teacher-cache: --k %d exceeds the vocabulary (%d)", K, t.cfg.vocab); }
  xd_loader *L;
  xd_loader_config lc = {T, 1, 0, 0, 0, 1};
  if (xd_loader_open(&L, data, "train", &lc, &e) != 0) { xd_teacher_free(&t); return cli_fail(&e); }
  if (xd_check_data(L, data, tdir, t.cfg.vocab, &e) != 0) { xd_loader_free(L); xd_teacher_free(&t); return cli_fail(&e); }
  const uint64_t rows = xd_loader_rows_total(L), n_batches = (rows + (uint64_t)B - 1) / (uint64_t)B;
  const size_t N = (size_t)B * T, NK = N * (size_t)K;
  cache_source c;
  memset(&c, 0, sizeof c);
  c.t = &t, c.B = B, c.T = T, c.K = K;
  xd_topk_writer w;
  int rc = xd_topk_writer_open(&w, out, (uint32_t)K, (uint32_t)t.cfg.vocab, (uint32_t)T,
                               xd_tokenizer_hash_value(xd_loader_tokenizer_hash(L)), &e);
  int32_t *row = xd_malloc((size_t)(T + 1) * sizeof(int32_t)), *ids = xd_malloc(N * sizeof(int32_t));
  if (gpu) {
    if (rc == 0 && xd_teacher_topk_cuda_create(&c.gpu, &t, B, T, K, xd_stage2_head_rows(), &e) != 0) {
      xd_err_prefix(&e, "--device cuda");
      rc = -1;
    }
  } else {
    xd_teacher_acts_alloc(&c.ta, &t.cfg, B * T, T);
    c.logits = xd_malloc(N * (size_t)t.cfg.vocab * sizeof(float));
  }
  for (int s = 0; s < (gpu ? 1 : 2); s++) c.tk[s] = xd_malloc(NK * sizeof(int32_t)), c.lp[s] = xd_malloc(NK * sizeof(float));
  const double t0 = xd_now();
  double last_report = 0;
  int progressed = 0; /* a progress line is open on stderr */
  /* batch i is submitted at iteration i and collected + written at iteration i + 1 */
  for (uint64_t i = 0; rc == 0 && i <= n_batches; i++) {
    if (i < n_batches) {
      const uint64_t r0 = i * (uint64_t)B;
      const int nb = (int)(rows - r0 < (uint64_t)B ? rows - r0 : (uint64_t)B);
      gather_rows(L, r0, nb, B, T, row, ids);
      rc = source_submit(&c, (int)(i & 1), ids, nb, &e);
    }
    if (rc != 0 || i == 0) continue;
    const uint64_t r0 = (i - 1) * (uint64_t)B;
    const int nb = (int)(rows - r0 < (uint64_t)B ? rows - r0 : (uint64_t)B);
    int32_t *tk;
    float *lp;
    rc = source_collect(&c, (int)((i - 1) & 1), &tk, &lp, &e);
    for (int b = 0; rc == 0 && b < nb; b++) rc = xd_topk_writer_add(&w, tk + (size_t)b * T * K, lp + (size_t)b * T * K, &e);
    const double dt = xd_now() - t0, done = (double)(r0 + (uint64_t)nb);
    if (dt < last_report + 1.0 && i < n_batches) continue; /* at most one progress line a second */
    last_report = dt, progressed = 1;
    fprintf(stderr, "\rteacher-cache: %llu/%llu rows, %.0f tokens/s, ETA %.0f s   ", (unsigned long long)(r0 + (uint64_t)nb),
            (unsigned long long)rows, done * T / dt, dt / done * (double)(rows - (r0 + (uint64_t)nb)));
  }
  if (progressed) fputc('\n', stderr);
  if (rc == 0) rc = xd_topk_writer_close(&w, &e);
  else xd_topk_writer_abort(&w);
  xd_teacher_topk_cuda_free(c.gpu);
  if (!gpu) xd_teacher_acts_free(&c.ta);
  free(c.logits);
  for (int s = 0; s < 2; s++) free(c.tk[s]), free(c.lp[s]);
  free(row); free(ids);
  xd_loader_free(L);
  xd_teacher_free(&t);
  if (rc != 0) return cli_fail(&e);
  fprintf(stderr, "teacher-cache: wrote %s (%llu rows of %d positions, top-%d%s)\n", out, (unsigned long long)rows, T, K,
          gpu ? ", GPU teacher in bf16" : "");
  return 0;
}
