#include "train/config_train.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>
#include "train/schedule.h"

typedef enum { T_INT, T_FLOAT, T_STR, T_BOOL } key_type;
enum { K_HASH = 1 }; /* the key changes the optimisation trajectory */

typedef struct {
  const char *name;
  key_type type;
  size_t off, size;
  const char *def_align, *def_distill; /* text form, parsed like user input */
  int flags;
  const char *doc;
} key_def;

#define FIELD(f) offsetof(xd_train_config, f), sizeof(((xd_train_config *)0)->f)
/* THE table. Defaults: SPEC §3 (stage I, align) and §4 (stage II, distill); [d] marks a
 * value the paper does not give (our decision, see docs). */
static const key_def KEYS[] = {
  {"seed", T_INT, FIELD(seed), "1234", "1234", K_HASH, "seed of the run's RNG (data order, sampling)"},
  {"steps", T_INT, FIELD(steps), "2480", "4960", K_HASH, "optimiser steps (stage I ~650M, stage II ~1.3B tokens at 64 x 4096)"},
  {"out_dir", T_STR, FIELD(out_dir), "run-align", "run-distill", 0, "run directory: checkpoints, metrics.jsonl, config.json"},
  {"resume", T_BOOL, FIELD(resume), "false", "false", 0, "continue from the newest valid checkpoint in out_dir"},
  {"resume_force", T_BOOL, FIELD(resume_force), "false", "false", 0, "resume even if optimisation keys changed (e.g. a lower lr after divergence)"},
  {"batch", T_INT, FIELD(batch), "64", "64", K_HASH, "sequences per optimiser step"},
  {"micro_batch", T_INT, FIELD(micro_batch), "1", "1", K_HASH, "sequences per forward/backward; batch/micro_batch = accumulation steps"},
  {"seq_len", T_INT, FIELD(seq_len), "4096", "4096", K_HASH, "tokens per sequence"},
  {"lr", T_FLOAT, FIELD(lr), "1e-2", "1e-5", K_HASH, "peak learning rate, reached after warm-up (Qwen stage II: 7e-7)"},
  {"lr_min", T_FLOAT, FIELD(lr_min), "1e-5", "1e-5", K_HASH, "floor the cosine schedule decays to"},
  {"schedule", T_STR, FIELD(schedule), "cosine", "constant", K_HASH, "after linear warm-up: cosine (to lr_min) or constant"},
  {"warmup_steps", T_INT, FIELD(warmup_steps), "100", "100", K_HASH, "linear warm-up steps [d]"},
  {"weight_decay", T_FLOAT, FIELD(weight_decay), "0.1", "0.1", K_HASH, "AdamW decoupled weight decay (times each group's wd_mult)"},
  {"beta1", T_FLOAT, FIELD(beta1), "0.9", "0.9", K_HASH, "AdamW beta1 [d]"},
  {"beta2", T_FLOAT, FIELD(beta2), "0.95", "0.95", K_HASH, "AdamW beta2 [d]"},
  {"adam_eps", T_FLOAT, FIELD(adam_eps), "1e-8", "1e-8", K_HASH, "AdamW epsilon [d]"},
  {"grad_clip", T_FLOAT, FIELD(grad_clip), "1.0", "1.0", K_HASH, "clip the global gradient norm to this (0: off)"},
  {"max_skips", T_INT, FIELD(max_skips), "10", "10", 0, "stop as diverging after this many consecutive NaN/Inf steps"},
  {"ckpt_every", T_INT, FIELD(ckpt_every), "100", "100", 0, "checkpoint every N steps (0: only at the end and on SIGINT/SIGTERM)"},
  {"ckpt_keep", T_INT, FIELD(ckpt_keep), "3", "3", 0, "keep the newest K checkpoints"},
  {"log_every", T_INT, FIELD(log_every), "10", "10", 0, "progress line every N steps when stderr is not a terminal"},
  {"kd_gamma", T_FLOAT, FIELD(kd_gamma), "0.9", "0.9", K_HASH, "stage II: weight of the cross-entropy on the data token"},
  {"kd_beta", T_FLOAT, FIELD(kd_beta), "0.1", "0.1", K_HASH, "stage II: weight of KL(p_teacher || p_student) over the top-k set"},
  {"kd_topk", T_INT, FIELD(kd_topk), "256", "256", K_HASH, "stage II: teacher top-k tokens per position"},
  {"kd_temperature", T_FLOAT, FIELD(kd_temperature), "1.0", "1.0", K_HASH, "stage II: softmax temperature of the KD term"},
  {"recompute", T_BOOL, FIELD(recompute), "false", "false", 0,
   "stage II on the GPU: keep each layer's input only, recompute its activations in the backward (same maths; 1B, T 4096: activations 12.5 -> 4.7 GiB, step +14%; the CPU keeps all)"},
};
#define NKEYS ((int)(sizeof KEYS / sizeof KEYS[0]))

