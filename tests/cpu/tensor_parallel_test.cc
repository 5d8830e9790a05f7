// Tensor parallelism's arithmetic on the CPU: ranks as threads, each a LlamaModel on its shard of
// real Hugging Face weights (the transformers-made goldens of several families, and the trained
// code model), joined by an InProcessGroup. The sharded model must give the whole model's logits
// at every step: a context prefilled in chunks (the registration path), then a question and
// greedy decode steps attending to it, dense and squeezed. Tolerance: max|dlogit| / max|logit|
// <= 1e-5 (fp32 both ways; only the order of the o/down sums differs), and the same greedy
// tokens.
#include "engine/model/tensor_parallel.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "engine/backend/communicator.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/common/status_macros.h"
#include "engine/model/llama_model.h"
#include "engine/squeeze/selection.h"
#include "engine/squeeze/shard_calibration.h"
#include "engine/squeeze/squeeze_index.h"

namespace squeeze {
namespace {

const std::string kSource = SQUEEZE_SOURCE_DIR;

// Runs fn(rank) on `ranks` threads and waits for them.
void OnRanks(int ranks, const std::function<void(int)>& fn) {
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) threads.emplace_back(fn, r);
  for (auto& t : threads) t.join();
}

// A model split over ranks that share an in-process group.
struct ShardedModel {
  explicit ShardedModel(int ranks) : group(ranks), comms(ranks), models(ranks) {}
  int size() const { return group.size(); }
  InProcessGroup group;
  std::vector<std::unique_ptr<Communicator>> comms;
  std::vector<std::unique_ptr<LlamaModel>> models;
};

absl::StatusOr<std::unique_ptr<ShardedModel>> MakeSharded(const ModelConfig& config,
                                                          const LlamaWeights& weights, int ranks) {
  ASSIGN_OR_RETURN(const ModelConfig shard_config, ShardConfig(config, ranks));
  auto sharded = std::make_unique<ShardedModel>(ranks);
  for (int r = 0; r < ranks; ++r) {
    ASSIGN_OR_RETURN(LlamaWeights w, ShardWeights(weights, config, r, ranks));
    ASSIGN_OR_RETURN(sharded->models[r], LlamaModel::Create(shard_config, std::move(w),
                                                            std::make_unique<CpuBackend>()));
    sharded->comms[r] = sharded->group.Member(r);
    sharded->models[r]->set_communicator(sharded->comms[r].get());
  }
  return sharded;
}

struct Loaded {
  ModelConfig config;
  LlamaWeights weights;
};

absl::StatusOr<Loaded> Load(const std::string& model_dir) {
  Loaded out;
  ASSIGN_OR_RETURN(out.config, LoadModelConfig(model_dir));
  ASSIGN_OR_RETURN(out.weights, LoadLlamaWeights(model_dir, out.config));
  return out;
}

// Token ids spread over the vocabulary (not a real text; the arithmetic is what is tested).
std::vector<int32_t> Tokens(int n, int64_t stride, int64_t offset, int vocab) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back(static_cast<int32_t>((i * stride + offset) % vocab));
  return ids;
}

// The logits of a question's last token and of `decode` greedy steps after it.
struct Generation {
  std::vector<std::vector<float>> logits;
  std::vector<int32_t> greedy;
  absl::Status status;
  float tau = 0;        // squeezed: the calibrated threshold
  double realised = 0;  // squeezed: the realised KV budget
};

// The context's KV, prefilled in chunks of `chunk` tokens (with `capture` for calibration).
absl::StatusOr<ContextKV> Prefill(LlamaModel& m, const std::vector<int32_t>& context, int chunk,
                                  QueryCapture* capture) {
  SequenceKV seq(m.kv_shape());
  for (size_t done = 0; done < context.size(); done += chunk) {
    const size_t n = std::min<size_t>(chunk, context.size() - done);
    SequenceStep step{.tokens = std::span<const int32_t>(context).subspan(done, n),
                      .kv = &seq,
                      .want_logits = false,
                      .capture = capture};
    ForwardOutput out;
    RETURN_IF_ERROR(m.Forward(std::span<SequenceStep>(&step, 1), &out));
  }
  return ContextKV::FromSequence(seq, static_cast<int>(context.size()));
}

