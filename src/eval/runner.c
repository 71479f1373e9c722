/* Teacher / student runner: forward, incremental decoding, generation, xd_lm (see runner.h). */
#include "eval/runner.h"

#include "eval/detok.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#ifdef XD_HAVE_CUDA
#include "model/student/student_cuda.h"
#include "model/teacher/teacher_cuda.h"

/* The model on GPU 0 and its buffers, all kept for the runner's life and grown, never shrunk. */
struct xd_runner_gpu {
  xd_cuda_ctx *ctx;
  xd_teacher_cuda t;            /* teacher (t_up: uploaded) */
  int t_up;
  xd_student_cuda *s;           /* student (its forward buffers grow inside xd_student_cuda_forward) */
  xd_teacher_cuda_state fwd;    /* teacher full forward: fwd_rows rows (B*T), positions < fwd_cap */
  int fwd_rows, fwd_cap;
  xd_teacher_cuda_state dec;    /* teacher decoding (KV cache, B = 1): feeds <= dec_tn, length <= dec_cap */
  int dec_tn, dec_cap;
  xd_student_cuda_state *st;    /* student decoding (constant memory) */
  xd_student_cuda_state *stb;   /* student, batched generation: the last call's count of slots */
  xd_teacher_cuda_state tb;     /* teacher, batched generation (rows at different lengths) */
  int tb_B, tb_tn, tb_cap;
  /* log-likelihood scoring (gpu_score): scored rows / tokens and their results, cap entries */
  int32_t *d_rows, *d_toks, *d_greedy;
  double *d_lp;
  size_t ll_cap;
};

/* The size to hold need: have, or else doubled from max(have, 64) up to need, but not past
 * limit when need fits it (the model's context length bounds what eval asks for). */
static int grow_to(int need, int have, int limit) {
  if (have >= need) return have;
  int64_t n = have > 64 ? have : 64;
  while (n < need) n *= 2;
  if (limit >= need && n > limit) n = limit;
  return n > (int64_t)1 << 30 ? need : (int)n;
}

static size_t gpu_limit(const xd_runner *r) { return r->cfg.max_pos > 1 ? (size_t)r->cfg.max_pos : 2048; }

static void gpu_free(struct xd_runner_gpu *g) {
  if (!g) return;
  xd_teacher_cuda_state_free(&g->fwd);
  xd_teacher_cuda_state_free(&g->dec);
  if (g->st) xd_student_cuda_state_free(g->st);
  if (g->stb) xd_student_cuda_state_free(g->stb);
  xd_teacher_cuda_state_free(&g->tb);
  xd_cuda_free(g->d_rows), xd_cuda_free(g->d_toks), xd_cuda_free(g->d_greedy), xd_cuda_free(g->d_lp);
  if (g->s) xd_student_cuda_free(g->s);
  if (g->t_up) xd_teacher_cuda_free(&g->t);
  if (g->ctx) xd_cuda_ctx_free(g->ctx);
  free(g);
}

/* Load dir on the host, upload it to GPU 0, free the host weights (r->cfg stays). */
static int gpu_load(xd_runner *r, const char *dir, xd_err *e) {
  struct xd_runner_gpu *g = xd_calloc(1, sizeof *g);
  if (xd_cuda_ctx_create(&g->ctx, 0, e)) { /* no device: fail before reading the checkpoint */
    free(g);
    return xd_err_prefix(e, "--device cuda"), -1;
  }
  int rc;
  if (r->is_student) {
    rc = xd_student_load(&r->student, dir, XD_STUDENT_FROZEN, e);
    if (!rc) {
      r->cfg = r->student.cfg;
      if ((rc = xd_student_cuda_upload(&g->s, g->ctx, &r->student, e)) != 0) {
        g->s = NULL;
        xd_err_prefix(e, "--device cuda: %s", dir);
      }
      xd_student_free(&r->student);
      memset(&r->student, 0, sizeof r->student);
    }
    if (!rc) fprintf(stderr, "cuda: student weights %.1f MiB\n", (double)xd_student_cuda_weight_bytes(g->s) / (1 << 20));
  } else {
    rc = xd_teacher_load(&r->teacher, dir, e);
    if (!rc) {
      r->cfg = r->teacher.cfg;
      if ((rc = xd_teacher_cuda_upload(&g->t, g->ctx, &r->teacher, e)) != 0) xd_err_prefix(e, "--device cuda: %s", dir);
      else g->t_up = 1;
      xd_teacher_free(&r->teacher);
      memset(&r->teacher, 0, sizeof r->teacher);
    }
    if (!rc) fprintf(stderr, "cuda: teacher weights %.1f MiB\n", (double)g->t.weight_bytes / (1 << 20));
  }
  if (rc) { gpu_free(g); return -1; }
  r->gpu = g;
  return 0;
}

static int gpu_forward(xd_runner *r, const int32_t *ids, int B, int T, float *logits, xd_err *e) {
  struct xd_runner_gpu *g = r->gpu;
  if (r->is_student) return xd_student_cuda_forward(g->s, ids, B, T, logits, 0, e);
  const int lim = (int)gpu_limit(r);
  if ((int64_t)B * T > (int64_t)1 << 30) return xd_errf(e, "%s: %d x %d tokens too many for one forward", r->name, B, T);
  if (g->fwd_rows < B * T || g->fwd_cap < T) {
    const int cap = grow_to(T, g->fwd_cap, lim), rows0 = grow_to(B * T, g->fwd_rows, lim);
    const int rows = rows0 > cap ? rows0 : cap; /* B = 1 state: its rows are its tokens, cap >= them */
    xd_teacher_cuda_state_free(&g->fwd);
    g->fwd_rows = g->fwd_cap = 0;
    if (xd_teacher_cuda_state_alloc(&g->fwd, &g->t, 1, rows, rows, rows, 0, e))
      return xd_err_prefix(e, "--device cuda"), -1;
    g->fwd_rows = rows;
    g->fwd_cap = rows;
  }
  return xd_teacher_cuda_forward(&g->t, &g->fwd, ids, B, T, logits, e);
}

