#include "engine/store/shared_context_store.h"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "engine/common/sha256.h"
#include "engine/common/status_macros.h"
#include "engine/store/context_file.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace squeeze {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr char kObjectSuffix[] = ".sqzctx";
constexpr char kNameSuffix[] = ".json";

std::string TempPath(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  return absl::StrCat(path, ".tmp.", ::getpid(), ".", counter.fetch_add(1));
}

// The object key: the tenant (content is never reused across tenants), the content (token hash)
// and everything that shapes the stored index. kmeans_min_changed joins the key only when set,
// so the objects of the exact rule keep the keys they had before the option existed.
std::string ObjectKey(const ContextSummary& s) {
  const SqueezeOptions& o = s.index_options;
  std::string key = absl::StrCat(s.tenant, "|", s.content_hash, "|", s.has_index, "|",
                                 o.centroid_fraction, "|", o.hierarchical, "|", o.coarse_fraction,
                                 "|", o.window, "|", o.sinks, "|", o.max_iterations, "|", o.seed);
  if (o.kmeans_min_changed != 0.0) absl::StrAppend(&key, "|min_changed ", o.kmeans_min_changed);
  return Sha256Hex(key);
}

json ToJson(const ContextSummary& s, const std::string& object) {
  const SqueezeOptions& o = s.index_options;
  const RegistrationTimings& t = s.timings;
  return json{
      {"tenant", s.tenant},
      {"name", s.name},
      {"object", object},
      {"content_hash", s.content_hash},
      {"num_tokens", s.num_tokens},
      {"kv_bytes", s.kv_bytes},
      {"has_index", s.has_index},
      {"num_centroids", s.num_centroids},
      {"num_coarse_centroids", s.num_coarse_centroids},
      {"created_unix", s.created_unix},
      {"index_options",
       {{"centroid_fraction", o.centroid_fraction},
        {"hierarchical", o.hierarchical},
        {"coarse_fraction", o.coarse_fraction},
        {"window", o.window},
        {"sinks", o.sinks},
        {"max_iterations", o.max_iterations},
        {"kmeans_min_changed", o.kmeans_min_changed},
        {"seed", o.seed}}},
      {"timings",
       {{"tokenize_seconds", t.tokenize_seconds},
        {"prefill_seconds", t.prefill_seconds},
        {"clustering_seconds", t.clustering_seconds},
        {"calibration_seconds", t.calibration_seconds},
        {"persist_seconds", t.persist_seconds},
        {"total_seconds", t.total_seconds}}},
  };
}

ContextSummary FromJson(const json& j) {
  ContextSummary s;
  s.tenant = j.value("tenant", std::string());
  s.name = j.at("name").get<std::string>();
  s.content_hash = j.at("content_hash").get<std::string>();
  s.num_tokens = j.at("num_tokens").get<int64_t>();
  s.kv_bytes = j.at("kv_bytes").get<int64_t>();
  s.has_index = j.at("has_index").get<bool>();
  s.num_centroids = j.at("num_centroids").get<int64_t>();
  s.num_coarse_centroids = j.at("num_coarse_centroids").get<int64_t>();
  s.created_unix = j.at("created_unix").get<int64_t>();
  const json& o = j.at("index_options");
  s.index_options.centroid_fraction = o.at("centroid_fraction").get<double>();
  s.index_options.hierarchical = o.at("hierarchical").get<bool>();
  s.index_options.coarse_fraction = o.at("coarse_fraction").get<double>();
  s.index_options.window = o.at("window").get<int>();
  s.index_options.sinks = o.at("sinks").get<int>();
  s.index_options.max_iterations = o.at("max_iterations").get<int>();
  // Absent from the names written before the option: their indexes used the exact rule.
  s.index_options.kmeans_min_changed = o.value("kmeans_min_changed", 0.0);
  s.index_options.seed = o.at("seed").get<uint64_t>();
  const json& t = j.at("timings");
  s.timings.tokenize_seconds = t.at("tokenize_seconds").get<double>();
  s.timings.prefill_seconds = t.at("prefill_seconds").get<double>();
  s.timings.clustering_seconds = t.at("clustering_seconds").get<double>();
  s.timings.calibration_seconds = t.at("calibration_seconds").get<double>();
  s.timings.persist_seconds = t.at("persist_seconds").get<double>();
  s.timings.total_seconds = t.at("total_seconds").get<double>();
  return s;
}

absl::Status WriteWhole(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << data;
  out.flush();
  if (!out) return absl::InternalError(absl::StrCat("cannot write '", path, "' (disk full?)"));
  return absl::OkStatus();
}

}  // namespace

SharedContextStore::SharedContextStore(std::string dir, std::string model_fingerprint,
                                       HostKvFormat kv_format)
    : model_fingerprint_(std::move(model_fingerprint)),
      kv_format_(kv_format),
      root_((fs::path(dir) / ("model-" + model_fingerprint_.substr(0, 16))).string()) {}

absl::Status SharedContextStore::Init() {
  for (const char* sub : {"objects", "names"}) {
    std::error_code ec;
    fs::create_directories(fs::path(root_) / sub, ec);
    if (ec) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot create the shared store directory '", root_, "/", sub, "': ", ec.message()));
    }
  }
  return absl::OkStatus();
}

std::string SharedContextStore::NamePath(const std::string& tenant, const std::string& name) const {
  // Names and tenants never contain '@' (the server checks both).
  const std::string file = tenant.empty() ? name : absl::StrCat(tenant, "@", name);
  return (fs::path(root_) / "names" / (file + kNameSuffix)).string();
}

