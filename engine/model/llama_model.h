// The Llama-family forward pass, written once against the Backend interface.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/attention/fixed_context.h"
#include "engine/backend/backend.h"
#include "engine/kv/kv_cache.h"
#include "engine/model/config.h"
#include "engine/model/weights.h"

namespace squeeze {

// Receives post-RoPE queries of selected positions during a forward (for calibration).
struct QueryCapture {
  int from_position = 0;  // capture tokens whose absolute position >= this
  // Filled by the forward: q[layer] holds rows [Hq][d] for every captured token, appended in
  // token order; positions lists the captured absolute positions (once, not per layer).
  std::vector<std::vector<float>> q;  // [L] -> [n_captured * Hq * d]
  std::vector<int32_t> positions;
};

// One sequence's part of a batched forward step.
struct SequenceStep {
  std::span<const int32_t> tokens;          // new tokens this step (>= 1)
  const ContextKV* context = nullptr;       // fixed context, attended to by every new token
  FixedContextAttention* fixed = nullptr;   // key selection for `context`; nullptr = dense
  SequenceKV* kv = nullptr;                 // dynamic KV; new K/V appended and committed
  // Absolute position of tokens[0] = (context ? context->num_tokens : 0) + kv->length().
  bool want_logits = true;                  // logits of the last new token
  QueryCapture* capture = nullptr;          // optional
};

struct ForwardOutput {
  // logits[i] = logits (V floats) of the last token of step i when want_logits, else empty.
  std::vector<std::vector<float>> logits;
};

class LlamaModel {
 public:
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Create(ModelConfig config,
                                                            LlamaWeights weights,
                                                            std::unique_ptr<Backend> backend);
  const ModelConfig& config() const { return config_; }
  KvShape kv_shape() const { return {config_.num_layers, config_.num_kv_heads, config_.head_dim}; }
  Backend& backend() { return *backend_; }

  // Runs all sequences' new tokens through the model in one batch (GEMMs over all tokens,
  // attention per sequence). Appends K/V to each step's `kv` and commits them.
  absl::Status Forward(std::span<SequenceStep> steps, ForwardOutput* out);

 private:
  LlamaModel(ModelConfig config, LlamaWeights weights, std::unique_ptr<Backend> backend);
  ModelConfig config_;
  LlamaWeights weights_;
  std::unique_ptr<Backend> backend_;
  std::vector<float> rope_inv_freq_;  // [d/2], scaling applied
};

}  // namespace squeeze
