// Prefill attention on Hopper warpgroup MMA (wgmma): the contract of prefill_attention.cuh
// (causal chunks, non-causal fixed contexts with head_len and row_index), for d in {64, 128} on
// sm_90a; LaunchPrefillAttention picks it there (PrefillImpl::kAuto).
//
// CTA: 128 query rows of one query head in two consumer warpgroups (warpgroup w owns rows
// [64w, 64w + 64)), plus a producer warpgroup. Grid (Hq, ceil(n / 128)) as in the mma.sync
// kernel: the G heads of a KV group side by side (they share K/V in L2), query tiles longest first.
// Shared memory, 128-byte swizzled column blocks (kernels/common/wgmma.cuh): the Q tile and three
// stages of 128-key K and V tiles, each stage with mbarriers (K full, V full, empty).
// Producer: for a dense call (no row index, no per-head lengths) one thread issues TMA boxes
// (64 columns x 128 rows; the hardware swizzles, rows past kv.len read as zeros); otherwise the
// warpgroup copies with 16-byte cp.async (a row index gathers a squeezed selection's kept rows in
// place, which TMA cannot), each thread's copies tracked by cp.async.mbarrier.arrive. Registers
// move to the consumers (setmaxnreg 40 / 232).
// Consumers, per key tile t (no CTA-wide barrier: each warpgroup runs at its own pace):
//   S[64][128] = Q K^T of tile t and O[64][d] += P V of tile t - 1 issued together
//   (d / 16 wgmma m64n128k16 from shared memory; 8 wgmma m64n{d}k16 with P from registers,
//   the S accumulators packed to bf16, and V as a transposed B); the softmax of tile t runs while
//   P V of tile t - 1 is on the tensor cores; the stage of tile t - 1 is released once P V is done.
//   Online softmax in the exp2 domain: the maximum on the raw scores, one FFMA and one exp2 per
//   probability; masked only on tiles that cross the warpgroup's diagonal.
// Key tiles past the causal limit of the CTA's last row are never loaded; a warpgroup skips the
// tiles past its own last row (releasing them once loaded), and all of them when its rows lie past
// the call's. A split call (key_splits: flash-decoding's split over keys, the cascade's shared
// context) adds a grid dimension, one key range per slice. Numerics are those of the mma.sync
// kernel (fp32 S and row sums, P rounded to bf16 for P V, fp32 O).
// The benchmark's comparison variant (PrefillImpl::kWgmmaCpAsync): the same kernel always on
// cp.async.
#include <cuda.h>  // CUtensorMap and its encoder's types (the driver entry point, no libcuda link)
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/attention/prefill_attention.cuh"
#include "kernels/attention/prefill_epilogue.cuh"
#include "kernels/common/device.cuh"
#include "kernels/common/mbarrier.cuh"
#include "kernels/common/mma_tile.cuh"
#include "kernels/common/wgmma.cuh"

