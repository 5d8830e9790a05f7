// The Llama forward on small random-weight models: batching, context splitting, row order of the
// fixed context, multi-sequence batches, query capture, range selection and input errors.
#include "engine/model/llama_model.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/model/rope.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace squeeze {
namespace {

using ::testing::HasSubstr;

struct ModelCase {
  std::string name;
  int num_heads, num_kv_heads, head_dim;
  bool tied;
  RopeType rope;
};

ModelConfig MakeConfig(const ModelCase& mc) {
  ModelConfig c;
  c.architecture = "LlamaForCausalLM";
  c.vocab_size = 97;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_layers = 2;
  c.num_heads = mc.num_heads;
  c.num_kv_heads = mc.num_kv_heads;
  c.head_dim = mc.head_dim;
  c.max_position_embeddings = 4096;
  c.rms_norm_eps = 1e-5f;
  c.rope_theta = 10000.0f;
  c.tie_word_embeddings = mc.tied;
  c.rope_scaling.type = mc.rope;
  if (mc.rope != RopeType::kDefault) c.rope_scaling.factor = 4.0f;
  // Small original length so that the test positions span all three llama3 frequency bands.
  c.rope_scaling.original_max_position_embeddings = 32;
  return c;
}

std::unique_ptr<LlamaModel> MakeModel(const ModelConfig& c, uint64_t seed = 42) {
  auto model = LlamaModel::Create(c, RandomLlamaWeights(c, seed), std::make_unique<CpuBackend>());
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::move(*model) : nullptr;
}

std::vector<int32_t> RandomTokens(int n, int vocab, std::mt19937_64& rng) {
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = static_cast<int32_t>(rng() % vocab);
  return t;
}

double RelDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    num += double{a[i] - b[i]} * (a[i] - b[i]);
    den += double{b[i]} * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

bool AllFinite(const std::vector<float>& v) {
  return std::all_of(v.begin(), v.end(), [](float x) { return std::isfinite(x); });
}

constexpr double kTol = 1e-4;

// Runs one single-sequence step and returns the last token's logits.
std::vector<float> Step(LlamaModel& model, std::span<const int32_t> tokens, SequenceKV* kv,
                        const ContextKV* context = nullptr, FixedContextAttention* fixed = nullptr,
                        QueryCapture* capture = nullptr) {
  SequenceStep step;
  step.tokens = tokens;
  step.kv = kv;
  step.context = context;
  step.fixed = fixed;
  step.capture = capture;
  ForwardOutput out;
  const absl::Status status = model.Forward(std::span<SequenceStep>(&step, 1), &out);
  EXPECT_TRUE(status.ok()) << status;
  return status.ok() ? out.logits[0] : std::vector<float>{};
}

// Prefills `n` tokens into a fresh SequenceKV and turns them into a ContextKV.
ContextKV PrefillContext(LlamaModel& model, std::span<const int32_t> tokens) {
  SequenceKV kv(model.kv_shape());
  Step(model, tokens, &kv);
  return ContextKV::FromSequence(kv, static_cast<int>(tokens.size()));
}

class LlamaModelTest : public ::testing::TestWithParam<ModelCase> {
 protected:
  void SetUp() override {
    config_ = MakeConfig(GetParam());
    model_ = MakeModel(config_);
    ASSERT_NE(model_, nullptr);
  }
  ModelConfig config_;
  std::unique_ptr<LlamaModel> model_;
};

// A naive double-precision Llama forward written from the Hugging Face definitions (RMSNorm,
// rotate_half RoPE, GQA by head index, SwiGLU); returns the last token's logits.
std::vector<double> NaiveLogits(const ModelConfig& c, const LlamaWeights& w,
                                const std::vector<int32_t>& tokens) {
  const int n = static_cast<int>(tokens.size()), D = c.hidden_size, I = c.intermediate_size;
  const int Hq = c.num_heads, Hkv = c.num_kv_heads, d = c.head_dim, G = Hq / Hkv;
  const std::vector<float> inv_freq = ComputeRopeInvFreq(d, c.rope_theta, c.rope_scaling).value();
  using Mat = std::vector<std::vector<double>>;
  auto linear = [](const Mat& x, const std::vector<float>& wt, int out_dim) {
    Mat y(x.size(), std::vector<double>(out_dim, 0.0));
    const size_t in_dim = x[0].size();
    for (size_t t = 0; t < x.size(); ++t) {
      for (int o = 0; o < out_dim; ++o) {
        for (size_t i = 0; i < in_dim; ++i) y[t][o] += x[t][i] * wt[o * in_dim + i];
      }
    }
    return y;
  };
  auto rms_norm = [&](const Mat& x, const std::vector<float>& g) {
    Mat y = x;
    for (auto& row : y) {
      double ss = 0.0;
      for (double v : row) ss += v * v;
      const double inv = 1.0 / std::sqrt(ss / row.size() + c.rms_norm_eps);
      for (size_t i = 0; i < row.size(); ++i) row[i] *= inv * g[i];
    }
    return y;
  };
  auto rope = [&](Mat& x, int heads) {
    for (int t = 0; t < n; ++t) {
      for (int h = 0; h < heads; ++h) {
        double* r = &x[t][h * d];
        for (int i = 0; i < d / 2; ++i) {
          const double a = static_cast<float>(t) * inv_freq[i];  // fp32 angle as in HF
          const double x1 = r[i], x2 = r[i + d / 2];
          r[i] = x1 * std::cos(a) - x2 * std::sin(a);
          r[i + d / 2] = x2 * std::cos(a) + x1 * std::sin(a);
        }
      }
    }
  };
  Mat x(n, std::vector<double>(D));
  for (int t = 0; t < n; ++t) {
    for (int i = 0; i < D; ++i) x[t][i] = w.embed[static_cast<size_t>(tokens[t]) * D + i];
  }
  for (const LayerWeights& lw : w.layers) {
    const Mat h = rms_norm(x, lw.attn_norm);
    Mat q = linear(h, lw.wq, Hq * d), k = linear(h, lw.wk, Hkv * d);
    const Mat v = linear(h, lw.wv, Hkv * d);
    rope(q, Hq);
    rope(k, Hkv);
    Mat att(n, std::vector<double>(Hq * d, 0.0));
    for (int t = 0; t < n; ++t) {
      for (int qh = 0; qh < Hq; ++qh) {
        const int kh = qh / G;
        std::vector<double> s(t + 1);
        double mx = -1e300, sum = 0.0;
        for (int j = 0; j <= t; ++j) {
          s[j] = 0.0;
          for (int i = 0; i < d; ++i) s[j] += q[t][qh * d + i] * k[j][kh * d + i];
          s[j] /= std::sqrt(static_cast<double>(d));
          mx = std::max(mx, s[j]);
        }
        for (double& e : s) sum += (e = std::exp(e - mx));
        for (int j = 0; j <= t; ++j) {
          for (int i = 0; i < d; ++i) att[t][qh * d + i] += s[j] / sum * v[j][kh * d + i];
        }
      }
    }
    const Mat o = linear(att, lw.wo, D);
    for (int t = 0; t < n; ++t) {
      for (int i = 0; i < D; ++i) x[t][i] += o[t][i];
    }
    const Mat h2 = rms_norm(x, lw.mlp_norm);
    Mat gate = linear(h2, lw.w_gate, I);
    const Mat up = linear(h2, lw.w_up, I);
    for (int t = 0; t < n; ++t) {
      for (int i = 0; i < I; ++i)
        gate[t][i] = gate[t][i] / (1.0 + std::exp(-gate[t][i])) * up[t][i];
    }
    const Mat down = linear(gate, lw.w_down, D);
    for (int t = 0; t < n; ++t) {
      for (int i = 0; i < D; ++i) x[t][i] += down[t][i];
    }
  }
  const Mat last = rms_norm(Mat{x.back()}, w.final_norm);
  return linear(last, w.lm_head, c.vocab_size)[0];
}

// (0) The forward equals the naive double-precision definition.
TEST_P(LlamaModelTest, MatchesNaiveDoubleReference) {
  std::mt19937_64 rng(9);
  const std::vector<int32_t> tokens = RandomTokens(37, config_.vocab_size, rng);
  const std::vector<double> ref = NaiveLogits(config_, RandomLlamaWeights(config_, 42), tokens);
  SequenceKV kv(model_->kv_shape());
  const std::vector<float> got = Step(*model_, tokens, &kv);
  ASSERT_EQ(got.size(), ref.size());
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  EXPECT_LT(std::sqrt(num / den), 1e-5);
  EXPECT_GT(den / ref.size(), 0.1);  // logits are O(1), not vanishing
}

// (1) One step of N tokens == N steps of one token: same logits at chunk ends, same KV.
TEST_P(LlamaModelTest, BatchedPrefillEqualsTokenByToken) {
  std::mt19937_64 rng(1);
  const std::vector<int32_t> tokens = RandomTokens(40, config_.vocab_size, rng);

  SequenceKV kv_one(model_->kv_shape());
  std::vector<std::vector<float>> per_token;
  for (size_t i = 0; i < tokens.size(); ++i) {
    per_token.push_back(Step(*model_, std::span(tokens).subspan(i, 1), &kv_one));
  }

  SequenceKV kv_batch(model_->kv_shape());
  const int chunks[] = {13, 1, 19, 7};  // sums to 40
  int done = 0;
  for (int len : chunks) {
    const std::vector<float> logits =
        Step(*model_, std::span(tokens).subspan(done, len), &kv_batch);
    done += len;
    ASSERT_EQ(logits.size(), static_cast<size_t>(config_.vocab_size));
    EXPECT_TRUE(AllFinite(logits));
    EXPECT_LT(RelDiff(logits, per_token[done - 1]), kTol) << "after " << done << " tokens";
  }
  ASSERT_EQ(kv_batch.length(), 40);
  ASSERT_EQ(kv_one.length(), 40);
  double worst = 0.0;
  for (int l = 0; l < config_.num_layers; ++l) {
    for (int h = 0; h < config_.num_kv_heads; ++h) {
      for (int t = 0; t < 40; ++t) {
        for (int i = 0; i < config_.head_dim; ++i) {
          worst =
              std::max<double>(worst, std::abs(kv_batch.key(l, h, t)[i] - kv_one.key(l, h, t)[i]));
          worst = std::max<double>(worst,
                                   std::abs(kv_batch.value(l, h, t)[i] - kv_one.value(l, h, t)[i]));
        }
      }
    }
  }
  EXPECT_LT(worst, 1e-4);
  // Logits at different positions really differ (the test is not comparing constants).
  EXPECT_GT(RelDiff(per_token[10], per_token[39]), 1e-2);
}

// (2) [context][rest] with the context as a ContextKV == the whole prompt as one sequence, also
// for decode steps after it.
TEST_P(LlamaModelTest, ContextSplitEqualsWholePrompt) {
  std::mt19937_64 rng(2);
  const std::vector<int32_t> prompt = RandomTokens(45, config_.vocab_size, rng);
  const std::vector<int32_t> decode = RandomTokens(3, config_.vocab_size, rng);
  const int S = 30;

  SequenceKV whole(model_->kv_shape());
  const std::vector<float> ref = Step(*model_, prompt, &whole);
  const ContextKV context = PrefillContext(*model_, std::span(prompt).first(S));
  SequenceKV rest(model_->kv_shape());
  const std::vector<float> got = Step(*model_, std::span(prompt).subspan(S), &rest, &context);
  EXPECT_EQ(rest.length(), 45 - S);
  EXPECT_LT(RelDiff(got, ref), kTol);

  for (size_t i = 0; i < decode.size(); ++i) {
    const auto tok = std::span(decode).subspan(i, 1);
    const std::vector<float> a = Step(*model_, tok, &whole);
    const std::vector<float> b = Step(*model_, tok, &rest, &context);
    EXPECT_LT(RelDiff(b, a), kTol) << "decode step " << i;
  }
}

// Shuffles the rows of every (layer, kv head) of a ContextKV independently.
ContextKV Permute(const ContextKV& in, std::mt19937_64& rng) {
  ContextKV out = in;
  const int S = in.num_tokens, d = in.shape.head_dim;
  for (int l = 0; l < in.shape.num_layers; ++l) {
    for (int h = 0; h < in.shape.num_kv_heads; ++h) {
      std::vector<int> perm(S);
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng);
      for (int r = 0; r < S; ++r) {
        std::copy_n(in.key(l, h, perm[r]), d, out.k.f32() + out.Offset(l, h, r));
        std::copy_n(in.value(l, h, perm[r]), d, out.v.f32() + out.Offset(l, h, r));
        const size_t base = (static_cast<size_t>(l) * in.shape.num_kv_heads + h) * S;
        out.token_of[base + r] = in.token_of[base + perm[r]];
      }
    }
  }
  return out;
}

