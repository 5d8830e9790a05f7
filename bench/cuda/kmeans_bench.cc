// GPU spherical k-means of one layer of a registration at a real size (default: Llama-3-8B
// shape, 8 KV heads x 128K clustered keys, d = 128, k = 5% = 6,554 centres per head, <= 25
// iterations, as BuildSqueezeIndex runs it), extrapolated to --layers layers:
//   1. the batched solver from host fp32 keys (RunBatch: upload + everything, what a
//      registration pays today), with its phases;
//   2. the batched solver on keys already on the device as bf16 (ClusterOnDevice: what a
//      registration pays once the device KV cache is handed over), same seeds; then the same
//      with the index's early stop (--early_min_changed, SqueezeOptions::kmeans_min_changed):
//      its time, steps and objective against the exact rule's run;
//   3. the fused assignment kernel alone (CUDA events), as a fraction of the bf16 tensor-core
//      peak: FLOPs = 2 * n * k * d per head and assignment pass;
//   4. the first GPU version as the baseline (per head: fp32 upload, TF32 cuBLAS score matrix,
//      separate argmax, uniform seeding), on the same data;
// and the final objectives (sum over points of the cosine to their centre) of 1, 2 and 4.
// Data: per head, --true_clusters random directions with uniform noise (--noise, relative to
// the centre's coordinates), rows normalised — clustered, not uniform noise.
//
//   kmeans-bench                       # defaults: n 131072, 8 heads, d 128, 5%, 25 iterations
//   kmeans-bench --baseline=false --layers=32 --peak_tflops=989
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "engine/backend/cuda/cuda_kmeans.h"
#include "engine/backend/kmeans.h"
#include "engine/common/parallel_for.h"
#include "engine/squeeze/squeeze_index.h"
#include "kernels/kmeans/kmeans_assign.cuh"

ABSL_FLAG(int, n, 131072, "clustered keys per head");
ABSL_FLAG(int, heads, 8, "KV heads per layer (problems per batch)");
ABSL_FLAG(int, d, 128, "head dimension");
ABSL_FLAG(double, fraction, 0.05, "centroids per key (k = ceil(fraction * n))");
ABSL_FLAG(int, iterations, 25, "maximum assignment steps (SqueezeOptions::max_iterations)");
ABSL_FLAG(int, layers, 32, "layers to extrapolate the per-layer time to");
ABSL_FLAG(int, true_clusters, 8192, "random directions the synthetic keys cluster around");
ABSL_FLAG(double, noise, 0.6, "uniform noise amplitude relative to the centre coordinates");
ABSL_FLAG(double, seed_growth, 0.5, "CudaKMeansOptions::seed_growth");
ABSL_FLAG(double, min_changed_fraction, 0.0,
          "CudaKMeansOptions::min_changed_fraction (0: stop only when no label changes, as the "
          "CPU reference)");
ABSL_FLAG(double, early_min_changed, 0.005,
          "also run 2. with this per-call KMeansLimits::min_changed_fraction (the index option "
          "kmeans_min_changed); 0: skip");
ABSL_FLAG(bool, baseline, true, "also time the first GPU version (per-head cuBLAS path)");
ABSL_FLAG(double, peak_tflops, 989.0,
          "dense bf16 tensor-core peak of the card in TFLOP/s (H100/H200 SXM: 989)");

