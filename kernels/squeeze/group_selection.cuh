// Squeezed Attention selection for the decode steps of n sequences that share one registered
// context (the cascade path): all their queries are scored against the context's centroids on
// tensor cores in one pass per KV head, each sequence keeps the clusters whose score exceeds its
// own tau (the per-sequence lookup's rule, centroid_lookup.cuh), and the clusters kept by any of
// them become one key list per KV head in which every key carries the bit mask of the sequences
// that kept it. The cascade attention kernel (kernels/attention/cascade_attention.cuh) then reads
// each kept key once for all of those sequences.
//
//   pass 1, grid (cluster blocks of 256, Hkv): for every query row r (sequence r / G, query head
//     h * G + r % G) the block's max and size-weighted sum of 2^(s_rc) over its clusters, with
//     s_rc = scale * log2(e) * q_r . centroid_c; the head's last block merges them into
//     (m_r, 1 / l_r), l_r = sum_c N_c 2^(s_rc - m_r).
//   pass 2, same grid: score_sc = (1 / G) sum over the G rows r of sequence s of
//     2^(s_rc - m_r) / l_r; bit s of cluster_mask[h][c] when score_sc > tau[s] (tau = +inf keeps
//     nothing, -inf everything).
//   union, grid (kGroupUnionSplits, Hkv): the key list of head h: the sinks, the kept clusters in
//     ascending order (each cluster's rows with its mask), the window (sinks and window are seen
//     by every sequence); num_keys[h]; kept_rows[s][h] = the rows sequence s keeps, sinks and
//     window included (the per-sequence lookup's kept_keys).
// Logits: the fp32 queries are split into bf16 hi + lo parts (two MMAs against the bf16
// centroids), so q . c is accurate to about 2^-16 relative, close to the fp32 per-sequence lookup.
//
// CPU reference: ClusterScorer and SqueezedFixedContextAttention::Select (engine/squeeze/
// cluster_scores.h, selection.h), per sequence; tested in tests/gpu/cascade_attention_test.cc
// (the squeezed CascadeAttention cases check every sequence's kept clusters and the key list).
// Supported: d in {64, 96, 128}; n <= 64; any G <= 64; n * G <= 1024. Launchers never allocate or
// synchronise (capturable in a graph).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/common/types.cuh"

namespace squeeze::gpu {

constexpr int kGroupMaxSeqs = 64;
constexpr int kGroupMaxRows = 1024;  // n * G
constexpr int kGroupUnionSplits = 8;

struct GroupSelectionParams {
  int num_seqs = 0;      // n
  int num_q_heads = 0;   // Hq
  int num_kv_heads = 0;  // Hkv
  int head_dim = 0;      // d
  float scale = 0.0f;    // 1/sqrt(d)
  // Queries, fp32 post-RoPE: row (s, qh) at q + s * q_seq_stride + qh * d.
  const float* q = nullptr;
  int64_t q_seq_stride = 0;
  // [Hkv] device: the shared context per KV head (bf16 centroids, sizes, offsets, num_rows,
  // sinks, window; k/v unused).
  const SqueezeHeadDesc* heads = nullptr;
  int max_clusters = 0;        // >= every head's num_clusters
  const float* tau = nullptr;  // [n] device: each sequence's threshold
  void* workspace = nullptr;   // GroupSelectionWorkspaceBytes, 256-byte aligned; zeroed once at
                               // creation (its counters; the kernels leave them zero)
  // Outputs.
  int32_t* kept_rows = nullptr;            // [n][Hkv]
  int32_t* num_keys = nullptr;             // [Hkv]
  int32_t* row_index = nullptr;            // [Hkv][key_stride]: storage row of each key
  unsigned long long* key_mask = nullptr;  // [Hkv][key_stride]: sequences that see the key
  int64_t key_stride = 0;                  // >= every head's num_rows
};

size_t GroupSelectionWorkspaceBytes(int num_seqs, int group, int num_kv_heads, int max_clusters);

// Bytes of the workspace to zero once at creation (a prefix of it).
size_t GroupSelectionCounterBytes(int num_kv_heads);

cudaError_t LaunchGroupSelection(const GroupSelectionParams& p, cudaStream_t stream);

}  // namespace squeeze::gpu
