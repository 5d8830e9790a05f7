// SentencePiece tokenizer, LoadTokenizer and StreamingDetokenizer, on small models trained here.
#include "engine/tokenizer/tokenizer.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/tokenizer/sentencepiece_shim.h"
#include "engine/tokenizer/sentencepiece_tokenizer.h"
#include "engine/tokenizer/streaming_detokenizer.h"
#include "gtest/gtest.h"

namespace squeeze {
namespace {

namespace fs = std::filesystem;

// Strict UTF-8 check (no overlongs, surrogates or code points above U+10FFFF).
bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    int len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80) {
      ++i;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return false;
    }
    if (i + len > s.size()) return false;
    for (int k = 1; k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) return false;
    }
    i += len;
  }
  return true;
}

// Varied text: English, accented Latin, CJK, Hangul, digits, punctuation. No emoji, so those can
// only be encoded through byte fallback.
std::vector<std::string> MakeCorpus(int lines) {
  const std::vector<std::string> words = {
      "the",     "quick",    "brown",     "fox",       "jumps",  "over",    "lazy",   "dog",
      "cluster", "centroid", "attention", "inference", "server", "token",   "stream", "model",
      "hello",   "world",    "key",       "value",     "query",  "context", "budget", "sparse",
      "café",    "naïve",    "résumé",    "über",      "façade", "São",     "niño",   "Zürich",
      "東京",    "日本語",   "中文",      "数据",      "模型",   "注意力",  "한국어", "서울",
      ",",       ".",        "!",         "?",         "(x)",    "-",       "a",      "I"};
  std::mt19937 rng(1234);
  std::vector<std::string> corpus;
  for (int i = 0; i < lines; ++i) {
    std::string line;
    const int n = 4 + static_cast<int>(rng() % 12);
    for (int w = 0; w < n; ++w) {
      if (w > 0) line += ' ';
      if (rng() % 7 == 0) {
        line += std::to_string(rng() % 100000);
      } else {
        line += words[rng() % words.size()];
      }
    }
    corpus.push_back(line);
  }
  return corpus;
}

// Trains a BPE model with byte fallback; returns the model file path.
std::string TrainModel(const std::string& name, const std::string& extra_flags) {
  const fs::path dir = fs::path(testing::TempDir()) / ("squeeze_tokenizer_test_" + name);
  fs::create_directories(dir);
  const fs::path input = dir / "corpus.txt";
  {
    std::ofstream out(input);
    for (const std::string& line : MakeCorpus(1500)) out << line << '\n';
  }
  const std::string prefix = (dir / "m").string();
  const auto status = sentencepiece::SentencePieceTrainer::Train(
      "--input=" + input.string() + " --model_prefix=" + prefix +
      " --vocab_size=500 --model_type=bpe --byte_fallback=true --num_threads=1"
      " --minloglevel=2 " +
      extra_flags);
  EXPECT_TRUE(status.ok()) << status.ToString();
  return prefix + ".model";
}

// Strings outside the training corpus as well as in it.
std::vector<std::string> TestStrings() {
  std::vector<std::string> s = {
      "",
      "hello world",
      "the quick brown fox jumps over the lazy dog",
      " leading space",
      "   three leading spaces",
      "trailing spaces   ",
      "multiple   spaces    inside",
      "tab\tand\nnewline\r\n",
      "café naïve résumé façade",
      "Ærøskøbing Œuvre ß ğ",
      "東京 日本語の文章 中文数据",
      "注意力模型 한국어 서울",
      "😀 emoji 🎉 party 🚀",
      "👨‍👩‍👧 family 🏳️‍🌈 flag",
      "12345 67.89 -0.5e10",
      "mixed 中文 and English 123 😀!",
      "x",
      " ",
      "\xC2\xA0non-breaking",
      "¿qué? ¡sí! «guillemets» — dash … ellipsis",
  };
  for (const std::string& line : MakeCorpus(1500)) {
    if (s.size() >= 220) break;
    s.push_back(line);
  }
  return s;
}

