#!/usr/bin/env python3
"""Per-request log-likelihoods of multiple-choice items, computed by transformers in float64, as
the reference for xdistill's evaluator (tests/test_eval_reference.c).

Rerun from the repo root (torch + transformers + tokenizers):
    python3 tools/make_eval_reference.py
Writes tests/fixtures/eval_reference/<model>.json for three fixture teachers. Requests follow
lm-evaluation-harness: context ids = encode(context), continuation ids = encode(context +
continuation)[len(context ids):]; the model reads (context + continuation)[:-1]; logprob = sum of
log-softmax of the continuation tokens; is_greedy = every continuation token is the argmax.
"""
import json
import os

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK = os.path.join(ROOT, "tests/fixtures/tokenizer_bytes/tokenizer.json")
MODELS = ["llama-gqa", "qwen3", "olmo2"]
DOCS = [  # (context, choices, gold) in the ARC style: target delimiter " "
    ("Question: Which gas do plants take in?\nAnswer:", [" carbon dioxide", " helium", " neon", " argon"], 0),
    ("The capital of France is", [" Paris", " Rome", " Berlin"], 0),
    ("2 + 2 =", [" 4", " 5", " 22", " four"], 0),
    ("She opened the door and", [" walked in.", " the sky.", " seven."], 0),
    ("Water boils at", [" 100 degrees Celsius at sea level.", " the moon."], 0),
    ("Q: What colour is the sky on a clear day?\nA:", [" blue", " green", " red", " black"], 0),
]


def main():
    tok = Tokenizer.from_file(TOK)
    out_dir = os.path.join(ROOT, "tests/fixtures/eval_reference")
    os.makedirs(out_dir, exist_ok=True)
    for name in MODELS:
        model = AutoModelForCausalLM.from_pretrained(os.path.join(ROOT, "tests/fixtures/teachers", name, "fp32"),
                                                     torch_dtype=torch.float64)
        model.eval()
        reqs = []
        for d, (ctx, choices, gold) in enumerate(DOCS):
            ctx_ids = tok.encode(ctx, add_special_tokens=False).ids
            for c, cont in enumerate(choices):
                whole = tok.encode(ctx + cont, add_special_tokens=False).ids
                cont_ids = whole[len(ctx_ids):]
                inp = torch.tensor([(ctx_ids + cont_ids)[:-1]])
                with torch.no_grad():
                    lp = torch.log_softmax(model(inp).logits[0], dim=-1)
                pos = range(len(ctx_ids) - 1, len(ctx_ids) - 1 + len(cont_ids))
                ll = sum(float(lp[p, t]) for p, t in zip(pos, cont_ids))
                greedy = all(int(lp[p].argmax()) == t for p, t in zip(pos, cont_ids))
                reqs.append({"doc": d, "choice": c, "gold": gold, "context_ids": ctx_ids, "continuation_ids": cont_ids,
                             "logprob": ll, "is_greedy": int(greedy)})
        with open(os.path.join(out_dir, name + ".json"), "w") as f:
            json.dump({"model": name, "dtype": "float64", "requests": reqs}, f)
        print(name, len(reqs), "requests")


if __name__ == "__main__":
    main()