absl::Status Decode(LlamaModel& m, const ContextKV& kv, FixedContextAttention* fixed,
                    const std::vector<int32_t>& question, int decode, Generation* run) {
  SequenceKV dyn(m.kv_shape());
  std::vector<int32_t> next = question;
  for (int t = 0; t <= decode; ++t) {
    SequenceStep step{.tokens = next, .context = &kv, .fixed = fixed, .kv = &dyn};
    ForwardOutput out;
    RETURN_IF_ERROR(m.Forward(std::span<SequenceStep>(&step, 1), &out));
    const std::vector<float>& lg = out.logits[0];
    run->logits.push_back(lg);
    run->greedy.push_back(
        static_cast<int32_t>(std::max_element(lg.begin(), lg.end()) - lg.begin()));
    next = {run->greedy.back()};
  }
  return absl::OkStatus();
}

Generation Generate(LlamaModel& m, const std::vector<int32_t>& context,
                    const std::vector<int32_t>& question, int decode) {
  Generation run;
  auto kv = Prefill(m, context, 16, nullptr);
  run.status = kv.ok() ? Decode(m, *kv, nullptr, question, decode, &run) : kv.status();
  return run;
}

// Squeezed: the context indexed as a registration indexes it (calibrated threshold, budget
// 0.3); a rank (comm set) clusters its heads as the whole model's and shares the calibration.
Generation GenerateSqueezed(LlamaModel& m, const std::vector<int32_t>& context,
                            const std::vector<int32_t>& question, int decode, int kv_head_offset,
                            Communicator* comm) {
  Generation run;
  auto fail = [&run](absl::Status s) {
    run.status = std::move(s);
    return run;
  };
  SqueezeOptions options;
  options.centroid_fraction = 0.1;
  options.window = 16;
  options.kv_head_offset = kv_head_offset;
  QueryCapture capture{.from_position = static_cast<int>(context.size()) - options.window};
  auto kv = Prefill(m, context, 64, &capture);
  if (!kv.ok()) return fail(kv.status());
  auto index = BuildSqueezeIndex(&*kv, capture, m.config().num_heads, options);
  if (!index.ok()) return fail(index.status());
  if (comm != nullptr) {
    if (auto s = ShareCalibration(*comm, m.backend(), &*index); !s.ok()) return fail(s);
  }
  SqueezedFixedContextAttention selector(*index, {.budget = 0.3});
  run.tau = selector.fine_threshold();
  run.status = Decode(m, *kv, &selector, question, decode, &run);
  run.realised = selector.realised_budget();
  return run;
}

// max|got - ref| / max|ref| over every step's logits; infinity on a NaN or a shape mismatch.
double RelativeError(const Generation& got, const Generation& ref) {
  if (got.logits.size() != ref.logits.size()) return std::numeric_limits<double>::infinity();
  double max_err = 0, max_ref = 0;
  for (size_t t = 0; t < ref.logits.size(); ++t) {
    if (got.logits[t].size() != ref.logits[t].size()) {
      return std::numeric_limits<double>::infinity();
    }
    for (size_t v = 0; v < ref.logits[t].size(); ++v) {
      if (std::isnan(got.logits[t][v])) return std::numeric_limits<double>::infinity();
      max_err = std::max(max_err, std::fabs(double{got.logits[t][v]} - ref.logits[t][v]));
      max_ref = std::max(max_ref, std::fabs(double{ref.logits[t][v]}));
    }
  }
  return max_err / max_ref;
}

