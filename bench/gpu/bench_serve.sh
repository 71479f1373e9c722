#!/usr/bin/env bash
# Serving throughput on the GPU (docs/serve.md, docs/perf.md): `xdistill serve --device cuda` on a
# Llama-3.2-1B-shaped student (and its teacher), loaded by bench_serve.py with as many concurrent
# clients as slots, against the batched decoder's own tokens/s at the same batch, measured in the
# same call (bench_gpu_throughput, XD_BENCH_BATCH=SLOTS, the teacher at a 1K context): the ratio
# is what prefills, HTTP, JSON, the detokenizer and the engine's scheduling leave of the
# decoder's speed.
#   bench/gpu/bench_serve.sh BIN_DIR STUDENT_DIR [TEACHER_DIR] [SLOTS] [REQUESTS] [MAX_TOKENS]
# BIN_DIR holds xdistill and bench_gpu_throughput. Environment: PROMPT_WORDS (default 32; ~1
# token a word), CTX (the servers' --ctx, default 2048), NO_BASELINE=1 (skip the decoder run),
# LOAD_ARGS (more bench_serve.py options, e.g. "--temperature 0.8"), NO_STREAM=1 (whole answers
# only: logprobs are not streamed).
# Prints RESULT lines.
set -u
BIN=${1:?usage: bench_serve.sh BIN_DIR STUDENT_DIR [TEACHER_DIR] [SLOTS] [REQUESTS] [MAX_TOKENS]}
STUDENT=${2:?student dir}
TEACHER=${3:-}
SLOTS=${4:-64}
REQ=${5:-$((4 * SLOTS))}
MAXT=${6:-256}
HERE=$(cd "$(dirname "$0")" && pwd)
TMP=$(mktemp -d /tmp/xd-bench-serve.XXXXXX)
PID=
trap '[ -n "$PID" ] && kill -9 $PID 2>/dev/null; rm -rf "$TMP"' EXIT

PW=${PROMPT_WORDS:-32}
CTX=${CTX:-2048}
base_student=0 base_teacher=0
if [ -z "${NO_BASELINE:-}" ]; then
  tb=0; [ -n "$TEACHER" ] && tb=1
  XD_BENCH_BATCH=$SLOTS XD_BENCH_TEACHER=$tb "$BIN/bench_gpu_throughput" 1024 >"$TMP/base.txt"
  base_student=$(grep -m1 '^RESULT student_gen_tokens_per_s' "$TMP/base.txt" | sed 's/.*=\([0-9.]*\) B=.*/\1/')
  base_teacher=$(grep -m1 "^RESULT teacher_gen_tokens_per_s=[0-9.]* B=$SLOTS ctx=1024 " "$TMP/base.txt" | sed 's/.*=\([0-9.]*\) B=.*/\1/')
  echo "baseline: batched decoder, B=$SLOTS: student $base_student tokens/s, teacher at 1K context ${base_teacher:-0} tokens/s"
fi

serve_run() { # serve_run NAME DIR BASELINE_TOKENS_PER_S EXTRA_LOAD_ARGS...
  local name=$1 dir=$2; shift 2
  local base=$1; shift
  "$BIN/xdistill" serve --model "$dir" --device cuda --slots "$SLOTS" --ctx "$CTX" --port 0 2>"$TMP/$name.log" &
  PID=$!
  local port=
  for _ in $(seq 1 1200); do
    port=$(grep -o 'at http://127.0.0.1:[0-9]*' "$TMP/$name.log" | sed 's/.*://')
    [ -n "$port" ] && break
    kill -0 $PID 2>/dev/null || break
    sleep 0.1
  done
  [ -n "$port" ] || { echo "$name: server did not start: $(tail -3 "$TMP/$name.log")"; return 1; }
  # warm (graphs, cuBLASLt algorithms), then whole answers, then streaming (time to first token)
  python3 "$HERE/bench_serve.py" "http://127.0.0.1:$port" --requests "$SLOTS" --concurrency "$SLOTS" --max-tokens 16 >/dev/null
  local modes=("" --stream)
  [ -n "${NO_STREAM:-}" ] && modes=("")
  for mode in "${modes[@]}"; do
    r=$(python3 "$HERE/bench_serve.py" "http://127.0.0.1:$port" --requests "$REQ" --concurrency "$SLOTS" --max-tokens "$MAXT" \
        --prompt-words "$PW" $mode ${LOAD_ARGS:-} "$@")
    echo "$name ${mode:-whole}: $r"
    tps=$(echo "$r" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tokens_per_s"])')
    echo "RESULT serve_${name}${mode:+_stream}_tokens_per_s=$tps slots=$SLOTS prompt_words=$PW ratio_to_decoder=$(python3 -c "print(round($tps / $base, 3) if $base else 'n/a')")"
  done
  curl -s "http://127.0.0.1:$port/metrics" 2>/dev/null | grep -E 'busy|steps|generation' || true
  kill -TERM $PID; wait $PID; PID=
  tail -1 "$TMP/$name.log"
}
serve_run student "$STUDENT" "${base_student:-0}"
[ -n "$TEACHER" ] && serve_run teacher "$TEACHER" "${base_teacher:-0}"
exit 0
