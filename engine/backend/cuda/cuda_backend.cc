#include "engine/backend/cuda/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/backend/cuda/cuda_kmeans.h"
#include "engine/backend/cuda/cuda_sampling.h"
#include "engine/backend/cuda/cuda_window_scorer.h"
#include "engine/common/status_macros.h"
#include "kernels/attention/merge_attention.cuh"
#include "kernels/ops/convert.cuh"
#include "kernels/ops/gemv.cuh"
#include "kernels/ops/random_fill.cuh"
#include "kernels/ops/rmsnorm_silu.cuh"
#include "kernels/ops/rope_append_kv.cuh"
#include "kernels/ops/rows.cuh"

namespace squeeze {
namespace {

using gpu::bf16;

constexpr size_t kMiB = size_t{1} << 20;
// Host fp32 weights reach the device through a staging buffer of this size and are converted
// to bf16 there.
constexpr size_t kStagingFloats = 16 * kMiB;

// Squeezed Attention selected on the device (any number of query tokens).
bool SqueezedOnDevice(const AttentionParams& p) {
  return p.fixed.selector != nullptr &&
         p.fixed.policy.kind == ContextAttentionPolicy::Kind::kSqueezed && p.fixed.kv.num_rows > 0;
}

// A decode step (one token) of it: the batched squeezed decode.
bool DeviceSelected(const AttentionParams& p) {
  return SqueezedOnDevice(p) && p.shape.num_queries == 1;
}

// The batched squeezed decode's groups: flat, hierarchical, flat with the per-step threshold.
int SqueezedGroup(const AttentionParams& p) {
  const SqueezedSelection& s = p.fixed.policy.squeezed;
  if (s.hierarchical) return 1;
  return s.per_step && std::isfinite(s.threshold) ? 2 : 0;
}

bool SameShape(const AttentionShape& a, const AttentionShape& b) {
  return a.num_q_heads == b.num_q_heads && a.num_kv_heads == b.num_kv_heads &&
         a.head_dim == b.head_dim && a.scale == b.scale;
}

}  // namespace

bool CudaDeviceAvailable() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return n > 0;
}

absl::StatusOr<std::unique_ptr<CudaBackend>> CudaBackend::Create(int device) {
  ASSIGN_OR_RETURN(std::unique_ptr<CudaDevice> dev, CudaDevice::Create(device));
  return std::unique_ptr<CudaBackend>(new CudaBackend(std::move(dev)));
}

CudaBackend::CudaBackend(std::unique_ptr<CudaDevice> dev)
    : dev_(std::move(dev)),
      contexts_(*dev_),
      dense_(*dev_),
      squeezed_(*dev_, contexts_),
      cascade_(*dev_, contexts_, dense_),
      kmeans_(std::make_unique<CudaKMeans>(dev_->id())),
      window_scorer_(std::make_unique<CudaWindowScorer>(dev_->id())) {}

CudaBackend::~CudaBackend() = default;

absl::Status CudaBackend::Supports(int head_dim, int num_heads, int num_kv_heads) {
  if (head_dim != 64 && head_dim != 96 && head_dim != 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("the cuda backend supports head_dim 64, 96 and 128, the model has ", head_dim,
                     " (use --device=cpu)"));
  }
  if (num_heads <= 0 || num_kv_heads <= 0 || num_heads % num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the cuda backend needs the query heads to be a multiple of the KV heads, the model has ",
        num_heads, " query and ", num_kv_heads, " KV heads (use --device=cpu)"));
  }
  const int group = num_heads / num_kv_heads;
  if (group > gpu::kMaxGroupSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("the cuda backend supports 1 to ", gpu::kMaxGroupSize,
                     " query heads per KV head, the model has ", group, " (use --device=cpu)"));
  }
  return absl::OkStatus();
}
std::optional<Backend::DeviceMemory> CudaBackend::device_memory() const {
  DeviceMemory m;
  if (!dev_->MemoryInfo(&m.free_bytes, &m.total_bytes).ok()) return std::nullopt;
  m.headroom_bytes = ResidentContexts::Headroom(m.total_bytes);
  return m;
}

KMeansSolver* CudaBackend::kmeans_solver() { return kmeans_.get(); }

WindowScorer* CudaBackend::window_scorer() { return window_scorer_.get(); }

void CudaBackend::AdoptContextKv(const ContextKV& ctx, SequenceKV&& source) {
  if (source.backend() != this) return;
  contexts_.Adopt(ctx, std::move(source));
}

