/* Model runner: a teacher (HF checkpoint) or a hybrid student checkpoint behind one interface,
 * for `forward`, `generate` and `eval`, on the CPU (fp32) or, loaded with xd_runner_load_on(...,
 * cuda = 1), on GPU 0 (bf16 matrices; teacher_cuda.h / student_cuda.h; `eval --device cuda`).
 *  - xd_runner_forward: full-sequence logits (teacher: xd_teacher_forward; student:
 *    xd_student_forward).
 *  - xd_decoder: incremental decoding of one sequence (teacher: KV cache; student: the
 *    constant-memory recurrent state, xd_student_step); feed a prompt, then one token at a time.
 *  - xd_runner_generate: greedy or sampled generation with EOS / stop strings and a streaming
 *    text callback that only ever receives complete UTF-8 characters.
 *  - xd_runner_lm: the model as an xd_lm (eval/lm.h): log-likelihoods through the evaluator's
 *    logits adaptor (eval/lm_logits.h) over xd_runner_forward, generation through xd_decoder. */
#ifndef XD_EVAL_RUNNER_H
#define XD_EVAL_RUNNER_H
#include "eval/lm.h"
#include "eval/detok.h"
#include "eval/lm_logits.h"
#include "eval/sample.h"
#include "model/student/student.h"
#include "model/teacher/teacher.h"
#include "tokenizer/tokenizer.h"

typedef struct {
  int is_student;
  xd_teacher teacher;     /* when !is_student */
  xd_student student;     /* when is_student */
  xd_model_config cfg;    /* copy of the model's config */
  xd_tokenizer *tok;      /* NULL when the model has no tokenizer */
  char *name;             /* the model directory */
  /* full-forward scratch, sized for the last (B, T) */
  int acts_B, acts_T;
  xd_teacher_acts ta;
  xd_core_acts ca;
  xd_logits_model lm_src; /* backing store for xd_runner_lm */
  /* --device cuda: the model on GPU 0 (the host copy of the weights is freed after the upload;
   * teacher / student above are then empty) and its GPU buffers; NULL on the CPU */
  struct xd_runner_gpu *gpu;
} xd_runner;

enum { XD_TOK_SKIP = 0, XD_TOK_REQUIRED = 1, XD_TOK_OPTIONAL = 2 };
/* Load dir (a student if xd_is_student_dir, else a teacher). tok_mode: XD_TOK_SKIP loads no
 * tokenizer (ids-only use); otherwise tokenizer (a tokenizer.json file or a directory), or when
 * NULL dir's tokenizer.json if present, is loaded; XD_TOK_REQUIRED fails when there is none. */
int xd_runner_load(xd_runner *r, const char *dir, const char *tokenizer, int tok_mode, xd_err *e);
/* The same; cuda = 1 puts the model on GPU 0 (a CUDA build; errors of the GPU set-up begin with
 * "--device cuda: "). On the GPU, xd_runner_forward and the decoder run the GPU model: buffers
 * are kept in the runner and grow (powers of two, up to the model's context length) to the
 * largest sequence seen, so a run of requests does not reallocate; the decoding state is shared,
 * so only one xd_decoder of a GPU runner may be in use at a time. */
int xd_runner_load_on(xd_runner *r, const char *dir, const char *tokenizer, int tok_mode, int cuda, xd_err *e);
void xd_runner_free(xd_runner *r);
/* Device (GPU) or host bytes of the decoding state after n tokens: the student's recurrent state
 * (the same at any n; on the GPU the decoder's state, which exists once a decoder has run), the
 * teacher's K and V cache of n positions (fp32 on the CPU, bf16 on the GPU). */
size_t xd_runner_decode_state_bytes(const xd_runner *r, size_t n);
/* A text prompt as ids (heap): encoded with the tokenizer's special tokens (BOS); a text that
 * gives no ids starts from BOS, else EOS, else id 0 (as the evaluator's prefix token). Needs the
 * tokenizer. `generate --prompt` and `serve` take their prompts through it. */
int xd_runner_encode_prompt(const xd_runner *r, const char *text, int32_t **ids, size_t *n, xd_err *e);
/* 1 if id is one of the config's eos_token_id(s) or the tokenizer's EOS. */
int xd_runner_is_eos(const xd_runner *r, int32_t id);
/* ids [B,T] -> logits [B,T,V]. */
int xd_runner_forward(xd_runner *r, const int32_t *ids, int B, int T, float *logits, xd_err *e);

typedef struct {
  xd_runner *r;
  int cap;                /* teacher: KV capacity in tokens */
  int max_prefill;        /* teacher: rows of the activations (longest single feed) */
  int len;                /* tokens fed so far */
  int on_gpu;             /* the runner's GPU decoding state (no CPU buffers below) */
  xd_kv_cache kv;
  xd_teacher_acts ta;
  xd_student_state st;
} xd_decoder;
/* cap: total tokens the sequence may reach (teacher KV cache; the student ignores it);
 * max_prefill: the longest single feed. */
void xd_decoder_init(xd_decoder *d, xd_runner *r, int cap, int max_prefill);
void xd_decoder_free(xd_decoder *d);
/* Feed ids[n] (n >= 1) and get the logits of the last one [V]. */
int xd_decoder_feed(xd_decoder *d, const int32_t *ids, int n, float *logits, xd_err *e);

