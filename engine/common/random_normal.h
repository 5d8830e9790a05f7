// Deterministic normal samples that are the same on every platform (std::normal_distribution is
// implementation-defined): random weights, test data.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numbers>
#include <random>
#include <vector>

namespace squeeze {

// Standard normal samples from a fixed engine through Box-Muller: std::normal_distribution is
// implementation-defined, this is the same on every platform.
class NormalSource {
 public:
  explicit NormalSource(uint64_t seed) : engine_(seed) {}

  double Next() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    // u1 in (0, 1] so log(u1) is finite; 53 random bits each.
    const double u1 = (static_cast<double>(engine_() >> 11) + 1.0) * 0x1.0p-53;
    const double u2 = static_cast<double>(engine_() >> 11) * 0x1.0p-53;
    const double radius = std::sqrt(-2.0 * std::log(u1));
    const double angle = 2.0 * std::numbers::pi * u2;
    spare_ = radius * std::sin(angle);
    has_spare_ = true;
    return radius * std::cos(angle);
  }

 private:
  std::mt19937_64 engine_;
  bool has_spare_ = false;
  double spare_ = 0.0;
};

// `count` samples of N(mean, stddev^2), deterministic in `seed` on every platform.
std::vector<float> RandomNormal(size_t count, uint64_t seed, float mean, float stddev);

}  // namespace squeeze
