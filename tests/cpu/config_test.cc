#include "engine/model/config.h"

#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace squeeze {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using json = nlohmann::json;

// A Llama-2-7B-like config in the transformers 4 layout.
json Llama2Config() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 32000,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "rope_scaling": null,
    "tie_word_embeddings": false,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "float16"
  })");
}

absl::StatusOr<ModelConfig> Parse(const json& j) { return ParseModelConfig(j.dump()); }

// Expects INVALID_ARGUMENT whose message contains `needle`.
void ExpectError(const json& j, const std::string& needle) {
  absl::StatusOr<ModelConfig> c = Parse(j);
  ASSERT_FALSE(c.ok()) << "accepted: " << j.dump();
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << c.status();
  EXPECT_THAT(std::string(c.status().message()), HasSubstr(needle));
}

TEST(ConfigTest, ParsesTransformers4Layout) {
  absl::StatusOr<ModelConfig> c = Parse(Llama2Config());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "LlamaForCausalLM");
  EXPECT_EQ(c->vocab_size, 32000);
  EXPECT_EQ(c->hidden_size, 4096);
  EXPECT_EQ(c->intermediate_size, 11008);
  EXPECT_EQ(c->num_layers, 32);
  EXPECT_EQ(c->num_heads, 32);
  EXPECT_EQ(c->num_kv_heads, 32);
  EXPECT_EQ(c->head_dim, 128);  // default: hidden / heads
  EXPECT_EQ(c->max_position_embeddings, 4096);
  EXPECT_FLOAT_EQ(c->rms_norm_eps, 1e-5f);
  EXPECT_FLOAT_EQ(c->rope_theta, 10000.0f);
  EXPECT_EQ(c->rope_scaling.type, RopeType::kDefault);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_THAT(c->eos_token_ids, ElementsAre(2));
  EXPECT_EQ(c->torch_dtype, "float16");
  EXPECT_EQ(c->group_size(), 1);
}

TEST(ConfigTest, LinearScalingTopLevel) {
  json j = Llama2Config();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 8.0}};  // LongChat-7B-v1.5-32k
  j["max_position_embeddings"] = 32768;
  absl::StatusOr<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, RopeType::kLinear);
  EXPECT_FLOAT_EQ(c->rope_scaling.factor, 8.0f);
}

TEST(ConfigTest, Llama3ScalingWithGqaAndEosList) {
  // Llama-3.1-8B-Instruct.
  json j = Llama2Config();
  j["vocab_size"] = 128256;
  j["intermediate_size"] = 14336;
  j["num_key_value_heads"] = 8;
  j["max_position_embeddings"] = 131072;
  j["rope_theta"] = 500000.0;
  j["rope_scaling"] = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  j["bos_token_id"] = 128000;
  j["eos_token_id"] = {128001, 128008, 128009};
  j["torch_dtype"] = "bfloat16";
  absl::StatusOr<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_kv_heads, 8);
  EXPECT_EQ(c->group_size(), 4);
  EXPECT_FLOAT_EQ(c->rope_theta, 500000.0f);
  EXPECT_EQ(c->rope_scaling.type, RopeType::kLlama3);
  EXPECT_FLOAT_EQ(c->rope_scaling.factor, 8.0f);
  EXPECT_FLOAT_EQ(c->rope_scaling.low_freq_factor, 1.0f);
  EXPECT_FLOAT_EQ(c->rope_scaling.high_freq_factor, 4.0f);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c->bos_token_id, 128000);
  EXPECT_THAT(c->eos_token_ids, ElementsAre(128001, 128008, 128009));
}

TEST(ConfigTest, RopeTypeKeyWinsOverLegacyTypeKey) {
  json j = Llama2Config();
  j["rope_scaling"] = {{"type", "linear"}, {"rope_type", "default"}, {"factor", 4.0}};
  absl::StatusOr<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, RopeType::kDefault);
}

