#include "engine/backend/kv_cache.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/common/parallel_for.h"

namespace squeeze {

absl::Status SequenceKV::Reserve(int extra) {
  const int needed = length_ + extra;
  if (needed <= capacity_) return absl::OkStatus();
  const int new_capacity = std::max({needed, 2 * capacity_, 64});
  const size_t elem = DTypeBytes(dtype_);
  const size_t blocks = static_cast<size_t>(shape_.num_layers) * shape_.num_kv_heads;
  const size_t row_bytes = static_cast<size_t>(shape_.head_dim) * elem;
  if (backend_ == nullptr) {
    std::vector<float> nk(Elements(new_capacity)), nv(Elements(new_capacity));
    for (size_t b = 0; b < blocks && length_ > 0; ++b) {
      std::memcpy(nk.data() + b * new_capacity * shape_.head_dim,
                  k_.data() + b * capacity_ * shape_.head_dim, length_ * row_bytes);
      std::memcpy(nv.data() + b * new_capacity * shape_.head_dim,
                  v_.data() + b * capacity_ * shape_.head_dim, length_ * row_bytes);
    }
    k_.swap(nk);
    v_.swap(nv);
  } else {
    const size_t bytes = Elements(new_capacity) * elem;
    auto nk = backend_->Allocate(bytes);
    if (!nk.ok()) return nk.status();
    auto nv = backend_->Allocate(bytes);
    if (!nv.ok()) return nv.status();
    if (length_ > 0) {
      // Each (layer, head) block keeps its first `length_` rows at the new pitch.
      backend_->Copy2D((*nk)->data(), new_capacity * row_bytes, k_buf_->data(),
                       capacity_ * row_bytes, length_ * row_bytes, blocks);
      backend_->Copy2D((*nv)->data(), new_capacity * row_bytes, v_buf_->data(),
                       capacity_ * row_bytes, length_ * row_bytes, blocks);
    }
    k_buf_ = *std::move(nk);
    v_buf_ = *std::move(nv);
  }
  capacity_ = new_capacity;
  return absl::OkStatus();
}

ContextKV ContextKV::FromSequence(const SequenceKV& seq, int n) {
  ContextKV ctx;
  ctx.shape = seq.shape();
  ctx.num_tokens = n;
  const int L = ctx.shape.num_layers, H = ctx.shape.num_kv_heads, d = ctx.shape.head_dim;
  const size_t elements = static_cast<size_t>(L) * H * n * d;
  ctx.k = HostKvTensor(seq.dtype(), elements);
  ctx.v = HostKvTensor(seq.dtype(), elements);
  ctx.token_of.resize(static_cast<size_t>(L) * H * n);
  Backend* be = seq.backend();
  const bool host = be == nullptr || be->host_memory();
  // Every (layer, head) block on its own: the copies spread over the cores (a device's over at
  // most 8 threads, each staging through pinned memory: enough for the link, and cores are left
  // to the clustering that runs beside a registration's copy). Rows keep the storage's dtype (a
  // device's bf16 comes back as bf16: half the bytes of fp32).
  constexpr unsigned kDeviceCopyThreads = 8;
  ParallelFor(
      static_cast<size_t>(L) * H,
      [&](size_t block) {
        const int l = static_cast<int>(block / H), h = static_cast<int>(block % H);
        if (n > 0) {
          const size_t bytes = static_cast<size_t>(n) * d * DTypeBytes(seq.dtype());
          const size_t at = ctx.Offset(l, h, 0);
          for (const auto& [dst, src] : {std::pair(ctx.k.at(at), seq.key_data(l, h, 0)),
                                         std::pair(ctx.v.at(at), seq.value_data(l, h, 0))}) {
            if (host) {
              std::memcpy(dst, src, bytes);
            } else {
              be->CopyToHostUnordered(dst, src, bytes);
            }
          }
        }
        for (int t = 0; t < n; ++t) ctx.token_of[block * n + t] = t;
      },
      host ? 0u : kDeviceCopyThreads);
  return ctx;
}

ContextKV ContextKV::ConvertedTo(DType dtype) const {
  ContextKV out;
  out.shape = shape;
  out.num_tokens = num_tokens;
  out.k = k.ConvertedTo(dtype);
  out.v = v.ConvertedTo(dtype);
  out.token_of = token_of;
  return out;
}

}  // namespace squeeze
