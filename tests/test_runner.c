/* Model runner glue (src/eval/runner.h, sample.h): sampling masks against an independent
 * reference, determinism by seed and the sampled frequencies; the streaming detokenizer rule;
 * on a fixture teacher and a student made from it (window well below the context, perturbed
 * hybrid parameters): `xdistill forward` on the student == xd_student_forward, student
 * `generate --ids` == greedy decoding by full forwards of the growing sequence, cached
 * generation (KV cache / recurrent state) == the evaluator's re-forward generation, xd_lm
 * log-likelihoods == log-softmax sums over forward logits (1e-5), an eval run on a tiny
 * multiple-choice task whose accuracies follow from those log-likelihoods, and eval's batched
 * generation (xd_batch_decoder) == one request at a time. Text goes through the
 * byte-level tokenizer fixture (256 ids, id = byte). */
#define _GNU_SOURCE /* memmem */
#include "test.h"
#include "eval/eval.h"
#include "eval/runner.h"
#include "eval/sample.h"
#include "io/npy.h"
#include "model/student/student_init.h"
#include "ops/cpu/threads.h"

#define TEACHER "tests/fixtures/teachers/llama-gqa/fp32"
#define TOKENIZER "tests/fixtures/tokenizer_bytes/tokenizer.json"

static void rand_logits(xd_rng *r, float *x, int n, float scale) {
  for (int i = 0; i < n; i++) x[i] = scale * (float)xd_rng_normal(r);
}

/* ---- sampling ---------------------------------------------------------------------------- */
/* Reference: token t is kept by top-k iff fewer than k tokens rank above it (by logit, ties by
 * id); kept by top-p iff the top-k-renormalised mass of the tokens ranked above it is < p. */
static void ref_probs(const float *lg, int V, const xd_sample_params *p, double *out) {
  double *q = malloc(V * sizeof *q);
  int *above = malloc(V * sizeof *above);
  for (int t = 0; t < V; t++) {
    above[t] = 0;
    for (int u = 0; u < V; u++) above[t] += lg[u] > lg[t] || (lg[u] == lg[t] && u < t);
  }
  double z = 0;
  for (int t = 0; t < V; t++) {
    const int in_k = p->top_k == 0 || above[t] < p->top_k;
    q[t] = in_k ? exp((double)lg[t] / p->temperature) : 0;
    z += q[t];
  }
  for (int t = 0; t < V; t++) q[t] /= z;
  double z2 = 0;
  for (int t = 0; t < V; t++) {
    double mass_above = 0;
    for (int u = 0; u < V; u++)
      if (above[u] < above[t]) mass_above += q[u];
    out[t] = (q[t] > 0 && mass_above < p->top_p) ? q[t] : 0;
    z2 += out[t];
  }
  for (int t = 0; t < V; t++) out[t] /= z2;
  free(q);
  free(above);
}

static void test_sample_masks(void) {
  xd_rng r;
  xd_rng_seed(&r, 11);
  const int V = 50;
  float lg[50];
  double ref[50];
  const xd_sample_params cases[] = {{1.0, 0, 1.0}, {0.7, 5, 1.0}, {1.3, 0, 0.6}, {0.9, 12, 0.8}, {2.0, 1, 1.0}, {0.5, 0, 0.05}};
  for (size_t c = 0; c < sizeof cases / sizeof *cases; c++)
    for (int trial = 0; trial < 5; trial++) {
      rand_logits(&r, lg, V, 2.0f);
      xd_sampler s;
      xd_sampler_init(&s, V, &cases[c], 1);
      xd_sampler_probs(&s, lg);
      ref_probs(lg, V, &cases[c], ref);
      int kept = 0, mask_bad = 0;
      double err = 0;
      for (int t = 0; t < V; t++) {
        kept += ref[t] > 0;
        mask_bad += (ref[t] > 0) != (s.probs[t] > 0);
        err = fmax(err, fabs(s.probs[t] - ref[t]) / fmax(ref[t], 1e-12));
      }
      CHECKF(mask_bad == 0, "case %zu: %d tokens masked differently", c, mask_bad);
      CHECKF(err < 1e-12, "case %zu: probabilities rel err %.3g", c, err);
      CHECKF(kept == s.n_kept, "case %zu: kept %d vs %d", c, s.n_kept, kept);
      if (cases[c].top_k) CHECK(kept <= cases[c].top_k);
      xd_sampler_free(&s);
    }
}

/* The masks at a vocabulary of 3000 with many ties (logits on a 0.25 grid): the heap ranking
 * and the nucleus search past the first 64 ranked tokens against the reference. */
