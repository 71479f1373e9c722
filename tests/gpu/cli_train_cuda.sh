#!/usr/bin/env bash
# Stage I and stage II on the GPU through the CLI (issue #8), on a machine with a GPU (run by
# tools/gpu_test.sh; CI has no GPU, so this is not a CTest test). With the tiny fixture teacher:
#   - align / distill --device cuda follow the --device cpu run step by step (per-step loss,
#     CE, KL within 2e-2 relative: bf16 GEMMs and attention inputs on the GPU);
#   - GPU stage I is deterministic: a second run and a run killed (SIGKILL) and resumed end
#     byte-identical (model, losses);
#   - GPU stage II killed and resumed ends byte-identical to the uninterrupted GPU run (model,
#     losses): this teacher's head dim (8) takes the SWA backward's fixed-order fallback (it
#     summed dK/dV with float atomics until session 8, and differed by ~1e-3);
#   - --recompute (activation recomputation) and the online teacher submitted one batch ahead
#     on its own stream (the default) against each step waiting for its own teacher
#     (XD_TEACHER_PREFETCH=0) give the default GPU run's bytes too (same kernels, same order);
#   - the LM heads in row blocks (XD_HEAD_ROWS=37) follow the whole-logits run (5e-3; 6.9e-4 on
#     an H200: the LM head gradient's sums in another order, then 20 steps of lr 1e-3) and resume
#     byte-identically;
#   - a CPU checkpoint resumes on the GPU (one checkpoint format);
#   - distill --teacher-cache on the GPU (a cache from the fp32 CPU teacher) follows the online
#     GPU run (2e-2: the GPU teacher is bf16); from a cache made by `teacher-cache --device cuda`
#     (the same kernels and shapes as the online teacher) it is byte-identical to it.
set -u
BIN=${XD_BIN:-build/xdistill}
TEA=tests/fixtures/tiny-teacher
TMP=$(mktemp -d /tmp/xdistill-cli-cuda.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fail=0
ok() { echo "[ ok ] $1"; }
bad() { echo "[FAIL] $1"; fail=1; }
check() { if eval "$2"; then ok "$1"; else bad "$1"; fi; }

RANDOM=7
words=(the king shall speak of love and war in hall old castle quick brown fox jumps over lazy dog)
for d in $(seq 1 240); do
  line=""; for w in $(seq 1 $(( 8 + RANDOM % 30 ))); do line="$line ${words[$((RANDOM % 18))]}"; done
  echo "{\"text\": \"${line# }.\"}"
done >"$TMP/text.jsonl"
"$BIN" data prepare --tokenizer $TEA --out "$TMP/text" --val-fraction 0.05 --quiet "$TMP/text.jsonl" >/dev/null 2>&1
check "data prepare" "[ $? -eq 0 ]"
"$BIN" init --teacher $TEA --out "$TMP/student" --window 8 --sinks 2 --chunk 8 >/dev/null 2>&1
check "init" "[ $? -eq 0 ]"

# compare A B TOL KEYS: per-step values of KEYS in two metrics.jsonl, max relative difference <= TOL
compare() {
  python3 - "$1" "$2" "$3" "$4" <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
tol, keys = float(sys.argv[3]), sys.argv[4].split(",")
if len(a) != len(b): print("  %d vs %d steps" % (len(a), len(b))); sys.exit(1)
worst = max(abs(x[k] - y[k]) / max(abs(x[k]), 1e-12) for x, y in zip(a, b) for k in keys)
print("  max relative difference of %s over %d steps: %.2e (bound %.0e)" % ("/".join(keys), len(a), worst, tol))
sys.exit(0 if worst <= tol else 1)
PY
}
# kill_at OUT STEP CMD...: start CMD --out OUT, SIGKILL once STEP steps are logged, then --resume to the end
kill_at() {
  local out=$1 at=$2 pid; shift 2
  "$BIN" "$@" --out "$out" >/dev/null 2>"$out.log" & pid=$!
  while kill -0 $pid 2>/dev/null && [ "$( [ -f "$out/train/metrics.jsonl" ] && wc -l <"$out/train/metrics.jsonl" || echo 0)" -lt "$at" ]; do sleep 0.005; done
  kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
  "$BIN" "$@" --out "$out" --resume >/dev/null 2>>"$out.log"
}

# ---- stage I ----
ALIGN=(align --teacher $TEA --student "$TMP/student" --data "$TMP/text" --seq_len 64 --batch 4 --micro_batch 4
       --steps 20 --warmup_steps 2 --ckpt_every 5 --ckpt_keep 2 --seed 11)
"$BIN" "${ALIGN[@]}" --out "$TMP/a_cpu" >/dev/null 2>"$TMP/a_cpu.log"
check "align --device cpu" "[ $? -eq 0 ]"
"$BIN" "${ALIGN[@]}" --device cuda --out "$TMP/a_gpu" >/dev/null 2>"$TMP/a_gpu.log"
check "align --device cuda" "[ $? -eq 0 ] && [ \$(wc -l <'$TMP/a_gpu/train/metrics.jsonl') -eq 20 ]"
grep -h "held-out" "$TMP/a_cpu.log" "$TMP/a_gpu.log" | sed 's/^/  /'
check "align: GPU per-step losses follow the CPU's" "compare '$TMP/a_cpu/train/metrics.jsonl' '$TMP/a_gpu/train/metrics.jsonl' 2e-2 loss"
"$BIN" "${ALIGN[@]}" --device cuda --out "$TMP/a_gpu2" >/dev/null 2>&1
check "align --device cuda is deterministic (byte-identical model and losses)" \
  "cmp -s '$TMP/a_gpu/model.safetensors' '$TMP/a_gpu2/model.safetensors' && compare '$TMP/a_gpu/train/metrics.jsonl' '$TMP/a_gpu2/train/metrics.jsonl' 0 loss"
kill_at "$TMP/a_kill" 7 "${ALIGN[@]}" --device cuda
check "align --device cuda: SIGKILL at step 7 + resume is byte-identical" \
  "cmp -s '$TMP/a_gpu/model.safetensors' '$TMP/a_kill/model.safetensors' && compare '$TMP/a_gpu/train/metrics.jsonl' '$TMP/a_kill/train/metrics.jsonl' 0 loss"

# ---- stage II ----
DIST=(distill --student "$TMP/a_cpu" --data "$TMP/text" --seq_len 64 --batch 4 --micro_batch 4 --steps 20
      --warmup_steps 2 --ckpt_every 5 --ckpt_keep 2 --kd_topk 16 --lr 1e-3 --seed 3)
"$BIN" "${DIST[@]}" --teacher $TEA --out "$TMP/d_cpu" >/dev/null 2>"$TMP/d_cpu.log"
check "distill --device cpu" "[ $? -eq 0 ]"
"$BIN" "${DIST[@]}" --teacher $TEA --device cuda --out "$TMP/d_gpu" >/dev/null 2>"$TMP/d_gpu.log"
check "distill --device cuda" "[ $? -eq 0 ] && [ \$(wc -l <'$TMP/d_gpu/train/metrics.jsonl') -eq 20 ]"
grep -h "held-out\|distill --device" "$TMP/d_cpu.log" "$TMP/d_gpu.log" | sed 's/^/  /'
check "distill: GPU per-step loss, CE, KL follow the CPU's" "compare '$TMP/d_cpu/train/metrics.jsonl' '$TMP/d_gpu/train/metrics.jsonl' 2e-2 loss,ce,kl"
# activation recomputation: the same maths, the same bits
"$BIN" "${DIST[@]}" --teacher $TEA --device cuda --recompute --out "$TMP/d_rc" >/dev/null 2>"$TMP/d_rc.log"
check "distill --device cuda --recompute is byte-identical to the default GPU run" \
  "[ $? -eq 0 ] && grep -q '(recomputed)' '$TMP/d_rc.log' && cmp -s '$TMP/d_gpu/model.safetensors' '$TMP/d_rc/model.safetensors' && compare '$TMP/d_gpu/train/metrics.jsonl' '$TMP/d_rc/train/metrics.jsonl' 0 loss,ce,kl"
# the online teacher one batch ahead on its own stream (default) vs each step waiting for its own
XD_TEACHER_PREFETCH=0 "$BIN" "${DIST[@]}" --teacher $TEA --device cuda --out "$TMP/d_nopf" >/dev/null 2>"$TMP/d_nopf.log"
check "distill --device cuda, teacher one batch ahead (default), is byte-identical to XD_TEACHER_PREFETCH=0" \
  "[ $? -eq 0 ] && grep -q 'one batch ahead' '$TMP/d_gpu.log' && ! grep -q 'one batch ahead' '$TMP/d_nopf.log' && cmp -s '$TMP/d_gpu/model.safetensors' '$TMP/d_nopf/model.safetensors' && compare '$TMP/d_gpu/train/metrics.jsonl' '$TMP/d_nopf/train/metrics.jsonl' 0 loss,ce,kl"
# the LM heads in row blocks of 37 (micro-batches of 4 x 64 = 256 rows: 7 blocks, the last
# shorter; distill's default is 4096, so with these sizes every other run holds all rows): step 1
# the same loss bit for bit, later steps within the order of the LM head gradient's sums; killed
# and resumed, byte-identical to its own uninterrupted run
XD_HEAD_ROWS=37 "$BIN" "${DIST[@]}" --teacher $TEA --device cuda --out "$TMP/d_rows" >/dev/null 2>"$TMP/d_rows.log"
check "distill --device cuda with the LM heads in row blocks of 37 follows the whole-logits run" \
  "[ $? -eq 0 ] && grep -q 'LM head in blocks of 37 rows' '$TMP/d_rows.log' && compare '$TMP/d_gpu/train/metrics.jsonl' '$TMP/d_rows/train/metrics.jsonl' 5e-3 loss,ce,kl && head -1 '$TMP/d_gpu/train/metrics.jsonl' | cut -d, -f1-3 | cmp -s - <(head -1 '$TMP/d_rows/train/metrics.jsonl' | cut -d, -f1-3)"
XD_HEAD_ROWS=37 kill_at "$TMP/d_rows_kill" 7 "${DIST[@]}" --teacher $TEA --device cuda
check "distill --device cuda in row blocks: SIGKILL at step 7 + resume is byte-identical" \
  "cmp -s '$TMP/d_rows/model.safetensors' '$TMP/d_rows_kill/model.safetensors' && compare '$TMP/d_rows/train/metrics.jsonl' '$TMP/d_rows_kill/train/metrics.jsonl' 0 loss,ce,kl"
kill_at "$TMP/d_kill" 7 "${DIST[@]}" --teacher $TEA --device cuda
check "distill --device cuda: SIGKILL at step 7 + resume is byte-identical" \
  "cmp -s '$TMP/d_gpu/model.safetensors' '$TMP/d_kill/model.safetensors' && compare '$TMP/d_gpu/train/metrics.jsonl' '$TMP/d_kill/train/metrics.jsonl' 0 loss,ce,kl"
# a CPU run interrupted (SIGINT: checkpoint of the step reached) and resumed on the GPU
"$BIN" "${DIST[@]}" --teacher $TEA --out "$TMP/d_x" >/dev/null 2>"$TMP/d_x.log" & pid=$!
while kill -0 $pid 2>/dev/null && [ "$( [ -f "$TMP/d_x/train/metrics.jsonl" ] && wc -l <"$TMP/d_x/train/metrics.jsonl" || echo 0)" -lt 6 ]; do sleep 0.005; done
kill -INT $pid; wait $pid
"$BIN" "${DIST[@]}" --teacher $TEA --device cuda --out "$TMP/d_x" --resume >/dev/null 2>>"$TMP/d_x.log"
check "distill: a CPU checkpoint resumes on the GPU" "[ $? -eq 0 ] && grep -q 'resuming from' '$TMP/d_x.log' && compare '$TMP/d_cpu/train/metrics.jsonl' '$TMP/d_x/train/metrics.jsonl' 2e-2 loss"
"$BIN" teacher-cache --teacher $TEA --data "$TMP/text" --out "$TMP/topk.bin" --seq-len 64 --k 16 --batch 4 >/dev/null 2>&1
"$BIN" "${DIST[@]}" --teacher-cache "$TMP/topk.bin" --device cuda --out "$TMP/d_cache" >/dev/null 2>"$TMP/d_cache.log"
check "distill --teacher-cache --device cuda follows the online GPU run (cache from the fp32 CPU teacher)" \
  "[ $? -eq 0 ] && compare '$TMP/d_gpu/train/metrics.jsonl' '$TMP/d_cache/train/metrics.jsonl' 2e-2 loss,ce,kl"
# the cache made by the GPU teacher (the same bf16 forward and top-k as distill's online teacher,
# with the same batch of 4 x 64): distill from it is byte-identical to the online GPU run
"$BIN" teacher-cache --teacher $TEA --data "$TMP/text" --out "$TMP/topk_gpu.bin" --seq-len 64 --k 16 --batch 4 --device cuda >/dev/null 2>"$TMP/tc_gpu.log"
check "teacher-cache --device cuda" "[ $? -eq 0 ] && grep -q 'GPU teacher in bf16' '$TMP/tc_gpu.log' && ! cmp -s '$TMP/topk.bin' '$TMP/topk_gpu.bin'"
"$BIN" "${DIST[@]}" --teacher-cache "$TMP/topk_gpu.bin" --device cuda --out "$TMP/d_cache_gpu" >/dev/null 2>"$TMP/d_cache_gpu.log"
check "distill --teacher-cache (made on the GPU) --device cuda is byte-identical to the online GPU run" \
  "[ $? -eq 0 ] && cmp -s '$TMP/d_gpu/model.safetensors' '$TMP/d_cache_gpu/model.safetensors' && compare '$TMP/d_gpu/train/metrics.jsonl' '$TMP/d_cache_gpu/train/metrics.jsonl' 0 loss,ce,kl"
exit $fail
