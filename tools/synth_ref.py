#!/usr/bin/env python3
"""Reference port of `xdistill synth` (src/synth/synth.c) in Python, byte-identical output.

Usage: python3 tools/synth_ref.py --out DIR [--seed S] [--train N] [--eval N] [--recall-gap G]

Two uses: (1) a second implementation to cross-check the C generator
(`cmp -r` of both outputs for the same options must find no difference); (2) generating the
teacher's training data where the C binary cannot be built (e.g. a bare GPU machine).
Same RNG (xoshiro256** seeded by splitmix64, src/core/core.c), same draws in the same order.
Writes every domain (no --domains option).
"""
import argparse
import json
import os

M64 = (1 << 64) - 1
DOMAINS = ["arith", "recall", "reverse", "facts"]
FILLER = "la mi do re so fa ti ko nu pe zo ba ge wu xi yo".split()
KEYS = ("ruby jade onyx opal pearl amber coral topaz agate beryl flint slate quartz mica jet zircon "
        "iron gold tin zinc lead copper silver cobalt").split()
VALUES = "owl fox elk bee cat dog yak ant bat cow hen pig rat ram eel emu ape doe gnu koi jay asp boa cod".split()
NAMES = "Nora Sam Ivan Lena Omar Rita Paul Mia Hugo Ella Karl Zoe Finn Ada Leo Ines".split()
CITIES = "Paris Lima Oslo Rome Cairo Delhi Tokyo Quito Dakar Hanoi Perth Porto Riga Bern Seoul Accra".split()
JOBS = ("baker pilot nurse judge miner tailor farmer singer dancer driver doctor painter plumber teacher "
        "writer lawyer").split()


class Rng:
    def __init__(self, seed):
        x = seed & M64
        self.s = []
        for _ in range(4):
            x = (x + 0x9E3779B97F4A7C15) & M64
            z = x
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
            self.s.append(z ^ (z >> 31))

    def u64(self):
        s = self.s
        rotl = lambda v, k: ((v << k) | (v >> (64 - k))) & M64  # noqa: E731
        res = (rotl((s[1] * 5) & M64, 7) * 9) & M64
        t = (s[1] << 17) & M64
        s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]  # noqa: E702
        s[2] ^= t
        s[3] = rotl(s[3], 45)
        return res

    def below(self, n):
        lim = M64 - M64 % n
        while True:
            x = self.u64()
            if x < lim:
                return x % n

    def range(self, lo, hi):
        return lo + self.below(hi - lo + 1)

    def distinct(self, n, k):
        idx = list(range(n))
        for i in range(k):
            j = i + self.below(n - i)
            idx[i], idx[j] = idx[j], idx[i]
        return idx[:k]


def gen(domain, r, gap):
    if domain == "arith":
        da = r.range(2, 4)
        db = r.range(2, 4)
        x = r.range(10 ** (da - 1), 10 ** da - 1)
        y = r.range(10 ** (db - 1), 10 ** db - 1)
        sub = r.below(2)
        if sub and x < y:
            x, y = y, x
        return f"Compute: {x} {'-' if sub else '+'} {y} =", f" {x - y if sub else x + y}"
    if domain == "recall":
        ki = r.distinct(len(KEYS), 4)
        vi = r.distinct(len(VALUES), 4)
        q = r.below(4)
        p = "Log:" + "".join(" " + FILLER[r.below(16)] for _ in range(r.range(4, 8))) + ". Keys:"
        p += ",".join(f" {KEYS[k]} is {VALUES[v]}" for k, v in zip(ki, vi)) + "."
        p += "".join(" " + FILLER[r.below(16)] for _ in range(gap + r.below(32)))
        return p + f". Question: what is {KEYS[ki[q]]}? Answer:", " " + VALUES[vi[q]]
    if domain == "reverse":
        n = r.range(3, 6)
        s = [chr(ord("a") + r.below(26)) for _ in range(n)]
        return "Reverse:" + "".join(" " + c for c in s) + ". Answer:", "".join(" " + c for c in reversed(s))
    k = r.range(2, 3)
    ni, ci, ji = r.distinct(16, k), r.distinct(16, k), r.distinct(16, k)
    p = " ".join(f"{NAMES[ni[i]]} lives in {CITIES[ci[i]]} and works as a {JOBS[ji[i]]}." for i in range(k))
    w = r.below(k)
    kind = r.below(4)
    q, a = [(f"where does {NAMES[ni[w]]} live?", CITIES[ci[w]]), (f"what is {NAMES[ni[w]]}'s job?", JOBS[ji[w]]),
            (f"who lives in {CITIES[ci[w]]}?", NAMES[ni[w]]), (f"who works as a {JOBS[ji[w]]}?", NAMES[ni[w]])][kind]
    return p + f" Question: {q} Answer:", " " + a


def line(domain, p, a):
    return json.dumps({"domain": domain, "prompt": p, "answer": a, "text": p + a}, separators=(",", ":")) + "\n"


def write(out, seed, n_train, n_eval, gap):
    master = Rng(seed)
    dseeds = [master.u64() for _ in DOMAINS]
    os.makedirs(out, exist_ok=True)
    for d, ds in zip(DOMAINS, dseeds):
        r = Rng(ds)
        ev, seen, tr = [], set(), []
        while len(ev) < n_eval:
            p, a = gen(d, r, gap)
            if p not in seen:
                seen.add(p)
                ev.append((p, a))
        while len(tr) < n_train:
            p, a = gen(d, r, gap)
            if p not in seen:
                tr.append((p, a))
        os.makedirs(os.path.join(out, d), exist_ok=True)
        for split, xs in (("train", tr), ("eval", ev)):
            with open(os.path.join(out, d, split + ".jsonl"), "w") as f:
                f.writelines(line(d, p, a) for p, a in xs)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        f.write(f'{{"generator": "xdistill synth", "format": 1, "seed": {seed}, "train": {n_train}, "eval": {n_eval}, '
                f'"recall_gap": {gap}, "domains": [{", ".join(chr(34) + d + chr(34) for d in DOMAINS)}]}}\n')


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--train", type=int, default=4000)
    ap.add_argument("--eval", type=int, default=200)
    ap.add_argument("--recall-gap", type=int, default=96)
    a = ap.parse_args()
    write(a.out, a.seed, a.train, a.eval, a.recall_gap)
