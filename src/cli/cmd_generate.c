/* xdistill generate: greedy decoding with the CPU teacher (KV cache), ids in, ids out. */
#include <stdlib.h>
#include <string.h>
#include "cli/cli.h"
#include "io/npy.h"
#include "model/teacher/teacher.h"
#include "ops/cpu/threads.h"

static const char usage[] =
  "usage: xdistill generate --model DIR --ids IDS.npy --max-new N [--ignore-eos] [--with-prompt] [--threads N]\n\n"
  "Greedy decoding with the exact fp32 CPU teacher (prefill, then one token at a time with a KV\n"
  "cache). Prints the generated ids, space-separated, one line per batch row.\n"
  "  --model DIR     Hugging Face checkpoint directory\n"
  "  --ids FILE      int32 or int64 .npy prompts, shape [B,T] (rows of equal length) or [T]\n"
  "  --max-new N     tokens to generate per row\n"
  "  --ignore-eos    keep going past the config's eos_token_id (default: a row stops after it)\n"
  "  --with-prompt   print the prompt ids before the generated ones\n"
  "  --threads N     CPU threads\n";

static int parse_pos_int(const char *s, const char *opt, int *out) {
  char *end;
  long v = strtol(s, &end, 10);
  if (!*s || *end || v <= 0 || v > 1000000) return cli_failf("generate: %s must be a positive integer, got '%s'", opt, s);
  *out = (int)v;
  return 0;
}

int cmd_generate(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) { fputs(usage, stdout); return 0; }
  const char *model = NULL, *ids_path = NULL;
  int max_new = -1, threads = 0, ignore_eos = 0, with_prompt = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--ignore-eos")) { ignore_eos = 1; continue; }
    if (!strcmp(a, "--with-prompt")) { with_prompt = 1; continue; }
    if (i + 1 >= argc && a[0] == '-') return cli_failf("generate: option '%s' needs a value", a);
    if (!strcmp(a, "--model")) model = argv[++i];
    else if (!strcmp(a, "--ids")) ids_path = argv[++i];
    else if (!strcmp(a, "--max-new")) { if (parse_pos_int(argv[++i], "--max-new", &max_new)) return 1; }
    else if (!strcmp(a, "--threads")) { if (parse_pos_int(argv[++i], "--threads", &threads)) return 1; }
    else return cli_failf("generate: unknown argument '%s' (see --help)", a);
  }
  if (!model || !ids_path || max_new < 0) return cli_failf("generate: --model, --ids and --max-new are required (see --help)");
  xd_set_threads(threads);
  xd_err e = {0};
  xd_teacher t;
  if (xd_teacher_load(&t, model, &e)) return cli_fail(&e);
  xd_npy a;
  if (xd_npy_read(ids_path, &a, &e)) { xd_teacher_free(&t); return cli_fail(&e); }
  int rc = 0;
  int32_t *ids = NULL;
  if (a.ndim != 1 && a.ndim != 2) rc = xd_errf(&e, "%s: token ids must have shape [B,T] or [T], got %d dimensions", ids_path, a.ndim);
  else if (a.nelem == 0) rc = xd_errf(&e, "%s: token ids are empty", ids_path);
  else if (a.nelem > (1u << 24)) rc = xd_errf(&e, "%s: too many token ids (%zu)", ids_path, a.nelem);
  if (!rc) rc = xd_npy_to_ids(&a, ids_path, t.cfg.vocab, &ids, &e);
  if (!rc) {
    const int B = a.ndim == 2 ? (int)a.shape[0] : 1, T = a.ndim == 2 ? (int)a.shape[1] : (int)a.shape[0];
    const int total = T + max_new;
    int32_t *out = xd_malloc((size_t)B * total * sizeof(int32_t));
    int *n_out = xd_malloc((size_t)B * sizeof(int));
    rc = xd_teacher_generate(&t, ids, B, T, max_new, !ignore_eos, out, n_out, &e);
    if (rc) xd_err_prefix(&e, "%s", ids_path);
    for (int b = 0; !rc && b < B; b++) {
      for (int s = with_prompt ? 0 : T, first = 1; s < n_out[b]; s++, first = 0)
        printf("%s%d", first ? "" : " ", (int)out[(size_t)b * total + s]);
      printf("\n");
    }
    free(out);
    free(n_out);
  }
  free(ids);
  xd_npy_free(&a);
  xd_teacher_free(&t);
  return rc ? cli_fail(&e) : 0;
}
