// Squeezed Attention decode centroid lookup for one layer, entirely on the device (no host
// synchronisation; capturable in a CUDA graph). Math identical to the CPU reference
// (engine/squeeze/cluster_scores.h, selection.h), flat mode (with candidates, the hierarchical
// level's fine lookup: j and c range over the candidates only):
//   s_gc = scale * q_g . centroid_c                      (fp32; g over the G heads of the group)
//   p_gc = exp(s_gc - m_g) / sum_j N_j exp(s_gj - m_g)   (m_g = max_j s_gj; sizes weigh only
//                                                         the denominator)
//   score_c = mean_g p_gc; cluster c is kept when score_c > tau[b]
// tau = +inf keeps no cluster and tau = -inf keeps every cluster, both without scoring (as the
// CPU). Sinks and window are always kept. Shapes: d in {64, 96, 128}, any G = Hq / Hkv from 1
// to 16 (the kernels are instantiated for G padded to 1, 2, 4, 8 or 16; the mean is over the
// real G).
//
// One launch when every CTA fits on the GPU at once (LookupPlan::one_launch), grid
// (blocks_per_head, B * Hkv), no host synchronisation. Every CTA takes a block of
// clusters_per_block clusters of one head:
//  1. score (4 lanes per centroid, 16-byte loads, q broadcast from shared memory; the clusters'
//     storage rows and sizes are fetched alongside): logits stay in shared memory; the block's
//     (max, size-weighted sum of exp) per query head goes to global memory;
//  2. head barrier (an arrival counter per head; CTAs spin until all of the head's arrived);
//     every CTA merges the head's block partials into the head's max and denominator, scores
//     and thresholds its clusters and counts the kept ones (block-wide scan);
//  3. head barrier; every CTA sums the counts of the blocks before its own and writes its kept
//     clusters straight into the head's ranges (ascending cluster order); the first CTA of the
//     head adds sinks and window and the head's totals.
// With scores given (scores_in) steps 1 and the first barrier are skipped.
// The barriers need every CTA of the grid resident at some point while the others wait: work on
// other streams only delays them, but two one-launch lookups running at once on one GPU could
// each hold SMs the other waits for. Launch them on one stream (the CUDA backend does).
// Otherwise (too many clusters for one wave of resident CTAs) two launches: the score kernel
// stores the logits in global memory, and the select kernel's last CTA of each head gathers the
// blocks' compacted segments (the same results).
// Counters are restored to zero by the kernels themselves, so one zeroing at workspace creation
// suffices.
//
// CPU reference: ClusterScorer::Average and SqueezedFixedContextAttention::Select
// (engine/squeeze/cluster_scores.h, selection.h); tested through LaunchSqueezedDecode in
// tests/gpu/attention_kernels_test.cc (both lookup paths, the scores and the kept clusters), the
// candidate and scores_in modes through tests/gpu/cuda_model_test.cc
// (DeviceSqueezedSelectionMatchesCpu, DeviceHierarchicalSelectionMatchesCpu).
#pragma once

#include "kernels/common/types.cuh"

namespace squeeze::gpu {

// So at most 1024 * 1024 clusters per head (512 * 1024 for groups of 9 to 16 query heads).
constexpr int kLookupMaxBlocksPerHead = 1024;
constexpr int kLookupCounterStride = 32;  // uint32 per head counter (one 128-byte line)

struct LookupPlan {
  int clusters_per_block = 0;  // multiple of 64, at most 1024 (512 for groups of 9 to 16)
  int blocks_per_head = 0;     // ceil(max_clusters / clusters_per_block), in [1, 1024]
  int logit_stride = 0;        // >= max_clusters, multiple of 4
  bool one_launch = false;     // every CTA resident at once: the fused kernel (head barriers)
};

// One launch when the B * Hkv heads of up to max_clusters centroids fit in one wave of the
// fused kernel's resident CTAs (and allow_one_launch), with the fewest clusters per CTA that do;
// else two launches, with about two waves of the score kernel.
cudaError_t PlanCentroidLookup(int batch, int num_q_heads, int num_kv_heads, int head_dim,
                               int max_clusters, bool allow_one_launch, LookupPlan* plan);

struct CentroidLookupParams {
  int batch = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  float scale = 0.0f;                      // 1/sqrt(d)
  const float* q = nullptr;                // [B][Hq][d] fp32
  const SqueezeHeadDesc* heads = nullptr;  // [B * Hkv] device; num_clusters <= max_clusters
  bool centroids_bf16 = false;             // centroid storage type
  const float* tau = nullptr;              // [B] device: threshold per sequence
  LookupPlan plan;
  // Workspace.
  float* logits = nullptr;     // [B * Hkv][G][logit_stride] (two launches only)
  float* block_max = nullptr;  // [B * Hkv][blocks_per_head][G]
  float* block_den = nullptr;  // [B * Hkv][blocks_per_head][G]
  // Per-block compacted kept clusters: id, storage row, keys before it in its block (two
  // launches only).
  int32_t* seg_cluster = nullptr;              // [B * Hkv][logit_stride]
  int32_t* seg_row = nullptr;                  // [B * Hkv][logit_stride]
  int32_t* seg_key = nullptr;                  // [B * Hkv][logit_stride]
  unsigned long long* block_counts = nullptr;  // [B * Hkv][blocks_per_head] (keys << 32 | kept)
  // [B * Hkv * kLookupCounterStride]; zero before the first launch, zero after each.
  uint32_t* counters = nullptr;
  // Optional [B * Hkv][sel.cluster_stride]: every cluster's score computed elsewhere (prefill:
  // the mean over many query rows, kernels/squeeze/cluster_scores.cuh). The score launch is then
  // skipped and q, logits, block_max and block_den are not used.
  const float* scores_in = nullptr;
  // Optional (hierarchical level): only the candidate clusters of each head take part, the
  // first num_candidates[bh] ids of candidates[bh * candidate_stride ...] (ascending, each
  // < num_clusters): they are scored, normalised among themselves (the softmax denominator
  // sees only them) and thresholded. With scores_in, scores are read at the candidates' ids.
  const int32_t* candidates = nullptr;
  const int32_t* num_candidates = nullptr;  // [B * Hkv]
  int64_t candidate_stride = 0;
  // Outputs.
  SqueezeSelection sel;
};

cudaError_t LaunchCentroidLookup(const CentroidLookupParams& p, cudaStream_t stream);

}  // namespace squeeze::gpu
