// config.json parsing for the supported model families (config.h). Every lookup is type-checked
// before use, so no nlohmann exception can escape; only json::parse can throw and it is caught
// here.
#include "engine/model/config.h"

#include <cstdint>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "nlohmann/json.hpp"

namespace squeeze {
namespace {

using nlohmann::json;

// This Abseil build has its own string_view class; std::string_view needs an explicit bridge.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

// A JSON object plus the dotted path used to name its fields in errors ("rope_scaling.factor").
struct Obj {
  const json& j;
  std::string prefix;  // "" at top level, else "name."

  std::string Name(std::string_view key) const { return absl::StrCat(prefix, Sv(key)); }

  // nullptr when the key is missing or null (HF writes null for "use the default").
  const json* Get(std::string_view key) const {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return nullptr;
    return &*it;
  }
};

absl::Status WrongType(const Obj& obj, std::string_view key, std::string_view expected,
                       const json& got) {
  return absl::InvalidArgumentError(absl::StrCat("config field '", obj.Name(key), "' must be ",
                                                 Sv(expected), ", got ", got.dump()));
}

absl::Status Missing(const Obj& obj, std::string_view key) {
  return absl::InvalidArgumentError(
      absl::StrCat("config is missing required field '", obj.Name(key), "'"));
}

absl::StatusOr<int> ToInt(const Obj& obj, std::string_view key, const json& v) {
  // Integers only: 4096.0 is a float to nlohmann and is rejected like "4096".
  if (v.is_number_unsigned()) {
    if (v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int>::max())) {
      return absl::InvalidArgumentError(
          absl::StrCat("config field '", obj.Name(key), "' is too large: ", v.dump()));
    }
    return static_cast<int>(v.get<uint64_t>());
  }
  if (v.is_number_integer()) {
    const int64_t i = v.get<int64_t>();
    if (i < std::numeric_limits<int>::min()) {
      return absl::InvalidArgumentError(
          absl::StrCat("config field '", obj.Name(key), "' is too small: ", v.dump()));
    }
    return static_cast<int>(i);
  }
  return WrongType(obj, key, "an integer", v);
}

absl::StatusOr<std::optional<int>> OptionalInt(const Obj& obj, std::string_view key) {
  const json* v = obj.Get(key);
  if (v == nullptr) return std::nullopt;
  ASSIGN_OR_RETURN(int i, ToInt(obj, key, *v));
  return i;
}

absl::StatusOr<int> PositiveInt(const Obj& obj, std::string_view key,
                                std::optional<int> default_value = std::nullopt) {
  ASSIGN_OR_RETURN(std::optional<int> v, OptionalInt(obj, key));
  if (!v.has_value()) {
    if (!default_value.has_value()) return Missing(obj, key);
    return *default_value;
  }
  if (*v <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config field '", obj.Name(key), "' must be positive, got ", *v));
  }
  return *v;
}

// A positive float; `default_value` when missing/null, or an error if there is none.
absl::StatusOr<float> PositiveFloat(const Obj& obj, std::string_view key,
                                    std::optional<float> default_value = std::nullopt) {
  const json* v = obj.Get(key);
  if (v == nullptr) {
    if (!default_value.has_value()) return Missing(obj, key);
    return *default_value;
  }
  if (!v->is_number()) return WrongType(obj, key, "a number", *v);
  const double d = v->get<double>();
  if (!(d > 0.0) || d > std::numeric_limits<float>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config field '", obj.Name(key), "' must be a positive finite number, got ", v->dump()));
  }
  return static_cast<float>(d);
}

absl::StatusOr<std::string> OptionalString(const Obj& obj, std::string_view key) {
  const json* v = obj.Get(key);
  if (v == nullptr) return std::string();
  if (!v->is_string()) return WrongType(obj, key, "a string", *v);
  return v->get<std::string>();
}

// Architectures served by the one forward, with the model_type that names each when
// 'architectures' is missing.
constexpr std::pair<const char*, const char*> kArchitectures[] = {
    {"LlamaForCausalLM", "llama"}, {"MistralForCausalLM", "mistral"}, {"Qwen2ForCausalLM", "qwen2"},
    {"Qwen3ForCausalLM", "qwen3"}, {"Phi3ForCausalLM", "phi3"},
};

std::string SupportedList(bool model_types) {
  std::string out;
  for (const auto& [arch, type] : kArchitectures) {
    absl::StrAppend(&out, out.empty() ? "" : ", ", model_types ? type : arch);
  }
  return out;
}

absl::StatusOr<std::string> ParseArchitecture(const Obj& top) {
  std::string arch;
  if (const json* archs = top.Get("architectures"); archs != nullptr) {
    if (!archs->is_array() || archs->empty() || !(*archs)[0].is_string()) {
      return WrongType(top, "architectures", "a non-empty list of strings", *archs);
    }
    arch = (*archs)[0].get<std::string>();
  } else {
    ASSIGN_OR_RETURN(std::string model_type, OptionalString(top, "model_type"));
    if (model_type.empty()) {
      return absl::InvalidArgumentError(
          "config has neither 'architectures' nor 'model_type'; cannot tell the model family");
    }
    for (const auto& [a, type] : kArchitectures) {
      if (model_type == type) arch = a;
    }
    if (arch.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("unsupported model_type '", model_type,
                                                     "' (supported: ", SupportedList(true), ")"));
    }
  }
  for (const auto& [a, type] : kArchitectures) {
    if (arch == a) return arch;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported architecture '", arch,
                   "' in field 'architectures' (supported: ", SupportedList(false), ")"));
}

