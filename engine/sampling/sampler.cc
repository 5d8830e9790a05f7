#include "engine/sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace squeeze {

namespace {

// The `n` best of ids [0, vocab) under `better`, best first, through a size-n heap whose front
// is the worst kept id: O(V log n).
template <class Better>
std::vector<int32_t> TopIds(int32_t vocab, int32_t n, Better better) {
  std::vector<int32_t> heap;
  if (n <= 0) return heap;
  heap.reserve(n + 1);
  for (int32_t id = 0; id < vocab; ++id) {
    if (static_cast<int32_t>(heap.size()) < n) {
      heap.push_back(id);
      std::push_heap(heap.begin(), heap.end(), better);
    } else if (better(id, heap.front())) {
      std::pop_heap(heap.begin(), heap.end(), better);
      heap.back() = id;
      std::push_heap(heap.begin(), heap.end(), better);
    }
  }
  std::sort(heap.begin(), heap.end(), better);
  return heap;
}

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Below this temperature logits/T overflows float for ordinary logit gaps; vLLM also treats such
// temperatures as greedy.
constexpr float kMinTemperature = 1e-5f;
// Top-p: candidate sets up to this size are simply sorted; larger ones are bucketed by logit
// (kBuckets buckets over kBucketRange nats below the max; the last one takes everything further
// away, whose probability is below e^-32 of the max).
constexpr int32_t kSortLimit = 2048;
constexpr int32_t kBuckets = 4096;
constexpr float kBucketRange = 32.0f;

// Index of the largest value, lowest index on ties.
int32_t Argmax(const std::vector<float>& v) {
  int32_t best = 0;
  for (int32_t i = 1; i < static_cast<int32_t>(v.size()); ++i) {
    if (v[i] > v[best]) best = i;
  }
  return best;
}

}  // namespace

Sampler::Sampler(const SamplingParams& params, uint64_t seed) : params_(params), rng_(seed) {}

double Sampler::Uniform() {
  if (has_pending_) {
    has_pending_ = false;
    return pending_;
  }
  return static_cast<double>(rng_() >> 11) * 0x1.0p-53;
}

double Sampler::PeekUniform() {
  if (!has_pending_) {
    pending_ = Uniform();
    has_pending_ = true;
  }
  return pending_;
}

bool Sampler::Better(int32_t a, int32_t b) const {
  return work_[a] > work_[b] || (work_[a] == work_[b] && a < b);
}

int32_t Sampler::Sample(std::span<const float> logits, std::span<const int32_t> prompt,
                        std::span<const int32_t> generated, SampleInfo* info) {
  const int32_t vocab = static_cast<int32_t>(logits.size());
  if (vocab == 0) return -1;
  work_.assign(logits.begin(), logits.end());
  for (float& l : work_) {
    if (std::isnan(l)) l = kNegInf;
  }
  ApplyPenalties(prompt, generated);

  const bool greedy = params_.temperature < kMinTemperature;
  if (!greedy && params_.temperature != 1.0f) {
    for (float& l : work_) l /= params_.temperature;
  }
  const int32_t best = Argmax(work_);
  const float lmax = work_[best];
  // Greedy, or a degenerate distribution (everything -inf, or a +inf logit) where exp() would
  // produce NaN: the argmax is the only sensible answer.
  if (greedy || !std::isfinite(lmax)) {
    if (info != nullptr) FillInfo(best, info, /*sum_all=*/-1.0);
    return best;
  }

  // The kept set is {i : i is `cutoff` or better in the (logit desc, id asc) order} minus the
  // tokens below the min_p threshold. The draw scans ids in increasing order, so the token drawn
  // for a given uniform does not depend on how the standard library orders a partition.
  // probs_[i] = exp(l_i - lmax) in (0, 1] is computed only for ids that survive top-k.
  const bool top_k_on = params_.top_k > 0 && params_.top_k < vocab;
  const bool top_p_on = params_.top_p < 1.0f;
  probs_.resize(vocab);
  int32_t cutoff = -1;    // -1: no top-k / top-p truncation
  double sum_all = -1.0;  // sum of probs_ over the vocabulary, when all of it is computed
  if (top_k_on) {
    cutoff = SelectTopK();
    for (int32_t i = 0; i < params_.top_k; ++i) {
      probs_[order_[i]] = std::exp(work_[order_[i]] - lmax);
    }
  } else {
    sum_all = 0.0;
    for (int32_t i = 0; i < vocab; ++i) {
      probs_[i] = std::exp(work_[i] - lmax);
      sum_all += probs_[i];
    }
  }
  if (top_p_on) cutoff = SelectTopP(cutoff, lmax);
  // p_i < min_p * p_max  <=>  probs_[i] < min_p (probs_ is relative to the max already).
  const float min_p = std::max(params_.min_p, 0.0f);
  auto kept = [&](int32_t i) { return (cutoff < 0 || !Better(cutoff, i)) && probs_[i] >= min_p; };

  double total = 0.0;
  for (int32_t i = 0; i < vocab; ++i) {
    if (kept(i)) total += probs_[i];
  }
  const double r = Uniform() * total;
  double acc = 0.0;
  int32_t chosen = best;
  for (int32_t i = 0; i < vocab; ++i) {
    if (!kept(i) || probs_[i] == 0.0f) continue;
    acc += probs_[i];
    chosen = i;  // also the fallback when rounding leaves r >= acc at the end
    if (r < acc) break;
  }
  if (info != nullptr) FillInfo(chosen, info, sum_all);
  return chosen;
}

