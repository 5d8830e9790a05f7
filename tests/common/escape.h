// Test helper: a string as a failure message can show it (control bytes and backslashes escaped,
// cut after max_len bytes).
#pragma once

#include <cstdio>
#include <string>
#include <string_view>

namespace squeeze::testing {

inline std::string Escape(std::string_view s, size_t max_len = 80) {
  std::string out;
  for (unsigned char c : s.substr(0, max_len)) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02X", c);
      out += buf;
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  if (s.size() > max_len) out += "...";
  return "\"" + out + "\"";
}

}  // namespace squeeze::testing
