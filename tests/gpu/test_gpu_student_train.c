/* GPU test of the student's training forward and backward (src/model/student/student_cuda_train.c,
 * issue #8: stage II on CUDA) against the fp32 CPU path (student_train_impl.inc, itself checked
 * by float64 finite differences in tests/test_student_backward_f64.c).
 *
 * Students: `init` from every fixture teacher family (head dims below 64: the fp32 mLSTM and the
 * any-d SWA kernels), hybrid parameters perturbed so every branch matters, W = 5 < T = 23,
 * S = 2, chunk 4, B = 2; plus a random llama-shaped student with head dim = d_phi = 64 and chunk
 * 64 (the tensor-core mLSTM forward and the flash attention forward), T = 160, W = 32, S = 4.
 * Per student, with random targets, a loss mask with holes and a random teacher top-k:
 *   1. logits of the GPU forward vs the CPU's (relative L2);
 *   2. loss, CE and KL of the fused GPU KD loss vs kd_loss_forward on the CPU logits;
 *   3. the gradient of EVERY parameter tensor after the GPU backward vs xd_student_backward:
 *      relative L2 per tensor, and over all tensors together;
 *   4. the same GPU step with activation recomputation: logits and every gradient bit-identical;
 *   5. the same step again: every gradient bit for bit (run-to-run determinism: the SWA backward
 *      is the tensor-core kernel for head dims 16k <= 128 and the fixed-order fallback otherwise;
 *      the fallback summed with float atomics until session 8); then a backward without
 *      zero_grad: twice the gradients (the micro-batch accumulation; 1e-5);
 *   6. the LM head in row blocks (create's head_rows N/3 + 1): the loss and every gradient as
 *      with the whole logits (1e-6 / 1e-5), run to run bit for bit, a second backward refused.
 * Variants: qwen3 with the gate soft cap, and with the stock xLSTM normaliser (looser bounds, below).
 * Bounds: logits 2e-2 and loss 1e-2 (bf16 weights and GEMM inputs, as test_gpu_student); per
 * tensor gradient 6e-2 and all together 2e-2: the backward adds bf16 roundings of every GEMM's
 * incoming gradient and of dlogits to the forward's (an error in the maths, a wrong sign, a
 * missing term or a gradient in the wrong slot is O(1) for that tensor).
 * Exits 77 without a CUDA device; "quick" (memcheck) runs two families and the tc student. */
#include <math.h>
#include <stdint.h>
#include <string.h>
#include "core/core.h"
#include "model/student/student.h"
#include "model/student/student_cuda_train.h"
#include "model/student/student_train.h"
#include "distill/stages.h"
#include "ops/cpu/kd_loss.h"
#include "ops/cuda/cuda_ops.h"
#include "student_fixture.h"
#include "test.h"
#include "gpu_test_util.h"

static const double TOL_LOGITS = 2e-2, TOL_LOSS = 1e-2, TOL_TENSOR = 6e-2, TOL_ALL = 2e-2;
/* The stock xLSTM normaliser max(|q.n|, exp(-m)) is not smooth: where its two branches are
 * within bf16 rounding of each other the GPU takes the other branch than the CPU and that
 * token's gradient changes by O(1). Measured with it: per tensor up to 0.36, all together 2.3e-2
 * (the forward stays within 6e-3). Its op-level backward is checked on identical fp32 inputs in
 * test_gpu_student_ops; here it gets looser bounds. */
static const double TOL_TENSOR_MAXNORM = 0.6, TOL_ALL_MAXNORM = 5e-2;
static double tol_tensor = TOL_TENSOR, tol_all = TOL_ALL;
static double worst_logits, worst_loss, worst_tensor, worst_all;
static char worst_name[200];

/* Random weights for a student made by xd_student_create: every tensor N(mean, sc^2) with sc =
 * 1/sqrt(fan-in) for matrices and 0.1 for vectors, norm weights around 1; then the forget-gate
 * biases 3..6 over the heads, as SPEC's initialisation (long memory). */
static void fill_random(xd_student *s, uint64_t seed) {
  xd_rng r;
  xd_rng_seed(&r, seed);
  const xd_params *p = &s->params;
  for (int i = 0; i < p->n; i++) {
    const xd_param_info *t = &p->t[i];
    float *w = xd_params_data(p, i);
    const double sc = t->ndim >= 2 ? 1.0 / sqrt((double)t->shape[t->ndim - 1]) : 0.1;
    const double mean = t->ndim == 1 && strstr(t->name, "norm") ? 1.0 : 0.0;
    for (size_t k = 0; k < t->numel; k++) w[k] = (float)(mean + sc * xd_rng_normal(&r));
  }
  for (int l = 0; l < s->cfg.n_layers; l++) {
    xd_hybrid_layer *Y = &s->hl[l];
    for (int h = 0; h < s->cfg.n_heads; h++) Y->b_f[h] = 3.0f + 3.0f * h / (float)s->cfg.n_heads;
  }
}

