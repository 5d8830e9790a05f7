#include "engine/tokenizer/unicode.h"

namespace squeeze::unicode {

void AppendUtf8Lossy(std::string_view bytes, std::string* out) {
  constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD
  size_t i = 0;
  while (i < bytes.size()) {
    const unsigned char b0 = static_cast<unsigned char>(bytes[i]);
    if (b0 < 0x80) {
      out->push_back(static_cast<char>(b0));
      ++i;
      continue;
    }
    // Length and the allowed range of the second byte (Unicode Table 3-7); later bytes are
    // always 80..BF.
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      need = 2;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      need = 3;
      if (b0 == 0xE0) lo = 0xA0;  // no overlongs
      if (b0 == 0xED) hi = 0x9F;  // no surrogates
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      need = 4;
      if (b0 == 0xF0) lo = 0x90;  // no overlongs
      if (b0 == 0xF4) hi = 0x8F;  // <= U+10FFFF
    } else {
      out->append(kReplacement);  // a continuation byte or C0, C1, F5..FF
      ++i;
      continue;
    }
    size_t got = 1;  // bytes of the sequence that are valid so far
    while (got < need && i + got < bytes.size()) {
      const unsigned char b = static_cast<unsigned char>(bytes[i + got]);
      const bool ok = got == 1 ? (b >= lo && b <= hi) : (b >= 0x80 && b <= 0xBF);
      if (!ok) break;
      ++got;
    }
    if (got == need) {
      out->append(bytes.substr(i, need));
    } else {
      out->append(kReplacement);  // one U+FFFD for the maximal invalid prefix
    }
    i += got;
  }
}

}  // namespace squeeze::unicode
