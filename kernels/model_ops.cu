// Element-wise and per-row kernels of the Llama forward (see model_ops.cuh).
//
// Element-wise kernels share one shape: a grid-stride loop over V-wide vectors [0, count / V)
// followed by a scalar loop over the tail, with V = 1 (everything in the tail) when a pointer is
// not aligned for the vector path; both paths compute the same values.
#include <algorithm>
#include <climits>
#include <cmath>

#include "kernels/model_ops.cuh"

namespace squeeze::gpu {
namespace {

constexpr int kThreads = 256;
constexpr size_t kMaxBlocks = 65536;  // element-wise grids stride beyond this
constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

bool Aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// Blocks of kThreads for `work` items, at least 1, at most kMaxBlocks (grid-stride loops).
unsigned GridFor(size_t work) {
  const size_t blocks = (work + kThreads - 1) / kThreads;
  return static_cast<unsigned>(std::clamp<size_t>(blocks, 1, kMaxBlocks));
}

// Threads for one CTA per row of `work` items: a multiple of 32 in [32, max_threads].
int RowThreads(int work, int max_threads) {
  return std::clamp((work + 31) / 32 * 32, 32, max_threads);
}

__device__ __forceinline__ size_t ThreadIndex() {
  return static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ size_t ThreadCount() {
  return static_cast<size_t>(gridDim.x) * blockDim.x;
}

// ---- bf16 packing (exact, bit-level) -----------------------------------------------------------

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

// ---- reductions --------------------------------------------------------------------------------

__device__ __forceinline__ float WarpSum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// Sum over the CTA, returned to every thread. Call at most once per kernel (shared scratch).
__device__ float BlockSum(float x) {
  __shared__ float part[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  x = WarpSum(x);
  if (lane == 0) part[warp] = x;
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  return WarpSum(lane < warps ? part[lane] : 0.0f);
}

// (value, index) order of argmax: larger value first, ties to the lower index.
__device__ __forceinline__ bool Better(float v, int i, float best, int best_i) {
  return v > best || (v == best && i < best_i);
}

__device__ __forceinline__ void WarpArgmax(float* v, int* i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, *v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, *i, o);
    if (Better(ov, oi, *v, *i)) {
      *v = ov;
      *i = oi;
    }
  }
}

// ---- gathers -----------------------------------------------------------------------------------

// Grid (n), one CTA per output row; V = 8 bf16 per uint4 load, or 1.
template <int V>
__global__ void EmbedRowsKernel(const bf16* table, const int32_t* ids, int dim, float* out) {
  const bf16* src = table + static_cast<size_t>(ids[blockIdx.x]) * dim;
  float* dst = out + static_cast<size_t>(blockIdx.x) * dim;
  if constexpr (V == 8) {
    for (int v = threadIdx.x; v < dim / 8; v += blockDim.x) {
      float4 lo, hi;
      Unpack8(reinterpret_cast<const uint4*>(src)[v], &lo, &hi);
      reinterpret_cast<float4*>(dst)[2 * v] = lo;
      reinterpret_cast<float4*>(dst)[2 * v + 1] = hi;
    }
  } else {
    for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = __bfloat162float(src[i]);
  }
}

template <int V>
__global__ void GatherRowsKernel(const float* src, const int32_t* ids, int dim, float* out) {
  const float* s = src + static_cast<size_t>(ids[blockIdx.x]) * dim;
  float* d = out + static_cast<size_t>(blockIdx.x) * dim;
  if constexpr (V == 4) {
    for (int v = threadIdx.x; v < dim / 4; v += blockDim.x) {
      reinterpret_cast<float4*>(d)[v] = reinterpret_cast<const float4*>(s)[v];
    }
  } else {
    for (int i = threadIdx.x; i < dim; i += blockDim.x) d[i] = s[i];
  }
}

// ---- RMSNorm -----------------------------------------------------------------------------------

// Grid (rows). Pass 1 sums squares; after the block reduction (a barrier) pass 2 re-reads x and
// writes y, so out_f32 == x is safe: every read of pass 1 precedes every write.
template <int V>
__global__ void RmsNormKernel(const float* x, const float* weight, float* out_f32, bf16* out_bf16,
                              int dim, float eps) {
  const size_t off = static_cast<size_t>(blockIdx.x) * dim;
  const float* xr = x + off;
  float ss = 0.0f;
  if constexpr (V == 4) {
    for (int v = threadIdx.x; v < dim / 4; v += blockDim.x) {
      const float4 a = reinterpret_cast<const float4*>(xr)[v];
      ss += a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
    }
  } else {
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
  }
  ss = BlockSum(ss);
  const float inv_rms = 1.0f / sqrtf(ss / static_cast<float>(dim) + eps);

  if constexpr (V == 4) {
    for (int v = threadIdx.x; v < dim / 4; v += blockDim.x) {
      const float4 a = reinterpret_cast<const float4*>(xr)[v];
      const float4 w = reinterpret_cast<const float4*>(weight)[v];
      const float4 y = make_float4(w.x * (a.x * inv_rms), w.y * (a.y * inv_rms),
                                   w.z * (a.z * inv_rms), w.w * (a.w * inv_rms));
      if (out_f32 != nullptr) reinterpret_cast<float4*>(out_f32 + off)[v] = y;
      if (out_bf16 != nullptr) reinterpret_cast<uint2*>(out_bf16 + off)[v] = Pack4(y);
    }
  } else {
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
      const float y = weight[i] * (xr[i] * inv_rms);
      if (out_f32 != nullptr) out_f32[off + i] = y;
      if (out_bf16 != nullptr) out_bf16[off + i] = __float2bfloat16_rn(y);
    }
  }
}

// ---- SiLU gate ---------------------------------------------------------------------------------

__device__ __forceinline__ float Silu(float g, float u) { return g / (1.0f + expf(-g)) * u; }

// No __restrict__: out_f32 may be gate or up (each element is read before it is written, by the
// same thread).
template <int V>
__global__ void SiluMulKernel(const float* gate, const float* up, float* out_f32, bf16* out_bf16,
                              size_t count) {
  const size_t nvec = V > 1 ? count / V : 0;  // V == 1: the tail loop does it all
  if constexpr (V == 4) {
    for (size_t v = ThreadIndex(); v < nvec; v += ThreadCount()) {
      const float4 g = reinterpret_cast<const float4*>(gate)[v];
      const float4 u = reinterpret_cast<const float4*>(up)[v];
      const float4 y = make_float4(Silu(g.x, u.x), Silu(g.y, u.y), Silu(g.z, u.z), Silu(g.w, u.w));
      if (out_f32 != nullptr) reinterpret_cast<float4*>(out_f32)[v] = y;
      if (out_bf16 != nullptr) reinterpret_cast<uint2*>(out_bf16)[v] = Pack4(y);
    }
  }
  for (size_t i = nvec * V + ThreadIndex(); i < count; i += ThreadCount()) {
    const float y = Silu(gate[i], up[i]);
    if (out_f32 != nullptr) out_f32[i] = y;
    if (out_bf16 != nullptr) out_bf16[i] = __float2bfloat16_rn(y);
  }
}

// ---- RoPE --------------------------------------------------------------------------------------

constexpr int kRopeMaxHalf = 256;
constexpr int kRopeThreads = 256;

// Grid (n): the CTA of token t computes the d/2 angles once into shared memory, then rotates the
// (q_heads + k_heads) * d/2 pairs of the token, consecutive threads on consecutive dims.
__global__ void __launch_bounds__(kRopeThreads)
    RopeKernel(float* q, int q_heads, float* k, int k_heads, const int32_t* positions, int half,
               const float* inv_freq) {
  __shared__ float cos_s[kRopeMaxHalf], sin_s[kRopeMaxHalf];
  const int t = blockIdx.x;
  const float pos = static_cast<float>(positions[t]);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    sincosf(pos * inv_freq[i], &sin_s[i], &cos_s[i]);
  }
  __syncthreads();
  const int d = 2 * half;
  const int pairs = (q_heads + k_heads) * half;
  for (int j = threadIdx.x; j < pairs; j += blockDim.x) {
    const int h = j / half, i = j - h * half;
    float* row = h < q_heads ? q + (static_cast<size_t>(t) * q_heads + h) * d
                             : k + (static_cast<size_t>(t) * k_heads + (h - q_heads)) * d;
    const float x1 = row[i], x2 = row[i + half], c = cos_s[i], s = sin_s[i];
    // Separately rounded products, as the CPU reference computes them.
    row[i] = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
    row[i + half] = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
  }
}

