// Conformance with Hugging Face `transformers`, `tokenizers` and `sentencepiece`, against golden
// files written by tools/make_goldens.py (see its header for what each file holds):
//
//   models:     every golden model (Llama-2, LongChat, Llama-3.1/3.2, Mistral, Qwen2 with YaRN,
//               Qwen3, Mistral-Nemo, Phi-3 with LongRoPE) loads through the normal loader
//               (LoadModelConfig, LoadLlamaWeights, LlamaModel::Create on the CPU backend) and
//               reproduces the transformers fp32 logits, argmaxes and greedy tokens;
//   tokenizers: SentencePiece (through LoadTokenizer) and tokenizer.json byte-level BPE (through
//               LoadBpeTokenizer) give the libraries' ids for every corpus string and decode
//               them back the way the libraries do.
//
// Tolerance: max|Δlogit| / max|logit| <= 1e-3 per sequence. Both sides compute in fp32 from the
// same weights (bf16/fp16 files are upcast exactly on both sides), so the only differences are
// summation order (BLAS blocking, online softmax, incremental decode vs one full pass), which
// over 2 layers and up to 2100 positions stays around 1e-6..1e-5 relative; 1e-3 is two orders of
// margin above that and still far below what a real bug gives (a wrong RoPE scaling moves the
// logits by > 1e-2, see "scaling_effect" in golden.json; a wrong weight by O(1)).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/backend/kv_cache.h"
#include "engine/model/config.h"
#include "engine/model/llama_model.h"
#include "engine/model/rope.h"
#include "engine/model/weights.h"
#include "engine/tokenizer/bpe_tokenizer.h"
#include "engine/tokenizer/llama3_pretokenizer.h"
#include "engine/tokenizer/tokenizer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/common/escape.h"

namespace squeeze {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// SQUEEZE_GOLDEN_DIR overrides the location (to check freshly generated files before copying).
const fs::path kGoldenDir = std::getenv("SQUEEZE_GOLDEN_DIR") != nullptr
                                ? fs::path(std::getenv("SQUEEZE_GOLDEN_DIR"))
                                : fs::path(SQUEEZE_SOURCE_DIR) / "tests" / "data" / "golden";
constexpr char kRegenerate[] =
    "regenerate with `python3 tools/make_goldens.py --out tests/data/golden` on a machine with "
    "torch, transformers, tokenizers, sentencepiece and safetensors, and commit the result";
// The model families beyond Llama (tools/make_goldens.py FAMILIES).
constexpr char kRegenerateFamilies[] =
    "make them with `python3 tools/make_goldens.py --out tests/data/golden --only families` on a "
    "machine with torch and transformers, and commit the result";

constexpr double kLogitTolerance = 1e-3;  // max|Δlogit| / max|logit|, see the file comment
// An argmax may differ only where transformers' top-2 gap is below this (relative to the row's
// max |logit|, at least 1), i.e. an exact tie up to rounding, and only to the runner-up.
constexpr double kTieGap = 1e-4;

// The goldens are committed (tests/data/golden/), so a missing directory is a failure too.
#define REQUIRE_GOLDENS()                                                          \
  if (!fs::is_directory(kGoldenDir)) {                                             \
    FAIL() << "no golden files at " << kGoldenDir.string() << "; " << kRegenerate; \
  }

// Parses a JSON file; on failure records a test failure and returns null.
json ReadJson(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    ADD_FAILURE() << "missing golden file " << path.string() << "; " << kRegenerate;
    return nullptr;
  }
  std::stringstream text;
  text << in.rdbuf();
  json j = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    ADD_FAILURE() << "golden file " << path.string() << " is not valid JSON; " << kRegenerate;
    return nullptr;
  }
  return j;
}

using ::squeeze::testing::Escape;

std::string IdsString(const std::vector<int32_t>& ids, size_t max_len = 24) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size() && i < max_len; ++i) {
    if (i > 0) out += ',';
    out += std::to_string(ids[i]);
  }
  return out + (ids.size() > max_len ? ",...]" : "]");
}

// ---- models ---------------------------------------------------------------------------------

