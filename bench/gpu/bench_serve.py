"""Load generator for `xdistill serve` (docs/serve.md): N completion requests from C concurrent
clients, each streaming (time to first token) or not; prints requests/s, generated tokens/s,
time to first token and request latency (median, p90, max) as one JSON line.

Usage: python3 bench/gpu/bench_serve.py URL --requests N --concurrency C --max-tokens M
       [--prompt-words W] [--temperature T] [--top-p P] [--top-k K] [--logprobs N] [--stream]
Standard library only. bench/gpu/bench_serve.sh runs it against a 1B-shaped student on the GPU
with the batched decoder's own throughput (bench_gpu_throughput) as the baseline."""
import argparse
import json
import statistics
import threading
import time
import urllib.request


def one(url, body, stream):
    t0 = time.perf_counter()
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    first = None
    tokens = 0
    with urllib.request.urlopen(req, timeout=600) as r:
        if not stream:
            out = json.loads(r.read())
            first = time.perf_counter()
            tokens = out["usage"]["completion_tokens"]
        else:
            for line in r:
                line = line.strip()
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if first is None and chunk["choices"][0]["text"]:
                    first = time.perf_counter()
                if "usage" in chunk:
                    tokens = chunk["usage"]["completion_tokens"]
    t1 = time.perf_counter()
    return (first or t1) - t0, t1 - t0, tokens


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--prompt-words", type=int, default=32)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--logprobs", type=int, default=-1, help="ask for N alternatives per token (-1: none)")
    ap.add_argument("--stream", action="store_true")
    a = ap.parse_args()
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly juggle boxes".split()
    results, lock = [], threading.Lock()
    next_i = [0]

    def worker():
        while True:
            with lock:
                i = next_i[0]
                if i >= a.requests:
                    return
                next_i[0] += 1
            prompt = " ".join(words[(i + k) % len(words)] for k in range(a.prompt_words))
            body = {"prompt": prompt, "max_tokens": a.max_tokens, "temperature": a.temperature, "top_p": a.top_p,
                    "top_k": a.top_k, "seed": i, "ignore_eos": True, "stream": a.stream}
            if a.logprobs >= 0:
                body["logprobs"] = a.logprobs
            r = one(a.url, body, a.stream)
            with lock:
                results.append(r)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(a.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = [r[0] for r in results]
    lat = [r[1] for r in results]
    toks = sum(r[2] for r in results)
    print(json.dumps({
        "requests": len(results), "concurrency": a.concurrency, "max_tokens": a.max_tokens, "stream": a.stream,
        "temperature": a.temperature, "top_p": a.top_p, "top_k": a.top_k, "logprobs": a.logprobs,
        "wall_s": round(wall, 3), "requests_per_s": round(len(results) / wall, 2),
        "generated_tokens": toks, "tokens_per_s": round(toks / wall, 1),
        "ttft_s": {"p50": round(statistics.median(ttft), 4), "p90": round(pct(ttft, 0.9), 4), "max": round(max(ttft), 4)},
        "latency_s": {"p50": round(statistics.median(lat), 3), "p90": round(pct(lat, 0.9), 3), "max": round(max(lat), 3)},
    }))


if __name__ == "__main__":
    main()