// Deltas of a whole id sequence; asserts each delta is valid UTF-8.
std::string StreamAll(const Tokenizer& tok, const std::vector<int32_t>& ids, bool strip) {
  StreamingDetokenizer detok(tok, strip);
  std::string text;
  for (int32_t id : ids) {
    const std::string delta = detok.Push(id);
    EXPECT_TRUE(IsValidUtf8(delta)) << "invalid UTF-8 delta after id " << id;
    text += delta;
  }
  const std::string tail = detok.Flush();
  EXPECT_TRUE(IsValidUtf8(tail));
  return text + tail;
}

class TokenizerTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    // Llama-like normalizer: text kept as is, whitespace runs kept, dummy prefix added.
    llama_model_path_ = new std::string(
        TrainModel("llama", "--normalization_rule_name=identity --remove_extra_whitespaces=false"));
    // SentencePiece defaults: whitespace runs collapsed, so Decode strips every leading '▁'.
    default_model_path_ = new std::string(TrainModel("default", ""));
  }
  static void TearDownTestSuite() {
    delete llama_model_path_;
    delete default_model_path_;
  }

  static std::unique_ptr<SentencePieceTokenizer> Load(const std::string& path) {
    auto tok = SentencePieceTokenizer::Load(path);
    EXPECT_TRUE(tok.ok()) << tok.status();
    return tok.ok() ? *std::move(tok) : nullptr;
  }

  static std::vector<int32_t> Ids(const Tokenizer& tok, std::string_view text) {
    auto ids = tok.Encode(text);
    EXPECT_TRUE(ids.ok()) << ids.status();
    return ids.ok() ? *ids : std::vector<int32_t>{};
  }

  static std::string Text(const Tokenizer& tok, const std::vector<int32_t>& ids) {
    auto text = tok.Decode(ids);
    EXPECT_TRUE(text.ok()) << text.status();
    return text.ok() ? *text : std::string();
  }

  // Id of a piece by its text, read from the model itself.
  static int32_t PieceId(const std::string& model_path, const std::string& piece) {
    sentencepiece::SentencePieceProcessor sp;
    EXPECT_TRUE(sp.Load(model_path).ok());
    return sp.PieceToId(piece);
  }
  static int32_t ByteId(const std::string& model_path, unsigned char byte) {
    char piece[8];
    std::snprintf(piece, sizeof(piece), "<0x%02X>", byte);
    return PieceId(model_path, piece);
  }

  // A merged piece "▁word" (TokenBytes " word"), for leading-space cases.
  static int32_t SpaceWordId(const Tokenizer& tok) {
    for (int32_t id = 0; id < tok.vocab_size(); ++id) {
      const std::string bytes = tok.TokenBytes(id);
      if (bytes.size() >= 3 && bytes[0] == ' ' && bytes[1] >= 'a' && bytes[1] <= 'z') return id;
    }
    ADD_FAILURE() << "no '▁word' piece in the vocabulary";
    return 0;
  }

  static std::string* llama_model_path_;
  static std::string* default_model_path_;
};

std::string* TokenizerTest::llama_model_path_ = nullptr;
std::string* TokenizerTest::default_model_path_ = nullptr;

TEST_F(TokenizerTest, BasicProperties) {
  auto tok = Load(*llama_model_path_);
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->vocab_size(), 500);
  EXPECT_GE(tok->bos_id(), 0);
  EXPECT_GE(tok->eos_id(), 0);
  EXPECT_NE(tok->bos_id(), tok->eos_id());
  EXPECT_EQ(tok->TokenBytes(tok->bos_id()), "");
  EXPECT_EQ(tok->TokenBytes(tok->eos_id()), "");
  EXPECT_EQ(tok->TokenBytes(-1), "");
  EXPECT_EQ(tok->TokenBytes(tok->vocab_size()), "");
  // Every byte value has a byte-fallback piece rendering as that raw byte.
  for (int b = 0; b < 0x100; ++b) {
    EXPECT_EQ(tok->TokenBytes(ByteId(*llama_model_path_, b)), std::string(1, static_cast<char>(b)));
  }
  // Encoding adds no BOS/EOS.
  const auto ids = Ids(*tok, "hello world");
  ASSERT_FALSE(ids.empty());
  EXPECT_NE(ids.front(), tok->bos_id());
  EXPECT_NE(ids.back(), tok->eos_id());
  // The '▁' marker renders as a space in TokenBytes.
  std::string bytes;
  for (int32_t id : ids) bytes += tok->TokenBytes(id);
  EXPECT_EQ(bytes, " hello world");
}

