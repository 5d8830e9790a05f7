// Model weights held as fp32 host arrays (the CPU reference layout). Matrices are row-major in
// the Hugging Face orientation: [out_features, in_features]. One layout for every supported
// family: optional tensors are empty when the config says the model has none, and Phi-3's fused
// qkv_proj / gate_up_proj are split into the separate matrices at load.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/config.h"

namespace squeeze {

struct LayerWeights {
  std::vector<float> attn_norm;  // [D]
  std::vector<float> wq;         // [Hq*d, D]
  std::vector<float> wk;         // [Hkv*d, D]
  std::vector<float> wv;         // [Hkv*d, D]
  std::vector<float> wo;         // [D, Hq*d]
  std::vector<float> bq;         // [Hq*d] when config.qkv_bias, else empty
  std::vector<float> bk;         // [Hkv*d] when config.qkv_bias
  std::vector<float> bv;         // [Hkv*d] when config.qkv_bias
  std::vector<float> bo;         // [D] when config.o_bias
  std::vector<float> q_norm;     // [d] when config.qk_norm (per-head RMSNorm gain)
  std::vector<float> k_norm;     // [d] when config.qk_norm
  std::vector<float> mlp_norm;   // [D]
  std::vector<float> w_gate;     // [I, D]
  std::vector<float> w_up;       // [I, D]
  std::vector<float> w_down;     // [D, I]
};

struct LlamaWeights {
  std::vector<float> embed;  // [V, D]
  std::vector<LayerWeights> layers;
  std::vector<float> final_norm;  // [D]
  std::vector<float> lm_head;     // [V, D]; a copy of `embed` when embeddings are tied
};

// Loads every `*.safetensors` file of `model_dir` (a sharded index is optional: all shards in the
// directory are read), checks names and shapes against `config`, converts bf16/f16/f32 to fp32.
// A checkpoint with tensors the model does not use (quantisation scales, a vision tower, biases
// the config does not announce) is refused, so nothing is silently ignored. Errors name the
// offending tensor or file.
absl::StatusOr<LlamaWeights> LoadLlamaWeights(const std::string& model_dir,
                                              const ModelConfig& config);

// Deterministic random weights for `config` (benchmarks and tests without a model directory).
LlamaWeights RandomLlamaWeights(const ModelConfig& config, uint64_t seed);

}  // namespace squeeze
