// Decode centroid lookup and selection: kept ranges and the kept-key index (range_of_key) the
// attention kernel plans its chunks from (see centroid_lookup.cuh).
#include <algorithm>

#include "kernels/common/device.cuh"
#include "kernels/common/dispatch.cuh"
#include "kernels/squeeze/centroid_lookup.cuh"

namespace squeeze::gpu {
namespace {

using detail::BlockExclusiveScan;
using detail::WarpMax;
using detail::WarpSum;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxClustersPerBlock = 1024;
constexpr int kCentroidsPerPass = kWarps * 8;  // 4 lanes per centroid
constexpr int kFinalizePerThread = 4;          // consecutive clusters per thread when selecting

// Clusters per CTA at most for the padded group G: the logits [G][clusters] stay in static shared
// memory (48 KB at most), so the group of 16 takes half as many.
template <int G>
__host__ __device__ constexpr int MaxClustersPerBlock() {
  return G <= 8 ? kMaxClustersPerBlock : kMaxClustersPerBlock / 2;
}

// Throughout, G is the group padded (detail::PaddedGroup) and `group` = Hq / Hkv the real one:
// query rows g >= group are zero in shared memory, their logits are neither stored nor counted,
// and every global array indexed by query head ([..][group][..]) uses the real group.

// s[g] += q_g . centroid row (this lane's quarter of d: 16-byte chunks quarter + 4i).
template <int D, int G, bool kBf16>
struct CentroidRow {
  static constexpr int kPer = kBf16 ? D / 32 : D / 16;  // 16-byte loads per lane
  uint4 raw[kPer];

  __device__ void Load(const void* centroids, size_t c, int quarter) {
    const uint4* row = reinterpret_cast<const uint4*>(static_cast<const char*>(centroids) +
                                                      c * D * (kBf16 ? 2 : 4));
#pragma unroll
    for (int i = 0; i < kPer; ++i) raw[i] = __ldg(row + quarter + 4 * i);
  }

