#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "kernels/common/dispatch.cuh"
#include "kernels/common/mma_tile.cuh"
#include "kernels/ops/gemv.cuh"

namespace squeeze::gpu {
namespace {

constexpr int kWarps = 8;
constexpr int kGemvFmaMaxRows = 4;  // the CUDA-core kernel's largest m
constexpr int kUnroll = 8;          // 16-byte weight loads in flight per lane
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
  // Per instantiation: the opt-in to kMaxSmem of shared memory and the occupancy of the last
  // shared-memory size (decode alternates between a few k).
  static bool configured = false;
  static size_t last_smem = 0;
  static int blocks_per_sm = 0;
  if (!configured) {
    cudaError_t err = cudaFuncSetAttribute(
        GemvKernel<M>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kMaxSmem));
    if (err != cudaSuccess) return err;
    configured = true;
  }
  if (smem != last_smem) {
    cudaError_t err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, GemvKernel<M>,
                                                                    kWarps * 32, smem);
    if (err != cudaSuccess) return err;
    last_smem = smem;
  }
  const int rows_blocks = (total_rows + kWarps - 1) / kWarps;
  const int grid = std::max(
      1, std::min(rows_blocks, std::max(1, blocks_per_sm) * detail::MultiprocessorCount()));
  GemvKernel<M><<<grid, kWarps * 32, smem, stream>>>(p, total_rows);
  return cudaGetLastError();
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// ---- tensor-core path ---------------------------------------------------------------------------

constexpr int kMmaWarps = 8;
constexpr int kMmaTileRows = kMmaWarps * 16;  // output features per CTA (16 per warp)
constexpr int kMmaUnroll = 4;                 // 32-wide k chunks whose weights are in flight
constexpr int kMinChunksPerSplit = 8;         // K splits of at least 256 columns

// Row `b` of the bf16 input: in(x) formed and rounded once (one CTA per row).
__global__ void __launch_bounds__(256) GemvPrologueKernel(const GemvParams p, bf16* xb) {
  const int b = blockIdx.x, k = p.k;
  const float* x = p.x + static_cast<size_t>(b) * k;
  float scale = 1.0f;
  if (p.input == GemvInput::kRmsNorm) {
    __shared__ float part[8];
    float ss = 0.0f;
    for (int i = threadIdx.x; i < k; i += blockDim.x) ss += x[i] * x[i];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = ss;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) total += part[w];
    scale = 1.0f / sqrtf(total / static_cast<float>(k) + p.eps);
  }
  const float* x2 = p.input == GemvInput::kSiluMul ? p.x2 + static_cast<size_t>(b) * k : nullptr;
  for (int i = threadIdx.x; i < k; i += blockDim.x) {
    float v = x[i];
    if (p.input == GemvInput::kRmsNorm) {
      v = p.norm_weight[i] * (v * scale);
    } else if (p.input == GemvInput::kSiluMul) {
      v = Silu(v, x2[i]);
    }
    xb[static_cast<size_t>(b) * k + i] = __float2bfloat16_rn(v);
  }
}

// How the products of one launch are cut: row tiles of kMmaTileRows per output (a tile never
// spans two outputs), each tile's k chunks (32 columns) split into `splits` CTAs.
struct MmaPlan {
  int tile_begin[kGemvMaxOutputs + 1] = {};
  int tiles = 0;
  int splits = 1;
  int chunks_per_split = 0;
  size_t xb_bytes = 0;       // bf16 input [m][k]
  size_t partial_bytes = 0;  // fp32 [splits][tiles][m][kMmaTileRows], when splits > 1
};

size_t Align256(size_t x) { return (x + 255) / 256 * 256; }

