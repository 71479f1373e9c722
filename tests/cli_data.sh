#!/usr/bin/env bash
# `xdistill data prepare|info` through the real binary: outputs, exit codes and one-line errors,
# and that a failed run leaves no shards and no manifest in --out.
set -u
BIN=${XD_BIN:-build/xdistill}
if [ ! -d ../shared/tokenizers/llama3 ]; then echo "skip: ../shared not found"; exit 0; fi
TOK=../shared/tokenizers/llama3
T=$(mktemp -d /tmp/xdistill-cli-data.XXXXXX)
trap 'rm -rf "$T"' EXIT
fail=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; fail=1; }
# expect_error NAME PATTERN CMD...: non-zero exit, exactly one stderr line "xdistill: error: ...PATTERN..."
expect_error() {
  local name=$1 pat=$2; shift 2
  "$@" >"$T/out.txt" 2>"$T/err.txt"; local rc=$?
  local lines; lines=$(grep -c . "$T/err.txt")
  if [ $rc -ne 0 ] && [ "$lines" -eq 1 ] && grep -q "^xdistill: error: .*$pat" "$T/err.txt"; then ok "$name"
  else bad "$name (rc=$rc): $(cat "$T/err.txt")"; fi
}
no_output() { # no shard or manifest left in the dir
  if [ -z "$(ls "$1" 2>/dev/null | grep -E '\.xds|manifest\.json|\.tmp\.')" ]; then ok "$2: nothing left in --out"; else bad "$2: left $(ls "$1")"; fi
}

"$BIN" data --help | grep -q "data prepare --tokenizer DIR --out DIR" && ok "help" || bad "help"
"$BIN" data prepare --help | grep -q -- "--val-fraction" && ok "prepare help" || bad "prepare help"