// ---- weights ------------------------------------------------------------------------------------

absl::StatusOr<Matrix> CudaBackend::UploadMatrix(std::span<const float> host, int rows, int cols) {
  const size_t count = static_cast<size_t>(rows) * cols;
  if (host.size() != count) {
    return absl::InvalidArgumentError(absl::StrCat("UploadMatrix: ", host.size(), " floats for a [",
                                                   rows, ", ", cols, "] matrix"));
  }
  auto dst = dev_->AllocatePermanent(count * sizeof(bf16), "weights");
  if (!dst.ok()) return dst.status();
  bf16* out = static_cast<bf16*>(*dst);
  float* staging = static_cast<float*>(dev_->Scratch(kStaging, kStagingFloats * sizeof(float)));
  for (size_t done = 0; done < count && dev_->ok(); done += kStagingFloats) {
    const size_t chunk = std::min(kStagingFloats, count - done);
    dev_->Check(cudaMemcpyAsync(staging, host.data() + done, chunk * sizeof(float),
                                cudaMemcpyHostToDevice, dev_->stream()),
                "weight upload");
    dev_->Check(gpu::LaunchF32ToBf16(staging, out + done, chunk, dev_->stream()), "weight convert");
  }
  RETURN_IF_ERROR(dev_->Synchronize());
  return Matrix{out, DType::kBF16, rows, cols};
}

absl::StatusOr<const float*> CudaBackend::UploadVector(std::span<const float> host) {
  auto dst = dev_->AllocatePermanent(host.size() * sizeof(float), "weights");
  if (!dst.ok()) return dst.status();
  dev_->Check(cudaMemcpy(*dst, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice),
              "vector upload");
  if (!dev_->ok()) return dev_->fault();
  return static_cast<const float*>(*dst);
}

absl::StatusOr<Matrix> CudaBackend::RandomMatrix(int rows, int cols, uint64_t seed, float stddev) {
  const size_t count = static_cast<size_t>(rows) * cols;
  auto dst = dev_->AllocatePermanent(count * sizeof(bf16), "random weights");
  if (!dst.ok()) return dst.status();
  dev_->Check(
      gpu::LaunchFillRandomBf16(static_cast<bf16*>(*dst), count, seed, stddev, dev_->stream()),
      "random fill");
  if (!dev_->ok()) return dev_->fault();
  return Matrix{*dst, DType::kBF16, rows, cols};
}

absl::StatusOr<const float*> CudaBackend::RandomVector(int n, uint64_t seed, float mean,
                                                       float stddev) {
  auto dst = dev_->AllocatePermanent(static_cast<size_t>(n) * sizeof(float), "random weights");
  if (!dst.ok()) return dst.status();
  dev_->Check(
      gpu::LaunchFillRandomF32(static_cast<float*>(*dst), n, seed, mean, stddev, dev_->stream()),
      "random fill");
  if (!dev_->ok()) return dev_->fault();
  return static_cast<const float*>(*dst);
}
// ---- ops ----------------------------------------------------------------------------------------

void CudaBackend::RunGemv(gpu::GemvParams& p, const char* what) {
  const size_t bytes = gpu::GemvWorkspaceBytes(p);
  if (bytes > 0) {
    if (gemv_counters_ == nullptr) {
      auto counters = dev_->AllocatePermanent(sizeof(unsigned int) * gpu::kGemvCounters, what);
      if (!counters.ok()) {
        dev_->SetFault(counters.status());
        return;
      }
      gemv_counters_ = static_cast<unsigned int*>(*counters);
      dev_->Check(cudaMemsetAsync(gemv_counters_, 0, sizeof(unsigned int) * gpu::kGemvCounters,
                                  dev_->stream()),
                  what);
    }
    p.workspace = dev_->Scratch(kGemvWs, bytes);
    if (p.workspace == nullptr) return;
    p.counters = gemv_counters_;
  }
  dev_->Check(gpu::LaunchGemv(p, dev_->stream()), what);
}

bool CudaBackend::TakesGemv(const gpu::GemvParams& p) const {
  // The CUDA-core kernel (no workspace) always; the tensor-core one only when asked for.
  return options_.tensor_core_projections || gpu::GemvWorkspaceBytes(p) == 0;
}

