#!/usr/bin/env bash
# `xdistill serve` over HTTP (curl, jq), on a fixture teacher and a student made from it, with the
# byte-level tokenizer: the OpenAI endpoints' answers equal `xdistill generate` with the same
# options (greedy, seeded sampling, stop strings, chat), several requests at once and more of
# them than slots; streaming (server-sent events) gives the same text; /health, /v1/models,
# /metrics; errors (400, 401, 404, 405, 413) as JSON; SIGTERM stops it with exit 0; bad command
# lines give one line "xdistill: error: ..." with exit 1.
set -u
export LC_ALL=C OMP_NUM_THREADS=1
BIN=${XD_BIN:-build/xdistill}
FIX=tests/fixtures/teachers/llama-gqa/fp32
TOKF=tests/fixtures/tokenizer_bytes/tokenizer.json
if [ ! -d "$FIX" ] || [ ! -f "$TOKF" ]; then echo "[skip] $FIX or $TOKF absent"; exit 0; fi
for t in curl jq; do
  command -v $t >/dev/null || { echo "[skip] $t not installed (scripts/install-deps.sh installs it)"; exit 0; }
done
source tests/serve_start.sh # serve_setup, serve_start NAME ARGS...: sets PORT, LAST_PID
serve_setup cli-serve
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

