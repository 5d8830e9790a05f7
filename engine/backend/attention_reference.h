// The attention math of the CPU reference, in two public pieces that the Squeezed Attention
// module and the tests also use:
//   AttentionPartial        exact softmax attention over one key set, returned normalised
//                           together with its log-sum-exp;
//   MergeAttentionPartials  exact merge of two partials over disjoint key sets, which equals one
//                           softmax over the union of the key sets.
//   CascadeAttention        several sequences' queries over one shared key list (the CPU
//                           reference of the GPU's cascade attention).
// All math is fp32 with the running maximum subtracted before exp().
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "engine/backend/backend.h"

namespace squeeze {

// Partial attention of n queries over `keys`.
//   q:   [n, Hq, d] queries (post-RoPE), unscaled; shape.scale is applied to the logits.
//   out: [n, Hq, d] softmax-normalised output over the keys each query sees; zeros for a
//        (query, head) that sees no key.
//   lse: [n, Hq] natural log of sum_j exp(scale * q . k_j) over those keys; -inf when empty.
// GQA: query head qh reads KV head qh / (Hq / Hkv). `out` must not alias `q`.
void AttentionPartial(const AttentionShape& shape, const float* q, const AttentionKeys& keys,
                      float* out, float* lse);

// Merges partial b into partial a in place, over `rows` (query, head) pairs of `head_dim` floats:
// lse = log(exp(lse_a) + exp(lse_b)), out = (exp(lse_a) out_a + exp(lse_b) out_b) / exp(lse),
// computed with the larger lse subtracted. An empty side (lse = -inf) contributes nothing.
//   out_a, out_b: [rows, head_dim];  lse_a, lse_b: [rows]
void MergeAttentionPartials(float* out_a, float* lse_a, const float* out_b, const float* lse_b,
                            int rows, int head_dim);

// One key list per KV head shared by several sequences (a registered context, dense or the union
// of the clusters they kept): key i of head h is storage row rows[h][i] of kv (rows empty: row i,
// i < kv.num_rows) and sequence s sees it when bit s of masks[h][i] is set (masks empty: every
// sequence sees every key).
struct SharedKeys {
  KvSlice kv;
  std::span<const std::vector<int32_t>> rows;    // [Hkv] or empty
  std::span<const std::vector<uint64_t>> masks;  // [Hkv] or empty
};

// Cascade attention, the CPU reference of kernels/attention/cascade_attention.cuh: every head's key
// list is cut into chunks of chunk_keys keys; for every chunk and sequence s one partial over the
// chunk's keys that s sees; a sequence's partials merge (MergeAttentionPartials) into
//   out: [n, Hq, d], lse: [n, Hq]  (n = shape.num_queries: one query per sequence).
// The result equals each sequence's attention over the keys it sees, whatever the chunking.
void CascadeAttention(const AttentionShape& shape, const float* q, const SharedKeys& keys,
                      int chunk_keys, float* out, float* lse);

}  // namespace squeeze
