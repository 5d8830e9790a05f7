#include "engine/backend/cuda/cuda_kmeans.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/kmeans.cuh"
#include "kernels/model_ops.cuh"
#include "spdlog/spdlog.h"

namespace squeeze {
namespace {

// Bytes of the [rows][k] score block of one GEMM chunk.
constexpr size_t kScoreBytes = size_t{256} << 20;

// A device array that only grows.
template <typename T>
struct Grow {
  T* p = nullptr;
  size_t n = 0;
  ~Grow() { cudaFree(p); }
  cudaError_t Reserve(size_t count) {
    if (count <= n) return cudaSuccess;
    cudaFree(p);
    p = nullptr;
    n = 0;
    const cudaError_t err = cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T));
    if (err == cudaSuccess) n = count;
    return err;
  }
};

}  // namespace

struct CudaKMeans::Impl {
  int device = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  Grow<float> points, unit, centers, sums, scores, best;
  Grow<int32_t> labels, counts, chosen;
  Grow<int> changed;
  Grow<double> objective;
  ~Impl() {
    if (blas != nullptr) cublasDestroy(blas);
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
};

CudaKMeans::CudaKMeans(int device) : impl_(std::make_unique<Impl>()) {
  impl_->device = device;
  cudaSetDevice(device);
  if (cudaStreamCreateWithFlags(&impl_->stream, cudaStreamNonBlocking) != cudaSuccess ||
      cublasCreate(&impl_->blas) != CUBLAS_STATUS_SUCCESS) {
    error_ = "cuda k-means: cannot create a stream or cuBLAS handle";
    return;
  }
  cublasSetStream(impl_->blas, impl_->stream);
  cublasSetMathMode(impl_->blas, CUBLAS_TF32_TENSOR_OP_MATH);
}

CudaKMeans::~CudaKMeans() = default;

KMeansResult CudaKMeans::Run(const float* points, int n, int d, int k, int max_iterations,
                             std::mt19937_64& rng) {
  KMeansResult result;
  result.dim = d;
  if (impl_->blas == nullptr) return SphericalKMeans(points, n, d, k, max_iterations, rng);
  error_.clear();
  Impl& im = *impl_;
  cudaSetDevice(im.device);
  cudaStream_t s = im.stream;
  cudaError_t err = cudaSuccess;
  auto check = [&](cudaError_t e, const char* what) {
    if (e != cudaSuccess && err == cudaSuccess) {
      err = e;
      error_ = absl::StrCat("cuda k-means: ", what, ": ", cudaGetErrorString(e));
    }
    return err == cudaSuccess;
  };
  const size_t nd = static_cast<size_t>(n) * d, kd = static_cast<size_t>(k) * d;
  const int chunk = static_cast<int>(
      std::clamp<size_t>(kScoreBytes / (sizeof(float) * static_cast<size_t>(k)), 1, n));
  auto fallback = [&] {
    cudaGetLastError();
    spdlog::error("{}; clustering this head on the CPU", error_);
    return SphericalKMeans(points, n, d, k, max_iterations, rng);
  };
  if (!check(im.points.Reserve(nd), "alloc") || !check(im.unit.Reserve(nd), "alloc") ||
      !check(im.centers.Reserve(kd), "alloc") || !check(im.sums.Reserve(kd), "alloc") ||
      !check(im.scores.Reserve(static_cast<size_t>(chunk) * k), "alloc") ||
      !check(im.best.Reserve(n), "alloc") || !check(im.labels.Reserve(n), "alloc") ||
      !check(im.counts.Reserve(k), "alloc") || !check(im.chosen.Reserve(k), "alloc") ||
      !check(im.changed.Reserve(1), "alloc") || !check(im.objective.Reserve(1), "alloc")) {
    return fallback();
  }
  check(cudaMemcpyAsync(im.points.p, points, nd * sizeof(float), cudaMemcpyHostToDevice, s),
        "upload");
  check(gpu::LaunchNormalizeRows(im.points.p, im.unit.p, n, d, s), "normalize");

  // Forgy seeding: k distinct points drawn uniformly (partial Fisher-Yates on the caller's
  // stream, so a seed gives the same clustering on every run).
  std::vector<int32_t> index(n);
  std::iota(index.begin(), index.end(), 0);
  for (int i = 0; i < k; ++i) {
    const int j = i + std::min(n - i - 1, static_cast<int>(UniformDouble(rng) * (n - i)));
    std::swap(index[i], index[j]);
  }
  check(cudaMemcpyAsync(im.chosen.p, index.data(), sizeof(int32_t) * k, cudaMemcpyHostToDevice,
                        s),
        "seed upload");
  check(gpu::LaunchGatherRowsF32(im.unit.p, im.chosen.p, k, d, im.centers.p, s), "seed gather");
  check(cudaMemsetAsync(im.labels.p, 0xFF, sizeof(int32_t) * n, s), "labels");

  const float one = 1.0f, zero = 0.0f;
  for (int it = 0; it < max_iterations && err == cudaSuccess; ++it) {
    check(cudaMemsetAsync(im.changed.p, 0, sizeof(int), s), "memset");
    check(cudaMemsetAsync(im.objective.p, 0, sizeof(double), s), "memset");
    for (int r0 = 0; r0 < n; r0 += chunk) {
      const int rows = std::min(chunk, n - r0);
      // Row-major scores[rows][k] = unit[r0:] . centers^T, i.e. column-major
      // scores^T[k][rows] = centers (as [d][k] transposed) x unit^T.
      if (cublasSgemm(im.blas, CUBLAS_OP_T, CUBLAS_OP_N, k, rows, d, &one, im.centers.p, d,
                      im.unit.p + static_cast<size_t>(r0) * d, d, &zero, im.scores.p,
                      k) != CUBLAS_STATUS_SUCCESS) {
        check(cudaErrorUnknown, "cublasSgemm");
        break;
      }
      check(gpu::LaunchAssignArgmax(im.scores.p, rows, k, im.labels.p + r0, im.best.p + r0,
                                    im.changed.p, s),
            "assign");
    }
    check(gpu::LaunchSumToDouble(im.best.p, n, im.objective.p, s), "objective");
    int changed = 0;
    double objective = 0.0;
    check(cudaMemcpyAsync(&changed, im.changed.p, sizeof(int), cudaMemcpyDeviceToHost, s),
          "readback");
    check(cudaMemcpyAsync(&objective, im.objective.p, sizeof(double), cudaMemcpyDeviceToHost, s),
          "readback");
    check(cudaStreamSynchronize(s), "iteration");
    result.objective.push_back(objective);
    ++result.iterations;
    if (changed == 0) {
      result.converged = true;
      break;
    }
    if (it + 1 < max_iterations) {
      check(cudaMemsetAsync(im.sums.p, 0, kd * sizeof(float), s), "memset");
      check(cudaMemsetAsync(im.counts.p, 0, k * sizeof(int32_t), s), "memset");
      check(gpu::LaunchAccumulateClusters(im.unit.p, im.labels.p, n, d, im.sums.p, im.counts.p,
                                          s),
            "accumulate");
      check(gpu::LaunchNormalizeCenters(im.sums.p, k, d, im.centers.p, s), "update");
    }
  }

  // Raw-point sums of the final clusters (the stored centroid is the mean of raw keys, P3).
  std::vector<int32_t> labels(n);
  std::vector<float> sums(kd), unit_centers(kd);
  check(cudaMemsetAsync(im.sums.p, 0, kd * sizeof(float), s), "memset");
  check(cudaMemsetAsync(im.counts.p, 0, k * sizeof(int32_t), s), "memset");
  check(gpu::LaunchAccumulateClusters(im.points.p, im.labels.p, n, d, im.sums.p, im.counts.p, s),
        "raw sums");
  check(cudaMemcpyAsync(labels.data(), im.labels.p, sizeof(int32_t) * n, cudaMemcpyDeviceToHost,
                        s),
        "download");
  check(cudaMemcpyAsync(sums.data(), im.sums.p, kd * sizeof(float), cudaMemcpyDeviceToHost, s),
        "download");
  check(cudaMemcpyAsync(unit_centers.data(), im.centers.p, kd * sizeof(float),
                        cudaMemcpyDeviceToHost, s),
        "download");
  check(cudaStreamSynchronize(s), "download");
  if (err != cudaSuccess) {
    // A registration must not fail on a GPU hiccup: the CPU reference takes over.
    return fallback();
  }

  CompactClusters(labels, k, d, unit_centers, std::vector<double>(sums.begin(), sums.end()),
                  &result);
  return result;
}

}  // namespace squeeze
