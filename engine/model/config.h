// Model hyper-parameters read from a Hugging Face config.json. Supported: the Llama family
// (LlamaForCausalLM, MistralForCausalLM), Qwen2ForCausalLM, Qwen3ForCausalLM and
// Phi3ForCausalLM; they share one forward (engine/model/llama_model.h) and differ only in the
// flags of ModelConfig (biases, q/k norms, fused weights) and in their RoPE scaling.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace squeeze {

enum class RopeType {
  kDefault,   // plain RoPE, inv_freq = theta^(-2i/d)
  kLinear,    // positions divided by `factor` (LongChat, LWM)
  kLlama3,    // Llama-3.1 frequency-dependent scaling
  kYarn,      // YaRN (Qwen2.5 / Qwen3 long context): ramped interpolation + attention factor
  kLongRope,  // LongRoPE (Phi-3/3.5 128K): per-frequency short/long factors + attention factor
};

// Everything the RoPE tables need, resolved at parse time (defaults filled in from the rest of
// config.json), so engine/model/rope.h needs nothing else.
struct RopeScaling {
  RopeType type = RopeType::kDefault;
  float factor = 1.0f;  // linear, llama3, yarn
  // llama3 only.
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  // llama3, yarn (default: max_position_embeddings) and longrope (pre-training length).
  int original_max_position_embeddings = 8192;
  // yarn only (transformers' defaults).
  float beta_fast = 32.0f;
  float beta_slow = 1.0f;
  float mscale = 0.0f;          // 0: unset
  float mscale_all_dim = 0.0f;  // 0: unset
  bool truncate = true;         // round the correction range to whole dimensions
  // yarn and longrope: scale of cos/sin (so of q and k); < 0: derived from the factors.
  float attention_factor = -1.0f;
  // longrope only: [head_dim / 2] divisors of the frequencies. The long set is used when the
  // model is served beyond its pre-training length (max_position_embeddings >
  // original_max_position_embeddings), the short one otherwise: one set for every position,
  // so the KV of a registered context stays valid whatever follows it.
  std::vector<float> short_factor;
  std::vector<float> long_factor;
  int max_position_embeddings = 0;  // longrope: the served window (decides long vs short)
};

struct ModelConfig {
  // "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM" or
  // "Phi3ForCausalLM".
  std::string architecture;
  int vocab_size = 0;
  int hidden_size = 0;        // D
  int intermediate_size = 0;  // I (SwiGLU inner size)
  int num_layers = 0;         // L
  int num_heads = 0;          // Hq
  int num_kv_heads = 0;       // Hkv; Hq % Hkv == 0
  int head_dim = 0;           // d; defaults to D / Hq
  // The model window: config.json's max_position_embeddings, or for YaRN
  // original_max_position_embeddings * factor when that is larger (the window YaRN extends
  // to, as vLLM derives it: Qwen2.5's config keeps 32768 when YaRN x4 is switched on).
  int max_position_embeddings = 0;
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  // Layout of the attention block.
  bool qkv_bias = false;   // q/k/v projections have biases (Qwen2; attention_bias elsewhere)
  bool o_bias = false;     // o projection has a bias (attention_bias of Llama / Qwen3)
  bool qk_norm = false;    // per-head RMSNorm of q and k before RoPE (Qwen3)
  bool fused_qkv = false;  // qkv_proj and gate_up_proj in the checkpoint (Phi-3), split at load
  int bos_token_id = -1;   // -1: none
  std::vector<int> eos_token_ids;  // config may give one id or a list
  std::string torch_dtype;         // informative ("bfloat16", "float32", ...)

  int group_size() const { return num_heads / num_kv_heads; }
};

// Parses the text of a config.json. Accepts both layouts: transformers 4 (`rope_theta` and
// `rope_scaling` at the top level) and transformers 5 (`rope_parameters`). Errors name the field;
// architectures, activations and RoPE types outside the supported set are refused, as are
// settings the forward does not implement (partial rotary, MLP biases, Qwen sliding windows).
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text);

// Reads and parses `<dir>/config.json`.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);

}  // namespace squeeze