// ---- KV append ---------------------------------------------------------------------------------

// Flat over the n * Hkv source rows of head_dim / V vectors each; the source is contiguous, the
// destination row of (t, h) is h * stride + t * d.
template <int V>
__global__ void AppendKvKernel(const float* k_new, const float* v_new, int num_kv_heads, int d,
                               bf16* k_dst, bf16* v_dst, size_t stride, size_t total) {
  const int per_row = d / V;
  for (size_t e = ThreadIndex(); e < total; e += ThreadCount()) {
    const size_t row = e / per_row;  // t * Hkv + h
    const int c = static_cast<int>(e - row * per_row) * V;
    const size_t t = row / num_kv_heads;
    const int h = static_cast<int>(row - t * num_kv_heads);
    const size_t src = row * d + c;
    const size_t dst = h * stride + t * d + c;
    if constexpr (V == 4) {
      *reinterpret_cast<uint2*>(k_dst + dst) = Pack4(*reinterpret_cast<const float4*>(k_new + src));
      *reinterpret_cast<uint2*>(v_dst + dst) = Pack4(*reinterpret_cast<const float4*>(v_new + src));
    } else {
      k_dst[dst] = __float2bfloat16_rn(k_new[src]);
      v_dst[dst] = __float2bfloat16_rn(v_new[src]);
    }
  }
}

