// The OpenAI endpoint's chat path on a model with a chat template: `messages` after a context
// registered as a chat document are rendered by the engine with the model's template and answer
// exactly as gRPC Generate with the same input.messages; a whole conversation without a context
// too; the stream has OpenAI's chat.completion.chunk shape; malformed messages are the client's
// error, a context that is not a chat document is refused with the engine's reason.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include <tuple>

#include "nlohmann/json.hpp"
#include "server/openai_gateway.h"
#include "tests/e2e/test_server.h"

namespace squeeze::testing {
namespace {

using nlohmann::json;

// The greedy gRPC answer to `messages` (role, content pairs) after `context`.
std::string GrpcChat(client::SqueezeClient& c, const std::string& context, const json& messages,
                     int max_tokens) {
  v1::GenerateRequest req;
  req.set_context(context);
  for (const json& m : messages) {
    v1::ChatMessage* out = req.mutable_input()->mutable_messages()->add_messages();
    out->set_role(m["role"].get<std::string>());
    out->set_content(m["content"].get<std::string>());
  }
  req.set_max_tokens(max_tokens);
  req.mutable_sampling()->set_temperature(0);
  req.set_ignore_eos(true);
  const GenerateResult r = Generate(c, req);
  EXPECT_TRUE(r.status.ok()) << r.status.error_message();
  return r.text;
}

std::vector<json> Events(const std::string& body) {
  std::vector<json> out;
  size_t pos = 0;
  while ((pos = body.find("data: ", pos)) != std::string::npos) {
    const size_t end = body.find("\n\n", pos);
    const std::string data = body.substr(pos + 6, end - pos - 6);
    if (data != "[DONE]") out.push_back(json::parse(data));
    pos = end;
  }
  return out;
}

TEST(OpenAIChatTest, MessagesRenderedWithTheModelsChatTemplate) {
  server::ServerOptions o = DefaultOptions();
  o.model_dir = ChatModelDir("openai_chat_model").string();
  TestServer t = TestServer::Start(o);
  ASSERT_NE(t.server, nullptr);
  v1::RegisterContextRequest reg;
  reg.set_name("docs");
  reg.mutable_content()->set_text(
      ReadText(std::string(SQUEEZE_SOURCE_DIR) + "/tests/data/demo_document.txt").substr(0, 1500));
  reg.set_chat_document(v1::RegisterContextRequest::SYSTEM_MESSAGE);
  v1::ContextInfo info;
  ASSERT_TRUE(t.client
                  ->RegisterContext(
                      reg, [](const v1::RegisterContextEvent&) {}, &info)
                  .ok());
  // A text context without BOS (with it, this template's user frame, whose head is BOS alone,
  // would take it for a chat document opening the first user message).
  v1::RegisterContextRequest plain;
  plain.set_name("plain");
  plain.mutable_content()->set_text(Document().substr(0, 800));
  plain.set_add_bos(false);
  ASSERT_TRUE(t.client
                  ->RegisterContext(
                      plain, [](const v1::RegisterContextEvent&) {}, &info)
                  .ok());
  auto gateway = server::OpenAIGateway::Start({.address = "127.0.0.1:0", .model_name = "test"},
                                              &t.server->engine(), nullptr);
  ASSERT_TRUE(gateway.ok()) << gateway.status();
  httplib::Client http("127.0.0.1", (*gateway)->port());
  const json question = json::array({{{"role", "user"}, {"content", "Which river?"}}});
  json chat = {{"model", "test"},  {"context", "docs"}, {"messages", question},
               {"max_tokens", 6},  {"temperature", 0},  {"ignore_eos", true},
               {"logprobs", true}, {"top_logprobs", 2}};
  auto whole = http.Post("/v1/chat/completions", chat.dump(), "application/json");
  ASSERT_TRUE(whole);
  ASSERT_EQ(whole->status, 200) << whole->body;
  const json body = json::parse(whole->body);
  EXPECT_EQ(body["object"], "chat.completion");
  const json& choice = body["choices"][0];
  EXPECT_EQ(choice["message"]["role"], "assistant");
  EXPECT_EQ(choice["finish_reason"], "length");
  ASSERT_EQ(choice["logprobs"]["content"].size(), 6u);
  EXPECT_EQ(choice["logprobs"]["content"][0]["top_logprobs"].size(), 2u);
  // The registered chat document is the system message the question continues: the same answer
  // as gRPC Generate with input.messages.
  EXPECT_EQ(choice["message"]["content"], GrpcChat(*t.client, "docs", question, 6));

  // A whole conversation without a context, the system message a `developer` one.
  const json conversation = json::array({{{"role", "developer"}, {"content", "Answer briefly."}},
                                         {{"role", "user"}, {"content", "Which river?"}}});
  auto alone = http.Post(
      "/v1/chat/completions",
      json{{"messages", conversation}, {"max_tokens", 5}, {"temperature", 0}, {"ignore_eos", true}}
          .dump(),
      "application/json");
  ASSERT_TRUE(alone);
  ASSERT_EQ(alone->status, 200) << alone->body;
  json as_system = conversation;
  as_system[0]["role"] = "system";
  EXPECT_EQ(json::parse(alone->body)["choices"][0]["message"]["content"],
            GrpcChat(*t.client, "", as_system, 5));

  // After a context registered as plain text the template cannot continue it: the engine's
  // reason (FAILED_PRECONDITION), as a client error.
  json after_plain = chat;
  after_plain["context"] = "plain";
  auto refused = http.Post("/v1/chat/completions", after_plain.dump(), "application/json");
  ASSERT_TRUE(refused);
  EXPECT_EQ(refused->status, 400) << refused->body;
  EXPECT_THAT(refused->body, ::testing::HasSubstr("chat document"));

  chat["stream"] = true;
  auto streamed = http.Post("/v1/chat/completions", chat.dump(), "application/json");
  ASSERT_TRUE(streamed);
  ASSERT_EQ(streamed->status, 200);
  EXPECT_THAT(streamed->body, ::testing::EndsWith("data: [DONE]\n\n"));
  const std::vector<json> chunks = Events(streamed->body);
  ASSERT_GE(chunks.size(), 2u);
  std::string text;
  for (size_t i = 0; i < chunks.size(); ++i) {
    EXPECT_EQ(chunks[i]["object"], "chat.completion.chunk");
    const json& delta = chunks[i]["choices"][0]["delta"];
    EXPECT_EQ(delta.contains("role"), i == 0);
    text += delta["content"].get<std::string>();
  }
  EXPECT_EQ(text, choice["message"]["content"]);
  EXPECT_EQ(chunks.back()["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(chunks.back()["usage"]["completion_tokens"], 6);

  // Malformed messages are the client's error, before any rendering.
  auto bad =
      http.Post("/v1/chat/completions",
                json{{"messages", json::array({{{"role", "robot"}, {"content", "x"}}})}}.dump(),
                "application/json");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400);
  EXPECT_THAT(bad->body, ::testing::HasSubstr("unknown role"));

  // The extensions of squeezed mode: a good value serves, a bad one is the client's error naming
  // the field. budget_policy (calibrated | per_step), query_block (a count of tokens),
  // estimate_tail (a boolean).
  const json base = {{"prompt", "Which river?"},
                     {"context", "plain"},
                     {"max_tokens", 4},
                     {"temperature", 0},
                     {"ignore_eos", true}};
  const std::tuple<const char*, json, json> extensions[] = {
      {"budget_policy", "per_step", "sometimes"},
      {"query_block", 2, -3},
      {"estimate_tail", true, "yes"},
  };
  for (const auto& [field, good, bad] : extensions) {
    SCOPED_TRACE(field);
    json completion = base;
    completion[field] = good;
    auto served = http.Post("/v1/completions", completion.dump(), "application/json");
    ASSERT_TRUE(served);
    EXPECT_EQ(served->status, 200) << served->body;
    completion[field] = bad;
    auto refused = http.Post("/v1/completions", completion.dump(), "application/json");
    ASSERT_TRUE(refused);
    EXPECT_EQ(refused->status, 400);
    EXPECT_THAT(refused->body, ::testing::HasSubstr(field));
  }
}

}  // namespace
}  // namespace squeeze::testing