static const char *type_name(key_type t) {
  return t == T_INT ? "int" : t == T_FLOAT ? "float" : t == T_STR ? "string" : "bool";
}

static int find_key(const char *name) {
  for (int i = 0; i < NKEYS; i++)
    if (!strcmp(KEYS[i].name, name)) return i;
  return -1;
}

static int parse_bool(const char *s, int *out) {
  static const char *yes[] = {"true", "yes", "on", "1"}, *no[] = {"false", "no", "off", "0"};
  for (int i = 0; i < 4; i++) {
    if (!strcasecmp(s, yes[i])) { *out = 1; return 0; }
    if (!strcasecmp(s, no[i])) { *out = 0; return 0; }
  }
  return -1;
}

/* Set key k from text; errors name the source and the key. */
static int set_key(xd_train_config *c, int k, const char *v, const char *source, xd_err *e) {
  const key_def *d = &KEYS[k];
  void *f = (char *)c + d->off;
  char *end = NULL;
  errno = 0;
  switch (d->type) {
  case T_INT: {
    long long x = strtoll(v, &end, 10);
    if (!*v || *end || errno) return xd_errf(e, "%s: key '%s': expected an integer, got '%s'", source, d->name, v);
    *(int64_t *)f = x;
    break;
  }
  case T_FLOAT: {
    double x = strtod(v, &end);
    if (!*v || *end || errno || !isfinite(x)) return xd_errf(e, "%s: key '%s': expected a number, got '%s'", source, d->name, v);
    *(double *)f = x;
    break;
  }
  case T_BOOL:
    if (parse_bool(v, (int *)f) != 0) return xd_errf(e, "%s: key '%s': expected true or false, got '%s'", source, d->name, v);
    break;
  case T_STR:
    if (strlen(v) >= d->size) return xd_errf(e, "%s: key '%s': value longer than %zu characters", source, d->name, d->size - 1);
    memcpy(f, v, strlen(v) + 1);
    break;
  }
  return 0;
}

int xd_train_config_set(xd_train_config *c, const char *key, const char *value, const char *source, xd_err *e) {
  int k = find_key(key);
  if (k < 0) return xd_errf(e, "%s: unknown key '%s'", source, key);
  return set_key(c, k, value, source, e);
}

void xd_train_config_defaults(xd_train_config *c, xd_train_stage stage) {
  memset(c, 0, sizeof *c);
  c->stage = stage;
  xd_err e;
  for (int k = 0; k < NKEYS; k++)
    XD_CHECK(set_key(c, k, stage == XD_STAGE_ALIGN ? KEYS[k].def_align : KEYS[k].def_distill, "defaults", &e) == 0);
}

/* Apply key=value from a file, refusing unknown and repeated keys. */
static int set_from_file(xd_train_config *c, const char *key, const char *value, const char *path, char *seen, xd_err *e) {
  int k = find_key(key);
  if (k < 0) return xd_errf(e, "%s: unknown key '%s'", path, key);
  if (seen[k]) return xd_errf(e, "%s: key '%s' given twice", path, key);
  seen[k] = 1;
  return set_key(c, k, value, path, e);
}

