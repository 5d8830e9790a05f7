// The dropped clusters' attention estimated from their centroids (engine/backend/tail_estimate.h):
// exact when every key of a cluster is its centroid (values arbitrary: only their mean counts),
// and merged with the kept clusters' exact partial it then equals dense attention.
#include "engine/backend/tail_estimate.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "engine/backend/attention_reference.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/backend/fixed_context.h"

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

TEST(TailEstimateTest, DroppedClustersAreTheOnesNoRangeCovers) {
  SqueezeHeadIndex head;
  head.offsets = {4, 10, 12, 20, 31};  // 4 sinks before cluster 0; a window after cluster 3
  head.sizes = {6, 2, 8, 11};
  std::vector<int32_t> dropped;
  // Any order; the sinks' and the window's ranges hold no cluster; a range over two clusters.
  const std::vector<KeyRange> kept = {{31, 40}, {10, 20}, {0, 4}};
  DroppedClusters(head, kept, &dropped);
  EXPECT_EQ(dropped, (std::vector<int32_t>{0, 3}));
  DroppedClusters(head, {}, &dropped);
  EXPECT_EQ(dropped, (std::vector<int32_t>{0, 1, 2, 3}));
  DroppedClusters(head, std::vector<KeyRange>{{4, 31}}, &dropped);
  EXPECT_TRUE(dropped.empty());
}

// The serving path: CpuBackend::Attention with a selector whose policy asks for the estimate.
// Two KV heads of four query heads, clusters of identical keys (so the estimate is exact), a
// causal dynamic part: the kept clusters plus the estimate equal dense attention over the whole
// context, and without the estimate they do not.
class KeepClusters final : public FixedContextAttention {
 public:
  KeepClusters(const ClusterTables& tables, std::vector<std::vector<int32_t>> kept, bool tail)
      : tables_(tables), kept_(std::move(kept)), tail_(tail) {}
  ContextAttentionPolicy policy() const override {
    ContextAttentionPolicy p;
    p.estimate_tail = tail_;
    p.squeezed.tables = tables_;
    return p;
  }
  void Select(int layer, const float*, int, LayerSelection* out) override {
    out->ranges.assign(kept_.size(), {});
    for (size_t h = 0; h < kept_.size(); ++h) {
      const SqueezeHeadIndex& head = tables_.head(layer, static_cast<int>(h));
      for (int c : kept_[h]) out->ranges[h].push_back({head.offsets[c], head.offsets[c + 1]});
    }
  }

 private:
  ClusterTables tables_;
  std::vector<std::vector<int32_t>> kept_;
  bool tail_;
};

TEST(TailEstimateTest, CpuBackendMergesTheEstimateIntoTheFixedPart) {
  constexpr int kHkv = 2, kHq = 4, kN = 3, kPast = 5;
  const std::vector<int> sizes = {9, 4, 15, 6, 11};
  const int S = 45;
  std::mt19937 gen(21);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  SequenceKV seq(KvShape{1, kHkv, kD});
  ASSERT_TRUE(seq.Reserve(S).ok());
  std::vector<SqueezeHeadIndex> heads(kHkv);
  for (int h = 0; h < kHkv; ++h) {
    heads[h].offsets.push_back(0);
    int row = 0;
    for (int n : sizes) {
      std::vector<float> centre(kD);
      for (float& x : centre) x = 1.5f * normal(gen);
      for (int r = 0; r < n; ++r, ++row) {
        for (int i = 0; i < kD; ++i) {
          seq.key(0, h, row)[i] = centre[i];
          seq.value(0, h, row)[i] = normal(gen);
        }
      }
      heads[h].offsets.push_back(row);
      heads[h].sizes.push_back(n);
      heads[h].centroids.insert(heads[h].centroids.end(), centre.begin(), centre.end());
    }
  }
  seq.Commit(S);
  const ContextKV ctx = ContextKV::FromSequence(seq, S);
  BackendCache cache;
  const ClusterTables tables{1, kHkv, kD, S, 0, 0, false, heads, &cache};

  SequenceKV dyn(KvShape{1, kHkv, kD});
  ASSERT_TRUE(dyn.Reserve(kPast + kN).ok());
  for (int h = 0; h < kHkv; ++h) {
    for (int r = 0; r < kPast + kN; ++r) {
      for (int i = 0; i < kD; ++i) {
        dyn.key(0, h, r)[i] = normal(gen);
        dyn.value(0, h, r)[i] = normal(gen);
      }
    }
  }
  dyn.Commit(kPast + kN);
  const ContextKV dyn_rows = ContextKV::FromSequence(dyn, kPast + kN);  // [Hkv][rows][d] view
  std::vector<float> q(static_cast<size_t>(kN) * kHq * kD);
  for (float& x : q) x = normal(gen);

  CpuBackend backend;
  auto run = [&](FixedContextAttention* selector) {
    AttentionParams p;
    p.shape = {kN, kHq, kHkv, kD, 1.0f / std::sqrt(static_cast<float>(kD))};
    p.q = q.data();
    std::vector<float> out(q.size(), std::nanf(""));
    p.out = out.data();
    p.fixed.kv = ctx.Layer(0);
    p.fixed.layer = 0;
    p.fixed.selector = selector;
    if (selector != nullptr) p.fixed.policy = selector->policy();
    std::vector<int32_t> kept_rows(kHkv);
    p.fixed.kept_rows = kept_rows.data();
    p.dynamic.kv = dyn_rows.Layer(0);
    p.dynamic.causal_offset = kPast;
    backend.Attention(p);
    EXPECT_TRUE(backend.Synchronize().ok());
    for (float x : out) EXPECT_FALSE(std::isnan(x));
    return out;
  };
  const std::vector<float> dense = run(nullptr);
  KeepClusters with_tail(tables, {{0, 3}, {2}}, true);
  KeepClusters without(tables, {{0, 3}, {2}}, false);
  EXPECT_LE(RelError(run(&with_tail), dense), 1e-5);
  EXPECT_GT(RelError(run(&without), dense), 1e-2);
  // The mean values are kept with the index for this backend; a second call reads them.
  EXPECT_NE(cache.Get<void>(&backend), nullptr);
  EXPECT_LE(RelError(run(&with_tail), dense), 1e-5);
  // Nothing dropped: the same as without the estimate.
  KeepClusters all(tables, {{0, 1, 2, 3, 4}, {0, 1, 2, 3, 4}}, true);
  EXPECT_LE(RelError(run(&all), dense), 1e-5);

  // An index that does not match the context is an error, not a wrong answer.
  const ClusterTables wrong{1, kHkv, kD, S - 1, 0, 0, false, heads, &cache};
  KeepClusters mismatched(wrong, {{0}, {0}}, true);
  AttentionParams p;
  p.shape = {kN, kHq, kHkv, kD, 0.25f};
  p.q = q.data();
  std::vector<float> out(q.size());
  p.out = out.data();
  p.fixed.kv = ctx.Layer(0);
  p.fixed.layer = 0;
  p.fixed.selector = &mismatched;
  p.fixed.policy = mismatched.policy();
  p.dynamic.kv = dyn_rows.Layer(0);
  p.dynamic.causal_offset = kPast;
  backend.Attention(p);
  EXPECT_EQ(backend.Synchronize().code(), absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace squeeze
