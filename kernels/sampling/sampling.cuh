// Token sampling on the GPU with exactly the semantics of the CPU Sampler
// (engine/sampling/sampler.h): NaN -> -inf, penalties, greedy argmax (lowest id on ties) or
// temperature -> top_k -> top_p -> min_p -> draw, log-softmax of the processed distribution and
// its top-N. The host resolves each row's parameters and its draw (Sampler::PrepareDevice); only
// the results go back. Tested against the CPU Sampler in tests/gpu/sampling_gpu_test.cc
// (through engine/backend/cuda/cuda_sampling.h). Plain C++ (includable from .cc files); the
// kernel lives in sampling.cu.
//
// One CTA per row. The truncation order "higher processed logit first, lower id on ties" is one
// 64-bit integer key per token; top-k, top-p and top-N are radix selects over it (8 bits a level,
// the survivors compacted into the workspace), so nothing is sorted. Probabilities are
// exp(l - max) rounded as the host's expf rounds them, and every probability mass is an exact
// fixed-point integer sum, so the cumulative sums that decide the top-p cutoff and the drawn
// token do not depend on the summation order (they match the CPU's double sums up to its own
// rounding, ~1e-16 relative).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace squeeze::gpu {

// Largest top-logprobs count of one row.
constexpr int kSamplingMaxLogprobs = 1024;

// One row's parameters, resolved by the host: the kernel applies each field as is.
struct SamplingRowParams {
  float temperature;         // divides the penalised logits unless greedy or 1
  float top_p;               // >= 1: off
  float min_p;               // >= 0; 0: off
  float repetition_penalty;  // 1: off; applies to every penalty entry of the row
  float presence_penalty;    // presence and frequency apply to entries with count > 0
  float frequency_penalty;
  int32_t greedy;         // nonzero: argmax of the penalised logits, no draw
  int32_t top_k;          // 0: off, else in [1, vocab)
  int32_t num_logprobs;   // -1: no logprobs, else the top-N size, in [0, kSamplingMaxLogprobs]
                          // and <= vocab
  int32_t penalty_begin;  // the row's entries: penalties[penalty_begin, + penalty_count)
  int32_t penalty_count;
  int32_t reserved;
  double uniform;  // in [0, 1): the draw, used unless greedy or the max is not finite
};

// A distinct token of the row's prompt + generated tokens (ids must be in [0, vocab)).
struct SamplingPenalty {
  int32_t id;
  int32_t count;  // occurrences among the generated tokens
};

struct SamplingResult {
  int32_t token;
  int32_t used_uniform;  // 1 when the draw used `uniform` (not greedy, finite max)
  float logprob;         // of `token` when num_logprobs >= 0
  int32_t reserved;
};

struct SampledLogprob {
  int32_t token;
  float logprob;
};

struct SamplingLaunchParams {
  const float* logits = nullptr;  // [rows, vocab] fp32, row stride vocab; read only
  int rows = 0;
  int vocab = 0;                                  // >= 1
  const SamplingRowParams* row_params = nullptr;  // [rows]
  const SamplingPenalty* penalties = nullptr;     // indexed by the rows' penalty ranges
  void* workspace = nullptr;                      // SamplingWorkspaceBytes(rows, vocab); no
                                                  // initial contents needed
  SamplingResult* results = nullptr;              // [rows]
  SampledLogprob* top = nullptr;                  // [rows, top_stride], best first; entries past
                                                  // a row's num_logprobs are left alone
  int top_stride = 0;                             // >= every row's num_logprobs
};

// Bytes of workspace one launch of `rows` rows of `vocab` logits needs (16 per logit).
size_t SamplingWorkspaceBytes(int rows, int vocab);

// Samples every row. cudaErrorInvalidValue when rows < 0, vocab < 1 or a required pointer is
// null (top may be null when no row wants logprobs). Never allocates or synchronises.
cudaError_t LaunchSampling(const SamplingLaunchParams& params, cudaStream_t stream);

}  // namespace squeeze::gpu
