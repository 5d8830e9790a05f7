// Beyond the paper (issue "Accuracy that means something", item 4): the attention a squeezed
// selection drops, estimated from the dropped clusters' centroids instead of ignored. Each
// dropped cluster c of a KV head stands for its N_c keys as if they all were its centroid C_c
// with its mean value Vbar_c:
//   w_c = N_c * exp(scale * q . C_c),  tail out = sum_c w_c Vbar_c / sum_c w_c,
//   tail lse = log sum_c w_c,
// a partial over the dropped keys that MergeAttentionPartials (attention_reference.h) merges
// with the exact partial over the kept keys. Exact when every key of a dropped cluster equals
// its centroid and every value its mean; otherwise an estimate (exp(q . C) <= mean exp(q . k)
// by Jensen, so it underweights spread clusters). CPU reference, fp32 with the maximum
// subtracted before exp() (sums in double).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/backend/cluster_tables.h"
#include "engine/backend/kv_cache.h"

namespace squeeze {

// Mean value vector of every cluster of `head` at (layer, kv_head): [C][d], from the context's
// values in storage order.
std::vector<float> ClusterMeanValues(const ContextKV& kv, const SqueezeHeadIndex& head, int layer,
                                     int kv_head);
// The same from one head's fp32 values in storage order (row r at v + r * d).
std::vector<float> ClusterMeanValues(const float* v, int d, const SqueezeHeadIndex& head);

// The clusters of `head` that no range of `kept` covers, ascending, into *out. The ranges hold
// whole clusters (a selection's kept storage rows; any order; sinks and window outside them).
void DroppedClusters(const SqueezeHeadIndex& head, std::span<const KeyRange> kept,
                     std::vector<int32_t>* out);

// Merges into the kept keys' partial (out [n][Hq][d], lse [n][Hq], natural log) every query
// row's estimate of its KV head's dropped clusters at `layer` (DroppedClustersPartial): KV head
// h's clusters are tables.head(layer, h), kept[h] its kept ranges, mean_values[h] its
// ClusterMeanValues. GQA: query head qh reads KV head qh / (Hq / Hkv).
void MergeDroppedClustersEstimate(const AttentionShape& shape, const float* q,
                                  const ClusterTables& tables, int layer,
                                  std::span<const std::vector<KeyRange>> kept,
                                  std::span<const std::vector<float>* const> mean_values,
                                  float* out, float* lse);

// The estimated partial over the clusters `dropped` of one head for one query row q [d]:
// out [d] and lse (natural log; -inf and zeros when nothing is dropped).
//   centroids [C][d], sizes [C], mean_values [C][d].
void DroppedClustersPartial(const float* q, int d, float scale, const float* centroids,
                            const int32_t* sizes, const float* mean_values,
                            std::span<const int32_t> dropped, float* out, float* lse);

}  // namespace squeeze
