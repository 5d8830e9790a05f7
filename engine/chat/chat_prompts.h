// Token sequences of chat prompts, built with a model's chat template and tokenizer: whole
// conversations, a document registered as the opening of a conversation (so that Squeeze can
// prefill and cluster it once), and the rest of a conversation continuing such a document.
//
// A registered chat document is the rendered conversation up to where the first question's text
// starts: the template's head (BOS, system header, ...), the document, and the template text
// between the document and the question (end of the system turn and the user header; or, with
// the document opening the first user message, a blank line). A continuation renders the whole
// conversation with a placeholder for the document and keeps what follows that same prefix, so
// context + continuation is the text transformers' apply_chat_template gives for the whole
// conversation, tokenized in two parts split where the question starts.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "engine/chat/chat_message.h"
#include "engine/chat/chat_template.h"
#include "engine/tokenizer/tokenizer.h"

namespace squeeze {

class ChatPrompts {
 public:
  // `chat_template` may hold the reason there is none (no template in the model directory, or
  // one that does not parse): every call then fails with FailedPrecondition and that reason,
  // and the server still serves text and token prompts. `tokenizer` must outlive this.
  ChatPrompts(const Tokenizer& tokenizer,
              absl::StatusOr<std::unique_ptr<ChatTemplate>> chat_template);
  ~ChatPrompts();

  // The whole conversation, ending with the assistant's header (add_generation_prompt).
  absl::StatusOr<std::vector<int32_t>> Conversation(std::span<const ChatMessage> messages) const;

  // `document` as the opening of a conversation (see the file comment). InvalidArgument when
  // the template cannot place it there (e.g. a template without a system role: use kUser).
  absl::StatusOr<std::vector<int32_t>> Document(absl::string_view document,
                                                ChatDocumentRole role) const;

  // The conversation after a document registered with Document() whose tokens are `context`:
  // `messages` start with the user's question; the result ends with the assistant's header.
  // FailedPrecondition when `context` is not a chat document of this template (registered as
  // plain text, or with another model's template: its tokens do not start with the head's up to
  // its last special token and end with the tail's from its first; with a template whose head
  // has no special token but BOS and a document opening the first user message, whose tail has
  // none, a text context starting with BOS cannot be told apart); InvalidArgument when the
  // template places
  // the conversation so that it does not continue the document.
  absl::StatusOr<std::vector<int32_t>> Continuation(std::span<const int32_t> context,
                                                    std::span<const ChatMessage> messages) const;

 private:
  // The template text around a document: head + document + tail + question. A registered
  // document's tokens start with those of the head up to its last special token and end with
  // those of the tail from its first special token (special tokens are where a tokenizer splits
  // text, so these do not depend on the document); that is how a continuation recognises one.
  struct Frame {
    std::string head, tail;
    std::vector<int32_t> head_tokens, tail_tokens;
  };
  absl::StatusOr<Frame> FrameFor(ChatDocumentRole role) const;
  // The rendered text up to the first occurrence of `question` in the conversation opened by
  // `document`.
  absl::StatusOr<std::string> PrefixBefore(absl::string_view document, ChatDocumentRole role,
                                           const std::string& question) const;
  absl::StatusOr<std::vector<int32_t>> Encode(absl::string_view text) const;

  const Tokenizer& tokenizer_;
  std::unique_ptr<ChatTemplate> template_;
  absl::Status unavailable_;
};

}  // namespace squeeze