// (3) Row order of the fixed context does not change the result.
TEST_P(LlamaModelTest, PermutedContextGivesSameLogits) {
  std::mt19937_64 rng(3);
  const std::vector<int32_t> prompt = RandomTokens(36, config_.vocab_size, rng);
  const int S = 28;
  const ContextKV context = PrefillContext(*model_, std::span(prompt).first(S));
  const ContextKV permuted = Permute(context, rng);
  ASSERT_NE(permuted.k, context.k);

  SequenceKV a(model_->kv_shape()), b(model_->kv_shape());
  const std::vector<float> ref = Step(*model_, std::span(prompt).subspan(S), &a, &context);
  const std::vector<float> got = Step(*model_, std::span(prompt).subspan(S), &b, &permuted);
  EXPECT_LT(RelDiff(got, ref), kTol);
}

// (4) Sequences of different lengths and contexts in one batch == each alone.
TEST_P(LlamaModelTest, MultiSequenceBatchEqualsEachAlone) {
  std::mt19937_64 rng(4);
  const std::vector<int32_t> ctx_a = RandomTokens(25, config_.vocab_size, rng);
  const std::vector<int32_t> ctx_c = RandomTokens(10, config_.vocab_size, rng);
  const ContextKV context_a = PrefillContext(*model_, ctx_a);
  const ContextKV context_c = PrefillContext(*model_, ctx_c);
  const std::vector<int32_t> in_a = RandomTokens(7, config_.vocab_size, rng);
  const std::vector<int32_t> in_b = RandomTokens(12, config_.vocab_size, rng);
  const std::vector<int32_t> in_c = RandomTokens(1, config_.vocab_size, rng);
  const std::vector<int32_t> in_d = RandomTokens(5, config_.vocab_size, rng);

  // Sequence c already has 4 dynamic tokens, so its step is a decode step at position 14.
  const std::vector<int32_t> c_history = RandomTokens(4, config_.vocab_size, rng);
  SequenceKV alone_c(model_->kv_shape()), batch_c(model_->kv_shape());
  Step(*model_, c_history, &alone_c, &context_c);
  Step(*model_, c_history, &batch_c, &context_c);

  SequenceKV alone_a(model_->kv_shape()), alone_b(model_->kv_shape());
  const std::vector<float> ref_a = Step(*model_, in_a, &alone_a, &context_a);
  const std::vector<float> ref_b = Step(*model_, in_b, &alone_b);
  const std::vector<float> ref_c = Step(*model_, in_c, &alone_c, &context_c);

  SequenceKV batch_a(model_->kv_shape()), batch_b(model_->kv_shape());
  SequenceKV batch_d(model_->kv_shape());
  SequenceStep steps[4];
  steps[0] = {in_a, &context_a, nullptr, &batch_a, true, nullptr};
  steps[1] = {in_b, nullptr, nullptr, &batch_b, true, nullptr};
  steps[2] = {in_c, &context_c, nullptr, &batch_c, true, nullptr};
  steps[3] = {in_d, &context_a, nullptr, &batch_d, false, nullptr};  // prefill, no logits
  ForwardOutput out;
  ASSERT_TRUE(model_->Forward(steps, &out).ok());
  ASSERT_EQ(out.logits.size(), 4u);
  EXPECT_LT(RelDiff(out.logits[0], ref_a), kTol);
  EXPECT_LT(RelDiff(out.logits[1], ref_b), kTol);
  EXPECT_LT(RelDiff(out.logits[2], ref_c), kTol);
  EXPECT_TRUE(out.logits[3].empty());
  EXPECT_EQ(batch_a.length(), 7);
  EXPECT_EQ(batch_b.length(), 12);
  EXPECT_EQ(batch_c.length(), 5);
  EXPECT_EQ(batch_d.length(), 5);
}

