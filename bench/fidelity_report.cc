// Fidelity report (DESIGN §1.2): for a context and a set of queries, per budget and per layer,
// the realised KV budget, the attention-mass recall (share of the dense softmax mass over the
// fixed context that falls on the kept keys) and the relative error of the attention output
// (fixed + dynamic part, merged) against dense. The model itself runs dense, so every budget is
// measured on the same queries. flat+tail: flat selection with the dropped clusters' attention
// estimated from their centroids (engine/backend/tail_estimate.h) instead of ignored.
//
//   build/fidelity-report --model=build/test-model --context_tokens=4096
//   build/fidelity-report --model=DIR --context_file=doc.txt --queries_file=questions.txt
#include <cmath>
#include <map>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "bench/bench_common.h"
#include "engine/backend/attention_reference.h"
#include "engine/backend/tail_estimate.h"
#include "engine/squeeze/selection.h"

ABSL_FLAG(std::string, model, "", "model directory");
ABSL_FLAG(std::string, context_file, "tests/data/corpus.txt", "context text (repeated to fill)");
ABSL_FLAG(int, context_tokens, 4096, "fixed-context length S");
ABSL_FLAG(std::string, queries_file, "",
          "one query per line ('\\n' escapes allowed); default: 8 passages of the context file");
ABSL_FLAG(std::string, budgets, "0.5,0.3,0.2,0.1,0.05,0.03", "kept fractions");
ABSL_FLAG(bool, hierarchical, true, "also report hierarchical selection");
ABSL_FLAG(bool, tail, true,
          "also report flat selection with the dropped clusters' attention estimated from their "
          "centroids and mean values (flat+tail; engine/backend/tail_estimate.h)");

namespace squeeze::bench {
namespace {

struct Acc {
  double kept = 0, recall = 0, oracle = 0, err2 = 0, ref2 = 0;
  int64_t n = 0, calls = 0;
};

// Runs dense for the model while measuring every selector against dense at every layer.
class FidelityProbe final : public FixedContextAttention {
 public:
  struct Variant {
    std::string name;
    double budget;
    std::unique_ptr<SqueezedFixedContextAttention> sel;
    std::vector<Acc> per_layer;
    bool tail = false;  // the dropped clusters estimated and merged in
  };

  FidelityProbe(const ContextKV& ctx, const SqueezeIndex& index, const SequenceKV& dyn, int Hq,
                std::vector<Variant>* v)
      : ctx_(ctx), index_(index), dyn_(dyn), Hq_(Hq), variants_(v) {}
  void set_past(int past) { past_ = past; }

