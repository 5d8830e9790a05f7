#include "engine/store/context_store.h"

#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "engine/common/binary_io.h"
#include "engine/common/sha256.h"
#include "engine/common/status_macros.h"
#include "engine/store/shared_context_store.h"
#include "spdlog/spdlog.h"

namespace squeeze {
namespace {

constexpr char kMagic[8] = {'S', 'Q', 'Z', 'C', 'T', 'X', '0', '1'};
constexpr uint32_t kVersion = 1;
constexpr char kSuffix[] = ".sqzctx";

void WriteOptions(BinaryWriter& w, const SqueezeOptions& o) {
  w.Pod(o.centroid_fraction);
  w.Pod<uint8_t>(o.hierarchical);
  w.Pod(o.coarse_fraction);
  w.Pod<int32_t>(o.window);
  w.Pod<int32_t>(o.sinks);
  w.Pod<int32_t>(o.max_iterations);
  w.Pod(o.seed);
}

absl::Status ReadOptions(BinaryReader& r, SqueezeOptions* o) {
  uint8_t hier = 0;
  int32_t window = 0, sinks = 0, iters = 0;
  RETURN_IF_ERROR(r.Pod(&o->centroid_fraction));
  RETURN_IF_ERROR(r.Pod(&hier));
  RETURN_IF_ERROR(r.Pod(&o->coarse_fraction));
  RETURN_IF_ERROR(r.Pod(&window));
  RETURN_IF_ERROR(r.Pod(&sinks));
  RETURN_IF_ERROR(r.Pod(&iters));
  RETURN_IF_ERROR(r.Pod(&o->seed));
  o->hierarchical = hier != 0;
  o->window = window;
  o->sinks = sinks;
  o->max_iterations = iters;
  return absl::OkStatus();
}

}  // namespace

std::string HashTokens(const std::vector<int32_t>& tokens) {
  return Sha256Hex(std::string_view(reinterpret_cast<const char*>(tokens.data()),
                                    tokens.size() * sizeof(int32_t)));
}

ContextStore::ContextStore(std::string state_dir, std::string model_fingerprint,
                           int64_t memory_limit_bytes)
    : state_dir_(std::move(state_dir)),
      model_fingerprint_(std::move(model_fingerprint)),
      memory_limit_bytes_(memory_limit_bytes) {}

ContextStore::~ContextStore() = default;

std::string ContextStore::PathFor(const std::string& name) const {
  return (std::filesystem::path(state_dir_) / (name + kSuffix)).string();
}

absl::Status ContextStore::LoadPersisted() {
  if (state_dir_.empty()) return absl::OkStatus();
  std::error_code ec;
  std::filesystem::create_directories(state_dir_, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create state directory '", state_dir_, "': ", ec.message()));
  }
  for (const auto& entry : std::filesystem::directory_iterator(state_dir_, ec)) {
    if (!entry.is_regular_file() || entry.path().extension() != kSuffix) continue;
    auto context = ReadFile(entry.path().string());
    if (!context.ok()) {
      spdlog::warn("skipping persisted context {}: {}", entry.path().string(),
                   context.status().ToString());
      continue;
    }
    absl::MutexLock lock(&mu_);
    bytes_ += (*context)->summary.kv_bytes;
    spdlog::info("loaded context '{}' ({} tokens) from {}", (*context)->summary.name,
                 (*context)->summary.num_tokens, entry.path().string());
    contexts_[(*context)->summary.name] = std::move(*context);
  }
  return absl::OkStatus();
}

std::shared_ptr<const RegisteredContext> ContextStore::Find(const std::string& name) const {
  absl::MutexLock lock(&mu_);
  auto it = contexts_.find(name);
  return it == contexts_.end() ? nullptr : it->second;
}

std::vector<std::shared_ptr<const RegisteredContext>> ContextStore::List() const {
  absl::MutexLock lock(&mu_);
  std::vector<std::shared_ptr<const RegisteredContext>> out;
  for (const auto& [name, context] : contexts_) out.push_back(context);
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return a->summary.name < b->summary.name; });
  return out;
}