absl::StatusOr<std::optional<bool>> OptionalBool(const Obj& obj, std::string_view key) {
  const json* v = obj.Get(key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_boolean()) return WrongType(obj, key, "true or false", *v);
  return v->get<bool>();
}

// A list of exactly `n` positive finite numbers (longrope's factors).
absl::StatusOr<std::vector<float>> PositiveFloatList(const Obj& obj, std::string_view key, int n) {
  const json* v = obj.Get(key);
  if (v == nullptr) return Missing(obj, key);
  if (!v->is_array()) return WrongType(obj, key, "a list of numbers", *v);
  if (v->size() != static_cast<size_t>(n)) {
    return absl::InvalidArgumentError(absl::StrCat("config field '", obj.Name(key), "' has ",
                                                   v->size(),
                                                   " entries, expected head_dim / 2 = ", n));
  }
  std::vector<float> out;
  for (const json& x : *v) {
    if (!x.is_number() || !(x.get<double>() > 0.0) ||
        x.get<double>() > std::numeric_limits<float>::max()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config field '", obj.Name(key), "' must hold positive numbers, got ", x.dump()));
    }
    out.push_back(static_cast<float>(x.get<double>()));
  }
  return out;
}

absl::Status ParseYarn(const Obj& rope, const ModelConfig& c, RopeScaling& s) {
  ASSIGN_OR_RETURN(s.factor, PositiveFloat(rope, "factor"));
  ASSIGN_OR_RETURN(
      s.original_max_position_embeddings,
      PositiveInt(rope, "original_max_position_embeddings", c.max_position_embeddings));
  ASSIGN_OR_RETURN(s.beta_fast, PositiveFloat(rope, "beta_fast", 32.0f));
  ASSIGN_OR_RETURN(s.beta_slow, PositiveFloat(rope, "beta_slow", 1.0f));
  ASSIGN_OR_RETURN(s.mscale, PositiveFloat(rope, "mscale", 0.0f));
  ASSIGN_OR_RETURN(s.mscale_all_dim, PositiveFloat(rope, "mscale_all_dim", 0.0f));
  ASSIGN_OR_RETURN(s.attention_factor, PositiveFloat(rope, "attention_factor", -1.0f));
  ASSIGN_OR_RETURN(std::optional<bool> truncate, OptionalBool(rope, "truncate"));
  s.truncate = truncate.value_or(true);
  return absl::OkStatus();
}