/* Batched decoding: n_slots sequences decoded together, each slot (re)started on its own prompt
 * at any time (batched generation, continuous batching in `serve`).
 *  - CPU: one xd_decoder per slot; a step feeds the active slots one after another (each slot's
 *    logits are exactly those of a lone xd_decoder).
 *  - GPU: the student's batched state (one step advances every slot: GEMMs over the slots'
 *    rows, bf16 inputs, so logits differ from the one-sequence decoder's by ~1e-3 relative),
 *    the teacher's rows at different lengths. An idle slot steps too, on its last token, unread
 *    (a slot never started, on a one-token filler); an idle teacher row is restarted on that
 *    token before its cache fills.
 * cap: the longest sequence (prompt + generated) a slot may reach (the teacher's cache per slot;
 * the student's state does not depend on it). A GPU runner has one batched state: one
 * xd_batch_decoder at a time, and not alongside an xd_decoder. A GPU teacher with dynamic NTK
 * RoPE has none (create fails). */
typedef struct xd_batch_decoder xd_batch_decoder;
int xd_batch_decoder_create(xd_batch_decoder **out, xd_runner *r, int n_slots, int cap, xd_err *e);
void xd_batch_decoder_free(xd_batch_decoder *b);
/* Start `slot` anew with ids[n] (1 <= n <= cap - 1: room for one more token). */
int xd_batch_decoder_start(xd_batch_decoder *b, int slot, const int32_t *ids, int n, xd_err *e);
/* One token ids[s] for every slot s with active[s] (active NULL: every started slot); each
 * active slot's length + 1 must stay <= cap. */
int xd_batch_decoder_step(xd_batch_decoder *b, const int32_t *ids, const uint8_t *active, xd_err *e);
/* next[s] = the first argmax of slot s's latest logits (the GPU computes them on the device);
 * slots never started get 0. */
int xd_batch_decoder_argmax(xd_batch_decoder *b, int32_t *next, xd_err *e);
/* logits [V] (host) = slot's latest logits (those of its start or of its last step). */
int xd_batch_decoder_logits(xd_batch_decoder *b, int slot, float *logits, xd_err *e);
/* next[s] = a draw of smp[s] (temperature > 0) from slot s's latest logits, for every slot with
 * a sampler (smp[s] NULL: next[s] untouched). CPU: xd_sampler_next on each slot (slots in
 * parallel). GPU: the logits stay on the device: with nothing masked, xd_cuda_sample_rows draws
 * (u from the sampler's rng); with top-k <= 1024 or top-p, the rows' top-ranked tokens
 * (xd_cuda_topk_logprobs) go through xd_sampler_next_candidates; a row they cannot decide is
 * downloaded whole. Same distributions as the CPU; each sampler's rng advances as there. */
int xd_batch_decoder_sample(xd_batch_decoder *b, xd_sampler *const *smp, int32_t *next, xd_err *e);
/* Log-probabilities (natural log; the softmax of the raw logits, temperature 1) from each slot s
 * with k[s] >= 0 (k[s] <= kmax <= 1024): lp[s] that of token tok[s], and top_ids / top_lp
 * [s * kmax + j], j < k[s], its k[s] most likely tokens (ranked as the sampler ranks). Other slots
 * untouched. Before the step, which replaces the logits. GPU: the chosen tokens' by
 * xd_cuda_token_logprobs, the alternatives by xd_cuda_topk_logprobs (no row leaves the device). */
int xd_batch_decoder_logprobs(xd_batch_decoder *b, const int *k, int kmax, const int32_t *tok, float *lp,
                              int32_t *top_ids, float *top_lp, xd_err *e);

typedef struct {
  int max_new;                /* tokens to generate at most */
  int stop_at_eos;            /* stop (without emitting it) at an EOS id */
  const char *const *stops;   /* stop strings (need the tokenizer); output is cut before the first */
  size_t n_stops;
  size_t max_total;           /* 0: none; else stop when prompt + generated reaches it */
  xd_sample_params sp;        /* temperature 0 = greedy */
  uint64_t seed;
  /* streaming: called with each new piece of complete UTF-8 text (needs the tokenizer) */
  void (*on_text)(const char *s, size_t n, void *user);
  void *user;
} xd_gen_options;
void xd_gen_options_default(xd_gen_options *o); /* greedy, 64 new tokens, stop at EOS */

/* Generate from prompt[n_prompt] (n_prompt >= 1). Out (each may be NULL): *out_ids / *n_ids the
 * generated ids (EOS excluded; heap), *out_text their text cut before the first stop string (heap;
 * needs the tokenizer), *stop_reason "eos", "stop", "length". */
int xd_runner_generate(xd_runner *r, const int32_t *prompt, size_t n_prompt, const xd_gen_options *o,
                       int32_t **out_ids, size_t *n_ids, char **out_text, const char **stop_reason, xd_err *e);

/* Fill *lm (needs the tokenizer); r must outlive lm. batch: requests per call (>= 1). */
int xd_runner_lm(xd_runner *r, xd_lm *lm, size_t batch, xd_err *e);
#endif
