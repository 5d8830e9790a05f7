// One registered fixed context: the data a Generate reads and the context store persists.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/api/types.h"
#include "engine/backend/kv_cache.h"
#include "engine/squeeze/squeeze_index.h"

namespace squeeze {

// Immutable once published; shared by every sequence reading it, so a delete while a Generate
// is running only drops the store's reference.
struct RegisteredContext {
  ContextSummary summary;               // summary.tenant owns it
  std::vector<int32_t> tokens;          // [S]
  ContextKV kv;                         // storage order when `index` is set
  std::unique_ptr<SqueezeIndex> index;  // null: dense only
};

// How a server holds registered contexts' K/V on the host: its model's KV shape and its
// backend's KV dtype (Backend::kv_dtype(): bf16 on the GPU, fp32 on the CPU). Persisted contexts
// are converted to it on load and their memory is counted in it.
struct HostKvFormat {
  KvShape shape;
  DType dtype = DType::kF32;
  // Host bytes of a context of `num_tokens` tokens (what its ContextKV::bytes() will be).
  int64_t Bytes(int64_t num_tokens) const {
    return static_cast<int64_t>(ContextKV::BytesFor(shape, num_tokens, dtype));
  }
};

// Hex SHA-256 of the token ids (little-endian int32), the identity of a context's content.
std::string HashTokens(const std::vector<int32_t>& tokens);

}  // namespace squeeze
