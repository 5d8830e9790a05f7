#include "server/logging.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "engine/tokenizer/unicode.h"
#include "spdlog/pattern_formatter.h"
#include "spdlog/spdlog.h"

namespace squeeze::server {
namespace {

class EscapedMessage final : public spdlog::custom_flag_formatter {
 public:
  explicit EscapedMessage(bool json) : json_(json) {}
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    const std::string escaped =
        EscapeLogText(std::string_view(msg.payload.data(), msg.payload.size()), json_);
    dest.append(escaped.data(), escaped.data() + escaped.size());
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<EscapedMessage>(json_);
  }

 private:
  const bool json_;
};

}  // namespace

std::string EscapeLogText(std::string_view text, bool json) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c >= 0x80) {
      size_t n = 0;
      if (unicode::DecodeUtf8({text.data(), text.size()}, i, &n) == unicode::kInvalid) {
        out += json ? "\\ufffd" : absl::StrFormat("\\x%02x", c);
        ++i;
      } else {
        out.append(text.substr(i, n));
        i += n;
      }
      continue;
    }
    ++i;
    switch (c) {
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '"':
        out += json ? "\\\"" : "\"";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          out += json ? absl::StrFormat("\\u%04x", c) : absl::StrFormat("\\x%02x", c);
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  return out;
}

std::unique_ptr<spdlog::formatter> LogFormatter(bool json) {
  auto formatter = std::make_unique<spdlog::pattern_formatter>();
  formatter->add_flag<EscapedMessage>('*', json);
  formatter->set_pattern(
      json ? R"({"time":"%Y-%m-%dT%H:%M:%S.%e%z","level":"%l","thread":%t,"msg":"%*"})"
           : "[%Y-%m-%d %H:%M:%S.%e] [%^%l%$] %*");
  return formatter;
}

absl::Status ConfigureLogging(bool json, const std::string& level) {
  static constexpr std::string_view kLevels[] = {"trace", "debug",    "info", "warn",
                                                 "error", "critical", "off"};
  bool known = false;
  for (std::string_view l : kLevels) known |= level == l;
  if (!known) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--log_level='", level, "' is not one of trace, debug, info, warn, error, critical, off"));
  }
  spdlog::set_formatter(LogFormatter(json));
  spdlog::set_level(spdlog::level::from_str(level));
  return absl::OkStatus();
}

}  // namespace squeeze::server
