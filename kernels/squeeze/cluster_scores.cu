// Fused multi-query cluster scores (see cluster_scores.cuh).
//
// Both passes share one tensor-core loop, the structure of the k-means assignment
// (kmeans_assign.cu): a CTA of 8 warps holds 256 "M" rows as A fragments in registers (two m16
// tiles per warp, all of d) and streams the "N" rows in tiles of 64 through a 3-stage cp.async
// pipeline into swizzled shared memory, with a small per-column side array alongside:
//   pass 1: M = query rows, N = centroids, side = the cluster sizes; per M row a running
//           (max, size-weighted sum of exp) in the log2 domain, merged over the 4 threads of the
//           row at the end;
//   pass 2: M = centroids, N = query rows, side = pass 1's (max, 1 / sum) per query row; per M
//           row (cluster) a running sum of exp(s - m_r) / l_r, in a fixed order.
// Accumulator e of n-tile j of m-tile mt is M row 16 mt + 8 (e >> 1) + lane / 4 of the warp's
// 32 and N column 8 j + 2 (lane % 4) + (e & 1) of the tile.
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/common/device.cuh"
#include "kernels/common/dispatch.cuh"
#include "kernels/common/mma_tile.cuh"
#include "kernels/squeeze/cluster_scores.cuh"
#include "kernels/squeeze/cluster_scores_rows.cuh"

namespace squeeze::gpu {
namespace {

constexpr int kBlockM = 256;
constexpr int kBlockN = 64;
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kRowsPerWarp = kBlockM / kWarps;  // 32 = two m16 tiles
constexpr int kMTiles = kRowsPerWarp / 16;
constexpr int kNTiles = kBlockN / 8;
constexpr int kStages = 3;
constexpr int kSideFloats = 2 * kBlockN;  // per stage: sizes (pass 1) or max and 1 / sum

template <int D>
struct ScoresSmem {
  static constexpr int kMBytes = kBlockM * D * 2;  // 64 KB at d = 128
  static constexpr int kTileBytes = kBlockN * D * 2;
  static constexpr int kNOff = kMBytes;
  static constexpr int kSideOff = kNOff + kStages * kTileBytes;
  static constexpr int kBytes = kSideOff + kStages * kSideFloats * 4;
};

using detail::Exp2;
using detail::kLog2e;

using detail::Centroids;
using detail::CpAsync4;
using detail::HeadRows;

template <int D, int kPass>
__global__ void __launch_bounds__(kThreads, 1) ScoresKernel(const ClusterScoresParams p) {
  using Smem = ScoresSmem<D>;
  constexpr int kKSteps = D / 16;
  extern __shared__ __align__(128) char smem[];

  const int h = blockIdx.y;
  const detail::ScoresHead head = detail::MakeScoresHead<D, kPass>(p, h);
  const SqueezeHeadDesc& hd = head.hd;
  const int C = head.C, R = head.R, m_rows = head.m_rows, n_rows = head.n_rows;
  const int row0 = blockIdx.x * kBlockM;
  if (C <= 0 || row0 >= m_rows) return;  // CTA-uniform
  const HeadRows& queries = head.queries;
  const Centroids& centroids = head.centroids;
  const float* stats = head.stats;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, tq = lane & 3;
  const uint32_t sbase = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int num_tiles = (n_rows + kBlockN - 1) / kBlockN;
  float* side_s = reinterpret_cast<float*>(smem + Smem::kSideOff);

  auto issue_n = [&](int tile, int stage) {
    char* dst = smem + Smem::kNOff + stage * Smem::kTileBytes;
    const int n0 = tile * kBlockN;
    float* side = side_s + stage * kSideFloats;
    if constexpr (kPass == 1) {
      detail::IssueSwizzledTile<D, kBlockN, kThreads>(dst, centroids, n0, n_rows, centroids.c);
      if (threadIdx.x < kBlockN) {
        const int c = n0 + threadIdx.x;
        CpAsync4(side + threadIdx.x, hd.sizes + (c < n_rows ? centroids.Id(c) : 0), c < n_rows);
      }
    } else {
      detail::IssueSwizzledTile<D, kBlockN, kThreads>(dst, queries, n0, n_rows, queries.q);
      if (threadIdx.x < 2 * kBlockN) {
        const int i = threadIdx.x % kBlockN, r = n0 + i;
        const float* src = stats + (threadIdx.x < kBlockN ? 0 : R) + (r < n_rows ? r : 0);
        CpAsync4(side + threadIdx.x, src, r < n_rows);
      }
    }
  };

  // Group 0: the M tile and N tile 0; groups 1..kStages-2: the next N tiles.
  if constexpr (kPass == 1) {
    detail::IssueSwizzledTile<D, kBlockM, kThreads>(smem, queries, row0, m_rows, queries.q);
  } else {
    detail::IssueSwizzledTile<D, kBlockM, kThreads>(smem, centroids, row0, m_rows, centroids.c);
  }
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < num_tiles) issue_n(s, s);
    detail::CpAsyncCommit();
  }

