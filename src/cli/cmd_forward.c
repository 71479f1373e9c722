/* xdistill forward: teacher or student logits for a batch of token ids (.npy in, .npy out). */
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "eval/runner.h"
#include "io/npy.h"
#include "model/student/student_cuda.h"
#include "model/teacher/teacher_cuda.h"
#include "ops/cpu/threads.h"

static const char usage[] =
  "usage: xdistill forward --model DIR --ids IDS.npy --out LOGITS.npy [--threads N] [--device cpu|cuda]\n\n"
  "Run the fp32 CPU model on token ids and write its logits: a teacher (Hugging Face checkpoint)\n"
  "or a hybrid xLSTM student checkpoint (config.json with an \"xdistill\" section; full parallel\n"
  "forward).\n"
  "  --model DIR     teacher or student checkpoint directory (config.json + safetensors)\n"
  "  --ids FILE      int32 or int64 .npy, shape [B,T] or [T]\n"
  "  --out FILE      float32 .npy logits, shape [B,T,V] (B = 1 for [T] ids); written atomically\n"
  "  --threads N     CPU threads (default: all cores, or OMP_NUM_THREADS)\n"
  "  --device D      cpu (default) or cuda: the model on GPU 0 (bf16 matrices, fp32 logits;\n"
  "                  prints its memory to stderr); teachers and students\n";

int cmd_forward(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) { fputs(usage, stdout); return 0; }
  const char *model = NULL, *ids_path = NULL, *out = NULL;
  int threads = 0, cuda = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (i + 1 >= argc && a[0] == '-') return cli_failf("forward: option '%s' needs a value", a);
    if (!strcmp(a, "--model")) model = argv[++i];
    else if (!strcmp(a, "--ids")) ids_path = argv[++i];
    else if (!strcmp(a, "--out")) out = argv[++i];
    else if (!strcmp(a, "--device")) {
      if (cli_parse_device("forward", argv[++i], &cuda)) return 1;
    }
    else if (!strcmp(a, "--threads")) {
      if (cli_parse_int("forward", a, argv[++i], 1, 4096, &threads)) return 1;
    } else return cli_failf("forward: unknown argument '%s' (see --help)", a);
  }
  if (!model || !ids_path || !out) return cli_failf("forward: --model, --ids and --out are required (see --help)");
  xd_set_threads(threads);
  xd_err e = {0};
  const int student = xd_is_student_dir(model);
  xd_runner r;
  memset(&r, 0, sizeof r);
  /* the GPU path loads the model itself (one host copy at a time): here only its config */
  if (cuda ? xd_config_load(&r.cfg, model, &e) : xd_runner_load(&r, model, NULL, XD_TOK_SKIP, &e)) return cli_fail(&e);
  xd_npy a;
  if (xd_npy_read(ids_path, &a, &e)) { if (!cuda) xd_runner_free(&r); return cli_fail(&e); }
  int rc = 0;
  int32_t *ids = NULL;
  if (a.ndim != 1 && a.ndim != 2) rc = xd_errf(&e, "%s: token ids must have shape [B,T] or [T], got %d dimensions", ids_path, a.ndim);
  else if (a.nelem == 0) rc = xd_errf(&e, "%s: token ids are empty", ids_path);
  else if (a.nelem > (1u << 26)) rc = xd_errf(&e, "%s: too many token ids (%zu)", ids_path, a.nelem);
  if (!rc) rc = xd_npy_to_ids(&a, ids_path, r.cfg.vocab, &ids, &e);
  if (!rc) {
    const int B = a.ndim == 2 ? (int)a.shape[0] : 1, T = a.ndim == 2 ? (int)a.shape[1] : (int)a.shape[0];
    const int V = r.cfg.vocab;
    size_t nlog;
    if (xd_mul_size((size_t)B * T, (size_t)V, &nlog) || nlog > ((size_t)1 << 33))
      rc = xd_errf(&e, "%s: %d x %d tokens x %d vocab logits are too many to hold", ids_path, B, T, V);
    if (!rc) {
      float *logits = xd_malloc(nlog * sizeof(float));
      rc = !cuda   ? xd_runner_forward(&r, ids, B, T, logits, &e)
           : student ? xd_student_cuda_forward_dir(model, ids, B, T, logits, &e)
                     : xd_teacher_cuda_forward_dir(model, ids, B, T, logits, &e);
      if (rc) xd_err_prefix(&e, "%s", ids_path);
      const int64_t shape[3] = {B, T, V};
      if (!rc) rc = xd_npy_write(out, XD_NPY_F32, 3, shape, logits, &e);
      free(logits);
    }
  }
  free(ids);
  xd_npy_free(&a);
  if (!cuda) xd_runner_free(&r);
  return rc ? cli_fail(&e) : 0;
}
