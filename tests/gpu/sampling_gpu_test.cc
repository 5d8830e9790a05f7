// GPU sampling (kernels/sampling/sampling.cu through engine/backend/cuda/cuda_sampling.h) against
// the CPU Sampler on random logits (normal at several scales, with ties, +-0, -inf and NaN entries,
// big tie groups), V = 7, 32000 and 128256, 1 to 64 rows, every truncation, penalties and logprobs.
// Each row has two samplers with the same seed, one per side, fed the same tokens.
//
// Asserted:
//   - greedy: identical tokens, always;
//   - sampled: >= 99% of the draws of a configuration give the identical token (the probabilities
//     are the host's expf values and the masses exact integer sums, so in practice all do; a
//     draw at a cumulative boundary may differ by rounding), and every GPU token lies in the
//     CPU's kept set, computed here by a full sort, widened by 1e-9 of the top-p target and 1e-6
//     of min_p for that rounding;
//   - logprobs: the same top-N tokens in the same order, values within 1e-4 (absolute), -inf
//     where the CPU has -inf; the chosen token's logprob within 1e-4;
//   - the PRNG streams stay in step: after mixed CPU / GPU steps (including rows with no finite
//     logit, where no draw is used) a sampler draws exactly what a CPU-only one does;
//   - the logits are not modified; poisoned outputs and workspace (launcher test) do not leak.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "engine/backend/cuda/cuda_sampling.h"
#include "engine/sampling/sampler.h"
#include "kernels/sampling/sampling.cuh"
#include "tests/gpu/gpu_test_util.h"

