// Merge of two attention partials (see merge_attention.cuh).
#include <algorithm>
#include <climits>
#include <cmath>

#include "kernels/attention/merge_attention.cuh"
#include "kernels/ops/elementwise.cuh"

namespace squeeze::gpu {
namespace {

using namespace elementwise;  // NOLINT: the shared helpers of kernels/ops

// ---- attention merge ---------------------------------------------------------------------------

constexpr int kMergeWarps = 4;

// One warp per row. Every lane reads lse_a[r] before lane 0 overwrites it (__syncwarp orders it).
template <int V>
__global__ void __launch_bounds__(kMergeWarps * 32)
    MergeAttentionKernel(float* out, float* lse_a, const float* other, const float* lse_b, int rows,
                         int d) {
  const int r = blockIdx.x * kMergeWarps + (threadIdx.x >> 5), lane = threadIdx.x & 31;
  if (r >= rows) return;
  const float la = lse_a[r], lb = lse_b[r];
  __syncwarp();
  if (lb == -INFINITY) return;
  float* oa = out + static_cast<size_t>(r) * d;
  const float* ob = other + static_cast<size_t>(r) * d;
  if (la == -INFINITY) {
    for (int i = lane; i < d; i += 32) oa[i] = ob[i];
    if (lane == 0) lse_a[r] = lb;
    return;
  }
  const float mx = fmaxf(la, lb);
  const float wa = expf(la - mx), wb = expf(lb - mx);
  const float inv = 1.0f / (wa + wb);
  // Separately rounded, as the CPU reference: (wa * a + wb * b) * inv.
  auto mix = [&](float a, float b) {
    return __fmul_rn(__fadd_rn(__fmul_rn(wa, a), __fmul_rn(wb, b)), inv);
  };
  if constexpr (V == 4) {
    for (int v = lane; v < d / 4; v += 32) {
      float4 a = reinterpret_cast<const float4*>(oa)[v];
      const float4 b = reinterpret_cast<const float4*>(ob)[v];
      a = make_float4(mix(a.x, b.x), mix(a.y, b.y), mix(a.z, b.z), mix(a.w, b.w));
      reinterpret_cast<float4*>(oa)[v] = a;
    }
  } else {
    for (int i = lane; i < d; i += 32) oa[i] = mix(oa[i], ob[i]);
  }
  if (lane == 0) lse_a[r] = mx + logf(wa + wb);
}

}  // namespace

cudaError_t LaunchMergeAttention(float* out, float* lse_a, const float* other, const float* lse_b,
                                 int rows, int head_dim, cudaStream_t stream) {
  if (rows < 0 || head_dim <= 0) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  if (out == nullptr || lse_a == nullptr || other == nullptr || lse_b == nullptr) {
    return cudaErrorInvalidValue;
  }
  const unsigned blocks = (rows + kMergeWarps - 1) / kMergeWarps;
  if (head_dim % 4 == 0 && Aligned(out, 16) && Aligned(other, 16)) {
    MergeAttentionKernel<4>
        <<<blocks, kMergeWarps * 32, 0, stream>>>(out, lse_a, other, lse_b, rows, head_dim);
  } else {
    MergeAttentionKernel<1>
        <<<blocks, kMergeWarps * 32, 0, stream>>>(out, lse_a, other, lse_b, rows, head_dim);
  }
  return cudaGetLastError();
}

}  // namespace squeeze::gpu
