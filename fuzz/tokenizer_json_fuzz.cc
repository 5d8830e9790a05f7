// libFuzzer target: tokenizer.json (byte-level BPE) loading; a tokenizer that loads also encodes
// and decodes a text, so the tables it built, its pre-tokenizer and its normalizer are
// exercised. Input: the JSON, then optionally a NUL byte and the text to encode (a default text
// when there is none).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "engine/tokenizer/bpe_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const size_t nul = input.find('\0');
  std::string_view text = "Hello wörld 123 <|eot|>  \n\tdone";
  if (nul != std::string_view::npos) text = input.substr(nul + 1);
  auto tokenizer = squeeze::BpeTokenizer::FromJson(input.substr(0, nul), "fuzz");
  if (!tokenizer.ok()) return 0;
  auto ids = (*tokenizer)->Encode(text);
  if (ids.ok()) (void)(*tokenizer)->Decode(*ids);
  for (int32_t id = 0; id < std::min((*tokenizer)->vocab_size(), 64); ++id) {
    (void)(*tokenizer)->TokenBytes(id);
  }
  return 0;
}
