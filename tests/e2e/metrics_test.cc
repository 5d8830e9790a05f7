// Prometheus metrics: the registry and text serializer, the HTTP exposer over a real TCP socket,
// and the Squeeze metrics of a real in-process server moving by the right amounts.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <map>
#include <random>
#include <thread>

#include "server/metrics_exposer.h"
#include "server/metrics_registry.h"
#include "tests/e2e/test_server.h"

namespace squeeze::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

// ---- a tiny HTTP client and exposition parser ------------------------------------------------

struct HttpResponse {
  int code = 0;
  std::string head;
  std::string body;
};

// Sends `request` verbatim to 127.0.0.1:port and reads until the server closes.
HttpResponse RawHttp(int port, const std::string& request) {
  HttpResponse r;
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  timeval tv{.tv_sec = 10, .tv_usec = 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return r;
  }
  ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string all;
  char buf[4096];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) all.append(buf, n);
  ::close(fd);
  const size_t split = all.find("\r\n\r\n");
  if (split == std::string::npos) return r;
  r.head = all.substr(0, split);
  r.body = all.substr(split + 4);
  if (r.head.starts_with("HTTP/1.1 ")) r.code = std::atoi(r.head.c_str() + 9);
  return r;
}

HttpResponse Get(int port, const std::string& path) {
  return RawHttp(port, "GET " + path + " HTTP/1.1\r\nHost: localhost\r\n\r\n");
}

// One sample: `name{labels}` exactly as serialized -> value.
using Samples = std::map<std::string, double>;

// Parses "k="v",k2="v2"" (with \\ \" \n escapes); false when malformed.
bool ParseLabels(std::string_view s, std::vector<std::pair<std::string, std::string>>* out) {
  size_t i = 0;
  while (i < s.size()) {
    const size_t eq = s.find('=', i);
    if (eq == std::string_view::npos || eq + 1 >= s.size() || s[eq + 1] != '"') return false;
    std::string name(s.substr(i, eq - i)), value;
    size_t j = eq + 2;
    for (; j < s.size() && s[j] != '"'; ++j) {
      if (s[j] == '\\') {
        if (++j >= s.size()) return false;
        value += s[j] == 'n' ? '\n' : s[j];
      } else {
        value += s[j];
      }
    }
    if (j >= s.size()) return false;
    out->emplace_back(std::move(name), std::move(value));
    i = j + 1;
    if (i < s.size() && s[i++] != ',') return false;
  }
  return true;
}

// Parses the exposition text, failing the test on any malformed line.
Samples Parse(const std::string& text) {
  Samples samples;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with("# HELP ") || line.starts_with("# TYPE ")) continue;
    const size_t space = line.rfind(' ');
    EXPECT_NE(space, std::string::npos) << line;
    if (space == std::string::npos) continue;
    const std::string key = line.substr(0, space);
    if (const size_t brace = key.find('{'); brace != std::string::npos) {
      std::vector<std::pair<std::string, std::string>> labels;
      EXPECT_TRUE(
          key.back() == '}' &&
          ParseLabels(std::string_view(key).substr(brace + 1, key.size() - brace - 2), &labels))
          << line;
    }
    char* end = nullptr;
    const double value = std::strtod(line.c_str() + space + 1, &end);
    EXPECT_EQ(*end, '\0') << line;
    EXPECT_EQ(samples.count(key), 0u) << "duplicate sample " << key;
    samples[key] = value;
  }
  return samples;
}

double Value(const Samples& s, const std::string& key) {
  auto it = s.find(key);
  return it == s.end() ? 0.0 : it->second;
}