  const float k2 = p.scale * kLog2e;  // logits in the log2 domain
  uint32_t a[kMTiles][kKSteps][4];
  // Per M row r4 = 2 mt + (e >> 1) of this thread: pass 1 (max, sum) over its columns so far;
  // pass 2 the sum of probabilities over its columns so far.
  float run_m[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
  float run_s[4] = {0.0f, 0.0f, 0.0f, 0.0f};

  for (int t = 0; t < num_tiles; ++t) {
    detail::CpAsyncWait<kStages - 2>();  // tile t (and the M tile) landed for this thread ...
    __syncthreads();                     // ... and for everyone; the stage of tile t-1 is free
    if (t == 0) detail::LoadRowFragments<D, kMTiles>(sbase, warp * kRowsPerWarp, a);
    const int next = t + kStages - 1;
    if (next < num_tiles) issue_n(next, next % kStages);
    detail::CpAsyncCommit();
    const int stage = t % kStages;
    const uint32_t ns = sbase + Smem::kNOff + stage * Smem::kTileBytes;
    const float* side = side_s + stage * kSideFloats;

    float acc[kMTiles][kNTiles][4];
    detail::TileProducts<D, kMTiles, kNTiles>(a, ns, acc);

    const int n0 = t * kBlockN;
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int r4 = 2 * mt + hh;
        if constexpr (kPass == 1) {
          float x[2 * kNTiles];
          float tmax = -INFINITY;
#pragma unroll
          for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
            for (int b = 0; b < 2; ++b) {
              const int col = j * 8 + 2 * tq + b;
              const float v = n0 + col < n_rows ? acc[mt][j][2 * hh + b] * k2 : -INFINITY;
              x[2 * j + b] = v;
              tmax = fmaxf(tmax, v);
            }
          }
          if (tmax == -INFINITY) continue;
          const float m_new = fmaxf(run_m[r4], tmax);
          float s = run_s[r4] * Exp2(run_m[r4] - m_new);  // 0 while run_m = -inf
#pragma unroll
          for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
            for (int b = 0; b < 2; ++b) {
              const int col = j * 8 + 2 * tq + b;
              // side: the sizes (int32 bits); columns past n_rows are -inf (exp 0) and size 0.
              const float n = detail::SmallIntToFloat(side[col]);
              s = fmaf(n, Exp2(x[2 * j + b] - m_new), s);
            }
          }
          run_m[r4] = m_new;
          run_s[r4] = s;
        } else {
          float s = run_s[r4];
#pragma unroll
          for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
            for (int b = 0; b < 2; ++b) {
              const int col = j * 8 + 2 * tq + b;
              if (n0 + col < n_rows) {
                s = fmaf(Exp2(fmaf(acc[mt][j][2 * hh + b], k2, -side[col])), side[kBlockN + col],
                         s);
              }
            }
          }
          run_s[r4] = s;
        }
      }
    }
  }
  detail::CpAsyncWait<0>();  // only empty groups can remain; drained before exit

  // ---- The 4 threads of each M row combine, one of them writes.
#pragma unroll
  for (int r4 = 0; r4 < 4; ++r4) {
    const int row = row0 + warp * kRowsPerWarp + (r4 >> 1) * 16 + (r4 & 1) * 8 + g;
    detail::CombineAndStore<kPass>(run_m[r4], run_s[r4], row, m_rows, tq, p, h, R, centroids);
  }
}

template <int D>
cudaError_t LaunchTyped(const ClusterScoresParams& p, cudaStream_t stream) {
  constexpr int kBytes = ScoresSmem<D>::kBytes;
  const cudaError_t err = detail::LaunchScoresPass(ScoresKernel<D, 1>, kThreads, kBytes, kBlockM,
                                                   p.num_tokens * p.group, p, stream);
  if (err != cudaSuccess) return err;
  return detail::LaunchScoresPass(ScoresKernel<D, 2>, kThreads, kBytes, kBlockM, p.max_clusters, p,
                                  stream);
}

}  // namespace

size_t ClusterScoresWorkspaceBytes(int num_heads, int num_tokens, int group) {
  return static_cast<size_t>(num_heads) * 2 * num_tokens * group * sizeof(float);
}

bool ClusterScoresWgmmaSupported(int head_dim) {
  return (head_dim == 64 || head_dim == 128) && detail::ComputeCapability() == 90;
}

cudaError_t LaunchClusterScores(const ClusterScoresParams& p, cudaStream_t stream) {
  if (p.num_heads <= 0 || p.num_heads > 65535 || p.num_tokens <= 0 || p.group <= 0 ||
      int64_t{p.num_tokens} * p.group > (int64_t{1} << 30) || p.q == nullptr ||
      p.heads == nullptr || p.row_stats == nullptr || p.scores == nullptr || p.max_clusters < 0 ||
      p.score_stride < p.max_clusters || (reinterpret_cast<uintptr_t>(p.q) & 15) != 0 ||
      p.q_token_stride % 8 != 0 || (p.candidates != nullptr && p.num_candidates == nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (p.max_clusters == 0) return cudaSuccess;
  if (p.impl == ClusterScoresImpl::kWgmma) {
    if (!ClusterScoresWgmmaSupported(p.head_dim)) return cudaErrorInvalidValue;
    return detail::LaunchClusterScoresSm90(p, stream);
  }
  return detail::DispatchHeadDim(
      p.head_dim, [&](auto d) { return LaunchTyped<decltype(d)::value>(p, stream); });
}

}  // namespace squeeze::gpu