namespace squeeze {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

#define CHECK_CUDA(x)                                               \
  do {                                                              \
    cudaError_t e_ = (x);                                           \
    if (e_ != cudaSuccess) {                                        \
      std::fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                 \
    }                                                               \
  } while (0)

// splitmix64 uniforms in [-1, 1).
struct Rng {
  uint64_t s;
  uint64_t Next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float Uniform() { return static_cast<float>(Next() >> 40) * (2.0f / 16777216.0f) - 1.0f; }
};

// One head's keys: [n][d] unit rows around `true_k` random directions.
std::vector<float> ClusteredKeys(int n, int d, int true_k, float noise, uint64_t seed) {
  Rng rng{seed * 0x9E3779B97F4A7C15ull + 1};
  std::vector<float> centers(static_cast<size_t>(true_k) * d);
  for (float& x : centers) x = rng.Uniform();
  std::vector<float> keys(static_cast<size_t>(n) * d);
  for (int i = 0; i < n; ++i) {
    const float* c = &centers[static_cast<size_t>(rng.Next() % true_k) * d];
    float* x = &keys[static_cast<size_t>(i) * d];
    double sq = 0.0;
    for (int j = 0; j < d; ++j) {
      x[j] = c[j] + noise * rng.Uniform();
      sq += static_cast<double>(x[j]) * x[j];
    }
    const float inv = sq > 0.0 ? static_cast<float>(1.0 / std::sqrt(sq)) : 0.0f;
    for (int j = 0; j < d; ++j) x[j] *= inv;
  }
  return keys;
}

double FinalObjective(const std::vector<KMeansResult>& results) {
  double sum = 0.0;
  for (const KMeansResult& r : results) sum += r.objective.back();
  return sum;
}

int MaxIterations(const std::vector<KMeansResult>& results) {
  int it = 0;
  for (const KMeansResult& r : results) it = std::max(it, r.iterations);
  return it;
}

void PrintStats(const char* name, double seconds, const CudaKMeansStats& s, int layers) {
  std::printf(
      "%-34s %8.3f s/layer  (upload %.3f, normalise+seed %.3f, Lloyd %.3f, finish %.3f of which "
      "raw means and download %.3f; up to %d steps, %.3f of the points scored)  x%d layers: "
      "%.2f s\n",
      name, seconds, s.upload_seconds, s.seed_seconds, s.lloyd_seconds, s.finish_seconds,
      s.download_seconds, s.max_iterations_run,
      s.points_stepped > 0 ? static_cast<double>(s.points_scored) / s.points_stepped : 1.0, layers,
      seconds * layers);
}

int Main() {
  const int n = absl::GetFlag(FLAGS_n), H = absl::GetFlag(FLAGS_heads), d = absl::GetFlag(FLAGS_d);
  const int iterations = absl::GetFlag(FLAGS_iterations), layers = absl::GetFlag(FLAGS_layers);
  const int k = NumClustersFor(absl::GetFlag(FLAGS_fraction), n);
  const double peak = absl::GetFlag(FLAGS_peak_tflops) * 1e12;
  if (n < 1 || H < 1 || d < 1 || d > 128 || iterations < 1) {
    std::fprintf(stderr, "need n >= 1, heads >= 1, 1 <= d <= 128, iterations >= 1\n");
    return 1;
  }
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s (%d SMs)\nshape: %d heads x %d keys x d %d, k %d, <= %d iterations\n",
              prop.name, prop.multiProcessorCount, H, n, d, k, iterations);

  // ---- Data (host fp32, as BuildSqueezeIndex hands it over) and its bf16 device copy.
  double t0 = Now();
  std::vector<std::vector<float>> keys(H);
  ParallelFor(H, [&](size_t h) {
    keys[h] = ClusteredKeys(n, d, absl::GetFlag(FLAGS_true_clusters),
                            static_cast<float>(absl::GetFlag(FLAGS_noise)), 1000 + h);
  });
  std::vector<const float*> points(H);
  for (int h = 0; h < H; ++h) points[h] = keys[h].data();
  const size_t nd = static_cast<size_t>(n) * d;
  std::vector<__nv_bfloat16> host_bf16(static_cast<size_t>(H) * nd);
  for (int h = 0; h < H; ++h) {
    for (size_t i = 0; i < nd; ++i) host_bf16[h * nd + i] = __float2bfloat16_rn(keys[h][i]);
  }
  __nv_bfloat16* dev_bf16 = nullptr;
  CHECK_CUDA(cudaMalloc(&dev_bf16, host_bf16.size() * sizeof(__nv_bfloat16)));
  CHECK_CUDA(cudaMemcpy(dev_bf16, host_bf16.data(), host_bf16.size() * sizeof(__nv_bfloat16),
                        cudaMemcpyHostToDevice));
  std::printf("data: %d true clusters, noise %.2f (%.1f s to generate)\n\n",
              absl::GetFlag(FLAGS_true_clusters), absl::GetFlag(FLAGS_noise), Now() - t0);

  auto rngs_for = [&](std::vector<std::mt19937_64>* rngs, std::vector<std::mt19937_64*>* ptrs) {
    rngs->clear();
    ptrs->clear();
    for (int h = 0; h < H; ++h) rngs->emplace_back(77 + h);
    for (int h = 0; h < H; ++h) ptrs->push_back(&(*rngs)[h]);
  };
  std::vector<std::mt19937_64> rngs;
  std::vector<std::mt19937_64*> rng_ptrs;