  void Select(int layer, const float* q, int n, LayerSelection* out) override {
    const int S = ctx_.num_tokens, Hkv = ctx_.shape.num_kv_heads, d = ctx_.shape.head_dim;
    const AttentionShape shape{n, Hq_, Hkv, d, 1.0f / std::sqrt(static_cast<float>(d))};
    const size_t rows = static_cast<size_t>(n) * Hq_;
    AttentionKeys fixed{.kv = ctx_.Layer(layer)};
    AttentionKeys dynamic{.kv = {dyn_.key(layer, 0, 0), dyn_.value(layer, 0, 0),
                                 static_cast<size_t>(dyn_.capacity()) * d, past_ + n},
                          .causal_offset = past_};
    std::vector<float> of(rows * d), lf(rows), od(rows * d), ld(rows);
    AttentionPartial(shape, q, fixed, of.data(), lf.data());
    AttentionPartial(shape, q, dynamic, od.data(), ld.data());
    std::vector<float> dense = of, ldense = lf;
    MergeAttentionPartials(dense.data(), ldense.data(), od.data(), ld.data(), rows, d);
    const std::vector<float> probs = FixedProbabilities(layer, q, n);
    for (Variant& v : *variants_) {
      LayerSelection ls;
      v.sel->SelectAndRecord(layer, q, n, &ls);
      std::vector<int64_t> kept_clustered(Hkv, 0);
      for (int h = 0; h < Hkv; ++h)
        for (const KeyRange& r : ls.ranges[h])
          kept_clustered[h] +=
              std::max(0, std::min(r.end, S - index_.window) - std::max(r.begin, index_.sinks));
      AttentionKeys kept = fixed;
      kept.ranges = ls.ranges;
      std::vector<float> os(rows * d), lsq(rows);
      AttentionPartial(shape, q, kept, os.data(), lsq.data());
      Acc& a = v.per_layer[layer];
      for (size_t r = 0; r < rows; ++r) a.recall += std::exp(lsq[r] - lf[r]);
      if (v.tail) AddTail(layer, q, n, ls, os.data(), lsq.data());
      a.oracle += OracleRecall(layer, probs, n, kept_clustered);
      MergeAttentionPartials(os.data(), lsq.data(), od.data(), ld.data(), rows, d);
      for (size_t i = 0; i < os.size(); ++i) {
        a.err2 += (os[i] - dense[i]) * (os[i] - dense[i]);
        a.ref2 += dense[i] * dense[i];
      }
      a.n += rows;
      ++a.calls;
      int64_t kept_rows = 0;
      for (int h = 0; h < Hkv; ++h)
        for (const KeyRange& r : ls.ranges[h]) kept_rows += r.size();
      a.kept += static_cast<double>(kept_rows) / (static_cast<double>(Hkv) * S);
    }
    out->ranges.assign(Hkv, std::vector<KeyRange>{{0, S}});
  }

 private:
  // Merges into the kept partial (out, lse) [n * Hq] the estimate of each head's dropped
  // clusters (DroppedClustersPartial).
  void AddTail(int layer, const float* q, int n, const LayerSelection& ls, float* out, float* lse) {
    const int Hkv = ctx_.shape.num_kv_heads, d = ctx_.shape.head_dim;
    if (means_.empty()) means_.resize(static_cast<size_t>(index_.num_layers) * Hkv);
    std::vector<const std::vector<float>*> means(Hkv);
    for (int h = 0; h < Hkv; ++h) {
      std::vector<float>& m = means_[static_cast<size_t>(layer) * Hkv + h];
      if (m.empty()) m = ClusterMeanValues(ctx_, index_.head(layer, h), layer, h);
      means[h] = &m;
    }
    const AttentionShape shape{n, Hq_, Hkv, d, 1.0f / std::sqrt(static_cast<float>(d))};
    MergeDroppedClustersEstimate(shape, q, index_.tables(), layer, ls.ranges, means, out, lse);
  }

  // Softmax over the fixed context of every (query, query head): p[(t * Hq + qh) * S + row].
  std::vector<float> FixedProbabilities(int layer, const float* q, int n) const {
    const int S = ctx_.num_tokens, Hkv = ctx_.shape.num_kv_heads, d = ctx_.shape.head_dim;
    const int G = Hq_ / Hkv;
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    std::vector<float> p(static_cast<size_t>(n) * Hq_ * S);
    for (int t = 0; t < n; ++t) {
      for (int qh = 0; qh < Hq_; ++qh) {
        const float* qv = q + (static_cast<size_t>(t) * Hq_ + qh) * d;
        float* row = &p[(static_cast<size_t>(t) * Hq_ + qh) * S];
        float m = -INFINITY;
        for (int r = 0; r < S; ++r) {
          const float* k = ctx_.key(layer, qh / G, r);
          float dot = 0;
          for (int i = 0; i < d; ++i) dot += qv[i] * k[i];
          row[r] = dot * scale;
          m = std::max(m, row[r]);
        }
        double sum = 0;
        for (int r = 0; r < S; ++r) sum += row[r] = std::exp(row[r] - m);
        for (int r = 0; r < S; ++r) row[r] /= sum;
      }
    }
    return p;
  }

