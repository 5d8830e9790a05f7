// Sampler (penalties, temperature, top-k / top-p / min-p, logprobs, determinism) and StopMatcher.
#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "engine/sampling/sampler.h"
#include "engine/sampling/sampling_params.h"
#include "engine/sampling/stop_matcher.h"
#include "gtest/gtest.h"

namespace squeeze {
namespace {

std::vector<float> RandomLogits(int vocab, uint32_t seed, float scale = 2.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> logits(vocab);
  for (float& l : logits) l = normal(rng);
  return logits;
}

std::vector<double> Softmax(const std::vector<float>& logits, double temperature = 1.0) {
  const double mx = *std::max_element(logits.begin(), logits.end()) / temperature;
  std::vector<double> p(logits.size());
  double total = 0.0;
  for (size_t i = 0; i < logits.size(); ++i) total += p[i] = std::exp(logits[i] / temperature - mx);
  for (double& x : p) x /= total;
  return p;
}

std::vector<float> LogitsFromProbs(const std::vector<double>& probs) {
  std::vector<float> logits;
  for (double p : probs) logits.push_back(static_cast<float>(std::log(p)) + 3.0f);  // any shift
  return logits;
}

// Empirical token frequencies over `draws` samples of one sampler.
std::vector<double> Frequencies(Sampler& sampler, const std::vector<float>& logits, int draws) {
  std::vector<double> freq(logits.size(), 0.0);
  for (int i = 0; i < draws; ++i) {
    const int32_t t = sampler.Sample(logits, {}, {});
    EXPECT_GE(t, 0);
    EXPECT_LT(t, static_cast<int32_t>(logits.size()));
    freq[t] += 1.0 / draws;
  }
  return freq;
}

int32_t Argmax(const std::vector<float>& v) {
  return static_cast<int32_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

SamplingParams Params(float temperature) {
  SamplingParams p;
  p.temperature = temperature;
  return p;
}

TEST(SamplerTest, GreedyIsArgmaxWithLowestIndexOnTies) {
  Sampler sampler(Params(0.0f), 1);
  for (uint32_t seed = 0; seed < 20; ++seed) {
    const auto logits = RandomLogits(1000, seed);
    EXPECT_EQ(sampler.Sample(logits, {}, {}), Argmax(logits));
  }
  std::vector<float> ties = {0.5f, 3.0f, -1.0f, 3.0f, 3.0f};
  EXPECT_EQ(sampler.Sample(ties, {}, {}), 1);
  // NaN never wins.
  std::vector<float> with_nan = {1.0f, std::nanf(""), 2.0f};
  EXPECT_EQ(sampler.Sample(with_nan, {}, {}), 2);
  EXPECT_EQ(sampler.Sample(std::vector<float>{}, {}, {}), -1);
}

TEST(SamplerTest, SameSeedSameTokensDifferentSeedDifferentTokens) {
  SamplingParams p = Params(1.0f);
  p.top_p = 0.95f;
  auto run = [&](uint64_t seed) {
    Sampler sampler(p, seed);
    std::vector<int32_t> out;
    for (uint32_t step = 0; step < 200; ++step) {
      const auto logits = RandomLogits(500, step, 1.0f);
      out.push_back(sampler.Sample(logits, {}, out));
    }
    return out;
  };
  EXPECT_EQ(run(7), run(7));
  EXPECT_NE(run(7), run(8));
}

TEST(SamplerTest, GoldenSequenceIsPlatformIndependent) {
  // std::mt19937_64 output is fixed by the standard and the uniform conversion is ours, so this
  // exact sequence must come out on every platform and standard library.
  const std::vector<float> logits = LogitsFromProbs({0.1, 0.2, 0.3, 0.4});
  Sampler sampler(Params(1.0f), 42);
  std::vector<int32_t> out;
  for (int i = 0; i < 12; ++i) out.push_back(sampler.Sample(logits, {}, {}));
  // Reference computed independently: u = (mt19937_64(42)() >> 11) * 2^-53 against the CDF.
  std::mt19937_64 rng(42);
  std::vector<int32_t> expected;
  const double cdf[4] = {0.1, 0.3, 0.6, 1.0};
  for (int i = 0; i < 12; ++i) {
    const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;
    expected.push_back(static_cast<int32_t>(std::upper_bound(cdf, cdf + 4, u) - cdf));
  }
  EXPECT_EQ(out, expected);
}

TEST(SamplerTest, TopKOneIsGreedy) {
  SamplingParams p = Params(1.5f);
  p.top_k = 1;
  Sampler sampler(p, 3);
  for (uint32_t seed = 0; seed < 50; ++seed) {
    const auto logits = RandomLogits(300, seed);
    EXPECT_EQ(sampler.Sample(logits, {}, {}), Argmax(logits));
  }
}

TEST(SamplerTest, TopKRestrictsSupportAndRenormalises) {
  const auto logits = RandomLogits(50, 11, 1.0f);
  SamplingParams p = Params(1.0f);
  p.top_k = 5;
  Sampler sampler(p, 5);
  const auto freq = Frequencies(sampler, logits, 20000);

  std::vector<int32_t> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  const std::set<int32_t> top5(order.begin(), order.begin() + 5);
  double z = 0.0;
  for (int32_t t : top5) z += std::exp(logits[t]);
  for (int32_t t = 0; t < 50; ++t) {
    if (top5.count(t)) {
      EXPECT_NEAR(freq[t], std::exp(logits[t]) / z, 0.015) << t;
    } else {
      EXPECT_EQ(freq[t], 0.0) << t;
    }
  }
}

TEST(SamplerTest, TopPKeepsTheNucleus) {
  const auto logits = LogitsFromProbs({0.05, 0.5, 0.1, 0.3, 0.05});
  SamplingParams p = Params(1.0f);
  p.top_p = 0.75f;  // 0.5 < 0.75 <= 0.5 + 0.3: nucleus {1, 3}
  Sampler sampler(p, 9);
  const auto freq = Frequencies(sampler, logits, 20000);
  EXPECT_NEAR(freq[1], 0.5 / 0.8, 0.015);
  EXPECT_NEAR(freq[3], 0.3 / 0.8, 0.015);
  EXPECT_EQ(freq[0] + freq[2] + freq[4], 0.0);

  // Tiny top_p still keeps the single best token.
  p.top_p = 1e-6f;
  Sampler tiny(p, 9);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(tiny.Sample(logits, {}, {}), 1);
}

TEST(SamplerTest, TopPOnLargeVocabularyMatchesFullSortReference) {
  // 128K vocabulary with a long tail: the nucleus is larger than the first partial-sort window,
  // so the growing-prefix search is exercised.
  const int vocab = 128 * 1024;
  const auto logits = RandomLogits(vocab, 21, 1.0f);
  SamplingParams p = Params(0.8f);
  p.top_p = 0.5f;
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  const auto probs = Softmax(logits, 0.8);
  std::set<int32_t> nucleus;
  double cum = 0.0;
  for (int32_t t : order) {
    nucleus.insert(t);
    cum += probs[t];
    if (cum >= 0.5) break;
  }
  ASSERT_GT(nucleus.size(), 4096u);  // larger than what is simply sorted
  Sampler sampler(p, 4);
  std::set<int32_t> seen;
  for (int i = 0; i < 200; ++i) {
    const int32_t t = sampler.Sample(logits, {}, {});
    EXPECT_TRUE(nucleus.count(t)) << t;
    seen.insert(t);
  }
  EXPECT_GT(seen.size(), 50u);  // it really samples, not just argmax
}

TEST(SamplerTest, TopPBoundaryOnLargeVocabulary) {
  // Two big tokens A (0.4) and B (0.35) plus a long tail of 100K distinct tiny tokens (0.25 in
  // all). top_p = 0.7 keeps exactly {A, B}: B is the token where the mass crosses the target.
  const int vocab = 100002;
  const int32_t a = 777, b = 31415;
  std::mt19937 rng(5);
  std::uniform_real_distribution<double> jitter(0.9, 1.1);
  std::vector<double> probs(vocab);
  double tail = 0.0;
  for (int i = 0; i < vocab; ++i) tail += probs[i] = (i == a || i == b) ? 0.0 : jitter(rng);
  for (double& p : probs) p *= 0.25 / tail;
  probs[a] = 0.4;
  probs[b] = 0.35;
  const auto logits = LogitsFromProbs(probs);

  SamplingParams p = Params(1.0f);
  p.top_p = 0.7f;
  Sampler sampler(p, 8);
  std::map<int32_t, int> counts;
  for (int i = 0; i < 400; ++i) ++counts[sampler.Sample(logits, {}, {})];
  EXPECT_EQ(counts.size(), 2u);
  EXPECT_NEAR(counts[a] / 400.0, 0.4 / 0.75, 0.08);
  EXPECT_NEAR(counts[b] / 400.0, 0.35 / 0.75, 0.08);

  // top_p = 0.8 cuts inside the tail: A, B and the best tail tokens up to 0.05 more mass.
  std::vector<int32_t> order(vocab);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int x, int y) { return logits[x] > logits[y]; });
  const auto exact = Softmax(logits);
  std::set<int32_t> nucleus;
  double cum = 0.0;
  for (int32_t t : order) {
    nucleus.insert(t);
    cum += exact[t];
    if (cum >= 0.8) break;
  }
  ASSERT_GT(nucleus.size(), 4096u);
  p.top_p = 0.8f;
  Sampler wide(p, 8);
  int tail_draws = 0;
  for (int i = 0; i < 400; ++i) {
    const int32_t t = wide.Sample(logits, {}, {});
    EXPECT_TRUE(nucleus.count(t)) << t;
    tail_draws += (t != a && t != b);
  }
  EXPECT_NEAR(tail_draws / 400.0, 0.05 / 0.8, 0.04);

