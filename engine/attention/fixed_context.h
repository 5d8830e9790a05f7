// How a sequence attends to its fixed context: which storage rows of the ContextKV each KV head
// reads at each layer. Dense attention keeps one range covering all rows; Squeezed Attention keeps
// the ranges of the selected clusters plus the observation window and sinks.
#pragma once

#include <optional>
#include <span>

#include "engine/backend/cluster_tables.h"

namespace squeeze {

// Chooses the fixed-context keys for one sequence. Called by the forward pass once per layer and
// step, with that layer's post-RoPE queries of the step's new tokens.
class FixedContextAttention {
 public:
  virtual ~FixedContextAttention() = default;
  // q: [n, Hq, d] post-RoPE queries of the `n` new tokens at `layer`. Fills `out->ranges`
  // (one entry per KV head).
  virtual void Select(int layer, const float* q, int n, LayerSelection* out) = 0;

  // Selectors a backend can run on the device return their index and thresholds; the forward
  // then skips Select on such a backend and reports, once the step is done, the rows the
  // backend kept per KV head (sinks and window included) and, hierarchical, the fine clusters
  // under the kept coarse clusters per KV head (empty otherwise). Default: host selection only.
  virtual std::optional<DeviceSelection> device_selection() const { return std::nullopt; }
  virtual void RecordDeviceSelection(int /*layer*/, std::span<const int32_t> /*kept_rows*/,
                                     std::span<const int32_t> /*candidates*/) {}
};

// Keeps every row of the fixed context (exact dense attention).
class DenseFixedContextAttention final : public FixedContextAttention {
 public:
  DenseFixedContextAttention(int num_kv_heads, int num_tokens)
      : num_kv_heads_(num_kv_heads), num_tokens_(num_tokens) {}
  void Select(int /*layer*/, const float* /*q*/, int /*n*/, LayerSelection* out) override {
    out->ranges.assign(num_kv_heads_, std::vector<KeyRange>{{0, num_tokens_}});
  }

 private:
  int num_kv_heads_;
  int num_tokens_;
};

}  // namespace squeeze
