#include "engine/chat/chat_prompts.h"

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/common/status_macros.h"

namespace squeeze {
namespace {

// Stand-ins no template alters (letters only: not trimmed, not special, not JSON-escaped).
const std::string kDocumentPlaceholder = "SqueezeDocumentPlaceholder7f3a";
const std::string kQuestionA = "SqueezeQuestionPlaceholderA5e9";
const std::string kQuestionB = "SqueezeQuestionPlaceholderB2c4";
// Between a document opening the first user message and the question.
constexpr char kUserSeparator[] = "\n\n";

const char* RoleName(ChatDocumentRole role) {
  return role == ChatDocumentRole::kSystem ? "system message" : "opening of the first user message";
}

// The conversation with `document` in place: the system message, or the start of the first
// user message (which must exist).
absl::StatusOr<std::vector<ChatMessage>> WithDocument(absl::string_view document,
                                                      ChatDocumentRole role,
                                                      std::span<const ChatMessage> messages) {
  if (messages.empty() || messages[0].role != "user") {
    return absl::InvalidArgumentError(
        "messages after a registered chat document must start with a user message");
  }
  std::vector<ChatMessage> out;
  if (role == ChatDocumentRole::kSystem) {
    out.push_back({"system", std::string(document)});
    out.insert(out.end(), messages.begin(), messages.end());
  } else {
    out.push_back({"user", absl::StrCat(document, kUserSeparator, messages[0].content)});
    out.insert(out.end(), messages.begin() + 1, messages.end());
  }
  return out;
}

bool HasPrefix(std::span<const int32_t> a, std::span<const int32_t> prefix) {
  return a.size() >= prefix.size() && std::equal(prefix.begin(), prefix.end(), a.begin());
}
bool HasSuffix(std::span<const int32_t> a, std::span<const int32_t> suffix) {
  return a.size() >= suffix.size() &&
         std::equal(suffix.begin(), suffix.end(), a.end() - suffix.size());
}

}  // namespace

ChatPrompts::ChatPrompts(const Tokenizer& tokenizer,
                         absl::StatusOr<std::unique_ptr<ChatTemplate>> chat_template)
    : tokenizer_(tokenizer) {
  if (chat_template.ok()) {
    template_ = std::move(*chat_template);
  } else {
    unavailable_ = absl::FailedPreconditionError(absl::StrCat(
        "chat messages need the model's chat template: ", chat_template.status().message()));
  }
}

ChatPrompts::~ChatPrompts() = default;

absl::StatusOr<std::vector<int32_t>> ChatPrompts::Encode(absl::string_view text) const {
  return tokenizer_.EncodeWithSpecialTokens(std::string_view(text.data(), text.size()));
}

absl::StatusOr<std::vector<int32_t>> ChatPrompts::Conversation(
    std::span<const ChatMessage> messages) const {
  RETURN_IF_ERROR(unavailable_);
  if (messages.empty()) return absl::InvalidArgumentError("messages is empty");
  ASSIGN_OR_RETURN(std::string text, template_->Render(messages, /*add_generation_prompt=*/true));
  return Encode(text);
}

absl::StatusOr<std::string> ChatPrompts::PrefixBefore(absl::string_view document,
                                                      ChatDocumentRole role,
                                                      const std::string& question) const {
  const ChatMessage ask{"user", question};
  ASSIGN_OR_RETURN(std::vector<ChatMessage> messages,
                   WithDocument(document, role, std::span<const ChatMessage>(&ask, 1)));
  absl::StatusOr<std::string> text = template_->Render(messages, /*add_generation_prompt=*/true);
  if (!text.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("this model's chat template cannot take a document as the ", RoleName(role),
                     ": ", text.status().message()));
  }
  const size_t at = text->find(question);
  if (at == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "this model's chat template does not render the question after a document as the ",
        RoleName(role)));
  }
  return text->substr(0, at);
}

