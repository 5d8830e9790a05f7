// Arrays that only grow: Reserve(n) reallocates (dropping the contents) only when n exceeds what
// they hold. The scratch of the index's GPU helpers, reused from layer to layer: device memory,
// and pinned host memory for the downloads (a pageable destination copies at a fraction of the
// bus's rate and pays its page faults on every call).
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>

namespace squeeze {

namespace growing_detail {
inline cudaError_t DeviceAlloc(void** p, size_t bytes) { return cudaMalloc(p, bytes); }
inline cudaError_t DeviceFree(void* p) { return cudaFree(p); }
inline cudaError_t PinnedAlloc(void** p, size_t bytes) { return cudaMallocHost(p, bytes); }
inline cudaError_t PinnedFree(void* p) { return cudaFreeHost(p); }
}  // namespace growing_detail

template <typename T, cudaError_t (*Alloc)(void**, size_t), cudaError_t (*Free)(void*)>
struct GrowingArray {
  T* p = nullptr;
  size_t n = 0;
  GrowingArray() = default;
  GrowingArray(const GrowingArray&) = delete;
  GrowingArray& operator=(const GrowingArray&) = delete;
  ~GrowingArray() { Free(p); }
  cudaError_t Reserve(size_t count) {
    if (count <= n) return cudaSuccess;
    Free(p);
    p = nullptr;
    n = 0;
    void* at = nullptr;
    const cudaError_t err = Alloc(&at, std::max<size_t>(count, 1) * sizeof(T));
    if (err == cudaSuccess) {
      p = static_cast<T*>(at);
      n = count;
    }
    return err;
  }
};

template <typename T>
using GrowingDeviceArray = GrowingArray<T, growing_detail::DeviceAlloc, growing_detail::DeviceFree>;
template <typename T>
using GrowingPinnedArray = GrowingArray<T, growing_detail::PinnedAlloc, growing_detail::PinnedFree>;

}  // namespace squeeze
