// Fused multi-query cluster scores on Hopper warpgroup MMA (wgmma): the contract and math of
// cluster_scores.cuh (two passes, no logits in memory), for d in {64, 128} on sm_90a;
// LaunchClusterScores picks it there (ClusterScoresImpl::kAuto).
//
// Both passes: a CTA holds 128 "M" rows in shared memory, two consumer warpgroups of 64 rows each,
// and a producer warpgroup streaming the "N" rows in tiles of 128 through three stages (cp.async
// into 128-byte swizzled column blocks, kernels/common/wgmma.cuh, with a per-column side array;
// each stage's copies tracked by an mbarrier, refilled once both consumers released it):
//   pass 1: M = query rows, N = centroids (or candidates), side = the cluster sizes; per M row a
//           running (max, size-weighted sum of exp) in the log2 domain;
//   pass 2: M = centroids, N = query rows, side = pass 1's (max, 1 / sum) per query row; per M
//           row (cluster) a running sum of exp(s - m_r) / l_r.
// A consumer warpgroup computes S[64][128] = M N^T of tile t + 1 (d / 16 wgmma m64n128k16) while
// it reduces tile t (two accumulator sets, alternating), so the exponentials overlap the tensor
// cores. Each thread keeps its own partial per row (its 32 of the tile's 128 columns, in column
// order), the 4 threads of a row combine at the end (xor 1, 2): every sum has a fixed order, so
// results are deterministic. Numerics as the mma.sync kernel: bf16 products, fp32 accumulation,
// ex2.approx.
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/common/device.cuh"
#include "kernels/common/mbarrier.cuh"
#include "kernels/common/wgmma.cuh"
#include "kernels/squeeze/cluster_scores.cuh"
#include "kernels/squeeze/cluster_scores_rows.cuh"