  __device__ void Dot(const float* q_s, int quarter, float* s) const {
#pragma unroll
    for (int i = 0; i < kPer; ++i) {
      const int chunk = quarter + 4 * i;
      if constexpr (kBf16) {
        float x[8];
        detail::UnpackBf16x8(raw[i], x);
#pragma unroll
        for (int g = 0; g < G; ++g) s[g] = detail::Dot8(q_s + g * D + chunk * 8, x, s[g]);
      } else {
        const float4 x = *reinterpret_cast<const float4*>(&raw[i]);
#pragma unroll
        for (int g = 0; g < G; ++g) {
          const float4 qa = *reinterpret_cast<const float4*>(q_s + g * D + chunk * 4);
          float a = s[g];
          a = fmaf(qa.x, x.x, a);
          a = fmaf(qa.y, x.y, a);
          a = fmaf(qa.z, x.z, a);
          a = fmaf(qa.w, x.w, a);
          s[g] = a;
        }
      }
    }
  }
};

// Phase 1: logits of clusters [c0, c0 + cn) of the head's list (the candidates when given, or
// every cluster) into logit_s (rows g < group; and global memory when store_global), and the
// block's (max, size-weighted sum of exp) per query head into block_max / block_den. size_s: the
// clusters' sizes staged in shared memory (the caller syncs), or nullptr to read them here.
// after_loads() runs once the first centroid loads are in flight (so its own loads overlap
// them), before the block's first barrier.
template <int D, int G, bool kBf16, class AfterLoads>
__device__ void ScoreBlock(const CentroidLookupParams& p, const SqueezeHeadDesc& hd,
                           const int32_t* cand, int count, int bh, int b, int h, int blk,
                           float* q_s, float (*logit_s)[MaxClustersPerBlock<G>()],
                           const int32_t* size_s, bool store_global, AfterLoads after_loads) {
  // bf16 rows are small: two per lane and pass, so twice the bytes are in flight.
  constexpr int kRowsPerLane = kBf16 ? 2 : 1;
  constexpr int kPass = kCentroidsPerPass * kRowsPerLane;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, quarter = lane & 3;
  const int group = p.num_q_heads / p.num_kv_heads;
  const float* qg = p.q + (static_cast<size_t>(b) * p.num_q_heads + h * group) * D;
  // q is staged once the first centroid loads are in flight (its loads overlap them); the
  // padding rows are zero.
  auto stage_q = [&] {
    for (int i = threadIdx.x; i < G * D; i += kThreads) {
      q_s[i] = i < group * D ? qg[i] * p.scale : 0.0f;
    }
  };

  const int CB = p.plan.clusters_per_block;
  const int c0 = blk * CB, cn = min(CB, count - c0);
  for (int base = 0; base < cn; base += kPass) {
    CentroidRow<D, G, kBf16> row[kRowsPerLane];
#pragma unroll
    for (int r = 0; r < kRowsPerLane; ++r) {
      const int cl = base + r * kCentroidsPerPass + warp * 8 + (lane >> 2);
      const int at = c0 + (cl < cn ? cl : 0);
      row[r].Load(hd.centroids, cand != nullptr ? __ldg(cand + at) : at, quarter);
    }
    if (base == 0) {  // the first loads are in flight
      stage_q();
      after_loads();
      __syncthreads();  // q_s
    }
#pragma unroll
    for (int r = 0; r < kRowsPerLane; ++r) {
      const int cl = base + r * kCentroidsPerPass + warp * 8 + (lane >> 2);
      float s[G];
#pragma unroll
      for (int g = 0; g < G; ++g) s[g] = 0.0f;
      row[r].Dot(q_s, quarter, s);
#pragma unroll
      for (int g = 0; g < G; ++g) {
        s[g] += __shfl_xor_sync(0xffffffffu, s[g], 1);
        s[g] += __shfl_xor_sync(0xffffffffu, s[g], 2);
      }
      if (cl < cn && quarter == 0) {
#pragma unroll
        for (int g = 0; g < G; ++g) {
          if (g < group) {
            logit_s[g][cl] = s[g];
            if (store_global) {
              p.logits[(static_cast<size_t>(bh) * group + g) * p.plan.logit_stride + c0 + cl] =
                  s[g];
            }
          }
        }
      }
    }
  }
  if (cn <= 0) {  // no pass ran
    stage_q();
    after_loads();
    __syncthreads();
  }
  __syncthreads();
  for (int g = warp; g < group; g += kWarps) {
    float m = -INFINITY;
    for (int i = lane; i < cn; i += 32) m = fmaxf(m, logit_s[g][i]);
    m = WarpMax(m);
    float den = 0.0f;
    for (int i = lane; i < cn; i += 32) {
      int n;
      if (size_s != nullptr) {
        n = size_s[i];
      } else {
        n = __ldg(hd.sizes + (cand != nullptr ? __ldg(cand + c0 + i) : c0 + i));
      }
      den += static_cast<float>(n) * expf(logit_s[g][i] - m);
    }
    den = WarpSum(den);
    if (lane == 0) {
      const size_t idx = (static_cast<size_t>(bh) * p.plan.blocks_per_head + blk) * group + g;
      p.block_max[idx] = m;
      p.block_den[idx] = den;
    }
  }
}

// Per-thread share of one block's clusters in the select kernel.
struct ClusterPick {
  unsigned keep_mask = 0;
  int cluster[kFinalizePerThread];  // cluster id (a candidate's, with candidates)
  int row[kFinalizePerThread];
  int nkeys[kFinalizePerThread];
};

// Select kernel, every CTA: scores clusters [c0, c0 + cn) of head bh (cn <= 1024: 4 per
// thread), thresholds them and compacts the kept ones into the block's segment
// [c0, c0 + kept) of seg_*; returns the block's (keys << 32 | kept).
__device__ unsigned long long SelectBlock(const CentroidLookupParams& p, const SqueezeHeadDesc& hd,
                                          const int32_t* cand, int bh, int c0, int cn, bool scoring,
                                          bool keep_all, float tau, const float* head_m,
                                          const float* head_inv, unsigned long long* scan_s) {
  const int c_first = c0 + threadIdx.x * kFinalizePerThread;
  const int c_end = c0 + cn;
  const int group = p.num_q_heads / p.num_kv_heads;
  const float* logits = p.logits + static_cast<size_t>(bh) * group * p.plan.logit_stride;
  float sc[kFinalizePerThread] = {};
  if (scoring && p.scores_in != nullptr) {
    const float* in = p.scores_in + static_cast<size_t>(bh) * p.sel.cluster_stride;
#pragma unroll
    for (int e = 0; e < kFinalizePerThread; ++e) {
      const int i = c_first + e;
      if (i < c_end) sc[e] = __ldcg(in + (cand != nullptr ? __ldg(cand + i) : i));
    }
  } else if (scoring && c_first < c_end) {
    // logit_stride is a multiple of 4 and c_first < C <= logit_stride: the float4 is in bounds.
    for (int g = 0; g < group; ++g) {
      const float4 x =
          __ldcg(reinterpret_cast<const float4*>(logits + g * p.plan.logit_stride + c_first));
      sc[0] += expf(x.x - head_m[g]) * head_inv[g];
      sc[1] += expf(x.y - head_m[g]) * head_inv[g];
      sc[2] += expf(x.z - head_m[g]) * head_inv[g];
      sc[3] += expf(x.w - head_m[g]) * head_inv[g];
    }
#pragma unroll
    for (int e = 0; e < kFinalizePerThread; ++e) sc[e] *= 1.0f / group;  // mean over the group
  }
  ClusterPick pick;
  unsigned long long local = 0;
#pragma unroll
  for (int e = 0; e < kFinalizePerThread; ++e) {
    const int i = c_first + e;
    const int c = i < c_end && cand != nullptr ? __ldg(cand + i) : i;
    pick.row[e] = 0;
    pick.nkeys[e] = 0;
    pick.cluster[e] = c;
    if (i < c_end && (keep_all || sc[e] > tau)) {
      pick.row[e] = __ldg(hd.offsets + c);
      pick.nkeys[e] = __ldg(hd.offsets + c + 1) - pick.row[e];
      pick.keep_mask |= 1u << e;
      local += 1ull + (static_cast<unsigned long long>(pick.nkeys[e]) << 32);
    }
  }
  unsigned long long total = 0;
  const unsigned long long at = BlockExclusiveScan(local, &total, scan_s);
  unsigned pos_c = static_cast<unsigned>(at & 0xffffffffull);
  unsigned pos_k = static_cast<unsigned>(at >> 32);
  const size_t seg = static_cast<size_t>(bh) * p.plan.logit_stride + c0;
  float* scores = p.sel.scores != nullptr
                      ? p.sel.scores + static_cast<size_t>(bh) * p.sel.cluster_stride
                      : nullptr;
#pragma unroll
  for (int e = 0; e < kFinalizePerThread; ++e) {
    const int c = pick.cluster[e];
    if (scores != nullptr && scoring && c_first + e < c_end) scores[c] = sc[e];
    if (pick.keep_mask & (1u << e)) {
      p.seg_cluster[seg + pos_c] = c;
      p.seg_row[seg + pos_c] = pick.row[e];
      p.seg_key[seg + pos_c] = static_cast<int>(pos_k);
      ++pos_c;
      pos_k += pick.nkeys[e];
    }
  }
  return total;
}

// Records range r (kept keys [key0, key0 + n)) as the range of every indexed key inside it.
__device__ void MarkRange(const SqueezeSelection& sel, int bh, int r, int key0, int n) {
  constexpr int kStep = kSparseKeyIndexStep;
  int32_t* index = sel.range_of_key + static_cast<size_t>(bh) * sel.key_index_stride;
  const int last = min((key0 + n - 1) / kStep, sel.key_index_stride - 1);
  for (int i = (key0 + kStep - 1) / kStep; i <= last; ++i) index[i] = r;
}

// One thread: the sinks and window ranges of head bh around its nk kept clusters (cluster_keys
// keys), and the head's totals.
__device__ void FinishHead(const SqueezeSelection& sel, const SqueezeHeadDesc& hd, int bh, int nk,
                           int cluster_keys) {
  int32_t* row_begin = sel.range_row_begin + static_cast<size_t>(bh) * sel.range_stride;
  int32_t* key_begin = sel.range_key_begin + static_cast<size_t>(bh) * (sel.range_stride + 1);
  int keys = hd.sinks + cluster_keys;
  if (hd.sinks > 0) {
    row_begin[0] = 0;
    key_begin[0] = 0;
    MarkRange(sel, bh, 0, 0, hd.sinks);
  }
  int r = (hd.sinks > 0 ? 1 : 0) + nk;
  if (hd.window > 0) {
    row_begin[r] = hd.num_rows - hd.window;
    key_begin[r] = keys;
    MarkRange(sel, bh, r, keys, hd.window);
    ++r;
    keys += hd.window;
  }
  key_begin[r] = keys;
  sel.num_ranges[bh] = r;
  sel.kept_keys[bh] = keys;
  sel.num_kept_clusters[bh] = nk;
}

// Select kernel, last CTA of head bh: block prefix sums, gather of the blocks' segments into
// the head's ranges (ascending cluster order), sinks and window, totals.
__device__ void GatherHead(const CentroidLookupParams& p, const SqueezeHeadDesc& hd, int bh,
                           int nblk, int cb, unsigned long long* scan_s,
                           unsigned long long* prefix_s) {
  unsigned long long carry = 0;
  for (int base = 0; base < nblk; base += kThreads) {
    const int j = base + threadIdx.x;
    const unsigned long long v =
        j < nblk ? __ldcg(p.block_counts + static_cast<size_t>(bh) * p.plan.blocks_per_head + j)
                 : 0ull;
    unsigned long long t = 0;
    const unsigned long long before = BlockExclusiveScan(v, &t, scan_s);
    if (j < nblk) prefix_s[j] = carry + before;
    carry += t;
  }
  __syncthreads();
  const SqueezeSelection& sel = p.sel;
  int32_t* row_begin = sel.range_row_begin + static_cast<size_t>(bh) * sel.range_stride;
  int32_t* key_begin = sel.range_key_begin + static_cast<size_t>(bh) * (sel.range_stride + 1);
  int32_t* kept = sel.kept_clusters + static_cast<size_t>(bh) * sel.cluster_stride;
  const int first_range = hd.sinks > 0 ? 1 : 0;
  const int nk = static_cast<int>(carry & 0xffffffffull);
  for (int i = threadIdx.x; i < nk; i += kThreads) {
    // Block of kept entry i: the last j with kept-before(j) <= i (it is never empty).
    int a = 0, z = nblk;
    while (z - a > 1) {
      const int mid = (a + z) >> 1;
      if (static_cast<int>(prefix_s[mid] & 0xffffffffull) <= i) {
        a = mid;
      } else {
        z = mid;
      }
    }
    const size_t src = static_cast<size_t>(bh) * p.plan.logit_stride + static_cast<size_t>(a) * cb +
                       (i - static_cast<int>(prefix_s[a] & 0xffffffffull));
    const int cluster = __ldcg(p.seg_cluster + src);
    const int kb = hd.sinks + static_cast<int>(prefix_s[a] >> 32) + __ldcg(p.seg_key + src);
    kept[i] = cluster;
    row_begin[first_range + i] = __ldcg(p.seg_row + src);
    key_begin[first_range + i] = kb;
    MarkRange(sel, bh, first_range + i, kb,
              __ldg(hd.offsets + cluster + 1) - __ldg(hd.offsets + cluster));
  }
  if (threadIdx.x == 0) FinishHead(sel, hd, bh, nk, static_cast<int>(carry >> 32));
}

// Arrival counter of head bh, one per 128-byte line: CTAs spinning on one head's counter do not
// slow the atomics on another's.
__device__ __forceinline__ uint32_t* HeadCounter(const CentroidLookupParams& p, int bh) {
  return p.counters + static_cast<size_t>(bh) * kLookupCounterStride;
}

// Per (sequence, KV head): the head's descriptor with its cluster count clamped to what the
// plan can hold (a larger count is a caller bug; clamping keeps every access in bounds and
// every head's arrival count reachable), its threshold and mode.
struct HeadMode {
  SqueezeHeadDesc hd;
  float tau;
  bool scoring;         // finite tau and clusters to score
  bool keep_all;        // tau = -inf: every cluster, nothing scored
  int nblk;             // CTAs of this head taking part
  const int32_t* cand;  // the head's candidate list, or null (every cluster)
  int count;            // clusters taking part: candidates, or every cluster
};

__device__ HeadMode GetHeadMode(const CentroidLookupParams& p, int bh) {
  HeadMode m;
  m.hd = p.heads[bh];
  const int capacity =
      min(min(p.sel.cluster_stride, p.sel.range_stride - 2),
          min(p.plan.logit_stride, p.plan.blocks_per_head * p.plan.clusters_per_block));
  m.hd.num_clusters = max(min(m.hd.num_clusters, capacity), 0);
  m.tau = p.tau[bh / p.num_kv_heads];
  m.cand = p.candidates != nullptr ? p.candidates + bh * p.candidate_stride : nullptr;
  m.count =
      m.cand != nullptr ? max(min(p.num_candidates[bh], m.hd.num_clusters), 0) : m.hd.num_clusters;
  m.scoring = m.hd.num_clusters > 0 && isfinite(m.tau);
  m.keep_all = !m.scoring && m.tau == -INFINITY;
  // Blocks of the clusters taking part (candidates: only theirs).
  m.nblk = (m.scoring || m.keep_all) && m.count > 0
               ? (m.count + p.plan.clusters_per_block - 1) / p.plan.clusters_per_block
               : 1;
  return m;
}

// The head's softmax max and 1 / denominator per query head, from its blocks' partials
// (written before a barrier or by an earlier launch), for the group's query heads. Ends with a
// barrier.
__device__ void HeadStats(const CentroidLookupParams& p, int bh, int nblk, float* head_m,
                          float* head_inv) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int group = p.num_q_heads / p.num_kv_heads;
  for (int g = warp; g < group; g += kWarps) {
    const size_t base = static_cast<size_t>(bh) * p.plan.blocks_per_head * group + g;
    float mx = -INFINITY;
    for (int j = lane; j < nblk; j += 32) mx = fmaxf(mx, __ldcg(p.block_max + base + j * group));
    mx = WarpMax(mx);
    float den = 0.0f;
    for (int j = lane; j < nblk; j += 32) {
      den += __ldcg(p.block_den + base + j * group) *
             expf(__ldcg(p.block_max + base + j * group) - mx);
    }
    den = WarpSum(den);
    if (lane == 0) {
      head_m[g] = mx;
      head_inv[g] = 1.0f / den;  // den >= 1: the arg-max cluster has N >= 1
    }
  }
  __syncthreads();
}

template <int D, int G, bool kBf16>
__global__ void __launch_bounds__(kThreads, 2) CentroidScoreKernel(const CentroidLookupParams p) {
  __shared__ __align__(16) float q_s[G * D];
  __shared__ float logit_s[G][MaxClustersPerBlock<G>()];
  const int bh = blockIdx.y, blk = blockIdx.x;
  const HeadMode m = GetHeadMode(p, bh);
  if (!m.scoring || blk >= m.nblk) return;
  ScoreBlock<D, G, kBf16>(p, m.hd, m.cand, m.count, bh, bh / p.num_kv_heads, bh % p.num_kv_heads,
                          blk, q_s, logit_s, /*size_s=*/nullptr, /*store_global=*/true, [] {});
}

__global__ void __launch_bounds__(kThreads) CentroidSelectKernel(const CentroidLookupParams p) {
  __shared__ unsigned long long scan_s[kWarps];
  __shared__ unsigned long long prefix_s[kLookupMaxBlocksPerHead];
  __shared__ float head_m[kMaxGroupSize], head_inv[kMaxGroupSize];
  __shared__ int is_last;
  asm volatile("griddepcontrol.launch_dependents;");  // as in FusedLookupKernel
  const int bh = blockIdx.y, blk = blockIdx.x;
  const HeadMode m = GetHeadMode(p, bh);
  if (blk >= m.nblk) return;
  const int cb = p.plan.clusters_per_block;

  if (m.scoring && p.scores_in == nullptr) HeadStats(p, bh, m.nblk, head_m, head_inv);
  const int c0 = blk * cb;
  const int cn = (m.scoring || m.keep_all) ? max(0, min(cb, m.count - c0)) : 0;
  const unsigned long long count = SelectBlock(p, m.hd, m.cand, bh, c0, cn, m.scoring, m.keep_all,
                                               m.tau, head_m, head_inv, scan_s);
  if (threadIdx.x == 0) {
    p.block_counts[static_cast<size_t>(bh) * p.plan.blocks_per_head + blk] = count;
  }

  // The last CTA of this head (every block's segment and count visible) gathers.
  if (!detail::LastArrival(HeadCounter(p, bh), m.nblk, &is_last)) return;
  if (threadIdx.x == 0) *HeadCounter(p, bh) = 0;  // every CTA of the head has arrived
  GatherHead(p, m.hd, bh, m.nblk, cb, scan_s, prefix_s);
}

// Arrival of this CTA at a barrier of the CTAs of one head: returns once `target` arrivals are
// counted (release / acquire at GPU scope). What the arrived CTAs wrote before arriving is then
// visible (read it with __ldcg).
// Every CTA of the head must be resident (LookupPlan::one_launch).
__device__ void HeadBarrier(uint32_t* counter, uint32_t target) {
  __syncthreads();
  if (threadIdx.x == 0) {
    detail::RedAddRelease(counter, 1u);
    unsigned pause = 32;  // back off: every spinning CTA of the head polls the same line
    while (detail::LoadAcquire(counter) < target) {
      __nanosleep(pause);
      pause = min(2 * pause, 256u);
    }
  }
  __syncthreads();
}

// The whole lookup in one launch (see the header): score, head barrier, select and count, head
// barrier, write the kept clusters into the ranges; the last head plans the chunks.
template <int D, int G, bool kBf16>
__global__ void __launch_bounds__(kThreads, 4) FusedLookupKernel(const CentroidLookupParams p) {
  constexpr int kCB = MaxClustersPerBlock<G>();
  __shared__ __align__(16) float q_s[G * D];
  __shared__ float logit_s[G][kCB];
  __shared__ int32_t row_s[kCB], keys_s[kCB], size_s[kCB];
  __shared__ unsigned long long scan_s[kWarps];
  __shared__ float head_m[G], head_inv[G];
  // The next kernel (the sparse attention, a programmatic dependent) may start its launch: it
  // waits for this grid's results before reading them. Every CTA of this grid has started by
  // the time it launches, so it cannot take the place of a CTA the head barriers wait for.
  asm volatile("griddepcontrol.launch_dependents;");
  const int bh = blockIdx.y, blk = blockIdx.x;
  const HeadMode m = GetHeadMode(p, bh);
  if (blk >= m.nblk) return;
  const int cb = p.plan.clusters_per_block;
  const int c0 = blk * cb;
  const int cn = (m.scoring || m.keep_all) ? max(0, min(cb, m.count - c0)) : 0;
  // Storage rows, kept keys and sizes of the block's clusters.
  auto stage_clusters = [&] {
    for (int i = threadIdx.x; i < cn; i += kThreads) {
      const int c = m.cand != nullptr ? __ldg(m.cand + c0 + i) : c0 + i;
      const int r = __ldg(m.hd.offsets + c);
      const int e = __ldg(m.hd.offsets + c + 1);
      size_s[i] = __ldg(m.hd.sizes + c);
      row_s[i] = r;
      keys_s[i] = e - r;
    }
  };
  uint32_t* counter = HeadCounter(p, bh);
  uint32_t round = 0;
  const bool from_q = m.scoring && p.scores_in == nullptr;
  if (from_q) {
    ScoreBlock<D, G, kBf16>(p, m.hd, m.cand, m.count, bh, bh / p.num_kv_heads, bh % p.num_kv_heads,
                            blk, q_s, logit_s, size_s,
                            /*store_global=*/false, stage_clusters);
    HeadBarrier(counter, ++round * m.nblk);
    HeadStats(p, bh, m.nblk, head_m, head_inv);
  } else {
    stage_clusters();
    __syncthreads();
  }

  // Score, threshold and count this thread's clusters.
  const int i0 = threadIdx.x * kFinalizePerThread;
  float* scores = p.sel.scores != nullptr
                      ? p.sel.scores + static_cast<size_t>(bh) * p.sel.cluster_stride
                      : nullptr;
  ClusterPick pick;
  unsigned long long local = 0;
#pragma unroll
  for (int e = 0; e < kFinalizePerThread; ++e) {
    const int i = i0 + e;
    pick.cluster[e] = 0;
    pick.row[e] = 0;
    pick.nkeys[e] = 0;
    if (i >= cn) continue;
    const int c = m.cand != nullptr ? __ldg(m.cand + c0 + i) : c0 + i;
    float sc = 0.0f;
    if (from_q) {
      const int group = p.num_q_heads / p.num_kv_heads;
#pragma unroll
      for (int g = 0; g < G; ++g) {
        if (g < group) sc += expf(logit_s[g][i] - head_m[g]) * head_inv[g];
      }
      sc *= 1.0f / group;  // mean over the group's real query heads
    } else if (m.scoring) {
      sc = __ldcg(p.scores_in + static_cast<size_t>(bh) * p.sel.cluster_stride + c);
    }
    if (scores != nullptr && m.scoring) scores[c] = sc;
    if (m.keep_all || (m.scoring && sc > m.tau)) {
      pick.cluster[e] = c;
      pick.row[e] = row_s[i];
      pick.nkeys[e] = keys_s[i];
      pick.keep_mask |= 1u << e;
      local += 1ull + (static_cast<unsigned long long>(pick.nkeys[e]) << 32);
    }
  }
  unsigned long long block_total = 0;
  const unsigned long long at = BlockExclusiveScan(local, &block_total, scan_s);
  unsigned long long* counts = p.block_counts + static_cast<size_t>(bh) * p.plan.blocks_per_head;
  if (threadIdx.x == 0) counts[blk] = block_total;
  HeadBarrier(counter, ++round * m.nblk);

  // Kept clusters and keys of the blocks before this one, and of the whole head.
  unsigned long long before_part = 0, all_part = 0;
  for (int j = threadIdx.x; j < m.nblk; j += kThreads) {
    const unsigned long long v = __ldcg(counts + j);
    all_part += v;
    if (j < blk) before_part += v;
  }
  unsigned long long before = 0, head_total = 0;
  BlockExclusiveScan(before_part, &before, scan_s);
  BlockExclusiveScan(all_part, &head_total, scan_s);

  // This block's kept clusters, at their places in the head's ranges.
  const SqueezeSelection& sel = p.sel;
  int32_t* row_begin = sel.range_row_begin + static_cast<size_t>(bh) * sel.range_stride;
  int32_t* key_begin = sel.range_key_begin + static_cast<size_t>(bh) * (sel.range_stride + 1);
  int32_t* kept = sel.kept_clusters + static_cast<size_t>(bh) * sel.cluster_stride;
  const int first_range = m.hd.sinks > 0 ? 1 : 0;
  int pos_c = static_cast<int>((before + at) & 0xffffffffull);
  int pos_k = m.hd.sinks + static_cast<int>((before >> 32) + (at >> 32));
#pragma unroll
  for (int e = 0; e < kFinalizePerThread; ++e) {
    if (!(pick.keep_mask & (1u << e))) continue;
    kept[pos_c] = pick.cluster[e];
    row_begin[first_range + pos_c] = pick.row[e];
    key_begin[first_range + pos_c] = pos_k;
    MarkRange(sel, bh, first_range + pos_c, pos_k, pick.nkeys[e]);
    ++pos_c;
    pos_k += pick.nkeys[e];
  }
  if (blk == 0 && threadIdx.x == 0) {
    FinishHead(sel, m.hd, bh, static_cast<int>(head_total & 0xffffffffull),
               static_cast<int>(head_total >> 32));
  }
  // Every CTA of the head is past both barriers once all have arrived here: the last one
  // zeroes the counter for the next launch.
  if (threadIdx.x == 0 &&
      atomicAdd(counter, 1u) == (round + 1) * static_cast<uint32_t>(m.nblk) - 1) {
    atomicExch(counter, 0u);
  }
}

}  // namespace

