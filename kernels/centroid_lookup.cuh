// Squeezed Attention decode centroid lookup for one layer, entirely on the device (no host
// synchronisation; capturable in a CUDA graph). Math identical to the CPU reference
// (engine/squeeze/cluster_scores.h, selection.h), flat (non-hierarchical) mode:
//   s_gc = scale * q_g . centroid_c                      (fp32; g over the G heads of the group)
//   p_gc = exp(s_gc - m_g) / sum_j N_j exp(s_gj - m_g)   (m_g = max_j s_gj; sizes weigh only
//                                                         the denominator)
//   score_c = mean_g p_gc; cluster c is kept when score_c > tau[b]
// tau = +inf keeps no cluster and tau = -inf keeps every cluster, both without scoring (as the
// CPU). Sinks and window are always kept.
//
// Two launches, both with grid (blocks_per_head, B * Hkv), no host synchronisation:
//  1. score: every CTA scores a block of clusters_per_block centroids (4 lanes per centroid,
//     16-byte loads, q broadcast from shared memory), stores the logits and the block's
//     (max, size-weighted sum of exp) per query head;
//  2. select: every CTA merges its head's block partials into the head's max and denominator,
//     scores and thresholds its block of clusters and compacts the kept ones (block-wide scan)
//     into a per-block segment; the last CTA of each head (atomic counter) scans the block
//     counts and gathers the segments into the head's ranges in ascending cluster order, adds
//     sinks and window; the last head to finish plans the sparse kernel's work (chunk size from
//     the total kept keys, per-head chunk prefix sums).
// Counters are restored to zero by the kernel itself, so one zeroing at workspace creation
// suffices.
#pragma once

#include "kernels/attention_types.cuh"

namespace squeeze::gpu {

constexpr int kLookupMaxBlocksPerHead = 1024;  // so at most 1024 * 1024 clusters per head

struct LookupPlan {
  int clusters_per_block = 0;  // multiple of 64, at most 1024
  int blocks_per_head = 0;     // ceil(max_clusters / clusters_per_block), in [1, 1024]
  int logit_stride = 0;        // >= max_clusters, multiple of 4
};

// Clusters per CTA so that B * Hkv heads of up to max_clusters centroids make about two waves
// of `concurrent_ctas`.
LookupPlan PlanCentroidLookup(int batch, int num_kv_heads, int max_clusters, int concurrent_ctas);

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
  float* logits = nullptr;     // [B * Hkv][G][logit_stride]
  float* block_max = nullptr;  // [B * Hkv][blocks_per_head][G]
  float* block_den = nullptr;  // [B * Hkv][blocks_per_head][G]
  // Per-block compacted kept clusters: id, storage row, keys before it in its block.
  int32_t* seg_cluster = nullptr;              // [B * Hkv][logit_stride]
  int32_t* seg_row = nullptr;                  // [B * Hkv][logit_stride]
  int32_t* seg_key = nullptr;                  // [B * Hkv][logit_stride]
  unsigned long long* block_counts = nullptr;  // [B * Hkv][blocks_per_head] (keys << 32 | kept)
  uint32_t* counters = nullptr;  // [B * Hkv + 1]; zero before the first launch, zero after each
  // Optional [B * Hkv][sel.cluster_stride]: every cluster's score computed elsewhere (prefill:
  // the mean over many query rows, kernels/squeezed_prefill.cuh). The score launch is then
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
  // Sparse work plan: at most about target_chunks chunks (a multiple of the sparse grid);
  // never more than max_chunks (chunk_info[2] flags a plan that could not fit).
  int target_chunks = 0;
  int max_chunks = 0;
};

cudaError_t LaunchCentroidLookup(const CentroidLookupParams& p, cudaStream_t stream);

}  // namespace squeeze::gpu
