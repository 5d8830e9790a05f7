#include "server/auth.h"

#include <fstream>
#include <optional>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "engine/common/sha256.h"
#include "spdlog/spdlog.h"

namespace squeeze::server {
namespace {

// The whole file (a keys file is small); nullopt when it cannot be read.
std::optional<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream text;
  text << in.rdbuf();
  return std::move(text).str();
}

absl::Status ValidateKey(absl::string_view key) {
  if (key.size() < 16 || key.size() > 256) {
    return absl::InvalidArgumentError("a key must have 16 to 256 characters");
  }
  for (char c : key) {
    if (c <= 0x20 || c >= 0x7f) {
      return absl::InvalidArgumentError("a key may only contain printable ASCII without spaces");
    }
  }
  return absl::OkStatus();
}

std::string Digest(absl::string_view key) { return Sha256Hex({key.data(), key.size()}); }

}  // namespace

absl::Status ValidateTenantId(absl::string_view tenant) {
  if (tenant.empty() || tenant.size() > 64) {
    return absl::InvalidArgumentError("a tenant id must have 1 to 64 characters");
  }
  for (char c : tenant) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') {
      return absl::InvalidArgumentError(
          absl::StrCat("tenant '", tenant, "' may only contain letters, digits, '.', '_', '-'"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ApiKeys::Digests> ApiKeys::Parse(const std::string& path, absl::string_view text) {
  std::istringstream in{std::string(text)};
  Digests keys;
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    if (const size_t hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    std::vector<absl::string_view> fields =
        absl::StrSplit(line, absl::ByAnyChar(" \t\r"), absl::SkipEmpty());
    if (fields.empty()) continue;
    const auto bad = [&](absl::string_view why) {
      return absl::InvalidArgumentError(
          absl::StrCat("API keys file '", path, "', line ", number, ": ", why));
    };
    if (fields.size() != 2) return bad("expected '<key> <tenant>'");
    if (absl::Status st = ValidateKey(fields[0]); !st.ok()) return bad(st.message());
    if (absl::Status st = ValidateTenantId(fields[1]); !st.ok()) return bad(st.message());
    if (!keys.emplace(Digest(fields[0]), std::string(fields[1])).second) {
      return bad("this key is listed twice");
    }
  }
  if (keys.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("API keys file '", path, "' has no keys: no client could call the server"));
  }
  return keys;
}

absl::StatusOr<std::unique_ptr<ApiKeys>> ApiKeys::Load(const std::string& path) {
  std::unique_ptr<ApiKeys> keys(new ApiKeys(path));
  const std::optional<std::string> text = ReadFile(path);
  if (!text) return absl::NotFoundError(absl::StrCat("cannot read the API keys file '", path, "'"));
  auto parsed = Parse(path, *text);
  if (!parsed.ok()) return parsed.status();
  absl::MutexLock lock(&keys->mu_);
  keys->keys_ = std::move(*parsed);
  keys->file_digest_ = Sha256Hex({text->data(), text->size()});
  keys->next_check_ = absl::Now() + absl::Seconds(1);
  return keys;
}

void ApiKeys::ReloadIfChanged() {
  // The file's contents, not its mtime and size, say whether it changed: two writes of keys of
  // one length within the file system's timestamp granularity look alike by those.
  std::optional<std::string> text;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    if (now < next_check_) return;
    next_check_ = now + absl::Seconds(1);
    text = ReadFile(path_);
    if (!text) return;
    std::string digest = Sha256Hex({text->data(), text->size()});
    if (digest == file_digest_) return;
    file_digest_ = std::move(digest);
  }
  auto parsed = Parse(path_, *text);
  if (!parsed.ok()) {
    spdlog::error("API keys not reloaded, keeping the previous ones: {}",
                  std::string(parsed.status().message()));
    return;
  }
  absl::MutexLock lock(&mu_);
  spdlog::info("API keys reloaded from {}: {} keys", path_, parsed->size());
  keys_ = std::move(*parsed);
}

absl::StatusOr<std::string> ApiKeys::Authenticate(absl::string_view authorization) {
  ReloadIfChanged();
  if (authorization.empty()) {
    return absl::UnauthenticatedError(
        "missing API key: send the request metadata 'authorization: Bearer <key>'");
  }
  constexpr absl::string_view kBearer = "Bearer ";
  if (!absl::StartsWithIgnoreCase(authorization, kBearer)) {
    return absl::UnauthenticatedError("the authorization metadata must be 'Bearer <key>'");
  }
  const std::string digest =
      Digest(absl::StripAsciiWhitespace(authorization.substr(kBearer.size())));
  absl::MutexLock lock(&mu_);
  auto it = keys_.find(digest);
  if (it == keys_.end()) return absl::UnauthenticatedError("invalid API key");
  return it->second;
}

size_t ApiKeys::size() const {
  absl::MutexLock lock(&mu_);
  return keys_.size();
}

}  // namespace squeeze::server
