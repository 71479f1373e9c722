/* Teacher / student runner: forward, incremental decoding, generation, xd_lm (see runner.h). */
#include "eval/runner.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int xd_runner_load(xd_runner *r, const char *dir, const char *tokenizer, int tok_mode, xd_err *e) {
  memset(r, 0, sizeof *r);
  r->is_student = xd_is_student_dir(dir);
  if (r->is_student) {
    if (xd_student_load(&r->student, dir, XD_STUDENT_FROZEN, e)) return -1;
    r->cfg = r->student.cfg;
  } else {
    if (xd_teacher_load(&r->teacher, dir, e)) return -1;
    r->cfg = r->teacher.cfg;
  }
  r->name = xd_strdup(dir);
  char path[4096];
  struct stat sb;
  if (tok_mode == XD_TOK_SKIP) return 0;
  if (!tokenizer) {
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (stat(path, &sb) == 0) tokenizer = dir;
  }
  if (tokenizer) {
    if (xd_tokenizer_load(&r->tok, tokenizer, e)) { xd_runner_free(r); return -1; }
    const int tv = xd_tokenizer_vocab_size(r->tok);
    if (tv > r->cfg.vocab) {
      xd_errf(e, "%s: tokenizer has %d ids but the model's vocabulary is %d", tokenizer, tv, r->cfg.vocab);
      xd_runner_free(r);
      return -1;
    }
  } else if (tok_mode == XD_TOK_REQUIRED) {
    xd_errf(e, "%s: no tokenizer.json (give one with --tokenizer)", dir);
    xd_runner_free(r);
    return -1;
  }
  return 0;
}

static void free_acts(xd_runner *r) {
  if (!r->acts_T) return;
  xd_teacher_acts_free(&r->ta);
  if (r->is_student) xd_core_acts_free(&r->ca);
  r->acts_B = r->acts_T = 0;
}

void xd_runner_free(xd_runner *r) {
  free_acts(r);
  if (r->tok) xd_tokenizer_free(r->tok);
  if (r->name) {
    if (r->is_student) xd_student_free(&r->student);
    else xd_teacher_free(&r->teacher);
  }
  free(r->name);
  memset(r, 0, sizeof *r);
}

int xd_runner_is_eos(const xd_runner *r, int32_t id) {
  for (int i = 0; i < r->cfg.n_eos; i++)
    if (r->cfg.eos_token_ids[i] == id) return 1;
  return r->tok && xd_tokenizer_eos_id(r->tok) == id;
}

int xd_runner_forward(xd_runner *r, const int32_t *ids, int B, int T, float *logits, xd_err *e) {
  if (B < 1 || T < 1) return xd_errf(e, "%s: forward needs at least one token", r->name);
  /* the student's core activations are shaped per (B, T); the teacher's hold any B*T rows and
   * T keys up to their size, so they only grow (eval calls come with many lengths) */
  const int fits = r->is_student ? (r->acts_B == B && r->acts_T == T)
                                 : ((int64_t)r->acts_B * r->acts_T >= (int64_t)B * T && r->acts_T >= T);
  if (!fits) {
    int aB = B, aT = T;
    if (!r->is_student) {
      if (r->acts_T > aT) aT = r->acts_T;
      if (r->acts_B > aB) aB = r->acts_B;
    }
    free_acts(r);
    xd_teacher_acts_alloc(&r->ta, &r->cfg, aB * aT, aT);
    if (r->is_student) xd_core_acts_alloc(&r->ca, &r->student, aB, aT);
    r->acts_B = aB;
    r->acts_T = aT;
  }
  if (r->is_student) return xd_student_forward(&r->student, &r->ta, &r->ca, ids, B, T, logits, e);
  return xd_teacher_forward(&r->teacher, &r->ta, ids, B, T, logits, NULL, NULL, e);
}

/* ---- incremental decoding ---------------------------------------------------------------- */
void xd_decoder_init(xd_decoder *d, xd_runner *r, int cap, int max_prefill) {
  memset(d, 0, sizeof *d);
  d->r = r;
  d->cap = cap < 1 ? 1 : cap;
  d->max_prefill = max_prefill < 1 ? 1 : max_prefill;
  if (r->is_student) {
    xd_student_state_alloc(&d->st, &r->student);
  } else {
    xd_kv_cache_alloc(&d->kv, &r->cfg, 1, d->cap);
    xd_teacher_acts_alloc(&d->ta, &r->cfg, d->max_prefill, d->cap);
  }
}

void xd_decoder_free(xd_decoder *d) {
  if (!d->r) return;
  if (d->r->is_student) xd_student_state_free(&d->st);
  else {
    xd_kv_cache_free(&d->kv);
    xd_teacher_acts_free(&d->ta);
  }
  d->r = NULL;
}

