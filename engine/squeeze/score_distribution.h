// The calibrated distribution of per-key cluster scores of one fixed context, over ALL layers,
// KV heads and clustered keys together (one distribution per context, P7). Every key of a
// cluster carries its cluster's score, so the distribution is stored exactly as the sorted
// distinct scores with cumulative key counts: at most one entry per stored cluster, and the
// threshold for ANY kept fraction can be answered later without loss.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace squeeze {

class ScoreDistribution {
 public:
  ScoreDistribution() = default;

  // From (score, key count) pairs in any order; scores must be finite, counts >= 1 (the
  // caller guarantees both). Equal scores are merged.
  static ScoreDistribution FromWeightedScores(std::vector<std::pair<float, int64_t>> items);
  // The same from runs each already sorted ascending (as std::sort orders the pairs): equals
  // FromWeightedScores of their concatenation, merged in linear passes instead of one sort (the
  // calibration sorts each layer's run while the next layers are clustered).
  static ScoreDistribution FromSortedRuns(std::vector<std::vector<std::pair<float, int64_t>>> runs);
  // From the stored form (deserialisation): scores finite and strictly increasing, cumulative
  // counts strictly increasing and >= 1. `what` names the distribution in error messages.
  static absl::StatusOr<ScoreDistribution> FromParts(std::vector<float> scores,
                                                     std::vector<int64_t> cumulative_keys,
                                                     const char* what);

  // The threshold tau for a kept fraction `keep` of the keys: keys are kept when their score
  // is STRICTLY greater than tau. tau is chosen among the achievable cut points so that
  // KeysAbove(tau) / total_keys() is as close as possible to `keep` (a tie goes to keeping
  // more). keep <= 0 (or NaN) -> +inf (nothing kept); keep >= 1 -> -inf (everything kept).
  // For keep in (0, 1) tau is always finite: a stored score, or the float just below the
  // smallest one when keeping everything is the closest choice. An empty distribution (no
  // clustered keys) gives 0.
  float Threshold(double keep) const;

  // Number of keys whose score is strictly greater than tau.
  int64_t KeysAbove(float tau) const;

  int64_t total_keys() const { return cumulative_keys_.empty() ? 0 : cumulative_keys_.back(); }
  bool empty() const { return scores_.empty(); }
  const std::vector<float>& scores() const { return scores_; }                      // ascending
  const std::vector<int64_t>& cumulative_keys() const { return cumulative_keys_; }  // keys <= score

  bool operator==(const ScoreDistribution&) const = default;

 private:
  // From sorted pairs: equal scores merged, counts accumulated.
  static ScoreDistribution FromSorted(const std::vector<std::pair<float, int64_t>>& items);

  std::vector<float> scores_;             // [K] distinct scores, strictly increasing
  std::vector<int64_t> cumulative_keys_;  // [K] keys with score <= scores_[i]
};

}  // namespace squeeze
