// The native SentencePiece tokenizer against libsentencepiece (the reference): models trained here
// with the library's trainer in many configurations must give the same ids and the same decoded
// text for thousands of varied strings; hand-made model protos exercise the wire parser; corrupt
// model files must fail cleanly or load, never crash.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "engine/tokenizer/sentencepiece_model.h"
#include "engine/tokenizer/sentencepiece_shim.h"
#include "engine/tokenizer/sentencepiece_tokenizer.h"
#include "engine/tokenizer/tokenizer.h"
#include "gtest/gtest.h"

namespace squeeze {
namespace {

using Rng = std::mt19937;

// ---- Text generation ----------------------------------------------------------------------------

template <typename T>
const T& Pick(Rng& rng, const std::vector<T>& v) {
  return v[rng() % v.size()];
}

// Words of several scripts; every one appears in the training corpus.
const std::vector<std::string>& SeenWords() {
  // clang-format off
  static const auto* words = new std::vector<std::string>{
      "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "cluster", "centroid",
      "attention", "inference", "server", "token", "stream", "model", "hello", "world", "key",
      "value", "query", "context", "budget", "sparse", "The", "Hello", "API", "GPU", "don't",
      "it's", "state-of-the-art", "e-mail", "naïve", "café", "résumé", "über", "façade", "São",
      "niño", "Zürich", "Ærøskøbing", "œuvre", "straße", "ğüşıö", "привет", "мир", "модель",
      "данные", "Москва", "καλημέρα", "κόσμος", "λόγος", "مرحبا", "العالم", "שלום", "עולם",
      "नमस्ते", "दुनिया", "สวัสดี", "โลก", "東京", "日本語", "中文", "数据", "模型", "注意力",
      "こんにちは", "カタカナ", "ひらがな", "한국어", "서울", "안녕하세요", "😀", "🎉", "🚀", "👍🏽",
      "👨‍👩‍👧", "🏳️‍🌈", "🇫🇷", "❤️", "3.14", "1,000,000", "2024-06-01", "v1.2.3", ",", ".",
      "!", "?", "(x)", "[y]", "{z}", "—", "…", "«guillemets»", "\"quoted\"", "#tag", "@user",
      "http://example.com/a?b=c", "a+b=c", "50%", "$9.99", "€5", "x²", "C++", "snake_case",
  };
  // clang-format on
  return *words;
}

// Text the trainer never sees or that the normalizer rewrites: other scripts (unknown characters
// -> byte fallback or <unk>), NFKC-affected forms, control characters, odd whitespace, malformed
// UTF-8, strings that spell special pieces.
const std::vector<std::string>& UnseenFragments() {
  // clang-format off
  static const auto* fragments = new std::vector<std::string>{
      "ሰላም", "გამარჯობა", "வணக்கம்", "Ꭰ", "龘", "𠀋", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "🦀", "🧑🏿‍🚀", "🫠",
      "ＡＢＣ", "ｈｅｌｌｏ", "①②③", "ﬁne", "㍿", "½", "e\u0301", "\u212B", "ｶﾀｶﾅ", "™", "Ⅻ",
      "\u00A0", "\u3000", "\u2003", "\u200B", "\u200D", "\uFEFF", "\t", "\n", "\r\n", "\x01",
      "\x7F", "\x1B[0m", "\u0085", "\uFFFD", "\xFF", "\xC3", "\xE2\x82", "\xED\xA0\x80",
      "\xC0\xAF", "\x80", "\xF4\x90\x80\x80", "<s>", "</s>", "<unk>", "<pad>", "<0x41>", "▁",
      "▁▁", " ⁇ ", "<sep>", "[MASK]", "a<sep>b", "<ctrl>",
  };
  // clang-format on
  return *fragments;
}

std::string RandomNumber(Rng& rng) {
  std::string s = std::to_string(rng() % 1000000);
  if (rng() % 3 == 0) s += "." + std::to_string(rng() % 1000);
  return s;
}

const std::vector<std::string> kSeparators = {" ",   " ",  " ",  " ",    "",   "  ",
                                              "   ", "\t", "\n", " \n ", ", ", ". "};

// One line of the training corpus.
std::string CorpusLine(Rng& rng) {
  std::string line;
  const int n = 3 + static_cast<int>(rng() % 14);
  for (int w = 0; w < n; ++w) {
    if (w > 0) line += rng() % 8 == 0 ? "  " : " ";
    line += rng() % 7 == 0 ? RandomNumber(rng) : Pick(rng, SeenWords());
  }
  return line;
}

// `n` deterministic test strings: edge cases, then random mixes of every fragment kind.
std::vector<std::string> TestStrings(int n) {
  // clang-format off
  std::vector<std::string> strings = {
      "", " ", "  ", "\t", "\n", "   \t\n  ", "a", " a", "a ", "  a  b  ", "hello world",
      " hello  world ", "hello\tworld\n", "▁hello", "hello▁world", "<s>hello</s>", "<unk>",
      "<0x41><0xFF>", "12345678901234567890", "😀😀😀", "👨‍👩‍👧‍👦 family", "東京タワー",
      "\xFF\xFE\xFD", "\u3000\u3000x\u3000", "ＡＢＣ　ｄｅｆ", "<sep><sep>[MASK]",
  };
  // clang-format on
  strings.push_back(std::string("a\0b", 3));  // an embedded NUL
  Rng rng(20240601);
  while (static_cast<int>(strings.size()) < n) {
    std::string s;
    if (rng() % 6 == 0) s += Pick(rng, kSeparators);  // leading whitespace
    const int parts = static_cast<int>(rng() % 12);
    for (int p = 0; p < parts; ++p) {
      if (p > 0) s += Pick(rng, kSeparators);
      const unsigned kind = rng() % 10;
      if (kind < 5) {
        s += Pick(rng, SeenWords());
      } else if (kind < 7) {
        s += Pick(rng, UnseenFragments());
      } else if (kind < 8) {
        s += RandomNumber(rng);
      } else if (kind < 9) {  // a word glued to an unseen fragment
        s += Pick(rng, SeenWords()) + Pick(rng, UnseenFragments());
      } else {  // random bytes, mostly printable
        const int len = 1 + static_cast<int>(rng() % 6);
        for (int i = 0; i < len; ++i) {
          s.push_back(static_cast<char>(rng() % 4 == 0 ? rng() % 256 : 0x20 + rng() % 95));
        }
      }
    }
    if (rng() % 6 == 0) s += Pick(rng, kSeparators);  // trailing whitespace
    strings.push_back(std::move(s));
  }
  return strings;
}

std::string Escaped(std::string_view s) {
  return absl::CHexEscape(absl::string_view(s.data(), s.size()));
}

std::string IdsToString(const std::vector<int32_t>& ids) {
  std::string out;
  for (int32_t id : ids) absl::StrAppend(&out, out.empty() ? "" : " ", id);
  return out;
}

// ---- Protobuf writing (hand-made and patched models) -------------------------------------------

std::string Varint(uint64_t v) {
  std::string out;
  do {
    out.push_back(static_cast<char>((v & 0x7F) | (v > 0x7F ? 0x80 : 0)));
    v >>= 7;
  } while (v != 0);
  return out;
}
std::string Tag(uint32_t field, uint32_t wire_type) { return Varint(field << 3 | wire_type); }
std::string VarintField(uint32_t field, uint64_t v) { return Tag(field, 0) + Varint(v); }
std::string BytesField(uint32_t field, std::string_view bytes) {
  return Tag(field, 2) + Varint(bytes.size()) + std::string(bytes);
}
std::string Fixed32Field(uint32_t field, uint32_t bits) {
  std::string out = Tag(field, 5);
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>(bits >> (8 * i)));
  return out;
}
std::string FloatField(uint32_t field, float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return Fixed32Field(field, bits);
}
std::string Fixed64Field(uint32_t field, uint64_t bits) {
  std::string out = Tag(field, 1);
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>(bits >> (8 * i)));
  return out;
}
std::string GroupField(uint32_t field, std::string_view body) {
  return Tag(field, 3) + std::string(body) + Tag(field, 4);
}
// Unknown fields of every wire type, including nested groups, under unused field numbers.
std::string UnknownFields() {
  return VarintField(1000, 123456789) + Fixed64Field(1001, 0x0123456789ABCDEFull) +
         BytesField(1002, "ignored") + Fixed32Field(1003, 0xDEADBEEF) +
         GroupField(1004, VarintField(1, 7) + GroupField(2, BytesField(3, "deep"))) +
         VarintField(1005, static_cast<uint64_t>(-5));
}
std::string PieceMessage(std::string_view text, float score, int type, bool with_unknown) {
  std::string body = BytesField(1, text) + FloatField(2, score);
  if (type != 1) body += VarintField(3, static_cast<uint64_t>(type));
  if (with_unknown) body += UnknownFields();
  return BytesField(1, body);
}

