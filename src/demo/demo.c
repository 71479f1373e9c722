#include "demo/demo.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "data/prepare.h"
#include "distill/stages.h"
#include "eval/compare.h"
#include "eval/report.h"
#include "merge/merge.h"
#include "model/student/student_init.h"
#include "synth/synth.h"
#include "tokenizer/tokenizer.h"

void xd_demo_defaults(xd_demo_opts *o) {
  memset(o, 0, sizeof *o);
  o->out = "xdistill-demo";
  o->seed = 1234;
  o->window = 32;
  o->sinks = 4;
  o->chunk = 16;
  o->seq_len = 128;
  o->batch = 8;
  o->align_steps = 150;
  o->distill_steps = 40;
  o->align_lr = 1e-2;
  o->distill_lr = 1e-4;
  o->n_train = 2000;
  o->n_eval = 50;
}

/* ---- data ------------------------------------------------------------------------------ */
static int enc_text(void *ctx, const char *text, size_t len, int32_t **ids, size_t *n, xd_err *e) {
  return xd_tokenizer_encode((const xd_tokenizer *)ctx, text, len, 0, ids, n, e);
}

static int prepare(const xd_tokenizer *tok, const char *teacher, const char *const *inputs, int n_inputs, const char *out,
                   xd_err *e) {
  char hash[64];
  snprintf(hash, sizeof hash, "demo");
  xd_prepare_opts o = {.out_dir = out, .inputs = inputs, .n_inputs = n_inputs, .val_fraction = 0.02, .seed = 1,
                       .shard_tokens = 1u << 22, .force = 1, .add_bos = 1};
  xd_prepare_encoder enc = {.ctx = (void *)tok, .encode = enc_text, .vocab_size = (uint64_t)xd_tokenizer_vocab_size(tok),
                            .eos_id = xd_tokenizer_eos_id(tok), .bos_id = xd_tokenizer_bos_id(tok), .name = teacher,
                            .hash = hash};
  if (enc.eos_id < 0) return xd_errf(e, "%s: the demo teacher's tokenizer has no EOS token", teacher);
  xd_prepare_stats st;
  return xd_prepare_run(&o, &enc, &st, e);
}

/* ---- evaluation: greedy exact match on a domain's eval split --------------------------- */
typedef struct {
  char **prompt, **answer;
  int n;
} eval_set;

static void eval_set_free(eval_set *s) {
  for (int i = 0; i < s->n; i++) { free(s->prompt[i]); free(s->answer[i]); }
  free(s->prompt);
  free(s->answer);
  memset(s, 0, sizeof *s);
}

static int eval_set_load(eval_set *s, const char *path, int limit, xd_err *e) {
  memset(s, 0, sizeof *s);
  char *text = NULL;
  if (xd_read_file(path, 256u << 20, &text, NULL, e) != 0) return -1;
  s->prompt = xd_calloc((size_t)limit, sizeof(char *));
  s->answer = xd_calloc((size_t)limit, sizeof(char *));
  char *save = NULL;
  for (char *line = strtok_r(text, "\n", &save); line && s->n < limit; line = strtok_r(NULL, "\n", &save)) {
    cJSON *j = cJSON_Parse(line);
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "prompt"), *a = cJSON_GetObjectItemCaseSensitive(j, "answer");
    if (cJSON_IsString(p) && cJSON_IsString(a)) {
      s->prompt[s->n] = xd_strdup(p->valuestring);
      s->answer[s->n] = xd_strdup(a->valuestring);
      s->n++;
    }
    cJSON_Delete(j);
  }
  free(text);
  return s->n > 0 ? 0 : xd_errf(e, "%s: no examples", path);
}

/* Greedy continuation of a prompt (max_new tokens or EOS), by teacher (KV cache) or student
 * (constant-memory recurrent state). */
