// Every supported family (Qwen2 with YaRN, Qwen3 with q/k norms and biases, Mistral-Nemo's
// explicit head_dim, Phi-3 with fused weights and LongRoPE, Llama with YaRN's mscale terms) on a
// tiny random checkpoint written here in the Hugging Face layout of that family, loaded through
// the normal loader (LoadModelConfig, LoadLlamaWeights, LlamaModel::Create on the CPU backend)
// and compared with tools/reference_forward.py, an independent NumPy forward written from the
// transformers model definitions. The transformers goldens (hf_conformance_test) are the
// authority; this test checks the C++ forward without them, on every machine.
//
// Tolerance: max|Δlogit| / max|logit| <= 1e-4 (fp32 here, float64 there; the RoPE tables are
// fp32 on both sides as in transformers), far below what a missing bias, norm or scaling gives.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/backend/kv_cache.h"
#include "engine/model/config.h"
#include "engine/model/llama_model.h"
#include "engine/model/rope.h"
#include "engine/model/weights.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace squeeze {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ::testing::HasSubstr;

constexpr double kTolerance = 1e-4;

// A tensor of the checkpoint written here (engine/model/safetensors.h cannot be included next to
// the backend: both declare a DType; the writer below is also independent of the loader).
struct Tensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> values;
};

