/* The hybrid student: the teacher invariant (W >= T, mixing gate on the attention branch ->
 * teacher logits), prefill + decode == full forward with a window well below the context,
 * constant decode state, and the core backward against finite differences. */
#include "test.h"
#include "student_fixture.h"
#include "io/npy.h"
#include "io/safetensors.h"
#include "model/student/student.h"
#include "model/student/student_init.h"

static const char *FAMILIES[] = {"llama-gqa", "llama-mha-bias", "llama3-rope", "llama-dynamic", "qwen2", "qwen3", "olmo2", "olmo3"};

static void test_teacher_invariant(void) {
  int tested = 0;
  for (size_t f = 0; f < sizeof FAMILIES / sizeof *FAMILIES; f++) {
    char sdir[600], tdir[512], ids_path[512];
    snprintf(tdir, sizeof tdir, "tests/fixtures/teachers/%s/fp32", FAMILIES[f]);
    snprintf(ids_path, sizeof ids_path, "tests/fixtures/teachers/%s/ids.npy", FAMILIES[f]);
    if (test_make_student(FAMILIES[f], 4096, 4, 5, sdir, sizeof sdir) != 0) continue;
    xd_err e;
    xd_teacher t;
    xd_student s;
    xd_npy a;
    CHECKF(xd_teacher_load(&t, tdir, &e) == 0, "%s", e.msg);
    CHECKF(xd_student_load(&s, sdir, XD_STUDENT_FROZEN, &e) == 0, "%s", e.msg);
    CHECK(xd_npy_read(ids_path, &a, &e) == 0);
    int32_t *ids;
    CHECK(xd_npy_to_ids(&a, ids_path, t.cfg.vocab, &ids, &e) == 0);
    const int B = (int)a.shape[0], T = (int)a.shape[1], V = t.cfg.vocab;
    /* Mixing gate forced onto the local (attention) branch: o = sigmoid(-1e4) = 0 exactly. */
    for (int l = 0; l < s.cfg.n_layers; l++)
      for (int h = 0; h < s.cfg.n_heads; h++) s.hl[l].b_o[h] = -1e4f;
    xd_teacher_acts ta;
    xd_teacher_acts_alloc(&ta, &t.cfg, B * T, T);
    float *lt = malloc((size_t)B * T * V * sizeof(float)), *ls = malloc((size_t)B * T * V * sizeof(float));
    CHECK(xd_teacher_forward(&t, &ta, ids, B, T, lt, NULL, NULL, &e) == 0);
    xd_core_acts ca;
    xd_core_acts_alloc(&ca, &s, B, T);
    CHECK(xd_student_forward(&s, &ta, &ca, ids, B, T, ls, &e) == 0);
    double amax = 0, dmax = 0;
    for (size_t i = 0; i < (size_t)B * T * V; i++) {
      amax = fmax(amax, fabs(lt[i]));
      dmax = fmax(dmax, fabs((double)lt[i] - ls[i]));
    }
    CHECKF(dmax / amax <= 1e-5, "%s: student vs teacher logits rel err %.3g", FAMILIES[f], dmax / amax);
    tested++;
    xd_core_acts_free(&ca);
    xd_teacher_acts_free(&ta);
    free(lt);
    free(ls);
    free(ids);
    xd_npy_free(&a);
    xd_student_free(&s);
    xd_teacher_free(&t);
  }
  CHECKF(tested >= 6, "only %d teacher families found", tested);
}

