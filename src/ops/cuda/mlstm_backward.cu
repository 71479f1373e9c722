/* mLSTM chunkwise backward on the GPU, fp32 (the twin of mlstm_chunkwise_backward; the maths is
 * docs/mlstm.md section 3, the variable names follow src/ops/cpu/mlstm_impl.inc).
 *
 * Parallel over (b, h, chunk), not only (b, h): sections 3.1-3.3 of every chunk need only the
 * state saved at the chunk start (the boundary buffer the forward fills), and the only
 * sequential dependence, the carried dC/dn of section 3.4, is linear:
 *     dC_start(c) = g_last(c) dC_end(c) + U_c,   dC_end(c) = dC_start(c + 1),   dC_end(NC-1) = 0
 * with U_c = s Q^T diag(g) dnum (and u_c = s Q^T (g o dden) for dn). So:
 *   k_bw_local   (B*H, NC)  recompute the chunk (gates, S~, num, den), then 3.1-3.3: dQ, the
 *                           intra-chunk dK/dV, U_c/u_c, the per-token gate gradients db/dm/di
 *   k_bw_scan    (B*H, (P*D+P)/256)  the linear recurrence above over chunks, last to first,
 *                           leaving dC_end(c) in place of U_c
 *   k_bw_state   (B*H, NC-1) 3.4 with the now known dC_end: dK/dV state terms, their gate parts,
 *                           then the per-chunk reverse cumsum db -> dl
 *   k_bw_gqa_sum            with H > G, per-head dK/dV summed over the group in head order
 *   k_bw_gates   (B*H)      the stabiliser recurrence backwards through time (double), then
 *                           dig += di, dfg += dl sigmoid(-f)
 * No atomics: deterministic. Gate scalars (cumsums, m, their gradients) are double, as on the
 * CPU; each decay exponent is formed in double and rounded once before the fp32 exp.
 * Shared-memory products use one helper (blk_mm): a 256-thread block as a 16 x 16 grid, each
 * thread a strided 4 x 4 micro-tile per 64 x 64 pass; rows padded to odd strides. */
#include <math.h>
#include "cuda_common.cuh"

#define BW_THREADS 256

/* acc1 = sum_{k<K1} A1(m,k) B1(k,n) sk1[k], acc2 = sum_{k<K2} A2(m,k) B2(k,n); epi(m, n, acc1, acc2)
 * for m < M, n < N. X(m,k) = X[m*xm + k*xk]. sk1 NULL = 1. Row/col indices beyond M/N are
 * clamped to 0 for the loads (in range) and their results dropped. blockDim.x must be 256;
 * the caller syncs around it. */
struct mm_op {
  const float *A;
  int am, ak;
  const float *B;
  int bk, bn, K;
  const float *sk;
};
template <class Epi>
__device__ __forceinline__ void blk_mm2(int M, int N, mm_op o1, mm_op o2, Epi epi) {
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  for (int m0 = 0; m0 < M; m0 += 64)
    for (int n0 = 0; n0 < N; n0 += 64) {
      float a1[4][4], a2[4][4];
      int mi[4], ni[4];
#pragma unroll
      for (int i = 0; i < 4; i++) {
        mi[i] = m0 + ty + 16 * i, ni[i] = n0 + tx + 16 * i;
#pragma unroll
        for (int j = 0; j < 4; j++) a1[i][j] = 0.f, a2[i][j] = 0.f;
      }
      int mc[4], nc[4];
#pragma unroll
      for (int i = 0; i < 4; i++) mc[i] = mi[i] < M ? mi[i] : 0, nc[i] = ni[i] < N ? ni[i] : 0;
      for (int k = 0; k < o1.K; k++) {
        float a[4], b[4];
        const float sk = o1.sk ? o1.sk[k] : 1.f;
#pragma unroll
        for (int i = 0; i < 4; i++) a[i] = o1.A[mc[i] * o1.am + k * o1.ak];
#pragma unroll
        for (int j = 0; j < 4; j++) b[j] = o1.B[k * o1.bk + nc[j] * o1.bn] * sk;
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
          for (int j = 0; j < 4; j++) a1[i][j] = fmaf(a[i], b[j], a1[i][j]);
      }
      for (int k = 0; k < o2.K; k++) {
        float a[4], b[4];
#pragma unroll
        for (int i = 0; i < 4; i++) a[i] = o2.A[mc[i] * o2.am + k * o2.ak];
#pragma unroll
        for (int j = 0; j < 4; j++) b[j] = o2.B[k * o2.bk + nc[j] * o2.bn];
#pragma unroll
        for (int i = 0; i < 4; i++)
#pragma unroll
          for (int j = 0; j < 4; j++) a2[i][j] = fmaf(a[i], b[j], a2[i][j]);
      }
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
          if (mi[i] < M && ni[j] < N) epi(mi[i], ni[j], a1[i][j], a2[i][j]);
    }
}
static __device__ __forceinline__ mm_op mmop(const float *A, int am, int ak, const float *B, int bk, int bn, int K,
                                             const float *sk = nullptr) {
  mm_op o;
  o.A = A, o.am = am, o.ak = ak, o.B = B, o.bk = bk, o.bn = bn, o.K = K, o.sk = sk;
  return o;
}
template <class Epi>
__device__ __forceinline__ void blk_mm(int M, int N, mm_op o, Epi epi) {
  blk_mm2(M, N, o, mmop(o.A, 0, 0, o.B, 0, 0, 0), [&](int m, int n, float x, float) { epi(m, n, x); });
}

