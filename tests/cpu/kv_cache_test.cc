// KV storage (engine/backend/kv_cache.h) in a backend's memory, on the CPU: growth keeps every row
// of every (layer, head) block (Reserve through Backend::Copy2D), and ContextKV::FromSequence reads
// fp32 and bf16 storage back exactly (bf16 widened bit for bit). The CUDA backend uses the same
// code with device memory. Also ParallelFor (engine/common/parallel_for.h).
#include "engine/backend/kv_cache.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/common/parallel_for.h"

namespace squeeze {
namespace {

// Host memory holding KV as bf16, as a device backend's does: exercises FromSequence's bf16
// path and the 2-byte element layout without a GPU.
class Bf16HostBackend final : public CpuBackend {
 public:
  DType kv_dtype() const override { return DType::kBF16; }
};

uint16_t Bf16Bits(float x) {  // round to nearest even (finite inputs)
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

float Bf16Value(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float x;
  std::memcpy(&x, &bits, 4);
  return x;
}

// A distinct value for every (layer, head, token, dim, k-or-v).
float Value(int l, int h, int t, int i, int kv) {
  return static_cast<float>(((l * 7 + h) * 1000 + t) * 0.001 + i * 1e-5 + kv * 0.5);
}

// Appends `n` tokens with Value(...) rows to `seq` the way the forward does (Reserve, write,
// Commit), writing the storage's element type.
void Append(SequenceKV* seq, int n) {
  ASSERT_TRUE(seq->Reserve(n).ok());
  const KvShape& s = seq->shape();
  const int t0 = seq->length();
  for (int l = 0; l < s.num_layers; ++l) {
    for (int h = 0; h < s.num_kv_heads; ++h) {
      for (int t = t0; t < t0 + n; ++t) {
        for (int kv = 0; kv < 2; ++kv) {
          void* row = kv == 0 ? seq->key_data(l, h, t) : seq->value_data(l, h, t);
          for (int i = 0; i < s.head_dim; ++i) {
            const float x = Value(l, h, t, i, kv);
            if (seq->dtype() == DType::kF32) {
              static_cast<float*>(row)[i] = x;
            } else {
              static_cast<uint16_t*>(row)[i] = Bf16Bits(x);
            }
          }
        }
      }
    }
  }
  seq->Commit(n);
}

void ExpectContext(const ContextKV& ctx, int n, DType dtype) {
  ASSERT_EQ(ctx.num_tokens, n);
  size_t wrong = 0;
  for (int l = 0; l < ctx.shape.num_layers; ++l) {
    for (int h = 0; h < ctx.shape.num_kv_heads; ++h) {
      for (int t = 0; t < n; ++t) {
        for (int i = 0; i < ctx.shape.head_dim; ++i) {
          for (int kv = 0; kv < 2; ++kv) {
            float want = Value(l, h, t, i, kv);
            if (dtype == DType::kBF16) want = Bf16Value(Bf16Bits(want));
            const float got = (kv == 0 ? ctx.key(l, h, t) : ctx.value(l, h, t))[i];
            wrong += got != want;
          }
        }
        EXPECT_EQ(ctx.token_of[(static_cast<size_t>(l) * ctx.shape.num_kv_heads + h) * n + t], t);
      }
    }
  }
  EXPECT_EQ(wrong, 0u);
}

TEST(KvCacheTest, BackendStorageGrowsAndReadsBackExactly) {
  const KvShape shape{3, 2, 16};
  CpuBackend f32;
  Bf16HostBackend bf16;
  for (Backend* be : {static_cast<Backend*>(&f32), static_cast<Backend*>(&bf16)}) {
    SCOPED_TRACE(DTypeName(be->kv_dtype()));
    SequenceKV seq(shape, be);
    EXPECT_EQ(seq.dtype(), be->kv_dtype());
    // Several growths (64 -> 128 -> 256 ...), each keeping the rows written before.
    for (int n : {5, 60, 1, 100, 90}) Append(&seq, n);
    EXPECT_EQ(seq.length(), 256);
    EXPECT_GE(seq.capacity(), 256);
    EXPECT_EQ(seq.bytes(),
              2 * static_cast<size_t>(3) * 2 * seq.capacity() * 16 * DTypeBytes(be->kv_dtype()));
    ExpectContext(ContextKV::FromSequence(seq, 256), 256, be->kv_dtype());
    ExpectContext(ContextKV::FromSequence(seq, 77), 77, be->kv_dtype());  // a prefix
  }
}

TEST(KvCacheTest, HostStorageMatchesBackendStorage) {
  const KvShape shape{2, 3, 8};
  SequenceKV host(shape);
  EXPECT_EQ(host.backend(), nullptr);
  for (int n : {3, 70, 2}) Append(&host, n);
  ExpectContext(ContextKV::FromSequence(host, 75), 75, DType::kF32);
}

TEST(ParallelForTest, VisitsEveryIndexOnce) {
  for (unsigned threads : {0u, 1u, 3u, 64u}) {
    for (size_t n : {size_t{0}, size_t{1}, size_t{7}, size_t{1000}}) {
      std::vector<std::atomic<int>> seen(n);
      ParallelFor(
          n, [&](size_t i) { seen[i].fetch_add(1); }, threads);
      for (size_t i = 0; i < n; ++i) EXPECT_EQ(seen[i].load(), 1) << i;
    }
  }
}

}  // namespace
}  // namespace squeeze
