// The per-step budget threshold (see step_budget.cuh).
#include "kernels/squeeze/step_budget.cuh"

namespace squeeze::gpu {
namespace {

constexpr int kThreads = 256;
constexpr int kItems = kStepBudgetChunk / kThreads;  // clusters per thread of a CTA
constexpr int kDigitBits = 8;
constexpr int kBins = 1 << kDigitBits;
constexpr int kPasses = 32 / kDigitBits;
static_assert(kItems * kThreads == kStepBudgetChunk);
static_assert(kBins == 32 * 8, "one warp scans the bins, 8 per lane");

// A sequence's part of the workspace: the key-weighted histogram of each pass and the state the
// last CTA of a pass leaves for the next.
struct SeqState {
  unsigned long long hist[kPasses][kBins];
  unsigned long long above;  // keys of the clusters above the ones still in play
  unsigned long long total;  // all the keys (pass 0)
  unsigned prefix;           // the digits chosen so far
  unsigned mask;             // their bits
  unsigned done;             // tau written early (budget <= 0, or everything kept)
  unsigned arrived[kPasses];
};

__device__ SeqState& StateOf(const StepBudgetParams& p, int b) {
  return static_cast<SeqState*>(p.workspace)[b];
}

// The last CTA of sequence b's pass: the digit of the cut (the highest bin d, from the top, where
// the keys above plus bin d's exceed the target; bin 0 when none does), by one warp with 8 bins a
// lane (lane l: bins 255 - 8l down to 248 - 8l).
__device__ void PickDigit(const StepBudgetParams& p, int b, int pass,
                          const unsigned long long* hist) {
  SeqState& st = StateOf(p, b);
  const int lane = threadIdx.x;
  float* tau = p.tau + b;
  unsigned long long total = 0;  // every lane's copy (pass 0) or the state's
  if (pass == 0) {
    unsigned long long lane_total = 0;
    for (int j = 0; j < 8; ++j) lane_total += hist[lane * 8 + j];
    for (int o = 16; o > 0; o >>= 1) lane_total += __shfl_xor_sync(0xffffffffu, lane_total, o);
    const double budget = p.budget[b];
    const double target = budget * static_cast<double>(lane_total);
    if (!(budget > 0.0) || target >= static_cast<double>(lane_total)) {
      if (lane == 0) {
        // +inf: nothing kept; -inf: everything kept.
        *tau = budget > 0.0 ? __int_as_float(0xff800000) : __int_as_float(0x7f800000);
        st.done = 1;
      }
      return;
    }
    if (lane == 0) st.total = lane_total;
    total = lane_total;
  } else {
    total = st.total;
  }
  const double target = static_cast<double>(p.budget[b]) * static_cast<double>(total);
  const unsigned long long above = pass == 0 ? 0ull : st.above;
  const int top = kBins - 1 - lane * 8;  // this lane's highest bin
  unsigned long long mine = 0;
  for (int j = 0; j < 8; ++j) mine += hist[top - j];
  // Keys of the lanes before (higher bins).
  unsigned long long before = mine;
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned long long up = __shfl_up_sync(0xffffffffu, before, o);
    if (lane >= o) before += up;
  }
  before -= mine;
  const unsigned hit =
      __ballot_sync(0xffffffffu, static_cast<double>(above + before + mine) > target);
  const int owner = hit != 0 ? __ffs(hit) - 1 : 31;
  if (lane != owner) return;
  unsigned long long cum = above + before;
  int d = top;
  for (; d > 0; --d) {
    if (static_cast<double>(cum + hist[d]) > target) break;
    cum += hist[d];
  }
  const int shift = 32 - kDigitBits * (pass + 1);
  const unsigned prefix = (pass == 0 ? 0u : st.prefix) | (static_cast<unsigned>(d) << shift);
  if (pass + 1 < kPasses) {
    st.prefix = prefix;
    st.mask = (pass == 0 ? 0u : st.mask) | (static_cast<unsigned>(kBins - 1) << shift);
    st.above = cum;
    return;
  }
  // The cut score v: keys > v are `cum` (<= target), keys >= v are cum + hist[d] (> target).
  const float v = __uint_as_float(prefix);
  const double kept_at = static_cast<double>(cum);
  const double kept_before = static_cast<double>(cum + hist[d]);
  // Keeping the cut's clusters too: tau just below v keeps every score >= v.
  *tau =
      (kept_before - target) <= (target - kept_at) ? nextafterf(v, __int_as_float(0xff800000)) : v;
}

// One pass over chunk blockIdx.x % chunks of head blockIdx.x / chunks of sequence blockIdx.y.
__global__ void __launch_bounds__(kThreads)
    StepBudgetPassKernel(const StepBudgetParams p, int pass, int chunks) {
  __shared__ unsigned long long hist[kBins];
  __shared__ bool last;
  const int b = blockIdx.y;
  SeqState& st = StateOf(p, b);
  if (pass > 0 && st.done) return;  // written by an earlier launch: every CTA sees it
  const unsigned prefix = pass == 0 ? 0u : st.prefix, mask = pass == 0 ? 0u : st.mask;
  const int shift = 32 - kDigitBits * (pass + 1);
  const int h = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
  const int lane = threadIdx.x & 31;
  for (int i = threadIdx.x; i < kBins; i += kThreads) hist[i] = 0;
  __syncthreads();

  const SqueezeHeadDesc& hd = p.heads[static_cast<size_t>(b) * p.num_kv_heads + h];
  const float* scores = p.scores + (static_cast<int64_t>(b) * p.num_kv_heads + h) * p.score_stride;
  const int c0 = chunk * kStepBudgetChunk + static_cast<int>(threadIdx.x);
  unsigned bits[kItems], keys[kItems];
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int c = c0 + i * kThreads;
    const bool valid = c < hd.num_clusters;
    bits[i] = valid ? __float_as_uint(__ldg(scores + c)) : 0u;
    keys[i] = valid ? static_cast<unsigned>(__ldg(hd.sizes + c)) : 0u;
  }
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const bool in_play = keys[i] != 0 && (bits[i] & mask) == prefix;
    const unsigned digit = in_play ? (bits[i] >> shift) & (kBins - 1) : kBins;  // kBins: none
    const unsigned peers = __match_any_sync(0xffffffffu, digit);
    const unsigned sum = __reduce_add_sync(peers, keys[i]);
    if (in_play && lane == __ffs(peers) - 1) atomicAdd(&hist[digit], sum);
  }
  __syncthreads();
  unsigned long long* global = st.hist[pass];
  for (int i = threadIdx.x; i < kBins; i += kThreads) {
    if (hist[i] != 0) atomicAdd(&global[i], hist[i]);
  }
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&st.arrived[pass], 1u) == gridDim.x - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int i = threadIdx.x; i < kBins; i += kThreads) hist[i] = __ldcg(&global[i]);
  __syncthreads();
  if (threadIdx.x < 32) PickDigit(p, b, pass, hist);
}

}  // namespace