MmaPlan PlanMma(const GemvParams& p) {
  MmaPlan plan;
  for (int j = 0; j < p.num_outputs; ++j) {
    plan.tile_begin[j] = plan.tiles;
    plan.tiles += (p.out[j].n + kMmaTileRows - 1) / kMmaTileRows;
  }
  for (int j = p.num_outputs; j <= kGemvMaxOutputs; ++j) plan.tile_begin[j] = plan.tiles;
  const int chunks = p.k / 32;
  // About three CTAs per multiprocessor; the split partials (written and read once) kept under
  // an eighth of the weight bytes (splits <= k / (16 m)); at least 256 columns per split.
  const int want = (3 * detail::MultiprocessorCount() + plan.tiles - 1) / plan.tiles;
  int splits = std::min({want, p.k / (16 * p.m), chunks / kMinChunksPerSplit});
  if (plan.tiles > kGemvCounters) splits = 1;
  splits = std::max(splits, 1);
  plan.chunks_per_split = (chunks + splits - 1) / splits;
  plan.splits = (chunks + plan.chunks_per_split - 1) / plan.chunks_per_split;
  plan.xb_bytes = Align256(static_cast<size_t>(p.m) * p.k * sizeof(bf16));
  if (plan.splits > 1) {
    plan.partial_bytes = static_cast<size_t>(plan.splits) * plan.tiles * p.m * kMmaTileRows * 4;
  }
  return plan;
}

// CTA (tile, split): warp w owns output features [16w, 16w + 16) of the tile over the split's
// k chunks. Per 32-column chunk, lane (g, t) loads 16 bytes of weights for rows g and g + 8
// (columns 8t..8t+7) and, per batch tile of 8 rows, 16 bytes of the bf16 input (row g, the same
// columns); the dot product does not care about the order of k, so the 8 columns a lane holds
// are two k16 steps of the MMA fragments (columns 8t + 4s + {0,1} and 8t + 4s + {2,3} of step s
// stand in for fragment columns 2t + {0,1} and 2t + 8 + {0,1}), in A and B alike.
template <int NT>
__global__ void __launch_bounds__(kMmaWarps * 32)
    GemvMmaKernel(const GemvParams p, MmaPlan plan, const bf16* __restrict__ xb,
                  float* __restrict__ partial) {
  const int split = blockIdx.x % plan.splits, tile = blockIdx.x / plan.splits;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  int j = 0;
  GemvOutput out = p.out[0];  // selected without indexing the parameters (no local copy)
#pragma unroll
  for (int o = 1; o < kGemvMaxOutputs; ++o) {
    if (tile >= plan.tile_begin[o]) {
      j = o;
      out = p.out[o];
    }
  }
  const int k = p.k, m = p.m;
  const int tile_row0 = (tile - plan.tile_begin[j]) * kMmaTileRows;
  const int ra = tile_row0 + warp * 16 + g, rb = ra + 8;
  const int chunks = k / 32;
  const int c0 = split * plan.chunks_per_split;
  const int c1 = min(chunks, c0 + plan.chunks_per_split);
  const uint4* wa =
      reinterpret_cast<const uint4*>(out.w + static_cast<size_t>(min(ra, out.n - 1)) * k);
  const uint4* wb =
      reinterpret_cast<const uint4*>(out.w + static_cast<size_t>(min(rb, out.n - 1)) * k);
  const uint4* xr[NT];
  bool xv[NT];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    const int b = nt * 8 + g;
    xv[nt] = b < m;
    xr[nt] = reinterpret_cast<const uint4*>(xb + static_cast<size_t>(xv[nt] ? b : 0) * k);
  }
  float acc[NT][4];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) acc[nt][0] = acc[nt][1] = acc[nt][2] = acc[nt][3] = 0.0f;

  auto products = [&](const uint4& lo, const uint4& hi, int c) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const uint4 xq = xv[nt] ? __ldg(xr[nt] + c * 4 + t) : make_uint4(0u, 0u, 0u, 0u);
      const uint32_t a0[4] = {lo.x, hi.x, lo.y, hi.y};
      const uint32_t a1[4] = {lo.z, hi.z, lo.w, hi.w};
      detail::MmaBf16(acc[nt], a0, xq.x, xq.y);
      detail::MmaBf16(acc[nt], a1, xq.z, xq.w);
    }
  };
  // Rows past the output (a partial last tile) read a valid row; their sums are not stored.
  int c = c0;
  for (; c + kMmaUnroll <= c1; c += kMmaUnroll) {
    uint4 lo[kMmaUnroll], hi[kMmaUnroll];
#pragma unroll
    for (int u = 0; u < kMmaUnroll; ++u) {
      lo[u] = LoadStreaming(wa + (c + u) * 4 + t);
      hi[u] = LoadStreaming(wb + (c + u) * 4 + t);
    }
#pragma unroll
    for (int u = 0; u < kMmaUnroll; ++u) products(lo[u], hi[u], c + u);
  }
  for (; c < c1; ++c) products(LoadStreaming(wa + c * 4 + t), LoadStreaming(wb + c * 4 + t), c);

  // acc[nt]: {row ra: batch 8nt + 2t, 8nt + 2t + 1; row rb: the same batches}.
  auto for_each = [&](auto&& f) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int b = nt * 8 + 2 * t + (e & 1);
        const int local = warp * 16 + g + (e >> 1) * 8;
        if (b < m) f(b, local, acc[nt][e]);
      }
    }
  };
  auto store = [&](int b, int local, float v) {
    const int row = tile_row0 + local;
    if (row >= out.n) return;
    float* y = out.y + static_cast<size_t>(b) * out.n + row;
    *y = p.accumulate ? *y + v : v;
  };
  if (plan.splits == 1) {
    for_each(store);
    return;
  }
  // Split K: every split's sums to the workspace; the tile's last CTA adds them in split order.
  const size_t tile_floats = static_cast<size_t>(m) * kMmaTileRows;
  float* mine = partial + (static_cast<size_t>(split) * plan.tiles + tile) * tile_floats;
  for_each([&](int b, int local, float v) { mine[b * kMmaTileRows + local] = v; });
  __shared__ bool last;
  __syncthreads();
  if (threadIdx.x == 0) {
    last = detail::AtomicAddAcqRel(p.counters + tile, 1u) == static_cast<uint32_t>(plan.splits - 1);
  }
  __syncthreads();
  if (!last) return;
  for (int i = threadIdx.x; i < m * kMmaTileRows; i += blockDim.x) {
    const int b = i / kMmaTileRows, local = i - b * kMmaTileRows;
    if (tile_row0 + local >= out.n) continue;
    float sum = 0.0f;
    for (int s = 0; s < plan.splits; ++s) {
      sum += __ldcg(partial + (static_cast<size_t>(s) * plan.tiles + tile) * tile_floats + i);
    }
    store(b, local, sum);
  }
  if (threadIdx.x == 0) p.counters[tile] = 0u;  // for the next launch
}

