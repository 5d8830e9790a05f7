// Special and added tokens on SentencePiece tokenizers (engine/tokenizer/added_tokens.h), and the
// check that refuses a tokenizer that does not fit the model (CheckTokenizerFitsModel).
#include "engine/tokenizer/added_tokens.h"

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace squeeze {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ::testing::HasSubstr;

const fs::path kSpModel =
    fs::path(SQUEEZE_SOURCE_DIR) / "tests" / "data" / "golden" / "tokenizers" / "sp.model";

// A model directory with the golden sp.model (800 pieces: <unk> 0, <s> 1, </s> 2) and, when
// given, a tokenizer_config.json.
fs::path SpDir(const std::string& name, const json& config) {
  const fs::path dir = fs::path(::testing::TempDir()) / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::copy_file(kSpModel, dir / "tokenizer.model");
  if (!config.is_null()) std::ofstream(dir / "tokenizer_config.json") << config.dump();
  return dir;
}

std::vector<int32_t> Concat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// Phi-3's layout: <|user|> and friends past the SentencePiece vocabulary, rstrip=true.
json Phi3StyleConfig() {
  json added = {
      {"0", {{"content", "<unk>"}, {"special", true}}},
      {"1", {{"content", "<s>"}, {"special", true}}},
      {"2", {{"content", "</s>"}, {"special", false}}},
      {"800", {{"content", "<|user|>"}, {"special", true}, {"rstrip", true}}},
      {"801", {{"content", "<|end|>"}, {"special", true}, {"rstrip", true}}},
      {"802", {{"content", "<|assistant|>"}, {"special", true}, {"rstrip", true}}},
      {"803", {{"content", "<think>"}, {"special", false}}},
      {"804", {{"content", "<|left|>"}, {"special", true}, {"lstrip", true}}},
  };
  return {{"added_tokens_decoder", added}, {"bos_token", "<s>"}, {"eos_token", "<|end|>"}};
}

TEST(AddedTokensTest, SentencePieceWithAddedTokensEncodesThemAsIds) {
  auto plain = LoadTokenizer(SpDir("added_tokens_plain", nullptr).string());
  ASSERT_TRUE(plain.ok()) << plain.status();
  auto t = LoadTokenizer(SpDir("added_tokens_phi3", Phi3StyleConfig()).string());
  ASSERT_TRUE(t.ok()) << t.status();
  const Tokenizer& sp = **plain;
  const Tokenizer& tok = **t;
  EXPECT_EQ(sp.vocab_size(), 800);
  EXPECT_EQ(tok.vocab_size(), 805);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 801);  // eos_token names <|end|>

  // rstrip: the newline after <|user|>, <|end|> and <|assistant|> belongs to the token.
  const std::vector<int32_t> hello = *sp.Encode("Hello there");
  EXPECT_EQ(*tok.Encode("<s><|user|>\nHello there<|end|>\n<|assistant|>\n"),
            Concat({{1, 800}, hello, {801, 802}}));
  EXPECT_EQ(*tok.EncodeWithSpecialTokens("<|user|>\nHello there"), Concat({{800}, hello}));
  // lstrip: the spaces before <|left|> belong to it.
  EXPECT_EQ(*tok.Encode("Hello there   <|left|>"), Concat({hello, {804}}));
  // Decoding skips special tokens, renders added ones as their content.
  EXPECT_EQ(*tok.Decode(Concat({{1, 800}, hello, {803, 801}})), "Hello there<think>");
  EXPECT_EQ(tok.TokenBytes(800), "");
  EXPECT_EQ(tok.TokenBytes(803), "<think>");
  EXPECT_EQ(tok.TokenBytes(hello[0]), sp.TokenBytes(hello[0]));
  EXPECT_FALSE(tok.Decode({805}).ok());
}

TEST(AddedTokensTest, PlainSentencePieceKeepsLibraryEncodingButChatEncodingCutsControls) {
  auto plain = LoadTokenizer(SpDir("added_tokens_plain2", nullptr).string());
  ASSERT_TRUE(plain.ok()) << plain.status();
  const Tokenizer& sp = **plain;
  // Encode is libsentencepiece's: "<s>" is text there.
  EXPECT_NE(*sp.Encode("<s>"), std::vector<int32_t>{1});
  // A rendered chat template's "<s>" and "</s>" are the control pieces.
  EXPECT_EQ(*sp.EncodeWithSpecialTokens("<s>Hi</s>"), Concat({{1}, *sp.Encode("Hi"), {2}}));
  // A config without added tokens leaves the tokenizer as it is.
  auto same = LoadTokenizer(SpDir("added_tokens_none", json{{"bos_token", "<s>"}}).string());
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(*(*same)->Encode("<s>x"), *sp.Encode("<s>x"));
}

TEST(AddedTokensTest, BadConfigsAreErrorsNamingTheFile) {
  json config = Phi3StyleConfig();
  config["added_tokens_decoder"]["x"] = {{"content", "<y>"}};
  auto t = LoadTokenizer(SpDir("added_tokens_bad", config).string());
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(
      std::string(t.status().message()),
      HasSubstr("tokenizer_config.json: added_tokens_decoder[\"x\"]: the key must be a token id"));
  config = Phi3StyleConfig();
  config["added_tokens_decoder"]["805"] = {{"special", true}};
  t = LoadTokenizer(SpDir("added_tokens_bad2", config).string());
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("needs a non-empty \"content\""));
}

TEST(CheckTokenizerFitsModelTest, RefusesTokenizersOfAnotherModelNamingTheFlag) {
  auto t = LoadTokenizer(SpDir("added_tokens_fit", Phi3StyleConfig()).string());
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(CheckTokenizerFitsModel(**t, 805, "dir").ok());
  EXPECT_TRUE(CheckTokenizerFitsModel(**t, 32064, "dir").ok());  // a padded embedding is fine
  const absl::Status small = CheckTokenizerFitsModel(**t, 800, "/models/other");
  EXPECT_EQ(small.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(small.message()),
              HasSubstr("the tokenizer in '/models/other' does not fit the model: it has 805 "
                        "tokens, more than the model's vocab_size 800; pass --tokenizer="));
}

}  // namespace
}  // namespace squeeze
