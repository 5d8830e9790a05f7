#include "kernels/attention/kv_gather.cuh"

namespace squeeze::gpu {
namespace {

constexpr int kThreads = 256;

// grid (ceil(max_rows * vecs_per_row / kThreads), num_kv_heads): one thread per 16-byte vector.
__global__ void GatherKvRowsKernel(const bf16* __restrict__ k_src, const bf16* __restrict__ v_src,
                                   size_t src_head_stride, const int32_t* __restrict__ rows,
                                   const int32_t* __restrict__ head_begin, int head_dim,
                                   bf16* __restrict__ k_dst, bf16* __restrict__ v_dst,
                                   size_t dst_head_stride) {
  const int h = blockIdx.y;
  const int begin = head_begin[h];
  const int count = head_begin[h + 1] - begin;
  const int vecs = head_dim / 8;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (idx >= static_cast<int64_t>(count) * vecs) return;
  const int i = static_cast<int>(idx / vecs), c = static_cast<int>(idx % vecs);
  const int64_t src = h * src_head_stride + static_cast<int64_t>(rows[begin + i]) * head_dim;
  const int64_t dst = h * dst_head_stride + static_cast<int64_t>(i) * head_dim;
  reinterpret_cast<uint4*>(k_dst + dst)[c] = reinterpret_cast<const uint4*>(k_src + src)[c];
  reinterpret_cast<uint4*>(v_dst + dst)[c] = reinterpret_cast<const uint4*>(v_src + src)[c];
}

}  // namespace

cudaError_t LaunchGatherKvRows(const bf16* k_src, const bf16* v_src, size_t src_head_stride,
                               const int32_t* rows, const int32_t* head_begin, int num_kv_heads,
                               int max_rows, int head_dim, bf16* k_dst, bf16* v_dst,
                               size_t dst_head_stride, cudaStream_t stream) {
  if (num_kv_heads < 0 || max_rows < 0 || head_dim <= 0 || head_dim % 8 != 0 ||
      num_kv_heads > 65535) {
    return cudaErrorInvalidValue;
  }
  if (num_kv_heads == 0 || max_rows == 0) return cudaSuccess;
  if (k_src == nullptr || v_src == nullptr || rows == nullptr || head_begin == nullptr ||
      k_dst == nullptr || v_dst == nullptr) {
    return cudaErrorInvalidValue;
  }
  const int64_t work = static_cast<int64_t>(max_rows) * (head_dim / 8);
  const dim3 grid(static_cast<unsigned>((work + kThreads - 1) / kThreads), num_kv_heads);
  GatherKvRowsKernel<<<grid, kThreads, 0, stream>>>(k_src, v_src, src_head_stride, rows, head_begin,
                                                    head_dim, k_dst, v_dst, dst_head_stride);
  return cudaGetLastError();
}

}  // namespace squeeze::gpu
