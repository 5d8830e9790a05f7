// Exact attention of one sequence's call (AttentionParams) on the GPU, without device-side
// selection:
//   fixed part   every row of the context, or the rows of a host selector's ranges (gathered
//                into a compact per-head copy first): the decode kernel for fewer than 16 query
//                tokens (each (token, KV head) one row of the batch), else the tensor-core
//                prefill kernel without the causal mask;
//   dynamic part the decode kernel for one token, the causal prefill kernel for several.
// Outputs are normalised fp32 with their natural-log lse, for the LSE merge of the two parts.
#pragma once

#include <map>
#include <span>
#include <utility>
#include <vector>

#include "engine/backend/backend.h"
#include "engine/backend/cuda/cuda_device.h"
#include "kernels/common/types.cuh"

namespace squeeze {

// The dynamic rows of a decode call (the new token's included) as the decode kernel reads them.
gpu::DecodeKv DynamicDecodeKv(const AttentionParams& p);

class DenseAttention {
 public:
  explicit DenseAttention(CudaDevice& dev) : dev_(dev) {}

  // The fixed part of `p` (no device selection) into out [n][Hq][d] and lse [n][Hq].
  void Fixed(const AttentionParams& p, float* out, float* lse);
  // The dynamic part of `p` (rows [0, causal_offset + n), causal) into out and lse.
  void Dynamic(const AttentionParams& p, float* out, float* lse);
  // Decode steps (one token each) without a fixed context, of one shape: each sequence's dynamic
  // rows, one launch sequence for every run of calls whose queries and outputs are consecutive
  // rows of one array (a batch's decode steps in order), instead of one per call.
  void DecodeBatch(std::span<const AttentionParams* const> calls);
  // Resident CTAs of the dense decode kernel for (head_dim, group), cached.
  int DecodeCtas(int head_dim, int group);

 private:
  // n query tokens over per-head key sets through the decode kernel: the queries [n][Hq][d] are
  // a batch of n * Hkv rows of G heads, row t * Hkv + h reading rows [0, rows_per_head[h]) of KV
  // head h (at k + h * head_stride).
  void DecodeOverHeads(const float* q, int n, int num_q_heads, int num_kv_heads, int head_dim,
                       float scale, const void* k, const void* v, size_t head_stride,
                       std::span<const int32_t> rows_per_head, float* out, float* lse);

  // The decode kernel over the `batch` descriptors in kv_desc_ (copied to the device): queries
  // q [batch][num_q_heads][d] against num_kv_heads heads each; out and (optional) natural-log lse.
  void LaunchDecode(const float* q, int batch, int num_q_heads, int num_kv_heads, int head_dim,
                    float scale, int max_len, float* out, float* lse);

  CudaDevice& dev_;
  std::map<std::pair<int, int>, int> concurrent_ctas_;  // (d, G) -> CTAs
  // Host staging of per-call descriptors and selections.
  std::vector<gpu::DecodeKv> kv_desc_;
  std::vector<int32_t> rows_, head_begin_, counts_;
};

}  // namespace squeeze
