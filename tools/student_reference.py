#!/usr/bin/env python3
"""Independent PyTorch reference of the hybrid xLSTM student (issue #4).

Written from ../shared/SPEC.md section 2 and docs/checkpoint-format.md ONLY (not from src/): the
teacher-shared parts (embeddings, norms, MLPs, LM head, RoPE, QK-norms) are Hugging Face
transformers' modules built from the checkpoint's config.json; every attention module is
replaced by HybridAttention below (local sliding-window + sinks softmax attention, mLSTM on
feature-mapped q/k, scalar gates, mixing gate).

Commands (from the repo root; OMP_NUM_THREADS=1 is enough for everything but `bench`):
  compare  --student DIR --ids IDS.npy --logits LOGITS.npy
           max relative error (max|diff| / max|ref|) of logits written by
           `xdistill forward --model DIR --ids IDS.npy --out LOGITS.npy` against this reference
           (float64, CPU). Also checks that the parallel, recurrent and chunkwise mLSTM forms agree.
  forward  --student DIR --ids IDS.npy --out LOGITS.npy     float64 reference logits (.npy)
  perturb  --student DIR --out DIR2 [--seed N] [--feature-map F --d-phi P --normalizer N
           --gate-softcap C --window W --sinks S --chunk L]
           copy a student checkpoint with random nonzero hybrid parameters (gate biases large
           and small); changed hybrid settings are written to config.json and the new tensors
           take the matching shapes. Teacher tensors keep their names and dtypes.
  make-fixtures
           rewrite tests/fixtures/student-reference/ (tests/test_student_reference.c): per
           family a small perturbed student (written here from the teacher fixture, following
           docs/checkpoint-format.md), ids.npy and float64 reference logits_f64.npy.
  bench    [--seq 4096] [--batch B] [--tiny] [--no-compile] [--device cuda] [--reps N]
           [--only teacher,stage1,stage2,prefill] [--stage2-variants eager,eager_blocked,compiled,compiled_flex,compiled_accum8]
           teacher prefill, stage I step, stage II step and student prefill at the Llama-3.2-1B shape
           with random weights, bf16 autocast, chunkwise mLSTM (fp32 states); prints
           `RESULT <name> <tokens/s>` and one grep-able line per measurement:
             REF <name> tokens_per_s=.. step_ms=.. peak_gib=.. compile_s=.. T=.. card=..
           and for stage II `REF stage2_best name=.. tokens_per_s=..`. Stage II variants (teacher
           forward + top-256 of its bf16 logits, student forward/backward, 0.9 CE + 0.1 KL, clip 1.0,
           fused AdamW, all in one step): eager (local branch: SDPA with a T x T mask), eager_blocked
           (SDPA over query blocks: only window + sinks), compiled (eager_blocked with each decoder
           layer torch.compile'd once and reused by all layers, teacher's too, loss compiled; the
           warm-up steps' excess over the steady step is reported as compile_s), compiled_flex
           (compiled, local branch by flex_attention), compiled_accum8 (compiled, 8 micro-batches
           per optimiser step: gradient accumulation, reported per micro-batch as
           stage2_micro_compiled_accum8; not a candidate for stage2_best). Only stage II on a GPU:
             python3 tools/student_reference.py bench --only stage2 | grep '^REF '
           --batch B: B sequences of --seq tokens per (micro-)batch (default 1; tokens/s counts
           all B T tokens), to compare with bench_gpu_train's XD_BENCH_B at the same batch.
           --tiny: a small shape on CPU (a float64 self-check, then a smoke test of the same paths).
"""
import argparse
import copy
import json
import math
import os
import shutil
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

FORMAT_VERSION = 1
DEFAULTS = dict(format_version=1, architecture="hybrid_xlstm", window=512, sinks=4, feature_map="softmax",
                normalizer="paper", eps=1e-6, gate_softcap=15.0, chunk=64)
NEW_NAMES = ("q_feature", "k_feature", "igate.weight", "igate.bias", "fgate.weight", "fgate.bias",
             "ogate.weight", "ogate.bias")
REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


# ----------------------------------------------------------------------------------------------
# Hybrid configuration
# ----------------------------------------------------------------------------------------------
class HybridConfig:
    def __init__(self, section, head_dim):
        s = dict(DEFAULTS)
        s.update(section or {})
        if s["format_version"] != FORMAT_VERSION:
            raise ValueError("xdistill format_version %r, this reader knows %d" % (s["format_version"], FORMAT_VERSION))
        if s["architecture"] != "hybrid_xlstm":
            raise ValueError("architecture %r" % s["architecture"])
        self.window = int(s["window"])
        self.sinks = int(s["sinks"])
        self.feature_map = s["feature_map"]
        self.d_phi = int(s.get("d_phi", head_dim) or head_dim)
        self.normalizer = s["normalizer"]
        self.eps = float(s["eps"])
        self.gate_softcap = float(s["gate_softcap"])
        self.chunk = int(s["chunk"])
        if self.window < 1 or self.sinks < 0 or self.chunk < 1:
            raise ValueError("bad window/sinks/chunk")
        if self.feature_map not in ("softmax", "hedgehog"):
            raise ValueError("feature_map %r" % self.feature_map)
        if self.normalizer not in ("paper", "xlstm"):
            raise ValueError("normalizer %r" % self.normalizer)
        if self.feature_map == "hedgehog" and self.d_phi % 2:
            raise ValueError("hedgehog needs an even d_phi")
        self.p = self.d_phi // 2 if self.feature_map == "hedgehog" else self.d_phi

    def section(self):
        return dict(format_version=FORMAT_VERSION, architecture="hybrid_xlstm", window=self.window,
                    sinks=self.sinks, feature_map=self.feature_map, d_phi=self.d_phi,
                    normalizer=self.normalizer, eps=self.eps, gate_softcap=self.gate_softcap, chunk=self.chunk)


# ----------------------------------------------------------------------------------------------
# mLSTM: three forms of SPEC 2.3 (parallel / recurrent / chunkwise). Inputs per head:
#   q, k: [B, H, T, d_phi] feature-mapped (q NOT yet scaled by s), v: [B, H, T, dv],
#   ig: [B, H, T] input-gate pre-activation i~, fg: [B, H, T] forget-gate pre-activation f~
#   (soft cap already applied). Output [B, H, T, dv].
# ----------------------------------------------------------------------------------------------
def _normalise(num, den, m, normalizer, eps):
    den = den.abs()
    if normalizer == "xlstm":
        den = torch.maximum(den, torch.exp(-m))
    return num / (den + eps).unsqueeze(-1)


def mlstm_parallel(q, k, v, ig, fg, normalizer, eps):
    T = q.shape[2]
    s = q.shape[-1] ** -0.5
    lf = F.logsigmoid(fg)
    Fc = torch.cumsum(lf, dim=-1)                                  # F_t = sum_{r<=t} l_r
    Dm = Fc.unsqueeze(-1) - Fc.unsqueeze(-2) + ig.unsqueeze(-2)    # [B,H,t,s] F_t - F_s + i~_s
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    Dm = Dm.masked_fill(~causal, float("-inf"))
    # m_0 = 0 is a virtual term F_t (log weight of the zero initial state) in the running max
    m = torch.maximum(Fc, Dm.amax(dim=-1))                         # [B,H,T]
    W = torch.exp(Dm - m.unsqueeze(-1))
    S = (s * q) @ k.transpose(-1, -2) * W                          # [B,H,t,s]
    return _normalise(S @ v, S.sum(-1), m, normalizer, eps)