void ExpectShardedMatchesWhole(const std::string& name, const ModelConfig& config,
                               const LlamaWeights& weights, int ranks) {
  SCOPED_TRACE(name + " over " + std::to_string(ranks) + " ranks");
  const std::vector<int32_t> context = Tokens(53, 7919, 13, config.vocab_size);
  const std::vector<int32_t> question = Tokens(5, 104729, 71, config.vocab_size);
  constexpr int kDecode = 4;
  auto sharded = MakeSharded(config, weights, ranks);
  ASSERT_TRUE(sharded.ok()) << sharded.status();
  auto whole = LlamaModel::Create(config, weights, std::make_unique<CpuBackend>());
  ASSERT_TRUE(whole.ok()) << whole.status();
  const Generation ref = Generate(**whole, context, question, kDecode);
  ASSERT_TRUE(ref.status.ok()) << ref.status;

  std::vector<Generation> runs(ranks);
  OnRanks(ranks,
          [&](int r) { runs[r] = Generate(*(*sharded)->models[r], context, question, kDecode); });
  for (int r = 0; r < ranks; ++r) {
    ASSERT_TRUE(runs[r].status.ok()) << "rank " << r << ": " << runs[r].status;
    // Replicated state stays bit-identical across ranks.
    EXPECT_EQ(runs[r].logits, runs[0].logits) << "rank " << r;
  }
  const double error = RelativeError(runs[0], ref);
  std::printf("%s, %d ranks: max|dlogit|/max|logit| = %.3g over %zu steps\n", name.c_str(), ranks,
              error, ref.logits.size());
  EXPECT_LE(error, 1e-5);
  EXPECT_EQ(runs[0].greedy, ref.greedy);
}

// A Hugging Face model directory, split over `ranks`.
void ExpectShardedModelMatchesWhole(const std::string& model_dir, int ranks) {
  auto model = Load(model_dir);
  ASSERT_TRUE(model.ok()) << model.status();
  ExpectShardedMatchesWhole(model_dir, model->config, model->weights, ranks);
}

TEST(TensorParallel, ShardedLlamaGqaMatchesWhole) {  // 8 query heads, 2 KV heads
  ExpectShardedModelMatchesWhole(kSource + "/tests/data/golden/llama31", 2);
}

TEST(TensorParallel, ShardedQwen3MatchesWhole) {  // per-head q/k norms, head_dim != D / Hq
  ExpectShardedModelMatchesWhole(kSource + "/tests/data/golden/qwen3_yarn", 2);
}

TEST(TensorParallel, ShardedPhi3MatchesWhole) {  // fused qkv and gate_up in the checkpoint
  ExpectShardedModelMatchesWhole(kSource + "/tests/data/golden/phi3", 2);
}

TEST(TensorParallel, ShardedCodeModelMatchesWhole) {  // trained weights, GQA 4/2
  ExpectShardedModelMatchesWhole(kSource + "/models/squeeze-code", 2);
}

// The goldens have at most 2 KV heads; 4 and 8 ranks on random weights with 8 KV heads, q/k/v
// and o biases (the o bias is added once, after the sum) and GQA 2:1.
TEST(TensorParallel, FourAndEightRanksWithBiases) {
  ModelConfig c;
  c.architecture = "Qwen2ForCausalLM";
  c.vocab_size = 300;
  c.hidden_size = 64;
  c.intermediate_size = 96;
  c.num_layers = 2;
  c.num_heads = 16;
  c.num_kv_heads = 8;
  c.head_dim = 8;
  c.max_position_embeddings = 256;
  c.qkv_bias = true;
  c.o_bias = true;
  for (int ranks : {4, 8}) {
    ExpectShardedMatchesWhole("random 16/8 heads", c, RandomLlamaWeights(c, 7), ranks);
  }
}

// A rank whose step fails (here: a token id out of range on rank 1 only) aborts the group, so
// rank 0, already waiting in the first layer's collective, fails too instead of hanging.
TEST(TensorParallel, AFailingRankFailsTheOthers) {
  auto model = Load(kSource + "/tests/data/golden/llama31");
  ASSERT_TRUE(model.ok()) << model.status();
  auto sharded = MakeSharded(model->config, model->weights, 2);
  ASSERT_TRUE(sharded.ok()) << sharded.status();
  std::vector<absl::Status> status(2);
  OnRanks(2, [&](int r) {
    if (r == 1) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    LlamaModel& m = *(*sharded)->models[r];
    const std::vector<int32_t> tokens = {3, 5, r == 1 ? model->config.vocab_size : 7};
    SequenceKV kv(m.kv_shape());
    SequenceStep step{.tokens = tokens, .kv = &kv};
    ForwardOutput out;
    status[r] = m.Forward(std::span<SequenceStep>(&step, 1), &out);
  });
  EXPECT_EQ(status[1].code(), absl::StatusCode::kInvalidArgument) << status[1];
  EXPECT_EQ(status[0].code(), status[1].code()) << status[0];
}