// ---- Reference comparison -----------------------------------------------------------------------

struct Reference {
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp;
  std::unique_ptr<SentencePieceTokenizer> ours;
};

Reference LoadBoth(const std::string& serialized, const std::string& name) {
  Reference r;
  r.sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const auto status = r.sp->LoadFromSerializedProto(serialized);
  EXPECT_TRUE(status.ok()) << name << ": library: " << status.ToString();
  auto ours = SentencePieceTokenizer::FromSerializedModel(serialized, name);
  EXPECT_TRUE(ours.ok()) << name << ": " << ours.status();
  if (ours.ok()) r.ours = *std::move(ours);
  return r;
}

struct Mismatches {
  int encode = 0;
  int decode = 0;
};

// Compares Encode and Decode(ids) with the library on every string, plus Decode of random id
// sequences. Reports the first few differences in detail.
Mismatches Compare(const Reference& r, const std::vector<std::string>& strings,
                   const std::string& name) {
  Mismatches m;
  if (r.ours == nullptr) return {1, 1};
  EXPECT_EQ(r.ours->vocab_size(), r.sp->GetPieceSize()) << name;
  EXPECT_EQ(r.ours->bos_id(), r.sp->bos_id()) << name;
  EXPECT_EQ(r.ours->eos_id(), r.sp->eos_id()) << name;
  auto report = [&](int count) { return count <= 5; };
  for (const std::string& s : strings) {
    const std::vector<int> expected = r.sp->EncodeAsIds(s);
    const auto ids = r.ours->Encode(s);
    if (!ids.ok()) {
      ADD_FAILURE() << name << ": " << ids.status();
      ++m.encode;
      continue;
    }
    const std::vector<int32_t> expected32(expected.begin(), expected.end());
    if (*ids != expected32 && report(++m.encode)) {
      ADD_FAILURE() << name << ": Encode(\"" << Escaped(s)
                    << "\")\n  ours:    " << IdsToString(*ids)
                    << "\n  library: " << IdsToString(expected32) << "\n  normalized: \""
                    << Escaped(r.ours->Normalize(s)) << "\"";
    }
    const std::string expected_text = r.sp->DecodeIds(expected);
    const auto text = r.ours->Decode(expected32);
    if ((!text.ok() || *text != expected_text) && report(++m.decode)) {
      ADD_FAILURE() << name << ": Decode(" << IdsToString(expected32) << ")\n  ours:    \""
                    << Escaped(text.value_or("<error>")) << "\"\n  library: \""
                    << Escaped(expected_text) << "\"";
    }
  }
  // Random id sequences mix control, unknown, byte and normal pieces in any order. Half of them
  // draw from a small set of the pieces that decoding treats specially, so that every pairing of
  // them occurs: control, unknown, byte, user-defined, the lone '▁', '▁'-led and plain pieces.
  Rng rng(7);
  const int vocab = r.sp->GetPieceSize();
  std::vector<int> special;
  int space_led = 0, plain = 0;
  for (int id = 0; id < vocab; ++id) {
    const std::string& piece = r.sp->IdToPiece(id);
    const bool led = piece.rfind("\u2581", 0) == 0;
    if (r.sp->IsControl(id) || r.sp->IsUnknown(id) || r.sp->IsUnused(id) || piece == "\u2581" ||
        piece == "\u2581\u2581" || piece == "<0x20>" || piece == "<0xE2>" || piece == "<0x96>" ||
        piece == "<0x81>" || piece == "<0xC3>" || piece == "<0xFF>" || (led && ++space_led <= 4) ||
        (!led && !r.sp->IsByte(id) && ++plain <= 3)) {
      special.push_back(id);
    }
  }
  for (int trial = 0; trial < 1000; ++trial) {
    std::vector<int> ids(rng() % 8);
    for (int& id : ids) {
      id = trial % 2 == 0 ? special[rng() % special.size()] : static_cast<int>(rng() % vocab);
    }
    const std::vector<int32_t> ids32(ids.begin(), ids.end());
    const auto text = r.ours->Decode(ids32);
    if ((!text.ok() || *text != r.sp->DecodeIds(ids)) && report(++m.decode)) {
      ADD_FAILURE() << name << ": Decode(" << IdsToString(ids32) << ")\n  ours:    \""
                    << Escaped(text.value_or("<error>")) << "\"\n  library: \""
                    << Escaped(r.sp->DecodeIds(ids)) << "\"";
    }
  }
  return m;
}

