// Deterministic random weights in the Hugging Face layout (benchmarks, tests without a model
// directory). Scaled so activations and logits stay O(1) through a few layers.
#include <cmath>
#include <cstdint>
#include <vector>

#include "engine/common/random_normal.h"
#include "engine/model/weights.h"

namespace squeeze {
namespace {

// [rows, cols] with entries N(0, 1/cols): a row-vector of unit-variance inputs maps to
// unit-variance outputs.
std::vector<float> Matrix(NormalSource& rng, int rows, int cols) {
  std::vector<float> m(static_cast<size_t>(rows) * cols);
  const double scale = 1.0 / std::sqrt(static_cast<double>(cols));
  for (float& x : m) x = static_cast<float>(rng.Next() * scale);
  return m;
}

// Norm gains 1 + N(0, 0.05^2).
std::vector<float> NormGain(NormalSource& rng, int dim) {
  std::vector<float> g(dim);
  for (float& x : g) x = static_cast<float>(1.0 + 0.05 * rng.Next());
  return g;
}

// Biases N(0, 0.1^2).
std::vector<float> Bias(NormalSource& rng, int dim) {
  std::vector<float> b(dim);
  for (float& x : b) x = static_cast<float>(0.1 * rng.Next());
  return b;
}

}  // namespace

LlamaWeights RandomLlamaWeights(const ModelConfig& config, uint64_t seed) {
  NormalSource rng(seed);
  const int D = config.hidden_size, I = config.intermediate_size, V = config.vocab_size;
  const int q_dim = config.num_heads * config.head_dim;
  const int kv_dim = config.num_kv_heads * config.head_dim;

  LlamaWeights w;
  w.embed = Matrix(rng, V, D);
  w.layers.resize(config.num_layers);
  for (LayerWeights& layer : w.layers) {
    layer.attn_norm = NormGain(rng, D);
    layer.wq = Matrix(rng, q_dim, D);
    layer.wk = Matrix(rng, kv_dim, D);
    layer.wv = Matrix(rng, kv_dim, D);
    layer.wo = Matrix(rng, D, q_dim);
    if (config.qkv_bias) {
      layer.bq = Bias(rng, q_dim);
      layer.bk = Bias(rng, kv_dim);
      layer.bv = Bias(rng, kv_dim);
    }
    if (config.o_bias) layer.bo = Bias(rng, D);
    if (config.qk_norm) {
      layer.q_norm = NormGain(rng, config.head_dim);
      layer.k_norm = NormGain(rng, config.head_dim);
    }
    layer.mlp_norm = NormGain(rng, D);
    layer.w_gate = Matrix(rng, I, D);
    layer.w_up = Matrix(rng, I, D);
    layer.w_down = Matrix(rng, D, I);
  }
  w.final_norm = NormGain(rng, D);
  w.lm_head = config.tie_word_embeddings ? w.embed : Matrix(rng, V, D);
  return w;
}

}  // namespace squeeze