  // top_k = 50000 (a selection, not a heap) then top_p = 0.9 over the renormalised top-k mass
  // (0.75 + about 0.125): A, B and about 0.0375 of tail mass, a smaller nucleus than above.
  double top_k_mass = 0.0;
  for (int i = 0; i < 50000; ++i) top_k_mass += exact[order[i]];
  std::set<int32_t> nucleus_k;
  cum = 0.0;
  for (int32_t t : order) {
    nucleus_k.insert(t);
    cum += exact[t];
    if (cum >= 0.9 * top_k_mass) break;
  }
  ASSERT_LT(nucleus_k.size(), nucleus.size());
  ASSERT_GT(nucleus_k.size(), 4096u);
  p.top_k = 50000;
  p.top_p = 0.9f;
  Sampler both(p, 8);
  for (int i = 0; i < 200; ++i) {
    const int32_t t = both.Sample(logits, {}, {});
    EXPECT_TRUE(nucleus_k.count(t)) << t;
  }
}

TEST(SamplerTest, TopKThenTopPRenormalisesOverTopK) {
  // Probabilities 0.4, 0.3, 0.2, 0.1; top_k = 2 renormalises to 4/7, 3/7; top_p = 0.5 then keeps
  // only the best (4/7 >= 0.5), whereas top_p alone would keep two tokens.
  const auto logits = LogitsFromProbs({0.1, 0.4, 0.2, 0.3});
  SamplingParams p = Params(1.0f);
  p.top_k = 2;
  p.top_p = 0.5f;
  Sampler both(p, 1);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(both.Sample(logits, {}, {}), 1);
  p.top_k = 0;
  Sampler only_p(p, 1);
  const auto freq = Frequencies(only_p, logits, 5000);
  EXPECT_GT(freq[3], 0.3);
}

TEST(SamplerTest, MinPDropsUnlikelyTokens) {
  const auto logits = LogitsFromProbs({0.06, 0.4, 0.3, 0.2, 0.04});
  SamplingParams p = Params(1.0f);
  p.min_p = 0.2f;  // threshold 0.2 * 0.4 = 0.08: keeps {1, 2, 3}
  Sampler sampler(p, 13);
  const auto freq = Frequencies(sampler, logits, 20000);
  EXPECT_EQ(freq[0] + freq[4], 0.0);
  EXPECT_NEAR(freq[1], 0.4 / 0.9, 0.015);
  EXPECT_NEAR(freq[2], 0.3 / 0.9, 0.015);
  EXPECT_NEAR(freq[3], 0.2 / 0.9, 0.015);
}

TEST(SamplerTest, TemperatureScalesTheDistribution) {
  const auto logits = RandomLogits(8, 5, 1.0f);
  for (double temperature : {0.5, 1.0, 3.0}) {
    Sampler sampler(Params(static_cast<float>(temperature)), 17);
    const auto freq = Frequencies(sampler, logits, 20000);
    const auto expected = Softmax(logits, temperature);
    for (size_t t = 0; t < logits.size(); ++t) {
      EXPECT_NEAR(freq[t], expected[t], 0.015) << "T=" << temperature << " token " << t;
    }
  }
  // Near zero: (almost) always the argmax.
  Sampler cold(Params(0.02f), 17);
  const auto cold_freq = Frequencies(cold, logits, 2000);
  EXPECT_GT(cold_freq[Argmax(logits)], 0.99);
  // Very hot: close to uniform.
  Sampler hot(Params(1000.0f), 17);
  const auto hot_freq = Frequencies(hot, logits, 20000);
  for (double f : hot_freq) EXPECT_NEAR(f, 1.0 / 8, 0.015);
}

TEST(SamplerTest, RepetitionPenaltyOverPromptAndGenerated) {
  SamplingParams p = Params(0.0f);
  p.repetition_penalty = 1.5f;
  Sampler sampler(p, 0);
  const std::vector<float> positive = {2.0f, 1.6f, -1.0f};  // 2.0 / 1.5 = 1.33 < 1.6
  const std::vector<int32_t> seen_0 = {0, 0, 0};
  EXPECT_EQ(sampler.Sample(positive, {}, {}), 0);
  EXPECT_EQ(sampler.Sample(positive, seen_0, {}), 1);  // via the prompt
  EXPECT_EQ(sampler.Sample(positive, {}, seen_0), 1);  // via the generated tokens
  // Negative logits are multiplied: -1.0 * 1.5 = -1.5 < -1.2.
  const std::vector<float> negative = {-1.0f, -1.2f, -5.0f};
  EXPECT_EQ(sampler.Sample(negative, {}, {}), 0);
  EXPECT_EQ(sampler.Sample(negative, seen_0, {}), 1);
  // Applied once per distinct token however often it occurs: 2.0 / 1.5 = 1.33 > 1.3.
  const std::vector<float> close = {2.0f, 1.3f};
  EXPECT_EQ(sampler.Sample(close, seen_0, seen_0), 0);
  // Ids outside the vocabulary are ignored.
  const std::vector<int32_t> bad = {-4, 99};
  EXPECT_EQ(sampler.Sample(positive, bad, bad), 0);
}

TEST(SamplerTest, PresenceAndFrequencyPenaltiesUseGeneratedTokensOnly) {
  const std::vector<float> logits = {1.0f, 0.8f, 0.0f};
  SamplingParams presence = Params(0.0f);
  presence.presence_penalty = 0.5f;
  Sampler ps(presence, 0);
  const std::vector<int32_t> once = {0};
  const std::vector<int32_t> thrice = {0, 2, 0, 0};
  EXPECT_EQ(ps.Sample(logits, {}, {}), 0);
  EXPECT_EQ(ps.Sample(logits, once, {}), 0);  // the prompt does not count
  EXPECT_EQ(ps.Sample(logits, {}, once), 1);  // 1.0 - 0.5 < 0.8

  SamplingParams frequency = Params(0.0f);
  frequency.frequency_penalty = 0.1f;
  Sampler fs(frequency, 0);
  EXPECT_EQ(fs.Sample(logits, {}, once), 0);    // 1.0 - 0.1 > 0.8
  EXPECT_EQ(fs.Sample(logits, {}, thrice), 1);  // 1.0 - 0.3 < 0.8
  EXPECT_EQ(fs.Sample(logits, thrice, {}), 0);

  // Repeated calls leave no state behind (scratch counters are reset).
  EXPECT_EQ(fs.Sample(logits, {}, once), 0);
}

TEST(SamplerTest, LogprobsAreLogSoftmaxOfTheProcessedDistribution) {
  const auto logits = RandomLogits(100, 8);
  SamplingParams p = Params(0.7f);
  p.logprobs = 5;
  p.top_k = 3;  // truncation does not change the reported values
  p.presence_penalty = 0.4f;
  const std::vector<int32_t> generated = {3, 3, 17};
  std::vector<float> processed = logits;
  processed[3] -= 0.4f;
  processed[17] -= 0.4f;
  const auto ref = Softmax(processed, 0.7);

  Sampler sampler(p, 23);
  for (int step = 0; step < 20; ++step) {
    SampleInfo info;
    const int32_t t = sampler.Sample(logits, {}, generated, &info);
    EXPECT_NEAR(info.logprob, std::log(ref[t]), 1e-4);
    ASSERT_EQ(info.top.size(), 5u);
    double mass = 0.0;
    for (size_t i = 0; i < info.top.size(); ++i) {
      const auto& alt = info.top[i];
      EXPECT_NEAR(alt.logprob, std::log(ref[alt.token]), 1e-4);
      if (i > 0) {
        EXPECT_GE(info.top[i - 1].logprob, alt.logprob);
      }
      mass += std::exp(alt.logprob);
    }
    EXPECT_LE(mass, 1.0 + 1e-6);
    // The top-5 are the five best tokens of the reference, and the chosen token is among the
    // top_k = 3 best.
    std::vector<int32_t> order(ref.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int a, int b) { return ref[a] > ref[b]; });
    for (int i = 0; i < 5; ++i) EXPECT_EQ(info.top[i].token, order[i]);
    EXPECT_TRUE(t == order[0] || t == order[1] || t == order[2]);
  }