// Feeds the generated corpus to the trainer without a file.
class VectorIterator : public sentencepiece::SentenceIterator {
 public:
  explicit VectorIterator(const std::vector<std::string>* lines) : lines_(lines) {}
  bool done() const override { return index_ >= lines_->size(); }
  void Next() override { ++index_; }
  const std::string& value() const override { return (*lines_)[index_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::vector<std::string>* lines_;
  size_t index_ = 0;
};

struct TrainedModel {
  std::string name;
  std::string serialized;
};

// Configurations: the lead-in is shared, the rest differs per model.
const std::vector<std::pair<std::string, std::unordered_map<std::string, std::string>>>& Configs() {
  static const auto* configs =
      new std::vector<std::pair<std::string, std::unordered_map<std::string, std::string>>>{
          // Llama-2 style.
          {"bpe_llama",
           {{"model_type", "bpe"},
            {"vocab_size", "1200"},
            {"byte_fallback", "true"},
            {"normalization_rule_name", "identity"},
            {"remove_extra_whitespaces", "false"},
            {"split_digits", "true"},
            {"allow_whitespace_only_pieces", "true"}}},
          // Trainer defaults (nmt_nfkc), with user-defined and control symbols.
          {"bpe_nfkc",
           {{"model_type", "bpe"},
            {"vocab_size", "1000"},
            {"user_defined_symbols", "<sep>,[MASK]"},
            {"control_symbols", "<ctrl>"}}},
          {"bpe_nfkc_cf_no_prefix",
           {{"model_type", "bpe"},
            {"vocab_size", "900"},
            {"byte_fallback", "true"},
            {"normalization_rule_name", "nmt_nfkc_cf"},
            {"add_dummy_prefix", "false"},
            {"split_digits", "true"}}},
          {"unigram_nfkc", {{"model_type", "unigram"}, {"vocab_size", "1200"}}},
          {"unigram_bytes",
           {{"model_type", "unigram"},
            {"vocab_size", "1000"},
            {"byte_fallback", "true"},
            {"remove_extra_whitespaces", "false"},
            {"split_digits", "true"},
            {"user_defined_symbols", "<sep>,[MASK]"}}},
          {"unigram_identity_suffix",
           {{"model_type", "unigram"},
            {"vocab_size", "800"},
            {"normalization_rule_name", "identity"},
            {"treat_whitespace_as_suffix", "true"},
            {"remove_extra_whitespaces", "false"},
            {"unk_surface", "<UNK>"}}},
          {"unigram_no_prefix_ids",
           {{"model_type", "unigram"},
            {"vocab_size", "700"},
            {"add_dummy_prefix", "false"},
            {"unk_id", "3"},
            {"bos_id", "0"},
            {"eos_id", "-1"},
            {"pad_id", "1"},
            {"byte_fallback", "true"}}},
          {"char", {{"model_type", "char"}, {"vocab_size", "300"}}},
          {"word",
           {{"model_type", "word"},
            {"vocab_size", "600"},
            {"byte_fallback", "true"},
            {"remove_extra_whitespaces", "false"}}},
      };
  return *configs;
}

// ---- The test fixture ---------------------------------------------------------------------------

class SentencePieceConformanceTest : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    sentencepiece::SetRandomGeneratorSeed(1);
    Rng rng(1234);
    std::vector<std::string> corpus;
    for (int i = 0; i < 2500; ++i) corpus.push_back(CorpusLine(rng));
    models_ = new std::vector<TrainedModel>;
    for (const auto& [name, flags] : Configs()) {
      std::unordered_map<std::string, std::string> args = {{"num_threads", "1"},
                                                           {"hard_vocab_limit", "false"},
                                                           {"minloglevel", "2"},
                                                           {"input_sentence_size", "0"},
                                                           {"shuffle_input_sentence", "false"}};
      for (const auto& [k, v] : flags) args[k] = v;
      VectorIterator iterator(&corpus);
      std::string serialized;
      const auto status = sentencepiece::SentencePieceTrainer::Train(args, &iterator, &serialized);
      ASSERT_TRUE(status.ok()) << name << ": " << status.ToString();
      models_->push_back({name, std::move(serialized)});
    }
    strings_ = new std::vector<std::string>(TestStrings(2500));
  }
  static void TearDownTestSuite() {
    delete models_;
    delete strings_;
  }

