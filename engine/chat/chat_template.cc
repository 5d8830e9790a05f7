#include "engine/chat/chat_template.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "engine/chat/template_engine.h"
#include "engine/common/status_macros.h"
#include "nlohmann/json.hpp"

namespace squeeze {
namespace {

using nlohmann::json;

absl::StatusOr<std::string> ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open '", path.string(), "'"));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read '", path.string(), "'"));
  return text.str();
}

// "<s>" or {"content": "<s>", ...} (tokenizer_config.json writes both forms).
std::string TokenString(const json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    auto content = it->find("content");
    if (content != it->end() && content->is_string()) return content->get<std::string>();
  }
  return "";
}

}  // namespace

JinjaChatTemplate::JinjaChatTemplate(std::unique_ptr<jinja::Template> t, Options options)
    : template_(std::move(t)), options_(std::move(options)) {}

JinjaChatTemplate::~JinjaChatTemplate() = default;

absl::StatusOr<std::unique_ptr<JinjaChatTemplate>> JinjaChatTemplate::Create(
    absl::string_view source, Options options) {
  ASSIGN_OR_RETURN(std::unique_ptr<jinja::Template> t, jinja::Template::Parse(source));
  return std::unique_ptr<JinjaChatTemplate>(
      new JinjaChatTemplate(std::move(t), std::move(options)));
}

absl::StatusOr<std::string> JinjaChatTemplate::Render(std::span<const ChatMessage> messages,
                                                      bool add_generation_prompt) const {
  using jinja::Value;
  jinja::ValueList list;
  for (const ChatMessage& m : messages) {
    jinja::ValueMap message;
    message.Set("role", Value::String(m.role));
    message.Set("content", Value::String(m.content));
    list.push_back(Value::Map(std::move(message)));
  }
  // The variables transformers' apply_chat_template passes (tools and documents are None when
  // not given) plus its special-token strings.
  jinja::ValueMap vars;
  vars.Set("messages", Value::List(std::move(list)));
  vars.Set("add_generation_prompt", Value::Bool(add_generation_prompt));
  vars.Set("tools", Value::None());
  vars.Set("documents", Value::None());
  vars.Set("bos_token", Value::String(options_.bos_token));
  vars.Set("eos_token", Value::String(options_.eos_token));
  vars.Set("unk_token", Value::String(options_.unk_token));
  vars.Set("pad_token", Value::String(options_.pad_token));
  return template_->Render(vars, options_.now.value_or(absl::Now()));
}

absl::StatusOr<std::unique_ptr<ChatTemplate>> LoadChatTemplate(const std::string& tokenizer_dir) {
  namespace fs = std::filesystem;
  const fs::path dir(tokenizer_dir);
  std::error_code ec;
  json config = json::object();
  if (fs::is_regular_file(dir / "tokenizer_config.json", ec)) {
    ASSIGN_OR_RETURN(std::string text, ReadFile(dir / "tokenizer_config.json"));
    config = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!config.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat((dir / "tokenizer_config.json").string(), " is not a JSON object"));
    }
  }
  std::string source, origin;
  if (fs::is_regular_file(dir / "chat_template.jinja", ec)) {
    origin = (dir / "chat_template.jinja").string();
    ASSIGN_OR_RETURN(source, ReadFile(dir / "chat_template.jinja"));
  } else if (auto it = config.find("chat_template"); it != config.end() && !it->is_null()) {
    origin = (dir / "tokenizer_config.json").string() + " chat_template";
    if (it->is_string()) {
      source = it->get<std::string>();
    } else if (it->is_array()) {
      for (const json& named : *it) {
        if (named.is_object() && named.value("name", "") == "default" &&
            named.contains("template") && named["template"].is_string()) {
          source = named["template"].get<std::string>();
        }
      }
    }
    if (source.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(origin, " must be a string or a list with a \"default\" template"));
    }
  } else {
    return absl::NotFoundError(absl::StrCat("no chat template in '", tokenizer_dir,
                                            "' (tokenizer_config.json has no chat_template and "
                                            "there is no chat_template.jinja)"));
  }
  JinjaChatTemplate::Options options{.bos_token = TokenString(config, "bos_token"),
                                     .eos_token = TokenString(config, "eos_token"),
                                     .unk_token = TokenString(config, "unk_token"),
                                     .pad_token = TokenString(config, "pad_token")};
  absl::StatusOr<std::unique_ptr<JinjaChatTemplate>> t =
      JinjaChatTemplate::Create(source, std::move(options));
  if (!t.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(origin, ": ", t.status().message()));
  }
  return std::unique_ptr<ChatTemplate>(std::move(*t));
}

}  // namespace squeeze
