// Chat prompts as token sequences (engine/chat/chat_prompts.h) with real templates and
// tokenizers: the Llama-3 templates with a Llama-3-style tokenizer.json (the golden BPE, which
// has <|begin_of_text|>, <|start_header_id|>, <|eot_id|> ...), Phi-3's with a SentencePiece
// model plus added tokens, Mistral's that refuses system messages. A registered chat document
// followed by its continuation must give the tokens of the whole conversation.
#include "engine/chat/chat_prompts.h"

#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "engine/tokenizer/bpe_tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace squeeze {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ::testing::HasSubstr;

const fs::path kData = fs::path(SQUEEZE_SOURCE_DIR) / "tests" / "data";

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::unique_ptr<ChatTemplate> Template(const std::string& name, const std::string& bos,
                                       const std::string& eos) {
  auto t = JinjaChatTemplate::Create(ReadFile(kData / "chat_templates" / (name + ".jinja")),
                                     {.bos_token = bos, .eos_token = eos});
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(*t) : nullptr;
}

std::unique_ptr<Tokenizer> Llama3Tokenizer() {
  auto t = LoadBpeTokenizer((kData / "golden" / "tokenizers" / "bpe" / "tokenizer.json").string());
  EXPECT_TRUE(t.ok()) << t.status();
  return std::move(*t);
}

std::vector<int32_t> Concat(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  std::vector<int32_t> out = a;
  out.insert(out.end(), b.begin(), b.end());
  return out;
}

const std::string kDocument =
    "The squeezed index keeps about ten percent of the keys.\nClusters are read whole.";

class Llama3ChatPromptsTest : public ::testing::TestWithParam<std::string> {};

