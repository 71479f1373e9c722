/* The optimiser on the GPU: device mirror of an xd_params (params_cuda.h). Compiled only with
 * the CUDA backend; the kernels are in src/ops/cuda/optim.cu. */
#include "core/core.h"
#ifdef XD_HAVE_CUDA
#include "train/params_cuda.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct xd_params_cuda {
  xd_cuda_ctx *c;
  int n, ngroups;
  size_t total, n_train, nblocks;
  size_t *offset, *numel;  /* [n] host copies of the table */
  int *trainable;          /* [n] */
  float *lr_mult, *wd_mult; /* [ngroups] */
  float *data, *grad, *m, *v; /* device */
  uint16_t *bf16;          /* device */
  uint64_t *seg_start;     /* device [nseg + 1] */
  int *seg_group;          /* device [nseg] */
  int *chunk_seg;          /* device [2 nchunks] */
  size_t nseg, nchunks;
  double *block_dev;       /* device [nblocks] */
  double *block_host;      /* host [nblocks] */
  size_t bytes;
  float pend[2];           /* deferred gradient scales, in the order they were asked for */
  int npend;
  unsigned char *first;    /* [n] 1: the gradient is written (not added) by its first producer after zero_grad */
  size_t *zr;              /* [2 nzr] the ranges zero_grad clears when some tensors are first-written */
  int nzr, nfirst;
  int fresh;               /* zero_grad ran and the first-written gradients were not produced yet */
};

static int dalloc(xd_params_cuda *d, void **ptr, size_t bytes, xd_err *e) {
  if (xd_cuda_malloc(ptr, bytes, e) != 0) return -1;
  d->bytes += bytes ? bytes : 1;
  return 0;
}

void xd_params_cuda_free(xd_params_cuda *d) {
  if (!d) return;
  xd_cuda_free(d->data), xd_cuda_free(d->bf16), xd_cuda_free(d->grad), xd_cuda_free(d->m), xd_cuda_free(d->v);
  xd_cuda_free(d->seg_start), xd_cuda_free(d->seg_group), xd_cuda_free(d->chunk_seg), xd_cuda_free(d->block_dev);
  free(d->offset), free(d->trainable), free(d->lr_mult), free(d->wd_mult), free(d->block_host);
  free(d->first), free(d->zr), free(d->numel);
  free(d);
}

/* Segments: maximal runs of trainable elements of one group, in arena order (trainable tensors
 * are laid out first, in table order, contiguously up to the XD_PARAMS_ALIGN padding after each,
 * which joins its tensor's segment: zero there stays zero under AdamW). Chunks: for each CHUNK elements, the
 * segments of its first and last element. */
