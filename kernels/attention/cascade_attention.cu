// Cascade decode attention (see cascade_attention.cuh).
//
// CTA: 8 warps, one item = (chunk, row pass): up to 128 query rows of the chunk's KV head (warp w
// owns rows [16w, 16w + 16) of the pass; a warp whose rows all lie past R skips the arithmetic
// but still copies and waits at the barriers). The group's queries are converted to bf16 into a
// swizzled shared tile; K/V tiles of 64 keys (storage rows from the key list) are copied with
// 16-byte cp.async, 3 stages deep, with the tile's 64 key masks (8 bytes each) alongside and,
// for a key list, the storage rows of the tile after it (so that issuing a tile never waits on a
// global load of its rows: they landed with the tile before). The
// arithmetic is the prefill kernel's (prefill_attention.cu): S = Q K^T on mma.sync, the key
// masks turn a sequence's unseen keys into -inf, online softmax per row in the exp2 domain, O +=
// P V. Row passes of one chunk are adjacent items, so a second pass (n * G > 128) finds the
// chunk's K/V in L2.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "kernels/attention/cascade_attention.cuh"
#include "kernels/attention/prefill_attention.cuh"
#include "kernels/common/device.cuh"
#include "kernels/common/dispatch.cuh"
#include "kernels/common/mma_tile.cuh"

namespace squeeze::gpu {
namespace {

constexpr int kRows = 128;                    // query rows per item (8 warps x 16)
constexpr int kThreadsM = (kRows / 16) * 32;  // 256
constexpr int kBlockN = 64;                   // keys per K/V tile
constexpr int kStages = 3;

template <int D>
struct CascadeSmem {
  static constexpr int kQBytes = kRows * D * 2;
  static constexpr int kTileBytes = kBlockN * D * 2;  // one K (or V) stage
  static constexpr int kKOff = kQBytes;
  static constexpr int kVOff = kKOff + kStages * kTileBytes;
  static constexpr int kMaskOff = kVOff + kStages * kTileBytes;  // uint64 [kStages][kBlockN]
  // Storage rows of the key list's tiles, int32 [kStages + 1][kBlockN]: tile t's in slot
  // t % (kStages + 1), copied with tile t - 1.
  static constexpr int kRowsOff = kMaskOff + kStages * kBlockN * 8;
  static constexpr int kPlanOff = kRowsOff + (kStages + 1) * kBlockN * 4;
  // Plan: chunk_begin [Hkv + 1], then the chunk size.
  static constexpr int kBytes = kPlanOff + (kCascadeMaxKvHeads + 2) * 4;  // 131 KB at d = 128
};

using detail::Ldsm4;
using detail::Ldsm4T;
using detail::MmaBf16;
using detail::PackBf16x2;
using detail::SwizzledOffset;

// 8-byte global -> shared copy; when !pred nothing is read and the destination is zeroed.
__device__ __forceinline__ void CpAsync8(void* smem_dst, const void* gmem_src, bool pred) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(dst), "l"(gmem_src),
               "r"(pred ? 8 : 0)
               : "memory");
}

// 4-byte global -> shared copy; when !pred nothing is read and the destination is zeroed.
__device__ __forceinline__ void CpAsync4(void* smem_dst, const void* gmem_src, bool pred) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(gmem_src),
               "r"(pred ? 4 : 0)
               : "memory");
}

