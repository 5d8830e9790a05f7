// Dense causal prefill attention on tensor cores (FlashAttention-3 style on wgmma for sm_90 at d
// 64 and 128, prefill_attention_sm90.cu; FlashAttention-2 style on mma.sync otherwise) for the
// registration chunk case: n new tokens of one sequence attend, causally, to the sequence's
// dynamic KV whose last n rows are the new tokens' own K/V. The same kernel, non-causal, attends a
// multi-token step to a fixed context (dense, or a squeezed selection's kept rows read in place).
//
//   q:   bf16 [n][Hq][d], post-RoPE, unscaled.
//   K/V: bf16, the DecodeKv layout (kernels/common/types.cuh): row r of KV head h at
//        k + h * head_stride + r * d; rows [0, kv.len) are read, kv.len = past + n, where past is
//        the number of dynamic rows before this call. Query t (0-based) sits at dynamic index
//        past + t and sees rows r <= past + t; rows at or past kv.len are never read.
//   out: [n][Hq][d] fp32 or bf16, the softmax-normalised output.
//   lse: [n][Hq] fp32 natural-log log-sum-exp of scale * q.k over the visible rows (optional).
// GQA: query head qh reads KV head qh / (Hq / Hkv); any group size that divides Hq.
//
// Math (both kernels): S = Q K^T on tensor cores (bf16 in, fp32 accumulate); online softmax in
// the exp2 domain with the running row maximum subtracted before every exponential; P is rounded to
// bf16 for the P.V product (fp32 accumulate), so outputs carry about 2^-9 relative error per term;
// the row sums and the lse use the unrounded fp32 probabilities.
//
// Non-causal mode (causal = false): a fixed context's keys, all visible to every query, with an
// optional per-KV-head row count (head_len).
//
// Supported: d in {64, 96, 128}; q, k, v, out 16-byte aligned; head_stride a multiple of 8
// elements; causal: 1 <= n <= kv.len; n <= 128 * 65535. The launcher returns cudaErrorInvalidValue
// otherwise (n == 0 is a no-op). It never allocates and never synchronises (capturable in a CUDA
// graph).
//
// CPU reference: AttentionPartial (engine/backend/attention_reference.h); tested in
// tests/gpu/prefill_attention_test.cc (causal, and non-causal with head_len); the row_index mode
// through the squeezed prefill in tests/gpu/cuda_model_test.cc
// (DeviceSqueezedSelectionMatchesCpu).
#pragma once

#include "kernels/common/types.cuh"

namespace squeeze::gpu {

// Which kernel runs a prefill attention call. kAuto: the wgmma kernel on sm_90 devices for d in
// {64, 128} (prefill_attention_sm90.cu), the mma.sync kernel otherwise. The others force one (for
// tests and benchmarks): kWgmma (tiles by TMA when the keys are dense, else by cp.async: what
// kAuto picks), kWgmmaCpAsync (the same kernel, always cp.async: the benchmark's comparison); a
// wgmma kernel where it is not supported is cudaErrorInvalidValue.
enum class PrefillImpl { kAuto, kMmaSync, kWgmma, kWgmmaCpAsync };

struct PrefillAttentionParams {
  int num_tokens = 0;       // n, new tokens (queries) in this call
  int num_q_heads = 0;      // Hq
  int num_kv_heads = 0;     // Hkv
  int head_dim = 0;         // d
  float scale = 0.0f;       // logit scale, 1/sqrt(d) for Llama
  const bf16* q = nullptr;  // [n][Hq][d] device
  DecodeKv kv;              // host-side value holding device pointers; kv.len = past + n
  void* out = nullptr;      // [n][Hq][d], fp32 or bf16 (out_bf16)
  bool out_bf16 = false;
  float* lse = nullptr;  // [n][Hq] natural log; may be nullptr
  // false: no causal mask, every query sees rows [0, kv.len) (a fixed context, which precedes
  // every new token), and n may exceed kv.len.
  bool causal = true;
  // Non-causal only, optional: device [Hkv] rows visible per KV head (each <= kv.len, may be 0:
  // the head's outputs are then 0 with lse -inf), for per-head compacted key sets.
  const int32_t* head_len = nullptr;
  // Optional, non-causal only: key r < head_len[h] (or kv.len) of KV head h is storage row
  // row_index[h * row_index_stride + r] (a squeezed selection's kept rows, read in place; every
  // entry a valid row of the head's storage). kv.head_stride still spaces the heads' storage.
  const int32_t* row_index = nullptr;
  int64_t row_index_stride = 0;
  // Optional, non-causal, the wgmma kernel only (flash-decoding's split over keys): the keys
  // [0, kv.len) are cut into key_splits ranges of split_keys keys (a multiple of 128; the last
  // range may be shorter, none empty), one grid slice each, and query row t of head qh writes the
  // partial of range z, normalised over that range's keys, in slot
  // t * slot_row + qh * slot_head + z * slot_split: out (fp32) at out + slot * d, its
  // log2-domain lse (scale * q.k / ln 2 summed as 2^x; -inf: no key) at lse[slot]. The
  // cascade's shared-context chunks (cascade_attention.cuh) are read this way. 0: off.
  int key_splits = 0;
  int split_keys = 0;
  int64_t slot_row = 0, slot_head = 0, slot_split = 0;
  PrefillImpl impl = PrefillImpl::kAuto;
};

// Query rows per CTA (8 warps x 16 rows) and keys per K/V tile of the prefill kernel.
constexpr int kPrefillBlockM = 128;
constexpr int kPrefillBlockN = 64;
// PrefillAttentionParams::split_keys is a multiple of this (the wgmma kernel's key tile).
constexpr int kPrefillSplitAlign = 128;

cudaError_t LaunchPrefillAttention(const PrefillAttentionParams& p, cudaStream_t stream);

// Whether the wgmma kernel can run head dim d on the current device (compute capability 9.0).
bool PrefillWgmmaSupported(int head_dim);

namespace detail {
// The wgmma kernel, arguments already validated by LaunchPrefillAttention.
cudaError_t LaunchPrefillAttentionSm90(const PrefillAttentionParams& p, cudaStream_t stream);
}  // namespace detail

}  // namespace squeeze::gpu
