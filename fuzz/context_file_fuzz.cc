// libFuzzer target: the persisted-context loader (engine/store/context_file.h). The parser runs
// on the bytes as they are (a fuzzer cannot forge the SHA-256 trailer, and the parser must be
// safe even for a file whose checksum matches); the checksum check runs on them too.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <sstream>
#include <string>

#include "engine/store/context_file.h"

namespace {

// The model fingerprint the input itself names (after the 8-byte magic and u32 version: u64
// length + bytes), so that inputs get past the fingerprint check into the rest of the parser.
std::string FingerprintOf(const std::string& bytes) {
  uint64_t n = 0;
  if (bytes.size() < 20) return "";
  std::memcpy(&n, bytes.data() + 12, sizeof(n));
  if (n > bytes.size() - 20) return "";
  return bytes.substr(20, n);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  {
    std::istringstream in(bytes);
    // Both host dtypes a server asks for (the file's K/V converted when it holds the other).
    const squeeze::DType want = size % 2 == 0 ? squeeze::DType::kF32 : squeeze::DType::kBF16;
    auto context = squeeze::ParseContextFile(in, size, FingerprintOf(bytes), want);
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
  }
  std::istringstream in(bytes);
  (void)squeeze::VerifyContextChecksum(in, size);
  return 0;
}