size_t StepBudgetWorkspaceBytes(int batch) {
  return sizeof(SeqState) * static_cast<size_t>(batch < 0 ? 0 : batch);
}

cudaError_t LaunchStepBudgetThreshold(const StepBudgetParams& p, cudaStream_t stream) {
  if (p.batch < 0 || p.batch > 65535 || p.num_kv_heads <= 0 || p.heads == nullptr ||
      p.scores == nullptr || p.score_stride <= 0 || p.budget == nullptr || p.tau == nullptr ||
      p.workspace == nullptr || reinterpret_cast<uintptr_t>(p.workspace) % 8 != 0) {
    return cudaErrorInvalidValue;
  }
  if (p.batch == 0) return cudaSuccess;
  const int64_t chunks = (p.score_stride + kStepBudgetChunk - 1) / kStepBudgetChunk;
  const int64_t ctas = chunks * p.num_kv_heads;
  if (ctas > 0x7fffffff) return cudaErrorInvalidValue;
  cudaError_t err = cudaMemsetAsync(p.workspace, 0, StepBudgetWorkspaceBytes(p.batch), stream);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(ctas), static_cast<unsigned>(p.batch));
  for (int pass = 0; pass < kPasses; ++pass) {
    StepBudgetPassKernel<<<grid, kThreads, 0, stream>>>(p, pass, static_cast<int>(chunks));
  }
  return cudaGetLastError();
}

}  // namespace squeeze::gpu
