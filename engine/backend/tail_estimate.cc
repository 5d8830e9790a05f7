#include "engine/backend/tail_estimate.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "engine/backend/attention_reference.h"

namespace squeeze {

std::vector<float> ClusterMeanValues(const float* v, int d, const SqueezeHeadIndex& head) {
  const int C = head.num_clusters();
  std::vector<float> means(static_cast<size_t>(C) * d, 0.0f);
  std::vector<double> sum(d);
  for (int c = 0; c < C; ++c) {
    const int begin = head.offsets[c], n = head.offsets[c + 1] - begin;
    std::fill(sum.begin(), sum.end(), 0.0);
    for (int r = begin; r < begin + n; ++r) {
      for (int i = 0; i < d; ++i) sum[i] += v[static_cast<size_t>(r) * d + i];
    }
    for (int i = 0; i < d; ++i)
      means[static_cast<size_t>(c) * d + i] = static_cast<float>(sum[i] / n);
  }
  return means;
}

std::vector<float> ClusterMeanValues(const ContextKV& kv, const SqueezeHeadIndex& head, int layer,
                                     int kv_head) {
  std::vector<float> scratch;
  const float* v = kv.ValuesF32(layer, kv_head, 0, kv.num_tokens, &scratch);
  return ClusterMeanValues(v, kv.shape.head_dim, head);
}

void DroppedClusters(const SqueezeHeadIndex& head, std::span<const KeyRange> kept,
                     std::vector<int32_t>* out) {
  const int C = head.num_clusters();
  std::vector<char> is_kept(C, 0);
  const auto first = head.offsets.begin(), last = head.offsets.begin() + C;  // cluster begins
  for (const KeyRange& r : kept) {
    for (auto it = std::lower_bound(first, last, r.begin); it != last && *it < r.end; ++it) {
      is_kept[it - first] = 1;
    }
  }
  out->clear();
  for (int c = 0; c < C; ++c) {
    if (!is_kept[c]) out->push_back(c);
  }
}

void MergeDroppedClustersEstimate(const AttentionShape& shape, const float* q,
                                  const ClusterTables& tables, int layer,
                                  std::span<const std::vector<KeyRange>> kept,
                                  std::span<const std::vector<float>* const> mean_values,
                                  float* out, float* lse) {
  const int Hq = shape.num_q_heads, Hkv = shape.num_kv_heads, d = shape.head_dim;
  const int G = Hq / Hkv;
  std::vector<int32_t> dropped;
  std::vector<float> tail(d);
  for (int h = 0; h < Hkv; ++h) {
    const SqueezeHeadIndex& head = tables.head(layer, h);
    DroppedClusters(head, kept[h], &dropped);
    if (dropped.empty()) continue;
    for (int t = 0; t < shape.num_queries; ++t) {
      for (int g = 0; g < G; ++g) {
        const size_t row = static_cast<size_t>(t) * Hq + static_cast<size_t>(h) * G + g;
        float tail_lse;
        DroppedClustersPartial(q + row * d, d, shape.scale, head.centroids.data(),
                               head.sizes.data(), mean_values[h]->data(), dropped, tail.data(),
                               &tail_lse);
        MergeAttentionPartials(out + row * d, lse + row, tail.data(), &tail_lse, 1, d);
      }
    }
  }
}

void DroppedClustersPartial(const float* q, int d, float scale, const float* centroids,
                            const int32_t* sizes, const float* mean_values,
                            std::span<const int32_t> dropped, float* out, float* lse) {
  std::fill(out, out + d, 0.0f);
  *lse = -std::numeric_limits<float>::infinity();
  if (dropped.empty()) return;
  // Per-thread scratch: this runs for every query row, head and layer of a step.
  thread_local std::vector<float> logit;
  thread_local std::vector<double> acc;
  logit.resize(dropped.size());
  acc.assign(d, 0.0);
  float m = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < dropped.size(); ++i) {
    const float* cv = centroids + static_cast<size_t>(dropped[i]) * d;
    float dot = 0.0f;
    for (int j = 0; j < d; ++j) dot += q[j] * cv[j];
    logit[i] = dot * scale;
    m = std::max(m, logit[i]);
  }
  double denom = 0.0;
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