/* ---- log-likelihoods on the GPU (xd_logits_model.score) ----
 * Requests sorted by input length (longest first, ties in request order) are packed into
 * batches of up to LL_MAX_B sequences padded on the right to the batch's longest (every model
 * here is causal: a position never sees what follows it, so padding changes nothing before it)
 * while the batch's fp32 logits [B*T, V] stay within LL_LOGIT_BYTES and its tokens within
 * LL_MAX_TOKENS (a longer single request runs alone); one forward per batch leaves its logits
 * on the device and xd_cuda_token_logprobs scores the requested rows there: a double and a flag
 * per continuation token come back instead of whole rows of the vocabulary (V floats each).
 * Same maths as the host path (max and first argmax in fp32, log-sum-exp in double); a batch's
 * GEMMs may sum in another order than a single sequence's (fp32 rounding). */
#define LL_MAX_B 64
#define LL_LOGIT_BYTES ((size_t)1 << 30)
#define LL_MAX_TOKENS 16384

typedef struct {
  size_t len, idx;
} ll_key;
static int ll_cmp(const void *a, const void *b) {
  const ll_key *x = a, *y = b;
  if (x->len != y->len) return x->len > y->len ? -1 : 1;
  return x->idx < y->idx ? -1 : x->idx > y->idx;
}

static int ll_reserve(struct xd_runner_gpu *g, size_t n, xd_err *e) {
  if (n <= g->ll_cap) return 0;
  size_t cap = g->ll_cap ? g->ll_cap : 256;
  while (cap < n) cap *= 2;
  xd_cuda_free(g->d_rows), xd_cuda_free(g->d_toks), xd_cuda_free(g->d_greedy), xd_cuda_free(g->d_lp);
  g->d_rows = g->d_toks = g->d_greedy = NULL, g->d_lp = NULL, g->ll_cap = 0;
  if (xd_cuda_malloc((void **)&g->d_rows, cap * 4, e) || xd_cuda_malloc((void **)&g->d_toks, cap * 4, e) ||
      xd_cuda_malloc((void **)&g->d_greedy, cap * 4, e) || xd_cuda_malloc((void **)&g->d_lp, cap * 8, e))
    return -1;
  g->ll_cap = cap;
  return 0;
}

static int gpu_score(void *ctx, const xd_ll_seq *q, size_t n, xd_ll_result *out, xd_err *e) {
  xd_runner *r = ctx;
  struct xd_runner_gpu *g = r->gpu;
  const int V = r->cfg.vocab;
  size_t budget = LL_LOGIT_BYTES / ((size_t)V * sizeof(float));
  if (budget > LL_MAX_TOKENS) budget = LL_MAX_TOKENS; /* the activations grow with B*T too */
  if (budget < 1) budget = 1;
  ll_key *ord = xd_malloc((n ? n : 1) * sizeof *ord);
  for (size_t i = 0; i < n; i++) ord[i].len = q[i].len, ord[i].idx = i;
  qsort(ord, n, sizeof *ord, ll_cmp);
  size_t maxtok = 0, maxids = 0;
  for (size_t i = 0; i < n; i++) maxtok += q[i].n_tok;
  maxids = n ? (ord[0].len * (n < LL_MAX_B ? n : LL_MAX_B)) : 0;
  int32_t *ids = xd_malloc((maxids ? maxids : 1) * sizeof *ids), *rows = xd_malloc((maxtok ? maxtok : 1) * 4);
  int32_t *toks = xd_malloc((maxtok ? maxtok : 1) * 4), *greedy = xd_malloc((maxtok ? maxtok : 1) * 4);
  double *lp = xd_malloc((maxtok ? maxtok : 1) * sizeof *lp);
  int rc = ll_reserve(g, maxtok, e);
  for (size_t i0 = 0; i0 < n && !rc;) {
    const size_t T = ord[i0].len;
    size_t B = 1;
    while (i0 + B < n && B < LL_MAX_B && (B + 1) * T <= budget) B++;
    size_t nt = 0;
    for (size_t b = 0; b < B; b++) {
      const xd_ll_seq *s = &q[ord[i0 + b].idx];
      int32_t *dst = ids + b * T;
      memcpy(dst, s->ids, s->len * sizeof *dst);
      for (size_t t = s->len; t < T; t++) dst[t] = s->ids[s->len - 1]; /* padding: any valid id */
      for (size_t j = 0; j < s->n_tok; j++, nt++) {
        rows[nt] = (int32_t)(b * T + s->pos0 + j);
        toks[nt] = s->toks[j];
      }
    }
    const float *dl = NULL;
    if (r->is_student) {
      rc = xd_student_cuda_forward(g->s, ids, (int)B, (int)T, NULL, 0, e);
      dl = xd_student_cuda_logits(g->s);
    } else {
      rc = gpu_forward(r, ids, (int)B, (int)T, NULL, e);
      dl = g->fwd.logits;
    }
    if (!rc) rc = xd_cuda_upload(g->ctx, g->d_rows, rows, nt * 4, e) || xd_cuda_upload(g->ctx, g->d_toks, toks, nt * 4, e) ||
                  xd_cuda_token_logprobs(g->ctx, g->d_lp, g->d_greedy, dl, V, g->d_rows, g->d_toks, (int)nt, e) ||
                  xd_cuda_download(g->ctx, lp, g->d_lp, nt * sizeof *lp, e) ||
                  xd_cuda_download(g->ctx, greedy, g->d_greedy, nt * 4, e)
             ? -1 : 0;
    for (size_t b = 0, k = 0; b < B && !rc; b++) {
      const xd_ll_seq *s = &q[ord[i0 + b].idx];
      double sum = 0;
      int all = 1;
      for (size_t j = 0; j < s->n_tok; j++, k++) sum += lp[k], all &= greedy[k] != 0;
      out[ord[i0 + b].idx].logprob = sum;
      out[ord[i0 + b].idx].is_greedy = all;
    }
    i0 += B;
  }
  free(ord), free(ids), free(rows), free(toks), free(greedy), free(lp);
  return rc ? xd_err_prefix(e, "--device cuda: scoring"), -1 : 0;
}

