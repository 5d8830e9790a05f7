#include "engine/store/context_store.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "engine/common/sha256.h"
#include "engine/common/status_macros.h"
#include "engine/store/context_file.h"
#include "engine/store/shared_context_store.h"
#include "spdlog/spdlog.h"

namespace squeeze {
namespace {

namespace fs = std::filesystem;

constexpr char kLockFile[] = "LOCK";
constexpr char kQuarantineDir[] = "quarantine";

// "window 32 vs 100, seed 1 vs 0": the index options that differ, for an actionable message.
std::string OptionsDiff(const SqueezeOptions& want, const SqueezeOptions& have) {
  std::vector<std::string> parts;
  auto add = [&](const char* what, const auto& a, const auto& b) {
    if (a != b) parts.push_back(absl::StrCat(what, " ", a, " vs ", b));
  };
  add("centroid_fraction", want.centroid_fraction, have.centroid_fraction);
  if (want.hierarchical != have.hierarchical) {
    parts.push_back(want.hierarchical ? "hierarchical true vs false"
                                      : "hierarchical false vs true");
  }
  if (want.hierarchical || have.hierarchical) {
    add("coarse_fraction", want.coarse_fraction, have.coarse_fraction);
  }
  add("window", want.window, have.window);
  add("sinks", want.sinks, have.sinks);
  add("max_iterations", want.max_iterations, have.max_iterations);
  add("kmeans_min_changed", want.kmeans_min_changed, have.kmeans_min_changed);
  add("seed", want.seed, have.seed);
  return absl::StrJoin(parts, ", ");
}

// Empty when a registration of `spec` matches what `summary` was registered with.
std::string SpecDiff(const ContextStore::Spec& spec, bool has_index, const SqueezeOptions& index) {
  if (spec.build_index != has_index) {
    return spec.build_index ? "an index is requested; the context has none"
                            : "no index is requested; the context has one";
  }
  return spec.build_index ? OptionsDiff(spec.index, index) : "";
}

// (tenant, name) from "<tenant>@<name>.sqzctx" or "<name>.sqzctx" (names and tenants never
// contain '@').
std::pair<std::string, std::string> KeyOfFile(const fs::path& path) {
  const std::string stem = path.stem().string();
  const size_t at = stem.find('@');
  if (at == std::string::npos) return {"", stem};
  return {stem.substr(0, at), stem.substr(at + 1)};
}

}  // namespace

std::string HashTokens(const std::vector<int32_t>& tokens) {
  return Sha256Hex(std::string_view(reinterpret_cast<const char*>(tokens.data()),
                                    tokens.size() * sizeof(int32_t)));
}

ContextStore::ContextStore(std::string state_dir, std::string model_fingerprint,
                           int64_t memory_limit_bytes, HostKvFormat kv_format)
    : state_dir_(std::move(state_dir)),
      model_fingerprint_(std::move(model_fingerprint)),
      memory_limit_bytes_(memory_limit_bytes),
      kv_format_(kv_format) {}

ContextStore::~ContextStore() {
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
}

std::string ContextStore::PathFor(const std::string& tenant, const std::string& name) const {
  const std::string file = tenant.empty() ? name : absl::StrCat(tenant, "@", name);
  return (fs::path(state_dir_) / (file + kContextFileSuffix)).string();
}

absl::Status ContextStore::LockStateDir() {
  const std::string path = (fs::path(state_dir_) / kLockFile).string();
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot open the lock file '", path, "': ", std::strerror(errno)));
  }
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char holder[32] = {};
    const ssize_t n = ::pread(fd, holder, sizeof(holder) - 1, 0);
    ::close(fd);
    if (err != EWOULDBLOCK) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot lock '", path, "': ", std::strerror(err)));
    }
    std::string pid = n > 0 ? std::string(holder, static_cast<size_t>(n)) : "unknown";
    pid.erase(std::remove_if(pid.begin(), pid.end(), [](char c) { return c < '0' || c > '9'; }),
              pid.end());
    return absl::FailedPreconditionError(absl::StrCat(
        "state directory '", state_dir_, "' is in use by another squeeze-server (pid ",
        pid.empty() ? "unknown" : pid,
        "); two servers on one --state_dir would overwrite each other's contexts: stop that "
        "server or give this one its own --state_dir"));
  }
  const std::string pid = absl::StrCat(::getpid(), "\n");
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, pid.data(), pid.size(), 0) < 0) {
    spdlog::warn("cannot write the pid into {}: {}", path, std::strerror(errno));
  }
  lock_fd_ = fd;
  return absl::OkStatus();
}

