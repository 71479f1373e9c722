/* The student's small ops on the GPU, fp32 storage and math: feature maps (plain / hedgehog),
 * input/forget gate pre-activations with the soft cap, and the mixing gate, forward and
 * backward (the twins of src/ops/cpu/feature_map*, gates*, mix*; docs/student-ops.md).
 *
 * The products go through one batched, strided fp32 SIMT GEMM (gm_*): C(m,n) (+)= alpha
 * sum_k A(m,k) B(k,n) with arbitrary element strides, so the per-head slices of token-major
 * tensors and the transposes need no copies. Reductions over tokens (dP, dw) are split along K
 * into partial products that a second kernel adds in a fixed order: deterministic, no atomics.
 * fp32 throughout (no TF32): the CPU twins are fp32 and the tests bound the gap at 1e-5..1e-4. */
#include <math.h>
#include "cuda_common.cuh"

/* ---- batched strided GEMM ------------------------------------------------------------------ */
typedef struct {
  const float *A;
  long long am, ak, ab; /* A(m,k) of batch z at A + (z / adiv) ab + m am + k ak */
  int adiv;
  const float *B;
  long long bk, bn, bb;
  int bdiv;
  float *C;
  long long cm, cn, cb; /* C(m,n) of batch z at C + z cb + m cm + n cn */
  int M, N, K, batch;
  float alpha;
  int accumulate; /* C += ... (else C = ...) */
} gm_desc;

#define GM_T 64
#define GM_KC 16
/* blockIdx.x: tile, blockIdx.y: batch, blockIdx.z: K split. part NULL: write C directly;
 * else part[(split * batch + z) * M * N + m * N + n] = the split's sum. */
__global__ void __launch_bounds__(256) k_gm(gm_desc g, int ksplit_len, float *part) {
  __shared__ float As[GM_KC][GM_T + 1], Bs[GM_KC][GM_T + 1];
  const int ntn = (g.N + GM_T - 1) / GM_T;
  const int m0 = (blockIdx.x / ntn) * GM_T, n0 = (blockIdx.x % ntn) * GM_T, z = blockIdx.y;
  const int k_lo = blockIdx.z * ksplit_len, k_hi = min(g.K, k_lo + ksplit_len);
  const float *A = g.A + (long long)(z / g.adiv) * g.ab, *B = g.B + (long long)(z / g.bdiv) * g.bb;
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
  float acc[4][4] = {};
  for (int k0 = k_lo; k0 < k_hi; k0 += GM_KC) {
    /* element (kk, r) of each tile; consecutive threads walk the operand's unit-stride index
     * (k when its k stride is 1, else m / n) so that global loads coalesce */
    for (int i = tid; i < GM_KC * GM_T; i += 256) {
      int kk = i / GM_T, r = i % GM_T;
      if (g.ak == 1) kk = i % GM_KC, r = i / GM_KC;
      const int k = k0 + kk, m = m0 + r;
      As[kk][r] = (k < k_hi && m < g.M) ? A[m * g.am + k * g.ak] : 0.f;
    }
    for (int i = tid; i < GM_KC * GM_T; i += 256) {
      int kk = i / GM_T, r = i % GM_T;
      if (g.bk == 1) kk = i % GM_KC, r = i / GM_KC;
      const int k = k0 + kk, n = n0 + r;
      Bs[kk][r] = (k < k_hi && n < g.N) ? B[k * g.bk + n * g.bn] : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < GM_KC; kk++) {
      float a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; i++) a[i] = As[kk][ty + 16 * i], b[i] = Bs[kk][tx + 16 * i];
#pragma unroll
      for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; i++)
#pragma unroll
    for (int j = 0; j < 4; j++) {
      const int m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
      if (m >= g.M || n >= g.N) continue;
      if (part) {
        part[((size_t)blockIdx.z * g.batch + z) * g.M * g.N + (size_t)m * g.N + n] = acc[i][j];
      } else {
        float *c = g.C + (long long)z * g.cb + m * g.cm + n * g.cn;
        *c = g.accumulate ? *c + g.alpha * acc[i][j] : g.alpha * acc[i][j];
      }
    }
}

