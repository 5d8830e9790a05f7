// The CUDA backend: the Llama forward on one NVIDIA GPU. Weights and KV are bf16 in device
// memory, activations fp32; GEMMs run through cuBLAS (bf16 inputs, fp32 accumulation and
// output), everything else through the kernels in kernels/ (ops, decode and prefill
// attention, kv_gather). All work is enqueued on one stream owned by the backend; like every
// backend it is driven by one thread (the engine thread).
//
// Attention (one sequence per call, see AttentionParams):
//   dynamic part  n == 1: split-KV decode kernel; n > 1: causal prefill kernel (tensor cores);
//   fixed part    dense: the decode kernel over the context for fewer than 16 tokens (each
//                 (token, KV head) its own row of the batch), else the prefill kernel without
//                 the causal mask; with a host selector's ranges the kept rows are gathered into
//                 a compact per-head copy first; merged with the dynamic part through the
//                 log-sum-exp.
//   squeezed decode (AttentionKeys::device_selection, one token): centroid lookup, threshold,
//                 sparse attention over the kept clusters and dense attention over the dynamic
//                 KV in one sequence of launches (kernels/squeeze/squeezed_decode.cuh), no host
//                 sync.
//   squeezed prefill (device_selection, several tokens): cluster scores averaged over all
//                 query rows (cuBLAS logits + softmax statistics), threshold, and the prefill
//                 kernel over the kept rows in place (kernels/squeeze/expand_selection.cuh), no
//                 host sync.
// Supported attention shapes: head_dim 64 or 128 and query heads per KV head 1, 2, 4 or 8
// (Supports() says why not otherwise).
//
// Faults: the first CUDA error of an op is kept and returned by Synchronize() (and every later
// call); the backend is then unusable and healthy() turns false, so the server reports
// NOT_SERVING instead of crashing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend/backend.h"

namespace squeeze {
namespace gpu {
struct SqueezeHeadDesc;
struct SqueezedDecodePlan;
}  // namespace gpu

struct ClusterTables;

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
  std::string Describe() const;
  // Free and total device memory, bytes.
  absl::Status MemoryInfo(size_t* free_bytes, size_t* total_bytes) const;
  bool healthy() const { return fault_.ok(); }

  std::string_view name() const override { return "cuda"; }
  absl::StatusOr<std::unique_ptr<Buffer>> Allocate(size_t bytes) override;
  void CopyFromHost(void* dst, const void* host_src, size_t bytes) override;
  void CopyToHost(void* host_dst, const void* src, size_t bytes) override;
  void CopyToHostUnordered(void* host_dst, const void* src, size_t bytes) override;
  void Copy2D(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t row_bytes,
              size_t rows) override;
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
  bool selects_on_device() const override { return true; }
  bool samples_on_device() const override { return true; }
  absl::Status SampleRows(const float* logits, int vocab,
                          std::span<SampleJob* const> jobs) override;
  KMeansSolver* kmeans_solver() override;
  absl::StatusOr<ContextKvView> ResidentContextKv(const ContextKV& ctx) override;
  void AdoptContextKv(const ContextKV& ctx, SequenceKV&& source) override;
  // Device memory kept free for activations, scratch and workspaces when a context's K/V is
  // made resident (idle contexts are evicted to keep it): max(2 GiB, 3% of the device).
  static size_t ResidentHeadroom(size_t total_bytes);
  // Returns the device blocks the allocator keeps for reuse to the driver (free memory as
  // cudaMemGetInfo reports it then counts them).
  void ReleaseCachedMemory();

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
  void AppendKv(const float* k_new, const float* v_new, int n, int num_kv_heads, int head_dim,
                void* k_dst, void* v_dst, size_t dst_head_stride) override;
  void Attention(const AttentionParams& params) override;
  // Single-token calls selecting on the device run as one batched squeezed decode; the rest
  // one by one.
  void AttentionBatch(std::span<const AttentionParams> calls) override;

 private:
  struct Impl;
  explicit CudaBackend(std::unique_ptr<Impl> impl);
  // Records the first fault; later ops become no-ops.
  void Check(int cuda_error, const char* what);
  void CheckBlas(int blas_status, const char* what);
  // Device memory owned by the backend for its lifetime (weights), RESOURCE_EXHAUSTED with the
  // sizes when the device is full.
  absl::StatusOr<void*> AllocatePermanent(size_t bytes, const char* what);
  // Grows the named scratch area to at least `bytes` and returns it.
  void* Scratch(int slot, size_t bytes);
  void FixedAttention(const AttentionParams& p, float* out, float* lse);
  void SqueezedAttention(std::span<const AttentionParams* const> calls);
  void SqueezedFixedPrefill(const AttentionParams& p, float* out, float* lse);
  // Squeezed attention helpers (false: fault recorded).
  bool SqueezeHeads(const AttentionParams& p, gpu::SqueezeHeadDesc* out, int* max_clusters,
                    bool coarse = false);
  absl::Status UploadSqueezeLevel(const void* host_level, void* device_level);
  bool SqueezedPlanFor(int hq, int hkv, int d, int batch, int max_dyn, int max_clusters,
                       int64_t total_rows, int max_rows, const gpu::SqueezedDecodePlan** plan,
                       void** workspace);
  void ReportToHost(const int32_t* counts, std::span<const AttentionParams* const> calls,
                    int32_t* AttentionKeys::*field);
  void ClusterMeanScores(const AttentionParams& p, const void* q_bf16,
                         std::span<const gpu::SqueezeHeadDesc> heads,
                         const gpu::SqueezeHeadDesc* dev_heads, int stride, float* scores,
                         const int32_t* cand, const int32_t* cand_count, int64_t cand_stride);
  bool CoarseCandidates(std::span<const AttentionParams* const> calls, const float* q,
                        const void* q_bf16, const int32_t** ids, const int32_t** counts,
                        int64_t* stride);
  absl::StatusOr<const void*> ResidentSqueezeIndex(const ClusterTables& index);
  // Frees idle resident context copies until `bytes` fit next to the headroom; returns how many.
  int EvictResidentContexts(size_t bytes);
  // Copies the pending device-to-host transfers out of the pinned arena (the stream is idle)
  // and empties the arena.
  void FinishPendingCopies();
  // `bytes` of the pinned arena for one transfer (waits for the stream when it is full).
  char* StagePinned(size_t bytes);
  void DecodeOverHeads(const float* q, int n, int num_q_heads, int num_kv_heads, int head_dim,
                       float scale, const void* k, const void* v, size_t head_stride,
                       std::span<const int32_t> rows_per_head, float* out, float* lse);

  std::unique_ptr<Impl> impl_;
  absl::Status fault_;
  std::unique_ptr<KMeansSolver> kmeans_;
  std::unique_ptr<class CudaSampler> sampler_;  // made on first use
};

}  // namespace squeeze