namespace squeeze::gpu {
namespace {

using detail::MbarArrive;
using detail::MbarArriveExpectTx;
using detail::MbarArriveOnCopies;
using detail::MbarInit;
using detail::MbarWait;
using detail::SetMaxRegsDec;
using detail::SetMaxRegsInc;

constexpr int kBlockM = 128;  // query rows per CTA
constexpr int kBlockN = 128;  // keys per K/V tile
constexpr int kStages = 3;

// TMA descriptors of one call (kernel parameters; unused by the cp.async kernels).
struct TmaMaps {
  CUtensorMap q, k, v;
};

template <int D>
struct Sm90Smem {
  static constexpr int kQBytes = kBlockM * D * 2;     // Q tile
  static constexpr int kTileBytes = kBlockN * D * 2;  // one K (or V) tile
  static constexpr int kKOff = kQBytes;
  static constexpr int kVOff = kKOff + kStages * kTileBytes;
  static constexpr int kBarOff = kVOff + kStages * kTileBytes;  // 224 KB (d = 128), 112 KB (64)
  // mbarriers of the warp-specialised kernel: Q full, then K full, V full and K/V empty per stage.
  static constexpr int kUsed = kBarOff + 8 * (1 + 3 * kStages);
  static constexpr int kBytes = kUsed + 1024;  // + alignment of the base to 1 KB
};

// Online softmax of one S tile (kNTiles 8-key column tiles of the m64n{8 kNTiles} accumulator,
// unscaled scores) for the thread's rows g (e = 0, 1) and g + 8 (e = 2, 3): keys past each row's
// limit are masked when `diagonal`; the row maximum is taken on the unscaled scores (the scale is
// positive) and every probability is one FFMA and one exp2, 2^(s * scale_log2 - m_new); m and l
// are updated and alpha[h] is the factor the rows' O accumulators must be scaled by.
template <int kNTiles>
__device__ __forceinline__ void SoftmaxTile(float (&s)[kNTiles * 4], float (&m)[2], float (&l)[2],
                                            float (&alpha)[2], float scale_log2, bool diagonal,
                                            int key0, const int (&limit)[2], int tq) {
  if (diagonal) {
#pragma unroll
    for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = key0 + j * 8 + 2 * tq + (e & 1);
        s[4 * j + e] = key > limit[e >> 1] ? -INFINITY : s[4 * j + e];
      }
    }
  }
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < kNTiles; ++j) mx = fmaxf(mx, fmaxf(s[4 * j + 2 * h], s[4 * j + 2 * h + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m[h], mx * scale_log2);
    const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // no visible key yet: exps are 0
    alpha[h] = detail::Exp2(m[h] - m_use);
    m[h] = m_new;
    float rs0 = 0.0f, rs1 = 0.0f;  // two chains of adds
#pragma unroll
    for (int j = 0; j < kNTiles; ++j) {
      s[4 * j + 2 * h] = detail::Exp2(fmaf(s[4 * j + 2 * h], scale_log2, -m_use));
      s[4 * j + 2 * h + 1] = detail::Exp2(fmaf(s[4 * j + 2 * h + 1], scale_log2, -m_use));
      rs0 += s[4 * j + 2 * h];
      rs1 += s[4 * j + 2 * h + 1];
    }
    l[h] = l[h] * alpha[h] + (rs0 + rs1);
  }
}

// P as the A fragments of O += P V: keys [16kp, 16kp + 16) are S column tiles 2kp and 2kp + 1.
template <int kNTiles>
__device__ __forceinline__ void PackP(const float (&s)[kNTiles * 4],
                                      uint32_t (&pa)[kNTiles / 2][4]) {
#pragma unroll
  for (int kp = 0; kp < kNTiles / 2; ++kp) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
      pa[kp][i] = detail::PackBf16x2(s[8 * kp + 2 * i], s[8 * kp + 2 * i + 1]);
  }
}

template <int kDTiles>
__device__ __forceinline__ void RescaleO(float (&o)[kDTiles * 4], const float (&alpha)[2]) {
#pragma unroll
  for (int j = 0; j < kDTiles; ++j) {
    o[4 * j + 0] *= alpha[0];
    o[4 * j + 1] *= alpha[0];
    o[4 * j + 2] *= alpha[1];
    o[4 * j + 3] *= alpha[1];
  }
}

// S = Q K^T for one warpgroup: q, k the shared addresses of the warpgroup's Q rows and of the K
// tile (64-wide column blocks of kBlockM * 128 and kBlockN * 128 bytes).
template <int D>
__device__ __forceinline__ void IssueScores(float (&s)[kBlockN / 2], uint32_t q, uint32_t k) {
  constexpr uint32_t kQBlock = kBlockM * 128, kKvBlock = kBlockN * 128;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
    const uint32_t koff = (kk & 3) * 32;  // k16 step within the 64-wide column block
    const uint64_t da = detail::Sw128Desc(q + (kk >> 2) * kQBlock + koff, 16, 1024);
    const uint64_t db = detail::Sw128Desc(k + (kk >> 2) * kKvBlock + koff, 16, 1024);
    detail::WgmmaSS_m64n128k16(s, da, db, kk > 0 ? 1 : 0);
  }
}

