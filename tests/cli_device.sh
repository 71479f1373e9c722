#!/usr/bin/env bash
# --device on forward / generate / align / distill / eval / teacher-cache: bad values and `--device cuda` where it cannot run (a build
# without CUDA, or no usable GPU, as on CI) give exactly one line "xdistill: error: ..." and exit 1;
# --device cpu is the default path. On a machine with a GPU the cuda cases are skipped here
# (tests/gpu/test_gpu_teacher.c checks the GPU results).
set -u
BIN=${XD_BIN:-build/xdistill}
FIX=tests/fixtures/teachers
if [ ! -d "$FIX" ]; then echo "[skip] $FIX absent"; exit 0; fi
TMP=$(mktemp -d /tmp/xdistill-cli-device.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fail=0
ok() { echo "[ ok ] $1"; }
bad() { echo "[FAIL] $1"; fail=1; }
expect_error() {
  local name=$1 want=$2; shift 2
  "$@" >"$TMP/out" 2>"$TMP/err"; local rc=$?
  local lines; lines=$(wc -l <"$TMP/err")
  if [ $rc -eq 1 ] && [ "$lines" -eq 1 ] && grep -q "^xdistill: error: " "$TMP/err" && grep -qF -- "$want" "$TMP/err"; then
    ok "$name"
  else
    bad "$name (rc=$rc, stderr: $(cat "$TMP/err"))"
  fi
}
M=$FIX/llama-gqa/fp32
IDS=$FIX/llama-gqa/ids.npy

expect_error "forward --device tpu" "--device must be cpu or cuda" "$BIN" forward --model $M --ids $IDS --out "$TMP/l.npy" --device tpu
expect_error "generate --device tpu" "--device must be cpu or cuda" "$BIN" generate --model $M --ids $IDS --max-new 2 --device tpu
"$BIN" forward --model $M --ids $IDS --out "$TMP/cpu.npy" --device cpu && [ -s "$TMP/cpu.npy" ] && ok "forward --device cpu" || bad "forward --device cpu"
a=$("$BIN" generate --model $M --ids $IDS --max-new 3 --device cpu) && b=$("$BIN" generate --model $M --ids $IDS --max-new 3) &&
  [ "$a" = "$b" ] && ok "generate --device cpu = default" || bad "generate --device cpu"

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "[skip] a GPU is present: the no-GPU errors are not testable here"
else
  # built without CUDA: "built without CUDA"; built with CUDA but no usable device: the CUDA error
  expect_error "forward --device cuda (no GPU)" "--device cuda" "$BIN" forward --model $M --ids $IDS --out "$TMP/g.npy" --device cuda
  [ ! -e "$TMP/g.npy" ] && ok "no output file after the error" || bad "output file written despite the error"
  expect_error "generate --device cuda (no GPU)" "--device cuda" "$BIN" generate --model $M --ids $IDS --max-new 2 --device cuda
  # the same for a student checkpoint (the GPU student path)
  "$BIN" init --teacher $M --out "$TMP/student" --window 3 --sinks 1 --chunk 4 >/dev/null 2>&1 || bad "init"
  expect_error "forward --device cuda, student (no GPU)" "--device cuda" "$BIN" forward --model "$TMP/student" --ids $IDS --out "$TMP/s.npy" --device cuda
  [ ! -e "$TMP/s.npy" ] && ok "no student output file after the error" || bad "student output file written despite the error"
  expect_error "generate --device cuda, student (no GPU)" "--device cuda" "$BIN" generate --model "$TMP/student" --ids $IDS --max-new 2 --device cuda
  # text on the GPU: the same one line, nothing on stdout
  expect_error "generate --prompt --device cuda (no GPU)" "--device cuda" "$BIN" generate --model tests/fixtures/tiny-teacher --prompt hi --device cuda
  [ ! -s "$TMP/out" ] && ok "generate --prompt --device cuda: nothing on stdout" || bad "generate --prompt --device cuda printed $(cat "$TMP/out")"
  # training on the GPU: one line, exit 1, nothing written to --out
  TEA=tests/fixtures/tiny-teacher
  for d in $(seq 1 40); do echo "{\"text\": \"the king shall speak of love and war in hall $d.\"}"; done >"$TMP/text.jsonl"
  "$BIN" data prepare --tokenizer $TEA --out "$TMP/data" --val-fraction 0 --quiet "$TMP/text.jsonl" >/dev/null 2>&1 || bad "data prepare"
  "$BIN" init --teacher $TEA --out "$TMP/tstudent" --window 4 --sinks 1 --chunk 4 >/dev/null 2>&1 || bad "init tiny"
  expect_error "align --device cuda (no GPU)" "--device cuda" "$BIN" align --teacher $TEA --student "$TMP/tstudent" --data "$TMP/data" --out "$TMP/a" --seq_len 16 --batch 2 --micro_batch 2 --steps 2 --device cuda
  [ ! -e "$TMP/a" ] && ok "align: no output after the error" || bad "align wrote $TMP/a despite the error"
  # eval on the GPU (teacher and student with a tokenizer): one line, exit 1, no results file
  expect_error "eval --device cuda (no GPU)" "--device cuda" "$BIN" eval --model $TEA --tasks mc:tests/fixtures/eval/mc.jsonl --limit 2 --out "$TMP/ev.json" --device cuda
  [ ! -e "$TMP/ev.json" ] && ok "eval: no results file after the error" || bad "eval wrote $TMP/ev.json despite the error"
  expect_error "eval --device cuda, student (no GPU)" "--device cuda" "$BIN" eval --model "$TMP/tstudent" --tasks mc:tests/fixtures/eval/mc.jsonl --limit 2 --out "$TMP/evs.json" --device cuda
  [ ! -e "$TMP/evs.json" ] && ok "eval student: no results file after the error" || bad "eval wrote $TMP/evs.json despite the error"
  expect_error "distill --device cuda (no GPU)" "--device cuda" "$BIN" distill --teacher $TEA --student "$TMP/tstudent" --data "$TMP/data" --out "$TMP/d" --seq_len 16 --batch 2 --micro_batch 2 --steps 2 --kd_topk 8 --device cuda
  [ ! -e "$TMP/d" ] && ok "distill: no output after the error" || bad "distill wrote $TMP/d despite the error"
  expect_error "teacher-cache --device cuda (no GPU)" "--device cuda" "$BIN" teacher-cache --teacher $TEA --data "$TMP/data" --out "$TMP/tc.bin" --seq-len 16 --k 8 --batch 2 --device cuda
  [ -z "$(ls "$TMP" | grep '^tc\.bin')" ] && ok "teacher-cache: no cache file (nor its temp) after the error" || bad "teacher-cache left $(ls "$TMP" | grep '^tc')"
fi
expect_error "teacher-cache --device tpu" "--device must be cpu or cuda" "$BIN" teacher-cache --teacher $M --data "$TMP/x" --out "$TMP/x.bin" --device tpu
expect_error "align --device tpu" "--device must be cpu or cuda" "$BIN" align --teacher $M --student "$TMP/x" --data "$TMP/x" --out "$TMP/x" --device tpu
expect_error "distill --device tpu" "--device must be cpu or cuda" "$BIN" distill --teacher $M --student "$TMP/x" --data "$TMP/x" --out "$TMP/x" --device tpu
expect_error "eval --device tpu" "--device must be cpu or cuda" "$BIN" eval --model tests/fixtures/tiny-teacher --tasks mc:tests/fixtures/eval/mc.jsonl --device tpu
exit $fail
