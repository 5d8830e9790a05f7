// Storage element types of weights and KV in backend and host memory.
#pragma once

#include <cstddef>
#include <cstdint>

namespace squeeze {

// The values are persisted (context files record the KV dtype): never renumber.
enum class DType : uint8_t { kF32 = 0, kBF16 = 1 };
inline size_t DTypeBytes(DType t) { return t == DType::kF32 ? 4 : 2; }
inline const char* DTypeName(DType t) { return t == DType::kF32 ? "f32" : "bf16"; }

}  // namespace squeeze
