// The whole Llama forward on the CUDA backend at a real size, with random weights made on the
// device (bench/configs/llama3-8b by default):
//   1. registration-style prefill of --prefill_tokens in --chunk-token steps (no logits), then
//   2. batch-1 decode steps with that KV as context (greedy logits every step),
// each against its hardware floor measured in the same run: the decode step against
// (weight bytes + KV bytes read) / measured device-to-device copy bandwidth, the prefill against
// its FLOPs / the measured cuBLAS bf16 GEMM rate.
//
//   3. with --squeezed_budgets: the prefilled KV becomes a registered-style fixed context with
//      a Squeezed Attention index (5% centroids, calibrated on the last 64 queries): contiguous
//      20-token clusters (at random weights the cluster quality does not change the cost), or
//      with --kmeans the index a registration builds (GPU k-means on the device KV, calibration,
//      row reorder, each timed; --hierarchical adds the coarse level). Decode steps attend to it
//      densely and squeezed at each budget, selection on the GPU;
//   4. with --query_tokens: the time to first token of user inputs of those lengths against the
//      context, dense and squeezed (--query_blocks: also selected per block of tokens), and
//      their attention alone;
//   5. with --batches: several sequences decoding together against the context(s)
//      (--contexts copies), each batch per-sequence and cascade, dense and squeezed.
//
//   gpu-forward-bench --model=bench/configs/llama3-8b --prefill_tokens=32768
//       --decode_steps=32 --squeezed_budgets=0.1,0.05 --batches=1,8,32,64
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <optional>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "engine/backend/cuda/cuda_backend.h"
#include "engine/backend/cuda/cuda_kmeans.h"
#include "engine/backend/cuda/cuda_window_scorer.h"
#include "engine/backend/kv_cache.h"
#include "engine/model/llama_model.h"
#include "engine/sampling/sampler.h"
#include "engine/squeeze/calibration.h"
#include "engine/squeeze/selection.h"
#include "engine/squeeze/squeeze_index.h"
#include "kernels/attention/prefill_attention.cuh"

ABSL_FLAG(std::string, model, "bench/configs/llama3-8b", "directory with config.json");
ABSL_FLAG(int, prefill_tokens, 32768, "context tokens prefilled before decoding");
ABSL_FLAG(int, chunk, 8192, "prefill tokens per forward step");
ABSL_FLAG(int, decode_steps, 32, "timed decode steps (after 3 warm-up steps)");
ABSL_FLAG(bool, kmeans, false,
          "with --squeezed_budgets: build the index as a registration does (GPU k-means, "
          "calibration, row reorder) instead of contiguous clusters, and time it");
ABSL_FLAG(double, kmeans_min_changed, 0,
          "with --kmeans: the index's k-means early stop (SqueezeOptions::kmeans_min_changed): a "
          "head stops after a step that moved at most this fraction of its keys; 0: none moved");
ABSL_FLAG(bool, kmeans_prune, false,
          "With --kmeans: the k-means' Lloyd steps score only the points the bounds cannot settle "
          "(CudaKMeansOptions::prune)");
ABSL_FLAG(bool, host_calibration, false,
          "With --kmeans: calibrate the index on the host (ClusterScorer) instead of the GPU");
ABSL_FLAG(std::string, batches, "1",
          "comma-separated numbers of sequences decoding together against the fixed context(s); "
          "each batch runs per-sequence (every sequence reads its context on its own) and cascade "
          "(a shared context read once per step for all its sequences)");
ABSL_FLAG(std::string, projection_rows, "",
          "also time a decode step's projections alone (32 layers of q/k/v, o, gate/up, down and "
          "the lm_head of the model's shapes, random weights) at these row counts: the decode "
          "GEMV kernels against cuBLAS at the same rows and the weights' floor");
ABSL_FLAG(int, contexts, 1,
          "fixed contexts the sequences are spread over (round robin): copies of the prefilled "
          "context, each with its own copy on the GPU");
ABSL_FLAG(std::string, query_tokens, "",
          "comma-separated user-input lengths (e.g. 1024,4096): time to first token of one input "
          "of each length against the fixed context, dense and at each squeezed budget "
          "(needs --squeezed_budgets)");
ABSL_FLAG(std::string, query_blocks, "",
          "comma-separated query block sizes (e.g. 1,4): also the time to first token with the "
          "input selected per block of that many tokens at each squeezed budget (beyond the "
          "paper; blocks of one token run as cascade groups over the context)");
ABSL_FLAG(bool, hierarchical, false,
          "give the index a coarse level (1% centroids) and also run hierarchical selection at "
          "each squeezed budget");
ABSL_FLAG(std::string, squeezed_budgets, "",
          "comma-separated budgets: decode against the prefilled context as a fixed context, "
          "dense and squeezed at each budget (empty: skip)");
ABSL_FLAG(bool, per_step, false,
          "squeezed selection with the per-step budget policy (one threshold per layer and step "
          "from the step's scores) instead of the calibrated threshold");

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

// Milliseconds per call of `fn` (default stream), over `reps` calls after `warmup` calls.
template <class F>
double MsPerCall(int warmup, int reps, F fn) {
  for (int i = 0; i < warmup; ++i) fn();
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  cudaEventRecord(e0);
  for (int i = 0; i < reps; ++i) fn();
  cudaEventRecord(e1);
  cudaEventSynchronize(e1);
  float ms = 0;
  cudaEventElapsedTime(&ms, e0, e1);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return ms / reps;
}

// Device-to-device copy bandwidth (bytes read + written per second) of a 2 GiB copy.
double CopyBandwidth() {
  const size_t bytes = size_t{1} << 31;
  void *a = nullptr, *b = nullptr;
  CHECK_CUDA(cudaMalloc(&a, bytes));
  CHECK_CUDA(cudaMalloc(&b, bytes));
  CHECK_CUDA(cudaMemset(a, 1, bytes));
  const double ms = MsPerCall(1, 10, [&] { cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice); });
  cudaFree(a);
  cudaFree(b);
  return 2.0 * bytes / (ms * 1e-3);
}

