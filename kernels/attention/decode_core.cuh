// Device-side core shared by the dense and the sparse decode attention kernels: one CTA of 256
// threads computes the exact softmax attention of the G query heads of one KV-head group over a
// list of key rows (contiguous for dense, gathered per range for sparse) and writes one
// normalised fp32 partial [G][d] plus its lse2 [G]. Included only by kernels/**/*.cu.
// The template's G is the padded group (detail::PaddedGroup, up to 16); the real group size
// `group` <= G is passed at run time: rows g >= group get a zero query, are computed alongside
// (each row's softmax is its own, so they touch no real row) and are never stored.
// CPU reference and tests: those of its two kernels (decode_attention.cuh,
// sparse_decode_attention.cuh).
//
// Pipeline: tiles of 64 key rows; K and V tiles are copied to shared memory with 16-byte
// cp.async (coalesced: d / 8 consecutive threads read one row), 3 stages deep, so two tiles are
// in flight while one is computed.
// QK: warp w owns keys [8w, 8w + 8) of the tile, 4 lanes per key, each lane a quarter of d
//   (16-byte chunks quarter + 4i); the 4 partial dots are reduced with two xor-shuffles. At d = 64
//   and 128 (rows of 128 and 256 bytes) K chunks are XOR-swizzled by the row's parity so the 8
//   lanes of a quarter-warp (two rows) hit distinct banks; at d = 96 the second row of a pair
//   already starts 64 bytes (4 chunks) along the banks, so no swizzle.
//   q (pre-scaled by scale * log2 e) is read from shared memory as broadcasts.
// Softmax: per warp and head an online (running max, sum) state in the exp2 domain, max
//   subtracted before every exponential; -inf-safe (a warp that saw no key keeps m = -inf).
// PV: the same warp walks its 8 keys; lane owns d/32 consecutive output dims, so a V row is one
//   contiguous warp-wide read (8, 6 or 4 bytes per lane: one load, or three at d = 96);
//   acc[G][d/32] fp32 in registers.
// Epilogue: the 8 warps' states are merged through shared memory (the K/V stage area reused).
#pragma once

#ifdef __CUDACC__

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/common/device.cuh"

namespace squeeze::gpu::detail {

// Shared-memory layout of the core (bytes from the dynamic smem base).
template <int D, int G>
struct CoreSmem {
  static constexpr int kStageElems = kTileKeys * D;  // bf16 per K (or V) stage
  static constexpr size_t kKOff = 0;
  static constexpr size_t kVOff = size_t{kStages} * kStageElems * 2;
  static constexpr size_t kStageBytes = 2 * kVOff;            // K and V stages together
  static constexpr size_t kQOff = kStageBytes;                // float [G][D]
  static constexpr size_t kPOff = kQOff + size_t{G} * D * 4;  // float [kWarps][8][G]
  static constexpr size_t kMlOff = kPOff + size_t{kWarps} * kKeysPerWarp * G * 4;  // [kWarps][G][2]
  static constexpr size_t kBytes = kMlOff + size_t{kWarps} * G * 2 * 4;
  // The epilogue's per-warp accumulators [kWarps][G][D] reuse the stage area.
  static_assert(size_t{kWarps} * G * D * 4 <= kStageBytes, "epilogue does not fit");
};

// Resident CTAs per SM a kernel built on the core asks registers for (__launch_bounds__): two,
// but one at the padded group of 16, whose [16][d / 32] accumulators need about 170-215
// registers.
template <int G>
constexpr int CoreMinBlocks() {
  return G >= 16 ? 1 : 2;
}

// Row functors: tile-local key index -> storage row (relative to the k/v base pointers).
struct ContiguousRows {
  __device__ __forceinline__ int operator()(int key) const { return key; }
};
struct SmemRows {
  const int* rows;
  __device__ __forceinline__ int operator()(int key) const { return rows[key]; }
};

template <int D, int G>
class DecodeCore {
 public:
  using bf16_raw = __nv_bfloat16;
  using Smem = CoreSmem<D, G>;
  static constexpr int kChunks = D / 8;  // 16-byte chunks per bf16 row
  static constexpr int kLoadsPerThread = kTileKeys * kChunks / kThreads;  // per K (and V) tile
  static constexpr int kQkChunks = kChunks / 4;                           // per lane, QK
  static constexpr int kVPerLane = D / 32;                                // output dims per lane
  static_assert(D == 64 || D == 96 || D == 128, "head_dim must be 64, 96 or 128");
  static_assert(kLoadsPerThread * kThreads == kTileKeys * kChunks, "tile/threads mismatch");

  __device__ explicit DecodeCore(char* smem) : smem_(smem) {}

