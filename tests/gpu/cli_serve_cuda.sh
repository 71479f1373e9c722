#!/usr/bin/env bash
# `serve --device cuda` on the fixture teacher and a student made from it (python3 as the client:
# the GPU machine has it, not necessarily curl or jq):
#  - twelve requests at once on four slots (greedy, seeded sampling, stop strings, streaming)
#    give the same text as the same requests sent one after another: a slot's output does not
#    depend on what else runs (the batched step's rows are independent);
#  - greedy answers equal the CPU server's (bf16 vs fp32: equal on these fixtures; a mismatch
#    is reported with both texts);
#  - usage counts, /metrics, SIGTERM exit 0.
# Usage (repo root, GPU machine): XD_BIN=path/to/xdistill bash tests/gpu/cli_serve_cuda.sh
set -u
export LC_ALL=C OMP_NUM_THREADS=1
BIN=${XD_BIN:-build/xdistill}
FIX=tests/fixtures/teachers/llama-gqa/fp32
TOKF=tests/fixtures/tokenizer_bytes/tokenizer.json
source tests/serve_start.sh # serve_setup, serve_start NAME ARGS...: sets PORT, LAST_PID
serve_setup serve-cuda
fail=0
ok() { echo "[ ok ] $1"; }
bad() { echo "[FAIL] $1"; fail=1; }

