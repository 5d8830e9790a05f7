// Arrays that only grow: Reserve(n) reallocates (dropping the contents) only when n exceeds what
// they hold. The scratch of the index's GPU helpers, reused from layer to layer: device memory,
// and pinned host memory for the downloads (a pageable destination copies at a fraction of the
// bus's rate and pays its page faults on every call).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>

namespace squeeze {

template <typename T>
struct GrowingDeviceArray {
  T* p = nullptr;
  size_t n = 0;
  GrowingDeviceArray() = default;
  GrowingDeviceArray(const GrowingDeviceArray&) = delete;
  GrowingDeviceArray& operator=(const GrowingDeviceArray&) = delete;
  ~GrowingDeviceArray() { cudaFree(p); }
  cudaError_t Reserve(size_t count) {
    if (count <= n) return cudaSuccess;
    cudaFree(p);
    p = nullptr;
    n = 0;
    const cudaError_t err = cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T));
    if (err == cudaSuccess) n = count;
    return err;
  }
};

template <typename T>
struct GrowingPinnedArray {
  T* p = nullptr;
  size_t n = 0;
  GrowingPinnedArray() = default;
  GrowingPinnedArray(const GrowingPinnedArray&) = delete;
  GrowingPinnedArray& operator=(const GrowingPinnedArray&) = delete;
  ~GrowingPinnedArray() { cudaFreeHost(p); }
  cudaError_t Reserve(size_t count) {
    if (count <= n) return cudaSuccess;
    cudaFreeHost(p);
    p = nullptr;
    n = 0;
    void* at = nullptr;
    const cudaError_t err = cudaMallocHost(&at, std::max<size_t>(count, 1) * sizeof(T));
    if (err == cudaSuccess) {
      p = static_cast<T*>(at);
      n = count;
    }
    return err;
  }
};

}  // namespace squeeze