namespace squeeze {
namespace {

using gpu_testing::DeviceArray;
using gpu_testing::Rng;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// [rows, vocab] logits. Row r's scale cycles through flat to peaked; about 3% of the entries copy
// another one (ties), 2% are -inf, 1% NaN, a few +-0; some rows tie several tokens at the max,
// and some (large V) put 40% of the vocabulary on one value, so selections end in big tie groups.
std::vector<float> MakeLogits(int rows, int vocab, uint64_t seed) {
  std::mt19937 gen(static_cast<uint32_t>(seed));
  Rng rng(seed);
  std::vector<float> all(static_cast<size_t>(rows) * vocab);
  const float scales[] = {0.5f, 1.0f, 2.0f, 4.0f, 8.0f};
  for (int r = 0; r < rows; ++r) {
    float* l = &all[static_cast<size_t>(r) * vocab];
    std::normal_distribution<float> normal(0.0f, scales[(r + seed) % 5]);
    for (int i = 0; i < vocab; ++i) l[i] = normal(gen);
    if (vocab >= 1000 && (r + seed) % 7 == 3) {
      const float common = l[rng.Int(0, vocab - 1)];
      for (int i = 0; i < vocab; ++i) {
        if (rng.Int(0, 9) < 4) l[i] = common;
      }
    }
    for (int i = 0; i < vocab; ++i) {
      const int u = rng.Int(0, 999);
      if (u < 30) {
        l[i] = l[rng.Int(0, vocab - 1)];
      } else if (u < 50) {
        l[i] = -kInf;
      } else if (u < 60) {
        l[i] = kNaN;
      } else if (u < 62) {
        l[i] = u == 60 ? 0.0f : -0.0f;
      }
    }
    if (vocab <= 16) {  // make sure the small vocabulary has its special values too
      l[r % vocab] = (r % 3 == 0) ? kNaN : -kInf;
      l[(r + 3) % vocab] = l[(r + 5) % vocab];
    }
    if (r % 4 == 1) {
      float mx = -kInf;
      for (int i = 0; i < vocab; ++i) {
        if (!std::isnan(l[i])) mx = std::max(mx, l[i]);
      }
      for (int t = 0; t < 3; ++t) l[rng.Int(0, vocab - 1)] = mx;
    }
    bool finite = false;
    for (int i = 0; i < vocab; ++i) finite = finite || std::isfinite(l[i]);
    if (!finite) l[vocab / 2] = 1.0f;
  }
  return all;
}

// The CPU sampler's processed logits (same float operations), for the reference sets below.
std::vector<float> Processed(std::span<const float> logits, const SamplingParams& p,
                             std::span<const int32_t> prompt, std::span<const int32_t> generated) {
  const int vocab = static_cast<int>(logits.size());
  std::vector<float> w(logits.begin(), logits.end());
  for (float& v : w) {
    if (std::isnan(v)) v = -kInf;
  }
  auto in_vocab = [vocab](int32_t id) { return id >= 0 && id < vocab; };
  if (p.repetition_penalty != 1.0f && p.repetition_penalty > 0.0f) {
    std::set<int32_t> ids;
    for (int32_t id : prompt) {
      if (in_vocab(id)) ids.insert(id);
    }
    for (int32_t id : generated) {
      if (in_vocab(id)) ids.insert(id);
    }
    for (int32_t id : ids) {
      w[id] = w[id] > 0.0f ? w[id] / p.repetition_penalty : w[id] * p.repetition_penalty;
    }
  }
  if (p.presence_penalty != 0.0f || p.frequency_penalty != 0.0f) {
    std::vector<int32_t> count(vocab, 0);
    for (int32_t id : generated) {
      if (in_vocab(id)) ++count[id];
    }
    for (int i = 0; i < vocab; ++i) {
      if (count[i] > 0) {
        w[i] -= p.presence_penalty + p.frequency_penalty * static_cast<float>(count[i]);
      }
    }
  }
  if (p.temperature >= 1e-5f && p.temperature != 1.0f) {
    for (float& v : w) v /= p.temperature;
  }
  return w;
}

// Tokens the CPU may keep (a superset of its kept set by the rounding slack, see the header).
std::vector<bool> AllowedSet(const std::vector<float>& w, const SamplingParams& p) {
  const int vocab = static_cast<int>(w.size());
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](int32_t a, int32_t b) { return w[a] > w[b] || (w[a] == w[b] && a < b); });
  const float lmax = w[order[0]];
  std::vector<bool> allowed(vocab, false);
  if (p.temperature < 1e-5f || !std::isfinite(lmax)) {
    allowed[order[0]] = true;
    return allowed;
  }
  int n = p.top_k > 0 && p.top_k < vocab ? p.top_k : vocab;
  std::vector<double> prob(vocab);
  for (int i = 0; i < vocab; ++i) prob[i] = std::exp(static_cast<double>(w[i] - lmax));
  if (p.top_p < 1.0f) {
    double total = 0.0;
    for (int i = 0; i < n; ++i) total += prob[order[i]];
    const double target = static_cast<double>(p.top_p) * total * (1.0 + 1e-9);
    double acc = 0.0;
    for (int i = 0; i < n; ++i) {
      acc += prob[order[i]];
      if (acc >= target) {
        n = i + 1;
        break;
      }
    }
  }
  const double min_p = std::max(p.min_p, 0.0f) * (1.0 - 1e-6);
  for (int i = 0; i < n; ++i) allowed[order[i]] = prob[order[i]] >= min_p;
  allowed[order[0]] = true;  // the argmax is the host's fallback when nothing is kept
  return allowed;
}

// log-softmax (double) of the processed logits, for tokens the CPU did not report.
double ReferenceLogprob(const std::vector<float>& w, int32_t token) {
  const double mx = *std::max_element(w.begin(), w.end());
  if (!std::isfinite(mx)) return w[token] == mx ? 0.0 : -INFINITY;
  double s = 0.0;
  for (float v : w) s += std::exp(v - mx);
  return w[token] - mx - std::log(s);
}

void ExpectLogprobNear(float got, float want, const std::string& what) {
  if (std::isinf(want) || std::isinf(got)) {
    EXPECT_EQ(got, want) << what;
  } else {
    EXPECT_NEAR(got, want, 1e-4) << what;
  }
}

struct Tally {
  int draws = 0;
  int same = 0;
};

