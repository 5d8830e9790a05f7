// Text <-> token ids. One tokenizer per model directory; both the fixed context and the user
// input go through the same instance (Squeezed Attention needs one consistent split).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace squeeze {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  virtual int vocab_size() const = 0;
  // Encodes text without adding BOS/EOS.
  virtual absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text) const = 0;
  // Decodes ids to text (special tokens such as BOS/EOS render as empty).
  virtual absl::StatusOr<std::string> Decode(const std::vector<int32_t>& ids) const = 0;
  // The raw bytes of one token as it appears inside a decoded stream, used by streaming
  // detokenisation. For SentencePiece, the leading-space marker becomes ' ' and byte-fallback
  // pieces <0xNN> become the single byte NN.
  virtual std::string TokenBytes(int32_t id) const = 0;
  virtual int bos_id() const = 0;  // -1 when none
  virtual int eos_id() const = 0;  // -1 when none

  // The special tokens as they are written in text (a rendered chat template): "<s>",
  // "<|im_start|>", "[INST]", ... with their ids. Default: none.
  virtual std::vector<std::pair<std::string, int32_t>> SpecialTokens() const { return {}; }
  // Encodes text in which special tokens appear as their strings (a rendered chat template), as
  // transformers does: every occurrence of a SpecialTokens() string (longest first) becomes its
  // id and the text between is encoded by Encode. Tokenizers that already cut out their added
  // tokens in Encode (tokenizer.json) override it with Encode.
  virtual absl::StatusOr<std::vector<int32_t>> EncodeWithSpecialTokens(std::string_view text) const;
};

// Refuses a tokenizer that does not fit a model of `model_vocab_size` tokens (more tokens than
// the model's embedding has, or BOS / EOS outside it), naming `tokenizer_dir` and the
// --tokenizer flag, so that a tokenizer of another model is never used silently.
absl::Status CheckTokenizerFitsModel(const Tokenizer& tokenizer, int model_vocab_size,
                                     const std::string& tokenizer_dir);

// Loads the tokenizer of a Hugging Face model directory: `tokenizer.model` (SentencePiece, with
// the added tokens of tokenizer_config.json's added_tokens_decoder when it lists any, e.g.
// Phi-3's <|user|>) or `tokenizer.json` (byte-level BPE).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& model_dir);

}  // namespace squeeze
