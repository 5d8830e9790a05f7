// Tensor parallelism's arithmetic on the CPU: ranks as threads, each a LlamaModel on its shard of
// real Hugging Face weights (the transformers-made goldens of several families, and the trained
// code model), joined by an InProcessGroup. The sharded model must give the whole model's logits
// at every step: a context prefilled in chunks (the registration path), then a question and
// greedy decode steps attending to it. Tolerance: max|dlogit| / max|logit| <= 1e-5 (fp32 both
// ways; only the order of the o/down sums differs), and the same greedy tokens.
#include "engine/model/tensor_parallel.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "engine/backend/communicator.h"
#include "engine/backend/cpu/cpu_backend.h"
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

// A registered context and a question, then `decode` greedy steps; the logits of every step.
struct Run {
  std::vector<std::vector<float>> logits;
  std::vector<int32_t> greedy;
  absl::Status status;
};

Run Generate(LlamaModel& m, const std::vector<int32_t>& context,
             const std::vector<int32_t>& question, int decode) {
  Run run;
  auto fail = [&run](absl::Status s) {
    run.status = s;
    return run;
  };
  SequenceKV ctx_kv(m.kv_shape());
  for (size_t done = 0; done < context.size(); done += 16) {
    const size_t n = std::min<size_t>(16, context.size() - done);
    SequenceStep step{.tokens = std::span<const int32_t>(context).subspan(done, n),
                      .kv = &ctx_kv,
                      .want_logits = false};
    ForwardOutput out;
    if (auto s = m.Forward(std::span<SequenceStep>(&step, 1), &out); !s.ok()) return fail(s);
  }
  const ContextKV kv = ContextKV::FromSequence(ctx_kv, static_cast<int>(context.size()));
  SequenceKV dyn(m.kv_shape());
  std::vector<int32_t> next = question;
  for (int t = 0; t <= decode; ++t) {
    SequenceStep step{.tokens = next, .context = &kv, .kv = &dyn};
    ForwardOutput out;
    if (auto s = m.Forward(std::span<SequenceStep>(&step, 1), &out); !s.ok()) return fail(s);
    const std::vector<float>& lg = out.logits[0];
    run.logits.push_back(lg);
    run.greedy.push_back(static_cast<int32_t>(std::max_element(lg.begin(), lg.end()) - lg.begin()));
    next = {run.greedy.back()};
  }
  return run;
}

void ExpectShardedMatchesWhole(const std::string& name, const ModelConfig& config_in,
                               LlamaWeights weights_in, int ranks) {
  SCOPED_TRACE(name + " over " + std::to_string(ranks) + " ranks");
  const ModelConfig* config = &config_in;
  LlamaWeights* weights = &weights_in;
  ASSERT_TRUE(CheckTensorParallel(*config, ranks).ok());

  // Token ids spread over the vocabulary (not a real text; the arithmetic is what is tested).
  std::vector<int32_t> context, question;
  for (int i = 0; i < 53; ++i) context.push_back((i * 7919 + 13) % config->vocab_size);
  for (int i = 0; i < 5; ++i) question.push_back((i * 104729 + 71) % config->vocab_size);
  constexpr int kDecode = 4;

  std::vector<std::unique_ptr<LlamaModel>> shards(ranks);
  for (int r = 0; r < ranks; ++r) {
    auto shard_config = ShardConfig(*config, ranks);
    ASSERT_TRUE(shard_config.ok()) << shard_config.status();
    auto shard_weights = ShardWeights(*weights, *config, r, ranks);
    ASSERT_TRUE(shard_weights.ok()) << shard_weights.status();
    auto m = LlamaModel::Create(*shard_config, std::move(*shard_weights),
                                std::make_unique<CpuBackend>());
    ASSERT_TRUE(m.ok()) << m.status();
    shards[r] = std::move(*m);
  }
  auto whole = LlamaModel::Create(*config, std::move(*weights), std::make_unique<CpuBackend>());
  ASSERT_TRUE(whole.ok()) << whole.status();
  const Run ref = Generate(**whole, context, question, kDecode);
  ASSERT_TRUE(ref.status.ok()) << ref.status;

  InProcessGroup group(ranks);
  std::vector<std::unique_ptr<Communicator>> comms(ranks);
  for (int r = 0; r < ranks; ++r) {
    comms[r] = group.Member(r);
    shards[r]->set_communicator(comms[r].get());
  }
  std::vector<Run> runs(ranks);
  OnRanks(ranks, [&](int r) { runs[r] = Generate(*shards[r], context, question, kDecode); });
  for (int r = 0; r < ranks; ++r) {
    ASSERT_TRUE(runs[r].status.ok()) << "rank " << r << ": " << runs[r].status;
    // Replicated state stays bit-identical across ranks.
    EXPECT_EQ(runs[r].logits, runs[0].logits) << "rank " << r;
  }
  const Run& got = runs[0];
  ASSERT_EQ(got.logits.size(), ref.logits.size());
  double max_err = 0, max_ref = 0;
  for (size_t t = 0; t < ref.logits.size(); ++t) {
    for (size_t v = 0; v < ref.logits[t].size(); ++v) {
      ASSERT_FALSE(std::isnan(got.logits[t][v])) << "step " << t << " token " << v;
      max_err = std::max(max_err, std::fabs(double{got.logits[t][v]} - ref.logits[t][v]));
      max_ref = std::max(max_ref, std::fabs(double{ref.logits[t][v]}));
    }
  }
  std::printf("%s, %d ranks: max|dlogit|/max|logit| = %.3g over %zu steps\n", name.c_str(), ranks,
              max_err / max_ref, ref.logits.size());
  EXPECT_LE(max_err / max_ref, 1e-5);
  EXPECT_EQ(got.greedy, ref.greedy);
}

