#!/usr/bin/env python3
"""Generate tests/fixtures/eval/: small task files and the metrics a mock model must score.

The mock model (also written in C in tests/test_eval.c) is a byte-level bigram model:
tokens are bytes 0..255 plus a prefix token 256; the next-token distribution after token a is
softmax over b in 0..256 of s(a, b) = ((a*131 + b*71 + (a*b) % 13) % 101) / 25, plus 5 when
b = succ(a) (succ('.') = ' ', succ(' ') = 'a', else a + 1), so ". abc" is a greedy string. "Greedy" means
the token equals the first argmax. This script computes, independently of the C evaluator, the
lm-evaluation-harness metrics of that model on the fixture tasks: multiple choice acc and
acc_norm (log-likelihood / byte length of the choice without its " " delimiter), WinoGrande
partial scoring, LAMBADA acc (greedy) and perplexity, and rolling-window perplexity (every token
scored once given its predecessor; the first given the prefix token).

It also writes extract.json: GSM8K answer extraction computed with Python's `re` following
lm-evaluation-harness (RegexFilter "strict-match" `#### (\-?[0-9\.\,]+)` group 0 and
"flexible-extract" `(-?[$0-9.,]{2,})|(-?[0-9]+)` group -1, then exact_match's
regexes_to_ignore [",", "\\$", "(?s).*#### ", "\\.$"]), for xd_extract_answer to match.

Rerun from the repo root:  python3 tools/gen_eval_fixtures.py
"""
import json
import math
import os

import numpy as np

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "eval")
V = 257
PREFIX = 256

a = np.arange(V)[:, None]
b = np.arange(V)[None, :]
S = ((a * 131 + b * 71 + (a * b) % 13) % 101) / 25.0
SUCC = np.where(np.arange(V) == 32, 97, np.where(np.arange(V) == 46, 32, np.arange(V) + 1))
S = S + 5.0 * (b == SUCC[:, None])
LOGP = S - np.log(np.exp(S).sum(axis=1, keepdims=True))
GREEDY = S.argmax(axis=1)  # first argmax


def ll(context: bytes, continuation: bytes):
    prev = context[-1] if context else PREFIX
    tot, greedy = 0.0, True
    for t in continuation:
        tot += LOGP[prev, t]
        greedy &= GREEDY[prev] == t
        prev = t
    return tot, bool(greedy)


def split_pair(context: str, continuation: str):
    # lm-eval _encode_pair: trailing whitespace of the context moves to the continuation
    n = len(context) - len(context.rstrip())
    if n:
        continuation = context[-n:] + continuation
        context = context[:-n]
    return context.encode(), continuation.encode()


MC = [
    {"query": "Question: What colour is the sky on a clear day?", "choices": ["blue", "green", "a very dark shade of purple", "red"], "gold": 0},
    {"query": "Question: Which animal says moo?", "choices": ["cat", "cow", "dog"], "gold": 1},
    {"query": "Question: 2 + 2 =", "choices": ["3", "4", "22", "five"], "gold": 1},
    {"query": "Question: Water freezes at", "choices": ["0 degrees Celsius", "100 degrees Celsius", "50 degrees"], "gold": 0},
    {"query": "Question: The capital of France is", "choices": ["Paris", "Lyon", "Marseille", "Nice"], "gold": 0},
    {"query": "Question: Bees make", "choices": ["honey", "milk", "silk", "wax and honey"], "gold": 0},
    {"query": "Question: The opposite of hot is", "choices": ["cold", "warm", "tepid"], "gold": 0},
    {"query": "Question: A square has how many sides?", "choices": ["three", "four", "five", "six"], "gold": 1},
    {"query": "Question: Ice is", "choices": ["solid water", "liquid", "gas"], "gold": 0},
    {"query": "Question: Fish live in", "choices": ["trees", "water", "sand", "clouds"], "gold": 1},
    {"query": "Question: The sun rises in the", "choices": ["east", "west", "north", "south"], "gold": 0},
    {"query": "Question: Snow is usually", "choices": ["white", "black", "orange"], "gold": 0},
]

WINO = [
    {"context_options": ["The trophy did not fit in the case because the trophy", "The trophy did not fit in the case because the case"], "continuation": "was too big.", "gold": 0},
    {"context_options": ["The trophy did not fit in the case because the trophy", "The trophy did not fit in the case because the case"], "continuation": "was too small.", "gold": 1},
    {"context_options": ["Sam gave Alex a gift because Sam", "Sam gave Alex a gift because Alex"], "continuation": "had a birthday.", "gold": 1},
    {"context_options": ["Ann asked Beth for help since Ann", "Ann asked Beth for help since Beth"], "continuation": "was stuck.", "gold": 0},
    {"context_options": ["The cup fell on the plate and the cup", "The cup fell on the plate and the plate"], "continuation": "broke into pieces.", "gold": 1},
    {"context_options": ["Tom beat Jim at chess since Tom", "Tom beat Jim at chess since Jim"], "continuation": "played better.", "gold": 0},
]

