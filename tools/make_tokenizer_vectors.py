#!/usr/bin/env python3
"""Reference tokenizer vectors from HF `tokenizers` for tests/test_tokenizer.c.

Rerun (from the repo root, with ../shared present; HF tokenizers 0.23 was used):
    python3 tools/make_tokenizer_vectors.py
It writes tests/fixtures/tokenizer/vectors.jsonl: one line per (family, text) with
    family       llama3 | qwen3 | olmo2 | mistral7b | llama2 (a directory of ../shared/tokenizers)
    hex          the input bytes (hex; invalid UTF-8 included). HF is given the lossy-decoded
                 string (errors="replace"), which is what the C encoder does with bad bytes.
    ids          encode(text, add_special_tokens=False).ids
    ids_special  encode(text, add_special_tokens=True).ids (omitted when equal to ids)
    decoded      decode(ids_special, skip_special_tokens=False), UTF-8 bytes in hex
    decoded_skip decode(ids_special, skip_special_tokens=True), hex (omitted when equal)
The text set is fixed plus seeded random strings, so reruns give the same file.
"""
import gzip
import json
import os
import random

from tokenizers import Tokenizer

FAMILIES = ["llama3", "qwen3", "olmo2", "mistral7b", "llama2"]
SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
if not os.path.isdir(SHARED):
    SHARED = "../shared"
OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "tokenizer", "vectors.jsonl")

FIXED = [
    "", " ", "  ", "\n", " \n", "\n\n\n", "\r\n", "a\r\nb\r\n", "\t", "\ttabs\t\t\tout here",
    "Hello world", " Hello world", "  leading spaces", "trailing spaces   ", "Hello, World! How's it going?",
    "I'm sure they'll've DONE IT'S WE'LL I'D 'S 'll 're", "ſ's 'ſ", "don’t — curly ‘quotes’",
    "1234567890", "3.14159265358979", "1,234,567.89", "x=12345678901234567890", "2024-01-15T12:34:56Z",
    "café naïve résumé", "cafe\u0301 e\u0301 A\u030a", "ﬁ ﬂ ＡＢＣ ①②③ ㍿ ½", "Ångström Ω Å",
    "Привет, мир! Как дела?", "Γειά σου Κόσμε", "你好，世界！我是一个语言模型。", "日本語のテキスト、カタカナとひらがな。",
    "안녕하세요 세계", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया क्षत्रिय", "สวัสดีชาวโลก", "Xin chào thế giới tiếng Việt",
    "ᠮᠣᠩᠭᠣᠯ\u180eᠪᠢᠴᠢᠭ", "ꙊꙋꙌ 𐍈 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟘𝟙𝟚", "Ꙋ🦙", "🦙Ꙋ",
    "😀😃😄 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇺🇸🇯🇵 ❤️‍🔥 🧑🏿‍💻", "e\u200bzero\u200cwidth\u200djoin\ufeffbom",
    "nbsp\u00a0here\u3000ideographic\u2028line\u2029para\u0085nel\u202fnarrow\u205fmath",
    "\u000b\u000c\u001c\u001d\u001e\u001f controls \x01\x02\x7f",
    "def f(x):\n    return x ** 2  # square\n\n\nclass A:\n\tpass\n",
    "int main(void) {\n  printf(\"%d\\n\", 42);\n  return 0;\n}\n",
    '{"key": [1, 2, 3], "nested": {"a": null, "b": true}}',
    "<html><body><p class=\"x\">Hi &amp; bye</p></body></html>",
    "https://example.com/path?q=1&r=two#frag user@example.org",
    "          grabbed", "a" * 300, "ab" * 200, " " * 100 + "x", "\n" * 40, "\t \n \t\n" * 10,
    "!!!???...,,,;;;:::---___===+++***///\\\\\\|||~~~```",
    "ThisIsAVeryLongWordWithoutAnySpacesThatKeepsGoingAndGoingForeverAndEverUntilItEnds" * 3,
    "<|eot_id|>", "text<|eot_id|>more", "<|begin_of_text|>Hello<|end_of_text|>",
    "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>", "<|reserved_special_token_5|> x",
    "<|im_start|>user\nhi<|im_end|>\n", "<think>\nhmm\n</think>\n\nanswer", "<|endoftext|>", "<tool_call>{}</tool_call>",
    "<s>", "</s>", "<unk>", "a<s>b</s>c<unk>d", " <s> ", "<|im_start|", "<|eot_id", "|||EMAIL_ADDRESS||| <|pad|>",
    "<0x41> <0xFF> ▁ ▁▁x", "▁hello▁world", "Ġhello Ċ", "the  double  space", "end with newline\n", "x\r\r\ny",
    "MiXeD CaSe WORDS And ACRONYMS like NASA, HTTP2, and GPT-4o.", "$100 €50 £30 ¥1000 ₿0.5",
    "math: ∑_{i=1}^{n} x_i² ≤ ∞, ∀ε>0 ∃δ", "arrows → ← ↔ ⇒ and box ┌─┐│└┘",
    "digits ١٢٣ ²³ ३४५ Ⅻ ൦ 𝟘 ٣.١٤",
]

