// Text <-> token ids. One tokenizer per model directory; both the fixed context and the user
// input go through the same instance (Squeezed Attention needs one consistent split).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

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
};

// Loads the tokenizer of a Hugging Face model directory (`tokenizer.model`: SentencePiece).
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& model_dir);

}  // namespace squeeze