// Squeezed Attention sharded by KV head: each rank clusters its heads as the whole model does
// (kv_head_offset), the ranks share their calibration (one threshold over all heads), and every
// rank keeps, head by head, the clusters the whole model keeps: the same logits and tokens.
TEST(TensorParallel, ShardedSqueezedAttentionMatchesWhole) {
  auto model = Load(kSource + "/models/squeeze-code");
  ASSERT_TRUE(model.ok()) << model.status();
  constexpr int kRanks = 2, kDecode = 3;
  const std::vector<int32_t> context = Tokens(300, 7919, 13, model->config.vocab_size);
  const std::vector<int32_t> question = Tokens(4, 104729, 71, model->config.vocab_size);
  auto sharded = MakeSharded(model->config, model->weights, kRanks);
  ASSERT_TRUE(sharded.ok()) << sharded.status();
  auto whole = LlamaModel::Create(model->config, model->weights, std::make_unique<CpuBackend>());
  ASSERT_TRUE(whole.ok()) << whole.status();
  const Generation ref = GenerateSqueezed(**whole, context, question, kDecode, 0, nullptr);
  ASSERT_TRUE(ref.status.ok()) << ref.status;

  std::vector<Generation> runs(kRanks);
  const int heads_per_rank = model->config.num_kv_heads / kRanks;
  OnRanks(kRanks, [&](int r) {
    runs[r] = GenerateSqueezed(*(*sharded)->models[r], context, question, kDecode,
                               r * heads_per_rank, (*sharded)->comms[r].get());
  });
  for (int r = 0; r < kRanks; ++r) {
    ASSERT_TRUE(runs[r].status.ok()) << "rank " << r << ": " << runs[r].status;
    EXPECT_EQ(runs[r].tau, ref.tau) << "rank " << r << ": the shared threshold";
  }
  // The ranks' realised budgets average to the whole model's (each holds half the heads).
  EXPECT_NEAR((runs[0].realised + runs[1].realised) / 2, ref.realised, 1e-9);
  EXPECT_LT(ref.realised, 0.9) << "the selection must drop clusters for the test to mean much";
  const double error = RelativeError(runs[0], ref);
  std::printf("squeezed, 2 ranks: max|dlogit|/max|logit| = %.3g, tau %.4g, realised %.3f\n", error,
              ref.tau, ref.realised);
  EXPECT_LE(error, 1e-5);
  EXPECT_EQ(runs[0].greedy, ref.greedy);
}