// cuBLAS bf16 GEMM rate (fp32 accumulate) at 8192^3 on random data, FLOP/s.
double GemmRate() {
  const int n = 8192;
  std::vector<__nv_bfloat16> host(static_cast<size_t>(n) * n);
  uint64_t s = 12345;
  for (auto& x : host) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    x = __float2bfloat16(static_cast<float>((s >> 40) & 0xFFFF) / 65536.0f - 0.5f);
  }
  __nv_bfloat16 *a = nullptr, *b = nullptr;
  float* c = nullptr;
  CHECK_CUDA(cudaMalloc(&a, host.size() * 2));
  CHECK_CUDA(cudaMalloc(&b, host.size() * 2));
  CHECK_CUDA(cudaMalloc(&c, host.size() * 4));
  CHECK_CUDA(cudaMemcpy(a, host.data(), host.size() * 2, cudaMemcpyHostToDevice));
  CHECK_CUDA(cudaMemcpy(b, host.data(), host.size() * 2, cudaMemcpyHostToDevice));
  cublasHandle_t h;
  cublasCreate(&h);
  const float alpha = 1, beta = 0;
  auto run = [&] {
    cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &alpha, a, CUDA_R_16BF, n, b, CUDA_R_16BF, n,
                 &beta, c, CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  };
  const double ms = MsPerCall(3, 10, run);
  cublasDestroy(h);
  cudaFree(a);
  cudaFree(b);
  cudaFree(c);
  return 2.0 * n * n * static_cast<double>(n) / (ms * 1e-3);
}

// Seconds of `steps` greedy decode steps of the sequences `kvs` together (after 3 untimed
// ones), sorted; sequence i attends to contexts[i % contexts.size()] (none when empty) through
// fixed[i] (nullptr: dense). Exits on error.
// Decode steps of the sequences in `kvs` (3 warm-up steps, then `steps` timed), each sampling
// its next token greedily on the device as the server does (only the tokens come back).
std::vector<double> DecodeTimes(LlamaModel& m, std::span<SequenceKV* const> kvs,
                                std::span<const ContextKV* const> contexts,
                                std::span<FixedContextAttention* const> fixed, int steps) {
  std::vector<double> times;
  // Each sequence starts from its own token, so the sequences' queries differ (as users'
  // questions do) and a squeezed group's selections are not all alike.
  std::vector<int32_t> next(kvs.size());
  for (size_t b = 0; b < next.size(); ++b) next[b] = static_cast<int32_t>(1 + 7919 * b % 100000);
  SamplingParams greedy;
  greedy.temperature = 0.0f;
  Sampler sampler(greedy, 1);
  std::vector<SampleJob> jobs(kvs.size());
  for (int i = 0; i < steps + 3; ++i) {
    std::vector<SequenceStep> batch;
    for (size_t b = 0; b < kvs.size(); ++b) {
      jobs[b] = {.sampler = &sampler};
      batch.push_back({.tokens = std::span<const int32_t>(&next[b], 1),
                       .context = contexts.empty() ? nullptr : contexts[b % contexts.size()],
                       .fixed = fixed.empty() ? nullptr : fixed[b],
                       .kv = kvs[b],
                       .sample = &jobs[b]});
    }
    ForwardOutput out;
    const double s0 = Now();
    const absl::Status st = m.Forward(std::span<SequenceStep>(batch), &out);
    const double dt = Now() - s0;
    if (!st.ok()) {
      std::fprintf(stderr, "decode: %s\n", std::string(st.message()).c_str());
      std::exit(1);
    }
    for (size_t b = 0; b < kvs.size(); ++b) next[b] = jobs[b].token;
    if (i >= 3) times.push_back(dt);
  }
  std::sort(times.begin(), times.end());
  return times;
}

