#include "ops/cpu/causal_attention.h"
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include "core/core.h"
#include "ops/cpu/threads.h"

#define QBLOCK 64

size_t causal_attention_scratch(const causal_attention_dims *a) {
  const int qb = a->Tq < QBLOCK ? a->Tq : QBLOCK;
  return (size_t)qb * (size_t)a->Tk * (size_t)xd_blas_split_threads();
}
size_t causal_attention_backward_scratch(const causal_attention_dims *a) { return 2 * (size_t)a->Tq * (size_t)a->Tk; }

/* P[nq,Tk] = masked softmax(scale * Q K^T) for query rows i0..i0+nq-1 of head (b,h): qb points
 * at query row i0, kb at key 0 of KV head g. Rows in place; masked entries are 0. */
static void attn_probs(float *P, const float *qb, const float *kb, int i0, int nq, const causal_attention_dims *a,
                       int par) {
  const int Tk = a->Tk, H = a->H, G = a->G, d = a->d;
  const float scale = 1.0f / sqrtf((float)d);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, Tk, d, scale, qb, H * d, kb, G * d, 0.0f, P, Tk);
#pragma omp parallel for schedule(static) if (par)
  for (int i = 0; i < nq; i++) {
    const int t = a->q_offset + i0 + i;
    const int hi = t < Tk - 1 ? t : Tk - 1;                                         /* last visible key */
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
                              const causal_attention_dims *a, float *scratch, size_t scratch_floats) {
  const int H = a->H, G = a->G, d = a->d, Tq = a->Tq, Tk = a->Tk, rep = H / G;
  const int qb = Tq < QBLOCK ? Tq : QBLOCK, nblk = (Tq + qb - 1) / qb;
  const size_t slot = (size_t)qb * Tk;
  int nt = xd_blas_split_threads();
  if ((size_t)nt > scratch_floats / slot) nt = (int)(scratch_floats / slot);
  XD_CHECK(nt >= 1);
  const int items = a->B * H * nblk;
  /* nt == 1: serial over items, BLAS (maybe threaded) and the softmax rows parallel inside */
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (nt > 1)
  for (int it = 0; it < items; it++) {
    const int b = it / (H * nblk), h = (it / nblk) % H, blk = it % nblk, g = h / rep;
    const int i0 = blk * qb, nq = Tq - i0 < qb ? Tq - i0 : qb;
    float *P = scratch + (size_t)(nt > 1 ? omp_get_thread_num() : 0) * slot;
    const float *qp = q + ((size_t)b * Tq + i0) * H * d + (size_t)h * d;
    const float *kb = k + (size_t)b * a->kv_bstride + (size_t)g * d;
    const float *vb = v + (size_t)b * a->kv_bstride + (size_t)g * d;
    attn_probs(P, qp, kb, i0, nq, a, nt == 1);
    float *op = out + ((size_t)b * Tq + i0) * H * d + (size_t)h * d;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, d, Tk, 1.0f, P, Tk, vb, G * d, 0.0f, op, H * d);
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
      attn_probs(P, q + qo, k + ko, 0, Tq, a, 1);
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
