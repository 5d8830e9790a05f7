// Device pieces shared by the two cluster-scores kernels (cluster_scores.cu on mma.sync,
// cluster_scores_sm90.cu on wgmma): the rows they read, the 4-byte side copies, the end of a
// pass, where the 4 threads holding one M row's columns combine and one of them writes, and a
// pass's launch.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/common/device.cuh"
#include "kernels/squeeze/cluster_scores.cuh"

namespace squeeze::gpu::detail {

// 4-byte global -> shared copy; when !pred nothing is read and the destination is zeroed.
__device__ __forceinline__ void CpAsync4(void* smem_dst, const void* gmem_src, bool pred) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(dst), "l"(gmem_src),
               "r"(pred ? 4 : 0)
               : "memory");
}

// Query row r of one KV head: token r / G, query head h * G + r % G (q: the head's first row).
struct HeadRows {
  const bf16* q;
  int64_t token_stride;
  int group;
  int head_dim;
  __device__ const bf16* operator()(int r) const {
    return q + (r / group) * token_stride + static_cast<int64_t>(r % group) * head_dim;
  }
};

// Centroid row r of the head's list: candidate r's, or cluster r.
struct Centroids {
  const bf16* c;
  const int32_t* cand;  // nullptr: every cluster
  int head_dim;
  __device__ int Id(int r) const { return cand != nullptr ? __ldg(cand + r) : r; }
  __device__ const bf16* operator()(int r) const {
    return c + static_cast<int64_t>(Id(r)) * head_dim;
  }
};

// One KV head's problem in a pass of either kernel: the clusters taking part (C: the candidates,
// or every cluster), the R = tokens * G query rows, which are the M rows (pass 1: the queries,
// pass 2: the clusters) and which the N rows, where they are read, and pass 1's row statistics
// (max in the log2 domain [R], then 1 / sum [R]).
struct ScoresHead {
  SqueezeHeadDesc hd;
  int C, R, m_rows, n_rows;
  HeadRows queries;
  Centroids centroids;
  const float* stats;
};

// A small non-negative int32 held in a float's bits (< 2^23: a cluster size, as the side arrays
// carry them) as its float value without a conversion instruction (I2F issues at a quarter of the
// FMA rate, on the unit the exp2s need): its bits under the exponent of 2^23, less 2^23. Exact.
__device__ __forceinline__ float SmallIntToFloat(float bits) {
  return __int_as_float(__float_as_int(bits) | 0x4B000000) - 8388608.0f;
}

template <int D, int kPass>
__device__ __forceinline__ ScoresHead MakeScoresHead(const ClusterScoresParams& p, int h) {
  const SqueezeHeadDesc hd = p.heads[h];
  const int32_t* cand = p.candidates != nullptr
                            ? p.candidates + static_cast<int64_t>(h) * p.candidate_stride
                            : nullptr;
  const int C =
      cand != nullptr ? max(0, min(p.num_candidates[h], hd.num_clusters)) : hd.num_clusters;
  const int R = p.num_tokens * p.group;
  return {hd,
          C,
          R,
          kPass == 1 ? R : C,
          kPass == 1 ? C : R,
          HeadRows{p.q + static_cast<int64_t>(h) * p.group * D, p.q_token_stride, p.group, D},
          Centroids{static_cast<const bf16*>(hd.centroids), cand, D},
          p.row_stats + static_cast<int64_t>(h) * 2 * R};
}

// M row `row` of KV head h, whose columns are spread over the 4 threads of a quad (lanes 4g ..
// 4g + 3): they combine their partials (xor 1, 2: a fixed order) and thread tq = 0 writes.
// Pass 1 (m, s) = (max, size-weighted sum of 2^(logit - max)) -> row stats (max, 1 / sum);
// pass 2 s = sum of probabilities -> the cluster's score, s / R.
template <int kPass>
__device__ __forceinline__ void CombineAndStore(float m, float s, int row, int m_rows, int tq,
                                                const ClusterScoresParams& p, int h, int R,
                                                const Centroids& centroids) {
#pragma unroll
  for (int o = 1; o <= 2; o <<= 1) {
    const float om = __shfl_xor_sync(0xffffffffu, m, o);
    const float os = __shfl_xor_sync(0xffffffffu, s, o);
    if constexpr (kPass == 1) {
      const float mn = fmaxf(m, om);
      s = mn == -INFINITY ? 0.0f : s * Exp2(m - mn) + os * Exp2(om - mn);
      m = mn;
    } else {
      s += os;
    }
  }
  if (tq != 0 || row >= m_rows) return;
  if constexpr (kPass == 1) {
    float* out = p.row_stats + static_cast<int64_t>(h) * 2 * R;
    out[row] = m;
    out[R + row] = 1.0f / s;  // s >= 1: the arg-max cluster contributes N >= 1 times 2^0
  } else {
    p.scores[static_cast<int64_t>(h) * p.score_stride + centroids.Id(row)] =
        s / static_cast<float>(R);
  }
}

// One pass of a cluster-scores kernel: grid (ceil(m_rows / block_m), heads), `bytes` of dynamic
// shared memory.
template <class Kernel>
cudaError_t LaunchScoresPass(Kernel kernel, int threads, int bytes, int block_m, int m_rows,
                             const ClusterScoresParams& p, cudaStream_t stream) {
  const cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err != cudaSuccess) return err;
  const dim3 grid((m_rows + block_m - 1) / block_m, p.num_heads);
  kernel<<<grid, threads, bytes, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace squeeze::gpu::detail
