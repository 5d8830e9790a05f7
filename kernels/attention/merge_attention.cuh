// Exact merge of two attention partials through their log-sum-exp. CPU reference:
// MergeAttentionPartials (engine/backend/attention_reference.h); tested in
// tests/gpu/model_ops_test.cc.
// Conventions (argument checks, alignment, math): kernels/ops/elementwise.cuh.
// Plain C++ (includable from .cc files); the kernels live in merge_attention.cu.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/common/types.cuh"

namespace squeeze::gpu {

// Merges attention partial b into partial a in place, exactly as MergeAttentionPartials
// (engine/backend/attention_reference.h), per row r < rows:
//   lse_b[r] == -inf:  nothing changes (out and lse_a[r] keep their values);
//   lse_a[r] == -inf:  out[r, :] = other[r, :] (plain copy), lse_a[r] = lse_b[r];
//   otherwise, mx = max(lse_a, lse_b), wa = expf(lse_a - mx), wb = expf(lse_b - mx):
//                      out[r, :] = (wa * out[r, :] + wb * other[r, :]) * (1 / (wa + wb)),
//                      lse_a[r] = mx + logf(wa + wb).
// lse values are natural-log log-sum-exps (-inf: the partial saw no key).
//   out: [rows, head_dim] partial a (updated);  lse_a: [rows] (updated);
//   other: [rows, head_dim] partial b;  lse_b: [rows]. b must not overlap a.
// One warp per row; any head_dim >= 1.
cudaError_t LaunchMergeAttention(float* out, float* lse_a, const float* other, const float* lse_b,
                                 int rows, int head_dim, cudaStream_t stream);

}  // namespace squeeze::gpu
