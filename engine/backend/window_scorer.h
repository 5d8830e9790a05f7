// The window scores of the index's calibration (engine/squeeze/calibration.h) on a device: for one
// layer and level, every KV head's clusters scored by the layer's window queries, the math of
// ClusterScorer::Average (engine/squeeze/cluster_scores.h) for all heads at once. The CPU
// reference needs none (CalibrateSqueezeIndex scores on the host without one).
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/status.h"

namespace squeeze {

class WindowScorer {
 public:
  virtual ~WindowScorer() = default;
  // q: [W][Hq][d] host fp32, the layer's window queries (token stride Hq * d). For KV head h of
  // Hkv = centroids.size() (Hq a multiple of Hkv, G = Hq / Hkv): its C_h = sizes[h].size()
  // clusters' centroids [C_h][d] (host fp32) and sizes (>= 1); scores[h] ([C_h]) receives, per
  // cluster, the mean over the W tokens and the G query heads h G .. h G + G - 1 of its
  // size-weighted softmax probability over the head's clusters. A head may have no clusters.
  virtual absl::Status Average(const float* q, int W, int Hq, int d,
                               std::span<const std::span<const float>> centroids,
                               std::span<const std::span<const int32_t>> sizes,
                               std::span<const std::span<float>> scores) = 0;
};

}  // namespace squeeze
