#include "engine/squeeze/tail_estimate.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace squeeze {

std::vector<float> ClusterMeanValues(const ContextKV& kv, const SqueezeHeadIndex& head, int layer,
                                     int kv_head) {
  const int C = head.num_clusters(), d = kv.shape.head_dim;
  std::vector<float> means(static_cast<size_t>(C) * d, 0.0f);
  std::vector<float> scratch;
  std::vector<double> sum(d);
  for (int c = 0; c < C; ++c) {
    const int begin = head.offsets[c], n = head.offsets[c + 1] - begin;
    const float* v = kv.ValuesF32(layer, kv_head, begin, n, &scratch);
    std::fill(sum.begin(), sum.end(), 0.0);
    for (int r = 0; r < n; ++r) {
      for (int i = 0; i < d; ++i) sum[i] += v[static_cast<size_t>(r) * d + i];
    }
    for (int i = 0; i < d; ++i)
      means[static_cast<size_t>(c) * d + i] = static_cast<float>(sum[i] / n);
  }
  return means;
}

void DroppedClustersPartial(const float* q, int d, float scale, const float* centroids,
                            const int32_t* sizes, const float* mean_values,
                            std::span<const int32_t> dropped, float* out, float* lse) {
  std::fill(out, out + d, 0.0f);
  *lse = -std::numeric_limits<float>::infinity();
  if (dropped.empty()) return;
  std::vector<float> logit(dropped.size());
  float m = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < dropped.size(); ++i) {
    const float* cv = centroids + static_cast<size_t>(dropped[i]) * d;
    float dot = 0.0f;
    for (int j = 0; j < d; ++j) dot += q[j] * cv[j];
    logit[i] = dot * scale;
    m = std::max(m, logit[i]);
  }
  double denom = 0.0;
  std::vector<double> acc(d, 0.0);
  for (size_t i = 0; i < dropped.size(); ++i) {
    const double w = sizes[dropped[i]] * std::exp(static_cast<double>(logit[i] - m));
    denom += w;
    const float* mv = mean_values + static_cast<size_t>(dropped[i]) * d;
    for (int j = 0; j < d; ++j) acc[j] += w * mv[j];
  }
  for (int j = 0; j < d; ++j) out[j] = static_cast<float>(acc[j] / denom);
  *lse = m + static_cast<float>(std::log(denom));
}

}  // namespace squeeze
