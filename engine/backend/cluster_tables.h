// The plain data a backend reads to attend to a registered context with Squeezed Attention
// (engine/squeeze/ builds it; backends never see the index builder): each (layer, KV head)'s
// clusters as storage-row ranges with their centroids and sizes, the key ranges a selection
// keeps, and what a backend needs to select on its own device.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/backend/backend_cache.h"

namespace squeeze {

// The clusters of one (layer, KV head). Storage rows of the ContextKV slice are
//   [0, sinks)                 sinks, in token order
//   [offsets[c], offsets[c+1]) fine cluster c, in token order within the cluster
//   [S - window, S)            observation window, in token order
// so offsets[0] = sinks and offsets[C] = S - window. No cluster is empty.
struct SqueezeHeadIndex {
  std::vector<int32_t> offsets;  // [C + 1] storage-row CSR of the fine clusters
  std::vector<int32_t> sizes;    // [C] keys per cluster (offsets[c+1] - offsets[c])
  std::vector<float> centroids;  // [C][d] mean of the cluster's raw post-RoPE keys
  // Hierarchical level (empty otherwise): coarse cluster g owns the fine clusters
  // [coarse_offsets[g], coarse_offsets[g+1]), hence one contiguous range of rows.
  std::vector<int32_t> coarse_offsets;  // [C1 + 1] fine-cluster CSR; [0] = 0, [C1] = C
  std::vector<int32_t> coarse_sizes;    // [C1] keys under each coarse cluster
  std::vector<float> coarse_centroids;  // [C1][d] unweighted mean of member fine centroids

  int num_clusters() const { return static_cast<int>(sizes.size()); }
  int num_coarse() const { return static_cast<int>(coarse_sizes.size()); }

  bool operator==(const SqueezeHeadIndex&) const = default;
};

// A registered context's cluster tables over all layers and KV heads, as a view of the index
// that owns them (SqueezeIndex::tables()).
struct ClusterTables {
  int num_layers = 0;    // L
  int num_kv_heads = 0;  // Hkv
  int head_dim = 0;      // d
  int num_tokens = 0;    // S
  int sinks = 0;
  int window = 0;
  bool hierarchical = false;                // the coarse level exists
  std::span<const SqueezeHeadIndex> heads;  // [L * Hkv], index layer * Hkv + kv_head
  const BackendCache* resident = nullptr;   // a device backend's copy, kept with the index

  bool has_coarse() const { return hierarchical; }
  const SqueezeHeadIndex& head(int layer, int kv_head) const {
    return heads[static_cast<size_t>(layer) * num_kv_heads + kv_head];
  }
};

// A Squeezed Attention selection as plain data: the context's cluster tables, the fine threshold
// tau and, for the hierarchical mode, the coarse threshold. Keeps every cluster whose score
// exceeds tau (hierarchical: among the fine clusters of the coarse clusters whose score exceeds
// coarse_threshold, normalised among those), plus the sinks and the window; tau = -inf keeps
// every cluster and +inf none, both without scoring.
struct SqueezedSelection {
  ClusterTables tables;
  float threshold = 0.0f;
  bool hierarchical = false;
  float coarse_threshold = 0.0f;
  // Flat selection with the per-step budget policy (BudgetPolicy::kPerStep): where `threshold`
  // is finite, the threshold is found per layer and step from the step's own scores over the
  // clusters of all KV heads together, keeping the closest to `budget` of their keys
  // (kernels/squeeze/step_budget.cuh); `threshold` = -inf / +inf keep all / none as above.
  bool per_step = false;
  float budget = 0.0f;
};
// A half-open range [begin, end) of storage rows in a ContextKV (layer, kv_head) slice.
struct KeyRange {
  int32_t begin = 0;
  int32_t end = 0;
  int32_t size() const { return end - begin; }
};

// Key ranges kept for one layer: ranges[kv_head] lists that head's kept ranges; hierarchical
// selection also gives candidates[kv_head], the fine clusters under the kept coarse clusters
// (empty otherwise).
struct LayerSelection {
  std::vector<std::vector<KeyRange>> ranges;
  std::vector<int32_t> candidates;
};

}  // namespace squeeze
