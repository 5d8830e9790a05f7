// The Qwen2 and Tekken (Mistral-Nemo) Split pre-tokenizers and the NFC normalizer of the
// byte-level BPE tokenizer: hand-worked cases, then the goldens of tools/make_goldens.py:
//
//   splits_qwen2.json, splits_tekken.json  the pieces of every corpus string (and a few more),
//       cut by Python's `regex` module, which the generator first checks against `tokenizers`'
//       own Llama-3 pieces of the whole corpus (--only splits);
//   nfc_cases.json  unicodedata.normalize("NFC") of targeted strings and of the corpus
//       (--only nfc);
//   bpe_qwen2/, bpe_tekken/ (+ _cases.json)  tokenizer.json files in the Qwen2 and Mistral-Nemo
//       layouts trained with `tokenizers`, and the ids it gives (--only bpe_qwen2,bpe_tekken, on a
//       machine with `tokenizers`); skipped while they are absent.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engine/tokenizer/bpe_tokenizer.h"
#include "engine/tokenizer/llama3_pretokenizer.h"
#include "engine/tokenizer/nfc.h"
#include "engine/tokenizer/tekken_pretokenizer.h"
#include "engine/tokenizer/unicode.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/common/escape.h"

namespace squeeze {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using ::testing::ElementsAre;

using SplitFunction = std::vector<std::string_view> (*)(std::string_view);

std::vector<std::string> Pieces(SplitFunction split, std::string_view text) {
  std::vector<std::string> out;
  for (std::string_view piece : split(text)) out.emplace_back(piece);
  return out;
}
std::vector<std::string> Qwen2(std::string_view text) { return Pieces(SplitQwen2, text); }
std::vector<std::string> Tekken(std::string_view text) { return Pieces(SplitTekken, text); }

// ---- Qwen2 ------------------------------------------------------------------------------------

TEST(Qwen2PreTokenizer, DigitsOneAtATime) {
  EXPECT_THAT(Qwen2("123456"), ElementsAre("1", "2", "3", "4", "5", "6"));
  EXPECT_THAT(Qwen2("abc123def"), ElementsAre("abc", "1", "2", "3", "def"));
  EXPECT_THAT(Qwen2("x 42"), ElementsAre("x", " ", "4", "2"));
  EXPECT_THAT(Qwen2("3.14"), ElementsAre("3", ".", "1", "4"));
  // Arabic-Indic digits (Nd) and superscript two (No) are \p{N} too.
  EXPECT_THAT(Qwen2("\xD9\xA3\xD9\xA4x\xC2\xB2"),
              ElementsAre("\xD9\xA3", "\xD9\xA4", "x", "\xC2\xB2"));
}

TEST(Qwen2PreTokenizer, OtherwiseLikeLlama3) {
  EXPECT_THAT(Qwen2("don't I'M"), ElementsAre("don", "'t", " I", "'M"));
  EXPECT_THAT(Qwen2("Hello, world!\n\n"), ElementsAre("Hello", ",", " world", "!\n\n"));
  EXPECT_THAT(Qwen2("x  \n  y"), ElementsAre("x", "  \n", " ", " y"));
  // Without digits the two patterns cut every text the same way.
  std::mt19937 rng(3);
  const std::vector<std::string> pool = {"a", " ", "\n", "\xC3\xA9", "\xE4\xB8\xAD",     "'",
                                         "s", "!", "\t", "\xCC\x81", "\xF0\x9F\x98\x80", "\r",
                                         "Z"};
  for (int iter = 0; iter < 300; ++iter) {
    std::string text;
    const int n = static_cast<int>(rng() % 20);
    for (int i = 0; i < n; ++i) text += pool[rng() % pool.size()];
    EXPECT_EQ(Qwen2(text), Pieces(SplitLlama3, text));
  }
}

// ---- Tekken -----------------------------------------------------------------------------------

TEST(TekkenPreTokenizer, WordsSplitWhereLowerTurnsUpper) {
  EXPECT_THAT(Tekken("eBay"), ElementsAre("e", "Bay"));
  EXPECT_THAT(Tekken("NaOH"), ElementsAre("Na", "OH"));
  EXPECT_THAT(Tekken("aBC"), ElementsAre("a", "BC"));
  // Upper case then lower case is one word, however many capitals come first.
  EXPECT_THAT(Tekken("HTTPServer"), ElementsAre("HTTPServer"));
  EXPECT_THAT(Tekken("ABc ABC"), ElementsAre("ABc", " ABC"));
  // Titlecase (Lt) counts as upper case, Lo (CJK) and Lm (modifier letters) as both.
  EXPECT_THAT(Tekken("a\xC7\x85"
                     "a"),
              ElementsAre("a",
                          "\xC7\x85"
                          "a"));  // a, ǅa
  EXPECT_THAT(Tekken("\xE6\x97\xA5\xE6\x9C\xAC"
                     "abc"),
              ElementsAre("\xE6\x97\xA5\xE6\x9C\xAC"
                          "abc"));  // 日本abc
  EXPECT_THAT(Tekken("a\xCA\xB0"
                     "B"),
              ElementsAre("a\xCA\xB0", "B"));  // aʰ, B
}

TEST(TekkenPreTokenizer, NoContractionsAndSingleDigits) {
  EXPECT_THAT(Tekken("McDonald's"), ElementsAre("Mc", "Donald", "'s"));
  EXPECT_THAT(Tekken("don't"), ElementsAre("don", "'t"));
  EXPECT_THAT(Tekken("iPhone 15 Pro"), ElementsAre("i", "Phone", " ", "1", "5", " Pro"));
}

TEST(TekkenPreTokenizer, MarksStayWithTheirLetters) {
  // "été" written with a combining acute (Mn counts in both letter sets).
  EXPECT_THAT(Tekken("e\xCC\x81t\xC3\xA9"), ElementsAre("e\xCC\x81t\xC3\xA9"));
  EXPECT_THAT(Tekken("\xE0\xA4\xA8\xE0\xA4\xAE\xE0\xA4\xB8\xE0\xA5\x8D\xE0\xA4\xA4\xE0\xA5\x87"),
              ElementsAre("\xE0\xA4\xA8\xE0\xA4\xAE\xE0\xA4\xB8\xE0\xA5\x8D\xE0\xA4\xA4\xE0\xA5"
                          "\x87"));  // नमस्ते in one piece (Llama-3 cuts it in three)
  // A mark is also [^\r\n\p{L}\p{N}]: it prefixes the word after it; after a space, the space
  // prefixes the mark, which is a word of its own when an upper-case letter follows.
  EXPECT_THAT(Tekken("\xCC\x81x"), ElementsAre("\xCC\x81x"));
  EXPECT_THAT(Tekken("  \xCC\x81X"), ElementsAre(" ", " \xCC\x81", "X"));
  EXPECT_THAT(Tekken("\xCC\x81 "), ElementsAre("\xCC\x81", " "));
}

TEST(TekkenPreTokenizer, SlashesAfterPunctuation) {
  EXPECT_THAT(Tekken("a/b"), ElementsAre("a", "/b"));
  EXPECT_THAT(Tekken("!\n/\n/x"), ElementsAre("!\n/\n/", "x"));
  EXPECT_THAT(Tekken("x\n/y"), ElementsAre("x", "\n", "/y"));
  EXPECT_THAT(Tekken("Hello, world!\n\n"), ElementsAre("Hello", ",", " world", "!\n\n"));
  EXPECT_THAT(Tekken(""), ElementsAre());
  EXPECT_THAT(Tekken("a\xFF"
                     "b"),
              ElementsAre("a",
                          "\xFF"
                          "b"));  // an invalid byte is punctuation, and prefixes a word
}

TEST(SplitPreTokenizers, PiecesCoverRandomInput) {
  std::mt19937 rng(17);
  for (SplitFunction split : {SplitQwen2, SplitTekken}) {
    for (int iter = 0; iter < 300; ++iter) {
      std::string text;
      const int n = static_cast<int>(rng() % 40);
      for (int i = 0; i < n; ++i) text.push_back(static_cast<char>(rng() % 256));
      std::string joined;
      for (std::string_view piece : split(text)) {
        ASSERT_FALSE(piece.empty());
        joined += piece;
      }
      EXPECT_EQ(joined, text);
    }
  }
}

// ---- NFC --------------------------------------------------------------------------------------

TEST(Nfc, ComposesReordersAndKeepsExclusions) {
  EXPECT_EQ(ToNfc("plain ASCII \xC3\xA9"), "plain ASCII \xC3\xA9");
  EXPECT_EQ(ToNfc("e\xCC\x81"), "\xC3\xA9");  // e + U+0301 -> é
  // a + U+0302 + U+0323: canonical order puts the dot below (220) first -> U+1EAD.
  EXPECT_EQ(ToNfc("a\xCC\x82\xCC\xA3"), "\xE1\xBA\xAD");
  EXPECT_EQ(ToNfc("a\xCC\xA3\xCC\x82"), "\xE1\xBA\xAD");
  // A second acute is blocked by the first (same class): it stays.
  EXPECT_EQ(ToNfc("a\xCC\x81\xCC\x81"), "\xC3\xA1\xCC\x81");
  // Singletons: ANGSTROM SIGN -> Å, OHM SIGN -> Ω.
  EXPECT_EQ(ToNfc("\xE2\x84\xAB\xE2\x84\xA6"), "\xC3\x85\xCE\xA9");
  // U+0958 is a composition exclusion: it decomposes and never comes back.
  EXPECT_EQ(ToNfc("\xE0\xA5\x98"), "\xE0\xA4\x95\xE0\xA4\xBC");
  EXPECT_EQ(ToNfc("\xE0\xA4\x95\xE0\xA4\xBC"), "\xE0\xA4\x95\xE0\xA4\xBC");
  // A leading combining mark has no starter to combine with.
  EXPECT_EQ(ToNfc("\xCC\x81"
                  "a"),
            "\xCC\x81"
            "a");
}

TEST(Nfc, HangulIsAlgorithmic) {
  // U+1100 U+1161 U+11A8 (jamo) -> U+AC01; U+AC00 + U+11A8 -> U+AC01; U+11A7 is no trailing jamo.
  EXPECT_EQ(ToNfc("\xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8"), "\xEA\xB0\x81");
  EXPECT_EQ(ToNfc("\xEA\xB0\x80\xE1\x86\xA8"), "\xEA\xB0\x81");
  EXPECT_EQ(ToNfc("\xEA\xB0\x80\xE1\x86\xA7"), "\xEA\xB0\x80\xE1\x86\xA7");
  EXPECT_EQ(ToNfc("\xED\x95\x9C\xEA\xB5\xAD\xEC\x96\xB4"), "\xED\x95\x9C\xEA\xB5\xAD\xEC\x96\xB4");
}

TEST(Nfc, InvalidBytesPassThroughAndBlock) {
  EXPECT_EQ(ToNfc("\xFF"), "\xFF");
  EXPECT_EQ(ToNfc("e\xFF\xCC\x81"), "e\xFF\xCC\x81");         // the byte sits between e and U+0301
  EXPECT_EQ(ToNfc("e\xCC\x81\xE4\xBD"), "\xC3\xA9\xE4\xBD");  // a truncated sequence after é
  std::mt19937 rng(5);
  for (int iter = 0; iter < 500; ++iter) {
    std::string text;
    const int n = static_cast<int>(rng() % 24);
    for (int i = 0; i < n; ++i) text.push_back(static_cast<char>(rng() % 256));
    const std::string once = ToNfc(text);
    EXPECT_EQ(ToNfc(once), once);  // idempotent, whatever the bytes
  }
}

// ---- goldens ----------------------------------------------------------------------------------

// SQUEEZE_GOLDEN_DIR overrides the location (to check freshly generated files before copying).
const fs::path kGoldenDir = std::getenv("SQUEEZE_GOLDEN_DIR") != nullptr
                                ? fs::path(std::getenv("SQUEEZE_GOLDEN_DIR"))
                                : fs::path(SQUEEZE_SOURCE_DIR) / "tests" / "data" / "golden";
const fs::path kTokenizerGoldens = kGoldenDir / "tokenizers";

// Parses a JSON file; null when it is missing or malformed (`why` says which).
json ReadJson(const fs::path& path, std::string* why = nullptr) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (why) *why = "missing " + path.string();
    return nullptr;
  }
  std::stringstream text;
  text << in.rdbuf();
  json j = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    if (why) *why = path.string() + " is not valid JSON";
    return nullptr;
  }
  return j;
}