class SamplingGpuTest : public ::testing::Test {
 protected:
  void SetUp() override { CUDA_OK(cudaStreamCreate(&stream_)); }
  void TearDown() override { cudaStreamDestroy(stream_); }

  // `steps` steps of `rows` rows: per row one CPU and one GPU sampler seeded alike, a prompt and
  // generated tokens with repeats and out-of-range ids (the CPU's tokens are appended to both).
  void Compare(const SamplingParams& params, int vocab, int rows, int steps, uint64_t seed,
               bool want_info, Tally* tally) {
    SCOPED_TRACE(testing::Message() << "vocab " << vocab << " rows " << rows << " seed " << seed
                                    << " want_info " << want_info);
    Rng rng(seed);
    std::vector<std::unique_ptr<Sampler>> cpu, gpu;
    std::vector<std::vector<int32_t>> prompts(rows), generated(rows);
    for (int r = 0; r < rows; ++r) {
      cpu.push_back(std::make_unique<Sampler>(params, seed * 1000 + r));
      gpu.push_back(std::make_unique<Sampler>(params, seed * 1000 + r));
      const int pool = std::min(vocab, 30);  // a small pool makes repeats
      for (int i = rng.Int(0, 40); i > 0; --i) {
        prompts[r].push_back(rng.Int(0, pool - 1) * 7 % vocab);
      }
      for (int i = rng.Int(0, 12); i > 0; --i) {
        generated[r].push_back(rng.Int(0, pool - 1) * 3 % vocab);
      }
      prompts[r].push_back(-1);
      prompts[r].push_back(vocab + 2);
      generated[r].push_back(vocab);
      generated[r].push_back(-7);
    }
    const bool greedy = params.temperature < 1e-5f;
    DeviceArray<float> d_logits(static_cast<size_t>(rows) * vocab);
    for (int step = 0; step < steps; ++step) {
      const std::vector<float> logits = MakeLogits(rows, vocab, seed * 7919 + step);
      d_logits.Upload(logits);
      std::vector<CudaSampler::Job> jobs(rows);
      for (int r = 0; r < rows; ++r) {
        jobs[r] = {gpu[r].get(), prompts[r], generated[r], want_info};
      }
      auto out = sampler_.Sample(d_logits.get(), vocab, jobs, stream_);
      ASSERT_TRUE(out.ok()) << out.status();
      ASSERT_EQ(out->size(), static_cast<size_t>(rows));
      // The logits are read only.
      const std::vector<float> after = d_logits.Download();
      ASSERT_EQ(std::memcmp(after.data(), logits.data(), logits.size() * sizeof(float)), 0);

      for (int r = 0; r < rows; ++r) {
        SCOPED_TRACE(testing::Message() << "step " << step << " row " << r);
        const std::span<const float> row(&logits[static_cast<size_t>(r) * vocab], vocab);
        SampleInfo info;
        const int32_t want =
            cpu[r]->Sample(row, prompts[r], generated[r], want_info ? &info : nullptr);
        const CudaSampler::Output& got = (*out)[r];
        ASSERT_GE(got.token, 0);
        ASSERT_LT(got.token, vocab);
        const std::vector<float> w = Processed(row, params, prompts[r], generated[r]);
        if (greedy) {
          EXPECT_EQ(got.token, want);
        } else {
          ++tally->draws;
          tally->same += got.token == want;
          EXPECT_TRUE(AllowedSet(w, params)[got.token]) << "GPU token " << got.token;
        }
        if (want_info) {
          ASSERT_FALSE(std::isnan(got.info.logprob));
          if (got.token == want) {
            ExpectLogprobNear(got.info.logprob, info.logprob, "chosen logprob");
          } else {
            ExpectLogprobNear(got.info.logprob, static_cast<float>(ReferenceLogprob(w, got.token)),
                              "chosen logprob (reference)");
          }
          ASSERT_EQ(got.info.top.size(), info.top.size());
          for (size_t i = 0; i < info.top.size(); ++i) {
            EXPECT_EQ(got.info.top[i].token, info.top[i].token) << "top " << i;
            ExpectLogprobNear(got.info.top[i].logprob, info.top[i].logprob, "top logprob");
          }
        }
        generated[r].push_back(want);
      }
    }
  }