# C4 samples + tinyshakespeare: 41 documents, 319,832 tokens (HF tokenizers: 18,023 + 301,768 + 41 EOS)
"$BIN" data prepare --quiet --tokenizer $TOK --out "$T/ds" --val-fraction 0.1 --seed 7 \
  ../shared/corpora/c4-samples/*.gz ../shared/corpora/tinyshakespeare/input.txt >"$T/sum.txt" 2>"$T/err.txt" \
  && ok "prepare" || bad "prepare: $(cat "$T/err.txt")"
[ ! -s "$T/err.txt" ] && ok "--quiet prints nothing on stderr" || bad "--quiet: $(cat "$T/err.txt")"
# counts from `data info` (verifies every shard) and the manifest
"$BIN" data info "$T/ds" >"$T/info.txt" 2>&1 || bad "info: $(cat "$T/info.txt")"
train=$(sed -n 's/^train: \([0-9]*\) tokens.*checksums ok$/\1/p' "$T/info.txt")
val=$(sed -n 's/^val: \([0-9]*\) tokens.*checksums ok$/\1/p' "$T/info.txt")
[ -n "$train" ] && [ -n "$val" ] && [ $((train + val)) -eq 319832 ] && ok "token counts ($train + $val)" || bad "token counts: $(cat "$T/info.txt")"
grep -q "vocab 128256, no mask, tokenizer fnv1a64:[0-9a-f]\{16\}" "$T/info.txt" && ok "vocab and tokenizer hash" || bad "vocab/hash: $(cat "$T/info.txt")"
dt=$(sed -n 's/.*: train \([0-9]*\) documents.*/\1/p' "$T/sum.txt"); dv=$(sed -n 's/.*; val \([0-9]*\) documents.*/\1/p' "$T/sum.txt")
[ -n "$dt" ] && [ -n "$dv" ] && [ $((dt + dv)) -eq 41 ] && [ "$dv" -gt 0 ] && ok "41 documents ($dt + $dv)" || bad "documents: $(cat "$T/sum.txt")"
grep -q '"token_bytes":[[:space:]]*4' "$T/ds/manifest.json" && ok "token_bytes 4" || bad "token_bytes"
# the same seed gives byte-identical shards
"$BIN" data prepare --quiet --tokenizer $TOK --out "$T/ds2" --val-fraction 0.1 --seed 7 \
  ../shared/corpora/c4-samples/*.gz ../shared/corpora/tinyshakespeare/input.txt >/dev/null 2>&1
cmp -s "$T/ds/train-00000.xds" "$T/ds2/train-00000.xds" && cmp -s "$T/ds/val-00000.xds" "$T/ds2/val-00000.xds" \
  && ok "deterministic" || bad "deterministic"
# progress line on stderr
"$BIN" data prepare --force --tokenizer $TOK --out "$T/ds2" ../shared/corpora/c4-samples/c4-sample.01.json.gz >/dev/null 2>"$T/err.txt"
grep -q "MB read, .* MB/s, .* tokens" "$T/err.txt" && ok "progress" || bad "progress: $(cat "$T/err.txt")"
expect_error "existing dataset" "--force" "$BIN" data prepare --tokenizer $TOK --out "$T/ds2" ../shared/corpora/c4-samples/c4-sample.01.json.gz

# chat documents keep the template's loss mask
printf '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]}\n' | gzip >"$T/chat.jsonl.gz"
"$BIN" data prepare --quiet --tokenizer $TOK --out "$T/chat" --val-fraction 0 "$T/chat.jsonl.gz" >/dev/null 2>"$T/err.txt" \
  && "$BIN" data info "$T/chat" | grep -q "train: .* with loss mask" && ok "chat with mask" || bad "chat: $(cat "$T/err.txt")"

# a run killed midway leaves no manifest: the directory is not presented as a dataset, and a
# new run (no --force needed) completes it
for i in 1 2 3 4 5 6 7 8; do cat ../shared/corpora/tinyshakespeare/input.txt; done >"$T/big.txt"
"$BIN" data prepare --quiet --threads 1 --shard-tokens 20000 --tokenizer $TOK --out "$T/killed" "$T/big.txt" >/dev/null 2>&1 &
pid=$!
for _ in $(seq 500); do ls "$T/killed" 2>/dev/null | grep -q '\.xds$' && break; sleep 0.02; done
if kill -9 $pid 2>/dev/null; then # killed while writing its ~120 shards
  wait $pid 2>/dev/null
  [ ! -e "$T/killed/manifest.json" ] && ok "killed run: no manifest" || bad "killed run left a manifest"
  expect_error "killed run: info refuses" "manifest.json" "$BIN" data info "$T/killed"
else
  wait $pid 2>/dev/null; rm -f "$T/killed/manifest.json"; echo "skip killed run: it finished before the kill"
fi
"$BIN" data prepare --quiet --tokenizer $TOK --out "$T/killed" "$T/big.txt" >/dev/null 2>&1 && "$BIN" data info "$T/killed" >/dev/null \
  && ok "rerun after kill" || bad "rerun after kill"

# bad inputs
printf '{"text": "one"}\n{"text": "two"}\n{"text": oops}\n' >"$T/bad.jsonl"
expect_error "bad json line" "bad.jsonl:3:" "$BIN" data prepare --quiet --tokenizer $TOK --out "$T/o1" --shard-tokens 1000 ../shared/corpora/c4-samples/c4-sample.01.json.gz "$T/bad.jsonl"
no_output "$T/o1" "bad json"
expect_error "missing input" "nope.jsonl: cannot open" "$BIN" data prepare --tokenizer $TOK --out "$T/o2" "$T/nope.jsonl"
no_output "$T/o2" "missing input"
: >"$T/empty.txt"
expect_error "empty dataset" "no documents" "$BIN" data prepare --tokenizer $TOK --out "$T/o3" "$T/empty.txt"
no_output "$T/o3" "empty dataset"
expect_error "bad tokenizer" "" "$BIN" data prepare --tokenizer "$T/none" --out "$T/o4" "$T/bad.jsonl"
expect_error "bad fraction" "val-fraction" "$BIN" data prepare --tokenizer $TOK --out "$T/o5" --val-fraction 1.5 "$T/bad.jsonl"
expect_error "no inputs" "no input" "$BIN" data prepare --tokenizer $TOK --out "$T/o6"
expect_error "unknown option" "--bogus" "$BIN" data prepare --bogus
expect_error "unknown subcommand" "frobnicate" "$BIN" data frobnicate
expect_error "info on unfinished dir" "manifest.json" "$BIN" data info "$T/o1"
# a corrupted shard is caught by info
cp -r "$T/ds" "$T/dsbad"
printf '\x55' | dd of="$T/dsbad/train-00000.xds" bs=1 seek=5000 conv=notrunc 2>/dev/null
expect_error "corrupt shard" "train-00000.xds: checksum mismatch" "$BIN" data info "$T/dsbad"
exit $fail
