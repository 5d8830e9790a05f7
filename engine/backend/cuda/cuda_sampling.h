// Sampling of a batch of logits rows on the GPU (kernels/sampling/sampling.cuh) with the results of
// the CPU Sampler (engine/sampling/sampler.h) and the same PRNG stream: the host half of each row
// (parameters, the draw's uniform, distinct penalty tokens) comes from the row's Sampler, the
// device samples, and only the tokens and requested logprobs come back, never the logits.
//
// Owns its device workspace and pinned staging buffers (allocated on first use, grown when a
// batch needs more, never shrunk). Uses the current device. One thread at a time.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/sampling/sampler.h"
#include "kernels/sampling/sampling.cuh"

namespace squeeze {

// The launch parameters of one row prepared by Sampler::PrepareDevice, its penalty entries at
// [penalty_begin, penalty_begin + penalty_count) of the launch's penalty array.
gpu::SamplingRowParams SamplingRowToDevice(const DeviceSampleRow& row, int32_t penalty_begin,
                                           int32_t penalty_count);

class CudaSampler {
 public:
  struct Job {
    Sampler* sampler = nullptr;       // the row's sequence sampler (one job per sampler)
    std::span<const int32_t> prompt;  // as for Sampler::Sample
    std::span<const int32_t> generated;
    bool want_info = false;  // fill Output::info (Sample()'s `info` argument)
  };
  struct Output {
    int32_t token = -1;
    SampleInfo info;  // when Job::want_info
  };

  CudaSampler() = default;
  ~CudaSampler();
  CudaSampler(const CudaSampler&) = delete;
  CudaSampler& operator=(const CudaSampler&) = delete;

  // Samples row r of `logits` (device memory, [jobs.size(), vocab] fp32, row stride vocab, not
  // modified) with jobs[r] and returns what jobs[r].sampler->Sample() would on those logits.
  // Enqueued on `stream` after the work that produced the logits; synchronises the stream.
  // vocab == 0 gives -1 tokens, as Sample() does. On an error (CUDA failure, a row asking for
  // more than gpu::kSamplingMaxLogprobs logprobs) no sampler has consumed a draw: the step can
  // be retried, on the GPU or the CPU, with the same results.
  absl::StatusOr<std::vector<Output>> Sample(const float* logits, int vocab,
                                             std::span<const Job> jobs, cudaStream_t stream);

 private:
  // Device / pinned buffers that only grow.
  struct Buffer {
    void* p = nullptr;
    size_t bytes = 0;
  };
  absl::Status Reserve(Buffer& b, size_t bytes, bool pinned, const char* what);

  Buffer workspace_;    // device: gpu::SamplingWorkspaceBytes
  Buffer upload_;       // device: row params, then penalty entries
  Buffer download_;     // device: results, then top logprobs
  Buffer upload_host_;  // pinned mirrors of the two above
  Buffer download_host_;
  std::vector<DeviceSampleRow> rows_;  // host scratch reused across calls
  std::vector<PenaltyToken> penalties_;
};

}  // namespace squeeze
