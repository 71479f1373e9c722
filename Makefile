# Quick start wrapper around CMake. `make demo` and `make test` are the README's two commands;
# both install the Debian build dependencies first (idempotent, scripts/install-deps.sh).
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
BUILD ?= build
CMAKE_FLAGS ?=

FUZZ_SECONDS ?= 10

.PHONY: all deps build demo test test-asan test-release test-fuzz bench fuzz clean
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
test: test-release test-asan test-fuzz

test-release: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

test-asan: deps
	@cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DXD_SANITIZE=ON -DXD_CUDA=OFF >/dev/null
	@cmake --build build-asan -j $(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j $(JOBS)

# Fuzz smoke test: every tests/fuzz/fuzz_*.c target for FUZZ_SECONDS on its seed corpus
# (longer runs: `make fuzz FUZZ_SECONDS=600`). Needs clang with libFuzzer; skipped otherwise.
test-fuzz fuzz: deps
	@if ! printf 'int LLVMFuzzerTestOneInput(const char*d,unsigned long n){return 0;}' | clang -x c -fsanitize=fuzzer -o /tmp/xd-fuzz-probe - 2>/dev/null; then \
	  echo "fuzz: clang with libFuzzer not available, skipped"; exit 0; fi; \
	CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DXD_FUZZ=ON -DXD_CUDA=OFF >/dev/null && \
	cmake --build build-fuzz -j $(JOBS) -- --no-print-directory && \
	for f in build-fuzz/fuzz_*; do n=$${f#build-fuzz/fuzz_}; mkdir -p build-fuzz/corpus-$$n; \
	  echo "fuzz: $$n for $(FUZZ_SECONDS) s"; \
	  seeds=; [ -d tests/fuzz/corpus/$$n ] && seeds=tests/fuzz/corpus/$$n; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -print_final_stats=0 build-fuzz/corpus-$$n $$seeds 2>build-fuzz/fuzz-$$n.log || { tail -40 build-fuzz/fuzz-$$n.log; exit 1; }; \
	  grep -E '^#[0-9]+.*DONE' build-fuzz/fuzz-$$n.log | tail -1; \
	done

bench: build
	./$(BUILD)/bench_forward

clean:
	rm -rf $(BUILD) build-asan build-fuzz
