// BuildSqueezeIndex (engine/squeeze/squeeze_index.h) and its persistence (index_io.h): storage
// order, CSR, hierarchical layout, option validation, round trip and corrupt input.
#include "engine/squeeze/squeeze_index.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "engine/backend/kmeans.h"
#include "engine/squeeze/cluster_scores.h"
#include "engine/squeeze/index_io.h"

namespace squeeze {
namespace {

using ::testing::HasSubstr;

struct TestContext {
  std::shared_ptr<SequenceKV> seq;  // the prefill's KV the copies come from (host fp32)
  ContextKV kv;                     // what Build reorders
  ContextKV original;               // token order, untouched
  QueryCapture capture;
  int num_q_heads = 0;
};

// Keys: a mixture of `directions` random directions per (layer, head) with random norms and
// noise (so clusters exist but are not trivial); values and queries: standard normal.
// The capture holds the last W + extra positions (the extra rows must be ignored).
TestContext MakeContext(int L, int Hkv, int Hq, int d, int S, int W, uint32_t seed,
                        int extra_captured = 0, int directions = 12) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> norm(0.5f, 2.0f);
  std::uniform_int_distribution<int> pick(0, directions - 1);
  auto seq_ptr = std::make_shared<SequenceKV>(KvShape{L, Hkv, d});
  SequenceKV& seq = *seq_ptr;
  EXPECT_TRUE(seq.Reserve(S).ok());
  for (int l = 0; l < L; ++l) {
    for (int h = 0; h < Hkv; ++h) {
      std::vector<float> dirs(static_cast<size_t>(directions) * d);
      for (float& x : dirs) x = normal(gen);
      for (int t = 0; t < S; ++t) {
        const int g = pick(gen);
        const float s = norm(gen);
        float* k = seq.key(l, h, t);
        float* v = seq.value(l, h, t);
        for (int j = 0; j < d; ++j) {
          k[j] = dirs[g * d + j] * s + 0.3f * normal(gen);
          v[j] = normal(gen);
        }
      }
    }
  }
  seq.Commit(S);
  TestContext c;
  c.seq = seq_ptr;
  c.kv = ContextKV::FromSequence(seq, S);
  c.original = c.kv;
  c.num_q_heads = Hq;
  const int first = std::max(0, S - W - extra_captured);
  for (int p = first; p < S; ++p) c.capture.positions.push_back(p);
  c.capture.q.resize(L);
  for (int l = 0; l < L; ++l) {
    c.capture.q[l].resize(c.capture.positions.size() * Hq * d);
    for (float& x : c.capture.q[l]) x = normal(gen);
  }
  return c;
}

SqueezeOptions Options(int window, int sinks, bool hierarchical) {
  SqueezeOptions o;
  o.window = window;
  o.sinks = sinks;
  o.hierarchical = hierarchical;
  o.centroid_fraction = 0.05;
  o.coarse_fraction = 0.02;
  o.seed = 17;
  return o;
}

// Checks storage order and the CSR of every (layer, head) against the original context.
void CheckLayout(const SqueezeIndex& index, const ContextKV& kv, const ContextKV& original) {
  const int L = index.num_layers, Hkv = index.num_kv_heads, d = index.head_dim;
  const int S = index.num_tokens, sinks = index.sinks, W = index.window, M = index.num_clustered;
  ASSERT_EQ(sinks + M + W, S);
  ASSERT_EQ(index.heads.size(), static_cast<size_t>(L) * Hkv);
  for (int l = 0; l < L; ++l) {
    for (int h = 0; h < Hkv; ++h) {
      SCOPED_TRACE(testing::Message() << "layer " << l << " head " << h);
      const int32_t* tok = &kv.token_of[(static_cast<size_t>(l) * Hkv + h) * S];
      // token_of is a permutation; rows hold the original token's key and value.
      std::vector<int32_t> sorted(tok, tok + S);
      std::sort(sorted.begin(), sorted.end());
      for (int t = 0; t < S; ++t) ASSERT_EQ(sorted[t], t);
      for (int r = 0; r < S; ++r) {
        ASSERT_EQ(0, std::memcmp(kv.key(l, h, r), original.key(l, h, tok[r]), 4 * d));
        ASSERT_EQ(0, std::memcmp(kv.value(l, h, r), original.value(l, h, tok[r]), 4 * d));
      }
      // Sinks first and window last, both in token order.
      for (int r = 0; r < sinks; ++r) EXPECT_EQ(tok[r], r);
      for (int r = S - W; r < S; ++r) EXPECT_EQ(tok[r], r);

      const SqueezeHeadIndex& head = index.head(l, h);
      const int C = head.num_clusters();
      ASSERT_EQ(head.offsets.size(), static_cast<size_t>(C) + 1);
      ASSERT_EQ(head.centroids.size(), static_cast<size_t>(C) * d);
      EXPECT_EQ(head.offsets.front(), sinks);
      EXPECT_EQ(head.offsets.back(), S - W);
      if (M > 0) {
        EXPECT_GE(C, 1);
        EXPECT_LE(C, NumClustersFor(index.options.centroid_fraction, M));
      }
      int64_t sum = 0;
      for (int c = 0; c < C; ++c) {
        EXPECT_EQ(head.sizes[c], head.offsets[c + 1] - head.offsets[c]);
        EXPECT_GE(head.sizes[c], 1);
        sum += head.sizes[c];
        // Rows of a cluster in token order; its centroid is the mean of its raw keys.
        std::vector<double> mean(d, 0.0);
        for (int r = head.offsets[c]; r < head.offsets[c + 1]; ++r) {
          if (r > head.offsets[c]) {
            EXPECT_LT(tok[r - 1], tok[r]);
          }
          for (int j = 0; j < d; ++j) mean[j] += kv.key(l, h, r)[j];
        }
        for (int j = 0; j < d; ++j) {
          mean[j] /= head.sizes[c];
          EXPECT_NEAR(head.centroids[c * d + j], mean[j], 1e-4 * (1 + std::abs(mean[j])));
        }
      }
      EXPECT_EQ(sum, M);

      if (!index.hierarchical()) {
        EXPECT_TRUE(head.coarse_offsets.empty());
        continue;
      }
      const int C1 = head.num_coarse();
      ASSERT_EQ(head.coarse_offsets.size(), static_cast<size_t>(C1) + 1);
      ASSERT_EQ(head.coarse_centroids.size(), static_cast<size_t>(C1) * d);
      EXPECT_EQ(head.coarse_offsets.front(), 0);
      EXPECT_EQ(head.coarse_offsets.back(), C);
      if (M > 0) {
        EXPECT_GE(C1, 1);
        EXPECT_LE(C1, NumClustersFor(index.options.coarse_fraction, M));
      }
      for (int g = 0; g < C1; ++g) {
        const int f0 = head.coarse_offsets[g], f1 = head.coarse_offsets[g + 1];
        ASSERT_LT(f0, f1);
        EXPECT_EQ(head.coarse_sizes[g], head.offsets[f1] - head.offsets[f0]);
        // Unweighted mean of the member fine centroids.
        for (int j = 0; j < d; ++j) {
          double mean = 0;
          for (int f = f0; f < f1; ++f) mean += head.centroids[f * d + j];
          mean /= (f1 - f0);
          EXPECT_NEAR(head.coarse_centroids[g * d + j], mean, 1e-4 * (1 + std::abs(mean)));
        }
      }
    }
  }
}

TEST(SqueezeIndexTest, FlatBuildReordersIntoClusterOrder) {
  TestContext c = MakeContext(2, 2, 4, 16, 700, 40, 1, /*extra_captured=*/25);
  std::vector<std::string> stages;
  auto index = BuildSqueezeIndex(&c.kv, c.capture, c.num_q_heads, Options(40, 5, false),
                                 [&](std::string_view stage, double f) {
                                   EXPECT_GT(f, 0.0);
                                   EXPECT_LE(f, 1.0);
                                   stages.emplace_back(stage);
                                 });
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ(index->num_clustered, 700 - 45);
  EXPECT_LE(index->num_centroids(), 4 * NumClustersFor(0.05, 655));
  EXPECT_GT(index->num_centroids(), 4 * NumClustersFor(0.05, 655) / 2);
  CheckLayout(*index, c.kv, c.original);
  EXPECT_EQ(stages,
            (std::vector<std::string>{"clustering", "clustering", "calibrating", "calibrating"}));
  EXPECT_EQ(index->fine_scores.total_keys(), 4 * 655);
  EXPECT_TRUE(index->coarse_scores.empty());
}

TEST(SqueezeIndexTest, HierarchicalCoarseClustersAreContiguous) {
  TestContext c = MakeContext(2, 1, 2, 16, 900, 30, 2);
  auto index = BuildSqueezeIndex(&c.kv, c.capture, c.num_q_heads, Options(30, 2, true));
  ASSERT_TRUE(index.ok()) << index.status();
  CheckLayout(*index, c.kv, c.original);
  EXPECT_GT(index->num_coarse_centroids(), 2);
  EXPECT_EQ(index->coarse_scores.total_keys(), 2 * 868);
}

TEST(SqueezeIndexTest, BuildIsDeterministicForASeed) {
  TestContext a = MakeContext(1, 2, 2, 8, 400, 20, 3);
  TestContext b = a;
  auto ia = BuildSqueezeIndex(&a.kv, a.capture, 2, Options(20, 0, true));
  auto ib = BuildSqueezeIndex(&b.kv, b.capture, 2, Options(20, 0, true));
  ASSERT_TRUE(ia.ok() && ib.ok());
  EXPECT_TRUE(*ia == *ib);
  EXPECT_EQ(a.kv.k, b.kv.k);
  EXPECT_EQ(a.kv.token_of, b.kv.token_of);
}

// The CPU reference behind the solver interface, recording the problems and limits it is given.
class RecordingSolver final : public KMeansSolver {
 public:
  struct Call {
    int n = 0;
    int max_iterations = 0;
    double min_changed_fraction = 0.0;
  };
  KMeansResult Run(const float* points, int n, int d, int k, KMeansLimits limits,
                   std::mt19937_64& rng) override {
    calls.push_back({n, limits.max_iterations, limits.min_changed_fraction});
    return SphericalKMeans(points, n, d, k, limits, rng);
  }
  std::vector<Call> calls;
};

// kmeans_min_changed reaches the k-means of both levels (the fine one per (layer, head), the
// coarse one on the fine centroids), beside max_iterations; the index is the CPU build's.
TEST(SqueezeIndexTest, KMeansMinChangedReachesBothLevels) {
  TestContext a = MakeContext(2, 2, 4, 8, 600, 20, 21);
  TestContext b = a;
  SqueezeOptions o = Options(20, 2, true);
  o.max_iterations = 40;
  o.kmeans_min_changed = 0.05;
  RecordingSolver solver;
  auto with_solver = BuildSqueezeIndex(&a.kv, a.capture, 4, o, nullptr, nullptr, &solver);
  auto on_cpu = BuildSqueezeIndex(&b.kv, b.capture, 4, o);
  ASSERT_TRUE(with_solver.ok()) << with_solver.status();
  ASSERT_TRUE(on_cpu.ok()) << on_cpu.status();
  EXPECT_TRUE(*with_solver == *on_cpu);
  CheckLayout(*with_solver, a.kv, a.original);
  const int M = 600 - 22;
  int fine = 0, coarse = 0;
  for (const RecordingSolver::Call& call : solver.calls) {
    (call.n == M ? fine : coarse) += 1;
    EXPECT_EQ(call.max_iterations, 40);
    EXPECT_EQ(call.min_changed_fraction, 0.05);
  }
  EXPECT_EQ(fine, 2 * 2);
  EXPECT_EQ(coarse, 2 * 2);
}

// The CUDA backend's host copy is bf16. The index built from it is the index of the fp32 keys
// the device holds (the same values rounded to bf16): k-means, calibration and the row reorder
// see the same inputs, and the reordered bf16 rows are those fp32 rows, bit for bit.
TEST(SqueezeIndexTest, Bf16HostCopyGivesTheIndexOfTheDeviceRoundedKeys) {
  for (bool hierarchical : {false, true}) {
    SCOPED_TRACE(hierarchical ? "hierarchical" : "flat");
    const TestContext c = MakeContext(2, 2, 4, 16, 500, 30, 21);
    ContextKV bf16 = c.kv.ConvertedTo(DType::kBF16);
    ContextKV rounded = bf16.ConvertedTo(DType::kF32);  // fp32 storage of the bf16 values
    ASSERT_EQ(bf16.dtype(), DType::kBF16);
    ASSERT_NE(rounded.k, c.kv.k);  // rounding changed the keys: the comparison means something
    const SqueezeOptions o = Options(30, 2, hierarchical);
    auto from_bf16 = BuildSqueezeIndex(&bf16, c.capture, c.num_q_heads, o);
    auto from_rounded = BuildSqueezeIndex(&rounded, c.capture, c.num_q_heads, o);
    ASSERT_TRUE(from_bf16.ok()) << from_bf16.status();
    ASSERT_TRUE(from_rounded.ok()) << from_rounded.status();
    EXPECT_GT(from_bf16->num_centroids(), 0);
    EXPECT_TRUE(*from_bf16 == *from_rounded);
    EXPECT_EQ(bf16.dtype(), DType::kBF16);  // reordered in place, still bf16
    EXPECT_EQ(bf16.token_of, rounded.token_of);
    EXPECT_EQ(bf16.ConvertedTo(DType::kF32).k, rounded.k);
    EXPECT_EQ(bf16.ConvertedTo(DType::kF32).v, rounded.v);
    CheckLayout(*from_rounded, rounded,
                c.original.ConvertedTo(DType::kBF16).ConvertedTo(DType::kF32));
  }
}

TEST(SqueezeIndexTest, NonFiniteBf16KeyIsRefused) {
  const TestContext c = MakeContext(1, 2, 4, 8, 200, 20, 22);
  ContextKV kv = c.kv.ConvertedTo(DType::kBF16);
  kv.k.bf16()[kv.Offset(0, 1, 50) + 2] = 0x7FC0;  // NaN
  const HostKvTensor before = kv.k;
  auto index = BuildSqueezeIndex(&kv, c.capture, 4, Options(20, 0, false));
  ASSERT_FALSE(index.ok());
  EXPECT_THAT(std::string(index.status().message()),
              HasSubstr("context keys: non-finite value nan at layer 0, head 1"));
  EXPECT_EQ(kv.k, before);
}

// Several heads with a bad key (scanned side by side): the first in (layer, head) order is named.
TEST(SqueezeIndexTest, FirstNonFiniteHeadInOrderIsNamed) {
  const TestContext c = MakeContext(3, 2, 4, 8, 200, 20, 23);
  ContextKV kv = c.kv.ConvertedTo(DType::kBF16);
  kv.k.bf16()[kv.Offset(2, 0, 10)] = 0x7F80;       // +inf, layer 2
  kv.k.bf16()[kv.Offset(1, 1, 150) + 5] = 0xFFC0;  // NaN, layer 1 head 1
  kv.k.bf16()[kv.Offset(1, 0, 170)] = 0xFF80;      // -inf, layer 1 head 0: the first
  auto index = BuildSqueezeIndex(&kv, c.capture, 4, Options(20, 0, false));
  ASSERT_FALSE(index.ok());
  EXPECT_THAT(std::string(index.status().message()),
              HasSubstr("context keys: non-finite value -inf at layer 1, head 0 (element 1360)"));
}

// A registration's path: the host copy made beside the plan, which reads the sequence itself;
// the same index and the same rows as BuildSqueezeIndex on FromSequence's copy.
TEST(SqueezeIndexTest, IndexedContextFromTheSequenceEqualsBuildOnItsCopy) {
  for (bool hierarchical : {false, true}) {
    SCOPED_TRACE(hierarchical ? "hierarchical" : "flat");
    TestContext c = MakeContext(2, 2, 4, 16, 600, 30, 31);
    const SqueezeOptions o = Options(30, 3, hierarchical);
    BuildTimings timings;
    auto built = BuildIndexedContext(*c.seq, 600, c.capture, 4, o, nullptr, &timings);
    ASSERT_TRUE(built.ok()) << built.status();
    auto index = BuildSqueezeIndex(&c.kv, c.capture, 4, o);
    ASSERT_TRUE(index.ok()) << index.status();
    EXPECT_GT(built->index.num_centroids(), 0);
    EXPECT_TRUE(built->index == *index);
    EXPECT_EQ(built->kv.k, c.kv.k);
    EXPECT_EQ(built->kv.v, c.kv.v);
    EXPECT_EQ(built->kv.token_of, c.kv.token_of);
    CheckLayout(built->index, built->kv, c.original);
    EXPECT_GT(timings.host_copy_seconds, 0.0);
  }
}

// A plan from the sequence alone leaves the keys' check to ApplySqueezePlan, which also refuses
// a copy of another shape; neither refusal touches the copy.
TEST(SqueezeIndexTest, ApplyChecksTheCopyThePlanDidNotRead) {
  TestContext c = MakeContext(1, 2, 4, 8, 300, 20, 32);
  const ContextKeys keys{.shape = c.kv.shape, .num_tokens = 300, .device = c.seq.get()};
  auto plan = PlanSqueezeIndex(keys, c.capture, 4, Options(20, 0, false));
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_FALSE(plan->keys_checked);
  EXPECT_EQ(c.kv.k, c.original.k);  // planning reads, never moves

  TestContext shorter = MakeContext(1, 2, 4, 8, 299, 20, 32);
  const ContextKV shorter_before = shorter.kv;
  auto wrong = ApplySqueezePlan(*plan, &shorter.kv);
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(wrong.status().message()), HasSubstr("is not the planned"));
  EXPECT_EQ(shorter.kv.k, shorter_before.k);