template <int D>
__global__ void __launch_bounds__(kThreadsM, 1) CascadeKernel(const CascadeAttentionParams p) {
  using Smem = CascadeSmem<D>;
  constexpr int kKSteps = D / 16;  // k-steps of Q K^T, and pairs of output n-tiles of P V
  constexpr int kDTiles = D / 8;   // 8-dim n-tiles of the output
  constexpr int kNTiles = kBlockN / 8;
  constexpr int kChunks = D / 8;  // 16-byte chunks per bf16 row
  constexpr int kCopiesPerThread = kBlockN * kChunks / kThreadsM;
  static_assert(kCopiesPerThread * kThreadsM == kBlockN * kChunks, "tile/threads mismatch");
  extern __shared__ __align__(128) char smem[];
  int* plan = reinterpret_cast<int*>(smem + Smem::kPlanOff);

  const int hkv = p.num_kv_heads, hq = p.num_q_heads, G = hq / hkv, n = p.num_seqs;
  const int R = n * G, passes = (R + kRows - 1) / kRows;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g8 = lane >> 2, tq = lane & 3;
  auto keys_of = [&](int h) {
    return p.num_keys != nullptr ? __ldg(p.num_keys + h) : p.uniform_keys;
  };

  // The chunk plan, alike in every CTA: one chunk size for all heads, about target_chunks chunks.
  if (tid == 0) {
    int64_t total = 0;
    for (int h = 0; h < hkv; ++h) total += keys_of(h);
    const int64_t target = p.target_chunks > 1 ? p.target_chunks : 1;
    int64_t chunk = (total + target - 1) / target;
    chunk = (chunk + kBlockN - 1) / kBlockN * kBlockN;
    if (chunk < kCascadeMinChunkKeys) chunk = kCascadeMinChunkKeys;
    int at = 0;
    for (int h = 0; h < hkv; ++h) {
      plan[h] = at;
      at += static_cast<int>((keys_of(h) + chunk - 1) / chunk);
    }
    plan[hkv] = at;
    plan[hkv + 1] = static_cast<int>(chunk);
  }
  __syncthreads();
  const int total_chunks = min(plan[hkv], p.max_chunks), chunk = plan[hkv + 1];
  if (blockIdx.x == 0) {
    for (int i = tid; i <= hkv; i += kThreadsM) p.chunk_begin[i] = min(plan[i], p.max_chunks);
  }

  const uint32_t sbase = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const float scale_log2 = p.scale * detail::kLog2e;
  const auto* mask_s = reinterpret_cast<const unsigned long long*>(smem + Smem::kMaskOff);

  for (int item = blockIdx.x; item < total_chunks * passes; item += gridDim.x) {
    const int cidx = item / passes, pass = item - cidx * passes;
    int h = 0;
    while (plan[h + 1] <= cidx) ++h;
    const int key0 = (cidx - plan[h]) * chunk;
    const int key_end = min(keys_of(h), key0 + chunk);
    const int row0 = pass * kRows;
    const int rows = min(kRows, R - row0);
    const int32_t* row_index =
        p.row_index != nullptr ? p.row_index + static_cast<int64_t>(h) * p.key_stride : nullptr;
    const unsigned long long* masks =
        p.key_mask != nullptr ? p.key_mask + static_cast<int64_t>(h) * p.key_stride : nullptr;
    const bf16* k = p.k + static_cast<int64_t>(h) * p.head_stride;
    const bf16* v = p.v + static_cast<int64_t>(h) * p.head_stride;
    const int num_tiles = (key_end - key0 + kBlockN - 1) / kBlockN;

    // Q tile: row r of the pass is sequence (row0 + r) / G, query head h * G + (row0 + r) % G.
    for (int idx = tid; idx < kRows * kChunks; idx += kThreadsM) {
      const int r = idx / kChunks, c = idx - r * kChunks;
      uint4 packed = make_uint4(0u, 0u, 0u, 0u);
      if (r < rows) {
        const int row = row0 + r, s = row / G, g = row - s * G;
        const float4* src =
            reinterpret_cast<const float4*>(p.q + static_cast<int64_t>(s) * p.q_seq_stride +
                                            static_cast<int64_t>(h * G + g) * D + c * 8);
        const float4 a = src[0], b = src[1];
        packed = make_uint4(PackBf16x2(a.x, a.y), PackBf16x2(a.z, a.w), PackBf16x2(b.x, b.y),
                            PackBf16x2(b.z, b.w));
      }
      *reinterpret_cast<uint4*>(smem + SwizzledOffset<D>(r, c)) = packed;
    }

    // Storage rows of a key list's tile t into its slot: by plain loads (`now`), or copied
    // asynchronously with the copies of tile t - (kStages - 1), whose group the main loop has
    // waited for before it issues tile t.
    int* rows_s = reinterpret_cast<int*>(smem + Smem::kRowsOff);
    auto fetch_rows = [&](int t, bool now) {
      if (row_index == nullptr || tid >= kBlockN || t >= num_tiles) return;
      const int key = key0 + t * kBlockN + tid;
      const bool valid = key < key_end;
      int* dst = rows_s + (t % (kStages + 1)) * kBlockN + tid;
      if (now) {
        *dst = valid ? __ldg(row_index + key) : 0;
      } else {
        CpAsync4(dst, row_index + (valid ? key : 0), valid);
      }
    };
    // K/V tile t (keys key0 + 64 t ...) and its masks into stage `stage`, and the rows of tile
    // t + kStages - 1.
    auto issue = [&](int t, int stage) {
      char* kd = smem + Smem::kKOff + stage * Smem::kTileBytes;
      char* vd = smem + Smem::kVOff + stage * Smem::kTileBytes;
      const int base = key0 + t * kBlockN;
      const int* tile_rows = rows_s + (t % (kStages + 1)) * kBlockN;
#pragma unroll
      for (int u = 0; u < kCopiesPerThread; ++u) {
        const int idx = tid + u * kThreadsM;
        const int r = idx / kChunks, c = idx - r * kChunks;
        const int key = base + r;
        const bool valid = key < key_end;
        const int64_t row = valid ? (row_index != nullptr ? tile_rows[r] : key) : 0;
        detail::CpAsync16(kd + SwizzledOffset<D>(r, c), k + row * D + c * 8, valid);
        detail::CpAsync16(vd + SwizzledOffset<D>(r, c), v + row * D + c * 8, valid);
      }
      if (masks != nullptr && tid < kBlockN) {
        const int key = base + tid;
        const bool valid = key < key_end;
        CpAsync8(smem + Smem::kMaskOff + (stage * kBlockN + tid) * 8, masks + (valid ? key : 0),
                 valid);
      }
      fetch_rows(t + kStages - 1, /*now=*/false);
    };
    for (int s = 0; s < kStages - 1; ++s) fetch_rows(s, /*now=*/true);  // the prologue's tiles
    __syncthreads();
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < num_tiles) issue(s, s);
      detail::CpAsyncCommit();
    }

    const bool active = warp * 16 < rows;  // warp-uniform
    int seq[2];                            // sequence of this thread's rows g8 and g8 + 8; -1: none
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int row = row0 + warp * 16 + g8 + hh * 8;
      seq[hh] = row < R ? row / G : -1;
    }
    uint32_t qf[kKSteps][4];
    float o[kDTiles][4];
