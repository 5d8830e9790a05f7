#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "kernels/ops/gemv.cuh"

namespace squeeze::gpu {
namespace {

constexpr int kWarps = 8;
constexpr int kUnroll = 8;  // 16-byte weight loads in flight per lane
constexpr size_t kMaxSmem = 96 * 1024;

__device__ __forceinline__ uint4 LoadStreaming(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

__device__ __forceinline__ float Lo(uint32_t w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float Hi(uint32_t w) { return __uint_as_float(w & 0xFFFF0000u); }

__device__ __forceinline__ float Dot8(uint4 a, uint4 b, float acc) {
  acc = fmaf(Lo(a.x), Lo(b.x), acc);
  acc = fmaf(Hi(a.x), Hi(b.x), acc);
  acc = fmaf(Lo(a.y), Lo(b.y), acc);
  acc = fmaf(Hi(a.y), Hi(b.y), acc);
  acc = fmaf(Lo(a.z), Lo(b.z), acc);
  acc = fmaf(Hi(a.z), Hi(b.z), acc);
  acc = fmaf(Lo(a.w), Lo(b.w), acc);
  acc = fmaf(Hi(a.w), Hi(b.w), acc);
  return acc;
}

__device__ __forceinline__ uint32_t Pack(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return reinterpret_cast<const uint32_t&>(v);
}

// Per-row sums of squares of x [M, k] over the CTA, as 1 / rms (RmsNormKernel's formula).
template <int M>
__device__ void InverseRms(const float* __restrict__ x, int k, float eps, float* inv_rms) {
  __shared__ float part[kWarps][M];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  float ss[M];
#pragma unroll
  for (int r = 0; r < M; ++r) {
    ss[r] = 0.0f;
    const float4* xr = reinterpret_cast<const float4*>(x + static_cast<size_t>(r) * k);
    for (int v = threadIdx.x; v < k / 4; v += blockDim.x) {
      const float4 a = xr[v];
      ss[r] += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss[r] += __shfl_xor_sync(0xffffffffu, ss[r], o);
    if (lane == 0) part[warp][r] = ss[r];
  }
  __syncthreads();
  if (threadIdx.x < M) {
    float total = 0.0f;
    for (int w = 0; w < kWarps; ++w) total += part[w][threadIdx.x];
    inv_rms[threadIdx.x] = 1.0f / sqrtf(total / static_cast<float>(k) + eps);
  }
  __syncthreads();
}

__device__ __forceinline__ float Silu(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// Row `row` of the concatenated matrices: its output and its row within that output
// (warp-uniform; compile-time indices into p.out).
__device__ __forceinline__ GemvOutput OutputOfRow(const GemvParams& p, int row, int* local) {
  GemvOutput o = p.out[0];
  *local = row;
#pragma unroll
  for (int j = 1; j < kGemvMaxOutputs; ++j) {
    if (j < p.num_outputs && *local >= o.n) {
      *local -= o.n;
      o = p.out[j];
    }
  }
  return o;
}

// Grid-stride over the concatenated output rows of all matrices, one warp per row; the input
// rows (transformed, rounded to bf16) staged once per CTA in shared memory. (Measured on the
// H200: ~3% faster end to end than reading x through the read-only cache in the loop. Launching
// it as a programmatic dependent of the previous GEMV, with its first weight lines prefetched to
// L2 before griddepcontrol.wait, made decode 2-5% slower: bench/RESULTS.md, whole forward.)
template <int M>
__global__ void __launch_bounds__(kWarps * 32) GemvKernel(const GemvParams p, int total_rows) {
  extern __shared__ uint4 xs[];  // [M][k / 8]
  __shared__ float inv_rms[M];
  const int k = p.k;
  const int vecs = k / 8;
  if (p.input == GemvInput::kRmsNorm) InverseRms<M>(p.x, k, p.eps, inv_rms);
  for (int i = threadIdx.x; i < M * vecs; i += blockDim.x) {
    float4 a = reinterpret_cast<const float4*>(p.x)[2 * i];
    float4 b = reinterpret_cast<const float4*>(p.x)[2 * i + 1];
    if (p.input == GemvInput::kRmsNorm) {
      const float s = inv_rms[i / vecs];
      const int c = i % vecs;
      const float4 wa = reinterpret_cast<const float4*>(p.norm_weight)[2 * c];
      const float4 wb = reinterpret_cast<const float4*>(p.norm_weight)[2 * c + 1];
      a = make_float4(wa.x * (a.x * s), wa.y * (a.y * s), wa.z * (a.z * s), wa.w * (a.w * s));
      b = make_float4(wb.x * (b.x * s), wb.y * (b.y * s), wb.z * (b.z * s), wb.w * (b.w * s));
    } else if (p.input == GemvInput::kSiluMul) {
      const float4 ua = reinterpret_cast<const float4*>(p.x2)[2 * i];
      const float4 ub = reinterpret_cast<const float4*>(p.x2)[2 * i + 1];
      a = make_float4(Silu(a.x, ua.x), Silu(a.y, ua.y), Silu(a.z, ua.z), Silu(a.w, ua.w));
      b = make_float4(Silu(b.x, ub.x), Silu(b.y, ub.y), Silu(b.z, ub.z), Silu(b.w, ub.w));
    }
    xs[i] = make_uint4(Pack(a.x, a.y), Pack(a.z, a.w), Pack(b.x, b.y), Pack(b.z, b.w));
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int row = blockIdx.x * kWarps + warp; row < total_rows; row += gridDim.x * kWarps) {
    int local = 0;
    const GemvOutput o = OutputOfRow(p, row, &local);
    const uint4* wr = reinterpret_cast<const uint4*>(o.w + static_cast<size_t>(local) * k);
    float acc[M];
#pragma unroll
    for (int r = 0; r < M; ++r) acc[r] = 0.0f;
    int c = lane;
    for (; c + 32 * (kUnroll - 1) < vecs; c += 32 * kUnroll) {
      uint4 wv[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) wv[u] = LoadStreaming(wr + c + 32 * u);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
#pragma unroll
        for (int r = 0; r < M; ++r) acc[r] = Dot8(wv[u], xs[r * vecs + c + 32 * u], acc[r]);
      }
    }
    for (; c < vecs; c += 32) {
      const uint4 wv = LoadStreaming(wr + c);
#pragma unroll
      for (int r = 0; r < M; ++r) acc[r] = Dot8(wv, xs[r * vecs + c], acc[r]);
    }
#pragma unroll
    for (int r = 0; r < M; ++r) {
#pragma unroll
      for (int s = 16; s > 0; s >>= 1) acc[r] += __shfl_xor_sync(0xffffffffu, acc[r], s);
    }
    if (lane == 0) {
#pragma unroll
      for (int r = 0; r < M; ++r) {
        float* out = o.y + static_cast<size_t>(r) * o.n + local;
        *out = p.accumulate ? *out + acc[r] : acc[r];
      }
    }
  }
}

template <int M>
cudaError_t Launch(const GemvParams& p, int total_rows, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(M) * p.k * sizeof(bf16);
  // Per instantiation: the opt-in to kMaxSmem of shared memory, the SM count, and the
  // occupancy of the last shared-memory size (decode alternates between a few k).
  static bool configured = false;
  static int sms = 0;
  static size_t last_smem = 0;
  static int blocks_per_sm = 0;
  if (!configured) {
    cudaError_t err = cudaFuncSetAttribute(
        GemvKernel<M>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kMaxSmem));
    if (err != cudaSuccess) return err;
    int device = 0;
    cudaGetDevice(&device);
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    configured = true;
  }
  if (smem != last_smem) {
    cudaError_t err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, GemvKernel<M>,
                                                                    kWarps * 32, smem);
    if (err != cudaSuccess) return err;
    last_smem = smem;
  }
  const int rows_blocks = (total_rows + kWarps - 1) / kWarps;
  const int grid = std::max(1, std::min(rows_blocks, std::max(1, blocks_per_sm) * sms));
  GemvKernel<M><<<grid, kWarps * 32, smem, stream>>>(p, total_rows);
  return cudaGetLastError();
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

bool GemvSupported(int m, int n, int k) {
  return m >= 1 && m <= kGemvMaxRows && n >= 1 && k >= 8 && k % 8 == 0 &&
         static_cast<size_t>(m) * k * sizeof(bf16) <= kMaxSmem;
}

cudaError_t LaunchGemvBf16(const float* x, const bf16* w, float* y, int m, int n, int k,
                           bool accumulate, cudaStream_t stream) {
  GemvParams p;
  p.x = x;
  p.out[0] = {w, y, n};
  p.num_outputs = 1;
  p.m = m;
  p.k = k;
  p.accumulate = accumulate;
  return LaunchGemv(p, stream);
}

cudaError_t LaunchGemv(const GemvParams& p, cudaStream_t stream) {
  if (p.num_outputs < 1 || p.num_outputs > kGemvMaxOutputs || p.x == nullptr || !Aligned16(p.x)) {
    return cudaErrorInvalidValue;
  }
  if (p.input == GemvInput::kRmsNorm && (p.norm_weight == nullptr || !Aligned16(p.norm_weight))) {
    return cudaErrorInvalidValue;
  }
  if (p.input == GemvInput::kSiluMul && (p.x2 == nullptr || !Aligned16(p.x2))) {
    return cudaErrorInvalidValue;
  }
  int64_t total_rows = 0;
  for (int j = 0; j < p.num_outputs; ++j) {
    const GemvOutput& o = p.out[j];
    if (!GemvSupported(p.m, o.n, p.k) || o.w == nullptr || o.y == nullptr || !Aligned16(o.w)) {
      return cudaErrorInvalidValue;
    }
    total_rows += o.n;
  }
  if (total_rows > INT_MAX) return cudaErrorInvalidValue;
  const int rows = static_cast<int>(total_rows);
  switch (p.m) {
    case 1:
      return Launch<1>(p, rows, stream);
    case 2:
      return Launch<2>(p, rows, stream);
    case 3:
      return Launch<3>(p, rows, stream);
    default:
      return Launch<4>(p, rows, stream);
  }
}

}  // namespace squeeze::gpu
