// The Llama-3 pre-tokenization split and its Qwen2 variant, hand-coded (std::regex has no \p{L} /
// \p{N}); engine/tokenizer/split_matcher.h gives the matching semantics.
//
//   Llama-3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}
//            | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//   Qwen2:   the same with \p{N} instead of \p{N}{1,3}: digits split one at a time
//            (Qwen2, Qwen2.5 and Qwen3 tokenizer.json).
#pragma once

#include <string_view>
#include <vector>

namespace squeeze {

// The patterns as they appear in a tokenizer.json `Split` pre-tokenizer (JSON-unescaped).
extern const std::string_view kLlama3SplitPattern;
extern const std::string_view kQwen2SplitPattern;

// Split `text` into pieces (views into `text`) whose concatenation is `text`. Invalid UTF-8
// bytes count as single code points outside every class (like punctuation).
std::vector<std::string_view> SplitLlama3(std::string_view text);
std::vector<std::string_view> SplitQwen2(std::string_view text);

}  // namespace squeeze
