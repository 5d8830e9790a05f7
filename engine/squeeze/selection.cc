#include "engine/squeeze/selection.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_format.h"
#include "engine/squeeze/score_distribution.h"

namespace squeeze {
namespace {

// Appends [begin, end) to `ranges`, merging it into the last range when they touch.
void AddRange(int32_t begin, int32_t end, std::vector<KeyRange>* ranges) {
  if (end <= begin) return;
  if (!ranges->empty() && ranges->back().end == begin) {
    ranges->back().end = end;
  } else {
    ranges->push_back({begin, end});
  }
}

double CoarseKeep(const SelectionOptions& options) {
  return options.coarse_keep.value_or(std::min(1.0, 5.0 * options.budget));
}

// [0, 1], NaN -> 0.
double Clamp01(double x) { return x >= 0.0 ? std::min(x, 1.0) : 0.0; }

}  // namespace

absl::Status ValidateSelectionOptions(const SqueezeIndex& index, const SelectionOptions& options) {
  if (!(options.budget >= 0.0 && options.budget <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("selection budget must be in [0, 1], got %g", options.budget));
  }
  const double coarse_keep = CoarseKeep(options);
  if (!(coarse_keep >= 0.0 && coarse_keep <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("selection coarse_keep must be in [0, 1], got %g", coarse_keep));
  }
  if (options.mass && !(*options.mass > 0.0 && *options.mass <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("selection mass must be in (0, 1], got %g", *options.mass));
  }
  if (options.mass && options.hierarchical) {
    return absl::InvalidArgumentError("mass-based selection is flat only (no hierarchical)");
  }
  if (options.query_block < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("selection query_block must be >= 0, got %d", options.query_block));
  }
  if (options.estimate_tail && options.hierarchical) {
    return absl::InvalidArgumentError("tail estimation is flat only (no hierarchical)");
  }
  if (options.hierarchical && !index.has_coarse()) {
    return absl::FailedPreconditionError(
        "hierarchical selection asked, but the context was clustered without the hierarchical "
        "level; re-register it with hierarchical clustering");
  }
  return absl::OkStatus();
}

SqueezedFixedContextAttention::SqueezedFixedContextAttention(const SqueezeIndex& index,
                                                             const SelectionOptions& options)
    : index_(index),
      options_(options),
      steps_per_layer_(index.num_layers, 0),
      kept_rows_(static_cast<size_t>(index.num_layers) * index.num_kv_heads, 0),
      scored_(kept_rows_.size(), 0),
      tail_values_(kept_rows_.size(), 0) {
  options_.budget = Clamp01(options.budget);
  options_.coarse_keep = Clamp01(CoarseKeep(options));
  options_.hierarchical = options.hierarchical && index.has_coarse() && !options.mass;
  if (options_.mass) {
    options_.mass = std::isnan(*options_.mass) ? 1.0 : std::clamp(*options_.mass, 1e-9, 1.0);
  }
  fine_tau_ = index.fine_scores.Threshold(options_.budget);
  coarse_tau_ = options_.hierarchical ? index.coarse_scores.Threshold(*options_.coarse_keep)
                                      : std::numeric_limits<float>::quiet_NaN();
}

void SqueezedFixedContextAttention::Select(int layer, const float* q, int n, LayerSelection* out) {
  const int Hkv = index_.num_kv_heads, S = index_.num_tokens;
  out->ranges.resize(Hkv);
  out->candidates.clear();
  if (layer < 0 || layer >= index_.num_layers) {
    for (std::vector<KeyRange>& r : out->ranges) r.assign(1, KeyRange{0, S});
    return;
  }
  if (options_.hierarchical) out->candidates.assign(Hkv, 0);
  constexpr float kInf = std::numeric_limits<float>::infinity();
  // The per-step policy wherever something is scored (budget 0 and 1, keep_all and mass-based
  // selection are the same under both policies).
  const bool per_step = options_.budget_policy == BudgetPolicy::kPerStep && !options_.mass &&
                        !options_.keep_all && n > 0 && fine_tau_ != kInf &&
                        (options_.hierarchical || fine_tau_ != -kInf);
  for (int h = 0; h < Hkv; ++h) {
    std::vector<KeyRange>& ranges = out->ranges[h];
    ranges.clear();
    AddRange(0, index_.sinks, &ranges);
    if (!per_step) {
      const int32_t candidates = SelectHead(layer, h, q, n, &ranges);
      if (options_.hierarchical) out->candidates[h] = candidates;
    }
  }
  if (per_step) SelectLayerPerStep(layer, q, n, out);
  for (int h = 0; h < Hkv; ++h) AddRange(S - index_.window, S, &out->ranges[h]);
}

