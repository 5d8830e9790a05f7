// Registered fixed contexts: name -> immutable KV (+ Squeezed Attention index), resident in
// memory and persisted to a state directory so they survive a restart.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/api/types.h"
#include "engine/backend/kv_cache.h"
#include "engine/squeeze/index_io.h"
#include "engine/squeeze/squeeze_index.h"

namespace squeeze {

class SharedContextStore;

// One registered context. Immutable once published; shared by every sequence reading it, so a
// delete while a Generate is running only drops the store's reference.
struct RegisteredContext {
  ContextSummary summary;
  std::vector<int32_t> tokens;          // [S]
  ContextKV kv;                         // storage order when `index` is set
  std::unique_ptr<SqueezeIndex> index;  // null: dense only
};

// Hex SHA-256 of the token ids (little-endian int32), the identity of a context's content.
std::string HashTokens(const std::vector<int32_t>& tokens);

class ContextStore {
 public:
  // `state_dir` empty: memory only. `model_fingerprint` guards against loading contexts
  // computed by another model. `memory_limit_bytes` bounds the resident KV (0: unlimited).
  ContextStore(std::string state_dir, std::string model_fingerprint, int64_t memory_limit_bytes);
  ~ContextStore();

  // The state-file format (also used by SharedContextStore). WriteContextFile writes a
  // temporary file beside `path` and renames it, so readers see a whole file or none.
  static absl::Status WriteContextFile(const RegisteredContext& context,
                                       const std::string& model_fingerprint,
                                       const std::string& path);
  static absl::StatusOr<std::shared_ptr<RegisteredContext>> ReadContextFile(
      const std::string& path, const std::string& model_fingerprint);

  // Shares contexts with other replicas through `shared` (engine/store/shared_context_store.h):
  // published contexts are written there too, a context that is not resident here is loaded
  // from there on first use, and listing, lookup and deletion see every replica's contexts.
  // Call before serving.
  void SetSharedStore(std::unique_ptr<SharedContextStore> shared);

  // Loads every persisted context of the state directory; files written for another model or
  // unreadable are skipped with a warning (never deleted).
  absl::Status LoadPersisted();

  // Resident contexts only.
  std::shared_ptr<const RegisteredContext> Find(const std::string& name) const;
  std::vector<std::shared_ptr<const RegisteredContext>> List() const;
  // Find, else (with a shared store) the context loaded from the shared store; NOT_FOUND when
  // neither has it, RESOURCE_EXHAUSTED when it does not fit the memory limit. With a shared
  // store, a resident copy that was deleted or replaced there is dropped.
  absl::StatusOr<std::shared_ptr<const RegisteredContext>> FindOrLoad(const std::string& name);
  // Summaries of the resident contexts and of the shared store's (without loading them).
  std::vector<ContextSummary> ListAll() const;
  absl::StatusOr<ContextSummary> Summary(const std::string& name) const;

  // Reserves `name` for a registration of content `hash` needing `bytes`. OK: go ahead.
  // ALREADY_EXISTS: same name, different content. RESOURCE_EXHAUSTED: over the memory limit.
  // ABORTED: a registration of this name is in progress. If the same content is already
  // registered, returns OK and sets *existing.
  absl::Status Reserve(const std::string& name, const std::string& hash, int64_t bytes,
                       std::shared_ptr<const RegisteredContext>* existing);
  // Drops a reservation (registration failed or was cancelled).
  void Unreserve(const std::string& name);
  // Publishes a finished context (persisting it first when a state directory is set).
  absl::Status Publish(std::shared_ptr<RegisteredContext> context, double* persist_seconds);
  absl::Status Delete(const std::string& name);

  int64_t resident_bytes() const;
  int64_t memory_limit_bytes() const { return memory_limit_bytes_; }

 private:
  std::string PathFor(const std::string& name) const;
  absl::Status Persist(const RegisteredContext& context) const;
  absl::StatusOr<std::shared_ptr<RegisteredContext>> ReadFile(const std::string& path) const;
  absl::StatusOr<std::shared_ptr<const RegisteredContext>> LoadShared(const std::string& name);

  const std::string state_dir_;
  const std::string model_fingerprint_;
  const int64_t memory_limit_bytes_;
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<const RegisteredContext>> contexts_
      ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::pair<std::string, int64_t>> pending_ ABSL_GUARDED_BY(mu_);
  int64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::unique_ptr<SharedContextStore> shared_;  // null: this replica's contexts only
  absl::flat_hash_set<std::string> loading_ ABSL_GUARDED_BY(mu_);  // names being loaded
};

}  // namespace squeeze