TEST(ConfigTest, ParsesTransformers5RopeParameters) {
  json j = Llama2Config();
  j.erase("rope_theta");
  j.erase("rope_scaling");
  j.erase("torch_dtype");
  j["dtype"] = "bfloat16";
  j["rope_parameters"] = {{"rope_type", "llama3"},   {"rope_theta", 500000.0},
                          {"factor", 32.0},          {"low_freq_factor", 1.0},
                          {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  absl::StatusOr<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FLOAT_EQ(c->rope_theta, 500000.0f);
  EXPECT_EQ(c->rope_scaling.type, RopeType::kLlama3);
  EXPECT_FLOAT_EQ(c->rope_scaling.factor, 32.0f);
  EXPECT_EQ(c->torch_dtype, "bfloat16");
}

TEST(ConfigTest, RopeParametersTakePriorityOverTopLevelFields) {
  json j = Llama2Config();
  j["rope_theta"] = 1234.0;
  j["rope_scaling"] = {{"type", "yarn"}, {"factor", 4.0}};  // would be rejected if read
  j["rope_parameters"] = {{"rope_type", "linear"}, {"rope_theta", 250000.0}, {"factor", 2.0}};
  absl::StatusOr<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FLOAT_EQ(c->rope_theta, 250000.0f);
  EXPECT_EQ(c->rope_scaling.type, RopeType::kLinear);
  EXPECT_FLOAT_EQ(c->rope_scaling.factor, 2.0f);

  // rope_parameters without rope_theta fall back to the top-level value; no type = default.
  j["rope_parameters"] = json::object();
  c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_FLOAT_EQ(c->rope_theta, 1234.0f);
  EXPECT_EQ(c->rope_scaling.type, RopeType::kDefault);
}

TEST(ConfigTest, DefaultsForOptionalFields) {
  json j = Llama2Config();
  for (const char* key : {"num_key_value_heads", "rms_norm_eps", "rope_theta", "rope_scaling",
                          "tie_word_embeddings", "bos_token_id", "eos_token_id", "torch_dtype"}) {
    j.erase(key);
  }
  absl::StatusOr<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_kv_heads, 32);
  EXPECT_FLOAT_EQ(c->rms_norm_eps, 1e-6f);
  EXPECT_FLOAT_EQ(c->rope_theta, 10000.0f);
  EXPECT_FALSE(c->tie_word_embeddings);
  EXPECT_EQ(c->bos_token_id, -1);
  EXPECT_TRUE(c->eos_token_ids.empty());
  EXPECT_EQ(c->torch_dtype, "");
}

TEST(ConfigTest, NullMeansDefault) {
  json j = Llama2Config();
  j["num_key_value_heads"] = nullptr;
  j["head_dim"] = nullptr;
  j["bos_token_id"] = nullptr;
  absl::StatusOr<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_kv_heads, 32);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->bos_token_id, -1);
}

TEST(ConfigTest, MistralWithExplicitHeadDimAndSlidingWindow) {
  // Mistral-NeMo style: head_dim is not hidden / heads.
  json j = Llama2Config();
  j["architectures"] = {"MistralForCausalLM"};
  j["model_type"] = "mistral";
  j["hidden_size"] = 5120;
  j["num_attention_heads"] = 32;
  j["num_key_value_heads"] = 8;
  j["head_dim"] = 128;
  j["sliding_window"] = 4096;
  j["max_position_embeddings"] = 131072;
  j["tie_word_embeddings"] = true;
  absl::StatusOr<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "MistralForCausalLM");
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_TRUE(c->tie_word_embeddings);
}

TEST(ConfigTest, ModelTypeWhenArchitecturesMissing) {
  json j = Llama2Config();
  j.erase("architectures");
  j["model_type"] = "mistral";
  absl::StatusOr<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "MistralForCausalLM");
  j["model_type"] = "llama";
  c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "LlamaForCausalLM");
}

TEST(ConfigTest, ErrorsOnMissingRequiredFields) {
  for (const char* key : {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "max_position_embeddings"}) {
    SCOPED_TRACE(key);
    json j = Llama2Config();
    j.erase(key);
    ExpectError(j, std::string("missing required field '") + key + "'");
  }
}

TEST(ConfigTest, ErrorsOnWrongTypes) {
  struct Case {
    const char* key;
    json value;
  };
  const Case cases[] = {
      {"vocab_size", "32000"},
      {"hidden_size", 4096.0},
      {"num_hidden_layers", true},
      {"num_key_value_heads", json::array({8})},
      {"head_dim", 128.5},
      {"rms_norm_eps", "1e-5"},
      {"rope_theta", json::object()},
      {"rope_scaling", "linear"},
      {"rope_parameters", 3},
      {"tie_word_embeddings", 1},
      {"bos_token_id", "<s>"},
      {"eos_token_id", json::array({2, "x"})},
      {"torch_dtype", 16},
      {"dtype", false},
      {"architectures", "LlamaForCausalLM"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.key);
    json j = Llama2Config();
    j[c.key] = c.value;
    ExpectError(j, std::string("'") + c.key + "'");
  }
}

