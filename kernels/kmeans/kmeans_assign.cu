// Fused tensor-core nearest-centre assignment (see kmeans_assign.cuh).
//
// CTA: 8 warps, 256 points of one problem (grid (ceil(n / 256), P)); warp w owns points
// [32w, 32w + 32) = two m16 row tiles. The CTA walks the problem's centres in tiles of 64.
// Why 256 x 64: every centre byte copied from L2 into shared memory feeds 256 points (256 FLOP
// per byte at d = 128), half the L2 traffic of a 128-point tile at the ~4 TB/s that a tensor
// core rate of several hundred TFLOP/s would otherwise need.
// Point fragments (A) are loaded from shared memory into registers once (2 x d/16 x 4 words,
// 64 registers at d = 128) and reused for every centre tile, so the inner loop reads only B
// fragments: per 16-dim k-step a warp issues 4 ldmatrix.x4 for 16 mma (32 FLOP per shared
// byte, the ratio mma.sync needs not to be shared-memory bound).
// Pipeline: centre tiles are copied with 16-byte cp.async, 3 stages deep (two tiles in flight
// while one is computed); the point tile travels in the first group. Shared rows are d bf16 =
// d/8 chunks of 16 bytes, chunk c of row r stored at chunk c ^ (r & 7) so the 8 rows an
// ldmatrix phase reads hit 8 distinct bank groups (the layout of prefill_attention.cu).
// Epilogue per centre tile: thread (g = lane / 4, q = lane % 4) holds, for each of its 4 rows,
// 16 scores (8 n-tiles x columns 2q, 2q + 1). Their max is compared with the row's running best;
// only when it is strictly greater (rare after the first tiles) is the first column holding it
// searched, so the argmax costs about one FMNMX per score. Columns at or past k (last tile) are
// -inf. Ties: a thread scans its columns in increasing order and keeps the first; the 4 threads
// of a row then reduce (value, index) with ties to the lower index, which gives the lowest
// index among all maxima, as the CPU reference.
// With `second` (kSecond): each thread also keeps the largest score of its columns other than its
// argmax (a tile's maximum that does not beat the best is one FMNMX; the rare new best looks for
// the tile's runner-up among the other 15), merged over the 4 threads with the argmax.
// Gathered mode: the point tile's rows come from the problem's row list (one index load per
// 16-byte chunk), CTAs past the list's end exit at once.
#include <cuda_bf16.h>

#include <climits>
#include <cstdint>

#include "kernels/common/device.cuh"
#include "kernels/common/mma_tile.cuh"
#include "kernels/kmeans/kmeans_assign.cuh"

namespace squeeze::gpu {
namespace {

constexpr int kBlockM = kKMeansAssignBlockM;  // 256 points
constexpr int kBlockN = kKMeansAssignBlockN;  // 64 centres
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kRowsPerWarp = kBlockM / kWarps;  // 32 = two m16 tiles
constexpr int kMTiles = kRowsPerWarp / 16;      // 2
constexpr int kNTiles = kBlockN / 8;            // 8 n8 tiles per centre tile
constexpr int kStages = 3;
static_assert(kMTiles == 2 && kNTiles == 8, "epilogue indexing assumes 2 x 8 fragments");

template <int D>
struct AssignSmem {
  static constexpr int kPointBytes = kBlockM * D * 2;               // 64 KB at d = 128
  static constexpr int kTileBytes = kBlockN * D * 2;                // 16 KB at d = 128
  static constexpr int kCenterOff = kPointBytes;                    // centre stages
  static constexpr int kBytes = kCenterOff + kStages * kTileBytes;  // 112 KB / 56 KB
};

// Copies rows [row0, row0 + kRows) of a contiguous [rows][D] bf16 matrix into a swizzled shared
// tile; rows at or past `valid_rows` are zero-filled and not read.
template <int D, int kRows>
__device__ __forceinline__ void IssueTile(char* dst, const bf16* src, int row0, int valid_rows) {
  detail::IssueSwizzledTile<D, kRows, kThreads>(
      dst, [src](int r) { return src + static_cast<int64_t>(r) * D; }, row0, valid_rows, src);
}

// ptxas (sm_90a): see the launcher comment for the register budget; one CTA per SM (112 KB of
// shared memory at d = 128).
template <int D, bool kSecond>
__global__ void __launch_bounds__(kThreads, 1) AssignKernel(const KMeansAssignParams p) {
  using Smem = AssignSmem<D>;
  constexpr int kKSteps = D / 16;
  extern __shared__ __align__(128) char smem[];

  const int prob = blockIdx.y;
  if (p.active != nullptr && p.active[prob] == 0) return;  // CTA-uniform
  const int n = p.n, k = p.k;
  const int row0 = blockIdx.x * kBlockM;
  const int32_t* rows = p.rows != nullptr ? p.rows + static_cast<int64_t>(prob) * n : nullptr;
  const int count = rows != nullptr ? p.row_count[prob] : n;  // rows of this problem to score
  if (row0 >= count) return;                                  // CTA-uniform
  const bf16* points = p.points + static_cast<int64_t>(prob) * p.points_stride;
  const bf16* centers = p.centers + static_cast<int64_t>(prob) * p.centers_stride;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, tq = lane & 3;
  const uint32_t sbase = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int num_tiles = (k + kBlockN - 1) / kBlockN;

  // Group 0: the point tile and centre tile 0; groups 1..kStages-2: the next centre tiles.
  detail::IssueSwizzledTile<D, kBlockM, kThreads>(
      smem,
      [points, rows](int r) {
        return points + static_cast<int64_t>(rows != nullptr ? rows[r] : r) * D;
      },
      row0, count, points);
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < num_tiles) {
      IssueTile<D, kBlockN>(smem + Smem::kCenterOff + s * Smem::kTileBytes, centers, s * kBlockN,
                            k);
    }
    detail::CpAsyncCommit();
  }