static void test_sample_masks_large(void) {
  xd_rng r;
  xd_rng_seed(&r, 14);
  const int V = 3000;
  float *lg = malloc(V * sizeof *lg);
  double *ref = malloc(V * sizeof *ref);
  const xd_sample_params cases[] = {{1.0, 0, 0.95}, {0.7, 0, 0.3}, {1.2, 500, 0.99}, {0.8, 100, 1.0}, {1.0, 0, 1.0}, {2.5, 0, 0.999}};
  for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
    for (int v = 0; v < V; v++) lg[v] = 0.25f * (float)floor(8.0 * xd_rng_normal(&r));
    xd_sampler s;
    xd_sampler_init(&s, V, &cases[c], 1);
    xd_sampler_probs(&s, lg);
    ref_probs(lg, V, &cases[c], ref);
    int kept = 0, mask_bad = 0, order_bad = 0;
    double err = 0;
    for (int t = 0; t < V; t++) {
      kept += ref[t] > 0;
      mask_bad += (ref[t] > 0) != (s.probs[t] > 0);
      err = fmax(err, fabs(s.probs[t] - ref[t]) / fmax(ref[t], 1e-12));
    }
    for (int j = 1; j < s.n_kept; j++) order_bad += cases[c].top_k || cases[c].top_p < 1
                                                      ? !(lg[s.order[j - 1]] > lg[s.order[j]] || (lg[s.order[j - 1]] == lg[s.order[j]] && s.order[j - 1] < s.order[j]))
                                                      : s.order[j] != j;
    CHECKF(mask_bad == 0 && kept == s.n_kept, "case %zu: %d masked differently, kept %d vs %d", c, mask_bad, s.n_kept, kept);
    CHECKF(err < 1e-12, "case %zu: probabilities rel err %.3g", c, err);
    CHECKF(order_bad == 0, "case %zu: %d kept tokens out of order", c, order_bad);
    xd_sampler_free(&s);
  }
  free(lg);
  free(ref);
}

typedef struct { float v; int i; } ranked;
static int ranked_cmp(const void *a, const void *b) { /* logit descending, ties by lower id */
  const ranked *x = a, *y = b;
  if (x->v != y->v) return x->v > y->v ? -1 : 1;
  return (x->i > y->i) - (x->i < y->i);
}

/* xd_sampler_next_candidates (the GPU's top-ranked tokens) draws what xd_sampler_next draws from
 * the whole row, seed for seed; where the candidates cannot decide it says so (-1) and leaves the
 * rng for the whole-row draw. */
static void test_sample_candidates(void) {
  xd_rng r;
  xd_rng_seed(&r, 15);
  const int V = 2000, M = 64;
  float *lg = malloc(V * sizeof *lg);
  int32_t ids[64];
  double d[64];
  const struct { xd_sample_params p; float scale; int decides; } cases[] = {
    {{1.0, 40, 1.0}, 1.0f, 1}, {{0.8, 40, 0.9}, 1.0f, 1}, {{1.0, 100, 1.0}, 1.0f, 0}, {{0.7, 0, 0.5}, 4.0f, 1},
    {{1.0, 0, 0.99}, 0.3f, 0}, {{1.0, 0, 1.0}, 1.0f, 0}, {{0, 0, 1.0}, 1.0f, 1}};
  for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
    xd_sampler a, b;
    xd_sampler_init(&a, V, &cases[c].p, 77);
    xd_sampler_init(&b, V, &cases[c].p, 77);
    int same = 0, decided = 0;
    const int n = 100;
    for (int i = 0; i < n; i++) {
      rand_logits(&r, lg, V, cases[c].scale);
      /* the candidates: the M top-ranked by a full sort (the reference ranking) */
      ranked *all = malloc(V * sizeof *all);
      for (int v = 0; v < V; v++) all[v].v = lg[v], all[v].i = v;
      qsort(all, (size_t)V, sizeof *all, ranked_cmp);
      const double mx = all[0].v;
      double z = 0;
      for (int v = 0; v < V; v++) z += exp(((double)lg[v] - mx) / (cases[c].p.temperature > 0 ? cases[c].p.temperature : 1));
      for (int j = 0; j < M; j++) ids[j] = all[j].i, d[j] = (double)all[j].v - mx;
      free(all);
      const int32_t ta = xd_sampler_next(&a, lg);
      int32_t tb = xd_sampler_next_candidates(&b, ids, d, M, z);
      decided += tb >= 0;
      if (tb < 0) tb = xd_sampler_next(&b, lg);
      same += ta == tb;
    }
    CHECKF(same == n, "case %zu: %d of %d draws differ", c, n - same, n);
    CHECKF(cases[c].decides ? decided == n : decided == 0, "case %zu: the candidates decided %d of %d draws", c, decided, n);
    xd_sampler_free(&a);
    xd_sampler_free(&b);
  }
  free(lg);
}

