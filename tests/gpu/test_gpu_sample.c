/* GPU tests (tools/gpu_test.sh): sampling on the device.
 *  1. xd_cuda_sample_rows against its CPU twin (the same fp32 terms summed in double, the walk in
 *     id order) and against xd_sampler_next with nothing masked, given the uniform the sampler
 *     would draw: V = 50000 and 128256, temperatures 0.5-1.5, flat and peaked rows; z within
 *     1e-6 (the kernels build with --use_fast_math: the device's expf is __expf, ~2 ulp-2^-21
 *     relative; the host's is exact to 1 ulp; measured 4e-8), tokens equal (a flip needs u z
 *     within ~1e-7 of a boundary: allowed once in 600);
 *  2. xd_batch_decoder_sample on the GPU (the fixture teacher and a student made from it, four
 *     slots) against xd_sampler_next on the slots' downloaded logits, seed for seed: plain
 *     temperature (the device draws), top-k, top-p and both (the device's top-ranked tokens
 *     through xd_sampler_next_candidates), a top-p the 256 candidates cannot decide and a
 *     temperature below fp32's 1/T (the whole row on the host); the prose teacher (V 1024);
 *     xd_batch_decoder_logprobs on the device against a double log-softmax of the downloaded
 *     rows (1e-5; the alternatives in the host's rank).
 * Exits 77 (skip) without a CUDA device. */
#include <math.h>
#include <stdint.h>
#include "core/core.h"
#include "eval/runner.h"
#include "eval/sample.h"
#include "model/student/student_init.h"
#include "test.h"
#include "gpu_test_util.h"

static void test_sample_rows(void) {
  xd_rng r;
  xd_rng_seed(&r, 5);
  const int vocabs[2] = {50000, 128256}, B = 6, reps = 50;
  int flips = 0, draws = 0;
  double zerr = 0;
  for (int vi = 0; vi < 2; vi++) {
    const int V = vocabs[vi];
    float *lg = xd_malloc((size_t)B * V * sizeof *lg);
    for (int rep = 0; rep < reps / 25; rep++) {
      for (int b = 0; b < B; b++) /* rows 0-2 flat-ish, 3-5 peaked */
        for (int v = 0; v < V; v++) lg[(size_t)b * V + v] = (float)((b < 3 ? 1.0 : 6.0) * xd_rng_normal(&r));
      float *d_lg = up_raw(lg, (size_t)B * V * sizeof *lg);
      xd_cuda_sample_req req[25 * 6];
      xd_sampler smp[25 * 6];
      int32_t want[25 * 6];
      const double temps[3] = {0.5, 1.0, 1.5};
      int n = 0;
      for (int k = 0; k < 25; k++)
        for (int b = 0; b < B; b++, n++) {
          const xd_sample_params p = {temps[(k + b) % 3], 0, 1.0};
          xd_sampler_init(&smp[n], V, &p, (uint64_t)(1000 * vi + 7 * n + rep));
          xd_rng peek = smp[n].rng; /* the uniform xd_sampler_next will draw */
          req[n] = (xd_cuda_sample_req){b, (float)(1.0 / p.temperature), xd_rng_uniform(&peek)};
          want[n] = xd_sampler_next(&smp[n], lg + (size_t)b * V);
          xd_sampler_free(&smp[n]);
        }
      void *d_req = up_raw(req, (size_t)n * sizeof *req);
      double *d_z = dev_poisoned((size_t)n * sizeof(double)), z[25 * 6];
      int32_t *d_tok = dev_poisoned((size_t)n * sizeof(int32_t)), tok[25 * 6];
      if (xd_cuda_sample_rows(ctx, d_lg, V, d_req, n, d_z, d_tok, &err) ||
          xd_cuda_download(ctx, z, d_z, (size_t)n * sizeof *z, &err) || xd_cuda_download(ctx, tok, d_tok, (size_t)n * sizeof *tok, &err))
        gpu_fail();
      for (int i = 0; i < n; i++) {
        /* the CPU twin: the same fp32 terms, fp64 sum, walk in id order */
        const float *row = lg + (size_t)req[i].row * V;
        float mx = -INFINITY;
        for (int v = 0; v < V; v++) mx = fmaxf(mx, row[v]);
        double zr = 0;
        for (int v = 0; v < V; v++) zr += expf((row[v] - mx) * req[i].inv_t);
        zerr = fmax(zerr, fabs(z[i] - zr) / zr);
        flips += tok[i] != want[i];
        draws++;
        if (tok[i] < 0 || tok[i] >= V) CHECKF(0, "token %d outside [0, %d)", tok[i], V);
      }
      xd_cuda_free(d_lg), xd_cuda_free(d_req), xd_cuda_free(d_z), xd_cuda_free(d_tok);
    }
    free(lg);
  }
  fprintf(stderr, "  sample_rows: z rel err %.2e (bound 1e-6), %d of %d draws differ from xd_sampler_next\n", zerr, flips, draws);
  CHECKF(zerr < 1e-6, "z rel err %.3g", zerr);
  CHECKF(flips * 600 <= draws, "%d of %d draws differ", flips, draws);
}