// The models tools/make_goldens.py builds; every one must be present and tested.
const std::vector<std::string> kModels = {
    "llama2",     "longchat",   "llama31",      "mistral", "llama32_tied",
    "qwen2_yarn", "qwen3_yarn", "mistral_nemo", "phi3",    "phi3_longrope"};

TEST(HfConformance, ManifestListsEveryTestedPart) {
  REQUIRE_GOLDENS();
  const json manifest = ReadJson(kGoldenDir / "manifest.json");
  ASSERT_TRUE(manifest.is_object());
  ASSERT_TRUE(manifest.contains("failures") && manifest.at("failures").empty())
      << "the generator reported failures: " << manifest.at("failures").dump() << "; "
      << kRegenerate;
  std::vector<std::string> listed;
  for (const json& m : manifest.at("models")) listed.push_back(m.at("name").get<std::string>());
  std::sort(listed.begin(), listed.end());
  std::vector<std::string> expected = kModels;
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(listed, expected) << "golden models and the models this test checks differ";
  EXPECT_TRUE(manifest.at("tokenizers").contains("sentencepiece"));
  EXPECT_TRUE(manifest.at("tokenizers").contains("bpe"));
  std::printf("goldens made with %s\n", manifest.at("versions").dump().c_str());
}

struct RunResult {
  std::vector<int> positions;              // where logits were taken
  std::vector<std::vector<float>> logits;  // [positions.size()][V]
};

// Feeds `tokens` through a fresh sequence in chunks ending at every position of `ends`
// (ascending, last = tokens.size() - 1) and returns the logits at those positions.
RunResult Run(LlamaModel& model, const std::vector<int32_t>& tokens, const std::vector<int>& ends) {
  RunResult result;
  SequenceKV kv(model.kv_shape());
  int begin = 0;
  for (int end : ends) {
    SequenceStep step;
    step.tokens = std::span<const int32_t>(tokens.data() + begin, end + 1 - begin);
    step.kv = &kv;
    step.want_logits = true;
    ForwardOutput out;
    const absl::Status status = model.Forward(std::span<SequenceStep>(&step, 1), &out);
    if (!status.ok()) {
      ADD_FAILURE() << "Forward failed at position " << end << ": " << status;
      return result;
    }
    result.positions.push_back(end);
    result.logits.push_back(std::move(out.logits[0]));
    begin = end + 1;
  }
  return result;
}

int Argmax(const std::vector<float>& v) {
  return static_cast<int>(std::max_element(v.begin(), v.end()) - v.begin());
}

// Chunk ends for the prefill pass: chunks of varying size up to the last `n_last` positions,
// then those one by one (the serving flow: prefill, then decode).
std::vector<int> PrefillSchedule(int T, int n_last) {
  std::vector<int> ends;
  const int prefill_end = T - n_last;  // exclusive
  const int sizes[] = {1, 37, 64, 128, 200};
  for (int next = 0, i = 0; next < prefill_end; ++i) {
    next += std::min(sizes[i % 5], prefill_end - next);
    ends.push_back(next - 1);
  }
  for (int p = prefill_end; p < T; ++p) ends.push_back(p);
  return ends;
}

std::vector<int> EveryPosition(int T) {
  std::vector<int> ends(T);
  for (int p = 0; p < T; ++p) ends[p] = p;
  return ends;
}

// One golden sequence: tokens and what transformers computed for them.
struct GoldenSequence {
  std::string name;
  std::vector<int32_t> tokens;
  std::vector<int> argmax, second;               // [T]
  std::vector<double> max_logit, gap;            // [T]
  std::vector<int> last_positions;               // [n_last]
  std::vector<std::vector<double>> last_logits;  // [n_last][V]
  double scale = 0.0;                            // max |logit| over last_logits

  explicit GoldenSequence(const json& j)
      : name(j.at("name").get<std::string>()),
        tokens(j.at("tokens").get<std::vector<int32_t>>()),
        argmax(j.at("argmax").get<std::vector<int>>()),
        second(j.at("second").get<std::vector<int>>()),
        max_logit(j.at("max_logit").get<std::vector<double>>()),
        gap(j.at("top2_gap").get<std::vector<double>>()),
        last_positions(j.at("last_positions").get<std::vector<int>>()),
        last_logits(j.at("last_logits").get<std::vector<std::vector<double>>>()) {
    for (const auto& row : last_logits) {
      for (double v : row) scale = std::max(scale, std::abs(v));
    }
  }
};

