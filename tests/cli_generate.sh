#!/usr/bin/env bash
# CLI text generation and eval with a fixture teacher, a student made from it (window 4, far
# below the generated lengths) and the byte-level tokenizer fixture: text in / text out,
# determinism (greedy, --temperature 0, seeded sampling), stop strings, eval with a reference
# model (results, reference results and comparison written and readable by `compare`), and bad
# input giving one line "xdistill: error: ..." with exit 1.
set -u
export LC_ALL=C OMP_NUM_THREADS=1
BIN=${XD_BIN:-build/xdistill}
FIX=tests/fixtures/teachers/llama-gqa/fp32
TOKF=tests/fixtures/tokenizer_bytes/tokenizer.json
if [ ! -d "$FIX" ] || [ ! -f "$TOKF" ]; then echo "[skip] $FIX or $TOKF absent"; exit 0; fi
TMP=$(mktemp -d /tmp/xdistill-cli-generate.XXXXXX)
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

# generation output with NUL bytes dropped (a random model may emit byte 0)
gen() { "$BIN" generate "$@" 2>"$TMP/gen_err" | tr -d '\000'; return "${PIPESTATUS[0]}"; }

mkdir -p "$TMP/teacher"
cp "$FIX"/* "$TMP/teacher/" && cp "$TOKF" "$TMP/teacher/"
"$BIN" init --teacher "$TMP/teacher" --out "$TMP/student" --window 4 --sinks 2 --chunk 5 >/dev/null 2>&1 \
  && [ -f "$TMP/student/tokenizer.json" ] && ok "init student with tokenizer" || bad "init student"

for c in generate eval; do
  if "$BIN" $c --help | grep -q "usage: xdistill $c"; then ok "$c --help"; else bad "$c --help"; fi
done

for m in teacher student; do
  M="$TMP/$m"
  a=$(gen --model "$M" --prompt "Once upon a time" --max-new 24 --ignore-eos); rc=$?
  b=$(gen --model "$M" --prompt "Once upon a time" --max-new 24 --ignore-eos --temperature 0)
  [ $rc -eq 0 ] && [ -n "$a" ] && [ "$a" = "$b" ] && ok "$m: greedy text, --temperature 0 = default" || bad "$m: greedy (rc=$rc): $(cat "$TMP/gen_err")"
  s1=$(gen --model "$M" --prompt "Once upon a time" --max-new 24 --ignore-eos --temperature 1.5 --top-k 100 --top-p 0.95 --seed 7)
  s2=$(gen --model "$M" --prompt "Once upon a time" --max-new 24 --ignore-eos --temperature 1.5 --top-k 100 --top-p 0.95 --seed 7)
  s3=$(gen --model "$M" --prompt "Once upon a time" --max-new 24 --ignore-eos --temperature 1.5 --top-k 100 --top-p 0.95 --seed 8)
  [ -n "$s1" ] && [ "$s1" = "$s2" ] && [ "$s1" != "$s3" ] && ok "$m: seeded sampling reproducible, seeds differ" || bad "$m: sampling"
  # stop string: the first ASCII letter or digit of the greedy text; output = text before it
  c=$(printf '%s' "$a" | grep -ao '[A-Za-z0-9]' | head -1)
  if [ -n "$c" ]; then
    want=${a%%"$c"*}
    got=$(gen --model "$M" --prompt "Once upon a time" --max-new 24 --ignore-eos --stop "$c")
    [ "$got" = "$want" ] && ok "$m: --stop '$c'" || bad "$m: --stop '$c': got [$got] want [$want]"
  else
    ok "$m: --stop (no ASCII letter in the greedy text; skipped)"
  fi
  "$BIN" generate --model "$M" --prompt "x" --max-new 5 --stats >/dev/null 2>"$TMP/st" && grep -q "^\[$m\] prompt 1 tokens" "$TMP/st" \
    && ok "$m: --stats" || bad "$m: --stats: $(cat "$TMP/st")"
done

# eval: student with the teacher as reference on a tiny multiple-choice task and LAMBADA
"$BIN" eval --model "$TMP/student" --tasks mc:tests/fixtures/eval/mc.jsonl,lambada:tests/fixtures/eval/lambada.jsonl \
  --limit 4 --batch 2 --out "$TMP/res.json" --reference "$TMP/teacher" >"$TMP/eval_out" 2>"$TMP/eval_err"; rc=$?
[ $rc -eq 0 ] && grep -q '"xdistill-eval-results"' "$TMP/res.json" && grep -q '"role":[[:space:]]*"teacher"' "$TMP/res.reference.json" \
  && grep -q '"xdistill-compare"' "$TMP/res.compare.json" && grep -q "alpha\*" "$TMP/eval_out" && grep -q "mc: 4/4 docs" "$TMP/eval_err" \
  && ok "eval --reference: results, reference, comparison, progress" || bad "eval (rc=$rc): $(cat "$TMP/eval_err")"
# a generation task (GSM8K format, no few-shot) through the decoders of both models
printf '%s\n' '{"question": "What is 2 + 2?", "answer": "2 + 2 = 4\n#### 4"}' '{"question": "What is 3 + 5?", "answer": "#### 8"}' >"$TMP/g.jsonl"
for m in teacher student; do
  "$BIN" eval --model "$TMP/$m" --tasks "gsm=gsm8k:$TMP/g.jsonl" --num-fewshot 0 --out "$TMP/g_$m.json" >"$TMP/eval_out" 2>"$TMP/eval_err" \
    && grep -q "gsm .*n=2 .*exact_match=" "$TMP/eval_out" && grep -q "\"role\":[[:space:]]*\"$m\"" "$TMP/g_$m.json" \
    && ok "$m: eval of a generation task" || bad "$m: eval generate: $(cat "$TMP/eval_err")"
done
"$BIN" compare "$TMP/res.json" "$TMP/res.reference.json" >/dev/null && ok "compare reads eval's files" || bad "compare"
"$BIN" eval --model "$FIX" --tokenizer "$TOKF" --tasks "tiny=mc:tests/fixtures/eval/mc.jsonl" --limit 2 >"$TMP/eval_out" 2>/dev/null \
  && grep -q "tiny .*n=2" "$TMP/eval_out" && ok "eval --tokenizer, named spec" || bad "eval --tokenizer: $(cat "$TMP/eval_out")"

# --chat: ChatML rendered with the generation prompt; with the byte tokenizer the markers are
# plain bytes, so the prompt length is the rendered text's byte count
want=$(printf '<|im_start|>system\nBe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n' | wc -c)
"$BIN" generate --model "$TMP/teacher" --prompt hi --chat --chat-format chatml --system "Be brief" --max-new 2 --stats >/dev/null 2>"$TMP/st" \
  && grep -q "prompt $want tokens" "$TMP/st" && ok "--chat --system: ChatML prompt of $want tokens" || bad "--chat: $(cat "$TMP/st")"
want=$(printf '<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n' | wc -c)
"$BIN" generate --model "$TMP/student" --prompt hi --chat --chat-format chatml --max-new 2 --stats >/dev/null 2>"$TMP/st" \
  && grep -q "prompt $want tokens" "$TMP/st" && ok "student --chat: ChatML prompt of $want tokens" || bad "student --chat: $(cat "$TMP/st")"

expect_error "no tokenizer" "no tokenizer.json" "$BIN" generate --model "$FIX" --prompt hi
expect_error "no chat template" "" "$BIN" generate --model "$TMP/teacher" --prompt hi --chat
expect_error "bad top-p" "top-p must be in (0, 1]" "$BIN" generate --model "$TMP/teacher" --prompt hi --top-p 0
expect_error "negative temperature" "temperature must be" "$BIN" generate --model "$TMP/teacher" --prompt hi --temperature -1
expect_error "system without chat" "--system needs --chat" "$BIN" generate --model "$TMP/teacher" --prompt hi --system x
expect_error "ids and prompt" "one of --ids or --prompt" "$BIN" generate --model "$TMP/teacher" --prompt hi --ids x.npy --max-new 1
expect_error "unknown task" "no tasks/nosuchtask.json" "$BIN" eval --model "$TMP/teacher" --tasks nosuchtask
expect_error "eval without tokenizer" "no tokenizer.json" "$BIN" eval --model "$FIX" --tasks mc:tests/fixtures/eval/mc.jsonl
expect_error "missing task file" "/nonexistent.jsonl" "$BIN" eval --model "$TMP/teacher" --tasks mc:/nonexistent.jsonl

exit $fail
