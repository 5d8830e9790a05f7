// Load-balanced sparse decode attention over kept key ranges (see sparse_decode_attention.cuh).
#include <algorithm>

#include "kernels/attention/decode_core.cuh"
#include "kernels/attention/sparse_decode_attention.cuh"
#include "kernels/common/dispatch.cuh"

namespace squeeze::gpu {
namespace {

using detail::BlockExclusiveScan;
using detail::kThreads;
using detail::kWarps;
static_assert(kSparseMinChunkKeys % kSparseKeyIndexStep == 0 &&
                  kSparseMaxChunkKeys % kSparseKeyIndexStep == 0,
              "chunks must start at indexed keys");

template <int D, int G>
constexpr size_t SparseSmemBytes() {
  return detail::CoreSmem<D, G>::kBytes + size_t{kSparseMaxChunkKeys} * sizeof(int);
}

// Exact merge of the partials [first, first + n) of head (b, h) into out / lse for its `group`
// query heads (partial slot j holds [group][D] and lse2 [group]). All threads; scratch: free
// shared memory (the stage area). The group's group * D / 4 output float4s ("lanes") are taken
// in passes of at most kThreads; within a pass of `span` lanes the threads form
// kThreads / span groups that take every groups-th partial, summed through shared memory.
template <int D, typename OutT>
__device__ void MergeHead(const SparseDecodeParams& p, int b, int h, int group, int first, int n,
                          char* scratch) {
  constexpr int kQuads = D / 4;  // float4s per output row
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float4* red_o = reinterpret_cast<float4*>(scratch);                // [kThreads]
  float* red_l = reinterpret_cast<float*>(scratch + kThreads * 16);  // [kThreads]
  float* head_max = red_l + kThreads;                                // [group]
  const float* lse2 = p.partial_lse + static_cast<size_t>(first) * group;

  // Max lse2 per query head: warp w reduces heads w, w + kWarps, ...
  for (int g = warp; g < group; g += kWarps) {
    float m = -INFINITY;
    for (int j = lane; j < n; j += 32) m = fmaxf(m, __ldcg(lse2 + j * group + g));
    m = detail::WarpMax(m);
    if (lane == 0) head_max[g] = m;
  }
  __syncthreads();

  const int lanes = group * kQuads;
  const int span = min(lanes, kThreads), groups = kThreads / span;
  const int grp = threadIdx.x / span;
  for (int pass0 = 0; pass0 < lanes; pass0 += span) {  // one pass unless group * D > 4 * kThreads
    const int lt = pass0 + threadIdx.x % span;
    const bool active = grp < groups && lt < lanes;
    float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    float l = 0.0f;
    if (active) {
      const int g = lt / kQuads;
      const float mx = head_max[g];
      if (mx != -INFINITY) {
        const float4* parts = reinterpret_cast<const float4*>(p.partial_out) +
                              static_cast<size_t>(first) * group * kQuads + lt;
#pragma unroll 4
        for (int j = grp; j < n; j += groups) {
          const float w = detail::Exp2(__ldcg(lse2 + j * group + g) - mx);  // 0: empty partial
          const float4 x = __ldcg(parts + static_cast<size_t>(j) * group * kQuads);
          l += w;
          o.x = fmaf(w, x.x, o.x);
          o.y = fmaf(w, x.y, o.y);
          o.z = fmaf(w, x.z, o.z);
          o.w = fmaf(w, x.w, o.w);
        }
      }
    }
    red_o[threadIdx.x] = o;
    red_l[threadIdx.x] = l;
    __syncthreads();
    // Elements [4 pass0, 4 (pass0 + span)) of the group's [group][D] output, where they exist.
    for (int e = threadIdx.x; e < 4 * span; e += kThreads) {
      const int at = pass0 + e / 4;
      if (at >= lanes) continue;
      const int gg = at / kQuads, i = (at % kQuads) * 4 + (e & 3);
      float sum_o = 0.0f, sum_l = 0.0f;
      for (int j = 0; j < groups; ++j) {
        const float4 v = red_o[j * span + e / 4];
        sum_o += (e & 3) == 0 ? v.x : (e & 3) == 1 ? v.y : (e & 3) == 2 ? v.z : v.w;
        sum_l += red_l[j * span + e / 4];
      }
      const size_t row = static_cast<size_t>(b) * p.num_q_heads + h * group + gg;
      const float v = sum_l > 0.0f ? sum_o / sum_l : 0.0f;
      if constexpr (sizeof(OutT) == 2) {
        static_cast<OutT*>(p.out)[row * D + i] = __float2bfloat16_rn(v);
      } else {
        static_cast<OutT*>(p.out)[row * D + i] = v;
      }
      if (i == 0 && p.lse != nullptr) {
        p.lse[row] = sum_l > 0.0f ? (head_max[gg] + log2f(sum_l)) * detail::kLn2 : -INFINITY;
      }
    }
    __syncthreads();  // red_o / red_l reused by the next pass; the scratch is free on return
  }
}

// Keys of head i the kernel attends: its kept fixed-context keys and its sequence's dynamic
// rows.
__device__ __forceinline__ void HeadKeys(const SparseDecodeParams& p, int i, long long* kept,
                                         long long* dyn) {
  *kept = p.sel.kept_keys[i];
  *dyn = p.dynamic_kv != nullptr ? max(p.dynamic_kv[i / p.num_kv_heads].len, 0) : 0;
}

// Chunks of a head with kept + dyn keys: kept-key chunks, then dynamic chunks; at least one,
// so that every head's output is written.
__device__ __forceinline__ long long HeadChunks(long long kept, long long dyn, long long chunk) {
  return max((kept + chunk - 1) / chunk + (dyn + chunk - 1) / chunk, 1ll);
}

struct WorkPlan {
  int chunk_keys;  // keys per chunk
  int count;       // chunks over all heads
};

// The work plan, computed alike by every CTA from the selection: one chunk size for all heads,
// so that the chunks fill whole waves of target_chunks (every head adds at most two partial
// chunks, so aim at waves x target - 2 heads full ones), more waves only when a chunk would
// exceed kSparseMaxChunkKeys; doubled (up to that bound) should the count exceed max_chunks.
__device__ WorkPlan PlanWork(const SparseDecodeParams& p, int num_heads,
                             unsigned long long* scan_s) {
  unsigned long long local = 0, total_keys = 0;
  for (int i = threadIdx.x; i < num_heads; i += kThreads) {
    long long kept, dyn;
    HeadKeys(p, i, &kept, &dyn);
    local += kept + dyn;
  }
  BlockExclusiveScan(local, &total_keys, scan_s);
  const long long target = max(p.target_chunks, 1);
  long long chunk = kSparseMaxChunkKeys;
  for (long long waves = 1; waves <= 64; ++waves) {
    const long long usable = max(waves * target - 2ll * num_heads, max(waves * target / 2, 1ll));
    chunk = (static_cast<long long>(total_keys) + usable - 1) / usable;
    chunk = (chunk + kSparseKeyIndexStep - 1) / kSparseKeyIndexStep * kSparseKeyIndexStep;
    if (chunk <= kSparseMaxChunkKeys) break;
  }
  chunk = min(max(chunk, static_cast<long long>(kSparseMinChunkKeys)),
              static_cast<long long>(kSparseMaxChunkKeys));
  unsigned long long count = 0;
  for (;;) {  // uniform: every thread sees the same chunk and count
    local = 0;
    for (int i = threadIdx.x; i < num_heads; i += kThreads) {
      long long kept, dyn;
      HeadKeys(p, i, &kept, &dyn);
      local += HeadChunks(kept, dyn, chunk);
    }
    BlockExclusiveScan(local, &count, scan_s);
    if (count <= static_cast<unsigned long long>(p.max_chunks) || chunk >= kSparseMaxChunkKeys) {
      break;
    }
    chunk = min(2 * chunk, static_cast<long long>(kSparseMaxChunkKeys));
  }
  return {static_cast<int>(chunk), static_cast<int>(count)};
}

// CTA 0: the plan into the selection (chunk_begin, chunk_info), for statistics and tests.
__device__ void RecordPlan(const SparseDecodeParams& p, int num_heads, const WorkPlan& plan,
                           unsigned long long* scan_s) {
  unsigned long long carry = 0;
  for (int base = 0; base < num_heads; base += kThreads) {
    const int i = base + threadIdx.x;
    unsigned long long n = 0;
    if (i < num_heads) {
      long long kept, dyn;
      HeadKeys(p, i, &kept, &dyn);
      n = HeadChunks(kept, dyn, plan.chunk_keys);
    }
    unsigned long long batch_total = 0;
    const unsigned long long before = BlockExclusiveScan(n, &batch_total, scan_s);
    if (i < num_heads) p.sel.chunk_begin[i] = static_cast<int32_t>(carry + before);
    carry += batch_total;
  }
  if (threadIdx.x == 0) {
    p.sel.chunk_begin[num_heads] = plan.count;
    p.sel.chunk_info[0] = plan.chunk_keys;
    p.sel.chunk_info[1] = plan.count;
    p.sel.chunk_info[2] = plan.count > p.max_chunks ? 1 : 0;
  }
}

// G: the group padded (detail::PaddedGroup); the real group size comes from the params.
template <int D, int G>
__global__ void __launch_bounds__(kThreads, detail::CoreMinBlocks<G>())
    SparseDecodeKernel(const SparseDecodeParams p) {
  using Smem = detail::CoreSmem<D, G>;
  static_assert(2 * (kSparseMaxChunkKeys + 1) * sizeof(int) <= Smem::kStageBytes,
                "range staging must fit the stage area");
  static_assert(kThreads * 20 + G * 4 <= Smem::kStageBytes, "merge scratch must fit");
  extern __shared__ __align__(128) char smem[];
  // bh, chunk within the head, kept keys, ranges, the head's chunks, its first chunk.
  __shared__ int head_s[6];
  __shared__ int is_last;
  int* rows_s = reinterpret_cast<int*>(smem + Smem::kBytes);  // [kSparseMaxChunkKeys]
  // Before each chunk's pipeline starts, its ranges are staged in the (then idle) stage area.
  int* kb_s = reinterpret_cast<int*>(smem);    // [kSparseMaxChunkKeys + 1]
  int* rb_s = kb_s + kSparseMaxChunkKeys + 1;  // [kSparseMaxChunkKeys + 1]

  // Launched as a programmatic dependent: wait for the lookup's results (a no-op otherwise).
  asm volatile("griddepcontrol.wait;" ::: "memory");
  __shared__ unsigned long long scan_s[kWarps];
  const SqueezeSelection& sel = p.sel;
  const int num_heads = p.batch * p.num_kv_heads;
  const int group = p.num_q_heads / p.num_kv_heads;  // <= G
  const WorkPlan plan = PlanWork(p, num_heads, scan_s);
  const int chunk_keys = plan.chunk_keys;
  const int num_chunks = min(plan.count, p.max_chunks);
  detail::DecodeCore<D, G> core(smem);

  for (int chunk = blockIdx.x; chunk < num_chunks; chunk += gridDim.x) {
    // 1. The head owning this chunk (the per-head chunk counts' prefix sums) and its counts.
    unsigned long long carry = 0;
    for (int base = 0; base < num_heads; base += kThreads) {
      const int i = base + threadIdx.x;
      long long kept = 0, dyn = 0, n = 0;
      int ranges = 0;
      if (i < num_heads) {
        HeadKeys(p, i, &kept, &dyn);
        ranges = sel.num_ranges[i];
        n = HeadChunks(kept, dyn, chunk_keys);
      }
      unsigned long long batch_total = 0;
      const long long first =
          static_cast<long long>(carry + BlockExclusiveScan(n, &batch_total, scan_s));
      if (i < num_heads && first <= chunk && chunk < first + n) {
        head_s[0] = i;
        head_s[1] = static_cast<int>(chunk - first);
        head_s[2] = static_cast<int>(kept);
        head_s[3] = ranges;
        head_s[4] = static_cast<int>(min(first + n, static_cast<long long>(num_chunks)) - first);
        head_s[5] = static_cast<int>(first);
      }
      carry += batch_total;
      if (carry > static_cast<unsigned long long>(chunk)) break;  // uniform
    }
    __syncthreads();
    const int bh = head_s[0], local = head_s[1], kept = head_s[2], num_ranges = head_s[3];
    const int head_chunks = head_s[4], first_chunk = head_s[5];
    const int b = bh / p.num_kv_heads, h = bh % p.num_kv_heads;
    const int fixed_chunks = (kept + chunk_keys - 1) / chunk_keys;
    const float* q = p.q + (static_cast<size_t>(b) * p.num_q_heads + h * group) * D;

    if (local < fixed_chunks) {  // kept fixed-context keys [k0, k0 + n)
      const int k0 = local * chunk_keys, n = min(chunk_keys, kept - k0);
      const int32_t* key_begin =
          sel.range_key_begin + static_cast<size_t>(bh) * (sel.range_stride + 1);
      const int32_t* row_begin = sel.range_row_begin + static_cast<size_t>(bh) * sel.range_stride;
      // 2. The range holding key k0 (a multiple of kSparseKeyIndexStep), in flight with q.
      const int r0 = sel.range_of_key[static_cast<size_t>(bh) * sel.key_index_stride +
                                      k0 / kSparseKeyIndexStep];
      core.LoadQ(q, p.scale * detail::kLog2e, group);
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
    } else {  // the sequence's dynamic rows [k0, k0 + n), contiguous (none: an empty partial)
      core.LoadQ(q, p.scale * detail::kLog2e, group);
      int n = 0;
      const bf16* k = nullptr;
      const bf16* v = nullptr;
      if (p.dynamic_kv != nullptr) {
        const DecodeKv kv = p.dynamic_kv[b];
        const int k0 = (local - fixed_chunks) * chunk_keys;
        n = max(0, min(chunk_keys, kv.len - k0));
        const size_t row0 = static_cast<size_t>(h) * kv.head_stride + static_cast<size_t>(k0) * D;
        k = kv.k + row0;
        v = kv.v + row0;
      }
      core.Attend(k, v, n, detail::ContiguousRows{});
    }
    core.Finish(p.partial_out + static_cast<size_t>(chunk) * group * D,
                p.partial_lse + static_cast<size_t>(chunk) * group, group);  // ends with a barrier

    // 5. The CTA finishing the head's last chunk merges its partials.
    if (detail::LastArrival(p.done + bh, head_chunks, &is_last)) {
      if (p.out_bf16) {
        MergeHead<D, bf16>(p, b, h, group, first_chunk, head_chunks, smem);
      } else {
        MergeHead<D, float>(p, b, h, group, first_chunk, head_chunks, smem);
      }
      if (threadIdx.x == 0) p.done[bh] = 0;  // every chunk of the head has arrived
    }
  }
  // Off the critical path of CTA 0's first chunk: the plan, for statistics and tests.
  if (blockIdx.x == 0) RecordPlan(p, num_heads, plan, scan_s);
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
      p.target_chunks <= 0 || s.key_index_stride <= 0 || p.partial_out == nullptr ||
      p.partial_lse == nullptr || p.done == nullptr || p.out == nullptr || p.max_chunks <= 0 ||
      p.grid <= 0) {
    return cudaErrorInvalidValue;
  }
  return detail::DispatchHeadDimGroup(
      p.head_dim, p.num_q_heads / p.num_kv_heads, [&](auto d, auto g) {
        constexpr int D = decltype(d)::value, G = decltype(g)::value;
        size_t smem = 0;
        cudaError_t e = PrepareSparse<D, G>(&smem);
        if (e != cudaSuccess) return e;
        cudaLaunchConfig_t config = {};
        config.gridDim = dim3(std::min(p.grid, p.max_chunks));
        config.blockDim = dim3(kThreads);
        config.dynamicSmemBytes = smem;
        config.stream = stream;
        cudaLaunchAttribute attribute;
        attribute.id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attribute.val.programmaticStreamSerializationAllowed = 1;
        config.attrs = &attribute;
        config.numAttrs = p.programmatic_launch ? 1 : 0;
        return cudaLaunchKernelEx(&config, SparseDecodeKernel<D, G>, p);
      });
}

}  // namespace squeeze::gpu