/* C (+)= alpha * sum over splits in order. */
__global__ void k_gm_reduce(gm_desc g, int nsplit, const float *part) {
  const size_t MN = (size_t)g.M * g.N, i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= MN * g.batch) return;
  const int z = (int)(i / MN), m = (int)((i % MN) / g.N), n = (int)(i % g.N);
  float acc = 0.f;
  for (int s = 0; s < nsplit; s++) acc += part[(size_t)s * g.batch * MN + i];
  float *c = g.C + (long long)z * g.cb + m * g.cm + n * g.cn;
  *c = g.accumulate ? *c + g.alpha * acc : g.alpha * acc;
}

static int gm_run(xd_cuda_ctx *c, const gm_desc *g, xd_err *e) {
  const int tiles = ((g->M + GM_T - 1) / GM_T) * ((g->N + GM_T - 1) / GM_T);
  /* Split K when the output alone gives too few blocks (reductions over tokens). */
  int nsplit = 1;
  const int want = 2 * c->sm_count;
  if (tiles * g->batch < want && g->K >= 512) {
    nsplit = (want + tiles * g->batch - 1) / (tiles * g->batch);
    const int max_split = g->K / 256;
    if (nsplit > max_split) nsplit = max_split;
    if (nsplit < 1) nsplit = 1;
  }
  int klen = (g->K + nsplit - 1) / nsplit;
  klen = (klen + GM_KC - 1) / GM_KC * GM_KC;
  nsplit = (g->K + klen - 1) / klen;
  float *part = NULL;
  if (nsplit > 1)
    XD_CU(cudaMallocAsync((void **)&part, (size_t)nsplit * g->batch * g->M * g->N * sizeof(float), c->stream));
  k_gm<<<dim3((unsigned)tiles, (unsigned)g->batch, (unsigned)nsplit), 256, 0, c->stream>>>(*g, klen, part);
  XD_CU_LAUNCH("gemm");
  if (part) {
    const size_t n = (size_t)g->batch * g->M * g->N;
    k_gm_reduce<<<xd_ceil_div(n, 256), 256, 0, c->stream>>>(*g, nsplit, part);
    XD_CU_LAUNCH("gemm reduce");
    XD_CU(cudaFreeAsync(part, c->stream));
  }
  return 0;
}

static gm_desc gm_make(int M, int N, int K, int batch) {
  gm_desc g;
  memset(&g, 0, sizeof g);
  g.M = M, g.N = N, g.K = K, g.batch = batch, g.adiv = 1, g.bdiv = 1, g.alpha = 1.f;
  return g;
}

/* out[col] += sum_n X[n * ld + col * cs] for col < ncol, in a fixed order (one block a column). */
__global__ void k_colsum(float *out, const float *X, int n_rows, long long ld, long long cs) {
  __shared__ float red[256];
  const int col = blockIdx.x, tid = threadIdx.x;
  float acc = 0.f;
  for (int n = tid; n < n_rows; n += 256) acc += X[n * ld + col * cs];
  red[tid] = acc;
  __syncthreads();
  for (int st = 128; st > 0; st >>= 1) {
    if (tid < st) red[tid] += red[tid + st];
    __syncthreads();
  }
  if (tid == 0) out[col] += red[0];
}

