// Load-balanced sparse decode attention over kept key ranges (see sparse_decode_attention.cuh).
#include <algorithm>

#include "kernels/attention_core.cuh"
#include "kernels/dispatch.cuh"
#include "kernels/sparse_decode_attention.cuh"

namespace squeeze::gpu {
namespace {

using detail::kThreads;
static_assert(kSparseMinChunkKeys % kSparseKeyIndexStep == 0 &&
                  kSparseMaxChunkKeys % kSparseKeyIndexStep == 0,
              "chunks must start at indexed keys");

template <int D, int G>
constexpr size_t SparseSmemBytes() {
  return detail::CoreSmem<D, G>::kBytes + size_t{kSparseMaxChunkKeys} * sizeof(int);
}

template <int D, int G>
__global__ void __launch_bounds__(kThreads, 2) SparseDecodeKernel(const SparseDecodeParams p) {
  using Smem = detail::CoreSmem<D, G>;
  static_assert(2 * (kSparseMaxChunkKeys + 1) * sizeof(int) <= Smem::kStageBytes,
                "range staging must fit the stage area");
  extern __shared__ __align__(128) char smem[];
  __shared__ int head_s[4];  // bh, first kept key, keys, ranges of the current chunk
  int* rows_s = reinterpret_cast<int*>(smem + Smem::kBytes);  // [kSparseMaxChunkKeys]
  // Before each chunk's pipeline starts, its ranges are staged in the (then idle) stage area.
  int* kb_s = reinterpret_cast<int*>(smem);    // [kSparseMaxChunkKeys + 1]
  int* rb_s = kb_s + kSparseMaxChunkKeys + 1;  // [kSparseMaxChunkKeys + 1]

  const SqueezeSelection& sel = p.sel;
  const int num_heads = p.batch * p.num_kv_heads;
  const int chunk_keys = sel.chunk_info[0];
  const int num_chunks = min(sel.chunk_info[1], p.max_chunks);
  detail::DecodeCore<D, G> core(smem);

  for (int chunk = blockIdx.x; chunk < num_chunks; chunk += gridDim.x) {
    // 1. The head owning this chunk (chunk_begin[bh] <= chunk < chunk_begin[bh + 1]) and its
    //    counts, all loaded in one round trip.
    for (int i = threadIdx.x; i < num_heads; i += kThreads) {
      const int first = sel.chunk_begin[i], end = sel.chunk_begin[i + 1];
      const int kept = sel.kept_keys[i], ranges = sel.num_ranges[i];
      if (first <= chunk && chunk < end) {
        const int k0 = (chunk - first) * chunk_keys;
        head_s[0] = i;
        head_s[1] = k0;                          // first kept key of the chunk
        head_s[2] = min(chunk_keys, kept - k0);  // keys in the chunk
        head_s[3] = ranges;
      }
    }
    __syncthreads();
    const int bh = head_s[0], k0 = head_s[1], n = head_s[2], num_ranges = head_s[3];
    const int32_t* key_begin =
        sel.range_key_begin + static_cast<size_t>(bh) * (sel.range_stride + 1);
    const int32_t* row_begin = sel.range_row_begin + static_cast<size_t>(bh) * sel.range_stride;

    // 2. The range holding key k0 (a multiple of kSparseKeyIndexStep) and q, in one round trip.
    const int r0 =
        sel.range_of_key[static_cast<size_t>(bh) * sel.key_index_stride + k0 / kSparseKeyIndexStep];
    const int b = bh / p.num_kv_heads, h = bh % p.num_kv_heads;
    core.LoadQ(p.q + (static_cast<size_t>(b) * p.num_q_heads + h * G) * D,
               p.scale * detail::kLog2e);

    // 3. Stage the chunk's ranges (at most n of them: every range holds >= 1 key).
    const int nr = min(num_ranges - r0, n);
    for (int i = threadIdx.x; i < nr; i += kThreads) {
      kb_s[i] = key_begin[r0 + i];
      rb_s[i] = row_begin[r0 + i];
    }
    __syncthreads();

    // 4. Storage row of every kept key of the chunk (binary search in the staged ranges).
    for (int i = threadIdx.x; i < n; i += kThreads) {
      const int key = k0 + i;
      int a = 0, z = nr;  // kb_s[a] <= key; answer in [a, z)
      while (z - a > 1) {
        const int mid = (a + z) >> 1;
        if (kb_s[mid] <= key) {
          a = mid;
        } else {
          z = mid;
        }
      }
      rows_s[i] = rb_s[a] + (key - kb_s[a]);
    }
    __syncthreads();  // rows and q ready; the staged ranges are dead (the stage area is free)

    const SqueezeHeadDesc& hd = p.heads[bh];
    core.Attend(hd.k, hd.v, n, detail::SmemRows{rows_s});
    core.Finish(p.partial_out + static_cast<size_t>(chunk) * G * D,
                p.partial_lse + static_cast<size_t>(chunk) * G);  // ends with a barrier
  }
}

template <int D, int G>
cudaError_t PrepareSparse(size_t* smem_bytes) {
  *smem_bytes = SparseSmemBytes<D, G>();
  return cudaFuncSetAttribute(SparseDecodeKernel<D, G>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(*smem_bytes));
}

}  // namespace

cudaError_t SparseDecodeConcurrentCtas(int head_dim, int group_size, int* ctas) {
  return detail::DispatchHeadDimGroup(head_dim, group_size, [&](auto d, auto g) {
    constexpr int D = decltype(d)::value, G = decltype(g)::value;
    size_t smem = 0;
    cudaError_t e = PrepareSparse<D, G>(&smem);
    if (e != cudaSuccess) return e;
    return detail::ConcurrentCtas(SparseDecodeKernel<D, G>, kThreads, smem, ctas);
  });
}

cudaError_t LaunchSparseDecodeAttention(const SparseDecodeParams& p, cudaStream_t stream) {
  const SqueezeSelection& s = p.sel;
  if (p.batch <= 0 || p.num_kv_heads <= 0 || p.num_q_heads % p.num_kv_heads != 0 ||
      p.q == nullptr || p.heads == nullptr || s.range_row_begin == nullptr ||
      s.range_key_begin == nullptr || s.num_ranges == nullptr || s.kept_keys == nullptr ||
      s.chunk_begin == nullptr || s.chunk_info == nullptr || s.range_of_key == nullptr ||
      s.key_index_stride <= 0 || p.partial_out == nullptr || p.partial_lse == nullptr ||
      p.max_chunks <= 0 || p.grid <= 0) {
    return cudaErrorInvalidValue;
  }
  return detail::DispatchHeadDimGroup(
      p.head_dim, p.num_q_heads / p.num_kv_heads, [&](auto d, auto g) {
        constexpr int D = decltype(d)::value, G = decltype(g)::value;
        size_t smem = 0;
        cudaError_t e = PrepareSparse<D, G>(&smem);
        if (e != cudaSuccess) return e;
        SparseDecodeKernel<D, G><<<std::min(p.grid, p.max_chunks), kThreads, smem, stream>>>(p);
        return cudaGetLastError();
      });
}

}  // namespace squeeze::gpu