  // Greedy reports log-softmax of the (penalised) logits, without temperature.
  SamplingParams g = Params(0.0f);
  g.logprobs = 2;
  Sampler greedy(g, 0);
  SampleInfo info;
  const int32_t t = greedy.Sample(logits, {}, {}, &info);
  const auto greedy_ref = Softmax(logits, 1.0);
  EXPECT_EQ(t, Argmax(logits));
  EXPECT_NEAR(info.logprob, std::log(greedy_ref[t]), 1e-4);
  EXPECT_EQ(info.top[0].token, t);
  EXPECT_FLOAT_EQ(info.top[0].logprob, info.logprob);
}

TEST(SamplerTest, FullVocabularySamplingNeverPicksMaskedTokens) {
  std::vector<float> logits = RandomLogits(1000, 2, 0.5f);
  for (size_t i = 0; i < logits.size(); i += 2) logits[i] = -INFINITY;  // e.g. grammar masks
  Sampler sampler(Params(1.0f), 31);
  for (int i = 0; i < 2000; ++i) EXPECT_EQ(sampler.Sample(logits, {}, {}) % 2, 1);
}

// ------------------------------------------------------------------------------------------------
// Device halves (PrepareDevice / FinishDevice); the device itself is tested in
// tests/gpu/sampling_gpu_test.cc.