  // q_group: [group][D] fp32 (the group's query heads, group <= G), stored pre-scaled by
  // `q_scale` (= softmax scale * log2 e); the padding rows [group, G) are zero. The caller syncs
  // before Attend (Attend's first barrier does).
  __device__ void LoadQ(const float* q_group, float q_scale, int group) {
    float* qs = QSmem();
    const int n = group * D;
    for (int i = threadIdx.x; i < G * D; i += kThreads) qs[i] = i < n ? q_group[i] * q_scale : 0.0f;
  }

  // Attends to keys [0, num_keys) with storage rows row_of(key) of k/v ([rows][D] bf16).
  // Shared memory must be free (no thread still reading the stage area) on entry.
  template <class RowFn>
  __device__ void Attend(const bf16_raw* k, const bf16_raw* v, int num_keys, RowFn row_of) {
#pragma unroll
    for (int g = 0; g < G; ++g) {
      m_[g] = -INFINITY;
      l_[g] = 0.0f;
#pragma unroll
      for (int e = 0; e < kVPerLane; ++e) acc_[g][e] = 0.0f;
    }
    const int num_tiles = (num_keys + kTileKeys - 1) / kTileKeys;
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < num_tiles) IssueTile(k, v, s, s, num_keys, row_of);
      CpAsyncCommit();
    }
    for (int t = 0; t < num_tiles; ++t) {
      CpAsyncWait<kStages - 2>();  // tile t has landed (this thread's copies) ...
      __syncthreads();             // ... everyone's, and tile t-1's stage is no longer read
      const int next = t + kStages - 1;
      if (next < num_tiles) IssueTile(k, v, next, next % kStages, num_keys, row_of);
      CpAsyncCommit();
      ComputeTile(t % kStages, t * kTileKeys, num_keys);
    }
  }

  // Merges the warps' states and writes out [group][D] (normalised; zeros when no key) and
  // lse2 [group] (-inf when no key); the padding rows are not written. Ends with a barrier:
  // shared memory is free afterwards.
  __device__ void Finish(float* out, float* lse2, int group) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float lsum[G];
#pragma unroll
    for (int g = 0; g < G; ++g) lsum[g] = WarpSum(l_[g]);
    CpAsyncWait<0>();
    __syncthreads();                               // the stage area is free for the accumulators
    float* red = reinterpret_cast<float*>(smem_);  // [kWarps][G][D]
    float* ml = reinterpret_cast<float*>(smem_ + Smem::kMlOff);
#pragma unroll
    for (int g = 0; g < G; ++g) {
#pragma unroll
      for (int e = 0; e < kVPerLane; ++e) {
        red[(warp * G + g) * D + lane * kVPerLane + e] = acc_[g][e];
      }
      if (lane == 0) {
        ml[(warp * G + g) * 2] = m_[g];
        ml[(warp * G + g) * 2 + 1] = lsum[g];
      }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < group * D; idx += kThreads) {
      const int g = idx / D, i = idx % D;
      float mx = -INFINITY;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, ml[(w * G + g) * 2]);
      float o = 0.0f, l = 0.0f;
      if (mx != -INFINITY) {
#pragma unroll
        for (int w = 0; w < kWarps; ++w) {
          const float sc = Exp2(ml[(w * G + g) * 2] - mx);  // 0 for a warp that saw no key
          l += ml[(w * G + g) * 2 + 1] * sc;
          o += red[(w * G + g) * D + i] * sc;
        }
      }
      // l >= 1 whenever mx is finite: the key at the maximum contributes 2^0.
      out[idx] = l > 0.0f ? o / l : 0.0f;
      if (i == 0) lse2[g] = l > 0.0f ? mx + log2f(l) : -INFINITY;
    }
    __syncthreads();
  }

 private:
  __device__ bf16_raw* KSmem() { return reinterpret_cast<bf16_raw*>(smem_ + Smem::kKOff); }
  __device__ bf16_raw* VSmem() { return reinterpret_cast<bf16_raw*>(smem_ + Smem::kVOff); }
  __device__ float* QSmem() { return reinterpret_cast<float*>(smem_ + Smem::kQOff); }
  __device__ float* PSmem() { return reinterpret_cast<float*>(smem_ + Smem::kPOff); }

  // Chunk c of a K row sits at chunk position c ^ Swizzle(row) (see the header comment).
  __device__ static int Swizzle(int row) { return D == 96 ? 0 : (row & 1) << 2; }

  template <class RowFn>
  __device__ void IssueTile(const bf16_raw* k, const bf16_raw* v, int tile, int stage, int num_keys,
                            RowFn row_of) {
    bf16_raw* ks = KSmem() + stage * Smem::kStageElems;
    bf16_raw* vs = VSmem() + stage * Smem::kStageElems;
#pragma unroll
    for (int u = 0; u < kLoadsPerThread; ++u) {
      const int idx = threadIdx.x + u * kThreads;
      const int row = idx / kChunks, c = idx % kChunks;
      const int key = tile * kTileKeys + row;
      const bool valid = key < num_keys;
      const int64_t src = valid ? static_cast<int64_t>(row_of(key)) * D + c * 8 : 0;
      CpAsync16(ks + row * D + (c ^ Swizzle(row)) * 8, k + src, valid);
      CpAsync16(vs + row * D + c * 8, v + src, valid);
    }
  }

  __device__ void ComputeTile(int stage, int tile_key0, int num_keys) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int key_in_warp = lane >> 2, quarter = lane & 3;
    const int row = warp * kKeysPerWarp + key_in_warp;
    const bf16_raw* krow = KSmem() + stage * Smem::kStageElems + row * D;
    const float* qs = QSmem();

    // ---- s[g] = q_g . k_row (this lane's quarter of d), then reduce over the 4 lanes.
    float s[G];
