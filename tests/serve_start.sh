# Sourced by tests/cli_serve.sh and tests/gpu/cli_serve_cuda.sh (not a test itself).
# serve_setup NAME: TMP, a fresh folder /tmp/xdistill-NAME.XXXXXX, and PIDS, the servers started;
# on exit the servers are killed and TMP removed.
serve_setup() {
  TMP=$(mktemp -d "/tmp/xdistill-$1.XXXXXX")
  PIDS=()
  trap 'for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done; rm -rf "$TMP"' EXIT
}

# serve_start NAME ARGS...: `$BIN serve --port 0 ARGS...` in the background, its stderr in
# $TMP/NAME.log; waits (up to 30 s: a GPU model loads slowly) for the line naming its address and
# sets PORT and LAST_PID (also appended to PIDS, which the caller's trap kills). Calls the
# caller's bad() and returns 1 when the server exits or never says where it listens.
serve_start() {
  local name=$1; shift
  "$BIN" serve --port 0 "$@" 2>"$TMP/$name.log" &
  LAST_PID=$!
  PIDS+=($LAST_PID)
  PORT=
  for _ in $(seq 1 600); do
    PORT=$(grep -o 'at http://127.0.0.1:[0-9]*' "$TMP/$name.log" 2>/dev/null | sed 's/.*://')
    [ -n "$PORT" ] && return 0
    kill -0 $LAST_PID 2>/dev/null || break
    sleep 0.05
  done
  bad "$name: server did not start: $(cat "$TMP/$name.log")"
  return 1
}
