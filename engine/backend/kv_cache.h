// Key/value storage. Keys are post-RoPE. A SequenceKV lives in host fp32 memory (the CPU
// reference) or in a backend's memory in its kv_dtype() (bf16 on the GPU); a ContextKV is host
// fp32 (indexing and persistence read it) and a backend keeps its own resident copy with it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "engine/backend/backend.h"

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

// Host float storage whose resize leaves new elements uninitialised (default-init), for
// buffers that are filled right after (a 128K-token context on an 8B shape is 34 GB: zeroing it
// first would cost seconds).
template <typename T>
struct DefaultInitAllocator : std::allocator<T> {
  template <typename U>
  struct rebind {
    using other = DefaultInitAllocator<U>;
  };
  using std::allocator<T>::allocator;
  template <typename U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};
using HostFloats = std::vector<float, DefaultInitAllocator<float>>;

// The immutable KV of a registered fixed context. Layout k[layer][kv_head][S][d], same for v.
// Within each (layer, kv_head) the S rows are in *storage order*, which may be a permutation of
// token order (Squeezed Attention stores keys grouped by cluster); `token_of` maps storage rows
// back to token positions. Attention to the fixed context is not causal with respect to later
// tokens, so the order of rows does not change the result.
struct ContextKV {
  KvShape shape;
  int num_tokens = 0;             // S
  HostFloats k, v;                // [L][Hkv][S][d]
  std::vector<int32_t> token_of;  // [L][Hkv][S]: token position of each storage row
  // A backend's resident copy of k/v (Backend::ResidentContextKv), released with this object.
  // Whoever changes k or v must reset it.
  BackendCache resident;

  size_t Offset(int layer, int kv_head, int row) const {
    return ((static_cast<size_t>(layer) * shape.num_kv_heads + kv_head) * num_tokens + row) *
           shape.head_dim;
  }
  const float* key(int layer, int kv_head, int row) const {
    return &k[Offset(layer, kv_head, row)];
  }
  const float* value(int layer, int kv_head, int row) const {
    return &v[Offset(layer, kv_head, row)];
  }
  size_t bytes() const { return (k.size() + v.size()) * sizeof(float) + token_of.size() * 4; }

  // Builds a ContextKV in token order from the first `n` tokens of a sequence's KV (copied to
  // the host and widened to fp32 when it lives in backend memory; callable from any thread once
  // no queued op writes that KV any more).
  static ContextKV FromSequence(const SequenceKV& seq, int n);
};

}  // namespace squeeze
