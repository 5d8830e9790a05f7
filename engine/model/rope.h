// Rotary position embedding frequencies, matching Hugging Face transformers'
// `ROPE_INIT_FUNCTIONS` ("default", "linear", "llama3", "yarn", "longrope"). The rotation itself
// is Backend::Rope (rotate_half pairing (i, i + d/2), not interleaved).
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/config.h"

namespace squeeze {

// inv_freq[i] for i < head_dim / 2, scaling applied, in fp32 as transformers computes it:
//   default:  theta^(-2i/d)
//   linear:   default / factor  (same as dividing positions by factor)
//   llama3:   wavelen = 2*pi / inv_freq; low-frequency bands (wavelen > orig_max /
//             low_freq_factor) are divided by factor, high-frequency bands (wavelen < orig_max /
//             high_freq_factor) are kept, the band between is interpolated smoothly.
//   yarn:     default (extrapolation) for the dimensions that rotate more than beta_fast times
//             over the original window, default / factor (interpolation) for those that rotate
//             less than beta_slow times, a linear ramp between.
//   longrope: default / ext[i], ext = long_factor when the model is served beyond its
//             pre-training length, short_factor otherwise (see RopeScaling).
// Errors (InvalidArgument) name the offending config field.
absl::StatusOr<std::vector<float>> ComputeRopeInvFreq(int head_dim, float theta,
                                                      const RopeScaling& scaling);

// The factor transformers multiplies cos and sin by (`attention_scaling`), so q and k after RoPE,
// so the attention logits by its square: 1 except for yarn (0.1 ln(factor) + 1, or the ratio of
// the mscale terms) and longrope (sqrt(1 + ln(factor) / ln(original_max_position_embeddings)));
// an explicit attention_factor wins.
float RopeAttentionFactor(const RopeScaling& scaling);

}  // namespace squeeze