/* The case: CPU and GPU forward, loss and backward on the same batch. */
static void run_case(const char *name, xd_student *s, int B, int T, uint64_t seed) {
  xd_err e = {{0}};
  const int V = s->cfg.vocab, N = B * T, k = V < 16 ? V : 8;
  xd_rng r;
  xd_rng_seed(&r, seed);
  int32_t *ids = xd_malloc((size_t)N * 4), *targets = xd_malloc((size_t)N * 4), *tk = xd_malloc((size_t)N * k * 4);
  uint8_t *mask = xd_malloc((size_t)N);
  float *tlp = xd_malloc((size_t)N * k * 4);
  int *perm = xd_malloc((size_t)V * sizeof(int));
  for (int i = 0; i < N; i++) {
    ids[i] = (int32_t)(xd_rng_u64(&r) % (uint64_t)V);
    targets[i] = (int32_t)(xd_rng_u64(&r) % (uint64_t)V);
    mask[i] = xd_rng_u64(&r) % 10 != 0;
    for (int v = 0; v < V; v++) perm[v] = v;
    double lp = -0.5 - xd_rng_uniform(&r);
    for (int j = 0; j < k; j++) { /* k distinct ids, log-probs descending */
      const int pick = j + (int)(xd_rng_u64(&r) % (uint64_t)(V - j));
      const int t = perm[j]; perm[j] = perm[pick]; perm[pick] = t;
      tk[(size_t)i * k + j] = perm[j];
      tlp[(size_t)i * k + j] = (float)lp;
      lp -= 0.2 + xd_rng_uniform(&r);
    }
  }
  mask[0] = 1;
  kd_config kd = kd_config_default(N, V);
  kd.k = k;
  /* CPU */
  xd_student_train_acts acts;
  xd_student_train_acts_alloc(&acts, s, B, T);
  float *cpu = xd_malloc((size_t)N * V * 4), *gpu = xd_malloc((size_t)N * V * 4), *lse = xd_malloc((size_t)N * 4);
  kd_result rc_cpu;
  CHECKF(xd_student_forward_train(s, &acts, ids, cpu, &e) == 0, "%s: %s", name, e.msg);
  CHECKF(kd_loss_forward(&kd, cpu, targets, mask, tk, tlp, lse, &rc_cpu, &e) == 0, "%s: %s", name, e.msg);
  /* GPU forward before the CPU backward overwrites cpu with its gradient */
  xd_params_cuda *pd = NULL;
  xd_student_cuda_train *m = NULL, *m2 = NULL, *m3 = NULL;
  float **g1 = NULL; /* the GPU gradients of the default path, per tensor */
  void *d_t = NULL, *d_mask = NULL, *d_tk = NULL, *d_tlp = NULL, *d_ce = NULL, *d_kl = NULL, *d_res = NULL;
  if (xd_params_cuda_create(&pd, ctx, &s->params, &e) || xd_student_cuda_train_create(&m, ctx, s, pd, B, T, 0, 0, &e)) {
    CHECKF(0, "%s: create: %s", name, e.msg);
    goto out;
  }
  if (xd_student_cuda_train_forward(m, ids, &e) || xd_cuda_download(ctx, gpu, xd_student_cuda_train_logits(m), (size_t)N * V * 4, &e)) {
    CHECKF(0, "%s: forward: %s", name, e.msg);
    goto out;
  }
  const double el = rel_l2(gpu, cpu, (size_t)N * V);
  worst_logits = fmax(worst_logits, el);
  CHECKF(el <= TOL_LOGITS, "%s: logits rel L2 %.3e", name, el);
  d_t = up_raw(targets, (size_t)N * 4);
  d_mask = up_raw(mask, (size_t)N);
  d_tk = up_raw(tk, (size_t)N * k * 4);
  d_tlp = up_raw(tlp, (size_t)N * k * 4);
  d_ce = dev_poisoned((size_t)N * 4);
  d_kl = dev_poisoned((size_t)N * 4);
  d_res = dev_poisoned(sizeof(xd_cuda_kd_result));
  xd_cuda_kd_args a;
  xd_student_cuda_train_kd_args(m, &kd, &a);
  a.targets = d_t;
  a.mask = d_mask;
  a.tk_ids = d_tk;
  a.tk_logp = d_tlp;
  a.row_ce = d_ce;
  a.row_kl = d_kl;
  a.res = d_res;
  xd_cuda_kd_result rg;
  if (xd_cuda_kd_loss_fused(ctx, &a, &e) || xd_cuda_download(ctx, &rg, d_res, sizeof rg, &e)) {
    CHECKF(0, "%s: kd loss: %s", name, e.msg);
    goto out;
  }
  const double eloss = fmax(fabs(rg.r.loss - rc_cpu.loss) / fabs(rc_cpu.loss),
                            fmax(fabs(rg.r.ce - rc_cpu.ce) / fabs(rc_cpu.ce), fabs(rg.r.kl - rc_cpu.kl) / fabs(rc_cpu.kl)));
  worst_loss = fmax(worst_loss, eloss);
  CHECKF(eloss <= TOL_LOSS && rg.r.count == rc_cpu.count, "%s: loss %.6g / CE %.6g / KL %.6g vs CPU %.6g / %.6g / %.6g (count %lld vs %lld)",
         name, rg.r.loss, rg.r.ce, rg.r.kl, rc_cpu.loss, rc_cpu.ce, rc_cpu.kl, (long long)rg.r.count, (long long)rc_cpu.count);
  /* backward on both */
  kd_loss_backward(&kd, cpu, cpu, targets, mask, tk, tlp, lse, rc_cpu.count, 1.0f);
  xd_params_zero_grad(&s->params);
  xd_student_backward(s, &acts, ids, cpu);
  if (xd_params_cuda_zero_grad(pd, &e) || xd_student_cuda_train_backward(m, &e) || xd_cuda_sync(ctx, &e)) {
    CHECKF(0, "%s: backward: %s", name, e.msg);
    goto out;
  }
  double num = 0, den = 0, wt = 0;
  const char *wn = "";
  g1 = xd_calloc((size_t)s->params.n, sizeof *g1);
  for (int i = 0; i < s->params.n; i++) {
    const xd_param_info *t = &s->params.t[i];
    const float *gc = xd_params_grad(&s->params, i);
    float *gg = g1[i] = down(xd_params_cuda_grad(pd, i), t->numel);
    double n1 = 0, d1 = 0;
    for (size_t j = 0; j < t->numel; j++) {
      const double dd = (double)gg[j] - gc[j];
      n1 += dd * dd;
      d1 += (double)gc[j] * gc[j];
    }
    num += n1;
    den += d1;
    const double rel = isnan(n1) ? INFINITY : d1 > 0 ? sqrt(n1 / d1) : sqrt(n1);
    if (rel > wt) { wt = rel; wn = t->name; }
    CHECKF(rel <= tol_tensor, "%s: gradient of %s rel L2 %.3e (|g| %.3e)", name, t->name, rel, sqrt(d1));
  }
  const double eall = sqrt(num / den);
  CHECKF(eall <= tol_all, "%s: all gradients rel L2 %.3e", name, eall);
  { /* run to run: the same forward, loss and backward again give every gradient bit for bit */
    const size_t nt = s->params.n_train;
    float *ga = down(xd_params_cuda_grad_all(pd), nt);
    const int rc2 = xd_student_cuda_train_forward(m, ids, &e) || xd_cuda_kd_loss_fused(ctx, &a, &e) ||
                    xd_params_cuda_zero_grad(pd, &e) || xd_student_cuda_train_backward(m, &e) || xd_cuda_sync(ctx, &e);
    CHECKF(rc2 == 0, "%s: second step: %s", name, e.msg);
    if (rc2 == 0) {
      float *g2 = down(xd_params_cuda_grad_all(pd), nt);
      /* bit for bit where the SWA backward is the tensor-core kernel (head dim a multiple of 16
       * up to 128); the fallback kernel sums dK/dV with float atomics, whose last bits reach the
       * fp32 QK-norm weight gradients directly (qwen3, olmo at head dim 12): reported only */
      const int hd = s->cfg.head_dim, exact = hd <= 256; /* the tensor-core SWA backward or its fixed-order fallback: deterministic */
      const double noise = exact ? 0.0 : rel_l2(g2, ga, nt); /* run to run, atomic fallback only */
      if (exact) {
        CHECKF(memcmp(ga, g2, nt * 4) == 0, "%s: the gradients of two identical steps differ", name);
      } else {
        size_t nd = 0;
        for (size_t j = 0; j < nt; j++) nd += memcmp(&ga[j], &g2[j], 4) != 0;
        fprintf(stderr, "%-22s two identical steps (atomic SWA backward, head dim %d): %zu of %zu gradient floats differ, rel L2 %.2e\n",
                name, hd, nd, nt, rel_l2(g2, ga, nt));
      }
      /* a second backward without zero_grad (a later micro-batch) adds: 2 g, up to rounding
       * where one backward adds several terms to a tensor (the tied embedding): bound 1e-5. Under
       * the atomic SWA fallback the third backward's dK/dV may differ from the second's in the
       * last bits, and one such bit can flip the bf16 rounding of a dv / dk element, which the k|v
       * projection's weight gradient then carries (measured: 2.43e-5 over all gradients, 96% of
       * it in a v_proj weight at 6.7e-5, in runs where the two identical steps above agreed to
       * 3e-9 and in others where they differed by 4.9e-5): bound 1e-4 there. An accumulation that
       * overwrites instead of adding would be off by ~0.5. */
      if (xd_student_cuda_train_backward(m, &e) || xd_cuda_sync(ctx, &e)) {
        CHECKF(0, "%s: accumulating backward: %s", name, e.msg);
      } else {
        float *g3 = down(xd_params_cuda_grad_all(pd), nt);
        for (size_t j = 0; j < nt; j++) g2[j] *= 2.0f;
        const double ea = rel_l2(g3, g2, nt);
        /* the tensor that differs most, named in the report */
        double wr = 0, wshare = 0;
        const char *wname = "";
        {
          double tot = 0;
          for (size_t j = 0; j < nt; j++) tot += ((double)g3[j] - g2[j]) * ((double)g3[j] - g2[j]);
          for (int i = 0; i < s->params.n; i++) {
            const xd_param_info *t = &s->params.t[i];
            const size_t o = (size_t)(xd_params_data(&s->params, i) - s->params.data);
            if (!t->trainable || o + t->numel > nt) continue;
            double n1 = 0, d1 = 0;
            for (size_t j = o; j < o + t->numel; j++) {
              n1 += ((double)g3[j] - g2[j]) * ((double)g3[j] - g2[j]);
              d1 += (double)g2[j] * g2[j];
            }
            if (tot > 0 && n1 / tot > wshare) wshare = n1 / tot, wname = t->name, wr = d1 > 0 ? sqrt(n1 / d1) : sqrt(n1);
          }
        }
        CHECKF(ea <= (exact ? 1e-5 : 1e-4), "%s: gradients after a second backward vs 2x one: rel L2 %.3e (run-to-run noise %.3e; "
               "%.0f%% of the difference in %s, rel L2 %.3e there)", name, ea, noise, 100 * wshare, wname, wr);
        free(g3);
      }
      /* CUDA graphs (on by default): the first forward and the first backward of each zero_grad
       * state ran as launched, the second captured a graph. Here the forward's graph is replayed
       * (the same logits), then the zero-grad backward's (must give the first step's gradients:
       * bit for bit where exact), then the accumulating one captured (second call) and replayed:
       * the two accumulated results equal each other. */
      float *g4 = NULL, *g5 = NULL, *g6 = NULL;
      { /* the forward's graph (captured by the second step) replayed: the same logits, bit for bit */
        float *l2 = down(xd_student_cuda_train_logits(m), (size_t)N * V), *l3 = NULL;
        const int rcf = xd_student_cuda_train_forward(m, ids, &e) || xd_cuda_sync(ctx, &e);
        CHECKF(rcf == 0, "%s: forward graph replay: %s", name, e.msg);
        if (rcf == 0) {
          l3 = down(xd_student_cuda_train_logits(m), (size_t)N * V);
          CHECKF(memcmp(l2, l3, (size_t)N * V * 4) == 0, "%s: forward graph replay: logits differ (rel L2 %.3e)", name,
                 rel_l2(l3, l2, (size_t)N * V));
        }
        free(l2), free(l3);
      }
      const int rc4 = xd_params_cuda_zero_grad(pd, &e) || xd_student_cuda_train_backward(m, &e) || xd_cuda_sync(ctx, &e);
      CHECKF(rc4 == 0, "%s: graph replay: %s", name, e.msg);
      if (rc4 == 0) {
        g4 = down(xd_params_cuda_grad_all(pd), nt);
        const int rc5 = xd_student_cuda_train_backward(m, &e) || xd_cuda_sync(ctx, &e);
        if (rc5 == 0) g5 = down(xd_params_cuda_grad_all(pd), nt);
        const int rc6 = rc5 || xd_params_cuda_zero_grad(pd, &e) || xd_student_cuda_train_backward(m, &e) ||
                        xd_student_cuda_train_backward(m, &e) || xd_cuda_sync(ctx, &e);
        CHECKF(rc6 == 0, "%s: accumulating graph: %s", name, e.msg);
        if (rc6 == 0) g6 = down(xd_params_cuda_grad_all(pd), nt);
      }
      if (g4 && g6) {
        const double e4 = rel_l2(g4, ga, nt), e6 = rel_l2(g6, g5, nt);
        if (exact) {
          CHECKF(memcmp(g4, ga, nt * 4) == 0 && memcmp(g6, g5, nt * 4) == 0,
                 "%s: backward graph replays differ from the launched kernels (rel L2 %.3e, %.3e)", name, e4, e6);
          fprintf(stderr, "%-22s backward graphs (zero-grad and accumulating): replays bit-identical\n", name);
        } else {
          CHECKF(e4 <= 1e-3 && e6 <= 1e-3, "%s: backward graph replays: rel L2 %.3e, %.3e", name, e4, e6);
          fprintf(stderr, "%-22s backward graphs: replays within the atomic kernel's noise (%.1e, %.1e)\n", name, e4, e6);
        }
      }
      free(g4), free(g5), free(g6);
      free(g2);
    }
    free(ga);
  }
  fprintf(stderr, "%-22s logits %.2e  loss %.2e  gradients %.2e (worst tensor %.2e: %s)\n", name, el, eloss, eall, wt, wn);
  worst_all = fmax(worst_all, eall);
  if (wt > worst_tensor) {
    worst_tensor = wt;
    snprintf(worst_name, sizeof worst_name, "%s: %s", name, wn);
  }
  /* 4. activation recomputation (the layers' inputs kept, the rest recomputed before each
   * layer's backward): the same step on the same mirror gives the same logits and, where the
   * step is deterministic (the tensor-core SWA backward, as in check 5), the same gradients bit
   * for bit; with the atomic fallback within its run-to-run noise (1e-3 per tensor: a layer
   * recomputed wrongly is off by O(1)) */
  if (xd_student_cuda_train_create(&m2, ctx, s, pd, B, T, 1, 0, &e) || xd_student_cuda_train_forward(m2, ids, &e) ||
      xd_cuda_download(ctx, cpu, xd_student_cuda_train_logits(m2), (size_t)N * V * 4, &e)) {
    CHECKF(0, "%s: recompute forward: %s", name, e.msg);
    goto out;
  }
  CHECKF(memcmp(cpu, gpu, (size_t)N * V * 4) == 0, "%s: logits with recomputation differ", name);
  a.logits = xd_student_cuda_train_logits(m2);
  a.dlogits = xd_student_cuda_train_dlogits(m2);
  if (xd_cuda_kd_loss_fused(ctx, &a, &e) || xd_params_cuda_zero_grad(pd, &e) || xd_student_cuda_train_backward(m2, &e) ||
      xd_cuda_sync(ctx, &e)) {
    CHECKF(0, "%s: recompute backward: %s", name, e.msg);
    goto out;
  }
  {
    const int hd = s->cfg.head_dim, exact = hd <= 256; /* the tensor-core SWA backward or its fixed-order fallback: deterministic */
    int ndiff = 0;
    double wr = 0;
    for (int i = 0; i < s->params.n; i++) {
      const size_t nel = s->params.t[i].numel;
      float *gr = down(xd_params_cuda_grad(pd, i), nel);
      const double rel = rel_l2(gr, g1[i], nel);
      wr = fmax(wr, rel);
      if (exact ? memcmp(gr, g1[i], nel * sizeof(float)) != 0 : !(rel <= 1e-3)) {
        if (ndiff++ < 3) CHECKF(0, "%s: gradient of %s differs with recomputation (rel L2 %.2e)", name, s->params.t[i].name, rel);
      }
      free(gr);
    }
    CHECKF(ndiff == 0, "%s: %d gradients differ with recomputation", name, ndiff);
    if (ndiff == 0)
      fprintf(stderr, "%-22s recomputation: logits bit-identical, all %d gradients %s (worst rel L2 %.1e)\n", name,
              s->params.n, exact ? "bit-identical" : "within the atomic kernel's noise", wr);
  }
  /* 6. the LM head in row blocks (head_rows N/3 + 1: three blocks, the last shorter): the loss
   * and every gradient as with the whole logits, up to the order of dW_head's fp32 sums over
   * rows and the GEMMs' choices per row count (bound: loss 1e-6, all gradients 1e-5 relative
   * L2; a block's rows or gradient misplaced is O(1)); a second backward without the loss
   * refused; the same step twice bit for bit where the step is deterministic */
  {
    const int hr = N / 3 + 1;
    const int nt = (int)s->params.n_train;
    float *gb = NULL, *gb2 = NULL;
    xd_cuda_kd_result rb, rb2;
    xd_err e2 = {{0}};
    int rc = xd_student_cuda_train_create(&m3, ctx, s, pd, B, T, 0, hr, &e);
    for (int rep = 0; rep < 2 && rc == 0; rep++) {
      rc = xd_params_cuda_zero_grad(pd, &e) || xd_student_cuda_train_forward(m3, ids, &e) ||
           xd_student_cuda_train_loss(m3, &a, 1, &e) || xd_cuda_download(ctx, rep ? &rb2 : &rb, d_res, sizeof rb, &e) ||
           xd_student_cuda_train_backward(m3, &e) || xd_cuda_sync(ctx, &e);
      if (rc == 0 && rep == 0) {
        gb = down(xd_params_cuda_grad_all(pd), (size_t)nt);
        CHECKF(xd_student_cuda_train_backward(m3, &e2) != 0 && strstr(e2.msg, "without"),
               "%s: a second backward in row blocks without the loss was not refused", name);
      }
      if (rc == 0 && rep == 1) gb2 = down(xd_params_cuda_grad_all(pd), (size_t)nt);
    }
    CHECKF(rc == 0 && xd_student_cuda_train_logits(m3) == NULL && xd_student_cuda_train_head_rows(m3) == hr,
           "%s: row blocks of %d: %s", name, hr, e.msg);
    if (rc == 0) {
      const double bl = fabs(rb.r.loss - rg.r.loss) / fabs(rg.r.loss);
      double bn = 0, bd = 0;
      for (int i = 0; i < s->params.n; i++) {
        const size_t o = (size_t)(xd_params_data(&s->params, i) - s->params.data), nel = s->params.t[i].numel;
        if (!s->params.t[i].trainable || o + nel > (size_t)nt) continue;
        for (size_t j = 0; j < nel; j++) {
          const double dd = (double)gb[o + j] - g1[i][j];
          bn += dd * dd;
          bd += (double)g1[i][j] * g1[i][j];
        }
      }
      const double eg = sqrt(bn / bd);
      const int exact = s->cfg.head_dim <= 256;
      CHECKF(bl <= 1e-6 && rb.r.count == rg.r.count && rb.bad_pos == -1, "%s: row blocks: loss %.9g vs whole %.9g",
             name, rb.r.loss, rg.r.loss);
      CHECKF(eg <= 1e-5, "%s: row blocks of %d: gradients vs whole logits rel L2 %.3e", name, hr, eg);
      CHECKF(!exact || (memcmp(gb, gb2, (size_t)nt * 4) == 0 && memcmp(&rb, &rb2, sizeof rb) == 0),
             "%s: row blocks: two identical steps differ", name);
      fprintf(stderr, "%-22s LM head in row blocks of %d: loss rel %.1e, gradients rel L2 %.1e vs whole logits%s\n", name,
              hr, bl, eg, exact ? "; run to run bit-identical" : "");
    }
    free(gb), free(gb2);
  }
out:
  if (g1)
    for (int i = 0; i < s->params.n; i++) free(g1[i]);
  free(g1);
  xd_student_cuda_train_free(m3);
  xd_student_cuda_train_free(m2);
  xd_student_cuda_train_free(m);
  xd_params_cuda_free(pd);
  void *dv[] = {d_t, d_mask, d_tk, d_tlp, d_ce, d_kl, d_res};
  for (size_t i = 0; i < sizeof dv / sizeof *dv; i++) xd_cuda_free(dv[i]);
  xd_student_train_acts_free(&acts);
  free(ids), free(targets), free(tk), free(mask), free(tlp), free(perm), free(cpu), free(gpu), free(lse);
}

