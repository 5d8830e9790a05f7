// Key/value storage. All tensors are fp32 on the host (CPU reference). Keys are post-RoPE.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

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
  explicit SequenceKV(KvShape shape) : shape_(shape) {}

  const KvShape& shape() const { return shape_; }
  int length() const { return length_; }
  int capacity() const { return capacity_; }

  // Makes room for `extra` more tokens (keeps contents).
  void Reserve(int extra);
  // Row pointer for token `t` of (layer, kv_head).
  float* key(int layer, int kv_head, int t) { return &k_[Offset(layer, kv_head, t)]; }
  float* value(int layer, int kv_head, int t) { return &v_[Offset(layer, kv_head, t)]; }
  const float* key(int layer, int kv_head, int t) const { return &k_[Offset(layer, kv_head, t)]; }
  const float* value(int layer, int kv_head, int t) const { return &v_[Offset(layer, kv_head, t)]; }
  // Marks `n` more tokens as valid (after the forward wrote them for every layer).
  void Commit(int n) { length_ += n; }
  // Drops everything after the first `n` tokens.
  void Truncate(int n) { if (n < length_) length_ = n; }
  size_t bytes() const { return (k_.size() + v_.size()) * sizeof(float); }

 private:
  size_t Offset(int layer, int kv_head, int t) const {
    return ((static_cast<size_t>(layer) * shape_.num_kv_heads + kv_head) * capacity_ + t) *
           shape_.head_dim;
  }
  KvShape shape_;
  int length_ = 0;
  int capacity_ = 0;
  std::vector<float> k_, v_;
};

// The immutable KV of a registered fixed context. Layout k[layer][kv_head][S][d], same for v.
// Within each (layer, kv_head) the S rows are in *storage order*, which may be a permutation of
// token order (Squeezed Attention stores keys grouped by cluster); `token_of` maps storage rows
// back to token positions. Attention to the fixed context is not causal with respect to later
// tokens, so the order of rows does not change the result.
struct ContextKV {
  KvShape shape;
  int num_tokens = 0;                 // S
  std::vector<float> k, v;            // [L][Hkv][S][d]
  std::vector<int32_t> token_of;      // [L][Hkv][S]: token position of each storage row

  size_t Offset(int layer, int kv_head, int row) const {
    return ((static_cast<size_t>(layer) * shape.num_kv_heads + kv_head) * num_tokens + row) *
           shape.head_dim;
  }
  const float* key(int layer, int kv_head, int row) const { return &k[Offset(layer, kv_head, row)]; }
  const float* value(int layer, int kv_head, int row) const { return &v[Offset(layer, kv_head, row)]; }
  size_t bytes() const { return (k.size() + v.size()) * sizeof(float) + token_of.size() * 4; }

  // Builds a ContextKV in token order from the first `n` tokens of a sequence's KV.
  static ContextKV FromSequence(const SequenceKV& seq, int n);
};

}  // namespace squeeze