/* ---- feature maps ---------------------------------------------------------------------------- */
static __device__ __forceinline__ float warp_max(float x) {
  for (int o = 16; o; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
static __device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}
/* In-place softmax of each row's halves (one warp per row of d_phi): phi holds x P in the
 * first dp columns; hedgehog writes -xP into the second half first. */
__global__ void k_fm_softmax(float *phi, long long rows, int dphi, int dp, int hedgehog) {
  const long long r = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  float *y = phi + r * dphi;
  if (hedgehog) {
    for (int j = lane; j < dp; j += 32) y[dp + j] = -y[j];
    __syncwarp();
  }
  for (int half = 0; half <= hedgehog; half++) {
    float *z = y + half * dp, mx = -INFINITY, s = 0.f;
    for (int j = lane; j < dp; j += 32) mx = fmaxf(mx, z[j]);
    mx = warp_max(mx);
    for (int j = lane; j < dp; j += 32) {
      const float ex = expf(z[j] - mx);
      z[j] = ex;
      s += ex;
    }
    const float inv = 1.f / warp_sum(s);
    for (int j = lane; j < dp; j += 32) z[j] *= inv;
  }
}
/* dz = phi (dphi - sum(dphi phi)) per half; the hedgehog's second half enters with a minus. */
__global__ void k_fm_dz(float *dz, const float *phi, const float *dphi, long long rows, int dph, int dp, int hedgehog) {
  const long long r = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (r >= rows) return;
  const float *y = phi + r * dph, *g = dphi + r * dph;
  float *z = dz + r * dp;
  float a = 0.f, b = 0.f;
  for (int j = lane; j < dp; j += 32) a += g[j] * y[j];
  a = warp_sum(a);
  if (hedgehog) {
    for (int j = lane; j < dp; j += 32) b += g[dp + j] * y[dp + j];
    b = warp_sum(b);
  }
  for (int j = lane; j < dp; j += 32) {
    float v = y[j] * (g[j] - a);
    if (hedgehog) v -= y[dp + j] * (g[dp + j] - b);
    z[j] = v;
  }
}

#define FM_ARGS(s)                                                                                              \
  XD_ARG((s)->N > 0 && (s)->Hx > 0 && (s)->d > 0 && (s)->d_phi > 0 && (!(s)->hedgehog || (s)->d_phi % 2 == 0))

extern "C" int xd_cuda_feature_map_forward(xd_cuda_ctx *c, float *phi, const float *x, const float *P,
                                           const feature_map_shape *s, xd_err *e) {
  FM_ARGS(s);
  const int N = s->N, Hx = s->Hx, d = s->d, dphi = s->d_phi, dp = feature_map_p_cols(s);
  /* z_h [N, dp] = x_h [N, d] P_h [d, dp] straight into phi's first dp columns of each head */
  gm_desc g = gm_make(N, dp, d, Hx);
  g.A = x, g.am = (long long)Hx * d, g.ak = 1, g.ab = d;
  g.B = P, g.bk = dp, g.bn = 1, g.bb = (long long)d * dp;
  g.C = phi, g.cm = (long long)Hx * dphi, g.cn = 1, g.cb = dphi;
  if (gm_run(c, &g, e)) return -1;
  const long long rows = (long long)N * Hx;
  k_fm_softmax<<<xd_ceil_div((size_t)rows * 32, 256), 256, 0, c->stream>>>(phi, rows, dphi, dp, s->hedgehog);
  XD_CU_LAUNCH("feature map softmax");
  return 0;
}

extern "C" int xd_cuda_feature_map_backward(xd_cuda_ctx *c, float *dx, float *dP, const float *dphi, const float *x,
                                            const float *P, const float *phi, const feature_map_shape *s, xd_err *e) {
  FM_ARGS(s);
  const int N = s->N, Hx = s->Hx, d = s->d, dph = s->d_phi, dp = feature_map_p_cols(s);
  const long long rows = (long long)N * Hx;
  float *dz = NULL;
  XD_CU(cudaMallocAsync((void **)&dz, (size_t)rows * dp * sizeof(float), c->stream));
  int rc = 0;
  k_fm_dz<<<xd_ceil_div((size_t)rows * 32, 256), 256, 0, c->stream>>>(dz, phi, dphi, rows, dph, dp, s->hedgehog);
  cudaError_t st = cudaGetLastError();
  if (st != cudaSuccess) rc = xd_errf(e, "student_ops.cu:%d: feature map dz launch: %s", __LINE__, cudaGetErrorString(st));
  if (rc == 0) { /* dx_h += dz_h P_h^T */
    gm_desc g = gm_make(N, d, dp, Hx);
    g.A = dz, g.am = (long long)Hx * dp, g.ak = 1, g.ab = dp;
    g.B = P, g.bk = 1, g.bn = dp, g.bb = (long long)d * dp;
    g.C = dx, g.cm = (long long)Hx * d, g.cn = 1, g.cb = d, g.accumulate = 1;
    rc = gm_run(c, &g, e);
  }
  if (rc == 0) { /* dP_h += x_h^T dz_h (a reduction over the N tokens) */
    gm_desc g = gm_make(d, dp, N, Hx);
    g.A = x, g.am = 1, g.ak = (long long)Hx * d, g.ab = d;
    g.B = dz, g.bk = (long long)Hx * dp, g.bn = 1, g.bb = dp;
    g.C = dP, g.cm = dp, g.cn = 1, g.cb = (long long)d * dp, g.accumulate = 1;
    rc = gm_run(c, &g, e);
  }
  st = cudaFreeAsync(dz, c->stream);
  if (rc == 0 && st != cudaSuccess) rc = xd_errf(e, "student_ops.cu:%d: cudaFreeAsync: %s", __LINE__, cudaGetErrorString(st));
  return rc;
}

/* ---- gates ------------------------------------------------------------------------------------ */
__global__ void k_gate_cap(float *y, const float *b, long long n, int H, float cap) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float z = y[i] + b[i % H];
  if (cap > 0.f) z = cap * tanhf(z / cap);
  y[i] = z;
}
/* dz = dy (1 - (y/c)^2) */
__global__ void k_gate_dz(float *dz, const float *dy, const float *y, long long n, float cap) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float t = cap > 0.f ? y[i] / cap : 0.f;
  dz[i] = dy[i] * (1.f - t * t);
}