// ---- dtype conversion --------------------------------------------------------------------------

template <int V>
__global__ void F32ToBf16Kernel(const float* __restrict__ src, bf16* __restrict__ dst,
                                size_t count) {
  const size_t nvec = V > 1 ? count / V : 0;  // V == 1: the tail loop does it all
  if constexpr (V == 8) {
    for (size_t v = ThreadIndex(); v < nvec; v += ThreadCount()) {
      const float4 lo = reinterpret_cast<const float4*>(src)[2 * v];
      const float4 hi = reinterpret_cast<const float4*>(src)[2 * v + 1];
      reinterpret_cast<uint4*>(dst)[v] = Pack8(lo, hi);
    }
  }
  for (size_t i = nvec * V + ThreadIndex(); i < count; i += ThreadCount()) {
    dst[i] = __float2bfloat16_rn(src[i]);
  }
}

template <int V>
__global__ void Bf16ToF32Kernel(const bf16* __restrict__ src, float* __restrict__ dst,
                                size_t count) {
  const size_t nvec = V > 1 ? count / V : 0;  // V == 1: the tail loop does it all
  if constexpr (V == 8) {
    for (size_t v = ThreadIndex(); v < nvec; v += ThreadCount()) {
      float4 lo, hi;
      Unpack8(reinterpret_cast<const uint4*>(src)[v], &lo, &hi);
      reinterpret_cast<float4*>(dst)[2 * v] = lo;
      reinterpret_cast<float4*>(dst)[2 * v + 1] = hi;
    }
  }
  for (size_t i = nvec * V + ThreadIndex(); i < count; i += ThreadCount()) {
    dst[i] = __bfloat162float(src[i]);
  }
}

// ---- attention merge ---------------------------------------------------------------------------

constexpr int kMergeWarps = 4;

