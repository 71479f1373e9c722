#!/usr/bin/env bash
# Stage this checkout for tools/gpu_test.sh on a GPU machine that lacks the CPU build
# dependencies (OpenBLAS, cJSON, PCRE2, ...): builds every tests/gpu/test_gpu_*.c and
# bench/gpu/bench_gpu_*.c program and xdistill here with nvcc (same CUDA major version as the GPU
# machine), then copies the source tree plus DEST/prebuilt/{those binaries, lib/ with the
# non-system shared libraries they load}.
#   tools/gpu_stage.sh DEST [BUILD_DIR]      (BUILD_DIR default /tmp/xd-cuda-build)
# Then, on the GPU machine:  cd DEST && XD_GPU_PREBUILT=$PWD/prebuilt bash tools/gpu_test.sh
# (libcublasLt and the driver come from the GPU machine; the binaries, stripped, and OpenBLAS
# travel gzipped: gpu_test.sh unpacks them). With XD_STAGE_NO_SRC=1 only DEST/prebuilt is
# written: for a DEST inside the checkout that the device tool copies anyway (its transfer limit
# is 64 MiB for the tracked files and the carried folder together); then run from the repo root:
#   XD_GPU_PREBUILT=$PWD/DEST/prebuilt bash tools/gpu_test.sh
set -eu -o pipefail
DEST=${1:?usage: tools/gpu_stage.sh DEST [BUILD_DIR]}
BUILD=${2:-/tmp/xd-cuda-build}
cmake -S . -B "$BUILD" -DXD_CUDA=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
PROGS="$(for f in tests/gpu/test_gpu_*.c bench/gpu/bench_gpu_*.c; do basename "$f" .c; done) xdistill"
cmake --build "$BUILD" -j2 --target $PROGS
rm -rf "$DEST"
mkdir -p "$DEST/prebuilt/lib"
if [ -z "${XD_STAGE_NO_SRC:-}" ]; then
  git ls-files -z --cached --others --exclude-standard | grep -zv '^build' | xargs -0 -I{} cp --parents {} "$DEST"/
fi
for p in $PROGS; do cp "$BUILD/$p" "$DEST/prebuilt/" && strip "$DEST/prebuilt/$p" && gzip -f "$DEST/prebuilt/$p"; done
# Shared libraries outside glibc/libstdc++/CUDA's cuBLAS (which the GPU machine has).
(for p in $PROGS; do ldd "$BUILD/$p"; done) | awk '/=> \//{print $3}' | sort -u |
  grep -E 'openblas|gfortran|quadmath|gomp|cudart|cjson|pcre2|utf8proc|yaml|microhttpd' | while read -r lib; do
    case "$lib" in
      *openblas*) gzip -c "$lib" >"$DEST/prebuilt/lib/$(basename "$lib").gz" ;;
      *) cp -L "$lib" "$DEST/prebuilt/lib/" ;;
    esac
  done
# libmicrohttpd's own libraries (GnuTLS and friends), used on the GPU machine only where it has
# none of that name (gpu_test.sh): its system copies stay first for everything else.
mkdir -p "$DEST/prebuilt/lib/fallback"
ldd "$(ldd "$BUILD/xdistill" | awk '/microhttpd/{print $3}')" | awk '/=> \//{print $3}' | grep -vE '/libc\.so|/ld-linux' |
  while read -r lib; do cp -L "$lib" "$DEST/prebuilt/lib/fallback/"; done
du -sh "$DEST"
