// fp32 -> bf16 conversion of activations and weights (round to nearest even). CPU reference:
// the host __float2bfloat16_rn; tested in tests/gpu/model_ops_test.cc.
// Conventions (argument checks, alignment, math): kernels/ops/elementwise.cuh.
// Plain C++ (includable from .cc files); the kernels live in convert.cu.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/common/types.cuh"

namespace squeeze::gpu {

// dst[i] = __float2bfloat16_rn(src[i]) (round to nearest even, NaN -> canonical 0x7FFF; bit-exact
// with the host implementation of __float2bfloat16_rn). src and dst must not overlap.
cudaError_t LaunchF32ToBf16(const float* src, bf16* dst, size_t count, cudaStream_t stream);
}  // namespace squeeze::gpu