static int build_tables(xd_params_cuda *d, const xd_params *p, xd_err *e) {
  int nt = 0;
  for (int i = 0; i < p->n; i++) nt += p->t[i].trainable;
  int *ord = xd_malloc((size_t)(nt ? nt : 1) * sizeof *ord);
  for (int i = 0, k = 0; i < p->n; i++)
    if (p->t[i].trainable) ord[k++] = i;
  /* by offset (the layout's order; already sorted, kept robust) */
  for (int a = 1; a < nt; a++)
    for (int b = a; b > 0 && p->t[ord[b - 1]].offset > p->t[ord[b]].offset; b--) {
      int tmp = ord[b];
      ord[b] = ord[b - 1], ord[b - 1] = tmp;
    }
  uint64_t *ss = xd_malloc((size_t)(nt + 1) * sizeof *ss);
  int *sg = xd_malloc((size_t)(nt ? nt : 1) * sizeof *sg);
  size_t ns = 0, expect = 0;
  for (int k = 0; k < nt; k++) {
    const xd_param_info *t = &p->t[ord[k]];
    XD_CHECK(t->offset == expect); /* contiguous trainable prefix (XD_PARAMS_ALIGN padding between tensors) */
    expect = (t->offset + t->numel + XD_PARAMS_ALIGN - 1) / XD_PARAMS_ALIGN * XD_PARAMS_ALIGN;
    if (ns > 0 && sg[ns - 1] == t->group) continue;
    ss[ns] = t->offset, sg[ns] = t->group, ns++;
  }
  XD_CHECK(expect == p->n_train);
  ss[ns] = p->n_train;
  d->nseg = ns;
  d->nchunks = (p->n_train + XD_CUDA_ADAMW_CHUNK - 1) / XD_CUDA_ADAMW_CHUNK;
  int *cs = xd_malloc((d->nchunks ? 2 * d->nchunks : 1) * sizeof *cs);
  size_t s = 0;
  for (size_t ch = 0; ch < d->nchunks; ch++) {
    const size_t first = ch * XD_CUDA_ADAMW_CHUNK;
    size_t last = first + XD_CUDA_ADAMW_CHUNK - 1;
    if (last >= p->n_train) last = p->n_train - 1;
    while (ss[s + 1] <= first) s++;
    size_t s2 = s;
    while (ss[s2 + 1] <= last) s2++;
    cs[2 * ch] = (int)s, cs[2 * ch + 1] = (int)s2;
  }
  int rc = 0;
  if (dalloc(d, (void **)&d->seg_start, (ns + 1) * sizeof *ss, e) || dalloc(d, (void **)&d->seg_group, (ns ? ns : 1) * sizeof *sg, e) ||
      dalloc(d, (void **)&d->chunk_seg, (d->nchunks ? 2 * d->nchunks : 1) * sizeof *cs, e) ||
      xd_cuda_upload(d->c, d->seg_start, ss, (ns + 1) * sizeof *ss, e) ||
      (ns && xd_cuda_upload(d->c, d->seg_group, sg, ns * sizeof *sg, e)) ||
      (d->nchunks && xd_cuda_upload(d->c, d->chunk_seg, cs, 2 * d->nchunks * sizeof *cs, e)) ||
      xd_cuda_sync(d->c, e)) /* the host tables are freed below: pageable uploads are staged, but be plain */
    rc = -1;
  free(ord), free(ss), free(sg), free(cs);
  return rc;
}

int xd_params_cuda_create(xd_params_cuda **out, xd_cuda_ctx *c, const xd_params *p, xd_err *e) {
  *out = NULL;
  if (!p->data) return xd_errf(e, "params_cuda: the parameter table is not allocated");
  if (p->ngroups > XD_CUDA_ADAMW_MAX_GROUPS)
    return xd_errf(e, "params_cuda: %d parameter groups (the GPU optimiser takes at most %d)", p->ngroups,
                   XD_CUDA_ADAMW_MAX_GROUPS);
  xd_params_cuda *d = xd_calloc(1, sizeof *d);
  d->c = c;
  d->n = p->n, d->ngroups = p->ngroups, d->total = p->total, d->n_train = p->n_train, d->nblocks = p->nblocks;
  d->offset = xd_malloc((size_t)(p->n ? p->n : 1) * sizeof *d->offset);
  d->trainable = xd_malloc((size_t)(p->n ? p->n : 1) * sizeof *d->trainable);
  d->first = xd_calloc((size_t)(p->n ? p->n : 1), 1);
  d->numel = xd_malloc((size_t)(p->n ? p->n : 1) * sizeof *d->numel);
  for (int i = 0; i < p->n; i++)
    d->offset[i] = p->t[i].offset, d->numel[i] = p->t[i].numel, d->trainable[i] = p->t[i].trainable;
  d->lr_mult = xd_malloc((size_t)p->ngroups * sizeof(float));
  d->wd_mult = xd_malloc((size_t)p->ngroups * sizeof(float));
  for (int g = 0; g < p->ngroups; g++) d->lr_mult[g] = p->groups[g].lr_mult, d->wd_mult[g] = p->groups[g].wd_mult;
  d->block_host = xd_malloc((d->nblocks ? d->nblocks : 1) * sizeof(double));
  const size_t tb = d->n_train * sizeof(float);
  int rc = dalloc(d, (void **)&d->data, d->total * sizeof(float), e);
  if (rc == 0) rc = dalloc(d, (void **)&d->bf16, d->total * sizeof(uint16_t), e);
  if (rc == 0 && d->n_train) {
    rc = dalloc(d, (void **)&d->grad, tb, e);
    if (rc == 0) rc = dalloc(d, (void **)&d->m, tb, e);
    if (rc == 0) rc = dalloc(d, (void **)&d->v, tb, e);
    if (rc == 0) rc = dalloc(d, (void **)&d->block_dev, d->nblocks * sizeof(double), e);
    if (rc == 0) rc = xd_cuda_memset(c, d->grad, 0, tb, e);
  }
  if (rc == 0) rc = build_tables(d, p, e);
  if (rc == 0) rc = xd_params_cuda_upload(d, p, e);
  if (rc == 0) rc = xd_cuda_sync(c, e);
  if (rc != 0) {
    xd_err_prefix(e, "params_cuda: %.1f MiB of device memory", (double)d->bytes / (1 << 20));
    xd_params_cuda_free(d);
    return -1;
  }
  *out = d;
  return 0;
}