  ContextKV bad = c.kv;
  bad.k.f32()[bad.Offset(0, 1, 40) + 3] = std::nanf("");
  const HostKvTensor bad_before = bad.k;
  auto refused = ApplySqueezePlan(*plan, &bad);
  ASSERT_FALSE(refused.ok());
  EXPECT_THAT(std::string(refused.status().message()),
              HasSubstr("context keys: non-finite value nan at layer 0, head 1"));
  EXPECT_EQ(bad.k, bad_before);

  auto applied = ApplySqueezePlan(*std::move(plan), &c.kv);
  ASSERT_TRUE(applied.ok()) << applied.status();
  CheckLayout(*applied, c.kv, c.original);
}

// A WindowScorer on the host: ClusterScorer per head, as CalibrateSqueezeIndex scores without one
// (so the device path's layer-at-a-time calibration can be compared bit for bit). Fails at
// call number `fail_at_call` (counting from 0) when set.
class HostWindowScorer final : public WindowScorer {
 public:
  explicit HostWindowScorer(int fail_at_call = -1) : fail_at_call_(fail_at_call) {}
  absl::Status Average(const float* q, int W, int Hq, int d,
                       std::span<const std::span<const float>> centroids,
                       std::span<const std::span<const int32_t>> sizes,
                       std::span<const std::span<float>> scores) override {
    if (calls_++ == fail_at_call_) return absl::InternalError("window scorer failed on purpose");
    const int Hkv = static_cast<int>(centroids.size()), G = Hq / Hkv;
    for (int h = 0; h < Hkv; ++h) {
      scorer_.Average(q + static_cast<size_t>(h) * G * d, W, G, static_cast<size_t>(Hq) * d,
                      centroids[h].data(), sizes[h].data(), static_cast<int>(sizes[h].size()), d,
                      scores[h].data());
    }
    return absl::OkStatus();
  }
  int calls() const { return calls_; }

