// The steps around the fused assignment (kmeans_assign.cuh) of the batched GPU spherical
// k-means (engine/backend/cuda/cuda_kmeans.h): normalisation, k-means|| seeding (sampling keys,
// their sort, the gather of the drawn points), the centre update, the objective and the final
// raw-mean sums. Plain C++ (includable from .cc files); the kernels live in kmeans_steps.cu.
//
// Shapes, for P problems of n points, d dimensions (dpad = 64 or 128 >= d: the padded row
// length the assignment kernel reads) and k centres:
//   unit         bf16  [P][n][dpad]  unit points, dims [d, dpad) zero; a zero input row stays 0
//   nonzero      float [P][n]        1 for a point with a non-zero input row, else 0
//   centers      float [P][k][d]     unit centres (the master copy the update writes)
//   centers_bf16 bf16  [P][k][dpad]  the same, rounded, as the assignment reads them
//   labels       int32 [P][n];  best float [P][n] (kmeans_assign.cuh)
//   sums         int64 [P][k][d]     fixed-point cluster sums of unit points (kKMeansFixedOne
//                                    per unit): integer adds are associative, so the sums, and
//                                    therefore the whole clustering, do not depend on the order
//                                    the atomics land in (a batch equals its problems run alone)
//   counts       int32 [P][k]
// `active` (optional, [P]): steps skip the problems with active[p] == 0 (converged ones).
// The params structs derive from KMeansShape (kmeans_assign.cuh), filled once per batch.
// Launchers validate sizes, never allocate or synchronise, and return the launch status.
//
// CPU reference: each step's host version in tests/gpu/kmeans_gpu_test.cc (KMeansStepsTest), and
// the whole solver against SphericalKMeans (engine/backend/kmeans.h); tested in
// tests/gpu/kmeans_gpu_test.cc (KMeansStepsTest, CudaKMeansTest).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/common/types.cuh"
#include "kernels/kmeans/kmeans_assign.cuh"