int xd_decoder_feed(xd_decoder *d, const int32_t *ids, int n, float *logits, xd_err *e) {
  xd_runner *r = d->r;
  if (n < 1) return xd_errf(e, "%s: decoder fed no tokens", r->name);
  if (r->is_student) {
    if (xd_student_step(&r->student, &d->st, ids, n, logits, e)) return -1;
  } else {
    /* the activations hold max_prefill rows: feed longer prompts in pieces */
    for (int off = 0; off < n; off += d->max_prefill) {
      const int m = n - off < d->max_prefill ? n - off : d->max_prefill;
      if (xd_teacher_forward_cached(&r->teacher, &d->ta, &d->kv, ids + off, m, logits, 1, e)) return -1;
    }
  }
  d->len += n;
  return 0;
}

/* ---- generation -------------------------------------------------------------------------- */
void xd_gen_options_default(xd_gen_options *o) {
  memset(o, 0, sizeof *o);
  o->max_new = 64;
  o->stop_at_eos = 1;
  o->sp.temperature = 0;
  o->sp.top_k = 0;
  o->sp.top_p = 1;
  o->seed = 1234;
}

/* Earliest occurrence of any non-empty stop string in text, or NULL. */
static const char *find_stop(const char *text, const char *const *stops, size_t n_stops) {
  const char *best = NULL;
  for (size_t s = 0; s < n_stops; s++) {
    if (!stops[s][0]) continue;
    const char *hit = strstr(text, stops[s]);
    if (hit && (!best || hit < best)) best = hit;
  }
  return best;
}

/* How much of text[0..len) can be streamed now: not a trailing U+FFFD (a multi-byte character
 * whose remaining bytes may come with the next token), not an incomplete UTF-8 tail, and not a
 * tail that may be the start of a stop string. */
size_t xd_stream_safe_len(const char *text, size_t len, const char *const *stops, size_t n_stops) {
  const unsigned char *u = (const unsigned char *)text;
  size_t end = len;
  while (end >= 3 && u[end - 3] == 0xEF && u[end - 2] == 0xBF && u[end - 1] == 0xBD) end -= 3;
  /* incomplete trailing sequence: a lead byte announcing more bytes than are present */
  for (size_t back = 1; back <= 3 && back <= end; back++) {
    const unsigned char c = u[end - back];
    if ((c & 0xC0) == 0x80) continue; /* continuation byte */
    const size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    if (need > back) end -= back;
    break;
  }
  size_t hold = 0;
  for (size_t s = 0; s < n_stops; s++) {
    const size_t L = strlen(stops[s]);
    for (size_t k = L ? L - 1 : 0; k > hold; k--)
      if (k <= end && !memcmp(text + end - k, stops[s], k)) { hold = k; break; }
  }
  return end - hold;
}

int xd_runner_generate(xd_runner *r, const int32_t *prompt, size_t n_prompt, const xd_gen_options *o,
                       int32_t **out_ids, size_t *n_ids, char **out_text, const char **stop_reason, xd_err *e) {
  if (out_ids) *out_ids = NULL;
  if (n_ids) *n_ids = 0;
  if (out_text) *out_text = NULL;
  if (stop_reason) *stop_reason = "length";
  if (n_prompt < 1) return xd_errf(e, "%s: empty prompt", r->name);
  if (n_prompt > (1u << 24) || o->max_new < 0) return xd_errf(e, "%s: prompt of %zu tokens / max_new %d out of range", r->name, n_prompt, o->max_new);
  const int want_text = out_text || o->on_text || o->n_stops;
  if (want_text && !r->tok) return xd_errf(e, "%s: text generation needs a tokenizer", r->name);
  if (xd_sample_params_check(&o->sp, e)) return -1;
  for (size_t i = 0; i < n_prompt; i++)
    if (prompt[i] < 0 || prompt[i] >= r->cfg.vocab) return xd_errf(e, "%s: prompt token id %d out of range [0, %d)", r->name, prompt[i], r->cfg.vocab);
  const int V = r->cfg.vocab;
  int max_new = o->max_new;
  if (o->max_total && n_prompt + (size_t)max_new > o->max_total) max_new = o->max_total > n_prompt ? (int)(o->max_total - n_prompt) : 0;
  xd_decoder d;
  xd_decoder_init(&d, r, (int)n_prompt + max_new, (int)n_prompt);
  xd_sampler smp;
  xd_sampler_init(&smp, V, &o->sp, o->seed);
  float *logits = xd_malloc((size_t)V * sizeof *logits);
  int32_t *gen = xd_malloc(((size_t)max_new + 1) * sizeof *gen);
  size_t ng = 0, emitted = 0;
  char *text = NULL;
  size_t tlen = 0;
  const char *reason = "length";
  int rc = max_new > 0 ? xd_decoder_feed(&d, prompt, (int)n_prompt, logits, e) : 0;
  for (int step = 0; !rc && step < max_new; step++) {
    const int32_t tok = xd_sampler_next(&smp, logits);
    if (o->stop_at_eos && xd_runner_is_eos(r, tok)) { reason = "eos"; break; }
    gen[ng++] = tok;
    if (want_text) {
      /* decode the whole generation (a piece alone may split characters or lose spaces) */
      free(text);
      text = NULL;
      if (xd_tokenizer_decode(r->tok, gen, ng, 1, &text, &tlen, e)) { rc = -1; break; }
      const char *hit = find_stop(text, o->stops, o->n_stops);
      if (hit) {
        tlen = (size_t)(hit - text);
        text[tlen] = 0;
        reason = "stop";
        break;
      }
      const size_t safe = xd_stream_safe_len(text, tlen, o->stops, o->n_stops);
      if (o->on_text && safe > emitted) { o->on_text(text + emitted, safe - emitted, o->user); emitted = safe; }
    }
    if (step + 1 < max_new && xd_decoder_feed(&d, &tok, 1, logits, e)) rc = -1;
  }
  if (!rc && want_text && !text) text = xd_strdup(""), tlen = 0;
  if (!rc && o->on_text && tlen > emitted) o->on_text(text + emitted, tlen - emitted, o->user);
  free(logits);
  xd_sampler_free(&smp);
  xd_decoder_free(&d);
  if (rc) { free(gen); free(text); return -1; }
  if (out_ids) *out_ids = gen;
  else free(gen);
  if (n_ids) *n_ids = ng;
  if (out_text) *out_text = text;
  else free(text);
  if (stop_reason) *stop_reason = reason;
  return 0;
}

