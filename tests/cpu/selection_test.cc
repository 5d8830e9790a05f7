// Online selection (engine/squeeze/selection.h): dense and empty extremes, agreement with a
// double-precision brute force (flat and hierarchical), group/token averaging, budget
// accounting.
#include "engine/squeeze/selection.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <random>
#include <tuple>
#include <vector>

#include "engine/squeeze/cluster_scores.h"
#include "engine/squeeze/squeeze_index.h"

namespace squeeze {
namespace {

struct TestContext {
  ContextKV kv;
  QueryCapture capture;
  SqueezeIndex index;
};

// Random mixture keys (per (layer, head) 16 directions), normal values and window queries;
// built into an index with the given options.
TestContext MakeIndexed(int L, int Hkv, int Hq, int d, int S, const SqueezeOptions& o,
                        uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  SequenceKV seq(KvShape{L, Hkv, d});
  EXPECT_TRUE(seq.Reserve(S).ok());
  for (int l = 0; l < L; ++l) {
    for (int h = 0; h < Hkv; ++h) {
      std::vector<float> dirs(16 * d);
      for (float& x : dirs) x = normal(gen);
      for (int t = 0; t < S; ++t) {
        const int g = static_cast<int>(uniform(gen) * 16) % 16;
        for (int j = 0; j < d; ++j) {
          seq.key(l, h, t)[j] = dirs[g * d + j] * (0.5f + uniform(gen)) + 0.4f * normal(gen);
          seq.value(l, h, t)[j] = normal(gen);
        }
      }
    }
  }
  seq.Commit(S);
  TestContext c;
  c.kv = ContextKV::FromSequence(seq, S);
  for (int p = S - o.window; p < S; ++p) c.capture.positions.push_back(p);
  c.capture.q.resize(L);
  for (int l = 0; l < L; ++l) {
    c.capture.q[l].resize(static_cast<size_t>(o.window) * Hq * d);
    for (float& x : c.capture.q[l]) x = normal(gen);
  }
  auto index = BuildSqueezeIndex(&c.kv, c.capture, Hq, o);
  EXPECT_TRUE(index.ok()) << index.status();
  if (index.ok()) c.index = *std::move(index);
  return c;
}

SqueezeOptions Options(bool hierarchical) {
  SqueezeOptions o;
  o.window = 32;
  o.sinks = 4;
  o.hierarchical = hierarchical;
  o.coarse_fraction = 0.01;
  o.seed = 3;
  return o;
}

std::vector<float> RandomQueries(int n, int Hq, int d, std::mt19937& gen) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> q(static_cast<size_t>(n) * Hq * d);
  for (float& x : q) x = normal(gen);
  return q;
}

// Ranges must be ascending, non-empty, non-overlapping and non-adjacent (merged).
void ExpectWellFormed(const std::vector<KeyRange>& ranges, int S) {
  for (size_t i = 0; i < ranges.size(); ++i) {
    EXPECT_GE(ranges[i].begin, 0);
    EXPECT_LT(ranges[i].begin, ranges[i].end);
    EXPECT_LE(ranges[i].end, S);
    if (i > 0) {
      EXPECT_LT(ranges[i - 1].end, ranges[i].begin);
    }
  }
}

bool RowKept(const std::vector<KeyRange>& ranges, int row) {
  for (const KeyRange& r : ranges) {
    if (row >= r.begin && row < r.end) return true;
  }
  return false;
}

// Whether each fine cluster of `head` is kept; also checks clusters are all-or-nothing.
std::vector<bool> KeptClusters(const SqueezeHeadIndex& head, const std::vector<KeyRange>& ranges) {
  std::vector<bool> kept(head.num_clusters());
  for (int c = 0; c < head.num_clusters(); ++c) {
    kept[c] = RowKept(ranges, head.offsets[c]);
    for (int r = head.offsets[c]; r < head.offsets[c + 1]; ++r) {
      EXPECT_EQ(RowKept(ranges, r), kept[c]) << "cluster " << c << " partly kept";
    }
  }
  return kept;
}

// Size-weighted softmax scores of `clusters` (centroids/sizes given by index), averaged over
// n tokens and the G heads of KV head h, in double.
std::vector<double> ScoresInDouble(const SqueezeIndex& index, const float* q, int n, int h,
                                   const std::vector<const float*>& centroids,
                                   const std::vector<int>& sizes) {
  const int d = index.head_dim, G = index.group_size(), Hq = index.num_q_heads;
  const int K = static_cast<int>(centroids.size());
  std::vector<double> score(K, 0.0), s(K);
  for (int t = 0; t < n; ++t) {
    for (int j = 0; j < G; ++j) {
      const float* qq = q + (static_cast<size_t>(t) * Hq + h * G + j) * d;
      double m = -std::numeric_limits<double>::infinity();
      for (int c = 0; c < K; ++c) {
        double dot = 0;
        for (int e = 0; e < d; ++e) dot += static_cast<double>(qq[e]) * centroids[c][e];
        s[c] = dot / std::sqrt(static_cast<double>(d));
        m = std::max(m, s[c]);
      }
      double denom = 0;
      for (int c = 0; c < K; ++c) denom += sizes[c] * std::exp(s[c] - m);
      for (int c = 0; c < K; ++c) score[c] += std::exp(s[c] - m) / denom;
    }
  }
  for (double& x : score) x /= static_cast<double>(n) * G;
  return score;
}

// A score this close to a threshold may fall either way between fp32 and double.
bool NearThreshold(double score, float tau) {
  return std::abs(score - tau) <= 1e-4 * std::abs(static_cast<double>(tau)) + 1e-12;
}

// The brute-force decision per fine cluster: 1 kept, 0 dropped, -1 too close to call.
// `coarse_dropped` (hierarchical) marks fine clusters whose coarse cluster was clearly dropped.
std::vector<int> BruteForce(const SqueezeIndex& index, int layer, int h, const float* q, int n,
                            float tau, float coarse_tau, bool hierarchical,
                            std::vector<bool>* coarse_dropped) {
  const SqueezeHeadIndex& head = index.head(layer, h);
  const int C = head.num_clusters(), d = index.head_dim;
  std::vector<int> decision(C, 0);
  coarse_dropped->assign(C, false);
  std::vector<int> candidates;
  std::vector<bool> uncertain(C, false);
  if (!hierarchical) {
    for (int c = 0; c < C; ++c) candidates.push_back(c);
  } else {
    std::vector<const float*> cc;
    std::vector<int> cs;
    for (int g = 0; g < head.num_coarse(); ++g) {
      cc.push_back(&head.coarse_centroids[g * d]);
      cs.push_back(head.coarse_sizes[g]);
    }
    const std::vector<double> coarse = ScoresInDouble(index, q, n, h, cc, cs);
    for (int g = 0; g < head.num_coarse(); ++g) {
      const bool near = NearThreshold(coarse[g], coarse_tau);
      for (int c = head.coarse_offsets[g]; c < head.coarse_offsets[g + 1]; ++c) {
        if (coarse[g] > coarse_tau || near) candidates.push_back(c);
        if (near) uncertain[c] = true;
        if (coarse[g] <= coarse_tau && !near) (*coarse_dropped)[c] = true;
      }
    }
  }
  std::vector<const float*> fc;
  std::vector<int> fs;
  for (int c : candidates) {
    fc.push_back(&head.centroids[c * d]);
    fs.push_back(head.sizes[c]);
  }
  const std::vector<double> fine = ScoresInDouble(index, q, n, h, fc, fs);
  for (size_t i = 0; i < candidates.size(); ++i) {
    const int c = candidates[i];
    decision[c] = fine[i] > tau ? 1 : 0;
    if (NearThreshold(fine[i], tau)) uncertain[c] = true;
  }
  // With an uncertain coarse cluster the fine denominators are uncertain too: skip the head.
  for (int c = 0; c < C; ++c) {
    if (uncertain[c]) decision[c] = -1;
  }
  return decision;
}

TEST(SelectionTest, KeepAllAndFullBudgetKeepEveryRow) {
  for (BudgetPolicy policy : {BudgetPolicy::kCalibrated, BudgetPolicy::kPerStep})
    for (bool hierarchical : {false, true}) {
      TestContext c = MakeIndexed(2, 2, 4, 16, 600, Options(hierarchical), 1);
      const int S = c.index.num_tokens;
      std::mt19937 gen(2);
      const std::vector<float> q = RandomQueries(3, 4, 16, gen);
      for (int mode = 0; mode < 2; ++mode) {
        SelectionOptions sel;
        sel.hierarchical = hierarchical;
        sel.budget_policy = policy;
        if (mode == 0)
          sel.keep_all = true;
        else
          sel.budget = 1.0;
        SqueezedFixedContextAttention att(c.index, sel);
        LayerSelection out;
        for (int l = 0; l < 2; ++l) {
          att.SelectAndRecord(l, q.data(), 3, &out);
          ASSERT_EQ(out.ranges.size(), 2u);
          for (const auto& ranges : out.ranges) {
            ASSERT_EQ(ranges.size(), 1u);
            EXPECT_EQ(ranges[0].begin, 0);
            EXPECT_EQ(ranges[0].end, S);
          }
        }
        EXPECT_DOUBLE_EQ(att.realised_budget(), 1.0);  // nothing scored
        EXPECT_EQ(att.centroids_scored(), 0);
      }
    }
}

TEST(SelectionTest, ZeroBudgetKeepsOnlySinksAndWindow) {
  for (BudgetPolicy policy : {BudgetPolicy::kCalibrated, BudgetPolicy::kPerStep})
    for (bool hierarchical : {false, true}) {
      TestContext c = MakeIndexed(2, 2, 4, 16, 600, Options(hierarchical), 3);
      const int S = c.index.num_tokens, sinks = c.index.sinks, W = c.index.window;
      std::mt19937 gen(4);
      const std::vector<float> q = RandomQueries(1, 4, 16, gen);
      SelectionOptions sel;
      sel.budget = 0.0;
      sel.hierarchical = hierarchical;
      sel.budget_policy = policy;
      SqueezedFixedContextAttention att(c.index, sel);
      LayerSelection out;
      for (int l = 0; l < 2; ++l) {
        att.SelectAndRecord(l, q.data(), 1, &out);
        for (const auto& ranges : out.ranges) {
          ASSERT_EQ(ranges.size(), 2u);
          EXPECT_EQ(ranges[0].begin, 0);
          EXPECT_EQ(ranges[0].end, sinks);
          EXPECT_EQ(ranges[1].begin, S - W);
          EXPECT_EQ(ranges[1].end, S);
        }
      }
      EXPECT_DOUBLE_EQ(att.realised_budget(), static_cast<double>(sinks + W) / S);
    }
}

TEST(SelectionTest, FlatSelectionMatchesDoublePrecisionBruteForce) {
  const int L = 2, Hkv = 2, Hq = 8, d = 32;
  TestContext c = MakeIndexed(L, Hkv, Hq, d, 1500, Options(false), 5);
  std::mt19937 gen(6);
  int compared = 0, kept_total = 0, uncertain = 0;
  for (double budget : {0.03, 0.1, 0.3}) {
    SelectionOptions sel;
    sel.budget = budget;
    SqueezedFixedContextAttention att(c.index, sel);
    const float tau = att.fine_threshold();
    ASSERT_EQ(tau, c.index.fine_scores.Threshold(budget));
    for (int n : {1, 7}) {
      const std::vector<float> q = RandomQueries(n, Hq, d, gen);
      for (int l = 0; l < L; ++l) {
        LayerSelection out;
        att.SelectAndRecord(l, q.data(), n, &out);
        for (int h = 0; h < Hkv; ++h) {
          ExpectWellFormed(out.ranges[h], c.index.num_tokens);
          const std::vector<bool> kept = KeptClusters(c.index.head(l, h), out.ranges[h]);
          std::vector<bool> unused;
          const std::vector<int> expected =
              BruteForce(c.index, l, h, q.data(), n, tau, 0, false, &unused);
          for (size_t cl = 0; cl < kept.size(); ++cl) {
            if (expected[cl] < 0) {
              ++uncertain;
              continue;
            }
            ++compared;
            kept_total += kept[cl];
            EXPECT_EQ(kept[cl], expected[cl] == 1)
                << "layer " << l << " head " << h << " cluster " << cl << " budget " << budget;
          }
        }
      }
    }
  }
  EXPECT_GT(kept_total, 0);
  EXPECT_LT(uncertain, compared / 100 + 1);
}

TEST(SelectionTest, HierarchicalMatchesBruteForceAndNeverKeepsUnderADroppedCoarseCluster) {
  const int L = 2, Hkv = 2, Hq = 4, d = 16;
  SqueezeOptions o = Options(true);
  o.coarse_fraction = 0.01;
  TestContext c = MakeIndexed(L, Hkv, Hq, d, 3000, o, 7);
  std::mt19937 gen(8);
  int compared = 0, kept_total = 0, under_dropped = 0;
  for (double budget : {0.05, 0.1}) {
    SelectionOptions sel;
    sel.budget = budget;
    sel.hierarchical = true;
    sel.coarse_keep = 0.3;
    SqueezedFixedContextAttention att(c.index, sel);
    ASSERT_TRUE(std::isfinite(att.coarse_threshold()));
    for (int n : {1, 5}) {
      const std::vector<float> q = RandomQueries(n, Hq, d, gen);
      for (int l = 0; l < L; ++l) {
        LayerSelection out;
        att.SelectAndRecord(l, q.data(), n, &out);
        for (int h = 0; h < Hkv; ++h) {
          ExpectWellFormed(out.ranges[h], c.index.num_tokens);
          const std::vector<bool> kept = KeptClusters(c.index.head(l, h), out.ranges[h]);
          std::vector<bool> dropped;
          const std::vector<int> expected =
              BruteForce(c.index, l, h, q.data(), n, att.fine_threshold(), att.coarse_threshold(),
                         true, &dropped);
          for (size_t cl = 0; cl < kept.size(); ++cl) {
            if (dropped[cl]) {
              ++under_dropped;
              EXPECT_FALSE(kept[cl]) << "fine cluster " << cl << " kept under a dropped coarse";
            }
            if (expected[cl] < 0) continue;
            ++compared;
            kept_total += kept[cl];
            EXPECT_EQ(kept[cl], expected[cl] == 1)
                << "layer " << l << " head " << h << " cluster " << cl;
          }
        }
      }
    }
  }
  EXPECT_GT(kept_total, 0);
  EXPECT_GT(under_dropped, 0);
  EXPECT_GT(compared, 0);
}

// A backend that selects on the device reports the rows it kept (and, hierarchical, the fine
// candidates under the kept coarse clusters) through Record. Given what the host selection kept,
// the realised budget must come out as the host selection's own accounting: flat scores every
// fine centroid; hierarchical scores the coarse centroids plus the candidates, which Select
// reports as a device computes them; and policy() hands over the thresholds Select uses.
TEST(SelectionTest, DeviceSelectionAccountingMatchesHostSelection) {
  const int L = 2, Hkv = 2, Hq = 4, d = 16;
  SqueezeOptions o = Options(true);
  o.coarse_fraction = 0.01;
  TestContext c = MakeIndexed(L, Hkv, Hq, d, 3000, o, 11);
  std::mt19937 gen(12);
  for (bool hierarchical : {false, true}) {
    for (double budget : {0.0, 0.1, 1.0}) {
      SCOPED_TRACE(testing::Message()
                   << (hierarchical ? "hierarchical" : "flat") << " budget " << budget);
      SelectionOptions sel;
      sel.budget = budget;
      sel.hierarchical = hierarchical;
      sel.coarse_keep = 0.3;
      SqueezedFixedContextAttention host(c.index, sel), device(c.index, sel);
      const ContextAttentionPolicy policy = device.policy();
      ASSERT_EQ(policy.kind, ContextAttentionPolicy::Kind::kSqueezed);
      const SqueezedSelection* ds = &policy.squeezed;
      EXPECT_EQ(ds->hierarchical, hierarchical);
      EXPECT_EQ(ds->threshold, host.fine_threshold());
      if (hierarchical && std::isfinite(host.fine_threshold())) {
        EXPECT_EQ(ds->coarse_threshold, host.coarse_threshold());
      }
      const std::vector<float> q = RandomQueries(1, Hq, d, gen);
      for (int l = 0; l < L; ++l) {
        LayerSelection out;
        host.SelectAndRecord(l, q.data(), 1, &out);
        std::vector<int32_t> kept(Hkv), candidates(Hkv);
        for (int h = 0; h < Hkv; ++h) {
          for (const KeyRange& r : out.ranges[h]) kept[h] += r.size();
          // The candidates a device would report: fine clusters under the coarse clusters whose
          // score passes the coarse threshold (all of them at a coarse threshold of -inf).
          const SqueezeHeadIndex& head = c.index.head(l, h);
          if (!hierarchical) continue;
          std::vector<float> coarse(head.num_coarse());
          ClusterScorer scorer;
          scorer.Average(q.data() + static_cast<size_t>(h) * (Hq / Hkv) * d, 1, Hq / Hkv,
                         static_cast<size_t>(Hq) * d, head.coarse_centroids.data(),
                         head.coarse_sizes.data(), head.num_coarse(), d, coarse.data());
          for (int g = 0; g < head.num_coarse(); ++g) {
            if (host.coarse_threshold() == -std::numeric_limits<float>::infinity() ||
                coarse[g] > host.coarse_threshold()) {
              candidates[h] += head.coarse_offsets[g + 1] - head.coarse_offsets[g];
            }
          }
        }
        if (hierarchical && host.fine_threshold() != std::numeric_limits<float>::infinity()) {
          EXPECT_EQ(out.candidates, candidates) << "layer " << l;
        }
        device.Record(
            l, kept,
            hierarchical ? std::span<const int32_t>(candidates) : std::span<const int32_t>());
      }
      EXPECT_NEAR(device.realised_budget(), host.realised_budget(), 1e-12);
    }
  }
}

// Two clusters A (rows [0,1)) and B (rows [1,2)) of one key each, window row 2; G = 2 query
// heads. tau = 0.4. Query q0 alone gives p_A = 0.7, p_B = 0.3 (keeps A); q1 gives p_B ~ 1.
// Averaged with q1, A drops to 0.35 and B rises to 0.65 (keeps B).
SqueezeIndex TwoClusterIndex() {
  SqueezeIndex index;
  index.num_layers = 1;
  index.num_kv_heads = 1;
  index.num_q_heads = 2;
  index.head_dim = 2;
  index.num_tokens = 3;
  index.window = 1;
  index.num_clustered = 2;
  index.options.window = 1;
  SqueezeHeadIndex head;
  head.offsets = {0, 1, 2};
  head.sizes = {1, 1};
  head.centroids = {1, 0, 0, 1};
  index.heads.push_back(head);
  index.fine_scores = ScoreDistribution::FromWeightedScores({{0.4f, 1}, {0.6f, 1}});
  return index;
}

TEST(SelectionTest, ScoresAreAveragedOverTheGroupAndTheTokens) {
  const SqueezeIndex index = TwoClusterIndex();
  SelectionOptions sel;
  sel.budget = 0.5;
  SqueezedFixedContextAttention att(index, sel);
  ASSERT_EQ(att.fine_threshold(), 0.4f);
  const float a = std::log(7.0f / 3.0f) * std::sqrt(2.0f);  // s_A - s_B = ln(7/3)
  const float b = 20.0f * std::sqrt(2.0f);
  const std::vector<float> q0 = {a, 0}, q1 = {0, b};
  auto select = [&](const std::vector<float>& q, int n) {
    LayerSelection out;
    att.SelectAndRecord(0, q.data(), n, &out);
    return out.ranges[0];
  };
  auto keeps_a = [](const std::vector<KeyRange>& r) {
    return r.size() == 2 && r[0].begin == 0 && r[0].end == 1 && r[1].begin == 2 && r[1].end == 3;
  };
  auto keeps_b = [](const std::vector<KeyRange>& r) {
    return r.size() == 1 && r[0].begin == 1 && r[0].end == 3;
  };
  // [n][Hq][d] layouts.
  std::vector<float> both_q0 = q0, group = q0, tokens = q0;
  both_q0.insert(both_q0.end(), q0.begin(), q0.end());  // token 0: heads (q0, q0)
  group.insert(group.end(), q1.begin(), q1.end());      // token 0: heads (q0, q1)
  tokens.insert(tokens.end(), q0.begin(), q0.end());    // token 0: (q0, q0)
  tokens.insert(tokens.end(), q1.begin(), q1.end());    // token 1: (q1, q1)
  tokens.insert(tokens.end(), q1.begin(), q1.end());
  EXPECT_TRUE(keeps_a(select(both_q0, 1)));  // one head (or identical heads) alone: A
  EXPECT_TRUE(keeps_b(select(group, 1)));    // group average: B
  EXPECT_TRUE(keeps_a(select(tokens, 1)));   // first token alone: A
  EXPECT_TRUE(keeps_b(select(tokens, 2)));   // average over the two tokens: B
}

TEST(SelectionTest, RealisedBudgetArithmetic) {
  for (bool hierarchical : {false, true}) {
    SCOPED_TRACE(hierarchical ? "hierarchical" : "flat");
    const int L = 3, Hkv = 2, Hq = 4, d = 16;
    TestContext c = MakeIndexed(L, Hkv, Hq, d, 900, Options(hierarchical), 9);
    const double S = c.index.num_tokens;
    SelectionOptions sel;
    sel.budget = 0.1;
    sel.hierarchical = hierarchical;
    SqueezedFixedContextAttention att(c.index, sel);
    std::mt19937 gen(10);
    const int steps = 4;
    double kept_sum = 0;  // sum over (step, layer, head) of kept / S
    std::vector<double> layer_kept(L, 0.0);
    for (int step = 0; step < steps; ++step) {
      const int n = 1 + step * 3;
      const std::vector<float> q = RandomQueries(n, Hq, d, gen);
      for (int l = 0; l < L; ++l) {
        LayerSelection out;
        att.SelectAndRecord(l, q.data(), n, &out);
        for (int h = 0; h < Hkv; ++h) {
          int kept = 0;
          for (const KeyRange& r : out.ranges[h]) kept += r.size();
          kept_sum += kept / S;
          layer_kept[l] += kept / S;
        }
      }
    }
    EXPECT_EQ(att.steps(), steps);
    const double terms = static_cast<double>(steps) * L * Hkv;
    if (!hierarchical) {
      // Flat: every stored centroid is scored at every step.
      EXPECT_EQ(att.centroids_scored(), steps * c.index.num_centroids());
    }
    const double expected = kept_sum / terms + 0.5 * att.centroids_scored() / S / terms;
    EXPECT_NEAR(att.realised_budget(), expected, 1e-12);
    const std::vector<double> per_layer = att.kept_fraction_per_layer();
    for (int l = 0; l < L; ++l) EXPECT_NEAR(per_layer[l], layer_kept[l] / (steps * Hkv), 1e-12);
    // Kept fraction of the clustered keys is in a sane band around the budget.
    for (double f : att.clustered_kept_fraction_per_layer()) {
      EXPECT_GE(f, 0.0);
      EXPECT_LE(f, 1.0);
    }
  }
}

// Tail estimation (flat only): the same rows are kept, the policy carries the estimate and the
// tables, and the realised budget also counts the centroids and mean values the estimate reads
// (C of each per step, layer and head), also at budget 0 where nothing is scored.
TEST(SelectionTest, TailEstimatePolicyAndAccounting) {
  const int L = 2, Hkv = 2, Hq = 4, d = 16;
  TestContext c = MakeIndexed(L, Hkv, Hq, d, 700, Options(false), 31);
  const double S = c.index.num_tokens;
  for (double budget : {0.1, 0.0}) {
    SCOPED_TRACE(budget);
    SelectionOptions sel;
    sel.budget = budget;
    SqueezedFixedContextAttention plain(c.index, sel);
    sel.estimate_tail = true;
    ASSERT_TRUE(ValidateSelectionOptions(c.index, sel).ok());
    SqueezedFixedContextAttention tail(c.index, sel);
    const ContextAttentionPolicy p = tail.policy();
    EXPECT_TRUE(p.estimate_tail);
    EXPECT_EQ(p.squeezed.tables.heads.data(), c.index.heads.data());
    EXPECT_FALSE(plain.policy().estimate_tail);
    std::mt19937 gen(32);
    const std::vector<float> q = RandomQueries(3, Hq, d, gen);
    double kept = 0;
    for (int l = 0; l < L; ++l) {
      LayerSelection a, b;
      plain.SelectAndRecord(l, q.data(), 3, &a);
      tail.SelectAndRecord(l, q.data(), 3, &b);
      for (int h = 0; h < Hkv; ++h) {
        ASSERT_EQ(a.ranges[h].size(), b.ranges[h].size());
        for (const KeyRange& r : b.ranges[h]) kept += r.size();
      }
    }
    const double terms = static_cast<double>(L) * Hkv;
    const double expected = kept / S / terms + 0.5 * 2.0 * c.index.num_centroids() / S / terms;
    EXPECT_NEAR(tail.realised_budget(), expected, 1e-12);
    EXPECT_GT(tail.realised_budget(), plain.realised_budget());
  }
  // Budget 1 keeps every cluster: nothing to estimate, nothing read.
  SelectionOptions all;
  all.budget = 1.0;
  all.estimate_tail = true;
  SqueezedFixedContextAttention keep(c.index, all);
  std::mt19937 gen(33);
  const std::vector<float> q = RandomQueries(1, Hq, d, gen);
  LayerSelection out;
  keep.SelectAndRecord(0, q.data(), 1, &out);
  EXPECT_DOUBLE_EQ(keep.realised_budget(), 1.0);
}

TEST(SelectionTest, OptionValidation) {
  TestContext c = MakeIndexed(1, 1, 2, 8, 300, Options(false), 11);
  SelectionOptions sel;
  EXPECT_TRUE(ValidateSelectionOptions(c.index, sel).ok());
  sel.budget = 1.5;
  EXPECT_EQ(ValidateSelectionOptions(c.index, sel).code(), absl::StatusCode::kInvalidArgument);
  sel.budget = std::nan("");
  EXPECT_EQ(ValidateSelectionOptions(c.index, sel).code(), absl::StatusCode::kInvalidArgument);
  sel.budget = 0.1;
  sel.coarse_keep = -0.5;
  EXPECT_EQ(ValidateSelectionOptions(c.index, sel).code(), absl::StatusCode::kInvalidArgument);
  sel.coarse_keep.reset();
  sel.estimate_tail = true;
  EXPECT_TRUE(ValidateSelectionOptions(c.index, sel).ok());
  sel.hierarchical = true;  // tail estimation is flat only
  EXPECT_EQ(ValidateSelectionOptions(c.index, sel).code(), absl::StatusCode::kInvalidArgument);
  sel.estimate_tail = false;  // and the index has no coarse level
  EXPECT_EQ(ValidateSelectionOptions(c.index, sel).code(), absl::StatusCode::kFailedPrecondition);
  // Constructed anyway: falls back to flat selection and still works.
  SqueezedFixedContextAttention att(c.index, sel);
  std::mt19937 gen(12);
  const std::vector<float> q = RandomQueries(2, 2, 8, gen);
  LayerSelection out;
  att.SelectAndRecord(0, q.data(), 2, &out);
  ASSERT_EQ(out.ranges.size(), 1u);
  ExpectWellFormed(out.ranges[0], c.index.num_tokens);
}

}  // namespace
}  // namespace squeeze

