// The Squeezed Attention index of one fixed context (DESIGN §1.1): per (layer, KV head) the
// clusters of the fixed-context keys (contiguous storage rows, CSR), their centroids and
// sizes, the optional coarse level, and the calibrated score distributions that turn a
// requested KV budget into the global threshold tau. BuildSqueezeIndex computes it offline
// from the prefilled ContextKV and reorders that ContextKV's rows into cluster order.
#pragma once

#include <cstdint>
#include <functional>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend/cluster_tables.h"
#include "engine/backend/kmeans.h"
#include "engine/backend/kv_cache.h"
#include "engine/backend/window_scorer.h"
#include "engine/squeeze/query_capture.h"
#include "engine/squeeze/score_distribution.h"
#include "engine/squeeze/squeeze_options.h"

namespace squeeze {

// Checks the option values alone; Build also checks them against the context length.
absl::Status ValidateSqueezeOptions(const SqueezeOptions& options);

// Number of clusters asked of k-means for M keys: ceil(fraction * M) clamped to [1, M]
// (0 when M == 0). A 1e-9 slack absorbs binary rounding (0.05 * 4000 must give 200).
int NumClustersFor(double fraction, int num_keys);

struct SqueezeIndex {
  int num_layers = 0;      // L
  int num_kv_heads = 0;    // Hkv
  int num_q_heads = 0;     // Hq (a multiple of Hkv; G = Hq / Hkv)
  int head_dim = 0;        // d
  int num_tokens = 0;      // S
  int sinks = 0;           // always-kept prefix rows
  int window = 0;          // W: always-kept suffix rows
  int num_clustered = 0;   // M = S - sinks - window
  SqueezeOptions options;  // as built; options.hierarchical says whether the coarse level exists
  std::vector<SqueezeHeadIndex> heads;  // [L * Hkv], index layer * Hkv + kv_head

  // Calibrated per-key scores over all layers, heads and clustered keys (empty when M == 0).
  ScoreDistribution fine_scores;
  ScoreDistribution coarse_scores;  // hierarchical only
  // A device backend's copy of the centroids and cluster tables (released with the index).
  BackendCache resident;

  bool hierarchical() const { return options.hierarchical; }
  bool has_coarse() const { return options.hierarchical; }
  int group_size() const { return num_kv_heads > 0 ? num_q_heads / num_kv_heads : 0; }
  const SqueezeHeadIndex& head(int layer, int kv_head) const {
    return heads[static_cast<size_t>(layer) * num_kv_heads + kv_head];
  }
  // The cluster tables as plain data for a backend (a view: valid while this index lives).
  ClusterTables tables() const {
    return {num_layers, num_kv_heads,         head_dim, num_tokens, sinks,
            window,     options.hierarchical, heads,    &resident};
  }
  int64_t num_centroids() const;         // fine, over all layers and heads
  int64_t num_coarse_centroids() const;  // coarse, over all layers and heads