 private:
  ClusterScorer scorer_;
  int calls_ = 0;
  int fail_at_call_;
};

// With a device scorer the plan calibrates each layer on its own thread as the layers are built:
// the same distributions as the host calibration after the clustering; a scorer error is the
// plan's error (and nothing hangs).
TEST(SqueezeIndexTest, LayerByLayerCalibrationEqualsTheWholeIndexOne) {
  for (const bool hierarchical : {false, true}) {
    SCOPED_TRACE(hierarchical ? "hierarchical" : "flat");
    TestContext c = MakeContext(3, 2, 4, 8, 400, 20, 41);
    const ContextKeys keys{.shape = c.kv.shape, .num_tokens = 400, .host = &c.kv};
    const SqueezeOptions o = Options(20, 2, hierarchical);
    auto host = PlanSqueezeIndex(keys, c.capture, 4, o);
    HostWindowScorer scorer;
    auto layered = PlanSqueezeIndex(keys, c.capture, 4, o, nullptr, nullptr, nullptr, &scorer);
    ASSERT_TRUE(host.ok()) << host.status();
    ASSERT_TRUE(layered.ok()) << layered.status();
    EXPECT_EQ(scorer.calls(), hierarchical ? 6 : 3);  // each layer once, per level
    EXPECT_EQ(layered->index.fine_scores, host->index.fine_scores);
    EXPECT_EQ(layered->index.coarse_scores, host->index.coarse_scores);
    EXPECT_EQ(layered->perms, host->perms);

    for (const int fail_at : {0, 2}) {
      HostWindowScorer failing(fail_at);
      auto failed = PlanSqueezeIndex(keys, c.capture, 4, o, nullptr, nullptr, nullptr, &failing);
      ASSERT_FALSE(failed.ok());
      EXPECT_THAT(std::string(failed.status().message()), HasSubstr("failed on purpose"));
    }
  }
}