void SqueezedFixedContextAttention::SelectLayerPerStep(int layer, const float* q, int n,
                                                       LayerSelection* out) {
  const int Hkv = index_.num_kv_heads;
  constexpr float kInf = std::numeric_limits<float>::infinity();
  head_scores_.resize(Hkv);
  head_candidates_.resize(Hkv);
  // The budget's base: the clustered keys of every head of the layer.
  const double clustered = static_cast<double>(index_.num_clustered) * Hkv;
  // The threshold over (score, keys) of the clusters `ids(h)` of every head (all of them when
  // ids is null) keeping the closest to `keys` keys; -inf when they hold no more than that.
  auto pooled_threshold = [&](const std::vector<int32_t>* ids, bool coarse, double keys) {
    pooled_.clear();
    int64_t total = 0;
    for (int h = 0; h < Hkv; ++h) {
      const SqueezeHeadIndex& head = index_.head(layer, h);
      const std::vector<int32_t>& sizes = coarse ? head.coarse_sizes : head.sizes;
      const std::vector<float>& scores = head_scores_[h];
      for (size_t i = 0; i < scores.size(); ++i) {
        const int64_t size = sizes[ids != nullptr ? ids[h][i] : static_cast<int32_t>(i)];
        pooled_.emplace_back(scores[i], size);
        total += size;
      }
    }
    if (total <= 0 || keys >= static_cast<double>(total)) return -kInf;
    return ScoreDistribution::FromWeightedScores(std::move(pooled_)).Threshold(keys / total);
  };

  if (!options_.hierarchical) {
    for (int h = 0; h < Hkv; ++h) ScoreClusters(layer, h, q, n, false, {}, &head_scores_[h]);
    const float tau = pooled_threshold(nullptr, false, options_.budget * clustered);
    for (int h = 0; h < Hkv; ++h) {
      const std::vector<int32_t>& off = index_.head(layer, h).offsets;
      for (size_t c = 0; c < head_scores_[h].size(); ++c) {
        if (head_scores_[h][c] > tau) AddRange(off[c], off[c + 1], &out->ranges[h]);
      }
    }
    return;
  }

  // Hierarchical: the candidates under the coarse clusters kept at coarse_keep of the layer's
  // keys (every fine cluster at coarse_keep 1, none at 0), as SelectHead.
  const bool score_coarse = std::isfinite(coarse_tau_);
  if (score_coarse) {
    for (int h = 0; h < Hkv; ++h) ScoreClusters(layer, h, q, n, true, {}, &head_scores_[h]);
  }
  const float coarse_tau =
      score_coarse ? pooled_threshold(nullptr, true, *options_.coarse_keep * clustered) : 0.0f;
  for (int h = 0; h < Hkv; ++h) {
    const SqueezeHeadIndex& head = index_.head(layer, h);
    std::vector<int32_t>& cand = head_candidates_[h];
    cand.clear();
    for (int g = 0; g < head.num_coarse(); ++g) {
      const bool kept = score_coarse ? head_scores_[h][g] > coarse_tau : coarse_tau_ == -kInf;
      if (!kept) continue;
      for (int c = head.coarse_offsets[g]; c < head.coarse_offsets[g + 1]; ++c) cand.push_back(c);
    }
    out->candidates[h] = static_cast<int32_t>(cand.size());
  }
  // The fine level among the candidates (normalised among themselves, P13) at `budget` of the
  // layer's keys; every candidate at budget 1.
  const bool score_fine = fine_tau_ != -kInf;
  for (int h = 0; h < Hkv; ++h) {
    head_scores_[h].clear();
    if (score_fine && !head_candidates_[h].empty()) {
      ScoreClusters(layer, h, q, n, false, head_candidates_[h], &head_scores_[h]);
    }
  }
  const float tau =
      score_fine ? pooled_threshold(head_candidates_.data(), false, options_.budget * clustered)
                 : -kInf;
  for (int h = 0; h < Hkv; ++h) {
    const std::vector<int32_t>& off = index_.head(layer, h).offsets;
    const std::vector<int32_t>& cand = head_candidates_[h];
    for (size_t i = 0; i < cand.size(); ++i) {
      if (!score_fine || head_scores_[h][i] > tau) {
        AddRange(off[cand[i]], off[cand[i] + 1], &out->ranges[h]);
      }
    }
  }
}

