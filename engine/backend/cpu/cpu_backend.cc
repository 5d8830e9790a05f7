#include "engine/backend/cpu/cpu_backend.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <string>

#include "absl/strings/str_cat.h"
#include "engine/backend/attention_reference.h"
#include "engine/backend/kv_cache.h"
#include "engine/backend/tail_estimate.h"
#include "engine/common/random_normal.h"

namespace squeeze {

// Keeps freed scratch blocks so that the per-step Allocate() of the forward reuses memory
// instead of faulting in fresh pages every step. Shared with live buffers, so a buffer may
// outlive the backend.
class CpuBackend::Pool {
 public:
  ~Pool() {
    for (auto& [capacity, block] : free_) ::operator delete(block, kAlign);
  }

  // Returns a block of at least `bytes`; `*capacity` receives its real size.
  void* Take(size_t bytes, size_t* capacity) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      // Best fit, but never hand out a block more than twice the request (plus a page), so a
      // small decode step does not pin a large prefill block.
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= 2 * bytes + 4096) {
        *capacity = it->first;
        void* block = it->second;
        free_.erase(it);
        return block;
      }
    }
    *capacity = std::max<size_t>(64, (bytes + 4095) / 4096 * 4096);
    return ::operator new(*capacity, kAlign);
  }

  void Give(void* block, size_t capacity) {
    std::lock_guard<std::mutex> lock(mu_);
    if (free_.size() >= kMaxCached) {
      auto smallest = free_.begin();
      if (smallest->first >= capacity) {
        ::operator delete(block, kAlign);
        return;
      }
      ::operator delete(smallest->second, kAlign);
      free_.erase(smallest);
    }
    free_.emplace(capacity, block);
  }

 private:
  static constexpr std::align_val_t kAlign{64};
  static constexpr size_t kMaxCached = 16;
  std::mutex mu_;
  std::multimap<size_t, void*> free_;  // capacity -> block
};

class CpuBackend::PooledBuffer final : public Buffer {
 public:
  PooledBuffer(void* data, size_t bytes, size_t capacity, std::shared_ptr<Pool> pool)
      : Buffer(data, bytes), capacity_(capacity), pool_(std::move(pool)) {}
  ~PooledBuffer() override { pool_->Give(data(), capacity_); }

 private:
  size_t capacity_;
  std::shared_ptr<Pool> pool_;
};

CpuBackend::CpuBackend() : pool_(std::make_shared<Pool>()) {}
CpuBackend::~CpuBackend() = default;

absl::StatusOr<std::unique_ptr<Buffer>> CpuBackend::Allocate(size_t bytes) {
  size_t capacity = 0;
  void* block = nullptr;
  try {
    block = pool_->Take(bytes, &capacity);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("cpu backend: cannot allocate " + std::to_string(bytes) +
                                        " bytes of scratch memory");
  }
  return std::unique_ptr<Buffer>(std::make_unique<PooledBuffer>(block, bytes, capacity, pool_));
}

void CpuBackend::CopyFromHost(void* dst, const void* host_src, size_t bytes) {
  if (bytes > 0) std::memcpy(dst, host_src, bytes);
}

void CpuBackend::CopyToHost(void* host_dst, const void* src, size_t bytes) {
  if (bytes > 0) std::memcpy(host_dst, src, bytes);
}

void CpuBackend::Copy2D(void* dst, size_t dst_pitch, const void* src, size_t src_pitch,
                        size_t row_bytes, size_t rows) {
  for (size_t r = 0; r < rows; ++r) {
    std::memcpy(static_cast<char*>(dst) + r * dst_pitch,
                static_cast<const char*>(src) + r * src_pitch, row_bytes);
  }
}

absl::StatusOr<Matrix> CpuBackend::UploadMatrix(std::span<const float> host, int rows, int cols) {
  if (host.size() != static_cast<size_t>(rows) * cols) {
    return absl::InvalidArgumentError(absl::StrCat("UploadMatrix: ", host.size(), " floats for a [",
                                                   rows, ", ", cols, "] matrix"));
  }
  return Matrix{host.data(), DType::kF32, rows, cols};
}

absl::StatusOr<Matrix> CpuBackend::RandomMatrix(int rows, int cols, uint64_t seed, float stddev) {
  owned_.push_back(RandomNormal(static_cast<size_t>(rows) * cols, seed, 0.0f, stddev));
  return Matrix{owned_.back().data(), DType::kF32, rows, cols};
}

