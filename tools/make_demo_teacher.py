#!/usr/bin/env python3
"""Build the demo teacher: a small Llama trained on the synthetic domains of `xdistill synth`.

Rerun (from the repo root):

    cmake -S . -B build -DXD_CUDA=OFF && cmake --build build -j2
    python3 tools/make_demo_teacher.py --device cuda     # writes assets/demo-teacher/
    python3 tools/check_demo_teacher.py                  # verifies per-domain exact-match

The shipped teacher was made with these defaults on one GPU (H200; 219 s of training with three
other runs sharing the GPU); where the binary cannot be built, `python3 tools/synth_ref.py --out D
--train 20000 --eval 200` writes byte-identical data and `--data D` uses it. On CPU
(`--device cpu`, the default) the same run is 5000 steps of 128 sequences of up to 170 tokens,
several seconds a step on 2 idle cores: hours, so not practical on the shared 2-core machine.

Steps: (1) `build/xdistill synth --seed S` writes train/eval jsonl for arith, recall, reverse,
facts; (2) a byte-level BPE tokenizer (HF tokenizers; Qwen-style pre-tokenizer regex so digits
are single tokens; specials <|pad|> <|bos|> <|eos|> = ids 0 1 2; BOS added by a
TemplateProcessing post-processor) is trained on the train texts; (3) a LlamaForCausalLM (GQA)
is trained from scratch on BOS + text + EOS, batches mixing all domains, the loss on answer
tokens + EOS with prompt tokens (mostly random filler/operands) weighted 0.01; (4) the model is
saved with save_pretrained (safetensors, bf16) with tokenizer.json, tokenizer_config.json,
generation_config.json and train_info.json, and its per-domain greedy exact-match on the
held-out eval split is measured on the saved weights.

Everything is seeded (--seed). On CPU torch deterministic algorithms are on, so a rerun on the
same machine and library versions reproduces the weights; on CUDA some attention backward
kernels are not deterministic (warn only), so GPU reruns match in scores, not in bits.
"""
import argparse
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_demo_teacher import DOMAINS, evaluate_dir, load_jsonl, run_synth  # noqa: E402

# Qwen2/Qwen3 pre-tokenizer regex: every digit is its own pre-token (clean arithmetic tokens).
SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"


def train_tokenizer(texts, vocab_size):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=[PAD, BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B",
                                                       special_tokens=[(BOS, bos_id)])
    return tok


