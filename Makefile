# Squeeze: thin wrapper over CMake. `make demo` and `make test` install what they need.
BUILD ?= build
JOBS ?= $(shell nproc)
MODEL ?= models/squeeze-demo
ADDRESS ?= 127.0.0.1:50051
CMAKE_FLAGS ?=

.PHONY: all deps configure build test test-gpu demo serve format format-check clean

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