// The uniforms a sampler seeded with `seed` draws, in order.
std::vector<double> Uniforms(uint64_t seed, int n) {
  std::mt19937_64 rng(seed);
  std::vector<double> u;
  for (int i = 0; i < n; ++i) u.push_back(static_cast<double>(rng() >> 11) * 0x1.0p-53);
  return u;
}

TEST(SamplerDeviceTest, PrepareResolvesTheParameters) {
  SamplingParams p = Params(0.7f);
  p.top_k = 50;
  p.top_p = 0.9f;
  p.min_p = -0.5f;
  p.logprobs = 5;
  Sampler sampler(p, 1);
  DeviceSampleRow row;
  std::vector<PenaltyToken> penalties;
  EXPECT_EQ(sampler.PrepareDevice(1000, {}, {}, /*want_info=*/true, &row, &penalties), 0);
  EXPECT_FALSE(row.greedy);
  EXPECT_EQ(row.temperature, 0.7f);
  EXPECT_EQ(row.top_k, 50);
  EXPECT_EQ(row.top_p, 0.9f);
  EXPECT_EQ(row.min_p, 0.0f);  // negative: off
  EXPECT_EQ(row.repetition_penalty, 1.0f);
  EXPECT_EQ(row.presence_penalty, 0.0f);
  EXPECT_EQ(row.frequency_penalty, 0.0f);
  EXPECT_EQ(row.num_logprobs, 5);
  EXPECT_EQ(row.uniform, Uniforms(1, 1)[0]);
  EXPECT_TRUE(penalties.empty());
  // top_k >= V is off; logprobs are capped at V, and -1 when no info is wanted.
  sampler.PrepareDevice(50, {}, {}, true, &row, &penalties);
  EXPECT_EQ(row.top_k, 0);
  sampler.PrepareDevice(3, {}, {}, true, &row, &penalties);
  EXPECT_EQ(row.num_logprobs, 3);
  sampler.PrepareDevice(1000, {}, {}, false, &row, &penalties);
  EXPECT_EQ(row.num_logprobs, -1);

  // Greedy (temperature below 1e-5) peeks no draw; a repetition penalty <= 0 is off as in Sample().
  SamplingParams g = Params(1e-6f);
  g.repetition_penalty = 0.0f;  // <= 0: off, as in Sample()
  Sampler greedy(g, 1);
  greedy.PrepareDevice(1000, {}, {}, false, &row, &penalties);
  EXPECT_TRUE(row.greedy);
  EXPECT_EQ(row.uniform, 0.0);
  EXPECT_EQ(row.repetition_penalty, 1.0f);
}

