#!/usr/bin/env python3
"""HF `tokenizers` side of bench/bench_tokenizer.c: the same documents (tinyshakespeare split at
blank lines + the C4 samples), single-threaded encode, MB/s best of 3.

Rerun from the repo root (with ../shared present):
    RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false python3 tools/bench_tokenizer_hf.py [TOKENIZER_DIR] [reps]
"""
import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import gzip
import json
import sys
import time

from tokenizers import Tokenizer


def load_docs():
    with open("../shared/corpora/tinyshakespeare/input.txt", "rb") as f:
        data = f.read()
    docs, p = [], 0
    while p < len(data):  # split at b"\n\n", separator kept, as the C side does
        q = data.find(b"\n\n", p)
        e = len(data) if q < 0 else q + 2
        docs.append(data[p:e].decode("utf-8"))
        p = e
    for name in ["c4-sample.01.json.gz", "c4-sample.02.json.gz", "c4-sample.03.json.gz",
                 "c4_100_domains_5_www.theguardian.com_00000000.jsonl.gz"]:
        with gzip.open("../shared/corpora/c4-samples/" + name, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    docs.append(json.loads(line)["text"])
    return docs


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "../shared/tokenizers/llama3"
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    docs = load_docs()
    nbytes = sum(len(s.encode("utf-8")) for s in docs)
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    best, tokens = 1e30, 0
    for _ in range(reps):
        t0 = time.perf_counter()
        tokens = 0
        for s in docs:
            tokens += len(tok.encode(s, add_special_tokens=False).ids)
        best = min(best, time.perf_counter() - t0)
    print(f"HF tokenizers (single thread, {d}): {len(docs)} docs, {nbytes / 1e6:.2f} MB, {tokens} tokens, "
          f"encode best of {reps} {best:.3f} s = {nbytes / 1e6 / best:.2f} MB/s")
    # encode_batch with one Rayon thread: the same work with less Python overhead per document
    best_b = 1e30
    for _ in range(reps):
        t0 = time.perf_counter()
        encs = tok.encode_batch(docs, add_special_tokens=False)
        best_b = min(best_b, time.perf_counter() - t0)
    assert sum(len(e.ids) for e in encs) == tokens
    print(f"HF tokenizers encode_batch (RAYON_NUM_THREADS=1): best of {reps} {best_b:.3f} s = {nbytes / 1e6 / best_b:.2f} MB/s")


if __name__ == "__main__":
    main()
