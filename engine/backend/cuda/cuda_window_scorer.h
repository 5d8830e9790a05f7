// The index calibration's window scores on the GPU (engine/backend/window_scorer.h): the fused
// cluster-scores kernel (kernels/squeeze/cluster_scores.cuh) over all KV heads of a layer, with
// queries and centroids rounded to bf16 on the device, as the squeezed selection itself scores
// them at query time.
#pragma once

#include <cuda_runtime.h>

#include <memory>
#include <string>

#include "engine/backend/window_scorer.h"

namespace squeeze {

class CudaWindowScorer final : public WindowScorer {
 public:
  explicit CudaWindowScorer(int device = 0);
  ~CudaWindowScorer() override;
  CudaWindowScorer(const CudaWindowScorer&) = delete;
  CudaWindowScorer& operator=(const CudaWindowScorer&) = delete;

  absl::Status Average(const float* q, int W, int Hq, int d,
                       std::span<const std::span<const float>> centroids,
                       std::span<const std::span<const int32_t>> sizes,
                       std::span<const std::span<float>> scores) override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace squeeze