TEST(ConfigTest, ErrorsOnNonPositiveSizes) {
  for (const char* key :
       {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "head_dim"}) {
    for (int value : {0, -4}) {
      SCOPED_TRACE(std::string(key) + "=" + std::to_string(value));
      json j = Llama2Config();
      j[key] = value;
      ExpectError(j, std::string("'") + key + "' must be positive");
    }
  }
  for (const char* key : {"rms_norm_eps", "rope_theta"}) {
    SCOPED_TRACE(key);
    json j = Llama2Config();
    j[key] = 0.0;
    ExpectError(j, std::string("'") + key + "' must be a positive finite number");
  }
}

TEST(ConfigTest, ErrorsOnOutOfRangeInteger) {
  json j = Llama2Config();
  j["vocab_size"] = 5000000000ULL;
  ExpectError(j, "'vocab_size' is too large");
}

TEST(ConfigTest, ErrorsOnInconsistentHeads) {
  json j = Llama2Config();
  j["num_key_value_heads"] = 5;
  ExpectError(j, "'num_attention_heads' (32) must be a multiple of 'num_key_value_heads' (5)");

  j = Llama2Config();
  j["num_attention_heads"] = 30;  // 4096 % 30 != 0, no head_dim
  j["num_key_value_heads"] = 30;
  ExpectError(j, "'hidden_size' (4096) is not divisible by 'num_attention_heads' (30)");

  j = Llama2Config();
  j["head_dim"] = 127;
  ExpectError(j, "'head_dim' must be even");
}

TEST(ConfigTest, ErrorsOnUnsupportedArchitecture) {
  json j = Llama2Config();
  j["architectures"] = {"GPT2LMHeadModel"};
  ExpectError(j, "unsupported architecture 'GPT2LMHeadModel'");

  j.erase("architectures");
  j["model_type"] = "gpt2";
  ExpectError(j, "unsupported model_type 'gpt2'");

  j.erase("model_type");
  ExpectError(j, "neither 'architectures' nor 'model_type'");

  j["architectures"] = json::array();
  ExpectError(j, "'architectures'");
}

TEST(ConfigTest, ErrorsOnUnsupportedRopeTypes) {
  for (const char* type : {"dynamic", "mrope", "su"}) {
    SCOPED_TRACE(type);
    json j = Llama2Config();
    j["rope_scaling"] = {{"rope_type", type}, {"factor", 4.0}};
    ExpectError(j, std::string("unsupported rope_scaling type '") + type +
                       "' (supported: default, linear, llama3, yarn, longrope)");
    j["rope_scaling"] = {{"type", type}, {"factor", 4.0}};
    ExpectError(j, std::string("unsupported rope_scaling type '") + type + "'");
    j["rope_parameters"] = {{"rope_type", type}, {"rope_theta", 10000.0}, {"factor", 4.0}};
    ExpectError(j, std::string("unsupported rope_parameters type '") + type + "'");
  }
}

TEST(ConfigTest, ErrorsOnIncompleteRopeScaling) {
  json j = Llama2Config();
  j["rope_scaling"] = {{"factor", 4.0}};
  ExpectError(j, "missing required field 'rope_scaling.rope_type'");

  j["rope_scaling"] = {{"type", "linear"}};
  ExpectError(j, "missing required field 'rope_scaling.factor'");

  j["rope_scaling"] = {{"type", "linear"}, {"factor", -2.0}};
  ExpectError(j, "'rope_scaling.factor' must be a positive finite number");

  const json llama3 = {{"rope_type", "llama3"},
                       {"factor", 8.0},
                       {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0},
                       {"original_max_position_embeddings", 8192}};
  for (const char* key :
       {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}) {
    SCOPED_TRACE(key);
    j["rope_scaling"] = llama3;
    j["rope_scaling"].erase(key);
    ExpectError(j, std::string("missing required field 'rope_scaling.") + key + "'");
  }
  j["rope_scaling"] = llama3;
  j["rope_scaling"]["high_freq_factor"] = 1.0;
  ExpectError(j, "'rope_scaling.high_freq_factor' (1) must be greater than");

  j = Llama2Config();
  j["rope_parameters"] = {{"rope_type", "linear"}, {"rope_theta", 10000.0}};
  ExpectError(j, "missing required field 'rope_parameters.factor'");

  j["rope_parameters"] = {{"full_attention", {{"rope_type", "default"}}}};
  ExpectError(j, "per-layer-type 'rope_parameters'");
}

