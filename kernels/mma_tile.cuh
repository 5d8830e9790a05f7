// Tensor-core building blocks shared by the mma.sync kernels (prefill attention, k-means
// assignment): the swizzled shared-memory tile layout, ldmatrix loads and the bf16 m16n8k16 MMA.
// Device code only; include from .cu files.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/attention_core.cuh"

namespace squeeze::gpu::detail {

// Byte offset of 16-byte chunk `c` of row `r` in a swizzled [rows][D] bf16 tile: chunk c of row
// r sits at c ^ (r & 7), so the 8 rows an ldmatrix phase reads hit 8 distinct 16-byte bank
// groups.
template <int D>
__device__ __forceinline__ uint32_t SwizzledOffset(int r, int c) {
  return static_cast<uint32_t>(r * (D * 2) + ((c ^ (r & 7)) << 4));
}

// Copies rows [row0, row0 + kRows) into a swizzled [kRows][D] bf16 shared tile with 16-byte
// cp.async (kThreads threads); row i is read from row_ptr(i). Rows at or past valid_rows are
// zero-filled and not read.
template <int D, int kRows, int kThreads, class RowPtr>
__device__ __forceinline__ void IssueSwizzledTile(char* dst, RowPtr row_ptr, int row0,
                                                  int valid_rows) {
  constexpr int kChunks = D / 8;
  constexpr int kPerThread = kRows * kChunks / kThreads;
  static_assert(kPerThread * kThreads == kRows * kChunks, "tile/threads mismatch");
#pragma unroll
  for (int u = 0; u < kPerThread; ++u) {
    const int idx = threadIdx.x + u * kThreads;
    const int r = idx / kChunks, c = idx % kChunks;
    const bool valid = row0 + r < valid_rows;
    const __nv_bfloat16* from = row_ptr(valid ? row0 + r : 0) + (valid ? c * 8 : 0);
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

// Two floats -> bf16x2 (lo in the low half: the lower column/key index of an mma fragment).
__device__ __forceinline__ uint32_t PackBf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

}  // namespace squeeze::gpu::detail
