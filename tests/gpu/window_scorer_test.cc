// The calibration's window scores on the GPU (engine/backend/cuda/cuda_window_scorer.h) against
// the CPU reference ClusterScorer::Average (engine/squeeze/cluster_scores.h), and the index
// calibrated with it against the CPU calibration.
//
// Scores: random window queries (|q| up to 3) and centroids (random directions plus a shared
// offset), sizes 1..40, per-head cluster counts that differ (one head without clusters), G 1..8,
// both levels' shapes. The GPU rounds queries and centroids to bf16, so the CPU is given the same
// bf16-rounded values: |gpu - cpu| <= 2e-5 max(cpu over the head) + 1e-8 per score (products
// summed in another order, ex2.approx), and sum_c N_c score_c = 1 within 1e-3. Outputs are
// poisoned (NaN) before the call and must all be finite after it.
// Calibration: an index of a random context calibrated with the GPU scorer covers the same keys,
// and its threshold for each budget 0.02..0.5 keeps that budget within 0.01 by the CPU
// calibration's scores (the CPU scores fp32 values, the GPU their bf16 images).
// Without a CUDA device the binary prints a message and exits with 77 (ctest: skipped).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "engine/backend/cuda/cuda_window_scorer.h"
#include "engine/common/bfloat16.h"
#include "engine/squeeze/calibration.h"
#include "engine/squeeze/cluster_scores.h"
#include "engine/squeeze/squeeze_index.h"
#include "tests/gpu/gpu_test_util.h"

