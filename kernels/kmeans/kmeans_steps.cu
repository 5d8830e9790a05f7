// Normalisation, seeding, update and reduction steps of the batched GPU k-means (see
// kmeans_steps.cuh). Most kernels give one warp to one row (a point or a centre): lanes walk the
// row's coordinates at stride 32, so a warp's loads and atomics touch consecutive addresses.
// Grids are (row blocks, P): blockIdx.y is the problem.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cub/device/device_radix_sort.cuh>

#include "kernels/common/device.cuh"
#include "kernels/kmeans/kmeans_steps.cuh"

namespace squeeze::gpu {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;

using detail::WarpSum;

__device__ __forceinline__ double WarpSumD(double x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// splitmix64 finaliser: a bijective 64-bit mix, so distinct (seed, round, i) give independent
// looking uniforms.
__device__ __forceinline__ uint64_t Mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

__device__ __forceinline__ float RawAt(const KMeansRawPoints& raw, int64_t at) {
  return raw.f32 != nullptr ? raw.f32[at] : __bfloat162float(raw.b16[at]);
}

dim3 RowGrid(int rows, int num_problems) {
  return dim3(
      static_cast<unsigned>((static_cast<int64_t>(rows) + kWarpsPerBlock - 1) / kWarpsPerBlock),
      static_cast<unsigned>(num_problems));
}

bool ValidShape(int num_problems, int n, int d, int dpad) {
  return num_problems > 0 && num_problems <= 65535 && n > 0 && d > 0 && d <= dpad && dpad % 8 == 0;
}

__global__ void NormalizeKernel(const KMeansRawPoints raw, int n, int d, int dpad, bf16* unit,
                                float* nonzero) {
  const int i = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (i >= n) return;
  const int p = blockIdx.y;
  const int64_t src = p * raw.problem_stride + i * raw.row_stride;
  float sq = 0.0f;
  for (int j = lane; j < d; j += 32) {
    const float x = RawAt(raw, src + j);
    sq += x * x;
  }
  sq = WarpSum(sq);
  const float inv = sq > 0.0f ? 1.0f / sqrtf(sq) : 0.0f;
  const int64_t row = static_cast<int64_t>(p) * n + i;
  bf16* dst = unit + row * dpad;
  for (int j = lane; j < dpad; j += 32) {
    dst[j] = __float2bfloat16_rn(j < d ? RawAt(raw, src + j) * inv : 0.0f);
  }
  if (lane == 0) nonzero[row] = sq > 0.0f ? 1.0f : 0.0f;
}

__global__ void SeedKeysKernel(const KMeansSeedKeysParams p) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.n) return;
  const int prob = blockIdx.y;
  const int64_t at = static_cast<int64_t>(prob) * p.n + i;
  // Squared distance to the nearest centre on the unit sphere; a zero point is at distance 1
  // from every unit centre.
  float w = p.nonzero[at] > 0.0f ? fmaxf(0.0f, 2.0f - 2.0f * p.best[at]) : 1.0f;
  if (w < kKMeansCoincidentDist2) w = 0.0f;
  const uint64_t h = Mix64(
      p.seeds[prob] ^ Mix64((static_cast<uint64_t>(p.round) << 40) ^ static_cast<uint64_t>(i)));
  const float u = static_cast<float>((h >> 40) + 1) * (1.0f / 16777216.0f);  // (0, 1]
  const float key = w > 0.0f ? -logf(u) / w : INFINITY;                      // >= 0 (-logf(1) = +0)
  p.keys[at] = (static_cast<uint64_t>(prob) << 32) | __float_as_uint(key);
  p.values[at] = i;
}

__global__ void GatherKernel(const KMeansGatherParams p) {
  const int j = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (j >= p.count) return;
  const int prob = blockIdx.y;
  const int i = p.index[prob * p.index_stride + j];
  const bf16* src = p.unit + (static_cast<int64_t>(prob) * p.n + i) * p.dpad;
  const int64_t c = static_cast<int64_t>(prob) * p.k + p.first + j;
  for (int e = lane; e < p.dpad; e += 32) {
    const bf16 x = src[e];
    p.centers_bf16[c * p.dpad + e] = x;
    if (e < p.d) p.centers[c * p.d + e] = __bfloat162float(x);
  }
}