  uint32_t a[kMTiles][kKSteps][4];  // this warp's 32 points, all of d
  // Running (max, first argmax) of the thread's 4 rows: r = 2 * mt + h is row
  // 32 warp + 16 mt + 8 h + g, over the columns 2q, 2q + 1 of every n8 tile seen so far.
  float best[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
  int best_col[4] = {INT_MAX, INT_MAX, INT_MAX, INT_MAX};
  float second[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};  // kSecond only

  for (int t = 0; t < num_tiles; ++t) {
    detail::CpAsyncWait<kStages - 2>();  // tile t (and the points) landed for this thread ...
    __syncthreads();                     // ... and for everyone; the stage of tile t-1 is free
    if (t == 0) {
      detail::LoadRowFragments<D, kMTiles>(sbase, warp * kRowsPerWarp, a);
    }
    const int next = t + kStages - 1;
    if (next < num_tiles) {
      IssueTile<D, kBlockN>(smem + Smem::kCenterOff + (next % kStages) * Smem::kTileBytes, centers,
                            next * kBlockN, k);
    }
    detail::CpAsyncCommit();
    const uint32_t cs = sbase + Smem::kCenterOff + (t % kStages) * Smem::kTileBytes;

    // ---- Scores of the warp's 32 points x the tile's 64 centres.
    float acc[kMTiles][kNTiles][4];
    detail::TileProducts<D, kMTiles, kNTiles>(a, cs, acc);

    // ---- Running argmax. Accumulator e of n-tile j is row g + 8 (e >> 1), column
    // 8j + 2q + (e & 1) of the tile.
    const int col0 = t * kBlockN;
    if (col0 + kBlockN > k) {  // last, partial tile: centres past k were zero-filled
#pragma unroll
      for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (col0 + j * 8 + 2 * tq + (e & 1) >= k) {
#pragma unroll
            for (int mt = 0; mt < kMTiles; ++mt) acc[mt][j][e] = -INFINITY;
          }
        }
      }
    }
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        float m = fmaxf(acc[mt][0][2 * h], acc[mt][0][2 * h + 1]);
#pragma unroll
        for (int j = 1; j < kNTiles; ++j) {
          m = fmaxf(m, fmaxf(acc[mt][j][2 * h], acc[mt][j][2 * h + 1]));
        }
        const int r = 2 * mt + h;
        if (m > best[r]) {
          // First column (in increasing order) holding the new maximum: walk backwards so the
          // lowest match is written last.
          int col = 8 * (kNTiles - 1) + 1;
#pragma unroll
          for (int j = kNTiles - 1; j >= 0; --j) {
            if (acc[mt][j][2 * h + 1] == m) col = 8 * j + 1;
            if (acc[mt][j][2 * h] == m) col = 8 * j;
          }
          if constexpr (kSecond) {
            // The old best and every other column of this tile are the runners-up.
            float runner = best[r];
#pragma unroll
            for (int j = 0; j < kNTiles; ++j) {
              if (8 * j != col) runner = fmaxf(runner, acc[mt][j][2 * h]);
              if (8 * j + 1 != col) runner = fmaxf(runner, acc[mt][j][2 * h + 1]);
            }
            second[r] = runner;
          }
          best[r] = m;
          best_col[r] = col0 + col + 2 * tq;
        } else if constexpr (kSecond) {
          second[r] = fmaxf(second[r], m);
        }
      }
    }
  }
  detail::CpAsyncWait<0>();  // only empty groups can remain; drained before exit

  // ---- Reduce the 4 threads of each row, then one thread per row writes.
  int num_changed = 0;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    float v = best[r], v2 = second[r];
    int c = best_col[r];