  static const TrainedModel& Model(std::string_view name) {
    for (const auto& m : *models_) {
      if (m.name == name) return m;
    }
    ADD_FAILURE() << "no model " << name;
    return models_->front();
  }

  static std::vector<TrainedModel>* models_;
  static std::vector<std::string>* strings_;
};

std::vector<TrainedModel>* SentencePieceConformanceTest::models_ = nullptr;
std::vector<std::string>* SentencePieceConformanceTest::strings_ = nullptr;

TEST_F(SentencePieceConformanceTest, TrainedModelsMatchTheLibrary) {
  ASSERT_GE(strings_->size(), 2000u);
  int total_encode = 0, total_decode = 0;
  for (const auto& model : *models_) {
    const Reference r = LoadBoth(model.serialized, model.name);
    const Mismatches m = Compare(r, *strings_, model.name);
    std::printf("%-26s vocab %5d: %zu strings, %d encode / %d decode mismatches\n",
                model.name.c_str(), r.sp->GetPieceSize(), strings_->size(), m.encode, m.decode);
    total_encode += m.encode;
    total_decode += m.decode;
  }
  EXPECT_EQ(total_encode, 0);
  EXPECT_EQ(total_decode, 0);
}

TEST_F(SentencePieceConformanceTest, ModelsReadAsTheLibraryReadsThem) {
  for (const auto& model : *models_) {
    auto parsed = ParseSentencePieceModel(model.serialized);
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    sentencepiece::SentencePieceProcessor sp;
    ASSERT_TRUE(sp.LoadFromSerializedProto(model.serialized).ok());
    ASSERT_EQ(static_cast<int>(parsed->pieces.size()), sp.GetPieceSize());
    for (int id = 0; id < sp.GetPieceSize(); ++id) {
      const auto& piece = parsed->pieces[id];
      EXPECT_EQ(piece.text, sp.IdToPiece(id)) << model.name << " id " << id;
      EXPECT_EQ(piece.score, sp.GetScore(id)) << model.name << " id " << id;
      EXPECT_EQ(piece.type == SentencePieceModel::PieceType::kControl, sp.IsControl(id));
      EXPECT_EQ(piece.type == SentencePieceModel::PieceType::kUnknown, sp.IsUnknown(id));
      EXPECT_EQ(piece.type == SentencePieceModel::PieceType::kByte, sp.IsByte(id));
      EXPECT_EQ(piece.type == SentencePieceModel::PieceType::kUnused, sp.IsUnused(id));
    }
    EXPECT_EQ(parsed->trainer_spec.unk_id, sp.unk_id()) << model.name;
  }
  // Spot checks of fields the configurations set.
  auto llama = ParseSentencePieceModel(Model("bpe_llama").serialized);
  ASSERT_TRUE(llama.ok());
  EXPECT_EQ(llama->trainer_spec.model_type, SentencePieceModel::ModelType::kBpe);
  EXPECT_TRUE(llama->trainer_spec.byte_fallback);
  EXPECT_TRUE(llama->trainer_spec.split_digits);
  EXPECT_TRUE(llama->trainer_spec.allow_whitespace_only_pieces);
  EXPECT_TRUE(llama->normalizer_spec.precompiled_charsmap.empty());
  EXPECT_FALSE(llama->normalizer_spec.remove_extra_whitespaces);
  EXPECT_TRUE(llama->normalizer_spec.add_dummy_prefix);
  auto ids = ParseSentencePieceModel(Model("unigram_no_prefix_ids").serialized);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->trainer_spec.model_type, SentencePieceModel::ModelType::kUnigram);
  EXPECT_EQ(ids->trainer_spec.unk_id, 3);
  EXPECT_EQ(ids->trainer_spec.bos_id, 0);
  EXPECT_EQ(ids->trainer_spec.eos_id, -1);
  EXPECT_EQ(ids->trainer_spec.pad_id, 1);
  EXPECT_FALSE(ids->normalizer_spec.add_dummy_prefix);
  EXPECT_EQ(ids->normalizer_spec.name, "nmt_nfkc");
  EXPECT_FALSE(ids->normalizer_spec.precompiled_charsmap.empty());
  auto suffix = ParseSentencePieceModel(Model("unigram_identity_suffix").serialized);
  ASSERT_TRUE(suffix.ok());
  EXPECT_TRUE(suffix->trainer_spec.treat_whitespace_as_suffix);
  EXPECT_TRUE(suffix->trainer_spec.has_unk_surface);
  EXPECT_EQ(suffix->trainer_spec.unk_surface, "<UNK>");
}

