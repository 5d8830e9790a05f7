// One message of a chat conversation, as applications send it (OpenAI / transformers style).
#pragma once

#include <string>

namespace squeeze {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" (templates may accept others, e.g. "tool")
  std::string content;
};

}  // namespace squeeze
