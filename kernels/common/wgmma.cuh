// Hopper warpgroup MMA (wgmma) building blocks: shared-memory matrix descriptors for the
// 128-byte swizzled layout, the fence / commit / wait of asynchronous wgmma groups, the async-proxy
// fence that makes generic-proxy shared-memory writes (cp.async, st.shared) visible to wgmma, and
// the bf16 m64nNk16 products with fp32 accumulators the prefill attention kernel uses.
//
// Layout (PTX ISA, "Shared memory matrix layout", 128-byte swizzle): a tile is stored as column
// blocks of 64 bf16 (128 bytes) per row; within a block, 16-byte chunk c of row r sits at byte
// r * 128 + ((c ^ (r & 7)) << 4), and the block starts 1024-byte aligned (the swizzle is applied
// to address bits [4, 7) xor [7, 10)). Sw128Offset gives that offset.
// - K-major operand (the reduction dimension contiguous: Q and K of S = Q K^T): the descriptor's
//   stride byte offset (SBO) is 1024 (8 rows of 128 bytes); k16 step kk of a block starts 32 * kk
//   bytes into it; the leading byte offset is unused.
// - MN-major operand (V of O = P V, d contiguous, "transposed" B): rows are the reduction index;
//   SBO = 1024 spaces groups of 8 reduction rows, LBO spaces the 64-wide column blocks along N.
// Accumulator fragment of m64nNk16 (fp32): warp w of the warpgroup owns rows [16w, 16w + 16);
// register 4j + e of lane l holds row 16w + l / 4 + 8 * (e >> 1), column 8j + 2 * (l % 4) + (e & 1)
// (the mma.sync m16n8 C layout, repeated over N / 8 column tiles). An A operand in registers
// takes the mma.sync m16n8k16 A layout of the warp's 16 rows.
// Device code only, sm_90a (the arch-specific target: wgmma does not exist on sm_90 without "a").
#pragma once

#include <cstdint>

namespace squeeze::gpu::detail {

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define SQUEEZE_WGMMA 1
#endif

// Byte offset of 16-byte chunk c (0 .. D / 8) of row r in a 128-byte swizzled tile of kRows rows.
template <int kRows>
__device__ __forceinline__ uint32_t Sw128Offset(int r, int c) {
  return static_cast<uint32_t>((c >> 3) * (kRows * 128) + r * 128 + (((c & 7) ^ (r & 7)) << 4));
}

// Shared-memory matrix descriptor, 128-byte swizzle (layout type 1 in bits 62-63).
__device__ __forceinline__ uint64_t Sw128Desc(uint32_t smem_addr, uint32_t lbo, uint32_t sbo) {
  return static_cast<uint64_t>((smem_addr & 0x3FFFF) >> 4) |
         (static_cast<uint64_t>((lbo >> 4) & 0x3FFF) << 16) |
         (static_cast<uint64_t>((sbo >> 4) & 0x3FFF) << 32) | (uint64_t{1} << 62);
}

__device__ __forceinline__ void WgmmaFence() {
#ifdef SQUEEZE_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void WgmmaCommit() {
#ifdef SQUEEZE_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void WgmmaWait() {
#ifdef SQUEEZE_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// Generic-proxy writes to shared memory (cp.async, st.shared) by this thread become visible to
// the async proxy (wgmma operand reads) after a following barrier.
__device__ __forceinline__ void FenceProxyAsyncShared() {
#ifdef SQUEEZE_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
// Keeps the compiler from moving accesses of accumulator registers across a wgmma wait.
template <int N>
__device__ __forceinline__ void FenceRegisters(float (&r)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i) asm volatile("" : "+f"(r[i])::"memory");
}

// The accumulator operands of the wgmma wrappers below: the register names in the asm text
// (%0 .. %31, %32 .. %63) and their "+f" constraints, 32 at a time.
#define SQUEEZE_WGMMA_D0_31                                                                    \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
  "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define SQUEEZE_WGMMA_D32_63                                                                   \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, " \
  "%50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define SQUEEZE_WGMMA_OUT0_31                                                                     \
  "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
      "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),    \
      "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),  \
      "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),  \
      "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define SQUEEZE_WGMMA_OUT32_63                                                                   \
  "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]),     \
      "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), \
      "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), \
      "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), \
      "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])

// d[0 .. 64) (+)= A (64 x 16, K-major, descriptor a) * B (16 x 128, K-major, descriptor b):
// scale_d == 0 overwrites d.
__device__ __forceinline__ void WgmmaSS_m64n128k16(float (&d)[64], uint64_t a, uint64_t b,
                                                   int scale_d) {
#ifdef SQUEEZE_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" SQUEEZE_WGMMA_D0_31
      ", " SQUEEZE_WGMMA_D32_63 "}, %64, %65, p, 1, 1, 0, 0;\n}\n"
      : SQUEEZE_WGMMA_OUT0_31, SQUEEZE_WGMMA_OUT32_63
      : "l"(a), "l"(b), "r"(scale_d));
#endif
}

// d[0 .. 32) += A (64 x 16 bf16, registers) * B (16 x 64, MN-major: descriptor b, transposed).
__device__ __forceinline__ void WgmmaRS_m64n64k16_TransB(float (&d)[32], const uint32_t (&a)[4],
                                                         uint64_t b) {
#ifdef SQUEEZE_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {" SQUEEZE_WGMMA_D0_31
      "}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : SQUEEZE_WGMMA_OUT0_31
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
#endif
}

// d[0 .. 64) += A (64 x 16 bf16, registers) * B (16 x 128, MN-major: descriptor b, transposed).
__device__ __forceinline__ void WgmmaRS_m64n128k16_TransB(float (&d)[64], const uint32_t (&a)[4],
                                                          uint64_t b) {
#ifdef SQUEEZE_WGMMA
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {" SQUEEZE_WGMMA_D0_31
      ", " SQUEEZE_WGMMA_D32_63 "}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
      : SQUEEZE_WGMMA_OUT0_31, SQUEEZE_WGMMA_OUT32_63
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(1));
#endif
}

#undef SQUEEZE_WGMMA_D0_31
#undef SQUEEZE_WGMMA_D32_63
#undef SQUEEZE_WGMMA_OUT0_31
#undef SQUEEZE_WGMMA_OUT32_63

}  // namespace squeeze::gpu::detail
