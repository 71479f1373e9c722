/* `serve`'s generation engine: continuous batching over a runner's batched decoder (engine.h). */
#include "serve/engine.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "eval/detok.h"
#include "serve/request.h"

struct xd_serve_job {
  xd_engine *eng;
  uint64_t id;
  /* set at submit, read-only after */
  int32_t *prompt;
  size_t n_prompt;
  int max_new, stop_at_eos;
  char **stops;
  size_t n_stops;
  xd_sample_params sp;
  uint64_t seed;
  int stream, logprobs;
  /* the engine thread's; the log-probability records are read by others once the job ended */
  int32_t *lp_ids, *lp_top_ids;
  float *lp, *lp_top;
  size_t lp_cap;
  int n_gen, started;
  xd_sampler smp;
  xd_detok dt;
  double t_submit, t_first;
  /* under eng->mu */
  char *text;
  size_t len, cap;
  int ended, cancelled, refs;
  const char *finish; /* "stop", "length", "cancelled"; NULL: failed (error, status) */
  char *error;
  int status;         /* a failure's HTTP status: 503 (shutting down), 500 (the model failed) */
  pthread_cond_t cv;
  xd_serve_job *next; /* the queue */
};

struct xd_engine {
  xd_runner *r;
  xd_engine_options o;
  xd_batch_decoder *bd;
  pthread_mutex_t mu;
  pthread_cond_t work;           /* a job was queued */
  xd_serve_job *q_head, *q_tail; /* under mu */
  int n_queued, running, stopping;
  uint64_t next_id;
  xd_engine_stats st;            /* counters under mu */
  /* the engine thread's */
  xd_serve_job **slot_job;       /* [n_slots] */
  int32_t *next, *toks;          /* [n_slots] */
  uint8_t *active, *cancelled;   /* [n_slots] */
  xd_sampler **smp;              /* [n_slots] the sampling jobs' samplers (NULL: greedy or free) */
  int *lp_k;                     /* [n_slots] logprobs wanted (-1: none) */
  float *lp, *lp_top;            /* [n_slots], [n_slots * XD_ENGINE_MAX_TOP] this round's */
  int32_t *lp_top_ids;           /* [n_slots * XD_ENGINE_MAX_TOP] */
};

int xd_engine_create(xd_engine **out, xd_runner *r, const xd_engine_options *o, xd_err *e) {
  *out = NULL;
  if (o->n_slots < 1 || o->n_slots > 65535) return xd_errf(e, "serve: %d slots (1 to 65535)", o->n_slots);
  if (o->ctx < 2) return xd_errf(e, "serve: a context of %d tokens", o->ctx);
  if (o->max_queue < 0) return xd_errf(e, "serve: a queue of %d", o->max_queue);
  if (!r->tok) return xd_errf(e, "%s: serving text needs a tokenizer", r->name);
  xd_engine *eng = xd_calloc(1, sizeof *eng);
  eng->r = r;
  eng->o = *o;
  if (xd_batch_decoder_create(&eng->bd, r, o->n_slots, o->ctx, e)) {
    free(eng);
    return -1;
  }
  pthread_mutex_init(&eng->mu, NULL);
  pthread_cond_init(&eng->work, NULL);
  const size_t n = (size_t)o->n_slots;
  eng->slot_job = xd_calloc(n, sizeof *eng->slot_job);
  eng->next = xd_calloc(n, sizeof *eng->next);
  eng->toks = xd_calloc(n, sizeof *eng->toks);
  eng->active = xd_calloc(n, 1);
  eng->cancelled = xd_calloc(n, 1);
  eng->smp = xd_calloc(n, sizeof *eng->smp);
  eng->lp_k = xd_calloc(n, sizeof *eng->lp_k);
  eng->lp = xd_calloc(n, sizeof *eng->lp);
  eng->lp_top = xd_calloc(n * XD_ENGINE_MAX_TOP, sizeof *eng->lp_top);
  eng->lp_top_ids = xd_calloc(n * XD_ENGINE_MAX_TOP, sizeof *eng->lp_top_ids);
  eng->st.slots = o->n_slots;
  *out = eng;
  return 0;
}

void xd_engine_free(xd_engine *eng) {
  if (!eng) return;
  xd_batch_decoder_free(eng->bd);
  pthread_mutex_destroy(&eng->mu);
  pthread_cond_destroy(&eng->work);
  free(eng->slot_job), free(eng->next), free(eng->toks), free(eng->active), free(eng->cancelled), free(eng->smp);
  free(eng->lp_k), free(eng->lp), free(eng->lp_top), free(eng->lp_top_ids);
  free(eng);
}

