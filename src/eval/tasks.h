/* Evaluation tasks: readers for the benchmark formats in shared/eval and for user task
 * definitions (docs/eval.md), turned into text requests with lm-evaluation-harness semantics.
 * A task holds documents only (text); eval/eval.h tokenizes and scores them through xd_lm.
 *
 * Kinds:
 *  - MULTIPLE_CHOICE: per doc, n choices of (context, continuation); the prediction is the
 *    argmax of the continuation log-likelihood (acc) or of log-likelihood / continuation UTF-8
 *    byte length (acc_norm). Continuations carry the target delimiter (" " by default).
 *    Partial scoring (WinoGrande): each choice has its own context (the option filled into the
 *    sentence) and all share the continuation.
 *  - LOGLIKELIHOOD (LAMBADA): one (context, continuation) per doc; acc = greedy match,
 *    perplexity = exp(-mean per-doc log-likelihood).
 *  - GENERATE (GSM8K, user tasks): greedy generation until a stop string, answer extraction,
 *    exact match against the reference.
 *  - PERPLEXITY: documents of raw text, scored with rolling windows; word/byte perplexity and
 *    bits per byte. */
#ifndef XD_EVAL_TASKS_H
#define XD_EVAL_TASKS_H
#include "core/core.h"

typedef enum {
  XD_TASK_MULTIPLE_CHOICE = 0,
  XD_TASK_LOGLIKELIHOOD = 1,
  XD_TASK_GENERATE = 2,
  XD_TASK_PERPLEXITY = 3,
} xd_task_kind;

typedef enum {
  XD_EXTRACT_NONE = 0,   /* compare the generation, trimmed, with the answer */
  XD_EXTRACT_GSM8K = 1,  /* "#### N" (first match), else the last number; see docs/eval.md */
  XD_EXTRACT_NUMBER = 2, /* the last number in the generation */
} xd_extract_kind;

typedef struct {
  char *context;          /* shared context (few-shot prefix included); NULL if per-choice */
  char **choice_contexts; /* [n_choices] per-choice contexts (partial scoring), or NULL */
  char **continuations;   /* [n_choices] continuation texts, delimiter included */
  int n_choices;          /* MC: >= 1; LOGLIKELIHOOD: 1; GENERATE/PERPLEXITY: 0 */
  int gold;               /* MC: index of the right choice */
  char *prompt;           /* GENERATE: full prompt; PERPLEXITY: the document text */
  char *answer;           /* GENERATE: reference answer, already normalised */
} xd_task_doc;

typedef struct {
  char *name;
  xd_task_kind kind;
  xd_task_doc *docs;
  size_t n_docs;
  /* GENERATE */
  char **until; /* stop strings */
  size_t n_until;
  int max_new_tokens;
  xd_extract_kind extract;
  int ignore_case;
  size_t target_delim_len; /* MC: bytes of delimiter at the front of each continuation, left out
                              of acc_norm's length (lm-eval divides by len(choice)) */
  int num_fewshot;         /* few-shot examples per prompt, as loaded */
  char primary[32];        /* metric `compare` uses: acc, acc_norm, exact_match, bits_per_byte */
  char *source; /* data file or directory the docs came from */
} xd_task;

typedef struct {
  int num_fewshot;   /* -1: the format's default (0 for MC, 5 for GSM8K / MMLU) */
  uint64_t seed;     /* few-shot sampling seed (default 1234) */
  size_t limit;      /* 0: all docs; else the first `limit` docs */
} xd_task_options;

void xd_task_options_default(xd_task_options *o);

/* Load a task. `format` is one of:
 *   "mc"          jsonl {query, choices, gold} (ARC, PIQA, HellaSwag llm-foundry)
 *   "winogrande"  jsonl {context_options, continuation, gold} (partial scoring)
 *   "hellaswag_olmes"  OLMES request jsonl(.gz): {doc_id, label, request:{context, continuation}}
 *   "lambada"     jsonl {context, continuation}
 *   "mmlu"        a CSV file or a directory of *_test.csv (question,choice0..3,answer); few-shot
 *                 from fewshot_path (a dev CSV or directory of *_dev.csv), first k per subject
 *   "gsm8k"       jsonl {question, answer "... #### N"}; few-shot from fewshot_path (train)
 *   "perplexity"  a text file (one document), or jsonl with a "text" field per line
 *   "def"         a JSON task definition (docs/eval.md); path is the .json file
 * name may be NULL (then derived from the format / file name). fewshot_path may be NULL. */
int xd_task_load(xd_task **out, const char *format, const char *path, const char *fewshot_path,
                 const char *name, const xd_task_options *opt, xd_err *e);
void xd_task_free(xd_task *t);

/* Load from a one-string spec (for command lines):
 *   "FORMAT:PATH"              e.g. "mc:data/arc_easy.jsonl" (name = file name)
 *   "NAME=FORMAT:PATH"         e.g. "arc_easy=mc:data/arc_easy.jsonl"
 *   "...:PATH,FEWSHOT_PATH"    few-shot file or directory after a comma
 *   "FILE.json"                a task definition (format "def")
 * NAME is [A-Za-z0-9_.-]+. */
int xd_task_load_spec(xd_task **out, const char *spec, const xd_task_options *opt, xd_err *e);

/* Answer extraction with lm-evaluation-harness GSM8K semantics: strict "#### (-?[0-9.,]+)"
 * (first match); if none (or mode NUMBER), the last match of "(-?[$0-9.,]{2,})|(-?[0-9]+)";
 * then the harness's normalisation: remove ",", "$", a leading "#### " and one trailing ".".
 * Returns a heap string ("" if nothing was found); *strict set to 1 when the strict pattern
 * matched. */
char *xd_extract_answer(const char *text, xd_extract_kind mode, int *strict);

/* Kind names for JSON ("multiple_choice", ...). */
const char *xd_task_kind_name(xd_task_kind k);
#endif