// y[m, n] (+)= xb[m, k] . w[n, k]^T on cuBLAS, xb already in bf16.
void CudaBackend::Gemm(const bf16* xb, const Matrix& w, float* y, int m, bool accumulate) {
  const int n = w.rows, k = w.cols;
  // Row-major y[m, n] = x[m, k] . w[n, k]^T is column-major y^T[n, m] = w^T' . x^T' with
  // w seen as column-major [k, n] (transposed) and x as column-major [k, m].
  const float alpha = 1.0f, beta = accumulate ? 1.0f : 0.0f;
  dev_->CheckBlas(cublasGemmEx(dev_->blas(), CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w.data,
                               CUDA_R_16BF, k, xb, CUDA_R_16BF, k, &beta, y, CUDA_R_32F, n,
                               CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                  "cublasGemmEx");
}

void CudaBackend::MatMul(const float* x, const Matrix& w, float* y, int m, bool accumulate) {
  if (!dev_->ok() || m <= 0 || w.rows <= 0) return;
  const int n = w.rows, k = w.cols;
  // Decode-sized products stream the weights with the GEMV kernels (x converted on the fly).
  if (gpu::GemvSupported(m, n, k) && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
      reinterpret_cast<uintptr_t>(w.data) % 16 == 0) {
    gpu::GemvParams p;
    p.x = x;
    p.out[0] = {static_cast<const bf16*>(w.data), y, n};
    p.num_outputs = 1;
    p.m = m;
    p.k = k;
    p.accumulate = accumulate;
    if (TakesGemv(p)) {
      RunGemv(p, "gemv");
      return;
    }
  }
  bf16* xb = static_cast<bf16*>(dev_->Scratch(kXBf16, static_cast<size_t>(m) * k * sizeof(bf16)));
  if (xb == nullptr) return;
  dev_->Check(gpu::LaunchF32ToBf16(x, xb, static_cast<size_t>(m) * k, dev_->stream()),
              "matmul input");
  Gemm(xb, w, y, m, accumulate);
}

namespace {

// Whether the decode GEMV takes x [m, k] against every output (all 16-byte aligned).
bool GemvFits(const float* x, int m, std::span<const Backend::MatMulOutput> outs) {
  if (outs.empty() || outs.size() > static_cast<size_t>(gpu::kGemvMaxOutputs) ||
      reinterpret_cast<uintptr_t>(x) % 16 != 0) {
    return false;
  }
  for (const Backend::MatMulOutput& o : outs) {
    if (o.w->cols != outs[0].w->cols || !gpu::GemvSupported(m, o.w->rows, o.w->cols) ||
        reinterpret_cast<uintptr_t>(o.w->data) % 16 != 0) {
      return false;
    }
  }
  return true;
}

}  // namespace

// A few decode rows (the CUDA-core GEMV): one launch normalises x and streams all matrices
// (q/k/v, gate/up, the final norm and lm_head). Otherwise x is normalised into bf16 once and
// every matrix is a cuBLAS GEMM on it (h is not written).
void CudaBackend::NormMatMuls(const float* x, const float* norm_weight, float eps, float* h, int m,
                              std::span<const MatMulOutput> outs) {
  if (!dev_->ok() || m <= 0 || outs.empty()) return;
  const int k = outs[0].w->cols;
  for (const MatMulOutput& o : outs) {
    if (o.w->cols != k) {  // inputs of different widths: one product at a time
      Backend::NormMatMuls(x, norm_weight, eps, h, m, outs);
      return;
    }
  }
  if (GemvFits(x, m, outs) &&
      (norm_weight == nullptr || reinterpret_cast<uintptr_t>(norm_weight) % 16 == 0)) {
    gpu::GemvParams p;
    p.x = x;
    p.norm_weight = norm_weight;
    p.eps = eps;
    p.input = norm_weight != nullptr ? gpu::GemvInput::kRmsNorm : gpu::GemvInput::kPlain;
    for (const MatMulOutput& o : outs) {
      p.out[p.num_outputs++] = {static_cast<const bf16*>(o.w->data), o.y, o.w->rows};
    }
    p.m = m;
    p.k = k;
    if (TakesGemv(p)) {
      RunGemv(p, "norm gemv");
      return;
    }
  }
  const size_t elems = static_cast<size_t>(m) * k;
  bf16* xb = static_cast<bf16*>(dev_->Scratch(kXBf16, elems * sizeof(bf16)));
  if (xb == nullptr) return;
  if (norm_weight != nullptr) {
    dev_->Check(gpu::LaunchRmsNorm(x, norm_weight, nullptr, xb, m, k, eps, dev_->stream()),
                "rmsnorm");
  } else {
    dev_->Check(gpu::LaunchF32ToBf16(x, xb, elems, dev_->stream()), "matmul input");
  }
  for (const MatMulOutput& o : outs) Gemm(xb, *o.w, o.y, m, /*accumulate=*/false);
}

// A few decode rows: silu(gate) * up formed while the GEMV stages its input. Otherwise
// silu(gate) * up straight into bf16, then a cuBLAS GEMM (gate is not overwritten).
void CudaBackend::SiluMulMatMul(float* gate, const float* up, const Matrix& w, float* y, int m,
                                bool accumulate) {
  if (!dev_->ok() || m <= 0) return;
  const MatMulOutput out[] = {{&w, y}};
  if (GemvFits(gate, m, out) && reinterpret_cast<uintptr_t>(up) % 16 == 0) {
    gpu::GemvParams p;
    p.x = gate;
    p.x2 = up;
    p.input = gpu::GemvInput::kSiluMul;
    p.out[0] = {static_cast<const bf16*>(w.data), y, w.rows};
    p.num_outputs = 1;
    p.m = m;
    p.k = w.cols;
    p.accumulate = accumulate;
    if (TakesGemv(p)) {
      RunGemv(p, "silu gemv");
      return;
    }
  }
  const size_t elems = static_cast<size_t>(m) * w.cols;
  bf16* xb = static_cast<bf16*>(dev_->Scratch(kXBf16, elems * sizeof(bf16)));
  if (xb == nullptr) return;
  dev_->Check(gpu::LaunchSiluMul(gate, up, nullptr, xb, elems, dev_->stream()), "silu mul");
  Gemm(xb, w, y, m, accumulate);
}

void CudaBackend::Embed(const Matrix& table, const int32_t* ids, int n, float* out) {
  if (!dev_->ok()) return;
  dev_->Check(gpu::LaunchEmbedRows(static_cast<const bf16*>(table.data), ids, n, table.cols, out,
                                   dev_->stream()),
              "embedding");
}

void CudaBackend::GatherRows(const float* src, const int32_t* ids, int n, int dim, float* out) {
  if (!dev_->ok()) return;
  dev_->Check(gpu::LaunchGatherRowsF32(src, ids, n, dim, out, dev_->stream()), "gather rows");
}

void CudaBackend::RmsNorm(const float* x, const float* weight, float* out, int rows, int dim,
                          float eps) {
  if (!dev_->ok()) return;
  dev_->Check(gpu::LaunchRmsNorm(x, weight, out, nullptr, rows, dim, eps, dev_->stream()),
              "rmsnorm");
}

void CudaBackend::Rope(float* x, const int32_t* positions, int n, int heads, int head_dim,
                       const float* inv_freq) {
  if (!dev_->ok()) return;
  dev_->Check(gpu::LaunchRope(x, positions, n, heads, head_dim, inv_freq, dev_->stream()), "rope");
}

void CudaBackend::RopeQK(float* q, int q_heads, float* k, int k_heads, const int32_t* positions,
                         int n, int head_dim, const float* inv_freq) {
  if (!dev_->ok()) return;
  dev_->Check(
      gpu::LaunchRopeQK(q, q_heads, k, k_heads, positions, n, head_dim, inv_freq, dev_->stream()),
      "rope");
}

void CudaBackend::AddBias(float* y, const float* bias, int rows, int cols) {
  if (!dev_->ok()) return;
  dev_->Check(gpu::LaunchAddBias(y, bias, rows, cols, dev_->stream()), "bias");
}

void CudaBackend::SiluMul(const float* gate, const float* up, float* out, size_t count) {
  if (!dev_->ok()) return;
  dev_->Check(gpu::LaunchSiluMul(gate, up, out, nullptr, count, dev_->stream()), "silu");
}

void CudaBackend::AppendKv(const float* k_new, const float* v_new, int n, int num_kv_heads,
                           int head_dim, void* k_dst, void* v_dst, size_t dst_head_stride) {
  if (!dev_->ok()) return;
  dev_->Check(
      gpu::LaunchAppendKv(k_new, v_new, n, num_kv_heads, head_dim, static_cast<bf16*>(k_dst),
                          static_cast<bf16*>(v_dst), dst_head_stride, dev_->stream()),
      "append kv");
}

const gpu::AppendKvTarget* CudaBackend::AppendTargets(std::span<const KvAppend> seqs, int* rows) {
  append_targets_.resize(seqs.size());
  *rows = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    append_targets_[i] = {static_cast<bf16*>(seqs[i].k_dst), static_cast<bf16*>(seqs[i].v_dst),
                          static_cast<int64_t>(seqs[i].dst_head_stride), seqs[i].row0, seqs[i].n};
    *rows = std::max(*rows, seqs[i].row0 + seqs[i].n);
  }
  const size_t bytes = sizeof(gpu::AppendKvTarget) * seqs.size();
  auto* targets = static_cast<gpu::AppendKvTarget*>(dev_->Scratch(kAppendTargets, bytes));
  if (targets != nullptr) dev_->CopyFromHost(targets, append_targets_.data(), bytes);
  return targets;
}

