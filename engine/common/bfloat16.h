// bf16 <-> fp32 on the host, bit for bit as the GPU converts (__float2bfloat16_rn rounds to
// nearest even; widening is exact). bf16 values are held as their uint16_t bit patterns.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

namespace squeeze {

// fp32 -> bf16 bit pattern, round to nearest even (NaN stays a quiet NaN, overflow -> inf).
inline uint16_t Float32ToBFloat16(float value) {
  const uint32_t u = std::bit_cast<uint32_t>(value);
  if (std::isnan(value)) return static_cast<uint16_t>((u >> 16) | 0x0040);  // keep it quiet NaN
  const uint32_t rounding_bias = 0x7FFF + ((u >> 16) & 1);                  // ties to even
  return static_cast<uint16_t>((u + rounding_bias) >> 16);
}

// bf16 bit pattern -> fp32 (exact).
inline float BFloat16ToFloat32(uint16_t bits) { return std::bit_cast<float>(uint32_t{bits} << 16); }

}  // namespace squeeze
