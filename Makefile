# Quick start wrapper around CMake. `make demo` and `make test` are the README's two commands;
# both install the Debian build dependencies first (idempotent, scripts/install-deps.sh).
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
BUILD ?= build
CMAKE_FLAGS ?=

.PHONY: all deps build demo test test-asan test-release bench fuzz clean
all: build

deps:
	@bash scripts/install-deps.sh

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

demo: build
	./$(BUILD)/xdistill demo

# The whole suite: a release build, then the same tests under ASan + UBSan (CPU only; the CUDA
# sources are still compiled and linked by the release build).
test: test-release test-asan

test-release: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

test-asan: deps
	@cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DXD_SANITIZE=ON -DXD_CUDA=OFF >/dev/null
	@cmake --build build-asan -j $(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j $(JOBS)

bench: build
	./$(BUILD)/bench_forward

clean:
	rm -rf $(BUILD) build-asan build-fuzz
