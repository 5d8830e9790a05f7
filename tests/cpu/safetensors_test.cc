#include "engine/model/safetensors.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace squeeze {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
namespace fs = std::filesystem;

std::vector<float> RandomValues(size_t n, uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-3.0f, 3.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

std::vector<uint8_t> Bytes(const std::string& s) { return {s.begin(), s.end()}; }

// A file image: 8-byte length, the header text verbatim, then `data_len` bytes of 0xAB.
std::vector<uint8_t> MakeFile(const std::string& header, size_t data_len) {
  std::vector<uint8_t> out(8 + header.size() + data_len, 0xAB);
  const uint64_t n = header.size();
  std::memcpy(out.data(), &n, 8);
  std::copy(header.begin(), header.end(), out.begin() + 8);
  return out;
}

fs::path TempDir(const std::string& name) {
  fs::path dir = fs::path(testing::TempDir()) / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void ExpectParseError(const std::vector<uint8_t>& file, const std::string& needle) {
  absl::StatusOr<std::vector<SafetensorsTensor>> r = ParseSafetensorsHeader(file);
  ASSERT_FALSE(r.ok()) << "accepted; wanted error containing: " << needle;
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr(needle));
}

TEST(SafetensorsTest, F32RoundTripThroughFile) {
  const fs::path dir = TempDir("st_f32");
  const std::vector<TensorToWrite> tensors = {
      {"w", DType::kF32, {3, 5}, RandomValues(15, 1)},
      {"b", DType::kF32, {5}, RandomValues(5, 2)},
      {"scalar", DType::kF32, {}, {42.5f}},
      {"empty", DType::kF32, {0, 4}, {}},
  };
  const std::string path = (dir / "m.safetensors").string();
  ASSERT_TRUE(WriteSafetensors(path, tensors).ok());
  // Atomic write leaves no temporary file behind.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);

  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->tensors().size(), 4u);
  EXPECT_EQ((*file)->Find("missing"), nullptr);
  for (const TensorToWrite& want : tensors) {
    SCOPED_TRACE(want.name);
    const SafetensorsTensor* t = (*file)->Find(want.name);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->dtype, DType::kF32);
    EXPECT_EQ(t->shape, want.shape);
    EXPECT_EQ(t->nbytes, want.values.size() * 4);
    std::vector<float> got(t->num_elements(), -1.0f);
    ASSERT_TRUE(ToFloat32(*t, got).ok());
    EXPECT_EQ(got, want.values);
  }
}

TEST(SafetensorsTest, Bf16AndF16RoundTripRoundToNearestEven) {
  // Ties between representable neighbours go to the even mantissa.
  const float one = 1.0f;
  const std::vector<float> values = {
      one + 0x1p-8f,             // bf16 tie: 1 vs 1+2^-7 -> 1 (even)
      one + 3 * 0x1p-8f,         // bf16 tie: 1+2^-7 vs 1+2^-6 -> 1+2^-6 (even)
      one + 0x1p-8f + 0x1p-20f,  // just above the tie -> 1+2^-7
      -2.5f,
      0.0f,
      1e30f,
      3.14159265f};
  const std::vector<float> bf16_expected = {
      1.0f,     one + 0x1p-6f, one + 0x1p-7f,
      -2.5f,    0.0f,          BFloat16ToFloat32(Float32ToBFloat16(1e30f)),
      3.140625f};
  std::vector<float> random = RandomValues(64, 3);

  const fs::path dir = TempDir("st_half");
  const std::string path = (dir / "h.safetensors").string();
  ASSERT_TRUE(WriteSafetensors(path, {{"bf", DType::kBF16, {7}, values},
                                      {"rand_bf", DType::kBF16, {8, 8}, random},
                                      {"rand_f16", DType::kF16, {2, 32}, random}})
                  .ok());
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();

  const SafetensorsTensor* bf = (*file)->Find("bf");
  ASSERT_NE(bf, nullptr);
  EXPECT_EQ(bf->dtype, DType::kBF16);
  EXPECT_EQ(bf->nbytes, 14u);
  std::vector<float> got(7);
  ASSERT_TRUE(ToFloat32(*bf, got).ok());
  EXPECT_EQ(got, bf16_expected);

  for (const char* name : {"rand_bf", "rand_f16"}) {
    SCOPED_TRACE(name);
    const SafetensorsTensor* t = (*file)->Find(name);
    ASSERT_NE(t, nullptr);
    std::vector<float> r(64);
    ASSERT_TRUE(ToFloat32(*t, r).ok());
    // bf16 stores 7 mantissa bits, f16 10: relative error at most half an ulp.
    const float tol = std::string(name) == "rand_bf" ? 0x1p-8f : 0x1p-11f;
    for (size_t i = 0; i < r.size(); ++i) {
      EXPECT_LE(std::fabs(r[i] - random[i]), tol * std::fabs(random[i])) << i;
    }
  }
}

