// Exact attention of one sequence's call (AttentionParams) on the GPU, without device-side
// selection:
//   fixed part   every row of the context, or the rows of a host selector's ranges (gathered
//                into a compact per-head copy first): the decode kernel for fewer than 16 query
//                tokens (each (token, KV head) one row of the batch), else the tensor-core
//                prefill kernel without the causal mask;
//   dynamic part the decode kernel for one token, the causal prefill kernel for several.
// Outputs are normalised fp32 with their natural-log lse, for the LSE merge of the two parts;
// FixedAndDynamic does a decode call's two parts in one decode launch and one combine instead.
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

  // Whether Fixed takes `p`'s fixed part through the decode kernel (fewer than 16 query tokens)
  // rather than the prefill kernel; then FixedAndDynamic can do the whole call.
  static bool DecodesFixed(const AttentionParams& p);
  // The fixed part of `p` (no device selection) into out [n][Hq][d] and lse [n][Hq].
  void Fixed(const AttentionParams& p, float* out, float* lse);
  // A call that DecodesFixed, fixed and dynamic parts together: the sequence's own rows are more
  // splits of the fixed part's decode launch and one combine merges both into p.out (no separate
  // dynamic decode, combine and merge).
  void FixedAndDynamic(const AttentionParams& p);
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
  // With `dynamic`, query t also attends, causally, to its sequence's own rows
  // [0, dynamic->causal_offset + t] of KV head h (the launch's tail).
  void DecodeOverHeads(const float* q, int n, int num_q_heads, int num_kv_heads, int head_dim,
                       float scale, const void* k, const void* v, size_t head_stride,
                       std::span<const int32_t> rows_per_head, const AttentionKeys* dynamic,
                       float* out, float* lse);

  // The decode kernel over the `batch` descriptors in kv_desc_ (copied to the device), and when
  // tail_max_len > 0 the `batch` tail descriptors after them: queries q [batch][num_q_heads][d]
  // against num_kv_heads heads each; out and (optional) natural-log lse.
  void LaunchDecode(const float* q, int batch, int num_q_heads, int num_kv_heads, int head_dim,
                    float scale, int max_len, int tail_max_len, float* out, float* lse);

  // The fixed rows a call reads: the context's, or (host selector's ranges) a compact per-head
  // copy of the kept rows; counts_ = rows per head. False when scratch memory failed.
  struct FixedRows {
    const void* k = nullptr;
    const void* v = nullptr;
    size_t head_stride = 0;
    int max_rows = 0;
  };
  bool GatherFixed(const AttentionParams& p, FixedRows* rows);

  CudaDevice& dev_;
  std::map<std::pair<int, int>, int> concurrent_ctas_;  // (d, G) -> CTAs
  // Host staging of per-call descriptors and selections.
  std::vector<gpu::DecodeKv> kv_desc_;
  std::vector<int32_t> rows_, head_begin_, counts_;
};

}  // namespace squeeze