void ContextStore::RemoveStaleTemporaries() {
  // Only this server writes here (it holds the lock), so every temporary is a leftover of a
  // write that a crash interrupted.
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(state_dir_, ec)) {
    if (!entry.is_regular_file() || entry.path().extension() != ".tmp") continue;
    const uintmax_t size = entry.file_size(ec);
    if (fs::remove(entry.path(), ec)) {
      spdlog::warn("removed {} ({} bytes), left by an interrupted write", entry.path().string(),
                   size);
    }
  }
}

void ContextStore::Quarantine(const std::string& path, const absl::Status& why) {
  std::error_code ec;
  const fs::path dir = fs::path(state_dir_) / kQuarantineDir;
  fs::create_directories(dir, ec);
  const fs::path to =
      dir / absl::StrCat(fs::path(path).filename().string(), ".", absl::ToUnixSeconds(absl::Now()));
  fs::rename(path, to, ec);
  const auto [tenant, name] = KeyOfFile(path);
  spdlog::error("context '{}'{}: {} is corrupted ({}); {}; register the context again", name,
                tenant.empty() ? "" : absl::StrCat(" of tenant '", tenant, "'"), path,
                std::string(why.message()),
                ec ? absl::StrCat("could not move it to ", dir.string(), ": ", ec.message())
                   : absl::StrCat("moved to ", to.string()));
  absl::MutexLock lock(&mu_);
  quarantined_[{tenant, name}] =
      absl::StrCat("the persisted file of context '", name, "' was corrupted (", why.message(),
                   ") and has been quarantined; register the context again");
}

absl::Status ContextStore::LoadPersisted() {
  if (state_dir_.empty()) return absl::OkStatus();
  std::error_code ec;
  fs::create_directories(state_dir_, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create state directory '", state_dir_, "': ", ec.message()));
  }
  if (lock_fd_ < 0) {
    if (absl::Status st = LockStateDir(); !st.ok()) return st;
  }
  RemoveStaleTemporaries();
  for (const auto& entry : fs::directory_iterator(state_dir_, ec)) {
    if (!entry.is_regular_file() || entry.path().extension() != kContextFileSuffix) continue;
    const std::string path = entry.path().string();
    ContextFileInfo info;
    auto context = ReadContextFile(path, model_fingerprint_, kv_format_.dtype, &info);
    if (!context.ok()) {
      if (context.status().code() == absl::StatusCode::kDataLoss) {
        Quarantine(path, context.status());
      } else {
        spdlog::warn("skipping persisted context {}: {}", path, context.status().ToString());
      }
      continue;
    }
    absl::MutexLock lock(&mu_);
    const ContextSummary& s = (*context)->summary;
    bytes_ += s.kv_bytes;
    if (info.kv_dtype != kv_format_.dtype) {
      spdlog::info("loaded context '{}' ({} tokens) from {} (version {}), K/V {} -> {}", s.name,
                   s.num_tokens, path, info.version, DTypeName(info.kv_dtype),
                   DTypeName(kv_format_.dtype));
    } else {
      spdlog::info("loaded context '{}' ({} tokens) from {}", s.name, s.num_tokens, path);
    }
    contexts_[{s.tenant, s.name}] = std::move(*context);
  }
  return absl::OkStatus();
}

