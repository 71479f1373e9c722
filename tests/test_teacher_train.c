/* Training through a teacher layer (model/teacher/teacher_train.h): the *_save forwards equal
 * the inference layer functions bit for bit, and both backwards (every weight, the layer input,
 * the attention output, and the extra raw-projection / x gradients) agree with central finite
 * differences of the fp32 forward (eps 1e-2 on O(1) values; the composed ops are each checked
 * in double in test_ops_teacher.c, this test checks the wiring: a wrong path gives O(1) errors).
 * Three structures: llama with all biases, qwen3 (per-head QK-norm), olmo2 (projection QK-norm,
 * post-norms). */
#include "test.h"
#include "model/teacher/teacher_train.h"

#define FD_EPS 1e-2f
#define TOL 3e-3

static xd_model_config small_config(xd_family fam) {
  xd_model_config c;
  memset(&c, 0, sizeof c);
  c.family = fam;
  c.hidden = 8; c.intermediate = 12; c.n_layers = 1; c.n_heads = 2; c.n_kv_heads = 1; c.head_dim = 4;
  c.vocab = 16; c.max_pos = 64; c.rms_eps = 1e-5;
  c.rope[0].kind = c.rope[1].kind = XD_ROPE_DEFAULT;
  c.rope[0].theta = c.rope[1].theta = 10000.0;
  c.rope[0].factor = c.rope[1].factor = 1;
  if (fam == XD_FAMILY_LLAMA) { c.qkv_bias = c.o_bias = c.mlp_bias = 1; }
  if (fam == XD_FAMILY_QWEN3) c.qk_norm = XD_QKNORM_HEAD;
  if (fam == XD_FAMILY_OLMO2) { c.qk_norm = XD_QKNORM_PROJ; c.post_norm = 1; }
  return c;
}

/* The weight tensors of a layer as (pointer slot, count) pairs. */
#define NSLOT 20
static int layer_slots(const xd_model_config *c, xd_teacher_layer *L, float ***slot, size_t *n) {
  const size_t D = c->hidden, F = c->intermediate, Hd = (size_t)c->n_heads * c->head_dim,
               Gd = (size_t)c->n_kv_heads * c->head_dim, qn = c->qk_norm == XD_QKNORM_HEAD ? (size_t)c->head_dim : Hd,
               kn = c->qk_norm == XD_QKNORM_HEAD ? (size_t)c->head_dim : Gd;
  float **p[NSLOT] = {&L->attn_norm, &L->wq, &L->wk, &L->wv, &L->bq, &L->bk, &L->bv, &L->q_norm, &L->k_norm, &L->wo,
                      &L->bo, &L->attn_out_norm, &L->mlp_norm, &L->w_gate, &L->w_up, &L->w_down, &L->b_gate, &L->b_up,
                      &L->b_down, &L->mlp_out_norm};
  const size_t sz[NSLOT] = {D, Hd * D, Gd * D, Gd * D, Hd, Gd, Gd, qn, kn, D * Hd, D, D, D, F * D, F * D, D * F, F, F, D, D};
  for (int i = 0; i < NSLOT; i++) { slot[i] = p[i]; n[i] = sz[i]; }
  return NSLOT;
}

static float *randv(xd_rng *r, size_t n, float scale) {
  float *p = xd_malloc(n * sizeof(float));
  for (size_t i = 0; i < n; i++) p[i] = scale * (float)xd_rng_normal(r);
  return p;
}

static double dotd(const float *a, const float *b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
  return s;
}

typedef struct {
  const xd_model_config *c;
  xd_teacher *t;
  xd_rope_tables *rope;
  const int *pos;
  int N;
  float *h, *a;                   /* inputs */
  float *Gq, *Gk, *Gv, *Gqr, *Gkr, *Gx, *Gout; /* upstream gradients */
  xd_layer_saved *s;
  float *q, *k, *hout;
} ctx;

static double loss_in(ctx *x) {
  const xd_model_config *c = x->c;
  const size_t NQ = (size_t)x->N * c->n_heads * c->head_dim, NK = (size_t)x->N * c->n_kv_heads * c->head_dim;
  xd_teacher_layer_in_save(c, &x->t->layers[0], 0, x->rope, x->pos, x->N, x->h, x->s, x->q, x->k);
  return dotd(x->Gq, x->q, NQ) + dotd(x->Gk, x->k, NK) + dotd(x->Gv, x->s->v_raw, NK) + dotd(x->Gqr, x->s->q_raw, NQ) +
         dotd(x->Gkr, x->s->k_raw, NK) + dotd(x->Gx, x->s->x, (size_t)x->N * c->hidden);
}

