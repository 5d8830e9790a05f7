// Dense causal prefill attention (kernels/attention/prefill_attention.cuh) against the CPU
// reference AttentionPartial (engine/backend/attention_reference.h) on the same bf16 values (the
// reference reads them converted to fp32 and computes in fp32).
//
// Inputs: random q (bf16, |q| up to 3 so the softmax is far from uniform), K and V random bf16
// with a per-dimension offset on V so outputs are far from zero; rows past past + n of every KV
// head are NaN, so any read past the causal limit of the last query poisons the result.
// Outputs (out and lse) are poisoned with 0xFF bytes (NaN) before every launch; every output
// element must be finite.
// Tolerances: ||out - ref|| / ||ref|| <= 1e-2 (P is rounded to bf16 for P.V on the tensor cores,
// about 2^-9 relative per term, plus one more bf16 rounding for bf16 output);
// |lse - ref| <= 1e-3 (1 + |ref|) (S and the row sums are fp32).
// The reference is checked on every query for n <= 129 and on a sample otherwise (the first and
// last 140 queries, which cover the first and the last 128-row query tiles, and every 61st
// query), keeping the CPU cost of the 4096-token cases small (about 2 s of reference in all on
// 2 cores); finiteness is checked on every query.
// Without a CUDA device the binary prints a message and exits with 77 (ctest: skipped).
#include "kernels/attention/prefill_attention.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "engine/backend/attention_reference.h"
#include "tests/gpu/gpu_test_util.h"

namespace squeeze {
namespace {

using gpu::bf16;
using namespace gpu_testing;  // NOLINT(build/namespaces): test helpers

// The kernel under test (the suite runs once per kernel, see PrefillAttention below); head dim 96
// has no wgmma kernel and runs the mma.sync one in both runs.
gpu::PrefillImpl g_impl = gpu::PrefillImpl::kMmaSync;
gpu::PrefillImpl ImplFor(int d) { return d == 96 ? gpu::PrefillImpl::kMmaSync : g_impl; }

class PrefillAttention : public ::testing::TestWithParam<gpu::PrefillImpl> {
 protected:
  void SetUp() override {
    g_impl = GetParam();
    if (g_impl != gpu::PrefillImpl::kMmaSync && !gpu::PrefillWgmmaSupported(128)) {
      GTEST_SKIP() << "the wgmma kernel needs compute capability 9.0";
    }
  }
};

struct Case {
  int d, group, hkv, n, past;
  bool out_bf16;
};

// Queries checked against the reference (see the header comment).
std::vector<int> CheckedQueries(int n) {
  std::vector<int> ts;
  for (int t = 0; t < n; ++t) {
    if (n <= 129 || t < 140 || t >= n - 140 || t % 61 == 0) ts.push_back(t);
  }
  return ts;
}

// K/V of hkv heads, cap rows each: rows below lens[h] random (V with a per-dimension offset so
// outputs are far from zero), the rest NaN (a read past a head's length poisons the result).
void FillKv(int hkv, int cap, int d, const std::vector<int>& lens, Rng* rng, Bf16Data* k,
            Bf16Data* v) {
  k->Resize(static_cast<size_t>(hkv) * cap * d);
  v->Resize(k->dev.size());
  for (int h = 0; h < hkv; ++h) {
    for (int r = 0; r < cap; ++r) {
      for (int i = 0; i < d; ++i) {
        const size_t at = (static_cast<size_t>(h) * cap + r) * d + i;
        if (r < lens[h]) {
          k->Set(at, rng->Uniform());
          v->Set(at, rng->Uniform() + 0.5f * std::sin(0.37f * i + h));
        } else {
          k->SetNaN(at);
          v->SetNaN(at);
        }
      }
    }
  }
}

void RunCase(const Case& c, uint64_t seed, bool check_repeat = false) {
  SCOPED_TRACE(::testing::Message() << "d=" << c.d << " G=" << c.group << " Hkv=" << c.hkv << " n="
                                    << c.n << " past=" << c.past << " out_bf16=" << c.out_bf16);
  Rng rng(seed);
  const int d = c.d, hkv = c.hkv, hq = hkv * c.group, n = c.n, len = c.past + c.n;
  const int cap = (len + 5 + 7) / 8 * 8;  // >= 5 NaN rows past the sequence in every head
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));

