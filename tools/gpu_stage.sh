#!/usr/bin/env bash
# Stage this checkout for tools/gpu_test.sh on a GPU machine that lacks the CPU build
# dependencies (OpenBLAS, cJSON, PCRE2, ...): builds every tests/gpu/test_gpu_*.c program and
# every bench/gpu/bench_gpu_*.c here with nvcc (same CUDA major version as the GPU machine), then copies the
# source tree plus DEST/prebuilt/{the binaries, lib/ with the non-system shared libraries they load}.
#   tools/gpu_stage.sh DEST [BUILD_DIR]      (BUILD_DIR default /tmp/xd-cuda-build)
# Then, on the GPU machine:  cd DEST && XD_GPU_PREBUILT=$PWD/prebuilt bash tools/gpu_test.sh
# (libcublasLt and the driver come from the GPU machine; OpenBLAS travels gzipped.)
set -eu -o pipefail
DEST=${1:?usage: tools/gpu_stage.sh DEST [BUILD_DIR]}
BUILD=${2:-/tmp/xd-cuda-build}
cmake -S . -B "$BUILD" -DXD_CUDA=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
PROGS="$(for f in tests/gpu/test_gpu_*.c bench/gpu/bench_gpu_*.c; do basename "$f" .c; done)"
cmake --build "$BUILD" -j2 --target $PROGS
rm -rf "$DEST"
mkdir -p "$DEST/prebuilt/lib"
git ls-files -z --cached --others --exclude-standard | grep -zv '^build' | xargs -0 -I{} cp --parents {} "$DEST"/
for p in $PROGS; do cp "$BUILD/$p" "$DEST/prebuilt/"; done
# Shared libraries outside glibc/libstdc++/CUDA's cuBLAS (which the GPU machine has).
ldd $(for p in $PROGS; do echo "$BUILD/$p"; done) | awk '/=> \//{print $3}' | sort -u |
  grep -E 'openblas|gfortran|quadmath|gomp|cudart|cjson|pcre2|utf8proc|yaml' | while read -r lib; do
    case "$lib" in
      *openblas*) gzip -c "$lib" >"$DEST/prebuilt/lib/$(basename "$lib").gz" ;;
      *) cp -L "$lib" "$DEST/prebuilt/lib/" ;;
    esac
  done
du -sh "$DEST"