// A non-finite key in the sequence: the clustering sees it first, but the error names the key.
TEST(SqueezeIndexTest, IndexedContextNamesANonFiniteKeyOfTheSequence) {
  TestContext c = MakeContext(2, 2, 4, 8, 300, 20, 33);
  c.seq->key(1, 0, 77)[3] = INFINITY;
  auto built = BuildIndexedContext(*c.seq, 300, c.capture, 4, Options(20, 0, false));
  ASSERT_FALSE(built.ok());
  EXPECT_EQ(built.status().code(), absl::StatusCode::kInvalidArgument) << built.status();
  EXPECT_THAT(std::string(built.status().message()),
              HasSubstr("context keys: non-finite value inf at layer 1, head 0"));
}

TEST(SqueezeIndexTest, NothingToClusterIsValid) {
  TestContext c = MakeContext(1, 2, 4, 8, 50, 40, 4);
  auto index = BuildSqueezeIndex(&c.kv, c.capture, 4, Options(40, 10, true));
  ASSERT_TRUE(index.ok()) << index.status();
  EXPECT_EQ(index->num_clustered, 0);
  EXPECT_EQ(index->num_centroids(), 0);
  EXPECT_TRUE(index->fine_scores.empty());
  CheckLayout(*index, c.kv, c.original);
  // Window 0 is fine when nothing is clustered; no capture is needed.
  TestContext d = MakeContext(1, 1, 1, 8, 30, 0, 5);
  auto all_sinks = BuildSqueezeIndex(&d.kv, QueryCapture{}, 1, Options(0, 30, false));
  ASSERT_TRUE(all_sinks.ok()) << all_sinks.status();
  EXPECT_EQ(all_sinks->num_clustered, 0);
}

