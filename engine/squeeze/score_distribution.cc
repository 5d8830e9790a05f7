#include "engine/squeeze/score_distribution.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_format.h"
#include "engine/common/parallel_for.h"

namespace squeeze {

ScoreDistribution ScoreDistribution::FromWeightedScores(
    std::vector<std::pair<float, int64_t>> items) {
  std::sort(items.begin(), items.end());
  return FromSorted(items);
}

ScoreDistribution ScoreDistribution::FromSortedRuns(
    std::vector<std::vector<std::pair<float, int64_t>>> runs) {
  if (runs.empty()) return ScoreDistribution();
  // Pairwise rounds: each merges runs 2i and 2i + 1 (the rounds' merges on the cores).
  while (runs.size() > 1) {
    std::vector<std::vector<std::pair<float, int64_t>>> merged((runs.size() + 1) / 2);
    ParallelFor(merged.size(), [&](size_t i) {
      if (2 * i + 1 == runs.size()) {
        merged[i] = std::move(runs[2 * i]);
        return;
      }
      const auto& a = runs[2 * i];
      const auto& b = runs[2 * i + 1];
      merged[i].resize(a.size() + b.size());
      std::merge(a.begin(), a.end(), b.begin(), b.end(), merged[i].begin());
    });
    runs = std::move(merged);
  }
  return FromSorted(runs.front());
}

ScoreDistribution ScoreDistribution::FromSorted(
    const std::vector<std::pair<float, int64_t>>& items) {
  ScoreDistribution dist;
  int64_t cum = 0;
  for (const auto& [score, count] : items) {
    cum += count;
    if (!dist.scores_.empty() && dist.scores_.back() == score) {
      dist.cumulative_keys_.back() = cum;
    } else {
      dist.scores_.push_back(score);
      dist.cumulative_keys_.push_back(cum);
    }
  }
  return dist;
}

absl::StatusOr<ScoreDistribution> ScoreDistribution::FromParts(std::vector<float> scores,
                                                               std::vector<int64_t> cumulative_keys,
                                                               const char* what) {
  if (scores.size() != cumulative_keys.size()) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: %d scores but %d cumulative counts",
                                                      what, scores.size(), cumulative_keys.size()));
  }
  for (size_t i = 0; i < scores.size(); ++i) {
    if (!std::isfinite(scores[i])) {
      return absl::InvalidArgumentError(absl::StrFormat("%s: score %d is not finite", what, i));
    }
    if (i > 0 && !(scores[i] > scores[i - 1])) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: scores not strictly increasing at %d", what, i));
    }
    const int64_t prev = i > 0 ? cumulative_keys[i - 1] : 0;
    if (!(cumulative_keys[i] > prev)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("%s: cumulative key counts not strictly increasing at %d", what, i));
    }
  }
  ScoreDistribution dist;
  dist.scores_ = std::move(scores);
  dist.cumulative_keys_ = std::move(cumulative_keys);
  return dist;
}

float ScoreDistribution::Threshold(double keep) const {
  if (!(keep > 0.0)) return std::numeric_limits<float>::infinity();
  if (keep >= 1.0) return -std::numeric_limits<float>::infinity();
  if (scores_.empty()) return 0.0f;
  const double total = static_cast<double>(total_keys());
  const double target = keep * total;  // wanted number of keys above tau
  // Cut point i (tau = scores_[i]) keeps total - cumulative_keys_[i] keys; cut point -1
  // (tau below the minimum) keeps all. Kept counts decrease with i. First i keeping <= target:
  const auto it =
      std::lower_bound(cumulative_keys_.begin(), cumulative_keys_.end(), total - target,
                       [](int64_t cum, double bound) { return static_cast<double>(cum) < bound; });
  const int i = static_cast<int>(it - cumulative_keys_.begin());  // exists: cum.back() = total
  const double kept_at_i = total - static_cast<double>(cumulative_keys_[i]);
  const double kept_before = i > 0 ? total - static_cast<double>(cumulative_keys_[i - 1]) : total;
  // kept_at_i <= target < kept_before; a tie goes to keeping more (cut point i - 1).
  const bool take_before = (kept_before - target) <= (target - kept_at_i);
  if (!take_before) return scores_[i];
  if (i > 0) return scores_[i - 1];
  return std::nextafter(scores_[0], -std::numeric_limits<float>::infinity());
}

int64_t ScoreDistribution::KeysAbove(float tau) const {
  if (std::isnan(tau)) return 0;
  const size_t at_or_below =
      std::upper_bound(scores_.begin(), scores_.end(), tau) - scores_.begin();
  return total_keys() - (at_or_below > 0 ? cumulative_keys_[at_or_below - 1] : 0);
}

}  // namespace squeeze
