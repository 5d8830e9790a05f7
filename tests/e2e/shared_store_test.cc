// Two in-process replicas sharing a context store (--shared_store): a context registered on one
// is served by the other from the store, with the same tokens; conflicts, deletes and
// re-registrations on one replica are seen by the other; loading respects the memory limit.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "engine/store/shared_context_store.h"
#include "tests/e2e/test_server.h"

namespace squeeze::testing {
namespace {

namespace fs = std::filesystem;

class SharedStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("squeeze-shared-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    a_ = Start();
    b_ = Start();
    ASSERT_NE(a_.server, nullptr);
    ASSERT_NE(b_.server, nullptr);
    doc_ = ReadText(std::string(SQUEEZE_SOURCE_DIR) + "/tests/data/demo_document.txt");
  }
  void TearDown() override { fs::remove_all(dir_); }

  TestServer Start(int64_t memory_limit = 0) {
    server::ServerOptions o = DefaultOptions();
    o.shared_store = dir_.string();
    o.max_context_memory = memory_limit;
    return TestServer::Start(std::move(o));
  }
  static GenerateResult Answer(client::SqueezeClient& c, const std::string& context) {
    v1::GenerateRequest req = Request(context, "\nQuestion: Which river?", 6, 1, 0.0f);
    req.mutable_attention()->set_mode(v1::AttentionOptions::DENSE);
    return Generate(c, req);
  }

