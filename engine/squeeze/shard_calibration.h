// Tensor parallelism and the calibrated threshold: a rank clusters only its KV heads, but the
// context's score distribution (and so tau(budget)) is over the keys of ALL heads (P7). After each
// rank has built its shard's index (SqueezeOptions::kv_head_offset set, so its heads cluster as the
// whole model's do), ShareCalibration gives every rank the distribution of the whole model: the
// union of the ranks' (score, keys) items, exchanged through the communicator. Selection then
// keeps, head by head, exactly the clusters the whole model keeps.
#pragma once

#include "absl/status/status.h"
#include "engine/backend/backend.h"
#include "engine/backend/communicator.h"
#include "engine/squeeze/squeeze_index.h"

namespace squeeze {

// Collective: every rank calls it once per index, with an index built from the same options.
// Replaces index->fine_scores (and coarse_scores) by the union over the ranks. OutOfRange when a
// distribution has more than 2^24 entries or a score more than 2^24 keys (the exchange carries
// them as floats, exact below that); the communicator's error otherwise.
absl::Status ShareCalibration(Communicator& comm, Backend& backend, SqueezeIndex* index);

}  // namespace squeeze