// LongRoPE as transformers reads Phi-3: the pre-training length is
// original_max_position_embeddings (in the RoPE block or, in Phi-3 configs, at the top level);
// with it, the scaling factor is max_position_embeddings / original, else `factor` (default 1)
// over max_position_embeddings.
absl::Status ParseLongRope(const Obj& rope, const Obj& top, const ModelConfig& c, RopeScaling& s) {
  const int half = c.head_dim / 2;
  ASSIGN_OR_RETURN(s.short_factor, PositiveFloatList(rope, "short_factor", half));
  ASSIGN_OR_RETURN(s.long_factor, PositiveFloatList(rope, "long_factor", half));
  ASSIGN_OR_RETURN(std::optional<int> original,
                   OptionalInt(rope, "original_max_position_embeddings"));
  if (!original.has_value()) {
    ASSIGN_OR_RETURN(original, OptionalInt(top, "original_max_position_embeddings"));
  }
  if (original.has_value()) {
    if (*original <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config field 'original_max_position_embeddings' must be positive, got ", *original));
    }
    s.original_max_position_embeddings = *original;
    s.factor = static_cast<float>(static_cast<double>(c.max_position_embeddings) / *original);
  } else {
    s.original_max_position_embeddings = c.max_position_embeddings;
    ASSIGN_OR_RETURN(s.factor, PositiveFloat(rope, "factor", 1.0f));
  }
  ASSIGN_OR_RETURN(s.attention_factor, PositiveFloat(rope, "attention_factor", -1.0f));
  s.max_position_embeddings = c.max_position_embeddings;
  return absl::OkStatus();
}

// Parses the scaling part of `rope_scaling` (transformers 4) or `rope_parameters` (5). The type
// is under "rope_type" (newer) or "type" (older); "rope_type" wins when both are present.
absl::StatusOr<RopeScaling> ParseRopeScaling(const Obj& rope, const Obj& top, const ModelConfig& c,
                                             bool type_required) {
  const char* type_key = rope.Get("rope_type") != nullptr ? "rope_type" : "type";
  ASSIGN_OR_RETURN(std::string type, OptionalString(rope, type_key));
  if (type.empty()) {
    if (type_required) return Missing(rope, "rope_type");
    type = "default";
  }
  ASSIGN_OR_RETURN(float partial, PositiveFloat(rope, "partial_rotary_factor", 1.0f));
  if (partial != 1.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("config field '", rope.Name("partial_rotary_factor"), "' is ", partial,
                     "; only full rotary embeddings (1.0) are supported"));
  }
  RopeScaling scaling;
  if (type == "default") return scaling;
  if (type == "linear") {
    scaling.type = RopeType::kLinear;
    ASSIGN_OR_RETURN(scaling.factor, PositiveFloat(rope, "factor"));
    return scaling;
  }
  if (type == "llama3") {
    scaling.type = RopeType::kLlama3;
    ASSIGN_OR_RETURN(scaling.factor, PositiveFloat(rope, "factor"));
    ASSIGN_OR_RETURN(scaling.low_freq_factor, PositiveFloat(rope, "low_freq_factor"));
    ASSIGN_OR_RETURN(scaling.high_freq_factor, PositiveFloat(rope, "high_freq_factor"));
    ASSIGN_OR_RETURN(scaling.original_max_position_embeddings,
                     PositiveInt(rope, "original_max_position_embeddings"));
    // The llama3 formula interpolates over 1 / (high - low).
    if (!(scaling.high_freq_factor > scaling.low_freq_factor)) {
      return absl::InvalidArgumentError(
          absl::StrCat("config field '", rope.Name("high_freq_factor"), "' (",
                       scaling.high_freq_factor, ") must be greater than '",
                       rope.Name("low_freq_factor"), "' (", scaling.low_freq_factor, ")"));
    }
    return scaling;
  }
  if (type == "yarn") {
    scaling.type = RopeType::kYarn;
    RETURN_IF_ERROR(ParseYarn(rope, c, scaling));
    return scaling;
  }
  if (type == "longrope") {
    scaling.type = RopeType::kLongRope;
    RETURN_IF_ERROR(ParseLongRope(rope, top, c, scaling));
    return scaling;
  }
  const std::string field = rope.prefix.substr(0, rope.prefix.size() - 1);  // drop the '.'
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported ", field, " type '", type,
                   "' (supported: default, linear, llama3, yarn, longrope)"));
}

