// Every CPU backend op and the attention reference against naive double-precision references on
// random data. Outputs are poisoned with NaN before each call, so an element the op forgets to
// write fails the test.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numbers>
#include <ostream>
#include <random>
#include <tuple>
#include <utility>
#include <vector>

#include "engine/backend/attention_reference.h"
#include "engine/backend/cpu/cpu_backend.h"
#include "engine/model/rope.h"
#include "gtest/gtest.h"

namespace squeeze {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr double kNegInf = -std::numeric_limits<double>::infinity();

std::vector<float> RandomVec(size_t n, std::mt19937_64& rng, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

bool HasNaN(const std::vector<float>& v) {
  for (float x : v) {
    if (std::isnan(x)) return true;
  }
  return false;
}

// ||out - ref|| / ||ref||.
double RelError(const std::vector<float>& out, const std::vector<double>& ref) {
  EXPECT_EQ(out.size(), ref.size());
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (out[i] - ref[i]) * (out[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

TEST(BackendOpsTest, MatMulMatchesReferenceAndAccumulates) {
  std::mt19937_64 rng(1);
  CpuBackend be;
  for (auto [m, n, k] : {std::tuple{1, 13, 33}, std::tuple{7, 13, 33}, std::tuple{64, 96, 128}}) {
    const std::vector<float> x = RandomVec(static_cast<size_t>(m) * k, rng);
    const std::vector<float> w = RandomVec(static_cast<size_t>(n) * k, rng);
    const std::vector<float> y0 = RandomVec(static_cast<size_t>(m) * n, rng);
    std::vector<double> ref(static_cast<size_t>(m) * n), ref_acc(ref.size());
    for (int i = 0; i < m; ++i) {
      for (int j = 0; j < n; ++j) {
        double s = 0.0;
        for (int t = 0; t < k; ++t) s += static_cast<double>(x[i * k + t]) * w[j * k + t];
        ref[i * n + j] = s;
        ref_acc[i * n + j] = s + y0[i * n + j];
      }
    }
    std::vector<float> y(ref.size(), kNaN);
    be.MatMul(x.data(), Matrix{w.data(), DType::kF32, n, k}, y.data(), m, /*accumulate=*/false);
    EXPECT_FALSE(HasNaN(y));
    EXPECT_LT(RelError(y, ref), 1e-5) << m << "x" << n << "x" << k;

    std::vector<float> y_acc = y0;
    be.MatMul(x.data(), Matrix{w.data(), DType::kF32, n, k}, y_acc.data(), m, /*accumulate=*/true);
    EXPECT_LT(RelError(y_acc, ref_acc), 1e-5) << m << "x" << n << "x" << k;
  }
}

TEST(BackendOpsTest, GatherRowsCopiesSelectedRows) {
  std::mt19937_64 rng(2);
  CpuBackend be;
  const int rows = 11, dim = 24;
  const std::vector<float> table = RandomVec(rows * dim, rng);
  const std::vector<int32_t> ids = {3, 0, 10, 3, 7};
  std::vector<float> out(ids.size() * dim, kNaN);
  be.GatherRows(table.data(), ids.data(), static_cast<int>(ids.size()), dim, out.data());
  for (size_t i = 0; i < ids.size(); ++i) {
    for (int j = 0; j < dim; ++j) EXPECT_EQ(out[i * dim + j], table[ids[i] * dim + j]);
  }
}

TEST(BackendOpsTest, RmsNormMatchesReferenceInPlaceToo) {
  std::mt19937_64 rng(3);
  CpuBackend be;
  const int rows = 5, dim = 96;
  const float eps = 1e-5f;
  const std::vector<float> x = RandomVec(rows * dim, rng, 3.0f);
  std::vector<float> w = RandomVec(dim, rng, 0.1f);
  for (float& g : w) g += 1.0f;
  std::vector<double> ref(rows * dim);
  for (int r = 0; r < rows; ++r) {
    double ss = 0.0;
    for (int i = 0; i < dim; ++i) ss += static_cast<double>(x[r * dim + i]) * x[r * dim + i];
    const double inv = 1.0 / std::sqrt(ss / dim + eps);
    for (int i = 0; i < dim; ++i) ref[r * dim + i] = x[r * dim + i] * inv * w[i];
  }
  std::vector<float> out(rows * dim, kNaN);
  be.RmsNorm(x.data(), w.data(), out.data(), rows, dim, eps);
  EXPECT_FALSE(HasNaN(out));
  EXPECT_LT(RelError(out, ref), 1e-6);

  std::vector<float> in_place = x;
  be.RmsNorm(in_place.data(), w.data(), in_place.data(), rows, dim, eps);
  EXPECT_LT(RelError(in_place, ref), 1e-6);
}

TEST(BackendOpsTest, SiluMulMatchesReference) {
  std::mt19937_64 rng(4);
  CpuBackend be;
  const size_t n = 1000;
  const std::vector<float> gate = RandomVec(n, rng, 4.0f), up = RandomVec(n, rng);
  std::vector<double> ref(n);
  for (size_t i = 0; i < n; ++i) ref[i] = gate[i] / (1.0 + std::exp(-double{gate[i]})) * up[i];
  std::vector<float> out(n, kNaN);
  be.SiluMul(gate.data(), up.data(), out.data(), n);
  EXPECT_FALSE(HasNaN(out));
  EXPECT_LT(RelError(out, ref), 1e-6);
}

// The CPU op and Backend's default (host round trip, what a backend without a kernel runs).
TEST(BackendOpsTest, AddBiasAddsToEveryRowInBothImplementations) {
  std::mt19937_64 rng(9);
  CpuBackend be;
  const int rows = 7, cols = 33;
  const std::vector<float> y0 = RandomVec(rows * cols, rng), bias = RandomVec(cols, rng);
  std::vector<double> ref(rows * cols);
  for (int i = 0; i < rows * cols; ++i) ref[i] = double{y0[i]} + bias[i % cols];
  std::vector<float> y = y0;
  be.AddBias(y.data(), bias.data(), rows, cols);
  EXPECT_LT(RelError(y, ref), 1e-7);
  y = y0;
  be.Backend::AddBias(y.data(), bias.data(), rows, cols);
  EXPECT_LT(RelError(y, ref), 1e-7);
}

TEST(BackendOpsTest, AppendKvWritesPerHeadRows) {
  std::mt19937_64 rng(5);
  CpuBackend be;
  const int n = 3, hkv = 2, d = 8, capacity = 10, start = 4;
  const std::vector<float> k_new = RandomVec(n * hkv * d, rng), v_new = RandomVec(n * hkv * d, rng);
  std::vector<float> k(hkv * capacity * d, kNaN), v(k.size(), kNaN);
  be.AppendKv(k_new.data(), v_new.data(), n, hkv, d, k.data() + start * d, v.data() + start * d,
              static_cast<size_t>(capacity) * d);
  for (int t = 0; t < n; ++t) {
    for (int h = 0; h < hkv; ++h) {
      for (int i = 0; i < d; ++i) {
        EXPECT_EQ(k[(h * capacity + start + t) * d + i], k_new[(t * hkv + h) * d + i]);
        EXPECT_EQ(v[(h * capacity + start + t) * d + i], v_new[(t * hkv + h) * d + i]);
      }
    }
  }
  // Rows outside the written ones are untouched.
  EXPECT_TRUE(std::isnan(k[(0 * capacity + start - 1) * d]));
  EXPECT_TRUE(std::isnan(v[(1 * capacity + start + n) * d]));
}

// ---- RoPE ------------------------------------------------------------------------------------

TEST(RopeTest, DefaultAndLinearInvFreq) {
  auto def = ComputeRopeInvFreq(64, 10000.0f, RopeScaling{});
  ASSERT_TRUE(def.ok()) << def.status();
  ASSERT_EQ(def->size(), 32u);
  for (int i = 0; i < 32; ++i) {
    EXPECT_NEAR((*def)[i], std::pow(10000.0, -2.0 * i / 64),
                1e-6 * std::pow(10000.0, -2.0 * i / 64));
  }
  RopeScaling linear;
  linear.type = RopeType::kLinear;
  linear.factor = 8.0f;
  auto lin = ComputeRopeInvFreq(64, 10000.0f, linear);
  ASSERT_TRUE(lin.ok());
  for (int i = 0; i < 32; ++i) EXPECT_FLOAT_EQ((*lin)[i], (*def)[i] / 8.0f);
}

TEST(RopeTest, Llama3InvFreqMatchesHandComputedValues) {
  // Llama-3.1 settings: theta 500000, d 128, factor 8, low 1, high 4, original 8192, so
  // low_freq_wavelen = 8192 and high_freq_wavelen = 2048.
  RopeScaling s;
  s.type = RopeType::kLlama3;
  s.factor = 8.0f;
  s.low_freq_factor = 1.0f;
  s.high_freq_factor = 4.0f;
  s.original_max_position_embeddings = 8192;
  auto inv = ComputeRopeInvFreq(128, 500000.0f, s);
  ASSERT_TRUE(inv.ok()) << inv.status();
  ASSERT_EQ(inv->size(), 64u);
  // i = 0: wavelen 2*pi < 2048, high frequency, unchanged.
  EXPECT_FLOAT_EQ((*inv)[0], 1.0f);
  // i = 20: f = 500000^(-40/128) = 0.0165604, wavelen 379.4 < 2048: unchanged.
  EXPECT_NEAR((*inv)[20], 0.016560440080994446, 1e-5 * 0.01656);
  // i = 30: f = 500000^(-60/128) = 2.13112e-3, wavelen = 2*pi/f = 2948.30 (medium band);
  // smooth = (8192/2948.30 - 1) / (4 - 1) = 0.592849; inv = (1-smooth) f/8 + smooth f = 1.37189e-3.
  EXPECT_NEAR((*inv)[30], 1.3718935677611381e-3, 1e-5 * 1.372e-3);
  // i = 40: wavelen 22910 > 8192, low frequency: f / 8 = 2.74248e-4 / 8.
  EXPECT_NEAR((*inv)[40], 3.428102195952591e-05, 1e-5 * 3.43e-5);
}

TEST(RopeTest, RejectsBadParameters) {
  EXPECT_FALSE(ComputeRopeInvFreq(15, 10000.0f, RopeScaling{}).ok());
  RopeScaling bad;
  bad.type = RopeType::kLinear;
  bad.factor = 0.0f;
  EXPECT_FALSE(ComputeRopeInvFreq(16, 10000.0f, bad).ok());
  RopeScaling bad3;
  bad3.type = RopeType::kLlama3;
  bad3.low_freq_factor = 4.0f;
  bad3.high_freq_factor = 1.0f;
  EXPECT_FALSE(ComputeRopeInvFreq(16, 10000.0f, bad3).ok());
}

class RopeOpTest : public ::testing::TestWithParam<RopeType> {};

TEST_P(RopeOpTest, MatchesRotateHalfReferenceAndPreservesNorms) {
  std::mt19937_64 rng(6);
  CpuBackend be;
  RopeScaling scaling;
  scaling.type = GetParam();
  scaling.factor = 4.0f;
  scaling.original_max_position_embeddings = 256;
  const int n = 6, heads = 3, d = 32;
  auto inv_freq = ComputeRopeInvFreq(d, 10000.0f, scaling);
  ASSERT_TRUE(inv_freq.ok()) << inv_freq.status();
  const std::vector<float> x = RandomVec(n * heads * d, rng);
  const std::vector<int32_t> positions = {0, 1, 17, 255, 4096, 30000};
  std::vector<double> ref(x.size());
  for (int t = 0; t < n; ++t) {
    for (int h = 0; h < heads; ++h) {
      const float* xr = &x[(t * heads + h) * d];
      double* rr = &ref[(t * heads + h) * d];
      for (int i = 0; i < d / 2; ++i) {
        // The angle is the fp32 product Hugging Face forms; rotation in double.
        const double angle = static_cast<float>(positions[t]) * (*inv_freq)[i];
        rr[i] = xr[i] * std::cos(angle) - xr[i + d / 2] * std::sin(angle);
        rr[i + d / 2] = xr[i + d / 2] * std::cos(angle) + xr[i] * std::sin(angle);
      }
    }
  }
  std::vector<float> out = x;
  be.Rope(out.data(), positions.data(), n, heads, d, inv_freq->data());
  EXPECT_FALSE(HasNaN(out));
  EXPECT_LT(RelError(out, ref), 1e-6);
  // Position 0 is the identity; every (token, head) vector keeps its norm.
  for (int i = 0; i < heads * d; ++i) EXPECT_EQ(out[i], x[i]);
  for (int r = 0; r < n * heads; ++r) {
    double before = 0.0, after = 0.0;
    for (int i = 0; i < d; ++i) {
      before += double{x[r * d + i]} * x[r * d + i];
      after += double{out[r * d + i]} * out[r * d + i];
    }
    EXPECT_NEAR(after, before, 1e-5 * before);
  }
}

INSTANTIATE_TEST_SUITE_P(AllTypes, RopeOpTest,
                         ::testing::Values(RopeType::kDefault, RopeType::kLinear,
                                           RopeType::kLlama3));

// ---- attention ---------------------------------------------------------------------------------

// Per-head KV storage with padding between heads; rows that must not be read hold NaN.
struct KvStore {
  int heads = 0, rows = 0, stride_rows = 0, d = 0;
  std::vector<float> k, v;
  KvSlice slice() const { return {k.data(), v.data(), static_cast<size_t>(stride_rows) * d, rows}; }
  float key(int h, int r, int i) const {
    return k[(static_cast<size_t>(h) * stride_rows + r) * d + i];
  }
  float value(int h, int r, int i) const {
    return v[(static_cast<size_t>(h) * stride_rows + r) * d + i];
  }
};

KvStore RandomKv(int heads, int rows, int d, std::mt19937_64& rng) {
  KvStore s;
  s.heads = heads;
  s.rows = rows;
  s.stride_rows = rows + 3;
  s.d = d;
  s.k.assign(static_cast<size_t>(heads) * s.stride_rows * d, kNaN);
  s.v.assign(s.k.size(), kNaN);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  for (int h = 0; h < heads; ++h) {
    for (int r = 0; r < rows; ++r) {
      for (int i = 0; i < d; ++i) {
        s.k[(static_cast<size_t>(h) * s.stride_rows + r) * d + i] = 1.5f * dist(rng);
        s.v[(static_cast<size_t>(h) * s.stride_rows + r) * d + i] = dist(rng);
      }
    }
  }
  return s;
}

// Naive double softmax attention. `visible(t, kv_head, row)` says whether query token t sees
// that row. out [n, Hq, d], lse [n, Hq] (-inf for an empty set).
template <typename Visible>
void ReferenceAttention(const AttentionShape& sh, const std::vector<float>& q, const KvStore& kv,
                        Visible visible, std::vector<double>* out, std::vector<double>* lse) {
  const int G = sh.num_q_heads / sh.num_kv_heads, d = sh.head_dim;
  out->assign(static_cast<size_t>(sh.num_queries) * sh.num_q_heads * d, 0.0);
  lse->assign(static_cast<size_t>(sh.num_queries) * sh.num_q_heads, kNegInf);
  for (int t = 0; t < sh.num_queries; ++t) {
    for (int qh = 0; qh < sh.num_q_heads; ++qh) {
      const int h = qh / G;
      const float* qr = &q[(static_cast<size_t>(t) * sh.num_q_heads + qh) * d];
      std::vector<std::pair<int, double>> logits;
      double mx = kNegInf;
      for (int r = 0; r < kv.rows; ++r) {
        if (!visible(t, h, r)) continue;
        double s = 0.0;
        for (int i = 0; i < d; ++i) s += double{qr[i]} * kv.key(h, r, i);
        s *= sh.scale;
        logits.push_back({r, s});
        mx = std::max(mx, s);
      }
      if (logits.empty()) continue;
      double sum = 0.0;
      for (auto& [r, s] : logits) sum += std::exp(s - mx);
      double* o = &(*out)[(static_cast<size_t>(t) * sh.num_q_heads + qh) * d];
      for (auto& [r, s] : logits) {
        const double p = std::exp(s - mx) / sum;
        for (int i = 0; i < d; ++i) o[i] += p * kv.value(h, r, i);
      }
      (*lse)[t * sh.num_q_heads + qh] = mx + std::log(sum);
    }
  }
}

void ExpectLseNear(const std::vector<float>& lse, const std::vector<double>& ref) {
  ASSERT_EQ(lse.size(), ref.size());
  for (size_t i = 0; i < ref.size(); ++i) {
    if (ref[i] == kNegInf) {
      EXPECT_EQ(lse[i], -std::numeric_limits<float>::infinity()) << i;
    } else {
      EXPECT_NEAR(lse[i], ref[i], 1e-4 * std::max(1.0, std::abs(ref[i]))) << i;
    }
  }
}

// Random disjoint ranges over [0, rows) for every head: each row is kept with probability
// `keep`, runs of kept rows become ranges, listed in shuffled order.
std::vector<std::vector<KeyRange>> RandomRanges(int heads, int rows, double keep,
                                                std::mt19937_64& rng,
                                                std::vector<std::vector<bool>>* kept) {
  std::bernoulli_distribution pick(keep);
  std::vector<std::vector<KeyRange>> ranges(heads);
  kept->assign(heads, std::vector<bool>(rows, false));
  for (int h = 0; h < heads; ++h) {
    for (int r = 0; r < rows;) {
      // Runs of random length 1..40 are kept or skipped together.
      const int len = std::min(rows - r, 1 + static_cast<int>(rng() % 40));
      if (pick(rng)) {
        ranges[h].push_back({r, r + len});
        for (int j = r; j < r + len; ++j) (*kept)[h][j] = true;
      }
      r += len;
    }
    std::shuffle(ranges[h].begin(), ranges[h].end(), rng);
  }
  return ranges;
}

struct AttnCase {
  int n, hq, hkv, d, rows;
};

void PrintTo(const AttnCase& c, std::ostream* os) {
  *os << "n=" << c.n << " Hq=" << c.hq << " Hkv=" << c.hkv << " d=" << c.d << " rows=" << c.rows;
}

class AttentionPartialTest : public ::testing::TestWithParam<AttnCase> {};

TEST_P(AttentionPartialTest, FixedRangesMatchReference) {
  const AttnCase c = GetParam();
  std::mt19937_64 rng(7 + c.n + c.d);
  const AttentionShape sh{c.n, c.hq, c.hkv, c.d, 1.0f / std::sqrt(static_cast<float>(c.d))};
  const std::vector<float> q = RandomVec(static_cast<size_t>(c.n) * c.hq * c.d, rng);
  KvStore kv = RandomKv(c.hkv, c.rows, c.d, rng);
  std::vector<std::vector<bool>> kept;
  auto ranges = RandomRanges(c.hkv, c.rows, 0.5, rng, &kept);
  ranges[c.hkv - 1].clear();  // one head keeps nothing: empty set, lse = -inf
  kept[c.hkv - 1].assign(c.rows, false);
  // Rows outside the ranges are poisoned: reading one would turn the output into NaN.
  for (int h = 0; h < c.hkv; ++h) {
    for (int r = 0; r < c.rows; ++r) {
      if (kept[h][r]) continue;
      for (int i = 0; i < c.d; ++i) {
        kv.k[(static_cast<size_t>(h) * kv.stride_rows + r) * c.d + i] = kNaN;
        kv.v[(static_cast<size_t>(h) * kv.stride_rows + r) * c.d + i] = kNaN;
      }
    }
  }
  std::vector<double> ref, ref_lse;
  ReferenceAttention(
      sh, q, kv, [&](int, int h, int r) { return static_cast<bool>(kept[h][r]); }, &ref, &ref_lse);

  AttentionKeys keys;
  keys.kv = kv.slice();
  keys.ranges = ranges;
  std::vector<float> out(ref.size(), kNaN), lse(ref_lse.size(), kNaN);
  AttentionPartial(sh, q.data(), keys, out.data(), lse.data());
  EXPECT_FALSE(HasNaN(out));
  EXPECT_LT(RelError(out, ref), 1e-5);
  ExpectLseNear(lse, ref_lse);
  const int G = c.hq / c.hkv;
  for (int t = 0; t < c.n; ++t) {  // the empty head's queries output zeros
    for (int g = 0; g < G; ++g) {
      EXPECT_EQ(out[(static_cast<size_t>(t) * c.hq + (c.hkv - 1) * G + g) * c.d], 0.0f);
    }
  }
}

TEST_P(AttentionPartialTest, CausalDynamicMatchesReference) {
  const AttnCase c = GetParam();
  std::mt19937_64 rng(8 + c.n + c.d);
  const AttentionShape sh{c.n, c.hq, c.hkv, c.d, 1.0f / std::sqrt(static_cast<float>(c.d))};
  const std::vector<float> q = RandomVec(static_cast<size_t>(c.n) * c.hq * c.d, rng);
  const int past = c.rows;  // keys before this step; the step's own n keys follow
  const KvStore kv = RandomKv(c.hkv, past + c.n, c.d, rng);
  std::vector<double> ref, ref_lse;
  ReferenceAttention(
      sh, q, kv, [&](int t, int, int r) { return r <= past + t; }, &ref, &ref_lse);
  AttentionKeys keys;
  keys.kv = kv.slice();
  keys.causal_offset = past;
  std::vector<float> out(ref.size(), kNaN), lse(ref_lse.size(), kNaN);
  AttentionPartial(sh, q.data(), keys, out.data(), lse.data());
  EXPECT_FALSE(HasNaN(out));
  EXPECT_LT(RelError(out, ref), 1e-5);
  ExpectLseNear(lse, ref_lse);

  // Causal limit combined with fragmented ranges (short runs are gathered into tiles).
  std::vector<std::vector<bool>> kept;
  const auto ranges = RandomRanges(c.hkv, past + c.n, 0.6, rng, &kept);
  ReferenceAttention(
      sh, q, kv, [&](int t, int h, int r) { return kept[h][r] && r <= past + t; }, &ref, &ref_lse);
  keys.ranges = ranges;
  std::fill(out.begin(), out.end(), kNaN);
  AttentionPartial(sh, q.data(), keys, out.data(), lse.data());
  EXPECT_FALSE(HasNaN(out));
  EXPECT_LT(RelError(out, ref), 1e-5);
  ExpectLseNear(lse, ref_lse);
}

TEST_P(AttentionPartialTest, LseMergeEqualsOneSoftmaxOverTheUnion) {
  const AttnCase c = GetParam();
  std::mt19937_64 rng(9 + c.n + c.d);
  const AttentionShape sh{c.n, c.hq, c.hkv, c.d, 1.0f / std::sqrt(static_cast<float>(c.d))};
  const std::vector<float> q = RandomVec(static_cast<size_t>(c.n) * c.hq * c.d, rng);
  const KvStore kv = RandomKv(c.hkv, c.rows, c.d, rng);
  std::vector<double> ref, ref_lse;
  ReferenceAttention(
      sh, q, kv, [](int, int, int) { return true; }, &ref, &ref_lse);

  // Split every head's rows into A (random runs) and B (the complement); then the degenerate
  // splits where one side is empty.
  std::vector<std::vector<bool>> in_a;
  const auto a_random = RandomRanges(c.hkv, c.rows, 0.5, rng, &in_a);
  std::vector<std::vector<KeyRange>> b_random(c.hkv);
  for (int h = 0; h < c.hkv; ++h) {
    for (int r = 0; r < c.rows; ++r) {
      if (!in_a[h][r]) b_random[h].push_back({r, r + 1});
    }
  }
  const std::vector<std::vector<KeyRange>> all(c.hkv, {{0, c.rows}}), none(c.hkv);
  const std::pair<const std::vector<std::vector<KeyRange>>*,
                  const std::vector<std::vector<KeyRange>>*>
      splits[] = {{&a_random, &b_random}, {&all, &none}, {&none, &all}};
  for (const auto& [a, b] : splits) {
    std::vector<float> out_a(ref.size(), kNaN), lse_a(ref_lse.size(), kNaN);
    std::vector<float> out_b(ref.size(), kNaN), lse_b(ref_lse.size(), kNaN);
    AttentionKeys keys;
    keys.kv = kv.slice();
    keys.ranges = *a;
    AttentionPartial(sh, q.data(), keys, out_a.data(), lse_a.data());
    keys.ranges = *b;
    AttentionPartial(sh, q.data(), keys, out_b.data(), lse_b.data());
    MergeAttentionPartials(out_a.data(), lse_a.data(), out_b.data(), lse_b.data(), c.n * c.hq, c.d);
    EXPECT_FALSE(HasNaN(out_a));
    EXPECT_LT(RelError(out_a, ref), 1e-5);
    ExpectLseNear(lse_a, ref_lse);
  }
}

TEST_P(AttentionPartialTest, GqaEqualsMhaWithRepeatedKvHeads) {
  const AttnCase c = GetParam();
  std::mt19937_64 rng(10 + c.n + c.d);
  const int G = c.hq / c.hkv;
  const AttentionShape gqa{c.n, c.hq, c.hkv, c.d, 1.0f / std::sqrt(static_cast<float>(c.d))};
  AttentionShape mha = gqa;
  mha.num_kv_heads = c.hq;
  const std::vector<float> q = RandomVec(static_cast<size_t>(c.n) * c.hq * c.d, rng);
  const KvStore kv = RandomKv(c.hkv, c.rows, c.d, rng);
  // MHA copy: query head qh gets its own copy of KV head qh / G.
  KvStore rep = RandomKv(c.hq, c.rows, c.d, rng);
  for (int qh = 0; qh < c.hq; ++qh) {
    for (int r = 0; r < c.rows; ++r) {
      for (int i = 0; i < c.d; ++i) {
        rep.k[(static_cast<size_t>(qh) * rep.stride_rows + r) * c.d + i] = kv.key(qh / G, r, i);
        rep.v[(static_cast<size_t>(qh) * rep.stride_rows + r) * c.d + i] = kv.value(qh / G, r, i);
      }
    }
  }
  AttentionKeys keys;
  keys.kv = kv.slice();
  std::vector<float> out(static_cast<size_t>(c.n) * c.hq * c.d, kNaN), lse(c.n * c.hq, kNaN);
  AttentionPartial(gqa, q.data(), keys, out.data(), lse.data());
  keys.kv = rep.slice();
  std::vector<float> out_mha(out.size(), kNaN), lse_mha(lse.size(), kNaN);
  AttentionPartial(mha, q.data(), keys, out_mha.data(), lse_mha.data());
  EXPECT_FALSE(HasNaN(out));
  std::vector<double> ref(out_mha.begin(), out_mha.end());
  EXPECT_LT(RelError(out, ref), 1e-5);  // different blocking, so rounding differs slightly
  // And the mapping is not trivially satisfied: different KV heads give different outputs.
  if (c.hkv > 1) {
    double diff = 0.0;
    for (int i = 0; i < c.d; ++i) diff += std::abs(out[i] - out[(G * c.d) + i]);
    EXPECT_GT(diff, 1e-3);
  }
}

// The cascade (n sequences over one shared key list, per-key masks, chunked partials merged
// by log-sum-exp) equals each sequence's own attention over the keys it sees, for any chunking.
TEST_P(AttentionPartialTest, CascadeOverSharedKeysEqualsPerSequenceAttention) {
  const AttnCase c = GetParam();
  std::mt19937_64 rng(11 + c.n + c.d);
  const AttentionShape sh{c.n, c.hq, c.hkv, c.d, 1.0f / std::sqrt(static_cast<float>(c.d))};
  const std::vector<float> q = RandomVec(static_cast<size_t>(c.n) * c.hq * c.d, rng);
  const KvStore kv = RandomKv(c.hkv, c.rows, c.d, rng);
  const bool masked = c.n <= 64;  // a key mask holds 64 sequences
  const uint64_t all = c.n >= 64 ? ~uint64_t{0} : (uint64_t{1} << c.n) - 1;
  // Key lists: a random subset of each head's rows in shuffled order; masks: random sequences per
  // key, the last sequence seeing nothing of head 0.
  std::vector<std::vector<int32_t>> rows(c.hkv);
  std::vector<std::vector<uint64_t>> masks(c.hkv);
  std::vector<std::vector<uint64_t>> seen(c.hkv, std::vector<uint64_t>(c.rows, 0));
  for (int h = 0; h < c.hkv; ++h) {
    for (int r = 0; r < c.rows; ++r) {
      if (rng() % 4 != 0) rows[h].push_back(r);
    }
    std::shuffle(rows[h].begin(), rows[h].end(), rng);
    for (int32_t r : rows[h]) {
      uint64_t m = masked ? rng() & all : all;
      if (masked && h == 0) m &= ~(uint64_t{1} << (c.n - 1));
      masks[h].push_back(m);
      seen[h][r] = m;
    }
  }
  std::vector<double> ref, ref_lse;
  // Beyond 64 sequences nothing is masked (a listed row has every bit set, an unlisted one none);
  // shifting a uint64_t by 64 or more is undefined.
  auto visible = [&](int t, int h, int r) {
    return t < 64 ? ((seen[h][r] >> t) & 1) != 0 : seen[h][r] != 0;
  };
  ReferenceAttention(sh, q, kv, visible, &ref, &ref_lse);
  for (int chunk : {1, 64, 100, c.rows + 1}) {
    SCOPED_TRACE(chunk);
    // Masks cover 64 sequences: beyond that none are passed (every sequence sees every key).
    const SharedKeys keys{kv.slice(), rows,
                          masked ? std::span<const std::vector<uint64_t>>(masks)
                                 : std::span<const std::vector<uint64_t>>()};
    std::vector<float> out(ref.size(), kNaN), lse(ref_lse.size(), kNaN);
    CascadeAttention(sh, q.data(), keys, chunk, out.data(), lse.data());
    EXPECT_FALSE(HasNaN(out));
    EXPECT_LT(RelError(out, ref), 1e-5);
    ExpectLseNear(lse, ref_lse);
  }
  // Dense: the whole context, every sequence sees every row.
  ReferenceAttention(
      sh, q, kv, [](int, int, int) { return true; }, &ref, &ref_lse);
  std::vector<float> out(ref.size(), kNaN), lse(ref_lse.size(), kNaN);
  CascadeAttention(sh, q.data(), SharedKeys{kv.slice(), {}, {}}, 64, out.data(), lse.data());
  EXPECT_FALSE(HasNaN(out));
  EXPECT_LT(RelError(out, ref), 1e-5);
  ExpectLseNear(lse, ref_lse);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionPartialTest,
                         ::testing::Values(AttnCase{1, 4, 4, 16, 37},   // decode, MHA, loop path
                                           AttnCase{5, 8, 2, 32, 300},  // GQA 4:1, key chunking
                                           AttnCase{70, 8, 2, 64,
                                                    520},  // several query blocks, BLAS path
                                           AttnCase{3, 4, 1, 128, 1000},  // MQA, long keys
                                           AttnCase{17, 2, 2, 16, 1}));   // a single key

TEST(BackendOpsTest, AttentionOpMergesFixedAndCausalDynamic) {
  std::mt19937_64 rng(11);
  CpuBackend be;
  const int n = 9, hq = 8, hkv = 2, d = 32, S = 150, past = 20;
  const AttentionShape sh{n, hq, hkv, d, 1.0f / std::sqrt(static_cast<float>(d))};
  const std::vector<float> q = RandomVec(static_cast<size_t>(n) * hq * d, rng);
  const KvStore fixed = RandomKv(hkv, S, d, rng);
  const KvStore dyn = RandomKv(hkv, past + n, d, rng);
  std::vector<std::vector<bool>> kept;
  const auto ranges = RandomRanges(hkv, S, 0.4, rng, &kept);

  // Reference: one softmax over the selected fixed rows and the causal dynamic rows, expressed
  // as one key store [fixed rows ; dynamic rows].
  KvStore both = RandomKv(hkv, S + past + n, d, rng);
  for (int h = 0; h < hkv; ++h) {
    for (int r = 0; r < S + past + n; ++r) {
      for (int i = 0; i < d; ++i) {
        const size_t dst = (static_cast<size_t>(h) * both.stride_rows + r) * d + i;
        both.k[dst] = r < S ? fixed.key(h, r, i) : dyn.key(h, r - S, i);
        both.v[dst] = r < S ? fixed.value(h, r, i) : dyn.value(h, r - S, i);
      }
    }
  }
  std::vector<double> ref, ref_lse;
  ReferenceAttention(
      sh, q, both,
      [&](int t, int h, int r) {
        return r < S ? static_cast<bool>(kept[h][r]) : r - S <= past + t;
      },
      &ref, &ref_lse);

  AttentionParams p;
  p.shape = sh;
  p.q = q.data();
  std::vector<float> out(ref.size(), kNaN);
  p.out = out.data();
  p.fixed.kv = fixed.slice();
  p.fixed.ranges = ranges;
  p.dynamic.kv = dyn.slice();
  p.dynamic.causal_offset = past;
  be.Attention(p);
  EXPECT_FALSE(HasNaN(out));
  EXPECT_LT(RelError(out, ref), 1e-5);

  // Without a fixed part the op is plain causal attention over the dynamic keys.
  ReferenceAttention(
      sh, q, dyn, [&](int t, int, int r) { return r <= past + t; }, &ref, &ref_lse);
  p.fixed = AttentionKeys{};
  std::fill(out.begin(), out.end(), kNaN);
  be.Attention(p);
  EXPECT_FALSE(HasNaN(out));
  EXPECT_LT(RelError(out, ref), 1e-5);
}

TEST(BackendOpsTest, AllocateReturnsAlignedReusableBlocks) {
  CpuBackend be;
  auto a = be.Allocate(1000);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(reinterpret_cast<uintptr_t>((*a)->data()) % 64, 0u);
  EXPECT_EQ((*a)->bytes(), 1000u);
  void* first = (*a)->data();
  a->reset();
  auto b = be.Allocate(900);  // fits the freed block
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*b)->data(), first);
  auto c = be.Allocate(1 << 20);  // too large for it
  ASSERT_TRUE(c.ok());
  EXPECT_NE((*c)->data(), first);
}

}  // namespace
}  // namespace squeeze
