// Tensor-core building blocks shared by the mma.sync kernels (prefill and cascade attention,
// k-means assignment, cluster scores, group selection): the swizzled shared-memory tile layout,
// ldmatrix loads and the bf16 m16n8k16 MMA.
// Device code only; include from .cu files.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/common/device.cuh"

namespace squeeze::gpu::detail {

// Byte offset of 16-byte chunk `c` of row `r` in a swizzled [rows][D] bf16 tile (D in {64, 96,
// 128}), a permutation of the row's D / 8 chunks chosen so that the 8 rows an ldmatrix phase
// reads (one logical chunk of 8 consecutive rows) hit 8 distinct 16-byte bank groups:
//   D = 64, 128 (rows of 128 or 256 bytes: every row starts at bank group 0): chunk c of row r
//     sits at c ^ (r & 7);
//   D = 96 (rows of 192 bytes: odd rows start at bank group 4, and 12 chunks leave no room for
//     an xor by 7): chunk c of row r sits at c ^ ((r >> 1) & 3), which stays within c's aligned
//     group of 4 chunks; the even rows of a phase then cover 4 bank groups and the odd rows,
//     shifted by 4, the other 4.
template <int D>
__device__ __forceinline__ uint32_t SwizzledOffset(int r, int c) {
  static_assert(D == 64 || D == 96 || D == 128, "swizzle defined for d in {64, 96, 128}");
  if constexpr (D == 96) {
    return static_cast<uint32_t>(r * (D * 2) + ((c ^ ((r >> 1) & 3)) << 4));
  } else {
    return static_cast<uint32_t>(r * (D * 2) + ((c ^ (r & 7)) << 4));
  }
}

// Copies rows [row0, row0 + kRows) into a swizzled [kRows][D] bf16 shared tile with 16-byte
// cp.async (kThreads threads); row i is read from row_ptr(i), called only for i < valid_rows.
// Rows at or past valid_rows are zero-filled and not read (`base`, any valid address, stands in
// as their source).
template <int D, int kRows, int kThreads, class RowPtr>
__device__ __forceinline__ void IssueSwizzledTile(char* dst, RowPtr row_ptr, int row0,
                                                  int valid_rows, const __nv_bfloat16* base) {
  constexpr int kChunks = D / 8;
  constexpr int kPerThread = kRows * kChunks / kThreads;
  static_assert(kPerThread * kThreads == kRows * kChunks, "tile/threads mismatch");
#pragma unroll
  for (int u = 0; u < kPerThread; ++u) {
    const int idx = threadIdx.x + u * kThreads;
    const int r = idx / kChunks, c = idx % kChunks;
    const bool valid = row0 + r < valid_rows;
    const __nv_bfloat16* from = valid ? row_ptr(row0 + r) + c * 8 : base;
    CpAsync16(dst + SwizzledOffset<D>(r, c), from, valid);
  }
}

// Four 8x8 b16 matrices from shared memory (lane l addresses row l % 8 of matrix l / 8).
__device__ __forceinline__ void Ldsm4(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                      uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

// The same, transposed (for the B operand of P.V).
__device__ __forceinline__ void Ldsm4T(uint32_t addr, uint32_t& r0, uint32_t& r1, uint32_t& r2,
                                       uint32_t& r3) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
               : "r"(addr));
}

// c[16x8] += a[16x16] (row) * b[16x8] (col), bf16 inputs, fp32 accumulators.
__device__ __forceinline__ void MmaBf16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                        uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// A operand of a warp's kMTiles x 16 rows (rows row0 + 16 mt + (lane & 15) of a swizzled
// [rows][D] shared tile at shared address `tile`), all of d, into registers: lanes 0-15 address
// chunk 2kk, lanes 16-31 chunk 2kk + 1 of their row, the four 8x8 matrices of an m16k16
// fragment in mma order.
template <int D, int kMTiles>
__device__ __forceinline__ void LoadRowFragments(uint32_t tile, int row0,
                                                 uint32_t (&a)[kMTiles][D / 16][4]) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
    const int r = row0 + mt * 16 + (lane & 15);
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
      Ldsm4(tile + SwizzledOffset<D>(r, 2 * kk + (lane >> 4)), a[mt][kk][0], a[mt][kk][1],
            a[mt][kk][2], a[mt][kk][3]);
    }
  }
}

// acc[mt][j] += the warp's A rows x rows [8 j, 8 j + 8) of a swizzled [kNTiles * 8][D] shared
// tile at `tile` (the B operand: x4 ldmatrix of 16 rows x 16 dims = two n8 fragments per load).
// Accumulator e of (mt, j) is A row 16 mt + 8 (e >> 1) + lane / 4, B row 8 j + 2 (lane % 4) +
// (e & 1).
template <int D, int kMTiles, int kNTiles>
__device__ __forceinline__ void TileProductsAdd(const uint32_t (&a)[kMTiles][D / 16][4],
                                                uint32_t tile, float (&acc)[kMTiles][kNTiles][4]) {
  static_assert(kNTiles % 2 == 0, "B rows come in pairs of n8 tiles");
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int kk = 0; kk < D / 16; ++kk) {
#pragma unroll
    for (int np = 0; np < kNTiles / 2; ++np) {
      const int c = np * 16 + (lane & 7) + ((lane >> 4) << 3);
      uint32_t b0, b1, b2, b3;
      Ldsm4(tile + SwizzledOffset<D>(c, 2 * kk + ((lane >> 3) & 1)), b0, b1, b2, b3);
#pragma unroll
      for (int mt = 0; mt < kMTiles; ++mt) {
        MmaBf16(acc[mt][2 * np], a[mt][kk], b0, b1);
        MmaBf16(acc[mt][2 * np + 1], a[mt][kk], b2, b3);
      }
    }
  }
}

// acc = the products of TileProductsAdd (accumulators zeroed first).
template <int D, int kMTiles, int kNTiles>
__device__ __forceinline__ void TileProducts(const uint32_t (&a)[kMTiles][D / 16][4], uint32_t tile,
                                             float (&acc)[kMTiles][kNTiles][4]) {
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
    for (int j = 0; j < kNTiles; ++j) {
      acc[mt][j][0] = acc[mt][j][1] = acc[mt][j][2] = acc[mt][j][3] = 0.0f;
    }
  }
  TileProductsAdd<D, kMTiles, kNTiles>(a, tile, acc);
}

// Two floats -> bf16x2 (lo in the low half: the lower column/key index of an mma fragment).
__device__ __forceinline__ uint32_t PackBf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

}  // namespace squeeze::gpu::detail
