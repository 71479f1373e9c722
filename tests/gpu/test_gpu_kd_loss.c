/* GPU test + benchmark of the stage II KD loss kernels (src/ops/cuda/kd_loss.cu) against their
 * CPU twins (ops/cpu/kd_loss.c): xd_cuda_topk_logprobs vs topk_logprobs and
 * xd_cuda_kd_loss_fused vs kd_loss_forward + kd_loss_backward. Not in CTest (CI has no GPU).
 *
 * Inputs: fresh random logits with an LLM-like spread (N(-2, 2.5^2) per token plus a handful of
 * boosted "plausible" tokens per row), the student correlated with the teacher, targets mostly
 * inside the teacher's top-k, masks with zeros, V = 1000, 1003 (unaligned rows: scalar path)
 * and 151936, k from 8 to 1024, bf16 and fp32 storage, in-place / overwrite / accumulate.
 * The CPU twin runs in fp32 on the bf16-rounded values, so the gap is the GPU's own rounding.
 * Every GPU output is poisoned with NaN bytes first (an unwritten element fails any bound).
 *
 * Bounds (relative L2, ||gpu - cpu|| / ||cpu||), with their reasons:
 *  - top-k ids: exact (both order the same exact values by the same total order);
 *  - teacher log-probs, lse, per-row CE / KL, the loss means: 1e-5. fp32 sum-exp over the row
 *    (the CPU sums in fp64): ~1e-7 relative on the sum, so ~1e-7 absolute on lse; __expf's
 *    argument rounding adds |x| * 2^-24; values are O(1..20);
 *  - fp32 gradient: 1e-5 (the same __expf error, ~1e-6 on the large entries; the k-entry
 *    terms are fp64 on both sides, rounded once to fp32);
 *  - bf16 gradient: 3e-3: one round-to-nearest to bf16 (8 significant bits) is at most 2^-9 =
 *    1.95e-3 relative per element, so at most that in L2, plus the fp32 part.
 * Exit 0 = pass, 1 = a failure, 77 = no CUDA device.
 *   test_gpu_kd_loss          all cases + benchmark (N = 4096, V = 128256, k = 256)
 *   test_gpu_kd_loss quick    small cases only, no benchmark (for compute-sanitizer);
 *                             XD_GPU_QUICK=1 does the same */
#include <math.h>
#include <stdint.h>
#include <time.h>
#include "core/core.h"
#include "ops/cpu/kd_loss.h"
#include "ops/cuda/cuda_ops.h"
#include "test.h"
#include "gpu_test_util.h"

#define GPU(call) do { if ((call) != 0) { fprintf(stderr, "  FAIL %s:%d: %s\n", __FILE__, __LINE__, err.msg); xd_t.case_failed = 1; return; } } while (0)
#define GPUX(call) do { if ((call) != 0) { fprintf(stderr, "fatal %s:%d: %s\n", __FILE__, __LINE__, err.msg); exit(1); } } while (0)

static const double TOL_F32 = 1e-5, TOL_BF16 = 3e-3;
static double worst_f32, worst_bf16, worst_loss; /* largest measured errors, for the summary */

static void rel_check(const char *name, const float *x, const float *ref, size_t n, double tol) {
  const double r = rel_l2(x, ref, n);
  fprintf(stderr, "    %-52s rel %.3e (bound %.0e)\n", name, r, tol);
  CHECKF(r <= tol, "%s: rel err %.3e > %.1e", name, r, tol);
  double *w = tol > TOL_F32 ? &worst_bf16 : &worst_f32;
  if (r > *w) *w = r;
}
static void scalar_check(const char *name, double got, double ref, double tol) {
  const double r = fabs(got - ref) / fmax(fabs(ref), 1e-12);
  fprintf(stderr, "    %-52s %.9g vs %.9g rel %.2e\n", name, got, ref, r);
  CHECKF(r <= tol, "%s: %.9g vs %.9g rel %.2e > %.1e", name, got, ref, r, tol);
  if (r > worst_loss) worst_loss = r;
}

/* fp32 host values to a device buffer of dtype dt */
static void *up_as(const float *x, size_t n, xd_cuda_dtype dt) {
  if (dt == XD_CUDA_F32) return up_raw(x, n * 4);
  uint16_t *h = xd_malloc(n * 2 + 1);
  for (size_t i = 0; i < n; i++) h[i] = xd_f32_to_bf16(x[i]);
  void *d = up_raw(h, n * 2);
  free(h);
  return d;
}
static int down_as(float *dst, const void *d, size_t n, xd_cuda_dtype dt) {
  if (dt == XD_CUDA_F32) return xd_cuda_download(ctx, dst, d, n * 4, &err);
  uint16_t *h = xd_malloc(n * 2 + 1);
  const int rc = xd_cuda_download(ctx, h, d, n * 2, &err);
  for (size_t i = 0; i < n; i++) dst[i] = xd_bf16_to_f32(h[i]);
  free(h);
  return rc;
}
static void round_bf16(float *x, size_t n) {
  for (size_t i = 0; i < n; i++) x[i] = xd_bf16_to_f32(xd_f32_to_bf16(x[i]));
}
static const char *dtn(xd_cuda_dtype t) { return t == XD_CUDA_BF16 ? "bf16" : "f32"; }

/* LLM-like logits: N(-2, 2.5^2) per token, plus 1..16 tokens per row boosted by 4..12. */
static void fill_logits(xd_rng *r, float *z, int N, int V) {
  for (int n = 0; n < N; n++) {
    float *row = z + (size_t)n * V;
    for (int v = 0; v < V; v++) row[v] = (float)(-2.0 + 2.5 * xd_rng_normal(r));
    const int nb = 1 + (int)(xd_rng_u64(r) % 16);
    for (int b = 0; b < nb; b++) row[xd_rng_u64(r) % (uint64_t)V] += (float)(4.0 + 8.0 * xd_rng_uniform(r));
  }
}

