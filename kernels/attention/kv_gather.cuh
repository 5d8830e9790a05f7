// Gathers selected K/V rows of each KV head into a compact per-head layout. Two uses: the
// fixed-context keys a host-side selector kept (engine/backend/fixed_context.h: mass-based
// and recent-keys selection), so dense attention kernels can run over them; and a registered
// context's resident copy made from the prefill's KV, rows put in cluster order
// (Backend::AdoptContextKv). CPU reference: the rows the selector lists, read in place by
// engine/backend/attention_reference.h, and the host row reorder of BuildSqueezeIndex
// (engine/squeeze/squeeze_index.h); tested through tests/gpu/cuda_model_test.cc
// (AdoptedContextEqualsUploaded: the gathered copy gives the same logits, bit for bit, as the
// uploaded reordered host copy). Plain C++ (includable from .cc files); the kernel lives in
// kv_gather.cu.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/common/types.cuh"

namespace squeeze::gpu {

// For each KV head h < num_kv_heads and i < head_begin[h + 1] - head_begin[h]:
//   dst row i of head h  <-  src row rows[head_begin[h] + i] of head h
// where src row r of head h is at k_src + h * src_head_stride + r * head_dim (same for v) and
// dst row i of head h at k_dst + h * dst_head_stride + i * head_dim. Strides in elements.
//   rows: [head_begin[num_kv_heads]] device int32, valid rows of their head;
//   head_begin: [num_kv_heads + 1] device int32, non-decreasing, head_begin[0] = 0;
//   max_rows: an upper bound on any head's count (sizes the grid).
// head_dim must be a multiple of 8 and all pointers/strides 16-byte aligned (rows are copied as
// 16-byte vectors). Never allocates or synchronises; returns cudaGetLastError().
cudaError_t LaunchGatherKvRows(const bf16* k_src, const bf16* v_src, size_t src_head_stride,
                               const int32_t* rows, const int32_t* head_begin, int num_kv_heads,
                               int max_rows, int head_dim, bf16* k_dst, bf16* v_dst,
                               size_t dst_head_stride, cudaStream_t stream);

}  // namespace squeeze::gpu