static void test_decode_matches_forward(void) {
  const char *fams[] = {"llama-gqa", "qwen3", "olmo2"};
  for (size_t f = 0; f < 3; f++) {
    char sdir[600];
    if (test_make_student(fams[f], 4, 2, 3, sdir, sizeof sdir) != 0) { CHECK(0); continue; }
    xd_err e;
    xd_student s;
    CHECKF(xd_student_load(&s, sdir, XD_STUDENT_FROZEN, &e) == 0, "%s", e.msg);
    test_perturb_hybrid(&s, 7 + f, 0.5f);
    const int T = 23, V = s.cfg.vocab, prefill = 6;
    xd_rng r;
    xd_rng_seed(&r, 99 + f);
    int32_t ids[23];
    for (int i = 0; i < T; i++) ids[i] = (int32_t)(xd_rng_u64(&r) % (uint64_t)V);
    xd_teacher_acts ta;
    xd_teacher_acts_alloc(&ta, &s.cfg, T, T);
    xd_core_acts ca;
    xd_core_acts_alloc(&ca, &s, 1, T);
    float *full = malloc((size_t)T * V * sizeof(float)), *step = malloc((size_t)V * sizeof(float));
    CHECK(xd_student_forward(&s, &ta, &ca, ids, 1, T, full, &e) == 0);
    xd_student_state st;
    xd_student_state_alloc(&st, &s);
    const size_t bytes0 = xd_student_state_bytes(&st);
    CHECK(xd_student_step(&s, &st, ids, prefill, step, &e) == 0);
    double worst = 0;
    for (int t = prefill - 1; t < T; t++) {
      if (t >= prefill) CHECK(xd_student_step(&s, &st, ids + t, 1, step, &e) == 0);
      double amax = 0, dmax = 0;
      for (int v = 0; v < V; v++) {
        amax = fmax(amax, fabs(full[(size_t)t * V + v]));
        dmax = fmax(dmax, fabs((double)full[(size_t)t * V + v] - step[v]));
      }
      worst = fmax(worst, dmax / amax);
    }
    CHECKF(worst <= 1e-5, "%s: decode vs full forward rel err %.3g", fams[f], worst);
    CHECK(xd_student_state_bytes(&st) == bytes0 && st.pos == T);
    xd_student_state_free(&st);
    xd_core_acts_free(&ca);
    xd_teacher_acts_free(&ta);
    free(full);
    free(step);
    xd_student_free(&s);
  }
}

/* Loss = sum(out * R); check <grad, u> against a central difference along a random u, per
 * parameter group of the core (fp32 FD: the ops themselves are FD-checked in double). */
static double core_loss(const xd_student *s, xd_core_acts *ca, const xd_teacher_acts *ta, const float *R, float *out, int N) {
  xd_core_forward(s, 0, ca, ta->x, ta->q_raw, ta->k_raw, ta->v_raw, ta->q, ta->k, out);
  double L = 0;
  for (size_t i = 0; i < (size_t)N * s->cfg.n_heads * s->cfg.head_dim; i++) L += (double)out[i] * R[i];
  return L;
}