def mlstm_recurrent(q, k, v, ig, fg, normalizer, eps, state=None):
    """The stabilised recurrence exactly as SPEC 2.3 writes it; returns (h, (C, n, m))."""
    B, H, T, p = q.shape
    s = p ** -0.5
    lf = F.logsigmoid(fg)
    if state is None:
        C = q.new_zeros(B, H, p, v.shape[-1]); n = q.new_zeros(B, H, p); m = q.new_zeros(B, H)
    else:
        C, n, m = state
    out = []
    for t in range(T):
        m_new = torch.maximum(lf[..., t] + m, ig[..., t])
        fp = torch.exp(lf[..., t] + m - m_new)
        ip = torch.exp(ig[..., t] - m_new)
        C = fp[..., None, None] * C + ip[..., None, None] * k[:, :, t, :, None] * v[:, :, t, None, :]
        n = fp[..., None] * n + ip[..., None] * k[:, :, t]
        m = m_new
        qs = s * q[:, :, t]
        num = (qs.unsqueeze(-2) @ C).squeeze(-2)
        den = (qs * n).sum(-1)
        out.append(_normalise(num, den, m, normalizer, eps))
    return torch.stack(out, dim=2), (C, n, m)


def mlstm_chunkwise(q, k, v, ig, fg, normalizer, eps, L, return_state=False):
    """Chunkwise form: states at chunk boundaries (one weighted sum over chunks), then intra-chunk parallel.
    Computes in q's dtype (call with fp32 tensors for SPEC's fp32 states)."""
    B, H, T, p = q.shape
    dv = v.shape[-1]
    s = p ** -0.5
    NC = (T + L - 1) // L
    pad = NC * L - T
    lf = F.logsigmoid(fg)
    if pad:  # padded positions: no input (i~ = -inf), no decay (l = 0); outputs dropped
        q = F.pad(q, (0, 0, 0, pad)); k = F.pad(k, (0, 0, 0, pad)); v = F.pad(v, (0, 0, 0, pad))
        ig = F.pad(ig, (0, pad), value=float("-inf")); lf = F.pad(lf, (0, pad), value=0.0)
    q = q.reshape(B, H, NC, L, p) * s
    k = k.reshape(B, H, NC, L, p)
    v = v.reshape(B, H, NC, L, dv)
    ig = ig.reshape(B, H, NC, L)
    b = torch.cumsum(lf.reshape(B, H, NC, L), dim=-1)             # within-chunk cumulative log-decay
    bL = b[..., -1]                                                # [B,H,NC]
    a = bL.unsqueeze(-1) - b + ig                                  # weight of s in the chunk-end state
    mloc = a.amax(-1)                                              # [B,H,NC]
    wloc = torch.exp(a - mloc.unsqueeze(-1))
    Cloc = (k * wloc.unsqueeze(-1)).transpose(-1, -2) @ v          # [B,H,NC,p,dv]
    nloc = (k * wloc.unsqueeze(-1)).sum(-2)                        # [B,H,NC,p]
    # States at chunk starts c = 0..NC (NC: the final state), all at once (no sequential scan):
    # Bc[c] = sum of the chunk decays before chunk c; chunk j < c enters with log-weight
    # Bc[c] - Bc[j] - bL[j] + mloc[j]; the initial state (m_0 = 0) with Bc[c].
    Bc = F.pad(torch.cumsum(bL, -1), (1, 0))                      # [B,H,NC+1]
    Lw = Bc.unsqueeze(-1) - (Bc[..., :-1] + bL - mloc).unsqueeze(-2)   # [B,H,NC+1,NC]
    before = torch.ones(NC + 1, NC, dtype=torch.bool, device=q.device).tril(-1)
    Lw = Lw.masked_fill(~before, float("-inf"))
    ms_all = torch.maximum(Bc, Lw.amax(-1))                        # m at chunk starts [B,H,NC+1]
    Ww = torch.exp(Lw - ms_all.unsqueeze(-1))
    Cs_all = torch.einsum("bhcj,bhjpd->bhcpd", Ww, Cloc)
    ns_all = torch.einsum("bhcj,bhjp->bhcp", Ww, nloc)
    C, n, m = Cs_all[:, :, NC], ns_all[:, :, NC], ms_all[:, :, NC]
    Cs, ns, ms = Cs_all[:, :, :NC], ns_all[:, :, :NC], ms_all[:, :, :NC]
    inter = b + ms.unsqueeze(-1)                                   # [B,H,NC,L]
    Dm = b.unsqueeze(-1) - b.unsqueeze(-2) + ig.unsqueeze(-2)      # [B,H,NC,t,s]
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    Dm = Dm.masked_fill(~causal, float("-inf"))
    mt = torch.maximum(inter, Dm.amax(-1))                         # [B,H,NC,L]
    Wm = torch.exp(Dm - mt.unsqueeze(-1))
    Sm = (q @ k.transpose(-1, -2)) * Wm
    e = torch.exp(inter - mt)
    num = e.unsqueeze(-1) * (q @ Cs) + Sm @ v
    den = e * (q * ns.unsqueeze(-2)).sum(-1) + Sm.sum(-1)
    h = _normalise(num, den, mt, normalizer, eps).reshape(B, H, NC * L, dv)[:, :, :T]
    if return_state:
        return h, (C, n, m)
    return h


# ----------------------------------------------------------------------------------------------
# The hybrid attention layer
# ----------------------------------------------------------------------------------------------
def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


LOCAL_BLOCK = 128   # query block of the "blocked" local branch