void ContextStore::SetSharedStore(std::unique_ptr<SharedContextStore> shared) {
  shared_ = std::move(shared);
  // Contexts this replica already holds (its state directory) become visible to the others,
  // unless the name is taken there.
  for (const auto& c : Resident()) {
    const ContextSummary& s = c->summary;
    auto entry = shared_->Lookup(s.tenant, s.name);
    if (entry.ok()) {
      if (entry->content_hash != s.content_hash) {
        spdlog::warn(
            "context '{}' of the state directory differs from the shared store's; the shared "
            "one is served",
            s.name);
      }
      continue;
    }
    if (absl::Status st = shared_->Put(*c); !st.ok()) {
      spdlog::warn("cannot share context '{}': {}", s.name, st.ToString());
    }
  }
}

std::shared_ptr<const RegisteredContext> ContextStore::Find(const std::string& tenant,
                                                            const std::string& name) const {
  absl::MutexLock lock(&mu_);
  auto it = contexts_.find(Key{tenant, name});
  return it == contexts_.end() ? nullptr : it->second;
}

absl::Status ContextStore::Missing(const std::string& tenant, const std::string& name) const {
  absl::MutexLock lock(&mu_);
  if (auto it = quarantined_.find(Key{tenant, name}); it != quarantined_.end()) {
    return absl::DataLossError(it->second);
  }
  return absl::NotFoundError(absl::StrCat("context '", name, "' not found"));
}

absl::StatusOr<std::shared_ptr<const RegisteredContext>> ContextStore::Get(
    const std::string& tenant, const std::string& name) {
  auto resident = Find(tenant, name);
  if (!shared_) {
    if (resident) return resident;
    return Missing(tenant, name);
  }
  // The shared store names the current content; a resident copy of content deleted or replaced
  // by another replica is stale.
  auto entry = shared_->Lookup(tenant, name);
  if (!entry.ok() && !absl::IsNotFound(entry.status())) return entry.status();
  if (resident) {
    if (entry.ok() && entry->content_hash == resident->summary.content_hash) return resident;
    absl::MutexLock lock(&mu_);
    if (auto it = contexts_.find(Key{tenant, name});
        it != contexts_.end() && it->second == resident) {
      bytes_ -= resident->summary.kv_bytes;
      contexts_.erase(it);
      spdlog::info("dropped context '{}': deleted or replaced in the shared store", name);
    }
  }
  if (!entry.ok()) return Missing(tenant, name);
  return LoadShared(tenant, name);
}

absl::StatusOr<std::shared_ptr<const RegisteredContext>> ContextStore::LoadShared(
    const std::string& tenant, const std::string& name) {
  const Key key{tenant, name};
  {
    // One load per name: concurrent first uses wait for it and share the result.
    absl::MutexLock lock(&mu_);
    auto not_loading = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !loading_.contains(key); };
    mu_.Await(absl::Condition(&not_loading));
    if (auto it = contexts_.find(key); it != contexts_.end()) return it->second;
    loading_.insert(key);
  }
  auto done = absl::MakeCleanup([&] {
    absl::MutexLock lock(&mu_);
    loading_.erase(key);
  });
  ASSIGN_OR_RETURN(ContextSummary entry, shared_->Lookup(tenant, name));
  {
    absl::MutexLock lock(&mu_);
    int64_t reserved = bytes_;
    for (const auto& [k, p] : pending_) reserved += p.spec.bytes;
    if (memory_limit_bytes_ > 0 && reserved + entry.kv_bytes > memory_limit_bytes_) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "context '", name, "' (", entry.kv_bytes,
          " bytes of KV, in the shared store) does not fit: ", memory_limit_bytes_ - reserved,
          " of ", memory_limit_bytes_, " bytes are free here"));
    }
  }
  const absl::Time start = absl::Now();
  ASSIGN_OR_RETURN(std::shared_ptr<RegisteredContext> context, shared_->Load(tenant, name));
  spdlog::info("loaded context '{}' ({} tokens) from the shared store in {:.2f} s", name,
               context->summary.num_tokens, absl::ToDoubleSeconds(absl::Now() - start));
  absl::MutexLock lock(&mu_);
  if (auto it = contexts_.find(key); it != contexts_.end()) return it->second;
  bytes_ += context->summary.kv_bytes;
  contexts_[key] = context;
  return std::shared_ptr<const RegisteredContext>(std::move(context));
}