// A decode step's projections alone at `rows` sequences: through the backend as it runs them
// (the CUDA-core GEMV for a few rows, else RMSNorm or SiLU-mul to bf16 + cuBLAS), through the
// backend with the tensor-core GEMV for 5..64 rows, and the bare cuBLAS GEMMs (bf16 input made
// once, fp32 output: no norm, no conversion), one layer's matrices used for every layer (each
// 436 MB at the 8B shape, so nothing stays in L2). Milliseconds per step.
struct ProjectionMs {
  double backend, tensor_core, bare_cublas;
};
ProjectionMs ProjectionTimes(CudaBackend& be, const ModelConfig& c, int rows) {
  const int D = c.hidden_size, F = c.intermediate_size;
  const int q_dim = c.num_heads * c.head_dim, kv_dim = c.num_kv_heads * c.head_dim;
  auto matrix = [&](int r, int k, uint64_t seed) {
    auto w = be.RandomMatrix(r, k, seed, 0.02f);
    if (!w.ok()) {
      std::fprintf(stderr, "%s\n", std::string(w.status().message()).c_str());
      std::exit(1);
    }
    return *w;
  };
  const Matrix wq = matrix(q_dim, D, 1), wk = matrix(kv_dim, D, 2), wv = matrix(kv_dim, D, 3);
  const Matrix wo = matrix(D, q_dim, 4), gate = matrix(F, D, 5), up = matrix(F, D, 6);
  const Matrix down = matrix(D, F, 7), head = matrix(c.vocab_size, D, 8);
  auto vec = [&](size_t n, uint64_t seed) {
    auto v = be.RandomVector(static_cast<int>(n), seed, 0.0f, 1.0f);
    if (!v.ok()) std::exit(1);
    return const_cast<float*>(*v);
  };
  const size_t widest = static_cast<size_t>(std::max({F, q_dim, D, c.vocab_size}));
  float* x = vec(static_cast<size_t>(rows) * widest, 9);
  float* x2 = vec(static_cast<size_t>(rows) * widest, 10);
  float* y[3] = {vec(static_cast<size_t>(rows) * widest, 11),
                 vec(static_cast<size_t>(rows) * widest, 12),
                 vec(static_cast<size_t>(rows) * widest, 13)};
  const float* norm = vec(widest, 14);
  auto ours = [&] {
    for (int l = 0; l < c.num_layers; ++l) {
      const Backend::MatMulOutput qkv[] = {{&wq, y[0]}, {&wk, y[1]}, {&wv, y[2]}};
      be.NormMatMuls(x, norm, 1e-5f, x2, rows, qkv);
      be.MatMul(x, wo, y[0], rows, /*accumulate=*/true);
      const Backend::MatMulOutput gu[] = {{&gate, y[1]}, {&up, y[2]}};
      be.NormMatMuls(x, norm, 1e-5f, x2, rows, gu);
      be.SiluMulMatMul(y[1], y[2], down, y[0], rows, /*accumulate=*/true);
    }
    const Backend::MatMulOutput h[] = {{&head, y[1]}};
    be.NormMatMuls(x, norm, 1e-5f, x2, rows, h);
  };
  cublasHandle_t blas;
  cublasCreate(&blas);
  __nv_bfloat16* xb = nullptr;
  CHECK_CUDA(cudaMalloc(&xb, static_cast<size_t>(rows) * widest * 2));
  CHECK_CUDA(cudaMemset(xb, 0, static_cast<size_t>(rows) * widest * 2));
  auto gemm = [&](const Matrix& w, float* out, float beta) {
    const float alpha = 1.0f;
    cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, w.rows, rows, w.cols, &alpha, w.data, CUDA_R_16BF,
                 w.cols, xb, CUDA_R_16BF, w.cols, &beta, out, CUDA_R_32F, w.rows,
                 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  };
  auto theirs = [&] {
    for (int l = 0; l < c.num_layers; ++l) {
      gemm(wq, y[0], 0.0f);
      gemm(wk, y[1], 0.0f);
      gemm(wv, y[2], 0.0f);
      gemm(wo, y[0], 1.0f);
      gemm(gate, y[1], 0.0f);
      gemm(up, y[2], 0.0f);
      gemm(down, y[0], 1.0f);
    }
    gemm(head, y[1], 0.0f);
  };
  if (!be.Synchronize().ok()) std::exit(1);
  auto time_ours = [&](bool tensor_core) {
    be.set_execution_options({.tensor_core_projections = tensor_core});
    return MsPerCall(2, 5, [&] {
      ours();
      if (!be.Synchronize().ok()) std::exit(1);
    });
  };
  ProjectionMs ms;
  ms.backend = time_ours(false);
  ms.tensor_core = time_ours(true);
  be.set_execution_options({});
  ms.bare_cublas = MsPerCall(2, 5, [&] {
    theirs();
    cudaDeviceSynchronize();
  });
  cublasDestroy(blas);
  cudaFree(xb);
  return ms;
}

// Forwards to the CUDA k-means and adds up its phases per call (CudaKMeansStats), the fine
// level's (a layer's heads in one batch, the device KV read in place) and the coarse level's (a
// layer's heads' fine centroids from the host, batched) apart: where the index's k-means time
// goes.
class PhaseTimedKMeans final : public squeeze::KMeansSolver {
 public:
  struct Totals {
    int calls = 0, max_steps = 0;
    double wall = 0, seed = 0, lloyd = 0, finish = 0, download = 0;
    int64_t scored = 0, stepped = 0;  // points the Lloyd steps scored, of all (pruning)
  };
  explicit PhaseTimedKMeans(squeeze::CudaKMeans* k) : k_(k) {}
  squeeze::KMeansResult Run(const float* points, int n, int d, int k, squeeze::KMeansLimits limits,
                            std::mt19937_64& rng) override {
    const double t0 = Now();
    squeeze::KMeansResult r = k_->Run(points, n, d, k, limits, rng);
    Add(&coarse_, t0);
    return r;
  }
  std::vector<squeeze::KMeansResult> RunBatch(std::span<const float* const> points, int n, int d,
                                              int k, squeeze::KMeansLimits limits,
                                              std::span<std::mt19937_64* const> rngs) override {
    const double t0 = Now();
    auto r = k_->RunBatch(points, n, d, k, limits, rngs);
    Add(&coarse_, t0);
    return r;
  }
  std::optional<std::vector<squeeze::KMeansResult>> RunBatchInPlace(
      const DevicePoints& points, int num_problems, int n, int d, int k,
      squeeze::KMeansLimits limits, std::span<std::mt19937_64* const> rngs) override {
    const double t0 = Now();
    auto r = k_->RunBatchInPlace(points, num_problems, n, d, k, limits, rngs);
    Add(&fine_, t0);
    return r;
  }
  const Totals& fine() const { return fine_; }
  const Totals& coarse() const { return coarse_; }

 private:
  void Add(Totals* t, double t0) {
    const squeeze::CudaKMeansStats& s = k_->stats();
    ++t->calls;
    t->max_steps = std::max(t->max_steps, s.max_iterations_run);
    t->wall += Now() - t0;
    t->seed += s.seed_seconds;
    t->lloyd += s.lloyd_seconds;
    t->finish += s.finish_seconds;
    t->download += s.download_seconds;
    t->scored += s.points_scored;
    t->stepped += s.points_stepped;
  }
  squeeze::CudaKMeans* k_;
  Totals fine_, coarse_;
};

