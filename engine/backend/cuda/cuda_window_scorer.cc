#include "engine/backend/cuda/cuda_window_scorer.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_format.h"
#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/growing_buffer.h"
#include "kernels/common/types.cuh"
#include "kernels/ops/convert.cuh"
#include "kernels/squeeze/cluster_scores.cuh"

namespace squeeze {

struct CudaWindowScorer::Impl {
  int device = 0;
  cudaStream_t stream = nullptr;
  GrowingDeviceArray<float> staging;        // fp32 queries, then centroids, as uploaded
  GrowingDeviceArray<gpu::bf16> q;          // [W][Hq][d]
  GrowingDeviceArray<gpu::bf16> centroids;  // every head's [C_h][d], one after the other
  GrowingDeviceArray<int32_t> sizes;
  GrowingDeviceArray<gpu::SqueezeHeadDesc> heads;
  GrowingDeviceArray<float> stats, scores;
  std::vector<float> host_scores;
};

CudaWindowScorer::CudaWindowScorer(int device) : impl_(std::make_unique<Impl>()) {
  impl_->device = device;
}

CudaWindowScorer::~CudaWindowScorer() {
  if (impl_->stream != nullptr) cudaStreamDestroy(impl_->stream);
}

absl::Status CudaWindowScorer::Average(const float* q, int W, int Hq, int d,
                                       std::span<const std::span<const float>> centroids,
                                       std::span<const std::span<const int32_t>> sizes,
                                       std::span<const std::span<float>> scores) {
  const int hkv = static_cast<int>(centroids.size());
  if (W <= 0 || hkv <= 0 || Hq % hkv != 0 || sizes.size() != centroids.size() ||
      scores.size() != centroids.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "window scores: %d tokens, %d query heads over %d KV heads (%d sizes, %d outputs)", W, Hq,
        hkv, sizes.size(), scores.size()));
  }
  Impl& m = *impl_;
  CudaFault fault;
  fault.Check(cudaSetDevice(m.device), "window scores: device");
  if (m.stream == nullptr) {
    fault.Check(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking), "window scores");
  }
  size_t total = 0;
  int max_c = 0;
  for (int h = 0; h < hkv; ++h) {
    const size_t c = sizes[h].size();
    if (centroids[h].size() != c * d || scores[h].size() != c) {
      return absl::InvalidArgumentError(
          absl::StrFormat("window scores: head %d has %d sizes, %d centroid values and %d outputs",
                          h, c, centroids[h].size(), scores[h].size()));
    }
    total += c;
    max_c = std::max(max_c, static_cast<int>(c));
  }
  if (max_c == 0) return fault.status();
  const size_t q_elems = static_cast<size_t>(W) * Hq * d;
  const size_t c_elems = total * d;
  fault.Check(m.staging.Reserve(std::max(q_elems, c_elems)), "window scores: memory");
  fault.Check(m.q.Reserve(q_elems), "window scores: memory");
  fault.Check(m.centroids.Reserve(c_elems), "window scores: memory");
  fault.Check(m.sizes.Reserve(total), "window scores: memory");
  fault.Check(m.heads.Reserve(hkv), "window scores: memory");
  fault.Check(m.stats.Reserve(gpu::ClusterScoresWorkspaceBytes(hkv, W, Hq / hkv) / sizeof(float)),
              "window scores: memory");
  fault.Check(m.scores.Reserve(static_cast<size_t>(hkv) * max_c), "window scores: memory");
  if (!fault.ok()) return fault.status();

  // Queries, then the centroids of every head back to back, through one fp32 staging area.
  fault.Check(
      cudaMemcpyAsync(m.staging.p, q, q_elems * sizeof(float), cudaMemcpyHostToDevice, m.stream),
      "window scores: queries");
  fault.Check(gpu::LaunchF32ToBf16(m.staging.p, m.q.p, q_elems, m.stream), "window scores");
  std::vector<gpu::SqueezeHeadDesc> heads(hkv);
  size_t at = 0;
  for (int h = 0; h < hkv; ++h) {
    const size_t c = sizes[h].size();
    fault.Check(cudaMemcpyAsync(m.staging.p + at * d, centroids[h].data(), c * d * sizeof(float),
                                cudaMemcpyHostToDevice, m.stream),
                "window scores: centroids");
    fault.Check(cudaMemcpyAsync(m.sizes.p + at, sizes[h].data(), c * sizeof(int32_t),
                                cudaMemcpyHostToDevice, m.stream),
                "window scores: sizes");
    heads[h].centroids = m.centroids.p + at * d;
    heads[h].sizes = m.sizes.p + at;
    heads[h].num_clusters = static_cast<int32_t>(c);
    at += c;
  }
  fault.Check(gpu::LaunchF32ToBf16(m.staging.p, m.centroids.p, c_elems, m.stream), "window scores");
  fault.Check(cudaMemcpyAsync(m.heads.p, heads.data(), sizeof(gpu::SqueezeHeadDesc) * hkv,
                              cudaMemcpyHostToDevice, m.stream),
              "window scores: heads");
  gpu::ClusterScoresParams p;
  p.num_heads = hkv;
  p.num_tokens = W;
  p.group = Hq / hkv;
  p.head_dim = d;
  p.scale = 1.0f / std::sqrt(static_cast<float>(d));  // as ClusterScorer's logits
  p.q = m.q.p;
  p.q_token_stride = static_cast<int64_t>(Hq) * d;
  p.heads = m.heads.p;
  p.max_clusters = max_c;
  p.row_stats = m.stats.p;
  p.scores = m.scores.p;
  p.score_stride = max_c;
  fault.Check(gpu::LaunchClusterScores(p, m.stream), "window scores: cluster scores");
  m.host_scores.resize(static_cast<size_t>(hkv) * max_c);
  fault.Check(
      cudaMemcpyAsync(m.host_scores.data(), m.scores.p, m.host_scores.size() * sizeof(float),
                      cudaMemcpyDeviceToHost, m.stream),
      "window scores: download");
  fault.Check(cudaStreamSynchronize(m.stream), "window scores");
  if (!fault.ok()) return fault.status();
  for (int h = 0; h < hkv; ++h) {
    std::copy_n(m.host_scores.begin() + static_cast<ptrdiff_t>(h) * max_c, scores[h].size(),
                scores[h].begin());
  }
  return absl::OkStatus();
}

}  // namespace squeeze
