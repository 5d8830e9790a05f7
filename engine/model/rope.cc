#include "engine/model/rope.h"

#include <cmath>
#include <numbers>

#include "absl/strings/str_cat.h"

namespace squeeze {

absl::StatusOr<std::vector<float>> ComputeRopeInvFreq(int head_dim, float theta,
                                                      const RopeScaling& scaling) {
  if (head_dim <= 0 || head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("head_dim must be a positive even number for RoPE, got ", head_dim));
  }
  if (!(theta > 0.0f) || !std::isfinite(theta)) {
    return absl::InvalidArgumentError(absl::StrCat("rope_theta must be > 0, got ", theta));
  }
  if (scaling.type != RopeType::kDefault && !(scaling.factor > 0.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("rope_scaling.factor must be > 0, got ", scaling.factor));
  }

  // transformers: 1 / base ** (arange(0, d, 2).float() / d), all in fp32.
  const int half = head_dim / 2;
  std::vector<float> inv_freq(half);
  for (int i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv_freq[i] = 1.0f / std::pow(theta, exponent);
  }

  switch (scaling.type) {
    case RopeType::kDefault:
      break;
    case RopeType::kLinear:
      for (float& f : inv_freq) f /= scaling.factor;
      break;
    case RopeType::kLlama3: {
      const float low = scaling.low_freq_factor, high = scaling.high_freq_factor;
      if (!(high > low) || !(low > 0.0f)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "rope_scaling needs 0 < low_freq_factor < high_freq_factor, got low_freq_factor=", low,
            " high_freq_factor=", high));
      }
      if (scaling.original_max_position_embeddings <= 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("rope_scaling.original_max_position_embeddings must be > 0, got ",
                         scaling.original_max_position_embeddings));
      }
      const float orig_max = static_cast<float>(scaling.original_max_position_embeddings);
      const float low_freq_wavelen = orig_max / low;
      const float high_freq_wavelen = orig_max / high;
      for (float& f : inv_freq) {
        const float wavelen = 2.0f * std::numbers::pi_v<float> / f;
        if (wavelen > low_freq_wavelen) {
          f /= scaling.factor;  // low frequencies: interpolate like linear scaling
        } else if (wavelen >= high_freq_wavelen) {
          const float smooth = (orig_max / wavelen - low) / (high - low);
          f = (1.0f - smooth) * f / scaling.factor + smooth * f;
        }  // high frequencies (wavelen < high_freq_wavelen) stay as they are
      }
      break;
    }
  }
  return inv_freq;
}

}  // namespace squeeze