__global__ void AccumulateKernel(const KMeansAccumulateParams p) {
  const int prob = blockIdx.y;
  if (p.active != nullptr && p.active[prob] == 0) return;
  const int i = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (i >= p.n) return;
  const int64_t row = static_cast<int64_t>(prob) * p.n + i;
  const int c = p.labels[row];
  const bf16* x = p.unit + row * p.dpad;
  unsigned long long* s = p.sums + (static_cast<int64_t>(prob) * p.k + c) * p.d;
  for (int j = lane; j < p.d; j += 32) {
    // A bf16 times 2^32 is exact in double; its int64 image is exact too (|x| <= 1).
    const long long v =
        __double2ll_rn(static_cast<double>(__bfloat162float(x[j])) * kKMeansFixedOne);
    if (v != 0) atomicAdd(s + j, static_cast<unsigned long long>(v));
  }
  if (lane == 0) atomicAdd(&p.counts[static_cast<int64_t>(prob) * p.k + c], 1);
}

__global__ void UpdateCentersKernel(const KMeansUpdateParams p) {
  const int prob = blockIdx.y;
  if (p.active != nullptr && p.active[prob] == 0) return;
  const int c = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (c >= p.k) return;
  const int64_t row = static_cast<int64_t>(prob) * p.k + c;
  const bool keep = p.counts[row] == 0;  // empty: keep the previous centre
  const unsigned long long* s = p.sums + row * p.d;
  double sq = 0.0;
  for (int j = lane; j < p.d && !keep; j += 32) {
    const double v = static_cast<double>(static_cast<long long>(s[j]));
    sq += v * v;
  }
  sq = WarpSumD(sq);
  // Members that cancel out: any direction is as good, keep it.
  if (keep || !(sq > 0.0)) {
    if (p.drift != nullptr && lane == 0) p.drift[row] = 0.0f;
    return;
  }
  const double inv = 1.0 / sqrt(sq);
  float moved = 0.0f;
  for (int j = lane; j < p.d; j += 32) {
    const float x = static_cast<float>(static_cast<double>(static_cast<long long>(s[j])) * inv);
    const bf16 xb = __float2bfloat16_rn(x);
    if (p.drift != nullptr) {
      const float step = __bfloat162float(xb) - __bfloat162float(p.centers_bf16[row * p.dpad + j]);
      moved += step * step;
    }
    p.centers[row * p.d + j] = x;
    p.centers_bf16[row * p.dpad + j] = xb;
  }
  if (p.drift != nullptr) {
    moved = WarpSum(moved);
    if (lane == 0) {
      const float dist = sqrtf(moved);
      p.drift[row] = dist;
      // Non-negative floats order as their bit patterns.
      atomicMax(reinterpret_cast<int*>(p.max_drift + prob), __float_as_int(dist));
    }
  }
}

// Thread per point; the points left to score are appended a warp at a time.
__global__ void PruneKernel(const KMeansPruneParams p) {
  const int prob = blockIdx.y;
  if (p.active != nullptr && p.active[prob] == 0) return;
  const int i = blockIdx.x * kThreads + threadIdx.x, lane = threadIdx.x & 31;
  const int64_t at = static_cast<int64_t>(prob) * p.n + i;
  bool score = false;
  if (i < p.n) {
    const float lower = p.best[at] - kKMeansPruneNorm * p.drift[prob * int64_t{p.k} + p.labels[at]];
    const float upper = p.second[at] + kKMeansPruneNorm * p.max_drift[prob];
    if (lower - upper > kKMeansPruneMargin) {
      p.best[at] = lower;
      p.second[at] = upper;
    } else {
      score = true;
    }
  }
  const unsigned mask = __ballot_sync(0xffffffffu, score);
  if (mask == 0) return;
  int base = 0;
  if (lane == 0) base = atomicAdd(p.row_count + prob, __popc(mask));
  base = __shfl_sync(0xffffffffu, base, 0);
  if (score) {
    p.rows[static_cast<int64_t>(prob) * p.n + base + __popc(mask & ((1u << lane) - 1u))] = i;
  }
}

__global__ void LabelScoreKernel(const KMeansLabelScoreParams p) {
  const int prob = blockIdx.y;
  if (p.active != nullptr && p.active[prob] == 0) return;
  const int i = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (i >= p.n) return;
  const int64_t row = static_cast<int64_t>(prob) * p.n + i;
  const bf16* x = p.unit + row * p.dpad;
  const bf16* c = p.centers_bf16 + (static_cast<int64_t>(prob) * p.k + p.labels[row]) * p.dpad;
  float dot = 0.0f;
  for (int j = lane; j < p.dpad; j += 32) dot += __bfloat162float(x[j]) * __bfloat162float(c[j]);
  dot = WarpSum(dot);
  if (lane == 0) p.score[row] = dot;
}