/* ---- xd_lm ------------------------------------------------------------------------------- */
static int lm_forward(void *ctx, const int32_t *ids, size_t n, float *logits, xd_err *e) {
  xd_runner *r = ctx;
  if (n > (size_t)1 << 24) return xd_errf(e, "%s: sequence of %zu tokens too long", r->name, n);
  return xd_runner_forward(r, ids, 1, (int)n, logits, e);
}

static int lm_encode(void *ctx, const char *text, size_t len, int32_t **ids, size_t *n, xd_err *e) {
  xd_runner *r = ctx;
  return xd_tokenizer_encode(r->tok, text, len, 0, ids, n, e);
}

static int lm_decode(void *ctx, const int32_t *ids, size_t n, char **text, xd_err *e) {
  xd_runner *r = ctx;
  size_t len;
  return xd_tokenizer_decode(r->tok, ids, n, 1, text, &len, e);
}

/* Greedy generation through the decoder (KV cache / recurrent state) instead of the adaptor's
 * full re-forward per token; same semantics (prompt cut from the left to max_length, stop at
 * EOS, a stop string, max_new, or a full context). */
static int lm_generate(void *ctx, const int32_t *prompt, size_t n_prompt, const char *const *stops, size_t n_stops,
                       int max_new, char **out_text, xd_err *e) {
  xd_logits_model *m = ctx;
  xd_runner *r = m->ctx;
  if (n_prompt == 0) { prompt = &m->prefix_id; n_prompt = 1; }
  if (n_prompt > m->max_length) { prompt += n_prompt - m->max_length; n_prompt = m->max_length; }
  xd_gen_options o;
  xd_gen_options_default(&o);
  o.max_new = max_new > 0 ? max_new : 0;
  o.stops = stops;
  o.n_stops = n_stops;
  o.max_total = m->max_length;
  return xd_runner_generate(r, prompt, n_prompt, &o, NULL, NULL, out_text, NULL, e);
}

int xd_runner_lm(xd_runner *r, xd_lm *lm, size_t batch, xd_err *e) {
  if (!r->tok) return xd_errf(e, "%s: evaluation needs a tokenizer", r->name);
  xd_logits_model *m = &r->lm_src;
  memset(m, 0, sizeof *m);
  m->ctx = r;
  m->forward = lm_forward;
  m->encode = lm_encode;
  m->decode = lm_decode;
  m->vocab = r->cfg.vocab;
  int32_t bos = xd_tokenizer_bos_id(r->tok);
  if (bos < 0) bos = r->cfg.bos_token_id;
  int32_t eos = xd_tokenizer_eos_id(r->tok);
  if (eos < 0 && r->cfg.n_eos > 0) eos = r->cfg.eos_token_ids[0];
  /* lm-eval scores an empty context after BOS, else EOS (prefix_token_id) */
  m->prefix_id = bos >= 0 ? bos : eos >= 0 ? eos : 0;
  m->eos_id = eos;
  m->max_length = r->cfg.max_pos > 1 ? (size_t)r->cfg.max_pos : 2048;
  m->batch_size = batch ? batch : 1;
  m->name = r->name;
  xd_lm_from_logits(lm, m);
  lm->generate_until = lm_generate;
  return 0;
}
