// The fp32 CPU reference backend: GEMMs through OpenBLAS, plain loops elsewhere, attention from
// engine/backend/attention_reference.h. Runs everywhere (tests, CI, laptops) and is the oracle the
// CUDA kernels are tested against. Like every backend it is owned by one thread (the engine
// thread): ops keep scratch in members. OpenBLAS threads follow OPENBLAS_NUM_THREADS.
#pragma once

#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "engine/backend/backend.h"

namespace squeeze {

class CpuBackend final : public Backend {
 public:
  CpuBackend();
  ~CpuBackend() override;

  std::string_view name() const override { return "cpu"; }

  absl::StatusOr<std::unique_ptr<Buffer>> Allocate(size_t bytes) override;
  void CopyFromHost(void* dst, const void* host_src, size_t bytes) override;
  void CopyToHost(void* host_dst, const void* src, size_t bytes) override;
  const float* Resident(std::span<const float> host) override { return host.data(); }
  absl::Status Synchronize() override { return absl::OkStatus(); }

  void MatMul(const float* x, const float* w, float* y, int m, int n, int k,
              bool accumulate) override;
  void GatherRows(const float* src, const int32_t* ids, int n, int dim, float* out) override;
  void RmsNorm(const float* x, const float* weight, float* out, int rows, int dim,
               float eps) override;
  void Rope(float* x, const int32_t* positions, int n, int heads, int head_dim,
            const float* inv_freq) override;
  void SiluMul(const float* gate, const float* up, float* out, size_t count) override;
  void AppendKv(const float* k_new, const float* v_new, int n, int num_kv_heads, int head_dim,
                float* k_dst, float* v_dst, size_t dst_head_stride) override;
  void Attention(const AttentionParams& params) override;

 private:
  class Pool;          // caches freed scratch blocks for reuse
  class PooledBuffer;  // a Buffer that returns its block to the pool
  std::shared_ptr<Pool> pool_;
  // Attention scratch: the dynamic partial and both log-sum-exps, [n * Hq * d] and [n * Hq].
  std::vector<float> dyn_out_, fixed_lse_, dyn_lse_;
  std::vector<float> rope_cos_, rope_sin_;  // [d/2] angles of the current token
};

}  // namespace squeeze