  void ExpectMostlyIdentical(const Tally& t) {
    EXPECT_GT(t.draws, 0);
    EXPECT_GE(t.same, 0.99 * t.draws) << t.same << " of " << t.draws << " draws identical";
    std::printf("  %d of %d draws identical\n", t.same, t.draws);
  }

  // Every vocabulary and batch shape for one configuration.
  void CompareAll(const SamplingParams& params, bool want_info = false) {
    Tally tally;
    Compare(params, 7, 64, 6, 1, want_info, &tally);
    Compare(params, 7, 1, 10, 2, want_info, &tally);
    Compare(params, 32000, 64, 3, 3, want_info, &tally);
    Compare(params, 32000, 5, 4, 4, want_info, &tally);
    Compare(params, 128256, 64, 2, 5, want_info, &tally);
    Compare(params, 128256, 1, 4, 6, want_info, &tally);
    if (params.temperature >= 1e-5f) ExpectMostlyIdentical(tally);
  }

  cudaStream_t stream_ = nullptr;
  CudaSampler sampler_;
};

SamplingParams WithTemperature(float t) {
  SamplingParams p;
  p.temperature = t;
  return p;
}

TEST_F(SamplingGpuTest, Greedy) {
  CompareAll(WithTemperature(0.0f));
  CompareAll(WithTemperature(5e-6f), /*want_info=*/true);
}

TEST_F(SamplingGpuTest, TemperatureOnly) {
  CompareAll(WithTemperature(1.0f));
  CompareAll(WithTemperature(0.7f));
}

TEST_F(SamplingGpuTest, TopK) {
  for (int k : {1, 50, 128256}) {  // 128256: off for every vocabulary here
    SCOPED_TRACE(testing::Message() << "top_k " << k);
    SamplingParams p = WithTemperature(0.9f);
    p.top_k = k;
    CompareAll(p);
  }
  SamplingParams big = WithTemperature(1.0f);
  big.top_k = 5000;  // a selection deep into the vocabulary
  Tally tally;
  Compare(big, 32000, 16, 3, 21, false, &tally);
  Compare(big, 128256, 16, 2, 22, false, &tally);
  ExpectMostlyIdentical(tally);
}

TEST_F(SamplingGpuTest, TopP) {
  for (float top_p : {0.9f, 0.5f, 1e-6f}) {
    SCOPED_TRACE(testing::Message() << "top_p " << top_p);
    SamplingParams p = WithTemperature(1.0f);
    p.top_p = top_p;
    CompareAll(p);
  }
}

TEST_F(SamplingGpuTest, MinP) {
  SamplingParams p = WithTemperature(1.0f);
  p.min_p = 0.1f;
  CompareAll(p);
  p.min_p = 1.5f;  // nothing is kept: the argmax, after the draw
  CompareAll(p);
}

TEST_F(SamplingGpuTest, AllCombined) {
  SamplingParams p = WithTemperature(0.7f);
  p.top_k = 50;
  p.top_p = 0.9f;
  p.min_p = 0.05f;
  CompareAll(p);
  p.top_k = 3000;
  p.top_p = 0.95f;
  p.min_p = 0.001f;
  p.temperature = 1.3f;
  CompareAll(p);
}

TEST_F(SamplingGpuTest, Penalties) {
  SamplingParams p = WithTemperature(0.9f);
  p.repetition_penalty = 1.3f;
  p.presence_penalty = 0.4f;
  p.frequency_penalty = 0.3f;
  p.top_p = 0.95f;
  CompareAll(p, /*want_info=*/true);
  SamplingParams g = WithTemperature(0.0f);  // greedy: a penalised token must lose exactly
  g.repetition_penalty = 0.7f;               // < 1 favours repeats
  g.presence_penalty = -0.5f;
  g.frequency_penalty = 0.2f;
  g.logprobs = 5;
  CompareAll(g, /*want_info=*/true);
  SamplingParams f = WithTemperature(1.0f);
  f.frequency_penalty = 1.5f;
  f.top_k = 50;
  CompareAll(f);
}

