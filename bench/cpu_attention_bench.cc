// CPU benchmark: Squeezed Attention decode attention vs dense attention of the same build, on a
// context prefilled by the model (real post-RoPE keys), plus registration time split into
// prefill / clustering / calibration. Prints ratios measured in this run and the fraction of
// the machine's measured memory bandwidth reached.
//
//   build/make-test-model --out=build/bench-model --hidden_size=512 --num_heads=8
//       --num_kv_heads=2 --num_layers=2 --max_position_embeddings=32768
//       --corpus=tests/data/corpus.txt   (one command)
//   build/cpu-attention-bench --model=build/bench-model --context_tokens=16384
#include <cmath>
#include <cstring>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/bench_common.h"
#include "engine/backend/backend.h"
#include "engine/squeeze/selection.h"

ABSL_FLAG(std::string, model, "", "model directory");
ABSL_FLAG(std::string, context_file, "tests/data/corpus.txt", "text repeated to fill the context");
ABSL_FLAG(int, context_tokens, 16384, "fixed-context length S");
ABSL_FLAG(std::string, budgets, "0.2,0.1,0.05,0.03", "kept fractions to time");
ABSL_FLAG(
    std::string, kept_targets, "0.2,0.1,0.05",
    "also time at these realised kept fractions of the context (budget found by bisection "
    "for the benchmark query), since a query's kept fraction differs from the nominal budget");
ABSL_FLAG(int, repeats, 30, "timed repetitions (median reported)");

