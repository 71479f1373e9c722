#!/usr/bin/env bash
# Stages I and II from the shell on the tiny teacher with a tokenizer (tests/fixtures/tiny-teacher):
# data prepare (text and chat), init, align, distill (online and from a teacher-cache), then
#  - kill/resume: runs SIGKILLed at random moments and resumed end byte-identical to an
#    uninterrupted run (model.safetensors, final checkpoint, per-step losses); SIGINT exits 130
#    with a checkpoint; a corrupt newest checkpoint is skipped with a warning;
#  - teacher-cache + distill --teacher-cache gives the online run's per-step losses (1e-6 rel.);
#  - bad input: one line "xdistill: error: ...", exit 1, the previous run's checkpoints untouched.
# Random kill moments come from $RANDOM, seeded from XD_TEST_SEED (printed) to replay a failure.
set -u
# One thread: ~10x faster than two on the shared 2-core CI box (OpenMP wake-ups dominate runs
# this small). Resume is bit-exact at a fixed thread count; see docs/perf.md (stages) for the
# known difference between 1- and 2-thread runs.
export OMP_NUM_THREADS=1
BIN=${XD_BIN:-build/xdistill}
TEA=tests/fixtures/tiny-teacher
if [ ! -f "$TEA/tokenizer.json" ]; then echo "[skip] $TEA absent"; exit 0; fi
TMP=$(mktemp -d /tmp/xdistill-cli-stages.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
SEED=${XD_TEST_SEED:-$(( $(date +%s) % 32768 ))}
RANDOM=$SEED
echo "kill-moment seed: XD_TEST_SEED=$SEED"
fail=0
ok() { echo "[ ok ] $1"; }
bad() { echo "[FAIL] $1"; fail=1; }
check() { if eval "$2"; then ok "$1"; else bad "$1"; fi; }

# expect_error NAME WANT CMD...: exit 1, exactly one stderr line "xdistill: error: ..." containing WANT
expect_error() {
  local name=$1 want=$2; shift 2
  "$@" >"$TMP/out" 2>"$TMP/err"; local rc=$?
  local lines; lines=$(grep -c . "$TMP/err")
  if [ $rc -eq 1 ] && [ "$lines" -eq 1 ] && grep -q "^xdistill: error: " "$TMP/err" && grep -qF -- "$want" "$TMP/err"; then
    ok "$name"
  else
    bad "$name (rc=$rc, stderr: $(tr '\n' '|' <"$TMP/err"))"
  fi
}

# ---- corpora: text documents (Shakespeare paragraphs when ../shared is there) and chat ----
if [ -f ../shared/corpora/tinyshakespeare/input.txt ]; then
  head -c 60000 ../shared/corpora/tinyshakespeare/input.txt | python3 -c 'import json,sys
for p in sys.stdin.read().split("\n\n"):
    p.strip() and print(json.dumps({"text": p}))' >"$TMP/text.jsonl" 2>/dev/null
fi
if [ ! -s "$TMP/text.jsonl" ]; then  # no python needed: a generated pseudo-text, one document a line
  words=(the king shall speak of love and war in hall old castle quick brown fox jumps over lazy dog)
  for d in $(seq 1 240); do
    line=""; for w in $(seq 1 $(( 8 + RANDOM % 30 ))); do line="$line ${words[$((RANDOM % 18))]}"; done
    echo "{\"text\": \"${line# }.\"}"
  done >"$TMP/text.jsonl"
fi
for d in $(seq 1 120); do
  echo "{\"messages\": [{\"role\": \"user\", \"content\": \"what of the king $d?\"}, {\"role\": \"assistant\", \"content\": \"the king shall speak of love and war, $d times.\"}]}"
done >"$TMP/chat.jsonl"

"$BIN" data prepare --tokenizer $TEA --out "$TMP/text" --val-fraction 0.05 --quiet "$TMP/text.jsonl" >/dev/null 2>"$TMP/err"
check "data prepare text" "[ $? -eq 0 ]"
"$BIN" data prepare --tokenizer $TEA --out "$TMP/chat" --val-fraction 0.1 --quiet "$TMP/chat.jsonl" >/dev/null 2>"$TMP/err"
check "data prepare chat (loss mask)" "[ $? -eq 0 ] && \"$BIN\" data info \"$TMP/chat\" | grep -q 'with loss mask'"
"$BIN" init --teacher $TEA --out "$TMP/student" --window 8 --sinks 2 --chunk 8 >/dev/null 2>"$TMP/err"
check "init" "[ $? -eq 0 ] && [ -f '$TMP/student/model.safetensors' ]"

# Small runs: 64-token rows, 2 micro-batches of 4 per step, a checkpoint every 3 steps.
ALIGN=(align --teacher $TEA --student "$TMP/student" --data "$TMP/text" --seq_len 64 --batch 8 --micro_batch 4
       --steps 40 --warmup_steps 4 --ckpt_every 3 --ckpt_keep 2 --log_every 20 --seed 11)
"$BIN" "${ALIGN[@]}" --out "$TMP/a_ref" >/dev/null 2>"$TMP/a_ref.log"
check "align runs 40 steps" "[ $? -eq 0 ] && [ \$(wc -l <'$TMP/a_ref/train/metrics.jsonl') -eq 40 ] && [ -f '$TMP/a_ref/model.safetensors' ]"
check "align loss falls (mean of last 5 steps < first step)" "python3 -c 'import json,sys
L=[json.loads(l)[\"loss\"] for l in open(\"$TMP/a_ref/train/metrics.jsonl\")]
sys.exit(0 if sum(L[-5:])/5 < L[0] else 1)' 2>/dev/null || awk -F'\"loss\":' '{split(\$2,a,\",\"); v[NR]=a[1]} END{s=0; for(i=NR-4;i<=NR;i++) s+=v[i]; exit !(s/5 < v[1])}' '$TMP/a_ref/train/metrics.jsonl'"

losses() { sed 's/.*"step":\([0-9]*\),"loss":\([^,]*\),.*/\1 \2/' "$1"; }

# same_run NAME REF OUT: model, final checkpoint, `latest` and per-step losses identical
same_run() {
  local name=$1 ref=$2 out=$3 last
  last=$(cat "$ref/train/latest")
  if cmp -s "$ref/model.safetensors" "$out/model.safetensors" && cmp -s "$ref/train/$last" "$out/train/$last" &&
     cmp -s "$ref/train/latest" "$out/train/latest" && cmp -s <(losses "$ref/train/metrics.jsonl") <(losses "$out/train/metrics.jsonl"); then
    ok "$name: byte-identical to the uninterrupted run"
  else
    bad "$name: differs from the uninterrupted run"
  fi
}

# kill_resume NAME SIGNAL KILLS OUT CMD...: start CMD --out OUT, send SIGNAL once the run is at a
# random step (plus a random part of a step; checkpoints every 3 steps, so kills land before,
# during and after checkpoint writes), KILLS times (each later start with --resume),
# then resume to the end. SIGINT must give exit 130 with a checkpoint of the step reached.
kill_resume() {
  local name=$1 sig=$2 kills=$3 out=$4; shift 4
  local steps=40 i pid rc resume=() n at
  for ((i = 0; i < kills; i++)); do
    n=$( [ -f "$out/train/metrics.jsonl" ] && wc -l <"$out/train/metrics.jsonl" || echo 0)
    at=$(( n + 1 + RANDOM % ((steps - 10 - n) / 2 + 1) ))  # leaves >= 8 steps: the kill lands mid-run
    "$BIN" "$@" --out "$out" "${resume[@]}" >/dev/null 2>>"$out.log" & pid=$!
    while kill -0 $pid 2>/dev/null && [ "$( [ -f "$out/train/metrics.jsonl" ] && wc -l <"$out/train/metrics.jsonl" || echo 0)" -lt $at ]; do sleep 0.01; done
    sleep "0.00$((RANDOM % 10))"  # and a random part of a step (a step takes ~10-40 ms)
    kill -s "$sig" $pid 2>/dev/null
    { wait $pid; } 2>/dev/null; rc=$?
    echo "  $name: $sig at step ~$at, exit $rc" >>"$TMP/kills.log"
    [ "$sig" = KILL ] && [ $rc -ne 137 ] && bad "$name: kill $((i + 1)) came after the run ended (exit $rc)"
    [ "$sig" = INT ] && [ $rc -eq 0 ] && bad "$name: SIGINT came after the run ended"
    if [ "$sig" = INT ] && [ $rc -ne 0 ]; then
      local st; st=$(tail -1 "$out/train/metrics.jsonl" | sed 's/.*"step":\([0-9]*\).*/\1/')
      check "$name: SIGINT exits 130 with a checkpoint of step $st" "[ $rc -eq 130 ] && [ \"\$(cat '$out/train/latest')\" = \"step-\$(printf %06d $st).ckpt\" ]"
    fi
    resume=(--resume)
  done
  "$BIN" "$@" --out "$out" --resume >/dev/null 2>>"$out.log"
  check "$name: resumed run completes" "[ $? -eq 0 ]"
}

kill_resume "align SIGKILL x3" KILL 3 "$TMP/a_kill" "${ALIGN[@]}"
same_run "align SIGKILL x3" "$TMP/a_ref" "$TMP/a_kill"
kill_resume "align SIGINT" INT 1 "$TMP/a_int" "${ALIGN[@]}"
same_run "align SIGINT" "$TMP/a_ref" "$TMP/a_int"

# A corrupt newest checkpoint: skipped with a warning, the run resumes from the previous one.
cp -r "$TMP/a_ref" "$TMP/a_corrupt"
newest=$(cat "$TMP/a_corrupt/train/latest")
printf '\xff\xff\xff\xff' | dd of="$TMP/a_corrupt/train/$newest" bs=1 seek=200 conv=notrunc 2>/dev/null
"$BIN" "${ALIGN[@]}" --out "$TMP/a_corrupt" --resume >/dev/null 2>"$TMP/err"; rc=$?
check "corrupt newest checkpoint: warning names it, run resumes (exit 0)" "[ $rc -eq 0 ] && grep -q \"^xdistill: warning: skipping checkpoint: .*$newest\" '$TMP/err'"
same_run "resume past a corrupt checkpoint" "$TMP/a_ref" "$TMP/a_corrupt"

# ---- stage II ----
DIST=(distill --student "$TMP/a_ref" --data "$TMP/text" --seq_len 64 --batch 8 --micro_batch 4 --steps 40
      --warmup_steps 4 --ckpt_every 3 --ckpt_keep 2 --log_every 20 --seed 12 --kd_topk 16 --lr 1e-3)
"$BIN" "${DIST[@]}" --teacher $TEA --out "$TMP/d_ref" >/dev/null 2>"$TMP/d_ref.log"
check "distill (online teacher) runs 40 steps" "[ $? -eq 0 ] && [ \$(wc -l <'$TMP/d_ref/train/metrics.jsonl') -eq 40 ] && grep -q '\"kl\":' '$TMP/d_ref/train/metrics.jsonl'"
kill_resume "distill SIGKILL x3" KILL 3 "$TMP/d_kill" "${DIST[@]}" --teacher $TEA
same_run "distill SIGKILL x3" "$TMP/d_ref" "$TMP/d_kill"
kill_resume "distill SIGINT" INT 1 "$TMP/d_int" "${DIST[@]}" --teacher $TEA
same_run "distill SIGINT" "$TMP/d_ref" "$TMP/d_int"

"$BIN" teacher-cache --teacher $TEA --data "$TMP/text" --out "$TMP/topk.bin" --seq-len 64 --k 16 --batch 4 >/dev/null 2>"$TMP/err"
check "teacher-cache" "[ $? -eq 0 ] && [ -s '$TMP/topk.bin' ]"
"$BIN" "${DIST[@]}" --teacher-cache "$TMP/topk.bin" --out "$TMP/d_cache" >/dev/null 2>"$TMP/err"
check "distill --teacher-cache runs" "[ $? -eq 0 ] && [ \$(wc -l <'$TMP/d_cache/train/metrics.jsonl') -eq 40 ]"
check "cached and online runs: same per-step losses (1e-6 relative)" "paste -d' ' <(losses '$TMP/d_ref/train/metrics.jsonl') <(losses '$TMP/d_cache/train/metrics.jsonl') |
  awk '{ d = \$2 - \$4; if (d < 0) d = -d; if (\$1 != \$3 || d > 1e-6 * (\$2 < 0 ? -\$2 : \$2)) bad = 1; n++ } END { exit bad || n != 40 }'"

# Chat data: runs, and the step's token count is the number of assistant (mask = 1) targets only.
CHAT=(distill --student "$TMP/a_ref" --data "$TMP/chat" --seq_len 64 --batch 4 --micro_batch 4 --steps 6 --warmup_steps 2 --seed 3 --kd_topk 16 --lr 1e-3)
"$BIN" "${CHAT[@]}" --teacher $TEA --out "$TMP/d_chat" >/dev/null 2>"$TMP/err"
check "distill on chat data" "[ $? -eq 0 ] && [ \$(wc -l <'$TMP/d_chat/train/metrics.jsonl') -eq 6 ]"
# step_tokens FILE: tokens counted per step ("tokens" in metrics.jsonl is cumulative)
step_tokens() { sed 's/.*"tokens":\([0-9]*\).*/\1/' "$1" | awk '{ print $1 - p; p = $1 }'; }
check "text: every step counts all 8 x 64 targets" "[ \"\$(step_tokens '$TMP/d_ref/train/metrics.jsonl' | sort -u)\" = 512 ]"
check "chat: each step counts only assistant targets (0 < n < 4 x 64)" "step_tokens '$TMP/d_chat/train/metrics.jsonl' | awk '\$1 <= 0 || \$1 >= 256 { bad = 1 } END { exit bad }'"

# ---- bad input; the reference runs' checkpoints must stay untouched ----
sums() { (cd "$1/train" && md5sum latest step-*.ckpt); }
sums "$TMP/a_ref" >"$TMP/a_ref.sums"; sums "$TMP/d_ref" >"$TMP/d_ref.sums"
expect_error "align: missing teacher dir" "$TMP/no-teacher" "$BIN" "${ALIGN[@]/$TEA/$TMP/no-teacher}" --out "$TMP/a_ref" --resume
expect_error "distill: missing teacher dir" "$TMP/no-teacher" "$BIN" "${DIST[@]}" --teacher "$TMP/no-teacher" --out "$TMP/d_ref" --resume
expect_error "teacher-cache: missing teacher dir" "$TMP/no-teacher" "$BIN" teacher-cache --teacher "$TMP/no-teacher" --data "$TMP/text" --out "$TMP/x.bin" --seq-len 64 --k 16
expect_error "teacher-cache: --seq-len not a number" "teacher-cache: --seq-len must be a positive integer" "$BIN" teacher-cache --teacher "$TMP/no-teacher" --data "$TMP/text" --out "$TMP/x.bin" --seq-len 64x --k 16
expect_error "teacher-cache: --k past int" "teacher-cache: --k must be a positive integer" "$BIN" teacher-cache --teacher "$TMP/no-teacher" --data "$TMP/text" --out "$TMP/x.bin" --seq-len 64 --k 99999999999
expect_error "demo: --align-steps not a number" "demo: --align-steps must be a positive integer" "$BIN" demo --align-steps 10x
expect_error "demo: negative --seed" "demo: --seed must be an unsigned integer" "$BIN" demo --seed -3
OTHER=tests/fixtures/teachers/llama-gqa/fp32
if [ -d $OTHER ]; then
  "$BIN" init --teacher $OTHER --out "$TMP/other_student" --window 8 --sinks 2 --chunk 8 >/dev/null 2>&1
  expect_error "align: student made from another teacher" "student does not fit teacher" "$BIN" "${ALIGN[@]/$TMP\/student/$TMP/other_student}" --out "$TMP/a_ref" --resume
  expect_error "distill: student made from another teacher" "student does not fit teacher" "$BIN" "${DIST[@]/$TMP\/a_ref/$TMP/other_student}" --teacher $TEA --out "$TMP/d_ref" --resume
else echo "[skip] $OTHER absent: incompatible-student cases"; fi
cp "$TMP/topk.bin" "$TMP/corrupt.bin"
printf '\x01\x02\x03\x04' | dd of="$TMP/corrupt.bin" bs=1 seek=5000 conv=notrunc 2>/dev/null
expect_error "corrupt top-k cache" "$TMP/corrupt.bin: top-k cache checksum mismatch" "$BIN" "${DIST[@]}" --teacher-cache "$TMP/corrupt.bin" --out "$TMP/d_ref" --resume
head -c 1000 "$TMP/topk.bin" >"$TMP/trunc.bin"
expect_error "truncated top-k cache" "$TMP/trunc.bin: top-k cache is truncated" "$BIN" "${DIST[@]}" --teacher-cache "$TMP/trunc.bin" --out "$TMP/d_ref" --resume
"$BIN" teacher-cache --teacher $TEA --data "$TMP/text" --out "$TMP/k8.bin" --seq-len 64 --k 8 >/dev/null 2>&1
expect_error "top-k cache with another k" "$TMP/k8.bin: cache has vocab 320, seq_len 64, k 8 but the run needs 320, 64, 16" "$BIN" "${DIST[@]}" --teacher-cache "$TMP/k8.bin" --out "$TMP/d_ref" --resume
expect_error "top-k cache of another dataset" "$TMP/topk.bin: cache holds" "$BIN" "${DIST[@]/$TMP\/text/$TMP/chat}" --teacher-cache "$TMP/topk.bin" --out "$TMP/d_ref" --resume
echo "hi" >"$TMP/short.txt"
"$BIN" data prepare --tokenizer $TEA --out "$TMP/short" --quiet "$TMP/short.txt" >/dev/null 2>&1
expect_error "align: dataset too short for one row" "$TMP/short/manifest.json: 4 tokens make 0 rows" "$BIN" "${ALIGN[@]/$TMP\/text/$TMP/short}" --out "$TMP/a_ref" --resume
expect_error "distill: dataset too short for one row" "$TMP/short/manifest.json" "$BIN" "${DIST[@]/$TMP\/text/$TMP/short}" --teacher $TEA --out "$TMP/d_ref" --resume
: >"$TMP/empty.txt"
expect_error "data prepare: empty corpus" "no documents" "$BIN" data prepare --tokenizer $TEA --out "$TMP/empty" --quiet "$TMP/empty.txt"
expect_error "align: data dir without a dataset" "$TMP/empty: no manifest.json" "$BIN" "${ALIGN[@]/$TMP\/text/$TMP/empty}" --out "$TMP/a_ref" --resume
# Data prepared with another tokenizer (a larger and a same-size-but-different vocabulary).
BIG=tests/fixtures/tokenizer/synth/split_bytelevel
if [ -f $BIG/tokenizer.json ]; then
  "$BIN" data prepare --tokenizer $BIG --out "$TMP/otherdata" --quiet "$TMP/text.jsonl" >/dev/null 2>&1
  expect_error "align: data of another tokenizer" "$TMP/otherdata" "$BIN" "${ALIGN[@]/$TMP\/text/$TMP/otherdata}" --out "$TMP/a_ref" --resume
  expect_error "distill: data of another tokenizer" "$TMP/otherdata" "$BIN" "${DIST[@]/$TMP\/text/$TMP/otherdata}" --teacher $TEA --out "$TMP/d_ref" --resume
  expect_error "teacher-cache: data of another tokenizer" "$TMP/otherdata" "$BIN" teacher-cache --teacher $TEA --data "$TMP/otherdata" --out "$TMP/x.bin" --seq-len 64 --k 16
fi
# Same vocabulary size, another tokenizer (its tokenizer.json differs by one byte): the manifest's
# tokenizer hash differs from the teacher's / student's.
mkdir -p "$TMP/tok2" && cp $TEA/tokenizer_config.json "$TMP/tok2/" && { cat $TEA/tokenizer.json; echo; } >"$TMP/tok2/tokenizer.json"
"$BIN" data prepare --tokenizer "$TMP/tok2" --out "$TMP/tok2data" --quiet "$TMP/text.jsonl" >/dev/null 2>&1
expect_error "align: data of another tokenizer, same vocabulary" "$TMP/tok2data: data was prepared with tokenizer" "$BIN" "${ALIGN[@]/$TMP\/text/$TMP/tok2data}" --out "$TMP/a_ref" --resume
expect_error "distill --teacher-cache: data of another tokenizer" "$TMP/tok2data: data was prepared with tokenizer" "$BIN" "${DIST[@]/$TMP\/text/$TMP/tok2data}" --teacher-cache "$TMP/topk.bin" --out "$TMP/d_ref" --resume
check "bad input left the align checkpoints untouched" "sums '$TMP/a_ref' | cmp -s - '$TMP/a_ref.sums'"
check "bad input left the distill checkpoints untouched" "sums '$TMP/d_ref' | cmp -s - '$TMP/d_ref.sums'"
cat "$TMP/kills.log"
exit $fail