TEST(SafetensorsTest, HalfConversionsAreExactInverses) {
  // Every non-NaN 16-bit pattern survives a trip through fp32.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const auto bits = static_cast<uint16_t>(h);
    const float bf = BFloat16ToFloat32(bits);
    if (!std::isnan(bf)) {
      EXPECT_EQ(Float32ToBFloat16(bf), bits) << std::hex << h;
    }
    const float f16 = Float16ToFloat32(bits);
    if (!std::isnan(f16)) {
      EXPECT_EQ(Float32ToFloat16(f16), bits) << std::hex << h;
    }
  }
  EXPECT_TRUE(std::isnan(BFloat16ToFloat32(Float32ToBFloat16(std::nanf("")))));
  EXPECT_TRUE(std::isnan(Float16ToFloat32(Float32ToFloat16(std::nanf("")))));
  EXPECT_EQ(Float16ToFloat32(Float32ToFloat16(65504.0f)), 65504.0f);
  EXPECT_EQ(Float16ToFloat32(Float32ToFloat16(65519.0f)), 65504.0f);
  EXPECT_TRUE(std::isinf(Float16ToFloat32(Float32ToFloat16(65520.0f))));  // tie -> even = inf
  EXPECT_EQ(Float16ToFloat32(Float32ToFloat16(0x1p-24f)), 0x1p-24f);      // smallest subnormal
  EXPECT_EQ(Float16ToFloat32(Float32ToFloat16(0x1p-25f)), 0.0f);          // tie -> even = 0
  EXPECT_EQ(Float16ToFloat32(Float32ToFloat16(3 * 0x1p-25f)), 0x1p-23f);  // tie -> even
  EXPECT_EQ(Float16ToFloat32(Float32ToFloat16(1.0f + 0x1p-11f)), 1.0f);   // tie -> even
  EXPECT_EQ(Float16ToFloat32(Float32ToFloat16(-1e-10f)), -0.0f);
  EXPECT_TRUE(std::signbit(Float16ToFloat32(Float32ToFloat16(-1e-10f))));
}

TEST(SafetensorsTest, ParsesInMemoryAndIgnoresMetadata) {
  // Header length 71 is not a multiple of 8: data starts unaligned, ToFloat32 must cope.
  const std::string header =
      R"({"__metadata__":{"format":"pt","x":"y"},"b":{"dtype":"F32","shape":[2],)"
      R"("data_offsets":[0,8]}})";
  std::vector<uint8_t> file = MakeFile(header, 0);
  const float values[2] = {1.5f, -7.25f};
  file.insert(file.end(), reinterpret_cast<const uint8_t*>(values),
              reinterpret_cast<const uint8_t*>(values) + 8);
  absl::StatusOr<std::vector<SafetensorsTensor>> r = ParseSafetensorsHeader(file);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 1u);
  EXPECT_EQ((*r)[0].name, "b");
  EXPECT_EQ((*r)[0].data, file.data() + 8 + header.size());
  std::vector<float> got(2);
  ASSERT_TRUE(ToFloat32((*r)[0], got).ok());
  EXPECT_THAT(got, ElementsAre(1.5f, -7.25f));

  // Tensors come back in data order whatever the header order; trailing spaces are fine.
  const std::string two = R"({"z":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                          R"("a":{"dtype":"I16","shape":[1,2],"data_offsets":[1,5]}}     )";
  r = ParseSafetensorsHeader(MakeFile(two, 5));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 2u);
  EXPECT_EQ((*r)[0].name, "z");
  EXPECT_EQ((*r)[1].name, "a");
  EXPECT_EQ((*r)[1].dtype, DType::kI16);
  EXPECT_THAT((*r)[1].shape, ElementsAre(1, 2));

  // A file with no tensors at all is valid.
  EXPECT_TRUE(ParseSafetensorsHeader(MakeFile("{}", 0)).ok());
}

