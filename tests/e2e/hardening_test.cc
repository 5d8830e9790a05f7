// Adversarial end-to-end tests of the hardening fixes (issue "Hardening and security", items
// 1-12 and 14): real servers, in-process or as the squeeze-server binary.
#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <thread>

#include "nlohmann/json.hpp"
#include "server/logging.h"
#include "tests/e2e/process_util.h"
#include "tests/e2e/test_server.h"

namespace squeeze::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// ---- 1. oversized input is refused by its size, before tokenizing -----------------------------

TEST(HardeningTest, OversizedInputIsRefusedByItsBytes) {
  server::ServerOptions o = DefaultOptions();
  o.limits.max_input_bytes = 20000;
  TestServer t = TestServer::Start(o);
  ASSERT_NE(t.server, nullptr);
  const std::string big(20001, 'a');
  v1::ContextInfo info;
  grpc::Status st = Register(*t.client, "big", big, &info);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("20001 bytes exceeds the limit of 20000 bytes"));
  GenerateResult g = Generate(*t.client, Request("", big, 4));
  EXPECT_EQ(g.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(g.status.error_message(), HasSubstr("bytes exceeds the limit"));
  v1::TokenizeResponse tok;
  st = t.client->Tokenize(big, false, &tok);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("bytes exceeds the limit"));
  // Nothing was tokenized or run: the engine saw no request.
  EXPECT_EQ(t.server->engine().stats().requests_finished, 0);
  // At the limit it is served.
  EXPECT_TRUE(t.client->Tokenize(std::string(20000, 'a'), false, &tok).ok());
  // Token ids beyond the model's window are refused by their count.
  v1::GenerateRequest ids = Request("", "x", 4);
  for (int i = 0; i < 8193; ++i) ids.mutable_input()->mutable_token_ids()->add_ids(5);
  g = Generate(*t.client, ids);
  EXPECT_EQ(g.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(g.status.error_message(), HasSubstr("8193 token ids exceed the model's window"));
}

TEST(HardeningTest, InputLimitDefaultsFromTheModelWindow) {
  TestServer t = TestServer::Start();
  ASSERT_NE(t.server, nullptr);
  // 8192 tokens of at most a few bytes each: 10 MB can never fit and is refused unread.
  v1::TokenizeResponse tok;
  grpc::Status st = t.client->Tokenize(std::string(10 << 20, 'a'), false, &tok);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("more than the model's window can hold"));
}

// ---- 2-4. state directory: checksums, quarantine, lock, stale temporaries ----------------------

TEST(HardeningTest, CorruptedStateFileIsQuarantinedAndAnswersDataLoss) {
  const std::string dir = TempDir("corrupt");
  server::ServerOptions o = DefaultOptions();
  o.state_dir = dir;
  {
    TestServer t = TestServer::Start(o);
    ASSERT_NE(t.server, nullptr);
    v1::ContextInfo info;
    ASSERT_TRUE(Register(*t.client, "docs", Document(), &info).ok());
    ASSERT_TRUE(Register(*t.client, "other", Document().substr(0, 900), &info).ok());
  }
  const std::string file = dir + "/docs.sqzctx";
  ASSERT_TRUE(fs::exists(file));
  {
    // Flip bytes in the middle of the KV: the file keeps its size and its structure.
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    const auto size = static_cast<std::streamoff>(fs::file_size(file));
    f.seekg(size / 2);
    std::string bytes(64, '\0');
    f.read(bytes.data(), 64);
    for (char& c : bytes) c = static_cast<char>(c ^ 0x5a);
    f.seekp(size / 2);
    f.write(bytes.data(), 64);
  }
  LogCapture log;
  TestServer t = TestServer::Start(o);
  ASSERT_NE(t.server, nullptr);
  v1::ContextInfo got;
  grpc::Status st = t.client->GetContext("docs", &got);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::DATA_LOSS);
  EXPECT_THAT(st.error_message(), HasSubstr("corrupted"));
  GenerateResult g = Generate(*t.client, Request("docs", " x", 2));
  EXPECT_EQ(g.status.error_code(), grpc::StatusCode::DATA_LOSS);
  EXPECT_FALSE(fs::exists(file));
  int quarantined = 0;
  for (const auto& e : fs::directory_iterator(dir + "/quarantine")) {
    quarantined += e.path().filename().string().starts_with("docs.sqzctx.");
  }
  EXPECT_EQ(quarantined, 1);
  EXPECT_THAT(log.text(), HasSubstr("checksum mismatch"));
  EXPECT_THAT(log.text(), HasSubstr("moved to " + dir + "/quarantine/docs.sqzctx."));
  // The intact context is served; the corrupted one can be registered again.
  EXPECT_TRUE(t.client->GetContext("other", &got).ok());
  v1::ContextInfo again;
  ASSERT_TRUE(Register(*t.client, "docs", Document(), &again).ok());
  EXPECT_FALSE(again.reused());
  EXPECT_TRUE(t.client->GetContext("docs", &got).ok());
  fs::remove_all(dir);
}