void CudaBackend::AppendKvBatch(const float* k_new, const float* v_new, int num_kv_heads,
                                int head_dim, std::span<const KvAppend> seqs) {
  if (!dev_->ok() || seqs.empty()) return;
  int rows = 0;
  const gpu::AppendKvTarget* targets = AppendTargets(seqs, &rows);
  if (targets == nullptr) return;
  dev_->Check(gpu::LaunchAppendKvBatch(k_new, v_new, rows, num_kv_heads, head_dim, targets,
                                       static_cast<int>(seqs.size()), dev_->stream()),
              "append kv");
}

void CudaBackend::RopeAppendKvBatch(float* q, int q_heads, float* k, const float* v,
                                    int num_kv_heads, const int32_t* positions, int n, int head_dim,
                                    const float* inv_freq, std::span<const KvAppend> seqs) {
  if (!dev_->ok() || n <= 0) return;
  int rows = 0;
  const gpu::AppendKvTarget* targets = seqs.empty() ? nullptr : AppendTargets(seqs, &rows);
  if (!seqs.empty() && targets == nullptr) return;
  dev_->Check(
      gpu::LaunchRopeAppendKvBatch(q, q_heads, k, v, n, num_kv_heads, head_dim, positions, inv_freq,
                                   targets, static_cast<int>(seqs.size()), dev_->stream()),
      "rope and append kv");
}