struct bw_args {
  int B, T, H, G, P, D, L, NC, norm, rep;
  float eps, s;
  const float *qf, *kf, *v, *ig, *fg, *bound, *dh;
  float *dqf;
  float *dK, *dV; /* rep == 1: dkf, dv themselves (+=); else per-head [B*H, T, P] / [B*H, T, D] (=, then +=) */
  float *dCw;     /* [B*H, NC, P*D + P]: U_c / u_c, then dC_end / dn_end */
  float *glast;   /* [B*H, NC] */
  double *db, *dmm, *di; /* [B*H, T] */
  unsigned char *br;     /* [B*H, T] */
  double *dmprev;        /* [B*H, NC] dL/dm_prev of each chunk */
};

static __device__ __forceinline__ double logsig_d(double x) { return x >= 0 ? -log1p(exp(-x)) : x - log1p(exp(x)); }
static __device__ __forceinline__ double sigm_d(double x) {
  if (x >= 0) return 1 / (1 + exp(-x));
  const double e = exp(x);
  return e / (1 + e);
}

/* Gates of chunk c of head bh (as chunk_gates on the CPU): bd cumsum b, md stabiliser m,
 * igd input gate (double, [len]); g, w (float); the branch into a.br when write_br. m_prev from bound. */
static __device__ void bw_gates(const bw_args &a, int bh, int c, int t0, int len, double *bd, double *md, double *igd,
                                float *g, float *w, double *mprev_out, int write_br) {
  const int b = bh / a.H, h = bh % a.H, tid = threadIdx.x;
  const size_t BH = (size_t)a.B * a.H, PD = (size_t)a.P * a.D;
  const double m_prev = (double)a.bound[BH * a.NC * (PD + a.P) + (size_t)bh * a.NC + c];
  for (int j = tid; j < len; j += blockDim.x) {
    const size_t o = ((size_t)b * a.T + t0 + j) * a.H + h;
    igd[j] = (double)a.ig[o];
    bd[j] = logsig_d((double)a.fg[o]); /* l_j, scanned below */
  }
  __syncthreads();
  if (tid == 0) {
    double cum = 0, mp = m_prev;
    for (int j = 0; j < len; j++) {
      const double l = bd[j], i = igd[j];
      cum += l;
      const double x = l + mp;
      const int fb = x >= i;
      const double mj = fb ? x : i;
      bd[j] = cum, md[j] = mj;
      if (write_br) a.br[(size_t)bh * a.T + t0 + j] = (unsigned char)fb;
      mp = mj;
    }
    *mprev_out = m_prev;
  }
  __syncthreads();
  for (int j = tid; j < len; j += blockDim.x) {
    g[j] = (float)exp(bd[j] + m_prev - md[j]);
    const float x = (float)(bd[len - 1] - bd[j] + igd[j] - md[len - 1]);
    w[j] = x > -87.f ? expf(x) : 0.f;
  }
  __syncthreads();
}