// (5) QueryCapture collects exactly the positions asked for; chunked runs capture the same q as
// one run, and layer 0's q equals an independent recomputation from the weights.
TEST_P(LlamaModelTest, QueryCaptureCapturesRequestedPositions) {
  std::mt19937_64 rng(5);
  const int S = 10, n = 20, from = 22;  // absolute positions S .. S+n-1 = 10 .. 29
  const std::vector<int32_t> ctx_tokens = RandomTokens(S, config_.vocab_size, rng);
  const std::vector<int32_t> tokens = RandomTokens(n, config_.vocab_size, rng);
  const ContextKV context = PrefillContext(*model_, ctx_tokens);
  const int L = config_.num_layers, q_dim = config_.num_heads * config_.head_dim;

  QueryCapture one;
  one.from_position = from;
  SequenceKV kv_one(model_->kv_shape());
  Step(*model_, tokens, &kv_one, &context, nullptr, &one);
  std::vector<int32_t> expected_positions(S + n - from);
  std::iota(expected_positions.begin(), expected_positions.end(), from);
  EXPECT_EQ(one.positions, expected_positions);
  ASSERT_EQ(one.q.size(), static_cast<size_t>(L));
  for (int l = 0; l < L; ++l) {
    EXPECT_EQ(one.q[l].size(), expected_positions.size() * q_dim);
  }

  QueryCapture chunked;
  chunked.from_position = from;
  SequenceKV kv_chunked(model_->kv_shape());
  const int chunks[] = {8, 6, 1, 5};
  int done = 0;
  for (int len : chunks) {
    Step(*model_, std::span(tokens).subspan(done, len), &kv_chunked, &context, nullptr, &chunked);
    done += len;
  }
  EXPECT_EQ(chunked.positions, expected_positions);
  ASSERT_EQ(chunked.q.size(), static_cast<size_t>(L));
  for (int l = 0; l < L; ++l) EXPECT_LT(RelDiff(chunked.q[l], one.q[l]), kTol) << "layer " << l;

  // Layer 0: q = rope(wq . rmsnorm(embed[token])) at the token's absolute position.
  const LlamaWeights w = RandomLlamaWeights(config_, 42);
  const std::vector<float> inv_freq =
      ComputeRopeInvFreq(config_.head_dim, config_.rope_theta, config_.rope_scaling).value();
  CpuBackend be;
  const int D = config_.hidden_size;
  for (size_t c = 0; c < expected_positions.size(); ++c) {
    const int32_t pos = expected_positions[c];
    const int32_t tok = tokens[pos - S];
    std::vector<float> h(D), q(q_dim);
    be.RmsNorm(&w.embed[static_cast<size_t>(tok) * D], w.layers[0].attn_norm.data(), h.data(), 1, D,
               config_.rms_norm_eps);
    be.MatMul(h.data(), Matrix{w.layers[0].wq.data(), DType::kF32, q_dim, D}, q.data(), 1, false);
    be.Rope(q.data(), &pos, 1, config_.num_heads, config_.head_dim, inv_freq.data());
    const std::vector<float> got(one.q[0].begin() + c * q_dim, one.q[0].begin() + (c + 1) * q_dim);
    EXPECT_LT(RelDiff(got, q), 1e-5) << "position " << pos;
  }
}