/* ---- teacher top-k ------------------------------------------------------------------- */
/* pattern 0: realistic; 1: massive ties (rows of a constant, of 3 levels, of coarse steps),
 * which send most rows down the exact radix-select path when V is large. */
static void topk_case(int N, int V, int k, xd_cuda_dtype dt, int pattern, uint64_t seed) {
  xd_rng r;
  xd_rng_seed(&r, seed);
  const size_t nz = (size_t)N * V, nk = (size_t)N * k;
  float *z = xd_malloc(nz * 4);
  fill_logits(&r, z, N, V);
  if (pattern == 1)
    for (int n = 0; n < N; n++) {
      float *row = z + (size_t)n * V;
      for (int v = 0; v < V; v++) {
        switch (n % 4) {
        case 0: row[v] = n % 8 == 0 ? 1.5f : -0.0f; break;                       /* one value (and -0 vs +0) */
        case 1: row[v] = (float)(xd_rng_u64(&r) % 3); break;                     /* three levels */
        case 2: row[v] = floorf(row[v]); break;                                  /* integer steps */
        default: row[v] = (xd_rng_u64(&r) % 7 == 0) ? 3.0f : (v % 2 ? 0.0f : -0.0f); break;
        }
      }
    }
  if (dt == XD_CUDA_BF16) round_bf16(z, nz);
  int32_t *ids_ref = xd_malloc(nk * 4), *ids = xd_malloc(nk * 4);
  float *lp_ref = xd_malloc(nk * 4), *lp = xd_malloc(nk * 4);
  xd_err ce = {{0}};
  CHECKF(topk_logprobs(z, N, V, k, ids_ref, lp_ref, &ce) == 0, "cpu topk: %s", ce.msg);
  void *dz = up_as(z, nz, dt);
  int32_t *dids = dev_poisoned(nk * 4), *dbad = dev_poisoned(4), bad = 0;
  float *dlp = dev_poisoned(nk * 4);
  GPU(xd_cuda_topk_logprobs(ctx, dz, dt, N, V, k, dids, dlp, dbad, &err));
  GPU(xd_cuda_download(ctx, ids, dids, nk * 4, &err));
  GPU(xd_cuda_download(ctx, lp, dlp, nk * 4, &err));
  GPU(xd_cuda_download(ctx, &bad, dbad, 4, &err));
  size_t wrong = 0, first = (size_t)-1;
  for (size_t i = 0; i < nk; i++)
    if (ids[i] != ids_ref[i]) {
      if (!wrong) first = i;
      wrong++;
    }
  char name[128];
  snprintf(name, sizeof name, "topk N%d V%d k%d %s%s", N, V, k, dtn(dt), pattern ? " ties" : "");
  fprintf(stderr, "    %-52s ids %s (%zu of %zu differ)\n", name, wrong ? "DIFFER" : "exact", wrong, nk);
  if (wrong)
    fprintf(stderr, "      first at row %zu slot %zu: gpu %d (%.9g) cpu %d (%.9g)\n", first / k, first % k, ids[first],
            lp[first], ids_ref[first], lp_ref[first]);
  CHECKF(wrong == 0, "%s: %zu ids differ", name, wrong);
  CHECKF(bad == -1, "bad_row %d for finite logits", bad);
  snprintf(name, sizeof name, "  logp");
  rel_check(name, lp, lp_ref, nk, TOL_F32);
  xd_cuda_free(dz), xd_cuda_free(dids), xd_cuda_free(dbad), xd_cuda_free(dlp);
  free(z), free(ids_ref), free(ids), free(lp_ref), free(lp);
}

/* Rows with a NaN / inf: bad_row names the lowest; nothing is read or written out of range. */
static void topk_nonfinite(xd_cuda_dtype dt) {
  const int N = 9, V = 1000, k = 16;
  xd_rng r;
  xd_rng_seed(&r, 99);
  float *z = xd_malloc((size_t)N * V * 4);
  fill_logits(&r, z, N, V);
  z[(size_t)6 * V + 17] = NAN;
  z[(size_t)3 * V + 999] = INFINITY;
  z[(size_t)8 * V + 0] = -INFINITY;
  void *dz = up_as(z, (size_t)N * V, dt);
  int32_t *dids = dev_poisoned((size_t)N * k * 4), *dbad = dev_poisoned(4), bad = 0;
  float *dlp = dev_poisoned((size_t)N * k * 4);
  int32_t *ids = xd_malloc((size_t)N * k * 4);
  GPU(xd_cuda_topk_logprobs(ctx, dz, dt, N, V, k, dids, dlp, dbad, &err));
  GPU(xd_cuda_download(ctx, &bad, dbad, 4, &err));
  GPU(xd_cuda_download(ctx, ids, dids, (size_t)N * k * 4, &err));
  int inrange = 1;
  for (int i = 0; i < N * k; i++) inrange &= ids[i] >= 0 && ids[i] < V;
  fprintf(stderr, "    topk non-finite %s: bad_row %d (expect 3), ids in range %s\n", dtn(dt), bad, inrange ? "yes" : "NO");
  CHECK(bad == 3);
  CHECK(inrange);
  xd_err ce = {{0}};
  float *lp = xd_malloc((size_t)N * k * 4);
  CHECK(topk_logprobs(z, N, V, k, ids, lp, &ce) != 0); /* the CPU op refuses */
  xd_cuda_free(dz), xd_cuda_free(dids), xd_cuda_free(dbad), xd_cuda_free(dlp);
  free(z), free(ids), free(lp);
}

/* ---- fused loss ---------------------------------------------------------------------- */
enum { INPLACE = 0, OVERWRITE = 1, ACCUMULATE = 2 };
static const char *moden[] = {"in-place", "overwrite", "accumulate"};

