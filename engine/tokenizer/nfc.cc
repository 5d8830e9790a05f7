#include "engine/tokenizer/nfc.h"

#include <cstdint>
#include <vector>

#include "engine/tokenizer/unicode.h"

namespace squeeze {
namespace {

// Hangul syllables (Unicode 3.12): S = SBase + (L * VCount + V) * TCount + T.
constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr char32_t kLCount = 19, kVCount = 21, kTCount = 28;
constexpr char32_t kNCount = kVCount * kTCount, kSCount = kLCount * kNCount;

// An invalid UTF-8 byte b travels through the buffer as kOpaque | b: above every code point, a
// starter with no decomposition and no composition.
constexpr char32_t kOpaque = 0x80000000;

struct Unit {
  char32_t c;
  uint8_t ccc;  // canonical combining class
};

// Appends c to *out, then moves it left past the non-starters of a higher class (canonical
// ordering is a stable sort of each run of non-starters by class).
void AppendOrdered(char32_t c, std::vector<Unit>* out) {
  const uint8_t ccc = c >= kOpaque ? 0 : unicode::CanonicalCombiningClass(c);
  size_t i = out->size();
  out->push_back({c, ccc});
  if (ccc == 0) return;
  while (i > 0 && (*out)[i - 1].ccc > ccc) {
    (*out)[i] = (*out)[i - 1];
    --i;
  }
  (*out)[i] = {c, ccc};
}

// Appends the full canonical decomposition of c, in canonical order.
void AppendDecomposed(char32_t c, std::vector<Unit>* out) {
  if (c >= kSBase && c < kSBase + kSCount) {
    const char32_t s = c - kSBase;
    AppendOrdered(kLBase + s / kNCount, out);
    AppendOrdered(kVBase + (s % kNCount) / kTCount, out);
    if (s % kTCount != 0) AppendOrdered(kTBase + s % kTCount, out);
    return;
  }
  char32_t first, second;
  const int n = c >= kOpaque ? 0 : unicode::CanonicalDecomposition(c, &first, &second);
  if (n == 0) {
    AppendOrdered(c, out);
    return;
  }
  AppendDecomposed(first, out);  // mappings nest at most a few levels deep
  if (n == 2) AppendDecomposed(second, out);
}

// The primary composite of <a, b>, Hangul included, or 0.
char32_t Compose(char32_t a, char32_t b) {
  if (a >= kOpaque || b >= kOpaque) return 0;
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount) {
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;  // LV
  }
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount) {
    return a + (b - kTBase);  // LV + T
  }
  return unicode::PrimaryComposite(a, b);
}

// Canonical composition in place: each character combines with the last starter unless a
// character between them has class 0 or a class >= its own (it is "blocked").
void ComposeInPlace(std::vector<Unit>* units) {
  std::vector<Unit>& u = *units;
  size_t kept = 0;
  int starter = -1;  // index in u[0, kept) of the last starter, -1 before the first one
  for (size_t i = 0; i < u.size(); ++i) {
    const Unit cur = u[i];
    if (starter >= 0) {
      const bool adjacent = static_cast<size_t>(starter) + 1 == kept;
      const uint8_t last_ccc = u[kept - 1].ccc;
      if (adjacent || (last_ccc != 0 && last_ccc < cur.ccc)) {
        if (const char32_t composite = Compose(u[starter].c, cur.c); composite != 0) {
          u[starter].c = composite;  // a primary composite of a starter is a starter
          continue;
        }
      }
    }
    if (cur.ccc == 0) starter = static_cast<int>(kept);
    u[kept++] = cur;
  }
  u.resize(kept);
}

}  // namespace

std::string ToNfc(std::string_view text) {
  // Text without code points from U+0300 on is already NFC: nothing below U+0300 decomposes
  // without recomposing, and nothing below U+0300 is the second part of a composition. Lead bytes
  // from 0xCC on start U+0300 and above (or are invalid).
  bool simple = true;
  for (char ch : text) {
    if (static_cast<unsigned char>(ch) >= 0xCC) {
      simple = false;
      break;
    }
  }
  if (simple) return std::string(text);

  std::vector<Unit> units;
  units.reserve(text.size());
  for (size_t pos = 0; pos < text.size();) {
    size_t len;
    const char32_t c = unicode::DecodeUtf8(text, pos, &len);
    AppendDecomposed(c == unicode::kInvalid ? kOpaque | static_cast<unsigned char>(text[pos]) : c,
                     &units);
    pos += len;
  }
  ComposeInPlace(&units);
  std::string out;
  out.reserve(text.size());
  for (const Unit& u : units) {
    if (u.c >= kOpaque) {
      out.push_back(static_cast<char>(u.c & 0xFF));
    } else {
      unicode::AppendUtf8(u.c, &out);
    }
  }
  return out;
}

}  // namespace squeeze
