// Squeezed Attention of single sequences with the selection made on the device
// (ContextAttentionPolicy::Kind::kSqueezed), flat or hierarchical:
//   decode     one token per sequence, B sequences batched: centroid lookup, threshold, sparse
//              attention over the kept clusters and dense attention over each sequence's
//              dynamic KV, merged, in two launches (kernels/squeeze/squeezed_decode.cuh);
//   prefill    a multi-token step's fixed part: the cluster scores averaged over all query rows
//              (the fused two-pass tensor-core kernel, kernels/squeeze/cluster_scores.cuh), the
//              threshold, and the tensor-core prefill kernel over the kept rows in place.
// Hierarchical: the coarse lookup narrows each head to its candidate fine clusters first.
// Per-step budget policy (flat): every cluster is scored first, the threshold of each sequence is
// found from its scores (kernels/squeeze/step_budget.cuh), then the selection and the attention
// run as usual (decode: four launches instead of two). The rows kept per KV head reach each call's
// kept_rows (and candidates) at the next sync; no host synchronisation inside.
#pragma once

#include <map>
#include <memory>
#include <span>
#include <tuple>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/backend/cuda/cuda_device.h"
#include "engine/backend/cuda/resident_contexts.h"
#include "kernels/squeeze/squeezed_decode.cuh"

namespace squeeze {

class SqueezedAttention {
 public:
  SqueezedAttention(CudaDevice& dev, ResidentContexts& contexts) : dev_(dev), contexts_(contexts) {}

  // Decode calls (one token each, all flat, all hierarchical or all flat per-step) of one layer;
  // each writes its own out.
  void Decode(std::span<const AttentionParams* const> calls);
  // The fixed part of a multi-token call into out [n][Hq][d] and lse [n][Hq].
  void FixedPrefill(const AttentionParams& p, float* out, float* lse);

 private:
  // The decode plan and workspace for these bounds, rounded up to powers of two so that steps
  // reuse them; made on first use.
  bool PlanFor(int hq, int hkv, int d, int batch, int max_dyn, int max_clusters, int64_t total_rows,
               int max_rows, const gpu::SqueezedDecodePlan** plan, void** workspace,
               bool with_scores = false);
  // The per-step policy's threshold of each of B sequences from its clusters' scores
  // ([B * Hkv][stride]) and its budget ([B] device) into tau ([B] device, not `budget`).
  void StepThresholds(int B, int hkv, const gpu::SqueezeHeadDesc* dev_heads, const float* scores,
                      int stride, const float* budget, float* tau);
  // Kept rows (or candidates) per KV head of `calls.size()` selections ([calls * Hkv] device)
  // -> each call's `field` at the next sync.
  void ReportToHost(const int32_t* counts, std::span<const AttentionParams* const> calls,
                    int32_t* AttentionKeys::*field);
  void ClusterMeanScores(const AttentionParams& p, const void* q_bf16,
                         std::span<const gpu::SqueezeHeadDesc> heads,
                         const gpu::SqueezeHeadDesc* dev_heads, int stride, float* scores,
                         const int32_t* cand, const int32_t* cand_count, int64_t cand_stride);
  bool CoarseCandidates(std::span<const AttentionParams* const> calls, const float* q,
                        const void* q_bf16, const int32_t** ids, const int32_t** counts,
                        int64_t* stride);
  bool HeadDescs(const AttentionParams& p, gpu::SqueezeHeadDesc* out, int* max_clusters,
                 bool coarse = false) {
    return contexts_.HeadDescs(p.fixed.policy.squeezed.tables, p.fixed.layer, p.fixed.kv,
                               p.shape.num_kv_heads, coarse, out, max_clusters);
  }

  CudaDevice& dev_;
  ResidentContexts& contexts_;
  struct Plan {
    gpu::SqueezedDecodePlan plan;
    std::unique_ptr<Buffer> workspace;
  };
  std::map<std::tuple<int, int, int, int, int, int, int64_t, int, bool>, Plan> plans_;
  std::vector<gpu::SqueezeHeadDesc> head_desc_;
  std::vector<void*> report_dst_;  // each call's kept-rows (or candidates) destination
};

}  // namespace squeeze
