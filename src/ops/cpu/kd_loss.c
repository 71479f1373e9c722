/* Stage II sparse top-k KD loss and teacher top-k extraction. See kd_loss.h. */
#include "ops/cpu/kd_loss.h"

#include <stdlib.h>
#include <string.h>
#include <tgmath.h>

#include "core/core.h"
#include "ops/cpu/parallel.h"

#define XD_TWIN_BODY "ops/cpu/kd_loss_impl.inc"
#include "ops/cpu/twin.h"

kd_config kd_config_default(int N, int V) {
  kd_config c = {.N = N, .V = V, .k = KD_DEFAULT_TOPK < V ? KD_DEFAULT_TOPK : V,
                 .tau = KD_DEFAULT_TAU, .gamma = KD_DEFAULT_GAMMA, .beta = KD_DEFAULT_BETA};
  return c;
}

/* ---- top-k ------------------------------------------------------------- */
typedef struct {
  float val;
  int32_t id;
} tk_item;

/* Total order: a ranks above b if larger, ties by lower id. */
static int tk_above(tk_item a, tk_item b) { return a.val > b.val || (a.val == b.val && a.id < b.id); }

/* Min-heap (root = lowest ranked kept item) of n items: restore from i downwards. */
static void tk_sift_down(tk_item *h, int n, int i) {
  for (;;) {
    int lo = i;
    const int l = 2 * i + 1, r = l + 1;
    if (l < n && tk_above(h[lo], h[l])) lo = l;
    if (r < n && tk_above(h[lo], h[r])) lo = r;
    if (lo == i) return;
    const tk_item t = h[i];
    h[i] = h[lo];
    h[lo] = t;
    i = lo;
  }
}

static int tk_cmp_desc(const void *pa, const void *pb) {
  const tk_item a = *(const tk_item *)pa, b = *(const tk_item *)pb;
  return tk_above(a, b) ? -1 : (tk_above(b, a) ? 1 : 0);
}

int topk_logprobs(const float *logits, int N, int V, int k, int32_t *ids, float *logp,
                  xd_err *e) {
  if (N < 0 || V <= 0 || k < 1 || k > V)
    return xd_errf(e, "topk_logprobs: k=%d outside [1, V=%d]", k, V);
  int bad = -1; /* lowest row with a non-finite logit */
#pragma omp parallel if (XD_OMP_WORTH((double)N * V))
  {
    tk_item *heap = xd_malloc(sizeof(tk_item) * k);
#pragma omp for schedule(static)
    for (int n = 0; n < N; n++) {
      const float *z = logits + (size_t)n * V;
      int finite = 1;
      for (int v = 0; v < V; v++) finite &= isfinite(z[v]) != 0;
      if (!finite) {
#pragma omp critical(xd_topk_bad)
        if (bad < 0 || n < bad) bad = n;
        continue;
      }
      /* first k items heapified, then each later one replaces the root if it ranks above */
      for (int v = 0; v < k; v++) heap[v] = (tk_item){z[v], v};
      for (int i = k / 2 - 1; i >= 0; i--) tk_sift_down(heap, k, i);
      for (int v = k; v < V; v++) {
        const tk_item it = {z[v], v};
        if (tk_above(it, heap[0])) {
          heap[0] = it;
          tk_sift_down(heap, k, 0);
        }
      }
      qsort(heap, (size_t)k, sizeof(tk_item), tk_cmp_desc);
      /* full-vocab log-softmax: lp = z - logsumexp(z), the max being heap[0] */
      const float m = heap[0].val;
      double s = 0;
      for (int v = 0; v < V; v++) s += exp(z[v] - m);
      const double lse = (double)m + log(s);
      for (int i = 0; i < k; i++) {
        ids[(size_t)n * k + i] = heap[i].id;
        logp[(size_t)n * k + i] = (float)((double)heap[i].val - lse);
      }
    }
    free(heap);
  }
  if (bad >= 0) return xd_errf(e, "topk_logprobs: row %d holds a non-finite logit", bad);
  return 0;
}