static int greedy(const xd_teacher *t, const xd_student *s, const xd_tokenizer *tok, const char *prompt, int max_new,
                  char **out, xd_err *e) {
  int32_t *ids = NULL;
  size_t n = 0;
  /* As the teacher was trained: BOS (the post-processor's special tokens) + prompt. */
  if (xd_tokenizer_encode(tok, prompt, strlen(prompt), 1, &ids, &n, e) != 0) return -1;
  const int V = t ? t->cfg.vocab : s->cfg.vocab, eos = xd_tokenizer_eos_id(tok);
  int32_t *gen = xd_malloc((size_t)max_new * sizeof(int32_t));
  int ng = 0, rc = 0;
  if (t) {
    int32_t *o = xd_malloc((n + (size_t)max_new) * sizeof(int32_t));
    int n_out = 0;
    rc = xd_teacher_generate(t, ids, 1, (int)n, max_new, 1, o, &n_out, e);
    for (int i = (int)n; rc == 0 && i < n_out && o[i] != eos; i++) gen[ng++] = o[i];
    free(o);
  } else {
    float *logits = xd_malloc((size_t)V * sizeof(float));
    xd_student_state st;
    xd_student_state_alloc(&st, s);
    rc = xd_student_step(s, &st, ids, (int)n, logits, e);
    for (int i = 0; rc == 0 && i < max_new; i++) {
      int32_t best = 0;
      for (int v = 1; v < V; v++) if (logits[v] > logits[best]) best = v;
      if (best == eos) break;
      gen[ng++] = best;
      if (i + 1 < max_new) rc = xd_student_step(s, &st, &best, 1, logits, e);
    }
    xd_student_state_free(&st);
    free(logits);
  }
  size_t len;
  if (rc == 0) rc = xd_tokenizer_decode(tok, gen, (size_t)ng, 1, out, &len, e);
  free(gen);
  free(ids);
  return rc;
}

static double exact_match(const xd_teacher *t, const xd_student *s, const xd_tokenizer *tok, const eval_set *es, xd_err *e) {
  int hit = 0;
  for (int i = 0; i < es->n; i++) {
    char *g = NULL;
    if (greedy(t, s, tok, es->prompt[i], 12, &g, e) != 0) return NAN;
    hit += xd_synth_exact_match(g, es->answer[i]);
    free(g);
  }
  return (double)hit / es->n;
}

/* ---- training stages --------------------------------------------------------------------- */
static void train_cfg(xd_train_config *c, xd_train_stage stage, const xd_demo_opts *o, const char *dir, int steps, double lr) {
  xd_train_config_defaults(c, stage);
  c->seed = (int64_t)o->seed;
  c->steps = steps;
  c->seq_len = o->seq_len;
  c->batch = o->batch;
  c->micro_batch = o->batch;
  c->lr = lr;
  c->lr_min = lr * 1e-3;
  c->warmup_steps = steps / 10 + 1;
  c->ckpt_every = steps; /* one checkpoint at the end */
  c->ckpt_keep = 1;
  c->log_every = steps / 5 + 1;
  snprintf(c->out_dir, sizeof c->out_dir, "%s", dir);
}

static int run_align(const xd_demo_opts *o, const xd_teacher *t, const char *sdir, const char *data, const char *out_dir,
                     FILE *log, xd_err *e) {
  xd_student s;
  if (xd_student_load(&s, sdir, XD_STUDENT_TRAIN_NEW, e) != 0) return -1;
  char *tdir = xd_path_join(out_dir, "train");
  xd_train_config cfg;
  train_cfg(&cfg, XD_STAGE_ALIGN, o, tdir, o->align_steps, o->align_lr);
  free(tdir);
  xd_loader *L = NULL;
  xd_loader_config lc = {o->seq_len, o->batch, o->seed, 1, 0, 1};
  int rc = xd_loader_open(&L, data, "train", &lc, e);
  if (rc == 0) {
    xd_align_ctx c;
    xd_trainer_hooks hooks;
    xd_align_init(&c, t, &s, L, o->batch, o->seq_len, &hooks);
    /* Held-out: validation rows in stream order. */
    xd_loader *V = NULL;
    xd_loader_config vc = {o->seq_len, o->batch, 0, 0, 0, 1};
    double before = NAN, after = NAN;
    if (xd_loader_open(&V, data, "val", &vc, e) == 0 && xd_loader_rows_total(V) >= (uint64_t)o->batch) {
      xd_loader_next(V, c.tokens, NULL);
      for (int b = 0; b < o->batch; b++) memcpy(c.inputs + (size_t)b * o->seq_len, c.tokens + (size_t)b * (o->seq_len + 1), (size_t)o->seq_len * sizeof(int32_t));
      before = xd_align_eval_loss(&c, c.inputs);
    }
    xd_train_result res;
    rc = xd_trainer_run(&cfg, &s.params, &hooks, log, &res, e);
    if (rc == 0 && V && !isnan(before)) {
      after = xd_align_eval_loss(&c, c.inputs);
      fprintf(log, "demo: stage I held-out loss %.4g -> %.4g (%.1fx lower)\n", before, after, before / after);
    }
    if (V) xd_loader_free(V);
    xd_align_free(&c);
    xd_loader_free(L);
  }
  if (rc == 0) rc = xd_student_save(&s, out_dir, e);
  xd_student_free(&s);
  return rc;
}

