// Dense split-KV decode attention and the LSE combine kernel (see decode_attention.cuh).
#include <algorithm>

#include "kernels/attention/decode_attention.cuh"
#include "kernels/attention/decode_core.cuh"
#include "kernels/common/dispatch.cuh"

namespace squeeze::gpu {
namespace {

using detail::kThreads;

constexpr int kMinKeysPerSplit = 256;

// Grid (max_splits + tail splits, Hkv, B): CTA (s, h, b) attends heads [h*group, h*group + group)
// of sequence b to its split s (G: group padded, detail::PaddedGroup): the plan's splits of kv[b],
// then the tail plan's splits of tail[b]. Splits past their key set's length exit at once, except
// that an entry's only split (one split in all) writes the empty partial (zero output, lse -inf),
// so a single-split launch may write the final output directly.
template <int D, int G>
__global__ void __launch_bounds__(kThreads, detail::CoreMinBlocks<G>())
    DenseDecodeKernel(const DecodeAttentionParams p) {
  extern __shared__ __align__(128) char smem[];
  const int split = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int group = p.num_q_heads / p.num_kv_heads;
  const bool in_tail = split >= p.plan.max_splits;
  const DecodeKv kv = in_tail ? p.tail[b] : p.kv[b];
  const int kps = in_tail ? p.tail_plan.keys_per_split : p.plan.keys_per_split;
  const int start = (in_tail ? split - p.plan.max_splits : split) * kps;
  if (start >= kv.len && gridDim.x > 1) return;
  const int n = max(min(kv.len - start, kps), 0);

  detail::DecodeCore<D, G> core(smem);
  core.LoadQ(p.q + (static_cast<size_t>(b) * p.num_q_heads + h * group) * D,
             p.scale * detail::kLog2e, group);
  const size_t row0 = static_cast<size_t>(h) * kv.head_stride + static_cast<size_t>(start) * D;
  core.Attend(kv.k + row0, kv.v + row0, n, detail::ContiguousRows{});
  const size_t slot = (static_cast<size_t>(b) * gridDim.y + h) * gridDim.x + split;
  core.Finish(p.partial_out + slot * group * D, p.partial_lse + slot * group, group);
}

constexpr int kCombineThreads = 256;

template <typename T>
__device__ __forceinline__ void StoreOut(T* dst, float v);
template <>
__device__ __forceinline__ void StoreOut<float>(float* dst, float v) {
  *dst = v;
}
template <>
__device__ __forceinline__ void StoreOut<bf16>(bf16* dst, float v) {
  *dst = __float2bfloat16_rn(v);
}

// Grid (Hq, B), 256 threads: the threads form `groups` = floor(256 / (D/4)) groups of D/4 lanes
// (at d = 96 the last 16 threads take no partial); group j takes every groups-th partial (float4
// per lane), then the groups are summed through shared memory.
template <typename OutT>
__global__ void __launch_bounds__(kCombineThreads) CombineKernel(const CombineParams p) {
  __shared__ __align__(16) float red_o[kCombineThreads * 4];
  __shared__ float red_l[kCombineThreads];
  __shared__ float warp_max[kCombineThreads / 32];
  const int qh = blockIdx.x, b = blockIdx.y;
  const int D = p.head_dim, Hkv = p.num_kv_heads, G = p.num_q_heads / p.num_kv_heads;
  const int h = qh / G, g = qh % G, bh = b * Hkv + h;

  // Dense partials: nd of kv[b] at slots dslot0 + [0, nd), then nt of the tail at dslot0 +
  // dense_plan.max_splits + [0, nt).
  int nd = 0, nt = 0;
  size_t dslot0 = 0;
  if (p.dense_out != nullptr) {
    const auto splits = [](int len, const DecodeSplitPlan& plan) {
      const int kps = plan.keys_per_split;
      return len > 0 ? min((len + kps - 1) / kps, plan.max_splits) : 0;
    };
    nd = splits(p.dense_kv[b].len, p.dense_plan);
    int per_entry = p.dense_plan.max_splits;
    if (p.dense_tail != nullptr) {
      nt = splits(p.dense_tail[b].len, p.dense_tail_plan);
      per_entry += p.dense_tail_plan.max_splits;
    }
    dslot0 = static_cast<size_t>(bh) * per_entry;
  }
  const int ndt = nd + nt;
  const size_t tail_shift = static_cast<size_t>(p.dense_plan.max_splits) - nd;
  int ns = 0;
  size_t sslot0 = 0, sstride = 1;  // sparse partial i is slot (sslot0 + i) * sstride (+ b)
  size_t sshift = 0;
  if (p.sparse_chunk_begin != nullptr) {
    const int first = p.sparse_chunk_begin[bh];
    int end = p.sparse_chunk_begin[bh + 1];
    if (p.sparse_max_chunks > 0) end = min(end, p.sparse_max_chunks);
    ns = max(end - first, 0);
    sslot0 = first;
  } else if (p.shared_chunk_begin != nullptr) {
    const int first = p.shared_chunk_begin[h];
    ns = max(p.shared_chunk_begin[h + 1] - first, 0);
    sslot0 = first;
    sstride = p.batch;
    sshift = b;
  }
  const int n = ndt + ns;
  auto dense_slot = [&](int j) { return dslot0 + j + (j < nd ? 0 : tail_shift); };
  auto sparse_slot = [&](int i) { return (sslot0 + i) * sstride + sshift; };
  // Partial j: dense slots first (the tail's last), then sparse slots.
  auto slot_lse = [&](int j) -> float {
    return j < ndt ? p.dense_lse[dense_slot(j) * G + g]
                   : p.sparse_lse[sparse_slot(j - ndt) * G + g];
  };
  auto slot_out = [&](int j) -> const float* {
    return j < ndt ? p.dense_out + (dense_slot(j) * G + g) * D
                   : p.sparse_out + (sparse_slot(j - ndt) * G + g) * D;
  };

  float mx = -INFINITY;
  for (int j = threadIdx.x; j < n; j += kCombineThreads) mx = fmaxf(mx, slot_lse(j));
  mx = detail::WarpMax(mx);
  if ((threadIdx.x & 31) == 0) warp_max[threadIdx.x >> 5] = mx;
  __syncthreads();
  mx = warp_max[0];
#pragma unroll
  for (int w = 1; w < kCombineThreads / 32; ++w) mx = fmaxf(mx, warp_max[w]);

  const int lanes = D / 4, groups = kCombineThreads / lanes;
  const int lane = threadIdx.x % lanes, grp = threadIdx.x / lanes;
  float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  float l = 0.0f;
  if (mx != -INFINITY && grp < groups) {
#pragma unroll 4
    for (int j = grp; j < n; j += groups) {
      const float w = detail::Exp2(slot_lse(j) - mx);  // 0 for an empty partial
      const float4 x = reinterpret_cast<const float4*>(slot_out(j))[lane];
      l += w;
      o.x = fmaf(w, x.x, o.x);
      o.y = fmaf(w, x.y, o.y);
      o.z = fmaf(w, x.z, o.z);
      o.w = fmaf(w, x.w, o.w);
    }
  }
  reinterpret_cast<float4*>(red_o)[threadIdx.x] = o;
  if (lane == 0 && grp < groups) red_l[grp] = l;
  __syncthreads();
  if (threadIdx.x < D) {
    const int i = threadIdx.x;  // output dim; lives in lane i / 4, component i % 4
    float sum_o = 0.0f, sum_l = 0.0f;
    for (int j = 0; j < groups; ++j) {
      sum_o += red_o[(j * lanes + i / 4) * 4 + i % 4];
      sum_l += red_l[j];
    }
    const size_t row = static_cast<size_t>(b) * p.num_q_heads + qh;
    StoreOut(static_cast<OutT*>(p.out) + row * D + i, sum_l > 0.0f ? sum_o / sum_l : 0.0f);
    if (i == 0 && p.lse != nullptr) {
      p.lse[row] = sum_l > 0.0f ? (mx + log2f(sum_l)) * detail::kLn2 : -INFINITY;
    }
  }
}

bool ShapeOk(int batch, int hq, int hkv, int d) {
  return batch > 0 && hq > 0 && hkv > 0 && hq % hkv == 0 && (d == 64 || d == 96 || d == 128) &&
         batch <= 65535 && hkv <= 65535;
}

template <int D, int G>
cudaError_t PrepareDense(size_t* smem_bytes) {
  *smem_bytes = detail::CoreSmem<D, G>::kBytes;
  return cudaFuncSetAttribute(DenseDecodeKernel<D, G>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              static_cast<int>(*smem_bytes));
}

}  // namespace

cudaError_t DecodeAttentionConcurrentCtas(int head_dim, int group_size, int* ctas) {
  return detail::DispatchHeadDimGroup(head_dim, group_size, [&](auto d, auto g) {
    constexpr int D = decltype(d)::value, G = decltype(g)::value;
    size_t smem = 0;
    cudaError_t e = PrepareDense<D, G>(&smem);
    if (e != cudaSuccess) return e;
    return detail::ConcurrentCtas(DenseDecodeKernel<D, G>, kThreads, smem, ctas);
  });
}

DecodeSplitPlan PlanDecodeSplits(int batch, int num_kv_heads, int max_len, int concurrent_ctas,
                                 int waves) {
  DecodeSplitPlan plan;
  if (max_len <= 0) {
    plan.keys_per_split = detail::kTileKeys;
    plan.max_splits = 1;
    return plan;
  }
  // At most `waves` full waves of CTAs: splits rounded down, and rounding keys_per_split up
  // only lowers the count, so the last wave is (nearly) full instead of a small tail.
  const int64_t heads = std::max<int64_t>(1, int64_t{batch} * num_kv_heads);
  const int64_t target = std::max(waves, 1) * std::max<int64_t>(concurrent_ctas, 1);
  const int64_t splits = std::max<int64_t>(1, target / heads);
  int64_t kps = (max_len + splits - 1) / splits;
  kps = (kps + detail::kTileKeys - 1) / detail::kTileKeys * detail::kTileKeys;
  kps = std::max<int64_t>(kps, kMinKeysPerSplit);
  plan.keys_per_split = static_cast<int>(kps);
  plan.max_splits = static_cast<int>((max_len + kps - 1) / kps);
  return plan;
}

cudaError_t LaunchDecodeAttentionPartials(const DecodeAttentionParams& p, cudaStream_t stream) {
  const auto plan_ok = [](const DecodeSplitPlan& plan) {
    return plan.keys_per_split > 0 && plan.keys_per_split % detail::kTileKeys == 0 &&
           plan.max_splits > 0;
  };
  if (!ShapeOk(p.batch, p.num_q_heads, p.num_kv_heads, p.head_dim) || p.q == nullptr ||
      p.kv == nullptr || p.partial_out == nullptr || p.partial_lse == nullptr || !plan_ok(p.plan) ||
      (p.tail != nullptr && !plan_ok(p.tail_plan)) || DecodeSplitsPerEntry(p) > 65535) {
    return cudaErrorInvalidValue;
  }
  return detail::DispatchHeadDimGroup(
      p.head_dim, p.num_q_heads / p.num_kv_heads, [&](auto d, auto g) {
        constexpr int D = decltype(d)::value, G = decltype(g)::value;
        size_t smem = 0;
        cudaError_t e = PrepareDense<D, G>(&smem);
        if (e != cudaSuccess) return e;
        const dim3 grid(DecodeSplitsPerEntry(p), p.num_kv_heads, p.batch);
        DenseDecodeKernel<D, G><<<grid, kThreads, smem, stream>>>(p);
        return cudaGetLastError();
      });
}

cudaError_t LaunchCombineAttention(const CombineParams& p, cudaStream_t stream) {
  if (!ShapeOk(p.batch, p.num_q_heads, p.num_kv_heads, p.head_dim) || p.out == nullptr ||
      p.num_q_heads > 65535 ||
      (p.dense_out != nullptr && (p.dense_lse == nullptr || p.dense_kv == nullptr)) ||
      (p.dense_tail != nullptr && (p.dense_out == nullptr || p.dense_tail_plan.max_splits <= 0 ||
                                   p.dense_tail_plan.keys_per_split <= 0)) ||
      ((p.sparse_chunk_begin != nullptr || p.shared_chunk_begin != nullptr) &&
       (p.sparse_out == nullptr || p.sparse_lse == nullptr)) ||
      (p.sparse_chunk_begin != nullptr && p.shared_chunk_begin != nullptr)) {
    return cudaErrorInvalidValue;
  }
  const dim3 grid(p.num_q_heads, p.batch);
  if (p.out_bf16) {
    CombineKernel<bf16><<<grid, kCombineThreads, 0, stream>>>(p);
  } else {
    CombineKernel<float><<<grid, kCombineThreads, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

size_t DecodeAttentionWorkspaceBytes(int batch, int num_q_heads, int head_dim,
                                     const DecodeSplitPlan& plan, int tail_splits) {
  const size_t rows =
      static_cast<size_t>(batch) * num_q_heads * (plan.max_splits + std::max(tail_splits, 0));
  return detail::AlignUp(rows * head_dim * sizeof(float), 256) +
         detail::AlignUp(rows * sizeof(float), 256);
}

cudaError_t LaunchDecodeAttention(const DecodeAttentionParams& p, void* workspace, void* out,
                                  bool out_bf16, float* lse, cudaStream_t stream) {
  if (workspace == nullptr || out == nullptr) return cudaErrorInvalidValue;
  DecodeAttentionParams q = p;
  const int per_entry = DecodeSplitsPerEntry(p);
  const size_t rows = static_cast<size_t>(p.batch) * p.num_q_heads * per_entry;
  q.partial_out = static_cast<float*>(workspace);
  q.partial_lse = reinterpret_cast<float*>(static_cast<char*>(workspace) +
                                           detail::AlignUp(rows * p.head_dim * sizeof(float), 256));
  // One split per entry and fp32 output without lse: the partial (slot b * Hkv + h, [G][d]) is
  // the output row block [b][h * G, h * G + G) itself, so no combine.
  if (per_entry == 1 && !out_bf16 && lse == nullptr) {
    q.partial_out = static_cast<float*>(out);
    return LaunchDecodeAttentionPartials(q, stream);
  }
  cudaError_t err = LaunchDecodeAttentionPartials(q, stream);
  if (err != cudaSuccess) return err;
  CombineParams c;
  c.batch = p.batch;
  c.num_q_heads = p.num_q_heads;
  c.num_kv_heads = p.num_kv_heads;
  c.head_dim = p.head_dim;
  c.dense_kv = p.kv;
  c.dense_plan = p.plan;
  c.dense_tail = p.tail;
  c.dense_tail_plan = p.tail_plan;
  c.dense_out = q.partial_out;
  c.dense_lse = q.partial_lse;
  c.out = out;
  c.out_bf16 = out_bf16;
  c.lse = lse;
  return LaunchCombineAttention(c, stream);
}

}  // namespace squeeze::gpu