  CudaKMeansOptions options;
  options.seed_growth = absl::GetFlag(FLAGS_seed_growth);
  options.min_changed_fraction = absl::GetFlag(FLAGS_min_changed_fraction);
  options.prune = true;  // compared with every point scored below
  CudaKMeans fused(0, options);
  {  // warm-up: module loading, allocations of the full size
    rngs_for(&rngs, &rng_ptrs);
    fused.RunBatch(points, n, d, k, 2, rng_ptrs);
  }

  // ---- 1. Batched, from host fp32.
  rngs_for(&rngs, &rng_ptrs);
  t0 = Now();
  const std::vector<KMeansResult> host_results =
      fused.RunBatch(points, n, d, k, iterations, rng_ptrs);
  const double host_s = Now() - t0;
  if (!fused.error().empty()) std::printf("ERROR: %s\n", fused.error().c_str());
  PrintStats("batched, host fp32 keys:", host_s, fused.stats(), layers);

  // ---- 2. Batched, device bf16 keys read in place.
  gpu::KMeansRawPoints raw;
  raw.b16 = dev_bf16;
  raw.problem_stride = static_cast<int64_t>(nd);
  raw.row_stride = d;
  // One timed ClusterOnDevice of the device keys from the same PRNG states; nullopt (printed) on
  // an error.
  auto on_device = [&](CudaKMeans& solver, KMeansLimits limits,
                       double* seconds) -> std::optional<std::vector<KMeansResult>> {
    rngs_for(&rngs, &rng_ptrs);
    const double start = Now();
    auto results = solver.ClusterOnDevice(raw, n, d, k, limits, rng_ptrs);
    *seconds = Now() - start;
    if (!results.ok()) {
      std::printf("ERROR: %s\n", std::string(results.status().message()).c_str());
      return std::nullopt;
    }
    return *std::move(results);
  };
  double dev_s = 0.0;
  const auto dev_results = on_device(fused, iterations, &dev_s);
  if (!dev_results) return 1;
  PrintStats("batched, device bf16 keys:", dev_s, fused.stats(), layers);
  {  // The same without the Lloyd steps' pruning: every point scored at every step.
    CudaKMeansOptions full_options = options;
    full_options.prune = false;
    CudaKMeans full(0, full_options);
    rngs_for(&rngs, &rng_ptrs);
    full.RunBatch(points, n, d, k, 2, rng_ptrs);  // warm-up
    double full_s = 0.0;
    const auto full_results = on_device(full, iterations, &full_s);
    if (!full_results) return 1;
    PrintStats("  same, every point scored:", full_s, full.stats(), layers);
    int same = 0;
    for (int h = 0; h < H; ++h) same += (*full_results)[h].labels == (*dev_results)[h].labels;
    std::printf("  pruning: %.2fx faster, the same labels in %d of %d heads\n", full_s / dev_s,
                same, H);
  }
  if (const double early = absl::GetFlag(FLAGS_early_min_changed); early > 0.0) {
    double early_s = 0.0;
    const auto early_results = on_device(fused, KMeansLimits(iterations, early), &early_s);
    if (!early_results) return 1;
    char name[64];
    std::snprintf(name, sizeof(name), "  same, min changed %g:", early);
    PrintStats(name, early_s, fused.stats(), layers);
    std::printf("  objective %.2f vs %.2f by the exact rule (%.4f%% lower), %.2fx faster\n",
                FinalObjective(*early_results), FinalObjective(*dev_results),
                100.0 * (1.0 - FinalObjective(*early_results) / FinalObjective(*dev_results)),
                dev_s / early_s);
  }

