// Dense causal prefill attention, FlashAttention-2 style on mma.sync (see prefill_attention.cuh).
//
// CTA: 8 warps, 128 query rows of one query head (warp w owns rows [16w, 16w + 16)); 128 rows
// rather than 64 halve the K/V bytes each FLOP pulls from L2 into shared memory (64 -> 128
// FLOP/byte at d = 128), which at ~400 TFLOP/s is the difference between ~6 and ~3 TB/s of L2.
// Grid (Hq, ceil(n / 128)): blockIdx.x is the head (fastest, so the G heads of a KV group run
// side by side and share K/V in L2); blockIdx.y is the query tile in reverse, so the longest
// tiles (most keys under the causal mask) are scheduled first and the short ones fill the tail
// of the last wave (longest-first order, no persistent scheduler).
// Pipeline: the Q tile (swizzled) and K/V tiles of 64 keys are copied to shared memory with
// 16-byte cp.async, 3 stages deep; Q goes to registers once with ldmatrix; K fragments with
// ldmatrix, V fragments with ldmatrix.trans.
// Per key tile and warp: S[16][64] fp32 = 8 n-tiles of m16n8k16 over d / 16 k-steps; scale to
// the log2 domain; mask only tiles that cross the warp's diagonal (some key > past + the warp's
// first row), and skip (warp-uniformly) tiles wholly past the warp's last row; online softmax on
// the two rows per thread (4-lane shuffles); P packed to bf16 straight from the S accumulators
// (the C layout of m16n8 equals the A layout of m16k16); O += P V.
// Key tiles past the causal limit of the CTA's last row are never loaded.
// Shared memory rows are d bf16 = d / 8 chunks of 16 bytes, permuted per row (chunk c of row r
// at c ^ (r & 7); at d = 96, c ^ ((r >> 1) & 3): detail::SwizzledOffset) so the 8 rows an
// ldmatrix phase reads hit 8 distinct 16-byte bank groups.
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/attention/prefill_attention.cuh"
#include "kernels/attention/prefill_epilogue.cuh"
#include "kernels/common/device.cuh"
#include "kernels/common/dispatch.cuh"
#include "kernels/common/mma_tile.cuh"

