#include "engine/tokenizer/llama3_pretokenizer.h"

#include "engine/tokenizer/split_matcher.h"

namespace squeeze {

const std::string_view kLlama3SplitPattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const std::string_view kQwen2SplitPattern =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

namespace {

using split::CodePoint;
using split::kCrLf;
using split::kLetter;
using split::kNumber;

// Case-insensitive match of one contraction letter, as Oniguruma's (?i) does it: ASCII case plus
// the one non-ASCII code point whose simple case folding lands on one of "stremvld": U+017F (long
// s) folds to 's'.
bool FoldEquals(char32_t c, char lower) {
  if (c < 0x80) return static_cast<char>(c | 0x20) == lower;
  return lower == 's' && c == 0x017F;
}

// Length in code points of the match starting at cps[i], trying the alternatives in order;
// `max_digits` is 3 for Llama-3's \p{N}{1,3}, 1 for Qwen2's \p{N}.
size_t MatchAt(const std::vector<CodePoint>& cps, size_t i, size_t max_digits) {
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

  // 3. \p{N}{1,3} (Llama-3) or \p{N} (Qwen2)
  if (p.cls & kNumber) {
    size_t j = i;
    while (j < n && j - i < max_digits && (cps[j].cls & kNumber)) ++j;
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
  return split::MatchWhiteSpace(cps, i);
}

}  // namespace

std::vector<std::string_view> SplitLlama3(std::string_view text) {
  return split::SplitWith(
      text, split::BaseClasses,
      [](const std::vector<CodePoint>& cps, size_t i) { return MatchAt(cps, i, 3); });
}

std::vector<std::string_view> SplitQwen2(std::string_view text) {
  return split::SplitWith(
      text, split::BaseClasses,
      [](const std::vector<CodePoint>& cps, size_t i) { return MatchAt(cps, i, 1); });
}

}  // namespace squeeze