struct Errors {
  double logit = 0.0;      // max|Δlogit| / max|logit| over the stored positions
  double max_logit = 0.0;  // |Δ max logit| / max|logit| over every position run
  int argmax_checked = 0;
  int argmax_ties = 0;
};

// Compares one run with the golden sequence; `label` names the run in failures.
void CompareRun(const GoldenSequence& g, const RunResult& run, int V, const std::string& label,
                Errors* errors) {
  ASSERT_FALSE(run.positions.empty()) << label;
  ASSERT_EQ(run.positions.back(), static_cast<int>(g.tokens.size()) - 1) << label;
  ASSERT_GT(g.scale, 0.0) << label;

  double logit_err = 0.0;
  for (size_t k = 0; k < g.last_positions.size(); ++k) {
    const auto it = std::find(run.positions.begin(), run.positions.end(), g.last_positions[k]);
    ASSERT_NE(it, run.positions.end()) << label << " position " << g.last_positions[k];
    const std::vector<float>& ours = run.logits[it - run.positions.begin()];
    ASSERT_EQ(ours.size(), static_cast<size_t>(V)) << label;
    ASSERT_EQ(g.last_logits[k].size(), static_cast<size_t>(V)) << label;
    for (int v = 0; v < V; ++v) {
      ASSERT_TRUE(std::isfinite(ours[v])) << label << " logit " << v;
      logit_err = std::max(logit_err, std::abs(ours[v] - g.last_logits[k][v]));
    }
  }
  logit_err /= g.scale;
  EXPECT_LE(logit_err, kLogitTolerance) << label << ": max|dlogit|/max|logit|";
  errors->logit = std::max(errors->logit, logit_err);

  double max_err = 0.0;
  int mismatches = 0;
  for (size_t k = 0; k < run.positions.size(); ++k) {
    const int p = run.positions[k];
    const std::vector<float>& ours = run.logits[k];
    const int a = Argmax(ours);
    max_err = std::max(max_err, std::abs(ours[a] - g.max_logit[p]));
    ++errors->argmax_checked;
    if (a == g.argmax[p]) continue;
    if (a == g.second[p] && g.gap[p] < kTieGap * std::max(1.0, std::abs(g.max_logit[p]))) {
      ++errors->argmax_ties;
      continue;
    }
    if (++mismatches <= 5) {
      ADD_FAILURE() << label << " position " << p << ": argmax " << a << " (logit " << ours[a]
                    << "), transformers " << g.argmax[p] << " (logit " << g.max_logit[p]
                    << ", top-2 gap " << g.gap[p] << ")";
    }
  }
  EXPECT_EQ(mismatches, 0) << label << ": argmax mismatches";
  max_err /= g.scale;
  EXPECT_LE(max_err, kLogitTolerance) << label << ": max-logit error / max|logit|";
  errors->max_logit = std::max(errors->max_logit, max_err);
}