namespace squeeze::bench {
namespace {

double MeasureCopyBandwidth() {
  const size_t bytes = size_t{256} << 20;
  std::vector<char> a(bytes, 1), b(bytes, 2);
  std::memcpy(b.data(), a.data(), bytes);  // warm
  std::vector<double> t;
  for (int i = 0; i < 5; ++i) {
    const double t0 = Now();
    std::memcpy(b.data(), a.data(), bytes);
    t.push_back(Now() - t0);
  }
  std::sort(t.begin(), t.end());
  return 2.0 * bytes / t[t.size() / 2];  // read + write
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int Run() {
  auto loaded = Load(absl::GetFlag(FLAGS_model));
  if (!loaded.ok()) {
    std::fprintf(stderr, "%s\n", loaded.status().ToString().c_str());
    return 1;
  }
  LlamaModel& model = *loaded->model;
  const ModelConfig& cfg = model.config();
  const int S = absl::GetFlag(FLAGS_context_tokens);
  const std::vector<int32_t> tokens =
      ContextTokens(*loaded->tokenizer, ReadFileOrDie(absl::GetFlag(FLAGS_context_file)), S);
  SqueezeOptions options;
  auto reg = Register(model, tokens, options, /*build=*/true);
  if (!reg.ok()) {
    std::fprintf(stderr, "%s\n", reg.status().ToString().c_str());
    return 1;
  }
  std::printf("model: %d layers, Hq=%d, Hkv=%d, d=%d; context S=%d tokens\n", cfg.num_layers,
              cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, S);
  std::printf(
      "registration: prefill %.2f s (%.0f tok/s), clustering %.2f s, calibration %.2f s, "
      "%lld centroids\n",
      reg->prefill_seconds, S / reg->prefill_seconds, reg->timings.clustering_seconds,
      reg->timings.calibration_seconds, static_cast<long long>(reg->index->num_centroids()));

  // A real decode query: run a short user input densely against the context and keep the last
  // token's post-RoPE query of every layer; its K/V are the last dynamic row.
  const std::vector<int32_t> input(tokens.begin() + 1000, tokens.begin() + 1016);
  SequenceKV dyn(model.kv_shape());
  QueryCapture capture;
  capture.from_position = S + static_cast<int>(input.size()) - 1;
  SequenceStep step{
      .tokens = input, .context = &reg->kv, .kv = &dyn, .want_logits = false, .capture = &capture};
  ForwardOutput out;
  if (auto st = model.Forward(std::span<SequenceStep>(&step, 1), &out); !st.ok()) {
    std::fprintf(stderr, "%s\n", st.ToString().c_str());
    return 1;
  }
  const int L = cfg.num_layers, Hq = cfg.num_heads, Hkv = cfg.num_kv_heads, d = cfg.head_dim;
  const int dyn_len = dyn.length();
  Backend& be = model.backend();
  std::vector<float> att(static_cast<size_t>(Hq) * d);

  auto params_for = [&](int l, std::span<const std::vector<KeyRange>> ranges) {
    AttentionParams p;
    p.shape = {1, Hq, Hkv, d, 1.0f / std::sqrt(static_cast<float>(d))};
    p.q = capture.q[l].data();
    p.out = att.data();
    p.fixed.kv = reg->kv.Layer(l);
    p.fixed.ranges = ranges;
    p.dynamic.kv = {dyn.key(l, 0, 0), dyn.value(l, 0, 0), static_cast<size_t>(dyn.capacity()) * d,
                    dyn_len};
    p.dynamic.causal_offset = dyn_len - 1;
    return p;
  };
  const int repeats = absl::GetFlag(FLAGS_repeats);
  // Dense: every row of every head.
  std::vector<double> dense_t;
  for (int r = 0; r < repeats + 3; ++r) {
    const double t0 = Now();
    for (int l = 0; l < L; ++l) be.Attention(params_for(l, {}));
    if (r >= 3) dense_t.push_back(Now() - t0);
  }
  const double dense = Median(dense_t);
  const double bw = MeasureCopyBandwidth();
  const double dense_bytes = 2.0 * L * Hkv * S * d * sizeof(float);
  std::printf("memory bandwidth (memcpy, read+write): %.1f GB/s\n", bw / 1e9);
  std::printf(
      "dense decode attention: %.3f ms per token (%d layers), %.1f GB/s = %.0f%% of "
      "memcpy bandwidth\n\n",
      dense * 1e3, L, dense_bytes / dense / 1e9, 100 * dense_bytes / dense / bw);
  std::printf(
      "| budget | realised KV budget | kept rows | squeezed ms | dense ms | speedup | "
      "bytes ratio | %% of memcpy bw |\n|---|---|---|---|---|---|---|---|\n");
  // Kept fraction of all context rows for one budget (this query, all layers and heads).
  auto kept_for = [&](double budget) {
    SqueezedFixedContextAttention sel(*reg->index, {.budget = budget});
    LayerSelection ls;
    int64_t rows = 0;
    for (int l = 0; l < L; ++l) {
      sel.SelectAndRecord(l, capture.q[l].data(), 1, &ls);
      for (int h = 0; h < Hkv; ++h) rows += sel.kept_rows(l, h);
    }
    return static_cast<double>(rows) / (static_cast<double>(L) * Hkv * S);
  };
  std::vector<std::pair<std::string, double>> runs;  // label, budget
  for (absl::string_view b : absl::StrSplit(absl::GetFlag(FLAGS_budgets), ',')) {
    double budget = 0;
    if (absl::SimpleAtod(b, &budget)) runs.push_back({absl::StrCat(100 * budget, "%"), budget});
  }
  for (absl::string_view k : absl::StrSplit(absl::GetFlag(FLAGS_kept_targets), ',')) {
    double target = 0;
    if (!absl::SimpleAtod(k, &target)) continue;
    double lo = 0, hi = 1;
    for (int i = 0; i < 40; ++i) {
      const double mid = 0.5 * (lo + hi);
      (kept_for(mid) > target ? hi : lo) = mid;
    }
    runs.push_back({absl::StrCat(lo, " (kept ", 100 * target, "%)"), lo});
  }
  for (const auto& [label, budget] : runs) {
    std::vector<double> t;
    double realised = 0, kept = 0;
    for (int r = 0; r < repeats + 3; ++r) {
      SqueezedFixedContextAttention sel(*reg->index, {.budget = budget});
      LayerSelection ls;
      int64_t rows = 0;
      const double t0 = Now();
      for (int l = 0; l < L; ++l) {
        sel.SelectAndRecord(l, capture.q[l].data(), 1, &ls);
        be.Attention(params_for(l, ls.ranges));
      }
      const double dt = Now() - t0;
      if (r >= 3) t.push_back(dt);
      for (int l = 0; l < L; ++l)
        for (int h = 0; h < Hkv; ++h) rows += sel.kept_rows(l, h);
      realised = sel.realised_budget();
      kept = static_cast<double>(rows) / (static_cast<double>(L) * Hkv * S);
    }
    const double sq = Median(t);
    const double bytes = 2.0 * kept * L * Hkv * S * d * sizeof(float) +
                         static_cast<double>(reg->index->num_centroids()) * d * sizeof(float);
    std::printf("| %s | %.3f | %.3f | %.3f | %.3f | %.2fx | %.2fx | %.0f%% |\n", label.c_str(),
                realised, kept, sq * 1e3, dense * 1e3, dense / sq, dense_bytes / bytes,
                100 * bytes / sq / bw);
  }
  return 0;
}

}  // namespace
}  // namespace squeeze::bench

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return squeeze::bench::Run();
}
