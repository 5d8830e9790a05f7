// Log set-up: plain text or one JSON object per line (--log_json). Messages may carry text from
// requests (ids, names, error details), so they are escaped: control characters never start a
// forged line in text logs, and JSON logs stay one valid object per line (quotes, backslashes,
// control characters and invalid UTF-8 escaped).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "spdlog/formatter.h"

namespace squeeze::server {

// INVALID_ARGUMENT naming --log_level when `level` is not trace|debug|info|warn|error|critical|off.
absl::Status ConfigureLogging(bool json, const std::string& level);

// The formatter ConfigureLogging installs (for tests and other loggers).
std::unique_ptr<spdlog::formatter> LogFormatter(bool json);

// `text` made safe for one log line: JSON string escaping (json) or C-style escapes of control
// characters and backslashes (text).
std::string EscapeLogText(std::string_view text, bool json);

}  // namespace squeeze::server