static void test_sample_greedy_and_seed(void) {
  xd_rng r;
  xd_rng_seed(&r, 12);
  const int V = 300;
  float *lg = malloc(V * sizeof *lg);
  const xd_sample_params greedy = {0, 0, 1}, hot = {1.0, 40, 0.95};
  xd_sampler g, a, b, c;
  xd_sampler_init(&g, V, &greedy, 5);
  xd_sampler_init(&a, V, &hot, 42);
  xd_sampler_init(&b, V, &hot, 42);
  xd_sampler_init(&c, V, &hot, 43);
  int same_ab = 0, same_ac = 0, greedy_ok = 0;
  const int n = 200;
  for (int i = 0; i < n; i++) {
    rand_logits(&r, lg, V, 1.0f);
    int am = 0;
    for (int v = 1; v < V; v++) if (lg[v] > lg[am]) am = v;
    greedy_ok += xd_sampler_next(&g, lg) == am;
    const int ta = xd_sampler_next(&a, lg), tb = xd_sampler_next(&b, lg), tc = xd_sampler_next(&c, lg);
    same_ab += ta == tb;
    same_ac += ta == tc;
  }
  CHECKF(greedy_ok == n, "greedy != argmax in %d of %d", n - greedy_ok, n);
  CHECKF(same_ab == n, "same seed differs in %d of %d draws", n - same_ab, n);
  CHECKF(same_ac < n / 2, "seeds 42 and 43 agree on %d of %d draws", same_ac, n);
  /* greedy ties: the first maximum */
  for (int v = 0; v < V; v++) lg[v] = 0;
  lg[7] = lg[9] = 1;
  CHECK(xd_sampler_next(&g, lg) == 7);
  xd_sampler_free(&g);
  xd_sampler_free(&a);
  xd_sampler_free(&b);
  xd_sampler_free(&c);
  free(lg);
}

/* The draws follow probs: frequencies over 40000 draws within 5 standard errors. */
static void test_sample_frequencies(void) {
  xd_rng r;
  xd_rng_seed(&r, 13);
  const int V = 8, N = 40000;
  float lg[8];
  rand_logits(&r, lg, V, 1.0f);
  const xd_sample_params p = {0.8, 6, 0.9};
  xd_sampler s;
  xd_sampler_init(&s, V, &p, 99);
  int cnt[8] = {0};
  for (int i = 0; i < N; i++) cnt[xd_sampler_next(&s, lg)]++;
  double ref[8];
  ref_probs(lg, V, &p, ref);
  for (int t = 0; t < V; t++) {
    const double f = (double)cnt[t] / N, se = sqrt(fmax(ref[t] * (1 - ref[t]), 1e-12) / N);
    CHECKF(fabs(f - ref[t]) <= 5 * se + (ref[t] == 0 ? 0 : 1e-9), "token %d: frequency %.4f vs p %.4f", t, f, ref[t]);
  }
  xd_sampler_free(&s);
}

static void test_sample_params_check(void) {
  xd_err e;
  const xd_sample_params bad[] = {{-1, 0, 1}, {NAN, 0, 1}, {1, -2, 1}, {1, 0, 0}, {1, 0, 1.5}};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) CHECKF(xd_sample_params_check(&bad[i], &e) == -1, "case %zu accepted", i);
  const xd_sample_params ok = {0.7, 50, 0.9};
  CHECK(xd_sample_params_check(&ok, &e) == 0);
}

/* ---- streaming detokenizer rule ---------------------------------------------------------- */
static void test_stream_safe_len(void) {
  const char *none[1] = {NULL};
  CHECK(xd_stream_safe_len("ab\xEF\xBF\xBD", 5, none, 0) == 2);          /* trailing U+FFFD held */
  CHECK(xd_stream_safe_len("ab\xEF\xBF\xBD\xEF\xBF\xBD", 8, none, 0) == 2);
  CHECK(xd_stream_safe_len("ab\xE2\x82", 4, none, 0) == 2);              /* incomplete euro sign */
  CHECK(xd_stream_safe_len("ab\xE2\x82\xAC", 5, none, 0) == 5);          /* complete */
  CHECK(xd_stream_safe_len("a\xF0\x9F\x98", 4, none, 0) == 1);
  CHECK(xd_stream_safe_len("\xEF\xBF\xBDz", 4, none, 0) == 4);           /* replacement inside: shown */
  const char *stops[2] = {"STOP", "\n\n"};
  CHECK(xd_stream_safe_len("hello ST", 8, stops, 2) == 6);
  CHECK(xd_stream_safe_len("hello\n", 6, stops, 2) == 5);
  CHECK(xd_stream_safe_len("hello S", 7, stops, 2) == 6);
  CHECK(xd_stream_safe_len("hello", 5, stops, 2) == 5);
}

/* The streaming detokenizer on real tokenizers (byte-level BPE and SentencePiece-style with
 * byte fallback, where emoji and CJK come as partial UTF-8 byte tokens): pushing the ids one at
 * a time, the pieces concatenate to decode(all ids); no piece starts inside a character or
 * shows a U+FFFD the full decode does not have; a stop string cuts the text before its first
 * occurrence. */
