// Spherical k-means on the GPU, batched over independent problems (the KV heads of a layer), the
// same method as the CPU reference (engine/backend/kmeans.h) with a parallel seeding:
//   * points are L2-normalised once into a bf16 buffer (head sizes up to 128, zero-padded to 64
//     or 128 dims, which changes no dot product);
//   * seeding, k-means|| style: a uniformly drawn first centre, then rounds that each draw
//     ceil(seed_growth x centres so far) new centres by weighted sampling without replacement,
//     weight = squared distance to the nearest centre so far (the k-means++ weight): k = 6,554
//     takes 21 rounds at the default growth 0.5 instead of 6,553 sequential steps. A round
//     scores the points against its new centres only, so the whole seeding costs one
//     assignment pass, and it leaves the assignment to all k seeds: the first Lloyd step;
//   * assignment: the fused tensor-core kernel (kernels/kmeans/kmeans_assign.cuh): bf16 dot
//     products, fp32 accumulation, argmax in registers (ties: the lowest index), no score
//     matrix;
//   * update: cluster sums of the unit points in 64-bit fixed point (integer atomics, so the
//     result does not depend on the order they land in: a batch equals its problems run alone
//     and a run is reproducible), re-normalised in double; an empty cluster, or one whose sum is
//     zero, keeps its centre;
//   * at most `max_iterations` assignment steps; a problem stops by the CPU reference's rule
//     (KMeansLimits: when few enough labels changed; the seeding, the first step, never stops),
//     the others go on; the stored centroid is the mean of the raw points and empty clusters are
//     dropped by CompactClusters, as on the CPU.
// It differs from the reference in seeding draws and in bf16 rounding of the scores (~2^-8 for
// unit vectors), so it is checked for quality: final objective within 1% of the reference on
// clustered data (tests/gpu/kmeans_gpu_test.cc).
//
// Owns its stream, cuBLAS handle and memory: it runs on the registration (indexer) thread
// while the engine thread decodes on the backend's stream. One thread at a time.
#pragma once

#include <cstddef>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/backend/kmeans.h"
#include "kernels/kmeans/kmeans_steps.cuh"

namespace squeeze {

struct CudaKMeansOptions {
  enum class Seeding {
    kParallelPlusPlus,  // k-means|| rounds (above)
    kUniform,           // k distinct points drawn uniformly (Forgy), the first version's seeding
  };
  Seeding seeding = Seeding::kParallelPlusPlus;
  // Each seeding round draws ceil(seed_growth x centres so far) new centres: 1 doubles the set
  // (about log2 k rounds); smaller values take more rounds and come closer to k-means++. In a
  // CPU simulation on clustered data with many more true clusters than k, the first step's
  // objective was 2.3% below k-means++'s at 1, 1.4% at 0.5 and 1.0% at 0.25 (final objectives
  // all within 0.2%).
  double seed_growth = 0.5;
  // A floor under every call's KMeansLimits::min_changed_fraction: a call stops by the larger of
  // the two. 0, the default, leaves the call's value alone.
  double min_changed_fraction = 0.0;
  // Device memory one batch may use; larger RunBatch calls are split into groups of problems.
  size_t max_batch_bytes = size_t{4} << 30;
  // Lloyd steps after the first score only the points whose label the centres' movement could
  // have changed (kmeans_steps.cuh, LaunchKMeansPrune: Hamerly's bounds); the others provably
  // keep theirs, so the labels are the full assignment's (up to scores within 1e-4 of a tie).
  // False scores every point at every step. Off by default: on an H100 (kmeans-bench, one layer
  // of the 8B shape at 128K) the bounds settled only 18% of the points in the later steps, and
  // the layer took 0.132 s against 0.134 s (bench/RESULTS.md).
  bool prune = false;
  // Run the first version instead, head by head: fp32 points, TF32 cuBLAS score matrix,
  // separate argmax, uniform seeding. Kept as the benchmark baseline; also what Run falls back
  // to for head sizes above 128.
  bool cublas_baseline = false;
};

// Wall time of the phases of the last Run / RunBatch / ClusterOnDevice call (seconds; the
// solver synchronises once per iteration, so these are end-to-end times).
struct CudaKMeansStats {
  int problems = 0;
  int max_iterations_run = 0;     // the most assignment steps any problem ran
  double upload_seconds = 0.0;    // host -> device copies (host entry points only)
  double seed_seconds = 0.0;      // normalisation + seeding (= the first assignment step)
  double lloyd_seconds = 0.0;     // the remaining update + assignment steps
  double finish_seconds = 0.0;    // raw means, download, compaction
  double download_seconds = 0.0;  // of which the raw means and the download (batched solver)
  // Over the Lloyd steps of the active problems: points scored by the assignment, of all.
  int64_t points_scored = 0;
  int64_t points_stepped = 0;
};

class CudaKMeans final : public KMeansSolver {
 public:
  explicit CudaKMeans(int device = 0, CudaKMeansOptions options = {});
  ~CudaKMeans() override;

  // On a CUDA error (e.g. out of memory) the problems not yet finished are clustered by the CPU
  // reference instead (from the caller's PRNG state at entry, so they get exactly its result),
  // logged, and `error()` says why.
  KMeansResult Run(const float* points, int n, int d, int k, KMeansLimits limits,
                   std::mt19937_64& rng) override;
  std::vector<KMeansResult> RunBatch(std::span<const float* const> points, int n, int d, int k,
                                     KMeansLimits limits,
                                     std::span<std::mt19937_64* const> rngs) override;

  // The same clustering of points that already live on the device (fp32 or bf16, any strides,
  // e.g. a bf16 KV cache [L][Hkv][S][d] read in place), num_problems == rngs.size(), d <= 128.
  // No CPU fallback: a CUDA error is returned.
  // ClusterOnDevice for the engine's registration (KMeansSolver::DevicePoints); on an error the
  // rngs are restored and nullopt returned (logged), and the caller clusters the host copy.
  std::optional<std::vector<KMeansResult>> RunBatchInPlace(
      const DevicePoints& points, int num_problems, int n, int d, int k, KMeansLimits limits,
      std::span<std::mt19937_64* const> rngs) override;

  absl::StatusOr<std::vector<KMeansResult>> ClusterOnDevice(const gpu::KMeansRawPoints& points,
                                                            int n, int d, int k,
                                                            KMeansLimits limits,
                                                            std::span<std::mt19937_64* const> rngs);

  const std::string& error() const { return error_; }
  const CudaKMeansStats& stats() const { return stats_; }

 private:
  struct Impl;
  // The call's limits with options_.min_changed_fraction applied (the larger fraction).
  KMeansLimits Effective(KMeansLimits limits) const;
  // Clusters problems that sit in `points` on the device; false (error_ set) on a CUDA error.
  // `limits` is already Effective.
  bool ClusterGroup(const gpu::KMeansRawPoints& points, int num_problems, int n, int d, int k,
                    KMeansLimits limits, std::span<std::mt19937_64* const> rngs,
                    std::vector<KMeansResult>* results);
  // The first version, one problem (see CudaKMeansOptions::cublas_baseline); `limits` Effective.
  KMeansResult RunCublas(const float* points, int n, int d, int k, KMeansLimits limits,
                         std::mt19937_64& rng);
  // Problems a group of this shape may hold within max_batch_bytes (>= 1).
  int GroupSize(int num_problems, int n, int d, int k, bool with_upload) const;

  std::unique_ptr<Impl> impl_;
  CudaKMeansOptions options_;
  std::string error_;
  CudaKMeansStats stats_;
};

}  // namespace squeeze
