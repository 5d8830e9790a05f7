// Byte-level BPE (tokenizer.json) and the Llama-3 pre-tokenizer, on hand-made inputs whose
// expected outputs are worked out by hand from the `tokenizers` semantics. The id-for-id check
// against the real library is tests/cpu/hf_conformance_test.cc.
#include "engine/tokenizer/bpe_tokenizer.h"

#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/tokenizer/llama3_pretokenizer.h"
#include "engine/tokenizer/tekken_pretokenizer.h"
#include "engine/tokenizer/unicode.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace squeeze {
namespace {

using nlohmann::json;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::vector<std::string> Split(std::string_view text) {
  std::vector<std::string> out;
  for (std::string_view piece : SplitLlama3(text)) out.emplace_back(piece);
  return out;
}

// ---- pre-tokenizer --------------------------------------------------------------------------

TEST(Llama3PreTokenizer, Contractions) {
  EXPECT_THAT(Split("don't"), ElementsAre("don", "'t"));
  EXPECT_THAT(Split("I'M"), ElementsAre("I", "'M"));
  EXPECT_THAT(Split("we'll they'VE she'd it's"),
              ElementsAre("we", "'ll", " they", "'VE", " she", "'d", " it", "'s"));
  // 'sup: the contraction wins over [^\r\n\p{L}\p{N}]?\p{L}+, the rest is a word.
  EXPECT_THAT(Split("'sup"), ElementsAre("'s", "up"));
  // No contraction: the apostrophe is the optional prefix of the word.
  EXPECT_THAT(Split("'hello"), ElementsAre("'hello"));
  // "'l" alone is no contraction; two apostrophes are punctuation.
  EXPECT_THAT(Split("'lo"), ElementsAre("'lo"));
  EXPECT_THAT(Split("''s"), ElementsAre("''", "s"));
  // (?i) folds U+017F (long s) to 's' in Oniguruma.
  EXPECT_THAT(Split("'\xC5\xBFx"), ElementsAre("'\xC5\xBF", "x"));
}

TEST(Llama3PreTokenizer, Numbers) {
  EXPECT_THAT(Split("123456"), ElementsAre("123", "456"));
  EXPECT_THAT(Split("1234567"), ElementsAre("123", "456", "7"));
  EXPECT_THAT(Split("abc123def"), ElementsAre("abc", "123", "def"));
  EXPECT_THAT(Split("3.14"), ElementsAre("3", ".", "14"));
  // Arabic-Indic digits are \p{N} (Nd); superscript two is \p{N} (No).
  EXPECT_THAT(Split("\xD9\xA3\xD9\xA4\xD9\xA5\xD9\xA6"),
              ElementsAre("\xD9\xA3\xD9\xA4\xD9\xA5", "\xD9\xA6"));
  EXPECT_THAT(Split("x\xC2\xB2"), ElementsAre("x", "\xC2\xB2"));
}

TEST(Llama3PreTokenizer, WhiteSpace) {
  EXPECT_THAT(Split("  hello"), ElementsAre(" ", " hello"));
  EXPECT_THAT(Split("hello world"), ElementsAre("hello", " world"));
  EXPECT_THAT(Split("a  b"), ElementsAre("a", " ", " b"));
  EXPECT_THAT(Split("end   "), ElementsAre("end", "   "));
  EXPECT_THAT(Split("  "), ElementsAre("  "));
  EXPECT_THAT(Split("a\tb"), ElementsAre("a", "\tb"));
  // \s*[\r\n]+ takes the run up to its last CR/LF.
  EXPECT_THAT(Split("a\r\n\r\nb"), ElementsAre("a", "\r\n\r\n", "b"));
  EXPECT_THAT(Split("x  \n  y"), ElementsAre("x", "  \n", " ", " y"));
  EXPECT_THAT(Split("\n\nhello\n"), ElementsAre("\n\n", "hello", "\n"));
  // No-break space (U+00A0) is \s but not [\r\n]: it may prefix a word.
  EXPECT_THAT(Split("a\xC2\xA0"
                    "b"),
              ElementsAre("a",
                          "\xC2\xA0"
                          "b"));
  // U+001C is not White_Space (Python's str.isspace says it is): it is punctuation here.
  EXPECT_THAT(Split("a\x1c b"), ElementsAre("a", "\x1c", " b"));
}

TEST(Llama3PreTokenizer, PunctuationAndEmoji) {
  EXPECT_THAT(Split("Hello, world!"), ElementsAre("Hello", ",", " world", "!"));
  EXPECT_THAT(Split("?!\n\nx"), ElementsAre("?!\n\n", "x"));
  EXPECT_THAT(Split("a ?"), ElementsAre("a", " ?"));
  // U+1F44B waving hand + U+1F3FD skin tone (So, Sk): symbols with the space before them.
  EXPECT_THAT(Split("hi \xF0\x9F\x91\x8B\xF0\x9F\x8F\xBD!"),
              ElementsAre("hi", " \xF0\x9F\x91\x8B\xF0\x9F\x8F\xBD!"));
  // A ZWJ sequence (man, ZWJ, woman) is one run of non-letters.
  const std::string family = "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9";
  EXPECT_THAT(Split(family + "ok"), ElementsAre(family, "ok"));
}

TEST(Llama3PreTokenizer, ScriptsAndInvalidBytes) {
  // Cyrillic letters, Devanagari with a combining virama (Mn, not a letter).
  EXPECT_THAT(Split("Привет мир"), ElementsAre("Привет", " мир"));
  EXPECT_THAT(Split("नमस्ते"), ElementsAre("नमस", "्त", "े"));
  EXPECT_THAT(Split(""), ElementsAre());
  EXPECT_THAT(Split("a\xFF"
                    "b"),
              ElementsAre("a",
                          "\xFF"
                          "b"));
  EXPECT_THAT(Split("\xE4\xBD"), ElementsAre("\xE4\xBD"));  // truncated sequence: one run
}

TEST(Llama3PreTokenizer, PiecesCoverRandomInput) {
  std::mt19937 rng(7);
  for (int iter = 0; iter < 300; ++iter) {
    std::string text;
    const int n = static_cast<int>(rng() % 40);
    for (int i = 0; i < n; ++i) text.push_back(static_cast<char>(rng() % 256));
    std::string joined;
    for (std::string_view piece : SplitLlama3(text)) {
      ASSERT_FALSE(piece.empty());
      joined += piece;
    }
    EXPECT_EQ(joined, text);
  }
}

TEST(Unicode, Classes) {
  EXPECT_TRUE(unicode::IsLetter(U'é'));
  EXPECT_TRUE(unicode::IsLetter(U'中'));
  EXPECT_FALSE(unicode::IsLetter(U'1'));
  EXPECT_FALSE(unicode::IsLetter(0x0301));  // combining acute (Mn)
  EXPECT_TRUE(unicode::IsNumber(U'٣'));
  EXPECT_TRUE(unicode::IsNumber(0x2167));  // Roman numeral eight (Nl)
  EXPECT_TRUE(unicode::IsWhiteSpace(0x3000));
  EXPECT_TRUE(unicode::IsWhiteSpace(0x85));
  EXPECT_FALSE(unicode::IsWhiteSpace(0x200B));  // zero-width space is Cf
  EXPECT_FALSE(unicode::IsWhiteSpace(0x1C));
}

TEST(Unicode, LossyUtf8ReplacesMaximalSubparts) {
  std::string out;
  unicode::AppendUtf8Lossy(
      "a\xE2\x82"
      "b\xFF\xF0\x9F\x98\x80",
      &out);
  // "\xE2\x82" is one truncated sequence -> one U+FFFD; "\xFF" -> one U+FFFD.
  EXPECT_EQ(out,
            "a\xEF\xBF\xBD"
            "b\xEF\xBF\xBD\xF0\x9F\x98\x80");
  out.clear();
  unicode::AppendUtf8Lossy("\xED\xA0\x80", &out);  // a surrogate: three bad bytes
  EXPECT_EQ(out, "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
}

// ---- BPE ------------------------------------------------------------------------------------

TEST(ByteLevel, Alphabet) {
  const auto& map = ByteToUnicode();
  EXPECT_EQ(map[' '], 0x120u);   // 'Ġ'
  EXPECT_EQ(map['\n'], 0x10Au);  // 'Ċ'
  EXPECT_EQ(map['!'], static_cast<char32_t>('!'));
  EXPECT_EQ(map[0x7F], 0x121u);
  EXPECT_EQ(map[0xAD], 0x143u);
  EXPECT_EQ(map[0xE9], 0xE9u);  // printable Latin-1 stands for itself
}

constexpr char kSplitPattern[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

// A small tokenizer.json in the layout the `tokenizers` library writes for Llama 3.
json TinyTokenizer() {
  json pre = {{"type", "Sequence"},
              {"pretokenizers",
               {{{"type", "Split"},
                 {"pattern", {{"Regex", kSplitPattern}}},
                 {"behavior", "Isolated"},
                 {"invert", false}},
                {{"type", "ByteLevel"},
                 {"add_prefix_space", false},
                 {"trim_offsets", true},
                 {"use_regex", false}}}}};
  json vocab = {{"a", 0},
                {"b", 1},
                {"c", 2},
                {"d", 3},
                {"\xC4\xA0", 4},
                {"ab", 5},
                {"bc", 6},
                {"abc", 7},
                {"\xC4\xA0"
                 "a",
                 8},
                {"\xC4\xA0"
                 "ab",
                 9},
                {"cd", 10}};
  // Rank order: b c, a b, Ġ a, ab c, Ġa b, c d. Both merge forms appear.
  json merges = json::array({"b c", json::array({"a", "b"}), "\xC4\xA0 a", json::array({"ab", "c"}),
                             "\xC4\xA0"
                             "a b",
                             "c d"});
  json added =
      json::array({{{"id", 11},
                    {"content", "<|bos|>"},
                    {"special", true},
                    {"normalized", false},
                    {"lstrip", false},
                    {"rstrip", false},
                    {"single_word", false}},
                   {{"id", 13}, {"content", "<|bos|>>"}, {"special", true}, {"normalized", false}},
                   {{"id", 12}, {"content", "<x>"}, {"special", false}, {"normalized", true}}});
  return {{"version", "1.0"},
          {"truncation", nullptr},
          {"padding", nullptr},
          {"added_tokens", added},
          {"normalizer", nullptr},
          {"pre_tokenizer", pre},
          {"post_processor",
           {{"type", "TemplateProcessing"},
            {"single",
             {{{"SpecialToken", {{"id", "<|bos|>"}, {"type_id", 0}}}},
              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}}}},
          {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}}},
          {"model",
           {{"type", "BPE"},
            {"dropout", nullptr},
            {"unk_token", nullptr},
            {"continuing_subword_prefix", nullptr},
            {"end_of_word_suffix", nullptr},
            {"fuse_unk", false},
            {"byte_fallback", false},
            {"ignore_merges", false},
            {"vocab", vocab},
            {"merges", merges}}}};
}

std::unique_ptr<BpeTokenizer> Make(const json& j, std::string_view config = {}) {
  auto tokenizer = BpeTokenizer::FromJson(j.dump(), "test tokenizer.json", config);
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? std::move(*tokenizer) : nullptr;
}

std::vector<int32_t> Ids(const BpeTokenizer& t, std::string_view text) {
  auto ids = t.Encode(text);
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

TEST(BpeTokenizer, MergesLowestRankFirst) {
  auto t = Make(TinyTokenizer());
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->vocab_size(), 14);
  // a b c: "b c" (rank 0) beats "a b" (rank 1); "a bc" is no merge.
  EXPECT_THAT(Ids(*t, "abc"), ElementsAre(0, 6));
  EXPECT_THAT(Ids(*t, "ab"), ElementsAre(5));
  // Ġ a b c d: bc, then Ġa; "c d" is stale once c merged into bc.
  EXPECT_THAT(Ids(*t, " abcd"), ElementsAre(8, 6, 3));
  // Equal ranks merge leftmost first.
  EXPECT_THAT(Ids(*t, "abab"), ElementsAre(5, 5));
  // Two pre-tokens: "cdab" -> c d ab -> cd ab; " cd" -> Ġ cd.
  EXPECT_THAT(Ids(*t, "cdab cd"), ElementsAre(10, 5, 4, 10));
  // Bytes with no token and no unk_token are dropped, as `tokenizers` does.
  EXPECT_THAT(Ids(*t, "ae"), ElementsAre(0));
  EXPECT_THAT(Ids(*t, ""), ElementsAre());
}

TEST(BpeTokenizer, IgnoreMergesTakesWholeVocabularyWords) {
  json j = TinyTokenizer();
  j["model"]["ignore_merges"] = true;
  auto t = Make(j);
  ASSERT_NE(t, nullptr);
  EXPECT_THAT(Ids(*t, "abc"), ElementsAre(7));  // in the vocabulary: no merging
  EXPECT_THAT(Ids(*t, " ab"), ElementsAre(9));
  EXPECT_THAT(Ids(*t, " abcd"), ElementsAre(8, 6, 3));  // not in the vocabulary: merges
}

TEST(BpeTokenizer, AddedTokensSplitFirstLongestMatch) {
  auto t = Make(TinyTokenizer());
  ASSERT_NE(t, nullptr);
  EXPECT_THAT(Ids(*t, "a<|bos|>b"), ElementsAre(0, 11, 1));
  EXPECT_THAT(Ids(*t, "<|bos|>>a"), ElementsAre(13, 0));
  EXPECT_THAT(Ids(*t, "<x>ab<x>"), ElementsAre(12, 5, 12));
  // Without the special token, "<|bos|" has no vocabulary bytes except the letters.
  EXPECT_THAT(Ids(*t, "<|bo"), ElementsAre(1));
  EXPECT_EQ(t->bos_id(), 11);  // the post-processor's first special token
  EXPECT_EQ(t->TokenToId("<x>"), 12);
  EXPECT_EQ(t->TokenToId("\xC4\xA0"
                         "ab"),
            9);
  EXPECT_EQ(t->TokenToId("zz"), -1);
}

TEST(BpeTokenizer, DecodeAndTokenBytes) {
  auto t = Make(TinyTokenizer());
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(*t->Decode({8, 6, 3}), " abcd");
  EXPECT_EQ(*t->Decode({0, 11, 1}), "ab");  // special tokens render as ""
  EXPECT_EQ(*t->Decode({12, 5, 4}), "<x>ab ");
  EXPECT_EQ(t->TokenBytes(4), " ");
  EXPECT_EQ(t->TokenBytes(9), " ab");
  EXPECT_EQ(t->TokenBytes(11), "");
  EXPECT_EQ(t->TokenBytes(12), "<x>");
  EXPECT_EQ(t->TokenBytes(99), "");
  EXPECT_FALSE(t->Decode({14}).ok());
  EXPECT_FALSE(t->Decode({-1}).ok());
}

// Every byte has a token: any valid UTF-8 string round-trips, any byte string encodes.
json FullByteTokenizer() {
  json j = TinyTokenizer();
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) {
    std::string s;
    unicode::AppendUtf8(ByteToUnicode()[b], &s);
    vocab[s] = b;
  }
  vocab["\xC4\xA0t"] = 256;  // "Ġt"
  vocab["he"] = 257;
  vocab["\xC4\xA0the"] = 258;
  vocab["\xC4\xA0th"] = 259;
  j["model"]["vocab"] = vocab;
  j["model"]["merges"] = json::array({"\xC4\xA0 t", "\xC4\xA0t h", "\xC4\xA0th e", "h e"});
  j["added_tokens"] = json::array();
  j["post_processor"] = nullptr;
  return j;
}

