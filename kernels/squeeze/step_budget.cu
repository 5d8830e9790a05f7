// The per-step budget threshold (see step_budget.cuh).
#include "kernels/squeeze/step_budget.cuh"

namespace squeeze::gpu {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kDigitBits = 8;
constexpr int kBins = 1 << kDigitBits;

// Visits every cluster (head h, cluster c) of sequence b with f(score bits, keys). Every lane of
// a warp runs the same iterations (`valid` false past a head's end), so warp intrinsics inside
// f see the full warp.
template <class F>
__device__ void ForEachCluster(const StepBudgetParams& p, int b, F&& f) {
  for (int h = 0; h < p.num_kv_heads; ++h) {
    const SqueezeHeadDesc& hd = p.heads[static_cast<size_t>(b) * p.num_kv_heads + h];
    const float* scores =
        p.scores + (static_cast<int64_t>(b) * p.num_kv_heads + h) * p.score_stride;
    for (int c0 = 0; c0 < hd.num_clusters; c0 += kThreads) {
      const int c = c0 + static_cast<int>(threadIdx.x);
      const bool valid = c < hd.num_clusters;
      f(valid, valid ? __float_as_uint(__ldg(scores + c)) : 0u,
        valid ? static_cast<unsigned>(__ldg(hd.sizes + c)) : 0u);
    }
  }
}

__global__ void __launch_bounds__(kThreads) StepBudgetKernel(const StepBudgetParams p) {
  __shared__ unsigned long long hist[kBins];
  __shared__ unsigned long long warp_sums[kWarps];
  __shared__ unsigned prefix_s, mask_s;
  __shared__ unsigned long long above_s, equal_s;
  const int b = blockIdx.x;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  // All the keys.
  unsigned long long local = 0;
  ForEachCluster(p, b, [&](bool, unsigned, unsigned keys) { local += keys; });
  for (int o = 16; o > 0; o >>= 1) local += __shfl_xor_sync(0xffffffffu, local, o);
  if (lane == 0) warp_sums[warp] = local;
  __syncthreads();
  unsigned long long total = 0;
  for (int w = 0; w < kWarps; ++w) total += warp_sums[w];
  const double budget = p.budget[b];
  if (!(budget > 0.0)) {
    if (threadIdx.x == 0) p.tau[b] = __int_as_float(0x7f800000);  // +inf: nothing kept
    return;
  }
  const double target = budget * static_cast<double>(total);
  if (target >= static_cast<double>(total)) {
    if (threadIdx.x == 0) p.tau[b] = __int_as_float(0xff800000);  // -inf: everything kept
    return;
  }

  // Radix select, most significant digit first: the keys above the clusters still in play
  // (`above`) stay <= target while above + their own keys > target.
  if (threadIdx.x == 0) {
    prefix_s = 0;
    mask_s = 0;
    above_s = 0;
  }
  for (int shift = 32 - kDigitBits; shift >= 0; shift -= kDigitBits) {
    for (int i = threadIdx.x; i < kBins; i += kThreads) hist[i] = 0;
    __syncthreads();
    const unsigned prefix = prefix_s, mask = mask_s;
    ForEachCluster(p, b, [&](bool valid, unsigned bits, unsigned keys) {
      const bool in_play = valid && (bits & mask) == prefix;
      const unsigned digit = in_play ? (bits >> shift) & (kBins - 1) : kBins;  // kBins: none
      const unsigned peers = __match_any_sync(0xffffffffu, digit);
      const unsigned sum = __reduce_add_sync(peers, keys);
      if (in_play && lane == __ffs(peers) - 1) atomicAdd(&hist[digit], sum);
    });
    __syncthreads();
    if (threadIdx.x == 0) {
      unsigned long long cum = above_s;
      int d = kBins - 1;
      for (; d > 0; --d) {
        if (static_cast<double>(cum + hist[d]) > target) break;
        cum += hist[d];
      }
      prefix_s = prefix | (static_cast<unsigned>(d) << shift);
      mask_s = mask | (static_cast<unsigned>(kBins - 1) << shift);
      above_s = cum;
      equal_s = hist[d];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    // The cut score v: keys > v are `above` (<= target), keys >= v are above + equal (> target).
    const float v = __uint_as_float(prefix_s);
    const double kept_at = static_cast<double>(above_s);
    const double kept_before = static_cast<double>(above_s + equal_s);
    const float minus_inf = __int_as_float(0xff800000);
    // Keeping the cut's clusters too: tau just below v keeps every score >= v.
    p.tau[b] = (kept_before - target) <= (target - kept_at) ? nextafterf(v, minus_inf) : v;
  }
}

}  // namespace

cudaError_t LaunchStepBudgetThreshold(const StepBudgetParams& p, cudaStream_t stream) {
  if (p.batch < 0 || p.batch > 65535 || p.num_kv_heads <= 0 || p.heads == nullptr ||
      p.scores == nullptr || p.score_stride <= 0 || p.budget == nullptr || p.tau == nullptr) {
    return cudaErrorInvalidValue;
  }
  if (p.batch == 0) return cudaSuccess;
  StepBudgetKernel<<<p.batch, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace squeeze::gpu