// Appending a serialized sub-message merges it into the one already there (protobuf semantics),
// which flips normalizer flags the trainer does not let us set and adds a denormalizer.
TEST_F(SentencePieceConformanceTest, PatchedModelsMatchTheLibrary) {
  const std::string& nfkc = Model("unigram_nfkc").serialized;
  auto parsed = ParseSentencePieceModel(nfkc);
  ASSERT_TRUE(parsed.ok());
  const std::string& charsmap = parsed->normalizer_spec.precompiled_charsmap;
  ASSERT_FALSE(charsmap.empty());
  const std::vector<std::pair<std::string, std::string>> patched = {
      {"no_escape", nfkc + BytesField(3, VarintField(5, 0))},
      {"keep_whitespace_no_prefix",
       Model("bpe_nfkc").serialized + BytesField(3, VarintField(3, 0) + VarintField(4, 0))},
      {"identity_keep_whitespace",
       Model("unigram_bytes").serialized + BytesField(3, BytesField(2, "") + VarintField(4, 0))},
      {"denormalizer",
       Model("bpe_llama").serialized +
           BytesField(5, BytesField(1, "nfkc") + BytesField(2, charsmap) + VarintField(3, 0) +
                             VarintField(4, 0) + VarintField(5, 0))},
      {"unknown_fields",
       nfkc + UnknownFields() + BytesField(2, UnknownFields()) + BytesField(3, UnknownFields())},
      {"unk_surface_empty", Model("bpe_nfkc").serialized + BytesField(2, BytesField(44, ""))},
  };
  for (const auto& [name, serialized] : patched) {
    const Reference r = LoadBoth(serialized, name);
    const Mismatches m = Compare(r, *strings_, name);
    EXPECT_EQ(m.encode, 0) << name;
    EXPECT_EQ(m.decode, 0) << name;
  }
}