float *xd_params_cuda_data(const xd_params_cuda *d, int idx) {
  XD_CHECK(idx >= 0 && idx < d->n);
  return d->data + d->offset[idx];
}
uint16_t *xd_params_cuda_bf16(const xd_params_cuda *d, int idx) {
  XD_CHECK(idx >= 0 && idx < d->n);
  return d->bf16 + d->offset[idx];
}
float *xd_params_cuda_grad(const xd_params_cuda *d, int idx) {
  XD_CHECK(idx >= 0 && idx < d->n);
  return d->trainable[idx] ? d->grad + d->offset[idx] : NULL;
}
size_t xd_params_cuda_bytes(const xd_params_cuda *d) { return d->bytes; }
xd_cuda_ctx *xd_params_cuda_ctx(const xd_params_cuda *d) { return d->c; }
float *xd_params_cuda_data_all(const xd_params_cuda *d) { return d->data; }
float *xd_params_cuda_grad_all(const xd_params_cuda *d) { return d->grad; }
float *xd_params_cuda_m_all(const xd_params_cuda *d) { return d->m; }
float *xd_params_cuda_v_all(const xd_params_cuda *d) { return d->v; }
uint16_t *xd_params_cuda_bf16_all(const xd_params_cuda *d) { return d->bf16; }

static int same_layout(const xd_params_cuda *d, const xd_params *p, xd_err *e) {
  if (!p->data || p->n != d->n || p->total != d->total || p->n_train != d->n_train)
    return xd_errf(e, "params_cuda: host table (%d tensors, %zu floats, %zu trainable) differs from the device's (%d, %zu, %zu)",
                   p->n, p->total, p->n_train, d->n, d->total, d->n_train);
  return 0;
}

int xd_params_cuda_upload(xd_params_cuda *d, const xd_params *p, xd_err *e) {
  if (same_layout(d, p, e) != 0) return -1;
  const size_t tb = d->n_train * sizeof(float);
  if (xd_cuda_upload(d->c, d->data, p->data, d->total * sizeof(float), e) != 0) return -1;
  if (tb && (xd_cuda_upload(d->c, d->m, p->m, tb, e) != 0 || xd_cuda_upload(d->c, d->v, p->v, tb, e) != 0)) return -1;
  return xd_cuda_bf16_mirror(d->c, d->bf16, d->data, d->total, e);
}

int xd_params_cuda_download(xd_params_cuda *d, xd_params *p, xd_err *e) {
  if (same_layout(d, p, e) != 0) return -1;
  const size_t tb = d->n_train * sizeof(float);
  if (xd_cuda_download(d->c, p->data, d->data, d->total * sizeof(float), e) != 0) return -1;
  if (tb && (xd_cuda_download(d->c, p->m, d->m, tb, e) != 0 || xd_cuda_download(d->c, p->v, d->v, tb, e) != 0)) return -1;
  return 0;
}

/* zr = the ranges of [0, n_train) zero_grad clears: the complement of the first-written tensors'
 * [offset, offset + numel) (their padding included in the cleared part), adjacent ones merged. */