static void test_core_backward(void) {
  char sdir[600];
  if (test_make_student("llama-gqa", 3, 1, 4, sdir, sizeof sdir) != 0) { CHECK(0); return; }
  xd_err e;
  xd_student s;
  CHECKF(xd_student_load(&s, sdir, XD_STUDENT_TRAIN_NEW, &e) == 0, "%s", e.msg);
  test_perturb_hybrid(&s, 3, 0.5f);
  const int B = 2, T = 9, N = B * T, Hd = s.cfg.n_heads * s.cfg.head_dim;
  xd_rng r;
  xd_rng_seed(&r, 17);
  int32_t ids[18];
  for (int i = 0; i < N; i++) ids[i] = (int32_t)(xd_rng_u64(&r) % (uint64_t)s.cfg.vocab);
  xd_teacher_acts ta;
  xd_teacher_acts_alloc(&ta, &s.cfg, N, T);
  for (int b = 0; b < B; b++) for (int t = 0; t < T; t++) ta.pos[b * T + t] = t;
  xd_rope_tables_update(&ta.rope, &s.cfg, T);

  /* Layer-0 inputs from the teacher part of the student. */
  for (int i = 0; i < N; i++) memcpy(ta.h + (size_t)i * s.cfg.hidden, s.base.embed + (size_t)ids[i] * s.cfg.hidden, (size_t)s.cfg.hidden * sizeof(float));
  xd_teacher_layer_in(&s.cfg, &s.base.layers[0], 0, &ta.rope, ta.pos, N, ta.h, ta.x, ta.q_raw, ta.k_raw, ta.v_raw, ta.q, ta.k);
  xd_core_acts ca;
  xd_core_acts_alloc(&ca, &s, B, T);
  float *R = malloc((size_t)N * Hd * sizeof(float)), *out = malloc((size_t)N * Hd * sizeof(float));
  for (int i = 0; i < N * Hd; i++) R[i] = (float)xd_rng_normal(&r);
  core_loss(&s, &ca, &ta, R, out, N);
  xd_params_zero_grad(&s.params);
  xd_core_backward(&s, 0, &ca, ta.x, ta.q_raw, ta.k_raw, ta.v_raw, ta.q, ta.k, R, NULL, NULL, NULL, NULL, NULL, NULL);
  float *w[XD_NEW_COUNT] = {s.hl[0].P_q, s.hl[0].P_k, s.hl[0].w_i, s.hl[0].b_i, s.hl[0].w_f, s.hl[0].b_f, s.hl[0].w_o, s.hl[0].b_o};
  float *g[XD_NEW_COUNT] = {s.ghl[0].P_q, s.ghl[0].P_k, s.ghl[0].w_i, s.ghl[0].b_i, s.ghl[0].w_f, s.ghl[0].b_f, s.ghl[0].w_o, s.ghl[0].b_o};
  for (int k = 0; k < XD_NEW_COUNT; k++) {
    char name[200];
    xd_hybrid_tensor_name(name, sizeof name, 0, k);
    const int idx = xd_params_find(&s.params, name);
    CHECK(idx >= 0);
    const size_t n = s.params.t[idx].numel;
    float *u = malloc(n * sizeof(float)), *w0 = malloc(n * sizeof(float));
    memcpy(w0, w[k], n * sizeof(float));
    double gu = 0;
    for (size_t i = 0; i < n; i++) { u[i] = (float)xd_rng_normal(&r); gu += (double)g[k][i] * u[i]; }
    const float h = 2e-3f;
    for (size_t i = 0; i < n; i++) w[k][i] = w0[i] + h * u[i];
    const double lp = core_loss(&s, &ca, &ta, R, out, N);
    for (size_t i = 0; i < n; i++) w[k][i] = w0[i] - h * u[i];
    const double lm = core_loss(&s, &ca, &ta, R, out, N);
    memcpy(w[k], w0, n * sizeof(float));
    const double fd = (lp - lm) / (2.0 * h);
    CHECKF(fabs(fd - gu) <= 2e-2 * fmax(fabs(fd), 1e-1), "%s: fd %.6g vs analytic %.6g", name, fd, gu);
    free(u);
    free(w0);
  }
  free(R);
  free(out);
  xd_core_acts_free(&ca);
  xd_teacher_acts_free(&ta);
  xd_student_free(&s);
}

/* xd_student_create (a student from a configuration, zero weights: GPU tests and benchmarks)
 * builds the same parameter table as loading a checkpoint of that configuration, in every mode:
 * names, shapes, groups, trainable flags and offsets (8-float aligned), zero weights. */
