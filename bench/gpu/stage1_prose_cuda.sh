#!/usr/bin/env bash
# Stage I on the prose teacher (tests/fixtures/prose-teacher: 0.92M-parameter Llama, 1024-token
# BPE, tinyshakespeare), W 64, S 4, T 256, on the GPU (`align --device cuda`), for runs longer
# than the CPU allows: does the held-out stage I loss fall 10x (issue #5) with more steps and rows?
# Usage: [XD_TEACHER=tests/fixtures/prose-teacher-d64] BIN=xdistill DATA=prepared-dir [RUNS="steps:rows ..."] [LR=1e-2] [INIT_FLAGS="--feature-map hedgehog ..."]
#        bash bench/gpu/stage1_prose_cuda.sh
# (DATA: `xdistill data prepare --tokenizer tests/fixtures/prose-teacher --val-fraction 0.1` of
# tinyshakespeare split in 100 documents, as bench/stage1_prose.sh does.)
set -u
BIN=${BIN:-build/xdistill}
TEACHER=${XD_TEACHER:-tests/fixtures/prose-teacher}
RUNS=${RUNS:-"1000:16 4000:32 12000:64"}
LR=${LR:-1e-2}
TMP=$(mktemp -d /tmp/xd-stage1-prose-cuda.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
"$BIN" init --teacher "$TEACHER" --out "$TMP/student" --window 64 --sinks 4 --chunk 16 ${INIT_FLAGS:-} >/dev/null || exit 1
for r in $RUNS; do
  steps=${r%%:*} rows=${r##*:}
  t0=$(date +%s)
  timeout "${PER_RUN_S:-240}" "$BIN" align --device cuda --teacher "$TEACHER" --student "$TMP/student" --data "$DATA" \
    --out "$TMP/a-$r" --steps "$steps" --batch "$rows" --micro_batch "$rows" --seq_len 256 --lr "$LR" \
    --warmup_steps 50 --log_every 1000 --ckpt_every 0 2>"$TMP/log-$r"
  rc=$?
  echo "stage I on GPU, $steps steps x $rows rows, lr $LR ${INIT_FLAGS:-}: exit $rc in $(($(date +%s) - t0)) s: $(grep -h 'held-out' "$TMP/log-$r")"
  tail -1 "$TMP/a-$r/train/metrics.jsonl" 2>/dev/null | cut -c1-400
  [ $rc = 0 ] || tail -3 "$TMP/log-$r"
done
