// A device array that only grows: Reserve(n) reallocates (dropping the contents) only when n
// exceeds what it holds. The scratch of the index's GPU helpers, reused from layer to layer.
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

}  // namespace squeeze
