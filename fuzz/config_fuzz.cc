// libFuzzer target: config.json parsing (nlohmann::json underneath, then our field checks).
#include <cstddef>
#include <cstdint>
#include <string>

#include "engine/model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  (void)squeeze::ParseModelConfig(std::string(reinterpret_cast<const char*>(data), size));
  return 0;
}
