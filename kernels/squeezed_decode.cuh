// One Squeezed Attention decode step for one layer, all on the device (no host sync; the whole
// sequence of launches is capturable in a CUDA graph):
//   1. dense split-KV attention over each sequence's dynamic KV (user input + generated tokens,
//      the new token included)                                   -> dense partials
//   2. centroid lookup + threshold + compaction + sparse plan    -> SqueezeSelection
//   3. sparse attention over the kept fixed-context ranges       -> sparse partials
//   4. exact LSE merge of both partial sets                      -> out [B][Hq][d], lse [B][Hq]
// The plan (host) fixes every grid from upper bounds, so it stays valid while lengths, kept
// counts and thresholds change from step to step.
#pragma once

#include "kernels/attention_types.cuh"
#include "kernels/centroid_lookup.cuh"

namespace squeeze::gpu {

struct SqueezedDecodeShape {
  int batch = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int max_dynamic_len = 0;     // bound on DecodeKv::len of the dynamic part (0: none)
  int max_clusters = 0;        // bound on SqueezeHeadDesc::num_clusters
  int64_t max_fixed_rows = 0;  // bound on sum over sequences of the fixed context's num_rows
  int max_context_rows = 0;    // bound on any one fixed context's num_rows (0: max_fixed_rows)
  bool with_scores = false;    // keep every cluster's score in the workspace (tests, stats)
};

struct SqueezedDecodePlan {
  SqueezedDecodeShape shape;
  DecodeSplitPlan dense;  // dynamic part
  LookupPlan lookup;
  int target_chunks = 0;
  int max_chunks = 0;
  int sparse_grid = 0;
  // Workspace layout, byte offsets from the (256-byte aligned) base.
  size_t dense_out = 0, dense_lse = 0;
  size_t logits = 0, block_max = 0, block_den = 0, counters = 0;
  size_t seg_cluster = 0, seg_row = 0, seg_key = 0, block_counts = 0;
  size_t row_begin = 0, key_begin = 0, num_ranges = 0, kept_keys = 0;
  size_t kept_clusters = 0, num_kept_clusters = 0, scores = 0, range_of_key = 0;
  size_t chunk_begin = 0, chunk_info = 0;
  size_t sparse_out = 0, sparse_lse = 0;
  size_t workspace_bytes = 0;
};

// Plans grids (occupancy read from the current device) and the workspace layout.
cudaError_t PlanSqueezedDecode(const SqueezedDecodeShape& shape, SqueezedDecodePlan* plan);

// Zeroes the lookup's counters; call once after allocating the workspace (the kernels leave
// them zero).
cudaError_t InitSqueezedDecodeWorkspace(const SqueezedDecodePlan& plan, void* workspace,
                                        cudaStream_t stream);

// The selection produced by the last launch (device pointers into the workspace).
SqueezeSelection SelectionInWorkspace(const SqueezedDecodePlan& plan, void* workspace);

struct SqueezedDecodeParams {
  float scale = 0.0f;                      // 1/sqrt(d)
  const float* q = nullptr;                // [B][Hq][d] fp32, post-RoPE
  const DecodeKv* dynamic_kv = nullptr;    // [B] device; nullptr: no dynamic part
  const SqueezeHeadDesc* heads = nullptr;  // [B * Hkv] device: fixed context per (seq, head)
  bool centroids_bf16 = false;
  const float* tau = nullptr;  // [B] device: tau(budget) of each sequence's context
  void* out = nullptr;         // [B][Hq][d]
  bool out_bf16 = false;
  float* lse = nullptr;  // [B][Hq] natural log; may be nullptr
  // Optional, hierarchical: the fine clusters each (sequence, head) may keep, from a coarse
  // lookup (CentroidLookupParams::candidates).
  const int32_t* candidates = nullptr;
  const int32_t* num_candidates = nullptr;  // [B * Hkv]
  int64_t candidate_stride = 0;
  // Optional: run the dynamic part on side_stream, concurrently with the lookup and the sparse
  // kernel (it is small and latency-bound). fork_event and join_event (created by the caller,
  // cudaEventDisableTiming) are recorded here; all three must be set to take effect.
  cudaStream_t side_stream = nullptr;
  cudaEvent_t fork_event = nullptr;
  cudaEvent_t join_event = nullptr;
};

// Stages of the step, for timing them apart (a later stage reads what an earlier launch of the
// earlier stages left in the workspace).
enum SqueezedDecodeStage : unsigned {
  kStageDynamic = 1u,  // dense partials over the dynamic KV
  kStageLookup = 2u,   // centroid lookup, selection, sparse plan
  kStageSparse = 4u,   // sparse partials over the kept ranges
  kStageCombine = 8u,  // LSE merge into out / lse
  kStageAll = 15u,
};

// The selection stage alone, from cluster scores computed elsewhere ([B * Hkv][cluster_stride
// of SelectionInWorkspace], e.g. the mean over a prefill's query rows): threshold, compaction,
// ranges with sinks and window, into the workspace's SqueezeSelection.
// With candidates (hierarchical), only they are thresholded; scores are read at their ids.
cudaError_t LaunchSelectFromScores(const SqueezedDecodePlan& plan, const SqueezeHeadDesc* heads,
                                   const float* tau, const float* scores, void* workspace,
                                   cudaStream_t stream, const int32_t* candidates = nullptr,
                                   const int32_t* num_candidates = nullptr,
                                   int64_t candidate_stride = 0);

// The lookup stage alone, from one query per sequence (q [B][Hq][d] fp32): centroid scores,
// threshold, ranges into the workspace's SqueezeSelection. The coarse level of a hierarchical
// lookup runs through it (its "rows" are fine clusters).
cudaError_t LaunchLookupFromQueries(const SqueezedDecodePlan& plan, float scale, const float* q,
                                    const SqueezeHeadDesc* heads, bool centroids_bf16,
                                    const float* tau, void* workspace, cudaStream_t stream);

cudaError_t LaunchSqueezedDecode(const SqueezedDecodePlan& plan, const SqueezedDecodeParams& p,
                                 void* workspace, cudaStream_t stream, unsigned stages = kStageAll);

}  // namespace squeeze::gpu
