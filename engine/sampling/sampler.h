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

// The model's own log-probability of `token` under `logits` (log-softmax of the raw logits: no
// penalties, no temperature) and the `top_n` most likely tokens, best first, lower id on ties:
// how a prompt token is scored (GenerateRequest.prompt_logprobs). `token` must lie in
// [0, logits.size()).
SampleInfo ScoreToken(std::span<const float> logits, int32_t token, int top_n);

// One row of a device sampling launch (engine/backend/cuda/cuda_sampling.h), resolved by
// Sampler::PrepareDevice for a vocabulary of V tokens: a device applies every field as is and
// gets Sample()'s result.
struct DeviceSampleRow {
  bool greedy = false;              // argmax of the penalised logits, no temperature, no draw
  float temperature = 1.0f;         // divides the penalised logits unless greedy or 1
  int32_t top_k = 0;                // 0: off, else in [1, V)
  float top_p = 1.0f;               // >= 1: off
  float min_p = 0.0f;               // >= 0 (0: off)
  float repetition_penalty = 1.0f;  // 1: off; applies to every penalty token
  float presence_penalty = 0.0f;    // presence and frequency apply to penalty tokens with count > 0
  float frequency_penalty = 0.0f;
  int32_t num_logprobs = -1;  // -1: no SampleInfo wanted, else its top size min(logprobs, V)
  double uniform = 0.0;       // in [0, 1): the draw Sample() would make now (see FinishDevice)
};

// A distinct in-vocabulary token of prompt + generated that a penalty applies to.
struct PenaltyToken {
  int32_t id = 0;
  int32_t count = 0;  // occurrences in `generated`; 0: in the prompt only
};

// What a device reports for one row prepared by PrepareDevice.
struct DeviceSampleResult {
  int32_t token = -1;
  bool used_uniform = false;  // the draw consumed DeviceSampleRow::uniform (not greedy, finite max)
  float logprob = 0.0f;       // of `token`, when num_logprobs >= 0
  std::span<const TokenLogprob> top;  // num_logprobs entries, best first
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

  // Device sampling, in two halves around a launch, so that every step may run on the CPU or on a
  // device with the same results and the same PRNG stream.
  //
  // PrepareDevice resolves this call's parameters for logits of `vocab` (>= 1) entries into
  // `row` and appends the distinct penalty tokens of prompt + generated to `penalties` (tokens
  // of the prompt only when the repetition penalty is on; none when no penalty is on), returning
  // how many it appended. O(prompt + generated), no V-sized work once warmed up. Unless greedy,
  // it peeks the uniform Sample() would draw now: it stays pending until FinishDevice reports it
  // used, so preparing again (e.g. after a failed launch) or sampling on the CPU next sees the
  // same value.
  int32_t PrepareDevice(int32_t vocab, std::span<const int32_t> prompt,
                        std::span<const int32_t> generated, bool want_info, DeviceSampleRow* row,
                        std::vector<PenaltyToken>* penalties);
  // Turns the device's result for the row last prepared into Sample()'s return value and `info`
  // (which needs want_info), consuming the pending uniform when the device used it.
  int32_t FinishDevice(const DeviceSampleResult& result, SampleInfo* info);

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
  // implementation-defined, this is not): the pending peeked value if any, else a new draw.
  double Uniform();
  // The value the next Uniform() returns, drawn now if not pending yet.
  double PeekUniform();

  SamplingParams params_;
  std::mt19937_64 rng_;
  bool has_pending_ = false;  // PeekUniform drew `pending_`, no Uniform() has returned it yet
  double pending_ = 0.0;
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
