#include "ops/cpu/rope.h"
#include <math.h>
#include <stddef.h>

const char *rope_kind_name(xd_rope_kind k) {
  static const char *const names[] = {"default", "linear", "dynamic", "llama3", "yarn"};
  return (unsigned)k < 5 ? names[k] : "?";
}

/* base ** (2i/dim) in fp32 as torch does for a float32 exponent tensor; 1/that in fp32. */
static float default_inv(double base, int i2, int dim) {
  const float e = (float)i2 / (float)dim;
  const float p = (float)pow(base, (double)e);
  return 1.0f / p;
}

static double yarn_mscale(double scale, double m) { return scale <= 1 ? 1.0 : 0.1 * m * log(scale) + 1.0; }

static double yarn_corr_dim(double rot, int dim, double base, int maxpos) {
  return (dim * log(maxpos / (rot * 2 * M_PI))) / (2 * log(base));
}

void rope_inv_freq(const xd_rope_config *rc, int head_dim, int max_pos, int seq_len, float *inv_freq,
                   float *attention_scaling) {
  const int dim = head_dim, half = head_dim / 2;
  double base = rc->theta;
  *attention_scaling = 1.0f;
  if (rc->kind == XD_ROPE_DYNAMIC) {
    const int sl = seq_len > max_pos ? seq_len : max_pos;
    base = base * pow((rc->factor * sl / max_pos) - (rc->factor - 1), (double)dim / (dim - 2));
  }
  for (int i = 0; i < half; i++) inv_freq[i] = default_inv(base, 2 * i, dim);
  if (rc->kind == XD_ROPE_LINEAR) {
    for (int i = 0; i < half; i++) inv_freq[i] = inv_freq[i] / (float)rc->factor;
  } else if (rc->kind == XD_ROPE_LLAMA3) {
    const float factor = (float)rc->factor, lo = (float)rc->low_freq_factor, hi = (float)rc->high_freq_factor;
    const float old = (float)rc->original_max_pos;
    const double lo_wl = rc->original_max_pos / rc->low_freq_factor, hi_wl = rc->original_max_pos / rc->high_freq_factor;
    for (int i = 0; i < half; i++) {
      const float f = inv_freq[i];
      const float wl = (float)(2 * M_PI) / f;
      float r = wl > lo_wl ? f / factor : f;
      if (!(wl < hi_wl) && !(wl > lo_wl)) {
        const float s = (old / wl - lo) / (hi - lo);
        r = (1 - s) * r / factor + s * r;
      }
      inv_freq[i] = r;
    }
  } else if (rc->kind == XD_ROPE_YARN) {
    const double factor = rc->factor;
    double att = rc->attention_factor;
    if (att <= 0) {
      if (rc->mscale > 0 && rc->mscale_all_dim > 0)
        att = yarn_mscale(factor, rc->mscale) / yarn_mscale(factor, rc->mscale_all_dim);
      else
        att = yarn_mscale(factor, 1);
    }
    *attention_scaling = (float)att;
    const double bf = rc->beta_fast > 0 ? rc->beta_fast : 32, bs = rc->beta_slow > 0 ? rc->beta_slow : 1;
    double low = yarn_corr_dim(bf, dim, base, rc->original_max_pos);
    double high = yarn_corr_dim(bs, dim, base, rc->original_max_pos);
    if (rc->truncate) { low = floor(low); high = ceil(high); }
    if (low < 0) low = 0;
    if (high > dim - 1) high = dim - 1;
    if (low == high) high += 0.001;
    for (int i = 0; i < half; i++) {
      const float pf = (float)pow(base, (double)((float)(2 * i) / (float)dim));
      const float extra = 1.0f / pf, inter = 1.0f / ((float)factor * pf);
      float ramp = (float)(((float)i - low) / (high - low));
      ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
      const float ef = 1 - ramp; /* extrapolation weight */
      inv_freq[i] = inter * (1 - ef) + extra * ef;
    }
  }
}

void rope_table(float *cos_t, float *sin_t, const float *inv_freq, float scaling, int n_pos, int half) {
  for (int p = 0; p < n_pos; p++)
    for (int i = 0; i < half; i++) {
      const float a = (float)p * inv_freq[i];
      cos_t[(size_t)p * half + i] = (float)cos((double)a) * scaling;
      sin_t[(size_t)p * half + i] = (float)sin((double)a) * scaling;
    }
}

#define XD_TWIN_BODY "ops/cpu/rope_impl.inc"
#include "ops/cpu/twin.h"