/* Decay Dm[j][k] = exp(b_j - b_k + i_k - m_j), k <= j (the CPU's rounding and underflow). */
static __device__ __forceinline__ float decay(const double *bd, const double *md, const double *igd, int j, int k) {
  const float x = (float)(bd[j] - bd[k] + igd[k] - md[j]);
  return x > -87.f ? expf(x) : 0.f;
}

static size_t bw_local_smem(int P, int D, int L) {
  const size_t ldq = P + 1, ldv = D + 1, lds = L + 1;
  size_t f = 2 * L * ldq + L * ldv + (size_t)P * ldv + P + L * lds + L * ldv;
  f += (L * ldv > L * lds ? L * ldv : L * lds) + 8 * (size_t)L;
  return 8 * (size_t)L * sizeof(double) + f * sizeof(float);
}

__global__ void __launch_bounds__(BW_THREADS) k_bw_local(bw_args a) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int P = a.P, D = a.D, L = a.L, ldq = P + 1, ldv = D + 1, lds = L + 1;
  double *bd = reinterpret_cast<double *>(smem_raw), *md = bd + L, *igd = md + L;
  double *dbs = igd + L, *dms = dbs + L, *dis = dms + L, *Egs = dis + L, *mp_sh = Egs + L;
  float *Qs = reinterpret_cast<float *>(mp_sh + L);
  float *Ks = Qs + L * ldq, *Vs = Ks + L * ldq, *Cs = Vs + L * ldv, *ns = Cs + P * ldv;
  float *Ss = ns + P, *DU = Ss + L * lds, *X = DU + L * ldv; /* X: qc, later dS~ / dS (ld lds) */
  float *g = X + (L * ldv > L * lds ? L * ldv : L * lds);
  float *w = g + L, *qn = w + L, *den = qn + L, *av = den + L, *dden = av + L;

  const int bh = blockIdx.x, c = blockIdx.y, b = bh / a.H, h = bh % a.H, gg = h / a.rep, tid = threadIdx.x;
  const int t0 = c * L, len = min(L, a.T - t0);
  const size_t BH = (size_t)a.B * a.H, PD = (size_t)P * D;
  const float s = a.s;
  /* Load Q (this head), K, V (its KV head), the chunk-start state. */
  for (int i = tid; i < len * P; i += blockDim.x) {
    const int j = i / P, p = i % P;
    const size_t t = (size_t)b * a.T + t0 + j;
    Qs[j * ldq + p] = a.qf[(t * a.H + h) * P + p];
    Ks[j * ldq + p] = a.kf[(t * a.G + gg) * P + p];
  }
  for (int i = tid; i < len * D; i += blockDim.x) {
    const int j = i / D, d = i % D;
    Vs[j * ldv + d] = a.v[(((size_t)b * a.T + t0 + j) * a.G + gg) * D + d];
  }
  const float *bC = a.bound + ((size_t)bh * a.NC + c) * PD, *bn = a.bound + BH * a.NC * PD + ((size_t)bh * a.NC + c) * P;
  for (int i = tid; i < P * D; i += blockDim.x) Cs[(i / D) * ldv + i % D] = bC[i];
  for (int p = tid; p < P; p += blockDim.x) ns[p] = bn[p];
  bw_gates(a, bh, c, t0, len, bd, md, igd, g, w, mp_sh, 1); /* syncs */

  /* S~ = (s Q K^T) o Dm (lower triangle), qc = s Q C. */
  blk_mm(len, len, mmop(Qs, ldq, 1, Ks, 1, ldq, P), [&](int j, int k, float x) {
    Ss[j * lds + k] = k <= j ? (s * x) * decay(bd, md, igd, j, k) : 0.f;
  });
  blk_mm(len, D, mmop(Qs, ldq, 1, Cs, ldv, 1, P), [&](int j, int d, float x) { X[j * ldv + d] = s * x; });
  __syncthreads();
  /* den = g o (s Q n) + S~ 1, a = normaliser + eps. */
  for (int j = tid; j < len; j += blockDim.x) {
    float q = 0.f, rs = 0.f;
    for (int p = 0; p < P; p++) q += Qs[j * ldq + p] * ns[p];
    for (int k = 0; k <= j; k++) rs += Ss[j * lds + k];
    q *= s;
    qn[j] = q;
    const float dn_ = rs + g[j] * q;
    den[j] = dn_;
    float ad = fabsf(dn_);
    if (a.norm == MLSTM_NORM_MAX) {
      const float lo = (float)exp(-md[j]);
      if (!(ad >= lo)) ad = lo;
    }
    av[j] = ad + a.eps;
  }
  /* num = g o qc + S~ V (into DU). */
  blk_mm(len, D, mmop(Ss, lds, 1, Vs, ldv, 1, len), [&](int j, int d, float x) { DU[j * ldv + d] = g[j] * X[j * ldv + d] + x; });
  __syncthreads();
  /* Normaliser (3.1), one warp per row: dnum = dh / a (over num, in DU), dden, and the read of
   * the carried state's gate part Eg_j = g_j (dnum_j . qc_j + dden_j qn_j). */
  {
    const int warp = tid >> 5, lane = tid & 31;
    for (int j = warp; j < len; j += BW_THREADS / 32) {
      const float *dhj = a.dh + (((size_t)b * a.T + t0 + j) * a.H + h) * D;
      float dot = 0.f;
      for (int d = lane; d < D; d += 32) dot += dhj[d] * DU[j * ldv + d];
      for (int o = 16; o; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
      const float inv = 1.f / av[j];
      float dq = 0.f;
      for (int d = lane; d < D; d += 32) {
        const float u = dhj[d] * inv;
        DU[j * ldv + d] = u;
        dq += u * X[j * ldv + d];
      }
      for (int o = 16; o; o >>= 1) dq += __shfl_xor_sync(0xffffffffu, dq, o);
      if (lane == 0) {
        const float da = -dot * inv * inv;
        const float sg = den[j] >= 0.f ? 1.f : -1.f, ad = den[j] * sg;
        float ddj = da * sg;
        double nm = 0;
        if (a.norm == MLSTM_NORM_MAX) {
          const double lo = exp(-md[j]);
          if (!(ad >= (float)lo)) ddj = 0.f, nm = -(double)da * lo;
        }
        dden[j] = ddj;
        dms[j] = nm;
        Egs[j] = (double)g[j] * ((double)dq + (double)ddj * (double)qn[j]);
      }
    }
  }
  __syncthreads();
  /* dS~ = dnum V^T + dden 1^T (lower triangle), into X (qc is dead). */
  blk_mm(len, len, mmop(DU, ldv, 1, Vs, 1, ldv, D), [&](int j, int k, float x) {
    X[j * lds + k] = k <= j ? x + dden[j] : 0.f;
  });
  __syncthreads();
  /* E = dS~ o S~ (double): row sums -> db_j, -dm_j; column sums -> -db_k, di_k. */
  for (int j = tid; j < len; j += blockDim.x) {
    double rs = 0, cs = 0;
    for (int k = 0; k <= j; k++) rs += (double)X[j * lds + k] * (double)Ss[j * lds + k];
    for (int m = j; m < len; m++) cs += (double)X[m * lds + j] * (double)Ss[m * lds + j];
    dbs[j] = rs - cs + Egs[j];
    dms[j] += -rs - Egs[j];
    dis[j] = cs;
  }
  __syncthreads();
  for (int i = tid; i < len * len; i += blockDim.x) {
    const int j = i / len, k = i % len;
    if (k <= j) X[j * lds + k] *= decay(bd, md, igd, j, k); /* dS = dS~ o Dm */
  }
  if (tid == 0) {
    double sum = 0;
    for (int j = 0; j < len; j++) sum += Egs[j];
    a.dmprev[(size_t)bh * a.NC + c] = sum; /* unused for chunk 0 (constant initial m) */
    if (c == a.NC - 1) /* no state terms follow (3.4 is zero): reverse cumsum b -> l now */
      for (int j = len - 2; j >= 0; j--) dbs[j] += dbs[j + 1];
    a.glast[(size_t)bh * a.NC + c] = g[len - 1];
  }
  __syncthreads();
  for (int j = tid; j < len; j += blockDim.x) {
    const size_t o = (size_t)bh * a.T + t0 + j;
    a.db[o] = dbs[j], a.dmm[o] = dms[j], a.di[o] = dis[j];
  }
  /* dQ += s dS K + s g_j (dnum C^T + dden_j n) */
  blk_mm2(len, P, mmop(X, lds, 1, Ks, ldq, 1, len), mmop(DU, ldv, 1, Cs, 1, ldv, D), [&](int j, int p, float x1, float x2) {
    float *q = a.dqf + (((size_t)b * a.T + t0 + j) * a.H + h) * P + p;
    *q += s * x1 + s * g[j] * (x2 + dden[j] * ns[p]);
  });
  /* dK (intra) = s dS^T Q, dV (intra) = S~^T dnum */
  const int direct = a.rep == 1;
  blk_mm(len, P, mmop(X, 1, lds, Qs, ldq, 1, len), [&](int j, int p, float x) {
    const size_t t = (size_t)b * a.T + t0 + j;
    if (direct) a.dK[(t * a.G + gg) * P + p] += s * x;
    else a.dK[((size_t)bh * a.T + t0 + j) * P + p] = s * x;
  });
  blk_mm(len, D, mmop(Ss, 1, lds, DU, ldv, 1, len), [&](int j, int d, float x) {
    const size_t t = (size_t)b * a.T + t0 + j;
    if (direct) a.dV[(t * a.G + gg) * D + d] += x;
    else a.dV[((size_t)bh * a.T + t0 + j) * D + d] = x;
  });
  /* U_c = s Q^T diag(g) dnum, u_c = s Q^T (g o dden): dL/d(chunk-start state) from this chunk's
   * reads (chunk 0's is never used). */
  if (c > 0) {
    float *U = a.dCw + ((size_t)bh * a.NC + c) * (PD + P);
    blk_mm(P, D, mmop(Qs, 1, ldq, DU, ldv, 1, len, g), [&](int p, int d, float x) { U[(size_t)p * D + d] = s * x; });
    for (int p = tid; p < P; p += blockDim.x) {
      float acc = 0.f;
      for (int j = 0; j < len; j++) acc += s * (g[j] * Qs[j * ldq + p]) * dden[j];
      U[PD + p] = acc;
    }
  }
}

