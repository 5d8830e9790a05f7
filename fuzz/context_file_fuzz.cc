// libFuzzer target: the persisted-context loader (engine/store/context_file.h), on the input as
// ReadContextFile reads a file: the SHA-256 trailer checked over the whole input, the bytes
// before the trailer parsed. The parser runs whatever the checksum says (a fuzzer cannot forge
// the trailer, and the parser must be safe even for a file whose checksum matches).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <istream>
#include <streambuf>
#include <string>

#include "engine/store/context_file.h"

namespace {

constexpr size_t kDigestBytes = 32;  // the SHA-256 trailer

// An istream over the fuzzer's buffer, without copying it.
class SpanBuf : public std::streambuf {
 public:
  SpanBuf(const uint8_t* data, size_t size) {
    char* p = const_cast<char*>(reinterpret_cast<const char*>(data));
    setg(p, p, p + size);
  }

 protected:
  pos_type seekoff(off_type off, std::ios_base::seekdir dir, std::ios_base::openmode) override {
    char* base = dir == std::ios_base::beg ? eback() : dir == std::ios_base::cur ? gptr() : egptr();
    if (off < eback() - base || off > egptr() - base) return pos_type(off_type(-1));
    setg(eback(), base + off, egptr());
    return pos_type(gptr() - eback());
  }
  pos_type seekpos(pos_type pos, std::ios_base::openmode which) override {
    return seekoff(off_type(pos), std::ios_base::beg, which);
  }
};

// The model fingerprint the input itself names (after the 8-byte magic and u32 version: u64
// length + bytes), so that inputs get past the fingerprint check into the rest of the parser.
std::string FingerprintOf(const uint8_t* data, size_t size) {
  uint64_t n = 0;
  if (size < 20) return "";
  std::memcpy(&n, data + 12, sizeof(n));
  if (n > size - 20) return "";
  return std::string(reinterpret_cast<const char*>(data) + 20, n);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  {
    SpanBuf buf(data, size);
    std::istream in(&buf);
    (void)squeeze::VerifyContextChecksum(in, size);
  }
  const size_t body = size >= kDigestBytes ? size - kDigestBytes : size;
  SpanBuf buf(data, body);
  std::istream in(&buf);
  // Both host dtypes a server asks for (the file's K/V converted when it holds the other).
  const squeeze::DType want = size % 2 == 0 ? squeeze::DType::kF32 : squeeze::DType::kBF16;
  auto context = squeeze::ParseContextFile(in, body, FingerprintOf(data, body), want);
  if (context.ok()) {
    // A context that loads is consistent: every KV row and token is addressable.
    const auto& c = **context;
    volatile float sink = 0;
    if (!c.kv.k.empty()) {
      float last[2];
      c.kv.k.ReadFloats(c.kv.k.size() - 1, 1, &last[0]);
      c.kv.v.ReadFloats(c.kv.v.size() - 1, 1, &last[1]);
      sink = sink + last[0] + last[1];
    }
    volatile int32_t t = c.tokens.back();
    (void)t;
  }
  return 0;
}
