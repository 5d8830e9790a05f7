#include "engine/squeeze/selection.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/strings/str_format.h"

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
      scored_(kept_rows_.size(), 0) {
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
  for (int h = 0; h < Hkv; ++h) {
    std::vector<KeyRange>& ranges = out->ranges[h];
    ranges.clear();
    AddRange(0, index_.sinks, &ranges);
    const int32_t candidates = SelectHead(layer, h, q, n, &ranges);
    AddRange(S - index_.window, S, &ranges);
    if (options_.hierarchical) out->candidates[h] = candidates;
  }
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
  if (options_.mass) return p;  // kHost: mass-based selection lists its rows on the host
  constexpr float kInf = std::numeric_limits<float>::infinity();
  p.kind = ContextAttentionPolicy::Kind::kSqueezed;
  p.squeezed = {index_.tables(), options_.keep_all ? -kInf : fine_tau_};
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
  const ContextAttentionPolicy pol = policy();
  const SqueezedSelection& sel = pol.squeezed;
  const bool hierarchical = sel.hierarchical && static_cast<int>(candidates.size()) == Hkv;
  for (int h = 0; h < Hkv; ++h) {
    const SqueezeHeadIndex& head = index_.head(layer, h);
    const int C = head.num_clusters();
    const size_t slot = static_cast<size_t>(layer) * Hkv + h;
    kept_rows_[slot] += kept_rows[h];
    // The centroids scored, as SelectHead scores them: every fine one unless nothing needs
    // scoring (mass-based: unless the mass is 1); hierarchical: the coarse ones when their
    // threshold is finite, then the fine candidates when the fine threshold is finite.
    if (C == 0) continue;
    if (options_.mass) {
      scored_[slot] += *options_.mass < 1.0 ? C : 0;
      continue;
    }
    if (sel.threshold == kInf) continue;
    if (!hierarchical) {
      scored_[slot] += sel.threshold == -kInf ? 0 : C;
      continue;
    }
    if (std::isfinite(sel.coarse_threshold)) scored_[slot] += head.num_coarse();
    if (candidates[h] > 0 && std::isfinite(sel.threshold)) scored_[slot] += candidates[h];
  }
}

int32_t SqueezedFixedContextAttention::SelectHead(int layer, int kv_head, const float* q, int n,
                                                  std::vector<KeyRange>* ranges) {
  const SqueezeHeadIndex& head = index_.head(layer, kv_head);
  const int C = head.num_clusters();
  const int d = index_.head_dim, G = index_.group_size();
  const std::vector<int32_t>& off = head.offsets;
  if (C == 0) return 0;
  constexpr float kInf = std::numeric_limits<float>::infinity();
  if (options_.keep_all || (!options_.hierarchical && fine_tau_ == -kInf)) {
    AddRange(off[0], off[C], ranges);  // every cluster, nothing to score
    return 0;
  }
  const float* q_group = q + static_cast<size_t>(kv_head) * G * d;  // head kv_head*G, token 0
  const size_t token_stride = static_cast<size_t>(index_.num_q_heads) * d;
  if (options_.mass) {
    if (n <= 0) return 0;
    if (*options_.mass >= 1.0) {
      AddRange(off[0], off[C], ranges);
      return 0;
    }
    scores_.resize(C);
    scorer_.Average(q_group, n, G, token_stride, head.centroids.data(), head.sizes.data(), C, d,
                    scores_.data());
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
    scores_.resize(C);
    scorer_.Average(q_group, n, G, token_stride, head.centroids.data(), head.sizes.data(), C, d,
                    scores_.data());
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
    coarse_scores_.resize(C1);
    scorer_.Average(q_group, n, G, token_stride, head.coarse_centroids.data(),
                    head.coarse_sizes.data(), C1, d, coarse_scores_.data());
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
  gathered_centroids_.resize(static_cast<size_t>(K) * d);
  gathered_sizes_.resize(K);
  for (int i = 0; i < K; ++i) {
    const int c = candidates_[i];
    std::memcpy(&gathered_centroids_[static_cast<size_t>(i) * d],
                &head.centroids[static_cast<size_t>(c) * d], sizeof(float) * d);
    gathered_sizes_[i] = head.sizes[c];
  }
  scores_.resize(K);
  scorer_.Average(q_group, n, G, token_stride, gathered_centroids_.data(), gathered_sizes_.data(),
                  K, d, scores_.data());
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
      sum += (kept_rows_[slot] + 0.5 * scored_[slot]) / (S * steps_per_layer_[l]);
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