extern "C" int xd_cuda_gates_forward(xd_cuda_ctx *c, float *ig, float *fg, const float *x, const float *w_i,
                                     const float *b_i, const float *w_f, const float *b_f, const gates_shape *s,
                                     xd_err *e) {
  XD_ARG(s->N > 0 && s->D > 0 && s->H > 0);
  const int N = s->N, D = s->D, H = s->H;
  for (int gate = 0; gate < 2; gate++) {
    float *y = gate ? fg : ig;
    gm_desc g = gm_make(N, H, D, 1); /* y = x w^T */
    g.A = x, g.am = D, g.ak = 1;
    g.B = gate ? w_f : w_i, g.bk = 1, g.bn = D;
    g.C = y, g.cm = H, g.cn = 1;
    if (gm_run(c, &g, e)) return -1;
    const long long n = (long long)N * H;
    k_gate_cap<<<xd_ceil_div((size_t)n, 256), 256, 0, c->stream>>>(y, gate ? b_f : b_i, n, H, s->cap);
    XD_CU_LAUNCH("gate cap");
  }
  return 0;
}

extern "C" int xd_cuda_gates_backward(xd_cuda_ctx *c, float *dx, float *dw_i, float *db_i, float *dw_f, float *db_f,
                                      const float *dig, const float *dfg, const float *x, const float *w_i,
                                      const float *w_f, const float *ig, const float *fg, const gates_shape *s,
                                      xd_err *e) {
  XD_ARG(s->N > 0 && s->D > 0 && s->H > 0);
  const int N = s->N, D = s->D, H = s->H;
  const long long n = (long long)N * H;
  float *dz = NULL;
  XD_CU(cudaMallocAsync((void **)&dz, (size_t)n * sizeof(float), c->stream));
  int rc = 0;
  for (int gate = 0; gate < 2 && rc == 0; gate++) { /* i then f, as the CPU op */
    k_gate_dz<<<xd_ceil_div((size_t)n, 256), 256, 0, c->stream>>>(dz, gate ? dfg : dig, gate ? fg : ig, n, s->cap);
    cudaError_t st = cudaGetLastError();
    if (st != cudaSuccess) {
      rc = xd_errf(e, "student_ops.cu:%d: gate dz launch: %s", __LINE__, cudaGetErrorString(st));
      break;
    }
    gm_desc g = gm_make(N, D, H, 1); /* dx += dz w */
    g.A = dz, g.am = H, g.ak = 1;
    g.B = gate ? w_f : w_i, g.bk = D, g.bn = 1;
    g.C = dx, g.cm = D, g.cn = 1, g.accumulate = 1;
    if ((rc = gm_run(c, &g, e))) break;
    gm_desc g2 = gm_make(H, D, N, 1); /* dw += dz^T x */
    g2.A = dz, g2.am = 1, g2.ak = H;
    g2.B = x, g2.bk = D, g2.bn = 1;
    g2.C = gate ? dw_f : dw_i, g2.cm = D, g2.cn = 1, g2.accumulate = 1;
    if ((rc = gm_run(c, &g2, e))) break;
    k_colsum<<<(unsigned)H, 256, 0, c->stream>>>(gate ? db_f : db_i, dz, N, H, 1); /* db += sum_n dz */
    st = cudaGetLastError();
    if (st != cudaSuccess) rc = xd_errf(e, "student_ops.cu:%d: gate db launch: %s", __LINE__, cudaGetErrorString(st));
  }
  const cudaError_t st = cudaFreeAsync(dz, c->stream);
  if (rc == 0 && st != cudaSuccess) rc = xd_errf(e, "student_ops.cu:%d: cudaFreeAsync: %s", __LINE__, cudaGetErrorString(st));
  return rc;
}

