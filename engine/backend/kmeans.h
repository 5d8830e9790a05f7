// Spherical k-means (cosine geometry) used to cluster the fixed-context keys of one
// (layer, KV head), and the fine centroids for the hierarchical level. CPU reference: the CUDA
// k-means is checked against this.
//
// Method (DESIGN §1.1 item 3, PAPER_NOTES §3.2):
//   * points are L2-normalised first (a zero vector stays zero);
//   * k-means++ initialisation: the first centre is a uniformly drawn point, every next one a
//     point drawn with probability proportional to its squared Euclidean distance to the nearest
//     chosen centre (on the unit sphere: 2 - 2 cos). Randomness comes only from the caller's
//     std::mt19937_64 through UniformDouble (no std distributions: those are
//     implementation-defined), so a seed gives the same clustering on every platform. Points
//     at a squared distance below 1e-5 from a chosen centre count as on it (BLAS rounding
//     differs between CPUs), and seeding stops early when every point is on a chosen centre,
//     so duplicate points never get duplicate centres;
//   * assignment: argmax over centres of the dot product with the *unit* centre (ties: the
//     lowest centre index);
//   * update: mean of the assigned unit points, re-normalised to unit length (spherical k-means,
//     Dhillon & Modha). This differs from cuML, which keeps the un-normalised mean and assigns by
//     Euclidean distance; re-normalising makes the assignment exactly "highest cosine" and makes
//     the objective below provably non-decreasing. A centre whose cluster is empty, or whose
//     mean is the zero vector, keeps its previous position;
//   * at most `max_iterations` assignment steps; stop early after a step that changed few enough
//     labels (KMeansLimits below: by default, none at all).
// Output clusters are compacted: empty clusters are dropped (never returned as zero vectors)
// and the survivors keep their relative order, so labels are in [0, num_clusters).
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <vector>

namespace squeeze {

// A double uniform in [0, 1) from the top 53 bits of one mt19937_64 draw.
double UniformDouble(std::mt19937_64& rng);

// When a k-means stops (every implementation applies exactly this rule, so CPU and GPU agree).
// An assignment step's "changed" count is the number of the problem's n points whose label after
// the step differs from their label before it; the first step, from no labels, changes all n and
// never stops. A problem stops after `max_iterations` steps, or earlier after a step whose
// changed count is <= StopChanged(n) = floor(min_changed_fraction x n), and then reports
// converged = true (the labels are still the argmax over the unit centres returned; what an early
// stop skips is the centre updates that would have moved the last few points). 0, the default, is
// the exact rule: stop when no label changes. E.g. 0.005 stops a 128K-key head once <= 655 keys
// move (measured on real keys: after ~10 of 25 steps, the objective within 0.1% of the converged
// one).
struct KMeansLimits {
  // Not explicit: an iteration count alone is the exact rule (callers that pass an int).
  KMeansLimits(int iterations)  // NOLINT(google-explicit-constructor)
      : max_iterations(iterations) {}
  KMeansLimits(int iterations, double changed_fraction)
      : max_iterations(iterations), min_changed_fraction(changed_fraction) {}

  int max_iterations;                 // >= 1
  double min_changed_fraction = 0.0;  // in [0, 1) (clamped to [0, 1]; NaN counts as 0)

  // The largest changed count at which a step of an n-point problem stops.
  int64_t StopChanged(int n) const;
};

struct KMeansResult {
  int num_clusters = 0;             // C: non-empty clusters, <= the k requested
  int dim = 0;                      // d
  std::vector<int32_t> labels;      // [n] cluster of each point, in [0, C)
  std::vector<int32_t> sizes;       // [C] points per cluster (all >= 1)
  std::vector<float> centroids;     // [C][d] mean of the RAW (un-normalised) member points
  std::vector<float> unit_centers;  // [C][d] unit centres of the last assignment step
  // objective[i] = sum over points of dot(unit point, unit centre of its cluster) after
  // assignment step i (i.e. the sum of cosine similarities). Non-decreasing in i.
  std::vector<double> objective;
  int iterations = 0;      // assignment steps run (= objective.size())
  bool converged = false;  // the last assignment step met the stop rule (KMeansLimits)
};

// Clusters the n rows of `points` ([n][d], row-major, raw vectors) into at most k clusters.
// Preconditions (checked by callers, which own the error messages): n >= 1, d >= 1,
// 1 <= k <= n, limits.max_iterations >= 1. Uses cblas_sgemm for the point x centre dot products.
KMeansResult SphericalKMeans(const float* points, int n, int d, int k, KMeansLimits limits,
                             std::mt19937_64& rng);

// The last step of every k-means here: drops the empty clusters of a finished clustering of
// n = labels.size() points into k (the survivors keep their order) and fills result's labels,
// sizes, unit centres and centroids (raw_sums [k][d] / member count).
//   labels: [n] in [0, k);  unit_centers: [k][d];  raw_sums: [k][d] sums of the raw members.
void CompactClusters(std::span<const int32_t> labels, int k, int d,
                     std::span<const float> unit_centers, std::span<const double> raw_sums,
                     KMeansResult* result);
// The same from centroids already divided (the GPU's): raw_means [k][d] =
// float(raw_sums / member count), any value for an empty cluster.
void CompactClusters(std::span<const int32_t> labels, int k, int d,
                     std::span<const float> unit_centers, std::span<const float> raw_means,
                     KMeansResult* result);

// Another implementation of the same clustering (the CUDA k-means,
// engine/backend/cuda/cuda_kmeans.h): same preconditions and result fields; it may seed
// differently and round differently, so its result is checked for quality (objective) against
// SphericalKMeans rather than for identity.
class KMeansSolver {
 public:
  virtual ~KMeansSolver() = default;
  virtual KMeansResult Run(const float* points, int n, int d, int k, KMeansLimits limits,
                           std::mt19937_64& rng) = 0;
  // Clusters several independent point sets of one shape (e.g. the KV heads of one layer):
  // result i is what Run(points[i], n, d, k, limits, *rngs[i]) returns, and rngs[i] advances
  // as that call would advance it (each problem stops on its own). points.size() ==
  // rngs.size(). The default runs them one by one; a GPU solver batches them into the same
  // kernel launches.
  virtual std::vector<KMeansResult> RunBatch(std::span<const float* const> points, int n, int d,
                                             int k, KMeansLimits limits,
                                             std::span<std::mt19937_64* const> rngs);

  // Point sets that already live in the solver's device memory (the prefill's KV cache): set p's
  // row i at element p * problem_stride + i * row_stride of `data`, bf16 or fp32.
  struct DevicePoints {
    const void* data = nullptr;
    bool bf16 = true;
    int64_t problem_stride = 0;  // elements
    int64_t row_stride = 0;      // elements, >= d
  };
  // RunBatch on such points, read in place (no host copy, no upload). nullopt when this solver
  // cannot (the default) or failed; rngs are then left as they were, for a RunBatch on the host
  // copy of the same points.
  virtual std::optional<std::vector<KMeansResult>> RunBatchInPlace(
      const DevicePoints& /*points*/, int /*num_problems*/, int /*n*/, int /*d*/, int /*k*/,
      KMeansLimits /*limits*/, std::span<std::mt19937_64* const> /*rngs*/) {
    return std::nullopt;
  }
};

}  // namespace squeeze
