// The few Unicode facts the byte-level BPE tokenizers need: UTF-8 decoding and encoding, the
// classes the Split pre-tokenizer regexes test (\p{L}, \p{N}, \s; Tekken's Lu/Lt, Ll and \p{M}),
// and the canonical normalization data of NFC. The tables live in the generated
// unicode_tables.cc and normalization_tables.cc (tools/gen_unicode_tables.py).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace squeeze::unicode {

extern const char* const kUnicodeVersion;  // of the tables, e.g. "14.0.0"

bool IsLetter(char32_t c);            // general category L* (Lu, Ll, Lt, Lm, Lo)
bool IsNumber(char32_t c);            // general category N* (Nd, Nl, No)
bool IsWhiteSpace(char32_t c);        // White_Space: Zs, Zl, Zp, U+0009..U+000D, U+0085
bool IsUpperOrTitlecase(char32_t c);  // general category Lu or Lt
bool IsLowercase(char32_t c);         // general category Ll
bool IsMark(char32_t c);              // general category M* (Mn, Mc, Me)

// Canonical normalization data (engine/tokenizer/nfc.h uses it). Hangul syllables, which
// decompose and compose algorithmically, are in neither mapping.
uint8_t CanonicalCombiningClass(char32_t c);  // 0 for starters and unassigned code points
// One level of c's canonical decomposition mapping: returns 0 (none), 1 (*first) or 2 (*first,
// *second); the parts may decompose further.
int CanonicalDecomposition(char32_t c, char32_t* first, char32_t* second);
// The primary composite canonically equivalent to <first, second>, or 0 when there is none
// (composition exclusions never come out).
char32_t PrimaryComposite(char32_t first, char32_t second);

// Returned for a byte that does not start a valid UTF-8 sequence; it is in none of the classes.
inline constexpr char32_t kInvalid = 0xFFFFFFFF;

// Decodes the code point starting at s[pos] (pos < s.size()) and stores its byte length in *len.
// Invalid, overlong, surrogate or truncated sequences yield kInvalid with *len = 1, so every byte
// of any input is consumed exactly once.
inline char32_t DecodeUtf8(std::string_view s, size_t pos, size_t* len) {
  const unsigned char b0 = static_cast<unsigned char>(s[pos]);
  *len = 1;
  if (b0 < 0x80) return b0;
  size_t extra;
  char32_t c, min;
  if ((b0 & 0xE0) == 0xC0) {
    extra = 1, c = b0 & 0x1F, min = 0x80;
  } else if ((b0 & 0xF0) == 0xE0) {
    extra = 2, c = b0 & 0x0F, min = 0x800;
  } else if ((b0 & 0xF8) == 0xF0) {
    extra = 3, c = b0 & 0x07, min = 0x10000;
  } else {
    return kInvalid;
  }
  if (s.size() - pos <= extra) return kInvalid;  // truncated
  for (size_t i = 1; i <= extra; ++i) {
    const unsigned char b = static_cast<unsigned char>(s[pos + i]);
    if ((b & 0xC0) != 0x80) return kInvalid;
    c = (c << 6) | (b & 0x3F);
  }
  if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return kInvalid;
  *len = extra + 1;
  return c;
}

// Appends the UTF-8 encoding of c (a Unicode scalar value) to *out.
inline void AppendUtf8(char32_t c, std::string* out) {
  if (c < 0x80) {
    out->push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (c >> 6)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (c >> 12)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (c >> 18)));
    out->push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

// Appends `bytes` to *out as valid UTF-8, replacing every maximal invalid subsequence with U+FFFD
// (the "substitution of maximal subparts" practice, which Rust's String::from_utf8_lossy and
// Python's bytes.decode(errors="replace") follow).
void AppendUtf8Lossy(std::string_view bytes, std::string* out);

}  // namespace squeeze::unicode