static void check_family(const char *family, int variant) {
  char sdir[600];
  if (test_make_student(family, 5, 2, 4, sdir, sizeof sdir) != 0) { CHECKF(0, "%s: fixture missing", family); return; }
  xd_err e = {{0}};
  xd_student s;
  CHECKF(xd_student_load(&s, sdir, XD_STUDENT_TRAIN_ALL, &e) == 0, "%s", e.msg);
  if (xd_t.case_failed) return;
  test_perturb_hybrid(&s, 11, 0.5f);
  if (variant & 1) s.hy.gate_softcap = 15.0f;
  if (variant & 2) s.hy.normalizer = XD_NORM_XLSTM;
  char name[64];
  snprintf(name, sizeof name, "%s%s%s", family, variant & 1 ? "+cap" : "", variant & 2 ? "+maxnorm" : "");
  tol_tensor = variant & 2 ? TOL_TENSOR_MAXNORM : TOL_TENSOR;
  tol_all = variant & 2 ? TOL_ALL_MAXNORM : TOL_ALL;
  run_case(name, &s, 2, 23, 5);
  tol_tensor = TOL_TENSOR;
  tol_all = TOL_ALL;
  xd_student_free(&s);
}

/* head dim = d_phi = 64, chunk 64: the tensor-core mLSTM forward and the flash SWA forward */
static void test_tc_student(void) {
  xd_model_config c;
  memset(&c, 0, sizeof c);
  c.family = XD_FAMILY_LLAMA;
  c.vocab = 512;
  c.hidden = 256;
  c.intermediate = 512;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 64;
  c.rms_eps = 1e-5;
  c.max_pos = 4096;
  c.rope[0].kind = c.rope[1].kind = XD_ROPE_DEFAULT;
  c.rope[0].theta = c.rope[1].theta = 10000.0;
  xd_hybrid_config hy;
  xd_hybrid_defaults(&hy, 64);
  hy.window = 32;
  hy.sinks = 4;
  hy.chunk = 64;
  xd_err e = {{0}};
  xd_student s;
  CHECKF(xd_student_create(&s, &c, &hy, XD_STUDENT_TRAIN_ALL, &e) == 0, "%s", e.msg);
  if (xd_t.case_failed) return;
  fill_random(&s, 21);
  run_case("llama-d64-tc", &s, 2, 160, 9);
  xd_student_free(&s);
}

