#!/usr/bin/env bash
# xdistill synth through the real binary: output layout, determinism, and one-line errors
# with a non-zero exit for every kind of bad argument.
set -u
BIN=${XD_BIN:-build/xdistill}
T=$(mktemp -d /tmp/xdistill-cli-synth.XXXXXX)
trap 'rm -rf "$T"' EXIT
fail=0
ok() { echo "[ ok ] $1"; }
bad() { echo "[FAIL] $1"; fail=1; }

# expect_error NAME ARGS...: non-zero exit, exactly one stderr line "xdistill: error: ...", nothing on stdout
expect_error() {
  local name=$1; shift
  "$BIN" synth "$@" >"$T/out" 2>"$T/err"; local rc=$?
  local lines; lines=$(wc -l <"$T/err")
  if [ $rc -ne 0 ] && [ "$lines" -eq 1 ] && grep -q '^xdistill: error: ' "$T/err" && [ ! -s "$T/out" ]; then
    ok "$name: $(cat "$T/err")"
  else
    bad "$name (rc $rc, $lines stderr lines): $(cat "$T/err")"
  fi
}

"$BIN" synth --help >"$T/help" 2>&1 && grep -q -- '--recall-gap' "$T/help" && ok "--help" || bad "--help"

"$BIN" synth --out "$T/a" --seed 7 --train 200 --eval 30 >/dev/null 2>"$T/err" || bad "write a: $(cat "$T/err")"
"$BIN" synth --out "$T/b" --seed 7 --train 200 --eval 30 >/dev/null 2>&1 || bad "write b"
"$BIN" synth --out "$T/c" --seed 8 --train 200 --eval 30 >/dev/null 2>&1 || bad "write c"
n=0
for d in arith recall reverse facts; do
  for s in train eval; do
    [ -f "$T/a/$d/$s.jsonl" ] && n=$((n + 1))
  done
done
[ $n -eq 8 ] && [ -f "$T/a/manifest.json" ] && ok "layout: 4 domains x 2 splits + manifest" || bad "layout ($n files)"
[ "$(wc -l <"$T/a/arith/train.jsonl")" -eq 200 ] && [ "$(wc -l <"$T/a/recall/eval.jsonl")" -eq 30 ] && ok "line counts" || bad "line counts"
diff -r "$T/a" "$T/b" >/dev/null && ok "same seed, same bytes" || bad "same seed gave different bytes"
if diff -q "$T/a/arith/train.jsonl" "$T/c/arith/train.jsonl" >/dev/null; then bad "seeds 7 and 8 gave the same data"; else ok "different seed, different data"; fi

# a subset of domains; its data equals the full run's
"$BIN" synth --out "$T/d" --seed 7 --train 200 --eval 30 --domains facts,recall >/dev/null 2>&1 || bad "write d"
[ -f "$T/d/facts/eval.jsonl" ] && [ -f "$T/d/recall/train.jsonl" ] && [ ! -e "$T/d/arith" ] && [ ! -e "$T/d/reverse" ] \
  && cmp -s "$T/a/recall/train.jsonl" "$T/d/recall/train.jsonl" && ok "--domains subset" || bad "--domains subset"

# rewriting an existing directory replaces the files (atomic writes leave no temp files)
"$BIN" synth --out "$T/a" --seed 7 --train 200 --eval 30 >/dev/null 2>&1 && diff -r "$T/a" "$T/b" >/dev/null \
  && [ -z "$(find "$T/a" -name '*.tmp.*')" ] && ok "rewrite in place" || bad "rewrite in place"

expect_error "missing --out" --seed 1
expect_error "bad seed" --out "$T/e" --seed abc
expect_error "negative seed" --out "$T/e" --seed -3
expect_error "seed overflow" --out "$T/e" --seed 99999999999999999999999
expect_error "negative --train" --out "$T/e" --train -5
expect_error "huge --eval" --out "$T/e" --eval 100000000000
expect_error "zero --recall-gap" --out "$T/e" --recall-gap 0
expect_error "unknown domain" --out "$T/e" --domains arith,poetry
expect_error "empty domain list" --out "$T/e" --domains ""
expect_error "unknown option" --out "$T/e" --frobnicate 1
expect_error "missing value" --out
expect_error "stray argument" "$T/e"
touch "$T/file"
expect_error "out below a file" --out "$T/file/sub" --train 5 --eval 5
[ ! -e "$T/e" ] && ok "no output after errors" || bad "errors left output in $T/e"

exit $fail
