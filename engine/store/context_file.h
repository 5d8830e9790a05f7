// The file of one persisted context (the context store writes one per context).
//
// Format, version 4, little-endian:
//   "SQZCTX01" (8 bytes), u32 version
//   string model fingerprint, string tenant, string name, string content hash (u64 length + bytes)
//   i64 created (unix s), RegistrationTimings (6 x f64)
//   tokens (u64 n + i32[n]); i32 L, Hkv, d, S; u8 KV dtype (DType: 0 fp32, 1 bf16); k, v (u64 n
//   + n elements of the KV dtype each); token_of (u64 n + i32[n])
//   u8 has_index, index options (f64 centroid_fraction, u8 hierarchical, f64 coarse_fraction,
//   i32 window, i32 sinks, i32 max_iterations, u64 seed, f64 kmeans_min_changed), then the index
//   (engine/squeeze/index_io.h) when present
//   SHA-256 of every preceding byte (32 bytes)
// Version 3 is the same without kmeans_min_changed (read as 0, the rule its index was built
// with); version 2 also without the dtype byte, K/V in fp32. Both are still read.
// K/V are written in the context's host dtype (its backend's KV dtype: bf16 on the GPU, half
// the bytes of fp32) and read into the dtype the reader asks for (the server's), converted when
// the file holds another: bf16 -> fp32 is exact, fp32 -> bf16 rounds to nearest even (what the
// GPU's upload of an fp32 host copy did), so a file is never misread, whichever server wrote it.
// Reading verifies the checksum over the whole file before parsing anything, so a flipped byte
// anywhere (KV included) is DATA_LOSS, never a silently different context. Parsing then checks
// every count against the bytes left and every shape against the others, so even a file with a
// valid checksum but inconsistent contents is an error, never a crash or an overread.
#pragma once

#include <cstdint>
#include <istream>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/store/registered_context.h"

namespace squeeze {

inline constexpr char kContextFileSuffix[] = ".sqzctx";
inline constexpr uint32_t kContextFileVersion = 4;
// The oldest version still read (fp32 K/V, no dtype byte).
inline constexpr uint32_t kOldestContextFileVersion = 2;

// What a file holds, as stored (ReadContextFile converts K/V to the dtype asked for).
struct ContextFileInfo {
  uint32_t version = 0;
  DType kv_dtype = DType::kF32;
};

// Writes `path` atomically: `path`.<pid>.<n>.tmp, fsync, rename, fsync of the directory.
absl::Status WriteContextFile(const RegisteredContext& context, const std::string& fingerprint,
                              const std::string& path);

// Verifies the checksum, then parses; the context's K/V come back in `kv_dtype`. DATA_LOSS:
// corrupted or truncated (quarantine it). FAILED_PRECONDITION: written for another model or by a
// version this server does not read (keep it, skip it). `info`, optional: the version and KV
// dtype stored in the file.
absl::StatusOr<std::shared_ptr<RegisteredContext>> ReadContextFile(const std::string& path,
                                                                   const std::string& fingerprint,
                                                                   DType kv_dtype,
                                                                   ContextFileInfo* info = nullptr);

// DATA_LOSS when the trailing SHA-256 of `size` bytes of `in` does not match.
absl::Status VerifyContextChecksum(std::istream& in, uint64_t size);

// Parses the first `size` bytes of `in` (the checksum trailer excluded) without verifying the
// checksum (ReadContextFile does that first; the fuzzer calls this directly).
absl::StatusOr<std::shared_ptr<RegisteredContext>> ParseContextFile(
    std::istream& in, uint64_t size, const std::string& fingerprint, DType kv_dtype,
    ContextFileInfo* info = nullptr);

}  // namespace squeeze
