/* xdistill eval: a teacher or student checkpoint on evaluation tasks (lm-eval semantics,
 * src/eval/), results JSON; optionally a reference model on the same tasks and the
 * Win-and-Tie comparison. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "cli/cli.h"
#include "eval/compare.h"
#include "eval/eval.h"
#include "eval/runner.h"
#include "ops/cpu/threads.h"

static const char usage[] =
  "usage: xdistill eval --model DIR --tasks LIST [--limit N] [--batch N] [--num-fewshot K] [--seed S]\n"
  "                     [--out RESULTS.json] [--reference DIR] [--grid G] [--tokenizer PATH] [--threads N]\n"
  "                     [--device cpu|cuda]\n\n"
  "Evaluate a teacher (Hugging Face checkpoint) or a hybrid xLSTM student checkpoint on tasks with\n"
  "lm-evaluation-harness semantics (docs/eval.md): multiple choice and LAMBADA by log-likelihood,\n"
  "generation tasks by greedy decoding (teacher: KV cache; student: recurrent state), perplexity.\n"
  "  --model DIR        model directory (with tokenizer.json, or give --tokenizer)\n"
  "  --tasks LIST       comma-separated task specs: NAME (tasks/NAME.json), FILE.json (a task\n"
  "                     definition), or [NAME=]FORMAT:PATH[,FEWSHOT_PATH]; repeatable\n"
  "  --limit N          first N documents of each task (default: all)\n"
  "  --batch N          requests per model call (default 1; 64 with --device cuda, which packs\n"
  "                     them by length into batched forwards)\n"
  "  --num-fewshot K    few-shot examples (default: each task's own)\n"
  "  --seed S           few-shot sampling seed (default 1234)\n"
  "  --out R.json       results JSON (written atomically; role = the checkpoint kind, or\n"
  "                     student with --reference); with --reference also R.reference.json\n"
  "                     (the reference's results) and R.compare.json\n"
  "  --reference DIR    also evaluate this model (the teacher) on the same tasks and compare\n"
  "  --grid G           Win-and-Tie alpha grid for the comparison (default 0.001)\n"
  "  --tokenizer PATH   tokenizer.json or directory for both models (default: each model's)\n"
  "  --threads N        CPU threads\n"
  "  --device D         cpu (default) or cuda: the model(s) on GPU 0 (bf16 matrices, fp32 logits):\n"
  "                     log-likelihoods by batched GPU forwards scored on the device, generation\n"
  "                     by the GPU teacher's KV cache / the student's recurrent state; scores\n"
  "                     agree with the CPU's up to bf16 rounding (near-tied choices may flip);\n"
  "                     weights' memory to stderr\n"
  "A progress line goes to stderr; a summary table to stdout.\n";

#define MAX_TASKS 64

static int is_bare_name(const char *s) {
  if (!*s) return 0;
  for (; *s; s++)
    if (!isalnum((unsigned char)*s) && *s != '_' && *s != '-' && *s != '.') return 0;
  return 1;
}

static int file_exists(const char *p) {
  struct stat sb;
  return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* Split a --tasks value into specs (heap strings appended to specs[]). A comma starts a new spec
 * when the next piece is a spec on its own (has ':' or ends in .json, or names tasks/NAME.json);
 * otherwise it is the few-shot path of the previous spec. */