  Bf16Data q(static_cast<size_t>(n) * hq * d);
  for (size_t i = 0; i < q.dev.size(); ++i) q.Set(i, 3.0f * rng.Uniform());
  Bf16Data k, v;
  FillKv(hkv, cap, d, std::vector<int>(hkv, len), &rng, &k, &v);

  DeviceArray<bf16> dev_q(q.dev), dev_k(k.dev), dev_v(v.dev);
  const size_t out_elems = static_cast<size_t>(n) * hq * d;
  DeviceArray<float> out32(c.out_bf16 ? 0 : out_elems);
  DeviceArray<bf16> out16(c.out_bf16 ? out_elems : 0);
  DeviceArray<float> lse(static_cast<size_t>(n) * hq);

  gpu::PrefillAttentionParams p;
  p.num_tokens = n;
  p.num_q_heads = hq;
  p.num_kv_heads = hkv;
  p.head_dim = d;
  p.scale = scale;
  p.q = dev_q.get();
  p.kv.k = dev_k.get();
  p.kv.v = dev_v.get();
  p.kv.head_stride = static_cast<int64_t>(cap) * d;
  p.kv.len = len;
  p.out = c.out_bf16 ? static_cast<void*>(out16.get()) : static_cast<void*>(out32.get());
  p.out_bf16 = c.out_bf16;
  p.lse = lse.get();
  p.impl = ImplFor(d);

  std::vector<float> first_out, first_lse;
  for (int rep = 0; rep < (check_repeat ? 2 : 1); ++rep) {
    out32.Poison();
    out16.Poison();
    lse.Poison();
    CUDA_OK(gpu::LaunchPrefillAttention(p, nullptr));
    CUDA_OK(cudaGetLastError());
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<float> got(out_elems);
    if (c.out_bf16) {
      const std::vector<bf16> raw = out16.Download();
      for (size_t i = 0; i < raw.size(); ++i) got[i] = __bfloat162float(raw[i]);
    } else {
      got = out32.Download();
    }
    const std::vector<float> got_lse = lse.Download();
    if (rep == 1) {
      EXPECT_EQ(0, std::memcmp(first_out.data(), got.data(), got.size() * sizeof(float)))
          << "repeated launch differs";
      EXPECT_EQ(0, std::memcmp(first_lse.data(), got_lse.data(), got_lse.size() * sizeof(float)))
          << "repeated launch differs (lse)";
      break;
    }
    first_out = got;
    first_lse = got_lse;

    size_t non_finite = 0;
    for (float x : got) non_finite += std::isfinite(x) ? 0 : 1;
    for (float x : got_lse) non_finite += std::isfinite(x) ? 0 : 1;
    EXPECT_EQ(non_finite, 0u) << "unwritten or NaN outputs";

    // Reference, one query at a time: query t sees rows [0, past + t].
    double num = 0.0, den = 0.0, lse_err = 0.0;
    int worst_t = -1;
    std::vector<float> ref_out(static_cast<size_t>(hq) * d), ref_lse(hq);
    for (const int t : CheckedQueries(n)) {
      const AttentionShape shape{1, hq, hkv, d, scale};
      AttentionKeys keys;
      keys.kv = KvSlice{k.ref.data(), v.ref.data(), static_cast<size_t>(cap) * d, len};
      keys.causal_offset = c.past + t;
      AttentionPartial(shape, q.ref.data() + static_cast<size_t>(t) * hq * d, keys, ref_out.data(),
                       ref_lse.data());
      const float* row = got.data() + static_cast<size_t>(t) * hq * d;
      for (size_t i = 0; i < ref_out.size(); ++i) {
        num += (row[i] - ref_out[i]) * static_cast<double>(row[i] - ref_out[i]);
        den += ref_out[i] * static_cast<double>(ref_out[i]);
      }
      for (int h = 0; h < hq; ++h) {
        const double ref = ref_lse[h];
        const double err =
            std::abs(got_lse[static_cast<size_t>(t) * hq + h] - ref) / (1.0 + std::abs(ref));
        if (!(err <= lse_err)) worst_t = t;  // NaN-safe: a NaN error is recorded as worst
        lse_err = std::isnan(err) ? err : std::max(lse_err, err);
      }
    }
    ASSERT_GT(den, 0.0);
    EXPECT_LE(std::sqrt(num / den), 1e-2);
    EXPECT_LE(lse_err, 1e-3) << "worst query " << worst_t;
  }
}

