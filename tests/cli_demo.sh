#!/usr/bin/env bash
# The demo pipeline end to end in --quick mode (few steps: checks that every stage runs and the
# table, results and report appear; the scores of a quick run mean nothing).
set -euo pipefail
XD=${XD_BIN:?XD_BIN not set}
out=$(mktemp -d)/demo
trap 'rm -rf "$(dirname "$out")"' EXIT
"$XD" demo --quick --out "$out" > "$out.stdout" 2> "$out.stderr" || { cat "$out.stderr"; exit 1; }
grep -q "^arith " "$out.stdout"
grep -q "alpha\*" "$out.stdout"
for f in report.html results-student.json results-teacher.json gates.json student-merged/model.safetensors; do
  [ -s "$out/$f" ] || { echo "missing $f"; exit 1; }
done
grep -q "stage I" "$out.stderr"
# A second run into the same directory replaces the previous demo; a foreign directory is refused.
"$XD" demo --quick --out "$out" > /dev/null 2>&1
mkdir -p "$out-foreign" && touch "$out-foreign/x"
if "$XD" demo --quick --out "$out-foreign" 2> "$out.err"; then echo "foreign dir accepted"; exit 1; fi
grep -q "not a previous demo" "$out.err"
echo "1 passed, 0 failed"