uint16_t ToBf16(float x) {  // round to nearest even, as torch
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  bits += 0x7FFF + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

// safetensors: u64 header length, JSON header, then the data (F32 or BF16, little-endian).
void WriteSafetensorsFile(const fs::path& path, const std::vector<Tensor>& tensors, bool bf16) {
  json header = json::object();
  std::string data;
  for (const Tensor& t : tensors) {
    const size_t begin = data.size();
    for (float v : t.values) {
      if (bf16) {
        const uint16_t b = ToBf16(v);
        data.append(reinterpret_cast<const char*>(&b), 2);
      } else {
        data.append(reinterpret_cast<const char*>(&v), 4);
      }
    }
    header[t.name] = {{"dtype", bf16 ? "BF16" : "F32"},
                      {"shape", t.shape},
                      {"data_offsets", {begin, data.size()}}};
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t n = text.size();
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << text << data;
}

// The interpreter with Debian's python3-numpy (scripts/install_deps.sh); SQUEEZE_PYTHON
// overrides it.
std::string Python() {
  const char* env = std::getenv("SQUEEZE_PYTHON");
  return env != nullptr ? env : "/usr/bin/python3";
}

// How a family lays out its checkpoint (what the test writes, independently of the loader).
struct Family {
  std::string name;
  json config;
  bool fused = false;     // Phi-3: qkv_proj, gate_up_proj
  bool qkv_bias = false;  // Qwen2, attention_bias
  bool o_bias = false;    // attention_bias
  bool qk_norm = false;   // Qwen3
  bool bf16 = false;      // weights stored as bf16 (else f32)
  int num_tokens = 40;
};

void PrintTo(const Family& f, std::ostream* os) { *os << f.name; }

json BaseConfig(const std::string& arch, int hidden, int heads, int kv_heads, int max_pos) {
  return {{"architectures", {arch}},
          {"vocab_size", 96},
          {"hidden_size", hidden},
          {"intermediate_size", 80},
          {"num_hidden_layers", 2},
          {"num_attention_heads", heads},
          {"num_key_value_heads", kv_heads},
          {"max_position_embeddings", max_pos},
          {"rms_norm_eps", 1e-6},
          {"hidden_act", "silu"},
          {"tie_word_embeddings", false},
          {"bos_token_id", 1},
          {"eos_token_id", 2}};
}

std::vector<float> LongRopeFactors(int n, float lo, float hi) {
  std::vector<float> f(n);
  for (int i = 0; i < n; ++i) f[i] = lo + (hi - lo) * i / (n - 1);
  return f;
}

std::vector<Family> Families() {
  std::vector<Family> out;
  {  // Qwen2.5 with YaRN x4 as its README switches it on (transformers-4 "type" key), GQA 3:1.
    Family f{.name = "qwen2_yarn", .qkv_bias = true, .bf16 = true};
    f.config = BaseConfig("Qwen2ForCausalLM", 96, 6, 2, 64);
    f.config["model_type"] = "qwen2";
    f.config["rope_theta"] = 1000000.0;
    f.config["rope_scaling"] = {
        {"type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 16}};
    f.config["tie_word_embeddings"] = true;
    f.config["use_sliding_window"] = false;
    f.config["sliding_window"] = 64;
    out.push_back(f);
  }
  {  // Qwen3: head_dim 24 != 64 / 4, per-head q/k norms, attention_bias, YaRN in rope_parameters.
    Family f{.name = "qwen3_yarn_bias", .qkv_bias = true, .o_bias = true, .qk_norm = true};
    f.config = BaseConfig("Qwen3ForCausalLM", 64, 4, 2, 128);
    f.config["head_dim"] = 24;
    f.config["attention_bias"] = true;
    f.config["rope_parameters"] = {{"rope_type", "yarn"},
                                   {"rope_theta", 1000000.0},
                                   {"factor", 2.0},
                                   {"original_max_position_embeddings", 32},
                                   {"beta_fast", 16.0}};
    out.push_back(f);
  }
  {  // Mistral-Nemo: explicit head_dim 32 with hidden 64 and 5 heads (GQA 5:1).
    Family f{.name = "mistral_nemo"};
    f.config = BaseConfig("MistralForCausalLM", 64, 5, 1, 128);
    f.config["head_dim"] = 32;
    f.config["rope_theta"] = 1000000.0;
    f.config["sliding_window"] = nullptr;
    out.push_back(f);
  }
  {  // Phi-3.5: served beyond its pre-training length (128 > 16), so LongRoPE's long factors.
    Family f{.name = "phi3_longrope_long", .fused = true};
    f.config = BaseConfig("Phi3ForCausalLM", 64, 4, 2, 128);
    f.config["original_max_position_embeddings"] = 16;
    f.config["rope_scaling"] = {{"type", "longrope"},
                                {"short_factor", LongRopeFactors(8, 1.0f, 1.2f)},
                                {"long_factor", LongRopeFactors(8, 1.0f, 9.0f)}};
    f.config["sliding_window"] = nullptr;
    out.push_back(f);
  }
  {  // Phi-3 within its pre-training length: short factors, attention factor 1. MHA.
    Family f{.name = "phi3_longrope_short", .fused = true, .num_tokens = 30};
    f.config = BaseConfig("Phi3ForCausalLM", 64, 4, 4, 32);
    f.config["rope_parameters"] = {{"rope_type", "longrope"},
                                   {"rope_theta", 10000.0},
                                   {"original_max_position_embeddings", 32},
                                   {"short_factor", LongRopeFactors(8, 1.0f, 1.5f)},
                                   {"long_factor", LongRopeFactors(8, 2.0f, 9.0f)}};
    out.push_back(f);
  }
  {  // Llama with YaRN's DeepSeek-style terms: mscale ratio, no truncation.
    Family f{.name = "llama_yarn_mscale"};
    f.config = BaseConfig("LlamaForCausalLM", 64, 4, 4, 256);
    f.config["rope_theta"] = 10000.0;
    f.config["rope_scaling"] = {
        {"rope_type", "yarn"}, {"factor", 8.0},         {"original_max_position_embeddings", 32},
        {"mscale", 1.0},       {"mscale_all_dim", 0.5}, {"beta_fast", 8.0},
        {"truncate", false}};
    out.push_back(f);
  }
  return out;
}

// The family's checkpoint, random: matrices N(0, 1/in) (q/k x1.5 for peaked attention), norm
// gains 1 + N(0, 0.1^2), biases N(0, 0.5^2).
std::vector<Tensor> Checkpoint(const Family& f, uint32_t seed) {
  const json& c = f.config;
  const int64_t D = c["hidden_size"], I = c["intermediate_size"], V = c["vocab_size"];
  const int64_t Hq = c["num_attention_heads"], Hkv = c["num_key_value_heads"];
  const int64_t d = c.contains("head_dim") ? c["head_dim"].get<int64_t>() : D / Hq;
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<Tensor> out;
  auto add = [&](const std::string& name, std::vector<int64_t> shape, float scale, float mean) {
    size_t n = 1;
    for (int64_t s : shape) n *= static_cast<size_t>(s);
    std::vector<float> v(n);
    for (float& x : v) x = mean + scale * normal(gen);
    out.push_back({name, std::move(shape), std::move(v)});
  };
  auto matrix = [&](const std::string& name, int64_t rows, int64_t cols, float gain = 1.0f) {
    add(name, {rows, cols}, gain / std::sqrt(static_cast<float>(cols)), 0.0f);
  };
  add("model.embed_tokens.weight", {V, D}, 1.0f, 0.0f);
  for (int i = 0; i < c["num_hidden_layers"].get<int>(); ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    add(p + "input_layernorm.weight", {D}, 0.1f, 1.0f);
    if (f.fused) {
      matrix(p + "self_attn.qkv_proj.weight", (Hq + 2 * Hkv) * d, D, 1.5f);
    } else {
      matrix(p + "self_attn.q_proj.weight", Hq * d, D, 1.5f);
      matrix(p + "self_attn.k_proj.weight", Hkv * d, D, 1.5f);
      matrix(p + "self_attn.v_proj.weight", Hkv * d, D);
    }
    if (f.qkv_bias) {
      add(p + "self_attn.q_proj.bias", {Hq * d}, 0.5f, 0.0f);
      add(p + "self_attn.k_proj.bias", {Hkv * d}, 0.5f, 0.0f);
      add(p + "self_attn.v_proj.bias", {Hkv * d}, 0.5f, 0.0f);
    }
    if (f.qk_norm) {
      add(p + "self_attn.q_norm.weight", {d}, 0.1f, 1.0f);
      add(p + "self_attn.k_norm.weight", {d}, 0.1f, 1.0f);
    }
    matrix(p + "self_attn.o_proj.weight", D, Hq * d);
    if (f.o_bias) add(p + "self_attn.o_proj.bias", {D}, 0.5f, 0.0f);
    add(p + "post_attention_layernorm.weight", {D}, 0.1f, 1.0f);
    if (f.fused) {
      matrix(p + "mlp.gate_up_proj.weight", 2 * I, D);
    } else {
      matrix(p + "mlp.gate_proj.weight", I, D);
      matrix(p + "mlp.up_proj.weight", I, D);
    }
    matrix(p + "mlp.down_proj.weight", D, I);
  }
  add("model.norm.weight", {D}, 0.1f, 1.0f);
  if (!c["tie_word_embeddings"].get<bool>()) matrix("lm_head.weight", V, D);
  return out;
}

fs::path WriteModel(const Family& f) {
  const fs::path dir = fs::path(::testing::TempDir()) / ("model_families_" + f.name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << f.config.dump(2);
  WriteSafetensorsFile(dir / "model.safetensors", Checkpoint(f, 7), f.bf16);
  return dir;
}

// Logits at `positions` from tools/reference_forward.py; empty (with a failure) when it fails.
std::vector<std::vector<double>> ReferenceLogits(const fs::path& dir,
                                                 const std::vector<int32_t>& tokens,
                                                 const std::vector<int>& positions) {
  const std::string command =
      absl::StrCat(Python(), " ", SQUEEZE_SOURCE_DIR, "/tools/reference_forward.py --model '",
                   dir.string(), "' --tokens ", absl::StrJoin(tokens, ","), " --positions ",
                   absl::StrJoin(positions, ","), " 2>&1");
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) {
    ADD_FAILURE() << "cannot run " << command;
    return {};
  }
  std::string output;
  char buf[65536];
  for (size_t n; (n = fread(buf, 1, sizeof(buf), pipe)) > 0;) output.append(buf, n);
  const int rc = pclose(pipe);
  json j = json::parse(output, nullptr, /*allow_exceptions=*/false);
  if (rc != 0 || j.is_discarded()) {
    ADD_FAILURE() << "the NumPy reference failed (exit " << rc << "); it needs Debian's "
                  << "python3-numpy (scripts/install_deps.sh), or SQUEEZE_PYTHON naming a Python "
                  << "with NumPy:\n"
                  << command << "\n"
                  << output.substr(0, 2000);
    return {};
  }
  return j.at("logits").get<std::vector<std::vector<double>>>();
}

double RelError(const std::vector<float>& ours, const std::vector<double>& ref) {
  EXPECT_EQ(ours.size(), ref.size());
  double err = 0.0, scale = 0.0;
  for (size_t i = 0; i < std::min(ours.size(), ref.size()); ++i) {
    EXPECT_TRUE(std::isfinite(ours[i]));
    err = std::max(err, std::abs(ours[i] - ref[i]));
    scale = std::max(scale, std::abs(ref[i]));
  }
  return err / std::max(scale, 1e-30);
}

// Writes the family's checkpoint and loads it through the normal loader.
class ModelFamiliesTest : public ::testing::TestWithParam<Family> {
 protected:
  void SetUp() override {
    dir_ = WriteModel(GetParam());
    absl::StatusOr<ModelConfig> config = LoadModelConfig(dir_.string());
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
    absl::StatusOr<LlamaWeights> weights = LoadLlamaWeights(dir_.string(), config_);
    ASSERT_TRUE(weights.ok()) << weights.status();
    weights_ = std::move(*weights);
  }
  fs::path dir_;
  ModelConfig config_;
  LlamaWeights weights_;
};

TEST_P(ModelFamiliesTest, MatchesNumpyReference) {
  const Family& f = GetParam();
  absl::StatusOr<std::unique_ptr<LlamaModel>> model =
      LlamaModel::Create(config_, weights_, std::make_unique<CpuBackend>());
  ASSERT_TRUE(model.ok()) << model.status();

  std::mt19937 gen(11);
  std::vector<int32_t> tokens(f.num_tokens);
  for (int32_t& t : tokens) t = static_cast<int32_t>(gen() % config_.vocab_size);
  const std::vector<int> positions = {0, f.num_tokens / 2, f.num_tokens - 2, f.num_tokens - 1};
  const std::vector<std::vector<double>> ref = ReferenceLogits(dir_, tokens, positions);
  ASSERT_EQ(ref.size(), positions.size());

  // Decode: one token per step, logits at every position of `positions`.
  SequenceKV kv((*model)->kv_shape());
  double decode_err = 0.0;
  for (int p = 0; p < f.num_tokens; ++p) {
    SequenceStep step;
    step.tokens = std::span<const int32_t>(&tokens[p], 1);
    step.kv = &kv;
    ForwardOutput out;
    ASSERT_TRUE((*model)->Forward(std::span<SequenceStep>(&step, 1), &out).ok());
    const auto it = std::find(positions.begin(), positions.end(), p);
    if (it == positions.end()) continue;
    const double err = RelError(out.logits[0], ref[it - positions.begin()]);
    EXPECT_LE(err, kTolerance) << f.name << " decode, position " << p;
    decode_err = std::max(decode_err, err);
  }
  // Prefill: all tokens in one step.
  SequenceKV kv2((*model)->kv_shape());
  SequenceStep step;
  step.tokens = tokens;
  step.kv = &kv2;
  ForwardOutput out;
  ASSERT_TRUE((*model)->Forward(std::span<SequenceStep>(&step, 1), &out).ok());
  const double prefill_err = RelError(out.logits[0], ref.back());
  EXPECT_LE(prefill_err, kTolerance) << f.name << " prefill";
  std::printf("[families] %-20s max|dlogit|/max|logit| vs NumPy: decode %.2e, prefill %.2e\n",
              f.name.c_str(), decode_err, prefill_err);
}

// The family-specific parts matter: the same checkpoint with one of them dropped (biases zeroed,
// q/k norms at 1, RoPE scaling removed) gives logits far outside the tolerance, so the
// comparison above could not pass with them ignored.
TEST_P(ModelFamiliesTest, FamilyFeaturesChangeTheLogits) {
  const Family& f = GetParam();
  std::mt19937 gen(5);
  std::vector<int32_t> tokens(f.num_tokens);
  for (int32_t& t : tokens) t = static_cast<int32_t>(gen() % config_.vocab_size);
  auto logits = [&](const ModelConfig& c, LlamaWeights w) {
    auto model = LlamaModel::Create(c, std::move(w), std::make_unique<CpuBackend>());
    EXPECT_TRUE(model.ok()) << model.status();
    SequenceKV kv((*model)->kv_shape());
    SequenceStep step;
    step.tokens = tokens;
    step.kv = &kv;
    ForwardOutput out;
    EXPECT_TRUE((*model)->Forward(std::span<SequenceStep>(&step, 1), &out).ok());
    return out.logits[0];
  };
  const std::vector<float> full = logits(config_, weights_);
  const std::vector<double> full_d(full.begin(), full.end());
  int variants = 0;
  if (config_.qkv_bias) {
    LlamaWeights w = weights_;
    for (LayerWeights& l : w.layers) {
      std::fill(l.bq.begin(), l.bq.end(), 0.0f);
      std::fill(l.bk.begin(), l.bk.end(), 0.0f);
    }
    EXPECT_GT(RelError(logits(config_, w), full_d), 1e-2) << "q/k biases";
    ++variants;
  }
  if (config_.qk_norm) {
    LlamaWeights w = weights_;
    for (LayerWeights& l : w.layers) std::fill(l.q_norm.begin(), l.q_norm.end(), 1.0f);
    EXPECT_GT(RelError(logits(config_, w), full_d), 1e-2) << "q norm";
    ++variants;
  }
  if (config_.rope_scaling.type != RopeType::kDefault) {
    ModelConfig plain = config_;
    plain.rope_scaling = RopeScaling{};
    EXPECT_GT(RelError(logits(plain, weights_), full_d), 1e-2) << "RoPE scaling";
    ++variants;
  }
  if (f.name == "mistral_nemo") {
    EXPECT_NE(config_.head_dim * config_.num_heads, config_.hidden_size);
    ++variants;
  }
  EXPECT_GT(variants, 0);
}

INSTANTIATE_TEST_SUITE_P(Families, ModelFamiliesTest, ::testing::ValuesIn(Families()),
                         [](const ::testing::TestParamInfo<Family>& info) {
                           return info.param.name;
                         });

// The RoPE attention factors transformers applies (values worked out by hand).
TEST(RopeAttentionFactorTest, MatchesTransformersFormulas) {
  RopeScaling yarn;
  yarn.type = RopeType::kYarn;
  yarn.factor = 4.0f;
  EXPECT_NEAR(RopeAttentionFactor(yarn), 0.1 * std::log(4.0) + 1.0, 1e-6);
  yarn.mscale = 1.0f;
  yarn.mscale_all_dim = 0.5f;
  EXPECT_NEAR(RopeAttentionFactor(yarn), (0.1 * std::log(4.0) + 1) / (0.05 * std::log(4.0) + 1),
              1e-6);
  yarn.attention_factor = 0.7f;
  EXPECT_FLOAT_EQ(RopeAttentionFactor(yarn), 0.7f);

  RopeScaling longrope;
  longrope.type = RopeType::kLongRope;
  longrope.factor = 32.0f;  // 131072 / 4096, Phi-3.5-mini
  longrope.original_max_position_embeddings = 4096;
  EXPECT_NEAR(RopeAttentionFactor(longrope), std::sqrt(1 + std::log(32.0) / std::log(4096.0)),
              1e-6);
  longrope.factor = 1.0f;
  EXPECT_FLOAT_EQ(RopeAttentionFactor(longrope), 1.0f);
  EXPECT_FLOAT_EQ(RopeAttentionFactor(RopeScaling{}), 1.0f);
}

// A checkpoint with tensors the config does not account for is refused, naming them.
TEST(ModelFamiliesLoadTest, UnusedTensorsAreRefused) {
  Family f = Families()[2];  // Mistral-Nemo, no biases
  const fs::path dir = fs::path(::testing::TempDir()) / "model_families_unused";
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << f.config.dump(2);
  std::vector<Tensor> t = Checkpoint(f, 3);
  t.push_back({"model.layers.0.self_attn.q_proj.bias", {160}, std::vector<float>(160)});
  t.push_back({"model.layers.0.self_attn.rotary_emb.inv_freq", {16}, std::vector<float>(16)});
  WriteSafetensorsFile(dir / "model.safetensors", t, /*bf16=*/false);
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir.string());
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<LlamaWeights> w = LoadLlamaWeights(dir.string(), *config);
  ASSERT_FALSE(w.ok());
  EXPECT_THAT(std::string(w.status().message()),
              HasSubstr("1 tensor(s) a MistralForCausalLM with this config.json does not use (e.g. "
                        "'model.layers.0.self_attn.q_proj.bias')"));
}

// Phi-3's fused projections are split in q, k, v and gate, up order.
TEST(ModelFamiliesLoadTest, Phi3FusedWeightsAreSplitInOrder) {
  const Family f = Families()[3];
  const fs::path dir = WriteModel(f);
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir.string());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->fused_qkv);
  absl::StatusOr<LlamaWeights> w = LoadLlamaWeights(dir.string(), *config);
  ASSERT_TRUE(w.ok()) << w.status();
  const std::vector<Tensor> t = Checkpoint(f, 7);
  auto find = [&](const std::string& name) -> const std::vector<float>& {
    for (const Tensor& x : t) {
      if (x.name == name) return x.values;
    }
    ADD_FAILURE() << name;
    return t[0].values;
  };
  const std::vector<float>& qkv = find("model.layers.1.self_attn.qkv_proj.weight");
  const std::vector<float>& gate_up = find("model.layers.1.mlp.gate_up_proj.weight");
  const LayerWeights& l = w->layers[1];
  const size_t D = 64, q = 4 * 16 * D, kv = 2 * 16 * D, I = 80 * D;
  EXPECT_EQ(l.wq, std::vector<float>(qkv.begin(), qkv.begin() + q));
  EXPECT_EQ(l.wk, std::vector<float>(qkv.begin() + q, qkv.begin() + q + kv));
  EXPECT_EQ(l.wv, std::vector<float>(qkv.begin() + q + kv, qkv.end()));
  EXPECT_EQ(l.w_gate, std::vector<float>(gate_up.begin(), gate_up.begin() + I));
  EXPECT_EQ(l.w_up, std::vector<float>(gate_up.begin() + I, gate_up.end()));
}

}  // namespace
}  // namespace squeeze
