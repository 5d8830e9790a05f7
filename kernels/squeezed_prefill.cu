// Squeezed prefill helpers (see squeezed_prefill.cuh).
#include <algorithm>
#include <cmath>

#include "kernels/attention_core.cuh"
#include "kernels/squeezed_prefill.cuh"

namespace squeeze::gpu {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

using detail::WarpMax;
using detail::WarpSum;

// One warp per row: the maximum, then the size-weighted sum of exponentials.
// Columns taking part: the first *num_cand ids of cand, or all C.
__device__ __forceinline__ int ColumnCount(int C, const int32_t* num_cand) {
  return num_cand != nullptr ? min(max(*num_cand, 0), C) : C;
}
__device__ __forceinline__ int ColumnId(int i, const int32_t* cand) {
  return cand != nullptr ? __ldg(cand + i) : i;
}

__global__ void __launch_bounds__(kThreads)
    RowStatsKernel(const float* __restrict__ logits, int rows, int C, int ld,
                   const int32_t* __restrict__ sizes, const int32_t* __restrict__ cand,
                   const int32_t* __restrict__ num_cand, float* __restrict__ row_max,
                   float* __restrict__ row_inv) {
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * kWarps + (threadIdx.x >> 5);
  if (row >= rows) return;
  const int count = ColumnCount(C, num_cand);
  const float* s = logits + static_cast<size_t>(row) * ld;
  float m = -INFINITY;
  for (int i = lane; i < count; i += 32) m = fmaxf(m, s[ColumnId(i, cand)]);
  m = WarpMax(m);
  float den = 0.0f;
  for (int i = lane; i < count; i += 32) {
    const int c = ColumnId(i, cand);
    den += static_cast<float>(__ldg(sizes + c)) * expf(s[c] - m);
  }
  den = WarpSum(den);
  if (lane == 0) {
    row_max[row] = m;
    row_inv[row] = count > 0 ? 1.0f / den : 0.0f;  // den >= 1: the arg-max cluster has N >= 1
  }
}

// Grid (ceil(C / kThreads), kColumnMeanSplits): thread c of split s sums its rows of column c
// (coalesced along c) into partial[s][c].
__global__ void __launch_bounds__(kThreads)
    ColumnPartialKernel(const float* __restrict__ logits, int rows, int C, int ld,
                        const int32_t* __restrict__ cand, const int32_t* __restrict__ num_cand,
                        const float* __restrict__ row_max, const float* __restrict__ row_inv,
                        float* __restrict__ partial) {
  const int i = blockIdx.x * kThreads + threadIdx.x;
  if (i >= ColumnCount(C, num_cand)) return;
  const int c = ColumnId(i, cand);
  const int per = (rows + kColumnMeanSplits - 1) / kColumnMeanSplits;
  const int r0 = blockIdx.y * per, r1 = min(rows, r0 + per);
  float acc = 0.0f;
  for (int r = r0; r < r1; ++r) {
    acc += expf(logits[static_cast<size_t>(r) * ld + c] - __ldg(row_max + r)) * __ldg(row_inv + r);
  }
  partial[static_cast<size_t>(blockIdx.y) * C + i] = acc;
}

__global__ void __launch_bounds__(kThreads)
    ColumnFinishKernel(const float* __restrict__ partial, int C, const int32_t* __restrict__ cand,
                       const int32_t* __restrict__ num_cand, float weight, bool accumulate,
                       float* __restrict__ score) {
  const int i = blockIdx.x * kThreads + threadIdx.x;
  if (i >= ColumnCount(C, num_cand)) return;
  const int c = ColumnId(i, cand);
  float acc = 0.0f;
#pragma unroll 8
  for (int s = 0; s < kColumnMeanSplits; ++s) acc += partial[static_cast<size_t>(s) * C + i];
  score[c] = (accumulate ? score[c] : 0.0f) + weight * acc;
}

__global__ void __launch_bounds__(kThreads)
    ExpandRowsKernel(const SqueezeSelection sel, int32_t* __restrict__ row_index,
                     int64_t row_index_stride) {
  const int bh = blockIdx.y;
  const int i = blockIdx.x * kThreads + threadIdx.x;
  if (i >= sel.kept_keys[bh]) return;
  const int32_t* key_begin = sel.range_key_begin + static_cast<size_t>(bh) * (sel.range_stride + 1);
  const int32_t* row_begin = sel.range_row_begin + static_cast<size_t>(bh) * sel.range_stride;
  const int num_ranges = sel.num_ranges[bh];
  int r = sel.range_of_key[static_cast<size_t>(bh) * sel.key_index_stride +
                           i / kSparseKeyIndexStep];
  while (r + 1 < num_ranges && key_begin[r + 1] <= i) ++r;  // clusters hold ~20 keys: few steps
  row_index[bh * row_index_stride + i] = row_begin[r] + (i - key_begin[r]);
}

}  // namespace

