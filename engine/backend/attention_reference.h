// The attention math of the CPU reference, in two public pieces that the Squeezed Attention
// module and the tests also use:
//   AttentionPartial        exact softmax attention over one key set, returned normalised
//                           together with its log-sum-exp;
//   MergeAttentionPartials  exact merge of two partials over disjoint key sets, which equals one
//                           softmax over the union of the key sets.
// All math is fp32 with the running maximum subtracted before exp().
#pragma once

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

}  // namespace squeeze