mkdir -p "$TMP/teacher"
cp "$FIX"/* "$TMP/teacher/" && cp "$TOKF" "$TMP/teacher/"
"$BIN" init --teacher "$TMP/teacher" --out "$TMP/student" --window 4 --sinks 2 --chunk 5 >/dev/null 2>&1 || bad "init student"


# text of a completion (JSON body $2) from server port $1, NUL bytes dropped (a random model may emit byte 0)
complete() { curl -s "http://127.0.0.1:$1/v1/completions" -d "$2" | jq -j '.choices[0].text' | tr -d '\000'; }
gen() { "$BIN" generate "$@" 2>/dev/null | tr -d '\000' | head -c -1; } # generate ends with a newline
code() { curl -s -o "$TMP/body" -w '%{http_code}' "$@"; } # the HTTP status; the body in $TMP/body

serve_start student --model "$TMP/student" --slots 3 --metrics "$TMP/requests.jsonl" && SP=$PORT
curl -s "http://127.0.0.1:$SP/health" | jq -e '.status == "ok"' >/dev/null && ok "/health" || bad "/health"
curl -s "http://127.0.0.1:$SP/v1/models" | jq -e --arg m "$TMP/student" '.data[0].id == $m and .data[0].max_model_len == 64' >/dev/null \
  && ok "/v1/models" || bad "/v1/models: $(curl -s "http://127.0.0.1:$SP/v1/models")"

# greedy: the same text as generate; usage and finish_reason
a=$(complete $SP '{"prompt":"Once upon a time","max_tokens":24,"temperature":0,"ignore_eos":true}')
b=$(gen --model "$TMP/student" --prompt "Once upon a time" --max-new 24 --ignore-eos)
[ -n "$a" ] && [ "$a" == "$b" ] && ok "greedy completion == generate" || bad "greedy completion: '$a' vs '$b'"
curl -s "http://127.0.0.1:$SP/v1/completions" -d '{"prompt":"Once upon a time","max_tokens":24,"temperature":0,"ignore_eos":true}' \
  | jq -e '.object == "text_completion" and .choices[0].finish_reason == "length" and .usage.completion_tokens == 24 and .usage.prompt_tokens == 16' >/dev/null \
  && ok "completion usage and finish_reason" || bad "completion usage"
# prompt as token ids: the same as its text ('Hi' is ids 72 105: bytes, no BOS)
a=$(complete $SP '{"prompt":[72,105],"max_tokens":10,"temperature":0,"ignore_eos":true}')
b=$(complete $SP '{"prompt":"Hi","max_tokens":10,"temperature":0,"ignore_eos":true}')
[ -n "$a" ] && [ "$a" == "$b" ] && ok "prompt as token ids" || bad "prompt as ids: '$a' vs '$b'"

# log-probabilities: one per generated token with its top alternatives; greedy picks the best
# (byte tokens >= 0x80 all read "\ufffd": their keys collide in top_logprobs, so >= what is shown)
curl -s "http://127.0.0.1:$SP/v1/completions" -d '{"prompt":"Once upon a time","max_tokens":12,"temperature":0,"ignore_eos":true,"logprobs":3}' >"$TMP/lp"
jq -e '.choices[0].logprobs as $l | .usage.completion_tokens as $n | ($l.token_logprobs | length) == $n and ($l.tokens | length) == $n
  and ($l.text_offset | length) == $n and all($l.top_logprobs[]; length >= 1 and length <= 3)
  and ([range($n)] | all(. as $i | $l.token_logprobs[$i] <= 0 and $l.token_logprobs[$i] >= ($l.top_logprobs[$i] | [.[]] | max)))' "$TMP/lp" >/dev/null \
  && ok "completion logprobs (greedy = the top alternative)" || bad "completion logprobs: $(head -c 400 "$TMP/lp")"
[ "$(code "http://127.0.0.1:$SP/v1/completions" -d '{"prompt":"x","logprobs":2,"stream":true}')" == 400 ] && ok "400 logprobs with stream" || bad "logprobs with stream"

# eight requests at once on three slots: greedy, seeded sampling, stop strings, each == generate
declare -a ARGS BODIES
ARGS[0]='--prompt|Once upon a time|--max-new|20|--ignore-eos'
BODIES[0]='{"prompt":"Once upon a time","max_tokens":20,"temperature":0,"ignore_eos":true}'
ARGS[1]='--prompt|The quick brown fox|--max-new|24|--temperature|1.3|--top-k|50|--top-p|0.9|--seed|7'
BODIES[1]='{"prompt":"The quick brown fox","max_tokens":24,"temperature":1.3,"top_k":50,"top_p":0.9,"seed":7}'
ARGS[2]='--prompt|ab|--max-new|30|--temperature|0.8|--seed|8|--ignore-eos'
BODIES[2]='{"prompt":"ab","max_tokens":30,"temperature":0.8,"seed":8,"ignore_eos":true}'
ARGS[3]='--prompt|Hello|--max-new|25|--temperature|1|--seed|9|--stop|e'
BODIES[3]='{"prompt":"Hello","max_tokens":25,"temperature":1,"seed":9,"stop":"e"}'
ARGS[4]='--prompt|x|--max-new|12|--ignore-eos'
BODIES[4]='{"prompt":"x","max_tokens":12,"temperature":0,"ignore_eos":true}'
ARGS[5]='--prompt|Zebras and lions|--max-new|18|--temperature|1.5|--top-k|100|--top-p|0.95|--seed|10|--ignore-eos'
BODIES[5]='{"prompt":"Zebras and lions","max_tokens":18,"temperature":1.5,"top_k":100,"top_p":0.95,"seed":10,"ignore_eos":true}'
ARGS[6]='--prompt|Once upon a time|--max-new|20|--ignore-eos'
BODIES[6]='{"prompt":"Once upon a time","max_tokens":20,"temperature":0,"ignore_eos":true}'
ARGS[7]='--prompt|Zz|--max-new|16|--temperature|0.9|--seed|11|--stop|a|--stop|q'
BODIES[7]='{"prompt":"Zz","max_tokens":16,"temperature":0.9,"seed":11,"stop":["a","q"]}'
for i in 0 1 2 3 4 5 6 7; do complete $SP "${BODIES[$i]}" >"$TMP/c$i" & done
wait_clients() { for _ in $(seq 1 600); do [ "$(jobs -rp | wc -l)" -le "$1" ] && return; sleep 0.05; done; }
wait_clients ${#PIDS[@]}
same=0
for i in 0 1 2 3 4 5 6 7; do
  IFS='|' read -r -a argv <<<"${ARGS[$i]}"
  want=$(gen --model "$TMP/student" "${argv[@]}")
  if [ "$(cat "$TMP/c$i")" == "$want" ]; then same=$((same + 1)); else echo "  request $i: '$(cat "$TMP/c$i")' vs '$want'"; fi
done
[ $same -eq 8 ] && ok "8 concurrent requests on 3 slots == generate" || bad "concurrent requests: $same of 8 equal"

# streaming: the deltas joined == the whole answer; a final chunk with finish_reason, then [DONE]
body='{"prompt":"Once upon a time","max_tokens":20,"temperature":0,"ignore_eos":true,"stream":true}'
curl -s -N "http://127.0.0.1:$SP/v1/completions" -d "$body" >"$TMP/sse"
s=$(sed -n 's/^data: //p' "$TMP/sse" | grep -v '^\[DONE\]$' | jq -j '.choices[0].text' | tr -d '\000')
[ "$s" == "$(cat "$TMP/c0")" ] && [ "$(sed -n 's/^data: //p' "$TMP/sse" | tail -1)" == "[DONE]" ] \
  && sed -n 's/^data: //p' "$TMP/sse" | grep -v DONE | tail -1 | jq -e '.choices[0].finish_reason == "length" and .usage.completion_tokens == 20' >/dev/null \
  && ok "streamed completion" || bad "streamed: '$s' vs '$(cat "$TMP/c0")'"

# metrics count what was served
curl -s "http://127.0.0.1:$SP/metrics" >"$TMP/metrics"
grep -q '^xdistill_slots 3$' "$TMP/metrics" && grep -q '^xdistill_requests_finished_total 1[0-9]$' "$TMP/metrics" \
  && ok "/metrics" || bad "/metrics: $(cat "$TMP/metrics")"

# errors: JSON bodies with the right status
[ "$(code "http://127.0.0.1:$SP/v1/completions" -d '{"prompt":')" == 400 ] && jq -e '.error.message | test("not a JSON object")' "$TMP/body" >/dev/null \
  && ok "400 bad JSON" || bad "400 bad JSON: $(cat "$TMP/body")"
[ "$(code "http://127.0.0.1:$SP/v1/completions" -d '{"prompt":"x","n":3}')" == 400 ] && jq -e '.error.message | test("n. must be 1")' "$TMP/body" >/dev/null \
  && ok "400 unsupported field" || bad "400 n: $(cat "$TMP/body")"
[ "$(code "http://127.0.0.1:$SP/v1/completions" -d '{"prompt":[1,999]}')" == 400 ] && jq -e '.error.message | test("999")' "$TMP/body" >/dev/null \
  && ok "400 token id out of range" || bad "400 ids: $(cat "$TMP/body")"
long=$(printf 'y%.0s' $(seq 1 80))
[ "$(code "http://127.0.0.1:$SP/v1/completions" -d "{\"prompt\":\"$long\"}")" == 400 ] && jq -e '.error.message | test("context is 64")' "$TMP/body" >/dev/null \
  && ok "400 prompt beyond the context" || bad "400 long prompt: $(cat "$TMP/body")"
[ "$(code "http://127.0.0.1:$SP/v1/nothing")" == 404 ] && jq -e '.error.type == "not_found_error"' "$TMP/body" >/dev/null && ok "404" || bad "404"
[ "$(code "http://127.0.0.1:$SP/v1/completions")" == 405 ] && ok "405 (GET on a POST endpoint)" || bad "405"
[ "$(code "http://127.0.0.1:$SP/v1/chat/completions" -d '{"messages":[{"role":"user","content":"hi"}]}')" == 400 ] \
  && jq -e '.error.message | test("chat template")' "$TMP/body" >/dev/null && ok "400 chat without a template" || bad "chat without template: $(cat "$TMP/body")"

kill -TERM $LAST_PID
for _ in $(seq 1 100); do kill -0 $LAST_PID 2>/dev/null || break; sleep 0.05; done
wait $LAST_PID; rc=$?
[ $rc -eq 0 ] && grep -Eq "serve: stopped \(SIGTERM\): [0-9]+ requests" "$TMP/student.log" && ok "SIGTERM: exit 0" \
  || bad "SIGTERM: rc $rc, $(tail -2 "$TMP/student.log")"
# --metrics: one JSON line per finished request, as many as the server counted
n=$(grep -o 'stopped (SIGTERM): [0-9]*' "$TMP/student.log" | grep -o '[0-9]*$')
[ -n "$n" ] && [ "$(wc -l <"$TMP/requests.jsonl")" -eq "$n" ] \
  && jq -e -s 'all(.[]; (.request | type) == "number" and .completion_tokens >= 0 and .seconds >= .first_token_s and (.finish == "stop" or .finish == "length"))' "$TMP/requests.jsonl" >/dev/null \
  && jq -e -s 'map(select(.completion_tokens == 24 and .finish == "length")) | length >= 2' "$TMP/requests.jsonl" >/dev/null \
  && ok "--metrics: $n JSON lines" || bad "--metrics: $(head -3 "$TMP/requests.jsonl")"

# the teacher with a chat format (chatml's markup in bytes: a context beyond the fixture's 64), an API
# key and a small body limit
serve_start teacher --model "$TMP/teacher" --ctx 256 --chat-format chatml --api-key sekret --max-body 1024 --name tiny && TP=$PORT
H=(-H "Authorization: Bearer sekret")
[ "$(code "http://127.0.0.1:$TP/v1/models")" == 401 ] && [ "$(code "http://127.0.0.1:$TP/health")" == 200 ] \
  && [ "$(code "${H[@]}" "http://127.0.0.1:$TP/v1/models")" == 200 ] && jq -e '.data[0].id == "tiny"' "$TMP/body" >/dev/null \
  && ok "API key (health open)" || bad "API key"
chat='{"messages":[{"role":"system","content":"Be brief"},{"role":"user","content":"hi"}],"max_tokens":8,"temperature":0,"ignore_eos":true}'
a=$(curl -s "${H[@]}" "http://127.0.0.1:$TP/v1/chat/completions" -d "$chat" | tee "$TMP/chat" | jq -j '.choices[0].message.content' | tr -d '\000')
b=$(gen --model "$TMP/teacher" --prompt hi --chat --chat-format chatml --system "Be brief" --max-new 8 --ignore-eos)
[ -n "$a" ] && [ "$a" == "$b" ] && jq -e '.object == "chat.completion" and .model == "tiny" and .choices[0].message.role == "assistant"' "$TMP/chat" >/dev/null \
  && ok "chat completion == generate --chat" || bad "chat: '$a' vs '$b'"
curl -s "${H[@]}" "http://127.0.0.1:$TP/v1/chat/completions" -d "${chat%\}},\"logprobs\":true,\"top_logprobs\":2}" >"$TMP/clp"
jq -e '.choices[0].logprobs.content as $c | ($c | length) == .usage.completion_tokens
  and all($c[]; (.top_logprobs | length) == 2 and (.bytes | type) == "array" and .logprob <= 0)' "$TMP/clp" >/dev/null \
  && ok "chat logprobs" || bad "chat logprobs: $(head -c 300 "$TMP/clp")"
curl -s -N "${H[@]}" "http://127.0.0.1:$TP/v1/chat/completions" -d "${chat%\}},\"stream\":true}" >"$TMP/sse"
s=$(sed -n 's/^data: //p' "$TMP/sse" | grep -v '^\[DONE\]$' | jq -j '.choices[0].delta.content // ""' | tr -d '\000')
sed -n 's/^data: //p' "$TMP/sse" | head -1 | jq -e '.choices[0].delta.role == "assistant"' >/dev/null && [ "$s" == "$a" ] \
  && ok "streamed chat" || bad "streamed chat: '$s' vs '$a'"
big=$(printf 'z%.0s' $(seq 1 2000))
[ "$(code "${H[@]}" "http://127.0.0.1:$TP/v1/completions" -d "{\"prompt\":\"$big\"}")" == 413 ] && ok "413 body too large" || bad "413"
expect_error "port in use" "cannot listen" "$BIN" serve --model "$TMP/teacher" --port "$TP"
kill -INT $LAST_PID; wait $LAST_PID && ok "SIGINT: exit 0" || bad "SIGINT"

# a streaming client that hangs up: its job is cancelled and its slot freed; the server goes on
serve_start long --model "$TMP/student" --slots 1 --ctx 10000000 && LP=$PORT && {
  curl -s -N --max-time 0.5 "http://127.0.0.1:$LP/v1/completions" \
    -d '{"prompt":"x","max_tokens":9000000,"ignore_eos":true,"stream":true}' >"$TMP/cut" 2>/dev/null
  for _ in $(seq 1 100); do grep -q "cancelled" "$TMP/long.log" && break; sleep 0.05; done
  curl -s "http://127.0.0.1:$LP/metrics" | grep -q '^xdistill_requests_running 0$' && grep -q "request 1: .* cancelled" "$TMP/long.log" \
    && [ -s "$TMP/cut" ] && [ "$(complete $LP '{"prompt":"x","max_tokens":3,"temperature":0}' | wc -c)" -gt 0 ] \
    && ok "a client that hangs up mid-stream: its job cancelled, the slot serves the next" \
    || bad "hang-up: $(tail -2 "$TMP/long.log")"
  kill -TERM $LAST_PID; wait $LAST_PID
}

if "$BIN" serve --help | grep -q "usage: xdistill serve"; then ok "serve --help"; else bad "serve --help"; fi
expect_error "no --model" "--model is required" "$BIN" serve
expect_error "no tokenizer" "no tokenizer.json" "$BIN" serve --model "$FIX"
expect_error "bad host" "not an IPv4 address" "$BIN" serve --model "$TMP/teacher" --host nowhere
expect_error "bad port" "--port" "$BIN" serve --model "$TMP/teacher" --port 70000
expect_error "bad chat format" "" "$BIN" serve --model "$TMP/teacher" --chat-format nope
expect_error "bad --metrics" "cannot open" "$BIN" serve --model "$TMP/teacher" --metrics /nonexistent/dir/m.jsonl
exit $fail