void CheckConfig(const std::string& name, const ModelConfig& c, const json& expect,
                 const json& raw_config, const std::string& layout) {
  EXPECT_EQ(c.architecture, expect.at("architecture").get<std::string>()) << name;
  EXPECT_EQ(c.vocab_size, expect.at("vocab_size").get<int>()) << name;
  EXPECT_EQ(c.hidden_size, expect.at("hidden_size").get<int>()) << name;
  EXPECT_EQ(c.intermediate_size, expect.at("intermediate_size").get<int>()) << name;
  EXPECT_EQ(c.num_layers, expect.at("num_layers").get<int>()) << name;
  EXPECT_EQ(c.num_heads, expect.at("num_heads").get<int>()) << name;
  EXPECT_EQ(c.num_kv_heads, expect.at("num_kv_heads").get<int>()) << name;
  EXPECT_EQ(c.head_dim, expect.at("head_dim").get<int>()) << name;
  EXPECT_EQ(c.tie_word_embeddings, expect.at("tie_word_embeddings").get<bool>()) << name;
  EXPECT_NEAR(c.rope_theta, expect.at("rope_theta").get<double>(),
              1e-6 * expect.at("rope_theta").get<double>())
      << name;
  const std::string type = expect.at("rope_type").get<std::string>();
  const RopeType want = type == "linear"     ? RopeType::kLinear
                        : type == "llama3"   ? RopeType::kLlama3
                        : type == "yarn"     ? RopeType::kYarn
                        : type == "longrope" ? RopeType::kLongRope
                                             : RopeType::kDefault;
  EXPECT_EQ(c.rope_scaling.type, want) << name << " rope type " << type;
  if (want != RopeType::kDefault) {
    EXPECT_FLOAT_EQ(c.rope_scaling.factor, expect.at("rope_factor").get<float>()) << name;
  }
  if (want != RopeType::kDefault && want != RopeType::kLinear) {
    EXPECT_EQ(c.rope_scaling.original_max_position_embeddings,
              expect.at("original_max_position_embeddings").get<int>())
        << name;
  }
  if (want == RopeType::kLlama3) {
    EXPECT_FLOAT_EQ(c.rope_scaling.low_freq_factor, expect.at("low_freq_factor").get<float>());
    EXPECT_FLOAT_EQ(c.rope_scaling.high_freq_factor, expect.at("high_freq_factor").get<float>());
  }
  // What transformers used: the inverse frequencies of the longest sequence and the factor it
  // scales cos and sin by (goldens made since the families were added record them).
  if (expect.contains("rope_inv_freq")) {
    const auto want_freq = expect.at("rope_inv_freq").get<std::vector<double>>();
    absl::StatusOr<std::vector<float>> freq =
        ComputeRopeInvFreq(c.head_dim, c.rope_theta, c.rope_scaling);
    ASSERT_TRUE(freq.ok()) << name << ": " << freq.status();
    ASSERT_EQ(freq->size(), want_freq.size()) << name;
    for (size_t i = 0; i < want_freq.size(); ++i) {
      EXPECT_NEAR((*freq)[i], want_freq[i], 1e-5 * want_freq[i]) << name << " inv_freq " << i;
    }
    EXPECT_NEAR(RopeAttentionFactor(c.rope_scaling),
                expect.at("rope_attention_factor").get<double>(), 1e-6)
        << name << " RoPE attention factor";
  }
  // The file really is in the layout it claims, so both layouts are exercised.
  const bool t4 = layout.rfind("transformers4", 0) == 0;
  EXPECT_EQ(raw_config.contains("rope_parameters"), !t4) << name << " layout " << layout;
  if (t4) {
    EXPECT_TRUE(raw_config.contains("rope_theta")) << name;
  }
}

void CheckModel(const std::string& name) {
  const fs::path dir = kGoldenDir / name;
  if (!fs::is_directory(dir)) {
    FAIL() << "golden model directory " << dir.string() << " is missing; " << kRegenerateFamilies;
  }
  const json golden = ReadJson(dir / "golden.json");
  const json raw_config = ReadJson(dir / "config.json");
  ASSERT_TRUE(golden.is_object() && raw_config.is_object()) << name;

  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir.string());
  ASSERT_TRUE(config.ok()) << config.status();
  CheckConfig(name, *config, golden.at("expect"), raw_config,
              golden.at("config_layout").get<std::string>());
  absl::StatusOr<LlamaWeights> weights = LoadLlamaWeights(dir.string(), *config);
  ASSERT_TRUE(weights.ok()) << weights.status();
  absl::StatusOr<std::unique_ptr<LlamaModel>> model =
      LlamaModel::Create(*config, std::move(*weights), std::make_unique<CpuBackend>());
  ASSERT_TRUE(model.ok()) << model.status();
  const int V = config->vocab_size;

  Errors errors;
  for (const json& j : golden.at("sequences")) {
    const GoldenSequence g(j);
    const std::string label = name + "/" + g.name;
    const int T = static_cast<int>(g.tokens.size());
    ASSERT_EQ(g.argmax.size(), g.tokens.size()) << label;
    // Decode path: one token per step, logits (and argmax checks) at every position.
    CompareRun(g, Run(**model, g.tokens, EveryPosition(T)), V, label + " (decode)", &errors);
    // Prefill path: batched causal chunks, then the last positions one by one.
    if (T > 128) {
      CompareRun(g, Run(**model, g.tokens, PrefillSchedule(T, g.last_positions.size())), V,
                 label + " (prefill)", &errors);
    }
  }

  // Greedy: prefill the prompt in one step, then decode one token at a time.
  const json& greedy = golden.at("greedy");
  const auto prompt = greedy.at("prompt").get<std::vector<int32_t>>();
  const auto want = greedy.at("tokens").get<std::vector<int32_t>>();
  std::vector<int32_t> got;
  SequenceKV kv((*model)->kv_shape());
  std::vector<int32_t> next = prompt;
  for (size_t i = 0; i < want.size(); ++i) {
    SequenceStep step;
    step.tokens = next;
    step.kv = &kv;
    ForwardOutput out;
    ASSERT_TRUE((*model)->Forward(std::span<SequenceStep>(&step, 1), &out).ok());
    got.push_back(Argmax(out.logits[0]));
    next = {got.back()};
  }
  EXPECT_EQ(got, want) << name << ": greedy tokens (transformers' smallest top-2 gap on the way "
                       << greedy.at("min_top2_gap") << ")";

  std::printf(
      "[conformance] %-13s max|dlogit|/max|logit| = %.2e (full logits, last positions), "
      "max-logit err = %.2e, argmax agrees at %d positions (%d near-ties), greedy %s\n",
      name.c_str(), errors.logit, errors.max_logit, errors.argmax_checked, errors.argmax_ties,
      got == want ? "identical" : "DIFFERENT");
  ::testing::Test::RecordProperty("max_rel_logit_error", std::to_string(errors.logit));
}

