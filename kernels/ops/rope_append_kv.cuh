// Rotary embedding of the new tokens' queries and keys, and the append of their K/V rows to a
// per-head bf16 cache (apart or fused). CPU reference: CpuBackend::Rope / AppendKv
// (engine/backend/cpu/cpu_backend.h); tested in tests/gpu/model_ops_test.cc.
// Conventions (argument checks, alignment, math): kernels/ops/elementwise.cuh.
// Plain C++ (includable from .cc files); the kernels live in rope_append_kv.cu.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/common/types.cuh"

namespace squeeze::gpu {

// In-place rotary embedding of q and (optionally) k in one launch, as CpuBackend::Rope on each:
// Hugging Face "rotate_half" pairing (i, i + d/2), angle = float(positions[t]) * inv_freq[i] in
// fp32 (the same fp32 product as the CPU and Hugging Face), then the precise sincosf, whose
// full-range argument reduction keeps large angles (positions up to 512K) within 2 ulp of libm;
//   x[i]       <- x[i] * cos - x[i + d/2] * sin
//   x[i + d/2] <- x[i + d/2] * cos + x[i] * sin        (products rounded separately, no FMA)
//   q: [n, q_heads, head_dim];  k: [n, k_heads, head_dim] or null (then k_heads is ignored and
//   only q is rotated);  positions: [n] int32 >= 0;  inv_freq: [head_dim / 2].
// q and k must not overlap. Limits: head_dim even, 2 <= head_dim <= 512; q_heads >= 1;
// k_heads >= 1 when k is not null. One CTA per token.
cudaError_t LaunchRopeQK(float* q, int q_heads, float* k, int k_heads, const int32_t* positions,
                         int n, int head_dim, const float* inv_freq, cudaStream_t stream);

// LaunchRopeQK of x alone: x [n, heads, head_dim] (CpuBackend::Rope's signature).
cudaError_t LaunchRope(float* x, const int32_t* positions, int n, int heads, int head_dim,
                       const float* inv_freq, cudaStream_t stream);

// CpuBackend::AppendKv with conversion to bf16 (round to nearest even): writes n new tokens'
// K/V rows into a per-head layout; token t of KV head h goes to
//   k_dst + h * dst_head_stride + t * head_dim   (same for v),
// k_dst/v_dst pointing at the first free row of head 0.
//   k_new, v_new: [n, num_kv_heads, head_dim] fp32;  k_dst, v_dst: bf16, stride in elements.
// Requires dst_head_stride >= n * head_dim when num_kv_heads > 1 (heads must not overlap).
// Only the n rows of each head are written. Sources and destinations must not overlap.
cudaError_t LaunchAppendKv(const float* k_new, const float* v_new, int n, int num_kv_heads,
                           int head_dim, bf16* k_dst, bf16* v_dst, size_t dst_head_stride,
                           cudaStream_t stream);

// LaunchAppendKv for several sequences in one launch: row t < rows of k_new/v_new [rows,
// num_kv_heads, head_dim] belongs to the sequence i with seqs[i].row0 <= t < seqs[i].row0 +
// seqs[i].n (seqs device, [num_seqs], increasing row0, non-overlapping) and is its row
// t - row0, written as LaunchAppendKv writes it. Rows of no sequence are not written.
struct AppendKvTarget {
  bf16* k_dst = nullptr;  // the sequence's first free row of head 0
  bf16* v_dst = nullptr;
  int64_t head_stride = 0;  // elements; >= n * head_dim when num_kv_heads > 1
  int32_t row0 = 0;
  int32_t n = 0;
};
cudaError_t LaunchAppendKvBatch(const float* k_new, const float* v_new, int rows, int num_kv_heads,
                                int head_dim, const AppendKvTarget* seqs, int num_seqs,
                                cudaStream_t stream);

// LaunchRopeQK of q [rows, q_heads, d] and k [rows, num_kv_heads, d], then LaunchAppendKvBatch of
// the rotated k and of v [rows, num_kv_heads, d], in one launch (one CTA per token) with the
// same results bit for bit: the decode step's RoPE fused with its KV append.
cudaError_t LaunchRopeAppendKvBatch(float* q, int q_heads, float* k, const float* v, int rows,
                                    int num_kv_heads, int head_dim, const int32_t* positions,
                                    const float* inv_freq, const AppendKvTarget* seqs, int num_seqs,
                                    cudaStream_t stream);
}  // namespace squeeze::gpu