std::vector<ContextSummary> ContextStore::List(const std::string& tenant) const {
  // With a shared store its entries are the current ones (every published context is there; a
  // resident copy may be stale).
  if (shared_) return shared_->List(tenant);
  std::vector<ContextSummary> out;
  for (const auto& c : Resident()) {
    if (c->summary.tenant == tenant) out.push_back(c->summary);
  }
  return out;
}

absl::StatusOr<ContextSummary> ContextStore::Summary(const std::string& tenant,
                                                     const std::string& name) const {
  if (shared_) {
    auto entry = shared_->Lookup(tenant, name);
    if (absl::IsNotFound(entry.status())) return Missing(tenant, name);
    return entry;
  }
  if (auto c = Find(tenant, name)) return c->summary;
  return Missing(tenant, name);
}

std::vector<std::shared_ptr<const RegisteredContext>> ContextStore::Resident() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::shared_ptr<const RegisteredContext>> out;
  for (const auto& [key, context] : contexts_) out.push_back(context);
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) {
    return std::tie(a->summary.tenant, a->summary.name) <
           std::tie(b->summary.tenant, b->summary.name);
  });
  return out;
}

absl::StatusOr<ContextStore::Reservation> ContextStore::Reserve(const std::string& tenant,
                                                                const std::string& name,
                                                                const Spec& spec,
                                                                ReadyCallback on_ready) {
  const Key key{tenant, name};
  if (shared_ && !Find(tenant, name)) {
    // Registered by another replica: the same content and options are reused, others conflict.
    auto entry = shared_->Lookup(tenant, name);
    if (!entry.ok() && !absl::IsNotFound(entry.status())) return entry.status();
    if (entry.ok()) {
      if (entry->content_hash != spec.hash) {
        return absl::AlreadyExistsError(absl::StrCat(
            "context '", name, "' already exists with different content; delete it first"));
      }
      ASSIGN_OR_RETURN(auto existing, Get(tenant, name));
      const ContextSummary& s = existing->summary;
      if (s.content_hash != spec.hash) {
        return absl::AlreadyExistsError(absl::StrCat(
            "context '", name, "' already exists with different content; delete it first"));
      }
      if (const std::string diff = SpecDiff(spec, s.has_index, s.index_options); !diff.empty()) {
        return absl::AlreadyExistsError(absl::StrCat(
            "context '", name, "' already exists with the same content but other index options (",
            diff, "; requested vs registered); delete it first or register under another name"));
      }
      return Reservation{.existing = std::move(existing)};
    }
  }
  absl::MutexLock lock(&mu_);
  if (auto it = contexts_.find(key); it != contexts_.end()) {
    const ContextSummary& s = it->second->summary;
    if (s.content_hash != spec.hash) {
      return absl::AlreadyExistsError(absl::StrCat(
          "context '", name, "' already exists with different content; delete it first"));
    }
    if (const std::string diff = SpecDiff(spec, s.has_index, s.index_options); !diff.empty()) {
      return absl::AlreadyExistsError(absl::StrCat(
          "context '", name, "' already exists with the same content but other index options (",
          diff, "; requested vs registered); delete it first or register under another name"));
    }
    return Reservation{.existing = it->second};
  }
  if (auto it = pending_.find(key); it != pending_.end()) {
    const Spec& p = it->second.spec;
    if (p.hash != spec.hash || !SpecDiff(spec, p.build_index, p.index).empty()) {
      return absl::AbortedError(absl::StrCat("a registration of context '", name,
                                             "' with other content or index options is in "
                                             "progress; retry when it has finished"));
    }
    it->second.waiters.push_back(std::move(on_ready));
    return Reservation{.joined = true};
  }
  int64_t reserved = bytes_;
  for (const auto& [k, p] : pending_) reserved += p.spec.bytes;
  if (memory_limit_bytes_ > 0 && reserved + spec.bytes > memory_limit_bytes_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("context '", name, "' needs ", spec.bytes, " bytes of KV memory but only ",
                     memory_limit_bytes_ - reserved, " of ", memory_limit_bytes_,
                     " are free; delete a context or raise --max_context_memory_mb"));
  }
  pending_[key] = Pending{.spec = spec};
  return Reservation{};
}

