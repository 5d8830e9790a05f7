// ValidateServerOptions (server.h): start-up options checked before anything is loaded, each
// error naming the flag that sets the option.
#include <cmath>

#include "absl/strings/str_cat.h"
#include "server/server.h"

namespace squeeze::server {
namespace {

absl::Status Bad(const char* flag, const std::string& want, double got) {
  return absl::InvalidArgumentError(
      absl::StrCat("--", flag, " must be ", want, " (got ", got, ")"));
}

absl::Status InRange(const char* flag, double value, double lo, double hi) {
  if (!std::isfinite(value) || value < lo || value > hi) {
    return Bad(flag, absl::StrCat("in [", lo, ", ", hi, "]"), value);
  }
  return absl::OkStatus();
}

// [lo, hi): hi itself excluded.
absl::Status InHalfOpen(const char* flag, double value, double lo, double hi) {
  if (!std::isfinite(value) || value < lo || value >= hi) {
    return Bad(flag, absl::StrCat("in [", lo, ", ", hi, ")"), value);
  }
  return absl::OkStatus();
}

absl::Status AtLeast(const char* flag, double value, double lo) {
  if (!std::isfinite(value) || value < lo) return Bad(flag, absl::StrCat(">= ", lo), value);
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateServerOptions(const ServerOptions& o) {
  const EngineOptions& e = o.engine;
  const RequestLimits& l = o.limits;
  const SqueezeOptions& idx = l.default_index;
  // gRPC takes an int for message sizes: 2047 MiB is the most it can express.
  const double message_mb = static_cast<double>(o.max_message_bytes) / (1 << 20);
  const absl::Status checks[] = {
      AtLeast("max_context_memory_mb", static_cast<double>(o.max_context_memory) / (1 << 20), 0),
      InRange("max_message_mb", message_mb, 1, 2047),
      AtLeast("max_running", e.max_running, 1),
      AtLeast("max_waiting", e.max_waiting, 0),
      AtLeast("max_registrations", e.max_registrations, 1),
      AtLeast("prefill_chunk", e.prefill_chunk, 1),
      AtLeast("max_step_tokens", e.max_step_tokens, 1),
      AtLeast("registration_chunk_while_decoding", e.registration_chunk_while_decoding, 1),
      InRange("default_budget", e.default_budget, 0, 1),
      AtLeast("query_block", e.default_query_block, 0),
      AtLeast("max_tokens_cap", l.max_tokens_cap, 1),
      // Within the cap: a request without max_tokens must be one the server would accept.
      InRange("default_max_tokens", l.default_max_tokens, 1, std::max(1, l.max_tokens_cap)),
      AtLeast("max_input_bytes", static_cast<double>(l.max_input_bytes), 0),
      InRange("centroid_fraction", idx.centroid_fraction, 1e-9, 1),
      InRange("coarse_fraction", idx.coarse_fraction, 1e-9, 1),
      AtLeast("window", idx.window, 1),
      AtLeast("sinks", idx.sinks, 0),
      InRange("kmeans_iterations", idx.max_iterations, 1, 1000),
      InHalfOpen("kmeans_min_changed", idx.kmeans_min_changed, 0, 1),
  };
  for (const absl::Status& st : checks) {
    if (!st.ok()) return st;
  }
  if (idx.hierarchical && idx.coarse_fraction > idx.centroid_fraction) {
    return Bad(
        "coarse_fraction",
        absl::StrCat("<= --centroid_fraction (", idx.centroid_fraction, ") with --hierarchical"),
        idx.coarse_fraction);
  }
  return ValidateTlsFiles(o.tls);
}

}  // namespace squeeze::server
