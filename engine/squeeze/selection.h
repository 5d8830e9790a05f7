// Online Squeezed Attention key selection (DESIGN §1.2, PAPER_NOTES §4.2-4.7): for every
// layer and step, each KV head scores its centroids with the step's queries and keeps the
// clusters whose score exceeds the context's calibrated threshold tau(budget), plus the sinks
// and the observation window. CPU reference for the CUDA centroid lookup.
//
// Scoring (ClusterScorer, fp32): per (query token, query head of the group) the size-weighted
// softmax p_c = exp(s_c - m) / sum_j N_j exp(s_j - m), averaged over the n tokens of the step
// and the G heads of the group (P6; one key set per KV head serves the whole group, P17).
// Selection is by threshold, never top-k (P1).
//
// Hierarchical (P13, faithful to the paper's code): the coarse centroids are scored first
// (coarse sizes = keys under them) against tau_coarse(coarse_keep); then only the fine
// centroids inside the kept coarse clusters are scored, with the softmax denominator over
// those fine clusters only, against tau(budget). A fine cluster whose coarse cluster was
// dropped is never kept.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "engine/backend/fixed_context.h"
#include "engine/squeeze/cluster_scores.h"
#include "engine/squeeze/squeeze_index.h"

namespace squeeze {

struct SelectionOptions {
  // Requested kept fraction of the clustered keys, in [0, 1]; tau = fine_scores.Threshold().
  // 0 keeps only sinks + window; 1 keeps every cluster.
  double budget = 0.1;
  bool hierarchical = false;  // needs an index built with SqueezeOptions::hierarchical
  // Kept fraction at the coarse level, in [0, 1]; default min(1, 5 * budget) (the paper's
  // tau_L1 at percentile 0.5 for 90% pruning).
  std::optional<double> coarse_keep;
  // Dense through the index: every cluster kept, nothing scored (attention equals dense).
  bool keep_all = false;
  // Beyond the paper (DESIGN §1.3): instead of the calibrated threshold, keep clusters in
  // descending score order until their estimated attention mass (sum of N_c * p_c, which totals 1
  // over all clusters) reaches `mass`, per KV head and step. Query-adaptive: a peaked query keeps
  // few clusters, a diffuse one many. In (0, 1]; flat selection only.
  std::optional<double> mass;
  // Threshold policy for `budget` and `coarse_keep` (not used by `mass` or `keep_all`).
  BudgetPolicy budget_policy = BudgetPolicy::kCalibrated;
  // Beyond the paper: multi-token steps (a user input) select per block of this many query
  // tokens instead of once for the step (ContextAttentionPolicy::query_block); >= 0, 0: once.
  int query_block = 0;
  // Beyond the paper: estimate the dropped clusters' attention from their centroids and mean
  // values (ContextAttentionPolicy::estimate_tail). Flat selection only.
  bool estimate_tail = false;
};

// InvalidArgument for a budget or coarse_keep outside [0, 1]; FailedPrecondition for
// hierarchical selection on an index built without the coarse level.
absl::Status ValidateSelectionOptions(const SqueezeIndex& index, const SelectionOptions& options);

class SqueezedFixedContextAttention final : public FixedContextAttention {
 public:
  // One per sequence; `index` must outlive it. Options should pass ValidateSelectionOptions;
  // otherwise budget and coarse_keep are clamped to [0, 1] (NaN -> 0) and hierarchical
  // selection on a flat index falls back to flat selection.
  SqueezedFixedContextAttention(const SqueezeIndex& index, const SelectionOptions& options);

  // Threshold selection (flat or hierarchical) as plain data for the backend: kSqueezed with the
  // index's tables and the thresholds (keep_all gives tau = -inf, every cluster); flat per-step
  // selection adds per_step and the budget (the backend finds each step's threshold); mass-based
  // and hierarchical per-step selection are kHost (the rows come from Select).
  ContextAttentionPolicy policy() const override;

  // q: [n][Hq][d] post-RoPE queries of the step's n tokens at `layer`. Fills out->ranges
  // [Hkv] with ascending, non-overlapping, non-adjacent storage-row ranges and, hierarchical,
  // out->candidates [Hkv] (the fine clusters scored under the kept coarse clusters). With n <= 0
  // only the sinks and the window are kept; an out-of-range layer gets the dense selection. Keeps
  // no statistics (Record does).
  void Select(int layer, const float* q, int n, LayerSelection* out) override;
  // Counts what the backend kept at `layer` in the statistics: the rows, and the centroids the
  // selection scored (from the policy, and hierarchical: the candidates). An out-of-range layer
  // is not counted.
  void Record(int layer, std::span<const int32_t> kept_rows,
              std::span<const int32_t> candidates) override;
  // Select, then Record its rows: host selection with its statistics (what a host backend
  // reports after a step), for tools and tests that select without a forward.
  void SelectAndRecord(int layer, const float* q, int n, LayerSelection* out);

