// Row gathers of the forward: the embedding lookup, the pick of each sequence's last hidden row,
// and a copy of rows scattered over memory. CPU reference: CpuBackend::Embed / GatherRows
// (engine/backend/cpu/cpu_backend.h); tested in tests/gpu/model_ops_test.cc (LaunchCopyRows, a
// plain copy: through the batched squeezed decode of tests/gpu/cuda_model_test.cc,
// BatchedSqueezedDecodeEqualsEachAlone).
// Conventions (argument checks, alignment, math): kernels/ops/elementwise.cuh.
// Plain C++ (includable from .cc files); the kernels live in rows.cu.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/common/types.cuh"

namespace squeeze::gpu {

// Embedding lookup from a bf16 table: out[i, :] = float(table[ids[i], :]) for i < n (exact).
//   table: [vocab, dim] bf16;  ids: [n] int32, each in [0, vocab);  out: [n, dim] fp32.
// out must not overlap table or ids. One CTA per output row.
cudaError_t LaunchEmbedRows(const bf16* table, const int32_t* ids, int n, int dim, float* out,
                            cudaStream_t stream);

// fp32 row gather (CpuBackend::GatherRows): out[i, :] = src[ids[i], :] for i < n (exact copy).
//   src: [rows, dim];  ids: [n] valid row indices;  out: [n, dim], must not overlap src or ids.
cudaError_t LaunchGatherRowsF32(const float* src, const int32_t* ids, int n, int dim, float* out,
                                cudaStream_t stream);

// dst[i][0, row_floats) = src[i][0, row_floats) for i < rows: rows scattered over memory
// (pointer arrays in device memory) copied in one launch, e.g. the queries of the sequences of
// a batched squeezed decode into one contiguous array and their outputs back. Rows must not
// overlap; with row_floats % 4 == 0 every pointer must be 16-byte aligned.
cudaError_t LaunchCopyRows(const float* const* src, float* const* dst, int rows, int row_floats,
                           cudaStream_t stream);

}  // namespace squeeze::gpu
