#include "engine/squeeze/calibration.h"

#include <cmath>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "engine/squeeze/cluster_scores.h"

namespace squeeze {

absl::Status CalibrateSqueezeIndex(std::span<const float* const> window_q, SqueezeIndex* index,
                                   const SqueezeProgress& progress) {
  const int L = index->num_layers, Hkv = index->num_kv_heads, Hq = index->num_q_heads;
  const int d = index->head_dim, G = index->group_size(), W = index->window;
  if (static_cast<int>(window_q.size()) != L) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "calibration: window queries for %d layers, index has %d", window_q.size(), L));
  }
  const size_t token_stride = static_cast<size_t>(Hq) * d;
  std::vector<std::pair<float, int64_t>> fine, coarse;  // (score, keys carrying it)
  std::vector<float> scores;
  ClusterScorer scorer;

  for (int l = 0; l < L; ++l) {
    for (int h = 0; h < Hkv; ++h) {
      const SqueezeHeadIndex& head = index->head(l, h);
      const float* q = window_q[l] + static_cast<size_t>(h) * G * d;  // head h*G of token 0
      // Fine level, then (hierarchical) coarse level: same estimator, own sizes.
      for (int level = 0; level < 2; ++level) {
        const bool is_coarse = level == 1;
        if (is_coarse && !index->hierarchical()) break;
        const int C = is_coarse ? head.num_coarse() : head.num_clusters();
        const std::vector<int32_t>& sizes = is_coarse ? head.coarse_sizes : head.sizes;
        scores.resize(C);
        scorer.Average(q, W, G, token_stride,
                       is_coarse ? head.coarse_centroids.data() : head.centroids.data(),
                       sizes.data(), C, d, scores.data());
        for (int c = 0; c < C; ++c) {
          if (!std::isfinite(scores[c])) {
            return absl::InternalError(absl::StrFormat(
                "calibration: non-finite %s score %g at layer %d, kv head %d, cluster %d",
                is_coarse ? "coarse" : "fine", scores[c], l, h, c));
          }
          (is_coarse ? coarse : fine).emplace_back(scores[c], sizes[c]);
        }
      }
    }
    if (progress) progress("calibrating", static_cast<double>(l + 1) / L);
  }
  index->fine_scores = ScoreDistribution::FromWeightedScores(std::move(fine));
  index->coarse_scores = ScoreDistribution::FromWeightedScores(std::move(coarse));
  return absl::OkStatus();
}

}  // namespace squeeze
