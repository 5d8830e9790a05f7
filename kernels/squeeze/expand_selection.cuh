// Squeezed Attention for a multi-token step (a user input prefilled against a registered
// context), all on the device. Per layer and KV head h of one sequence, with the n queries'
// G = Hq / Hkv heads of the group as the R = n * G query rows of the head:
//   1. the clusters' scores, LaunchClusterScores (cluster_scores.cuh): per query row
//      m_r = max_c L[r][c] and l_r = sum_c N_c exp(L[r][c] - m_r) with
//      L[r][c] = scale * q_r . centroid_c, then score_c = (1 / R) sum_r exp(L[r][c] - m_r) / l_r
//      (fused, on tensor cores; the logits are never stored)
//   2. LaunchSelectFromScores (squeezed_decode.cuh): score_c > tau -> kept ranges, sinks, window
//   3. LaunchExpandSelectionRows: the storage row of every kept key, in kept order
//   4. LaunchPrefillAttention (prefill_attention.cuh) with row_index / head_len: every query
//      against the kept rows, tensor cores, no causal mask.
// Same math as the CPU reference's multi-query scores (engine/squeeze/cluster_scores.h,
// ClusterScorer::Average): the mean over query rows of each row's size-weighted softmax over
// the centroids. Plain C++ header; kernels in expand_selection.cu. Launchers never allocate or
// synchronise and return cudaErrorInvalidValue on bad arguments.
//
// CPU reference (LaunchExpandSelectionRows): the ranges SqueezedFixedContextAttention::Select
// lists, read in place by AttentionPartial (engine/backend/attention_reference.h); tested through
// the squeezed prefill in tests/gpu/cuda_model_test.cc (DeviceSqueezedSelectionMatchesCpu,
// DeviceHierarchicalSelectionMatchesCpu).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/common/types.cuh"

namespace squeeze::gpu {

// For every (sequence, KV head) bh < num_heads and kept key i < sel.kept_keys[bh]:
// row_index[bh * row_index_stride + i] = the storage row of kept key i (sinks, kept clusters in
// ascending order, window, as the selection lists them). max_keys bounds every kept_keys (grid).
cudaError_t LaunchExpandSelectionRows(const SqueezeSelection& sel, int num_heads, int max_keys,
                                      int32_t* row_index, int64_t row_index_stride,
                                      cudaStream_t stream);

}  // namespace squeeze::gpu
