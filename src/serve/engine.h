/* `serve`'s generation engine: continuous batching over a runner's batched decoder.
 *
 * Requests (jobs) arrive from any thread (xd_engine_submit) and wait in a FIFO queue; one
 * thread runs xd_engine_run, which owns the model: each round it starts queued jobs in free
 * slots (a prefill each), picks every running slot's next token (the argmax, or a draw by the
 * job's own seeded sampler; both on the device on the GPU, xd_batch_decoder_sample), launches
 * the batched step of the slots that go on, then hands the text to the jobs' waiters while the
 * device computes. A slot is freed the moment its job ends (EOS, a stop string, max_new, the
 * context, a cancel), so new jobs join a running batch without waiting for it to drain.
 *
 * A job's tokens do not depend on what else runs: on the CPU each slot is a lone decoder, so a
 * job's output equals xd_runner_generate's with the same options bit for bit; on the GPU the
 * batched step's numerics (eval/runner.h) apply. Each job has its own sampler and seed. */
#ifndef XD_SERVE_ENGINE_H
#define XD_SERVE_ENGINE_H
#include <pthread.h>
#include <stdio.h>
#include "eval/runner.h"

typedef struct {
  int n_slots;    /* sequences decoded together */
  int ctx;        /* tokens a sequence may reach (prompt + generated) */
  int max_queue;  /* jobs waiting for a slot, at most (more: submit refuses, HTTP 503) */
  FILE *log;      /* one line per finished job (NULL: none) */
  FILE *jsonl;    /* one JSON object per finished job (NULL: none): request, time, prompt_tokens,
                   * completion_tokens, seconds, first_token_s, finish or error */
} xd_engine_options;

typedef struct xd_engine xd_engine;
typedef struct xd_serve_job xd_serve_job;

typedef struct {
  int max_new;                 /* >= 1; cut to the context's room */
  int stop_at_eos;
  const char *const *stops;    /* copied */
  size_t n_stops;
  xd_sample_params sp;
  uint64_t seed;
  int stream;                  /* 1: waiters wake at each piece of text; 0: at the end only */
  int logprobs;                /* -1: none; else record each generated token's log-probability
                                * and its logprobs (<= XD_ENGINE_MAX_TOP) most likely tokens */
} xd_job_params;

enum { XD_ENGINE_MAX_TOP = 20 };

int xd_engine_create(xd_engine **out, xd_runner *r, const xd_engine_options *o, xd_err *e);
/* After xd_engine_run has returned and every job was released. */
void xd_engine_free(xd_engine *eng);

/* Queue a job for prompt[n] (copied). NULL with e filled and *status the HTTP status to answer:
 * 400 (bad prompt or parameters), 503 (queue full, or shutting down). The job starts with two
 * references: the engine's and the caller's (xd_job_release). */
xd_serve_job *xd_engine_submit(xd_engine *eng, const int32_t *prompt, size_t n, const xd_job_params *p, int *status,
                               xd_err *e);

/* Wait until the job has text beyond *off (a streaming job) or has ended; copy the new text
 * (heap, *n bytes; NULL when none) and advance *off. Returns 1 while there was text, 0 once the
 * job ended and everything was handed out. */
int xd_job_wait(xd_serve_job *j, size_t *off, char **text, size_t *n);
/* The end of a job (after xd_job_wait returned 0): finish "stop" / "length" / "cancelled" (NULL
 * when it failed: *error holds the message, *status 503 when the server was shutting down, 500
 * when the model failed; 200 otherwise), tokens of the prompt and generated. */
void xd_job_result(xd_serve_job *j, const char **finish, const char **error, int *status, size_t *prompt_tokens,
                   size_t *completion_tokens);
/* After the end (xd_job_wait returned 0), with logprobs >= 0: the n generated tokens, their
 * log-probabilities (natural log, the raw distribution at temperature 1), and per token its k
 * most likely tokens top_ids / top_lp [n * k]. Owned by the job. */
void xd_job_logprobs(xd_serve_job *j, size_t *n, const int32_t **ids, const float **lp, int *k,
                     const int32_t **top_ids, const float **top_lp);
/* Ask the engine to end the job early (the client went away); it frees its slot at the next round. */
void xd_job_cancel(xd_serve_job *j);
void xd_job_release(xd_serve_job *j);
/* The job's number (1, 2, ... in order of submission). */
uint64_t xd_job_id(const xd_serve_job *j);

/* Run the engine on this thread until should_stop(user) returns nonzero (polled at least every
 * 100 ms); then end the jobs queued or running with "the server is shutting down". -1 with e
 * filled when the model fails (the jobs running then end with that error). */
int xd_engine_run(xd_engine *eng, int (*should_stop)(void *), void *user, xd_err *e);

typedef struct {
  int slots, running, queued;
  uint64_t jobs_done, prompt_tokens, generated_tokens, steps;
  double busy_s;               /* time spent in prefills and steps */
} xd_engine_stats;
void xd_engine_get_stats(xd_engine *eng, xd_engine_stats *s);
#endif