TEST_F(TokenizerTest, EncodeDecodeRoundTrip) {
  auto tok = Load(*llama_model_path_);
  ASSERT_NE(tok, nullptr);
  for (const std::string& s : TestStrings()) {
    EXPECT_EQ(Text(*tok, Ids(*tok, s)), s) << "'" << s << "'";
  }
  EXPECT_TRUE(Ids(*tok, "").empty());
  // BOS / EOS render as nothing.
  auto ids = Ids(*tok, "hello");
  ids.insert(ids.begin(), tok->bos_id());
  ids.push_back(tok->eos_id());
  EXPECT_EQ(Text(*tok, ids), "hello");
}

TEST_F(TokenizerTest, MatchesLibSentencePiece) {
  // The engine's tokenizer must agree id for id and byte for byte with the library that trained
  // the model, under both normalizer settings.
  for (const std::string* path : {llama_model_path_, default_model_path_}) {
    auto tok = Load(*path);
    ASSERT_NE(tok, nullptr);
    sentencepiece::SentencePieceProcessor sp;
    ASSERT_TRUE(sp.Load(*path).ok());
    ASSERT_EQ(tok->vocab_size(), sp.GetPieceSize());
    EXPECT_EQ(tok->bos_id(), sp.bos_id());
    EXPECT_EQ(tok->eos_id(), sp.eos_id());
    for (const std::string& s : TestStrings()) {
      std::vector<int> expected;
      ASSERT_TRUE(sp.Encode(s, &expected).ok());
      EXPECT_EQ(Ids(*tok, s), std::vector<int32_t>(expected.begin(), expected.end()))
          << *path << " '" << s << "'";
    }
    // Leading '▁' pieces: how many Decode strips depends on remove_extra_whitespaces.
    const int space = sp.PieceToId("\u2581");
    const int word = SpaceWordId(*tok);
    const int byte_space = ByteId(*path, 0x20);
    std::vector<std::vector<int>> cases = {{space, space, word},
                                           {space, word},
                                           {sp.bos_id(), space, space, word},
                                           {space, sp.eos_id(), space, word},
                                           {byte_space, space, word},
                                           {space, byte_space, word}};
    std::mt19937 rng(3);
    for (int trial = 0; trial < 300; ++trial) {
      std::vector<int> ids(1 + rng() % 20);
      for (int& id : ids) id = static_cast<int>(rng() % sp.GetPieceSize());
      cases.push_back(ids);
    }
    for (const auto& ids : cases) {
      std::string expected;
      ASSERT_TRUE(sp.Decode(ids, &expected).ok());
      EXPECT_EQ(Text(*tok, std::vector<int32_t>(ids.begin(), ids.end())), expected)
          << *path << " ids " << testing::PrintToString(ids);
    }
  }
}

