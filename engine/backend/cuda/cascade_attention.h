// Decode steps of several sequences that attend to the same registered context, cascade-style:
// the context's K/V is read once per step for all of them (kernels/attention/
// cascade_attention.cuh), each sequence's dynamic KV on its own (the dense decode kernel's
// partials), and the two merged per sequence by their log-sum-exp (LaunchCombineAttention).
//   dense     every sequence attends to every row of the context;
//   squeezed  (flat device selection) the group's queries are scored against the context's
//             centroids on tensor cores in one pass, each sequence keeps exactly the clusters its
//             own tau keeps, and every kept cluster is read once for all the sequences that kept
//             it (kernels/squeeze/group_selection.cuh); the rows each sequence kept per KV head
//             reach its call's kept_rows at the next sync.
// No host synchronisation inside; queries and outputs that are not contiguous rows are gathered
// into and scattered out of one array.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/backend/cuda/cuda_device.h"
#include "engine/backend/cuda/dense_attention.h"
#include "engine/backend/cuda/resident_contexts.h"

namespace squeeze {

class CascadeAttention {
 public:
  // Sequences per group (the key masks are 64 bits); a larger group runs in several.
  static constexpr int kMaxGroup = 64;

  CascadeAttention(CudaDevice& dev, ResidentContexts& contexts, DenseAttention& dense)
      : dev_(dev), contexts_(contexts), dense_(dense) {}

  // Whether `p` can join a cascade group: one new token against a context, and either no
  // selector (dense) or a flat Squeezed Attention policy (selected on the device).
  static bool Eligible(const AttentionParams& p);
  static bool Squeezed(const AttentionParams& p) { return p.fixed.selector != nullptr; }

  // One group: 2..kMaxGroup eligible calls of one layer over the same context K/V, all dense or
  // all squeezed; each writes its own out. kernel: the kernel of a dense group.
  using Kernel = Backend::ExecutionOptions::CascadeKernel;
  void Run(std::span<const AttentionParams* const> calls, Kernel kernel = Kernel::kAuto);

  // Context rows the squeezed groups read since the last call (the union of what their
  // sequences kept, per KV head and layer) and the rows those heads hold; valid after the
  // device's Synchronize, which lands the counts.
  struct KeyStats {
    int64_t rows_read = 0;
    int64_t rows_total = 0;
  };
  KeyStats TakeKeyStats();

 private:
  int CascadeCtas(int head_dim);

  CudaDevice& dev_;
  ResidentContexts& contexts_;
  DenseAttention& dense_;
  int cascade_ctas_[3] = {0, 0, 0};  // head dims 64, 96, 128
  std::vector<gpu::SqueezeHeadDesc> heads_;
  std::vector<gpu::DecodeKv> dyn_;
  std::vector<float> tau_;
  std::vector<const float*> q_src_;
  std::vector<float*> out_dst_;
  std::vector<const float*> q_dst_, out_src_;
  std::vector<void*> kept_dst_;  // each call's kept-rows destination on the host
  // Per squeezed group: the union sizes per KV head (landing at the next sync) and the rows of
  // the context heads.
  struct PendingKeys {
    std::unique_ptr<int32_t[]> num_keys;
    int heads = 0;
    int64_t rows_total = 0;
    uint64_t epoch = 0;  // the device's sync epoch when queued: landed once it has moved on
  };
  // Folds the landed counts into landed_keys_ (so the list stays one step long).
  void FoldLandedKeys();
  std::vector<PendingKeys> pending_keys_;
  KeyStats landed_keys_;
};

}  // namespace squeeze