absl::Status ContextStore::Reserve(const std::string& name, const std::string& hash, int64_t bytes,
                                   std::shared_ptr<const RegisteredContext>* existing) {
  *existing = nullptr;
  if (shared_ && !Find(name)) {
    // Registered by another replica: the same content is reused, other content is a conflict.
    auto entry = shared_->Lookup(name);
    if (entry.ok() && entry->content_hash != hash) {
      return absl::AlreadyExistsError(absl::StrCat(
          "context '", name, "' already exists with different content; delete it first"));
    }
    if (entry.ok()) {
      ASSIGN_OR_RETURN(*existing, FindOrLoad(name));
      if ((*existing)->summary.content_hash == hash) return absl::OkStatus();
      return absl::AlreadyExistsError(absl::StrCat(
          "context '", name, "' already exists with different content; delete it first"));
    }
    if (!absl::IsNotFound(entry.status())) return entry.status();
  }
  absl::MutexLock lock(&mu_);
  if (auto it = contexts_.find(name); it != contexts_.end()) {
    if (it->second->summary.content_hash == hash) {
      *existing = it->second;
      return absl::OkStatus();
    }
    return absl::AlreadyExistsError(absl::StrCat(
        "context '", name, "' already exists with different content; delete it first"));
  }
  if (pending_.contains(name)) {
    return absl::AbortedError(
        absl::StrCat("a registration of context '", name, "' is in progress; retry later"));
  }
  int64_t reserved = bytes_;
  for (const auto& [n, p] : pending_) reserved += p.second;
  if (memory_limit_bytes_ > 0 && reserved + bytes > memory_limit_bytes_) {
    return absl::ResourceExhaustedError(
        absl::StrCat("context '", name, "' needs ", bytes, " bytes of KV memory but only ",
                     memory_limit_bytes_ - reserved, " of ", memory_limit_bytes_,
                     " are free; delete a context or raise --max-context-memory"));
  }
  pending_[name] = {hash, bytes};
  return absl::OkStatus();
}

void ContextStore::Unreserve(const std::string& name) {
  absl::MutexLock lock(&mu_);
  pending_.erase(name);
}

absl::Status ContextStore::Publish(std::shared_ptr<RegisteredContext> context,
                                   double* persist_seconds) {
  const absl::Time start = absl::Now();
  if (!state_dir_.empty()) {
    absl::Status st = Persist(*context);
    if (!st.ok()) {
      Unreserve(context->summary.name);
      return st;
    }
  }
  if (shared_) {
    absl::Status st = shared_->Put(*context);
    if (!st.ok()) {
      Unreserve(context->summary.name);
      return st;
    }
  }
  *persist_seconds = absl::ToDoubleSeconds(absl::Now() - start);
  absl::MutexLock lock(&mu_);
  pending_.erase(context->summary.name);
  bytes_ += context->summary.kv_bytes;
  contexts_[context->summary.name] = std::move(context);
  return absl::OkStatus();
}

absl::Status ContextStore::Delete(const std::string& name) {
  bool shared_deleted = false;
  if (shared_) {
    absl::Status st = shared_->Remove(name);
    if (!st.ok() && !absl::IsNotFound(st)) return st;
    shared_deleted = st.ok();
  }
  absl::MutexLock lock(&mu_);
  auto it = contexts_.find(name);
  if (it == contexts_.end()) {
    if (shared_deleted) return absl::OkStatus();
    return absl::NotFoundError(absl::StrCat("context '", name, "' not found"));
  }
  if (!state_dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove(PathFor(name), ec);
    if (ec) {
      return absl::InternalError(
          absl::StrCat("cannot delete the persisted file of '", name, "': ", ec.message()));
    }
  }
  bytes_ -= it->second->summary.kv_bytes;
  contexts_.erase(it);
  return absl::OkStatus();
}

void ContextStore::SetSharedStore(std::unique_ptr<SharedContextStore> shared) {
  shared_ = std::move(shared);
  // Contexts this replica already holds (its state directory) become visible to the others,
  // unless the name is taken there.
  for (const auto& c : List()) {
    auto entry = shared_->Lookup(c->summary.name);
    if (entry.ok()) {
      if (entry->content_hash != c->summary.content_hash) {
        spdlog::warn(
            "context '{}' of the state directory differs from the shared store's; "
            "the shared one is served",
            c->summary.name);
      }
      continue;
    }
    if (absl::Status st = shared_->Put(*c); !st.ok()) {
      spdlog::warn("cannot share context '{}': {}", c->summary.name, st.ToString());
    }
  }
}

