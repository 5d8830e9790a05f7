// Long-context retrieval accuracy through the real serving path: a gRPC client that registers
// each task's haystack as a context and asks its question under dense attention, Squeezed
// Attention (flat and hierarchical) and the query-blind recent-keys baseline at several budgets.
// Exact match of the greedy answer. Tasks come from tools/retrieval_tasks.py (JSONL).
//
//   python3 tools/retrieval_tasks.py --seed 777 --n 20 --words 3300 --variant single --out t.jsonl
//   build/accuracy-bench --server=127.0.0.1:50051 --tasks=t.jsonl
// bench/run_accuracy.sh starts a server and runs the whole table.
#include <cstdio>
#include <fstream>
#include <map>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "server address");
ABSL_FLAG(std::vector<std::string>, tasks, {}, "JSONL task files (comma-separated)");
ABSL_FLAG(std::string, budgets, "0.5,0.3,0.2,0.1,0.05,0.03", "budgets for squeezed and recent");
ABSL_FLAG(bool, hierarchical, true, "also run hierarchical squeezed attention");
ABSL_FLAG(std::string, masses, "", "also run mass-based squeezed selection at these masses");
ABSL_FLAG(bool, per_step, false,
          "also run squeezed (and hierarchical) selection with the per-step budget policy "
          "(squeezed-step, hierarchical-step); the other squeezed rows are calibrated");
ABSL_FLAG(int, max_tokens, 48, "answer length cap in tokens");

namespace {

using squeeze::client::SqueezeClient;
namespace v1 = squeeze::v1;

struct Config {
  std::string name;
  v1::AttentionOptions::Mode mode;
  double budget;  // < 0: none
  bool hierarchical;
  double mass = -1;  // > 0: mass-based selection (budget then shows the mass)
  v1::AttentionOptions::BudgetPolicy policy = v1::AttentionOptions::CALIBRATED;
};

struct Score {
  int correct = 0, total = 0;
  double budget_sum = 0;
};

int Run() {
  SqueezeClient client(absl::GetFlag(FLAGS_server));
  std::vector<double> budgets;
  for (absl::string_view b : absl::StrSplit(absl::GetFlag(FLAGS_budgets), ',')) {
    double x;
    if (absl::SimpleAtod(b, &x)) budgets.push_back(x);
  }
  std::vector<Config> configs = {{"dense", v1::AttentionOptions::DENSE, -1, false}};
  for (double b : budgets) {
    configs.push_back({"squeezed", v1::AttentionOptions::SQUEEZED, b, false});
    if (absl::GetFlag(FLAGS_hierarchical)) {
      configs.push_back({"hierarchical", v1::AttentionOptions::SQUEEZED, b, true});
    }
    if (absl::GetFlag(FLAGS_per_step)) {
      configs.push_back({"squeezed-step", v1::AttentionOptions::SQUEEZED, b, false, -1,
                         v1::AttentionOptions::PER_STEP});
      if (absl::GetFlag(FLAGS_hierarchical)) {
        configs.push_back({"hierarchical-step", v1::AttentionOptions::SQUEEZED, b, true, -1,
                           v1::AttentionOptions::PER_STEP});
      }
    }
    configs.push_back({"recent", v1::AttentionOptions::RECENT, b, false});
    configs.push_back({"pages", v1::AttentionOptions::PAGES, b, false});
  }
  for (absl::string_view m : absl::StrSplit(absl::GetFlag(FLAGS_masses), ',', absl::SkipEmpty())) {
    double x;
    if (absl::SimpleAtod(m, &x)) {
      configs.push_back({"mass", v1::AttentionOptions::SQUEEZED, x, false, x});
    }
  }
  // (variant, approx tokens) -> config index -> score
  std::map<std::pair<std::string, int64_t>, std::vector<Score>> table;
  int task_no = 0;
  for (const std::string& file : absl::GetFlag(FLAGS_tasks)) {
    std::ifstream in(file);
    if (!in) {
      std::fprintf(stderr, "cannot read %s\n", file.c_str());
      return 2;
    }
    for (std::string line; std::getline(in, line);) {
      if (line.empty()) continue;
      nlohmann::json task = nlohmann::json::parse(line);
      const std::string name = absl::StrCat("task-", task_no++);
      v1::RegisterContextRequest reg;
      reg.set_name(name);
      reg.mutable_content()->set_text(task["context"].get<std::string>());
      reg.mutable_index()->set_hierarchical(absl::GetFlag(FLAGS_hierarchical));
      v1::ContextInfo info;
      grpc::Status st = client.RegisterContext(reg, nullptr, &info);
      if (!st.ok()) {
        std::fprintf(stderr, "register %s: %s\n", name.c_str(), st.error_message().c_str());
        return 1;
      }
      // Bucket lengths to the nearest 1K tokens.
      const int64_t bucket = (info.num_tokens() + 512) / 1024 * 1024;
      auto& scores = table[{task["variant"].get<std::string>(), bucket}];
      scores.resize(configs.size());
      const std::string answer(absl::StripAsciiWhitespace(task["answer"].get<std::string>()));
      for (size_t c = 0; c < configs.size(); ++c) {
        v1::GenerateRequest req;
        req.set_context(name);
        req.mutable_input()->set_text(task["question"].get<std::string>());
        req.set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
        req.mutable_sampling()->set_temperature(0);
        req.add_stop()->assign(1, '\n');  // (GCC 12 -Wrestrict false positive on add_stop("\n"))
        req.mutable_attention()->set_mode(configs[c].mode);
        if (configs[c].mass > 0) {
          req.mutable_attention()->set_mass(configs[c].mass);
        } else if (configs[c].budget >= 0) {
          req.mutable_attention()->set_budget(configs[c].budget);
        }
        if (configs[c].mode == v1::AttentionOptions::SQUEEZED) {
          req.mutable_attention()->set_hierarchical(configs[c].hierarchical);
          if (configs[c].mass <= 0) req.mutable_attention()->set_budget_policy(configs[c].policy);
        }
        std::string text;
        v1::GenerateResponse last;
        st = client.Generate(req, [&](const v1::GenerateResponse& r) {
          text += r.text();
          last = r;
          return true;
        });
        if (!st.ok()) {
          std::fprintf(stderr, "generate %s: %s\n", name.c_str(), st.error_message().c_str());
          return 1;
        }
        Score& s = scores[c];
        s.correct += absl::StripAsciiWhitespace(text) == answer;
        s.total += 1;
        s.budget_sum += last.usage().kv_budget();
      }
      client.DeleteContext(name);
      std::fprintf(stderr, "%s (%s, %lld tokens): dense %s\n", name.c_str(),
                   task["variant"].get<std::string>().c_str(),
                   static_cast<long long>(info.num_tokens()),
                   scores[0].correct == scores[0].total ? "ok" : "wrong");
    }
  }
  std::printf(
      "| variant | ~tokens | selection | budget | tasks | exact match | realised KV budget |\n"
      "|---|---|---|---|---|---|---|\n");
  for (const auto& [key, scores] : table) {
    for (size_t c = 0; c < configs.size(); ++c) {
      const Score& s = scores[c];
      if (s.total == 0) continue;
      std::printf("| %s | %lld | %s | %s | %d | %.1f%% | %.3f |\n", key.first.c_str(),
                  static_cast<long long>(key.second), configs[c].name.c_str(),
                  configs[c].budget < 0 ? "-" : absl::StrCat(100 * configs[c].budget, "%").c_str(),
                  s.total, 100.0 * s.correct / s.total, s.budget_sum / s.total);
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return Run();
}