TEST(SqueezeIndexTest, InvalidOptionsNameTheOption) {
  TestContext c = MakeContext(1, 1, 2, 8, 200, 20, 6);
  struct Case {
    SqueezeOptions options;
    std::string name;
  };
  std::vector<Case> cases;
  auto add = [&](auto mutate, const char* name) {
    SqueezeOptions o = Options(20, 0, false);
    mutate(o);
    cases.push_back({o, name});
  };
  add([](SqueezeOptions& o) { o.centroid_fraction = 0; }, "centroid_fraction");
  add([](SqueezeOptions& o) { o.centroid_fraction = 1.5; }, "centroid_fraction");
  add([](SqueezeOptions& o) { o.centroid_fraction = std::nan(""); }, "centroid_fraction");
  add([](SqueezeOptions& o) { o.coarse_fraction = -0.1; }, "coarse_fraction");
  add([](SqueezeOptions& o) { o.coarse_fraction = 2; }, "coarse_fraction");
  add([](SqueezeOptions& o) { o.window = -1; }, "window");
  add([](SqueezeOptions& o) { o.sinks = -3; }, "sinks");
  add([](SqueezeOptions& o) { o.max_iterations = 0; }, "max_iterations");
  add([](SqueezeOptions& o) { o.kmeans_min_changed = -0.01; }, "kmeans_min_changed");
  add([](SqueezeOptions& o) { o.kmeans_min_changed = 1.0; }, "kmeans_min_changed");
  add([](SqueezeOptions& o) { o.kmeans_min_changed = std::nan(""); }, "kmeans_min_changed");
  add([](SqueezeOptions& o) { o.window = 150, o.sinks = 51; }, "sinks (51) + window (150)");
  add([](SqueezeOptions& o) { o.window = 0; }, "window must be >= 1 to calibrate");
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name);
    ContextKV kv = c.kv;
    auto index = BuildSqueezeIndex(&kv, c.capture, 2, k.options);
    ASSERT_FALSE(index.ok());
    EXPECT_EQ(index.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(index.status().message()), HasSubstr(k.name));
    EXPECT_EQ(kv.token_of, c.original.token_of);  // untouched
    EXPECT_EQ(kv.k, c.original.k);
  }
}