static void job_free(xd_serve_job *j) {
  for (size_t i = 0; i < j->n_stops; i++) free(j->stops[i]);
  free(j->stops), free(j->prompt), free(j->text), free(j->error);
  free(j->lp_ids), free(j->lp_top_ids), free(j->lp), free(j->lp_top);
  pthread_cond_destroy(&j->cv);
  free(j);
}

void xd_job_release(xd_serve_job *j) {
  xd_engine *eng = j->eng;
  pthread_mutex_lock(&eng->mu);
  const int last = --j->refs == 0;
  pthread_mutex_unlock(&eng->mu);
  if (last) job_free(j);
}

uint64_t xd_job_id(const xd_serve_job *j) { return j->id; }

xd_serve_job *xd_engine_submit(xd_engine *eng, const int32_t *prompt, size_t n, const xd_job_params *p, int *status,
                               xd_err *e) {
  const xd_runner *r = eng->r;
  *status = 400;
  if (n < 1) return xd_errf(e, "the prompt is empty"), NULL;
  if (n >= (size_t)eng->o.ctx)
    return xd_errf(e, "the prompt has %zu tokens; this server's context is %d (prompt + at least one new token)", n,
                   eng->o.ctx), NULL;
  if (xd_check_token_ids(prompt, n, r->cfg.vocab, e)) return NULL;
  if (p->max_new < 1) return xd_errf(e, "max_tokens must be at least 1"), NULL;
  if (xd_sample_params_check(&p->sp, e)) return NULL;
  if (p->logprobs > XD_ENGINE_MAX_TOP || p->logprobs > r->cfg.vocab)
    return xd_errf(e, "at most %d log-probabilities a token", XD_ENGINE_MAX_TOP), NULL;
  xd_serve_job *j = xd_calloc(1, sizeof *j);
  j->eng = eng;
  j->prompt = xd_malloc(n * sizeof *j->prompt);
  memcpy(j->prompt, prompt, n * sizeof *j->prompt);
  j->n_prompt = n;
  const size_t room = (size_t)eng->o.ctx - n;
  j->max_new = (size_t)p->max_new < room ? p->max_new : (int)room;
  j->stop_at_eos = p->stop_at_eos;
  j->stops = xd_calloc(p->n_stops ? p->n_stops : 1, sizeof *j->stops);
  for (size_t i = 0; i < p->n_stops; i++) j->stops[i] = xd_strdup(p->stops[i]);
  j->n_stops = p->n_stops;
  j->sp = p->sp;
  j->seed = p->seed;
  j->stream = p->stream;
  j->logprobs = p->logprobs < 0 ? -1 : p->logprobs;
  j->t_submit = xd_now();
  j->refs = 2;
  pthread_cond_init(&j->cv, NULL);
  pthread_mutex_lock(&eng->mu);
  if (eng->stopping || eng->n_queued >= eng->o.max_queue) {
    const int stopping = eng->stopping;
    pthread_mutex_unlock(&eng->mu);
    job_free(j);
    *status = 503;
    if (stopping) xd_errf(e, "the server is shutting down");
    else xd_errf(e, "the server is busy: %d requests are waiting for a slot", eng->o.max_queue);
    return NULL;
  }
  j->id = ++eng->next_id;
  if (eng->q_tail) eng->q_tail->next = j;
  else eng->q_head = j;
  eng->q_tail = j;
  eng->n_queued++;
  pthread_cond_signal(&eng->work);
  pthread_mutex_unlock(&eng->mu);
  return j;
}

int xd_job_wait(xd_serve_job *j, size_t *off, char **text, size_t *n) {
  xd_engine *eng = j->eng;
  *text = NULL;
  *n = 0;
  pthread_mutex_lock(&eng->mu);
  while (j->len == *off && !j->ended) pthread_cond_wait(&j->cv, &eng->mu);
  const int more = j->len > *off;
  if (more) {
    *n = j->len - *off;
    *text = xd_malloc(*n + 1);
    memcpy(*text, j->text + *off, *n);
    (*text)[*n] = 0;
    *off = j->len;
  }
  pthread_mutex_unlock(&eng->mu);
  return more;
}