// O += P V for one warpgroup, V the shared address of the V tile.
template <int D>
__device__ __forceinline__ void IssueValues(float (&o)[D / 2],
                                            const uint32_t (&pa)[kBlockN / 16][4], uint32_t v) {
  constexpr uint32_t kKvBlock = kBlockN * 128;
#pragma unroll
  for (int kp = 0; kp < kBlockN / 16; ++kp) {
    // Keys [16kp, 16kp + 16): two groups of 8 rows (SBO 1 KB); d columns 64 apart (LBO: one
    // column block of the V tile).
    const uint64_t db = detail::Sw128Desc(v + kp * 16 * 128, kKvBlock, 1024);
    if constexpr (D == 128) {
      detail::WgmmaRS_m64n128k16_TransB(o, pa[kp], db);
    } else {
      detail::WgmmaRS_m64n64k16_TransB(o, pa[kp], db);
    }
  }
}

// The producer warpgroup's copy of a tile (128 threads, few registers): thread `copier` copies
// chunk copier % (D / 8) of rows copier / (D / 8), + 128 / (D / 8), ... (the row step is a
// multiple of 8, so the swizzled offset just advances by whole 1 KB groups).
template <int D, int kRows>
__device__ __forceinline__ void ProducerTile(char* dst, const bf16* src, int64_t stride, int row0,
                                             int valid_rows, const int32_t* rows, int copier) {
  constexpr int kChunks = D / 8;
  constexpr int kRowStep = 128 / kChunks;
  static_assert(kRowStep % 8 == 0 && kRows % kRowStep == 0, "producer copy shape");
  const int c = copier % kChunks;
  char* to = dst + detail::Sw128Offset<kRows>(copier / kChunks, c);
  const bf16* from = src + c * 8;
#pragma unroll 4
  for (int r = copier / kChunks; r < kRows; r += kRowStep, to += kRowStep * 128) {
    const int row = row0 + r;
    const bool valid = row < valid_rows;
    const int64_t at = valid ? (rows != nullptr ? __ldg(rows + row) : row) : 0;
    detail::CpAsync16(to, from + at * stride, valid);
  }
}

// A 3D TMA box (coordinates innermost first) into shared memory, completing on `bar`.
__device__ __forceinline__ void TmaLoad3d(uint32_t dst, const CUtensorMap* map, int c0, int c1,
                                          int c2, uint32_t bar) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, "
      "%3, %4}], [%5];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(bar)
      : "memory");
}
constexpr int kWsThreads = 384;  // producer warpgroup + two consumer warpgroups

