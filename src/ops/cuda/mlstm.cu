/* mLSTM chunkwise forward on the GPU, fp32 (the twin of mlstm_chunkwise_forward; the maths is
 * docs/mlstm.md section 2).
 *
 * Grid: (B*H, ceil(D / DT)). A block owns one head and a slice of DT value columns: its slice
 * of the state C [P, DT] lives in shared memory for the whole sequence, and the block walks
 * the chunks in order. The numerator and the C update of a column slice need only that slice,
 * so slices are independent; the scores S~, the normaliser n and the denominator depend on no
 * column and are recomputed by every slice (cheap: O(L^2 P) against O(L P DT) per chunk).
 * The gate scan (logsigmoid, cumsum b, stabiliser m) runs in double on one thread, as the CPU
 * form does, and each exponent is formed in double and rounded once before the fp32 exp. */
#include <math.h>
#include "cuda_common.cuh"

#define MLSTM_DT 32
#define MLSTM_THREADS 256

struct mlstm_args {
  int B, T, H, G, P, D, L, norm;
  float eps, s;
  const float *qf, *kf, *v, *ig, *fg;
  const float *C0, *n0, *m0; /* NULL: zero state */
  float *C1, *n1, *m1;       /* NULL: not wanted */
  float *h;
  float *bound; /* NULL, or the states at every chunk start (mlstm_boundary_size layout) */
};

static size_t mlstm_smem_bytes(int P, int L) {
  const int ldp = P + 1;
  size_t f = (size_t)P * MLSTM_DT + P + 2 * (size_t)L * ldp + (size_t)L * MLSTM_DT + (size_t)L * (L + 1) + 4 * (size_t)L;
  return 4 * (size_t)L * sizeof(double) + f * sizeof(float);
}

