// Stop strings over a stream of text deltas.
//
// Stop strings can span token (delta) boundaries, so any suffix of the text seen so far that is a
// prefix of a stop string is held back until it either completes a stop string or cannot any
// more. When a stop string matches, the text before it is emitted and the stop string and
// everything after it are not (OpenAI / vLLM semantics); the matcher then stays stopped. When
// several stop strings occur, the one that ends first wins (the longer one on a tie), so the
// output does not depend on how the text was split into deltas.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace squeeze {

class StopMatcher {
 public:
  struct Result {
    std::string emit;      // text that is final and safe to send now
    bool stopped = false;  // a stop string matched (now or earlier)
  };

  // Empty stop strings are ignored (they would match before any text).
  explicit StopMatcher(std::vector<std::string> stops);

  Result Push(std::string_view delta);
  // End of stream without a stop: returns the held-back text ("" once stopped).
  std::string Flush();

  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;  // not yet emitted; never contains a whole stop string
  bool stopped_ = false;
};

}  // namespace squeeze
