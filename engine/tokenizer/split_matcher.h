// What the hand-written Split pre-tokenizers (llama3_pretokenizer, tekken_pretokenizer) share:
// the text decoded once into classified code points, the cutting loop, and the white-space
// alternatives every supported regex ends with.
//
// A matcher reproduces one regex with the semantics of Hugging Face `tokenizers` (Oniguruma,
// leftmost-first alternation with backtracking) and `Split(behavior="isolated")`: the text is cut
// into consecutive matches. In every supported regex each code point starts some alternative, so
// the pieces cover the input exactly.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "engine/tokenizer/unicode.h"

namespace squeeze::split {

// Class bits every matcher uses; bits from kFirstGrammarBit on are the grammar's own.
enum : uint8_t {
  kLetter = 1,  // \p{L}
  kNumber = 2,  // \p{N}
  kSpace = 4,   // \s
  kCrLf = 8,    // [\r\n]
  kFirstGrammarBit = 16,
};

struct CodePoint {
  char32_t c;      // unicode::kInvalid for a byte that is not valid UTF-8
  uint32_t begin;  // byte offset in the text
  uint8_t cls;     // class bits; 0 for invalid bytes (outside every class, like punctuation)
};

// The class bits every matcher uses (the grammar adds its own).
inline uint8_t BaseClasses(char32_t c) {
  uint8_t cls = 0;
  if (unicode::IsLetter(c)) cls |= kLetter;
  if (unicode::IsNumber(c)) cls |= kNumber;
  if (unicode::IsWhiteSpace(c)) cls |= kSpace;
  if (c == '\r' || c == '\n') cls |= kCrLf;
  return cls;
}

// [^\s\p{L}\p{N}]: punctuation, symbols, emoji, marks, controls, invalid bytes.
inline bool IsOther(const CodePoint& p) { return (p.cls & (kLetter | kNumber | kSpace)) == 0; }

// The alternatives `\s*[\r\n]+|\s+(?!\S)|\s+` at cps[i], which is white space: the length in
// code points of the match.
inline size_t MatchWhiteSpace(const std::vector<CodePoint>& cps, size_t i) {
  const size_t n = cps.size();
  size_t end = i;  // end of the white space run
  while (end < n && (cps[end].cls & kSpace)) ++end;
  if (end == i) return 1;  // not white space: unreachable in the supported grammars
  // \s*[\r\n]+ : backtracking from the greedy \s* finds the run's last CR/LF.
  for (size_t k = end; k > i; --k) {
    if (cps[k - 1].cls & kCrLf) return k - i;
  }
  // \s+(?!\S) : the whole run at the end of the text, else all but its last code point.
  if (end == n) return end - i;
  if (end - i >= 2) return end - i - 1;
  // \s+
  return end - i;
}

// Decodes `text` (classes from classify(c) for valid code points) and cuts it into consecutive
// pieces: match(cps, i) gives the length in code points (>= 1) of the piece starting at cps[i].
template <class Classify, class Match>
std::vector<std::string_view> SplitWith(std::string_view text, Classify classify, Match match) {
  std::vector<CodePoint> cps;
  cps.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    size_t len;
    const char32_t c = unicode::DecodeUtf8(text, pos, &len);
    cps.push_back(
        {c, static_cast<uint32_t>(pos), c == unicode::kInvalid ? uint8_t{0} : classify(c)});
    pos += len;
  }
  std::vector<std::string_view> pieces;
  for (size_t i = 0; i < cps.size();) {
    const size_t len = match(cps, i);
    const size_t begin = cps[i].begin;
    const size_t end = i + len < cps.size() ? cps[i + len].begin : text.size();
    pieces.push_back(text.substr(begin, end - begin));
    i += len;
  }
  return pieces;
}

}  // namespace squeeze::split