  bool operator==(const SqueezeIndex&) const = default;
};

// Progress: stage is "clustering" or "calibrating"; fraction in (0, 1], reported per layer.
using SqueezeProgress = std::function<void(std::string_view stage, double fraction)>;

// Wall-clock seconds of the offline stages. BuildSqueezeIndex: clustering_seconds includes the
// row reorder, which reorder_seconds also reports on its own. BuildIndexedContext makes the host
// copy (host_copy_seconds) and reorders it layer by layer (reorder_seconds) beside the
// clustering: clustering_seconds then includes only the part of the reorder left after the
// plan, reorder_wait_seconds.
struct BuildTimings {
  double clustering_seconds = 0;
  double calibration_seconds = 0;
  double reorder_seconds = 0;
  double reorder_wait_seconds = 0;
  double host_copy_seconds = 0;
};

// Clusters and calibrates `kv` (which must be in token order, as ContextKV::FromSequence makes
// it) and reorders its rows, per (layer, KV head), into the storage order described above.
// `window` holds the post-RoPE queries captured during the context prefill: q[layer] =
// [n][Hq][d] in token order with their positions; it must contain every position
// S - W .. S - 1 consecutively (other captured rows are ignored; nothing is needed when M == 0).
// `kv` is untouched when an error is returned. Errors (InvalidArgument) name the option or
// tensor at fault: bad option values, sinks + window > S, W == 0 with M > 0 (calibration needs
// the window queries), missing or mis-sized window queries, non-finite keys or queries.
// `solver`, when given, clusters both levels instead of the CPU SphericalKMeans (the GPU
// k-means). `device_keys`, optional: the same context's KV still in the solver's device memory
// (the prefill's SequenceKV, token order, at least kv->num_tokens rows), which the solver then
// clusters in place instead of uploading the host keys.
// = PlanSqueezeIndex, then ApplySqueezePlan on `kv`.
absl::StatusOr<SqueezeIndex> BuildSqueezeIndex(ContextKV* kv, const QueryCapture& window,
                                               int num_q_heads, const SqueezeOptions& options,
                                               const SqueezeProgress& progress = nullptr,
                                               BuildTimings* timings = nullptr,
                                               KMeansSolver* solver = nullptr,
                                               const SequenceKV* device_keys = nullptr);

// The two halves of BuildSqueezeIndex, for a caller that makes the host copy while the index is
// planned (a registration: the copy of a device's KV runs beside the GPU k-means).
//
// A planned index: clustered and calibrated, and per (layer, KV head) the permutation that puts
// the clustered rows into cluster order (new clustered row r comes from token sinks + perm[r]).
struct SqueezePlan {
  SqueezeIndex index;
  std::vector<std::vector<int32_t>> perms;  // [L * Hkv][M]
  bool keys_checked = false;                // the host keys were scanned for non-finite values
};

// Where PlanSqueezeIndex reads the context's keys: `host` (a ContextKV in token order), or
// `device` (the prefill's SequenceKV, token order, at least num_tokens rows; clustered in place by
// a solver that can, else copied to the host a layer at a time), or both (then as
// BuildSqueezeIndex). Keys are checked for non-finite values here only when `host` is given.
// `scorer`, when given, scores the calibration's window queries on its device
// (CalibrateSqueezeIndex).
struct ContextKeys {
  KvShape shape;
  int num_tokens = 0;
  const ContextKV* host = nullptr;
  const SequenceKV* device = nullptr;
};
absl::StatusOr<SqueezePlan> PlanSqueezeIndex(const ContextKeys& keys, const QueryCapture& window,
                                             int num_q_heads, const SqueezeOptions& options,
                                             const SqueezeProgress& progress = nullptr,
                                             BuildTimings* timings = nullptr,
                                             KMeansSolver* solver = nullptr,
                                             WindowScorer* scorer = nullptr);

// Reorders `kv` (in token order, the shape and length the plan was made for) by the plan and
// returns the index. Checks the keys for non-finite values first when the plan did not
// (InvalidArgument, naming the first bad layer and head); `kv` is untouched on an error.
absl::StatusOr<SqueezeIndex> ApplySqueezePlan(SqueezePlan plan, ContextKV* kv,
                                              BuildTimings* timings = nullptr);

// A registration's host copy and index from the prefill's KV `seq` (its first `num_tokens`
// rows): ContextKV::FromSequence runs on another thread while the index is planned from `seq`
// (in place by a GPU solver), and a third reorders the copy a layer at a time as the plan's
// layers are ready. On an error nothing is returned; non-finite keys in the copy are reported
// (InvalidArgument) unless the options or the window queries were at fault first.
struct IndexedContext {
  ContextKV kv;
  SqueezeIndex index;
};
absl::StatusOr<IndexedContext> BuildIndexedContext(const SequenceKV& seq, int num_tokens,
                                                   const QueryCapture& window, int num_q_heads,
                                                   const SqueezeOptions& options,
                                                   const SqueezeProgress& progress = nullptr,
                                                   BuildTimings* timings = nullptr,
                                                   KMeansSolver* solver = nullptr,
                                                   WindowScorer* scorer = nullptr);

}  // namespace squeeze