absl::StatusOr<std::shared_ptr<const RegisteredContext>> ContextStore::FindOrLoad(
    const std::string& name) {
  auto resident = Find(name);
  if (!shared_) {
    if (resident) return resident;
    return absl::NotFoundError(absl::StrCat("context '", name, "' not found"));
  }
  // The shared store names the current content; a resident copy of content deleted or replaced
  // by another replica is stale.
  auto entry = shared_->Lookup(name);
  if (!entry.ok() && !absl::IsNotFound(entry.status())) return entry.status();
  if (resident) {
    if (entry.ok() && entry->content_hash == resident->summary.content_hash) return resident;
    absl::MutexLock lock(&mu_);
    if (auto it = contexts_.find(name); it != contexts_.end() && it->second == resident) {
      bytes_ -= resident->summary.kv_bytes;
      contexts_.erase(it);
      spdlog::info("dropped context '{}': deleted or replaced in the shared store", name);
    }
  }
  if (!entry.ok()) return absl::NotFoundError(absl::StrCat("context '", name, "' not found"));
  return LoadShared(name);
}

absl::StatusOr<std::shared_ptr<const RegisteredContext>> ContextStore::LoadShared(
    const std::string& name) {
  {
    // One load per name: concurrent first uses wait for it and share the result.
    absl::MutexLock lock(&mu_);
    auto not_loading = [&]()
                           ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !loading_.contains(name); };
    mu_.Await(absl::Condition(&not_loading));
    if (auto it = contexts_.find(name); it != contexts_.end()) return it->second;
    loading_.insert(name);
  }
  auto done = absl::MakeCleanup([&] {
    absl::MutexLock lock(&mu_);
    loading_.erase(name);
  });
  ASSIGN_OR_RETURN(ContextSummary entry, shared_->Lookup(name));
  {
    absl::MutexLock lock(&mu_);
    int64_t reserved = bytes_;
    for (const auto& [n, p] : pending_) reserved += p.second;
    if (memory_limit_bytes_ > 0 && reserved + entry.kv_bytes > memory_limit_bytes_) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "context '", name, "' (", entry.kv_bytes,
          " bytes of KV, in the shared store) does not fit: ", memory_limit_bytes_ - reserved,
          " of ", memory_limit_bytes_, " bytes are free here"));
    }
  }
  const absl::Time start = absl::Now();
  ASSIGN_OR_RETURN(std::shared_ptr<RegisteredContext> context, shared_->Load(name));
  spdlog::info("loaded context '{}' ({} tokens) from the shared store in {:.2f} s", name,
               context->summary.num_tokens, absl::ToDoubleSeconds(absl::Now() - start));
  absl::MutexLock lock(&mu_);
  if (auto it = contexts_.find(name); it != contexts_.end()) return it->second;
  bytes_ += context->summary.kv_bytes;
  contexts_[name] = context;
  return std::shared_ptr<const RegisteredContext>(std::move(context));
}

std::vector<ContextSummary> ContextStore::ListAll() const {
  // With a shared store its entries are the current ones (every published context is there; a
  // resident copy may be stale).
  if (shared_) return shared_->List();
  std::vector<ContextSummary> out;
  for (const auto& c : List()) out.push_back(c->summary);
  return out;
}

absl::StatusOr<ContextSummary> ContextStore::Summary(const std::string& name) const {
  if (shared_) return shared_->Lookup(name);
  auto c = Find(name);
  if (!c) return absl::NotFoundError(absl::StrCat("context '", name, "' not found"));
  return c->summary;
}

int64_t ContextStore::resident_bytes() const {
  absl::MutexLock lock(&mu_);
  return bytes_;
}

absl::Status ContextStore::Persist(const RegisteredContext& c) const {
  return WriteContextFile(c, model_fingerprint_, PathFor(c.summary.name));
}

absl::StatusOr<std::shared_ptr<RegisteredContext>> ContextStore::ReadFile(
    const std::string& path) const {
  return ReadContextFile(path, model_fingerprint_);
}