static void build_zero_ranges(xd_params_cuda *d) {
  free(d->zr);
  d->zr = xd_malloc((size_t)(2 * d->n + 2) * sizeof *d->zr);
  d->nzr = 0;
  size_t *cut = xd_malloc((size_t)(2 * d->n + 2) * sizeof *cut); /* [lo, hi) of first-written tensors */
  int nc = 0;
  for (int i = 0; i < d->n; i++)
    if (d->first[i]) cut[2 * nc] = d->offset[i], cut[2 * nc + 1] = d->offset[i] + d->numel[i], nc++;
  for (int a = 1; a < nc; a++) /* by offset */
    for (int b = a; b > 0 && cut[2 * (b - 1)] > cut[2 * b]; b--) {
      size_t t0 = cut[2 * b], t1 = cut[2 * b + 1];
      cut[2 * b] = cut[2 * (b - 1)], cut[2 * b + 1] = cut[2 * (b - 1) + 1];
      cut[2 * (b - 1)] = t0, cut[2 * (b - 1) + 1] = t1;
    }
  size_t pos = 0;
  for (int k = 0; k <= nc; k++) {
    const size_t lo = k < nc ? cut[2 * k] : d->n_train;
    if (lo > pos) d->zr[2 * d->nzr] = pos, d->zr[2 * d->nzr + 1] = lo, d->nzr++;
    if (k < nc && cut[2 * k + 1] > pos) pos = cut[2 * k + 1];
  }
  free(cut);
}

int xd_params_cuda_set_first_write(xd_params_cuda *d, int idx, xd_err *e) {
  XD_CHECK(idx >= 0 && idx < d->n);
  if (!d->trainable[idx]) return xd_errf(e, "params_cuda: first-written gradient of a frozen tensor (%d)", idx);
  if (!d->first[idx]) d->first[idx] = 1, d->nfirst++;
  build_zero_ranges(d);
  d->fresh = 0; /* until the next zero_grad every gradient is a plain sum */
  return 0;
}

/* zero_grad ran but no backward wrote the first-written gradients: clear them now (a reader
 * then sees zeros, as after a full zero_grad). */
static int settle_fresh(xd_params_cuda *d, xd_err *e) {
  if (!d->fresh) return 0;
  for (int i = 0; i < d->n; i++)
    if (d->first[i] && xd_cuda_memset(d->c, d->grad + d->offset[i], 0, d->numel[i] * sizeof(float), e) != 0) return -1;
  d->fresh = 0;
  return 0;
}

int xd_params_cuda_zero_grad(xd_params_cuda *d, xd_err *e) {
  d->npend = 0;
  if (!d->n_train) return 0;
  if (!d->nfirst) return xd_cuda_memset(d->c, d->grad, 0, d->n_train * sizeof(float), e);
  for (int k = 0; k < d->nzr; k++)
    if (xd_cuda_memset(d->c, d->grad + d->zr[2 * k], 0, (d->zr[2 * k + 1] - d->zr[2 * k]) * sizeof(float), e) != 0)
      return -1;
  d->fresh = 1;
  return 0;
}

int xd_params_cuda_grad_fresh(const xd_params_cuda *d) { return d->fresh; }
void xd_params_cuda_grad_written(xd_params_cuda *d) { d->fresh = 0; }

/* The deferred scales, applied to the gradient buffer in order (then none is pending). */
static int flush_scales(xd_params_cuda *d, xd_err *e) {
  for (int i = 0; i < d->npend; i++)
    if (xd_cuda_scale_f32(d->c, d->grad, d->n_train, d->pend[i], e) != 0) return -1;
  d->npend = 0;
  return 0;
}

int xd_params_cuda_scale_grad(xd_params_cuda *d, float s, xd_err *e) {
  if (settle_fresh(d, e) != 0 || flush_scales(d, e) != 0) return -1;
  return xd_cuda_scale_f32(d->c, d->grad, d->n_train, s, e);
}