// Sampling on the device (engine/backend/cuda/cuda_sampling.h): the same tokens and PRNG
// stream as the host Sampler; only tokens and requested logprobs come back.
absl::Status CudaBackend::SampleRows(const float* logits, int vocab,
                                     std::span<SampleJob* const> jobs) {
  if (!dev_->ok()) return dev_->fault();
  if (sampler_ == nullptr) sampler_ = std::make_unique<CudaSampler>();
  std::vector<CudaSampler::Job> rows;
  rows.reserve(jobs.size());
  for (const SampleJob* j : jobs) {
    rows.push_back({.sampler = j->sampler,
                    .prompt = j->prompt,
                    .generated = j->generated,
                    .want_info = j->want_info});
  }
  auto out = sampler_->Sample(logits, vocab, rows, dev_->stream());
  if (!out.ok()) {
    // A CUDA failure leaves the backend unusable; an argument error leaves it as it is.
    if (absl::IsInternal(out.status())) dev_->SetFault(out.status());
    return out.status();
  }
  for (size_t r = 0; r < jobs.size(); ++r) {
    jobs[r]->token = (*out)[r].token;
    jobs[r]->info = std::move((*out)[r].info);
  }
  dev_->MarkIdle();  // the stream is idle (Sample synchronised it)
  return absl::OkStatus();
}
void CudaBackend::AttentionBatch(std::span<const AttentionParams> calls) {
  if (!dev_->ok()) return;
  // Decode calls over one context (its layer's K/V) in cascade groups: dense and squeezed apart.
  std::map<std::pair<const void*, bool>, std::vector<const AttentionParams*>> shared;
  std::vector<const AttentionParams*> squeezed[3];  // SqueezedGroup: per-sequence path
  std::vector<const AttentionParams*> single;
  std::vector<const AttentionParams*> own_rows;  // decode steps without a context: batched
  for (const AttentionParams& p : calls) {
    const bool own_only = p.shape.num_queries == 1 && p.fixed.kv.num_rows == 0;
    if (own_only && (own_rows.empty() || SameShape(own_rows[0]->shape, p.shape))) {
      own_rows.push_back(&p);
    } else if (own_only) {
      single.push_back(&p);
    } else if (options_.cascade && CascadeAttention::Eligible(p)) {
      shared[{p.fixed.kv.k, CascadeAttention::Squeezed(p)}].push_back(&p);
    } else if (DeviceSelected(p)) {
      squeezed[SqueezedGroup(p)].push_back(&p);
    } else {
      single.push_back(&p);
    }
  }
  for (auto& [key, group] : shared) {
    if (group.size() < 2) {  // alone: the single-sequence kernels
      (key.second ? squeezed[0] : single).push_back(group[0]);
      continue;
    }
    for (size_t at = 0; at < group.size(); at += CascadeAttention::kMaxGroup) {
      const size_t count = std::min<size_t>(CascadeAttention::kMaxGroup, group.size() - at);
      cascade_.Run(std::span<const AttentionParams* const>(group.data() + at, count),
                   options_.cascade_kernel);
    }
  }
  for (const AttentionParams* p : single) Attention(*p);
  if (!own_rows.empty()) dense_.DecodeBatch(own_rows);
  // One batched launch sequence per mode (all sequences of a model share the shapes).
  for (const auto& group : squeezed) {
    if (!group.empty()) squeezed_.Decode(group);
  }
}

