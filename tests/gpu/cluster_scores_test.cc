// Fused multi-query cluster scores (kernels/squeeze/cluster_scores.cuh) against the CPU reference
// ClusterScorer::Average (engine/squeeze/cluster_scores.h) on the same bf16 values (the
// reference reads them converted to fp32 and computes in fp32/fp64).
//
// Inputs: random queries (|q| up to 3, so the softmax over clusters is far from uniform) and
// centroids (random directions plus per-head structure), random sizes 1..40, cluster counts that
// are not multiples of the 64-wide tiles and differ per head (one head empty), token counts that
// are not multiples of the 256-row tiles; with candidates, a random ascending third of each
// head's clusters (the reference scores the same subset). Scores are poisoned (NaN) before the
// launch; every written score must be finite and every other column must stay untouched.
// Tolerance: |gpu - ref| <= 2e-5 max(ref over the head) + 1e-8 per score (bf16 inputs are
// exact on both sides; the GPU sums products in a different order and uses ex2.approx); and
// sum_c N_c score_c = 1 within 1e-3 on both sides (every row's size-weighted probabilities sum
// to 1, so does their mean).
// Determinism: a second launch gives bit-identical scores. Every case runs on the mma.sync
// kernel and, on a Hopper GPU, on the wgmma kernel (ClusterScoresImpl).
// Without a CUDA device the binary prints a message and exits with 77 (ctest: skipped).
#include "kernels/squeeze/cluster_scores.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "engine/squeeze/cluster_scores.h"
#include "engine/squeeze/score_distribution.h"
#include "kernels/squeeze/step_budget.cuh"
#include "tests/gpu/gpu_test_util.h"