void xd_job_result(xd_serve_job *j, const char **finish, const char **error, int *status, size_t *prompt_tokens,
                   size_t *completion_tokens) {
  xd_engine *eng = j->eng;
  pthread_mutex_lock(&eng->mu);
  *finish = j->finish;
  *error = j->error;
  *status = j->finish ? 200 : j->status;
  *prompt_tokens = j->n_prompt;
  *completion_tokens = (size_t)j->n_gen;
  pthread_mutex_unlock(&eng->mu);
}

void xd_job_logprobs(xd_serve_job *j, size_t *n, const int32_t **ids, const float **lp, int *k,
                     const int32_t **top_ids, const float **top_lp) {
  xd_engine *eng = j->eng;
  pthread_mutex_lock(&eng->mu); /* the job ended under it: its records are complete */
  const int ok = j->ended && j->logprobs >= 0;
  pthread_mutex_unlock(&eng->mu);
  *n = ok ? (size_t)j->n_gen : 0;
  *ids = j->lp_ids, *lp = j->lp, *k = ok ? j->logprobs : 0;
  *top_ids = j->lp_top_ids, *top_lp = j->lp_top;
}

void xd_job_cancel(xd_serve_job *j) {
  xd_engine *eng = j->eng;
  pthread_mutex_lock(&eng->mu);
  j->cancelled = 1;
  pthread_mutex_unlock(&eng->mu);
}

void xd_engine_get_stats(xd_engine *eng, xd_engine_stats *s) {
  pthread_mutex_lock(&eng->mu);
  *s = eng->st;
  s->running = eng->running;
  s->queued = eng->n_queued;
  pthread_mutex_unlock(&eng->mu);
}

/* ---- the engine thread ----------------------------------------------------------------------- */
static void append_text(xd_engine *eng, xd_serve_job *j, const char *s, size_t n) {
  if (!n) return;
  pthread_mutex_lock(&eng->mu);
  if (j->len + n + 1 > j->cap) {
    j->cap = (j->len + n + 1) * 2;
    j->text = xd_realloc(j->text, j->cap);
  }
  memcpy(j->text + j->len, s, n);
  j->len += n;
  j->text[j->len] = 0;
  if (j->stream) pthread_cond_broadcast(&j->cv); /* a whole-answer waiter sleeps until the end */
  pthread_mutex_unlock(&eng->mu);
}

/* End a job: its held-back text out (unless it failed), its slot freed, waiters woken, the
 * engine's reference dropped. finish NULL: failed with error and its HTTP status. */
static void job_end(xd_engine *eng, xd_serve_job *j, const char *finish, const char *error, int status) {
  if (j->started) {
    if (finish && strcmp(finish, "cancelled")) {
      const char *piece;
      size_t n_piece;
      xd_detok_finish(&j->dt, &piece, &n_piece);
      append_text(eng, j, piece, n_piece);
    }
    xd_detok_free(&j->dt);
    xd_sampler_free(&j->smp);
    j->started = 0;
  }
  const double dt = xd_now() - j->t_submit;
  pthread_mutex_lock(&eng->mu);
  j->ended = 1;
  j->finish = finish;
  if (error) j->error = xd_strdup(error);
  j->status = status;
  eng->st.jobs_done++;
  eng->st.prompt_tokens += j->n_prompt;
  eng->st.generated_tokens += (uint64_t)j->n_gen;
  pthread_cond_broadcast(&j->cv);
  pthread_mutex_unlock(&eng->mu);
  const double first = j->t_first > 0 ? j->t_first - j->t_submit : dt;
  if (eng->o.log) {
    if (finish)
      fprintf(eng->o.log, "serve: request %llu: prompt %zu tokens, %d generated in %.3f s (first token after %.3f s), %s\n",
              (unsigned long long)j->id, j->n_prompt, j->n_gen, dt, first, finish);
    else
      fprintf(eng->o.log, "serve: request %llu failed: %s\n", (unsigned long long)j->id, error);
    fflush(eng->o.log);
  }
  if (eng->o.jsonl) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    xd_sbuf b = {0};
    xd_sbuf_printf(&b, "{\"request\":%llu,\"time\":%.3f,\"prompt_tokens\":%zu,\"completion_tokens\":%d,",
                   (unsigned long long)j->id, (double)now.tv_sec + 1e-9 * (double)now.tv_nsec, j->n_prompt, j->n_gen);
    xd_sbuf_printf(&b, "\"seconds\":%.4f,\"first_token_s\":%.4f,", dt, first);
    if (finish) xd_sbuf_printf(&b, "\"finish\":\"%s\"}\n", finish);
    else {
      xd_sbuf_puts(&b, "\"error\":");
      xd_serve_json_string(&b, error, strlen(error));
      xd_sbuf_puts(&b, "}\n");
    }
    char *line = xd_sbuf_take(&b);
    fputs(line, eng->o.jsonl);
    fflush(eng->o.jsonl);
    free(line);
  }
  xd_job_release(j);
}