std::vector<std::string> Corpus() {
  std::string why;
  const json corpus = ReadJson(kTokenizerGoldens / "corpus.json", &why);
  EXPECT_TRUE(corpus.is_object()) << why;
  if (!corpus.is_object()) return {};
  return corpus.at("strings").get<std::vector<std::string>>();
}

using ::squeeze::testing::Escape;

void CheckSplitGolden(const std::string& name, SplitFunction split) {
  const std::vector<std::string> corpus = Corpus();
  ASSERT_GE(corpus.size(), 2000u);
  std::string why;
  const json golden = ReadJson(kTokenizerGoldens / ("splits_" + name + ".json"), &why);
  ASSERT_TRUE(golden.is_object()) << why << "; regenerate with `/usr/bin/python3 "
                                  << "tools/make_goldens.py --out <dir> --only splits`";
  std::vector<std::string> texts = corpus;
  for (const json& s : golden.at("extra")) texts.push_back(s.get<std::string>());
  const json& lengths = golden.at("lengths");
  ASSERT_EQ(lengths.size(), texts.size());
  int mismatches = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const auto want = lengths[i].get<std::vector<size_t>>();
    std::vector<size_t> got;
    for (std::string_view piece : split(texts[i])) got.push_back(piece.size());
    if (got != want && ++mismatches <= 10) {
      std::string ours, library;
      for (std::string_view piece : split(texts[i])) ours += Escape(piece, 20) + " ";
      size_t at = 0;
      for (size_t len : want) {
        library += Escape(std::string_view(texts[i]).substr(at, len), 20) + " ";
        at += len;
      }
      ADD_FAILURE() << name << " text " << i << " " << Escape(texts[i]) << ":\n  ours    " << ours
                    << "\n  golden  " << library;
    }
  }
  EXPECT_EQ(mismatches, 0) << name << ": texts cut differently from the regex";
  std::printf("[splits] %-6s %zu texts cut as by the regex\n", name.c_str(),
              texts.size() - mismatches);
}