/* Stage I: the GPU align step (xd_student_cuda_align_step) against the CPU's
 * (xd_align_run_batch): per-layer losses and the hybrid parameters' gradients. */
static double worst_align_loss, worst_align_grad;
static void check_align(const char *family) {
  char sdir[600], tdir[600];
  snprintf(tdir, sizeof tdir, "tests/fixtures/teachers/%s/fp32", family);
  if (test_make_student(family, 5, 2, 4, sdir, sizeof sdir) != 0) { CHECKF(0, "%s: fixture missing", family); return; }
  xd_err e = {{0}};
  xd_teacher t;
  xd_student s;
  CHECKF(xd_teacher_load(&t, tdir, &e) == 0, "%s", e.msg);
  if (xd_t.case_failed) return;
  CHECKF(xd_student_load(&s, sdir, XD_STUDENT_TRAIN_NEW, &e) == 0, "%s", e.msg);
  if (xd_t.case_failed) { xd_teacher_free(&t); return; }
  test_perturb_hybrid(&s, 13, 0.5f);
  const int B = 2, T = 23, N = B * T, L = s.cfg.n_layers;
  xd_rng r;
  xd_rng_seed(&r, 17);
  int32_t *ids = xd_malloc((size_t)N * 4);
  for (int i = 0; i < N; i++) ids[i] = (int32_t)(xd_rng_u64(&r) % (uint64_t)s.cfg.vocab);
  xd_align_ctx ac;
  xd_trainer_hooks hooks;
  xd_align_init(&ac, &t, &s, NULL, B, T, &hooks);
  xd_params_zero_grad(&s.params);
  xd_align_run_batch(&ac, ids, 1);
  double *gl = xd_calloc((size_t)L, sizeof(double));
  xd_params_cuda *pd = NULL;
  xd_student_cuda_train *m = NULL;
  if (xd_params_cuda_create(&pd, ctx, &s.params, &e) || xd_student_cuda_align_create(&m, ctx, &s, pd, B, T, &e) ||
      xd_student_cuda_align_step(m, ids, 1, gl, &e) || xd_cuda_sync(ctx, &e)) {
    CHECKF(0, "%s: align on the GPU: %s", family, e.msg);
    goto out;
  }
  double wl = 0, wg = 0;
  for (int l = 0; l < L; l++) {
    const double rel = fabs(gl[l] - ac.layer_loss[l]) / ac.layer_loss[l];
    wl = fmax(wl, rel);
    CHECKF(rel <= TOL_LOSS * 3, "%s: stage I loss of layer %d: GPU %.6g, CPU %.6g", family, l, gl[l], ac.layer_loss[l]);
  }
  for (int i = 0; i < s.params.n; i++) {
    const xd_param_info *ti = &s.params.t[i];
    if (!ti->trainable) continue;
    float *gg = down(xd_params_cuda_grad(pd, i), ti->numel);
    const double rel = rel_l2(gg, xd_params_grad(&s.params, i), ti->numel);
    free(gg);
    wg = fmax(wg, rel);
    CHECKF(rel <= TOL_TENSOR, "%s: stage I gradient of %s rel L2 %.3e", family, ti->name, rel);
  }
  fprintf(stderr, "%-22s stage I: layer losses %.2e, hybrid gradients %.2e (worst)\n", family, wl, wg);
  { /* CUDA graphs (on by default): the second align step captured one, the third replays it; both
     * give the first step's losses and gradients (the same kernels and arguments) */
    const size_t nt = s.params.n_train;
    float *g1 = down(xd_params_cuda_grad_all(pd), nt), *g3 = NULL;
    double *gl3 = xd_calloc((size_t)L, sizeof(double));
    int rc = 0;
    for (int rep = 0; rep < 2 && rc == 0; rep++)
      rc = xd_params_cuda_zero_grad(pd, &e) || xd_student_cuda_align_step(m, ids, 1, gl3, &e) || xd_cuda_sync(ctx, &e);
    CHECKF(rc == 0, "%s: stage I graph replay: %s", family, e.msg);
    if (rc == 0) {
      g3 = down(xd_params_cuda_grad_all(pd), nt);
      const int same = !memcmp(g1, g3, nt * 4) && !memcmp(gl, gl3, (size_t)L * sizeof(double));
      const double eg = rel_l2(g3, g1, nt);
      CHECKF(same || eg <= 1e-6, "%s: stage I graph replay: gradients rel L2 %.3e from the launched step", family, eg);
      fprintf(stderr, "%-22s stage I graph replay: %s\n", family, same ? "losses and gradients bit-identical" : "within 1e-6");
    }
    free(g1), free(g3), free(gl3);
  }
  worst_align_loss = fmax(worst_align_loss, wl);
  worst_align_grad = fmax(worst_align_grad, wg);
out:
  xd_student_cuda_train_free(m);
  xd_params_cuda_free(pd);
  xd_align_free(&ac);
  free(gl);
  free(ids);
  xd_student_free(&s);
  xd_teacher_free(&t);
}
static void test_align_llama_gqa(void) { check_align("llama-gqa"); }
static void test_align_qwen3(void) { check_align("qwen3"); }
static void test_align_olmo3(void) { check_align("olmo3"); }