/* Ready the shared decoding state for a new sequence of up to cap tokens fed max_prefill at a time. */
static int gpu_decoder_start(xd_decoder *d, xd_err *e) {
  xd_runner *r = d->r;
  struct xd_runner_gpu *g = r->gpu;
  if (r->is_student) {
    if (!g->st && xd_student_cuda_state_alloc(&g->st, g->s, e)) {
      g->st = NULL;
      return xd_err_prefix(e, "--device cuda"), -1;
    }
    return xd_student_cuda_state_reset(g->st, e);
  }
  if (g->dec_tn < d->max_prefill || g->dec_cap < d->cap) {
    const int lim = (int)gpu_limit(r);
    const int tn = grow_to(d->max_prefill, g->dec_tn, lim), cap0 = grow_to(d->cap, g->dec_cap, lim);
    const int cap = cap0 > tn ? cap0 : tn;
    xd_teacher_cuda_state_free(&g->dec);
    g->dec_tn = g->dec_cap = 0;
    if (xd_teacher_cuda_state_alloc(&g->dec, &g->t, 1, tn, cap, 1, 1, e)) return xd_err_prefix(e, "--device cuda"), -1;
    g->dec_tn = tn;
    g->dec_cap = cap;
  }
  xd_teacher_cuda_reset(&g->dec);
  return 0;
}

static int gpu_decoder_feed(xd_decoder *d, const int32_t *ids, int n, float *logits, xd_err *e) {
  struct xd_runner_gpu *g = d->r->gpu;
  if (d->len == 0 && gpu_decoder_start(d, e)) return -1;
  if (d->r->is_student) return xd_student_cuda_step(g->s, g->st, ids, n, logits, e);
  for (int off = 0; off < n; off += g->dec_tn) {
    const int m = n - off < g->dec_tn ? n - off : g->dec_tn;
    if (xd_teacher_cuda_step(&g->t, &g->dec, ids + off, m, 1, logits, e)) return -1;
  }
  return 0;
}
#endif

int xd_runner_load(xd_runner *r, const char *dir, const char *tokenizer, int tok_mode, xd_err *e) {
  return xd_runner_load_on(r, dir, tokenizer, tok_mode, 0, e);
}