#pragma unroll
    for (int j = 0; j < kDTiles; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY};  // running max (log2 domain) of the thread's two rows
    float l[2] = {0.0f, 0.0f};            // running sum of 2^(s - m), this lane's columns only

    for (int t = 0; t < num_tiles; ++t) {
      detail::CpAsyncWait<kStages - 2>();  // tile t landed for this thread's copies ...
      __syncthreads();                     // ... and everyone's; the stage of tile t-1 is free
      if (t == 0 && active) {
        const int r = warp * 16 + (lane & 15);
#pragma unroll
        for (int kk = 0; kk < kKSteps; ++kk) {
          Ldsm4(sbase + SwizzledOffset<D>(r, 2 * kk + (lane >> 4)), qf[kk][0], qf[kk][1], qf[kk][2],
                qf[kk][3]);
        }
      }
      const int next = t + kStages - 1;
      if (next < num_tiles) issue(next, next % kStages);
      detail::CpAsyncCommit();
      if (!active) continue;
      const int stage = t % kStages;
      const uint32_t ks = sbase + Smem::kKOff + stage * Smem::kTileBytes;
      const uint32_t vs = sbase + Smem::kVOff + stage * Smem::kTileBytes;
      const int tile_key0 = key0 + t * kBlockN;

      // ---- S = Q K^T: x4 ldmatrix of K covers 16 keys x 16 dims = B of two n-tiles.
      float s[kNTiles][4];
#pragma unroll
      for (int j = 0; j < kNTiles; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk) {
#pragma unroll
        for (int np = 0; np < kNTiles / 2; ++np) {
          const int key = np * 16 + (lane & 7) + ((lane >> 4) << 3);
          const int chunk16 = 2 * kk + ((lane >> 3) & 1);
          uint32_t b0, b1, b2, b3;
          Ldsm4(ks + SwizzledOffset<D>(key, chunk16), b0, b1, b2, b3);
          MmaBf16(s[2 * np], qf[kk], b0, b1);
          MmaBf16(s[2 * np + 1], qf[kk], b2, b3);
        }
      }

      // ---- Log2 units; keys past the chunk and keys a row's sequence did not keep: -inf.
#pragma unroll
      for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int col = j * 8 + 2 * tq + (e & 1);
          const int sq = seq[e >> 1];
          bool seen = tile_key0 + col < key_end && sq >= 0;
          if (masks != nullptr && seen) seen = (mask_s[stage * kBlockN + col] >> sq) & 1ull;
          s[j][e] = seen ? s[j][e] * scale_log2 : -INFINITY;
        }
      }

      // ---- Online softmax for rows g8 (e = 0, 1) and g8 + 8 (e = 2, 3).
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * hh], s[j][2 * hh + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m[hh], mx);
        const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // nothing seen yet: exps are 0
        const float alpha = detail::Exp2(m[hh] - m_use);
        m[hh] = m_new;
        float rs = 0.0f;
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) {
          s[j][2 * hh] = detail::Exp2(s[j][2 * hh] - m_use);
          s[j][2 * hh + 1] = detail::Exp2(s[j][2 * hh + 1] - m_use);
          rs += s[j][2 * hh] + s[j][2 * hh + 1];
        }
        l[hh] = l[hh] * alpha + rs;
