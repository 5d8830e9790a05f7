// Host-side dispatch of runtime (head_dim, group size) to template constants. Private to
// kernels/*.cu.
#pragma once

#include <cuda_runtime.h>

#include <type_traits>

namespace squeeze::gpu::detail {

template <int V>
using IntC = std::integral_constant<int, V>;

// Calls f(IntC<D>{}, IntC<G>{}) for d in {64, 128}, G in {1, 2, 4, 8}; cudaErrorInvalidValue
// for anything else.
template <class F>
cudaError_t DispatchHeadDimGroup(int head_dim, int group, F&& f) {
  auto by_group = [&](auto d) -> cudaError_t {
    switch (group) {
      case 1:
        return f(d, IntC<1>{});
      case 2:
        return f(d, IntC<2>{});
      case 4:
        return f(d, IntC<4>{});
      case 8:
        return f(d, IntC<8>{});
      default:
        return cudaErrorInvalidValue;
    }
  };
  switch (head_dim) {
    case 64:
      return by_group(IntC<64>{});
    case 128:
      return by_group(IntC<128>{});
    default:
      return cudaErrorInvalidValue;
  }
}

inline size_t AlignUp(size_t x, size_t a) { return (x + a - 1) / a * a; }

}  // namespace squeeze::gpu::detail
