// Fused nearest-centre assignment of the batched GPU spherical k-means
// (engine/backend/cuda/cuda_kmeans.h): for every point of every problem, the centre with the
// largest dot product, computed on tensor cores (mma.sync m16n8k16, bf16 in, fp32 accumulate)
// with the running max/argmax kept in registers, so no [n][k] score matrix is ever written.
// Plain C++ (includable from .cc files); the kernel lives in kmeans_assign.cu.
//
// Layout: P independent problems (e.g. the KV heads of one layer), each with n unit points and
// k unit centres, bf16, rows of exactly `dim` = KMeansShape::dpad elements (dim in {64, 128}:
// callers zero-pad other head sizes, 96 included, which changes no dot product):
//   point i of problem p:  points  + p * points_stride  + i * dim
//   centre c of problem p: centers + p * centers_stride + c * dim
// Results per problem, at p * n + i:
//   labels[i] = label_offset + argmax_c dot(point i, centre c), ties to the lowest c;
//   best[i]   = that maximum (fp32 sum of exact bf16 products: about 2^-8 absolute error for
//               unit vectors, so two centres closer than that may be ordered either way).
// Merge mode (k-means|| seeding rounds, which score only the newly drawn centres): the old
// (best, label) pair is replaced only when the new score is strictly greater, so the label stays
// the lowest-index maximum over every centre scored so far when label_offset grows.
// Otherwise labels are overwritten and, when `changed` is set, changed[p] counts the points of
// problem p whose label differs from the value it held before the launch; when `second` is set,
// second[i] = the largest score among the other centres (equal to best[i] on a tie), the bound
// the Lloyd steps' pruning starts from (LaunchKMeansPrune, kmeans_steps.cuh).
// Gathered mode (`rows`, non-merge only): only points rows[p * n + j], j < row_count[p], are
// scored and written (the points whose label the pruning could not prove); results still land
// at p * n + point.
//
// Supported: dim in {64, 128}; n >= 1; k >= 1; num_problems <= 65535; every row 16-byte aligned
// (points/centres 16-byte aligned, strides multiples of 8). Returns cudaErrorInvalidValue
// otherwise; never allocates, never synchronises.
//
// CPU reference: the assignment step of SphericalKMeans (engine/backend/kmeans.h), as a
// brute-force argmax over the same bf16 values; tested in tests/gpu/kmeans_gpu_test.cc
// (KMeansAssignKernelTest).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/common/types.cuh"

namespace squeeze::gpu {

// The shape every launch of the batched k-means shares (kmeans_assign.cuh, kmeans_steps.cuh): the
// base of each step's params, filled once per batch (as flash-attention's Flash_fwd_params
// builds on one base). P independent problems of n points of d dimensions, kept as bf16 unit
// rows zero-padded to dpad, and k centres each. A step reads only the fields it names.
struct KMeansShape {
  int num_problems = 0;  // P (grid.y), <= 65535
  int n = 0;             // points per problem
  int d = 0;             // dimensions of a point, <= dpad
  int dpad = 0;          // row length of the bf16 unit points and centres: 64 or 128
  int k = 0;             // centres per problem
};

// n, dpad (the kernel's `dim`) and k of the shape; d is not read. k is the number of centres
// this launch scores: all of them, or a seeding round's new ones (with label_offset).
struct KMeansAssignParams : KMeansShape {
  const bf16* points = nullptr;        // [P] x [n][dim] unit points (a zero row is allowed)
  int64_t points_stride = 0;           // elements between problems' point arrays
  const bf16* centers = nullptr;       // [P] x [k][dim] unit centres
  int64_t centers_stride = 0;          // elements between problems' centre arrays
  int label_offset = 0;                // added to the winning local centre index
  bool merge = false;                  // keep the old (best, label) unless strictly beaten
  const int32_t* active = nullptr;     // optional [P]: problems with active[p] == 0 are skipped
  int32_t* labels = nullptr;           // [P][n] in/out
  float* best = nullptr;               // [P][n] in (merge) / out
  int32_t* changed = nullptr;          // optional [P], non-merge only: += changed labels
  float* second = nullptr;             // optional [P][n] out, non-merge only
  const int32_t* rows = nullptr;       // optional [P][n], non-merge only: the points to score ...
  const int32_t* row_count = nullptr;  // ... [P]: how many of each problem's (with rows)
};

// Points per CTA (8 warps x 32 rows) and centres per shared-memory tile.
constexpr int kKMeansAssignBlockM = 256;
constexpr int kKMeansAssignBlockN = 64;

cudaError_t LaunchKMeansAssign(const KMeansAssignParams& p, cudaStream_t stream);

}  // namespace squeeze::gpu