/* The batched decoder's sampling on the GPU vs xd_sampler_next on the downloaded logits. */
static void check_decoder_sample(const char *model, const char *name) {
  xd_runner r;
  if (xd_runner_load_on(&r, model, NULL, XD_TOK_SKIP, 1, &err)) { CHECKF(0, "%s: %s", name, err.msg); return; }
  const int n = 4, V = r.cfg.vocab;
  xd_batch_decoder *bd;
  if (xd_batch_decoder_create(&bd, &r, n, 64, &err)) { CHECKF(0, "%s: %s", name, err.msg); xd_runner_free(&r); return; }
  const xd_sample_params cases[] = {{1.0, 0, 1.0}, {0.7, 0, 1.0}, {0.8, 20, 1.0}, {1.0, 0, 0.9},
                                    {0.9, 30, 0.8}, {3.0, 0, 0.999}, {0.5, 0, 0.5}, {1.2, 300, 1.0}, {1e-31, 0, 1.0}};
  const int nc = (int)(sizeof cases / sizeof *cases);
  int32_t prompt[8];
  for (int s = 0; s < n; s++) {
    for (int i = 0; i < 8; i++) prompt[i] = (int32_t)((37 * s + 11 * i + 3) % V);
    if (xd_batch_decoder_start(bd, s, prompt, 3 + s, &err)) { CHECKF(0, "%s: %s", name, err.msg); goto done; }
  }
  float *row = xd_malloc((size_t)V * sizeof *row);
  int differ = 0, draws = 0;
  for (int c = 0; c < nc; c++) {
    xd_sampler gpu[4], cpu[4];
    xd_sampler *ptr[4];
    for (int s = 0; s < n; s++) {
      xd_sampler_init(&gpu[s], V, &cases[c], (uint64_t)(50 + 4 * c + s));
      xd_sampler_init(&cpu[s], V, &cases[c], (uint64_t)(50 + 4 * c + s));
      ptr[s] = s == 3 && c % 2 ? NULL : &gpu[s]; /* a slot without a sampler is left alone */
    }
    for (int rep = 0; rep < 40; rep++) {
      int32_t next[4] = {-7, -7, -7, -7};
      if (xd_batch_decoder_sample(bd, ptr, next, &err)) { CHECKF(0, "%s: %s", name, err.msg); break; }
      for (int s = 0; s < n; s++) {
        if (!ptr[s]) { CHECK(next[s] == -7); continue; }
        if (xd_batch_decoder_logits(bd, s, row, &err)) gpu_fail();
        const int32_t want = xd_sampler_next(&cpu[s], row);
        differ += next[s] != want;
        draws++;
      }
    }
    for (int s = 0; s < n; s++) xd_sampler_free(&gpu[s]), xd_sampler_free(&cpu[s]);
  }
  fprintf(stderr, "  %s: %d of %d GPU draws differ from the CPU sampler (V %d)\n", name, differ, draws, V);
  { /* log-probabilities on the device against a double log-softmax of the downloaded rows */
    const int kk[4] = {3, -1, 0, 5}, KM = 5;
    const int32_t tok[4] = {1, 2, 7 % V, (V / 2)};
    float lp[4] = {0}, top_lp[4 * 5] = {0};
    int32_t top_ids[4 * 5] = {0};
    double worst = 0;
    int bad_ids = 0;
    if (xd_batch_decoder_logprobs(bd, kk, KM, tok, lp, top_ids, top_lp, &err)) gpu_fail();
    for (int s = 0; s < n; s++) {
      if (kk[s] < 0) continue;
      if (xd_batch_decoder_logits(bd, s, row, &err)) gpu_fail();
      double mx = row[0], z = 0;
      for (int v = 1; v < V; v++) mx = fmax(mx, row[v]);
      for (int v = 0; v < V; v++) z += exp((double)row[v] - mx);
      const double lse = mx + log(z);
      worst = fmax(worst, fabs(lp[s] - ((double)row[tok[s]] - lse)));
      int best[5];
      xd_logits_top(row, V, kk[s] > 0 ? kk[s] : 1, best);
      for (int j = 0; j < kk[s]; j++) {
        bad_ids += top_ids[s * KM + j] != best[j];
        worst = fmax(worst, fabs(top_lp[s * KM + j] - ((double)row[best[j]] - lse)));
      }
    }
    fprintf(stderr, "  %s: logprobs within %.2e of the host's, %d alternatives out of rank\n", name, worst, bad_ids);
    CHECKF(worst < 1e-5 && bad_ids == 0, "%s: logprobs off by %.3g, %d ids differ", name, worst, bad_ids);
  }
  /* the candidates' log-prob differences carry fp32 rounding (~1e-6): a flip needs u within that
   * of a cumulative boundary */
  CHECKF(differ * 200 <= draws, "%s: %d of %d draws differ", name, differ, draws);
  free(row);
done:
  xd_batch_decoder_free(bd);
  xd_runner_free(&r);
}

static void test_decoder_sample(void) {
  const char *teacher = "tests/fixtures/prose-teacher"; /* V 1024: past the 256 top-p candidates */
  check_decoder_sample(teacher, "teacher");
  xd_model_config c;
  if (xd_config_load(&c, teacher, &err) != 0) { CHECKF(0, "%s", err.msg); return; }
  xd_hybrid_config h;
  xd_hybrid_defaults(&h, c.head_dim);
  h.window = 4, h.sinks = 2, h.chunk = 5;
  char dir[600];
  snprintf(dir, sizeof dir, "%s/student", test_tmpdir("gpu-sample"));
  if (xd_student_init(teacher, &h, dir, &err) != 0) { CHECKF(0, "%s", err.msg); return; }
  check_decoder_sample(dir, "student");
}

int main(int argc, char **argv) {
  gpu_test_begin(argc, argv);
  RUN(test_sample_rows);
  RUN(test_decoder_sample);
  return gpu_test_end();
}