TEST(SqueezeIndexTest, BadInputsAreRejectedAndLeaveTheContextUntouched) {
  TestContext c = MakeContext(2, 2, 4, 8, 200, 20, 7);
  const SqueezeOptions o = Options(20, 0, false);
  {  // Window positions missing from the capture.
    QueryCapture capture = c.capture;
    capture.positions.back() += 1;
    ContextKV kv = c.kv;
    auto index = BuildSqueezeIndex(&kv, capture, 4, o);
    ASSERT_FALSE(index.ok());
    EXPECT_THAT(std::string(index.status().message()), HasSubstr("positions 180..199"));
  }
  {  // Wrong number of query floats.
    QueryCapture capture = c.capture;
    capture.q[1].pop_back();
    ContextKV kv = c.kv;
    auto index = BuildSqueezeIndex(&kv, capture, 4, o);
    ASSERT_FALSE(index.ok());
    EXPECT_THAT(std::string(index.status().message()), HasSubstr("layer 1"));
  }
  {  // Non-finite key.
    ContextKV kv = c.kv;
    kv.k.f32()[kv.Offset(1, 1, 7) + 3] = std::numeric_limits<float>::infinity();
    const HostKvTensor before = kv.k;
    auto index = BuildSqueezeIndex(&kv, c.capture, 4, o);
    ASSERT_FALSE(index.ok());
    EXPECT_THAT(std::string(index.status().message()), HasSubstr("context keys"));
    EXPECT_EQ(kv.k, before);
  }
  {  // Hq not a multiple of Hkv.
    ContextKV kv = c.kv;
    EXPECT_FALSE(BuildSqueezeIndex(&kv, c.capture, 3, o).ok());
  }
  {  // Already in cluster order: building twice is refused.
    ContextKV kv = c.kv;
    ASSERT_TRUE(BuildSqueezeIndex(&kv, c.capture, 4, o).ok());
    auto again = BuildSqueezeIndex(&kv, c.capture, 4, o);
    ASSERT_FALSE(again.ok());
    EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
  }
}