TEST(HardeningTest, TruncatedStateFileIsQuarantined) {
  const std::string dir = TempDir("truncated");
  server::ServerOptions o = DefaultOptions();
  o.state_dir = dir;
  {
    TestServer t = TestServer::Start(o);
    ASSERT_NE(t.server, nullptr);
    v1::ContextInfo info;
    ASSERT_TRUE(Register(*t.client, "docs", Document(), &info).ok());
  }
  fs::resize_file(dir + "/docs.sqzctx", fs::file_size(dir + "/docs.sqzctx") - 100);
  TestServer t = TestServer::Start(o);
  ASSERT_NE(t.server, nullptr);
  v1::ContextInfo got;
  EXPECT_EQ(t.client->GetContext("docs", &got).error_code(), grpc::StatusCode::DATA_LOSS);
  // Deleting forgets it.
  EXPECT_TRUE(t.client->DeleteContext("docs").ok());
  EXPECT_EQ(t.client->GetContext("docs", &got).error_code(), grpc::StatusCode::NOT_FOUND);
  fs::remove_all(dir);
}

TEST(HardeningTest, SecondServerOnTheSameStateDirIsRefused) {
  const std::string dir = TempDir("locked");
  server::ServerOptions o = DefaultOptions();
  o.state_dir = dir;
  TestServer first = TestServer::Start(o);
  ASSERT_NE(first.server, nullptr);
  auto second = server::SqueezeServer::Start(o);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(second.status().message(),
              HasSubstr("is in use by another squeeze-server (pid " + std::to_string(getpid())));
  // Once the first is gone, the directory is free.
  first = TestServer();
  auto third = server::SqueezeServer::Start(o);
  EXPECT_TRUE(third.ok()) << third.status();
  fs::remove_all(dir);
}

TEST(HardeningTest, SecondServerProcessOnTheSameStateDirExitsWithAClearMessage) {
  const std::string dir = TempDir("locked-process");
  server::ServerOptions o = DefaultOptions();
  o.state_dir = dir;
  TestServer first = TestServer::Start(o);
  ASSERT_NE(first.server, nullptr);
  ChildProcess second(ServerArgv(dir + "/port", {"--state_dir=" + dir}));
  EXPECT_EQ(second.Wait(), 1);
  EXPECT_THAT(second.output(), HasSubstr("is in use by another squeeze-server"));
  fs::remove_all(dir);
}

TEST(HardeningTest, StaleTemporaryFilesAreRemovedAtStartUp) {
  const std::string dir = TempDir("stale");
  std::ofstream(dir + "/docs.sqzctx.tmp") << std::string(4096, 'x');
  std::ofstream(dir + "/keep.txt") << "not ours";
  server::ServerOptions o = DefaultOptions();
  o.state_dir = dir;
  LogCapture log;
  TestServer t = TestServer::Start(o);
  ASSERT_NE(t.server, nullptr);
  EXPECT_FALSE(fs::exists(dir + "/docs.sqzctx.tmp"));
  EXPECT_TRUE(fs::exists(dir + "/keep.txt"));
  EXPECT_THAT(log.text(), HasSubstr("docs.sqzctx.tmp (4096 bytes), left by an interrupted write"));
  fs::remove_all(dir);
}

// ---- 5. one port, one server ------------------------------------------------------------------

TEST(HardeningTest, SecondServerCannotShareThePorts) {
  server::ServerOptions o = DefaultOptions();
  o.metrics_address = "127.0.0.1:0";
  o.openai_address = "127.0.0.1:0";
  TestServer first = TestServer::Start(o);
  ASSERT_NE(first.server, nullptr);
  server::ServerOptions same_grpc = DefaultOptions();
  same_grpc.address = "127.0.0.1:" + std::to_string(first.server->port());
  auto second = server::SqueezeServer::Start(same_grpc);
  ASSERT_FALSE(second.ok());
  EXPECT_THAT(second.status().message(), HasSubstr("cannot listen on"));
  server::ServerOptions same_metrics = DefaultOptions();
  same_metrics.metrics_address = "127.0.0.1:" + std::to_string(first.server->metrics_port());
  auto third = server::SqueezeServer::Start(same_metrics);
  ASSERT_FALSE(third.ok());
  EXPECT_THAT(third.status().message(), HasSubstr("cannot listen on metrics address"));
  server::ServerOptions same_openai = DefaultOptions();
  same_openai.openai_address = "127.0.0.1:" + std::to_string(first.server->openai_port());
  auto fourth = server::SqueezeServer::Start(same_openai);
  ASSERT_FALSE(fourth.ok());
  EXPECT_THAT(fourth.status().message(), HasSubstr("cannot listen on OpenAI address"));
}

