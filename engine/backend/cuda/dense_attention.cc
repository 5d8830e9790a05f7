#include "engine/backend/cuda/dense_attention.h"

#include <algorithm>

#include "kernels/attention/decode_attention.cuh"
#include "kernels/attention/kv_gather.cuh"
#include "kernels/attention/prefill_attention.cuh"
#include "kernels/ops/convert.cuh"

namespace squeeze {
namespace {

using gpu::bf16;

// Queries per call from which a fixed context is attended with the tensor-core prefill kernel
// (K/V read once per query tile) rather than the decode kernel (K/V read once per query).
constexpr int kFixedPrefillMinQueries = 16;

// The prefill kernel's parameters for one call: n queries (bf16) of `shape` against rows
// [0, len) of k/v (heads head_stride elements apart), fp32 out and lse; causal by default.
gpu::PrefillAttentionParams PrefillParams(const AttentionShape& shape, const bf16* q, const void* k,
                                          const void* v, size_t head_stride, int len, float* out,
                                          float* lse) {
  gpu::PrefillAttentionParams pp;
  pp.num_tokens = shape.num_queries;
  pp.num_q_heads = shape.num_q_heads;
  pp.num_kv_heads = shape.num_kv_heads;
  pp.head_dim = shape.head_dim;
  pp.scale = shape.scale;
  pp.q = q;
  pp.kv.k = static_cast<const bf16*>(k);
  pp.kv.v = static_cast<const bf16*>(v);
  pp.kv.head_stride = static_cast<int64_t>(head_stride);
  pp.kv.len = len;
  pp.out = out;
  pp.out_bf16 = false;
  pp.lse = lse;
  return pp;
}

}  // namespace

gpu::DecodeKv DynamicDecodeKv(const AttentionParams& p) {
  gpu::DecodeKv e;
  e.k = static_cast<const bf16*>(p.dynamic.kv.k);
  e.v = static_cast<const bf16*>(p.dynamic.kv.v);
  e.head_stride = static_cast<int64_t>(p.dynamic.kv.head_stride);
  e.len = p.dynamic.causal_offset + 1;
  return e;
}

int DenseAttention::DecodeCtas(int head_dim, int group) {
  auto [it, inserted] = concurrent_ctas_.try_emplace({head_dim, group}, 0);
  if (inserted) {
    dev_.Check(gpu::DecodeAttentionConcurrentCtas(head_dim, group, &it->second), "occupancy");
  }
  return std::max(it->second, 1);
}

void DenseAttention::LaunchDecode(const float* q, int batch, int num_q_heads, int num_kv_heads,
                                  int head_dim, float scale, int max_len, int tail_max_len,
                                  float* out, float* lse) {
  const gpu::DecodeSplitPlan plan = gpu::PlanDecodeSplits(
      batch, num_kv_heads, max_len, DecodeCtas(head_dim, num_q_heads / num_kv_heads));
  const bool tail = tail_max_len > 0;
  // The tail (a sequence's own rows after its fixed context) in splits of the same size.
  const gpu::DecodeSplitPlan tail_plan{
      plan.keys_per_split,
      tail ? (tail_max_len + plan.keys_per_split - 1) / plan.keys_per_split : 0};
  const size_t descs = static_cast<size_t>(batch) * (tail ? 2 : 1);  // kv_desc_: main, then tail
  auto* dev_desc =
      static_cast<gpu::DecodeKv*>(dev_.Scratch(kKvDesc, sizeof(gpu::DecodeKv) * descs));
  void* ws = dev_.Scratch(kDecodeWs, gpu::DecodeAttentionWorkspaceBytes(
                                         batch, num_q_heads, head_dim, plan, tail_plan.max_splits));
  if (dev_desc == nullptr || ws == nullptr) return;
  dev_.CopyFromHost(dev_desc, kv_desc_.data(), sizeof(gpu::DecodeKv) * descs);
  gpu::DecodeAttentionParams dp;
  dp.batch = batch;
  dp.num_q_heads = num_q_heads;
  dp.num_kv_heads = num_kv_heads;
  dp.head_dim = head_dim;
  dp.scale = scale;
  dp.q = q;
  dp.kv = dev_desc;
  dp.plan = plan;
  if (tail) {
    dp.tail = dev_desc + batch;
    dp.tail_plan = tail_plan;
  }
  dev_.Check(gpu::LaunchDecodeAttention(dp, ws, out, /*out_bf16=*/false, lse, dev_.stream()),
             "decode attention");
}

void DenseAttention::DecodeOverHeads(const float* q, int n, int num_q_heads, int num_kv_heads,
                                     int head_dim, float scale, const void* k, const void* v,
                                     size_t head_stride, std::span<const int32_t> rows_per_head,
                                     const AttentionKeys* dynamic, float* out, float* lse) {
  const int group = num_q_heads / num_kv_heads;
  const int batch = n * num_kv_heads;
  kv_desc_.resize(static_cast<size_t>(batch) * (dynamic != nullptr ? 2 : 1));
  int max_len = 0, tail_max_len = 0;
  for (int t = 0; t < n; ++t) {
    for (int h = 0; h < num_kv_heads; ++h) {
      const size_t entry = static_cast<size_t>(t) * num_kv_heads + h;
      gpu::DecodeKv& e = kv_desc_[entry];
      e.k = static_cast<const bf16*>(k) + h * head_stride;
      e.v = static_cast<const bf16*>(v) + h * head_stride;
      e.head_stride = static_cast<int64_t>(head_stride);
      e.len = rows_per_head[h];
      max_len = std::max(max_len, e.len);
      if (dynamic != nullptr) {  // query t sees its own rows [0, causal_offset + t]
        const KvSlice& dkv = dynamic->kv;
        gpu::DecodeKv& d = kv_desc_[batch + entry];
        d.k = static_cast<const bf16*>(dkv.k) + h * dkv.head_stride;
        d.v = static_cast<const bf16*>(dkv.v) + h * dkv.head_stride;
        d.head_stride = static_cast<int64_t>(dkv.head_stride);
        d.len = dynamic->causal_offset + t + 1;
        tail_max_len = std::max(tail_max_len, d.len);
      }
    }
  }
  LaunchDecode(q, batch, group, 1, head_dim, scale, max_len, tail_max_len, out, lse);
}

bool DenseAttention::GatherFixed(const AttentionParams& p, FixedRows* rows) {
  const AttentionShape& s = p.shape;
  const KvSlice& kv = p.fixed.kv;
  const int hkv = s.num_kv_heads, d = s.head_dim;
  rows->k = kv.k;
  rows->v = kv.v;
  rows->head_stride = kv.head_stride;
  rows->max_rows = kv.num_rows;
  if (p.fixed.ranges.empty()) {  // every row of every head
    counts_.assign(hkv, kv.num_rows);
    return true;
  }
  // A host selector's ranges: gather the kept rows of each head into a compact copy.
  rows_.clear();
  head_begin_.assign(1, 0);
  counts_.resize(hkv);
  int max_rows = 0;
  for (int h = 0; h < hkv; ++h) {
    for (const KeyRange& r : p.fixed.ranges[h]) {
      for (int row = r.begin; row < r.end; ++row) rows_.push_back(row);
    }
    head_begin_.push_back(static_cast<int32_t>(rows_.size()));
    counts_[h] = head_begin_[h + 1] - head_begin_[h];
    max_rows = std::max(max_rows, counts_[h]);
  }
  const size_t head_stride = static_cast<size_t>(std::max(max_rows, 1)) * d;
  auto* dev_rows =
      static_cast<int32_t*>(dev_.Scratch(kGatherRows, sizeof(int32_t) * (rows_.size() + 1)));
  auto* dev_begin =
      static_cast<int32_t*>(dev_.Scratch(kGatherBegin, sizeof(int32_t) * head_begin_.size()));
  auto* gk = static_cast<bf16*>(dev_.Scratch(kGatheredK, head_stride * hkv * sizeof(bf16)));
  auto* gv = static_cast<bf16*>(dev_.Scratch(kGatheredV, head_stride * hkv * sizeof(bf16)));
  if (dev_rows == nullptr || dev_begin == nullptr || gk == nullptr || gv == nullptr) return false;
  dev_.CopyFromHost(dev_rows, rows_.data(), sizeof(int32_t) * rows_.size());
  dev_.CopyFromHost(dev_begin, head_begin_.data(), sizeof(int32_t) * head_begin_.size());
  dev_.Check(gpu::LaunchGatherKvRows(static_cast<const bf16*>(kv.k), static_cast<const bf16*>(kv.v),
                                     kv.head_stride, dev_rows, dev_begin, hkv, max_rows, d, gk, gv,
                                     head_stride, dev_.stream()),
             "gather kept rows");
  *rows = {gk, gv, head_stride, max_rows};
  return true;
}

bool DenseAttention::DecodesFixed(const AttentionParams& p) {
  return p.shape.num_queries < kFixedPrefillMinQueries;
}

void DenseAttention::FixedAndDynamic(const AttentionParams& p) {
  const AttentionShape& s = p.shape;
  FixedRows rows;
  if (!GatherFixed(p, &rows)) return;
  DecodeOverHeads(p.q, s.num_queries, s.num_q_heads, s.num_kv_heads, s.head_dim, s.scale, rows.k,
                  rows.v, rows.head_stride, counts_, &p.dynamic, p.out, /*lse=*/nullptr);
}

void DenseAttention::Fixed(const AttentionParams& p, float* out, float* lse) {
  const AttentionShape& s = p.shape;
  const int hkv = s.num_kv_heads, d = s.head_dim;
  FixedRows rows;
  if (!GatherFixed(p, &rows)) return;
  if (DecodesFixed(p)) {
    DecodeOverHeads(p.q, s.num_queries, s.num_q_heads, hkv, d, s.scale, rows.k, rows.v,
                    rows.head_stride, counts_, /*dynamic=*/nullptr, out, lse);
    return;
  }
  const size_t q_elems = static_cast<size_t>(s.num_queries) * s.num_q_heads * d;
  auto* qb = static_cast<bf16*>(dev_.Scratch(kQBf16, q_elems * sizeof(bf16)));
  auto* head_len = static_cast<int32_t*>(dev_.Scratch(kHeadLen, sizeof(int32_t) * hkv));
  if (qb == nullptr || head_len == nullptr) return;
  dev_.Check(gpu::LaunchF32ToBf16(p.q, qb, q_elems, dev_.stream()), "fixed-context queries");
  gpu::PrefillAttentionParams pp =
      PrefillParams(s, qb, rows.k, rows.v, rows.head_stride, rows.max_rows, out, lse);
  pp.causal = false;
  // Per-head lengths only where the heads differ: a dense context's heads all hold max_rows,
  // and a call without them is one the kernel can load by TMA.
  if (std::any_of(counts_.begin(), counts_.end(), [&](int c) { return c != rows.max_rows; })) {
    dev_.CopyFromHost(head_len, counts_.data(), sizeof(int32_t) * hkv);
    pp.head_len = head_len;
  }
  dev_.Check(gpu::LaunchPrefillAttention(pp, dev_.stream()), "fixed-context prefill attention");
}

void DenseAttention::DecodeBatch(std::span<const AttentionParams* const> calls) {
  size_t at = 0;
  while (at < calls.size() && dev_.ok()) {
    const AttentionParams& p0 = *calls[at];
    const AttentionShape& s = p0.shape;
    const size_t row_floats = static_cast<size_t>(s.num_q_heads) * s.head_dim;
    size_t end = at + 1;
    while (end < calls.size() && calls[end]->q == p0.q + (end - at) * row_floats &&
           calls[end]->out == p0.out + (end - at) * row_floats) {
      ++end;
    }
    const int n = static_cast<int>(end - at);
    kv_desc_.resize(n);
    int max_len = 1;
    for (int b = 0; b < n; ++b) {
      kv_desc_[b] = DynamicDecodeKv(*calls[at + b]);
      max_len = std::max(max_len, kv_desc_[b].len);
    }
    LaunchDecode(p0.q, n, s.num_q_heads, s.num_kv_heads, s.head_dim, s.scale, max_len,
                 /*tail_max_len=*/0, p0.out, /*lse=*/nullptr);
    at = end;
  }
}

void DenseAttention::Dynamic(const AttentionParams& p, float* out, float* lse) {
  const AttentionShape& s = p.shape;
  const int n = s.num_queries, hq = s.num_q_heads, hkv = s.num_kv_heads, d = s.head_dim;
  const KvSlice& dkv = p.dynamic.kv;
  const int past = p.dynamic.causal_offset;
  if (n == 1) {
    counts_.assign(hkv, past + 1);
    DecodeOverHeads(p.q, 1, hq, hkv, d, s.scale, dkv.k, dkv.v, dkv.head_stride, counts_,
                    /*dynamic=*/nullptr, out, lse);
    return;
  }
  const size_t elems = static_cast<size_t>(n) * hq * d;
  auto* qb = static_cast<bf16*>(dev_.Scratch(kQBf16, elems * sizeof(bf16)));
  if (qb == nullptr) return;
  dev_.Check(gpu::LaunchF32ToBf16(p.q, qb, elems, dev_.stream()), "prefill queries");
  const gpu::PrefillAttentionParams pp =
      PrefillParams(s, qb, dkv.k, dkv.v, dkv.head_stride, past + n, out, lse);
  dev_.Check(gpu::LaunchPrefillAttention(pp, dev_.stream()), "prefill attention");
}

}  // namespace squeeze
