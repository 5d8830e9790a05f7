// One message of a chat conversation, as applications send it (OpenAI / transformers style), and
// the place of a registered document in one.
#pragma once

#include <string>

namespace squeeze {

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" (templates may accept others, e.g. "tool")
  std::string content;
};

// Where a registered document sits in a chat conversation (engine/chat/chat_prompts.h).
enum class ChatDocumentRole {
  kSystem,  // the document is the system message
  kUser,    // the document opens the first user message; the question follows a blank line
};

}  // namespace squeeze