// ---- 6. log injection -------------------------------------------------------------------------

TEST(HardeningTest, RequestIdsWithControlCharactersAreRefused) {
  TestServer t = TestServer::Start();
  ASSERT_NE(t.server, nullptr);
  v1::GenerateRequest req = Request("", "Hello", 2);
  req.set_request_id("abc\r\n[info] forged line");
  GenerateResult g = Generate(*t.client, req);
  EXPECT_EQ(g.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(g.status.error_message(), HasSubstr("request_id"));
  req.set_request_id("client-42_x.y");
  EXPECT_TRUE(Generate(*t.client, req).status.ok());
}

std::string Formatted(bool json, const std::string& message) {
  auto formatter = server::LogFormatter(json);
  spdlog::details::log_msg msg("squeeze", spdlog::level::warn,
                               spdlog::string_view_t(message.data(), message.size()));
  spdlog::memory_buf_t out;
  formatter->format(msg, out);
  return std::string(out.data(), out.size());
}

TEST(HardeningTest, LogLinesCannotBeForged) {
  const std::string hostile = "name \"x\" \\ end\r\n{\"level\":\"info\"}\x01 bad\xff utf8 \xc3\xa9";
  const std::string text = Formatted(false, hostile);
  // One line: the only newline is the formatter's own at the end.
  EXPECT_EQ(text.find('\n'), text.size() - 1) << text;
  EXPECT_EQ(text.find('\r'), std::string::npos);
  EXPECT_THAT(text, HasSubstr("\\r\\n{\"level\":\"info\"}\\x01 bad\\xff utf8 \xc3\xa9"));
  const std::string json = Formatted(true, hostile);
  EXPECT_EQ(json.find('\n'), json.size() - 1) << json;
  nlohmann::json parsed = nlohmann::json::parse(json);  // throws when the line is not JSON
  EXPECT_EQ(parsed["level"], "warning");
  EXPECT_EQ(parsed["msg"],
            "name \"x\" \\ end\r\n{\"level\":\"info\"}\x01 bad\xef\xbf\xbd utf8 \xc3\xa9");
}

TEST(HardeningTest, UnknownLogLevelIsRefused) {
  absl::Status st = server::ConfigureLogging(false, "bogus");
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("--log_level='bogus'"));
}

// ---- 8. a second signal does not cut the drain ------------------------------------------------

TEST(HardeningTest, SecondSignalDuringTheDrainDoesNotCutStreams) {
  const std::string dir = TempDir("signals");
  ChildProcess server(ServerArgv(dir + "/port", {"--grace_seconds=60"}));
  const int port = WaitForPortFile(dir + "/port");
  ASSERT_GT(port, 0) << server.output();
  client::SqueezeClient c("127.0.0.1:" + std::to_string(port));
  GenerateResult running;
  std::mutex mu;
  std::condition_variable cv;
  int received = 0;
  std::thread th([&] {
    // Long enough to outlast both signals on a fast, idle machine (400 tokens once finished
    // within 200 ms of the first signal, before the second arrived).
    running.status = c.Generate(Request("", "Once upon", 3000), [&](const v1::GenerateResponse& r) {
      running.tokens.insert(running.tokens.end(), r.token_ids().begin(), r.token_ids().end());
      std::lock_guard<std::mutex> lock(mu);
      ++received;
      cv.notify_all();
      return true;
    });
  });
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return received >= 5; });
  }
  server.Signal(SIGTERM);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  server.Signal(SIGINT);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  server.Signal(SIGTERM);
  th.join();
  EXPECT_TRUE(running.status.ok()) << running.status.error_message() << "\n" << server.output();
  EXPECT_EQ(running.tokens.size(), 3000u);
  EXPECT_EQ(server.Wait(), 0) << server.output();
  EXPECT_THAT(server.output(), HasSubstr("SIGINT received while draining: ignored"));
  fs::remove_all(dir);
}

// ---- 9. start-up flags are checked and named --------------------------------------------------