TEST_P(PrefillAttention, SweepHeadDimGroupLengthPast) {
  uint64_t seed = 1;
  for (const int d : {64, 128}) {
    for (const int group : {1, 4, 8}) {
      const int hkv = group == 1 ? 2 : 1;  // Hq = 2, 4 or 8: keeps the CPU reference cheap
      for (const int n : {1, 17, 64, 129, 1000, 4096}) {
        for (const int past : {0, 100, 3000}) {
          RunCase({d, group, hkv, n, past, (seed & 1) != 0}, seed);
          ++seed;
        }
      }
    }
  }
}

// Head dim 96 (12 chunks a row, the d = 96 swizzle) and groups that are no power of two (the
// kernel is per query head: qh / G picks the KV head).
TEST_P(PrefillAttention, HeadDim96AndOddGroups) {
  uint64_t seed = 3001;
  for (const int n : {1, 17, 129, 1000}) {
    for (const int past : {0, 100, 3000}) {
      RunCase({96, 1, 2, n, past, (seed & 1) != 0}, seed);
      ++seed;
    }
  }
  RunCase({96, 3, 2, 200, 37, false}, 3101, /*check_repeat=*/true);
  RunCase({128, 5, 2, 130, 64, true}, 3102);
  RunCase({64, 6, 1, 300, 1000, false}, 3103);
  RunCase({96, 7, 1, 65, 0, true}, 3104);
  RunCase({128, 16, 1, 140, 200, false}, 3105);
  RunCase({96, 16, 1, 64, 129, true}, 3106);
}

TEST_P(PrefillAttention, MoreKvHeadsAndRepeatable) {
  // Several KV heads of several query heads each: head strides and GQA indexing.
  RunCase({128, 4, 3, 200, 37, false}, 1001, /*check_repeat=*/true);
  RunCase({64, 2, 4, 65, 63, true}, 1002, /*check_repeat=*/true);
}