int xd_runner_load_on(xd_runner *r, const char *dir, const char *tokenizer, int tok_mode, int cuda, xd_err *e) {
  memset(r, 0, sizeof *r);
  r->is_student = xd_is_student_dir(dir);
  if (cuda) {
#ifdef XD_HAVE_CUDA
    if (gpu_load(r, dir, e)) return -1;
#else
    return xd_errf(e, "--device cuda: built without CUDA (configure with -DXD_CUDA=ON)");
#endif
  } else if (r->is_student) {
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
#ifdef XD_HAVE_CUDA
  if (r->gpu) gpu_free(r->gpu); /* the host weights went with the upload */
  else
#endif
  if (r->name) {
    if (r->is_student) xd_student_free(&r->student);
    else xd_teacher_free(&r->teacher);
  }
  free(r->name);
  memset(r, 0, sizeof *r);
}

size_t xd_runner_decode_state_bytes(const xd_runner *r, size_t n) {
  const size_t kv = (size_t)2 * r->cfg.n_layers * n * r->cfg.n_kv_heads * r->cfg.head_dim; /* K and V elements */
#ifdef XD_HAVE_CUDA
  if (r->gpu) { /* the student's one-sequence state, or the batched one of the last generation */
    const xd_student_cuda_state *st = r->gpu->st ? r->gpu->st : r->gpu->stb;
    return r->is_student ? (st ? xd_student_cuda_state_bytes(st) / (size_t)xd_student_cuda_state_batch(st) : 0) : kv * 2;
  }
#endif
  if (!r->is_student) return kv * sizeof(float);
  xd_student_state st; /* its size, from the shapes */
  xd_student_state_alloc(&st, &r->student);
  const size_t b = xd_student_state_bytes(&st);
  xd_student_state_free(&st);
  return b;
}

int xd_runner_encode_prompt(const xd_runner *r, const char *text, int32_t **ids, size_t *n, xd_err *e) {
  if (!r->tok) return xd_errf(e, "%s: text needs a tokenizer", r->name);
  if (xd_tokenizer_encode(r->tok, text, strlen(text), 1, ids, n, e)) return -1;
  if (*n == 0) {
    free(*ids);
    *ids = xd_malloc(sizeof **ids);
    (*ids)[0] = r->cfg.bos_token_id >= 0 ? r->cfg.bos_token_id : r->cfg.n_eos ? r->cfg.eos_token_ids[0] : 0;
    *n = 1;
  }
  return 0;
}

int xd_runner_is_eos(const xd_runner *r, int32_t id) {
  for (int i = 0; i < r->cfg.n_eos; i++)
    if (r->cfg.eos_token_ids[i] == id) return 1;
  return r->tok && xd_tokenizer_eos_id(r->tok) == id;
}

int xd_runner_forward(xd_runner *r, const int32_t *ids, int B, int T, float *logits, xd_err *e) {
  if (B < 1 || T < 1) return xd_errf(e, "%s: forward needs at least one token", r->name);
#ifdef XD_HAVE_CUDA
  if (r->gpu) return gpu_forward(r, ids, B, T, logits, e);
#endif
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
  if (r->gpu) {
    d->on_gpu = 1; /* the runner's state, readied at the first feed */
  } else if (r->is_student) {
    xd_student_state_alloc(&d->st, &r->student);
  } else {
    xd_kv_cache_alloc(&d->kv, &r->cfg, 1, d->cap);
    xd_teacher_acts_alloc(&d->ta, &r->cfg, d->max_prefill, d->cap);
  }
}

void xd_decoder_free(xd_decoder *d) {
  if (!d->r) return;
  if (d->on_gpu) { /* the state stays with the runner */ }
  else if (d->r->is_student) xd_student_state_free(&d->st);
  else {
    xd_kv_cache_free(&d->kv);
    xd_teacher_acts_free(&d->ta);
  }
  d->r = NULL;
}

int xd_decoder_feed(xd_decoder *d, const int32_t *ids, int n, float *logits, xd_err *e) {
  xd_runner *r = d->r;
  if (n < 1) return xd_errf(e, "%s: decoder fed no tokens", r->name);
  if (d->on_gpu) {
#ifdef XD_HAVE_CUDA
    if (gpu_decoder_feed(d, ids, n, logits, e)) return -1;
#endif
  } else if (r->is_student) {
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

/* ---- batched decoding -------------------------------------------------------------------- */
/* Whether the model decodes rows at their own lengths in one batch: not a GPU teacher with
 * dynamic NTK RoPE (its RoPE tables follow one length for all rows). */
static int rows_batch(const xd_runner *r) {
  const int dyn = r->cfg.rope[0].kind == XD_ROPE_DYNAMIC || r->cfg.rope[1].kind == XD_ROPE_DYNAMIC;
  return !r->gpu || r->is_student || !dyn;
}

struct xd_batch_decoder {
  xd_runner *r;
  int n, cap, V;
  int *len;          /* [n] tokens in the slot's state (GPU: including an idle slot's filler; 0: none) */
  uint8_t *started;  /* [n] started by the caller */
  int32_t *last;     /* [n] the last token fed */
  xd_decoder *dec;   /* CPU: [n] */
  float *logits;     /* CPU: [n, V] each slot's latest; GPU: [V] one row (a sampling fallback) */
  int32_t *ids;      /* GPU: [n] one step's ids */
#ifdef XD_HAVE_CUDA
  /* GPU sampling, allocated at the first: requests, their z and tokens, the rows' top-ranked */
  xd_cuda_sample_req *req, *req_d;
  double *z, *z_d;
  int32_t *tok, *tok_d, *tk_ids, *tk_ids_d;
  float *tk_logp, *tk_logp_d;
  int *m_of;         /* [n] candidates a request needs (0: nothing masked; -1: the whole row) */
#endif
};

#ifdef XD_HAVE_CUDA
/* The GPU runner's batched state for n slots of up to cap tokens: the student's slots, or the
 * teacher's rows (activations for one row's prefill of cap - 1 tokens: B * max_tn rows). Kept
 * in the runner across calls while it fits. */
static int gpu_batch_ready(xd_runner *r, int n, int cap, xd_err *e) {
  struct xd_runner_gpu *g = r->gpu;
  if (r->is_student) {
    if (g->stb && xd_student_cuda_state_batch(g->stb) != n) {
      xd_student_cuda_state_free(g->stb);
      g->stb = NULL;
    }
    return g->stb ? 0 : xd_student_cuda_state_alloc_batch(&g->stb, g->s, n, e);
  }
  const int tn = (cap - 1 + n - 1) / n;
  if (g->tb_B == n && g->tb_tn >= tn && g->tb_cap >= cap) return 0;
  xd_teacher_cuda_state_free(&g->tb);
  g->tb_B = g->tb_tn = g->tb_cap = 0;
  if (xd_teacher_cuda_state_alloc(&g->tb, &g->t, n, tn, cap, n, 1, e)) return -1;
  g->tb_B = n, g->tb_tn = tn, g->tb_cap = cap;
  return 0;
}
/* The slots' latest logits on the device, [n, V]. */
static const float *gpu_logits(const xd_batch_decoder *b) {
  const struct xd_runner_gpu *g = b->r->gpu;
  return b->r->is_student ? xd_student_cuda_state_logits(g->stb) : g->tb.logits;
}
static int gpu_batch_start(xd_runner *r, int k, const int32_t *p, int np, xd_err *e) {
  struct xd_runner_gpu *g = r->gpu;
  return r->is_student ? xd_student_cuda_prefill(g->s, g->stb, k, p, np, NULL, e)
                       : xd_teacher_cuda_prefill_row(&g->t, &g->tb, k, p, np, NULL, e);
}
#endif

int xd_batch_decoder_create(xd_batch_decoder **out, xd_runner *r, int n_slots, int cap, xd_err *e) {
  *out = NULL;
  if (n_slots < 1 || n_slots > 65535) return xd_errf(e, "%s: %d decoding slots (1 to 65535)", r->name, n_slots);
  if (cap < 2 || cap > (1 << 24)) return xd_errf(e, "%s: decoding length %d out of range [2, 2^24]", r->name, cap);
  if (!rows_batch(r))
    return xd_errf(e, "--device cuda: %s: a teacher with dynamic NTK RoPE decodes one length for all rows: no batched decoding", r->name);
  xd_batch_decoder *b = xd_calloc(1, sizeof *b);
  b->r = r, b->n = n_slots, b->cap = cap, b->V = r->cfg.vocab;
  b->len = xd_calloc((size_t)n_slots, sizeof *b->len);
  b->started = xd_calloc((size_t)n_slots, 1);
  b->last = xd_calloc((size_t)n_slots, sizeof *b->last);
  if (r->gpu) {
#ifdef XD_HAVE_CUDA
    b->ids = xd_calloc((size_t)n_slots, sizeof *b->ids);
    if (gpu_batch_ready(r, n_slots, cap, e)) {
      xd_batch_decoder_free(b);
      return xd_err_prefix(e, "--device cuda"), -1;
    }
#endif
  } else {
    b->dec = xd_calloc((size_t)n_slots, sizeof *b->dec);
    b->logits = xd_calloc((size_t)n_slots * b->V, sizeof *b->logits);
  }
  *out = b;
  return 0;
}

void xd_batch_decoder_free(xd_batch_decoder *b) {
  if (!b) return;
#ifdef XD_HAVE_CUDA
  xd_cuda_free(b->req_d), xd_cuda_free(b->z_d), xd_cuda_free(b->tok_d), xd_cuda_free(b->tk_ids_d), xd_cuda_free(b->tk_logp_d);
  free(b->req), free(b->z), free(b->tok), free(b->tk_ids), free(b->tk_logp), free(b->m_of);
#endif
  if (b->dec)
    for (int k = 0; k < b->n; k++) xd_decoder_free(&b->dec[k]);
  free(b->dec), free(b->logits), free(b->ids), free(b->len), free(b->started), free(b->last);
  free(b);
}

int xd_batch_decoder_start(xd_batch_decoder *b, int slot, const int32_t *ids, int n, xd_err *e) {
  xd_runner *r = b->r;
  if (slot < 0 || slot >= b->n) return xd_errf(e, "%s: slot %d of %d", r->name, slot, b->n);
  if (n < 1 || n > b->cap - 1) return xd_errf(e, "%s: a prompt of %d tokens (1 to %d here)", r->name, n, b->cap - 1);
  if (xd_check_token_ids(ids, (size_t)n, r->cfg.vocab, e)) return xd_err_prefix(e, "%s", r->name), -1;
  b->started[slot] = 0;
  b->len[slot] = 0; /* until the prefill has run (a failed one leaves no state) */
  if (r->gpu) {
#ifdef XD_HAVE_CUDA
    if (gpu_batch_start(r, slot, ids, n, e)) return -1;
#endif
  } else {
    xd_decoder_free(&b->dec[slot]); /* a lone decoder per slot: its state, its cache of cap */
    xd_decoder_init(&b->dec[slot], r, b->cap, n);
    if (xd_decoder_feed(&b->dec[slot], ids, n, b->logits + (size_t)slot * b->V, e)) return -1;
  }
  b->len[slot] = n;
  b->last[slot] = ids[n - 1];
  b->started[slot] = 1;
  return 0;
}

int xd_batch_decoder_step(xd_batch_decoder *b, const int32_t *ids, const uint8_t *active, xd_err *e) {
  xd_runner *r = b->r;
  for (int k = 0; k < b->n; k++) {
    if (!b->started[k] || (active && !active[k])) continue;
    if (b->len[k] + 1 > b->cap) return xd_errf(e, "%s: slot %d is full (%d tokens)", r->name, k, b->cap);
    if (ids[k] < 0 || ids[k] >= r->cfg.vocab) return xd_errf(e, "%s: token id %d out of range [0, %d)", r->name, ids[k], r->cfg.vocab);
  }
  if (r->gpu) {
#ifdef XD_HAVE_CUDA
    for (int k = 0; k < b->n; k++) {
      const int on = b->started[k] && (!active || active[k]);
      /* every slot steps: one with no state yet, or an idle teacher row about to fill, first gets
       * a one-token filler (its last token) */
      if (b->len[k] == 0 || (!on && !r->is_student && b->len[k] + 1 > b->cap)) {
        if (gpu_batch_start(r, k, &b->last[k], 1, e)) return -1;
        b->len[k] = 1;
      }
      b->ids[k] = on ? ids[k] : b->last[k];
    }
    struct xd_runner_gpu *g = r->gpu;
    if (r->is_student ? xd_student_cuda_step_batch(g->s, g->stb, b->ids, NULL, e)
                      : xd_teacher_cuda_step_rows(&g->t, &g->tb, b->ids, NULL, e)) return -1;
    for (int k = 0; k < b->n; k++) b->len[k]++, b->last[k] = b->ids[k];
    return 0;
#endif
  }
  for (int k = 0; k < b->n; k++) {
    if (!b->started[k] || (active && !active[k])) continue;
    if (xd_decoder_feed(&b->dec[k], &ids[k], 1, b->logits + (size_t)k * b->V, e)) return -1;
    b->len[k]++;
    b->last[k] = ids[k];
  }
  return 0;
}

int xd_batch_decoder_argmax(xd_batch_decoder *b, int32_t *next, xd_err *e) {
  if (b->r->gpu) {
#ifdef XD_HAVE_CUDA
    struct xd_runner_gpu *g = b->r->gpu;
    if (b->r->is_student) return xd_student_cuda_argmax(g->s, g->stb, next, e);
    if (xd_cuda_argmax_f32(g->ctx, g->tb.next, g->tb.logits, g->tb.B, b->V, e)) return -1;
    return xd_cuda_download(g->ctx, next, g->tb.next, (size_t)g->tb.B * sizeof *next, e);
#endif
  }
  for (int k = 0; k < b->n; k++) next[k] = b->started[k] ? xd_argmax(b->logits + (size_t)k * b->V, b->V) : 0;
  return 0;
}

int xd_batch_decoder_logits(xd_batch_decoder *b, int slot, float *logits, xd_err *e) {
  if (slot < 0 || slot >= b->n) return xd_errf(e, "%s: slot %d of %d", b->r->name, slot, b->n);
  if (b->r->gpu) {
#ifdef XD_HAVE_CUDA
    return xd_cuda_download(b->r->gpu->ctx, logits, gpu_logits(b) + (size_t)slot * b->V, (size_t)b->V * sizeof *logits, e);
#endif
  }
  memcpy(logits, b->logits + (size_t)slot * b->V, (size_t)b->V * sizeof *logits);
  return 0;
}

#ifdef XD_HAVE_CUDA
enum { SAMPLE_TOPP_M = 256 }; /* candidates ranked for a top-p draw (more: the whole row) */

/* The GPU sampling buffers, at the first use. */
static int gpu_sample_alloc(xd_batch_decoder *b, xd_err *e) {
  if (b->tk_logp_d) return 0; /* the last one allocated */
  const int n = b->n, V = b->V;
  b->req = xd_calloc((size_t)n, sizeof *b->req), b->z = xd_calloc((size_t)n, sizeof *b->z);
  b->tok = xd_calloc((size_t)n, sizeof *b->tok), b->m_of = xd_calloc((size_t)n, sizeof *b->m_of);
  b->tk_ids = xd_calloc((size_t)n * XD_CUDA_TOPK_MAX, sizeof *b->tk_ids);
  b->tk_logp = xd_calloc((size_t)n * XD_CUDA_TOPK_MAX, sizeof *b->tk_logp);
  if (!b->logits) b->logits = xd_malloc((size_t)V * sizeof *b->logits);
  if (xd_cuda_malloc((void **)&b->req_d, (size_t)n * sizeof *b->req, e) ||
      xd_cuda_malloc((void **)&b->z_d, (size_t)n * sizeof *b->z, e) ||
      xd_cuda_malloc((void **)&b->tok_d, (size_t)n * sizeof *b->tok, e) ||
      xd_cuda_malloc((void **)&b->tk_ids_d, (size_t)n * XD_CUDA_TOPK_MAX * sizeof *b->tk_ids, e) ||
      xd_cuda_malloc((void **)&b->tk_logp_d, (size_t)n * XD_CUDA_TOPK_MAX * sizeof *b->tk_logp, e))
    return -1;
  return 0;
}

static int gpu_sample(xd_batch_decoder *b, xd_sampler *const *smp, int32_t *next, xd_err *e) {
  struct xd_runner_gpu *g = b->r->gpu;
  const int n = b->n, V = b->V;
  if (gpu_sample_alloc(b, e)) return -1;
  const float *logits = gpu_logits(b);
  int nreq = 0, kmax = 0;
  for (int s = 0; s < n; s++) {
    if (!smp[s] || smp[s]->p.temperature == 0) continue;
    const xd_sample_params *p = &smp[s]->p;
    const int topk = p->top_k > 0 && p->top_k < V;
    const int m = topk ? p->top_k : p->top_p < 1 ? (SAMPLE_TOPP_M < V ? SAMPLE_TOPP_M : V) : 0;
    /* a temperature too small for fp32's 1/T, or a top-k beyond the ranking kernel: the whole row */
    b->m_of[nreq] = m > XD_CUDA_TOPK_MAX || 1.0 / p->temperature > 1e30 ? -1 : m;
    if (m > 0 && m <= XD_CUDA_TOPK_MAX && m > kmax) kmax = m;
    /* nothing masked: the device draws, with the sampler's next uniform (xd_sampler_next takes
     * one for every draw from more than one token) */
    b->req[nreq] = (xd_cuda_sample_req){s, b->m_of[nreq] < 0 ? 1.0f : (float)(1.0 / p->temperature),
                                        b->m_of[nreq] == 0 ? xd_rng_uniform(&smp[s]->rng) : 0.0};
    nreq++;
  }
  if (nreq == 0) return 0;
  if (xd_cuda_upload(g->ctx, b->req_d, b->req, (size_t)nreq * sizeof *b->req, e) ||
      xd_cuda_sample_rows(g->ctx, logits, V, b->req_d, nreq, b->z_d, b->tok_d, e) ||
      (kmax > 0 && xd_cuda_topk_logprobs(g->ctx, logits, XD_CUDA_F32, n, V, kmax, b->tk_ids_d, b->tk_logp_d, NULL, e)) ||
      xd_cuda_download(g->ctx, b->z, b->z_d, (size_t)nreq * sizeof *b->z, e) ||
      xd_cuda_download(g->ctx, b->tok, b->tok_d, (size_t)nreq * sizeof *b->tok, e) ||
      (kmax > 0 && (xd_cuda_download(g->ctx, b->tk_ids, b->tk_ids_d, (size_t)n * kmax * sizeof *b->tk_ids, e) ||
                    xd_cuda_download(g->ctx, b->tk_logp, b->tk_logp_d, (size_t)n * kmax * sizeof *b->tk_logp, e))))
    return -1;
  double d[XD_CUDA_TOPK_MAX];
  for (int r = 0; r < nreq; r++) {
    const int s = b->req[r].row, m = b->m_of[r];
    int32_t tok = m == 0 ? b->tok[r] : -1;
    if (m > 0) { /* logit - max from the log-probs: the same lse on both sides */
      const float *lp = b->tk_logp + (size_t)s * kmax;
      for (int j = 0; j < m; j++) d[j] = (double)lp[j] - (double)lp[0];
      tok = xd_sampler_next_candidates(smp[s], b->tk_ids + (size_t)s * kmax, d, m, b->z[r]);
    }
    if (tok < 0) { /* the candidates cannot decide: the whole row */
      if (xd_batch_decoder_logits(b, s, b->logits, e)) return -1;
      tok = xd_sampler_next(smp[s], b->logits);
    }
    next[s] = tok;
  }
  return 0;
}
#endif

int xd_batch_decoder_sample(xd_batch_decoder *b, xd_sampler *const *smp, int32_t *next, xd_err *e) {
  if (b->r->gpu) {
#ifdef XD_HAVE_CUDA
    return gpu_sample(b, smp, next, e);
#endif
  }
  const int n = b->n;
#pragma omp parallel for schedule(dynamic, 1) if (n > 1)
  for (int s = 0; s < n; s++)
    if (smp[s] && smp[s]->p.temperature > 0 && b->started[s]) next[s] = xd_sampler_next(smp[s], b->logits + (size_t)s * b->V);
  return 0;
}

/* lp / top of one host row: eval's log-softmax (xd_logits_log_z), the sampler's ranking. */
static void row_logprobs(const float *row, int V, int k, int32_t tok, float *lp, int32_t *top_ids, float *top_lp,
                         int *scratch) {
  float mx;
  const double lz = xd_logits_log_z(row, V, &mx, NULL);
  *lp = (float)((double)row[tok] - (double)mx - lz);
  if (k > 0) {
    xd_logits_top(row, V, k, scratch);
    for (int j = 0; j < k; j++) top_ids[j] = scratch[j], top_lp[j] = (float)((double)row[scratch[j]] - (double)mx - lz);
  }
}

int xd_batch_decoder_logprobs(xd_batch_decoder *b, const int *k, int kmax, const int32_t *tok, float *lp,
                              int32_t *top_ids, float *top_lp, xd_err *e) {
  const int n = b->n, V = b->V;
  if (kmax < 0 || kmax > 1024 || kmax > V) return xd_errf(e, "%s: %d log-probabilities a token (0 to 1024)", b->r->name, kmax);
  int any = 0;
  for (int s = 0; s < n; s++) any |= k[s] >= 0;
  if (!any) return 0;
  int rc = 0;
  if (b->r->gpu) {
#ifdef XD_HAVE_CUDA
    struct xd_runner_gpu *g = b->r->gpu;
    const float *logits = gpu_logits(b);
    /* the chosen tokens' on the device (a log-sum-exp per row); the alternatives, if any, from
     * the rows' ranking: k[s] values and ids a row to the host, never the row itself */
    rc = gpu_sample_alloc(b, e);
    int nr = 0;
    for (int s = 0; s < n && !rc; s++)
      if (k[s] >= 0) b->req[nr].row = s, b->tok[nr] = tok[s], nr++;
    int32_t *rows = b->tk_ids, *rows_d = b->tk_ids_d; /* scratch: [nr] rows, then [nr] tokens */
    for (int r = 0; r < nr; r++) rows[r] = b->req[r].row, rows[nr + r] = b->tok[r];
    if (!rc) rc = xd_cuda_upload(g->ctx, rows_d, rows, (size_t)2 * nr * sizeof *rows, e);
    /* eval's scoring kernel: log softmax(row)[tok] in double (and a greedy flag, unused here) */
    if (!rc) rc = xd_cuda_token_logprobs(g->ctx, b->z_d, b->tok_d, logits, V, rows_d, rows_d + nr, nr, e);
    if (!rc) rc = xd_cuda_download(g->ctx, b->z, b->z_d, (size_t)nr * sizeof *b->z, e);
    for (int r = 0; r < nr && !rc; r++) lp[b->req[r].row] = (float)b->z[r];
    int ku = 0; /* the most alternatives a slot asks for: the ranking's k and the rows' stride */
    for (int s = 0; s < n; s++) ku = k[s] > ku ? k[s] : ku;
    if (!rc && ku > 0) {
      rc = xd_cuda_topk_logprobs(g->ctx, logits, XD_CUDA_F32, n, V, ku, b->tk_ids_d, b->tk_logp_d, NULL, e);
      if (!rc) rc = xd_cuda_download(g->ctx, b->tk_ids, b->tk_ids_d, (size_t)n * ku * sizeof *b->tk_ids, e);
      if (!rc) rc = xd_cuda_download(g->ctx, b->tk_logp, b->tk_logp_d, (size_t)n * ku * sizeof *b->tk_logp, e);
      for (int s = 0; s < n && !rc; s++)
        for (int j = 0; j < k[s]; j++)
          top_ids[(size_t)s * kmax + j] = b->tk_ids[(size_t)s * ku + j],
          top_lp[(size_t)s * kmax + j] = b->tk_logp[(size_t)s * ku + j];
    }
#endif
  } else {
    int *scratch = xd_malloc(((size_t)kmax + 1) * sizeof *scratch);
    for (int s = 0; s < n; s++)
      if (k[s] >= 0 && b->started[s])
        row_logprobs(b->logits + (size_t)s * V, V, k[s], tok[s], &lp[s], top_ids + (size_t)s * kmax,
                     top_lp + (size_t)s * kmax, scratch);
    free(scratch);
  }
  return rc;
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
  /* on the GPU a one-slot batched decoder: the argmax or the draw on the device, 4 bytes a token
   * to the host instead of the logits row (and the host's pass over it); a dynamic-NTK teacher,
   * whose rows follow one length, keeps the decoder and the host sampler; so does
   * XD_GEN_HOST_SAMPLE=1 (the path before, kept for comparisons: docs/perf.md) */
  const char *hs = getenv("XD_GEN_HOST_SAMPLE");
  xd_batch_decoder *bd = NULL;
  if (r->gpu && rows_batch(r) && max_new > 0 && !(hs && !strcmp(hs, "1")) &&
      xd_batch_decoder_create(&bd, r, 1, (int)n_prompt + max_new + 1, e))
    return -1;
  xd_decoder d;
  xd_decoder_init(&d, r, (int)n_prompt + max_new, (int)n_prompt);
  xd_sampler smp;
  xd_sampler_init(&smp, V, &o->sp, o->seed);
  xd_sampler *smpp = &smp;
  float *logits = bd ? NULL : xd_malloc((size_t)V * sizeof *logits);
  int32_t *gen = xd_malloc(((size_t)max_new + 1) * sizeof *gen);
  size_t ng = 0;
  xd_detok dt;
  if (want_text) xd_detok_init(&dt, r->tok, o->stops, o->n_stops);
  const char *reason = "length", *piece;
  size_t n_piece;
  int rc = max_new <= 0 ? 0 : bd ? xd_batch_decoder_start(bd, 0, prompt, (int)n_prompt, e)
                                 : xd_decoder_feed(&d, prompt, (int)n_prompt, logits, e);
  for (int step = 0; !rc && step < max_new; step++) {
    int32_t tok;
    if (!bd) tok = xd_sampler_next(&smp, logits);
    else if ((o->sp.temperature == 0 ? xd_batch_decoder_argmax(bd, &tok, e) : xd_batch_decoder_sample(bd, &smpp, &tok, e))) {
      rc = -1;
      break;
    }
    if (o->stop_at_eos && xd_runner_is_eos(r, tok)) { reason = "eos"; break; }
    gen[ng++] = tok;
    if (want_text) {
      const int st = xd_detok_push(&dt, tok, &piece, &n_piece, e);
      if (st < 0) { rc = -1; break; }
      if (o->on_text && n_piece) o->on_text(piece, n_piece, o->user);
      if (st == 1) { reason = "stop"; break; }
    }
    if (step + 1 < max_new && (bd ? xd_batch_decoder_step(bd, &tok, NULL, e) : xd_decoder_feed(&d, &tok, 1, logits, e))) rc = -1;
  }
  char *text = NULL;
  if (want_text) {
    if (!rc) {
      xd_detok_finish(&dt, &piece, &n_piece);
      if (o->on_text && n_piece) o->on_text(piece, n_piece, o->user);
      text = dt.text; /* handed over */
      dt.text = NULL;
    }
    xd_detok_free(&dt);
  }
  free(logits);
  xd_sampler_free(&smp);
  xd_decoder_free(&d);
  xd_batch_decoder_free(bd);
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

/* An evaluation prompt as the model takes it: an empty one is the prefix token, a long one is
 * cut from the left to max_length. */
static void lm_prompt(const xd_logits_model *m, const int32_t **prompt, size_t *n_prompt) {
  if (*n_prompt == 0) *prompt = &m->prefix_id, *n_prompt = 1;
  if (*n_prompt > m->max_length) *prompt += *n_prompt - m->max_length, *n_prompt = m->max_length;
}

/* Greedy generation through the decoder (KV cache / recurrent state) instead of the adaptor's
 * full re-forward per token; same semantics (prompt cut from the left to max_length, stop at
 * EOS, a stop string, max_new, or a full context). */
static int lm_generate(void *ctx, const int32_t *prompt, size_t n_prompt, const char *const *stops, size_t n_stops,
                       int max_new, char **out_text, xd_err *e) {
  xd_logits_model *m = ctx;
  xd_runner *r = m->ctx;
  lm_prompt(m, &prompt, &n_prompt);
  xd_gen_options o;
  xd_gen_options_default(&o);
  o.max_new = max_new > 0 ? max_new : 0;
  o.stops = stops;
  o.n_stops = n_stops;
  o.max_total = m->max_length;
  return xd_runner_generate(r, prompt, n_prompt, &o, NULL, NULL, out_text, NULL, e);
}

/* generate_until_batch for a GPU model: the n prompts decoded together in a batched decoder
 * (each prefilled alone, then one step for all), greedy; per request lm_generate's semantics
 * (prompt cut to max_length, stop at EOS, a stop string, max_new or a full context), each with
 * its own streaming detokenizer. */
static int lm_generate_batch(void *ctx, const int32_t *const *prompts, const size_t *n_prompts, size_t n,
                             const char *const *stops, size_t n_stops, int max_new, char **out_texts, xd_err *e) {
  xd_logits_model *m = ctx;
  xd_runner *r = m->ctx;
  for (size_t k = 0; k < n; k++) out_texts[k] = NULL;
  if (n == 0) return 0;
  if (n > 65535) return xd_errf(e, "%s: %zu requests in one generation batch (at most 65535)", r->name, n);
  size_t max_np = 1;
  for (size_t k = 0; k < n; k++) {
    const int32_t *p = prompts[k];
    size_t np = n_prompts[k];
    lm_prompt(m, &p, &np);
    max_np = np > max_np ? np : max_np;
  }
  if (max_np > (1u << 24)) return xd_errf(e, "%s: a prompt of %zu tokens", r->name, max_np);
  xd_batch_decoder *bd;
  xd_err ignored = {0};
  if (xd_batch_decoder_create(&bd, r, (int)n, (int)max_np + (max_new > 0 ? max_new : 0) + 1, &ignored)) {
    /* the batch's state does not fit (long prompts: the teacher's cache is n rows of them): one
     * request at a time, as without the batch callback */
    for (size_t k = 0; k < n; k++)
      if (lm_generate(ctx, prompts[k], n_prompts[k], stops, n_stops, max_new, &out_texts[k], e)) {
        for (size_t j = 0; j <= k; j++) free(out_texts[j]), out_texts[j] = NULL;
        return -1;
      }
    return 0;
  }
  xd_detok *dt = xd_calloc(n, sizeof *dt);
  int *left = xd_calloc(n, sizeof *left), live = 0, rc = 0;
  int32_t *next = xd_calloc(n, sizeof *next);
  uint8_t *active = xd_calloc(n, 1);
  for (size_t k = 0; k < n; k++) {
    const int32_t *p = prompts[k];
    size_t np = n_prompts[k];
    lm_prompt(m, &p, &np);
    const size_t room = m->max_length - np; /* o.max_total: the context's room */
    left[k] = max_new <= 0 ? 0 : (size_t)max_new < room ? max_new : (int)room;
    xd_detok_init(&dt[k], r->tok, stops, n_stops);
    live += left[k] > 0;
    if (!rc && left[k] > 0) rc = xd_batch_decoder_start(bd, (int)k, p, (int)np, e);
  }
  while (!rc && live > 0) {
    if (xd_batch_decoder_argmax(bd, next, e)) { rc = -1; break; }
    for (size_t k = 0; k < n && !rc; k++) {
      active[k] = 0;
      if (left[k] <= 0) continue;
      const int32_t tok = next[k];
      int stop = xd_runner_is_eos(r, tok);
      if (!stop) {
        const char *piece;
        size_t n_piece;
        const int st = xd_detok_push(&dt[k], tok, &piece, &n_piece, e);
        if (st < 0) rc = -1;
        stop = st == 1;
        left[k]--;
      }
      if (stop) left[k] = 0;
      if (left[k] == 0) live--;
      active[k] = left[k] > 0;
    }
    if (!rc && live > 0 && xd_batch_decoder_step(bd, next, active, e)) rc = -1;
  }
  for (size_t k = 0; k < n; k++) {
    if (!rc) {
      const char *piece;
      size_t n_piece;
      xd_detok_finish(&dt[k], &piece, &n_piece);
      out_texts[k] = dt[k].text; /* handed over */
      dt[k].text = NULL;
    }
    xd_detok_free(&dt[k]);
  }
  xd_batch_decoder_free(bd);
  free(dt), free(left), free(next), free(active);
  return rc;
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
#ifdef XD_HAVE_CUDA
  /* scored on the device, batched; XD_EVAL_HOST_SCORE=1: whole logits rows to the host, one
   * request per forward (the path before; kept for comparisons, docs/perf.md) */
  const char *hs = getenv("XD_EVAL_HOST_SCORE");
  if (r->gpu && !(hs && strcmp(hs, "1") == 0)) m->score = gpu_score;
#endif
  xd_lm_from_logits(lm, m);
  lm->generate_until = lm_generate;
  /* on the GPU a task's generation requests are decoded batch_size at a time (a teacher with
   * dynamic NTK RoPE, whose rows cannot be at different lengths, one at a time); on the CPU one
   * at a time (a batch would give the same results, no sooner). XD_EVAL_GEN_BATCH=0: one at a
   * time (comparisons); =1: batched on the CPU too (tests: the batched path, exact there). */
  const char *gb = getenv("XD_EVAL_GEN_BATCH");
  const int batched = gb && *gb ? strcmp(gb, "0") != 0 : r->gpu != NULL;
  if (batched && rows_batch(r)) lm->generate_until_batch = lm_generate_batch;
  return 0;
}