namespace squeeze {
namespace {

using gpu::bf16;
using namespace gpu_testing;  // NOLINT(build/namespaces): test helpers

struct Case {
  int d, group, hkv, tokens;
  std::vector<int> clusters;  // per KV head
  bool candidates = false;    // score only an ascending random subset of each head's clusters
};

// The kernels a case runs on: the mma.sync kernel everywhere, the wgmma one where it can run.
std::vector<gpu::ClusterScoresImpl> Impls(int d) {
  std::vector<gpu::ClusterScoresImpl> impls = {gpu::ClusterScoresImpl::kMmaSync};
  if (gpu::ClusterScoresWgmmaSupported(d)) impls.push_back(gpu::ClusterScoresImpl::kWgmma);
  return impls;
}

void RunCaseOn(const Case& c, uint64_t seed, gpu::ClusterScoresImpl impl);

void RunCase(const Case& c, uint64_t seed) {
  for (gpu::ClusterScoresImpl impl : Impls(c.d)) RunCaseOn(c, seed, impl);
}

void RunCaseOn(const Case& c, uint64_t seed, gpu::ClusterScoresImpl impl) {
  const char* kernel = impl == gpu::ClusterScoresImpl::kWgmma ? "wgmma" : "mma.sync";
  SCOPED_TRACE(::testing::Message() << kernel << " d=" << c.d << " G=" << c.group
                                    << " Hkv=" << c.hkv << " tokens=" << c.tokens);
  Rng rng(seed);
  const int d = c.d, G = c.group, hkv = c.hkv, hq = G * hkv, n = c.tokens;
  Bf16Data q(static_cast<size_t>(n) * hq * d);
  for (size_t i = 0; i < q.dev.size(); ++i) q.Set(i, 3.0f * rng.Uniform());
  const int max_c = *std::max_element(c.clusters.begin(), c.clusters.end());
  const int stride = max_c + 5;
  std::vector<Bf16Data> cent(hkv);
  std::vector<std::vector<int32_t>> sizes(hkv);
  std::vector<std::unique_ptr<DeviceArray<bf16>>> dev_cent;
  std::vector<std::unique_ptr<DeviceArray<int32_t>>> dev_sizes;
  std::vector<gpu::SqueezeHeadDesc> heads(hkv);
  for (int h = 0; h < hkv; ++h) {
    const int C = c.clusters[h];
    cent[h].Resize(static_cast<size_t>(std::max(C, 1)) * d);
    sizes[h].resize(std::max(C, 1));
    for (int k = 0; k < C; ++k) {
      const float bias = 0.5f * rng.Uniform();  // a shared direction plus noise
      for (int i = 0; i < d; ++i) {
        cent[h].Set(static_cast<size_t>(k) * d + i, rng.Uniform() + bias * ((i & 1) ? 1 : -1));
      }
      sizes[h][k] = rng.Int(1, 40);
    }
    dev_cent.push_back(std::make_unique<DeviceArray<bf16>>(cent[h].dev));
    dev_sizes.push_back(std::make_unique<DeviceArray<int32_t>>(sizes[h]));
    heads[h].centroids = dev_cent.back()->get();
    heads[h].sizes = dev_sizes.back()->get();
    heads[h].num_clusters = C;
  }
  // Candidates: each cluster with probability 1/3 (the list of a head may be empty).
  std::vector<std::vector<int32_t>> cand(hkv);
  const int cand_stride = std::max(max_c, 1);
  std::vector<int32_t> cand_flat(static_cast<size_t>(hkv) * cand_stride, -1), cand_count(hkv);
  for (int h = 0; h < hkv; ++h) {
    for (int k = 0; k < c.clusters[h]; ++k) {
      if (!c.candidates || rng.Int(0, 2) == 0) cand[h].push_back(k);
    }
    cand_count[h] = static_cast<int32_t>(cand[h].size());
    std::copy(cand[h].begin(), cand[h].end(),
              cand_flat.begin() + static_cast<ptrdiff_t>(h) * cand_stride);
  }
  DeviceArray<int32_t> dev_cand(cand_flat), dev_cand_count(cand_count);
  DeviceArray<bf16> dev_q(q.dev);
  DeviceArray<gpu::SqueezeHeadDesc> dev_heads(heads);
  DeviceArray<float> stats(gpu::ClusterScoresWorkspaceBytes(hkv, n, G) / sizeof(float));
  DeviceArray<float> scores(static_cast<size_t>(hkv) * stride);
  stats.Poison();
  scores.Poison();

  gpu::ClusterScoresParams p;
  p.num_heads = hkv;
  p.num_tokens = n;
  p.group = G;
  p.head_dim = d;
  p.scale = 1.0f / std::sqrt(static_cast<float>(d));
  p.q = dev_q.get();
  p.q_token_stride = static_cast<int64_t>(hq) * d;
  p.heads = dev_heads.get();
  p.max_clusters = max_c;
  p.row_stats = stats.get();
  p.scores = scores.get();
  p.score_stride = stride;
  if (c.candidates) {
    p.candidates = dev_cand.get();
    p.num_candidates = dev_cand_count.get();
    p.candidate_stride = cand_stride;
  }
  p.impl = impl;
  CUDA_OK(gpu::LaunchClusterScores(p, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  const std::vector<float> got = scores.Download();

  ClusterScorer scorer;
  for (int h = 0; h < hkv; ++h) {
    SCOPED_TRACE(::testing::Message() << "kv head " << h);
    const float* row = got.data() + static_cast<size_t>(h) * stride;
    const std::vector<int32_t>& ids = cand[h];  // every cluster without candidates
    std::vector<char> scored(stride, 0);
    for (int32_t k : ids) scored[k] = 1;
    for (int k = 0; k < stride; ++k) {
      if (scored[k]) continue;
      uint32_t bits;
      std::memcpy(&bits, row + k, 4);
      EXPECT_EQ(bits, 0xFFFFFFFFu) << "column " << k << " (not a scored cluster) was written";
    }
    const int C = static_cast<int>(ids.size());
    if (C == 0) continue;
    // The CPU scorer over the same clusters (gathered), on the bf16 images, same scale.
    std::vector<float> sub_cent(static_cast<size_t>(C) * d), ref(C);
    std::vector<int32_t> sub_sizes(C);
    for (int i = 0; i < C; ++i) {
      std::copy_n(cent[h].ref.begin() + static_cast<ptrdiff_t>(ids[i]) * d, d,
                  sub_cent.begin() + static_cast<ptrdiff_t>(i) * d);
      sub_sizes[i] = sizes[h][ids[i]];
    }
    scorer.Average(q.ref.data() + static_cast<size_t>(h) * G * d, n, G, static_cast<size_t>(hq) * d,
                   sub_cent.data(), sub_sizes.data(), C, d, ref.data());
    const float top = *std::max_element(ref.begin(), ref.end());
    double mass_gpu = 0, mass_ref = 0, worst = 0;
    for (int i = 0; i < C; ++i) {
      const int k = ids[i];
      ASSERT_TRUE(std::isfinite(row[k])) << "cluster " << k;
      const double err = std::fabs(static_cast<double>(row[k]) - ref[i]);
      worst = std::max(worst, err / top);
      EXPECT_LE(err, 2e-5 * top + 1e-8) << "cluster " << k << ": " << row[k] << " vs " << ref[i];
      mass_gpu += static_cast<double>(sub_sizes[i]) * row[k];
      mass_ref += static_cast<double>(sub_sizes[i]) * ref[i];
    }
    // Each row's size-weighted probabilities sum to 1, so does their mean.
    EXPECT_NEAR(mass_gpu, 1.0, 1e-3);
    EXPECT_NEAR(mass_ref, 1.0, 1e-3);
    std::printf("  %s d=%d G=%d tokens=%d head %d: %d %s, max |gpu - ref| / max ref = %.2e\n",
                kernel, d, G, n, h, C, c.candidates ? "candidates" : "clusters", worst);
  }

  // Deterministic: the same launch again gives the same bits.
  scores.Poison();
  CUDA_OK(gpu::LaunchClusterScores(p, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  const std::vector<float> again = scores.Download();
  EXPECT_EQ(std::memcmp(again.data(), got.data(), got.size() * sizeof(float)), 0)
      << "a second launch differs";
}

TEST(ClusterScores, MatchesTheCpuScorer) {
  RunCase({128, 4, 3, 300, {1000, 6554 / 8, 65}}, 1);
  RunCase({64, 8, 2, 37, {130, 1}}, 2);
  RunCase({128, 1, 2, 1, {700, 64}}, 3);
}

// Head dim 96 (12 chunks a row) and groups that are no power of two: R = tokens * G query rows,
// row r is token r / G, query head h * G + r % G, and the mean is over all R.
TEST(ClusterScores, HeadDim96AndOddGroups) {
  RunCase({96, 4, 2, 100, {1000, 65}}, 8);
  RunCase({96, 3, 2, 37, {130, 700}}, 9);
  RunCase({128, 5, 2, 60, {300, 64}}, 10);
  RunCase({64, 6, 1, 43, {513}}, 11);
  RunCase({96, 7, 1, 30, {200}, true}, 12);
  RunCase({128, 16, 1, 20, {1000}}, 13);
  RunCase({96, 12, 2, 9, {77, 300}, true}, 14);
}

TEST(ClusterScores, EmptyHeadAndLargeInput) {
  RunCase({128, 4, 2, 1100, {0, 3300}}, 4);  // 4,400 query rows: 18 row tiles, a partial one
  RunCase({128, 4, 1, 40, {26214}}, 5);      // the clusters of a 512K context's head
}

TEST(ClusterScores, CandidatesOnly) {
  // The hierarchical fine level: only candidate clusters take part and are written.
  RunCase({128, 4, 3, 200, {2000, 500, 3}, true}, 6);
  RunCase({64, 2, 2, 33, {129, 700}, true}, 7);
}

// The per-step budget threshold (kernels/squeeze/step_budget.cuh) against the CPU reference
// (ScoreDistribution over the pooled clusters of a sequence's heads, as the per-step selection
// uses it): the same kept clusters, exactly, on random scores (spread over several orders of
// magnitude, with ties and zeros) and sizes, heads of different sizes, budgets from 0 to 1.
TEST(ClusterScores, StepBudgetThresholdMatchesCpu) {
  const int B = 5, Hkv = 8;
  Rng rng(11);
  std::vector<int> clusters(B * Hkv);
  int stride = 1;
  for (int& c : clusters) {
    c = rng.Int(0, 3000);
    stride = std::max(stride, c);
  }
  clusters[3] = 0;     // an empty head
  clusters[7] = 9000;  // a head over several CTAs (kStepBudgetChunk clusters each)
  stride = std::max(stride, clusters[7]);
  std::vector<float> scores(static_cast<size_t>(B) * Hkv * stride, -1.0f);  // -1: never read
  std::vector<int32_t> sizes(scores.size(), 0);
  for (int bh = 0; bh < B * Hkv; ++bh) {
    for (int c = 0; c < clusters[bh]; ++c) {
      const size_t i = static_cast<size_t>(bh) * stride + c;
      const int kind = rng.Int(0, 9);
      // Mostly exp(N(0, 3)) scaled; some quantised (ties across heads), some exact zeros.
      scores[i] = kind == 0   ? 0.0f
                  : kind == 1 ? 1e-3f * static_cast<float>(rng.Int(1, 4))
                              : 1e-4f * std::exp(3.0f * rng.Uniform());
      sizes[i] = rng.Int(1, 40);
    }
  }
  DeviceArray<float> dev_scores(scores);
  DeviceArray<int32_t> dev_sizes(sizes);
  std::vector<gpu::SqueezeHeadDesc> heads(B * Hkv);
  for (int bh = 0; bh < B * Hkv; ++bh) {
    heads[bh].sizes = dev_sizes.get() + static_cast<size_t>(bh) * stride;
    heads[bh].num_clusters = clusters[bh];
  }
  DeviceArray<gpu::SqueezeHeadDesc> dev_heads(heads);
  // Poisoned: the launcher clears it.
  DeviceArray<uint8_t> workspace(gpu::StepBudgetWorkspaceBytes(B));
  CUDA_OK(cudaMemset(workspace.get(), 0xa5, gpu::StepBudgetWorkspaceBytes(B)));
  for (float budget : {0.0f, 1e-4f, 0.02f, 0.1f, 0.37f, 0.9f, 1.0f}) {
    SCOPED_TRACE(budget);
    const std::vector<float> budgets(B, budget);
    DeviceArray<float> dev_budget(budgets);
    DeviceArray<float> tau(B);
    tau.Poison();
    gpu::StepBudgetParams p;
    p.batch = B;
    p.num_kv_heads = Hkv;
    p.heads = dev_heads.get();
    p.scores = dev_scores.get();
    p.score_stride = stride;
    p.budget = dev_budget.get();
    p.tau = tau.get();
    p.workspace = workspace.get();
    CUDA_OK(gpu::LaunchStepBudgetThreshold(p, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    const std::vector<float> got = tau.Download();
    for (int b = 0; b < B; ++b) {
      ASSERT_FALSE(std::isnan(got[b])) << "sequence " << b;
      std::vector<std::pair<float, int64_t>> pooled;
      for (int h = 0; h < Hkv; ++h) {
        const int bh = b * Hkv + h;
        for (int c = 0; c < clusters[bh]; ++c) {
          const size_t i = static_cast<size_t>(bh) * stride + c;
          pooled.emplace_back(scores[i], sizes[i]);
        }
      }
      const float ref = ScoreDistribution::FromWeightedScores(pooled).Threshold(budget);
      int64_t kept_gpu = 0, kept_ref = 0, differ = 0;
      for (const auto& [score, keys] : pooled) {
        kept_gpu += score > got[b] ? keys : 0;
        kept_ref += score > ref ? keys : 0;
        differ += (score > got[b]) != (score > ref);
      }
      EXPECT_EQ(differ, 0) << "sequence " << b << ": tau " << got[b] << " vs cpu " << ref;
      EXPECT_EQ(kept_gpu, kept_ref) << "sequence " << b;
      if (budget == 0.0f) {
        EXPECT_EQ(got[b], std::numeric_limits<float>::infinity());
      }
      if (budget == 1.0f) {
        EXPECT_EQ(got[b], -std::numeric_limits<float>::infinity());
      }
    }
  }
  gpu::StepBudgetParams bad;
  EXPECT_EQ(gpu::LaunchStepBudgetThreshold(bad, nullptr), cudaErrorInvalidValue);
}

TEST(ClusterScores, RejectsBadArguments) {
  gpu::ClusterScoresParams p;
  EXPECT_EQ(gpu::LaunchClusterScores(p, nullptr), cudaErrorInvalidValue);
  DeviceArray<bf16> q(256);
  DeviceArray<gpu::SqueezeHeadDesc> heads(1);
  DeviceArray<float> buf(64);
  p.num_heads = 1;
  p.num_tokens = 1;
  p.group = 1;
  p.head_dim = 80;  // unsupported
  p.scale = 1.0f;
  p.q = q.get();
  p.q_token_stride = 128;
  p.heads = heads.get();
  p.max_clusters = 4;
  p.row_stats = buf.get();
  p.scores = buf.get();
  p.score_stride = 4;
  EXPECT_EQ(gpu::LaunchClusterScores(p, nullptr), cudaErrorInvalidValue);
  p.head_dim = 128;
  p.score_stride = 3;  // < max_clusters
  EXPECT_EQ(gpu::LaunchClusterScores(p, nullptr), cudaErrorInvalidValue);
  p.score_stride = 4;
  p.q_token_stride = 100;  // rows not 16-byte aligned
  EXPECT_EQ(gpu::LaunchClusterScores(p, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace squeeze
