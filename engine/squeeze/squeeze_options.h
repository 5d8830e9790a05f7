// Options of the offline Squeezed Attention index (DESIGN §1.1), validated by
// ValidateSqueezeOptions (squeeze_index.h), and the online selection's budget policy.
#pragma once

#include <cstdint>

namespace squeeze {

struct SqueezeOptions {
  double centroid_fraction = 0.05;  // C2 = ceil(fraction * M), M = clustered tokens
  bool hierarchical = false;
  double coarse_fraction = 0.01;  // C1 = ceil(fraction * M)
  int window = 100;               // last W tokens: always kept, never clustered; calibration
  int sinks = 0;                  // first tokens always kept, never clustered
  int max_iterations = 25;        // k-means, both levels: the most assignment steps
  // k-means early stop, both levels: a (layer, head) stops after a step that changed the cluster
  // of at most this fraction of its keys (KMeansLimits, engine/backend/kmeans.h). In [0, 1);
  // 0 stops only when no key changes.
  double kmeans_min_changed = 0.0;
  uint64_t seed = 0;  // k-means++ seeding; per (layer, head) streams derive from it
  // Tensor parallelism: the model's index of this shard's first KV head, so that a rank's heads
  // draw the streams the whole model's heads draw and cluster exactly as it does. Not stored
  // with the index (what it clustered is).
  int kv_head_offset = 0;

  bool operator==(const SqueezeOptions&) const = default;
};

// How a requested budget becomes a threshold.
enum class BudgetPolicy : uint8_t {
  // The paper's: tau(budget) calibrated at registration on the context's last queries (P7); the
  // kept fraction follows the user's queries only as far as they resemble those.
  kCalibrated,
  // Beyond the paper (DESIGN §1.3): one threshold per layer and step, over the clusters of all the
  // layer's KV heads together, from the step's own scores: the cut of their (score, keys) that
  // keeps the closest to `budget` of the heads' clustered keys. The heads share the threshold, so
  // the paper's per-head adaptivity stays (a peaked head keeps fewer keys, a diffuse one more);
  // the layer's kept fraction holds at every step. Hierarchical: the coarse level the same way
  // with `coarse_keep`, then the fine level among the candidates.
  kPerStep,
};

}  // namespace squeeze
