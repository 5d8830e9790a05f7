// Deterministic random tensors for random-weight models (benchmarks at real sizes). CPU
// reference: RandomNormalAt below; tested in tests/gpu/model_ops_test.cc.
// Conventions (argument checks, alignment, math): kernels/ops/elementwise.cuh.
// Plain C++ (includable from .cc files); the kernels live in random_fill.cu.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/common/types.cuh"

namespace squeeze::gpu {

// Deterministic normal samples for random-weight models. Element i depends only on (seed, i),
// never on the launch configuration or alignment: elements 2j and 2j + 1 are the Box-Muller pair
// (r cos a, r sin a) of bits = splitmix64(splitmix64(seed) + (j + 1) * 0x9E3779B97F4A7C15), with
// u1 = ((bits >> 40) + 1) / 2^24 in (0, 1], u2 = ((bits >> 16) & 0xFFFFFF) / 2^24,
// r = sqrtf(-2 logf(u1)), a = 2 pi u2 (so |z| <= 5.77). Writes
//   F32:  dst[i] = fmaf(stddev, z_i, mean)
//   Bf16: dst[i] = __float2bfloat16_rn(stddev * z_i)
cudaError_t LaunchFillRandomBf16(bf16* dst, size_t count, uint64_t seed, float stddev,
                                 cudaStream_t stream);
cudaError_t LaunchFillRandomF32(float* dst, size_t count, uint64_t seed, float mean, float stddev,
                                cudaStream_t stream);

// Host version of z_i above (the unit normal before scaling), for building the same random
// tensors on the CPU. Host and device logf/sinf/cosf differ by a few ulp, so host values match
// the device's to ~1e-6 relative, not bit for bit.
float RandomNormalAt(uint64_t seed, uint64_t index);

}  // namespace squeeze::gpu
