/* xdistill distill — stage II, sparse knowledge distillation (SPEC §4). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "distill/distill_cuda.h"
#include "distill/stages.h"

static const char *usage =
  "usage: xdistill distill --student DIR --data DIR --out DIR (--teacher DIR | --teacher-cache FILE)\n"
  "                        [--device cpu|cuda] [--config FILE] [--key value ...]\n"
  "\n"
  "Stage II: every student parameter trains on loss = kd_gamma * CE(student, next token) +\n"
  "kd_beta * KL(p_T || p_S), with p_T, p_S the teacher's and student's softmax renormalised over\n"
  "the teacher's top-kd_topk tokens at temperature kd_temperature. The teacher runs in the same\n"
  "step (--teacher), or its top-k comes from `xdistill teacher-cache` (--teacher-cache). Chat\n"
  "data's loss masks are honoured. The distilled student is written to --out; checkpoints,\n"
  "metrics.jsonl and the effective configuration go to --out/train/. --device cuda runs the\n"
  "whole step on GPU 0 (teacher, top-k, student, loss, AdamW; bf16 GEMMs, fp32 master weights);\n"
  "its checkpoints are the CPU's format, so a run may resume on either device.\n"
  "\n";

/* One batch's loss on either device: the CPU context or the GPU one. */
typedef struct {
  xd_distill_ctx *cpu;
  xd_distill_cuda *gpu;
  int B;
  uint64_t *rows;
} eval_dev;

static int eval_rows(eval_dev *d, xd_loader *L, kd_result *r, xd_err *e) {
  if (d->gpu) return xd_distill_cuda_eval_rows(d->gpu, L, d->rows, r, e);
  xd_loader *train = d->cpu->loader;
  d->cpu->loader = L; /* rows are read from the validation split */
  const int rc = xd_distill_eval_rows(d->cpu, d->rows, r, e);
  d->cpu->loader = train;
  return rc;
}

/* Mean loss over up to 8 validation batches (rows in stream order). */
static int held_out(eval_dev *d, xd_loader *val, kd_result *avg, xd_err *e) {
  memset(avg, 0, sizeof *avg);
  if (!val) return 0;
  const uint64_t nb = xd_loader_rows_total(val) / (uint64_t)d->B;
  int n = 0;
  for (uint64_t i = 0; i < nb && i < 8; i++, n++) {
    for (int b = 0; b < d->B; b++) d->rows[b] = i * (uint64_t)d->B + (uint64_t)b;
    kd_result r;
    if (eval_rows(d, val, &r, e) != 0) return -1;
    avg->loss += r.loss; avg->ce += r.ce; avg->kl += r.kl;
  }
  if (n) { avg->loss /= n; avg->ce /= n; avg->kl /= n; }
  avg->count = n;
  return 0;
}

