#include "engine/tokenizer/tekken_pretokenizer.h"

#include "engine/tokenizer/split_matcher.h"

namespace squeeze {

const std::string_view kTekkenSplitPattern =
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|"
    "[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|"
    "\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

namespace {

using split::CodePoint;
using split::kCrLf;
using split::kLetter;
using split::kNumber;

enum : uint8_t {
  kUpperSet = split::kFirstGrammarBit,       // [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]
  kLowerSet = split::kFirstGrammarBit << 1,  // [\p{Ll}\p{Lm}\p{Lo}\p{M}]
};

uint8_t Classes(char32_t c) {
  uint8_t cls = split::BaseClasses(c);
  if (cls & kLetter) {
    if (unicode::IsUpperOrTitlecase(c)) {
      cls |= kUpperSet;
    } else if (unicode::IsLowercase(c)) {
      cls |= kLowerSet;
    } else {
      cls |= kUpperSet | kLowerSet;  // Lm, Lo
    }
  } else if (unicode::IsMark(c)) {
    cls |= kUpperSet | kLowerSet;
  }
  return cls;
}

constexpr size_t kNoMatch = ~size_t{0};

bool Has(const std::vector<CodePoint>& cps, size_t i, uint8_t bits) {
  return i < cps.size() && (cps[i].cls & bits) != 0;
}

// [Upper]*[Lower]+ from cps[s]: the end of the match, or kNoMatch. Backtracking order: the
// greedy upper run gives back one code point at a time until a lower-set one follows, which the
// greedy lower run then extends.
size_t UpperStarLowerPlus(const std::vector<CodePoint>& cps, size_t s) {
  size_t k = s;
  while (Has(cps, k, kUpperSet)) ++k;
  for (size_t j = k;; --j) {
    if (Has(cps, j, kLowerSet)) {
      while (Has(cps, j, kLowerSet)) ++j;
      return j;
    }
    if (j == s) return kNoMatch;
  }
}

// [Upper]+[Lower]* from cps[s]: the end of the match, or kNoMatch.
size_t UpperPlusLowerStar(const std::vector<CodePoint>& cps, size_t s) {
  size_t j = s;
  while (Has(cps, j, kUpperSet)) ++j;
  if (j == s) return kNoMatch;
  while (Has(cps, j, kLowerSet)) ++j;
  return j;
}

// Length in code points of the match starting at cps[i], trying the alternatives in order.
size_t MatchAt(const std::vector<CodePoint>& cps, size_t i) {
  const size_t n = cps.size();
  const CodePoint& p = cps[i];
  // [^\r\n\p{L}\p{N}]: marks, white space other than CR/LF, punctuation... may prefix a word.
  const bool prefix = (p.cls & (kCrLf | kLetter | kNumber)) == 0;

  // 1, 2. The optional prefix is tried with, then without, before the next alternative.
  for (size_t (*word)(const std::vector<CodePoint>&, size_t) :
       {UpperStarLowerPlus, UpperPlusLowerStar}) {
    if (prefix) {
      if (const size_t end = word(cps, i + 1); end != kNoMatch) return end - i;
    }
    if (const size_t end = word(cps, i); end != kNoMatch) return end - i;
  }

  // 3. \p{N}
  if (p.cls & kNumber) return 1;

  // 4. ` ?[^\s\p{L}\p{N}]+[\r\n/]*`
  {
    size_t j = i;
    if (p.c == ' ' && i + 1 < n && IsOther(cps[i + 1])) j = i + 1;
    if (IsOther(cps[j])) {
      while (j < n && IsOther(cps[j])) ++j;
      while (j < n && ((cps[j].cls & kCrLf) || cps[j].c == '/')) ++j;
      return j - i;
    }
  }

  // 5-7 start with white space; what is left here always is white space.
  return split::MatchWhiteSpace(cps, i);
}

}  // namespace

std::vector<std::string_view> SplitTekken(std::string_view text) {
  return split::SplitWith(text, Classes, MatchAt);
}

}  // namespace squeeze