typedef struct {
  int N, V, k;
  float tau, gamma, beta, dloss;
  xd_cuda_dtype in, out;
  int mode, threads;
  int dups;    /* inject duplicate teacher ids into some rows (a corrupt cache: summed per entry) */
  int maskall; /* every position masked */
  uint64_t seed;
} fcase;

/* a's loss again in row blocks, as the student's chunked LM head runs it: _begin, _rows over an
 * uneven split (the second block first, its logits and gradient at their own pointers), _end.
 * Every output must equal the whole-call's (g, lse, rce, rkl, res), bit for bit. */
static void split_check(const xd_cuda_kd_args *a, fcase f, const float *zs, const float *d0, const float *g,
                        const float *lse, const float *rce, const float *rkl, const xd_cuda_kd_result *res,
                        const char *name) {
  const int N = f.N, V = f.V;
  const size_t nz = (size_t)N * V, zi = f.in == XD_CUDA_BF16 ? 2 : 4, zo = f.out == XD_CUDA_BF16 ? 2 : 4;
  void *dz = up_as(zs, nz, f.in), *dd;
  if (f.mode == INPLACE) dd = dz;
  else if (f.mode == ACCUMULATE) dd = up_as(d0, nz, f.out);
  else dd = dev_poisoned(nz * zo);
  float *dlse = dev_poisoned((size_t)N * 4), *dce = dev_poisoned((size_t)N * 4), *dkl = dev_poisoned((size_t)N * 4);
  xd_cuda_kd_result *dres = dev_poisoned(sizeof(xd_cuda_kd_result)), r2;
  xd_cuda_kd_args b = *a;
  b.logits = dz, b.dlogits = dd, b.lse = dlse, b.row_ce = dce, b.row_kl = dkl, b.res = dres;
  const int cut = N / 3 + 1 < N ? N / 3 + 1 : N;
  float *g2 = xd_malloc(nz * 4), *l2 = xd_malloc((size_t)N * 4), *c2 = xd_malloc((size_t)N * 4), *k2 = xd_malloc((size_t)N * 4);
  GPU(xd_cuda_kd_loss_begin(ctx, &b, &err));
  for (int part = 1; part >= 0; part--) {
    const int r0 = part ? cut : 0, n = part ? N - cut : cut;
    xd_cuda_kd_args p = b;
    p.logits = (const char *)dz + (size_t)r0 * V * zi;
    p.dlogits = (char *)dd + (size_t)r0 * V * zo;
    GPU(xd_cuda_kd_loss_rows(ctx, &p, r0, n, &err));
  }
  GPU(xd_cuda_kd_loss_end(ctx, &b, &err));
  GPU(xd_cuda_download(ctx, &r2, dres, sizeof r2, &err));
  GPU(down_as(g2, dd, nz, f.out));
  GPU(xd_cuda_download(ctx, l2, dlse, (size_t)N * 4, &err));
  GPU(xd_cuda_download(ctx, c2, dce, (size_t)N * 4, &err));
  GPU(xd_cuda_download(ctx, k2, dkl, (size_t)N * 4, &err));
  const int same = memcmp(g2, g, nz * 4) == 0 && memcmp(l2, lse, (size_t)N * 4) == 0 &&
                   memcmp(c2, rce, (size_t)N * 4) == 0 && memcmp(k2, rkl, (size_t)N * 4) == 0 &&
                   memcmp(&r2.r.loss, &res->r.loss, sizeof(double)) == 0 && r2.r.ce == res->r.ce &&
                   r2.r.kl == res->r.kl && r2.r.count == res->r.count && r2.bad_pos == res->bad_pos;
  CHECKF(same, "%s: in row blocks [0,%d) [%d,%d) not bit for bit the whole call's (loss %.9g vs %.9g)", name, cut, cut,
         N, r2.r.loss, res->r.loss);
  if (dd != dz) xd_cuda_free(dd);
  xd_cuda_free(dz), xd_cuda_free(dlse), xd_cuda_free(dce), xd_cuda_free(dkl), xd_cuda_free(dres);
  free(g2), free(l2), free(c2), free(k2);
}

