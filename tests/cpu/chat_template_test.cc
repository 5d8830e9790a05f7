// The chat-template renderer (engine/chat/) against Python's jinja2 set up as transformers sets it
// up (tools/render_chat_template.py): the public templates of Llama-3 and 3.1, Qwen2, Qwen2.5
// (ChatML), Qwen3, Mistral (v0.1 and Nemo) and Phi-3.5, plus a template exercising every
// construct the renderer implements, each on the conversations of
// tests/data/chat_templates/conversations.json with and without the generation prompt. The
// outputs must be byte-identical, and where jinja2 raises (a template's raise_exception, roles
// that do not alternate) the renderer must refuse too.
#include "engine/chat/chat_template.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace squeeze {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ::testing::HasSubstr;

const fs::path kDataDir = fs::path(SQUEEZE_SOURCE_DIR) / "tests" / "data" / "chat_templates";
const absl::Time kNow = absl::FromUnixSeconds(1721952000);  // 2024-07-26 00:00 UTC

std::string Python() {
  const char* env = std::getenv("SQUEEZE_PYTHON");
  return env != nullptr ? env : "/usr/bin/python3";
}

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

struct Family {
  std::string name;  // tests/data/chat_templates/<name>.jinja
  std::string bos, eos;
};

void PrintTo(const Family& f, std::ostream* os) { *os << f.name; }

std::vector<Family> Families() {
  return {{"llama3", "<|begin_of_text|>", "<|eot_id|>"},
          {"llama31", "<|begin_of_text|>", "<|eot_id|>"},
          {"qwen2", "", "<|im_end|>"},
          {"qwen25", "", "<|im_end|>"},
          {"qwen3", "", "<|im_end|>"},
          {"mistral", "<s>", "</s>"},
          {"mistral_nemo", "<s>", "</s>"},
          {"phi3", "<s>", "<|endoftext|>"},
          {"features", "<s>", "</s>"}};
}

std::vector<std::vector<ChatMessage>> Conversations() {
  const json j = json::parse(ReadFile(kDataDir / "conversations.json"));
  std::vector<std::vector<ChatMessage>> out;
  for (const json& conversation : j.at("conversations")) {
    std::vector<ChatMessage> messages;
    for (const json& m : conversation) {
      messages.push_back({m.at("role").get<std::string>(), m.at("content").get<std::string>()});
    }
    out.push_back(std::move(messages));
  }
  return out;
}

// jinja2's renders, in conversation order, add_generation_prompt false then true.
json Jinja2Renders(const Family& f) {
  const fs::path cases = fs::path(::testing::TempDir()) / ("chat_cases_" + f.name + ".json");
  json j = json::parse(ReadFile(kDataDir / "conversations.json"));
  j["bos_token"] = f.bos;
  j["eos_token"] = f.eos;
  j["now"] = "2024-07-26T00:00:00";
  std::ofstream(cases) << j.dump();
  const std::string command =
      absl::StrCat(Python(), " ", SQUEEZE_SOURCE_DIR, "/tools/render_chat_template.py '",
                   (kDataDir / (f.name + ".jinja")).string(), "' '", cases.string(), "' 2>&1");
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) {
    ADD_FAILURE() << "cannot run " << command;
    return nullptr;
  }
  std::string output;
  char buf[65536];
  for (size_t n; (n = fread(buf, 1, sizeof(buf), pipe)) > 0;) output.append(buf, n);
  const int rc = pclose(pipe);
  json result = json::parse(output, nullptr, /*allow_exceptions=*/false);
  if (rc != 0 || !result.is_array()) {
    ADD_FAILURE() << "jinja2 reference failed (exit " << rc << "); it needs Debian's "
                  << "python3-jinja2 (scripts/install_deps.sh) or SQUEEZE_PYTHON naming a Python "
                  << "with jinja2:\n"
                  << command << "\n"
                  << output.substr(0, 2000);
    return nullptr;
  }
  return result;
}

std::string Visible(const std::string& s, size_t at) {
  const size_t begin = at > 40 ? at - 40 : 0;
  json j = s.substr(begin, 80);
  return j.dump();
}

class ChatTemplateTest : public ::testing::TestWithParam<Family> {};