static int load_yaml(xd_train_config *c, const char *path, const char *buf, size_t n, xd_err *e) {
  yaml_parser_t ps;
  if (!yaml_parser_initialize(&ps)) return xd_errf(e, "%s: cannot initialise the YAML parser", path);
  yaml_parser_set_input_string(&ps, (const unsigned char *)buf, n);
  char seen[NKEYS] = {0};
  char *key = NULL;
  int rc = 0, depth = 0, done = 0, ndocs = 0;
  while (rc == 0 && !done) {
    yaml_event_t ev;
    if (!yaml_parser_parse(&ps, &ev)) {
      rc = xd_errf(e, "%s: YAML error at line %zu: %s", path, ps.problem_mark.line + 1, ps.problem ? ps.problem : "syntax error");
      break;
    }
    size_t line = ev.start_mark.line + 1;
    switch (ev.type) {
    case YAML_STREAM_END_EVENT: done = 1; break;
    case YAML_DOCUMENT_START_EVENT:
      if (++ndocs > 1) rc = xd_errf(e, "%s: line %zu: more than one YAML document", path, line);
      break;
    case YAML_MAPPING_START_EVENT:
      if (depth++ > 0) rc = xd_errf(e, "%s: line %zu: key '%s': expected a scalar value, got a mapping", path, line, key ? key : "?");
      break;
    case YAML_MAPPING_END_EVENT: depth--; break;
    case YAML_SEQUENCE_START_EVENT:
      rc = xd_errf(e, "%s: line %zu: %s%s%sexpected a scalar value, got a list", path, line, key ? "key '" : "", key ? key : "", key ? "': " : "");
      break;
    case YAML_ALIAS_EVENT: rc = xd_errf(e, "%s: line %zu: YAML aliases are not supported", path, line); break;
    case YAML_SCALAR_EVENT: {
      const char *s = (const char *)ev.data.scalar.value;
      if (depth == 0) {
        /* a document that is a single scalar: only an empty/null one is allowed */
        if (ev.data.scalar.length && strcmp(s, "~") && strcmp(s, "null")) rc = xd_errf(e, "%s: expected a mapping of key: value", path);
      } else if (!key) {
        key = xd_strdup(s);
      } else {
        rc = set_from_file(c, key, s, path, seen, e);
        free(key);
        key = NULL;
      }
      break;
    }
    default: break;
    }
    yaml_event_delete(&ev);
  }
  free(key);
  yaml_parser_delete(&ps);
  return rc;
}

static int load_json(xd_train_config *c, const char *path, const char *buf, size_t n, xd_err *e) {
  cJSON *root = cJSON_ParseWithLength(buf, n);
  if (!root) return xd_errf(e, "%s: invalid JSON near byte %zu", path, (size_t)(cJSON_GetErrorPtr() ? cJSON_GetErrorPtr() - buf : 0));
  int rc = 0;
  if (!cJSON_IsObject(root)) rc = xd_errf(e, "%s: expected a JSON object of key: value", path);
  char seen[NKEYS] = {0};
  for (cJSON *it = root->child; rc == 0 && it; it = it->next) {
    char num[64];
    const char *v = NULL;
    if (cJSON_IsString(it)) v = it->valuestring;
    else if (cJSON_IsBool(it)) v = cJSON_IsTrue(it) ? "true" : "false";
    else if (cJSON_IsNumber(it)) {
      double x = it->valuedouble;
      if (x == floor(x) && fabs(x) < 9e15) snprintf(num, sizeof num, "%.0f", x);
      else snprintf(num, sizeof num, "%.17g", x);
      v = num;
    } else {
      rc = xd_errf(e, "%s: key '%s': expected a scalar value", path, it->string ? it->string : "?");
      break;
    }
    rc = set_from_file(c, it->string, v, path, seen, e);
  }
  cJSON_Delete(root);
  return rc;
}

static int has_suffix(const char *s, const char *suf) {
  size_t a = strlen(s), b = strlen(suf);
  return a >= b && !strcasecmp(s + a - b, suf);
}

int xd_train_config_load_file(xd_train_config *c, const char *path, xd_err *e) {
  int yaml = has_suffix(path, ".yaml") || has_suffix(path, ".yml");
  if (!yaml && !has_suffix(path, ".json")) return xd_errf(e, "%s: configuration file must end in .yaml, .yml or .json", path);
  char *buf;
  size_t n;
  if (xd_read_file(path, 1 << 20, &buf, &n, e) != 0) return -1;
  int rc = yaml ? load_yaml(c, path, buf, n, e) : load_json(c, path, buf, n, e);
  free(buf);
  return rc;
}

