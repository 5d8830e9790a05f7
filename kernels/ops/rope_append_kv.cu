// RoPE and KV append (see rope_append_kv.cuh).
#include <algorithm>
#include <climits>
#include <cmath>

#include "kernels/common/dispatch.cuh"
#include "kernels/ops/elementwise.cuh"
#include "kernels/ops/rope_append_kv.cuh"

namespace squeeze::gpu {
namespace {

using namespace elementwise;  // NOLINT: the shared helpers of kernels/ops

// ---- RoPE --------------------------------------------------------------------------------------

constexpr int kRopeMaxHalf = 256;
constexpr int kRopeThreads = 256;

// Grid (n): the CTA of token t computes the d/2 angles once into shared memory, then rotates the
// (q_heads + k_heads) * d/2 pairs of the token, consecutive threads on consecutive dims.
__global__ void __launch_bounds__(kRopeThreads)
    RopeKernel(float* q, int q_heads, float* k, int k_heads, const int32_t* positions, int half,
               const float* inv_freq) {
  __shared__ float cos_s[kRopeMaxHalf], sin_s[kRopeMaxHalf];
  const int t = blockIdx.x;
  const float pos = static_cast<float>(positions[t]);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    sincosf(pos * inv_freq[i], &sin_s[i], &cos_s[i]);
  }
  __syncthreads();
  const int d = 2 * half;
  const int pairs = (q_heads + k_heads) * half;
  for (int j = threadIdx.x; j < pairs; j += blockDim.x) {
    const int h = j / half, i = j - h * half;
    float* row = h < q_heads ? q + (static_cast<size_t>(t) * q_heads + h) * d
                             : k + (static_cast<size_t>(t) * k_heads + (h - q_heads)) * d;
    const float x1 = row[i], x2 = row[i + half], c = cos_s[i], s = sin_s[i];
    // Separately rounded products, as the CPU reference computes them.
    row[i] = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
    row[i + half] = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
  }
}

// ---- KV append ---------------------------------------------------------------------------------

// The last of the num_seqs targets (increasing row0) with row0 <= t; 0 when none.
__device__ __forceinline__ int LastSequenceAtOrBefore(const AppendKvTarget* seqs, int num_seqs,
                                                      int t) {
  int lo = 0, hi = num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (seqs[mid].row0 <= t) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Flat over the n * Hkv source rows of head_dim / V vectors each; the source is contiguous, the
// destination row of (t, h) is h * stride + t * d.
template <int V>
__global__ void AppendKvKernel(const float* k_new, const float* v_new, int num_kv_heads, int d,
                               bf16* k_dst, bf16* v_dst, size_t stride, size_t total) {
  const int per_row = d / V;
  for (size_t e = ThreadIndex(); e < total; e += ThreadCount()) {
    const size_t row = e / per_row;  // t * Hkv + h
    const int c = static_cast<int>(e - row * per_row) * V;
    const size_t t = row / num_kv_heads;
    const int h = static_cast<int>(row - t * num_kv_heads);
    const size_t src = row * d + c;
    const size_t dst = h * stride + t * d + c;
    if constexpr (V == 4) {
      *reinterpret_cast<uint2*>(k_dst + dst) = Pack4(*reinterpret_cast<const float4*>(k_new + src));
      *reinterpret_cast<uint2*>(v_dst + dst) = Pack4(*reinterpret_cast<const float4*>(v_new + src));
    } else {
      k_dst[dst] = __float2bfloat16_rn(k_new[src]);
      v_dst[dst] = __float2bfloat16_rn(v_new[src]);
    }
  }
}

// Grid (rows): the CTA of row t finds its sequence (binary search over row0) and converts the
// row's Hkv * d values of k and v; threads over consecutive elements.
__global__ void AppendKvBatchKernel(const float* k_new, const float* v_new, int num_kv_heads, int d,
                                    const AppendKvTarget* seqs, int num_seqs) {
  const int t = blockIdx.x;
  const AppendKvTarget s = seqs[LastSequenceAtOrBefore(seqs, num_seqs, t)];
  const int local = t - s.row0;
  if (local < 0 || local >= s.n) return;  // CTA-uniform
  const size_t src = static_cast<size_t>(t) * num_kv_heads * d;
  for (int e = threadIdx.x; e < num_kv_heads * d; e += blockDim.x) {
    const int h = e / d, c = e - h * d;
    const int64_t dst = h * s.head_stride + static_cast<int64_t>(local) * d + c;
    s.k_dst[dst] = __float2bfloat16_rn(k_new[src + e]);
    s.v_dst[dst] = __float2bfloat16_rn(v_new[src + e]);
  }
}

// ---- RoPE and KV append in one pass ------------------------------------------------------------

// Grid (rows): the CTA of token t computes its angles, rotates its q heads in place and its k
// heads in place, and, when the token belongs to a sequence, writes the rotated k and v rows to
// the sequence's cache. Each thread rotates one (head, i) pair and writes both of its elements,
// so the cache gets exactly the values left in k (the arithmetic of RopeKernel).
__global__ void __launch_bounds__(kRopeThreads)
    RopeAppendKvBatchKernel(float* q, int q_heads, float* k, const float* v, int kv_heads,
                            const int32_t* positions, int half, const float* inv_freq,
                            const AppendKvTarget* seqs, int num_seqs) {
  __shared__ float cos_s[kRopeMaxHalf], sin_s[kRopeMaxHalf];
  const int t = blockIdx.x;
  const float pos = static_cast<float>(positions[t]);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    sincosf(pos * inv_freq[i], &sin_s[i], &cos_s[i]);
  }
  const AppendKvTarget s = seqs[LastSequenceAtOrBefore(seqs, num_seqs, t)];
  const int local = t - s.row0;
  const bool append = local >= 0 && local < s.n;
  __syncthreads();
  const int d = 2 * half;
  const int pairs = (q_heads + kv_heads) * half;
  for (int j = blockIdx.y * blockDim.x + threadIdx.x; j < pairs; j += gridDim.y * blockDim.x) {
    const int h = j / half, i = j - h * half;
    const bool is_k = h >= q_heads;
    const int kh = h - q_heads;
    float* row = is_k ? k + (static_cast<size_t>(t) * kv_heads + kh) * d
                      : q + (static_cast<size_t>(t) * q_heads + h) * d;
    const float x1 = row[i], x2 = row[i + half], c = cos_s[i], sn = sin_s[i];
    const float y1 = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, sn));
    const float y2 = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, sn));
    row[i] = y1;
    row[i + half] = y2;
    if (is_k && append) {
      const int64_t dst = kh * s.head_stride + static_cast<int64_t>(local) * d;
      const float* vrow = v + (static_cast<size_t>(t) * kv_heads + kh) * d;
      s.k_dst[dst + i] = __float2bfloat16_rn(y1);
      s.k_dst[dst + i + half] = __float2bfloat16_rn(y2);
      s.v_dst[dst + i] = __float2bfloat16_rn(vrow[i]);
      s.v_dst[dst + i + half] = __float2bfloat16_rn(vrow[i + half]);
    }
  }
}

}  // namespace