TEST(SafetensorsTest, RejectsTruncatedOrLyingLength) {
  ExpectParseError({}, "too small");
  ExpectParseError({1, 0, 0, 0, 0, 0, 0}, "too small");
  std::vector<uint8_t> file = MakeFile("{}", 0);
  file[0] = 3;  // header claims 3 bytes, file has 2
  ExpectParseError(file, "runs past the end");
  file = MakeFile(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4);
  file.resize(file.size() - 30);  // truncated inside the header
  ExpectParseError(file, "runs past the end");
  for (uint64_t absurd : {uint64_t{100'000'001}, uint64_t{1} << 40, ~uint64_t{0}}) {
    std::memcpy(file.data(), &absurd, 8);
    ExpectParseError(file, "exceeds the limit");
  }
}

TEST(SafetensorsTest, RejectsBadJson) {
  ExpectParseError(MakeFile("{", 0), "not valid JSON");
  ExpectParseError(MakeFile("", 0), "not valid JSON");
  ExpectParseError(MakeFile(std::string("{\"a\\u0000\0", 10), 0), "not valid JSON");
  ExpectParseError(MakeFile("{\"\xff\": 1}", 0), "not valid JSON");  // invalid UTF-8
  ExpectParseError(MakeFile("[]", 0), "must be a JSON object");
  ExpectParseError(MakeFile("7", 0), "must be a JSON object");
  ExpectParseError(MakeFile(R"({"a": 3})", 0), "tensor 'a': entry must be a JSON object");
}

TEST(SafetensorsTest, RejectsBadEntries) {
  struct Case {
    std::string entry;  // the value for tensor "t"
    size_t data_len;
    std::string needle;
  };
  const Case cases[] = {
      {R"({"shape":[1],"data_offsets":[0,4]})", 4, "missing string field 'dtype'"},
      {R"({"dtype":4,"shape":[1],"data_offsets":[0,4]})", 4, "missing string field 'dtype'"},
      {R"({"dtype":"F33","shape":[1],"data_offsets":[0,4]})", 4, "unknown dtype 'F33'"},
      {R"({"dtype":"F32","data_offsets":[0,4]})", 4, "missing array field 'shape'"},
      {R"({"dtype":"F32","shape":4,"data_offsets":[0,4]})", 4, "missing array field 'shape'"},
      {R"({"dtype":"F32","shape":[-1],"data_offsets":[0,4]})", 4, "shape dimension is negative"},
      {R"({"dtype":"F32","shape":[1.0],"data_offsets":[0,4]})", 4,
       "shape dimension must be a non-negative integer"},
      {R"({"dtype":"F32","shape":["1"],"data_offsets":[0,4]})", 4,
       "shape dimension must be a non-negative integer"},
      {R"({"dtype":"F32","shape":[4611686018427387904,4611686018427387904],)"
       R"("data_offsets":[0,4]})",
       4, "shape overflows"},
      {R"({"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,4]})", 4,
       "shape dimension must be a non-negative integer"},  // beyond uint64
      {R"({"dtype":"F32","shape":[1]})", 4, "missing field 'data_offsets'"},
      {R"({"dtype":"F32","shape":[1],"data_offsets":[0]})", 4, "missing field 'data_offsets'"},
      {R"({"dtype":"F32","shape":[1],"data_offsets":[0,4,8]})", 4, "missing field 'data_offsets'"},
      {R"({"dtype":"F32","shape":[1],"data_offsets":{"a":0}})", 4, "missing field 'data_offsets'"},
      {R"({"dtype":"F32","shape":[1],"data_offsets":[-4,0]})", 4, "data_offsets[0] is negative"},
      {R"({"dtype":"F32","shape":[1],"data_offsets":[0,"4"]})", 4,
       "data_offsets[1] must be a non-negative integer"},
      {R"({"dtype":"F32","shape":[0],"data_offsets":[4,0]})", 4, "end 0 is before begin 4"},
      {R"({"dtype":"F32","shape":[1],"data_offsets":[0,8]})", 4, "run past the 4-byte data"},
      {R"({"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551615]})", 4,
       "run past the 4-byte data"},
      {R"({"dtype":"F32","shape":[2],"data_offsets":[0,4]})", 4,
       "data_offsets span 4 bytes but shape [2] of F32 needs 8"},
      {R"({"dtype":"BF16","shape":[3],"data_offsets":[0,4]})", 4, "needs 6"},
      {R"({"dtype":"F32","shape":[1],"dtype":"F16","data_offsets":[0,4]})", 4,
       "duplicate key 'dtype'"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.entry);
    const std::vector<uint8_t> file = MakeFile("{\"t\":" + c.entry + "}", c.data_len);
    ExpectParseError(file, c.needle);
    if (c.needle.find("duplicate") == std::string::npos) ExpectParseError(file, "tensor 't'");
  }
}