/* "--some-key=v" -> name "some_key", value "v" (or NULL). */
static void split_flag(const char *arg, char *name, size_t cap, const char **value) {
  const char *s = arg + 2, *eq = strchr(s, '=');
  size_t len = eq ? (size_t)(eq - s) : strlen(s);
  if (len >= cap) len = cap - 1;
  for (size_t i = 0; i < len; i++) name[i] = s[i] == '-' ? '_' : s[i];
  name[len] = 0;
  *value = eq ? eq + 1 : NULL;
}

int xd_train_config_from_args(xd_train_config *c, xd_train_stage stage, int argc, char **argv,
                              int *positional, int max_positional, int *npositional, xd_err *e) {
  xd_train_config_defaults(c, stage);
  if (npositional) *npositional = 0;
  char name[128];
  const char *val;
  /* pass 1: the config file, so flags override it whatever their order */
  for (int i = 1; i < argc; i++) {
    if (strncmp(argv[i], "--", 2) != 0) continue;
    split_flag(argv[i], name, sizeof name, &val);
    if (strcmp(name, "config") != 0) continue;
    if (!val) {
      if (i + 1 >= argc) return xd_errf(e, "command line: --config needs a file name");
      val = argv[++i];
    }
    if (xd_train_config_load_file(c, val, e) != 0) return -1;
  }
  /* pass 2: flags */
  for (int i = 1; i < argc; i++) {
    if (strncmp(argv[i], "--", 2) != 0 || !argv[i][2]) {
      if (!positional || !npositional || *npositional >= max_positional)
        return xd_errf(e, "command line: unexpected argument '%s'", argv[i]);
      positional[(*npositional)++] = i;
      continue;
    }
    split_flag(argv[i], name, sizeof name, &val);
    if (!strcmp(name, "help")) continue;
    if (!strcmp(name, "config")) {
      if (!val) i++;
      continue;
    }
    int k = find_key(name);
    if (k < 0) return xd_errf(e, "command line: unknown option '%s' (see --help)", argv[i]);
    if (!val) {
      int b;
      if (KEYS[k].type == T_BOOL) {
        val = (i + 1 < argc && parse_bool(argv[i + 1], &b) == 0) ? argv[++i] : "true";
      } else {
        if (i + 1 >= argc) return xd_errf(e, "command line: option --%s needs a value", KEYS[k].name);
        val = argv[++i];
      }
    }
    if (set_key(c, k, val, "command line", e) != 0) return -1;
  }
  return xd_train_config_validate(c, e);
}

int xd_train_config_validate(const xd_train_config *c, xd_err *e) {
#define REQ(cond, ...) do { if (!(cond)) return xd_errf(e, "configuration: " __VA_ARGS__); } while (0)
  REQ(c->steps >= 1, "steps must be >= 1 (got %" PRId64 ")", c->steps);
  REQ(c->batch >= 1 && c->micro_batch >= 1, "batch and micro_batch must be >= 1");
  REQ(c->batch % c->micro_batch == 0, "batch (%" PRId64 ") must be a multiple of micro_batch (%" PRId64 ")", c->batch, c->micro_batch);
  REQ(c->seq_len >= 1, "seq_len must be >= 1");
  /* upper bounds keep every derived float (AdamW's step, decay, eps; the KD loss's scale) finite */
  REQ(c->lr > 0 && c->lr <= 1e6, "lr must be in (0, 1e6] (got %g)", c->lr);
  REQ(c->lr_min >= 0 && c->lr_min <= c->lr, "lr_min must be in [0, lr] (got %g)", c->lr_min);
  REQ(c->warmup_steps >= 0, "warmup_steps must be >= 0");
  REQ(c->weight_decay >= 0 && c->weight_decay <= 1e6, "weight_decay must be in [0, 1e6]");
  REQ(c->beta1 >= 0 && c->beta1 < 1 && c->beta2 >= 0 && c->beta2 < 1, "beta1 and beta2 must be in [0, 1)");
  REQ(c->adam_eps > 0 && c->adam_eps <= 1, "adam_eps must be in (0, 1]");
  REQ(c->grad_clip >= 0 && c->grad_clip <= 1e30, "grad_clip must be in [0, 1e30] (0 turns clipping off)");
  REQ(c->max_skips >= 1, "max_skips must be >= 1");
  REQ(c->ckpt_every >= 0, "ckpt_every must be >= 0");
  REQ(c->ckpt_keep >= 1 && c->ckpt_keep <= 1000000, "ckpt_keep must be >= 1");
  REQ(c->log_every >= 1, "log_every must be >= 1");
  REQ(c->out_dir[0], "out_dir must not be empty");
  REQ(c->kd_gamma >= 0 && c->kd_beta >= 0 && c->kd_gamma <= 1e6 && c->kd_beta <= 1e6, "kd_gamma and kd_beta must be in [0, 1e6]");
  REQ(c->kd_topk >= 1, "kd_topk must be >= 1");
  REQ(c->kd_temperature > 0 && c->kd_temperature <= 1e6, "kd_temperature must be in (0, 1e6]");
#undef REQ
  xd_sched_kind sk;
  if (xd_schedule_parse(c->schedule, &sk, e) != 0) return xd_err_prefix(e, "configuration: key 'schedule'");
  return 0;
}

