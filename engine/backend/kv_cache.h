// Key/value storage. Keys are post-RoPE. A SequenceKV lives in host fp32 memory (the CPU
// reference) or in a backend's memory in its kv_dtype() (bf16 on the GPU); a ContextKV lives on
// the host in the same dtype (indexing and persistence read it) and a backend keeps its own
// resident copy with it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "engine/backend/backend.h"
#include "engine/backend/host_kv_tensor.h"

namespace squeeze {

// Shape of one KV tensor set: L layers x Hkv heads x tokens x d.
struct KvShape {
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
};

// Growable per-sequence KV (the "dynamic" part: user input and generated tokens, or a context
// being registered). Layout: k[layer][kv_head][capacity][d], same for v.
class SequenceKV {
 public:
  SequenceKV() = default;
  // Host fp32 storage.
  explicit SequenceKV(KvShape shape) : shape_(shape) {}
  // Storage in `backend`'s memory and kv_dtype(); `backend` must outlive this object. A host
  // backend (CpuBackend) gives the same layout as host storage.
  SequenceKV(KvShape shape, Backend* backend) : shape_(shape), backend_(backend) {
    if (backend_ != nullptr) dtype_ = backend_->kv_dtype();
  }

  const KvShape& shape() const { return shape_; }
  int length() const { return length_; }
  int capacity() const { return capacity_; }
  Backend* backend() const { return backend_; }  // nullptr: host fp32 storage
  DType dtype() const { return dtype_; }

  // Makes room for `extra` more tokens (keeps contents). Fails only when the backend cannot
  // allocate (RESOURCE_EXHAUSTED); the contents are then unchanged.
  absl::Status Reserve(int extra);
  // Address of token `t`'s row of (layer, kv_head), in the storage's memory and dtype.
  void* key_data(int layer, int kv_head, int t) const { return Row(k_base(), layer, kv_head, t); }
  void* value_data(int layer, int kv_head, int t) const { return Row(v_base(), layer, kv_head, t); }
  // fp32 row pointers; only for host storage (backend() == nullptr or a host backend).
  float* key(int layer, int kv_head, int t) {
    return static_cast<float*>(key_data(layer, kv_head, t));
  }
  float* value(int layer, int kv_head, int t) {
    return static_cast<float*>(value_data(layer, kv_head, t));
  }
  const float* key(int layer, int kv_head, int t) const {
    return static_cast<const float*>(key_data(layer, kv_head, t));
  }
  const float* value(int layer, int kv_head, int t) const {
    return static_cast<const float*>(value_data(layer, kv_head, t));
  }
  // Marks `n` more tokens as valid (after the forward wrote them for every layer).
  void Commit(int n) { length_ += n; }
  // Drops everything after the first `n` tokens.
  void Truncate(int n) {
    if (n < length_) length_ = n;
  }
  size_t bytes() const { return 2 * Elements(capacity_) * DTypeBytes(dtype_); }

 private:
  size_t Elements(int capacity) const {
    return static_cast<size_t>(shape_.num_layers) * shape_.num_kv_heads * capacity *
           shape_.head_dim;
  }
  void* k_base() const { return k_buf_ ? k_buf_->data() : const_cast<float*>(k_.data()); }
  void* v_base() const { return v_buf_ ? v_buf_->data() : const_cast<float*>(v_.data()); }
  void* Row(void* base, int layer, int kv_head, int t) const {
    const size_t element =
        ((static_cast<size_t>(layer) * shape_.num_kv_heads + kv_head) * capacity_ + t) *
        shape_.head_dim;
    return static_cast<char*>(base) + element * DTypeBytes(dtype_);
  }
  KvShape shape_;
  Backend* backend_ = nullptr;
  DType dtype_ = DType::kF32;
  int length_ = 0;
  int capacity_ = 0;
  std::vector<float> k_, v_;               // host storage
  std::unique_ptr<Buffer> k_buf_, v_buf_;  // backend storage
};

// The immutable KV of a registered fixed context. Layout k[layer][kv_head][S][d], same for v,
// on the host in the KV dtype of the backend that computed it (FromSequence): bf16 for the CUDA
// backend, which keeps KV in bf16 on the device anyway (half the host memory of fp32, and the
// upload copies it as is), fp32 for the CPU reference. Readers that compute in fp32 (k-means,
// tools) read rows through KeysF32/ValuesF32, which widen bf16 exactly.
// Within each (layer, kv_head) the S rows are in *storage order*, which may be a permutation of
// token order (Squeezed Attention stores keys grouped by cluster); `token_of` maps storage rows
// back to token positions. Attention to the fixed context is not causal with respect to later
// tokens, so the order of rows does not change the result.
struct ContextKV {
  KvShape shape;
  int num_tokens = 0;             // S
  HostKvTensor k, v;              // [L][Hkv][S][d], both in dtype()
  std::vector<int32_t> token_of;  // [L][Hkv][S]: token position of each storage row
  // A backend's resident copy of k/v (Backend::ResidentContextKv), released with this object.
  // Whoever changes k or v must reset it.
  BackendCache resident;

