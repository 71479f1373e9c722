#!/usr/bin/env bash
# Stage this checkout for tools/gpu_test.sh on a GPU machine that lacks the CPU build
# dependencies (OpenBLAS, cJSON, PCRE2, ...): builds test_gpu_ops and bench_gpu_teacher here
# with nvcc (same CUDA major version as the GPU machine), then copies the source tree plus
# DEST/prebuilt/{the two binaries, lib/ with the non-system shared libraries they load}.
#   tools/gpu_stage.sh DEST [BUILD_DIR]      (BUILD_DIR default /tmp/xd-cuda-build)
# Then, on the GPU machine:  cd DEST && XD_GPU_PREBUILT=$PWD/prebuilt bash tools/gpu_test.sh
# (libcublasLt and the driver come from the GPU machine; OpenBLAS travels gzipped.)
set -eu -o pipefail
DEST=${1:?usage: tools/gpu_stage.sh DEST [BUILD_DIR]}
BUILD=${2:-/tmp/xd-cuda-build}
cmake -S . -B "$BUILD" -DXD_CUDA=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD" -j2 --target test_gpu_ops test_gpu_kd_loss bench_gpu_teacher
rm -rf "$DEST"
mkdir -p "$DEST/prebuilt/lib"
git ls-files -z --cached --others --exclude-standard | grep -zv '^build' | xargs -0 -I{} cp --parents {} "$DEST"/
cp "$BUILD/test_gpu_ops" "$BUILD/test_gpu_kd_loss" "$BUILD/bench_gpu_teacher" "$DEST/prebuilt/"
# Shared libraries outside glibc/libstdc++/CUDA's cuBLAS (which the GPU machine has).
ldd "$BUILD/test_gpu_ops" "$BUILD/test_gpu_kd_loss" "$BUILD/bench_gpu_teacher" | awk '/=> \//{print $3}' | sort -u |
  grep -E 'openblas|gfortran|quadmath|gomp|cudart|cjson|pcre2|utf8proc|yaml' | while read -r lib; do
    case "$lib" in
      *openblas*) gzip -c "$lib" >"$DEST/prebuilt/lib/$(basename "$lib").gz" ;;
      *) cp -L "$lib" "$DEST/prebuilt/lib/" ;;
    esac
  done
du -sh "$DEST"