// Selects every context row, split into random ranges listed in random order.
class AllRowsInPieces final : public FixedContextAttention {
 public:
  AllRowsInPieces(int num_kv_heads, int num_rows, uint64_t seed)
      : num_kv_heads_(num_kv_heads), num_rows_(num_rows), rng_(seed) {}
  void Select(int layer, const float* q, int n, LayerSelection* out) override {
    ++calls;
    layers_seen.push_back(layer);
    EXPECT_NE(q, nullptr);
    EXPECT_GT(n, 0);
    out->ranges.assign(num_kv_heads_, {});
    for (auto& ranges : out->ranges) {
      for (int r = 0; r < num_rows_;) {
        const int len = std::min(num_rows_ - r, 1 + static_cast<int>(rng_() % 9));
        ranges.push_back({r, r + len});
        r += len;
      }
      std::shuffle(ranges.begin(), ranges.end(), rng_);
    }
  }
  int calls = 0;
  std::vector<int> layers_seen;

 private:
  int num_kv_heads_, num_rows_;
  std::mt19937_64 rng_;
};

// Keeps only the first half of the context rows.
class FirstHalf final : public FixedContextAttention {
 public:
  FirstHalf(int num_kv_heads, int num_rows) : num_kv_heads_(num_kv_heads), num_rows_(num_rows) {}
  void Select(int, const float*, int, LayerSelection* out) override {
    out->ranges.assign(num_kv_heads_, std::vector<KeyRange>{{0, num_rows_ / 2}});
  }