/* dC_end(c) for every chunk: carry = 0; c = NC-1..1: U = buf[c]; buf[c] = carry;
 * carry = g_last(c) carry + U; finally buf[0] = carry. One thread per state element. */
__global__ void k_bw_scan(bw_args a) {
  const int bh = blockIdx.x;
  const size_t n = (size_t)a.P * a.D + a.P, i = (size_t)blockIdx.y * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float *base = a.dCw + (size_t)bh * a.NC * n + i;
  float carry = 0.f;
  for (int c = a.NC - 1; c >= 1; c--) {
    const float u = base[(size_t)c * n];
    base[(size_t)c * n] = carry;
    carry = a.glast[(size_t)bh * a.NC + c] * carry + u;
  }
  base[0] = carry;
}

static size_t bw_state_smem(int P, int D, int L) {
  const size_t ldq = P + 1, ldv = D + 1;
  size_t f = 2 * L * ldq + L * ldv + (size_t)P * ldv + P + 2 * (size_t)L;
  return (4 * (size_t)L + BW_THREADS) * sizeof(double) + f * sizeof(float);
}

/* Section 3.4 for chunks 0..NC-2 (the last has dC_end = 0). */
__global__ void __launch_bounds__(BW_THREADS) k_bw_state(bw_args a) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int P = a.P, D = a.D, L = a.L, ldq = P + 1, ldv = D + 1;
  double *bd = reinterpret_cast<double *>(smem_raw), *md = bd + L, *igd = md + L, *mp_sh = igd + L;
  double *red = mp_sh + L; /* [BW_THREADS] */
  float *Ks = reinterpret_cast<float *>(red + BW_THREADS);
  float *Vs = Ks + L * ldq, *dCs = Vs + L * ldv, *dns = dCs + P * ldv, *Xs = dns + P, *g = Xs + L * ldq, *w = g + L;

  const int bh = blockIdx.x, c = blockIdx.y, b = bh / a.H, h = bh % a.H, gg = h / a.rep, tid = threadIdx.x;
  const int t0 = c * L, len = min(L, a.T - t0);
  const size_t BH = (size_t)a.B * a.H, PD = (size_t)P * D;
  for (int i = tid; i < len * P; i += blockDim.x) {
    const int j = i / P, p = i % P;
    Ks[j * ldq + p] = a.kf[(((size_t)b * a.T + t0 + j) * a.G + gg) * P + p];
  }
  for (int i = tid; i < len * D; i += blockDim.x) {
    const int j = i / D, d = i % D;
    Vs[j * ldv + d] = a.v[(((size_t)b * a.T + t0 + j) * a.G + gg) * D + d];
  }
  const float *dC = a.dCw + ((size_t)bh * a.NC + c) * (PD + P);
  const float *bC = a.bound + ((size_t)bh * a.NC + c) * PD, *bn = a.bound + BH * a.NC * PD + ((size_t)bh * a.NC + c) * P;
  /* <dC, C_start> + dn . n_start (double partial sums, reduced below) */
  double part = 0;
  for (int i = tid; i < P * D; i += blockDim.x) {
    const float x = dC[i];
    dCs[(i / D) * ldv + i % D] = x;
    part += (double)x * (double)bC[i];
  }
  for (int p = tid; p < P; p += blockDim.x) {
    dns[p] = dC[PD + p];
    part += (double)dC[PD + p] * (double)bn[p];
  }
  red[tid] = part;
  bw_gates(a, bh, c, t0, len, bd, md, igd, g, w, mp_sh, 0); /* syncs */
  for (int st = BW_THREADS / 2; st > 0; st >>= 1) {
    if (tid < st) red[tid] += red[tid + st];
    __syncthreads();
  }
  const int direct = a.rep == 1;
  /* x_j = dC v_j (kept for E), dK_j += w_j (x_j + dn) */
  blk_mm(len, P, mmop(Vs, ldv, 1, dCs, 1, ldv, D), [&](int j, int p, float x) {
    Xs[j * ldq + p] = x;
    const float val = w[j] * (x + dns[p]);
    if (direct) a.dK[(((size_t)b * a.T + t0 + j) * a.G + gg) * P + p] += val;
    else a.dK[((size_t)bh * a.T + t0 + j) * P + p] += val;
  });
  /* z_j = dC^T k_j, dV_j += w_j z_j */
  blk_mm(len, D, mmop(Ks, ldq, 1, dCs, ldv, 1, P), [&](int j, int d, float x) {
    const float val = w[j] * x;
    if (direct) a.dV[(((size_t)b * a.T + t0 + j) * a.G + gg) * D + d] += val;
    else a.dV[((size_t)bh * a.T + t0 + j) * D + d] += val;
  });
  __syncthreads();
  /* E_j = w_j (x_j . k_j + k_j . dn): one warp per row; the gate sums by thread 0. */
  double *Es = bd; /* the cumsums are no longer needed */
  {
    const int warp = tid >> 5, lane = tid & 31;
    for (int j = warp; j < len; j += BW_THREADS / 32) {
      float d1 = 0.f, d2 = 0.f;
      for (int p = lane; p < P; p += 32) d1 += Xs[j * ldq + p] * Ks[j * ldq + p], d2 += Ks[j * ldq + p] * dns[p];
      for (int o = 16; o; o >>= 1) d1 += __shfl_xor_sync(0xffffffffu, d1, o), d2 += __shfl_xor_sync(0xffffffffu, d2, o);
      if (lane == 0) md[j] = (double)w[j] * ((double)d1 + (double)d2);
    }
  }
  __syncthreads();
  if (tid == 0) {
    const double EgL = (double)g[len - 1] * red[0];
    double sumE = 0;
    const size_t o = (size_t)bh * a.T + t0;
    for (int j = 0; j < len; j++) {
      sumE += md[j];
      Es[j] = a.db[o + j] - md[j];
      a.di[o + j] += md[j];
    }
    Es[len - 1] += sumE + EgL;
    a.dmm[o + len - 1] -= sumE + EgL;
    a.dmprev[(size_t)bh * a.NC + c] += EgL;
    double acc = 0;
    for (int j = len - 1; j >= 0; j--) acc += Es[j], a.db[o + j] = acc; /* b -> l */
  }
}

