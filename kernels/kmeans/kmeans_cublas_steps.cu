#include <algorithm>
#include <climits>

#include "kernels/common/device.cuh"
#include "kernels/kmeans/kmeans_cublas_steps.cuh"

namespace squeeze::gpu {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;

using detail::WarpSum;

unsigned WarpBlocks(int rows) {
  return static_cast<unsigned>((static_cast<int64_t>(rows) + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

// One warp per row.
__global__ void NormalizeRowsKernel(const float* in, float* out, int n, int d) {
  const int row = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (row >= n) return;
  const float* x = in + static_cast<size_t>(row) * d;
  float sq = 0.0f;
  for (int j = lane; j < d; j += 32) sq += x[j] * x[j];
  sq = WarpSum(sq);
  const float inv = sq > 0.0f ? 1.0f / sqrtf(sq) : 0.0f;
  float* y = out + static_cast<size_t>(row) * d;
  for (int j = lane; j < d; j += 32) y[j] = x[j] * inv;
}

// One warp per row; each lane scans increasing columns (strict '>' keeps its lowest index),
// then the warp reduces (value, index) pairs with ties to the lower index.
__global__ void AssignArgmaxKernel(const float* scores, int rows, int k, int32_t* labels,
                                   float* best_value, int* changed) {
  const int row = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (row >= rows) return;
  const float* s = scores + static_cast<size_t>(row) * k;
  float best = -INFINITY;
  int best_i = INT_MAX;
  for (int c = lane; c < k; c += 32) {
    const float v = s[c];
    if (v > best || best_i == INT_MAX) {
      best = v;
      best_i = c;
    }
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, best, o);
    const int oi = __shfl_xor_sync(0xffffffffu, best_i, o);
    if (ov > best || (ov == best && oi < best_i)) {
      best = ov;
      best_i = oi;
    }
  }
  if (lane == 0) {
    if (labels[row] != best_i) {
      labels[row] = best_i;
      atomicAdd(changed, 1);
    }
    best_value[row] = best;
  }
}

// One thread per element.
__global__ void AccumulateKernel(const float* x, const int32_t* labels, int64_t count, int d,
                                 float* sums, int32_t* counts) {
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < count;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = e / d;
    const int j = static_cast<int>(e - i * d);
    const int c = labels[i];
    atomicAdd(&sums[static_cast<size_t>(c) * d + j], x[e]);
    if (j == 0) atomicAdd(&counts[c], 1);
  }
}

// One warp per centre.
__global__ void NormalizeCentersKernel(const float* sums, int k, int d, float* centers) {
  const int c = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (c >= k) return;
  const float* s = sums + static_cast<size_t>(c) * d;
  float sq = 0.0f;
  for (int j = lane; j < d; j += 32) sq += s[j] * s[j];
  sq = WarpSum(sq);
  if (!(sq > 0.0f)) return;
  const float inv = 1.0f / sqrtf(sq);
  float* y = centers + static_cast<size_t>(c) * d;
  for (int j = lane; j < d; j += 32) y[j] = s[j] * inv;
}

__global__ void SumToDoubleKernel(const float* v, int n, double* total) {
  __shared__ double part[kWarpsPerBlock];
  double acc = 0.0;
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    acc += v[i];
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double sum = 0.0;
    for (int w = 0; w < kWarpsPerBlock; ++w) sum += part[w];
    atomicAdd(total, sum);
  }
}

}  // namespace

cudaError_t LaunchNormalizeRows(const float* in, float* out, int n, int d, cudaStream_t stream) {
  if (n < 0 || d <= 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (in == nullptr || out == nullptr) return cudaErrorInvalidValue;
  NormalizeRowsKernel<<<WarpBlocks(n), kThreads, 0, stream>>>(in, out, n, d);
  return cudaGetLastError();
}

cudaError_t LaunchAssignArgmax(const float* scores, int rows, int k, int32_t* labels,
                               float* best_value, int* changed, cudaStream_t stream) {
  if (rows < 0 || k <= 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  if (scores == nullptr || labels == nullptr || best_value == nullptr || changed == nullptr) {
    return cudaErrorInvalidValue;
  }
  AssignArgmaxKernel<<<WarpBlocks(rows), kThreads, 0, stream>>>(scores, rows, k, labels, best_value,
                                                                changed);
  return cudaGetLastError();
}

cudaError_t LaunchAccumulateClusters(const float* x, const int32_t* labels, int n, int d,
                                     float* sums, int32_t* counts, cudaStream_t stream) {
  if (n < 0 || d <= 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (x == nullptr || labels == nullptr || sums == nullptr || counts == nullptr) {
    return cudaErrorInvalidValue;
  }
  const int64_t count = static_cast<int64_t>(n) * d;
  const unsigned blocks =
      static_cast<unsigned>(std::min<int64_t>((count + kThreads - 1) / kThreads, 65536));
  AccumulateKernel<<<blocks, kThreads, 0, stream>>>(x, labels, count, d, sums, counts);
  return cudaGetLastError();
}

cudaError_t LaunchNormalizeCenters(const float* sums, int k, int d, float* centers,
                                   cudaStream_t stream) {
  if (k < 0 || d <= 0) return cudaErrorInvalidValue;
  if (k == 0) return cudaSuccess;
  if (sums == nullptr || centers == nullptr) return cudaErrorInvalidValue;
  NormalizeCentersKernel<<<WarpBlocks(k), kThreads, 0, stream>>>(sums, k, d, centers);
  return cudaGetLastError();
}

cudaError_t LaunchSumToDouble(const float* v, int n, double* total, cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (v == nullptr || total == nullptr) return cudaErrorInvalidValue;
  const unsigned blocks = static_cast<unsigned>(std::min(1024, (n + kThreads - 1) / kThreads));
  SumToDoubleKernel<<<blocks, kThreads, 0, stream>>>(v, n, total);
  return cudaGetLastError();
}

}  // namespace squeeze::gpu
