// Threshold calibration (engine/squeeze/calibration.h, score_distribution.h): exact quantile
// choice, finite thresholds on adversarial inputs, realised kept fraction on the calibration
// queries, monotonicity.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "engine/squeeze/score_distribution.h"
#include "engine/squeeze/selection.h"
#include "engine/squeeze/squeeze_index.h"

namespace squeeze {
namespace {

constexpr double kKeeps[] = {0.5, 0.3, 0.2, 0.1, 0.05, 0.03};

// ---- ScoreDistribution --------------------------------------------------------------------

TEST(ScoreDistributionTest, PicksTheClosestCutPoint) {
  // Distinct scores 0.1:10 keys, 0.2:40, 0.5:40, 0.9:10 (0.2 given twice, merged).
  const ScoreDistribution dist = ScoreDistribution::FromWeightedScores(
      {{0.5f, 40}, {0.2f, 30}, {0.1f, 10}, {0.9f, 10}, {0.2f, 10}});
  EXPECT_EQ(dist.scores(), (std::vector<float>{0.1f, 0.2f, 0.5f, 0.9f}));
  EXPECT_EQ(dist.cumulative_keys(), (std::vector<int64_t>{10, 50, 90, 100}));
  EXPECT_EQ(dist.Threshold(0.1), 0.5f);    // exactly 10 keys above
  EXPECT_EQ(dist.Threshold(0.5), 0.2f);    // exactly 50 above
  EXPECT_EQ(dist.Threshold(0.3), 0.2f);    // 50 and 10 are equally far from 30: keep more
  EXPECT_EQ(dist.Threshold(0.92), 0.1f);   // 90 above (100 is farther)
  EXPECT_EQ(dist.Threshold(0.01), 0.9f);   // nothing above is closest to 1 key
  const float all = dist.Threshold(0.95);  // 100 vs 90 tie: keep all, still finite
  EXPECT_TRUE(std::isfinite(all));
  EXPECT_LT(all, 0.1f);
  EXPECT_EQ(dist.KeysAbove(all), 100);
  EXPECT_EQ(dist.Threshold(0.0), std::numeric_limits<float>::infinity());
  EXPECT_EQ(dist.Threshold(std::nan("")), std::numeric_limits<float>::infinity());
  EXPECT_EQ(dist.Threshold(1.0), -std::numeric_limits<float>::infinity());
  EXPECT_EQ(dist.KeysAbove(0.5f), 10);
  EXPECT_EQ(dist.KeysAbove(0.3f), 50);
  EXPECT_EQ(dist.KeysAbove(1.0f), 0);
  EXPECT_EQ(dist.KeysAbove(-std::numeric_limits<float>::infinity()), 100);
}

TEST(ScoreDistributionTest, ThresholdIsOptimalAndMonotoneOnRandomDistributions) {
  std::mt19937 gen(1);
  std::uniform_real_distribution<float> score(0.0f, 1e-3f);
  std::uniform_int_distribution<int> count(1, 50);
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<std::pair<float, int64_t>> items;
    for (int i = 0; i < 300; ++i) items.emplace_back(score(gen), count(gen));
    const ScoreDistribution dist = ScoreDistribution::FromWeightedScores(items);
    const double total = static_cast<double>(dist.total_keys());
    float previous = std::numeric_limits<float>::infinity();
    for (int i = 1; i < 1000; ++i) {
      const double keep = i / 1000.0;
      const float tau = dist.Threshold(keep);
      ASSERT_TRUE(std::isfinite(tau));
      ASSERT_LE(tau, previous) << "keep " << keep;
      previous = tau;
      // Brute force over every achievable kept count.
      double best = std::abs(total - keep * total);  // keep everything
      for (int64_t cum : dist.cumulative_keys()) {
        best = std::min(best, std::abs((total - cum) - keep * total));
      }
      ASSERT_NEAR(std::abs(dist.KeysAbove(tau) - keep * total), best, 1e-9) << "keep " << keep;
    }
  }
}

TEST(ScoreDistributionTest, SortedRunsGiveTheDistributionOfTheirConcatenation) {
  std::mt19937 gen(7);
  // Few distinct scores so that equal scores meet across runs and must be merged.
  std::uniform_int_distribution<int> score(0, 200);
  std::uniform_int_distribution<int64_t> count(1, 50);
  for (int num_runs : {0, 1, 2, 5, 32}) {
    std::vector<std::vector<std::pair<float, int64_t>>> runs(num_runs);
    std::vector<std::pair<float, int64_t>> all;
    for (auto& run : runs) {
      run.resize(std::uniform_int_distribution<int>(0, 400)(gen));
      for (auto& item : run) item = {score(gen) * 0.01f - 1.0f, count(gen)};
      all.insert(all.end(), run.begin(), run.end());
      std::sort(run.begin(), run.end());
    }
    const ScoreDistribution merged = ScoreDistribution::FromSortedRuns(runs);
    EXPECT_EQ(merged, ScoreDistribution::FromWeightedScores(all)) << num_runs << " runs";
    EXPECT_EQ(merged.empty(), all.empty());
  }
}

TEST(ScoreDistributionTest, FromPartsValidates) {
  EXPECT_TRUE(ScoreDistribution::FromParts({0.1f, 0.2f}, {3, 5}, "d").ok());
  EXPECT_FALSE(ScoreDistribution::FromParts({0.2f, 0.1f}, {3, 5}, "d").ok());
  EXPECT_FALSE(ScoreDistribution::FromParts({0.1f, 0.2f}, {3, 3}, "d").ok());
  EXPECT_FALSE(ScoreDistribution::FromParts({0.1f, 0.2f}, {0, 3}, "d").ok());
  EXPECT_FALSE(ScoreDistribution::FromParts({0.1f}, {3, 5}, "d").ok());
  EXPECT_FALSE(ScoreDistribution::FromParts({std::nanf("")}, {3}, "d").ok());
}

// ---- Calibration through BuildSqueezeIndex -------------------------------------------------

struct TestContext {
  ContextKV kv;
  QueryCapture capture;
};

enum class Keys { kMixture, kIdentical, kOneGiantCluster };

// Keys per (layer, head) from `kind`, values and window queries standard normal; keys and
// queries multiplied by `scale`.
TestContext MakeContext(int L, int Hkv, int Hq, int d, int S, int W, uint32_t seed, Keys kind,
                        float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  SequenceKV seq(KvShape{L, Hkv, d});
  EXPECT_TRUE(seq.Reserve(S).ok());
  const int directions = 24;
  for (int l = 0; l < L; ++l) {
    for (int h = 0; h < Hkv; ++h) {
      std::vector<float> dirs(static_cast<size_t>(directions) * d);
      for (float& x : dirs) x = normal(gen);
      for (int t = 0; t < S; ++t) {
        float* k = seq.key(l, h, t);
        float* v = seq.value(l, h, t);
        const int g = static_cast<int>(uniform(gen) * directions) % directions;
        const bool giant = kind == Keys::kOneGiantCluster && uniform(gen) < 0.9f;
        for (int j = 0; j < d; ++j) {
          float x = 0;
          switch (kind) {
            case Keys::kMixture:
              x = dirs[g * d + j] * (0.5f + uniform(gen)) + 0.5f * normal(gen);
              break;
            case Keys::kIdentical:
              x = dirs[j];
              break;
            case Keys::kOneGiantCluster:
              x = giant ? dirs[j] + 0.01f * normal(gen) : 2.0f * normal(gen);
              break;
          }
          k[j] = scale * x;
          v[j] = normal(gen);
        }
      }
    }
  }
  seq.Commit(S);
  TestContext c;
  c.kv = ContextKV::FromSequence(seq, S);
  for (int p = S - W; p < S; ++p) c.capture.positions.push_back(p);
  c.capture.q.resize(L);
  for (int l = 0; l < L; ++l) {
    c.capture.q[l].resize(static_cast<size_t>(W) * Hq * d);
    for (float& x : c.capture.q[l]) x = scale * normal(gen);
  }
  return c;
}

void ExpectFiniteThresholds(const SqueezeIndex& index) {
  ASSERT_FALSE(index.fine_scores.empty());
  for (float s : index.fine_scores.scores()) ASSERT_TRUE(std::isfinite(s));
  for (double keep : kKeeps) {
    SCOPED_TRACE(keep);
    const float tau = index.fine_scores.Threshold(keep);
    EXPECT_TRUE(std::isfinite(tau));
    const int64_t above = index.fine_scores.KeysAbove(tau);
    EXPECT_GE(above, 0);
    EXPECT_LE(above, index.fine_scores.total_keys());
    if (index.hierarchical()) {
      EXPECT_TRUE(std::isfinite(index.coarse_scores.Threshold(keep)));
    }
  }
}

struct Adversarial {
  const char* name;
  Keys keys;
  float scale;
  int window;
};

class AdversarialTest : public ::testing::TestWithParam<Adversarial> {};

TEST_P(AdversarialTest, ThresholdsAreFinite) {
  const Adversarial& a = GetParam();
  for (bool hierarchical : {false, true}) {
    SCOPED_TRACE(hierarchical ? "hierarchical" : "flat");
    TestContext c = MakeContext(2, 2, 4, 16, 1200, a.window, 3, a.keys, a.scale);
    SqueezeOptions o;
    o.window = a.window;
    o.hierarchical = hierarchical;
    o.coarse_fraction = 0.01;
    auto index = BuildSqueezeIndex(&c.kv, c.capture, 4, o);
    ASSERT_TRUE(index.ok()) << index.status();
    ExpectFiniteThresholds(*index);
    if (a.keys == Keys::kIdentical) {
      EXPECT_EQ(index->num_centroids(), 4);  // one per head
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Calibration, AdversarialTest,
    ::testing::Values(Adversarial{"HugeLogits", Keys::kMixture, 1e3f, 100},
                      Adversarial{"IdenticalKeys", Keys::kIdentical, 1.0f, 100},
                      Adversarial{"OneGiantCluster", Keys::kOneGiantCluster, 1.0f, 100},
                      Adversarial{"HugeGiantCluster", Keys::kOneGiantCluster, 1e3f, 100},
                      Adversarial{"WindowOfOne", Keys::kMixture, 1.0f, 1}),
    [](const auto& info) { return std::string(info.param.name); });

// Per-cluster score of one (layer, head), recomputed here in double precision.
std::vector<double> ScoresInDouble(const SqueezeIndex& index, const float* q_window, int layer,
                                   int h) {
  const SqueezeHeadIndex& head = index.head(layer, h);
  const int C = head.num_clusters(), d = index.head_dim, G = index.group_size();
  const int Hq = index.num_q_heads;
  std::vector<double> score(C, 0.0), s(C);
  for (int t = 0; t < index.window; ++t) {
    for (int j = 0; j < G; ++j) {
      const float* q = q_window + (static_cast<size_t>(t) * Hq + h * G + j) * d;
      double m = -1e300;
      for (int c = 0; c < C; ++c) {
        double dot = 0;
        for (int e = 0; e < d; ++e) dot += static_cast<double>(q[e]) * head.centroids[c * d + e];
        s[c] = dot / std::sqrt(static_cast<double>(d));
        m = std::max(m, s[c]);
      }
      double denom = 0;
      for (int c = 0; c < C; ++c) denom += head.sizes[c] * std::exp(s[c] - m);
      for (int c = 0; c < C; ++c) score[c] += std::exp(s[c] - m) / denom;
    }
  }
  for (double& x : score) x /= index.window * G;
  return score;
}

TEST(CalibrationTest, KeptFractionOnTheCalibrationQueriesMatchesTheBudget) {
  const int L = 2, Hkv = 2, Hq = 8, d = 32, W = 100, S = 4000 + W;
  TestContext c = MakeContext(L, Hkv, Hq, d, S, W, 4, Keys::kMixture);
  SqueezeOptions o;
  o.window = W;
  auto index = BuildSqueezeIndex(&c.kv, c.capture, Hq, o);
  ASSERT_TRUE(index.ok()) << index.status();
  ASSERT_EQ(index->num_clustered, 4000);
  EXPECT_GT(index->num_centroids(), L * Hkv * 180);  // ~5% clusters, few empties
  const double clustered_keys = static_cast<double>(L) * Hkv * index->num_clustered;

  float previous_tau = std::numeric_limits<float>::infinity();
  for (double keep : {0.03, 0.05, 0.1, 0.2, 0.3, 0.5}) {
    SCOPED_TRACE(keep);
    const float tau = index->fine_scores.Threshold(keep);
    ASSERT_TRUE(std::isfinite(tau));
    EXPECT_LT(tau, previous_tau);  // more kept -> lower threshold
    previous_tau = tau;

    // (a) Through the online selection, fed the window queries as one step.
    SelectionOptions sel;
    sel.budget = keep;
    SqueezedFixedContextAttention att(*index, sel);
    LayerSelection out;
    double kept = 0;
    for (int l = 0; l < L; ++l) {
      att.SelectAndRecord(l, c.capture.q[l].data(), W, &out);
      for (int h = 0; h < Hkv; ++h) {
        for (const KeyRange& r : out.ranges[h]) kept += r.size();
        kept -= W;  // the window is always kept, not part of the budget
      }
    }
    EXPECT_NEAR(kept / clustered_keys, keep, 0.02);

    // (b) Independently, in double precision.
    double kept_double = 0;
    for (int l = 0; l < L; ++l) {
      for (int h = 0; h < Hkv; ++h) {
        const std::vector<double> scores = ScoresInDouble(*index, c.capture.q[l].data(), l, h);
        for (size_t cl = 0; cl < scores.size(); ++cl) {
          if (scores[cl] > tau) kept_double += index->head(l, h).sizes[cl];
        }
      }
    }
    EXPECT_NEAR(kept_double / clustered_keys, keep, 0.02);
  }
}

TEST(CalibrationTest, ThresholdIsMonotoneInKeep) {
  TestContext c = MakeContext(1, 2, 4, 16, 1500, 50, 5, Keys::kMixture);
  SqueezeOptions o;
  o.window = 50;
  o.hierarchical = true;
  auto index = BuildSqueezeIndex(&c.kv, c.capture, 4, o);
  ASSERT_TRUE(index.ok()) << index.status();
  for (const ScoreDistribution* dist : {&index->fine_scores, &index->coarse_scores}) {
    ASSERT_FALSE(dist->empty());
    float previous = dist->Threshold(0.0);
    int64_t previous_above = 0;
    for (int i = 1; i <= 200; ++i) {
      const float tau = dist->Threshold(i / 200.0);
      EXPECT_LE(tau, previous);
      const int64_t above = dist->KeysAbove(tau);
      EXPECT_GE(above, previous_above);
      previous = tau;
      previous_above = above;
    }
    EXPECT_EQ(previous_above, dist->total_keys());
  }
}

}  // namespace
}  // namespace squeeze
