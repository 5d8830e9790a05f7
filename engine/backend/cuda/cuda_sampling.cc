#include "engine/backend/cuda/cuda_sampling.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/sampling/sampling.cuh"

namespace squeeze {
namespace {

constexpr size_t kAlign = 256;

size_t AlignUp(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

absl::Status CudaError(cudaError_t err, const std::string& what) {
  cudaGetLastError();  // clear a non-sticky error so the next call starts clean
  return absl::InternalError(absl::StrCat("cuda sampling: ", what, ": ", cudaGetErrorString(err)));
}

}  // namespace

gpu::SamplingRowParams SamplingRowToDevice(const DeviceSampleRow& row, int32_t penalty_begin,
                                           int32_t penalty_count) {
  gpu::SamplingRowParams d{};
  d.temperature = row.temperature;
  d.top_p = row.top_p;
  d.min_p = row.min_p;
  d.repetition_penalty = row.repetition_penalty;
  d.presence_penalty = row.presence_penalty;
  d.frequency_penalty = row.frequency_penalty;
  d.greedy = row.greedy ? 1 : 0;
  d.top_k = row.top_k;
  d.num_logprobs = row.num_logprobs;
  d.penalty_begin = penalty_begin;
  d.penalty_count = penalty_count;
  d.uniform = row.uniform;
  return d;
}

CudaSampler::~CudaSampler() {
  cudaFree(workspace_.p);
  cudaFree(upload_.p);
  cudaFree(download_.p);
  cudaFreeHost(upload_host_.p);
  cudaFreeHost(download_host_.p);
}

absl::Status CudaSampler::Reserve(Buffer& b, size_t bytes, bool pinned, const char* what) {
  if (bytes <= b.bytes) return absl::OkStatus();
  if (pinned) {
    cudaFreeHost(b.p);
  } else {
    cudaFree(b.p);
  }
  b = {};
  const cudaError_t err = pinned ? cudaMallocHost(&b.p, bytes) : cudaMalloc(&b.p, bytes);
  if (err != cudaSuccess) {
    b.p = nullptr;
    return CudaError(err, absl::StrCat("cannot allocate ", bytes, " bytes of ", what));
  }
  b.bytes = bytes;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<CudaSampler::Output>> CudaSampler::Sample(const float* logits, int vocab,
                                                                     std::span<const Job> jobs,
                                                                     cudaStream_t stream) {
  const int rows = static_cast<int>(jobs.size());
  std::vector<Output> out(rows);
  if (rows == 0 || vocab == 0) return out;  // Sample() on an empty vocabulary: -1
  if (vocab < 0 || logits == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda sampling: bad logits (vocab ", vocab, ")"));
  }
  for (const Job& job : jobs) {
    if (job.sampler == nullptr) {
      return absl::InvalidArgumentError("cuda sampling: a job has no sampler");
    }
    const int n = std::min(std::max(job.sampler->params().logprobs, 0), vocab);
    if (job.want_info && n > gpu::kSamplingMaxLogprobs) {
      return absl::InvalidArgumentError(absl::StrCat(
          "cuda sampling: ", n, " top logprobs asked, at most ", gpu::kSamplingMaxLogprobs));
    }
  }

  // Host half of every row. The uniforms are only peeked: nothing is consumed before the
  // results are back, so an error below leaves every sampler as it was.
  rows_.resize(rows);
  penalties_.clear();
  std::vector<int32_t> penalty_begin(rows);
  int top_stride = 0;
  for (int r = 0; r < rows; ++r) {
    const Job& job = jobs[r];
    penalty_begin[r] = static_cast<int32_t>(penalties_.size());
    job.sampler->PrepareDevice(vocab, job.prompt, job.generated, job.want_info, &rows_[r],
                               &penalties_);
    top_stride = std::max(top_stride, rows_[r].num_logprobs);
  }

  // Staging layouts: [row params | penalties] up, [results | top logprobs] down.
  const size_t params_bytes = AlignUp(sizeof(gpu::SamplingRowParams) * rows);
  const size_t penalty_bytes = sizeof(gpu::SamplingPenalty) * penalties_.size();
  const size_t up_bytes = params_bytes + penalty_bytes;
  const size_t results_bytes = AlignUp(sizeof(gpu::SamplingResult) * rows);
  const size_t top_bytes = sizeof(gpu::SampledLogprob) * static_cast<size_t>(rows) * top_stride;
  const size_t down_bytes = results_bytes + top_bytes;
  // The workspace is sized for a power-of-two row count so a growing batch reallocates rarely.
  const size_t ws_bytes = gpu::SamplingWorkspaceBytes(
      static_cast<int>(std::bit_ceil(static_cast<unsigned>(rows))), vocab);
  if (absl::Status s = Reserve(workspace_, ws_bytes, false, "workspace"); !s.ok()) return s;
  if (absl::Status s = Reserve(upload_, up_bytes, false, "parameters"); !s.ok()) return s;
  if (absl::Status s = Reserve(download_, down_bytes, false, "results"); !s.ok()) return s;
  if (absl::Status s = Reserve(upload_host_, up_bytes, true, "pinned parameters"); !s.ok()) {
    return s;
  }
  if (absl::Status s = Reserve(download_host_, down_bytes, true, "pinned results"); !s.ok()) {
    return s;
  }

  auto* up = static_cast<char*>(upload_host_.p);
  auto* params = reinterpret_cast<gpu::SamplingRowParams*>(up);
  for (int r = 0; r < rows; ++r) {
    const int32_t end =
        r + 1 < rows ? penalty_begin[r + 1] : static_cast<int32_t>(penalties_.size());
    params[r] = SamplingRowToDevice(rows_[r], penalty_begin[r], end - penalty_begin[r]);
  }
  auto* penalties = reinterpret_cast<gpu::SamplingPenalty*>(up + params_bytes);
  for (size_t i = 0; i < penalties_.size(); ++i) {
    penalties[i] = {penalties_[i].id, penalties_[i].count};
  }

  auto* dev_up = static_cast<char*>(upload_.p);
  auto* dev_down = static_cast<char*>(download_.p);
  gpu::SamplingLaunchParams launch;
  launch.logits = logits;
  launch.rows = rows;
  launch.vocab = vocab;
  launch.row_params = reinterpret_cast<const gpu::SamplingRowParams*>(dev_up);
  launch.penalties = reinterpret_cast<const gpu::SamplingPenalty*>(dev_up + params_bytes);
  launch.workspace = workspace_.p;
  launch.results = reinterpret_cast<gpu::SamplingResult*>(dev_down);
  launch.top =
      top_stride > 0 ? reinterpret_cast<gpu::SampledLogprob*>(dev_down + results_bytes) : nullptr;
  launch.top_stride = top_stride;

  cudaError_t err =
      cudaMemcpyAsync(upload_.p, upload_host_.p, up_bytes, cudaMemcpyHostToDevice, stream);
  if (err != cudaSuccess) return CudaError(err, "upload");
  // Poisoned (token -1, NaN logprobs) so a row the kernel failed to write cannot pass for one.
  err = cudaMemsetAsync(download_.p, 0xFF, down_bytes, stream);
  if (err != cudaSuccess) return CudaError(err, "memset");
  err = gpu::LaunchSampling(launch, stream);
  if (err != cudaSuccess) return CudaError(err, "launch");
  err = cudaMemcpyAsync(download_host_.p, download_.p, down_bytes, cudaMemcpyDeviceToHost, stream);
  if (err != cudaSuccess) return CudaError(err, "download");
  err = cudaStreamSynchronize(stream);
  if (err != cudaSuccess) return CudaError(err, "sampling kernel");

  const auto* down = static_cast<const char*>(download_host_.p);
  const auto* results = reinterpret_cast<const gpu::SamplingResult*>(down);
  const auto* top = reinterpret_cast<const gpu::SampledLogprob*>(down + results_bytes);
  for (int r = 0; r < rows; ++r) {
    if (results[r].token < 0 || results[r].token >= vocab) {
      return absl::InternalError(absl::StrCat("cuda sampling: row ", r, " came back with token ",
                                              results[r].token, " (vocab ", vocab, ")"));
    }
  }
  std::vector<TokenLogprob> alternatives;
  for (int r = 0; r < rows; ++r) {
    const Job& job = jobs[r];
    DeviceSampleResult result;
    result.token = results[r].token;
    result.used_uniform = results[r].used_uniform != 0;
    result.logprob = results[r].logprob;
    alternatives.clear();
    for (int i = 0; i < rows_[r].num_logprobs; ++i) {
      const gpu::SampledLogprob& t = top[static_cast<size_t>(r) * top_stride + i];
      alternatives.push_back({t.token, t.logprob});
    }
    result.top = alternatives;
    out[r].token = job.sampler->FinishDevice(result, job.want_info ? &out[r].info : nullptr);
  }
  return out;
}

}  // namespace squeeze
