// Chat through the gRPC API on a real server: a document registered as the system message of a
// chat (RegisterContext.chat_document) and conversations continuing it (Generate with
// input.messages), checked against the same tokens built directly with the model's chat
// template and tokenizer; plus the errors of chat requests that cannot be served.
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "engine/chat/chat_prompts.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/test_server.h"

namespace squeeze::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

v1::GenerateRequest ChatRequest(const std::string& context,
                                const std::vector<ChatMessage>& messages) {
  v1::GenerateRequest req;
  req.set_context(context);
  for (const ChatMessage& m : messages) {
    v1::ChatMessage* out = req.mutable_input()->mutable_messages()->add_messages();
    out->set_role(m.role);
    out->set_content(m.content);
  }
  req.set_max_tokens(12);
  req.mutable_sampling()->set_temperature(0);
  req.set_ignore_eos(true);
  req.mutable_attention()->set_mode(v1::AttentionOptions::DENSE);
  return req;
}

class ChatE2ETest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ChatModelDir("chat_e2e_model");
    server::ServerOptions o = DefaultOptions();
    o.model_dir = dir_.string();
    t_ = TestServer::Start(o);
    ASSERT_NE(t_.client, nullptr);
    document_ = ReadText((fs::path(SQUEEZE_SOURCE_DIR) / "tests" / "data" / "corpus.txt").string())
                    .substr(0, 1500);
  }
  fs::path dir_;
  TestServer t_;
  std::string document_;
};

TEST_F(ChatE2ETest, RegisteredChatDocumentAndContinuationsMatchTheTemplate) {
  v1::RegisterContextRequest reg;
  reg.set_name("manual");
  reg.mutable_content()->set_text(document_);
  reg.set_chat_document(v1::RegisterContextRequest::SYSTEM_MESSAGE);
  v1::ContextInfo info;
  ASSERT_TRUE(t_.client
                  ->RegisterContext(
                      reg, [](const v1::RegisterContextEvent&) {}, &info)
                  .ok());

  // The same tokens, built directly from the model directory's template and tokenizer.
  auto tokenizer = LoadTokenizer(dir_.string());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  ChatPrompts chat(**tokenizer, LoadChatTemplate(dir_.string()));
  absl::StatusOr<std::vector<int32_t>> doc = chat.Document(document_, ChatDocumentRole::kSystem);
  ASSERT_TRUE(doc.ok()) << doc.status();
  EXPECT_EQ(info.num_tokens(), static_cast<int64_t>(doc->size()));

  const std::vector<std::vector<ChatMessage>> conversations = {
      {{"user", "What does the document say?"}},
      {{"user", "What does the document say?"},
       {"assistant", "It lists facts."},
       {"user", "Which one comes first?"}}};
  for (const auto& messages : conversations) {
    const GenerateResult chat_result = Generate(*t_.client, ChatRequest("manual", messages));
    ASSERT_TRUE(chat_result.status.ok()) << chat_result.status.error_message();
    absl::StatusOr<std::vector<int32_t>> rest = chat.Continuation(*doc, messages);
    ASSERT_TRUE(rest.ok()) << rest.status();
    EXPECT_EQ(chat_result.last.usage().context_tokens(), info.num_tokens());
    EXPECT_EQ(chat_result.last.usage().query_tokens(), static_cast<int64_t>(rest->size()));
    EXPECT_EQ(chat_result.tokens.size(), 12u);

    // The whole prompt as token ids, without the registered context: the same greedy tokens.
    v1::GenerateRequest whole = ChatRequest("", {});
    whole.mutable_input()->clear_messages();
    for (int32_t id : *doc) whole.mutable_input()->mutable_token_ids()->add_ids(id);
    for (int32_t id : *rest) whole.mutable_input()->mutable_token_ids()->add_ids(id);
    const GenerateResult whole_result = Generate(*t_.client, whole);
    ASSERT_TRUE(whole_result.status.ok()) << whole_result.status.error_message();
    EXPECT_EQ(chat_result.tokens, whole_result.tokens) << messages.size() << " messages";
  }

  // A whole conversation without a context: the template rendered with the generation prompt.
  const std::vector<ChatMessage> alone = {{"system", "Be brief."}, {"user", "Hello"}};
  const GenerateResult r = Generate(*t_.client, ChatRequest("", alone));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.last.usage().query_tokens(), static_cast<int64_t>(chat.Conversation(alone)->size()));
}

TEST_F(ChatE2ETest, ChatRequestsThatCannotBeServedGetTheRightCodes) {
  // A context registered as text (without BOS: this template's head has no other special
  // token, so a text context that starts with BOS is taken for a chat document opening the first
  // user message).
  v1::ContextInfo info;
  v1::RegisterContextRequest plain;
  plain.set_name("plain");
  plain.mutable_content()->set_text(document_);
  plain.set_add_bos(false);
  ASSERT_TRUE(t_.client
                  ->RegisterContext(
                      plain, [](const v1::RegisterContextEvent&) {}, &info)
                  .ok());
  const std::vector<ChatMessage> ask = {{"user", "Question?"}};
  GenerateResult r = Generate(*t_.client, ChatRequest("plain", ask));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(r.status.error_message(), HasSubstr("not registered as a chat document"));

  r = Generate(*t_.client, ChatRequest("", {{"", "no role"}}));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(r.status.error_message(), HasSubstr("messages[0].role is empty"));

  v1::RegisterContextRequest reg;
  reg.set_name("ids");
  reg.mutable_content()->mutable_token_ids()->add_ids(5);
  reg.set_chat_document(v1::RegisterContextRequest::SYSTEM_MESSAGE);
  grpc::Status st = t_.client->RegisterContext(
      reg, [](const v1::RegisterContextEvent&) {}, &info);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("chat_document: needs content.text"));

  reg.mutable_content()->mutable_messages()->add_messages()->set_role("user");
  st = t_.client->RegisterContext(
      reg, [](const v1::RegisterContextEvent&) {}, &info);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("messages are the input of Generate"));
}

TEST(ChatE2EWithoutTemplateTest, MessagesAreRefusedWithTheReason) {
  TestServer t = TestServer::Start();  // the test model has no chat template
  ASSERT_NE(t.client, nullptr);
  const GenerateResult r = Generate(*t.client, ChatRequest("", {{"user", "Hi"}}));
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(r.status.error_message(),
              HasSubstr("chat messages need the model's chat template: no chat template in"));
}

}  // namespace
}  // namespace squeeze::testing
