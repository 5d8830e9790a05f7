// Skinny matrix products for decode: y[m, n] = x[m, k] . w[n, k]^T (+ y) with m <= 64 rows of
// fp32 activations and a bf16 weight matrix in the Hugging Face [out, in] layout. Decode is a
// stream over the weights at any batch a step holds; both kernels read every weight byte once
// with 16-byte non-caching loads (several in flight per lane), use x rounded to bf16 (as the GEMM
// path rounds its input) and accumulate in fp32:
//   - m <= 4 with x fitting shared memory: CUDA-core dot products, x staged per CTA (no
//     workspace);
//   - otherwise (batched decode, 5..64 rows): tensor cores (mma.sync m16n8k16 with the weight
//     rows as A and the batch as N, so 16 output features x 8 sequences per instruction), x
//     formed once in bf16 by a prologue launch, K split over CTAs when the matrix has too few
//     row tiles to fill the GPU, the splits summed in a fixed order by the last CTA of each tile
//     (deterministic). Needs a workspace and zeroed arrival counters (GemvParams).
// CPU reference: CpuBackend::MatMul and the Backend::NormMatMuls / SiluMulMatMul defaults
// (engine/backend/backend.h); tested against a double-precision reference on the same
// bf16-rounded inputs in tests/gpu/gemv_test.cc.
// Plain C++ (includable from .cc files); the kernel lives in gemv.cu.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "kernels/common/types.cuh"

namespace squeeze::gpu {

// Largest m LaunchGemv takes.
constexpr int kGemvMaxRows = 64;
// Arrival counters a launch may use (GemvParams::counters).
constexpr int kGemvCounters = 1024;
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
  // The tensor-core path's scratch (GemvWorkspaceBytes; 16-byte aligned, contents don't matter)
  // and kGemvCounters arrival counters, zero before the launch and left zero after it (the
  // caller zeroes them once). Unused (may be null) when GemvWorkspaceBytes is 0.
  void* workspace = nullptr;
  unsigned int* counters = nullptr;
};

// Whether LaunchGemv supports this shape: 1 <= m <= kGemvMaxRows, n >= 1, k >= 8 and a multiple
// of 8; beyond the CUDA-core kernel (m <= 4 and m * k * 2 bytes <= 96 KiB) k a multiple of 32.
bool GemvSupported(int m, int n, int k);

// Bytes of GemvParams::workspace a launch with these shapes (m, k, outputs) needs on the current
// device; 0 when the CUDA-core kernel takes it.
size_t GemvWorkspaceBytes(const GemvParams& params);

// One launch (two on the tensor-core path: the input prologue and the products) computing
// y_j[m, n_j] (+)= in(x)[m, k] . w_j[n_j, k]^T. x, x2, norm_weight and every w_j 16-byte aligned;
// y_j must not overlap any input. cudaErrorInvalidValue when a shape is not GemvSupported(m, n_j,
// k), a pointer is null or misaligned, or the workspace or counters are missing where needed.
// Never allocates or synchronises. Not thread-safe on first use (it sets kernel attributes and
// caches the SM count); the engine calls it from one thread.
cudaError_t LaunchGemv(const GemvParams& params, cudaStream_t stream);

}  // namespace squeeze::gpu
