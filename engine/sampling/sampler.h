// Per-sequence token sampling from logits, vLLM order:
//   penalties -> (temperature == 0: greedy) -> temperature -> top_k -> top_p -> min_p -> draw.
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "engine/sampling/sampling_params.h"

namespace squeeze {

struct TokenLogprob {
  int32_t token = -1;
  float logprob = 0.0f;
};

// Log-probabilities of one step. They are log-softmax values of the *processed* distribution over
// the whole vocabulary: after the penalties and the temperature (greedy: penalties only), before
// top_k / top_p / min_p truncation, so alternatives outside the sampled set still get a finite
// value. A token whose processed logit is -inf gets -inf.
struct SampleInfo {
  float logprob = 0.0f;           // of the chosen token
  std::vector<TokenLogprob> top;  // the min(params.logprobs, V) most likely tokens, best first
};

class Sampler {
 public:
  // `seed` seeds this sequence's own PRNG: same seed + same inputs => same tokens, on any platform.
  Sampler(const SamplingParams& params, uint64_t seed);

  // Chooses the next token from `logits` ([V] floats, not modified). `prompt` and `generated` are
  // the sequence's tokens so far (ids outside [0, V) are ignored): the repetition penalty looks at
  // both, presence and frequency penalties at `generated` only. temperature < 1e-5 is greedy;
  // greedy ties pick the lowest id. NaN logits count as -inf. Returns -1 only when V == 0.
  // Cost O(V) per call whatever the truncation (no full sort of the vocabulary).
  int32_t Sample(std::span<const float> logits, std::span<const int32_t> prompt,
                 std::span<const int32_t> generated, SampleInfo* info = nullptr);

  const SamplingParams& params() const { return params_; }

 private:
  void ApplyPenalties(std::span<const int32_t> prompt, std::span<const int32_t> generated);
  // Truncation steps. Each returns the worst id still kept: the kept set is that id and every id
  // Better than it. O(V), never a full sort of the vocabulary.
  // SelectTopK leaves the top-k ids, unordered, in order_[0, top_k).
  int32_t SelectTopK();
  // Nucleus of the top-k ids (`fallback` = SelectTopK's result) or, with fallback == -1, of the
  // whole vocabulary; needs probs_ of the candidates; returns `fallback` when nothing is cut.
  int32_t SelectTopP(int32_t fallback, float lmax);
  // `sum_all`: sum of exp(work_ - max) over the vocabulary if already known, else < 0.
  void FillInfo(int32_t chosen, SampleInfo* info, double sum_all);
  // The total order used for truncation: higher processed logit first, lower id on ties.
  bool Better(int32_t a, int32_t b) const;
  // Uniform double in [0, 1) from exactly 53 PRNG bits (std::uniform_real_distribution is
  // implementation-defined, this is not).
  double Uniform();

  SamplingParams params_;
  std::mt19937_64 rng_;
  // Scratch reused across calls (V-sized once warmed up, so no per-token allocation).
  std::vector<float> work_;          // [V] processed logits
  std::vector<float> probs_;         // [V] exp(work_ - max), unnormalised; top-k ids only if top_k
  std::vector<int32_t> order_;       // [top_k] ids kept by top-k
  std::vector<int32_t> scratch_;     // ids whose order decides the top-p cutoff
  std::vector<double> bucket_mass_;  // [kBuckets] top-p mass per logit bucket
  std::vector<int32_t> counts_;      // [V] generated-token counts, all zero between calls
  std::vector<uint8_t> seen_;        // [V] repetition-penalty marks, all zero between calls
};

}  // namespace squeeze
