// Tensor parallelism, Megatron-style: rank r of N holds query heads [r*Hq/N, (r+1)*Hq/N), the KV
// heads those heads read, [r*Hkv/N, (r+1)*Hkv/N), and intermediate columns [r*I/N, (r+1)*I/N).
// The column-parallel projections (q, k, v, gate, up) keep their shard's output rows; the
// row-parallel ones (o, down) keep the matching input columns, so each rank's o and down produce
// partial sums of the whole hidden vector, which the ranks' Communicator adds up
// (LlamaModel::set_communicator). Embeddings, norms and the lm_head are replicated. KV caches,
// registered contexts and everything of Squeezed Attention then live per rank, by KV head.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/model/config.h"
#include "engine/model/weights.h"

namespace squeeze {

// OK when `config` can be split over `ranks` ranks: query heads, KV heads and the intermediate
// size divisible by it (KV heads are not replicated: ranks <= Hkv). InvalidArgument naming the
// dimension otherwise.
absl::Status CheckTensorParallel(const ModelConfig& config, int ranks);

// One rank's config: Hq / N query heads, Hkv / N KV heads, I / N intermediate; the rest as is.
absl::StatusOr<ModelConfig> ShardConfig(const ModelConfig& config, int ranks);

// Rank `rank`'s weights out of the full model's (as LoadLlamaWeights returns them). q/k/v (and
// their biases) and gate/up: the shard's rows; o and down: the shard's columns; the rest
// (embeddings, norms, per-head q/k norms, the o bias, which is added once after the sum) copied.
absl::StatusOr<LlamaWeights> ShardWeights(const LlamaWeights& weights, const ModelConfig& config,
                                          int rank, int ranks);

}  // namespace squeeze
