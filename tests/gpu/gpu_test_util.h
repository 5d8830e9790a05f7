// Helpers shared by the GPU tests: skip (exit 77) without a device, checked CUDA calls, device
// arrays with poisoning, a fast deterministic PRNG, and bf16 data with its exact fp32 image.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <vector>

#include "kernels/common/types.cuh"

namespace squeeze::gpu_testing {

using gpu::bf16;

class GpuEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
      std::printf("no CUDA device, skipping (exit 77)\n");
      std::fflush(stdout);
      std::exit(77);
    }
  }
};
[[maybe_unused]] ::testing::Environment* const kGpuEnv =
    ::testing::AddGlobalTestEnvironment(new GpuEnvironment);

// A failed CUDA call leaves nothing sensible to check: report and crash the test binary.
#define CUDA_OK(expr)                                                           \
  do {                                                                          \
    const cudaError_t err_ = (expr);                                            \
    if (err_ != cudaSuccess) {                                                  \
      std::fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #expr, \
                   cudaGetErrorString(err_));                                   \
      std::abort();                                                             \
    }                                                                           \
  } while (0)

template <typename T>
class DeviceArray {
 public:
  DeviceArray() = default;
  explicit DeviceArray(size_t n) : n_(n) {
    if (n > 0) CUDA_OK(cudaMalloc(&p_, n * sizeof(T)));
  }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) { Upload(host); }
  ~DeviceArray() {
    if (p_ != nullptr) cudaFree(p_);
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  T* get() const { return p_; }
  size_t size() const { return n_; }
  void Upload(const std::vector<T>& host) {
    if (n_ > 0) CUDA_OK(cudaMemcpy(p_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> Download() const {
    std::vector<T> host(n_);
    if (n_ > 0) CUDA_OK(cudaMemcpy(host.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
  void Poison() {
    if (n_ > 0) CUDA_OK(cudaMemset(p_, 0xFF, n_ * sizeof(T)));
  }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

// splitmix64: fast, so 128K-token contexts are generated in well under a second.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed * 0x9E3779B97F4A7C15ull + 12345) {}
  uint64_t Next() {
    uint64_t z = (s_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float Uniform() {  // [-1, 1)
    return static_cast<float>(Next() >> 40) * (2.0f / 16777216.0f) - 1.0f;
  }
  int Int(int lo, int hi) {  // [lo, hi]
    return lo + static_cast<int>(Next() % static_cast<uint64_t>(hi - lo + 1));
  }

 private:
  uint64_t s_;
};

// bf16 values for the device and their exact fp32 image for the reference.
struct Bf16Data {
  std::vector<bf16> dev;
  std::vector<float> ref;
  Bf16Data() = default;
  explicit Bf16Data(size_t n) : dev(n), ref(n) {}
  void Resize(size_t n) {
    dev.resize(n);
    ref.resize(n);
  }
  void Set(size_t i, float x) {
    dev[i] = __float2bfloat16_rn(x);
    ref[i] = __bfloat162float(dev[i]);
  }
  void SetNaN(size_t i) {
    dev[i] = __float2bfloat16_rn(std::numeric_limits<float>::quiet_NaN());
    ref[i] = std::numeric_limits<float>::quiet_NaN();
  }
};

}  // namespace squeeze::gpu_testing