// Every histogram series: `le` ascending, cumulative counts non-decreasing, +Inf == _count.
// Returns the number of series checked.
int CheckHistograms(const std::string& text) {
  struct Series {
    std::vector<std::pair<double, double>> buckets;  // (le, cumulative)
  };
  std::map<std::string, Series> series;  // name + labels without le
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    const size_t b = line.find("_bucket{");
    if (line.starts_with("#") || b == std::string::npos) continue;
    const size_t close = line.rfind('}');
    std::vector<std::pair<std::string, std::string>> labels;
    EXPECT_TRUE(ParseLabels(std::string_view(line).substr(b + 8, close - b - 8), &labels));
    double le = NAN;
    std::string id = line.substr(0, b) + "{";
    for (const auto& [k, v] : labels) {
      if (k == "le") {
        le = std::strtod(v.c_str(), nullptr);
      } else {
        id += k + "=\"" + v + "\",";
      }
    }
    series[id].buckets.emplace_back(le, std::strtod(line.c_str() + close + 2, nullptr));
  }
  const Samples samples = Parse(text);
  for (const auto& [id, s] : series) {
    SCOPED_TRACE(id);
    EXPECT_TRUE(std::isinf(s.buckets.back().first));
    for (size_t i = 1; i < s.buckets.size(); ++i) {
      EXPECT_LT(s.buckets[i - 1].first, s.buckets[i].first);
      EXPECT_LE(s.buckets[i - 1].second, s.buckets[i].second);
    }
    std::string count_key = id.substr(0, id.find('{')) + "_count";
    std::string labels = id.substr(id.find('{') + 1);
    if (!labels.empty()) count_key += "{" + labels.substr(0, labels.size() - 1) + "}";
    EXPECT_EQ(s.buckets.back().second, Value(samples, count_key)) << count_key;
  }
  return static_cast<int>(series.size());
}

// ---- registry and serializer -----------------------------------------------------------------