  // Recall of the cluster oracle: per KV head, the clusters with the most true attention mass
  // (summed over the group's heads and the step's queries), as many rows as `kept` clustered rows,
  // plus sinks and window. Separates centroid-estimation error from cluster granularity.
  double OracleRecall(int layer, const std::vector<float>& p, int n,
                      const std::vector<int64_t>& kept_clustered) const {
    const int S = ctx_.num_tokens, Hkv = ctx_.shape.num_kv_heads, G = Hq_ / Hkv;
    double recall = 0;
    for (int h = 0; h < Hkv; ++h) {
      const SqueezeHeadIndex& hi = index_.head(layer, h);
      const int C = hi.num_clusters();
      std::vector<double> mass(C, 0);
      for (int t = 0; t < n; ++t)
        for (int g = 0; g < G; ++g) {
          const float* row = &p[(static_cast<size_t>(t) * Hq_ + h * G + g) * S];
          for (int c = 0; c < C; ++c)
            for (int r = hi.offsets[c]; r < hi.offsets[c + 1]; ++r) mass[c] += row[r];
        }
      std::vector<int> order(C);
      for (int c = 0; c < C; ++c) order[c] = c;
      std::sort(order.begin(), order.end(), [&](int a, int b) { return mass[a] > mass[b]; });
      std::vector<char> keep(S, 0);
      for (int r = 0; r < index_.sinks; ++r) keep[r] = 1;
      for (int r = S - index_.window; r < S; ++r) keep[r] = 1;
      int64_t rows = 0;
      for (int c : order) {
        if (rows >= kept_clustered[h]) break;
        for (int r = hi.offsets[c]; r < hi.offsets[c + 1]; ++r) keep[r] = 1;
        rows += hi.sizes[c];
      }
      for (int t = 0; t < n; ++t)
        for (int g = 0; g < G; ++g) {
          const float* row = &p[(static_cast<size_t>(t) * Hq_ + h * G + g) * S];
          for (int r = 0; r < S; ++r) recall += keep[r] ? row[r] : 0;
        }
    }
    return recall;
  }

