// API keys: bearer tokens in the `authorization` request metadata, each mapped to a tenant.
//
// The keys file has one "<key> <tenant>" pair per line ('#' starts a comment). A key is 16-256
// printable ASCII characters without spaces; a tenant id is 1-64 letters, digits, '.', '_', '-'.
// Several keys may name one tenant (rotation). The file is re-read when it changes (checked at
// most once a second), so keys are added and revoked without a restart; a file that no longer
// parses keeps the previous keys and logs why. Keys are held only as SHA-256 digests.
#pragma once

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace squeeze::server {

absl::Status ValidateTenantId(absl::string_view tenant);

class ApiKeys {
 public:
  // INVALID_ARGUMENT naming the line when the file does not parse; NOT_FOUND when unreadable.
  static absl::StatusOr<std::unique_ptr<ApiKeys>> Load(const std::string& path);

  // The tenant of an `authorization` metadata value ("Bearer <key>"; empty: none was sent).
  // UNAUTHENTICATED when it is missing, malformed or not a known key.
  absl::StatusOr<std::string> Authenticate(absl::string_view authorization);

  size_t size() const;

 private:
  using Digests = absl::flat_hash_map<std::string, std::string>;  // SHA-256(key) -> tenant
  explicit ApiKeys(std::string path) : path_(std::move(path)) {}
  // The keys of a file's `text` (`path` names it in errors).
  static absl::StatusOr<Digests> Parse(const std::string& path, absl::string_view text);
  void ReloadIfChanged();

  const std::string path_;
  mutable absl::Mutex mu_;
  Digests keys_ ABSL_GUARDED_BY(mu_);
  std::string file_digest_ ABSL_GUARDED_BY(mu_);  // SHA-256 of the file last read
  absl::Time next_check_ ABSL_GUARDED_BY(mu_);
};

}  // namespace squeeze::server