TEST_F(TokenizerTest, DecodeRejectsOutOfRangeIds) {
  auto tok = Load(*llama_model_path_);
  ASSERT_NE(tok, nullptr);
  auto text = tok->Decode({5, tok->vocab_size()});
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(text.status().message().find("500"), std::string_view::npos);
  EXPECT_EQ(tok->Decode({-3}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(TokenizerTest, StreamingMatchesDecodeOnCorpus) {
  auto tok = Load(*llama_model_path_);
  ASSERT_NE(tok, nullptr);
  for (const std::string& s : TestStrings()) {
    const auto ids = Ids(*tok, s);
    EXPECT_EQ(StreamAll(*tok, ids, /*strip=*/true), Text(*tok, ids)) << "'" << s << "'";
  }
}

TEST_F(TokenizerTest, EmojiBytesAreHeldUntilComplete) {
  auto tok = Load(*llama_model_path_);
  ASSERT_NE(tok, nullptr);
  const auto ids = Ids(*tok, "😀");
  // '▁' then the four byte-fallback pieces F0 9F 98 80.
  ASSERT_EQ(ids.size(), 5u);
  for (size_t i = 1; i < ids.size(); ++i) ASSERT_EQ(tok->TokenBytes(ids[i]).size(), 1u);

  StreamingDetokenizer detok(*tok, /*strip_leading_space=*/true);
  for (size_t i = 0; i + 1 < ids.size(); ++i) EXPECT_EQ(detok.Push(ids[i]), "") << i;
  EXPECT_EQ(detok.Push(ids.back()), "😀");
  EXPECT_EQ(detok.Flush(), "");

  // Two emoji back to back after text: the first appears exactly when its last byte arrives.
  const auto ids2 = Ids(*tok, "ok 🎉🚀");
  StreamingDetokenizer detok2(*tok, /*strip_leading_space=*/true);
  std::vector<std::string> deltas;
  for (int32_t id : ids2) deltas.push_back(detok2.Push(id));
  std::string joined;
  int non_empty = 0;
  for (const auto& d : deltas) {
    joined += d;
    non_empty += d.empty() ? 0 : 1;
    EXPECT_TRUE(IsValidUtf8(d));
  }
  EXPECT_EQ(joined, "ok 🎉🚀");
  EXPECT_EQ(deltas.back(), "🚀");
  EXPECT_LT(non_empty, static_cast<int>(ids2.size()));  // some pushes had to hold bytes back
}

TEST_F(TokenizerTest, InvalidBytesBecomeReplacementCharacters) {
  auto tok = Load(*llama_model_path_);
  ASSERT_NE(tok, nullptr);
  const int32_t a = PieceId(*llama_model_path_, "x");  // an ASCII piece
  ASSERT_EQ(tok->TokenBytes(a), "x");
  auto byte = [](unsigned char b) { return ByteId(*llama_model_path_, b); };
  const std::vector<std::vector<int32_t>> cases = {
      {byte(0xF0), byte(0x9F), a},           // truncated emoji, then text
      {a, byte(0xFF), a},                    // never valid
      {a, byte(0xE6), byte(0x97)},           // truncated at the end: Flush
      {byte(0x80), byte(0xC3), byte(0xA9)},  // stray continuation, é
      {byte(0xED), byte(0xA0), byte(0x80)},  // UTF-16 surrogate
      {byte(0xC0), byte(0xAF)},              // overlong '/'
  };
  for (const auto& ids : cases) {
    const std::string expected = Text(*tok, ids);
    EXPECT_NE(expected.find("\xEF\xBF\xBD"), std::string::npos);
    EXPECT_EQ(StreamAll(*tok, ids, /*strip=*/true), expected);
    EXPECT_EQ(StreamAll(*tok, ids, /*strip=*/false), expected);  // no leading space anywhere
  }
  // A provably invalid byte is released before Flush.
  StreamingDetokenizer detok(*tok, /*strip_leading_space=*/false);
  EXPECT_EQ(detok.Push(byte(0xE6)), "");
  EXPECT_EQ(detok.Push(a), "\xEF\xBF\xBDx");
}

TEST_F(TokenizerTest, ContinuationKeepsLeadingSpace) {
  auto tok = Load(*llama_model_path_);
  ASSERT_NE(tok, nullptr);
  const auto full = Ids(*tok, "The server said hello 東京 😀 and   spaces, café 123 done");
  int checked = 0;
  for (size_t k = 1; k < full.size(); ++k) {
    const std::string next = tok->TokenBytes(full[k]);
    // Splitting inside a multi-byte character would make the prompt decode to U+FFFD.
    if (next.size() == 1 && (static_cast<unsigned char>(next[0]) & 0xC0) == 0x80) continue;
    const std::vector<int32_t> prompt(full.begin(), full.begin() + k);
    const std::vector<int32_t> gen(full.begin() + k, full.end());
    EXPECT_EQ(Text(*tok, prompt) + StreamAll(*tok, gen, /*strip=*/false), Text(*tok, full))
        << "split at " << k;
    if (next.front() == ' ') {
      // Stripping mode treats the continuation as a text of its own and drops the space.
      EXPECT_EQ(StreamAll(*tok, gen, /*strip=*/true), Text(*tok, gen));
      EXPECT_EQ(StreamAll(*tok, gen, /*strip=*/true), StreamAll(*tok, gen, false).substr(1));
    }
    ++checked;
  }
  EXPECT_GT(checked, 10);
}

TEST_F(TokenizerTest, LeadingSpaceRuleFollowsTheNormalizer) {
  for (const std::string* path : {llama_model_path_, default_model_path_}) {
    auto tok = Load(*path);
    ASSERT_NE(tok, nullptr);
    const int32_t space = PieceId(*path, "\u2581");  // the lone '▁' piece
    ASSERT_EQ(tok->TokenBytes(space), " ");
    const int32_t word = SpaceWordId(*tok);
    const int32_t byte_space = ByteId(*path, 0x20);
    ASSERT_EQ(tok->TokenBytes(byte_space), " ");
    const std::vector<std::vector<int32_t>> cases = {
        {space, space, word},         {tok->bos_id(), space, space, space, word},
        {space, tok->eos_id(), word}, {byte_space, word},
        {space, byte_space, word},    {tok->bos_id(), tok->eos_id()},
    };
    for (const auto& ids : cases) {
      EXPECT_EQ(StreamAll(*tok, ids, /*strip=*/true), Text(*tok, ids)) << *path;
    }
  }
  // The two normalizers really differ on the first case, so both branches are exercised.
  auto llama = Load(*llama_model_path_);
  auto def = Load(*default_model_path_);
  ASSERT_TRUE(llama && def);
  const int32_t ls = PieceId(*llama_model_path_, "\u2581");
  const int32_t lw = SpaceWordId(*llama);
  const int32_t ds = PieceId(*default_model_path_, "\u2581");
  const int32_t dw = SpaceWordId(*def);
  EXPECT_EQ(StreamAll(*llama, {ls, ls, lw}, true), " " + llama->TokenBytes(lw));
  EXPECT_EQ(StreamAll(*def, {ds, ds, dw}, true), def->TokenBytes(dw).substr(1));
}

TEST_F(TokenizerTest, StreamingMatchesDecodeOnRandomIds) {
  // Random ids cover control, unknown, byte and ordinary pieces in any order.
  for (const std::string* path : {llama_model_path_, default_model_path_}) {
    auto tok = Load(*path);
    ASSERT_NE(tok, nullptr);
    std::mt19937 rng(99);
    for (int trial = 0; trial < 400; ++trial) {
      std::vector<int32_t> ids(1 + rng() % 24);
      for (int32_t& id : ids) id = static_cast<int32_t>(rng() % tok->vocab_size());
      EXPECT_EQ(StreamAll(*tok, ids, /*strip=*/true), Text(*tok, ids)) << "trial " << trial;
    }
  }
}

TEST_F(TokenizerTest, LoadTokenizerFromModelDirectory) {
  const fs::path root = fs::path(testing::TempDir()) / "squeeze_tokenizer_test_dirs";
  fs::remove_all(root);
  fs::create_directories(root / "spm");
  fs::create_directories(root / "json_only");
  fs::create_directories(root / "empty");
  fs::create_directories(root / "corrupt");
  fs::copy_file(*llama_model_path_, root / "spm" / "tokenizer.model");
  std::ofstream(root / "json_only" / "tokenizer.json") << "{\"model\": {\"type\": \"BPE\"}}";
  std::ofstream(root / "corrupt" / "tokenizer.model") << "this is not a protobuf";

  auto ok = LoadTokenizer((root / "spm").string());
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ((*ok)->vocab_size(), 500);
  auto ids = (*ok)->Encode("hello 東京");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*(*ok)->Decode(*ids), "hello 東京");

  auto missing = LoadTokenizer((root / "does_not_exist").string());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("does_not_exist"), std::string_view::npos);

  auto empty = LoadTokenizer((root / "empty").string());
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(empty.status().message().find("empty"), std::string_view::npos);

  auto json = LoadTokenizer((root / "json_only").string());
  EXPECT_FALSE(json.ok());  // a tokenizer.json without vocab or merges is refused
  EXPECT_NE(json.status().message().find("tokenizer.json"), std::string_view::npos);

  auto corrupt = LoadTokenizer((root / "corrupt").string());
  EXPECT_FALSE(corrupt.ok());
  EXPECT_NE(corrupt.status().message().find("tokenizer.model"), std::string_view::npos);
  fs::remove_all(root);
}

}  // namespace
}  // namespace squeeze
