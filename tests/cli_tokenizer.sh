#!/usr/bin/env bash
# CLI test of `xdistill encode` / `xdistill decode`: interface, exact ids, round trip, errors.
set -u
BIN=${XD_BIN:-build/xdistill}
fail=0
check() { if ! eval "$2"; then echo "FAIL: $1"; fail=1; else echo "ok: $1"; fi; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

check "encode --help" "$BIN encode --help | grep -q -- '--add-special'"
check "decode --help" "$BIN decode --help | grep -q -- '--skip-special'"
$BIN encode >/dev/null 2>"$TMP/err"; rc=$?
check "encode without --tokenizer fails" "[ $rc -ne 0 ] && grep -q '^xdistill: error: .*--tokenizer' $TMP/err"
$BIN encode --tokenizer /nonexistent </dev/null >/dev/null 2>"$TMP/err"; rc=$?
check "missing tokenizer dir names the file" "[ $rc -ne 0 ] && grep -q '^xdistill: error: /nonexistent: not found' $TMP/err"

if [ ! -d ../shared/tokenizers ]; then echo "skip: ../shared absent"; exit $fail; fi
TOK=../shared/tokenizers/llama2
printf '%s\n' '{"text": "Hello world"}' '{"text": "<s> 🦙 x"}' '{"text": ""}' > "$TMP/in.jsonl"
$BIN encode --tokenizer $TOK --add-special < "$TMP/in.jsonl" > "$TMP/ids.jsonl"
check "encode ids (HF: [1, 15043, 3186])" "head -1 $TMP/ids.jsonl | grep -qx '{\"ids\": \[1, 15043, 3186\]}'"
check "one output line per input line" "[ \$(wc -l < $TMP/ids.jsonl) -eq 3 ]"
$BIN decode --tokenizer $TOK --skip-special < "$TMP/ids.jsonl" > "$TMP/out.jsonl"
check "decode round trip" "head -1 $TMP/out.jsonl | grep -qx '{\"text\":\"Hello world\"}'"
check "decode keeps emoji" "sed -n 2p $TMP/out.jsonl | grep -q '🦙 x'"
echo '{"txt": 1}' | $BIN encode --tokenizer $TOK >/dev/null 2>"$TMP/err"; rc=$?
check "bad input line is an error" "[ $rc -ne 0 ] && grep -q 'line 1' $TMP/err"
echo '{"ids": [1, "x"]}' | $BIN decode --tokenizer $TOK >/dev/null 2>"$TMP/err"; rc=$?
check "bad ids is an error" "[ $rc -ne 0 ] && grep -q '^xdistill: error: <stdin>: line 1' $TMP/err"
printf '%s\n' '{"ids": [1]}' '{"ids": [1e10]}' | $BIN decode --tokenizer $TOK >/dev/null 2>"$TMP/err"; rc=$?
check "an id past 32 bits is an error (range checked before the cast)" "[ $rc -ne 0 ] && grep -q 'line 2: \"ids\" must hold 32-bit integers' $TMP/err"
printf '%s\r\n\n%s\n' '{"text": "a"}' '{"text": "b"}' | $BIN encode --tokenizer $TOK > "$TMP/crlf.jsonl"; rc=$?
check "CRLF and blank lines: one output line per text" "[ $rc -eq 0 ] && [ \$(wc -l < $TMP/crlf.jsonl) -eq 2 ]"
exit $fail
