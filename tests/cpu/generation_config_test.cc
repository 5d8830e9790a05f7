// generation_config.json: parsing, the sampling defaults it sets, and the EOS ids a server uses
// with its tokenizer (never the model config's ids for a tokenizer from another directory).
#include "engine/model/generation_config.h"

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace squeeze {
namespace {

namespace fs = std::filesystem;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A tokenizer of 100 tokens whose EOS is 7.
class FakeTokenizer final : public Tokenizer {
 public:
  int vocab_size() const override { return 100; }
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view) const override {
    return std::vector<int32_t>();
  }
  absl::StatusOr<std::string> Decode(const std::vector<int32_t>&) const override {
    return std::string();
  }
  std::string TokenBytes(int32_t) const override { return ""; }
  int bos_id() const override { return 1; }
  int eos_id() const override { return 7; }
};

fs::path Dir(const std::string& name, const std::string& generation_config,
             const std::string& config = "") {
  const fs::path dir = fs::path(::testing::TempDir()) / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  if (!generation_config.empty())
    std::ofstream(dir / "generation_config.json") << generation_config;
  if (!config.empty()) std::ofstream(dir / "config.json") << config;
  return dir;
}

TEST(GenerationConfigTest, ParsesQwenAndLlamaStyleFiles) {
  // Qwen2.5-7B-Instruct's.
  absl::StatusOr<GenerationConfig> c = ParseGenerationConfig(R"({
    "bos_token_id": 151643, "pad_token_id": 151643, "do_sample": true,
    "eos_token_id": [151645, 151643], "repetition_penalty": 1.05, "temperature": 0.7,
    "top_p": 0.8, "top_k": 20, "transformers_version": "4.37.0"})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT(c->eos_token_ids, ElementsAre(151645, 151643));
  SamplingParams s = DefaultSamplingParams(*c, SamplingParams{});
  EXPECT_FLOAT_EQ(s.temperature, 0.7f);
  EXPECT_FLOAT_EQ(s.top_p, 0.8f);
  EXPECT_EQ(s.top_k, 20);
  EXPECT_FLOAT_EQ(s.repetition_penalty, 1.05f);
  // do_sample=false: greedy.
  c = ParseGenerationConfig(R"({"eos_token_id": 2, "do_sample": false, "temperature": 0.6})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT(c->eos_token_ids, ElementsAre(2));
  EXPECT_FLOAT_EQ(DefaultSamplingParams(*c, SamplingParams{}).temperature, 0.0f);
  // Nothing about sampling: the server's defaults stay.
  c = ParseGenerationConfig(R"({"eos_token_id": 2, "_from_model_config": true})");
  ASSERT_TRUE(c.ok());
  SamplingParams server;
  server.temperature = 0.9f;
  EXPECT_FLOAT_EQ(DefaultSamplingParams(*c, server).temperature, 0.9f);
}

TEST(GenerationConfigTest, BadFieldsAreNamed) {
  EXPECT_THAT(std::string(ParseGenerationConfig(R"({"top_p": 1.5})").status().message()),
              HasSubstr("'top_p' must be in (0, 1]"));
  EXPECT_THAT(std::string(ParseGenerationConfig(R"({"eos_token_id": "x"})").status().message()),
              HasSubstr("'eos_token_id' must be a token id or a list of them"));
  EXPECT_THAT(std::string(ParseGenerationConfig(R"({"do_sample": 1})").status().message()),
              HasSubstr("'do_sample' must be true or false"));
  EXPECT_FALSE(ParseGenerationConfig("[]").ok());
  const fs::path dir = Dir("generation_config_bad", R"({"top_k": -1})");
  EXPECT_THAT(std::string(LoadGenerationConfig(dir.string()).status().message()),
              HasSubstr("generation_config.json: generation_config field 'top_k'"));
  EXPECT_TRUE(LoadGenerationConfig(Dir("generation_config_none", "").string()).ok());
}

TEST(GenerationConfigTest, EosIdsComeFromTheTokenizersOwnModel) {
  FakeTokenizer tokenizer;
  ModelConfig model;
  model.eos_token_ids = {50, 60};
  // The model's own tokenizer: generation_config's ids (over config.json's), plus the
  // tokenizer's EOS; ids beyond the tokenizer dropped.
  const fs::path own = Dir("eos_own", R"({"eos_token_id": [9, 3, 500]})");
  EXPECT_THAT(*ResolveEosTokenIds(own.string(), "", model, tokenizer), ElementsAre(9, 3, 7));
  EXPECT_THAT(*ResolveEosTokenIds(own.string(), own.string(), model, tokenizer),
              ElementsAre(9, 3, 7));
  const fs::path bare = Dir("eos_bare", "");
  EXPECT_THAT(*ResolveEosTokenIds(bare.string(), "", model, tokenizer), ElementsAre(50, 60, 7));
  // A tokenizer from another directory (--tokenizer): that directory's ids, never the model's.
  const fs::path other = Dir("eos_other", "", R"({"eos_token_id": 4})");
  EXPECT_THAT(*ResolveEosTokenIds(own.string(), other.string(), model, tokenizer),
              ElementsAre(4, 7));
  const fs::path only_tokenizer = Dir("eos_only_tokenizer", "");
  EXPECT_THAT(*ResolveEosTokenIds(own.string(), only_tokenizer.string(), model, tokenizer),
              ElementsAre(7));
}

}  // namespace
}  // namespace squeeze