/* A micro-batch the device cannot hold (B*T = 2^26 tokens of a fixture student): create refuses
 * it before allocating, with the sizes and what to lower (and, in stage II without it, that
 * --recompute helps); with recomputation, without that advice. */
static void test_too_large(void) {
  char sdir[600];
  if (test_make_student("llama-gqa", 5, 2, 4, sdir, sizeof sdir) != 0) SKIP("fixture missing");
  xd_err e = {{0}};
  xd_student s;
  CHECKF(xd_student_load(&s, sdir, XD_STUDENT_TRAIN_ALL, &e) == 0, "%s", e.msg);
  if (xd_t.case_failed) return;
  const int B = 4096, T = 16384;
  size_t fr = 0, tot = 0;
  xd_params_cuda *pd = NULL;
  xd_student_cuda_train *m = NULL;
  CHECKF(xd_cuda_mem_info(ctx, &fr, &tot, &e) == 0 && xd_params_cuda_create(&pd, ctx, &s.params, &e) == 0, "%s", e.msg);
  const size_t need = xd_student_cuda_train_bytes(&s.cfg, &s.hy, B, T, 1, 0);
  if (!xd_t.case_failed && need > fr) {
    for (int rc = 0; rc < 2; rc++) {
      e.msg[0] = 0;
      CHECKF(xd_student_cuda_train_create(&m, ctx, &s, pd, B, T, rc, 0, &e) != 0 && m == NULL &&
                 strstr(e.msg, "lower --micro_batch or --seq_len") && (strstr(e.msg, "--recompute") != NULL) == !rc,
             "recompute %d: %s", rc, e.msg);
      fprintf(stderr, "  refused (recompute %d): %s\n", rc, e.msg);
    }
  } else if (!xd_t.case_failed) {
    fprintf(stderr, "  skipped: %.0f GiB would fit in the %.0f GiB free\n", need / 1073741824.0, fr / 1073741824.0);
  }
  xd_params_cuda_free(pd);
  xd_student_free(&s);
}