absl::StatusOr<const float*> CpuBackend::RandomVector(int n, uint64_t seed, float mean,
                                                      float stddev) {
  owned_.push_back(RandomNormal(n, seed, mean, stddev));
  return owned_.back().data();
}

absl::StatusOr<ContextKvView> CpuBackend::ResidentContextKv(const ContextKV& ctx) {
  // The host copy is the resident copy: it must already be in this backend's KV dtype.
  if (ctx.dtype() != kv_dtype()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cpu: the context's K/V are ", DTypeName(ctx.dtype()), " but this backend computes from ",
        DTypeName(kv_dtype()), "; convert the context (ContextKV::ConvertedTo) first"));
  }
  return ContextKvView{ctx.k.data(), ctx.v.data()};
}

void CpuBackend::MatMul(const float* x, const Matrix& w, float* y, int m, bool accumulate) {
  const int n = w.rows, k = w.cols;
  if (m <= 0 || n <= 0) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, x, k,
              static_cast<const float*>(w.data), k, accumulate ? 1.0f : 0.0f, y, n);
}

void CpuBackend::Embed(const Matrix& table, const int32_t* ids, int n, float* out) {
  GatherRows(static_cast<const float*>(table.data), ids, n, table.cols, out);
}

void CpuBackend::GatherRows(const float* src, const int32_t* ids, int n, int dim, float* out) {
  for (int i = 0; i < n; ++i) {
    std::memcpy(out + static_cast<size_t>(i) * dim, src + static_cast<size_t>(ids[i]) * dim,
                sizeof(float) * dim);
  }
}

void CpuBackend::RmsNorm(const float* x, const float* weight, float* out, int rows, int dim,
                         float eps) {
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + static_cast<size_t>(r) * dim;
    float* yr = out + static_cast<size_t>(r) * dim;
    double sum_sq = 0.0;
    for (int i = 0; i < dim; ++i) sum_sq += static_cast<double>(xr[i]) * xr[i];
    const float inv_rms = 1.0f / std::sqrt(static_cast<float>(sum_sq / dim) + eps);
    for (int i = 0; i < dim; ++i) yr[i] = weight[i] * (xr[i] * inv_rms);
  }
}

void CpuBackend::AddBias(float* y, const float* bias, int rows, int cols) {
  for (int r = 0; r < rows; ++r) {
    float* yr = y + static_cast<size_t>(r) * cols;
    for (int i = 0; i < cols; ++i) yr[i] += bias[i];
  }
}

void CpuBackend::Rope(float* x, const int32_t* positions, int n, int heads, int head_dim,
                      const float* inv_freq) {
  const int half = head_dim / 2;
  rope_cos_.resize(half);
  rope_sin_.resize(half);
  for (int t = 0; t < n; ++t) {
    // As Hugging Face: the angle is one fp32 product, cos/sin in fp32.
    const float pos = static_cast<float>(positions[t]);
    for (int i = 0; i < half; ++i) {
      const float angle = pos * inv_freq[i];
      rope_cos_[i] = std::cos(angle);
      rope_sin_[i] = std::sin(angle);
    }
    for (int h = 0; h < heads; ++h) {
      float* row = x + (static_cast<size_t>(t) * heads + h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const float x1 = row[i], x2 = row[i + half];
        row[i] = x1 * rope_cos_[i] - x2 * rope_sin_[i];
        row[i + half] = x2 * rope_cos_[i] + x1 * rope_sin_[i];
      }
    }
  }
}

