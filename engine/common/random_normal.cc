#include "engine/common/random_normal.h"

namespace squeeze {

std::vector<float> RandomNormal(size_t count, uint64_t seed, float mean, float stddev) {
  NormalSource rng(seed);
  std::vector<float> out(count);
  for (float& x : out) x = static_cast<float>(mean + stddev * rng.Next());
  return out;
}

}  // namespace squeeze
