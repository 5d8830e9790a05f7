// config.json parsing for Llama-family models. Every lookup is type-checked before use, so no
// nlohmann exception can escape; only json::parse can throw and it is caught here.
#include "engine/model/config.h"

#include <cstdint>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <string_view>

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

absl::StatusOr<std::string> ParseArchitecture(const Obj& top) {
  std::string arch;
  if (const json* archs = top.Get("architectures"); archs != nullptr) {
    if (!archs->is_array() || archs->empty() || !(*archs)[0].is_string()) {
      return WrongType(top, "architectures", "a non-empty list of strings", *archs);
    }
    arch = (*archs)[0].get<std::string>();
  } else {
    ASSIGN_OR_RETURN(std::string model_type, OptionalString(top, "model_type"));
    if (model_type == "llama") {
      arch = "LlamaForCausalLM";
    } else if (model_type == "mistral") {
      arch = "MistralForCausalLM";
    } else if (model_type.empty()) {
      return absl::InvalidArgumentError(
          "config has neither 'architectures' nor 'model_type'; cannot tell the model family");
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("unsupported model_type '", model_type, "' (supported: llama, mistral)"));
    }
  }
  if (arch != "LlamaForCausalLM" && arch != "MistralForCausalLM") {
    return absl::InvalidArgumentError(absl::StrCat(
        "unsupported architecture '", arch,
        "' in field 'architectures' (supported: LlamaForCausalLM, MistralForCausalLM)"));
  }
  return arch;
}

// Parses the scaling part of `rope_scaling` (transformers 4) or `rope_parameters` (5). The type
// is under "rope_type" (newer) or "type" (older); "rope_type" wins when both are present.
absl::StatusOr<RopeScaling> ParseRopeScaling(const Obj& rope, bool type_required) {
  const char* type_key = rope.Get("rope_type") != nullptr ? "rope_type" : "type";
  ASSIGN_OR_RETURN(std::string type, OptionalString(rope, type_key));
  if (type.empty()) {
    if (type_required) return Missing(rope, "rope_type");
    type = "default";
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
  const std::string field = rope.prefix.substr(0, rope.prefix.size() - 1);  // drop the '.'
  return absl::InvalidArgumentError(absl::StrCat("unsupported ", field, " type '", type,
                                                 "' (supported: default, linear, llama3)"));
}

// Fills rope_theta and rope_scaling from either layout; `rope_parameters` takes priority.
absl::Status ParseRope(const Obj& top, ModelConfig& config) {
  ASSIGN_OR_RETURN(config.rope_theta, PositiveFloat(top, "rope_theta", 10000.0f));
  if (const json* params = top.Get("rope_parameters"); params != nullptr) {
    if (!params->is_object()) return WrongType(top, "rope_parameters", "an object", *params);
    const Obj rope{*params, "rope_parameters."};
    if (rope.Get("rope_type") == nullptr && rope.Get("rope_theta") == nullptr && !params->empty() &&
        params->begin()->is_object()) {
      return absl::InvalidArgumentError(
          "per-layer-type 'rope_parameters' (an object of objects) are not supported for Llama");
    }
    ASSIGN_OR_RETURN(config.rope_theta, PositiveFloat(rope, "rope_theta", config.rope_theta));
    ASSIGN_OR_RETURN(config.rope_scaling, ParseRopeScaling(rope, /*type_required=*/false));
    return absl::OkStatus();
  }
  if (const json* scaling = top.Get("rope_scaling"); scaling != nullptr) {
    if (!scaling->is_object()) return WrongType(top, "rope_scaling", "an object or null", *scaling);
    ASSIGN_OR_RETURN(config.rope_scaling,
                     ParseRopeScaling(Obj{*scaling, "rope_scaling."}, /*type_required=*/true));
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
  // Mistral's `sliding_window` is deliberately ignored: contexts are bounded by
  // max_position_embeddings elsewhere, and attention stays full.
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
