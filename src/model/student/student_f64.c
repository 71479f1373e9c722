/* The float64 twin of a student (student.h, xd_student_f64): a double copy of every tensor with
 * a gradient for each, wired into the same struct views as the fp32 student so the float64
 * instantiations of the core and of the training forward/backward run over it. Test support:
 * the finite-difference check of the whole student (tests/test_student_backward_f64.c). */
#include <stdlib.h>
#include <string.h>

#include "model/student/student.h"

/* Index of the params tensor whose fp32 data w is (tensors are found by address, so the wiring
 * follows the fp32 student's own table, tied embeddings included); -1 for an absent tensor. */
static int tensor_of(const xd_params *p, const float *w) {
  if (!w) return -1;
  for (int i = 0; i < p->n; i++)
    if (xd_params_data(p, i) == w) return i;
  XD_CHECKF(0, "a student tensor pointer is outside its params arena");
  return -1;
}

void xd_student_f64_from(xd_student_f64 *d, const xd_student *s) {
  const xd_params *p = &s->params;
  const int L = s->cfg.n_layers;
  memset(d, 0, sizeof *d);
  d->cfg = s->cfg;
  d->hy = s->hy;
  d->n = p->n;
  d->numel = xd_malloc((size_t)p->n * sizeof *d->numel);
  d->data = xd_malloc((size_t)p->n * sizeof *d->data);
  d->grad = xd_malloc((size_t)p->n * sizeof *d->grad);
  size_t total = 0;
  for (int i = 0; i < p->n; i++) total += p->t[i].numel;
  d->arena = xd_calloc(2 * total, sizeof(double)); /* weights [total] then gradients [total] */
  size_t off = 0;
  for (int i = 0; i < p->n; i++) {
    const float *w = xd_params_data(p, i);
    d->numel[i] = p->t[i].numel;
    d->data[i] = d->arena + off;
    d->grad[i] = d->arena + total + off;
    for (size_t k = 0; k < d->numel[i]; k++) d->data[i][k] = (double)w[k];
    off += d->numel[i];
  }
  d->base.cfg = d->gbase.cfg = s->cfg;
  d->base.layers = xd_calloc((size_t)L, sizeof(xd_teacher_layer_f64));
  d->gbase.layers = xd_calloc((size_t)L, sizeof(xd_teacher_layer_f64));
  d->hl = xd_calloc((size_t)L, sizeof(xd_hybrid_layer_f64));
  d->ghl = xd_calloc((size_t)L, sizeof(xd_hybrid_layer_f64));
  /* Every fp32 weight slot -> the matching double weight and gradient slots. */
#define WIRE(dst, gdst, src)                  \
  do {                                        \
    const int i_ = tensor_of(p, (src));       \
    (dst) = i_ < 0 ? NULL : d->data[i_];      \
    (gdst) = i_ < 0 ? NULL : d->grad[i_];     \
  } while (0)
  WIRE(d->base.embed, d->gbase.embed, s->base.embed);
  WIRE(d->base.lm_head, d->gbase.lm_head, s->base.lm_head);
  WIRE(d->base.final_norm, d->gbase.final_norm, s->base.final_norm);
  for (int l = 0; l < L; l++) {
#define WIRE_TEACHER(R_, f) WIRE(d->base.layers[l].f, d->gbase.layers[l].f, s->base.layers[l].f);
#define WIRE_HYBRID(R_, f) WIRE(d->hl[l].f, d->ghl[l].f, s->hl[l].f);
    XD_TEACHER_LAYER_TENSORS(WIRE_TEACHER, _)
    XD_HYBRID_LAYER_TENSORS(WIRE_HYBRID, _)
#undef WIRE_TEACHER
#undef WIRE_HYBRID
  }
#undef WIRE
}

void xd_student_f64_zero_grad(xd_student_f64 *d) {
  for (int i = 0; i < d->n; i++) memset(d->grad[i], 0, d->numel[i] * sizeof(double));
}

void xd_student_f64_free(xd_student_f64 *d) {
  free(d->base.layers);
  free(d->gbase.layers);
  free(d->hl);
  free(d->ghl);
  free(d->numel);
  free(d->data);
  free(d->grad);
  free(d->arena);
  memset(d, 0, sizeof *d);
}