TEST(HardeningTest, InvalidFlagsAreRefusedNamingTheFlag) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--max_message_mb=0", "--max_message_mb"},
      {"--default_max_tokens=5000", "--default_max_tokens must be in [1, 4096]"},
      {"--max_tokens_cap=0", "--max_tokens_cap"},
      {"--default_max_tokens=0", "--default_max_tokens"},
      {"--default_max_tokens=-5", "--default_max_tokens"},
      {"--centroid_fraction=0", "--centroid_fraction"},
      {"--window=0", "--window must be >= 1"},
      {"--kmeans_iterations=0", "--kmeans_iterations"},
      {"--kmeans_min_changed=1", "--kmeans_min_changed must be in [0, 1) (got 1)"},
      {"--kmeans_min_changed=-0.5", "--kmeans_min_changed"},
      {"--max_registrations=0", "--max_registrations"},
      {"--grace_seconds=-1", "--grace_seconds"},
      {"--max_context_memory_mb=-1", "--max_context_memory_mb must be >= 0 (got -1)"},
      {"--log_level=bogus", "--log_level='bogus'"},
      {"--max_running=0", "--max_running"},
      {"--default_budget=2", "--default_budget"},
      {"--query_block=-1", "--query_block"},
      {"--budget_policy=bogus", "--budget_policy must be calibrated or per_step"},
      {"--tls_cert_file=/nonexistent.pem", "--tls_cert_file and --tls_key_file"},
      {"--tls_client_ca_file=/x.pem", "--tls_client_ca_file needs --tls_cert_file"},
  };
  const std::string dir = TempDir("flags");
  for (const auto& [flag, message] : cases) {
    ChildProcess p(ServerArgv(dir + "/port", {flag}));
    EXPECT_EQ(p.Wait(), 2) << flag << ": " << p.output();
    EXPECT_THAT(p.output(), HasSubstr(message)) << flag;
  }
  fs::remove_all(dir);
}

// ---- 10. malformed requests -------------------------------------------------------------------

grpc::Status RawCall(grpc::Channel* channel, const std::string& method, const std::string& bytes,
                     bool streaming) {
  grpc::GenericStub stub(channel->shared_from_this());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::Slice slice(bytes);
  grpc::ByteBuffer request(&slice, 1), response;
  grpc::Status status;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  if (!streaming) {
    stub.UnaryCall(&ctx, method, grpc::StubOptions(), &request, &response, [&](grpc::Status s) {
      std::lock_guard<std::mutex> lock(mu);
      status = std::move(s);
      done = true;
      cv.notify_all();
    });
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done; });
    return status;
  }
  grpc::CompletionQueue cq;
  auto call = stub.PrepareCall(&ctx, method, &cq);
  void* tag;
  bool ok;
  call->StartCall(reinterpret_cast<void*>(1));
  cq.Next(&tag, &ok);
  call->Write(request, reinterpret_cast<void*>(2));
  cq.Next(&tag, &ok);
  call->WritesDone(reinterpret_cast<void*>(3));
  cq.Next(&tag, &ok);
  while (true) {
    call->Read(&response, reinterpret_cast<void*>(4));
    cq.Next(&tag, &ok);
    if (!ok) break;
  }
  call->Finish(&status, reinterpret_cast<void*>(5));
  cq.Next(&tag, &ok);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return status;
}

TEST(HardeningTest, MalformedRequestsGetInvalidArgumentWithAReason) {
  TestServer t = TestServer::Start();
  ASSERT_NE(t.server, nullptr);
  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(t.server->port()),
                                     grpc::InsecureChannelCredentials());
  v1::GenerateRequest good = Request("", "Hello", 2);
  std::string bytes = good.SerializeAsString();
  // A string field that is not UTF-8: input.text = "\xff\xfe".
  v1::GenerateRequest bad_utf8 = Request("", "XY", 2);
  std::string utf8 = bad_utf8.SerializeAsString();
  const size_t at = utf8.find("XY");
  ASSERT_NE(at, std::string::npos);
  utf8[at] = '\xff';
  utf8[at + 1] = '\xfe';
  const std::vector<std::pair<std::string, std::string>> payloads = {
      {"garbage", std::string("\xff\xff\xff\xff\x0f garbage", 12)},
      {"truncated", bytes.substr(0, bytes.size() - 3)},
      {"invalid UTF-8", utf8},
  };
  for (const auto& [what, payload] : payloads) {
    grpc::Status st = RawCall(channel.get(), "/squeeze.v1.Squeeze/Generate", payload, true);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << what;
    EXPECT_THAT(st.error_message(), HasSubstr("malformed request: not a valid "
                                              "squeeze.v1.GenerateRequest"))
        << what;
  }
  grpc::Status st = RawCall(channel.get(), "/squeeze.v1.Squeeze/GetContext",
                            std::string("\x0a\x05\x64", 3), false);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("squeeze.v1.GetContextRequest"));
  st = RawCall(channel.get(), "/squeeze.v1.Squeeze/RegisterContext", "\x12\xff", true);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // The well-formed request still works through the same path.
  EXPECT_TRUE(RawCall(channel.get(), "/squeeze.v1.Squeeze/Generate", bytes, true).ok());
}