 private:
  int num_kv_heads_, num_rows_;
};

// (6) A selector that keeps every row as several ranges == dense; a partial one is honoured.
TEST_P(LlamaModelTest, AllRowsAsRangesEqualsDense) {
  std::mt19937_64 rng(6);
  const int S = 33;
  const std::vector<int32_t> ctx_tokens = RandomTokens(S, config_.vocab_size, rng);
  const std::vector<int32_t> tokens = RandomTokens(6, config_.vocab_size, rng);
  const ContextKV context = PrefillContext(*model_, ctx_tokens);

  SequenceKV kv_dense(model_->kv_shape()), kv_explicit(model_->kv_shape());
  SequenceKV kv_pieces(model_->kv_shape()), kv_half(model_->kv_shape());
  const std::vector<float> dense = Step(*model_, tokens, &kv_dense, &context);
  DenseFixedContextAttention explicit_dense(config_.num_kv_heads, S);
  const std::vector<float> dense2 = Step(*model_, tokens, &kv_explicit, &context, &explicit_dense);
  AllRowsInPieces pieces(config_.num_kv_heads, S, 7);
  const std::vector<float> got = Step(*model_, tokens, &kv_pieces, &context, &pieces);
  EXPECT_LT(RelDiff(dense2, dense), kTol);
  EXPECT_LT(RelDiff(got, dense), kTol);
  EXPECT_EQ(pieces.calls, config_.num_layers);
  std::vector<int> expected_layers(config_.num_layers);
  std::iota(expected_layers.begin(), expected_layers.end(), 0);
  EXPECT_EQ(pieces.layers_seen, expected_layers);

  FirstHalf half(config_.num_kv_heads, S);
  const std::vector<float> partial = Step(*model_, tokens, &kv_half, &context, &half);
  EXPECT_TRUE(AllFinite(partial));
  EXPECT_GT(RelDiff(partial, dense), 1e-3);
}

