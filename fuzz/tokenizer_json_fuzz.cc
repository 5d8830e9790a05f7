// libFuzzer target: tokenizer.json (byte-level BPE) loading; a tokenizer that loads also encodes
// and decodes a short text, so the tables it built are exercised.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "engine/tokenizer/bpe_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto tokenizer = squeeze::BpeTokenizer::FromJson(
      std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
  if (!tokenizer.ok()) return 0;
  auto ids = (*tokenizer)->Encode("Hello wörld 123 <|eot|>  \n\tdone");
  if (ids.ok()) (void)(*tokenizer)->Decode(*ids);
  for (int32_t id = 0; id < std::min((*tokenizer)->vocab_size(), 64); ++id) {
    (void)(*tokenizer)->TokenBytes(id);
  }
  return 0;
}