static void test_detok_real_tokenizers(void) {
  const char *names[] = {"llama2", "llama3", "mistral7b", "qwen3", "olmo2"};
  const char *texts[] = {
    "Hello world! Ünïcödé, naïve café; 日本語のテキスト 🙂🚀 and   spaces\n\nnew  lines\ttabs",
    " leading space, émoji 👩‍👩‍👧 and 中文字符 end",
    "x",
  };
  int tested = 0;
  for (size_t t = 0; t < sizeof names / sizeof *names; t++) {
    char dir[256];
    snprintf(dir, sizeof dir, "../shared/tokenizers/%s", names[t]);
    if (!xd_is_dir(dir)) continue;
    xd_err e = {0};
    xd_tokenizer *tok;
    if (xd_tokenizer_load(&tok, dir, &e) != 0) { CHECKF(0, "%s", e.msg); continue; }
    tested++;
    for (size_t x = 0; x < sizeof texts / sizeof *texts; x++) {
      int32_t *ids;
      size_t n, lf;
      char *full;
      CHECK(xd_tokenizer_encode(tok, texts[x], strlen(texts[x]), 0, &ids, &n, &e) == 0);
      CHECK(xd_tokenizer_decode(tok, ids, n, 1, &full, &lf, &e) == 0);
      for (int with_stop = 0; with_stop < 2; with_stop++) {
        /* stop: two characters from the middle of the text */
        char stop[16] = {0};
        const char *stops[1] = {stop};
        size_t want_len = lf;
        if (with_stop) {
          if (lf < 8) continue;
          size_t a = lf / 2, b;
          while (a > 0 && ((unsigned char)full[a] & 0xC0) == 0x80) a--;
          b = a + 1;
          for (int c = 0; c < 2 && b < lf; c++) { while (b < lf && ((unsigned char)full[b] & 0xC0) == 0x80) b++; if (c == 0 && b < lf) b++; }
          while (b < lf && ((unsigned char)full[b] & 0xC0) == 0x80) b++;
          memcpy(stop, full + a, b - a < 15 ? b - a : 15);
          want_len = (size_t)(strstr(full, stop) - full);
        }
        xd_detok d;
        xd_detok_init(&d, tok, stops, (size_t)with_stop);
        char *got = calloc(lf + 64, 1);
        size_t gl = 0;
        int bad_start = 0, bad_fffd = 0, st = 0;
        const int full_has_fffd = strstr(full, "\xEF\xBF\xBD") != NULL;
        for (size_t i = 0; i < n && st == 0; i++) {
          const char *p;
          size_t np;
          st = xd_detok_push(&d, ids[i], &p, &np, &e);
          CHECK(st >= 0);
          if (np) {
            bad_start += ((unsigned char)p[0] & 0xC0) == 0x80;
            bad_fffd += !full_has_fffd && memmem(p, np, "\xEF\xBF\xBD", 3) != NULL;
            if (gl + np <= lf) memcpy(got + gl, p, np);
            gl += np;
          }
        }
        const char *p;
        size_t np;
        xd_detok_finish(&d, &p, &np);
        if (np && gl + np <= lf) memcpy(got + gl, p, np);
        gl += np;
        CHECKF(gl == want_len && !memcmp(got, full, want_len), "%s text %zu stop %d: streamed text differs from decode", names[t], x, with_stop);
        CHECKF(bad_start == 0 && bad_fffd == 0, "%s text %zu: %d pieces split a character, %d show U+FFFD", names[t], x, bad_start, bad_fffd);
        CHECK(st == with_stop);
        free(got);
        xd_detok_free(&d);
      }
      free(full);
      free(ids);
    }
    xd_tokenizer_free(tok);
  }
  if (!tested) SKIP("../shared/tokenizers absent");
}

/* ---- models ------------------------------------------------------------------------------ */
static char g_student[600];

/* A student of the fixture teacher with W = 4, S = 2 (context 20-30 tokens) and perturbed new
 * parameters, saved so the CLI loads the same weights. */
static int make_student(void) {
  xd_err e;
  xd_model_config c;
  if (xd_config_load(&c, TEACHER, &e) != 0) { fprintf(stderr, "%s\n", e.msg); return -1; }
  xd_hybrid_config h;
  xd_hybrid_defaults(&h, c.head_dim);
  h.window = 4;
  h.sinks = 2;
  h.chunk = 5;
  snprintf(g_student, sizeof g_student, "%s/student", test_tmpdir("runner"));
  if (xd_student_init(TEACHER, &h, g_student, &e) != 0) { fprintf(stderr, "%s\n", e.msg); return -1; }
  xd_student s;
  if (xd_student_load(&s, g_student, XD_STUDENT_FROZEN, &e) != 0) { fprintf(stderr, "%s\n", e.msg); return -1; }
  xd_rng r;
  xd_rng_seed(&r, 21);
  const int H = c.n_heads, G = c.n_kv_heads, d = c.head_dim, D = c.hidden, P = xd_hybrid_p_width(&s.hy);
  for (int l = 0; l < c.n_layers; l++) {
    xd_hybrid_layer *Y = &s.hl[l];
    for (int i = 0; i < H * d * P; i++) Y->P_q[i] += 0.3f * (float)xd_rng_normal(&r);
    for (int i = 0; i < G * d * P; i++) Y->P_k[i] += 0.3f * (float)xd_rng_normal(&r);
    for (int i = 0; i < H * D; i++) { Y->w_i[i] = 0.1f * (float)xd_rng_normal(&r); Y->w_f[i] = 0.1f * (float)xd_rng_normal(&r); }
    for (int i = 0; i < H; i++) Y->b_o[i] += 2.0f; /* o near 0.5: both branches matter */
    for (int i = 0; i < H * 3 * d; i++) Y->w_o[i] = 0.1f * (float)xd_rng_normal(&r);
  }
  const int rc = xd_student_save(&s, g_student, &e);
  if (rc) fprintf(stderr, "%s\n", e.msg);
  xd_student_free(&s);
  return rc;
}

