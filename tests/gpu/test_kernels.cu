// Test-only kernels (see test_kernels.cuh).
#include <climits>

#include "kernels/ops/elementwise.cuh"
#include "tests/gpu/test_kernels.cuh"

namespace squeeze::gpu {
namespace {

using namespace elementwise;  // NOLINT: the shared helpers of kernels/ops

// (value, index) order of argmax: larger value first, ties to the lower index.
__device__ __forceinline__ bool Better(float v, int i, float best, int best_i) {
  return v > best || (v == best && i < best_i);
}

__device__ __forceinline__ void WarpArgmax(float* v, int* i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, *v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, *i, o);
    if (Better(ov, oi, *v, *i)) {
      *v = ov;
      *i = oi;
    }
  }
}

template <int V>
__global__ void Bf16ToF32Kernel(const bf16* __restrict__ src, float* __restrict__ dst,
                                size_t count) {
  const size_t nvec = V > 1 ? count / V : 0;  // V == 1: the tail loop does it all
  if constexpr (V == 8) {
    for (size_t v = ThreadIndex(); v < nvec; v += ThreadCount()) {
      float4 lo, hi;
      Unpack8(reinterpret_cast<const uint4*>(src)[v], &lo, &hi);
      reinterpret_cast<float4*>(dst)[2 * v] = lo;
      reinterpret_cast<float4*>(dst)[2 * v + 1] = hi;
    }
  }
  for (size_t i = nvec * V + ThreadIndex(); i < count; i += ThreadCount()) {
    dst[i] = __bfloat162float(src[i]);
  }
}

// ---- argmax ------------------------------------------------------------------------------------

constexpr int kArgmaxThreads = 1024;

// Grid (rows). Each thread scans increasing indices, so a strict '>' keeps its lowest index; the
// first candidate is taken whatever its value (a row of -inf yields its lowest index).
template <int V>
__global__ void __launch_bounds__(kArgmaxThreads)
    ArgmaxKernel(const float* logits, int vocab, int32_t* ids) {
  __shared__ float warp_v[kArgmaxThreads / 32];
  __shared__ int warp_i[kArgmaxThreads / 32];
  const float* row = logits + static_cast<size_t>(blockIdx.x) * vocab;
  float best = -INFINITY;
  int best_i = INT_MAX;
  auto take = [&](float v, int i) {
    if (v > best || best_i == INT_MAX) {
      best = v;
      best_i = i;
    }
  };
  if constexpr (V == 4) {
    for (int v = threadIdx.x; v < vocab / 4; v += blockDim.x) {
      const float4 a = reinterpret_cast<const float4*>(row)[v];
      take(a.x, 4 * v);
      take(a.y, 4 * v + 1);
      take(a.z, 4 * v + 2);
      take(a.w, 4 * v + 3);
    }
  }
  // Tail (all of the row for V == 1): indices above every vector index, still increasing.
  for (int i = (V > 1 ? vocab / V * V : 0) + threadIdx.x; i < vocab; i += blockDim.x) {
    take(row[i], i);
  }

  WarpArgmax(&best, &best_i);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    warp_v[warp] = best;
    warp_i[warp] = best_i;
  }
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x >> 5;
    best = lane < warps ? warp_v[lane] : -INFINITY;
    best_i = lane < warps ? warp_i[lane] : INT_MAX;
    WarpArgmax(&best, &best_i);
    if (lane == 0) ids[blockIdx.x] = best_i;
  }
}

}  // namespace

cudaError_t LaunchBf16ToF32(const bf16* src, float* dst, size_t count, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  if (src == nullptr || dst == nullptr) return cudaErrorInvalidValue;
  return LaunchElementwise(Aligned(src, 16) && Aligned(dst, 16), 8, count, Bf16ToF32Kernel<8>,
                           Bf16ToF32Kernel<1>, stream, src, dst, count);
}

cudaError_t LaunchArgmax(const float* logits, int rows, int vocab, int32_t* ids,
                         cudaStream_t stream) {
  if (rows < 0 || vocab <= 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  if (logits == nullptr || ids == nullptr) return cudaErrorInvalidValue;
  if (vocab % 4 == 0 && Aligned(logits, 16)) {
    ArgmaxKernel<4><<<rows, kArgmaxThreads, 0, stream>>>(logits, vocab, ids);
  } else {
    ArgmaxKernel<1><<<rows, kArgmaxThreads, 0, stream>>>(logits, vocab, ids);
  }
  return cudaGetLastError();
}

}  // namespace squeeze::gpu
