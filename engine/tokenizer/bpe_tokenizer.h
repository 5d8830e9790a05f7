// Tokenizer over a Hugging Face `tokenizer.json` with byte-level BPE (Llama-3, Qwen2/2.5/3,
// Mistral-Nemo).
//
// Encoding follows `tokenizers` step by step, so ids match the library id for id:
//   1. added tokens are cut out first, leftmost-longest: those with normalized=false (special
//      tokens), then, in the normalized text between them, those with normalized=true;
//   2. the normalizer (none, or NFC: engine/tokenizer/nfc.h) applies to the text between the
//      special tokens;
//   3. the Split regex cuts the rest into pieces: Llama-3's or Qwen2's
//      (engine/tokenizer/llama3_pretokenizer.h) or Tekken's (tekken_pretokenizer.h);
//   4. each piece's bytes map to the GPT-2 byte-level alphabet; with `ignore_merges` a piece that
//      is itself in the vocabulary is one token, otherwise BPE merges adjacent symbols, lowest
//      merge rank first (leftmost on ties).
// Supported layout: normalizer null or NFC; pre_tokenizer Sequence[Split(one of those regexes,
// Isolated), ByteLevel(add_prefix_space=false, use_regex=false)]; model BPE (merges as "a b"
// strings or ["a", "b"] pairs, optional unk_token/fuse_unk/ignore_merges); decoder ByteLevel.
// Anything else is refused with an error naming the field.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "engine/tokenizer/tokenizer.h"

namespace squeeze {

class BpeTokenizer final : public Tokenizer {
 public:
  // Parses the text of a tokenizer.json; `origin` names it in errors. `tokenizer_config_json`
  // (the text of tokenizer_config.json, may be empty) supplies bos_token / eos_token; without it
  // BOS is the special token the post-processor prepends and EOS a well-known end token.
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> FromJson(
      std::string_view json_text, std::string_view origin,
      std::string_view tokenizer_config_json = {});

  int vocab_size() const override { return static_cast<int>(tokens_.size()); }
  // Never fails on any byte string; invalid UTF-8 bytes are encoded as raw bytes.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const override;
  // `tokenizers` decode with skip_special_tokens=true: special tokens render as "", added tokens
  // as their content, the byte-level pieces between them as UTF-8 with invalid sequences replaced
  // by U+FFFD. Ids outside [0, vocab_size) are an error.
  absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids) const override;
  // The raw bytes of a token (special tokens: ""; out of range: "").
  std::string TokenBytes(int32_t id) const override;
  int bos_id() const override { return bos_id_; }
  int eos_id() const override { return eos_id_; }
  // The added tokens (special or not), as Encode cuts them out of text.
  std::vector<std::pair<std::string, int32_t>> SpecialTokens() const override;
  // Encode already cuts out the added tokens (special ones included), as `tokenizers` does.
  absl::StatusOr<std::vector<int32_t>> EncodeWithSpecialTokens(
      std::string_view text) const override {
    return Encode(text);
  }

  // The id of a vocabulary token (byte-level form, e.g. "Ġthe") or added token; -1 if none.
  int32_t TokenToId(std::string_view token) const;

 private:
  struct TokenInfo {
    std::string bytes;  // TokenBytes: decoded bytes, or the added token's content
    enum Kind : uint8_t { kNone, kModel, kAdded, kSpecial } kind = kNone;
  };
  struct AddedToken {
    std::string content;  // as written in tokenizer.json
    std::string match;    // what Encode looks for: content, normalized when normalized=true
    int32_t id;
  };
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  // Added tokens of one extraction pass, indexed by first byte, longest first.
  struct AddedTokenSet {
    std::vector<AddedToken> tokens;
    std::array<std::vector<int>, 256> by_first_byte;
    void Index();
  };
  struct Segment {
    std::string_view text;
    int32_t id;  // >= 0: an added token; -1: text still to tokenize
  };

  BpeTokenizer() = default;
  absl::Status Parse(std::string_view json_text, std::string_view origin,
                     std::string_view tokenizer_config_json);
  static void SplitAddedTokens(const AddedTokenSet& set, std::vector<Segment>* segments);
  void EncodePiece(std::string_view bytes, std::vector<int32_t>* ids) const;

  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  absl::flat_hash_map<std::string, int32_t> vocab_;  // byte-level token -> id (model vocab)
  absl::flat_hash_map<uint64_t, Merge> merges_;      // (left id, right id) -> merge
  std::vector<TokenInfo> tokens_;                    // [vocab_size]
  std::array<int32_t, 256> byte_ids_{};              // id of each single-byte token, -1 if none
  AddedTokenSet raw_added_;                          // normalized = false (special tokens)
  AddedTokenSet normalized_added_;                   // normalized = true
  absl::flat_hash_map<std::string, int32_t> added_by_content_;
  // Splits text into pre-tokens (the Split regex of the file).
  std::vector<std::string_view> (*split_)(std::string_view text) = nullptr;
  bool nfc_ = false;  // normalizer NFC
  bool ignore_merges_ = false;
  int32_t unk_id_ = -1;
  bool fuse_unk_ = false;
  int bos_id_ = -1;
  int eos_id_ = -1;
};

// Loads `tokenizer_json_path` (and tokenizer_config.json beside it, when present).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadBpeTokenizer(const std::string& tokenizer_json_path);

// The GPT-2 byte-level alphabet: byte b is written as code point ByteToUnicode()[b] in tokens.
const std::array<char32_t, 256>& ByteToUnicode();

}  // namespace squeeze