static int split_tasks(const char *list, char **specs, int *n) {
  char *copy = xd_strdup(list);
  int rc = 0;
  for (char *p = copy; p && !rc;) {
    char *comma = strchr(p, ',');
    if (comma) *comma = 0;
    const size_t L = strlen(p);
    char def[1024];
    snprintf(def, sizeof def, "tasks/%s.json", p);
    const int own = strchr(p, ':') || (L > 5 && !strcmp(p + L - 5, ".json")) || (is_bare_name(p) && file_exists(def));
    if (!*p) rc = cli_failf("eval: empty task spec in '%s'", list);
    else if (own || *n == 0) {
      if (*n == MAX_TASKS) rc = cli_failf("eval: at most %d tasks", MAX_TASKS);
      else if (is_bare_name(p) && !strchr(p, ':') && !(L > 5 && !strcmp(p + L - 5, ".json"))) {
        if (!file_exists(def)) rc = cli_failf("eval: task '%s': no %s (give FORMAT:PATH or a .json definition)", p, def);
        else specs[(*n)++] = xd_strdup(def);
      } else specs[(*n)++] = xd_strdup(p);
    } else {
      /* few-shot path of the previous spec */
      char *prev = specs[*n - 1];
      char *joined = xd_malloc(strlen(prev) + L + 2);
      sprintf(joined, "%s,%s", prev, p);
      free(prev);
      specs[*n - 1] = joined;
    }
    p = comma ? comma + 1 : NULL;
  }
  free(copy);
  return rc;
}

static void print_results(const xd_results *r, FILE *fp) {
  fprintf(fp, "%s (%s)\n", r->model, r->role ? r->role : "model");
  for (size_t i = 0; i < r->n_tasks; i++) {
    const xd_task_result *t = &r->tasks[i];
    fprintf(fp, "  %-24s n=%-6zu", t->task, t->n);
    for (int m = 0; m < t->n_metrics; m++)
      fprintf(fp, " %s%s=%.4f", !strcmp(t->metrics[m].name, t->primary) ? "*" : "", t->metrics[m].name, t->metrics[m].value);
    fprintf(fp, "  (%.1f s)\n", t->seconds);
  }
}

/* Evaluate one model on every task; res->tasks[i] in task order. */
static int eval_model(const char *dir, const char *tokenizer, const char *role, xd_task *const *tasks, int n_tasks,
                      size_t batch, int cuda, const xd_task_options *topt, xd_results *res, xd_err *e) {
  memset(res, 0, sizeof *res);
  xd_runner r;
  if (xd_runner_load_on(&r, dir, tokenizer, XD_TOK_REQUIRED, cuda, e)) return -1;
  xd_lm lm;
  int rc = xd_runner_lm(&r, &lm, batch, e);
  res->model = xd_strdup(dir);
  if (!role) role = r.is_student ? "student" : "teacher"; /* lets `report` tell files apart */
  res->role = xd_strdup(role);
  res->seed = topt->seed;
  res->limit = topt->limit;
  res->tasks = xd_calloc((size_t)n_tasks, sizeof *res->tasks);
  xd_eval_options eo = {batch, stderr, 1};
  fprintf(stderr, "eval: %s (%s checkpoint, role %s%s)\n", dir, r.is_student ? "student" : "teacher", role,
          cuda ? ", on the GPU" : "");
  for (int i = 0; i < n_tasks && !rc; i++) {
    rc = xd_eval_run(tasks[i], &lm, &eo, &res->tasks[i], e);
    if (!rc) res->n_tasks++;
  }
  xd_runner_free(&r);
  if (rc) xd_results_free(res);
  return rc;
}

/* "a/b.json" + ".reference.json" -> "a/b.reference.json" */
static char *derived_path(const char *out, const char *suffix) {
  size_t L = strlen(out);
  if (L > 5 && !strcmp(out + L - 5, ".json")) L -= 5;
  char *p = xd_malloc(L + strlen(suffix) + 1);
  memcpy(p, out, L);
  strcpy(p + L, suffix);
  return p;
}

