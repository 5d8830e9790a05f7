#include "engine/attention/recency_selection.h"

#include <algorithm>

namespace squeeze {

RecencyFixedContextAttention::RecencyFixedContextAttention(const ContextKV& context, int sinks,
                                                           int recent) {
  const int L = context.shape.num_layers, H = context.shape.num_kv_heads;
  const int S = context.num_tokens;
  sinks = std::clamp(sinks, 0, S);
  recent = std::clamp(recent, 0, S);
  const int recent_from = S - recent;
  per_layer_.resize(L);
  int64_t kept = 0;
  for (int l = 0; l < L; ++l) {
    per_layer_[l].ranges.resize(H);
    for (int h = 0; h < H; ++h) {
      const int32_t* token = &context.token_of[(static_cast<size_t>(l) * H + h) * S];
      std::vector<KeyRange>& ranges = per_layer_[l].ranges[h];
      for (int row = 0; row < S; ++row) {
        if (token[row] >= sinks && token[row] < recent_from) continue;
        ++kept;
        if (!ranges.empty() && ranges.back().end == row) {
          ranges.back().end = row + 1;
        } else {
          ranges.push_back({row, row + 1});
        }
      }
    }
  }
  kept_fraction_ = S > 0 ? static_cast<double>(kept) / (static_cast<double>(L) * H * S) : 0;
}

void RecencyFixedContextAttention::Select(int layer, const float*, int, LayerSelection* out) {
  out->ranges = per_layer_[layer].ranges;
}

}  // namespace squeeze
