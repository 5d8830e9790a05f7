// Chat templates: a conversation (role, content messages) rendered as the prompt text a chat
// model was trained on. ChatTemplate is the interface the engine uses; JinjaChatTemplate runs
// the Jinja2 template a Hugging Face model ships (tokenizer_config.json "chat_template" or
// chat_template.jinja) exactly as transformers' apply_chat_template renders it.
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "engine/chat/chat_message.h"

namespace squeeze {

class ChatTemplate {
 public:
  virtual ~ChatTemplate() = default;
  // The prompt text of `messages`; with `add_generation_prompt` it ends with the header of the
  // assistant's turn. Special tokens appear as their strings (encode with
  // Tokenizer::EncodeWithSpecialTokens). InvalidArgument when the template refuses the
  // conversation (its raise_exception, e.g. roles that do not alternate).
  virtual absl::StatusOr<std::string> Render(std::span<const ChatMessage> messages,
                                             bool add_generation_prompt) const = 0;
};

namespace jinja {
class Template;
}

class JinjaChatTemplate final : public ChatTemplate {
 public:
  struct Options {
    std::string bos_token;  // the strings the template prints for {{ bos_token }} etc.
    std::string eos_token;
    std::string unk_token;
    std::string pad_token;
    // strftime_now() prints this time (UTC); unset: the time of each Render.
    std::optional<absl::Time> now;
  };
  // InvalidArgument naming the line when `source` is not valid (or uses unsupported Jinja).
  static absl::StatusOr<std::unique_ptr<JinjaChatTemplate>> Create(absl::string_view source,
                                                                   Options options);
  ~JinjaChatTemplate() override;

  absl::StatusOr<std::string> Render(std::span<const ChatMessage> messages,
                                     bool add_generation_prompt) const override;

 private:
  JinjaChatTemplate(std::unique_ptr<jinja::Template> t, Options options);
  std::unique_ptr<jinja::Template> template_;
  Options options_;
};

// The chat template of a tokenizer directory: chat_template.jinja if present, else
// tokenizer_config.json's "chat_template" (a string, or a list of named templates of which
// "default" is used), with the bos/eos/unk/pad token strings of tokenizer_config.json.
// NotFound when the directory has none; InvalidArgument when it does not parse.
absl::StatusOr<std::unique_ptr<ChatTemplate>> LoadChatTemplate(const std::string& tokenizer_dir);

}  // namespace squeeze