// One CTA per problem: thread t sums elements t, t + 256, ... in order, then a fixed tree.
__global__ void ObjectiveKernel(const float* best, int n, const int32_t* active,
                                double* objective) {
  const int prob = blockIdx.x;
  if (active != nullptr && active[prob] == 0) return;
  const float* b = best + static_cast<int64_t>(prob) * n;
  double acc = 0.0;
  for (int i = threadIdx.x; i < n; i += kThreads) acc += b[i];
  acc = WarpSumD(acc);
  __shared__ double part[kWarpsPerBlock];
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double sum = 0.0;
    for (int w = 0; w < kWarpsPerBlock; ++w) sum += part[w];
    objective[prob] = sum;
  }
}

__global__ void RawSumsKernel(const KMeansRawPoints raw, const int32_t* labels, int n, int d, int k,
                              double* sums, int32_t* counts) {
  const int i = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (i >= n) return;
  const int p = blockIdx.y;
  const int c = labels[static_cast<int64_t>(p) * n + i];
  const int64_t src = p * raw.problem_stride + i * raw.row_stride;
  double* s = sums + (static_cast<int64_t>(p) * k + c) * d;
  for (int j = lane; j < d; j += 32) atomicAdd(s + j, static_cast<double>(RawAt(raw, src + j)));
  if (counts != nullptr && lane == 0) atomicAdd(counts + static_cast<int64_t>(p) * k + c, 1);
}

__global__ void RawMeansKernel(const double* sums, const int32_t* counts, int64_t total, int d,
                               float* means) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int32_t count = counts[e / d];
    means[e] = count > 0 ? static_cast<float>(sums[e] / count) : 0.0f;
  }
}

bool ValidRaw(const KMeansRawPoints& raw, int num_problems, int n, int d) {
  if ((raw.f32 == nullptr) == (raw.b16 == nullptr) || raw.row_stride < d ||
      raw.problem_stride < 0) {
    return false;
  }
  return num_problems == 1 || raw.problem_stride >= static_cast<int64_t>(n) * raw.row_stride;
}

// Bits of the composite seeding keys: 32 for the float, then enough for the problem index.
int SeedKeyBits(int num_problems) {
  int bits = 32;
  while ((int64_t{1} << (bits - 32)) < num_problems) ++bits;
  return bits;
}

}  // namespace

cudaError_t LaunchKMeansNormalize(const KMeansRawPoints& raw, int num_problems, int n, int d,
                                  int dpad, bf16* unit, float* nonzero, cudaStream_t stream) {
  if (!ValidShape(num_problems, n, d, dpad) || !ValidRaw(raw, num_problems, n, d) ||
      unit == nullptr || nonzero == nullptr) {
    return cudaErrorInvalidValue;
  }
  NormalizeKernel<<<RowGrid(n, num_problems), kThreads, 0, stream>>>(raw, n, d, dpad, unit,
                                                                     nonzero);
  return cudaGetLastError();
}

cudaError_t LaunchKMeansSeedKeys(const KMeansSeedKeysParams& p, cudaStream_t stream) {
  if (p.num_problems <= 0 || p.num_problems > 65535 || p.n <= 0 || p.best == nullptr ||
      p.nonzero == nullptr || p.seeds == nullptr || p.keys == nullptr || p.values == nullptr) {
    return cudaErrorInvalidValue;
  }
  const dim3 grid(static_cast<unsigned>((p.n + kThreads - 1) / kThreads), p.num_problems);
  SeedKeysKernel<<<grid, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t KMeansSeedSortBytes(int num_problems, int n, size_t* bytes) {
  if (num_problems <= 0 || n <= 0 || static_cast<int64_t>(num_problems) * n > INT32_MAX) {
    return cudaErrorInvalidValue;
  }
  *bytes = 0;
  return cub::DeviceRadixSort::SortPairs(
      nullptr, *bytes, static_cast<const uint64_t*>(nullptr), static_cast<uint64_t*>(nullptr),
      static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), num_problems * n, 0,
      SeedKeyBits(num_problems));
}

cudaError_t LaunchKMeansSeedSort(void* scratch, size_t scratch_bytes, const uint64_t* keys_in,
                                 uint64_t* keys_out, const int32_t* values_in, int32_t* values_out,
                                 int num_problems, int n, cudaStream_t stream) {
  if (num_problems <= 0 || n <= 0 || static_cast<int64_t>(num_problems) * n > INT32_MAX ||
      scratch == nullptr || keys_in == nullptr || keys_out == nullptr || values_in == nullptr ||
      values_out == nullptr) {
    return cudaErrorInvalidValue;
  }
  const cudaError_t err = cub::DeviceRadixSort::SortPairs(scratch, scratch_bytes, keys_in, keys_out,
                                                          values_in, values_out, num_problems * n,
                                                          0, SeedKeyBits(num_problems), stream);
  if (err != cudaSuccess) return err;
  return cudaGetLastError();
}