// Fills rope_theta and rope_scaling from either layout; `rope_parameters` takes priority. Needs
// head_dim and max_position_embeddings already parsed.
absl::Status ParseRope(const Obj& top, ModelConfig& config) {
  ASSIGN_OR_RETURN(config.rope_theta, PositiveFloat(top, "rope_theta", 10000.0f));
  // Phi-3 and others may give it at the top level.
  ASSIGN_OR_RETURN(float partial, PositiveFloat(top, "partial_rotary_factor", 1.0f));
  if (partial != 1.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("config field 'partial_rotary_factor' is ", partial,
                     "; only full rotary embeddings (1.0) are supported"));
  }
  if (const json* params = top.Get("rope_parameters"); params != nullptr) {
    if (!params->is_object()) return WrongType(top, "rope_parameters", "an object", *params);
    const Obj rope{*params, "rope_parameters."};
    if (rope.Get("rope_type") == nullptr && rope.Get("rope_theta") == nullptr && !params->empty() &&
        params->begin()->is_object()) {
      return absl::InvalidArgumentError(
          "per-layer-type 'rope_parameters' (an object of objects) are not supported");
    }
    ASSIGN_OR_RETURN(config.rope_theta, PositiveFloat(rope, "rope_theta", config.rope_theta));
    ASSIGN_OR_RETURN(config.rope_scaling,
                     ParseRopeScaling(rope, top, config, /*type_required=*/false));
  } else if (const json* scaling = top.Get("rope_scaling"); scaling != nullptr) {
    if (!scaling->is_object()) return WrongType(top, "rope_scaling", "an object or null", *scaling);
    ASSIGN_OR_RETURN(config.rope_scaling, ParseRopeScaling(Obj{*scaling, "rope_scaling."}, top,
                                                           config, /*type_required=*/true));
  }
  const RopeScaling& s = config.rope_scaling;
  if (s.type == RopeType::kYarn) {
    // The window YaRN extends the pre-training length to.
    const double extended = static_cast<double>(s.original_max_position_embeddings) * s.factor;
    if (extended > config.max_position_embeddings && extended < (1 << 30)) {
      config.max_position_embeddings = static_cast<int>(extended);
    }
  }
  return absl::OkStatus();
}

// The attention block layout of each family (biases, q/k norms, fused weights), and the
// settings of the family the forward does not implement.
absl::Status ParseLayout(const Obj& top, ModelConfig& c) {
  ASSIGN_OR_RETURN(std::string act, OptionalString(top, "hidden_act"));
  if (!act.empty() && act != "silu") {
    return absl::InvalidArgumentError(absl::StrCat("config field 'hidden_act' is '", act,
                                                   "'; only 'silu' (SwiGLU) is supported"));
  }
  ASSIGN_OR_RETURN(std::optional<bool> mlp_bias, OptionalBool(top, "mlp_bias"));
  if (mlp_bias.value_or(false)) {
    return absl::InvalidArgumentError(
        "config field 'mlp_bias' is true; MLP biases are not supported");
  }
  const std::string& arch = c.architecture;
  if (arch == "LlamaForCausalLM" || arch == "Qwen3ForCausalLM") {
    ASSIGN_OR_RETURN(std::optional<bool> bias, OptionalBool(top, "attention_bias"));
    c.qkv_bias = c.o_bias = bias.value_or(false);
  }
  if (arch == "Qwen2ForCausalLM") c.qkv_bias = true;
  if (arch == "Qwen3ForCausalLM") c.qk_norm = true;
  if (arch == "Phi3ForCausalLM") c.fused_qkv = true;
  if (arch == "Qwen2ForCausalLM" || arch == "Qwen3ForCausalLM") {
    // Qwen's sliding window applies only when switched on (to layers >= max_window_layers).
    ASSIGN_OR_RETURN(std::optional<bool> sliding, OptionalBool(top, "use_sliding_window"));
    if (sliding.value_or(false)) {
      return absl::InvalidArgumentError(
          "config field 'use_sliding_window' is true; sliding-window attention is not supported "
          "(attention is always full)");
    }
  }
  return absl::OkStatus();
}

