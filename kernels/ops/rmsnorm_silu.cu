// RMSNorm and SiLU gate (see rmsnorm_silu.cuh).
#include <algorithm>
#include <climits>
#include <cmath>

#include "kernels/ops/elementwise.cuh"
#include "kernels/ops/rmsnorm_silu.cuh"

namespace squeeze::gpu {
namespace {

using namespace elementwise;  // NOLINT: the shared helpers of kernels/ops

// ---- RMSNorm -----------------------------------------------------------------------------------

// Grid (rows). Pass 1 sums squares; after the block reduction (a barrier) pass 2 re-reads x and
// writes y, so out_f32 == x is safe: every read of pass 1 precedes every write.
template <int V>
__global__ void RmsNormKernel(const float* x, const float* weight, float* out_f32, bf16* out_bf16,
                              int dim, float eps) {
  const size_t off = static_cast<size_t>(blockIdx.x) * dim;
  const float* xr = x + off;
  float ss = 0.0f;
  if constexpr (V == 4) {
    for (int v = threadIdx.x; v < dim / 4; v += blockDim.x) {
      const float4 a = reinterpret_cast<const float4*>(xr)[v];
      ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
    }
  } else {
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  }
  ss = BlockSum(ss);
  const float inv_rms = 1.0f / sqrtf(ss / static_cast<float>(dim) + eps);

  if constexpr (V == 4) {
    for (int v = threadIdx.x; v < dim / 4; v += blockDim.x) {
      const float4 a = reinterpret_cast<const float4*>(xr)[v];
      const float4 w = reinterpret_cast<const float4*>(weight)[v];
      const float4 y = make_float4(w.x * (a.x * inv_rms), w.y * (a.y * inv_rms),
                                   w.z * (a.z * inv_rms), w.w * (a.w * inv_rms));
      if (out_f32 != nullptr) reinterpret_cast<float4*>(out_f32 + off)[v] = y;
      if (out_bf16 != nullptr) reinterpret_cast<uint2*>(out_bf16 + off)[v] = Pack4(y);
    }
  } else {
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
      const float y = weight[i] * (xr[i] * inv_rms);
      if (out_f32 != nullptr) out_f32[off + i] = y;
      if (out_bf16 != nullptr) out_bf16[off + i] = __float2bfloat16_rn(y);
    }
  }
}

// ---- SiLU gate ---------------------------------------------------------------------------------

__device__ __forceinline__ float Silu(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// No __restrict__: out_f32 may be gate or up (each element is read before it is written, by the
// same thread).
template <int V>
__global__ void SiluMulKernel(const float* gate, const float* up, float* out_f32, bf16* out_bf16,
                              size_t count) {
  const size_t nvec = V > 1 ? count / V : 0;  // V == 1: the tail loop does it all
  if constexpr (V == 4) {
    for (size_t v = ThreadIndex(); v < nvec; v += ThreadCount()) {
      const float4 g = reinterpret_cast<const float4*>(gate)[v];
      const float4 u = reinterpret_cast<const float4*>(up)[v];
      const float4 y = make_float4(Silu(g.x, u.x), Silu(g.y, u.y), Silu(g.z, u.z), Silu(g.w, u.w));
      if (out_f32 != nullptr) reinterpret_cast<float4*>(out_f32)[v] = y;
      if (out_bf16 != nullptr) reinterpret_cast<uint2*>(out_bf16)[v] = Pack4(y);
    }
  }
  for (size_t i = nvec * V + ThreadIndex(); i < count; i += ThreadCount()) {
    const float y = Silu(gate[i], up[i]);
    if (out_f32 != nullptr) out_f32[i] = y;
    if (out_bf16 != nullptr) out_bf16[i] = __float2bfloat16_rn(y);
  }
}

template <int V>
__global__ void AddBiasKernel(float* y, const float* bias, size_t count, int cols) {
  const size_t nvec = V > 1 ? count / V : 0;  // V == 4: cols % 4 == 0, so a vector is in one row
  if constexpr (V == 4) {
    for (size_t v = ThreadIndex(); v < nvec; v += ThreadCount()) {
      const float4 b = reinterpret_cast<const float4*>(bias)[(v * 4 % cols) / 4];
      float4 a = reinterpret_cast<float4*>(y)[v];
      a = make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
      reinterpret_cast<float4*>(y)[v] = a;
    }
  }
  for (size_t i = nvec * V + ThreadIndex(); i < count; i += ThreadCount()) y[i] += bias[i % cols];
}

}  // namespace

cudaError_t LaunchRmsNorm(const float* x, const float* weight, float* out_f32, bf16* out_bf16,
                          int rows, int dim, float eps, cudaStream_t stream) {
  if (rows < 0 || dim <= 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  if (x == nullptr || weight == nullptr || (out_f32 == nullptr && out_bf16 == nullptr)) {
    return cudaErrorInvalidValue;
  }
  const bool vec = dim % 4 == 0 && Aligned(x, 16) && Aligned(weight, 16) && Aligned(out_f32, 16) &&
                   Aligned(out_bf16, 8);
  if (vec) {
    RmsNormKernel<4>
        <<<rows, RowThreads(dim / 4, 512), 0, stream>>>(x, weight, out_f32, out_bf16, dim, eps);
  } else {
    RmsNormKernel<1>
        <<<rows, RowThreads(dim, 512), 0, stream>>>(x, weight, out_f32, out_bf16, dim, eps);
  }
  return cudaGetLastError();
}

cudaError_t LaunchSiluMul(const float* gate, const float* up, float* out_f32, bf16* out_bf16,
                          size_t count, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  if (gate == nullptr || up == nullptr || (out_f32 == nullptr && out_bf16 == nullptr)) {
    return cudaErrorInvalidValue;
  }
  const bool vec =
      Aligned(gate, 16) && Aligned(up, 16) && Aligned(out_f32, 16) && Aligned(out_bf16, 8);
  return LaunchElementwise(vec, 4, count, SiluMulKernel<4>, SiluMulKernel<1>, stream, gate, up,
                           out_f32, out_bf16, count);
}

cudaError_t LaunchAddBias(float* y, const float* bias, int rows, int cols, cudaStream_t stream) {
  if (rows < 0 || cols <= 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  if (y == nullptr || bias == nullptr) return cudaErrorInvalidValue;
  const size_t count = static_cast<size_t>(rows) * cols;
  const bool vec = cols % 4 == 0 && Aligned(y, 16) && Aligned(bias, 16);
  return LaunchElementwise(vec, 4, count, AddBiasKernel<4>, AddBiasKernel<1>, stream, y, bias,
                           count, cols);
}

}  // namespace squeeze::gpu
