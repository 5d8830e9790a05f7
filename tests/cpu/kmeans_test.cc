// Spherical k-means (engine/backend/kmeans.h): convergence to a fixed point of the cosine
// assignment, monotone objective, compaction of empty clusters, raw-mean centroids, seeding
// determinism, the early stop by the fraction of labels changed (KMeansLimits).
#include "engine/backend/kmeans.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <set>
#include <vector>

namespace squeeze {
namespace {

std::vector<float> RandomNormal(int n, int d, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> x(static_cast<size_t>(n) * d);
  for (float& v : x) v = normal(rng);
  return x;
}

// `groups` random directions; each point = direction * random norm + small noise.
std::vector<float> SeparatedClusters(int n, int d, int groups, std::mt19937& rng,
                                     std::vector<int>* truth) {
  std::vector<float> dirs = RandomNormal(groups, d, rng);
  std::uniform_real_distribution<float> norm(0.5f, 3.0f);
  std::normal_distribution<float> noise(0.0f, 0.02f);
  std::vector<float> x(static_cast<size_t>(n) * d);
  truth->resize(n);
  for (int i = 0; i < n; ++i) {
    const int g = i % groups;
    (*truth)[i] = g;
    const float s = norm(rng);
    for (int j = 0; j < d; ++j)
      x[static_cast<size_t>(i) * d + j] = dirs[g * d + j] * s + noise(rng);
  }
  return x;
}

double Cosine(const float* a, const float* b, int d) {
  double ab = 0, aa = 0, bb = 0;
  for (int j = 0; j < d; ++j) {
    ab += static_cast<double>(a[j]) * b[j];
    aa += static_cast<double>(a[j]) * a[j];
    bb += static_cast<double>(b[j]) * b[j];
  }
  return ab / std::sqrt(aa * bb);
}

// Checks the invariants every result must satisfy, plus the fixed-point property when
// converged: every point's own centre has the highest cosine (up to rounding).
void CheckResult(const KMeansResult& r, const std::vector<float>& x, int n, int d, int k) {
  ASSERT_GE(r.num_clusters, 1);
  ASSERT_LE(r.num_clusters, k);
  const int C = r.num_clusters;
  ASSERT_EQ(r.labels.size(), static_cast<size_t>(n));
  ASSERT_EQ(r.sizes.size(), static_cast<size_t>(C));
  ASSERT_EQ(r.centroids.size(), static_cast<size_t>(C) * d);
  ASSERT_EQ(r.unit_centers.size(), static_cast<size_t>(C) * d);
  ASSERT_EQ(r.objective.size(), static_cast<size_t>(r.iterations));

  // Sizes match the labels; no empty cluster.
  std::vector<int> counts(C, 0);
  for (int l : r.labels) {
    ASSERT_GE(l, 0);
    ASSERT_LT(l, C);
    ++counts[l];
  }
  for (int c = 0; c < C; ++c) {
    EXPECT_GE(r.sizes[c], 1) << "cluster " << c;
    EXPECT_EQ(r.sizes[c], counts[c]) << "cluster " << c;
  }

  // Stored centroid = mean of the raw member points.
  std::vector<double> sums(static_cast<size_t>(C) * d, 0.0);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < d; ++j) sums[r.labels[i] * d + j] += x[static_cast<size_t>(i) * d + j];
  }
  for (int c = 0; c < C; ++c) {
    for (int j = 0; j < d; ++j) {
      const double mean = sums[c * d + j] / counts[c];
      EXPECT_NEAR(r.centroids[c * d + j], mean, 1e-5 * (1 + std::abs(mean)))
          << "cluster " << c << " dim " << j;
    }
  }

  // Objective trace non-decreasing (relative rounding slack).
  for (size_t i = 1; i < r.objective.size(); ++i) {
    EXPECT_GE(r.objective[i], r.objective[i - 1] - 1e-6 * std::abs(r.objective[i - 1]))
        << "objective decreased at step " << i;
  }

  if (r.converged) {
    for (int i = 0; i < n; ++i) {
      const float* xi = &x[static_cast<size_t>(i) * d];
      double best = -2;
      for (int c = 0; c < C; ++c) best = std::max(best, Cosine(xi, &r.unit_centers[c * d], d));
      EXPECT_GE(Cosine(xi, &r.unit_centers[r.labels[i] * d], d), best - 1e-5) << "point " << i;
    }
    // The last objective equals the sum of cosines to the assigned unit centres.
    double obj = 0;
    for (int i = 0; i < n; ++i) {
      obj += Cosine(&x[static_cast<size_t>(i) * d], &r.unit_centers[r.labels[i] * d], d);
    }
    EXPECT_NEAR(r.objective.back(), obj, 1e-4 * n);
  }
}

