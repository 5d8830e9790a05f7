// The CUDA backend: the Llama forward on one NVIDIA GPU. Weights and KV are bf16 in device
// memory, activations fp32; GEMMs run through cuBLAS (bf16 inputs, fp32 accumulation and
// output) or, for decode-sized products, the GEMV kernel that also fuses the RMSNorm and the
// SwiGLU gate; everything else through the kernels in kernels/. All work is enqueued on one
// stream; like every backend it is driven by one thread (the engine thread).
//
// Parts (engine/backend/cuda/):
//   CudaDevice         stream, cuBLAS, device memory, pinned staging, the first fault
//   ResidentContexts   registered contexts' K/V and Squeezed Attention tables on the GPU
//   DenseAttention     exact attention of one call: the fixed part (every row, or a host
//                      selector's ranges) and the dynamic part
//   SqueezedAttention  single sequences with the selection on the device (decode batched;
//                      multi-token steps through the fused cluster scores and the prefill kernel)
//   CascadeAttention   decode steps of several sequences that share a context: its K/V read once
//                      per step for all of them, dense or squeezed
//   CudaKMeans, CudaSampler   registration's k-means and sampling on the device
// AttentionBatch routes one layer's calls: decode calls over the same context (dense, or flat
// squeezed) go to CascadeAttention in groups of at least two; other squeezed decode calls are
// batched per mode into SqueezedAttention; the rest run one by one (fixed part, dynamic part,
// LSE merge).
// Supported attention shapes: head_dim 64, 96 or 128 and 1 to 16 query heads per KV head (the
// group-packed decode kernels pad the group to 1, 2, 4, 8 or 16 rows; Supports() says why not
// otherwise).
//
// Faults: the first CUDA error of an op is kept and returned by Synchronize() (and every later
// call); the backend is then unusable and healthy() turns false, so the server reports
// NOT_SERVING instead of crashing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend/backend.h"
#include "engine/backend/cuda/cascade_attention.h"
#include "engine/backend/cuda/cuda_device.h"
#include "engine/backend/cuda/dense_attention.h"
#include "engine/backend/cuda/resident_contexts.h"
#include "engine/backend/cuda/squeezed_attention.h"
#include "engine/backend/window_scorer.h"
#include "kernels/ops/gemv.cuh"
#include "kernels/ops/rope_append_kv.cuh"

namespace squeeze {

// Whether a CUDA device is visible (and the driver works).
bool CudaDeviceAvailable();

class CudaBackend final : public Backend {
 public:
  // Takes device `device` (cudaSetDevice on the calling thread and on every op's thread).
  static absl::StatusOr<std::unique_ptr<CudaBackend>> Create(int device = 0);
  ~CudaBackend() override;

  // OK when the kernels support this attention shape (head dim, query heads per KV head).
  static absl::Status Supports(int head_dim, int num_heads, int num_kv_heads);
  // "NVIDIA H200, 132 SMs, 139.8 GiB (137.1 free)".
  std::string Describe() const { return dev_->Describe(); }
  // Free and total device memory, bytes.
  absl::Status MemoryInfo(size_t* free_bytes, size_t* total_bytes) const {
    return dev_->MemoryInfo(free_bytes, total_bytes);
  }
  bool healthy() const { return dev_->ok(); }

  std::string_view name() const override { return "cuda"; }
  absl::StatusOr<std::unique_ptr<Buffer>> Allocate(size_t bytes) override {
    return dev_->Allocate(bytes);
  }
  void CopyFromHost(void* dst, const void* host_src, size_t bytes) override {
    dev_->CopyFromHost(dst, host_src, bytes);
  }
  void CopyToHost(void* host_dst, const void* src, size_t bytes) override {
    dev_->CopyToHost(host_dst, src, bytes);
  }
  void CopyToHostUnordered(void* host_dst, const void* src, size_t bytes) override {
    dev_->CopyToHostUnordered(host_dst, src, bytes);
  }
  void Copy2D(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t row_bytes,
              size_t rows) override {
    dev_->Copy2D(dst, dst_pitch, src, src_pitch, row_bytes, rows);
  }
  // The device's first fault; else the error of a host selection since the last call.
  absl::Status Synchronize() override;
  bool host_memory() const override { return false; }
  std::optional<DeviceMemory> device_memory() const override;

  bool borrows_host_weights() const override { return false; }
  absl::StatusOr<Matrix> UploadMatrix(std::span<const float> host, int rows, int cols) override;
  absl::StatusOr<const float*> UploadVector(std::span<const float> host) override;
  absl::StatusOr<Matrix> RandomMatrix(int rows, int cols, uint64_t seed, float stddev) override;
  absl::StatusOr<const float*> RandomVector(int n, uint64_t seed, float mean,
                                            float stddev) override;