TEST_P(Llama3ChatPromptsTest, DocumentPlusContinuationIsTheWholeConversation) {
  std::unique_ptr<Tokenizer> tok = Llama3Tokenizer();
  ChatPrompts chat(*tok, Template(GetParam(), "<|begin_of_text|>", "<|eot_id|>"));
  const std::vector<ChatMessage> turns = {{"user", "How many keys are kept?"},
                                          {"assistant", "About ten percent."},
                                          {"user", "And which ones?"}};
  for (ChatDocumentRole role : {ChatDocumentRole::kSystem, ChatDocumentRole::kUser}) {
    SCOPED_TRACE(role == ChatDocumentRole::kSystem ? "system" : "user");
    absl::StatusOr<std::vector<int32_t>> doc = chat.Document(kDocument, role);
    ASSERT_TRUE(doc.ok()) << doc.status();
    EXPECT_EQ((*doc)[0], tok->bos_id());
    for (size_t n : {size_t{1}, size_t{3}}) {
      const std::span<const ChatMessage> messages(turns.data(), n);
      absl::StatusOr<std::vector<int32_t>> rest = chat.Continuation(*doc, messages);
      ASSERT_TRUE(rest.ok()) << rest.status();
      // The same conversation rendered whole, with the document in place.
      std::vector<ChatMessage> whole;
      if (role == ChatDocumentRole::kSystem) {
        whole.push_back({"system", kDocument});
        whole.insert(whole.end(), messages.begin(), messages.end());
      } else {
        whole.push_back({"user", kDocument + "\n\n" + turns[0].content});
        whole.insert(whole.end(), messages.begin() + 1, messages.end());
      }
      absl::StatusOr<std::vector<int32_t>> all = chat.Conversation(whole);
      ASSERT_TRUE(all.ok()) << all.status();
      EXPECT_EQ(Concat(*doc, *rest), *all) << n << " messages";
      const auto eot = tok->Encode("<|start_header_id|>assistant<|end_header_id|>\n\n");
      ASSERT_TRUE(eot.ok());
      EXPECT_TRUE(std::equal(eot->rbegin(), eot->rend(), rest->rbegin()))
          << "the continuation ends with the assistant's header";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Templates, Llama3ChatPromptsTest, ::testing::Values("llama3", "llama31"));

TEST(ChatPromptsTest, RefusesContextsThatAreNotChatDocuments) {
  std::unique_ptr<Tokenizer> tok = Llama3Tokenizer();
  ChatPrompts chat(*tok, Template("llama3", "<|begin_of_text|>", "<|eot_id|>"));
  const std::vector<ChatMessage> ask = {{"user", "Question?"}};
  const std::vector<int32_t> plain = *tok->Encode("Just a document registered as text.");
  absl::StatusOr<std::vector<int32_t>> rest = chat.Continuation(plain, ask);
  EXPECT_EQ(rest.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(rest.status().message()), HasSubstr("not registered as a chat document"));
  // Messages after a document must open with the user's question.
  const std::vector<int32_t> doc = *chat.Document(kDocument, ChatDocumentRole::kSystem);
  const std::vector<ChatMessage> assistant_first = {{"assistant", "Hi"}};
  EXPECT_EQ(chat.Continuation(doc, assistant_first).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(chat.Document("", ChatDocumentRole::kSystem).ok());
}

TEST(ChatPromptsTest, TemplateWithoutSystemRoleTakesTheDocumentInTheUserMessage) {
  std::unique_ptr<Tokenizer> tok = Llama3Tokenizer();
  ChatPrompts chat(*tok, Template("mistral", "<|begin_of_text|>", "<|end_of_text|>"));
  absl::StatusOr<std::vector<int32_t>> doc = chat.Document(kDocument, ChatDocumentRole::kSystem);
  EXPECT_EQ(doc.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(doc.status().message()),
              HasSubstr("cannot take a document as the system message: chat template line 1: "
                        "raise_exception: Conversation roles must alternate"));
  doc = chat.Document(kDocument, ChatDocumentRole::kUser);
  ASSERT_TRUE(doc.ok()) << doc.status();
  const std::vector<ChatMessage> ask = {{"user", "Which keys?"}};
  absl::StatusOr<std::vector<int32_t>> rest = chat.Continuation(*doc, ask);
  ASSERT_TRUE(rest.ok()) << rest.status();
  const std::vector<ChatMessage> whole = {{"user", kDocument + "\n\nWhich keys?"}};
  EXPECT_EQ(Concat(*doc, *rest), *chat.Conversation(whole));
}

TEST(ChatPromptsTest, Phi3WithSentencePieceAndAddedTokens) {
  const fs::path dir = fs::path(::testing::TempDir()) / "chat_prompts_phi3";
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::copy_file(kData / "golden" / "tokenizers" / "sp.model", dir / "tokenizer.model");
  json added = {{"1", {{"content", "<s>"}, {"special", true}}},
                {"2", {{"content", "</s>"}, {"special", true}}},
                {"800", {{"content", "<|system|>"}, {"special", true}, {"rstrip", true}}},
                {"801", {{"content", "<|end|>"}, {"special", true}, {"rstrip", true}}},
                {"802", {{"content", "<|user|>"}, {"special", true}, {"rstrip", true}}},
                {"803", {{"content", "<|assistant|>"}, {"special", true}, {"rstrip", true}}}};
  std::ofstream(dir / "tokenizer_config.json")
      << json{{"added_tokens_decoder", added}, {"eos_token", "<|end|>"}}.dump();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = LoadTokenizer(dir.string());
  ASSERT_TRUE(tok.ok()) << tok.status();
  ChatPrompts chat(**tok, Template("phi3", "<s>", "<|end|>"));
  absl::StatusOr<std::vector<int32_t>> doc = chat.Document(kDocument, ChatDocumentRole::kSystem);
  ASSERT_TRUE(doc.ok()) << doc.status();
  EXPECT_EQ((*doc)[0], 800);    // <|system|>
  EXPECT_EQ(doc->back(), 802);  // ... <|end|> <|user|>
  const std::vector<ChatMessage> ask = {{"user", "Which keys?"}};
  absl::StatusOr<std::vector<int32_t>> rest = chat.Continuation(*doc, ask);
  ASSERT_TRUE(rest.ok()) << rest.status();
  EXPECT_EQ(rest->back(), 803);  // <|assistant|>
  const std::vector<ChatMessage> whole = {{"system", kDocument}, {"user", "Which keys?"}};
  EXPECT_EQ(Concat(*doc, *rest), *chat.Conversation(whole));
}

TEST(ChatPromptsTest, WithoutATemplateEveryCallSaysWhy) {
  std::unique_ptr<Tokenizer> tok = Llama3Tokenizer();
  ChatPrompts chat(*tok, absl::NotFoundError("no chat template in 'models/x'"));
  const std::vector<ChatMessage> ask = {{"user", "Hi"}};
  const absl::Status st = chat.Conversation(ask).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(st.message()),
              HasSubstr("chat messages need the model's chat template: no chat template in"));
}

}  // namespace
}  // namespace squeeze
