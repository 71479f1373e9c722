"""Write tests/fixtures/tokenizer_bytes/tokenizer.json: a byte-level BPE tokenizer with no merges
and 256 ids, id = byte value, so text round-trips through the vocab-256 fixture teachers.

No special tokens (the fixture models' config.json gives BOS 1 / EOS 2, i.e. bytes 0x01/0x02).
Rerun from the repo root:  python3 tools/make_byte_tokenizer.py
The script checks the file with HF `tokenizers` (encode/decode of a UTF-8 string)."""
import json
import os


def bytes_to_unicode():
    # GPT-2's printable mapping of the 256 byte values
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def main():
    m = bytes_to_unicode()
    vocab = {m[b]: b for b in range(256)}
    tok = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    }
    out = "tests/fixtures/tokenizer_bytes"
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "tokenizer.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False)
    from tokenizers import Tokenizer
    t = Tokenizer.from_file(path)
    s = "Héllo, wörld €"
    ids = t.encode(s).ids
    assert ids == list(s.encode("utf-8")), ids
    assert t.decode(ids) == s
    print(path, "ok")


if __name__ == "__main__":
    main()
