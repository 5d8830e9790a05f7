// Offline threshold calibration (DESIGN §1.1 item 6, PAPER_NOTES §3.6, P7, P8).
//
// For every observation-window query q (positions S - W .. S - 1), layer and KV head, each
// fine cluster c gets p_c(q) from ClusterScorer (size-weighted softmax over that head's
// clusters, max-subtracted, fp32), averaged over the W window queries and the G query heads of
// the group. Every key of cluster c carries that score. The scores of all clustered keys of
// all layers and heads form ONE distribution per context (index->fine_scores), from which
// tau(keep) is read for any budget at query time. With the hierarchical level, the coarse
// clusters are scored the same way (coarse sizes = keys under them) into
// index->coarse_scores; as in the paper's code, the fine level is calibrated with the
// denominator over ALL fine clusters of the head (P13).
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "engine/backend/window_scorer.h"
#include "engine/squeeze/squeeze_index.h"

namespace squeeze {

// window_q[layer] points at that layer's [W][Hq][d] window queries (W = index->window, rows in
// token order). Requires the clusters of `index` to be built. Fails (Internal) if a score is
// not finite, naming the layer and head (a bug or non-finite input, never silently kept).
// `scorer`, when given, scores each layer's heads on its device (the GPU's, in bf16 as the
// squeezed selection scores at query time) instead of ClusterScorer on the host.
absl::Status CalibrateSqueezeIndex(std::span<const float* const> window_q, SqueezeIndex* index,
                                   const SqueezeProgress& progress = nullptr,
                                   WindowScorer* scorer = nullptr);

// CalibrateSqueezeIndex on a device scorer a layer at a time, for an index whose layers are built
// one after another: PlanSqueezeIndex scores each layer as soon as its clusters exist, beside the
// clustering of the next ones. Score every layer once (any order, one call at a time), then
// Finish. The result equals CalibrateSqueezeIndex's with the same scorer.
class LayerCalibrator {
 public:
  // `index` gives the shape (layers, heads, head dim, window, hierarchical); window_q as above.
  LayerCalibrator(std::span<const float* const> window_q, const SqueezeIndex& index,
                  WindowScorer* scorer);
  // Layer l's num_kv_heads heads, clusters built. Fails as CalibrateSqueezeIndex does (a non-finite
  // score, naming the layer and head).
  absl::Status Score(int layer, std::span<const SqueezeHeadIndex> heads);
  // Every layer's scores into index's two distributions (index: the same shape, all heads).
  void Finish(SqueezeIndex* index);

 private:
  using Run = std::vector<std::pair<float, int64_t>>;  // (score, keys carrying it), sorted
  std::vector<const float*> window_q_;
  int num_kv_heads_, num_q_heads_, head_dim_, window_;
  bool hierarchical_;
  WindowScorer* scorer_;
  std::vector<Run> fine_runs_, coarse_runs_;  // [layer]: its heads' clusters
};

}  // namespace squeeze