#define MODEL_TEST(test_name, model_name) \
  TEST(HfConformance, test_name) {        \
    REQUIRE_GOLDENS();                    \
    CheckModel(model_name);               \
  }

MODEL_TEST(Llama2, "llama2")
MODEL_TEST(LongChatLinearRope, "longchat")
MODEL_TEST(Llama31Llama3RopeGqa, "llama31")
MODEL_TEST(Mistral, "mistral")
MODEL_TEST(Llama32TiedEmbeddings, "llama32_tied")
MODEL_TEST(Qwen2Yarn, "qwen2_yarn")
MODEL_TEST(Qwen3Yarn, "qwen3_yarn")
MODEL_TEST(MistralNemo, "mistral_nemo")
MODEL_TEST(Phi3, "phi3")
MODEL_TEST(Phi3LongRope, "phi3_longrope")

// ---- tokenizers -----------------------------------------------------------------------------

std::vector<std::string> Corpus() {
  const json corpus = ReadJson(kGoldenDir / "tokenizers" / "corpus.json");
  if (!corpus.is_object()) return {};
  return corpus.at("strings").get<std::vector<std::string>>();
}

// Encodes every corpus string and compares with the library's ids and decode.
void CheckTokenizerCases(const Tokenizer& tokenizer, const std::string& what,
                         const std::vector<std::string>& corpus, const json& cases) {
  ASSERT_TRUE(cases.is_object()) << what;
  ASSERT_GE(corpus.size(), 2000u);
  ASSERT_EQ(cases.at("ids").size(), corpus.size()) << what;
  ASSERT_EQ(cases.at("decoded").size(), corpus.size()) << what;
  int id_mismatches = 0, decode_mismatches = 0, round_trips = 0;
  for (size_t i = 0; i < corpus.size(); ++i) {
    const auto want = cases.at("ids")[i].get<std::vector<int32_t>>();
    const json& decoded = cases.at("decoded")[i];
    const std::string want_text = decoded.is_null() ? corpus[i] : decoded.get<std::string>();
    absl::StatusOr<std::vector<int32_t>> ids = tokenizer.Encode(corpus[i]);
    ASSERT_TRUE(ids.ok()) << what << " " << Escape(corpus[i]) << ": " << ids.status();
    if (*ids != want && ++id_mismatches <= 10) {
      ADD_FAILURE() << what << " case " << i << " " << Escape(corpus[i]) << ": ids "
                    << IdsString(*ids) << ", library " << IdsString(want);
    }
    absl::StatusOr<std::string> text = tokenizer.Decode(want);
    ASSERT_TRUE(text.ok()) << what << " case " << i << ": " << text.status();
    if (*text != want_text && ++decode_mismatches <= 10) {
      ADD_FAILURE() << what << " case " << i << " decode of " << IdsString(want) << ": "
                    << Escape(*text) << ", library " << Escape(want_text);
    }
    round_trips += decoded.is_null() && *text == corpus[i];
  }
  EXPECT_EQ(id_mismatches, 0) << what << ": strings whose ids differ from the library's";
  EXPECT_EQ(decode_mismatches, 0) << what << ": decodes that differ from the library's";
  std::printf(
      "[conformance] %-10s %zu strings: ids identical for %zu, decode(encode(x)) == x "
      "for %d (as the library)\n",
      what.c_str(), corpus.size(), corpus.size() - id_mismatches, round_trips);
}