template <int NT>
cudaError_t LaunchMma(const GemvParams& p, const MmaPlan& plan, cudaStream_t stream) {
  char* ws = static_cast<char*>(p.workspace);
  bf16* xb = reinterpret_cast<bf16*>(ws);
  float* partial = reinterpret_cast<float*>(ws + plan.xb_bytes);
  GemvPrologueKernel<<<p.m, 256, 0, stream>>>(p, xb);
  GemvMmaKernel<NT><<<plan.tiles * plan.splits, kMmaWarps * 32, 0, stream>>>(p, plan, xb, partial);
  return cudaGetLastError();
}

bool FmaFits(int m, int k) {
  return m <= kGemvFmaMaxRows && static_cast<size_t>(m) * k * sizeof(bf16) <= kMaxSmem;
}

}  // namespace

bool GemvSupported(int m, int n, int k) {
  return m >= 1 && m <= kGemvMaxRows && n >= 1 && k >= 8 && k % 8 == 0 &&
         (FmaFits(m, k) || k % 32 == 0);
}

size_t GemvWorkspaceBytes(const GemvParams& p) {
  if (p.m < 1 || p.k < 32 || p.num_outputs < 1 || FmaFits(p.m, p.k)) return 0;
  const MmaPlan plan = PlanMma(p);
  return plan.xb_bytes + plan.partial_bytes;
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
  if (!FmaFits(p.m, p.k)) {
    if (p.workspace == nullptr || !Aligned16(p.workspace) || p.counters == nullptr) {
      return cudaErrorInvalidValue;
    }
    const MmaPlan plan = PlanMma(p);
    if (static_cast<int64_t>(plan.tiles) * plan.splits > INT_MAX) return cudaErrorInvalidValue;
    switch ((p.m + 7) / 8) {
      case 1:
        return LaunchMma<1>(p, plan, stream);
      case 2:
        return LaunchMma<2>(p, plan, stream);
      case 3:
        return LaunchMma<3>(p, plan, stream);
      case 4:
        return LaunchMma<4>(p, plan, stream);
      case 5:
        return LaunchMma<5>(p, plan, stream);
      case 6:
        return LaunchMma<6>(p, plan, stream);
      case 7:
        return LaunchMma<7>(p, plan, stream);
      default:
        return LaunchMma<8>(p, plan, stream);
    }
  }
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
