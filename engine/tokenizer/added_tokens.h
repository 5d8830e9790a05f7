// Special and added tokens on top of a base tokenizer: the text of a rendered chat template
// names them by their strings ("<s>", "[INST]", "<|user|>"), and they must become their ids,
// as transformers' tokenizers do before running the model's own algorithm on the text between.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/tokenizer/tokenizer.h"

namespace squeeze {

struct SpecialToken {
  std::string content;
  int32_t id = -1;
  bool special = true;  // rendered as "" when decoding (skip_special_tokens), else as content
  bool lstrip = false;  // whitespace left of the token belongs to it
  bool rstrip = false;  // whitespace right of the token belongs to it
};

// Encodes `text`: at each position the longest token content that starts there becomes its id
// (with the whitespace its lstrip / rstrip take), the text between goes through `encode`. With a
// SentencePiece `encode` every piece of text gets the dummy-prefix space, as transformers'
// legacy Llama tokenizers do (legacy=false ones prepend it only at the start of the text).
absl::StatusOr<std::vector<int32_t>> EncodeAroundSpecialTokens(
    std::string_view text, std::span<const SpecialToken> tokens,
    const std::function<absl::StatusOr<std::vector<int32_t>>(std::string_view)>& encode);

// A tokenizer plus the tokens tokenizer_config.json's added_tokens_decoder lists (ids past the
// base vocabulary extend it, e.g. Phi-3's 32000..32063; ids inside it, e.g. Mistral's [INST]
// control pieces, keep their base bytes). Encode cuts them out of any text, as transformers
// does; BOS and EOS come from tokenizer_config.json's bos_token / eos_token when they name one.
class AddedTokensTokenizer final : public Tokenizer {
 public:
  // Parses the text of a tokenizer_config.json; `base` unchanged (returned as is) when it lists
  // no added tokens. Errors name `origin` and the field.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Wrap(std::unique_ptr<Tokenizer> base,
                                                         std::string_view tokenizer_config_json,
                                                         std::string_view origin);

  int vocab_size() const override { return vocab_size_; }
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const override;
  absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids) const override;
  std::string TokenBytes(int32_t id) const override;
  int bos_id() const override { return bos_id_; }
  int eos_id() const override { return eos_id_; }
  std::vector<std::pair<std::string, int32_t>> SpecialTokens() const override;
  absl::StatusOr<std::vector<int32_t>> EncodeWithSpecialTokens(
      std::string_view text) const override {
    return Encode(text);
  }

 private:
  AddedTokensTokenizer(std::unique_ptr<Tokenizer> base, std::vector<SpecialToken> tokens);
  const SpecialToken* Find(int32_t id) const;

  std::unique_ptr<Tokenizer> base_;
  std::vector<SpecialToken> tokens_;  // config tokens, then the base's specials not among them
  int vocab_size_ = 0;
  int bos_id_ = -1;
  int eos_id_ = -1;
};

}  // namespace squeeze
