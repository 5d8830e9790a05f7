// The Tekken pre-tokenization split of Mistral-Nemo's tokenizer.json, hand-coded
// (engine/tokenizer/split_matcher.h gives the matching semantics):
//
//   [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|
//   [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|
//   \p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
//
// o200k's grammar without its contraction suffixes and with single digits. A word is an optional
// prefix, upper-case letters, then lower-case ones, so a lower-to-upper change starts a new word
// ("eBay" -> "e", "Bay"; "HTTPServer" stays whole); Lm, Lo and combining marks count as both, so
// marks stay with their letters. The pattern is the one llama.cpp quotes as the "original regex
// from tokenizer.json" of Mistral-Nemo-Base-2407 (src/llama-vocab.cpp, TEKKEN), and the one
// transformers' fix_mistral_regex writes into Mistral tokenizers.
#pragma once

#include <string_view>
#include <vector>

namespace squeeze {

// The pattern as it appears in a tokenizer.json `Split` pre-tokenizer (JSON-unescaped).
extern const std::string_view kTekkenSplitPattern;

// Splits `text` into pieces (views into `text`) whose concatenation is `text`. Invalid UTF-8
// bytes count as single code points outside every class (like punctuation).
std::vector<std::string_view> SplitTekken(std::string_view text);

}  // namespace squeeze
