// The decode GEMV kernels (kernels/ops/gemv.cu: CUDA cores for m <= 4, tensor cores with split K
// up to 64 rows) against a double-precision reference on the same bf16-rounded inputs: random x
// and w (never zeros), outputs poisoned first, NaN checked, error ||y - ref|| / ||ref|| <= 1e-5
// (fp32 accumulation of up to 14336 products).
#include "kernels/ops/gemv.cuh"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <memory>
#include <vector>

#include "tests/gpu/gpu_test_util.h"

namespace squeeze {
namespace {

using gpu_testing::Bf16Data;
using gpu_testing::DeviceArray;
using gpu_testing::Rng;

// Row counts of the tests: the CUDA-core kernel (1..4) and the tensor-core one (5..64, batch
// tiles of 8 full and partial); m = 4 takes the tensor cores where x does not fit shared memory.
constexpr int kRowCounts[] = {1, 2, 3, 4, 5, 8, 13, 32, 64};

// LaunchGemv with the workspace and zeroed counters it asks for; the counters must be zero again
// afterwards (the next launch relies on it).
cudaError_t Launch(gpu::GemvParams p) {
  const size_t bytes = gpu::GemvWorkspaceBytes(p);
  DeviceArray<char> ws(std::max<size_t>(bytes, 16));
  DeviceArray<unsigned int> counters(gpu::kGemvCounters);
  counters.Upload(std::vector<unsigned int>(gpu::kGemvCounters, 0u));
  p.workspace = ws.get();
  p.counters = counters.get();
  const cudaError_t err = gpu::LaunchGemv(p, nullptr);
  if (err != cudaSuccess) return err;
  if (const cudaError_t sync = cudaDeviceSynchronize(); sync != cudaSuccess) return sync;
  const std::vector<unsigned int> left = counters.Download();
  EXPECT_EQ(std::count(left.begin(), left.end(), 0u), gpu::kGemvCounters);
  return cudaSuccess;
}

gpu::GemvParams Plain(const float* x, const gpu::bf16* w, float* y, int m, int n, int k,
                      bool accumulate) {
  gpu::GemvParams p;
  p.x = x;
  p.out[0] = {w, y, n};
  p.num_outputs = 1;
  p.m = m;
  p.k = k;
  p.accumulate = accumulate;
  return p;
}

TEST(Gemv, MatchesReferenceOverShapes) {
  Rng rng(11);
  const std::vector<std::array<int, 2>> small = {{1, 8},        {7, 64},      {1024, 4096},
                                                 {4099, 4096},  {300, 768},   {8193, 256},
                                                 {4096, 14336}, {16384, 4096}};
  // Tensor cores: partial row tiles, several outputs' worth of tiles, split K (k = 14336 and
  // 4096 with few tiles), k a multiple of 32 but not 64.
  const std::vector<std::array<int, 2>> batched = {{7, 64},      {300, 768},  {1000, 4096},
                                                   {384, 14336}, {8193, 256}, {130, 96}};
  for (int m : kRowCounts) {
    for (const auto& [n, k] : m <= 4 ? small : batched) {
      if (!gpu::GemvSupported(m, n, k)) continue;
      for (bool accumulate : {false, true}) {
        SCOPED_TRACE(testing::Message()
                     << "m " << m << " n " << n << " k " << k << " accumulate " << accumulate);
        std::vector<float> x(static_cast<size_t>(m) * k), y0(static_cast<size_t>(m) * n);
        for (float& v : x) v = rng.Uniform() * 2.0f;
        for (float& v : y0) v = rng.Uniform();
        Bf16Data w(static_cast<size_t>(n) * k);
        for (size_t i = 0; i < w.dev.size(); ++i) w.Set(i, rng.Uniform() * 0.1f);
        std::vector<double> ref(static_cast<size_t>(m) * n);
        for (int i = 0; i < m; ++i) {
          for (int j = 0; j < n; ++j) {
            double s = accumulate ? y0[static_cast<size_t>(i) * n + j] : 0.0;
            for (int t = 0; t < k; ++t) {
              const float xr =
                  __bfloat162float(__float2bfloat16_rn(x[static_cast<size_t>(i) * k + t]));
              s += static_cast<double>(xr) * w.ref[static_cast<size_t>(j) * k + t];
            }
            ref[static_cast<size_t>(i) * n + j] = s;
          }
        }
        DeviceArray<float> dx(x);
        DeviceArray<gpu::bf16> dw(w.dev);
        DeviceArray<float> dy(y0.size());
        if (accumulate) {
          dy.Upload(y0);
        } else {
          dy.Poison();
        }
        CUDA_OK(Launch(Plain(dx.get(), dw.get(), dy.get(), m, n, k, accumulate)));
        const std::vector<float> y = dy.Download();
        if (!accumulate) {  // the split-K sums are added in a fixed order: same bits again
          dy.Poison();
          CUDA_OK(Launch(Plain(dx.get(), dw.get(), dy.get(), m, n, k, accumulate)));
          EXPECT_TRUE(dy.Download() == y) << "not deterministic";
        }
        double num = 0.0, den = 0.0;
        size_t nan = 0;
        for (size_t i = 0; i < y.size(); ++i) {
          nan += !std::isfinite(y[i]);
          num += (y[i] - ref[i]) * (y[i] - ref[i]);
          den += ref[i] * ref[i];
        }
        EXPECT_EQ(nan, 0u);
        EXPECT_LE(std::sqrt(num / den), 1e-5);
      }
    }
  }
}

// The fused forms: RMSNorm or SiLU*up formed in the prologue, up to three matrices per launch.
// Reference: the input transform in fp32 on the CPU (the backend's RmsNorm / SiluMul formulas),
// rounded to bf16, products in double. Tolerance 1e-4: the kernel sums the squares in another
// order, so its 1/rms can differ in the last fp32 bit, which rounds some normalised inputs to
// the neighbouring bf16 value (2^-8 relative each); measured 3.5e-5 on the H200.
TEST(Gemv, FusedInputsAndSeveralOutputs) {
  Rng rng(12);
  const std::vector<std::array<int, 4>> small = {
      {4096, 1024, 1024, 4096}, {7, 64, 9, 64}, {4096, 0, 0, 14336}};
  const std::vector<std::array<int, 4>> batched = {
      {1000, 136, 9, 4096}, {7, 64, 9, 64}, {384, 0, 0, 14336}};
  for (gpu::GemvInput mode :
       {gpu::GemvInput::kPlain, gpu::GemvInput::kRmsNorm, gpu::GemvInput::kSiluMul}) {
    for (int m : {1, 2, 3, 4, 8, 33}) {
      for (const auto& shape : m <= 4 ? small : batched) {
        const int k = shape[3];
        if (!gpu::GemvSupported(m, shape[0], k)) continue;  // x does not fit shared memory
        const bool accumulate = mode == gpu::GemvInput::kSiluMul;
        SCOPED_TRACE(testing::Message()
                     << "mode " << static_cast<int>(mode) << " m " << m << " k " << k);
        std::vector<float> x(static_cast<size_t>(m) * k), x2(x.size()), norm(k);
        for (float& v : x) v = rng.Uniform() * 3.0f;
        for (float& v : x2) v = rng.Uniform();
        for (float& v : norm) v = 1.0f + 0.2f * rng.Uniform();
        const float eps = 1e-5f;
        // The transformed input, as the unfused kernels compute it in fp32, then bf16.
        std::vector<float> in(x.size());
        for (int i = 0; i < m; ++i) {
          double ss = 0.0;
          for (int t = 0; t < k; ++t) {
            const double v = x[static_cast<size_t>(i) * k + t];
            ss += v * v;
          }
          const float inv_rms = 1.0f / std::sqrt(static_cast<float>(ss) / k + eps);
          for (int t = 0; t < k; ++t) {
            const size_t e = static_cast<size_t>(i) * k + t;
            float v = x[e];
            if (mode == gpu::GemvInput::kRmsNorm) v = norm[t] * (x[e] * inv_rms);
            if (mode == gpu::GemvInput::kSiluMul) v = x[e] / (1.0f + std::exp(-x[e])) * x2[e];
            in[e] = __bfloat162float(__float2bfloat16_rn(v));
          }
        }
        gpu::GemvParams p;
        DeviceArray<float> dx(x), dx2(x2), dnorm(norm);
        p.x = dx.get();
        p.x2 = mode == gpu::GemvInput::kSiluMul ? dx2.get() : nullptr;
        p.norm_weight = mode == gpu::GemvInput::kRmsNorm ? dnorm.get() : nullptr;
        p.eps = eps;
        p.input = mode;
        p.m = m;
        p.k = k;
        p.accumulate = accumulate;
        std::vector<Bf16Data> ws;
        std::vector<std::unique_ptr<DeviceArray<gpu::bf16>>> dws;
        std::vector<std::unique_ptr<DeviceArray<float>>> dys;
        std::vector<std::vector<float>> y0s;
        ws.reserve(3);
        dws.reserve(3);
        dys.reserve(3);
        for (int j = 0; j < 3 && shape[j] > 0; ++j) {
          const int n = shape[j];
          ws.emplace_back(static_cast<size_t>(n) * k);
          for (size_t i = 0; i < ws.back().dev.size(); ++i) ws.back().Set(i, rng.Uniform() * 0.1f);
          dws.push_back(std::make_unique<DeviceArray<gpu::bf16>>(ws.back().dev));
          y0s.emplace_back(static_cast<size_t>(m) * n);
          for (float& v : y0s.back()) v = rng.Uniform();
          dys.push_back(std::make_unique<DeviceArray<float>>(y0s.back().size()));
          if (accumulate) {
            dys.back()->Upload(y0s.back());
          } else {
            dys.back()->Poison();
          }
          p.out[j] = {dws.back()->get(), dys.back()->get(), n};
          p.num_outputs = j + 1;
        }
        CUDA_OK(Launch(p));
        for (int j = 0; j < p.num_outputs; ++j) {
          const int n = shape[j];
          const std::vector<float> y = dys[j]->Download();
          double num = 0.0, den = 0.0;
          size_t nan = 0;
          for (int i = 0; i < m; ++i) {
            for (int r = 0; r < n; ++r) {
              double ref = accumulate ? y0s[j][static_cast<size_t>(i) * n + r] : 0.0;
              for (int t = 0; t < k; ++t) {
                ref += double{in[static_cast<size_t>(i) * k + t]} *
                       ws[j].ref[static_cast<size_t>(r) * k + t];
              }
              const float got = y[static_cast<size_t>(i) * n + r];
              nan += !std::isfinite(got);
              num += (got - ref) * (got - ref);
              den += ref * ref;
            }
          }
          EXPECT_EQ(nan, 0u) << "output " << j;
          EXPECT_LE(std::sqrt(num / den), 1e-4) << "output " << j;
        }
      }
    }
  }
}

TEST(Gemv, RejectsUnsupportedShapes) {
  EXPECT_FALSE(gpu::GemvSupported(5, 16, 16));  // tensor cores: k a multiple of 32
  EXPECT_FALSE(gpu::GemvSupported(1, 16, 12));
  EXPECT_FALSE(gpu::GemvSupported(65, 16, 4096));
  EXPECT_TRUE(gpu::GemvSupported(4, 16, 16384));  // tensor cores: x does not fit shared memory
  EXPECT_EQ(gpu::LaunchGemv(Plain(nullptr, nullptr, nullptr, 1, 16, 16, false), nullptr),
            cudaErrorInvalidValue);
  gpu::GemvParams p;  // no outputs
  EXPECT_EQ(gpu::LaunchGemv(p, nullptr), cudaErrorInvalidValue);
  // The tensor-core path without its workspace.
  DeviceArray<float> x(8 * 64), y(8 * 16);
  DeviceArray<gpu::bf16> w(16 * 64);
  const gpu::GemvParams batched = Plain(x.get(), w.get(), y.get(), 8, 16, 64, false);
  ASSERT_GT(gpu::GemvWorkspaceBytes(batched), 0u);
  EXPECT_EQ(gpu::LaunchGemv(batched, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace squeeze