#pragma unroll
        for (int j = 0; j < kDTiles; ++j) {
          o[j][2 * hh] *= alpha;
          o[j][2 * hh + 1] *= alpha;
        }
      }

      // ---- O += P V: A of keys [16kp, 16kp + 16) from S n-tiles 2kp, 2kp + 1; x4
      // ldmatrix.trans of V covers 16 keys x 16 dims = B of two output n-tiles.
#pragma unroll
      for (int kp = 0; kp < kNTiles / 2; ++kp) {
        const uint32_t a[4] = {PackBf16x2(s[2 * kp][0], s[2 * kp][1]),
                               PackBf16x2(s[2 * kp][2], s[2 * kp][3]),
                               PackBf16x2(s[2 * kp + 1][0], s[2 * kp + 1][1]),
                               PackBf16x2(s[2 * kp + 1][2], s[2 * kp + 1][3])};
        const int key = kp * 16 + (lane & 7) + (((lane >> 3) & 1) << 3);
#pragma unroll
        for (int dp = 0; dp < kKSteps; ++dp) {
          uint32_t b0, b1, b2, b3;
          Ldsm4T(vs + SwizzledOffset<D>(key, 2 * dp + (lane >> 4)), b0, b1, b2, b3);
          MmaBf16(o[2 * dp], a, b0, b1);
          MmaBf16(o[2 * dp + 1], a, b2, b3);
        }
      }
    }
    detail::CpAsyncWait<0>();  // only empty groups can remain

    // ---- Epilogue: row sums over the 4 lanes of a row; one slot (chunk, sequence) per row.
    if (active) {
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        float sum = l[hh];
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        const int sq = seq[hh];
        if (sq < 0) continue;
        const int g = row0 + warp * 16 + g8 + hh * 8 - sq * G;
        const size_t slot = static_cast<size_t>(cidx) * n + sq;
        const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
        float* dst = p.partial_out + (slot * G + g) * D + 2 * tq;
#pragma unroll
        for (int j = 0; j < kDTiles; ++j) {
          *reinterpret_cast<float2*>(dst + j * 8) =
              make_float2(o[j][2 * hh] * inv, o[j][2 * hh + 1] * inv);
        }
        if (tq == 0) p.partial_lse[slot * G + g] = sum > 0.0f ? m[hh] + log2f(sum) : -INFINITY;
      }
    }
    __syncthreads();  // the next item overwrites the Q tile and the stages
  }
}