namespace squeeze::gpu {
namespace {

using detail::Exp2;
using detail::kLog2e;
using detail::MbarArrive;
using detail::MbarArriveOnCopies;
using detail::MbarInit;
using detail::MbarWait;

constexpr int kBlockM = 128;  // M rows per CTA: 64 per consumer warpgroup
constexpr int kBlockN = 128;  // N rows per tile
constexpr int kStages = 3;
constexpr int kThreads = 384;  // producer warpgroup + two consumer warpgroups
constexpr int kSideFloats = 2 * kBlockN;

template <int D>
struct Smem {
  static constexpr int kMBytes = kBlockM * D * 2;
  static constexpr int kTileBytes = kBlockN * D * 2;
  static constexpr int kNOff = kMBytes;
  static constexpr int kSideOff = kNOff + kStages * kTileBytes;
  static constexpr int kBarOff = kSideOff + kStages * kSideFloats * 4;
  // mbarriers: M full, then N full and N empty per stage.
  static constexpr int kUsed = kBarOff + 8 * (1 + 2 * kStages);
  static constexpr int kBytes = kUsed + 1024;  // + alignment of the base to 1 KB
};

using detail::Centroids;
using detail::CpAsync4;
using detail::HeadRows;
using detail::SmallIntToFloat;

// The producer warpgroup's copy of kRows rows [row0, row0 + kRows) (rows at or past `valid`
// zero-filled): thread `copier` copies 16-byte chunk copier % (D / 8) of every (128 / (D / 8))-th
// row from copier / (D / 8).
template <int D, int kRows, class Rows>
__device__ __forceinline__ void CopyRows(char* dst, const Rows& rows, int row0, int valid,
                                         const bf16* any, int copier) {
  constexpr int kChunks = D / 8;
  constexpr int kRowStep = 128 / kChunks;
  static_assert(kRowStep % 8 == 0 && kRows % kRowStep == 0, "producer copy shape");
  const int c = copier % kChunks;
  char* to = dst + detail::Sw128Offset<kRows>(copier / kChunks, c);
#pragma unroll 4
  for (int r = copier / kChunks; r < kRows; r += kRowStep, to += kRowStep * 128) {
    const bool ok = row0 + r < valid;
    detail::CpAsync16(to, ok ? rows(row0 + r) + c * 8 : any, ok);
  }
}

// S = M N^T for one warpgroup: m, n the shared addresses of the warpgroup's 64 M rows and of the
// N tile (64-wide column blocks of kBlockM * 128 and kBlockN * 128 bytes).
template <int D>
__device__ __forceinline__ void IssueProducts(float (&s)[kBlockN / 2], uint32_t m, uint32_t n) {
  constexpr uint32_t kMBlock = kBlockM * 128, kNBlock = kBlockN * 128;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t koff = (kk & 3) * 32;
    const uint64_t da = detail::Sw128Desc(m + (kk >> 2) * kMBlock + koff, 16, 1024);
    const uint64_t db = detail::Sw128Desc(n + (kk >> 2) * kNBlock + koff, 16, 1024);
    detail::WgmmaSS_m64n128k16(s, da, db, kk > 0 ? 1 : 0);
  }
}

// v[0] = the sum (kMax: the maximum) of v[0 .. 2W) in a fixed pairwise order: a tree of
// independent operations, not a chain of dependent ones.
template <int W, bool kMax, int N>
__device__ __forceinline__ void TreeFold(float (&v)[N]) {
  static_assert(2 * W <= N && (W & (W - 1)) == 0, "tree shape");
#pragma unroll
  for (int i = 0; i < W; ++i) v[i] = kMax ? fmaxf(v[i], v[i + W]) : v[i] + v[i + W];
  if constexpr (W > 1) TreeFold<W / 2, kMax>(v);
}

// Folds one S tile into the thread's two rows (e >> 1 = 0: row g, 1: row g + 8). Column
// 8j + 2 tq + (e & 1) of the tile; `cols` of them are valid (the rest masked when partial).
// Pass 1: run_m / run_s = running max and size-weighted sum of 2^(s k2 - max); side = sizes.
// Pass 2: run_s += 2^(s k2 - m_r) / l_r; side = (m_r, 1 / l_r) interleaved per column.
// Every exp2 of the tile is independent and the sums are trees, so the reduction is not a chain
// of dependent adds (with one CTA of 8 consumer warps per SM, latency would bound it).
template <int kPass>
__device__ __forceinline__ void Reduce(const float (&s)[kBlockN / 2], const float* side, float k2,
                                       bool partial, int cols, int tq, float (&run_m)[2],
                                       float (&run_s)[2]) {
  constexpr int kNTiles = kBlockN / 8;
  constexpr int kPerRow = 2 * kNTiles;
  float e[2][kPerRow];  // row h, its columns in order: e[h][2j + b] is column 8j + 2tq + b
#pragma unroll
  for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
#pragma unroll
      for (int b = 0; b < 2; ++b) {
        const int col = j * 8 + 2 * tq + b;
        e[h][2 * j + b] = partial && col >= cols ? -INFINITY : s[4 * j + 2 * h + b];
      }
    }
  }
  if constexpr (kPass == 1) {
    float n[kPerRow];  // the columns' sizes
#pragma unroll
    for (int j = 0; j < kNTiles; ++j) {
      const float2 bits = *reinterpret_cast<const float2*>(side + j * 8 + 2 * tq);
      n[2 * j] = SmallIntToFloat(bits.x);
      n[2 * j + 1] = SmallIntToFloat(bits.y);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx[kPerRow];  // the maximum on the raw products (k2 > 0)
#pragma unroll
      for (int i = 0; i < kPerRow; ++i) mx[i] = e[h][i];
      TreeFold<kPerRow / 2, true>(mx);
      const float m_new = fmaxf(run_m[h], mx[0] * k2);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // nothing valid yet: sums stay 0
#pragma unroll
      for (int i = 0; i < kPerRow; ++i) e[h][i] = n[i] * Exp2(fmaf(e[h][i], k2, -m_use));
      TreeFold<kPerRow / 2, false>(e[h]);
      run_s[h] = fmaf(run_s[h], Exp2(run_m[h] - m_use), e[h][0]);
      run_m[h] = m_new;
    }
  } else {
#pragma unroll
    for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
      for (int b = 0; b < 2; ++b) {
        const int col = j * 8 + 2 * tq + b;
        const float2 st = *reinterpret_cast<const float2*>(side + 2 * col);  // (m_r, 1 / l_r)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          // A masked column's -inf product gives exp2(-inf) = 0 (its zero-filled stats too).
          e[h][2 * j + b] = Exp2(fmaf(e[h][2 * j + b], k2, -st.x)) * st.y;
        }
      }
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      TreeFold<kPerRow / 2, false>(e[h]);
      run_s[h] += e[h][0];
    }
  }
}

