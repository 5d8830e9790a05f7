// Serving benchmark through the gRPC server: N concurrent clients (one channel each) ask their
// own short question against registered contexts (client i uses context i mod K) and stream
// max_tokens tokens each (greedy, ignore_eos), for each client count and attention mode. Per
// run: output tokens per second over the wall time of the run, time to first token p50 / p99 over
// the requests, inter-token latency p50 / p99 over every gap between consecutive tokens of a
// stream (a message of several tokens counts its gap once and zero gaps for the rest), and the
// mean realised KV budget. Contexts must be registered already (bench/run_serving.sh does it).
//
//   build/serving-bench --server=127.0.0.1:50051 --contexts=big --clients=1,8,32,64
//       --modes=dense,squeezed:0.1 --max_tokens=64
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "client/client.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "server address");
ABSL_FLAG(std::vector<std::string>, contexts, {}, "registered contexts, used round robin");
ABSL_FLAG(std::string, clients, "1,8,32,64", "concurrent client counts");
ABSL_FLAG(std::string, modes, "dense,squeezed:0.1",
          "attention modes: dense, or squeezed:BUDGET (comma-separated)");
ABSL_FLAG(int, max_tokens, 64, "tokens each request streams");
ABSL_FLAG(std::string, question, "\nQuestion: what is the permit number of client",
          "text of every question; client i appends \" i?\"");

namespace {

using squeeze::client::SqueezeClient;
namespace v1 = squeeze::v1;
using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5));
  return v[i];
}

struct Mode {
  std::string name;
  double budget = -1.0;  // squeezed only
};

struct Result {
  double ttft = 0.0;
  std::vector<double> gaps;
  int64_t tokens = 0;
  double kv_budget = 0.0;
  std::string error;
};

Result OneRequest(const std::string& server, const std::string& context, const Mode& mode,
                  const std::string& question, int max_tokens) {
  Result r;
  SqueezeClient client(server);
  v1::GenerateRequest req;
  req.set_context(context);
  req.mutable_input()->set_text(question);
  req.set_max_tokens(max_tokens);
  req.set_ignore_eos(true);
  req.mutable_sampling()->set_temperature(0.0f);
  if (mode.budget >= 0) {
    req.mutable_attention()->set_mode(v1::AttentionOptions::SQUEEZED);
    req.mutable_attention()->set_budget(mode.budget);
  } else {
    req.mutable_attention()->set_mode(v1::AttentionOptions::DENSE);
  }
  const Clock::time_point start = Clock::now();
  Clock::time_point last;
  bool first = true;
  const grpc::Status st = client.Generate(req, [&](const v1::GenerateResponse& resp) {
    const Clock::time_point now = Clock::now();
    const int n = resp.token_ids_size();
    if (n > 0) {
      if (first) {
        r.ttft = Seconds(start, now);
        first = false;
      } else {
        r.gaps.push_back(Seconds(last, now));
      }
      for (int i = 1; i < n; ++i) r.gaps.push_back(0.0);
      r.tokens += n;
      last = now;
    }
    if (resp.has_usage()) r.kv_budget = resp.usage().kv_budget();
    return true;
  });
  if (!st.ok()) r.error = st.error_message();
  return r;
}

int Run() {
  const std::string server = absl::GetFlag(FLAGS_server);
  const std::vector<std::string> contexts = absl::GetFlag(FLAGS_contexts);
  if (contexts.empty()) {
    std::fprintf(stderr, "--contexts: name at least one registered context\n");
    return 2;
  }
  std::vector<int> clients;
  for (absl::string_view c : absl::StrSplit(absl::GetFlag(FLAGS_clients), ',', absl::SkipEmpty())) {
    int v = 0;
    if (absl::SimpleAtoi(c, &v) && v > 0) clients.push_back(v);
  }
  std::vector<Mode> modes;
  for (absl::string_view m : absl::StrSplit(absl::GetFlag(FLAGS_modes), ',', absl::SkipEmpty())) {
    Mode mode{std::string(m)};
    const size_t colon = m.find(':');
    if (colon != absl::string_view::npos) {
      if (!absl::SimpleAtod(m.substr(colon + 1), &mode.budget)) return 2;
    }
    modes.push_back(mode);
  }
  const int max_tokens = absl::GetFlag(FLAGS_max_tokens);
  std::printf("%d context(s), %d tokens per request\n", static_cast<int>(contexts.size()),
              max_tokens);
  std::printf("%-16s %7s %12s %10s %10s %10s %10s %8s\n", "mode", "clients", "tokens/s", "ttft p50",
              "ttft p99", "itl p50", "itl p99", "budget");
  for (const Mode& mode : modes) {
    // Warm-up: one request per context (graphs, plans and resident copies made).
    for (const std::string& c : contexts) {
      OneRequest(server, c, mode, absl::GetFlag(FLAGS_question) + " 0?", 4);
    }
    for (int n : clients) {
      std::vector<Result> results(n);
      std::vector<std::thread> threads;
      const Clock::time_point start = Clock::now();
      for (int i = 0; i < n; ++i) {
        threads.emplace_back([&, i] {
          results[i] =
              OneRequest(server, contexts[i % contexts.size()], mode,
                         absl::GetFlag(FLAGS_question) + " " + std::to_string(i) + "?", max_tokens);
        });
      }
      for (std::thread& t : threads) t.join();
      const double wall = Seconds(start, Clock::now());
      std::vector<double> ttft, gaps;
      int64_t tokens = 0;
      double budget = 0.0;
      int errors = 0;
      for (const Result& r : results) {
        if (!r.error.empty()) {
          if (errors++ == 0) std::fprintf(stderr, "error: %s\n", r.error.c_str());
          continue;
        }
        ttft.push_back(r.ttft);
        gaps.insert(gaps.end(), r.gaps.begin(), r.gaps.end());
        tokens += r.tokens;
        budget += r.kv_budget;
      }
      const int ok = n - errors;
      std::printf("%-16s %7d %12.1f %8.1fms %8.1fms %8.2fms %8.2fms %8.3f%s\n", mode.name.c_str(),
                  n, tokens / wall, 1e3 * Percentile(ttft, 0.5), 1e3 * Percentile(ttft, 0.99),
                  1e3 * Percentile(gaps, 0.5), 1e3 * Percentile(gaps, 0.99),
                  ok > 0 ? budget / ok : 0.0,
                  errors > 0 ? (" (" + std::to_string(errors) + " failed)").c_str() : "");
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return Run();
}