  // ---- 3. The assignment kernel alone: all heads against k centres (the first k unit keys).
  {
    const int dpad = d <= 64 ? 64 : 128;
    std::vector<__nv_bfloat16> unit(static_cast<size_t>(H) * n * dpad, __float2bfloat16_rn(0.f));
    for (int h = 0; h < H; ++h) {
      for (int i = 0; i < n; ++i) {
        for (int j = 0; j < d; ++j) {
          unit[(static_cast<size_t>(h) * n + i) * dpad + j] = host_bf16[h * nd + i * d + j];
        }
      }
    }
    __nv_bfloat16* dev_unit = nullptr;
    int32_t* labels = nullptr;
    float* best = nullptr;
    CHECK_CUDA(cudaMalloc(&dev_unit, unit.size() * sizeof(__nv_bfloat16)));
    CHECK_CUDA(cudaMalloc(&labels, sizeof(int32_t) * H * n));
    CHECK_CUDA(cudaMalloc(&best, sizeof(float) * H * n));
    CHECK_CUDA(cudaMemcpy(dev_unit, unit.data(), unit.size() * sizeof(__nv_bfloat16),
                          cudaMemcpyHostToDevice));
    gpu::KMeansAssignParams p;
    p.num_problems = H;
    p.n = n;
    p.k = k;
    p.dpad = dpad;
    p.points = dev_unit;
    p.points_stride = static_cast<int64_t>(n) * dpad;
    p.centers = dev_unit;  // the first k points of each problem
    p.centers_stride = p.points_stride;
    p.labels = labels;
    p.best = best;
    cudaEvent_t e0, e1;
    CHECK_CUDA(cudaEventCreate(&e0));
    CHECK_CUDA(cudaEventCreate(&e1));
    CHECK_CUDA(gpu::LaunchKMeansAssign(p, nullptr));  // warm-up
    constexpr int kReps = 5;
    CHECK_CUDA(cudaEventRecord(e0));
    for (int r = 0; r < kReps; ++r) CHECK_CUDA(gpu::LaunchKMeansAssign(p, nullptr));
    CHECK_CUDA(cudaEventRecord(e1));
    CHECK_CUDA(cudaEventSynchronize(e1));
    float ms = 0.0f;
    CHECK_CUDA(cudaEventElapsedTime(&ms, e0, e1));
    const double s = ms / 1e3 / kReps;
    // Useful FLOPs count the real d; the kernel multiplies padded rows (dpad).
    const double flops = 2.0 * n * static_cast<double>(k) * d * H;
    std::printf(
        "\nfused assignment kernel: %.3f ms per pass over %d heads (FLOPs = 2 n k d per head = "
        "%.3g): %.1f TFLOP/s = %.1f%% of the %.0f TFLOP/s bf16 peak\n",
        1e3 * s, H, flops, flops / s / 1e12, 100.0 * flops / s / peak, peak / 1e12);
    const int steps = MaxIterations(host_results);
    std::printf(
        "  assignment alone for %d steps (seeding counted as one): %.3f s/layer; the solver "
        "spent %.3f s/layer (device keys)\n",
        steps, s * steps, dev_s);
    cudaFree(dev_unit);
    cudaFree(labels);
    cudaFree(best);
  }

  // ---- 4. Baseline: the first GPU version, head by head.
  double base_s = 0.0;
  std::vector<KMeansResult> base_results;
  if (absl::GetFlag(FLAGS_baseline)) {
    CudaKMeansOptions base_options;
    base_options.cublas_baseline = true;
    CudaKMeans baseline(0, base_options);
    rngs_for(&rngs, &rng_ptrs);
    baseline.RunBatch(std::span<const float* const>(points.data(), 1), n, d, k, 2,
                      std::span<std::mt19937_64* const>(rng_ptrs.data(), 1));  // warm-up
    rngs_for(&rngs, &rng_ptrs);
    t0 = Now();
    base_results = baseline.RunBatch(points, n, d, k, iterations, rng_ptrs);
    base_s = Now() - t0;
    std::printf("\n");
    PrintStats("baseline (per-head cuBLAS TF32):", base_s, baseline.stats(), layers);
    const double base_flops =
        2.0 * n * static_cast<double>(k) * d * H * MaxIterations(base_results);
    std::printf("  baseline assignment FLOPs %.3g in %.3f s: %.1f TFLOP/s effective\n", base_flops,
                base_s, base_flops / base_s / 1e12);
  }

  // ---- Summary.
  std::printf("\nsummary (%d layers): batched from host %.2f s, from device keys %.2f s", layers,
              host_s * layers, dev_s * layers);
  if (base_s > 0.0) {
    std::printf(", baseline %.2f s; speed-up %.2fx (host keys), %.2fx (device keys)",
                base_s * layers, base_s / host_s, base_s / dev_s);
  }
  std::printf(
      "\nfinal objective (sum of cosines over %d x %d keys): batched host %.2f, device "
      "%.2f",
      H, n, FinalObjective(host_results), FinalObjective(*dev_results));
  if (!base_results.empty()) {
    std::printf(", baseline %.2f (batched / baseline %.5f)", FinalObjective(base_results),
                FinalObjective(host_results) / FinalObjective(base_results));
  }
  std::printf("\n");
  cudaFree(dev_bf16);
  return 0;
}

}  // namespace
}  // namespace squeeze

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return squeeze::Main();
}
