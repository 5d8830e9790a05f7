// A query-blind baseline for the fixed context (StreamingLLM-style): the first `sinks` tokens
// plus the most recent tokens, chosen once per sequence without looking at the query. Used by
// the accuracy benchmark to show what Squeezed Attention's query-aware selection buys.
#pragma once

#include <vector>

#include "engine/backend/fixed_context.h"
#include "engine/backend/kv_cache.h"

namespace squeeze {

class RecencyFixedContextAttention final : public FixedContextAttention {
 public:
  // Keeps tokens with position < sinks or >= S - recent. Rows are found through
  // context.token_of, so this works on cluster-ordered contexts too.
  RecencyFixedContextAttention(const ContextKV& context, int sinks, int recent);
  void Select(int layer, const float* q, int n, LayerSelection* out) override;
  // Kept rows / S (the same for every layer and head).
  double kept_fraction() const { return kept_fraction_; }

 private:
  std::vector<LayerSelection> per_layer_;  // [L], computed once
  double kept_fraction_ = 0;
};

}  // namespace squeeze
