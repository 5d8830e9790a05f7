// KV storage (engine/backend/kv_cache.h) in a backend's memory, on the CPU: growth keeps every row
// of every (layer, head) block (Reserve through Backend::Copy2D), and ContextKV::FromSequence reads
// fp32 and bf16 storage back exactly, keeping its dtype (bf16 widened bit for bit by the fp32
// readers). The CUDA backend uses the same code with device memory. Also HostKvTensor
// (engine/backend/host_kv_tensor.h) and ParallelFor (engine/common/parallel_for.h).
#include "engine/backend/kv_cache.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
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
  ASSERT_EQ(ctx.dtype(), dtype);  // the host copy keeps the storage's dtype
  EXPECT_EQ(ctx.k.bytes(), static_cast<size_t>(ctx.shape.num_layers) * ctx.shape.num_kv_heads * n *
                               ctx.shape.head_dim * DTypeBytes(dtype));
  size_t wrong = 0;
  std::vector<float> keys, values;
  for (int l = 0; l < ctx.shape.num_layers; ++l) {
    for (int h = 0; h < ctx.shape.num_kv_heads; ++h) {
      const float* k = ctx.KeysF32(l, h, 0, n, &keys);
      const float* v = ctx.ValuesF32(l, h, 0, n, &values);
      for (int t = 0; t < n; ++t) {
        for (int i = 0; i < ctx.shape.head_dim; ++i) {
          for (int kv = 0; kv < 2; ++kv) {
            float want = Value(l, h, t, i, kv);
            if (dtype == DType::kBF16) want = Bf16Value(Bf16Bits(want));
            const float got = (kv == 0 ? k : v)[static_cast<size_t>(t) * ctx.shape.head_dim + i];
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

TEST(HostKvTensorTest, Bf16StoresRoundedToNearestEvenAndReadsBackExactly) {
  // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0); just above the
  // tie rounds up; negative values and large magnitudes round the same way.
  const std::vector<float> x = {
      1.0f + 0x1p-8f, 1.0f + 0x1p-8f + 0x1p-20f, -3.14159f, 65504.5f, 1e-3f, 0.0f};
  const HostKvTensor t = HostKvTensor::FromFloats(DType::kBF16, x);
  EXPECT_EQ(t.dtype(), DType::kBF16);
  EXPECT_EQ(t.size(), x.size());
  EXPECT_EQ(t.bytes(), x.size() * 2);
  EXPECT_EQ(t.f32(), nullptr);  // no fp32 view of bf16 storage
  const std::vector<float> back = t.ToFloats();
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_EQ(t.bf16()[i], Bf16Bits(x[i])) << i;
    EXPECT_EQ(back[i], Bf16Value(Bf16Bits(x[i]))) << i;
  }
  EXPECT_EQ(back[0], 1.0f);
  EXPECT_EQ(back[1], 1.0f + 0x1p-7f);
  // Widening is exact, and narrowing the widened values gives the same bits back.
  const HostKvTensor wide = t.ConvertedTo(DType::kF32);
  EXPECT_EQ(wide.dtype(), DType::kF32);
  EXPECT_EQ(wide.bytes(), x.size() * 4);
  EXPECT_EQ(wide.ToFloats(), back);
  EXPECT_EQ(wide.ConvertedTo(DType::kBF16), t);
  EXPECT_EQ(t.ConvertedTo(DType::kBF16), t);
}

TEST(HostKvTensorTest, FloatReadersServeBothDtypes) {
  std::vector<float> x(1000);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.37f * i) * (1.0f + i);
  const HostKvTensor f32 = HostKvTensor::FromFloats(DType::kF32, x);
  const HostKvTensor bf16 = f32.ConvertedTo(DType::kBF16);
  std::vector<float> scratch;
  // fp32: the storage itself, no copy.
  EXPECT_EQ(f32.Floats(100, 50, &scratch), f32.f32() + 100);
  EXPECT_TRUE(scratch.empty());
  // bf16: widened into the scratch.
  const float* rows = bf16.Floats(100, 50, &scratch);
  EXPECT_EQ(rows, scratch.data());
  for (int i = 0; i < 50; ++i) EXPECT_EQ(rows[i], Bf16Value(Bf16Bits(x[100 + i]))) << i;
  // Writing fp32 rows into bf16 storage rounds them.
  HostKvTensor t(DType::kBF16, 4);
  const float w[4] = {0.1f, 0.2f, 0.3f, 0.4f};
  t.WriteFloats(0, 4, w);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(t.bf16()[i], Bf16Bits(w[i]));
  // Non-finite elements are found in either storage.
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    std::vector<float> y = x;
    y[700] = std::numeric_limits<float>::infinity();
    y[900] = std::numeric_limits<float>::quiet_NaN();
    const HostKvTensor u = HostKvTensor::FromFloats(dtype, y);
    EXPECT_EQ(u.FindNonFinite(0, 1000), 700u);
    EXPECT_EQ(u.FindNonFinite(701, 299), 199u);
    EXPECT_EQ(u.FindNonFinite(0, 700), 700u);  // none: n
  }
}

TEST(KvCacheTest, CpuBackendRefusesABf16Context) {
  Bf16HostBackend bf16;
  SequenceKV seq(KvShape{1, 1, 4}, &bf16);
  Append(&seq, 3);
  const ContextKV ctx = ContextKV::FromSequence(seq, 3);
  CpuBackend cpu;
  auto view = cpu.ResidentContextKv(ctx);
  EXPECT_TRUE(absl::IsFailedPrecondition(view.status())) << view.status();
  // Converted to fp32 it is served (the CPU reference computes from fp32).
  const ContextKV wide = ctx.ConvertedTo(DType::kF32);
  auto ok = cpu.ResidentContextKv(wide);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->k, wide.k.data());
  EXPECT_EQ(wide.bytes(), 2 * 3 * 4 * 4 + 3 * 4u);
  EXPECT_EQ(ctx.bytes(), 2 * 3 * 4 * 2 + 3 * 4u);
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