absl::Status ContextStore::WriteContextFile(const RegisteredContext& c,
                                            const std::string& model_fingerprint,
                                            const std::string& path) {
  // Unique per process and call: replicas may write the same shared file at once.
  static std::atomic<uint64_t> counter{0};
  const std::string tmp =
      absl::StrCat(path, ".tmp.", ::getpid(), ".", counter.fetch_add(1, std::memory_order_relaxed));
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return absl::InternalError(absl::StrCat("cannot write '", tmp, "'"));
    BinaryWriter w(&out);
    out.write(kMagic, sizeof(kMagic));
    w.Pod(kVersion);
    w.String(model_fingerprint);
    const ContextSummary& s = c.summary;
    w.String(s.name);
    w.String(s.content_hash);
    w.Pod<int64_t>(s.created_unix);
    w.Pod(s.timings);
    w.Vector(c.tokens);
    w.Pod<int32_t>(c.kv.shape.num_layers);
    w.Pod<int32_t>(c.kv.shape.num_kv_heads);
    w.Pod<int32_t>(c.kv.shape.head_dim);
    w.Pod<int32_t>(c.kv.num_tokens);
    w.Vector(c.kv.k);
    w.Vector(c.kv.v);
    w.Vector(c.kv.token_of);
    w.Pod<uint8_t>(c.index != nullptr);
    WriteOptions(w, s.index_options);
    if (c.index) RETURN_IF_ERROR(WriteSqueezeIndex(*c.index, out));
    out.flush();
    if (!out) {
      std::error_code ignored;
      std::filesystem::remove(tmp, ignored);
      return absl::InternalError(absl::StrCat("error writing '", tmp, "' (disk full?)"));
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot rename '", tmp, "': ", ec.message()));
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<RegisteredContext>> ContextStore::ReadContextFile(
    const std::string& path, const std::string& model_fingerprint) {
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) return absl::NotFoundError(absl::StrCat("cannot stat '", path, "'"));
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open '", path, "'"));
  char magic[sizeof(kMagic)];
  if (size < sizeof(magic) || !in.read(magic, sizeof(magic)) ||
      std::memcmp(magic, kMagic, sizeof(kMagic)) != 0) {
    return absl::DataLossError("not a Squeeze context file");
  }
  BinaryReader r(&in, size - sizeof(magic));
  uint32_t version = 0;
  RETURN_IF_ERROR(r.Pod(&version));
  if (version != kVersion) {
    return absl::DataLossError(absl::StrCat("unsupported context file version ", version));
  }
  std::string fingerprint;
  RETURN_IF_ERROR(r.String(&fingerprint));
  if (fingerprint != model_fingerprint) {
    return absl::FailedPreconditionError("written for a different model");
  }
  auto c = std::make_shared<RegisteredContext>();
  ContextSummary& s = c->summary;
  RETURN_IF_ERROR(r.String(&s.name));
  RETURN_IF_ERROR(r.String(&s.content_hash));
  RETURN_IF_ERROR(r.Pod(&s.created_unix));
  RETURN_IF_ERROR(r.Pod(&s.timings));
  RETURN_IF_ERROR(r.Vector(&c->tokens));
  int32_t L = 0, H = 0, d = 0, S = 0;
  RETURN_IF_ERROR(r.Pod(&L));
  RETURN_IF_ERROR(r.Pod(&H));
  RETURN_IF_ERROR(r.Pod(&d));
  RETURN_IF_ERROR(r.Pod(&S));
  c->kv.shape = {L, H, d};
  c->kv.num_tokens = S;
  RETURN_IF_ERROR(r.Vector(&c->kv.k));
  RETURN_IF_ERROR(r.Vector(&c->kv.v));
  RETURN_IF_ERROR(r.Vector(&c->kv.token_of));
  const uint64_t rows = static_cast<uint64_t>(L) * H * S;
  if (L <= 0 || H <= 0 || d <= 0 || S < 0 || c->tokens.size() != static_cast<size_t>(S) ||
      c->kv.k.size() != rows * d || c->kv.v.size() != rows * d || c->kv.token_of.size() != rows) {
    return absl::DataLossError("inconsistent KV sizes");
  }
  if (HashTokens(c->tokens) != s.content_hash) return absl::DataLossError("content hash mismatch");
  uint8_t has_index = 0;
  RETURN_IF_ERROR(r.Pod(&has_index));
  RETURN_IF_ERROR(ReadOptions(r, &s.index_options));
  if (has_index) {
    ASSIGN_OR_RETURN(SqueezeIndex index, ReadSqueezeIndex(in));
    c->index = std::make_unique<SqueezeIndex>(std::move(index));
  }
  s.num_tokens = S;
  s.kv_bytes = static_cast<int64_t>(c->kv.bytes());
  s.has_index = c->index != nullptr;
  if (c->index) {
    s.num_centroids = c->index->num_centroids();
    s.num_coarse_centroids = c->index->num_coarse_centroids();
  }
  return c;
}

}  // namespace squeeze
