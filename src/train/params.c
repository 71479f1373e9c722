#include "train/params.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void xd_params_init(xd_params *p) {
  memset(p, 0, sizeof *p);
  xd_params_add_group(p, "default", 1.0f, 1.0f);
}

void xd_params_free(xd_params *p) {
  for (int i = 0; i < p->n; i++) free(p->t[i].name);
  for (int i = 0; i < p->ngroups; i++) free(p->groups[i].name);
  free(p->t);
  free(p->groups);
  free(p->data);
  free(p->grad);
  free(p->m);
  free(p->v);
  free(p->block_scratch);
  memset(p, 0, sizeof *p);
}

int xd_params_add_group(xd_params *p, const char *name, float lr_mult, float wd_mult) {
  p->groups = xd_realloc(p->groups, (size_t)(p->ngroups + 1) * sizeof *p->groups);
  p->groups[p->ngroups] = (xd_param_group){xd_strdup(name), lr_mult, wd_mult};
  return p->ngroups++;
}

int xd_params_add(xd_params *p, const char *name, int ndim, const int64_t *shape, int group,
                  int trainable, xd_err *e) {
  if (p->data) return xd_errf(e, "parameter '%s': table already allocated", name);
  if (ndim < 0 || ndim > XD_PARAMS_MAX_DIMS) return xd_errf(e, "parameter '%s': %d dimensions (max %d)", name, ndim, XD_PARAMS_MAX_DIMS);
  if (group < 0 || group >= p->ngroups) return xd_errf(e, "parameter '%s': unknown group %d", name, group);
  if (!name[0] || strlen(name) > 1000) return xd_errf(e, "parameter name '%.40s' empty or too long", name);
  if (xd_params_find(p, name) >= 0) return xd_errf(e, "parameter '%s' added twice", name);
  size_t numel = 1;
  for (int d = 0; d < ndim; d++)
    if (shape[d] <= 0 || xd_mul_size(numel, (size_t)shape[d], &numel) != 0)
      return xd_errf(e, "parameter '%s': bad dimension %lld", name, (long long)shape[d]);
  if (p->n == p->cap) {
    p->cap = p->cap ? 2 * p->cap : 16;
    p->t = xd_realloc(p->t, (size_t)p->cap * sizeof *p->t);
  }
  xd_param_info *t = &p->t[p->n];
  memset(t, 0, sizeof *t);
  t->name = xd_strdup(name);
  t->ndim = ndim;
  for (int d = 0; d < ndim; d++) t->shape[d] = shape[d];
  t->numel = numel;
  t->group = group;
  t->trainable = trainable != 0;
  return p->n++;
}

void xd_params_alloc(xd_params *p) {
  XD_CHECK(!p->data);
  size_t off = 0;
  p->n_train = 0;
  for (int pass = 1; pass >= 0; pass--) { /* trainable first, then frozen */
    for (int i = 0; i < p->n; i++)
      if (p->t[i].trainable == pass) {
        p->t[i].offset = off;
        XD_CHECK(xd_add_size(off, p->t[i].numel, &off) == 0);
        off = (off + XD_PARAMS_ALIGN - 1) / XD_PARAMS_ALIGN * XD_PARAMS_ALIGN;
      }
    if (pass == 1) p->n_train = off; /* the trainable prefix, padding included */
  }
  p->total = off;
  size_t bytes;
  XD_CHECK(xd_mul_size(p->total, sizeof(float), &bytes) == 0);
  p->data = xd_aligned_alloc(bytes);
  memset(p->data, 0, bytes);
  if (p->n_train) {
    size_t tb = p->n_train * sizeof(float);
    p->grad = xd_aligned_alloc(tb);
    p->m = xd_aligned_alloc(tb);
    p->v = xd_aligned_alloc(tb);
    memset(p->grad, 0, tb);
    memset(p->m, 0, tb);
    memset(p->v, 0, tb);
  }
  p->nblocks = (p->n_train + XD_PARAMS_BLOCK - 1) / XD_PARAMS_BLOCK;
  p->block_scratch = xd_calloc(p->nblocks ? p->nblocks : 1, sizeof(double));
}

int xd_params_find(const xd_params *p, const char *name) {
  for (int i = 0; i < p->n; i++)
    if (!strcmp(p->t[i].name, name)) return i;
  return -1;
}

float *xd_params_data(const xd_params *p, int idx) {
  XD_CHECK(p->data && idx >= 0 && idx < p->n);
  return p->data + p->t[idx].offset;
}

float *xd_params_grad(const xd_params *p, int idx) {
  XD_CHECK(p->data && idx >= 0 && idx < p->n);
  return p->t[idx].trainable ? p->grad + p->t[idx].offset : NULL;
}

void xd_params_zero_grad(xd_params *p) {
  if (p->grad) memset(p->grad, 0, p->n_train * sizeof(float));
}

void xd_params_scale_grad(xd_params *p, float s) {
  float *g = p->grad;
  const long n = (long)p->n_train;
#pragma omp parallel for schedule(static) if (n > 4 * XD_PARAMS_BLOCK)
  for (long i = 0; i < n; i++) g[i] *= s;
}

double xd_params_grad_norm(xd_params *p) {
  const float *g = p->grad;
  const long nb = (long)p->nblocks;
  const size_t n = p->n_train;
  double *bs = p->block_scratch;
  /* Each block is summed sequentially by one thread; which thread does not matter. */
#pragma omp parallel for schedule(static) if (nb > 4)
  for (long b = 0; b < nb; b++) {
    size_t lo = (size_t)b * XD_PARAMS_BLOCK, hi = lo + XD_PARAMS_BLOCK < n ? lo + XD_PARAMS_BLOCK : n;
    double s = 0;
    for (size_t i = lo; i < hi; i++) s += (double)g[i] * (double)g[i];
    bs[b] = s;
  }
  double s = 0;
  for (long b = 0; b < nb; b++) s += bs[b];
  return sqrt(s);
}

int xd_params_data_finite(const xd_params *p) {
  for (size_t i = 0; i < p->total; i++)
    if (!isfinite(p->data[i])) return 0;
  return 1;
}