TEST(BpeTokenizer, RoundTripsArbitraryText) {
  auto t = Make(FullByteTokenizer());
  ASSERT_NE(t, nullptr);
  EXPECT_THAT(Ids(*t, "he the"), ElementsAre(257, 258));
  std::mt19937 rng(11);
  const std::vector<char32_t> pool = {U'a',  U' ', U'\n', U'é', U'中', U'😀',   U'\t', U'1',
                                      U'\'', U'h', U'e',  U't', 0x85,  0x3000, U'Я'};
  for (int iter = 0; iter < 200; ++iter) {
    std::string text;
    const int n = static_cast<int>(rng() % 30);
    for (int i = 0; i < n; ++i) unicode::AppendUtf8(pool[rng() % pool.size()], &text);
    const std::vector<int32_t> ids = Ids(*t, text);
    auto decoded = t->Decode(ids);
    ASSERT_TRUE(decoded.ok());
    EXPECT_EQ(*decoded, text);
    std::string concat;
    for (int32_t id : ids) concat += t->TokenBytes(id);
    EXPECT_EQ(concat, text);
  }
  // Invalid UTF-8 still encodes (byte by byte); Decode replaces it with U+FFFD.
  const std::vector<int32_t> ids = Ids(*t, "a\xFF");
  EXPECT_THAT(ids, ElementsAre('a', 0xFF));
  EXPECT_EQ(*t->Decode(ids), "a\xEF\xBF\xBD");
}