TEST(SamplerDeviceTest, PenaltyTokensAreDistinctWithGeneratedCounts) {
  const std::vector<int32_t> prompt = {5, 7, 5, -1, 1000, 3};
  const std::vector<int32_t> generated = {7, 9, 9, -3, 9, 2000, 3};
  auto entries = [&](const SamplingParams& p) {
    Sampler sampler(p, 0);
    DeviceSampleRow row;
    std::vector<PenaltyToken> penalties = {{99, 99}};  // appended to, not cleared
    const int32_t n = sampler.PrepareDevice(100, prompt, generated, false, &row, &penalties);
    EXPECT_EQ(n + 1, static_cast<int32_t>(penalties.size()));
    EXPECT_EQ(penalties[0].id, 99);
    std::map<int32_t, int32_t> out;
    for (size_t i = 1; i < penalties.size(); ++i) {
      EXPECT_TRUE(out.emplace(penalties[i].id, penalties[i].count).second) << "duplicate";
    }
    return out;
  };
  SamplingParams all = Params(1.0f);
  all.repetition_penalty = 1.3f;
  all.presence_penalty = 0.5f;
  all.frequency_penalty = 0.2f;
  EXPECT_EQ(entries(all), (std::map<int32_t, int32_t>{{3, 1}, {5, 0}, {7, 1}, {9, 3}}));
  // Without the repetition penalty the prompt does not matter.
  SamplingParams presence = Params(1.0f);
  presence.frequency_penalty = -0.1f;
  EXPECT_EQ(entries(presence), (std::map<int32_t, int32_t>{{3, 1}, {7, 1}, {9, 3}}));
  SamplingParams repetition = Params(1.0f);
  repetition.repetition_penalty = 0.8f;
  EXPECT_EQ(entries(repetition), (std::map<int32_t, int32_t>{{3, 1}, {5, 0}, {7, 1}, {9, 3}}));
  EXPECT_TRUE(entries(Params(1.0f)).empty());
}

