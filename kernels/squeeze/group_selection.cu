// Group selection of a cascade decode step (see group_selection.cuh).
//
// Passes 1 and 2 share the tensor-core loop of the cluster scores (cluster_scores.cu): a CTA of 8
// warps holds 256 clusters of one KV head as A fragments in registers (32 per warp, all of d) and
// streams the group's query rows in tiles of 64 as B (converted from fp32 to bf16 hi and lo parts
// into two swizzled shared tiles). Accumulator e of n-tile j of m-tile mt is cluster
// 16 mt + 8 (e >> 1) + lane / 4 of the warp's 32 and query row 8 j + 2 (lane % 4) + (e & 1) of the
// tile.
//   pass 1: per query row (column), the max over the CTA's clusters (xor-shuffles over the 8 lanes
//           of a column, then the 8 warps through shared memory) and the size-weighted sum of
//           2^(s - max); the head's last block (arrival counter) merges the blocks.
//   pass 2: query tiles hold whole sequences (64 / G of them); each warp writes its 32 x 64
//           probabilities to shared memory and lane i sums cluster i's G rows per sequence and
//           compares the mean with the sequence's tau, setting the sequence's bit.
// Union: every split of a head's clusters scans its clusters' kept key counts (block-wide
// exclusive scans over rounds of 256 clusters) after the keys of the clusters before it, and the
// warps write each kept cluster's rows and mask with coalesced stores; the head's last split
// writes the window and the totals.
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/common/device.cuh"
#include "kernels/common/dispatch.cuh"
#include "kernels/common/mma_tile.cuh"
#include "kernels/squeeze/group_selection.cuh"