TEST(TensorParallel, ShardShapesAndRefusals) {
  auto config = LoadModelConfig(kSource + "/tests/data/golden/llama31");
  ASSERT_TRUE(config.ok());
  auto weights = LoadLlamaWeights(kSource + "/tests/data/golden/llama31", *config);
  ASSERT_TRUE(weights.ok());
  const size_t D = config->hidden_size, d = config->head_dim;
  // Concatenating the shards' rows (q) and columns (o, down) gives back the whole matrices.
  std::vector<float> wq, wo_cols_of_row0, down_cols_of_row0;
  for (int r = 0; r < 2; ++r) {
    auto s = ShardWeights(*weights, *config, r, 2);
    ASSERT_TRUE(s.ok()) << s.status();
    const LayerWeights& l = s->layers[1];
    EXPECT_EQ(l.wq.size(), config->num_heads / 2 * d * D);
    EXPECT_EQ(l.wk.size(), config->num_kv_heads / 2 * d * D);
    EXPECT_EQ(l.w_gate.size(), config->intermediate_size / 2 * D);
    wq.insert(wq.end(), l.wq.begin(), l.wq.end());
    const size_t o_cols = l.wo.size() / D, down_cols = l.w_down.size() / D;
    wo_cols_of_row0.insert(wo_cols_of_row0.end(), l.wo.begin(), l.wo.begin() + o_cols);
    down_cols_of_row0.insert(down_cols_of_row0.end(), l.w_down.begin(),
                             l.w_down.begin() + down_cols);
    EXPECT_EQ(s->embed, weights->embed);
  }
  const LayerWeights& full = weights->layers[1];
  EXPECT_EQ(wq, full.wq);
  const size_t q_dim = config->num_heads * d;
  EXPECT_EQ(wo_cols_of_row0, std::vector<float>(full.wo.begin(), full.wo.begin() + q_dim));
  EXPECT_EQ(down_cols_of_row0, std::vector<float>(full.w_down.begin(),
                                                  full.w_down.begin() + config->intermediate_size));

  // 2 KV heads do not split over 4 ranks (KV heads are sharded, not replicated).
  const absl::Status four = CheckTensorParallel(*config, 4);
  EXPECT_EQ(four.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(four.message().find("num_key_value_heads"), std::string::npos) << four;
  EXPECT_EQ(CheckTensorParallel(*config, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ShardWeights(*weights, *config, 2, 2).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(InProcessGroup, SumsInRankOrderAndRefusesMismatchedSizes) {
  constexpr int kRanks = 3;
  InProcessGroup group(kRanks);
  CpuBackend backend[kRanks];
  std::vector<std::vector<float>> data(kRanks);
  std::vector<absl::Status> status(kRanks);
  OnRanks(kRanks, [&](int r) {
    auto comm = group.Member(r);
    for (int round = 0; round < 50; ++round) {  // back-to-back rounds must not mix
      data[r].assign(7, 0.0f);
      for (int i = 0; i < 7; ++i) data[r][i] = static_cast<float>((r + 1) * (i + round));
      status[r] = comm->AllReduceSum(backend[r], data[r].data(), 7);
      if (!status[r].ok()) return;
      for (int i = 0; i < 7; ++i) {
        if (data[r][i] != static_cast<float>(6 * (i + round))) {  // (1 + 2 + 3) * (i + round)
          status[r] = absl::InternalError("wrong sum");
          return;
        }
      }
    }
    // Ranks disagreeing on the size: every rank gets the error, none a partial sum.
    const float before = data[r][0];
    status[r] = comm->AllReduceSum(backend[r], data[r].data(), r == 0 ? 6 : 7);
    if (status[r].code() == absl::StatusCode::kInvalidArgument && data[r][0] != before) {
      status[r] = absl::InternalError("buffer changed by a failed collective");
    }
  });
  for (int r = 0; r < kRanks; ++r) {
    EXPECT_EQ(status[r].code(), absl::StatusCode::kInvalidArgument)
        << "rank " << r << ": " << status[r];
  }
  EXPECT_EQ(group.Member(kRanks), nullptr);
}

// A rank that fails between collectives aborts the group: the ranks waiting in a collective and
// any that come later get its error instead of hanging.
TEST(InProcessGroup, AbortReleasesWaitingRanks) {
  constexpr int kRanks = 3;
  InProcessGroup group(kRanks);
  CpuBackend backend[kRanks];
  std::vector<absl::Status> status(kRanks);
  OnRanks(kRanks, [&](int r) {
    auto comm = group.Member(r);
    std::vector<float> data(4, 1.0f);
    if (r == 2) {  // fails before its collective; the others are (or will be) waiting
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      comm->Abort(absl::ResourceExhaustedError("rank 2 ran out of memory"));
      status[r] = comm->AllReduceSum(backend[r], data.data(), data.size());
      return;
    }
    status[r] = comm->AllReduceSum(backend[r], data.data(), data.size());
    if (status[r].ok() || data[0] != 1.0f) status[r] = absl::InternalError("not aborted");
  });
  for (int r = 0; r < kRanks; ++r) {
    EXPECT_EQ(status[r].code(), absl::StatusCode::kResourceExhausted)
        << "rank " << r << ": " << status[r];
  }
}

}  // namespace
}  // namespace squeeze
