// Security end to end: API keys and tenant isolation, TLS and mutual TLS on the gRPC and metrics
// ports, and certificate rotation without a restart. Certificates are made at test time with
// the openssl command (nothing secret is committed).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "tests/e2e/process_util.h"
#include "tests/e2e/test_server.h"

namespace squeeze::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

const char kKeyA[] = "key-of-tenant-a-0123456789";
const char kKeyB[] = "key-of-tenant-b-0123456789";

std::string WriteKeys(const std::string& dir, const std::string& text) {
  const std::string path = dir + "/keys";
  std::ofstream(path + ".new") << text;
  fs::rename(path + ".new", path);
  return path;
}

std::unique_ptr<client::SqueezeClient> ClientWithKey(const TestServer& t, const std::string& key) {
  auto channel = client::CreateChannel("127.0.0.1:" + std::to_string(t.server->port()), {});
  EXPECT_TRUE(channel.ok());
  return std::make_unique<client::SqueezeClient>(*channel, key);
}

TEST(SecurityTest, ApiKeysAreRequiredAndHealthStaysOpen) {
  const std::string dir = TempDir("keys");
  server::ServerOptions o = DefaultOptions();
  o.api_keys_file = WriteKeys(dir, std::string("# key tenant\n") + kKeyA + " tenant-a\n" + kKeyB +
                                       " tenant-b  # rotated monthly\n");
  TestServer t = TestServer::Start(o);
  ASSERT_NE(t.server, nullptr);
  v1::ListContextsResponse list;
  grpc::Status st = t.client->ListContexts(&list);  // no key
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(st.error_message(), HasSubstr("authorization: Bearer <key>"));
  EXPECT_EQ(Generate(*t.client, Request("", "Hello", 2)).status.error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  v1::ContextInfo info;
  EXPECT_EQ(Register(*t.client, "docs", Document(), &info).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  auto wrong = ClientWithKey(t, "not-a-key-0123456789");
  st = wrong->ListContexts(&list);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(st.error_message(), HasSubstr("invalid API key"));
  EXPECT_TRUE(ClientWithKey(t, kKeyA)->ListContexts(&list).ok());
  bool serving = false;
  ASSERT_TRUE(t.client->CheckHealth("", &serving).ok());
  EXPECT_TRUE(serving);
  fs::remove_all(dir);
}

TEST(SecurityTest, TenantsSeeUseAndDeleteOnlyTheirOwnContexts) {
  const std::string dir = TempDir("tenants");
  server::ServerOptions o = DefaultOptions();
  o.api_keys_file = WriteKeys(dir, std::string(kKeyA) + " tenant-a\n" + kKeyB + " tenant-b\n");
  o.state_dir = dir + "/state";
  v1::ContextInfo a_info, b_info;
  {
    TestServer t = TestServer::Start(o);
    ASSERT_NE(t.server, nullptr);
    auto a = ClientWithKey(t, kKeyA);
    auto b = ClientWithKey(t, kKeyB);
    ASSERT_TRUE(Register(*a, "docs", Document(), &a_info).ok());
    v1::ListContextsResponse list;
    ASSERT_TRUE(b->ListContexts(&list).ok());
    EXPECT_EQ(list.contexts_size(), 0);
    v1::ContextInfo got;
    EXPECT_EQ(b->GetContext("docs", &got).error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_EQ(Generate(*b, Request("docs", " hi", 2)).status.error_code(),
              grpc::StatusCode::NOT_FOUND);
    EXPECT_EQ(b->DeleteContext("docs").error_code(), grpc::StatusCode::NOT_FOUND);
    // The same name and content for tenant b is b's own context: no reuse across tenants.
    const int64_t before = t.server->engine().stats().registration_tokens_forwarded;
    ASSERT_TRUE(Register(*b, "docs", Document(), &b_info).ok());
    EXPECT_FALSE(b_info.reused());
    EXPECT_EQ(t.server->engine().stats().registration_tokens_forwarded - before,
              b_info.num_tokens());
    ASSERT_TRUE(a->ListContexts(&list).ok());
    EXPECT_EQ(list.contexts_size(), 1);
    EXPECT_TRUE(Generate(*a, Request("docs", " hi", 2)).status.ok());
  }
  // After a restart each tenant finds its own context; deleting one leaves the other.
  TestServer t = TestServer::Start(o);
  ASSERT_NE(t.server, nullptr);
  auto a = ClientWithKey(t, kKeyA);
  auto b = ClientWithKey(t, kKeyB);
  v1::ContextInfo got;
  ASSERT_TRUE(a->GetContext("docs", &got).ok());
  EXPECT_EQ(got.created_unix(), a_info.created_unix());
  ASSERT_TRUE(a->DeleteContext("docs").ok());
  EXPECT_EQ(a->GetContext("docs", &got).error_code(), grpc::StatusCode::NOT_FOUND);
  ASSERT_TRUE(b->GetContext("docs", &got).ok());
  EXPECT_TRUE(Generate(*b, Request("docs", " hi", 2)).status.ok());
  fs::remove_all(dir);
}

TEST(SecurityTest, OpenPortsWithoutTlsOrKeysAreWarnedAbout) {
  server::ServerOptions o = DefaultOptions();
  o.address = "0.0.0.0:0";
  o.openai_address = "0.0.0.0:0";
  {
    LogCapture log;
    TestServer t = TestServer::Start(o);
    ASSERT_NE(t.server, nullptr);
    EXPECT_THAT(log.text(), HasSubstr("serving 0.0.0.0:0 without TLS or API keys"));
    const std::string text = log.text();
    const size_t first = text.find("without TLS or API keys");
    EXPECT_NE(text.find("without TLS or API keys", first + 1), std::string::npos)
        << "one warning per open port (gRPC and OpenAI)";
  }
  const std::string dir = TempDir("warn");
  o.api_keys_file = WriteKeys(dir, std::string(kKeyA) + " tenant-a\n");
  LogCapture log;
  TestServer t = TestServer::Start(o);
  ASSERT_NE(t.server, nullptr);
  EXPECT_THAT(log.text(), ::testing::Not(HasSubstr("without TLS or API keys")));
  fs::remove_all(dir);
}

TEST(SecurityTest, KeysFileIsReloadedWithoutRestart) {
  const std::string dir = TempDir("reload-keys");
  server::ServerOptions o = DefaultOptions();
  o.api_keys_file = WriteKeys(dir, std::string(kKeyA) + " tenant-a\n");
  TestServer t = TestServer::Start(o);
  ASSERT_NE(t.server, nullptr);
  v1::ListContextsResponse list;
  EXPECT_TRUE(ClientWithKey(t, kKeyA)->ListContexts(&list).ok());
  WriteKeys(dir, std::string(kKeyB) + " tenant-a\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  EXPECT_EQ(ClientWithKey(t, kKeyA)->ListContexts(&list).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(ClientWithKey(t, kKeyB)->ListContexts(&list).ok());
  // A broken file keeps the keys that worked.
  WriteKeys(dir, "short tenant-a\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  EXPECT_TRUE(ClientWithKey(t, kKeyB)->ListContexts(&list).ok());
  fs::remove_all(dir);
}

TEST(SecurityTest, BadKeysFileIsRefusedAtStartUp) {
  const std::string dir = TempDir("bad-keys");
  server::ServerOptions o = DefaultOptions();
  o.api_keys_file = WriteKeys(dir, std::string(kKeyA) + " tenant/a\n");
  auto s = server::SqueezeServer::Start(o);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.status().message(), HasSubstr("line 1"));
  fs::remove_all(dir);
}

// ---- TLS --------------------------------------------------------------------------------------

// A CA with a server certificate (localhost, 127.0.0.1) and a client certificate, all made here.
struct Pki {
  std::string ca, server_cert, server_key, client_cert, client_key;
};

void Run(const std::string& command) {
  ASSERT_EQ(std::system((command + " >/dev/null 2>&1").c_str()), 0) << command;
}

Pki MakePki(const std::string& dir) {
  fs::create_directories(dir);
  const std::string ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  Run("openssl req -x509 " + ec + " -keyout " + dir + "/ca.key -out " + dir +
      "/ca.pem -days 2 -subj /CN=squeeze-test-ca");
  std::ofstream(dir + "/server.ext") << "subjectAltName=DNS:localhost,IP:127.0.0.1\n";
  for (const char* who : {"server", "client"}) {
    const std::string base = dir + "/" + who;
    Run("openssl req " + ec + " -keyout " + base + ".key -out " + base + ".csr -subj /CN=" + who);
    Run("openssl x509 -req -in " + base + ".csr -CA " + dir + "/ca.pem -CAkey " + dir +
        "/ca.key -CAcreateserial -days 2 -out " + base + ".pem" +
        (std::string(who) == "server" ? " -extfile " + dir + "/server.ext" : ""));
  }
  return {dir + "/ca.pem", dir + "/server.pem", dir + "/server.key", dir + "/client.pem",
          dir + "/client.key"};
}

grpc::Status ListOver(int port, const client::ClientOptions& options) {
  auto channel = client::CreateChannel("127.0.0.1:" + std::to_string(port), options);
  if (!channel.ok()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "bad options");
  client::SqueezeClient c(*channel);
  v1::ListContextsResponse list;
  return c.ListContexts(&list);
}

int MetricsOver(int port, const std::string& ca, const std::string& cert = "",
                const std::string& key = "") {
  auto https = cert.empty() ? std::make_unique<httplib::SSLClient>("127.0.0.1", port)
                            : std::make_unique<httplib::SSLClient>("127.0.0.1", port, cert, key);
  https->set_ca_cert_path(ca.c_str());
  https->enable_server_certificate_verification(true);
  https->set_connection_timeout(5);
  auto res = https->Get("/metrics");
  return res ? res->status : 0;
}

// Replaces a file the way a certificate manager does: a new file renamed over the old one.
void Replace(const std::string& from, const std::string& to) {
  fs::copy_file(from, to + ".new", fs::copy_options::overwrite_existing);
  fs::rename(to + ".new", to);
}

TEST(SecurityTest, TlsOnBothPortsAndCertificatesRotateWithoutRestart) {
  const std::string dir = TempDir("tls");
  const Pki one = MakePki(dir + "/one");
  const Pki two = MakePki(dir + "/two");
  // The server reads its own copies, which rotation replaces.
  fs::copy_file(one.server_cert, dir + "/server.pem");
  fs::copy_file(one.server_key, dir + "/server.key");
  server::ServerOptions o = DefaultOptions();
  o.metrics_address = "127.0.0.1:0";
  o.tls = {.cert_file = dir + "/server.pem", .key_file = dir + "/server.key", .reload_seconds = 1};
  TestServer t = TestServer::Start(o);
  ASSERT_NE(t.server, nullptr);
  const int port = t.server->port();
  EXPECT_FALSE(ListOver(port, {}).ok());  // plaintext
  EXPECT_TRUE(ListOver(port, {.tls = true, .ca_file = one.ca}).ok());
  EXPECT_FALSE(ListOver(port, {.tls = true, .ca_file = two.ca}).ok());  // other CA
  EXPECT_EQ(MetricsOver(t.server->metrics_port(), one.ca), 200);
  EXPECT_EQ(MetricsOver(t.server->metrics_port(), two.ca), 0);

  Replace(two.server_key, dir + "/server.key");
  Replace(two.server_cert, dir + "/server.pem");
  bool rotated = false;
  for (int i = 0; i < 100 && !rotated; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    rotated = ListOver(port, {.tls = true, .ca_file = two.ca}).ok();
  }
  EXPECT_TRUE(rotated);
  EXPECT_FALSE(ListOver(port, {.tls = true, .ca_file = one.ca}).ok());
  int code = 0;
  for (int i = 0; i < 30 && code != 200; ++i) {
    code = MetricsOver(t.server->metrics_port(), two.ca);
    if (code != 200) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(code, 200);
  EXPECT_EQ(MetricsOver(t.server->metrics_port(), one.ca), 0);
  fs::remove_all(dir);
}

TEST(SecurityTest, MutualTlsRequiresAClientCertificate) {
  const std::string dir = TempDir("mtls");
  const Pki pki = MakePki(dir + "/pki");
  const Pki other = MakePki(dir + "/other");
  server::ServerOptions o = DefaultOptions();
  o.metrics_address = "127.0.0.1:0";
  o.tls = {.cert_file = pki.server_cert,
           .key_file = pki.server_key,
           .client_ca_file = pki.ca,
           .reload_seconds = 1};
  TestServer t = TestServer::Start(o);
  ASSERT_NE(t.server, nullptr);
  const int port = t.server->port();
  EXPECT_FALSE(ListOver(port, {.tls = true, .ca_file = pki.ca}).ok());
  EXPECT_FALSE(ListOver(port, {.tls = true,
                               .ca_file = pki.ca,
                               .cert_file = other.client_cert,
                               .key_file = other.client_key})
                   .ok());
  EXPECT_TRUE(ListOver(port, {.tls = true,
                              .ca_file = pki.ca,
                              .cert_file = pki.client_cert,
                              .key_file = pki.client_key})
                  .ok());
  const int metrics = t.server->metrics_port();
  EXPECT_EQ(MetricsOver(metrics, pki.ca), 0);
  EXPECT_EQ(MetricsOver(metrics, pki.ca, other.client_cert, other.client_key), 0);
  EXPECT_EQ(MetricsOver(metrics, pki.ca, pki.client_cert, pki.client_key), 200);
  fs::remove_all(dir);
}

TEST(SecurityTest, TlsFilesAreCheckedAtStartUp) {
  const std::string dir = TempDir("tls-check");
  const Pki one = MakePki(dir + "/one");
  const Pki two = MakePki(dir + "/two");
  server::ServerOptions o = DefaultOptions();
  o.tls = {.cert_file = one.server_cert, .key_file = two.server_key};
  auto s = server::SqueezeServer::Start(o);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.status().message(), HasSubstr("--tls_key_file"));
  EXPECT_THAT(s.status().message(), HasSubstr("does not match the certificate"));
  o.tls = {.cert_file = one.server_key, .key_file = one.server_key};
  s = server::SqueezeServer::Start(o);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(s.status().message(), HasSubstr("--tls_cert_file"));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace squeeze::testing