// A Hugging Face model directory, split over `ranks`.
void ExpectShardedModelMatchesWhole(const std::string& model_dir, int ranks) {
  auto config = LoadModelConfig(model_dir);
  ASSERT_TRUE(config.ok()) << config.status();
  auto weights = LoadLlamaWeights(model_dir, *config);
  ASSERT_TRUE(weights.ok()) << weights.status();
  ExpectShardedMatchesWhole(model_dir, *config, std::move(*weights), ranks);
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
  const std::string dir = kSource + "/tests/data/golden/llama31";
  auto config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok());
  auto weights = LoadLlamaWeights(dir, *config);
  ASSERT_TRUE(weights.ok());
  auto shard_config = ShardConfig(*config, 2);
  ASSERT_TRUE(shard_config.ok());
  InProcessGroup group(2);
  std::vector<absl::Status> status(2);
  std::vector<std::unique_ptr<LlamaModel>> shards(2);
  std::vector<std::unique_ptr<Communicator>> comms(2);
  for (int r = 0; r < 2; ++r) {
    auto w = ShardWeights(*weights, *config, r, 2);
    ASSERT_TRUE(w.ok());
    auto m = LlamaModel::Create(*shard_config, std::move(*w), std::make_unique<CpuBackend>());
    ASSERT_TRUE(m.ok());
    shards[r] = std::move(*m);
    comms[r] = group.Member(r);
    shards[r]->set_communicator(comms[r].get());
  }
  OnRanks(2, [&](int r) {
    if (r == 1) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const std::vector<int32_t> tokens = {3, 5, r == 1 ? config->vocab_size : 7};
    SequenceKV kv(shards[r]->kv_shape());
    SequenceStep step{.tokens = tokens, .kv = &kv};
    ForwardOutput out;
    status[r] = shards[r]->Forward(std::span<SequenceStep>(&step, 1), &out);
  });
  EXPECT_EQ(status[1].code(), absl::StatusCode::kInvalidArgument) << status[1];
  EXPECT_EQ(status[0].code(), status[1].code()) << status[0];
}

// Squeezed Attention sharded by KV head: each rank clusters its heads as the whole model does
// (kv_head_offset), the ranks share their calibration (one threshold over all heads), and every
// rank keeps, head by head, the clusters the whole model keeps: the same logits and tokens.
struct SqueezedRun {
  Run run;
  double realised = 0;
  float tau = 0;
};