static void free_slot(xd_engine *eng, int s) {
  eng->slot_job[s] = NULL;
  pthread_mutex_lock(&eng->mu);
  eng->running--;
  pthread_mutex_unlock(&eng->mu);
}

/* Start the job in slot s: its sampler, detokenizer and prefill. */
static int job_start(xd_engine *eng, int s, xd_serve_job *j, xd_err *e) {
  xd_sampler_init(&j->smp, eng->r->cfg.vocab, &j->sp, j->seed);
  xd_detok_init(&j->dt, eng->r->tok, (const char *const *)j->stops, j->n_stops);
  j->started = 1;
  return xd_batch_decoder_start(eng->bd, s, j->prompt, (int)j->n_prompt, e);
}

/* The next token of the job in slot s (next[s]: the argmax, or the job's sampler's draw): toks[s],
 * and whether the slot is fed it (not after EOS or the job's last token). */
static int job_pick(xd_engine *eng, int s, xd_serve_job *j) {
  const int32_t tok = eng->next[s];
  if (j->t_first == 0) j->t_first = xd_now();
  eng->toks[s] = tok;
  const int eos = j->stop_at_eos && xd_runner_is_eos(eng->r, tok);
  return !eos && j->n_gen + 1 < j->max_new;
}

/* The token picked for slot s, after the step was launched (the GPU computes meanwhile): EOS,
 * the text, a stop string, the budget. 1 if the job goes on, 0 if it ended. A job ended by a stop
 * string was stepped once more for nothing: its slot starts anew for the next job. */
static int job_emit(xd_engine *eng, int s, xd_serve_job *j) {
  const int32_t tok = eng->toks[s];
  if (j->stop_at_eos && xd_runner_is_eos(eng->r, tok)) {
    job_end(eng, j, "stop", NULL, 0);
    return 0;
  }
  if (j->logprobs >= 0) { /* this round's record of slot s */
    const size_t i = (size_t)j->n_gen, k = (size_t)j->logprobs;
    if (i == j->lp_cap) {
      j->lp_cap = j->lp_cap ? 2 * j->lp_cap : 64;
      j->lp_ids = xd_realloc(j->lp_ids, j->lp_cap * sizeof *j->lp_ids);
      j->lp = xd_realloc(j->lp, j->lp_cap * sizeof *j->lp);
      j->lp_top_ids = xd_realloc(j->lp_top_ids, j->lp_cap * (k ? k : 1) * sizeof *j->lp_top_ids);
      j->lp_top = xd_realloc(j->lp_top, j->lp_cap * (k ? k : 1) * sizeof *j->lp_top);
    }
    j->lp_ids[i] = tok;
    j->lp[i] = eng->lp[s];
    memcpy(j->lp_top_ids + i * k, eng->lp_top_ids + (size_t)s * XD_ENGINE_MAX_TOP, k * sizeof *j->lp_top_ids);
    memcpy(j->lp_top + i * k, eng->lp_top + (size_t)s * XD_ENGINE_MAX_TOP, k * sizeof *j->lp_top);
  }
  j->n_gen++;
  const char *piece;
  size_t n_piece;
  xd_err de = {0};
  const int st = xd_detok_push(&j->dt, tok, &piece, &n_piece, &de);
  if (st < 0) { /* this job's text failed to decode: it ends, the others go on */
    job_end(eng, j, NULL, de.msg, 500);
    return 0;
  }
  append_text(eng, j, piece, n_piece);
  if (st == 1) {
    job_end(eng, j, "stop", NULL, 0);
    return 0;
  }
  if (j->n_gen >= j->max_new) {
    job_end(eng, j, "length", NULL, 0);
    return 0;
  }
  return 1;
}

/* Every queued job, then every running one, ended with error and status. */
static void end_all(xd_engine *eng, const char *error, int status) {
  pthread_mutex_lock(&eng->mu);
  xd_serve_job *q = eng->q_head;
  eng->q_head = eng->q_tail = NULL;
  eng->n_queued = 0;
  pthread_mutex_unlock(&eng->mu);
  while (q) {
    xd_serve_job *nx = q->next;
    job_end(eng, q, NULL, error, status);
    q = nx;
  }
  for (int s = 0; s < eng->o.n_slots; s++)
    if (eng->slot_job[s]) {
      job_end(eng, eng->slot_job[s], NULL, error, status);
      free_slot(eng, s);
    }
}