int cmd_eval(int argc, char **argv) {
  if (cli_wants_help(argc, argv)) { fputs(usage, stdout); return 0; }
  const char *model = NULL, *out = NULL, *reference = NULL, *tokenizer = NULL;
  char *specs[MAX_TASKS];
  int n_specs = 0, threads = 0, cuda = 0;
  long limit = 0, batch = 0, fewshot = -1, seed = 1234; /* batch 0: the device's default */
  double grid = 0.001;
  int rc = 0;
  for (int i = 1; i < argc && !rc; i++) {
    const char *a = argv[i];
    if (i + 1 >= argc && a[0] == '-') { rc = cli_failf("eval: option '%s' needs a value", a); break; }
    if (!strcmp(a, "--model")) model = argv[++i];
    else if (!strcmp(a, "--tasks")) rc = split_tasks(argv[++i], specs, &n_specs);
    else if (!strcmp(a, "--out")) out = argv[++i];
    else if (!strcmp(a, "--reference")) reference = argv[++i];
    else if (!strcmp(a, "--tokenizer")) tokenizer = argv[++i];
    else if (!strcmp(a, "--device")) rc = cli_parse_device("eval", argv[++i], &cuda);
    else if (!strcmp(a, "--limit")) rc = cli_parse_long("eval", "--limit", argv[++i], 0, 1L << 40, &limit);
    else if (!strcmp(a, "--batch")) rc = cli_parse_long("eval", "--batch", argv[++i], 1, 1 << 20, &batch);
    else if (!strcmp(a, "--num-fewshot")) rc = cli_parse_long("eval", "--num-fewshot", argv[++i], 0, 1000, &fewshot);
    else if (!strcmp(a, "--seed")) rc = cli_parse_long("eval", "--seed", argv[++i], 0, 2147483647L, &seed);
    else if (!strcmp(a, "--threads")) rc = cli_parse_int("eval", "--threads", argv[++i], 1, 4096, &threads);
    else if (!strcmp(a, "--grid")) rc = cli_parse_double("eval", "--grid", argv[++i], &grid);
    else rc = cli_failf("eval: unknown argument '%s' (see --help)", a);
  }
  if (!rc && (!model || n_specs == 0)) rc = cli_failf("eval: --model and --tasks are required (see --help)");
  if (batch == 0) batch = cuda ? 64 : 1; /* the GPU packs a call's requests into batched forwards */
  xd_err e = {0};
  int n_grid = 0;
  if (!rc && reference && xd_wintie_grid_steps(grid, &n_grid, &e)) rc = cli_fail(&e);
  if (rc) {
    for (int i = 0; i < n_specs; i++) free(specs[i]);
    return 1;
  }
  xd_set_threads(threads);
  xd_task_options topt;
  xd_task_options_default(&topt);
  topt.num_fewshot = (int)fewshot;
  topt.seed = (uint64_t)seed;
  topt.limit = (size_t)limit;
  xd_task *tasks[MAX_TASKS] = {0};
  int n_tasks = 0;
  for (int i = 0; i < n_specs && !rc; i++) {
    rc = xd_task_load_spec(&tasks[i], specs[i], &topt, &e);
    if (!rc) n_tasks++;
  }
  xd_results res = {0}, ref = {0};
  if (!rc) rc = eval_model(model, tokenizer, reference ? "student" : NULL, tasks, n_tasks, (size_t)batch, cuda, &topt, &res, &e);
  if (!rc) print_results(&res, stdout);
  if (!rc && out) rc = xd_results_write(&res, out, &e);
  if (!rc && reference) {
    rc = eval_model(reference, tokenizer, "teacher", tasks, n_tasks, (size_t)batch, cuda, &topt, &ref, &e);
    if (!rc) print_results(&ref, stdout);
    char *ref_out = out ? derived_path(out, ".reference.json") : NULL;
    char *cmp_out = out ? derived_path(out, ".compare.json") : NULL;
    if (!rc && ref_out) rc = xd_results_write(&ref, ref_out, &e);
    if (!rc) {
      xd_compare c;
      if (xd_compare_build(&res, &ref, grid, &c, &e) == 0) {
        xd_compare_print(&c, stdout);
        if (cmp_out) rc = xd_compare_write_json(&c, cmp_out, &e);
        xd_compare_free(&c);
      } else {
        /* e.g. only perplexity tasks: nothing to compare, but the results stand */
        fprintf(stderr, "xdistill: warning: no comparison: %s\n", e.msg);
      }
    }
    free(ref_out);
    free(cmp_out);
  }
  xd_results_free(&res);
  xd_results_free(&ref);
  for (int i = 0; i < n_tasks; i++) xd_task_free(tasks[i]);
  for (int i = 0; i < n_specs; i++) free(specs[i]);
  return rc ? cli_fail(&e) : 0;
}