cudaError_t LaunchKMeansGatherCenters(const KMeansGatherParams& p, cudaStream_t stream) {
  if (!ValidShape(p.num_problems, p.n, p.d, p.dpad) || p.count < 0 || p.first < 0 ||
      p.first + p.count > p.k || p.unit == nullptr || p.index == nullptr || p.centers == nullptr ||
      p.centers_bf16 == nullptr || (p.num_problems > 1 && p.index_stride < p.count)) {
    return cudaErrorInvalidValue;
  }
  if (p.count == 0) return cudaSuccess;
  GatherKernel<<<RowGrid(p.count, p.num_problems), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t LaunchKMeansAccumulate(const KMeansAccumulateParams& p, cudaStream_t stream) {
  if (!ValidShape(p.num_problems, p.n, p.d, p.dpad) || p.k <= 0 || p.unit == nullptr ||
      p.labels == nullptr || p.sums == nullptr || p.counts == nullptr) {
    return cudaErrorInvalidValue;
  }
  AccumulateKernel<<<RowGrid(p.n, p.num_problems), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t LaunchKMeansUpdateCenters(const KMeansUpdateParams& p, cudaStream_t stream) {
  if (!ValidShape(p.num_problems, p.k, p.d, p.dpad) || p.sums == nullptr || p.counts == nullptr ||
      p.centers == nullptr || p.centers_bf16 == nullptr ||
      (p.drift != nullptr && p.max_drift == nullptr)) {
    return cudaErrorInvalidValue;
  }
  UpdateCentersKernel<<<RowGrid(p.k, p.num_problems), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t LaunchKMeansPrune(const KMeansPruneParams& p, cudaStream_t stream) {
  if (p.num_problems <= 0 || p.num_problems > 65535 || p.n <= 0 || p.k <= 0 ||
      p.labels == nullptr || p.drift == nullptr || p.max_drift == nullptr || p.best == nullptr ||
      p.second == nullptr || p.rows == nullptr || p.row_count == nullptr) {
    return cudaErrorInvalidValue;
  }
  const dim3 grid(static_cast<unsigned>((p.n + kThreads - 1) / kThreads), p.num_problems);
  PruneKernel<<<grid, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t LaunchKMeansLabelScore(const KMeansLabelScoreParams& p, cudaStream_t stream) {
  if (p.num_problems <= 0 || p.num_problems > 65535 || p.n <= 0 || p.k <= 0 || p.dpad <= 0 ||
      p.unit == nullptr || p.centers_bf16 == nullptr || p.labels == nullptr || p.score == nullptr) {
    return cudaErrorInvalidValue;
  }
  LabelScoreKernel<<<RowGrid(p.n, p.num_problems), kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

cudaError_t LaunchKMeansObjective(const float* best, int num_problems, int n, const int32_t* active,
                                  double* objective, cudaStream_t stream) {
  if (num_problems <= 0 || n <= 0 || best == nullptr || objective == nullptr) {
    return cudaErrorInvalidValue;
  }
  ObjectiveKernel<<<num_problems, kThreads, 0, stream>>>(best, n, active, objective);
  return cudaGetLastError();
}

cudaError_t LaunchKMeansRawSums(const KMeansRawPoints& raw, const int32_t* labels, int num_problems,
                                int n, int d, int k, double* sums, int32_t* counts,
                                cudaStream_t stream) {
  if (num_problems <= 0 || num_problems > 65535 || n <= 0 || d <= 0 || k <= 0 ||
      !ValidRaw(raw, num_problems, n, d) || labels == nullptr || sums == nullptr) {
    return cudaErrorInvalidValue;
  }
  RawSumsKernel<<<RowGrid(n, num_problems), kThreads, 0, stream>>>(raw, labels, n, d, k, sums,
                                                                   counts);
  return cudaGetLastError();
}

cudaError_t LaunchKMeansRawMeans(const double* sums, const int32_t* counts, int num_problems, int k,
                                 int d, float* means, cudaStream_t stream) {
  if (num_problems <= 0 || k <= 0 || d <= 0 || sums == nullptr || counts == nullptr ||
      means == nullptr) {
    return cudaErrorInvalidValue;
  }
  const int64_t total = static_cast<int64_t>(num_problems) * k * d;
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, 4096);
  RawMeansKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(sums, counts, total, d,
                                                                         means);
  return cudaGetLastError();
}

}  // namespace squeeze::gpu
