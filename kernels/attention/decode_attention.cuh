// Dense decode attention (flash-decoding, split-KV) and the exact LSE combine of partials.
//
// Dense: for each sequence b, KV head h and split s, one CTA attends the G query heads of the
// group to rows [s * keys_per_split, min((s + 1) * keys_per_split, len_b)) and writes one fp32
// partial; the combine kernel merges a sequence's partials, and in a cascade the shared
// context's partials (CombineParams::shared_chunk_begin), into the final output and natural-log
// lse. (Its per-sequence chunked set, sparse_chunk_begin, has no caller since the sparse kernel
// merges its own partials.)
//
// Bytes: each K/V byte is read once per group; partials add B * Hq * splits * (d + 1) * 4 bytes
// written and read once, small next to the KV for the split sizes the planner picks (>= 256
// keys per split).
//
// CPU reference: AttentionPartial (engine/backend/attention_reference.h); tested in
// tests/gpu/attention_kernels_test.cc (DenseDecodeAttention, through LaunchDecodeAttention), the
// cascade merge in tests/gpu/cascade_attention_test.cc.
#pragma once

#include "kernels/common/types.cuh"

namespace squeeze::gpu {

// SMs x resident CTAs per SM of the dense decode kernel for this head_dim and group size on
// the current device: PlanDecodeSplits sizes its grid from it (the sparse kernel has its own,
// SparseDecodeConcurrentCtas).
cudaError_t DecodeAttentionConcurrentCtas(int head_dim, int group_size, int* ctas);

// Splits so that batch * num_kv_heads * splits is at most (and about) `waves` waves of
// `concurrent_ctas` for sequences of max_len rows, with at least 256 keys per split.
// max_len <= 0 gives one split.
constexpr int kDefaultDecodeWaves = 1;  // measured best at batch 1, equal at batch 8 (RESULTS.md)
DecodeSplitPlan PlanDecodeSplits(int batch, int num_kv_heads, int max_len, int concurrent_ctas,
                                 int waves = kDefaultDecodeWaves);

// Partials of the dense kernel: slot (b * Hkv + h) * max_splits + s; out [slot][G][d],
// lse2 [slot][G].
inline size_t DecodePartialSlots(int batch, int num_kv_heads, const DecodeSplitPlan& plan) {
  return static_cast<size_t>(batch) * num_kv_heads * plan.max_splits;
}

struct DecodeAttentionParams {
  int batch = 0;                 // B
  int num_q_heads = 0;           // Hq
  int num_kv_heads = 0;          // Hkv
  int head_dim = 0;              // d
  float scale = 0.0f;            // logit scale, 1/sqrt(d) for Llama
  const float* q = nullptr;      // [B][Hq][d] fp32 device
  const DecodeKv* kv = nullptr;  // [B] device array; kv[b].len <= the plan's max_len
  DecodeSplitPlan plan;
  // Optional second key set per entry, attended as more splits after the plan's: rows
  // [0, tail[b].len) of tail[b] in splits of tail_plan.keys_per_split (a decode over a fixed
  // context and the sequence's own rows in one launch and one combine). [B] device array or null.
  const DecodeKv* tail = nullptr;
  DecodeSplitPlan tail_plan;
  float* partial_out = nullptr;  // [B * Hkv * DecodeSplitsPerEntry][G][d]
  float* partial_lse = nullptr;  // [B * Hkv * DecodeSplitsPerEntry][G], log2 domain
};

// Partial slots per (sequence, KV head) of a launch: the plan's splits and the tail's. Slot
// (b * Hkv + h) * DecodeSplitsPerEntry + s.
inline int DecodeSplitsPerEntry(const DecodeAttentionParams& p) {
  return p.plan.max_splits + (p.tail != nullptr ? p.tail_plan.max_splits : 0);
}

// Writes the dense partials. Splits past a sequence's length write nothing (the combine kernel
// derives each sequence's split count from kv[b].len and tail[b].len), except in a launch of one
// split per entry, where an empty entry writes zero output and lse -inf.
cudaError_t LaunchDecodeAttentionPartials(const DecodeAttentionParams& p, cudaStream_t stream);

// Exact merge of up to two partial sets per (sequence, query head):
//   dense set:  slots (b * Hkv + h) * dense_plan.max_splits + s, s < ceil(len_b / keys_per_split)
//               (with a tail: per entry dense_plan.max_splits + dense_tail_plan.max_splits slots,
//               the tail's splits after the plan's)
//   sparse set: slots [sparse_chunk_begin[b * Hkv + h], sparse_chunk_begin[b * Hkv + h + 1]), or
//               the shared set of a cascade (shared_chunk_begin below)
// out [B][Hq][d] (fp32 or bf16) = softmax-weighted mean over the union of both key sets;
// lse [B][Hq] natural log (-inf and zero output when neither set holds a key).
struct CombineParams {
  int batch = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  // Dense set; dense_out == nullptr: none. With dense_tail, each entry's slots hold
  // dense_plan.max_splits splits of dense_kv[b] and then dense_tail_plan.max_splits of
  // dense_tail[b] (DecodeAttentionParams::tail).
  const DecodeKv* dense_kv = nullptr;
  DecodeSplitPlan dense_plan;
  const DecodeKv* dense_tail = nullptr;
  DecodeSplitPlan dense_tail_plan;
  const float* dense_out = nullptr;
  const float* dense_lse = nullptr;
  // Sparse set; sparse_chunk_begin == nullptr: none.
  const int32_t* sparse_chunk_begin = nullptr;  // [B * Hkv + 1] device
  int sparse_max_chunks = 0;                    // slots at or past it are ignored (0: no limit)
  const float* sparse_out = nullptr;
  const float* sparse_lse = nullptr;
  // Or the shared-context (cascade) set, in sparse_out / sparse_lse instead: sequence b's
  // partials of KV head h are slots (shared_chunk_begin[h] + j) * B + b, j < shared_chunk_begin[h
  // + 1] - shared_chunk_begin[h] (kernels/attention/cascade_attention.cuh). Exclusive with
  // sparse_chunk_begin.
  const int32_t* shared_chunk_begin = nullptr;  // [Hkv + 1] device
  // Output.
  void* out = nullptr;    // [B][Hq][d]
  bool out_bf16 = false;  // bf16 when true, else fp32
  float* lse = nullptr;   // [B][Hq], may be nullptr
};
cudaError_t LaunchCombineAttention(const CombineParams& p, cudaStream_t stream);

// Dense decode in one call (partials + combine; the partials alone, written straight into `out`,
// when there is one split per entry, fp32 output and no lse). Workspace:
// DecodeAttentionWorkspaceBytes (tail_splits: tail_plan.max_splits when there is a tail), any
// contents, 256-byte aligned.
size_t DecodeAttentionWorkspaceBytes(int batch, int num_q_heads, int head_dim,
                                     const DecodeSplitPlan& plan, int tail_splits = 0);
cudaError_t LaunchDecodeAttention(const DecodeAttentionParams& p, void* workspace, void* out,
                                  bool out_bf16, float* lse, cudaStream_t stream);

}  // namespace squeeze::gpu
