#!/usr/bin/env bash
# CLI of the teacher: inspect / forward / generate on the committed fixtures, --help, and every
# kind of bad input giving exactly one line "xdistill: error: <file>: <problem>" and exit 1.
set -u
BIN=${XD_BIN:-build/xdistill}
FIX=tests/fixtures/teachers
if [ ! -d "$FIX" ]; then echo "[skip] $FIX absent"; exit 0; fi
TMP=$(mktemp -d /tmp/xdistill-cli-teacher.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fail=0
ok() { echo "[ ok ] $1"; }
bad() { echo "[FAIL] $1"; fail=1; }

# expect_error NAME WANT CMD...: exit 1, one stderr line starting "xdistill: error: " containing WANT
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

# write a .npy: npy FILE DESCR SHAPE HEXBYTES (header padded to 128 bytes)
npy() {
  local hdr="{'descr': '$2', 'fortran_order': False, 'shape': $3, }"
  local pad=$((128 - 10 - ${#hdr} - 1))
  { printf '\x93NUMPY\x01\x00'; printf "\\x$(printf %02x $(( (${#hdr} + pad + 1) % 256 )))\\x00"
    printf '%s' "$hdr"; printf "%${pad}s" ''; printf '\n'; printf "$4"; } >"$1"
}

for c in inspect forward generate; do
  if "$BIN" $c --help | grep -q "usage: xdistill $c"; then ok "$c --help"; else bad "$c --help"; fi
done

out=$("$BIN" inspect $FIX/olmo3/fp32) && echo "$out" | grep -q "family         olmo3" && echo "$out" | grep -q "sliding window 4 tokens on 1 of 2 layers" \
  && ok "inspect olmo3" || bad "inspect olmo3: $out"
out=$("$BIN" inspect $FIX/qwen3/bf16 --tensors) && echo "$out" | grep -q "dtype BF16" && echo "$out" | grep -q "self_attn.q_norm.weight" \
  && ok "inspect qwen3 bf16 --tensors" || bad "inspect qwen3 bf16"

# forward: [B,T] int64 ids -> [B,T,V] float32 (header + 2*12*256*4 bytes)
if "$BIN" forward --model $FIX/llama-gqa/fp32 --ids $FIX/llama-gqa/ids.npy --out "$TMP/lg.npy" --threads 2; then
  sz=$(stat -c %s "$TMP/lg.npy")
  [ "$sz" -eq $((128 + 2 * 12 * 256 * 4)) ] && head -c 128 "$TMP/lg.npy" | grep -aq "'shape': (2, 12, 256)" \
    && ok "forward writes [2,12,256] float32" || bad "forward output size $sz"
else bad "forward"; fi
# 1-D int32 ids -> [1,T,V]
npy "$TMP/ids1.npy" '<i4' '(3,)' '\x05\x00\x00\x00\x07\x00\x00\x00\x09\x00\x00\x00'
"$BIN" forward --model $FIX/olmo2/bf16 --ids "$TMP/ids1.npy" --out "$TMP/lg1.npy" && head -c 128 "$TMP/lg1.npy" | grep -aq "'shape': (1, 3, 256)" \
  && ok "forward [T] int32 ids" || bad "forward [T] ids"

# generate: one line per row, max-new ids each
out=$("$BIN" generate --model $FIX/qwen2/fp32 --ids $FIX/qwen2/ids.npy --max-new 5 --ignore-eos)
[ "$(echo "$out" | wc -l)" -eq 2 ] && [ "$(echo "$out" | head -1 | wc -w)" -eq 5 ] && ok "generate 2 rows x 5" || bad "generate: $out"
out=$("$BIN" generate --model $FIX/qwen2/fp32 --ids $FIX/qwen2/ids.npy --max-new 5 --ignore-eos --with-prompt)
[ "$(echo "$out" | head -1 | wc -w)" -eq 17 ] && ok "generate --with-prompt" || bad "generate --with-prompt: $out"

# ---- bad input ----
mkdir -p "$TMP/json" "$TMP/type" "$TMP/missing" "$TMP/shape"
printf '{"model_type": "llama", "hidden_size": 64,' >"$TMP/json/config.json"
expect_error "broken config.json" "$TMP/json/config.json: not valid JSON" "$BIN" forward --model "$TMP/json" --ids $FIX/qwen2/ids.npy --out "$TMP/x.npy"
printf '{"model_type": "gpt2", "hidden_size": 64}' >"$TMP/type/config.json"
expect_error "unknown model_type" "unsupported model_type 'gpt2' (supported: llama, qwen2, qwen3, olmo2, olmo3)" "$BIN" inspect "$TMP/type"
expect_error "missing directory" "/nonexistent/model" "$BIN" generate --model /nonexistent/model --ids $FIX/qwen2/ids.npy --max-new 2
# a safetensors file with one tensor: 8-byte little-endian header length, JSON header, data
st() { local h=$2; { printf "\\x$(printf %02x ${#h})\\x00\\x00\\x00\\x00\\x00\\x00\\x00"; printf '%s' "$h"; printf '\x00\x00\x80\x3f'; } >"$1"; }
cp $FIX/llama-gqa/fp32/config.json "$TMP/missing/"; cp $FIX/llama-gqa/fp32/config.json "$TMP/shape/"
st "$TMP/missing/model.safetensors" '{"model.other.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
expect_error "missing tensor" "$TMP/missing/model.safetensors: missing tensor 'model.embed_tokens.weight'" "$BIN" forward --model "$TMP/missing" --ids $FIX/qwen2/ids.npy --out "$TMP/x.npy"
st "$TMP/shape/model.safetensors" '{"model.embed_tokens.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
expect_error "mis-shaped tensor" "tensor 'model.embed_tokens.weight' has shape [1], expected [256,48]" "$BIN" generate --model "$TMP/shape" --ids $FIX/qwen2/ids.npy --max-new 1
printf 'not an npy file' >"$TMP/garbage.npy"
expect_error "ids not .npy" "$TMP/garbage.npy: not a .npy file" "$BIN" forward --model $FIX/qwen2/fp32 --ids "$TMP/garbage.npy" --out "$TMP/x.npy"
npy "$TMP/oov.npy" '<i4' '(2,)' '\x05\x00\x00\x00\x00\x01\x00\x00'
expect_error "id outside vocab" "$TMP/oov.npy: token id 256 at position 1 is outside the vocabulary [0, 256)" "$BIN" forward --model $FIX/qwen2/fp32 --ids "$TMP/oov.npy" --out "$TMP/x.npy"
npy "$TMP/f32.npy" '<f4' '(1,)' '\x00\x00\x80\x3f'
expect_error "float ids" "$TMP/f32.npy: token ids must be int32 or int64" "$BIN" generate --model $FIX/qwen2/fp32 --ids "$TMP/f32.npy" --max-new 1
npy "$TMP/3d.npy" '<i4' '(1, 1, 1)' '\x05\x00\x00\x00'
expect_error "3-D ids" "token ids must have shape [B,T] or [T]" "$BIN" forward --model $FIX/qwen2/fp32 --ids "$TMP/3d.npy" --out "$TMP/x.npy"
npy "$TMP/short.npy" '<i8' '(4,)' '\x05\x00\x00\x00'
expect_error "truncated ids" "$TMP/short.npy: .npy data is" "$BIN" forward --model $FIX/qwen2/fp32 --ids "$TMP/short.npy" --out "$TMP/x.npy"
expect_error "bad --max-new" "--max-new must be a positive integer" "$BIN" generate --model $FIX/qwen2/fp32 --ids $FIX/qwen2/ids.npy --max-new zero
expect_error "missing --out" "--model, --ids and --out are required" "$BIN" forward --model $FIX/qwen2/fp32 --ids $FIX/qwen2/ids.npy
[ ! -e "$TMP/x.npy" ] && ok "no output written on error" || bad "output written on error"
exit $fail
