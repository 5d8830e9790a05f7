// Token sampling, one CTA per row (see sampling.cuh). The steps follow Sampler::Sample in
// engine/sampling/sampler.cc; the float operations that feed a comparison are the host's, bit
// for bit (explicit _rn intrinsics, so nothing is contracted into an FMA).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/sampling/sampling.cuh"

namespace squeeze::gpu {
namespace {

constexpr int kThreads = 1024;
constexpr int kWarps = kThreads / 32;
constexpr int kBins = 256;  // radix-select digit: 8 bits of the order key a level
constexpr unsigned kFull = 0xFFFFFFFFu;

// The workspace of one row: processed logits, probabilities and two compaction lists.
struct Row {
  int vocab;
  float* work;        // [vocab] processed logits (NaN -> -inf, penalties, temperature)
  float* probs;       // [vocab] exp(work - max) of the truncation candidates, 0 elsewhere
  int32_t* list_a;    // [vocab] ids surviving a radix-select level
  int32_t* list_b;    // [vocab]
  double mass_scale;  // probabilities become integers p * mass_scale (see FixedMass)
};

struct Shared {
  uint64_t hist_w[kBins];  // radix-select level: weight of each digit's candidates
  uint32_t hist_n[kBins];  // and their number
  int32_t hist_id[kBins];  // the id of a digit's candidate, meaningful when hist_n == 1
  uint64_t top_keys[kSamplingMaxLogprobs];
  uint64_t part_u[kWarps];
  double part_d[kWarps];
  float part_v[kWarps];
  int32_t part_i[kWarps];
  int32_t list_len;
  int32_t sel_bin;
  uint32_t sel_n;
  uint64_t sel_above;
  int32_t range_lo, range_hi;
  uint64_t range_base;
};

__device__ __forceinline__ int Lane() { return threadIdx.x & 31; }
__device__ __forceinline__ int Warp() { return threadIdx.x >> 5; }

// Order-preserving image of a non-NaN float: a > b <=> ValueKey(a) > ValueKey(b), with
// -0 == +0 as in the host's float comparisons.
__device__ __forceinline__ uint32_t ValueKey(float v) {
  const uint32_t b = __float_as_uint(__fadd_rn(v, 0.0f));  // -0 + 0 = +0
  return (b & 0x80000000u) != 0 ? ~b : (b | 0x80000000u);
}

// The sampler's total order (Sampler::Better) as one integer, larger = better: higher processed
// logit first, lower id on ties. Every real token's key is > 0.
__device__ __forceinline__ uint64_t OrderKey(float v, int32_t id) {
  return (static_cast<uint64_t>(ValueKey(v)) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(id));
}

__device__ __forceinline__ int32_t KeyId(uint64_t key) {
  return static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(key));
}

// exp rounded to float as glibc's expf rounds it (correctly, but for rare ties): CUDA's expf
// may be 1-2 ulp off, which would move the cumulative sums the draw and top-p are made of.
__device__ __forceinline__ float ExpLikeHost(float x) {
  return static_cast<float>(exp(static_cast<double>(x)));
}

// A probability in [0, 1] as an integer with 62 - floor(log2(vocab)) fraction bits: a whole
// row sums below 2^63, floats >= 2^-23 are exact, and integer sums are exact in any order.
__device__ __forceinline__ uint64_t FixedMass(float p, double scale) {
  return __double2ull_rn(static_cast<double>(p) * scale);
}

template <typename T>
__device__ __forceinline__ T WarpSum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ T WarpInclusiveScan(T v) {
  for (int o = 1; o < 32; o <<= 1) {
    const T x = __shfl_up_sync(kFull, v, o);
    if (Lane() >= o) v += x;
  }
  return v;
}

// Sum of v over the lanes of `peers` (this lane included), all of them calling with the same
// mask. v < 2^63: three 21-bit limbs, each summed by the 32-bit warp reduction without overflow.
__device__ __forceinline__ uint64_t GroupSum(unsigned peers, uint64_t v) {
  const unsigned lo = static_cast<unsigned>(v) & 0x1FFFFFu;
  const unsigned mid = static_cast<unsigned>(v >> 21) & 0x1FFFFFu;
  const unsigned hi = static_cast<unsigned>(v >> 42);
  return (static_cast<uint64_t>(__reduce_add_sync(peers, hi)) << 42) +
         (static_cast<uint64_t>(__reduce_add_sync(peers, mid)) << 21) +
         __reduce_add_sync(peers, lo);
}

// Sums over the block, returned to every thread, in a fixed order (deterministic).
__device__ uint64_t BlockSum(uint64_t v, Shared& sh) {
  v = WarpSum(v);
  if (Lane() == 0) sh.part_u[Warp()] = v;
  __syncthreads();
  uint64_t total = 0;
  for (int w = 0; w < kWarps; ++w) total += sh.part_u[w];
  __syncthreads();
  return total;
}

__device__ double BlockSum(double v, Shared& sh) {
  v = WarpSum(v);
  if (Lane() == 0) sh.part_d[Warp()] = v;
  __syncthreads();
  double total = 0.0;
  for (int w = 0; w < kWarps; ++w) total += sh.part_d[w];
  __syncthreads();
  return total;
}

__device__ __forceinline__ bool Better(float a, int32_t ia, float b, int32_t ib) {
  return a > b || (a == b && ia < ib);
}

// Argmax of work (lowest id on ties), returned to every thread.
__device__ void BlockArgmax(const Row& row, Shared& sh, float* best_v, int32_t* best_i) {
  float v = -INFINITY;
  int32_t id = INT32_MAX;
  for (int i = threadIdx.x; i < row.vocab; i += kThreads) {
    const float x = row.work[i];
    if (Better(x, i, v, id)) {
      v = x;
      id = i;
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(kFull, v, o);
    const int32_t oi = __shfl_xor_sync(kFull, id, o);
    if (Better(ov, oi, v, id)) {
      v = ov;
      id = oi;
    }
  }
  if (Lane() == 0) {
    sh.part_v[Warp()] = v;
    sh.part_i[Warp()] = id;
  }
  __syncthreads();
  v = sh.part_v[0];
  id = sh.part_i[0];
  for (int w = 1; w < kWarps; ++w) {
    if (Better(sh.part_v[w], sh.part_i[w], v, id)) {
      v = sh.part_v[w];
      id = sh.part_i[w];
    }
  }
  __syncthreads();
  *best_v = v;
  *best_i = id;
}

// Radix select over the order key. Among the candidates (tokens whose key is >= min_key) taken
// best first, returns the key of the first one at which the running weight reaches `threshold`;
// a token weighs 1 (by_mass false: the threshold-th best) or FixedMass(probs) (the top-p
// cutoff). Needs at least one candidate and a total candidate weight >= threshold.
//
// Each level histograms the next 8 bits of the keys that match the bits chosen so far (count,
// weight) and walks the bins best first; from the second level on, the pass also compacts the
// ids it reads that match into a list, so later levels read only the survivors. It stops as
// soon as the chosen bin holds a single token (keys are unique, so at the latest after 8).
__device__ __noinline__ uint64_t SelectKey(const Row& row, uint64_t min_key, bool by_mass,
                                           uint64_t threshold, Shared& sh) {
  uint64_t prefix = 0, mask = 0, above = 0;
  const int32_t* src = nullptr;  // nullptr: ids [0, vocab)
  int n = row.vocab;
  int32_t* dst = row.list_a;
  int32_t* spare = row.list_b;
  for (int level = 0; level < 8; ++level) {
    const int shift = 56 - 8 * level;
    const bool compact = level > 0;
    for (int b = threadIdx.x; b < kBins; b += kThreads) {
      sh.hist_w[b] = 0;
      sh.hist_n[b] = 0;
    }
    if (threadIdx.x == 0) sh.list_len = 0;
    __syncthreads();

    // Warp-uniform trip count: the warp-wide intrinsics below need all 32 lanes.
    for (int base = Warp() * 32; base < n; base += kThreads) {
      const int j = base + Lane();
      int32_t id = -1;
      uint64_t key = 0;
      bool match = false;
      if (j < n) {
        id = src != nullptr ? src[j] : j;
        key = OrderKey(row.work[id], id);
        match = key >= min_key && (key & mask) == prefix;
      }
      if (compact) {
        const unsigned m = __ballot_sync(kFull, match);
        int at = 0;
        if (Lane() == 0 && m != 0) at = atomicAdd(&sh.list_len, __popc(m));
        at = __shfl_sync(kFull, at, 0);
        if (match) dst[at + __popc(m & ((1u << Lane()) - 1u))] = id;
      }
      // Lanes with the same digit add their count and weight once.
      const int bin = match ? static_cast<int>((key >> shift) & 0xFF) : -1;
      const unsigned peers = __match_any_sync(kFull, bin);
      uint64_t w = __popc(peers);
      if (by_mass) w = GroupSum(peers, match ? FixedMass(row.probs[id], row.mass_scale) : 0);
      if (match && Lane() == __ffs(peers) - 1) {
        atomicAdd(&sh.hist_n[bin], static_cast<uint32_t>(__popc(peers)));
        atomicAdd(reinterpret_cast<unsigned long long*>(&sh.hist_w[bin]),
                  static_cast<unsigned long long>(w));
        sh.hist_id[bin] = id;
      }
    }
    __syncthreads();

    // Warp 0 walks the bins best (255) first: lane L owns bins 255 - 8L down to 248 - 8L.
    if (Warp() == 0) {
      const int lane = Lane();
      uint64_t mine = 0;
      for (int t = 0; t < 8; ++t) mine += sh.hist_w[kBins - 1 - 8 * lane - t];
      uint64_t acc = above + WarpInclusiveScan(mine) - mine;
      int found = -1, last = -1;
      uint64_t found_above = 0, last_above = 0;
      for (int t = 0; t < 8; ++t) {
        const int b = kBins - 1 - 8 * lane - t;
        const uint64_t before = acc;
        acc += sh.hist_w[b];
        if (sh.hist_n[b] == 0) continue;
        if (found < 0 && acc >= threshold) {
          found = b;
          found_above = before;
        }
        last = b;
        last_above = before;
      }
      const unsigned hit = __ballot_sync(kFull, found >= 0);
      const unsigned nonempty = __ballot_sync(kFull, last >= 0);
      if (hit != 0) {
        if (lane == __ffs(hit) - 1) {
          sh.sel_bin = found;
          sh.sel_n = sh.hist_n[found];
          sh.sel_above = found_above;
        }
      } else if (nonempty != 0) {
        // Unreachable when the caller's totals hold: keep every candidate (the worst bin).
        if (lane == 31 - __clz(nonempty)) {
          sh.sel_bin = last;
          sh.sel_n = sh.hist_n[last];
          sh.sel_above = last_above;
        }
      } else if (lane == 0) {
        sh.sel_bin = 0;
        sh.sel_n = 0;  // no candidate at all (caller error): key 0 keeps everything
        sh.sel_above = above;
      }
    }
    __syncthreads();

    const int sel = sh.sel_bin;
    const uint32_t sel_n = sh.sel_n;
    above = sh.sel_above;
    if (sel_n <= 1) {
      const int32_t id = sel_n == 1 ? sh.hist_id[sel] : -1;
      __syncthreads();
      return id >= 0 ? OrderKey(row.work[id], id) : 0;
    }
    prefix |= static_cast<uint64_t>(sel) << shift;
    mask |= uint64_t{0xFF} << shift;
    if (compact) {
      src = dst;
      n = sh.list_len;
      int32_t* t = dst;
      dst = spare;
      spare = t;
    }
    __syncthreads();  // everyone has read the decision before the next level resets it
  }
  return 0;  // unreachable: distinct keys leave a single token after the last level
}

// The draw: the first id, in increasing id order, at which the running mass of the kept tokens
// (key >= cut_key and probability >= min_p) exceeds uniform * their total, i.e. the host's scan,
// on exact integer sums. Refines [lo, hi) by warp-sized sub-ranges: each warp sums one,
// warp 0 finds the one where the crossing lies. `fallback` when nothing is kept.
__device__ __noinline__ int32_t Draw(const Row& row, uint64_t cut_key, float min_p, double uniform,
                                     int32_t fallback, Shared& sh) {
  int lo = 0, hi = row.vocab;
  uint64_t base = 0, r = 0;
  bool first = true;
  while (true) {
    const int chunk = (hi - lo + kWarps - 1) / kWarps;
    const int begin = lo + Warp() * chunk;
    const int end = min(begin + chunk, hi);
    uint64_t s = 0;
    for (int i = begin + Lane(); i < end; i += 32) {
      const float p = row.probs[i];
      if (p >= min_p && OrderKey(row.work[i], i) >= cut_key) s += FixedMass(p, row.mass_scale);
    }
    s = WarpSum(s);
    if (Lane() == 0) sh.part_u[Warp()] = s;
    __syncthreads();
    if (first) {
      uint64_t total = 0;
      for (int w = 0; w < kWarps; ++w) total += sh.part_u[w];
      if (total == 0) {  // min_p > 1: the host falls back to the argmax too
        __syncthreads();
        return fallback;
      }
      // The crossing token is the first whose inclusive prefix exceeds uniform * total, an
      // integer prefix: exceeding floor(uniform * total). Below total, so a crossing exists.
      r = min(static_cast<uint64_t>(__double2ull_rd(uniform * static_cast<double>(total))),
              total - 1);
      first = false;
    }
    if (Warp() == 0) {
      const uint64_t mine = sh.part_u[Lane()];
      const uint64_t incl = WarpInclusiveScan(mine);
      const unsigned hit = __ballot_sync(kFull, base + incl > r);
      const int w = hit != 0 ? __ffs(hit) - 1 : min(kWarps - 1, (hi - lo - 1) / chunk);
      if (Lane() == w) {
        sh.range_lo = lo + w * chunk;
        sh.range_hi = min(lo + (w + 1) * chunk, hi);
        sh.range_base = base + incl - mine;
      }
    }
    __syncthreads();
    lo = sh.range_lo;
    hi = sh.range_hi;
    base = sh.range_base;
    __syncthreads();
    if (hi - lo <= 1) return lo;
  }
}

// Log-probability of a processed logit given the log-sum-exp (Sampler::FillInfo's rules).
__device__ __forceinline__ float LogprobOf(float v, double lse, float lmax) {
  if (!isfinite(lse)) return v == lmax ? 0.0f : -INFINITY;
  return static_cast<float>(static_cast<double>(v) - lse);
}

// The n best tokens (n in [1, kSamplingMaxLogprobs], <= vocab) and their logprobs, best first.
__device__ __noinline__ void TopLogprobs(const Row& row, int n, uint64_t best_key, double lse,
                                         float lmax, SampledLogprob* out, Shared& sh) {
  const uint64_t nth = n == 1 ? best_key : SelectKey(row, 0, false, n, sh);
  if (threadIdx.x == 0) sh.list_len = 0;
  __syncthreads();
  for (int base = Warp() * 32; base < row.vocab; base += kThreads) {
    const int i = base + Lane();
    const uint64_t key = i < row.vocab ? OrderKey(row.work[i], i) : 0;
    const bool in = i < row.vocab && key >= nth;
    const unsigned m = __ballot_sync(kFull, in);
    if (m == 0) continue;
    int at = 0;
    if (Lane() == 0) at = atomicAdd(&sh.list_len, __popc(m));
    at = __shfl_sync(kFull, at, 0);
    if (in) sh.top_keys[at + __popc(m & ((1u << Lane()) - 1u))] = key;
  }
  __syncthreads();
  // Exactly n keys, all distinct: each one's rank is the number of larger keys.
  if (threadIdx.x < n) {
    const uint64_t key = sh.top_keys[threadIdx.x];
    int rank = 0;
    for (int s = 0; s < n; ++s) rank += sh.top_keys[s] > key;
    const int32_t id = KeyId(key);
    out[rank] = {id, LogprobOf(row.work[id], lse, lmax)};
  }
  __syncthreads();
}

__global__ void __launch_bounds__(kThreads) SamplingKernel(SamplingLaunchParams p) {
  __shared__ Shared sh;
  const int r = blockIdx.x;
  const SamplingRowParams rp = p.row_params[r];
  const size_t V = static_cast<size_t>(p.vocab);
  const size_t rows = static_cast<size_t>(p.rows);
  float* ws = static_cast<float*>(p.workspace);
  Row row;
  row.vocab = p.vocab;
  row.work = ws + r * V;
  row.probs = ws + rows * V + r * V;
  row.list_a = reinterpret_cast<int32_t*>(ws + 2 * rows * V) + r * V;
  row.list_b = reinterpret_cast<int32_t*>(ws + 3 * rows * V) + r * V;
  row.mass_scale = ldexp(1.0, 62 - (31 - __clz(p.vocab)));
  const float* logits = p.logits + r * V;

  // 1. Processed logits: NaN -> -inf, penalties (the penalised tokens are rewritten after the
  //    plain pass), temperature.
  const bool divide = !rp.greedy && rp.temperature != 1.0f;
  for (int i = threadIdx.x; i < p.vocab; i += kThreads) {
    float v = logits[i];
    if (isnan(v)) v = -INFINITY;
    row.work[i] = divide ? __fdiv_rn(v, rp.temperature) : v;
  }
  __syncthreads();
  const bool repetition = rp.repetition_penalty != 1.0f;
  const bool presence = rp.presence_penalty != 0.0f || rp.frequency_penalty != 0.0f;
  for (int e = threadIdx.x; e < rp.penalty_count; e += kThreads) {
    const SamplingPenalty pen = p.penalties[rp.penalty_begin + e];
    if (pen.id < 0 || pen.id >= p.vocab) continue;
    float v = logits[pen.id];
    if (isnan(v)) v = -INFINITY;
    if (repetition) {
      v = v > 0.0f ? __fdiv_rn(v, rp.repetition_penalty) : __fmul_rn(v, rp.repetition_penalty);
    }
    if (presence && pen.count > 0) {
      const float amount = __fadd_rn(
          rp.presence_penalty, __fmul_rn(rp.frequency_penalty, static_cast<float>(pen.count)));
      v = __fsub_rn(v, amount);
    }
    row.work[pen.id] = divide ? __fdiv_rn(v, rp.temperature) : v;
  }
  __syncthreads();

  // 2. Argmax. Greedy, or a max that is not finite (all -inf, or +inf), takes it without a draw.
  float lmax;
  int32_t best;
  BlockArgmax(row, sh, &lmax, &best);
  const bool want_logprobs = rp.num_logprobs >= 0;
  const bool sampled = !rp.greedy && isfinite(lmax);
  int32_t chosen = best;
  double sum_all = 0.0;  // sum of exp(work - lmax) over the vocabulary, for the logprobs
  if (!sampled) {
    if (want_logprobs && isfinite(lmax)) {
      double s = 0.0;
      for (int i = threadIdx.x; i < p.vocab; i += kThreads) {
        s += expf(__fsub_rn(row.work[i], lmax));
      }
      sum_all = BlockSum(s, sh);
    }
  } else {
    // 3. Top-k: the k-th best token; candidates are it and every better one.
    const uint64_t best_key = OrderKey(lmax, best);
    uint64_t cut_key = 0;
    if (rp.top_k == 1) {
      cut_key = best_key;
    } else if (rp.top_k > 1) {
      cut_key = SelectKey(row, 0, false, static_cast<uint64_t>(rp.top_k), sh);
    }
    // 4. Probabilities of the candidates (0 elsewhere) and their exact total.
    uint64_t total = 0;
    double s = 0.0;
    for (int i = threadIdx.x; i < p.vocab; i += kThreads) {
      const float v = row.work[i];
      const float d = __fsub_rn(v, lmax);
      const bool candidate = OrderKey(v, i) >= cut_key;
      const float prob = candidate ? ExpLikeHost(d) : 0.0f;
      row.probs[i] = prob;
      total += FixedMass(prob, row.mass_scale);
      if (want_logprobs) s += candidate ? prob : expf(d);
    }
    total = BlockSum(total, sh);
    if (want_logprobs) sum_all = BlockSum(s, sh);
    // 5. Top-p: the smallest best-first prefix of the candidates whose mass reaches
    //    top_p * their mass (acc >= target <=> acc >= ceil(target) for integer acc).
    if (rp.top_p < 1.0f) {
      const double target = ceil(static_cast<double>(rp.top_p) * static_cast<double>(total));
      const uint64_t threshold = min(static_cast<uint64_t>(fmax(target, 0.0)), total);
      cut_key = SelectKey(row, cut_key, true, threshold, sh);
    }
    // 6. min_p and the draw.
    chosen = Draw(row, cut_key, rp.min_p, rp.uniform, best, sh);
  }

  // 7. Logprobs of the processed distribution.
  float chosen_logprob = 0.0f;
  if (want_logprobs) {
    const double lse =
        isfinite(lmax) ? static_cast<double>(lmax) + log(sum_all) : static_cast<double>(lmax);
    chosen_logprob = LogprobOf(row.work[chosen], lse, lmax);
    // Clamped to what the shared memory and the output row hold (the host validates).
    const int n = min(min(rp.num_logprobs, p.vocab), min(kSamplingMaxLogprobs, p.top_stride));
    if (n > 0 && p.top != nullptr) {
      TopLogprobs(row, n, OrderKey(lmax, best), lse, lmax,
                  p.top + static_cast<size_t>(r) * p.top_stride, sh);
    }
  }
  if (threadIdx.x == 0) {
    p.results[r] = {chosen, sampled ? 1 : 0, chosen_logprob, 0};
  }
}

}  // namespace

size_t SamplingWorkspaceBytes(int rows, int vocab) {
  if (rows <= 0 || vocab <= 0) return 0;
  return size_t{4} * sizeof(float) * static_cast<size_t>(rows) * static_cast<size_t>(vocab);
}

cudaError_t LaunchSampling(const SamplingLaunchParams& params, cudaStream_t stream) {
  if (params.rows == 0) return cudaSuccess;
  if (params.rows < 0 || params.vocab < 1 || params.logits == nullptr ||
      params.row_params == nullptr || params.workspace == nullptr || params.results == nullptr ||
      params.top_stride < 0) {
    return cudaErrorInvalidValue;
  }
  SamplingKernel<<<params.rows, kThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace squeeze::gpu
