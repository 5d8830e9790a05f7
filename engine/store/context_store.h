// Registered fixed contexts: (tenant, name) -> immutable KV (+ Squeezed Attention index), resident
// in memory and persisted to a state directory so they survive a restart; optionally shared with
// other replicas through a shared store (engine/store/shared_context_store.h).
//
// The state directory belongs to one server at a time (an flock on its LOCK file, held for the
// store's lifetime). Each context is one file (context_file.h) written atomically; a file whose
// checksum fails at start-up is moved to quarantine/ and its name answers DATA_LOSS until it is
// registered again or deleted.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "engine/api/types.h"
#include "engine/store/registered_context.h"

namespace squeeze {

class SharedContextStore;

class ContextStore {
 public:
  // `state_dir` empty: memory only. `model_fingerprint` guards against loading contexts
  // computed by another model. `memory_limit_bytes` bounds the resident KV (0: unlimited).
  // Persisted contexts are loaded into `kv_format` (their K/V converted when a file holds
  // another dtype).
  ContextStore(std::string state_dir, std::string model_fingerprint, int64_t memory_limit_bytes,
               HostKvFormat kv_format);
  ~ContextStore();  // releases the state directory's lock

  // Takes the state directory's lock (FAILED_PRECONDITION, naming the holder's pid, when another
  // server holds it), removes temporary files an interrupted write left behind, and loads every
  // persisted context. Files written for another model or an unknown version are skipped with a
  // warning (never deleted); corrupted ones are quarantined with a warning.
  absl::Status LoadPersisted();

  // Shares contexts with other replicas through `shared`: published contexts are written there
  // too, a context that is not resident here is loaded from there on first use, and listing,
  // lookup and deletion see every replica's contexts (of the same tenant). Call before serving,
  // after LoadPersisted.
  void SetSharedStore(std::unique_ptr<SharedContextStore> shared);

  // Resident only.
  std::shared_ptr<const RegisteredContext> Find(const std::string& tenant,
                                                const std::string& name) const;
  // Every tenant's resident contexts (operators' metrics), by tenant and name.
  std::vector<std::shared_ptr<const RegisteredContext>> Resident() const;
  // Resident, else (with a shared store) loaded from the shared store. NOT_FOUND; DATA_LOSS for
  // a context whose file was found corrupted and quarantined; RESOURCE_EXHAUSTED when a shared
  // context does not fit the memory limit. With a shared store, a resident copy that was
  // deleted or replaced there is dropped.
  absl::StatusOr<std::shared_ptr<const RegisteredContext>> Get(const std::string& tenant,
                                                               const std::string& name);
  // One tenant's contexts by name (with a shared store: every replica's, without loading them).
  std::vector<ContextSummary> List(const std::string& tenant) const;
  absl::StatusOr<ContextSummary> Summary(const std::string& tenant, const std::string& name) const;

  // What a registration asks for besides its name: same name + same spec is idempotent.
  struct Spec {
    std::string hash;  // content hash (HashTokens)
    bool build_index = true;
    SqueezeOptions index;  // compared only when build_index
    int64_t bytes = 0;     // KV memory to reserve
  };
  // Called once, outside the store's lock, with the context a joined registration produced or
  // with why it failed.
  using ReadyCallback =
      std::function<void(absl::StatusOr<std::shared_ptr<const RegisteredContext>>)>;
  struct Reservation {
    std::shared_ptr<const RegisteredContext> existing;  // set: already registered; nothing to do
    bool joined = false;  // a registration of the same spec is in progress: `on_ready` will run
  };
  // Reserves (tenant, name) for a registration. OK with neither field set: go ahead and Publish
  // or Unreserve later. ALREADY_EXISTS: the name holds other content or other index options.
  // ABORTED: a registration of the name with another spec is in progress. RESOURCE_EXHAUSTED:
  // over the memory limit.
  absl::StatusOr<Reservation> Reserve(const std::string& tenant, const std::string& name,
                                      const Spec& spec, ReadyCallback on_ready);
  // Drops a reservation (registration failed or was cancelled); joined registrations get `why`.
  void Unreserve(const std::string& tenant, const std::string& name, const absl::Status& why);
  // Publishes a finished context (persisting it first when a state directory is set, then
  // writing it to the shared store when there is one).
  absl::Status Publish(std::shared_ptr<RegisteredContext> context, double* persist_seconds);
  absl::Status Delete(const std::string& tenant, const std::string& name);

  int64_t resident_bytes() const;
  int64_t memory_limit_bytes() const { return memory_limit_bytes_; }

 private:
  using Key = std::pair<std::string, std::string>;  // (tenant, name)
  struct Pending {
    Spec spec;
    std::vector<ReadyCallback> waiters;
  };

  std::string PathFor(const std::string& tenant, const std::string& name) const;
  absl::Status LockStateDir();
  void RemoveStaleTemporaries();
  void Quarantine(const std::string& path, const absl::Status& why);
  // NOT_FOUND, or DATA_LOSS for a quarantined name.
  absl::Status Missing(const std::string& tenant, const std::string& name) const;
  absl::StatusOr<std::shared_ptr<const RegisteredContext>> LoadShared(const std::string& tenant,
                                                                      const std::string& name);

  const std::string state_dir_;
  const std::string model_fingerprint_;
  const int64_t memory_limit_bytes_;
  const HostKvFormat kv_format_;
  int lock_fd_ = -1;
  std::unique_ptr<SharedContextStore> shared_;  // null: this replica's contexts only
  mutable absl::Mutex mu_;
  absl::flat_hash_map<Key, std::shared_ptr<const RegisteredContext>> contexts_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<Key, Pending> pending_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<Key, std::string> quarantined_ ABSL_GUARDED_BY(mu_);  // -> why
  absl::flat_hash_set<Key> loading_ ABSL_GUARDED_BY(mu_);  // being loaded from the shared store
  int64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace squeeze
