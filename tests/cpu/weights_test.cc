#include "engine/model/weights.h"

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/model/config.h"
#include "engine/model/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace squeeze {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

// V=11, D=8, I=12, L=2, Hq=4, Hkv=2, d=2: every dimension distinct enough to catch transposes.
ModelConfig TinyConfig() {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = 11;
  c.hidden_size = 8;
  c.intermediate_size = 12;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 2;
  c.max_position_embeddings = 64;
  return c;
}

// The full HF tensor set for `c`, filled with distinct random values.
std::vector<TensorToWrite> TinyTensors(const ModelConfig& c, DType dtype, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<TensorToWrite> out;
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    size_t n = 1;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    std::vector<float> v(n);
    for (float& x : v) x = dist(gen);
    out.push_back({name, dtype, std::move(shape), std::move(v)});
  };
  const int64_t D = c.hidden_size, I = c.intermediate_size, V = c.vocab_size;
  const int64_t q = int64_t{c.num_heads} * c.head_dim, kv = int64_t{c.num_kv_heads} * c.head_dim;
  add("model.embed_tokens.weight", {V, D});
  for (int i = 0; i < c.num_layers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    add(p + "input_layernorm.weight", {D});
    add(p + "self_attn.q_proj.weight", {q, D});
    add(p + "self_attn.k_proj.weight", {kv, D});
    add(p + "self_attn.v_proj.weight", {kv, D});
    add(p + "self_attn.o_proj.weight", {D, q});
    add(p + "post_attention_layernorm.weight", {D});
    add(p + "mlp.gate_proj.weight", {I, D});
    add(p + "mlp.up_proj.weight", {I, D});
    add(p + "mlp.down_proj.weight", {D, I});
  }
  add("model.norm.weight", {D});
  add("lm_head.weight", {V, D});
  return out;
}

const std::vector<float>& ValuesOf(const std::vector<TensorToWrite>& tensors,
                                   const std::string& name) {
  for (const TensorToWrite& t : tensors) {
    if (t.name == name) return t.values;
  }
  ADD_FAILURE() << "no tensor " << name;
  static const std::vector<float> kEmpty;
  return kEmpty;
}