int32_t Sampler::PrepareDevice(int32_t vocab, std::span<const int32_t> prompt,
                               std::span<const int32_t> generated, bool want_info,
                               DeviceSampleRow* row, std::vector<PenaltyToken>* penalties) {
  // The same decisions as Sample(), made once here so the device applies them as is.
  row->greedy = params_.temperature < kMinTemperature;
  row->temperature = params_.temperature;
  row->top_k = params_.top_k > 0 && params_.top_k < vocab ? params_.top_k : 0;
  row->top_p = params_.top_p;
  row->min_p = std::max(params_.min_p, 0.0f);
  const bool repetition = params_.repetition_penalty != 1.0f && params_.repetition_penalty > 0.0f;
  const bool presence = params_.presence_penalty != 0.0f || params_.frequency_penalty != 0.0f;
  row->repetition_penalty = repetition ? params_.repetition_penalty : 1.0f;
  row->presence_penalty = presence ? params_.presence_penalty : 0.0f;
  row->frequency_penalty = presence ? params_.frequency_penalty : 0.0f;
  row->num_logprobs = want_info ? std::min<int32_t>(std::max(params_.logprobs, 0), vocab) : -1;
  row->uniform = row->greedy ? 0.0 : PeekUniform();

  // Distinct tokens through the V-sized scratch marks (all zero again on return).
  const size_t first = penalties->size();
  if (repetition || presence) {
    auto in_vocab = [vocab](int32_t id) { return id >= 0 && id < vocab; };
    counts_.resize(vocab, 0);
    seen_.resize(vocab, 0);
    for (int32_t id : generated) {
      if (in_vocab(id)) ++counts_[id];
    }
    for (int32_t id : generated) {
      if (!in_vocab(id) || seen_[id]) continue;
      seen_[id] = 1;
      penalties->push_back({id, counts_[id]});
    }
    if (repetition) {
      for (int32_t id : prompt) {
        if (!in_vocab(id) || seen_[id]) continue;
        seen_[id] = 1;
        penalties->push_back({id, 0});
      }
    }
    for (size_t i = first; i < penalties->size(); ++i) {
      counts_[(*penalties)[i].id] = 0;
      seen_[(*penalties)[i].id] = 0;
    }
  }
  return static_cast<int32_t>(penalties->size() - first);
}

int32_t Sampler::FinishDevice(const DeviceSampleResult& result, SampleInfo* info) {
  if (result.used_uniform) Uniform();
  if (info != nullptr) {
    info->logprob = result.logprob;
    info->top.assign(result.top.begin(), result.top.end());
  }
  return result.token;
}

void Sampler::ApplyPenalties(std::span<const int32_t> prompt, std::span<const int32_t> generated) {
  const int32_t vocab = static_cast<int32_t>(work_.size());
  auto in_vocab = [vocab](int32_t id) { return id >= 0 && id < vocab; };

  // Repetition penalty (CTRL / HF): once per distinct token of prompt + generated.
  if (params_.repetition_penalty != 1.0f && params_.repetition_penalty > 0.0f) {
    seen_.resize(vocab, 0);
    const float rp = params_.repetition_penalty;
    for (std::span<const int32_t> tokens : {prompt, generated}) {
      for (int32_t id : tokens) {
        if (!in_vocab(id) || seen_[id]) continue;
        seen_[id] = 1;
        work_[id] = work_[id] > 0.0f ? work_[id] / rp : work_[id] * rp;
      }
    }
    for (std::span<const int32_t> tokens : {prompt, generated}) {
      for (int32_t id : tokens) {
        if (in_vocab(id)) seen_[id] = 0;
      }
    }
  }

  // Presence / frequency penalties (OpenAI): l -= presence * [count > 0] + frequency * count.
  if (params_.presence_penalty != 0.0f || params_.frequency_penalty != 0.0f) {
    counts_.resize(vocab, 0);
    for (int32_t id : generated) {
      if (in_vocab(id)) ++counts_[id];
    }
    for (int32_t id : generated) {
      if (!in_vocab(id) || counts_[id] == 0) continue;  // 0: already applied (and reset)
      work_[id] -=
          params_.presence_penalty + params_.frequency_penalty * static_cast<float>(counts_[id]);
      counts_[id] = 0;
    }
  }
}