TEST(SplitPreTokenizers, Qwen2MatchesRegexOnCorpus) { CheckSplitGolden("qwen2", SplitQwen2); }
TEST(SplitPreTokenizers, TekkenMatchesRegexOnCorpus) { CheckSplitGolden("tekken", SplitTekken); }

TEST(Nfc, MatchesUnicodedata) {
  std::string why;
  const json golden = ReadJson(kTokenizerGoldens / "nfc_cases.json", &why);
  ASSERT_TRUE(golden.is_object()) << why << "; regenerate with `/usr/bin/python3 "
                                  << "tools/make_goldens.py --out <dir> --only nfc`";
  int mismatches = 0, changed = 0;
  for (const json& c : golden.at("cases")) {
    const std::string text = c[0].get<std::string>(), want = c[1].get<std::string>();
    const std::string got = ToNfc(text);
    changed += want != text;
    if (got != want && ++mismatches <= 10) {
      size_t at = 0;
      while (at < got.size() && at < want.size() && got[at] == want[at]) ++at;
      ADD_FAILURE() << "NFC of " << Escape(text, 60) << " differs from byte " << at << ": ours "
                    << Escape(got.substr(at), 24) << ", unicodedata "
                    << Escape(want.substr(at), 24);
    }
    EXPECT_EQ(ToNfc(want), want);  // NFC output is NFC
  }
  EXPECT_EQ(mismatches, 0);
  EXPECT_GT(changed, 100);  // the cases exercise composition, not just the copy
  // The corpus: the strings NFC changes, and the others unchanged.
  const std::vector<std::string> corpus = Corpus();
  std::vector<std::string> want = corpus;
  for (const json& c : golden.at("corpus_changed")) {
    want.at(c[0].get<size_t>()) = c[1].get<std::string>();
  }
  for (size_t i = 0; i < corpus.size(); ++i) {
    EXPECT_EQ(ToNfc(corpus[i]), want[i]) << "corpus string " << i << " " << Escape(corpus[i]);
  }
  std::printf("[nfc] %zu cases and %zu corpus strings as unicodedata %s\n",
              golden.at("cases").size() - mismatches, corpus.size(),
              golden.at("unicodedata").get<std::string>().c_str());
}