// Scoring the input (SequenceStep::score_targets, behind GenerateRequest.prompt_logprobs): every
// input row scores the token after it, across prefill chunks, with the log-softmax of
// transformers' logits at the stored positions and its argmax as the best alternative.
void CheckPromptScores(const std::string& name) {
  const fs::path dir = kGoldenDir / name;
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir.string());
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<LlamaWeights> weights = LoadLlamaWeights(dir.string(), *config);
  ASSERT_TRUE(weights.ok()) << weights.status();
  absl::StatusOr<std::unique_ptr<LlamaModel>> model =
      LlamaModel::Create(*config, std::move(*weights), std::make_unique<CpuBackend>());
  ASSERT_TRUE(model.ok()) << model.status();
  const json golden = ReadJson(dir / "golden.json");
  for (const json& j : golden.at("sequences")) {
    const GoldenSequence g(j);
    const int T = static_cast<int>(g.tokens.size());
    if (T < 3 || T > 1000) continue;  // the long sequence's positions add nothing here
    SCOPED_TRACE(name + " " + g.name);
    SequenceKV kv((*model)->kv_shape());
    std::vector<SampleInfo> scores;
    // Two chunks: the first's last row scores the second's first token.
    const int split = T / 2;
    for (const auto& [begin, end] : {std::pair{0, split}, std::pair{split, T}}) {
      SequenceStep step;
      step.tokens = std::span<const int32_t>(g.tokens).subspan(begin, end - begin);
      step.kv = &kv;
      step.want_logits = end == T;
      step.score_targets = std::span<const int32_t>(g.tokens).subspan(
          begin + 1, end == T ? end - begin - 1 : end - begin);
      step.score_top = 3;
      step.scores = &scores;
      ForwardOutput out;
      ASSERT_TRUE((*model)->Forward(std::span<SequenceStep>(&step, 1), &out).ok());
    }
    ASSERT_EQ(scores.size(), static_cast<size_t>(T - 1));
    int compared = 0;
    for (size_t k = 0; k < g.last_positions.size(); ++k) {
      const int p = g.last_positions[k];
      if (p >= T - 1) continue;
      const std::vector<double>& logits = g.last_logits[k];
      const double lmax = *std::max_element(logits.begin(), logits.end());
      double sum = 0.0;
      for (double l : logits) sum += std::exp(l - lmax);
      const double want = logits[g.tokens[p + 1]] - lmax - std::log(sum);
      const SampleInfo& got = scores[p];
      ASSERT_TRUE(std::isfinite(got.logprob)) << "position " << p;
      EXPECT_NEAR(got.logprob, want, 2 * kLogitTolerance * g.scale) << "position " << p;
      ASSERT_EQ(got.top.size(), 3u);
      EXPECT_GE(got.top[0].logprob, got.top[1].logprob);
      EXPECT_GE(got.top[0].logprob, got.logprob);
      const bool tie = g.gap[p] < kTieGap * std::max(1.0, std::abs(g.max_logit[p]));
      if (!tie) {
        EXPECT_EQ(got.top[0].token, g.argmax[p]) << "position " << p;
      }
      ++compared;
    }
    EXPECT_GT(compared, 0);
    // Every score is a log-probability.
    for (const SampleInfo& s : scores) EXPECT_LE(s.logprob, 1e-6);
  }
}

TEST(HfConformance, PromptScoresMatchTransformers) {
  REQUIRE_GOLDENS();
  CheckPromptScores("llama31");     // GQA
  CheckPromptScores("qwen2_yarn");  // q/k/v biases, YaRN
}