// One warp per row. Every lane reads lse_a[r] before lane 0 overwrites it (__syncwarp orders it).
template <int V>
__global__ void __launch_bounds__(kMergeWarps * 32)
    MergeAttentionKernel(float* out, float* lse_a, const float* other, const float* lse_b, int rows,
                         int d) {
  const int r = blockIdx.x * kMergeWarps + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (r >= rows) return;
  const float la = lse_a[r], lb = lse_b[r];
  __syncwarp();
  if (lb == -INFINITY) return;
  float* oa = out + static_cast<size_t>(r) * d;
  const float* ob = other + static_cast<size_t>(r) * d;
  if (la == -INFINITY) {
    for (int i = lane; i < d; i += 32) oa[i] = ob[i];
    if (lane == 0) lse_a[r] = lb;
    return;
  }
  const float mx = fmaxf(la, lb);
  const float wa = expf(la - mx), wb = expf(lb - mx);
  const float inv = 1.0f / (wa + wb);
  // Separately rounded, as the CPU reference: (wa * a + wb * b) * inv.
  auto mix = [&](float a, float b) {
    return __fmul_rn(__fadd_rn(__fmul_rn(wa, a), __fmul_rn(wb, b)), inv);
  };
  if constexpr (V == 4) {
    for (int v = lane; v < d / 4; v += 32) {
      float4 a = reinterpret_cast<const float4*>(oa)[v];
      const float4 b = reinterpret_cast<const float4*>(ob)[v];
      a = make_float4(mix(a.x, b.x), mix(a.y, b.y), mix(a.z, b.z), mix(a.w, b.w));
      reinterpret_cast<float4*>(oa)[v] = a;
    }
  } else {
    for (int i = lane; i < d; i += 32) oa[i] = mix(oa[i], ob[i]);
  }
  if (lane == 0) lse_a[r] = mx + logf(wa + wb);
}

// ---- argmax ------------------------------------------------------------------------------------

constexpr int kArgmaxThreads = 1024;

// Grid (rows). Each thread scans increasing indices, so a strict '>' keeps its lowest index; the
// first candidate is taken whatever its value (a row of -inf yields its lowest index).
template <int V>
__global__ void __launch_bounds__(kArgmaxThreads)
    ArgmaxKernel(const float* logits, int vocab, int32_t* ids) {
  __shared__ float warp_v[kArgmaxThreads / 32];
  __shared__ int warp_i[kArgmaxThreads / 32];
  const float* row = logits + static_cast<size_t>(blockIdx.x) * vocab;
  float best = -INFINITY;
  int best_i = INT_MAX;
  auto take = [&](float v, int i) {
    if (v > best || best_i == INT_MAX) {
      best = v;
      best_i = i;
    }
  };
  if constexpr (V == 4) {
    for (int v = threadIdx.x; v < vocab / 4; v += blockDim.x) {
      const float4 a = reinterpret_cast<const float4*>(row)[v];
      take(a.x, 4 * v);
      take(a.y, 4 * v + 1);
      take(a.z, 4 * v + 2);
      take(a.w, 4 * v + 3);
    }
  }
  // Tail (all of the row for V == 1): indices above every vector index, still increasing.
  for (int i = (V > 1 ? vocab / V * V : 0) + threadIdx.x; i < vocab; i += blockDim.x) {
    take(row[i], i);
  }

  WarpArgmax(&best, &best_i);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) {
    warp_v[warp] = best;
    warp_i[warp] = best_i;
  }
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x >> 5;
    best = lane < warps ? warp_v[lane] : -INFINITY;
    best_i = lane < warps ? warp_i[lane] : INT_MAX;
    WarpArgmax(&best, &best_i);
    if (lane == 0) ids[blockIdx.x] = best_i;
  }
}

// ---- random fill -------------------------------------------------------------------------------

__host__ __device__ __forceinline__ uint64_t SplitMix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Box-Muller pair j of the stream keyed by key = SplitMix64(seed): elements 2j and 2j + 1.
__host__ __device__ __forceinline__ void NormalPair(uint64_t key, uint64_t j, float* z0,
                                                    float* z1) {
  const uint64_t bits = SplitMix64(key + (j + 1) * kGolden);
  const float u1 = static_cast<float>((bits >> 40) + 1) * 0x1p-24f;          // (0, 1]
  const float u2 = static_cast<float>((bits >> 16) & 0xFFFFFFu) * 0x1p-24f;  // [0, 1)
  const float r = sqrtf(-2.0f * logf(u1));
  const float a = 6.28318530717958647692f * u2;
  *z0 = r * cosf(a);
  *z1 = r * sinf(a);
}