__global__ void __launch_bounds__(MLSTM_THREADS) k_mlstm_chunkwise_fwd(mlstm_args a) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int P = a.P, L = a.L, ldp = P + 1, lds = L + 1;
  double *bd = reinterpret_cast<double *>(smem_raw); /* [L] cumsum of logsigmoid(f) */
  double *md = bd + L;                                /* [L] stabiliser m_j */
  double *igd = md + L;                               /* [L] input gate pre-activations */
  double *fgd = igd + L;                              /* [L] forget gate pre-activations */
  float *Cs = reinterpret_cast<float *>(fgd + L);     /* [P][DT] state slice */
  float *ns = Cs + P * MLSTM_DT;                      /* [P] */
  float *Qs = ns + P;                                 /* [L][P+1] */
  float *Ks = Qs + L * ldp;                           /* [L][P+1] */
  float *Vs = Ks + L * ldp;                           /* [L][DT] */
  float *Ss = Vs + L * MLSTM_DT;                      /* [L][L+1] decay-weighted scores */
  float *gj = Ss + L * lds;                           /* [L] decay of the carried state */
  float *wj = gj + L;                                 /* [L] weight in the chunk-end state */
  float *den = wj + L;                                /* [L] */
  float *mscr = den + L;                              /* [L] m_j as float (max normaliser) */
  __shared__ double m_prev_sh;

  const int bh = blockIdx.x, b = bh / a.H, h = bh % a.H, g = h / (a.H / a.G);
  const int d0 = blockIdx.y * MLSTM_DT;
  const int dt = min(MLSTM_DT, a.D - d0);
  const int tid = threadIdx.x;

  for (int i = tid; i < P * MLSTM_DT; i += blockDim.x) {
    const int p = i / MLSTM_DT, dc = i % MLSTM_DT;
    Cs[i] = (a.C0 && dc < dt) ? a.C0[((size_t)bh * P + p) * a.D + d0 + dc] : 0.f;
  }
  for (int p = tid; p < P; p += blockDim.x) ns[p] = a.n0 ? a.n0[(size_t)bh * P + p] : 0.f;
  if (tid == 0) m_prev_sh = a.m0 ? (double)a.m0[bh] : 0.0;
  __syncthreads();

  const int NC = (a.T + L - 1) / L;
  for (int t0 = 0; t0 < a.T; t0 += L) {
    const int len = min(L, a.T - t0);
    if (a.bound) {
      /* The state at the start of this chunk, in the CPU layout: C [BH, NC, P, D], then
       * n [BH, NC, P], then m [BH, NC]. Each slice writes its columns of C; slice 0 n and m. */
      const size_t BH = (size_t)a.B * a.H, ci = (size_t)bh * NC + t0 / L, PD = (size_t)P * a.D;
      for (int i = tid; i < P * MLSTM_DT; i += blockDim.x) {
        const int p = i / MLSTM_DT, dc = i % MLSTM_DT;
        if (dc < dt) a.bound[ci * PD + (size_t)p * a.D + d0 + dc] = Cs[i];
      }
      if (blockIdx.y == 0) {
        for (int p = tid; p < P; p += blockDim.x) a.bound[BH * NC * PD + ci * P + p] = ns[p];
        if (tid == 0) a.bound[BH * NC * (PD + P) + ci] = (float)m_prev_sh;
      }
    }
    /* Load the chunk: Q (this head), K and the V slice (its KV head). */
    for (int i = tid; i < len * P; i += blockDim.x) {
      const int j = i / P, p = i % P;
      const size_t t = (size_t)b * a.T + t0 + j;
      Qs[j * ldp + p] = a.qf[(t * a.H + h) * P + p];
      Ks[j * ldp + p] = a.kf[(t * a.G + g) * P + p];
    }
    for (int i = tid; i < len * MLSTM_DT; i += blockDim.x) {
      const int j = i / MLSTM_DT, dc = i % MLSTM_DT;
      const size_t t = (size_t)b * a.T + t0 + j;
      Vs[i] = dc < dt ? a.v[(t * a.G + g) * a.D + d0 + dc] : 0.f;
    }
    /* Gates in parallel: fgd receives l_j = logsigmoid(f_j) (double, the slow part). */
    for (int j = tid; j < len; j += blockDim.x) {
      const size_t t = (size_t)b * a.T + t0 + j;
      const double f = a.fg[t * a.H + h];
      igd[j] = a.ig[t * a.H + h];
      fgd[j] = f >= 0 ? -log1p(exp(-f)) : f - log1p(exp(f));
    }
    __syncthreads();
    if (tid == 0) {
      /* Sequential gate scan in double (docs/mlstm.md: tie -> forget branch). */
      const double mp = m_prev_sh;
      double cum = 0, m = mp;
      for (int j = 0; j < len; j++) {
        const double l = fgd[j], ig = igd[j];
        cum += l;
        const double mf = l + m;
        m = mf >= ig ? mf : ig;
        bd[j] = cum, md[j] = m;
      }
    }
    __syncthreads();
    for (int j = tid; j < len; j += blockDim.x) {
      gj[j] = expf((float)(bd[j] + m_prev_sh - md[j]));
      wj[j] = expf((float)(bd[len - 1] - bd[j] + igd[j] - md[len - 1]));
      mscr[j] = (float)md[j];
    }
    __syncthreads();
    /* S~[j][j'] = s q_j.k_j' exp(b_j - b_j' + i_j' - m_j), j' <= j. */
    for (int i = tid; i < len * len; i += blockDim.x) {
      const int j = i / len, jp = i % len;
      float sv = 0.f;
      if (jp <= j) {
        float dot = 0.f;
        for (int p = 0; p < P; p++) dot += Qs[j * ldp + p] * Ks[jp * ldp + p];
        sv = a.s * dot * expf((float)(bd[j] - bd[jp] + igd[jp] - md[j]));
      }
      Ss[j * lds + jp] = sv;
    }
    __syncthreads();
    for (int j = tid; j < len; j += blockDim.x) {
      float qn = 0.f, rs = 0.f;
      for (int p = 0; p < P; p++) qn += Qs[j * ldp + p] * ns[p];
      for (int jp = 0; jp <= j; jp++) rs += Ss[j * lds + jp];
      den[j] = gj[j] * a.s * qn + rs;
    }
    __syncthreads();
    for (int i = tid; i < len * MLSTM_DT; i += blockDim.x) {
      const int j = i / MLSTM_DT, dc = i % MLSTM_DT;
      if (dc >= dt) continue;
      float qc = 0.f, sv = 0.f;
      for (int p = 0; p < P; p++) qc += Qs[j * ldp + p] * Cs[p * MLSTM_DT + dc];
      for (int jp = 0; jp <= j; jp++) sv += Ss[j * lds + jp] * Vs[jp * MLSTM_DT + dc];
      const float num = gj[j] * a.s * qc + sv;
      float ad = fabsf(den[j]);
      if (a.norm == MLSTM_NORM_MAX) ad = fmaxf(ad, expf(-mscr[j]));
      const size_t t = (size_t)b * a.T + t0 + j;
      a.h[(t * a.H + h) * a.D + d0 + dc] = num / (ad + a.eps);
    }
    __syncthreads(); /* Cs and ns are read above and updated below */
    const float glast = gj[len - 1];
    for (int i = tid; i < P * MLSTM_DT; i += blockDim.x) {
      const int p = i / MLSTM_DT, dc = i % MLSTM_DT;
      float acc = 0.f;
      for (int jp = 0; jp < len; jp++) acc += Ks[jp * ldp + p] * wj[jp] * Vs[jp * MLSTM_DT + dc];
      Cs[i] = glast * Cs[i] + acc;
    }
    for (int p = tid; p < P; p += blockDim.x) {
      float acc = 0.f;
      for (int jp = 0; jp < len; jp++) acc += Ks[jp * ldp + p] * wj[jp];
      ns[p] = glast * ns[p] + acc;
    }
    /* The boundary m is rounded to the state precision, as the CPU form does. */
    if (tid == 0) m_prev_sh = (double)(float)md[len - 1];
    __syncthreads();
  }
  if (a.C1)
    for (int i = tid; i < P * MLSTM_DT; i += blockDim.x) {
      const int p = i / MLSTM_DT, dc = i % MLSTM_DT;
      if (dc < dt) a.C1[((size_t)bh * P + p) * a.D + d0 + dc] = Cs[i];
    }
  if (blockIdx.y == 0) {
    if (a.n1)
      for (int p = tid; p < P; p += blockDim.x) a.n1[(size_t)bh * P + p] = ns[p];
    if (a.m1 && tid == 0) a.m1[bh] = (float)m_prev_sh;
  }
}

