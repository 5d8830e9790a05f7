// The forward pass of every supported family (Llama, Mistral, Qwen2, Qwen3, Phi-3), written once
// against the Backend interface; the families differ only in optional parts of the attention
// block (ModelConfig: biases, per-head q/k norms) and in their RoPE tables.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/backend/communicator.h"
#include "engine/backend/fixed_context.h"
#include "engine/backend/kv_cache.h"
#include "engine/model/config.h"
#include "engine/model/weights.h"
#include "engine/squeeze/query_capture.h"

namespace squeeze {

// One sequence's part of a batched forward step.
struct SequenceStep {
  std::span<const int32_t> tokens;         // new tokens this step (>= 1)
  const ContextKV* context = nullptr;      // fixed context, attended to by every new token
  FixedContextAttention* fixed = nullptr;  // key selection for `context`; nullptr = dense
  SequenceKV* kv = nullptr;                // dynamic KV; new K/V appended and committed
  // Absolute position of tokens[0] = (context ? context->num_tokens : 0) + kv->length().
  bool want_logits = true;          // logits of the last new token
  QueryCapture* capture = nullptr;  // optional
  // With want_logits, optional: choose the next token from the logits. When every step that
  // wants logits has a job, the backend samples (on a device backend the logits stay there and
  // only the job's results come back); otherwise the logits are copied out and the job is left
  // for the caller (sample->token stays -1).
  SampleJob* sample = nullptr;
  // Optional: score the tokens that follow. score_targets[j] is the token after tokens[j]
  // (targets may be fewer than tokens: rows past them are not scored); the model's
  // log-probability of each, with its score_top most likely alternatives, is appended to
  // *scores in row order (ScoreToken; GenerateRequest.prompt_logprobs).
  std::span<const int32_t> score_targets;
  int score_top = 0;
  std::vector<SampleInfo>* scores = nullptr;
};

struct ForwardOutput {
  // logits[i] = logits (V floats) of the last token of step i when want_logits, else empty;
  // also empty when the backend sampled step i's token.
  std::vector<std::vector<float>> logits;
};

class LlamaModel {
 public:
  // Uploads `weights` to the backend (the CPU backend borrows them; others copy them into
  // their own dtype, and the host copy is freed).
  static absl::StatusOr<std::unique_ptr<LlamaModel>> Create(ModelConfig config,
                                                            LlamaWeights weights,
                                                            std::unique_ptr<Backend> backend);
  // Random weights made by the backend itself, for benchmarks at real sizes (an 8B model's
  // weights never exist on the host): matrices N(0, 1/in_features), norm gains 1 + N(0, 0.05^2),
  // biases N(0, 0.1^2), deterministic in `seed`. (No RoPE attention factor is folded in: random
  // weights have no scale to preserve.)
  static absl::StatusOr<std::unique_ptr<LlamaModel>> CreateRandom(ModelConfig config,
                                                                  std::unique_ptr<Backend> backend,
                                                                  uint64_t seed);

  const ModelConfig& config() const { return config_; }
  KvShape kv_shape() const { return {config_.num_layers, config_.num_kv_heads, config_.head_dim}; }
  Backend& backend() { return *backend_; }
  // An empty dynamic KV in the memory this model's backend computes on.
  SequenceKV NewSequenceKV() {
    return backend_->host_memory() ? SequenceKV(kv_shape())
                                   : SequenceKV(kv_shape(), backend_.get());
  }
  // Bytes of weights resident in backend memory.
  size_t weight_bytes() const { return weight_bytes_; }
  // Tensor parallelism: this model is one rank's shard (ShardConfig and ShardWeights of
  // engine/model/tensor_parallel.h), and `comm` sums the o and down projections' partial outputs
  // over the ranks at every layer. Every rank runs the same Forward calls on its own KV (its KV
  // heads); their logits are identical. nullptr or a communicator of size 1: the whole model.
  void set_communicator(Communicator* comm) { comm_ = comm; }

  // Runs all sequences' new tokens through the model in one batch (GEMMs over all tokens,
  // attention per sequence). Appends K/V to each step's `kv` and commits them.
  absl::Status Forward(std::span<SequenceStep> steps, ForwardOutput* out);

 private:
  // Weights in backend memory.
  struct ResidentLayer {
    const float* attn_norm = nullptr;
    const float* mlp_norm = nullptr;
    Matrix wq, wk, wv, wo, gate, up, down;
    // Optional parts (null when the config has none): q/k/v biases [Hq*d], [Hkv*d], [Hkv*d],
    // o bias [D], per-head q/k norm gains [d].
    const float* bq = nullptr;
    const float* bk = nullptr;
    const float* bv = nullptr;
    const float* bo = nullptr;
    const float* q_norm = nullptr;
    const float* k_norm = nullptr;
  };
  struct Resident {
    Matrix embed, lm_head;
    const float* final_norm = nullptr;
    const float* inv_freq = nullptr;  // [d/2]
    std::vector<ResidentLayer> layers;
  };

  LlamaModel(ModelConfig config, LlamaWeights weights, std::unique_ptr<Backend> backend);
  absl::Status Upload();
  absl::Status MakeRandom(uint64_t seed);
  absl::Status UploadInvFreq();
  // Forward on this rank's shard (the whole model without a communicator).
  absl::Status ForwardRank(std::span<SequenceStep> steps, ForwardOutput* out);
  // The scores asked for by steps' score_targets, from the final hidden rows x ([T, D]; step i's
  // rows from offsets[i]).
  absl::Status ScoreTargets(std::span<SequenceStep> steps, std::span<const int32_t> offsets,
                            const float* x);

  ModelConfig config_;
  LlamaWeights weights_;  // host weights while the backend borrows them, else empty
  std::unique_ptr<Backend> backend_;
  std::vector<float> rope_inv_freq_;  // [d/2], scaling applied
  Resident w_;
  size_t weight_bytes_ = 0;
  Communicator* comm_ = nullptr;     // tensor parallelism; not owned
  std::vector<int32_t> kept_rows_;   // [step][layer][kv head] rows the backend kept
  std::vector<int32_t> candidates_;  // [step][layer][kv head] hierarchical candidates
};

}  // namespace squeeze
