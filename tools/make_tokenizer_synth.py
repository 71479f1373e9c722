#!/usr/bin/env python3
"""Small synthetic tokenizer.json files covering the components the five shipped families do not
use (Metaspace pre-tokenizer, Digits, Lowercase, NFKC, Strip normalizer, every Split behaviour
and invert, ByteLevel with add_prefix_space + GPT-2 regex, WhitespaceSplit, added tokens with
lstrip/rstrip/single_word/normalized, continuing_subword_prefix, end_of_word_suffix, unk + fuse_unk,
byte_fallback, Bert/Template post-processors, Metaspace/Strip/Replace/ByteFallback/Fuse decoders),
with HF `tokenizers` reference vectors. Tiny BPE vocabularies (trained on a few KB of text).

Rerun from the repo root (with ../shared present; HF tokenizers 0.23 was used):
    python3 tools/make_tokenizer_synth.py
Writes tests/fixtures/tokenizer/synth/<name>/tokenizer.json and synth/vectors.jsonl, whose
lines are {"name", "hex", "ids", "ids_special"?, "decoded", "decoded_skip"?} as in
tools/make_tokenizer_vectors.py (decoded texts are hex of UTF-8).
"""
import json
import os
import sys

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

sys.path.insert(0, os.path.dirname(__file__))
from make_tokenizer_vectors import FIXED, INVALID, random_texts  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "tokenizer", "synth")

with open("../shared/corpora/tinyshakespeare/input.txt", encoding="utf-8") as f:
    CORPUS = [f.read()[:30000]] + FIXED


def train(tok, vocab_size=600, **kw):
    tr = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, special_tokens=["<unk>"], **kw)
    tok.train_from_iterator(CORPUS, tr)
    return tok


def with_byte_tokens(tok):
    j = json.loads(tok.to_str())
    v = j["model"]["vocab"]
    for b in range(256):
        name = f"<0x{b:02X}>"
        if name not in v:
            v[name] = len(v)
    return Tokenizer.from_str(json.dumps(j))


def build():
    out = {}
    # A: Metaspace (first, split) + Digits + NFKC/Lowercase, unk/fuse_unk, continuing prefix, added-token flags
    t = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, continuing_subword_prefix="##"))
    t.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase(), normalizers.Strip(left=False, right=True)])
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                               pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)])
    t.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    train(t, continuing_subword_prefix="##")
    t.add_special_tokens([AddedToken("<x>", lstrip=True, rstrip=True, special=True, normalized=False),
                          AddedToken("[MASK]", special=True, normalized=False)])
    t.add_tokens([AddedToken("word", single_word=True, normalized=True), AddedToken("ＡＢ", normalized=True)])
    t.post_processor = processors.BertProcessing(("[MASK]", t.token_to_id("[MASK]")), ("<x>", t.token_to_id("<x>")))
    out["metaspace_digits"] = t
    # B: Split behaviours + ByteLevel(add_prefix_space, GPT-2 regex)
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\d+"), behavior="merged_with_previous"),
        pre_tokenizers.Split("-", behavior="merged_with_next"),
        pre_tokenizers.Split(Regex(r"[,;]"), behavior="contiguous"),
        pre_tokenizers.Split(Regex(r"[^!?]+"), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)])
    t.decoder = decoders.ByteLevel()
    t = train(t, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.add_special_tokens(["<s>", "</s>"])
    t.add_tokens([AddedToken(" spaced", normalized=False), AddedToken("<think>", rstrip=True, normalized=False)])
    t.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", t.token_to_id("<s>")),
                                                                                         ("</s>", t.token_to_id("</s>"))])
    out["split_bytelevel"] = t
    # C: SentencePiece-like: Metaspace(always, no split), byte fallback, Llama-2-style decoders
    t = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=False)
    t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(content=" ", left=1, right=0)])
    t = with_byte_tokens(train(t, vocab_size=400))
    t.normalizer = normalizers.Replace(Regex(r"\s{3,}"), "   ")
    t.add_special_tokens(["<s>"])
    t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", t.token_to_id("<s>"))])
    out["metaspace_bytefallback"] = t
    # D: WhitespaceSplit + end_of_word_suffix, no decoder (HF joins with spaces), NFD normalizer
    t = Tokenizer(models.BPE(unk_token="<unk>", end_of_word_suffix="</w>"))
    t.normalizer = normalizers.NFD()
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    out["whitespace_suffix"] = train(t, end_of_word_suffix="</w>")
    return out


def main():
    items = [x.encode("utf-8") for x in FIXED + random_texts(25, seed=99)] + INVALID
    os.makedirs(OUT, exist_ok=True)
    n = 0
    with open(os.path.join(OUT, "vectors.jsonl"), "w", encoding="utf-8") as f:
        for name, tok in build().items():
            os.makedirs(os.path.join(OUT, name), exist_ok=True)
            path = os.path.join(OUT, name, "tokenizer.json")
            tok.save(path)
            tok = Tokenizer.from_file(path)  # vectors from the saved file, exactly what C loads
            for b in items:
                text = b.decode("utf-8", errors="replace")
                ids = tok.encode(text, add_special_tokens=False).ids
                ids_sp = tok.encode(text, add_special_tokens=True).ids
                rec = {"name": name, "hex": b.hex(), "ids": ids}
                if ids_sp != ids:
                    rec["ids_special"] = ids_sp
                rec["decoded"] = tok.decode(ids_sp, skip_special_tokens=False).encode("utf-8").hex()
                skip = tok.decode(ids_sp, skip_special_tokens=True).encode("utf-8").hex()
                if skip != rec["decoded"]:
                    rec["decoded_skip"] = skip
                f.write(json.dumps(rec, ensure_ascii=True) + "\n")
                n += 1
    total = sum(os.path.getsize(os.path.join(dp, fn)) for dp, _, fns in os.walk(OUT) for fn in fns)
    print(f"wrote {n} vectors and 4 tokenizers under {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
