// Fused multi-query cluster scores: the selection scores of a multi-token step against a
// registered context (kernels/squeeze/expand_selection.cuh, steps 1-3) without the logits in
// memory. For every KV head h (grid.y) with its R = tokens * G query rows (row r: token r / G,
// query head h * G + r % G) and its C clusters (bf16 centroids, sizes N_c):
//   pass 1, row statistics: m_r = max_c s_rc, l_r = sum_c N_c exp(s_rc - m_r)
//   pass 2, column means:   score_c = (1 / R) sum_r exp(s_rc - m_r) / l_r
// with s_rc = scale * q_r . centroid_c recomputed by both passes on tensor cores (mma.sync
// m16n8k16, or wgmma on Hopper: cluster_scores_sm90.cu; bf16 in, fp32 accumulate). The [R][C]
// logits (107 MB per KV head for a 1K-token input against 6,554 clusters) are never written; each
// pass reads the queries and centroids once per tile. Every sum has a fixed order, so results are
// deterministic. Plain C++ header; kernels in cluster_scores.cu.
//
// CPU reference: ClusterScorer::Average (engine/squeeze/cluster_scores.h), the same math; tested
// in tests/gpu/cluster_scores_test.cc.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/common/types.cuh"

namespace squeeze::gpu {

// Which kernel runs: kAuto takes the mma.sync kernel (cluster_scores.cu), measured faster on an
// H100 than the first wgmma version (bench/RESULTS.md); kWgmma the wgmma kernel
// (cluster_scores_sm90.cu; sm_90, d 64 or 128, else cudaErrorInvalidValue), whose tree-summed
// version is to be measured before kAuto takes it.
enum class ClusterScoresImpl { kAuto, kMmaSync, kWgmma };

struct ClusterScoresParams {
  int num_heads = 0;   // KV heads, <= 65535
  int num_tokens = 0;  // query tokens (>= 1)
  int group = 0;       // G query heads per KV head
  int head_dim = 0;    // 64, 96 or 128
  float scale = 0.0f;  // logit scale, 1/sqrt(d)
  // Queries, bf16: row (t, g) of KV head h at q + t * q_token_stride + (h * G + g) * head_dim
  // (16-byte aligned rows).
  const bf16* q = nullptr;
  int64_t q_token_stride = 0;
  // [num_heads] device descriptors: bf16 centroids [num_clusters][head_dim] (16-byte aligned),
  // sizes [num_clusters] (>= 1); num_clusters may differ per head (0: the head is skipped).
  const SqueezeHeadDesc* heads = nullptr;
  int max_clusters = 0;        // >= every head's num_clusters (sizes the second pass's grid)
  float* row_stats = nullptr;  // workspace, ClusterScoresWorkspaceBytes
  float* scores = nullptr;     // [num_heads][score_stride]; columns >= num_clusters untouched
  int score_stride = 0;        // >= max_clusters
  // Optional (hierarchical level): only the clusters candidates[h * candidate_stride + i],
  // i < num_candidates[h] (device; ids < num_clusters) take part, in the row statistics and in
  // the scores, which are written at the candidates' ids; other columns are left as they are.
  const int32_t* candidates = nullptr;
  const int32_t* num_candidates = nullptr;
  int64_t candidate_stride = 0;
  ClusterScoresImpl impl = ClusterScoresImpl::kAuto;
};

size_t ClusterScoresWorkspaceBytes(int num_heads, int num_tokens, int group);

// Both passes; never allocates or synchronises; cudaErrorInvalidValue on bad arguments.
cudaError_t LaunchClusterScores(const ClusterScoresParams& p, cudaStream_t stream);

// Whether the wgmma kernel can run head dim d on the current device (compute capability 9.0).
bool ClusterScoresWgmmaSupported(int head_dim);

namespace detail {
// The wgmma kernel, arguments already validated by LaunchClusterScores.
cudaError_t LaunchClusterScoresSm90(const ClusterScoresParams& p, cudaStream_t stream);
}  // namespace detail

}  // namespace squeeze::gpu