static void fused_case(fcase f) {
  xd_rng r;
  xd_rng_seed(&r, f.seed);
  const int N = f.N, V = f.V, k = f.k;
  const size_t nz = (size_t)N * V, nk = (size_t)N * k;
  if (f.mode == INPLACE) f.out = f.in;
  float *zt = xd_malloc(nz * 4), *zs = xd_malloc(nz * 4);
  fill_logits(&r, zt, N, V);
  for (size_t i = 0; i < nz; i++) zs[i] = (float)(0.8 * zt[i] + 1.2 * xd_rng_normal(&r));
  if (f.in == XD_CUDA_BF16) round_bf16(zs, nz);
  int32_t *ids = xd_malloc(nk * 4), *targets = xd_malloc((size_t)N * 4);
  float *lp = xd_malloc(nk * 4);
  xd_err ce = {{0}};
  CHECKF(topk_logprobs(zt, N, V, k, ids, lp, &ce) == 0, "cpu topk: %s", ce.msg);
  uint8_t *mask = xd_malloc((size_t)N);
  for (int n = 0; n < N; n++) {
    mask[n] = f.maskall ? 0 : (xd_rng_uniform(&r) < 0.85);
    /* mostly a token of the teacher's top-k (sometimes its argmax), else anywhere */
    const double u = xd_rng_uniform(&r);
    targets[n] = u < 0.6 ? ids[(size_t)n * k + xd_rng_u64(&r) % (uint64_t)k] : (int32_t)(xd_rng_u64(&r) % (uint64_t)V);
  }
  if (f.dups)
    for (int n = 0; n < N; n += 3) {
      int32_t *row = ids + (size_t)n * k;
      if (k >= 4) row[3] = row[1], row[k - 1] = row[1]; /* three entries of one id */
      if (k >= 2) row[0] = targets[n];                  /* and the target among them */
    }
  kd_config cfg = {.N = N, .V = V, .k = k, .tau = f.tau, .gamma = f.gamma, .beta = f.beta};
  /* CPU reference: forward, per-row values (N = 1 calls), backward in the matching mode */
  float *lse_ref = xd_malloc((size_t)N * 4), *ce_ref = xd_malloc((size_t)N * 4), *kl_ref = xd_malloc((size_t)N * 4);
  kd_result res_ref;
  CHECKF(kd_loss_forward(&cfg, zs, targets, mask, ids, lp, lse_ref, &res_ref, &ce) == 0, "cpu fwd: %s", ce.msg);
  for (int n = 0; n < N; n++) {
    ce_ref[n] = kl_ref[n] = 0;
    if (!mask[n]) continue;
    kd_config c1 = cfg;
    c1.N = 1;
    kd_result r1;
    float l1;
    kd_loss_forward(&c1, zs + (size_t)n * V, targets + n, NULL, ids + (size_t)n * k, lp + (size_t)n * k, &l1, &r1, &ce);
    ce_ref[n] = (float)r1.ce, kl_ref[n] = (float)r1.kl;
  }
  float *g_ref = xd_malloc(nz * 4), *g = xd_malloc(nz * 4), *d0 = NULL;
  if (f.mode == INPLACE) {
    memcpy(g_ref, zs, nz * 4);
    kd_loss_backward(&cfg, g_ref, g_ref, targets, mask, ids, lp, lse_ref, res_ref.count, f.dloss);
  } else {
    d0 = xd_malloc(nz * 4);
    const double sc = 0.3 / (fmax((double)res_ref.count, 1.0) * sqrt((double)V)); /* ~ the gradient's size */
    for (size_t i = 0; i < nz; i++) d0[i] = f.mode == ACCUMULATE ? (float)(sc * xd_rng_normal(&r)) : 0.f;
    if (f.out == XD_CUDA_BF16) round_bf16(d0, nz);
    memcpy(g_ref, d0, nz * 4);
    kd_loss_backward(&cfg, g_ref, zs, targets, mask, ids, lp, lse_ref, res_ref.count, f.dloss);
  }
  /* GPU */
  void *dz = up_as(zs, nz, f.in), *dd;
  if (f.mode == INPLACE) dd = dz;
  else if (f.mode == ACCUMULATE) dd = up_as(d0, nz, f.out);
  else dd = dev_poisoned(nz * (f.out == XD_CUDA_BF16 ? 2 : 4));
  int32_t *dtg = up_raw(targets, (size_t)N * 4), *dids = up_raw(ids, nk * 4);
  float *dlp = up_raw(lp, nk * 4);
  uint8_t *dmask = up_raw(mask, (size_t)N);
  float *dlse = dev_poisoned((size_t)N * 4), *dce = dev_poisoned((size_t)N * 4), *dkl = dev_poisoned((size_t)N * 4);
  xd_cuda_kd_result *dres = dev_poisoned(sizeof(xd_cuda_kd_result)), res;
  xd_cuda_kd_args a = {.cfg = cfg, .logits = dz, .logits_dtype = f.in, .dlogits = dd, .grad_dtype = f.out,
                       .accumulate = f.mode == ACCUMULATE, .dloss = f.dloss, .targets = dtg, .mask = dmask,
                       .tk_ids = dids, .tk_logp = dlp, .lse = dlse, .row_ce = dce, .row_kl = dkl, .res = dres,
                       .threads = f.threads};
  float *lse = xd_malloc((size_t)N * 4), *rce = xd_malloc((size_t)N * 4), *rkl = xd_malloc((size_t)N * 4);
  GPU(xd_cuda_kd_loss_fused(ctx, &a, &err));
  GPU(xd_cuda_download(ctx, &res, dres, sizeof res, &err));
  GPU(down_as(g, dd, nz, f.out));
  GPU(xd_cuda_download(ctx, lse, dlse, (size_t)N * 4, &err));
  GPU(xd_cuda_download(ctx, rce, dce, (size_t)N * 4, &err));
  GPU(xd_cuda_download(ctx, rkl, dkl, (size_t)N * 4, &err));
  char name[160];
  snprintf(name, sizeof name, "kd fused N%d V%d k%d tau%g %s->%s %s t%d%s%s", N, V, k, f.tau, dtn(f.in), dtn(f.out),
           moden[f.mode], f.threads, f.dups ? " dups" : "", f.maskall ? " all-masked" : "");
  fprintf(stderr, "    %s: count %lld (cpu %lld), bad_pos %lld\n", name, (long long)res.r.count,
          (long long)res_ref.count, (long long)res.bad_pos);
  CHECK(res.r.count == res_ref.count);
  CHECK(res.bad_pos == -1);
  scalar_check("  loss", res.r.loss, res_ref.loss, TOL_F32);
  scalar_check("  ce", res.r.ce, res_ref.ce, TOL_F32);
  scalar_check("  kl", res.r.kl, res_ref.kl, TOL_F32);
  rel_check("  lse per row", lse, lse_ref, (size_t)N, TOL_F32);
  rel_check("  ce per row", rce, ce_ref, (size_t)N, TOL_F32);
  rel_check("  kl per row", rkl, kl_ref, (size_t)N, TOL_F32);
  rel_check(f.out == XD_CUDA_BF16 ? "  dlogits (bf16)" : "  dlogits (fp32)", g, g_ref, nz,
            f.out == XD_CUDA_BF16 ? TOL_BF16 : TOL_F32);
  /* masked rows: zero unless accumulating (then untouched) */
  int masked_ok = 1;
  for (int n = 0; n < N; n++)
    if (!mask[n])
      for (int v = 0; v < V; v++) masked_ok &= g[(size_t)n * V + v] == (f.mode == ACCUMULATE ? d0[(size_t)n * V + v] : 0.f);
  CHECKF(masked_ok, "%s: masked rows not as the CPU op leaves them", name);
  split_check(&a, f, zs, d0, g, lse, rce, rkl, &res, name);
  xd_cuda_free(dz), xd_cuda_free(dtg), xd_cuda_free(dids), xd_cuda_free(dlp), xd_cuda_free(dmask);
  if (dd != dz) xd_cuda_free(dd);
  xd_cuda_free(dlse), xd_cuda_free(dce), xd_cuda_free(dkl), xd_cuda_free(dres);
  free(zt), free(zs), free(ids), free(targets), free(lp), free(mask), free(lse_ref), free(ce_ref), free(kl_ref);
  free(g_ref), free(g), free(d0), free(lse), free(rce), free(rkl);
}

