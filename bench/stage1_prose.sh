#!/usr/bin/env bash
# Stage I on a teacher trained for the purpose (issue #5's "loss falls >= 10x from init"):
# tests/fixtures/prose-teacher, a 0.92M-parameter Llama trained on tinyshakespeare with a 1024-token
# byte-level BPE (tools/make_prose_teacher.py --tokenizer bpe --vocab 1024 --device cuda). The text
# is cut into 100 documents (whole lines), 10% held out by `data prepare`; the student has W = 64,
# S = 4 at T = 256 (SPEC's scale note: W well below the context). Prints the held-out stage I loss
# before and after, as `xdistill align` reports it.
#   [XD_TEACHER=tests/fixtures/prose-teacher-d64] bench/stage1_prose.sh [STEPS (1000)] [BATCH (16)]
#   from the repo root, after `make build` (prose-teacher-d64, 2 heads of 64: 10.2x at the defaults)
# Needs ../shared/corpora/tinyshakespeare. ~10 min on 2 cores at the defaults.
set -eu -o pipefail
STEPS=${1:-1000}
BATCH=${2:-16}
BIN=${XD_BIN:-build/xdistill}
TEACHER=${XD_TEACHER:-tests/fixtures/prose-teacher}
TEXT=../shared/corpora/tinyshakespeare/input.txt
[ -f "$TEXT" ] || { echo "stage1_prose: $TEXT is missing" >&2; exit 1; }
TMP=$(mktemp -d /tmp/xd-stage1-prose.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
mkdir "$TMP/docs"
split -n l/100 -d -a 3 --additional-suffix=.txt "$TEXT" "$TMP/docs/part"
"$BIN" data prepare --tokenizer "$TEACHER" --out "$TMP/data" --val-fraction 0.1 --quiet "$TMP"/docs/*.txt
"$BIN" init --teacher "$TEACHER" --out "$TMP/student" --window 64 --sinks 4 --chunk 16
"$BIN" align --teacher "$TEACHER" --student "$TMP/student" --data "$TMP/data" --out "$TMP/aligned" \
  --steps "$STEPS" --batch "$BATCH" --micro_batch "$BATCH" --seq_len 256 --lr 1e-2 --warmup_steps 50 \
  --log_every 100 --ckpt_every 0
tail -1 "$TMP/aligned/train/metrics.jsonl"