static int run_distill(const xd_demo_opts *o, const xd_teacher *t, const char *sdir, const char *data, const char *out_dir,
                       FILE *log, xd_err *e) {
  xd_student s;
  if (xd_student_load(&s, sdir, XD_STUDENT_TRAIN_ALL, e) != 0) return -1;
  char *tdir = xd_path_join(out_dir, "train");
  xd_train_config cfg;
  train_cfg(&cfg, XD_STAGE_DISTILL, o, tdir, o->distill_steps, o->distill_lr);
  free(tdir);
  cfg.kd_topk = t->cfg.vocab < 256 ? t->cfg.vocab : 256;
  xd_loader *L = NULL;
  xd_loader_config lc = {o->seq_len, o->batch, o->seed, 1, 0, 1};
  int rc = xd_loader_open(&L, data, "train", &lc, e);
  if (rc == 0) {
    kd_config kd = kd_config_default(o->batch * o->seq_len, t->cfg.vocab);
    kd.k = (int)cfg.kd_topk;
    xd_distill_ctx c;
    xd_trainer_hooks hooks;
    xd_distill_init(&c, t, NULL, &s, L, o->batch, o->seq_len, &kd, &hooks);
    xd_train_result res;
    rc = xd_trainer_run(&cfg, &s.params, &hooks, log, &res, e);
    xd_distill_free(&c);
    xd_loader_free(L);
  }
  if (rc == 0) rc = xd_student_save(&s, out_dir, e);
  xd_student_free(&s);
  return rc;
}

/* Mean mixing gate o per layer and head on a sample of eval prompts: which branch each head uses. */
static int gate_map(const xd_student *s, const xd_tokenizer *tok, const eval_set *es, const char *path, xd_err *e) {
  const int L = s->cfg.n_layers, H = s->cfg.n_heads;
  double *acc = xd_calloc((size_t)L * H, sizeof(double));
  long count = 0;
  for (int i = 0; i < es->n && i < 8; i++) {
    int32_t *ids;
    size_t n;
    if (xd_tokenizer_encode(tok, es->prompt[i], strlen(es->prompt[i]), 1, &ids, &n, e) != 0) { free(acc); return -1; }
    xd_student_train_acts a;
    xd_student_train_acts_alloc(&a, s, 1, (int)n);
    float *logits = xd_malloc(n * (size_t)s->cfg.vocab * sizeof(float));
    if (xd_student_forward_train(s, &a, ids, logits, e) == 0) {
      for (int l = 0; l < L; l++)
        for (size_t t = 0; t < n; t++)
          for (int h = 0; h < H; h++) acc[l * H + h] += a.layer[l].core.o[t * (size_t)H + (size_t)h];
      count += (long)n;
    }
    free(logits);
    xd_student_train_acts_free(&a);
    free(ids);
  }
  FILE *fp = fopen(path, "w");
  if (!fp) { free(acc); return xd_errf(e, "%s: cannot write", path); }
  fprintf(fp, "{\"layers\": %d, \"heads\": %d, \"gate\": [", L, H);
  for (int l = 0; l < L; l++) {
    fprintf(fp, "%s[", l ? ", " : "");
    for (int h = 0; h < H; h++) fprintf(fp, "%s%.5f", h ? ", " : "", count ? acc[l * H + h] / (double)count : 0.0);
    fprintf(fp, "]");
  }
  fprintf(fp, "]}\n");
  fclose(fp);
  free(acc);
  return 0;
}

static void set_result(xd_task_result *r, const char *task, double score, int n) {
  memset(r, 0, sizeof *r);
  r->task = xd_strdup(task);
  r->kind = xd_strdup("generate");
  r->n = (size_t)n;
  snprintf(r->metrics[0].name, sizeof r->metrics[0].name, "exact_match");
  r->metrics[0].value = score;
  r->metrics[0].higher_is_better = 1;
  r->n_metrics = 1;
  snprintf(r->primary, sizeof r->primary, "exact_match");
}

