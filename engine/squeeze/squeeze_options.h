// Options of the offline Squeezed Attention index (DESIGN §1.1). Validated by
// ValidateSqueezeOptions (squeeze_index.h).
#pragma once

#include <cstdint>

namespace squeeze {

struct SqueezeOptions {
  double centroid_fraction = 0.05;  // C2 = ceil(fraction * M), M = clustered tokens
  bool hierarchical = false;
  double coarse_fraction = 0.01;  // C1 = ceil(fraction * M)
  int window = 100;               // last W tokens: always kept, never clustered; calibration
  int sinks = 0;                  // first tokens always kept, never clustered
  int max_iterations = 25;        // k-means; early stop when no assignment changes
  uint64_t seed = 0;              // k-means++ seeding; per (layer, head) streams derive from it

  bool operator==(const SqueezeOptions&) const = default;
};

}  // namespace squeeze