  DType dtype() const { return k.dtype(); }
  size_t Offset(int layer, int kv_head, int row) const {
    return ((static_cast<size_t>(layer) * shape.num_kv_heads + kv_head) * num_tokens + row) *
           shape.head_dim;
  }
  // Row `row` of (layer, kv_head) in the storage dtype.
  const void* key_data(int layer, int kv_head, int row) const {
    return k.at(Offset(layer, kv_head, row));
  }
  const void* value_data(int layer, int kv_head, int row) const {
    return v.at(Offset(layer, kv_head, row));
  }
  // fp32 rows of fp32 storage (dtype() == kF32; nullptr otherwise).
  const float* key(int layer, int kv_head, int row) const {
    return k.f32() == nullptr ? nullptr : k.f32() + Offset(layer, kv_head, row);
  }
  const float* value(int layer, int kv_head, int row) const {
    return v.f32() == nullptr ? nullptr : v.f32() + Offset(layer, kv_head, row);
  }
  // Rows [row, row + n) of (layer, kv_head) as fp32 ([n][d]): the storage itself when it is
  // fp32, else widened into `*scratch`.
  const float* KeysF32(int layer, int kv_head, int row, int n, std::vector<float>* scratch) const {
    return k.Floats(Offset(layer, kv_head, row), static_cast<size_t>(n) * shape.head_dim, scratch);
  }
  const float* ValuesF32(int layer, int kv_head, int row, int n,
                         std::vector<float>* scratch) const {
    return v.Floats(Offset(layer, kv_head, row), static_cast<size_t>(n) * shape.head_dim, scratch);
  }
  // Layer `layer`'s rows of every KV head as a host-memory view (the CPU reference attention
  // and tools; its dtype is dtype()).
  KvSlice Layer(int layer) const {
    return {key_data(layer, 0, 0), value_data(layer, 0, 0),
            static_cast<size_t>(num_tokens) * shape.head_dim, num_tokens, dtype()};
  }
  // Host bytes: K and V in their dtype, plus token_of.
  size_t bytes() const { return k.bytes() + v.bytes() + token_of.size() * sizeof(int32_t); }
  // bytes() of a context of `num_tokens` tokens of `shape` held in `dtype`.
  static size_t BytesFor(const KvShape& shape, int64_t num_tokens, DType dtype) {
    const size_t rows = static_cast<size_t>(shape.num_layers) * shape.num_kv_heads * num_tokens;
    return rows * (2 * static_cast<size_t>(shape.head_dim) * DTypeBytes(dtype) + sizeof(int32_t));
  }
  // A copy with K and V in `dtype` (widening is exact; narrowing to bf16 rounds to nearest even,
  // as the GPU does); without the resident copy.
  ContextKV ConvertedTo(DType dtype) const;

  // Builds a ContextKV in token order from the first `n` tokens of a sequence's KV, in the
  // sequence's dtype (copied to the host when it lives in backend memory; callable from any
  // thread once no queued op writes that KV any more).
  static ContextKV FromSequence(const SequenceKV& seq, int n);
};

}  // namespace squeeze
