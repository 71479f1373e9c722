#!/usr/bin/env bash
# GPU check + benchmark, ONE script for one call on a machine with an NVIDIA GPU, run from the
# repo root:
#   1. configure (-DXD_CUDA=ON) and build every tests/gpu/test_gpu_*.c program +
#      bench_gpu_teacher into build-gpu/; where that machine lacks the CPU dependencies
#      (OpenBLAS, cJSON, ...), set XD_GPU_PREBUILT=<dir> holding those binaries built elsewhere
#      with the same CUDA version and lib/ with the shared libraries they need (lib/*.gz are
#      unpacked first; tools/gpu_stage.sh makes it);
#   2. each test program: CUDA ops against their CPU twins (exit 0 = all bounds held), then each
#      tests/gpu/cli_*.sh (the CLI's --device cuda paths against --device cpu, through the
#      xdistill binary), output appended to $OUT/test.txt;
#   3. compute-sanitizer --tool memcheck on each, given the argument "quick" (programs that
#      time big shapes skip that part), appended to $OUT/memcheck.txt, when the tool is present;
#   4. bench_gpu_teacher (Llama-3.2-1B shape, T = XD_BENCH_T, default 4096), then the PyTorch
#      reference tools/bench_reference.py, bench_gpu_student (student prefill vs teacher at
#      4K-64K, decode latency and its bandwidth bound), bench_gpu_throughput (generation tokens/s
#      over a batch, student vs teacher at 1K-64K within 80 GiB), bench_gpu_train (stage I / II steps at the
#      1B shape: tokens/s, MFU, per-op profile; stage II also with gradient accumulation over 8
#      micro-batches) and the PyTorch stage II reference (tools/student_reference.py bench --only
#      stage2; the same three measures), then bench_gpu_teacher again.
# XD_GPU_TESTS="test_gpu_a cli_b" runs only those programs and tests/gpu/cli_*.sh scripts; XD_GPU_SKIP_BENCH=1 skips 4.
# Logs go to $OUT (default ./gpu-out). Exit status: non-zero when the build, a test or
# memcheck failed; benchmark failures are reported but do not change it.
set -u -o pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
T=${XD_BENCH_T:-4096}
status=0
echo "== $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$OUT/gpu.txt"

TESTS=${XD_GPU_TESTS:-$(for f in tests/gpu/test_gpu_*.c; do basename "$f" .c; done)}
TESTS=$(for t in $TESTS; do case $t in cli_*) ;; *) echo "$t" ;; esac; done) # the programs (cli_* are scripts)
BIN=""
if cmake -S . -B build-gpu -DXD_CUDA=ON -DCMAKE_BUILD_TYPE=Release >"$OUT/build.log" 2>&1 &&
   cmake --build build-gpu -j"$(nproc)" --target $TESTS bench_gpu_teacher bench_gpu_student bench_gpu_throughput bench_gpu_train xdistill >>"$OUT/build.log" 2>&1; then
  BIN=build-gpu
  echo "== built here (build-gpu)"
