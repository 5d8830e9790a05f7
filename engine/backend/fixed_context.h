// How a sequence attends to its fixed context: which storage rows of the ContextKV each KV head
// reads at each layer. A selector (one per sequence) hands the backend its policy for the step
// as plain data; the backend selects (Squeezed Attention on the device, or any selector on the
// host through Select) and reports the rows it kept, which the forward passes back to the
// selector (Record) once the step is done.
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "engine/backend/cluster_tables.h"

namespace squeeze {

// What the backend does with a sequence's fixed context this step.
struct ContextAttentionPolicy {
  enum class Kind : uint8_t {
    kSqueezed,  // the clusters whose score exceeds the thresholds of `squeezed` (a backend with
                // a device selects there; the CPU reference through Select)
    kHost,      // the rows Select lists, on the host (mass-based selection, the recent-keys
                // baseline, tests)
  };
  Kind kind = Kind::kHost;
  SqueezedSelection squeezed;  // kSqueezed
  // Beyond the paper (whose mask is shared by all the queries of a step, P6): a step of more
  // tokens is selected and attended in blocks of this many consecutive query tokens, each block
  // with its own selection from its own queries (and causally its part of the dynamic rows), as
  // if the blocks were steps of their own. 0: one selection per step.
  int query_block = 0;
  // Beyond the paper: the attention of the clusters the selection drops, estimated from their
  // centroids and mean values (engine/backend/tail_estimate.h) and merged with the kept keys'
  // by log-sum-exp instead of ignored. The clusters come from squeezed.tables (set in both
  // kinds when this is on). Backends that do not estimate (Backend::estimates_tail) never get it:
  // admission refuses such requests.
  bool estimate_tail = false;
};

// Chooses the fixed-context keys for one sequence.
class FixedContextAttention {
 public:
  virtual ~FixedContextAttention() = default;
  virtual ContextAttentionPolicy policy() const { return {}; }
  // q: [n, Hq, d] post-RoPE queries of the `n` new tokens at `layer` (host memory). Fills
  // `out->ranges` (one entry per KV head) and, for hierarchical selection, `out->candidates`.
  // Keeps no statistics: the backend reports what it kept through Record.
  virtual void Select(int layer, const float* q, int n, LayerSelection* out) = 0;
  // After a step: the rows the backend kept per KV head at `layer` (sinks and window included)
  // and, hierarchical, the fine clusters under the kept coarse clusters per KV head (empty
  // otherwise).
  virtual void Record(int /*layer*/, std::span<const int32_t> /*kept_rows*/,
                      std::span<const int32_t> /*candidates*/) {}
};

// What a backend does with a host selection: INTERNAL (naming the layer and head) when it does
// not list Hkv heads of ranges inside [0, num_rows); otherwise the rows kept per KV head into
// kept_rows [Hkv] and the candidates, when given, into candidates [Hkv] (each may be null).
absl::Status CheckHostSelection(const LayerSelection& selection, int layer, int num_kv_heads,
                                int num_rows, int32_t* kept_rows, int32_t* candidates);

// Keeps every row of the fixed context (exact dense attention through the host path; the forward
// attends densely without any selector).
class DenseFixedContextAttention final : public FixedContextAttention {
 public:
  DenseFixedContextAttention(int num_kv_heads, int num_tokens)
      : num_kv_heads_(num_kv_heads), num_tokens_(num_tokens) {}
  void Select(int /*layer*/, const float* /*q*/, int /*n*/, LayerSelection* out) override {
    out->ranges.assign(num_kv_heads_, std::vector<KeyRange>{{0, num_tokens_}});
    out->candidates.clear();
  }

 private:
  int num_kv_heads_;
  int num_tokens_;
};

}  // namespace squeeze
