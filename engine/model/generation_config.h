// generation_config.json: the end-of-sequence ids and sampling defaults a model ships with
// (transformers' GenerationConfig), and the EOS ids a server uses with a given tokenizer.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/config.h"
#include "engine/sampling/sampling_params.h"
#include "engine/tokenizer/tokenizer.h"

namespace squeeze {

struct GenerationConfig {
  std::vector<int32_t> eos_token_ids;  // empty when the file gives none
  std::optional<bool> do_sample;       // false: greedy, whatever the temperature
  std::optional<float> temperature;
  std::optional<float> top_p;
  std::optional<int> top_k;
  std::optional<float> min_p;
  std::optional<float> repetition_penalty;
};

// Parses the text of a generation_config.json; errors name the field.
absl::StatusOr<GenerationConfig> ParseGenerationConfig(const std::string& json_text);
// `<dir>/generation_config.json`, or an empty config when there is none.
absl::StatusOr<GenerationConfig> LoadGenerationConfig(const std::string& dir);

// The sampling defaults of a request that sets none (server defaults replaced by the model's
// generation config; do_sample=false means greedy).
SamplingParams DefaultSamplingParams(const GenerationConfig& config, SamplingParams defaults);

// The ids that end a generation with `tokenizer`: the tokenizer's EOS plus, from the directory
// the tokenizer comes from, generation_config.json's eos_token_id (or config.json's when the
// former gives none). The ids of a model's config never apply to a tokenizer from another
// directory (--tokenizer): they number another vocabulary.
absl::StatusOr<std::vector<int32_t>> ResolveEosTokenIds(const std::string& model_dir,
                                                        const std::string& tokenizer_dir,
                                                        const ModelConfig& model_config,
                                                        const Tokenizer& tokenizer);

}  // namespace squeeze
