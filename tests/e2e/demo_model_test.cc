// Guards the bundled trained demo model and the engine together: a few retrieval tasks at short
// length through the real server on CPU must be answered exactly under dense attention.
// Tasks: tests/data/demo_tasks.jsonl, made by
//   tools/retrieval_tasks.py --seed 4242 --n 3 --words 700 --variant single|multikey
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/ascii.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/test_server.h"

namespace squeeze::testing {
namespace {

TEST(DemoModelTest, DenseAnswersRetrievalTasks) {
  const std::string model = std::string(SQUEEZE_SOURCE_DIR) + "/models/squeeze-demo";
  ASSERT_TRUE(std::filesystem::exists(model + "/config.json")) << model;
  server::ServerOptions o = DefaultOptions();
  o.model_dir = model;
  TestServer t = TestServer::Start(o);
  ASSERT_NE(t.server, nullptr);
  std::ifstream in(std::string(SQUEEZE_SOURCE_DIR) + "/tests/data/demo_tasks.jsonl");
  int tasks = 0;
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    const auto task = nlohmann::json::parse(line);
    const std::string name = "task" + std::to_string(tasks++);
    v1::ContextInfo info;
    ASSERT_TRUE(Register(*t.client, name, task["context"].get<std::string>(), &info).ok());
    EXPECT_GT(info.num_tokens(), 700);
    v1::GenerateRequest req;
    req.set_context(name);
    req.mutable_input()->set_text(task["question"].get<std::string>());
    req.set_max_tokens(16);
    req.mutable_sampling()->set_temperature(0);
    req.mutable_attention()->set_mode(v1::AttentionOptions::DENSE);
    GenerateResult r = Generate(*t.client, req);
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    EXPECT_EQ(absl::StripAsciiWhitespace(r.text),
              absl::StripAsciiWhitespace(task["answer"].get<std::string>()))
        << task["variant"] << " task " << name;
    EXPECT_EQ(r.last.finish_reason(), v1::EOS);
  }
  EXPECT_EQ(tasks, 6);
}

}  // namespace
}  // namespace squeeze::testing
