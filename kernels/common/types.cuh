// Host-visible types shared by the kernels in kernels/: bf16, the K/V and fixed-context
// descriptors and the selection that the decode attention kernels (dense, centroid lookup,
// sparse, combine) pass between them. Plain C++ (includable from .cc files); no device code here.
//
// Conventions of the decode attention kernels (kernels/attention/decode_attention.cuh,
// sparse_decode_attention.cuh, kernels/squeeze/centroid_lookup.cuh, squeezed_decode.cuh):
// - One new query token per sequence (decode). q is fp32 [B][Hq][d], post-RoPE, unscaled.
// - K/V are bf16, per (sequence, KV head) a run of contiguous d-vectors: row r of head h starts
//   at k + h * head_stride + r * d. Rows and head strides must keep every row 16-byte aligned
//   (head_stride and d multiples of 8 elements, base pointers 16-byte aligned).
// - GQA: query head qh reads KV head qh / G, G = Hq / Hkv; the G heads of a group are processed
//   together so every K/V byte is read once per group. Supported: d in {64, 96, 128}, G from 1
//   to 16 (kernels are instantiated for G padded to 1, 2, 4, 8 or 16, detail::PaddedGroup, and
//   read, write and average only the real G rows); launchers return cudaErrorInvalidValue
//   otherwise.
// - Partial results ("partials") are fp32, normalised (softmax-weighted mean of V over the keys
//   of one split), with their log-sum-exp in the log2 domain (lse2 = log2 sum_j 2^(s_j), with
//   s_j = scale * log2(e) * q.k_j); the combine kernel (dense) and the sparse kernel's per-head
//   merge (squeezed) merge them exactly and convert the final lse to the natural log used by the
//   CPU reference (engine/backend/attention_reference.h).
// - Launchers (of every kernel in kernels/) never allocate, never synchronise and never exit:
//   workspace is passed in, sizes come from the Plan*/...Bytes helpers; everything is capturable
//   in a CUDA graph.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace squeeze::gpu {

using bf16 = __nv_bfloat16;

// One sequence's K/V of one layer for dense attention (device-side array element).
struct DecodeKv {
  const bf16* k = nullptr;  // [Hkv][head_stride]; rows [0, len) of each head are read
  const bf16* v = nullptr;
  int64_t head_stride = 0;  // elements between row 0 of head h and of head h + 1
  int32_t len = 0;          // rows to attend to (the dynamic part includes the new token)
  int32_t pad_ = 0;
};

// One (sequence, KV head) of a fixed context at one layer, for Squeezed Attention
// (device-side array element, index b * Hkv + h). Storage rows, as in
// engine/squeeze/squeeze_index.h:
//   [0, sinks)                 sinks (always kept)
//   [offsets[c], offsets[c+1]) cluster c, c < num_clusters; offsets[0] = sinks,
//                              offsets[num_clusters] = num_rows - window
//   [num_rows - window, num_rows)  observation window (always kept)
struct SqueezeHeadDesc {
  const bf16* k = nullptr;           // [num_rows][d] this head's keys, storage order
  const bf16* v = nullptr;           // [num_rows][d]
  const void* centroids = nullptr;   // [num_clusters][d], fp32 or bf16 (see centroids_bf16)
  const int32_t* sizes = nullptr;    // [num_clusters] keys per cluster (>= 1): softmax weights
  const int32_t* offsets = nullptr;  // [num_clusters + 1] storage-row CSR
  int32_t num_clusters = 0;
  int32_t num_rows = 0;  // S
  int32_t sinks = 0;
  int32_t window = 0;
};

// Split-KV plan of the dense decode kernel (host-computed; fixes the grid, so a plan made for
// the largest lengths stays valid while lengths grow up to max_len).
struct DecodeSplitPlan {
  int keys_per_split = 0;  // multiple of the 64-key tile
  int max_splits = 0;      // ceil(max_len / keys_per_split)
};

// Query heads per KV head (G) the decode attention and centroid lookup kernels take at most.
constexpr int kMaxGroupSize = 16;

// Sparse attention work chunks (kept keys per CTA work item): chosen on the device between
// these bounds so the kept keys of all heads, whatever their per-head counts, split into about
// the planned number of equal chunks.
constexpr int kSparseMinChunkKeys = 128;
constexpr int kSparseMaxChunkKeys = 2048;  // bounds the per-CTA row list in shared memory
// Chunks start at multiples of this many kept keys (the attention tile), and
// SqueezeSelection::range_of_key indexes kept keys at this granularity.
constexpr int kSparseKeyIndexStep = 64;

// Kept key ranges of every (sequence, KV head) bh = b * Hkv + h at one layer, as produced on the
// device by the centroid lookup and consumed by the sparse attention kernel. Range r of bh
// covers kept keys [range_key_begin[r], range_key_begin[r + 1]) at storage rows
// range_row_begin[r] + (key - range_key_begin[r]). Ranges are, in order: the sinks (when
// sinks > 0), the kept clusters in ascending cluster order, the window (when window > 0).
struct SqueezeSelection {
  int32_t* range_row_begin = nullptr;    // [BH][range_stride]
  int32_t* range_key_begin = nullptr;    // [BH][range_stride + 1]; [num_ranges] = kept_keys
  int range_stride = 0;                  // >= max_clusters + 2
  int32_t* num_ranges = nullptr;         // [BH]
  int32_t* kept_keys = nullptr;          // [BH] kept rows, sinks and window included
  int32_t* kept_clusters = nullptr;      // [BH][cluster_stride] kept cluster ids, ascending
  int32_t* num_kept_clusters = nullptr;  // [BH]
  int cluster_stride = 0;                // >= max_clusters
  float* scores = nullptr;  // optional [BH][cluster_stride]: every cluster's score (when scored)
  // range_of_key[bh][i] = the range holding kept key i * kSparseKeyIndexStep (chunks start at
  // such keys, so a sparse CTA finds its first range with one load).
  int32_t* range_of_key = nullptr;  // [BH][key_index_stride]
  int key_index_stride = 0;         // >= ceil(max num_rows / kSparseKeyIndexStep)
  // The sparse attention kernel's work plan, as its CTA 0 records it after its own chunks
  // (statistics, tests; kernels/attention/sparse_decode_attention.cu, RecordPlan).
  int32_t* chunk_begin = nullptr;  // [BH + 1] first chunk of bh; [BH] = number of chunks
  int32_t* chunk_info = nullptr;   // [3] keys per chunk, number of chunks, 1 if over max_chunks
};

}  // namespace squeeze::gpu
