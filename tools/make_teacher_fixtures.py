#!/usr/bin/env python3
"""Build the tiny random teacher fixtures used by tests/test_teacher.c and tests/cli_teacher.sh.

Rerun (from the repo root, needs torch + transformers 5):
    python3 tools/make_teacher_fixtures.py
It rewrites tests/fixtures/teachers/ deterministically (seeded). For every family it writes
    <name>/fp32/          save_pretrained in float32 (config.json in the transformers-5 dialect)
    <name>/bf16/          the same weights rounded to bfloat16 (only for a few families, size)
    <name>/ids.npy        int64 [B,T] prompt ids
    <name>/logits_f64.npy float64 [B,T,V] logits of the fp32 weights, model run in float64
    <name>/logits_bf16_f64.npy  float64 logits of the bf16-rounded weights (where bf16/ exists)
    <name>/greedy.npy     int64 [B,T+N] greedy continuation (HF generate, float64, KV cache)
    <name>/hook_x<l>.npy, hook_a<l>.npy (some families): float64 [B*T,D] input of
                          self_attn (after the input norm) and [B*T,H*d] input of o_proj, per layer
    <name>/config_v4.json (some) the same config in the transformers-4.x dialect
plus rope_cases.json: inverse-frequency tables from transformers' ROPE_INIT_FUNCTIONS for every
scaling kind (linear, dynamic, llama3, yarn), used to test src/ops/cpu/rope.c directly.
"""
import json, math, os, shutil
import numpy as np
import torch
import transformers
from transformers import (LlamaConfig, Qwen2Config, Qwen3Config, Olmo2Config, Olmo3Config,
                          AutoModelForCausalLM)
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "teachers")
B, T, NEW = 2, 12, 6
V = 256
COMMON = dict(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=V, max_position_embeddings=64, rms_norm_eps=1e-5,
              bos_token_id=1, eos_token_id=2, pad_token_id=0)


def models():
    return [
        ("llama-gqa", LlamaConfig(**COMMON, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}), False),
        ("llama-mha-bias", LlamaConfig(**{**COMMON, "num_key_value_heads": 4}, attention_bias=True, mlp_bias=True,
                                       tie_word_embeddings=False), False),
        ("llama3-rope", LlamaConfig(**{**COMMON, "eos_token_id": [2, 3]}, head_dim=16, tie_word_embeddings=True,
                                    rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                     "original_max_position_embeddings": 16}), False),
        ("llama-dynamic", LlamaConfig(**{**COMMON, "max_position_embeddings": 8},
                                      rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}), False),
        ("qwen2", Qwen2Config(**COMMON, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}), False),
        ("qwen3", Qwen3Config(**COMMON, head_dim=12, tie_word_embeddings=True), True),
        ("olmo2", Olmo2Config(**COMMON), True),
        ("olmo3", Olmo3Config(**COMMON, sliding_window=4,
                              layer_types=["sliding_attention", "full_attention"]), False),
    ]


