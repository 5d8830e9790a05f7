#include "engine/tokenizer/streaming_detokenizer.h"

#include <string_view>

namespace squeeze {
namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Classifies the UTF-8 character starting at s[0] (s non-empty), strict RFC 3629 rules (no
// overlongs, no surrogates, nothing above U+10FFFF) which are also SentencePiece's:
//   > 0: length of a complete valid character;
//     0: s is a proper prefix of some valid character (wait for more bytes);
//    -1: s[0] cannot start a valid character given the bytes present.
int ClassifyUtf8(std::string_view s) {
  const auto b0 = static_cast<unsigned char>(s[0]);
  if (b0 < 0x80) return 1;
  int len;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3;
    if (b0 == 0xE0) lo = 0xA0;  // overlong
    if (b0 == 0xED) hi = 0x9F;  // UTF-16 surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4;
    if (b0 == 0xF0) lo = 0x90;  // overlong
    if (b0 == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return -1;
  }
  const int present = static_cast<int>(s.size()) < len ? static_cast<int>(s.size()) : len;
  for (int i = 1; i < present; ++i) {
    const auto b = static_cast<unsigned char>(s[i]);
    const unsigned char min = i == 1 ? lo : 0x80;
    const unsigned char max = i == 1 ? hi : 0xBF;
    if (b < min || b > max) return -1;
  }
  return present == len ? len : 0;
}

}  // namespace

StreamingDetokenizer::StreamingDetokenizer(const Tokenizer& tokenizer, bool strip_leading_space)
    : tokenizer_(tokenizer), leading_(strip_leading_space) {}

std::string StreamingDetokenizer::Push(int32_t id) {
  std::string bytes = tokenizer_.TokenBytes(id);
  if (bytes.empty()) return "";  // control tokens and unknown ids render as nothing
  if (leading_) {
    if (bytes.front() == ' ') {
      // Let the tokenizer decide whether this space is the dummy prefix. leading_ids_ decode to
      // "" by construction, so the full decode is exactly this token's contribution.
      leading_ids_.push_back(id);
      auto decoded = tokenizer_.Decode(leading_ids_);
      bytes = decoded.ok() ? *std::move(decoded) : std::string();
      if (bytes.empty()) return "";  // a stripped lone '▁': still at the start of the text
    }
    leading_ = false;
    leading_ids_.clear();
  }
  pending_ += bytes;
  return Drain(/*final=*/false);
}

std::string StreamingDetokenizer::Flush() { return Drain(/*final=*/true); }

std::string StreamingDetokenizer::Drain(bool final) {
  std::string out;
  size_t pos = 0;
  while (pos < pending_.size()) {
    const int n = ClassifyUtf8(std::string_view(pending_).substr(pos));
    if (n > 0) {
      out.append(pending_, pos, n);
      pos += n;
    } else if (n < 0 || final) {
      // One U+FFFD per byte, then resynchronise on the next byte (SentencePiece does the same).
      out += kReplacement;
      pos += 1;
    } else {
      break;  // incomplete character: hold it back
    }
  }
  pending_.erase(0, pos);
  return out;
}

}  // namespace squeeze