void ContextStore::Unreserve(const std::string& tenant, const std::string& name,
                             const absl::Status& why) {
  std::vector<ReadyCallback> waiters;
  {
    absl::MutexLock lock(&mu_);
    auto it = pending_.find(Key{tenant, name});
    if (it == pending_.end()) return;
    waiters = std::move(it->second.waiters);
    pending_.erase(it);
  }
  const absl::Status joined = absl::AbortedError(
      absl::StrCat("the registration of context '", name,
                   "' that this call joined did not finish (", why.message(), "); retry"));
  for (auto& w : waiters) w(joined);
}

absl::Status ContextStore::Publish(std::shared_ptr<RegisteredContext> context,
                                   double* persist_seconds) {
  const absl::Time start = absl::Now();
  const ContextSummary& s = context->summary;
  if (!state_dir_.empty()) {
    absl::Status st = WriteContextFile(*context, model_fingerprint_, PathFor(s.tenant, s.name));
    if (!st.ok()) {
      Unreserve(s.tenant, s.name, st);
      return st;
    }
  }
  if (shared_) {
    absl::Status st = shared_->Put(*context);
    if (!st.ok()) {
      if (!state_dir_.empty()) {
        std::error_code ignored;
        fs::remove(PathFor(s.tenant, s.name), ignored);
      }
      Unreserve(s.tenant, s.name, st);
      return st;
    }
  }
  *persist_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::vector<ReadyCallback> waiters;
  std::shared_ptr<const RegisteredContext> published = context;
  {
    absl::MutexLock lock(&mu_);
    const Key key{s.tenant, s.name};
    if (auto it = pending_.find(key); it != pending_.end()) {
      waiters = std::move(it->second.waiters);
      pending_.erase(it);
    }
    quarantined_.erase(key);
    bytes_ += s.kv_bytes;
    contexts_[key] = std::move(context);
  }
  for (auto& w : waiters) w(published);
  return absl::OkStatus();
}

absl::Status ContextStore::Delete(const std::string& tenant, const std::string& name) {
  bool shared_deleted = false;
  if (shared_) {
    absl::Status st = shared_->Remove(tenant, name);
    if (!st.ok() && !absl::IsNotFound(st)) return st;
    shared_deleted = st.ok();
  }
  absl::MutexLock lock(&mu_);
  const Key key{tenant, name};
  auto it = contexts_.find(key);
  if (it == contexts_.end()) {
    if (quarantined_.erase(key) > 0) return absl::OkStatus();  // forget the corrupted one
    if (shared_deleted) return absl::OkStatus();
    return absl::NotFoundError(absl::StrCat("context '", name, "' not found"));
  }
  if (!state_dir_.empty()) {
    std::error_code ec;
    fs::remove(PathFor(tenant, name), ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("cannot delete the persisted file of '", name, "': ", ec.message()));
    }
  }
  bytes_ -= it->second->summary.kv_bytes;
  contexts_.erase(it);
  return absl::OkStatus();
}

int64_t ContextStore::resident_bytes() const {
  absl::MutexLock lock(&mu_);
  return bytes_;
}

}  // namespace squeeze