int32_t Sampler::SelectTopK() {
  const int32_t vocab = static_cast<int32_t>(work_.size());
  const int32_t k = params_.top_k;
  auto better = [this](int32_t a, int32_t b) { return Better(a, b); };
  order_.resize(vocab);
  if (k <= 4096) {
    // One sequential pass with a size-k heap whose front is the worst kept id: after warm-up
    // almost every id is rejected by a single comparison, cheaper than an indirect selection.
    order_.resize(k);
    std::iota(order_.begin(), order_.end(), 0);
    std::make_heap(order_.begin(), order_.end(), better);
    for (int32_t id = k; id < vocab; ++id) {
      if (!Better(id, order_.front())) continue;
      std::pop_heap(order_.begin(), order_.end(), better);
      order_.back() = id;
      std::push_heap(order_.begin(), order_.end(), better);
    }
    return order_.front();
  }
  std::iota(order_.begin(), order_.end(), 0);
  std::nth_element(order_.begin(), order_.begin() + (k - 1), order_.end(), better);
  order_.resize(k);
  return order_[k - 1];
}

int32_t Sampler::SelectTopP(int32_t fallback, float lmax) {
  const int32_t vocab = static_cast<int32_t>(work_.size());
  const bool all_ids = fallback < 0;  // no top-k: the candidates are the whole vocabulary
  const int32_t n = all_ids ? vocab : params_.top_k;
  auto id_at = [&](int32_t i) { return all_ids ? i : order_[i]; };
  auto better = [this](int32_t a, int32_t b) { return Better(a, b); };

  // Nucleus of the candidates' renormalised distribution: the smallest best-first prefix whose
  // mass reaches top_p (at least one token).
  double total = 0.0;
  for (int32_t i = 0; i < n; ++i) total += probs_[id_at(i)];
  const double target = static_cast<double>(params_.top_p) * total;
  double acc = 0.0;
  scratch_.clear();
  if (n <= kSortLimit) {
    for (int32_t i = 0; i < n; ++i) scratch_.push_back(id_at(i));
  } else {
    // Large candidate sets (flat distributions make the nucleus a big part of a 128K vocabulary)
    // get no full sort: ids are bucketed by their logit's distance below the max, bucket masses
    // accumulate best-first to find the bucket where the mass crosses the target, and only that
    // bucket is sorted. Buckets are monotone in the logit, so this is the exact sorted prefix.
    const float scale = static_cast<float>(kBuckets) / kBucketRange;
    auto bucket = [&](int32_t id) {
      const float d = (lmax - work_[id]) * scale;  // +inf for -inf logits
      return d < static_cast<float>(kBuckets - 1) ? static_cast<int32_t>(d) : kBuckets - 1;
    };
    bucket_mass_.assign(kBuckets, 0.0);
    for (int32_t i = 0; i < n; ++i) bucket_mass_[bucket(id_at(i))] += probs_[id_at(i)];
    int32_t b = 0;
    while (b < kBuckets - 1 && acc + bucket_mass_[b] < target) acc += bucket_mass_[b++];
    for (int32_t i = 0; i < n; ++i) {
      const int32_t id = id_at(i);
      if (bucket(id) == b && probs_[id] > 0.0f) scratch_.push_back(id);
    }
  }
  std::sort(scratch_.begin(), scratch_.end(), better);
  for (int32_t id : scratch_) {
    acc += probs_[id];
    if (acc >= target) return id;
  }
  // Rounding kept the mass just below the target: keep every candidate.
  if (!all_ids) return fallback;
  return scratch_.empty() ? -1 : scratch_.back();
}

void Sampler::FillInfo(int32_t chosen, SampleInfo* info, double sum_all) {
  const int32_t vocab = static_cast<int32_t>(work_.size());
  const double lmax = *std::max_element(work_.begin(), work_.end());
  double lse = lmax;
  if (std::isfinite(lmax)) {
    if (sum_all < 0.0) {
      sum_all = 0.0;
      for (float l : work_) sum_all += std::exp(l - static_cast<float>(lmax));
    }
    lse = lmax + std::log(sum_all);
  }
  auto logprob = [&](int32_t id) -> float {
    if (!std::isfinite(lse)) return work_[id] == lmax ? 0.0f : kNegInf;
    return static_cast<float>(work_[id] - lse);
  };
  info->logprob = logprob(chosen);
  info->top.clear();

  const int32_t top_n = std::min<int32_t>(std::max(params_.logprobs, 0), vocab);
  for (int32_t id : TopIds(vocab, top_n, [this](int32_t a, int32_t b) { return Better(a, b); })) {
    info->top.push_back({id, logprob(id)});
  }
}

SampleInfo ScoreToken(std::span<const float> logits, int32_t token, int top_n) {
  SampleInfo info;
  const int32_t vocab = static_cast<int32_t>(logits.size());
  const float lmax = *std::max_element(logits.begin(), logits.end());
  double sum = 0.0;
  for (float l : logits) sum += std::exp(static_cast<double>(l) - lmax);
  const double lse = lmax + std::log(sum);
  auto logprob = [&](int32_t id) { return static_cast<float>(logits[id] - lse); };
  info.logprob = logprob(token);
  auto better = [&](int32_t a, int32_t b) {
    return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
  };
  for (int32_t id : TopIds(vocab, std::min(std::max(top_n, 0), vocab), better)) {
    info.top.push_back({id, logprob(id)});
  }
  return info;
}

}  // namespace squeeze