void SqueezedFixedContextAttention::ScoreClusters(int layer, int kv_head, const float* q, int n,
                                                  bool coarse, std::span<const int32_t> ids,
                                                  std::vector<float>* out) {
  const SqueezeHeadIndex& head = index_.head(layer, kv_head);
  const int d = index_.head_dim, G = index_.group_size();
  const float* q_group = q + static_cast<size_t>(kv_head) * G * d;  // head kv_head*G, token 0
  const size_t token_stride = static_cast<size_t>(index_.num_q_heads) * d;
  const float* centroids = coarse ? head.coarse_centroids.data() : head.centroids.data();
  const int32_t* sizes = coarse ? head.coarse_sizes.data() : head.sizes.data();
  int count = coarse ? head.num_coarse() : head.num_clusters();
  if (!ids.empty()) {  // fine clusters `ids` only: gathered, the denominator sees only them
    count = static_cast<int>(ids.size());
    gathered_centroids_.resize(static_cast<size_t>(count) * d);
    gathered_sizes_.resize(count);
    for (int i = 0; i < count; ++i) {
      std::memcpy(&gathered_centroids_[static_cast<size_t>(i) * d],
                  &head.centroids[static_cast<size_t>(ids[i]) * d], sizeof(float) * d);
      gathered_sizes_[i] = head.sizes[ids[i]];
    }
    centroids = gathered_centroids_.data();
    sizes = gathered_sizes_.data();
  }
  out->resize(count);
  scorer_.Average(q_group, n, G, token_stride, centroids, sizes, count, d, out->data());
}

void SqueezedFixedContextAttention::SelectAndRecord(int layer, const float* q, int n,
                                                    LayerSelection* out) {
  Select(layer, q, n, out);
  const int Hkv = index_.num_kv_heads;
  kept_scratch_.assign(Hkv, 0);
  for (int h = 0; h < Hkv && h < static_cast<int>(out->ranges.size()); ++h) {
    for (const KeyRange& r : out->ranges[h]) kept_scratch_[h] += r.size();
  }
  Record(layer, kept_scratch_, out->candidates);
}

ContextAttentionPolicy SqueezedFixedContextAttention::policy() const {
  ContextAttentionPolicy p;
  p.query_block = options_.query_block;
  if (options_.estimate_tail && !options_.hierarchical) {
    p.estimate_tail = true;
    p.squeezed.tables = index_.tables();
  }
  const bool per_step = options_.budget_policy == BudgetPolicy::kPerStep && !options_.keep_all;
  // kHost: mass-based and hierarchical per-step selection list their rows on the host.
  if (options_.mass || (per_step && options_.hierarchical)) return p;
  constexpr float kInf = std::numeric_limits<float>::infinity();
  p.kind = ContextAttentionPolicy::Kind::kSqueezed;
  p.squeezed = {index_.tables(), options_.keep_all ? -kInf : fine_tau_};
  if (per_step) {  // flat: the backend finds the threshold of each layer and step
    p.squeezed.per_step = true;
    p.squeezed.budget = static_cast<float>(options_.budget);
  }
  if (options_.hierarchical && !options_.keep_all) {
    p.squeezed.hierarchical = true;
    // As SelectHead: a fine tau of +inf keeps nothing and scores nothing, coarse level included.
    p.squeezed.coarse_threshold = fine_tau_ == kInf ? kInf : coarse_tau_;
  }
  return p;
}