namespace squeeze {
namespace {

// Mass-based selection (DESIGN §1.3): the kept clusters are the top-scored ones, and exactly as
// many as are needed for their estimated mass sum(N_c * p_c) to reach the target.
// Per (layer, step), the clusters of every KV head of the layer with their double-precision
// scores and keys, for checking a per-step selection: `ids[h]` lists the clusters scored
// together (all fine ones, the coarse ones, or the fine candidates).
struct PooledLevel {
  std::vector<std::vector<int>> ids;       // [Hkv]
  std::vector<std::vector<double>> score;  // [Hkv], parallel to ids
  std::vector<std::vector<int>> keys;      // [Hkv], parallel to ids
};

PooledLevel ScoreLevel(const SqueezeIndex& index, int layer, const float* q, int n, bool coarse,
                       const std::vector<std::vector<int>>* fine_ids) {
  const int Hkv = index.num_kv_heads, d = index.head_dim;
  PooledLevel level;
  level.ids.resize(Hkv);
  level.score.resize(Hkv);
  level.keys.resize(Hkv);
  for (int h = 0; h < Hkv; ++h) {
    const SqueezeHeadIndex& head = index.head(layer, h);
    std::vector<const float*> cents;
    const int count = coarse ? head.num_coarse() : head.num_clusters();
    for (int k = 0; k < count; ++k) {
      if (fine_ids == nullptr) level.ids[h].push_back(k);
    }
    if (fine_ids != nullptr) level.ids[h] = (*fine_ids)[h];
    for (int k : level.ids[h]) {
      cents.push_back(coarse ? &head.coarse_centroids[static_cast<size_t>(k) * d]
                             : &head.centroids[static_cast<size_t>(k) * d]);
      level.keys[h].push_back(coarse ? head.coarse_sizes[k] : head.sizes[k]);
    }
    if (!cents.empty()) level.score[h] = ScoresInDouble(index, q, n, h, cents, level.keys[h]);
  }
  return level;
}

// Checks that `kept[h][i]` (parallel to level.ids) is a prefix of the pooled clusters in
// descending score order (no dropped cluster of any head outscores a kept one) whose keys are
// the closest to `target` (within half of the largest cluster at the boundary); returns the
// kept keys.
int64_t ExpectPooledPrefix(const PooledLevel& level, const std::vector<std::vector<bool>>& kept,
                           double target, const char* what) {
  double min_kept = 1e300, max_dropped = -1;
  int64_t kept_keys = 0;
  int largest = 0;
  for (size_t h = 0; h < level.ids.size(); ++h) {
    for (size_t i = 0; i < level.ids[h].size(); ++i) {
      largest = std::max(largest, level.keys[h][i]);
      if (kept[h][i]) {
        kept_keys += level.keys[h][i];
        min_kept = std::min(min_kept, level.score[h][i]);
      } else {
        max_dropped = std::max(max_dropped, level.score[h][i]);
      }
    }
  }
  EXPECT_GE(min_kept * (1 + 1e-4) + 1e-12, max_dropped) << what << ": not a prefix by score";
  EXPECT_LE(std::abs(kept_keys - target), largest)
      << what << ": kept " << kept_keys << " keys for a target of " << target;
  return kept_keys;
}

// The per-step policy: at every layer and step the kept keys of all heads together are the
// requested budget of their clustered keys (to within a cluster), the kept clusters are the
// best-scored of all heads together, and the heads keep different amounts (one threshold
// shared, not one quota per head). The calibrated threshold on the same queries does not hold
// the budget (the demonstration of why the policy exists).
TEST(SelectionTest, PerStepBudgetHoldsAtEveryLayerAndStep) {
  const int L = 3, Hkv = 4, Hq = 8, d = 32, S = 3000;
  TestContext c = MakeIndexed(L, Hkv, Hq, d, S, Options(false), 31);
  const int64_t clustered = c.index.num_clustered;
  std::mt19937 gen(32);
  int uneven_layers = 0, layers = 0;
  double worst_per_step = 0, worst_calibrated = 0;
  for (double budget : {0.05, 0.1, 0.3}) {
    SelectionOptions o;
    o.budget = budget;
    o.budget_policy = BudgetPolicy::kPerStep;
    ASSERT_TRUE(ValidateSelectionOptions(c.index, o).ok());
    SqueezedFixedContextAttention per_step(c.index, o);
    const ContextAttentionPolicy policy = per_step.policy();
    EXPECT_EQ(policy.kind, ContextAttentionPolicy::Kind::kSqueezed);
    EXPECT_TRUE(policy.squeezed.per_step);
    EXPECT_EQ(policy.squeezed.budget, static_cast<float>(budget));
    EXPECT_TRUE(std::isfinite(policy.squeezed.threshold));
    o.budget_policy = BudgetPolicy::kCalibrated;
    SqueezedFixedContextAttention calibrated(c.index, o);
    for (int n : {1, 6}) {
      for (int rep = 0; rep < 2; ++rep) {
        // Queries scaled up so that scores are peaked, as a trained model's are.
        std::vector<float> q = RandomQueries(n, Hq, d, gen);
        for (float& x : q) x *= 2.0f;
        for (int l = 0; l < L; ++l) {
          LayerSelection out, cal;
          per_step.SelectAndRecord(l, q.data(), n, &out);
          calibrated.SelectAndRecord(l, q.data(), n, &cal);
          const PooledLevel level = ScoreLevel(c.index, l, q.data(), n, false, nullptr);
          std::vector<std::vector<bool>> kept(Hkv);
          int64_t cal_keys = 0, most = 0, least = clustered;
          for (int h = 0; h < Hkv; ++h) {
            ExpectWellFormed(out.ranges[h], S);
            kept[h] = KeptClusters(c.index.head(l, h), out.ranges[h]);
            int64_t head_keys = 0;
            for (int k = 0; k < c.index.head(l, h).num_clusters(); ++k) {
              if (kept[h][k]) head_keys += c.index.head(l, h).sizes[k];
            }
            most = std::max(most, head_keys);
            least = std::min(least, head_keys);
            const std::vector<bool> cal_kept = KeptClusters(c.index.head(l, h), cal.ranges[h]);
            for (int k = 0; k < c.index.head(l, h).num_clusters(); ++k) {
              if (cal_kept[k]) cal_keys += c.index.head(l, h).sizes[k];
            }
          }
          const double target = budget * Hkv * clustered;
          const int64_t keys = ExpectPooledPrefix(level, kept, target, "flat");
          worst_per_step = std::max(worst_per_step, std::abs(keys / target - 1));
          worst_calibrated = std::max(worst_calibrated, std::abs(cal_keys / target - 1));
          ++layers;
          if (most > 1.5 * least) ++uneven_layers;
        }
      }
    }
  }
  EXPECT_LE(worst_per_step, 0.1);  // the bound: within 10% of the budget at every step
  EXPECT_GT(worst_calibrated, 0.1);
  EXPECT_GT(uneven_layers, layers / 4) << "heads kept alike: no per-head adaptivity";
}

TEST(SelectionTest, PerStepBudgetHierarchical) {
  const int L = 2, Hkv = 3, Hq = 6, d = 16, S = 4000;
  SqueezeOptions so = Options(true);
  so.coarse_fraction = 0.01;
  TestContext c = MakeIndexed(L, Hkv, Hq, d, S, so, 41);
  const int64_t clustered = c.index.num_clustered;
  std::mt19937 gen(42);
  for (double budget : {0.05, 0.1}) {
    SelectionOptions o;
    o.budget = budget;
    o.hierarchical = true;
    o.coarse_keep = 0.4;
    o.budget_policy = BudgetPolicy::kPerStep;
    SqueezedFixedContextAttention att(c.index, o);
    EXPECT_EQ(att.policy().kind, ContextAttentionPolicy::Kind::kHost);  // selected on the host
    for (int n : {1, 4}) {
      std::vector<float> q = RandomQueries(n, Hq, d, gen);
      for (float& x : q) x *= 2.0f;
      for (int l = 0; l < L; ++l) {
        LayerSelection out;
        att.SelectAndRecord(l, q.data(), n, &out);
        ASSERT_EQ(out.candidates.size(), static_cast<size_t>(Hkv));
        // Coarse level, by brute force in double: the pooled prefix by score whose keys come
        // closest to coarse_keep of the layer's keys; the candidates are its fine clusters.
        const PooledLevel coarse = ScoreLevel(c.index, l, q.data(), n, true, nullptr);
        std::vector<std::tuple<double, int, int>> order;  // (-score, head, coarse cluster)
        for (int h = 0; h < Hkv; ++h) {
          for (size_t g = 0; g < coarse.ids[h].size(); ++g) {
            order.emplace_back(-coarse.score[h][g], h, static_cast<int>(g));
          }
        }
        std::sort(order.begin(), order.end());
        const double coarse_target = 0.4 * Hkv * clustered;
        size_t cut = 0;  // the first `cut` of `order` are kept
        for (int64_t keys = 0; cut < order.size(); ++cut) {
          const auto& [neg, h, g] = order[cut];
          const int64_t next = keys + c.index.head(l, h).coarse_sizes[g];
          if (next - coarse_target > coarse_target - keys) break;  // closer without it
          keys = next;
        }
        std::vector<std::vector<bool>> coarse_kept(Hkv);
        std::vector<std::vector<int>> candidates(Hkv);
        for (int h = 0; h < Hkv; ++h) coarse_kept[h].assign(coarse.ids[h].size(), false);
        for (size_t i = 0; i < cut; ++i) {
          const auto& [neg, h, g] = order[i];
          coarse_kept[h][g] = true;
          const SqueezeHeadIndex& head = c.index.head(l, h);
          for (int f = head.coarse_offsets[g]; f < head.coarse_offsets[g + 1]; ++f) {
            candidates[h].push_back(f);
          }
        }
        ExpectPooledPrefix(coarse, coarse_kept, coarse_target, "coarse");
        int64_t candidate_keys = 0;
        for (int h = 0; h < Hkv; ++h) {
          EXPECT_EQ(out.candidates[h], static_cast<int32_t>(candidates[h].size())) << "head " << h;
          std::sort(candidates[h].begin(), candidates[h].end());
          for (int f : candidates[h]) candidate_keys += c.index.head(l, h).sizes[f];
        }
        // Fine level among the candidates, normalised among themselves.
        const PooledLevel fine = ScoreLevel(c.index, l, q.data(), n, false, &candidates);
        std::vector<std::vector<bool>> fine_kept(Hkv);
        for (int h = 0; h < Hkv; ++h) {
          const std::vector<bool> kept = KeptClusters(c.index.head(l, h), out.ranges[h]);
          for (int f = 0; f < c.index.head(l, h).num_clusters(); ++f) {
            if (kept[f]) {
              EXPECT_TRUE(std::binary_search(candidates[h].begin(), candidates[h].end(), f))
                  << "fine cluster " << f << " kept outside the candidates";
            }
          }
          for (int f : candidates[h]) fine_kept[h].push_back(kept[f]);
        }
        const double target = std::min<double>(budget * Hkv * clustered, candidate_keys);
        ExpectPooledPrefix(fine, fine_kept, target, "fine");
      }
    }
  }
}

TEST(SelectionTest, MassSelectionKeepsTheTopClustersUpToTheTargetMass) {
  const int L = 2, Hkv = 2, Hq = 8, d = 16, S = 1500;
  TestContext c = MakeIndexed(L, Hkv, Hq, d, S, Options(false), 21);
  std::mt19937 gen(5);
  const std::vector<float> q = RandomQueries(3, Hq, d, gen);
  for (double mass : {0.05, 0.3, 0.7, 0.95}) {
    SelectionOptions o;
    o.mass = mass;
    ASSERT_TRUE(ValidateSelectionOptions(c.index, o).ok());
    SqueezedFixedContextAttention sel(c.index, o);
    LayerSelection out;
    for (int l = 0; l < L; ++l) {
      sel.SelectAndRecord(l, q.data(), 3, &out);
      for (int h = 0; h < Hkv; ++h) {
        ExpectWellFormed(out.ranges[h], S);
        const SqueezeHeadIndex& head = c.index.head(l, h);
        std::vector<const float*> cents;
        std::vector<int> sizes;
        for (int k = 0; k < head.num_clusters(); ++k) {
          cents.push_back(&head.centroids[static_cast<size_t>(k) * d]);
          sizes.push_back(head.sizes[k]);
        }
        const std::vector<double> score = ScoresInDouble(c.index, q.data(), 3, h, cents, sizes);
        const std::vector<bool> kept = KeptClusters(head, out.ranges[h]);
        // last_mass: the mass of the lowest-scored kept cluster, the last one added.
        double kept_mass = 0, min_kept = 1e300, max_dropped = -1, last_mass = 0;
        for (int k = 0; k < head.num_clusters(); ++k) {
          if (kept[k]) {
            kept_mass += score[k] * sizes[k];
            if (score[k] < min_kept) {
              min_kept = score[k];
              last_mass = score[k] * sizes[k];
            }
          } else {
            max_dropped = std::max(max_dropped, score[k]);
          }
        }
        // Reaches the target, without a superfluous cluster, keeping the best-scored ones.
        EXPECT_GE(kept_mass, mass - 1e-5) << "mass " << mass;
        EXPECT_LT(kept_mass - last_mass, mass + 1e-5) << "mass " << mass;
        EXPECT_GE(min_kept, max_dropped * (1 - 1e-5)) << "mass " << mass;
      }
    }
  }
  // The estimated masses of one head sum to 1, so mass 1 keeps every cluster.
  SelectionOptions all;
  all.mass = 1.0;
  SqueezedFixedContextAttention sel(c.index, all);
  LayerSelection out;
  sel.SelectAndRecord(0, q.data(), 3, &out);
  ASSERT_EQ(out.ranges[0].size(), 1u);
  EXPECT_EQ(out.ranges[0][0].begin, 0);
  EXPECT_EQ(out.ranges[0][0].end, S);
  // Out of range or combined with the hierarchical level: refused.
  SelectionOptions bad;
  bad.mass = 0.0;
  EXPECT_FALSE(ValidateSelectionOptions(c.index, bad).ok());
  bad.mass = 1.5;
  EXPECT_FALSE(ValidateSelectionOptions(c.index, bad).ok());
  bad.mass = 0.5;
  bad.hierarchical = true;
  EXPECT_FALSE(ValidateSelectionOptions(c.index, bad).ok());
}

}  // namespace
}  // namespace squeeze