int cmd_distill(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) {
    fputs(usage, stdout);
    xd_train_config_print_help(stdout, XD_STAGE_DISTILL);
    return 0;
  }
  const char *tdir = NULL, *cache_path = NULL, *sdir = NULL, *data = NULL, *out = NULL, *device = "cpu";
  if (cli_take_flag(&argc, argv, "--device", &device) || cli_take_flag(&argc, argv, "--teacher", &tdir) || cli_take_flag(&argc, argv, "--teacher-cache", &cache_path) ||
      cli_take_flag(&argc, argv, "--student", &sdir) || cli_take_flag(&argc, argv, "--data", &data) ||
      cli_take_flag(&argc, argv, "--out", &out))
    return 1;
  if (!sdir || !data || !out || (!tdir && !cache_path))
    return cli_failf("distill: --student, --data, --out and one of --teacher / --teacher-cache are required (see --help)");
  if (tdir && cache_path) return cli_failf("distill: give --teacher or --teacher-cache, not both");
  const int gpu = strcmp(device, "cuda") == 0;
  if (!gpu && strcmp(device, "cpu") != 0) return cli_failf("distill: --device must be cpu or cuda, not '%s'", device);
  xd_train_config cfg;
  xd_err e = {{0}};
  if (xd_train_config_from_args(&cfg, XD_STAGE_DISTILL, argc, argv, NULL, 0, NULL, &e) != 0) return cli_fail(&e);
  char *train_dir = xd_path_join(out, "train");
  snprintf(cfg.out_dir, sizeof cfg.out_dir, "%s", train_dir);
  free(train_dir);
  xd_teacher t;
  xd_topk_reader cache;
  int have_t = 0, have_c = 0, rc = 0;
  if (tdir) { rc = xd_teacher_load(&t, tdir, &e); have_t = rc == 0; }
  else { rc = xd_topk_reader_open(&cache, cache_path, &e); have_c = rc == 0; }
  xd_student s;
  int have_s = 0;
  if (rc == 0) { rc = xd_student_load(&s, sdir, XD_STUDENT_TRAIN_ALL, &e); have_s = rc == 0; }
  if (rc == 0 && have_t) rc = xd_check_pair(&t, &s, tdir, sdir, &e);
  if (rc == 0 && have_c) {
    if (cache.info.vocab != (uint32_t)s.cfg.vocab || cache.info.seq_len != (uint32_t)cfg.seq_len || (int64_t)cache.info.k != cfg.kd_topk)
      rc = xd_errf(&e, "%s: cache has vocab %u, seq_len %u, k %u but the run needs %d, %lld, %lld", cache_path, cache.info.vocab,
                   cache.info.seq_len, cache.info.k, s.cfg.vocab, (long long)cfg.seq_len, (long long)cfg.kd_topk);
  }
  xd_loader *L = NULL, *val = NULL;
  xd_loader_config lc = {(int)cfg.seq_len, (int)cfg.micro_batch, (uint64_t)cfg.seed, 1, 0, 1};
  if (rc == 0) rc = xd_loader_open(&L, data, "train", &lc, &e);
  if (rc == 0) rc = xd_check_data(L, data, have_t ? tdir : sdir, s.cfg.vocab, &e);
  if (rc == 0 && have_c && cache.info.tokenizer_hash && xd_tokenizer_hash_value(xd_loader_tokenizer_hash(L)) &&
      cache.info.tokenizer_hash != xd_tokenizer_hash_value(xd_loader_tokenizer_hash(L)))
    rc = xd_errf(&e, "%s: cache was made from data of another tokenizer than %s (%s)", cache_path, data, xd_loader_tokenizer_hash(L));
  if (rc == 0 && have_c && cache.info.n_rows != xd_loader_rows_total(L))
    rc = xd_errf(&e, "%s: cache holds %llu rows but %s has %llu at seq_len %lld (another dataset?)", cache_path,
                 (unsigned long long)cache.info.n_rows, data, (unsigned long long)xd_loader_rows_total(L), (long long)cfg.seq_len);
  if (rc == 0 && cfg.kd_topk > s.cfg.vocab) rc = xd_errf(&e, "distill: kd_topk %lld exceeds the vocabulary (%d)", (long long)cfg.kd_topk, s.cfg.vocab);
  if (rc == 0 && !have_c) {
    xd_loader_config vc = {(int)cfg.seq_len, (int)cfg.micro_batch, 0, 0, 0, 1};
    xd_err ve;
    if (xd_loader_open(&val, data, "val", &vc, &ve) != 0) val = NULL; /* no validation split: skip held-out numbers */
  }
  if (rc != 0) {
    if (L) xd_loader_free(L);
    if (have_s) xd_student_free(&s);
    if (have_t) xd_teacher_free(&t);
    if (have_c) xd_topk_reader_close(&cache);
    return cli_fail(&e);
  }
  kd_config kd = kd_config_default((int)(cfg.micro_batch * cfg.seq_len), s.cfg.vocab);
  kd.k = (int)cfg.kd_topk;
  kd.gamma = (float)cfg.kd_gamma;
  kd.beta = (float)cfg.kd_beta;
  kd.tau = (float)cfg.kd_temperature;
  xd_distill_ctx c;
  xd_distill_cuda *g = NULL;
  xd_trainer_hooks hooks;
  eval_dev ed = {NULL, NULL, (int)cfg.micro_batch, xd_malloc((size_t)cfg.micro_batch * sizeof(uint64_t))};
  if (gpu) {
    rc = xd_distill_cuda_init(&g, have_t ? &t : NULL, have_c ? &cache : NULL, &s, L, (int)cfg.micro_batch, (int)cfg.seq_len,
                              &kd, (int)cfg.recompute, &hooks, stderr, &e);
    if (rc != 0) xd_err_prefix(&e, "--device cuda");
    ed.gpu = g;
  } else {
    if (cfg.recompute) fprintf(stderr, "distill: recompute applies to --device cuda; the CPU step keeps every layer's activations\n");
    xd_distill_init(&c, have_t ? &t : NULL, have_c ? &cache : NULL, &s, L, (int)cfg.micro_batch, (int)cfg.seq_len, &kd, &hooks);
    ed.cpu = &c;
  }
  kd_result before, after;
  if (rc == 0) rc = held_out(&ed, val, &before, &e);
  xd_train_install_signal_handlers();
  xd_train_result res;
  if (rc == 0) rc = xd_trainer_run(&cfg, &s.params, &hooks, stderr, &res, &e);
  if (rc == 0 && val && held_out(&ed, val, &after, &e) == 0 && after.count)
    fprintf(stderr, "distill: held-out loss %.5g -> %.5g, CE %.5g -> %.5g, KL %.5g -> %.5g\n", before.loss, after.loss, before.ce,
            after.ce, before.kl, after.kl);
  if (rc == 0 && g && xd_distill_cuda_download(g, &e) != 0) rc = -1;
  if (rc == 0) {
    if (xd_student_save(&s, out, &e) != 0) rc = -1;
    else fprintf(stderr, "distill: wrote %s after %llu steps\n", out, (unsigned long long)res.steps_done);
  }
  free(ed.rows);
  if (gpu) xd_distill_cuda_free(g);
  else xd_distill_free(&c);
  if (val) xd_loader_free(val);
  xd_loader_free(L);
  xd_student_free(&s);
  if (have_t) xd_teacher_free(&t);
  if (have_c) xd_topk_reader_close(&cache);
  if (rc < 0) return cli_fail(&e);
  return rc;
}