namespace squeeze {
namespace {

using namespace gpu_testing;  // NOLINT(build/namespaces): test helpers

float Bf16Round(float x) { return BFloat16ToFloat32(Float32ToBFloat16(x)); }

void ScoresCase(int W, int G, int d, const std::vector<int>& clusters, uint64_t seed) {
  SCOPED_TRACE(::testing::Message() << "W=" << W << " G=" << G << " d=" << d);
  Rng rng(seed);
  const int hkv = static_cast<int>(clusters.size()), hq = G * hkv;
  std::vector<float> q(static_cast<size_t>(W) * hq * d);
  for (float& x : q) x = Bf16Round(3.0f * rng.Uniform());
  std::vector<std::vector<float>> cent(hkv), got(hkv), ref(hkv);
  std::vector<std::vector<int32_t>> sizes(hkv);
  std::vector<std::span<const float>> cent_view(hkv);
  std::vector<std::span<const int32_t>> size_view(hkv);
  std::vector<std::span<float>> out_view(hkv);
  for (int h = 0; h < hkv; ++h) {
    const int C = clusters[h];
    cent[h].resize(static_cast<size_t>(C) * d);
    for (int c = 0; c < C; ++c) {
      const float bias = 0.5f * rng.Uniform();
      for (int i = 0; i < d; ++i) {
        cent[h][static_cast<size_t>(c) * d + i] =
            Bf16Round(rng.Uniform() + bias * ((i & 1) ? 1.0f : -1.0f));
      }
      sizes[h].push_back(rng.Int(1, 40));
    }
    got[h].assign(C, std::numeric_limits<float>::quiet_NaN());
    ref[h].resize(C);
    cent_view[h] = cent[h];
    size_view[h] = sizes[h];
    out_view[h] = got[h];
  }
  CudaWindowScorer scorer(0);
  const absl::Status st = scorer.Average(q.data(), W, hq, d, cent_view, size_view, out_view);
  ASSERT_TRUE(st.ok()) << st;
  ClusterScorer cpu;
  for (int h = 0; h < hkv; ++h) {
    SCOPED_TRACE(::testing::Message() << "kv head " << h);
    const int C = clusters[h];
    if (C == 0) continue;
    cpu.Average(q.data() + static_cast<size_t>(h) * G * d, W, G, static_cast<size_t>(hq) * d,
                cent[h].data(), sizes[h].data(), C, d, ref[h].data());
    const float top = *std::max_element(ref[h].begin(), ref[h].end());
    double mass_gpu = 0, mass_ref = 0, worst = 0;
    for (int c = 0; c < C; ++c) {
      ASSERT_TRUE(std::isfinite(got[h][c])) << "cluster " << c;
      const double err = std::fabs(static_cast<double>(got[h][c]) - ref[h][c]);
      worst = std::max(worst, err / top);
      EXPECT_LE(err, 2e-5 * top + 1e-8) << "cluster " << c;
      mass_gpu += static_cast<double>(sizes[h][c]) * got[h][c];
      mass_ref += static_cast<double>(sizes[h][c]) * ref[h][c];
    }
    EXPECT_NEAR(mass_gpu, 1.0, 1e-3);
    EXPECT_NEAR(mass_ref, 1.0, 1e-3);
    std::printf("  W=%d G=%d d=%d head %d: %d clusters, max |gpu - cpu| / max cpu = %.2e\n", W, G,
                d, h, C, worst);
  }
}

TEST(CudaWindowScorer, MatchesTheCpuScorer) {
  ScoresCase(100, 4, 128, {6554 / 4, 300, 0, 1}, 1);  // a head without clusters, one with one
  ScoresCase(100, 4, 128, {70, 65}, 2);               // coarse-level sizes
  ScoresCase(37, 1, 64, {500, 129}, 3);
  ScoresCase(20, 8, 96, {1000}, 4);  // d = 96: the mma.sync kernel
}

TEST(CudaWindowScorer, RejectsMismatchedShapes) {
  CudaWindowScorer scorer(0);
  std::vector<float> q(10 * 4 * 64, 0.5f), cent(3 * 64, 0.25f), out(2);
  std::vector<int32_t> sizes = {1, 2, 3};
  const std::vector<std::span<const float>> c = {cent};
  const std::vector<std::span<const int32_t>> s = {sizes};
  const std::vector<std::span<float>> o = {out};  // 2 outputs for 3 clusters
  const absl::Status st = scorer.Average(q.data(), 10, 4, 64, c, s, o);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
}

// The index of a random context calibrated on the GPU and on the CPU.
TEST(CudaWindowScorer, CalibratesTheIndexAsTheCpuDoes) {
  for (bool hierarchical : {false, true}) {
    SCOPED_TRACE(hierarchical ? "hierarchical" : "flat");
    const int L = 2, Hkv = 2, Hq = 8, d = 64, S = 3000, W = 50;
    Rng rng(9);
    SequenceKV seq(KvShape{L, Hkv, d});
    ASSERT_TRUE(seq.Reserve(S).ok());
    for (int l = 0; l < L; ++l) {
      for (int h = 0; h < Hkv; ++h) {
        std::vector<float> dirs(16 * d);
        for (float& x : dirs) x = rng.Uniform();
        for (int t = 0; t < S; ++t) {
          const int g = rng.Int(0, 15);
          for (int i = 0; i < d; ++i) {
            seq.key(l, h, t)[i] = 2.0f * dirs[g * d + i] + 0.3f * rng.Uniform();
            seq.value(l, h, t)[i] = rng.Uniform();
          }
        }
      }
    }
    seq.Commit(S);
    QueryCapture capture;
    for (int p = S - W; p < S; ++p) capture.positions.push_back(p);
    capture.q.resize(L);
    for (auto& layer : capture.q) {
      layer.resize(static_cast<size_t>(W) * Hq * d);
      for (float& x : layer) x = rng.Uniform();
    }
    SqueezeOptions o;
    o.window = W;
    o.hierarchical = hierarchical;
    o.coarse_fraction = 0.01;
    ContextKV a = ContextKV::FromSequence(seq, S), b = a;
    auto cpu = BuildSqueezeIndex(&a, capture, Hq, o);
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    // The same clusters, calibrated again on the GPU.
    SqueezeIndex gpu_index = *cpu;
    std::vector<const float*> window_q(L);
    for (int l = 0; l < L; ++l) window_q[l] = capture.q[l].data();
    CudaWindowScorer scorer(0);
    const absl::Status st = CalibrateSqueezeIndex(window_q, &gpu_index, nullptr, &scorer);
    ASSERT_TRUE(st.ok()) << st;
    for (const auto& [cpu_dist, gpu_dist, name] :
         {std::tuple(&cpu->fine_scores, &gpu_index.fine_scores, "fine"),
          std::tuple(&cpu->coarse_scores, &gpu_index.coarse_scores, "coarse")}) {
      SCOPED_TRACE(name);
      EXPECT_EQ(cpu_dist->total_keys(), gpu_dist->total_keys());
      if (cpu_dist->empty()) continue;
      // The GPU's threshold keeps, by the CPU's scores, the budget within a point.
      const double total = static_cast<double>(cpu_dist->total_keys());
      for (double budget : {0.02, 0.1, 0.25, 0.5}) {
        const float t_gpu = gpu_dist->Threshold(budget);
        EXPECT_NEAR(static_cast<double>(cpu_dist->KeysAbove(t_gpu)) / total, budget, 0.01)
            << "budget " << budget;
      }
    }
  }
}

}  // namespace
}  // namespace squeeze
