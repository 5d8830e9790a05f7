#include "engine/squeeze/cluster_scores.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>

namespace squeeze {

void ClusterScorer::Average(const float* q, int num_tokens, int num_heads, size_t token_stride,
                            const float* centroids, const int32_t* sizes, int num_clusters, int d,
                            float* out) {
  const int C = num_clusters;
  if (C <= 0) return;
  const int rows = num_tokens * num_heads;
  if (rows <= 0) {
    std::fill(out, out + C, 0.0f);
    return;
  }
  logits_.resize(static_cast<size_t>(num_tokens) * C);
  weights_.resize(C);
  sums_.assign(C, 0.0);
  for (int c = 0; c < C; ++c) weights_[c] = static_cast<float>(sizes[c]);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));

  for (int j = 0; j < num_heads; ++j) {
    // logits[t][c] = scale * q(t, j) . centroid[c]; the rows of head j are token_stride apart.
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, num_tokens, C, d, scale,
                q + static_cast<size_t>(j) * d, static_cast<int>(token_stride), centroids, d, 0.0f,
                logits_.data(), C);
    for (int t = 0; t < num_tokens; ++t) {
      float* s = logits_.data() + static_cast<size_t>(t) * C;
      float m = s[0];
      for (int c = 1; c < C; ++c) m = std::max(m, s[c]);
      float denom = 0.0f;
      for (int c = 0; c < C; ++c) {
        s[c] = std::exp(s[c] - m);  // in (0, 1]
        denom += weights_[c] * s[c];
      }
      const float inv = 1.0f / denom;
      for (int c = 0; c < C; ++c) sums_[c] += s[c] * inv;
    }
  }
  const double inv_rows = 1.0 / rows;
  for (int c = 0; c < C; ++c) out[c] = static_cast<float>(sums_[c] * inv_rows);
}

}  // namespace squeeze
