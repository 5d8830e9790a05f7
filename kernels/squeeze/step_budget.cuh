// The per-step budget threshold (BudgetPolicy::kPerStep, engine/squeeze/squeeze_options.h) on
// the device. For every sequence b, over the clusters of its Hkv heads together (cluster c of
// head h: score scores[(b * Hkv + h) * score_stride + c], keys heads[b * Hkv + h].sizes[c]),
// tau[b] is the threshold whose kept set {c : score_c > tau} is the cut of the clusters in
// descending score order whose keys come closest to
//   target = budget[b] * (keys of every cluster of the Hkv heads),
// a tie going to keeping more. budget[b] <= 0 (or NaN) gives +inf (nothing kept); a target at or
// above all the keys gives -inf (everything kept).
// Scores must be finite and >= 0 (size-weighted softmax means, cluster_scores.cuh and
// centroid_lookup.cuh), so their float bits order them as unsigned integers: the cut score is
// found exactly by a radix select of the key-weighted histogram: 4 passes of 8 bits, each a
// launch of grid (Hkv * chunks of kStepBudgetChunk clusters, B) whose CTAs add their chunk's
// histogram (warp-aggregated shared-memory atomics) into the sequence's global one; the last CTA
// of a sequence to finish a pass picks its digit (one warp's scan of the 256 bins) for the next.
// One memset and four launches per call, whatever B; no host synchronisation; capturable.
//
// CPU reference: ScoreDistribution::FromWeightedScores(...).Threshold(target / total), as
// SqueezedFixedContextAttention's per-step selection uses it (engine/squeeze/selection.cc). The
// kept sets are the same; tau itself may differ (the kernel gives the float just below the cut
// score where the CPU gives the next lower score present). Tested in
// tests/gpu/cluster_scores_test.cc (StepBudgetThresholdMatchesCpu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/common/types.cuh"

namespace squeeze::gpu {

struct StepBudgetParams {
  int batch = 0;                           // B
  int num_kv_heads = 0;                    // Hkv
  const SqueezeHeadDesc* heads = nullptr;  // [B * Hkv] device (num_clusters, sizes)
  const float* scores = nullptr;           // [B * Hkv][score_stride] device
  int64_t score_stride = 0;                // >= every num_clusters
  const float* budget = nullptr;           // [B] device: kept fraction of the clustered keys
  float* tau = nullptr;                    // [B] device, written (must not alias budget)
  void* workspace = nullptr;  // StepBudgetWorkspaceBytes(batch) device bytes, 8-byte aligned;
                              // cleared by the launcher (no contents carried between calls)
};

// Clusters one CTA of a pass takes from one head.
constexpr int kStepBudgetChunk = 2048;

size_t StepBudgetWorkspaceBytes(int batch);

cudaError_t LaunchStepBudgetThreshold(const StepBudgetParams& p, cudaStream_t stream);

}  // namespace squeeze::gpu
