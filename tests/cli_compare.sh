#!/usr/bin/env bash
# xdistill compare: the fixture student/teacher results (a stand-in for the paper's Table 7
# Llama-3.1-8B-Instruct rows; critical task arc_challenge 0.56 vs 0.57) give alpha* = 0.018;
# bad input gives one "xdistill: error:" line naming the file and a non-zero exit.
set -u
BIN=${XD_BIN:-build/xdistill}
FIX=tests/fixtures/eval
TMP=$(mktemp -d /tmp/xdistill-cli-compare.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fail=0
check() { if ! eval "$2"; then echo "FAIL: $1"; fail=1; else echo "ok: $1"; fi; }

out=$("$BIN" compare $FIX/student.json $FIX/teacher.json --json "$TMP/cmp.json" 2>&1); rc=$?
check "compare exits 0" '[ $rc -eq 0 ]'
check "alpha* printed" 'grep -q "alpha\* = 0.018 (grid 0.001)" <<<"$out"'
check "C_0 printed" 'grep -q "C_0 = 0.2500 over 8 tasks (not lossless)" <<<"$out"'
check "perplexity task skipped" 'grep -q "skipped wikitext <bpb>: lower-is-better metric" <<<"$out"'
check "json alpha_star" 'python3 -c "import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d[\"alpha_star\"]==0.018 and d[\"C_0\"]==0.25 and len(d[\"curve_C\"])==1001 else 1)" "$TMP/cmp.json" 2>/dev/null || grep -q "\"alpha_star\":.0.018," "$TMP/cmp.json"'
out=$("$BIN" compare $FIX/student.json $FIX/teacher.json --grid 0.01 2>&1)
check "grid 0.01 gives alpha* 0.02" 'grep -q "alpha\* = 0.02 (grid 0.01)" <<<"$out"'
out=$("$BIN" compare $FIX/teacher.json $FIX/teacher.json 2>&1)
check "self-comparison is lossless" 'grep -q "alpha\* = 0 (grid" <<<"$out" && grep -q "(lossless)" <<<"$out"'

echo '{"format": "xdistill-eval-results", "tasks": [{"task": "a"}]}' > "$TMP/bad.json"
out=$("$BIN" compare "$TMP/bad.json" $FIX/teacher.json 2>&1); rc=$?
check "bad results file rejected" '[ $rc -ne 0 ] && grep -q "^xdistill: error: .*bad.json" <<<"$out" && [ $(wc -l <<<"$out") -eq 1 ]'
out=$("$BIN" compare $FIX/student.json /nonexistent.json 2>&1); rc=$?
check "missing file rejected" '[ $rc -ne 0 ] && grep -q "^xdistill: error: /nonexistent.json" <<<"$out"'
out=$("$BIN" compare $FIX/student.json $FIX/teacher.json --grid 0.003 2>&1); rc=$?
check "bad grid rejected" '[ $rc -ne 0 ] && grep -q "^xdistill: error: grid 0.003" <<<"$out"'
"$BIN" compare --help | grep -q "usage: xdistill compare"; check "help" '[ $? -eq 0 ]'
exit $fail
