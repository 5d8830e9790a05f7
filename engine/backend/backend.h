// The small set of operations the Llama forward (engine/model/llama_model.cc) is written against.
// The CPU backend (engine/backend/cpu/) is the readable fp32 reference; the CUDA backend
// (engine/backend/cuda/) implements the same interface with bf16 weights and KV on the GPU.
//
// Conventions for every op:
// - Pointers are *backend memory* (host memory for the CPU backend, device memory for CUDA),
//   obtained from Allocate(), the Upload*/Random* calls or a SequenceKV/ContextKV view, unless a
//   comment says otherwise.
// - Activations are dense row-major fp32; weights and KV are in the backend's storage dtypes
//   (Matrix::dtype, kv_dtype()); shapes are given in brackets, outermost first.
// - Ops are enqueued in order and may run asynchronously; Synchronize() waits for them and
//   reports the first asynchronous fault. Ops never allocate visible memory and never fail on
//   valid arguments: callers (the model) validate shapes and indices before launching.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/backend/backend_cache.h"
#include "engine/backend/cluster_tables.h"
#include "engine/backend/dtype.h"
#include "engine/backend/fixed_context.h"
#include "engine/sampling/sampler.h"

namespace squeeze {

struct ContextKV;
class SequenceKV;
class KMeansSolver;
class WindowScorer;

// A weight matrix [rows, cols] in the Hugging Face [out_features, in_features] orientation, in
// backend memory and the backend's weight dtype. Owned by the backend that made it (or, on the
// CPU backend, borrowed from the host weights it was made from).
struct Matrix {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  int rows = 0;
  int cols = 0;
};

// A block of backend memory, released when the Buffer is destroyed.
class Buffer {
 public:
  virtual ~Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 protected:
  Buffer(void* data, size_t bytes) : data_(data), bytes_(bytes) {}

 private:
  void* data_;
  size_t bytes_;
};

// One layer's keys and values for all KV heads. Row r of head h starts at element
// k + h * head_stride + r * head_dim (same for v); rows of one head are contiguous d-vectors.
// Both SequenceKV (head_stride = capacity * d) and ContextKV (head_stride = S * d) fit this view.
struct KvSlice {
  const void* k = nullptr;
  const void* v = nullptr;
  size_t head_stride = 0;  // elements between row 0 of head h and row 0 of head h + 1
  int num_rows = 0;        // rows per head that may be read
  DType dtype = DType::kF32;

  // Typed views for fp32 slices (the CPU reference); callers check dtype first.
  const float* kf() const { return static_cast<const float*>(k); }
  const float* vf() const { return static_cast<const float*>(v); }
};

// Where a registered context's KV lives in backend memory (both [L][Hkv][S][d], kv_dtype()).
struct ContextKvView {
  const void* k = nullptr;
  const void* v = nullptr;
};

// The key set one call of partial attention reads.
struct AttentionKeys {
  KvSlice kv;
  // ranges[h] lists the storage rows of KV head h to attend to (half-open, within
  // [0, kv.num_rows), any order, non-overlapping). An empty span means every row of every head.
  std::span<const std::vector<KeyRange>> ranges;
  // Causal limit. When >= 0, query t (0-based within the call) only sees rows
  // r <= causal_offset + t (the dynamic KV: query t sits at dynamic index causal_offset + t).
  // When < 0 there is no limit (fixed context: every fixed key precedes every new token).
  int causal_offset = -1;
  // Fixed part only: the sequence's selector (nullptr: every row, or `ranges` when given) and
  // its policy for the step. The backend selects (ContextAttentionPolicy: on its device when it
  // has one for kSqueezed; else through selector->Select on the host, a multi-token call scoring
  // the clusters by the mean over its query rows) and writes the rows kept per KV head to
  // kept_rows (host memory, [Hkv]) and, hierarchical, the candidate fine clusters to candidates
  // ([Hkv]; may be null) by the time Synchronize() returns.
  FixedContextAttention* selector = nullptr;
  ContextAttentionPolicy policy;
  int layer = -1;  // the layer of this call (the selection's tables are per layer)
  int32_t* kept_rows = nullptr;
  int32_t* candidates = nullptr;
};

// Shapes shared by the attention entry points. GQA: query head qh reads KV head qh / G with
// G = num_q_heads / num_kv_heads.
struct AttentionShape {
  int num_queries = 0;   // n
  int num_q_heads = 0;   // Hq
  int num_kv_heads = 0;  // Hkv
  int head_dim = 0;      // d
  float scale = 0.0f;    // logit scale, 1/sqrt(d) for Llama
};

// One sequence, one layer: softmax attention of n new queries over the selected fixed-context
// keys and, causally, the sequence's dynamic keys, merged exactly through their log-sum-exp.
struct AttentionParams {
  AttentionShape shape;
  const float* q = nullptr;  // [n, Hq, d] post-RoPE queries
  float* out = nullptr;      // [n, Hq, d] attention output (may not alias q)
  // Fixed-context part; fixed.kv.num_rows == 0 means the sequence has no fixed context.
  // fixed.causal_offset must be < 0.
  AttentionKeys fixed;
  // Dynamic part: rows [0, causal_offset + n) of the sequence's KV (the new tokens' K/V already
  // appended), causal_offset = number of dynamic tokens before this step.
  AttentionKeys dynamic;
};

// One sequence's next token, chosen on the device from its logits row (Backend::SampleRows)
// exactly as sampler->Sample(logits, prompt, generated, want_info ? &info : nullptr) would.
struct SampleJob {
  Sampler* sampler = nullptr;
  std::span<const int32_t> prompt;     // Sampler::Sample's prompt (penalties)
  std::span<const int32_t> generated;  // and generated tokens
  bool want_info = false;
  // Results, set by SampleRows.
  int32_t token = -1;
  SampleInfo info;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;