// The tokenizer.json files in the Qwen2 and Mistral-Nemo layouts, trained by `tokenizers`.
void CheckBpeFamily(const std::string& variant) {
  const fs::path path = kTokenizerGoldens / variant / "tokenizer.json";
  const fs::path cases_path = kTokenizerGoldens / (variant + "_cases.json");
  if (!fs::exists(path) || !fs::exists(cases_path)) {
    GTEST_SKIP() << "no " << path.string() << " / " << cases_path.filename().string()
                 << " yet: generate them on a machine with `tokenizers` with `python3 "
                    "tools/make_goldens.py --out tests/data/golden --only bpe_qwen2,bpe_tekken` "
                    "and commit them";
  }
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadBpeTokenizer(path.string());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  std::string why;
  const json cases = ReadJson(cases_path, &why);
  ASSERT_TRUE(cases.is_object()) << why;
  EXPECT_EQ((*tokenizer)->vocab_size(), cases.at("vocab_size").get<int>());
  const json& bos = cases.at("bos");
  if (bos.is_null()) {
    EXPECT_EQ((*tokenizer)->bos_id(), -1);  // Qwen: no BOS
  } else {
    int bos_id = -1;
    for (const auto& [content, id] : (*tokenizer)->SpecialTokens()) {
      if (content == bos.get<std::string>()) bos_id = id;
    }
    EXPECT_GE(bos_id, 0);
    EXPECT_EQ((*tokenizer)->bos_id(), bos_id);
  }
  EXPECT_GE((*tokenizer)->eos_id(), 0);

  std::vector<std::string> texts = Corpus();
  ASSERT_GE(texts.size(), 2000u);
  for (const json& s : cases.at("extra")) texts.push_back(s.get<std::string>());
  ASSERT_EQ(cases.at("ids").size(), texts.size());
  ASSERT_EQ(cases.at("decoded").size(), texts.size());
  int id_mismatches = 0, decode_mismatches = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const auto want = cases.at("ids")[i].get<std::vector<int32_t>>();
    const json& decoded = cases.at("decoded")[i];
    const std::string want_text = decoded.is_null() ? texts[i] : decoded.get<std::string>();
    absl::StatusOr<std::vector<int32_t>> ids = (*tokenizer)->Encode(texts[i]);
    ASSERT_TRUE(ids.ok()) << ids.status();
    if (*ids != want && ++id_mismatches <= 10) {
      std::string got_s, want_s;
      for (int32_t id : *ids) got_s += (got_s.empty() ? "" : ",") + std::to_string(id);
      for (int32_t id : want) want_s += (want_s.empty() ? "" : ",") + std::to_string(id);
      ADD_FAILURE() << variant << " text " << i << " " << Escape(texts[i]) << ": ids ["
                    << got_s.substr(0, 120) << "], library [" << want_s.substr(0, 120) << "]";
    }
    absl::StatusOr<std::string> text = (*tokenizer)->Decode(want);
    ASSERT_TRUE(text.ok()) << text.status();
    if (*text != want_text && ++decode_mismatches <= 10) {
      ADD_FAILURE() << variant << " text " << i << " decode: " << Escape(*text) << ", library "
                    << Escape(want_text);
    }
  }
  EXPECT_EQ(id_mismatches, 0) << variant << ": texts whose ids differ from the library's";
  EXPECT_EQ(decode_mismatches, 0) << variant << ": decodes that differ from the library's";
  std::printf("[conformance] %-10s %zu texts: ids identical for %zu\n", variant.c_str(),
              texts.size(), texts.size() - id_mismatches);
}

TEST(BpeFamilies, Qwen2LayoutMatchesTokenizers) { CheckBpeFamily("bpe_qwen2"); }
TEST(BpeFamilies, TekkenLayoutMatchesTokenizers) { CheckBpeFamily("bpe_tekken"); }

}  // namespace
}  // namespace squeeze