TEST(SamplerDeviceTest, PenaltyTokensReproduceTheCpuPenalties) {
  // Applying the entries as the device does (repetition on each, presence + frequency * count on
  // those with count > 0) gives the logits Sample() penalises: same greedy token and logprobs.
  std::mt19937 rng(3);
  for (int trial = 0; trial < 50; ++trial) {
    const int vocab = 200;
    const auto logits = RandomLogits(vocab, 100 + trial);
    std::vector<int32_t> prompt, generated;
    for (int i = 0; i < 60; ++i) prompt.push_back(static_cast<int32_t>(rng() % 230) - 10);
    for (int i = 0; i < 40; ++i) generated.push_back(static_cast<int32_t>(rng() % 230) - 10);
    SamplingParams p = Params(0.0f);
    p.repetition_penalty = trial % 3 == 0 ? 1.0f : 1.4f;
    p.presence_penalty = trial % 2 == 0 ? 0.3f : 0.0f;
    p.frequency_penalty = trial % 5 == 0 ? 0.0f : 0.25f;
    p.logprobs = 3;
    Sampler sampler(p, 0);
    DeviceSampleRow row;
    std::vector<PenaltyToken> penalties;
    sampler.PrepareDevice(vocab, prompt, generated, true, &row, &penalties);
    std::vector<float> work = logits;
    for (const PenaltyToken& t : penalties) {
      float& v = work[t.id];
      if (row.repetition_penalty != 1.0f) {
        v = v > 0.0f ? v / row.repetition_penalty : v * row.repetition_penalty;
      }
      if (t.count > 0) {
        v -= row.presence_penalty + row.frequency_penalty * static_cast<float>(t.count);
      }
    }
    SamplingParams unpenalised = Params(0.0f);
    unpenalised.logprobs = p.logprobs;
    Sampler plain(unpenalised, 0);
    SampleInfo want, got;
    const int32_t expected = plain.Sample(work, {}, {}, &want);
    EXPECT_EQ(sampler.Sample(logits, prompt, generated, &got), expected);
    EXPECT_EQ(got.logprob, want.logprob);
    ASSERT_EQ(got.top.size(), want.top.size());
    for (size_t i = 0; i < got.top.size(); ++i) {
      EXPECT_EQ(got.top[i].token, want.top[i].token);
      EXPECT_EQ(got.top[i].logprob, want.top[i].logprob);
    }
  }
}

TEST(SamplerDeviceTest, UniformStaysPendingUntilTheDeviceUsesIt) {
  const auto u = Uniforms(42, 4);
  Sampler sampler(Params(1.0f), 42);
  DeviceSampleRow row;
  std::vector<PenaltyToken> penalties;
  sampler.PrepareDevice(4, {}, {}, false, &row, &penalties);
  EXPECT_EQ(row.uniform, u[0]);
  sampler.PrepareDevice(4, {}, {}, false, &row, &penalties);  // e.g. a retried launch
  EXPECT_EQ(row.uniform, u[0]);
  DeviceSampleResult unused;  // greedy-like result: all -inf, the draw was not needed
  unused.token = 0;
  EXPECT_EQ(sampler.FinishDevice(unused, nullptr), 0);
  sampler.PrepareDevice(4, {}, {}, false, &row, &penalties);
  EXPECT_EQ(row.uniform, u[0]);
  DeviceSampleResult used;
  used.token = 2;
  used.used_uniform = true;
  EXPECT_EQ(sampler.FinishDevice(used, nullptr), 2);
  sampler.PrepareDevice(4, {}, {}, false, &row, &penalties);
  EXPECT_EQ(row.uniform, u[1]);
  // A CPU step after an unfinished preparation draws the pending value, then a new one.
  const std::vector<float> logits = LogitsFromProbs({0.1, 0.2, 0.3, 0.4});
  const double cdf[4] = {0.1, 0.3, 0.6, 1.0};
  for (int i = 1; i <= 2; ++i) {
    EXPECT_EQ(sampler.Sample(logits, {}, {}),
              static_cast<int32_t>(std::upper_bound(cdf, cdf + 4, u[i]) - cdf));
  }
  sampler.PrepareDevice(4, {}, {}, false, &row, &penalties);
  EXPECT_EQ(row.uniform, u[3]);
}

