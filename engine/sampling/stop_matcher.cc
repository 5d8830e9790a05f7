#include "engine/sampling/stop_matcher.h"

#include <algorithm>
#include <utility>

namespace squeeze {
namespace {

bool IsContinuationByte(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// Bytes at the end of `s` that form an incomplete UTF-8 character (0 when `s` ends on a character
// boundary). Deltas from the detokenizer never end mid-character, but callers may feed anything.
size_t IncompleteTail(std::string_view s) {
  const size_t n = s.size();
  for (size_t back = 1; back <= std::min<size_t>(3, n); ++back) {
    const auto c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // continuation byte: keep looking for the lead
    size_t len = 1;
    if (c >= 0xF0) {
      len = 4;
    } else if (c >= 0xE0) {
      len = 3;
    } else if (c >= 0xC0) {
      len = 2;
    }
    return len > back ? back : 0;
  }
  return 0;
}

}  // namespace

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  std::erase_if(stops_, [](const std::string& s) { return s.empty(); });
}

StopMatcher::Result StopMatcher::Push(std::string_view delta) {
  Result result;
  if (stopped_) {
    result.stopped = true;
    return result;
  }
  held_.append(delta);

  // held_ had no complete stop string before this delta, so any match now ends inside the delta;
  // searching all of held_ (at most max stop length - 1 old bytes) is both simple and cheap.
  // The match that completes first (smallest end) is the one a token-by-token stream would see
  // first; ties go to the longer stop string. This makes the result independent of how the text
  // was split into deltas.
  size_t match = std::string::npos, match_end = std::string::npos;
  for (const std::string& stop : stops_) {
    const size_t pos = held_.find(stop);
    if (pos == std::string::npos) continue;
    const size_t end = pos + stop.size();
    if (end < match_end || (end == match_end && pos < match)) {
      match = pos;
      match_end = end;
    }
  }
  if (match != std::string::npos) {
    result.emit = held_.substr(0, match);
    result.stopped = stopped_ = true;
    held_.clear();
    return result;
  }

  // Hold back the longest suffix that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const std::string& stop : stops_) {
    for (size_t len = std::min(stop.size() - 1, held_.size()); len > hold; --len) {
      if (std::string_view(held_).substr(held_.size() - len) ==
          std::string_view(stop).substr(0, len)) {
        hold = len;
        break;
      }
    }
  }
  hold = std::max(hold, IncompleteTail(held_));
  // Never split a character: extend the held part back to the start of its first character.
  size_t cut = held_.size() - hold;
  while (cut > 0 && cut < held_.size() && IsContinuationByte(held_[cut])) --cut;
  result.emit = held_.substr(0, cut);
  held_.erase(0, cut);
  return result;
}

std::string StopMatcher::Flush() {
  std::string out = std::move(held_);
  held_.clear();
  return out;
}

}  // namespace squeeze
