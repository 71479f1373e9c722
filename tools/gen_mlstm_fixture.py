"""Generate the PyTorch cross-check fixture for the mLSTM ops (tests/test_mlstm.c).

An independent float64 implementation of the SPEC §2.3 recurrence, token by token in PyTorch,
with gradients by autograd; both normalisers. Writes tests/fixtures/mlstm/*.npy (about 20 KB):
inputs qf [B,T,H,P], kf [B,T,G,P], v [B,T,G,D], ig, fg [B,T,H], dh [B,T,H,D], and for each
normaliser N in {paper, max}: h_N and the gradients of sum(dh * h) dqf_N, dkf_N, dv_N, dig_N,
dfg_N.

Rerun from the repo root (CPU, a few seconds):
    python3 tools/gen_mlstm_fixture.py
"""
import os

import numpy as np
import torch

B, T, H, G, P, D = 2, 13, 4, 2, 3, 5
EPS = 1e-6
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "mlstm")


def mlstm(qf, kf, v, ig, fg, norm):
    """h [B,T,H,D] from the stabilised recurrence, m0 = 0, C0 = 0, n0 = 0."""
    rep = H // G
    s = P ** -0.5
    out = []
    for b in range(B):
        heads = []
        for h in range(H):
            g = h // rep
            C = torch.zeros(P, D, dtype=torch.float64)
            n = torch.zeros(P, dtype=torch.float64)
            m = torch.zeros((), dtype=torch.float64)
            hs = []
            for t in range(T):
                l = torch.nn.functional.logsigmoid(fg[b, t, h])
                m_new = torch.maximum(l + m, ig[b, t, h])
                fp = torch.exp(l + m - m_new)
                ip = torch.exp(ig[b, t, h] - m_new)
                k, vv = kf[b, t, g], v[b, t, g]
                C = fp * C + ip * torch.outer(k, vv)
                n = fp * n + ip * k
                m = m_new
                q = s * qf[b, t, h]
                den = torch.dot(q, n).abs()
                if norm == "max":
                    den = torch.maximum(den, torch.exp(-m))
                hs.append((q @ C) / (den + EPS))
            heads.append(torch.stack(hs))  # [T, D]
        out.append(torch.stack(heads, dim=1))  # [T, H, D]
    return torch.stack(out)  # [B, T, H, D]


def main():
    torch.manual_seed(20261127)
    dt = torch.float64
    qf = torch.softmax(1.5 * torch.randn(B, T, H, P, dtype=dt), -1)
    kf = torch.softmax(1.5 * torch.randn(B, T, G, P, dtype=dt), -1)
    v = torch.randn(B, T, G, D, dtype=dt)
    ig = -10 + 20 * torch.rand(B, T, H, dtype=dt)
    fg = -8 + 20 * torch.rand(B, T, H, dtype=dt)
    dh = torch.randn(B, T, H, D, dtype=dt)
    os.makedirs(OUT, exist_ok=True)
    for name, x in [("qf", qf), ("kf", kf), ("v", v), ("ig", ig), ("fg", fg), ("dh", dh)]:
        np.save(os.path.join(OUT, name + ".npy"), x.numpy())
    for norm in ("paper", "max"):
        xs = [x.clone().requires_grad_(True) for x in (qf, kf, v, ig, fg)]
        h = mlstm(*xs, norm)
        (h * dh).sum().backward()
        np.save(os.path.join(OUT, f"h_{norm}.npy"), h.detach().numpy())
        for name, x in zip(("dqf", "dkf", "dv", "dig", "dfg"), xs):
            np.save(os.path.join(OUT, f"{name}_{norm}.npy"), x.grad.numpy())


if __name__ == "__main__":
    main()