/* Corrupt input (the CPU op refuses it): bad_pos names the lowest counted bad row, the loss is
 * NaN, no out-of-range access (memcheck). */
static void fused_bad_input(void) {
  const int N = 12, V = 1000, k = 8;
  xd_rng r;
  xd_rng_seed(&r, 123);
  float *z = xd_malloc((size_t)N * V * 4), *lp = xd_malloc((size_t)N * k * 4);
  int32_t *ids = xd_malloc((size_t)N * k * 4), targets[12];
  uint8_t mask[12];
  fill_logits(&r, z, N, V);
  xd_err ce = {{0}};
  topk_logprobs(z, N, V, k, ids, lp, &ce);
  for (int n = 0; n < N; n++) targets[n] = n, mask[n] = 1;
  mask[2] = 0, targets[2] = -5;        /* masked: ignored, as on the CPU */
  ids[(size_t)9 * k + 4] = V;          /* bad teacher id */
  targets[5] = V + 7;                  /* bad target: the lowest bad counted row */
  lp[(size_t)7 * k + 1] = NAN;         /* bad log-prob */
  kd_config cfg = {.N = N, .V = V, .k = k, .tau = 1, .gamma = 0.9f, .beta = 0.1f};
  kd_result rr;
  float lse_ref[12];
  CHECK(kd_loss_forward(&cfg, z, targets, mask, ids, lp, lse_ref, &rr, &ce) != 0);
  float *dz = up_raw(z, (size_t)N * V * 4), *dlp = up_raw(lp, (size_t)N * k * 4);
  int32_t *dids = up_raw(ids, (size_t)N * k * 4), *dtg = up_raw(targets, sizeof targets);
  uint8_t *dm = up_raw(mask, sizeof mask);
  float *dce = dev_poisoned(N * 4), *dkl = dev_poisoned(N * 4);
  xd_cuda_kd_result *dres = dev_poisoned(sizeof(xd_cuda_kd_result)), res;
  xd_cuda_kd_args a = {.cfg = cfg, .logits = dz, .logits_dtype = XD_CUDA_F32, .dlogits = dz, .grad_dtype = XD_CUDA_F32,
                       .dloss = 1, .targets = dtg, .mask = dm, .tk_ids = dids, .tk_logp = dlp, .row_ce = dce,
                       .row_kl = dkl, .res = dres};
  GPU(xd_cuda_kd_loss_fused(ctx, &a, &err));
  GPU(xd_cuda_download(ctx, &res, dres, sizeof res, &err));
  fprintf(stderr, "    kd fused bad input: bad_pos %lld (expect 5), loss %g (expect nan)\n", (long long)res.bad_pos,
          res.r.loss);
  CHECK(res.bad_pos == 5);
  CHECK(isnan(res.r.loss));
  { /* in row blocks [4, 12) then [0, 4): bad_pos is still the row among all, the lowest */
    GPU(xd_cuda_kd_loss_begin(ctx, &a, &err));
    xd_cuda_kd_args p = a;
    p.logits = p.dlogits = dz + (size_t)4 * V;
    GPU(xd_cuda_kd_loss_rows(ctx, &p, 4, N - 4, &err));
    p.logits = p.dlogits = dz;
    GPU(xd_cuda_kd_loss_rows(ctx, &p, 0, 4, &err));
    GPU(xd_cuda_kd_loss_end(ctx, &a, &err));
    GPU(xd_cuda_download(ctx, &res, dres, sizeof res, &err));
    CHECKF(res.bad_pos == 5, "kd fused bad input in row blocks: bad_pos %lld (expect 5)", (long long)res.bad_pos);
    CHECK(isnan(res.r.loss));
    /* a block outside [0, N) is refused */
    CHECK(xd_cuda_kd_loss_rows(ctx, &p, 8, N - 7, &err) != 0);
  }
  xd_cuda_free(dz), xd_cuda_free(dlp), xd_cuda_free(dids), xd_cuda_free(dtg), xd_cuda_free(dm);
  xd_cuda_free(dce), xd_cuda_free(dkl), xd_cuda_free(dres);
  free(z), free(lp), free(ids);
}

static int quick;

static void test_topk(void) {
  topk_case(64, 1000, 32, XD_CUDA_F32, 0, 1);
  topk_case(64, 1000, 8, XD_CUDA_BF16, 0, 2);
  topk_case(20, 1003, 100, XD_CUDA_F32, 0, 3);  /* unaligned rows: scalar path */
  topk_case(8, 8192, 64, XD_CUDA_BF16, 1, 4);  /* ties: exact radix select */
  topk_nonfinite(XD_CUDA_F32);
  topk_nonfinite(XD_CUDA_BF16);
  if (quick) return;
  topk_case(300, 1000, 256, XD_CUDA_F32, 0, 5);
  topk_case(256, 151936, 256, XD_CUDA_BF16, 0, 6);
  topk_case(256, 151936, 64, XD_CUDA_F32, 0, 7);
  topk_case(64, 151936, 1024, XD_CUDA_F32, 0, 8);
  topk_case(32, 151936, 256, XD_CUDA_BF16, 1, 9);
  topk_case(32, 151936, 32, XD_CUDA_F32, 1, 10);
}

