// libFuzzer target: tokenizer.model (SentencePiece ModelProto) loading with the engine's own
// wire-format reader; a model that loads also encodes and decodes a short text.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "engine/tokenizer/sentencepiece_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto tokenizer = squeeze::SentencePieceTokenizer::FromSerializedModel(
      std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
  if (!tokenizer.ok()) return 0;
  auto ids = (*tokenizer)->Encode("Hello wörld 123  \n\tdone");
  if (ids.ok()) (void)(*tokenizer)->Decode(*ids);
  for (int32_t id = 0; id < std::min((*tokenizer)->vocab_size(), 64); ++id) {
    (void)(*tokenizer)->TokenBytes(id);
  }
  return 0;
}
