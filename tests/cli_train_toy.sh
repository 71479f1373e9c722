#!/usr/bin/env bash
# `xdistill train-toy` from the shell: --help lists every configuration key, a YAML config plus
# flags runs and saves the effective config, bad input gives one error line and exit 1.
set -u
bin=${XD_BIN:?XD_BIN must point to the xdistill binary}
tmp=$(mktemp -d /tmp/xdistill-cli-train.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() { if ! eval "$2"; then echo "FAIL: $1"; fail=1; else echo "ok: $1"; fi; }

"$bin" train-toy --help > "$tmp/help" 2>&1; rc=$?
check "help exits 0" "[ $rc -eq 0 ]"
for k in seed steps out_dir resume resume_force batch micro_batch seq_len lr lr_min schedule warmup_steps weight_decay \
         beta1 beta2 adam_eps grad_clip max_skips ckpt_every ckpt_keep log_every kd_gamma kd_beta kd_topk kd_temperature; do
  grep -q -- "--$k " "$tmp/help" || { echo "FAIL: --help lacks --$k"; fail=1; }
done

cat > "$tmp/run.yaml" <<YAML
steps: 20
batch: 8
micro_batch: 4
lr: 0.5
warmup_steps: 2
log_every: 5
YAML
"$bin" train-toy --config "$tmp/run.yaml" --lr 0.002 --out_dir "$tmp/run" > "$tmp/out" 2> "$tmp/err"; rc=$?
check "yaml + flags run exits 0" "[ $rc -eq 0 ]"
check "stdout reports 20 steps" "grep -q 'done: 20 steps' '$tmp/out'"
check "progress line every 5 steps" "[ \$(grep -c '^step [0-9]*/20 | loss' '$tmp/err') -eq 4 ]"
check "flag beats file in config.json" "grep -q '\"lr\":[[:space:]]*0.002' '$tmp/run/config.json'"
check "file beats default in config.json" "grep -q '\"batch\":[[:space:]]*8' '$tmp/run/config.json'"
check "20 metric lines" "[ \$(wc -l < '$tmp/run/metrics.jsonl') -eq 20 ]"

"$bin" train-toy --out_dir "$tmp/run" --steps 20 > /dev/null 2> "$tmp/err"; rc=$?
check "fresh run into a used out_dir is refused" "[ $rc -eq 1 ] && grep -q 'already holds checkpoints' '$tmp/err'"

"$bin" train-toy --bogus 1 2> "$tmp/err"; rc=$?
check "unknown flag: exit 1, one error line" "[ $rc -eq 1 ] && [ \$(wc -l < '$tmp/err') -eq 1 ] && grep -q \"^xdistill: error: command line: unknown option '--bogus'\" '$tmp/err'"
printf 'lr: 0.1\nlearning_rate: 3\n' > "$tmp/bad.yaml"
"$bin" train-toy --config "$tmp/bad.yaml" 2> "$tmp/err"; rc=$?
check "unknown key in file names key and file" "[ $rc -eq 1 ] && grep -q \"bad.yaml: unknown key 'learning_rate'\" '$tmp/err'"
"$bin" train-toy --config "$tmp/missing.json" 2> "$tmp/err"; rc=$?
check "missing config file" "[ $rc -eq 1 ] && grep -q 'missing.json: cannot open' '$tmp/err'"
exit $fail
