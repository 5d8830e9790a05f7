// The element-wise and reduction steps of the first GPU spherical k-means, now the cuBLAS
// baseline path of engine/backend/cuda/cuda_kmeans.cc (CudaKMeansOptions::cublas_baseline, and
// head sizes above 128): fp32 points, point x centre products as cuBLAS TF32 GEMMs into a score
// matrix, then these kernels. The batched solver uses kmeans_assign.cuh and kmeans_steps.cuh.
// Plain C++ (includable from .cc files); the kernels live in kmeans_cublas_steps.cu. Launchers
// validate sizes, never allocate or synchronise, and return cudaGetLastError().
//
// CPU reference: SphericalKMeans (engine/backend/kmeans.h), through the baseline solver; tested
// in tests/gpu/kmeans_gpu_test.cc (HeadSizesAboveTheFusedKernelUseTheCublasPath,
// CublasBaselineStillWorks).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace squeeze::gpu {

// out[i, :] = in[i, :] / |in[i, :]| (a zero row stays zero). in, out: [n][d]; may alias.
cudaError_t LaunchNormalizeRows(const float* in, float* out, int n, int d, cudaStream_t stream);

// For each row r < rows of scores [rows][k] (row stride k): best = argmax (ties: the lowest
// index); when labels[r] != best, labels[r] = best and *changed += 1. best_value[r] = the max.
cudaError_t LaunchAssignArgmax(const float* scores, int rows, int k, int32_t* labels,
                               float* best_value, int* changed, cudaStream_t stream);

// sums[labels[i], :] += x[i, :] and counts[labels[i]] += 1 for i < n (fp32 atomics; order of
// additions unspecified). sums [k][d] and counts [k] must be zeroed first.
cudaError_t LaunchAccumulateClusters(const float* x, const int32_t* labels, int n, int d,
                                     float* sums, int32_t* counts, cudaStream_t stream);

// centers[c, :] = sums[c, :] / |sums[c, :]| for c < k; a zero (or empty) sum leaves centers[c].
cudaError_t LaunchNormalizeCenters(const float* sums, int k, int d, float* centers,
                                   cudaStream_t stream);

// *total += sum of v[0..n) (accumulated in double).
cudaError_t LaunchSumToDouble(const float* v, int n, double* total, cudaStream_t stream);

}  // namespace squeeze::gpu