// FNV-1a 64, as the index format uses, to forge a valid checksum over corrupted bytes.
uint64_t Fnv(const std::string& s, size_t n) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < n; ++i) {
    h ^= static_cast<unsigned char>(s[i]);
    h *= 0x100000001b3ull;
  }
  return h;
}

std::string Serialize(const SqueezeIndex& index) {
  std::ostringstream out;
  EXPECT_TRUE(WriteSqueezeIndex(index, out).ok());
  return out.str();
}

absl::StatusOr<SqueezeIndex> Parse(const std::string& bytes) {
  std::istringstream in(bytes);
  return ReadSqueezeIndex(in);
}

class IndexIoTest : public ::testing::TestWithParam<bool> {};

TEST_P(IndexIoTest, RoundTripAndCorruption) {
  const bool hierarchical = GetParam();
  TestContext c = MakeContext(2, 2, 4, 8, 300, 20, 8);
  SqueezeOptions options = Options(20, 3, hierarchical);
  options.kmeans_min_changed = 0.01;  // stored since version 2
  auto index = BuildSqueezeIndex(&c.kv, c.capture, 4, options);
  ASSERT_TRUE(index.ok()) << index.status();
  const std::string bytes = Serialize(*index);

  auto back = Parse(bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(*back == *index);
  EXPECT_EQ(back->options.kmeans_min_changed, 0.01);

  // Embedded in a larger stream: reading stops at the end of the index.
  {
    std::istringstream in(bytes + "TRAILER");
    auto embedded = ReadSqueezeIndex(in);
    ASSERT_TRUE(embedded.ok()) << embedded.status();
    std::string rest;
    in >> rest;
    EXPECT_EQ(rest, "TRAILER");
  }

  // Every truncation fails.
  for (size_t n = 0; n < bytes.size(); ++n) {
    auto r = Parse(bytes.substr(0, n));
    ASSERT_FALSE(r.ok()) << "truncated to " << n;
  }
  EXPECT_EQ(Parse(std::string("XXXXXXXXXXXX")).status().code(), absl::StatusCode::kInvalidArgument);

  // Any single-byte change fails (checksum).
  std::mt19937 gen(9);
  std::uniform_int_distribution<size_t> pos(0, bytes.size() - 1);
  std::uniform_int_distribution<int> flip(1, 255);
  for (int i = 0; i < 500; ++i) {
    std::string bad = bytes;
    bad[pos(gen)] ^= static_cast<char>(flip(gen));
    ASSERT_FALSE(Parse(bad).ok());
  }

  // Forged checksums: structural validation alone must reject or accept safely. Changes in
  // the counts/offsets region are the dangerous ones; accepted results must still be sane.
  const size_t header = 8 + 4 + 8;
  std::uniform_int_distribution<size_t> body_pos(header, bytes.size() - 9);
  int rejected = 0;
  for (int i = 0; i < 2000; ++i) {
    std::string bad = bytes;
    for (int j = 0; j < 1 + i % 3; ++j) bad[body_pos(gen)] ^= static_cast<char>(flip(gen));
    const uint64_t h = Fnv(bad, bad.size() - 8);
    for (int b = 0; b < 8; ++b) bad[bad.size() - 8 + b] = static_cast<char>(h >> (8 * b));
    auto r = Parse(bad);
    if (!r.ok()) {
      ++rejected;
      continue;
    }
    // Accepted: the invariants the selection relies on hold.
    for (const SqueezeHeadIndex& head : r->heads) {
      ASSERT_EQ(head.offsets.front(), r->sinks);
      ASSERT_EQ(head.offsets.back(), r->num_tokens - r->window);
      ASSERT_EQ(head.centroids.size(), head.sizes.size() * r->head_dim);
    }
  }
  EXPECT_GT(rejected, 0);
}

// A version-1 index (the code before kmeans_min_changed) is a version-2 one without the
// option's f64, which follows the header's u8 hierarchical (index_io.h): made so here, it reads
// with the option 0, the rule it was built with; versions outside [1, 2] are refused by name.
TEST_P(IndexIoTest, Version1IndexReadsWithTheExactKMeansRule) {
  TestContext c = MakeContext(2, 2, 4, 8, 300, 20, 8);
  SqueezeOptions options = Options(20, 3, GetParam());
  options.kmeans_min_changed = 0.02;
  auto index = BuildSqueezeIndex(&c.kv, c.capture, 4, options);
  ASSERT_TRUE(index.ok()) << index.status();
  const std::string v2 = Serialize(*index);
  // magic, version, length; 8 x i32 shape; f64 f64 i32 i32 i32 u64 u8 options.
  const size_t option_at = 8 + 4 + 8 + 8 * 4 + (8 + 8 + 4 + 4 + 4 + 8 + 1);
  double stored = 0;
  std::memcpy(&stored, v2.data() + option_at, 8);
  ASSERT_EQ(stored, 0.02);  // the offset above is the real layout
  std::string v1 = v2.substr(0, option_at) + v2.substr(option_at + 8);
  v1.resize(v1.size() - 8);  // the checksum, recomputed below
  auto put = [&](size_t at, uint64_t value, int bytes) {
    for (int b = 0; b < bytes; ++b) v1[at + b] = static_cast<char>(value >> (8 * b));
  };
  put(8, 1, 4);                    // version
  put(12, v1.size() - 20 + 8, 8);  // bytes that follow, checksum included
  const uint64_t checksum = Fnv(v1, v1.size());
  v1.resize(v1.size() + 8);
  put(v1.size() - 8, checksum, 8);

  auto back = Parse(v1);
  ASSERT_TRUE(back.ok()) << back.status();
  SqueezeIndex want = *index;
  want.options.kmeans_min_changed = 0.0;
  EXPECT_TRUE(*back == want);

  for (uint32_t version : {0u, kSqueezeIndexVersion + 1}) {
    std::string bad = v2;
    std::memcpy(bad.data() + 8, &version, 4);
    auto r = Parse(bad);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << version;
    EXPECT_THAT(std::string(r.status().message()),
                HasSubstr(absl::StrFormat("unsupported version %d (this build reads 1 to %d)",
                                          version, kSqueezeIndexVersion)));
  }
}

INSTANTIATE_TEST_SUITE_P(FlatAndHierarchical, IndexIoTest, ::testing::Bool());

}  // namespace
}  // namespace squeeze
