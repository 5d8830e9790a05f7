// Binary persistence of a SqueezeIndex (the context store writes it next to the reordered KV).
//
// Format, version 2, little-endian throughout:
//   "SQZINDEX" (8 bytes), u32 version, u64 number of bytes that follow (checksum included)
//   i32 L, Hkv, Hq, d, S, sinks, window, M
//   f64 centroid_fraction, f64 coarse_fraction, i32 window, i32 sinks, i32 max_iterations,
//   u64 seed, u8 hierarchical, f64 kmeans_min_changed
//   per (layer, kv head), layer-major:
//     i32 C, i32 offsets[C + 1], f32 centroids[C * d]
//     hierarchical only: i32 C1, i32 coarse_offsets[C1 + 1], f32 coarse_centroids[C1 * d]
//   fine distribution: i64 K, f32 scores[K], i64 cumulative_keys[K]
//   hierarchical only: coarse distribution, same layout
//   u64 FNV-1a 64 checksum of every preceding byte (magic included)
// Version 1 is the same without kmeans_min_changed (its indexes stopped only when no label
// changed); it is still read, with kmeans_min_changed = 0.
// Cluster sizes are not stored; they are derived from the offsets. Reading checks the magic,
// version and checksum, then every count against the bytes left and every offset and size
// against the header, so a truncated or corrupted file gives an error, never a crash. Reading
// consumes exactly the index's bytes, so an index may be embedded in a larger stream.
#pragma once

#include <istream>
#include <ostream>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/squeeze/squeeze_index.h"

namespace squeeze {

inline constexpr uint32_t kSqueezeIndexVersion = 2;
// The oldest version still read (no kmeans_min_changed).
inline constexpr uint32_t kOldestSqueezeIndexVersion = 1;

absl::Status WriteSqueezeIndex(const SqueezeIndex& index, std::ostream& out);

// InvalidArgument: not a squeeze index or an unsupported version. DataLoss: truncated, checksum
// mismatch, or fields inconsistent with each other.
absl::StatusOr<SqueezeIndex> ReadSqueezeIndex(std::istream& in);

}  // namespace squeeze
