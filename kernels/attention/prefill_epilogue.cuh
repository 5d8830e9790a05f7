// The prefill attention kernels' epilogue (prefill_attention.cu on mma.sync and
// prefill_attention_sm90.cu on wgmma), whose accumulators share the m16n8 C layout: a thread holds
// rows row_lo and row_lo + 8 of its warp's 16, columns 8j + 2 * tq + {0, 1} of every 8-column tile
// j. Row sums are completed over the 4 lanes of a row, O normalised and stored (fp32 or bf16), the
// natural-log lse written by the first lane of each row. Device code only.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/attention/prefill_attention.cuh"
#include "kernels/common/device.cuh"

namespace squeeze::gpu::detail {

// o(j, e): element e (0..3) of output column tile j (e >> 1: the row, e & 1: the column pair);
// l: this lane's partial row sums of 2^(s - m); m: the rows' running maxima (log2 domain);
// split: the key range of a split call (PrefillAttentionParams::key_splits), whose rows go to
// their slots with a log2-domain lse.
template <int D, typename OutT, class Acc>
__device__ __forceinline__ void StorePrefillRows(const PrefillAttentionParams& p, Acc o,
                                                 const float (&l)[2], const float (&m)[2],
                                                 int row_lo, int qh, int tq, int split = 0) {
  const int n = p.num_tokens, hq = p.num_q_heads;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float sum = l[h];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int row = row_lo + h * 8;
    if (row >= n) continue;
    // sum >= 1 whenever a key is visible (the maximum contributes 2^0).
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    const int64_t slot = p.key_splits != 0 ? row * p.slot_row + qh * p.slot_head +
                                                 static_cast<int64_t>(split) * p.slot_split
                                           : static_cast<int64_t>(row) * hq + qh;
    OutT* dst = static_cast<OutT*>(p.out) + slot * D + 2 * tq;
#pragma unroll
    for (int j = 0; j < D / 8; ++j) {
      const float x0 = o(j, 2 * h) * inv, x1 = o(j, 2 * h + 1) * inv;
      if constexpr (sizeof(OutT) == 4) {
        *reinterpret_cast<float2*>(dst + j * 8) = make_float2(x0, x1);
      } else {
        *reinterpret_cast<__nv_bfloat162*>(dst + j * 8) = __floats2bfloat162_rn(x0, x1);
      }
    }
    if (p.lse != nullptr && tq == 0) {
      const float lse2 = sum > 0.0f ? m[h] + log2f(sum) : -INFINITY;
      p.lse[slot] = p.key_splits != 0 ? lse2 : lse2 * kLn2;
    }
  }
}

}  // namespace squeeze::gpu::detail