TEST(SamplerDeviceTest, FinishFillsTheInfo) {
  SamplingParams p = Params(1.0f);
  p.logprobs = 2;
  Sampler sampler(p, 0);
  const std::vector<TokenLogprob> top = {{4, -0.5f}, {1, -1.5f}};
  DeviceSampleResult result;
  result.token = 4;
  result.used_uniform = true;
  result.logprob = -0.5f;
  result.top = top;
  SampleInfo info;
  info.top = {{9, -9.0f}, {8, -8.0f}, {7, -7.0f}};  // replaced
  EXPECT_EQ(sampler.FinishDevice(result, &info), 4);
  EXPECT_EQ(info.logprob, -0.5f);
  ASSERT_EQ(info.top.size(), 2u);
  EXPECT_EQ(info.top[0].token, 4);
  EXPECT_EQ(info.top[1].token, 1);
  EXPECT_EQ(info.top[1].logprob, -1.5f);
}

TEST(SamplerDeviceTest, MixedCpuAndDeviceStepsKeepThePrngStream) {
  // A device emulated on the host: the inverse CDF of the prepared uniform, and no draw for an
  // all -inf row. Alternating it with CPU steps must give a CPU-only run's tokens.
  const std::vector<float> logits = LogitsFromProbs({0.1, 0.2, 0.3, 0.4});
  const std::vector<float> masked(4, -INFINITY);
  const double cdf[4] = {0.1, 0.3, 0.6, 1.0};
  Sampler mixed(Params(1.0f), 9), cpu_only(Params(1.0f), 9);
  for (int step = 0; step < 200; ++step) {
    const std::vector<float>& l = step % 7 == 3 ? masked : logits;
    const int32_t expected = cpu_only.Sample(l, {}, {});
    if (step % 3 == 0) {
      EXPECT_EQ(mixed.Sample(l, {}, {}), expected) << step;
      continue;
    }
    DeviceSampleRow row;
    std::vector<PenaltyToken> penalties;
    mixed.PrepareDevice(4, {}, {}, false, &row, &penalties);
    DeviceSampleResult result;
    result.used_uniform = &l != &masked;
    result.token = result.used_uniform
                       ? static_cast<int32_t>(std::upper_bound(cdf, cdf + 4, row.uniform) - cdf)
                       : 0;
    EXPECT_EQ(mixed.FinishDevice(result, nullptr), expected) << step;
  }
}

// ------------------------------------------------------------------------------------------------
// StopMatcher

bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    const int len = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 0;
    if (len == 0 || i + len > s.size()) return false;
    for (int k = 1; k < len; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += len;
  }
  return true;
}

// Feeds `deltas`; returns everything emitted (+ Flush when not stopped) and whether it stopped.
std::pair<std::string, bool> FeedAll(const std::vector<std::string>& stops,
                                     const std::vector<std::string>& deltas) {
  StopMatcher m(stops);
  std::string out;
  bool stopped = false;
  for (const auto& d : deltas) {
    const auto r = m.Push(d);
    EXPECT_TRUE(IsValidUtf8(r.emit)) << r.emit;
    out += r.emit;
    stopped = r.stopped;
  }
  if (!stopped) out += m.Flush();
  return {out, stopped};
}

TEST(StopMatcherTest, StopInsideOneDelta) {
  StopMatcher m({"STOP"});
  const auto r = m.Push("hello STOP world");
  EXPECT_EQ(r.emit, "hello ");
  EXPECT_TRUE(r.stopped);
  EXPECT_TRUE(m.Push("more").stopped);
  EXPECT_EQ(m.Push("more").emit, "");
  EXPECT_EQ(m.Flush(), "");
}

TEST(StopMatcherTest, StopAcrossDeltasIsHeldBack) {
  StopMatcher m({"STOP"});
  auto r = m.Push("hello S");
  EXPECT_EQ(r.emit, "hello ");
  EXPECT_FALSE(r.stopped);
  r = m.Push("T");
  EXPECT_EQ(r.emit, "");
  r = m.Push("O");
  EXPECT_EQ(r.emit, "");
  r = m.Push("P and the rest");
  EXPECT_EQ(r.emit, "");
  EXPECT_TRUE(r.stopped);
}

TEST(StopMatcherTest, FalseStartIsReleased) {
  StopMatcher m({"STOP"});
  EXPECT_EQ(m.Push("a ST").emit, "a ");
  EXPECT_EQ(m.Push("ART").emit, "START");
  EXPECT_EQ(m.Flush(), "");
}

TEST(StopMatcherTest, StopAtTheVeryStart) {
  EXPECT_EQ(FeedAll({"###"}, {"###", "x"}), std::make_pair(std::string(), true));
  EXPECT_EQ(FeedAll({"###"}, {"#", "##x"}), std::make_pair(std::string(), true));
}

TEST(StopMatcherTest, OverlappingCandidates) {
  StopMatcher m({"abc"});
  EXPECT_EQ(m.Push("ab").emit, "");
  EXPECT_EQ(m.Push("ab").emit, "ab");  // the first "ab" can no longer start "abc"
  const auto r = m.Push("c");
  EXPECT_EQ(r.emit, "");
  EXPECT_TRUE(r.stopped);
  EXPECT_EQ(FeedAll({"aab"}, {"a", "a", "a", "b"}), std::make_pair(std::string("a"), true));
}