TEST(BpeTokenizer, UnknownToken) {
  json j = TinyTokenizer();
  j["model"]["vocab"]["<unk>"] = 14;
  j["model"]["unk_token"] = "<unk>";
  auto t = Make(j);
  ASSERT_NE(t, nullptr);
  EXPECT_THAT(Ids(*t, "aeeb"), ElementsAre(0, 14, 14, 1));
  j["model"]["fuse_unk"] = true;
  t = Make(j);
  ASSERT_NE(t, nullptr);
  EXPECT_THAT(Ids(*t, "aeeb"), ElementsAre(0, 14, 1));
}

TEST(BpeTokenizer, BosEosFromTokenizerConfig) {
  auto t = Make(TinyTokenizer(), R"({"bos_token": "<x>", "eos_token": {"content": "<|bos|>>"}})");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->bos_id(), 12);
  EXPECT_EQ(t->eos_id(), 13);
}

// ---- Qwen2 and Mistral-Nemo layouts ----------------------------------------------------------

// FullByteTokenizer with another Split regex and the merges that show where it cuts.
json WithPattern(std::string_view pattern) {
  json j = FullByteTokenizer();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = pattern;
  j["model"]["vocab"]["12"] = 260;
  j["model"]["vocab"]["eB"] = 261;
  j["model"]["merges"].push_back("1 2");
  j["model"]["merges"].push_back("e B");
  return j;
}

