#include "engine/tokenizer/llama3_pretokenizer.h"

#include <cstdint>

#include "engine/tokenizer/unicode.h"

namespace squeeze {

const std::string_view kLlama3SplitPattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

namespace {

enum : uint8_t {
  kLetter = 1,
  kNumber = 2,
  kSpace = 4,  // \s
  kCrLf = 8,   // [\r\n]
};

struct CodePoint {
  char32_t c;
  uint32_t begin;  // byte offset in the text
  uint8_t cls;     // kLetter | kNumber | kSpace | kCrLf
};

// "Other": [^\s\p{L}\p{N}] (punctuation, symbols, emoji, marks, controls, invalid bytes).
bool IsOther(const CodePoint& p) { return (p.cls & (kLetter | kNumber | kSpace)) == 0; }

// Case-insensitive match of one contraction letter, as Oniguruma's (?i) does it: ASCII case plus
// the one non-ASCII code point whose simple case folding lands on one of "stremvld": U+017F (long
// s) folds to 's'.
bool FoldEquals(char32_t c, char lower) {
  if (c < 0x80) return static_cast<char>(c | 0x20) == lower;
  return lower == 's' && c == 0x017F;
}

// Length in code points of the match starting at cps[i], trying the alternatives in order.
size_t MatchAt(const std::vector<CodePoint>& cps, size_t i) {
  const size_t n = cps.size();
  const CodePoint& p = cps[i];

  // 1. (?i:'s|'t|'re|'ve|'m|'ll|'d)
  if (p.c == '\'' && i + 1 < n) {
    const char32_t a = cps[i + 1].c;
    if (FoldEquals(a, 's') || FoldEquals(a, 't') || FoldEquals(a, 'm') || FoldEquals(a, 'd')) {
      return 2;
    }
    if (i + 2 < n) {
      const char32_t b = cps[i + 2].c;
      if ((FoldEquals(a, 'r') && FoldEquals(b, 'e')) ||
          (FoldEquals(a, 'v') && FoldEquals(b, 'e')) ||
          (FoldEquals(a, 'l') && FoldEquals(b, 'l'))) {
        return 3;
      }
    }
  }

  // 2. [^\r\n\p{L}\p{N}]?\p{L}+
  {
    size_t j = i;
    if ((p.cls & (kCrLf | kLetter | kNumber)) == 0 && i + 1 < n && (cps[i + 1].cls & kLetter)) {
      j = i + 1;  // the optional prefix, only kept when letters follow
    }
    if (cps[j].cls & kLetter) {
      while (j < n && (cps[j].cls & kLetter)) ++j;
      return j - i;
    }
  }

  // 3. \p{N}{1,3}
  if (p.cls & kNumber) {
    size_t j = i;
    while (j < n && j - i < 3 && (cps[j].cls & kNumber)) ++j;
    return j - i;
  }

  // 4. ` ?[^\s\p{L}\p{N}]+[\r\n]*`
  {
    size_t j = i;
    if (p.c == ' ' && i + 1 < n && IsOther(cps[i + 1])) j = i + 1;
    if (IsOther(cps[j])) {
      while (j < n && IsOther(cps[j])) ++j;
      while (j < n && (cps[j].cls & kCrLf)) ++j;
      return j - i;
    }
  }

  // 5-7 start with white space; what is left here always is white space.
  size_t end = i;  // end of the white space run
  while (end < n && (cps[end].cls & kSpace)) ++end;
  if (end == i) return 1;  // unreachable: every code point is L, N, \s or other

  // 5. \s*[\r\n]+ : backtracking from the greedy \s* finds the run's last CR/LF.
  for (size_t k = end; k > i; --k) {
    if (cps[k - 1].cls & kCrLf) return k - i;
  }
  // 6. \s+(?!\S) : the whole run at the end of the text, else all but its last code point.
  if (end == n) return end - i;
  if (end - i >= 2) return end - i - 1;
  // 7. \s+
  return end - i;
}

}  // namespace

std::vector<std::string_view> SplitLlama3(std::string_view text) {
  std::vector<CodePoint> cps;
  cps.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    size_t len;
    const char32_t c = unicode::DecodeUtf8(text, pos, &len);
    uint8_t cls = 0;
    if (c != unicode::kInvalid) {
      if (unicode::IsLetter(c)) cls |= kLetter;
      if (unicode::IsNumber(c)) cls |= kNumber;
      if (unicode::IsWhiteSpace(c)) cls |= kSpace;
      if (c == '\r' || c == '\n') cls |= kCrLf;
    }
    cps.push_back({c, static_cast<uint32_t>(pos), cls});
    pos += len;
  }

  std::vector<std::string_view> pieces;
  for (size_t i = 0; i < cps.size();) {
    const size_t len = MatchAt(cps, i);
    const size_t begin = cps[i].begin;
    const size_t end = i + len < cps.size() ? cps[i + len].begin : text.size();
    pieces.push_back(text.substr(begin, end - begin));
    i += len;
  }
  return pieces;
}

}  // namespace squeeze