TEST(KMeansTest, WellSeparatedClustersAreRecovered) {
  std::mt19937 gen(1);
  const int n = 900, d = 32, groups = 9;
  std::vector<int> truth;
  const std::vector<float> x = SeparatedClusters(n, d, groups, gen, &truth);
  std::mt19937_64 rng(42);
  const KMeansResult r = SphericalKMeans(x.data(), n, d, groups, 100, rng);
  CheckResult(r, x, n, d, groups);
  EXPECT_TRUE(r.converged);
  EXPECT_EQ(r.num_clusters, groups);
  // Each found cluster is pure (one true group) and each true group maps to one cluster.
  std::vector<std::set<int>> groups_in(r.num_clusters), clusters_of(groups);
  for (int i = 0; i < n; ++i) {
    groups_in[r.labels[i]].insert(truth[i]);
    clusters_of[truth[i]].insert(r.labels[i]);
  }
  for (const auto& s : groups_in) EXPECT_EQ(s.size(), 1u);
  for (const auto& s : clusters_of) EXPECT_EQ(s.size(), 1u);
}

TEST(KMeansTest, RandomDataConvergesToAFixedPoint) {
  std::mt19937 gen(2);
  const int n = 3000, d = 24, k = 60;
  const std::vector<float> x = RandomNormal(n, d, gen, 2.5f);
  std::mt19937_64 rng(7);
  const KMeansResult r = SphericalKMeans(x.data(), n, d, k, 500, rng);
  CheckResult(r, x, n, d, k);
  EXPECT_TRUE(r.converged) << "after " << r.iterations << " iterations";
  EXPECT_GT(r.iterations, 2);  // random data needs real Lloyd steps
  EXPECT_GT(r.objective.back(), r.objective.front());
}

TEST(KMeansTest, IterationCapStopsEarlyWithoutConverging) {
  std::mt19937 gen(3);
  const int n = 2000, d = 16, k = 50;
  const std::vector<float> x = RandomNormal(n, d, gen);
  std::mt19937_64 rng(9);
  const KMeansResult r = SphericalKMeans(x.data(), n, d, k, 3, rng);
  CheckResult(r, x, n, d, k);
  EXPECT_EQ(r.iterations, 3);
  EXPECT_FALSE(r.converged);
}

TEST(KMeansTest, SameSeedSameResultDifferentSeedDifferentInit) {
  std::mt19937 gen(4);
  const int n = 1000, d = 16, k = 40;
  const std::vector<float> x = RandomNormal(n, d, gen);
  std::mt19937_64 a(123), b(123), c(124);
  const KMeansResult ra = SphericalKMeans(x.data(), n, d, k, 25, a);
  const KMeansResult rb = SphericalKMeans(x.data(), n, d, k, 25, b);
  EXPECT_EQ(ra.labels, rb.labels);
  EXPECT_EQ(ra.centroids, rb.centroids);
  EXPECT_EQ(ra.objective, rb.objective);
  // One assignment step: unit_centers are exactly the seeded centres.
  std::mt19937_64 a1(123), c1(124);
  const KMeansResult ia = SphericalKMeans(x.data(), n, d, k, 1, a1);
  const KMeansResult ic = SphericalKMeans(x.data(), n, d, k, 1, c1);
  EXPECT_NE(ia.unit_centers, ic.unit_centers);
  // Seeds are points of the data (normalised).
  for (int s = 0; s < ia.num_clusters; ++s) {
    double best = -2;
    for (int i = 0; i < n; ++i)
      best = std::max(best, Cosine(&ia.unit_centers[s * d], &x[i * d], d));
    EXPECT_NEAR(best, 1.0, 1e-5);
  }
}

TEST(KMeansTest, DuplicatePointsGiveNoEmptyClusters) {
  // 6 distinct directions, each repeated (with different norms); k far above 6.
  std::mt19937 gen(5);
  const int distinct = 6, n = 300, d = 8, k = 40;
  const std::vector<float> dirs = RandomNormal(distinct, d, gen);
  std::vector<float> x(static_cast<size_t>(n) * d);
  for (int i = 0; i < n; ++i) {
    const float s = 0.5f + (i % 7);
    for (int j = 0; j < d; ++j) x[i * d + j] = dirs[(i % distinct) * d + j] * s;
  }
  std::mt19937_64 rng(11);
  const KMeansResult r = SphericalKMeans(x.data(), n, d, k, 25, rng);
  CheckResult(r, x, n, d, k);
  EXPECT_EQ(r.num_clusters, distinct);

  // All points identical: one cluster.
  std::vector<float> same(static_cast<size_t>(n) * d);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < d; ++j) same[i * d + j] = dirs[j];
  }
  std::mt19937_64 rng2(11);
  const KMeansResult one = SphericalKMeans(same.data(), n, d, k, 25, rng2);
  CheckResult(one, same, n, d, k);
  EXPECT_EQ(one.num_clusters, 1);
  EXPECT_TRUE(one.converged);
}

