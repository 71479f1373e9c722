#!/usr/bin/env bash
# GPU check + benchmark, ONE script for one call on a machine with an NVIDIA GPU, run from the
# repo root:
#   1. configure (-DXD_CUDA=ON) and build test_gpu_ops + bench_gpu_teacher into build-gpu/;
#      where that machine lacks the CPU dependencies (OpenBLAS, cJSON, ...), set
#      XD_GPU_PREBUILT=<dir> holding those two binaries built elsewhere with the same CUDA
#      version and lib/ with the shared libraries they need (lib/*.gz are unpacked first);
#   2. test_gpu_ops: every CUDA op against its CPU twin (exit 0 = all bounds held);
#   3. compute-sanitizer --tool memcheck on test_gpu_ops, when the tool is present; then
#      test_gpu_kd_loss (KD loss kernels + their benchmark) and memcheck on its quick mode;
#   4. bench_gpu_teacher (Llama-3.2-1B shape, T = XD_BENCH_T, default 4096), then the PyTorch
#      reference tools/bench_reference.py, then bench_gpu_teacher again (run-to-run spread).
# Logs go to $OUT (default ./gpu-out). Exit status: non-zero when the build, a test or
# memcheck failed; benchmark failures are reported but do not change it.
set -u -o pipefail
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
T=${XD_BENCH_T:-4096}
status=0
echo "== $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 | tee "$OUT/gpu.txt"

BIN=""
if cmake -S . -B build-gpu -DXD_CUDA=ON -DCMAKE_BUILD_TYPE=Release >"$OUT/build.log" 2>&1 &&
   cmake --build build-gpu -j"$(nproc)" --target test_gpu_ops test_gpu_kd_loss bench_gpu_teacher >>"$OUT/build.log" 2>&1; then
  BIN=build-gpu
  echo "== built here (build-gpu)"
elif [ -n "${XD_GPU_PREBUILT:-}" ] && [ -x "$XD_GPU_PREBUILT/test_gpu_ops" ]; then
  echo "== build here failed ($(grep -m1 -iE 'error|not found' "$OUT/build.log")); using prebuilt $XD_GPU_PREBUILT"
  BIN=$XD_GPU_PREBUILT
  LIBDIR=/tmp/xd-gpu-lib
  mkdir -p "$LIBDIR"
  cp -f "$BIN"/lib/* "$LIBDIR"/ 2>/dev/null
  for f in "$LIBDIR"/*.gz; do [ -e "$f" ] && gunzip -f "$f"; done
  CUBLAS_DIR=$(dirname "$(find /usr/local /opt /usr/lib -name 'libcublasLt.so.13*' 2>/dev/null | head -1)" 2>/dev/null)
  export LD_LIBRARY_PATH="$LIBDIR:${CUBLAS_DIR:-/usr/local/cuda/lib64}:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
else
  echo "== build failed:"; tail -20 "$OUT/build.log"; exit 1
fi

echo "== test_gpu_ops"
"$BIN/test_gpu_ops" 2>&1 | tee "$OUT/test.txt"
rc=${PIPESTATUS[0]}
echo "test_gpu_ops exit $rc"
[ "$rc" = 0 ] || status=1

if command -v compute-sanitizer >/dev/null 2>&1; then
  echo "== compute-sanitizer memcheck"
  timeout 240 compute-sanitizer --tool memcheck --error-exitcode 3 "$BIN/test_gpu_ops" >"$OUT/memcheck.txt" 2>&1
  rc=$?
  grep -E 'ERROR SUMMARY|passed,' "$OUT/memcheck.txt" | tail -3
  echo "memcheck exit $rc"
  [ "$rc" = 0 ] || { status=1; grep -m 20 -E '=========' "$OUT/memcheck.txt"; }
else
  echo "== compute-sanitizer not found: memcheck skipped"
fi

# KD loss kernels (tests + their bandwidth benchmark); memcheck on the quick mode
if [ -x "$BIN/test_gpu_kd_loss" ]; then
  echo "== test_gpu_kd_loss"
  "$BIN/test_gpu_kd_loss" 2>&1 | tee "$OUT/test_kd.txt"
  rc=${PIPESTATUS[0]}
  echo "test_gpu_kd_loss exit $rc"
  [ "$rc" = 0 ] || status=1
  if command -v compute-sanitizer >/dev/null 2>&1; then
    timeout 240 compute-sanitizer --tool memcheck --error-exitcode 3 "$BIN/test_gpu_kd_loss" quick >"$OUT/memcheck_kd.txt" 2>&1
    rc=$?
    grep -E 'ERROR SUMMARY' "$OUT/memcheck_kd.txt" | tail -1
    echo "memcheck test_gpu_kd_loss quick exit $rc"
    [ "$rc" = 0 ] || status=1
  fi
fi

echo "== bench_gpu_teacher T=$T"
"$BIN/bench_gpu_teacher" "$T" 2>&1 | tee "$OUT/bench.txt"
echo "== PyTorch reference"
PYTHONUNBUFFERED=1 timeout 400 python3 tools/bench_reference.py "$T" 2>&1 | grep -v Warning | tee "$OUT/ref.txt"
echo "== bench_gpu_teacher again"
"$BIN/bench_gpu_teacher" "$T" 2>&1 | grep -E 'teacher forward|RESULT' | tee "$OUT/bench2.txt"
echo "== summary"
grep -h RESULT "$OUT"/bench.txt "$OUT"/ref.txt "$OUT"/bench2.txt
tail -1 "$OUT/test.txt"
exit $status
