// dtype conversion (see convert.cuh).
#include <algorithm>
#include <climits>
#include <cmath>

#include "kernels/ops/convert.cuh"
#include "kernels/ops/elementwise.cuh"

namespace squeeze::gpu {
namespace {

using namespace elementwise;  // NOLINT: the shared helpers of kernels/ops

// ---- dtype conversion --------------------------------------------------------------------------

template <int V>
__global__ void F32ToBf16Kernel(const float* __restrict__ src, bf16* __restrict__ dst,
                                size_t count) {
  const size_t nvec = V > 1 ? count / V : 0;  // V == 1: the tail loop does it all
  if constexpr (V == 8) {
    for (size_t v = ThreadIndex(); v < nvec; v += ThreadCount()) {
      const float4 lo = reinterpret_cast<const float4*>(src)[2 * v];
      const float4 hi = reinterpret_cast<const float4*>(src)[2 * v + 1];
      reinterpret_cast<uint4*>(dst)[v] = Pack8(lo, hi);
    }
  }
  for (size_t i = nvec * V + ThreadIndex(); i < count; i += ThreadCount()) {
    dst[i] = __float2bfloat16_rn(src[i]);
  }
}

}  // namespace

cudaError_t LaunchF32ToBf16(const float* src, bf16* dst, size_t count, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  if (src == nullptr || dst == nullptr) return cudaErrorInvalidValue;
  return LaunchElementwise(Aligned(src, 16) && Aligned(dst, 16), 8, count, F32ToBf16Kernel<8>,
                           F32ToBf16Kernel<1>, stream, src, dst, count);
}

}  // namespace squeeze::gpu
