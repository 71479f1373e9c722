#include "ops/cpu/causal_attention.h"
#include <cblas.h>
#include <math.h>

size_t causal_attention_scratch(const causal_attention_dims *a) { return (size_t)a->Tq * (size_t)a->Tk; }

/* P[Tq,Tk] = masked softmax(scale * Q_bh K_bg^T), rows in place. */
static void attn_probs(float *P, const float *qb, const float *kb, const causal_attention_dims *a) {
  const int Tq = a->Tq, Tk = a->Tk, H = a->H, G = a->G, d = a->d;
  const float scale = 1.0f / sqrtf((float)d);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Tq, Tk, d, scale, qb, H * d, kb, G * d, 0.0f, P, Tk);
#pragma omp parallel for schedule(static)
  for (int i = 0; i < Tq; i++) {
    const int t = a->q_offset + i;
    const int hi = t < Tk - 1 ? t : Tk - 1;                          /* last visible key */
    const int lo = a->window > 0 && t - a->window + 1 > 0 ? t - a->window + 1 : 0; /* first */
    float *p = P + (size_t)i * Tk;
    float mx = -INFINITY;
    for (int s = lo; s <= hi; s++) mx = p[s] > mx ? p[s] : mx;
    float sum = 0;
    for (int s = 0; s < Tk; s++) {
      if (s < lo || s > hi) { p[s] = 0; continue; }
      p[s] = expf(p[s] - mx);
      sum += p[s];
    }
    const float inv = sum > 0 ? 1.0f / sum : 0.0f;
    for (int s = lo; s <= hi; s++) p[s] *= inv;
  }
}

void causal_attention_forward(float *out, const float *q, const float *k, const float *v,
                              const causal_attention_dims *a, float *scratch) {
  const int H = a->H, G = a->G, d = a->d, Tq = a->Tq, Tk = a->Tk, rep = H / G;
  for (int b = 0; b < a->B; b++)
    for (int h = 0; h < H; h++) {
      const int g = h / rep;
      const float *qb = q + (size_t)b * Tq * H * d + (size_t)h * d;
      const float *kb = k + (size_t)b * a->kv_bstride + (size_t)g * d;
      const float *vb = v + (size_t)b * a->kv_bstride + (size_t)g * d;
      attn_probs(scratch, qb, kb, a);
      float *ob = out + (size_t)b * Tq * H * d + (size_t)h * d;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Tq, d, Tk, 1.0f, scratch, Tk, vb, G * d, 0.0f, ob, H * d);
    }
}

void causal_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                               const float *v, const causal_attention_dims *a, float *scratch) {
  const int H = a->H, G = a->G, d = a->d, Tq = a->Tq, Tk = a->Tk, rep = H / G;
  const float scale = 1.0f / sqrtf((float)d);
  float *P = scratch, *dP = scratch + (size_t)Tq * Tk;
  for (int b = 0; b < a->B; b++)
    for (int h = 0; h < H; h++) {
      const int g = h / rep;
      const size_t qo = (size_t)b * Tq * H * d + (size_t)h * d, ko = (size_t)b * a->kv_bstride + (size_t)g * d;
      attn_probs(P, q + qo, k + ko, a);
      /* dV += P^T dO;  dP = dO V^T */
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Tk, d, Tq, 1.0f, P, Tk, dout + qo, H * d, 1.0f, dv + ko, G * d);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Tq, Tk, d, 1.0f, dout + qo, H * d, v + ko, G * d, 0.0f, dP, Tk);
      /* dS = P * (dP - rowsum(P * dP)), masked entries have P = 0 */
#pragma omp parallel for schedule(static)
      for (int i = 0; i < Tq; i++) {
        float *p = P + (size_t)i * Tk, *dp = dP + (size_t)i * Tk;
        float dot = 0;
        for (int s = 0; s < Tk; s++) dot += p[s] * dp[s];
        for (int s = 0; s < Tk; s++) dp[s] = p[s] * (dp[s] - dot);
      }
      /* dQ = scale dS K;  dK += scale dS^T Q */
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Tq, d, Tk, scale, dP, Tk, k + ko, G * d, 0.0f, dq + qo, H * d);
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Tk, d, Tq, scale, dP, Tk, q + qo, H * d, 1.0f, dk + ko, G * d);
    }
}
