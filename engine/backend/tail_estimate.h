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

#include "engine/backend/cluster_tables.h"
#include "engine/backend/kv_cache.h"

namespace squeeze {

// Mean value vector of every cluster of `head` at (layer, kv_head): [C][d], from the context's
// values in storage order.
std::vector<float> ClusterMeanValues(const ContextKV& kv, const SqueezeHeadIndex& head, int layer,
                                     int kv_head);

// The estimated partial over the clusters `dropped` of one head for one query row q [d]:
// out [d] and lse (natural log; -inf and zeros when nothing is dropped).
//   centroids [C][d], sizes [C], mean_values [C][d].
void DroppedClustersPartial(const float* q, int d, float scale, const float* centroids,
                            const int32_t* sizes, const float* mean_values,
                            std::span<const int32_t> dropped, float* out, float* lse);

}  // namespace squeeze