TEST_F(SamplingGpuTest, Logprobs) {
  for (int n : {0, 5, 20}) {
    SCOPED_TRACE(testing::Message() << "logprobs " << n);
    SamplingParams p = WithTemperature(0.8f);
    p.logprobs = n;
    p.top_k = 40;
    CompareAll(p, /*want_info=*/true);
    SamplingParams q = WithTemperature(1.0f);
    q.logprobs = n;
    q.top_p = 0.9f;
    CompareAll(q, /*want_info=*/true);
  }
  SamplingParams many = WithTemperature(1.0f);  // the device's largest top-N
  many.logprobs = gpu::kSamplingMaxLogprobs;
  Tally tally;
  Compare(many, 32000, 4, 2, 31, true, &tally);
  ExpectMostlyIdentical(tally);
}

TEST_F(SamplingGpuTest, PrngStreamsStayInStep) {
  // Mixed CPU / GPU steps on one sampler against a CPU-only twin, with rows that have no finite
  // logit (all -inf, all NaN) or a +inf, where Sample() draws nothing.
  const int vocab = 1000;
  SamplingParams p = WithTemperature(1.0f);
  p.top_p = 0.95f;
  Sampler mixed(p, 77), cpu_only(p, 77);
  DeviceArray<float> d(vocab);
  int same = 0, steps = 0;
  for (int step = 0; step < 60; ++step) {
    std::vector<float> l = MakeLogits(1, vocab, 500 + step);
    if (step % 5 == 2) std::fill(l.begin(), l.end(), -kInf);
    if (step % 5 == 4) std::fill(l.begin(), l.end(), kNaN);
    if (step % 7 == 6) l[123] = kInf;
    const int32_t want = cpu_only.Sample(l, {}, {});
    int32_t got;
    if (step % 3 == 0) {
      got = mixed.Sample(l, {}, {});
    } else {
      d.Upload(l);
      const CudaSampler::Job job{&mixed, {}, {}, false};
      auto out = sampler_.Sample(d.get(), vocab, std::span(&job, 1), stream_);
      ASSERT_TRUE(out.ok()) << out.status();
      got = (*out)[0].token;
    }
    ++steps;
    same += got == want;
  }
  EXPECT_GE(same, steps - 1);
  // The next CPU draws are the CPU-only run's: over 4096 equally likely tokens, a stream out of
  // step would show at once.
  const std::vector<float> flat(4096, 0.25f);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(mixed.Sample(flat, {}, {}), cpu_only.Sample(flat, {}, {}));
}

TEST_F(SamplingGpuTest, ErrorsConsumeNoDraw) {
  SamplingParams p = WithTemperature(1.0f);
  p.logprobs = gpu::kSamplingMaxLogprobs + 1;
  Sampler sampler(p, 5), twin(p, 5);
  const int vocab = 5000;
  const std::vector<float> l = MakeLogits(1, vocab, 9);
  DeviceArray<float> d(l);
  const CudaSampler::Job job{&sampler, {}, {}, true};
  auto out = sampler_.Sample(d.get(), vocab, std::span(&job, 1), stream_);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  // Without logprobs the same sampler works, and its draw is the twin's first.
  const CudaSampler::Job plain{&sampler, {}, {}, false};
  out = sampler_.Sample(d.get(), vocab, std::span(&plain, 1), stream_);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ((*out)[0].token, twin.Sample(l, {}, {}));
  // An empty vocabulary gives -1, as on the CPU.
  out = sampler_.Sample(d.get(), 0, std::span(&plain, 1), stream_);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ((*out)[0].token, -1);
}