TEST(KMeansTest, OneClusterPerPointWhenKEqualsN) {
  std::mt19937 gen(6);
  const int n = 64, d = 8;
  const std::vector<float> x = RandomNormal(n, d, gen);
  std::mt19937_64 rng(1);
  const KMeansResult r = SphericalKMeans(x.data(), n, d, n, 25, rng);
  CheckResult(r, x, n, d, n);
  EXPECT_EQ(r.num_clusters, n);
}

// `groups` random directions with noise of `noise` x the direction's scale and random norms:
// overlapping clusters, so with k > groups the exact rule runs a long tail of steps that each
// move a few boundary points.
std::vector<float> OverlappingClusters(int n, int d, int groups, float noise, std::mt19937& gen) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> norm(0.5f, 3.0f);
  const std::vector<float> dirs = RandomNormal(groups, d, gen);
  std::vector<float> x(static_cast<size_t>(n) * d);
  for (int i = 0; i < n; ++i) {
    const float s = norm(gen);
    for (int j = 0; j < d; ++j) {
      x[static_cast<size_t>(i) * d + j] = s * (dirs[(i % groups) * d + j] + noise * normal(gen));
    }
  }
  return x;
}

// Points whose cluster differs between two clusterings of the same points into k non-empty
// clusters (compaction then keeps every k-means index as it is).
int64_t LabelsChanged(const KMeansResult& a, const KMeansResult& b, int k) {
  EXPECT_EQ(a.num_clusters, k);
  EXPECT_EQ(b.num_clusters, k);
  int64_t changed = 0;
  for (size_t i = 0; i < a.labels.size(); ++i) changed += a.labels[i] != b.labels[i];
  return changed;
}

TEST(KMeansTest, ChangedFractionStopsEarlyNearTheExactObjective) {
  std::mt19937 gen(12);
  const int n = 6000, d = 32, groups = 40, k = 120;
  const std::vector<float> x = OverlappingClusters(n, d, groups, 0.5f, gen);
  const double fraction = 0.005;  // stop once <= 30 of the 6000 points moved
  std::mt19937_64 rng_exact(5), rng_early(5);
  const KMeansResult exact = SphericalKMeans(x.data(), n, d, k, 300, rng_exact);
  const KMeansResult early =
      SphericalKMeans(x.data(), n, d, k, KMeansLimits(300, fraction), rng_early);
  CheckResult(exact, x, n, d, k);
  CheckResult(early, x, n, d, k);  // labels are still the argmax over the returned centres
  ASSERT_TRUE(exact.converged);
  EXPECT_TRUE(early.converged);
  EXPECT_LT(early.iterations, exact.iterations);
  EXPECT_GE(early.iterations, 2);  // the first step (from no labels) never stops
  // The same seeding and steps, cut short: the early trace is the exact one's prefix.
  ASSERT_LE(early.objective.size(), exact.objective.size());
  for (size_t i = 0; i < early.objective.size(); ++i) {
    EXPECT_NEAR(early.objective[i], exact.objective[i], 1e-9 * std::abs(exact.objective[i]))
        << "step " << i;
  }
  // The objective given up is small: within 0.1% of the exact rule's.
  EXPECT_GE(early.objective.back(), (1.0 - 1e-3) * exact.objective.back());
  EXPECT_LE(early.objective.back(), exact.objective.back() * (1.0 + 1e-9));

  // The rule itself: the stopping step moved at most floor(fraction x n) points and the one
  // before moved more (runs capped at t - 2, t - 1 and t steps give the labels around it).
  const int t = early.iterations;
  ASSERT_GE(t, 3);
  const int64_t stop = KMeansLimits(300, fraction).StopChanged(n);
  EXPECT_EQ(stop, 30);
  std::vector<KMeansResult> capped;
  for (int steps : {t - 2, t - 1}) {
    std::mt19937_64 rng(5);
    capped.push_back(SphericalKMeans(x.data(), n, d, k, steps, rng));
  }
  EXPECT_LE(LabelsChanged(capped[1], early, k), stop);
  EXPECT_GT(LabelsChanged(capped[0], capped[1], k), stop);
}