int Main() {
  const std::string dir = absl::GetFlag(FLAGS_model);
  auto config = LoadModelConfig(dir);
  if (!config.ok()) {
    std::fprintf(stderr, "%s\n", std::string(config.status().message()).c_str());
    return 1;
  }
  auto backend = CudaBackend::Create(0);
  if (!backend.ok()) {
    std::fprintf(stderr, "%s\n", std::string(backend.status().message()).c_str());
    return 1;
  }
  const std::string device = (*backend)->Describe();
  CudaBackend* cuda = backend->get();  // owned by the model below
  const double copy_bw = CopyBandwidth();
  const double gemm = GemmRate();
  std::printf(
      "device: %s\nmeasured: copy %.0f GB/s (read + write), cuBLAS bf16 GEMM 8192^3 "
      "%.0f TFLOP/s\n",
      device.c_str(), copy_bw / 1e9, gemm / 1e12);

  const double t_load = Now();
  auto model = LlamaModel::CreateRandom(*config, std::move(*backend), 7);
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", std::string(model.status().message()).c_str());
    return 1;
  }
  LlamaModel& m = **model;
  const ModelConfig& c = m.config();
  std::printf(
      "model %s: %d layers, hidden %d, heads %d/%d, head dim %d, vocab %d; %.2f GB of "
      "bf16 weights made in %.2f s\n",
      dir.c_str(), c.num_layers, c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim,
      c.vocab_size, m.weight_bytes() / 1e9, Now() - t_load);

  // ---- a decode step's projections alone -----------------------------------------------------
  for (absl::string_view r :
       absl::StrSplit(absl::GetFlag(FLAGS_projection_rows), ',', absl::SkipEmpty())) {
    int rows = 0;
    if (!absl::SimpleAtoi(r, &rows) || rows < 1) continue;
    const ProjectionMs ms = ProjectionTimes(*cuda, c, rows);
    const double qd = c.num_heads * c.head_dim, kvd = c.num_kv_heads * c.head_dim;
    const double D = c.hidden_size, F = c.intermediate_size;
    const double bytes =
        2.0 * (c.num_layers * (2.0 * qd * D + 2.0 * kvd * D + 3.0 * F * D) + c.vocab_size * D);
    const double floor_ms = 1e3 * bytes / copy_bw;
    std::printf(
        "projections of a decode step, %2d rows: %7.3f ms (%.2fx the weights' floor %.3f ms); "
        "tensor-core GEMV %7.3f ms = %.2fx; bare cuBLAS GEMMs %7.3f ms = %.2fx\n",
        rows, ms.backend, ms.backend / floor_ms, floor_ms, ms.tensor_core,
        ms.tensor_core / ms.backend, ms.bare_cublas, ms.bare_cublas / ms.backend);
  }

  // ---- prefill -------------------------------------------------------------------------------
  const int S = absl::GetFlag(FLAGS_prefill_tokens), chunk = absl::GetFlag(FLAGS_chunk);
  std::vector<int32_t> tokens(S);
  for (int i = 0; i < S; ++i) tokens[i] = (i * 7919 + 13) % c.vocab_size;
  SequenceKV kv = m.NewSequenceKV();
  constexpr int kWindow = 64;
  QueryCapture capture;  // the last kWindow queries, for the squeezed index's calibration
  capture.from_position = S - kWindow;
  const bool squeezed = !absl::GetFlag(FLAGS_squeezed_budgets).empty();
  double t0 = Now();
  for (int begin = 0; begin < S; begin += chunk) {
    const int n = std::min(chunk, S - begin);
    SequenceStep step{.tokens = std::span<const int32_t>(tokens).subspan(begin, n),
                      .kv = &kv,
                      .want_logits = false,
                      .capture = squeezed && begin + n > S - kWindow ? &capture : nullptr};
    ForwardOutput out;
    const absl::Status st = m.Forward(std::span<SequenceStep>(&step, 1), &out);
    if (!st.ok()) {
      std::fprintf(stderr, "prefill: %s\n", std::string(st.message()).c_str());
      return 1;
    }
  }
  const double prefill_s = Now() - t0;
  // FLOPs: 2 per weight per token over the layers (embedding lookup excluded, no lm_head) plus
  // causal attention 4 * S^2 / 2 * d * Hq per layer.
  const double d = c.head_dim, D = c.hidden_size, I = c.intermediate_size;
  const double layer_weights = D * d * (c.num_heads * 2.0 + c.num_kv_heads * 2.0) + 3.0 * D * I;
  const double linear_flops = 2.0 * layer_weights * c.num_layers * S;
  const double attn_flops = 4.0 * (static_cast<double>(S) * S / 2) * d * c.num_heads * c.num_layers;
  const double floor_s = (linear_flops + attn_flops) / gemm;
  std::printf(
      "\nprefill %d tokens in chunks of %d: %.2f s, %.0f tokens/s; %.2f PFLOP "
      "(%.0f%% attention) -> %.0f TFLOP/s = %.2f of the measured GEMM rate "
      "(floor %.2f s)\n",
      S, chunk, prefill_s, S / prefill_s, (linear_flops + attn_flops) / 1e15,
      100 * attn_flops / (linear_flops + attn_flops),
      (linear_flops + attn_flops) / prefill_s / 1e12, floor_s / prefill_s, floor_s);

  // ---- decode --------------------------------------------------------------------------------
  const int steps = absl::GetFlag(FLAGS_decode_steps);
  SequenceKV* const one = &kv;
  std::vector<double> times = DecodeTimes(m, std::span<SequenceKV* const>(&one, 1), {}, {}, steps);
  const double median = times[times.size() / 2];
  // Bytes a decode step must read: every weight except the embedding table (one row), the
  // lm_head, and the K/V of the whole sequence.
  const double weight_bytes = layer_weights * c.num_layers * 2.0 + 2.0 * c.vocab_size * D;
  const double kv_bytes = 2.0 * c.num_layers * c.num_kv_heads * d * 2.0 * (S + steps / 2);
  // The copy rate counts bytes read plus bytes written, i.e. the memory traffic per second; a
  // decode step's traffic is (almost only) the bytes it reads.
  const double floor_dec = (weight_bytes + kv_bytes) / copy_bw;
  std::printf(
      "\ndecode, batch 1, %d context tokens: median %.3f ms/token (min %.3f, max %.3f) "
      "over %d steps; reads %.2f GB weights + %.2f GB KV; floor at the copy bandwidth "
      "%.3f ms -> %.2fx the floor\n",
      S, 1e3 * median, 1e3 * times.front(), 1e3 * times.back(), steps, weight_bytes / 1e9,
      kv_bytes / 1e9, 1e3 * floor_dec, median / floor_dec);
  if (!squeezed) return 0;

  // ---- squeezed decode against the prefilled context ----------------------------------------
  std::vector<double> budgets;
  for (absl::string_view b : absl::StrSplit(absl::GetFlag(FLAGS_squeezed_budgets), ',')) {
    double v = 0;
    if (absl::SimpleAtod(b, &v)) budgets.push_back(v);
  }
  t0 = Now();
  ContextKV ctx;
  SqueezeIndex index;
  if (absl::GetFlag(FLAGS_kmeans)) {
    SqueezeOptions options;
    options.centroid_fraction = 0.05;
    options.window = kWindow;
    options.hierarchical = absl::GetFlag(FLAGS_hierarchical);
    options.kmeans_min_changed = absl::GetFlag(FLAGS_kmeans_min_changed);
    BuildTimings timings;
    CudaKMeansOptions kmeans_options;
    kmeans_options.prune = absl::GetFlag(FLAGS_kmeans_prune);
    CudaKMeans kmeans(0, kmeans_options);
    // As a registration does: the prefill's KV, still on the device, clustered in place while
    // the host copy is made beside it.
    CudaWindowScorer window_scorer;
    PhaseTimedKMeans timed(&kmeans);
    auto built =
        BuildIndexedContext(kv, S, capture, c.num_heads, options, nullptr, &timings, &timed,
                            absl::GetFlag(FLAGS_host_calibration) ? nullptr : &window_scorer);
    if (!built.ok()) {
      std::fprintf(stderr, "index: %s\n", std::string(built.status().message()).c_str());
      return 1;
    }
    ctx = std::move(built->kv);
    index = std::move(built->index);
    std::printf(
        "\nindex of the %d-token context (%d layers x %d KV heads, 5%% centroids, GPU "
        "k-means on the device KV in place, <= %d iterations, min changed %g%s): k-means %.2f s, "
        "calibration %.2f s after it (%s; on the GPU a layer at a time beside the k-means); "
        "beside them the KV to the host %.2f s and its row reorder "
        "%.2f s, of which %.2f s after the calibration; %.2f s in all\n",
        S, c.num_layers, c.num_kv_heads, options.max_iterations, options.kmeans_min_changed,
        options.hierarchical ? ", coarse level 1% on the GPU too" : "",
        timings.clustering_seconds - timings.reorder_wait_seconds, timings.calibration_seconds,
        absl::GetFlag(FLAGS_host_calibration) ? "host" : "GPU", timings.host_copy_seconds,
        timings.reorder_seconds, timings.reorder_wait_seconds, Now() - t0);
    for (const auto& [name, t] :
         {std::pair("fine", timed.fine()), std::pair("coarse", timed.coarse())}) {
      if (t.calls == 0) continue;
      std::printf(
          "  k-means %s level: %d calls, %.2f s (seeding and first step %.2f, later steps %.2f, "
          "finish %.2f of which raw means and download %.2f; the rest outside the solver's "
          "phases), at most %d steps, the later steps scored %.3f of the points\n",
          name, t.calls, t.wall, t.seed, t.lloyd, t.finish, t.download, t.max_steps,
          t.stepped > 0 ? static_cast<double>(t.scored) / t.stepped : 1.0);
    }
  } else {
    ctx = ContextKV::FromSequence(kv, S);
    std::printf("\nKV of the %d-token context copied to the host in %.2f s\n", S, Now() - t0);
  }
  if (index.heads.empty()) {
    index.num_layers = c.num_layers;
    index.num_kv_heads = c.num_kv_heads;
    index.num_q_heads = c.num_heads;
    index.head_dim = c.head_dim;
    index.num_tokens = S;
    index.window = kWindow;
    index.num_clustered = S - kWindow;
    index.options.centroid_fraction = 0.05;
    index.options.window = kWindow;
    index.options.hierarchical = absl::GetFlag(FLAGS_hierarchical);
    index.options.coarse_fraction = 0.01;
    constexpr int kClusterSize = 20;
    const int hd = c.head_dim;
    std::vector<float> rows;
    for (int l = 0; l < c.num_layers; ++l) {
      for (int h = 0; h < c.num_kv_heads; ++h) {
        SqueezeHeadIndex head;
        for (int r = 0; r < index.num_clustered; r += kClusterSize) {
          const int size = std::min(kClusterSize, index.num_clustered - r);
          head.offsets.push_back(r);
          head.sizes.push_back(size);
          std::vector<double> mean(hd, 0.0);
          const float* k = ctx.KeysF32(l, h, r, size, &rows);  // the host copy is bf16
          for (int t = 0; t < size; ++t) {
            for (int i = 0; i < hd; ++i) mean[i] += k[static_cast<size_t>(t) * hd + i];
          }
          for (int i = 0; i < hd; ++i) head.centroids.push_back(static_cast<float>(mean[i] / size));
        }
        head.offsets.push_back(index.num_clustered);
        if (absl::GetFlag(FLAGS_hierarchical)) {
          // Coarse level: every 5 consecutive fine clusters (1% centroids), centroid = mean of
          // the fine centroids, size = keys under it.
          constexpr int kFinePerCoarse = 5;
          const int C = static_cast<int>(head.sizes.size());
          head.coarse_offsets.push_back(0);
          for (int c0 = 0; c0 < C; c0 += kFinePerCoarse) {
            const int c1 = std::min(C, c0 + kFinePerCoarse);
            int32_t keys = 0;
            for (int i = 0; i < hd; ++i) {
              double mean = 0.0;
              for (int c = c0; c < c1; ++c) mean += head.centroids[static_cast<size_t>(c) * hd + i];
              head.coarse_centroids.push_back(static_cast<float>(mean / (c1 - c0)));
            }
            for (int c = c0; c < c1; ++c) keys += head.sizes[c];
            head.coarse_sizes.push_back(keys);
            head.coarse_offsets.push_back(c1);
          }
        }
        index.heads.push_back(std::move(head));
      }
    }
    std::vector<const float*> window_q(c.num_layers);
    for (int l = 0; l < c.num_layers; ++l) window_q[l] = capture.q[l].data();
    if (absl::Status st = CalibrateSqueezeIndex(window_q, &index); !st.ok()) {
      std::fprintf(stderr, "calibration: %s\n", std::string(st.message()).c_str());
      return 1;
    }
  }
  // As the engine does after a registration: the prefill's KV becomes the context's resident
  // copy on the GPU (rows gathered into storage order) instead of an upload of the host copy.
  const double t_adopt = Now();
  m.backend().AdoptContextKv(ctx, std::move(kv));
  kv = SequenceKV();
  std::printf(
      "\ncontext's resident copy gathered on the GPU from the prefill's KV in %.1f ms "
      "(%s)\n",
      1e3 * (Now() - t_adopt), ctx.resident.value != nullptr ? "adopted" : "NOT adopted");
  std::printf("\nfixed context of %d tokens: %lld centroids (5%%), index made in %.1f s\n", S,
              static_cast<long long>(index.num_centroids()), Now() - t0);

  // Contexts beyond the first: copies of it that get their own copy on the GPU at first use.
  const int num_contexts = std::max(1, absl::GetFlag(FLAGS_contexts));
  std::vector<std::unique_ptr<ContextKV>> copies;
  std::vector<const ContextKV*> contexts = {&ctx};
  for (int i = 1; i < num_contexts; ++i) {
    copies.push_back(std::make_unique<ContextKV>(ctx));
    copies.back()->resident.value = nullptr;
    contexts.push_back(copies.back().get());
  }
  std::vector<int> batches;
  for (absl::string_view b : absl::StrSplit(absl::GetFlag(FLAGS_batches), ',', absl::SkipEmpty())) {
    int v = 0;
    if (absl::SimpleAtoi(b, &v) && v > 0) batches.push_back(v);
  }
  // One timed decode run of `batch` sequences against the contexts: dense (budget < 0) or
  // squeezed, cascade or per sequence; realised = the mean realised KV budget of the sequences.
  // *union_read: the fraction of the context's rows the squeezed cascade groups read (the union
  // of their sequences' selections); 1 when dense.
  double union_read = 1.0;
  using CascadeKernel = Backend::ExecutionOptions::CascadeKernel;
  const bool wgmma_cascade = gpu::PrefillWgmmaSupported(d);
  auto run = [&](int batch, double budget, bool cascade, double* realised,
                 bool hierarchical = false, CascadeKernel kernel = CascadeKernel::kAuto) {
    m.backend().set_execution_options({.cascade = cascade, .cascade_kernel = kernel});
    SelectionOptions options;
    options.budget = std::max(budget, 0.0);
    options.hierarchical = hierarchical;
    if (absl::GetFlag(FLAGS_per_step)) options.budget_policy = BudgetPolicy::kPerStep;
    std::vector<std::unique_ptr<SqueezedFixedContextAttention>> selectors;
    std::vector<FixedContextAttention*> fixed;
    std::vector<SequenceKV> dyn;
    std::vector<SequenceKV*> kvs;
    for (int b = 0; b < batch; ++b) {
      selectors.push_back(std::make_unique<SqueezedFixedContextAttention>(index, options));
      fixed.push_back(budget < 0 ? nullptr : selectors.back().get());
      dyn.push_back(m.NewSequenceKV());
    }
    for (SequenceKV& d : dyn) kvs.push_back(&d);
    cuda->TakeCascadeKeyStats();
    const std::vector<double> t = DecodeTimes(m, kvs, contexts, fixed, steps);
    const CascadeAttention::KeyStats keys = cuda->TakeCascadeKeyStats();
    union_read = keys.rows_total > 0 ? static_cast<double>(keys.rows_read) / keys.rows_total : 1.0;
    *realised = 0.0;
    for (const auto& sel : selectors) *realised += budget < 0 ? 1.0 : sel->realised_budget();
    *realised /= batch;
    m.backend().set_execution_options({});
    return t[t.size() / 2];
  };
  const double ctx_kv_bytes = 2.0 * c.num_layers * c.num_kv_heads * d * 2.0 * S;
  std::printf(
      "\ndecode against %d fixed context(s) of %d tokens; floors at the copy bandwidth: "
      "per-sequence = weights + every sequence's context KV, cascade = weights + each "
      "context's KV once (squeezed: times the realised budget)\n",
      num_contexts, S);
  for (int batch : batches) {
    // The same batch without a context: weights, the sequences' own rows, sampling, launches.
    {
      std::vector<SequenceKV> bare(batch);
      std::vector<SequenceKV*> bare_kvs;
      for (SequenceKV& d : bare) {
        d = m.NewSequenceKV();
        bare_kvs.push_back(&d);
      }
      const std::vector<double> t = DecodeTimes(m, bare_kvs, {}, {}, steps);
      const double floor_w = weight_bytes / copy_bw;
      std::printf("batch %2d without a context: %8.3f ms/step (%.2fx the weights' floor %.3f ms)\n",
                  batch, 1e3 * t[t.size() / 2], t[t.size() / 2] / floor_w, 1e3 * floor_w);
    }
    const int shared = std::min(batch, num_contexts);  // contexts in use
    double realised = 1.0;
    const double dense_seq = run(batch, -1.0, false, &realised);
    const double dense_cas = batch > 1 ? run(batch, -1.0, true, &realised) : dense_seq;
    // Each dense cascade kernel forced, for comparison (the wgmma one on Hopper only).
    const double dense_cas_mma =
        batch > 1 ? run(batch, -1.0, true, &realised, false, CascadeKernel::kMmaSync) : dense_seq;
    const double dense_cas_wgmma =
        batch > 1 && wgmma_cascade ? run(batch, -1.0, true, &realised, false, CascadeKernel::kWgmma)
                                   : 0.0;
    const double floor_seq = (weight_bytes + batch * ctx_kv_bytes) / copy_bw;
    const double floor_cas = (weight_bytes + shared * ctx_kv_bytes) / copy_bw;
    std::printf(
        "batch %2d: dense per-sequence %8.3f ms/step (%.2fx its floor %.3f ms), cascade "
        "%8.3f ms/step (%.2fx its floor %.3f ms) = %.2fx faster, %.0f tokens/s; cascade kernel "
        "forced: mma.sync %8.3f, wgmma %8.3f ms/step\n",
        batch, 1e3 * dense_seq, dense_seq / floor_seq, 1e3 * floor_seq, 1e3 * dense_cas,
        dense_cas / floor_cas, 1e3 * floor_cas, dense_seq / dense_cas, batch / dense_cas,
        1e3 * dense_cas_mma, 1e3 * dense_cas_wgmma);
    for (double b : budgets) {
      const double seq = run(batch, b, false, &realised);
      const double realised_seq = realised;
      const double cas = batch > 1 ? run(batch, b, true, &realised) : seq;
      const double cas_union = batch > 1 ? union_read : realised_seq;
      // Bytes: weights and the kept K/V (the realised budget counts half a row per centroid
      // scored, what a bf16 centroid costs next to a K+V row).
      const double floor_s = (weight_bytes + batch * realised_seq * ctx_kv_bytes) / copy_bw;
      std::printf(
          "  squeezed %.2f: per-sequence %8.3f ms/step (realised %.4f, %.2fx its floor %.3f ms), "
          "cascade %8.3f ms/step (realised %.4f, the group reads %.4f of the context: %.2fx "
          "that floor) = %.2fx dense cascade, %.0f tokens/s\n",
          b, 1e3 * seq, realised_seq, seq / floor_s, 1e3 * floor_s, 1e3 * cas, realised, cas_union,
          cas / ((weight_bytes + shared * cas_union * ctx_kv_bytes) / copy_bw), dense_cas / cas,
          batch / cas);
      if (absl::GetFlag(FLAGS_hierarchical)) {
        const double th = run(batch, b, false, &realised, /*hierarchical=*/true);
        std::printf(
            "  hierarchical %.2f (coarse keep %.2f): %.3f ms/step, realised KV budget %.4f, "
            "%.2fx dense per-sequence\n",
            b, std::min(1.0, 5 * b), 1e3 * th, realised, dense_seq / th);
      }
    }
  }

  double realised = 1.0;
  // ---- time to first token: one user input against the context ------------------------------
  for (absl::string_view q :
       absl::StrSplit(absl::GetFlag(FLAGS_query_tokens), ',', absl::SkipEmpty())) {
    int n = 0;
    if (!absl::SimpleAtoi(q, &n) || n <= 0) continue;
    std::vector<int32_t> input(n);
    for (int i = 0; i < n; ++i) input[i] = (i * 104729 + 7) % c.vocab_size;
    // Median of 3 (after one warm-up) of a fresh sequence's first step; realised budget of
    // the last run.
    auto ttft = [&](double budget, double* realised_out, bool hierarchical = false,
                    int query_block = 0) {
      std::vector<double> t;
      for (int rep = 0; rep < 4; ++rep) {
        SelectionOptions options;
        options.budget = std::max(budget, 0.0);
        options.hierarchical = hierarchical;
        options.query_block = query_block;
        if (absl::GetFlag(FLAGS_per_step)) options.budget_policy = BudgetPolicy::kPerStep;
        SqueezedFixedContextAttention selector(index, options);
        SequenceKV dyn = m.NewSequenceKV();
        SequenceStep step{.tokens = input,
                          .context = &ctx,
                          .fixed = budget < 0 ? nullptr : &selector,
                          .kv = &dyn};
        ForwardOutput out;
        const double s0 = Now();
        const absl::Status st = m.Forward(std::span<SequenceStep>(&step, 1), &out);
        const double dt = Now() - s0;
        if (!st.ok()) {
          std::fprintf(stderr, "ttft: %s\n", std::string(st.message()).c_str());
          std::exit(1);
        }
        if (rep > 0) t.push_back(dt);
        *realised_out = budget < 0 ? 1.0 : selector.realised_budget();
      }
      std::sort(t.begin(), t.end());
      return t[t.size() / 2];
    };
    const double dense_ttft = ttft(-1.0, &realised);
    // Attention FLOPs of the input over context + itself (causal), for the achieved rate.
    const double attn = 4.0 * n * (S + n / 2.0) * d * c.num_heads * c.num_layers;
    std::printf(
        "time to first token, %d-token input against the %d-token context: dense "
        "%.1f ms (attention %.1f TFLOP)\n",
        n, S, 1e3 * dense_ttft, attn / 1e12);
    for (double b : budgets) {
      const double t = ttft(b, &realised);
      std::printf(
          "  squeezed budget %.2f: %.1f ms, realised KV budget %.4f, %.2fx faster than "
          "dense\n",
          b, 1e3 * t, realised, dense_ttft / t);
      if (absl::GetFlag(FLAGS_hierarchical)) {
        // The coarse level first: the fine scores only for the clusters under the kept coarse
        // ones (the selection's default coarse keep).
        const double th = ttft(b, &realised, /*hierarchical=*/true);
        std::printf(
            "  hierarchical %.2f (coarse keep %.2f): %.1f ms, realised KV budget %.4f, %.2fx "
            "faster than dense\n",
            b, std::min(1.0, 5 * b), 1e3 * th, realised, dense_ttft / th);
      }
      for (absl::string_view qb_text :
           absl::StrSplit(absl::GetFlag(FLAGS_query_blocks), ',', absl::SkipEmpty())) {
        int qb = 0;
        if (!absl::SimpleAtoi(qb_text, &qb) || qb <= 0) continue;
        const double tq = ttft(b, &realised, /*hierarchical=*/false, qb);
        std::printf(
            "  squeezed %.2f in query blocks of %d: %.1f ms, realised KV budget %.4f, %.2fx "
            "faster than dense\n",
            b, qb, 1e3 * tq, realised, dense_ttft / tq);
      }
    }

    // Attention alone, summed over the layers: the calls the forward makes for this input, the
    // fixed part over the context (dense; or squeezed: scores, selection, the kept rows) merged
    // with the causal part over the input's own K/V, with the input's real queries (captured
    // from a step against the context) and K/V. Median of 5 per layer after a warm-up.
    Backend& be = m.backend();
    SequenceKV own = m.NewSequenceKV();
    QueryCapture input_q;
    input_q.from_position = S;
    {
      SequenceStep step{
          .tokens = input, .context = &ctx, .kv = &own, .want_logits = false, .capture = &input_q};
      ForwardOutput out;
      if (!m.Forward(std::span<SequenceStep>(&step, 1), &out).ok()) return 1;
    }
    const int L = c.num_layers;
    const size_t q_floats = static_cast<size_t>(n) * c.num_heads * c.head_dim;
    if (static_cast<int>(input_q.q.size()) != L) return 1;
    auto q_buf = be.Allocate(q_floats * L * sizeof(float));
    auto out_buf = be.Allocate(q_floats * sizeof(float));
    if (!q_buf.ok() || !out_buf.ok()) return 1;
    for (int l = 0; l < L; ++l) {
      be.CopyFromHost((*q_buf)->as<float>() + q_floats * l, input_q.q[l].data(),
                      q_floats * sizeof(float));
    }
    auto attention_ms = [&](double budget, double* kept_out) {
      SelectionOptions options;
      options.budget = std::max(budget, 0.0);
      SqueezedFixedContextAttention selector(index, options);
      std::vector<int32_t> kept(c.num_kv_heads, 0);
      double total = 0.0;
      int64_t kept_total = 0;
      for (int l = 0; l < L; ++l) {
        std::vector<double> t;
        for (int rep = 0; rep < 6; ++rep) {
          auto view = be.ResidentContextKv(ctx);
          if (!view.ok()) std::exit(1);
          const size_t at = ctx.Offset(l, 0, 0) * DTypeBytes(be.kv_dtype());
          AttentionParams p;
          p.shape = {n, c.num_heads, c.num_kv_heads, c.head_dim,
                     1.0f / std::sqrt(static_cast<float>(c.head_dim))};
          p.q = (*q_buf)->as<float>() + q_floats * l;
          p.out = (*out_buf)->as<float>();
          p.fixed.kv = {static_cast<const char*>(view->k) + at,
                        static_cast<const char*>(view->v) + at, static_cast<size_t>(S) * c.head_dim,
                        S, be.kv_dtype()};
          if (budget >= 0) {
            p.fixed.selector = &selector;
            p.fixed.policy = selector.policy();
            p.fixed.layer = l;
            p.fixed.kept_rows = kept.data();
          }
          p.dynamic.kv = {own.key_data(l, 0, 0), own.value_data(l, 0, 0),
                          static_cast<size_t>(own.capacity()) * c.head_dim, n, own.dtype()};
          p.dynamic.causal_offset = 0;
          const double s0 = Now();
          be.Attention(p);
          if (!be.Synchronize().ok()) std::exit(1);
          if (rep > 0) t.push_back(Now() - s0);
        }
        std::sort(t.begin(), t.end());
        total += t[t.size() / 2];
        for (int32_t k : kept) kept_total += budget < 0 ? 0 : k;
      }
      // kept: the last repetition's rows per head of each layer.
      *kept_out = budget < 0 ? 1.0
                             : static_cast<double>(kept_total) /
                                   (static_cast<double>(L) * c.num_kv_heads * S);
      return 1e3 * total;
    };
    double kept_fraction = 1.0;
    const double dense_attn = attention_ms(-1.0, &kept_fraction);
    const double all_flops = 4.0 * n * (S + n / 2.0) * d * c.num_heads * L;
    std::printf("attention alone, %d layers, %d-token input: dense %.2f ms (%.0f TFLOP/s)\n", L, n,
                dense_attn, all_flops / (dense_attn * 1e-3) / 1e12);
    for (double b : budgets) {
      const double t = attention_ms(b, &kept_fraction);
      std::printf(
          "  squeezed budget %.2f: %.2f ms, kept %.4f of the context's rows, %.2fx faster "
          "than dense\n",
          b, t, kept_fraction, dense_attn / t);
    }
  }
  return 0;
}

}  // namespace
}  // namespace squeeze

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return squeeze::Main();
}