/* `xdistill forward` on the student == xd_student_forward (B = 2, T = 24, W = 4). */
static void test_cli_forward_student(void) {
  const char *bin = getenv("XD_BIN");
  if (!bin) SKIP("XD_BIN not set");
  xd_err e = {0};
  const int B = 2, T = 24;
  int32_t ids[48];
  xd_rng r;
  xd_rng_seed(&r, 31);
  for (int i = 0; i < B * T; i++) ids[i] = (int32_t)(xd_rng_u64(&r) % 256);
  char ids_path[700], out_path[700], cmd[2200];
  snprintf(ids_path, sizeof ids_path, "%s/ids.npy", test_tmpdir("runner"));
  snprintf(out_path, sizeof out_path, "%s/logits.npy", test_tmpdir("runner"));
  const int64_t shape[2] = {B, T};
  CHECK(xd_npy_write(ids_path, XD_NPY_I32, 2, shape, ids, &e) == 0);
  snprintf(cmd, sizeof cmd, "%s forward --model %s --ids %s --out %s", bin, g_student, ids_path, out_path);
  CHECK(system(cmd) == 0);
  xd_npy a;
  if (xd_npy_read(out_path, &a, &e) != 0) { CHECKF(0, "%s", e.msg); return; }
  xd_student s;
  CHECK(xd_student_load(&s, g_student, XD_STUDENT_FROZEN, &e) == 0);
  const int V = s.cfg.vocab;
  CHECK(a.ndim == 3 && a.shape[0] == B && a.shape[1] == T && a.shape[2] == V);
  xd_teacher_acts ta;
  xd_core_acts ca;
  xd_teacher_acts_alloc(&ta, &s.cfg, B * T, T);
  xd_core_acts_alloc(&ca, &s, B, T);
  float *want = malloc((size_t)B * T * V * sizeof *want);
  CHECK(xd_student_forward(&s, &ta, &ca, ids, B, T, want, &e) == 0);
  double err = 0, scale = 0;
  const float *got = a.data;
  for (size_t i = 0; a.nelem == (size_t)B * T * V && i < a.nelem; i++) {
    err = fmax(err, fabs((double)got[i] - want[i]));
    scale = fmax(scale, fabs(want[i]));
  }
  CHECKF(a.nelem == (size_t)B * T * V && err <= 1e-5 * scale, "max |diff| %.3g (scale %.3g)", err, scale);
  /* and the student is not the teacher (the hybrid parameters matter) */
  xd_teacher t;
  CHECK(xd_teacher_load(&t, TEACHER, &e) == 0);
  float *tl = malloc((size_t)B * T * V * sizeof *tl);
  CHECK(xd_teacher_forward(&t, &ta, ids, B, T, tl, NULL, NULL, &e) == 0);
  double dt = 0;
  for (size_t i = 0; i < (size_t)B * T * V; i++) dt = fmax(dt, fabs((double)tl[i] - want[i]));
  CHECKF(dt > 1e-2 * scale, "student logits equal the teacher's (max diff %.3g)", dt);
  free(tl);
  xd_teacher_free(&t);
  free(want);
  xd_core_acts_free(&ca);
  xd_teacher_acts_free(&ta);
  xd_student_free(&s);
  xd_npy_free(&a);
}

/* Reference forward with freshly allocated activations (independent of the runner's reuse). */
static int fresh_forward(xd_runner *r, const int32_t *ids, int T, float *logits, xd_err *e) {
  xd_teacher_acts ta;
  xd_teacher_acts_alloc(&ta, &r->cfg, T, T);
  int rc;
  if (r->is_student) {
    xd_core_acts ca;
    xd_core_acts_alloc(&ca, &r->student, 1, T);
    rc = xd_student_forward(&r->student, &ta, &ca, ids, 1, T, logits, e);
    xd_core_acts_free(&ca);
  } else rc = xd_teacher_forward(&r->teacher, &ta, ids, 1, T, logits, NULL, NULL, e);
  xd_teacher_acts_free(&ta);
  return rc;
}

