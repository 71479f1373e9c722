/* Stage II's online teacher on its own stream (teacher_topk_cuda.h). */
#include "distill/teacher_topk_cuda.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

int xd_stage2_head_rows(void) {
  const char *s = getenv("XD_HEAD_ROWS");
  if (!s || !*s) return XD_HEAD_ROWS_DEFAULT;
  char *end = NULL;
  errno = 0;
  const long v = strtol(s, &end, 10);
  if (errno || *end || v < 0 || v > (1L << 30)) {
    fprintf(stderr, "xdistill: XD_HEAD_ROWS='%s' is not a row count (0 = all rows); using %d\n", s, XD_HEAD_ROWS_DEFAULT);
    return XD_HEAD_ROWS_DEFAULT;
  }
  return (int)v;
}

#ifdef XD_HAVE_CUDA
#include "model/teacher/teacher_cuda.h"

typedef struct {
  int32_t *ids, *bad_row; /* [N,k], [n_blocks]: each row block's lowest non-finite row or -1 */
  float *logp;            /* [N,k] */
  xd_cuda_event *done;    /* recorded behind the slot's top-k */
} topk_slot;

struct xd_teacher_topk_cuda {
  xd_cuda_ctx *cx;   /* owned: the teacher's stream (lowest priority) */
  xd_cuda_ctx *copy; /* owned, made by the first _fetch: downloads that wait for one slot only */
  xd_teacher_cuda t;
  xd_teacher_cuda_state ts;
  int have_t, have_ts;
  int B, T, k, V;
  int rows, n_blocks; /* the LM head in row blocks of `rows` (the last may be shorter) */
  int32_t *bad_host;  /* [n_blocks]: the slot's bad_row on the host */
  topk_slot slot[2];
};

void xd_teacher_topk_cuda_free(xd_teacher_topk_cuda *p) {
  if (!p) return;
  if (p->cx) {
    xd_err e;
    (void)xd_cuda_sync(p->cx, &e); /* a submitted batch may still be running */
  }
  for (int i = 0; i < 2; i++) {
    xd_cuda_free(p->slot[i].ids);
    xd_cuda_free(p->slot[i].bad_row);
    xd_cuda_free(p->slot[i].logp);
    xd_cuda_event_free(p->slot[i].done);
  }
  if (p->have_ts) xd_teacher_cuda_state_free(&p->ts);
  if (p->have_t) xd_teacher_cuda_free(&p->t);
  if (p->copy) xd_cuda_ctx_free(p->copy);
  if (p->cx) xd_cuda_ctx_free(p->cx);
  free(p->bad_host);
  free(p);
}

int xd_teacher_topk_cuda_create(xd_teacher_topk_cuda **out, const xd_teacher *t, int B, int T, int k, int head_rows,
                                xd_err *e) {
  *out = NULL;
  if (k < 1 || k > XD_CUDA_TOPK_MAX) return xd_errf(e, "GPU teacher top-k: k %d outside [1, %d]", k, XD_CUDA_TOPK_MAX);
  xd_teacher_topk_cuda *p = xd_calloc(1, sizeof *p);
  p->B = B, p->T = T, p->k = k, p->V = t->cfg.vocab;
  const size_t N = (size_t)B * T, nk = N * (size_t)k;
  p->rows = head_rows > 0 && (size_t)head_rows < N ? head_rows : (int)N;
  p->n_blocks = (int)((N + p->rows - 1) / p->rows);
  p->bad_host = xd_malloc((size_t)p->n_blocks * sizeof *p->bad_host);
  int rc = xd_cuda_ctx_create(&p->cx, 0, e); /* the lowest stream priority */
  if (rc == 0) rc = xd_teacher_cuda_upload(&p->t, p->cx, t, e);
  if (rc == 0) p->have_t = 1;
  if (rc == 0) rc = xd_teacher_cuda_state_alloc(&p->ts, &p->t, B, T, T, p->rows, 0, e);
  if (rc == 0) p->have_ts = 1;
  for (int i = 0; i < 2 && rc == 0; i++) {
    topk_slot *s = &p->slot[i];
    rc = xd_cuda_malloc((void **)&s->ids, nk * 4, e) || xd_cuda_malloc((void **)&s->logp, nk * 4, e) ||
         xd_cuda_malloc((void **)&s->bad_row, (size_t)p->n_blocks * 4, e) || xd_cuda_event_create(&s->done, e);
  }
  if (rc != 0) {
    xd_teacher_topk_cuda_free(p);
    return -1;
  }
  *out = p;
  return 0;
}

