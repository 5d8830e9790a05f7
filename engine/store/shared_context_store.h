// Registered contexts shared by several replicas through a directory they all mount (a
// ReadWriteMany volume, e.g. NFS). Layout under <dir>/<model key>/ (one tree per model, so
// replicas of different models never see each other's contexts):
//   objects/<object key>.sqzctx  a context file in ContextStore's state-file format, named by a
//                                key of its content (token hash, index options): identical
//                                registrations share one file, and a file never changes
//   names/<name>.json            the name -> object entry with the context's summary, so a
//                                listing reads no KV
// Every file is written to a temporary name and renamed (objects) or hard-linked into place
// (names: creation is exclusive, so two replicas registering one name with different content
// cannot both win). A reader sees a whole file or none.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/api/types.h"
#include "engine/store/context_store.h"

namespace squeeze {

class SharedContextStore {
 public:
  SharedContextStore(std::string dir, std::string model_fingerprint);

  // Creates the directories; FAILED_PRECONDITION with the path when it cannot.
  absl::Status Init();

  // Writes the context's object (unless present) and its name entry. Same name with the same
  // content: OK (idempotent); with other content: ALREADY_EXISTS.
  absl::Status Put(const RegisteredContext& context) const;
  // The entry of `name`; NOT_FOUND when there is none.
  absl::StatusOr<ContextSummary> Lookup(const std::string& name) const;
  // Reads the whole context of `name` (its KV: may be gigabytes).
  absl::StatusOr<std::shared_ptr<RegisteredContext>> Load(const std::string& name) const;
  // Every entry, by name; unreadable entries are skipped with a warning.
  std::vector<ContextSummary> List() const;
  // Removes the name entry, and the object when no other name refers to it. NOT_FOUND when
  // there is no entry.
  absl::Status Remove(const std::string& name) const;

  const std::string& root() const { return root_; }

 private:
  std::string NamePath(const std::string& name) const;
  std::string ObjectPath(const std::string& object) const;
  absl::StatusOr<std::pair<ContextSummary, std::string>> ReadEntry(const std::string& path) const;

  const std::string model_fingerprint_;
  const std::string root_;  // <dir>/<model key>
};

}  // namespace squeeze