  DType kv_dtype() const override { return DType::kBF16; }
  absl::Status SampleRows(const float* logits, int vocab,
                          std::span<SampleJob* const> jobs) override;
  KMeansSolver* kmeans_solver() override;
  WindowScorer* window_scorer() override;
  absl::StatusOr<ContextKvView> ResidentContextKv(const ContextKV& ctx) override {
    return contexts_.Kv(ctx);
  }
  void AdoptContextKv(const ContextKV& ctx, SequenceKV&& source) override;
  void set_execution_options(const ExecutionOptions& options) override { options_ = options; }
  // Context rows the squeezed cascade groups read since the last call, and the rows of those
  // context heads (after Synchronize): what the union of a group's selections costs.
  CascadeAttention::KeyStats TakeCascadeKeyStats() { return cascade_.TakeKeyStats(); }
  // Device memory kept free for activations, scratch and workspaces when a context's K/V is
  // made resident (idle contexts are evicted to keep it): max(2 GiB, 3% of the device).
  static size_t ResidentHeadroom(size_t total_bytes) {
    return ResidentContexts::Headroom(total_bytes);
  }
  // Returns the device blocks the allocator keeps for reuse to the driver (free memory as
  // cudaMemGetInfo reports it then counts them).
  void ReleaseCachedMemory() { dev_->TrimPool(); }

  void MatMul(const float* x, const Matrix& w, float* y, int m, bool accumulate) override;
  void NormMatMuls(const float* x, const float* norm_weight, float eps, float* h, int m,
                   std::span<const MatMulOutput> outs) override;
  void SiluMulMatMul(float* gate, const float* up, const Matrix& w, float* y, int m,
                     bool accumulate) override;
  void Embed(const Matrix& table, const int32_t* ids, int n, float* out) override;
  void GatherRows(const float* src, const int32_t* ids, int n, int dim, float* out) override;
  void RmsNorm(const float* x, const float* weight, float* out, int rows, int dim,
               float eps) override;
  void Rope(float* x, const int32_t* positions, int n, int heads, int head_dim,
            const float* inv_freq) override;
  void RopeQK(float* q, int q_heads, float* k, int k_heads, const int32_t* positions, int n,
              int head_dim, const float* inv_freq) override;
  void SiluMul(const float* gate, const float* up, float* out, size_t count) override;
  void AddBias(float* y, const float* bias, int rows, int cols) override;
  void AppendKv(const float* k_new, const float* v_new, int n, int num_kv_heads, int head_dim,
                void* k_dst, void* v_dst, size_t dst_head_stride) override;
  void AppendKvBatch(const float* k_new, const float* v_new, int num_kv_heads, int head_dim,
                     std::span<const KvAppend> seqs) override;
  void RopeAppendKvBatch(float* q, int q_heads, float* k, const float* v, int num_kv_heads,
                         const int32_t* positions, int n, int head_dim, const float* inv_freq,
                         std::span<const KvAppend> seqs) override;
  void Attention(const AttentionParams& params) override;
  void AttentionBatch(std::span<const AttentionParams> calls) override;

 private:
  explicit CudaBackend(std::unique_ptr<CudaDevice> dev);
  // Launches a decode product (gpu::LaunchGemv) with its workspace and arrival counters.
  void RunGemv(gpu::GemvParams& p, const char* what);
  // Whether a product goes to the GEMV kernels (else cuBLAS): the CUDA-core kernel always, the
  // tensor-core one with ExecutionOptions::tensor_core_projections.
  bool TakesGemv(const gpu::GemvParams& p) const;
  // y[m, n] (+)= xb[m, k] . w[n, k]^T on cuBLAS, xb in bf16.
  void Gemm(const gpu::bf16* xb, const Matrix& w, float* y, int m, bool accumulate);

  // The step's KV append targets in device scratch (copied there); *rows: the rows they cover.
  const gpu::AppendKvTarget* AppendTargets(std::span<const KvAppend> seqs, int* rows);

  std::unique_ptr<CudaDevice> dev_;
  unsigned int* gemv_counters_ = nullptr;  // gpu::kGemvCounters, zeroed at first use
  ResidentContexts contexts_;
  DenseAttention dense_;
  SqueezedAttention squeezed_;
  CascadeAttention cascade_;
  ExecutionOptions options_;
  std::unique_ptr<KMeansSolver> kmeans_;
  std::unique_ptr<WindowScorer> window_scorer_;
  std::unique_ptr<class CudaSampler> sampler_;  // made on first use
  std::vector<gpu::AppendKvTarget> append_targets_;
  // Host selection (policies the device does not select): the queries copied back, the rows.
  std::vector<float> q_host_;
  LayerSelection selection_;
  absl::Status step_error_;  // the first failed host selection since the last Synchronize()
};

}  // namespace squeeze