// Keeps rows [0, k) of every head, k a function of the call's queries (their sum), and selects
// in query blocks of `query_block` tokens (ContextAttentionPolicy::query_block).
class QueryDependentPrefix final : public FixedContextAttention {
 public:
  QueryDependentPrefix(int num_kv_heads, int num_rows, int head_dim, int query_block)
      : num_kv_heads_(num_kv_heads), num_rows_(num_rows), d_(head_dim), block_(query_block) {}
  ContextAttentionPolicy policy() const override {
    ContextAttentionPolicy p;
    p.query_block = block_;
    return p;
  }
  void Select(int, const float* q, int n, LayerSelection* out) override {
    ++selections;
    max_tokens = std::max(max_tokens, n);
    double sum = 0.0;
    for (int i = 0; i < n * d_; ++i) sum += q[i];  // the first query head of every token
    const int k = 1 + static_cast<int>(std::fmod(std::abs(sum) * 1000.0, num_rows_ - 1));
    out->ranges.assign(num_kv_heads_, std::vector<KeyRange>{{0, k}});
  }
  void Record(int, std::span<const int32_t> kept, std::span<const int32_t>) override {
    ++records;
    EXPECT_EQ(static_cast<int>(kept.size()), num_kv_heads_);
  }
  int selections = 0, records = 0, max_tokens = 0;

 private:
  int num_kv_heads_, num_rows_, d_, block_;
};