TEST(ConfigTest, ErrorsOnInvalidJson) {
  for (const char* text : {"", "{", "[1, 2]", "{\"vocab_size\": }", "null", "\"llama\""}) {
    SCOPED_TRACE(text);
    absl::StatusOr<ModelConfig> c = ParseModelConfig(text);
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(c.status().message()), HasSubstr("config"));
  }
}

TEST(ConfigTest, LoadsFromDirectory) {
  const std::filesystem::path dir = std::filesystem::path(testing::TempDir()) / "config_test_load";
  std::filesystem::create_directories(dir);
  std::filesystem::remove(dir / "config.json");

  absl::StatusOr<ModelConfig> c = LoadModelConfig(dir.string());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("config.json"));

  std::ofstream(dir / "config.json") << Llama2Config().dump(2);
  c = LoadModelConfig(dir.string());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->vocab_size, 32000);

  // Errors from the parser are prefixed with the file they came from.
  json bad = Llama2Config();
  bad.erase("hidden_size");
  std::ofstream(dir / "config.json", std::ios::trunc) << bad.dump();
  c = LoadModelConfig(dir.string());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr((dir / "config.json").string()));
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("'hidden_size'"));
}

}  // namespace
}  // namespace squeeze

// ---- families beyond Llama -------------------------------------------------------------------

namespace squeeze {
namespace {

// Qwen2.5-7B-Instruct's config.json with YaRN switched on as its README says.
json Qwen25Config() {
  return json::parse(R"({
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
    "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 32768,
    "max_window_layers": 28, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 131072, "use_sliding_window": false, "tie_word_embeddings": false,
    "torch_dtype": "bfloat16", "vocab_size": 152064, "bos_token_id": 151643,
    "eos_token_id": 151645,
    "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"}
  })");
}

TEST(ConfigFamiliesTest, Qwen2WithYarn) {
  absl::StatusOr<ModelConfig> c = Parse(Qwen25Config());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "Qwen2ForCausalLM");
  EXPECT_EQ(c->group_size(), 7);
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_TRUE(c->qkv_bias);
  EXPECT_FALSE(c->o_bias);
  EXPECT_FALSE(c->qk_norm);
  EXPECT_EQ(c->rope_scaling.type, RopeType::kYarn);
  EXPECT_FLOAT_EQ(c->rope_scaling.factor, 4.0f);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 32768);
  EXPECT_FLOAT_EQ(c->rope_scaling.beta_fast, 32.0f);
  EXPECT_FLOAT_EQ(c->rope_scaling.beta_slow, 1.0f);
  EXPECT_TRUE(c->rope_scaling.truncate);
  EXPECT_EQ(c->max_position_embeddings, 131072);  // the window YaRN x4 extends to

  json j = Qwen25Config();
  j["use_sliding_window"] = true;
  ExpectError(j, "'use_sliding_window' is true");
  j = Qwen25Config();
  j.erase("architectures");
  c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "Qwen2ForCausalLM");  // from model_type
}

TEST(ConfigFamiliesTest, Qwen3HeadDimNormsAndBias) {
  json j = json::parse(R"({
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_act": "silu",
    "hidden_size": 2560, "head_dim": 128, "intermediate_size": 9728, "num_hidden_layers": 36,
    "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000, "rope_scaling": null,
    "attention_bias": false, "use_sliding_window": false, "tie_word_embeddings": true,
    "vocab_size": 151936, "eos_token_id": 151645
  })");
  absl::StatusOr<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_NE(c->head_dim * c->num_heads, c->hidden_size);
  EXPECT_TRUE(c->qk_norm);
  EXPECT_FALSE(c->qkv_bias);
  EXPECT_EQ(c->rope_scaling.type, RopeType::kDefault);
  j["attention_bias"] = true;
  c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->qkv_bias);
  EXPECT_TRUE(c->o_bias);
  // Qwen3's YaRN in the transformers-5 layout, with the optional fields.
  j["rope_parameters"] = {{"rope_type", "yarn"},
                          {"rope_theta", 1000000},
                          {"factor", 4.0},
                          {"original_max_position_embeddings", 32768},
                          {"beta_fast", 16},
                          {"beta_slow", 2},
                          {"attention_factor", 1.25},
                          {"truncate", false}};
  c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->rope_scaling.type, RopeType::kYarn);
  EXPECT_FLOAT_EQ(c->rope_scaling.beta_fast, 16.0f);
  EXPECT_FLOAT_EQ(c->rope_scaling.beta_slow, 2.0f);
  EXPECT_FLOAT_EQ(c->rope_scaling.attention_factor, 1.25f);
  EXPECT_FALSE(c->rope_scaling.truncate);
  EXPECT_EQ(c->max_position_embeddings, 131072);
  j["rope_parameters"]["truncate"] = "no";
  ExpectError(j, "'rope_parameters.truncate' must be true or false");
  j["rope_parameters"].erase("truncate");
  j["rope_parameters"].erase("factor");
  ExpectError(j, "missing required field 'rope_parameters.factor'");
}