// SetVocabulary marks pieces outside a vocabulary UNUSED; BPE must then split merged unused
// pieces back into their parts and unigram must skip them. (Models with byte fallback cannot be
// restricted: SetVocabulary retypes their byte pieces.)
TEST_F(SentencePieceConformanceTest, UnusedPiecesMatchTheLibrary) {
  for (const char* name : {"bpe_nfkc", "unigram_nfkc", "unigram_identity_suffix"}) {
    sentencepiece::SentencePieceProcessor sp;
    ASSERT_TRUE(sp.LoadFromSerializedProto(Model(name).serialized).ok());
    std::vector<std::string> keep;
    Rng rng(11);
    for (int id = 0; id < sp.GetPieceSize(); ++id) {
      if (rng() % 3 != 0) keep.push_back(sp.IdToPiece(id));  // drop a third
    }
    ASSERT_TRUE(sp.SetVocabulary(std::vector<std::string_view>(keep.begin(), keep.end())).ok());
    const std::string restricted = sp.serialized_model_proto();
    const Reference r = LoadBoth(restricted, std::string(name) + "_restricted");
    int unused = 0;
    for (int id = 0; id < r.sp->GetPieceSize(); ++id) unused += r.sp->IsUnused(id) ? 1 : 0;
    EXPECT_GT(unused, 50) << name;
    const Mismatches m = Compare(r, *strings_, std::string(name) + "_restricted");
    EXPECT_EQ(m.encode, 0) << name;
    EXPECT_EQ(m.decode, 0) << name;
  }
}

// Small models written by hand: absent specs take proto2 defaults (unigram, add_dummy_prefix,
// remove_extra_whitespaces, escape_whitespaces), unknown fields are skipped everywhere.
TEST_F(SentencePieceConformanceTest, HandWrittenModelsMatchTheLibrary) {
  struct P {
    const char* text;
    float score;
    int type;
  };
  const std::vector<P> vocab = {
      {"<unk>", 0, 2},   {"<s>", 0, 3},          {"</s>", 0, 3},
      {"<sep>", 0, 4},   {"\u2581", -2, 1},      {"a", -3, 1},
      {"b", -3.5f, 1},   {"c", -4, 1},           {"d", -4, 1},
      {"e", -3, 1},      {"\u2581a", -2.5f, 1},  {"ab", -2, 1},
      {"abc", -2.2f, 1}, {"\u2581ab", -1.5f, 1}, {"cd", -2.7f, 1},
      {"de", -2.7f, 1},  {"bcd", -2.9f, 1},      {"\u2581\u2581", -3, 1},
      {"x", -6, 5},  // UNUSED
  };
  std::string pieces, pieces_with_unknown;
  for (size_t i = 0; i < vocab.size(); ++i) {
    pieces += PieceMessage(vocab[i].text, vocab[i].score, vocab[i].type, false);
    pieces_with_unknown += PieceMessage(vocab[i].text, vocab[i].score, vocab[i].type, i % 2 == 0);
  }
  const std::string bpe = BytesField(2, VarintField(3, 2));
  const std::vector<std::pair<std::string, std::string>> models = {
      {"bare_unigram", pieces},
      {"bare_bpe", pieces + bpe},
      {"unknown_everywhere_bpe", UnknownFields() + pieces_with_unknown +
                                     BytesField(2, UnknownFields() + VarintField(3, 2)) +
                                     BytesField(3, UnknownFields() + VarintField(3, 0))},
      {"bpe_out_of_range_enums", pieces + BytesField(2, VarintField(3, 2) + VarintField(3, 9)) +
                                     PieceMessage("zz", -1, 77, false)},
      {"unigram_keep_whitespace", pieces + BytesField(3, VarintField(4, 0))},
  };
  const std::vector<std::string> strings = {
      "",   "abc", " abcde  abcd ", "a b c d e", "x y z", "abc<sep>de", "  ", "abcabc   ab\tcd",
      "zz", "éa",  "\xFF"};
  for (const auto& [name, serialized] : models) {
    const Reference r = LoadBoth(serialized, name);
    const Mismatches m = Compare(r, strings, name);
    EXPECT_EQ(m.encode, 0) << name;
    EXPECT_EQ(m.decode, 0) << name;
  }
}