// ---- 12. streams keep flowing while a registration prefills -----------------------------------

TEST(HardeningTest, RegistrationPrefillIsBoundedWhileStreamsDecode) {
  server::ServerOptions o = DefaultOptions();
  o.engine.registration_chunk_while_decoding = 32;
  TestServer t = TestServer::Start(o);
  ASSERT_NE(t.server, nullptr);
  Engine& engine = t.server->engine();
  // Registration tokens forwarded between two consecutive tokens of the stream: read on the
  // engine thread, where each token event follows exactly one step.
  std::mutex mu;
  std::vector<int64_t> per_step;
  int64_t last = -1;
  bool done = false;
  std::condition_variable cv;
  GenerateRequest req;
  req.input.text = "Once upon a time";
  req.sampling.max_tokens = 120;
  req.sampling.ignore_eos = true;
  auto handle = engine.Generate(req, [&](GenerateEvent e) {
    const int64_t now = engine.stats().registration_tokens_forwarded;
    std::lock_guard<std::mutex> lock(mu);
    if (last >= 0) per_step.push_back(now - last);
    last = now;
    if (e.final) {
      done = true;
      cv.notify_all();
    }
  });
  ASSERT_TRUE(handle.ok()) << handle.status();
  v1::ContextInfo info;
  ASSERT_TRUE(Register(*t.client, "docs", Document(), &info).ok());
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done; });
  }
  int64_t max = 0, total = 0;
  for (int64_t n : per_step) {
    max = std::max(max, n);
    total += n;
  }
  EXPECT_GT(total, 0) << "the registration ran while the stream decoded";
  EXPECT_LE(max, 32);
}

// ---- 14. re-registration and concurrent registration ------------------------------------------

TEST(HardeningTest, ReRegistrationWithOtherIndexOptionsIsRefused) {
  TestServer t = TestServer::Start();
  ASSERT_NE(t.server, nullptr);
  v1::IndexOptions w16;
  w16.set_window(16);
  v1::ContextInfo info;
  ASSERT_TRUE(Register(*t.client, "docs", Document(), &info, nullptr, &w16).ok());
  v1::IndexOptions w24;
  w24.set_window(24);
  grpc::Status st = Register(*t.client, "docs", Document(), &info, nullptr, &w24);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_THAT(st.error_message(), HasSubstr("other index options (window 24 vs 16"));
  v1::IndexOptions none;
  none.set_disable(true);
  st = Register(*t.client, "docs", Document(), &info, nullptr, &none);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ALREADY_EXISTS);
  // The same options again: the registered context.
  ASSERT_TRUE(Register(*t.client, "docs", Document(), &info, nullptr, &w16).ok());
  EXPECT_TRUE(info.reused());
  EXPECT_EQ(info.index().window(), 16);
}

TEST(HardeningTest, ConcurrentRegistrationsOfTheSameContextAllGetIt) {
  TestServer t = TestServer::Start();
  ASSERT_NE(t.server, nullptr);
  constexpr int kClients = 4;
  std::vector<grpc::Status> status(kClients);
  std::vector<v1::ContextInfo> infos(kClients);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back(
        [&, i] { status[i] = Register(*t.client, "docs", Document(), &infos[i]); });
  }
  for (auto& th : threads) th.join();
  int fresh = 0;
  for (int i = 0; i < kClients; ++i) {
    ASSERT_TRUE(status[i].ok()) << i << ": " << status[i].error_code() << " "
                                << status[i].error_message();
    EXPECT_EQ(infos[i].content_hash(), infos[0].content_hash());
    EXPECT_EQ(infos[i].index().num_centroids(), infos[0].index().num_centroids());
    fresh += !infos[i].reused();
  }
  EXPECT_EQ(fresh, 1);
  // The prefill ran once.
  EXPECT_EQ(t.server->engine().stats().registration_tokens_forwarded, infos[0].num_tokens());
}

}  // namespace
}  // namespace squeeze::testing