void SqueezedFixedContextAttention::Record(int layer, std::span<const int32_t> kept_rows,
                                           std::span<const int32_t> candidates) {
  const int Hkv = index_.num_kv_heads;
  if (layer < 0 || layer >= index_.num_layers || static_cast<int>(kept_rows.size()) != Hkv) {
    return;
  }
  ++steps_per_layer_[layer];
  constexpr float kInf = std::numeric_limits<float>::infinity();
  // The thresholds' conventions (both budget policies): what is scored at all.
  const float fine_tau = options_.keep_all ? -kInf : fine_tau_;
  const float coarse_tau = fine_tau == kInf ? kInf : coarse_tau_;
  const bool hierarchical =
      options_.hierarchical && !options_.keep_all && static_cast<int>(candidates.size()) == Hkv;
  for (int h = 0; h < Hkv; ++h) {
    const SqueezeHeadIndex& head = index_.head(layer, h);
    const int C = head.num_clusters();
    const size_t slot = static_cast<size_t>(layer) * Hkv + h;
    kept_rows_[slot] += kept_rows[h];
    // The centroids scored, as SelectHead scores them: every fine one unless nothing needs
    // scoring (mass-based: unless the mass is 1); hierarchical: the coarse ones when their
    // threshold is finite, then the fine candidates when the fine threshold is finite.
    if (C == 0) continue;
    if (options_.estimate_tail && !hierarchical) {
      // Unless every cluster is kept, the estimate reads every centroid (scored or not) and the
      // mean values of the dropped clusters: counted as all C of them (an upper bound).
      const bool keeps_all = options_.mass ? *options_.mass >= 1.0
                                           : fine_tau == -std::numeric_limits<float>::infinity();
      if (!keeps_all) {
        scored_[slot] += C;
        tail_values_[slot] += C;
      }
      continue;
    }
    if (options_.mass) {
      scored_[slot] += *options_.mass < 1.0 ? C : 0;
      continue;
    }
    if (fine_tau == kInf) continue;
    if (!hierarchical) {
      scored_[slot] += fine_tau == -kInf ? 0 : C;
      continue;
    }
    if (std::isfinite(coarse_tau)) scored_[slot] += head.num_coarse();
    if (candidates[h] > 0 && std::isfinite(fine_tau)) scored_[slot] += candidates[h];
  }
}

int32_t SqueezedFixedContextAttention::SelectHead(int layer, int kv_head, const float* q, int n,
                                                  std::vector<KeyRange>* ranges) {
  const SqueezeHeadIndex& head = index_.head(layer, kv_head);
  const int C = head.num_clusters();
  const std::vector<int32_t>& off = head.offsets;
  if (C == 0) return 0;
  constexpr float kInf = std::numeric_limits<float>::infinity();
  if (options_.keep_all || (!options_.hierarchical && fine_tau_ == -kInf)) {
    AddRange(off[0], off[C], ranges);  // every cluster, nothing to score
    return 0;
  }
  if (options_.mass) {
    if (n <= 0) return 0;
    if (*options_.mass >= 1.0) {
      AddRange(off[0], off[C], ranges);
      return 0;
    }
    ScoreClusters(layer, kv_head, q, n, false, {}, &scores_);
    order_.resize(C);
    for (int c = 0; c < C; ++c) order_[c] = c;
    std::sort(order_.begin(), order_.end(), [&](int a, int b) {
      return scores_[a] > scores_[b] || (scores_[a] == scores_[b] && a < b);
    });
    keep_.assign(C, 0);
    double captured = 0.0;
    for (int c : order_) {
      if (captured >= *options_.mass) break;
      keep_[c] = 1;
      captured += static_cast<double>(scores_[c]) * head.sizes[c];
    }
    for (int c = 0; c < C; ++c) {
      if (keep_[c]) AddRange(off[c], off[c + 1], ranges);
    }
    return 0;
  }
  if (n <= 0 || fine_tau_ == kInf) return 0;

  if (!options_.hierarchical) {
    ScoreClusters(layer, kv_head, q, n, false, {}, &scores_);
    for (int c = 0; c < C; ++c) {
      if (scores_[c] > fine_tau_) AddRange(off[c], off[c + 1], ranges);
    }
    return 0;
  }

  // Hierarchical: coarse level first.
  const int C1 = head.num_coarse();
  candidates_.clear();
  if (coarse_tau_ == -kInf) {
    for (int c = 0; c < C; ++c) candidates_.push_back(c);
  } else if (coarse_tau_ != kInf) {
    ScoreClusters(layer, kv_head, q, n, true, {}, &coarse_scores_);
    for (int g = 0; g < C1; ++g) {
      if (!(coarse_scores_[g] > coarse_tau_)) continue;
      for (int c = head.coarse_offsets[g]; c < head.coarse_offsets[g + 1]; ++c) {
        candidates_.push_back(c);
      }
    }
  }
  const int K = static_cast<int>(candidates_.size());
  if (K == 0) return 0;
  if (fine_tau_ == -kInf) {  // budget 1: every fine cluster under a kept coarse cluster
    for (int c : candidates_) AddRange(off[c], off[c + 1], ranges);
    return K;
  }

  // Fine level over the surviving clusters only: the softmax denominator sees only them (P13).
  ScoreClusters(layer, kv_head, q, n, false, candidates_, &scores_);
  for (int i = 0; i < K; ++i) {
    const int c = candidates_[i];
    if (scores_[i] > fine_tau_) AddRange(off[c], off[c + 1], ranges);
  }
  return K;
}