TEST(HfConformance, SentencePieceMatchesLibrary) {
  REQUIRE_GOLDENS();
  const std::vector<std::string> corpus = Corpus();
  // LoadTokenizer takes a model directory: put sp.model there as tokenizer.model.
  const fs::path dir = fs::path(::testing::TempDir()) / "hf_conformance_sp";
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::error_code ec;
  fs::copy_file(kGoldenDir / "tokenizers" / "sp.model", dir / "tokenizer.model", ec);
  ASSERT_FALSE(ec) << "cannot copy " << (kGoldenDir / "tokenizers" / "sp.model").string() << ": "
                   << ec.message() << "; " << kRegenerate;
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadTokenizer(dir.string());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const json cases = ReadJson(kGoldenDir / "tokenizers" / "sp_cases.json");
  EXPECT_EQ((*tokenizer)->vocab_size(), cases.at("vocab_size").get<int>());
  CheckTokenizerCases(**tokenizer, "sentencepiece", corpus, cases);
  fs::remove_all(dir, ec);
}

void CheckBpe(const std::string& variant) {
  const std::vector<std::string> corpus = Corpus();
  const fs::path path = kGoldenDir / "tokenizers" / variant / "tokenizer.json";
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadBpeTokenizer(path.string());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status() << "; " << kRegenerate;
  const json cases = ReadJson(kGoldenDir / "tokenizers" / (variant + "_cases.json"));
  ASSERT_TRUE(cases.is_object());
  EXPECT_EQ((*tokenizer)->vocab_size(), cases.at("vocab_size").get<int>());
  EXPECT_GE((*tokenizer)->bos_id(), 0);  // <|begin_of_text|>, from the post-processor
  EXPECT_GE((*tokenizer)->eos_id(), 0);  // <|end_of_text|>
  CheckTokenizerCases(**tokenizer, variant, corpus, cases);
}

TEST(HfConformance, ByteLevelBpeMatchesTokenizers) {
  REQUIRE_GOLDENS();
  CheckBpe("bpe");
}

TEST(HfConformance, ByteLevelBpeLegacyMergesMatchTokenizers) {
  REQUIRE_GOLDENS();
  CheckBpe("bpe_legacy");
}

// The Split pre-tokenizer alone, so that a failure above can be told apart from a BPE one.
TEST(HfConformance, Llama3SplitMatchesTokenizers) {
  REQUIRE_GOLDENS();
  const std::vector<std::string> corpus = Corpus();
  const json cases = ReadJson(kGoldenDir / "tokenizers" / "bpe_cases.json");
  ASSERT_TRUE(cases.is_object() && cases.contains("splits"));
  ASSERT_EQ(cases.at("splits").size(), corpus.size());
  int mismatches = 0;
  for (size_t i = 0; i < corpus.size(); ++i) {
    const auto want = cases.at("splits")[i].get<std::vector<std::string>>();
    std::vector<std::string> got;
    for (std::string_view piece : SplitLlama3(corpus[i])) got.emplace_back(piece);
    if (got != want && ++mismatches <= 10) {
      std::string g, w;
      for (const auto& s : got) g += Escape(s, 20) + " ";
      for (const auto& s : want) w += Escape(s, 20) + " ";
      ADD_FAILURE() << "case " << i << " " << Escape(corpus[i]) << ":\n  ours    " << g
                    << "\n  library " << w;
    }
  }
  EXPECT_EQ(mismatches, 0);
}

// A model directory with tokenizer.json loads the BPE tokenizer through LoadTokenizer.
TEST(HfConformance, LoadTokenizerUsesTokenizerJson) {
  REQUIRE_GOLDENS();
  const fs::path dir = kGoldenDir / "tokenizers" / "bpe";
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = LoadTokenizer(dir.string());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  absl::StatusOr<std::unique_ptr<Tokenizer>> direct =
      LoadBpeTokenizer((dir / "tokenizer.json").string());
  ASSERT_TRUE(direct.ok()) << direct.status();
  const std::string text = "Hello<|eot_id|> world, don't 123456 👋🏽";
  EXPECT_EQ(*(*tokenizer)->Encode(text), *(*direct)->Encode(text));
}

}  // namespace
}  // namespace squeeze