TEST(SafetensorsTest, RejectsOverlapsGapsTrailingBytesAndDuplicates) {
  const std::string a = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  ExpectParseError(
      MakeFile("{" + a + R"(,"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8),
      "(overlap)");
  ExpectParseError(
      MakeFile("{" + a + R"(,"b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})", 16),
      "(gap)");
  ExpectParseError(
      MakeFile("{" + a + R"(,"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 8),
      "(overlap)");
  ExpectParseError(MakeFile("{" + a + "}", 12), "trailing bytes");
  ExpectParseError(MakeFile("{" + a + "," + a + "}", 8), "duplicate key 'a'");
}

TEST(SafetensorsTest, ToFloat32Errors) {
  const std::vector<uint8_t> file =
      MakeFile(R"({"ids":{"dtype":"I32","shape":[2],"data_offsets":[0,8]}})", 8);
  absl::StatusOr<std::vector<SafetensorsTensor>> r = ParseSafetensorsHeader(file);
  ASSERT_TRUE(r.ok()) << r.status();
  std::vector<float> out(2);
  absl::Status s = ToFloat32((*r)[0], out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("tensor 'ids' has dtype I32"));

  SafetensorsTensor t = (*r)[0];
  t.dtype = DType::kF32;
  std::vector<float> wrong(3);
  s = ToFloat32(t, wrong);
  EXPECT_THAT(std::string(s.message()), HasSubstr("tensor 'ids' has 2 elements, output holds 3"));
}

TEST(SafetensorsTest, SerializeRejectsBadInput) {
  auto expect = [](const std::vector<TensorToWrite>& tensors, const std::string& needle) {
    absl::StatusOr<std::string> s = SerializeSafetensors(tensors);
    ASSERT_FALSE(s.ok());
    EXPECT_THAT(std::string(s.status().message()), HasSubstr(needle));
  };
  expect({{"a", DType::kF32, {2}, {1.0f}}}, "tensor 'a' has shape [2] (2 elements) but 1 values");
  expect({{"a", DType::kF32, {-1}, {}}}, "invalid shape");
  expect({{"a", DType::kI32, {1}, {1.0f}}}, "as I32");
  expect({{"a", DType::kF32, {1}, {1.0f}}, {"a", DType::kF32, {1}, {2.0f}}}, "'a'");
  expect({{"__metadata__", DType::kF32, {1}, {1.0f}}}, "reserved");
  expect({{"", DType::kF32, {1}, {1.0f}}}, "empty");
  expect({{"\xff", DType::kF32, {1}, {1.0f}}}, "cannot encode header");

  // The data buffer starts 8-byte aligned.
  absl::StatusOr<std::string> ok = SerializeSafetensors({{"x", DType::kF32, {1}, {1.0f}}});
  ASSERT_TRUE(ok.ok());
  uint64_t header_len;
  std::memcpy(&header_len, ok->data(), 8);
  EXPECT_EQ(header_len % 8, 0u);
  EXPECT_EQ(ok->size(), 8 + header_len + 4);
}