// In a unigram model a user-defined symbol scores length * max_score - 0.1, where max_score
// starts at FLT_MIN: with pieces scoring near 0 it can lose to them, in the library too.
TEST_F(SentencePieceConformanceTest, UnigramUserDefinedBonusMatchesTheLibrary) {
  const std::string pieces =
      PieceMessage("<unk>", 0, 2, false) + PieceMessage("\u2581", -0.01f, 1, false) +
      PieceMessage("q", -0.01f, 1, false) + PieceMessage("r", -0.04f, 1, false) +
      PieceMessage("qr", 0, 4, false) + PieceMessage("st", 0, 4, false) +
      PieceMessage("s", -1, 1, false) + PieceMessage("t", -1, 1, false);
  const Reference r = LoadBoth(pieces, "user_defined_bonus");
  ASSERT_NE(r.ours, nullptr);
  const auto qr = r.ours->Encode("qr st");
  ASSERT_TRUE(qr.ok());
  EXPECT_EQ(*qr, (std::vector<int32_t>{1, 2, 3, 1, 5}));  // "q" "r" lose to nothing; "st" wins
  const Mismatches m = Compare(r, {"qr", "qrqr st", " st qr", "sqrt", "q r s t"}, "bonus");
  EXPECT_EQ(m.encode, 0);
  EXPECT_EQ(m.decode, 0);
}

// Wire-level damage the library also rejects.
TEST_F(SentencePieceConformanceTest, MalformedWireDataIsAnError) {
  const std::string piece = PieceMessage("<unk>", 0, 2, false);
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"truncated varint", piece + "\x08\xFF"},
      {"length past the end", piece + "\x0A\x10"
                                      "abc"},
      {"wire type 6", piece + Tag(7, 6)},
      {"wire type 7", piece + Tag(7, 7)},
      {"end group without start", piece + Tag(9, 4)},
      {"mismatched end group", piece + Tag(9, 3) + Tag(10, 4)},
      {"unterminated group", piece + Tag(9, 3) + VarintField(1, 1)},
      {"field number 0", piece + Tag(0, 0) + Varint(1)},
      {"truncated fixed32", piece + Tag(9, 5) + "ab"},
      {"truncated fixed64", piece + Tag(9, 1) + "abcdefg"},
      {"bad piece message", BytesField(1,
                                       "\x0A\x05"
                                       "ab")},
      {"eleven-byte varint", piece + Tag(9, 0) + std::string(10, '\xFF') + "\x01"},
  };
  for (const auto& [what, serialized] : bad) {
    sentencepiece::SentencePieceProcessor sp;
    EXPECT_FALSE(sp.LoadFromSerializedProto(serialized).ok()) << what << " (library)";
    auto ours = SentencePieceTokenizer::FromSerializedModel(serialized, "bad.model");
    EXPECT_FALSE(ours.ok()) << what;
    if (!ours.ok()) {
      EXPECT_NE(ours.status().message().find("bad.model"), std::string_view::npos);
    }
  }
  // Vocabulary errors: no <unk>, two <unk>, duplicate pieces, a byte piece without byte_fallback,
  // byte_fallback with missing byte pieces, an empty piece.
  const std::string unk = PieceMessage("<unk>", 0, 2, false);
  const std::vector<std::string> invalid = {
      PieceMessage("a", 0, 1, false),
      unk + PieceMessage("<unk2>", 0, 2, false),
      unk + PieceMessage("a", 0, 1, false) + PieceMessage("a", -1, 1, false),
      unk + PieceMessage("<0x41>", 0, 6, false),
      unk + PieceMessage("<0x41>", 0, 6, false) + BytesField(2, VarintField(35, 1)),
      unk + PieceMessage("", 0, 1, false),
      "",
  };
  for (const std::string& serialized : invalid) {
    sentencepiece::SentencePieceProcessor sp;
    EXPECT_FALSE(sp.LoadFromSerializedProto(serialized).ok()) << Escaped(serialized);
    EXPECT_FALSE(SentencePieceTokenizer::FromSerializedModel(serialized, "x").ok())
        << Escaped(serialized);
  }
}

