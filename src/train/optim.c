#include "train/optim.h"

#include <math.h>

void xd_adamw_step(xd_params *p, const xd_adamw_cfg *c, double lr, uint64_t t) {
  XD_CHECK(t >= 1);
  const double bc1 = 1.0 - pow(c->beta1, (double)t), bc2 = 1.0 - pow(c->beta2, (double)t);
  const float b1 = (float)c->beta1, b2 = (float)c->beta2, eps = (float)c->eps;
  for (int i = 0; i < p->n; i++) {
    const xd_param_info *ti = &p->t[i];
    if (!ti->trainable) continue;
    const xd_param_group *gr = &p->groups[ti->group];
    const float decay = (float)(1.0 - lr * gr->lr_mult * c->weight_decay * gr->wd_mult);
    /* Bias corrections folded into the step size and eps' scale, as in PyTorch:
     * lr_g * m/bc1 / (sqrt(v)/sqrt(bc2) + eps). */
    const float step = (float)(lr * gr->lr_mult / bc1), sbc2 = (float)sqrt(bc2);
    float *w = p->data + ti->offset, *g = p->grad + ti->offset, *m = p->m + ti->offset, *v = p->v + ti->offset;
    const long n = (long)ti->numel;
    /* below a few blocks, waking threads costs more than it saves */
#pragma omp parallel for schedule(static) if (n > 4 * XD_PARAMS_BLOCK)
    for (long k = 0; k < n; k++) {
      float gk = g[k];
      m[k] = b1 * m[k] + (1.0f - b1) * gk;
      v[k] = b2 * v[k] + (1.0f - b2) * gk * gk;
      w[k] = w[k] * decay - step * m[k] / (sqrtf(v[k]) / sbc2 + eps);
    }
  }
}

double xd_clip_factor(double norm, double max_norm) {
  if (max_norm <= 0 || !(norm > max_norm)) return 1.0;
  return max_norm / (norm + 1e-6);
}

double xd_clip_grad(xd_params *p, double norm, double max_norm) {
  double f = xd_clip_factor(norm, max_norm);
  if (f != 1.0) xd_params_scale_grad(p, (float)f);
  return f;
}
