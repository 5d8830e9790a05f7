// The dropped clusters' attention estimated from their centroids (engine/squeeze/tail_estimate.h):
// exact when every key of a cluster is its centroid (values arbitrary: only their mean counts),
// and merged with the kept clusters' exact partial it then equals dense attention.
#include "engine/squeeze/tail_estimate.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "engine/backend/attention_reference.h"

namespace squeeze {
namespace {

constexpr int kD = 16;

// One layer, one KV head: clusters of `sizes` keys in storage order from row 0; the clusters
// `identical` flags have every key equal to their centroid, the others spread around it.
struct Clustered {
  ContextKV kv;
  SqueezeHeadIndex head;
};

Clustered MakeClustered(const std::vector<int>& sizes, const std::vector<bool>& identical,
                        uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  int S = 0;
  for (int n : sizes) S += n;
  SequenceKV seq(KvShape{1, 1, kD});
  EXPECT_TRUE(seq.Reserve(S).ok());
  Clustered c;
  c.head.offsets.push_back(0);
  int row = 0;
  for (size_t k = 0; k < sizes.size(); ++k) {
    std::vector<float> centre(kD), mean(kD, 0.0f);
    for (float& x : centre) x = 1.5f * normal(gen);
    for (int r = 0; r < sizes[k]; ++r, ++row) {
      for (int i = 0; i < kD; ++i) {
        seq.key(0, 0, row)[i] = centre[i] + (identical[k] ? 0.0f : 0.5f * normal(gen));
        seq.value(0, 0, row)[i] = normal(gen);
        mean[i] += seq.key(0, 0, row)[i] / sizes[k];
      }
    }
    c.head.offsets.push_back(row);
    c.head.sizes.push_back(sizes[k]);
    c.head.centroids.insert(c.head.centroids.end(), mean.begin(), mean.end());
  }
  seq.Commit(S);
  c.kv = ContextKV::FromSequence(seq, S);
  return c;
}

double RelError(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num / den);
}

// Exact attention over the rows of `clusters` for query q: out [kD], lse.
void Exact(const Clustered& c, const float* q, const std::vector<int32_t>& clusters, float* out,
           float* lse) {
  const AttentionShape shape{1, 1, 1, kD, 1.0f / std::sqrt(static_cast<float>(kD))};
  std::vector<std::vector<KeyRange>> ranges(1);
  for (int k : clusters) ranges[0].push_back({c.head.offsets[k], c.head.offsets[k + 1]});
  AttentionKeys keys{.kv = c.kv.Layer(0), .ranges = ranges};
  AttentionPartial(shape, q, keys, out, lse);
}

TEST(TailEstimateTest, ClusterMeanValues) {
  const Clustered c = MakeClustered({3, 5, 1}, {false, false, true}, 1);
  const std::vector<float> means = ClusterMeanValues(c.kv, c.head, 0, 0);
  ASSERT_EQ(means.size(), 3u * kD);
  for (int k = 0; k < 3; ++k) {
    for (int i = 0; i < kD; ++i) {
      double sum = 0;
      for (int r = c.head.offsets[k]; r < c.head.offsets[k + 1]; ++r) sum += c.kv.value(0, 0, r)[i];
      EXPECT_NEAR(means[k * kD + i], sum / c.head.sizes[k], 1e-6);
    }
  }
}

TEST(TailEstimateTest, ExactForClustersOfIdenticalKeys) {
  const std::vector<int> sizes = {7, 1, 30, 12, 4};
  const Clustered c = MakeClustered(sizes, std::vector<bool>(sizes.size(), true), 2);
  const std::vector<float> means = ClusterMeanValues(c.kv, c.head, 0, 0);
  std::mt19937 gen(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const std::vector<int32_t> all = {0, 1, 2, 3, 4};
  for (int t = 0; t < 5; ++t) {
    std::vector<float> q(kD);
    for (float& x : q) x = normal(gen);
    std::vector<float> est(kD, std::nanf("")), ref(kD);
    float lse_est = std::nanf(""), lse_ref;
    DroppedClustersPartial(q.data(), kD, 1.0f / std::sqrt(static_cast<float>(kD)),
                           c.head.centroids.data(), c.head.sizes.data(), means.data(), all,
                           est.data(), &lse_est);
    Exact(c, q.data(), all, ref.data(), &lse_ref);
    EXPECT_LE(RelError(est, ref), 1e-5);
    EXPECT_NEAR(lse_est, lse_ref, 1e-5);
  }
}

// Kept clusters exact + dropped clusters estimated = dense when the dropped clusters' keys are
// identical; with spread dropped clusters the estimate beats dropping them.
TEST(TailEstimateTest, MergedWithTheKeptPartialEqualsDense) {
  const std::vector<int> sizes = {20, 9, 14, 3, 25, 8};
  const std::vector<int32_t> kept = {0, 2, 4}, dropped = {1, 3, 5};
  std::mt19937 gen(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (bool spread : {false, true}) {
    SCOPED_TRACE(spread ? "spread" : "identical");
    // Kept clusters are always spread (exact anyway); dropped ones identical unless `spread`.
    const Clustered c = MakeClustered(sizes, {false, !spread, false, !spread, false, !spread}, 7);
    const std::vector<float> means = ClusterMeanValues(c.kv, c.head, 0, 0);
    double err_tail = 0, err_dropped = 0;
    for (int t = 0; t < 8; ++t) {
      std::vector<float> q(kD);
      for (float& x : q) x = normal(gen);
      std::vector<float> out(kD), tail(kD), dense(kD);
      float lse, lse_tail, lse_dense;
      Exact(c, q.data(), kept, out.data(), &lse);
      const std::vector<float> without = out;
      DroppedClustersPartial(q.data(), kD, 1.0f / std::sqrt(static_cast<float>(kD)),
                             c.head.centroids.data(), c.head.sizes.data(), means.data(), dropped,
                             tail.data(), &lse_tail);
      MergeAttentionPartials(out.data(), &lse, tail.data(), &lse_tail, 1, kD);
      Exact(c, q.data(), {0, 1, 2, 3, 4, 5}, dense.data(), &lse_dense);
      err_tail += RelError(out, dense);
      err_dropped += RelError(without, dense);
      if (!spread) {
        EXPECT_LE(RelError(out, dense), 1e-5);
        EXPECT_NEAR(lse, lse_dense, 1e-5);
      }
    }
    EXPECT_LT(err_tail, err_dropped);
  }
}

TEST(TailEstimateTest, NothingDroppedIsAnEmptyPartial) {
  const float q[kD] = {1.0f};
  std::vector<float> out(kD, 3.0f);
  float lse = 0.0f;
  DroppedClustersPartial(q, kD, 0.25f, nullptr, nullptr, nullptr, {}, out.data(), &lse);
  EXPECT_EQ(lse, -std::numeric_limits<float>::infinity());
  for (float x : out) EXPECT_EQ(x, 0.0f);
}

}  // namespace
}  // namespace squeeze