LAMBADA = [
    {"context": "He opened the door and saw his old", "continuation": "friend"},
    {"context": "She poured the tea into the", "continuation": "cup"},
    {"context": "The dog wagged its", "continuation": "tail"},
    {"context": "They sailed across the", "continuation": "sea"},
    {"context": "After the rain came the", "continuation": "sun"},
    {"context": "The letters go.", "continuation": "abc"},
    {"context": "Then came.", "continuation": "abcdef"},
    {"context": "One.", "continuation": "a"},
    {"context": "Not quite.", "continuation": "abd"},
    {"context": "He wrote a long", "continuation": "letter"},
    {"context": "The baby began to", "continuation": "cry"},
]

PPL_TEXT = (
    "To be, or not to be, that is the question:\n"
    "Whether 'tis nobler in the mind to suffer\n"
    "The slings and arrows of outrageous fortune,\n"
    "Or to take arms against a sea of troubles\n"
    "And by opposing end them.  Caf\u00e9 na\u00efve \u2014 done.\n"
)


EXTRACT_TEXTS = [
    "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18 every day.\n#### 18",
    "#### 1,234", "#### -5.", "#### 12 and later #### 13", "It costs $1,000 then 25 more, so 1,025.",
    "no digits here", "x is 5 and y 42", "####5 then 6", "#### ,", "The answer is $3.50.", "-7 degrees",
    "1.2.3 versions", "costs 12,345,678 dollars.", "pi is 3.14159...", "1e5 or 7", "a 5", "5", "",
    "Answer: 100%\nQuestion: next", "#### 0.5\n", "total = 2+2 = 4\n\n#### 4.0", "#### -0",
    "we get $ 45", "..", "9. Then 10.", "\u00a3 12 and \u20ac 30", "#### 7\u00a0apples",
    "the result is -3.", "3 - -2 = 5", "answer 1,000,000.\n#### 1000000",
]


def lm_eval_extract(text):
    """lm-eval GSM8K filters + exact_match normalisation; returns (normalised, strict_matched)."""
    import re

    def regex_filter(pattern, group_select, resp):
        match = re.compile(pattern).findall(resp)
        if not match:
            return None
        match = match[group_select]
        if isinstance(match, tuple):
            match = [m for m in match if m]
            match = match[0] if match else None
        return match.strip() if match is not None else None

    strict = regex_filter(r"#### (\-?[0-9\.\,]+)", 0, text)
    got = strict if strict is not None else regex_filter(r"(-?[$0-9.,]{2,})|(-?[0-9]+)", -1, text)
    if got is None:
        return "", False
    for pat in [",", "\\$", "(?s).*#### ", "\\.$"]:
        got = re.sub(pat, "", got)
    return got.strip(), strict is not None


def main():
    os.makedirs(OUT, exist_ok=True)

    def dump(name, rows):
        with open(os.path.join(OUT, name), "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")

    dump("mc.jsonl", MC)
    dump("winogrande.jsonl", WINO)
    dump("lambada.jsonl", LAMBADA)
    with open(os.path.join(OUT, "ppl.txt"), "w", encoding="utf-8") as f:
        f.write(PPL_TEXT)

    expected = {}
    acc = acc_norm = 0
    for d in MC:
        lls, norms = [], []
        for c in d["choices"]:
            cx, cn = split_pair(d["query"], " " + c)
            v, _ = ll(cx, cn)
            lls.append(v)
            norms.append(v / len(c.encode()))
        acc += int(np.argmax(lls)) == d["gold"]
        acc_norm += int(np.argmax(norms)) == d["gold"]
    expected["mc"] = {"acc": acc / len(MC), "acc_norm": acc_norm / len(MC)}

    acc = 0
    for d in WINO:
        lls = [ll(*split_pair(o, " " + d["continuation"]))[0] for o in d["context_options"]]
        acc += int(np.argmax(lls)) == d["gold"]
    expected["winogrande"] = {"acc": acc / len(WINO), "acc_norm": acc / len(WINO)}

    tot, greedy = 0.0, 0
    for d in LAMBADA:
        v, g = ll(*split_pair(d["context"], " " + d["continuation"]))
        tot += v
        greedy += g
    expected["lambada"] = {"acc": greedy / len(LAMBADA), "perplexity": math.exp(-tot / len(LAMBADA))}

    data = PPL_TEXT.encode()
    tot, _ = ll(b"", data)
    words = len(__import__("re").split(r"\s+", PPL_TEXT))
    expected["ppl"] = {
        "bits_per_byte": -tot / len(data) / math.log(2),
        "byte_perplexity": math.exp(-tot / len(data)),
        "word_perplexity": math.exp(-tot / words),
        "token_perplexity": math.exp(-tot / len(data)),
    }
    # a hand-checkable spot value of the model, so the C mock itself is pinned
    expected["model_check"] = {"logp_65_66": float(LOGP[65, 66]), "greedy_after_97": int(GREEDY[97])}
    with open(os.path.join(OUT, "extract.json"), "w", encoding="utf-8") as f:
        rows = []
        for t in EXTRACT_TEXTS:
            got, strict = lm_eval_extract(t)
            rows.append({"text": t, "answer": got, "strict": strict})
        json.dump(rows, f, indent=1, ensure_ascii=False)
        f.write("\n")
    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    print(json.dumps(expected, indent=1))


if __name__ == "__main__":
    main()
