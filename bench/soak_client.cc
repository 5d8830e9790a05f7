// soak-client: a bounded soak of a running squeeze-server (bench/run_soak.sh starts one).
// --streams workers loop for --duration_s over a mix of Generate streams (some cancelled by the
// client, some with short deadlines), registrations, deletions, gets and lists of a small pool of
// contexts. Every call's status is checked against the statuses its action may legitimately
// get; anything else is "unexpected". Every --report_s it prints the server's RSS, open fds and
// threads (from /proc/--server_pid); at the end it compares the last sample with the first one
// after warm-up. Exit code 1 when an unexpected status was seen.
#include <dirent.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "client/client.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "Server address");
ABSL_FLAG(int, server_pid, 0, "The server's pid, for RSS / fds / threads (0: not sampled)");
ABSL_FLAG(double, duration_s, 1800, "Soak duration in seconds");
ABSL_FLAG(int, streams, 64, "Concurrent workers");
ABSL_FLAG(double, report_s, 60, "Seconds between resource samples");
ABSL_FLAG(std::string, document, "tests/data/demo_document.txt", "Text the contexts are cut from");
ABSL_FLAG(int, contexts, 6, "Context names in the pool");
ABSL_FLAG(uint64_t, seed, 1, "Random seed of the action mix");

namespace {

namespace v1 = squeeze::v1;
using Clock = std::chrono::steady_clock;

struct Resources {
  double rss_mb = 0;
  int fds = 0;
  int threads = 0;
};

Resources Sample(int pid) {
  Resources r;
  if (pid <= 0) return r;
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) r.rss_mb = std::stod(line.substr(6)) / 1024.0;
    if (line.rfind("Threads:", 0) == 0) r.threads = std::stoi(line.substr(8));
  }
  if (DIR* d = opendir(("/proc/" + std::to_string(pid) + "/fd").c_str())) {
    while (dirent* e = readdir(d)) r.fds += e->d_name[0] != '.';
    closedir(d);
  }
  return r;
}

class Tally {
 public:
  // `allowed`: the codes this action may get; others are unexpected.
  void Record(const std::string& action, const grpc::Status& st,
              const std::vector<grpc::StatusCode>& allowed) {
    bool ok = false;
    for (auto c : allowed) ok |= st.error_code() == c;
    std::lock_guard<std::mutex> lock(mu_);
    ++counts_[action + " " + std::to_string(st.error_code())];
    ++calls_;
    if (!ok) {
      ++unexpected_;
      if (unexpected_ <= 20) {
        std::fprintf(stderr, "unexpected: %s -> %d %s\n", action.c_str(), st.error_code(),
                     st.error_message().c_str());
      }
    }
  }
  int64_t calls() {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }
  int64_t unexpected() {
    std::lock_guard<std::mutex> lock(mu_);
    return unexpected_;
  }
  void Print() {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [key, n] : counts_) std::printf("  %-28s %lld\n", key.c_str(), (long long)n);
  }

 private:
  std::mutex mu_;
  std::map<std::string, int64_t> counts_;  // "action code" -> calls
  int64_t calls_ = 0;
  int64_t unexpected_ = 0;
};