SqueezedRun GenerateSqueezed(LlamaModel& m, const std::vector<int32_t>& context,
                             const std::vector<int32_t>& question, int decode, int kv_head_offset,
                             Communicator* comm) {
  SqueezedRun out;
  auto fail = [&out](absl::Status s) {
    out.run.status = s;
    return out;
  };
  SqueezeOptions options;
  options.centroid_fraction = 0.1;
  options.window = 16;
  options.kv_head_offset = kv_head_offset;
  const int S = static_cast<int>(context.size());
  QueryCapture capture{.from_position = S - options.window};
  SequenceKV seq(m.kv_shape());
  for (int done = 0; done < S; done += 64) {
    const int n = std::min(64, S - done);
    SequenceStep step{.tokens = std::span<const int32_t>(context).subspan(done, n),
                      .kv = &seq,
                      .want_logits = false,
                      .capture = &capture};
    ForwardOutput fo;
    if (auto s = m.Forward(std::span<SequenceStep>(&step, 1), &fo); !s.ok()) return fail(s);
  }
  ContextKV kv = ContextKV::FromSequence(seq, S);
  auto index = BuildSqueezeIndex(&kv, capture, m.config().num_heads, options);
  if (!index.ok()) return fail(index.status());
  if (comm != nullptr) {
    if (auto s = ShareCalibration(*comm, m.backend(), &*index); !s.ok()) return fail(s);
  }
  SqueezedFixedContextAttention selector(*index, {.budget = 0.3});
  out.tau = selector.fine_threshold();
  SequenceKV dyn(m.kv_shape());
  std::vector<int32_t> next = question;
  for (int t = 0; t <= decode; ++t) {
    SequenceStep step{.tokens = next, .context = &kv, .fixed = &selector, .kv = &dyn};
    ForwardOutput fo;
    if (auto s = m.Forward(std::span<SequenceStep>(&step, 1), &fo); !s.ok()) return fail(s);
    const std::vector<float>& lg = fo.logits[0];
    out.run.logits.push_back(lg);
    out.run.greedy.push_back(
        static_cast<int32_t>(std::max_element(lg.begin(), lg.end()) - lg.begin()));
    next = {out.run.greedy.back()};
  }
  out.realised = selector.realised_budget();
  return out;
}

TEST(TensorParallel, ShardedSqueezedAttentionMatchesWhole) {
  const std::string dir = kSource + "/models/squeeze-code";
  auto config = LoadModelConfig(dir);
  ASSERT_TRUE(config.ok()) << config.status();
  auto weights = LoadLlamaWeights(dir, *config);
  ASSERT_TRUE(weights.ok()) << weights.status();
  constexpr int kRanks = 2;
  std::vector<int32_t> context, question;
  for (int i = 0; i < 300; ++i) context.push_back((i * 7919 + 13) % config->vocab_size);
  for (int i = 0; i < 4; ++i) question.push_back((i * 104729 + 71) % config->vocab_size);

  auto shard_config = ShardConfig(*config, kRanks);
  ASSERT_TRUE(shard_config.ok());
  std::vector<std::unique_ptr<LlamaModel>> shards(kRanks);
  for (int r = 0; r < kRanks; ++r) {
    auto w = ShardWeights(*weights, *config, r, kRanks);
    ASSERT_TRUE(w.ok());
    auto m = LlamaModel::Create(*shard_config, std::move(*w), std::make_unique<CpuBackend>());
    ASSERT_TRUE(m.ok());
    shards[r] = std::move(*m);
  }
  auto whole = LlamaModel::Create(*config, std::move(*weights), std::make_unique<CpuBackend>());
  ASSERT_TRUE(whole.ok());
  const SqueezedRun ref = GenerateSqueezed(**whole, context, question, 3, 0, nullptr);
  ASSERT_TRUE(ref.run.status.ok()) << ref.run.status;

  InProcessGroup group(kRanks);
  std::vector<std::unique_ptr<Communicator>> comms(kRanks);
  for (int r = 0; r < kRanks; ++r) {
    comms[r] = group.Member(r);
    shards[r]->set_communicator(comms[r].get());
  }
  std::vector<SqueezedRun> runs(kRanks);
  const int heads_per_rank = shard_config->num_kv_heads;
  OnRanks(kRanks, [&](int r) {
    runs[r] =
        GenerateSqueezed(*shards[r], context, question, 3, r * heads_per_rank, comms[r].get());
  });
  double max_err = 0, max_ref = 0;
  for (int r = 0; r < kRanks; ++r) {
    ASSERT_TRUE(runs[r].run.status.ok()) << "rank " << r << ": " << runs[r].run.status;
    EXPECT_EQ(runs[r].tau, ref.tau) << "rank " << r << ": the shared threshold";
  }
  for (size_t t = 0; t < ref.run.logits.size(); ++t) {
    for (size_t v = 0; v < ref.run.logits[t].size(); ++v) {
      max_err =
          std::max(max_err, std::fabs(double{runs[0].run.logits[t][v]} - ref.run.logits[t][v]));
      max_ref = std::max(max_ref, std::fabs(double{ref.run.logits[t][v]}));
    }
  }
  // The ranks' realised budgets average to the whole model's (each holds half the heads).
  EXPECT_NEAR((runs[0].realised + runs[1].realised) / 2, ref.realised, 1e-9);
  EXPECT_LT(ref.realised, 0.9) << "the selection must drop clusters for the test to mean much";
  std::printf("squeezed, 2 ranks: max|dlogit|/max|logit| = %.3g, tau %.4g, realised %.3f\n",
              max_err / max_ref, ref.tau, ref.realised);
  EXPECT_LE(max_err / max_ref, 1e-5);
  EXPECT_EQ(runs[0].run.greedy, ref.run.greedy);
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
