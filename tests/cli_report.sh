#!/usr/bin/env bash
# xdistill report: builds the HTML report from the fixture results, logs and gates; checks its
# content and error handling, and, when chromium is installed (Debian: apt-get install -y
# chromium), renders it headless and checks the screenshot is a real image (> 40 KB).
set -u
BIN=${XD_BIN:-build/xdistill}
FIX=tests/fixtures/eval
TMP=$(mktemp -d /tmp/xdistill-cli-report.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fail=0
check() { if ! eval "$2"; then echo "FAIL: $1"; fail=1; else echo "ok: $1"; fi; }

mkdir "$TMP/res"; cp $FIX/teacher.json $FIX/student.json "$TMP/res/"
echo '{"not": "results"}' > "$TMP/res/other.json"
"$BIN" report --results "$TMP/res" --logs $FIX/align_metrics.jsonl $FIX/distill_metrics.jsonl \
  --gates $FIX/gates.json --title "demo <report>" --out "$TMP/report.html" 2>"$TMP/err"; rc=$?
check "report exits 0" '[ $rc -eq 0 ]'
H="$TMP/report.html"
check "html written" '[ -s "$H" ] && head -c 15 "$H" | grep -q "<!DOCTYPE html>"'
check "alpha* marked" 'grep -q "α\* = 0.018" "$H"'
check "title escaped" 'grep -q "demo &lt;report&gt;" "$H"'
check "no scripts, no network" '! grep -qi "<script" "$H" && ! grep -q "https\?://" "$H"'
check "training charts (7 metrics)" '[ $(grep -o "class=.series." "$H" | wc -l) -eq 7 ]'
check "heat map cells 8x12" '[ $(grep -o "<title>layer [0-9]* head" "$H" | wc -l) -eq 96 ]'

out=$("$BIN" report --results $FIX/student.json $FIX/teacher.json --gates "$TMP/none.json" --out "$TMP/x.html" 2>&1); rc=$?
check "missing gates file: one error line" '[ $rc -ne 0 ] && grep -q "^xdistill: error: .*none.json" <<<"$out" && [ $(wc -l <<<"$out") -eq 1 ] && [ ! -e "$TMP/x.html" ]'
printf '{"step": 1, "loss": 1}\nbroken\n{"step": 2, "loss": 0.5}\n' > "$TMP/bad.jsonl"
out=$("$BIN" report --logs "$TMP/bad.jsonl" --out "$TMP/x.html" 2>&1); rc=$?
check "bad log line named" '[ $rc -ne 0 ] && grep -q "^xdistill: error: .*bad.jsonl:2" <<<"$out"'
out=$("$BIN" report --results $FIX/student.json 2>&1); rc=$?
check "--out required" '[ $rc -ne 0 ] && grep -q "^xdistill: error: report: --out is required" <<<"$out"'
"$BIN" report --help | grep -q "usage: xdistill report"; check "help" '[ $? -eq 0 ]'

CHROME=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$CHROME" ]; then
  echo "skip: chromium not installed (apt-get install -y chromium); screenshot check not run"
else
  timeout 120 "$CHROME" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$TMP/chrome" \
    --screenshot="$TMP/shot.png" --window-size=1200,2000 "file://$H" >/dev/null 2>&1
  size=$(stat -c %s "$TMP/shot.png" 2>/dev/null || echo 0)
  echo "screenshot: $size bytes"
  check "screenshot is a non-trivial PNG" '[ "$size" -gt 40000 ] && head -c 8 "$TMP/shot.png" | od -An -tx1 | grep -q "89 50 4e 47"'
fi
exit $fail
