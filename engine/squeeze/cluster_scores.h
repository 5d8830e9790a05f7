// The Squeezed Attention cluster score: the size-weighted softmax estimate of the attention
// weight that ONE key of each cluster receives, averaged over a set of query rows. The same
// routine serves offline calibration and online selection, so that selection with the
// calibration queries reproduces the calibrated scores bit for bit; the CUDA centroid lookup
// and fused multi-query scores (kernels/squeeze/centroid_lookup.cuh, cluster_scores.cuh) are
// checked against it.
//
// For a query row q (post-RoPE, d floats) and the clusters j of one (layer, KV head) with
// centroids c_j ([d], raw-key means) and sizes N_j (keys in the cluster):
//   s_j(q) = q.c_j / sqrt(d)
//   p_c(q) = exp(s_c - m) / sum_j N_j exp(s_j - m),   m = max_j s_j
// The size weighting is in the denominator only (P2); the max subtraction keeps every exp in
// (0, 1] and the denominator >= 1 (the arg-max cluster has N >= 1), so p_c is finite for any
// finite logits (P8). out[c] = mean of p_c over the query rows. Logits, exp and the
// denominator are fp32; only the mean over rows is accumulated in double.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace squeeze {

class ClusterScorer {
 public:
  // Query rows: `num_tokens` tokens x `num_heads` heads, row (t, j) starting at
  // q + t * token_stride + j * d (for q[n][Hq][d] and the G heads of KV head h: pass
  // q + h * G * d, num_heads = G, token_stride = Hq * d).
  // centroids: [num_clusters][d]; sizes: [num_clusters], each >= 1. out: [num_clusters].
  // With no query rows, out is all zeros. Scratch is kept between calls (no steady-state
  // allocation).
  void Average(const float* q, int num_tokens, int num_heads, size_t token_stride,
               const float* centroids, const int32_t* sizes, int num_clusters, int d, float* out);

 private:
  std::vector<float> logits_;   // [num_tokens][num_clusters] for one head at a time
  std::vector<float> weights_;  // [num_clusters] N_j as float
  std::vector<double> sums_;    // [num_clusters] running sum of p_c over rows
};

}  // namespace squeeze
