#include "engine/model/generation_config.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"
#include "nlohmann/json.hpp"

namespace squeeze {
namespace {

using nlohmann::json;

absl::Status Field(const std::string& name, const char* expected, const json& got) {
  return absl::InvalidArgumentError(absl::StrCat("generation_config field '", name, "' must be ",
                                                 expected, ", got ", got.dump()));
}

absl::StatusOr<std::vector<int32_t>> EosIds(const json& root) {
  std::vector<int32_t> ids;
  auto it = root.find("eos_token_id");
  if (it == root.end() || it->is_null()) return ids;
  const json list = it->is_array() ? *it : json::array({*it});
  for (const json& id : list) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > (1 << 30)) {
      return Field("eos_token_id", "a token id or a list of them", *it);
    }
    ids.push_back(static_cast<int32_t>(id.get<int64_t>()));
  }
  return ids;
}

absl::StatusOr<std::string> ReadIfPresent(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return std::string();
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  if (!in) return absl::DataLossError(absl::StrCat("cannot read '", path.string(), "'"));
  return text.str();
}

}  // namespace

absl::StatusOr<GenerationConfig> ParseGenerationConfig(const std::string& json_text) {
  const json root = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (!root.is_object()) {
    return absl::InvalidArgumentError("generation_config.json is not a JSON object");
  }
  GenerationConfig c;
  ASSIGN_OR_RETURN(c.eos_token_ids, EosIds(root));
  auto number = [&](const char* key, std::optional<float>* out) -> absl::Status {
    auto it = root.find(key);
    if (it == root.end() || it->is_null()) return absl::OkStatus();
    if (!it->is_number() || !(it->get<double>() >= 0.0)) {
      return Field(key, "a non-negative number", *it);
    }
    *out = static_cast<float>(it->get<double>());
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(number("temperature", &c.temperature));
  RETURN_IF_ERROR(number("top_p", &c.top_p));
  RETURN_IF_ERROR(number("min_p", &c.min_p));
  RETURN_IF_ERROR(number("repetition_penalty", &c.repetition_penalty));
  if (auto it = root.find("top_k"); it != root.end() && !it->is_null()) {
    if (!it->is_number_integer() || it->get<int64_t>() < 0) {
      return Field("top_k", "a non-negative integer", *it);
    }
    c.top_k = static_cast<int>(std::min<int64_t>(it->get<int64_t>(), 1 << 30));
  }
  if (auto it = root.find("do_sample"); it != root.end() && !it->is_null()) {
    if (!it->is_boolean()) return Field("do_sample", "true or false", *it);
    c.do_sample = it->get<bool>();
  }
  if (c.top_p && (*c.top_p <= 0.0f || *c.top_p > 1.0f)) {
    return Field("top_p", "in (0, 1]", root["top_p"]);
  }
  if (c.repetition_penalty && *c.repetition_penalty <= 0.0f) {
    return Field("repetition_penalty", "positive", root["repetition_penalty"]);
  }
  return c;
}

absl::StatusOr<GenerationConfig> LoadGenerationConfig(const std::string& dir) {
  const std::filesystem::path path = std::filesystem::path(dir) / "generation_config.json";
  ASSIGN_OR_RETURN(std::string text, ReadIfPresent(path));
  if (text.empty()) return GenerationConfig{};
  absl::StatusOr<GenerationConfig> c = ParseGenerationConfig(text);
  if (!c.ok())
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": ", c.status().message()));
  return c;
}

SamplingParams DefaultSamplingParams(const GenerationConfig& c, SamplingParams defaults) {
  // transformers: without do_sample=true the model decodes greedily (its defaults are for
  // sampling only). A file with sampling values but no do_sample is taken as sampling.
  if (c.do_sample.has_value() && !*c.do_sample) {
    defaults.temperature = 0.0f;
    return defaults;
  }
  if (c.temperature) defaults.temperature = *c.temperature;
  if (c.top_p) defaults.top_p = *c.top_p;
  if (c.top_k) defaults.top_k = *c.top_k;
  if (c.min_p) defaults.min_p = *c.min_p;
  if (c.repetition_penalty) defaults.repetition_penalty = *c.repetition_penalty;
  return defaults;
}

absl::StatusOr<std::vector<int32_t>> ResolveEosTokenIds(const std::string& model_dir,
                                                        const std::string& tokenizer_dir,
                                                        const ModelConfig& model_config,
                                                        const Tokenizer& tokenizer) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const bool own = tokenizer_dir.empty() || fs::equivalent(model_dir, tokenizer_dir, ec);
  const std::string dir = own ? model_dir : tokenizer_dir;
  ASSIGN_OR_RETURN(GenerationConfig gen, LoadGenerationConfig(dir));
  std::vector<int32_t> ids = gen.eos_token_ids;
  if (ids.empty() && own) {
    ids.assign(model_config.eos_token_ids.begin(), model_config.eos_token_ids.end());
  } else if (ids.empty()) {
    // A tokenizer directory of another model may hold that model's config.json.
    ASSIGN_OR_RETURN(std::string text, ReadIfPresent(fs::path(dir) / "config.json"));
    if (!text.empty()) {
      const json root = json::parse(text, nullptr, /*allow_exceptions=*/false);
      if (root.is_object()) {
        absl::StatusOr<std::vector<int32_t>> from_config = EosIds(root);
        if (from_config.ok()) ids = *from_config;
      }
    }
  }
  if (tokenizer.eos_id() >= 0 &&
      std::find(ids.begin(), ids.end(), tokenizer.eos_id()) == ids.end()) {
    ids.push_back(tokenizer.eos_id());
  }
  // Ids outside the tokenizer cannot be ones its text means.
  ids.erase(std::remove_if(ids.begin(), ids.end(),
                           [&](int32_t id) { return id < 0 || id >= tokenizer.vocab_size(); }),
            ids.end());
  return ids;
}

}  // namespace squeeze