namespace squeeze::gpu {
namespace {

constexpr int kWarpsM = kPrefillBlockM / 16;  // 8
constexpr int kThreadsM = kWarpsM * 32;       // 256
constexpr int kBlockN = kPrefillBlockN;

template <int D>
struct PrefillSmem {
  static constexpr int kStages = 3;
  static constexpr int kQBytes = kPrefillBlockM * D * 2;       // Q tile
  static constexpr int kTileBytes = kBlockN * D * 2;           // one K (or V) tile
  static constexpr int kKOff = kQBytes;                        // K stages
  static constexpr int kVOff = kKOff + kStages * kTileBytes;   // V stages
  static constexpr int kBytes = kVOff + kStages * kTileBytes;  // 128, 96, 64 KB (d = 128, 96, 64)
};

using detail::Ldsm4;
using detail::Ldsm4T;
using detail::MmaBf16;
using detail::PackBf16x2;
using detail::SwizzledOffset;

// Copies rows [row0, row0 + kRows) of a [rows][D] bf16 matrix (row stride `stride` elements) into
// a swizzled shared tile; rows at or past `valid_rows` are zero-filled and not read. (Kept apart
// from detail::IssueSwizzledTile: written through its row functor, this kernel measured 254 TFLOP/s
// at 32K, against about 300 in earlier runs.)
template <int D, int kRows>
__device__ __forceinline__ void IssueTile(char* dst, const bf16* src, int64_t stride, int row0,
                                          int valid_rows, const int32_t* rows = nullptr) {
  constexpr int kChunks = D / 8;
  constexpr int kPerThread = kRows * kChunks / kThreadsM;
  static_assert(kPerThread * kThreadsM == kRows * kChunks, "tile/threads mismatch");
#pragma unroll
  for (int u = 0; u < kPerThread; ++u) {
    const int idx = threadIdx.x + u * kThreadsM;
    const int r = idx / kChunks, c = idx % kChunks;
    const bool valid = row0 + r < valid_rows;
    // rows: tile row r is storage row rows[row0 + r] (a selection's kept rows).
    const int64_t at = valid ? (rows != nullptr ? __ldg(rows + row0 + r) : row0 + r) : 0;
    const bf16* from = src + (valid ? at * stride + c * 8 : 0);
    detail::CpAsync16(dst + SwizzledOffset<D>(r, c), from, valid);
  }
}

// One CTA of 8 warps per SM (ptxas, sm_90a: 215 registers at d = 128, 160 at d = 64, no spills;
// capping d = 64 at 128 registers for two CTAs per SM spilled, left for a measured comparison).
template <int D, typename OutT>
__global__ void __launch_bounds__(kThreadsM, 1) PrefillKernel(const PrefillAttentionParams p) {
  using Smem = PrefillSmem<D>;
  constexpr int kStages = Smem::kStages;
  constexpr int kKSteps = D / 16;  // k-steps of Q K^T, and pairs of 8-dim n-tiles of P V
  constexpr int kDTiles = D / 8;   // 8-dim n-tiles of the output
  constexpr int kNTiles = kBlockN / 8;
  extern __shared__ __align__(128) char smem[];

  const int qh = blockIdx.x;
  const int m0 = (gridDim.y - 1 - blockIdx.y) * kPrefillBlockM;
  const int n = p.num_tokens, hq = p.num_q_heads;
  const int kvh = qh / (hq / p.num_kv_heads);
  const int kv_len = p.head_len != nullptr ? p.head_len[kvh] : p.kv.len;
  // Without the causal mask every query sees every row: a limit no key reaches.
  const int past = p.causal ? kv_len - n : kv_len + kPrefillBlockM;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int32_t* kv_rows = p.row_index != nullptr
                               ? p.row_index + static_cast<int64_t>(kvh) * p.row_index_stride
                               : nullptr;
  const bf16* k = p.kv.k + static_cast<int64_t>(kvh) * p.kv.head_stride;
  const bf16* v = p.kv.v + static_cast<int64_t>(kvh) * p.kv.head_stride;
  const uint32_t sbase = static_cast<uint32_t>(__cvta_generic_to_shared(smem));

  // Keys [0, kv_end) can be visible to some row of this tile; the padded rows past n are clamped
  // to kv_len so nothing past the sequence is loaded.
  const int kv_end = min(kv_len, past + m0 + kPrefillBlockM);
  const int num_tiles = (kv_end + kBlockN - 1) / kBlockN;

  // Group 0: Q tile and K/V tile 0; groups 1..kStages-2: the next K/V tiles.
  IssueTile<D, kPrefillBlockM>(
      smem, p.q + static_cast<int64_t>(m0) * hq * D + static_cast<int64_t>(qh) * D,
      static_cast<int64_t>(hq) * D, 0, n - m0);
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < num_tiles) {
      IssueTile<D, kBlockN>(smem + Smem::kKOff + s * Smem::kTileBytes, k, D, s * kBlockN, kv_len,
                            kv_rows);
      IssueTile<D, kBlockN>(smem + Smem::kVOff + s * Smem::kTileBytes, v, D, s * kBlockN, kv_len,
                            kv_rows);
    }
    detail::CpAsyncCommit();
  }

  uint32_t qf[kKSteps][4];
  float o[kDTiles][4];
#pragma unroll
  for (int j = 0; j < kDTiles; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY};  // running max (log2 domain) of rows g and g + 8
  float l[2] = {0.0f, 0.0f};            // running sum of 2^(s - m), this lane's columns only
  const float scale_log2 = p.scale * detail::kLog2e;
  const int g = lane >> 2, tq = lane & 3;
  const int warp_row0 = m0 + warp * 16;
  const int row_lo = warp_row0 + g;  // query rows of this thread: row_lo, row_lo + 8