// Warp-specialised: warpgroup 0 copies (cp.async, every copy tracked by an mbarrier of its stage:
// K full, V full; a stage is refilled once both consumer warpgroups released it), warpgroups 1
// and 2 compute, each at its own pace (no CTA barrier per tile). Registers move to the consumers
// (setmaxnreg: 40 producer, 232 consumer).
// kTma: K, V and Q tiles arrive by TMA (one thread issues a 64-column box per column block, the
// hardware writes the 128-byte swizzle; a dense call without head_len or row_index), else by the
// producer warpgroup's cp.async.
template <int D, typename OutT, bool kTma>
__global__ void __launch_bounds__(kWsThreads, 1)
    PrefillSm90WsKernel(const PrefillAttentionParams p, const __grid_constant__ TmaMaps maps) {
#if defined(__CUDA_ARCH__) && !defined(SQUEEZE_WGMMA)
  __trap();
#endif
  using Smem = Sm90Smem<D>;
  constexpr int kNTiles = kBlockN / 8;
  constexpr int kDTiles = D / 8;
  extern __shared__ char smem_raw[];
  const uint32_t raw = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  const uint32_t pad = (1024 - (raw & 1023)) & 1023;
  char* smem = smem_raw + pad;
  const uint32_t sbase = raw + pad;
  const uint32_t q_full = sbase + Smem::kBarOff;
  auto k_full = [&](int st) { return q_full + 8 * (1 + st); };
  auto v_full = [&](int st) { return q_full + 8 * (1 + kStages + st); };
  auto empty = [&](int st) { return q_full + 8 * (1 + 2 * kStages + st); };

  const int qh = blockIdx.x;
  const int m0 = (gridDim.y - 1 - blockIdx.y) * kBlockM;
  const int n = p.num_tokens, hq = p.num_q_heads;
  const int kvh = qh / (hq / p.num_kv_heads);
  const int kv_len = p.head_len != nullptr ? p.head_len[kvh] : p.kv.len;
  const int past = p.causal ? kv_len - n : kv_len + kBlockM;
  const int tid = threadIdx.x, lane = tid & 31;
  const int wg = tid >> 7;
  // Key tiles [t_begin, t_begin + num_tiles): the causal limit of the CTA's last row, or the
  // split's range (split_keys is a multiple of kBlockN).
  const int split = blockIdx.z;
  const int key_begin = p.key_splits != 0 ? split * p.split_keys : 0;
  const int key_limit = p.key_splits != 0 ? min(kv_len, key_begin + p.split_keys) : kv_len;
  const int kv_end = min(key_limit, past + m0 + kBlockM);
  const int t_begin = key_begin / kBlockN;
  const int num_tiles = max(0, (kv_end + kBlockN - 1) / kBlockN - t_begin);

  if (tid == 0) {
    const uint32_t producers = kTma ? 1 : 128;  // the TMA thread, or every copying thread
    MbarInit(q_full, producers);
    for (int st = 0; st < kStages; ++st) {
      MbarInit(k_full(st), producers);
      MbarInit(v_full(st), producers);
      MbarInit(empty(st), 256);
    }
  }
  __syncthreads();

  if (wg == 0) {
    // ---- Producer.
    SetMaxRegsDec<40>();
    if constexpr (kTma) {
      if (tid != 0) return;
      constexpr uint32_t kQBytes = kBlockM * D * 2, kTileBytes = kBlockN * D * 2;
      MbarArriveExpectTx(q_full, kQBytes);
#pragma unroll
      for (int cb = 0; cb < D / 64; ++cb) {
        TmaLoad3d(sbase + cb * kBlockM * 128, &maps.q, cb * 64, qh, m0, q_full);
      }
      for (int t = 0; t < num_tiles; ++t) {
        const int st = t % kStages;
        if (t >= kStages) MbarWait(empty(st), ((t / kStages) & 1) ^ 1);
        const uint32_t kdst = sbase + Smem::kKOff + st * Smem::kTileBytes;
        const uint32_t vdst = sbase + Smem::kVOff + st * Smem::kTileBytes;
        MbarArriveExpectTx(k_full(st), kTileBytes);
#pragma unroll
        for (int cb = 0; cb < D / 64; ++cb) {
          TmaLoad3d(kdst + cb * kBlockN * 128, &maps.k, cb * 64, (t_begin + t) * kBlockN, kvh,
                    k_full(st));
        }
        MbarArriveExpectTx(v_full(st), kTileBytes);
#pragma unroll
        for (int cb = 0; cb < D / 64; ++cb) {
          TmaLoad3d(vdst + cb * kBlockN * 128, &maps.v, cb * 64, (t_begin + t) * kBlockN, kvh,
                    v_full(st));
        }
      }
      return;
    }
    const int32_t* kv_rows = p.row_index != nullptr
                                 ? p.row_index + static_cast<int64_t>(kvh) * p.row_index_stride
                                 : nullptr;
    const bf16* k = p.kv.k + static_cast<int64_t>(kvh) * p.kv.head_stride;
    const bf16* v = p.kv.v + static_cast<int64_t>(kvh) * p.kv.head_stride;
    ProducerTile<D, kBlockM>(smem,
                             p.q + static_cast<int64_t>(m0) * hq * D + static_cast<int64_t>(qh) * D,
                             static_cast<int64_t>(hq) * D, 0, n - m0, nullptr, tid);
    MbarArriveOnCopies(q_full);
    for (int t = 0; t < num_tiles; ++t) {
      const int st = t % kStages;
      if (t >= kStages) MbarWait(empty(st), ((t / kStages) & 1) ^ 1);
      const int key0 = (t_begin + t) * kBlockN;
      ProducerTile<D, kBlockN>(smem + Smem::kKOff + st * Smem::kTileBytes, k, D, key0, kv_len,
                               kv_rows, tid);
      MbarArriveOnCopies(k_full(st));
      ProducerTile<D, kBlockN>(smem + Smem::kVOff + st * Smem::kTileBytes, v, D, key0, kv_len,
                               kv_rows, tid);
      MbarArriveOnCopies(v_full(st));
    }
    detail::CpAsyncWait<0>();
    return;
  }

  // ---- Consumers.
  SetMaxRegsInc<232>();
  const int cwg = wg - 1, warp_in_wg = (tid >> 5) & 3;
  const int wg_row0 = m0 + cwg * 64;
  // Tiles this warpgroup computes: up to its last row's causal limit, none when all its rows lie
  // past n (it only releases the stages).
  const int wg_tiles =
      wg_row0 >= n ? 0 : min(num_tiles, max(0, (past + wg_row0 + 63) / kBlockN + 1 - t_begin));
  float s[kNTiles * 4];
  float o[kDTiles * 4];
#pragma unroll
  for (int i = 0; i < kNTiles * 4; ++i) s[i] = 0.0f;
#pragma unroll
  for (int i = 0; i < kDTiles * 4; ++i) o[i] = 0.0f;
  uint32_t pa[kBlockN / 16][4];
  float m[2] = {-INFINITY, -INFINITY};
  float l[2] = {0.0f, 0.0f};
  float alpha[2];
  const float scale_log2 = p.scale * detail::kLog2e;
  const int g = lane >> 2, tq = lane & 3;
  const int row_lo = wg_row0 + warp_in_wg * 16 + g;
  const int limit[2] = {min(past + row_lo, kv_len - 1), min(past + row_lo + 8, kv_len - 1)};
  const uint32_t q_wg = sbase + cwg * 64 * 128;
  const int diag_limit = min(past + wg_row0, kv_len - 1);

  auto k_tile = [&](int t) {
    MbarWait(k_full(t % kStages), (t / kStages) & 1);
    return sbase + Smem::kKOff + (t % kStages) * Smem::kTileBytes;
  };
  auto v_tile = [&](int t) {
    MbarWait(v_full(t % kStages), (t / kStages) & 1);
    return sbase + Smem::kVOff + (t % kStages) * Smem::kTileBytes;
  };
  auto diagonal = [&](int key0) { return key0 + kBlockN - 1 > diag_limit; };
  MbarWait(q_full, 0);
  // Tile 0 (S only), the steady state (S of tile t with P V of tile t - 1, the softmax of t while
  // P V runs; no warpgroup-dependent branch around a wgmma, which ptxas would serialise), then the
  // last tile's P V. Tile t's stage is released (both K and V read) once its P V completed.
  if (wg_tiles > 0) {
    const uint32_t kt = k_tile(0);
    detail::WgmmaFence();
    IssueScores<D>(s, q_wg, kt);
    detail::WgmmaCommit();
    detail::WgmmaWait<0>();
    detail::FenceRegisters(s);
    const int key0 = t_begin * kBlockN;
    SoftmaxTile<kNTiles>(s, m, l, alpha, scale_log2, diagonal(key0), key0, limit, tq);
    PackP<kNTiles>(s, pa);
  }
  for (int t = 1; t < wg_tiles; ++t) {
    const uint32_t kt = k_tile(t), vt = v_tile(t - 1);
    detail::WgmmaFence();
    IssueScores<D>(s, q_wg, kt);
    detail::WgmmaCommit();
    IssueValues<D>(o, pa, vt);
    detail::WgmmaCommit();
    detail::WgmmaWait<1>();
    detail::FenceRegisters(s);
    const int key0 = (t_begin + t) * kBlockN;
    SoftmaxTile<kNTiles>(s, m, l, alpha, scale_log2, diagonal(key0), key0, limit, tq);
    detail::WgmmaWait<0>();
    detail::FenceRegisters(o);
    MbarArrive(empty((t - 1) % kStages));
    RescaleO<kDTiles>(o, alpha);
    PackP<kNTiles>(s, pa);
  }
  if (wg_tiles > 0) {
    const uint32_t vt = v_tile(wg_tiles - 1);
    detail::WgmmaFence();
    IssueValues<D>(o, pa, vt);
    detail::WgmmaCommit();
    detail::WgmmaWait<0>();
    detail::FenceRegisters(o);
    MbarArrive(empty((wg_tiles - 1) % kStages));
  }
  // Tiles past this warpgroup's rows: released once loaded (so a stage's phases stay in order).
  for (int t = wg_tiles; t < num_tiles; ++t) {
    const int st = t % kStages;
    MbarWait(k_full(st), (t / kStages) & 1);
    MbarWait(v_full(st), (t / kStages) & 1);
    MbarArrive(empty(st));
  }
  detail::StorePrefillRows<D, OutT>(
      p, [&](int j, int e) { return o[4 * j + e]; }, l, m, row_lo, qh, tq, split);
}