TEST(StopMatcherTest, SeveralStopStrings) {
  const std::vector<std::string> stops = {"END", "\n\n", "###"};
  EXPECT_EQ(FeedAll(stops, {"line one\nline", " two END", " x"}),
            std::make_pair(std::string("line one\nline two "), true));
  EXPECT_EQ(FeedAll(stops, {"x ### y END"}), std::make_pair(std::string("x "), true));
  EXPECT_EQ(FeedAll(stops, {"para\n", "\nnext"}), std::make_pair(std::string("para"), true));
  // The stop that completes first wins, whatever the delta split.
  EXPECT_EQ(FeedAll({"abcd", "c"}, {"abcd"}), std::make_pair(std::string("ab"), true));
  EXPECT_EQ(FeedAll({"abcd", "c"}, {"abc", "d"}), std::make_pair(std::string("ab"), true));
  EXPECT_EQ(FeedAll({"bc", "abc"}, {"xabc"}), std::make_pair(std::string("x"), true));
}

TEST(StopMatcherTest, NoMatchFlushReturnsHeldText) {
  StopMatcher m({"</answer>"});
  EXPECT_EQ(m.Push("the answer is 42 </ans").emit, "the answer is 42 ");
  EXPECT_EQ(m.Flush(), "</ans");
  EXPECT_EQ(FeedAll({}, {"no ", "stops"}), std::make_pair(std::string("no stops"), false));
  EXPECT_EQ(FeedAll({""}, {"empty ", "stop ignored"}),
            std::make_pair(std::string("empty stop ignored"), false));
}

TEST(StopMatcherTest, MultiByteCharactersAreNeverSplit) {
  // "é" is C3 A9; the stop "é!" has the prefix "é" (two bytes): hold back the whole character.
  StopMatcher m({"é!"});
  auto r = m.Push("café");
  EXPECT_EQ(r.emit, "caf");
  r = m.Push("?");
  EXPECT_EQ(r.emit, "é?");
  // A delta that ends inside a character: the partial character waits for its other bytes.
  StopMatcher n({"STOP"});
  EXPECT_EQ(n.Push("ab\xE6\x97").emit, "ab");
  EXPECT_EQ(n.Push("\xA5 ok").emit, "日 ok");
  // Stop strings made of multi-byte characters, spread over deltas.
  EXPECT_EQ(FeedAll({"終わり"}, {"東京", "の終", "わり", "です"}),
            std::make_pair(std::string("東京の"), true));
  EXPECT_EQ(FeedAll({"😀😀"}, {"a😀", "b😀", "😀c"}), std::make_pair(std::string("a😀b"), true));
}

TEST(StopMatcherTest, RandomSplitsMatchReference) {
  // Text over a small alphabet (so stops actually occur), with multi-byte characters.
  const std::vector<std::string> alphabet = {"a", "b", "c", " ", "é", "日", "😀"};
  std::mt19937 rng(77);
  int stopped_count = 0;
  for (int trial = 0; trial < 500; ++trial) {
    std::vector<std::string> chars;
    const int len = 1 + rng() % 30;
    for (int i = 0; i < len; ++i) chars.push_back(alphabet[rng() % alphabet.size()]);
    std::string text;
    for (const auto& c : chars) text += c;
    std::vector<std::string> stops(1 + rng() % 3);
    for (auto& s : stops) {
      const int slen = 1 + rng() % 3;
      for (int i = 0; i < slen; ++i) s += alphabet[rng() % alphabet.size()];
    }
    // Reference: the occurrence that ends first (longest on ties).
    size_t best_start = std::string::npos, best_end = std::string::npos;
    for (const auto& s : stops) {
      const size_t pos = text.find(s);
      if (pos == std::string::npos) continue;
      if (pos + s.size() < best_end || (pos + s.size() == best_end && pos < best_start)) {
        best_start = pos;
        best_end = pos + s.size();
      }
    }
    const bool expect_stop = best_start != std::string::npos;
    const std::string expected = expect_stop ? text.substr(0, best_start) : text;
    // Random character-aligned deltas.
    std::vector<std::string> deltas;
    for (size_t i = 0; i < chars.size();) {
      const size_t n = 1 + rng() % 4;
      std::string d;
      for (size_t k = 0; k < n && i < chars.size(); ++k) d += chars[i++];
      deltas.push_back(d);
    }
    EXPECT_EQ(FeedAll(stops, deltas), std::make_pair(expected, expect_stop)) << "trial " << trial;
    stopped_count += expect_stop;
  }
  EXPECT_GT(stopped_count, 100);
  EXPECT_LT(stopped_count, 450);
}

}  // namespace
}  // namespace squeeze
