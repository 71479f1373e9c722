#!/usr/bin/env python3
"""Train the prose teacher: a small byte-level Llama on tinyshakespeare, for stage I checks.

Why it exists: the demo teacher (tools/make_demo_teacher.py) was trained on one short example
per row, so on the packed rows of stage I it attends across documents in ways it never learned
(its attention mass beyond the window grows with the position in the row; no student whose
mixing gate sees only the current token can follow that). This teacher is trained the way
stage I feeds it: contiguous windows of T = 256 bytes of one long text, so its attention is that
of an ordinary language model (a sink at the start, mostly local, some long-range copying).

Rerun (from the repo root; ../shared must hold corpora/tinyshakespeare):

    python3 tools/make_prose_teacher.py --tokenizer bpe --vocab 1024 --device cuda \
        --out tests/fixtures/prose-teacher                      # 4 heads of 32
    python3 tools/make_prose_teacher.py --tokenizer bpe --vocab 1024 --device cuda \
        --heads 2 --kv-heads 1 --out tests/fixtures/prose-teacher-d64   # 2 heads of 64 (issue #5)

Tokenizer: `--tokenizer bytes` (default) is tests/fixtures/tokenizer_bytes (id = byte value, vocab
256; BOS/EOS ids 1/2, bytes 0x01/0x02 never occur in the text); `--tokenizer bpe --vocab N` trains
a byte-level BPE (HF tokenizers, GPT-2 pre-tokenizer; <|pad|> <|bos|> <|eos|> = ids 0 1 2) on the
training part of the text, so a window of T tokens spans several times T bytes. The last 10% of the text is held out (val loss printed and
recorded in train_info.json). Seeded; CPU runs with deterministic algorithms reproduce the
weights on the same machine and library versions. Saved in bf16 with save_pretrained.
"""
import argparse
import json
import math
import os
import shutil
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text", default="../shared/corpora/tinyshakespeare/input.txt")
    ap.add_argument("--out", default="tests/fixtures/prose-teacher")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=384)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokenizer", choices=["bytes", "bpe"], default="bytes")
    ap.add_argument("--vocab", type=int, default=1024, help="BPE vocabulary size (--tokenizer bpe)")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=args.device != "cpu")
    with open(args.text, "rb") as f:
        raw = f.read()
    bpe = None
    if args.tokenizer == "bytes":
        vocab = 256
        data = torch.tensor(list(raw), dtype=torch.long)
    else:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
        text = raw.decode("utf-8")
        bpe = Tokenizer(models.BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=args.vocab, special_tokens=["<|pad|>", "<|bos|>", "<|eos|>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
        bpe.train_from_iterator([text[:len(text) * 9 // 10]], trainer=trainer)
        vocab = bpe.get_vocab_size()
        data = torch.tensor(bpe.encode(text).ids, dtype=torch.long)
        print(f"bpe: vocab {vocab}, {len(raw) / len(data):.2f} bytes per token", flush=True)
    n_val = len(data) // 10
    train, val = data[:-n_val], data[-n_val:]
    g = torch.Generator().manual_seed(args.seed)

    def batch(src, B):
        starts = torch.randint(0, len(src) - args.seq - 1, (B,), generator=g)
        return torch.stack([src[s:s + args.seq] for s in starts.tolist()]).to(args.device)

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=args.hidden, intermediate_size=args.ffn,
                      num_hidden_layers=args.layers, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, max_position_embeddings=args.seq,
                      rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0 if bpe else None,
                      attention_bias=False)
    model = LlamaForCausalLM(cfg).to(args.device)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters; text {len(data)} tokens", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-8)

    def lr_at(step):
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        prog = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * prog)))

    def val_loss():
        model.eval()
        with torch.no_grad():
            gv = torch.Generator().manual_seed(7)
            tot = 0.0
            for _ in range(8):
                starts = torch.randint(0, len(val) - args.seq - 1, (16,), generator=gv)
                ids = torch.stack([val[s:s + args.seq + 1] for s in starts.tolist()]).to(args.device)
                logits = model(input_ids=ids[:, :-1]).logits
                tot += F.cross_entropy(logits.reshape(-1, vocab).float(), ids[:, 1:].reshape(-1)).item() / 8
        model.train()
        return tot

    t0 = time.time()
    ema = None
    for step in range(args.steps):
        ids = batch(train, args.batch)
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step)
        logits = model(input_ids=ids[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, vocab).float(), ids[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if (step + 1) % 100 == 0 or step == 0:
            print(f"step {step + 1:5d}/{args.steps} lr {lr_at(step):.2e} loss {ema:.3f}  {time.time() - t0:.0f}s", flush=True)
    train_s = time.time() - t0
    vl = val_loss()
    print(f"held-out loss {vl:.3f} nats/token", flush=True)

    out = args.out
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    model = model.to("cpu").to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    here = os.path.dirname(os.path.abspath(__file__))
    if bpe is None:
        shutil.copy(os.path.join(here, "..", "tests", "fixtures", "tokenizer_bytes", "tokenizer.json"), out)
        # BOS/EOS are the byte tokens 0x01/0x02 (GPT-2 byte-to-unicode maps them to U+0101/U+0102)
        bos, eos = chr(257), chr(258)
    else:
        bpe.save(os.path.join(out, "tokenizer.json"))
        bos, eos = "<|bos|>", "<|eos|>"
    # `data prepare` joins documents with EOS.
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"bos_token": bos, "eos_token": eos, "model_max_length": args.seq,
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f, ensure_ascii=False, indent=2)
        f.write("\n")
    info = {"seed": args.seed, "params": n_params, "steps": args.steps, "batch": args.batch, "seq": args.seq,
            "lr": args.lr, "device": args.device, "threads": args.threads, "train_seconds": round(train_s, 1),
            "heldout_loss_nats_per_token": round(vl, 4), "tokenizer": args.tokenizer, "vocab": vocab,
            "text": "tinyshakespeare (last 10% held out)",
            "torch": torch.__version__, "transformers": __import__("transformers").__version__}
    with open(os.path.join(out, "train_info.json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