/* ---- mixing gate ------------------------------------------------------------------------------ */
/* One warp per (n, h): o = sigmoid([q, k, v] . w_o^h + b_o^h), out = o hg + (1 - o) hl. */
__global__ void k_mix_fwd(float *out, float *o, const float *q, const float *k, const float *v, const float *w_o,
                          const float *b_o, const float *hg, const float *hl, int N, int H, int G, int d) {
  const long long r = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (r >= (long long)N * H) return;
  const int n = (int)(r / H), h = (int)(r % H), rep = H / G;
  const size_t qi = ((size_t)n * H + h) * d, ki = ((size_t)n * G + h / rep) * d;
  const float *w = w_o + (size_t)h * 3 * d;
  float z = 0.f;
  for (int i = lane; i < d; i += 32) z += q[qi + i] * w[i] + k[ki + i] * w[d + i] + v[ki + i] * w[2 * d + i];
  z = warp_sum(z) + b_o[h];
  const float g = 1.f / (1.f + expf(-z));
  if (lane == 0) o[r] = g;
  for (int i = lane; i < d; i += 32) out[qi + i] = g * hg[qi + i] + (1.f - g) * hl[qi + i];
}
/* One warp per (n, KV head g), its rep query heads in order (they share the k/v rows):
 * dz = (dout . (hg - hl)) o (1 - o); dhg += o dout; dhl += (1 - o) dout; d{q,k,v} += dz w. */
__global__ void k_mix_bwd(float *dq, float *dk, float *dv, float *dhg, float *dhl, float *dz_out, const float *dout,
                          const float *o, const float *w_o, const float *hg, const float *hl, int N, int H, int G,
                          int d) {
  const long long r = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (r >= (long long)N * G) return;
  const int n = (int)(r / G), gg = (int)(r % G), rep = H / G;
  const size_t ki = ((size_t)n * G + gg) * d;
  for (int h = gg * rep; h < (gg + 1) * rep; h++) {
    const size_t qi = ((size_t)n * H + h) * d;
    const float g = o[(size_t)n * H + h];
    const float *w = w_o + (size_t)h * 3 * d;
    float dg = 0.f;
    for (int i = lane; i < d; i += 32) {
      const float dd = dout[qi + i];
      dg += dd * (hg[qi + i] - hl[qi + i]);
      dhg[qi + i] += g * dd;
      dhl[qi + i] += (1.f - g) * dd;
    }
    const float z = warp_sum(dg) * g * (1.f - g);
    if (lane == 0) dz_out[(size_t)n * H + h] = z;
    for (int i = lane; i < d; i += 32) {
      dq[qi + i] += z * w[i];
      dk[ki + i] += z * w[d + i];
      dv[ki + i] += z * w[2 * d + i];
    }
  }
}
/* Partial sums over a slice of tokens: part[split][h][i] = sum_n dz[n,h] row_i(n, h), with
 * row = [q_raw[n,h,:], k_raw[n,g,:], v_raw[n,g,:], 1] (the 1 gives db_o). */
