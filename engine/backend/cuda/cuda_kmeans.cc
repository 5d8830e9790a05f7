#include "engine/backend/cuda/cuda_kmeans.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "engine/backend/cuda/cuda_status.h"
#include "engine/backend/cuda/growing_buffer.h"
#include "engine/common/parallel_for.h"
#include "kernels/kmeans/kmeans_assign.cuh"
#include "kernels/kmeans/kmeans_cublas_steps.cuh"
#include "kernels/kmeans/kmeans_steps.cuh"
#include "kernels/ops/rows.cuh"
#include "spdlog/spdlog.h"

namespace squeeze {
namespace {

using Clock = std::chrono::steady_clock;
double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Largest head size of the fused path; rows are zero-padded to 64 or 128 dims.
constexpr int kMaxFusedDim = 128;
int PaddedDim(int d) { return d <= 64 ? 64 : 128; }

// Bytes of the [rows][k] score block of one GEMM chunk (cuBLAS baseline).
constexpr size_t kScoreBytes = size_t{256} << 20;

template <typename T>
using Grow = GrowingDeviceArray<T>;

// check(e, what) for a sequence of CUDA calls: the first failure is kept in *fault and its
// message in *message (later calls go on but report nothing new); true while none has failed.
auto FirstErrorCheck(CudaFault* fault, std::string* message) {
  return [fault, message](cudaError_t e, const char* what) {
    const bool was_ok = fault->ok();
    if (fault->Check(e, what)) return true;
    if (was_ok) *message = absl::StrCat("k-means: ", fault->status().message());
    return false;
  };
}

// k distinct indices of [0, n) drawn uniformly (partial Fisher-Yates on the caller's stream).
void DrawDistinct(int n, int k, std::mt19937_64& rng, int32_t* out) {
  std::vector<int32_t> index(n);
  std::iota(index.begin(), index.end(), 0);
  for (int i = 0; i < k; ++i) {
    const int j = i + std::min(n - i - 1, static_cast<int>(UniformDouble(rng) * (n - i)));
    std::swap(index[i], index[j]);
  }
  std::copy(index.begin(), index.begin() + k, out);
}

}  // namespace

struct CudaKMeans::Impl {
  int device = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;
  // Batched solver, for the P problems of one group (shapes as in kernels/kmeans/kmeans_steps.cuh).
  Grow<float> raw;                // [P][n][d] points uploaded by the host entry points
  Grow<gpu::bf16> unit;           // [P][n][dpad]
  Grow<float> nonzero, best;      // [P][n]
  Grow<float> second, score;      // [P][n] pruning bounds, exact scores for the objective
  Grow<int32_t> rows;             // [P][n] the points a pruned step scores
  Grow<int32_t> row_count;        // [P]
  Grow<float> drift;              // [P][k]
  Grow<float> max_drift;          // [P]
  Grow<int32_t> labels;           // [P][n]
  Grow<float> centers;            // [P][k][d]
  Grow<gpu::bf16> centers_bf16;   // [P][k][dpad]
  Grow<unsigned long long> sums;  // [P][k][d] fixed point; reused as double for raw sums
  Grow<int32_t> counts;           // [P][k]
  Grow<float> means;              // [P][k][d] raw centroids of the final labels
  // Download destinations of the finish.
  GrowingPinnedArray<int32_t> host_labels;  // [P][n]
  GrowingPinnedArray<float> host_centers;   // [P][k][d]
  GrowingPinnedArray<float> host_means;     // [P][k][d]
  Grow<int32_t> changed, active;            // [P]
  Grow<double> objective;                   // [P]
  Grow<int32_t> index;                      // [P][k] host-drawn seed indices
  Grow<uint64_t> seeds;                     // [P] device seeds of the sampling hash
  Grow<uint64_t> keys, keys_sorted;         // [P * n] seeding keys
  Grow<int32_t> values, values_sorted;
  Grow<char> sort_scratch;
  // The cuBLAS baseline (one problem).
  Grow<float> b_points, b_unit, b_centers, b_sums, b_scores, b_best;
  Grow<int32_t> b_labels, b_counts, b_chosen;
  Grow<int> b_changed;
  Grow<double> b_objective;
  ~Impl() {
    if (blas != nullptr) cublasDestroy(blas);
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
};

CudaKMeans::CudaKMeans(int device, CudaKMeansOptions options)
    : impl_(std::make_unique<Impl>()), options_(options) {
  impl_->device = device;
  cudaSetDevice(device);
  if (cudaStreamCreateWithFlags(&impl_->stream, cudaStreamNonBlocking) != cudaSuccess ||
      cublasCreate(&impl_->blas) != CUBLAS_STATUS_SUCCESS) {
    error_ = "cuda k-means: cannot create a stream or cuBLAS handle";
    impl_->blas = nullptr;
    return;
  }
  cublasSetStream(impl_->blas, impl_->stream);
  cublasSetMathMode(impl_->blas, CUBLAS_TF32_TENSOR_OP_MATH);
}

CudaKMeans::~CudaKMeans() = default;

int CudaKMeans::GroupSize(int num_problems, int n, int d, int k, bool with_upload) const {
  const size_t dpad = PaddedDim(d);
  // Per point: unit row, nonzero/best/labels, seeding keys and values (in and sorted) and about
  // as much again of sort scratch; per centre: fp32 + bf16 rows, raw means, sums, count, seed
  // index.
  size_t per_problem = static_cast<size_t>(n) * (dpad * 2 + 12 + 24 + 24) +
                       static_cast<size_t>(k) * (d * 8 + dpad * 2 + d * 8 + 8) + 64;
  if (with_upload) per_problem += static_cast<size_t>(n) * d * 4;
  // Pruning: per point the runner-up bound, the exact label score and the row list; per centre
  // its move.
  if (options_.prune) per_problem += static_cast<size_t>(n) * 12 + static_cast<size_t>(k) * 4;
  size_t group = std::max<size_t>(1, options_.max_batch_bytes / per_problem);
  group = std::min<size_t>(group, static_cast<size_t>(INT32_MAX / n));  // sort item count
  group = std::min<size_t>(group, 65535);                               // grid.y
  return static_cast<int>(std::min<size_t>(group, num_problems));
}

KMeansLimits CudaKMeans::Effective(KMeansLimits limits) const {
  // std::max would keep a NaN call value; the rule counts NaN as 0 (KMeansLimits).
  if (!(limits.min_changed_fraction >= options_.min_changed_fraction)) {
    limits.min_changed_fraction = options_.min_changed_fraction;
  }
  return limits;
}

bool CudaKMeans::ClusterGroup(const gpu::KMeansRawPoints& raw, int P, int n, int d, int k,
                              KMeansLimits limits, std::span<std::mt19937_64* const> rngs,
                              std::vector<KMeansResult>* results) {
  Impl& im = *impl_;
  cudaStream_t s = im.stream;
  CudaFault fault;
  const auto check = FirstErrorCheck(&fault, &error_);
  const int dpad = PaddedDim(d);
  const size_t pn = static_cast<size_t>(P) * n, pk = static_cast<size_t>(P) * k;
  const bool parallel_seed = options_.seeding == CudaKMeansOptions::Seeding::kParallelPlusPlus;
  size_t sort_bytes = 0;
  if (parallel_seed) check(gpu::KMeansSeedSortBytes(P, n, &sort_bytes), "sort scratch size");
  if (!check(im.unit.Reserve(pn * dpad), "alloc") || !check(im.nonzero.Reserve(pn), "alloc") ||
      !check(im.best.Reserve(pn), "alloc") || !check(im.labels.Reserve(pn), "alloc") ||
      !check(im.centers.Reserve(pk * d), "alloc") ||
      !check(im.centers_bf16.Reserve(pk * dpad), "alloc") ||
      !check(im.sums.Reserve(pk * d), "alloc") || !check(im.counts.Reserve(pk), "alloc") ||
      !check(im.means.Reserve(pk * d), "alloc") || !check(im.host_labels.Reserve(pn), "alloc") ||
      !check(im.host_centers.Reserve(pk * d), "alloc") ||
      !check(im.host_means.Reserve(pk * d), "alloc") || !check(im.changed.Reserve(P), "alloc") ||
      !check(im.active.Reserve(P), "alloc") || !check(im.objective.Reserve(P), "alloc") ||
      !check(im.index.Reserve(parallel_seed ? P : pk), "alloc")) {
    return false;
  }
  if (options_.prune &&
      (!check(im.second.Reserve(pn), "alloc") || !check(im.score.Reserve(pn), "alloc") ||
       !check(im.rows.Reserve(pn), "alloc") || !check(im.row_count.Reserve(P), "alloc") ||
       !check(im.drift.Reserve(pk), "alloc") || !check(im.max_drift.Reserve(P), "alloc"))) {
    return false;
  }
  if (parallel_seed &&
      (!check(im.seeds.Reserve(P), "alloc") || !check(im.keys.Reserve(pn), "alloc") ||
       !check(im.keys_sorted.Reserve(pn), "alloc") || !check(im.values.Reserve(pn), "alloc") ||
       !check(im.values_sorted.Reserve(pn), "alloc") ||
       !check(im.sort_scratch.Reserve(sort_bytes), "alloc"))) {
    return false;
  }

  // ---- Normalise, seed, first assignment.
  Clock::time_point t0 = Clock::now();
  check(gpu::LaunchKMeansNormalize(raw, P, n, d, dpad, im.unit.p, im.nonzero.p, s), "normalize");
  check(cudaMemsetAsync(im.centers_bf16.p, 0, pk * dpad * sizeof(gpu::bf16), s), "memset");
  check(cudaMemsetAsync(im.labels.p, 0xFF, pn * sizeof(int32_t), s), "memset");

  // Every step's params start from this shape (the assignment's k changes while seeding).
  const gpu::KMeansShape shape{.num_problems = P, .n = n, .d = d, .dpad = dpad, .k = k};
  gpu::KMeansAssignParams assign{shape};
  assign.points = im.unit.p;
  assign.points_stride = static_cast<int64_t>(n) * dpad;
  assign.centers = im.centers_bf16.p;
  assign.centers_stride = static_cast<int64_t>(k) * dpad;
  assign.labels = im.labels.p;
  assign.best = im.best.p;

  gpu::KMeansGatherParams gather{shape};
  gather.unit = im.unit.p;
  gather.centers = im.centers.p;
  gather.centers_bf16 = im.centers_bf16.p;

  // Host draws, per problem in order: uniform seeding takes k indices; k-means|| the first
  // centre's index and a 64-bit seed for the device's sampling hash.
  std::vector<int32_t> host_index(parallel_seed ? P : pk);
  std::vector<uint64_t> host_seeds(P);
  for (int p = 0; p < P; ++p) {
    if (parallel_seed) {
      host_index[p] = std::min(n - 1, static_cast<int>(UniformDouble(*rngs[p]) * n));
      host_seeds[p] = (*rngs[p])();
    } else {
      DrawDistinct(n, k, *rngs[p], &host_index[static_cast<size_t>(p) * k]);
    }
  }
  check(cudaMemcpyAsync(im.index.p, host_index.data(), host_index.size() * sizeof(int32_t),
                        cudaMemcpyHostToDevice, s),
        "seed upload");
  gather.index = im.index.p;
  gather.first = 0;
  gather.count = parallel_seed ? 1 : k;
  gather.index_stride = gather.count;
  check(gpu::LaunchKMeansGatherCenters(gather, s), "seed gather");
  assign.k = gather.count;
  check(gpu::LaunchKMeansAssign(assign, s), "assign");
  if (parallel_seed) {
    check(cudaMemcpyAsync(im.seeds.p, host_seeds.data(), P * sizeof(uint64_t),
                          cudaMemcpyHostToDevice, s),
          "seed upload");
    gpu::KMeansSeedKeysParams keys{shape};
    keys.best = im.best.p;
    keys.nonzero = im.nonzero.p;
    keys.seeds = im.seeds.p;
    keys.keys = im.keys.p;
    keys.values = im.values.p;
    gather.index = im.values_sorted.p;
    gather.index_stride = n;
    assign.merge = true;
    const double growth = options_.seed_growth > 0.0 ? options_.seed_growth : 1.0;
    int chosen = 1;
    for (int round = 1; chosen < k && fault.ok(); ++round) {
      const int draw = static_cast<int>(std::min<double>(
          k - chosen, std::max(1.0, std::ceil(static_cast<double>(chosen) * growth))));
      keys.round = round;
      check(gpu::LaunchKMeansSeedKeys(keys, s), "seed keys");
      check(gpu::LaunchKMeansSeedSort(im.sort_scratch.p, sort_bytes, im.keys.p, im.keys_sorted.p,
                                      im.values.p, im.values_sorted.p, P, n, s),
            "seed sort");
      gather.first = chosen;
      gather.count = draw;
      check(gpu::LaunchKMeansGatherCenters(gather, s), "seed gather");
      // Score the points against the new centres only; (best, label) keep the nearest so far.
      assign.centers = im.centers_bf16.p + static_cast<size_t>(chosen) * dpad;
      assign.k = draw;
      assign.label_offset = chosen;
      check(gpu::LaunchKMeansAssign(assign, s), "seed assign");
      chosen += draw;
    }
    assign.centers = im.centers_bf16.p;
    assign.label_offset = 0;
    assign.merge = false;
  }
  assign.k = k;

  std::vector<double> objective(P);
  std::vector<int32_t> changed(P), active(P, 1);
  check(gpu::LaunchKMeansObjective(im.best.p, P, n, nullptr, im.objective.p, s), "objective");
  check(cudaMemcpyAsync(objective.data(), im.objective.p, P * sizeof(double),
                        cudaMemcpyDeviceToHost, s),
        "readback");
  if (!check(cudaStreamSynchronize(s), "seeding")) return false;
  for (int p = 0; p < P; ++p) {
    (*results)[p].objective.push_back(objective[p]);
    (*results)[p].iterations = 1;  // every label went from "none" to a centre: not converged
  }
  stats_.seed_seconds += SecondsSince(t0);

  // ---- Lloyd iterations: update the centres from the labels, assign again; a problem whose
  // labels did not change is done (its buffers keep the converged state).
  t0 = Clock::now();
  gpu::KMeansAccumulateParams acc{shape};
  acc.unit = im.unit.p;
  acc.labels = im.labels.p;
  acc.active = im.active.p;
  acc.sums = im.sums.p;
  acc.counts = im.counts.p;
  gpu::KMeansUpdateParams update{shape};
  update.sums = im.sums.p;
  update.counts = im.counts.p;
  update.active = im.active.p;
  update.centers = im.centers.p;
  update.centers_bf16 = im.centers_bf16.p;
  assign.active = im.active.p;
  assign.changed = im.changed.p;
  // Pruning: the first step's assignment scores every point and keeps the runner-up scores;
  // from the second step on, the update measures how far each centre moved and only the points
  // the bounds cannot settle are scored (their list made on the device). The objective then
  // sums exact scores of the labels (best holds bounds for the settled points).
  gpu::KMeansPruneParams prune{shape};
  gpu::KMeansLabelScoreParams label_score{shape};
  if (options_.prune) {
    assign.second = im.second.p;
    update.drift = im.drift.p;
    update.max_drift = im.max_drift.p;
    prune.labels = im.labels.p;
    prune.active = im.active.p;
    prune.drift = im.drift.p;
    prune.max_drift = im.max_drift.p;
    prune.best = im.best.p;
    prune.second = im.second.p;
    prune.rows = im.rows.p;
    prune.row_count = im.row_count.p;
    label_score.unit = im.unit.p;
    label_score.centers_bf16 = im.centers_bf16.p;
    label_score.labels = im.labels.p;
    label_score.active = im.active.p;
    label_score.score = im.score.p;
  }
  const float* objective_of = options_.prune ? im.score.p : im.best.p;
  std::vector<int32_t> scored(P, n);
  const int64_t stop_changed = limits.StopChanged(n);
  int num_active = P;
  for (int it = 1; it < limits.max_iterations && num_active > 0; ++it) {
    const bool pruned_step = options_.prune && it >= 2;
    check(
        cudaMemcpyAsync(im.active.p, active.data(), P * sizeof(int32_t), cudaMemcpyHostToDevice, s),
        "upload");
    check(cudaMemsetAsync(im.sums.p, 0, pk * d * sizeof(unsigned long long), s), "memset");
    check(cudaMemsetAsync(im.counts.p, 0, pk * sizeof(int32_t), s), "memset");
    if (options_.prune) check(cudaMemsetAsync(im.max_drift.p, 0, P * sizeof(float), s), "memset");
    check(gpu::LaunchKMeansAccumulate(acc, s), "accumulate");
    check(gpu::LaunchKMeansUpdateCenters(update, s), "update");
    check(cudaMemsetAsync(im.changed.p, 0, P * sizeof(int32_t), s), "memset");
    if (pruned_step) {
      check(cudaMemsetAsync(im.row_count.p, 0, P * sizeof(int32_t), s), "memset");
      check(gpu::LaunchKMeansPrune(prune, s), "prune");
      assign.rows = im.rows.p;
      assign.row_count = im.row_count.p;
    }
    check(gpu::LaunchKMeansAssign(assign, s), "assign");
    if (options_.prune) check(gpu::LaunchKMeansLabelScore(label_score, s), "label scores");
    check(gpu::LaunchKMeansObjective(objective_of, P, n, im.active.p, im.objective.p, s),
          "objective");
    check(cudaMemcpyAsync(changed.data(), im.changed.p, P * sizeof(int32_t), cudaMemcpyDeviceToHost,
                          s),
          "readback");
    check(cudaMemcpyAsync(objective.data(), im.objective.p, P * sizeof(double),
                          cudaMemcpyDeviceToHost, s),
          "readback");
    if (pruned_step) {
      check(cudaMemcpyAsync(scored.data(), im.row_count.p, P * sizeof(int32_t),
                            cudaMemcpyDeviceToHost, s),
            "readback");
    }
    if (!check(cudaStreamSynchronize(s), "iteration")) return false;
    for (int p = 0; p < P; ++p) {
      if (active[p] == 0) continue;
      stats_.points_scored += scored[p];
      stats_.points_stepped += n;
      KMeansResult& r = (*results)[p];
      r.objective.push_back(objective[p]);
      ++r.iterations;
      if (changed[p] <= stop_changed) {
        r.converged = true;
        active[p] = 0;
        --num_active;
      }
    }
  }
  stats_.lloyd_seconds += SecondsSince(t0);

  // ---- Raw-point means of the final clusters (the stored centroid is the mean of raw keys,
  // P3) on the device, download, compaction.
  t0 = Clock::now();
  double* raw_sums = reinterpret_cast<double*>(im.sums.p);
  static_assert(sizeof(double) == sizeof(unsigned long long));
  check(cudaMemsetAsync(raw_sums, 0, pk * d * sizeof(double), s), "memset");
  check(cudaMemsetAsync(im.counts.p, 0, pk * sizeof(int32_t), s), "memset");
  check(gpu::LaunchKMeansRawSums(raw, im.labels.p, P, n, d, k, raw_sums, im.counts.p, s),
        "raw sums");
  check(gpu::LaunchKMeansRawMeans(raw_sums, im.counts.p, P, k, d, im.means.p, s), "raw means");
  check(cudaMemcpyAsync(im.host_labels.p, im.labels.p, pn * sizeof(int32_t), cudaMemcpyDeviceToHost,
                        s),
        "download");
  check(cudaMemcpyAsync(im.host_centers.p, im.centers.p, pk * d * sizeof(float),
                        cudaMemcpyDeviceToHost, s),
        "download");
  check(cudaMemcpyAsync(im.host_means.p, im.means.p, pk * d * sizeof(float), cudaMemcpyDeviceToHost,
                        s),
        "download");
  if (!check(cudaStreamSynchronize(s), "download")) return false;
  stats_.download_seconds += SecondsSince(t0);
  // Compaction is host work of O(n + k d) per problem: spread the problems over the cores.
  const size_t kd = static_cast<size_t>(k) * d;
  ParallelFor(P, [&](size_t p) {
    CompactClusters(std::span<const int32_t>(im.host_labels.p + p * n, n), k, d,
                    std::span<const float>(im.host_centers.p + p * kd, kd),
                    std::span<const float>(im.host_means.p + p * kd, kd), &(*results)[p]);
  });
  stats_.finish_seconds += SecondsSince(t0);
  for (const KMeansResult& r : *results) {
    stats_.max_iterations_run = std::max(stats_.max_iterations_run, r.iterations);
  }
  return true;
}

KMeansResult CudaKMeans::Run(const float* points, int n, int d, int k, KMeansLimits limits,
                             std::mt19937_64& rng) {
  std::mt19937_64* rng_ptr = &rng;
  return std::move(RunBatch(std::span<const float* const>(&points, 1), n, d, k, limits,
                            std::span<std::mt19937_64* const>(&rng_ptr, 1))[0]);
}

std::vector<KMeansResult> CudaKMeans::RunBatch(std::span<const float* const> points, int n, int d,
                                               int k, KMeansLimits limits,
                                               std::span<std::mt19937_64* const> rngs) {
  limits = Effective(limits);
  const int P = static_cast<int>(points.size());
  stats_ = CudaKMeansStats();
  stats_.problems = P;
  std::vector<KMeansResult> results(P);
  if (P == 0) return results;
  if (impl_->blas == nullptr) {  // no stream: the constructor failed and said why
    for (int p = 0; p < P; ++p) {
      results[p] = SphericalKMeans(points[p], n, d, k, limits, *rngs[p]);
    }
    return results;
  }
  error_.clear();
  if (options_.cublas_baseline || d > kMaxFusedDim) {
    for (int p = 0; p < P; ++p) {
      results[p] = RunCublas(points[p], n, d, k, limits, *rngs[p]);
    }
    return results;
  }
  Impl& im = *impl_;
  cudaSetDevice(im.device);
  // PRNG states at entry: a problem that fails on the GPU restarts from its state on the CPU.
  std::vector<std::mt19937_64> saved;
  saved.reserve(P);
  for (int p = 0; p < P; ++p) saved.push_back(*rngs[p]);

  const int group = GroupSize(P, n, d, k, /*with_upload=*/true);
  const size_t nd = static_cast<size_t>(n) * d;
  int done = 0;
  for (int g0 = 0; g0 < P; g0 += group) {
    const int gp = std::min(group, P - g0);
    const Clock::time_point t0 = Clock::now();
    cudaError_t err = im.raw.Reserve(gp * nd);
    for (int j = 0; j < gp && err == cudaSuccess; ++j) {
      err = cudaMemcpyAsync(im.raw.p + j * nd, points[g0 + j], nd * sizeof(float),
                            cudaMemcpyHostToDevice, im.stream);
    }
    if (err == cudaSuccess) err = cudaStreamSynchronize(im.stream);
    stats_.upload_seconds += SecondsSince(t0);
    if (err != cudaSuccess) {
      error_ = absl::StrCat("k-means: ", CudaError(err, "upload").message());
      break;
    }
    gpu::KMeansRawPoints raw;
    raw.f32 = im.raw.p;
    raw.problem_stride = static_cast<int64_t>(nd);
    raw.row_stride = d;
    std::vector<KMeansResult> part(gp);
    if (!ClusterGroup(raw, gp, n, d, k, limits, rngs.subspan(g0, gp), &part)) break;
    std::move(part.begin(), part.end(), results.begin() + g0);
    done = g0 + gp;
  }
  if (done < P) {
    // A registration must not fail on a GPU hiccup: the CPU reference takes over.
    cudaGetLastError();
    spdlog::error("{}; clustering {} of {} heads on the CPU", error_, P - done, P);
    for (int p = done; p < P; ++p) {
      *rngs[p] = saved[p];
      results[p] = SphericalKMeans(points[p], n, d, k, limits, *rngs[p]);
    }
  }
  return results;
}

std::optional<std::vector<KMeansResult>> CudaKMeans::RunBatchInPlace(
    const DevicePoints& points, int num_problems, int n, int d, int k, KMeansLimits limits,
    std::span<std::mt19937_64* const> rngs) {
  if (num_problems != static_cast<int>(rngs.size())) return std::nullopt;
  gpu::KMeansRawPoints raw;
  if (points.bf16) {
    raw.b16 = static_cast<const gpu::bf16*>(points.data);
  } else {
    raw.f32 = static_cast<const float*>(points.data);
  }
  raw.problem_stride = points.problem_stride;
  raw.row_stride = points.row_stride;
  std::vector<std::mt19937_64> saved;
  for (const std::mt19937_64* r : rngs) saved.push_back(*r);
  auto out = ClusterOnDevice(raw, n, d, k, limits, rngs);
  if (out.ok()) return *std::move(out);
  spdlog::warn("cuda k-means in place: {}; clustering the host copy instead",
               std::string(out.status().message()));
  for (size_t i = 0; i < rngs.size(); ++i) *rngs[i] = saved[i];
  return std::nullopt;
}

absl::StatusOr<std::vector<KMeansResult>> CudaKMeans::ClusterOnDevice(
    const gpu::KMeansRawPoints& points, int n, int d, int k, KMeansLimits limits,
    std::span<std::mt19937_64* const> rngs) {
  limits = Effective(limits);
  const int max_iterations = limits.max_iterations;
  const int P = static_cast<int>(rngs.size());
  stats_ = CudaKMeansStats();
  stats_.problems = P;
  if (P == 0) return std::vector<KMeansResult>();
  if (n < 1 || d < 1 || d > kMaxFusedDim || k < 1 || k > n || max_iterations < 1 ||
      (points.f32 == nullptr) == (points.b16 == nullptr) || points.row_stride < d ||
      (P > 1 && points.problem_stride < static_cast<int64_t>(n) * points.row_stride)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cuda k-means: bad device problem (n ", n, ", d ", d, " <= ", kMaxFusedDim, ", k ", k,
        ", iterations ", max_iterations, ", one of fp32/bf16 points, row stride ",
        points.row_stride, ", problem stride ", points.problem_stride, ")"));
  }
  if (impl_->stream == nullptr) return absl::FailedPreconditionError(error_);
  error_.clear();
  cudaSetDevice(impl_->device);
  std::vector<KMeansResult> results(P);
  const int group = GroupSize(P, n, d, k, /*with_upload=*/false);
  for (int g0 = 0; g0 < P; g0 += group) {
    const int gp = std::min(group, P - g0);
    gpu::KMeansRawPoints raw = points;
    const int64_t offset = static_cast<int64_t>(g0) * points.problem_stride;
    if (raw.f32 != nullptr) raw.f32 += offset;
    if (raw.b16 != nullptr) raw.b16 += offset;
    std::vector<KMeansResult> part(gp);
    if (!ClusterGroup(raw, gp, n, d, k, limits, rngs.subspan(g0, gp), &part)) {
      cudaGetLastError();
      return absl::InternalError(error_);
    }
    std::move(part.begin(), part.end(), results.begin() + g0);
  }
  return results;
}

KMeansResult CudaKMeans::RunCublas(const float* points, int n, int d, int k, KMeansLimits limits,
                                   std::mt19937_64& rng) {
  const int max_iterations = limits.max_iterations;
  const int64_t stop_changed = limits.StopChanged(n);
  KMeansResult result;
  result.dim = d;
  Impl& im = *impl_;
  cudaSetDevice(im.device);
  cudaStream_t s = im.stream;
  const std::mt19937_64 saved = rng;
  CudaFault fault;
  const auto check = FirstErrorCheck(&fault, &error_);
  const size_t nd = static_cast<size_t>(n) * d, kd = static_cast<size_t>(k) * d;
  const int chunk = static_cast<int>(
      std::clamp<size_t>(kScoreBytes / (sizeof(float) * static_cast<size_t>(k)), 1, n));
  auto fallback = [&] {
    cudaGetLastError();
    spdlog::error("{}; clustering this head on the CPU", error_);
    rng = saved;
    return SphericalKMeans(points, n, d, k, limits, rng);
  };
  const Clock::time_point t_upload = Clock::now();
  if (!check(im.b_points.Reserve(nd), "alloc") || !check(im.b_unit.Reserve(nd), "alloc") ||
      !check(im.b_centers.Reserve(kd), "alloc") || !check(im.b_sums.Reserve(kd), "alloc") ||
      !check(im.b_scores.Reserve(static_cast<size_t>(chunk) * k), "alloc") ||
      !check(im.b_best.Reserve(n), "alloc") || !check(im.b_labels.Reserve(n), "alloc") ||
      !check(im.b_counts.Reserve(k), "alloc") || !check(im.b_chosen.Reserve(k), "alloc") ||
      !check(im.b_changed.Reserve(1), "alloc") || !check(im.b_objective.Reserve(1), "alloc")) {
    return fallback();
  }
  check(cudaMemcpyAsync(im.b_points.p, points, nd * sizeof(float), cudaMemcpyHostToDevice, s),
        "upload");
  check(cudaStreamSynchronize(s), "upload");
  stats_.upload_seconds += SecondsSince(t_upload);
  const Clock::time_point t_seed = Clock::now();
  check(gpu::LaunchNormalizeRows(im.b_points.p, im.b_unit.p, n, d, s), "normalize");

  // Forgy seeding: k distinct points drawn uniformly.
  std::vector<int32_t> index(k);
  DrawDistinct(n, k, rng, index.data());
  check(
      cudaMemcpyAsync(im.b_chosen.p, index.data(), sizeof(int32_t) * k, cudaMemcpyHostToDevice, s),
      "seed upload");
  check(gpu::LaunchGatherRowsF32(im.b_unit.p, im.b_chosen.p, k, d, im.b_centers.p, s),
        "seed gather");
  check(cudaMemsetAsync(im.b_labels.p, 0xFF, sizeof(int32_t) * n, s), "labels");
  stats_.seed_seconds += SecondsSince(t_seed);

  const Clock::time_point t_lloyd = Clock::now();
  const float one = 1.0f, zero = 0.0f;
  for (int it = 0; it < max_iterations && fault.ok(); ++it) {
    check(cudaMemsetAsync(im.b_changed.p, 0, sizeof(int), s), "memset");
    check(cudaMemsetAsync(im.b_objective.p, 0, sizeof(double), s), "memset");
    for (int r0 = 0; r0 < n; r0 += chunk) {
      const int rows = std::min(chunk, n - r0);
      // Row-major scores[rows][k] = unit[r0:] . centers^T, i.e. column-major
      // scores^T[k][rows] = centers (as [d][k] transposed) x unit^T.
      if (cublasSgemm(im.blas, CUBLAS_OP_T, CUBLAS_OP_N, k, rows, d, &one, im.b_centers.p, d,
                      im.b_unit.p + static_cast<size_t>(r0) * d, d, &zero, im.b_scores.p,
                      k) != CUBLAS_STATUS_SUCCESS) {
        check(cudaErrorUnknown, "cublasSgemm");
        break;
      }
      check(gpu::LaunchAssignArgmax(im.b_scores.p, rows, k, im.b_labels.p + r0, im.b_best.p + r0,
                                    im.b_changed.p, s),
            "assign");
    }
    check(gpu::LaunchSumToDouble(im.b_best.p, n, im.b_objective.p, s), "objective");
    int changed = 0;
    double objective = 0.0;
    check(cudaMemcpyAsync(&changed, im.b_changed.p, sizeof(int), cudaMemcpyDeviceToHost, s),
          "readback");
    check(cudaMemcpyAsync(&objective, im.b_objective.p, sizeof(double), cudaMemcpyDeviceToHost, s),
          "readback");
    check(cudaStreamSynchronize(s), "iteration");
    result.objective.push_back(objective);
    ++result.iterations;
    // The first step assigns every point from no label, so it never stops (KMeansLimits).
    if (it > 0 && changed <= stop_changed) {
      result.converged = true;
      break;
    }
    if (it + 1 < max_iterations) {
      check(cudaMemsetAsync(im.b_sums.p, 0, kd * sizeof(float), s), "memset");
      check(cudaMemsetAsync(im.b_counts.p, 0, k * sizeof(int32_t), s), "memset");
      check(gpu::LaunchAccumulateClusters(im.b_unit.p, im.b_labels.p, n, d, im.b_sums.p,
                                          im.b_counts.p, s),
            "accumulate");
      check(gpu::LaunchNormalizeCenters(im.b_sums.p, k, d, im.b_centers.p, s), "update");
    }
  }
  stats_.lloyd_seconds += SecondsSince(t_lloyd);

  const Clock::time_point t_finish = Clock::now();
  std::vector<int32_t> labels(n);
  std::vector<float> sums(kd), unit_centers(kd);
  check(cudaMemsetAsync(im.b_sums.p, 0, kd * sizeof(float), s), "memset");
  check(cudaMemsetAsync(im.b_counts.p, 0, k * sizeof(int32_t), s), "memset");
  check(gpu::LaunchAccumulateClusters(im.b_points.p, im.b_labels.p, n, d, im.b_sums.p,
                                      im.b_counts.p, s),
        "raw sums");
  check(
      cudaMemcpyAsync(labels.data(), im.b_labels.p, sizeof(int32_t) * n, cudaMemcpyDeviceToHost, s),
      "download");
  check(cudaMemcpyAsync(sums.data(), im.b_sums.p, kd * sizeof(float), cudaMemcpyDeviceToHost, s),
        "download");
  check(cudaMemcpyAsync(unit_centers.data(), im.b_centers.p, kd * sizeof(float),
                        cudaMemcpyDeviceToHost, s),
        "download");
  check(cudaStreamSynchronize(s), "download");
  if (!fault.ok()) return fallback();
  CompactClusters(labels, k, d, unit_centers, std::vector<double>(sums.begin(), sums.end()),
                  &result);
  stats_.finish_seconds += SecondsSince(t_finish);
  stats_.max_iterations_run = std::max(stats_.max_iterations_run, result.iterations);
  return result;
}

}  // namespace squeeze