/* Greedy continuation by full forwards of the growing sequence (argmax of the last row). */
static void greedy_by_forward(xd_runner *r, const int32_t *prompt, int T, int max_new, int32_t *out) {
  xd_err e;
  const int V = r->cfg.vocab;
  int32_t *seq = malloc((size_t)(T + max_new) * sizeof *seq);
  float *lg = malloc((size_t)(T + max_new) * V * sizeof *lg);
  memcpy(seq, prompt, T * sizeof *seq);
  for (int n = T; n < T + max_new; n++) {
    CHECK(fresh_forward(r, seq, n, lg, &e) == 0);
    seq[n] = xd_argmax(lg + (size_t)(n - 1) * V, V);
    out[n - T] = seq[n];
  }
  free(seq);
  free(lg);
}

/* Student `generate --ids` (constant-memory decode) == greedy by full forwards, two rows. */
static void test_cli_generate_student(void) {
  const char *bin = getenv("XD_BIN");
  if (!bin) SKIP("XD_BIN not set");
  xd_err e = {0};
  const int B = 2, T = 9, NEW = 16; /* 25 tokens: far past the 4-token window */
  int32_t ids[18];
  xd_rng r;
  xd_rng_seed(&r, 32);
  for (int i = 0; i < B * T; i++) ids[i] = (int32_t)(3 + xd_rng_u64(&r) % 250);
  char ids_path[700], cmd[2200];
  snprintf(ids_path, sizeof ids_path, "%s/gen_ids.npy", test_tmpdir("runner"));
  const int64_t shape[2] = {B, T};
  CHECK(xd_npy_write(ids_path, XD_NPY_I32, 2, shape, ids, &e) == 0);
  snprintf(cmd, sizeof cmd, "%s generate --model %s --ids %s --max-new %d --ignore-eos", bin, g_student, ids_path, NEW);
  xd_runner run;
  CHECK(xd_runner_load(&run, g_student, NULL, XD_TOK_SKIP, &e) == 0);
  CHECK(run.is_student);
  FILE *fp = popen(cmd, "r");
  CHECK(fp != NULL);
  int bad = 0, n = 0;
  int32_t want[16];
  for (int b = 0; fp && b < B; b++) {
    greedy_by_forward(&run, ids + b * T, T, NEW, want);
    for (int s = 0; s < NEW; s++, n++) {
      int v = -1;
      if (fscanf(fp, "%d", &v) != 1 || v != want[s]) bad++;
    }
  }
  CHECK(fp && pclose(fp) == 0);
  CHECKF(bad == 0 && n == B * NEW, "%d of %d generated ids differ from full-forward greedy", bad, n);
  xd_runner_free(&run);
}

/* Cached generation (teacher KV cache, student recurrent state) through xd_lm.generate_until
 * == the evaluator's adaptor re-running the full forward per token; the streamed pieces
 * concatenate to the returned text; a stop string cuts it. */
static void check_generation(const char *dir) {
  xd_err e = {0};
  xd_runner r;
  if (xd_runner_load(&r, dir, TOKENIZER, XD_TOK_REQUIRED, &e) != 0) { CHECKF(0, "%s", e.msg); return; }
  xd_lm lm, plain;
  CHECK(xd_runner_lm(&r, &lm, 1, &e) == 0);
  xd_logits_model copy = r.lm_src; /* the same forward, without the cached generate_until */
  xd_lm_from_logits(&plain, &copy);
  const char *prompts[] = {"Question: what is 2 + 2?\nAnswer:", "The sky is", "z"};
  for (size_t p = 0; p < 3; p++) {
    int32_t *ids;
    size_t n;
    CHECK(lm.encode(lm.ctx, prompts[p], strlen(prompts[p]), &ids, &n, &e) == 0);
    char *a = NULL, *b = NULL;
    CHECK(lm.generate_until(lm.ctx, ids, n, NULL, 0, 14, &a, &e) == 0);
    CHECK(plain.generate_until(plain.ctx, ids, n, NULL, 0, 14, &b, &e) == 0);
    CHECKF(a && b && !strcmp(a, b), "%s: cached and re-forward generations differ", dir);
    /* streaming: pieces concatenate to the text */
    xd_gen_options o;
    xd_gen_options_default(&o);
    o.max_new = 14;
    char *text = NULL;
    CHECK(xd_runner_generate(&r, ids, n, &o, NULL, NULL, &text, NULL, &e) == 0);
    CHECK(text && a && !strcmp(text, a));
    free(text);
    /* stop string: a piece of the middle of the greedy text */
    const size_t L = a ? strlen(a) : 0;
    if (L >= 8) {
      size_t s0 = L / 2;
      while (s0 > 0 && ((unsigned char)a[s0] & 0xC0) == 0x80) s0--;
      size_t s1 = s0 + 1;
      while (s1 < L && ((unsigned char)a[s1] & 0xC0) == 0x80) s1++;
      char stop[8] = {0};
      memcpy(stop, a + s0, s1 - s0 < 7 ? s1 - s0 : 7);
      const char *stops[1] = {stop};
      char *c = NULL;
      CHECK(lm.generate_until(lm.ctx, ids, n, stops, 1, 14, &c, &e) == 0);
      const char *first = strstr(a, stop);
      CHECKF(c && first && strlen(c) == (size_t)(first - a) && !strncmp(c, a, strlen(c)), "%s: stop string not honoured", dir);
      free(c);
    }
    free(a);
    free(b);
    free(ids);
  }
  xd_runner_free(&r);
}