/* dkf/dv += the per-head slices of a group, summed in head order. One block per (b, t). */
__global__ void k_bw_gqa_sum(bw_args a, float *dkf, float *dv) {
  const size_t bt = blockIdx.x;
  const int b = (int)(bt / a.T), t = (int)(bt % a.T);
  for (int i = threadIdx.x; i < a.G * (a.P + a.D); i += blockDim.x) {
    const int gg = i / (a.P + a.D), e = i % (a.P + a.D);
    float acc = 0.f;
    for (int hh = gg * a.rep; hh < (gg + 1) * a.rep; hh++) {
      const size_t bh = (size_t)b * a.H + hh;
      acc += e < a.P ? a.dK[(bh * a.T + t) * a.P + e] : a.dV[(bh * a.T + t) * a.D + (e - a.P)];
    }
    if (e < a.P) dkf[(bt * a.G + gg) * a.P + e] += acc;
    else dv[(bt * a.G + gg) * a.D + (e - a.P)] += acc;
  }
}

/* The stabiliser recurrence backwards through time, then the gate gradients. One block per
 * head; tiles of BW_THREADS tokens from the end, scanned by thread 0 out of shared memory. */
__global__ void __launch_bounds__(BW_THREADS) k_bw_gates(bw_args a, float *dig, float *dfg) {
  __shared__ double dm_s[BW_THREADS], dl_s[BW_THREADS], di_s[BW_THREADS];
  __shared__ unsigned char br_s[BW_THREADS];
  const int bh = blockIdx.x, b = bh / a.H, h = bh % a.H, tid = threadIdx.x;
  double acc = 0; /* thread 0's carry between tiles */
  for (int hi = a.T; hi > 0; hi -= BW_THREADS) {
    const int lo = max(0, hi - BW_THREADS), n = hi - lo;
    if (tid < n) {
      const int t = lo + tid;
      const size_t o = (size_t)bh * a.T + t;
      double dm = a.dmm[o];
      if (t + 1 < a.T && (t + 1) % a.L == 0) dm += a.dmprev[(size_t)bh * a.NC + (t + 1) / a.L];
      dm_s[tid] = dm, dl_s[tid] = a.db[o], di_s[tid] = a.di[o], br_s[tid] = a.br[o];
    }
    __syncthreads();
    if (tid == 0)
      for (int j = n - 1; j >= 0; j--) {
        acc += dm_s[j];
        if (br_s[j]) dl_s[j] += acc;
        else di_s[j] += acc, acc = 0;
      }
    __syncthreads();
    if (tid < n) {
      const size_t o = ((size_t)b * a.T + lo + tid) * a.H + h;
      dig[o] += (float)di_s[tid];
      dfg[o] += (float)(dl_s[tid] * sigm_d(-(double)a.fg[o]));
    }
    __syncthreads();
  }
}

