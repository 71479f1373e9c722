"""PyTorch / transformers reference for bench/gpu/bench_gpu_teacher.c.

Times a LlamaForCausalLM forward at the Llama-3.2-1B shape (16 layers, hidden 2048, 32 heads,
8 KV heads, MLP 8192, vocab 128256, tied embeddings, llama3 RoPE) in bf16 with random weights,
batch 1, sequence T (default 4096), logits for every position, attention through SDPA; plus
PyTorch's own device-copy bandwidth and bf16 8192^3 matmul rate as a cross-check of the C
benchmark's ceilings. Medians of synchronised host-clock timings after warm-up.

Rerun (on a GPU machine; tools/gpu_test.sh does this):  python3 tools/bench_reference.py [T]
"""
import statistics
import sys
import time

import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM


def timed(fn, warm, reps):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def make_config():
    common = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                  num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                  rms_norm_eps=1e-5, tie_word_embeddings=True, attention_bias=False, mlp_bias=False)
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    try:  # transformers 5 dialect
        cfg = LlamaConfig(rope_parameters=rope, **common)
    except Exception:  # 4.x dialect
        cfg = LlamaConfig(rope_theta=500000.0, rope_scaling=dict(rope, type="llama3"), **common)
    cfg._attn_implementation = "sdpa"
    return cfg


def main():
    T = int(sys.argv[1]) if len(sys.argv) > 1 else 4096
    dev = torch.device("cuda")
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name(0)}")

    n = 2 << 30
    a = torch.empty(n, dtype=torch.uint8, device=dev).fill_(7)
    b = torch.empty_like(a)
    t = timed(lambda: b.copy_(a), 2, 10)
    print(f"torch ceiling: device copy {2 * n / t / 1e9:.0f} GB/s")
    del a, b
    x = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    w = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    t = timed(lambda: x @ w, 3, 10)
    print(f"torch ceiling: bf16 matmul 8192^3 {2 * 8192 ** 3 / t / 1e12:.0f} TFLOP/s")
    del x, w

    cfg = make_config()
    torch.set_default_dtype(torch.bfloat16)
    with dev:
        model = LlamaForCausalLM(cfg)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, cfg.vocab_size, (1, T), device=dev)
    with torch.inference_mode():
        t = timed(lambda: model(input_ids=ids, use_cache=False), 2, 7)
        print(f"HF LlamaForCausalLM bf16 sdpa ({n_params / 1e9:.3f} B params) forward T={T}: "
              f"{t * 1e3:.2f} ms = {T / t:.0f} tokens/s (all logits)")
        t1 = timed(lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1), 2, 7)
        print(f"HF forward T={T}, last logits only: {t1 * 1e3:.2f} ms = {T / t1:.0f} tokens/s")
    print(f"RESULT hf_fwd_tokens_per_s={T / t:.0f} T={T}")


if __name__ == "__main__":
    main()