static void test_fused(void) {
  const float g0 = KD_DEFAULT_GAMMA, b0 = KD_DEFAULT_BETA;
  fused_case((fcase){64, 1000, 8, 1.f, g0, b0, 1.f, XD_CUDA_BF16, XD_CUDA_BF16, INPLACE, 0, 0, 0, 11});
  fused_case((fcase){64, 1000, 32, 2.f, g0, b0, 1.f, XD_CUDA_F32, XD_CUDA_F32, OVERWRITE, 256, 0, 0, 12});
  fused_case((fcase){64, 1000, 32, 1.f, 0.5f, 0.5f, 2.5f, XD_CUDA_BF16, XD_CUDA_F32, ACCUMULATE, 1024, 1, 0, 13});
  fused_case((fcase){40, 1003, 50, 1.5f, g0, b0, 1.f, XD_CUDA_F32, XD_CUDA_F32, ACCUMULATE, 0, 1, 0, 14});
  fused_case((fcase){16, 1000, 8, 1.f, g0, b0, 1.f, XD_CUDA_F32, XD_CUDA_F32, INPLACE, 0, 0, 1, 15});
  fused_bad_input();
  /* rows longer than the shared-memory row cache: pass 2 reads the tail from global memory */
  fused_case((fcase){6, 151936, 64, 1.f, g0, b0, 1.f, XD_CUDA_F32, XD_CUDA_F32, INPLACE, 0, 0, 0, 22});
  fused_case((fcase){6, 151936, 32, 1.f, g0, b0, 1.f, XD_CUDA_BF16, XD_CUDA_BF16, ACCUMULATE, 1024, 1, 0, 23});
  if (quick) return;
  fused_case((fcase){300, 1000, 256, 1.f, g0, b0, 1.f, XD_CUDA_F32, XD_CUDA_BF16, OVERWRITE, 512, 0, 0, 16});
  fused_case((fcase){200, 151936, 256, 1.f, g0, b0, 1.f, XD_CUDA_BF16, XD_CUDA_BF16, INPLACE, 0, 0, 0, 17});
  fused_case((fcase){200, 151936, 64, 2.f, g0, b0, 1.f, XD_CUDA_F32, XD_CUDA_F32, INPLACE, 1024, 0, 0, 18});
  fused_case((fcase){200, 151936, 256, 1.5f, g0, b0, 1.f, XD_CUDA_BF16, XD_CUDA_F32, ACCUMULATE, 512, 0, 0, 19});
  fused_case((fcase){64, 151936, 1024, 1.f, g0, b0, 1.f, XD_CUDA_F32, XD_CUDA_BF16, OVERWRITE, 256, 1, 0, 20});
  fused_case((fcase){64, 151936, 32, 1.f, g0, b0, 1.f, XD_CUDA_F32, XD_CUDA_F32, OVERWRITE, 0, 0, 0, 21});
}

/* ---- benchmark ------------------------------------------------------------------------ */
static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}
/* Median of `reps` synchronised timings (host clock around launch + sync), after 2 warm-ups. */
typedef int (*bench_fn)(void *arg);
static double time_med(bench_fn fn, void *arg, int reps) {
  double t[32];
  for (int i = 0; i < 2; i++) fn(arg);
  GPUX(xd_cuda_sync(ctx, &err));
  for (int i = 0; i < reps; i++) {
    const double t0 = now_s();
    if (fn(arg)) GPUX(-1);
    GPUX(xd_cuda_sync(ctx, &err));
    t[i] = now_s() - t0;
  }
  for (int i = 1; i < reps; i++)
    for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
      const double x = t[j];
      t[j] = t[j - 1], t[j - 1] = x;
    }
  return t[reps / 2];
}
typedef struct { void *dst; const void *src; size_t bytes; } copy_arg;
static int run_copy(void *p) {
  copy_arg *c = p;
  return xd_cuda_copy(ctx, c->dst, c->src, c->bytes, &err);
}
static int run_fused(void *p) { return xd_cuda_kd_loss_fused(ctx, (xd_cuda_kd_args *)p, &err); }
typedef struct { const void *z; xd_cuda_dtype dt; int N, V, k; int32_t *ids; float *lp; } topk_arg;
static int run_topk(void *p) {
  topk_arg *t = p;
  return xd_cuda_topk_logprobs(ctx, t->z, t->dt, t->N, t->V, t->k, t->ids, t->lp, NULL, &err);
}

/* xd_cuda_token_logprobs (the evaluator's device-side scoring) against the host's arithmetic
 * (eval/lm_logits.c: max and first argmax in fp32, log-sum-exp in double, sequential): random
 * rows at a 128K vocabulary plus rows with a tied maximum (the first index must win), the
 * maximum at index 0 and at V - 1, and scored tokens that are and are not the argmax. */