// (6b) A multi-token step selected in query blocks of b tokens == the same tokens as steps of b
// tokens (each its own selection); and one selection for the whole step differs.
TEST_P(LlamaModelTest, QueryBlocksEqualStepsOfThatSize) {
  std::mt19937_64 rng(61);
  const int S = 40, n = 23, b = 5;
  const std::vector<int32_t> ctx_tokens = RandomTokens(S, config_.vocab_size, rng);
  const std::vector<int32_t> tokens = RandomTokens(n, config_.vocab_size, rng);
  const ContextKV context = PrefillContext(*model_, ctx_tokens);
  const int hkv = config_.num_kv_heads, d = config_.head_dim, L = config_.num_layers;

  SequenceKV kv_steps(model_->kv_shape()), kv_blocks(model_->kv_shape());
  SequenceKV kv_whole(model_->kv_shape());
  QueryDependentPrefix per_step(hkv, S, d, 0), blocked(hkv, S, d, b), whole(hkv, S, d, 0);
  std::vector<float> ref;
  for (int t = 0; t < n; t += b) {
    ref = Step(*model_, std::span(tokens).subspan(t, std::min(b, n - t)), &kv_steps, &context,
               &per_step);
  }
  const std::vector<float> got = Step(*model_, tokens, &kv_blocks, &context, &blocked);
  const std::vector<float> one = Step(*model_, tokens, &kv_whole, &context, &whole);
  ASSERT_TRUE(AllFinite(got));
  EXPECT_LT(RelDiff(got, ref), kTol);
  const int blocks = (n + b - 1) / b;
  EXPECT_EQ(blocked.selections, blocks * L);
  EXPECT_EQ(blocked.records, blocks * L);
  EXPECT_EQ(blocked.max_tokens, b);
  EXPECT_EQ(kv_blocks.length(), n);
  double worst = 0.0;
  for (int l = 0; l < L; ++l) {
    for (int h = 0; h < hkv; ++h) {
      for (int t = 0; t < n; ++t) {
        for (int i = 0; i < d; ++i) {
          worst = std::max<double>(
              worst, std::abs(kv_blocks.value(l, h, t)[i] - kv_steps.value(l, h, t)[i]));
        }
      }
    }
  }
  EXPECT_LT(worst, 1e-4);
  EXPECT_EQ(whole.selections, L);
  EXPECT_GT(RelDiff(one, ref), 1e-3) << "one selection for the step should differ";
}

INSTANTIATE_TEST_SUITE_P(
    Configs, LlamaModelTest,
    ::testing::Values(ModelCase{"mha_d16_tied_default", 4, 4, 16, true, RopeType::kDefault},
                      ModelCase{"gqa4_d32_untied_linear", 8, 2, 32, false, RopeType::kLinear},
                      ModelCase{"gqa4_d16_tied_llama3", 8, 2, 16, true, RopeType::kLlama3},
                      ModelCase{"mha_d32_untied_llama3", 2, 2, 32, false, RopeType::kLlama3}),
    [](const ::testing::TestParamInfo<ModelCase>& info) { return info.param.name; });

// (7) Input errors are InvalidArgument, name the problem, and leave the KV untouched.
TEST(LlamaModelErrorsTest, BadInputsAreRejected) {
  const ModelConfig c = MakeConfig({"x", 4, 2, 16, false, RopeType::kDefault});
  auto model = MakeModel(c);
  ASSERT_NE(model, nullptr);
  SequenceKV kv(model->kv_shape());
  ForwardOutput out;

  const std::vector<int32_t> bad_high = {1, 2, c.vocab_size};
  SequenceStep step{bad_high, nullptr, nullptr, &kv, true, nullptr};
  absl::Status s = model->Forward(std::span(&step, 1), &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("token id 97"));

  const std::vector<int32_t> bad_low = {-3};
  step.tokens = bad_low;
  s = model->Forward(std::span(&step, 1), &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("token id -3"));

  step.tokens = {};
  EXPECT_EQ(model->Forward(std::span(&step, 1), &out).code(), absl::StatusCode::kInvalidArgument);

  const std::vector<int32_t> good = {1, 2};
  step.tokens = good;
  step.kv = nullptr;
  EXPECT_EQ(model->Forward(std::span(&step, 1), &out).code(), absl::StatusCode::kInvalidArgument);

  SequenceKV wrong_shape(KvShape{c.num_layers, c.num_kv_heads + 1, c.head_dim});
  step.kv = &wrong_shape;
  EXPECT_EQ(model->Forward(std::span(&step, 1), &out).code(), absl::StatusCode::kInvalidArgument);

  DenseFixedContextAttention dense(c.num_kv_heads, 4);
  step.kv = &kv;
  step.fixed = &dense;  // a selector without a context
  EXPECT_EQ(model->Forward(std::span(&step, 1), &out).code(), absl::StatusCode::kInvalidArgument);

  // Same SequenceKV twice in one batch.
  step.fixed = nullptr;
  SequenceStep twice[2] = {step, step};
  EXPECT_EQ(model->Forward(twice, &out).code(), absl::StatusCode::kInvalidArgument);

  EXPECT_EQ(kv.length(), 0);
  EXPECT_TRUE(model->Forward(std::span(&step, 1), &out).ok());
  EXPECT_EQ(kv.length(), 2);
}