static void test_llama_gqa(void) { check_family("llama-gqa", 0); }
static void test_llama_mha_bias(void) { check_family("llama-mha-bias", 0); }
static void test_llama3_rope(void) { check_family("llama3-rope", 0); }
static void test_qwen2(void) { check_family("qwen2", 0); }
static void test_qwen3(void) { check_family("qwen3", 0); }
static void test_qwen3_softcap(void) { check_family("qwen3", 1); }
static void test_qwen3_maxnorm(void) { check_family("qwen3", 2); }
static void test_olmo2(void) { check_family("olmo2", 0); }
static void test_olmo3(void) { check_family("olmo3", 0); }

int main(int argc, char **argv) {
  const int quick = gpu_test_begin(argc, argv);
  RUN(test_llama_gqa);
  RUN(test_olmo3);
  RUN(test_tc_student);
  RUN(test_align_llama_gqa);
  RUN(test_too_large);
  if (!quick) {
    RUN(test_align_qwen3);
    RUN(test_align_olmo3);
    RUN(test_llama_mha_bias);
    RUN(test_llama3_rope);
    RUN(test_qwen2);
    RUN(test_qwen3);
    RUN(test_qwen3_softcap);
    RUN(test_qwen3_maxnorm);
    RUN(test_olmo2);
  }
  fprintf(stderr, "worst rel L2: logits %.3e (bound %.0e), loss %.3e (%.0e), one tensor's gradient %.3e (%.0e; %s), all gradients %.3e (%.0e)\n",
          worst_logits, TOL_LOGITS, worst_loss, TOL_LOSS, worst_tensor, TOL_TENSOR, worst_name, worst_all, TOL_ALL);
  fprintf(stderr, "stage I: worst layer loss rel %.3e (bound %.0e), worst hybrid gradient rel L2 %.3e (bound %.0e)\n",
          worst_align_loss, 3 * TOL_LOSS, worst_align_grad, TOL_TENSOR);
  return gpu_test_end();
}