int xd_params_cuda_scale_grad_deferred(xd_params_cuda *d, float s, xd_err *e) {
  if (d->npend == 2 && flush_scales(d, e) != 0) return -1;
  d->pend[d->npend++] = s;
  return 0;
}

int xd_params_cuda_grad_norm(xd_params_cuda *d, double *norm, xd_err *e) {
  *norm = 0;
  if (!d->n_train) return 0;
  if (settle_fresh(d, e) != 0) return -1;
  if (xd_cuda_sumsq_blocks_scaled(d->c, d->block_dev, d->grad, d->n_train, XD_PARAMS_BLOCK, d->pend, d->npend, e) != 0 ||
      xd_cuda_download(d->c, d->block_host, d->block_dev, d->nblocks * sizeof(double), e) != 0)
    return -1;
  double s = 0; /* in order, as xd_params_grad_norm */
  for (size_t b = 0; b < d->nblocks; b++) s += d->block_host[b];
  *norm = sqrt(s);
  return 0;
}

int xd_params_cuda_adamw_step(xd_params_cuda *d, const xd_adamw_cfg *c, double lr, uint64_t t, xd_err *e) {
  XD_CHECK(t >= 1);
  if (!d->n_train) return 0;
  if (settle_fresh(d, e) != 0) return -1;
  /* the host side of xd_adamw_step, expression for expression */
  const double bc1 = 1.0 - pow(c->beta1, (double)t), bc2 = 1.0 - pow(c->beta2, (double)t);
  const float b1 = (float)c->beta1, b2 = (float)c->beta2, eps = (float)c->eps;
  xd_cuda_adamw_args a;
  memset(&a, 0, sizeof a);
  a.w = d->data, a.g = d->grad, a.m = d->m, a.v = d->v, a.wb = d->bf16;
  a.n = d->n_train, a.nchunks = d->nchunks;
  a.seg_start = d->seg_start, a.seg_group = d->seg_group, a.chunk_seg = d->chunk_seg;
  a.b1 = b1, a.omb1 = 1.0f - b1, a.b2 = b2, a.omb2 = 1.0f - b2, a.eps = eps, a.sbc2 = (float)sqrt(bc2);
  for (int g = 0; g < d->ngroups; g++) {
    a.decay[g] = (float)(1.0 - lr * d->lr_mult[g] * c->weight_decay * d->wd_mult[g]);
    a.step[g] = (float)(lr * d->lr_mult[g] / bc1);
  }
  a.nscale = d->npend; /* the deferred scales, applied as the kernel reads g */
  for (int i = 0; i < d->npend; i++) a.gscale[i] = d->pend[i];
  d->npend = 0;
  return xd_cuda_adamw(d->c, &a, e);
}

/* ---- trainer hooks ------------------------------------------------------------------------ */
static int hk_zero(void *ctx, xd_err *e) { return xd_params_cuda_zero_grad(ctx, e); }
static int hk_scale(void *ctx, float s, xd_err *e) { return xd_params_cuda_scale_grad_deferred(ctx, s, e); }
static int hk_norm(void *ctx, double *norm, xd_err *e) { return xd_params_cuda_grad_norm(ctx, norm, e); }
static int hk_adamw(void *ctx, const xd_adamw_cfg *c, double lr, uint64_t t, xd_err *e) {
  return xd_params_cuda_adamw_step(ctx, c, lr, t, e);
}
static int hk_to_host(void *ctx, xd_params *p, xd_err *e) { return xd_params_cuda_download(ctx, p, e); }
static int hk_from_host(void *ctx, const xd_params *p, xd_err *e) { return xd_params_cuda_upload(ctx, p, e); }

void xd_params_cuda_trainer_device(xd_params_cuda *d, xd_trainer_device *out) {
  memset(out, 0, sizeof *out);
  out->ctx = d;
  out->zero_grad = hk_zero;
  out->scale_grad = hk_scale;
  out->grad_norm = hk_norm;
  out->adamw_step = hk_adamw;
  out->sync_to_host = hk_to_host;
  out->sync_from_host = hk_from_host;
}
#else
typedef int xd_params_cuda_unused; /* ISO C: no empty translation unit */
#endif