  fs::path dir_;
  TestServer a_, b_;
  std::string doc_;
};

TEST_F(SharedStoreTest, OtherReplicaServesFromTheStore) {
  v1::ContextInfo info;
  ASSERT_TRUE(Register(*a_.client, "docs", doc_.substr(0, 1500), &info).ok());
  EXPECT_EQ(b_.server->engine().ResidentContexts().size(), 0u);
  // Listing and lookup on B see it before B loads it.
  v1::ListContextsResponse list;
  ASSERT_TRUE(b_.client->ListContexts(&list).ok());
  ASSERT_EQ(list.contexts_size(), 1);
  EXPECT_EQ(list.contexts(0).content_hash(), info.content_hash());
  v1::ContextInfo got;
  ASSERT_TRUE(b_.client->GetContext("docs", &got).ok());
  EXPECT_EQ(got.num_tokens(), info.num_tokens());

  GenerateResult on_a = Answer(*a_.client, "docs");
  GenerateResult on_b = Answer(*b_.client, "docs");
  ASSERT_TRUE(on_a.status.ok()) << on_a.status.error_message();
  ASSERT_TRUE(on_b.status.ok()) << on_b.status.error_message();
  EXPECT_EQ(on_b.tokens, on_a.tokens);
  EXPECT_EQ(on_b.last.usage().context_tokens_reused(), info.num_tokens());
  EXPECT_EQ(b_.server->engine().ResidentContexts().size(), 1u);
  // Squeezed mode uses the index read from the store.
  GenerateResult squeezed = Generate(*b_.client, Request("docs", "\nQuestion:", 4, 1, 0.0f));
  ASSERT_TRUE(squeezed.status.ok()) << squeezed.status.error_message();
  EXPECT_EQ(squeezed.last.attention_mode(), v1::AttentionOptions::SQUEEZED);
  EXPECT_LT(squeezed.last.usage().kv_budget(), 1.0);

  // The same registration on B is a reuse; other content under the name is a conflict.
  v1::ContextInfo again;
  ASSERT_TRUE(Register(*b_.client, "docs", doc_.substr(0, 1500), &again).ok());
  EXPECT_TRUE(again.reused());
  EXPECT_EQ(Register(*b_.client, "docs", doc_.substr(100, 1500), &again).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
}

TEST_F(SharedStoreTest, DeleteAndReplaceAreSeenByTheOtherReplica) {
  v1::ContextInfo first, second;
  ASSERT_TRUE(Register(*a_.client, "docs", doc_.substr(0, 1500), &first).ok());
  ASSERT_TRUE(Answer(*b_.client, "docs").status.ok());  // resident on both now
  ASSERT_TRUE(b_.client->DeleteContext("docs").ok());
  EXPECT_EQ(Answer(*a_.client, "docs").status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(a_.server->engine().ResidentContexts().size(), 0u);  // the stale copy is dropped
  EXPECT_EQ(b_.client->DeleteContext("docs").error_code(), grpc::StatusCode::NOT_FOUND);

  ASSERT_TRUE(Register(*b_.client, "docs", doc_.substr(2000, 1500), &second).ok());
  EXPECT_NE(second.content_hash(), first.content_hash());
  GenerateResult on_a = Answer(*a_.client, "docs");
  ASSERT_TRUE(on_a.status.ok());
  EXPECT_EQ(on_a.last.usage().context_tokens(), second.num_tokens());
  v1::ContextInfo got;
  ASSERT_TRUE(a_.client->GetContext("docs", &got).ok());
  EXPECT_EQ(got.content_hash(), second.content_hash());
  // Only the second object remains: the first was dropped with its name.
  int objects = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir_)) {
    objects += e.path().extension() == ".sqzctx";
  }
  EXPECT_EQ(objects, 1);
}

TEST_F(SharedStoreTest, LoadingRespectsTheMemoryLimit) {
  v1::ContextInfo info;
  ASSERT_TRUE(Register(*a_.client, "docs", doc_.substr(0, 1500), &info).ok());
  TestServer small = Start(/*memory_limit=*/info.kv_bytes() / 2);
  ASSERT_NE(small.server, nullptr);
  GenerateResult r = Answer(*small.client, "docs");
  EXPECT_EQ(r.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(r.status.error_message(), ::testing::HasSubstr("shared store"));
}

TEST_F(SharedStoreTest, TenantsDoNotShareThroughTheStore) {
  // Both replicas with API keys: each tenant sees only its own entries in the shared store, and
  // identical content registered by two tenants is two objects (no reuse across tenants).
  const std::string keys = (dir_ / "keys").string();
  fs::create_directories(dir_);
  std::ofstream(keys) << "key-of-tenant-a-0123456789 tenant-a\n"
                         "key-of-tenant-b-0123456789 tenant-b\n";
  auto start = [&] {
    server::ServerOptions o = DefaultOptions();
    o.shared_store = (dir_ / "store").string();
    o.api_keys_file = keys;
    return TestServer::Start(std::move(o));
  };
  TestServer a = start(), b = start();
  ASSERT_NE(a.server, nullptr);
  ASSERT_NE(b.server, nullptr);
  auto with_key = [](const TestServer& t, const std::string& key) {
    auto channel = client::CreateChannel("127.0.0.1:" + std::to_string(t.server->port()), {});
    EXPECT_TRUE(channel.ok());
    return std::make_unique<client::SqueezeClient>(*channel, key);
  };
  auto a_on_a = with_key(a, "key-of-tenant-a-0123456789");
  auto b_on_b = with_key(b, "key-of-tenant-b-0123456789");
  auto a_on_b = with_key(b, "key-of-tenant-a-0123456789");
  v1::ContextInfo info_a, info_b, got;
  ASSERT_TRUE(Register(*a_on_a, "docs", doc_.substr(0, 1500), &info_a).ok());
  v1::ListContextsResponse list;
  ASSERT_TRUE(b_on_b->ListContexts(&list).ok());
  EXPECT_EQ(list.contexts_size(), 0);
  EXPECT_EQ(b_on_b->GetContext("docs", &got).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(Answer(*b_on_b, "docs").status.error_code(), grpc::StatusCode::NOT_FOUND);
  ASSERT_TRUE(a_on_b->GetContext("docs", &got).ok());  // tenant A on the other replica
  EXPECT_TRUE(Answer(*a_on_b, "docs").status.ok());
  ASSERT_TRUE(Register(*b_on_b, "docs", doc_.substr(0, 1500), &info_b).ok());
  EXPECT_FALSE(info_b.reused());
  int objects = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir_ / "store")) {
    objects += e.path().extension() == ".sqzctx";
  }
  EXPECT_EQ(objects, 2);
  ASSERT_TRUE(b_on_b->DeleteContext("docs").ok());
  ASSERT_TRUE(a_on_a->GetContext("docs", &got).ok());  // A's is untouched
}

TEST(SharedContextStoreFiles, NamesAreExclusiveAndCorruptEntriesAreSkipped) {
  const fs::path dir =
      fs::temp_directory_path() / ("squeeze-shared-files-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  const HostKvFormat format{.shape = {1, 1, 2}, .dtype = DType::kF32};
  SharedContextStore store(dir.string(), "fingerprint-a", format);
  ASSERT_TRUE(store.Init().ok());
  RegisteredContext c;
  c.tokens = {1, 2, 3};
  c.kv.shape = format.shape;
  c.kv.num_tokens = 3;
  c.kv.k = HostKvTensor::FromFloats(DType::kF32, std::vector<float>(6, 0.5f));
  c.kv.v = HostKvTensor::FromFloats(DType::kF32, std::vector<float>(6, 0.25f));
  c.kv.token_of = {0, 1, 2};
  c.summary.name = "x";
  c.summary.content_hash = HashTokens(c.tokens);
  c.summary.num_tokens = 3;
  c.summary.kv_bytes = static_cast<int64_t>(c.kv.bytes());
  c.summary.index_options.kmeans_min_changed = 0.02;
  ASSERT_TRUE(store.Put(c).ok());
  ASSERT_TRUE(store.Put(c).ok());  // idempotent
  EXPECT_EQ(store.Lookup("", "x")->index_options, c.summary.index_options);
  // The k-means rule is an index option: the same content under it is another index.
  c.summary.index_options.kmeans_min_changed = 0.0;
  EXPECT_THAT(std::string(store.Put(c).message()), ::testing::HasSubstr("other index options"));
  c.summary.index_options.kmeans_min_changed = 0.02;
  RegisteredContext other = std::move(c);
  other.tokens = {4, 5, 6};
  other.summary.content_hash = HashTokens(other.tokens);
  EXPECT_TRUE(absl::IsAlreadyExists(store.Put(other)));
  auto loaded = store.Load("", "x");
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->tokens, (std::vector<int32_t>{1, 2, 3}));
  ASSERT_EQ((*loaded)->kv.v.size(), 6u);
  EXPECT_THAT((*loaded)->kv.v.ToFloats(), ::testing::Each(0.25f));
  // A replica that holds K/V in bf16 (a GPU one) reads the fp32 object converted, and counts the
  // entry's memory in its own dtype.
  SharedContextStore bf16_replica(dir.string(), "fingerprint-a",
                                  HostKvFormat{.shape = format.shape, .dtype = DType::kBF16});
  auto as_bf16 = bf16_replica.Load("", "x");
  ASSERT_TRUE(as_bf16.ok()) << as_bf16.status();
  EXPECT_EQ((*as_bf16)->kv.dtype(), DType::kBF16);
  EXPECT_THAT((*as_bf16)->kv.k.ToFloats(), ::testing::Each(0.5f));  // exact in bf16
  EXPECT_EQ((*as_bf16)->summary.kv_bytes, static_cast<int64_t>((*as_bf16)->kv.bytes()));
  auto entry = bf16_replica.Lookup("", "x");
  ASSERT_TRUE(entry.ok()) << entry.status();
  EXPECT_EQ(entry->kv_bytes, 2 * 6 * 2 + 3 * 4);  // K and V in bf16, token_of
  EXPECT_EQ(store.Lookup("", "x")->kv_bytes, 2 * 6 * 4 + 3 * 4);
  // Another model's store is another tree.
  SharedContextStore other_model(dir.string(), "fingerprint-b", format);
  ASSERT_TRUE(other_model.Init().ok());
  EXPECT_TRUE(absl::IsNotFound(other_model.Lookup("", "x").status()));
  // A corrupt entry is skipped by List and reported by Lookup.
  std::ofstream(fs::path(store.root()) / "names" / "bad.json") << "{not json";
  ASSERT_EQ(store.List("").size(), 1u);
  EXPECT_TRUE(absl::IsDataLoss(store.Lookup("", "bad").status()));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace squeeze::testing
