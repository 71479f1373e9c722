#!/usr/bin/env python3
"""A tiny random Llama teacher WITH a tokenizer, for the CLI stage tests (tests/cli_stages.sh).

Rerun from the repo root (torch, transformers 5.x and tokenizers installed; CPU only):
    python3 tools/make_tiny_chat_teacher.py
It writes tests/fixtures/tiny-teacher/:
    config.json, model.safetensors   LlamaForCausalLM, hidden 32, 2 layers, 4 heads / 2 KV heads
                                     (GQA), head_dim 8, MLP 64, vocab 320, fp32, seed 0
    tokenizer.json                   byte-level BPE trained on the small text below (~320 tokens:
                                     256 bytes + merges + the specials)
    tokenizer_config.json            bos <s>, eos </s>, ChatML chat_template (<|im_start|>/<|im_end|>),
                                     so `xdistill data prepare` renders chat jsonl with loss masks
The output is deterministic for a fixed torch/tokenizers version; the tests do not depend on the
exact weights, only on the shapes and the tokenizer being valid.
"""
import json
import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "tiny-teacher")
VOCAB = 320
SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

TEXT = [
    "the king shall speak of love and war in the hall of the old castle.",
    "a user asks the assistant a question and the assistant gives an answer.",
    "what is the weather like today? it is sunny and warm, with a little wind.",
    "to be or not to be, that is the question the prince asked himself at night.",
    "numbers: one two three four five six seven eight nine ten eleven twelve.",
    "the quick brown fox jumps over the lazy dog while the cat sleeps by the fire.",
    "system: you are a helpful assistant. user: hello! assistant: hello, how can i help?",
] * 20


def main():
    os.makedirs(OUT, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(TEXT, trainer)
    tok.save(os.path.join(OUT, "tokenizer.json"))
    vocab = tok.get_vocab_size()
    with open(os.path.join(OUT, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "chat_template": CHATML,
                   "model_max_length": 256, "tokenizer_class": "PreTrainedTokenizerFast"}, f, indent=2)

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
                      bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"))
    model = LlamaForCausalLM(cfg).to(torch.float32)
    with torch.no_grad():  # HF init is std 0.02: scale up so the teacher's distribution is not flat
        for n, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3 if "embed" in n or "lm_head" in n else 1.0 / p.shape[1] ** 0.5)
    model.save_pretrained(OUT, safe_serialization=True)
    for extra in ("generation_config.json",):
        p = os.path.join(OUT, extra)
        if os.path.exists(p):
            os.remove(p)
    print(f"wrote {OUT}: vocab {vocab}")


if __name__ == "__main__":
    main()