TEST(LlamaModelErrorsTest, SelectorOutOfRangeIsAnError) {
  const ModelConfig c = MakeConfig({"x", 4, 2, 16, false, RopeType::kDefault});
  auto model = MakeModel(c);
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(8);
  const std::vector<int32_t> ctx_tokens = RandomTokens(8, c.vocab_size, rng);
  const ContextKV context = PrefillContext(*model, ctx_tokens);
  DenseFixedContextAttention too_long(c.num_kv_heads, 9);  // one row past the context
  SequenceKV kv(model->kv_shape());
  const std::vector<int32_t> tokens = {3};
  SequenceStep step{tokens, &context, &too_long, &kv, true, nullptr};
  ForwardOutput out;
  const absl::Status s = model->Forward(std::span(&step, 1), &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(std::string(s.message()), HasSubstr("outside"));
  EXPECT_EQ(kv.length(), 0);
}

TEST(LlamaModelErrorsTest, CreateChecksWeightShapesAndConfig) {
  const ModelConfig c = MakeConfig({"x", 4, 2, 16, false, RopeType::kDefault});
  LlamaWeights w = RandomLlamaWeights(c, 1);
  w.layers[1].wk.pop_back();
  auto model = LlamaModel::Create(c, std::move(w), std::make_unique<CpuBackend>());
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(model.status().message()),
              HasSubstr("model.layers.1.self_attn.k_proj.weight"));

  ModelConfig bad_heads = c;
  bad_heads.num_kv_heads = 3;
  EXPECT_FALSE(
      LlamaModel::Create(bad_heads, RandomLlamaWeights(c, 1), std::make_unique<CpuBackend>()).ok());
  EXPECT_FALSE(LlamaModel::Create(c, RandomLlamaWeights(c, 1), nullptr).ok());
}

TEST(RandomWeightsTest, DeterministicTiedAndScaled) {
  ModelConfig c = MakeConfig({"x", 4, 2, 16, true, RopeType::kDefault});
  const LlamaWeights a = RandomLlamaWeights(c, 5), b = RandomLlamaWeights(c, 5);
  const LlamaWeights other = RandomLlamaWeights(c, 6);
  EXPECT_EQ(a.layers[1].w_down, b.layers[1].w_down);
  EXPECT_NE(a.layers[1].w_down, other.layers[1].w_down);
  EXPECT_EQ(a.lm_head, a.embed);
  c.tie_word_embeddings = false;
  const LlamaWeights untied = RandomLlamaWeights(c, 5);
  EXPECT_NE(untied.lm_head, untied.embed);
  // Entries of w_down [D, I] have standard deviation 1/sqrt(I).
  double ss = 0.0;
  for (float x : a.layers[0].w_down) ss += double{x} * x;
  const double std_dev = std::sqrt(ss / a.layers[0].w_down.size());
  EXPECT_NEAR(std_dev, 1.0 / std::sqrt(c.intermediate_size), 0.1 / std::sqrt(c.intermediate_size));
  for (float g : a.final_norm) EXPECT_NEAR(g, 1.0f, 0.3f);
}

}  // namespace
}  // namespace squeeze