// Non-causal mode over a fixed context with per-KV-head row counts (head_len, the compacted kept
// rows of a squeezed selection): every query sees rows [0, lens[h]) of KV head h; rows past it
// are NaN. A head with no rows must give zero outputs and lse -inf. Same tolerances as above.
// gather: the keys are read through a row index (a squeezed selection's kept rows in place): key
// r of head h is storage row row_index[h][r], a random injective map into twice the rows; the
// storage rows no key maps to are NaN.
void RunFixedCase(int d, int group, int n, const std::vector<int>& lens, uint64_t seed,
                  bool gather = false) {
  SCOPED_TRACE(::testing::Message() << "fixed d=" << d << " G=" << group << " n=" << n
                                    << " heads=" << lens.size() << " gather=" << gather);
  Rng rng(seed);
  const int hkv = static_cast<int>(lens.size()), hq = hkv * group;
  const int max_len = *std::max_element(lens.begin(), lens.end());
  const int cap = (max_len + 5 + 7) / 8 * 8;
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  Bf16Data q(static_cast<size_t>(n) * hq * d);
  for (size_t i = 0; i < q.dev.size(); ++i) q.Set(i, 3.0f * rng.Uniform());
  Bf16Data k, v;
  FillKv(hkv, cap, d, lens, &rng, &k, &v);
  // Gathered: storage of 2 * cap rows per head, key r at row_index[h * cap + r].
  const int storage = gather ? 2 * cap : cap;
  std::vector<int32_t> row_index;
  Bf16Data ks, vs;
  if (gather) {
    ks.Resize(static_cast<size_t>(hkv) * storage * d);
    vs.Resize(ks.dev.size());
    for (size_t i = 0; i < ks.dev.size(); ++i) {
      ks.SetNaN(i);
      vs.SetNaN(i);
    }
    row_index.assign(static_cast<size_t>(hkv) * cap, 0);
    for (int h = 0; h < hkv; ++h) {
      std::vector<int32_t> perm(storage);
      for (int i = 0; i < storage; ++i) perm[i] = i;
      for (int i = storage - 1; i > 0; --i) {
        std::swap(perm[i], perm[static_cast<int>(rng.Next() % static_cast<uint64_t>(i + 1))]);
      }
      for (int r = 0; r < cap; ++r) {
        row_index[static_cast<size_t>(h) * cap + r] = perm[r];
        if (r >= lens[h]) continue;
        for (int i = 0; i < d; ++i) {
          const size_t from = (static_cast<size_t>(h) * cap + r) * d + i;
          const size_t to = (static_cast<size_t>(h) * storage + perm[r]) * d + i;
          ks.Set(to, k.ref[from]);
          vs.Set(to, v.ref[from]);
        }
      }
    }
  }
  DeviceArray<bf16> dev_q(q.dev), dev_k(gather ? ks.dev : k.dev), dev_v(gather ? vs.dev : v.dev);
  DeviceArray<int32_t> dev_len(std::vector<int32_t>(lens.begin(), lens.end()));
  DeviceArray<int32_t> dev_rows(row_index);
  DeviceArray<float> out(static_cast<size_t>(n) * hq * d), lse(static_cast<size_t>(n) * hq);
  out.Poison();
  lse.Poison();
  gpu::PrefillAttentionParams p;
  p.num_tokens = n;
  p.num_q_heads = hq;
  p.num_kv_heads = hkv;
  p.head_dim = d;
  p.scale = scale;
  p.q = dev_q.get();
  p.kv.k = dev_k.get();
  p.kv.v = dev_v.get();
  p.kv.head_stride = static_cast<int64_t>(storage) * d;
  p.kv.len = max_len;
  p.out = out.get();
  p.lse = lse.get();
  p.causal = false;
  p.head_len = dev_len.get();
  p.impl = ImplFor(d);
  if (gather) {
    p.row_index = dev_rows.get();
    p.row_index_stride = cap;
  }
  CUDA_OK(gpu::LaunchPrefillAttention(p, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  const std::vector<float> got = out.Download(), got_lse = lse.Download();

  double num = 0.0, den = 0.0, lse_err = 0.0;
  size_t bad = 0;
  std::vector<float> ref_out(static_cast<size_t>(group) * d), ref_lse(group);
  for (const int t : CheckedQueries(n)) {
    for (int h = 0; h < hkv; ++h) {
      const float* row = got.data() + (static_cast<size_t>(t) * hq + h * group) * d;
      const float* row_lse = got_lse.data() + static_cast<size_t>(t) * hq + h * group;
      if (lens[h] == 0) {
        for (int i = 0; i < group * d; ++i) bad += row[i] != 0.0f;
        constexpr float kNegInf = -std::numeric_limits<float>::infinity();
        for (int g = 0; g < group; ++g) bad += row_lse[g] != kNegInf;
        continue;
      }
      const AttentionShape shape{1, group, 1, d, scale};
      AttentionKeys keys;
      keys.kv = KvSlice{k.ref.data() + static_cast<size_t>(h) * cap * d,
                        v.ref.data() + static_cast<size_t>(h) * cap * d,
                        static_cast<size_t>(cap) * d, lens[h]};
      keys.causal_offset = -1;
      AttentionPartial(shape, q.ref.data() + (static_cast<size_t>(t) * hq + h * group) * d, keys,
                       ref_out.data(), ref_lse.data());
      for (size_t i = 0; i < ref_out.size(); ++i) {
        bad += !std::isfinite(row[i]);
        num += (row[i] - ref_out[i]) * static_cast<double>(row[i] - ref_out[i]);
        den += ref_out[i] * static_cast<double>(ref_out[i]);
      }
      for (int g = 0; g < group; ++g) {
        const double err = std::abs(row_lse[g] - ref_lse[g]) / (1.0 + std::abs(ref_lse[g]));
        lse_err = std::isnan(err) ? err : std::max(lse_err, err);
      }
    }
  }
  EXPECT_EQ(bad, 0u) << "non-finite outputs, or a head without rows not giving 0 / -inf";
  ASSERT_GT(den, 0.0);
  EXPECT_LE(std::sqrt(num / den), 1e-2);
  EXPECT_LE(lse_err, 1e-3);
}

TEST_P(PrefillAttention, FixedContextPerHeadLengths) {
  RunFixedCase(128, 4, 1000, {3000, 65, 1, 0, 4097}, 2001);  // n 1000 < 4097 rows, and a 1-row head
  RunFixedCase(64, 8, 300, {17, 200}, 2002);                 // n > rows of both heads
  RunFixedCase(128, 1, 16, {129, 128, 127}, 2003);           // one query tile, tile-edge lengths
  RunFixedCase(96, 3, 200, {700, 0, 64}, 2004);              // d = 96, an odd group
  RunFixedCase(96, 7, 40, {129, 1000}, 2005);
  RunFixedCase(128, 4, 300, {1000, 129, 0}, 2006, /*gather=*/true);
  RunFixedCase(64, 2, 130, {257, 64}, 2007, /*gather=*/true);
  RunFixedCase(96, 3, 70, {300}, 2008, /*gather=*/true);
}

TEST_P(PrefillAttention, NoLseAndInvalidArguments) {
  // lse == nullptr is allowed and still writes out.
  const int n = 70, hq = 4, d = 128;
  std::vector<bf16> host(static_cast<size_t>(n) * hq * d);
  Rng rng(7);
  for (bf16& x : host) x = __float2bfloat16_rn(rng.Uniform());
  DeviceArray<bf16> q(host), k(host), v(host);  // K/V: 1 head of n rows (a prefix of host)
  DeviceArray<float> out(host.size());
  out.Poison();
  gpu::PrefillAttentionParams p;
  p.num_tokens = n;
  p.num_q_heads = hq;
  p.num_kv_heads = 1;
  p.head_dim = d;
  p.scale = 0.1f;
  p.q = q.get();
  p.kv.k = k.get();
  p.kv.v = v.get();
  p.kv.head_stride = static_cast<int64_t>(n) * d;
  p.kv.len = n;
  p.out = out.get();
  p.impl = g_impl;
  CUDA_OK(gpu::LaunchPrefillAttention(p, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  for (float x : out.Download()) ASSERT_TRUE(std::isfinite(x));

  gpu::PrefillAttentionParams bad = p;
  bad.head_dim = 80;  // unsupported (64, 96 and 128 are)
  EXPECT_EQ(gpu::LaunchPrefillAttention(bad, nullptr), cudaErrorInvalidValue);
  bad = p;
  bad.num_q_heads = 3;  // not a multiple of Hkv = 2
  bad.num_kv_heads = 2;
  EXPECT_EQ(gpu::LaunchPrefillAttention(bad, nullptr), cudaErrorInvalidValue);
  bad = p;
  bad.kv.len = n - 1;  // fewer rows than new tokens
  EXPECT_EQ(gpu::LaunchPrefillAttention(bad, nullptr), cudaErrorInvalidValue);
  bad = p;
  bad.kv.head_stride = 12;  // not a multiple of 8 elements
  EXPECT_EQ(gpu::LaunchPrefillAttention(bad, nullptr), cudaErrorInvalidValue);
  bad = p;
  bad.head_dim = 96;  // no wgmma kernel for d = 96: asked for explicitly, refused
  bad.impl = gpu::PrefillImpl::kWgmma;
  EXPECT_EQ(gpu::LaunchPrefillAttention(bad, nullptr), cudaErrorInvalidValue);
  bad = p;
  bad.num_tokens = 0;  // no-op
  EXPECT_EQ(gpu::LaunchPrefillAttention(bad, nullptr), cudaSuccess);
}

INSTANTIATE_TEST_SUITE_P(Kernels, PrefillAttention,
                         ::testing::Values(gpu::PrefillImpl::kMmaSync, gpu::PrefillImpl::kWgmma,
                                           gpu::PrefillImpl::kWgmmaCpAsync),
                         [](const ::testing::TestParamInfo<gpu::PrefillImpl>& info) {
                           switch (info.param) {
                             case gpu::PrefillImpl::kWgmma:
                               return "Wgmma";
                             case gpu::PrefillImpl::kWgmmaCpAsync:
                               return "WgmmaCpAsync";
                             default:
                               return "MmaSync";
                           }
                         });

}  // namespace
}  // namespace squeeze
