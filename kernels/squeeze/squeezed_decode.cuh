// One Squeezed Attention decode step for one layer, all on the device in two launches (no host
// sync; capturable in a CUDA graph):
//   1. centroid lookup + threshold + ranges                       -> SqueezeSelection
//      (one launch when the lookup's CTAs all fit on the GPU at once, else two)
//   2. attention over the kept fixed-context ranges and the dynamic KV (user input + generated
//      tokens, the new token included) in chunks of equal size (planned by every CTA from the
//      selection), and the exact LSE merge of each head's chunks by the CTA finishing its last
//      one                                                        -> out [B][Hq][d], lse [B][Hq]
// The plan (host) fixes every grid from upper bounds, so it stays valid while lengths, kept
// counts and thresholds change from step to step.
//
// CPU reference: SqueezedFixedContextAttention::Select (engine/squeeze/selection.h), then
// AttentionPartial and MergeAttentionPartials (engine/backend/attention_reference.h); tested in
// tests/gpu/attention_kernels_test.cc (SqueezedDecode); LaunchSelectFromScores and
// LaunchLookupFromQueries (the squeezed prefill, the hierarchical coarse level) through
// tests/gpu/cuda_model_test.cc (DeviceSqueezedSelectionMatchesCpu,
// DeviceHierarchicalSelectionMatchesCpu).
#pragma once

#include "kernels/common/types.cuh"
#include "kernels/squeeze/centroid_lookup.cuh"

namespace squeeze::gpu {

struct SqueezedDecodeShape {
  int batch = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int max_dynamic_len = 0;          // bound on DecodeKv::len of the dynamic part (0: none)
  int max_clusters = 0;             // bound on SqueezeHeadDesc::num_clusters
  int64_t max_fixed_rows = 0;       // bound on sum over sequences of the fixed context's num_rows
  int max_context_rows = 0;         // bound on any one fixed context's num_rows (0: max_fixed_rows)
  bool with_scores = false;         // keep every cluster's score in the workspace (tests, stats)
  int sparse_waves = 0;             // waves of the attention kernel's persistent grid (0: default)
  bool one_launch_lookup = true;    // false: always the two-launch lookup (tests, comparisons)
  bool programmatic_launch = true;  // the attention kernel launched as the lookup's dependent
};

constexpr int kDefaultSparseWaves = 1;

struct SqueezedDecodePlan {
  SqueezedDecodeShape shape;
  LookupPlan lookup;
  int target_chunks = 0;
  int max_chunks = 0;
  int sparse_grid = 0;
  // Workspace layout, byte offsets from the (256-byte aligned) base. counters: the lookup's
  // (CentroidLookupParams::counters) then the attention kernel's [B * Hkv], counter_bytes in
  // all; the kernels leave them zero.
  size_t counters = 0, counter_bytes = 0;
  size_t logits = 0, block_max = 0, block_den = 0;
  size_t seg_cluster = 0, seg_row = 0, seg_key = 0, block_counts = 0;
  size_t row_begin = 0, key_begin = 0, num_ranges = 0, kept_keys = 0;
  size_t kept_clusters = 0, num_kept_clusters = 0, scores = 0, range_of_key = 0;
  size_t chunk_begin = 0, chunk_info = 0;
  size_t sparse_out = 0, sparse_lse = 0;
  size_t workspace_bytes = 0;
};

// Plans grids (occupancy read from the current device) and the workspace layout.
cudaError_t PlanSqueezedDecode(const SqueezedDecodeShape& shape, SqueezedDecodePlan* plan);

// Zeroes the kernels' counters; call once after allocating the workspace (the kernels leave
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
};

// Stages of the step, for timing them apart (a later stage reads what an earlier launch of the
// earlier stages left in the workspace).
enum SqueezedDecodeStage : unsigned {
  kStageLookup = 1u,  // centroid lookup, selection
  kStageAttend = 2u,  // attention over the kept ranges and the dynamic KV, merged into out / lse
  kStageAll = 3u,
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
