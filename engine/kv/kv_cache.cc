#include "engine/kv/kv_cache.h"

#include <algorithm>
#include <cstring>

namespace squeeze {

void SequenceKV::Reserve(int extra) {
  const int needed = length_ + extra;
  if (needed <= capacity_) return;
  int new_capacity = std::max({needed, 2 * capacity_, 64});
  const size_t d = shape_.head_dim;
  const size_t rows = static_cast<size_t>(shape_.num_layers) * shape_.num_kv_heads;
  std::vector<float> nk(rows * new_capacity * d), nv(rows * new_capacity * d);
  if (length_ > 0) {
    for (size_t r = 0; r < rows; ++r) {
      std::memcpy(nk.data() + r * new_capacity * d, k_.data() + r * capacity_ * d,
                  length_ * d * sizeof(float));
      std::memcpy(nv.data() + r * new_capacity * d, v_.data() + r * capacity_ * d,
                  length_ * d * sizeof(float));
    }
  }
  k_.swap(nk);
  v_.swap(nv);
  capacity_ = new_capacity;
}

ContextKV ContextKV::FromSequence(const SequenceKV& seq, int n) {
  ContextKV ctx;
  ctx.shape = seq.shape();
  ctx.num_tokens = n;
  const int L = ctx.shape.num_layers, H = ctx.shape.num_kv_heads, d = ctx.shape.head_dim;
  ctx.k.resize(static_cast<size_t>(L) * H * n * d);
  ctx.v.resize(ctx.k.size());
  ctx.token_of.resize(static_cast<size_t>(L) * H * n);
  for (int l = 0; l < L; ++l) {
    for (int h = 0; h < H; ++h) {
      if (n > 0) {
        std::memcpy(&ctx.k[ctx.Offset(l, h, 0)], seq.key(l, h, 0), sizeof(float) * n * d);
        std::memcpy(&ctx.v[ctx.Offset(l, h, 0)], seq.value(l, h, 0), sizeof(float) * n * d);
      }
      for (int t = 0; t < n; ++t) ctx.token_of[(static_cast<size_t>(l) * H + h) * n + t] = t;
    }
  }
  return ctx;
}

}  // namespace squeeze
