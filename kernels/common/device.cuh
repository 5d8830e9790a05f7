// Device primitives shared by the kernels in kernels/ (the element-wise ops have their own,
// kernels/ops/elementwise.cuh): tile and pipeline constants of the attention kernels, cp.async
// copies, exp2, bf16 unpacking and the 8-wide dot product, warp and block reductions, and the
// release/acquire arrival counters used for in-kernel barriers. Device code only; included by
// kernels/**/*.cu.
#pragma once

#ifdef __CUDACC__

#include <cuda_bf16.h>

#include <cstdint>

namespace squeeze::gpu::detail {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTileKeys = 64;
constexpr int kKeysPerWarp = kTileKeys / kWarps;  // 8
constexpr int kStages = 3;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));  // ex2(-inf) = +0
  return y;
}

// 16-byte global -> shared copy; when !pred nothing is read and the destination is zero-filled.
__device__ __forceinline__ void CpAsync16(void* smem_dst, const void* gmem_src, bool pred) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  const int src_bytes = pred ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem_src),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
template <int N>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Two bf16 packed in a 32-bit word -> two floats (exact).
__device__ __forceinline__ void UnpackBf16x2(uint32_t w, float* lo, float* hi) {
  *lo = __uint_as_float(w << 16);
  *hi = __uint_as_float(w & 0xffff0000u);
}

// Eight bf16 in a 16-byte word (one cp.async / ldg chunk of a row) -> x[0..8) (exact).
__device__ __forceinline__ void UnpackBf16x8(uint4 w, float* x) {
  UnpackBf16x2(w.x, &x[0], &x[1]);
  UnpackBf16x2(w.y, &x[2], &x[3]);
  UnpackBf16x2(w.z, &x[4], &x[5]);
  UnpackBf16x2(w.w, &x[6], &x[7]);
}

// acc + q[0..8) . x[0..8), one fused multiply-add per element in index order (a fixed order,
// so repeated launches are bit-identical). q: 8 floats, 16-byte aligned (read as two float4,
// e.g. a query staged in shared memory); x: from UnpackBf16x8, unpacked once for the G query
// heads that share a K or centroid row.
__device__ __forceinline__ float Dot8(const float* q, const float* x, float acc) {
  const float4 qa = *reinterpret_cast<const float4*>(q);
  const float4 qb = *reinterpret_cast<const float4*>(q + 4);
  acc = fmaf(qa.x, x[0], acc);
  acc = fmaf(qa.y, x[1], acc);
  acc = fmaf(qa.z, x[2], acc);
  acc = fmaf(qa.w, x[3], acc);
  acc = fmaf(qb.x, x[4], acc);
  acc = fmaf(qb.y, x[5], acc);
  acc = fmaf(qb.z, x[6], acc);
  acc = fmaf(qb.w, x[7], acc);
  return acc;
}

__device__ __forceinline__ float WarpMax(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float WarpSum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Exclusive block-wide scan of 64-bit values; *total gets the block's sum. All threads call it;
// scratch holds kWarps values and is free again on return.
__device__ __forceinline__ unsigned long long BlockExclusiveScan(unsigned long long x,
                                                                 unsigned long long* total,
                                                                 unsigned long long* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  unsigned long long incl = x;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const unsigned long long y = __shfl_up_sync(0xffffffffu, incl, o);
    if (lane >= o) incl += y;
  }
  if (lane == 31) scratch[warp] = incl;
  __syncthreads();
  unsigned long long before = 0, sum = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    const unsigned long long v = scratch[w];
    if (w < warp) before += v;
    sum += v;
  }
  __syncthreads();
  *total = sum;
  return before + incl - x;
}

// GPU-scope release / acquire operations on arrival counters (cheaper than __threadfence's
// sequentially consistent fence; the CTA's writes are ordered before thread 0's release by a
// __syncthreads, and after another CTA's acquire by the next one).
__device__ __forceinline__ uint32_t AtomicAddAcqRel(uint32_t* p, uint32_t v) {
  uint32_t old;
  asm volatile("atom.add.acq_rel.gpu.global.u32 %0, [%1], %2;"
               : "=r"(old)
               : "l"(p), "r"(v)
               : "memory");
  return old;
}
__device__ __forceinline__ void RedAddRelease(uint32_t* p, uint32_t v) {
  asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ uint32_t LoadAcquire(const uint32_t* p) {
  uint32_t v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

// One CTA's arrival at `counter` (every thread calls it): true, in every thread, in the CTA
// whose arrival is the total-th. What the earlier CTAs wrote before arriving is then visible
// to it (read with __ldcg: L1 is not coherent). flag: a shared int.
__device__ __forceinline__ bool LastArrival(uint32_t* counter, uint32_t total, int* flag) {
  __syncthreads();
  if (threadIdx.x == 0) *flag = AtomicAddAcqRel(counter, 1u) == total - 1;
  __syncthreads();
  return *flag != 0;
}

}  // namespace squeeze::gpu::detail

#endif  // __CUDACC__