mkdir -p "$TMP/teacher"
cp "$FIX"/* "$TMP/teacher/" && cp "$TOKF" "$TMP/teacher/"
"$BIN" init --teacher "$TMP/teacher" --out "$TMP/student" --window 4 --sinks 2 --chunk 5 >/dev/null 2>&1 || bad "init student"


# client PORT MODE OUT: the twelve requests, MODE "together" (threads) or "alone" (one by one);
# writes one JSON line per request: text, finish, tokens
client() {
  python3 - "$1" "$2" "$3" <<'PY'
import json, sys, threading, urllib.request
port, mode, out = sys.argv[1], sys.argv[2], sys.argv[3]
prompts = ["Once upon a time", "The quick brown fox", "ab", "Hello", "x", "Zebras and lions", "In the beginning",
           "Q", "Seven swans", "Once upon a time", "Tell me", "zzz"]
def body(i):
    b = {"prompt": prompts[i], "max_tokens": 12 + 3 * i, "temperature": 0 if i % 3 == 0 else 0.9, "seed": 100 + i}
    if i % 4 == 1: b["stop"] = ["e", "o"]
    if i % 2 == 0: b["ignore_eos"] = True
    b["stream"] = i % 5 == 2
    return b
res = [None] * len(prompts)
def run(i):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=json.dumps(body(i)).encode())
    with urllib.request.urlopen(req, timeout=120) as r:
        if not body(i)["stream"]:
            o = json.loads(r.read())
            res[i] = {"text": o["choices"][0]["text"], "finish": o["choices"][0]["finish_reason"], "tokens": o["usage"]["completion_tokens"]}
        else:
            text, fin, tok = "", None, None
            for line in r:
                line = line.strip()
                if line.startswith(b"data: ") and line != b"data: [DONE]":
                    c = json.loads(line[6:])
                    text += c["choices"][0]["text"]
                    fin = c["choices"][0]["finish_reason"] or fin
                    tok = c.get("usage", {}).get("completion_tokens", tok)
            res[i] = {"text": text, "finish": fin, "tokens": tok}
if mode == "together":
    ts = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    [t.start() for t in ts]; [t.join() for t in ts]
else:
    for i in range(len(prompts)): run(i)
with open(out, "w") as f:
    for r in res: f.write(json.dumps(r) + "\n")
PY
}

# lp_fetch PORT OUT: a greedy completion with logprobs 3 (the response JSON)
lp_fetch() {
  python3 -c "import urllib.request,sys; open(sys.argv[2],'wb').write(urllib.request.urlopen(urllib.request.Request('http://127.0.0.1:'+sys.argv[1]+'/v1/completions', data=b'{\"prompt\":\"Once upon a time\",\"max_tokens\":16,\"temperature\":0,\"ignore_eos\":true,\"logprobs\":3}')).read())" "$1" "$2"
}

for m in student teacher; do
  serve_start "$m" --model "$TMP/$m" --device cuda --slots 4 --ctx 128 || continue
  P=$PORT
  client $P together "$TMP/$m.together" && client $P alone "$TMP/$m.alone" || bad "$m: client failed"
  if cmp -s "$TMP/$m.together" "$TMP/$m.alone"; then ok "$m (cuda): 12 requests at once on 4 slots == one by one"
  else bad "$m (cuda): together differs from one by one"; diff "$TMP/$m.together" "$TMP/$m.alone" | head -6; fi
  python3 - "$TMP/$m.alone" <<'PY' && ok "$m (cuda): finish reasons and token counts" || bad "$m (cuda): finish/usage"
import json, sys
rs = [json.loads(l) for l in open(sys.argv[1])]
ok = all(r["finish"] in ("stop", "length") and r["tokens"] is not None and r["tokens"] <= 12 + 3 * i for i, r in enumerate(rs))
ok &= all(r["finish"] == "length" and r["tokens"] == 12 + 3 * i for i, r in enumerate(rs) if i % 2 == 0 and i % 4 != 1)
sys.exit(0 if ok else 1)
PY
  python3 -c "import urllib.request,sys; t=urllib.request.urlopen('http://127.0.0.1:$P/metrics').read().decode(); sys.exit(0 if 'xdistill_requests_finished_total 24' in t else 1)" \
    && ok "$m (cuda): /metrics" || bad "$m (cuda): /metrics"
  lp_fetch $P "$TMP/$m.lp" || bad "$m (cuda): logprobs request"
  kill -TERM $LAST_PID; wait $LAST_PID && ok "$m (cuda): SIGTERM exit 0" || bad "$m (cuda): SIGTERM"
  # the CPU server's greedy answers (requests 0, 3, 6, 9: temperature 0)
  serve_start "$m-cpu" --model "$TMP/$m" --slots 4 --ctx 128 || continue
  client $PORT alone "$TMP/$m.cpu"
  lp_fetch $PORT "$TMP/$m.cpu.lp"
  kill -TERM $LAST_PID; wait $LAST_PID
  # log-probabilities on the device (top-k kernel) against the CPU's (double log-softmax):
  # the same tokens, values within bf16's reach (5e-2)
  python3 - "$TMP/$m.lp" "$TMP/$m.cpu.lp" <<'PY' && ok "$m: GPU logprobs == CPU's (within 5e-2)" || bad "$m: GPU logprobs differ from the CPU's"
import json, sys
g, c = (json.load(open(p))["choices"][0]["logprobs"] for p in sys.argv[1:3])
d = max(abs(a - b) for a, b in zip(g["token_logprobs"], c["token_logprobs"]))
print(f"  max |GPU - CPU| token logprob {d:.2e} over {len(g['tokens'])} tokens")
sys.exit(0 if g["tokens"] == c["tokens"] and len(g["tokens"]) == 16 and d < 5e-2 else 1)
PY
  python3 - "$TMP/$m.alone" "$TMP/$m.cpu" <<'PY' && ok "$m: greedy GPU answers == CPU" || bad "$m: greedy GPU answers differ from the CPU's"
import json, sys
g, c = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
bad = [i for i in (0, 3, 6, 9) if g[i] != c[i]]
for i in bad: print(f"  request {i}: gpu {g[i]!r} cpu {c[i]!r}")
sys.exit(1 if bad else 0)
PY
done
# a dynamic-NTK teacher cannot decode rows at different lengths: refused at start, one line
mkdir -p "$TMP/dyn" && cp tests/fixtures/teachers/llama-dynamic/fp32/* "$TOKF" "$TMP/dyn/"
"$BIN" serve --model "$TMP/dyn" --device cuda --port 0 >/dev/null 2>"$TMP/dyn.err"; rc=$?
[ $rc -eq 1 ] && grep -q "^xdistill: error: .*dynamic NTK" "$TMP/dyn.err" && [ "$(grep -c "error" "$TMP/dyn.err")" -eq 1 ] \
  && ok "dynamic-NTK teacher refused at start" || bad "dynamic-NTK teacher: rc $rc, $(cat "$TMP/dyn.err")"
exit $fail