__global__ void k_mix_dw(float *part, const float *dz, const float *q, const float *k, const float *v, int N, int H,
                         int G, int d, int per) {
  const int h = blockIdx.x, split = blockIdx.y, rep = H / G, W = 3 * d + 1;
  const int n_lo = split * per, n_hi = min(N, n_lo + per);
  for (int i = threadIdx.x; i < W; i += blockDim.x) {
    float acc = 0.f;
    for (int n = n_lo; n < n_hi; n++) {
      const float z = dz[(size_t)n * H + h];
      float x;
      if (i < d) x = q[((size_t)n * H + h) * d + i];
      else if (i < 2 * d) x = k[((size_t)n * G + h / rep) * d + i - d];
      else if (i < 3 * d) x = v[((size_t)n * G + h / rep) * d + i - 2 * d];
      else x = 1.f;
      acc += z * x;
    }
    part[((size_t)split * H + h) * W + i] = acc;
  }
}
__global__ void k_mix_dw_reduce(float *dw_o, float *db_o, const float *part, int nsplit, int H, int d) {
  const int W = 3 * d + 1, i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= H * W) return;
  float acc = 0.f;
  for (int s = 0; s < nsplit; s++) acc += part[(size_t)s * H * W + i];
  const int h = i / W, j = i % W;
  if (j < 3 * d) dw_o[(size_t)h * 3 * d + j] += acc;
  else db_o[h] += acc;
}

#define MIX_ARGS(s) XD_ARG((s)->N > 0 && (s)->G > 0 && (s)->H % (s)->G == 0 && (s)->d > 0)

extern "C" int xd_cuda_mix_forward(xd_cuda_ctx *c, float *out, float *o, const float *q_raw, const float *k_raw,
                                   const float *v_raw, const float *w_o, const float *b_o, const float *h_global,
                                   const float *h_local, const mix_shape *s, xd_err *e) {
  MIX_ARGS(s);
  const size_t rows = (size_t)s->N * s->H;
  k_mix_fwd<<<xd_ceil_div(rows * 32, 256), 256, 0, c->stream>>>(out, o, q_raw, k_raw, v_raw, w_o, b_o, h_global,
                                                                 h_local, s->N, s->H, s->G, s->d);
  XD_CU_LAUNCH("mix forward");
  return 0;
}

extern "C" int xd_cuda_mix_backward(xd_cuda_ctx *c, float *dq_raw, float *dk_raw, float *dv_raw, float *dw_o,
                                    float *db_o, float *dh_global, float *dh_local, const float *dout, const float *o,
                                    const float *q_raw, const float *k_raw, const float *v_raw, const float *w_o,
                                    const float *h_global, const float *h_local, const mix_shape *s, xd_err *e) {
  MIX_ARGS(s);
  const int N = s->N, H = s->H, G = s->G, d = s->d;
  int nsplit = (2 * c->sm_count + H - 1) / H;
  if (nsplit > (N + 63) / 64) nsplit = (N + 63) / 64;
  if (nsplit < 1) nsplit = 1;
  const int per = (N + nsplit - 1) / nsplit;
  nsplit = (N + per - 1) / per;
  const size_t W = 3 * (size_t)d + 1;
  float *ws = NULL; /* dz [N, H], then part [nsplit, H, W] */
  XD_CU(cudaMallocAsync((void **)&ws, ((size_t)N * H + (size_t)nsplit * H * W) * sizeof(float), c->stream));
  float *dz = ws, *part = ws + (size_t)N * H;
  int rc = 0;
  k_mix_bwd<<<xd_ceil_div((size_t)N * G * 32, 256), 256, 0, c->stream>>>(dq_raw, dk_raw, dv_raw, dh_global, dh_local,
                                                                         dz, dout, o, w_o, h_global, h_local, N, H, G, d);
  cudaError_t st = cudaGetLastError();
  if (st == cudaSuccess) {
    k_mix_dw<<<dim3((unsigned)H, (unsigned)nsplit), 128, 0, c->stream>>>(part, dz, q_raw, k_raw, v_raw, N, H, G, d, per);
    st = cudaGetLastError();
  }
  if (st == cudaSuccess) {
    k_mix_dw_reduce<<<xd_ceil_div((size_t)H * W, 256), 256, 0, c->stream>>>(dw_o, db_o, part, nsplit, H, d);
    st = cudaGetLastError();
  }
  if (st != cudaSuccess) rc = xd_errf(e, "student_ops.cu:%d: mix backward launch: %s", __LINE__, cudaGetErrorString(st));
  st = cudaFreeAsync(ws, c->stream);
  if (rc == 0 && st != cudaSuccess) rc = xd_errf(e, "student_ops.cu:%d: cudaFreeAsync: %s", __LINE__, cudaGetErrorString(st));
  return rc;
}