static void test_token_logprobs(void) {
  const int V = 128256, R = 9, n = 24;
  xd_rng r;
  xd_rng_seed(&r, 4242);
  float *z = xd_malloc((size_t)R * V * sizeof(float));
  fill_logits(&r, z, R, V);
  z[(size_t)1 * V + 0] = 40.f;                                  /* row 1: max at 0 */
  z[(size_t)2 * V + V - 1] = 40.f;                              /* row 2: max at V - 1 */
  z[(size_t)3 * V + 777] = z[(size_t)3 * V + 90000] = 50.f;     /* row 3: tie, first wins */
  for (int v = 0; v < V; v++) z[(size_t)4 * V + v] = -3.25f;    /* row 4: all equal */
  int32_t rows[24], toks[24];
  for (int i = 0; i < n; i++) {
    rows[i] = i % R;
    toks[i] = (int32_t)(xd_rng_u64(&r) % (uint64_t)V);
  }
  toks[1] = 0, toks[2] = V - 1, toks[3] = 90000, toks[12] = 777, toks[4] = 0; /* argmax hits and a tie loser */
  rows[12] = 3;
  float *d_z = up_raw(z, (size_t)R * V * sizeof(float));
  int32_t *d_rows = up_raw(rows, sizeof rows), *d_toks = up_raw(toks, sizeof toks);
  double *d_lp = dev_poisoned(n * sizeof(double));
  int32_t *d_g = dev_poisoned(n * sizeof(int32_t));
  if (xd_cuda_token_logprobs(ctx, d_lp, d_g, d_z, V, d_rows, d_toks, n, &err)) gpu_fail();
  double lp[24];
  int32_t g[24];
  if (xd_cuda_download(ctx, lp, d_lp, sizeof lp, &err) || xd_cuda_download(ctx, g, d_g, sizeof g, &err)) gpu_fail();
  double worst = 0;
  int greedy_ok = 1, hits = 0;
  for (int i = 0; i < n; i++) {
    const float *x = z + (size_t)rows[i] * V;
    float mx = x[0];
    int am = 0;
    for (int v = 1; v < V; v++)
      if (x[v] > mx) mx = x[v], am = v;
    double sum = 0;
    for (int v = 0; v < V; v++) sum += exp((double)x[v] - (double)mx);
    const double ref = (double)x[toks[i]] - (double)mx - log(sum);
    const double d = fabs(lp[i] - ref) / fmax(fabs(ref), 1.0); /* ~0 for a dominant argmax */
    worst = d > worst ? d : worst;
    greedy_ok &= g[i] == (am == toks[i]);
    hits += am == toks[i];
  }
  fprintf(stderr, "  token log-probs, V %d, %d tokens (%d argmax hits): max rel err %.2e vs the host's\n", V, n, hits, worst);
  CHECKF(worst <= 1e-12, "rel err %.3g", worst);
  CHECK(greedy_ok);
  CHECK(hits == 4 && g[4] == 1 && g[3] == 0); /* row 4: all equal, index 0 wins; row 3: the tie's second is not */
  xd_cuda_free(d_z), xd_cuda_free(d_rows), xd_cuda_free(d_toks), xd_cuda_free(d_lp), xd_cuda_free(d_g);
  free(z);
}

