// Squeezed Attention decode step: plan, workspace layout and launch sequence
// (see squeezed_decode.cuh).
#include <algorithm>

#include "kernels/decode_attention.cuh"
#include "kernels/dispatch.cuh"
#include "kernels/sparse_decode_attention.cuh"
#include "kernels/squeezed_decode.cuh"

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
  int dense_ctas = 0, sparse_ctas = 0;
  cudaError_t err = DecodeAttentionConcurrentCtas(s.head_dim, G, &dense_ctas);
  if (err != cudaSuccess) return err;
  err = SparseDecodeConcurrentCtas(s.head_dim, G, &sparse_ctas);
  if (err != cudaSuccess) return err;

  SqueezedDecodePlan p;
  p.shape = s;
  p.dense = PlanDecodeSplits(s.batch, s.num_kv_heads, s.max_dynamic_len, dense_ctas);
  p.lookup = PlanCentroidLookup(s.batch, s.num_kv_heads, s.max_clusters, dense_ctas);
  const int64_t heads = int64_t{s.batch} * s.num_kv_heads;
  p.target_chunks = 4 * sparse_ctas;  // four waves of the persistent grid
  const int64_t max_kept = s.max_fixed_rows * s.num_kv_heads;
  p.max_chunks =
      static_cast<int>(std::max<int64_t>(p.target_chunks, (max_kept + kSparseMaxChunkKeys - 1) /
                                                              kSparseMaxChunkKeys) +
                       heads);
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
  const size_t dense_slots =
      s.max_dynamic_len > 0 ? DecodePartialSlots(s.batch, s.num_kv_heads, p.dense) : 0;
  p.dense_out = take(dense_slots * G * D * sizeof(float));
  p.dense_lse = take(dense_slots * G * sizeof(float));
  p.logits = take(bh * G * p.lookup.logit_stride * sizeof(float));
  p.block_max = take(bh * p.lookup.blocks_per_head * G * sizeof(float));
  p.block_den = take(bh * p.lookup.blocks_per_head * G * sizeof(float));
  p.counters = take((bh + 1) * sizeof(uint32_t));
  p.seg_cluster = take(bh * p.lookup.logit_stride * sizeof(int32_t));
  p.seg_row = take(bh * p.lookup.logit_stride * sizeof(int32_t));
  p.seg_key = take(bh * p.lookup.logit_stride * sizeof(int32_t));
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
  const size_t heads = static_cast<size_t>(plan.shape.batch) * plan.shape.num_kv_heads;
  return cudaMemsetAsync(At<char>(workspace, plan.counters), 0, (heads + 1) * sizeof(uint32_t),
                         stream);
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
  l.target_chunks = plan.target_chunks;
  l.max_chunks = plan.max_chunks;
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
  const bool dynamic = p.dynamic_kv != nullptr && s.max_dynamic_len > 0;
  const bool run_dynamic = dynamic && (stages & kStageDynamic);
  const bool side =
      run_dynamic && p.side_stream != nullptr && p.fork_event != nullptr && p.join_event != nullptr;
  cudaError_t err = cudaSuccess;
  if (side) {  // fork: the side stream starts after everything already queued on `stream`
    err = cudaEventRecord(p.fork_event, stream);
    if (err != cudaSuccess) return err;
    err = cudaStreamWaitEvent(p.side_stream, p.fork_event, 0);
    if (err != cudaSuccess) return err;
  }
  if (run_dynamic) {
    DecodeAttentionParams d;
    d.batch = s.batch;
    d.num_q_heads = s.num_q_heads;
    d.num_kv_heads = s.num_kv_heads;
    d.head_dim = s.head_dim;
    d.scale = p.scale;
    d.q = p.q;
    d.kv = p.dynamic_kv;
    d.plan = plan.dense;
    d.partial_out = At<float>(ws, plan.dense_out);
    d.partial_lse = At<float>(ws, plan.dense_lse);
    err = LaunchDecodeAttentionPartials(d, side ? p.side_stream : stream);
    if (err != cudaSuccess) return err;
    if (side) {
      err = cudaEventRecord(p.join_event, p.side_stream);
      if (err != cudaSuccess) return err;
    }
  }

  const SqueezeSelection sel = SelectionInWorkspace(plan, ws);
  CentroidLookupParams l = LookupInWorkspace(plan, p.heads, p.tau, ws);
  l.scale = p.scale;
  l.q = p.q;
  l.centroids_bf16 = p.centroids_bf16;
  l.candidates = p.candidates;
  l.num_candidates = p.num_candidates;
  l.candidate_stride = p.candidate_stride;
  if (stages & kStageLookup) {
    err = LaunchCentroidLookup(l, stream);
    if (err != cudaSuccess) return err;
  }

  SparseDecodeParams sp;
  sp.batch = s.batch;
  sp.num_q_heads = s.num_q_heads;
  sp.num_kv_heads = s.num_kv_heads;
  sp.head_dim = s.head_dim;
  sp.scale = p.scale;
  sp.q = p.q;
  sp.heads = p.heads;
  sp.sel = sel;
  sp.max_chunks = plan.max_chunks;
  sp.grid = plan.sparse_grid;
  sp.partial_out = At<float>(ws, plan.sparse_out);
  sp.partial_lse = At<float>(ws, plan.sparse_lse);
  if (stages & kStageSparse) {
    err = LaunchSparseDecodeAttention(sp, stream);
    if (err != cudaSuccess) return err;
  }
  if (side) {  // join (also when the combine is not asked for: a capture must rejoin)
    err = cudaStreamWaitEvent(stream, p.join_event, 0);
    if (err != cudaSuccess) return err;
  }
  if (!(stages & kStageCombine)) return cudaSuccess;

  CombineParams c;
  c.batch = s.batch;
  c.num_q_heads = s.num_q_heads;
  c.num_kv_heads = s.num_kv_heads;
  c.head_dim = s.head_dim;
  if (dynamic) {
    c.dense_kv = p.dynamic_kv;
    c.dense_plan = plan.dense;
    c.dense_out = At<float>(ws, plan.dense_out);
    c.dense_lse = At<float>(ws, plan.dense_lse);
  }
  c.sparse_chunk_begin = sel.chunk_begin;
  c.sparse_max_chunks = plan.max_chunks;
  c.sparse_out = sp.partial_out;
  c.sparse_lse = sp.partial_lse;
  c.out = p.out;
  c.out_bf16 = p.out_bf16;
  c.lse = p.lse;
  return LaunchCombineAttention(c, stream);
}

}  // namespace squeeze::gpu