TEST(MetricsRegistryTest, SerializesCountersGaugesAndEscapes) {
  metrics::Registry registry;
  auto& family = metrics::BuildCounter()
                     .Name("x_requests_total")
                     .Help("Requests.\nBackslash \\ here")
                     .Labels({{"replica", "r1"}})
                     .Register(registry);
  family.Add({{"path", "a\"b\\c\nd"}}).Increment(3);
  family.Add({{"path", "plain"}}).Increment();
  family.Add({{"path", "plain"}}).Increment(-5);  // ignored: counters never go down
  auto& gauge = metrics::BuildGauge().Name("x_temperature").Help("T").Register(registry).Add({});
  gauge.Set(2.5);
  gauge.Decrement(5);
  // Same name and type: the same family; another type: detached, never exposed.
  EXPECT_EQ(&metrics::BuildCounter().Name("x_requests_total").Register(registry), &family);
  metrics::BuildGauge().Name("x_requests_total").Register(registry).Add({}).Set(7);
  metrics::BuildGauge().Name("bad name").Register(registry).Add({}).Set(7);
  family.Add({{"__reserved", "v"}}).Increment();

  const std::string text = metrics::SerializeText(registry.Collect());
  EXPECT_EQ(text,
            "# HELP x_requests_total Requests.\\nBackslash \\\\ here\n"
            "# TYPE x_requests_total counter\n"
            "x_requests_total{path=\"a\\\"b\\\\c\\nd\",replica=\"r1\"} 3\n"
            "x_requests_total{path=\"plain\",replica=\"r1\"} 1\n"
            "# HELP x_temperature T\n"
            "# TYPE x_temperature gauge\n"
            "x_temperature -2.5\n");
  // The parser used below reads the escapes back.
  std::vector<std::pair<std::string, std::string>> labels;
  ASSERT_TRUE(ParseLabels(R"(path="a\"b\\c\nd",replica="r1")", &labels));
  EXPECT_EQ(labels[0].second, "a\"b\\c\nd");
}

TEST(MetricsRegistryTest, HistogramBucketsMatchBruteForce) {
  metrics::Registry registry;
  const metrics::BucketBoundaries bounds = {0.5, 0.1, 1.0, 0.1, 2.5, INFINITY};  // unsorted
  auto& h = metrics::BuildHistogram()
                .Name("x_seconds")
                .Help("h")
                .Register(registry)
                .Add({{"mode", "m"}}, bounds);
  EXPECT_EQ(h.boundaries(), (std::vector<double>{0.1, 0.5, 1.0, 2.5}));
  std::mt19937 rng(7);
  std::exponential_distribution<double> dist(1.5);
  std::vector<double> values;
  for (int i = 0; i < 500; ++i) values.push_back(dist(rng));
  values.push_back(0.5);  // on a boundary: counted in le="0.5"
  double sum = 0;
  for (double v : values) {
    h.Observe(v);
    sum += v;
  }
  h.ObserveN(0.05, 4);
  h.Observe(NAN);  // ignored
  values.insert(values.end(), 4, 0.05);
  sum += 0.2;

  const metrics::ClientMetric m = h.Collect();
  ASSERT_EQ(m.buckets.size(), 5u);
  for (const auto& b : m.buckets) {
    const auto expected =
        std::count_if(values.begin(), values.end(), [&](double v) { return v <= b.upper_bound; });
    EXPECT_EQ(b.cumulative_count, static_cast<uint64_t>(expected)) << b.upper_bound;
  }
  EXPECT_EQ(m.sample_count, values.size());
  EXPECT_NEAR(m.sample_sum, sum, 1e-9);

  const std::string text = metrics::SerializeText(registry.Collect());
  EXPECT_THAT(text, HasSubstr("# TYPE x_seconds histogram\n"));
  EXPECT_THAT(text, HasSubstr("x_seconds_bucket{mode=\"m\",le=\"0.1\"} "));
  EXPECT_THAT(text, HasSubstr("x_seconds_bucket{mode=\"m\",le=\"+Inf\"} 505\n"));
  EXPECT_THAT(text, HasSubstr("x_seconds_count{mode=\"m\"} 505\n"));
  EXPECT_EQ(CheckHistograms(text), 1);
  EXPECT_NEAR(Value(Parse(text), "x_seconds_sum{mode=\"m\"}"), sum, 1e-9);
  // `le` is reserved in histograms: such a metric is never exposed.
  metrics::BuildHistogram().Name("x_seconds").Register(registry).Add({{"le", "1"}}, bounds);
  EXPECT_EQ(metrics::SerializeText(registry.Collect()), text);
}

// ---- the HTTP exposer ------------------------------------------------------------------------

TEST(MetricsExposerTest, RoutesAndLimits) {
  auto registry = std::make_shared<metrics::Registry>();
  metrics::BuildCounter().Name("x_total").Help("x").Register(*registry).Add({}).Increment(41);
  auto exposer = metrics::Exposer::Start(
      "127.0.0.1:0", {.max_request_bytes = 1024, .io_timeout = absl::Milliseconds(300)});
  ASSERT_TRUE(exposer.ok()) << exposer.status();
  const int port = (*exposer)->port();
  ASSERT_GT(port, 0);
  (*exposer)->RegisterCollectable(registry);

  HttpResponse ok = Get(port, "/metrics?x=1");
  EXPECT_EQ(ok.code, 200);
  EXPECT_THAT(ok.head, HasSubstr("Content-Type: text/plain; version=0.0.4"));
  EXPECT_THAT(ok.head, HasSubstr("Content-Length: " + std::to_string(ok.body.size())));
  EXPECT_THAT(ok.body, HasSubstr("\nx_total 41\n"));
  EXPECT_EQ(Get(port, "/").code, 404);
  EXPECT_EQ(Get(port, "/metricsx").code, 404);
  EXPECT_EQ(RawHttp(port, "POST /metrics HTTP/1.1\r\n\r\n").code, 405);
  EXPECT_EQ(RawHttp(port, "garbage\r\n\r\n").code, 400);
  EXPECT_EQ(
      RawHttp(port, "GET /metrics HTTP/1.1\r\nX: " + std::string(2000, 'a') + "\r\n\r\n").code,
      431);
  HttpResponse head = RawHttp(port, "HEAD /metrics HTTP/1.0\r\n\r\n");
  EXPECT_EQ(head.code, 200);
  EXPECT_TRUE(head.body.empty());

  // A client that connects and sends nothing costs one io_timeout, then scrapes work again.
  const int idle = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{.sin_family = AF_INET, .sin_port = htons(static_cast<uint16_t>(port))};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(idle, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  EXPECT_EQ(Get(port, "/metrics").code, 200);
  ::close(idle);
  EXPECT_EQ((*exposer)->scrapes(), 3u);

  // The registry going away leaves an empty, valid page.
  registry.reset();
  HttpResponse empty = Get(port, "/metrics");
  EXPECT_EQ(empty.code, 200);
  EXPECT_EQ(empty.body, "");

  EXPECT_FALSE(metrics::Exposer::Start("no-port").ok());
  EXPECT_FALSE(metrics::Exposer::Start("127.0.0.1:99999").ok());
  // The port is taken.
  EXPECT_FALSE(metrics::Exposer::Start("127.0.0.1:" + std::to_string(port)).ok());
}

TEST(MetricsExposerTest, ConcurrentUpdatesWhileScraping) {
  auto registry = std::make_shared<metrics::Registry>();
  auto& counters = metrics::BuildCounter().Name("x_events_total").Help("e").Register(*registry);
  auto& hist = metrics::BuildHistogram().Name("x_latency_seconds").Help("l").Register(*registry);
  auto exposer = metrics::Exposer::Start("127.0.0.1:0");
  ASSERT_TRUE(exposer.ok()) << exposer.status();
  (*exposer)->RegisterCollectable(registry);

  // Writers run until the scraper has read 30 pages, so scrapes overlap the updates.
  constexpr int kThreads = 4, kScrapes = 30;
  std::atomic<bool> done{false};
  std::atomic<int64_t> increments[2] = {0, 0};  // even, odd
  std::vector<std::thread> writers;
  for (int t = 0; t < kThreads; ++t) {
    writers.emplace_back([&, t] {
      // Add() from every thread on the same labels returns one shared metric.
      metrics::Counter& c = counters.Add({{"kind", t % 2 ? "odd" : "even"}});
      metrics::Histogram& h = hist.Add({}, metrics::BucketBoundaries{0.25, 0.5, 0.75});
      std::mt19937 rng(t + 1);
      std::uniform_real_distribution<double> u(0, 1);
      int64_t n = 0;
      for (; !done.load(std::memory_order_relaxed) || n < 1000; ++n) {
        c.Increment();
        h.Observe(u(rng));
      }
      increments[t % 2].fetch_add(n);
    });
  }
  double last = 0;
  for (int i = 0; i < kScrapes; ++i) {
    HttpResponse r = Get((*exposer)->port(), "/metrics");
    ASSERT_EQ(r.code, 200);
    CheckHistograms(r.body);  // buckets monotone and +Inf == _count mid-update
    const Samples s = Parse(r.body);
    const double total =
        Value(s, "x_events_total{kind=\"even\"}") + Value(s, "x_events_total{kind=\"odd\"}");
    EXPECT_GE(total, last);  // counters never go back
    last = total;
  }
  done.store(true);
  for (auto& w : writers) w.join();
  EXPECT_EQ((*exposer)->scrapes(), static_cast<uint64_t>(kScrapes));

  const Samples s = Parse(Get((*exposer)->port(), "/metrics").body);
  const int64_t total = increments[0].load() + increments[1].load();
  EXPECT_EQ(Value(s, "x_events_total{kind=\"even\"}"), increments[0].load());
  EXPECT_EQ(Value(s, "x_events_total{kind=\"odd\"}"), increments[1].load());
  EXPECT_EQ(Value(s, "x_latency_seconds_count"), total);
  EXPECT_GT(total, kThreads * 1000 - 1);
  EXPECT_NEAR(Value(s, "x_latency_seconds_sum") / total, 0.5, 0.02);
}

TEST(MetricsExposerTest, IdleConnectionsDoNotDelayAScrape) {
  auto registry = std::make_shared<metrics::Registry>();
  metrics::BuildCounter().Name("x_total").Help("x").Register(*registry).Add({}).Increment(1);
  // A long read deadline: a scrape queued behind one idle connection would wait 30 s.
  auto exposer = metrics::Exposer::Start("127.0.0.1:0", {.io_timeout = absl::Seconds(30)});
  ASSERT_TRUE(exposer.ok()) << exposer.status();
  (*exposer)->RegisterCollectable(registry);
  const int port = (*exposer)->port();
  std::vector<int> idle;
  for (int i = 0; i < 64; ++i) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{.sin_family = AF_INET, .sin_port = htons(static_cast<uint16_t>(port))};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    idle.push_back(fd);
  }
  // Half of them have sent part of a request head, then stalled.
  for (int i = 0; i < 32; ++i) ::send(idle[i], "GET /metr", 9, MSG_NOSIGNAL);
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 3; ++i) {
    HttpResponse r = Get(port, "/metrics");  // the client gives up after 10 s
    EXPECT_EQ(r.code, 200);
    EXPECT_THAT(r.body, HasSubstr("x_total 1"));
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  for (int fd : idle) ::close(fd);
}

// ---- the server's metrics --------------------------------------------------------------------

TEST(ServerMetricsTest, OffByDefault) {
  TestServer t = TestServer::Start();
  ASSERT_NE(t.server, nullptr);
  EXPECT_EQ(t.server->metrics_port(), 0);
}

TEST(ServerMetricsTest, CountersAndHistogramsFollowRequests) {
  server::ServerOptions o = DefaultOptions();
  o.metrics_address = "127.0.0.1:0";
  TestServer t = TestServer::Start(o);
  ASSERT_NE(t.server, nullptr);
  const int port = t.server->metrics_port();
  ASSERT_GT(port, 0);
  HttpResponse first = Get(port, "/metrics");
  ASSERT_EQ(first.code, 200);
  const Samples before = Parse(first.body);
  // Families are registered at start-up, so they are exposed before any request.
  for (const char* name :
       {"squeeze_requests_total", "squeeze_generation_tokens_total", "squeeze_prompt_tokens_total",
        "squeeze_time_to_first_token_seconds", "squeeze_e2e_request_latency_seconds",
        "squeeze_request_queue_time_seconds", "squeeze_inter_token_latency_seconds",
        "squeeze_num_requests_running", "squeeze_num_requests_waiting",
        "squeeze_kv_budget_realised", "squeeze_resident_contexts", "squeeze_context_kv_bytes",
        "squeeze_registration_seconds", "squeeze_registrations_total",
        "squeeze_engine_steps_total"}) {
    EXPECT_THAT(first.body, HasSubstr(std::string("# TYPE ") + name + " ")) << name;
  }
  EXPECT_EQ(Value(before, "squeeze_resident_contexts"), 0);
  EXPECT_EQ(Get(port, "/").code, 404);

  v1::ContextInfo info;
  ASSERT_TRUE(Register(*t.client, "docs", Document(), &info).ok());
  v1::ContextInfo again;
  ASSERT_TRUE(Register(*t.client, "docs", Document(), &again).ok());
  ASSERT_TRUE(again.reused());
  v1::GenerateRequest dense = Request("docs", "\nQuestion: Which river runs through Veloria?", 12);
  dense.mutable_attention()->set_mode(v1::AttentionOptions::DENSE);
  v1::GenerateRequest squeezed = Request("docs", "\nQuestion: Who founded it?", 9, 3);
  squeezed.mutable_attention()->set_mode(v1::AttentionOptions::SQUEEZED);
  squeezed.mutable_attention()->set_budget(0.2);
  GenerateResult r1 = Generate(*t.client, dense);
  GenerateResult r2 = Generate(*t.client, squeezed);
  ASSERT_TRUE(r1.status.ok()) << r1.status.error_message();
  ASSERT_TRUE(r2.status.ok()) << r2.status.error_message();
  ASSERT_EQ(r1.tokens.size(), 12u);
  ASSERT_EQ(r2.tokens.size(), 9u);
  GenerateResult missing = Generate(*t.client, Request("no-such-context", "hi", 4));
  ASSERT_EQ(missing.status.error_code(), grpc::StatusCode::NOT_FOUND);

  // The engine's queue gauge drops just after the last event; wait for it.
  HttpResponse second;
  Samples after;
  for (int i = 0; i < 200; ++i) {
    second = Get(port, "/metrics");
    after = Parse(second.body);
    if (Value(after, "squeeze_num_requests_running") == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(second.code, 200);
  auto delta = [&](const std::string& key) { return Value(after, key) - Value(before, key); };

  EXPECT_EQ(delta("squeeze_requests_total{finish_reason=\"length\",status=\"OK\"}"), 2);
  EXPECT_EQ(delta("squeeze_requests_total{finish_reason=\"abort\",status=\"NOT_FOUND\"}"), 1);
  EXPECT_EQ(delta("squeeze_generation_tokens_total"), 21);
  EXPECT_EQ(delta("squeeze_prompt_tokens_total"),
            r1.last.usage().query_tokens() + r2.last.usage().query_tokens());
  EXPECT_EQ(delta("squeeze_context_tokens_total"), 2 * info.num_tokens());
  EXPECT_EQ(delta("squeeze_time_to_first_token_seconds_count"), 2);
  EXPECT_EQ(delta("squeeze_e2e_request_latency_seconds_count"), 2);
  EXPECT_EQ(delta("squeeze_request_queue_time_seconds_count"), 2);
  EXPECT_EQ(delta("squeeze_inter_token_latency_seconds_count"), 11 + 8);
  EXPECT_NEAR(delta("squeeze_e2e_request_latency_seconds_sum"),
              r1.last.timings().total_seconds() + r2.last.timings().total_seconds(), 1e-6);
  EXPECT_EQ(delta("squeeze_kv_budget_realised_count{mode=\"dense\"}"), 1);
  EXPECT_EQ(delta("squeeze_kv_budget_realised_sum{mode=\"dense\"}"), 1.0);
  EXPECT_EQ(delta("squeeze_kv_budget_realised_count{mode=\"squeezed\"}"), 1);
  EXPECT_NEAR(delta("squeeze_kv_budget_realised_sum{mode=\"squeezed\"}"),
              r2.last.usage().kv_budget(), 1e-6);
  EXPECT_LT(r2.last.usage().kv_budget(), 1.0);
  EXPECT_EQ(delta("squeeze_kv_budget_realised_count{mode=\"recent\"}"), 0);
  // Sequential requests: each ran at least one step per generated token.
  EXPECT_GE(delta("squeeze_engine_steps_total"), 21);
  EXPECT_EQ(Value(after, "squeeze_num_requests_waiting"), 0);

  EXPECT_EQ(delta("squeeze_registrations_total{status=\"OK\"}"), 2);
  EXPECT_EQ(delta("squeeze_registrations_reused_total"), 1);
  for (const char* stage : {"prefill", "clustering", "calibration", "total"}) {
    EXPECT_EQ(delta(std::string("squeeze_registration_seconds_count{stage=\"") + stage + "\"}"), 1)
        << stage;
  }
  EXPECT_NEAR(delta("squeeze_registration_seconds_sum{stage=\"total\"}"),
              info.timings().total_seconds(), 1e-6);
  EXPECT_EQ(Value(after, "squeeze_resident_contexts"), 1);
  EXPECT_EQ(Value(after, "squeeze_context_kv_bytes"), info.kv_bytes());
  EXPECT_GT(info.kv_bytes(), 0);
  EXPECT_GE(CheckHistograms(second.body), 13);

  // A registration refused before the engine is counted under its code.
  EXPECT_EQ(Register(*t.client, "docs", "something else entirely", &again).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  const Samples last = Parse(Get(port, "/metrics").body);
  EXPECT_EQ(Value(last, "squeeze_registrations_total{status=\"ALREADY_EXISTS\"}"), 1);
}

TEST(ServerMetricsTest, DeadlineExpiriesAreCountedAsDeadlineExceeded) {
  server::ServerOptions o = DefaultOptions();
  o.metrics_address = "127.0.0.1:0";
  TestServer t = TestServer::Start(o);
  ASSERT_NE(t.server, nullptr);
  const int port = t.server->metrics_port();
  // Long enough for the request to reach the engine, short against 4000 tokens. Under TSan
  // (and a busy machine) the server can take longer than 0.3 s to accept the call, and the
  // request then expires before the engine sees it; the 4000 tokens take it ~7 s.
#if defined(__SANITIZE_THREAD__)
  constexpr double kDeadline = 2.0;
#else
  constexpr double kDeadline = 0.3;
#endif
  for (int i = 0; i < 3; ++i) {
    GenerateResult late = Generate(*t.client, Request("", "Hello", 4000), kDeadline);
    EXPECT_EQ(late.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  }
  Samples s;
  for (int i = 0; i < 200; ++i) {
    s = Parse(Get(port, "/metrics").body);
    if (Value(s, "squeeze_requests_total{finish_reason=\"abort\",status=\"DEADLINE_EXCEEDED\"}") +
            Value(s, "squeeze_requests_total{finish_reason=\"abort\",status=\"CANCELLED\"}") ==
        3) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(
      Value(s, "squeeze_requests_total{finish_reason=\"abort\",status=\"DEADLINE_EXCEEDED\"}"), 3);
  EXPECT_EQ(Value(s, "squeeze_requests_total{finish_reason=\"abort\",status=\"CANCELLED\"}"), 0);
}

TEST(ServerMetricsTest, InterTokenLatencyRecordsEachGap) {
  server::ServerOptions o = DefaultOptions();
  o.metrics_address = "127.0.0.1:0";
  // One registration step of the whole document: a stall of the stream's tokens, as before
  // registrations were chunked while streams decode.
  o.engine.prefill_chunk = 8192;
  o.engine.max_step_tokens = 8192;
  o.engine.registration_chunk_while_decoding = 8192;
  TestServer t = TestServer::Start(o);
  ASSERT_NE(t.server, nullptr);
  const std::string doc =
      ReadText(std::string(SQUEEZE_SOURCE_DIR) + "/tests/data/demo_document.txt");
  GenerateResult r;
  std::atomic<int> received{0};
  std::thread stream([&] {
    r.status = t.client->Generate(Request("", "Once upon", 80), [&](const v1::GenerateResponse& m) {
      r.tokens.insert(r.tokens.end(), m.token_ids().begin(), m.token_ids().end());
      ++received;
      return true;
    });
  });
  while (received < 10) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  v1::ContextInfo info;
  v1::IndexOptions none;
  none.set_disable(true);
  ASSERT_TRUE(Register(*t.client, "docs", doc, &info, nullptr, &none).ok());
  stream.join();
  ASSERT_TRUE(r.status.ok());
  ASSERT_EQ(r.tokens.size(), 80u);
  const std::string text = Get(t.server->metrics_port(), "/metrics").body;
  const Samples s = Parse(text);
  EXPECT_EQ(Value(s, "squeeze_inter_token_latency_seconds_count"), 79);
  // The stall is one gap among quick ones: the observations fall into several buckets (a
  // per-request mean would put all 79 into one).
  int buckets_used = 0;
  double previous = 0;
  std::vector<std::pair<double, double>> cumulative;
  for (const auto& [key, value] : s) {
    const std::string prefix = "squeeze_inter_token_latency_seconds_bucket{le=\"";
    if (!key.starts_with(prefix)) continue;
    const std::string le = key.substr(prefix.size(), key.size() - prefix.size() - 2);
    cumulative.emplace_back(le == "+Inf" ? 1e300 : std::stod(le), value);
  }
  std::sort(cumulative.begin(), cumulative.end());
  for (const auto& [le, count] : cumulative) {
    buckets_used += count > previous;
    previous = count;
  }
  EXPECT_GE(buckets_used, 2) << text;
}

}  // namespace
}  // namespace squeeze::testing
