// The persisted context (engine/store/context_file.h) with K/V in the host dtype: a bf16 context
// (the CUDA backend's host copy) round-trips bit for bit at half the bytes of fp32; a file of the
// other dtype is converted on load (bf16 -> fp32 exactly, fp32 -> bf16 to nearest even); a
// version-2 file (fp32 K/V, written by the code before version 3) and a version-3 one (no
// kmeans_min_changed) still load; corruption stays DATA_LOSS and an unknown dtype or version is
// refused with a message, never misread.
#include "engine/store/context_file.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "engine/backend/cpu/cpu_backend.h"
#include "engine/common/bfloat16.h"
#include "engine/common/sha256.h"
#include "engine/squeeze/index_io.h"
#include "engine/squeeze/squeeze_index.h"

namespace squeeze {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr char kFingerprint[] = "test-model";

// Host memory holding KV as bf16, as the CUDA backend's device memory does: registrations on it
// produce bf16 host copies without a GPU.
class Bf16HostBackend final : public CpuBackend {
 public:
  DType kv_dtype() const override { return DType::kBF16; }
};

// A registered context as the engine makes one: random non-zero K/V prefilled into `backend`'s
// KV storage (its dtype), moved to the host with FromSequence, indexed, summarised.
std::shared_ptr<RegisteredContext> MakeContext(Backend* backend, uint32_t seed) {
  const int L = 2, H = 2, Hq = 4, d = 16, S = 300, W = 20;
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  SequenceKV seq(KvShape{L, H, d}, backend);
  EXPECT_TRUE(seq.Reserve(S).ok());
  for (int l = 0; l < L; ++l) {
    for (int h = 0; h < H; ++h) {
      for (int t = 0; t < S; ++t) {
        for (void* row : {seq.key_data(l, h, t), seq.value_data(l, h, t)}) {
          for (int i = 0; i < d; ++i) {
            const float x = 1.5f * normal(gen) + 0.1f;
            if (seq.dtype() == DType::kF32) {
              static_cast<float*>(row)[i] = x;
            } else {
              static_cast<uint16_t*>(row)[i] = Float32ToBFloat16(x);
            }
          }
        }
      }
    }
  }
  seq.Commit(S);
  auto c = std::make_shared<RegisteredContext>();
  c->kv = ContextKV::FromSequence(seq, S);
  QueryCapture capture;
  for (int p = S - W; p < S; ++p) capture.positions.push_back(p);
  capture.q.resize(L);
  for (auto& q : capture.q) {
    q.resize(static_cast<size_t>(W) * Hq * d);
    for (float& x : q) x = normal(gen);
  }
  SqueezeOptions o;
  o.window = W;
  o.sinks = 2;
  o.centroid_fraction = 0.05;
  o.seed = seed;
  o.kmeans_min_changed = 0.01;
  auto index = BuildSqueezeIndex(&c->kv, capture, Hq, o);
  EXPECT_TRUE(index.ok()) << index.status();
  c->index = std::make_unique<SqueezeIndex>(*std::move(index));
  for (int t = 0; t < S; ++t) c->tokens.push_back(1 + (t * 37) % 500);
  ContextSummary& s = c->summary;
  s.tenant = "acme";
  s.name = "docs";
  s.num_tokens = S;
  s.content_hash = HashTokens(c->tokens);
  s.kv_bytes = static_cast<int64_t>(c->kv.bytes());
  s.has_index = true;
  s.index_options = o;
  s.num_centroids = c->index->num_centroids();
  s.created_unix = 1234567;
  return c;
}

class ContextFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) /
           ("context_file_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Path(const std::string& name) const { return (dir_ / name).string(); }

  fs::path dir_;
};

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