int xd_teacher_topk_cuda_submit(xd_teacher_topk_cuda *p, int slot, const int32_t *inputs, xd_err *e) {
  topk_slot *s = &p->slot[slot & 1];
  const int N = p->B * p->T;
  if (xd_teacher_cuda_forward_hidden_async(&p->t, &p->ts, inputs, p->B, p->T, e) != 0) return -1;
  for (int b = 0; b < p->n_blocks; b++) { /* logits of a row block, its top-k rows */
    const int r0 = b * p->rows, n = N - r0 < p->rows ? N - r0 : p->rows;
    const size_t o = (size_t)r0 * p->k;
    if (xd_teacher_cuda_head_rows(&p->t, &p->ts, r0, n, e) != 0 ||
        xd_cuda_topk_logprobs(p->cx, p->ts.logits, XD_CUDA_F32, n, p->V, p->k, s->ids + o, s->logp + o, s->bad_row + b, e) != 0)
      return -1;
  }
  return xd_cuda_event_record(p->cx, s->done, e);
}

int xd_teacher_topk_cuda_wait(xd_teacher_topk_cuda *p, int slot, xd_cuda_ctx *consumer, xd_err *e) {
  return xd_cuda_wait_event(consumer, p->slot[slot & 1].done, e);
}

/* The first non-finite row among the blocks' flags in p->bad_host, as an error. */
static int bad_rows_error(const xd_teacher_topk_cuda *p, xd_err *e) {
  for (int b = 0; b < p->n_blocks; b++)
    if (p->bad_host[b] >= 0)
      return xd_errf(e, "teacher logits of batch row %lld are not finite (GPU teacher forward)",
                     (long long)b * p->rows + p->bad_host[b]);
  return 0;
}

int xd_teacher_topk_cuda_check(xd_teacher_topk_cuda *p, int slot, xd_err *e) {
  if (xd_cuda_download(p->cx, p->bad_host, p->slot[slot & 1].bad_row, (size_t)p->n_blocks * 4, e) != 0) return -1;
  return bad_rows_error(p, e);
}

int xd_teacher_topk_cuda_fetch(xd_teacher_topk_cuda *p, int slot, int32_t *ids, float *logp, xd_err *e) {
  const topk_slot *s = &p->slot[slot & 1];
  const size_t nk = (size_t)p->B * p->T * p->k;
  if (!p->copy && xd_cuda_ctx_create(&p->copy, 0, e) != 0) return -1;
  /* the copy stream waits for this slot's event, not for what was queued on the teacher's
   * stream after it (the next batch), so the next batch computes while this one is written */
  if (xd_cuda_wait_event(p->copy, s->done, e) != 0 ||
      xd_cuda_download(p->copy, p->bad_host, s->bad_row, (size_t)p->n_blocks * 4, e) != 0 || bad_rows_error(p, e) != 0)
    return -1;
  return xd_cuda_download(p->copy, ids, s->ids, nk * 4, e) || xd_cuda_download(p->copy, logp, s->logp, nk * 4, e) ? -1 : 0;
}

const int32_t *xd_teacher_topk_cuda_ids(const xd_teacher_topk_cuda *p, int slot) { return p->slot[slot & 1].ids; }
const float *xd_teacher_topk_cuda_logp(const xd_teacher_topk_cuda *p, int slot) { return p->slot[slot & 1].logp; }

size_t xd_teacher_topk_cuda_bytes(const xd_teacher_topk_cuda *p) {
  return p->t.weight_bytes + p->ts.act_bytes + 2 * ((size_t)p->B * p->T * p->k * 8 + (size_t)p->n_blocks * 4);
}
#else
/* Without CUDA: what callers outside the CUDA-only code (teacher-cache) link against. */
int xd_teacher_topk_cuda_create(xd_teacher_topk_cuda **out, const xd_teacher *t, int B, int T, int k, int head_rows,
                                xd_err *e) {
  (void)t, (void)B, (void)T, (void)k, (void)head_rows;
  *out = NULL;
  return xd_errf(e, "built without CUDA (configure with -DXD_CUDA=ON)");
}
void xd_teacher_topk_cuda_free(xd_teacher_topk_cuda *p) { (void)p; }
int xd_teacher_topk_cuda_submit(xd_teacher_topk_cuda *p, int slot, const int32_t *inputs, xd_err *e) {
  (void)p, (void)slot, (void)inputs;
  return xd_errf(e, "built without CUDA");
}
int xd_teacher_topk_cuda_fetch(xd_teacher_topk_cuda *p, int slot, int32_t *ids, float *logp, xd_err *e) {
  (void)p, (void)slot, (void)ids, (void)logp;
  return xd_errf(e, "built without CUDA");
}
#endif