static double loss_out(ctx *x) {
  memcpy(x->s->h_in, x->h, (size_t)x->N * x->c->hidden * sizeof(float));
  xd_teacher_layer_out_save(x->c, &x->t->layers[0], x->N, x->a, x->s, x->hout);
  return dotd(x->Gout, x->hout, (size_t)x->N * x->c->hidden);
}

static void check_fd(const char *what, double (*L)(ctx *), ctx *x, float *param, size_t n, const float *grad) {
  double *fd = malloc(n * sizeof(double));
  for (size_t i = 0; i < n; i++) {
    const float v = param[i];
    param[i] = v + FD_EPS;
    const double lp = L(x);
    param[i] = v - FD_EPS;
    const double lm = L(x);
    param[i] = v;
    fd[i] = (lp - lm) / (2.0 * FD_EPS);
  }
  const double err = test_max_rel_err(grad, fd, n);
  double amax = 0;
  for (size_t i = 0; i < n; i++) amax = fmax(amax, fabs(fd[i]));
  CHECKF(err <= TOL && amax > 1e-3, "%s: grad rel err %.3g (max |grad| %.3g)", what, err, amax);
  free(fd);
}

static void run_family(xd_family fam) {
  const xd_model_config c = small_config(fam);
  const int N = 5, D = c.hidden, Hd = c.n_heads * c.head_dim, Gd = c.n_kv_heads * c.head_dim;
  xd_teacher t;
  xd_teacher_init_random(&t, &c, 77 + fam, 0.4f);
  xd_teacher_layer *L = &t.layers[0];
  xd_rope_tables rope;
  xd_rope_tables_alloc(&rope, &c, 16);
  const int pos[5] = {0, 1, 2, 7, 11};
  xd_rng r;
  xd_rng_seed(&r, 9 + fam);
  ctx x = {.c = &c, .t = &t, .rope = &rope, .pos = pos, .N = N};
  x.h = randv(&r, (size_t)N * D, 1); x.a = randv(&r, (size_t)N * Hd, 1);
  x.Gq = randv(&r, (size_t)N * Hd, 1); x.Gk = randv(&r, (size_t)N * Gd, 1); x.Gv = randv(&r, (size_t)N * Gd, 1);
  x.Gqr = randv(&r, (size_t)N * Hd, 1); x.Gkr = randv(&r, (size_t)N * Gd, 1); x.Gx = randv(&r, (size_t)N * D, 1);
  x.Gout = randv(&r, (size_t)N * D, 1);
  xd_layer_saved s;
  xd_layer_saved_alloc(&s, &c, N);
  x.s = &s;
  x.q = xd_malloc((size_t)N * Hd * sizeof(float)); x.k = xd_malloc((size_t)N * Gd * sizeof(float));
  x.hout = xd_malloc((size_t)N * D * sizeof(float));

  /* save variants == inference functions */
  float *xi = xd_malloc((size_t)N * D * 4), *qr = xd_malloc((size_t)N * Hd * 4), *kr = xd_malloc((size_t)N * Gd * 4),
        *vr = xd_malloc((size_t)N * Gd * 4), *qi = xd_malloc((size_t)N * Hd * 4), *ki = xd_malloc((size_t)N * Gd * 4);
  float *hi = xd_malloc((size_t)N * D * 4), *tmp = xd_malloc((size_t)N * D * 4), *ga = xd_malloc((size_t)N * c.intermediate * 4),
        *up = xd_malloc((size_t)N * c.intermediate * 4);
  xd_teacher_layer_in(&c, L, 0, &rope, pos, N, x.h, xi, qr, kr, vr, qi, ki);
  loss_in(&x);
  CHECK(!memcmp(xi, s.x, (size_t)N * D * 4) && !memcmp(qi, x.q, (size_t)N * Hd * 4) && !memcmp(ki, x.k, (size_t)N * Gd * 4) &&
        !memcmp(vr, s.v_raw, (size_t)N * Gd * 4) && !memcmp(qr, s.q_raw, (size_t)N * Hd * 4));
  memcpy(hi, x.h, (size_t)N * D * 4);
  xd_teacher_layer_out(&c, L, N, x.a, hi, tmp, ga, up);
  loss_out(&x);
  double md = 0;
  for (int i = 0; i < N * D; i++) md = fmax(md, fabs(hi[i] - x.hout[i]));
  CHECKF(md < 1e-6, "layer_out_save differs from layer_out by %g", md);

  /* gradient containers shaped like L */
  xd_teacher_layer gL;
  memset(&gL, 0, sizeof gL);
  float **sl[NSLOT], **gs[NSLOT];
  size_t n[NSLOT];
  layer_slots(&c, L, sl, n);
  layer_slots(&c, &gL, gs, n);
  for (int i = 0; i < NSLOT; i++) *gs[i] = *sl[i] ? xd_calloc(n[i], sizeof(float)) : NULL;
  xd_layer_grad_scratch g;
  xd_layer_grad_scratch_alloc(&g, &c, N);
  static const char *const names[NSLOT] = {"attn_norm", "wq", "wk", "wv", "bq", "bk", "bv", "q_norm", "k_norm", "wo", "bo",
                                           "attn_out_norm", "mlp_norm", "w_gate", "w_up", "w_down", "b_gate", "b_up",
                                           "b_down", "mlp_out_norm"};
  /* ---- layer_out ---- */
  float *dh = xd_malloc((size_t)N * D * 4), *da = xd_malloc((size_t)N * Hd * 4);
  loss_out(&x);
  memcpy(dh, x.Gout, (size_t)N * D * 4);
  xd_teacher_layer_out_backward(&c, L, N, &s, dh, da, &gL, &g);
  char what[96];
  check_fd("layer_out dh_in", loss_out, &x, x.h, (size_t)N * D, dh);
  check_fd("layer_out da", loss_out, &x, x.a, (size_t)N * Hd, da);
  int checked = 0;
  for (int i = 0; i < NSLOT; i++) {
    const int in_out = i >= 9; /* wo onwards belong to layer_out */
    if (!*sl[i] || !in_out) continue;
    snprintf(what, sizeof what, "%s: layer_out d%s", xd_family_name(fam), names[i]);
    check_fd(what, loss_out, &x, *sl[i], n[i], *gs[i]);
    checked++;
  }
  CHECK(checked >= (c.post_norm ? 6 : 5));
  /* ---- layer_in ---- */
  loss_in(&x);
  memset(dh, 0, (size_t)N * D * 4);
  xd_teacher_layer_in_backward(&c, L, 0, &rope, pos, N, &s, x.Gq, x.Gk, x.Gv, x.Gqr, x.Gkr, x.Gx, dh, &gL, &g);
  snprintf(what, sizeof what, "%s: layer_in dh", xd_family_name(fam));
  check_fd(what, loss_in, &x, x.h, (size_t)N * D, dh);
  checked = 0;
  for (int i = 0; i < 9; i++) {
    if (!*sl[i]) continue;
    snprintf(what, sizeof what, "%s: layer_in d%s", xd_family_name(fam), names[i]);
    check_fd(what, loss_in, &x, *sl[i], n[i], *gs[i]);
    checked++;
  }
  CHECK(checked >= 3);

  for (int i = 0; i < NSLOT; i++) free(*gs[i]);
  xd_layer_grad_scratch_free(&g);
  xd_layer_saved_free(&s);
  xd_rope_tables_free(&rope);
  xd_teacher_free(&t);
  float *fr[] = {x.h, x.a, x.Gq, x.Gk, x.Gv, x.Gqr, x.Gkr, x.Gx, x.Gout, x.q, x.k, x.hout, xi, qr, kr, vr, qi, ki, hi, tmp, ga, up, dh, da};
  for (size_t i = 0; i < sizeof fr / sizeof fr[0]; i++) free(fr[i]);
}

static void test_llama_bias(void) { run_family(XD_FAMILY_LLAMA); }
static void test_qwen3_head_qknorm(void) { run_family(XD_FAMILY_QWEN3); }
static void test_olmo2_post_norm(void) { run_family(XD_FAMILY_OLMO2); }

int main(void) {
  RUN(test_llama_bias);
  RUN(test_qwen3_head_qknorm);
  RUN(test_olmo2_post_norm);
  return test_finish();
}