TEST_F(ContextFileTest, Bf16ContextRoundTripsAtHalfTheBytesOfFp32) {
  Bf16HostBackend bf16_backend;
  CpuBackend f32_backend;
  const auto bf16 = MakeContext(&bf16_backend, 7);
  const auto f32 = MakeContext(&f32_backend, 7);
  ASSERT_EQ(bf16->kv.dtype(), DType::kBF16);
  ASSERT_EQ(f32->kv.dtype(), DType::kF32);
  // Host bytes: K and V at 2 bytes an element instead of 4 (token_of stays 4 bytes a row).
  const size_t rows = 2 * 2 * 300, d = 16;
  EXPECT_EQ(f32->kv.bytes(), rows * (2 * d * 4 + 4));   // 156000
  EXPECT_EQ(bf16->kv.bytes(), rows * (2 * d * 2 + 4));  // 79200
  EXPECT_EQ(bf16->kv.bytes(), ContextKV::BytesFor(bf16->kv.shape, 300, DType::kBF16));

  ASSERT_TRUE(WriteContextFile(*bf16, kFingerprint, Path("bf16.sqzctx")).ok());
  ASSERT_TRUE(WriteContextFile(*f32, kFingerprint, Path("f32.sqzctx")).ok());
  // The file shrinks by the K/V bytes saved.
  EXPECT_EQ(fs::file_size(Path("f32.sqzctx")) - fs::file_size(Path("bf16.sqzctx")),
            f32->kv.bytes() - bf16->kv.bytes());

  ContextFileInfo info;
  auto loaded = ReadContextFile(Path("bf16.sqzctx"), kFingerprint, DType::kBF16, &info);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(info.version, kContextFileVersion);
  EXPECT_EQ(info.kv_dtype, DType::kBF16);
  const RegisteredContext& c = **loaded;
  EXPECT_EQ(c.kv.dtype(), DType::kBF16);
  EXPECT_EQ(c.kv.k, bf16->kv.k);  // the same bytes
  EXPECT_EQ(c.kv.v, bf16->kv.v);
  EXPECT_EQ(c.kv.token_of, bf16->kv.token_of);
  EXPECT_EQ(c.kv.shape.head_dim, 16);
  EXPECT_EQ(c.tokens, bf16->tokens);
  ASSERT_NE(c.index, nullptr);
  EXPECT_TRUE(*c.index == *bf16->index);
  EXPECT_EQ(c.summary.kv_bytes, static_cast<int64_t>(bf16->kv.bytes()));
  EXPECT_EQ(c.summary.name, "docs");
  EXPECT_EQ(c.summary.tenant, "acme");
  EXPECT_EQ(c.summary.index_options, bf16->summary.index_options);
  EXPECT_EQ(c.summary.index_options.kmeans_min_changed, 0.01);
}

TEST_F(ContextFileTest, FileOfTheOtherDtypeIsConvertedOnLoad) {
  Bf16HostBackend bf16_backend;
  CpuBackend f32_backend;
  const auto bf16 = MakeContext(&bf16_backend, 8);
  const auto f32 = MakeContext(&f32_backend, 9);
  ASSERT_TRUE(WriteContextFile(*bf16, kFingerprint, Path("bf16.sqzctx")).ok());
  ASSERT_TRUE(WriteContextFile(*f32, kFingerprint, Path("f32.sqzctx")).ok());

  // A bf16 file on an fp32 (CPU) server: widened exactly.
  ContextFileInfo info;
  auto widened = ReadContextFile(Path("bf16.sqzctx"), kFingerprint, DType::kF32, &info);
  ASSERT_TRUE(widened.ok()) << widened.status();
  EXPECT_EQ(info.kv_dtype, DType::kBF16);
  EXPECT_EQ((*widened)->kv.dtype(), DType::kF32);
  EXPECT_EQ((*widened)->kv.k.ToFloats(), bf16->kv.k.ToFloats());
  EXPECT_EQ((*widened)->kv.v.ToFloats(), bf16->kv.v.ToFloats());
  EXPECT_EQ((*widened)->summary.kv_bytes, static_cast<int64_t>((*widened)->kv.bytes()));
  EXPECT_TRUE(*(*widened)->index == *bf16->index);

  // An fp32 file on a bf16 (GPU) server: rounded to nearest even, element by element.
  auto narrowed = ReadContextFile(Path("f32.sqzctx"), kFingerprint, DType::kBF16, &info);
  ASSERT_TRUE(narrowed.ok()) << narrowed.status();
  EXPECT_EQ(info.kv_dtype, DType::kF32);
  const ContextKV& kv = (*narrowed)->kv;
  ASSERT_EQ(kv.dtype(), DType::kBF16);
  ASSERT_EQ(kv.k.size(), f32->kv.k.size());
  size_t wrong = 0;
  for (size_t i = 0; i < kv.k.size(); ++i) {
    wrong += kv.k.bf16()[i] != Float32ToBFloat16(f32->kv.k.f32()[i]);
    wrong += kv.v.bf16()[i] != Float32ToBFloat16(f32->kv.v.f32()[i]);
  }
  EXPECT_EQ(wrong, 0u);
  EXPECT_EQ(kv.token_of, f32->kv.token_of);
  EXPECT_EQ((*narrowed)->summary.kv_bytes, static_cast<int64_t>(kv.bytes()));
  EXPECT_LT(kv.bytes(), f32->kv.bytes());
}