INVALID = [
    b"abc\xff\xfedef", b"\x80\x80", b"\xc3", b"\xe2\x82", b"ok\xf0\x9f\x98", b"\xed\xa0\x80 surrogate",
    b"\xc0\xaf overlong", b"\xf5\x80\x80\x80", b"mid\xe2word\xe2\x82\xacend", b"nul\x00byte",
]

POOLS = [
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"), list("0123456789"),
    list(" \t\n\r"), [" ", "  ", "\r\n", "\u00a0", "\u3000", "\u2028", "\u0085", "\u200b", "\u180e"],
    list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"), ["'s", "'t", "'re", "'LL", "'D", "’s"],
    list("你好世界语言模型日本語カタカナ한국어"), list("مرحباשלוםनमस्तेक्ष"), list("éèêëñçøåßœ"), ["e\u0301", "a\u0308", "\u0301"],
    ["😀", "👍🏽", "👨‍👩‍👧", "🇫🇷", "🦙", "\u200d", "\ufe0f"], ["<|eot_id|>", "<|im_start|>", "<|im_end|>", "<s>", "</s>", "<|endoftext|>", "<think>"],
    ["ﬁ", "Ａ", "①", "½", "ſ", "İ", "Σ"],
]


def random_texts(n, seed=1234):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        pools = rng.sample(POOLS, rng.randint(1, 5))
        out.append("".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 80))))
    return out


def corpus_texts():
    out = []
    with open(os.path.join(SHARED, "corpora", "tinyshakespeare", "input.txt"), encoding="utf-8") as f:
        s = f.read()
    out += [s[0:1500], s[500000:501500]]
    for name in ["c4-sample.01.json.gz", "c4-sample.02.json.gz"]:
        with gzip.open(os.path.join(SHARED, "corpora", "c4-samples", name), "rt", encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i >= 2:
                    break
                out.append(json.loads(line)["text"][:2000])
    return out


def main():
    items = [t.encode("utf-8") for t in FIXED + random_texts(120) + corpus_texts()] + INVALID
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    n = 0
    with open(OUT, "w", encoding="utf-8") as f:
        for fam in FAMILIES:
            tok = Tokenizer.from_file(os.path.join(SHARED, "tokenizers", fam, "tokenizer.json"))
            for b in items:
                text = b.decode("utf-8", errors="replace")
                ids = tok.encode(text, add_special_tokens=False).ids
                ids_sp = tok.encode(text, add_special_tokens=True).ids
                rec = {"family": fam, "hex": b.hex(), "ids": ids}
                if ids_sp != ids:
                    rec["ids_special"] = ids_sp
                rec["decoded"] = tok.decode(ids_sp, skip_special_tokens=False).encode("utf-8").hex()
                skip = tok.decode(ids_sp, skip_special_tokens=True).encode("utf-8").hex()
                if skip != rec["decoded"]:
                    rec["decoded_skip"] = skip
                f.write(json.dumps(rec, ensure_ascii=True) + "\n")
                n += 1
    print(f"wrote {n} vectors to {OUT} ({os.path.getsize(OUT)} bytes)")


if __name__ == "__main__":
    main()
