"""Reference token counts used by tests/test_data.c and tests/cli_data.sh.

Encodes the shared corpora with Hugging Face `tokenizers` (add_special_tokens=False), the
reference for `xdistill data prepare`:
  tinyshakespeare (one document)          -> 301768 tokens (Llama 3)
  the 40 C4 sample texts (4 .json.gz files) -> 18023 tokens (Llama 3)
  all 41 documents + one EOS each         -> 319832 tokens

Rerun from the repository root (needs ../shared and `pip install tokenizers`):
    python3 tools/data_reference_counts.py [../shared]
"""
import glob
import gzip
import json
import os
import sys

from tokenizers import Tokenizer


def main() -> None:
    shared = sys.argv[1] if len(sys.argv) > 1 else "../shared"
    tok = Tokenizer.from_file(os.path.join(shared, "tokenizers/llama3/tokenizer.json"))
    with open(os.path.join(shared, "corpora/tinyshakespeare/input.txt"), encoding="utf-8") as f:
        shakes = len(tok.encode(f.read(), add_special_tokens=False).ids)
    c4 = docs = 0
    for path in sorted(glob.glob(os.path.join(shared, "corpora/c4-samples/*.gz"))):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    c4 += len(tok.encode(json.loads(line)["text"], add_special_tokens=False).ids)
                    docs += 1
    print(f"tinyshakespeare {shakes}")
    print(f"c4 {docs} documents {c4} tokens")
    print(f"total with EOS {shakes + c4 + docs + 1}")


if __name__ == "__main__":
    main()