// tests/data/context_file_v2.sqzctx was written by WriteContextFile at version 2 (the code before
// K/V were stored in the host dtype, commit f7f4b01): a context of L = 2, Hkv = 2, d = 8, S = 48
// tokens (token t = 3 + (7 * t) % 50), K = FixtureValue(0, l, h, t, i), V = FixtureValue(1, ...),
// indexed (sinks 2, window 8, 10% centroids, seed 5, Hq = 4, window queries FixtureValue(2, l,
// qh, p, i)), tenant "acme", name "old", created 1700000000, model fingerprint "fixture-model".
uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}
float FixtureValue(int tag, int l, int h, int t, int i) {
  uint64_t x = Mix(static_cast<uint64_t>(tag));
  for (int v : {l, h, t, i}) x = Mix(x ^ static_cast<uint64_t>(v));
  const float u = static_cast<float>(x >> 40) / static_cast<float>(1u << 24);  // [0, 1)
  return 4.0f * u - 2.0f;
}
const std::string kVersion2File =
    (fs::path(SQUEEZE_SOURCE_DIR) / "tests" / "data" / "context_file_v2.sqzctx").string();

TEST_F(ContextFileTest, Version2FileOfTheOldCodeLoadsIntoEitherDtype) {
  for (DType want : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(want));
    ContextFileInfo info;
    auto loaded = ReadContextFile(kVersion2File, "fixture-model", want, &info);
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(info.version, 2u);
    EXPECT_EQ(info.kv_dtype, DType::kF32);
    const RegisteredContext& c = **loaded;
    EXPECT_EQ(c.summary.tenant, "acme");
    EXPECT_EQ(c.summary.name, "old");
    EXPECT_EQ(c.summary.created_unix, 1700000000);
    ASSERT_EQ(c.tokens.size(), 48u);
    for (int t = 0; t < 48; ++t) EXPECT_EQ(c.tokens[t], 3 + (7 * t) % 50);
    ASSERT_NE(c.index, nullptr);
    EXPECT_EQ(c.index->num_centroids(), 16);
    EXPECT_EQ(c.index->sinks, 2);
    EXPECT_EQ(c.index->window, 8);
    const ContextKV& kv = c.kv;
    ASSERT_EQ(kv.dtype(), want);
    ASSERT_EQ(kv.num_tokens, 48);
    EXPECT_EQ(kv.bytes(), ContextKV::BytesFor(kv.shape, 48, want));
    EXPECT_EQ(c.summary.kv_bytes, static_cast<int64_t>(kv.bytes()));
    // Storage row r of (l, h) holds token token_of[r]'s key and value (cluster order).
    size_t wrong = 0;
    std::vector<float> keys, values;
    for (int l = 0; l < 2; ++l) {
      for (int h = 0; h < 2; ++h) {
        const float* k = kv.KeysF32(l, h, 0, 48, &keys);
        const float* v = kv.ValuesF32(l, h, 0, 48, &values);
        for (int r = 0; r < 48; ++r) {
          const int t = kv.token_of[(l * 2 + h) * 48 + r];
          for (int i = 0; i < 8; ++i) {
            float want_k = FixtureValue(0, l, h, t, i), want_v = FixtureValue(1, l, h, t, i);
            if (want == DType::kBF16) {
              want_k = BFloat16ToFloat32(Float32ToBFloat16(want_k));
              want_v = BFloat16ToFloat32(Float32ToBFloat16(want_v));
            }
            wrong += k[r * 8 + i] != want_k;
            wrong += v[r * 8 + i] != want_v;
          }
        }
      }
    }
    EXPECT_EQ(wrong, 0u);
  }
  // Another model's fingerprint is still refused, as before.
  auto other = ReadContextFile(kVersion2File, "another-model", DType::kF32);
  EXPECT_TRUE(absl::IsFailedPrecondition(other.status())) << other.status();
}

TEST_F(ContextFileTest, CorruptionIsDataLossInBothVersions) {
  Bf16HostBackend backend;
  ASSERT_TRUE(WriteContextFile(*MakeContext(&backend, 10), kFingerprint, Path("v3.sqzctx")).ok());
  fs::copy_file(kVersion2File, Path("v2.sqzctx"));
  for (const char* name : {"v3.sqzctx", "v2.sqzctx"}) {
    SCOPED_TRACE(name);
    const std::string path = Path(name);
    const std::string good = ReadBytes(path);
    std::string bad = good;
    bad[bad.size() / 2] ^= 0x40;  // inside the K/V
    WriteBytes(path, bad);
    auto flipped = ReadContextFile(path, kFingerprint, DType::kBF16);
    EXPECT_TRUE(absl::IsDataLoss(flipped.status())) << flipped.status();
    EXPECT_THAT(std::string(flipped.status().message()), HasSubstr("checksum mismatch"));
    WriteBytes(path, good.substr(0, good.size() - 100));
    auto truncated = ReadContextFile(path, kFingerprint, DType::kBF16);
    EXPECT_TRUE(absl::IsDataLoss(truncated.status())) << truncated.status();
  }
}