int xd_engine_run(xd_engine *eng, int (*should_stop)(void *), void *user, xd_err *e) {
  const int S = eng->o.n_slots;
  int rc = 0;
  for (;;) {
    /* wait for work; admit queued jobs into free slots; snapshot the cancels */
    pthread_mutex_lock(&eng->mu);
    int stop = should_stop(user);
    while (!stop && eng->running == 0 && !eng->q_head) {
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      ts.tv_nsec += 100 * 1000000L;
      if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
      pthread_cond_timedwait(&eng->work, &eng->mu, &ts);
      stop = should_stop(user);
    }
    if (stop) {
      eng->stopping = 1;
      pthread_mutex_unlock(&eng->mu);
      break;
    }
    for (int s = 0; s < S; s++) {
      eng->active[s] = 0; /* reused below: 1 = admitted this round */
      if (!eng->slot_job[s] && eng->q_head) {
        xd_serve_job *j = eng->q_head;
        eng->q_head = j->next;
        if (!eng->q_head) eng->q_tail = NULL;
        eng->n_queued--;
        j->next = NULL;
        eng->slot_job[s] = j;
        eng->running++;
        eng->active[s] = 1;
      }
      eng->cancelled[s] = eng->slot_job[s] && eng->slot_job[s]->cancelled;
    }
    pthread_mutex_unlock(&eng->mu);

    const double t0 = xd_now();
    int greedy = 0, sampled = 0;
    for (int s = 0; s < S; s++) {
      xd_serve_job *j = eng->slot_job[s];
      eng->smp[s] = NULL;
      if (!j) continue;
      if (eng->cancelled[s]) {
        job_end(eng, j, "cancelled", NULL, 0);
        free_slot(eng, s);
        continue;
      }
      if (eng->active[s]) {
        xd_err je = {0};
        if (job_start(eng, s, j, &je)) { /* the prompt was checked at submit: a model failure */
          job_end(eng, j, NULL, je.msg, 500);
          free_slot(eng, s);
          continue;
        }
      }
      greedy |= j->sp.temperature == 0;
      if (j->sp.temperature > 0) eng->smp[s] = &j->smp, sampled = 1;
    }
    /* the round's tokens: greedy slots' argmax, sampling slots' draws, all on the device */
    if (greedy && xd_batch_decoder_argmax(eng->bd, eng->next, e)) { rc = -1; break; }
    if (sampled && xd_batch_decoder_sample(eng->bd, eng->smp, eng->next, e)) { rc = -1; break; }
    /* the log-probabilities asked for, from these logits (the step replaces them) */
    int want_lp = 0;
    for (int s = 0; s < S; s++) {
      eng->lp_k[s] = eng->slot_job[s] ? eng->slot_job[s]->logprobs : -1;
      want_lp |= eng->lp_k[s] >= 0;
    }
    if (want_lp && xd_batch_decoder_logprobs(eng->bd, eng->lp_k, XD_ENGINE_MAX_TOP, eng->next, eng->lp, eng->lp_top_ids,
                                             eng->lp_top, e)) { rc = -1; break; }
    /* pick every running slot's token, launch the step for those that go on, then hand out
     * the text while the device computes */
    int any = 0;
    for (int s = 0; s < S; s++) {
      eng->active[s] = 0;
      if (!eng->slot_job[s]) continue;
      const int go = job_pick(eng, s, eng->slot_job[s]);
      eng->active[s] = (uint8_t)go;
      any |= go;
    }
    if (any && xd_batch_decoder_step(eng->bd, eng->toks, eng->active, e)) { rc = -1; break; }
    for (int s = 0; s < S; s++)
      if (eng->slot_job[s] && !job_emit(eng, s, eng->slot_job[s])) free_slot(eng, s);
    pthread_mutex_lock(&eng->mu);
    eng->st.steps += any;
    eng->st.busy_s += xd_now() - t0;
    pthread_mutex_unlock(&eng->mu);
  }
  if (rc) {
    pthread_mutex_lock(&eng->mu);
    eng->stopping = 1;
    pthread_mutex_unlock(&eng->mu);
    char msg[sizeof e->msg + 32];
    snprintf(msg, sizeof msg, "the model failed: %s", e->msg);
    end_all(eng, msg, 500);
    return -1;
  }
  end_all(eng, "the server is shutting down", 503);
  return 0;
}