static void test_generation_cached(void) {
  check_generation(TEACHER);
  check_generation(g_student);
}

/* log p(cont | ctx) from forward logits with a double log-softmax. */
static double direct_ll(xd_runner *r, const int32_t *ctx, size_t nc, const int32_t *cont, size_t m) {
  xd_err e;
  const int V = r->cfg.vocab;
  const size_t n = nc + m - 1;
  int32_t *seq = malloc(n * sizeof *seq);
  memcpy(seq, ctx, nc * sizeof *seq);
  memcpy(seq + nc, cont, (m - 1) * sizeof *seq);
  float *lg = malloc(n * V * sizeof *lg);
  CHECK(fresh_forward(r, seq, (int)n, lg, &e) == 0);
  double s = 0;
  for (size_t j = 0; j < m; j++) {
    const float *row = lg + (nc - 1 + j) * V;
    double z = 0;
    for (int v = 0; v < V; v++) z += exp((double)row[v]);
    s += (double)row[cont[j]] - log(z);
  }
  free(seq);
  free(lg);
  return s;
}

/* xd_lm log-likelihoods == direct sums; an eval run's accuracies == argmax of direct sums. */
static void check_eval(const char *dir) {
  xd_err e = {0};
  xd_runner r;
  if (xd_runner_load(&r, dir, TOKENIZER, XD_TOK_REQUIRED, &e) != 0) { CHECKF(0, "%s", e.msg); return; }
  xd_lm lm;
  CHECK(xd_runner_lm(&r, &lm, 2, &e) == 0);
  CHECK(lm.prefix_id == 1); /* the config's BOS (the byte tokenizer has none) */
  /* a tiny MC task: the byte tokenizer makes ids = bytes, so requests are built by hand */
  const char *path_dir = test_tmpdir("runner");
  char path[700];
  snprintf(path, sizeof path, "%s/tiny_mc.jsonl", path_dir);
  const char *jsonl =
    "{\"query\": \"Question: which colour is the sky?\\nAnswer:\", \"choices\": [\"blue\", \"green\", \"red\"], \"gold\": 0}\n"
    "{\"query\": \"Question: 2 + 2 =\\nAnswer:\", \"choices\": [\"4\", \"22\", \"five\"], \"gold\": 0}\n"
    "{\"query\": \"Cats say\", \"choices\": [\"moo\", \"meow\"], \"gold\": 1}\n"
    "{\"query\": \"Q: pick a letter\\nA:\", \"choices\": [\"a\", \"bb\", \"ccc\", \"dddd\"], \"gold\": 2}\n";
  CHECK(xd_write_file_atomic(path, jsonl, strlen(jsonl), &e) == 0);
  xd_task_options to;
  xd_task_options_default(&to);
  xd_task *t = NULL;
  if (xd_task_load(&t, "mc", path, NULL, "tiny", &to, &e) != 0) { CHECKF(0, "%s", e.msg); xd_runner_free(&r); return; }
  int acc = 0, acc_norm = 0, n_ll = 0;
  double worst = 0;
  int *pred_norm = calloc(t->n_docs, sizeof *pred_norm);
  for (size_t d = 0; d < t->n_docs; d++) {
    const xd_task_doc *doc = &t->docs[d];
    int best = 0, best_n = 0;
    double bl = -INFINITY, bn = -INFINITY;
    for (int c = 0; c < doc->n_choices; c++) {
      const char *cx = doc->context, *ct = doc->continuations[c];
      int32_t *ic, *it;
      size_t nc, nt;
      CHECK(lm.encode(lm.ctx, cx, strlen(cx), &ic, &nc, &e) == 0);
      CHECK(lm.encode(lm.ctx, ct, strlen(ct), &it, &nt, &e) == 0);
      CHECK(nc == strlen(cx) && nt == strlen(ct)); /* id = byte */
      const xd_ll_request q = {ic, nc, it, nt};
      xd_ll_result res;
      CHECK(lm.loglikelihood(lm.ctx, &q, 1, &res, &e) == 0);
      const double want = direct_ll(&r, ic, nc, it, nt);
      worst = fmax(worst, fabs(res.logprob - want) / fmax(fabs(want), 1));
      n_ll++;
      if (want > bl) { bl = want; best = c; }
      const double norm = want / (double)(strlen(ct) - t->target_delim_len);
      if (norm > bn) { bn = norm; best_n = c; }
      free(ic);
      free(it);
    }
    acc += best == doc->gold;
    acc_norm += best_n == doc->gold;
    pred_norm[d] = best_n == doc->gold;
  }
  CHECKF(worst <= 1e-5, "%s: log-likelihood rel err %.3g over %d requests", dir, worst, n_ll);
  xd_eval_options eo = {2, NULL, 1};
  xd_task_result res;
  if (xd_eval_run(t, &lm, &eo, &res, &e) == 0) {
    const xd_metric *ma = xd_task_result_metric(&res, "acc"), *mn = xd_task_result_metric(&res, "acc_norm");
    CHECK(ma && fabs(ma->value - (double)acc / t->n_docs) < 1e-12);
    CHECK(mn && fabs(mn->value - (double)acc_norm / t->n_docs) < 1e-12);
    int items_ok = res.items != NULL && res.n == t->n_docs;
    for (size_t d = 0; items_ok && d < t->n_docs; d++) items_ok = res.items[d] == pred_norm[d];
    CHECKF(items_ok, "%s: per-doc acc_norm items differ from the direct computation", dir);
    xd_task_result_free(&res);
  } else CHECKF(0, "%s", e.msg);
  free(pred_norm);
  xd_task_free(t);
  xd_runner_free(&r);
}