double SqueezedFixedContextAttention::realised_budget() const {
  const int Hkv = index_.num_kv_heads;
  const double S = index_.num_tokens;
  if (S <= 0) return 0.0;
  double sum = 0.0;
  int64_t terms = 0;
  for (int l = 0; l < index_.num_layers; ++l) {
    if (steps_per_layer_[l] == 0) continue;
    for (int h = 0; h < Hkv; ++h) {
      const size_t slot = static_cast<size_t>(l) * Hkv + h;
      sum += (kept_rows_[slot] + 0.5 * (scored_[slot] + tail_values_[slot])) /
             (S * steps_per_layer_[l]);
      ++terms;
    }
  }
  return terms > 0 ? sum / terms : 0.0;
}

std::vector<double> SqueezedFixedContextAttention::kept_fraction_per_layer() const {
  const int Hkv = index_.num_kv_heads;
  std::vector<double> out(index_.num_layers, 0.0);
  if (index_.num_tokens <= 0) return out;
  for (int l = 0; l < index_.num_layers; ++l) {
    if (steps_per_layer_[l] == 0) continue;
    int64_t kept = 0;
    for (int h = 0; h < Hkv; ++h) kept += kept_rows_[static_cast<size_t>(l) * Hkv + h];
    out[l] = static_cast<double>(kept) /
             (static_cast<double>(index_.num_tokens) * Hkv * steps_per_layer_[l]);
  }
  return out;
}

std::vector<double> SqueezedFixedContextAttention::clustered_kept_fraction_per_layer() const {
  const int Hkv = index_.num_kv_heads;
  std::vector<double> out(index_.num_layers, 0.0);
  if (index_.num_clustered <= 0) return out;
  const int always = std::min(index_.sinks + index_.window, index_.num_tokens);
  for (int l = 0; l < index_.num_layers; ++l) {
    if (steps_per_layer_[l] == 0) continue;
    int64_t kept = 0;
    for (int h = 0; h < Hkv; ++h) {
      kept += kept_rows_[static_cast<size_t>(l) * Hkv + h] - always * steps_per_layer_[l];
    }
    out[l] = static_cast<double>(kept) /
             (static_cast<double>(index_.num_clustered) * Hkv * steps_per_layer_[l]);
  }
  return out;
}

int64_t SqueezedFixedContextAttention::steps() const {
  int64_t most = 0;
  for (int64_t s : steps_per_layer_) most = std::max(most, s);
  return most;
}

int64_t SqueezedFixedContextAttention::centroids_scored() const {
  int64_t total = 0;
  for (int64_t s : scored_) total += s;
  return total;
}

}  // namespace squeeze
