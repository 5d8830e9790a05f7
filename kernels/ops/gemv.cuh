// Skinny matrix products for decode: y[m, n] = x[m, k] . w[n, k]^T (+ y) with m <= 4 rows of
// fp32 activations and a bf16 weight matrix in the Hugging Face [out, in] layout. Decode at
// small batch is a stream over the weights; this kernel reads every weight byte once with
// 16-byte non-caching loads (several in flight per lane), keeps x rounded to bf16 (as the GEMM
// path rounds its input) in shared memory and accumulates in fp32, so it runs close to the
// memory bandwidth without a separate conversion kernel. CPU reference: CpuBackend::MatMul and
// the Backend::NormMatMuls / SiluMulMatMul defaults (engine/backend/backend.h); tested against a
// double-precision reference on the same bf16-rounded inputs in tests/gpu/gemv_test.cc.
// Plain C++ (includable from .cc files); the kernel lives in gemv.cu.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "kernels/common/types.cuh"

namespace squeeze::gpu {

// Largest m LaunchGemvBf16 / LaunchGemv take.
constexpr int kGemvMaxRows = 4;
// Most weight matrices one LaunchGemv streams (q/k/v of attention, gate/up of the MLP).
constexpr int kGemvMaxOutputs = 3;

// How the kernel forms its input rows (each rounded to bf16 before the products).
enum class GemvInput {
  kPlain,    // x
  kRmsNorm,  // norm_weight * (x * rsqrt(mean(x^2) + eps)), per row (Llama RMSNorm, in fp32)
  kSiluMul,  // silu(x) * x2 elementwise (SwiGLU gate and up)
};

struct GemvOutput {
  const bf16* w = nullptr;  // [n, k], 16-byte aligned
  float* y = nullptr;       // [m, n]; must not overlap any input
  int n = 0;
};

// One launch computing y_j[m, n_j] (+)= in(x)[m, k] . w_j[n_j, k]^T for up to kGemvMaxOutputs
// matrices that share the input: the warps stream the concatenated rows of all w_j, so three
// small projections cost one launch and fill the GPU like one larger one.
struct GemvParams {
  const float* x = nullptr;            // [m, k] fp32, 16-byte aligned
  const float* x2 = nullptr;           // kSiluMul: the `up` rows [m, k], 16-byte aligned
  const float* norm_weight = nullptr;  // kRmsNorm: [k], 16-byte aligned
  float eps = 0.0f;                    // kRmsNorm
  GemvInput input = GemvInput::kPlain;
  GemvOutput out[kGemvMaxOutputs];
  int num_outputs = 0;
  int m = 0;
  int k = 0;
  bool accumulate = false;  // y += instead of y =
};

// Whether LaunchGemvBf16 supports this shape: 1 <= m <= kGemvMaxRows, n >= 1, k a multiple
// of 8, and x fitting shared memory as bf16 (m * k * 2 bytes <= 96 KiB).
bool GemvSupported(int m, int n, int k);

// y[i, j] = sum_t bf16(x[i, t]) * w[j, t] (fp32 accumulation), or y[i, j] += ... when
// `accumulate`. x: [m, k] fp32 and w: [n, k] bf16, both 16-byte aligned; y: [m, n] fp32, must
// not overlap x. cudaErrorInvalidValue when !GemvSupported(m, n, k), a pointer is null or
// misaligned. Never allocates or synchronises. Not thread-safe on first use per m (it sets the
// kernel's shared-memory limit); the engine calls it from one thread.
cudaError_t LaunchGemvBf16(const float* x, const bf16* w, float* y, int m, int n, int k,
                           bool accumulate, cudaStream_t stream);

// The general form: input transform and up to kGemvMaxOutputs matrices. Same contract as
// LaunchGemvBf16 (every output shape must satisfy GemvSupported(m, n_j, k)).
cudaError_t LaunchGemv(const GemvParams& params, cudaStream_t stream);

}  // namespace squeeze::gpu
