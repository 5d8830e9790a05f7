// The post-RoPE queries of chosen positions, captured during a forward (the context prefill's
// observation window, which calibration scores against the centroids).
#pragma once

#include <cstdint>
#include <vector>

namespace squeeze {

// Receives post-RoPE queries of selected positions during a forward (for calibration).
struct QueryCapture {
  int from_position = 0;  // capture tokens whose absolute position >= this
  // Filled by the forward: q[layer] holds rows [Hq][d] for every captured token, appended in
  // token order; positions lists the captured absolute positions (once, not per layer).
  std::vector<std::vector<float>> q;  // [L] -> [n_captured * Hq * d]
  std::vector<int32_t> positions;
};

}  // namespace squeeze
