// The Llama-3 pre-tokenization split, hand-coded (std::regex has no \p{L} / \p{N}):
//
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
//   \s*[\r\n]+|\s+(?!\S)|\s+
//
// with the semantics of Hugging Face `tokenizers` (Oniguruma, leftmost-first alternation with
// backtracking) and `Split(behavior="isolated")`: the text is cut into consecutive matches. Every
// code point starts some alternative, so the pieces cover the input exactly.
#pragma once

#include <string_view>
#include <vector>

namespace squeeze {

// The pattern as it appears in a tokenizer.json `Split` pre-tokenizer (JSON-unescaped).
extern const std::string_view kLlama3SplitPattern;

// Splits `text` into pieces (views into `text`) whose concatenation is `text`. Invalid UTF-8
// bytes count as single code points outside every class (like punctuation).
std::vector<std::string_view> SplitLlama3(std::string_view text);

}  // namespace squeeze
