// The OpenAI endpoint's chat path with a chat renderer (the seam engine chat templates plug
// into): messages are rendered, the answer equals /v1/completions on the rendered prompt, and
// the stream has OpenAI's chat.completion.chunk shape. The renderer here is the test's own.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include "nlohmann/json.hpp"
#include "server/openai_gateway.h"
#include "tests/e2e/test_server.h"

namespace squeeze::testing {
namespace {

using nlohmann::json;

absl::StatusOr<std::string> TestRender(const std::vector<server::ChatMessage>& messages) {
  std::string out;
  for (const auto& m : messages) out += "\n" + m.role + ": " + m.content;
  return out + "\nassistant:";
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

TEST(OpenAIChatTest, RenderedMessagesStreamAsChatChunks) {
  TestServer t = TestServer::Start();
  ASSERT_NE(t.server, nullptr);
  v1::ContextInfo info;
  ASSERT_TRUE(Register(*t.client, "docs",
                       ReadText(std::string(SQUEEZE_SOURCE_DIR) + "/tests/data/demo_document.txt")
                           .substr(0, 1500),
                       &info)
                  .ok());
  auto gateway = server::OpenAIGateway::Start(
      {.address = "127.0.0.1:0", .model_name = "test", .chat_renderer = TestRender},
      &t.server->engine(), nullptr);
  ASSERT_TRUE(gateway.ok()) << gateway.status();
  httplib::Client http("127.0.0.1", (*gateway)->port());
  const json messages = json::array({{{"role", "system"}, {"content", "Answer briefly."}},
                                     {{"role", "user"}, {"content", "Which river?"}}});
  json chat = {{"model", "test"},  {"context", "docs"}, {"messages", messages},
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

  // The same prompt through /v1/completions gives the same text.
  json completion = {
      {"prompt", *TestRender({{"system", "Answer briefly."}, {"user", "Which river?"}})},
      {"context", "docs"},
      {"max_tokens", 6},
      {"temperature", 0},
      {"ignore_eos", true}};
  auto plain = http.Post("/v1/completions", completion.dump(), "application/json");
  ASSERT_TRUE(plain);
  EXPECT_EQ(json::parse(plain->body)["choices"][0]["text"], choice["message"]["content"]);

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

  // The budget policy extension: per_step serves, anything else is the client's error.
  completion["budget_policy"] = "per_step";
  auto per_step = http.Post("/v1/completions", completion.dump(), "application/json");
  ASSERT_TRUE(per_step);
  EXPECT_EQ(per_step->status, 200) << per_step->body;
  completion["budget_policy"] = "sometimes";
  auto bad_policy = http.Post("/v1/completions", completion.dump(), "application/json");
  ASSERT_TRUE(bad_policy);
  EXPECT_EQ(bad_policy->status, 400);
  EXPECT_THAT(bad_policy->body, ::testing::HasSubstr("budget_policy"));
}

}  // namespace
}  // namespace squeeze::testing