TEST(BpeTokenizer, SplitRegexOfTheFileIsUsed) {
  auto llama3 = Make(WithPattern(kLlama3SplitPattern));
  auto qwen2 = Make(WithPattern(kQwen2SplitPattern));
  auto tekken = Make(WithPattern(kTekkenSplitPattern));
  ASSERT_TRUE(llama3 && qwen2 && tekken);
  // "123" is one pre-token for Llama-3, three for Qwen2 and Tekken.
  EXPECT_THAT(Ids(*llama3, "123"), ElementsAre(260, '3'));
  EXPECT_THAT(Ids(*qwen2, "123"), ElementsAre('1', '2', '3'));
  EXPECT_THAT(Ids(*tekken, "123"), ElementsAre('1', '2', '3'));
  // Tekken cuts "eBay" into "e", "Bay".
  EXPECT_THAT(Ids(*llama3, "eBay"), ElementsAre(261, 'a', 'y'));
  EXPECT_THAT(Ids(*tekken, "eBay"), ElementsAre('e', 'B', 'a', 'y'));
}

TEST(BpeTokenizer, NfcNormalizerBetweenSpecialTokens) {
  json j = FullByteTokenizer();
  j["normalizer"] = {{"type", "NFC"}};
  j["added_tokens"] = json::array(
      {{{"id", 300}, {"content", "<|s|>"}, {"special", true}, {"normalized", false}},
       // Normalized added tokens are matched in NFC form, whatever form they are written in.
       {{"id", 301}, {"content", "cafe\xCC\x81"}, {"special", false}, {"normalized", true}},
       // Tokens that are not normalized are matched in the raw text.
       {{"id", 302}, {"content", "x\xCC\x81"}, {"special", true}, {"normalized", false}}});
  auto t = Make(j);
  ASSERT_NE(t, nullptr);
  EXPECT_THAT(Ids(*t, "e\xCC\x81"), ElementsAre(0xC3, 0xA9));  // e + U+0301 -> é
  EXPECT_THAT(Ids(*t, "\xC3\xA9"), ElementsAre(0xC3, 0xA9));
  // Each text segment between special tokens is normalized on its own.
  EXPECT_THAT(Ids(*t, "e<|s|>\xCC\x81"), ElementsAre('e', 300, 0xCC, 0x81));
  EXPECT_THAT(Ids(*t, "caf\xC3\xA9!"), ElementsAre(301, '!'));
  EXPECT_THAT(Ids(*t, "cafe\xCC\x81"), ElementsAre(301));
  EXPECT_THAT(Ids(*t, "x\xCC\x81"), ElementsAre(302));
  // Decodes in its normalized form, as `tokenizers` does (tests/data/golden bpe_qwen2 cases).
  EXPECT_EQ(t->TokenBytes(301), "caf\xC3\xA9");
  bool listed = false;
  for (const auto& [content, id] : t->SpecialTokens())
    listed |= id == 301 && content == "cafe\xCC\x81";
  EXPECT_TRUE(listed);

  j["normalizer"] = nullptr;
  t = Make(j);
  ASSERT_NE(t, nullptr);
  EXPECT_THAT(Ids(*t, "e\xCC\x81"), ElementsAre('e', 0xCC, 0x81));
  EXPECT_THAT(Ids(*t, "caf\xC3\xA9"), ElementsAre('c', 'a', 'f', 0xC3, 0xA9));
}

