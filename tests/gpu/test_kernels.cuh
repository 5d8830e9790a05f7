// Kernels only the GPU tests use: a greedy argmax (checked against std::max_element) and the bf16
// -> fp32 conversion that reads device tensors back for comparison. Plain C++ header; kernels in
// test_kernels.cu (built into the GPU tests only).
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace squeeze::gpu {

using bf16 = __nv_bfloat16;

// dst[i] = float(src[i]) (exact). src and dst must not overlap.
cudaError_t LaunchBf16ToF32(const bf16* src, float* dst, size_t count, cudaStream_t stream);

// Greedy pick: ids[r] = argmax_j logits[r, j], ties to the lowest index (as std::max_element;
// a row of all -inf gives 0). Input must be NaN-free.
//   logits: [rows, vocab] fp32;  ids: [rows] int32.
// One 1024-thread CTA per row; any vocab >= 1 (sized for up to 256K).
cudaError_t LaunchArgmax(const float* logits, int rows, int vocab, int32_t* ids,
                         cudaStream_t stream);

}  // namespace squeeze::gpu