  for (int t = 0; t < num_tiles; ++t) {
    detail::CpAsyncWait<kStages - 2>();  // tile t (and Q) landed for this thread's copies ...
    __syncthreads();                     // ... for everyone's; stage of tile t-1 is free
    if (t == 0) {
      // A fragments of the warp's 16 rows: lanes 0-15 address rows 0-15 of chunk 2kk, lanes
      // 16-31 the same rows of chunk 2kk + 1.
      const int r = warp * 16 + (lane & 15);
#pragma unroll
      for (int kk = 0; kk < kKSteps; ++kk) {
        Ldsm4(sbase + SwizzledOffset<D>(r, 2 * kk + (lane >> 4)), qf[kk][0], qf[kk][1], qf[kk][2],
              qf[kk][3]);
      }
    }
    const int next = t + kStages - 1;
    if (next < num_tiles) {
      const int st = next % kStages;
      IssueTile<D, kBlockN>(smem + Smem::kKOff + st * Smem::kTileBytes, k, D, next * kBlockN,
                            kv_len, kv_rows);
      IssueTile<D, kBlockN>(smem + Smem::kVOff + st * Smem::kTileBytes, v, D, next * kBlockN,
                            kv_len, kv_rows);
    }
    detail::CpAsyncCommit();
    const int key0 = t * kBlockN;
    // Every key of the tile lies past the causal limit of the warp's last row (a tile only the
    // warps below see): nothing to add. Warp-uniform; the barrier above is still shared.
    if (key0 > past + warp_row0 + 15) continue;
    const int stage = t % kStages;
    const uint32_t ks = sbase + Smem::kKOff + stage * Smem::kTileBytes;
    const uint32_t vs = sbase + Smem::kVOff + stage * Smem::kTileBytes;

    // ---- S = Q K^T: x4 ldmatrix of K covers 16 keys x 16 dims = B of two n-tiles.
    float s[kNTiles][4];
#pragma unroll
    for (int j = 0; j < kNTiles; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < kKSteps; ++kk) {
#pragma unroll
      for (int np = 0; np < kNTiles / 2; ++np) {
        const int key = np * 16 + (lane & 7) + ((lane >> 4) << 3);
        const int chunk = 2 * kk + ((lane >> 3) & 1);
        uint32_t b0, b1, b2, b3;
        Ldsm4(ks + SwizzledOffset<D>(key, chunk), b0, b1, b2, b3);
        MmaBf16(s[2 * np], qf[kk], b0, b1);
        MmaBf16(s[2 * np + 1], qf[kk], b2, b3);
      }
    }

    // ---- Scale to log2 units; mask only tiles that cross the diagonal of this warp.
    // (Also the last tile of a non-causal call when it runs past kv_len: zero-filled rows.)
    const bool diagonal = key0 + kBlockN - 1 > min(past + warp_row0, kv_len - 1);
#pragma unroll
    for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[j][e] * scale_log2;
        if (diagonal) {
          const int key = key0 + j * 8 + 2 * tq + (e & 1);
          const int limit = min(past + row_lo + (e >> 1) * 8, kv_len - 1);
          x = key > limit ? -INFINITY : x;
        }
        s[j][e] = x;
      }
    }

    // ---- Online softmax for rows g (e = 0, 1) and g + 8 (e = 2, 3).
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < kNTiles; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * h], s[j][2 * h + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m[h], mx);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // no visible key yet: exps are 0
      const float alpha = detail::Exp2(m[h] - m_use);
      m[h] = m_new;
      float rs = 0.0f;
#pragma unroll
      for (int j = 0; j < kNTiles; ++j) {
        s[j][2 * h] = detail::Exp2(s[j][2 * h] - m_use);
        s[j][2 * h + 1] = detail::Exp2(s[j][2 * h + 1] - m_use);
        rs += s[j][2 * h] + s[j][2 * h + 1];
      }
      l[h] = l[h] * alpha + rs;