  const ContextKV& ctx_;
  const SqueezeIndex& index_;
  const SequenceKV& dyn_;
  int Hq_;
  int past_ = 0;
  std::vector<Variant>* variants_;
  std::vector<std::vector<float>> means_;  // [L * Hkv] cluster mean values, made on first use
};

std::vector<std::string> Queries(const std::string& context_text) {
  std::vector<std::string> out;
  if (!absl::GetFlag(FLAGS_queries_file).empty()) {
    for (absl::string_view line : absl::StrSplit(ReadFileOrDie(absl::GetFlag(FLAGS_queries_file)),
                                                 '\n', absl::SkipEmpty())) {
      out.push_back(absl::StrReplaceAll(line, {{"\\n", "\n"}}));  // escaped newlines
    }
    return out;
  }
  for (int i = 0; i < 8; ++i) {
    const size_t at = (context_text.size() / 9) * (i + 1);
    out.push_back(context_text.substr(at, 160));
  }
  return out;
}

int Run() {
  auto loaded = Load(absl::GetFlag(FLAGS_model));
  if (!loaded.ok()) {
    std::fprintf(stderr, "%s\n", loaded.status().ToString().c_str());
    return 1;
  }
  LlamaModel& model = *loaded->model;
  const ModelConfig& cfg = model.config();
  const std::string text = ReadFileOrDie(absl::GetFlag(FLAGS_context_file));
  const int S = absl::GetFlag(FLAGS_context_tokens);
  const std::vector<int32_t> tokens = ContextTokens(*loaded->tokenizer, text, S);
  SqueezeOptions options;
  options.hierarchical = absl::GetFlag(FLAGS_hierarchical);
  auto reg = Register(model, tokens, options, true);
  if (!reg.ok()) {
    std::fprintf(stderr, "%s\n", reg.status().ToString().c_str());
    return 1;
  }
  std::vector<double> budgets;
  for (absl::string_view b : absl::StrSplit(absl::GetFlag(FLAGS_budgets), ',')) {
    double x;
    if (absl::SimpleAtod(b, &x)) budgets.push_back(x);
  }
  const std::vector<std::string> queries = Queries(text);
  std::vector<FidelityProbe::Variant> variants;
  for (const char* name : {"flat", "flat+tail", "hierarchical"}) {
    const std::string_view kind(name);
    if (kind == "hierarchical" && !options.hierarchical) continue;
    if (kind == "flat+tail" && !absl::GetFlag(FLAGS_tail)) continue;
    for (double b : budgets) {
      FidelityProbe::Variant v;
      v.name = name;
      v.budget = b;
      v.tail = kind == "flat+tail";
      v.per_layer.resize(cfg.num_layers);
      variants.push_back(std::move(v));
    }
  }
  std::vector<double> realised(variants.size());
  for (const std::string& query : queries) {
    std::vector<int32_t> ids = loaded->tokenizer->Encode(query).value();
    if (ids.empty()) continue;
    for (auto& v : variants) {
      v.sel = std::make_unique<SqueezedFixedContextAttention>(
          *reg->index,
          SelectionOptions{.budget = v.budget, .hierarchical = v.name == "hierarchical"});
    }
    SequenceKV dyn(model.kv_shape());
    FidelityProbe probe(reg->kv, *reg->index, dyn, cfg.num_heads, &variants);
    // Prefill the query (all its tokens at once, averaged selection), then 8 decode steps.
    std::vector<int32_t> step_tokens = ids;
    for (int s = 0; s < 9; ++s) {
      probe.set_past(dyn.length());
      SequenceStep step{.tokens = step_tokens, .context = &reg->kv, .fixed = &probe, .kv = &dyn};
      ForwardOutput out;
      if (auto st = model.Forward(std::span<SequenceStep>(&step, 1), &out); !st.ok()) {
        std::fprintf(stderr, "%s\n", st.ToString().c_str());
        return 1;
      }
      const auto& lg = out.logits[0];
      step_tokens = {static_cast<int32_t>(std::max_element(lg.begin(), lg.end()) - lg.begin())};
    }
    for (size_t i = 0; i < variants.size(); ++i) {
      realised[i] += variants[i].sel->realised_budget() / queries.size();
    }
  }
  std::printf(
      "context: %d tokens, %d layers, Hq=%d, Hkv=%d, d=%d; %zu queries, each a prefill "
      "step + 8 greedy decode steps; %lld centroids\n\n",
      S, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, queries.size(),
      static_cast<long long>(reg->index->num_centroids()));
  std::printf(
      "| selection | budget | layer | kept fraction | realised KV budget | mass recall | "
      "cluster-oracle recall | rel. error vs dense |\n|---|---|---|---|---|---|---|---|\n");
  for (size_t i = 0; i < variants.size(); ++i) {
    const auto& v = variants[i];
    Acc all;
    for (int l = 0; l < cfg.num_layers; ++l) {
      const Acc& a = v.per_layer[l];
      std::printf("| %s | %.0f%% | %d | %.3f | | %.4f | %.4f | %.4f |\n", v.name.c_str(),
                  100 * v.budget, l, a.kept / a.calls, a.recall / a.n, a.oracle / a.n,
                  std::sqrt(a.err2 / a.ref2));
      all.kept += a.kept, all.calls += a.calls, all.recall += a.recall, all.n += a.n;
      all.oracle += a.oracle;
      all.err2 += a.err2, all.ref2 += a.ref2;
    }
    std::printf("| %s | %.0f%% | all | %.3f | %.3f | %.4f | %.4f | %.4f |\n", v.name.c_str(),
                100 * v.budget, all.kept / all.calls, realised[i], all.recall / all.n,
                all.oracle / all.n, std::sqrt(all.err2 / all.ref2));
  }
  return 0;
}

}  // namespace
}  // namespace squeeze::bench

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return squeeze::bench::Run();
}