template <int D, int kPass>
__global__ void __launch_bounds__(kThreads, 1) ScoresSm90Kernel(const ClusterScoresParams p) {
#if defined(__CUDA_ARCH__) && !defined(SQUEEZE_WGMMA)
  __trap();
#endif
  using S = Smem<D>;
  extern __shared__ char smem_raw[];
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t pad = (1024 - (raw & 1023)) & 1023;
  char* smem = smem_raw + pad;
  const uint32_t sbase = raw + pad;
  const uint32_t m_full = sbase + S::kBarOff;
  auto full = [&](int st) { return m_full + 8 * (1 + st); };
  auto empty = [&](int st) { return m_full + 8 * (1 + kStages + st); };

  const int h = blockIdx.y;
  const detail::ScoresHead head = detail::MakeScoresHead<D, kPass>(p, h);
  const SqueezeHeadDesc& hd = head.hd;
  const int C = head.C, R = head.R, m_rows = head.m_rows, n_rows = head.n_rows;
  const int row0 = blockIdx.x * kBlockM;
  if (C <= 0 || row0 >= m_rows) return;  // CTA-uniform
  const HeadRows& queries = head.queries;
  const Centroids& centroids = head.centroids;
  const float* stats = head.stats;
  const int num_tiles = (n_rows + kBlockN - 1) / kBlockN;
  const int tid = threadIdx.x;
  const int wg = tid >> 7;

  if (tid == 0) {
    MbarInit(m_full, 128);
    for (int st = 0; st < kStages; ++st) {
      MbarInit(full(st), 128);
      MbarInit(empty(st), 256);
    }
  }
  __syncthreads();

  if (wg == 0) {
    // ---- Producer: the M tile, then N tiles with their side arrays.
    detail::SetMaxRegsDec<40>();
    if constexpr (kPass == 1) {
      CopyRows<D, kBlockM>(smem, queries, row0, m_rows, queries.q, tid);
    } else {
      CopyRows<D, kBlockM>(smem, centroids, row0, m_rows, centroids.c, tid);
    }
    MbarArriveOnCopies(m_full);
    for (int t = 0; t < num_tiles; ++t) {
      const int st = t % kStages;
      if (t >= kStages) MbarWait(empty(st), ((t / kStages) & 1) ^ 1);
      char* dst = smem + S::kNOff + st * S::kTileBytes;
      char* side = smem + S::kSideOff + st * kSideFloats * 4;
      const int n0 = t * kBlockN, r = n0 + tid;
      const bool ok = r < n_rows;
      if constexpr (kPass == 1) {
        CopyRows<D, kBlockN>(dst, centroids, n0, n_rows, centroids.c, tid);
        CpAsync4(side + 4 * tid, hd.sizes + (ok ? centroids.Id(r) : 0), ok);
      } else {
        CopyRows<D, kBlockN>(dst, queries, n0, n_rows, queries.q, tid);
        CpAsync4(side + 8 * tid, stats + (ok ? r : 0), ok);
        CpAsync4(side + 8 * tid + 4, stats + R + (ok ? r : 0), ok);
      }
      MbarArriveOnCopies(full(st));
    }
    detail::CpAsyncWait<0>();
    return;
  }

  // ---- Consumers.
  detail::SetMaxRegsInc<232>();
  const int cwg = wg - 1, lane = tid & 31, warp_in_wg = (tid >> 5) & 3;
  const int g = lane >> 2, tq = lane & 3;
  const uint32_t m_wg = sbase + cwg * 64 * 128;
  const float k2 = p.scale * kLog2e;  // logits in the log2 domain
  const float* side_s = reinterpret_cast<const float*>(smem + S::kSideOff);
  float run_m[2] = {-INFINITY, -INFINITY};
  float run_s[2] = {0.0f, 0.0f};
  float sa[kBlockN / 2], sb[kBlockN / 2];
#pragma unroll
  for (int i = 0; i < kBlockN / 2; ++i) sa[i] = sb[i] = 0.0f;

  auto tile = [&](int t) {
    MbarWait(full(t % kStages), (t / kStages) & 1);
    detail::FenceProxyAsyncShared();  // the cp.async writes, seen through the barrier, to wgmma
    return sbase + S::kNOff + (t % kStages) * S::kTileBytes;
  };
  // Tile t's products are complete in `s`: fold them in, release the stage.
  auto fold = [&](const float(&s)[kBlockN / 2], int t) {
    const int cols = n_rows - t * kBlockN;
    Reduce<kPass>(s, side_s + (t % kStages) * kSideFloats, k2, cols < kBlockN, cols, tq, run_m,
                  run_s);
    MbarArrive(empty(t % kStages));
  };
  MbarWait(m_full, 0);
  detail::FenceProxyAsyncShared();
  // S of tile t + 1 is issued before tile t is folded (sa: even tiles, sb: odd ones): the steady
  // state two tiles a turn, then the last one or two (no branch around a wgmma inside the loop).
  auto issue = [&](float(&s)[kBlockN / 2], int t) {
    const uint32_t n = tile(t);
    detail::WgmmaFence();
    IssueProducts<D>(s, m_wg, n);
    detail::WgmmaCommit();
  };
  issue(sa, 0);
  int t = 0;
  for (; t + 2 < num_tiles; t += 2) {
    issue(sb, t + 1);
    detail::WgmmaWait<1>();
    detail::FenceRegisters(sa);
    fold(sa, t);
    issue(sa, t + 2);
    detail::WgmmaWait<1>();
    detail::FenceRegisters(sb);
    fold(sb, t + 1);
  }
  if (t + 1 < num_tiles) {
    issue(sb, t + 1);
    detail::WgmmaWait<1>();
    detail::FenceRegisters(sa);
    fold(sa, t);
    detail::WgmmaWait<0>();
    detail::FenceRegisters(sb);
    fold(sb, t + 1);
  } else {
    detail::WgmmaWait<0>();
    detail::FenceRegisters(sa);
    fold(sa, t);
  }

  // ---- The 4 threads of each row combine, one of them writes.
#pragma unroll
  for (int hh = 0; hh < 2; ++hh) {
    const int row = row0 + cwg * 64 + warp_in_wg * 16 + hh * 8 + g;
    detail::CombineAndStore<kPass>(run_m[hh], run_s[hh], row, m_rows, tq, p, h, R, centroids);
  }
}

template <int D>
cudaError_t LaunchTyped(const ClusterScoresParams& p, cudaStream_t stream) {
  constexpr int kBytes = Smem<D>::kBytes;
  const cudaError_t err = detail::LaunchScoresPass(ScoresSm90Kernel<D, 1>, kThreads, kBytes,
                                                   kBlockM, p.num_tokens * p.group, p, stream);
  if (err != cudaSuccess) return err;
  return detail::LaunchScoresPass(ScoresSm90Kernel<D, 2>, kThreads, kBytes, kBlockM, p.max_clusters,
                                  p, stream);
}

}  // namespace

namespace detail {

cudaError_t LaunchClusterScoresSm90(const ClusterScoresParams& p, cudaStream_t stream) {
  switch (p.head_dim) {
    case 64:
      return LaunchTyped<64>(p, stream);
    case 128:
      return LaunchTyped<128>(p, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace detail
}  // namespace squeeze::gpu