absl::StatusOr<ChatPrompts::Frame> ChatPrompts::FrameFor(ChatDocumentRole role) const {
  ASSIGN_OR_RETURN(std::string a, PrefixBefore(kDocumentPlaceholder, role, kQuestionA));
  ASSIGN_OR_RETURN(std::string b, PrefixBefore(kDocumentPlaceholder, role, kQuestionB));
  const size_t at = a.find(kDocumentPlaceholder);
  if (a != b || at == std::string::npos ||
      a.find(kDocumentPlaceholder, at + 1) != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("this model's chat template does not render a document as the ",
                     RoleName(role), " once, before the question and independently of it"));
  }
  Frame f;
  f.head = a.substr(0, at);
  f.tail = a.substr(at + kDocumentPlaceholder.size());
  size_t head_end = 0, tail_begin = f.tail.size();
  for (const auto& [content, id] : tokenizer_.SpecialTokens()) {
    for (size_t p = f.head.find(content); p != std::string::npos; p = f.head.find(content, p + 1)) {
      head_end = std::max(head_end, p + content.size());
    }
    tail_begin = std::min(tail_begin, f.tail.find(content));
  }
  ASSIGN_OR_RETURN(f.head_tokens, Encode(absl::string_view(f.head).substr(0, head_end)));
  ASSIGN_OR_RETURN(f.tail_tokens, Encode(absl::string_view(f.tail).substr(tail_begin)));
  return f;
}

absl::StatusOr<std::vector<int32_t>> ChatPrompts::Document(absl::string_view document,
                                                           ChatDocumentRole role) const {
  RETURN_IF_ERROR(unavailable_);
  if (document.empty()) return absl::InvalidArgumentError("the chat document is empty");
  ASSIGN_OR_RETURN(Frame f, FrameFor(role));
  ASSIGN_OR_RETURN(std::string prefix, PrefixBefore(document, role, kQuestionA));
  // The template may transform the document (Llama-3 trims it); it must keep the frame.
  if (prefix.size() < f.head.size() + f.tail.size() || !absl::StartsWith(prefix, f.head) ||
      !absl::EndsWith(prefix, f.tail)) {
    return absl::InvalidArgumentError(
        absl::StrCat("this model's chat template renders this document as the ", RoleName(role),
                     " differently from other documents; register it as plain text instead"));
  }
  ASSIGN_OR_RETURN(std::vector<int32_t> tokens, Encode(prefix));
  if (!HasPrefix(tokens, f.head_tokens) || !HasSuffix(tokens, f.tail_tokens)) {
    return absl::InvalidArgumentError(
        "this document changes how the chat template's special tokens are tokenized around it; "
        "register it as plain text instead");
  }
  return tokens;
}

absl::StatusOr<std::vector<int32_t>> ChatPrompts::Continuation(
    std::span<const int32_t> context, std::span<const ChatMessage> messages) const {
  RETURN_IF_ERROR(unavailable_);
  for (ChatDocumentRole role : {ChatDocumentRole::kSystem, ChatDocumentRole::kUser}) {
    absl::StatusOr<Frame> f = FrameFor(role);
    if (!f.ok()) continue;
    if (context.size() < f->head_tokens.size() + f->tail_tokens.size() ||
        !HasPrefix(context, f->head_tokens) || !HasSuffix(context, f->tail_tokens)) {
      continue;
    }
    ASSIGN_OR_RETURN(std::vector<ChatMessage> whole,
                     WithDocument(kDocumentPlaceholder, role, messages));
    ASSIGN_OR_RETURN(std::string text, template_->Render(whole, /*add_generation_prompt=*/true));
    const std::string prefix = absl::StrCat(f->head, kDocumentPlaceholder, f->tail);
    if (!absl::StartsWith(text, prefix)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "this model's chat template does not render these messages as a continuation of the "
          "registered document (as the ",
          RoleName(role), "); e.g. a template that moves the system message"));
    }
    return Encode(absl::string_view(text).substr(prefix.size()));
  }
  return absl::FailedPreconditionError(
      "the context was not registered as a chat document for this model's chat template; "
      "register it with chat_document set, or send text or token_ids instead of messages");
}

}  // namespace squeeze