static void test_eval_loglikelihood(void) {
  check_eval(TEACHER);
  check_eval(g_student);
}

/* eval's batched generation (generate_until_batch over xd_batch_decoder; XD_EVAL_GEN_BATCH=1
 * sends the CPU through it): the same texts as generate_until one request at a time, with more
 * requests than the batch, a stop string, prompts of different lengths and one cut by the context. */
static void check_eval_batch(const char *model, const char *name) {
  xd_err e = {0};
  xd_runner r;
  if (xd_runner_load(&r, model, TOKENIZER, XD_TOK_REQUIRED, &e)) { CHECKF(0, "%s", e.msg); return; }
  xd_lm lm;
  setenv("XD_EVAL_GEN_BATCH", "0", 1);
  CHECK(xd_runner_lm(&r, &lm, 4, &e) == 0 && lm.generate_until_batch == NULL);
  setenv("XD_EVAL_GEN_BATCH", "1", 1);
  CHECK(xd_runner_lm(&r, &lm, 4, &e) == 0 && lm.generate_until_batch != NULL);
  unsetenv("XD_EVAL_GEN_BATCH");
  if (!lm.generate_until_batch) { xd_runner_free(&r); return; }
  const char *texts[5] = {"Once upon a time", "ab", "The quick brown fox jumps over the lazy dog and then some more words",
                          "x", "Hello there"};
  int32_t *ids[5];
  size_t n[5];
  for (int i = 0; i < 5; i++) CHECK(lm.encode(lm.ctx, texts[i], strlen(texts[i]), &ids[i], &n[i], &e) == 0);
  const char *stops[1] = {"e"};
  for (int with_stop = 0; with_stop < 2; with_stop++) {
    char *got[5];
    CHECKF(lm.generate_until_batch(lm.ctx, (const int32_t *const *)ids, n, 5, stops, with_stop, 40, got, &e) == 0, "%s", e.msg);
    for (int i = 0; i < 5; i++) {
      char *want = NULL;
      CHECK(lm.generate_until(lm.ctx, ids[i], n[i], stops, with_stop, 40, &want, &e) == 0);
      CHECKF(want && got[i] && !strcmp(want, got[i]), "%s request %d (stop %d): '%s' vs '%s'", name, i, with_stop,
             got[i] ? got[i] : "NULL", want ? want : "NULL");
      free(want), free(got[i]);
    }
  }
  for (int i = 0; i < 5; i++) free(ids[i]);
  xd_runner_free(&r);
}

static void test_eval_batch_generation(void) {
  check_eval_batch(TEACHER, "teacher");
  check_eval_batch(g_student, "student");
}

int main(void) {
  /* tiny models: one thread (OpenMP spin-waits dominate on a shared machine); the CLI children
   * inherit it */
  setenv("OMP_NUM_THREADS", "1", 1);
  xd_set_threads(1);
  RUN(test_sample_masks);
  RUN(test_sample_masks_large);
  RUN(test_sample_candidates);
  RUN(test_sample_greedy_and_seed);
  RUN(test_sample_frequencies);
  RUN(test_sample_params_check);
  RUN(test_stream_safe_len);
  RUN(test_detok_real_tokenizers);
  if (!xd_is_dir(TEACHER)) {
    fprintf(stderr, "[skip] %s absent: model tests skipped\n", TEACHER);
    return test_finish();
  }
  if (make_student() != 0) {
    fprintf(stderr, "[FAIL] could not make the test student\n");
    return 1;
  }
  RUN(test_cli_forward_student);
  RUN(test_cli_generate_student);
  RUN(test_generation_cached);
  RUN(test_eval_loglikelihood);
  RUN(test_eval_batch_generation);
  char cmd[700];
  snprintf(cmd, sizeof cmd, "rm -rf %s", test_tmpdir("runner"));
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", test_tmpdir("runner"));
  return test_finish();
}