// A version-3 file (the code before kmeans_min_changed) is a version-4 one without the option's
// 8 bytes, which sit right before the embedded index: made so here, it loads with the option 0
// (the rule its index was built with) and everything else as written.
TEST_F(ContextFileTest, Version3FileLoadsWithTheExactKMeansRule) {
  Bf16HostBackend backend;
  const auto c = MakeContext(&backend, 12);
  ASSERT_TRUE(WriteContextFile(*c, kFingerprint, Path("v4.sqzctx")).ok());
  const std::string v4 = ReadBytes(Path("v4.sqzctx"));
  std::ostringstream index_bytes;
  ASSERT_TRUE(WriteSqueezeIndex(*c->index, index_bytes).ok());
  const size_t option_at = v4.size() - 32 - index_bytes.str().size() - 8;
  double stored = 0;
  std::memcpy(&stored, v4.data() + option_at, 8);
  ASSERT_EQ(stored, 0.01);  // the offset above is the real layout
  std::string v3 =
      v4.substr(0, option_at) + v4.substr(option_at + 8, v4.size() - 32 - option_at - 8);
  const uint32_t version = 3;
  std::memcpy(v3.data() + 8, &version, 4);
  Sha256 sha;
  sha.Update(v3.data(), v3.size());
  const Sha256::Digest digest = sha.Final();
  v3.append(reinterpret_cast<const char*>(digest.data()), digest.size());
  WriteBytes(Path("v3.sqzctx"), v3);

  ContextFileInfo info;
  auto loaded = ReadContextFile(Path("v3.sqzctx"), kFingerprint, DType::kBF16, &info);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(info.version, 3u);
  SqueezeOptions want = c->summary.index_options;
  want.kmeans_min_changed = 0.0;
  EXPECT_EQ((*loaded)->summary.index_options, want);
  EXPECT_EQ((*loaded)->kv.k, c->kv.k);
  ASSERT_NE((*loaded)->index, nullptr);
  EXPECT_TRUE(*(*loaded)->index == *c->index);
}

// Byte offset of the KV dtype byte in a version-3 or 4 file of `c` (context_file.h's layout).
size_t DtypeByteOffset(const RegisteredContext& c) {
  const auto str = [](const std::string& s) { return 8 + s.size(); };
  return 8 + 4 + str(kFingerprint) + str(c.summary.tenant) + str(c.summary.name) +
         str(c.summary.content_hash) + 8 + sizeof(RegistrationTimings) + 8 + 4 * c.tokens.size() +
         4 * 4;
}

TEST_F(ContextFileTest, UnknownDtypeOrVersionIsRefusedNeverMisread) {
  Bf16HostBackend backend;
  const auto c = MakeContext(&backend, 11);
  ASSERT_TRUE(WriteContextFile(*c, kFingerprint, Path("c.sqzctx")).ok());
  const std::string good = ReadBytes(Path("c.sqzctx"));
  const size_t body = good.size() - 32;  // the SHA-256 trailer excluded
  const size_t at = DtypeByteOffset(*c);
  ASSERT_EQ(good[at], static_cast<char>(DType::kBF16));
  {  // A dtype this server does not know, in a file whose checksum would match.
    std::string bytes = good;
    bytes[at] = 7;
    std::istringstream in(bytes);
    auto parsed = ParseContextFile(in, body, kFingerprint, DType::kBF16);
    EXPECT_TRUE(absl::IsDataLoss(parsed.status())) << parsed.status();
    EXPECT_THAT(std::string(parsed.status().message()), HasSubstr("unknown KV dtype 7"));
  }
  for (uint32_t version : {1u, kContextFileVersion + 1}) {
    std::string bytes = good;
    std::memcpy(bytes.data() + 8, &version, 4);
    std::istringstream in(bytes);
    auto parsed = ParseContextFile(in, body, kFingerprint, DType::kBF16);
    EXPECT_TRUE(absl::IsFailedPrecondition(parsed.status())) << parsed.status();
    EXPECT_THAT(std::string(parsed.status().message()),
                HasSubstr("context file version " + std::to_string(version) +
                          " (this server reads versions 2 to " +
                          std::to_string(kContextFileVersion) + "); register the context again"));
  }
  {  // The unmodified bytes parse: the offsets above are the real layout.
    std::istringstream in(good);
    EXPECT_TRUE(ParseContextFile(in, body, kFingerprint, DType::kBF16).ok());
  }
}

// What the host keeps of a context on the 8B shape (32 layers, 8 KV heads, d = 128) at 128K
// tokens: K/V in bf16 are half the fp32 bytes; token_of (4 bytes a row) is the same in both.
TEST(ContextKvBytesTest, Bf16HalvesTheHostCopyOfALongContext) {
  const KvShape shape{32, 8, 128};
  const int64_t S = 131072;
  EXPECT_EQ(ContextKV::BytesFor(shape, S, DType::kF32), 34493956096u);   // 34.5 GB
  EXPECT_EQ(ContextKV::BytesFor(shape, S, DType::kBF16), 17314086912u);  // 17.3 GB
}

}  // namespace
}  // namespace squeeze