cudaError_t PlanCentroidLookup(int batch, int num_q_heads, int num_kv_heads, int head_dim,
                               int max_clusters, bool allow_one_launch, LookupPlan* plan) {
  if (batch <= 0 || num_kv_heads <= 0 || num_q_heads % num_kv_heads != 0 || plan == nullptr) {
    return cudaErrorInvalidValue;
  }
  int score_ctas = 0, fused_ctas = 0, max_per_block = 0;
  cudaError_t err =
      detail::DispatchHeadDimGroup(head_dim, num_q_heads / num_kv_heads, [&](auto d, auto g) {
        constexpr int D = decltype(d)::value, G = decltype(g)::value;
        max_per_block = MaxClustersPerBlock<G>();
        int bf = 0, fp = 0;
        cudaError_t e =
            detail::ConcurrentCtas(CentroidScoreKernel<D, G, true>, kThreads, 0, &score_ctas);
        if (e == cudaSuccess) {
          e = detail::ConcurrentCtas(FusedLookupKernel<D, G, true>, kThreads, 0, &bf);
        }
        if (e == cudaSuccess) {
          e = detail::ConcurrentCtas(FusedLookupKernel<D, G, false>, kThreads, 0, &fp);
        }
        fused_ctas = std::min(bf, fp);
        return e;
      });
  if (err != cudaSuccess) return err;

  LookupPlan lp;
  const int64_t heads = int64_t{batch} * num_kv_heads;
  const int64_t clusters = std::max(max_clusters, 1);
  lp.logit_stride = static_cast<int>((clusters + 3) / 4 * 4);
  auto round_up = [](int64_t x) {
    return std::max<int64_t>((x + kCentroidsPerPass - 1) / kCentroidsPerPass * kCentroidsPerPass,
                             kCentroidsPerPass);
  };
  if (allow_one_launch) {
    // The fewest clusters per CTA with every CTA of every head resident at once.
    for (int64_t per_block = round_up((heads * clusters + fused_ctas - 1) / fused_ctas);
         per_block <= max_per_block; per_block += kCentroidsPerPass) {
      const int64_t blocks = (clusters + per_block - 1) / per_block;
      if (heads * blocks <= fused_ctas && blocks <= kLookupMaxBlocksPerHead) {
        lp.clusters_per_block = static_cast<int>(per_block);
        lp.blocks_per_head = static_cast<int>(blocks);
        lp.one_launch = true;
        *plan = lp;
        return cudaSuccess;
      }
    }
  }
  // Two launches: about two waves of the score kernel.
  const int64_t target = 2 * std::max(score_ctas, 1);
  int64_t per_block = round_up((heads * clusters + target - 1) / target);
  // At most kLookupMaxBlocksPerHead blocks per head (the select kernel's prefix array).
  per_block = std::max(
      per_block, round_up((clusters + kLookupMaxBlocksPerHead - 1) / kLookupMaxBlocksPerHead));
  per_block = std::min<int64_t>(per_block, max_per_block);
  lp.clusters_per_block = static_cast<int>(per_block);
  lp.blocks_per_head = static_cast<int>((clusters + per_block - 1) / per_block);
  *plan = lp;
  return cudaSuccess;
}

