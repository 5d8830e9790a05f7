// Squeezed Attention decode: exact attention over the kept fixed-context keys of every
// (sequence, KV head), load-balanced over KEPT keys.
//
// The centroid lookup (centroid_lookup.cuh) leaves, on the device, each head's kept ranges and
// a chunk plan: the kept keys of head bh form ceil(kept_bh / chunk) chunks of `chunk` keys, and
// chunk_begin is the prefix sum of those counts over all heads, so heads whose kept counts
// differ (the point of one global threshold) get proportionally many chunks. A persistent grid
// walks the chunks; for chunk i a CTA finds its head (chunk_begin), the range holding its first
// key (range_of_key, one load), expands the chunk's storage rows into shared memory (binary
// search of the staged ranges), and runs the same GQA-packed pipeline as the dense kernel
// (attention_core.cuh) over
// those rows: whole clusters are contiguous in storage, so the loads stay 16-byte, coalesced
// row reads. Partial slot = chunk index; LaunchCombineAttention merges them with the dynamic
// part's dense partials.
#pragma once

#include "kernels/attention_types.cuh"

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
  int max_chunks = 0;                      // partial capacity; chunks past it are skipped
  int grid = 0;                            // persistent CTAs, e.g. SparseDecodeConcurrentCtas
  float* partial_out = nullptr;            // [max_chunks][G][d]
  float* partial_lse = nullptr;            // [max_chunks][G], log2 domain
};

// SMs x resident CTAs per SM of the sparse kernel (its persistent grid size).
cudaError_t SparseDecodeConcurrentCtas(int head_dim, int group_size, int* ctas);

cudaError_t LaunchSparseDecodeAttention(const SparseDecodeParams& p, cudaStream_t stream);

}  // namespace squeeze::gpu
