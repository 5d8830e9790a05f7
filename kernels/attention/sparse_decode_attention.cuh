// Squeezed Attention decode: exact attention over the kept fixed-context keys of every
// (sequence, KV head), load-balanced over KEPT keys.
//
// The centroid lookup (centroid_lookup.cuh) leaves, on the device, each head's kept ranges.
// Every CTA first plans the work alike (CTA 0 records the plan in the selection's chunk_begin /
// chunk_info once its own chunks are done): the kept keys of head bh form ceil(kept_bh / chunk)
// chunks of `chunk` keys, followed by ceil(dynamic_b / chunk) chunks of its sequence's dynamic rows
// (user input and generated tokens, contiguous), one chunk size for all heads so that heads whose
// kept counts differ (the point of one global threshold) get proportionally many chunks, and the
// chunks fill whole waves of the grid. A persistent grid walks the chunks; for chunk i a CTA
// finds its head (prefix sums of the per-head chunk counts), the range holding its first key
// (range_of_key, one load), expands the chunk's storage rows into shared memory (binary search
// of the staged ranges), and runs the same GQA-packed pipeline as the dense kernel
// (kernels/attention/decode_core.cuh) over those rows: whole clusters are contiguous in storage, so
// the loads stay 16-byte, coalesced row reads. Partial slot = chunk index. The CTA that finishes
// the last chunk of a head (an arrival counter per head) merges the head's partials (exact LSE
// merge) into out and lse, so one launch does the sparse, dynamic and merge work of the step.
//
// CPU reference: AttentionPartial over the kept ranges and over the dynamic rows, merged by
// MergeAttentionPartials (engine/backend/attention_reference.h); tested through
// LaunchSqueezedDecode in tests/gpu/attention_kernels_test.cc (SqueezedDecode).
#pragma once

#include "kernels/common/types.cuh"

namespace squeeze::gpu {

struct SparseDecodeParams {
  int batch = 0;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  float scale = 0.0f;
  const float* q = nullptr;                // [B][Hq][d] fp32
  const SqueezeHeadDesc* heads = nullptr;  // [B * Hkv] device (k and v are read)
  SqueezeSelection sel;                    // from LaunchCentroidLookup (read-only here)
  const DecodeKv* dynamic_kv = nullptr;    // [B] device, or nullptr (no dynamic part)
  int target_chunks = 0;                   // chunks per wave of the plan (e.g. the grid)
  int max_chunks = 0;                      // partial capacity; chunks past it are skipped
  int grid = 0;                            // persistent CTAs, e.g. SparseDecodeConcurrentCtas
  float* partial_out = nullptr;            // [max_chunks][G][d]
  float* partial_lse = nullptr;            // [max_chunks][G], log2 domain
  uint32_t* done = nullptr;  // [B * Hkv] chunk arrivals; zero before the first launch and after
  void* out = nullptr;       // [B][Hq][d]
  bool out_bf16 = false;     // bf16 when true, else fp32
  float* lse = nullptr;      // [B][Hq] natural log; may be nullptr
  // Launch as a programmatic dependent of the previous kernel in the stream (the lookup): the
  // grid is set up while that kernel finishes and waits for its results (griddepcontrol).
  bool programmatic_launch = false;
};

// SMs x resident CTAs per SM of the sparse kernel (its persistent grid size).
cudaError_t SparseDecodeConcurrentCtas(int head_dim, int group_size, int* ctas);

cudaError_t LaunchSparseDecodeAttention(const SparseDecodeParams& p, cudaStream_t stream);

}  // namespace squeeze::gpu