cudaError_t LaunchCentroidLookup(const CentroidLookupParams& p, cudaStream_t stream) {
  const SqueezeSelection& s = p.sel;
  if (p.batch <= 0 || p.num_kv_heads <= 0 || p.num_q_heads % p.num_kv_heads != 0 ||
      int64_t{p.batch} * p.num_kv_heads > 65535 || p.heads == nullptr || p.tau == nullptr ||
      (p.scores_in == nullptr &&
       (p.q == nullptr || p.block_max == nullptr || p.block_den == nullptr)) ||
      (!p.plan.one_launch &&
       (p.seg_cluster == nullptr || p.seg_row == nullptr || p.seg_key == nullptr ||
        (p.scores_in == nullptr && p.logits == nullptr))) ||
      p.block_counts == nullptr || p.counters == nullptr || s.range_row_begin == nullptr ||
      s.range_key_begin == nullptr || s.num_ranges == nullptr || s.kept_keys == nullptr ||
      s.kept_clusters == nullptr || s.num_kept_clusters == nullptr || s.range_of_key == nullptr ||
      s.key_index_stride <= 0 || (p.candidates != nullptr && p.num_candidates == nullptr) ||
      p.plan.clusters_per_block <= 0 || p.plan.clusters_per_block % kCentroidsPerPass != 0 ||
      p.plan.clusters_per_block > kMaxClustersPerBlock || p.plan.blocks_per_head <= 0 ||
      p.plan.blocks_per_head > kLookupMaxBlocksPerHead || p.plan.logit_stride % 4 != 0 ||
      s.range_stride < 2 || s.cluster_stride < 1) {
    return cudaErrorInvalidValue;
  }
  const dim3 grid(p.plan.blocks_per_head, p.batch * p.num_kv_heads);
  return detail::DispatchHeadDimGroup(
      p.head_dim, p.num_q_heads / p.num_kv_heads, [&](auto d, auto g) {
        constexpr int D = decltype(d)::value, G = decltype(g)::value;
        if (p.plan.clusters_per_block > MaxClustersPerBlock<G>()) return cudaErrorInvalidValue;
        if (p.plan.one_launch) {
          if (p.scores_in != nullptr || p.centroids_bf16) {
            FusedLookupKernel<D, G, true><<<grid, kThreads, 0, stream>>>(p);
          } else {
            FusedLookupKernel<D, G, false><<<grid, kThreads, 0, stream>>>(p);
          }
          return cudaGetLastError();
        }
        if (p.scores_in != nullptr) {
          // Scores given: selection only.
        } else if (p.centroids_bf16) {
          CentroidScoreKernel<D, G, true><<<grid, kThreads, 0, stream>>>(p);
        } else {
          CentroidScoreKernel<D, G, false><<<grid, kThreads, 0, stream>>>(p);
        }
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) return e;
        CentroidSelectKernel<<<grid, kThreads, 0, stream>>>(p);
        return cudaGetLastError();
      });
}

}  // namespace squeeze::gpu
