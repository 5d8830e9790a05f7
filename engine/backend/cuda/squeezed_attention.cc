#include "engine/backend/cuda/squeezed_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "engine/backend/cuda/dense_attention.h"
#include "kernels/attention/prefill_attention.cuh"
#include "kernels/ops/convert.cuh"
#include "kernels/ops/rows.cuh"
#include "kernels/squeeze/cluster_scores.cuh"
#include "kernels/squeeze/expand_selection.cuh"
#include "kernels/squeeze/step_budget.cuh"

namespace squeeze {
namespace {

using gpu::bf16;

size_t RoundUpPow2(size_t x, size_t at_least) {
  size_t v = at_least;
  while (v < x) v *= 2;
  return v;
}

// The prefill kernel's parameters for n queries (bf16) against the rows of a fixed context.
gpu::PrefillAttentionParams FixedPrefillParams(const AttentionShape& shape, const bf16* q,
                                               const KvSlice& kv, float* out, float* lse) {
  gpu::PrefillAttentionParams pp;
  pp.num_tokens = shape.num_queries;
  pp.num_q_heads = shape.num_q_heads;
  pp.num_kv_heads = shape.num_kv_heads;
  pp.head_dim = shape.head_dim;
  pp.scale = shape.scale;
  pp.q = q;
  pp.kv.k = static_cast<const bf16*>(kv.k);
  pp.kv.v = static_cast<const bf16*>(kv.v);
  pp.kv.head_stride = static_cast<int64_t>(kv.head_stride);
  pp.kv.len = kv.num_rows;
  pp.out = out;
  pp.out_bf16 = false;
  pp.lse = lse;
  pp.causal = false;
  return pp;
}

}  // namespace

// The squeezed plan and workspace for these bounds, rounded up to powers of two so that steps
// reuse them; made on first use.
bool SqueezedAttention::PlanFor(int hq, int hkv, int d, int batch, int max_dyn, int max_clusters,
                                int64_t total_rows, int max_rows,
                                const gpu::SqueezedDecodePlan** plan, void** workspace,
                                bool with_scores) {
  const auto key = std::make_tuple(hq, hkv, d, batch, static_cast<int>(RoundUpPow2(max_dyn, 256)),
                                   static_cast<int>(RoundUpPow2(max_clusters, 64)),
                                   static_cast<int64_t>(RoundUpPow2(total_rows, 1024)),
                                   static_cast<int>(RoundUpPow2(max_rows, 1024)), with_scores);
  auto it = plans_.find(key);
  if (it == plans_.end()) {
    Plan entry;
    gpu::SqueezedDecodeShape shape;
    shape.batch = batch;
    shape.num_q_heads = hq;
    shape.num_kv_heads = hkv;
    shape.head_dim = d;
    shape.max_dynamic_len = std::get<4>(key);
    shape.max_clusters = std::get<5>(key);
    shape.max_fixed_rows = std::get<6>(key);
    shape.max_context_rows = std::get<7>(key);
    shape.with_scores = with_scores;
    dev_.Check(gpu::PlanSqueezedDecode(shape, &entry.plan), "squeezed plan");
    if (!dev_.ok()) return false;
    auto ws = dev_.Allocate(entry.plan.workspace_bytes);
    if (!ws.ok()) {
      dev_.SetFault(ws.status());
      return false;
    }
    entry.workspace = *std::move(ws);
    dev_.Check(gpu::InitSqueezedDecodeWorkspace(entry.plan, entry.workspace->data(), dev_.stream()),
               "squeezed workspace");
    it = plans_.emplace(key, std::move(entry)).first;
  }
  *plan = &it->second.plan;
  *workspace = it->second.workspace->data();
  return true;
}

// Kept rows (or hierarchical candidates) per KV head of `calls.size()` selections
// ([calls * Hkv] device) -> each call's `field` at the next sync.
void SqueezedAttention::ReportToHost(const int32_t* counts,
                                     std::span<const AttentionParams* const> calls,
                                     int32_t* AttentionKeys::*field) {
  const size_t heads = calls[0]->shape.num_kv_heads;
  report_dst_.resize(calls.size());
  for (size_t b = 0; b < calls.size(); ++b) report_dst_[b] = calls[b]->fixed.*field;
  dev_.CopyRowsToHostAtSync(report_dst_, counts, sizeof(int32_t) * heads);
}

// The per-step policy's threshold of each of B sequences from its clusters' scores
// ([B * Hkv][stride]) and its budget ([B] device) into tau ([B] device, not `budget`).
void SqueezedAttention::StepThresholds(int B, int hkv, const gpu::SqueezeHeadDesc* dev_heads,
                                       const float* scores, int stride, const float* budget,
                                       float* tau) {
  gpu::StepBudgetParams sb;
  sb.batch = B;
  sb.num_kv_heads = hkv;
  sb.heads = dev_heads;
  sb.scores = scores;
  sb.score_stride = stride;
  sb.budget = budget;
  sb.tau = tau;
  sb.workspace = dev_.Scratch(kStepBudgetWs, gpu::StepBudgetWorkspaceBytes(B));
  if (sb.workspace == nullptr) return;
  dev_.Check(gpu::LaunchStepBudgetThreshold(sb, dev_.stream()), "per-step threshold");
}

// Mean cluster scores of one call's n query rows (qb: its queries in bf16), per KV head h into
// scores[h * stride + c] for the clusters of heads[h], by the fused two-pass tensor-core kernel
// (kernels/squeeze/cluster_scores.cuh: row statistics, then column means). With candidates, only
// theirs count (denominators included) and only theirs are written.
void SqueezedAttention::ClusterMeanScores(const AttentionParams& p, const void* q_bf16,
                                          std::span<const gpu::SqueezeHeadDesc> heads,
                                          const gpu::SqueezeHeadDesc* dev_heads, int stride,
                                          float* scores, const int32_t* cand,
                                          const int32_t* cand_count, int64_t cand_stride) {
  const AttentionShape& s = p.shape;
  const int n = s.num_queries, hq = s.num_q_heads, hkv = s.num_kv_heads, d = s.head_dim;
  const int G = hq / hkv;
  const auto* qb = static_cast<const bf16*>(q_bf16);
  int max_c = 1;
  for (const gpu::SqueezeHeadDesc& e : heads) max_c = std::max(max_c, e.num_clusters);
  // The fused two-pass kernel over all heads, no logits in memory
  // (kernels/squeeze/cluster_scores.cuh); with candidates (hierarchical fine level) only they are
  // scored.
  auto* stats =
      static_cast<float*>(dev_.Scratch(kRowStats, gpu::ClusterScoresWorkspaceBytes(hkv, n, G)));
  if (stats == nullptr) return;
  gpu::ClusterScoresParams cs;
  cs.num_heads = hkv;
  cs.num_tokens = n;
  cs.group = G;
  cs.head_dim = d;
  cs.scale = s.scale;
  cs.q = qb;
  cs.q_token_stride = static_cast<int64_t>(hq) * d;
  cs.heads = dev_heads;
  cs.max_clusters = max_c;
  cs.row_stats = stats;
  cs.scores = scores;
  cs.score_stride = stride;
  cs.candidates = cand;
  cs.num_candidates = cand_count;
  cs.candidate_stride = cand_stride;
  dev_.Check(gpu::LaunchClusterScores(cs, dev_.stream()), "cluster scores");
}

// Hierarchical selection, coarse level, for `calls` (all with a coarse level): the candidate
// fine clusters of every (call, KV head), ascending, into the kCandidates scratch
// ([calls * Hkv][*stride]) and their counts into kCandidateCounts ([calls * Hkv]), also
// reported to each call's `candidates`. Decode: q [B][Hq][d] fp32, scored by the lookup
// kernel; prefill (one call): qb, its queries in bf16, scored by ClusterMeanScores.
bool SqueezedAttention::CoarseCandidates(std::span<const AttentionParams* const> calls,
                                         const float* q, const void* q_bf16, const int32_t** ids,
                                         const int32_t** counts, int64_t* stride) {
  const int B = static_cast<int>(calls.size());
  const AttentionShape& s = calls[0]->shape;
  const int hq = s.num_q_heads, hkv = s.num_kv_heads, d = s.head_dim;
  std::vector<gpu::SqueezeHeadDesc> coarse(static_cast<size_t>(B) * hkv);
  std::vector<float> tau(B);
  int max_c1 = 1, max_fine = 1;
  for (int b = 0; b < B; ++b) {
    int c1 = 0;
    if (!HeadDescs(*calls[b], coarse.data() + static_cast<size_t>(b) * hkv, &c1,
                   /*coarse=*/true)) {
      return false;
    }
    max_c1 = std::max(max_c1, c1);
    for (int h = 0; h < hkv; ++h) {
      max_fine = std::max(max_fine, coarse[static_cast<size_t>(b) * hkv + h].num_rows);
    }
    tau[b] = calls[b]->fixed.policy.squeezed.coarse_threshold;
  }
  const gpu::SqueezedDecodePlan* plan = nullptr;
  void* ws = nullptr;
  if (!PlanFor(hq, hkv, d, B, 1, max_c1, int64_t{B} * max_fine, max_fine, &plan, &ws)) {
    return false;
  }
  const size_t desc_bytes = sizeof(gpu::SqueezeHeadDesc) * coarse.size();
  char* desc = static_cast<char*>(dev_.Scratch(kCoarseDesc, desc_bytes + sizeof(float) * B + 256));
  auto* cand = static_cast<int32_t*>(
      dev_.Scratch(kCandidates, sizeof(int32_t) * coarse.size() * static_cast<size_t>(max_fine)));
  auto* cand_count =
      static_cast<int32_t*>(dev_.Scratch(kCandidateCounts, sizeof(int32_t) * coarse.size()));
  if (desc == nullptr || cand == nullptr || cand_count == nullptr) return false;
  auto* dev_desc = reinterpret_cast<gpu::SqueezeHeadDesc*>(desc);
  auto* dev_tau = reinterpret_cast<float*>(desc + desc_bytes);
  dev_.CopyFromHost(dev_desc, coarse.data(), desc_bytes);
  dev_.CopyFromHost(dev_tau, tau.data(), sizeof(float) * B);
  const gpu::SqueezeSelection sel = gpu::SelectionInWorkspace(*plan, ws);
  if (q != nullptr) {
    dev_.Check(
        gpu::LaunchLookupFromQueries(*plan, s.scale, q, dev_desc, true, dev_tau, ws, dev_.stream()),
        "coarse lookup");
  } else {
    auto* scores =
        static_cast<float*>(dev_.Scratch(kClusterScores, sizeof(float) * hkv * sel.cluster_stride));
    if (scores == nullptr) return false;
    if (std::isfinite(tau[0])) {
      ClusterMeanScores(*calls[0], q_bf16, coarse, dev_desc, sel.cluster_stride, scores, nullptr,
                        nullptr, 0);
    } else {  // -inf keeps every coarse cluster, +inf none: nothing is read
      dev_.Check(
          cudaMemsetAsync(scores, 0, sizeof(float) * hkv * sel.cluster_stride, dev_.stream()),
          "cluster scores");
    }
    dev_.Check(gpu::LaunchSelectFromScores(*plan, dev_desc, dev_tau, scores, ws, dev_.stream()),
               "coarse selection");
  }
  dev_.Check(gpu::LaunchExpandSelectionRows(sel, static_cast<int>(coarse.size()), max_fine, cand,
                                            max_fine, dev_.stream()),
             "coarse candidates");
  dev_.Check(cudaMemcpyAsync(cand_count, sel.kept_keys, sizeof(int32_t) * coarse.size(),
                             cudaMemcpyDeviceToDevice, dev_.stream()),
             "coarse candidates");
  ReportToHost(cand_count, calls, &AttentionKeys::candidates);
  *ids = cand;
  *counts = cand_count;
  *stride = max_fine;
  return dev_.ok();
}

// Multi-token step against a fixed context with the selection made on the device
// (kernels/squeeze/expand_selection.cuh): mean cluster scores over every query row, threshold and
// ranges (hierarchical: among the candidates of the coarse level), then the tensor-core
// prefill kernel reads the kept rows in place. Writes the fixed part's out and lse.
void SqueezedAttention::FixedPrefill(const AttentionParams& p, float* out, float* lse) {
  const AttentionShape& s = p.shape;
  const int n = s.num_queries, hq = s.num_q_heads, hkv = s.num_kv_heads, d = s.head_dim;
  const int S = p.fixed.kv.num_rows;
  std::vector<gpu::SqueezeHeadDesc> heads(hkv);
  int max_clusters = 0;
  if (!HeadDescs(p, heads.data(), &max_clusters)) return;
  const size_t q_elems = static_cast<size_t>(n) * hq * d;
  auto* qb = static_cast<bf16*>(dev_.Scratch(kQBf16, q_elems * sizeof(bf16)));
  if (qb == nullptr) return;
  dev_.Check(gpu::LaunchF32ToBf16(p.q, qb, q_elems, dev_.stream()), "squeezed prefill queries");
  const int32_t* cand = nullptr;
  const int32_t* cand_count = nullptr;
  int64_t cand_stride = 0;
  const AttentionParams* one = &p;
  const std::span<const AttentionParams* const> calls(&one, 1);
  if (p.fixed.policy.squeezed.hierarchical &&
      !CoarseCandidates(calls, nullptr, qb, &cand, &cand_count, &cand_stride)) {
    return;
  }
  const gpu::SqueezedDecodePlan* planned = nullptr;
  void* ws = nullptr;
  if (!PlanFor(hq, hkv, d, 1, 1, std::max(max_clusters, 1), S, S, &planned, &ws)) return;
  const gpu::SqueezedDecodePlan& plan = *planned;
  const gpu::SqueezeSelection sel = gpu::SelectionInWorkspace(plan, ws);
  auto* scores =
      static_cast<float*>(dev_.Scratch(kClusterScores, sizeof(float) * hkv * sel.cluster_stride));
  auto* row_index = static_cast<int32_t*>(dev_.Scratch(kRowIndex, sizeof(int32_t) * hkv * S));
  char* desc =
      static_cast<char*>(dev_.Scratch(kSqueezeHeads, sizeof(gpu::SqueezeHeadDesc) * hkv + 256));
  if (scores == nullptr || row_index == nullptr || desc == nullptr) return;
  auto* dev_heads = reinterpret_cast<gpu::SqueezeHeadDesc*>(desc);
  auto* dev_tau = reinterpret_cast<float*>(desc + sizeof(gpu::SqueezeHeadDesc) * hkv);
  auto* dev_budget = dev_tau + 1;
  const SqueezedSelection& policy = p.fixed.policy.squeezed;
  const float tau[2] = {policy.threshold, policy.budget};  // per-step: replaced on the device
  dev_.CopyFromHost(dev_heads, heads.data(), sizeof(gpu::SqueezeHeadDesc) * hkv);
  dev_.CopyFromHost(dev_tau, tau, sizeof(tau));
  if (std::isfinite(policy.threshold)) {
    ClusterMeanScores(p, qb, heads, dev_heads, sel.cluster_stride, scores, cand, cand_count,
                      cand_stride);
    if (policy.per_step) {
      StepThresholds(1, hkv, dev_heads, scores, sel.cluster_stride, dev_budget, dev_tau);
    }
  } else {  // -inf keeps every cluster (or candidate), +inf none: no score is read
    dev_.Check(cudaMemsetAsync(scores, 0, sizeof(float) * hkv * sel.cluster_stride, dev_.stream()),
               "cluster scores");
  }
  dev_.Check(gpu::LaunchSelectFromScores(plan, dev_heads, dev_tau, scores, ws, dev_.stream(), cand,
                                         cand_count, cand_stride),
             "squeezed prefill selection");
  dev_.Check(gpu::LaunchExpandSelectionRows(sel, hkv, S, row_index, S, dev_.stream()),
             "squeezed prefill rows");

  gpu::PrefillAttentionParams pp = FixedPrefillParams(s, qb, p.fixed.kv, out, lse);
  pp.head_len = sel.kept_keys;
  pp.row_index = row_index;
  pp.row_index_stride = S;
  dev_.Check(gpu::LaunchPrefillAttention(pp, dev_.stream()), "squeezed prefill attention");
  ReportToHost(sel.kept_keys, calls, &AttentionKeys::kept_rows);
}

// Decode steps of B sequences with Squeezed Attention selected on the device, in one sequence
// of launches (kernels/squeeze/squeezed_decode.cuh): centroid lookup, threshold, sparse attention
// over the kept ranges and dense attention over each sequence's dynamic KV, merged. The queries are
// gathered into one array and the outputs scattered back; the kept rows per (sequence, head)
// reach each call's kept_rows at the next sync.
void SqueezedAttention::Decode(std::span<const AttentionParams* const> calls) {
  const int B = static_cast<int>(calls.size());
  const AttentionShape& s = calls[0]->shape;
  const int hq = s.num_q_heads, hkv = s.num_kv_heads, d = s.head_dim;
  auto& heads = head_desc_;
  heads.resize(static_cast<size_t>(B) * hkv);
  std::vector<gpu::DecodeKv> dyn(B);
  std::vector<float> tau(B), budget(B);
  const bool per_step = calls[0]->fixed.policy.squeezed.per_step;
  std::vector<const float*> q_rows(B);
  std::vector<float*> out_rows(B);
  int max_clusters = 1, max_rows = 1, max_dyn = 1;
  int64_t total_rows = 0;
  for (int b = 0; b < B; ++b) {
    const AttentionParams& p = *calls[b];
    const ClusterTables& index = p.fixed.policy.squeezed.tables;
    const int S = p.fixed.kv.num_rows, layer = p.fixed.layer;
    if (p.shape.num_q_heads != hq || p.shape.num_kv_heads != hkv || p.shape.head_dim != d ||
        layer < 0 || layer >= index.num_layers || index.num_kv_heads != hkv ||
        index.num_tokens != S) {
      dev_.Check(cudaErrorInvalidValue, "squeezed decode: the index does not match the context");
      return;
    }
    int index_clusters = 0;
    if (!HeadDescs(p, heads.data() + static_cast<size_t>(b) * hkv, &index_clusters)) return;
    dyn[b] = DynamicDecodeKv(p);
    // Per-step policy (the whole group): the lookup scores every cluster and keeps none
    // (a finite tau above every score), then each sequence's budget becomes its threshold.
    tau[b] = per_step ? std::numeric_limits<float>::max() : p.fixed.policy.squeezed.threshold;
    if (per_step) budget[b] = p.fixed.policy.squeezed.budget;
    q_rows[b] = p.q;
    out_rows[b] = p.out;
    max_clusters = std::max(max_clusters, index_clusters);
    max_rows = std::max(max_rows, S);
    max_dyn = std::max(max_dyn, dyn[b].len);
    total_rows += S;
  }

  const gpu::SqueezedDecodePlan* planned = nullptr;
  void* ws = nullptr;
  if (!PlanFor(hq, hkv, d, B, max_dyn, max_clusters, total_rows, max_rows, &planned, &ws,
               per_step)) {
    return;
  }
  const gpu::SqueezedDecodePlan& plan = *planned;

  // Device copies of the descriptors, then the queries gathered into one [B][Hq][d] array.
  const size_t row_floats = static_cast<size_t>(hq) * d;
  const size_t heads_bytes = sizeof(gpu::SqueezeHeadDesc) * heads.size();
  auto align = [](size_t x) { return (x + 255) / 256 * 256; };
  const size_t pointers = sizeof(float*) * B, rows_bytes = sizeof(float) * row_floats * B;
  const size_t bytes = align(heads_bytes) + align(sizeof(gpu::DecodeKv) * B) +
                       2 * align(sizeof(float) * B) + 4 * align(pointers) + 2 * align(rows_bytes);
  char* base = static_cast<char*>(dev_.Scratch(kSqueezeHeads, bytes));
  if (base == nullptr) return;
  size_t at = 0;
  auto take = [&](size_t n) {
    char* p = base + at;
    at += align(n);
    return p;
  };
  auto* dev_heads = reinterpret_cast<gpu::SqueezeHeadDesc*>(take(heads_bytes));
  auto* dev_dyn = reinterpret_cast<gpu::DecodeKv*>(take(sizeof(gpu::DecodeKv) * B));
  auto* dev_tau = reinterpret_cast<float*>(take(sizeof(float) * B));
  auto* dev_budget = reinterpret_cast<float*>(take(sizeof(float) * B));
  auto* dev_q_src = reinterpret_cast<const float**>(take(pointers));
  auto* dev_out_dst = reinterpret_cast<float**>(take(pointers));
  auto* q_all = reinterpret_cast<float*>(take(rows_bytes));
  auto* out_all = reinterpret_cast<float*>(take(rows_bytes));
  dev_.CopyFromHost(dev_heads, heads.data(), heads_bytes);
  dev_.CopyFromHost(dev_dyn, dyn.data(), sizeof(gpu::DecodeKv) * B);
  dev_.CopyFromHost(dev_tau, tau.data(), sizeof(float) * B);
  if (per_step) dev_.CopyFromHost(dev_budget, budget.data(), sizeof(float) * B);
  // One sequence attends with its own q and out; several are gathered into q_all and scattered
  // back from out_all (pointer arrays: gather sources and destinations, scatter sources and
  // destinations).
  const bool gather = B > 1;
  const float** out_src_dev = nullptr;
  if (gather) {
    auto* q_dst_dev = reinterpret_cast<float**>(take(pointers));
    out_src_dev = reinterpret_cast<const float**>(take(pointers));
    std::vector<const float*> q_dst(B), out_src(B);
    for (int b = 0; b < B; ++b) {
      q_dst[b] = q_all + row_floats * b;
      out_src[b] = out_all + row_floats * b;
    }
    dev_.CopyFromHost(dev_q_src, q_rows.data(), pointers);
    dev_.CopyFromHost(dev_out_dst, out_rows.data(), pointers);
    dev_.CopyFromHost(q_dst_dev, q_dst.data(), pointers);
    dev_.CopyFromHost(out_src_dev, out_src.data(), pointers);
    dev_.Check(
        gpu::LaunchCopyRows(dev_q_src, q_dst_dev, B, static_cast<int>(row_floats), dev_.stream()),
        "gather queries");
  }
  gpu::SqueezedDecodeParams sp;
  sp.scale = s.scale;
  sp.q = gather ? q_all : q_rows[0];
  sp.dynamic_kv = dev_dyn;
  sp.heads = dev_heads;
  sp.centroids_bf16 = true;
  sp.tau = dev_tau;
  sp.out = gather ? out_all : out_rows[0];
  // Hierarchical: the coarse lookup narrows each head to its candidate fine clusters first.
  if (calls[0]->fixed.policy.squeezed.hierarchical &&
      !CoarseCandidates(calls, sp.q, nullptr, &sp.candidates, &sp.num_candidates,
                        &sp.candidate_stride)) {
    return;
  }
  if (per_step) {
    // Scores of every cluster (nothing kept), each sequence's threshold from them, the selection
    // from the scores, then the attention stage.
    const gpu::SqueezeSelection sel = gpu::SelectionInWorkspace(plan, ws);
    dev_.Check(gpu::LaunchLookupFromQueries(plan, s.scale, sp.q, dev_heads, sp.centroids_bf16,
                                            dev_tau, ws, dev_.stream()),
               "per-step scores");
    StepThresholds(B, hkv, dev_heads, sel.scores, sel.cluster_stride, dev_budget, dev_tau);
    dev_.Check(gpu::LaunchSelectFromScores(plan, dev_heads, dev_tau, sel.scores, ws, dev_.stream()),
               "per-step selection");
    dev_.Check(gpu::LaunchSqueezedDecode(plan, sp, ws, dev_.stream(), gpu::kStageAttend),
               "squeezed decode");
  } else {
    dev_.Check(gpu::LaunchSqueezedDecode(plan, sp, ws, dev_.stream()), "squeezed decode");
  }
  if (gather) {
    dev_.Check(gpu::LaunchCopyRows(out_src_dev, dev_out_dst, B, static_cast<int>(row_floats),
                                   dev_.stream()),
               "scatter outputs");
  }
  ReportToHost(gpu::SelectionInWorkspace(plan, ws).kept_keys, calls, &AttentionKeys::kept_rows);
}

}  // namespace squeeze