cudaError_t LaunchCentroidRowStats(const float* logits, int rows, int num_clusters, int ld,
                                   const int32_t* sizes, float* row_max, float* row_inv,
                                   cudaStream_t stream, const int32_t* candidates,
                                   const int32_t* num_candidates) {
  if (rows < 0 || num_clusters < 0 || ld < num_clusters) return cudaErrorInvalidValue;
  if (rows == 0 || num_clusters == 0) return cudaSuccess;
  if (logits == nullptr || sizes == nullptr || row_max == nullptr || row_inv == nullptr ||
      (candidates == nullptr) != (num_candidates == nullptr)) {
    return cudaErrorInvalidValue;
  }
  RowStatsKernel<<<(rows + kWarps - 1) / kWarps, kThreads, 0, stream>>>(
      logits, rows, num_clusters, ld, sizes, candidates, num_candidates, row_max, row_inv);
  return cudaGetLastError();
}

cudaError_t LaunchCentroidColumnMean(const float* logits, int rows, int num_clusters, int ld,
                                     const float* row_max, const float* row_inv, float weight,
                                     bool accumulate, float* partial, float* score,
                                     cudaStream_t stream, const int32_t* candidates,
                                     const int32_t* num_candidates) {
  if (rows < 0 || num_clusters < 0 || ld < num_clusters) return cudaErrorInvalidValue;
  if (num_clusters == 0) return cudaSuccess;
  if (score == nullptr || partial == nullptr ||
      (rows > 0 && (logits == nullptr || row_max == nullptr || row_inv == nullptr)) ||
      (candidates == nullptr) != (num_candidates == nullptr)) {
    return cudaErrorInvalidValue;
  }
  const int col_blocks = (num_clusters + kThreads - 1) / kThreads;
  ColumnPartialKernel<<<dim3(col_blocks, kColumnMeanSplits), kThreads, 0, stream>>>(
      logits, rows, num_clusters, ld, candidates, num_candidates, row_max, row_inv, partial);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  ColumnFinishKernel<<<col_blocks, kThreads, 0, stream>>>(
      partial, num_clusters, candidates, num_candidates, weight, accumulate, score);
  return cudaGetLastError();
}

cudaError_t LaunchExpandSelectionRows(const SqueezeSelection& sel, int num_heads, int max_keys,
                                      int32_t* row_index, int64_t row_index_stride,
                                      cudaStream_t stream) {
  if (num_heads <= 0 || num_heads > 65535 || max_keys < 0 || row_index_stride < max_keys ||
      row_index == nullptr || sel.kept_keys == nullptr || sel.range_key_begin == nullptr ||
      sel.range_row_begin == nullptr || sel.num_ranges == nullptr ||
      sel.range_of_key == nullptr) {
    return cudaErrorInvalidValue;
  }
  if (max_keys == 0) return cudaSuccess;
  const dim3 grid((max_keys + kThreads - 1) / kThreads, num_heads);
  ExpandRowsKernel<<<grid, kThreads, 0, stream>>>(sel, row_index, row_index_stride);
  return cudaGetLastError();
}

}  // namespace squeeze::gpu