TEST(SafetensorsTest, OpenErrors) {
  const fs::path dir = TempDir("st_open");
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f =
      SafetensorsFile::Open((dir / "nope.safetensors").string());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("nope.safetensors"));

  f = SafetensorsFile::Open(dir.string());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);

  std::ofstream(dir / "short.safetensors") << "abc";
  f = SafetensorsFile::Open((dir / "short.safetensors").string());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("too small"));

  const std::vector<uint8_t> bad = MakeFile("{\"a\":1}", 0);
  std::ofstream(dir / "bad.safetensors", std::ios::binary)
      .write(reinterpret_cast<const char*>(bad.data()), static_cast<std::streamsize>(bad.size()));
  f = SafetensorsFile::Open((dir / "bad.safetensors").string());
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("bad.safetensors"));
  EXPECT_THAT(std::string(f.status().message()), HasSubstr("tensor 'a'"));

  EXPECT_FALSE(WriteSafetensors((dir / "no_such_dir" / "x.safetensors").string(),
                                {{"x", DType::kF32, {1}, {1.0f}}})
                   .ok());
}

// Random byte flips, JSON-ish character substitutions, truncations and length rewrites of a valid
// file must each produce OK or an error, never a crash or an out-of-bounds read (run under ASan).
TEST(SafetensorsTest, FuzzedFilesNeverCrash) {
  absl::StatusOr<std::string> valid = SerializeSafetensors({
      {"model.embed_tokens.weight", DType::kBF16, {4, 3}, RandomValues(12, 7)},
      {"norm", DType::kF32, {3}, RandomValues(3, 8)},
      {"h", DType::kF16, {2, 2}, RandomValues(4, 9)},
  });
  ASSERT_TRUE(valid.ok());
  const std::vector<uint8_t> base = Bytes(*valid);
  uint64_t header_len;
  std::memcpy(&header_len, base.data(), 8);
  const std::string json_chars = "{}[]\",:-0123456789eE. FBIU_x";

  std::mt19937 rng(12345);
  int ok_count = 0, error_count = 0;
  for (int iter = 0; iter < 2000; ++iter) {
    std::vector<uint8_t> file = base;
    const int kind = static_cast<int>(rng() % 4);
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits && !file.empty(); ++e) {
      if (kind == 0) {  // flip a random bit anywhere
        file[rng() % file.size()] ^= static_cast<uint8_t>(1u << (rng() % 8));
      } else if (kind == 1) {  // substitute a JSON-significant character inside the header
        const size_t pos = 8 + rng() % header_len;
        const char c = json_chars[rng() % json_chars.size()];
        if (pos < file.size()) file[pos] = static_cast<uint8_t>(c);
      } else if (kind == 2) {  // truncate
        file.resize(rng() % file.size());
      } else {  // lie about the header length by a little
        uint64_t len = header_len + (rng() % 33) - 16;
        if (file.size() >= 8) std::memcpy(file.data(), &len, 8);
      }
    }
    // An exactly-sized heap copy so any overread is visible to ASan.
    std::unique_ptr<uint8_t[]> exact(new uint8_t[file.size() + (file.empty() ? 1 : 0)]);
    if (!file.empty()) std::memcpy(exact.get(), file.data(), file.size());
    std::span<const uint8_t> bytes(exact.get(), file.size());
    absl::StatusOr<std::vector<SafetensorsTensor>> r = ParseSafetensorsHeader(bytes);
    if (!r.ok()) {
      ++error_count;
      EXPECT_FALSE(r.status().message().empty());
      continue;
    }
    ++ok_count;
    for (const SafetensorsTensor& t : *r) {
      ASSERT_GE(t.data, bytes.data());
      ASSERT_LE(t.data + t.nbytes, bytes.data() + bytes.size());
      std::vector<float> out(t.num_elements());
      (void)ToFloat32(t, out);  // may reject the dtype, must not read out of bounds
    }
  }
  // Both outcomes occur, so neither the parser nor the mutator is degenerate.
  EXPECT_GT(ok_count, 50);
  EXPECT_GT(error_count, 500);
}

}  // namespace
}  // namespace squeeze
