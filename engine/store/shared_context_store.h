// Registered contexts shared by several replicas through a directory they all mount (a
// ReadWriteMany volume, e.g. NFS). Layout under <dir>/<model key>/ (one tree per model, so
// replicas of different models never see each other's contexts):
//   objects/<object key>.sqzctx  a context file in the state-file format (context_file.h), named
//                                by a key of its tenant and content (token hash, index options):
//                                identical registrations of one tenant share one file, another
//                                tenant's never (no reuse across tenants), and a file never
//                                changes
//   names/[<tenant>@]<name>.json the (tenant, name) -> object entry with the context's summary,
//                                so a listing reads no KV
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
#include "engine/store/registered_context.h"

namespace squeeze {

class SharedContextStore {
 public:
  // Contexts are loaded into `kv_format` (converted when an object holds another K/V dtype),
  // and entries report their kv_bytes in it (a replica of another backend may have written
  // them).
  SharedContextStore(std::string dir, std::string model_fingerprint, HostKvFormat kv_format);

  // Creates the directories; FAILED_PRECONDITION with the path when it cannot.
  absl::Status Init();

  // Writes the context's object (unless present) and its name entry (the context's
  // summary.tenant and name). Same name with the same content and index: OK (idempotent); with
  // other content or index options: ALREADY_EXISTS.
  absl::Status Put(const RegisteredContext& context) const;
  // The entry of (tenant, name); NOT_FOUND when there is none.
  absl::StatusOr<ContextSummary> Lookup(const std::string& tenant, const std::string& name) const;
  // Reads the whole context of (tenant, name) (its KV: may be gigabytes).
  absl::StatusOr<std::shared_ptr<RegisteredContext>> Load(const std::string& tenant,
                                                          const std::string& name) const;
  // The tenant's entries, by name; unreadable entries are skipped with a warning.
  std::vector<ContextSummary> List(const std::string& tenant) const;
  // Removes the name entry, and the object when no other name refers to it. NOT_FOUND when
  // there is no entry.
  absl::Status Remove(const std::string& tenant, const std::string& name) const;

  const std::string& root() const { return root_; }

 private:
  std::string NamePath(const std::string& tenant, const std::string& name) const;
  std::string ObjectPath(const std::string& object) const;
  absl::StatusOr<std::pair<ContextSummary, std::string>> ReadEntry(const std::string& path) const;

  const std::string model_fingerprint_;
  const HostKvFormat kv_format_;
  const std::string root_;  // <dir>/<model key>
};

}  // namespace squeeze