absl::Status CudaBackend::Synchronize() {
  absl::Status st = dev_->Synchronize();
  if (st.ok() && !step_error_.ok()) st = std::move(step_error_);
  step_error_ = absl::OkStatus();
  return st;
}

void CudaBackend::Attention(const AttentionParams& p) {
  if (!dev_->ok()) return;
  const AttentionShape& s = p.shape;
  const int n = s.num_queries, hq = s.num_q_heads, d = s.head_dim;
  const size_t rows = static_cast<size_t>(n) * hq;
  if (p.fixed.kv.num_rows > 0 && p.fixed.kv.dtype != DType::kBF16) {
    dev_->Check(cudaErrorInvalidValue, "attention: fixed-context KV is not bf16");
    return;
  }
  if (DeviceSelected(p)) {
    const AttentionParams* one = &p;
    squeezed_.Decode(std::span<const AttentionParams* const>(&one, 1));
    return;
  }
  const bool with_fixed = p.fixed.kv.num_rows > 0;
  const bool dense_fixed = with_fixed && !SqueezedOnDevice(p);
  // A host selector's rows: its selection, as ranges of a copy of the call.
  AttentionParams selected;
  const AttentionParams* call = &p;
  if (dense_fixed && p.fixed.selector != nullptr) {
    q_host_.resize(rows * d);
    dev_->CopyToHost(q_host_.data(), p.q, sizeof(float) * q_host_.size());
    selection_.candidates.clear();  // a selector that lists none leaves it empty
    p.fixed.selector->Select(p.fixed.layer, q_host_.data(), n, &selection_);
    absl::Status st =
        CheckHostSelection(selection_, p.fixed.layer, s.num_kv_heads, p.fixed.kv.num_rows,
                           p.fixed.kept_rows, p.fixed.candidates);
    if (!st.ok()) {
      if (step_error_.ok()) step_error_ = std::move(st);
      return;
    }
    selected = p;
    selected.fixed.ranges = selection_.ranges;
    call = &selected;
  }
  // Decode over a fixed context without device selection: one launch for the context (all its
  // rows or the host's selection) and the sequence's own rows, one combine.
  if (dense_fixed && DenseAttention::DecodesFixed(p)) {
    dense_.FixedAndDynamic(*call);
    return;
  }
  float* dyn_out = p.out;
  float* dyn_lse = nullptr;
  float* fixed_lse = nullptr;
  if (with_fixed) {
    fixed_lse = static_cast<float*>(dev_->Scratch(kFixedLse, rows * sizeof(float)));
    dyn_out = static_cast<float*>(dev_->Scratch(kDynOut, rows * d * sizeof(float)));
    dyn_lse = static_cast<float*>(dev_->Scratch(kDynLse, rows * sizeof(float)));
    if (fixed_lse == nullptr || dyn_out == nullptr || dyn_lse == nullptr) return;
    if (dense_fixed) {
      dense_.Fixed(*call, p.out, fixed_lse);
    } else {  // n > 1 (single tokens went to the squeezed decode)
      squeezed_.FixedPrefill(p, p.out, fixed_lse);
    }
  }
  dense_.Dynamic(p, dyn_out, dyn_lse);
  if (with_fixed) {
    dev_->Check(gpu::LaunchMergeAttention(p.out, fixed_lse, dyn_out, dyn_lse,
                                          static_cast<int>(rows), d, dev_->stream()),
                "attention merge");
  }
}

}  // namespace squeeze