namespace squeeze::gpu {

// Fixed-point unit of the cluster sums: 2^32. A sum of n unit-vector coordinates stays below
// n * 2^32 < 2^63 for any int n, and the resolution (2.3e-10) is far below bf16 rounding.
constexpr double kKMeansFixedOne = 4294967296.0;

// Raw input points: coordinate j of point i of problem p is
// data[p * problem_stride + i * row_stride + j]; exactly one of f32 / b16 is set. (The KV
// cache, bf16 [L][Hkv][S][d], is such a view with row_stride d and problem_stride S * d.)
struct KMeansRawPoints {
  const float* f32 = nullptr;
  const bf16* b16 = nullptr;
  int64_t problem_stride = 0;  // elements
  int64_t row_stride = 0;      // elements, >= d
};

// unit[p][i] = bf16(x / |x|) zero-padded to dpad (|x| in fp32; a zero row stays zero);
// nonzero[p][i] = (|x| > 0).
cudaError_t LaunchKMeansNormalize(const KMeansRawPoints& raw, int num_problems, int n, int d,
                                  int dpad, bf16* unit, float* nonzero, cudaStream_t stream);

// k-means|| sampling keys of one seeding round. The weight of point i is its squared distance
// to the nearest centre drawn so far, 2 - 2 best[i] for a unit point (1 for a zero point; 0 below
// kKMeansCoincidentDist2, i.e. within bf16 rounding of a centre). Drawing the points with the
// smallest keys -ln(u_i) / w_i (u_i uniform in (0, 1], from a hash of (seeds[p], round, i)) is
// weighted sampling without replacement (Efraimidis-Spirakis); weight 0 gives key +inf.
// keys[p * n + i] = (p << 32) | float bits of the key (non-negative floats order as their bits),
// values[p * n + i] = i, so one sort of the whole batch orders each problem's points by key.
constexpr float kKMeansCoincidentDist2 = 1.0f / 128.0f;
struct KMeansSeedKeysParams : KMeansShape {  // num_problems, n
  int round = 0;
  const float* best = nullptr;      // [P][n]
  const float* nonzero = nullptr;   // [P][n]
  const uint64_t* seeds = nullptr;  // [P] per-problem random seeds
  uint64_t* keys = nullptr;         // [P * n]
  int32_t* values = nullptr;        // [P * n]
};
cudaError_t LaunchKMeansSeedKeys(const KMeansSeedKeysParams& p, cudaStream_t stream);

// Stable radix sort of the P * n (key, value) pairs of LaunchKMeansSeedKeys (CUB); scratch of
// KMeansSeedSortBytes bytes. Afterwards values_out[p * n + j], j < n, lists problem p's points in
// increasing key order (ties: increasing index).
cudaError_t KMeansSeedSortBytes(int num_problems, int n, size_t* bytes);
cudaError_t LaunchKMeansSeedSort(void* scratch, size_t scratch_bytes, const uint64_t* keys_in,
                                 uint64_t* keys_out, const int32_t* values_in, int32_t* values_out,
                                 int num_problems, int n, cudaStream_t stream);

// centers / centers_bf16 rows [first, first + count) of problem p = unit point
// index[p * index_stride + j], j < count (each in [0, n)).
struct KMeansGatherParams : KMeansShape {  // the whole shape
  const bf16* unit = nullptr;              // [P][n][dpad]
  const int32_t* index = nullptr;          // [P] x index_stride
  int64_t index_stride = 0;
  int first = 0, count = 0;      // first + count <= k
  float* centers = nullptr;      // [P][k][d]
  bf16* centers_bf16 = nullptr;  // [P][k][dpad]
};
cudaError_t LaunchKMeansGatherCenters(const KMeansGatherParams& p, cudaStream_t stream);

// sums[p][labels[p][i]] += fixed(unit[p][i][0..d)), counts[p][labels[p][i]] += 1 for the active
// problems; sums and counts zeroed by the caller.
struct KMeansAccumulateParams : KMeansShape {  // the whole shape
  const bf16* unit = nullptr;                  // [P][n][dpad]
  const int32_t* labels = nullptr;             // [P][n] in [0, k)
  const int32_t* active = nullptr;             // optional [P]
  unsigned long long* sums = nullptr;          // [P][k][d] two's-complement int64
  int32_t* counts = nullptr;                   // [P][k]
};
cudaError_t LaunchKMeansAccumulate(const KMeansAccumulateParams& p, cudaStream_t stream);

// Spherical update of the active problems: centre c = sums[c] / |sums[c]| (in double), written
// to centers and centers_bf16; a centre with no members or a zero sum keeps its position.
// With `drift`: drift[p][c] = |new bf16 row - old bf16 row| (0 for a centre that kept its
// position) and max_drift[p] = the largest of problem p's (max_drift zeroed by the caller).
struct KMeansUpdateParams : KMeansShape {    // num_problems, d, dpad, k
  const unsigned long long* sums = nullptr;  // [P][k][d]
  const int32_t* counts = nullptr;           // [P][k]
  const int32_t* active = nullptr;           // optional [P]
  float* centers = nullptr;                  // [P][k][d]
  bf16* centers_bf16 = nullptr;              // [P][k][dpad]
  float* drift = nullptr;                    // optional [P][k]
  float* max_drift = nullptr;                // [P], with drift
};
cudaError_t LaunchKMeansUpdateCenters(const KMeansUpdateParams& p, cudaStream_t stream);

// The pruning of a Lloyd step's assignment (Hamerly's bounds, for unit vectors): after the
// centres moved, a point's score with its own centre is at least best - |x| drift[label] and its
// score with any other at most second + |x| max_drift (Cauchy-Schwarz on the bf16 rows the
// assignment reads; |x| <= 1 + 2^-9 for a bf16 unit row). When the first bound beats the second
// by more than the fp32 rounding of two 128-term dot products (kKMeansPruneMargin), the label
// provably stays: best and second become those bounds and the point is not scored. The others
// are listed in rows[p][0, row_count[p]) (any order; row_count zeroed by the caller) for the
// gathered assignment (kmeans_assign.cuh), which writes them exact scores again.
// best/second must hold scores or bounds of the labels in `labels` (a kSecond assignment's
// output, or an earlier pruning's).
constexpr float kKMeansPruneNorm = 1.01f;
constexpr float kKMeansPruneMargin = 1e-4f;
struct KMeansPruneParams : KMeansShape {  // num_problems, n, k
  const int32_t* labels = nullptr;        // [P][n]
  const int32_t* active = nullptr;        // optional [P]
  const float* drift = nullptr;           // [P][k]
  const float* max_drift = nullptr;       // [P]
  float* best = nullptr;                  // [P][n] in/out
  float* second = nullptr;                // [P][n] in/out
  int32_t* rows = nullptr;                // [P][n] out
  int32_t* row_count = nullptr;           // [P] out
};
cudaError_t LaunchKMeansPrune(const KMeansPruneParams& p, cudaStream_t stream);

// score[p][i] = unit[p][i] . centers_bf16[p][labels[p][i]] (fp32 sum of the bf16 products) for
// the active problems: the exact scores the objective sums when the pruning left bounds in best.
struct KMeansLabelScoreParams : KMeansShape {  // num_problems, n, k, dpad
  const bf16* unit = nullptr;                  // [P][n][dpad]
  const bf16* centers_bf16 = nullptr;          // [P][k][dpad]
  const int32_t* labels = nullptr;             // [P][n]
  const int32_t* active = nullptr;             // optional [P]
  float* score = nullptr;                      // [P][n]
};
cudaError_t LaunchKMeansLabelScore(const KMeansLabelScoreParams& p, cudaStream_t stream);

// objective[p] = sum over i of best[p][i], in double, in a fixed order (deterministic), for the
// active problems (the others keep their value).
cudaError_t LaunchKMeansObjective(const float* best, int num_problems, int n, const int32_t* active,
                                  double* objective, cudaStream_t stream);

// sums[p][labels[p][i]][j] += raw(p, i, j) in double (atomics; the order of additions, and so the
// last bits, unspecified): the stored centroid is the mean of the raw keys. With counts (optional,
// [P][k]), counts[p][labels[p][i]] += 1 too. sums and counts zeroed first.
cudaError_t LaunchKMeansRawSums(const KMeansRawPoints& raw, const int32_t* labels, int num_problems,
                                int n, int d, int k, double* sums, int32_t* counts,
                                cudaStream_t stream);

// means[p][c][j] = float(sums[p][c][j] / counts[p][c]) (the division in double, as the CPU's
// CompactClusters rounds it), 0 for an empty cluster: the raw centroids, to download at half the
// bytes of the double sums.
cudaError_t LaunchKMeansRawMeans(const double* sums, const int32_t* counts, int num_problems, int k,
                                 int d, float* means, cudaStream_t stream);

}  // namespace squeeze::gpu