// The wgmma path's queries: row t = s * G + g of KV head h (query head h * G + g of sequence s)
// as bf16 at qw + (t * Hkv + h) * d; block 0 writes the chunk plan, `splits` chunks per head.
__global__ void PackCascadeQueries(const CascadeAttentionParams p, bf16* qw, int splits) {
  const int hkv = p.num_kv_heads, G = p.num_q_heads / hkv, d = p.head_dim, chunks = d / 8;
  const int64_t total = static_cast<int64_t>(p.num_seqs) * G * hkv * chunks;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(idx % chunks);
    const int64_t rest = idx / chunks;
    const int h = static_cast<int>(rest % hkv);
    const int t = static_cast<int>(rest / hkv), s = t / G, g = t - s * G;
    const float4* src = reinterpret_cast<const float4*>(
        p.q + s * p.q_seq_stride + static_cast<int64_t>(h * G + g) * d + c * 8);
    const float4 a = src[0], b = src[1];
    *reinterpret_cast<uint4*>(qw + rest * d + c * 8) = make_uint4(
        PackBf16x2(a.x, a.y), PackBf16x2(a.z, a.w), PackBf16x2(b.x, b.y), PackBf16x2(b.z, b.w));
  }
  if (blockIdx.x == 0 && threadIdx.x <= hkv) p.chunk_begin[threadIdx.x] = threadIdx.x * splits;
}

// A dense group on the wgmma prefill kernel, split over keys (see cascade_attention.cuh).
cudaError_t LaunchCascadeWgmma(const CascadeAttentionParams& p, cudaStream_t stream) {
  const int hkv = p.num_kv_heads, G = p.num_q_heads / hkv, R = p.num_seqs * G;
  const int S = p.uniform_keys;
  const int tiles = (S + kPrefillSplitAlign - 1) / kPrefillSplitAlign;
  const int base = hkv * ((R + kPrefillBlockM - 1) / kPrefillBlockM);  // CTAs per key range
  // About 32 key tiles per CTA, the CTAs rounded to whole waves of p.grid (one per SM), at most
  // the partial slots there are.
  int splits = (tiles + 31) / 32;
  const int waves = (base * splits + p.grid - 1) / p.grid;
  splits = std::max(1, std::min({tiles, waves * p.grid / base, p.max_chunks / hkv}));
  const int split_tiles = (tiles + splits - 1) / splits;
  splits = (tiles + split_tiles - 1) / split_tiles;  // none empty

  bf16* qw = static_cast<bf16*>(p.workspace);
  const int64_t copies = static_cast<int64_t>(R) * hkv * (p.head_dim / 8);
  const int blocks =
      static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((copies + 255) / 256, 1024)));
  PackCascadeQueries<<<blocks, 256, 0, stream>>>(p, qw, splits);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;

  PrefillAttentionParams pp;
  pp.num_tokens = R;
  pp.num_q_heads = hkv;
  pp.num_kv_heads = hkv;
  pp.head_dim = p.head_dim;
  pp.scale = p.scale;
  pp.q = qw;
  pp.kv.k = p.k;
  pp.kv.v = p.v;
  pp.kv.head_stride = p.head_stride;
  pp.kv.len = S;
  pp.out = p.partial_out;
  pp.lse = p.partial_lse;
  pp.causal = false;
  pp.key_splits = splits;
  pp.split_keys = split_tiles * kPrefillSplitAlign;
  // Slot of (row t, head h, range z) = chunk (h * splits + z) * n * G + t.
  pp.slot_row = 1;
  pp.slot_head = static_cast<int64_t>(splits) * R;
  pp.slot_split = R;
  pp.impl = PrefillImpl::kWgmma;
  return LaunchPrefillAttention(pp, stream);
}