std::string SharedContextStore::ObjectPath(const std::string& object) const {
  return (fs::path(root_) / "objects" / (object + kObjectSuffix)).string();
}

absl::StatusOr<std::pair<ContextSummary, std::string>> SharedContextStore::ReadEntry(
    const std::string& path) const {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("no shared entry '", path, "'"));
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    const json j = json::parse(ss.str());
    ContextSummary summary = FromJson(j);
    // The writer's kv_bytes are in its host dtype; what the context takes here is in ours.
    summary.kv_bytes = kv_format_.Bytes(summary.num_tokens);
    return std::make_pair(std::move(summary), j.at("object").get<std::string>());
  } catch (const json::exception& e) {
    return absl::DataLossError(absl::StrCat("shared entry '", path, "' is corrupt: ", e.what()));
  }
}

absl::Status SharedContextStore::Put(const RegisteredContext& context) const {
  const ContextSummary& s = context.summary;
  const std::string object = ObjectKey(s);
  const std::string object_path = ObjectPath(object);
  if (!fs::exists(object_path)) {
    RETURN_IF_ERROR(WriteContextFile(context, model_fingerprint_, object_path));
  }
  ContextSummary entry = s;
  entry.reused = false;
  const std::string path = NamePath(s.tenant, s.name);
  const std::string tmp = TempPath(path);
  RETURN_IF_ERROR(WriteWhole(tmp, ToJson(entry, object).dump(2)));
  // link() creates the name only when it does not exist yet: exclusive, unlike rename().
  const int rc = ::link(tmp.c_str(), path.c_str());
  const int err = errno;
  std::error_code ignored;
  fs::remove(tmp, ignored);
  if (rc == 0) return absl::OkStatus();
  if (err != EEXIST) {
    return absl::InternalError(
        absl::StrCat("cannot create the shared entry '", path, "': ", std::strerror(err)));
  }
  ASSIGN_OR_RETURN(auto existing, ReadEntry(path));
  if (existing.first.content_hash != s.content_hash) {
    return absl::AlreadyExistsError(absl::StrCat(
        "context '", s.name, "' already exists with different content; delete it first"));
  }
  if (existing.second != object) {
    return absl::AlreadyExistsError(absl::StrCat(
        "context '", s.name, "' already exists with the same content but other index options"));
  }
  return absl::OkStatus();
}

absl::StatusOr<ContextSummary> SharedContextStore::Lookup(const std::string& tenant,
                                                          const std::string& name) const {
  auto entry = ReadEntry(NamePath(tenant, name));
  if (absl::IsNotFound(entry.status())) {
    return absl::NotFoundError(absl::StrCat("context '", name, "' not found"));
  }
  if (!entry.ok()) return entry.status();
  return entry->first;
}

absl::StatusOr<std::shared_ptr<RegisteredContext>> SharedContextStore::Load(
    const std::string& tenant, const std::string& name) const {
  auto entry = ReadEntry(NamePath(tenant, name));
  if (absl::IsNotFound(entry.status())) {
    return absl::NotFoundError(absl::StrCat("context '", name, "' not found"));
  }
  if (!entry.ok()) return entry.status();
  auto context = ReadContextFile(ObjectPath(entry->second), model_fingerprint_, kv_format_.dtype);
  if (!context.ok()) {
    return absl::Status(context.status().code(),
                        absl::StrCat("cannot load context '", name,
                                     "' from the shared store: ", context.status().message()));
  }
  if ((*context)->summary.content_hash != entry->first.content_hash ||
      (*context)->summary.tenant != tenant) {
    return absl::DataLossError(
        absl::StrCat("shared object of context '", name, "' holds other content"));
  }
  // The file keeps the name it was first written under (identical content may be shared).
  (*context)->summary.name = name;
  return context;
}

std::vector<ContextSummary> SharedContextStore::List(const std::string& tenant) const {
  std::vector<ContextSummary> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(fs::path(root_) / "names", ec)) {
    const std::string file = e.path().filename().string();
    if (!e.is_regular_file() || e.path().extension() != kNameSuffix ||
        file.find(".tmp.") != std::string::npos) {
      continue;
    }
    auto entry = ReadEntry(e.path().string());
    if (!entry.ok()) {
      // Deleted between the listing and the read, or corrupt.
      if (!absl::IsNotFound(entry.status())) {
        spdlog::warn("skipping shared entry {}: {}", e.path().string(), entry.status().ToString());
      }
      continue;
    }
    if (entry->first.tenant == tenant) out.push_back(std::move(entry->first));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return out;
}

absl::Status SharedContextStore::Remove(const std::string& tenant, const std::string& name) const {
  const std::string path = NamePath(tenant, name);
  auto entry = ReadEntry(path);
  if (absl::IsNotFound(entry.status())) {
    return absl::NotFoundError(absl::StrCat("context '", name, "' not found"));
  }
  std::error_code ec;
  if (!fs::remove(path, ec)) {
    if (ec) {
      return absl::InternalError(
          absl::StrCat("cannot delete the shared entry '", path, "': ", ec.message()));
    }
    return absl::NotFoundError(absl::StrCat("context '", name, "' not found"));
  }
  if (!entry.ok()) return absl::OkStatus();  // a corrupt entry: its object stays
  // The object goes when no other name refers to it. (A registration of identical content on
  // another replica at this very moment re-creates it on its next Put.)
  for (const auto& e : fs::directory_iterator(fs::path(root_) / "names", ec)) {
    auto other = ReadEntry(e.path().string());
    if (other.ok() && other->second == entry->second) return absl::OkStatus();
  }
  fs::remove(ObjectPath(entry->second), ec);
  return absl::OkStatus();
}

}  // namespace squeeze
