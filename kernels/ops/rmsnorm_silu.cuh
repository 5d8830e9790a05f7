// RMSNorm, the SwiGLU gate and the projection biases of the forward. CPU reference:
// CpuBackend::RmsNorm / SiluMul / AddBias (engine/backend/cpu/cpu_backend.h); tested in
// tests/gpu/model_ops_test.cc.
// Conventions (argument checks, alignment, math): kernels/ops/elementwise.cuh.
// Plain C++ (includable from .cc files); the kernels live in rmsnorm_silu.cu.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/common/types.cuh"

namespace squeeze::gpu {

// RMSNorm of each row (CpuBackend::RmsNorm):
//   y[r, i] = weight[i] * (x[r, i] * inv_rms_r),
//   inv_rms_r = 1 / sqrtf(sum_i x[r, i]^2 / dim + eps),
// with the sum of squares accumulated in fp32 by a block reduction (the CPU uses double; they
// differ by ~1e-7 relative). Writes y to out_f32 and/or out_bf16; either may be null, not both.
//   x: [rows, dim];  weight: [dim];  out_f32: [rows, dim], may alias x;  out_bf16: [rows, dim].
// One CTA per row; any dim >= 1 (sized for up to 16384: two passes over the row, the second
// one hitting L1/L2).
cudaError_t LaunchRmsNorm(const float* x, const float* weight, float* out_f32, bf16* out_bf16,
                          int rows, int dim, float eps, cudaStream_t stream);

// out = silu(gate) * up = gate / (1 + expf(-gate)) * up, element-wise, fp32 (CpuBackend::SiluMul).
// Writes out_f32 and/or out_bf16; either may be null, not both. out_f32 may alias gate or up.
//   gate, up, out_f32, out_bf16: [count].
cudaError_t LaunchSiluMul(const float* gate, const float* up, float* out_f32, bf16* out_bf16,
                          size_t count, cudaStream_t stream);

// y[r, i] += bias[i] for every row r (Qwen2's q/k/v projection biases; CpuBackend::AddBias).
//   y: [rows, cols];  bias: [cols].
cudaError_t LaunchAddBias(float* y, const float* bias, int rows, int cols, cudaStream_t stream);

}  // namespace squeeze::gpu
