// Row gathers (see rows.cuh).
#include <algorithm>
#include <climits>
#include <cmath>

#include "kernels/ops/elementwise.cuh"
#include "kernels/ops/rows.cuh"

namespace squeeze::gpu {
namespace {

using namespace elementwise;  // NOLINT: the shared helpers of kernels/ops

// ---- gathers -----------------------------------------------------------------------------------

// Grid (n), one CTA per output row; V = 8 bf16 per uint4 load, or 1.
template <int V>
__global__ void EmbedRowsKernel(const bf16* table, const int32_t* ids, int dim, float* out) {
  const bf16* src = table + static_cast<size_t>(ids[blockIdx.x]) * dim;
  float* dst = out + static_cast<size_t>(blockIdx.x) * dim;
  if constexpr (V == 8) {
    for (int v = threadIdx.x; v < dim / 8; v += blockDim.x) {
      float4 lo, hi;
      Unpack8(reinterpret_cast<const uint4*>(src)[v], &lo, &hi);
      reinterpret_cast<float4*>(dst)[2 * v] = lo;
      reinterpret_cast<float4*>(dst)[2 * v + 1] = hi;
    }
  } else {
    for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = __bfloat162float(src[i]);
  }
}

template <int V>
__global__ void GatherRowsKernel(const float* src, const int32_t* ids, int dim, float* out) {
  const float* s = src + static_cast<size_t>(ids[blockIdx.x]) * dim;
  float* d = out + static_cast<size_t>(blockIdx.x) * dim;
  if constexpr (V == 4) {
    for (int v = threadIdx.x; v < dim / 4; v += blockDim.x) {
      reinterpret_cast<float4*>(d)[v] = reinterpret_cast<const float4*>(s)[v];
    }
  } else {
    for (int i = threadIdx.x; i < dim; i += blockDim.x) d[i] = s[i];
  }
}

// Grid (rows): CTA i copies row i.
__global__ void CopyRowsKernel(const float* const* src, float* const* dst, int row_floats) {
  const float* s = src[blockIdx.x];
  float* d = dst[blockIdx.x];
  if (row_floats % 4 == 0) {
    for (int i = threadIdx.x; i < row_floats / 4; i += blockDim.x) {
      reinterpret_cast<float4*>(d)[i] = reinterpret_cast<const float4*>(s)[i];
    }
  } else {
    for (int i = threadIdx.x; i < row_floats; i += blockDim.x) d[i] = s[i];
  }
}

}  // namespace

cudaError_t LaunchEmbedRows(const bf16* table, const int32_t* ids, int n, int dim, float* out,
                            cudaStream_t stream) {
  if (n < 0 || dim <= 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (table == nullptr || ids == nullptr || out == nullptr) return cudaErrorInvalidValue;
  if (dim % 8 == 0 && Aligned(table, 16) && Aligned(out, 16)) {
    EmbedRowsKernel<8><<<n, RowThreads(dim / 8, kThreads), 0, stream>>>(table, ids, dim, out);
  } else {
    EmbedRowsKernel<1><<<n, RowThreads(dim, kThreads), 0, stream>>>(table, ids, dim, out);
  }
  return cudaGetLastError();
}

cudaError_t LaunchGatherRowsF32(const float* src, const int32_t* ids, int n, int dim, float* out,
                                cudaStream_t stream) {
  if (n < 0 || dim <= 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (src == nullptr || ids == nullptr || out == nullptr) return cudaErrorInvalidValue;
  if (dim % 4 == 0 && Aligned(src, 16) && Aligned(out, 16)) {
    GatherRowsKernel<4><<<n, RowThreads(dim / 4, kThreads), 0, stream>>>(src, ids, dim, out);
  } else {
    GatherRowsKernel<1><<<n, RowThreads(dim, kThreads), 0, stream>>>(src, ids, dim, out);
  }
  return cudaGetLastError();
}

cudaError_t LaunchCopyRows(const float* const* src, float* const* dst, int rows, int row_floats,
                           cudaStream_t stream) {
  if (rows < 0 || row_floats <= 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  if (src == nullptr || dst == nullptr) return cudaErrorInvalidValue;
  CopyRowsKernel<<<rows, kThreads, 0, stream>>>(src, dst, row_floats);
  return cudaGetLastError();
}

}  // namespace squeeze::gpu