TEST_F(SamplingGpuTest, LauncherWithPoisonedWorkspaceAndOutputs) {
  // The raw launcher: workspace and outputs full of 0xFF (NaN floats, -1 ids) must not matter;
  // rows past num_logprobs keep their poison.
  const int rows = 9, vocab = 32000, stride = 20;
  SamplingParams p = WithTemperature(0.8f);
  p.top_k = 100;
  p.top_p = 0.9f;
  p.repetition_penalty = 1.2f;
  p.logprobs = 20;
  const std::vector<float> logits = MakeLogits(rows, vocab, 1234);
  const std::vector<int32_t> prompt = {1, 2, 3, 2, 1, 40000};
  const std::vector<int32_t> generated = {3, 3, 7};
  std::vector<gpu::SamplingRowParams> params(rows, gpu::SamplingRowParams{});
  std::vector<gpu::SamplingPenalty> penalties;
  std::vector<std::unique_ptr<Sampler>> cpu, gpu_side;
  for (int r = 0; r < rows; ++r) {
    SamplingParams rp = p;
    if (r % 3 == 0) rp.temperature = 0.0f;  // greedy rows in the same launch
    cpu.push_back(std::make_unique<Sampler>(rp, r));
    gpu_side.push_back(std::make_unique<Sampler>(rp, r));
    DeviceSampleRow row;
    std::vector<PenaltyToken> tokens;
    const bool want = r % 2 == 0;
    gpu_side[r]->PrepareDevice(vocab, prompt, generated, want, &row, &tokens);
    params[r] = SamplingRowToDevice(row, static_cast<int32_t>(penalties.size()),
                                    static_cast<int32_t>(tokens.size()));
    for (const PenaltyToken& t : tokens) penalties.push_back({t.id, t.count});
  }
  DeviceArray<float> d_logits(logits);
  DeviceArray<gpu::SamplingRowParams> d_params(params);
  DeviceArray<gpu::SamplingPenalty> d_penalties(penalties);
  DeviceArray<uint8_t> d_ws(gpu::SamplingWorkspaceBytes(rows, vocab));
  DeviceArray<gpu::SamplingResult> d_results(rows);
  DeviceArray<gpu::SampledLogprob> d_top(static_cast<size_t>(rows) * stride);
  d_ws.Poison();
  d_results.Poison();
  d_top.Poison();
  gpu::SamplingLaunchParams launch;
  launch.logits = d_logits.get();
  launch.rows = rows;
  launch.vocab = vocab;
  launch.row_params = d_params.get();
  launch.penalties = d_penalties.get();
  launch.workspace = d_ws.get();
  launch.results = d_results.get();
  launch.top = d_top.get();
  launch.top_stride = stride;
  CUDA_OK(gpu::LaunchSampling(launch, stream_));
  CUDA_OK(cudaStreamSynchronize(stream_));
  const auto results = d_results.Download();
  const auto top = d_top.Download();
  int same = 0;
  for (int r = 0; r < rows; ++r) {
    SCOPED_TRACE(testing::Message() << "row " << r);
    const std::span<const float> row(&logits[static_cast<size_t>(r) * vocab], vocab);
    SampleInfo info;
    const bool want = r % 2 == 0;
    const int32_t expected = cpu[r]->Sample(row, prompt, generated, want ? &info : nullptr);
    ASSERT_GE(results[r].token, 0);
    ASSERT_LT(results[r].token, vocab);
    EXPECT_EQ(results[r].used_uniform, r % 3 == 0 ? 0 : 1);
    if (r % 3 == 0) {
      EXPECT_EQ(results[r].token, expected);
    }
    same += results[r].token == expected;
    for (int i = 0; i < stride; ++i) {
      const gpu::SampledLogprob& t = top[static_cast<size_t>(r) * stride + i];
      if (!want) {
        EXPECT_EQ(t.token, -1);  // untouched poison
        continue;
      }
      EXPECT_EQ(t.token, info.top[i].token) << i;
      ExpectLogprobNear(t.logprob, info.top[i].logprob, "top logprob");
    }
    if (want && results[r].token == expected) {
      ExpectLogprobNear(results[r].logprob, info.logprob, "chosen logprob");
    }
  }
  EXPECT_GE(same, rows - 1);
}

}  // namespace
}  // namespace squeeze
