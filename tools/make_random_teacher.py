"""A Llama-3.2-1B-shaped teacher with random weights, as a Hugging Face checkpoint directory, for
the GPU stage II run of issue #8 (bench/gpu/stage2_1b_run.sh): 16 layers, hidden 2048, 32 heads,
8 KV heads, MLP 8192, vocab 128256, tied embeddings, llama3 RoPE; transformers' own
initialisation (normal, std 0.02), saved in bf16 (2.5 GB) with the Llama 3 tokenizer files copied
in, so `xdistill init` and `xdistill data prepare` see a complete teacher.

Usage: python3 tools/make_random_teacher.py OUT_DIR TOKENIZER_DIR [--layers N]
(needs torch + transformers; the GPU machine has them. Seeded: the same weights every time.)"""
import os
import shutil
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def make_config(layers):
    common = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=layers,
                  num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                  rms_norm_eps=1e-5, tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
                  bos_token_id=128000, eos_token_id=128001)
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    try:  # transformers 5 dialect
        return LlamaConfig(rope_parameters=rope, **common)
    except Exception:  # 4.x dialect
        return LlamaConfig(rope_theta=500000.0, rope_scaling=dict(rope, type="llama3"), **common)


def main():
    out, tok = sys.argv[1], sys.argv[2]
    layers = int(sys.argv[sys.argv.index("--layers") + 1]) if "--layers" in sys.argv else 16
    torch.manual_seed(0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(dev):
        model = LlamaForCausalLM(make_config(layers))
    model = model.to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if os.path.exists(os.path.join(tok, f)):
            shutil.copy(os.path.join(tok, f), os.path.join(out, f))
    print("wrote", out, sum(p.numel() for p in model.parameters()) / 1e9, "B parameters")


if __name__ == "__main__":
    main()