cudaError_t LaunchRopeQK(float* q, int q_heads, float* k, int k_heads, const int32_t* positions,
                         int n, int head_dim, const float* inv_freq, cudaStream_t stream) {
  if (k == nullptr) k_heads = 0;
  if (n < 0 || q_heads <= 0 || (k != nullptr && k_heads <= 0) || head_dim <= 0 ||
      head_dim % 2 != 0 || head_dim / 2 > kRopeMaxHalf ||
      (int64_t{q_heads} + k_heads) * (head_dim / 2) > INT_MAX) {
    return cudaErrorInvalidValue;
  }
  if (n == 0) return cudaSuccess;
  if (q == nullptr || positions == nullptr || inv_freq == nullptr) return cudaErrorInvalidValue;
  RopeKernel<<<n, kRopeThreads, 0, stream>>>(q, q_heads, k, k_heads, positions, head_dim / 2,
                                             inv_freq);
  return cudaGetLastError();
}

cudaError_t LaunchRope(float* x, const int32_t* positions, int n, int heads, int head_dim,
                       const float* inv_freq, cudaStream_t stream) {
  return LaunchRopeQK(x, heads, nullptr, 0, positions, n, head_dim, inv_freq, stream);
}

cudaError_t LaunchAppendKv(const float* k_new, const float* v_new, int n, int num_kv_heads,
                           int head_dim, bf16* k_dst, bf16* v_dst, size_t dst_head_stride,
                           cudaStream_t stream) {
  if (n < 0 || num_kv_heads <= 0 || head_dim <= 0 ||
      (num_kv_heads > 1 && dst_head_stride < static_cast<size_t>(n) * head_dim)) {
    return cudaErrorInvalidValue;
  }
  if (n == 0) return cudaSuccess;
  if (k_new == nullptr || v_new == nullptr || k_dst == nullptr || v_dst == nullptr) {
    return cudaErrorInvalidValue;
  }
  const size_t elems = static_cast<size_t>(n) * num_kv_heads * head_dim;
  const bool vec = head_dim % 4 == 0 && dst_head_stride % 4 == 0 && Aligned(k_new, 16) &&
                   Aligned(v_new, 16) && Aligned(k_dst, 8) && Aligned(v_dst, 8);
  if (vec) {
    AppendKvKernel<4><<<GridFor(elems / 4), kThreads, 0, stream>>>(
        k_new, v_new, num_kv_heads, head_dim, k_dst, v_dst, dst_head_stride, elems / 4);
  } else {
    AppendKvKernel<1><<<GridFor(elems), kThreads, 0, stream>>>(
        k_new, v_new, num_kv_heads, head_dim, k_dst, v_dst, dst_head_stride, elems);
  }
  return cudaGetLastError();
}