fs::path TempDir(const std::string& name) {
  fs::path dir = fs::path(testing::TempDir()) / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void ExpectLoadError(const fs::path& dir, const ModelConfig& c, const std::string& needle) {
  absl::StatusOr<LlamaWeights> w = LoadLlamaWeights(dir.string(), c);
  ASSERT_FALSE(w.ok()) << "loaded; wanted error containing: " << needle;
  EXPECT_THAT(std::string(w.status().message()), HasSubstr(needle));
}

void ExpectAllEqual(const LlamaWeights& w, const std::vector<TensorToWrite>& t,
                    const ModelConfig& c) {
  EXPECT_EQ(w.embed, ValuesOf(t, "model.embed_tokens.weight"));
  ASSERT_EQ(w.layers.size(), static_cast<size_t>(c.num_layers));
  for (int i = 0; i < c.num_layers; ++i) {
    SCOPED_TRACE(i);
    const std::string p = absl::StrCat("model.layers.", i, ".");
    const LayerWeights& l = w.layers[i];
    EXPECT_EQ(l.attn_norm, ValuesOf(t, p + "input_layernorm.weight"));
    EXPECT_EQ(l.wq, ValuesOf(t, p + "self_attn.q_proj.weight"));
    EXPECT_EQ(l.wk, ValuesOf(t, p + "self_attn.k_proj.weight"));
    EXPECT_EQ(l.wv, ValuesOf(t, p + "self_attn.v_proj.weight"));
    EXPECT_EQ(l.wo, ValuesOf(t, p + "self_attn.o_proj.weight"));
    EXPECT_EQ(l.mlp_norm, ValuesOf(t, p + "post_attention_layernorm.weight"));
    EXPECT_EQ(l.w_gate, ValuesOf(t, p + "mlp.gate_proj.weight"));
    EXPECT_EQ(l.w_up, ValuesOf(t, p + "mlp.up_proj.weight"));
    EXPECT_EQ(l.w_down, ValuesOf(t, p + "mlp.down_proj.weight"));
  }
  EXPECT_EQ(w.final_norm, ValuesOf(t, "model.norm.weight"));
}

TEST(WeightsTest, LoadsAllTensorsExactly) {
  const ModelConfig c = TinyConfig();
  const std::vector<TensorToWrite> t = TinyTensors(c, DType::kF32, 1);
  const fs::path dir = TempDir("weights_ok");
  ASSERT_TRUE(WriteSafetensors((dir / "model.safetensors").string(), t).ok());

  absl::StatusOr<LlamaWeights> w = LoadLlamaWeights(dir.string(), c);
  ASSERT_TRUE(w.ok()) << w.status();
  ExpectAllEqual(*w, t, c);
  EXPECT_EQ(w->lm_head, ValuesOf(t, "lm_head.weight"));
  EXPECT_NE(w->lm_head, w->embed);
}

TEST(WeightsTest, LoadsShardsAndBf16) {
  const ModelConfig c = TinyConfig();
  std::vector<TensorToWrite> t = TinyTensors(c, DType::kBF16, 2);
  // Values the file can hold exactly, so equality is exact after bf16 storage.
  for (TensorToWrite& x : t) {
    for (float& v : x.values) v = BFloat16ToFloat32(Float32ToBFloat16(v));
  }
  const fs::path dir = TempDir("weights_shards");
  const size_t half = t.size() / 2;
  ASSERT_TRUE(WriteSafetensors((dir / "model-00002-of-00002.safetensors").string(),
                               {t.begin() + half, t.end()})
                  .ok());
  ASSERT_TRUE(WriteSafetensors((dir / "model-00001-of-00002.safetensors").string(),
                               {t.begin(), t.begin() + half})
                  .ok());
  absl::StatusOr<LlamaWeights> w = LoadLlamaWeights(dir.string(), c);
  ASSERT_TRUE(w.ok()) << w.status();
  ExpectAllEqual(*w, t, c);
  EXPECT_EQ(w->lm_head, ValuesOf(t, "lm_head.weight"));
}

TEST(WeightsTest, TiedEmbeddingsCopyEmbed) {
  ModelConfig c = TinyConfig();
  c.tie_word_embeddings = true;
  std::vector<TensorToWrite> t = TinyTensors(c, DType::kF32, 3);
  t.pop_back();  // no lm_head.weight, as in tied checkpoints
  const fs::path dir = TempDir("weights_tied");
  ASSERT_TRUE(WriteSafetensors((dir / "model.safetensors").string(), t).ok());
  absl::StatusOr<LlamaWeights> w = LoadLlamaWeights(dir.string(), c);
  ASSERT_TRUE(w.ok()) << w.status();
  ExpectAllEqual(*w, t, c);
  EXPECT_EQ(w->lm_head, w->embed);

  // The same directory without tying is an error naming lm_head.
  c.tie_word_embeddings = false;
  ExpectLoadError(dir, c, "missing tensor 'lm_head.weight'");
}

TEST(WeightsTest, MissingTensor) {
  const ModelConfig c = TinyConfig();
  std::vector<TensorToWrite> t = TinyTensors(c, DType::kF32, 4);
  std::erase_if(
      t, [](const TensorToWrite& x) { return x.name == "model.layers.1.mlp.up_proj.weight"; });
  const fs::path dir = TempDir("weights_missing");
  ASSERT_TRUE(WriteSafetensors((dir / "model.safetensors").string(), t).ok());
  ExpectLoadError(dir, c, "missing tensor 'model.layers.1.mlp.up_proj.weight'");
}

TEST(WeightsTest, WrongShape) {
  const ModelConfig c = TinyConfig();
  std::vector<TensorToWrite> t = TinyTensors(c, DType::kF32, 5);
  for (TensorToWrite& x : t) {
    if (x.name == "model.layers.0.self_attn.k_proj.weight") x.shape = {8, 4};  // transposed
  }
  const fs::path dir = TempDir("weights_shape");
  ASSERT_TRUE(WriteSafetensors((dir / "model.safetensors").string(), t).ok());
  ExpectLoadError(dir, c,
                  "tensor 'model.layers.0.self_attn.k_proj.weight' has shape [8, 4], expected "
                  "[4, 8]");

  // A config that disagrees with the checkpoint is caught at the first tensor.
  ModelConfig bigger = c;
  bigger.vocab_size = 12;
  ExpectLoadError(dir, bigger, "tensor 'model.embed_tokens.weight' has shape [11, 8]");
}

TEST(WeightsTest, UnsupportedDtypeNamesTensorAndFile) {
  const ModelConfig c = TinyConfig();
  std::vector<TensorToWrite> t = TinyTensors(c, DType::kF32, 6);
  const fs::path dir = TempDir("weights_dtype");
  ASSERT_TRUE(WriteSafetensors((dir / "model.safetensors").string(), t).ok());
  // Rewrite model.norm.weight's dtype in place: I32 has the same width as F32.
  const std::string path = (dir / "model.safetensors").string();
  std::string bytes;
  {
    absl::StatusOr<std::string> s = SerializeSafetensors(t);
    ASSERT_TRUE(s.ok());
    bytes = *s;
  }
  const std::string needle = R"("model.norm.weight":{"dtype":"F32")";
  const size_t pos = bytes.find(needle);
  ASSERT_NE(pos, std::string::npos);
  bytes.replace(pos + needle.size() - 4, 3, "I32");
  ASSERT_TRUE(WriteFileAtomically(path, bytes).ok());
  ExpectLoadError(dir, c, "tensor 'model.norm.weight' has dtype I32");
  ExpectLoadError(dir, c, "model.safetensors");
}

TEST(WeightsTest, DirectoryErrors) {
  const ModelConfig c = TinyConfig();
  absl::StatusOr<LlamaWeights> w = LoadLlamaWeights("/nonexistent/squeeze/model", c);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);

  const fs::path empty = TempDir("weights_empty");
  w = LoadLlamaWeights(empty.string(), c);
  EXPECT_EQ(w.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(w.status().message()), HasSubstr("no *.safetensors files"));

  // The same tensor in two shards is ambiguous.
  const std::vector<TensorToWrite> t = TinyTensors(c, DType::kF32, 7);
  const fs::path dup = TempDir("weights_dup");
  ASSERT_TRUE(WriteSafetensors((dup / "a.safetensors").string(), t).ok());
  ASSERT_TRUE(WriteSafetensors((dup / "b.safetensors").string(), {t[0]}).ok());
  ExpectLoadError(dup, c, "tensor 'model.embed_tokens.weight' appears in both");
}

}  // namespace
}  // namespace squeeze
