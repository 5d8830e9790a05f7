// Rotary position embedding frequencies for the Llama family, matching Hugging Face
// transformers' `ROPE_INIT_FUNCTIONS` ("default", "linear", "llama3"). The rotation itself is
// Backend::Rope (rotate_half pairing (i, i + d/2), not interleaved).
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/config.h"

namespace squeeze {

// inv_freq[i] for i < head_dim / 2, scaling applied, in fp32 as transformers computes it:
//   default: theta^(-2i/d)
//   linear:  default / factor  (same as dividing positions by factor)
//   llama3:  wavelen = 2*pi / inv_freq; low-frequency bands (wavelen > orig_max /
//            low_freq_factor) are divided by factor, high-frequency bands (wavelen < orig_max /
//            high_freq_factor) are kept, the band between is interpolated smoothly.
// Errors (InvalidArgument) name the offending config field.
absl::StatusOr<std::vector<float>> ComputeRopeInvFreq(int head_dim, float theta,
                                                      const RopeScaling& scaling);

}  // namespace squeeze
