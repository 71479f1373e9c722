#!/usr/bin/env bash
# Stage II at the Llama-3.2-1B shape on one GPU, end to end through the CLI (issue #8): a random
# 1B teacher (tools/make_random_teacher.py), `xdistill init`, then `xdistill distill --device cuda`
# for STEPS steps of one SEQ-token row on real text (tinyshakespeare + C4 samples, Llama 3
# tokenizer, prepared beforehand), twice:
#   A: uninterrupted;
#   B: killed with SIGKILL right after its mid-run checkpoint, then `--resume`d to the end.
# Prints both loss curves (first / mid / last) and how far B's resumed steps are from A's (at
# head dim 64 every kernel of the step sums in a fixed order, so B should match A bit for bit).
# BATCH sequences a step in micro-batches of MICRO (default 1 and 1; BATCH 4 MICRO 4 takes the LM
# heads' row blocks, ~70 GiB).
# Usage (repo root, GPU machine):
#   BIN=xdistill DATA=prepared-dir TOK=tokenizer-dir OUT=logdir [BATCH=b MICRO=m] bash bench/gpu/stage2_1b_run.sh [STEPS] [SEQ]
set -u -o pipefail
STEPS=${1:-200}
SEQ=${2:-4096}
MID=$((STEPS / 2))
W=${WORK:-/tmp/xd-1b}
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$W" "$OUT"
t0=$(date +%s)
python3 tools/make_random_teacher.py "$W/teacher" "$TOK" >"$OUT/teacher.log" 2>&1 || { tail -5 "$OUT/teacher.log"; exit 1; }
"$BIN" init --teacher "$W/teacher" --out "$W/student" --window 512 --sinks 4 --chunk 64 >"$OUT/init.log" 2>&1 ||
  { tail -5 "$OUT/init.log"; exit 1; }
echo "== teacher + student made in $(($(date +%s) - t0)) s"
ARGS=(distill --device cuda --teacher "$W/teacher" --student "$W/student" --data "$DATA" --seq_len "$SEQ" --batch "${BATCH:-1}"
      --micro_batch "${MICRO:-1}" --steps "$STEPS" --lr 1e-4 --warmup_steps 10 --schedule constant --ckpt_every "$MID"
      --ckpt_keep 1 --log_every 20 --seed 5)
t1=$(date +%s)
"$BIN" "${ARGS[@]}" --out "$W/a" 2>"$OUT/run_a.log"
echo "== A (uninterrupted): exit $? in $(($(date +%s) - t1)) s"
cp "$W/a/train/metrics.jsonl" "$OUT/metrics_a.jsonl"
rm -rf "$W/a" # 20 GB of checkpoint + model: the disk holds one run at a time
t1=$(date +%s)
"$BIN" "${ARGS[@]}" --out "$W/b" 2>"$OUT/run_b1.log" &
pid=$!
# the metrics line of step MID+1 is written after the checkpoint of step MID completed
while kill -0 $pid 2>/dev/null && ! grep -q "\"step\":$((MID + 1))," "$W/b/train/metrics.jsonl" 2>/dev/null; do sleep 0.2; done
kill -9 $pid 2>/dev/null
wait $pid 2>/dev/null
echo "== B: killed (SIGKILL) after $(wc -l <"$W/b/train/metrics.jsonl") logged steps, $(($(date +%s) - t1)) s"
"$BIN" "${ARGS[@]}" --out "$W/b" --resume 2>"$OUT/run_b2.log"
echo "== B resumed: exit $? ($(grep -m1 resuming "$OUT/run_b2.log"))"
cp "$W/b/train/metrics.jsonl" "$OUT/metrics_b.jsonl"
rm -rf "$W/b"
python3 - "$OUT/metrics_a.jsonl" "$OUT/metrics_b.jsonl" "$MID" <<'PY'
import json, sys
def load(p):
    return {j["step"]: j for j in map(json.loads, open(p)) if "loss" in j and not j.get("skipped")}
a, b, mid = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3])
last = max(a)
for name, m in (("A", a), ("B", b)):
    s = sorted(m)
    print("%s: %d steps; loss %.4f (step 1) -> %.4f (step %d) -> %.4f (step %d); CE %.4f -> %.4f; KL %.4f -> %.4f; %.0f tokens/s (median)" % (
        name, len(s), m[1]["loss"], m[mid]["loss"], mid, m[s[-1]]["loss"], s[-1], m[1]["ce"], m[s[-1]]["ce"], m[1]["kl"], m[s[-1]]["kl"],
        sorted(x["tokens_per_s"] for x in m.values())[len(m) // 2]))
common = [s for s in a if s in b]
d = [abs(a[s]["loss"] - b[s]["loss"]) / abs(a[s]["loss"]) for s in common]
dr = [abs(a[s]["loss"] - b[s]["loss"]) / abs(a[s]["loss"]) for s in common if s > mid]
print("B vs A: %d common steps, max relative loss difference %.2e overall, %.2e after the resume (steps %d..%d)" % (
    len(common), max(d), max(dr) if dr else float("nan"), mid + 1, last))
first10 = sum(a[s]["loss"] for s in range(1, 11)) / 10
last10 = sum(a[s]["loss"] for s in range(last - 9, last + 1)) / 10
print("RESULT stage2_1b falling=%d first10=%.4f last10=%.4f resume_maxrel=%.3e" % (last10 < first10, first10, last10, max(dr) if dr else -1))
PY
