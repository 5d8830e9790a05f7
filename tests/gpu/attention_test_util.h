// Inputs and checks shared by the GPU attention tests (attention_kernels_test,
// cascade_attention_test): random K/V with NaN past their length, queries, a clustered fixed
// context with its Squeezed Attention index (one layer), and the error measures against the CPU
// reference.
#pragma once

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "engine/squeeze/cluster_scores.h"
#include "engine/squeeze/score_distribution.h"
#include "engine/squeeze/squeeze_index.h"
#include "tests/gpu/gpu_test_util.h"

namespace squeeze::attention_testing {

using gpu::bf16;
using gpu_testing::Bf16Data;
using gpu_testing::Rng;

// Values with a per-dimension offset so the attention output is far from zero.
inline float ValueAt(Rng& rng, int h, int i) {
  return rng.Uniform() + 0.5f * std::sin(0.37f * i + h);
}

// Dynamic KV of one sequence: [Hkv][cap][d] with rows [len, cap) NaN, so any read past the
// length poisons the result.
struct HostKv {
  int cap = 0, len = 0;
  Bf16Data k, v;
};

inline HostKv MakeKv(int hkv, int len, int d, Rng& rng) {
  HostKv kv;
  kv.len = len;
  kv.cap = (len + 3 + 7) / 8 * 8;
  kv.k.Resize(static_cast<size_t>(hkv) * kv.cap * d);
  kv.v.Resize(kv.k.dev.size());
  for (int h = 0; h < hkv; ++h) {
    for (int r = 0; r < kv.cap; ++r) {
      for (int i = 0; i < d; ++i) {
        const size_t at = (static_cast<size_t>(h) * kv.cap + r) * d + i;
        if (r < len) {
          kv.k.Set(at, rng.Uniform());
          kv.v.Set(at, ValueAt(rng, h, i));
        } else {
          kv.k.SetNaN(at);
          kv.v.SetNaN(at);
        }
      }
    }
  }
  return kv;
}

inline std::vector<float> RandomQueries(int batch, int hq, int d, float scale, Rng& rng) {
  std::vector<float> q(static_cast<size_t>(batch) * hq * d);
  for (float& x : q) x = scale * rng.Uniform();
  return q;
}

struct Errors {
  double rel = 0.0;      // ||out - ref|| / ||ref||
  double lse_abs = 0.0;  // max |lse - ref| / (1 + |ref|)
  bool finite = true;
};

// out/lse of rows [row0, row0 + rows) of [rows][d].
inline Errors Compare(const std::vector<float>& out, const std::vector<float>& lse,
                      const std::vector<float>& ref_out, const std::vector<float>& ref_lse,
                      size_t row0, size_t rows, int d) {
  Errors e;
  double num = 0.0, den = 0.0;
  for (size_t i = row0 * d; i < (row0 + rows) * d; ++i) {
    if (!std::isfinite(out[i])) e.finite = false;
    num += (out[i] - ref_out[i]) * static_cast<double>(out[i] - ref_out[i]);
    den += ref_out[i] * static_cast<double>(ref_out[i]);
  }
  e.rel = den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  for (size_t r = row0; r < row0 + rows; ++r) {
    if (std::isinf(ref_lse[r]) && ref_lse[r] < 0) {  // no key: -inf expected
      if (!(std::isinf(lse[r]) && lse[r] < 0)) e.finite = false;
      continue;
    }
    if (!std::isfinite(lse[r])) e.finite = false;
    e.lse_abs = std::max(e.lse_abs, std::abs(lse[r] - ref_lse[r]) / (1.0 + std::abs(ref_lse[r])));
  }
  return e;
}

enum class Clusters { kMixed, kTiny, kGiant };

struct SeqSpec {
  int rows;  // S
  int sinks;
  int window;
  Clusters clusters;
  int dyn_len;  // dynamic rows (0: none)
  double budget;
};

// One fixed context: K/V in storage order [Hkv][S][d], its index (L = 1) and device copies.
struct Context {
  Bf16Data k, v;
  SqueezeIndex index;
  std::vector<std::vector<bf16>> centroids16;  // per head, when bf16 centroids
};

inline std::vector<int> ClusterSizes(Clusters kind, int m, Rng& rng) {
  std::vector<int> sizes;
  int left = m;
  const int giant_at = kind == Clusters::kGiant ? rng.Int(0, 20) : -1;
  while (left > 0) {
    int n = kind == Clusters::kTiny ? rng.Int(1, 3) : rng.Int(1, 40);
    if (static_cast<int>(sizes.size()) == giant_at) n = std::max(1, m * 6 / 10);
    n = std::min(n, left);
    sizes.push_back(n);
    left -= n;
  }
  return sizes;
}

inline Context MakeContext(const SeqSpec& s, int hkv, int hq, int d, bool centroids_bf16,
                           Rng& rng) {
  Context c;
  const int S = s.rows, M = S - s.sinks - s.window;
  c.k.Resize(static_cast<size_t>(hkv) * S * d);
  c.v.Resize(c.k.dev.size());
  SqueezeIndex& ix = c.index;
  ix.num_layers = 1;
  ix.num_kv_heads = hkv;
  ix.num_q_heads = hq;
  ix.head_dim = d;
  ix.num_tokens = S;
  ix.sinks = s.sinks;
  ix.window = s.window;
  ix.num_clustered = M;
  ix.options.window = s.window;
  ix.options.sinks = s.sinks;
  ix.heads.resize(hkv);
  c.centroids16.resize(hkv);
  std::vector<float> centre(d);
  for (int h = 0; h < hkv; ++h) {
    const size_t base = static_cast<size_t>(h) * S * d;
    auto random_row = [&](int r) {
      for (int i = 0; i < d; ++i) {
        c.k.Set(base + static_cast<size_t>(r) * d + i, 1.5f * rng.Uniform());
      }
    };
    for (int r = 0; r < s.sinks; ++r) random_row(r);
    for (int r = S - s.window; r < S; ++r) random_row(r);
    SqueezeHeadIndex& head = ix.heads[h];
    head.sizes = ClusterSizes(s.clusters, M, rng);
    const int C = static_cast<int>(head.sizes.size());
    head.offsets.assign(1, s.sinks);
    head.centroids.assign(static_cast<size_t>(C) * d, 0.0f);
    for (int cl = 0; cl < C; ++cl) {
      const int r0 = head.offsets.back(), n = head.sizes[cl];
      head.offsets.push_back(r0 + n);
      const float radius = 0.5f + 1.5f * (rng.Uniform() + 1.0f);  // some clusters score high
      for (float& x : centre) x = radius * rng.Uniform();
      float* mean = &head.centroids[static_cast<size_t>(cl) * d];
      for (int r = r0; r < r0 + n; ++r) {
        for (int i = 0; i < d; ++i) {
          const size_t at = base + static_cast<size_t>(r) * d + i;
          c.k.Set(at, centre[i] + 0.5f * rng.Uniform());
          mean[i] += c.k.ref[at];
        }
      }
      for (int i = 0; i < d; ++i) mean[i] /= static_cast<float>(n);
    }
    if (centroids_bf16) {  // the reference scores the same (rounded) centroids
      c.centroids16[h].resize(head.centroids.size());
      for (size_t i = 0; i < head.centroids.size(); ++i) {
        c.centroids16[h][i] = __float2bfloat16_rn(head.centroids[i]);
        head.centroids[i] = __bfloat162float(c.centroids16[h][i]);
      }
    }
    for (int r = 0; r < S; ++r) {
      for (int i = 0; i < d; ++i)
        c.v.Set(base + static_cast<size_t>(r) * d + i, ValueAt(rng, h, i));
    }
  }
  // Calibration stand-in: scores of 8 random queries, weighted by cluster size (as offline).
  if (M > 0) {
    const int n_cal = 8, G = hq / hkv;
    const std::vector<float> q_cal = RandomQueries(n_cal, hq, d, 3.0f, rng);
    std::vector<std::pair<float, int64_t>> items;
    ClusterScorer scorer;
    for (int h = 0; h < hkv; ++h) {
      const SqueezeHeadIndex& head = ix.heads[h];
      std::vector<float> scores(head.num_clusters());
      scorer.Average(q_cal.data() + static_cast<size_t>(h) * G * d, n_cal, G,
                     static_cast<size_t>(hq) * d, head.centroids.data(), head.sizes.data(),
                     head.num_clusters(), d, scores.data());
      for (int cl = 0; cl < head.num_clusters(); ++cl)
        items.emplace_back(scores[cl], head.sizes[cl]);
    }
    ix.fine_scores = ScoreDistribution::FromWeightedScores(std::move(items));
  }
  return c;
}

}  // namespace squeeze::attention_testing
