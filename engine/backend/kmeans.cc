#include "engine/backend/kmeans.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

namespace squeeze {
namespace {

// Rows per sgemm in the assignment step: bounds the [rows][k] dot-product scratch (2048 x 800
// floats = 6.5 MB) while keeping the GEMM large enough to run at full speed.
constexpr int kAssignRowBlock = 2048;

// unit[i] = points[i] / |points[i]| (a zero row stays zero); norm2[i] = |unit[i]|^2 in {0, 1}.
void NormalizeRows(const float* points, int n, int d, std::vector<float>* unit,
                   std::vector<float>* norm2) {
  unit->resize(static_cast<size_t>(n) * d);
  norm2->resize(n);
  for (int i = 0; i < n; ++i) {
    const float* x = points + static_cast<size_t>(i) * d;
    float* u = unit->data() + static_cast<size_t>(i) * d;
    double sq = 0.0;
    for (int j = 0; j < d; ++j) sq += static_cast<double>(x[j]) * x[j];
    if (sq > 0.0) {
      const double inv = 1.0 / std::sqrt(sq);
      double unit_sq = 0.0;
      for (int j = 0; j < d; ++j) {
        u[j] = static_cast<float>(x[j] * inv);
        unit_sq += static_cast<double>(u[j]) * u[j];
      }
      (*norm2)[i] = static_cast<float>(unit_sq);
    } else {
      std::fill(u, u + d, 0.0f);
      (*norm2)[i] = 0.0f;
    }
  }
}

// Squared distances between unit rows below this count as zero (the same direction): the
// sgemv below rounds differently on different CPUs (OpenBLAS picks its kernels at run time), so
// identical points can come out a few ulps apart. 1e-5 is 2 - 2 cos for an angle of 0.0032 rad,
// far above the rounding of a d <= 256 float dot product of unit vectors and far below any
// distance that matters for clustering keys.
constexpr double kSameDirection2 = 1e-5;

// k-means++ seeding on the unit rows. centers: [k][d], filled with copies of chosen unit rows.
// dist2[i] = squared distance of point i to its nearest chosen centre; one sgemv per centre.
// Returns the number of centres seeded: fewer than k when every point already lies on a chosen
// centre (duplicate points), so that no two centres share a direction.
int SeedPlusPlus(const float* unit, const float* norm2, int n, int d, int k, std::mt19937_64& rng,
                 float* centers) {
  std::vector<double> dist2(n, std::numeric_limits<double>::infinity());
  std::vector<float> dots(n);
  int chosen = std::min(n - 1, static_cast<int>(UniformDouble(rng) * n));
  double total = 0.0;  // sum of dist2
  for (int c = 0; c < k; ++c) {
    if (c > 0) {
      // Draw the next centre with probability dist2[i] / sum(dist2).
      if (total > 0.0) {
        const double target = UniformDouble(rng) * total;
        double cum = 0.0;
        chosen = -1;
        int last_positive = 0;
        for (int i = 0; i < n; ++i) {
          if (dist2[i] <= 0.0) continue;
          last_positive = i;
          cum += dist2[i];
          if (cum > target) {
            chosen = i;
            break;
          }
        }
        if (chosen < 0) chosen = last_positive;  // rounding at the top end of the sum
      } else {
        // Every point lies on a chosen centre: more centres would only duplicate them, and
        // which duplicate a point joins would then depend on BLAS rounding.
        return c;
      }
    }
    float* center = centers + static_cast<size_t>(c) * d;
    std::memcpy(center, unit + static_cast<size_t>(chosen) * d, sizeof(float) * d);
    if (c + 1 == k) break;
    // dist2[i] = min(dist2[i], |u_i - center|^2) = min(., |u_i|^2 + |center|^2 - 2 u_i.center).
    cblas_sgemv(CblasRowMajor, CblasNoTrans, n, d, 1.0f, unit, d, center, 1, 0.0f, dots.data(), 1);
    const double center_norm2 = norm2[chosen];
    total = 0.0;
    for (int i = 0; i < n; ++i) {
      double d2 = norm2[i] + center_norm2 - 2.0 * dots[i];
      if (d2 < kSameDirection2) d2 = 0.0;
      dist2[i] = std::min(dist2[i], d2);
      total += dist2[i];
    }
  }
  return k;
}

// Assigns every unit row to the centre with the largest dot product (ties: lowest index).
// Returns how many labels changed (KMeansLimits); *objective = sum of the winning dot products.
int64_t AssignToCenters(const float* unit, int n, int d, const float* centers, int k,
                        std::vector<float>* scratch, std::vector<int32_t>* labels,
                        double* objective) {
  int64_t changed = 0;
  double sum = 0.0;
  scratch->resize(static_cast<size_t>(std::min(n, kAssignRowBlock)) * k);
  for (int r0 = 0; r0 < n; r0 += kAssignRowBlock) {
    const int rows = std::min(kAssignRowBlock, n - r0);
    // dots[rows][k] = unit[r0:r0+rows] x centers^T
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, k, d, 1.0f,
                unit + static_cast<size_t>(r0) * d, d, centers, d, 0.0f, scratch->data(), k);
    for (int r = 0; r < rows; ++r) {
      const float* dots = scratch->data() + static_cast<size_t>(r) * k;
      int best = 0;
      for (int c = 1; c < k; ++c) {
        if (dots[c] > dots[best]) best = c;
      }
      int32_t& label = (*labels)[r0 + r];
      if (label != best) {
        label = best;
        ++changed;
      }
      sum += dots[best];
    }
  }
  *objective = sum;
  return changed;
}

// centers[c] = normalised mean of the unit rows labelled c. A centre with no members or a
// zero mean keeps its position (any unit vector is then equally good for the objective).
void UpdateCenters(const float* unit, int n, int d, const std::vector<int32_t>& labels, int k,
                   float* centers) {
  std::vector<double> sums(static_cast<size_t>(k) * d, 0.0);
  for (int i = 0; i < n; ++i) {
    double* s = &sums[static_cast<size_t>(labels[i]) * d];
    const float* u = unit + static_cast<size_t>(i) * d;
    for (int j = 0; j < d; ++j) s[j] += u[j];
  }
  for (int c = 0; c < k; ++c) {
    const double* s = &sums[static_cast<size_t>(c) * d];
    double sq = 0.0;
    for (int j = 0; j < d; ++j) sq += s[j] * s[j];
    if (!(sq > 0.0)) continue;
    const double inv = 1.0 / std::sqrt(sq);
    float* center = centers + static_cast<size_t>(c) * d;
    for (int j = 0; j < d; ++j) center[j] = static_cast<float>(s[j] * inv);
  }
}

// CompactClusters with centroid(c, j, count) giving a surviving cluster's centroid element.
template <typename Centroid>
void CompactClustersWith(std::span<const int32_t> labels, int k, int d,
                         std::span<const float> unit_centers, Centroid centroid,
                         KMeansResult* result) {
  const int n = static_cast<int>(labels.size());
  std::vector<int32_t> counts(k, 0);
  for (int i = 0; i < n; ++i) ++counts[labels[i]];
  std::vector<int32_t> new_index(k, -1);
  result->num_clusters = 0;
  for (int c = 0; c < k; ++c) {
    if (counts[c] > 0) new_index[c] = result->num_clusters++;
  }
  const int C = result->num_clusters;
  result->dim = d;
  result->labels.resize(n);
  for (int i = 0; i < n; ++i) result->labels[i] = new_index[labels[i]];
  result->sizes.assign(C, 0);
  result->unit_centers.resize(static_cast<size_t>(C) * d);
  result->centroids.resize(static_cast<size_t>(C) * d);
  for (int c = 0; c < k; ++c) {
    const int to = new_index[c];
    if (to < 0) continue;
    result->sizes[to] = counts[c];
    std::memcpy(&result->unit_centers[static_cast<size_t>(to) * d],
                &unit_centers[static_cast<size_t>(c) * d], sizeof(float) * d);
    for (int j = 0; j < d; ++j) {
      result->centroids[static_cast<size_t>(to) * d + j] = centroid(c, j, counts[c]);
    }
  }
}

}  // namespace