TEST(ConfigFamiliesTest, MistralNemoExplicitHeadDim) {
  json j = json::parse(R"({
    "architectures": ["MistralForCausalLM"], "hidden_size": 5120, "head_dim": 128,
    "intermediate_size": 14336, "num_hidden_layers": 40, "num_attention_heads": 32,
    "num_key_value_heads": 8, "max_position_embeddings": 1024000, "rms_norm_eps": 1e-05,
    "rope_theta": 1000000.0, "sliding_window": null, "vocab_size": 131072, "hidden_act": "silu"
  })");
  absl::StatusOr<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->num_heads * c->head_dim, 4096);
  EXPECT_FALSE(c->qkv_bias || c->o_bias || c->qk_norm || c->fused_qkv);
}

// Phi-3.5-mini: LongRoPE with the pre-training length at the top level.
json Phi35Config() {
  json j = json::parse(R"({
    "architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_act": "silu",
    "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 131072,
    "original_max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
    "sliding_window": 262144, "tie_word_embeddings": false, "vocab_size": 32064
  })");
  std::vector<double> short_factor(48, 1.0), long_factor(48, 2.0);
  j["rope_scaling"] = {
      {"type", "longrope"}, {"short_factor", short_factor}, {"long_factor", long_factor}};
  return j;
}

TEST(ConfigFamiliesTest, Phi3LongRope) {
  absl::StatusOr<ModelConfig> c = Parse(Phi35Config());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 96);
  EXPECT_TRUE(c->fused_qkv);
  EXPECT_EQ(c->rope_scaling.type, RopeType::kLongRope);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 4096);
  EXPECT_EQ(c->rope_scaling.max_position_embeddings, 131072);
  EXPECT_FLOAT_EQ(c->rope_scaling.factor, 32.0f);
  EXPECT_EQ(c->rope_scaling.short_factor.size(), 48u);
  EXPECT_EQ(c->max_position_embeddings, 131072);

  json j = Phi35Config();
  j["rope_scaling"]["long_factor"] = std::vector<double>(47, 1.0);
  ExpectError(j, "'rope_scaling.long_factor' has 47 entries, expected head_dim / 2 = 48");
  j = Phi35Config();
  j["rope_scaling"]["short_factor"][3] = -1.0;
  ExpectError(j, "'rope_scaling.short_factor' must hold positive numbers");
  j = Phi35Config();
  j["partial_rotary_factor"] = 0.75;  // Phi-4-mini
  ExpectError(j, "'partial_rotary_factor' is 0.75; only full rotary embeddings");
}

TEST(ConfigFamiliesTest, UnsupportedSettingsAreRefused) {
  json j = Llama2Config();
  j["hidden_act"] = "gelu";
  ExpectError(j, "'hidden_act' is 'gelu'; only 'silu'");
  j = Llama2Config();
  j["mlp_bias"] = true;
  ExpectError(j, "'mlp_bias' is true");
  j = Llama2Config();
  j["architectures"] = {"Gemma2ForCausalLM"};
  ExpectError(j,
              "unsupported architecture 'Gemma2ForCausalLM' in field 'architectures' "
              "(supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, "
              "Qwen3ForCausalLM, Phi3ForCausalLM)");
  j.erase("architectures");
  j["model_type"] = "qwen2_moe";
  ExpectError(j,
              "unsupported model_type 'qwen2_moe' (supported: llama, mistral, qwen2, qwen3, "
              "phi3)");
  j = Llama2Config();
  j["attention_bias"] = true;
  absl::StatusOr<ModelConfig> c = Parse(j);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->qkv_bias && c->o_bias);
}

}  // namespace
}  // namespace squeeze