TEST_P(ChatTemplateTest, MatchesJinja2OnEveryConversation) {
  const Family& f = GetParam();
  const json want = Jinja2Renders(f);
  ASSERT_TRUE(want.is_array());
  const std::vector<std::vector<ChatMessage>> conversations = Conversations();
  ASSERT_EQ(want.size(), 2 * conversations.size());
  absl::StatusOr<std::unique_ptr<JinjaChatTemplate>> t =
      JinjaChatTemplate::Create(ReadFile(kDataDir / (f.name + ".jinja")),
                                {.bos_token = f.bos, .eos_token = f.eos, .now = kNow});
  ASSERT_TRUE(t.ok()) << t.status();
  int rendered = 0, refused = 0;
  for (size_t c = 0; c < conversations.size(); ++c) {
    for (int gen = 0; gen < 2; ++gen) {
      const json& expected = want[2 * c + gen];
      absl::StatusOr<std::string> got = (*t)->Render(conversations[c], gen == 1);
      const std::string label =
          absl::StrCat(f.name, " conversation ", c, " add_generation_prompt=", gen);
      if (expected.contains("error")) {
        EXPECT_FALSE(got.ok()) << label << ": jinja2 raised "
                               << expected["error"].get<std::string>() << ", we rendered "
                               << json(got.value_or("")).dump();
        if (!got.ok()) {
          EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
        }
        ++refused;
        continue;
      }
      ASSERT_TRUE(got.ok()) << label << ": " << got.status();
      const std::string text = expected["text"].get<std::string>();
      if (*got != text) {
        size_t at = 0;
        while (at < got->size() && at < text.size() && (*got)[at] == text[at]) ++at;
        ADD_FAILURE() << label << ": first difference at byte " << at << "\n  ours   "
                      << Visible(*got, at) << "\n  jinja2 " << Visible(text, at);
      }
      ++rendered;
    }
  }
  std::printf("[chat] %-13s %d renders identical to jinja2, %d refused as jinja2 does\n",
              f.name.c_str(), rendered, refused);
}

INSTANTIATE_TEST_SUITE_P(Templates, ChatTemplateTest, ::testing::ValuesIn(Families()),
                         [](const ::testing::TestParamInfo<Family>& info) {
                           return info.param.name;
                         });

absl::Status RenderError(const std::string& source) {
  absl::StatusOr<std::unique_ptr<JinjaChatTemplate>> t = JinjaChatTemplate::Create(source, {});
  if (!t.ok()) return t.status();
  const std::vector<ChatMessage> messages = {{"user", "hi"}};
  return (*t)->Render(messages, true).status();
}

TEST(ChatTemplateErrorsTest, SyntaxAndRuntimeErrorsNameTheLine) {
  EXPECT_THAT(RenderError("ok\n{% if x %}\nno end").message(), HasSubstr("missing {% endif %}"));
  EXPECT_THAT(RenderError("a\n{% macro m() %}{% endmacro %}").message(),
              HasSubstr("line 2: unsupported tag 'macro'"));
  EXPECT_THAT(RenderError("{{ 'unterminated }}").message(), HasSubstr("'{{' is never closed"));
  EXPECT_THAT(RenderError("\n\n{{ nothing + 1 }}").message(),
              HasSubstr("line 3: 'nothing' is undefined"));
  EXPECT_THAT(RenderError("{{ messages[0].role.x.y }}").message(), HasSubstr("is undefined"));
  EXPECT_THAT(RenderError("{{ 'a' + 1 }}").message(),
              HasSubstr("unsupported operand types for +: string and int"));
  EXPECT_THAT(RenderError("{{ x | no_such_filter }}").message(),
              HasSubstr("unsupported filter 'no_such_filter'"));
  EXPECT_THAT(RenderError("{{ raise_exception('roles must alternate') }}").message(),
              HasSubstr("raise_exception: roles must alternate"));
  EXPECT_THAT(RenderError("{% for i in range(2000000) %}{% endfor %}").message(),
              HasSubstr("range() longer than 1000000"));
  EXPECT_THAT(RenderError("{% break %}").message(), HasSubstr("'break' outside a loop"));
}

fs::path TempDir(const std::string& name) {
  fs::path dir = fs::path(::testing::TempDir()) / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

TEST(LoadChatTemplateTest, ReadsTokenizerConfigAndJinjaFile) {
  const fs::path dir = TempDir("chat_template_load");
  EXPECT_EQ(LoadChatTemplate(dir.string()).status().code(), absl::StatusCode::kNotFound);

  json config = {{"bos_token", {{"content", "<s>"}, {"special", true}}},
                 {"eos_token", "</s>"},
                 {"chat_template",
                  "{{ bos_token }}{% for m in messages %}{{ m.content }}"
                  "{% endfor %}{{ eos_token }}"}};
  std::ofstream(dir / "tokenizer_config.json") << config.dump();
  const std::vector<ChatMessage> messages = {{"user", "a"}, {"assistant", "b"}};
  absl::StatusOr<std::unique_ptr<ChatTemplate>> t = LoadChatTemplate(dir.string());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*(*t)->Render(messages, false), "<s>ab</s>");

  // A list of named templates: "default" is used.
  config["chat_template"] = json::array(
      {{{"name", "tool_use"}, {"template", "tools"}}, {{"name", "default"}, {"template", "D"}}});
  std::ofstream(dir / "tokenizer_config.json") << config.dump();
  t = LoadChatTemplate(dir.string());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*(*t)->Render(messages, false), "D");

  // chat_template.jinja wins over tokenizer_config.json.
  std::ofstream(dir / "chat_template.jinja") << "J{{ messages | length }}\n";
  t = LoadChatTemplate(dir.string());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(*(*t)->Render(messages, false), "J2");

  std::ofstream(dir / "chat_template.jinja") << "{% if %}";
  t = LoadChatTemplate(dir.string());
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()),
              HasSubstr("chat_template.jinja: chat template line 1"));
}

}  // namespace
}  // namespace squeeze