// Truncated and bit-flipped copies of real models load or fail; whatever loads must encode and
// decode without crashing (the library is not run on these: it may read out of bounds).
TEST_F(SentencePieceConformanceTest, CorruptModelsNeverCrash) {
  const std::vector<std::string> probes = {"hello world", "東京 😀 ＡＢＣ", "  a\tb  ", "\xFF\xC3",
                                           "abc<sep>de 12345"};
  int loaded = 0, rejected = 0;
  auto exercise = [&](const std::string& serialized) {
    auto tok = SentencePieceTokenizer::FromSerializedModel(serialized, "corrupt.model");
    if (!tok.ok()) {
      ++rejected;
      return;
    }
    ++loaded;
    for (const std::string& s : probes) {
      auto ids = (*tok)->Encode(s);
      ASSERT_TRUE(ids.ok());
      for (int32_t id : *ids) ASSERT_TRUE(id >= 0 && id < (*tok)->vocab_size());
      ASSERT_TRUE((*tok)->Decode(*ids).ok());
    }
    std::vector<int32_t> all;
    for (int32_t id = 0; id < std::min((*tok)->vocab_size(), 400); ++id) {
      all.push_back(id);
      (void)(*tok)->TokenBytes(id);
    }
    ASSERT_TRUE((*tok)->Decode(all).ok());
  };
  Rng rng(99);
  for (const char* name : {"bpe_llama", "unigram_nfkc", "bpe_nfkc"}) {
    const std::string& model = Model(name).serialized;
    // Truncations: every byte of the head, then spread over the whole file.
    for (size_t n = 0; n < 64; ++n) exercise(model.substr(0, n));
    for (int k = 0; k < 150; ++k) exercise(model.substr(0, rng() % model.size()));
    // Flips: a few bytes each, half in the vocabulary part at the front.
    for (int k = 0; k < 400; ++k) {
      std::string damaged = model;
      const int flips = 1 + static_cast<int>(rng() % 3);
      for (int f = 0; f < flips; ++f) {
        const size_t span = rng() % 2 == 0 ? damaged.size() / 4 : damaged.size();
        damaged[rng() % span] ^= static_cast<char>(1 + rng() % 255);
      }
      exercise(damaged);
    }
  }
  // Random bytes.
  for (int k = 0; k < 200; ++k) {
    std::string junk(rng() % 300, '\0');
    for (char& c : junk) c = static_cast<char>(rng());
    exercise(junk);
  }
  std::printf("corrupt models: %d loaded, %d rejected\n", loaded, rejected);
  EXPECT_GT(loaded, 0);
  EXPECT_GT(rejected, 0);
}

// A long text (~100K tokens) encodes identically and fast.
TEST_F(SentencePieceConformanceTest, LongTextMatchesAndIsFast) {
  // The bound is against a blow-up of the algorithm (quadratic merges), not a benchmark:
  // sanitizers make the encoder several times slower, TSan up to ten times.
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
  constexpr double kMaxSeconds = 20.0;
#else
  constexpr double kMaxSeconds = 2.0;
#endif
  std::string text;
  for (const std::string& s : *strings_) {
    text += s;
    text += ' ';
  }
  const std::string once = text;
  while (text.size() < 400000) text += once;
  for (const char* name : {"bpe_llama", "unigram_nfkc"}) {
    const Reference r = LoadBoth(Model(name).serialized, name);
    ASSERT_NE(r.ours, nullptr);
    const auto start = std::chrono::steady_clock::now();
    const auto ids = r.ours->Encode(text);
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    ASSERT_TRUE(ids.ok());
    const std::vector<int> expected = r.sp->EncodeAsIds(text);
    EXPECT_EQ(*ids, std::vector<int32_t>(expected.begin(), expected.end())) << name;
    std::printf("%s: %zu bytes -> %zu tokens in %.3f s\n", name, text.size(), ids->size(), seconds);
    EXPECT_GT(ids->size(), 100000u);
    EXPECT_LT(seconds, kMaxSeconds) << name;  // typically well under 0.5 s
  }
}

// The repository's test model (written by tools/make_test_model.cc) loads and matches.
TEST_F(SentencePieceConformanceTest, RepositoryTestModelLoads) {
  const std::string path = SQUEEZE_TEST_MODEL_DIR "/tokenizer.model";
  ASSERT_TRUE(std::filesystem::is_regular_file(path)) << path;
  auto tok = SentencePieceTokenizer::Load(path);
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto loaded = LoadTokenizer(SQUEEZE_TEST_MODEL_DIR);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->vocab_size(), (*tok)->vocab_size());
  std::ifstream file(path, std::ios::binary);
  const std::string serialized((std::istreambuf_iterator<char>(file)),
                               std::istreambuf_iterator<char>());
  const Reference r = LoadBoth(serialized, path);
  const std::vector<std::string> strings(strings_->begin(), strings_->begin() + 500);
  const Mismatches m = Compare(r, strings, path);
  EXPECT_EQ(m.encode, 0);
  EXPECT_EQ(m.decode, 0);
}

TEST(SentencePieceModelTest, MissingFileIsNotFound) {
  auto tok = SentencePieceTokenizer::Load("/nonexistent/dir/tokenizer.model");
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(tok.status().message().find("/nonexistent/dir/tokenizer.model"),
            std::string_view::npos);
}

TEST(SentencePieceModelTest, BrokenCharsMapIsAnError) {
  EXPECT_FALSE(PrecompiledCharsMap::Parse("").ok());
  EXPECT_FALSE(PrecompiledCharsMap::Parse("abcd").ok());
  EXPECT_FALSE(PrecompiledCharsMap::Parse(std::string("\x10\x00\x00\x00"
                                                      "abc",
                                                      7))
                   .ok());
  auto ok =
      PrecompiledCharsMap::Parse(std::string("\x00\x00\x00\x00"
                                             "x",
                                             5));
  ASSERT_TRUE(ok.ok());
  std::string_view replacement;
  EXPECT_EQ(ok->LongestMatch("abc", &replacement), 0u);
}

}  // namespace
}  // namespace squeeze