cudaError_t LaunchAppendKvBatch(const float* k_new, const float* v_new, int rows, int num_kv_heads,
                                int head_dim, const AppendKvTarget* seqs, int num_seqs,
                                cudaStream_t stream) {
  if (rows < 0 || num_seqs < 0 || num_kv_heads <= 0 || head_dim <= 0) return cudaErrorInvalidValue;
  if (rows == 0 || num_seqs == 0) return cudaSuccess;
  if (k_new == nullptr || v_new == nullptr || seqs == nullptr) return cudaErrorInvalidValue;
  AppendKvBatchKernel<<<rows, RowThreads(num_kv_heads * head_dim, kThreads), 0, stream>>>(
      k_new, v_new, num_kv_heads, head_dim, seqs, num_seqs);
  return cudaGetLastError();
}

cudaError_t LaunchRopeAppendKvBatch(float* q, int q_heads, float* k, const float* v, int rows,
                                    int num_kv_heads, int head_dim, const int32_t* positions,
                                    const float* inv_freq, const AppendKvTarget* seqs, int num_seqs,
                                    cudaStream_t stream) {
  if (rows < 0 || num_seqs < 0 || q_heads <= 0 || num_kv_heads <= 0 || head_dim <= 0 ||
      head_dim % 2 != 0 || head_dim / 2 > kRopeMaxHalf ||
      (int64_t{q_heads} + num_kv_heads) * (head_dim / 2) > INT_MAX) {
    return cudaErrorInvalidValue;
  }
  if (rows == 0) return cudaSuccess;
  if (num_seqs == 0)
    return LaunchRopeQK(q, q_heads, k, num_kv_heads, positions, rows, head_dim, inv_freq, stream);
  if (q == nullptr || k == nullptr || v == nullptr || positions == nullptr || inv_freq == nullptr ||
      seqs == nullptr) {
    return cudaErrorInvalidValue;
  }
  // A decode step's few tokens spread their pairs over several CTAs per token (one CTA for a
  // token's 40 heads took 7 us on an H100: bench/RESULTS.md); long prefill chunks keep one.
  const int pairs = (q_heads + num_kv_heads) * (head_dim / 2);
  const int parts = std::max(1, std::min((pairs + kRopeThreads - 1) / kRopeThreads,
                                         (2 * detail::MultiprocessorCount() + rows - 1) / rows));
  RopeAppendKvBatchKernel<<<dim3(rows, parts), kRopeThreads, 0, stream>>>(
      q, q_heads, k, v, num_kv_heads, positions, head_dim / 2, inv_freq, seqs, num_seqs);
  return cudaGetLastError();
}

}  // namespace squeeze::gpu
