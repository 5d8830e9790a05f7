// Shared helpers for end-to-end tests: an in-process server on a loopback port and a client.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>

#include "client/client.h"
#include "nlohmann/json.hpp"
#include "server/server.h"

namespace squeeze::testing {

inline std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The first 2,500 characters of the demo document: a context the demo model registers quickly.
inline const std::string& Document() {
  static const std::string doc =
      ReadText(std::string(SQUEEZE_SOURCE_DIR) + "/tests/data/demo_document.txt").substr(0, 2500);
  return doc;
}

// The chat template the chat tests give the test model: role markers as text, the SentencePiece
// model's </s> as the end of every turn.
inline constexpr char kTestChatTemplate[] =
    "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}";

// The test model with kTestChatTemplate in its tokenizer_config.json, in a fresh directory
// `name` under the test's temporary directory.
inline std::filesystem::path ChatModelDir(const std::string& name) {
  namespace fs = std::filesystem;
  const fs::path src = SQUEEZE_TEST_MODEL_DIR;
  const fs::path dir = fs::path(::testing::TempDir()) / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  for (const char* file : {"config.json", "tokenizer.model"}) fs::copy_file(src / file, dir / file);
  fs::create_symlink(fs::absolute(src / "model.safetensors"), dir / "model.safetensors");
  nlohmann::json config = nlohmann::json::parse(ReadText((src / "tokenizer_config.json").string()));
  config["chat_template"] = kTestChatTemplate;
  std::ofstream(dir / "tokenizer_config.json") << config.dump(2);
  return dir;
}

inline server::ServerOptions DefaultOptions() {
  server::ServerOptions o;
  o.model_dir = SQUEEZE_TEST_MODEL_DIR;
  o.address = "127.0.0.1:0";
  o.device = "cpu";  // the CPU reference, also on machines with a GPU (tests/gpu cover cuda)
  o.limits.default_index.window = 32;
  return o;
}

struct TestServer {
  std::unique_ptr<server::SqueezeServer> server;
  std::unique_ptr<client::SqueezeClient> client;

  static TestServer Start(server::ServerOptions o = DefaultOptions()) {
    TestServer t;
    auto s = server::SqueezeServer::Start(std::move(o));
    EXPECT_TRUE(s.ok()) << s.status();
    if (!s.ok()) return t;
    t.server = std::move(*s);
    t.client =
        std::make_unique<client::SqueezeClient>("127.0.0.1:" + std::to_string(t.server->port()));
    return t;
  }
};

// Registers `text` under `name`; returns the final status and fills `info`.
inline grpc::Status Register(client::SqueezeClient& c, const std::string& name,
                             const std::string& text, v1::ContextInfo* info,
                             std::vector<v1::RegisterContextEvent>* events = nullptr,
                             const v1::IndexOptions* index = nullptr) {
  v1::RegisterContextRequest req;
  req.set_name(name);
  req.mutable_content()->set_text(text);
  if (index) *req.mutable_index() = *index;
  return c.RegisterContext(
      req,
      [&](const v1::RegisterContextEvent& e) {
        if (events) events->push_back(e);
      },
      info);
}

struct GenerateResult {
  grpc::Status status;
  std::vector<int32_t> tokens;
  std::string text;
  int messages = 0;
  v1::GenerateResponse last;
};

inline GenerateResult Generate(client::SqueezeClient& c, const v1::GenerateRequest& req,
                               double timeout = 0) {
  GenerateResult r;
  r.status = c.Generate(
      req,
      [&](const v1::GenerateResponse& resp) {
        ++r.messages;
        r.tokens.insert(r.tokens.end(), resp.token_ids().begin(), resp.token_ids().end());
        r.text += resp.text();
        r.last = resp;
        return true;
      },
      timeout);
  return r;
}

inline v1::GenerateRequest Request(const std::string& context, const std::string& input,
                                   int max_tokens, uint64_t seed = 1, float temperature = 0.8f) {
  v1::GenerateRequest req;
  req.set_context(context);
  req.mutable_input()->set_text(input);
  req.set_max_tokens(max_tokens);
  req.mutable_sampling()->set_seed(seed);
  req.mutable_sampling()->set_temperature(temperature);
  req.set_ignore_eos(true);
  return req;
}

}  // namespace squeeze::testing
