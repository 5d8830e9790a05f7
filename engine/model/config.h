// Model hyper-parameters read from a Hugging Face config.json (Llama family).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace squeeze {

enum class RopeType {
  kDefault,  // plain RoPE, inv_freq = theta^(-2i/d)
  kLinear,   // positions divided by `factor` (LongChat, LWM)
  kLlama3,   // Llama-3.1 frequency-dependent scaling
};

struct RopeScaling {
  RopeType type = RopeType::kDefault;
  float factor = 1.0f;
  // llama3 only.
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string architecture;  // "LlamaForCausalLM" or "MistralForCausalLM"
  int vocab_size = 0;
  int hidden_size = 0;        // D
  int intermediate_size = 0;  // I (SwiGLU inner size)
  int num_layers = 0;         // L
  int num_heads = 0;          // Hq
  int num_kv_heads = 0;       // Hkv; Hq % Hkv == 0
  int head_dim = 0;           // d; defaults to D / Hq
  int max_position_embeddings = 0;
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  int bos_token_id = -1;           // -1: none
  std::vector<int> eos_token_ids;  // config may give one id or a list
  std::string torch_dtype;         // informative ("bfloat16", "float32", ...)

  int group_size() const { return num_heads / num_kv_heads; }
};

// Parses the text of a config.json. Accepts both layouts: transformers 4 (`rope_theta` and
// `rope_scaling` at the top level) and transformers 5 (`rope_parameters`). Errors name the field.
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text);

// Reads and parses `<dir>/config.json`.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);

}  // namespace squeeze