template <int D>
cudaError_t Prepare() {
  return cudaFuncSetAttribute(CascadeKernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                              CascadeSmem<D>::kBytes);
}

bool Aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

}  // namespace

cudaError_t CascadeConcurrentCtas(int head_dim, int* ctas) {
  return detail::DispatchHeadDim(head_dim, [&](auto d) {
    constexpr int D = decltype(d)::value;
    cudaError_t err = Prepare<D>();
    if (err != cudaSuccess) return err;
    return detail::ConcurrentCtas(CascadeKernel<D>, kThreadsM, CascadeSmem<D>::kBytes, ctas);
  });
}

cudaError_t LaunchCascadeAttention(const CascadeAttentionParams& p, cudaStream_t stream) {
  if (p.num_seqs <= 0 || p.num_kv_heads <= 0 || p.num_kv_heads > kCascadeMaxKvHeads ||
      p.num_q_heads % p.num_kv_heads != 0 || p.grid <= 0 || p.grid > 65535 ||
      p.target_chunks <= 0 || p.max_chunks < CascadeMaxChunks(p.target_chunks, p.num_kv_heads) ||
      (p.key_mask != nullptr && p.num_seqs > kCascadeMaxMaskedSeqs) ||
      (p.num_keys == nullptr && p.uniform_keys < 0) ||
      ((p.row_index != nullptr || p.key_mask != nullptr) && p.key_stride <= 0) ||
      p.q_seq_stride < static_cast<int64_t>(p.num_q_heads) * p.head_dim ||
      p.q_seq_stride % 4 != 0 || p.head_stride % 8 != 0) {
    return cudaErrorInvalidValue;
  }
  if (p.q == nullptr || p.k == nullptr || p.v == nullptr || p.partial_out == nullptr ||
      p.partial_lse == nullptr || p.chunk_begin == nullptr || !Aligned16(p.q) || !Aligned16(p.k) ||
      !Aligned16(p.v) || !Aligned16(p.partial_out)) {
    return cudaErrorInvalidValue;
  }
  const bool dense = p.num_keys == nullptr && p.row_index == nullptr && p.key_mask == nullptr;
  const bool wgmma_ok = dense && p.uniform_keys > 0 && p.workspace != nullptr &&
                        Aligned16(p.workspace) && PrefillWgmmaSupported(p.head_dim);
  if (p.impl == CascadeImpl::kWgmma && !wgmma_ok) return cudaErrorInvalidValue;
  if (wgmma_ok && (p.impl == CascadeImpl::kWgmma ||
                   (p.impl == CascadeImpl::kAuto && kCascadeAutoWgmma &&
                    p.num_seqs * (p.num_q_heads / p.num_kv_heads) >= kCascadeWgmmaMinRows))) {
    return LaunchCascadeWgmma(p, stream);
  }
  return detail::DispatchHeadDim(p.head_dim, [&](auto d) {
    constexpr int D = decltype(d)::value;
    cudaError_t err = Prepare<D>();
    if (err != cudaSuccess) return err;
    CascadeKernel<D><<<p.grid, kThreadsM, CascadeSmem<D>::kBytes, stream>>>(p);
    return cudaGetLastError();
  });
}

}  // namespace squeeze::gpu