__device__ __forceinline__ float NormalAt(uint64_t key, size_t i) {
  float z0, z1;
  NormalPair(key, i >> 1, &z0, &z1);
  return (i & 1) ? z1 : z0;
}

// V = 4 floats (two pairs) per vector.
template <int V>
__global__ void FillRandomF32Kernel(float* dst, size_t count, uint64_t key, float mean,
                                    float stddev) {
  const size_t nvec = V > 1 ? count / V : 0;  // V == 1: the tail loop does it all
  if constexpr (V == 4) {
    for (size_t v = ThreadIndex(); v < nvec; v += ThreadCount()) {
      float4 z;
      NormalPair(key, 2 * v, &z.x, &z.y);
      NormalPair(key, 2 * v + 1, &z.z, &z.w);
      reinterpret_cast<float4*>(dst)[v] =
          make_float4(fmaf(stddev, z.x, mean), fmaf(stddev, z.y, mean), fmaf(stddev, z.z, mean),
                      fmaf(stddev, z.w, mean));
    }
  }
  for (size_t i = nvec * V + ThreadIndex(); i < count; i += ThreadCount()) {
    dst[i] = fmaf(stddev, NormalAt(key, i), mean);
  }
}

// V = 8 bf16 (four pairs) per vector.
template <int V>
__global__ void FillRandomBf16Kernel(bf16* dst, size_t count, uint64_t key, float stddev) {
  const size_t nvec = V > 1 ? count / V : 0;  // V == 1: the tail loop does it all
  if constexpr (V == 8) {
    for (size_t v = ThreadIndex(); v < nvec; v += ThreadCount()) {
      float4 lo, hi;
      NormalPair(key, 4 * v, &lo.x, &lo.y);
      NormalPair(key, 4 * v + 1, &lo.z, &lo.w);
      NormalPair(key, 4 * v + 2, &hi.x, &hi.y);
      NormalPair(key, 4 * v + 3, &hi.z, &hi.w);
      lo = make_float4(stddev * lo.x, stddev * lo.y, stddev * lo.z, stddev * lo.w);
      hi = make_float4(stddev * hi.x, stddev * hi.y, stddev * hi.z, stddev * hi.w);
      reinterpret_cast<uint4*>(dst)[v] = Pack8(lo, hi);
    }
  }
  for (size_t i = nvec * V + ThreadIndex(); i < count; i += ThreadCount()) {
    dst[i] = __float2bfloat16_rn(stddev * NormalAt(key, i));
  }
}

// Element-wise launch: the vector kernel when `vec` holds, else the scalar one.
template <class VecKernel, class ScalarKernel, class... Args>
cudaError_t LaunchElementwise(bool vec, int width, size_t count, VecKernel vec_kernel,
                              ScalarKernel scalar_kernel, cudaStream_t stream, Args... args) {
  if (vec) {
    vec_kernel<<<GridFor(std::max<size_t>(count / width, count % width)), kThreads, 0, stream>>>(
        args...);
  } else {
    scalar_kernel<<<GridFor(count), kThreads, 0, stream>>>(args...);
  }
  return cudaGetLastError();
}

}  // namespace

// ---- launchers ---------------------------------------------------------------------------------