using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*,
                                 const cuuint64_t*, const cuuint64_t*, const cuuint32_t*,
                                 const cuuint32_t*, CUtensorMapInterleave, CUtensorMapSwizzle,
                                 CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

// cuTensorMapEncodeTiled through the runtime's driver entry point (nullptr if unavailable).
EncodeTiled TensorMapEncoder() {
  static const EncodeTiled fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult status;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault,
                                         &status) != cudaSuccess ||
        status != cudaDriverEntryPointSuccess) {
      return static_cast<EncodeTiled>(nullptr);
    }
    return reinterpret_cast<EncodeTiled>(ptr);
  }();
  return fn;
}

// A bf16 tensor of 3 dimensions (innermost d, contiguous) read in boxes of 64 x box1 x box2 with
// the 128-byte swizzle; rows past the dimensions read as zeros.
bool EncodeMap(EncodeTiled encode, CUtensorMap* map, const void* base, uint64_t d, uint64_t dim1,
               uint64_t dim2, uint64_t stride1, uint64_t stride2, uint32_t box1, uint32_t box2) {
  const cuuint64_t dims[3] = {d, dim1, dim2};
  const cuuint64_t strides[2] = {stride1 * 2, stride2 * 2};  // bytes, dimensions 1 and 2
  const cuuint32_t box[3] = {64, box1, box2};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  return encode(map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, const_cast<void*>(base), dims, strides,
                box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

// The call's Q [n][Hq][d] and K, V ([Hkv] heads of kv.len rows, head_stride apart) maps; false
// when TMA cannot take the call (rows through a row index or per-head lengths, or no encoder).
bool MakeTmaMaps(const PrefillAttentionParams& p, TmaMaps* maps) {
  if (p.row_index != nullptr || p.head_len != nullptr || p.kv.len == 0) return false;
  const EncodeTiled encode = TensorMapEncoder();
  if (encode == nullptr) return false;
  const uint64_t d = p.head_dim, len = p.kv.len, hkv = p.num_kv_heads;
  const uint64_t head_stride =
      p.num_kv_heads > 1 ? static_cast<uint64_t>(p.kv.head_stride) : len * d;
  return EncodeMap(encode, &maps->q, p.q, d, p.num_q_heads, p.num_tokens, d,
                   static_cast<uint64_t>(p.num_q_heads) * d, 1, kBlockM) &&
         EncodeMap(encode, &maps->k, p.kv.k, d, len, hkv, d, head_stride, kBlockN, 1) &&
         EncodeMap(encode, &maps->v, p.kv.v, d, len, hkv, d, head_stride, kBlockN, 1);
}

template <typename Kernel, typename... Args>
cudaError_t Launch(Kernel kernel, int threads, int bytes, const PrefillAttentionParams& p,
                   cudaStream_t stream, const Args&... args) {
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err != cudaSuccess) return err;
  const dim3 grid(p.num_q_heads, (p.num_tokens + kBlockM - 1) / kBlockM,
                  p.key_splits != 0 ? p.key_splits : 1);
  kernel<<<grid, threads, bytes, stream>>>(p, args...);
  return cudaGetLastError();
}

template <int D, typename OutT>
cudaError_t LaunchTyped(const PrefillAttentionParams& p, cudaStream_t stream) {
  constexpr int kBytes = Sm90Smem<D>::kBytes;
  TmaMaps maps{};
  if (p.impl != PrefillImpl::kWgmmaCpAsync && MakeTmaMaps(p, &maps)) {
    return Launch(PrefillSm90WsKernel<D, OutT, true>, kWsThreads, kBytes, p, stream, maps);
  }
  return Launch(PrefillSm90WsKernel<D, OutT, false>, kWsThreads, kBytes, p, stream, maps);
}

}  // namespace

namespace detail {

cudaError_t LaunchPrefillAttentionSm90(const PrefillAttentionParams& p, cudaStream_t stream) {
  switch (p.head_dim) {
    case 64:
      return p.out_bf16 ? LaunchTyped<64, bf16>(p, stream) : LaunchTyped<64, float>(p, stream);
    case 128:
      return p.out_bf16 ? LaunchTyped<128, bf16>(p, stream) : LaunchTyped<128, float>(p, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace detail
}  // namespace squeeze::gpu