TEST(KMeansTest, ZeroChangedFractionIsTheExactRule) {
  std::mt19937 gen(13);
  const int n = 3000, d = 24, k = 60;
  const std::vector<float> x = OverlappingClusters(n, d, 20, 0.5f, gen);
  std::mt19937_64 a(21), b(21), c(21);
  const KMeansResult plain = SphericalKMeans(x.data(), n, d, k, 200, a);
  const KMeansResult zero = SphericalKMeans(x.data(), n, d, k, KMeansLimits(200, 0.0), b);
  // Below one point in n: floor(f x n) = 0, the exact rule too.
  const KMeansResult tiny = SphericalKMeans(x.data(), n, d, k, KMeansLimits(200, 0.9 / n), c);
  ASSERT_TRUE(plain.converged);
  EXPECT_GT(plain.iterations, 3);
  for (const KMeansResult* r : {&zero, &tiny}) {
    EXPECT_EQ(r->iterations, plain.iterations);
    EXPECT_TRUE(r->converged);
    EXPECT_EQ(r->labels, plain.labels);
    EXPECT_EQ(r->centroids, plain.centroids);
    EXPECT_EQ(r->unit_centers, plain.unit_centers);
    EXPECT_EQ(r->objective, plain.objective);
  }
  EXPECT_EQ(a(), b());  // the same draws
  // The iteration cap still applies under a tolerance; a stop there is not convergence.
  std::mt19937_64 d3(21);
  const KMeansResult capped = SphericalKMeans(x.data(), n, d, k, KMeansLimits(2, 0.001), d3);
  EXPECT_EQ(capped.iterations, 2);
  EXPECT_FALSE(capped.converged);
}

TEST(KMeansTest, StopChangedIsTheFloorOfTheClampedFraction) {
  EXPECT_EQ(KMeansLimits(25).StopChanged(131072), 0);
  EXPECT_EQ(KMeansLimits(25, 0.005).StopChanged(131072), 655);
  EXPECT_EQ(KMeansLimits(25, 0.005).StopChanged(199), 0);
  EXPECT_EQ(KMeansLimits(25, -0.5).StopChanged(1000), 0);
  EXPECT_EQ(KMeansLimits(25, std::nan("")).StopChanged(1000), 0);
  EXPECT_EQ(KMeansLimits(25, 2.0).StopChanged(1000), 1000);
}

TEST(KMeansTest, CompactionFromDividedMeansEqualsTheOneFromRawSums) {
  // 9 points into k = 5, clusters 1 and 3 empty: both forms drop them and renumber the labels.
  const int k = 5, d = 3;
  const std::vector<int32_t> labels = {0, 2, 2, 4, 0, 4, 4, 2, 0};
  std::vector<float> unit(static_cast<size_t>(k) * d), means(unit.size());
  std::vector<double> sums(unit.size());
  std::mt19937 gen(3);
  std::uniform_real_distribution<double> u(-2.0, 2.0);
  for (size_t i = 0; i < sums.size(); ++i) {
    unit[i] = static_cast<float>(u(gen));
    sums[i] = u(gen);
    const int count = static_cast<int>(std::count(labels.begin(), labels.end(), i / d));
    // What the GPU's raw-means kernel leaves: the double quotient rounded once; junk if empty.
    means[i] = count > 0 ? static_cast<float>(sums[i] / count) : 12345.0f;
  }
  KMeansResult from_sums, from_means;
  CompactClusters(labels, k, d, unit, sums, &from_sums);
  CompactClusters(labels, k, d, unit, means, &from_means);
  EXPECT_EQ(from_means.num_clusters, 3);
  EXPECT_EQ(from_means.labels, (std::vector<int32_t>{0, 1, 1, 2, 0, 2, 2, 1, 0}));
  EXPECT_EQ(from_means.sizes, (std::vector<int32_t>{3, 3, 3}));
  EXPECT_EQ(from_means.labels, from_sums.labels);
  EXPECT_EQ(from_means.sizes, from_sums.sizes);
  EXPECT_EQ(from_means.unit_centers, from_sums.unit_centers);
  EXPECT_EQ(from_means.centroids, from_sums.centroids);
  EXPECT_FLOAT_EQ(from_means.centroids[d], static_cast<float>(sums[2 * d] / 3));
}

TEST(KMeansTest, UniformDoubleIsInUnitInterval) {
  std::mt19937_64 rng(0);
  double lo = 1, hi = 0, sum = 0;
  for (int i = 0; i < 100000; ++i) {
    const double u = UniformDouble(rng);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    lo = std::min(lo, u);
    hi = std::max(hi, u);
    sum += u;
  }
  EXPECT_LT(lo, 1e-3);
  EXPECT_GT(hi, 1 - 1e-3);
  EXPECT_NEAR(sum / 100000, 0.5, 0.01);
}

}  // namespace
}  // namespace squeeze
