// Squeezed Attention for a multi-token step (a user input prefilled against a registered
// context), all on the device. Per layer and KV head h of one sequence, with the n queries'
// G = Hq / Hkv heads of the group as the R = n * G query rows of the head:
//   1. logits L[r][c] = scale * q_r . centroid_c   (the caller: cuBLAS, bf16 in, fp32 out)
//   2. LaunchCentroidRowStats:  m_r = max_c L[r][c], inv_r = 1 / sum_c N_c exp(L[r][c] - m_r)
//   3. LaunchCentroidColumnMean: score_c = (1 / R) sum_r exp(L[r][c] - m_r) inv_r
//      (tokens may come in chunks: the launch adds a chunk's share into score)
//   Steps 1-3 over every cluster run fused, without the logits in memory, in
//   kernels/cluster_scores.cuh; the kernels below remain for candidate subsets (hierarchical).
//   4. LaunchSelectFromScores (squeezed_decode.cuh): score_c > tau -> kept ranges, sinks, window
//   5. LaunchExpandSelectionRows: the storage row of every kept key, in kept order
//   6. LaunchPrefillAttention (prefill_attention.cuh) with row_index / head_len: every query
//      against the kept rows, tensor cores, no causal mask.
// Same math as the CPU reference's multi-query scores (engine/squeeze/cluster_scores.h,
// ClusterScorer::Average): the mean over query rows of each row's size-weighted softmax over
// the centroids. Plain C++ header; kernels in squeezed_prefill.cu. Launchers never allocate or
// synchronise and return cudaErrorInvalidValue on bad arguments.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/attention_types.cuh"

namespace squeeze::gpu {

// Per row r < rows of logits [rows][ld] (first C columns used; ld >= C): row_max[r] and
// row_inv[r] as above, sizes [C] the cluster sizes (>= 1).
// Optional candidates (hierarchical level): only the columns candidates[0, *num_candidates)
// (device) take part, in the statistics and (below) in the scores, which are written at the
// candidates' ids; other columns of score are left as they are.
cudaError_t LaunchCentroidRowStats(const float* logits, int rows, int num_clusters, int ld,
                                   const int32_t* sizes, float* row_max, float* row_inv,
                                   cudaStream_t stream, const int32_t* candidates = nullptr,
                                   const int32_t* num_candidates = nullptr);

// Column splits of LaunchCentroidColumnMean's first pass; `partial` needs
// kColumnMeanSplits * num_clusters floats.
constexpr int kColumnMeanSplits = 32;

// score[c] (+)= weight * sum_{r < rows} exp(logits[r][c] - row_max[r]) * row_inv[r], c < C:
// `accumulate` adds to score, otherwise overwrites it. Deterministic (fixed summation order:
// kColumnMeanSplits row blocks summed in order).
cudaError_t LaunchCentroidColumnMean(const float* logits, int rows, int num_clusters, int ld,
                                     const float* row_max, const float* row_inv, float weight,
                                     bool accumulate, float* partial, float* score,
                                     cudaStream_t stream, const int32_t* candidates = nullptr,
                                     const int32_t* num_candidates = nullptr);

// For every (sequence, KV head) bh < num_heads and kept key i < sel.kept_keys[bh]:
// row_index[bh * row_index_stride + i] = the storage row of kept key i (sinks, kept clusters in
// ascending order, window, as the selection lists them). max_keys bounds every kept_keys (grid).
cudaError_t LaunchExpandSelectionRows(const SqueezeSelection& sel, int num_heads, int max_keys,
                                      int32_t* row_index, int64_t row_index_stride,
                                      cudaStream_t stream);

}  // namespace squeeze::gpu