elif [ -n "${XD_GPU_PREBUILT:-}" ] && { [ -x "$XD_GPU_PREBUILT/test_gpu_ops" ] || [ -e "$XD_GPU_PREBUILT/test_gpu_ops.gz" ]; }; then
  echo "== build here failed ($(grep -m1 -iE 'error|not found' "$OUT/build.log")); using prebuilt $XD_GPU_PREBUILT"
  BIN=$XD_GPU_PREBUILT
  for f in "$BIN"/*.gz; do [ -e "$f" ] && gunzip -f "$f" && chmod +x "${f%.gz}"; done # tools/gpu_stage.sh gzips them
  LIBDIR=/tmp/xd-gpu-lib
  mkdir -p "$LIBDIR"
  cp -f "$BIN"/lib/* "$LIBDIR"/ 2>/dev/null
  for f in "$LIBDIR"/*.gz; do [ -e "$f" ] && gunzip -f "$f"; done
  for f in "$BIN"/lib/fallback/*; do # libmicrohttpd's libraries, where the machine has none
    [ -e "$f" ] && ! ldconfig -p | grep -qF "$(basename "$f")" && cp -f "$f" "$LIBDIR"/
  done
  CUBLAS_DIR=$(dirname "$(find /usr/local /opt /usr/lib -name 'libcublasLt.so.13*' 2>/dev/null | head -1)" 2>/dev/null)
  export LD_LIBRARY_PATH="$LIBDIR:${CUBLAS_DIR:-/usr/local/cuda/lib64}:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
else
  echo "== build failed:"; tail -20 "$OUT/build.log"; exit 1
fi

: >"$OUT/test.txt"
for t in $TESTS; do
  echo "== $t" | tee -a "$OUT/test.txt"
  "$BIN/$t" 2>&1 | tee -a "$OUT/test.txt"
  rc=${PIPESTATUS[0]}
  echo "$t exit $rc" | tee -a "$OUT/test.txt"
  [ "$rc" = 0 ] || status=1
done

# CLI tests of the GPU paths (tests/gpu/cli_*.sh, through the xdistill binary): run when no
# XD_GPU_TESTS list is given or it names them.
for sh in tests/gpu/cli_*.sh; do
  [ -e "$sh" ] || continue
  name=$(basename "$sh" .sh)
  if [ -n "${XD_GPU_TESTS:-}" ] && ! grep -qw "$name" <<<"$XD_GPU_TESTS"; then continue; fi
  echo "== $name" | tee -a "$OUT/test.txt"
  XD_BIN="$BIN/xdistill" bash "$sh" 2>&1 | tee -a "$OUT/test.txt"
  rc=${PIPESTATUS[0]}
  echo "$name exit $rc" | tee -a "$OUT/test.txt"
  [ "$rc" = 0 ] || status=1
done

if command -v compute-sanitizer >/dev/null 2>&1; then
  : >"$OUT/memcheck.txt"
  for t in $TESTS; do
    echo "== compute-sanitizer memcheck $t" | tee -a "$OUT/memcheck.txt"
    timeout 240 compute-sanitizer --tool memcheck --error-exitcode 3 "$BIN/$t" quick >"$OUT/memcheck.tmp" 2>&1
    rc=$?
    cat "$OUT/memcheck.tmp" >>"$OUT/memcheck.txt"
    grep -E 'ERROR SUMMARY|passed,' "$OUT/memcheck.tmp" | tail -3
    echo "memcheck $t exit $rc" | tee -a "$OUT/memcheck.txt"
    [ "$rc" = 0 ] || { status=1; grep -m 20 -E '=========' "$OUT/memcheck.tmp"; }
  done
  rm -f "$OUT/memcheck.tmp"
else
  echo "== compute-sanitizer not found: memcheck skipped"
fi
if [ -n "${XD_GPU_SKIP_BENCH:-}" ]; then
  echo "== benchmarks skipped (XD_GPU_SKIP_BENCH)"
  grep -E 'passed, .* failed' "$OUT/test.txt"
  exit $status
fi

echo "== bench_gpu_teacher T=$T"
"$BIN/bench_gpu_teacher" "$T" 2>&1 | tee "$OUT/bench.txt"
echo "== PyTorch reference"
PYTHONUNBUFFERED=1 timeout 400 python3 tools/bench_reference.py "$T" 2>&1 | grep -v Warning | tee "$OUT/ref.txt"
if [ -x "$BIN/bench_gpu_student" ]; then
  echo "== bench_gpu_student (prefill 4K/16K/64K vs the teacher, decode latency, bandwidth bound)"
  "$BIN/bench_gpu_student" 2>&1 | tee "$OUT/bench_student.txt"
fi
if [ -x "$BIN/bench_gpu_throughput" ]; then
  echo "== bench_gpu_throughput (generation tokens/s over a batch: student vs teacher, 1K-64K, 80 GiB)"
  "$BIN/bench_gpu_throughput" 2>&1 | tee "$OUT/bench_throughput.txt"
fi
if [ -x "$BIN/bench_gpu_train" ]; then
  echo "== bench_gpu_train (stage I / stage II step at the 1B shape, T=$T)"
  XD_BENCH_ACCUM=8 "$BIN/bench_gpu_train" "$T" 2>&1 | tee "$OUT/bench_train.txt"
  echo "== PyTorch stage II reference (eager, compiled, compiled with 8 micro-batches a step; same call)"
  PYTHONUNBUFFERED=1 timeout 420 python3 tools/student_reference.py bench --seq "$T" --only stage2 --reps 5 \
    --stage2-variants eager,compiled,compiled_accum8 2>&1 | grep -v Warning | tee "$OUT/ref_stage2.txt"
fi
echo "== bench_gpu_teacher again"
"$BIN/bench_gpu_teacher" "$T" 2>&1 | grep -E 'teacher forward|RESULT' | tee "$OUT/bench2.txt"
echo "== summary"
grep -h RESULT "$OUT"/bench.txt "$OUT"/ref.txt "$OUT"/bench2.txt "$OUT"/bench_student.txt "$OUT"/bench_throughput.txt 2>/dev/null
grep -h '^XD ' "$OUT"/bench_train.txt 2>/dev/null
grep -h '^REF ' "$OUT"/ref_stage2.txt 2>/dev/null
grep -E 'passed, .* failed' "$OUT/test.txt"
exit $status