cudaError_t LaunchEmbedRows(const bf16* table, const int32_t* ids, int n, int dim, float* out,
                            cudaStream_t stream) {
  if (n < 0 || dim <= 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (table == nullptr || ids == nullptr || out == nullptr) return cudaErrorInvalidValue;
  if (dim % 8 == 0 && Aligned(table, 16) && Aligned(out, 16)) {
    EmbedRowsKernel<8><<<n, RowThreads(dim / 8, kThreads), 0, stream>>>(table, ids, dim, out);
  } else {
    EmbedRowsKernel<1><<<n, RowThreads(dim, kThreads), 0, stream>>>(table, ids, dim, out);
  }
  return cudaGetLastError();
}

cudaError_t LaunchGatherRowsF32(const float* src, const int32_t* ids, int n, int dim, float* out,
                                cudaStream_t stream) {
  if (n < 0 || dim <= 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  if (src == nullptr || ids == nullptr || out == nullptr) return cudaErrorInvalidValue;
  if (dim % 4 == 0 && Aligned(src, 16) && Aligned(out, 16)) {
    GatherRowsKernel<4><<<n, RowThreads(dim / 4, kThreads), 0, stream>>>(src, ids, dim, out);
  } else {
    GatherRowsKernel<1><<<n, RowThreads(dim, kThreads), 0, stream>>>(src, ids, dim, out);
  }
  return cudaGetLastError();
}

cudaError_t LaunchRmsNorm(const float* x, const float* weight, float* out_f32, bf16* out_bf16,
                          int rows, int dim, float eps, cudaStream_t stream) {
  if (rows < 0 || dim <= 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  if (x == nullptr || weight == nullptr || (out_f32 == nullptr && out_bf16 == nullptr)) {
    return cudaErrorInvalidValue;
  }
  const bool vec = dim % 4 == 0 && Aligned(x, 16) && Aligned(weight, 16) && Aligned(out_f32, 16) &&
                   Aligned(out_bf16, 8);
  if (vec) {
    RmsNormKernel<4>
        <<<rows, RowThreads(dim / 4, 512), 0, stream>>>(x, weight, out_f32, out_bf16, dim, eps);
  } else {
    RmsNormKernel<1>
        <<<rows, RowThreads(dim, 512), 0, stream>>>(x, weight, out_f32, out_bf16, dim, eps);
  }
  return cudaGetLastError();
}

cudaError_t LaunchSiluMul(const float* gate, const float* up, float* out_f32, bf16* out_bf16,
                          size_t count, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  if (gate == nullptr || up == nullptr || (out_f32 == nullptr && out_bf16 == nullptr)) {
    return cudaErrorInvalidValue;
  }
  const bool vec =
      Aligned(gate, 16) && Aligned(up, 16) && Aligned(out_f32, 16) && Aligned(out_bf16, 8);
  return LaunchElementwise(vec, 4, count, SiluMulKernel<4>, SiluMulKernel<1>, stream, gate, up,
                           out_f32, out_bf16, count);
}

cudaError_t LaunchRopeQK(float* q, int q_heads, float* k, int k_heads, const int32_t* positions,
                         int n, int head_dim, const float* inv_freq, cudaStream_t stream) {
  if (k == nullptr) k_heads = 0;
  if (n < 0 || q_heads <= 0 || (k != nullptr && k_heads <= 0) || head_dim <= 0 ||
      head_dim % 2 != 0 || head_dim / 2 > kRopeMaxHalf ||
      (int64_t{q_heads} + k_heads) * (head_dim / 2) > INT_MAX) {
    return cudaErrorInvalidValue;
  }
  if (n == 0) return cudaSuccess;
  if (q == nullptr || positions == nullptr || inv_freq == nullptr) return cudaErrorInvalidValue;
  RopeKernel<<<n, kRopeThreads, 0, stream>>>(q, q_heads, k, k_heads, positions, head_dim / 2,
                                             inv_freq);
  return cudaGetLastError();
}

cudaError_t LaunchRope(float* x, const int32_t* positions, int n, int heads, int head_dim,
                       const float* inv_freq, cudaStream_t stream) {
  return LaunchRopeQK(x, heads, nullptr, 0, positions, n, head_dim, inv_freq, stream);
}

cudaError_t LaunchAppendKv(const float* k_new, const float* v_new, int n, int num_kv_heads,
                           int head_dim, bf16* k_dst, bf16* v_dst, size_t dst_head_stride,
                           cudaStream_t stream) {
  if (n < 0 || num_kv_heads <= 0 || head_dim <= 0 ||
      (num_kv_heads > 1 && dst_head_stride < static_cast<size_t>(n) * head_dim)) {
    return cudaErrorInvalidValue;
  }
  if (n == 0) return cudaSuccess;
  if (k_new == nullptr || v_new == nullptr || k_dst == nullptr || v_dst == nullptr) {
    return cudaErrorInvalidValue;
  }
  const size_t elems = static_cast<size_t>(n) * num_kv_heads * head_dim;
  const bool vec = head_dim % 4 == 0 && dst_head_stride % 4 == 0 && Aligned(k_new, 16) &&
                   Aligned(v_new, 16) && Aligned(k_dst, 8) && Aligned(v_dst, 8);
  if (vec) {
    AppendKvKernel<4><<<GridFor(elems / 4), kThreads, 0, stream>>>(
        k_new, v_new, num_kv_heads, head_dim, k_dst, v_dst, dst_head_stride, elems / 4);
  } else {
    AppendKvKernel<1><<<GridFor(elems), kThreads, 0, stream>>>(
        k_new, v_new, num_kv_heads, head_dim, k_dst, v_dst, dst_head_stride, elems);
  }
  return cudaGetLastError();
}

cudaError_t LaunchF32ToBf16(const float* src, bf16* dst, size_t count, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  if (src == nullptr || dst == nullptr) return cudaErrorInvalidValue;
  return LaunchElementwise(Aligned(src, 16) && Aligned(dst, 16), 8, count, F32ToBf16Kernel<8>,
                           F32ToBf16Kernel<1>, stream, src, dst, count);
}

cudaError_t LaunchBf16ToF32(const bf16* src, float* dst, size_t count, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  if (src == nullptr || dst == nullptr) return cudaErrorInvalidValue;
  return LaunchElementwise(Aligned(src, 16) && Aligned(dst, 16), 8, count, Bf16ToF32Kernel<8>,
                           Bf16ToF32Kernel<1>, stream, src, dst, count);
}

cudaError_t LaunchMergeAttention(float* out, float* lse_a, const float* other, const float* lse_b,
                                 int rows, int head_dim, cudaStream_t stream) {
  if (rows < 0 || head_dim <= 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  if (out == nullptr || lse_a == nullptr || other == nullptr || lse_b == nullptr) {
    return cudaErrorInvalidValue;
  }
  const unsigned blocks = (rows + kMergeWarps - 1) / kMergeWarps;
  if (head_dim % 4 == 0 && Aligned(out, 16) && Aligned(other, 16)) {
    MergeAttentionKernel<4>
        <<<blocks, kMergeWarps * 32, 0, stream>>>(out, lse_a, other, lse_b, rows, head_dim);
  } else {
    MergeAttentionKernel<1>
        <<<blocks, kMergeWarps * 32, 0, stream>>>(out, lse_a, other, lse_b, rows, head_dim);
  }
  return cudaGetLastError();
}

cudaError_t LaunchArgmax(const float* logits, int rows, int vocab, int32_t* ids,
                         cudaStream_t stream) {
  if (rows < 0 || vocab <= 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  if (logits == nullptr || ids == nullptr) return cudaErrorInvalidValue;
  if (vocab % 4 == 0 && Aligned(logits, 16)) {
    ArgmaxKernel<4><<<rows, kArgmaxThreads, 0, stream>>>(logits, vocab, ids);
  } else {
    ArgmaxKernel<1><<<rows, kArgmaxThreads, 0, stream>>>(logits, vocab, ids);
  }
  return cudaGetLastError();
}

cudaError_t LaunchFillRandomBf16(bf16* dst, size_t count, uint64_t seed, float stddev,
                                 cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  if (dst == nullptr) return cudaErrorInvalidValue;
  return LaunchElementwise(Aligned(dst, 16), 8, count, FillRandomBf16Kernel<8>,
                           FillRandomBf16Kernel<1>, stream, dst, count, SplitMix64(seed), stddev);
}

cudaError_t LaunchFillRandomF32(float* dst, size_t count, uint64_t seed, float mean, float stddev,
                                cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  if (dst == nullptr) return cudaErrorInvalidValue;
  return LaunchElementwise(Aligned(dst, 16), 4, count, FillRandomF32Kernel<4>,
                           FillRandomF32Kernel<1>, stream, dst, count, SplitMix64(seed), mean,
                           stddev);
}

float RandomNormalAt(uint64_t seed, uint64_t index) {
  float z0, z1;
  NormalPair(SplitMix64(seed), index >> 1, &z0, &z1);
  return (index & 1) ? z1 : z0;
}

}  // namespace squeeze::gpu