#pragma unroll
    for (int o = 1; o <= 2; o <<= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, v, o);
      const int oc = __shfl_xor_sync(0xffffffffu, c, o);
      const float ov2 = kSecond ? __shfl_xor_sync(0xffffffffu, v2, o) : 0.0f;
      if (ov > v || (ov == v && oc < c)) {
        if constexpr (kSecond) v2 = fmaxf(ov2, v);
        v = ov;
        c = oc;
      } else if constexpr (kSecond) {
        v2 = fmaxf(v2, ov);
      }
    }
    const int row = row0 + warp * kRowsPerWarp + (r >> 1) * 16 + (r & 1) * 8 + g;
    if (tq != 0 || row >= count) continue;
    const int64_t at = static_cast<int64_t>(prob) * n + (rows != nullptr ? rows[row] : row);
    if constexpr (kSecond) p.second[at] = v2;
    const int32_t label = p.label_offset + c;
    if (p.merge) {
      if (v > p.best[at]) {
        p.best[at] = v;
        p.labels[at] = label;
      }
    } else {
      num_changed += p.labels[at] != label;
      p.labels[at] = label;
      p.best[at] = v;
    }
  }
  if (p.changed != nullptr) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) num_changed += __shfl_xor_sync(0xffffffffu, num_changed, o);
    if (lane == 0 && num_changed > 0) atomicAdd(&p.changed[prob], num_changed);
  }
}

template <int D>
cudaError_t LaunchTyped(const KMeansAssignParams& p, cudaStream_t stream) {
  auto kernel = p.second != nullptr ? AssignKernel<D, true> : AssignKernel<D, false>;
  constexpr int kBytes = AssignSmem<D>::kBytes;
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kBytes);
  if (err != cudaSuccess) return err;
  const dim3 grid((p.n + kBlockM - 1) / kBlockM, p.num_problems);
  kernel<<<grid, kThreads, kBytes, stream>>>(p);
  return cudaGetLastError();
}

bool Aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

}  // namespace

cudaError_t LaunchKMeansAssign(const KMeansAssignParams& p, cudaStream_t stream) {
  if (p.num_problems <= 0 || p.num_problems > 65535 || p.n <= 0 || p.k <= 0) {
    return cudaErrorInvalidValue;
  }
  if (p.points == nullptr || p.centers == nullptr || p.labels == nullptr || p.best == nullptr ||
      !Aligned16(p.points) || !Aligned16(p.centers) || p.points_stride % 8 != 0 ||
      p.centers_stride % 8 != 0 ||
      (p.merge && (p.changed != nullptr || p.second != nullptr || p.rows != nullptr)) ||
      ((p.rows == nullptr) != (p.row_count == nullptr))) {
    return cudaErrorInvalidValue;
  }
  if (p.num_problems > 1 && (p.points_stride < static_cast<int64_t>(p.n) * p.dpad ||
                             p.centers_stride < static_cast<int64_t>(p.k) * p.dpad)) {
    return cudaErrorInvalidValue;
  }
  // Rows are zero-padded to 64 or 128 (head dims between, 96 included, use 128): one fewer
  // instantiation than detail::DispatchHeadDim, at registration time only.
  switch (p.dpad) {
    case 64:
      return LaunchTyped<64>(p, stream);
    case 128:
      return LaunchTyped<128>(p, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace squeeze::gpu
