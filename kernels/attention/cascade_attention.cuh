// Cascade (shared-context) decode attention: the new queries of n sequences that attend to the
// same registered context read its K/V once per step for all of them. Per KV head h the G query
// heads of each sequence are stacked as R = n * G rows (row r: sequence r / G, query head
// h * G + r % G) and attend on tensor cores to the head's key list; the list is the whole context
// (dense) or the union of the clusters the sequences kept (Squeezed Attention), where a per-key
// bit mask says which sequences see the key (each sequence still attends exactly to its own
// kept keys: the others' are masked to -inf). vLLM v1's cascade attention, FlashInfer's
// shared-prefix kernels and Hydragen do the dense part the same way.
//
// Work: the head's keys are cut into chunks of equal size (chosen on the device from the key
// counts, so a plan made once stays valid while counts change from step to step); a persistent
// grid walks (chunk, row pass) items. Every item writes one normalised fp32 partial [G][d] and its
// log2-domain lse per (chunk, sequence) for every sequence of the group (a sequence that sees no
// key of the chunk gets lse -inf); LaunchCombineAttention (decode_attention.cuh, shared layout)
// merges each sequence's chunks with its dynamic part (user input and generated tokens).
//
// Math as the prefill kernel (prefill_attention.cuh): S = Q K^T with mma.sync m16n8k16 (q rounded
// to bf16, fp32 accumulate), online softmax in the exp2 domain with the running max subtracted,
// P rounded to bf16 for P.V (fp32 accumulate).
//
// A dense group with many rows (n * G >= kCascadeWgmmaMinRows; compute-bound: 256 rows per KV head
// against 128K keys are 4.4 TFLOP per step at Llama-3-8B's shape) runs on Hopper on the wgmma
// prefill kernel instead (prefill_attention_sm90.cu, split over keys): the queries are packed to
// bf16 rows [n * G][Hkv][d] (the stacked rows as tokens, the KV heads as query heads), the keys cut
// into ranges of whole 128-key tiles sized to whole waves of CTAs, and every (range, row) partial
// lands in the same slot as this file's kernel would write it (chunk h * splits + range), with
// chunk_begin written by the packing kernel. Same numerics.
//
// CPU reference: per-sequence attention over the same keys, AttentionPartial merged with the
// dynamic part by MergeAttentionPartials (engine/backend/attention_reference.h), and
// CascadeAttention there for the chunked merge (itself checked against per-sequence attention in
// tests/cpu/backend_ops_test.cc); tested in tests/gpu/cascade_attention_test.cc
// (CascadeAttention.*) and through the model in tests/gpu/cuda_model_test.cc
// (CascadeEqualsPerSequenceAttention). Supported: d in {64, 96, 128}; any G = Hq / Hkv; n <= 64
// with a key mask (bits of a uint64); Hkv <= kCascadeMaxKvHeads. Launchers never allocate or
// synchronise (capturable in a graph).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/common/types.cuh"

namespace squeeze::gpu {

constexpr int kCascadeMaxKvHeads = 128;
constexpr int kCascadeMaxMaskedSeqs = 64;  // sequences per group with a key mask
constexpr int kCascadeMinChunkKeys = 256;  // a chunk streams at least this many keys
// kAuto runs a dense group of at least this many query rows per KV head on the wgmma kernel ...
constexpr int kCascadeWgmmaMinRows = 64;
// ... once this is true: the wgmma path has not yet run on a GPU (written on a machine without
// one), so kAuto keeps the mma.sync kernel until cascade_attention_test passes on Hopper with it
// (kWgmma forces it for that test and the forward benchmark's comparison).
constexpr bool kCascadeAutoWgmma = false;

// Which kernel reads a dense group's context (no key list, no masks). kAuto: the wgmma prefill
// kernel split over keys on sm_90 for d in {64, 128} when n * G >= kCascadeWgmmaMinRows, a
// workspace is given and kCascadeAutoWgmma, else the mma.sync kernel of this file. kWgmma forces it
// where supported (cudaErrorInvalidValue otherwise); key lists and masks always take the mma.sync
// kernel.
enum class CascadeImpl { kAuto, kMmaSync, kWgmma };

struct CascadeAttentionParams {
  int num_seqs = 0;      // n
  int num_q_heads = 0;   // Hq
  int num_kv_heads = 0;  // Hkv
  int head_dim = 0;      // d
  float scale = 0.0f;    // logit scale, 1/sqrt(d)
  // Queries, fp32 post-RoPE: row (s, qh) at q + s * q_seq_stride + qh * d (q_seq_stride >= Hq * d).
  const float* q = nullptr;
  int64_t q_seq_stride = 0;
  // The shared context: storage row r of KV head h at k + h * head_stride + r * d (same for v).
  const bf16* k = nullptr;
  const bf16* v = nullptr;
  int64_t head_stride = 0;
  // Key list of head h: num_keys[h] keys (device; nullptr: every head has uniform_keys); key i is
  // storage row row_index[h * key_stride + i] (nullptr: row i).
  const int32_t* num_keys = nullptr;
  int uniform_keys = 0;
  const int32_t* row_index = nullptr;
  // Optional: sequence s sees key i of head h when bit s of key_mask[h * key_stride + i] is set
  // (nullptr: every sequence sees every key).
  const unsigned long long* key_mask = nullptr;
  int64_t key_stride = 0;
  // Work: about target_chunks chunks in all (CascadePlan), walked by `grid` persistent CTAs.
  int target_chunks = 0;
  int grid = 0;
  // Partials, slot (chunk, s): out [max_chunks][n][G][d] fp32, lse [max_chunks][n][G] (log2).
  float* partial_out = nullptr;
  float* partial_lse = nullptr;
  int max_chunks = 0;  // CascadeMaxChunks(target_chunks, Hkv)
  // Written by the first CTA: head h's chunks are [chunk_begin[h], chunk_begin[h + 1]).
  int32_t* chunk_begin = nullptr;  // [Hkv + 1]
  CascadeImpl impl = CascadeImpl::kAuto;
  // The wgmma path's packed bf16 queries: CascadeWorkspaceBytes(n, Hq, d), 16-byte aligned
  // (nullptr: the mma.sync kernel).
  void* workspace = nullptr;
};

inline size_t CascadeWorkspaceBytes(int num_seqs, int num_q_heads, int head_dim) {
  return static_cast<size_t>(num_seqs) * num_q_heads * head_dim * 2;
}

// Chunks of a launch never exceed this (chunk size >= total keys / target).
inline int CascadeMaxChunks(int target_chunks, int num_kv_heads) {
  return target_chunks + num_kv_heads;
}

// Resident CTAs of the cascade kernel for this head size on the current device (all SMs).
cudaError_t CascadeConcurrentCtas(int head_dim, int* ctas);

cudaError_t LaunchCascadeAttention(const CascadeAttentionParams& p, cudaStream_t stream);

}  // namespace squeeze::gpu