extern "C" int xd_cuda_mlstm_chunkwise_backward(xd_cuda_ctx *c, const mlstm_cfg *cfg, const float *qf, const float *kf,
                                                const float *v, const float *ig, const float *fg, const float *bound,
                                                const float *dh, float *dqf, float *dkf, float *dv, float *dig,
                                                float *dfg, xd_err *e) {
  XD_ARG(cfg->B > 0 && cfg->T > 0 && cfg->H > 0 && cfg->G > 0 && cfg->H % cfg->G == 0);
  XD_ARG(cfg->P > 0 && cfg->P <= 128 && cfg->D > 0 && cfg->D <= 128 && cfg->chunk >= 1 && cfg->chunk <= 64);
  XD_ARG(bound && qf && kf && v && ig && fg && dh && dqf && dkf && dv && dig && dfg);
  bw_args a;
  a.B = cfg->B, a.T = cfg->T, a.H = cfg->H, a.G = cfg->G, a.P = cfg->P, a.D = cfg->D, a.L = cfg->chunk;
  a.NC = (cfg->T + cfg->chunk - 1) / cfg->chunk, a.norm = (int)cfg->norm, a.rep = cfg->H / cfg->G;
  a.eps = (float)cfg->eps;
  a.s = (float)(1.0 / sqrt((double)cfg->P));
  a.qf = qf, a.kf = kf, a.v = v, a.ig = ig, a.fg = fg, a.bound = bound, a.dh = dh, a.dqf = dqf;
  const size_t BH = (size_t)a.B * a.H, T = (size_t)a.T, NC = (size_t)a.NC, PD = (size_t)a.P * a.D;
  const size_t sm1 = bw_local_smem(a.P, a.D, a.L), sm3 = bw_state_smem(a.P, a.D, a.L);
  if (sm1 > c->smem_optin || sm3 > c->smem_optin)
    return xd_errf(e, "mlstm_backward.cu: chunk %d with P=%d D=%d needs %zu bytes of shared memory, device allows %zu",
                   a.L, a.P, a.D, sm1 > sm3 ? sm1 : sm3, c->smem_optin);
  /* one scratch allocation: dCw, glast (floats), db, dmm, di, dmprev (doubles), per-head
   * dK/dV (floats, GQA only), br (bytes) */
  const size_t n_dcw = BH * NC * (PD + a.P), n_gl = BH * NC, n_hk = a.rep > 1 ? BH * T * (a.P + a.D) : 0;
  const size_t f_bytes = ((n_dcw + n_gl + n_hk) * sizeof(float) + 15) & ~(size_t)15;
  const size_t d_bytes = (3 * BH * T + BH * NC) * sizeof(double);
  unsigned char *ws = NULL;
  XD_CU(cudaMallocAsync((void **)&ws, f_bytes + d_bytes + BH * T, c->stream));
  float *fw = (float *)ws;
  a.dCw = fw, a.glast = fw + n_dcw;
  if (a.rep > 1) a.dK = fw + n_dcw + n_gl, a.dV = a.dK + BH * T * a.P;
  else a.dK = dkf, a.dV = dv;
  double *dw = (double *)(ws + f_bytes);
  a.db = dw, a.dmm = dw + BH * T, a.di = dw + 2 * BH * T, a.dmprev = dw + 3 * BH * T;
  a.br = ws + f_bytes + d_bytes;
  int rc = 0;
  cudaError_t st = cudaFuncSetAttribute(k_bw_local, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm1);
  if (st == cudaSuccess) st = cudaFuncSetAttribute(k_bw_state, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)sm3);
  if (st == cudaSuccess) {
    k_bw_local<<<dim3((unsigned)BH, (unsigned)NC), BW_THREADS, sm1, c->stream>>>(a);
    st = cudaGetLastError();
  }
  if (st == cudaSuccess && NC > 1) {
    k_bw_scan<<<dim3((unsigned)BH, xd_ceil_div(PD + a.P, 256)), 256, 0, c->stream>>>(a);
    st = cudaGetLastError();
    if (st == cudaSuccess) {
      k_bw_state<<<dim3((unsigned)BH, (unsigned)(NC - 1)), BW_THREADS, sm3, c->stream>>>(a);
      st = cudaGetLastError();
    }
  }
  if (st == cudaSuccess && a.rep > 1) {
    k_bw_gqa_sum<<<(unsigned)((size_t)a.B * T), 256, 0, c->stream>>>(a, dkf, dv);
    st = cudaGetLastError();
  }
  if (st == cudaSuccess) {
    k_bw_gates<<<(unsigned)BH, BW_THREADS, 0, c->stream>>>(a, dig, dfg);
    st = cudaGetLastError();
  }
  if (st != cudaSuccess)
    rc = xd_errf(e, "mlstm_backward.cu:%d: mlstm chunkwise backward launch: %s", __LINE__, cudaGetErrorString(st));
  const cudaError_t fs = cudaFreeAsync(ws, c->stream);
  if (rc == 0 && fs != cudaSuccess)
    rc = xd_errf(e, "mlstm_backward.cu:%d: cudaFreeAsync: %s", __LINE__, cudaGetErrorString(fs));
  return rc;
}
