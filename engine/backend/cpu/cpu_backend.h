// The fp32 CPU reference backend: GEMMs through OpenBLAS, plain loops elsewhere, attention from
// engine/backend/attention_reference.h. Runs everywhere (tests, CI, laptops) and is the oracle the
// CUDA kernels are tested against. Like every backend it is owned by one thread (the engine
// thread): ops keep scratch in members. OpenBLAS threads follow OPENBLAS_NUM_THREADS.
#pragma once

#include <deque>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "engine/backend/backend.h"

namespace squeeze {

class CpuBackend : public Backend {
 public:
  CpuBackend();
  ~CpuBackend() override;

  std::string_view name() const override { return "cpu"; }

  absl::StatusOr<std::unique_ptr<Buffer>> Allocate(size_t bytes) override;
  void CopyFromHost(void* dst, const void* host_src, size_t bytes) override;
  void CopyToHost(void* host_dst, const void* src, size_t bytes) override;
  void CopyToHostUnordered(void* host_dst, const void* src, size_t bytes) override {
    CopyToHost(host_dst, src, bytes);
  }
  void Copy2D(void* dst, size_t dst_pitch, const void* src, size_t src_pitch, size_t row_bytes,
              size_t rows) override;
  // The error of a host selection since the last call (a selector that listed rows outside its
  // context), then OK again: the CPU backend itself has no asynchronous faults.
  absl::Status Synchronize() override;
  bool host_memory() const override { return true; }
  bool estimates_tail() const override { return true; }

  bool borrows_host_weights() const override { return true; }
  absl::StatusOr<Matrix> UploadMatrix(std::span<const float> host, int rows, int cols) override;
  absl::StatusOr<const float*> UploadVector(std::span<const float> host) override {
    return host.data();
  }
  absl::StatusOr<Matrix> RandomMatrix(int rows, int cols, uint64_t seed, float stddev) override;
  absl::StatusOr<const float*> RandomVector(int n, uint64_t seed, float mean,
                                            float stddev) override;

  DType kv_dtype() const override { return DType::kF32; }
  absl::StatusOr<ContextKvView> ResidentContextKv(const ContextKV& ctx) override;

  void MatMul(const float* x, const Matrix& w, float* y, int m, bool accumulate) override;
  void Embed(const Matrix& table, const int32_t* ids, int n, float* out) override;
  void GatherRows(const float* src, const int32_t* ids, int n, int dim, float* out) override;
  void RmsNorm(const float* x, const float* weight, float* out, int rows, int dim,
               float eps) override;
  void Rope(float* x, const int32_t* positions, int n, int heads, int head_dim,
            const float* inv_freq) override;
  void AddBias(float* y, const float* bias, int rows, int cols) override;
  void SiluMul(const float* gate, const float* up, float* out, size_t count) override;
  void AppendKv(const float* k_new, const float* v_new, int n, int num_kv_heads, int head_dim,
                void* k_dst, void* v_dst, size_t dst_head_stride) override;
  void Attention(const AttentionParams& params) override;
  absl::Status SampleRows(const float* logits, int vocab,
                          std::span<SampleJob* const> jobs) override;

 private:
  class Pool;          // caches freed scratch blocks for reuse
  class PooledBuffer;  // a Buffer that returns its block to the pool
  std::shared_ptr<Pool> pool_;
  std::deque<std::vector<float>> owned_;  // RandomMatrix / RandomVector storage
  // Attention scratch: the dynamic partial and both log-sum-exps, [n * Hq * d] and [n * Hq].
  std::vector<float> dyn_out_, fixed_lse_, dyn_lse_;
  LayerSelection selection_;  // a selector's rows of the current call
  // ContextAttentionPolicy::estimate_tail: merges the dropped clusters' estimate into the kept
  // rows' partial (out, lse) of `p`, whose fixed rows are `kept`. The clusters' mean values are
  // made on first use per (layer, KV head) and kept with the index (ClusterTables::resident).
  void EstimateTail(const AttentionParams& p, std::span<const std::vector<KeyRange>> kept,
                    float* out, float* lse);
  absl::Status error_;  // the first failed selection since the last Synchronize()
  std::vector<float> rope_cos_, rope_sin_;  // [d/2] angles of the current token
};

}  // namespace squeeze