using Code = grpc::StatusCode;

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  std::ifstream in(absl::GetFlag(FLAGS_document));
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string document = ss.str();
  if (document.size() < 4000) {
    std::fprintf(stderr, "--document is too short\n");
    return 2;
  }
  const int num_contexts = absl::GetFlag(FLAGS_contexts);
  // Each name has two contents: a registration with the other one while the first is held gets
  // ALREADY_EXISTS (or ABORTED while it is still being registered).
  auto content = [&](int name, int variant) {
    const size_t start =
        (static_cast<size_t>(name) * 577 + variant * 1301) % (document.size() - 3000);
    return document.substr(start, 1200 + 300 * (name % 4));
  };
  squeeze::client::SqueezeClient client(absl::GetFlag(FLAGS_server));
  const auto deadline =
      Clock::now() +
      std::chrono::milliseconds(static_cast<int64_t>(absl::GetFlag(FLAGS_duration_s) * 1000));
  Tally tally;
  std::atomic<int64_t> tokens{0};

  auto worker = [&](int index) {
    std::mt19937_64 rng(absl::GetFlag(FLAGS_seed) * 1000003 + index);
    std::uniform_real_distribution<double> u(0, 1);
    while (Clock::now() < deadline) {
      const double action = u(rng);
      const int name_index = static_cast<int>(rng() % num_contexts);
      const std::string name = "soak-" + std::to_string(name_index);
      if (action < 0.80) {
        v1::GenerateRequest req;
        const bool with_context = u(rng) < 0.8;
        if (with_context) req.set_context(name);
        req.mutable_input()->set_text(with_context ? "\nQuestion: what happened next?"
                                                   : "Once upon a time");
        req.set_max_tokens(8 + static_cast<int>(rng() % 56));
        req.set_ignore_eos(true);
        req.mutable_sampling()->set_temperature(0.8f);
        req.mutable_sampling()->set_seed(rng());
        if (with_context && u(rng) < 0.3) {
          req.mutable_attention()->set_mode(v1::AttentionOptions::DENSE);
        }
        const double kind = u(rng);
        const bool cancel = kind < 0.15;
        const bool short_deadline = kind >= 0.15 && kind < 0.30;
        const int cancel_after = 1 + static_cast<int>(rng() % 6);
        int received = 0;
        grpc::Status st = client.Generate(
            req,
            [&](const v1::GenerateResponse& r) {
              tokens += r.token_ids_size();
              return !(cancel && ++received >= cancel_after);
            },
            short_deadline ? 0.05 + 0.5 * u(rng) : 0);
        // NOT_FOUND: the context was deleted by another worker; RESOURCE_EXHAUSTED: the queue
        // was full; CANCELLED only when this worker cancelled, DEADLINE_EXCEEDED only with one.
        std::vector<Code> allowed = {Code::OK, Code::NOT_FOUND, Code::RESOURCE_EXHAUSTED};
        if (cancel) allowed.push_back(Code::CANCELLED);
        if (short_deadline) allowed.push_back(Code::DEADLINE_EXCEEDED);
        tally.Record(cancel           ? "generate-cancel"
                     : short_deadline ? "generate-deadline"
                                      : "generate",
                     st, allowed);
      } else if (action < 0.90) {
        v1::RegisterContextRequest req;
        req.set_name(name);
        req.mutable_content()->set_text(content(name_index, u(rng) < 0.85 ? 0 : 1));
        if (u(rng) < 0.3) req.mutable_index()->set_disable(true);
        v1::ContextInfo info;
        grpc::Status st = client.RegisterContext(req, nullptr, &info);
        // ALREADY_EXISTS: held with other content or index options; ABORTED: a registration of
        // other content is in progress; RESOURCE_EXHAUSTED: too many registrations at once.
        tally.Record("register", st,
                     {Code::OK, Code::ALREADY_EXISTS, Code::ABORTED, Code::RESOURCE_EXHAUSTED});
      } else if (action < 0.95) {
        tally.Record("delete", client.DeleteContext(name), {Code::OK, Code::NOT_FOUND});
      } else if (action < 0.975) {
        v1::ContextInfo info;
        tally.Record("get", client.GetContext(name, &info), {Code::OK, Code::NOT_FOUND});
      } else {
        v1::ListContextsResponse list;
        tally.Record("list", client.ListContexts(&list), {Code::OK});
      }
    }
  };

  const int pid = absl::GetFlag(FLAGS_server_pid);
  const auto start = Clock::now();
  std::vector<std::thread> workers;
  for (int i = 0; i < absl::GetFlag(FLAGS_streams); ++i) workers.emplace_back(worker, i);
  std::vector<std::pair<double, Resources>> samples;
  const double report = absl::GetFlag(FLAGS_report_s);
  std::printf("%8s %10s %6s %8s %10s %10s %10s\n", "t_s", "rss_mb", "fds", "threads", "calls",
              "tokens", "unexpected");
  auto print_sample = [&] {
    const double t = std::chrono::duration<double>(Clock::now() - start).count();
    const Resources r = Sample(pid);
    samples.emplace_back(t, r);
    std::printf("%8.0f %10.1f %6d %8d %10lld %10lld %10lld\n", t, r.rss_mb, r.fds, r.threads,
                (long long)tally.calls(), (long long)tokens.load(), (long long)tally.unexpected());
    std::fflush(stdout);
  };
  print_sample();
  while (Clock::now() < deadline) {
    const auto next = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(report * 1000));
    while (Clock::now() < std::min(next, deadline)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    print_sample();
  }
  for (auto& w : workers) w.join();
  print_sample();
  std::printf("calls by action and status code:\n");
  tally.Print();
  // Warm-up: the first sample after a tenth of the run (pools, caches and contexts settle).
  size_t warm = 0;
  while (warm + 1 < samples.size() && samples[warm].first < samples.back().first / 10) ++warm;
  const Resources& a = samples[warm].second;
  const Resources& b = samples.back().second;
  std::printf(
      "soak: %.0f s, %d streams, %lld calls, %lld tokens; after warm-up (t=%.0f s) -> end: RSS "
      "%.1f -> %.1f MiB, fds %d -> %d, threads %d -> %d; unexpected statuses: %lld\n",
      samples.back().first, absl::GetFlag(FLAGS_streams), (long long)tally.calls(),
      (long long)tokens.load(), samples[warm].first, a.rss_mb, b.rss_mb, a.fds, b.fds, a.threads,
      b.threads, (long long)tally.unexpected());
  return tally.unexpected() == 0 ? 0 : 1;
}