static void bench(void) {
  const int N = 4096, V = 128256, k = KD_DEFAULT_TOPK, R = 64, reps = 9;
  const size_t nz = (size_t)N * V;
  fprintf(stderr, "  benchmark: N %d, V %d, k %d (SPEC default), all rows counted\n", N, V, k);
  /* R realistic rows made on the host, tiled over N (distinct addresses: no cache effect) */
  xd_rng r;
  xd_rng_seed(&r, 7);
  float *zt = xd_malloc((size_t)R * V * 4), *zs = xd_malloc((size_t)R * V * 4);
  fill_logits(&r, zt, R, V);
  for (size_t i = 0; i < (size_t)R * V; i++) zs[i] = (float)(0.8 * zt[i] + 1.2 * xd_rng_normal(&r));
  uint16_t *tb, *sb, *sb2, *cpy;
  float *tf, *sf, *gf;
  GPUX(xd_cuda_malloc((void **)&tb, nz * 2, &err));
  GPUX(xd_cuda_malloc((void **)&sb, nz * 2, &err));
  GPUX(xd_cuda_malloc((void **)&sb2, nz * 2, &err));
  GPUX(xd_cuda_malloc((void **)&cpy, nz * 4, &err));
  GPUX(xd_cuda_malloc((void **)&tf, nz * 4, &err));
  GPUX(xd_cuda_malloc((void **)&sf, nz * 4, &err));
  GPUX(xd_cuda_malloc((void **)&gf, nz * 4, &err));
  {
    void *a = up_as(zt, (size_t)R * V, XD_CUDA_BF16), *b = up_as(zs, (size_t)R * V, XD_CUDA_BF16);
    for (int n0 = 0; n0 < N; n0 += R) {
      GPUX(xd_cuda_copy(ctx, tb + (size_t)n0 * V, a, (size_t)R * V * 2, &err));
      GPUX(xd_cuda_copy(ctx, sb + (size_t)n0 * V, b, (size_t)R * V * 2, &err));
    }
    GPUX(xd_cuda_bf16_to_f32(ctx, tf, tb, nz, &err));
    GPUX(xd_cuda_bf16_to_f32(ctx, sf, sb, nz, &err));
    GPUX(xd_cuda_sync(ctx, &err));
    xd_cuda_free(a), xd_cuda_free(b);
  }
  int32_t *ids, *tg;
  float *lp, *rce, *rkl, *lse;
  xd_cuda_kd_result *res;
  GPUX(xd_cuda_malloc((void **)&ids, (size_t)N * k * 4, &err));
  GPUX(xd_cuda_malloc((void **)&lp, (size_t)N * k * 4, &err));
  GPUX(xd_cuda_malloc((void **)&rce, (size_t)N * 4, &err));
  GPUX(xd_cuda_malloc((void **)&rkl, (size_t)N * 4, &err));
  GPUX(xd_cuda_malloc((void **)&lse, (size_t)N * 4, &err));
  GPUX(xd_cuda_malloc((void **)&res, sizeof *res, &err));
  int32_t *htg = xd_malloc((size_t)N * 4);
  for (int n = 0; n < N; n++) htg[n] = (int32_t)(xd_rng_u64(&r) % (uint64_t)V);
  tg = up_raw(htg, (size_t)N * 4);

  /* bounds: device copies of the bf16 and fp32 logits' sizes (read + write each) */
  copy_arg c2 = {cpy, sb, nz * 2}, c4 = {cpy, sf, nz * 4};
  const double tc2 = time_med(run_copy, &c2, reps), tc4 = time_med(run_copy, &c4, reps);
  const double bw2 = 2.0 * nz * 2 / tc2, bw4 = 2.0 * nz * 4 / tc4;
  fprintf(stderr, "    cudaMemcpy D2D %.2f GB: %.3f ms = %.0f GB/s (read+write)\n", nz * 2 / 1e9, tc2 * 1e3, bw2 / 1e9);
  fprintf(stderr, "    cudaMemcpy D2D %.2f GB: %.3f ms = %.0f GB/s (read+write)\n", nz * 4 / 1e9, tc4 * 1e3, bw4 / 1e9);
  printf("RESULT copy bf16-size %.3f ms %.0f GB/s; fp32-size %.3f ms %.0f GB/s\n", tc2 * 1e3, bw2 / 1e9, tc4 * 1e3,
         bw4 / 1e9);

  /* teacher top-k (one read of the logits is the minimum) */
  topk_arg ta = {tb, XD_CUDA_BF16, N, V, k, ids, lp};
  double t = time_med(run_topk, &ta, reps);
  printf("RESULT topk bf16 N%d V%d k%d: %.3f ms, %.0f GB/s of one read (copy %.0f GB/s: %.2f)\n", N, V, k, t * 1e3,
         nz * 2 / t / 1e9, bw2 / 1e9, nz * 2 / t / bw2);
  topk_arg tf_ = {tf, XD_CUDA_F32, N, V, k, ids, lp};
  t = time_med(run_topk, &tf_, reps);
  printf("RESULT topk fp32 N%d V%d k%d: %.3f ms, %.0f GB/s of one read (copy %.0f GB/s: %.2f)\n", N, V, k, t * 1e3,
         nz * 4 / t / 1e9, bw4 / 1e9, nz * 4 / t / bw4);
  GPUX(xd_cuda_topk_logprobs(ctx, tb, XD_CUDA_BF16, N, V, k, ids, lp, NULL, &err));

  /* fused loss: minimum traffic = one read of the logits + one write of the gradient */
  kd_config cfg = kd_config_default(N, V);
  xd_cuda_kd_args a = {.cfg = cfg, .dloss = 1, .targets = tg, .tk_ids = ids, .tk_logp = lp, .lse = lse,
                       .row_ce = rce, .row_kl = rkl, .res = res};
  struct { const char *name; void *z; xd_cuda_dtype in; void *d; xd_cuda_dtype out; int acc, threads; double bw; } cf[] = {
      {"bf16 in-place", sb, XD_CUDA_BF16, sb, XD_CUDA_BF16, 0, 0, bw2},
      {"bf16 in-place", sb, XD_CUDA_BF16, sb, XD_CUDA_BF16, 0, 256, bw2},
      {"bf16 in-place", sb, XD_CUDA_BF16, sb, XD_CUDA_BF16, 0, 1024, bw2},
      {"bf16 -> bf16 buffer", tb, XD_CUDA_BF16, sb2, XD_CUDA_BF16, 0, 0, bw2},
      {"fp32 in-place", sf, XD_CUDA_F32, sf, XD_CUDA_F32, 0, 0, bw4},
      {"fp32 in-place", sf, XD_CUDA_F32, sf, XD_CUDA_F32, 0, 1024, bw4},
      {"bf16 -> fp32 buffer", tb, XD_CUDA_BF16, gf, XD_CUDA_F32, 0, 0, 0},
      {"bf16 -> fp32 buffer +=", tb, XD_CUDA_BF16, gf, XD_CUDA_F32, 1, 0, 0},
  };
  for (size_t i = 0; i < sizeof cf / sizeof cf[0]; i++) {
    a.logits = cf[i].z, a.logits_dtype = cf[i].in, a.dlogits = cf[i].d, a.grad_dtype = cf[i].out;
    a.accumulate = cf[i].acc, a.threads = cf[i].threads;
    t = time_med(run_fused, &a, reps);
    const double isz = cf[i].in == XD_CUDA_BF16 ? 2 : 4, osz = cf[i].out == XD_CUDA_BF16 ? 2 : 4;
    const double bytes = nz * (isz + osz * (cf[i].acc ? 2 : 1));
    const int th = cf[i].threads ? cf[i].threads : 512;
    if (cf[i].bw > 0)
      printf("RESULT kd fused %-22s threads %4d: %.3f ms, %.0f GB/s of min traffic %.2f GB, %.2f of the copy bound\n",
             cf[i].name, th, t * 1e3, bytes / t / 1e9, bytes / 1e9, bytes / t / cf[i].bw);
    else
      printf("RESULT kd fused %-22s threads %4d: %.3f ms, %.0f GB/s of min traffic %.2f GB (copy fp32 %.0f GB/s: %.2f)\n",
             cf[i].name, th, t * 1e3, bytes / t / 1e9, bytes / 1e9, bw4 / 1e9, bytes / t / bw4);
  }
  xd_cuda_kd_result hr;
  GPUX(xd_cuda_download(ctx, &hr, res, sizeof hr, &err));
  fprintf(stderr, "    last loss %.6g (count %lld, bad_pos %lld)\n", hr.r.loss, (long long)hr.r.count, (long long)hr.bad_pos);
  xd_cuda_free(tb), xd_cuda_free(sb), xd_cuda_free(sb2), xd_cuda_free(cpy), xd_cuda_free(tf), xd_cuda_free(sf);
  xd_cuda_free(gf), xd_cuda_free(ids), xd_cuda_free(lp), xd_cuda_free(rce), xd_cuda_free(rkl), xd_cuda_free(lse);
  xd_cuda_free(res), xd_cuda_free(tg);
  free(zt), free(zs), free(htg);
}
static void test_bench(void) { bench(); }

int main(int argc, char **argv) {
  quick = gpu_test_begin(argc, argv);
  RUN(test_topk);
  RUN(test_fused);
  RUN(test_token_logprobs);
  printf("max rel errors: fp32 outputs %.2e, bf16 outputs %.2e, loss scalars %.2e\n", worst_f32, worst_bf16,
         worst_loss);
  if (!quick) RUN(test_bench);
  return gpu_test_end();
}