def encode_examples(tok, examples, prompt_weight, answer_weight):
    """-> list of (ids, weights): BOS + prompt + answer + EOS; weights[t] weighs predicting ids[t+1]."""
    out = []
    for x in examples:
        p = tok.encode(x["prompt"], add_special_tokens=False).ids
        a = tok.encode(x["answer"], add_special_tokens=False).ids
        full = tok.encode(x["text"], add_special_tokens=False).ids
        assert full == p + a, f"prompt/answer split is not a token boundary: {x['text']!r}"
        ids = [tok.token_to_id(BOS)] + p + a + [tok.token_to_id(EOS)]
        # target of position t is ids[t+1]; answer tokens and EOS are the targets that matter
        w = [prompt_weight] * len(p) + [answer_weight] * (len(a) + 1)
        out.append((ids, w))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="assets/demo-teacher")
    ap.add_argument("--xdistill", default="build/xdistill")
    ap.add_argument("--seed", type=int, default=1234, help="seed of synth data, tokenizer data order, init and batches")
    ap.add_argument("--train-per-domain", type=int, default=20000)
    ap.add_argument("--eval", type=int, default=200)
    ap.add_argument("--recall-gap", type=int, default=96)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--answer-weight", type=float, default=1.0)
    ap.add_argument("--prompt-weight", type=float, default=0.01,
                    help="loss weight of prompt tokens (mostly random filler/operands) relative to answer tokens")
    ap.add_argument("--domain-weights", default="arith:3,recall:2,reverse:2,facts:2",
                    help="relative sampling frequency of each domain's batches")
    ap.add_argument("--per-domain-batches", dest="mixed_batches", action="store_false",
                    help="one domain per batch (cycling by --domain-weights) instead of batches mixing all domains")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=0, help="also evaluate on 50 eval prompts every N steps")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--data", default=None, help="use this existing `xdistill synth` output (same seed/sizes) instead of running the binary")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    # CUDA attention backward has no deterministic kernel everywhere: warn there instead of failing.
    torch.use_deterministic_algorithms(True, warn_only=args.device != "cpu")
    rng = random.Random(args.seed)
    t_start = time.time()

    work = tempfile.mkdtemp(prefix="demo-teacher-")
    try:
        data = args.data or os.path.join(work, "synth")
        if not args.data:
            run_synth(args.xdistill, data, args.seed, args.train_per_domain, args.eval, recall_gap=args.recall_gap)
        train = {d: load_jsonl(os.path.join(data, d, "train.jsonl")) for d in DOMAINS}
        texts = [x["text"] for d in DOMAINS for x in train[d]]
        tok = train_tokenizer(texts, args.vocab)
        vocab = tok.get_vocab_size()
        pad_id, bos_id, eos_id = tok.token_to_id(PAD), tok.token_to_id(BOS), tok.token_to_id(EOS)
        enc = {d: encode_examples(tok, train[d], args.prompt_weight, args.answer_weight) for d in DOMAINS}
        lens = {d: max(len(ids) for ids, _ in enc[d]) for d in DOMAINS}
        print(f"tokenizer: vocab {vocab}; max tokens per example " + ", ".join(f"{d} {lens[d]}" for d in DOMAINS), flush=True)
        assert max(lens.values()) <= 256

        cfg = LlamaConfig(vocab_size=vocab, hidden_size=args.hidden, intermediate_size=args.ffn,
                          num_hidden_layers=args.layers, num_attention_heads=args.heads,
                          num_key_value_heads=args.kv_heads, max_position_embeddings=256,
                          rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=bos_id,
                          eos_token_id=eos_id, pad_token_id=pad_id, attention_bias=False)
        model = LlamaForCausalLM(cfg).to(args.device)
        n_params = sum(p.numel() for p in model.parameters())
        print(f"model: {n_params / 1e6:.2f}M parameters", flush=True)
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=args.lr, betas=(0.9, 0.98), eps=1e-8)

        def lr_at(step):
            if step < args.warmup:
                return args.lr * (step + 1) / args.warmup
            prog = (step - args.warmup) / max(1, args.steps - args.warmup)
            return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * prog)))

        dw = dict((kv.split(":")[0], float(kv.split(":")[1])) for kv in args.domain_weights.split(","))
        schedule = [d for d in DOMAINS for _ in range(int(dw.get(d, 1)))]
        order = {d: list(range(len(enc[d]))) for d in DOMAINS}
        pos = {d: len(order[d]) for d in DOMAINS}  # reshuffle on first use

        def next_batch(d):
            seqs = []
            for _ in range(args.batch):
                dd = schedule[rng.randrange(len(schedule))] if args.mixed_batches else d
                if pos[dd] >= len(order[dd]):
                    rng.shuffle(order[dd])
                    pos[dd] = 0
                seqs.append(enc[dd][order[dd][pos[dd]]])
                pos[dd] += 1
            T = max(len(s) for s, _ in seqs)
            ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
            w = torch.zeros((len(seqs), T - 1))
            for b, (s, ws) in enumerate(seqs):
                ids[b, :len(s)] = torch.tensor(s)
                w[b, :len(ws)] = torch.tensor(ws)
            return ids.to(args.device), w.to(args.device)

        eval_dir = data
        model.train()
        ema = {}
        t0 = time.time()
        for step in range(args.steps):
            d = "mixed" if args.mixed_batches else schedule[step % len(schedule)]
            ids, w = next_batch(d)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            # right padding + causal attention: pad positions never influence real ones, and
            # their weights are 0, so no attention mask is needed.
            logits = model(input_ids=ids).logits[:, :-1]
            ce = F.cross_entropy(logits.reshape(-1, vocab).float(), ids[:, 1:].reshape(-1), reduction="none")
            loss = (ce * w.reshape(-1)).sum() / w.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            ema[d] = loss.item() if d not in ema else 0.9 * ema[d] + 0.1 * loss.item()
            if (step + 1) % 50 == 0 or step == 0:
                el = time.time() - t0
                print(f"step {step + 1:5d}/{args.steps} lr {lr_at(step):.2e} " +
                      " ".join(f"{k} {v:.3f}" for k, v in ema.items()) + f"  {el:.0f}s", flush=True)
            if args.eval_every and (step + 1) % args.eval_every == 0:
                sub = os.path.join(work, "sub")
                for dd in DOMAINS:
                    os.makedirs(os.path.join(sub, dd), exist_ok=True)
                    with open(os.path.join(eval_dir, dd, "eval.jsonl")) as f, open(os.path.join(sub, dd, "eval.jsonl"), "w") as g:
                        g.writelines(f.readlines()[:50])
                evaluate_dir(model, hf_tok_of(tok, PreTrainedTokenizerFast), sub, verbose=True)
                model.train()
        train_s = time.time() - t0

        # ---- save (bf16) and score the saved weights ----
        out = args.out
        if os.path.exists(out):
            shutil.rmtree(out)
        os.makedirs(out)
        model = model.to("cpu").to(torch.bfloat16)
        model.generation_config = GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id,
                                                   do_sample=False, max_new_tokens=16)
        model.save_pretrained(out, safe_serialization=True)
        hf_tok = hf_tok_of(tok, PreTrainedTokenizerFast)
        hf_tok.save_pretrained(out)
        for extra in ("special_tokens_map.json", "chat_template.jinja"):
            p = os.path.join(out, extra)
            if os.path.exists(p):
                os.remove(p)

        reloaded = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32)
        print("greedy exact-match of the saved (bf16) weights on the eval split:", flush=True)
        scores = evaluate_dir(reloaded, hf_tok, eval_dir)
        info = {
            "synth_seed": args.seed, "torch_seed": args.seed, "recall_gap": args.recall_gap,
            "train_per_domain": args.train_per_domain, "eval_per_domain": args.eval,
            "tokenizer_vocab": vocab, "params": n_params, "steps": args.steps, "batch": args.batch,
            "lr": args.lr, "warmup": args.warmup, "answer_weight": args.answer_weight, "prompt_weight": args.prompt_weight,
            "domain_weights": args.domain_weights, "mixed_batches": args.mixed_batches, "threads": args.threads, "device": args.device,
            "train_seconds": round(train_s, 1), "total_seconds": round(time.time() - t_start, 1),
            "max_tokens_per_example": lens,
            "eval_exact_match": {d: round(s, 4) for d, s in scores.items()},
            "torch": torch.__version__, "transformers": __import__("transformers").__version__,
            "tokenizers": __import__("tokenizers").__version__,
        }
        with open(os.path.join(out, "train_info.json"), "w") as f:
            json.dump(info, f, indent=2)
            f.write("\n")
        print(json.dumps(info, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def hf_tok_of(tok, cls):
    return cls(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=256,
               clean_up_tokenization_spaces=False)


if __name__ == "__main__":
    main()
