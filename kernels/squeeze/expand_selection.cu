// Expansion of a selection into kept rows (see expand_selection.cuh).
#include "kernels/squeeze/expand_selection.cuh"

namespace squeeze::gpu {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    ExpandRowsKernel(const SqueezeSelection sel, int32_t* __restrict__ row_index,
                     int64_t row_index_stride) {
  const int bh = blockIdx.y;
  const int i = blockIdx.x * kThreads + threadIdx.x;
  if (i >= sel.kept_keys[bh]) return;
  const int32_t* key_begin = sel.range_key_begin + static_cast<size_t>(bh) * (sel.range_stride + 1);
  const int32_t* row_begin = sel.range_row_begin + static_cast<size_t>(bh) * sel.range_stride;
  const int num_ranges = sel.num_ranges[bh];
  int r =
      sel.range_of_key[static_cast<size_t>(bh) * sel.key_index_stride + i / kSparseKeyIndexStep];
  while (r + 1 < num_ranges && key_begin[r + 1] <= i) ++r;  // clusters hold ~20 keys: few steps
  row_index[bh * row_index_stride + i] = row_begin[r] + (i - key_begin[r]);
}

}  // namespace

cudaError_t LaunchExpandSelectionRows(const SqueezeSelection& sel, int num_heads, int max_keys,
                                      int32_t* row_index, int64_t row_index_stride,
                                      cudaStream_t stream) {
  if (num_heads <= 0 || num_heads > 65535 || max_keys < 0 || row_index_stride < max_keys ||
      row_index == nullptr || sel.kept_keys == nullptr || sel.range_key_begin == nullptr ||
      sel.range_row_begin == nullptr || sel.num_ranges == nullptr || sel.range_of_key == nullptr) {
    return cudaErrorInvalidValue;
  }
  if (max_keys == 0) return cudaSuccess;
  const dim3 grid((max_keys + kThreads - 1) / kThreads, num_heads);
  ExpandRowsKernel<<<grid, kThreads, 0, stream>>>(sel, row_index, row_index_stride);
  return cudaGetLastError();
}

}  // namespace squeeze::gpu
