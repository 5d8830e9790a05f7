// Spherical k-means on the GPU, the same method as the CPU reference (engine/squeeze/kmeans.h)
// but seeded by a uniform draw of k distinct points (Forgy) instead of k-means++, whose k
// sequential rounds would dominate the cost at k ~ 6,500: points are normalised, point x centre
// dot products are cuBLAS GEMMs (TF32 tensor cores, fp32 accumulation) over row chunks, the
// argmax, the cluster sums (fp32 atomics) and the centre renormalisation are small kernels;
// empty clusters keep their centre and are dropped at the end, as on the CPU. Quality is
// checked against the CPU reference's objective (tests/gpu/kmeans_gpu_test.cc).
//
// Owns its stream, cuBLAS handle and memory: it runs on the registration (indexer) thread
// while the engine thread decodes on the backend's stream. One thread at a time.
#pragma once

#include <memory>
#include <random>
#include <string>

#include "engine/squeeze/kmeans.h"

namespace squeeze {

class CudaKMeans final : public KMeansSolver {
 public:
  explicit CudaKMeans(int device = 0);
  ~CudaKMeans() override;
  // On a CUDA error (e.g. out of memory) the head is clustered by the CPU reference instead,
  // logged, and `error()` says why.
  KMeansResult Run(const float* points, int n, int d, int k, int max_iterations,
                   std::mt19937_64& rng) override;
  const std::string& error() const { return error_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string error_;
};

}  // namespace squeeze
