#include "engine/attention/page_selection.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace squeeze {

PageFixedContextAttention::PageFixedContextAttention(const ContextKV& context,
                                                     const PageSelectionOptions& options)
    : context_(context), options_(options) {
  const int L = context.shape.num_layers, H = context.shape.num_kv_heads;
  const int d = context.shape.head_dim, S = context.num_tokens;
  options_.page_tokens = std::max(1, options_.page_tokens);
  const double budget = std::isnan(options_.budget) ? 0.0 : std::clamp(options_.budget, 0.0, 1.0);
  first_ = std::clamp(options_.sinks, 0, S);
  end_ = std::max(first_, S - std::clamp(options_.window, 0, S));
  const int P = options_.page_tokens;
  num_pages_ = (end_ - first_ + P - 1) / P;
  pages_kept_ = std::min(num_pages_, static_cast<int>(std::ceil(budget * (end_ - first_) / P)));

  row_of_.assign(static_cast<size_t>(L) * H * S, 0);
  for (size_t lh = 0; lh < static_cast<size_t>(L) * H; ++lh) {
    const int32_t* token = &context.token_of[lh * S];
    for (int row = 0; row < S; ++row) row_of_[lh * S + token[row]] = row;
  }
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> row;  // a bf16 key widened
  min_.assign(static_cast<size_t>(L) * H * num_pages_ * d, inf);
  max_.assign(min_.size(), -inf);
  for (int l = 0; l < L; ++l) {
    for (int h = 0; h < H; ++h) {
      const size_t lh = static_cast<size_t>(l) * H + h;
      for (int t = first_; t < end_; ++t) {
        const float* k = context.KeysF32(l, h, row_of_[lh * S + t], 1, &row);
        const size_t at = (lh * num_pages_ + (t - first_) / P) * d;
        for (int i = 0; i < d; ++i) {
          min_[at + i] = std::min(min_[at + i], k[i]);
          max_[at + i] = std::max(max_[at + i], k[i]);
        }
      }
    }
  }
  // Kept tokens: the sinks and window, plus the kept pages (the last page may be short, so the
  // count is exact only on average; report what a full page set keeps).
  const int64_t kept =
      (S - (end_ - first_)) + std::min<int64_t>(end_ - first_, int64_t{pages_kept_} * P);
  kept_fraction_ = S > 0 ? static_cast<double>(kept) / S : 0;
}

void PageFixedContextAttention::Select(int layer, const float* q, int n, LayerSelection* out) {
  const int H = context_.shape.num_kv_heads, d = context_.shape.head_dim;
  const int S = context_.num_tokens, P = options_.page_tokens;
  const int Hq = options_.num_q_heads > 0 ? options_.num_q_heads : H;
  const int G = std::max(1, Hq / H);
  out->ranges.assign(H, {});
  out->candidates.clear();
  if (layer < 0 || layer >= context_.shape.num_layers) return;
  for (int h = 0; h < H; ++h) {
    const size_t lh = static_cast<size_t>(layer) * H + h;
    bound_.assign(num_pages_, -std::numeric_limits<float>::infinity());
    if (n > 0) {
      for (int p = 0; p < num_pages_; ++p) {
        const float* lo = &min_[(lh * num_pages_ + p) * d];
        const float* hi = &max_[(lh * num_pages_ + p) * d];
        float best = -std::numeric_limits<float>::infinity();
        for (int t = 0; t < n; ++t) {
          for (int g = 0; g < G; ++g) {
            const float* qr = q + (static_cast<size_t>(t) * Hq + h * G + g) * d;
            float s = 0;
            for (int i = 0; i < d; ++i) s += std::max(qr[i] * lo[i], qr[i] * hi[i]);
            best = std::max(best, s);
          }
        }
        bound_[p] = best;
      }
    }
    // The pages_kept_ highest bounds (ties: the earlier page).
    order_.resize(num_pages_);
    std::iota(order_.begin(), order_.end(), 0);
    const int keep = n > 0 ? pages_kept_ : 0;
    std::partial_sort(order_.begin(), order_.begin() + keep, order_.end(), [&](int a, int b) {
      return bound_[a] > bound_[b] || (bound_[a] == bound_[b] && a < b);
    });
    rows_.clear();
    const int32_t* row_of = &row_of_[lh * S];
    for (int t = 0; t < first_; ++t) rows_.push_back(row_of[t]);
    for (int t = end_; t < S; ++t) rows_.push_back(row_of[t]);
    for (int j = 0; j < keep; ++j) {
      const int p = order_[j];
      for (int t = first_ + p * P; t < std::min(end_, first_ + (p + 1) * P); ++t) {
        rows_.push_back(row_of[t]);
      }
    }
    std::sort(rows_.begin(), rows_.end());
    std::vector<KeyRange>& ranges = out->ranges[h];
    for (const int32_t row : rows_) {
      if (!ranges.empty() && ranges.back().end == row) {
        ranges.back().end = row + 1;
      } else {
        ranges.push_back({row, row + 1});
      }
    }
  }
}

}  // namespace squeeze
