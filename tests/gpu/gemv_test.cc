// The decode GEMV kernel (kernels/gemv.cu) against a double-precision reference on the same
// bf16-rounded inputs: random x and w (never zeros), outputs poisoned first, NaN checked,
// error ||y - ref|| / ||ref|| <= 1e-5 (fp32 accumulation of up to 14336 products).
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "kernels/gemv.cuh"
#include "tests/gpu/gpu_test_util.h"

namespace squeeze {
namespace {

using gpu_testing::Bf16Data;
using gpu_testing::DeviceArray;
using gpu_testing::Rng;

TEST(Gemv, MatchesReferenceOverShapes) {
  Rng rng(11);
  const int shapes[][2] = {{1, 8},       {7, 64},       {1024, 4096}, {4099, 4096},
                           {4096, 14336}, {300, 768},   {8193, 256},  {16384, 4096}};
  for (int m = 1; m <= gpu::kGemvMaxRows; ++m) {
    for (const auto& [n, k] : shapes) {
      if (!gpu::GemvSupported(m, n, k)) continue;
      for (bool accumulate : {false, true}) {
        SCOPED_TRACE(testing::Message() << "m " << m << " n " << n << " k " << k
                                        << " accumulate " << accumulate);
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
              const float xr = __bfloat162float(__float2bfloat16_rn(x[static_cast<size_t>(i) * k + t]));
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
        CUDA_OK(gpu::LaunchGemvBf16(dx.get(), dw.get(), dy.get(), m, n, k, accumulate, nullptr));
        CUDA_OK(cudaDeviceSynchronize());
        const std::vector<float> y = dy.Download();
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

TEST(Gemv, RejectsUnsupportedShapes) {
  EXPECT_FALSE(gpu::GemvSupported(5, 16, 16));
  EXPECT_FALSE(gpu::GemvSupported(1, 16, 12));
  EXPECT_FALSE(gpu::GemvSupported(4, 16, 16384));  // x does not fit shared memory
  EXPECT_EQ(gpu::LaunchGemvBf16(nullptr, nullptr, nullptr, 1, 16, 16, false, nullptr),
            cudaErrorInvalidValue);
}

}  // namespace
}  // namespace squeeze
