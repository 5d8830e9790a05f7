# Squeeze: thin wrapper over CMake. `make demo` and `make test` install what they need.
BUILD ?= build
JOBS ?= $(shell nproc)
MODEL ?= models/squeeze-demo
ADDRESS ?= 127.0.0.1:50051
CMAKE_FLAGS ?=

.PHONY: all deps configure build test test-gpu test-asan test-tsan fuzz demo serve format format-check clean

all: build

deps:
	@bash scripts/install_deps.sh

$(BUILD)/build.ninja: CMakeLists.txt | deps
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CMAKE_FLAGS)

configure: deps $(BUILD)/build.ninja

build: configure
	cmake --build $(BUILD) -j $(JOBS)

# Fast tiers (cpu, e2e); GPU tests skip themselves without a GPU.
test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# The GPU tier alone (on a machine with an H100/H200).
test-gpu: build
	cd $(BUILD) && ctest --output-on-failure -L gpu

# The CPU and end-to-end tiers under sanitizers, each in its own build tree (CPU backend only).
# ASan + UBSan: memory errors, leaks and undefined behaviour; TSan: data races. The libraries
# (gRPC, Abseil, protobuf, OpenSSL) are Debian's, built without TSan: see tests/sanitizers/.
SAN_FLAGS = -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSQUEEZE_NO_CUDA=ON $(CMAKE_FLAGS)
test-asan: deps
	cmake -S . -B build-asan $(SAN_FLAGS) -DSQUEEZE_ASAN=ON
	cmake --build build-asan -j $(JOBS)
	cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  LSAN_OPTIONS=suppressions=$(CURDIR)/tests/sanitizers/lsan.supp \
	  UBSAN_OPTIONS=print_stacktrace=1 ctest -L 'cpu|e2e' --output-on-failure -j $(JOBS)

test-tsan: configure
	cmake --build $(BUILD) -j $(JOBS) --target test_model
	cmake -S . -B build-tsan $(SAN_FLAGS) -DSQUEEZE_TSAN=ON \
	  -DSQUEEZE_TEST_MODEL_FROM=$(CURDIR)/$(BUILD)/test-model
	cmake --build build-tsan -j $(JOBS)
	cd build-tsan && TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:ignore_noninstrumented_modules=1:suppressions=$(CURDIR)/tests/sanitizers/tsan.supp \
	  ctest -L 'cpu|e2e' --output-on-failure -j $(JOBS)

# libFuzzer targets (fuzz/), built with clang-14 (installed by `install_deps.sh fuzz`), each run
# to FUZZ_RUNS executions from the seed corpora in fuzz/corpus.
FUZZ_RUNS ?= 10000000
fuzz:
	@bash scripts/install_deps.sh fuzz
	CC=clang-14 CXX=clang++-14 cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DSQUEEZE_NO_CUDA=ON -DSQUEEZE_FUZZ=ON
	cmake --build build-fuzz -j $(JOBS) --target fuzzers
	bash fuzz/run.sh build-fuzz $(FUZZ_RUNS)

# C++ and CUDA sources in the project's style (.clang-format: Google, 100 columns).
FORMAT_FILES = $(shell git ls-files '*.cc' '*.h' '*.cu' '*.cuh')
format: deps
	@clang-format -i $(FORMAT_FILES)

format-check: deps
	@clang-format --dry-run --Werror $(FORMAT_FILES)

demo: build
	bash scripts/demo.sh $(BUILD)

serve: build
	$(BUILD)/squeeze-server --model=$(MODEL) --address=$(ADDRESS) --state_dir=$(BUILD)/state

clean:
	rm -rf $(BUILD)