static void test_create_matches_load(void) {
  char sdir[600];
  if (test_make_student("qwen3", 5, 2, 4, sdir, sizeof sdir) != 0) { printf("  [skip] fixture missing\n"); return; }
  const xd_student_mode modes[3] = {XD_STUDENT_FROZEN, XD_STUDENT_TRAIN_NEW, XD_STUDENT_TRAIN_ALL};
  for (int k = 0; k < 3; k++) {
    xd_err e = {{0}};
    xd_student a, b;
    CHECKF(xd_student_load(&a, sdir, modes[k], &e) == 0, "%s", e.msg);
    CHECKF(xd_student_create(&b, &a.cfg, &a.hy, modes[k], &e) == 0, "%s", e.msg);
    if (xd_t.case_failed) return;
    CHECK(a.params.n == b.params.n && a.params.total == b.params.total && a.params.n_train == b.params.n_train);
    for (int i = 0; i < a.params.n && i < b.params.n; i++) {
      const xd_param_info *x = &a.params.t[i], *y = &b.params.t[i];
      CHECKF(!strcmp(x->name, y->name) && x->ndim == y->ndim && x->numel == y->numel && x->offset == y->offset &&
             x->group == y->group && x->trainable == y->trainable && x->offset % XD_PARAMS_ALIGN == 0,
             "tensor %d: %s vs %s", i, x->name, y->name);
    }
    int zero = 1;
    for (size_t i = 0; i < b.params.total; i++) zero &= b.params.data[i] == 0.0f;
    CHECK(zero);
    CHECK(b.cfg.tie_embeddings ? b.base.lm_head == b.base.embed : (b.base.lm_head && b.base.lm_head != b.base.embed));
    CHECK(b.hl[0].P_q != NULL && (modes[k] == XD_STUDENT_FROZEN) == (b.ghl[0].P_q == NULL));
    xd_student_free(&a);
    xd_student_free(&b);
  }
}

static void test_bad_student(void) {
  char sdir[600];
  if (test_make_student("llama-gqa", 8, 2, 4, sdir, sizeof sdir) != 0) { CHECK(0); return; }
  xd_err e;
  xd_student s;
  /* A teacher directory is not a student. */
  CHECK(xd_student_load(&s, "tests/fixtures/teachers/llama-gqa/fp32", XD_STUDENT_FROZEN, &e) != 0 && strstr(e.msg, "not a student"));
  /* Impossible hybrid settings in config.json. */
  char *cfgp = xd_path_join(sdir, "config.json"), *text = NULL;
  size_t len;
  CHECK(xd_read_file(cfgp, 1 << 20, &text, &len, &e) == 0);
  char *bad = strstr(text, "\"window\":");
  CHECK(bad != NULL);
  if (bad) {
    char *copy = malloc(len + 16);
    size_t pre = (size_t)(bad - text);
    memcpy(copy, text, pre);
    const char *rest = strchr(bad, ',');
    snprintf(copy + pre, len + 16 - pre, "\"window\": -3%s", rest);
    xd_write_file_atomic(cfgp, copy, strlen(copy), &e);
    CHECK(xd_student_load(&s, sdir, XD_STUDENT_FROZEN, &e) != 0 && strstr(e.msg, "window -3"));
    free(copy);
    xd_write_file_atomic(cfgp, text, len, &e);
  }
  free(text);
  free(cfgp);
  /* A student checkpoint missing a hybrid tensor. */
  xd_safetensors st;
  CHECK(xd_st_open(&st, sdir, &e) == 0);
  xd_st_entry *ents = calloc((size_t)st.ntensors, sizeof *ents);
  int n = 0;
  for (int i = 0; i < st.ntensors; i++) {
    if (strstr(st.tensors[i].name, "layers.1.self_attn.xlstm.fgate.bias")) continue;
    ents[n].name = st.tensors[i].name;
    ents[n].dtype = st.tensors[i].dtype;
    ents[n].ndim = st.tensors[i].ndim;
    memcpy(ents[n].shape, st.tensors[i].shape, sizeof st.tensors[i].shape);
    ents[n].data = st.tensors[i].data;
    n++;
  }
  char *mp = xd_path_join(sdir, "model.safetensors.new");
  CHECK(xd_st_write(mp, ents, n, NULL, NULL, 0, &e) == 0);
  xd_st_close(&st);
  char *real = xd_path_join(sdir, "model.safetensors");
  rename(mp, real);
  CHECK(xd_student_load(&s, sdir, XD_STUDENT_FROZEN, &e) != 0 && strstr(e.msg, "missing tensor 'model.layers.1.self_attn.xlstm.fgate.bias'"));
  free(mp);
  free(real);
  free(ents);
}

int main(void) {
  RUN(test_teacher_invariant);
  RUN(test_decode_matches_forward);
  RUN(test_core_backward);
  RUN(test_create_matches_load);
  RUN(test_bad_student);
  return test_finish();
}