namespace squeeze::gpu {
namespace {

constexpr int kBlockC = 256;  // clusters per CTA (M)
constexpr int kTileR = 64;    // query rows per tile (N)
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kMTiles = 2;  // 32 clusters per warp
constexpr int kNTiles = kTileR / 8;
constexpr int kScratchStride = kTileR + 1;  // pass 2 probabilities, padded against bank conflicts
constexpr int kCounterStride = 32;          // uint32 per counter (one 128-byte line)

using detail::Exp2;
using detail::kLog2e;

// Workspace layout (byte offsets), the same on host and device.
struct Layout {
  size_t counters, block_stats, row_stats, cluster_mask, union_part, bytes;
  int blocks;  // cluster blocks per head
  __host__ __device__ Layout(int n, int group, int hkv, int max_clusters) {
    const size_t R = static_cast<size_t>(n) * group;
    blocks = (max_clusters + kBlockC - 1) / kBlockC;
    size_t off = 0;
    auto take = [&off](size_t b) {
      const size_t at = off;
      off = (off + b + 255) / 256 * 256;
      return at;
    };
    counters = take(2 * static_cast<size_t>(hkv) * kCounterStride * sizeof(uint32_t));
    block_stats = take(static_cast<size_t>(hkv) * blocks * R * 2 * sizeof(float));
    row_stats = take(static_cast<size_t>(hkv) * R * 2 * sizeof(float));
    cluster_mask = take(static_cast<size_t>(hkv) * (max_clusters > 0 ? max_clusters : 1) * 8);
    union_part = take(static_cast<size_t>(hkv) * kGroupUnionSplits * (n + 1) * sizeof(int32_t));
    bytes = off;
  }
};

template <typename T>
__device__ __forceinline__ T* At(void* base, size_t off) {
  return reinterpret_cast<T*>(static_cast<char*>(base) + off);
}

template <int D>
struct SelSmem {
  static constexpr int kCBytes = kBlockC * D * 2;  // centroid tile (A), 64 KB at d = 128
  static constexpr int kQBytes = kTileR * D * 2;   // one query tile (hi or lo)
  static constexpr int kHiOff = kCBytes;
  static constexpr int kLoOff = kHiOff + kQBytes;
  static constexpr int kScratchOff = kLoOff + kQBytes;
  // pass 1: float [kWarps][kTileR][2]; pass 2: float [kWarps][32][kScratchStride]
  static constexpr int kScratchBytes = kWarps * 32 * kScratchStride * 4;
  static constexpr int kRowOff = kScratchOff + kScratchBytes;  // pass 2: float [R][2]
  static constexpr int kTauOff = kRowOff + kGroupMaxRows * 2 * 4;
  static constexpr int kBytes = kTauOff + kGroupMaxSeqs * 4;
};

// Rows [row0, row0 + rows) of the group's queries (row r: sequence r / G, head h * G + r % G) as
// bf16 hi and lo parts into two swizzled [kTileR][D] tiles; rows past `rows` are zero.
template <int D>
__device__ __forceinline__ void StageQueries(const GroupSelectionParams& p, int h, int G, int row0,
                                             int rows, char* hi, char* lo) {
  constexpr int kChunks = D / 8;
  for (int idx = threadIdx.x; idx < kTileR * kChunks; idx += kThreads) {
    const int r = idx / kChunks, c = idx - r * kChunks;
    uint4 vh = make_uint4(0u, 0u, 0u, 0u), vl = vh;
    if (r < rows) {
      const int row = row0 + r, s = row / G, g = row - s * G;
      const float4* src =
          reinterpret_cast<const float4*>(p.q + static_cast<int64_t>(s) * p.q_seq_stride +
                                          static_cast<int64_t>(h * G + g) * D + c * 8);
      const float4 a = src[0], b = src[1];
      const float x[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
      uint32_t wh[4], wl[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const __nv_bfloat162 h2 = __floats2bfloat162_rn(x[2 * i], x[2 * i + 1]);
        const float2 back = __bfloat1622float2(h2);
        const __nv_bfloat162 l2 = __floats2bfloat162_rn(x[2 * i] - back.x, x[2 * i + 1] - back.y);
        wh[i] = *reinterpret_cast<const uint32_t*>(&h2);
        wl[i] = *reinterpret_cast<const uint32_t*>(&l2);
      }
      vh = make_uint4(wh[0], wh[1], wh[2], wh[3]);
      vl = make_uint4(wl[0], wl[1], wl[2], wl[3]);
    }
    *reinterpret_cast<uint4*>(hi + detail::SwizzledOffset<D>(r, c)) = vh;
    *reinterpret_cast<uint4*>(lo + detail::SwizzledOffset<D>(r, c)) = vl;
  }
}

// Centroids [c0, c0 + 256) of the head into the A tile and the warp's fragments.
template <int D>
__device__ __forceinline__ void LoadCentroids(const SqueezeHeadDesc& hd, int c0, char* smem,
                                              uint32_t (&a)[kMTiles][D / 16][4]) {
  const auto* cent = static_cast<const bf16*>(hd.centroids);
  auto row = [cent](int c) { return cent + static_cast<int64_t>(c) * D; };
  detail::IssueSwizzledTile<D, kBlockC, kThreads>(smem, row, c0, hd.num_clusters, cent);
  detail::CpAsyncCommit();
  detail::CpAsyncWait<0>();
  __syncthreads();
  const uint32_t sbase = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  detail::LoadRowFragments<D, kMTiles>(sbase, (threadIdx.x >> 5) * 32, a);
}

template <int D>
__global__ void __launch_bounds__(kThreads, 1) StatsKernel(const GroupSelectionParams p) {
  using Smem = SelSmem<D>;
  extern __shared__ __align__(128) char smem[];
  const int h = blockIdx.y, blk = blockIdx.x;
  const SqueezeHeadDesc hd = p.heads[h];
  const int C = hd.num_clusters, c0 = blk * kBlockC;
  if (c0 >= C) return;  // CTA-uniform; the head's blocks are those with c0 < C
  const int G = p.num_q_heads / p.num_kv_heads, R = p.num_seqs * G;
  const Layout lay(p.num_seqs, G, p.num_kv_heads, p.max_clusters);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g8 = lane >> 2, tq = lane & 3;

  uint32_t a[kMTiles][D / 16][4];
  LoadCentroids<D>(hd, c0, smem, a);
  float size[4];  // of the thread's clusters (mt, hh) = r4 >> 1, r4 & 1; 0 past C
#pragma unroll
  for (int r4 = 0; r4 < 4; ++r4) {
    const int c = c0 + warp * 32 + (r4 >> 1) * 16 + (r4 & 1) * 8 + g8;
    size[r4] = c < C ? static_cast<float>(__ldg(hd.sizes + c)) : 0.0f;
  }
  const float k2 = p.scale * kLog2e;
  const uint32_t sbase = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  float* red = reinterpret_cast<float*>(smem + Smem::kScratchOff);  // [kWarps][kTileR][2]
  float* out =
      At<float>(p.workspace, lay.block_stats) + (static_cast<size_t>(h) * lay.blocks + blk) * R * 2;

  for (int row0 = 0; row0 < R; row0 += kTileR) {
    __syncthreads();  // the previous tile's reads of the query tiles and `red` are done
    StageQueries<D>(p, h, G, row0, min(kTileR, R - row0), smem + Smem::kHiOff, smem + Smem::kLoOff);
    __syncthreads();
    float acc[kMTiles][kNTiles][4];
    detail::TileProducts<D, kMTiles, kNTiles>(a, sbase + Smem::kHiOff, acc);
    detail::TileProductsAdd<D, kMTiles, kNTiles>(a, sbase + Smem::kLoOff, acc);
#pragma unroll
    for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
      for (int b = 0; b < 2; ++b) {
        float x[4];
        float mx = -INFINITY;
#pragma unroll
        for (int r4 = 0; r4 < 4; ++r4) {
          x[r4] = size[r4] > 0.0f ? acc[r4 >> 1][j][2 * (r4 & 1) + b] * k2 : -INFINITY;
          mx = fmaxf(mx, x[r4]);
        }
#pragma unroll
        for (int o = 4; o <= 16; o <<= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        float sum = 0.0f;
        if (mx != -INFINITY) {
#pragma unroll
          for (int r4 = 0; r4 < 4; ++r4) sum = fmaf(size[r4], Exp2(x[r4] - mx), sum);
        }
#pragma unroll
        for (int o = 4; o <= 16; o <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
        if (g8 == 0) {
          const int col = j * 8 + 2 * tq + b;
          red[(warp * kTileR + col) * 2] = mx;
          red[(warp * kTileR + col) * 2 + 1] = sum;
        }
      }
    }
    __syncthreads();
    if (threadIdx.x < kTileR && row0 + threadIdx.x < R) {
      const int col = threadIdx.x;
      float m = -INFINITY;
      for (int w = 0; w < kWarps; ++w) m = fmaxf(m, red[(w * kTileR + col) * 2]);
      float l = 0.0f;
      if (m != -INFINITY) {
        for (int w = 0; w < kWarps; ++w) {
          l += red[(w * kTileR + col) * 2 + 1] * Exp2(red[(w * kTileR + col) * 2] - m);
        }
      }
      out[(row0 + col) * 2] = m;
      out[(row0 + col) * 2 + 1] = l;
    }
  }

  // The head's last block merges every block's (max, sum) per row.
  __shared__ int last;
  uint32_t* counter = At<uint32_t>(p.workspace, lay.counters) + h * kCounterStride;
  const int blocks_h = (C + kBlockC - 1) / kBlockC;
  if (!detail::LastArrival(counter, blocks_h, &last)) return;
  const float* all =
      At<float>(p.workspace, lay.block_stats) + static_cast<size_t>(h) * lay.blocks * R * 2;
  float* stats = At<float>(p.workspace, lay.row_stats) + static_cast<size_t>(h) * R * 2;
  for (int r = threadIdx.x; r < R; r += kThreads) {
    float m = -INFINITY;
    for (int b = 0; b < blocks_h; ++b)
      m = fmaxf(m, __ldcg(all + (static_cast<size_t>(b) * R + r) * 2));
    float l = 0.0f;
    for (int b = 0; b < blocks_h; ++b) {
      const float* e = all + (static_cast<size_t>(b) * R + r) * 2;
      l += __ldcg(e + 1) * Exp2(__ldcg(e) - m);
    }
    stats[r * 2] = m;
    stats[r * 2 + 1] = l > 0.0f ? 1.0f / l : 0.0f;  // l >= 1: the arg-max cluster counts N >= 1
  }
  if (threadIdx.x == 0) *counter = 0;
}

template <int D>
__global__ void __launch_bounds__(kThreads, 1) MaskKernel(const GroupSelectionParams p) {
  using Smem = SelSmem<D>;
  extern __shared__ __align__(128) char smem[];
  const int h = blockIdx.y, blk = blockIdx.x;
  const SqueezeHeadDesc hd = p.heads[h];
  const int C = hd.num_clusters, c0 = blk * kBlockC;
  if (c0 >= C) return;
  const int n = p.num_seqs, G = p.num_q_heads / p.num_kv_heads, R = n * G;
  const Layout lay(n, G, p.num_kv_heads, p.max_clusters);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g8 = lane >> 2, tq = lane & 3;

  float* row_m = reinterpret_cast<float*>(smem + Smem::kRowOff);  // [R]: max, then 1 / l
  float* row_inv = row_m + R;
  float* tau = reinterpret_cast<float*>(smem + Smem::kTauOff);
  const float* stats = At<float>(p.workspace, lay.row_stats) + static_cast<size_t>(h) * R * 2;
  for (int r = threadIdx.x; r < R; r += kThreads) {
    row_m[r] = stats[r * 2];
    row_inv[r] = stats[r * 2 + 1];
  }
  for (int s = threadIdx.x; s < n; s += kThreads) tau[s] = p.tau[s];
  uint32_t a[kMTiles][D / 16][4];
  LoadCentroids<D>(hd, c0, smem, a);  // its barrier also publishes row_m, row_inv and tau

  const float k2 = p.scale * kLog2e;
  const uint32_t sbase = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  float* scratch = reinterpret_cast<float*>(smem + Smem::kScratchOff) + warp * 32 * kScratchStride;
  const int per_tile = max(1, kTileR / G);  // whole sequences per query tile
  const float inv_g = 1.0f / static_cast<float>(G);
  unsigned long long kept = 0;  // lane i: sequences keeping cluster c0 + 32 warp + i

  for (int s0 = 0; s0 < n; s0 += per_tile) {
    const int seqs = min(per_tile, n - s0), rows = seqs * G, row0 = s0 * G;
    __syncthreads();  // the previous tile's reads of the query tiles are done
    StageQueries<D>(p, h, G, row0, rows, smem + Smem::kHiOff, smem + Smem::kLoOff);
    __syncthreads();
    float acc[kMTiles][kNTiles][4];
    detail::TileProducts<D, kMTiles, kNTiles>(a, sbase + Smem::kHiOff, acc);
    detail::TileProductsAdd<D, kMTiles, kNTiles>(a, sbase + Smem::kLoOff, acc);
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
      for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int crow = mt * 16 + (e >> 1) * 8 + g8;  // cluster row within the warp's 32
          const int col = j * 8 + 2 * tq + (e & 1);
          float prob = 0.0f;
          if (col < rows) {
            const int r = row0 + col;
            prob = Exp2(fmaf(acc[mt][j][e], k2, -row_m[r])) * row_inv[r];
          }
          scratch[crow * kScratchStride + col] = prob;
        }
      }
    }
    __syncwarp();
    for (int i = 0; i < seqs; ++i) {
      float sum = 0.0f;
      for (int g = 0; g < G; ++g) sum += scratch[lane * kScratchStride + i * G + g];
      if (sum * inv_g > tau[s0 + i]) kept |= 1ull << (s0 + i);
    }
    __syncwarp();
  }
  const int c = c0 + warp * 32 + lane;
  if (c < C) {
    At<unsigned long long>(p.workspace,
                           lay.cluster_mask)[static_cast<size_t>(h) * p.max_clusters + c] = kept;
  }
}

__global__ void __launch_bounds__(kThreads) UnionKernel(const GroupSelectionParams p) {
  const int split = blockIdx.x, h = blockIdx.y;
  const int n = p.num_seqs, G = p.num_q_heads / p.num_kv_heads, hkv = p.num_kv_heads;
  const Layout lay(n, G, hkv, p.max_clusters);
  const SqueezeHeadDesc hd = p.heads[h];
  const int C = hd.num_clusters;
  const int lo = static_cast<int>(static_cast<int64_t>(C) * split / kGroupUnionSplits);
  const int hi = static_cast<int>(static_cast<int64_t>(C) * (split + 1) / kGroupUnionSplits);
  const unsigned long long all = n >= 64 ? ~0ull : (1ull << n) - 1;
  const unsigned long long* mask = At<unsigned long long>(p.workspace, lay.cluster_mask) +
                                   static_cast<size_t>(h) * p.max_clusters;
  int32_t* rows_out = p.row_index + static_cast<int64_t>(h) * p.key_stride;
  unsigned long long* mask_out = p.key_mask + static_cast<int64_t>(h) * p.key_stride;
  const int lane = threadIdx.x & 31;

  __shared__ unsigned long long scan_scratch[kWarps];
  __shared__ int seq_rows[kGroupMaxSeqs];
  for (int s = threadIdx.x; s < n; s += kThreads) seq_rows[s] = 0;

  // Keys of the kept clusters before this split's first.
  unsigned long long before = 0;
  for (int c = threadIdx.x; c < lo; c += kThreads) {
    if (mask[c] != 0) before += __ldg(hd.sizes + c);
  }
  unsigned long long base = 0;
  detail::BlockExclusiveScan(before, &base, scan_scratch);  // base = the block's total

  unsigned long long running = 0;
  for (int r0 = lo; r0 < hi; r0 += kThreads) {
    const int c = r0 + threadIdx.x;
    const unsigned long long m = c < hi ? mask[c] : 0ull;
    const int size = m != 0 ? __ldg(hd.sizes + c) : 0;
    const int first_row = m != 0 ? __ldg(hd.offsets + c) : 0;
    unsigned long long round_total = 0;
    const unsigned long long excl = detail::BlockExclusiveScan(
        static_cast<unsigned long long>(size), &round_total, scan_scratch);
    const int key_begin = hd.sinks + static_cast<int>(base + running + excl);
    // The warp writes its lanes' clusters one after the other, 32 keys per store.
    for (int i = 0; i < 32; ++i) {
      const int sz = __shfl_sync(0xffffffffu, size, i);
      const int kb = __shfl_sync(0xffffffffu, key_begin, i);
      const int fr = __shfl_sync(0xffffffffu, first_row, i);
      const unsigned long long mm = __shfl_sync(0xffffffffu, m, i);
      for (int j = lane; j < sz; j += 32) {
        rows_out[kb + j] = fr + j;
        mask_out[kb + j] = mm;
      }
    }
    for (unsigned long long bits = m; bits != 0; bits &= bits - 1) {
      atomicAdd(&seq_rows[__ffsll(static_cast<long long>(bits)) - 1], size);
    }
    running += round_total;
  }
  if (split == 0) {  // the sinks: storage rows [0, sinks), seen by every sequence
    for (int j = threadIdx.x; j < hd.sinks; j += kThreads) {
      rows_out[j] = j;
      mask_out[j] = all;
    }
  }
  __syncthreads();
  int32_t* part = At<int32_t>(p.workspace, lay.union_part) +
                  (static_cast<size_t>(h) * kGroupUnionSplits + split) * (n + 1);
  if (threadIdx.x == 0) part[0] = static_cast<int32_t>(running);
  for (int s = threadIdx.x; s < n; s += kThreads) part[1 + s] = seq_rows[s];

  __shared__ int last;
  uint32_t* counter = At<uint32_t>(p.workspace, lay.counters) + (hkv + h) * kCounterStride;
  if (!detail::LastArrival(counter, kGroupUnionSplits, &last)) return;
  const int32_t* parts = At<int32_t>(p.workspace, lay.union_part) +
                         static_cast<size_t>(h) * kGroupUnionSplits * (n + 1);
  int clustered = 0;
  for (int sp = 0; sp < kGroupUnionSplits; ++sp) clustered += __ldcg(parts + sp * (n + 1));
  const int window_key = hd.sinks + clustered, window_row = hd.num_rows - hd.window;
  for (int j = threadIdx.x; j < hd.window; j += kThreads) {
    rows_out[window_key + j] = window_row + j;
    mask_out[window_key + j] = all;
  }
  for (int s = threadIdx.x; s < n; s += kThreads) {
    int rows = hd.sinks + hd.window;
    for (int sp = 0; sp < kGroupUnionSplits; ++sp) rows += __ldcg(parts + sp * (n + 1) + 1 + s);
    p.kept_rows[static_cast<size_t>(s) * hkv + h] = rows;
  }
  if (threadIdx.x == 0) {
    p.num_keys[h] = window_key + hd.window;
    *counter = 0;
  }
}

template <int D>
cudaError_t LaunchTyped(const GroupSelectionParams& p, cudaStream_t stream) {
  constexpr int kBytes = SelSmem<D>::kBytes;
  cudaError_t err =
      cudaFuncSetAttribute(StatsKernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, kBytes);
  if (err != cudaSuccess) return err;
  err = cudaFuncSetAttribute(MaskKernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize, kBytes);
  if (err != cudaSuccess) return err;
  const int blocks = (p.max_clusters + kBlockC - 1) / kBlockC;
  if (blocks > 0) {
    const dim3 grid(blocks, p.num_kv_heads);
    StatsKernel<D><<<grid, kThreads, kBytes, stream>>>(p);
    MaskKernel<D><<<grid, kThreads, kBytes, stream>>>(p);
  }
  UnionKernel<<<dim3(kGroupUnionSplits, p.num_kv_heads), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

size_t GroupSelectionWorkspaceBytes(int num_seqs, int group, int num_kv_heads, int max_clusters) {
  return Layout(num_seqs, group, num_kv_heads, max_clusters).bytes;
}

size_t GroupSelectionCounterBytes(int num_kv_heads) {
  return 2 * static_cast<size_t>(num_kv_heads) * kCounterStride * sizeof(uint32_t);
}

cudaError_t LaunchGroupSelection(const GroupSelectionParams& p, cudaStream_t stream) {
  if (p.num_seqs <= 0 || p.num_seqs > kGroupMaxSeqs || p.num_kv_heads <= 0 ||
      p.num_kv_heads > 65535 || p.num_q_heads % p.num_kv_heads != 0 ||
      p.num_q_heads / p.num_kv_heads > kTileR ||
      p.num_seqs * (p.num_q_heads / p.num_kv_heads) > kGroupMaxRows || p.max_clusters < 0 ||
      p.key_stride <= 0 || p.q_seq_stride < static_cast<int64_t>(p.num_q_heads) * p.head_dim ||
      p.q_seq_stride % 4 != 0) {
    return cudaErrorInvalidValue;
  }
  if (p.q == nullptr || p.heads == nullptr || p.tau == nullptr || p.workspace == nullptr ||
      p.kept_rows == nullptr || p.num_keys == nullptr || p.row_index == nullptr ||
      p.key_mask == nullptr || (reinterpret_cast<uintptr_t>(p.q) & 15) != 0 ||
      (reinterpret_cast<uintptr_t>(p.workspace) & 255) != 0) {
    return cudaErrorInvalidValue;
  }
  return detail::DispatchHeadDim(
      p.head_dim, [&](auto d) { return LaunchTyped<decltype(d)::value>(p, stream); });
}

}  // namespace squeeze::gpu
