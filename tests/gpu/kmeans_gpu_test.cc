// The GPU spherical k-means (engine/backend/cuda/cuda_kmeans.h) against the CPU reference
// (engine/squeeze/kmeans.h): the same invariants (labels, sizes, raw-mean centroids, a
// non-decreasing objective, nearest-centre assignment at convergence) and, since it seeds
// differently (uniform draw instead of k-means++), quality within 1% of the reference's final
// objective on clustered data, plus edge cases and a whole index built with it.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "engine/backend/cuda/cuda_kmeans.h"
#include "engine/squeeze/kmeans.h"
#include "tests/gpu/gpu_test_util.h"

namespace squeeze {
namespace {

using gpu_testing::Rng;

// n points around `true_k` random directions (plus a few zero rows), raw scale varying per point.
std::vector<float> ClusteredPoints(int n, int d, int true_k, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> centers(static_cast<size_t>(true_k) * d);
  for (float& x : centers) x = rng.Uniform();
  std::vector<float> points(static_cast<size_t>(n) * d);
  for (int i = 0; i < n; ++i) {
    const int c = rng.Int(0, true_k - 1);
    const float scale = 0.5f + 2.0f * (rng.Uniform() + 1.0f);
    for (int j = 0; j < d; ++j) {
      points[static_cast<size_t>(i) * d + j] =
          scale * (centers[static_cast<size_t>(c) * d + j] + 0.35f * rng.Uniform());
    }
  }
  for (int i = 0; i < n; i += 997) {
    std::fill_n(points.begin() + static_cast<size_t>(i) * d, d, 0.0f);
  }
  return points;
}

void CheckInvariants(const KMeansResult& r, const std::vector<float>& points, int n, int d, int k) {
  ASSERT_GT(r.num_clusters, 0);
  ASSERT_LE(r.num_clusters, k);
  ASSERT_EQ(r.labels.size(), static_cast<size_t>(n));
  const int C = r.num_clusters;
  std::vector<int> counts(C, 0);
  std::vector<double> sums(static_cast<size_t>(C) * d, 0.0);
  for (int i = 0; i < n; ++i) {
    ASSERT_GE(r.labels[i], 0);
    ASSERT_LT(r.labels[i], C);
    ++counts[r.labels[i]];
    for (int j = 0; j < d; ++j) sums[static_cast<size_t>(r.labels[i]) * d + j] += points[static_cast<size_t>(i) * d + j];
  }
  double err = 0.0, ref = 0.0;
  for (int c = 0; c < C; ++c) {
    EXPECT_GE(r.sizes[c], 1);
    EXPECT_EQ(r.sizes[c], counts[c]);
    for (int j = 0; j < d; ++j) {
      const double want = sums[static_cast<size_t>(c) * d + j] / counts[c];
      const double got = r.centroids[static_cast<size_t>(c) * d + j];
      ASSERT_TRUE(std::isfinite(got));
      err += (got - want) * (got - want);
      ref += want * want;
    }
  }
  EXPECT_LE(std::sqrt(err / ref), 1e-5) << "centroids are the raw means of their members";
  for (size_t i = 1; i < r.objective.size(); ++i) {
    EXPECT_GE(r.objective[i], r.objective[i - 1] * (1 - 1e-6)) << "step " << i;
  }
  EXPECT_EQ(static_cast<int>(r.objective.size()), r.iterations);
  if (r.converged) {  // every point sits with its best unit centre (up to TF32 ties)
    int worse = 0;
    for (int i = 0; i < n; ++i) {
      const float* x = &points[static_cast<size_t>(i) * d];
      double norm = 0.0;
      for (int j = 0; j < d; ++j) norm += static_cast<double>(x[j]) * x[j];
      if (norm == 0.0) continue;
      double best = -2.0, mine = 0.0;
      for (int c = 0; c < C; ++c) {
        double dot = 0.0;
        for (int j = 0; j < d; ++j) dot += x[j] * r.unit_centers[static_cast<size_t>(c) * d + j];
        dot /= std::sqrt(norm);
        best = std::max(best, dot);
        if (c == r.labels[i]) mine = dot;
      }
      worse += mine < best - 2e-3;
    }
    EXPECT_EQ(worse, 0);
  }
}

TEST(CudaKMeansTest, MatchesTheReferenceQualityOnClusteredData) {
  CudaKMeans gpu;
  for (const auto& [n, d, k, true_k] : {std::tuple{6000, 64, 300, 50}, std::tuple{20000, 128, 1000, 200},
                                        std::tuple{3100, 64, 775, 100}}) {
    SCOPED_TRACE(testing::Message() << "n " << n << " d " << d << " k " << k);
    const std::vector<float> points = ClusteredPoints(n, d, true_k, n + k);
    std::mt19937_64 rng_cpu(7), rng_gpu(7);
    const KMeansResult cpu = SphericalKMeans(points.data(), n, d, k, 25, rng_cpu);
    const KMeansResult got = gpu.Run(points.data(), n, d, k, 25, rng_gpu);
    EXPECT_TRUE(gpu.error().empty()) << gpu.error();
    CheckInvariants(got, points, n, d, k);
    const double ratio = got.objective.back() / cpu.objective.back();
    std::printf("[kmeans] n %d d %d k %d: objective gpu %.2f cpu %.2f (ratio %.4f), clusters "
                "%d / %d, iterations %d / %d\n",
                n, d, k, got.objective.back(), cpu.objective.back(), ratio, got.num_clusters,
                cpu.num_clusters, got.iterations, cpu.iterations);
    EXPECT_GE(ratio, 0.99) << "GPU k-means objective more than 1% below the reference";
  }
}

TEST(CudaKMeansTest, EdgeCases) {
  CudaKMeans gpu;
  const int d = 64;
  const std::vector<float> points = ClusteredPoints(257, d, 5, 3);
  for (int k : {1, 2, 257}) {
    std::mt19937_64 rng(1);
    const KMeansResult r = gpu.Run(points.data(), 257, d, k, 10, rng);
    CheckInvariants(r, points, 257, d, k);
  }
  // All points identical: one non-empty cluster survives, the others are dropped.
  std::vector<float> same(100 * d, 0.25f);
  std::mt19937_64 rng(2);
  const KMeansResult r = gpu.Run(same.data(), 100, d, 10, 5, rng);
  EXPECT_GE(r.num_clusters, 1);
  CheckInvariants(r, same, 100, d, 10);
}

}  // namespace
}  // namespace squeeze