  // Calibrated thresholds (+inf: nothing kept; -inf: everything kept; coarse: hierarchical
  // only); the per-step policy keeps the same conventions at budget 0 and 1.
  float fine_threshold() const { return fine_tau_; }
  float coarse_threshold() const { return coarse_tau_; }

  // ---- Statistics, accumulated over all Record calls.
  // Realised KV budget (DESIGN §1.2): mean over steps, layers and KV heads of
  //   kept fixed-context rows / S + 0.5 * centroids scored / S
  //   (+ 0.5 * mean values read / S with estimate_tail: C centroids and C values per step).
  // The centroid term counts the centroids actually scored: all fine centroids of the head in
  // flat mode; coarse + fine-inside-kept-coarse in hierarchical mode; none when no scoring is
  // needed (keep_all, budget 0 or 1), so keep_all gives exactly 1. Layers never selected are
  // left out of the mean; 0 before the first call.
  double realised_budget() const;
  // Per layer: mean over steps and KV heads of kept rows / S (0 for a layer never selected).
  std::vector<double> kept_fraction_per_layer() const;
  // Per layer: mean over steps and KV heads of kept clustered rows / M (sinks and window
  // excluded; the quantity the budget asks for).
  std::vector<double> clustered_kept_fraction_per_layer() const;
  int64_t steps() const;             // Record calls of the most-called layer
  int64_t centroids_scored() const;  // total over all calls, layers and heads
  // Kept rows summed over steps, for (layer, kv head).
  int64_t kept_rows(int layer, int kv_head) const {
    return kept_rows_[static_cast<size_t>(layer) * index_.num_kv_heads + kv_head];
  }

 private:
  // Appends the kept ranges of one head; returns the hierarchical candidates (0 otherwise).
  int32_t SelectHead(int layer, int kv_head, const float* q, int n, std::vector<KeyRange>* ranges);
  // BudgetPolicy::kPerStep, every head of the layer at once (n > 0, not keep_all): appends each
  // head's kept ranges to out->ranges[h] and, hierarchical, sets out->candidates[h].
  void SelectLayerPerStep(int layer, const float* q, int n, LayerSelection* out);
  // Mean scores (ClusterScorer::Average) of one head's coarse clusters (coarse) or fine clusters
  // (all of them, or only `ids`, normalised among themselves) into *out, in that order.
  void ScoreClusters(int layer, int kv_head, const float* q, int n, bool coarse,
                     std::span<const int32_t> ids, std::vector<float>* out);

  const SqueezeIndex& index_;
  SelectionOptions options_;
  float fine_tau_;
  float coarse_tau_;

  // Statistics.
  std::vector<int64_t> steps_per_layer_;  // [L]
  std::vector<int64_t> kept_rows_;        // [L * Hkv], all kept rows (sinks + window included)
  std::vector<int64_t> scored_;           // [L * Hkv], centroids scored
  std::vector<int64_t> tail_values_;      // [L * Hkv], mean values read by the tail estimate

  // Scratch, reused across calls.
  ClusterScorer scorer_;
  std::vector<float> scores_;         // [C] fine or coarse scores of one head
  std::vector<float> coarse_scores_;  // [C1]
  std::vector<int32_t> candidates_;   // fine clusters inside kept coarse clusters
  std::vector<int32_t> kept_scratch_, candidates_scratch_;  // SelectAndRecord
  std::vector<float> gathered_centroids_;                   // [candidates][d]
  std::vector<int32_t> gathered_sizes_;                     // [candidates]
  std::vector<int32_t> order_;  // [C] clusters by descending score (mass mode)
  std::vector<char> keep_;      // [C] kept flags (mass mode)
  // Per-step policy: per head, the scores of one level and the candidate fine clusters.
  std::vector<std::vector<float>> head_scores_;        // [Hkv][C or candidates]
  std::vector<std::vector<int32_t>> head_candidates_;  // [Hkv]
  std::vector<std::pair<float, int64_t>> pooled_;      // (score, keys) of every head's clusters
};

}  // namespace squeeze