extern "C" int xd_cuda_mlstm_chunkwise_forward(xd_cuda_ctx *c, const mlstm_cfg *cfg, const float *qf,
                                               const float *kf, const float *v, const float *ig, const float *fg,
                                               const mlstm_state *init, mlstm_state *final, float *h, xd_err *e) {
  return xd_cuda_mlstm_chunkwise_forward_bound(c, cfg, qf, kf, v, ig, fg, init, final, NULL, h, e);
}

extern "C" int xd_cuda_mlstm_chunkwise_forward_bound(xd_cuda_ctx *c, const mlstm_cfg *cfg, const float *qf,
                                                     const float *kf, const float *v, const float *ig,
                                                     const float *fg, const mlstm_state *init, mlstm_state *final,
                                                     float *bound, float *h, xd_err *e) {
  XD_ARG(cfg->B > 0 && cfg->T > 0 && cfg->H > 0 && cfg->G > 0 && cfg->H % cfg->G == 0);
  XD_ARG(cfg->P > 0 && cfg->P <= 128 && cfg->D > 0 && cfg->D <= 256 && cfg->chunk >= 1 && cfg->chunk <= 64);
  XD_ARG(!init || (init->C && init->n && init->m));
  XD_ARG(!final || (final->C && final->n && final->m));
  mlstm_args a;
  a.B = cfg->B, a.T = cfg->T, a.H = cfg->H, a.G = cfg->G, a.P = cfg->P, a.D = cfg->D, a.L = cfg->chunk;
  a.norm = (int)cfg->norm;
  a.eps = (float)cfg->eps;
  a.s = (float)(1.0 / sqrt((double)cfg->P));
  a.qf = qf, a.kf = kf, a.v = v, a.ig = ig, a.fg = fg, a.h = h, a.bound = bound;
  a.C0 = init ? init->C : NULL, a.n0 = init ? init->n : NULL, a.m0 = init ? init->m : NULL;
  a.C1 = final ? final->C : NULL, a.n1 = final ? final->n : NULL, a.m1 = final ? final->m : NULL;
  const int n_slices = (cfg->D + MLSTM_DT - 1) / MLSTM_DT;
  /* Every slice reads the initial n and m, slice 0 writes the final ones: when they alias,
   * read a snapshot so that no slice sees another's result. (C is per slice: no hazard.) */
  float *snap = NULL;
  const size_t BH = (size_t)cfg->B * cfg->H;
  if (init && final && n_slices > 1 && (init->n == final->n || init->m == final->m)) {
    XD_CU(cudaMallocAsync((void **)&snap, (BH * cfg->P + BH) * sizeof(float), c->stream));
    XD_CU(cudaMemcpyAsync(snap, init->n, BH * cfg->P * sizeof(float), cudaMemcpyDeviceToDevice, c->stream));
    XD_CU(cudaMemcpyAsync(snap + BH * cfg->P, init->m, BH * sizeof(float), cudaMemcpyDeviceToDevice, c->stream));
    a.n0 = snap, a.m0 = snap + BH * cfg->P;
  }
  const size_t smem = mlstm_smem_bytes(cfg->P, cfg->chunk);
  int rc = 0;
  if (smem > c->smem_optin) {
    rc = xd_errf(e, "mlstm.cu: chunk %d with P=%d needs %zu bytes of shared memory, device allows %zu", cfg->chunk,
                 cfg->P, smem, c->smem_optin);
  } else {
    cudaError_t st = cudaFuncSetAttribute(k_mlstm_chunkwise_fwd, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
    if (st == cudaSuccess) {
      k_mlstm_chunkwise_fwd<<<dim3((unsigned)BH, (unsigned)n_slices), MLSTM_THREADS, smem, c->stream>>>(a);
      st = cudaGetLastError();
    }
    if (st != cudaSuccess)
      rc = xd_errf(e, "mlstm.cu:%d: mlstm chunkwise forward launch: %s", __LINE__, cudaGetErrorString(st));
  }
  if (snap) XD_CU(cudaFreeAsync(snap, c->stream));
  return rc;
}