def local_attention_blocked(q, k, v, W, S, block=LOCAL_BLOCK):
    """The local branch without the T x T mask: queries in blocks of `block`; block b sees the
    keys b*block-W+1 .. b*block+block-1 (its window, W+block-1 keys) plus the S sinks, as one
    batched SDPA call with a [block, S+W+block-1] mask (sinks already inside the window masked
    out so they count once). Attention work T*(S+W+block) instead of T*T."""
    B, H, T, d = q.shape
    G = k.shape[1]
    Bq = min(block, T)
    NB = (T + Bq - 1) // Bq
    Tp = NB * Bq
    Sk = min(S, T)
    Lw = W + Bq - 1
    kp = F.pad(k, (0, 0, W - 1, Tp - T)).unfold(2, Lw, Bq).transpose(-1, -2)   # [B,G,NB,Lw,d]
    vp = F.pad(v, (0, 0, W - 1, Tp - T)).unfold(2, Lw, Bq).transpose(-1, -2)
    kb = torch.cat([k[:, :, None, :Sk].expand(B, G, NB, Sk, d), kp], dim=3)       # [B,G,NB,Sk+Lw,d]
    vb = torch.cat([v[:, :, None, :Sk].expand(B, G, NB, Sk, d), vp], dim=3)
    Lk = Sk + Lw
    extra = (-Lk) % 8                                   # keep the mask's last dim aligned
    if extra:
        kb = F.pad(kb, (0, 0, 0, extra)); vb = F.pad(vb, (0, 0, 0, extra))
    dev = q.device
    bi = torch.arange(NB, device=dev)[:, None, None]
    i = torch.arange(Bq, device=dev)[None, :, None]
    j = torch.arange(Lw, device=dev)[None, None, :]
    t = bi * Bq + i                                     # query position [NB,Bq,1]
    sw = bi * Bq - (W - 1) + j                          # window key position [NB,1,Lw]
    mwin = (j >= i) & (j <= i + W - 1) & (sw >= 0)      # s <= t, t - s < W, not padding
    ss = torch.arange(Sk, device=dev)[None, None, :]
    msink = (t - ss >= W).expand(NB, Bq, Sk)            # sinks outside the window
    mask = torch.cat([msink, mwin.expand(NB, Bq, Lw),
                      torch.zeros(NB, Bq, extra, dtype=torch.bool, device=dev)], dim=-1)
    mask = mask[None, :, None].expand(B, NB, 1, Bq, Lk + extra).reshape(B * NB, 1, Bq, Lk + extra)
    qb = F.pad(q, (0, 0, 0, Tp - T)).view(B, H, NB, Bq, d).transpose(1, 2).reshape(B * NB, H, Bq, d)
    kb = kb.transpose(1, 2).reshape(B * NB, G, Lk + extra, d).repeat_interleave(H // G, dim=1)
    vb = vb.transpose(1, 2).reshape(B * NB, G, Lk + extra, d).repeat_interleave(H // G, dim=1)
    o = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=d ** -0.5)
    return o.view(B, NB, H, Bq, d).transpose(1, 2).reshape(B, H, Tp, d)[:, :, :T]


_FLEX_MASKS = {}


def flex_block_mask(T, W, S, device):
    """flex_attention block mask of the local branch (cached per shape)."""
    key = (T, W, S, str(device))
    if key not in _FLEX_MASKS:
        from torch.nn.attention.flex_attention import create_block_mask

        def mm(b, h, qi, ki):
            return (qi >= ki) & ((qi - ki < W) | (ki < S))
        _FLEX_MASKS[key] = create_block_mask(mm, None, None, T, T, device=device)
    return _FLEX_MASKS[key]


def local_attention(q, k, v, W, S, impl="explicit"):
    """q [B,H,T,d], k/v [B,G,T,d]; keys s <= t and (t - s < W or s < S), scale 1/sqrt(d).
    impl: explicit (mask + softmax), sdpa (SDPA, T x T mask), blocked (SDPA over query blocks,
    see local_attention_blocked), flex (flex_attention with a block mask: for torch.compile)."""
    B, H, T, d = q.shape
    G = k.shape[1]
    if impl == "blocked":
        return local_attention_blocked(q, k, v, W, S)
    if impl == "flex":
        from torch.nn.attention.flex_attention import flex_attention
        return flex_attention(q, k, v, block_mask=flex_block_mask(T, W, S, q.device), scale=d ** -0.5,
                              enable_gqa=(H != G))
    t = torch.arange(T, device=q.device)
    dist = t[:, None] - t[None, :]
    mask = (dist >= 0) & ((dist < W) | (t[None, :] < S))
    k = k.repeat_interleave(H // G, dim=1)
    v = v.repeat_interleave(H // G, dim=1)
    if impl == "sdpa":  # GQA by repeating K/V: SDPA's enable_gqa is not taken by every masked kernel
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=d ** -0.5)
    sc = (q @ k.transpose(-1, -2)) * d ** -0.5
    sc = sc.masked_fill(~mask, float("-inf"))
    return torch.softmax(sc, dim=-1) @ v


class XLSTMParams(nn.Module):
    def __init__(self, H, G, d, D, p, dtype=None, device=None):
        super().__init__()
        kw = dict(dtype=dtype, device=device)
        self.q_feature = nn.Parameter(torch.zeros(H, d, p, **kw))
        self.k_feature = nn.Parameter(torch.zeros(G, d, p, **kw))
        self.igate = nn.Linear(D, H, **kw)
        self.fgate = nn.Linear(D, H, **kw)
        self.ogate = nn.Linear(3 * d, H, **kw)   # weight [H, 3d]; applied per head, not as a Linear

    def init_spec(self):
        """SPEC / docs initial values (what `xdistill init` writes)."""
        H, d, p = self.q_feature.shape
        with torch.no_grad():
            eye = torch.eye(d, p, dtype=self.q_feature.dtype)
            self.q_feature.copy_(eye.expand_as(self.q_feature))
            self.k_feature.copy_(eye.expand_as(self.k_feature))
            self.igate.weight.zero_(); self.igate.bias.zero_()
            self.fgate.weight.zero_()
            self.fgate.bias.copy_(torch.linspace(3.0, 6.0, H) if H > 1 else torch.tensor([3.0]))
            self.ogate.weight.zero_(); self.ogate.bias.fill_(-2.0)


class HybridAttention(nn.Module):
    """Replaces a teacher attention module; keeps its submodules under the same names so the
    state dict is the checkpoint's (model.layers.{l}.self_attn.{q_proj,...,xlstm.*})."""

    def __init__(self, teacher_attn, cfg, hy, mlstm_impl="parallel", local_impl="explicit"):
        super().__init__()
        self.H = cfg.num_attention_heads
        self.G = cfg.num_key_value_heads
        self.d = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.H
        self.D = cfg.hidden_size
        self.hy = hy
        self.mlstm_impl = mlstm_impl
        self.local_impl = local_impl
        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"):
            if hasattr(teacher_attn, name):
                setattr(self, name, getattr(teacher_attn, name))
        w = teacher_attn.q_proj.weight
        self.xlstm = XLSTMParams(self.H, self.G, self.d, self.D, hy.p, dtype=w.dtype, device=w.device)
        # QK-norm kind from the norm's width: per head (qwen3) or the whole projection (olmo2/3)
        self.qk_norm = None
        if hasattr(self, "q_norm"):
            self.qk_norm = "head" if self.q_norm.weight.numel() == self.d else "full"

    def feature(self, x, P):
        z = torch.einsum("bhtd,hdp->bhtp", x, P)
        if self.hy.feature_map == "hedgehog":
            return torch.cat([torch.softmax(z, -1), torch.softmax(-z, -1)], dim=-1)
        return torch.softmax(z, -1)

    def heads_out(self, x, position_embeddings):
        """x [B,T,D] -> per-head outputs before W_o, [B,T,H*d]."""
        B, T, _ = x.shape
        H, G, d, hy = self.H, self.G, self.d, self.hy
        q_raw = self.q_proj(x); k_raw = self.k_proj(x); v_raw = self.v_proj(x)
        q, k = q_raw, k_raw
        if self.qk_norm == "full":
            q = self.q_norm(q); k = self.k_norm(k)
        q = q.view(B, T, H, d); k = k.view(B, T, G, d)
        if self.qk_norm == "head":
            q = self.q_norm(q); k = self.k_norm(k)
        q = q.transpose(1, 2); k = k.transpose(1, 2)
        v = v_raw.view(B, T, G, d).transpose(1, 2)
        cos, sin = position_embeddings
        cos = cos.unsqueeze(1).to(q.dtype); sin = sin.unsqueeze(1).to(q.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        # 1. local branch
        loc = local_attention(q, k, v, hy.window, hy.sinks, self.local_impl)     # [B,H,T,d]
        # 2. global branch
        X = self.xlstm
        phq = self.feature(q, X.q_feature)                                     # [B,H,T,dphi]
        phk = self.feature(k, X.k_feature).repeat_interleave(H // G, dim=1)    # [B,H,T,dphi]
        vh = v.repeat_interleave(H // G, dim=1)
        # gates in at least fp32 from here on (under bf16 autocast the Linear gives bf16): a bf16
        # soft cap fused by torch.compile into the mLSTM's backward recomputes the stabiliser's max
        # with other rounding than the forward and its amax gradient turns into 0/0 (NaN)
        up = lambda t: t.to(torch.promote_types(t.dtype, torch.float32))
        ig = up(X.igate(x)).transpose(1, 2)                                    # [B,H,T]
        fg = up(X.fgate(x)).transpose(1, 2)
        if hy.gate_softcap > 0:
            c = hy.gate_softcap
            ig = c * torch.tanh(ig / c); fg = c * torch.tanh(fg / c)
        if self.mlstm_impl == "parallel":
            glo = mlstm_parallel(phq, phk, vh, ig, fg, hy.normalizer, hy.eps)
        elif self.mlstm_impl == "recurrent":
            glo = mlstm_recurrent(phq, phk, vh, ig, fg, hy.normalizer, hy.eps)[0]
        elif self.mlstm_impl == "chunkwise64":  # chunkwise in the activation dtype (reference checks)
            glo = mlstm_chunkwise(phq, phk, vh, ig, fg, hy.normalizer, hy.eps, hy.chunk)
        else:  # chunkwise, states in fp32 (SPEC 2.3) whatever the activation dtype
            f32 = lambda t: t.float()
            glo = mlstm_chunkwise(f32(phq), f32(phk), f32(vh), f32(ig), f32(fg), hy.normalizer, hy.eps,
                                  hy.chunk).to(vh.dtype)
        # 3. mixing gate from the raw projections [q_raw^h, k_raw^g(h), v_raw^g(h)]
        rep = H // G
        qr = q_raw.view(B, T, H, d)
        kr = k_raw.view(B, T, G, d).repeat_interleave(rep, dim=2)
        vr = v_raw.view(B, T, G, d).repeat_interleave(rep, dim=2)
        cat = torch.cat([qr, kr, vr], dim=-1)                                  # [B,T,H,3d]
        o = torch.sigmoid((cat * X.ogate.weight).sum(-1) + X.ogate.bias)       # [B,T,H]
        o = o.transpose(1, 2).unsqueeze(-1)                                    # [B,H,T,1]
        out = o * glo + (1 - o) * loc
        return out.transpose(1, 2).reshape(B, T, H * d)

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
        return self.o_proj(self.heads_out(hidden_states, position_embeddings)), None


# ----------------------------------------------------------------------------------------------
# Loading a student checkpoint
# ----------------------------------------------------------------------------------------------
def _fp64_rope(model):
    """HF rotary modules compute cos/sin in fp32; for the float64 reference recompute them in
    float64 from the module's (possibly dynamically updated) inverse frequencies."""
    rot = model.model.rotary_emb
    orig = rot.forward

    def fwd(x, position_ids, *args, **kwargs):
        orig(x, position_ids, *args, **kwargs)  # lets dynamic rope update its frequencies
        lt = args[0] if args else kwargs.get("layer_type")
        inv = getattr(rot, "%s_inv_freq" % lt) if lt else rot.inv_freq
        sc = getattr(rot, "%s_attention_scaling" % lt) if lt else rot.attention_scaling
        freqs = position_ids[..., None].double() * inv.double()
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos() * sc, emb.sin() * sc

    rot.forward = fwd


def _fp64_norms(model):
    """HF RMSNorm modules compute in float32 whatever the model dtype (x.to(torch.float32));
    for a float64 reference, the same formula in float64: w * x / sqrt(mean(x^2) + eps)."""
    for mod in model.modules():
        if type(mod).__name__.endswith("RMSNorm"):
            def fwd(x, mod=mod):
                return mod.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + mod.variance_epsilon))
            mod.forward = fwd


def build_model(cfg_json, dtype=torch.float64, device="cpu", mlstm_impl="parallel", local_impl="explicit",
                init=False):
    from transformers import AutoConfig, AutoModelForCausalLM
    cj = {k: v for k, v in cfg_json.items() if k != "xdistill"}
    cfg = AutoConfig.for_model(**cj)
    cfg._attn_implementation = "eager"
    torch_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    finally:
        torch.set_default_dtype(torch_dtype)
    H = cfg.num_attention_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    hy = HybridConfig(cfg_json.get("xdistill"), d)
    hybridize(model, cfg, hy, mlstm_impl, local_impl, init)
    model.eval()
    return model, hy


def hybridize(model, cfg, hy, mlstm_impl="parallel", local_impl="explicit", init=False):
    """Replace every attention module of an HF model by a HybridAttention (in place)."""
    layer_types = getattr(cfg, "layer_types", None) or []
    for l, layer in enumerate(model.model.layers):
        hy_l = hy
        if l < len(layer_types) and layer_types[l] == "sliding_attention" and getattr(cfg, "sliding_window", None):
            # A teacher sliding-window layer (OLMo 3): local window min(W, the teacher's window),
            # no sinks. Not in SPEC / the docs before this tool; inferred from `xdistill forward`
            # (black box) and now written in docs/checkpoint-format.md.
            hy_l = copy.copy(hy)
            hy_l.window = min(hy.window, int(cfg.sliding_window))
            hy_l.sinks = 0
        layer.self_attn = HybridAttention(layer.self_attn, cfg, hy_l, mlstm_impl, local_impl)
        if init:
            layer.self_attn.xlstm.init_spec()
    return model


def load(d, dtype=torch.float64, device="cpu", mlstm_impl="parallel"):
    """A student checkpoint directory -> (HF model with hybrid layers, HybridConfig)."""
    from safetensors.torch import load_file
    with open(os.path.join(d, "config.json")) as f:
        cj = json.load(f)
    if "xdistill" not in cj:
        raise ValueError("%s: not a student (no xdistill section in config.json)" % d)
    model, hy = build_model(cj, dtype, device, mlstm_impl)
    sd = {}
    files = [os.path.join(d, "model.safetensors")]
    idx = os.path.join(d, "model.safetensors.index.json")
    if not os.path.exists(files[0]) and os.path.exists(idx):
        with open(idx) as f:
            files = sorted({os.path.join(d, v) for v in json.load(f)["weight_map"].values()})
    for fn in files:
        sd.update(load_file(fn))
    sd = {k: v.to(dtype) for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [m for m in missing if not (m == "lm_head.weight" and model.config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError("%s: missing %s unexpected %s" % (d, missing, unexpected))
    if model.config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    if dtype == torch.float64:
        _fp64_rope(model)
        _fp64_norms(model)
    return model, hy


def set_mlstm_impl(model, impl):
    for layer in model.model.layers:
        layer.self_attn.mlstm_impl = impl


@torch.no_grad()
def forward(model, ids):
    ids = torch.as_tensor(np.asarray(ids), dtype=torch.long)
    if ids.dim() == 1:
        ids = ids[None]
    return model(input_ids=ids, use_cache=False).logits


def max_rel(x, ref):
    x = np.asarray(x, dtype=np.float64); ref = np.asarray(ref, dtype=np.float64)
    return float(np.abs(x - ref).max() / max(np.abs(ref).max(), 1e-30))


# ----------------------------------------------------------------------------------------------
# Writing students: from a teacher (docs/checkpoint-format.md) and perturbed copies
# ----------------------------------------------------------------------------------------------
def new_tensor_shapes(cfg_json, hy):
    H = cfg_json["num_attention_heads"]; G = cfg_json.get("num_key_value_heads", H)
    D = cfg_json["hidden_size"]; d = cfg_json.get("head_dim") or D // H
    return dict(q_feature=(H, d, hy.p), k_feature=(G, d, hy.p), **{"igate.weight": (H, D), "igate.bias": (H,),
                "fgate.weight": (H, D), "fgate.bias": (H,), "ogate.weight": (H, 3 * d), "ogate.bias": (H,)})


def perturbed_tensors(cfg_json, hy, seed):
    """Random nonzero hybrid parameters. Gate biases per head cycle through large and small
    values (input gate: strongly negative to beyond the soft cap; forget gate: forgetting fast
    to remembering), so the stabiliser, both normalisers and the cap all matter."""
    rng = np.random.default_rng(seed)
    H = cfg_json["num_attention_heads"]; D = cfg_json["hidden_size"]
    out = {}
    bi_choices = np.array([-6.0, 1.5, 20.0, -0.5, 4.0, -12.0])
    bf_choices = np.array([-3.0, 8.0, 0.5, 25.0, 2.0, -1.0])
    for l in range(cfg_json["num_hidden_layers"]):
        pre = "model.layers.%d.self_attn.xlstm." % l
        sh = new_tensor_shapes(cfg_json, hy)
        d, p = sh["q_feature"][1], sh["q_feature"][2]
        eye = np.eye(d, p)
        t = {}
        t["q_feature"] = eye + 0.7 * rng.standard_normal(sh["q_feature"])
        t["k_feature"] = eye + 0.7 * rng.standard_normal(sh["k_feature"])
        t["igate.weight"] = 1.0 / math.sqrt(D) * rng.standard_normal(sh["igate.weight"])
        t["fgate.weight"] = 1.0 / math.sqrt(D) * rng.standard_normal(sh["fgate.weight"])
        t["igate.bias"] = np.roll(bi_choices, l)[np.arange(H) % 6] + 0.3 * rng.standard_normal(H)
        t["fgate.bias"] = np.roll(bf_choices, l)[np.arange(H) % 6] + 0.3 * rng.standard_normal(H)
        t["ogate.weight"] = 0.25 * rng.standard_normal(sh["ogate.weight"])
        t["ogate.bias"] = 1.5 * rng.standard_normal(H)
        for k, v in t.items():
            out[pre + k] = np.ascontiguousarray(v, dtype=np.float32)
    return out


def spec_init_tensors(cfg_json, hy):
    H = cfg_json["num_attention_heads"]
    out = {}
    for l in range(cfg_json["num_hidden_layers"]):
        pre = "model.layers.%d.self_attn.xlstm." % l
        sh = new_tensor_shapes(cfg_json, hy)
        eye = np.eye(sh["q_feature"][1], sh["q_feature"][2])
        out[pre + "q_feature"] = np.broadcast_to(eye, sh["q_feature"])
        out[pre + "k_feature"] = np.broadcast_to(eye, sh["k_feature"])
        out[pre + "igate.weight"] = np.zeros(sh["igate.weight"]); out[pre + "igate.bias"] = np.zeros(H)
        out[pre + "fgate.weight"] = np.zeros(sh["fgate.weight"])
        out[pre + "fgate.bias"] = np.linspace(3.0, 6.0, H) if H > 1 else np.array([3.0])
        out[pre + "ogate.weight"] = np.zeros(sh["ogate.weight"]); out[pre + "ogate.bias"] = np.full(H, -2.0)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def _read_safetensors(d):
    from safetensors import safe_open
    tensors, meta = {}, None
    with safe_open(os.path.join(d, "model.safetensors"), "pt") as f:
        meta = f.metadata()
        for k in f.keys():
            tensors[k] = f.get_tensor(k)
    return tensors, meta


def write_student(src_dir, out_dir, hy_section, new_tensors, metadata=None, extra_files=True):
    """Copy src_dir (a teacher or student directory) to out_dir with the given xdistill section
    and new tensors (any previous xlstm tensors replaced); other tensors keep names and dtypes."""
    from safetensors.torch import save_file
    with open(os.path.join(src_dir, "config.json")) as f:
        cj = json.load(f)
    tensors, meta = _read_safetensors(src_dir)
    tensors = {k: v for k, v in tensors.items() if ".self_attn.xlstm." not in k}
    for k, v in new_tensors.items():
        tensors[k] = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
    cj["xdistill"] = hy_section
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cj, f, indent=2)
    m = dict(meta or {})
    m.update(metadata or {})
    m.setdefault("format", "pt")
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, os.path.join(out_dir, "model.safetensors"), metadata=m)
    if extra_files:
        for fn in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
            if os.path.exists(os.path.join(src_dir, fn)):
                shutil.copy(os.path.join(src_dir, fn), os.path.join(out_dir, fn))


def perturb_student(src, out, seed=0, **overrides):
    with open(os.path.join(src, "config.json")) as f:
        cj = json.load(f)
    H = cj["num_attention_heads"]
    d = cj.get("head_dim") or cj["hidden_size"] // H
    sec = dict(cj.get("xdistill") or {})
    sec.update({k: v for k, v in overrides.items() if v is not None})
    hy = HybridConfig(sec, d)
    write_student(src, out, hy.section(), perturbed_tensors(cj, hy, seed), {"xdistill": "student_reference perturb"})
    return hy


# ----------------------------------------------------------------------------------------------
# Self-checks of the three mLSTM forms (float64)
# ----------------------------------------------------------------------------------------------
def check_forms(seed=0, verbose=False):
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for normalizer in ("paper", "xlstm"):
        for T, L in ((13, 4), (16, 4), (7, 8), (1, 3)):
            B, H, p, dv = 2, 3, 5, 4
            q = torch.softmax(torch.randn(B, H, T, p, generator=g, dtype=torch.float64), -1)
            k = torch.softmax(torch.randn(B, H, T, p, generator=g, dtype=torch.float64), -1)
            v = torch.randn(B, H, T, dv, generator=g, dtype=torch.float64)
            ig = 6 * torch.randn(B, H, T, generator=g, dtype=torch.float64) - 2
            fg = 4 * torch.randn(B, H, T, generator=g, dtype=torch.float64)
            hp = mlstm_parallel(q, k, v, ig, fg, normalizer, 1e-6)
            hr, (C, n, m) = mlstm_recurrent(q, k, v, ig, fg, normalizer, 1e-6)
            hc, (C2, n2, m2) = mlstm_chunkwise(q, k, v, ig, fg, normalizer, 1e-6, L, return_state=True)
            e = max(max_rel(hr, hp), max_rel(hc, hp), max_rel(C2, C), max_rel(n2, n), max_rel(m2, m))
            if verbose:
                print("  mlstm forms %s T=%d L=%d: max rel %.3g" % (normalizer, T, L, e))
            worst = max(worst, e)
    return worst


# ----------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------
def cmd_compare(a):
    model, hy = load(a.student)
    ids = np.load(a.ids)
    ref = forward(model, ids).numpy()
    got = np.load(a.logits)
    if got.shape != ref.shape:
        got = got.reshape(ref.shape)
    e = max_rel(got, ref)
    # the other mLSTM forms on the same checkpoint
    set_mlstm_impl(model, "recurrent")
    e_rec = max_rel(forward(model, ids).numpy(), ref)
    set_mlstm_impl(model, "chunkwise64")  # the chunkwise form, in float64
    e_chk = max_rel(forward(model, ids).numpy(), ref)
    T = ids.shape[-1]
    print("student %s: W=%d S=%d T=%d chunk=%d %s d_phi=%d %s normaliser softcap=%g" % (
        a.student, hy.window, hy.sinks, T, hy.chunk, hy.feature_map, hy.d_phi, hy.normalizer, hy.gate_softcap))
    print("reference forms agree: recurrent %.3g, chunkwise %.3g (float64)" % (e_rec, e_chk))
    print("max relative error (max|diff| / max|ref|) of %s vs float64 reference: %.3g" % (a.logits, e))
    if T <= hy.window + hy.sinks:
        print("warning: T <= W + S: the local branch sees the whole context")
    if T % hy.chunk == 0:
        print("note: T is a multiple of the chunk")
    return 0 if e <= a.tol else 1


def cmd_forward(a):
    model, _ = load(a.student)
    np.save(a.out, forward(model, np.load(a.ids)).numpy())
    return 0


def cmd_perturb(a):
    hy = perturb_student(a.student, a.out, a.seed, feature_map=a.feature_map, d_phi=a.d_phi,
                         normalizer=a.normalizer, gate_softcap=a.gate_softcap, window=a.window,
                         sinks=a.sinks, chunk=a.chunk)
    print("perturb: wrote %s (%s)" % (a.out, json.dumps(hy.section())))
    return 0


# Fixture cases: family, hybrid settings, T. T > W + S and T not a multiple of the chunk.
FIXTURES = [
    ("llama-gqa", dict(window=3, sinks=1, feature_map="softmax", normalizer="paper", gate_softcap=15.0, chunk=4), 13),
    ("qwen2", dict(window=4, sinks=2, feature_map="hedgehog", d_phi=16, normalizer="xlstm", gate_softcap=15.0, chunk=5), 14),
    ("qwen3", dict(window=3, sinks=0, feature_map="hedgehog", d_phi=12, normalizer="paper", gate_softcap=0.0, chunk=4), 13),
    ("olmo2", dict(window=5, sinks=1, feature_map="softmax", d_phi=8, normalizer="xlstm", gate_softcap=15.0, chunk=3), 13),
    # teacher layer 0 is a sliding-window layer (window 4): local window min(6, 4), no sinks there
    ("olmo3", dict(window=6, sinks=2, feature_map="softmax", normalizer="paper", gate_softcap=15.0, chunk=4), 15),
]


def sensitivity(model, ids, ref):
    """Max rel change of the logits under plausible misreadings of the docs (each must be far
    above the C test's tolerance, or the fixture would not catch it)."""
    layers = [l.self_attn for l in model.model.layers]
    saved = [a.hy for a in layers]
    def run(**ch):
        for a, h in zip(layers, saved):
            a.hy = copy.copy(h)
            for k, v in ch.items():
                setattr(a.hy, k, v(h) if callable(v) else v)
        r = max_rel(forward(model, ids).numpy(), ref)
        for a, h in zip(layers, saved):
            a.hy = h
        return r
    other = {"paper": "xlstm", "xlstm": "paper"}
    out = {"other normaliser": run(normalizer=lambda h: other[h.normalizer]),
           "softcap 15<->0": run(gate_softcap=lambda h: 0.0 if h.gate_softcap > 0 else 15.0),
           "window+1": run(window=lambda h: h.window + 1),
           "eps x100": run(eps=lambda h: h.eps * 100)}
    if any(h.sinks for h in saved):
        out["no sinks"] = run(sinks=0)
    return out


def cmd_make_fixtures(a):
    out_root = os.path.join(REPO, "tests", "fixtures", "student-reference")
    if os.path.isdir(out_root):
        shutil.rmtree(out_root)
    os.makedirs(out_root)
    cases = []
    for i, (fam, sec, T) in enumerate(FIXTURES):
        tdir = os.path.join(REPO, "tests", "fixtures", "teachers", fam, "fp32")
        with open(os.path.join(tdir, "config.json")) as f:
            cj = json.load(f)
        H = cj["num_attention_heads"]; d = cj.get("head_dim") or cj["hidden_size"] // H
        hy = HybridConfig(dict(DEFAULTS, **sec), d)
        sdir = os.path.join(out_root, fam)
        write_student(tdir, sdir, hy.section(), perturbed_tensors(cj, hy, 1234 + i),
                      {"xdistill": "tools/student_reference.py make-fixtures"}, extra_files=False)
        rng = np.random.default_rng(50 + i)
        ids = rng.integers(3, cj["vocab_size"], size=(1, T)).astype(np.int64)
        np.save(os.path.join(sdir, "ids.npy"), ids)
        model, _ = load(sdir)
        lg = forward(model, ids).numpy()
        set_mlstm_impl(model, "recurrent")
        e = max_rel(forward(model, ids).numpy(), lg)
        np.save(os.path.join(sdir, "logits_f64.npy"), lg.astype(np.float64))
        print("%s: T=%d %s; recurrent vs parallel %.2g" % (fam, T, json.dumps(hy.section()), e))
        set_mlstm_impl(model, "parallel")
        sens = sensitivity(model, ids, lg)
        print("  the C test's 1e-5 tolerance vs what a wrong reading would change: " +
              ", ".join("%s %.2g" % kv for kv in sens.items()))
        weak = [k for k, v in sens.items() if v < 1e-4]
        if weak:
            raise SystemExit("fixture %s does not exercise: %s" % (fam, weak))
        cases.append(fam)
    with open(os.path.join(out_root, "README.md"), "w") as f:
        f.write("Perturbed hybrid students with float64 reference logits from tools/student_reference.py\n"
                "(an independent PyTorch implementation of SPEC section 2 / docs/checkpoint-format.md).\n"
                "Regenerate: `python3 tools/student_reference.py make-fixtures`. Checked by\n"
                "tests/test_student_reference.c. Per case: config.json + model.safetensors (student),\n"
                "ids.npy int64 [1,T], logits_f64.npy float64 [1,T,V].\n")
    return 0


def main(argv=None):
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--student", required=True); c.add_argument("--ids", required=True)
    c.add_argument("--logits", required=True); c.add_argument("--tol", type=float, default=1e-5)
    c = sub.add_parser("forward")
    c.add_argument("--student", required=True); c.add_argument("--ids", required=True); c.add_argument("--out", required=True)
    c = sub.add_parser("perturb")
    c.add_argument("--student", required=True); c.add_argument("--out", required=True)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--feature-map"); c.add_argument("--d-phi", type=int); c.add_argument("--normalizer")
    c.add_argument("--gate-softcap", type=float); c.add_argument("--window", type=int)
    c.add_argument("--sinks", type=int); c.add_argument("--chunk", type=int)
    sub.add_parser("make-fixtures")
    sub.add_parser("check-forms")
    c = sub.add_parser("bench")
    c.add_argument("--seq", type=int, default=4096); c.add_argument("--tiny", action="store_true")
    c.add_argument("--no-compile", action="store_true"); c.add_argument("--device", default=None)
    c.add_argument("--reps", type=int, default=5)
    c.add_argument("--batch", type=int, default=1, help="sequences per (micro-)batch (default 1)")
    c.add_argument("--fp32-matmul", default="high", choices=("high", "highest"),
                   help="high: TF32 for fp32 matrix products on CUDA (default); highest: full fp32")
    c.add_argument("--only", default="", help="comma list of %s (default: all)" % ",".join(STAGES))
    c.add_argument("--stage2-variants", default=",".join(STAGE2_VARIANTS),
                   help="comma list of %s" % ",".join(STAGE2_VARIANTS))
    a = ap.parse_args(argv)
    if a.cmd == "compare":
        return cmd_compare(a)
    if a.cmd == "forward":
        return cmd_forward(a)
    if a.cmd == "perturb":
        return cmd_perturb(a)
    if a.cmd == "make-fixtures":
        return cmd_make_fixtures(a)
    if a.cmd == "check-forms":
        w = check_forms(verbose=True)
        print("worst %.3g" % w)
        return 0 if w < 1e-12 else 1
    if a.cmd == "bench":
        return cmd_bench(a)


# ----------------------------------------------------------------------------------------------
# GPU benchmark (stage I step, stage II step, prefill) at the Llama-3.2-1B shape
# ----------------------------------------------------------------------------------------------
def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, dev, warm, reps):
    for _ in range(warm):
        fn()
    _sync(dev)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench_config(tiny):
    from transformers import LlamaConfig
    if not tiny:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from bench_reference import make_config  # the teacher bench's Llama-3.2-1B shape
        cfg = make_config()
        hy = HybridConfig(dict(window=512, sinks=4, d_phi=64, chunk=64), 64)
        return cfg, hy, 256
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                      rms_norm_eps=1e-5, tie_word_embeddings=True,
                      rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 64})
    cfg._attn_implementation = "sdpa"
    return cfg, HybridConfig(dict(window=16, sinks=2, d_phi=16, chunk=8), 16), 16


def _randomize_hybrid(model, seed=0):
    """Nonzero hybrid parameters (init values would make the gates constant)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, XLSTMParams):
                for p in mod.parameters():
                    p.add_(0.05 * torch.randn(p.shape, generator=g).to(p.device, p.dtype))


def bench_tiny_selfcheck(cfg, hy):
    """--tiny: the bench's student path (chunkwise mLSTM, SDPA local branch) against the
    reference path (parallel mLSTM, explicit mask), float64 on CPU."""
    from transformers import LlamaForCausalLM
    torch.manual_seed(0)
    m = LlamaForCausalLM(copy.deepcopy(cfg)).double()
    hybridize(m, cfg, hy, "parallel", "explicit", init=True)
    _fp64_rope(m); _fp64_norms(m)
    _randomize_hybrid(m)
    m.eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 37))
    ref = forward(m, ids)
    for layer in m.model.layers:
        layer.self_attn.mlstm_impl = "chunkwise64"; layer.self_attn.local_impl = "sdpa"
    e = max_rel(forward(m, ids).numpy(), ref.numpy())
    print("tiny self-check: chunkwise + SDPA path vs parallel + explicit mask (float64): max rel %.3g" % e)
    if e > 1e-10:
        raise SystemExit("bench self-check failed")
    for layer in m.model.layers:
        layer.self_attn.local_impl = "blocked"
    e = max_rel(forward(m, ids).numpy(), ref.numpy())
    print("tiny self-check: chunkwise + blocked local branch vs parallel + explicit mask (float64): max rel %.3g" % e)
    if e > 1e-10:
        raise SystemExit("bench self-check failed (blocked)")
    # the blocked local branch alone, over block sizes / windows / sinks / lengths that hit the edges
    g = torch.Generator().manual_seed(3)
    worst = 0.0
    for (T, W, S, blk) in ((37, 16, 2, 8), (37, 5, 3, 16), (64, 16, 4, 16), (9, 4, 0, 4), (50, 64, 2, 8),
                           (33, 1, 1, 8), (70, 7, 9, 128)):
        q = torch.randn(2, 4, T, 8, generator=g, dtype=torch.float64)
        k = torch.randn(2, 2, T, 8, generator=g, dtype=torch.float64)
        v = torch.randn(2, 2, T, 8, generator=g, dtype=torch.float64)
        worst = max(worst, max_rel(local_attention_blocked(q, k, v, W, S, blk).numpy(),
                                   local_attention(q, k, v, W, S, "explicit").numpy()))
    print("tiny self-check: blocked local branch alone (7 shapes, float64): max rel %.3g" % worst)
    if worst > 1e-12:
        raise SystemExit("bench self-check failed (blocked local branch)")


STAGES = ("teacher", "stage1", "stage2", "prefill")
STAGE2_VARIANTS = ("eager", "eager_blocked", "compiled", "compiled_flex", "compiled_accum8")
ACCUM = 8  # micro-batches per optimiser step of the *_accum8 variant


def regional_compile(model, on):
    """torch.compile each decoder layer (regional compilation): the layers share one code object
    and, with inlined nn.Modules (the default since torch 2.5), one compiled graph whose guards
    are on the layer's type and attributes, not its identity, so 16 layers compile once per
    distinct (grad mode, layer kind). on=False restores the eager layers."""
    for layer in model.model.layers:
        if on:
            layer.compile(dynamic=False)
        else:
            layer._compiled_call_impl = None


def dynamo_stats():
    try:
        from torch._dynamo.utils import counters
        return "dynamo: unique_graphs=%d, frames ok=%d, recompiles=%d, graph breaks=%d" % (
            counters["stats"]["unique_graphs"], counters["frames"]["ok"],
            sum(counters["recompiles"].values()), sum(counters["graph_break"].values()))
    except Exception as ex:  # counters are internal: never fail the bench on them
        return "dynamo stats unavailable (%s)" % type(ex).__name__


def cmd_bench(a):
    from transformers import LlamaForCausalLM
    dev = torch.device(a.device or ("cpu" if a.tiny else "cuda"))
    cfg, hy, topk = bench_config(a.tiny)
    T = a.seq if not (a.tiny and a.seq == 4096) else 64
    B = a.batch
    if B < 1:
        raise SystemExit("--batch: %d is not a positive number of sequences" % B)
    only = [x for x in a.only.split(",") if x] if a.only else list(STAGES)
    variants = [x for x in a.stage2_variants.split(",") if x]
    for x in only:
        if x not in STAGES:
            raise SystemExit("--only: %r is not one of %s" % (x, ",".join(STAGES)))
    for x in variants:
        if x not in STAGE2_VARIANTS:
            raise SystemExit("--stage2-variants: %r is not one of %s" % (x, ",".join(STAGE2_VARIANTS)))
    if a.no_compile:
        variants = [x for x in variants if not x.startswith("compiled")]
    if a.tiny:
        bench_tiny_selfcheck(cfg, hy)
        variants = [x for x in variants if x != "compiled_flex" or dev.type == "cuda" or a.stage2_variants != ",".join(STAGE2_VARIANTS)]  # flex: GPU only unless asked
    warm, reps = (1, 2) if a.tiny else (2, a.reps)
    if dev.type == "cuda" and a.fp32_matmul != "highest":
        # TF32 for the fp32 parts (the chunkwise mLSTM keeps fp32 states, SPEC 2.3): what a fair
        # engineer sets on Hopper; xdistill's own GPU mLSTM multiplies in bf16
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    import transformers
    card = torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"
    card_tag = "".join(ch if ch.isalnum() or ch in "-." else "_" for ch in card)
    print("torch %s, transformers %s, device %s%s" % (torch.__version__, transformers.__version__, dev,
          " (%s)" % card if dev.type == "cuda" else ""))
    print("shape: %d layers, hidden %d, %d heads, %d KV heads, head dim %d, MLP %d, vocab %d; T=%d B=%d; "
          "W=%d S=%d d_phi=%d chunk=%d %s; bf16 autocast, fp32 master weights, chunkwise mLSTM (fp32 states), "
          "fp32 matmul precision %s" % (
              cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
              cfg.head_dim, cfg.intermediate_size, cfg.vocab_size, T, B, hy.window, hy.sinks, hy.d_phi,
              hy.chunk, hy.feature_map, "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"))
    t_setup = time.perf_counter()
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with dev:
        teacher = LlamaForCausalLM(cfg)
    torch.set_default_dtype(prev)
    teacher.eval().requires_grad_(False)
    ids = torch.randint(0, cfg.vocab_size, (B, T), device=dev)
    amp = lambda: torch.autocast(device_type=dev.type, dtype=torch.bfloat16)
    compiles = [False] if a.no_compile else [False, True]
    results = {}

    def peak_reset():
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib():
        return torch.cuda.max_memory_allocated() / 2 ** 30 if dev.type == "cuda" else 0.0

    def report(name, seconds, compile_s=0.0):
        results[name] = B * T / seconds
        print("RESULT %s %.0f tokens/s  (%.2f ms/step)" % (name, B * T / seconds, seconds * 1e3))
        # one machine-readable line per measurement (grep '^REF ')
        print("REF %s tokens_per_s=%.0f step_ms=%.2f peak_gib=%.2f compile_s=%.1f T=%d card=%s" % (
            name, B * T / seconds, seconds * 1e3, peak_gib(), compile_s, T, card_tag), flush=True)

    def timed_compiled(fn, nwarm):
        """(steady step seconds, compile seconds): the warm-up steps' excess over the steady step."""
        ws = []
        for _ in range(nwarm):
            t0 = time.perf_counter()
            fn()
            _sync(dev)
            ws.append(time.perf_counter() - t0)
        st = _timed(fn, dev, 0, reps)
        print("  warm-up steps %s s; steady %.3f s" % (", ".join("%.1f" % w for w in ws), st))
        return st, max(0.0, sum(ws) - len(ws) * st)

    def guarded(name, fn):
        try:
            fn()
        except Exception as ex:  # torch.compile may not work everywhere: report and go on
            msg = str(ex).splitlines()[0][:200] if str(ex) else ""
            print("RESULT %s failed: %s: %s" % (name, type(ex).__name__, msg))
            print("REF %s failed=%s" % (name, type(ex).__name__), flush=True)
            if dev.type == "cuda":
                torch.cuda.empty_cache()

    # ---- teacher prefill (the baseline the student is compared with, same run) ----
    if "teacher" in only:
        peak_reset()
        with torch.inference_mode():
            report("teacher_prefill", _timed(lambda: teacher(input_ids=ids, use_cache=False, logits_to_keep=1), dev, warm, reps))

    # ---- (a) stage I: teacher-forced per-layer MSE, new parameters only ----
    if "stage1" in only:
        captured = {}
        hooks = []
        for l, layer in enumerate(teacher.model.layers):
            def pre_attn(mod, args, kwargs, l=l):
                captured["x%d" % l] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
                captured["pe"] = kwargs["position_embeddings"]
            def pre_o(mod, args, l=l):
                captured["a%d" % l] = args[0]
            hooks.append(layer.self_attn.register_forward_pre_hook(pre_attn, with_kwargs=True))
            hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(pre_o))
        # hybrid layers sharing the teacher's frozen projections; new parameters fp32
        s1 = []
        for l, layer in enumerate(teacher.model.layers):
            ha = HybridAttention(layer.self_attn, cfg, hy, "chunkwise", "sdpa")
            ha.xlstm.float().requires_grad_(True)
            ha.xlstm.init_spec()
            s1.append(ha)
        _randomize_hybrid(nn.ModuleList(s1))
        new_params = [p for ha in s1 for p in ha.xlstm.parameters()]
        opt1 = torch.optim.AdamW(new_params, lr=1e-3, weight_decay=0.1, **({"fused": True} if dev.type == "cuda" else {}))
        print("stage I: %d new parameters" % sum(p.numel() for p in new_params))

        def layer_loss(ha, x, cos, sin, target):
            out = ha.heads_out(x, (cos, sin))
            return F.mse_loss(out.float(), target.float())

        for compiled in compiles:
            name = "stage1_step" + ("_compiled" if compiled else "")
            def run1(compiled=compiled):
                lf = torch.compile(layer_loss, dynamic=False) if compiled else layer_loss

                def step():
                    with torch.no_grad():
                        teacher(input_ids=ids, use_cache=False, logits_to_keep=1)
                    cos, sin = captured["pe"]
                    total = 0.0
                    for l, ha in enumerate(s1):  # layers are independent: backward one at a time
                        with amp():
                            loss = lf(ha, captured["x%d" % l], cos, sin, captured["a%d" % l])
                        loss.backward()
                        total += loss.detach()
                    torch.nn.utils.clip_grad_norm_(new_params, 1.0)
                    opt1.step()
                    opt1.zero_grad(set_to_none=True)
                    return total
                peak_reset()
                if compiled:
                    st, cs = timed_compiled(step, warm + 1)
                    report(name, st, cs)
                else:
                    report(name, _timed(step, dev, warm, reps))
            guarded(name, run1)
        for h in hooks:
            h.remove()
        captured.clear()
        del s1, opt1, new_params
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    if "stage2" not in only and "prefill" not in only:
        return 0
    # ---- the student model (fp32 master weights: teacher copy + hybrid parameters) ----
    with dev:
        student = LlamaForCausalLM(cfg).float()
    student.load_state_dict(teacher.state_dict())
    hybridize(student, cfg, hy, "chunkwise", "sdpa", init=True)
    _randomize_hybrid(student)
    student.to(dev).train()
    n_student = sum(p.numel() for p in student.parameters())
    print("setup (teacher + student built) %.1f s" % (time.perf_counter() - t_setup))

    # ---- (b) stage II: top-k sparse KL + CE, all parameters, AdamW (fused on CUDA), clip 1.0 ----
    gamma, beta, tau = 0.9, 0.1, 1.0

    def kd_loss(logits, ids, t_idx, t_val):
        z = logits[:, :-1].float() / tau
        ce = F.cross_entropy(z.reshape(-1, z.shape[-1]), ids[:, 1:].reshape(-1))
        lps = torch.log_softmax(z.gather(-1, t_idx[:, :-1]), -1)     # student renormalised over K
        lpt = torch.log_softmax(t_val[:, :-1] / tau, -1)               # teacher renormalised over K
        kl = (lpt.exp() * (lpt - lps)).sum(-1).mean()
        return gamma * ce + beta * kl

    if "stage2" in only and variants and dev.type == "cuda":
        # the local-branch implementations against each other at the bench shape (bf16, forward)
        g = torch.Generator(device=dev).manual_seed(1)
        H, G, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q = torch.randn(1, H, T, d, device=dev, dtype=torch.bfloat16, generator=g)
        k = torch.randn(1, G, T, d, device=dev, dtype=torch.bfloat16, generator=g)
        v = torch.randn(1, G, T, d, device=dev, dtype=torch.bfloat16, generator=g)
        ref = local_attention(q.float(), k.float(), v.float(), hy.window, hy.sinks, "sdpa")
        for impl in ("sdpa", "blocked") + (("flex",) if "compiled_flex" in variants else ()):
            try:
                fn = local_attention
                if impl == "flex":
                    flex_block_mask(T, hy.window, hy.sinks, dev)
                    fn = torch.compile(local_attention, dynamic=False)
                o = fn(q, k, v, hy.window, hy.sinks, impl).float()
                print("  local branch %s (bf16) vs fp32 SDPA: rel L2 %.2e" % (impl, ((o - ref).norm() / ref.norm()).item()))
            except Exception as ex:
                print("  local branch %s check failed: %s: %s" % (impl, type(ex).__name__, str(ex)[:200]))
        del q, k, v, ref
    if "stage2" in only and variants:
        opt2 = torch.optim.AdamW(student.parameters(), lr=1e-5, weight_decay=0.1,
                                 **({"fused": True} if dev.type == "cuda" else {}))
        print("stage II: %d parameters (all), top-k %d, loss %.1f CE + %.1f KL, teacher in the same step; "
              "variants %s" % (n_student, topk, gamma, beta, ",".join(variants)))
        print("  eager: local branch SDPA with a T x T mask; eager_blocked: local branch SDPA over query "
              "blocks of %d (window + sinks only); compiled: eager_blocked with every decoder layer "
              "(student and teacher) torch.compile'd (regional, dynamic=False) and the loss compiled; "
              "compiled_flex: compiled with flex_attention (block mask) for the local branch; compiled_accum8: "
              "compiled with %d micro-batches per optimiser step (gradient accumulation), reported per "
              "micro-batch" % (LOCAL_BLOCK, ACCUM))

        for var in variants:
            name = {"eager": "stage2_step", "eager_blocked": "stage2_step_blocked",
                    "compiled": "stage2_step_compiled", "compiled_flex": "stage2_step_compiled_flex",
                    "compiled_accum8": "stage2_micro_compiled_accum8"}[var]
            local = {"eager": "sdpa", "eager_blocked": "blocked", "compiled": "blocked", "compiled_flex": "flex",
                     "compiled_accum8": "blocked"}[var]
            compiled = var.startswith("compiled")
            n_micro = ACCUM if var.endswith("_accum8") else 1

            def run2(compiled=compiled, local=local, name=name, n_micro=n_micro):
                for layer in student.model.layers:
                    layer.self_attn.local_impl = local
                if local == "flex":
                    flex_block_mask(T, hy.window, hy.sinks, dev)   # built outside the compiled region
                lossf = kd_loss
                if compiled:
                    torch._dynamo.reset()
                    regional_compile(student, True)
                    regional_compile(teacher, True)
                    lossf = torch.compile(kd_loss, dynamic=False)

                def step():
                    for _ in range(n_micro):
                        with torch.no_grad():
                            tl = teacher(input_ids=ids, use_cache=False).logits
                            t_val, t_idx = tl.topk(topk, dim=-1)   # top-k of the bf16 logits (no fp32 copy)
                            t_val = t_val.float()
                            del tl
                        with amp():
                            logits = student(input_ids=ids, use_cache=False).logits
                        loss = lossf(logits, ids, t_idx, t_val) / n_micro
                        loss.backward()
                        del logits
                    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
                    opt2.step()
                    opt2.zero_grad(set_to_none=True)
                    return loss.detach()
                peak_reset()
                try:
                    if compiled:
                        st, cs = timed_compiled(step, warm + 1)
                        print("  " + dynamo_stats())
                        report(name, st / n_micro, cs)
                    else:
                        report(name, _timed(step, dev, warm, reps))
                    print("  last step's loss %.5f" % step().item())
                finally:
                    regional_compile(student, False)
                    regional_compile(teacher, False)
            guarded(name, run2)
        for layer in student.model.layers:
            layer.self_attn.local_impl = "sdpa"
        s2 = {k: v for k, v in results.items() if k.startswith("stage2_step")}
        if s2:
            best = max(s2, key=s2.get)
            print("REF stage2_best name=%s tokens_per_s=%.0f card=%s" % (best, s2[best], card_tag), flush=True)
        opt2.zero_grad(set_to_none=True)
        del opt2
        if dev.type == "cuda":
            torch.cuda.empty_cache()

    # ---- (c) student prefill, bf16 weights ----
    if "prefill" in only:
        student = student.to(torch.bfloat16).eval().requires_grad_(False)
        del teacher
        for compiled in compiles:
            for keep, suffix in ((1, ""), (0, "_all_logits")):
                name = "student_prefill" + suffix + ("_compiled" if compiled else "")
                def run3(compiled=compiled, keep=keep, name=name):
                    model = torch.compile(student, dynamic=False) if compiled else student
                    peak_reset()
                    with torch.inference_mode():
                        report(name, _timed(lambda: model(input_ids=ids, use_cache=False, logits_to_keep=keep),
                                            dev, warm + (1 if compiled else 0), reps))
                guarded(name, run3)
    if dev.type == "cuda":
        print("peak GPU memory %.1f GiB" % (torch.cuda.max_memory_allocated() / 2 ** 30))
    return 0


if __name__ == "__main__":
    sys.exit(main())
