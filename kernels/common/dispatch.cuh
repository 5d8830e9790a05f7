// Host-side dispatch of runtime (head_dim, group size) to template constants. Private to
// kernels/**/*.cu.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <type_traits>

#include "kernels/common/types.cuh"

namespace squeeze::gpu::detail {

template <int V>
using IntC = std::integral_constant<int, V>;

// Calls f(IntC<D>{}) for d in {64, 96, 128}; cudaErrorInvalidValue for anything else.
template <class F>
cudaError_t DispatchHeadDim(int head_dim, F&& f) {
  switch (head_dim) {
    case 64:
      return f(IntC<64>{});
    case 96:
      return f(IntC<96>{});
    case 128:
      return f(IntC<128>{});
    default:
      return cudaErrorInvalidValue;
  }
}

// The group size a kernel is instantiated for: G rounded up to 1, 2, 4, 8 or 16 (0 when G is
// outside [1, kMaxGroupSize]). Such a kernel takes the real G at run time: it loads and stores only
// rows g < G (query head h * G + g of KV head h), and rows g >= G are zero padding that never
// enters a softmax statistic, a score or a mean.
constexpr int PaddedGroup(int group) {
  return group < 1 || group > kMaxGroupSize ? 0
         : group <= 1                       ? 1
         : group <= 2                       ? 2
         : group <= 4                       ? 4
         : group <= 8                       ? 8
                                            : 16;
}

// Calls f(IntC<D>{}, IntC<PaddedGroup(group)>{}) for d in {64, 96, 128} and group in
// [1, kMaxGroupSize]; cudaErrorInvalidValue for anything else. The callee must use the real group
// size for every index into q, the outputs and the workspaces (see PaddedGroup).
template <class F>
cudaError_t DispatchHeadDimGroup(int head_dim, int group, F&& f) {
  return DispatchHeadDim(head_dim, [&](auto d) -> cudaError_t {
    switch (PaddedGroup(group)) {
      case 1:
        return f(d, IntC<1>{});
      case 2:
        return f(d, IntC<2>{});
      case 4:
        return f(d, IntC<4>{});
      case 8:
        return f(d, IntC<8>{});
      case 16:
        return f(d, IntC<16>{});
      default:
        return cudaErrorInvalidValue;
    }
  });
}

inline size_t AlignUp(size_t x, size_t a) { return (x + a - 1) / a * a; }

// The current device's multiprocessors (cached on first use; the engine drives one device).
inline int MultiprocessorCount() {
  static int sms = 0;
  if (sms == 0) {
    int device = 0, count = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device);
    sms = std::max(count, 1);
  }
  return sms;
}

// The current device's compute capability as major * 10 + minor (cached on first success, as
// MultiprocessorCount; 0 while no device answers).
inline int ComputeCapability() {
  static int cc = 0;
  if (cc == 0) {
    int device = 0, major = 0, minor = 0;
    if (cudaGetDevice(&device) == cudaSuccess &&
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess) {
      cc = major * 10 + minor;
    }
  }
  return cc;
}

// CTAs of `kernel` (with `threads` threads and `smem` bytes of dynamic shared memory) that the
// current device runs at once: multiprocessors x resident blocks per multiprocessor (>= 1).
template <class Kernel>
cudaError_t ConcurrentCtas(Kernel kernel, int threads, size_t smem, int* ctas) {
  int device = 0, sms = 0, per_sm = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem);
  if (err != cudaSuccess) return err;
  *ctas = sms * std::max(per_sm, 1);
  return cudaSuccess;
}

}  // namespace squeeze::gpu::detail
