/* Evaluator log-likelihoods against transformers: per-request log-likelihoods of multiple-choice
 * items computed in float64 by tools/make_eval_reference.py (committed fixtures), for three
 * fixture teachers, through the same xd_lm path `xdistill eval` uses. Bound 1e-4 (relative to
 * max(1, |ll|)); greedy flags and every multiple-choice decision must match. */
#include <cjson/cJSON.h>
#include "test.h"
#include "eval/runner.h"

static void check_model(const char *name) {
  char path[512], dir[512];
  snprintf(path, sizeof path, "tests/fixtures/eval_reference/%s.json", name);
  snprintf(dir, sizeof dir, "tests/fixtures/teachers/%s/fp32", name);
  char *text = NULL;
  xd_err e;
  CHECKF(xd_read_file(path, 1 << 20, &text, NULL, &e) == 0, "%s", e.msg);
  if (!text) return;
  cJSON *root = cJSON_Parse(text);
  const cJSON *rq = cJSON_GetObjectItemCaseSensitive(root, "requests");
  const int n = cJSON_GetArraySize(rq);
  CHECK(n >= 10);
  xd_ll_request *reqs = calloc((size_t)n, sizeof *reqs);
  xd_ll_result *res = calloc((size_t)n, sizeof *res);
  int32_t **bufs = calloc((size_t)n * 2, sizeof *bufs);
  for (int i = 0; i < n; i++) {
    const cJSON *r = cJSON_GetArrayItem(rq, i);
    const cJSON *arrs[2] = {cJSON_GetObjectItemCaseSensitive(r, "context_ids"), cJSON_GetObjectItemCaseSensitive(r, "continuation_ids")};
    for (int k = 0; k < 2; k++) {
      const int m = cJSON_GetArraySize(arrs[k]);
      bufs[2 * i + k] = malloc((size_t)(m ? m : 1) * sizeof(int32_t));
      for (int j = 0; j < m; j++) bufs[2 * i + k][j] = (int32_t)cJSON_GetArrayItem(arrs[k], j)->valueint;
      if (k == 0) { reqs[i].context = bufs[2 * i]; reqs[i].n_context = (size_t)m; }
      else { reqs[i].continuation = bufs[2 * i + 1]; reqs[i].n_continuation = (size_t)m; }
    }
  }
  xd_runner r;
  /* The byte-level tokenizer the reference used (the evaluator needs one; ids come from the file). */
  CHECKF(xd_runner_load(&r, dir, "tests/fixtures/tokenizer_bytes", XD_TOK_REQUIRED, &e) == 0, "%s", e.msg);
  xd_lm lm;
  CHECKF(xd_runner_lm(&r, &lm, 4, &e) == 0, "%s", e.msg);
  CHECKF(lm.loglikelihood(lm.ctx, reqs, (size_t)n, res, &e) == 0, "%s", e.msg);
  double worst = 0;
  int doc = -1, best = -1, best_ref = -1, decisions = 0, agree = 0;
  double bv = -1e300, bvr = -1e300;
  for (int i = 0; i <= n; i++) {
    const cJSON *it = i < n ? cJSON_GetArrayItem(rq, i) : NULL;
    const int d = it ? cJSON_GetObjectItemCaseSensitive(it, "doc")->valueint : -2;
    if (d != doc) { /* close the previous document's decision */
      if (doc >= 0) { decisions++; agree += best == best_ref; }
      doc = d;
      bv = bvr = -1e300;
      best = best_ref = -1;
    }
    if (!it) break;
    const double ref = cJSON_GetObjectItemCaseSensitive(it, "logprob")->valuedouble;
    const int greedy = cJSON_GetObjectItemCaseSensitive(it, "is_greedy")->valueint;
    const double err = fabs(res[i].logprob - ref) / fmax(1.0, fabs(ref));
    worst = fmax(worst, err);
    CHECKF(res[i].is_greedy == greedy, "%s request %d: is_greedy %d vs %d", name, i, res[i].is_greedy, greedy);
    const int c = cJSON_GetObjectItemCaseSensitive(it, "choice")->valueint;
    if (res[i].logprob > bv) { bv = res[i].logprob; best = c; }
    if (ref > bvr) { bvr = ref; best_ref = c; }
  }
  fprintf(stderr, "  %s: %d requests, max rel err %.2e vs transformers float64, %d/%d decisions agree\n", name, n, worst, agree, decisions);
  CHECKF(worst <= 1e-4, "%s: log-likelihood error %.3g", name, worst);
  CHECK(agree == decisions && decisions >= 5);
  xd_runner_free(&r);
  for (int i = 0; i < 2 * n; i++) free(bufs[i]);
  free(bufs);
  free(reqs);
  free(res);
  cJSON_Delete(root);
  free(text);
}

static void test_llama(void) { check_model("llama-gqa"); }
static void test_qwen3(void) { check_model("qwen3"); }
static void test_olmo2(void) { check_model("olmo2"); }

int main(void) {
  RUN(test_llama);
  RUN(test_qwen3);
  RUN(test_olmo2);
  return test_finish();
}
