// Squeezed Attention decode step: plan, workspace layout and launch sequence
// (see squeezed_decode.cuh).
#include <algorithm>

#include "kernels/attention/sparse_decode_attention.cuh"
#include "kernels/common/dispatch.cuh"
#include "kernels/squeeze/squeezed_decode.cuh"

namespace squeeze::gpu {
namespace {

template <typename T>
T* At(void* base, size_t offset) {
  return reinterpret_cast<T*>(static_cast<char*>(base) + offset);
}

int KeyIndexStride(const SqueezedDecodeShape& s) {
  const int64_t rows = s.max_context_rows > 0 ? s.max_context_rows : s.max_fixed_rows;
  return static_cast<int>(
      std::max<int64_t>(1, (rows + kSparseKeyIndexStep - 1) / kSparseKeyIndexStep));
}

}  // namespace

cudaError_t PlanSqueezedDecode(const SqueezedDecodeShape& s, SqueezedDecodePlan* plan) {
  if (s.batch <= 0 || s.num_kv_heads <= 0 || s.num_q_heads % s.num_kv_heads != 0 ||
      s.max_clusters < 0 || s.max_fixed_rows < 0 || s.max_dynamic_len < 0 ||
      s.max_context_rows < 0) {
    return cudaErrorInvalidValue;
  }
  const int G = s.num_q_heads / s.num_kv_heads;
  int sparse_ctas = 0;
  cudaError_t err = SparseDecodeConcurrentCtas(s.head_dim, G, &sparse_ctas);
  if (err != cudaSuccess) return err;

  SqueezedDecodePlan p;
  p.shape = s;
  err = PlanCentroidLookup(s.batch, s.num_q_heads, s.num_kv_heads, s.head_dim, s.max_clusters,
                           s.one_launch_lookup, &p.lookup);
  if (err != cudaSuccess) return err;
  const int64_t heads = int64_t{s.batch} * s.num_kv_heads;
  p.target_chunks = (s.sparse_waves > 0 ? s.sparse_waves : kDefaultSparseWaves) * sparse_ctas;
  // Every head holds at most ceil(kept / chunk) + ceil(dynamic / chunk) <= keys / chunk + 2
  // chunks. The planner's whole waves stay under keys / kSparseMaxChunkKeys + target + 2 heads
  // (and it doubles the chunk up to kSparseMaxChunkKeys should they not).
  const int64_t max_keys =
      (s.max_fixed_rows + int64_t{s.batch} * s.max_dynamic_len) * s.num_kv_heads;
  p.max_chunks =
      static_cast<int>(std::max<int64_t>(p.target_chunks, (max_keys + kSparseMaxChunkKeys - 1) /
                                                              kSparseMaxChunkKeys) +
                       p.target_chunks + 2 * heads);
  p.sparse_grid = std::min(sparse_ctas, p.max_chunks);

  const size_t D = s.head_dim;
  const size_t bh = static_cast<size_t>(heads);
  const size_t range_stride = static_cast<size_t>(s.max_clusters) + 2;
  const size_t cluster_stride = std::max(s.max_clusters, 1);
  size_t off = 0;
  auto take = [&](size_t bytes) {
    const size_t at = off;
    off = detail::AlignUp(off + bytes, 256);
    return at;
  };
  p.counter_bytes = (bh * kLookupCounterStride + bh) * sizeof(uint32_t);
  p.counters = take(p.counter_bytes);
  // Logits and per-block segments: the two-launch lookup only.
  const size_t per_cluster = p.lookup.one_launch ? 0 : bh * p.lookup.logit_stride;
  p.logits = take(per_cluster * G * sizeof(float));
  p.block_max = take(bh * p.lookup.blocks_per_head * G * sizeof(float));
  p.block_den = take(bh * p.lookup.blocks_per_head * G * sizeof(float));
  p.seg_cluster = take(per_cluster * sizeof(int32_t));
  p.seg_row = take(per_cluster * sizeof(int32_t));
  p.seg_key = take(per_cluster * sizeof(int32_t));
  p.block_counts = take(bh * p.lookup.blocks_per_head * sizeof(unsigned long long));
  p.row_begin = take(bh * range_stride * sizeof(int32_t));
  p.key_begin = take(bh * (range_stride + 1) * sizeof(int32_t));
  p.num_ranges = take(bh * sizeof(int32_t));
  p.kept_keys = take(bh * sizeof(int32_t));
  p.kept_clusters = take(bh * cluster_stride * sizeof(int32_t));
  p.num_kept_clusters = take(bh * sizeof(int32_t));
  p.scores = take(s.with_scores ? bh * cluster_stride * sizeof(float) : 0);
  p.range_of_key = take(bh * KeyIndexStride(s) * sizeof(int32_t));
  p.chunk_begin = take((bh + 1) * sizeof(int32_t));
  p.chunk_info = take(4 * sizeof(int32_t));
  p.sparse_out = take(static_cast<size_t>(p.max_chunks) * G * D * sizeof(float));
  p.sparse_lse = take(static_cast<size_t>(p.max_chunks) * G * sizeof(float));
  p.workspace_bytes = off;
  *plan = p;
  return cudaSuccess;
}

cudaError_t InitSqueezedDecodeWorkspace(const SqueezedDecodePlan& plan, void* workspace,
                                        cudaStream_t stream) {
  return cudaMemsetAsync(At<char>(workspace, plan.counters), 0, plan.counter_bytes, stream);
}

SqueezeSelection SelectionInWorkspace(const SqueezedDecodePlan& plan, void* ws) {
  SqueezeSelection sel;
  sel.range_row_begin = At<int32_t>(ws, plan.row_begin);
  sel.range_key_begin = At<int32_t>(ws, plan.key_begin);
  sel.range_stride = plan.shape.max_clusters + 2;
  sel.num_ranges = At<int32_t>(ws, plan.num_ranges);
  sel.kept_keys = At<int32_t>(ws, plan.kept_keys);
  sel.kept_clusters = At<int32_t>(ws, plan.kept_clusters);
  sel.num_kept_clusters = At<int32_t>(ws, plan.num_kept_clusters);
  sel.cluster_stride = std::max(plan.shape.max_clusters, 1);
  sel.scores = plan.shape.with_scores ? At<float>(ws, plan.scores) : nullptr;
  sel.range_of_key = At<int32_t>(ws, plan.range_of_key);
  sel.key_index_stride = KeyIndexStride(plan.shape);
  sel.chunk_begin = At<int32_t>(ws, plan.chunk_begin);
  sel.chunk_info = At<int32_t>(ws, plan.chunk_info);
  return sel;
}

namespace {

// The lookup's parameters for a plan and its workspace: shapes, plan, workspace areas and the
// selection outputs; the caller sets the query or score inputs.
CentroidLookupParams LookupInWorkspace(const SqueezedDecodePlan& plan, const SqueezeHeadDesc* heads,
                                       const float* tau, void* ws) {
  const SqueezedDecodeShape& s = plan.shape;
  CentroidLookupParams l;
  l.batch = s.batch;
  l.num_q_heads = s.num_q_heads;
  l.num_kv_heads = s.num_kv_heads;
  l.head_dim = s.head_dim;
  l.heads = heads;
  l.tau = tau;
  l.plan = plan.lookup;
  l.logits = At<float>(ws, plan.logits);
  l.block_max = At<float>(ws, plan.block_max);
  l.block_den = At<float>(ws, plan.block_den);
  l.seg_cluster = At<int32_t>(ws, plan.seg_cluster);
  l.seg_row = At<int32_t>(ws, plan.seg_row);
  l.seg_key = At<int32_t>(ws, plan.seg_key);
  l.block_counts = At<unsigned long long>(ws, plan.block_counts);
  l.counters = At<uint32_t>(ws, plan.counters);
  l.sel = SelectionInWorkspace(plan, ws);
  return l;
}

}  // namespace

cudaError_t LaunchSelectFromScores(const SqueezedDecodePlan& plan, const SqueezeHeadDesc* heads,
                                   const float* tau, const float* scores, void* ws,
                                   cudaStream_t stream, const int32_t* candidates,
                                   const int32_t* num_candidates, int64_t candidate_stride) {
  if (ws == nullptr || scores == nullptr) return cudaErrorInvalidValue;
  CentroidLookupParams l = LookupInWorkspace(plan, heads, tau, ws);
  l.scores_in = scores;
  l.candidates = candidates;
  l.num_candidates = num_candidates;
  l.candidate_stride = candidate_stride;
  return LaunchCentroidLookup(l, stream);
}

cudaError_t LaunchLookupFromQueries(const SqueezedDecodePlan& plan, float scale, const float* q,
                                    const SqueezeHeadDesc* heads, bool centroids_bf16,
                                    const float* tau, void* ws, cudaStream_t stream) {
  if (ws == nullptr || q == nullptr) return cudaErrorInvalidValue;
  CentroidLookupParams l = LookupInWorkspace(plan, heads, tau, ws);
  l.scale = scale;
  l.q = q;
  l.centroids_bf16 = centroids_bf16;
  return LaunchCentroidLookup(l, stream);
}

cudaError_t LaunchSqueezedDecode(const SqueezedDecodePlan& plan, const SqueezedDecodeParams& p,
                                 void* ws, cudaStream_t stream, unsigned stages) {
  const SqueezedDecodeShape& s = plan.shape;
  if (ws == nullptr || p.q == nullptr || p.heads == nullptr || p.tau == nullptr ||
      p.out == nullptr) {
    return cudaErrorInvalidValue;
  }
  const DecodeKv* dynamic_kv = s.max_dynamic_len > 0 ? p.dynamic_kv : nullptr;
  if (stages & kStageLookup) {
    CentroidLookupParams l = LookupInWorkspace(plan, p.heads, p.tau, ws);
    l.scale = p.scale;
    l.q = p.q;
    l.centroids_bf16 = p.centroids_bf16;
    l.candidates = p.candidates;
    l.num_candidates = p.num_candidates;
    l.candidate_stride = p.candidate_stride;
    const cudaError_t err = LaunchCentroidLookup(l, stream);
    if (err != cudaSuccess) return err;
  }
  if (!(stages & kStageAttend)) return cudaSuccess;
  SparseDecodeParams sp;
  sp.batch = s.batch;
  sp.num_q_heads = s.num_q_heads;
  sp.num_kv_heads = s.num_kv_heads;
  sp.head_dim = s.head_dim;
  sp.scale = p.scale;
  sp.q = p.q;
  sp.heads = p.heads;
  sp.sel = SelectionInWorkspace(plan, ws);
  sp.dynamic_kv = dynamic_kv;
  sp.target_chunks = plan.target_chunks;
  sp.max_chunks = plan.max_chunks;
  sp.grid = plan.sparse_grid;
  sp.partial_out = At<float>(ws, plan.sparse_out);
  sp.partial_lse = At<float>(ws, plan.sparse_lse);
  sp.done = At<uint32_t>(ws, plan.counters) +
            static_cast<size_t>(s.batch) * s.num_kv_heads * kLookupCounterStride;
  sp.out = p.out;
  sp.out_bf16 = p.out_bf16;
  sp.lse = p.lse;
  // Only right behind the lookup: alone (kStageAttend) the previous kernel is not ours.
  sp.programmatic_launch = s.programmatic_launch && (stages & kStageLookup);
  return LaunchSparseDecodeAttention(sp, stream);
}

}  // namespace squeeze::gpu