#pragma unroll
      for (int j = 0; j < kDTiles; ++j) {
        o[j][2 * h] *= alpha;
        o[j][2 * h + 1] *= alpha;
      }
    }

    // ---- O += P V: A of keys [16kp, 16kp + 16) from S n-tiles 2kp, 2kp + 1; x4 ldmatrix.trans
    // of V covers 16 keys x 16 dims = B of two output n-tiles.
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
  detail::CpAsyncWait<0>();  // only empty groups can remain; drained before exit

  // ---- Epilogue: row sums over the 4 lanes of a row, normalise, store.
  detail::StorePrefillRows<D, OutT>(
      p, [&](int j, int e) { return o[j][e]; }, l, m, row_lo, qh, tq);
}

template <int D, typename OutT>
cudaError_t LaunchTyped(const PrefillAttentionParams& p, cudaStream_t stream) {
  auto kernel = PrefillKernel<D, OutT>;
  constexpr int kBytes = PrefillSmem<D>::kBytes;
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kBytes);
  if (err != cudaSuccess) return err;
  const dim3 grid(p.num_q_heads, (p.num_tokens + kPrefillBlockM - 1) / kPrefillBlockM);
  kernel<<<grid, kThreadsM, kBytes, stream>>>(p);
  return cudaGetLastError();
}

bool Aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; }

}  // namespace

bool PrefillWgmmaSupported(int head_dim) {
  return (head_dim == 64 || head_dim == 128) && detail::ComputeCapability() == 90;
}

cudaError_t LaunchPrefillAttention(const PrefillAttentionParams& p, cudaStream_t stream) {
  if (p.num_tokens == 0) return cudaSuccess;
  if (p.num_tokens < 0 || p.num_q_heads <= 0 || p.num_kv_heads <= 0 ||
      p.num_q_heads % p.num_kv_heads != 0 || p.num_q_heads > 65535 ||
      (p.causal && (p.kv.len < p.num_tokens || p.head_len != nullptr || p.row_index != nullptr)) ||
      p.kv.len < 0 || (p.row_index != nullptr && p.row_index_stride < p.kv.len) ||
      (p.num_tokens + kPrefillBlockM - 1) / kPrefillBlockM > 65535) {
    return cudaErrorInvalidValue;
  }
  if (p.q == nullptr || p.kv.k == nullptr || p.kv.v == nullptr || p.out == nullptr ||
      !Aligned16(p.q) || !Aligned16(p.kv.k) || !Aligned16(p.kv.v) || !Aligned16(p.out) ||
      p.kv.head_stride % 8 != 0 ||
      (p.num_kv_heads > 1 && p.kv.head_stride < static_cast<int64_t>(p.kv.len) * p.head_dim)) {
    return cudaErrorInvalidValue;
  }
  const bool wgmma = p.impl != PrefillImpl::kMmaSync && PrefillWgmmaSupported(p.head_dim);
  if (p.impl != PrefillImpl::kAuto && p.impl != PrefillImpl::kMmaSync && !wgmma) {
    return cudaErrorInvalidValue;
  }
  if (p.key_splits != 0) {
    // The split over keys: the wgmma kernel's, non-causal, fp32 partials with their lse.
    if (!wgmma || p.causal || p.out_bf16 || p.lse == nullptr || p.head_len != nullptr ||
        p.key_splits < 0 || p.key_splits > 65535 || p.split_keys <= 0 ||
        p.split_keys % kPrefillSplitAlign != 0 ||
        static_cast<int64_t>(p.key_splits - 1) * p.split_keys >= p.kv.len ||
        static_cast<int64_t>(p.key_splits) * p.split_keys < p.kv.len) {
      return cudaErrorInvalidValue;
    }
  }
  if (wgmma) return detail::LaunchPrefillAttentionSm90(p, stream);
  switch (p.head_dim) {
    case 64:
      return p.out_bf16 ? LaunchTyped<64, bf16>(p, stream) : LaunchTyped<64, float>(p, stream);
    case 96:
      return p.out_bf16 ? LaunchTyped<96, bf16>(p, stream) : LaunchTyped<96, float>(p, stream);
    case 128:
      return p.out_bf16 ? LaunchTyped<128, bf16>(p, stream) : LaunchTyped<128, float>(p, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace squeeze::gpu
