#!/usr/bin/env python3
"""Per-domain greedy exact-match of the demo teacher on the synthetic eval split.

Usage (from the repo root, after building: cmake -S . -B build -DXD_CUDA=OFF && cmake --build build -j2):

    python3 tools/check_demo_teacher.py [--model assets/demo-teacher] [--xdistill build/xdistill]
                                        [--seed 1234] [--eval 200] [--data DIR]

It writes the eval split with `xdistill synth` (same seed as the teacher's README states, so the
prompts are the teacher's held-out ones) unless --data names an existing synth directory, loads
the model with transformers (CPU), decodes each prompt greedily (BOS + prompt, up to 16 new
tokens, stop at EOS) and scores it as xd_synth_exact_match does: the continuation cut at its
first newline and trimmed must equal the trimmed answer. Prints one line per domain and a mean.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

DOMAINS = ["arith", "recall", "reverse", "facts"]


def exact_match(generated: str, answer: str) -> bool:
    """Mirror of xd_synth_exact_match (src/synth/synth.c)."""
    return generated.split("\n", 1)[0].strip() == answer.split("\n", 1)[0].strip()


def run_synth(xdistill, out_dir, seed, n_train, n_eval, domains=None, recall_gap=None):
    cmd = [xdistill, "synth", "--out", out_dir, "--seed", str(seed), "--train", str(n_train), "--eval", str(n_eval)]
    if domains:
        cmd += ["--domains", ",".join(domains)]
    if recall_gap:
        cmd += ["--recall-gap", str(recall_gap)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def load_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def greedy_exact_match(model, tok, examples, max_new_tokens=16, batch=64):
    """Greedy-decode every example's prompt; returns (n_correct, n, failures[:5]).

    Prompts are batched only with prompts of the same token length, so no padding is involved
    and the result equals one-at-a-time decoding."""
    import torch

    bos, eos = tok.bos_token_id, tok.eos_token_id
    enc = [[bos] + tok.encode(x["prompt"], add_special_tokens=False) for x in examples]
    by_len = {}
    for i, ids in enumerate(enc):
        by_len.setdefault(len(ids), []).append(i)
    correct, fails = 0, []
    model.eval()
    with torch.no_grad():
        for _, idx in sorted(by_len.items()):
            for s in range(0, len(idx), batch):
                chunk = idx[s:s + batch]
                inp = torch.tensor([enc[i] for i in chunk], dtype=torch.long, device=model.device)
                out = model.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=max_new_tokens,
                                     do_sample=False, eos_token_id=eos, pad_token_id=tok.pad_token_id)
                for row, i in zip(out[:, inp.shape[1]:].tolist(), chunk):
                    if eos in row:
                        row = row[:row.index(eos)]
                    gen = tok.decode(row, skip_special_tokens=True)
                    if exact_match(gen, examples[i]["answer"]):
                        correct += 1
                    elif len(fails) < 5:
                        fails.append((examples[i]["prompt"][-60:], examples[i]["answer"], gen))
    return correct, len(examples), fails


def evaluate_dir(model, tok, data_dir, domains=DOMAINS, verbose=True):
    scores = {}
    for d in domains:
        ex = load_jsonl(os.path.join(data_dir, d, "eval.jsonl"))
        c, n, fails = greedy_exact_match(model, tok, ex)
        scores[d] = c / max(n, 1)
        if verbose:
            print(f"  {d:8s} exact-match {c}/{n} = {scores[d]:.3f}", flush=True)
            for p, a, g in fails[:2]:
                print(f"           e.g. ...{p!r} want {a!r} got {g!r}", flush=True)
    return scores


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="assets/demo-teacher")
    ap.add_argument("--xdistill", default="build/xdistill")
    ap.add_argument("--seed", type=int, default=None, help="synth seed (default: the one in the model's train_info.json, else 1234)")
    ap.add_argument("--eval", type=int, default=200)
    ap.add_argument("--data", default=None, help="existing `xdistill synth` output directory")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(args.threads)
    info_path = os.path.join(args.model, "train_info.json")
    info = json.load(open(info_path)) if os.path.exists(info_path) else {}
    seed = args.seed if args.seed is not None else info.get("synth_seed", 1234)
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            if not os.path.exists(args.xdistill):
                sys.exit(f"check_demo_teacher: {args.xdistill} not found; build the project first")
            data = tmp
            run_synth(args.xdistill, data, seed, 0, args.eval, recall_gap=info.get("recall_gap"))
        print(f"{args.model}: greedy exact-match on the synth eval split (seed {seed})")
        scores = evaluate_dir(model, tok, data)
    print(f"  mean     {sum(scores.values()) / len(scores):.3f}")


if __name__ == "__main__":
    main()
