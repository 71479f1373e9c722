#!/usr/bin/env bash
# `eval --device cuda` against `eval --device cpu` (issue #8), on a machine with a GPU (run by
# tools/gpu_test.sh; CI has no GPU, so this is not a CTest test). Models: the trained prose
# teacher (bf16 weights: the GPU's bf16 matrices are exactly the CPU's weights), a random
# llama-gqa fixture teacher with the byte tokenizer, and a student made by `init` from each.
# Tasks (no few-shot): multiple choice (mc), winogrande, LAMBADA (log-likelihood + greedy
# check), a GSM8K-format generation task (teacher: GPU KV cache; student: GPU recurrent state),
# and a perplexity task over the mc prompts and prompt + choice texts, whose per-document bits
# per byte give each document's log-likelihood on both devices.
# Checks, per model and task:
#   - perplexity: every document's bits per byte within 2e-2 relative of the CPU's (bf16
#     activations give ~5e-3 relative logit differences; a log-probability of ~3 nats/token moves
#     by a few 1e-2 nats); the printed max |dLL| in nats is the measured log-likelihood drift;
#   - accuracy tasks (per-doc items): at most one document scored differently from the CPU; for
#     mc such a document must be a near tie: the CPU's (or GPU's) top-two choices, by the primary
#     acc_norm score (log-likelihood of " choice" / its bytes, from the perplexity documents),
#     within 0.02 nats/byte (a choice of ~6 bytes: 0.12 nats, a few times the drift above).
#     Winogrande, LAMBADA and generation flips are printed (at most one per task).
# XD_EVAL_GPU_DEVICE=cpu runs the whole script with the CPU standing in for the GPU (a check of
# the script itself: every difference is then 0). Expected runtime: ~30 s on an H100 machine
# (the CPU runs dominate; tiny models).
set -u
export LC_ALL=C
BIN=${XD_BIN:-build/xdistill}
GPU=${XD_EVAL_GPU_DEVICE:-cuda}
PROSE=tests/fixtures/prose-teacher
GQA=tests/fixtures/teachers/llama-gqa/fp32
TOKF=tests/fixtures/tokenizer_bytes/tokenizer.json
EV=tests/fixtures/eval
TMP=$(mktemp -d /tmp/xdistill-cli-eval-cuda.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fail=0
ok() { echo "[ ok ] $1"; }
bad() { echo "[FAIL] $1"; fail=1; }

# models
cp -r "$PROSE" "$TMP/prose"
mkdir -p "$TMP/gqa" && cp "$GQA"/* "$TMP/gqa/" && cp "$TOKF" "$TMP/gqa/"
"$BIN" init --teacher "$TMP/prose" --out "$TMP/prose_student" --window 16 --sinks 2 --chunk 8 >/dev/null 2>&1 \
  && ok "init prose student" || bad "init prose student"
"$BIN" init --teacher "$TMP/gqa" --out "$TMP/gqa_student" --window 4 --sinks 2 --chunk 5 >/dev/null 2>&1 \
  && ok "init gqa student" || bad "init gqa student"

# tasks: a generation task and the perplexity documents (each mc prompt, then prompt + " " + choice)
printf '%s\n' '{"question": "What is 2 + 2?", "answer": "#### 4"}' '{"question": "Name a king.", "answer": "#### 8"}' \
  '{"question": "Where is the castle?", "answer": "#### 1"}' >"$TMP/gen.jsonl"
python3 - "$EV/mc.jsonl" "$TMP/llq.jsonl" <<'PY'
import json, sys
with open(sys.argv[2], "w") as f:
    for line in open(sys.argv[1]):
        d = json.loads(line)
        f.write(json.dumps({"text": d["query"]}) + "\n")
        for c in d["choices"]:
            f.write(json.dumps({"text": d["query"] + " " + c}) + "\n")
PY
TASKS="mc:$EV/mc.jsonl,winogrande:$EV/winogrande.jsonl,lambada:$EV/lambada.jsonl,gen=gsm8k:$TMP/gen.jsonl,llq=perplexity:$TMP/llq.jsonl"

# compare CPU.json GPU.json: the checks above; prints the drift and any flipped documents
compare() {
  python3 - "$1" "$2" "$EV/mc.jsonl" <<'PY'
import json, math, sys
cpu, gpu = (json.load(open(p)) for p in sys.argv[1:3])
mc = [json.loads(l) for l in open(sys.argv[3])]
ct = {t["task"]: t for t in cpu["tasks"]}
gt = {t["task"]: t for t in gpu["tasks"]}
ok = True
# per-document log-likelihoods (nats) from bits per byte of the perplexity documents
texts = []
for d in mc:
    texts.append(d["query"])
    texts += [d["query"] + " " + c for c in d["choices"]]
def lls(t):
    return [-b * len(s.encode()) * math.log(2) for b, s in zip(t["items"], texts)]
lc, lg = lls(ct["llq"]), lls(gt["llq"])
rel = max(abs(g - c) / max(abs(c), 1e-12) for c, g in zip(ct["llq"]["items"], gt["llq"]["items"]))
dll = [abs(g - c) for c, g in zip(lc, lg)]
print("  perplexity docs: %d, max |dLL| %.4f nats, mean %.4f, max relative bits/byte %.2e (bound 2e-2)"
      % (len(dll), max(dll), sum(dll) / len(dll), rel))
if len(ct["llq"]["items"]) != len(texts) or rel > 2e-2: ok = False
# mc near ties: top-two acc_norm scores (LL(" choice" | query) / bytes) on each device
def margins(ll):
    out, i = [], 0
    for d in mc:
        q = ll[i]; i += 1
        sc = []
        for c in d["choices"]:
            sc.append((ll[i] - q) / len((" " + c).encode())); i += 1
        s = sorted(sc, reverse=True)
        out.append(s[0] - s[1])
    return out
mcpu, mgpu = margins(lc), margins(lg)
print("  mc: smallest CPU top-two acc_norm margin %.4f nats/byte" % min(mcpu))
for name in ("mc", "winogrande", "lambada", "gen"):
    a, b = ct[name], gt[name]
    flips = [i for i, (x, y) in enumerate(zip(a["items"], b["items"])) if x != y]
    ma, mb = a["metrics"][a["primary"]], b["metrics"][b["primary"]]
    print("  %-10s %s cpu %.4f  gpu %.4f  n=%d  flipped docs %s  (cpu %.2f s, gpu %.2f s)"
          % (name, a["primary"], ma, mb, a["n"], flips, a["seconds"], b["seconds"]))
    if a["n"] != b["n"] or len(flips) > 1 or abs(ma - mb) > 1.0 / a["n"] + 1e-9: ok = False
    if name == "mc":
        for i in flips:
            m = min(mcpu[i], mgpu[i])
            print("    mc doc %d: top-two margin cpu %.4f gpu %.4f nats/byte (near tie < 0.02)" % (i, mcpu[i], mgpu[i]))
            if m >= 0.02: ok = False
sys.exit(0 if ok else 1)
PY
}

for m in prose prose_student gqa gqa_student; do
  "$BIN" eval --model "$TMP/$m" --tasks "$TASKS" --num-fewshot 0 --batch 4 --device cpu --out "$TMP/$m.cpu.json" \
    >"$TMP/$m.cpu.out" 2>"$TMP/$m.cpu.err"
  [ $? -eq 0 ] && ok "$m: eval --device cpu" || { bad "$m: eval --device cpu: $(tail -1 "$TMP/$m.cpu.err")"; continue; }
  "$BIN" eval --model "$TMP/$m" --tasks "$TASKS" --num-fewshot 0 --batch 4 --device "$GPU" --out "$TMP/$m.gpu.json" \
    >"$TMP/$m.gpu.out" 2>"$TMP/$m.gpu.err"
  [ $? -eq 0 ] && ok "$m: eval --device $GPU" || { bad "$m: eval --device $GPU: $(tail -1 "$TMP/$m.gpu.err")"; continue; }
  grep -h "^cuda:" "$TMP/$m.gpu.err" | sed 's/^/  /'
  compare "$TMP/$m.cpu.json" "$TMP/$m.gpu.json" && ok "$m: --device $GPU scores agree with the CPU's" \
    || bad "$m: --device $GPU scores differ from the CPU's beyond the tolerance"
done

# the GPU scores log-likelihood requests batched (packed by length, padded on the right) on the
# device: many requests per call against 4, and against the previous path (whole logits rows to
# the host, one request per forward: XD_EVAL_HOST_SCORE=1)
if [ "$GPU" = cuda ]; then
  for m in prose_student gqa; do
    "$BIN" eval --model "$TMP/$m" --tasks "$TASKS" --num-fewshot 0 --batch 64 --device cuda --out "$TMP/$m.b64.json" \
      >/dev/null 2>"$TMP/$m.b64.err" && compare "$TMP/$m.gpu.json" "$TMP/$m.b64.json" \
      && ok "$m: --batch 64 on the GPU agrees with --batch 4" || bad "$m: --batch 64 on the GPU differs from --batch 4"
    XD_EVAL_HOST_SCORE=1 "$BIN" eval --model "$TMP/$m" --tasks "$TASKS" --num-fewshot 0 --batch 4 --device cuda \
      --out "$TMP/$m.host.json" >/dev/null 2>"$TMP/$m.host.err" && compare "$TMP/$m.host.json" "$TMP/$m.gpu.json" \
      && ok "$m: device-side scoring agrees with host-side scoring" || bad "$m: device-side scoring differs from host-side scoring"
  done
fi

# `generate --ids [3, T] --device cuda` on a student: the rows decode together in one batched
# state (GEMMs over the rows); each row alone decodes in a one-sequence state (GEMVs). The first
# generated token comes from the same prefill in both, so it must agree; the later ones may
# differ where bf16 rounding of the GEMM inputs flips a near tie (counted and printed), as may
# the CPU's rows.
if [ "$GPU" = cuda ]; then
  for m in prose_student gqa_student; do
    python3 -c "import numpy as np; np.save('$TMP/ids3.npy', (np.arange(24, dtype=np.int32).reshape(3, 8) * 7 + 3) % 250)"
    "$BIN" generate --model "$TMP/$m" --ids "$TMP/ids3.npy" --max-new 12 --ignore-eos --device cuda >"$TMP/gb.out" 2>"$TMP/gb.err" \
      || { bad "$m: generate --ids [3, 8] --device cuda: $(tail -1 "$TMP/gb.err")"; continue; }
    grep -q "for 3 sequences" "$TMP/gb.err" && ok "$m: generate batches the 3 rows in one state" \
      || bad "$m: generate did not report a 3-sequence state: $(cat "$TMP/gb.err")"
    : >"$TMP/g1.out"
    for r in 0 1 2; do
      python3 -c "import numpy as np; np.save('$TMP/ids1.npy', ((np.arange(24, dtype=np.int32).reshape(3, 8) * 7 + 3) % 250)[$r:$r + 1])"
      "$BIN" generate --model "$TMP/$m" --ids "$TMP/ids1.npy" --max-new 12 --ignore-eos --device cuda >>"$TMP/g1.out" 2>/dev/null
    done
    "$BIN" generate --model "$TMP/$m" --ids "$TMP/ids3.npy" --max-new 12 --ignore-eos >"$TMP/gc.out" 2>/dev/null
    python3 - "$TMP/gb.out" "$TMP/g1.out" "$TMP/gc.out" "$m" <<'PY'
import sys
b, one, cpu = ([l.split() for l in open(p)] for p in sys.argv[1:4])
ok = len(b) == len(one) == len(cpu) == 3 and all(len(r) == 12 for r in b + one)
first = ok and all(x[0] == y[0] for x, y in zip(b, one))
same1 = sum(x == y for x, y in zip(b, one)) if ok else -1
samec = sum(x == y for x, y in zip(b, cpu)) if ok else -1
print(f"  {sys.argv[4]}: batched rows equal to one-row GPU runs: {same1}/3, to the CPU's: {samec}/3")
sys.exit(0 if first else 1)
PY
    [ $? -eq 0 ] && ok "$m: batched generation's rows start as the one-row runs" || bad "$m: batched generation's rows differ at the first token (or malformed)"
  done
fi

# eval's generation on the GPU decodes batch_size requests together (generate_until_batch: the
# student's batched state, the teacher's rows at different lengths; stop strings and EOS per
# request): 6 docs at --batch 4 (a batch of 4, then of 2) against one request at a time
# (XD_EVAL_GEN_BATCH=0): the same metrics and per-doc items.
if [ "$GPU" = cuda ]; then
  for q in "What is 2 + 2?" "Name a king." "Where is the castle?" "How many swords?" "Who rode out?" "What did the queen say?"; do
    printf '{"question": "%s", "answer": "#### 4"}\n' "$q"
  done >"$TMP/gen6.jsonl"
  for m in prose prose_student gqa gqa_student; do
    XD_EVAL_GEN_BATCH=0 "$BIN" eval --model "$TMP/$m" --tasks "gen=gsm8k:$TMP/gen6.jsonl" --num-fewshot 0 --batch 4 --device cuda \
      --out "$TMP/$m.g1.json" >/dev/null 2>"$TMP/$m.g1.err" \
      && "$BIN" eval --model "$TMP/$m" --tasks "gen=gsm8k:$TMP/gen6.jsonl" --num-fewshot 0 --batch 4 --device cuda \
      --out "$TMP/$m.gb.json" >/dev/null 2>"$TMP/$m.gb.err" \
      && python3 - "$TMP/$m.g1.json" "$TMP/$m.gb.json" <<'PY'
import json, sys
a, b = (json.load(open(p))["tasks"][0] for p in sys.argv[1:3])
same = a["metrics"] == b["metrics"] and a.get("items") == b.get("items") and a["n"] == b["n"] == 6
print(f"  one at a time {a['metrics']} {a['seconds']:.3f} s | batched {b['metrics']} {b['seconds']:.3f} s")
sys.exit(0 if same else 1)
PY
    [ $? -eq 0 ] && ok "$m: batched eval generation scores as one request at a time" \
      || bad "$m: batched eval generation differs: $(tail -1 "$TMP/$m.gb.err")"
  done
fi

# `generate --prompt --device cuda` (text through the runner's GPU model): greedy text against the
# CPU's (printed: bf16 may flip a near tie), the stats line names the device, and seeded sampling
# repeats itself.
if [ "$GPU" = cuda ]; then
  for m in prose prose_student; do
    "$BIN" generate --model "$TMP/$m" --prompt "The king" --max-new 16 --device cuda --stats >"$TMP/tg.out" 2>"$TMP/tg.err" \
      && [ -s "$TMP/tg.out" ] && grep -q "^\[.*cuda\] prompt .* decode state" "$TMP/tg.err" \
      && ok "$m: generate --prompt --device cuda ($(tail -1 "$TMP/tg.err" | sed 's/.*generated/generated/'))" \
      || bad "$m: generate --prompt --device cuda: $(tail -1 "$TMP/tg.err")"
    "$BIN" generate --model "$TMP/$m" --prompt "The king" --max-new 16 >"$TMP/tc.out" 2>/dev/null
    cmp -s "$TMP/tg.out" "$TMP/tc.out" && echo "  $m: greedy text equal to the CPU's" || echo "  $m: greedy text differs from the CPU's"
    # the one-slot batched decoder (argmax on the device) against the decoder + host argmax
    XD_GEN_HOST_SAMPLE=1 "$BIN" generate --model "$TMP/$m" --prompt "The king" --max-new 16 --device cuda >"$TMP/th.out" 2>/dev/null
    cmp -s "$TMP/tg.out" "$TMP/th.out" && ok "$m: greedy text with the argmax on the device == on the host" \
      || bad "$m: device argmax text '$(cat "$TMP/tg.out")' vs host '$(cat "$TMP/th.out")'"
    for i in 1 2; do
      "$BIN" generate --model "$TMP/$m" --prompt "The king" --max-new 16 --temperature 0.8 --top-k 20 --seed 3 --device cuda \
        >"$TMP/ts$i.out" 2>/dev/null
    done
    [ -s "$TMP/ts1.out" ] && cmp -s "$TMP/ts1.out" "$TMP/ts2.out" && ok "$m: seeded sampling on the GPU repeats itself" \
      || bad "$m: seeded sampling on the GPU: empty or not repeated"
  done
fi

# --reference on the GPU: both models on the device, comparison written
"$BIN" eval --model "$TMP/prose_student" --reference "$TMP/prose" --tasks "mc:$EV/mc.jsonl" --num-fewshot 0 \
  --device "$GPU" --out "$TMP/ref.json" >"$TMP/ref.out" 2>"$TMP/ref.err" && [ -s "$TMP/ref.compare.json" ] \
  && ok "eval --reference --device $GPU" || bad "eval --reference --device $GPU: $(tail -1 "$TMP/ref.err")"
exit $fail
