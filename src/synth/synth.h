/* Synthetic task domains for the demo: seeded, deterministic generators of short prompt/answer
 * pairs with exact-match answers, written as jsonl per domain and split. See docs/synth.md.
 *
 * Conventions every domain keeps (the tokenizer and the evaluator rely on them):
 *  - prompts and answers are printable ASCII, with no newline;
 *  - a prompt never ends in whitespace, and every answer starts with exactly one space
 *    followed by a non-space, so that text = prompt + answer splits at a pre-token boundary of
 *    a byte-level BPE (the answer's tokens are the same whether or not the prompt precedes it);
 *  - answers are a few tokens long; whole examples stay under ~200 tokens with a byte-level
 *    BPE of vocabulary 512-1024 (every whitespace-separated word is at least one token). */
#ifndef XD_SYNTH_H
#define XD_SYNTH_H
#include "core/core.h"

typedef enum {
  XD_SYNTH_ARITH = 0,   /* "Compute: 4821 - 937 =" -> " 3884" (2-4 digit add/sub, a >= b for -) */
  XD_SYNTH_RECALL = 1,  /* key/value bindings, >= recall_gap filler words, then a query */
  XD_SYNTH_REVERSE = 2, /* "Reverse: b k q z m. Answer:" -> " m z q k b" */
  XD_SYNTH_FACTS = 3,   /* templated facts about 2-3 people (city, job) and a question */
  XD_SYNTH_NDOMAINS = 4
} xd_synth_domain;

/* "arith", "recall", "reverse", "facts"; NULL for an out-of-range id. */
const char *xd_synth_domain_name(int domain);
/* Id of a domain name, or -1. */
int xd_synth_domain_id(const char *name);

typedef struct {
  uint64_t seed;   /* the whole output is a function of (seed, options) */
  int n_train;     /* examples per domain in train.jsonl */
  int n_eval;      /* examples per domain in eval.jsonl (prompts unique, none in train) */
  int recall_gap;  /* min filler words between the last binding and the recall question */
  unsigned domain_mask; /* bit d set = write domain d */
} xd_synth_opts;

/* Defaults: seed 1234, 4000 train, 200 eval, recall_gap 96, all domains. */
void xd_synth_opts_default(xd_synth_opts *o);

/* Parse a comma-separated domain list ("arith,recall") into a mask; "all" = every domain. */
int xd_synth_parse_domains(const char *list, unsigned *mask, xd_err *e);

/* One example; prompt and answer are heap strings owned by the example. */
typedef struct {
  int domain;
  char *prompt;
  char *answer;
} xd_synth_example;
void xd_synth_example_free(xd_synth_example *x);

/* Draw one example of a domain from r (deterministic given the RNG state). */
void xd_synth_generate(int domain, xd_rng *r, int recall_gap, xd_synth_example *out);

/* Exact match as the demo's evaluation scores it: the generated continuation, cut at its first
 * newline, with surrounding whitespace trimmed, equals the answer trimmed. */
int xd_synth_exact_match(const char *generated, const char *answer);

/* Write DIR/<domain>/train.jsonl and DIR/<domain>/eval.jsonl for every selected domain plus
 * DIR/manifest.json, atomically. Each line: {"domain","prompt","answer","text"} with
 * text = prompt + answer. The eval split is drawn first (unique prompts); train examples whose
 * prompt appears in eval are redrawn, so the splits are disjoint by prompt. Fails (one line)
 * on bad options, an unwritable DIR, or a domain too small for the requested eval size. */
int xd_synth_write(const char *dir, const xd_synth_opts *o, xd_err *e);

#endif
