// Random fill (see random_fill.cuh).
#include <algorithm>
#include <climits>
#include <cmath>

#include "kernels/ops/elementwise.cuh"
#include "kernels/ops/random_fill.cuh"

namespace squeeze::gpu {
namespace {

using namespace elementwise;  // NOLINT: the shared helpers of kernels/ops

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

// ---- random fill -------------------------------------------------------------------------------

__host__ __device__ __forceinline__ uint64_t SplitMix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Box-Muller pair j of the stream keyed by key = SplitMix64(seed): elements 2j and 2j + 1.
__host__ __device__ __forceinline__ void NormalPair(uint64_t key, uint64_t j, float* z0,
                                                    float* z1) {
  const uint64_t bits = SplitMix64(key + (j + 1) * kGolden);
  const float u1 = static_cast<float>((bits >> 40) + 1) * 0x1p-24f;          // (0, 1]
  const float u2 = static_cast<float>((bits >> 16) & 0xFFFFFFu) * 0x1p-24f;  // [0, 1)
  const float r = sqrtf(-2.0f * logf(u1));
  const float a = 6.28318530717958647692f * u2;
  *z0 = r * cosf(a);
  *z1 = r * sinf(a);
}

__device__ __forceinline__ float NormalAt(uint64_t key, size_t i) {
  float z0, z1;
  NormalPair(key, i >> 1, &z0, &z1);
  return (i & 1) ? z1 : z0;
}

// V = 4 floats (two pairs) per vector.
template <int V>
__global__ void FillRandomF32Kernel(float* dst, size_t count, uint64_t key, float mean,
                                    float stddev) {
  const size_t nvec = V > 1 ? count / V : 0;  // V == 1: the tail loop does it all
  if constexpr (V == 4) {
    for (size_t v = ThreadIndex(); v < nvec; v += ThreadCount()) {
      float4 z;
      NormalPair(key, 2 * v, &z.x, &z.y);
      NormalPair(key, 2 * v + 1, &z.z, &z.w);
      reinterpret_cast<float4*>(dst)[v] =
          make_float4(fmaf(stddev, z.x, mean), fmaf(stddev, z.y, mean), fmaf(stddev, z.z, mean),
                      fmaf(stddev, z.w, mean));
    }
  }
  for (size_t i = nvec * V + ThreadIndex(); i < count; i += ThreadCount()) {
    dst[i] = fmaf(stddev, NormalAt(key, i), mean);
  }
}

// V = 8 bf16 (four pairs) per vector.
template <int V>
__global__ void FillRandomBf16Kernel(bf16* dst, size_t count, uint64_t key, float stddev) {
  const size_t nvec = V > 1 ? count / V : 0;  // V == 1: the tail loop does it all
  if constexpr (V == 8) {
    for (size_t v = ThreadIndex(); v < nvec; v += ThreadCount()) {
      float4 lo, hi;
      NormalPair(key, 4 * v, &lo.x, &lo.y);
      NormalPair(key, 4 * v + 1, &lo.z, &lo.w);
      NormalPair(key, 4 * v + 2, &hi.x, &hi.y);
      NormalPair(key, 4 * v + 3, &hi.z, &hi.w);
      lo = make_float4(stddev * lo.x, stddev * lo.y, stddev * lo.z, stddev * lo.w);
      hi = make_float4(stddev * hi.x, stddev * hi.y, stddev * hi.z, stddev * hi.w);
      reinterpret_cast<uint4*>(dst)[v] = Pack8(lo, hi);
    }
  }
  for (size_t i = nvec * V + ThreadIndex(); i < count; i += ThreadCount()) {
    dst[i] = __float2bfloat16_rn(stddev * NormalAt(key, i));
  }
}

}  // namespace

cudaError_t LaunchFillRandomBf16(bf16* dst, size_t count, uint64_t seed, float stddev,
                                 cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  if (dst == nullptr) return cudaErrorInvalidValue;
  return LaunchElementwise(Aligned(dst, 16), 8, count, FillRandomBf16Kernel<8>,
                           FillRandomBf16Kernel<1>, stream, dst, count, SplitMix64(seed), stddev);
}

cudaError_t LaunchFillRandomF32(float* dst, size_t count, uint64_t seed, float mean, float stddev,
                                cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  if (dst == nullptr) return cudaErrorInvalidValue;
  return LaunchElementwise(Aligned(dst, 16), 4, count, FillRandomF32Kernel<4>,
                           FillRandomF32Kernel<1>, stream, dst, count, SplitMix64(seed), mean,
                           stddev);
}

float RandomNormalAt(uint64_t seed, uint64_t index) {
  float z0, z1;
  NormalPair(SplitMix64(seed), index >> 1, &z0, &z1);
  return (index & 1) ? z1 : z0;
}

}  // namespace squeeze::gpu