/* ---- the whole demo ------------------------------------------------------------------------ */
int xd_demo_run(const xd_demo_opts *o, FILE *log, FILE *out, xd_err *e) {
  const double t0 = xd_now();
  char path[4096];
  if (!xd_is_dir(o->teacher))
    return xd_errf(e, "%s: demo teacher not found (make it with tools/make_demo_teacher.py, or pass --teacher DIR)", o->teacher);
  if (xd_mkdir_p(o->out, e) != 0) return -1;
  xd_tokenizer *tok = NULL;
  if (xd_tokenizer_load(&tok, o->teacher, e) != 0) return -1;
  xd_teacher t;
  if (xd_teacher_load(&t, o->teacher, e) != 0) { xd_tokenizer_free(tok); return -1; }
  int rc = 0;
  const int ND = XD_SYNTH_NDOMAINS;
  /* 1. synthetic domains */
  snprintf(path, sizeof path, "%s/synth", o->out);
  xd_synth_opts so;
  xd_synth_opts_default(&so);
  so.seed = o->seed;
  so.n_train = o->n_train;
  so.n_eval = o->n_eval;
  fprintf(log, "demo: [1/6] synthetic domains -> %s\n", path);
  rc = xd_synth_write(path, &so, e);
  /* 2. token shards: all domains (stage I) and one dataset per domain (stage II experts) */
  char *inputs[XD_SYNTH_NDOMAINS];
  for (int d = 0; d < ND; d++) {
    char p[4096];
    snprintf(p, sizeof p, "%s/synth/%s/train.jsonl", o->out, xd_synth_domain_name(d));
    inputs[d] = xd_strdup(p);
  }
  fprintf(log, "demo: [2/6] tokenising with the teacher's tokenizer\n");
  if (rc == 0) {
    snprintf(path, sizeof path, "%s/data/all", o->out);
    rc = prepare(tok, o->teacher, (const char *const *)inputs, ND, path, e);
  }
  for (int d = 0; rc == 0 && d < ND; d++) {
    snprintf(path, sizeof path, "%s/data/%s", o->out, xd_synth_domain_name(d));
    rc = prepare(tok, o->teacher, (const char *const *)&inputs[d], 1, path, e);
  }
  for (int d = 0; d < ND; d++) free(inputs[d]);
  /* 3. init + stage I */
  char init_dir[4096], aligned[4096];
  snprintf(init_dir, sizeof init_dir, "%s/student-init", o->out);
  snprintf(aligned, sizeof aligned, "%s/student-aligned", o->out);
  if (rc == 0) {
    xd_hybrid_config h;
    xd_hybrid_defaults(&h, t.cfg.head_dim);
    h.window = o->window;
    h.sinks = o->sinks;
    h.chunk = o->chunk;
    const xd_student_dims dm = {t.cfg.n_layers, t.cfg.hidden, t.cfg.n_heads, t.cfg.n_kv_heads, t.cfg.head_dim};
    fprintf(log, "demo: [3/6] init (W=%d, S=%d) and stage I alignment, %d steps\n", h.window, h.sinks, o->align_steps);
    rc = xd_student_init(o->teacher, &dm, &h, init_dir, e);
  }
  if (rc == 0) {
    snprintf(path, sizeof path, "%s/data/all", o->out);
    rc = run_align(o, &t, init_dir, path, aligned, log, e);
  }
  /* 4. one stage II expert per domain */
  char expert[XD_SYNTH_NDOMAINS][4096];
  for (int d = 0; rc == 0 && d < ND; d++) {
    snprintf(expert[d], sizeof expert[d], "%s/expert-%s", o->out, xd_synth_domain_name(d));
    snprintf(path, sizeof path, "%s/data/%s", o->out, xd_synth_domain_name(d));
    fprintf(log, "demo: [4/6] stage II expert '%s', %d steps\n", xd_synth_domain_name(d), o->distill_steps);
    rc = run_distill(o, &t, aligned, path, expert[d], log, e);
  }
  /* 5. merge */
  char merged[4096];
  snprintf(merged, sizeof merged, "%s/student-merged", o->out);
  if (rc == 0) {
    xd_merge_expert ex[XD_SYNTH_NDOMAINS];
    for (int d = 0; d < ND; d++) { ex[d].dir = expert[d]; ex[d].weight = 1.0; }
    fprintf(log, "demo: [5/6] merging %d experts with equal weights\n", ND);
    rc = xd_merge_run(ex, ND, merged, e);
  }
  /* 6. evaluation */
  double score[2 + XD_SYNTH_NDOMAINS][XD_SYNTH_NDOMAINS]; /* teacher, merged, experts */
  if (rc == 0) fprintf(log, "demo: [6/6] exact-match evaluation on %d held-out examples per domain\n", o->n_eval);
  eval_set es[XD_SYNTH_NDOMAINS];
  memset(es, 0, sizeof es);
  for (int d = 0; rc == 0 && d < ND; d++) {
    snprintf(path, sizeof path, "%s/synth/%s/eval.jsonl", o->out, xd_synth_domain_name(d));
    rc = eval_set_load(&es[d], path, o->n_eval, e);
  }
  for (int m = 0; rc == 0 && m < 2 + ND; m++) {
    xd_student s;
    const int is_teacher = m == 0;
    if (!is_teacher && xd_student_load(&s, m == 1 ? merged : expert[m - 2], XD_STUDENT_FROZEN, e) != 0) { rc = -1; break; }
    for (int d = 0; rc == 0 && d < ND; d++) {
      score[m][d] = exact_match(is_teacher ? &t : NULL, is_teacher ? NULL : &s, tok, &es[d], e);
      if (isnan(score[m][d])) rc = -1;
    }
    if (m == 1 && rc == 0) {
      snprintf(path, sizeof path, "%s/gates.json", o->out);
      rc = gate_map(&s, tok, &es[1], path, e);
    }
    if (!is_teacher) xd_student_free(&s);
  }
  if (rc == 0) {
    xd_results rs = {.model = merged, .role = "student", .n_tasks = (size_t)ND};
    xd_results rt = {.model = (char *)o->teacher, .role = "teacher", .n_tasks = (size_t)ND};
    rs.tasks = xd_calloc((size_t)ND, sizeof *rs.tasks);
    rt.tasks = xd_calloc((size_t)ND, sizeof *rt.tasks);
    for (int d = 0; d < ND; d++) {
      set_result(&rs.tasks[d], xd_synth_domain_name(d), score[1][d], es[d].n);
      set_result(&rt.tasks[d], xd_synth_domain_name(d), score[0][d], es[d].n);
    }
    snprintf(path, sizeof path, "%s/results-student.json", o->out);
    rc = xd_results_write(&rs, path, e);
    snprintf(path, sizeof path, "%s/results-teacher.json", o->out);
    if (rc == 0) rc = xd_results_write(&rt, path, e);
    xd_compare cmp;
    if (rc == 0) rc = xd_compare_build(&rs, &rt, 0.001, &cmp, e);
    if (rc == 0) {
      fprintf(out, "\n%-10s %9s %9s %9s %9s\n", "domain", "teacher", "expert", "merged", "recovery");
      for (int d = 0; d < ND; d++)
        fprintf(out, "%-10s %9.3f %9.3f %9.3f %8.1f%%\n", xd_synth_domain_name(d), score[0][d], score[2 + d][d], score[1][d],
                score[0][d] > 0 ? 100.0 * score[1][d] / score[0][d] : NAN);
      fprintf(out, "\nWin-and-Tie of the merged student vs the teacher (SPEC §6):\n");
      const double c0 = cmp.curve[0];
      fprintf(out, "  C_0 = %.2f (%s)", c0, c0 >= 0.5 ? "lossless" : "not lossless");
      for (int k = 10; k <= 100; k *= 10) fprintf(out, ", C_%.2f = %.2f", (double)k / 1000.0, cmp.curve[k]);
      if (cmp.k_star >= 0) fprintf(out, "\n  alpha* = %.3f\n", (double)cmp.k_star / cmp.n);
      else fprintf(out, "\n  alpha* > 1 (C_alpha < 0.5 everywhere)\n");
      /* Report */
      xd_metrics_log logs[2 + XD_SYNTH_NDOMAINS];
      size_t nl = 0;
      snprintf(path, sizeof path, "%s/train/metrics.jsonl", aligned);
      if (xd_metrics_log_read(&logs[nl], path, e) == 0) nl++;
      for (int d = 0; d < ND; d++) {
        snprintf(path, sizeof path, "%s/train/metrics.jsonl", expert[d]);
        if (xd_metrics_log_read(&logs[nl], path, e) == 0) nl++;
      }
      xd_gates g;
      snprintf(path, sizeof path, "%s/gates.json", o->out);
      const int have_g = xd_gates_read(&g, path, e) == 0;
      xd_report_input in = {.title = "xdistill demo: merged student vs demo teacher", .student = &rs, .teacher = &rt,
                            .cmp = &cmp, .logs = logs, .n_logs = nl, .gates = have_g ? &g : NULL};
      snprintf(path, sizeof path, "%s/report.html", o->out);
      rc = xd_report_write(&in, path, e);
      if (rc == 0) fprintf(out, "\nReport: %s   (%.0f s in all)\n", path, xd_now() - t0);
      for (size_t i = 0; i < nl; i++) xd_metrics_log_free(&logs[i]);
      if (have_g) xd_gates_free(&g);
      xd_compare_free(&cmp);
    }
    for (int d = 0; d < ND; d++) {
      free(rs.tasks[d].task); free(rs.tasks[d].kind);
      free(rt.tasks[d].task); free(rt.tasks[d].kind);
    }
    free(rs.tasks);
    free(rt.tasks);
  }
  for (int d = 0; d < ND; d++) eval_set_free(&es[d]);
  xd_teacher_free(&t);
  xd_tokenizer_free(tok);
  return rc;
}