void CompactClusters(std::span<const int32_t> labels, int k, int d,
                     std::span<const float> unit_centers, std::span<const double> raw_sums,
                     KMeansResult* result) {
  CompactClustersWith(
      labels, k, d, unit_centers,
      [&](int c, int j, int32_t count) {
        return static_cast<float>(raw_sums[static_cast<size_t>(c) * d + j] / count);
      },
      result);
}

void CompactClusters(std::span<const int32_t> labels, int k, int d,
                     std::span<const float> unit_centers, std::span<const float> raw_means,
                     KMeansResult* result) {
  CompactClustersWith(
      labels, k, d, unit_centers,
      [&](int c, int j, int32_t) { return raw_means[static_cast<size_t>(c) * d + j]; }, result);
}

double UniformDouble(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

int64_t KMeansLimits::StopChanged(int n) const {
  const double f = min_changed_fraction > 0.0 ? std::min(min_changed_fraction, 1.0) : 0.0;
  return static_cast<int64_t>(std::floor(f * static_cast<double>(n)));
}

KMeansResult SphericalKMeans(const float* points, int n, int d, int k, KMeansLimits limits,
                             std::mt19937_64& rng) {
  KMeansResult result;
  result.dim = d;
  std::vector<float> unit, norm2;
  NormalizeRows(points, n, d, &unit, &norm2);

  std::vector<float> centers(static_cast<size_t>(k) * d);
  k = SeedPlusPlus(unit.data(), norm2.data(), n, d, k, rng, centers.data());
  centers.resize(static_cast<size_t>(k) * d);

  std::vector<int32_t> labels(n, -1);
  std::vector<float> scratch;
  const int max_iterations = limits.max_iterations;
  const int64_t stop_changed = limits.StopChanged(n);
  for (int it = 0; it < max_iterations; ++it) {
    double objective = 0.0;
    const int64_t changed =
        AssignToCenters(unit.data(), n, d, centers.data(), k, &scratch, &labels, &objective);
    result.objective.push_back(objective);
    ++result.iterations;
    // The first step (labels from none) never stops, as on the GPU (KMeansLimits).
    if (it > 0 && changed <= stop_changed) {
      result.converged = true;
      break;
    }
    // No update after the last allowed step, so `centers` stays the set `labels` was
    // assigned against.
    if (it + 1 < max_iterations) UpdateCenters(unit.data(), n, d, labels, k, centers.data());
  }

  // Stored centroid = mean of the raw member points (P3), accumulated in double.
  std::vector<double> sums(static_cast<size_t>(k) * d, 0.0);
  for (int i = 0; i < n; ++i) {
    const float* x = points + static_cast<size_t>(i) * d;
    double* s = &sums[static_cast<size_t>(labels[i]) * d];
    for (int j = 0; j < d; ++j) s[j] += x[j];
  }
  CompactClusters(labels, k, d, centers, sums, &result);
  return result;
}

std::vector<KMeansResult> KMeansSolver::RunBatch(std::span<const float* const> points, int n, int d,
                                                 int k, KMeansLimits limits,
                                                 std::span<std::mt19937_64* const> rngs) {
  std::vector<KMeansResult> results;
  results.reserve(points.size());
  for (size_t i = 0; i < points.size(); ++i) {
    results.push_back(Run(points[i], n, d, k, limits, *rngs[i]));
  }
  return results;
}

}  // namespace squeeze