#pragma unroll
    for (int g = 0; g < G; ++g) s[g] = 0.0f;
#pragma unroll
    for (int i = 0; i < kQkChunks; ++i) {
      const int c = quarter + 4 * i;
      const uint4 raw = *reinterpret_cast<const uint4*>(krow + (c ^ Swizzle(row)) * 8);
      float kf[8];
      UnpackBf16x8(raw, kf);
#pragma unroll
      for (int g = 0; g < G; ++g) s[g] = Dot8(qs + g * D + c * 8, kf, s[g]);
    }
    const bool valid = tile_key0 + row < num_keys;
    float* pw = PSmem() + warp * kKeysPerWarp * G;
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float x = s[g];
      x += __shfl_xor_sync(0xffffffffu, x, 1);
      x += __shfl_xor_sync(0xffffffffu, x, 2);
      x = valid ? x : -INFINITY;
      // Tile max over the warp's 8 keys (lanes 4 apart hold different keys).
      float mx = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 4));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 8));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
      const float m_new = fmaxf(m_[g], mx);
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;  // no key yet: keep exps at 0
      const float p = Exp2(x - m_use);
      const float alpha = Exp2(m_[g] - m_use);
      m_[g] = m_new;
      l_[g] = l_[g] * alpha + (quarter == 0 ? p : 0.0f);  // one lane per key counts it
#pragma unroll
      for (int e = 0; e < kVPerLane; ++e) acc_[g][e] *= alpha;
      if (quarter == 0) pw[key_in_warp * G + g] = p;
    }
    __syncwarp();

    // ---- acc[g][:] += p[key][g] * v[key][lane's dims] over the warp's 8 keys.
    const bf16_raw* vbase =
        VSmem() + stage * Smem::kStageElems + (warp * kKeysPerWarp) * D + lane * kVPerLane;
#pragma unroll
    for (int j = 0; j < kKeysPerWarp; ++j) {
      float vf[kVPerLane];
      if constexpr (kVPerLane == 4) {
        const uint2 raw = *reinterpret_cast<const uint2*>(vbase + j * D);
        UnpackBf16x2(raw.x, &vf[0], &vf[1]);
        UnpackBf16x2(raw.y, &vf[2], &vf[3]);
      } else if constexpr (kVPerLane == 3) {  // d = 96: 6 bytes per lane, 2-byte aligned
        const uint16_t* raw = reinterpret_cast<const uint16_t*>(vbase + j * D);
#pragma unroll
        for (int e = 0; e < 3; ++e) vf[e] = __uint_as_float(static_cast<uint32_t>(raw[e]) << 16);
      } else {
        const uint32_t raw = *reinterpret_cast<const uint32_t*>(vbase + j * D);
        UnpackBf16x2(raw, &vf[0], &vf[1]);
      }
      float pj[G];
      if constexpr (G % 4 == 0) {
#pragma unroll
        for (int g = 0; g < G; g += 4) {
          const float4 t = *reinterpret_cast<const float4*>(pw + j * G + g);
          pj[g] = t.x;
          pj[g + 1] = t.y;
          pj[g + 2] = t.z;
          pj[g + 3] = t.w;
        }
      } else {
#pragma unroll
        for (int g = 0; g < G; ++g) pj[g] = pw[j * G + g];
      }
#pragma unroll
      for (int g = 0; g < G; ++g) {
#pragma unroll
        for (int e = 0; e < kVPerLane; ++e) acc_[g][e] = fmaf(pj[g], vf[e], acc_[g][e]);
      }
    }
    __syncwarp();  // p of this tile read before the next tile overwrites it
  }

  char* smem_;
  float m_[G];               // running max (log2 domain) of this warp's keys, per head
  float l_[G];               // running sum of 2^(s - m), this lane's keys only
  float acc_[G][kVPerLane];  // running sum of 2^(s - m) v over this warp's keys
};

}  // namespace squeeze::gpu::detail

#endif  // __CUDACC__