void CpuBackend::SiluMul(const float* gate, const float* up, float* out, size_t count) {
  for (size_t i = 0; i < count; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void CpuBackend::AppendKv(const float* k_new, const float* v_new, int n, int num_kv_heads,
                          int head_dim, void* k_out, void* v_out, size_t dst_head_stride) {
  float* k_dst = static_cast<float*>(k_out);
  float* v_dst = static_cast<float*>(v_out);
  for (int t = 0; t < n; ++t) {
    for (int h = 0; h < num_kv_heads; ++h) {
      const size_t src = (static_cast<size_t>(t) * num_kv_heads + h) * head_dim;
      const size_t dst = h * dst_head_stride + static_cast<size_t>(t) * head_dim;
      std::memcpy(k_dst + dst, k_new + src, sizeof(float) * head_dim);
      std::memcpy(v_dst + dst, v_new + src, sizeof(float) * head_dim);
    }
  }
}

void CpuBackend::Attention(const AttentionParams& p) {
  const size_t rows = static_cast<size_t>(p.shape.num_queries) * p.shape.num_q_heads;
  dyn_lse_.resize(rows);
  if (p.fixed.kv.num_rows == 0) {
    AttentionPartial(p.shape, p.q, p.dynamic, p.out, dyn_lse_.data());
    return;
  }
  AttentionKeys fixed = p.fixed;
  if (p.fixed.selector != nullptr) {  // every policy selects on the host here (the reference)
    selection_.candidates.clear();    // a selector that lists none leaves it empty
    p.fixed.selector->Select(p.fixed.layer, p.q, p.shape.num_queries, &selection_);
    absl::Status st =
        CheckHostSelection(selection_, p.fixed.layer, p.shape.num_kv_heads, p.fixed.kv.num_rows,
                           p.fixed.kept_rows, p.fixed.candidates);
    if (!st.ok()) {
      if (error_.ok()) error_ = std::move(st);
      for (size_t i = 0; i < rows * p.shape.head_dim; ++i) p.out[i] = 0.0f;
      return;
    }
    fixed.ranges = selection_.ranges;
  }
  fixed_lse_.resize(rows);
  dyn_out_.resize(rows * p.shape.head_dim);
  AttentionPartial(p.shape, p.q, fixed, p.out, fixed_lse_.data());
  if (p.fixed.policy.estimate_tail && p.fixed.selector != nullptr) {
    EstimateTail(p, selection_.ranges, p.out, fixed_lse_.data());
  }
  AttentionPartial(p.shape, p.q, p.dynamic, dyn_out_.data(), dyn_lse_.data());
  MergeAttentionPartials(p.out, fixed_lse_.data(), dyn_out_.data(), dyn_lse_.data(),
                         static_cast<int>(rows), p.shape.head_dim);
}

namespace {

// A context's cluster mean values for the tail estimate, [L * Hkv] of [C][d] (empty until used).
// Kept per backend (BackendCache's owner), so only this backend's thread fills it.
struct CpuTailValues {
  std::vector<std::vector<float>> means;
};

}  // namespace

void CpuBackend::EstimateTail(const AttentionParams& p, std::span<const std::vector<KeyRange>> kept,
                              float* out, float* lse) {
  const ClusterTables& tables = p.fixed.policy.squeezed.tables;
  const int Hkv = p.shape.num_kv_heads, d = p.shape.head_dim, layer = p.fixed.layer;
  if (tables.resident == nullptr || tables.num_kv_heads != Hkv || tables.head_dim != d ||
      layer < 0 || layer >= tables.num_layers || tables.num_tokens != p.fixed.kv.num_rows ||
      static_cast<int>(kept.size()) != Hkv || p.fixed.kv.dtype != DType::kF32) {
    if (error_.ok()) {
      error_ = absl::InternalError(
          absl::StrCat("tail estimate at layer ", layer, ": the index does not match the context"));
    }
    return;
  }
  auto* values = tables.resident->Get<CpuTailValues>(this);
  if (values == nullptr) {
    auto made = std::make_shared<CpuTailValues>();
    made->means.resize(static_cast<size_t>(tables.num_layers) * Hkv);
    values = made.get();
    tables.resident->Set(this, std::move(made));
  }
  std::vector<const std::vector<float>*> means(Hkv);
  for (int h = 0; h < Hkv; ++h) {
    std::vector<float>& m = values->means[static_cast<size_t>(layer) * Hkv + h];
    if (m.empty() && tables.head(layer, h).num_clusters() > 0) {
      m = ClusterMeanValues(p.fixed.kv.vf() + h * p.fixed.kv.head_stride, d, tables.head(layer, h));
    }
    means[h] = &m;
  }
  MergeDroppedClustersEstimate(p.shape, p.q, tables, layer, kept, means, out, lse);
}

absl::Status CpuBackend::Synchronize() {
  absl::Status st = std::move(error_);
  error_ = absl::OkStatus();
  return st;
}

absl::Status CpuBackend::SampleRows(const float* logits, int vocab,
                                    std::span<SampleJob* const> jobs) {
  for (size_t r = 0; r < jobs.size(); ++r) {
    SampleJob& j = *jobs[r];
    j.token = j.sampler->Sample(std::span<const float>(logits + r * vocab, vocab), j.prompt,
                                j.generated, j.want_info ? &j.info : nullptr);
  }
  return absl::OkStatus();
}

}  // namespace squeeze
