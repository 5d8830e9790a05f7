// The small kernels of the Llama forward besides GEMM and attention: embedding lookup, row
// gather, RMSNorm, RoPE, SiLU-gate, KV append (fp32 -> bf16), dtype conversion, merge of two
// attention partials, greedy argmax and the random fill of random-weight models. Each one mirrors
// an op of the CPU reference backend (engine/backend/cpu/cpu_backend.h,
// engine/backend/attention_reference.h) and is tested against it (tests/gpu/model_ops_test.cc).
// Plain C++ (includable from .cc files); the kernels live in model_ops.cu.
//
// Conventions for every launcher here:
// - Pointers are device memory; tensors are dense row-major, shapes in brackets, outermost
//   first. Indices (ids, positions) must be valid: nothing is bounds-checked on the device.
// - Argument checks, in this order: a negative size, a non-positive inner size (dim, head_dim,
//   vocab, ...) or a shape outside the documented limits gives cudaErrorInvalidValue; then zero
//   work (n, rows or count == 0) gives cudaSuccess without launching or looking at pointers;
//   then a required pointer that is null gives cudaErrorInvalidValue.
// - Any alignment is accepted. 16-byte aligned pointers (8 bytes for 4-wide bf16 outputs) and
//   inner sizes that are multiples of 4 (or 8) take a vectorised path; results are bit-identical
//   either way.
// - Launchers never allocate, never synchronise, and return cudaGetLastError() after the launch;
//   everything is capturable in a CUDA graph.
// - Math is fp32 with IEEE division/sqrt and the precise expf/logf/sinf/cosf (no fast-math
//   intrinsics). bf16 outputs are round-to-nearest-even (__float2bfloat16_rn) of the fp32 value
//   that the fp32 output (when also requested) receives, so the two agree bit for bit.
// - "May alias" means the very same pointer; partially overlapping ranges are not supported.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/attention_types.cuh"

namespace squeeze::gpu {

// ---- gathers -----------------------------------------------------------------------------------

// Embedding lookup from a bf16 table: out[i, :] = float(table[ids[i], :]) for i < n (exact).
//   table: [vocab, dim] bf16;  ids: [n] int32, each in [0, vocab);  out: [n, dim] fp32.
// out must not overlap table or ids. One CTA per output row.
cudaError_t LaunchEmbedRows(const bf16* table, const int32_t* ids, int n, int dim, float* out,
                            cudaStream_t stream);

// fp32 row gather (CpuBackend::GatherRows): out[i, :] = src[ids[i], :] for i < n (exact copy).
//   src: [rows, dim];  ids: [n] valid row indices;  out: [n, dim], must not overlap src or ids.
cudaError_t LaunchGatherRowsF32(const float* src, const int32_t* ids, int n, int dim, float* out,
                                cudaStream_t stream);

// ---- normalisation and activations ------------------------------------------------------------

// RMSNorm of each row (CpuBackend::RmsNorm):
//   y[r, i] = weight[i] * (x[r, i] * inv_rms_r),
//   inv_rms_r = 1 / sqrtf(sum_i x[r, i]^2 / dim + eps),
// with the sum of squares accumulated in fp32 by a block reduction (the CPU uses double; they
// differ by ~1e-7 relative). Writes y to out_f32 and/or out_bf16; either may be null, not both.
//   x: [rows, dim];  weight: [dim];  out_f32: [rows, dim], may alias x;  out_bf16: [rows, dim].
// One CTA per row; any dim >= 1 (sized for up to 16384: two passes over the row, the second
// one hitting L1/L2).
cudaError_t LaunchRmsNorm(const float* x, const float* weight, float* out_f32, bf16* out_bf16,
                          int rows, int dim, float eps, cudaStream_t stream);

// out = silu(gate) * up = gate / (1 + expf(-gate)) * up, element-wise, fp32 (CpuBackend::SiluMul).
// Writes out_f32 and/or out_bf16; either may be null, not both. out_f32 may alias gate or up.
//   gate, up, out_f32, out_bf16: [count].
cudaError_t LaunchSiluMul(const float* gate, const float* up, float* out_f32, bf16* out_bf16,
                          size_t count, cudaStream_t stream);

// ---- rotary embedding --------------------------------------------------------------------------

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

// ---- KV cache ----------------------------------------------------------------------------------

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

// ---- dtype conversion --------------------------------------------------------------------------

// dst[i] = __float2bfloat16_rn(src[i]) (round to nearest even, NaN -> canonical 0x7FFF; bit-exact
// with the host implementation of __float2bfloat16_rn). src and dst must not overlap.
cudaError_t LaunchF32ToBf16(const float* src, bf16* dst, size_t count, cudaStream_t stream);

// dst[i] = float(src[i]) (exact). src and dst must not overlap.
cudaError_t LaunchBf16ToF32(const bf16* src, float* dst, size_t count, cudaStream_t stream);

// ---- attention helpers -------------------------------------------------------------------------

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

// ---- sampling ----------------------------------------------------------------------------------

// Greedy pick: ids[r] = argmax_j logits[r, j], ties to the lowest index (as std::max_element;
// a row of all -inf gives 0). Input must be NaN-free.
//   logits: [rows, vocab] fp32;  ids: [rows] int32.
// One 1024-thread CTA per row; any vocab >= 1 (sized for up to 256K).
cudaError_t LaunchArgmax(const float* logits, int rows, int vocab, int32_t* ids,
                         cudaStream_t stream);

// ---- random fill -------------------------------------------------------------------------------

// Deterministic normal samples for random-weight models. Element i depends only on (seed, i),
// never on the launch configuration or alignment: elements 2j and 2j + 1 are the Box-Muller pair
// (r cos a, r sin a) of bits = splitmix64(splitmix64(seed) + (j + 1) * 0x9E3779B97F4A7C15), with
// u1 = ((bits >> 40) + 1) / 2^24 in (0, 1], u2 = ((bits >> 16) & 0xFFFFFF) / 2^24,
// r = sqrtf(-2 logf(u1)), a = 2 pi u2 (so |z| <= 5.77). Writes
//   F32:  dst[i] = fmaf(stddev, z_i, mean)
//   Bf16: dst[i] = __float2bfloat16_rn(stddev * z_i)
cudaError_t LaunchFillRandomBf16(bf16* dst, size_t count, uint64_t seed, float stddev,
                                 cudaStream_t stream);
cudaError_t LaunchFillRandomF32(float* dst, size_t count, uint64_t seed, float mean, float stddev,
                                cudaStream_t stream);

// Host version of z_i above (the unit normal before scaling), for building the same random
// tensors on the CPU. Host and device logf/sinf/cosf differ by a few ulp, so host values match
// the device's to ~1e-6 relative, not bit for bit.
float RandomNormalAt(uint64_t seed, uint64_t index);

}  // namespace squeeze::gpu