// ---- malformed files: clear errors, never a crash --------------------------------------------

absl::Status Load(const json& j) { return BpeTokenizer::FromJson(j.dump(), "bad.json").status(); }

TEST(BpeTokenizer, MalformedFilesGiveClearErrors) {
  auto not_json = BpeTokenizer::FromJson("{\"model\": ", "bad.json");
  ASSERT_FALSE(not_json.ok());
  EXPECT_THAT(not_json.status().message(), HasSubstr("bad.json: not valid JSON"));

  json j = TinyTokenizer();
  j.erase("model");
  EXPECT_THAT(Load(j).message(), HasSubstr("'model'"));

  j = TinyTokenizer();
  j["model"]["merges"].push_back("a zz");
  EXPECT_THAT(Load(j).message(), HasSubstr("model.merges[6]"));
  EXPECT_THAT(Load(j).message(), HasSubstr("\"zz\" which is not in model.vocab"));

  j = TinyTokenizer();
  j["model"]["merges"][0] = "bc";
  EXPECT_THAT(Load(j).message(), HasSubstr("model.merges[0]"));

  j = TinyTokenizer();
  j["model"]["merges"][0] = 5;
  EXPECT_THAT(Load(j).message(), HasSubstr("model.merges[0]"));

  j = TinyTokenizer();
  j["model"]["vocab"]["a"] = "zero";
  EXPECT_THAT(Load(j).message(), HasSubstr("model.vocab[\"a\"]"));

  j = TinyTokenizer();
  j["model"]["vocab"] = json::array();
  EXPECT_THAT(Load(j).message(), HasSubstr("model.vocab"));

  // An id far beyond the tokens given would size the token table by it (a fuzzer's input asked
  // for 14 GB): refused, in the vocabulary and in the added tokens.
  j = TinyTokenizer();
  j["model"]["vocab"]["far"] = 400000000;
  EXPECT_THAT(Load(j).message(), HasSubstr("ids must be nearly dense"));
  j = TinyTokenizer();
  j["added_tokens"] = json::array({{{"id", 300000000}, {"content", "<x>"}}});
  EXPECT_THAT(Load(j).message(), HasSubstr("ids must be nearly dense"));

  j = TinyTokenizer();
  j["model"]["type"] = "WordPiece";
  EXPECT_EQ(Load(j).code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(Load(j).message(), HasSubstr("model.type"));

  j = TinyTokenizer();
  j["normalizer"] = {{"type", "NFKC"}};
  EXPECT_EQ(Load(j).code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(Load(j).message(), HasSubstr("'normalizer': only null and NFC are implemented"));

  j = TinyTokenizer();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "\\s+";
  EXPECT_EQ(Load(j).code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(Load(j).message(), HasSubstr("pattern"));
  EXPECT_THAT(Load(j).message(), HasSubstr("Llama-3, Qwen2, Tekken (Mistral-Nemo)"));

  j = TinyTokenizer();
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}};
  EXPECT_THAT(Load(j).message(), HasSubstr("pre_tokenizer"));

  j = TinyTokenizer();
  j["decoder"] = nullptr;
  EXPECT_THAT(Load(j).message(), HasSubstr("decoder"));

  j = TinyTokenizer();
  j["added_tokens"][0]["lstrip"] = true;
  EXPECT_THAT(Load(j).message(), HasSubstr("added_tokens[0].lstrip"));

  j = TinyTokenizer();
  j["added_tokens"][1]["id"] = -3;
  EXPECT_THAT(Load(j).message(), HasSubstr("added_tokens[1].id"));

  j = TinyTokenizer();
  j["model"]["unk_token"] = "<nope>";
  EXPECT_THAT(Load(j).message(), HasSubstr("model.unk_token"));

  j = TinyTokenizer();
  j["model"]["byte_fallback"] = true;
  EXPECT_THAT(Load(j).message(), HasSubstr("model.byte_fallback"));

  auto missing = LoadBpeTokenizer("/nonexistent/dir/tokenizer.json");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("/nonexistent/dir/tokenizer.json"));
}

TEST(BpeTokenizer, LoadsFromFileWithTokenizerConfig) {
  const std::filesystem::path dir =
      std::filesystem::path(::testing::TempDir()) / "bpe_tokenizer_test_load";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "tokenizer.json") << TinyTokenizer().dump();
  std::ofstream(dir / "tokenizer_config.json") << R"({"eos_token": "<x>"})";
  auto t = LoadBpeTokenizer((dir / "tokenizer.json").string());
  std::filesystem::remove_all(dir);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->eos_id(), 12);
  EXPECT_EQ((*t)->bos_id(), 11);
  EXPECT_THAT(*(*t)->Encode(" ab"), ElementsAre(4, 5));  // "a b" outranks "Ġ a"
}

}  // namespace
}  // namespace squeeze