def randomize(model, seed):
    """Large-ish init (std 0.15) so logits are far from uniform; norm weights around 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif "embed" in name:
                p.copy_(1.0 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


def logits64(model, ids):
    m = model.to(torch.float64)
    with torch.no_grad():
        return m(torch.tensor(ids)).logits.numpy()


def save_hooks(model, ids, d):
    """Stage I's per-layer tensors from transformers: the attention block's input x^l and the
    attention output a^l before o_proj, float64, flattened to [B*T, .]."""
    m = model.to(torch.float64)
    got = {}
    handles = []
    for l, layer in enumerate(m.model.layers):
        def pre_attn(mod, args, kwargs, l=l):
            h = kwargs.get("hidden_states", args[0] if args else None)
            got["x%d" % l] = h.detach().reshape(-1, h.shape[-1]).numpy().copy()
        def pre_o(mod, args, l=l):
            got["a%d" % l] = args[0].detach().reshape(-1, args[0].shape[-1]).numpy().copy()
        handles.append(layer.self_attn.register_forward_pre_hook(pre_attn, with_kwargs=True))
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(pre_o))
    with torch.no_grad():
        m(torch.tensor(ids))
    for h in handles:
        h.remove()
    for k, v in got.items():
        np.save(os.path.join(d, "hook_%s.npy" % k), v)


def v4_config(cfg_json):
    """The transformers-4.x dialect: top-level rope_theta + rope_scaling + torch_dtype."""
    c = dict(cfg_json)
    rp = c.pop("rope_parameters")
    c["rope_theta"] = rp["rope_theta"]
    kind = rp.get("rope_type", "default")
    if kind == "default":
        c["rope_scaling"] = None
    else:
        sc = {k: v for k, v in rp.items() if k != "rope_theta"}
        if kind == "dynamic":  # the older key name
            sc["type"] = sc.pop("rope_type")
        c["rope_scaling"] = sc
    c["torch_dtype"] = c.pop("dtype", "float32")
    c["transformers_version"] = "4.46.0"
    return c


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    for i, (name, cfg, with_bf16) in enumerate(models()):
        d = os.path.join(OUT, name)
        os.makedirs(d)
        torch.manual_seed(100 + i)
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        randomize(model, 1000 + i)
        model.eval()
        model.save_pretrained(os.path.join(d, "fp32"), safe_serialization=True)
        rng = np.random.default_rng(7 + i)
        ids = rng.integers(3, V, size=(B, T)).astype(np.int64)
        np.save(os.path.join(d, "ids.npy"), ids)
        sd = {k: v.clone() for k, v in model.state_dict().items()}
        np.save(os.path.join(d, "logits_f64.npy"), logits64(model, ids))
        if name in ("llama-gqa", "qwen3", "olmo3"):
            save_hooks(model, ids, d)
        with torch.no_grad():
            out = model.generate(torch.tensor(ids), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                                 eos_token_id=None, pad_token_id=0, use_cache=True)
        np.save(os.path.join(d, "greedy.npy"), out.numpy().astype(np.int64))
        if with_bf16:
            mb = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
            mb.load_state_dict({k: v.to(torch.bfloat16).to(torch.float32) for k, v in sd.items()})
            # reference from the fp32 module holding bf16-rounded weights: casting the module to
            # bf16 would also round its rope inv_freq buffer, which from_pretrained does not do
            np.save(os.path.join(d, "logits_bf16_f64.npy"), logits64(mb, ids))
            mb = mb.to(torch.bfloat16)
            mb.save_pretrained(os.path.join(d, "bf16"), safe_serialization=True)
        with open(os.path.join(d, "fp32", "config.json")) as f:
            cj = json.load(f)
        if name in ("llama3-rope", "llama-dynamic", "qwen2", "llama-gqa"):
            with open(os.path.join(d, "config_v4.json"), "w") as f:
                json.dump(v4_config(cj), f, indent=2)
        for junk in ("generation_config.json",):
            for sub in ("fp32", "bf16"):
                p = os.path.join(d, sub, junk)
                if os.path.exists(p):
                    os.remove(p)
    rope_cases()


def rope_cases():
    """inv_freq + attention scaling straight from transformers for each scaling kind."""
    cases = []
    base = dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                num_hidden_layers=1, vocab_size=32, max_position_embeddings=4096)
    specs = [
        ("default", {"rope_type": "default", "rope_theta": 500000.0}, None),
        ("linear", {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}, None),
        ("dynamic-short", {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}, 100),
        ("dynamic-long", {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}, 10000),
        ("llama3", {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}, None),
        ("yarn", {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                  "original_max_position_embeddings": 1024}, None),
        ("yarn-beta", {"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 8.0, "beta_fast": 16.0,
                       "beta_slow": 2.0, "original_max_position_embeddings": 2048}, None),
    ]
    for name, rp, seq_len in specs:
        cfg = LlamaConfig(**base, rope_parameters=dict(rp))
        fn = ROPE_INIT_FUNCTIONS[rp["rope_type"]] if rp["rope_type"] != "default" else None
        if fn is None:
            dim = 64
            inv = 1.0 / (rp["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
            att = 1.0
        elif seq_len is not None:
            inv, att = fn(cfg, None, seq_len=seq_len)
        else:
            inv, att = fn(cfg, None)
        cases.append({"name": name, "config": json.loads(cfg.to_json_string()), "seq_len": seq_len or 0,
                      "head_dim": 64, "inv_freq": [float(x) for x in inv.tolist()], "attention_factor": float(att)})
    with open(os.path.join(OUT, "rope_cases.json"), "w") as f:
        json.dump(cases, f, indent=1)


if __name__ == "__main__":
    main()
