// Deterministic random weights in the Hugging Face layout (benchmarks, tests without a model
// directory). Scaled so activations and logits stay O(1) through a few layers.
#include <cmath>
#include <cstdint>
#include <numbers>
#include <random>
#include <vector>

#include "engine/model/weights.h"

namespace squeeze {
namespace {

// Standard normal samples from a fixed engine through Box-Muller: std::normal_distribution is
// implementation-defined, this is the same on every platform.
class NormalSource {
 public:
  explicit NormalSource(uint64_t seed) : engine_(seed) {}

  double Next() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    // u1 in (0, 1] so log(u1) is finite; 53 random bits each.
    const double u1 = (static_cast<double>(engine_() >> 11) + 1.0) * 0x1.0p-53;
    const double u2 = static_cast<double>(engine_() >> 11) * 0x1.0p-53;
    const double radius = std::sqrt(-2.0 * std::log(u1));
    const double angle = 2.0 * std::numbers::pi * u2;
    spare_ = radius * std::sin(angle);
    has_spare_ = true;
    return radius * std::cos(angle);
  }

 private:
  std::mt19937_64 engine_;
  bool has_spare_ = false;
  double spare_ = 0.0;
};

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

}  // namespace

std::vector<float> RandomNormal(size_t count, uint64_t seed, float mean, float stddev) {
  NormalSource rng(seed);
  std::vector<float> out(count);
  for (float& x : out) x = static_cast<float>(mean + stddev * rng.Next());
  return out;
}

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
