#include "engine/model/rope.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"

namespace squeeze {
namespace {

// transformers' _compute_yarn_parameters: the correction range [low, high] is found in fp64
// from the number of rotations each dimension makes over the original window, the ramp and the
// blend are in fp32.
absl::Status ApplyYarn(int head_dim, float theta, const RopeScaling& s,
                       std::vector<float>& inv_freq) {
  if (s.original_max_position_embeddings <= 0 || !(s.beta_fast > 0.0f) || !(s.beta_slow > 0.0f)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rope_scaling needs original_max_position_embeddings, beta_fast and beta_slow > 0, got ",
        s.original_max_position_embeddings, ", ", s.beta_fast, ", ", s.beta_slow));
  }
  const double dim = head_dim, base = theta, orig = s.original_max_position_embeddings;
  auto correction_dim = [&](double rotations) {
    return dim * std::log(orig / (rotations * 2.0 * std::numbers::pi)) / (2.0 * std::log(base));
  };
  double low = correction_dim(s.beta_fast), high = correction_dim(s.beta_slow);
  if (s.truncate) {
    low = std::floor(low);
    high = std::ceil(high);
  }
  low = std::max(low, 0.0);
  high = std::min(high, dim - 1.0);
  if (low == high) high += 0.001;  // as transformers: no division by zero
  const float lo = static_cast<float>(low), span = static_cast<float>(high - low);
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    const float pos_freq =
        std::pow(theta, static_cast<float>(2 * i) / static_cast<float>(head_dim));
    const float extrapolation = 1.0f / pos_freq;
    const float interpolation = 1.0f / (s.factor * pos_freq);
    const float ramp = std::clamp((static_cast<float>(i) - lo) / span, 0.0f, 1.0f);
    const float extrapolation_weight = 1.0f - ramp;
    inv_freq[i] =
        interpolation * (1.0f - extrapolation_weight) + extrapolation * extrapolation_weight;
  }
  return absl::OkStatus();
}

}  // namespace

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
    case RopeType::kYarn:
      RETURN_IF_ERROR(ApplyYarn(head_dim, theta, scaling, inv_freq));
      break;
    case RopeType::kLongRope: {
      const bool use_long =
          scaling.max_position_embeddings > scaling.original_max_position_embeddings;
      const std::vector<float>& ext = use_long ? scaling.long_factor : scaling.short_factor;
      if (ext.size() != static_cast<size_t>(half)) {
        return absl::InvalidArgumentError(
            absl::StrCat("rope_scaling.", use_long ? "long_factor" : "short_factor", " has ",
                         ext.size(), " entries, expected head_dim / 2 = ", half));
      }
      // transformers: 1 / (ext * theta^(2i/d)), the product in fp32.
      for (int i = 0; i < half; ++i) {
        const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
        inv_freq[i] = 1.0f / (ext[i] * std::pow(theta, exponent));
      }
      break;
    }
  }
  return inv_freq;
}

float RopeAttentionFactor(const RopeScaling& s) {
  if (s.type != RopeType::kYarn && s.type != RopeType::kLongRope) return 1.0f;
  if (s.attention_factor > 0.0f) return s.attention_factor;
  const double factor = s.factor;
  if (s.type == RopeType::kYarn) {
    // transformers' get_mscale: 0.1 * mscale * ln(scale) + 1 for scale > 1, else 1.
    auto mscale = [](double scale, double m) {
      return scale <= 1.0 ? 1.0 : 0.1 * m * std::log(scale) + 1.0;
    };
    if (s.mscale > 0.0f && s.mscale_all_dim > 0.0f) {
      return static_cast<float>(mscale(factor, s.mscale) / mscale(factor, s.mscale_all_dim));
    }
    return static_cast<float>(mscale(factor, 1.0));
  }
  if (factor <= 1.0) return 1.0f;
  return static_cast<float>(
      std::sqrt(1.0 + std::log(factor) / std::log(s.original_max_position_embeddings)));
}

}  // namespace squeeze