int64_t xd_train_config_accum(const xd_train_config *c) { return c->batch / c->micro_batch; }

static void format_value(const xd_train_config *c, int k, char *buf, size_t cap) {
  const void *f = (const char *)c + KEYS[k].off;
  switch (KEYS[k].type) {
  case T_INT: snprintf(buf, cap, "%" PRId64, *(const int64_t *)f); break;
  case T_FLOAT: snprintf(buf, cap, "%.17g", *(const double *)f); break;
  case T_BOOL: snprintf(buf, cap, "%s", *(const int *)f ? "true" : "false"); break;
  case T_STR: snprintf(buf, cap, "%s", (const char *)f); break;
  }
}

uint64_t xd_train_config_hash(const xd_train_config *c) {
  uint64_t h = 1469598103934665603ull;
  char buf[1200];
  for (int k = 0; k < NKEYS; k++) {
    if (!(KEYS[k].flags & K_HASH)) continue;
    /* a constant schedule does not depend on the run length: such a run may be extended */
    if (!strcmp(KEYS[k].name, "steps") && !strcmp(c->schedule, "constant")) continue;
    int n = snprintf(buf, sizeof buf, "%s=", KEYS[k].name);
    format_value(c, k, buf + n, sizeof buf - (size_t)n);
    for (const char *p = buf; *p; p++) h = (h ^ (uint8_t)*p) * 1099511628211ull;
    h = (h ^ (uint8_t)'\n') * 1099511628211ull;
  }
  return h;
}

char *xd_train_config_to_json(const xd_train_config *c) {
  cJSON *o = cJSON_CreateObject();
  for (int k = 0; k < NKEYS; k++) {
    const void *f = (const char *)c + KEYS[k].off;
    switch (KEYS[k].type) {
    case T_INT: cJSON_AddNumberToObject(o, KEYS[k].name, (double)*(const int64_t *)f); break;
    case T_FLOAT: cJSON_AddNumberToObject(o, KEYS[k].name, *(const double *)f); break;
    case T_BOOL: cJSON_AddBoolToObject(o, KEYS[k].name, *(const int *)f); break;
    case T_STR: cJSON_AddStringToObject(o, KEYS[k].name, (const char *)f); break;
    }
  }
  char *s = cJSON_Print(o);
  cJSON_Delete(o);
  XD_CHECK(s);
  char *r = xd_strdup(s); /* callers free() with the libc allocator */
  cJSON_free(s);
  return r;
}

int xd_train_config_save(const xd_train_config *c, const char *path, xd_err *e) {
  char *s = xd_train_config_to_json(c);
  size_t n = strlen(s);
  s[n] = '\n'; /* replace the terminator: the file ends with a newline */
  int rc = xd_write_file_atomic(path, s, n + 1, e);
  free(s);
  return rc;
}

void xd_train_config_print_help(FILE *fp, xd_train_stage stage) {
  fprintf(fp, "training options (--key value or --key=value; also keys of a --config FILE.yaml|.json;\n"
              "flags override the file; [d] = not given by the paper, our default):\n"
              "  --%-16s %-6s %-12s %s\n", "config", "path", "", "YAML or JSON file of key: value");
  for (int k = 0; k < NKEYS; k++)
    fprintf(fp, "  --%-16s %-6s %-12s %s\n", KEYS[k].name, type_name(KEYS[k].type),
            stage == XD_STAGE_ALIGN ? KEYS[k].def_align : KEYS[k].def_distill, KEYS[k].doc);
}
