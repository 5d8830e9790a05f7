// Unicode Normalization Form C (UAX #15), the `tokenizers` "NFC" normalizer of Qwen2's
// tokenizer.json: canonical decomposition, canonical ordering by combining class, canonical
// composition (composition exclusions never come out; Hangul syllables decomposed and composed
// algorithmically). The data is generated from Python's unicodedata (normalization_tables.cc).
#pragma once

#include <string>
#include <string_view>

namespace squeeze {

// The NFC form of `text`. Bytes that are not valid UTF-8 are copied unchanged and act as starters
// that compose with nothing, so every input has an output and valid UTF-8 stays valid.
std::string ToNfc(std::string_view text);

}  // namespace squeeze
