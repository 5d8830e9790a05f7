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

// Hex SHA-256 of the token ids (little-endian int32), the identity of a context's content.
std::string HashTokens(const std::vector<int32_t>& tokens);

}  // namespace squeeze
