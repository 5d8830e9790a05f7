// Shared pieces of the element-wise and per-row kernels in kernels/ops/: grid sizing, bf16
// packing, block reductions and the vector-or-scalar launch. Device code only; included by
// kernels/ops/*.cu and kernels/attention/merge_attention.cu.
//
// Conventions for every launcher in kernels/ops/ except the GEMV (gemv.cuh states its own), and
// for LaunchMergeAttention:
// - Pointers are device memory; tensors are dense row-major, shapes in brackets, outermost
//   first. Indices (ids, positions) must be valid: nothing is bounds-checked on the device.
// - Argument checks, in this order: a negative size, a non-positive inner size (dim, head_dim,
//   vocab, ...) or a shape outside the documented limits gives cudaErrorInvalidValue; then zero
//   work (n, rows or count == 0) gives cudaSuccess without launching or looking at pointers;
//   then a required pointer that is null gives cudaErrorInvalidValue.
// - Any alignment is accepted. 16-byte aligned pointers (8 bytes for 4-wide bf16 outputs) and
//   inner sizes that are multiples of 4 (or 8) take a vectorised path; results are bit-identical
//   either way.
// - Launchers never allocate, never synchronise, and return cudaGetLastError() after the launch;
//   everything is capturable in a CUDA graph.
// - Math is fp32 with IEEE division/sqrt and the precise expf/logf/sinf/cosf (no fast-math
//   intrinsics). bf16 outputs are round-to-nearest-even (__float2bfloat16_rn) of the fp32 value
//   that the fp32 output (when also requested) receives, so the two agree bit for bit.
// - "May alias" means the very same pointer; partially overlapping ranges are not supported.
//
// Element-wise kernels share one shape: a grid-stride loop over V-wide vectors [0, count / V)
// followed by a scalar loop over the tail, with V = 1 (everything in the tail) when a pointer is
// not aligned for the vector path; both paths compute the same values.
#pragma once

#ifdef __CUDACC__

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace squeeze::gpu::elementwise {

using bf16 = __nv_bfloat16;

constexpr int kThreads = 256;
constexpr size_t kMaxBlocks = 65536;  // element-wise grids stride beyond this

inline bool Aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// Blocks of kThreads for `work` items, at least 1, at most kMaxBlocks (grid-stride loops).
inline unsigned GridFor(size_t work) {
  const size_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::clamp<size_t>(blocks, 1, kMaxBlocks));
}

// Threads for one CTA per row of `work` items: a multiple of 32 in [32, max_threads].
inline int RowThreads(int work, int max_threads) {
  return std::clamp((work + 31) / 32 * 32, 32, max_threads);
}

__device__ __forceinline__ size_t ThreadIndex() {
  return static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ size_t ThreadCount() {
  return static_cast<size_t>(gridDim.x) * blockDim.x;
}

__device__ __forceinline__ uint32_t PackBf16x2(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
  return reinterpret_cast<const uint32_t&>(v);
}
__device__ __forceinline__ float Bf16Lo(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float Bf16Hi(uint32_t w) { return __uint_as_float(w & 0xFFFF0000u); }

__device__ __forceinline__ void Unpack8(uint4 raw, float4* lo, float4* hi) {
  *lo = make_float4(Bf16Lo(raw.x), Bf16Hi(raw.x), Bf16Lo(raw.y), Bf16Hi(raw.y));
  *hi = make_float4(Bf16Lo(raw.z), Bf16Hi(raw.z), Bf16Lo(raw.w), Bf16Hi(raw.w));
}
__device__ __forceinline__ uint2 Pack4(float4 v) {
  return make_uint2(PackBf16x2(v.x, v.y), PackBf16x2(v.z, v.w));
}
__device__ __forceinline__ uint4 Pack8(float4 lo, float4 hi) {
  return make_uint4(PackBf16x2(lo.x, lo.y), PackBf16x2(lo.z, lo.w), PackBf16x2(hi.x, hi.y),
                    PackBf16x2(hi.z, hi.w));
}

__device__ __forceinline__ float WarpSum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Sum over the CTA, returned to every thread. Call at most once per kernel (shared scratch).
__device__ __forceinline__ float BlockSum(float x) {
  __shared__ float part[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  x = WarpSum(x);
  if (lane == 0) part[warp] = x;
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  return WarpSum(lane < warps ? part[lane] : 0.0f);
}

// Element-wise launch: the vector kernel when `vec` holds, else the scalar one.
template <class VecKernel, class ScalarKernel, class... Args>
inline cudaError_t LaunchElementwise(bool vec, int width, size_t count, VecKernel vec_kernel,
                                     ScalarKernel scalar_kernel, cudaStream_t stream,
                                     Args... args) {
  if (vec) {
    vec_kernel<<<GridFor(std::max<size_t>(count / width, count % width)), kThreads, 0, stream>>>(
        args...);
  } else {
    scalar_kernel<<<GridFor(count), kThreads, 0, stream>>>(args...);
  }
  return cudaGetLastError();
}

}  // namespace squeeze::gpu::elementwise

#endif  // __CUDACC__