  // ---- memory ------------------------------------------------------------------------------
  // Scratch memory, 64-byte aligned, contents undefined. Backends may pool blocks, so calling
  // this once per forward step is cheap.
  virtual absl::StatusOr<std::unique_ptr<Buffer>> Allocate(size_t bytes) = 0;
  // Host <-> backend copies of `bytes` bytes. `host` pointers are ordinary host memory.
  // CopyToHost waits for the ops enqueued before it.
  virtual void CopyFromHost(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void CopyToHost(void* host_dst, const void* src, size_t bytes) = 0;
  // A synchronous copy of backend memory that no queued op writes any more (e.g. a finished
  // registration's KV), callable from any thread: it touches no state of the backend's queue.
  virtual void CopyToHostUnordered(void* host_dst, const void* src, size_t bytes) = 0;
  // Backend-to-backend copy of `rows` rows of `row_bytes` bytes with the given pitches (bytes).
  virtual void Copy2D(void* dst, size_t dst_pitch, const void* src, size_t src_pitch,
                      size_t row_bytes, size_t rows) = 0;
  // Waits for every enqueued op; returns the first asynchronous fault (CPU: always OK).
  virtual absl::Status Synchronize() = 0;
  // True when backend memory is ordinary host memory (the CPU backend).
  virtual bool host_memory() const = 0;
  // True when Attention honours ContextAttentionPolicy::estimate_tail (the CPU reference);
  // admission refuses such requests (UNIMPLEMENTED) on a backend that does not.
  virtual bool estimates_tail() const { return false; }
  // Device memory now: free and total bytes, and the headroom kept free for activations and
  // workspaces when contexts are made resident. nullopt for host memory.
  struct DeviceMemory {
    size_t free_bytes = 0;
    size_t total_bytes = 0;
    size_t headroom_bytes = 0;
  };
  virtual std::optional<DeviceMemory> device_memory() const { return std::nullopt; }

  // ---- weights -----------------------------------------------------------------------------
  // Immutable tensors for the backend's lifetime. When borrows_host_weights(), the results
  // point into `host`, which must then outlive the backend; otherwise they are copies (in the
  // backend's weight dtype) and `host` may be freed afterwards.
  virtual bool borrows_host_weights() const = 0;
  virtual absl::StatusOr<Matrix> UploadMatrix(std::span<const float> host, int rows, int cols) = 0;
  virtual absl::StatusOr<const float*> UploadVector(std::span<const float> host) = 0;
  // Random weights made by the backend itself (benchmarks at real sizes without files):
  // entries N(0, stddev^2) (matrices) or N(mean, stddev^2) (fp32 vectors), deterministic in
  // the seed. Owned by the backend.
  virtual absl::StatusOr<Matrix> RandomMatrix(int rows, int cols, uint64_t seed, float stddev) = 0;
  virtual absl::StatusOr<const float*> RandomVector(int n, uint64_t seed, float mean,
                                                    float stddev) = 0;

  // ---- KV ----------------------------------------------------------------------------------
  // Element type of KV in backend memory (SequenceKV storage, ContextKvView).
  virtual DType kv_dtype() const = 0;
  // Execution choices a benchmark may compare within one run (the defaults are the fast ones).
  struct ExecutionOptions {
    // Decode steps of several sequences over the same context read it once for all of them
    // (cascade attention); false: every sequence reads its context on its own.
    bool cascade = true;
    // Decode projections of more rows than the CUDA-core GEMV takes (5..64) on the tensor-core
    // GEMV kernel (kernels/ops/gemv.cuh); false: one fused RMSNorm (or SiLU-mul) to bf16, then
    // cuBLAS GEMMs, measured faster on an H100 (bench/RESULTS.md, projections alone).
    bool tensor_core_projections = false;
    // The kernel of dense cascade groups (kernels/attention/cascade_attention.cuh): kAuto (the
    // wgmma kernel split over keys on Hopper for groups of many query rows per KV head once
    // gpu::kCascadeAutoWgmma, else mma.sync), or one of them forced for a comparison (kWgmma
    // where supported).
    enum class CascadeKernel { kAuto, kMmaSync, kWgmma };
    CascadeKernel cascade_kernel = CascadeKernel::kAuto;
  };
  virtual void set_execution_options(const ExecutionOptions& /*options*/) {}
  // Row r of logits [jobs.size(), vocab] (backend memory) sampled with jobs[r] exactly as
  // jobs[r]->sampler->Sample would on the host (a device backend samples on the device, so only
  // the tokens and requested logprobs come back); synchronises.
  virtual absl::Status SampleRows(const float* logits, int vocab,
                                  std::span<SampleJob* const> jobs) = 0;
  // A k-means that runs on this backend's device, for the registration (indexer) thread, or
  // nullptr (the CPU reference clusters). Owned by the backend.
  virtual KMeansSolver* kmeans_solver() { return nullptr; }
  // The calibration's window scores on this backend's device, for the same thread, or nullptr
  // (scored on the host). Owned by the backend.
  virtual WindowScorer* window_scorer() { return nullptr; }
  // Backend memory holding `ctx`'s K/V in kv_dtype(), valid until the next Synchronize(). The
  // CPU backend returns ctx.k/ctx.v; a device backend uploads once and keeps the copy with
  // `ctx` (released with it). When device memory runs short it evicts copies not used since
  // the last Synchronize(), least recently used first (they are uploaded again on their next
  // use); RESOURCE_EXHAUSTED, with the sizes, when even that leaves too little.
  virtual absl::StatusOr<ContextKvView> ResidentContextKv(const ContextKV& ctx) = 0;
  // A just-registered context whose prefill KV (`source`, token order, this backend's memory)
  // is still here: a device backend makes ctx's resident copy from it, rows gathered into
  // ctx's storage order (ctx.token_of), instead of uploading the host copy at first use. Best
  // effort (no room: nothing is kept, first use uploads as usual); the caller releases
  // `source` afterwards. Default: nothing.
  virtual void AdoptContextKv(const ContextKV& /*ctx*/, SequenceKV&& /*source*/) {}

  // ---- ops ---------------------------------------------------------------------------------
  // y[m, n] = x[m, k] . w[n, k]^T with n = w.rows, k = w.cols (w in Hugging Face [out, in]
  // layout), or y += ... when `accumulate` (the residual add of the O and down projections,
  // fused into the GEMM).
  virtual void MatMul(const float* x, const Matrix& w, float* y, int m, bool accumulate) = 0;
  // Several products of one input: outs[j].y[m, n_j] = in . outs[j].w^T, where `in` is
  // RmsNorm(x) with `norm_weight` and `eps` (x itself when norm_weight is null). `h` [m, cols]
  // is scratch that may receive the normalised rows. Default: RmsNorm into h, then one MatMul
  // per output; a device backend may do it all in one pass over the weights (q/k/v, gate/up).
  struct MatMulOutput {
    const Matrix* w = nullptr;
    float* y = nullptr;
  };
  virtual void NormMatMuls(const float* x, const float* norm_weight, float eps, float* h, int m,
                           std::span<const MatMulOutput> outs) {
    const float* in = x;
    if (norm_weight != nullptr && !outs.empty()) {
      RmsNorm(x, norm_weight, h, m, outs[0].w->cols, eps);
      in = h;
    }
    for (const MatMulOutput& o : outs) MatMul(in, *o.w, o.y, m, /*accumulate=*/false);
  }
  // y[m, n] (+)= (silu(gate) * up)[m, k] . w^T (the SwiGLU down projection). `gate` may be
  // overwritten. Default: SiluMul into gate, then MatMul; a device backend may fuse the two.
  virtual void SiluMulMatMul(float* gate, const float* up, const Matrix& w, float* y, int m,
                             bool accumulate) {
    SiluMul(gate, up, gate, static_cast<size_t>(m) * w.cols);
    MatMul(gate, w, y, m, accumulate);
  }
  // out[i, :] = float(table[ids[i], :]) for i < n: the embedding lookup. ids must be valid.
  virtual void Embed(const Matrix& table, const int32_t* ids, int n, float* out) = 0;
  // out[i, :] = src[ids[i], :] for i < n; rows have `dim` floats (the pick of each sequence's
  // last hidden row before the final norm and lm_head). ids must be valid rows.
  virtual void GatherRows(const float* src, const int32_t* ids, int n, int dim, float* out) = 0;
  // out[i, :] = x[i, :] / sqrt(mean(x[i, :]^2) + eps) * weight, for rows i < rows. out may
  // alias x.
  virtual void RmsNorm(const float* x, const float* weight, float* out, int rows, int dim,
                       float eps) = 0;
  // In-place rotary embedding of x[n, heads, head_dim], Hugging Face "rotate_half" pairing
  // (i, i + d/2): angle = float(positions[t]) * inv_freq[i] in fp32, inv_freq[d/2].
  virtual void Rope(float* x, const int32_t* positions, int n, int heads, int head_dim,
                    const float* inv_freq) = 0;
  // Rope of q [n, q_heads, d] and k [n, k_heads, d] at the same positions (one launch on a
  // device backend).
  virtual void RopeQK(float* q, int q_heads, float* k, int k_heads, const int32_t* positions, int n,
                      int head_dim, const float* inv_freq) {
    Rope(q, positions, n, q_heads, head_dim, inv_freq);
    Rope(k, positions, n, k_heads, head_dim, inv_freq);
  }
  // y[i, :] += bias[:] for rows i < rows; bias [cols] fp32 (from UploadVector). The q/k/v
  // biases of Qwen2 and the attention biases of other families. Default: a host round trip
  // through CopyToHost / CopyFromHost (correct on any backend, slow, not capturable in a CUDA
  // graph); a device backend should override it with a kernel.
  virtual void AddBias(float* y, const float* bias, int rows, int cols) {
    const size_t n = static_cast<size_t>(rows) * cols;
    std::vector<float> host_y(n), host_bias(cols);
    CopyToHost(host_y.data(), y, n * sizeof(float));
    CopyToHost(host_bias.data(), bias, cols * sizeof(float));
    for (size_t i = 0; i < n; ++i) host_y[i] += host_bias[i % cols];
    CopyFromHost(y, host_y.data(), n * sizeof(float));
  }
  // out[i] = silu(gate[i]) * up[i] for i < count; out may alias gate or up.
  virtual void SiluMul(const float* gate, const float* up, float* out, size_t count) = 0;
  // Writes n new tokens' K/V rows, k_new/v_new [n, Hkv, d] fp32, into a per-head layout of
  // kv_dtype() elements: token t of head h goes to element k_dst + h * dst_head_stride + t * d
  // (k_dst points at the first free row of head 0).
  virtual void AppendKv(const float* k_new, const float* v_new, int n, int num_kv_heads,
                        int head_dim, void* k_dst, void* v_dst, size_t dst_head_stride) = 0;
  // AppendKv for several sequences of one forward step in one call: sequence i's n rows are rows
  // [row0, row0 + n) of k_new/v_new [T, Hkv, d] and go to its k_dst/v_dst/dst_head_stride as
  // AppendKv writes them. Sequences are listed in increasing row0, rows do not overlap. Default:
  // one AppendKv each; a device backend does them in one launch.
  struct KvAppend {
    void* k_dst = nullptr;
    void* v_dst = nullptr;
    size_t dst_head_stride = 0;
    int row0 = 0;
    int n = 0;
  };
  virtual void AppendKvBatch(const float* k_new, const float* v_new, int num_kv_heads, int head_dim,
                             std::span<const KvAppend> seqs) {
    const size_t row = static_cast<size_t>(num_kv_heads) * head_dim;
    for (const KvAppend& s : seqs) {
      AppendKv(k_new + s.row0 * row, v_new + s.row0 * row, s.n, num_kv_heads, head_dim, s.k_dst,
               s.v_dst, s.dst_head_stride);
    }
  }
  // RopeQK of q [T, q_heads, d] and k [T, Hkv, d] at positions [T], then AppendKvBatch of the
  // rotated k and v: a step's RoPE and KV append (one launch on a device backend).
  virtual void RopeAppendKvBatch(float* q, int q_heads, float* k, const float* v, int num_kv_heads,
                                 const int32_t* positions, int n, int head_dim,
                                 const float* inv_freq, std::span<const KvAppend> seqs) {
    RopeQK(q, q_heads, k, num_kv_heads, positions, n, head_dim, inv_freq);
    AppendKvBatch(k, v, num_kv_heads, head_dim, seqs);
  }
  // See AttentionParams.
  virtual void Attention(const AttentionParams& params) = 0;
  // The attention calls of one layer for several sequences (outputs do not overlap); a device
  // backend may run them in fewer launches. Default: one Attention call each.
  virtual void AttentionBatch(std::span<const AttentionParams> calls) {
    for (const AttentionParams& p : calls) Attention(p);
  }
};

}  // namespace squeeze
