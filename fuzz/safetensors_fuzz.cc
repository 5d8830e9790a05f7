// libFuzzer target: the safetensors header parser on arbitrary bytes (a model file is input the
// server trusts least after requests: it may come from anywhere).
#include <cstddef>
#include <cstdint>
#include <span>

#include "engine/model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto tensors = squeeze::ParseSafetensorsHeader(std::span<const uint8_t>(data, size));
  if (tensors.ok()) {
    // Every tensor the parser accepts lies inside the input: touch its first and last byte.
    volatile uint8_t sink = 0;
    for (const auto& t : *tensors) {
      if (t.nbytes == 0) continue;
      sink = sink ^ t.data[0] ^ t.data[t.nbytes - 1];
    }
  }
  return 0;
}
