/* Stage II on chat-style data: the loss counts exactly the positions whose TARGET token has
 * mask 1 (assistant tokens), through the whole path shard -> loader -> distill batch -> KD loss.
 * Reference: the mask recomputed here from the raw arrays written to the shard (row r = tokens
 * [rT, rT + T + 1) (consecutive rows overlap by one token), position t's target is token t+1), and the loss as the mean of
 * single-position KD losses over exactly those positions; the all-ones mask must differ. */
#include "test.h"
#include "data/shard.h"
#include "distill/stages.h"
#include "model/student/student_init.h"

static void test_distill_counts_assistant_targets(void) {
  const char *tdir = "tests/fixtures/tiny-teacher";
  if (!xd_file_exists("tests/fixtures/tiny-teacher/config.json")) SKIP("tests/fixtures/tiny-teacher absent");
  const char *dir = test_tmpdir("stages_mask");
  char sdir[600], shard[600];
  snprintf(sdir, sizeof sdir, "%s/student", dir);
  snprintf(shard, sizeof shard, "%s/chat.shard", dir);
  xd_err e;
  xd_teacher t;
  CHECKF(xd_teacher_load(&t, tdir, &e) == 0, "%s", e.msg);
  xd_hybrid_config h;
  xd_hybrid_defaults(&h, t.cfg.head_dim);
  h.window = 8; h.sinks = 2; h.chunk = 8;
  CHECKF(xd_student_init(tdir, &h, sdir, &e) == 0, "%s", e.msg);
  xd_student s;
  CHECKF(xd_student_load(&s, sdir, XD_STUDENT_TRAIN_ALL, &e) == 0, "%s", e.msg);

  /* 6 rows of T+1 tokens; "turns" of random length alternate mask 0 (user) / 1 (assistant) */
  enum { B = 2, T = 16, ROWS = 6, K = 8 };
  const uint64_t n = (uint64_t)ROWS * (T + 1);
  int32_t toks[ROWS * (T + 1)];
  uint8_t mask[ROWS * (T + 1)];
  xd_rng r;
  xd_rng_seed(&r, 99);
  int m = 0, left = 0;
  for (uint64_t i = 0; i < n; i++) {
    if (left-- <= 0) { m ^= 1; left = 1 + (int)(xd_rng_u64(&r) % 6); }
    toks[i] = (int32_t)(xd_rng_u64(&r) % (uint64_t)t.cfg.vocab);
    mask[i] = (uint8_t)m;
  }
  const uint64_t offs[2] = {0, n};
  CHECKF(xd_shard_write(shard, toks, mask, n, offs, 1, (uint64_t)t.cfg.vocab, NULL, &e) == 0, "%s", e.msg);
  const char *shards[] = {shard};
  xd_loader_config lc = {T, B, 1, 0, 0, 1};
  xd_loader *L;
  CHECKF(xd_loader_open_shards(&L, shards, 1, &lc, &e) == 0, "%s", e.msg);
  kd_config kd = kd_config_default(B * T, t.cfg.vocab);
  kd.k = K;
  xd_distill_ctx c;
  xd_trainer_hooks hooks;
  xd_distill_init(&c, &t, NULL, &s, L, B, T, &kd, &hooks);

  const uint64_t rows[B] = {3, 1};
  kd_result res;
  CHECKF(xd_distill_eval_rows(&c, rows, &res, &e) == 0, "%s", e.msg);
  uint8_t want[B * T], one[B * T];
  int64_t count = 0;
  for (int b = 0; b < B; b++)
    for (int p = 0; p < T; p++) {
      const size_t at = (size_t)rows[b] * T + (size_t)p; /* rows overlap by one token (loader.h) */
      CHECK(c.inputs[b * T + p] == toks[at] && c.targets[b * T + p] == toks[at + 1]);
      want[b * T + p] = mask[at + 1];
      count += mask[at + 1];
    }
  CHECK(count > 0 && count < B * T);
  CHECKF(res.count == count, "loss counted %lld positions, the assistant targets are %lld", (long long)res.count, (long long)count);
  /* reference: mean of single-position losses over the assistant targets */
  double sum = 0, sum_all = 0;
  for (int i = 0; i < B * T; i++) {
    memset(one, 0, sizeof one);
    one[i] = 1;
    kd_result ri;
    CHECKF(kd_loss_forward(&c.kd, c.logits, c.targets, one, c.tk_ids, c.tk_logp, c.lse, &ri, &e) == 0, "%s", e.msg);
    if (want[i]) sum += ri.loss;
    sum_all += ri.loss;
  }
  CHECK_REL(res.loss, sum / (double)count, 1e-6, 1e-12);
  const double all = sum_all / (B * T);
  CHECKF(fabs(all - res.loss) > 1e-4 * fabs(all), "masked loss %.9g equals the all-positions loss %.9g: the mask has no effect", res.loss, all);
  xd_distill_free(&c);
  xd_loader_free(L);
  xd_student_free(&s);
  xd_teacher_free(&t);
}

int main(void) {
  RUN(test_distill_counts_assistant_targets);
  return test_finish();
}