absl::Status ParseSpecialTokens(const Obj& top, ModelConfig& config) {
  ASSIGN_OR_RETURN(std::optional<int> bos, OptionalInt(top, "bos_token_id"));
  config.bos_token_id = bos.value_or(-1);
  config.eos_token_ids.clear();
  if (const json* eos = top.Get("eos_token_id"); eos != nullptr) {
    if (eos->is_array()) {
      for (const json& id : *eos) {
        ASSIGN_OR_RETURN(int v, ToInt(top, "eos_token_id", id));
        config.eos_token_ids.push_back(v);
      }
    } else {
      ASSIGN_OR_RETURN(int v, ToInt(top, "eos_token_id", *eos));
      config.eos_token_ids.push_back(v);
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text) {
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("config is not valid JSON: ", e.what()));
  }
  if (!root.is_object()) return absl::InvalidArgumentError("config must be a JSON object");
  const Obj top{root, ""};

  ModelConfig c;
  ASSIGN_OR_RETURN(c.architecture, ParseArchitecture(top));
  ASSIGN_OR_RETURN(c.vocab_size, PositiveInt(top, "vocab_size"));
  ASSIGN_OR_RETURN(c.hidden_size, PositiveInt(top, "hidden_size"));
  ASSIGN_OR_RETURN(c.intermediate_size, PositiveInt(top, "intermediate_size"));
  ASSIGN_OR_RETURN(c.num_layers, PositiveInt(top, "num_hidden_layers"));
  ASSIGN_OR_RETURN(c.num_heads, PositiveInt(top, "num_attention_heads"));
  ASSIGN_OR_RETURN(c.num_kv_heads, PositiveInt(top, "num_key_value_heads", c.num_heads));
  ASSIGN_OR_RETURN(c.max_position_embeddings, PositiveInt(top, "max_position_embeddings"));
  // 1e-6 is the transformers default for both Llama and Mistral when the field is absent.
  ASSIGN_OR_RETURN(c.rms_norm_eps, PositiveFloat(top, "rms_norm_eps", 1e-6f));

  if (c.num_heads % c.num_kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config field 'num_attention_heads' (", c.num_heads,
                     ") must be a multiple of 'num_key_value_heads' (", c.num_kv_heads, ")"));
  }
  ASSIGN_OR_RETURN(std::optional<int> head_dim, OptionalInt(top, "head_dim"));
  if (head_dim.has_value()) {
    if (*head_dim <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("config field 'head_dim' must be positive, got ", *head_dim));
    }
    c.head_dim = *head_dim;
  } else {
    if (c.hidden_size % c.num_heads != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("config field 'hidden_size' (", c.hidden_size,
                       ") is not divisible by 'num_attention_heads' (", c.num_heads,
                       ") and no 'head_dim' is given"));
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.head_dim % 2 != 0) {  // RoPE rotates pairs of dimensions
    return absl::InvalidArgumentError(
        absl::StrCat("config 'head_dim' must be even for RoPE, got ", c.head_dim));
  }

  RETURN_IF_ERROR(ParseRope(top, c));
  RETURN_IF_ERROR(ParseLayout(top, c));

  if (const json* tie = top.Get("tie_word_embeddings"); tie != nullptr) {
    if (!tie->is_boolean()) return WrongType(top, "tie_word_embeddings", "true or false", *tie);
    c.tie_word_embeddings = tie->get<bool>();
  }
  RETURN_IF_ERROR(ParseSpecialTokens(top, c));
  // transformers 5 writes "dtype", 4 writes "torch_dtype".
  ASSIGN_OR_RETURN(c.torch_dtype, OptionalString(top, "dtype"));
  if (c.torch_dtype.empty()) {
    ASSIGN_OR_RETURN(c.torch_dtype, OptionalString(top, "torch_dtype"));
  }
  // Mistral's and Phi-3's `sliding_window` is deliberately ignored: contexts are bounded by
  // max_position_embeddings elsewhere, and attention stays full (exact up to the window).
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open '", path, "'"));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read '", path, "'"));
  absl::StatusOr<ModelConfig> config = ParseModelConfig(text.str());
  if (!config.ok()) {
    return absl::Status(config.status().code(),
                        absl::StrCat(path, ": ", config.status().message()));
  }
  return config;
}

}  // namespace squeeze
